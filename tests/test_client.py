"""The blocking client (minisoup.client) against a real server: its declared seams."""

import socket
import threading
import time

import pytest

import minisoup
from conftest import running

T = 5.0


def echo_server():
    opened = threading.Event()

    def handler(server, msg, path, conn, user_data):
        conn.connect("message", lambda c, kind, data: c.send_message(kind, data))
        opened.set()

    server = minisoup.Server()
    server.add_websocket_handler("/echo", None, None, handler)
    return server, opened


def test_a_timer_already_due_does_not_drop_the_connection():
    # A timer due when the client starts waiting made it read with timeout 0: a
    # non-blocking recv() whose BlockingIOError was taken for a lost connection.
    server, opened = echo_server()
    with running(server) as port:
        client = minisoup.websocket_connect("ws://127.0.0.1:%d/echo" % port, timeout=T)
        try:
            assert opened.wait(T)
            client.connection.set_keepalive_interval(0.001)
            time.sleep(0.05)                      # the ping timer is now overdue
            with pytest.raises(socket.timeout):   # nothing to read: a timeout, no loss
                client.recv(timeout=0.2)
            assert client.get_state() == minisoup.WebsocketState.OPEN
            assert client.pongs                   # the pings went out and were answered
            client.send_text("still here")
            assert client.recv() == (minisoup.WebsocketDataType.TEXT, "still here")
        finally:
            client.abort()


def test_abort_drops_the_connection_without_a_close_frame():
    closed = []
    seen = threading.Event()

    def handler(server, msg, path, conn, user_data):
        conn.connect("closed", lambda c: (closed.append(c.get_close_code()), seen.set()))

    server = minisoup.Server()
    server.add_websocket_handler("/", None, None, handler)
    with running(server) as port:
        client = minisoup.websocket_connect("ws://127.0.0.1:%d/" % port, timeout=T)
        client.abort()
        assert client.get_state() == minisoup.WebsocketState.CLOSED
        client.abort()                            # no effect the second time
        assert seen.wait(T)
    assert closed == [minisoup.CloseCode.ABNORMAL]   # 1006: the server got no close frame


def test_a_malformed_response_header_is_a_handshake_error():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def answer():
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nBad Name: x\r\n\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        with pytest.raises(minisoup.HandshakeError) as info:
            minisoup.websocket_connect("ws://127.0.0.1:%d/" % port, timeout=T)
        assert "Bad Name" in info.value.message
    finally:
        thread.join(T)
        listener.close()
