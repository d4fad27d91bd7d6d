"""Compare the two masking strategies of minisoup.frames, in MB/s by payload size.

    python3 tools/bench_mask.py [--quick]

The result decides minisoup.frames.MASK_STRATEGY_THRESHOLD: apply_mask uses the
integer XOR below it and the strided translate() passes from it on. The last
column is what apply_mask itself achieves, so a wrong threshold shows up there.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minisoup.frames import (  # noqa: E402  (path set up above)
    MASK_STRATEGY_THRESHOLD, apply_mask, apply_mask_int, apply_mask_translate)

SIZES = (64, 1024, 2048, 4096, 64 * 1024, 1024 * 1024, 16 * 1024 * 1024)
KEY = b"\x37\xfa\x21\x3d"
BYTES_PER_ROUND = 32 * 1024 * 1024  # enough work per timing to dwarf timer noise
ROUNDS = 3  # best of, to drop scheduler hiccups


def throughput(func, data: bytes, rounds: int, budget: int) -> float:
    """Best MB/s of ``func(data, KEY)`` over ``rounds`` timed loops."""
    reps = max(1, budget // len(data))
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(reps):
            func(data, KEY)
        best = min(best, time.perf_counter() - start)
    return len(data) * reps / best / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="less work per size")
    args = parser.parse_args()
    budget = BYTES_PER_ROUND // (8 if args.quick else 1)

    print("apply_mask threshold: %d bytes" % MASK_STRATEGY_THRESHOLD)
    print("%10s %12s %12s %12s" % ("size", "int MB/s", "transl MB/s", "apply_mask"))
    for size in SIZES:
        data = os.urandom(size)
        row = [throughput(f, data, ROUNDS, budget)
               for f in (apply_mask_int, apply_mask_translate, apply_mask)]
        print("%10d %12.0f %12.0f %12.0f" % ((size,) + tuple(row)))


if __name__ == "__main__":
    main()
