"""APP functions for the publish/subscribe tests (``python -m minisoup pubsub_apps:NAME``)."""

import logging
import os

from minisoup import WebsocketDataType

WRITE_BUFFER_LIMIT = 256 * 1024
test_log = logging.getLogger("minisoup.test")


def room(server):
    """``/room/TOPIC``: a WebSocket that sends ``"hello ID PID"`` on open and subscribes to
    TOPIC (``room`` by default). A text message ``"flood N SIZE TAG"`` makes this worker
    publish N messages ``"I WORKER_ID TAG xxx..."`` of about SIZE bytes at once; ``"all TEXT"`` is
    published to everyone; any other message is published with ``exclude=`` the sender.
    A binary message is published as binary to everyone. A listener on ``room`` logs
    ``heard room DATA in worker ID``."""
    server.write_buffer_limit = WRITE_BUFFER_LIMIT
    server.add_websocket_handler("/room", None, None, _join)
    server.subscribe("room", _heard, "room")


def _join(server, msg, path, connection, user_data):
    topic = path[len("/room/"):] or "room"
    connection.subscribe(topic)
    connection.connect("message", _said, server, topic)
    connection.send_text("hello %d %d" % (server.get_worker_id(), os.getpid()))


def _said(connection, data_type, data, server, topic):
    if data_type == WebsocketDataType.BINARY:
        server.publish(topic, data)
    elif data.startswith("flood "):
        _, count, size, tag = data.split()
        worker = server.get_worker_id()
        padding = "x" * int(size)
        for i in range(int(count)):
            server.publish(topic, "%d %d %s %s" % (i, worker, tag, padding))
    elif data.startswith("all "):
        server.publish(topic, data[4:])
    else:
        server.publish(topic, data, exclude=connection)


def _heard(server, topic, data, expected):
    assert topic == expected
    test_log.info("heard %s %s in worker %d", topic, data, server.get_worker_id())
