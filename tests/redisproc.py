"""A real ``redis-server`` for the broker tests: started on a free port, always stopped."""

import shutil
import socket
import subprocess
import time

REDIS_SERVER = shutil.which("redis-server")
SKIP_REASON = ("redis-server is not installed (Debian: apt-get install redis-server); "
               "the broker tests need a real Redis")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisProcess:
    """``redis-server --port N --save '' --appendonly no`` on 127.0.0.1, no persistence.

    :meth:`start` waits until it answers PING; :meth:`kill` SIGKILLs it (Redis gone
    without a goodbye); :meth:`start` again reuses the same port."""

    def __init__(self, port=None):
        self.port = port or free_port()
        self.proc = None

    @property
    def url(self):
        return "redis://127.0.0.1:%d" % self.port

    def start(self, timeout=10.0):
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.command(b"PING") == b"+PONG\r\n":
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("redis-server on port %d did not start" % self.port)
            time.sleep(0.05)

    def command(self, *args, timeout=2.0):
        """Send one command, return the raw reply bytes (enough for PING and PUBLISH)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            parts = [b"*%d\r\n" % len(args)]
            for arg in args:
                arg = arg.encode() if isinstance(arg, str) else arg
                parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
            sock.sendall(b"".join(parts))
            return sock.recv(65536)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None
