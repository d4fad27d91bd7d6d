"""The command line (``python -m minisoup``) and the built-in demo app."""

import argparse
import os
import signal
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import minisoup  # noqa: E402
from minisoup import WebsocketDataType  # noqa: E402
from minisoup.__main__ import main, parse_bind  # noqa: E402
from serverproc import ROOT, TESTS, MinisoupProcess, http_get  # noqa: E402


def run_cli(*args, timeout=10):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, TESTS, env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "minisoup"] + list(args), cwd=ROOT, env=env,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=timeout, universal_newlines=True)


def test_help_documents_every_option():
    result = run_cli("--help")
    assert result.returncode == 0
    for option in ("APP", "--bind", "HOST:PORT", "--workers", "--log-level", "--graceful-timeout",
                   "--worker-timeout", "--max-connections", "--print-uris", "--version",
                   "[::1]:8080", "HUP"):
        assert option in result.stdout, option


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)),
    ("localhost:0", ("localhost", 0)),
    ("[::1]:8080", ("::1", 8080)),
    (":9000", ("0.0.0.0", 9000)),
])
def test_parse_bind(text, expected):
    assert parse_bind(text) == expected


@pytest.mark.parametrize("text", ["8080", "::1:8080", "[::1]8080", "host:port", "h:70000", "[]:1"])
def test_parse_bind_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_bind(text)


def test_bad_bind_is_a_usage_error():
    result = run_cli("--bind", "nonsense")
    assert result.returncode == 2
    assert "expected HOST:PORT" in result.stderr


@pytest.mark.parametrize("app, message", [
    ("no_such_module_xyz:setup", "cannot import APP module 'no_such_module_xyz'"),
    ("prefork_apps:missing", "has no attribute 'missing'"),
    ("prefork_apps", "APP must be MODULE:FUNCTION"),
    ("prefork_apps:not_callable", "is not callable"),
    ("prefork_apps:raises", "raised while registering handlers"),
    ("prefork_broken_app:setup", "importing APP module 'prefork_broken_app' failed: "
                                 "RuntimeError: this module is broken on purpose"),
])
def test_bad_app_is_a_clear_error(app, message):
    result = run_cli(app, "--bind", "127.0.0.1:0", "--workers", "1")
    assert result.returncode == 1
    assert "minisoup: error:" in result.stderr
    assert message in result.stderr


def test_bad_app_in_process_returns_1(capsys):
    assert main(["no_such_module_xyz:setup", "--bind", "127.0.0.1:0"]) == 1
    assert "cannot import" in capsys.readouterr().err


def test_demo_serves_page_echo_and_worker():
    with MinisoupProcess(workers=1) as proc:
        proc.start(workers_ready=1)
        page = http_get(proc.port, "/")
        assert "<html" in page and "WebSocket" in page and "/echo" in page
        assert http_get(proc.port, "/worker").startswith("worker 1 pid ")
        with minisoup.websocket_connect("ws://127.0.0.1:%d/echo" % proc.port, timeout=5) as ws:
            ws.send_text("hello, soup")
            assert ws.recv(timeout=5) == (WebsocketDataType.TEXT, "hello, soup")
            ws.send_binary(b"\x00\xffbin")
            assert ws.recv(timeout=5) == (WebsocketDataType.BINARY, b"\x00\xffbin")
        # One access line per request, tagged with the worker that served it.
        proc.wait_log(r"\[worker 1 pid \d+\] INFO minisoup.access: .*\"GET /worker HTTP/1.1\" 200")
        proc.send(signal.SIGTERM)
        assert proc.wait_exit(5) == 0


def test_single_process_mode():
    with MinisoupProcess(workers=0) as proc:
        proc.start()
        assert http_get(proc.port, "/worker").startswith("worker 0 pid %d" % proc.pid)
        proc.send(signal.SIGTERM)
        assert proc.wait_exit(5) == 0
