"""Streamed request and response bodies and stolen connections, over real sockets.

Memory is read from /proc/PID/status of a server in a child process: a 100 MB upload
streamed through got-chunk, and a 64 MiB download paced by wrote-chunk, must each
leave the server's resident set within a few MB of where it was.
"""

import hashlib
import json
import os
import socket
import threading
import time

import pytest

from conftest import raw_connect, running
from serverproc import MinisoupProcess
from streaming_apps import BLOCK

import minisoup

MiB = 1 << 20
RSS_GROWTH_LIMIT = 5 * MiB
UPLOAD_SIZE = 100 * 1000 * 1000
SEND_BLOCK = 64 * 1024


def vm_rss(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS for %d" % pid)


@pytest.fixture
def child():
    proc = MinisoupProcess("streaming_apps:app", workers=0, log_level="warning")
    try:
        proc.start()
        yield proc
    finally:
        proc.kill()


def read_response(sock):
    """One Content-Length response: (head bytes, body bytes)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        assert data, "connection closed before the response head"
        buf += data
    head, _, body = buf.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        data = sock.recv(65536)
        assert data
        body += data
    return head, body


def upload(port, pid, chunked, size):
    """Send ``size`` bytes to /upload; returns (answer, expected sha256, max RSS growth)."""
    sock = raw_connect(port, timeout=30)
    try:
        framing = (b"Transfer-Encoding: chunked" if chunked
                   else b"Content-Length: %d" % size)
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: h\r\n" + framing + b"\r\n\r\n")
        sha = hashlib.sha256()
        base = vm_rss(pid)
        peak = base
        sent = 0
        i = 0
        while sent < size:
            block = bytes([i & 0xFF]) * min(SEND_BLOCK, size - sent)
            sha.update(block)
            sock.sendall(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
            sent += len(block)
            i += 1
            if i % 16 == 0:  # every MiB
                peak = max(peak, vm_rss(pid))
        if chunked:
            sock.sendall(b"0\r\n\r\n")
        head, body = read_response(sock)
        peak = max(peak, vm_rss(pid))
    finally:
        sock.close()
    assert head.startswith(b"HTTP/1.1 200 ")
    return json.loads(body), sha.hexdigest(), peak - base


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_100_mb_upload_streams_through_got_chunk_in_bounded_memory(child, chunked):
    # Warm up (first-request allocations), then the real one.
    upload(child.port, child.pid, chunked, 1 * MiB)
    answer, sha256, growth = upload(child.port, child.pid, chunked, UPLOAD_SIZE)
    # Over the default max_body_size (16 MiB): streamed uploads are not limited by it.
    assert answer == {"sha256": sha256, "length": UPLOAD_SIZE, "kept": 0}
    assert growth < RSS_GROWTH_LIMIT, "server RSS grew by %.1f MiB" % (growth / MiB)


def test_a_download_paced_by_wrote_chunk_stays_in_bounded_memory(child):
    blocks = 1024  # 64 MiB
    sock = raw_connect(child.port, timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    try:
        sock.sendall(b"GET /download?blocks=%d HTTP/1.1\r\nHost: h\r\n\r\n" % blocks)
        base = vm_rss(child.pid)
        peak = base
        buf = bytearray()
        reads = 0
        while not buf.endswith(b"\r\n0\r\n\r\n"):
            data = sock.recv(65536)
            assert data, "closed before the end of the body"
            buf += data
            reads += 1
            if reads % 64 == 0:
                peak = max(peak, vm_rss(child.pid))
                time.sleep(0.002)  # a slow-ish reader: the server must wait for it
    finally:
        sock.close()
    head, _, body = bytes(buf).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"chunked" in head.lower()
    # Every chunk is one BLOCK: check the framing and the bytes.
    assert body == (b"%x\r\n%s\r\n" % (len(BLOCK), BLOCK)) * blocks + b"0\r\n\r\n"
    growth = peak - base
    assert growth < RSS_GROWTH_LIMIT, "server RSS grew by %.1f MiB" % (growth / MiB)


# -- steal_connection: a custom upgrade ------------------------------------------------------
def echo_upper(sock, leftover, done):
    """The custom protocol: after its 101, each line comes back in upper case."""
    try:
        sock.setblocking(True)
        sock.settimeout(5)
        sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: upper\r\n"
                     b"Connection: Upgrade\r\n\r\n")
        buf = leftover
        while True:
            while b"\n" in buf:
                line, _, buf = buf.partition(b"\n")
                if line == b"bye":
                    sock.sendall(b"BYE\n")
                    return
                sock.sendall(line.upper() + b"\n")
            data = sock.recv(4096)
            if not data:
                return
            buf += data
    finally:
        sock.close()
        done.set()


def test_a_custom_upgrade_over_a_stolen_connection():
    done = threading.Event()
    server_side = []

    def handler(server, msg, path, query, user_data):
        if not msg.get_request_headers().header_contains("Upgrade", "upper"):
            msg.set_status(400)
            return
        assert msg.get_socket() is not None
        sock = msg.steal_connection()
        server_side.append(sock)
        threading.Thread(target=echo_upper, args=(sock, msg.get_leftover_data(), done),
                         daemon=True).start()

    server = minisoup.Server()
    server.add_handler("/upper", handler)
    server.add_handler("/plain", lambda s, msg, *a: msg.set_response("text/plain", "plain")
                       or msg.set_status(200))
    with running(server) as port:
        sock = raw_connect(port)
        try:
            # The first line follows the request at once, without waiting for the 101:
            # it was read by the server and comes back through get_leftover_data().
            sock.sendall(b"GET /upper HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n"
                         b"Upgrade: upper\r\n\r\nfirst\n")
            buf = b""
            while buf.count(b"\n") < 5:  # the 101's four lines, its blank line
                buf += sock.recv(4096)
            head, _, rest = buf.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 ") and b"Upgrade: upper" in head
            while not rest.endswith(b"FIRST\n"):
                rest += sock.recv(4096)
            sock.sendall(b"second\nbye\n")
            while not rest.endswith(b"BYE\n"):
                data = sock.recv(4096)
                assert data
                rest += data
            assert rest == b"FIRST\nSECOND\nBYE\n"
            assert done.wait(5)
            # The server did not close the stolen socket, nor send anything on it; it
            # serves other connections as before.
            other = raw_connect(port)
            other.sendall(b"GET /plain HTTP/1.1\r\nHost: h\r\n\r\n")
            assert read_response(other)[1] == b"plain"
            other.close()
        finally:
            sock.close()
