"""A raw WebSocket client for the end-to-end and conformance tests.

Hand-built requests and masked frames over a plain blocking socket, and a small
reader that parses what the server sends, so that tests can send what no
well-behaved client would and see exactly what comes back.
"""

import base64
import os
import socket
import struct
import time

from minisoup.frames import Opcode, build_frame

CONT, TEXT, BINARY = Opcode.CONTINUATION, Opcode.TEXT, Opcode.BINARY
CLOSE, PING, PONG = Opcode.CLOSE, Opcode.PING, Opcode.PONG
MASK_KEY = b"\x37\xfa\x21\x3d"


class Closed(Exception):
    """The server closed the TCP connection (EOF or reset) before a whole frame."""


def handshake_request(path="/", headers=None, method="GET", version="HTTP/1.1",
                      key=None, omit=()):
    """The bytes of an upgrade request; ``headers`` add or override, ``omit`` removes."""
    base = [
        ("Host", "127.0.0.1"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", key or base64.b64encode(os.urandom(16)).decode()),
        ("Sec-WebSocket-Version", "13"),
    ]
    extra = list(headers or [])
    override = {name.lower() for name, _ in extra}
    lines = ["%s %s %s" % (method, path, version)]
    for name, value in base:
        if name.lower() not in override and name.lower() not in {o.lower() for o in omit}:
            lines.append("%s: %s" % (name, value))
    for name, value in extra:
        lines.append("%s: %s" % (name, value))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def read_response_head(sock, timeout=5.0, buf=b""):
    """``(status, headers dict with lower-case names, leftover bytes)``; ``buf``: bytes
    already read from ``sock``."""
    sock.settimeout(timeout)
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise Closed("connection closed during the response head: %r" % buf)
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, rest


def http_exchange(port, request, timeout=5.0):
    """Send ``request`` on a new connection; ``(status, headers, body)`` of the response."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.sendall(request)
        status, headers, rest = read_response_head(sock, timeout)
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            data = sock.recv(65536)
            if not data:
                break
            rest += data
        return status, headers, rest[:length]
    finally:
        sock.close()


def http_exchange_closing(port, request, timeout=3.0):
    """Like :func:`http_exchange`, then wait for the server to close the connection:
    ``(status, headers, body, closed)`` where ``closed`` says EOF came within ``timeout``."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.sendall(request)
        status, headers, rest = read_response_head(sock, timeout)
        closed = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                closed = True
                break
            except socket.timeout:
                break
            if not data:
                closed = True
                break
            rest += data
        length = int(headers.get("content-length", "0"))
        return status, headers, rest[:length], closed
    finally:
        sock.close()


class RawWebSocket:
    """A client end built by hand: send any frame, read the server's frames."""

    def __init__(self, port, path="/", headers=None, timeout=3.0, rcvbuf=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.sock.sendall(handshake_request(path, headers))
        self.status, self.headers, self.buf = read_response_head(self.sock, timeout)
        if self.status != 101:
            raise AssertionError("handshake refused: %d %r" % (self.status, self.headers))

    @classmethod
    def adopt(cls, sock, buf=b"", timeout=3.0):
        """Wrap a socket whose handshake the caller did by hand (``buf``: bytes read past it)."""
        raw = cls.__new__(cls)
        raw.sock, raw.timeout, raw.buf = sock, timeout, buf
        return raw

    # -- sending -------------------------------------------------------------------
    def send_raw(self, data):
        self.sock.sendall(data)

    def send_frame(self, opcode, payload=b"", fin=True, rsv=0, mask=True):
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        self.send_raw(build_frame(opcode, payload, fin, rsv, MASK_KEY if mask else None))

    def send_close(self, code=None, reason=b""):
        payload = b"" if code is None else struct.pack("!H", code) + reason
        self.send_frame(CLOSE, payload)

    # -- receiving ------------------------------------------------------------------
    def _fill(self, n, deadline):
        while len(self.buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("no frame within the timeout")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(262144)
            except ConnectionResetError:
                raise Closed("connection reset")
            if not data:
                raise Closed("EOF")
            self.buf += data

    def read_frame(self, timeout=None):
        """The next server frame as ``(opcode, fin, rsv, payload)``; server frames
        must be unmasked (asserted)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        self._fill(2, deadline)
        b0, b1 = self.buf[0], self.buf[1]
        assert not b1 & 0x80, "server frame is masked"
        length, start = b1 & 0x7F, 2
        if length == 126:
            self._fill(4, deadline)
            length, start = struct.unpack_from("!H", self.buf, 2)[0], 4
        elif length == 127:
            self._fill(10, deadline)
            length, start = struct.unpack_from("!Q", self.buf, 2)[0], 10
        self._fill(start + length, deadline)
        payload = bytes(self.buf[start:start + length])
        self.buf = self.buf[start + length:]
        return b0 & 0x0F, bool(b0 & 0x80), (b0 >> 4) & 7, payload

    def read_message(self, timeout=None):
        """Next data frame, skipping pongs: ``(opcode, payload)``."""
        while True:
            opcode, fin, rsv, payload = self.read_frame(timeout)
            assert fin, "server fragmented a message"
            if opcode != PONG:
                return opcode, payload

    def read_close(self, timeout=None):
        """Skip frames until the server's close frame: ``(code or None, reason bytes)``."""
        while True:
            opcode, _fin, _rsv, payload = self.read_frame(timeout)
            if opcode == CLOSE:
                if not payload:
                    return None, b""
                return struct.unpack("!H", payload[:2])[0], payload[2:]

    def expect_close(self, code, timeout=None):
        """Read the server's close frame and assert its code; returns the reason."""
        got, reason = self.read_close(timeout)
        assert got == code, "expected close %r, got %r (%r)" % (code, got, reason)
        return reason

    def wait_eof(self, timeout=None):
        """True once the server has closed the TCP connection (EOF or reset)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.sock.settimeout(remaining)
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.buf += data
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
