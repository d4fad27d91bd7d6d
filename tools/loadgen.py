"""The load generator of tools/bench.py: one process, many keep-alive connections.

    python3 tools/loadgen.py MODE --port P [--conns N] [--size BYTES] [--path /echo] ...

MODE is one of
  http       keep-alive ``GET`` with a pre-built request; the response is read by its
             Content-Length (no pipelining: one request in flight per connection);
  ws         WebSocket echo: pre-built masked client frames, one message in flight per
             connection, the server's (unmasked) frame parsed just enough to know where it
             ends; ``--deflate`` negotiates permessage-deflate and inflates every answer;
  raw        raw TCP echo: ``--size`` bytes out, the same number of bytes back;
  handshake  connect, WebSocket upgrade, closing handshake, TCP close; again (blocking,
             one connection at a time per process: run several processes);
  idle       open ``--conns`` WebSocket connections and hold them, idle, until the end
             of the window (tools/bench.py reads the server's memory meanwhile); the
             count is the connections still open at the end.

``--tls``: every connection is TLS (the stdlib's ``ssl``, a non-blocking ``SSLSocket``),
trusting ``--cafile`` (default: the test CA, tests/tls/ca.pem) and checking the server's
name (``--host``); a full handshake per connection (no session resumption). The plain
path is the same code as without it: TLS only adds a subclass of the epoll loop (a
partial ``SSL_write`` must be retried with the same buffer) and two exception types.

Protocol with the parent (tools/bench.py), so that several load processes measure the
same window: the process opens its connections, prints ``READY``, waits for a line
``GO <start> <end>`` (two ``time.monotonic()`` values; CLOCK_MONOTONIC is system-wide on
Linux), drives load from then on and counts what completes between ``start`` and ``end``.
It then prints one JSON line: ``count``, ``seconds``, ``cpu`` (its own CPU seconds in the
window), ``rx``/``tx`` (socket bytes in the window), ``errors``.

Written to be cheap, so that the server and not this process is the bottleneck: epoll
directly (no selectors key objects), requests and frames built once, responses parsed by
a length check on the common path (a whole answer in one ``recv``).
"""

import argparse
import json
import os
import random
import select
import signal
import socket
import ssl
import sys
import time
import zlib
from typing import Optional

MASK_KEY = b"\x37\xfa\x21\x3d"
# RFC 6455 section 1.3's example: a fixed key lets us check the accept value for free.
WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
WS_ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
DEFLATE_OFFER = "permessage-deflate; client_no_context_takeover; client_max_window_bits"
SYNC_TAIL = b"\x00\x00\xff\xff"
RECV_SIZE = 262144
POLL_S = 0.05           # longest wait before the clock is looked at again
EXIT_GRACE_S = 15.0     # hard stop this long after the window, whatever happens
OP_TEXT, OP_BINARY, OP_CLOSE = 0x1, 0x2, 0x8
TEST_CA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "tls", "ca.pem")
# A non-blocking socket with nothing to do now; the TLS ones on an SSLSocket: a record
# is not complete yet, or a write must wait (and be retried with the same buffer).
WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)

_monotonic = time.monotonic


# -- pre-built bytes ------------------------------------------------------------------------

def mask(payload: bytes, key: bytes = MASK_KEY) -> bytes:
    """XOR ``payload`` with ``key`` (one big-integer XOR; done once, at start-up)."""
    n = len(payload)
    if not n:
        return b""
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(n, "little")


def client_frame(opcode: int, payload: bytes, rsv1: bool = False) -> bytes:
    """A complete masked client frame (RFC 6455 section 5.2)."""
    b0 = 0x80 | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        header = bytes((b0, 0x80 | n))
    elif n < 65536:
        header = bytes((b0, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((b0, 0x80 | 127)) + n.to_bytes(8, "big")
    return header + MASK_KEY + mask(payload)


def chat_messages(count: int, size: int, seed: int = 7) -> list:
    """``count`` different JSON-like chat messages of about ``size`` bytes each (ASCII)."""
    rng = random.Random(seed)
    words = ("the meeting moved to thursday afternoon because the build server is down again "
             "please review my pull request when you have a minute thanks lunch anyone "
             "deploy finished without errors latency looks fine on the dashboard now "
             "who broke the tests on main I will revert it after the standup").split()
    users = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]
    out = []
    for i in range(count):
        head = ('{"type":"chat","room":"general","id":"%08x-%04x","user":"%s","ts":%d.%03d,'
                '"reply_to":%s,"text":"' % (rng.getrandbits(32), rng.getrandbits(16),
                                            rng.choice(users), 1700000000 + i * 7,
                                            rng.randrange(1000),
                                            "null" if i % 3 else '"%08x"' % rng.getrandbits(32)))
        tail = '","reactions":{"%s":%d}}' % (rng.choice(("+1", "tada", "eyes")), rng.randrange(9))
        room = size - len(head) - len(tail)
        text = []
        length = -1
        while length < room:
            word = rng.choice(words)
            text.append(word)
            length += len(word) + 1
        out.append((head + " ".join(text)[:max(0, room)] + tail).encode("ascii"))
    return out


def deflate_message(data: bytes, wbits: int) -> bytes:
    """permessage-deflate payload of one message compressed without context."""
    comp = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -wbits)
    out = comp.compress(data) + comp.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(SYNC_TAIL)
    return out[:-4]


def upgrade_request(host: str, port: int, path: str, extensions: str = "") -> bytes:
    lines = ["GET %s HTTP/1.1" % path, "Host: %s:%d" % (host, port), "Upgrade: websocket",
             "Connection: Upgrade", "Sec-WebSocket-Key: " + WS_KEY, "Sec-WebSocket-Version: 13"]
    if extensions:
        lines.append("Sec-WebSocket-Extensions: " + extensions)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def read_head(sock: socket.socket) -> tuple:
    """Blocking: read an HTTP response head; returns ``(head, rest)``."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed before the response head")
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def ws_upgrade(sock: socket.socket, host: str, port: int, path: str, extensions: str = "") -> tuple:
    """Blocking WebSocket handshake; returns ``(response head, bytes after it)``."""
    sock.sendall(upgrade_request(host, port, path, extensions))
    head, rest = read_head(sock)
    if not head.startswith(b"HTTP/1.1 101") or WS_ACCEPT not in head:
        raise ConnectionError("upgrade refused: %r" % head[:200])
    return head, rest


def response_param(head: bytes, name: bytes) -> int:
    """The value of ``name=N`` in the Sec-WebSocket-Extensions answer, or 15."""
    pos = head.find(name + b"=")
    if pos < 0:
        return 15
    return int(head[pos + len(name) + 1:pos + len(name) + 3].strip(b"; \r\n\""))


# -- connections -------------------------------------------------------------------------------

class Conn:
    """One load connection: what to send next and how far the current answer has come."""

    __slots__ = ("sock", "fd", "requests", "index", "pending", "buf", "need", "inflater",
                 "expect", "rx", "tx", "batch", "answer")

    def __init__(self, sock: socket.socket, requests: list) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.requests = requests
        self.index = 0
        self.pending = None   # unsent tail of a large request (memoryview)
        self.buf = b""        # partial answer
        self.need = 0         # raw mode: bytes still expected
        self.inflater = None  # ws --deflate: the client's decompressor (server context)
        self.expect = 0       # ws --deflate: decompressed size to check
        self.rx = 0
        self.tx = 0
        self.batch = 1        # ws --batch: messages per burst, answered by byte count
        self.answer = 0       # ws --batch: bytes of the whole burst's echoes


def http_answer_end(buf: bytes) -> int:
    """End offset of the first complete HTTP response in ``buf``, or -1."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return -1
    pos = buf.find(b"Content-Length:", 0, end)
    if pos < 0:
        pos = buf.lower().find(b"content-length:", 0, end)
        if pos < 0:
            raise ValueError("response without Content-Length: %r" % buf[:200])
    stop = buf.find(b"\r\n", pos)
    total = end + 4 + int(buf[pos + 15:stop])
    return total if len(buf) >= total else -1


def ws_frame_size(buf: bytes) -> int:
    """Total size of the server frame starting ``buf`` (its header is enough), or -1."""
    if len(buf) < 2:
        return -1
    if buf[1] & 0x80:
        raise ValueError("server frame is masked")
    n = buf[1] & 0x7F
    if n < 126:
        return 2 + n
    if n == 126:
        return 4 + int.from_bytes(buf[2:4], "big") if len(buf) >= 4 else -1
    return 10 + int.from_bytes(buf[2:10], "big") if len(buf) >= 10 else -1


def ws_frame_end(buf: bytes) -> int:
    """End offset of the first complete server frame in ``buf``, or -1."""
    total = ws_frame_size(buf)
    return total if 0 <= total <= len(buf) else -1


class Load:
    """The epoll loop driving every connection of this process."""

    def __init__(self, mode: str, conns: list, deflate: bool) -> None:
        self.mode = mode
        self.conns = {c.fd: c for c in conns}
        self.deflate = deflate
        self.count = 0
        self.errors = 0
        self.poller = select.epoll()
        for c in conns:
            c.sock.setblocking(False)
            self.poller.register(c.fd, select.EPOLLIN)

    def send_next(self, c: Conn) -> None:
        requests = c.requests
        data = requests[c.index]
        c.index = (c.index + 1) % len(requests)
        sent = c.sock.send(data)
        c.tx += sent
        if sent < len(data):
            c.pending = memoryview(data)[sent:]
            self.poller.modify(c.fd, select.EPOLLIN | select.EPOLLOUT)

    def flush(self, c: Conn) -> None:
        sent = c.sock.send(c.pending)
        c.tx += sent
        c.pending = c.pending[sent:]
        if not len(c.pending):
            c.pending = None
            self.poller.modify(c.fd, select.EPOLLIN)

    def drop(self, c: Conn) -> None:
        self.errors += 1
        del self.conns[c.fd]
        try:
            self.poller.unregister(c.fd)
        except OSError:
            pass
        c.sock.close()

    def on_data(self, c: Conn, view: memoryview, n: int) -> int:
        """Account for ``n`` received bytes in ``view``; returns the answers completed (0 or 1)."""
        mode = self.mode
        if c.batch > 1:
            # A burst of --batch frames went out in one write; its echoes are counted by
            # bytes (server frames of a fixed size), one answer per message.
            c.need -= n
            if c.need > 0:
                return 0
            if c.need < 0:
                raise ValueError("echoes longer than the burst")
            c.need = c.answer
            return c.batch
        if mode == "raw":
            c.need -= n
            if c.need > 0:
                return 0
            if c.need < 0:
                raise ValueError("echo longer than the message")
            c.need = len(c.requests[0])
            return 1
        if mode == "ws" and not self.deflate:
            return self.count_frame(c, view, n)
        data = bytes(view[:n])
        buf = c.buf + data if c.buf else data
        end = http_answer_end(buf) if mode == "http" else ws_frame_end(buf)
        if end < 0:
            c.buf = buf
            return 0
        if end != len(buf):
            raise ValueError("more than one answer for one request (%d extra bytes)"
                             % (len(buf) - end))
        c.buf = b""
        if self.deflate:
            self.check_inflate(c, buf)
        return 1

    @staticmethod
    def count_frame(c: Conn, view: memoryview, n: int) -> int:
        # Only the header is looked at; a 1 MiB payload is counted, never copied.
        if c.need:
            c.need -= n
            if c.need > 0:
                return 0
            if c.need < 0:
                raise ValueError("more than one frame for one message")
            return 1
        head = c.buf + bytes(view[:min(n, 10)])
        total = ws_frame_size(head)
        if total < 0:
            c.buf = head   # a partial header: n < 10, so all of it is in head
            return 0
        got = len(c.buf) + n
        c.buf = b""
        if got > total:
            raise ValueError("more than one frame for one message")
        if got == total:
            return 1
        c.need = total - got
        return 0

    def check_inflate(self, c: Conn, frame: bytes) -> None:
        n = frame[1] & 0x7F
        start = 2 if n < 126 else 4 if n == 126 else 10
        payload = frame[start:]
        if frame[0] & 0x40:
            payload = c.inflater.decompress(payload + SYNC_TAIL)
        if len(payload) != c.expect:
            raise ValueError("echo of %d bytes, expected %d" % (len(payload), c.expect))

    def run(self, start: float, end: float) -> dict:
        conns = self.conns
        poll = self.poller.poll
        # One receive buffer for every connection: no 256 KiB allocation per recv().
        scratch = bytearray(RECV_SIZE)
        view = memoryview(scratch)
        count = 0
        count0 = rx0 = tx0 = cpu0 = t0 = None
        for c in list(conns.values()):
            self.send_next(c)
        while conns:
            for fd, ev in poll(POLL_S):
                c = conns.get(fd)
                if c is None:
                    continue
                try:
                    if ev & select.EPOLLOUT and c.pending is not None:
                        self.flush(c)
                    if ev & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
                        n = c.sock.recv_into(scratch)
                        if not n:
                            raise ConnectionError("server closed the connection")
                        c.rx += n
                        answers = self.on_data(c, view, n)
                        if answers:
                            count += answers
                            self.send_next(c)
                except WOULD_BLOCK:
                    continue
                except (OSError, ValueError, zlib.error) as exc:
                    print("loadgen: %s" % exc, file=sys.stderr)
                    self.drop(c)
            now = _monotonic()
            if t0 is None and now >= start:
                t0, count0, cpu0 = now, count, time.process_time()
                rx0, tx0 = self.totals()
            if now >= end:
                break
        now = _monotonic()
        if t0 is None:
            t0, count0, cpu0, rx0, tx0 = now, count, time.process_time(), 0, 0
        rx, tx = self.totals()
        return {"count": count - count0, "seconds": now - t0, "cpu": time.process_time() - cpu0,
                "rx": rx - rx0, "tx": tx - tx0, "errors": self.errors, "conns": len(conns)}

    def totals(self) -> tuple:
        return (sum(c.rx for c in self.conns.values()), sum(c.tx for c in self.conns.values()))

    def close(self) -> None:
        for c in self.conns.values():
            c.sock.close()
        self.poller.close()


class TlsLoad(Load):
    """The same loop over ``SSLSocket``s. ``SSL_write`` of a large message either takes it
    all or raises SSLWantWriteError with part of it already in records; the retry must
    pass the same bytes again, so the whole message stays pending until it goes."""

    def send_next(self, c: Conn) -> None:
        requests = c.requests
        data = requests[c.index]
        c.index = (c.index + 1) % len(requests)
        try:
            c.tx += c.sock.send(data)
        except ssl.SSLWantWriteError:
            c.pending = memoryview(data)
            self.poller.modify(c.fd, select.EPOLLIN | select.EPOLLOUT)

    def flush(self, c: Conn) -> None:
        c.tx += c.sock.send(c.pending)   # all of it, or SSLWantWriteError again
        c.pending = None
        self.poller.modify(c.fd, select.EPOLLIN)

    def run(self, start: float, end: float) -> dict:
        described = describe_tls(next(iter(self.conns.values())).sock) if self.conns else ""
        result = super().run(start, end)
        result["tls"] = described
        return result


def describe_tls(sock: ssl.SSLSocket) -> str:
    """What was negotiated, e.g. ``TLSv1.3 TLS_AES_256_GCM_SHA384``."""
    return "%s %s" % (sock.version(), sock.cipher()[0])


# -- set-up per mode ---------------------------------------------------------------------------

def connect(host: str, port: int, context: Optional[ssl.SSLContext] = None,
            sndbuf: int = 0) -> socket.socket:
    """A TCP connection (TCP_NODELAY), over TLS with ``context`` (handshake done);
    ``sndbuf``: a fixed SO_SNDBUF instead of the kernel's autotuning."""
    sock = socket.create_connection((host, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if sndbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    if context is not None:
        sock = context.wrap_socket(sock, server_hostname=host)
    return sock


def client_context(args: argparse.Namespace) -> Optional[ssl.SSLContext]:
    """The client's SSLContext for ``--tls`` (None without it)."""
    if not args.tls:
        return None
    return ssl.create_default_context(cafile=args.cafile)


def open_connections(args: argparse.Namespace) -> list:
    host, port = args.host, args.port
    context = client_context(args)
    conns = []
    if args.mode == "http":
        request = ("GET %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: minisoup-loadgen\r\n"
                   "Accept: */*\r\n\r\n" % (args.path, host, port)).encode("latin-1")
        for _ in range(args.conns):
            conns.append(Conn(connect(host, port, context), [request]))
    elif args.mode == "raw":
        request = os.urandom(args.size)
        for _ in range(args.conns):
            c = Conn(connect(host, port, context), [request])
            c.need = args.size
            conns.append(c)
    elif args.mode == "ws":
        if args.chat:
            messages = chat_messages(args.chat, args.size)
            opcode = OP_TEXT
        else:
            messages = [os.urandom(args.size)]
            opcode = OP_BINARY
        for _ in range(args.conns):
            sock = connect(host, port, context, args.sndbuf)
            head, rest = ws_upgrade(sock, host, port, args.path, DEFLATE_OFFER if args.deflate else "")
            if rest:
                raise ConnectionError("unexpected bytes after the 101")
            if args.deflate:
                if b"permessage-deflate" not in head:
                    raise ConnectionError("server declined permessage-deflate")
                client_bits = response_param(head, b"client_max_window_bits")
                server_bits = response_param(head, b"server_max_window_bits")
                frames = [client_frame(opcode, deflate_message(m, client_bits), rsv1=True)
                          for m in messages]
            else:
                frames = [client_frame(opcode, m) for m in messages]
            if args.batch > 1:
                if args.deflate or args.chat or args.size > 125:
                    raise SystemExit("--batch needs plain binary messages of at most 125 bytes")
                frames = [b"".join(frames * args.batch)]
            c = Conn(sock, frames)
            if args.batch > 1:
                c.batch = args.batch
                c.answer = c.need = args.batch * (2 + args.size)
            if args.deflate:
                c.inflater = zlib.decompressobj(wbits=-server_bits)
            c.expect = len(messages[0])
            conns.append(c)
        if args.deflate and len(set(map(len, messages))) != 1:
            raise SystemExit("chat messages must share one size for the echo check")
    return conns


def run_handshakes(args: argparse.Namespace, start: float, end: float) -> dict:
    """Blocking loop: connect (and TLS handshake), upgrade, close handshake, wait for the
    server's FIN (over TLS: its close_notify, or a FIN without one)."""
    host, port = args.host, args.port
    context = client_context(args)
    close_frame = client_frame(OP_CLOSE, (1000).to_bytes(2, "big"))
    count = errors = 0
    count0 = cpu0 = t0 = None
    described = ""
    now = _monotonic()
    while now < end:
        try:
            sock = connect(host, port, context)
            try:
                if context is not None and not described:
                    described = describe_tls(sock)
                _head, rest = ws_upgrade(sock, host, port, args.path)
                sock.sendall(close_frame)
                while ws_frame_end(rest) < 0:
                    data = sock.recv(4096)
                    if not data:
                        raise ConnectionError("no close frame")
                    rest += data
                if rest[0] & 0x0F != OP_CLOSE:
                    raise ConnectionError("expected a close frame, got opcode %d" % (rest[0] & 0x0F))
                while sock.recv(4096):   # the server closes the TCP connection first
                    pass
            finally:
                sock.close()
            count += 1
        except OSError as exc:
            errors += 1
            print("loadgen: handshake failed: %s" % exc, file=sys.stderr)
            if errors > 100:
                break
        now = _monotonic()
        if t0 is None and now >= start:
            t0, count0, cpu0 = now, count, time.process_time()
    if t0 is None:
        t0, count0, cpu0 = now, count, time.process_time()
    return {"count": count - count0, "seconds": now - t0, "cpu": time.process_time() - cpu0,
            "rx": 0, "tx": 0, "errors": errors, "conns": 1, "tls": described}


def open_idle(args: argparse.Namespace) -> list:
    """``--conns`` upgraded WebSocket connections, left idle (blocking sockets)."""
    if args.tls or args.conns > 1000:
        # One descriptor per connection: raise the soft limit to the hard one if needed.
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < args.conns + 64:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    context = client_context(args)
    socks = []
    for _ in range(args.conns):
        sock = connect(args.host, args.port, context)
        socks.append(sock)
        _head, rest = ws_upgrade(sock, args.host, args.port, args.path)
        if rest:
            raise ConnectionError("unexpected bytes after the 101")
    return socks


def hold_idle(socks: list, args: argparse.Namespace, end: float) -> dict:
    """Wait until ``end``; count the connections the server has not closed meanwhile."""
    t0, cpu0 = _monotonic(), time.process_time()
    time.sleep(max(0.0, end - t0))
    alive = 0
    for sock in socks:
        sock.setblocking(False)
        try:
            if sock.recv(1):
                alive += 1          # a ping, say: still open
        except WOULD_BLOCK:
            alive += 1
        except OSError:
            pass
    described = describe_tls(socks[0]) if args.tls and socks else ""
    for sock in socks:
        sock.close()
    return {"count": alive, "seconds": _monotonic() - t0, "cpu": time.process_time() - cpu0,
            "rx": 0, "tx": 0, "errors": len(socks) - alive, "conns": alive, "tls": described}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("http", "ws", "raw", "handshake", "idle"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--conns", type=int, default=8, help="connections in this process")
    parser.add_argument("--size", type=int, default=64, help="message size in bytes")
    parser.add_argument("--path", default="/echo")
    parser.add_argument("--chat", type=int, default=0,
                        help="ws: cycle through this many JSON-like text messages of --size bytes")
    parser.add_argument("--deflate", action="store_true", help="ws: negotiate permessage-deflate")
    parser.add_argument("--batch", type=int, default=1,
                        help="ws: send this many messages per write and wait for all their echoes")
    parser.add_argument("--cpus", default="", help="pin this process to these CPUs (e.g. 1)")
    parser.add_argument("--tls", action="store_true", help="connect over TLS (https, wss)")
    parser.add_argument("--cafile", default=TEST_CA, help="--tls: the CA to trust (PEM)")
    parser.add_argument("--sndbuf", type=int, default=0,
                        help="ws: SO_SNDBUF per connection (default: the kernel's autotuning); "
                             "small, it makes large sends stop part-way")
    args = parser.parse_args()
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})

    load = idle = None
    if args.mode == "idle":
        idle = open_idle(args)
    elif args.mode != "handshake":
        load = (TlsLoad if args.tls else Load)(args.mode, open_connections(args), args.deflate)
    print("READY", flush=True)
    line = sys.stdin.readline().split()
    if len(line) != 3 or line[0] != "GO":
        raise SystemExit("loadgen: expected 'GO start end', got %r" % line)
    start, end = float(line[1]), float(line[2])
    # Whatever goes wrong, this process ends soon after its window.
    signal.signal(signal.SIGALRM, lambda *_: os._exit(3))
    signal.alarm(int(max(0.0, end - _monotonic()) + EXIT_GRACE_S))
    if idle is not None:
        result = hold_idle(idle, args, end)
    elif load is None:
        result = run_handshakes(args, start, end)
    else:
        try:
            result = load.run(start, end)
        finally:
            load.close()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
