"""TLS: ``https://`` and ``wss://`` on the worker loop (SPEC section 8).

Over real sockets, through the public API: ``Server.set_tls_certificate`` and
``ListenOptions.HTTPS`` on the server; ``http.client``, ``minisoup.websocket_connect``
and raw ``ssl`` sockets on the client. The certificates are in tests/tls/ (made once by
tools/make_test_certs.sh; the tests never run openssl).
"""

import base64
import http.client
import logging
import os
import signal
import socket
import ssl
import threading
import time
import warnings

import pytest

import minisoup
from minisoup import ListenOptions, TlsAuthMode, WebsocketDataType, WebsocketState
from minisoup import interfaces
from minisoup.handshake import compute_accept
from minisoup.tls import TLSTransport, create_server_context
from conftest import NullProtocol, running
from serverproc import MinisoupProcess
from test_interfaces import mismatches
from wsraw import BINARY, TEXT, RawWebSocket, handshake_request, read_response_head

T = 5.0
CERTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tls")


def cert(name):
    return os.path.join(CERTS, name)


CA, SERVER_CERT, SERVER_KEY = cert("ca.pem"), cert("server.pem"), cert("server.key")


def client_context(client=None, alpn=None):
    """A client context trusting the test CA; ``client``: "client" or "other-client"."""
    context = ssl.create_default_context(cafile=CA)
    if client:
        context.load_cert_chain(cert(client + ".pem"), cert(client + ".key"))
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def tls_server(auth_mode=None, database=CA, **limits):
    server = minisoup.Server(**limits)
    server.set_tls_certificate(SERVER_CERT, SERVER_KEY)
    if auth_mode is not None:
        server.set_tls_database(database)
        server.set_tls_auth_mode(auth_mode)
    server.listen(("127.0.0.1", 0), ListenOptions.HTTPS)
    return server


def info_handler(server, msg, path, query, user_data):
    """Answers with what the handler saw: scheme, body length, client certificate CN."""
    peer = msg.get_tls_peer_certificate()
    cn = dict(x[0] for x in peer["subject"])["commonName"] if peer else "-"
    msg.set_status(200)
    msg.set_response("text/plain", "%s %s %d %s" % (msg.get_uri().scheme, path,
                                                    len(msg.get_request_body()), cn))


def https_get(port, path="/", context=None, method="GET", body=None):
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context or client_context(),
                                       timeout=T)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def tls_connect(port, context=None, server_hostname="localhost"):
    """A blocking ssl socket to the server, handshake done."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=T)
    return (context or client_context()).wrap_socket(sock, server_hostname=server_hostname)


def recv_all(sock, timeout=T):
    """Read until EOF (or a reset, or a TLS error); returns the bytes read."""
    sock.settimeout(timeout)
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except (OSError, ssl.SSLError):
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def wait_for(predicate, timeout=T, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "%s not met within %.1f s" % (what, timeout)
        time.sleep(0.01)


def no_tracebacks(caplog):
    return [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]


# -- the API ---------------------------------------------------------------------------
def test_https_listener_needs_a_certificate_and_says_https():
    server = minisoup.Server()
    assert not server.is_https() and server.get_tls_certificate() is None
    with pytest.raises(ValueError):
        server.listen(("127.0.0.1", 0), ListenOptions.HTTPS)
    with pytest.raises(ValueError):
        server.listen_local(0, ListenOptions.HTTPS)
    assert server.get_listeners() == []
    server.set_tls_certificate(SERVER_CERT, SERVER_KEY)
    assert server.is_https() and isinstance(server.get_tls_certificate(), ssl.SSLContext)
    server.listen(("127.0.0.1", 0), ListenOptions.HTTPS)
    server.listen(("127.0.0.1", 0))
    https, plain = server.get_uris()
    assert https.startswith("https://127.0.0.1:") and plain.startswith("http://127.0.0.1:")
    server.disconnect()


def test_listen_options_ipv4_only_and_ipv6_only():
    server = minisoup.Server()
    with pytest.raises(ValueError):
        server.listen_local(0, ListenOptions.IPV4_ONLY | ListenOptions.IPV6_ONLY)
    server.listen_local(0, ListenOptions.IPV4_ONLY)
    assert [s.family for s in server.get_listeners()] == [socket.AF_INET]
    server.disconnect()
    if socket.has_ipv6:
        try:
            server.listen_local(0, ListenOptions.IPV6_ONLY)
        except OSError:
            pytest.skip("no IPv6 loopback")
        assert [s.family for s in server.get_listeners()] == [socket.AF_INET6]
        server.disconnect()


def test_certificate_forms_and_errors_at_the_call(tmp_path):
    server = minisoup.Server()
    server.set_tls_certificate(cert("server-combined.pem"))                  # key inside
    server.set_tls_certificate(SERVER_CERT, cert("server-encrypted.key"), "minisoup")
    with pytest.raises(ssl.SSLError):
        server.set_tls_certificate(SERVER_CERT, cert("server-encrypted.key"), "wrong")
    with pytest.raises(ssl.SSLError):
        server.set_tls_certificate(SERVER_CERT, cert("client.key"))          # not its key
    with pytest.raises(OSError):
        server.set_tls_certificate(str(tmp_path / "missing.pem"))
    with pytest.raises(ValueError):
        server.set_tls_certificate(ssl.create_default_context())            # a client context
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(SERVER_CERT, SERVER_KEY)
    server.set_tls_certificate(context)
    assert server.get_tls_certificate() is context
    server.add_handler(None, info_handler)
    server.listen(("127.0.0.1", 0), ListenOptions.HTTPS)
    with running(server) as port:
        assert https_get(port, "/ctx") == (200, "https /ctx 0 -")


def test_defaults_tls12_minimum_alpn_no_renegotiation():
    context = create_server_context(SERVER_CERT, SERVER_KEY)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & getattr(ssl, "OP_NO_RENEGOTIATION", 0) == \
        getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    assert context.verify_mode == ssl.CERT_NONE
    server = tls_server()
    server.add_handler(None, info_handler)
    with running(server) as port:
        sock = tls_connect(port, client_context(alpn=["h2", "http/1.1"]))
        assert sock.selected_alpn_protocol() == "http/1.1"
        sock.close()
        twelve = client_context()
        twelve.maximum_version = ssl.TLSVersion.TLSv1_2
        sock = tls_connect(port, twelve)
        assert sock.version() == "TLSv1.2"
        sock.sendall(b"GET /v HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert recv_all(sock).endswith(b"https /v 0 -")
        sock.close()


def test_tls_transport_is_a_transport():
    server = tls_server()
    a, b = socket.socketpair()
    loop = minisoup.loop.Loop()
    try:
        transport = TLSTransport(loop, a, NullProtocol(), server.get_tls_certificate())
        assert isinstance(transport, interfaces.Transport)
        assert mismatches(transport, interfaces.Transport) == []
        transport.abort()
    finally:
        loop.close()
        b.close()
        server.disconnect()




class _Recorder:
    """A stream protocol that receives into a small buffer of its own (``get_buffer``)
    and can pause the transport after the first bytes."""

    def __init__(self, pause_first=False, view_size=1000):
        self.transport = None
        self.got = bytearray()
        self.buf = bytearray(view_size)
        self.pause_first = pause_first
        self.paused = threading.Event()
        self.eof = threading.Event()
        self.lost = threading.Event()

    def get_buffer(self):
        return memoryview(self.buf)

    def buffer_updated(self, nbytes):
        self.got += self.buf[:nbytes]
        if self.pause_first and not self.paused.is_set():
            self.transport.pause_reading()
            self.paused.set()

    def data_received(self, data):
        self.got += data

    def eof_received(self):
        self.eof.set()

    def connection_lost(self, exc):
        self.lost.set()


class _LoopThread:
    """A Loop run in a thread, which can be stopped and started again."""

    def __init__(self):
        self.loop = minisoup.loop.Loop()
        self.thread = None

    def start(self):
        self.thread = threading.Thread(target=self.loop.run, daemon=True)
        self.thread.start()

    def stop(self):
        self.loop.call_soon(self.loop.stop)
        self.loop.wakeup()
        self.thread.join(T)
        assert not self.thread.is_alive()

    def call(self, fn, *args):
        self.loop.call_soon(fn, *args)
        self.loop.wakeup()


def _bio_client_over(sock, with_incoming=False):
    """A TLS client as an SSLObject over ``sock`` (blocking), handshake done: its
    records can be built first and sent in one ``sendall``. ``(obj, outgoing)``, or
    ``(obj, incoming, outgoing)`` with ``with_incoming``."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            if outgoing.pending:
                sock.sendall(outgoing.read())
            incoming.write(sock.recv(65536))
    if outgoing.pending:
        sock.sendall(outgoing.read())
    return (obj, incoming, outgoing) if with_incoming else (obj, outgoing)


@pytest.mark.parametrize("pause_first", [False, True], ids=["reading", "paused-then-resumed"])
def test_records_held_by_the_tls_layer_are_delivered_without_another_packet(pause_first):
    """50 TLS records arrive in one packet and the client sends nothing more. They are
    all delivered (not one record per socket event); and a protocol that pauses after
    its first 1000 bytes gets the rest, from the TLS layer, once it resumes."""
    server_sock, client_sock = socket.socketpair()
    client_sock.settimeout(T)
    runner = _LoopThread()
    protocol = _Recorder(pause_first)
    context = create_server_context(SERVER_CERT, SERVER_KEY)
    try:
        server_sock.setblocking(False)
        protocol.transport = TLSTransport(runner.loop, server_sock, protocol, context)
        runner.start()
        client, outgoing = _bio_client_over(client_sock)
        runner.stop()           # the whole burst is in the kernel before the server reads
        payload = os.urandom(2000 * 50)
        for i in range(50):
            client.write(payload[i * 2000:(i + 1) * 2000])
        client_sock.sendall(outgoing.read())
        runner.start()
        if pause_first:
            assert protocol.paused.wait(T)
            time.sleep(0.2)
            assert len(protocol.got) == 1000   # paused: nothing more delivered
            runner.call(protocol.transport.resume_reading)
        wait_for(lambda: len(protocol.got) == len(payload), what="all records delivered")
        assert bytes(protocol.got) == payload
        # FIN without close_notify: the end of the stream. (Read the session tickets
        # first: closing with unread bytes would send a reset instead.)
        client_sock.settimeout(0.2)
        try:
            while client_sock.recv(65536):
                pass
        except socket.timeout:
            pass
        client_sock.shutdown(socket.SHUT_WR)
        assert protocol.eof.wait(T)
        runner.call(protocol.transport.close)
        assert protocol.lost.wait(T)
    finally:
        runner.stop()
        runner.loop.close()
        client_sock.close()


def test_records_arriving_one_by_one_are_read_without_a_failing_read():
    """A record alone in its packet is delivered with one read: the TLS layer does not
    ask OpenSSL again when it holds nothing more (each SSLWantReadError raised costs
    ~1 us, two per small WebSocket message before)."""
    calls = {"want_read": 0}

    class CountingSSLObject(ssl.SSLObject):
        def read(self, len=1024, buffer=None):
            try:
                return super().read(len, buffer)
            except ssl.SSLWantReadError:
                calls["want_read"] += 1
                raise

    server_sock, client_sock = socket.socketpair()
    client_sock.settimeout(T)
    runner = _LoopThread()
    protocol = _Recorder()
    context = create_server_context(SERVER_CERT, SERVER_KEY)
    context.sslobject_class = CountingSSLObject
    try:
        server_sock.setblocking(False)
        protocol.transport = TLSTransport(runner.loop, server_sock, protocol, context)
        runner.start()
        client, outgoing = _bio_client_over(client_sock)
        client.write(b"first")
        client_sock.sendall(outgoing.read())
        wait_for(lambda: len(protocol.got) == 5, what="the first record delivered")
        calls["want_read"] = 0   # the handshake's own are not counted
        for i in range(20):
            client.write(b"%02d" % i + b"x" * 62)
            client_sock.sendall(outgoing.read())
            wait_for(lambda: len(protocol.got) == 5 + 64 * (i + 1), what="record delivered")
        assert calls["want_read"] == 0
        runner.call(protocol.transport.abort)
        assert protocol.lost.wait(T)
    finally:
        runner.stop()
        runner.loop.close()
        client_sock.close()


def test_a_big_write_is_encrypted_as_the_socket_takes_it():
    """4 MiB written to a peer that does not read: get_write_buffer_size counts all of
    it, but only about one piece of ciphertext is made ahead of the socket (before, a
    fresh 4 MiB of it, which malloc took from the kernel for each big message). Once
    the peer reads, everything arrives in order, then close_notify (close() was
    called meanwhile)."""
    import tracemalloc
    server_sock, client_sock = socket.socketpair()
    client_sock.settimeout(T)
    runner = _LoopThread()
    protocol = _Recorder()
    context = create_server_context(SERVER_CERT, SERVER_KEY)
    big = os.urandom(4 * 1024 * 1024)
    try:
        server_sock.setblocking(False)
        transport = protocol.transport = TLSTransport(runner.loop, server_sock, protocol,
                                                      context)
        runner.start()
        client, incoming, outgoing = _bio_client_over(client_sock, with_incoming=True)
        client.write(b"hello")
        client_sock.sendall(outgoing.read())
        wait_for(lambda: len(protocol.got) == 5, what="handshake done on the server")
        runner.stop()           # the loop's thread is idle: write from this one
        tracemalloc.start()
        try:
            transport.writelines([b"head", big])
            transport.write(b"tail")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert transport.get_write_buffer_size() > 3 * 1024 * 1024
        assert peak < 1024 * 1024, "%d bytes allocated to encrypt ahead" % peak
        transport.close()
        runner.start()
        got = bytearray()
        while True:
            try:
                data = client.read(1 << 20)
                if not data:
                    break       # close_notify, after all the data
                got += data
                continue
            except ssl.SSLWantReadError:
                pass
            data = client_sock.recv(1 << 20)
            assert data, "connection closed without close_notify"
            incoming.write(data)
        assert bytes(got) == b"head" + big + b"tail"
        assert protocol.lost.wait(T)
    finally:
        runner.stop()
        runner.loop.close()
        client_sock.close()


def test_write_drained_comes_once_the_last_piece_is_on_the_wire():
    """A big write waits in pieces for the socket; the protocol's write_drained is
    called once all of it is sent (the pieces in between are the TLS layer's own)."""
    class Draining(_Recorder):
        def __init__(self):
            super().__init__()
            self.drained = threading.Event()

        def write_drained(self):
            self.drained.set()

    server_sock, client_sock = socket.socketpair()
    client_sock.settimeout(T)
    runner = _LoopThread()
    protocol = Draining()
    big = os.urandom(2 * 1024 * 1024)
    try:
        server_sock.setblocking(False)
        transport = protocol.transport = TLSTransport(
            runner.loop, server_sock, protocol, create_server_context(SERVER_CERT, SERVER_KEY))
        runner.start()
        client, incoming, outgoing = _bio_client_over(client_sock, with_incoming=True)
        client.write(b"hello")
        client_sock.sendall(outgoing.read())
        wait_for(lambda: len(protocol.got) == 5, what="handshake done on the server")
        protocol.drained.clear()
        runner.call(transport.write, big)
        time.sleep(0.2)
        assert not protocol.drained.is_set()   # the peer has not read yet
        assert transport.get_write_buffer_size() > 1024 * 1024
        got = bytearray()
        while len(got) < len(big):
            try:
                got += client.read(1 << 20)
                continue
            except ssl.SSLWantReadError:
                pass
            incoming.write(client_sock.recv(1 << 20))
        assert bytes(got) == big
        assert protocol.drained.wait(T)
        assert transport.get_write_buffer_size() == 0
        runner.call(transport.abort)
        assert protocol.lost.wait(T)
    finally:
        runner.stop()
        runner.loop.close()
        client_sock.close()


# -- HTTPS -------------------------------------------------------------------------------
def test_https_get_post_keep_alive_with_http_client():
    server = tls_server()
    server.add_handler(None, info_handler)
    with running(server) as port:
        assert https_get(port, "/hello") == (200, "https /hello 0 -")
        conn = http.client.HTTPSConnection("localhost", port, context=client_context(), timeout=T)
        for i in range(5):   # one connection, one handshake, five requests
            body = os.urandom(100000 * i)
            conn.request("POST", "/p%d" % i, body=body)
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"https /p%d %d -" % (i, len(body)))
        conn.close()


def test_https_rejects_a_client_that_does_not_trust_the_server():
    server = tls_server()
    server.add_handler(None, info_handler)
    with running(server) as port:
        with pytest.raises(ssl.SSLCertVerificationError):
            tls_connect(port, ssl.create_default_context())   # system CAs only


def test_large_streamed_response_and_back_pressure_counts_ciphertext():
    """get_write_buffer_size counts what is not on the wire: a client that does not read
    leaves bytes queued; once it reads, everything arrives intact."""
    server = tls_server()
    payload = os.urandom(8 * 1024 * 1024)
    seen = {}

    def big(server_, msg, path, query, user_data):
        msg.set_status(200)
        msg.set_response("application/octet-stream", payload)

    def finished(server_, msg):
        conn = next(iter(server._http), None)
        seen["buffered"] = conn.transport.get_write_buffer_size() if conn else -1

    server.add_handler(None, big)
    server.connect("request-finished", finished)
    with running(server) as port:
        sock = tls_connect(port)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        wait_for(lambda: "buffered" in seen, what="response written")
        assert seen["buffered"] > 1024 * 1024   # most of 8 MiB could not be sent yet
        data = recv_all(sock)
        sock.close()
    assert data.endswith(payload)


def test_pipelined_requests_left_in_the_tls_layer_are_read_after_a_pause():
    """The first request is answered later (from a timer); the requests behind it are
    already decrypted or still in the TLS layer, and the client sends nothing more:
    they must be served without waiting for another packet."""
    server = tls_server()

    def handler(server_, msg, path, query, user_data):
        if path == "/slow":
            msg.pause()
            server_.call_later(0.2, lambda: (msg.set_status(200),
                                             msg.set_response("text/plain", "slow"),
                                             msg.unpause()))
            return
        msg.set_status(200)
        msg.set_response("text/plain", path)

    server.add_handler(None, handler)
    count = 400   # ~1 KiB each: 400 KiB, more than one read of the TLS layer
    pad = "x" * 1000
    requests = [b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"]
    requests += [("GET /r%d HTTP/1.1\r\nHost: x\r\nX-Pad: %s\r\n%s\r\n"
                  % (i, pad, "Connection: close\r\n" if i == count - 1 else "")).encode()
                 for i in range(count)]
    with running(server) as port:
        sock = tls_connect(port)
        # One thread only: an SSL object must not be read and written from two threads at
        # once (OpenSSL does not allow it; it made this test flaky). The ~60 KB of answers
        # fit in the socket buffers, so sending everything first cannot deadlock.
        sock.settimeout(T)
        sock.sendall(b"".join(requests))
        data = recv_all(sock, timeout=T)
        sock.close()
    assert data.count(b"HTTP/1.1 200 OK") == count + 1
    assert data.index(b"slow") < data.index(b"/r0") < data.index(b"/r%d" % (count - 1))


def test_client_closing_without_close_notify_is_a_normal_end(caplog):
    server = tls_server()
    server.add_handler(None, info_handler)
    with caplog.at_level(logging.DEBUG, "minisoup"), running(server) as port:
        for _ in range(3):
            sock = tls_connect(port)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.settimeout(T)
            assert b"https / 0 -" in sock.recv(65536)
            raw = sock.detach()      # drop TLS without close_notify, then FIN
            socket.socket(fileno=raw).close()
        wait_for(lambda: not server._http, what="connections closed")
    assert no_tracebacks(caplog) == []


# -- handshakes that fail or never finish ---------------------------------------------------
@pytest.mark.parametrize("hello", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",                   # plain HTTP on the TLS port
    b"\x00garbage\xff" * 100,                                 # garbage
], ids=["plain-http", "garbage"])
def test_not_tls_on_the_tls_port_is_closed_quietly(caplog, hello):
    server = tls_server()
    server.add_handler(None, info_handler)
    with caplog.at_level(logging.DEBUG, "minisoup"), running(server) as port:
        sock = socket.create_connection(("127.0.0.1", port), timeout=T)
        sock.sendall(hello)
        data = recv_all(sock)
        sock.close()
        assert b"HTTP/1.1" not in data
        wait_for(lambda: not server._http, what="connection closed")
        assert https_get(port, "/after") == (200, "https /after 0 -")   # still serving
    assert no_tracebacks(caplog) == []
    tls_lines = [r for r in caplog.records if r.name == "minisoup"]
    assert len(tls_lines) <= 1, [r.getMessage() for r in tls_lines]


def test_tls10_client_hello_is_refused_quietly(caplog):
    server = tls_server()
    server.add_handler(None, info_handler)
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1
        old.set_ciphers("DEFAULT:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot speak TLS 1.0")
    with caplog.at_level(logging.DEBUG, "minisoup"), running(server) as port:
        with pytest.raises((ssl.SSLError, OSError)):
            tls_connect(port, old)
        wait_for(lambda: not server._http, what="connection closed")
    assert no_tracebacks(caplog) == []
    assert len([r for r in caplog.records if r.name == "minisoup"]) <= 1


def test_silent_and_trickled_handshakes_are_cut_at_request_timeout(caplog):
    """The handshake shares the HTTP header deadline, which starts at accept: a client
    that sends nothing, or its ClientHello a byte every 50 ms, is cut at
    request_timeout, while other clients are served at once."""
    server = tls_server(request_timeout=0.6)
    server.add_handler(None, info_handler)
    hello = _client_hello()
    cut = {}

    def wait_cut(name, sock, start):
        sock.settimeout(T)
        try:
            sock.recv(100)   # b"" (FIN) or a reset
        except OSError:
            pass
        cut[name] = time.monotonic() - start

    def trickle(sock):
        for i in range(len(hello)):
            if "trickle" in cut:
                return
            try:
                sock.send(hello[i:i + 1])
            except OSError:
                return
            time.sleep(0.05)

    with caplog.at_level(logging.DEBUG, "minisoup"), running(server) as port:
        start = time.monotonic()
        silent = socket.create_connection(("127.0.0.1", port), timeout=T)
        slow = socket.create_connection(("127.0.0.1", port), timeout=T)
        threads = [threading.Thread(target=wait_cut, args=("silent", silent, start)),
                   threading.Thread(target=wait_cut, args=("trickle", slow, start)),
                   threading.Thread(target=trickle, args=(slow,))]
        for thread in threads:
            thread.start()
        for i in range(3):   # meanwhile, other clients are served at once
            assert https_get(port, "/busy%d" % i) == (200, "https /busy%d 0 -" % i)
        assert time.monotonic() - start < 0.5
        for thread in threads:
            thread.join(T)
        silent.close()
        slow.close()
        wait_for(lambda: not server._http, what="connections cut")
    assert 0.55 < cut["silent"] < 2.0, cut
    assert 0.55 < cut["trickle"] < 2.0, cut
    assert no_tracebacks(caplog) == []


def _client_hello():
    """The first bytes a real TLS client sends."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


# -- client certificates ---------------------------------------------------------------------
def _refused(port, context):
    """True if the server refuses this client: at the handshake (TLS 1.2) or with an
    alert/EOF instead of the response (TLS 1.3, where the client finishes first)."""
    try:
        sock = tls_connect(port, context)
    except (ssl.SSLError, OSError):
        return True
    try:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return recv_all(sock) == b""
    except (ssl.SSLError, OSError):
        return True
    finally:
        sock.close()


def test_client_certificate_required(caplog):
    server = tls_server(TlsAuthMode.REQUIRED)
    assert server.get_tls_auth_mode() == TlsAuthMode.REQUIRED
    assert server.get_tls_database() == CA
    server.add_handler(None, info_handler)
    with caplog.at_level(logging.DEBUG, "minisoup"), running(server) as port:
        assert https_get(port, "/m", client_context("client")) == (200, "https /m 0 test client")
        assert _refused(port, client_context())                   # no certificate
        assert _refused(port, client_context("other-client"))     # signed by another CA
        twelve = client_context("other-client")
        twelve.maximum_version = ssl.TLSVersion.TLSv1_2
        assert _refused(port, twelve)
        wait_for(lambda: not server._http, what="connections closed")
    assert no_tracebacks(caplog) == []
    assert any("TLS handshake" in r.getMessage() and r.levelno == logging.INFO
               for r in caplog.records)


def test_client_certificate_requested():
    server = tls_server(TlsAuthMode.REQUESTED)
    server.add_handler(None, info_handler)
    with running(server) as port:
        assert https_get(port, "/o", client_context()) == (200, "https /o 0 -")
        assert https_get(port, "/o", client_context("client")) == (200, "https /o 0 test client")
        assert _refused(port, client_context("other-client"))


def test_client_certificate_settings_in_any_order():
    server = minisoup.Server()
    server.set_tls_auth_mode(TlsAuthMode.REQUIRED)
    server.set_tls_database(CA)
    server.set_tls_certificate(SERVER_CERT, SERVER_KEY)
    assert server.get_tls_certificate().verify_mode == ssl.CERT_REQUIRED
    server.set_tls_auth_mode(TlsAuthMode.NONE)
    assert server.get_tls_certificate().verify_mode == ssl.CERT_NONE
    server.disconnect()


# -- wss:// ------------------------------------------------------------------------------------
def echo_server(**limits):
    server = tls_server(**limits)
    seen = {}

    def on_open(server_, msg, path, conn, user_data):
        seen["uri"] = conn.get_uri()
        seen["msg_scheme"] = msg.get_uri().scheme
        conn.set_max_incoming_payload_size(0)
        conn.set_max_total_message_size(0)
        conn.connect("message", lambda c, kind, data: c.send_message(kind, data))
        conn.connect("closed", lambda c: seen.setdefault("closed", c.get_close_code()))

    server.add_websocket_handler("/echo", None, None, on_open)
    return server, seen


@pytest.mark.parametrize("deflate", [False, True], ids=["plain", "permessage-deflate"])
def test_wss_echo_with_minisoup_client(deflate):
    server, seen = echo_server()
    extensions = [minisoup.WebsocketExtensionDeflate] if deflate else []
    with running(server) as port:
        client = minisoup.websocket_connect("wss://localhost:%d/echo?x=1" % port, timeout=T,
                                            ssl_context=client_context(), extensions=extensions)
        with client:
            assert bool(client.get_extensions()) == deflate
            client.send_text("héllo")
            assert client.recv() == (WebsocketDataType.TEXT, "héllo")
            client.send_binary(b"\x00\xff" * 10)
            assert client.recv() == (WebsocketDataType.BINARY, b"\x00\xff" * 10)
            big = os.urandom(1024 * 1024)
            client.send_binary(big)
            assert client.recv() == (WebsocketDataType.BINARY, big)
            text = "abc" * 400000
            client.send_text(text)
            assert client.recv() == (WebsocketDataType.TEXT, text)
            for i in range(200):
                client.send_text("m%d" % i)
            assert [client.recv()[1] for _ in range(200)] == ["m%d" % i for i in range(200)]
            client.close()
            assert client.get_close_code() == 1000
        wait_for(lambda: "closed" in seen, what="server close")
    assert seen["uri"].scheme == "wss" and seen["uri"].path == "/echo"
    assert seen["uri"].query == "x=1" and seen["msg_scheme"] == "https"


def test_identical_wss_upgrades_share_a_head_and_each_is_its_own_wss_connection(monkeypatch):
    # The shared upgrade head (http.UpgradeHeads) over TLS: checked once, each 101 with its
    # own accept, each connection a wss:// one that echoes.
    calls = []
    real = minisoup.server.server_handshake
    monkeypatch.setattr(minisoup.server, "server_handshake",
                        lambda *args: calls.append(1) or real(*args))
    server, seen = echo_server()
    with running(server) as port:
        for i in range(3):
            key = base64.b64encode(os.urandom(16)).decode("ascii")
            sock = tls_connect(port)
            sock.sendall(handshake_request("/echo?x=1", key=key))
            status, headers, rest = read_response_head(sock, T)
            assert status == 101 and headers["sec-websocket-accept"] == compute_accept(key)
            raw = RawWebSocket.adopt(sock, rest, timeout=T)
            raw.send_frame(TEXT, b"m%d" % i)
            assert raw.read_message() == (TEXT, b"m%d" % i)
            sock.close()
            assert seen["uri"].scheme == "wss" and seen["uri"].query == "x=1"
            seen.clear()
    assert len(calls) == 1


def test_wss_with_a_raw_ssl_socket_burst_and_lingering_close():
    server, seen = echo_server()
    with running(server) as port:
        sock = tls_connect(port)
        sock.sendall(handshake_request("/echo"))
        status, _headers, rest = read_response_head(sock, T)
        assert status == 101
        raw = RawWebSocket.adopt(sock, rest, timeout=T)
        # Many frames in one TLS write: answered (corked) without waiting for more.
        frames = [("f%d" % i).encode() for i in range(300)]
        from minisoup.frames import build_frame
        from wsraw import MASK_KEY
        sock.sendall(b"".join(build_frame(TEXT, f, True, 0, MASK_KEY) for f in frames))
        assert [raw.read_message()[1] for _ in frames] == frames
        raw.send_frame(BINARY, b"x" * 70000)
        assert raw.read_message() == (BINARY, b"x" * 70000)
        # A protocol error: the server sends 1002, close_notify and FIN (a lingering close).
        raw.send_frame(TEXT, b"unmasked", mask=False)
        raw.expect_close(1002)
        assert recv_all(sock) == b""
        sock.close()
        wait_for(lambda: "closed" in seen, what="server close")
    assert seen["closed"] == 1002


def test_wss_client_vanishing_without_close_notify_is_1006(caplog):
    server, seen = echo_server()
    with caplog.at_level(logging.DEBUG, "minisoup"), running(server) as port:
        client = minisoup.websocket_connect("wss://127.0.0.1:%d/echo" % port, timeout=T,
                                            ssl_context=client_context())
        client.send_text("x")
        assert client.recv()[1] == "x"
        client.abort()
        wait_for(lambda: "closed" in seen, what="server close")
    assert seen["closed"] == 1006
    assert no_tracebacks(caplog) == []


def test_wss_server_close_reaches_the_minisoup_client():
    server = tls_server()
    server.add_websocket_handler("/bye", None, None,
                                 lambda s, m, p, conn, u: conn.close(4000, "bye"))
    with running(server) as port:
        client = minisoup.websocket_connect("wss://127.0.0.1:%d/bye" % port, timeout=T,
                                            ssl_context=client_context())
        assert client.wait_closed() == 4000
        assert client.get_state() == WebsocketState.CLOSED


# -- pre-fork workers ---------------------------------------------------------------------------
def test_two_workers_serve_https_and_wss():
    args = ["--certfile", SERVER_CERT, "--keyfile", SERVER_KEY]
    with MinisoupProcess("prefork_apps:whoami", workers=2, args=args) as proc:
        proc.start(workers_ready=2)
        assert proc.stdout[0].startswith("https://127.0.0.1:")
        pids = set()
        clients = []
        deadline = time.monotonic() + 10
        while len(pids) < 2 and time.monotonic() < deadline:
            # Held open, so that the balancer sends the next one to the other worker.
            client = minisoup.websocket_connect("wss://127.0.0.1:%d/whoami" % proc.port,
                                                timeout=T, ssl_context=client_context())
            clients.append(client)
            pids.add(client.recv()[1].split()[1])
        assert len(pids) == 2, proc.log_text()
        status, body = https_get(proc.port, "/worker")
        assert status == 200 and "worker" in body
        for client in clients:
            client.close()
        assert not [line for line in proc.log if "Traceback" in line]


def _served_certificate(port):
    """The DER certificate the server presents on a new connection."""
    sock = tls_connect(port)
    try:
        return sock.getpeercert(binary_form=True)
    finally:
        sock.close()


def _pem_to_der(path):
    with open(path) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


def test_sighup_reloads_the_certificate_files_and_keeps_the_old_if_broken(tmp_path):
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    certfile.write_bytes(open(SERVER_CERT, "rb").read())
    keyfile.write_bytes(open(SERVER_KEY, "rb").read())
    args = ["--certfile", str(certfile), "--keyfile", str(keyfile)]
    with MinisoupProcess("prefork_apps:whoami", workers=2, args=args) as proc:
        proc.start(workers_ready=2)
        assert _served_certificate(proc.port) == _pem_to_der(SERVER_CERT)
        # Renewed files, then SIGHUP: the workers are replaced and serve the new one.
        certfile.write_bytes(open(cert("server2.pem"), "rb").read())
        keyfile.write_bytes(open(cert("server2.key"), "rb").read())
        proc.send(signal.SIGHUP)
        proc.wait_log(r"TLS: certificate .* reloaded")
        proc.wait_log(r"worker \d+ ready", count=4, timeout=15)
        wait_for(lambda: proc.count_log(r"replaced by pid") >= 2, timeout=15,
                 what="both workers replaced")
        # A retired worker accepts until its SIGTERM is handled: wait until both are gone.
        wait_for(lambda: proc.count_log(r"master: worker \d+ \(pid \d+\) exited") >= 2,
                 timeout=15, what="both old workers gone")
        assert _served_certificate(proc.port) == _pem_to_der(cert("server2.pem"))
        assert https_get(proc.port, "/worker")[0] == 200
        # Broken files: an error line, and the workers keep serving the certificate in use.
        keyfile.write_bytes(b"not a key")
        proc.send(signal.SIGHUP)
        proc.wait_log(r"ERROR minisoup: TLS: cannot reload the certificate")
        proc.wait_log(r"worker \d+ ready", count=6, timeout=15)
        wait_for(lambda: proc.count_log(r"replaced by pid") >= 4, timeout=15,
                 what="both workers replaced again")
        wait_for(lambda: proc.count_log(r"master: worker \d+ \(pid \d+\) exited") >= 4,
                 timeout=15, what="the replaced workers gone again")
        assert _served_certificate(proc.port) == _pem_to_der(cert("server2.pem"))
        assert not [line for line in proc.log if "Traceback" in line]


@pytest.mark.parametrize("args, status, message", [
    (["--client-cert", "required"], 2, "need --certfile"),
    (["--certfile", SERVER_CERT, "--keyfile", SERVER_KEY, "--client-cert", "optional"], 2,
     "needs --ca-certs"),
    (["--certfile", os.path.join(CERTS, "missing.pem")], 1, "cannot load the TLS certificate"),
    (["--certfile", SERVER_CERT, "--keyfile", cert("client.key")], 1,
     "cannot load the TLS certificate"),
], ids=["no-certfile", "no-ca-certs", "missing-file", "wrong-key"])
def test_cli_tls_option_errors(args, status, message):
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-m", "minisoup", "--bind", "127.0.0.1:0",
                             "--workers", "0"] + args, capture_output=True, timeout=30,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == status
    assert message in result.stderr.decode()
    assert "Traceback" not in result.stderr.decode()


def test_cli_client_certificates_required():
    args = ["--certfile", SERVER_CERT, "--keyfile", SERVER_KEY, "--ca-certs", CA]
    with MinisoupProcess("prefork_apps:whoami", workers=1, args=args) as proc:
        proc.start(workers_ready=1)
        assert https_get(proc.port, "/worker", client_context("client"))[0] == 200
        assert _refused(proc.port, client_context())


def test_wss_client_failing_the_connection_keeps_reading_through_tls():
    """The client fails a connection (invalid UTF-8 from the server: 1007) with a
    lingering close over TLS; both ends agree on the code."""
    server = tls_server()
    seen = {}

    def bad_text(server_, msg, path, conn, user_data):
        conn.connect("closed", lambda c: seen.setdefault("code", c.get_close_code()))
        from minisoup.frames import build_frame
        conn.transport.write(build_frame(TEXT, b"\xff\xfe not utf-8", True, 0, None))

    server.add_websocket_handler("/bad", None, None, bad_text)
    with running(server) as port:
        client = minisoup.websocket_connect("wss://127.0.0.1:%d/bad" % port, timeout=T,
                                            ssl_context=client_context())
        assert client.wait_closed() == 1007
        wait_for(lambda: "code" in seen, what="server close")
    assert seen["code"] == 1007


# -- other clients over wss:// ------------------------------------------------------------------
# Node's WebSocket (undici, over Node's own TLS: OpenSSL with Node's CA store, which
# NODE_EXTRA_CA_CERTS extends with the test CA). Sends text, binary and 1 MiB, checks
# every echo, then closes with a code and reason the server must see.
NODE_WSS_SCRIPT = r"""
const url = process.argv[process.argv.length - 1];
const ws = new WebSocket(url);
ws.binaryType = "arraybuffer";
const big = new Uint8Array(1024 * 1024).map((_, i) => (i * 7919) & 255);
const got = [];
const timer = setTimeout(() => { console.log(JSON.stringify({error: "timeout", got})); process.exit(2); }, 8000);
const same = (a, b) => a.length === b.length && a.every((v, i) => v === b[i]);
ws.onopen = () => ws.send("h\u00e9llo over TLS");
ws.onmessage = (ev) => {
  if (typeof ev.data === "string") {
    got.push({text: ev.data});
    ws.send(new Uint8Array([0, 1, 2, 253, 254, 255]));
  } else if (ev.data.byteLength < 100) {
    got.push({binary: Array.from(new Uint8Array(ev.data))});
    ws.send(big);
  } else {
    got.push({big: same(new Uint8Array(ev.data), big)});
    ws.close(4001, "node wss done");
  }
};
let opened = false;
ws.addEventListener("open", () => { opened = true; });
const finish = (result) => { clearTimeout(timer); console.log(JSON.stringify(result)); process.exit(0); };
// A connection that never opened: Node 20's WebSocket may report the error and no close.
ws.onerror = (ev) => {
  got.push({error: String(ev.message || (ev.error && ev.error.message) || ev.type)});
  if (!opened) finish({got, opened});
};
ws.onclose = (ev) => finish({got, opened, code: ev.code, reason: ev.reason, wasClean: ev.wasClean});
"""


def _wss_recording_server():
    """A wss:// echo server at /echo recording each connection's close code and reason."""
    server = tls_server()
    closed = []

    def on_open(server_, msg, path, conn, user_data):
        conn.set_max_incoming_payload_size(0)
        conn.set_max_total_message_size(0)
        conn.connect("message", lambda c, kind, data: c.send_message(kind, data))
        conn.connect("closed", lambda c: closed.append((c.get_close_code(), c.get_close_data())))

    server.add_websocket_handler("/echo", None, None, on_open)
    return server, closed


def _run_node(command, port, env_extra):
    import json
    import subprocess
    env = dict(os.environ, **env_extra)
    env.pop("NODE_TLS_REJECT_UNAUTHORIZED", None)   # verification must stay on
    proc = subprocess.run(command + ["-e", NODE_WSS_SCRIPT, "--",
                                     "wss://127.0.0.1:%d/echo" % port],
                          capture_output=True, text=True, timeout=20, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _node_or_skip():
    import shutil
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    from test_server_ws import _node_command
    command = _node_command()
    if command is None:
        pytest.skip("this node has no WebSocket client (Node 22+, or 20.10+ with "
                    "--experimental-websocket)")
    return command


def test_node_websocket_client_over_wss():
    command = _node_or_skip()
    server, closed = _wss_recording_server()
    with running(server) as port:
        result = _run_node(command, port, {"NODE_EXTRA_CA_CERTS": CA})
        wait_for(lambda: closed, what="server close")
    assert result["got"] == [{"text": "h\u00e9llo over TLS"},
                             {"binary": [0, 1, 2, 253, 254, 255]}, {"big": True}]
    assert (result["code"], result["wasClean"]) == (4001, True)
    assert closed == [(4001, "node wss done")]


def test_node_websocket_client_refuses_the_server_without_the_test_ca(caplog):
    """The check above really verifies the certificate: without the CA, Node refuses."""
    command = _node_or_skip()
    server, closed = _wss_recording_server()
    with caplog.at_level(logging.DEBUG, "minisoup"), running(server) as port:
        result = _run_node(command, port, {"NODE_EXTRA_CA_CERTS": os.devnull})
    assert not result["opened"] and len(result["got"]) == 1 and "error" in result["got"][0]
    assert closed == []
    assert no_tracebacks(caplog) == []


CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_PAGE = """<!doctype html><title>wss</title><script>
const ws = new WebSocket("wss://127.0.0.1:" + location.port + "/echo");
ws.binaryType = "arraybuffer";
ws.onopen = () => ws.send("h\\u00e9llo from chromium");
ws.onmessage = (ev) => {
  if (typeof ev.data === "string") ws.send(new Uint8Array([0, 1, 254, 255]));
  else ws.close(4002, "chromium done " + new Uint8Array(ev.data).join(","));
};
</script>"""


def test_headless_chromium_over_wss():
    """Only where a Chromium is installed (Debian: apt-get install chromium; CI does not
    install one, so there it is skipped).
    The page is served by the same https:// listener; the certificate is accepted with
    --ignore-certificate-errors (Chromium has no per-run CA flag)."""
    import shutil
    import subprocess
    import tempfile
    browser = next((shutil.which(n) for n in CHROMIUM_NAMES if shutil.which(n)), None)
    if browser is None:
        pytest.skip("no Chromium binary (%s) is installed; browsers are not installed "
                    "for the tests" % ", ".join(CHROMIUM_NAMES))
    server, closed = _wss_recording_server()

    def page(server_, msg, path, query, user_data):
        msg.set_status(200)
        msg.set_response("text/html", CHROMIUM_PAGE)

    server.add_handler("/", page)
    profile = tempfile.mkdtemp()
    try:
        with running(server) as port:
            proc = subprocess.Popen([browser, "--headless", "--no-sandbox", "--disable-gpu",
                                     "--ignore-certificate-errors", "--user-data-dir=" + profile,
                                     "--remote-debugging-port=0",
                                     "https://127.0.0.1:%d/" % port],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
            try:
                wait_for(lambda: closed, timeout=30, what="Chromium's close")
            finally:
                # Its helper processes too: they write to the profile until they die.
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(T)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert closed == [(4002, "chromium done 0,1,254,255")]


# -- the benchmark's load generator over TLS (tools/loadgen.py --tls) -------------------------------
@pytest.mark.parametrize("mode, extra", [
    ("ws", ["--size", "64", "--conns", "4"]),
    # 1 MiB over non-blocking SSLSockets: with a small send buffer SSL_write stops
    # part-way (SSLWantWriteError) and is retried with the same buffer; the echo comes
    # back in many records.
    ("ws", ["--size", str(1024 * 1024), "--conns", "2", "--sndbuf", "8192"]),
    ("handshake", []),
    ("idle", ["--conns", "20"]),
], ids=["echo-64", "echo-1MiB", "handshake", "idle"])
def test_bench_load_generator_over_wss(mode, extra):
    import json
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    server, closed = _wss_recording_server()
    with running(server) as port:
        proc = subprocess.Popen([sys.executable, os.path.join(root, "tools", "loadgen.py"), mode,
                                 "--tls", "--port", str(port), "--path", "/echo"] + extra,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "READY", proc.stderr.read()
            now = time.monotonic()
            out, err = proc.communicate("GO %r %r\n" % (now + 0.1, now + 0.6), timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(T)
    assert out.strip(), err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["errors"] == 0 and result["count"] > 0, err
    assert result["tls"].startswith("TLSv1.3 "), result
    if mode == "idle":
        assert result["count"] == 20
    elif mode == "ws":
        assert result["conns"] == int(extra[extra.index("--conns") + 1])
        # Every connection kept going: at least a few answers each (a stalled send would
        # leave its connection silent, not failed).
        assert result["count"] >= 2 * result["conns"], result
