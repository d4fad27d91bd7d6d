"""Shared fixtures: a minisoup Server running in a thread on 127.0.0.1, port 0."""

import contextlib
import os
import socket
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import minisoup  # noqa: E402


@contextlib.contextmanager
def running(server, timeout=10.0):
    """Run ``server`` (already listening, or listen_local(0) is called) in a thread.

    Yields the port. Always stops the server, even when the test fails. Public API
    only: ``run()`` in the thread, ``call_soon_threadsafe(server.stop, False)`` to stop.
    """
    if not server.get_listeners():
        server.listen_local(0)
    port = server.get_listeners()[0].getsockname()[1]
    serving = threading.Event()
    server.call_soon(serving.set)  # also creates the loop here, before the thread runs it
    thread = threading.Thread(target=server.run, name="minisoup-test-server", daemon=True)
    thread.start()
    serving.wait(timeout)
    try:
        yield port
    finally:
        server.call_soon_threadsafe(server.stop, False)
        thread.join(timeout)
        for sock in server.get_listeners():
            sock.close()
        assert not thread.is_alive(), "server thread did not stop"


@pytest.fixture
def serve():
    """``with serve(server) as port:`` — see :func:`running`."""
    return running


def raw_connect(port, timeout=5.0):
    """A blocking TCP connection to the test server."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def recv_until_closed(sock, limit=1 << 20, timeout=5.0):
    """Read until EOF (or ``limit`` bytes); returns what was read."""
    sock.settimeout(timeout)
    chunks = []
    total = 0
    deadline = time.monotonic() + timeout
    while total < limit and time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not data:
            break
        chunks.append(data)
        total += len(data)
    return b"".join(chunks)


# Tests of the FIN sent with the last bytes: MSG_MORE, and TCP_INFO to count segments.
linux_tcp_info = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and hasattr(socket, "TCP_INFO")
         and hasattr(socket, "MSG_MORE")),
    reason="MSG_MORE, and TCP_INFO to count segments, are Linux's")


def segments_received(sock):
    """The TCP segments ``sock`` has received (Linux's tcp_info tcpi_segs_in, since 4.2)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int.from_bytes(info[140:144], sys.byteorder)


class NullProtocol:
    """A transport protocol that ignores everything (it has a __dict__ and none of the
    optional methods)."""

    def data_received(self, data):
        pass

    def eof_received(self):
        pass

    def connection_lost(self, exc):
        pass
