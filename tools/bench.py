"""minisoup's speed figures, each measured in the same run as its reference (``make bench``).

    python3 tools/bench.py [--quick] [--only http,ws,deflate,prefork,tls,fanout,peers]

1. HTTP keep-alive GET (12-byte body): minisoup (one process) against the stdlib's
   ThreadingHTTPServer (Nagle off: its fair configuration); target minisoup >= 3x.
2. WebSocket: (a) 64-byte echo messages/s over 50 connections against (b) a raw TCP echo
   on the same minisoup Loop/SocketTransport (target >= 60%); (c) 1 MiB echo in MB/s
   against (d) the speed of unmasking alone, minisoup.frames.apply_mask on 1 MiB (target
   >= 80%), with both masking strategies by size; (e) handshakes/s.
3. permessage-deflate: ~1 KiB JSON-like chat echo with and without it, and the bytes on
   the wire per message.
4. Pre-fork: 64-byte echo with run(workers=1) and run(workers=2); target >= 1.6x; and the
   same with a CPU-bound handler, where the server rather than the load is the bottleneck.
5. TLS (wss://, the test certificate of tests/tls/) against python-websockets serving TLS
   from the same ssl module: (a) 64-byte echo msg/s, target >= 1.5x; (b) 1 MiB echo MB/s,
   target >= 0.6x; (c) handshakes/s (TLS, upgrade, close), target >= 1x; (d) KiB of
   server memory (RSS) per idle TLS WebSocket connection. websockets is installed into
   the bench's own virtualenv, .venv-bench/ (python3 -m venv + pip, on first use; not a
   minisoup dependency); without it (no network) the peer is skipped and says why.
6. Publish/subscribe fan-out: one 100-byte text publication to 10,000 subscribers, with
   run(workers=1) and run(workers=2), against python-websockets' broadcast() in one
   process (same virtualenv), all driven by wsload's fanout mode (tools/wsload.c; without
   a C compiler tools/fanload.py, the same in Python, ~5x its CPU): deliveries/s and the time
   until the last subscriber has it (median, p99); targets >= 1x and >= 1.5x websockets.
7. Peers (issue 15's table): minisoup against libsoup 3 in C (tools/anchor_libsoup_c.c),
   aiohttp and python-websockets (from .venv-bench/) and the stdlib server, each pinned to
   one CPU with the C load generators on another: tools/wsload.c (64-byte echo, 50 x 8 in
   flight, and its p99; 1 MiB echo; handshakes/s, 8 cycles at a time with upgrade heads the
   same but for their fresh key, and for minisoup and libsoup also 1 and 64 at a time and
   every head different; KiB per idle connection, from 1,000 to 5,000 held) and wrk (HTTP
   keep-alive GET, 32 connections). The C programs are built on first use into
   build/bench-tools/ (tools/peer_tools.py); a missing compiler, libsoup-3.0-dev or wrk
   (``make bench-deps`` installs them) skips what needs it, with a line saying why.

Every server runs in its own process (tools/bench_servers.py), the load in others
(tools/loadgen.py): pre-built requests and frames, one request or message in flight per
connection (no pipelining), several connections per process on epoll. Each figure is
measured over the same window in every load process, after a warm-up, in several rounds
interleaved with its reference; the median round is reported.

How to read the figures. On a small machine the server, the load generator and the
kernel's loopback work share the cores, so each figure comes with the CPU each side used
in the window, the server's CPU time per operation, and OTHER: CPU used meanwhile by
processes outside the benchmark (other users). Each ratio is also given from server CPU
time per operation, which does not depend on how many cores the server got. Where there
are two CPUs, sections 1 and 2 are measured twice: processes free to move, and pinned
(taskset-style) with the server on one CPU and the load on another. On a virtual machine
the two placements can differ by 3x per message: sleeping and waking a process (a
cross-CPU interrupt) is dear there, and how often that happens depends on placement.

MB are 10**6 bytes. Every process started here is stopped (process groups,
try/finally), whatever happens. Linux only (epoll, /proc, sched_setaffinity).
tools/profile_ws.py shows where the server's time goes.
"""

import argparse
import json
import os
import platform
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Optional

TOOLS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TOOLS)
sys.path.insert(0, TOOLS)
sys.path.insert(0, ROOT)

import bench_mask  # noqa: E402  (tools/ is on the path above)
import loadgen  # noqa: E402

SERVERS = os.path.join(TOOLS, "bench_servers.py")
LOADGEN = os.path.join(TOOLS, "loadgen.py")
CLK_TCK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT_S = 30.0   # for a server to listen, for load processes to connect
STOP_TIMEOUT_S = 10.0    # SIGTERM, then SIGKILL of the whole process group
MiB = 1024 * 1024
# glibc tunables that stop malloc from handing freed MiB-sized blocks back to the kernel
# (and faulting fresh zeroed pages in for the next message): figure (c) again with them
# shows whether the server's own memory reuse (frames.py's chunk pool) is enough.
MALLOC_KEEP = {"MALLOC_MMAP_THRESHOLD_": str(64 * MiB), "MALLOC_TRIM_THRESHOLD_": str(128 * MiB)}
OTHER_CPU_NOTE = 0.10    # report other processes' CPU from 10% of a core
LOAD_LIMIT_NOTE = 0.90   # a load generator this busy (of its core) limits the figure
BENCH_VENV = os.path.join(ROOT, ".venv-bench")   # the peers' packages (git-ignored)
PEER_REQUIREMENT = "websockets>=13"              # its asyncio server API
PIP_TIMEOUT_S = 600.0
IDLE_CONNS = 1000        # TLS memory figure: idle connections held open at once
IDLE_WARMUP_CONNS = 50   # opened and closed first, so that one-off allocations are done
IDLE_SETTLE_S = 0.5      # after the last 101, before the server's memory is read

# Targets from the issue, checked at the end of each section.
TARGET_HTTP_RATIO = 3.0
TARGET_WS_VS_RAW = 0.60
TARGET_BIG_VS_MASK = 0.80
TARGET_PREFORK = 1.6
TARGET_TLS_ECHO = 1.5         # minisoup / websockets, 64-byte echo over wss
TARGET_TLS_BIG = 0.6          # minisoup / websockets, 1 MiB echo over wss
TARGET_TLS_HANDSHAKES = 1.0   # minisoup / websockets, TLS + upgrade + close

PROFILES = {
    # rounds per figure (the median is reported), warm-up and measured seconds per round,
    # bytes per masking timing
    "full": {"rounds": 3, "warmup": 0.5, "duration": 2.0, "mask_budget": 32 * MiB},
    "quick": {"rounds": 1, "warmup": 0.3, "duration": 0.8, "mask_budget": 4 * MiB},
}


# -- processes -----------------------------------------------------------------------------------

def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group of ``proc``, SIGKILL it if it lingers."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)   # also any forked worker left behind
    except ProcessLookupError:
        pass
    if proc.poll() is None:
        proc.wait(STOP_TIMEOUT_S)


def _stop_loads(loads: list) -> None:
    """Stop each load-generator process (its whole group) and close its pipes."""
    for proc in loads:
        _stop_group(proc)
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except OSError:
                pass


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    """One line of ``proc``'s stdout, or RuntimeError after ``timeout`` seconds."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise RuntimeError("no answer from %r within %g s" % (proc.args, timeout))
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError("%r exited (status %s)" % (proc.args, proc.wait()))
    return line.decode().strip()


def _descendants(pid: int) -> list:
    """``pid`` and every process below it (the pre-fork workers)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def _rss_kib(pid: int) -> int:
    """Resident memory of one process in KiB (0 once it is gone)."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for text in f:
                if text.startswith("VmRSS:"):
                    return int(text.split()[1])
    except OSError:
        pass
    return 0


def _cpu_seconds(pid: int) -> tuple:
    """``(user, system)`` CPU seconds of one process (all its threads)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def _machine_busy() -> float:
    """CPU seconds the machine has spent busy so far, all CPUs (/proc/stat: user, nice,
    system, irq, softirq; a process's own times include the interrupts it ran)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq = [int(v) for v in f.readline().split()[1:8]]
    return (user + nice + system + irq + softirq) / CLK_TCK


class ServerProcess:
    """A bench server (tools/bench_servers.py) in its own process group."""

    def __init__(self, kind: str, workers: int = 0, cpus: str = "", env: Optional[dict] = None,
                 python: str = "") -> None:
        self.label = kind + (" workers=%d" % workers if workers else "")
        args = [python or sys.executable, SERVERS, kind]
        if workers:
            args += ["--workers", str(workers)]
        if cpus:
            args += ["--cpus", cpus]
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.stderr,
                                     start_new_session=True, cwd=ROOT,
                                     env=dict(os.environ, **env) if env else None)
        self.workers = workers
        line = _readline(self.proc, START_TIMEOUT_S)
        if not line.startswith("PORT "):
            raise RuntimeError("server said %r" % line)
        self.port = int(line.split()[1])

    def pids(self) -> list:
        return _descendants(self.proc.pid)

    def cpu_by_pid(self) -> dict:
        return {pid: _cpu_seconds(pid) for pid in self.pids()}

    def rss_kib(self) -> int:
        """Resident memory of the server and its workers, in KiB."""
        return sum(_rss_kib(pid) for pid in self.pids())

    def log_lines(self) -> list:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace").splitlines()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            _stop_group(self.proc)
        finally:
            self.proc.stdout.close()
            self.stderr.close()


class Result:
    """One measured figure: the sum over the load processes, and the CPU split."""

    def __init__(self, rows: list, seconds: float, server_cpu: dict, busy: float,
                 loadgen_errors: list, server_log: list) -> None:
        self.count = sum(r["count"] for r in rows)
        self.rate = sum(r["count"] / r["seconds"] for r in rows if r["seconds"] > 0)
        self.seconds = seconds
        self.rx = sum(r["rx"] for r in rows)
        self.tx = sum(r["tx"] for r in rows)
        self.errors = sum(r["errors"] for r in rows)
        self.loadgen_cpu = sum(r["cpu"] for r in rows) / seconds
        self.server_cpu_each = sorted((sum(v) / seconds for v in server_cpu.values()),
                                      reverse=True)
        self.server_cpu = sum(sum(v) for v in server_cpu.values()) / seconds
        # User time is the server's own code (Python); system time is the kernel's, and on
        # a virtual machine also what sleeping and waking costs: the part that varies most.
        self.server_user = sum(v[0] for v in server_cpu.values()) / seconds
        # Whatever else ran on the machine meanwhile (other users' jobs): it took cores
        # from this figure, so it is reported next to it.
        self.other_cpu = max(0.0, busy / seconds - self.server_cpu - self.loadgen_cpu)
        self.loadgen_errors = loadgen_errors
        self.server_log = server_log
        # --tls: the protocol and cipher negotiated, e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384"
        self.tls = next((r["tls"] for r in rows if r.get("tls")), "")

    def cpu_us_per_op(self) -> float:
        return self.server_cpu * self.seconds / self.count * 1e6 if self.count else float("nan")

    def user_us_per_op(self) -> float:
        return self.server_user * self.seconds / self.count * 1e6 if self.count else float("nan")

    def cpu_text(self) -> str:
        each = ""
        if len([c for c in self.server_cpu_each if c > 0.02]) > 1:
            each = " (%s)" % "+".join("%.0f" % (c * 100) for c in self.server_cpu_each if c > 0.02)
        text = "server %3.0f%%%s, load %3.0f%%" % (self.server_cpu * 100, each,
                                                    self.loadgen_cpu * 100)
        if self.other_cpu >= OTHER_CPU_NOTE:
            text += ", OTHER %.0f%%" % (self.other_cpu * 100)
        return text

    def notes(self) -> list:
        out = []
        if self.errors:
            out.append("%d load connection(s) failed" % self.errors)
        for line in self.loadgen_errors[:3]:
            out.append("load: " + line)
        if self.server_log:
            out.append("server logged %d line(s), first: %s" % (len(self.server_log),
                                                                self.server_log[0][:150]))
        return out


def run_load(server: ServerProcess, mode: str, procs: int, conns: int, timing: dict,
             extra: tuple = (), cpus: str = "") -> Result:
    """Drive ``server`` with ``procs`` load processes of ``conns`` connections each."""
    args = [sys.executable, LOADGEN, mode, "--port", str(server.port), "--conns", str(conns)]
    args += list(extra)
    if cpus:
        args += ["--cpus", cpus]
    loads, errfiles = [], []
    try:
        for _ in range(procs):
            err = tempfile.TemporaryFile()
            errfiles.append(err)
            loads.append(subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=err, start_new_session=True, cwd=ROOT))
        for proc in loads:
            line = _readline(proc, START_TIMEOUT_S)
            if line != "READY":
                raise RuntimeError("load generator said %r" % line)
        start = time.monotonic() + timing["warmup"]
        end = start + timing["duration"]
        for proc in loads:
            proc.stdin.write(("GO %r %r\n" % (start, end)).encode())
            proc.stdin.flush()
        time.sleep(max(0.0, start - time.monotonic()))
        cpu0, busy0 = server.cpu_by_pid(), _machine_busy()
        t0 = time.monotonic()
        time.sleep(max(0.0, end - time.monotonic()))
        cpu1, busy1 = server.cpu_by_pid(), _machine_busy()
        seconds = time.monotonic() - t0
        server_cpu = {pid: (cpu1[pid][0] - cpu0.get(pid, (0.0, 0.0))[0],
                            cpu1[pid][1] - cpu0.get(pid, (0.0, 0.0))[1]) for pid in cpu1}
        rows = []
        for proc in loads:
            rows.append(json.loads(_readline(proc, timing["duration"] + 20.0)))
        load_log = []
        for err in errfiles:
            err.seek(0)
            load_log += err.read().decode(errors="replace").splitlines()
        return Result(rows, seconds, server_cpu, busy1 - busy0, load_log, server.log_lines())
    finally:
        _stop_loads(loads)
        for err in errfiles:
            err.close()


# -- measuring in rounds --------------------------------------------------------------------------------

class Case:
    """One figure to measure: which server to start and what load to put on it."""

    def __init__(self, name: str, server: str, mode: str, procs: int, conns: int,
                 extra: tuple = (), workers: int = 0, server_cpus: str = "",
                 load_cpus: str = "", env: Optional[dict] = None, python: str = "") -> None:
        self.name = name
        self.server = server
        self.mode = mode
        self.procs = procs
        self.conns = conns
        self.extra = extra
        self.workers = workers
        self.server_cpus = server_cpus
        self.load_cpus = load_cpus
        self.env = env
        self.python = python   # the server's interpreter (a peer's virtualenv), default ours


class Summary:
    """The rounds of one case; the figure is the median round (a whole round, so that its
    CPU columns belong to it)."""

    def __init__(self, results: list) -> None:
        self.results = sorted(results, key=lambda r: r.rate)
        self.median = self.results[(len(self.results) - 1) // 2]
        self.rate = self.median.rate

    def spread(self, fmt: str = ",.0f", scale: float = 1.0) -> str:
        """The rounds' range, in the figure's unit (rates times ``scale``)."""
        if len(self.results) < 2:
            return "1 run"
        return "median of %d, %s-%s" % (len(self.results),
                                         format(self.results[0].rate * scale, fmt),
                                         format(self.results[-1].rate * scale, fmt))

    def notes(self) -> list:
        seen, out = set(), []
        for result in self.results:
            for note in result.notes():
                if note not in seen:
                    seen.add(note)
                    out.append(note)
        return out


def measure(cases: list, timing: dict) -> dict:
    """Run every case ``timing["rounds"]`` times, interleaved (A B, B A, A B, ...) so that
    a slow spell of the machine hits both sides of a comparison."""
    results = {case.name: [] for case in cases}
    for round_no in range(timing["rounds"]):
        order = cases if round_no % 2 == 0 else cases[::-1]
        for case in order:
            with ServerProcess(case.server, case.workers, case.server_cpus, case.env,
                               case.python) as server:
                results[case.name].append(run_load(server, case.mode, case.procs, case.conns,
                                                   timing, case.extra, case.load_cpus))
    return {name: Summary(runs) for name, runs in results.items()}


# -- report helpers ---------------------------------------------------------------------------------

def verdict(value: float, target: float) -> str:
    return "MET" if value >= target else "MISSED"


def line(label: str, value: str, detail: str = "") -> None:
    print(("   %-40s %15s   %s" % (label, value, detail)).rstrip())


def ratio_line(label: str, value: float, target: float, unit: str = "x",
               cpu: Optional[float] = None) -> None:
    """A ratio against its target. ``cpu`` is the same ratio computed from server CPU time
    per operation instead of throughput: it does not depend on how many cores the server
    got, so it is the steadier figure when other processes compete for the machine."""
    def show(v: float) -> str:
        return "%.2fx" % v if unit == "x" else "%.0f%%" % (v * 100)
    goal = "%.1fx" % target if unit == "x" else "%.0f%%" % (target * 100)
    text = "target >= %s: %s" % (goal, verdict(value, target))
    if cpu is not None:
        text += "  (by server CPU per operation: %s)" % show(cpu)
    line(label, show(value), text)


def detail(text: str) -> None:
    print("        " + text)


def measured(label: str, summary: Summary, unit: str, per_op: str = "msg",
             value: str = "", scale: float = 1.0) -> None:
    """One figure: ``value`` (default: the rate in ``unit``), its range over the rounds
    (rates times ``scale``, the unit of ``value``) and the CPU it took."""
    r = summary.median
    line(label, value or "%s %s" % (format(summary.rate, ",.0f"), unit),
         "(%s)" % summary.spread(scale=scale))
    detail("CPU: %s; per %s %.1f us server CPU, %.1f us of it user"
           % (r.cpu_text(), per_op, r.cpu_us_per_op(), r.user_us_per_op()))
    for note in summary.notes()[:4]:
        detail("! " + note)


# -- the sections --------------------------------------------------------------------------------------

def _pinning() -> dict:
    """Case options giving the server one CPU and the load generator another (taskset-style),
    or {} where that is impossible (one CPU, or no sched_setaffinity)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return {}
    if len(cpus) < 2:
        return {}
    return {"server_cpus": str(cpus[0]), "load_cpus": str(cpus[1])}


PINNED = _pinning()
PLACEMENTS = (("", "All processes free to run on every CPU"),
              (" pinned", "Pinned: the server on one CPU, the load generator on another"))


def placements() -> tuple:
    """The placements each comparison is measured in (pinned only where possible)."""
    return PLACEMENTS if PINNED else PLACEMENTS[:1]


def bench_http(timing: dict) -> None:
    procs, conns = 2, 16
    print("1. HTTP keep-alive GET /hello, 12-byte body "
          "(%d load processes x %d connections, 1 request in flight each)" % (procs, conns))
    extra = ("--path", "/hello")
    cases = []
    for suffix, _where in placements():
        pin = PINNED if suffix else {}
        cases += [Case("minisoup" + suffix, "minisoup", "http", procs, conns, extra, **pin),
                  Case("stdlib" + suffix, "stdlib", "http", procs, conns, extra, **pin)]
    s = measure(cases, timing)
    for suffix, where in placements():
        print("   %s:" % where)
        mini, std = s["minisoup" + suffix], s["stdlib" + suffix]
        measured("minisoup Server, 1 process", mini, "req/s", "request")
        measured("http.server.ThreadingHTTPServer", std, "req/s", "request")
        ratio_line("ratio minisoup / stdlib", mini.rate / std.rate, TARGET_HTTP_RATIO,
                   cpu=std.median.cpu_us_per_op() / mini.median.cpu_us_per_op())
    # What the stdlib gives without disable_nagle_algorithm: one short run shows it.
    nagle = measure([Case("nagle", "stdlib-nagle", "http", procs, conns, extra)],
                    dict(timing, rounds=1))["nagle"]
    print("   The stdlib server above sets disable_nagle_algorithm = True. Without it (its default):")
    line("ThreadingHTTPServer, Nagle on", "%s req/s" % format(nagle.rate, ",.0f"),
         "head and body are two writes: each body waits for the client's delayed ACK")
    print()


def bench_ws(timing: dict) -> None:
    procs, conns = 2, 25
    print("2. WebSocket (server: minisoup, 1 process; %d load processes x %d connections, "
          "1 message in flight each, unless stated)" % (procs, conns))
    ws_extra, raw_extra = ("--size", "64", "--path", "/echo"), ("--size", "64")
    cases = []
    for suffix, _where in placements():
        pin = PINNED if suffix else {}
        cases += [Case("ws" + suffix, "minisoup", "ws", procs, conns, ws_extra, **pin),
                  Case("raw" + suffix, "raw-echo", "raw", procs, conns, raw_extra, **pin)]
    s = measure(cases, timing)
    for suffix, where in placements():
        print("   %s:" % where)
        ws, raw = s["ws" + suffix], s["raw" + suffix]
        measured("(a) echo, 64-byte binary messages", ws, "msg/s")
        measured("(b) raw TCP echo, 64 bytes, same Loop", raw, "msg/s")
        ratio_line("(a) / (b)", ws.rate / raw.rate, TARGET_WS_VS_RAW, "%",
                   cpu=raw.median.cpu_us_per_op() / ws.median.cpu_us_per_op())

    big_conns = 4
    big_extra = ("--size", str(MiB), "--path", "/big")
    s = measure([Case("big", "minisoup", "ws", 1, big_conns, big_extra),
                 Case("big-malloc", "minisoup", "ws", 1, big_conns, big_extra,
                      env=MALLOC_KEEP),
                 Case("big-raw", "raw-echo", "raw", 1, big_conns, ("--size", str(MiB)))],
                timing)
    big = s["big"]
    big_mb = big.rate * MiB / 1e6
    measured("(c) echo, 1 MiB binary messages", big, "", "MiB message",
             value="%.0f MB/s" % big_mb, scale=MiB / 1e6)
    detail("%.0f msg/s; 1 load process x %d connections" % (big.rate, big_conns))

    mask_mb = bench_mask_table(timing)
    line("(d) unmasking alone: apply_mask, 1 MiB", "%.0f MB/s" % mask_mb)
    unmask_us = MiB / mask_mb
    ratio_line("(c) / (d)", big_mb / mask_mb, TARGET_BIG_VS_MASK, "%",
               cpu=unmask_us / big.median.cpu_us_per_op())
    detail("server CPU per 1 MiB message %.0f us, of which unmasking %.0f us"
           % (big.median.cpu_us_per_op(), unmask_us))
    raw = s["big-raw"]
    measured("(c) for scale: raw TCP echo of 1 MiB, same Loop", raw, "", "MiB message",
             value="%.0f MB/s" % (raw.rate * MiB / 1e6), scale=MiB / 1e6)
    detail("server CPU per MiB with no framing: %.0f us (the transport's share of (c))"
           % raw.median.cpu_us_per_op())
    kept = s["big-malloc"]
    measured("(c) again, glibc keeping freed memory", kept, "", "MiB message",
             value="%.0f MB/s" % (kept.rate * MiB / 1e6), scale=MiB / 1e6)
    detail("server env %s" % " ".join("%s=%s" % kv for kv in sorted(MALLOC_KEEP.items())))
    detail("(a check that (c) does not depend on malloc handing freed MiBs back to the")
    detail(" kernel and faulting fresh pages in for the next message)")
    line("(c) with that / (d)", "%.0f%%" % (kept.rate * MiB / 1e6 / mask_mb * 100),
         "(by server CPU per operation: %.0f%%)" % (unmask_us / kept.median.cpu_us_per_op() * 100))
    transport_us = raw.median.cpu_us_per_op()
    line("ceiling of (c) / (d) here", "%.0f%%" % (unmask_us / (unmask_us + transport_us) * 100),
         "unmasking + the transport alone: %.0f / (%.0f + %.0f) us per MiB"
         % (unmask_us, unmask_us, transport_us))

    hs_procs = 4
    hs = measure([Case("hs", "minisoup", "handshake", hs_procs, 1, ("--path", "/echo"))],
                 timing)["hs"]
    measured("(e) handshakes: connect, upgrade, close", hs, "/s", "handshake")
    detail("%d load processes, one handshake at a time each" % hs_procs)
    print()


def bench_mask_table(timing: dict) -> float:
    """Print both masking strategies by size; return apply_mask's MB/s on 1 MiB."""
    sizes = (64, 1024, 64 * 1024, MiB)
    funcs = (bench_mask.apply_mask_int, bench_mask.apply_mask_translate, bench_mask.apply_mask)
    print("   masking in MB/s, best of %d (apply_mask uses translate from %d bytes):"
          % (bench_mask.ROUNDS, bench_mask.MASK_STRATEGY_THRESHOLD))
    print("   %12s %12s %12s %12s" % ("payload", "int XOR", "translate", "apply_mask"))
    result = 0.0
    for size in sizes:
        data = os.urandom(size)
        row = [bench_mask.throughput(f, data, bench_mask.ROUNDS, timing["mask_budget"])
               for f in funcs]
        if size >= MiB:
            label = "%d MiB" % (size // MiB)
        elif size >= 1024:
            label = "%d KiB" % (size // 1024)
        else:
            label = "%d B" % size
        best = "int" if row[0] >= row[1] else "translate"
        print("   %12s %12.0f %12.0f %12.0f   faster: %s" % (label, row[0], row[1], row[2], best))
        result = row[2]
    return result


def bench_deflate(timing: dict) -> None:
    procs, conns, size, variety = 2, 25, 1024, 64
    print("3. permessage-deflate: echo of %d-byte JSON-like chat text messages (%d different, "
          "cycled), %d x %d connections" % (size, variety, procs, conns))
    print("   The client sends pre-built frames compressed without context takeover; the server "
          "uses its defaults")
    print("   (context takeover, 12-bit window); the client inflates and checks every answer.")
    extra = ("--size", str(size), "--chat", str(variety), "--path", "/echo")
    s = measure([Case("plain", "minisoup", "ws", procs, conns, extra),
                 Case("deflate", "minisoup", "ws", procs, conns, extra + ("--deflate",))], timing)
    measured("without the extension", s["plain"], "msg/s")
    measured("with permessage-deflate", s["deflate"], "msg/s")
    plain, comp = s["plain"].median, s["deflate"].median
    for r, label in ((plain, "without"), (comp, "with")):
        line("wire bytes per message, %s" % label,
             "%.0f B" % (r.rx / r.count if r.count else 0),
             "server -> client, frame header included; client -> server %.0f B"
             % (r.tx / r.count if r.count else 0))
    if plain.count and comp.count:
        line("with / without", "%.2fx msg/s" % (s["deflate"].rate / s["plain"].rate),
             "%.2fx bytes server -> client, %.2fx client -> server"
             % ((comp.rx / comp.count) / (plain.rx / plain.count),
                (comp.tx / comp.count) / (plain.tx / plain.count)))
    print()


def prefork_ready() -> bool:
    path = os.path.join(ROOT, "minisoup", "prefork.py")
    try:
        with open(path) as f:
            return "class Arbiter" in f.read()
    except OSError:
        return False


def bench_prefork(timing: dict) -> None:
    procs, conns = 2, 25
    print("4. Pre-fork: 64-byte WebSocket echo, %d load processes x %d connections"
          % (procs, conns))
    if not prefork_ready():
        print("   skipped: minisoup/prefork.py (Arbiter) is not there yet")
        print()
        return
    extra = ("--size", "64", "--path", "/echo")
    cases = [Case("w1", "minisoup", "ws", procs, conns, extra, workers=1),
             Case("w2", "minisoup", "ws", procs, conns, extra, workers=2)]
    if PINNED:
        cases.append(Case("w1 pinned", "minisoup", "ws", procs, conns, extra, workers=1, **PINNED))
    s = measure(cases, timing)
    measured("run(workers=1)", s["w1"], "msg/s")
    measured("run(workers=2)", s["w2"], "msg/s")
    ratio_line("workers=2 / workers=1", s["w2"].rate / s["w1"].rate, TARGET_PREFORK)
    if PINNED:
        measured("workers=1, server and load pinned apart", s["w1 pinned"], "msg/s")
    w1, w2 = s["w1"].median, s["w2"].median
    ncpu = os.cpu_count() or 1
    if w2.rate:
        # Server and load generator share the machine: when every core is busy, one
        # message costs this much CPU in all, which caps the rate whatever the workers.
        per_msg = (w2.server_cpu + w2.loadgen_cpu) / w2.rate
        cap = ncpu / per_msg
        print("   Why: the load generator shares the same %d CPUs. With workers=2 one message "
              "cost %.1f us of server" % (ncpu, w2.cpu_us_per_op()))
        print("   CPU and %.1f us of load-generator CPU (kernel loopback work included): %d fully "
              "busy CPUs cap" % (w2.loadgen_cpu / w2.rate * 1e6, ncpu))
        print("   the rate at %s msg/s, %.2fx workers=1, before any other process takes its share."
              % (format(cap, ",.0f"), cap / w1.rate if w1.rate else 0.0))
    # The same 64-byte echo with the load generator's syscalls amortised: bursts of 16
    # messages per write, so that the server's Python, not the loopback, is the cost.
    extra = ("--size", "64", "--path", "/echo", "--batch", "16")
    cases = [Case("w1 burst", "minisoup", "ws", 1, 8, extra, workers=1),
             Case("w2 burst", "minisoup", "ws", 1, 8, extra, workers=2)]
    s = measure(cases, timing)
    print("   64-byte echo in bursts of 16 messages per write, 1 load process x 8 connections:")
    measured("run(workers=1), bursts", s["w1 burst"], "msg/s")
    measured("run(workers=2), bursts", s["w2 burst"], "msg/s")
    ratio_line("workers=2 / workers=1, bursts", s["w2 burst"].rate / s["w1 burst"].rate,
               TARGET_PREFORK)
    # The same question where the server is the bottleneck: a CPU-bound application
    # (about 0.3 ms of Python per message) and a load generator that costs little.
    extra = ("--size", "64", "--path", "/work")
    cases = [Case("w1 work", "minisoup", "ws", 1, 8, extra, workers=1),
             Case("w2 work", "minisoup", "ws", 1, 8, extra, workers=2)]
    s = measure(cases, timing)
    print("   CPU-bound application (/work: ~0.3 ms of Python per message), 1 load process x 8 "
          "connections:")
    measured("run(workers=1), CPU-bound handler", s["w1 work"], "msg/s")
    measured("run(workers=2), CPU-bound handler", s["w2 work"], "msg/s")
    ratio_line("workers=2 / workers=1, CPU-bound", s["w2 work"].rate / s["w1 work"].rate,
               TARGET_PREFORK)
    print()


# -- TLS, against python-websockets -----------------------------------------------------------

def _venv_python() -> str:
    return os.path.join(BENCH_VENV, "bin", "python")


WEBSOCKETS_PROBE = ("import ssl, websockets; "
                    "print(websockets.__version__ + ' | ' + ssl.OPENSSL_VERSION)")


def _peer_version(python: str, probe: str = WEBSOCKETS_PROBE) -> str:
    """What ``probe`` prints under ``python`` (by default websockets' version and the
    OpenSSL), or "" if it fails (the package is not there)."""
    try:
        out = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def venv_peer(requirement: str, probe: str) -> tuple:
    """``(python, what probe printed)`` of the bench virtualenv with ``requirement``
    installed, made on first use; ``(None, why)`` when it cannot be had (no network, no
    venv module)."""
    python = _venv_python()
    if os.path.exists(python):
        version = _peer_version(python, probe)
        if version:
            return python, version
    steps = (("python3 -m venv", [sys.executable, "-m", "venv", BENCH_VENV]),
             ("pip install " + requirement,
              [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
               requirement]))
    if os.path.exists(python):
        steps = steps[1:]
    print("   setting up %s: pip install %s (once)" % (BENCH_VENV, requirement), flush=True)
    for name, step in steps:
        try:
            out = subprocess.run(step, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as exc:
            return None, "%s: %s" % (name, exc)
        if out.returncode != 0:
            errors = [text for text in (out.stderr + out.stdout).splitlines() if text.strip()]
            return None, "%s failed (status %d): %s" % (name, out.returncode,
                                                        errors[-1] if errors else "no output")
    version = _peer_version(python, probe)
    return (python, version) if version else (None, "%s does not import after pip install"
                                              % requirement)


def websockets_peer() -> tuple:
    """``(python, "version | OpenSSL")`` of the bench virtualenv with python-websockets;
    ``(None, why)`` when it cannot be had."""
    return venv_peer(PEER_REQUIREMENT, WEBSOCKETS_PROBE)


def idle_memory(kind: str, python: str, conns: int) -> tuple:
    """Server RSS growth over ``conns`` idle TLS WebSocket connections: ``(KiB per
    connection, RSS before, RSS after, connections still open, notes)``."""
    with ServerProcess(kind, python=python) as server:
        procs = []
        try:
            def start(n: int) -> subprocess.Popen:
                proc = subprocess.Popen([sys.executable, LOADGEN, "idle", "--tls", "--port",
                                         str(server.port), "--conns", str(n), "--path", "/echo"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, start_new_session=True, cwd=ROOT)
                procs.append(proc)
                if _readline(proc, START_TIMEOUT_S + n * 0.05) != "READY":
                    raise RuntimeError("load generator did not open its connections")
                return proc

            def finish(proc: subprocess.Popen) -> dict:
                now = time.monotonic()
                proc.stdin.write(("GO %r %r\n" % (now, now)).encode())
                proc.stdin.flush()
                return json.loads(_readline(proc, 30.0))

            finish(start(IDLE_WARMUP_CONNS))
            time.sleep(IDLE_SETTLE_S)
            before = server.rss_kib()
            proc = start(conns)
            time.sleep(IDLE_SETTLE_S)
            after = server.rss_kib()
            row = finish(proc)
        finally:
            for proc in procs:
                _stop_group(proc)
                for stream in (proc.stdin, proc.stdout, proc.stderr):
                    stream.close()
        return (after - before) / conns, before, after, row["count"], server.log_lines()[:1]


def bench_tls(timing: dict) -> None:
    procs, conns, big_conns, hs_procs = 2, 25, 4, 4
    print("5. TLS: wss:// with the test certificate (tests/tls/server.pem, EC P-256), against "
          "python-websockets")
    print("   (its asyncio server) with the same ssl module and the same server SSLContext "
          "settings; the load")
    print("   generator is tools/loadgen.py --tls (non-blocking ssl.SSLSocket, full handshake "
          "per connection)")
    peer, about = websockets_peer()
    if peer:
        print("   peer: websockets %s (%s)" % tuple(about.split(" | ", 1)))
    else:
        print("   websockets peer skipped: %s" % about)
    tls = ("--tls",)
    echo = ("--size", "64", "--path", "/echo") + tls
    big = ("--size", str(MiB), "--path", "/big") + tls
    hs = ("--path", "/echo") + tls
    cases = [Case("echo", "minisoup-tls", "ws", procs, conns, echo),
             Case("big", "minisoup-tls", "ws", 1, big_conns, big),
             Case("hs", "minisoup-tls", "handshake", hs_procs, 1, hs)]
    if peer:
        cases += [Case("peer " + c.name, "websockets-tls", c.mode, c.procs, c.conns, c.extra,
                       python=peer) for c in list(cases)]
    cases.append(Case("big-malloc", "minisoup-tls", "ws", 1, big_conns, big, env=MALLOC_KEEP))
    s = measure(cases, timing)
    negotiated = sorted({r.tls for summary in s.values() for r in summary.results if r.tls})
    print("   negotiated: %s" % (", ".join(negotiated) or "?"))

    def compare(name: str, label: str, unit: str, per_op: str, target: float,
                mb: bool = False) -> None:
        mine, theirs = s[name], s.get("peer " + name)
        for who, summary in (("minisoup", mine), ("websockets", theirs)):
            if summary is None:
                continue
            if mb:
                measured("%s, %s" % (label, who), summary, "", per_op,
                         value="%.0f MB/s" % (summary.rate * MiB / 1e6), scale=MiB / 1e6)
            else:
                measured("%s, %s" % (label, who), summary, unit, per_op)
        if theirs is not None and theirs.rate:
            ratio_line("%s: minisoup / websockets" % label.split(" ")[0], mine.rate / theirs.rate,
                       target, cpu=theirs.median.cpu_us_per_op() / mine.median.cpu_us_per_op())
        else:
            line("%s: minisoup / websockets" % label.split(" ")[0], "-",
                 "target >= %.1fx: not checked (no peer)" % target)

    compare("echo", "(a) echo 64 B", "msg/s", "msg", TARGET_TLS_ECHO)
    detail("%d load processes x %d connections, 1 message in flight each" % (procs, conns))
    compare("big", "(b) echo 1 MiB", "", "MiB message", TARGET_TLS_BIG, mb=True)
    detail("1 load process x %d connections" % big_conns)
    kept = s["big-malloc"]
    measured("(b) minisoup, glibc keeping freed memory", kept, "", "MiB message",
             value="%.0f MB/s" % (kept.rate * MiB / 1e6), scale=MiB / 1e6)
    detail("(a check, as in 2 (c): a figure far above (b) means the server takes fresh")
    detail(" MiB-sized memory from the kernel for each message, and faults its pages in)")
    compare("hs", "(c) handshakes", "/s", "handshake", TARGET_TLS_HANDSHAKES)
    detail("TLS handshake, upgrade, closing handshake, TCP close; %d load processes, one "
           "at a time each" % hs_procs)

    servers = [("minisoup", "minisoup-tls", "")] + ([("websockets", "websockets-tls", peer)]
                                                    if peer else [])
    for who, kind, python in servers:
        per_conn, before, after, alive, log = idle_memory(kind, python, IDLE_CONNS)
        line("(d) memory per idle connection, %s" % who, "%.1f KiB" % per_conn,
             "server RSS %.1f -> %.1f MiB over %d idle wss:// connections (%d still open)"
             % (before / 1024, after / 1024, IDLE_CONNS, alive))
        for note in log:
            detail("! server logged: %s" % note[:150])
    print()

# -- publish/subscribe fan-out, against python-websockets' broadcast() --------------------------

FANLOAD = os.path.join(TOOLS, "fanload.py")
FANOUT_SUBSCRIBERS = 10000
FANOUT_LOAD_PROCS = 2       # subscribers split evenly between them
FANOUT_SIZE = 100           # bytes of each publication (ASCII text)
FANOUT_NICE = 19            # the load generator yields the CPUs to the server it measures
FANOUT_WARMUP = 3           # publications before the measured ones, per round
FANOUT_PUBS_PER_S = 20      # measured publications per round: this times the profile's duration
FANOUT_GAP_S = 0.02         # idle time before each trigger (everything read, nothing queued)
FANOUT_SETUP_TIMEOUT_S = 180.0   # for a load process to open and upgrade its connections
FANOUT_PUB_TIMEOUT_S = 30.0      # for every subscriber to get one publication
TARGET_FANOUT_W1 = 1.0      # minisoup workers=1 / websockets broadcast(), deliveries per second
TARGET_FANOUT_W2 = 1.5      # minisoup workers=2 / websockets broadcast()


def publication(seq: int) -> bytes:
    """The ``seq``-th trigger: ``P<seq> `` and padding, ``FANOUT_SIZE`` bytes of ASCII."""
    return ("P%d " % seq).ljust(FANOUT_SIZE, "x").encode("ascii")


def _percentile(values: list, fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` 0.5: the median)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(-(-fraction * len(ordered) // 1)) - 1))]


class FanoutRun:
    """The publications measured on one server (all rounds): per publication, the times
    from the trigger until the first and the last subscriber had it, and the CPU spent
    from each trigger until every load process had read every copy (the fan-out windows)."""

    def __init__(self) -> None:
        self.first = []      # s, kernel receive timestamp of the earliest copy
        self.last = []       # s, of the latest copy: "the last subscriber has it"
        self.read = []       # s, until the load generator had read the last copy
        self.rates = []      # deliveries / last, per publication
        self.deliveries = 0
        self.window = 0.0    # s, sum of the fan-out windows
        self.server_cpu = 0.0
        self.server_user = 0.0   # of which in user mode: the server's own code, not the kernel's
        self.load_cpu = 0.0
        self.busy = 0.0      # CPU the whole machine used in the windows
        self.split = {}      # worker id -> subscribers
        self.spans = {}      # worker id -> [(first, last) per publication], s after the trigger
        self.notes = []

    def cpu_text(self) -> str:
        text = "server %3.0f%%, load %3.0f%% (nice %d)" % (
            100 * self.server_cpu / self.window, 100 * self.load_cpu / self.window, FANOUT_NICE)
        other = (self.busy - self.server_cpu - self.load_cpu) / self.window
        if other >= OTHER_CPU_NOTE:
            text += ", OTHER %.0f%%" % (100 * other)
        return text


def _fanout_cpu(server: ServerProcess, loads: list) -> tuple:
    server_cpu = server.cpu_by_pid().values()
    return (sum(sum(v) for v in server_cpu), sum(sum(_cpu_seconds(proc.pid)) for proc in loads),
            _machine_busy(), sum(v[0] for v in server_cpu))


def fanout_load_command(wsload: str, port: int, conns: int) -> list:
    """One load process's command: ``wsload fanout`` where it is built, else tools/fanload.py
    (the same protocol and output; about 5 us of its CPU per delivery against well under 1)."""
    if wsload:
        return [wsload, "fanout", "127.0.0.1", str(port), "/fanout", str(conns), str(FANOUT_NICE)]
    return [sys.executable, FANLOAD, "--port", str(port), "--conns", str(conns),
            "--nice", str(FANOUT_NICE)]


def fanout_round(run: FanoutRun, kind: str, workers: int, python: str, pubs: int,
                 wsload: str = "") -> None:
    """Start the server, subscribe ``FANOUT_SUBSCRIBERS`` connections, trigger
    ``FANOUT_WARMUP + pubs`` publications one at a time; add the measured ones to ``run``."""
    per_proc = FANOUT_SUBSCRIBERS // FANOUT_LOAD_PROCS
    with ServerProcess(kind, workers, python=python) as server:
        loads, errfiles, trigger = [], [], None
        try:
            for _ in range(FANOUT_LOAD_PROCS):
                err = tempfile.TemporaryFile()
                errfiles.append(err)
                loads.append(subprocess.Popen(
                    fanout_load_command(wsload, server.port, per_proc), stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=err, start_new_session=True, cwd=ROOT))
            for proc in loads:
                text = _readline(proc, FANOUT_SETUP_TIMEOUT_S)
                if not text.startswith("READY "):
                    raise RuntimeError("fan-out load generator said %r" % text)
                for worker, count in json.loads(text[6:])["workers"].items():
                    run.split[worker] = run.split.get(worker, 0) + count
            trigger = socket.create_connection(("127.0.0.1", server.port),
                                               timeout=FANOUT_PUB_TIMEOUT_S)
            trigger.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            loadgen.ws_upgrade(trigger, "127.0.0.1", server.port, "/fanout-trigger")
            for seq in range(FANOUT_WARMUP + pubs):
                time.sleep(FANOUT_GAP_S)
                frame = loadgen.client_frame(loadgen.OP_TEXT, publication(seq))
                before = _fanout_cpu(server, loads)
                sent_mono, sent_real = time.monotonic(), time.time()
                trigger.sendall(frame)
                got = []
                for proc in loads:
                    fields = _readline(proc, FANOUT_PUB_TIMEOUT_S).split(" ", 6)
                    if fields[0] != "GOT" or int(fields[1]) != seq:
                        raise RuntimeError("fan-out load generator said %r" % " ".join(fields))
                    got.append(fields[2:])
                window = time.monotonic() - sent_mono
                after = _fanout_cpu(server, loads)
                if seq < FANOUT_WARMUP:
                    continue
                count = sum(int(g[3]) for g in got)
                spans = {}
                for g in got:
                    for worker, (first, last) in json.loads(g[4]).items():
                        old = spans.get(worker, (first, last))
                        spans[worker] = (min(old[0], first), max(old[1], last))
                for worker, (first, last) in spans.items():
                    run.spans.setdefault(worker, []).append((first - sent_real, last - sent_real))
                last = max(float(g[1]) for g in got) - sent_real
                run.first.append(min(float(g[0]) for g in got) - sent_real)
                run.last.append(last)
                run.read.append(max(float(g[2]) for g in got) - sent_mono)
                run.rates.append(count / last if last > 0 else 0.0)
                run.deliveries += count
                run.window += window
                run.server_cpu += after[0] - before[0]
                run.load_cpu += after[1] - before[1]
                run.busy += after[2] - before[2]
                run.server_user += after[3] - before[3]
                if count < FANOUT_SUBSCRIBERS:
                    run.notes.append("publication %d reached %d of %d subscribers"
                                     % (seq, count, FANOUT_SUBSCRIBERS))
        finally:
            if trigger is not None:
                trigger.close()
            _stop_loads(loads)
            for err in errfiles:
                err.seek(0)
                run.notes += ["load: " + text for text in
                              err.read().decode(errors="replace").splitlines()[:3]]
                err.close()
        log = server.log_lines()
        if log:
            run.notes.append("server logged %d line(s), first: %s" % (len(log), log[0][:150]))


def bench_fanout(timing: dict) -> None:
    pubs = max(10, int(timing["duration"] * FANOUT_PUBS_PER_S))
    print("6. Publish/subscribe fan-out: one %d-byte text publication to %s subscribers, "
          "against python-websockets'" % (FANOUT_SIZE, format(FANOUT_SUBSCRIBERS, ",")))
    import peer_tools  # tools/ is on the path (above)
    wsload, why = peer_tools.build_wsload()
    print("   broadcast() to as many connections in one process. Load: %s, %d "
          "processes x %s idle" % ("tools/wsload.c fanout" if wsload else "tools/fanload.py",
                                    FANOUT_LOAD_PROCS,
                                    format(FANOUT_SUBSCRIBERS // FANOUT_LOAD_PROCS, ",")))
    print("   subscribers (epoll, nice %d); a trigger connection sends a text message that the "
          "server publishes" % FANOUT_NICE)
    print("   to them all; one publication at a time, %d measured per server per round (after "
          "%d warm-up)." % (pubs, FANOUT_WARMUP))
    print("   Times run from the trigger's send to the kernel's receive timestamp of each copy "
          "(SO_TIMESTAMPNS:")
    print("   when it reached the subscriber's socket, whenever the load generator reads it); "
          "deliveries/s is")
    print("   subscribers / time until the last one has it (median over publications); CPU is "
          "over the fan-out")
    print("   windows (trigger sent until every copy was read).")
    if not wsload:
        print("   load generator: tools/fanload.py (Python, ~5 us of CPU per delivery), as "
              "wsload is not built: %s" % why)
    peer, about = websockets_peer()
    if peer:
        print("   peer: websockets %s" % about.split(" | ", 1)[0])
    else:
        print("   websockets peer skipped: %s" % about)
    cases = [("minisoup run(workers=1)", "minisoup-fanout", 1, ""),
             ("minisoup run(workers=2)", "minisoup-fanout", 2, "")]
    if peer:
        cases.append(("websockets broadcast(), 1 process", "websockets-fanout", 0, peer))
    runs = {label: FanoutRun() for label, _kind, _workers, _python in cases}
    for round_no in range(timing["rounds"]):
        for label, kind, workers, python in (cases if round_no % 2 == 0 else cases[::-1]):
            fanout_round(runs[label], kind, workers, python, pubs, wsload)
    for label, _kind, _workers, _python in cases:
        run = runs[label]
        if not run.last:
            line(label, "-", "nothing measured")
            continue
        line(label, "%s deliv/s" % format(_percentile(run.rates, 0.5), ",.0f"),
             "last subscriber: median %.1f ms, p99 %.1f ms"
             % (1e3 * _percentile(run.last, 0.5), 1e3 * _percentile(run.last, 0.99)))
        detail("first subscriber %.2f ms; read by the load generator: median %.1f ms, p99 "
               "%.1f ms (%d publications)" % (1e3 * _percentile(run.first, 0.5),
                                             1e3 * _percentile(run.read, 0.5),
                                             1e3 * _percentile(run.read, 0.99), len(run.last)))
        detail("CPU: %s; per delivery %.2f us server CPU (%.2f us of it user), %.2f us "
               "load generator" % (run.cpu_text(), 1e6 * run.server_cpu / run.deliveries,
                                   1e6 * run.server_user / run.deliveries,
                                   1e6 * run.load_cpu / run.deliveries))
        if len(run.split) > 1:
            # Whether the workers fan out at the same time: each one's first and last copy.
            detail("per worker, subscribers and median first-last copy: %s" % ", ".join(
                "%s: %d, %.1f-%.1f ms" % (w, run.split[w],
                                          1e3 * _percentile([f for f, _l in run.spans[w]], 0.5),
                                          1e3 * _percentile([la for _f, la in run.spans[w]], 0.5))
                for w in sorted(run.split, key=int)))
        for note in run.notes[:4]:
            detail("! " + note)
    mine = [(label, target) for label, target in
            (("minisoup run(workers=1)", TARGET_FANOUT_W1),
             ("minisoup run(workers=2)", TARGET_FANOUT_W2))]
    theirs = runs.get("websockets broadcast(), 1 process")
    for label, target in mine:
        name = "%s / websockets" % label.split("(")[1].rstrip(")")
        ours = runs[label]
        if theirs is not None and theirs.rates and ours.rates:
            ratio_line(name, _percentile(ours.rates, 0.5) / _percentile(theirs.rates, 0.5), target,
                       cpu=(theirs.server_cpu / theirs.deliveries)
                       / (ours.server_cpu / ours.deliveries))
        else:
            line(name, "-", "target >= %.1fx: not checked (no peer)" % target)
    print()


# -- peers: libsoup in C, aiohttp, python-websockets, the stdlib ----------------------------------

PEER_ECHO_CONNS, PEER_ECHO_INFLIGHT = 50, 8   # 64-byte echo: 50 connections x 8 in flight
PEER_BIG_CONNS = 4                            # 1 MiB echo: 4 connections x 1 in flight
PEER_HS_CONC = 8                              # handshake cycles at a time
# The handshake rate also at these numbers of cycles at a time, minisoup and libsoup C
# only: the ratio between them depends on it (how many events each loop wakeup finds).
# Shown under the target, which is judged at PEER_HS_CONC (the table's column).
PEER_HS_SWEEP = (1, 64)
# wsload draws a fresh key for each upgrade, as clients do. The table's column (HEADS=same):
# upgrade heads that are all the same but for that key, as one client program sends them
# (minisoup's shared upgrade head, http.UpgradeHeads, parses them and skips its checks).
# Also measured, minisoup and libsoup C, PEER_HS_CONC at a time: every head different
# (HEADS=distinct, a field of each cycle's own), as browsers whose cookies differ send them.
PEER_HS_DISTINCT = "hs-distinct"
PEER_HS_MAX = 1000000                         # wsload's bound; the window ends them first
PEER_WRK_CONNS = 32
PEER_IDLE_BASE_CONNS = 1000                   # held open first; then, measured:
PEER_IDLE_CONNS = 4000
PEER_IDLE_HOLD_S = 120                        # longer than any measurement; stopped after it
AIOHTTP_REQUIREMENT = "aiohttp>=3.9"
AIOHTTP_PROBE = """
import aiohttp, aiohttp.http_parser as p
c_parser = p.HttpRequestParser is getattr(p, "HttpRequestParserC", None)
try:  # aiohttp >= 3.11
    from aiohttp._websocket.helpers import websocket_mask
except ImportError:
    from aiohttp.http_websocket import _websocket_mask as websocket_mask
c_mask = "cython" in websocket_mask.__name__   # else _websocket_mask_python
print("%s | C parser %s, C masking %s" % (aiohttp.__version__, "yes" if c_parser else "NO",
                                           "yes" if c_mask else "NO"))
"""
WEBSOCKETS_C_PROBE = """
import websockets
try:
    import websockets.speedups
    c_mask = "yes"
except ImportError:
    c_mask = "NO"
print("%s | C masking %s" % (websockets.__version__, c_mask))
"""
ANCHOR_BANNER = "anchor_libsoup_c ("   # its start-up line on stderr: not a log line
# The table's columns: (key, heading)
PEER_COLUMNS = (("echo", "64 B echo msg/s (50 conns × 8 in flight)"), ("p99", "64 B p99"),
                ("big", "1 MiB echo MB/s"), ("hs", "handshakes/s (%d at a time)" % PEER_HS_CONC),
                ("idle", "KiB / idle conn (%s to %s held)"
                         % (format(PEER_IDLE_BASE_CONNS, ",d"),
                            format(PEER_IDLE_BASE_CONNS + PEER_IDLE_CONNS, ",d"))),
                ("http", "HTTP keep-alive GET req/s (wrk, 32 conns)"))
WS_FIGURES, HTTP_FIGURES = ("echo", "big", "hs", "idle"), ("http",)
# Not a peer: minisoup's loop and transport answering each head with constant bytes and
# each upgrade with a bare 101 and close (bench_servers.py raw-http), what the HTTP and
# handshake figures would be if HTTP and WebSocket cost nothing.
FLOOR_LABEL = "floor: minisoup's loop alone, constant answers (no HTTP, no WebSocket)"
FLOOR_FIGURES = ("hs", "http")
# The handshake figures: their cycles at a time and wsload's HEADS. The sweep's and the
# distinct heads' are minisoup's and libsoup's only.
HS_FIGURES = dict([("hs", (PEER_HS_CONC, "same"))]
                  + [("hs@%d" % conc, (conc, "same")) for conc in PEER_HS_SWEEP]
                  + [(PEER_HS_DISTINCT, (PEER_HS_CONC, "distinct"))])
HS_SWEEP_FIGURES = tuple(figure for figure in HS_FIGURES if figure != "hs")
TARGET_PEER_HTTP = 2.0        # minisoup / libsoup C, HTTP keep-alive GET
TARGET_PEER_ECHO = 1.5        # minisoup / libsoup C, 64-byte echo
TARGET_PEER_P99_MS = 5.0      # minisoup's 64-byte echo p99, at most
TARGET_PEER_HS = 1.2          # minisoup / libsoup C, handshakes/s
TARGET_PEER_IDLE_KIB = 1.5    # minisoup, per idle WebSocket connection, at most
TARGET_PEER_BIG = 0.6         # minisoup / websockets, 1 MiB echo


class Peer:
    """One row of the table: a bench_servers.py kind, the Python that runs it, the
    figures it takes part in."""

    def __init__(self, label: str, kind: str, figures: tuple, python: str = "") -> None:
        self.label = label
        self.kind = kind
        self.figures = figures
        self.python = python


class PeerFigure:
    """One measurement: the value, the CPU each side used over its window and what other
    processes used meanwhile (fractions of a core), the echo's p99 in ms and messages on
    the least and most served connection, and anything worth a note."""

    def __init__(self, value: float, cpu: Optional[tuple] = None, p99_ms: Optional[float] = None,
                 fairness: Optional[tuple] = None, notes: tuple = ()) -> None:
        self.value = value
        self.cpu = cpu   # (server, load generator, other processes), or None
        self.p99_ms = p99_ms
        self.fairness = fairness
        self.notes = list(notes)


def _cpu_split(server_s: float, load_s: float, busy_s: float, seconds: float) -> tuple:
    """CPU seconds over a window of ``seconds`` as fractions of a core: (server, load,
    everything else the machine ran meanwhile)."""
    if seconds <= 0:
        return None
    return (server_s / seconds, load_s / seconds,
            max(0.0, (busy_s - server_s - load_s) / seconds))


def _server_cpu_total(server: ServerProcess) -> float:
    return sum(sum(v) for v in server.cpu_by_pid().values())


def _pinned_load(args: list, cpus: str) -> subprocess.Popen:
    """A load generator in its own process group, on ``cpus`` when given."""
    def pin() -> None:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True, cwd=ROOT,
                            preexec_fn=pin if cpus else None)


def _close_load(proc: subprocess.Popen) -> None:
    _stop_group(proc)
    proc.stdout.close()


def _server_notes(server: ServerProcess) -> list:
    lines = [text for text in server.log_lines()
             if text.strip() and not text.startswith(ANCHOR_BANNER)]
    if not lines:
        return []
    return ["server logged %d line(s), first: %s" % (len(lines), lines[0].strip()[:120])]


def wsload_window(server: ServerProcess, wsload: str, args: list, cpus: str,
                  seconds: float) -> tuple:
    """Run ``wsload args`` against ``server``; ``(its result line as a dict, the CPU split
    over the timed window)``, read at wsload's window marks."""
    proc = _pinned_load([wsload] + args, cpus)
    try:
        marks, result = {}, None
        deadline = time.monotonic() + START_TIMEOUT_S + seconds + 10.0
        while result is None:
            row = json.loads(_readline(proc, max(0.1, deadline - time.monotonic())))
            if "window" in row:
                marks[row["window"]] = (_server_cpu_total(server), _machine_busy(),
                                        time.monotonic())
            else:
                result = row
        if "start" not in marks or "end" not in marks:
            raise RuntimeError("wsload gave no window marks: %r" % result)
        (cpu0, busy0, t0), (cpu1, busy1, t1) = marks["start"], marks["end"]
        # wsload's own CPU is over its window (its cpu_s and seconds), very nearly this one
        load_s = result["cpu_s"] / result["seconds"] * (t1 - t0) if result["seconds"] else 0.0
        return result, _cpu_split(cpu1 - cpu0, load_s, busy1 - busy0, t1 - t0)
    finally:
        _close_load(proc)


def _wsload_notes(row: dict) -> list:
    out = []
    if row.get("errors"):
        out.append("wsload counted %d error(s)" % row["errors"])
    if row.get("bad_length"):
        out.append("%d echo(es) of the wrong length" % row["bad_length"])
    return out


def peer_echo(server: ServerProcess, wsload: str, cpus: str, path: str, conns: int,
              inflight: int, size: int, seconds: int) -> PeerFigure:
    """``size``-byte binary echo; the value is msg/s (MB/s from 64 KiB up)."""
    row, cpu = wsload_window(server, wsload, ["echo", "127.0.0.1", str(server.port), path,
                                                     str(conns), str(inflight), str(size),
                                                     str(seconds)], cpus, seconds)
    value = row["MB_per_sec"] if size >= 65536 else row["msgs_per_sec"]
    return PeerFigure(value, cpu, row["p99_us"] / 1000.0,
                      (row["per_conn_min"], row["per_conn_max"]),
                      _wsload_notes(row) + _server_notes(server))


def peer_hs(server: ServerProcess, wsload: str, cpus: str, seconds: int,
            conc: int = PEER_HS_CONC, heads: str = "same") -> PeerFigure:
    """Handshake cycles per second, ``conc`` at a time: connect, upgrade, closing
    handshake, close. ``heads``: wsload's HEADS (same or distinct)."""
    row, cpu = wsload_window(server, wsload, ["hs", "127.0.0.1", str(server.port), "/echo",
                                                     str(conc), str(PEER_HS_MAX),
                                                     str(seconds), heads], cpus, seconds)
    return PeerFigure(row["handshakes_per_sec"], cpu,
                      notes=_wsload_notes(row) + _server_notes(server))


def peer_http(server: ServerProcess, wrk: str, cpus: str, seconds: int) -> PeerFigure:
    """wrk's requests/s for ``GET /hello`` over keep-alive connections, one wrk thread."""
    cpu0, busy0, t0 = _server_cpu_total(server), _machine_busy(), time.monotonic()
    proc = _pinned_load([wrk, "-t1", "-c%d" % PEER_WRK_CONNS, "-d%ds" % seconds,
                         "http://127.0.0.1:%d/hello" % server.port], cpus)
    try:
        # wrk reports no CPU time of its own: its rusage from wait4, over its lifetime.
        deadline = time.monotonic() + seconds + START_TIMEOUT_S
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
                break
            if time.monotonic() > deadline:
                raise RuntimeError("wrk did not finish within %g s" % (deadline - t0))
            time.sleep(0.02)
        cpu1, busy1, t1 = _server_cpu_total(server), _machine_busy(), time.monotonic()
        out = proc.stdout.read().decode(errors="replace")
    finally:
        _close_load(proc)
    rate, notes = None, []
    for text in out.splitlines():
        text = text.strip()
        if text.startswith("Requests/sec:"):
            rate = float(text.split()[1])
        elif text.startswith(("Socket errors", "Non-2xx")):
            notes.append("wrk: " + text)
    if rate is None:
        raise RuntimeError("wrk said: %s" % (out.strip()[-200:] or "nothing"))
    cpu = _cpu_split(cpu1 - cpu0, usage.ru_utime + usage.ru_stime, busy1 - busy0, t1 - t0)
    return PeerFigure(rate, cpu, notes=notes + _server_notes(server))


def peer_idle(server: ServerProcess, wsload: str, cpus: str) -> PeerFigure:
    """Server RSS growth per idle WebSocket connection (KiB): the marginal cost of a
    connection at scale. After a warm-up of IDLE_WARMUP_CONNS opened and closed (one-off
    allocations), PEER_IDLE_BASE_CONNS are opened and held, then PEER_IDLE_CONNS more:
    the growth over the latter, per connection, is the figure.

    The held base matters for a Python server: memory freed before the measurement
    (compiling its modules from source when it has no .pyc files, for one) leaves holes
    in its heap that the first few hundred connections fill without growing the RSS,
    which made minisoup's first 1,000 connections look 10-15 % cheaper than later ones. And
    4,000 connections span a resize or two of the containers that grow with them (the
    set of connections, the selector's map), as a real server's would."""
    def idle(count: int, hold: int) -> subprocess.Popen:
        return _pinned_load([wsload, "idle", "127.0.0.1", str(server.port), "/echo",
                             str(count), str(hold)], cpus)

    def opened(proc: subprocess.Popen, count: int) -> dict:
        return json.loads(_readline(proc, START_TIMEOUT_S + count * 0.05))

    proc = idle(IDLE_WARMUP_CONNS, 0)
    try:
        opened(proc, IDLE_WARMUP_CONNS)
        _readline(proc, START_TIMEOUT_S)   # its closing line: every connection closed
    finally:
        _close_load(proc)
    base = idle(PEER_IDLE_BASE_CONNS, PEER_IDLE_HOLD_S)
    try:
        base_row = opened(base, PEER_IDLE_BASE_CONNS)
        time.sleep(IDLE_SETTLE_S)
        before = server.rss_kib()
        proc = idle(PEER_IDLE_CONNS, PEER_IDLE_HOLD_S)
        try:
            row = opened(proc, PEER_IDLE_CONNS)
            time.sleep(IDLE_SETTLE_S)
            after = server.rss_kib()
        finally:
            _close_load(proc)
    finally:
        _close_load(base)
    notes = _wsload_notes(base_row) + _wsload_notes(row) + _server_notes(server)
    if base_row["open"] < PEER_IDLE_BASE_CONNS:
        notes.append("only %d of the %d held idle connections opened"
                     % (base_row["open"], PEER_IDLE_BASE_CONNS))
    if row["open"] < PEER_IDLE_CONNS:
        notes.append("only %d of %d idle connections opened" % (row["open"], PEER_IDLE_CONNS))
    return PeerFigure((after - before) / max(1, row["open"]), notes=notes)


def _peer_seconds(timing: dict) -> int:
    """wsload and wrk windows are whole seconds: 1 for --quick, 2 for the full run."""
    return max(1, int(round(timing["duration"] + 0.5)))


def peer_figure(peer: Peer, figure: str, tools: dict, timing: dict) -> PeerFigure:
    """One figure of one peer, on a server of its own (started and stopped here)."""
    seconds = _peer_seconds(timing)
    load_cpus = PINNED.get("load_cpus", "")
    with ServerProcess(peer.kind, cpus=PINNED.get("server_cpus", ""),
                       python=peer.python) as server:
        if figure == "echo":
            return peer_echo(server, tools["wsload"], load_cpus, "/echo", PEER_ECHO_CONNS,
                             PEER_ECHO_INFLIGHT, 64, seconds)
        if figure == "big":
            return peer_echo(server, tools["wsload"], load_cpus, "/big", PEER_BIG_CONNS, 1, MiB,
                             seconds)
        if figure in HS_FIGURES:
            return peer_hs(server, tools["wsload"], load_cpus, seconds, *HS_FIGURES[figure])
        if figure == "idle":
            return peer_idle(server, tools["wsload"], load_cpus)
        return peer_http(server, tools["wrk"], load_cpus, seconds)


def _median_figure(figures: list) -> PeerFigure:
    """The median round (by value), with the median p99 over the rounds."""
    ordered = sorted(figures, key=lambda f: f.value)
    median = ordered[(len(ordered) - 1) // 2]
    p99s = sorted(f.p99_ms for f in figures if f.p99_ms is not None)
    if p99s:
        median.p99_ms = p99s[(len(p99s) - 1) // 2]
    for f in figures:
        median.notes += [n for n in f.notes if n not in median.notes]
    return median


def _peer_cell(figure: Optional[PeerFigure], key: str) -> str:
    if figure is None:
        return "—"
    if key == "p99":
        return "%.1f ms" % figure.p99_ms
    if key == "idle":
        return "%.2f" % figure.value
    text = format(figure.value, ",.0f")
    if figure.cpu is not None:
        server, load, other = figure.cpu
        busy = " OTHER %.0f" % (other * 100) if other >= OTHER_CPU_NOTE else ""
        text += " [%.0f/%.0f%s]" % (server * 100, load * 100, busy)
    return text


def peer_rows() -> tuple:
    """Which peers and load generators this machine has: ``(peers, tools, skip lines)``."""
    import peer_tools  # tools/ is on the path (above)

    skipped, tools = [], {}
    tools["wsload"], why = peer_tools.build_wsload()
    if why:
        skipped.append("WebSocket columns (wsload): " + why)
    tools["wrk"], why = peer_tools.find_wrk()
    if why:
        skipped.append("HTTP column (wrk): " + why)
    figures = tuple(f for f in WS_FIGURES if tools["wsload"]) + tuple(f for f in HTTP_FIGURES
                                                                      if tools["wrk"])

    def only(wanted: tuple) -> tuple:
        return tuple(f for f in figures if f in wanted)

    sweep = HS_SWEEP_FIGURES if tools["wsload"] else ()
    peers = [Peer("minisoup (1 process)", "minisoup", figures + sweep)]
    anchor, why = peer_tools.build_anchor()
    if anchor:
        peers.append(Peer("libsoup %s in C" % peer_tools.libsoup_version(), "libsoup-c",
                          figures + sweep))
    else:
        skipped.append("libsoup in C: " + why)
    python, about = venv_peer(AIOHTTP_REQUIREMENT, AIOHTTP_PROBE)
    if python:
        version, c_parts = about.split(" | ", 1)
        peers.append(Peer("aiohttp %s (%s)" % (version, c_parts), "aiohttp", figures, python))
    else:
        skipped.append("aiohttp: " + about)
    python, about = venv_peer(PEER_REQUIREMENT, WEBSOCKETS_C_PROBE)
    if python:
        version, c_parts = about.split(" | ", 1)
        peers.append(Peer("python-websockets %s (%s)" % (version, c_parts), "websockets",
                          only(WS_FIGURES), python))
    else:
        skipped.append("python-websockets: " + about)
    peers.append(Peer("stdlib ThreadingHTTPServer (HTTP only)", "stdlib", only(HTTP_FIGURES)))
    peers.append(Peer(FLOOR_LABEL, "raw-http", only(FLOOR_FIGURES)))
    return [p for p in peers if p.figures], tools, skipped


def measure_peers(peers: list, tools: dict, timing: dict) -> dict:
    """Every figure of every peer, in rounds interleaved (the peers' order reversed every
    other round); ``{(peer label, figure): the median PeerFigure}``."""
    results = {}   # (peer label, figure) -> [PeerFigure per round]
    for round_no in range(timing["rounds"]):
        order = peers if round_no % 2 == 0 else peers[::-1]
        for peer in order:
            for figure in peer.figures:
                try:
                    measured_figure = peer_figure(peer, figure, tools, timing)
                except (RuntimeError, OSError, ValueError, KeyError) as exc:
                    print("   ! %s, %s: %s" % (peer.label, figure, exc))
                    continue
                results.setdefault((peer.label, figure), []).append(measured_figure)
    return {key: _median_figure(figures) for key, figures in results.items()}


def print_peer_table(peers: list, table: dict) -> None:
    """The table in the README's style, then its notes and the echo's fairness."""
    print("| server | " + " | ".join(heading for _key, heading in PEER_COLUMNS) + " |")
    print("|---" * (len(PEER_COLUMNS) + 1) + "|")
    for peer in peers:
        cells = [_peer_cell(table.get((peer.label, "echo" if key == "p99" else key)), key)
                 for key, _heading in PEER_COLUMNS]
        print("| %s | %s |" % (peer.label, " | ".join(cells)))
    print()
    for peer in peers:
        notes = []
        for figure in peer.figures:
            if (peer.label, figure) in table:
                notes += ["%s: %s" % (figure, n) for n in table[(peer.label, figure)].notes]
        for note in notes[:3]:
            detail("! %s, %s" % (peer.label, note))
    fair = ["%s %s/%s" % (peer.label.split(" (")[0], format(f.fairness[0], ",d"),
                          format(f.fairness[1], ",d"))
            for peer in peers for f in [table.get((peer.label, "echo"))]
            if f is not None and f.fairness]
    if fair:
        print("   64 B echo, messages on the least / most served connection (fairness):")
        detail("; ".join(fair))


def print_peer_targets(peers: list, table: dict) -> None:
    """MET or MISSED for each of issue 15's targets."""
    print("   Targets (minisoup against libsoup in C unless stated):")
    mine = {f: table.get((peers[0].label, f)) for f in WS_FIGURES + HTTP_FIGURES}
    libsoup = next((p for p in peers if p.kind == "libsoup-c"), None)
    ws_peer = next((p for p in peers if p.kind == "websockets"), None)

    def against(label: str, figure: str, other: Optional[Peer], target: float) -> None:
        theirs = table.get((other.label, figure)) if other else None
        if mine.get(figure) is None or theirs is None or not theirs.value:
            line(label, "-", "target >= %.1fx: not checked (%s)"
                 % (target, "no peer" if other is None else "not measured"))
            return
        ratio_line(label, mine[figure].value / theirs.value, target)

    def at_most(label: str, value: Optional[float], unit: str, target: float) -> None:
        if value is None:
            line(label, "-", "target <= %g %s: not checked (not measured)" % (target, unit))
            return
        line(label, "%.2f %s" % (value, unit), "target <= %g %s: %s"
             % (target, unit, "MET" if value <= target else "MISSED"))

    def split(figure: str, what: str, work: str, target: float) -> None:
        """Server CPU per operation: minisoup's, the floor row's, libsoup's, the budget."""
        floor = table.get((FLOOR_LABEL, figure))
        theirs = table.get((libsoup.label, figure)) if libsoup else None
        if mine[figure] is None or floor is None or theirs is None:
            return

        def us(measured: PeerFigure) -> float:
            return (measured.cpu[0] * 1e6 / measured.value
                    if measured.cpu and measured.value else 0.0)
        detail("server CPU per %s: minisoup %.1f us, of which the loop and the kernel alone "
               "(the floor row) %.1f us and %s %.1f us; libsoup C %.1f us; %.1fx libsoup "
               "needs <= %.1f us" % (what, us(mine[figure]), us(floor), work,
                                     us(mine[figure]) - us(floor), us(theirs), target,
                                     us(theirs) / target))
        if floor.cpu and floor.cpu[1] >= LOAD_LIMIT_NOTE:
            detail("the floor row's load generator was %.0f%% busy (its server %.0f%%): the "
                   "floor's rate is a lower bound of the loop's own"
                   % (floor.cpu[1] * 100, floor.cpu[0] * 100))

    against("HTTP keep-alive GET", "http", libsoup, TARGET_PEER_HTTP)
    split("http", "request", "HTTP", TARGET_PEER_HTTP)
    against("64 B echo", "echo", libsoup, TARGET_PEER_ECHO)
    at_most("64 B echo p99, minisoup", mine["echo"].p99_ms if mine["echo"] else None, "ms",
            TARGET_PEER_P99_MS)
    against("handshakes/s", "hs", libsoup, TARGET_PEER_HS)
    split("hs", "handshake cycle", "HTTP and WebSocket", TARGET_PEER_HS)
    def hs_ratio(figure: str) -> Optional[str]:
        ours = table.get((peers[0].label, figure))
        theirs = table.get((libsoup.label, figure)) if libsoup else None
        if ours is None or theirs is None or not theirs.value:
            return None
        return "%s / %s = %.2fx" % (_peer_cell(ours, figure), _peer_cell(theirs, figure),
                                    ours.value / theirs.value)

    sweep = []
    for figure, (conc, heads) in sorted(HS_FIGURES.items(), key=lambda item: item[1][0]):
        ratio = hs_ratio(figure) if heads == "same" else None
        if ratio is not None:
            sweep.append("%d: %s" % (conc, ratio))
    if len(sweep) > 1:
        detail("handshakes/s by cycles at a time, minisoup / libsoup C (the target is judged "
               "at %d, the table's column):" % PEER_HS_CONC)
        detail("  " + "; ".join(sweep))
    distinct = hs_ratio(PEER_HS_DISTINCT)
    if distinct is not None:
        detail("the table's upgrade heads are the same but for their key (one client program); "
               "with every head")
        detail("  different (wsload HEADS=distinct, %d at a time): %s" % (PEER_HS_CONC, distinct))
    at_most("KiB per idle WebSocket conn, minisoup", mine["idle"].value if mine["idle"] else None,
            "KiB", TARGET_PEER_IDLE_KIB)
    against("1 MiB echo, against websockets", "big", ws_peer, TARGET_PEER_BIG)


def bench_peers(timing: dict) -> None:
    print("7. Peers: minisoup against libsoup 3 in C (tools/anchor_libsoup_c.c), aiohttp, "
          "python-websockets and")
    print("   the stdlib, each server in one process; load: tools/wsload.c (WebSocket, binary "
          "messages, no")
    print("   compression offered) and wrk (HTTP, 1 thread). Each figure on a fresh server.")
    if PINNED:
        print("   Pinned: every server on CPU %s, the load generator on CPU %s."
              % (PINNED["server_cpus"], PINNED["load_cpus"]))
    else:
        print("   Not pinned (fewer than 2 CPUs to give): server and load share the machine.")
    peers, tools, skipped = peer_rows()
    for text in skipped:
        print("   skipped: " + text)
    if not peers:
        print()
        return
    table = measure_peers(peers, tools, timing)
    print("   %d round(s) of %d s, medians. [a/b]: CPU of the server / of the load generator "
          "over the measured" % (timing["rounds"], _peer_seconds(timing)))
    print("   window, in % of one core: a side near 100% is what limits the figure. OTHER: what "
          "processes outside")
    print("   the benchmark used meanwhile (from 10%), which took CPU from the figure.")
    print()
    print_peer_table(peers, table)
    print_peer_targets(peers, table)
    print()


SECTIONS = {"http": bench_http, "ws": bench_ws, "deflate": bench_deflate, "prefork": bench_prefork,
            "tls": bench_tls, "fanout": bench_fanout}
SECTIONS["peers"] = bench_peers


def byte_compile_minisoup() -> None:
    """Write minisoup's .pyc files (``__pycache__/``, as ``pip install`` and a first import
    do), so that every server measured imports its modules as a user's would, whatever
    PYTHONDONTWRITEBYTECODE says. Compiling from source at each start would leave freed
    memory in the server's heap that its first connections reuse: the idle figure would
    come out lower than a user's."""
    import compileall
    if not compileall.compile_dir(os.path.join(ROOT, "minisoup"), quiet=1):
        print("minisoup's modules could not be byte-compiled: servers compile them at start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short windows, 1 round (about 2 minutes)")
    parser.add_argument("--only", default="", help="comma-separated sections: " + ",".join(SECTIONS))
    args = parser.parse_args()
    timing = PROFILES["quick" if args.quick else "full"]
    wanted = [s for s in args.only.split(",") if s] or list(SECTIONS)
    unknown = set(wanted) - set(SECTIONS)
    if unknown:
        parser.error("unknown section(s): %s" % ", ".join(sorted(unknown)))

    began = time.monotonic()
    print("minisoup benchmarks: CPython %s on %s, %d CPU(s), load average %.2f at start"
          % (platform.python_version(), platform.system(), os.cpu_count() or 1,
             os.getloadavg()[0]))
    print("%s run: %d round(s) of %.1f s warm-up + %.1f s measured per figure, interleaved; "
          "the median round is shown." % ("quick" if args.quick else "full", timing["rounds"],
                                           timing["warmup"], timing["duration"]))
    print("CPU is in % of one core over the measured window; OTHER is what processes outside "
          "the benchmark used meanwhile")
    print("(other users of this machine: it slows the figures down and makes them noisy).")
    byte_compile_minisoup()
    print()
    for name in wanted:
        SECTIONS[name](timing)
    print("done in %.0f s" % (time.monotonic() - began))


if __name__ == "__main__":
    main()
