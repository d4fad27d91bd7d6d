"""End-to-end tests of the pre-fork master and workers, as real processes.

Each test starts ``python -m minisoup prefork_apps:... --workers N`` in its own
session and SIGKILLs the whole process group afterwards, even when the test fails.
"""

import collections
import os
import re
import signal
import socket
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import minisoup  # noqa: E402
from prefork_apps import BURST_MESSAGES, SPIN_S  # noqa: E402
from serverproc import ClientLoop, MinisoupProcess, http_get  # noqa: E402

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or not os.path.isdir("/proc"),
                                reason="pre-fork needs fork() and /proc (Linux)")


@pytest.fixture
def server_process():
    started = []

    def start(app="prefork_apps:whoami", workers=2, args=(), ready=None):
        proc = MinisoupProcess(app, workers=workers, args=args)
        started.append(proc)
        return proc.start(workers_ready=workers if ready is None else ready)

    yield start
    for proc in started:
        proc.kill()


def whoami(port, count):
    """Open ``count`` WebSockets to /whoami and keep them; returns (connections, ids, pids)."""
    connections, ids, pids = [], [], []
    for _ in range(count):
        conn = minisoup.websocket_connect("ws://127.0.0.1:%d/whoami" % port, timeout=5)
        connections.append(conn)
        worker_id, pid = conn.recv(timeout=5)[1].split()
        ids.append(int(worker_id))
        pids.append(int(pid))
    return connections, ids, pids


def close_all(connections):
    for conn in connections:
        conn.sock.close()


def test_two_workers_both_serve(server_process):
    proc = server_process(workers=2)
    connections, ids, pids = whoami(proc.port, 12)
    try:
        assert set(ids) == {1, 2}
        assert set(pids) == set(proc.live_workers())
        assert proc.pid not in pids
        assert "worker" in http_get(proc.port, "/worker")
    finally:
        close_all(connections)


def test_killed_worker_is_replaced_and_no_connection_refused(server_process):
    proc = server_process(workers=2)
    before = proc.live_workers()
    loop = ClientLoop(proc.port)
    loop.start()
    try:
        deadline = time.monotonic() + 5
        while not loop.pids and time.monotonic() < deadline:
            time.sleep(0.01)
        victim = loop.pids[-1]  # the worker answering right now
        time.sleep(0.3)
        os.kill(victim, signal.SIGKILL)
        after = proc.wait_workers(lambda pids: len(pids) == 2 and victim not in pids,
                                  what="replacement after SIGKILL")
        time.sleep(1.5)  # keep connecting while the new worker settles in
    finally:
        loop.stop()
    new = set(after) - set(before)
    assert len(new) == 1, (before, after)
    proc.wait_log(r"worker \d \(pid %d\) was killed by SIGKILL" % victim)
    assert loop.refused == 0
    # Only the connection the dead worker held at that instant may be lost.
    assert len(loop.errors) <= 1, loop.errors
    assert loop.ok > 50
    proc.assert_no_zombies()


def test_sigterm_flushes_queued_messages_then_1001(server_process):
    proc = server_process(workers=2, args=["--graceful-timeout", "5"])
    clients = [minisoup.websocket_connect("ws://127.0.0.1:%d/burst" % proc.port, timeout=5)
               for _ in range(4)]
    try:
        for conn in clients:
            # "start" arrived: the handler that queued the whole burst has begun, and a
            # signal is handled only after it returns.
            assert conn.recv(timeout=5)[1] == "start"
        signaled = time.monotonic()
        proc.send(signal.SIGTERM)
        for conn in clients:
            received = 0
            with pytest.raises(minisoup.ConnectionClosed):
                while True:
                    kind, data = conn.recv(timeout=5)
                    assert data.startswith("%d " % received)
                    received += 1
            assert received == BURST_MESSAGES
            assert conn.get_close_code() == 1001
        assert proc.wait_exit(5) == 0
        assert time.monotonic() - signaled < 5
    finally:
        close_all(clients)
    proc.wait_log(r"master pid \d+: stopped")


def test_ttin_ttou_change_the_worker_count(server_process):
    proc = server_process(workers=2)
    proc.send(signal.SIGTTIN)
    three = proc.wait_workers(lambda pids: len(pids) == 3, what="SIGTTIN")
    proc.wait_log(r"worker 3 ready")
    connections, ids, pids = whoami(proc.port, 30)
    try:
        assert set(ids) == {1, 2, 3}
        assert set(pids) == set(three)
    finally:
        close_all(connections)
    for _ in range(3):  # the third one must leave one worker running
        proc.send(signal.SIGTTOU)
        time.sleep(0.05)
    one = proc.wait_workers(lambda pids: len(pids) == 1, what="SIGTTOU")
    proc.wait_log(r"SIGTTOU ignored: already down to one worker")
    proc.wait_log(r"worker 3 \(pid \d+\) exited with status 0")
    time.sleep(0.3)
    assert proc.live_workers() == one
    assert "worker 1 pid %d" % one[0] in http_get(proc.port, "/worker")
    proc.assert_no_zombies()


def test_sighup_replaces_every_worker_without_refusing(server_process):
    proc = server_process(workers=2)
    old = proc.live_workers()
    loop = ClientLoop(proc.port)
    loop.start()
    try:
        time.sleep(0.3)
        proc.send(signal.SIGHUP)
        new = proc.wait_workers(lambda pids: len(pids) == 2 and not set(pids) & set(old),
                                what="SIGHUP replacement")
        time.sleep(0.3)
    finally:
        loop.stop()
    assert loop.refused == 0
    # Graceful replacement: not even the connections in flight are lost.
    assert loop.errors == []
    assert set(loop.pids) & set(new), "the new workers served"
    assert proc.count_log(r"stopping worker \d \(pid \d+\) gracefully: replaced by") == 2
    assert proc.live_workers() == new
    proc.assert_no_zombies()


def _worker_identities(port, workers):
    """``{worker_id: pid}`` of the live workers, asked over /whoami until all are seen."""
    seen = {}
    deadline = time.monotonic() + 10
    while len(set(seen.values())) < workers and time.monotonic() < deadline:
        connections, ids, pids = whoami(port, 2 * workers)
        close_all(connections)
        for worker_id, pid in zip(ids, pids):
            assert seen.setdefault(worker_id, pid) == pid or not _running(seen[worker_id]), \
                "two live workers say they are worker %d: pids %d and %d" \
                % (worker_id, seen[worker_id], pid)
            seen[worker_id] = pid
    return seen


@pytest.mark.parametrize("gap_s", [0.01, 0.1, 0.3])
def test_sighups_close_together_leave_n_workers_with_distinct_ids(server_process, gap_s):
    # Issue 14 item 3: three SIGHUPs 10 ms apart left two live workers that both said
    # get_worker_id() == 2 (a new SIGHUP rebuilt the plan while a replacement was in flight
    # and matched the replacement to the wrong old worker).
    workers = 3
    proc = server_process(workers=workers)
    old = proc.live_workers()
    for _ in range(3):
        proc.send(signal.SIGHUP)
        time.sleep(gap_s)
    # Settled: every worker forked before the last SIGHUP replaced (the replacements of
    # the first SIGHUP too, when they were forked before the last one), and no change
    # for a second.
    new, since = None, time.monotonic()
    deadline = since + 20
    while time.monotonic() - since < 1.0:
        assert time.monotonic() < deadline, "workers never settled; log:\n" + proc.log_text()
        pids = proc.live_workers()
        if pids != new:
            new, since = pids, time.monotonic()
        time.sleep(0.02)
    assert len(new) == workers and not set(new) & set(old), (old, new)
    identities = _worker_identities(proc.port, workers)
    assert sorted(identities) == list(range(1, workers + 1)), identities
    assert sorted(identities.values()) == new
    # The master's own record agrees: each id booted last by a live pid.
    booted = {}
    for line in proc.log:
        match = re.search(r"master: booted worker (\d+) \(pid (\d+)\)", line)
        if match:
            booted[int(match.group(1))] = int(match.group(2))
    assert sorted(booted) == list(range(1, workers + 1)), booted
    assert sorted(booted.values()) == new, (booted, new)
    proc.assert_no_zombies()


def _started_records(port, workers):
    """``{pid: (worker_id, recorded)}`` from /started over held keep-alive connections
    (the balancer spreads them) until every worker has answered."""
    answers, clients = {}, []
    try:
        while len(answers) < workers and len(clients) < 10 * workers:
            client = KeepAliveClient(port, timeout=5)
            clients.append(client)
            mine, _sep, recorded = client.get("/started").partition("|")
            worker_id, pid = map(int, mine.split())
            answers[pid] = (worker_id, [tuple(map(int, r.split())) for r in recorded.split(";")
                                        if r])
    finally:
        for client in clients:
            client.close()
    return answers


@pytest.mark.parametrize("how", ["signal", "cli"])
def test_worker_started_runs_in_each_worker_after_the_fork(server_process, how):
    # Issue 10 item 1: the app's post-fork hook. "signal": the app connects worker-started
    # itself; "cli": --post-fork MODULE:FUNCTION connects it.
    if how == "signal":
        proc = server_process(app="prefork_apps:started_connected", workers=2)
    else:
        proc = server_process(app="prefork_apps:started", workers=2,
                              args=["--post-fork", "prefork_apps:record_start"])
    answers = _started_records(proc.port, 2)
    assert sorted(answers) == proc.live_workers()
    for pid, (worker_id, recorded) in answers.items():
        # Once, in this worker, after the fork (not inherited from the master), with the
        # worker's own id already set.
        assert recorded == [(worker_id, pid)], answers
    assert sorted(worker_id for worker_id, _r in answers.values()) == [1, 2]
    # Before the worker serves: its hook's log line comes before its "ready" line.
    for pid, (worker_id, _recorded) in answers.items():
        lines = [i for i, line in enumerate(proc.log) if "pid %d]" % pid in line]
        hook = [i for i in lines if "worker-started: worker %d" % worker_id in proc.log[i]]
        ready = [i for i in lines if "worker %d ready" % worker_id in proc.log[i]]
        assert hook and ready and hook[0] < ready[0]


def test_failing_post_fork_hook_fails_the_worker_with_back_off(server_process):
    proc = server_process(app="prefork_apps:started", workers=1, ready=0,
                          args=["--post-fork", "prefork_apps:raises"])
    proc.wait_log(r"waiting [\d.]+ s before forking again", timeout=5)
    assert proc.count_log(r"worker 1 failed") >= 1
    assert proc.count_log(r"this app is broken on purpose") >= 1
    assert proc.count_log(r"worker \d ready") == 0
    proc.send(signal.SIGTERM)
    assert proc.wait_exit(5) == 0


def test_crash_loop_backs_off(server_process):
    proc = server_process(app="prefork_apps:crash_at_start", workers=2, ready=0)
    time.sleep(2.5)
    forks = proc.count_log(r"master: booted worker")
    # Without the back-off this would be thousands of forks; with it (0.1 s doubling):
    # a handful.
    assert 3 <= forks <= 12, forks
    assert proc.count_log(r"waiting [\d.]+ s before forking again") >= 2
    assert proc.count_log(r"worker \d \(pid \d+\) exited with status 3") >= 2
    proc.assert_no_zombies()
    started = time.monotonic()
    proc.send(signal.SIGTERM)
    assert proc.wait_exit(5) == 0
    assert time.monotonic() - started < 2


def test_sigquit_stops_at_once(server_process):
    proc = server_process(workers=2)
    connections, _ids, _pids = whoami(proc.port, 4)
    try:
        started = time.monotonic()
        proc.send(signal.SIGQUIT)
        assert proc.wait_exit(5) == 0
        assert time.monotonic() - started < 1.5
        for conn in connections:
            with pytest.raises(minisoup.ConnectionClosed):
                conn.recv(timeout=2)
    finally:
        close_all(connections)


def test_least_connections_balance(server_process):
    """4 workers, 400 concurrent WebSockets: no worker above 1.5x its fair share."""
    workers, total, threads = 4, 400, 8
    proc = server_process(workers=workers, args=["--log-level", "warning"], ready=0)
    # Log level warning keeps 400 access lines out of the way; wait for the workers
    # through /proc instead of their "ready" lines.
    proc.wait_workers(lambda pids: len(pids) == workers, what="4 workers")
    time.sleep(0.2)
    results = []
    errors = []
    lock = threading.Lock()

    def open_some(n):
        try:
            got = whoami(proc.port, n)
        except Exception as exc:  # reported below
            errors.append(exc)
            return
        with lock:
            results.append(got)

    pool = [threading.Thread(target=open_some, args=(total // threads,)) for _ in range(threads)]
    try:
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(20)
        assert not errors, errors[:3]
        per_worker = collections.Counter(i for _c, ids, _p in results for i in ids)
        assert sum(per_worker.values()) == total
        print("connections per worker:", dict(sorted(per_worker.items())))
        fair = total / workers
        assert set(per_worker) == set(range(1, workers + 1))
        assert max(per_worker.values()) <= 1.5 * fair, per_worker
    finally:
        for connections, _ids, _pids in results:
            close_all(connections)


def test_graceful_stop_finishes_inflight_http_and_forces_after_timeout(server_process):
    proc = server_process(app="prefork_apps:slow", workers=2, args=["--graceful-timeout", "2"])
    answers = []
    slow = threading.Thread(target=lambda: answers.append(http_get(proc.port, "/slow")))
    slow.start()
    # A client that never finishes its request head: only the timeout ends it.
    stuck = socket.create_connection(("127.0.0.1", proc.port))
    try:
        stuck.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        proc.wait_log(r"slow request paused")
        started = time.monotonic()
        proc.send(signal.SIGTERM)
        slow.join(5)
        assert answers and answers[0].startswith("slow answer from worker")
        assert proc.wait_exit(5) == 0
        elapsed = time.monotonic() - started
        assert 1.5 < elapsed < 3.5, elapsed
    finally:
        stuck.close()


def test_a_blocking_handler_holds_its_worker_only(server_process):
    # SPEC/README: one slow handler delays the other connections of its worker; the other
    # workers keep serving (and the blocked one logs a slow-callback warning).
    proc = server_process(app="prefork_apps:slow", workers=2)
    result = {}

    def blocked():
        start = time.monotonic()
        result["body"] = http_get(proc.port, "/block", timeout=10)
        result["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=blocked)
    thread.start()
    try:
        time.sleep(0.3)
        free_id = None
        for _ in range(6):
            start = time.monotonic()
            body = http_get(proc.port, "/worker", timeout=5)
            assert time.monotonic() - start < 1.0, "a request waited for the blocked worker"
            served_by = int(body.split()[1])
            free_id = free_id if free_id is not None else served_by
            assert served_by == free_id  # always the worker that is not blocked
    finally:
        thread.join(10)
    assert result["seconds"] >= 1.9 and "blocked worker" in result["body"]
    assert int(result["body"].split()[2]) != free_id
    proc.wait_log(r"blocked the loop for 2\.\d+ s")


def test_stuck_worker_is_killed_after_worker_timeout(server_process):
    proc = server_process(app="prefork_apps:slow", workers=2, args=["--worker-timeout", "2"])
    before = proc.live_workers()
    hung = socket.create_connection(("127.0.0.1", proc.port))
    try:
        hung.sendall(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
        line = proc.wait_log(r"worker (\d) \(pid (\d+)\) timed out: no heartbeat", timeout=5)
        victim = int(re.search(r"\(pid (\d+)\)", line).group(1))
        assert victim in before
        after = proc.wait_workers(lambda pids: len(pids) == 2 and victim not in pids,
                                  what="replacement of the stuck worker")
        assert len(set(after) - set(before)) == 1
        proc.wait_log(r"\(pid %d\) was killed by SIGKILL" % victim)
        assert "worker" in http_get(proc.port, "/worker")
    finally:
        hung.close()
    proc.assert_no_zombies()


def test_workers_leave_when_the_master_dies(server_process):
    proc = server_process(workers=2)
    workers = proc.live_workers()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait_exit(5)
    deadline = time.monotonic() + 5
    while True:
        alive = [pid for pid in workers if _running(pid)]
        if not alive:
            break
        assert time.monotonic() < deadline, "workers outlived their master: %s" % alive
        time.sleep(0.05)
    proc.wait_log(r"master \(pid %d\) is gone: stopping" % proc.pid)


class KeepAliveClient:
    """One HTTP/1.1 keep-alive connection: ``get(path)`` returns the body; kept open."""

    def __init__(self, port, timeout):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.settimeout(timeout)
        self._buffer = b""

    def send_get(self, path):
        self.sock.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path).encode("ascii"))

    def read_response(self):
        while b"\r\n\r\n" not in self._buffer:
            self._fill()
        head, _sep, self._buffer = self._buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
        while len(self._buffer) < length:
            self._fill()
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return body.decode("utf-8")

    def get(self, path):
        self.send_get(path)
        return self.read_response()

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed by the server")
        self._buffer += data

    def close(self):
        self.sock.close()


HELD_CLIENTS = 10
NEW_CLIENTS = 14
NEW_CLIENT_TIMEOUT_S = 1.5  # short, so that a run of the old code fails quickly
# Between new clients: long enough for the healthy worker to find the backlog empty and
# pause again, so that each new client meets a paused worker afresh; 14 of them span the
# first seconds of the stall, before and after the stuck worker's heartbeat goes stale.
NEW_CLIENT_SPACING_S = 0.2


@pytest.mark.parametrize("stall", ["sigstop", "busy_handler"])
def test_new_connections_never_wait_for_a_worker_that_is_not_accepting(server_process, stall):
    # Issue 14 item 1: a worker that stops serving (SIGSTOPped, or stuck in a CPU-bound
    # handler) still counted in the balancer's mean; the healthy worker filled up to its
    # limit and paused, and new connections waited in the backlog for the stuck one until
    # the heartbeat killed it (worker_timeout, 30 s).
    proc = server_process(app="prefork_apps:slow", workers=2)
    held = []
    stopped = None
    try:
        owners = []
        for _ in range(HELD_CLIENTS):
            client = KeepAliveClient(proc.port, timeout=5)
            held.append(client)
            owners.append(int(client.get("/worker").split()[3]))
        assert len(set(owners)) == 2, owners  # both workers hold some of them
        victim = owners[0]
        if stall == "sigstop":
            os.kill(victim, signal.SIGSTOP)
            stopped = victim
        else:
            held[0].send_get("/spin")  # the worker holding it computes for SPIN_S seconds
            time.sleep(0.2)
        waits = []
        started = time.monotonic()
        for _ in range(NEW_CLIENTS):
            time.sleep(NEW_CLIENT_SPACING_S)
            begin = time.monotonic()
            client = KeepAliveClient(proc.port, timeout=NEW_CLIENT_TIMEOUT_S)
            held.append(client)
            try:
                body = client.get("/worker")
            except socket.timeout:
                pytest.fail("new connection %d waited more than %.1f s (waits so far: %s)"
                            % (len(waits) + 1, NEW_CLIENT_TIMEOUT_S,
                               ["%.3f" % w for w in waits]))
            waits.append(time.monotonic() - begin)
            assert int(body.split()[3]) != victim
        assert time.monotonic() - started < SPIN_S, "the stall ended before the test did"
        print("%s: %d new connections, max wait %.0f ms, mean %.0f ms"
              % (stall, len(waits), 1000 * max(waits), 1000 * sum(waits) / len(waits)))
        assert max(waits) < 1.0, waits
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        for client in held:
            client.close()


def test_loop_adopt_takes_the_pending_callbacks():
    # What a worker's fresh loop does with the master's (callbacks scheduled before fork).
    from minisoup.loop import Loop
    old, new = Loop(), Loop()
    ran = []
    try:
        old.call_soon(ran.append, "soon")
        old.call_later(0.01, ran.append, "later")
        old.call_later(0.0, ran.append, "cancelled").cancel()
        new.adopt(old)
        new.call_later(0.05, new.stop)
        new.run()
        assert ran == ["soon", "later"]
        old.call_later(0.05, old.stop)  # the old loop kept nothing: none of them runs twice
        old.run()
        assert ran == ["soon", "later"]
    finally:
        old.close()
        new.close()


def _running(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
