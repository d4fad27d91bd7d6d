"""The bench's C tools keep working: tools/wsload.c (built here, where a C compiler exists)
drives a minisoup server briefly in each of its modes, and tools/anchor_libsoup_c.c (where
libsoup-3.0-dev is there too) starts, prints its port and echoes; the peers table's floor row
(tools/bench_servers.py raw-http) answers HTTP and wsload's handshake cycles."""

import base64
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

import minisoup
from minisoup.handshake import compute_accept

from conftest import recv_until_closed
from wsraw import handshake_request, read_response_head

TOOLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools")
sys.path.insert(0, TOOLS)

import peer_tools  # noqa: E402  (tools/ is on the path above)

RUN_TIMEOUT_S = 30.0

pytestmark = pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")),
                                reason="no C compiler")


@pytest.fixture(scope="module")
def wsload(tmp_path_factory):
    path, why = peer_tools.build_wsload(str(tmp_path_factory.mktemp("bench-tools")))
    assert path, why
    return path


def echo_server():
    def on_echo(server, msg, path, conn, user_data):
        conn.connect("message", lambda c, kind, data: c.send_message(kind, data))

    server = minisoup.Server()
    server.add_websocket_handler("/echo", None, None, on_echo)
    return server


def run_wsload(wsload, *args):
    """wsload's output lines, parsed; fails on a non-zero exit."""
    out = subprocess.run([wsload] + [str(a) for a in args], capture_output=True, text=True,
                         timeout=RUN_TIMEOUT_S)
    assert out.returncode == 0, out.stderr
    return [json.loads(text) for text in out.stdout.splitlines()]


def test_wsload_echo_against_minisoup(wsload, serve):
    with serve(echo_server()) as port:
        rows = run_wsload(wsload, "echo", "127.0.0.1", port, "/echo", 4, 2, 64, 1)
    assert rows[0] == {"mode": "echo", "window": "start"}
    assert rows[1] == {"mode": "echo", "window": "end"}
    result = rows[2]
    assert result["messages"] > 0 and result["msgs_per_sec"] > 0
    assert result["errors"] == 0 and result["bad_length"] == 0
    assert result["conns_alive"] == 4 and result["closed_clean"] == 4
    assert result["per_conn_min"] > 0
    assert 0 < result["p50_us"] <= result["p99_us"] <= result["max_us"]


def test_wsload_handshakes_against_minisoup(wsload, serve):
    with serve(echo_server()) as port:
        rows = run_wsload(wsload, "hs", "127.0.0.1", port, "/echo", 2, 40, 10)
    assert [r.get("window") for r in rows[:2]] == ["start", "end"]
    assert rows[2]["handshakes"] == 40 and rows[2]["errors"] == 0


@pytest.mark.parametrize("heads", ["same", "distinct"])
def test_wsload_handshakes_draw_a_key_each_and_vary_the_head_when_asked(wsload, serve, heads):
    # A fresh key per connection, as RFC 6455 asks of clients (the accept is checked, so a
    # wrong SHA-1 would count errors); HEADS=distinct adds a field of each cycle's own.
    seen = []

    def record(server, msg, path, conn, user_data):
        headers = msg.get_request_headers()
        seen.append((headers.get_one("Sec-WebSocket-Key"), headers.get_one("X-Wsload-Cycle")))

    server = minisoup.Server()
    server.add_websocket_handler("/echo", None, None, record)
    with serve(server) as port:
        rows = run_wsload(wsload, "hs", "127.0.0.1", port, "/echo", 2, 30, 10, heads)
    assert rows[2]["handshakes"] == 30 and rows[2]["errors"] == 0
    keys = [key for key, _ in seen]
    assert len(set(keys)) == 30 and all(len(base64.b64decode(key)) == 16 for key in keys)
    cycles = [cycle for _, cycle in seen]
    if heads == "same":
        assert cycles == [None] * 30
    else:
        assert sorted(int(cycle) for cycle in cycles) == list(range(30))


def test_wsload_refuses_an_unknown_heads_argument(wsload):
    out = subprocess.run([wsload, "hs", "127.0.0.1", "1", "/", "1", "1", "1", "alike"],
                         capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert out.returncode == 2 and "HEADS" in out.stderr


def test_wsload_idle_against_minisoup(wsload, serve):
    with serve(echo_server()) as port:
        rows = run_wsload(wsload, "idle", "127.0.0.1", port, "/echo", 20, 0)
    assert rows[0]["open"] == 20 and rows[0]["errors"] == 0
    assert rows[1]["done"] == 1 and rows[1]["closed_by_server"] == 0
    assert rows[1]["closed_clean"] == 20


def test_wsload_counts_a_refused_upgrade_as_an_error(wsload, serve):
    with serve(echo_server()) as port:   # no handler at /nowhere: 404, not 101
        rows = run_wsload(wsload, "hs", "127.0.0.1", port, "/nowhere", 1, 3, 10)
    assert rows[-1]["handshakes"] == 0 and rows[-1]["errors"] == 3


def test_the_floor_server_answers_wsload_handshakes_and_http(wsload):
    """tools/bench_servers.py raw-http, the floor row of the peers table: constant bytes for a
    GET, and for an upgrade a 101 with the right accept key, then a close frame and EOF."""
    proc = subprocess.Popen([sys.executable, os.path.join(TOOLS, "bench_servers.py"),
                             "raw-http"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        line = proc.stdout.readline().decode()
        assert line.startswith("PORT ")
        port = int(line.split()[1])
        with socket.create_connection(("127.0.0.1", port), timeout=RUN_TIMEOUT_S) as sock:
            sock.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
            got = b""
            while got.count(b"hello world\n") < 2:
                chunk = sock.recv(4096)
                assert chunk, got
                got += chunk
        assert got.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: 12\r\n" in got
        with socket.create_connection(("127.0.0.1", port), timeout=RUN_TIMEOUT_S) as sock:
            key = base64.b64encode(os.urandom(16)).decode()
            sock.sendall(handshake_request("/echo", key=key))
            status, headers, rest = read_response_head(sock, RUN_TIMEOUT_S)
            assert status == 101 and rest == b""
            assert headers["sec-websocket-accept"] == compute_accept(key)
            sock.sendall(b"\x88\x82\x00\x00\x00\x00\x03\xe8")   # masked close 1000
            assert recv_until_closed(sock, timeout=RUN_TIMEOUT_S) == b"\x88\x02\x03\xe8"
        rows = run_wsload(wsload, "hs", "127.0.0.1", port, "/echo", 2, 40, 10)
        assert rows[-1]["handshakes"] == 40 and rows[-1]["errors"] == 0
    finally:
        proc.kill()
        proc.wait(RUN_TIMEOUT_S)
        proc.stdout.close()


@pytest.mark.skipif(not peer_tools.libsoup_flags()[0], reason="no libsoup-3.0 for pkg-config")
def test_anchor_libsoup_c_prints_its_port_and_echoes(wsload, tmp_path):
    anchor, why = peer_tools.build_anchor(str(tmp_path))
    assert anchor, why
    proc = subprocess.Popen([anchor, "--port", "0", "--no-deflate"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        line = proc.stdout.readline().decode()
        assert line.startswith("PORT ")
        rows = run_wsload(wsload, "echo", "127.0.0.1", int(line.split()[1]), "/", 2, 1, 64, 1)
        assert rows[-1]["messages"] > 0 and rows[-1]["errors"] == 0
    finally:
        proc.kill()
        proc.wait(RUN_TIMEOUT_S)
        proc.stdout.close()


def fanout_server():
    """The bench's fan-out application (tools/bench_servers.py's): subscribers on /fanout,
    greeted ``W<worker id>``; each message on /fanout-trigger is published to them all."""
    def on_subscriber(server, msg, path, conn, user_data):
        conn.subscribe("room")
        conn.send_text("W%d" % server.get_worker_id())

    def on_trigger(server, msg, path, conn, user_data):
        conn.connect("message", lambda c, kind, data: server.publish("room", data))

    server = minisoup.Server()
    server.add_websocket_handler("/fanout-trigger", None, None, on_trigger)
    server.add_websocket_handler("/fanout", None, None, on_subscriber)
    return server


def read_line(proc, timeout=RUN_TIMEOUT_S):
    """One line of ``proc``'s stdout, or a failure after ``timeout`` seconds."""
    import select
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no line from wsload within %.0f s" % timeout
    return proc.stdout.readline().decode()


def test_wsload_fanout_accounts_every_publication(wsload, serve):
    import loadgen   # tools/ is on the path (above)
    conns = 6
    # The third publication is larger than wsload's read buffer: it spans reads.
    payloads = [b"P0 " + b"x" * 97, b"P1 " + b"y" * 200, b"P2 " + b"z" * 70000]
    with serve(fanout_server()) as port:
        proc = subprocess.Popen([wsload, "fanout", "127.0.0.1", str(port), "/fanout", str(conns),
                                 "0", "0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        trigger = None
        try:
            ready = read_line(proc)
            assert ready.startswith("READY ")
            assert json.loads(ready[6:]) == {"conns": conns, "workers": {"0": conns}}
            import socket
            import time
            trigger = socket.create_connection(("127.0.0.1", port), timeout=RUN_TIMEOUT_S)
            loadgen.ws_upgrade(trigger, "127.0.0.1", port, "/fanout-trigger")
            for seq, payload in enumerate(payloads):
                sent_real, sent_mono = time.time(), time.monotonic()
                trigger.sendall(loadgen.client_frame(loadgen.OP_TEXT, payload))
                fields = read_line(proc).split(" ", 6)
                assert fields[:2] == ["GOT", str(seq)] and int(fields[5]) == conns
                first, last, last_read = (float(f) for f in fields[2:5])
                # Kernel receive timestamps (wall clock), then the monotonic clock.
                assert sent_real - 1 < first <= last < sent_real + 10
                assert sent_mono <= last_read < sent_mono + 10
                spans = json.loads(fields[6])
                assert list(spans) == ["0"] and spans["0"] == [first, last]
            proc.stdin.write(b"END\n")
            proc.stdin.flush()
            assert json.loads(read_line(proc)) == {"errors": 0, "conns": conns}
            assert proc.wait(RUN_TIMEOUT_S) == 0
        finally:
            if trigger is not None:
                trigger.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait(RUN_TIMEOUT_S)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                stream.close()
