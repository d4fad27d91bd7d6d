"""The long reliability runs (``make stress``): idle memory, slowloris at scale, faults.

    python3 tools/stress.py [--connections N] [--only NAME,...] [--quick]

Scenarios (each against a server in a subprocess on 127.0.0.1, port 0; every process
started here is killed in ``finally``):

  idle       N idle WebSocket connections (no extension offered, so no compression; an
             echo "message" handler connected, as an application would) held by client
             processes; the server's RSS growth per connection (/proc/PID/status VmRSS
             before and after), single-process and with ``run(workers=2)``.
  attribute  the same in this process under ``tracemalloc``: which source lines hold the
             per-connection Python memory (the server in a thread, the clients in a
             subprocess so that their objects are not counted).
  slowloris  1,000 connections trickling header bytes (request_timeout 5 s) while a
             normal client measures its latency; when the trickling connections are cut.
  kill9      ``run(workers=2)`` under HTTP load, ``kill -9`` one worker: the time until a
             new worker pid serves, and what the clients saw meanwhile.
  sigterm    ``run(workers=2)`` streaming numbered WebSocket messages to slow readers;
             SIGTERM to the master: every message queued before the signal must arrive,
             in order, before the 1001 close.

Prints one table: scenario | result | figure. Exit status 1 if a check failed.
Internal roles (``--role server|ws-clients|trickle``) are the subprocesses.
"""

import argparse
import http.client
import json
import os
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
MASK_KEY = b"\x37\xfa\x21\x3d"
TARGET_IDLE_BYTES = 5 * 1024


# ------------------------------------------------------------------------------------------
# small shared helpers
# ------------------------------------------------------------------------------------------

def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def ws_request(path="/ws"):
    return ("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (path, WS_KEY)).encode()


def read_head(sock):
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(4096)
        if not data:
            raise ConnectionError("closed during the response head")
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), rest


def masked_frame(opcode, payload):
    from minisoup.frames import build_frame
    return build_frame(opcode, payload, True, 0, MASK_KEY)


def rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        found = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open("/proc/%s/stat" % name) as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                            found.append(int(name))
                except (OSError, ValueError, IndexError):
                    pass
        return found


def http_get(port, path="/", timeout=5.0):
    """``(status, body, seconds)`` on a fresh connection."""
    start = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read(), time.monotonic() - start
    finally:
        conn.close()


def percentile(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(round(p / 100.0 * (len(values) - 1))))]


class Proc:
    """A subprocess of this script in some role, killed (group and all) on ``close``."""

    def __init__(self, *args, stdin=True):
        self.p = subprocess.Popen([sys.executable, os.path.abspath(__file__)] + [str(a) for a in args],
                                  stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  start_new_session=True, cwd=ROOT)
        self.pid = self.p.pid
        self._stderr = []
        self._err_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._err_thread.start()

    def _drain_stderr(self):
        for line in self.p.stderr:
            self._stderr.append(line.decode("utf-8", "replace"))

    def stderr(self):
        return "".join(self._stderr)

    def readline(self, timeout=60.0):
        ready, _, _ = select.select([self.p.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError("no output from pid %d within %g s; stderr:\n%s"
                               % (self.pid, timeout, self.stderr()[-2000:]))
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError("pid %d exited; stderr:\n%s" % (self.pid, self.stderr()[-2000:]))
        return line.decode().strip()

    def send(self, line):
        self.p.stdin.write((line + "\n").encode())
        self.p.stdin.flush()

    def close(self, sig=signal.SIGKILL):
        if self.p.poll() is None:
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.p.wait(5)
        for stream in (self.p.stdin, self.p.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


def start_server(workers=0, **limits):
    args = ["--role", "server", "--workers", workers]
    for name, value in limits.items():
        args += ["--limit", "%s=%s" % (name, value)]
    proc = Proc(*args, stdin=False)
    port = int(proc.readline(30))
    return proc, port


def wait_serving(port, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return http_get(port, timeout=2)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# ------------------------------------------------------------------------------------------
# roles (subprocesses)
# ------------------------------------------------------------------------------------------

def role_server(args):
    import logging
    import minisoup
    from urllib.parse import parse_qs
    raise_nofile()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    limits = {}
    for item in args.limit:
        name, _, value = item.partition("=")
        limits[name] = float(value) if "." in value else int(value)
    server = minisoup.Server(**limits)

    def pid_handler(server_, msg, path, query, user_data):
        msg.set_response("text/plain", str(os.getpid()))
        msg.set_status(200)

    def echo(ws, kind, data):
        ws.send_message(kind, data)

    def on_ws(server_, msg, path, ws, user_data):
        ws.connect("message", echo)

    def on_stream(server_, msg, path, ws, user_data):
        # Numbered 4 KiB messages, 4 every 2 ms, until the connection closes; at "closing" (the
        # 1001 of a graceful stop) report how many were queued, for the client to check.
        ident = parse_qs(msg.get_uri().query).get("id", ["?"])[0]
        state = {"seq": 0}
        payload = b"p" * 4096

        def tick():
            if ws.get_state() != minisoup.WebsocketState.OPEN:
                return
            for _ in range(4):
                ws.send_binary(struct.pack("!I", state["seq"]) + payload)
                state["seq"] += 1
            server_.call_later(0.002, tick)

        def closing(ws_):
            # One write(2): two workers share the pipe, and print() may write the text
            # and its newline separately (lines then interleave).
            os.write(1, ("closing %s %d %d\n" % (ident, state["seq"], ws_.get_buffered_amount())).encode())

        ws.connect("closing", closing)
        tick()

    server.add_handler("/", pid_handler)
    server.add_websocket_handler("/ws", None, None, on_ws)
    server.add_websocket_handler("/stream", None, None, on_stream)
    server.listen_local(0)
    print(server.get_listeners()[0].getsockname()[1], flush=True)
    server.run(workers=args.workers)


def role_ws_clients(args):
    """Open ``--count`` WebSocket connections, print ``ready N``, hold them until stdin
    says anything, then close them and print ``closed``."""
    raise_nofile()
    request = ws_request(args.path)
    socks = []
    for _ in range(args.count):
        sock = socket.create_connection(("127.0.0.1", args.port), timeout=30)
        sock.sendall(request)
        status, _ = read_head(sock)
        if status != 101:
            raise SystemExit("handshake refused: %d" % status)
        socks.append(sock)
    print("ready %d" % len(socks), flush=True)
    sys.stdin.readline()
    for sock in socks:
        sock.close()
    print("closed", flush=True)


def role_trickle(args):
    """Open ``--count`` connections that send a request line and then one header byte
    per socket every ``--interval`` s, never ending the head. Reports as JSON how long
    each lived before the server cut it."""
    raise_nofile()
    header = b"X-Slowloris: " + b"s" * 4000
    socks = {}
    opened = {}
    for i in range(args.count):
        sock = socket.create_connection(("127.0.0.1", args.port), timeout=10)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        sock.setblocking(False)
        socks[sock.fileno()] = sock
        opened[sock.fileno()] = time.monotonic()
    print("ready %d" % len(socks), flush=True)
    lifetimes = []
    position = 0
    deadline = time.monotonic() + args.duration
    while socks and time.monotonic() < deadline:
        byte = header[position % len(header):position % len(header) + 1]
        position += 1
        for fd, sock in list(socks.items()):
            gone = False
            try:
                sock.send(byte)
                gone = sock.recv(4096) == b""
            except BlockingIOError:
                pass
            except OSError:
                gone = True
            if gone:
                lifetimes.append(time.monotonic() - opened.pop(fd))
                del socks[fd]
                sock.close()
        time.sleep(args.interval)
    for sock in socks.values():
        sock.close()
    print(json.dumps({"cut": len(lifetimes), "alive": len(socks), "lifetimes": lifetimes}), flush=True)


# ------------------------------------------------------------------------------------------
# scenarios
# ------------------------------------------------------------------------------------------

def hold_idle(port, total, procs=4):
    """Start client processes holding ``total`` idle WebSocket connections; returns them."""
    clients = []
    share = [total // procs + (1 if i < total % procs else 0) for i in range(procs)]
    for count in share:
        clients.append(Proc("--role", "ws-clients", "--port", port, "--count", count))
    for client in clients:
        line = client.readline(120)
        if not line.startswith("ready"):
            raise RuntimeError("client: %r" % line)
    return clients


def release(clients):
    for client in clients:
        try:
            client.send("go")
            client.readline(30)
        except (OSError, RuntimeError, TimeoutError):
            pass
        client.close()


def server_rss(server, workers):
    if workers:
        pids = children(server.pid)
        return sum(rss_kib(p) for p in pids), len(pids)
    return rss_kib(server.pid), 1


def scenario_idle(n, workers):
    server, port = start_server(workers=workers, max_connections=4 * n)
    clients = []
    try:
        wait_serving(port)
        # Warm-up: imports done lazily and the first-use allocations are not per connection.
        warm = hold_idle(port, 20, procs=1)
        release(warm)
        time.sleep(0.5)
        before, nproc = server_rss(server, workers)
        start = time.monotonic()
        clients = hold_idle(port, n)
        setup = time.monotonic() - start
        time.sleep(1.0)
        after, _ = server_rss(server, workers)
        status, body, latency = http_get(port)
        release(clients)
        clients = []
        time.sleep(1.0)
        released, _ = server_rss(server, workers)
        per_conn = (after - before) * 1024.0 / n
        return {"before_kib": before, "after_kib": after, "released_kib": released,
                "per_conn": per_conn, "setup_s": setup, "processes": nproc,
                "http_ok": status == 200, "latency_ms": latency * 1000}
    finally:
        release(clients)
        server.close()


def scenario_attribute(n, top=12):
    """Per-connection Python allocations of an idle WebSocket, by source line."""
    import tracemalloc
    import minisoup
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from conftest import running

    def echo(ws, kind, data):
        ws.send_message(kind, data)

    server = minisoup.Server(max_connections=4 * n)
    server.add_websocket_handler("/ws", None, None, lambda s, m, p, ws, u: ws.connect("message", echo))
    tracemalloc.start(1)
    clients = []
    try:
        with running(server) as port:
            release(hold_idle(port, 20, procs=1))
            time.sleep(0.3)
            first = tracemalloc.take_snapshot()
            clients = hold_idle(port, n, procs=2)
            time.sleep(0.5)
            second = tracemalloc.take_snapshot()
            count = len(server._websockets)
            release(clients)
            clients = []
    finally:
        release(clients)
        tracemalloc.stop()
    filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
    diff = second.filter_traces(filters).compare_to(first.filter_traces(filters), "lineno")
    total = sum(d.size_diff for d in diff)
    rows = []
    for d in sorted(diff, key=lambda d: -d.size_diff)[:top]:
        frame = d.traceback[0]
        where = frame.filename
        where = (os.path.relpath(where, ROOT) if where.startswith(ROOT)
                 else "stdlib " + os.path.basename(where) if where.endswith(".py") else where)
        rows.append((d.size_diff / count, d.count_diff / count, "%s:%d" % (where, frame.lineno)))
    return {"count": count, "per_conn": total / count, "rows": rows}


def scenario_slowloris(n, request_timeout=5.0):
    server, port = start_server(request_timeout=request_timeout, max_connections=4 * n)
    tricklers = []
    try:
        wait_serving(port)
        quiet = [http_get(port)[2] for _ in range(50)]
        procs = 2
        for i in range(procs):
            tricklers.append(Proc("--role", "trickle", "--port", port, "--count", n // procs,
                                  "--interval", 0.5, "--duration", request_timeout + 6))
        for t in tricklers:
            t.readline(60)
        started = time.monotonic()
        latencies, errors = [], 0
        while time.monotonic() - started < request_timeout + 1.0:
            try:
                status, body, seconds = http_get(port, timeout=5)
                latencies.append(seconds)
                if status != 200:
                    errors += 1
            except OSError:
                errors += 1
            time.sleep(0.02)
        reports = [json.loads(t.readline(request_timeout + 30)) for t in tricklers]
        lifetimes = [x for r in reports for x in r["lifetimes"]]
        return {"quiet_p50": percentile(quiet, 50) * 1000, "p50": percentile(latencies, 50) * 1000,
                "p99": percentile(latencies, 99) * 1000, "max": max(latencies) * 1000,
                "requests": len(latencies), "errors": errors,
                "cut": sum(r["cut"] for r in reports), "alive": sum(r["alive"] for r in reports),
                "life_min": min(lifetimes) if lifetimes else float("nan"),
                "life_max": max(lifetimes) if lifetimes else float("nan"),
                "request_timeout": request_timeout}
    finally:
        for t in tricklers:
            t.close()
        server.close()


def scenario_kill9(rounds=3, load_threads=4):
    """Kill a worker ``rounds`` times under HTTP load; per round, when the master forked
    the replacement and when a response first came from a new pid."""
    server, port = start_server(workers=2)
    stop = threading.Event()
    results = {"ok": 0, "errors": 0, "pids": {}, "kinds": {}}
    lock = threading.Lock()

    def load():
        while not stop.is_set():
            try:
                status, body, _ = http_get(port, timeout=5)
                with lock:
                    results["ok" if status == 200 else "errors"] += 1
                    results["pids"].setdefault(int(body), time.monotonic())
            except (OSError, ValueError, http.client.HTTPException) as exc:
                with lock:
                    results["errors"] += 1
                    kind = type(exc).__name__
                    results["kinds"][kind] = results["kinds"].get(kind, 0) + 1

    threads = [threading.Thread(target=load, daemon=True) for _ in range(load_threads)]
    forked, served = [], []
    try:
        wait_serving(port)
        deadline = time.monotonic() + 10
        while len(children(server.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        for t in threads:
            t.start()
        time.sleep(1.0)
        with lock:
            errors_before, ok_before = results["errors"], results["ok"]
        for _ in range(rounds):
            workers = children(server.pid)
            killed_at = time.monotonic()
            os.kill(workers[0], signal.SIGKILL)
            forked_at = served_at = None
            while time.monotonic() - killed_at < 10 and served_at is None:
                if forked_at is None and [p for p in children(server.pid) if p not in workers]:
                    forked_at = time.monotonic()
                with lock:
                    fresh = [t for p, t in results["pids"].items()
                             if p not in workers and t >= killed_at]
                if fresh:
                    served_at = min(fresh)
                time.sleep(0.002)
            forked.append((forked_at - killed_at) * 1000 if forked_at else float("nan"))
            served.append((served_at - killed_at) * 1000 if served_at else float("nan"))
            time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(10)
        return {"forked_ms": forked, "served_ms": served, "rounds": rounds,
                "kinds": ", ".join("%s x%d" % item for item in sorted(results["kinds"].items())),
                "errors": results["errors"] - errors_before, "requests": results["ok"] - ok_before}
    finally:
        stop.set()
        server.close()


def scenario_sigterm(clients=10):
    from minisoup.frames import FrameParser, Opcode, parse_close_payload
    server, port = start_server(workers=2, graceful_timeout=20.0)
    socks = []
    try:
        wait_serving(port)
        for i in range(clients):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            sock.settimeout(10)
            sock.connect(("127.0.0.1", port))
            sock.sendall(ws_request("/stream?id=%d" % i))
            status, rest = read_head(sock)
            assert status == 101
            parser = FrameParser(require_mask=False, max_payload_size=0)
            parser.feed(rest)
            sock.setblocking(False)
            socks.append({"sock": sock, "parser": parser, "seqs": [], "close": None, "id": i})

        def pump(duration, reading=True):
            end = time.monotonic() + duration
            while time.monotonic() < end and any(c["close"] is None for c in socks):
                if not reading:
                    time.sleep(0.05)
                    continue
                live = [c for c in socks if c["close"] is None]
                ready, _, _ = select.select([c["sock"] for c in live], [], [], 0.05)
                for c in live:
                    if c["sock"] not in ready:
                        continue
                    try:
                        data = c["sock"].recv(1 << 20)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        c["close"] = c["close"] or 1006
                        continue
                    c["parser"].feed(data)
                    while True:
                        frame = c["parser"].next_frame()
                        if frame is None:
                            break
                        if frame[0] == Opcode.CLOSE:
                            c["close"] = int(parse_close_payload(frame[3])[0])
                            try:
                                c["sock"].sendall(masked_frame(Opcode.CLOSE, frame[3][:2]))
                            except OSError:
                                pass
                            break
                        c["seqs"].append(struct.unpack_from("!I", frame[3])[0])

        pump(1.0)                        # streaming
        pump(1.5, reading=False)         # the clients stop reading: the server queues
        signalled = time.monotonic()
        os.kill(server.pid, signal.SIGTERM)
        pump(25.0)                       # read everything, until each close frame
        exit_code = server.p.wait(30)
        stopped_s = time.monotonic() - signalled
        reports = {}
        queued = 0
        out = server.p.stdout.read().decode()
        for line in out.splitlines():
            parts = line.split()
            if parts and parts[0] == "closing":
                reports[int(parts[1])] = int(parts[2])
                queued += int(parts[3])
        ordered = all(c["seqs"] == list(range(len(c["seqs"]))) for c in socks)
        complete = all(reports.get(c["id"]) == len(c["seqs"]) for c in socks)
        codes = sorted({c["close"] for c in socks})
        mismatches = ["id %d: %s queued, %d received" % (c["id"], reports.get(c["id"]), len(c["seqs"]))
                      for c in socks if reports.get(c["id"]) != len(c["seqs"])]
        return {"mismatches": mismatches, "queued_kib": queued / 1024.0,"clients": clients, "ordered": ordered, "complete": complete, "codes": codes,
                "messages": sum(len(c["seqs"]) for c in socks), "reported": len(reports),
                "stopped_s": stopped_s, "exit_code": exit_code}
    finally:
        for c in socks:
            c["sock"].close()
        server.close()


# ------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------

def fmt_kib(n):
    return "%.2f KiB" % (n / 1024.0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=["server", "ws-clients", "trickle"])
    parser.add_argument("--port", type=int)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--path", default="/ws")
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--limit", action="append", default=[])
    parser.add_argument("--connections", type=int, default=5000,
                        help="idle WebSocket connections for the memory runs (default 5000)")
    parser.add_argument("--slowloris", type=int, default=1000,
                        help="trickling connections (default 1000)")
    parser.add_argument("--only", default="idle,attribute,slowloris,kill9,sigterm")
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run")
    args = parser.parse_args(argv)
    if args.role == "server":
        return role_server(args)
    if args.role == "ws-clients":
        return role_ws_clients(args)
    if args.role == "trickle":
        return role_trickle(args)

    if args.quick:
        args.connections, args.slowloris = 1000, 200
    hard = raise_nofile()
    if hard < args.connections + 100:
        print("RLIMIT_NOFILE hard limit %d is too low for %d connections" % (hard, args.connections))
        args.connections = max(100, hard - 200)
    only = set(args.only.split(","))
    have_prefork = os.path.exists(os.path.join(ROOT, "minisoup", "prefork.py"))
    rows = []
    failed = False

    def row(scenario, ok, result, figure):
        nonlocal failed
        failed |= not ok
        rows.append((scenario, ("ok: " if ok else "FAIL: ") + result, figure))
        print("  %-44s %s | %s" % (scenario, rows[-1][1], figure), flush=True)

    print("minisoup stress (python %s, %d CPUs, RLIMIT_NOFILE %d)"
          % (sys.version.split()[0], os.cpu_count(), hard), flush=True)
    if "idle" in only:
        for workers in ([0, 2] if have_prefork else [0]):
            r = scenario_idle(args.connections, workers)
            ok = r["per_conn"] <= TARGET_IDLE_BYTES and r["http_ok"]
            row("idle memory, %d WS, %s" % (args.connections,
                                            "%d workers" % workers if workers else "1 process"),
                ok, "RSS %d → %d KiB (%d after close); HTTP %.1f ms while held"
                % (r["before_kib"], r["after_kib"], r["released_kib"], r["latency_ms"]),
                "%s per connection (target ≤ 5 KiB)" % fmt_kib(r["per_conn"]))
    if "attribute" in only:
        r = scenario_attribute(min(args.connections, 2000))
        row("idle memory, Python heap (tracemalloc)", True,
            "%d connections; top: %s" % (r["count"], "; ".join(
                "%s %.0f B" % (where, size) for size, _, where in r["rows"][:4])),
            "%s per connection" % fmt_kib(r["per_conn"]))
        print("    tracemalloc, bytes per idle connection by line:")
        for size, count, where in r["rows"]:
            print("      %8.0f B  %5.2f blocks  %s" % (size, count, where))
    if "slowloris" in only:
        r = scenario_slowloris(args.slowloris)
        ok = (r["errors"] == 0 and r["alive"] == 0 and r["p99"] < 250
              and r["life_max"] <= r["request_timeout"] + 2.0)
        row("slowloris, %d trickling connections" % args.slowloris, ok,
            "%d requests, %d errors; cut %d/%d after %.1f-%.1f s (request_timeout %g s)"
            % (r["requests"], r["errors"], r["cut"], args.slowloris, r["life_min"], r["life_max"],
               r["request_timeout"]),
            "latency p50 %.1f ms, p99 %.1f ms, max %.1f ms (quiet p50 %.1f ms)"
            % (r["p50"], r["p99"], r["max"], r["quiet_p50"]))
    if "kill9" in only and have_prefork:
        r = scenario_kill9()
        ok = all(ms < 5000 for ms in r["served_ms"])       # NaN (never served) fails too
        row("kill -9 of a worker under HTTP load (2 workers)", ok,
            "%d kills; %d requests meanwhile, %d failed (%s: requests the killed worker "
            "had accepted)" % (r["rounds"], r["requests"], r["errors"], r["kinds"] or "none"),
            "new pid serving after %s ms (forked after %s ms)"
            % ("/".join("%.0f" % ms for ms in r["served_ms"]),
               "/".join("%.0f" % ms for ms in r["forked_ms"])))
    if "sigterm" in only and have_prefork:
        r = scenario_sigterm()
        ok = r["ordered"] and r["complete"] and r["codes"] == [1001] and r["exit_code"] == 0
        row("SIGTERM under WebSocket load (2 workers)", ok,
            "%d clients, %d messages (%.0f KiB still queued in the workers at the signal); in "
            "order: %s, all delivered: %s, close codes %s, master exit %s"
            % (r["clients"], r["messages"], r["queued_kib"], r["ordered"], r["complete"],
               r["codes"], r["exit_code"]),
            "stopped %.2f s after SIGTERM" % r["stopped_s"])
        for line in r["mismatches"]:
            print("    " + line)

    print()
    print("| scenario | result | figure |")
    print("|---|---|---|")
    for scenario, result, figure in rows:
        print("| %s | %s | %s |" % (scenario, result, figure))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
