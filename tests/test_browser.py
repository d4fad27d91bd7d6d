"""The demo (``make run``) in a real browser: headless Chromium, driven over its DevTools
protocol with minisoup's own WebSocket client. Skipped where no Chromium is installed
(Debian: ``apt-get install chromium``); nothing else is needed.

Two tabs join the chat room of a server with 2 workers; each sends a line; each tab
must show every line, tagged with the worker that relayed it, and the page's echo must
work too.
"""

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest

import minisoup
from serverproc import MinisoupProcess

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
T = 20.0


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Browser:
    """Headless Chromium with a DevTools port; each tab is driven through its WebSocket."""

    def __init__(self, binary):
        self.port = _free_port()
        self.profile = tempfile.mkdtemp(prefix="minisoup-chromium-")
        self.proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=%d" % self.port,
             "--user-data-dir=" + self.profile, "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.tabs = []
        self._id = 0
        deadline = time.monotonic() + T
        while True:
            try:
                urllib.request.urlopen("http://127.0.0.1:%d/json/version" % self.port, timeout=1)
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.close()
                    raise RuntimeError("Chromium's DevTools port did not open")
                time.sleep(0.1)

    def open(self, url):
        req = urllib.request.Request("http://127.0.0.1:%d/json/new?%s" % (self.port, url),
                                     method="PUT")
        info = json.load(urllib.request.urlopen(req, timeout=T))
        tab = minisoup.websocket_connect(info["webSocketDebuggerUrl"], timeout=T)
        self.tabs.append(tab)
        return tab

    def call(self, tab, method, **params):
        self._id += 1
        tab.send_text(json.dumps({"id": self._id, "method": method, "params": params}))
        deadline = time.monotonic() + T
        while time.monotonic() < deadline:
            _, data = tab.recv(timeout=T)
            message = json.loads(data)
            if message.get("id") == self._id:
                assert "error" not in message, message
                return message["result"]
        raise TimeoutError(method)

    def evaluate(self, tab, expression):
        return self.call(tab, "Runtime.evaluate", expression=expression,
                         returnByValue=True)["result"].get("value")

    def wait_for(self, tab, expression, what):
        deadline = time.monotonic() + T
        while time.monotonic() < deadline:
            value = self.evaluate(tab, expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError("timed out waiting for " + what)

    def close(self):
        for tab in self.tabs:
            try:
                tab.abort()
            except OSError:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(T)
        # Chromium's helper processes may still be writing there as they die.
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture
def browser():
    binary = next((shutil.which(n) for n in CHROMIUM_NAMES if shutil.which(n)), None)
    if binary is None:
        pytest.skip("no Chromium (%s) is installed" % ", ".join(CHROMIUM_NAMES))
    b = Browser(binary)
    try:
        yield b
    finally:
        b.close()


LOG = 'document.getElementById("log").innerText'


def _send(browser, tab, text):
    browser.evaluate(tab, 'document.getElementById("text").value = %s;'
                          'document.getElementById("form").requestSubmit(); true'
                     % json.dumps(text))


def test_demo_chat_room_spans_the_workers_in_a_browser(browser):
    with MinisoupProcess(workers=2) as server:
        server.start(workers_ready=2)
        url = "http://127.0.0.1:%d/chat" % server.port
        tabs = [browser.open(url) for _ in range(2)]
        for tab in tabs:
            browser.wait_for(tab, LOG + '.includes("you joined the room")', "the room")
        for i, tab in enumerate(tabs):
            _send(browser, tab, "hello from tab %d" % i)
        for tab in tabs:
            log = browser.wait_for(tab, "(%s.match(/hello from tab/g) || []).length == 2 && %s"
                                   % (LOG, LOG), "both lines")
            for i in range(2):
                assert any(line.startswith("< [worker ") and line.endswith("hello from tab %d" % i)
                           for line in log.splitlines()), log
        shot = browser.call(tabs[0], "Page.captureScreenshot", format="png")
        assert base64.b64decode(shot["data"]).startswith(b"\x89PNG")


def test_demo_echo_page_in_a_browser(browser):
    with MinisoupProcess(workers=1) as server:
        server.start(workers_ready=1)
        tab = browser.open("http://127.0.0.1:%d/" % server.port)
        browser.wait_for(tab, LOG + '.includes("connected")', "the echo socket")
        _send(browser, tab, "héllo")
        log = browser.wait_for(tab, LOG + '.includes("< héllo") && ' + LOG, "the echo")
        assert "> héllo" in log
