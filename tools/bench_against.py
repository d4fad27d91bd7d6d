#!/usr/bin/env python3
"""The headline figures of this tree against those of another git revision, in one run.

    python3 tools/bench_against.py REV [--rounds 2] [--only http,ws] [--quick]
    make bench-against REV=f166236

A change must show it lost no speed: this runs ``tools/bench.py`` of REV (exported with
``git archive`` into a temporary folder, its own minisoup and its own tools) and of this
working tree alternately, ``--rounds`` times each, the order swapped every round so that
a drift of the machine's speed does not favour one side. It then prints, per figure, each
run's value, the medians and the change. Noise is stated by the spread between the runs of
one side: a change smaller than that spread is "within the noise".
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from typing import Dict, List

TOOLS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TOOLS)

# The figures compared: bench.py's label → a short name. Labels printed twice (processes
# free to move, then pinned) get " (free)" and " (pinned)".
FIGURES = {
    "minisoup Server, 1 process": "HTTP keep-alive GET req/s",
    "(a) echo, 64-byte binary messages": "WS 64-byte echo msg/s",
    "(c) echo, 1 MiB binary messages": "WS 1 MiB echo MB/s",
    "(e) handshakes: connect, upgrade, close": "WS handshakes/s",
}
LINE = re.compile(r"^\s+(?P<label>.+?)\s{2,}(?P<value>[\d,]+(?:\.\d+)?) (?P<unit>\S+)")


def parse(output: str) -> Dict[str, float]:
    """The figures found in one bench.py output."""
    seen = {}  # type: Dict[str, int]
    figures = {}
    for line in output.splitlines():
        match = LINE.match(line)
        if not match or match.group("label") not in FIGURES:
            continue
        name = FIGURES[match.group("label")]
        seen[name] = seen.get(name, 0) + 1
        if name.startswith(("HTTP", "WS 64")):
            name += " (free)" if seen[name] == 1 else " (pinned)"
        figures[name] = float(match.group("value").replace(",", ""))
    return figures


def export(rev: str, into: str) -> None:
    """Write REV's minisoup/ and tools/ into the folder ``into``."""
    archive = subprocess.run(["git", "-C", ROOT, "archive", rev, "minisoup", "tools"],
                             check=True, stdout=subprocess.PIPE).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)


def run_bench(tree: str, only: str, quick: bool) -> Dict[str, float]:
    args = [sys.executable, os.path.join(tree, "tools", "bench.py"), "--only", only]
    if quick:
        args.append("--quick")
    out = subprocess.run(args, cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         check=True).stdout.decode(errors="replace")
    return parse(out)


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the git revision to compare with (e.g. the commit before)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each side (default 2)")
    parser.add_argument("--only", default="http,ws", help="bench.py sections (default http,ws)")
    parser.add_argument("--quick", action="store_true", help="bench.py --quick runs")
    args = parser.parse_args(argv)
    runs = {"base": [], "this": []}  # type: Dict[str, List[Dict[str, float]]]
    with tempfile.TemporaryDirectory(prefix="minisoup-base-") as base:
        export(args.rev, base)
        trees = {"base": base, "this": ROOT}
        for index in range(args.rounds):
            order = ("base", "this") if index % 2 == 0 else ("this", "base")
            for side in order:
                print("round %d: %s ..." % (index + 1, side if side == "this" else args.rev),
                      file=sys.stderr, flush=True)
                runs[side].append(run_bench(trees[side], args.only, args.quick))
    names = [n for n in runs["this"][0] if all(n in r for r in runs["base"] + runs["this"])]
    print("%-30s %-26s %-26s %8s  %s" % ("figure", "%s (each run)" % args.rev[:12],
                                          "this tree (each run)", "change", "noise"))
    for name in names:
        base_vals = [r[name] for r in runs["base"]]
        this_vals = [r[name] for r in runs["this"]]
        b, t = statistics.median(base_vals), statistics.median(this_vals)
        spread = max((max(v) - min(v)) / statistics.median(v) if statistics.median(v) else 0.0
                     for v in (base_vals, this_vals))
        change = (t - b) / b if b else 0.0
        verdict = "within" if abs(change) <= spread else ("faster" if change > 0 else "SLOWER")
        print("%-30s %-26s %-26s %+7.1f%%  ±%.0f%% %s" % (
            name, ", ".join("%.0f" % v for v in base_vals), ", ".join("%.0f" % v for v in this_vals),
            change * 100, spread * 100, verdict))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
