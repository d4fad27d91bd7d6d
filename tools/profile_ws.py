"""Profile minisoup's server on one connection: where the time of one message goes.

    python3 tools/profile_ws.py [--seconds 4] [--size 64] [--http] [--top 25]

Sizes above 64 KiB go to a handler without size limits (as tools/bench.py's 1 MiB echo).

The server runs in this process, on the main thread, under cProfile; one load
connection (tools/loadgen.py in a child process, ``--conns 1``) sends a message, waits
for the echo, and repeats (``--http``: a keep-alive GET of /hello instead). The table is
cProfile's, divided by the number of messages: calls and microseconds per message. The
absolute figures include cProfile's own overhead (about 2x on this kind of code); the
ranking is what counts.
"""

import argparse
import cProfile
import io
import os
import pstats
import signal
import subprocess
import sys
import threading
import time

TOOLS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TOOLS)
sys.path.insert(0, ROOT)
sys.path.insert(0, TOOLS)

import minisoup  # noqa: E402
from bench_servers import build_minisoup  # noqa: E402


def build_server() -> minisoup.Server:
    return build_minisoup()


def drive(server: minisoup.Server, args: argparse.Namespace, result: dict) -> None:
    """Thread: run the load process, then stop the server's loop."""
    port = server.get_listeners()[0].getsockname()[1]
    cmd = [sys.executable, os.path.join(TOOLS, "loadgen.py"), "http" if args.http else "ws",
           "--port", str(port), "--conns", "1", "--size", str(args.size),
           "--path", "/hello" if args.http else "/echo" if args.size <= 65536 else "/big"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            start_new_session=True)
    try:
        if proc.stdout.readline().strip() != b"READY":
            raise RuntimeError("load generator did not start")
        now = time.monotonic()
        proc.stdin.write(b"GO %r %r\n" % (now, now + args.seconds))
        proc.stdin.flush()
        import json
        result.update(json.loads(proc.stdout.readline()))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        server._loop.call_soon(server.stop, False)
        server._loop.wakeup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--http", action="store_true", help="profile keep-alive GET instead")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()

    server = build_server()
    result = {}  # type: dict
    thread = threading.Thread(target=drive, args=(server, args, result), daemon=True)
    profiler = cProfile.Profile()
    server._get_loop()
    thread.start()
    profiler.enable()
    try:
        server._serve()
    finally:
        profiler.disable()
        thread.join(30)
        for sock in server.get_listeners():
            sock.close()
    count = result.get("count", 0)
    if not count:
        raise SystemExit("no messages were echoed")
    print("%d %s in %.1f s on one connection (under cProfile: %.0f/s)"
          % (count, "requests" if args.http else "messages", result["seconds"],
             count / result["seconds"]))
    stats = pstats.Stats(profiler, stream=io.StringIO())
    rows = []
    for (filename, lineno, name), (cc, nc, tt, ct, _callers) in stats.stats.items():
        where = "%s:%d(%s)" % (os.path.relpath(filename, ROOT) if filename.startswith(ROOT)
                               else os.path.basename(filename), lineno, name)
        if filename == "~":
            where = name
        rows.append((tt, ct, nc, where))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    print("profiled time per message: %.1f us; top %d by own time:" % (total / count * 1e6, args.top))
    print("%10s %10s %10s  %s" % ("calls/msg", "own us", "cum us", "function"))
    for tt, ct, nc, where in rows[:args.top]:
        print("%10.2f %10.2f %10.2f  %s" % (nc / count, tt / count * 1e6, ct / count * 1e6, where))


if __name__ == "__main__":
    main()
