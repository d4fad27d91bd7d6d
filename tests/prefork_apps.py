"""APP functions for the pre-fork and CLI tests (``python -m minisoup prefork_apps:NAME``)."""

import logging
import os
import sys

from minisoup import demo

BURST_MESSAGES = 300
BURST_SIZE = 4096


def whoami(server):
    """The demo, plus ``/whoami``: a WebSocket that sends ``"ID PID"`` on open and
    ``/burst``: a WebSocket that sends ``"start"`` then ``BURST_MESSAGES`` messages at once."""
    demo.register(server)
    server.add_websocket_handler("/whoami", None, None, _send_identity)
    server.add_websocket_handler("/burst", None, None, _send_burst)


def _send_identity(server, msg, path, connection, user_data):
    connection.send_text("%d %d" % (server.get_worker_id(), os.getpid()))


def _send_burst(server, msg, path, connection, user_data):
    # All queued in this one callback: a signal is dispatched only after it returns.
    connection.send_text("start")
    padding = "x" * BURST_SIZE
    for i in range(BURST_MESSAGES):
        connection.send_text("%d %s" % (i, padding))


def crash_at_start(server):
    """Every worker exits (status 3) as soon as its loop starts: a crash loop."""
    demo.register(server)
    server.call_soon(sys.exit, 3)


def raises(server):
    """Raises while registering (in the master, before any fork)."""
    raise RuntimeError("this app is broken on purpose")


not_callable = 42


def slow(server):
    """``whoami`` plus ``/slow`` (answered 0.5 s later from a timer, the loop stays free),
    ``/block`` (blocks the worker's loop for 2 s), ``/spin`` (keeps it busy computing for
    ``SPIN_S`` seconds) and ``/hang`` (blocks it for a minute: its heartbeat stops)."""
    whoami(server)
    server.add_handler("/slow", _slow)
    server.add_handler("/hang", _hang)
    server.add_handler("/block", _block)
    server.add_handler("/spin", _spin)


def _slow(server, msg, path, query, user_data):
    msg.pause()
    logging.getLogger("minisoup.test").info("slow request paused")

    def answer():
        msg.set_status(200)
        msg.set_response("text/plain", "slow answer from worker %d pid %d\n"
                         % (server.get_worker_id(), os.getpid()))
        msg.unpause()
    server.call_later(0.5, answer)


def _block(server, msg, path, query, user_data):
    import time
    time.sleep(2)  # holds this worker's loop: its other connections wait
    msg.set_status(200)
    msg.set_response("text/plain", "blocked worker %d\n" % server.get_worker_id())


SPIN_S = 6.0


def _spin(server, msg, path, query, user_data):
    import time
    deadline = time.monotonic() + SPIN_S
    n = 0
    while time.monotonic() < deadline:  # CPU-bound: the loop runs nothing meanwhile
        n += 1
    msg.set_status(200)
    msg.set_response("text/plain", "spun %d in worker %d\n" % (n, server.get_worker_id()))


def _hang(server, msg, path, query, user_data):
    import time
    time.sleep(60)


# -- the worker-started signal (post-fork hook) --------------------------------------------
STARTED = []  # (worker id, pid) seen by record_start in this process


def record_start(server):
    """A post-fork hook (``--post-fork prefork_apps:record_start``): note which worker
    this process is, as ``get_worker_id()`` says at that moment."""
    STARTED.append((server.get_worker_id(), os.getpid()))
    logging.getLogger("minisoup.test").info("worker-started: worker %d pid %d",
                                            server.get_worker_id(), os.getpid())


def started(server):
    """``whoami`` plus ``/started``: ``"ID PID|ID PID;..."``, this worker then what
    ``record_start`` recorded in this process."""
    whoami(server)
    server.add_handler("/started", _started)


def started_connected(server):
    """``started``, with ``record_start`` connected by the app itself."""
    started(server)
    server.connect("worker-started", record_start)


def _started(server, msg, path, query, user_data):
    msg.set_status(200)
    msg.set_response("text/plain", "%d %d|%s" % (server.get_worker_id(), os.getpid(),
                                                 ";".join("%d %d" % s for s in STARTED)))
