"""End-to-end tests of the server's WebSocket handlers, over real sockets.

Through the public API only: ``Server.add_websocket_handler`` and friends on the
server side; ``minisoup.websocket_connect``, hand-written HTTP requests and the raw
frame client of ``wsraw.py`` (and Node's WebSocket, when present) on the other.
Every server runs in a thread on port 0 (``conftest.running``) and is always stopped.
"""

import base64
import gc
import hashlib
import json
import logging
import os
import random
import shutil
import socket
import subprocess
import threading
import time
import weakref
import zlib
from urllib.parse import SplitResult

import pytest

import minisoup
from minisoup import WebsocketConnectionType, WebsocketDataType, WebsocketState
from conftest import recv_until_closed, running
import wsraw
from minisoup.frames import build_frame
from wsraw import (BINARY, CLOSE, PING, PONG, TEXT, RawWebSocket, handshake_request, http_exchange,
                   http_exchange_closing, read_response_head)

T = 3.0  # generous upper bound for anything that should take milliseconds


def url(port, path="/"):
    return "ws://127.0.0.1:%d%s" % (port, path)


def connect(port, path="/", **kwargs):
    return minisoup.websocket_connect(url(port, path), timeout=T, **kwargs)


def on_loop(server, fn, *args):
    """Run ``fn(*args)`` on the server's loop thread and wait for it; returns its result."""
    done = threading.Event()
    box = {}

    def run():
        try:
            box["result"] = fn(*args)
        finally:
            done.set()
    server.call_soon(run)
    server._loop.wakeup()
    assert done.wait(T), "loop callback did not run"
    return box.get("result")


class Recorder:
    """A WebSocket handler that records its calls and what happens to each connection."""

    def __init__(self, name="ws", echo=True):
        self.name = name
        self.echo = echo
        self.calls = []          # (path, user_data)
        self.conns = []
        self.keys = []           # each request's Sec-WebSocket-Key
        self.closed = []         # connections, one entry per "closed" emission
        self.opened = threading.Event()
        self.closed_event = threading.Event()
        self.info = {}

    def __call__(self, server, msg, path, conn, user_data):
        self.calls.append((path, user_data))
        self.conns.append(conn)
        self.keys.append(msg.get_request_headers().get_one("Sec-WebSocket-Key"))
        self.info = {
            "state": conn.get_state(),
            "protocol": conn.get_protocol(),
            "origin": conn.get_origin(),
            "uri_path": conn.get_uri().path,
            "type": conn.get_connection_type(),
            "msg_path": msg.get_uri().path,
            "status": msg.get_status(),
        }
        if self.echo:
            conn.connect("message", self._echo)
        conn.connect("closed", self._closed)
        self.opened.set()

    def _echo(self, conn, kind, data):
        conn.send_message(kind, data)

    def _closed(self, conn):
        self.closed.append(conn)
        self.closed_event.set()

    def wait_closed(self):
        assert self.closed_event.wait(T), "server connection not closed"
        time.sleep(0.05)  # a second (wrong) emission would come right after
        return self.closed


def ws_server(handler=None, path="/", origin=None, protocols=None, **limits):
    server = minisoup.Server(**limits)
    handler = handler or Recorder()
    server.add_websocket_handler(path, origin, protocols, handler)
    return server, handler


# -- paths -----------------------------------------------------------------------------
def test_encoded_and_dotted_paths_route_as_libsoup():
    server = minisoup.Server()
    chat, other = Recorder("chat"), Recorder("other")
    server.add_websocket_handler("/ws/chat", None, None, chat)
    server.add_websocket_handler(None, None, None, other)
    with running(server) as port:
        for target in ("/ws/%63hat", "/ws/x/../chat/room%201", "/other/%2e%2e/ws/chat"):
            raw = RawWebSocket(port, target)
            raw.close()
        # The 101 is written before the callback runs: wait for the third call.
        deadline = time.monotonic() + T
        while len(chat.calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert [c[0] for c in chat.calls] == ["/ws/chat", "/ws/chat/room 1", "/ws/chat"]
        assert [conn.get_uri().path for conn in chat.conns] == [c[0] for c in chat.calls]
        assert not other.calls


def test_longest_prefix_wins():
    server = minisoup.Server()
    short, long_ = Recorder("ws"), Recorder("chat")
    server.add_websocket_handler("/ws", None, None, short, "short")
    server.add_websocket_handler("/ws/chat", None, None, long_, "long")
    with running(server) as port:
        for path, expected in [("/ws/chat/room1", long_), ("/ws/chat", long_),
                               ("/ws/other", short), ("/ws", short), ("/wsx", short)]:
            with connect(port, path) as client:
                client.send_text(path)
                assert client.recv() == (WebsocketDataType.TEXT, path)
            assert expected.calls[-1] == (path, "short" if expected is short else "long")
        assert len(long_.calls) == 2 and len(short.calls) == 3
        # No handler matches /other and there is no default: 404.
        status, _headers, _body = http_exchange(port, handshake_request("/other"))
        assert status == 404


@pytest.mark.parametrize("default_path", [None, "/"])
def test_default_handler(default_path):
    server, rec = ws_server(path=default_path)
    with running(server) as port:
        for path in ("/", "/anything/at/all", "/?q=1"):
            with connect(port, path) as client:
                client.send_text("hi")
                assert client.recv() == (WebsocketDataType.TEXT, "hi")
        assert [c[0] for c in rec.calls] == ["/", "/anything/at/all", "/"]


def test_none_and_slash_are_the_same_entry():
    destroyed = []
    server = minisoup.Server()
    first, second = Recorder("first"), Recorder("second")
    server.add_websocket_handler(None, None, None, first, "a", destroyed.append)
    server.add_websocket_handler("/", None, None, second, "b", destroyed.append)
    assert destroyed == ["a"]
    with running(server) as port:
        with connect(port, "/x"):
            pass
    assert not first.calls and second.calls == [("/x", "b")]


def test_plain_get_to_websocket_only_entry_gets_400_not_default():
    default_calls = []

    def default(server, msg, path, query, user_data):
        default_calls.append(path)
        msg.set_response("text/plain", "default")
        msg.set_status(200)

    server = minisoup.Server()
    server.add_handler(None, default)
    server.add_websocket_handler("/ws", None, None, Recorder())
    with running(server) as port:
        status, headers, body = http_exchange(
            port, b"GET /ws/page HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 400
        assert b"Upgrade" in body
        assert headers["connection"] == "close"
        status, _headers, body = http_exchange(port, b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (status, body) == (200, b"default")
    assert default_calls == ["/other"]


def test_early_handler_of_other_entry_does_not_run():
    early_calls = []

    def early(server, msg, path, query, user_data):
        early_calls.append(path)
        msg.set_status(403)

    server, rec = ws_server(path="/ws")
    server.add_early_handler(None, early)
    with running(server) as port:
        with connect(port, "/ws/x") as client:
            client.send_text("ok")
            assert client.recv()[1] == "ok"
    assert early_calls == [] and rec.calls


# -- order: early, normal, then the handshake ----------------------------------------------
def test_handshake_after_early_and_normal_handlers():
    order = []
    rec = Recorder()

    def early(server, msg, path, query, user_data):
        order.append("early")

    def normal(server, msg, path, query, user_data):
        order.append("normal")

    def ws(server, msg, path, conn, user_data):
        order.append("websocket")
        rec(server, msg, path, conn, user_data)

    server = minisoup.Server()
    server.add_early_handler("/ws", early)
    server.add_handler("/ws", normal)
    server.add_websocket_handler("/ws", None, None, ws)
    with running(server) as port:
        with connect(port, "/ws"):
            pass
    assert order == ["early", "normal", "websocket"]
    assert rec.info["status"] == 101


@pytest.mark.parametrize("status", [401, 403])
def test_normal_handler_setting_status_rejects_upgrade(status):
    def auth(server, msg, path, query, user_data):
        if msg.get_request_headers().get_one("Authorization") != "Bearer ok":
            msg.set_status(status)
            msg.set_response("text/plain", "no entry")

    server, rec = ws_server(path="/ws")
    server.add_handler("/ws", auth)
    with running(server) as port:
        with pytest.raises(minisoup.HandshakeError) as info:
            connect(port, "/ws")
        assert info.value.status == status
        status_, _headers, body = http_exchange(
            port, handshake_request("/ws"))
        assert (status_, body) == (status, b"no entry")
        status_, headers, _body = http_exchange(
            port, handshake_request("/ws", [("Authorization", "Bearer ok")]))
        assert status_ == 101
    assert len(rec.calls) == 1


def test_early_handler_status_prevents_handshake():
    normal_calls = []

    def early(server, msg, path, query, user_data):
        msg.set_status(403)

    def normal(server, msg, path, query, user_data):
        normal_calls.append(path)

    server, rec = ws_server(path="/ws")
    server.add_early_handler("/ws", early)
    server.add_handler("/ws", normal)
    with running(server) as port:
        status, headers, _body = http_exchange(port, handshake_request("/ws"))
        assert status == 403
        assert "sec-websocket-accept" not in headers
    assert not rec.calls and not normal_calls


def test_handler_that_forgets_nothing_else():
    # A normal handler that sets nothing lets the handshake answer; a missing
    # WebSocket handler would have been a 500 (SPEC 1, step 4).
    server = minisoup.Server()
    server.add_handler("/plain", lambda *a: None)
    with running(server) as port:
        status, _headers, _body = http_exchange(port, handshake_request("/plain"))
        assert status == 500


# -- origin ------------------------------------------------------------------------------------
def test_origin_exact_case_insensitive_match():
    server, rec = ws_server(origin="http://Example.com")
    with running(server) as port:
        with connect(port, origin="HTTP://EXAMPLE.COM") as client:
            client.send_text("x")
            assert client.recv()[1] == "x"
        assert rec.info["origin"] == "HTTP://EXAMPLE.COM"


@pytest.mark.parametrize("sent", ["http://example.com:80", "http://example.com/", "https://example.com",
                                  "http://evil.example.com", None])
def test_origin_mismatch_403(sent):
    server, rec = ws_server(origin="http://example.com")
    with running(server) as port:
        headers = [("Origin", sent)] if sent is not None else []
        status, response_headers, body, closed = http_exchange_closing(
            port, handshake_request("/", headers))
        assert status == 403 and closed
        assert response_headers["connection"] == "close"
        assert b"Origin" in body
        with pytest.raises(minisoup.HandshakeError) as info:
            connect(port, origin=sent)
        assert info.value.status == 403
    assert not rec.calls


@pytest.mark.parametrize("sent", [None, "http://anything.example", "null"])
def test_origin_none_accepts_any(sent):
    server, rec = ws_server(origin=None)
    with running(server) as port:
        with connect(port, origin=sent):
            pass
    assert rec.info["origin"] == sent


# -- subprotocols ---------------------------------------------------------------------------
def test_subprotocol_server_preference():
    server, rec = ws_server(protocols=["chat", "superchat"])
    with running(server) as port:
        with connect(port, protocols=["superchat", "chat"]) as client:
            assert client.get_protocol() == "chat"
        assert rec.info["protocol"] == "chat"
        with connect(port, protocols=["other", "superchat"]) as client:
            assert client.get_protocol() == "superchat"
        assert rec.info["protocol"] == "superchat"


def test_subprotocol_none_offered_is_accepted_without_protocol():
    server, rec = ws_server(protocols=["chat"])
    with running(server) as port:
        status, headers, _ = http_exchange(port, handshake_request("/"))
        assert status == 101 and "sec-websocket-protocol" not in headers
        with connect(port) as client:
            assert client.get_protocol() is None
    assert rec.info["protocol"] is None


def test_subprotocol_no_match_400():
    server, rec = ws_server(protocols=["chat", "superchat"])
    with running(server) as port:
        status, headers, body = http_exchange(
            port, handshake_request("/", [("Sec-WebSocket-Protocol", "mqtt, wamp")]))
        assert status == 400 and headers["connection"] == "close"
        assert b"subprotocol" in body
        with pytest.raises(minisoup.HandshakeError) as info:
            connect(port, protocols=["mqtt"])
        assert info.value.status == 400
    assert not rec.calls


def test_protocols_none_accepts_any_offer_and_chooses_none():
    server, rec = ws_server(protocols=None)
    with running(server) as port:
        status, headers, _ = http_exchange(
            port, handshake_request("/", [("Sec-WebSocket-Protocol", "mqtt")]))
        assert status == 101 and "sec-websocket-protocol" not in headers
    assert rec.info["protocol"] is None


# -- handshake checks (SPEC 2): status and a body naming the failed check ----------------------
BAD_HANDSHAKES = [
    # (description, request kwargs, status, word the body must contain)
    ("POST", dict(method="POST"), 400, "GET"),
    ("HTTP/1.0", dict(version="HTTP/1.0"), 400, "HTTP/1.1"),
    ("no Upgrade", dict(omit=("Upgrade",)), 400, "Upgrade"),
    ("Upgrade: h2c", dict(headers=[("Upgrade", "h2c")]), 400, "Upgrade"),
    ("no Connection", dict(omit=("Connection",)), 400, "Connection"),
    ("Connection: keep-alive", dict(headers=[("Connection", "keep-alive")]), 400, "Connection"),
    ("version 8", dict(headers=[("Sec-WebSocket-Version", "8")]), 400, "Version"),
    ("no version", dict(omit=("Sec-WebSocket-Version",)), 400, "Version"),
    ("no key", dict(omit=("Sec-WebSocket-Key",)), 400, "Key"),
    ("key of 15 bytes", dict(key="AAAAAAAAAAAAAAAAAAAA"), 400, "Key"),
    ("key of 17 bytes", dict(key="AAAAAAAAAAAAAAAAAAAAAAA="), 400, "Key"),
    ("key not base64", dict(key="!!!!!!!!!!!!!!!!!!!!!!=="), 400, "Key"),
    # RFC 6455 11.3.1 / 11.3.5: each appears once (the last key used to get a 101).
    ("two keys", dict(headers=[("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAA=="),
                               ("Sec-WebSocket-Key", "BBBBBBBBBBBBBBBBBBBBBB==")]), 400, "once"),
    ("two version fields", dict(headers=[("Sec-WebSocket-Version", "13"),
                                         ("Sec-WebSocket-Version", "13")]), 400, "once"),
]


@pytest.mark.parametrize("what,kwargs,status,word", BAD_HANDSHAKES,
                         ids=[b[0] for b in BAD_HANDSHAKES])
def test_failed_handshake_check(what, kwargs, status, word):
    server, rec = ws_server()
    with running(server) as port:
        request = handshake_request("/", **kwargs)
        if kwargs.get("method") == "POST":
            request = request.replace(b"\r\n\r\n", b"\r\nContent-Length: 0\r\n\r\n")
        got, headers, body, closed = http_exchange_closing(port, request)
        assert closed, "the server kept the connection open after a failed handshake"
        assert got == status, (what, got, body)
        assert word.lower() in body.decode().lower(), body
        assert headers["connection"] == "close"
        assert "sec-websocket-accept" not in headers
        if "version" in what:
            assert headers["sec-websocket-version"] == "13"
    assert not rec.calls


@pytest.mark.parametrize("headers", [
    [("Upgrade", "WebSocket"), ("Connection", "keep-alive, Upgrade")],
    [("Upgrade", "websocket"), ("Connection", "UPGRADE")],
    [("Upgrade", "h2c, WEBSOCKET"), ("Connection", "Upgrade, HTTP2-Settings")],
])
def test_handshake_tokens_any_case_in_lists(headers):
    server, rec = ws_server()
    with running(server) as port:
        status, response, _ = http_exchange(port, handshake_request("/", headers))
        assert status == 101
        assert response["upgrade"].lower() == "websocket"
        assert response["connection"].lower() == "upgrade"


def test_accept_key_rfc_example():
    server, rec = ws_server()
    with running(server) as port:
        status, headers, _ = http_exchange(
            port, handshake_request("/", key="dGhlIHNhbXBsZSBub25jZQ=="))
    assert status == 101
    assert headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


# -- remove_handler and destroy ---------------------------------------------------------------
def test_remove_handler_calls_destroy_and_unregisters():
    destroyed = []
    server = minisoup.Server()
    server.add_websocket_handler("/ws", None, None, Recorder(), "ws-data", destroyed.append)
    server.add_handler("/ws", lambda *a: None, "normal-data", destroyed.append)
    server.add_early_handler("/ws", lambda *a: None, "early-data", destroyed.append)
    with running(server) as port:
        with connect(port, "/ws"):
            pass
        on_loop(server, server.remove_handler, "/ws")
        assert sorted(destroyed) == ["early-data", "normal-data", "ws-data"]
        status, _headers, _ = http_exchange(port, handshake_request("/ws"))
        assert status == 404
    server.remove_handler("/ws")  # already gone: no error, no second destroy
    assert len(destroyed) == 3


def test_replacing_handler_calls_destroy_of_old_one():
    destroyed = []
    server = minisoup.Server()
    old, new = Recorder("old"), Recorder("new")
    server.add_websocket_handler("/ws", None, None, old, "old", destroyed.append)
    server.add_handler("/ws", lambda *a: None, "normal", destroyed.append)
    server.add_websocket_handler("/ws", None, None, new, "new", destroyed.append)
    assert destroyed == ["old"]  # the normal handler at the same path stays
    with running(server) as port:
        with connect(port, "/ws"):
            pass
    assert not old.calls and new.calls == [("/ws", "new")]


def test_server_disconnect_destroys_and_closes_with_1001():
    destroyed = []
    rec = Recorder()
    server = minisoup.Server()
    server.add_websocket_handler("/other", None, None, Recorder(), "other", destroyed.append)
    server.add_websocket_handler("/ws", None, None, rec, "ws", destroyed.append)
    with running(server) as port:
        client = connect(port, "/ws")
        assert rec.opened.wait(T)
        on_loop(server, server.disconnect)
        assert client.wait_closed(T) == 1001
        client.abort()
    assert sorted(destroyed) == ["other", "ws"]
    assert server.get_listeners() == []
    assert len(rec.wait_closed()) == 1


# -- the connection handed to the callback ------------------------------------------------------
def test_callback_gets_open_connection_with_properties():
    server, rec = ws_server(path="/ws", origin="http://o.example", protocols=["p1", "p2"])
    with running(server) as port:
        with connect(port, "/ws/room?x=1", origin="http://o.example", protocols=["p2"]):
            assert rec.opened.wait(T)
    info = rec.info
    assert info["state"] == WebsocketState.OPEN
    assert info["protocol"] == "p2"
    assert info["origin"] == "http://o.example"
    assert info["uri_path"] == "/ws/room" and info["msg_path"] == "/ws/room"
    assert info["type"] == WebsocketConnectionType.SERVER
    assert rec.calls == [("/ws/room", None)]
    uri = rec.conns[0].get_uri()
    assert isinstance(uri, SplitResult) and uri is rec.conns[0].get_uri()
    assert (uri.scheme, uri.path, uri.query) == ("ws", "/ws/room", "x=1")


def test_connections_to_one_url_share_their_uri_and_each_still_reports_its_own():
    # Idle memory (issue 15): the URI tuple and its host and path strings (~200 bytes)
    # were kept once per connection, though most connections to a server ask for the
    # same URL.
    conns = []
    server = minisoup.Server()
    server.add_websocket_handler("/ws", None, None,
                                 lambda server, msg, path, conn, user_data: conns.append(conn))
    paths = ["/ws", "/ws", "/ws?room=2", "/ws", "/ws/other"]
    with running(server) as port:
        for path in paths:
            with connect(port, path):
                pass
        deadline = time.monotonic() + T
        while len(conns) < len(paths) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(conns) == len(paths)
        held = [on_loop(server, lambda c=conn: c._uri) for conn in conns]
    # Each connection's URI, before anyone asked for it: equal ones are one object.
    assert held[0] is held[1]
    assert held[2] is not held[1] and held[3] is not held[1]  # a different URL came between
    assert held[3] == held[0]
    uris = [conn.get_uri() for conn in conns]
    assert [(u.scheme, u.netloc, u.path, u.query) for u in uris] == [
        ("ws", "127.0.0.1:%d" % port, path.split("?")[0], path.partition("?")[2])
        for path in paths]
    assert uris[0] is not uris[1]  # each connection's own SplitResult, made when asked


# -- upgrades from one client program: the shared head (http.UpgradeHeads) ----------------
def _accept_of(key):
    return base64.b64encode(hashlib.sha1((key + minisoup.handshake.WEBSOCKET_GUID)
                                         .encode("ascii")).digest()).decode("ascii")


def _upgrade(port, path="/", headers=None):
    """An upgrade whose head differs from the others only by its fresh key: ``(status,
    response headers, the key sent)``; a 101 is closed with a close frame."""
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    sock = socket.create_connection(("127.0.0.1", port), timeout=T)
    try:
        sock.sendall(handshake_request(path, headers, key=key))
        status, response, _rest = read_response_head(sock, T)
        if status == 101:
            sock.sendall(build_frame(CLOSE, b"\x03\xe8", mask_key=wsraw.MASK_KEY))
            recv_until_closed(sock, T)
        return status, response, key
    finally:
        sock.close()


class _CountedChecks:
    """server_handshake, counting its calls (the upgrades checked in full)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        real = minisoup.server.server_handshake

        def counted(*args):
            self.calls += 1
            return real(*args)
        monkeypatch.setattr(minisoup.server, "server_handshake", counted)


def test_upgrades_from_one_client_program_are_checked_once_and_each_gets_its_accept(
        monkeypatch):
    # Issue 15 (handshakes/s): a head equal to the last one checked in full but for its
    # key is parsed by it and passes the same checks; only the accept is computed anew.
    checks = _CountedChecks(monkeypatch)
    server, rec = ws_server(protocols=["chat", "superchat"])
    headers = [("Origin", "http://example.com"), ("Sec-WebSocket-Protocol", "superchat, chat")]
    with running(server) as port:
        results = [_upgrade(port, "/room?id=7", headers) for _ in range(5)]
        assert rec.closed_event.wait(T)
    for status, response, key in results:
        assert status == 101
        assert response["sec-websocket-accept"] == _accept_of(key)
        assert response["sec-websocket-protocol"] == "chat"
        assert response["upgrade"] == "websocket" and response["connection"] == "Upgrade"
        assert "sec-websocket-extensions" not in response
    assert checks.calls == 1
    assert len(rec.conns) == 5
    assert {(c.get_origin(), c.get_protocol(), c.get_uri().path, c.get_uri().query)
            for c in rec.conns} == {("http://example.com", "chat", "/room", "id=7")}
    # Each handler saw its own request's key (the headers are each request's own).
    assert [msg_key for msg_key in rec.keys] == [key for _, _, key in results]


def test_a_replaced_handler_checks_the_next_identical_upgrade_itself(monkeypatch):
    checks = _CountedChecks(monkeypatch)
    server, rec = ws_server()
    headers = [("Origin", "http://example.com")]
    with running(server) as port:
        assert _upgrade(port, "/", headers)[0] == 101
        assert _upgrade(port, "/", headers)[0] == 101
        assert checks.calls == 1
        # The new handler's Origin, then its subprotocols, apply to the same head.
        on_loop(server, server.add_websocket_handler, "/", "http://other.example", None, rec)
        assert _upgrade(port, "/", headers)[0] == 403
        on_loop(server, server.add_websocket_handler, "/", None, ["chat"], rec)
        status, response, _ = _upgrade(port, "/", headers)
        assert status == 101 and "sec-websocket-protocol" not in response
        status, response, _ = _upgrade(port, "/", headers + [("Sec-WebSocket-Protocol", "x")])
        assert status == 400
        on_loop(server, server.remove_handler, "/")
        assert _upgrade(port, "/", headers)[0] == 404
    assert checks.calls == 4


def test_request_headers_changed_before_the_checks_are_checked_as_changed(monkeypatch):
    # A request-started callback (an early handler, an auth domain) may change the
    # request's fields before the handshake is checked: the checks must see the change,
    # not what an identical head was found to be before.
    checks = _CountedChecks(monkeypatch)
    server, rec = ws_server(origin="http://good.example")
    headers = [("Origin", "http://good.example")]
    with running(server) as port:
        assert _upgrade(port, "/", headers)[0] == 101
        assert _upgrade(port, "/", headers)[0] == 101
        assert checks.calls == 1

        def forge(server, msg):
            msg.get_request_headers().replace("Origin", "http://evil.example")
        on_loop(server, server.connect, "request-started", forge)
        assert _upgrade(port, "/", headers)[0] == 403
        assert checks.calls == 2


def test_identical_upgrades_offering_an_extension_each_negotiate_their_own(monkeypatch):
    checks = _CountedChecks(monkeypatch)
    server, rec = ws_server()
    headers = [("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits")]
    with running(server) as port:
        results = [_upgrade(port, "/", headers) for _ in range(3)]
        assert rec.closed_event.wait(T)
    for status, response, key in results:
        assert status == 101
        assert response["sec-websocket-extensions"].startswith("permessage-deflate")
        assert response["sec-websocket-accept"] == _accept_of(key)
    assert checks.calls == 3  # negotiated each time
    extensions = [conn.get_extensions() for conn in rec.conns]
    assert all(len(found) == 1 for found in extensions)
    assert len({id(found[0]) for found in extensions}) == 3


def test_a_removed_handler_is_not_kept_by_what_its_upgrades_were_found_to_be():
    class Data:
        pass
    data = Data()
    kept = weakref.ref(data)
    server = minisoup.Server()
    server.add_websocket_handler("/", None, None, lambda *args: None, data)
    with running(server) as port:
        assert _upgrade(port)[0] == 101
        assert _upgrade(port)[0] == 101
        on_loop(server, server.remove_handler, "/")
    del data
    gc.collect()
    assert kept() is None


def test_echo_text_and_binary():
    server, rec = ws_server()
    with running(server) as port:
        with connect(port) as client:
            for text in ["", "hello", "\u00e9\u4e2d\U0001f600" * 100, "x" * 70000]:
                client.send_text(text)
                assert client.recv() == (WebsocketDataType.TEXT, text)
            for data in [b"", b"\x00\xff" * 10, os.urandom(100000)]:
                client.send_binary(data)
                assert client.recv() == (WebsocketDataType.BINARY, data)


class _CountsAccepts:
    """Counts a listening socket's accept calls and those that found none waiting."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0
        self.empty = 0

    def _counted(self, accept):
        self.calls += 1
        try:
            return accept()
        except BlockingIOError:
            self.empty += 1
            raise


class CountingListener(_CountsAccepts, socket.socket):
    """A listening socket that counts its accept() calls and those that found none waiting."""

    def accept(self):
        return self._counted(super().accept)


class CountingRawListener(_CountsAccepts, socket.socket):
    """A listening socket that counts the accept system calls (the server's hot path calls
    ``_accept`` itself, socket.accept()'s own first step) and those that found none waiting."""

    def _accept(self):
        return self._counted(super()._accept)


@pytest.mark.parametrize("listener_class", [CountingListener, CountingRawListener])
def test_each_connection_costs_one_accept_and_none_finds_the_backlog_empty(listener_class):
    # Issue 15: every wakeup of the listener ended with an accept() failing with EAGAIN
    # (~4 us of a ~80 us handshake); a poll of the listener now says when none is left.
    # A listener with its own accept() gets it called; others get the hot path's _accept().
    listener = listener_class(socket.AF_INET, socket.SOCK_STREAM)
    server, rec = ws_server()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        server.listen_socket(listener)
        with running(server) as port:
            for _ in range(3):                                # one at a time
                with connect(port) as client:
                    client.send_text("one")
                    assert client.recv() == (WebsocketDataType.TEXT, "one")
            burst = [socket.create_connection(("127.0.0.1", port), timeout=T)
                     for _ in range(5)]                       # several waiting together
            try:
                for sock in burst:
                    sock.sendall(handshake_request("/"))
                for sock in burst:
                    assert read_response_head(sock)[0] == 101
            finally:
                for sock in burst:
                    sock.close()
        assert listener.calls == 8 and listener.empty == 0, (listener.calls, listener.empty)
    finally:
        listener.close()


def test_user_data_in_signals():
    seen = []

    def handler(server, msg, path, conn, user_data):
        conn.connect("message", lambda c, kind, data, tag: seen.append((tag, data)), "tag")
        conn.connect("message", lambda c, kind, data: c.send_text("ack"))

    server = minisoup.Server()
    server.add_websocket_handler(None, None, None, handler)
    with running(server) as port:
        with connect(port) as client:
            client.send_text("m")
            assert client.recv()[1] == "ack"
    assert seen == [("tag", "m")]


# -- "closed" exactly once, however it ends -----------------------------------------------------
def test_closed_once_on_clean_close_by_client():
    server, rec = ws_server()
    with running(server) as port:
        client = connect(port)
        client.send_text("x")
        client.recv()
        client.close(1000, "done")
        assert client.get_close_code() == 1000
        closed = rec.wait_closed()
    assert len(closed) == 1
    conn = rec.conns[0]
    assert conn.get_state() == WebsocketState.CLOSED
    assert (conn.get_close_code(), conn.get_close_data()) == (1000, "done")


def test_closed_once_on_close_by_server():
    events = []

    def handler(server, msg, path, conn, user_data):
        conn.connect("message", lambda c, kind, data: c.close(4000, "bye"))
        conn.connect("closing", lambda c: events.append("closing"))
        conn.connect("closed", lambda c: events.append("closed"))

    server = minisoup.Server()
    server.add_websocket_handler(None, None, None, handler)
    with running(server) as port:
        client = connect(port)
        client.send_text("close me")
        with pytest.raises(minisoup.ConnectionClosed) as info:
            client.recv()
        assert info.value.code == 4000
        assert (client.get_close_code(), client.get_close_data()) == (4000, "bye")
        deadline = time.monotonic() + T
        while "closed" not in events and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
    assert events == ["closing", "closed"]


def test_closed_once_when_peer_vanishes():
    server, rec = ws_server()
    with running(server) as port:
        raw = RawWebSocket(port)
        raw.send_frame(TEXT, b"hi")
        assert raw.read_message() == (TEXT, b"hi")
        raw.close()  # no close frame
        closed = rec.wait_closed()
    assert len(closed) == 1
    assert rec.conns[0].get_close_code() == 1006
    assert rec.conns[0].get_state() == WebsocketState.CLOSED


def test_closed_once_when_peer_resets():
    server, rec = ws_server()
    with running(server) as port:
        raw = RawWebSocket(port)
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        raw.close()
        closed = rec.wait_closed()
    assert len(closed) == 1 and rec.conns[0].get_close_code() == 1006


def test_peer_never_answers_our_close():
    def handler(server, msg, path, conn, user_data):
        rec(server, msg, path, conn, user_data)
        conn.close(1000, "go")

    rec = Recorder(echo=False)
    server = minisoup.Server(close_timeout=0.5)
    server.add_websocket_handler(None, None, None, handler)
    with running(server) as port:
        raw = RawWebSocket(port)
        assert raw.read_close() == (1000, b"go")
        t0 = time.monotonic()
        assert raw.wait_eof(T), "server kept the connection open"
        elapsed = time.monotonic() - t0
        raw.close()
        closed = rec.wait_closed()
    assert 0.3 < elapsed < 2.0, elapsed
    assert len(closed) == 1


def test_closed_once_on_server_stop():
    server, rec = ws_server()
    with running(server) as port:
        client = connect(port)
        assert rec.opened.wait(T)
    assert client.wait_closed(T) == 1001
    assert len(rec.closed) == 1


# -- keepalive -----------------------------------------------------------------------------
def test_keepalive_pings_answered():
    pongs = []

    def handler(server, msg, path, conn, user_data):
        assert conn.get_keepalive_interval() == 0
        conn.set_keepalive_interval(0.1)
        conn.set_keepalive_pong_timeout(0.5)
        conn.connect("pong", lambda c, data: pongs.append(data))
        rec(server, msg, path, conn, user_data)

    rec = Recorder()
    server = minisoup.Server()
    server.add_websocket_handler(None, None, None, handler)
    with running(server) as port:
        with connect(port) as client:
            with pytest.raises(socket.timeout):
                client.recv(timeout=0.8)  # pumps: the client answers the pings
            assert len(pongs) >= 3
            assert rec.conns[0].get_state() == WebsocketState.OPEN
            client.send_text("still open")
            assert client.recv()[1] == "still open"


def test_keepalive_pong_timeout_closes_with_1008():
    def handler(server, msg, path, conn, user_data):
        conn.set_keepalive_interval(0.1)
        conn.set_keepalive_pong_timeout(0.3)
        rec(server, msg, path, conn, user_data)

    rec = Recorder()
    server = minisoup.Server(close_timeout=0.5)
    server.add_websocket_handler(None, None, None, handler)
    with running(server) as port:
        raw = RawWebSocket(port)
        t0 = time.monotonic()
        pings = 0
        while True:
            opcode, _fin, _rsv, payload = raw.read_frame(T)
            if opcode == PING:
                pings += 1  # ignored: no pong
                continue
            assert opcode == CLOSE
            assert payload[:2] == (1008).to_bytes(2, "big")
            break
        assert 0.3 <= time.monotonic() - t0 < 2.0
        assert pings >= 1
        raw.send_close(1008)
        assert raw.wait_eof(T)
        raw.close()
        closed = rec.wait_closed()
    assert len(closed) == 1 and rec.conns[0].get_close_code() == 1008


# -- errors ---------------------------------------------------------------------------------
def test_send_on_closed_connection_warns(caplog):
    results = []

    def handler(server, msg, path, conn, user_data):
        def closed(c):
            c.send_text("too late")
            c.send_binary(b"too late")
            results.append(c.get_state())
        conn.connect("closed", closed)
        rec(server, msg, path, conn, user_data)

    rec = Recorder()
    server = minisoup.Server()
    server.add_websocket_handler(None, None, None, handler)
    caplog.set_level(logging.WARNING, logger="minisoup")
    with running(server) as port:
        with connect(port):
            pass
        rec.wait_closed()
    assert results == [WebsocketState.CLOSED]
    warnings = [r for r in caplog.records if "send ignored" in r.getMessage()]
    assert len(warnings) == 2 and warnings[0].levelno == logging.WARNING


def test_send_while_closing_is_ignored(caplog):
    def handler(server, msg, path, conn, user_data):
        def on_message(c, kind, data):
            c.close(1000)
            c.send_text("after close()")
        conn.connect("message", on_message)

    server = minisoup.Server()
    server.add_websocket_handler(None, None, None, handler)
    caplog.set_level(logging.WARNING, logger="minisoup")
    with running(server) as port:
        raw = RawWebSocket(port)
        raw.send_frame(TEXT, b"x")
        opcode, _fin, _rsv, payload = raw.read_frame(T)
        assert opcode == CLOSE  # nothing sent after our close frame
        raw.close()
    assert any("send ignored" in r.getMessage() and "CLOSING" in r.getMessage()
               for r in caplog.records)


def test_exception_in_message_handler_closes_1011_and_server_keeps_serving(caplog):
    def handler(server, msg, path, conn, user_data):
        def on_message(c, kind, data):
            if data == "boom":
                raise RuntimeError("handler bug")
            c.send_text(data)
        conn.connect("message", on_message)

    server = minisoup.Server()
    server.add_websocket_handler(None, None, None, handler)
    with running(server) as port:
        client = connect(port)
        client.send_text("boom")
        with pytest.raises(minisoup.ConnectionClosed):
            client.recv()
        assert client.get_close_code() == 1011
        with connect(port) as again:
            again.send_text("fine")
            assert again.recv()[1] == "fine"
    assert any("handler bug" in (r.exc_text or "") or r.exc_info for r in caplog.records)


def test_exception_in_websocket_callback_closes_1011():
    def handler(server, msg, path, conn, user_data):
        raise ValueError("callback bug")

    server = minisoup.Server()
    server.add_websocket_handler(None, None, None, handler)
    with running(server) as port:
        client = connect(port)
        assert client.wait_closed(T) == 1011
        client.abort()
        again = connect(port)  # the server still accepts
        assert again.wait_closed(T) == 1011
        again.abort()


def test_garbage_after_handshake_1002():
    server, rec = ws_server()
    with running(server) as port:
        raw = RawWebSocket(port)
        raw.send_raw(b"this is not a websocket frame\r\n")
        raw.expect_close(1002)
        raw.close()
        closed = rec.wait_closed()
    assert len(closed) == 1 and rec.conns[0].get_close_code() == 1002


def test_frames_in_the_same_packet_as_the_handshake():
    server, rec = ws_server()
    with running(server) as port:
        sock = socket.create_connection(("127.0.0.1", port), timeout=T)
        frames = b"".join(minisoup.frames.build_frame(TEXT, b"early %d" % i, True, 0, b"abcd")
                          for i in range(3))
        sock.sendall(handshake_request("/") + frames)
        status, _headers, rest = read_response_head(sock)
        assert status == 101
        raw = RawWebSocket.adopt(sock, rest, T)
        for i in range(3):
            assert raw.read_message() == (TEXT, b"early %d" % i)
        raw.close()


def test_garbage_in_the_same_packet_as_the_handshake():
    server, rec = ws_server()
    with running(server) as port:
        sock = socket.create_connection(("127.0.0.1", port), timeout=T)
        sock.sendall(handshake_request("/") + b"\xff\xff\xff")
        status, _headers, rest = read_response_head(sock)
        assert status == 101
        raw = RawWebSocket.adopt(sock, rest, T)
        raw.expect_close(1002)
        raw.close()


# -- size limits ---------------------------------------------------------------------------------
LIMIT = 131072


def test_default_limits():
    server, rec = ws_server()
    with running(server) as port:
        with connect(port):
            assert rec.opened.wait(T)
    conn = rec.conns[0]
    assert conn.get_max_incoming_payload_size() == LIMIT
    assert conn.get_max_total_message_size() == LIMIT
    assert conn.get_keepalive_interval() == 0
    assert conn.get_keepalive_pong_timeout() == 0


def test_message_at_and_over_the_payload_limit():
    server, rec = ws_server()
    with running(server) as port:
        with connect(port) as client:
            client.send_binary(b"a" * LIMIT)
            assert client.recv() == (WebsocketDataType.BINARY, b"a" * LIMIT)
            client.send_text("b" * LIMIT)
            assert client.recv() == (WebsocketDataType.TEXT, "b" * LIMIT)
            client.send_binary(b"c" * (LIMIT + 1))
            with pytest.raises(minisoup.ConnectionClosed) as info:
                client.recv()
            assert info.value.code == 1009
        closed = rec.wait_closed()
    assert rec.conns[0].get_close_code() == 1009 and len(closed) == 1
    # The limits still read back after the failure and the close.
    assert rec.conns[0].get_max_incoming_payload_size() == LIMIT
    rec.conns[0].set_max_incoming_payload_size(10)
    assert rec.conns[0].get_max_incoming_payload_size() == 10


def test_total_message_size_limit():
    def handler(server, msg, path, conn, user_data):
        conn.set_max_incoming_payload_size(0)  # only the message limit applies
        rec(server, msg, path, conn, user_data)

    rec = Recorder()
    server = minisoup.Server()
    server.add_websocket_handler(None, None, None, handler)
    with running(server) as port:
        with connect(port) as client:
            client.send_binary(b"a" * LIMIT)
            assert client.recv()[1] == b"a" * LIMIT
            client.send_binary(b"a" * (LIMIT + 1))
            with pytest.raises(minisoup.ConnectionClosed):
                client.recv()
            assert client.get_close_code() == 1009
        raw = RawWebSocket(port)
        half = LIMIT // 2
        raw.send_frame(BINARY, b"x" * half, fin=False)
        raw.send_frame(0, b"y" * half, fin=True)
        assert raw.read_message() == (BINARY, b"x" * half + b"y" * half)
        raw.send_frame(BINARY, b"x" * half, fin=False)
        raw.send_frame(0, b"y" * (half + 1), fin=True)
        raw.expect_close(1009)
        raw.close()


def test_raised_limits_allow_64_mib_message():
    size = 64 * 1024 * 1024

    def handler(server, msg, path, conn, user_data):
        conn.set_max_incoming_payload_size(size)
        conn.set_max_total_message_size(0)
        conn.connect("message", lambda c, kind, data: c.send_text(str(len(data))))

    server = minisoup.Server()
    server.add_websocket_handler(None, None, None, handler)
    with running(server) as port:
        with connect(port) as client:
            t0 = time.monotonic()
            client.send_binary(b"\x5a" * size)
            assert client.recv(timeout=10) == (WebsocketDataType.TEXT, str(size))
            elapsed = time.monotonic() - t0
    assert elapsed < 5.0, "64 MiB took %.1f s" % elapsed


class Unlimited(Recorder):
    """A Recorder that lifts both size limits (big frames are received directly)."""

    def __call__(self, server, msg, path, conn, user_data):
        conn.set_max_incoming_payload_size(0)
        conn.set_max_total_message_size(0)
        super().__call__(server, msg, path, conn, user_data)


def send_in_pieces(sock, data, rng):
    """Send ``data`` in random pieces, now and then pausing so the server reads them apart."""
    pos = 0
    while pos < len(data):
        n = rng.choice([1, 3, 1000, rng.randint(1, 200000)])
        sock.sendall(data[pos:pos + n])
        pos += n
        if rng.random() < 0.1:
            time.sleep(0.001)


def test_big_frames_in_random_pieces_with_control_frames_between():
    rng = random.Random(20261125)
    binary = os.urandom((1 << 20) + 5)
    text = ("\u00e9t\u00e9 \U0001f600 " * 30000).encode("utf-8")   # ~390 KB of multi-byte text
    key = wsraw.MASK_KEY
    server, rec = ws_server(Unlimited())
    with running(server) as port:
        with RawWebSocket(port) as raw:
            stream = (build_frame(BINARY, binary, mask_key=key) + build_frame(PING, b"p", mask_key=key)
                      + build_frame(TEXT, text[:200001], fin=False, mask_key=key)
                      + build_frame(PING, b"q", mask_key=key)
                      + build_frame(0, text[200001:], mask_key=key))
            send_in_pieces(raw.sock, stream, rng)
            assert raw.read_frame(timeout=10) == (BINARY, True, 0, binary)
            assert raw.read_frame() == (PONG, True, 0, b"p")
            assert raw.read_frame() == (PONG, True, 0, b"q")
            assert raw.read_frame(timeout=10) == (TEXT, True, 0, text)
            bad = text[:150000] + b"\xff" + text[150000:300000]
            send_in_pieces(raw.sock, build_frame(TEXT, bad, mask_key=key), rng)
            raw.expect_close(1007)


def test_peer_vanishing_inside_a_big_frame_closes_1006():
    server, rec = ws_server(Unlimited())
    with running(server) as port:
        raw = RawWebSocket(port)
        frame = build_frame(BINARY, b"z" * (1 << 20), mask_key=wsraw.MASK_KEY)
        raw.sock.sendall(frame[:600000])
        time.sleep(0.05)
        raw.sock.close()
        closed = rec.wait_closed()
        assert len(closed) == 1 and closed[0].get_close_code() == 1006


def test_write_buffer_limit_closes_1008(caplog):
    chunk = b"\0" * 65536

    def handler(server, msg, path, conn, user_data):
        rec(server, msg, path, conn, user_data)

        def pump():
            if conn.get_state() == WebsocketState.OPEN:
                for _ in range(8):
                    conn.send_binary(chunk)
                server.call_later(0.001, pump)
        pump()

    rec = Recorder(echo=False)
    server = minisoup.Server(write_buffer_limit=256 * 1024, close_timeout=0.3)
    server.add_websocket_handler(None, None, None, handler)
    caplog.set_level(logging.INFO, logger="minisoup")
    with running(server) as port:
        raw = RawWebSocket(port, rcvbuf=65536)  # never reads after the handshake
        closed = rec.wait_closed()
        raw.close()
    conn = rec.conns[0]
    assert len(closed) == 1
    assert conn.get_close_code() == 1008
    assert any("write_buffer_limit" in r.getMessage() for r in caplog.records)


def test_buffered_amount_reported():
    amounts = []

    def handler(server, msg, path, conn, user_data):
        amounts.append(conn.get_buffered_amount())
        conn.connect("message", lambda c, kind, data: c.send_text("ok"))

    server = minisoup.Server()
    server.add_websocket_handler(None, None, None, handler)
    with running(server) as port:
        with connect(port) as client:
            client.send_text("x")
            assert client.recv()[1] == "ok"
    assert amounts == [0]


# -- Node's WebSocket client -------------------------------------------------------------------
NODE_SCRIPT = r"""
const url = process.argv[process.argv.length - 1];
const ws = new WebSocket(url);
ws.binaryType = "arraybuffer";
const big = Array.from({length: 5000}, (_, i) => "line " + i + " \u00e9\u4e2d\n").join("");
const got = [];
const timer = setTimeout(() => { console.log(JSON.stringify({error: "timeout", got})); process.exit(2); }, 5000);
ws.onopen = () => ws.send("h\u00e9llo from node");
ws.onmessage = (ev) => {
  if (typeof ev.data !== "string") {
    got.push({binary: Array.from(new Uint8Array(ev.data))});
    ws.close(1000, "node done");
  } else if (ev.data.length > 1000) {
    got.push({big: ev.data === big});
    ws.send(new Uint8Array([0, 1, 2, 253, 254, 255]));
  } else {
    got.push({text: ev.data});
    ws.send(big);
  }
};
ws.onerror = (ev) => { got.push({error: String(ev.message || ev.type)}); };
ws.onclose = (ev) => {
  clearTimeout(timer);
  console.log(JSON.stringify({got, code: ev.code, reason: ev.reason, wasClean: ev.wasClean,
                              extensions: ws.extensions}));
};
"""


def _node_command():
    node = shutil.which("node")
    if node is None:
        return None
    try:
        out = subprocess.run([node, "-e", "process.stdout.write(typeof WebSocket)"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    if out == "function":
        return [node]
    out = subprocess.run([node, "--experimental-websocket", "-e",
                          "process.stdout.write(typeof WebSocket)"],
                         capture_output=True, text=True, timeout=10).stdout
    return [node, "--experimental-websocket"] if out == "function" else None


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_node_websocket_client():
    command = _node_command()
    if command is None:
        pytest.skip("this node has no WebSocket client")
    server, rec = ws_server(path="/echo")
    with running(server) as port:
        proc = subprocess.run(command + ["-e", NODE_SCRIPT, "--", url(port, "/echo")],
                              capture_output=True, text=True, timeout=15)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        closed = rec.wait_closed()
    assert result["got"] == [{"text": "h\u00e9llo from node"}, {"big": True},
                             {"binary": [0, 1, 2, 253, 254, 255]}]
    assert result["code"] == 1000 and result["wasClean"] is True
    assert len(closed) == 1
    assert (rec.conns[0].get_close_code(), rec.conns[0].get_close_data()) == (1000, "node done")


# -- more of SPEC 1-3 over the wire ------------------------------------------------------------
def test_exception_in_normal_handler_at_websocket_path_is_500(caplog):
    def normal(server, msg, path, query, user_data):
        raise RuntimeError("normal handler bug")

    server, rec = ws_server(path="/ws")
    server.add_handler("/ws", normal)
    with running(server) as port:
        status, headers, _ = http_exchange(port, handshake_request("/ws"))
        assert status == 500 and "sec-websocket-accept" not in headers
    assert not rec.calls
    assert any(r.exc_info for r in caplog.records)


def test_protocol_offer_in_several_headers():
    server, rec = ws_server(protocols=["b", "c"])
    with running(server) as port:
        status, headers, _ = http_exchange(port, handshake_request(
            "/", [("Sec-WebSocket-Protocol", "a"), ("Sec-WebSocket-Protocol", "c, b")]))
        assert status == 101 and headers["sec-websocket-protocol"] == "b"
    assert rec.info["protocol"] == "b"


def test_client_ping_answered_and_error_signal_on_protocol_error():
    errors = []

    def handler(server, msg, path, conn, user_data):
        conn.connect("error", lambda c, exc: errors.append(exc))
        rec(server, msg, path, conn, user_data)

    rec = Recorder()
    server = minisoup.Server()
    server.add_websocket_handler(None, None, None, handler)
    with running(server) as port:
        with connect(port) as client:
            client.ping(b"are you there")
            assert client.wait_pong(T) == b"are you there"
        raw = RawWebSocket(port)
        raw.send_frame(TEXT, b"x", mask=False)
        raw.expect_close(1002)
        raw.close()
        rec.wait_closed()
    assert len(errors) == 1
    assert isinstance(errors[0], minisoup.WebsocketError) and errors[0].code == 1002


def test_oversized_message_still_being_sent_reads_1009():
    # The client is still writing its 4 MiB frame when the server fails the connection:
    # the lingering close keeps reading, so the client's writes succeed and it reads 1009.
    server, rec = ws_server(close_timeout=1.0)
    with running(server) as port:
        raw = RawWebSocket(port)
        raw.send_frame(BINARY, b"z" * (4 * 1024 * 1024))
        raw.expect_close(1009)
        raw.send_close(1009)
        assert raw.wait_eof(T)
        raw.close()
        rec.wait_closed()
    assert rec.conns[0].get_close_code() == 1009


def test_failed_connection_closed_after_close_timeout_when_peer_stays():
    server, rec = ws_server(close_timeout=0.3)
    with running(server) as port:
        raw = RawWebSocket(port)
        raw.send_frame(5, b"")
        raw.expect_close(1002)
        t0 = time.monotonic()
        for _ in range(10):
            raw.send_raw(b"ignored garbage " * 100)  # discarded, not a reset
        closed = rec.wait_closed()
        elapsed = time.monotonic() - t0
        raw.close()
    assert 0.2 < elapsed < 2.0 and len(closed) == 1


def test_bad_extension_offer_is_declined_not_fatal():
    server, rec = ws_server()
    with running(server) as port:
        for offer in ["permessage-deflate; server_max_window_bits=99",
                      "permessage-deflate; client_max_window_bits=foo",
                      "permessage-deflate; unknown_param",
                      "permessage-deflate; server_no_context_takeover=1",
                      "x-unknown-extension, ;;;, =",
                      ""]:
            status, headers, _ = http_exchange(
                port, handshake_request("/", [("Sec-WebSocket-Extensions", offer)]))
            assert status == 101, offer
            assert "deflate" not in headers.get("sec-websocket-extensions", ""), offer
        with RawWebSocket(port) as raw:  # not negotiated: RSV1 is a protocol error
            raw.send_frame(TEXT, b"x", rsv=4)
            raw.expect_close(1002)


def test_deflate_negotiated_end_to_end():
    server, rec = ws_server()
    with running(server) as port:
        status, headers, _ = http_exchange(
            port, handshake_request("/", [("Sec-WebSocket-Extensions", "permessage-deflate")]))
        assert status == 101 and "permessage-deflate" in headers["sec-websocket-extensions"]
        with connect(port, extensions=[minisoup.WebsocketExtensionDeflate]) as client:
            assert client.get_extensions()
            text = "compress me " * 10000
            client.send_text(text)
            assert client.recv() == (WebsocketDataType.TEXT, text)
        assert rec.conns[-1].get_extensions()


@pytest.mark.parametrize("empty", [b"", b"\x00"], ids=["no-bytes", "zero-byte"])
def test_empty_compressed_message_then_next_message_over_deflate(empty):
    # Regression: RSV1 on an empty payload was delivered but left the server's inflater
    # inside a stored block, so the next valid compressed message was failed with 1007.
    server, rec = ws_server()
    offer = [("Sec-WebSocket-Extensions", "permessage-deflate")]
    deflater = zlib.compressobj(6, zlib.DEFLATED, -15)
    inflater = zlib.decompressobj(wbits=-15)
    text = "the message after the empty one " * 4

    def compress(data):
        return (deflater.compress(data) + deflater.flush(zlib.Z_SYNC_FLUSH))[:-4]

    with running(server) as port:
        with RawWebSocket(port, headers=offer) as raw:
            assert "permessage-deflate" in raw.headers["sec-websocket-extensions"]
            raw.send_frame(TEXT, compress(b"a first message for the context " * 3), rsv=4)
            raw.send_frame(TEXT, empty, rsv=4)
            raw.send_frame(TEXT, compress(text.encode()), rsv=4)
            echoed = []
            for _ in range(3):
                opcode, fin, rsv, payload = raw.read_frame()
                if rsv & 4:
                    payload = inflater.decompress(payload + b"\x00\x00\xff\xff")
                echoed.append((opcode, payload))
            assert echoed[1:] == [(TEXT, b""), (TEXT, text.encode())]
            raw.send_close(1000)
            raw.expect_close(1000)


def test_remove_websocket_extension():
    server, rec = ws_server()
    server.remove_websocket_extension(minisoup.WebsocketExtensionDeflate)
    with running(server) as port:
        status, headers, _ = http_exchange(
            port, handshake_request("/", [("Sec-WebSocket-Extensions", "permessage-deflate")]))
        assert status == 101 and "sec-websocket-extensions" not in headers


@pytest.mark.parametrize("pipelined", [False, True])
def test_upgrade_after_keep_alive_request_on_same_connection(pipelined):
    def page(server, msg, path, query, user_data):
        msg.set_response("text/plain", "page")
        msg.set_status(200)

    server, rec = ws_server(path="/ws")
    server.add_handler("/page", page)
    with running(server) as port:
        sock = socket.create_connection(("127.0.0.1", port), timeout=T)
        first = b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n"
        upgrade = handshake_request("/ws")
        frame = minisoup.frames.build_frame(TEXT, b"after upgrade", True, 0, b"wxyz")
        if pipelined:
            sock.sendall(first + upgrade + frame)
        else:
            sock.sendall(first)
        status, headers, rest = read_response_head(sock)
        assert status == 200 and headers.get("connection", "").lower() != "close"
        while len(rest) < 4:
            rest += sock.recv(100)
        assert rest[:4] == b"page"
        rest = rest[4:]
        if not pipelined:
            sock.sendall(upgrade + frame)
        status, _headers, after = read_response_head(sock, T, rest)
        assert status == 101
        raw = RawWebSocket.adopt(sock, after, T)
        assert raw.read_message() == (TEXT, b"after upgrade")
        raw.close()
    assert rec.info["uri_path"] == "/ws"


def test_close_code_zero_while_open():
    codes = []

    def handler(server, msg, path, conn, user_data):
        codes.append((conn.get_close_code(), conn.get_close_data()))

    server = minisoup.Server()
    server.add_websocket_handler(None, None, None, handler)
    with running(server) as port:
        with connect(port):
            pass
    assert codes == [(0, None)]


def deciding_later(verdict):
    """A handler that pauses and, 50 ms later, sets ``verdict`` (if any) and unpauses:
    asynchronous authentication."""
    def handler(server, msg, path, query, user_data):
        msg.pause()

        def decide():
            if verdict:
                msg.set_status(verdict)
            msg.unpause()
        server.call_later(0.05, decide)
    return handler


@pytest.mark.parametrize("verdict", [None, 401])
def test_paused_normal_handler_decides_later(verdict):
    server, rec = ws_server(path="/ws")
    server.add_handler("/ws", deciding_later(verdict))
    with running(server) as port:
        if verdict is None:
            with connect(port, "/ws") as client:
                client.send_text("through")
                assert client.recv()[1] == "through"
        else:
            with pytest.raises(minisoup.HandshakeError) as info:
                connect(port, "/ws")
            assert info.value.status == verdict
    assert len(rec.calls) == (1 if verdict is None else 0)


@pytest.mark.parametrize("verdict", [None, 403])
def test_paused_early_handler_decides_later(verdict):
    server, rec = ws_server(path="/ws")
    server.add_early_handler("/ws", deciding_later(verdict))
    with running(server) as port:
        status, _headers, _ = http_exchange(port, handshake_request("/ws"))
        assert status == (verdict or 101)
    assert len(rec.calls) == (0 if verdict else 1)


def test_deflated_message_over_total_limit_gets_1009():
    # 1 MiB of zeros compresses to about 1 KiB: under the frame limit, over the message limit.
    server, rec = ws_server()
    with running(server) as port:
        with connect(port, extensions=[minisoup.WebsocketExtensionDeflate]) as client:
            assert client.get_extensions()
            client.send_binary(bytes(LIMIT))
            assert client.recv() == (WebsocketDataType.BINARY, bytes(LIMIT))
            client.send_binary(bytes(1024 * 1024))
            with pytest.raises(minisoup.ConnectionClosed):
                client.recv()
            assert client.get_close_code() == 1009


def test_a_message_bigger_than_the_write_buffer_limit_reaches_a_reading_peer():
    # The limit guards against peers that do not read, not against big messages.
    big = b"\x07" * (4 << 20)

    def handler(server, msg, path, conn, user_data):
        conn.send_binary(big)
        # Once the reader has taken the big one, the buffer is below the limit again.
        server.call_later(0.5, conn.send_text, "after")

    server = minisoup.Server(write_buffer_limit=1 << 20)
    server.add_websocket_handler(None, None, None, handler)
    with running(server) as port:
        with minisoup.websocket_connect("ws://127.0.0.1:%d/" % port, timeout=5) as client:
            kind, data = client.recv(timeout=5)
            assert kind == minisoup.WebsocketDataType.BINARY and data == big
            assert client.recv(timeout=5)[1] == "after"


# -- the 101 written without its headers being made (the handshake's hot path) ----------
def _raw_101(port, request):
    """The bytes of the response head to ``request`` on a new connection (then closed)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=T)
    try:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            more = sock.recv(4096)
            assert more, "closed before the response head: %r" % data
            data += more
        return data.partition(b"\r\n\r\n")[0]
    finally:
        sock.close()


@pytest.mark.parametrize("server_header", ["minisoup-test", None])
def test_a_101_whose_headers_nobody_asked_for_is_written_as_the_others(server_header):
    # An upgrade whose response headers no early handler asked for gets its 101 written
    # without a MessageHeaders being made; it must be the same bytes as when they were
    # made, with a subprotocol and an extension as without, and headers asked for in
    # the callback must be what went out.
    seen = {}

    def touch(server_, msg, path, query, ud):
        msg.get_response_headers()

    def callback(server_, msg, path, conn, ud):
        seen[path] = (msg._response_headers is None, list(msg.get_response_headers().items()))
        conn.close()

    server = minisoup.Server(server_header=server_header)
    for path in ("/plain", "/made"):
        server.add_websocket_handler(path, None, ["chat", "other"], callback)
    server.add_early_handler("/made", touch)
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    offers = [[], [("Sec-WebSocket-Protocol", "other, chat")],
              [("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits")]]
    with running(server) as port:
        for offer in offers:
            heads = {}
            for path in ("/plain", "/made"):
                head = _raw_101(port, handshake_request(path, offer, key=key))
                heads[path] = [b"Date: -" if line.startswith(b"Date: ") else line
                               for line in head.split(b"\r\n")]
            assert heads["/plain"] == heads["/made"], offer
            expected = [b"HTTP/1.1 101 Switching Protocols"]
            if server_header:
                expected.append(b"Server: minisoup-test")
            expected += [b"Date: -", b"Upgrade: websocket", b"Connection: Upgrade",
                         b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="]
            if offer and offer[0][0] == "Sec-WebSocket-Protocol":
                expected.append(b"Sec-WebSocket-Protocol: chat")  # the server's preference
            elif offer:
                expected.append(b"Sec-WebSocket-Extensions: permessage-deflate; "
                                b"server_max_window_bits=12; client_max_window_bits=12")
            assert heads["/plain"] == expected, offer
            # In the callback, the headers are those that went out, in their order.
            for _ in range(int(T / 0.01)):
                if "/made" in seen and "/plain" in seen:
                    break
                time.sleep(0.01)
            plain_untouched, plain_items = seen.pop("/plain")
            made_untouched, made_items = seen.pop("/made")
            assert plain_untouched and not made_untouched
            sent = [tuple(line.decode().split(": ", 1)) for line in expected[1:]]
            for items in (plain_items, made_items):
                assert [(n, "-" if n == "Date" else v) for n, v in items] == sent, offer


class _InjectingExtension(minisoup.WebsocketExtension):
    # A third-party extension whose answer would smuggle a header into the 101.
    name = "x-inject"

    @classmethod
    def server_accept(cls, params):
        instance = cls()
        instance._params_string = "a=1\r\nSet-Cookie: pwned=1"
        return instance, instance._params_string


def test_an_extension_answer_with_cr_lf_is_never_written_into_the_101():
    server = minisoup.Server()
    server.add_websocket_extension(_InjectingExtension)
    opened = []
    server.add_websocket_handler(None, None, None, lambda *args: opened.append(args))
    with running(server) as port:
        sock = socket.create_connection(("127.0.0.1", port), timeout=T)
        sock.sendall(handshake_request("/", [("Sec-WebSocket-Extensions", "x-inject")]))
        data = recv_until_closed(sock, timeout=T)
        sock.close()
        assert b"pwned" not in data and b"101" not in data.split(b"\r\n", 1)[0]
        assert opened == []
        again = connect(port)  # the server still serves
        again.close()
        again.wait_closed(T)
