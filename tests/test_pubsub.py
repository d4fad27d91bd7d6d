"""Publish/subscribe (SPEC section 9): the sans-I/O core, the relay in-process, and real
pre-forked servers (``python -m minisoup pubsub_apps:room``)."""

import logging
import os
import signal
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import minisoup  # noqa: E402
from minisoup.deflate import WebsocketExtensionDeflate  # noqa: E402
from minisoup.frames import FrameParser, frame_header  # noqa: E402
from minisoup.loop import Loop  # noqa: E402
from minisoup.pubsub import (FLUSH_RELAY_FROM, HELLO_PAYLOAD, MAX_TOPIC_SIZE,  # noqa: E402
                             RECORD_HELLO, PubSub, RecordParser, RelayProtocolError,
                             TopicRegistry, check_topic, encode_hello, encode_record)
from minisoup.relay import RELAY_PEER_BUFFER_LIMIT, RelayDirectory  # noqa: E402
from minisoup.websocket import (WebsocketConnection, WebsocketConnectionType,  # noqa: E402
                                WebsocketState)
from serverproc import MinisoupProcess  # noqa: E402
from test_websocket import FakeTransport  # noqa: E402
from wsraw import CLOSE, RawWebSocket  # noqa: E402

TEXT, BINARY = 1, 2
APP = "pubsub_apps:room"
needs_fork = pytest.mark.skipif(not hasattr(os, "fork") or not os.path.isdir("/proc"),
                                reason="pre-fork needs fork() and /proc (Linux)")


# -- the relay record ----------------------------------------------------------------------
def test_records_round_trip_in_any_split():
    records = [(TEXT, "room", "héllo".encode()), (BINARY, "t" * MAX_TOPIC_SIZE, b"\0" * 70000),
               (BINARY, "é", b"")]
    stream = b"".join(encode_record(t, topic.encode(), p) for t, topic, p in records)
    assert RecordParser().feed(stream) == records
    parser, got = RecordParser(), []
    for i in range(len(stream)):  # byte by byte
        got += parser.feed(stream[i:i + 1])
    assert got == records and parser.pending() == 0
    parser = RecordParser()
    assert parser.feed(stream[:-1]) == records[:2]
    assert parser.pending() == len(encode_record(BINARY, "é".encode(), b"")) - 1
    hello = encode_hello(7, 3)
    assert RecordParser().feed(hello) == [(RECORD_HELLO, "", HELLO_PAYLOAD.pack(7, 3))]


def test_record_parser_rejects_what_is_not_a_record():
    with pytest.raises(RelayProtocolError):
        RecordParser(max_record_size=100).feed(encode_record(TEXT, b"t", b"x" * 200)[:20])
    with pytest.raises(RelayProtocolError):
        RecordParser().feed(encode_record(7, b"t", b"x"))
    with pytest.raises(RelayProtocolError):
        RecordParser().feed(encode_record(TEXT, b"", b"x"))
    with pytest.raises(RelayProtocolError):
        RecordParser().feed(encode_record(TEXT, b"\xff", b"x"))
    with pytest.raises(RelayProtocolError):
        RecordParser().feed(encode_record(RECORD_HELLO, b"t", b"x"))


def test_topics_are_checked():
    assert check_topic("chat/é") == "chat/é".encode()
    for bad, exc in ((b"bytes", TypeError), (None, TypeError), ("", ValueError),
                     ("x" * (MAX_TOPIC_SIZE + 1), ValueError)):
        with pytest.raises(exc):
            check_topic(bad)


# -- the registry and the local fan-out --------------------------------------------------------
def test_registry_tracks_both_directions_and_drops_empty_topics():
    registry = TopicRegistry()
    a, b = object(), object()
    registry.subscribe(a, "x")
    registry.subscribe(a, "y")
    registry.subscribe(b, "x")
    registry.subscribe(b, "x")
    assert list(registry.connections("x")) == [a, b]
    assert registry.topics_of(a) == frozenset({"x", "y"})
    registry.unsubscribe(a, "y")
    registry.unsubscribe(a, "nothing")
    assert registry.connections("y") is None
    registry.forget(a)
    registry.forget(b)
    assert registry.connections("x") is None and registry.topics_of(a) == frozenset()


def server_conn(extensions=None, write_buffer_limit=0):
    transport = FakeTransport()
    conn = WebsocketConnection(transport, WebsocketConnectionType.SERVER, Loop(),
                               extensions=extensions, write_buffer_limit=write_buffer_limit)
    transport.set_protocol(conn)
    return conn, transport


def messages(transport):
    parser = FrameParser(require_mask=False)
    parser.feed(bytes(transport.sent))
    transport.sent.clear()
    out = []
    while True:
        frame = parser.next_frame()
        if frame is None:
            return out
        out.append((frame[0], bytes(frame[3])))


class Recorder:
    """A transport that keeps the buffers it is given, to see whether they are shared."""

    def __init__(self):
        self.parts = []

    def write(self, data):
        self.parts.append(data)

    def writelines(self, parts):
        self.parts.extend(parts)


def test_publication_is_framed_once_for_every_plain_subscriber():
    pubsub = PubSub(server=None)
    conns = [server_conn()[0] for _ in range(3)]
    recorders = []
    for conn in conns:
        conn.attach_pubsub(pubsub)
        conn.subscribe("room")
        conn.transport = recorder = Recorder()
        recorders.append(recorder)
    pubsub.publish("room", "hello", exclude=conns[1])
    assert recorders[1].parts == []
    assert recorders[0].parts == [frame_header(TEXT, 5) + b"hello"]
    assert recorders[0].parts[0] is recorders[2].parts[0]  # one frame, the same object
    big = b"\x01" * (64 * 1024)
    pubsub.publish("room", big)
    assert recorders[0].parts[1] is recorders[1].parts[0] and recorders[0].parts[2] is big


class EventRelay:
    """A relay that notes its calls in a shared list of events."""

    def __init__(self, events):
        self.events = events

    def send(self, record):
        self.events.append("relay send")

    def flush(self):
        self.events.append("relay flush")


class EventTransport(Recorder):
    def __init__(self, events):
        super().__init__()
        self.events = events

    def write(self, data):
        self.events.append("write")


def test_relay_is_flushed_before_a_large_local_fanout():
    # The other workers must get the record before this one spends its time on its own
    # subscribers, or they fan out only after it: no parallelism across workers.
    events = []
    pubsub = PubSub(server=None)
    pubsub.attach_relay(EventRelay(events))
    for _ in range(FLUSH_RELAY_FROM):
        conn = server_conn()[0]
        conn.attach_pubsub(pubsub)
        conn.subscribe("big")
        conn.transport = EventTransport(events)
    conn = server_conn()[0]
    conn.attach_pubsub(pubsub)
    conn.subscribe("small")
    conn.transport = EventTransport(events)
    pubsub.publish("big", "hello")
    assert events == ["relay send", "relay flush"] + ["write"] * FLUSH_RELAY_FROM
    del events[:]
    # A small topic keeps the batching: many publications, one write per worker per
    # loop iteration (the relay flushes the batch itself).
    pubsub.publish("small", "hello")
    assert events == ["relay send", "write"]


def test_compressed_subscriber_compresses_its_own_copy():
    plain, plain_t = server_conn()
    deflate = WebsocketExtensionDeflate(WebsocketConnectionType.SERVER)
    zipped, zipped_t = server_conn(extensions=[deflate])
    pubsub = PubSub(server=None)
    for conn in (plain, zipped):
        conn.attach_pubsub(pubsub)
        conn.subscribe("t")
    text = "compress me " * 100
    pubsub.publish("t", text)
    assert messages(plain_t) == [(TEXT, text.encode())]
    raw = bytes(zipped_t.sent)
    assert raw[0] & 0x40 and len(raw) < len(text)  # RSV1: compressed, and smaller


def test_subscribers_closing_or_over_their_limit():
    pubsub = PubSub(server=None)
    slow, slow_t = server_conn(write_buffer_limit=1000)
    ok, ok_t = server_conn()
    for conn in (slow, ok):
        conn.attach_pubsub(pubsub)
        conn.subscribe("t")
    slow_t.buffered = 5000
    pubsub.publish("t", b"data")
    assert slow.get_state() == WebsocketState.CLOSING
    assert messages(slow_t) == [(CLOSE, b"\x03\xf0write buffer limit exceeded")]
    assert messages(ok_t) == [(BINARY, b"data")]
    pubsub.publish("t", b"more")  # a closing subscriber: silently skipped
    assert messages(slow_t) == [] and messages(ok_t) == [(BINARY, b"more")]
    slow.connection_lost(None)
    pubsub.connection_closed(slow)
    assert slow.get_topics() == frozenset() and ok.get_topics() == frozenset({"t"})


def test_listeners_get_data_in_order_and_survive_one_that_raises(caplog):
    heard = []
    pubsub = PubSub(server="SERVER")

    def bad(server, topic, data):
        raise RuntimeError("boom")

    pubsub.add_listener("t", bad, ())
    handle = pubsub.add_listener("t", lambda *args: heard.append(args), ("u",))
    with caplog.at_level(logging.ERROR, logger="minisoup"):
        pubsub.publish("t", "one")
        pubsub.deliver_record(BINARY, "t", b"two")
    handle.cancel()
    handle.cancel()
    pubsub.publish("t", "three")
    assert heard == [("SERVER", "t", "one", "u"), ("SERVER", "t", b"two", "u")]
    assert "boom" in caplog.text


def test_subscribe_is_for_server_connections_and_publish_checks_its_data():
    transport = FakeTransport()
    client = WebsocketConnection(transport, WebsocketConnectionType.CLIENT, Loop())
    with pytest.raises(RuntimeError):
        client.subscribe("t")
    assert client.get_topics() == frozenset()
    pubsub = PubSub(server=None)
    with pytest.raises(TypeError):
        pubsub.publish("t", 42)
    with pytest.raises(TypeError):
        pubsub.publish(b"t", "x")


# -- the relay, in one process -----------------------------------------------------------------
def run_until(loop, predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met within %.1f s" % timeout
        loop.call_later(0.005, loop.stop)
        loop.run()


def test_relay_between_two_endpoints_keeps_order():
    directory = RelayDirectory(4)
    loop = Loop()
    got = {1: [], 2: []}
    try:
        slot_a = directory.open_slot(0, 1)
        slot_b = directory.open_slot(1, 2)
        a = slot_a.start(loop, lambda *r: got[1].append(r))
        b = slot_b.start(loop, lambda *r: got[2].append(r))
        for i in range(500):
            a.send(encode_record(TEXT, b"t", str(i).encode()))
        b.send(encode_record(BINARY, b"u", b"from b"))
        run_until(loop, lambda: len(got[2]) == 500 and got[1])
        assert [int(r[2]) for r in got[2]] == list(range(500))
        assert got[1] == [(BINARY, "u", b"from b")]  # nothing comes back to its sender
        a.close()
        b.close()
    finally:
        loop.close()
        directory.close()
    assert directory.path is None or not os.path.exists(directory.path)


def test_relay_cuts_off_a_worker_that_does_not_read(caplog):
    directory = RelayDirectory(4)
    loop = Loop()
    try:
        sender = directory.open_slot(0, 1).start(loop, lambda *r: None)
        directory.open_slot(1, 2)  # listed, bound, never accepting: a stopped worker
        record = encode_record(BINARY, b"t", b"x" * 60000)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="minisoup"):
            for _ in range(2 * RELAY_PEER_BUFFER_LIMIT // len(record)):
                sender.send(record)
                sender.flush()
        assert time.monotonic() - started < 2.0  # never waited for the stopped one
        assert "worker 2 (relay epoch 2) is not reading" in caplog.text
        sender.close()
    finally:
        loop.close()
        directory.close()


# -- one process (workers=0) -------------------------------------------------------------------
def test_single_process_room(serve):
    server = minisoup.Server()
    heard = []
    server.subscribe("room", lambda s, topic, data: heard.append(data))

    def join(server, msg, path, conn, user_data):
        conn.subscribe("room")
        conn.connect("message", lambda c, t, data: server.publish("room", data, exclude=c))
        conn.connect("closed", lambda c: heard.append(("closed", c.get_topics())))
        conn.send_text("joined")

    server.add_websocket_handler("/room", None, None, join)
    with serve(server) as port:
        clients = [minisoup.websocket_connect("ws://127.0.0.1:%d/room" % port, timeout=5)
                   for _ in range(3)]
        for client in clients:
            assert client.recv(timeout=5)[1] == "joined"
        clients[0].send_text("hi")
        assert clients[1].recv(timeout=5)[1] == "hi" and clients[2].recv(timeout=5)[1] == "hi"
        clients[0].close()
        for client in clients[1:]:
            client.close()
        deadline = time.monotonic() + 5
        while len(heard) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert heard[0] == "hi"
    assert heard[1:] == [("closed", frozenset())] * 3


# -- real pre-forked servers ---------------------------------------------------------------------
@pytest.fixture
def room_server():
    started = []

    def start(workers=2, args=()):
        proc = MinisoupProcess(APP, workers=workers, args=args)
        started.append(proc)
        return proc.start(workers_ready=workers)

    yield start
    for proc in started:
        proc.kill()


def join(port, topic="room"):
    """A client in the room; returns ``(client, worker id)``."""
    client = minisoup.websocket_connect("ws://127.0.0.1:%d/room/%s" % (port, topic), timeout=5)
    hello, worker_id, _pid = client.recv(timeout=5)[1].split()
    assert hello == "hello"
    return client, int(worker_id)


def join_on(port, worker_id, topic="room", tries=40):
    """A client that landed on ``worker_id`` (the others opened meanwhile are closed)."""
    spare = []
    try:
        for _ in range(tries):
            client, wid = join(port, topic)
            if wid == worker_id:
                return client
            spare.append(client)
        raise AssertionError("no connection reached worker %d" % worker_id)
    finally:
        for client in spare:
            client.close()


def read_texts(client, count, timeout=10.0):
    return [client.recv(timeout=timeout)[1] for _ in range(count)]


def flood_all(clients, publisher, count, size, tag, timeout=20.0):
    """Ask ``publisher``'s worker to publish ``count`` messages and read them on every client
    at once (threads: a client left unread would be closed by its write_buffer_limit)."""
    results = [None] * len(clients)

    def read(i):
        try:
            results[i] = read_texts(clients[i], count, timeout)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    publisher.send_text("flood %d %d %s" % (count, size, tag))
    for thread in threads:
        thread.join(timeout + 5)
    for texts in results:
        assert isinstance(texts, list), "a reader failed: %r" % (texts,)
        assert [(int(t.split()[0]), t.split()[2]) for t in texts] == \
            [(i, str(tag)) for i in range(count)]


def close_all(clients):
    for client in clients:
        try:
            client.close()
        except Exception:
            pass


@needs_fork
def test_room_of_twenty_on_two_workers(room_server):
    proc = room_server(workers=2)
    clients = []
    try:
        workers = []
        for _ in range(20):
            client, wid = join(proc.port)
            clients.append(client)
            workers.append(wid)
        assert set(workers) == {1, 2}
        rounds = 5
        for n in range(rounds):
            for i, client in enumerate(clients):
                client.send_text("c%d %d" % (i, n))
        for i, client in enumerate(clients):
            seen = {}
            for text in read_texts(client, rounds * (len(clients) - 1)):
                sender, n = text.split()
                seen.setdefault(sender, []).append(int(n))
            assert "c%d" % i not in seen  # exclude= skipped the sender
            assert seen == {"c%d" % j: list(range(rounds))
                            for j in range(len(clients)) if j != i}
        # The server-side listener ran in every worker, once per publication.
        clients[0].send_text("all listeners")
        for client in clients:
            assert client.recv(timeout=5)[1] == "listeners"
        for wid in (1, 2):
            proc.wait_log(r"heard room listeners in worker %d$" % wid)
        time.sleep(0.2)
        assert proc.count_log(r"heard room listeners in worker") == 2
        assert proc.count_log(r"heard room c0 0 in worker") == 2
    finally:
        close_all(clients)


def publisher_thread(client, stop, prefix):
    """Publish ``all PREFIX N`` for N = 0, 1, ... until ``stop`` is set; returns the thread."""
    def run():
        n = 0
        while not stop.is_set():
            client.send_text("all %s %d" % (prefix, n))
            n += 1
            time.sleep(0.002)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def assert_in_order(texts, prefix):
    numbers = [int(t.split()[1]) for t in texts if t.startswith(prefix + " ")]
    assert numbers == sorted(set(numbers)), "out of order or duplicated: %s" % numbers[:50]
    return numbers


@needs_fork
@pytest.mark.parametrize("how", ["ttin", "kill"])
def test_worker_that_joins_mid_stream_gets_later_publications(room_server, how):
    proc = room_server(workers=2)
    stop = threading.Event()
    publisher = join_on(proc.port, 1)
    listener = join_on(proc.port, 2)
    thread = publisher_thread(publisher, stop, "n")
    newcomer = None
    try:
        time.sleep(0.2)
        if how == "ttin":
            proc.send(signal.SIGTTIN)
            proc.wait_log(r"worker 3 ready")
            newcomer = join_on(proc.port, 3)
        else:
            victim = int(proc.wait_log(r"worker 2 pid \d+\] INFO minisoup: worker 2 ready")
                         .split("pid ")[1].split("]")[0])
            listener.close()
            os.kill(victim, signal.SIGKILL)
            proc.wait_log(r"worker 2 ready", count=2)
            newcomer = join_on(proc.port, 2)
        first = newcomer.recv(timeout=5)[1]
        time.sleep(0.3)
        stop.set()
        thread.join(5)
        publisher.send_text("all end")
        texts = [first]
        while texts[-1] != "end":
            texts.append(newcomer.recv(timeout=5)[1])
        numbers = assert_in_order(texts, "n")
        assert len(numbers) >= 10 and numbers == list(range(numbers[0], numbers[-1] + 1))
        if how == "ttin":  # the worker that stayed saw everything, in order, once
            seen = []
            while not seen or seen[-1] != "end":
                seen.append(listener.recv(timeout=5)[1])
            assert assert_in_order(seen, "n") == list(range(len(seen) - 1))
    finally:
        stop.set()
        close_all([c for c in (publisher, listener, newcomer) if c is not None])


@needs_fork
def test_subscriber_that_does_not_read_is_closed_with_1008(room_server):
    proc = room_server(workers=2)
    readers = []
    stuck = RawWebSocket(proc.port, "/room/flood", rcvbuf=4096, timeout=10)
    try:
        readers = [join(proc.port, "flood")[0] for _ in range(3)]
        # Bursts of 160 KB, under the app's write_buffer_limit (256 KiB): the readers keep
        # up, the stuck one piles them up until it is cut.
        for burst in range(100):
            flood_all(readers, readers[0], 10, 16384, burst)
            if proc.count_log(r"is not reading: .* closing with 1008"):
                break
        assert proc.count_log(r"is not reading: .* closing with 1008") == 1
        code = None
        while code is None:
            opcode, _fin, _rsv, payload = stuck.read_frame(timeout=10)
            if opcode == CLOSE:
                code = int.from_bytes(payload[:2], "big")
        assert code == 1008
        readers[1].send_text("all still here")
        for reader in readers:
            assert reader.recv(timeout=5)[1] == "still here"
    finally:
        stuck.close()
        close_all(readers)


@needs_fork
def test_stopped_worker_does_not_stall_the_others(room_server):
    proc = room_server(workers=2)
    near = [join_on(proc.port, 1, "flood") for _ in range(2)]
    far = join_on(proc.port, 2, "flood")
    pid2 = int(proc.wait_log(r"\[worker 2 pid \d+\] INFO minisoup: worker 2 ready")
               .split("pid ")[1].split("]")[0])
    os.kill(pid2, signal.SIGSTOP)
    try:
        started = time.monotonic()
        for burst in range(40):  # 40 x 160 KB: over what the relay may queue for it (4 MiB)
            flood_all(near, near[0], 10, 16384, burst)
        assert time.monotonic() - started < 20
        proc.wait_log(r"relay: worker 2 \(relay epoch \d+\) is not reading")
    finally:
        os.kill(pid2, signal.SIGCONT)
    try:
        texts = []

        def read_far():  # at once: what worker 2 relays now must not pile up unread
            while not texts or texts[-1] != "after":
                texts.append(far.recv(timeout=10)[1])

        reader = threading.Thread(target=read_far, daemon=True)
        reader.start()
        time.sleep(1.5)  # past RELAY_RETRY_S: the relay reaches it again
        near[1].send_text("all after")
        reader.join(15)
        assert texts and texts[-1] == "after"
        floods = [(int(t.split()[2]), int(t.split()[0])) for t in texts[:-1]]
        assert floods == sorted(set(floods))  # in order, nothing twice
        proc.wait_log(r"relay: worker 2 \(relay epoch \d+\) reachable again; \d+ publication")
    finally:
        close_all(near + [far])


@needs_fork
def test_demo_chat_room_spans_the_workers():
    proc = MinisoupProcess(None, workers=2)
    try:
        proc.start(workers_ready=2)
        clients, seen = [], set()
        while len(seen) < 2 and len(clients) < 20:
            client = minisoup.websocket_connect("ws://127.0.0.1:%d/chat/ws" % proc.port,
                                                timeout=5)
            clients.append(client)
            seen.add(client.recv(timeout=5)[1].split("]")[0])
        assert seen == {"[worker 1", "[worker 2"}
        clients[0].send_text("hello room")
        lines = {client.recv(timeout=5)[1] for client in clients}
        assert len(lines) == 1 and lines.pop().endswith("] hello room")
        close_all(clients)
    finally:
        proc.kill()
