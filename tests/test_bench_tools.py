"""The bench's C tools keep working: tools/wsload.c (built here, where a C compiler exists)
drives a minisoup server briefly in each of its modes, and tools/anchor_libsoup_c.c (where
libsoup-3.0-dev is there too) starts, prints its port and echoes."""

import json
import os
import shutil
import subprocess
import sys

import pytest

import minisoup

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
