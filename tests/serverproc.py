"""A ``python -m minisoup`` child process for end-to-end tests: start, read its port, kill."""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


class MinisoupProcess:
    """``python3 -m minisoup APP --bind 127.0.0.1:0 --print-uris ...`` in its own session.

    ``port`` is read from the child's stdout. ``log`` collects stderr lines. ``kill()``
    SIGKILLs the whole process group (master and workers) and is safe to call twice.
    """

    def __init__(self, app=None, workers=2, args=(), log_level="info"):
        cmd = [sys.executable, "-m", "minisoup"]
        if app:
            cmd.append(app)
        cmd += ["--bind", "127.0.0.1:0", "--print-uris", "--workers", str(workers),
                "--log-level", log_level] + list(args)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([ROOT, TESTS, env.get("PYTHONPATH", "")])
        env["PYTHONUNBUFFERED"] = "1"
        self.cmd = cmd
        self.log = []
        self.stdout = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)
        self.pid = self.proc.pid
        self._readers = [threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout),
                                          daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stderr, self.log),
                                          daemon=True)]
        for reader in self._readers:
            reader.start()
        self.port = None

    def _read(self, stream, lines):
        for raw in iter(stream.readline, b""):
            with self._cond:
                lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        stream.close()

    def wait_port(self, timeout=10.0):
        """Wait for the first URI on stdout; returns the port."""
        line = self.wait_line(self.stdout, r"^https?://", timeout)
        self.port = int(re.search(r":(\d+)/$", line).group(1))
        return self.port

    def wait_line(self, lines, pattern, timeout=10.0, count=1):
        """Wait until ``count`` lines match ``pattern``; returns the last match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [line for line in lines if regex.search(line)]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not any(
                        r.is_alive() for r in self._readers)):
                    raise AssertionError("no %d line(s) matching %r within %.1f s; log:\n%s"
                                         % (count, pattern, timeout, self.log_text()))
                self._cond.wait(min(left, 0.1))

    def wait_log(self, pattern, timeout=10.0, count=1):
        return self.wait_line(self.log, pattern, timeout, count)

    def count_log(self, pattern):
        regex = re.compile(pattern)
        with self._cond:
            return sum(1 for line in self.log if regex.search(line))

    def log_text(self):
        with self._cond:
            return "\n".join(self.log[-80:])

    def start(self, workers_ready=0, timeout=10.0):
        """Wait for the port and for ``workers_ready`` workers to log that they are ready."""
        self.wait_port(timeout)
        if workers_ready:
            self.wait_log(r"INFO minisoup: worker \d+ ready", timeout, count=workers_ready)
        return self

    def send(self, signum):
        os.kill(self.pid, signum)

    def wait_exit(self, timeout):
        return self.proc.wait(timeout)

    def children(self):
        """``{pid: state}`` of the master's children (state "Z" for a zombie)."""
        return child_states(self.pid)

    def live_workers(self):
        return sorted(pid for pid, state in self.children().items() if state != "Z")

    def wait_workers(self, predicate, timeout=8.0, what="workers"):
        """Poll the live worker pids until ``predicate(pids)``; returns them."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.live_workers()
            if predicate(pids):
                return pids
            if time.monotonic() > deadline:
                raise AssertionError("%s: condition not met within %.1f s (pids %s); log:\n%s"
                                     % (what, timeout, pids, self.log_text()))
            time.sleep(0.02)

    def assert_no_zombies(self, timeout=1.0):
        """Zombies may exist for an instant between exit and reap; none may last."""
        deadline = time.monotonic() + timeout
        while True:
            zombies = [pid for pid, state in self.children().items() if state == "Z"]
            if not zombies:
                return
            if time.monotonic() > deadline:
                raise AssertionError("zombie children of the master: %s" % zombies)
            time.sleep(0.02)

    def kill(self):
        """SIGKILL the master and every worker (the process group); reap the master."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        for reader in self._readers:
            reader.join(2)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


def child_states(ppid):
    states = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rindex(")") + 2:].split()
        if int(fields[1]) == ppid:
            states[int(entry)] = fields[0]
    return states


def http_get(port, path, timeout=5.0):
    """One ``GET`` on a fresh connection (``Connection: close``); returns the body as str.

    Raises ``ConnectionRefusedError`` when refused, another ``OSError`` when cut short."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                      % path).encode("ascii"))
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    finally:
        sock.close()
    response = b"".join(chunks)
    head, sep, body = response.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError("incomplete or failed response: %r" % response[:200])
    return body.decode("utf-8")


class ClientLoop(threading.Thread):
    """Connect again and again (``GET /worker``) until stopped; tally what happened."""

    def __init__(self, port, path="/worker"):
        super().__init__(daemon=True)
        self.port = port
        self.path = path
        self.ok = 0
        self.refused = 0
        self.errors = []
        self.pids = []
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.is_set():
            try:
                body = http_get(self.port, self.path)
            except ConnectionRefusedError:
                self.refused += 1
                continue
            except OSError as exc:
                self.errors.append(exc)
                continue
            self.ok += 1
            pid = int(body.split()[3])
            if not self.pids or self.pids[-1] != pid:
                self.pids.append(pid)

    def stop(self):
        self._stop_event.set()
        self.join(10)
