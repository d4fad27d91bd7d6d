"""minisoup against the reference: the same requests to libsoup 3 and to minisoup.

libsoup is reached through PyGObject (``gi.repository.Soup``), which Debian's
``gir1.2-soup-3.0`` and ``python3-gi`` give to /usr/bin/python3. Where it is missing the
module is skipped: minisoup itself never needs it. Only behaviour where SPEC.md and
libsoup agree is compared (SPEC.md lists where they differ on purpose).
"""

import base64
import json
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

import minisoup
from conftest import running

SYSTEM_PYTHON = "/usr/bin/python3"
PROBE = "import gi; gi.require_version('Soup', '3.0'); from gi.repository import Soup"


def _libsoup_available():
    if not os.path.exists(SYSTEM_PYTHON):
        return False
    try:
        return subprocess.run([SYSTEM_PYTHON, "-c", PROBE], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


pytestmark = pytest.mark.skipif(not _libsoup_available(),
                                reason="libsoup 3 (gir1.2-soup-3.0, python3-gi) is not installed")

# The same registrations in both servers.
LIBSOUP_SERVER = r"""
import json
import sys
import gi
gi.require_version("Soup", "3.0")
from gi.repository import GLib, Soup

def normal(server, msg, path, query, *data):
    msg.set_status(200, None)
    msg.set_response("text/plain", Soup.MemoryUse.COPY, b"normal")

def paths(server, msg, path, query, *data):
    msg.set_status(200, None)
    body = json.dumps([path, msg.get_uri().get_path(), sorted(query.items()) if query is not None else None])
    msg.set_response("application/json", Soup.MemoryUse.COPY, body.encode())

def redirect(server, msg, path, query, *data):
    msg.set_redirect(302, query["to"])

def on_ws(server, msg, path, conn, *data):
    CONNS.append(conn)

def on_echo(server, msg, path, conn, *data):
    CONNS.append(conn)
    def echo(conn, kind, message):
        if message.get_data() == b"close please":
            conn.close(4000, "bye")
        else:
            conn.send_message(kind, message)
    conn.connect("message", echo)

CONNS = []
server = Soup.Server()
server.add_handler("/n", normal)
server.add_handler("/p", paths)
server.add_handler("/r", redirect)
server.add_websocket_handler("/ws", "http://Example.com", ["b", "a"], on_ws)
server.add_websocket_handler("/open", None, None, on_ws)
server.add_websocket_handler("/echo", None, None, on_echo)
server.listen_local(0, Soup.ServerListenOptions.IPV4_ONLY)
print(server.get_uris()[0].get_port(), flush=True)
loop = GLib.MainLoop()
GLib.io_add_watch(GLib.IOChannel.unix_new(sys.stdin.fileno()), GLib.IO_IN | GLib.IO_HUP,
                  lambda *a: loop.quit())
loop.run()
"""


def _register(server):
    def normal(server_, msg, path, query, user_data):
        msg.set_status(200)
        msg.set_response("text/plain", b"normal")

    def paths(server_, msg, path, query, user_data):
        msg.set_status(200)
        body = json.dumps([path, msg.get_uri().path,
                           sorted(query.items()) if query is not None else None])
        msg.set_response("application/json", body.encode())

    server.add_handler("/n", normal)
    server.add_handler("/p", paths)
    server.add_handler("/r", lambda s_, msg, path, query, ud: msg.set_redirect(302, query["to"]))
    server.add_websocket_handler("/ws", "http://Example.com", ["b", "a"], lambda *a: None)
    server.add_websocket_handler("/open", None, None, lambda *a: None)

    def echo(conn, kind, message):
        if message == "close please":
            conn.close(4000, "bye")
        else:
            conn.send_message(kind, message)

    def on_echo(server_, msg, path, conn, user_data):
        conn.connect("message", echo)

    server.add_websocket_handler("/echo", None, None, on_echo)


@pytest.fixture(scope="module")
def ports():
    proc = subprocess.Popen([SYSTEM_PYTHON, "-c", LIBSOUP_SERVER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        line = proc.stdout.readline()
        assert line.strip().isdigit(), "libsoup server did not start: %r" % line
        server = minisoup.Server()
        _register(server)
        server.listen(("127.0.0.1", 0))
        with running(server) as port:
            yield int(line), port
    finally:
        proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _key():
    return base64.b64encode(os.urandom(16)).decode()


def _response_head(port, request):
    """Send ``request`` (str); the response's status and its header lines as (lowercase
    name, value) pairs."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        sock.sendall(request.encode("latin-1"))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    fields = []
    for line in head[1:]:
        name, _, value = line.partition(":")
        fields.append((name.strip().lower(), value.strip()))
    return int(head[0].split()[1]), fields


def _exchange(port, request):
    status, fields = _response_head(port, request)
    headers = dict(fields)
    return status, headers.get("sec-websocket-protocol"), headers.get("sec-websocket-accept")


def _upgrade(key, path, extra="", version="13", method="GET"):
    return ("%s %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: %s\r\n%s\r\n"
            % (method, path, key, version, extra))


CASES = {
    "origin matches, case-insensitively": lambda key: _upgrade(key, "/ws", "Origin: http://example.COM\r\n"),
    "origin with a trailing slash": lambda key: _upgrade(key, "/ws", "Origin: http://example.com/\r\n"),
    "origin of another site": lambda key: _upgrade(key, "/ws", "Origin: http://evil.example\r\n"),
    "no origin where one is required": lambda key: _upgrade(key, "/ws"),
    "protocol: the server's preference wins":
        lambda key: _upgrade(key, "/ws", "Origin: http://example.com\r\nSec-WebSocket-Protocol: a, b\r\n"),
    "protocol: only one offered": lambda key: _upgrade(key, "/ws", "Origin: http://example.com\r\n"
                                           "Sec-WebSocket-Protocol: a\r\n"),
    "protocol: none matches": lambda key: _upgrade(key, "/ws", "Origin: http://example.com\r\n"
                                       "Sec-WebSocket-Protocol: c\r\n"),
    "protocol: none offered": lambda key: _upgrade(key, "/ws", "Origin: http://example.com\r\n"),
    "prefix path": lambda key: _upgrade(key, "/ws/room", "Origin: http://example.com\r\n"),
    "any origin accepted when none is set": lambda key: _upgrade(key, "/open", "Origin: http://anything\r\n"),
    "any protocol offer when none is set": lambda key: _upgrade(key, "/open", "Sec-WebSocket-Protocol: x\r\n"),
    "wrong version": lambda key: _upgrade(key, "/open", version="8"),
    "key of 15 bytes": lambda key: _upgrade(base64.b64encode(b"x" * 15).decode(), "/open"),
    "POST upgrade": lambda key: _upgrade(key, "/open", method="POST"),
    "plain GET to a WebSocket-only path": lambda key: "GET /open HTTP/1.1\r\nHost: x\r\n\r\n",
    "normal handler": lambda key: "GET /n HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "no handler": lambda key: "GET /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_answer_as_libsoup(ports, case):
    libsoup_port, minisoup_port = ports
    request = CASES[case](_key())  # one key for both: the Sec-WebSocket-Accept must agree too
    expected = _exchange(libsoup_port, request)
    assert _exchange(minisoup_port, request) == expected


# -- the WebSocket protocol after the handshake ------------------------------------------------

def _frame(opcode, payload=b"", fin=True, rsv=0, mask=True):
    from minisoup.frames import build_frame
    return build_frame(opcode, payload, fin, rsv, b"\x11\x22\x33\x44" if mask else None)


def _close_payload(code, reason=b""):
    return code.to_bytes(2, "big") + reason


# Frames a client sends after the upgrade; both servers echo messages. Only cases where
# SPEC.md and libsoup agree (SPEC.md names where they differ on purpose: close codes
# 1012-1014, a non-UTF-8 close reason, an oversized frame, a non-minimal length encoding).
# Every sequence is followed by a clean close, so that each session ends at once.
FRAME_CASES = {
    "text and binary echoed": [_frame(1, b"hello"), _frame(2, b"\x00\xff")],
    "fragmented text with a ping inside": [_frame(1, b"he", fin=False), _frame(9, b"p"),
                                           _frame(0, b"llo")],
    "ping answered with its payload": [_frame(9, b"ping data")],
    "clean close 1000 echoed": [_frame(8, _close_payload(1000, b"bye"))],
    "close without a code": [_frame(8, b"")],
    "unmasked client frame": [_frame(1, b"x", mask=False)],
    "RSV2 without an extension": [_frame(1, b"x", rsv=2)],
    "reserved opcode 3": [_frame(3, b"x")],
    "reserved control opcode 11": [_frame(11, b"")],
    "fragmented ping": [_frame(9, b"x", fin=False)],
    "ping of 126 bytes": [_frame(9, b"x" * 126)],
    "continuation without a start": [_frame(0, b"x")],
    "new message inside a fragmented one": [_frame(1, b"a", fin=False), _frame(1, b"b")],
    "invalid UTF-8 in a text message": [_frame(1, b"\xff\xfe")],
    "close with a 1-byte payload": [_frame(8, b"\x03")],
    "close with code 999": [_frame(8, _close_payload(999))],
    "close with code 1005": [_frame(8, _close_payload(1005))],
    "close with code 3000 echoed": [_frame(8, _close_payload(3000))],
    "close with a reason echoed": [_frame(8, _close_payload(1001, b"going"))],
    "close with code 1004": [_frame(8, _close_payload(1004))],
    "close with code 1006": [_frame(8, _close_payload(1006))],
    "close with code 1015": [_frame(8, _close_payload(1015))],
    "close with code 2999": [_frame(8, _close_payload(2999))],
    "close with code 4999 echoed": [_frame(8, _close_payload(4999))],
    "close with code 5000": [_frame(8, _close_payload(5000))],
    "data after the close is ignored": [_frame(8, _close_payload(1000)), _frame(1, b"late"),
                                        _frame(9, b"late")],
    "binary in fragments with empty ones": [_frame(2, b"", fin=False), _frame(0, b"ab", fin=False),
                                            _frame(0, b"", fin=False), _frame(0, b"c")],
    "text split inside a character": [_frame(1, b"\xc3", fin=False), _frame(0, b"\xa9")],
    "unsolicited pong ignored": [_frame(10, b"x"), _frame(1, b"after")],
    "empty text and binary": [_frame(1, b""), _frame(2, b"")],
    "the server closes with 4000": [_frame(1, b"close please"), _frame(1, b"ignored")],
}


def _ws_session(port, frames, timeout=3.0):
    """Upgrade, send ``frames``, and read the server's frames until its close frame (or EOF):
    a list of (opcode, payload) for data and pong frames, then ("close", code)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.sendall(_upgrade(_key(), "/echo").encode("latin-1"))
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(4096)
            assert chunk, "no handshake answer"
            buf += chunk
        head, buf = buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        sock.sendall(b"".join(frames) + _frame(8, _close_payload(1000)))
        out = []
        while True:
            while len(buf) < 2 or len(buf) < 2 + (buf[1] & 0x7F if buf[1] & 0x7F < 126 else 0):
                try:
                    chunk = sock.recv(65536)
                except (ConnectionResetError, socket.timeout):
                    chunk = b""
                if not chunk:
                    out.append(("eof",))
                    return out
                buf += chunk
            opcode, length = buf[0] & 0x0F, buf[1] & 0x7F
            assert length < 126, "the cases only provoke short frames"
            payload, buf = buf[2:2 + length], buf[2 + length:]
            if opcode == 8:
                out.append(("close", int.from_bytes(payload[:2], "big") if payload else None))
                return out
            out.append((opcode, payload))
    finally:
        sock.close()


@pytest.mark.parametrize("case", sorted(FRAME_CASES))
def test_same_frames_as_libsoup(ports, case):
    libsoup_port, minisoup_port = ports
    expected = _ws_session(libsoup_port, FRAME_CASES[case])
    assert _ws_session(minisoup_port, FRAME_CASES[case]) == expected


# -- request targets: the path and query handlers see ------------------------------------------

# Left out where libsoup's answer is an artifact of C or of PyGObject: a path or query that is
# not UTF-8 once decoded (PyGObject cannot make a str of it: 500; minisoup answers 400), and
# "%00" in a query value (C truncates the string there; minisoup keeps the NUL).
TARGETS = [
    "/p", "/%70", "/%70/x", "/p%2Fx", "/p%20x", "/p/%C3%A9", "/p/%c3%a9", "/P", "/p/../p",
    "/x/../p/y", "/p/./q", "/x/%2e%2e/p", "/p/.%2e/p", "/p/%2F/..", "/p/%25", "/p/%2525",
    "/p/x%23y", "/p/a+b", "/p%3Fa=1", "/p/%7Euser", "/p%", "/p%zz", "/p/%00",
    "/p?a=1", "/p?a=%20b&c", "/p?a", "/p?", "/p?a=1&&b=2", "/p?=x&b=2", "/p?a=1;b=2",
    "/p?a=b=c", "/p?a+b=c+d%2B", "/p?a=1&a=2", "/p?%C3%A9=%C3%A9", "/p?a=%zz&b=1",
    "http://x/p?q=1", "p", "/p#frag", "/p%0Ax",
    # A ".." made by decoding %2F, after dot segments were removed: libsoup answers 400
    # (issue 14, item 4); "." segments and "..x" made that way are kept as they are.
    "/x/..%2Fadmin", "/public%2F..%2Fadmin", "/admin%2f..%2f", "/p/..%2Fp", "/p%2F..",
    "/p/%2e%2e%2fx", "/p/%2E%2E%2Fx", "/..%2F", "/%2F..", "/p/%2F..%2F", "/p/.%2Fq",
    "/p%2F.", "/p%2F.%2Fq", "/p%2F..q", "/p/..q%2F", "/p/...%2Fq", "/p/a.%2Fb", "/p/%2F",
    # Absolute form: the authority ends at "/", "?" or "#"; the scheme is case-insensitive.
    "http://x?a=b", "http://x", "http://x#f", "http://x:8/p", "HTTP://x/p", "ftp://x/p",
    "http://x:y/p",
]


def _get(port, target):
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        sock.sendall(b"GET " + target.encode("latin-1") + b" HTTP/1.1\r\nHost: x\r\n"
                     b"Connection: close\r\n\r\n")
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, (json.loads(body) if status == 200 else None)


@pytest.mark.parametrize("target", TARGETS)
def test_same_path_and_query_as_libsoup(ports, target):
    libsoup_port, minisoup_port = ports
    expected = _get(libsoup_port, target)
    assert _get(minisoup_port, target) == expected


# Host values (RFC 9112 §3.2: uri-host [":" port], else 400) where libsoup agrees. It differs
# on purpose (the RFC wins, issue 14 item 5) for "a, b", "a\tb", "u@h", "h?x", "h#x" and
# non-ASCII names, which libsoup 3 accepts, and "[v1.x]" and "h:99999" (valid by RFC 3986's
# grammar), which it refuses.
HOSTS = ["h", "h:8080", "", "h:", "[::1]", "[::1]:80", "1.2.3.4:8", "a%20b", "a_b.example", "a,b",
         "a b/c@d", "h:x", "[::1", "::1", "h/p", "[::1]x"]


@pytest.mark.parametrize("host", HOSTS)
def test_same_host_verdict_as_libsoup(ports, host):
    libsoup_port, minisoup_port = ports
    request = "GET /n HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % host
    assert _response_head(minisoup_port, request)[0] == _response_head(libsoup_port, request)[0]


@pytest.mark.parametrize("target", ["/r/a?to=/x", "/r/a/b?to=y%3Fz%3D1", "/r?to=https://o/q",
                                    "/r/a/?to=..", "/r?to=%2F%2Fother/p"])
def test_same_redirect_location_as_libsoup(ports, target):
    libsoup_port, minisoup_port = ports
    request = "GET %s HTTP/1.1\r\nHost: h:8\r\nConnection: close\r\n\r\n" % target

    def location(port):
        status, fields = _response_head(port, request)
        return status, [value for name, value in fields if name == "location"]

    assert location(minisoup_port) == location(libsoup_port)


# -- whole HTTP exchanges: pipelining, bodies, framing -----------------------------------------

EXCHANGES = {
    "POST to a 404 path, then GET": b"POST /zzz HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                                    b"GET /n HTTP/1.1\r\nHost: x\r\n\r\n",
    "chunked POST to a 404 path, then GET": b"POST /zzz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: "
                                            b"chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                                            b"GET /n HTTP/1.1\r\nHost: x\r\n\r\n",
    "chunked body with a trailer, then GET": b"POST /n HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: "
                                             b"chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"
                                             b"GET /n HTTP/1.1\r\nHost: x\r\n\r\n",
    "HEAD, then GET": b"HEAD /n HTTP/1.1\r\nHost: x\r\n\r\nGET /n HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET with a body, then GET": b"GET /n HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nxy"
                                 b"GET /n HTTP/1.1\r\nHost: x\r\n\r\n",
    "empty lines before a request": b"\r\n\r\nGET /n HTTP/1.1\r\nHost: x\r\n\r\n",
    "HTTP/1.0 closes after one answer": b"GET /n HTTP/1.0\r\n\r\nGET /n HTTP/1.1\r\nHost: x\r\n\r\n",
    "Connection: close ends the pipeline": b"GET /n HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                                           b"GET /n HTTP/1.1\r\nHost: x\r\n\r\n",
    "Upgrade: h2c is ignored": b"GET /n HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade"
                               b"\r\n\r\n",
    "Content-Length with spaces and zeros": b"POST /n HTTP/1.1\r\nHost: x\r\nContent-Length:  003 "
                                            b"\r\n\r\nabc",
}


def _answers(port, request, wait=0.3):
    """The responses to ``request`` as (status line, body) pairs, and whether the server
    closed the connection (EOF) within ``wait`` seconds after the last one."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    data, closed = b"", False
    try:
        sock.sendall(request)
        sock.settimeout(wait)
        while True:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                closed = True
                break
            data += chunk
    finally:
        sock.close()
    answers = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        is_head = request.startswith(b"HEAD") and not answers
        body, data = (b"", rest) if is_head else (rest[:length], rest[length:])
        answers.append((lines[0], body))
    return answers, closed


@pytest.mark.parametrize("case", sorted(EXCHANGES))
def test_same_exchange_as_libsoup(ports, case):
    libsoup_port, minisoup_port = ports
    request = EXCHANGES[case]
    # The two exchanges run at once, so that their waits for a close overlap.
    with ThreadPoolExecutor(2) as pool:
        ours, theirs = pool.map(lambda port: _answers(port, request), (minisoup_port, libsoup_port))
    assert ours == theirs
