"""The HTTP server through the public API over real sockets (SPEC sections 1, 1b, 4)."""

import http.client
import logging
import socket
import time

import pytest

import minisoup
from conftest import linux_tcp_info, raw_connect, recv_until_closed, running, segments_received


def text_handler(body="ok", status=200):
    def handler(server, msg, path, query, user_data):
        msg.set_response("text/plain", body)
        msg.set_status(status)
    return handler


def get(port, path, method="GET", body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read(), resp
    finally:
        conn.close()


def test_handler_gets_path_query_and_user_data():
    seen = []

    def handler(server, msg, path, query, user_data):
        seen.append((path, query, user_data, msg.get_method(), msg.get_uri().path,
                     msg.get_http_version(), msg.get_remote_host(), msg.get_request_body()))
        msg.set_response("text/plain", "hi")
        msg.set_status(200)

    server = minisoup.Server()
    server.add_handler("/a", handler, "ud")
    with running(server) as port:
        status, body, resp = get(port, "/a/b?x=1&y=%C3%A9", method="POST", body=b"data")
        assert status == 200 and body == b"hi"
        assert resp.getheader("Server") == "minisoup/" + minisoup.__version__
        assert resp.getheader("Date")
        status, _, _ = get(port, "/a")
    assert seen[0] == ("/a/b", {"x": "1", "y": "é"}, "ud", "POST", "/a/b", "HTTP/1.1",
                       "127.0.0.1", b"data")
    assert seen[1][1] is None


def test_longest_prefix_and_default_and_404():
    server = minisoup.Server()
    server.add_handler("/a", text_handler("a"))
    server.add_handler("/a/", text_handler("a/"))
    server.add_handler("/ws/chat", text_handler("chat"))
    server.add_handler("/ws", text_handler("ws"))
    with running(server) as port:
        assert get(port, "/ab")[1] == b"a"            # plain string prefix, as libsoup
        assert get(port, "/a/b")[1] == b"a/"
        assert get(port, "/ws/chat/room1")[1] == b"chat"
        assert get(port, "/ws/other")[1] == b"ws"
        assert get(port, "/nothing")[0] == 404
        server.add_handler(None, text_handler("default"))
        assert get(port, "/nothing")[1] == b"default"


def raw_status(port, request):
    sock = raw_connect(port)
    try:
        sock.sendall(request)
        data = recv_until_closed(sock)
    finally:
        sock.close()
    return int(data.split(b" ", 2)[1]), data.partition(b"\r\n\r\n")[2]


def test_encoded_and_dotted_paths_reach_the_handler_libsoup_would_pick():
    # Routing on the raw path let "/%61dmin" or "/public/../admin" past an early handler
    # guarding "/admin" to the default handler; libsoup routes on the decoded path.
    seen = []

    def guard(server_, msg, path, query, ud):
        seen.append(path)
        msg.set_status(401)

    server = minisoup.Server()
    server.add_early_handler("/admin", guard)
    server.add_handler("/admin", text_handler("secret"))
    server.add_handler(None, text_handler("public"))
    with running(server) as port:
        for target in ("/%61dmin/x", "/public/../admin/x", "/public/%2e%2E/admin/x",
                       "/%2561dmin", "/admin%2Fx"):
            status, body = raw_status(port, b"GET " + target.encode() + b" HTTP/1.1\r\n"
                                      b"Host: h\r\nConnection: close\r\n\r\n")
            expected = 200 if target == "/%2561dmin" else 401   # "/%61dmin" is a name, not /admin
            assert status == expected, target
        assert seen == ["/admin/x", "/admin/x", "/admin/x", "/admin/x"]


def test_targets_of_no_form_are_400_and_asterisk_matches_no_handler():
    server = minisoup.Server()
    server.add_handler(None, text_handler("default"))
    with running(server) as port:
        for request, status in [(b"GET n HTTP/1.1\r\nHost: h\r\n\r\n", 400),
                                (b"GET * HTTP/1.1\r\nHost: h\r\n\r\n", 400),
                                (b"GET /a%zz HTTP/1.1\r\nHost: h\r\n\r\n", 400),
                                (b"GET /a/%00 HTTP/1.1\r\nHost: h\r\n\r\n", 400),
                                (b"GET /a?b=%ff HTTP/1.1\r\nHost: h\r\n\r\n", 400),
                                (b"OPTIONS * HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", 404),
                                (b"CONNECT h:443 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", 404)]:
            assert raw_status(port, request)[0] == status, request


def test_a_decoded_path_cannot_forge_access_log_lines(caplog):
    server = minisoup.Server()
    server.add_handler(None, text_handler("x"))
    with running(server) as port, caplog.at_level(logging.INFO, "minisoup.access"):
        status, _ = raw_status(port, b"GET /a%0D%0A1.2.3.4%20%22GET%20/forged%22 HTTP/1.1\r\n"
                               b"Host: h\r\nConnection: close\r\n\r\n")
        assert status == 200
        deadline = time.monotonic() + 3
        while not caplog.records and time.monotonic() < deadline:
            time.sleep(0.01)
    lines = [r.getMessage() for r in caplog.records if r.name == "minisoup.access"]
    assert len(lines) == 1
    assert "\n" not in lines[0] and "\r" not in lines[0]
    assert "/a%0D%0A1.2.3.4%20%22GET%20/forged%22" in lines[0]


def test_redirects_are_made_absolute_as_libsoup_does():
    def handler(server_, msg, path, query, ud):
        msg.set_redirect(302, query["to"])

    server = minisoup.Server()
    server.add_handler(None, handler)
    with running(server) as port:
        for to, location in [("/x", "http://h:8/x"), ("y?z=1", "http://h:8/a/y?z=1"),
                             ("https://other/q", "https://other/q")]:
            sock = raw_connect(port)
            sock.sendall(b"GET /a/b?to=" + to.replace("?", "%3F").encode() +
                         b" HTTP/1.1\r\nHost: h:8\r\nConnection: close\r\n\r\n")
            data = recv_until_closed(sock)
            sock.close()
            assert data.startswith(b"HTTP/1.1 302 Found\r\n")
            assert b"\r\nLocation: " + location.encode() + b"\r\n" in data


def test_an_informational_status_from_a_handler_is_answered_500(caplog):
    server = minisoup.Server()
    server.add_handler("/a", lambda s, msg, p, q, u: msg.set_status(103))
    server.add_handler("/b", lambda s, msg, p, q, u: msg.set_status(299))
    with running(server) as port, caplog.at_level(logging.ERROR, "minisoup"):
        # Before, the 103 was sent as the final response: the client waited forever.
        status, _, _ = get(port, "/a")
        assert status == 500
        status, _, resp = get(port, "/b")
        assert status == 299 and resp.reason == "Unknown Error"   # libsoup's phrase
    assert any("informational status 103" in r.getMessage() for r in caplog.records)


def test_only_the_matched_entry_runs():
    calls = []
    server = minisoup.Server()

    def early(server_, msg, path, query, ud):
        calls.append("early-default")

    server.add_early_handler(None, early)
    server.add_handler("/n", text_handler("n"))
    with running(server) as port:
        assert get(port, "/n/x")[1] == b"n"
        assert calls == []
        get(port, "/other")
        assert calls == ["early-default"]


def test_early_handler_rejects_without_reading_body():
    read = []
    server = minisoup.Server()

    def early(server_, msg, path, query, ud):
        if msg.get_request_headers().get_one("Authorization") != "yes":
            msg.set_status(401)

    server.add_early_handler("/", early)
    server.add_handler("/", lambda *a: (read.append(1), a[1].set_status(200)))
    with running(server) as port:
        sock = raw_connect(port)
        sock.sendall(b"PUT /up HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
                     b"Content-Length: 1000000\r\n\r\n")
        data = recv_until_closed(sock)
        assert data.startswith(b"HTTP/1.1 401 ")
        assert b"100 Continue" not in data and b"Connection: close" in data
        sock.close()
        assert read == []
        # With the header, 100 Continue then the final answer.
        sock = raw_connect(port)
        sock.sendall(b"PUT /up HTTP/1.1\r\nHost: h\r\nAuthorization: yes\r\n"
                     b"Expect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"body")
        assert sock.recv(1000).startswith(b"HTTP/1.1 200 ")
        sock.close()
        assert read == [1]


def test_forgotten_status_is_500_and_logged(caplog):
    server = minisoup.Server()
    server.add_handler("/f", lambda *a: None)
    with running(server) as port, caplog.at_level(logging.ERROR, "minisoup"):
        assert get(port, "/f")[0] == 500
    assert any("forgot to answer" in r.getMessage() for r in caplog.records)


def test_exception_in_handler_is_500_and_worker_keeps_serving(caplog):
    server = minisoup.Server()

    def boom(*args):
        raise RuntimeError("kaboom")

    server.add_handler("/boom", boom)
    server.add_handler("/ok", text_handler())
    with running(server) as port, caplog.at_level(logging.ERROR, "minisoup"):
        assert get(port, "/boom")[0] == 500
        assert get(port, "/ok")[0] == 200
    assert any(r.exc_info and "kaboom" in str(r.exc_info[1]) for r in caplog.records)


def test_keep_alive_pipelining_in_order_and_head():
    server = minisoup.Server()

    def handler(server_, msg, path, query, ud):
        if path == "/slow":
            msg.pause()
            server_.call_later(0.1, lambda: (msg.set_response("text/plain", "slow"),
                                             msg.set_status(200), msg.unpause()))
            return
        msg.set_response("text/plain", path)
        msg.set_status(200)

    server.add_handler(None, handler)
    with running(server) as port:
        sock = raw_connect(port)
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\nGET /fast HTTP/1.1\r\nHost: h\r\n\r\n"
                     b"HEAD /head HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        data = recv_until_closed(sock)
        sock.close()
    first, second = data.index(b"slow"), data.index(b"/fast")
    assert first < second
    head_response = data[data.rindex(b"HTTP/1.1 200"):]
    assert b"Content-Length: 5" in head_response and head_response.endswith(b"\r\n\r\n")


def test_a_repeated_request_on_a_keep_alive_connection_is_served_as_the_first():
    # The same head twice on one connection (the parser's reused parse, the hot path):
    # the second message has its own request headers, untouched by the first handler's
    # edits, and the same path, query and fields; a paused first request keeps its own.
    seen = []
    server = minisoup.Server()

    def handler(server_, msg, path, query, ud):
        headers = msg.get_request_headers()
        seen.append((path, query, msg.get_uri().query, headers.items()))
        headers.append("X-Seen", str(len(seen)))
        if len(seen) == 1:
            msg.pause()

            def answer():
                msg.set_response("text/plain", headers.get_list("X-Seen"))
                msg.set_status(200)
                msg.unpause()
            server_.call_later(0.1, answer)
            return
        msg.set_response("text/plain", headers.get_list("X-Seen"))
        msg.set_status(200)

    server.add_handler(None, handler)
    head = b"GET /r?a=1 HTTP/1.1\r\nHost: h\r\nX-Tag: t\r\n\r\n"
    with running(server) as port:
        sock = raw_connect(port)
        sock.sendall(head + head)
        time.sleep(0.05)
        sock.sendall(head + b"GET /r?a=1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        data = recv_until_closed(sock)
        sock.close()
    assert data.count(b"HTTP/1.1 200 OK") == 4
    bodies = [part.split(b"\r\n\r\n", 1)[1][:1] for part in data.split(b"HTTP/1.1 ")[1:]]
    assert bodies == [b"1", b"2", b"3", b"4"]
    fields = [("Host", "h"), ("X-Tag", "t")]
    assert seen[:3] == [("/r", {"a": "1"}, "a=1", fields)] * 3
    assert seen[3][3] == [("Host", "h"), ("Connection", "close")]


@pytest.mark.parametrize("server_header", ["minisoup-test", None])
def test_responses_whose_headers_nobody_asked_for_are_written_as_the_others(server_header):
    # A handler that only sets a status and a body (most do) gets its response written
    # without a MessageHeaders being made (the hot path); it must be the same bytes as
    # when the handler asked for the headers, for each shape of response.
    kept = []
    server = minisoup.Server(server_header=server_header)

    def handler(server_, msg, path, query, ud):
        if query and "touch" in query:
            msg.get_response_headers()
        kind = path.strip("/")
        msg.set_status(200 if kind != "reason" else 299, "Fine" if kind == "reason" else None)
        if kind in ("text", "reason"):
            msg.set_response("text/plain; charset=utf-8", "héllo")
        elif kind == "none":
            msg.set_response("text/plain", "dropped")
            msg.set_response(None, None)
        elif kind == "appended":
            msg.get_response_body().append(b"piece")
        kept.append(msg)

    server.add_handler(None, handler)
    paths = ["/text", "/reason", "/none", "/appended", "/empty"]
    with running(server) as port:
        sock = raw_connect(port)
        requests = b""
        for path in paths:
            for query in ("", "?touch=1"):
                for method in ("GET", "HEAD"):
                    requests += (b"%s %s%s HTTP/1.1\r\nHost: h\r\n\r\n"
                                 % (method.encode(), path.encode(), query.encode()))
        sock.sendall(requests + b"GET /text HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        data = recv_until_closed(sock)
        sock.close()
    # Each response in the order of the requests (a HEAD answer has no body), Date blanked.
    parsed, rest = [], data
    for path in paths:
        for query in ("", "?touch=1"):
            for method in ("GET", "HEAD"):
                head, _, rest = rest.partition(b"\r\n\r\n")
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                body = b""
                if method == "GET":
                    body, rest = rest[:length], rest[length:]
                lines = [b"Date: -" if line.startswith(b"Date: ") else line
                         for line in head.split(b"\r\n")]
                parsed.append((path, query, method, b"\r\n".join(lines), body))
    by_shape = {}
    for path, query, method, head, body in parsed:
        by_shape.setdefault((path, method), []).append((head, body))
    for (path, method), (plain, made) in by_shape.items():
        assert plain == made, (path, method)
    text_head, text_body = by_shape[("/text", "GET")][0]
    assert text_body == "héllo".encode()
    expected = [b"HTTP/1.1 200 OK"]
    if server_header:
        expected.append(b"Server: minisoup-test")
    expected += [b"Date: -", b"Content-Type: text/plain; charset=utf-8", b"Content-Length: 6"]
    assert text_head.split(b"\r\n") == expected
    assert by_shape[("/reason", "GET")][0][0].startswith(b"HTTP/1.1 299 Fine\r\n")
    assert b"Content-Type" not in by_shape[("/none", "GET")][0][0]
    assert by_shape[("/appended", "GET")][0][1] == b"piece"
    assert by_shape[("/empty", "GET")][0][0].endswith(b"Content-Length: 0")
    # The plain GET went out without its headers being made (the hot path was taken);
    # asked for once the response is sent, they are the ones that went out.
    assert kept[0]._response_headers is None and kept[2]._response_headers is not None
    first = kept[0].get_response_headers()
    assert [name for name, _ in first.items()][-2:] == ["Content-Type", "Content-Length"]
    assert first.get_one("Content-Length") == "6"


@linux_tcp_info
@pytest.mark.parametrize("request_head", [
    b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
])
def test_a_closing_response_carries_the_fin_in_its_segment(request_head):
    # The last response of a connection is sent with MSG_MORE and the FIN goes with it:
    # one segment fewer than when a signal handler (which could do anything before the
    # close) runs in between. The counts include the server's ACK of the request if the
    # kernel sent it alone, the same in both.
    def segments(server):
        with running(server) as port:
            sock = raw_connect(port)
            before = segments_received(sock)
            sock.sendall(request_head)
            data = recv_until_closed(sock)
            count = segments_received(sock) - before
            sock.close()
        return data, count

    plain = minisoup.Server()
    plain.add_handler(None, text_handler("bye"))
    watched = minisoup.Server()
    watched.add_handler(None, text_handler("bye"))
    watched.connect("request-finished", lambda *args: None)
    plain_data, plain_segments = segments(plain)
    watched_data, watched_segments = segments(watched)
    for data in (plain_data, watched_data):
        assert data.split(b"\r\n", 1)[0].endswith(b"200 OK") and data.endswith(b"\r\n\r\nbye")
        assert b"Connection: close" in data
    assert plain_segments == watched_segments - 1


def test_http10_closes_and_keepalive_when_asked():
    server = minisoup.Server()
    server.add_handler(None, text_handler("x"))
    with running(server) as port:
        sock = raw_connect(port)
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = recv_until_closed(sock)
        assert data.startswith(b"HTTP/1.0 200 OK") and data.endswith(b"x")
        sock = raw_connect(port)
        sock.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        time.sleep(0.1)
        data = sock.recv(1000)
        assert b"Connection: keep-alive" in data
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert recv_until_closed(sock).endswith(b"x")


def test_streaming_chunked_response_from_timers():
    server = minisoup.Server()

    def handler(server_, msg, path, query, ud):
        msg.set_status(200)
        msg.get_response_headers().append("Content-Type", "text/plain")
        msg.get_response_headers().set_encoding(minisoup.Encoding.CHUNKED)
        msg.pause()
        body = msg.get_response_body()
        body.append("first;")
        msg.unpause()
        server_.call_later(0.05, body.append, "second;")
        server_.call_later(0.1, body.complete)

    server.add_handler("/stream", handler)
    with running(server) as port:
        status, body, resp = get(port, "/stream")
        assert status == 200 and body == b"first;second;"
        assert resp.getheader("Transfer-Encoding") == "chunked"


def test_paused_message_answered_later_by_timer():
    server = minisoup.Server()

    def handler(server_, msg, path, query, ud):
        msg.pause()
        server_.call_later(0.05, lambda: (msg.set_status(202), msg.set_response("text/plain", "later"),
                                          msg.unpause()))

    server.add_handler(None, handler)
    with running(server) as port:
        status, body, resp = get(port, "/")
        assert (status, body) == (202, b"later")
        assert resp.getheader("Content-Length") == "5"


@pytest.mark.parametrize("request_bytes, status", [
    (b"BROKEN\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n", 400),
])
def test_bad_requests_get_400_and_close(request_bytes, status):
    server = minisoup.Server()
    server.add_handler(None, text_handler())
    with running(server) as port:
        sock = raw_connect(port)
        sock.sendall(request_bytes)
        data = recv_until_closed(sock)
        sock.close()
    assert data.startswith(b"HTTP/1.1 %d " % status)
    assert b"Connection: close" in data


def test_limits_431_413():
    server = minisoup.Server(max_header_size=1024, max_body_size=100)
    server.add_handler(None, text_handler())
    with running(server) as port:
        sock = raw_connect(port)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"a" * 2000 + b"\r\n\r\n")
        assert recv_until_closed(sock).startswith(b"HTTP/1.1 431 ")
        sock = raw_connect(port)
        sock.sendall(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 101\r\n\r\n")
        assert recv_until_closed(sock).startswith(b"HTTP/1.1 413 ")


def test_request_timeout_closes_slow_client():
    server = minisoup.Server(request_timeout=0.3)
    server.add_handler(None, text_handler())
    with running(server) as port:
        sock = raw_connect(port)
        sock.sendall(b"GET / HTTP/1.1\r\n")
        start = time.monotonic()
        assert recv_until_closed(sock, timeout=5) == b""
        assert time.monotonic() - start < 3
        assert get(port, "/")[0] == 200


def test_client_disconnect_mid_request_and_mid_response():
    events = {"request-started": 0, "request-finished": 0, "request-aborted": 0}
    server = minisoup.Server()
    for name in events:
        server.connect(name, lambda s, msg, n=name: events.__setitem__(n, events[n] + 1))

    def handler(server_, msg, path, query, ud):
        if path == "/big":
            msg.set_response("application/octet-stream", b"x" * (8 << 20))
            msg.set_status(200)
            return
        msg.pause()
        server_.call_later(0.2, lambda: (msg.set_status(200), msg.unpause()))

    server.add_handler(None, handler)
    with running(server) as port:
        sock = raw_connect(port)          # mid-request: half a body, then gone
        sock.sendall(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
        sock.close()
        sock = raw_connect(port)          # gone while the handler is paused
        sock.sendall(b"GET /gone HTTP/1.1\r\nHost: h\r\n\r\n")
        time.sleep(0.05)
        sock.close()
        sock = raw_connect(port)          # gone mid-response (8 MiB not read), with a reset
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: h\r\n\r\n")
        sock.recv(1000)
        sock.close()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and server._connection_count() > 0:
            time.sleep(0.05)
        assert server._connection_count() == 0   # every connection cleaned up
        assert get(port, "/alive")[0] == 200
    assert events["request-started"] == 4
    assert events["request-aborted"] >= 1
    assert events["request-finished"] + events["request-aborted"] == 4


def test_signals_in_order():
    events = []
    server = minisoup.Server()
    for name in ("request-started", "request-read", "request-finished"):
        server.connect(name, lambda s, msg, n=name: events.append(n))
    server.add_handler(None, text_handler())
    with running(server) as port:
        get(port, "/")
        time.sleep(0.05)
    assert events == ["request-started", "request-read", "request-finished"]
    handler_id = server.connect("request-started", lambda *a: None)
    server.disconnect(handler_id)
    with pytest.raises(ValueError):
        server.connect("no-such-signal", lambda *a: None)


def test_remove_handler_and_destroy_notifiers():
    destroyed = []
    server = minisoup.Server()
    server.add_handler("/x", text_handler(), "first", destroyed.append)
    server.add_handler("/x", text_handler(), "second", destroyed.append)
    assert destroyed == ["first"]
    server.add_early_handler("/x", lambda *a: None, "early", destroyed.append)
    server.add_websocket_handler("/x", None, None, lambda *a: None, "ws", destroyed.append)
    server.remove_handler("/x")
    assert sorted(destroyed) == ["early", "first", "second", "ws"]
    server.add_handler("/y", text_handler(), "y", destroyed.append)
    server.listen_local(0)
    server.disconnect()
    assert destroyed[-1] == "y" and server.get_listeners() == []


def test_header_injection_from_handler_is_refused():
    server = minisoup.Server()

    def handler(server_, msg, path, query, ud):
        msg.get_response_headers().append("X-Evil", "a\r\nSet-Cookie: pwned=1")

    server.add_handler(None, handler)
    with running(server) as port:
        status, body, resp = get(port, "/")
    assert status == 500 and resp.getheader("Set-Cookie") is None


def test_content_type_injection_is_refused_whether_or_not_the_headers_were_made():
    server = minisoup.Server()

    def handler(server_, msg, path, query, ud):
        if path == "/made":
            msg.get_response_headers()
        msg.set_status(200)
        msg.set_response("text/plain\r\nSet-Cookie: pwned=1", "x")

    server.add_handler(None, handler)
    with running(server) as port:
        for path in ("/", "/made"):
            status, body, resp = get(port, path)
            assert status == 500 and resp.getheader("Set-Cookie") is None


def test_listen_variants_and_uris():
    server = minisoup.Server()
    server.listen(("127.0.0.1", 0))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(5)
    server.listen_socket(sock)
    if socket.has_ipv6:
        try:
            server.listen(("::1", 0))
        except OSError:
            pass
    uris = server.get_uris()
    assert all(u.startswith("http://") and not u.endswith(":0/") for u in uris)
    server.add_handler(None, text_handler("v"))
    with running(server):
        for uri in uris:
            host, port = uri[len("http://"):-1].rsplit(":", 1)
            conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=5)
            conn.request("GET", "/")
            assert conn.getresponse().read() == b"v"
            conn.close()


def test_client_that_never_reads_its_response_is_cut_after_idle_timeout(caplog):
    server = minisoup.Server(idle_timeout=0.4)
    server.add_handler(None, text_handler("x" * (16 << 20)))
    with running(server) as port, caplog.at_level(logging.INFO, "minisoup"):
        sock = raw_connect(port)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200")   # the response has begun
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and server._connection_count():
            time.sleep(0.05)
        assert server._connection_count() == 0
        sock.close()
    assert any("response not read" in r.getMessage() for r in caplog.records)


def test_internal_error_closes_the_connection_and_the_worker_keeps_serving(monkeypatch, caplog):
    from minisoup import connection
    server = minisoup.Server()
    server.add_handler(None, text_handler())
    original = connection.HTTPConnection._start_request

    def broken(self, req):
        if req.target == "/bug":
            raise RuntimeError("bug in the server")
        return original(self, req)

    monkeypatch.setattr(connection.HTTPConnection, "_start_request", broken)
    with running(server) as port, caplog.at_level(logging.ERROR, "minisoup"):
        sock = raw_connect(port)
        sock.sendall(b"GET /bug HTTP/1.1\r\nHost: h\r\n\r\n")
        assert recv_until_closed(sock, timeout=3) == b""
        sock.close()
        assert get(port, "/fine")[0] == 200
    assert any("internal error" in r.getMessage() for r in caplog.records)


def test_body_trickled_below_the_minimum_rate_is_cut(caplog):
    # R-U-Dead-Yet: each byte comes well within request_timeout, but the body as a whole
    # crawls; it is cut once it falls behind MIN_BODY_RATE after request_timeout.
    server = minisoup.Server(request_timeout=0.5)
    server.add_handler(None, text_handler())
    with running(server) as port, caplog.at_level(logging.INFO, "minisoup"):
        sock = raw_connect(port)
        sock.sendall(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n")
        start = time.monotonic()
        cut = False
        while time.monotonic() - start < 5:
            try:
                sock.sendall(b"x")
            except OSError:
                cut = True
                break
            time.sleep(0.2)
            if server._connection_count() == 0:
                cut = True
                break
        assert cut and time.monotonic() - start < 3
        sock.close()
        assert get(port, "/")[0] == 200
    assert any("slower than" in r.getMessage() for r in caplog.records)


def test_slow_but_steady_body_is_not_cut():
    server = minisoup.Server(request_timeout=0.3)
    server.add_handler(None, lambda s, msg, *a: (msg.set_status(200),
                                                 msg.set_response("text/plain", str(len(msg.get_request_body())))))
    with running(server) as port:
        sock = raw_connect(port)
        sock.sendall(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 20000\r\n\r\n")
        for _ in range(10):             # 2 KB every 0.1 s: 20 KB/s, above the minimum rate
            sock.sendall(b"y" * 2000)
            time.sleep(0.1)
        data = b""
        while not data.endswith(b"20000"):
            chunk = sock.recv(1000)
            assert chunk, "connection closed before the response: %r" % data
            data += chunk
        assert data.startswith(b"HTTP/1.1 200 ")
        sock.close()


def test_listen_local_covers_ipv4_and_ipv6_loopback_on_one_port():
    server = minisoup.Server()
    server.add_handler(None, text_handler("both"))
    server.listen_local(0)
    uris = server.get_uris()
    port = server.get_listeners()[0].getsockname()[1]
    assert uris[0] == "http://127.0.0.1:%d/" % port
    try:
        socket.socket(socket.AF_INET6).close()
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
        has_ipv6 = True
    except OSError:
        has_ipv6 = False
    if has_ipv6:
        assert uris == ["http://127.0.0.1:%d/" % port, "http://[::1]:%d/" % port]
    with running(server):
        for host in ["127.0.0.1"] + (["::1"] if has_ipv6 else []):
            conn = http.client.HTTPConnection(host, port, timeout=5)
            conn.request("GET", "/")
            assert conn.getresponse().read() == b"both"
            conn.close()


# -- issue 14: hostile inputs over real sockets ------------------------------------------

def test_dot_dot_made_by_decoding_slash_cannot_slip_past_a_guarded_path():
    # Regression (issue 14, item 4): "/x/..%2Fadmin" reached the default handler with
    # path "/x/../admin" (dot segments were removed before %2F was decoded). libsoup 3
    # answers 400 to it, as to "/public%2F..%2Fadmin" and "/admin%2f..%2f".
    reached = []

    def default(server_, msg, path, query, ud):
        reached.append(path)
        msg.set_response("text/plain", "public")
        msg.set_status(200)

    server = minisoup.Server()
    server.add_early_handler("/admin", lambda s_, msg, path, q, ud: msg.set_status(401))
    server.add_handler("/admin", text_handler("secret"))
    server.add_handler(None, default)
    with running(server) as port:
        for target in (b"/x/..%2Fadmin", b"/public%2F..%2Fadmin", b"/admin%2f..%2f",
                       b"/x/%2e%2e%2fadmin", b"/x/..%2fadmin/y"):
            status, body = raw_status(port, b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n")
            assert status == 400, target
        assert raw_status(port, b"GET /x/.%2Fadmin HTTP/1.1\r\nHost: h\r\n"
                          b"Connection: close\r\n\r\n") == (200, b"public")
    assert reached == ["/x/./admin"]


def test_invalid_host_is_400_and_valid_ones_are_served():
    # Regression (issue 14, item 5): "Host: a, b" and "Host: a b/c@d" got 200.
    hosts = []

    def handler(server_, msg, path, query, ud):
        hosts.append(msg.get_uri().netloc)
        msg.set_response("text/plain", "ok")
        msg.set_status(200)

    server = minisoup.Server()
    server.add_handler(None, handler)
    with running(server) as port:
        for host in (b"a, b", b"a b/c@d", b"user@h", b"h/x", b"h:port", b"[::1"):
            status, _ = raw_status(port, b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
            assert status == 400, host
        for host in (b"h", b"h:8080", b"[::1]:8080", b"127.0.0.1", b""):
            status, _ = raw_status(port, b"GET / HTTP/1.1\r\nHost: " + host
                                   + b"\r\nConnection: close\r\n\r\n")
            assert status == 200, host
    assert hosts == ["h", "h:8080", "[::1]:8080", "127.0.0.1", ""]


def test_absolute_form_with_a_query_and_no_path():
    # Regression (issue 14, item 12): "GET http://h?a=b" gave host "h?a=b" and no query.
    seen = []

    def handler(server_, msg, path, query, ud):
        seen.append((path, query, msg.get_uri().netloc, msg.get_uri().query))
        msg.set_response("text/plain", "ok")
        msg.set_status(200)

    server = minisoup.Server()
    server.add_handler(None, handler)
    with running(server) as port:
        status, _ = raw_status(port, b"GET http://h?a=b HTTP/1.1\r\nHost: x\r\n"
                               b"Connection: close\r\n\r\n")
        assert status == 200
    assert seen == [("/", {"a": "b"}, "h", "a=b")]


def test_empty_transfer_coding_elements_are_ignored_over_a_socket():
    # Regression (issue 14, item 13): ",chunked" got 501 (RFC 9110 §5.6.1).
    bodies = []

    def handler(server_, msg, path, query, ud):
        bodies.append(bytes(msg.get_request_body()))
        msg.set_response("text/plain", "ok")
        msg.set_status(200)

    server = minisoup.Server()
    server.add_handler(None, handler)
    with running(server) as port:
        for value in (b",chunked", b"chunked,", b" , chunked , "):
            status, _ = raw_status(port, b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: " + value
                                   + b"\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
            assert status == 200, value
    assert bodies == [b"abc"] * 3


def test_date_and_server_are_set_before_the_handler_as_libsoup_does():
    # libsoup adds Server and Date to the response headers before the handlers run (a
    # handler sees them, may replace them, and an append adds a second field); an error
    # answered after cleanup_response() (a handler that raised) still carries them.
    seen = []

    def handler(server, msg, path, query, user_data):
        headers = msg.get_response_headers()
        seen.append((headers.get_one("Server"), headers.get_one("Date") is not None))
        if path == "/mine":
            headers.replace("Date", "Thu, 01 Jan 1970 00:00:00 GMT")
            headers.append("Server", "app/1")
        if path == "/raise":
            raise RuntimeError("boom")
        msg.set_response("text/plain", "ok")
        msg.set_status(200)

    server = minisoup.Server(server_header="unit/2")
    server.add_handler("/", handler)
    with running(server) as port:
        status, _, resp = get(port, "/")
        assert status == 200 and resp.getheader("Server") == "unit/2" and resp.getheader("Date")
        _, _, resp = get(port, "/mine")
        assert resp.getheader("Date") == "Thu, 01 Jan 1970 00:00:00 GMT"
        assert resp.headers.get_all("Server") == ["unit/2", "app/1"]
        status, _, resp = get(port, "/raise")
        assert status == 500 and resp.getheader("Server") == "unit/2" and resp.getheader("Date")
    assert seen == [("unit/2", True)] * 3
    server = minisoup.Server(server_header=None)
    server.add_handler("/", handler)
    with running(server) as port:
        _, _, resp = get(port, "/")
        assert resp.getheader("Server") is None and resp.getheader("Date")
    assert seen[-1] == (None, True)


def _addresses_seen(server, connect_to):
    """(local address, TCP_NODELAY of the connection's socket) as a handler sees them."""
    seen = []

    def handler(server, msg, path, query, user_data):
        sock = msg.get_socket()
        seen.append((msg.get_local_address(),
                     sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))
        msg.set_response("text/plain", "ok")
        msg.set_status(200)

    server.add_handler("/", handler)
    with running(server) as port:
        for _ in range(2):  # the first connection and a later one (the accept path's probe)
            with socket.create_connection((connect_to, port), timeout=5) as sock:
                sock.settimeout(5)
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert recv_until_closed(sock).startswith(b"HTTP/1.1 200")
    return port, seen


def test_local_address_and_nodelay_on_a_listener_bound_to_one_address():
    server = minisoup.Server()
    server.listen(("127.0.0.1", 0))
    port, seen = _addresses_seen(server, "127.0.0.1")
    assert [local for local, _ in seen] == [("127.0.0.1", port)] * 2
    assert all(nodelay for _, nodelay in seen)  # small responses are not held by Nagle


def test_local_address_on_a_wildcard_listener_is_the_address_connected_to():
    # Bound to 0.0.0.0, the listener's own address says nothing: each connection's does.
    server = minisoup.Server()
    server.listen(("0.0.0.0", 0))
    port, seen = _addresses_seen(server, "127.0.0.1")
    assert [local for local, _ in seen] == [("127.0.0.1", port)] * 2
    assert all(nodelay for _, nodelay in seen)


def test_nodelay_is_set_on_connections_of_a_listener_given_without_it():
    # listen_socket(): a socket made by the application, TCP_NODELAY off.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    assert not sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    server = minisoup.Server()
    server.listen_socket(sock)
    port, seen = _addresses_seen(server, "127.0.0.1")
    assert all(nodelay for _, nodelay in seen)
