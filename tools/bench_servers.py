"""The servers tools/bench.py measures, one per process.

    python3 tools/bench_servers.py KIND [--workers N] [--cpus 0]

Prints ``PORT <n>`` once listening on 127.0.0.1 (a free port), then serves until
SIGTERM. KIND:
  minisoup  minisoup.Server: ``GET /hello`` answers a 12-byte body; WebSocket echo at
            ``/echo`` (default limits) and ``/big`` (no size limits, for 1 MiB
            messages), ``/work`` (echo after ~0.3 ms of Python work per message, a
            CPU-bound application for the pre-fork scaling figure); permessage-deflate
            offered (the default). ``--workers N`` serves
            with ``run(workers=N)`` (pre-fork), else ``run()`` in this process.
  stdlib    http.server.ThreadingHTTPServer answering ``GET /hello`` the same way,
            HTTP/1.1 keep-alive, ``disable_nagle_algorithm = True``;
  stdlib-nagle  the same with the stdlib's default, Nagle's algorithm on.
  raw-echo  a TCP echo server on minisoup's own Loop and SocketTransport (no framing):
            the floor a WebSocket echo on the same loop is compared with.
  raw-http  minisoup's own Loop and SocketTransport answering each request head with the
            bytes minisoup answers ``GET /hello`` with (made once per second, for the
            Date): no parsing, no message, no handler. The floor of the HTTP figure:
            what the loop and the kernel cost per request without any HTTP. A head
            with a Sec-WebSocket-Key gets a 101 (accept key computed) and the next
            bytes a close frame and the close: the floor of the handshake figure.
  minisoup-tls   the minisoup server above on an HTTPS listener (wss://), with the test
            certificate of tests/tls/ (server.pem, signed by ca.pem).
  websockets-tls python-websockets (its asyncio server) echoing at every path over TLS
            with the same certificate and the same server SSLContext settings
            (minisoup.tls.create_server_context); no size limit, no compression
            offered. Run with a Python that has websockets (tools/bench.py uses its own
            virtualenv, .venv-bench/): websockets is not a minisoup dependency.
  minisoup-fanout  publish/subscribe (the "fanout" section): every WebSocket on
            ``/fanout`` is subscribed to topic ``room`` and greeted with ``W<worker
            id>``; each text message on ``/fanout-trigger`` is published to ``room``
            (``server.publish``, reaching every worker). ``max_connections`` raised
            above the 10,000 subscribers.
  websockets-fanout  the same application on python-websockets (asyncio, plain TCP):
            greeting ``W0``, and each trigger message sent with its ``broadcast()`` to
            every ``/fanout`` connection, in one process (no compression, no pings).
The peers of the "peers" section (WebSocket echo at every path it serves, ``GET /hello``
with a 12-byte body where it speaks HTTP, no compression offered, no size limit):
  libsoup-c  libsoup 3 in C: execs build/bench-tools/anchor_libsoup_c (tools/peer_tools.py
            builds it) with ``--port 0 --no-deflate --max 0``; it prints the PORT line itself.
  aiohttp   aiohttp's web server (asyncio): ``GET /hello``, WebSocket echo at ``/echo`` and
            ``/big``, no access log.
  websockets  python-websockets, its asyncio server, as websockets-tls without TLS (no HTTP).
aiohttp and websockets run with the bench virtualenv's Python, as websockets-tls.
"""

import argparse
import logging
import os
import signal
import socket
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

BODY = b"hello world\n"   # 12 bytes
WORK_LOOPS = 5000         # /work: Python work per message (about 0.3 ms here)
CONTENT_TYPE = "text/plain"
TLS_CERT = os.path.join(ROOT, "tests", "tls", "server.pem")
TLS_KEY = os.path.join(ROOT, "tests", "tls", "server.key")
FANOUT_TOPIC = "room"
FANOUT_MAX_CONNECTIONS = 20000   # the 10,000 subscribers and the trigger, in one worker


def announce(port: int) -> None:
    print("PORT %d" % port, flush=True)


# -- minisoup -----------------------------------------------------------------------------------

def build_minisoup(tls: bool = False):
    """The minisoup.Server every benchmark measures (listening on 127.0.0.1, a free port);
    ``tls``: on an HTTPS listener with the test certificate."""
    import minisoup

    def hello(server, msg, path, query, user_data):
        msg.set_status(200)
        msg.set_response(CONTENT_TYPE, BODY)

    def echo(conn, kind, data):
        conn.send_message(kind, data)

    def on_echo(server, msg, path, conn, user_data):
        conn.connect("message", echo)

    def on_big(server, msg, path, conn, user_data):
        conn.set_max_incoming_payload_size(0)
        conn.set_max_total_message_size(0)
        conn.connect("message", echo)

    def work(conn, kind, data):
        # A CPU-bound application: ~0.3 ms of Python per message before the echo, so
        # that the server, not the load generator, is what the CPUs are busy with.
        total = 0
        for i in range(WORK_LOOPS):
            total += i * i
        conn.send_message(kind, data)

    def on_work(server, msg, path, conn, user_data):
        conn.connect("message", work)

    server = minisoup.Server()
    server.add_handler("/hello", hello)
    server.add_websocket_handler("/work", None, None, on_work)
    server.add_websocket_handler("/echo", None, None, on_echo)
    server.add_websocket_handler("/big", None, None, on_big)
    if tls:
        server.set_tls_certificate(TLS_CERT, TLS_KEY)
        server.listen(("127.0.0.1", 0), minisoup.ListenOptions.HTTPS)
    else:
        server.listen_local(0)
    return server


def serve_minisoup(workers: int, tls: bool = False) -> None:
    server = build_minisoup(tls)
    announce(server.get_listeners()[0].getsockname()[1])
    server.run(workers=workers)


# -- publish/subscribe fan-out ------------------------------------------------------------------

def raise_file_limit() -> None:
    """One descriptor per subscriber: the soft limit up to the hard one."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve_minisoup_fanout(workers: int) -> None:
    import minisoup

    def on_subscriber(server, msg, path, conn, user_data):
        conn.subscribe(FANOUT_TOPIC)
        conn.send_text("W%d" % server.get_worker_id())

    def on_trigger_message(conn, kind, data, server):
        server.publish(FANOUT_TOPIC, data)

    def on_trigger(server, msg, path, conn, user_data):
        conn.connect("message", on_trigger_message, server)

    raise_file_limit()
    server = minisoup.Server(max_connections=FANOUT_MAX_CONNECTIONS)
    server.add_websocket_handler("/fanout-trigger", None, None, on_trigger)
    server.add_websocket_handler("/fanout", None, None, on_subscriber)
    server.listen_local(0)
    announce(server.get_listeners()[0].getsockname()[1])
    server.run(workers=workers)


def serve_websockets_fanout() -> None:
    import asyncio

    from websockets.asyncio.server import broadcast, serve

    subscribers = set()

    async def handler(ws) -> None:
        if ws.request.path == "/fanout-trigger":
            async for message in ws:
                broadcast(subscribers, message)
            return
        subscribers.add(ws)
        try:
            await ws.send("W0")
            await ws.wait_closed()
        finally:
            subscribers.discard(ws)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
        # As minisoup's: no compression (the load generator offers none anyway), no
        # keepalive pings (minisoup's default interval is 0), a backlog like its own.
        async with serve(handler, "127.0.0.1", 0, compression=None, ping_interval=None,
                         backlog=1024, logger=logging.getLogger("websockets")) as server:
            logging.getLogger("websockets").setLevel(logging.CRITICAL)
            announce(server.sockets[0].getsockname()[1])
            await stop

    raise_file_limit()
    asyncio.run(main())


# -- the stdlib reference -------------------------------------------------------------------------

def serve_stdlib(nagle: bool = False) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"      # keep-alive
        # The handler writes the head and the body separately; with Nagle's algorithm on
        # (the stdlib's default) the body then waits for the client's delayed ACK, about
        # 40 ms per request. Turning it off is the fair comparison ("stdlib-nagle" keeps it).
        disable_nagle_algorithm = not nagle

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)

        def log_message(self, format, *args):  # minisoup's access log is off too
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request, client_address):
            # A load connection closed at the end of a run: not worth a traceback.
            if not isinstance(sys.exc_info()[1], ConnectionError):
                super().handle_error(request, client_address)

    httpd = Server(("127.0.0.1", 0), Handler)
    announce(httpd.server_address[1])
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    httpd.serve_forever()


# -- raw echo on minisoup's loop ------------------------------------------------------------------

class EchoProtocol:
    """Writes back whatever arrives: the cheapest protocol a SocketTransport can drive."""

    __slots__ = ("transport",)

    def __init__(self) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> None:
        self.transport.close()

    def connection_lost(self, exc) -> None:
        self.transport = None


def serve_raw_echo() -> None:
    serve_on_loop(EchoProtocol)

class ConstantHTTP:
    """Answers every request head (up to its blank line) with one constant response: the
    loop's and the kernel's share of a keep-alive GET, without HTTP. Pipelined heads in
    one read each get their answer; a head split over reads is answered when it ends.

    A head with a ``Sec-WebSocket-Key`` is answered with a 101 instead, its accept key
    computed by ``compute_accept`` (minisoup's own: the one piece of work no handshake
    can skip), and whatever arrives next is
    taken for the client's close frame: answered with a close frame 1000, then the
    connection is closed. The loop's and the kernel's share of wsload's handshake cycle,
    without HTTP or WebSocket: no parsing, no checks, no framing."""

    __slots__ = ("transport", "pending", "upgraded", "compute_accept")

    def __init__(self, compute_accept) -> None:
        self.transport = None
        self.pending = b""
        self.upgraded = False
        self.compute_accept = compute_accept

    def data_received(self, data: bytes) -> None:
        if self.upgraded:
            self.transport.write(CLOSE_1000)
            self.transport.close()
            return
        if self.pending:
            data = self.pending + data
        heads = data.count(b"\r\n\r\n")
        self.pending = data[data.rfind(b"\r\n\r\n") + 4:] if heads else data
        if not heads:
            return
        at = data.find(KEY_FIELD)
        if at < 0:
            self.transport.write(constant_response() * heads)
            return
        at += len(KEY_FIELD)
        key = data[at:data.index(b"\r\n", at)].strip().decode("ascii")
        self.transport.write(SWITCHING + self.compute_accept(key).encode("ascii") + b"\r\n\r\n")
        self.upgraded = True

    def eof_received(self) -> None:
        self.transport.close()

    def connection_lost(self, exc) -> None:
        self.transport = None


KEY_FIELD = b"Sec-WebSocket-Key:"
SWITCHING = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
             b"Connection: Upgrade\r\nSec-WebSocket-Accept: ")
CLOSE_1000 = b"\x88\x02\x03\xe8"   # unmasked close frame, code 1000

_constant = [0, b""]


def constant_response() -> bytes:
    """What minisoup answers ``GET /hello`` with (the same fields, sizes and Date), as bytes."""
    now = int(time.time())
    if _constant[0] != now:
        from minisoup import __version__
        from minisoup.http import http_date
        _constant[0] = now
        _constant[1] = ("HTTP/1.1 200 OK\r\nServer: minisoup/%s\r\nDate: %s\r\n"
                        "Content-Type: %s\r\nContent-Length: %d\r\n\r\n"
                        % (__version__, http_date(now), CONTENT_TYPE, len(BODY))).encode() + BODY
    return _constant[1]


def serve_on_loop(protocol_type) -> None:
    """A listener on minisoup's Loop whose connections each get a ``protocol_type()``."""
    from minisoup.loop import Loop, SocketTransport

    loop = Loop()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited (Linux)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    listener.setblocking(False)

    def on_accept(events: int) -> None:
        for _ in range(16):
            try:
                sock, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            protocol = protocol_type()
            protocol.transport = SocketTransport(loop, sock, protocol)

    loop.add_reader(listener, on_accept)
    loop.add_signal_handler(signal.SIGTERM, lambda signum: loop.stop())
    announce(listener.getsockname()[1])
    try:
        loop.run()
    finally:
        loop.close()
        listener.close()


# -- python-websockets (the peer of the "tls" section, and without TLS of "peers") ---------------

def serve_websockets_tls(tls: bool = True) -> None:
    import asyncio

    from websockets.asyncio.server import serve

    from minisoup.tls import create_server_context

    async def echo(ws) -> None:
        async for message in ws:
            await ws.send(message)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
        context = create_server_context(TLS_CERT, TLS_KEY) if tls else None
        # No size limit (the 1 MiB echo) and no permessage-deflate: what minisoup's
        # /big and the load generator (which offers no extension) use too.
        async with serve(echo, "127.0.0.1", 0, ssl=context, max_size=None,
                         compression=None, logger=logging.getLogger("websockets")) as server:
            # Each load process drops its connections mid-stream at the end of its window,
            # which websockets logs as an error with a traceback per connection: not worth
            # reporting (the load generator counts its own failures).
            logging.getLogger("websockets").setLevel(logging.CRITICAL)
            announce(server.sockets[0].getsockname()[1])
            await stop

    asyncio.run(main())


# -- the peers of the "peers" section ------------------------------------------------------------

def serve_libsoup_c() -> None:
    from peer_tools import ANCHOR_BINARY   # tools/ is this script's directory

    if not os.path.exists(ANCHOR_BINARY):
        sys.exit("bench server: %s is not built (tools/peer_tools.py build_anchor)"
                 % ANCHOR_BINARY)
    # exec keeps this process: its group, its CPU pinning, its stdout for the PORT line.
    os.execv(ANCHOR_BINARY, [ANCHOR_BINARY, "--port", "0", "--no-deflate", "--max", "0"])


def serve_aiohttp() -> None:
    import asyncio

    from aiohttp import WSMsgType, web

    async def hello(request):
        return web.Response(body=BODY, content_type=CONTENT_TYPE)

    async def echo(request):
        # max_msg_size=0: no limit (the 1 MiB echo); compress=False: no permessage-deflate.
        ws = web.WebSocketResponse(max_msg_size=0, compress=False)
        await ws.prepare(request)
        async for message in ws:
            if message.type == WSMsgType.BINARY:
                await ws.send_bytes(message.data)
            elif message.type == WSMsgType.TEXT:
                await ws.send_str(message.data)
        return ws

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
        app = web.Application()
        app.router.add_get("/hello", hello)
        app.router.add_get("/echo", echo)
        app.router.add_get("/big", echo)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        announce(runner.addresses[0][1])
        try:
            await stop
        finally:
            await runner.cleanup()

    asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("minisoup", "stdlib", "stdlib-nagle", "raw-echo",
                                         "raw-http", "minisoup-tls", "websockets-tls",
                                         "minisoup-fanout", "websockets-fanout", "libsoup-c",
                                         "aiohttp", "websockets"))
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--cpus", default="", help="pin to these CPUs (inherited by workers)")
    args = parser.parse_args()
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    logging.basicConfig(level=logging.WARNING, format="bench server: %(levelname)s %(message)s")
    if args.kind in ("minisoup", "minisoup-tls"):
        serve_minisoup(args.workers, tls=args.kind == "minisoup-tls")
    elif args.kind in ("websockets-tls", "websockets"):
        serve_websockets_tls(tls=args.kind == "websockets-tls")
    elif args.kind == "minisoup-fanout":
        serve_minisoup_fanout(args.workers)
    elif args.kind == "websockets-fanout":
        serve_websockets_fanout()
    elif args.kind == "libsoup-c":
        serve_libsoup_c()
    elif args.kind == "aiohttp":
        serve_aiohttp()
    elif args.kind in ("stdlib", "stdlib-nagle"):
        serve_stdlib(nagle=args.kind == "stdlib-nagle")
    elif args.kind == "raw-http":
        from minisoup.handshake import compute_accept
        serve_on_loop(lambda: ConstantHTTP(compute_accept))
    else:
        serve_raw_echo()


if __name__ == "__main__":
    main()
