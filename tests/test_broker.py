"""The Redis broker (SPEC 9, minisoup/broker.py): in-process against a real Redis and
without one, then two pre-forked servers (``python -m minisoup pubsub_apps:room``)
exchanging publications through a real ``redis-server`` that is killed and restarted."""

import logging
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import minisoup  # noqa: E402
from minisoup.broker import CHANNEL_PREFIX, RedisBroker, new_origin  # noqa: E402
from minisoup.loop import Loop  # noqa: E402
from minisoup.pubsub import PubSub, decode_envelope, encode_envelope  # noqa: E402
from minisoup.pubsub import RelayProtocolError  # noqa: E402
from redisproc import REDIS_SERVER, SKIP_REASON, RedisProcess, free_port  # noqa: E402
from serverproc import ROOT, TESTS, MinisoupProcess  # noqa: E402
from test_pubsub import close_all, join_on, needs_fork  # noqa: E402

TEXT, BINARY = 1, 2
APP = "pubsub_apps:room"
needs_redis = pytest.mark.skipif(REDIS_SERVER is None, reason=SKIP_REASON)


@pytest.fixture
def redis():
    started = []

    def start(port=None):
        proc = RedisProcess(port)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.kill()


def run_until(loop, predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within %.1f s" % timeout)
        loop.call_later(0.01, loop.stop)
        loop.run()


def spin(loop, seconds=0.01):
    """Run the loop for about ``seconds``."""
    loop.call_later(seconds, loop.stop)
    loop.run()


# -- the envelope ----------------------------------------------------------------------------
def test_envelope_round_trip_and_strangers():
    origin = new_origin()
    assert len(origin) == 8 and origin != new_origin()
    for data_type, payload in ((TEXT, "é".encode()), (BINARY, b"\xff\0"), (BINARY, b"")):
        message = encode_envelope(data_type, origin) + payload
        assert decode_envelope(message) == (origin, data_type, payload)
    for bad in (b"", b"hello world", b"MS1\x07" + origin, b"MS1\x01" + origin + b"\xff",
                b"XX1\x01" + origin):
        with pytest.raises(RelayProtocolError):
            decode_envelope(bad)


# -- in process -----------------------------------------------------------------------------------
class Listener:
    def __init__(self, pubsub, topic):
        self.heard = []
        pubsub.add_listener(topic, lambda server, topic, data: self.heard.append(data), ())


def broker_on(loop, url, origin=None):
    pubsub = PubSub(None)
    broker = RedisBroker(loop, url, origin or new_origin(), pubsub)
    pubsub.attach_broker(broker)
    return pubsub, broker


@needs_redis
def test_two_brokers_exchange_and_ignore_their_own_echo(redis):
    server = redis()
    loop = Loop()
    a, broker_a = broker_on(loop, server.url + "/5")
    b, broker_b = broker_on(loop, server.url + "/5")
    heard_a, heard_b = Listener(a, "t"), Listener(b, "t")
    other_db, broker_c = broker_on(loop, server.url + "/6")
    heard_c = Listener(other_db, "t")
    try:
        for broker in (broker_a, broker_b, broker_c):
            broker.start()
        run_until(loop, lambda: all(b.subscriber.is_open() and b.publisher.is_open()
                                    for b in (broker_a, broker_b, broker_c)))
        # Wait until Redis has both subscriptions (a PUBLISH answers its receivers).
        deadline = time.monotonic() + 5
        while server.command("PUBSUB", "NUMSUB", CHANNEL_PREFIX % 5 + "t") != \
                b"*2\r\n$12\r\nminisoup:5:t\r\n:2\r\n":
            assert time.monotonic() < deadline
            spin(loop)
        a.publish("t", "from a")
        b.publish("t", b"from b")
        a.publish("t", "again a")
        run_until(loop, lambda: len(heard_a.heard) >= 3 and len(heard_b.heard) >= 3)
        run_until(loop, lambda: broker_a.echoes == 2 and broker_b.echoes == 1)
        # Exactly once: the local delivery, never the echo from Redis as well.
        assert heard_a.heard == ["from a", "again a", b"from b"]  # its own at once
        assert heard_b.heard == [b"from b", "from a", "again a"]
        assert heard_c.heard == []  # another DB: another set of channels
        assert broker_a.published == 2 and broker_a.dropped == 0
        # A publication from another program (not minisoup's envelope) is ignored.
        server.command("PUBLISH", CHANNEL_PREFIX % 5 + "t", "plain text")
        server.command("PUBLISH", CHANNEL_PREFIX % 5 + "t",
                       encode_envelope(TEXT, b"O" * 8) + b"foreign")
        run_until(loop, lambda: heard_a.heard[-1:] == ["foreign"])
        assert heard_b.heard[-1] == "foreign" and len(heard_b.heard) == 4
    finally:
        for broker in (broker_a, broker_b, broker_c):
            broker.close()
        loop.close()


@needs_redis
def test_subscriptions_follow_the_topics(redis):
    server = redis()
    loop = Loop()
    pubsub, broker = broker_on(loop, server.url)
    first = Listener(pubsub, "early")  # before the connection: subscribed at connect
    try:
        broker.start()

        def channels():
            spin(loop)
            reply = server.command("PUBSUB", "CHANNELS")
            return sorted(part for part in reply.split(b"\r\n") if part.startswith(b"minisoup"))

        deadline = time.monotonic() + 5
        while channels() != [b"minisoup:0:early"]:
            assert time.monotonic() < deadline
        handle = pubsub.add_listener("late", lambda *args: None, ())
        deadline = time.monotonic() + 5
        while channels() != [b"minisoup:0:early", b"minisoup:0:late"]:
            assert time.monotonic() < deadline
        handle.cancel()
        deadline = time.monotonic() + 5
        while channels() != [b"minisoup:0:early"]:
            assert time.monotonic() < deadline
        assert first.heard == []
    finally:
        broker.close()
        loop.close()


def test_unreachable_redis_drops_counts_logs_and_never_blocks(caplog):
    port = free_port()  # nothing listens there
    loop = Loop()
    pubsub, broker = broker_on(loop, "redis://127.0.0.1:%d" % port)
    heard = Listener(pubsub, "t")
    caplog.set_level(logging.INFO, logger="minisoup")
    try:
        broker.start()
        started = time.monotonic()
        for i in range(50):
            pubsub.publish("t", "n%d" % i)
            spin(loop)
        assert time.monotonic() - started < 3
        assert heard.heard == ["n%d" % i for i in range(50)]  # local delivery goes on
        assert broker.dropped == 50 and broker.published == 0
        failed = [r for r in caplog.records if "connection to redis://127.0.0.1:%d" % port
                  in r.getMessage()]
        # One line per connection at once, then at most one per BROKER_LOG_INTERVAL_S.
        assert len(failed) == 2, [r.getMessage() for r in failed]
        assert broker.publisher.state.value in ("waiting", "connecting")
    finally:
        broker.close()
        loop.close()


def test_a_name_is_resolved_off_the_loop_and_a_silent_host_times_out(monkeypatch):
    import minisoup.broker as broker_module
    monkeypatch.setattr(broker_module, "BROKER_CONNECT_TIMEOUT_S", 0.3)
    gate = threading.Event()
    real = socket.getaddrinfo

    def slow_getaddrinfo(*args, **kwargs):
        if args and args[0] == "slow.invalid":
            gate.wait(5)  # a DNS server that takes its time
            raise socket.gaierror("no such name")
        return real(*args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow_getaddrinfo)
    loop = Loop()
    pubsub, broker = broker_on(loop, "redis://slow.invalid:6379")
    ticks = []
    try:
        broker.start()
        started = time.monotonic()
        for _ in range(20):
            ticks.append(time.monotonic())
            spin(loop)
        assert time.monotonic() - started < 1.0  # the loop kept turning
        run_until(loop, lambda: broker.publisher.state.value == "waiting", timeout=3)
    finally:
        gate.set()
        broker.close()
        loop.close()


def test_server_and_cli_check_the_broker_url():
    with pytest.raises(ValueError):
        minisoup.Server(broker="rediss://h:1")
    assert minisoup.Server(broker="redis://:pw@h:1/2").get_broker() == "redis://:***@h:1/2"
    assert minisoup.Server().get_broker() is None
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, TESTS]))
    for args, message in ((["--broker", "http://x"], "redis://"),
                          (["--trusted-proxies", "10.0.0.1,nope"], "not an IP address")):
        result = subprocess.run([sys.executable, "-m", "minisoup"] + args, cwd=ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, timeout=20, universal_newlines=True)
        assert result.returncode == 2 and message in result.stderr, result.stderr
    result = subprocess.run([sys.executable, "-m", "minisoup", "--help"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, timeout=20, universal_newlines=True)
    assert "--broker redis://HOST:PORT[/DB]" in result.stdout
    assert "--trusted-proxies" in result.stdout


# -- two pre-forked servers through a real redis-server ---------------------------------------------
@pytest.fixture
def two_servers(redis):
    """Redis, and two `python -m minisoup pubsub_apps:room` servers (2 workers each) on it,
    with one subscribed client on each worker: ``(redis, [a, b], {name: client})``."""
    server = redis()
    procs, clients = [], {}
    try:
        for _ in range(2):
            proc = MinisoupProcess(APP, workers=2, args=["--broker", server.url])
            procs.append(proc)
            proc.start(workers_ready=2)
        for name, proc in zip("ab", procs):
            for wid in (1, 2):
                clients["%s%d" % (name, wid)] = join_on(proc.port, wid)
        wait_cross_delivery(clients)
        yield server, procs, clients
    finally:
        close_all(clients.values())
        for proc in procs:
            proc.kill()


def drain(client, quiet=0.3):
    texts = []
    while True:
        try:
            texts.append(client.recv(timeout=quiet)[1])
        except Exception:
            return texts


def wait_cross_delivery(clients, timeout=20.0):
    """Probe until a publication from each server reaches every client of the other."""
    deadline = time.monotonic() + timeout
    n = 0
    while True:
        n += 1
        clients["a1"].send_text("all probe-a %d" % n)
        clients["b1"].send_text("all probe-b %d" % n)
        time.sleep(0.2)
        got = {name: drain(client, 0.1) for name, client in clients.items()}
        if all(any(t.startswith("probe-b") for t in got[name]) for name in ("a1", "a2")) and \
                all(any(t.startswith("probe-a") for t in got[name]) for name in ("b1", "b2")):
            break
        assert time.monotonic() < deadline, "no cross-server delivery within %.0f s" % timeout
    for client in clients.values():
        drain(client)


def read_all(clients, count, timeout=30.0):
    results = {}

    def read(name):
        try:
            results[name] = [clients[name].recv(timeout=timeout)[1] for _ in range(count)]
        except Exception as exc:
            results[name] = exc

    threads = [threading.Thread(target=read, args=(name,), daemon=True) for name in clients]
    for thread in threads:
        thread.start()
    return threads, results


@needs_redis
@needs_fork
def test_two_servers_exchange_publications_exactly_once_in_order(two_servers):
    server, procs, clients = two_servers
    count = 200
    threads, results = read_all(clients, count * len(clients))
    for name, client in clients.items():
        client.send_text("flood %d 40 %s" % (count, name))
    for thread in threads:
        thread.join(40)
    for name, texts in results.items():
        assert isinstance(texts, list), "%s: %r" % (name, texts)
        by_tag = {}
        for text in texts:
            i, _worker, tag, _pad = text.split()
            by_tag.setdefault(tag, []).append(int(i))
        # Every publisher's messages, each once, in its order: no relay + Redis double.
        assert by_tag == {tag: list(range(count)) for tag in clients}, name
    for client in clients.values():
        assert drain(client) == []  # and nothing more (no late duplicates)


@needs_redis
@needs_fork
def test_redis_restart_local_delivery_goes_on_and_cross_server_resumes(two_servers):
    server, (proc_a, proc_b), clients = two_servers
    server.kill()
    for proc in (proc_a, proc_b):
        proc.wait_log(r"WARNING minisoup: broker: subscriber connection to .* lost", count=2)
    # Redis is gone: a publication on server A reaches both of A's workers, in order...
    for n in range(20):
        clients["a1"].send_text("all down %d" % n)
    for name in ("a1", "a2"):
        texts = [clients[name].recv(timeout=10)[1] for _ in range(20)]
        assert texts == ["down %d" % n for n in range(20)], name
    # ...and none of B's (it was dropped for Redis, and counted).
    for name in ("b1", "b2"):
        assert drain(clients[name], 0.5) == []
    server.start()  # the same port
    wait_cross_delivery(clients, timeout=30)  # by itself: back-off, reconnect, resubscribe
    proc_a.wait_log(r"broker: publisher connection to .* up again after .*"
                    r"\d+ publication\(s\) dropped for Redis meanwhile", timeout=10)
    # Both ways, every worker, after the restart.
    threads, results = read_all(clients, 2)
    clients["a2"].send_text("all after-a")
    time.sleep(0.2)
    clients["b2"].send_text("all after-b")
    for thread in threads:
        thread.join(15)
    for name, texts in results.items():
        assert texts == ["after-a", "after-b"], (name, texts)


def test_link_lifecycle_table_and_a_connection_lost_at_once():
    from minisoup.broker import _TRANSITIONS, LinkState
    assert set(_TRANSITIONS) == set(LinkState)
    assert _TRANSITIONS[LinkState.CLOSED] == ()
    # A Redis that accepts and resets at once: the link keeps retrying (never a ping
    # timer standing in for the retry), and a second failure report is harmless.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.setblocking(False)
    loop = Loop()
    pubsub, broker = broker_on(loop, "redis://127.0.0.1:%d" % listener.getsockname()[1])
    accepted = []

    def reset(events):
        try:
            sock, _ = listener.accept()
        except BlockingIOError:
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        sock.close()
        accepted.append(1)

    loop.add_reader(listener, reset)
    try:
        broker.start()
        run_until(loop, lambda: len(accepted) >= 6, timeout=5)
        broker.publisher._fail("twice")  # WAITING already or soon: no AssertionError
    finally:
        broker.close()
        loop.remove_reader(listener)
        listener.close()
        loop.close()
