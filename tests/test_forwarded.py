"""trusted_proxies: the client behind a reverse proxy (minisoup/forwarded.py), parsing
without sockets, then over a real socket."""

import os
import random
import sys
import threading

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import minisoup  # noqa: E402
from minisoup.forwarded import (MAX_FORWARDED_HOPS, TrustedProxies, forwarded_for,  # noqa: E402
                                parse_node, parse_trusted_proxies, x_forwarded_for)
from wsraw import http_exchange  # noqa: E402

PEER = ("10.0.0.5", 40000)
PROXIES = TrustedProxies(["10.0.0.0/24", "::1", "192.168.7.7"])


def client(forwarded=None, xff=None, peer=PEER, proxies=PROXIES):
    return proxies.client_address(peer, forwarded, xff)


def test_nodes():
    assert parse_node("192.0.2.1") == ("192.0.2.1", 0)
    assert parse_node(" 192.0.2.1:8080 ") == ("192.0.2.1", 8080)
    assert parse_node("[2001:db8::1]") == ("2001:db8::1", 0)
    assert parse_node("[2001:DB8::1]:443") == ("2001:db8::1", 443)
    assert parse_node("2001:db8::1") == ("2001:db8::1", 0)
    assert parse_node("192.0.2.1:_obf") == ("192.0.2.1", 0)
    assert parse_node("192.0.2.1:99999") == ("192.0.2.1", 0)
    assert parse_node("::ffff:192.0.2.1") == ("192.0.2.1", 0)
    for bad in ("unknown", "_hidden", "", "[", "[::1", "[::1]x", "[192.0.2.1", "1.2.3",
                "300.1.1.1", "a:b:c", "[]:80", "\x00", "1.2.3.4:5:6"):
        assert parse_node(bad) is None, bad


def test_forwarded_syntax():
    assert forwarded_for('for=192.0.2.60;proto=http;by=203.0.113.43') == ["192.0.2.60"]
    assert forwarded_for('For="[2001:db8:cafe::17]:4711"') == ["[2001:db8:cafe::17]:4711"]
    assert forwarded_for('for=192.0.2.43, for=198.51.100.17') == ["192.0.2.43", "198.51.100.17"]
    assert forwarded_for('proto=https, for=1.2.3.4') == ["", "1.2.3.4"]
    assert forwarded_for('for="\\"quoted\\""') == ['"quoted"']
    for bad in ("for=", "for=1.2.3.4,", "for 1.2.3.4", 'for="1.2.3.4', "=x", "for=[::1]",
                "for=1.2.3.4;;", ",", "for=a b"):
        assert forwarded_for(bad) is None, bad
    assert x_forwarded_for("a, b ,c") == ["a", "b", "c"]
    assert len(x_forwarded_for(",".join(["1.1.1.1"] * 10000))) == MAX_FORWARDED_HOPS + 1


def test_trusted_proxies_are_checked():
    assert [str(n) for n in parse_trusted_proxies(["10.0.0.1", "10.1.0.0/16", " ::1 "])] == \
        ["10.0.0.1/32", "10.1.0.0/16", "::1/128"]
    for bad in (["nope"], ["10.0.0.0/33"], ["*"]):
        with pytest.raises(ValueError):
            parse_trusted_proxies(bad)
    with pytest.raises(TypeError):
        parse_trusted_proxies("10.0.0.1")
    with pytest.raises(ValueError):
        minisoup.Server(trusted_proxies=["garbage"])
    assert not TrustedProxies() and PROXIES


def test_the_right_most_untrusted_address_is_the_client():
    assert client(xff="203.0.113.9") == ("203.0.113.9", 0)
    # Forged entries left of the real client are never looked at.
    assert client(xff="6.6.6.6, 203.0.113.9, 10.0.0.7") == ("203.0.113.9", 0)
    assert client(forwarded='for=6.6.6.6, for="203.0.113.9:5555", for=10.0.0.7') == \
        ("203.0.113.9", 5555)
    assert client(forwarded='for="[2001:db8::5]:80"') == ("2001:db8::5", 80)
    # Every hop a trusted proxy: the left-most one is as far as we can know.
    assert client(xff="192.168.7.7, 10.0.0.7") == ("192.168.7.7", 0)


def test_untrusted_peers_are_believed_never():
    for peer in (("203.0.113.1", 1), ("10.0.1.5", 1), ("::2", 1, 0, 0)):
        assert client(xff="1.2.3.4", forwarded="for=1.2.3.4", peer=peer) == peer
    assert client(xff="1.2.3.4", proxies=TrustedProxies()) == PEER
    assert client(peer=("::ffff:10.0.0.9", 1), xff="1.2.3.4") == ("1.2.3.4", 0)
    assert client(peer=("::1", 1, 0, 0), xff="2001:db8::1") == ("2001:db8::1", 0)
    assert client(peer=None, xff="1.2.3.4") is None


def test_unknown_or_obfuscated_clients_keep_the_peer():
    for xff in ("unknown", "garbage!!", "1.2.3.4, nope", "", ", ,", "[::1"):
        assert client(xff=xff) == PEER, xff
    for forwarded in ('for=unknown', 'for="_hidden"', 'for=_x;proto=http', "proto=http",
                      "garbage", 'for="1.2.3.4'):
        assert client(forwarded=forwarded) == PEER, forwarded
    # More trusted hops than are looked at: unknown.
    assert client(xff=", ".join(["1.2.3.4"] + ["10.0.0.1"] * (MAX_FORWARDED_HOPS + 5))) == PEER


def test_both_headers_must_agree():
    assert client(forwarded="for=1.2.3.4", xff="1.2.3.4") == ("1.2.3.4", 0)
    # A client forging the header its proxy does not set is not believed.
    assert client(forwarded="for=6.6.6.6", xff="203.0.113.9") == PEER
    assert client(forwarded="garbage", xff="203.0.113.9") == PEER


def test_hostile_values_never_raise():
    rng = random.Random(3)
    alphabet = 'for=;,"[]:._-\\ \t0123456789abcdefABCDEF\x00\xff'
    for _ in range(3000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        client(forwarded=value)
        client(xff=value)
        client(forwarded=value, xff=value)
    huge = ",".join("for=%d.%d.0.1" % (i % 250, i // 250) for i in range(20000))
    assert client(forwarded=huge) == ("249.79.0.1", 0)
    client(xff="1" * 100000)


# -- over a real socket ------------------------------------------------------------------------
@pytest.fixture
def serve():
    started = []

    def start(**kwargs):
        server = minisoup.Server(**kwargs)
        def who(server, msg, path, query, data):
            msg.set_status(200)
            msg.set_response("text/plain", ("%s %s" % (msg.get_remote_host(),
                                                       msg.get_remote_address()[1])).encode())
        server.add_handler("/who", who)
        server.listen_local(0)
        server.call_soon(lambda: None)  # the loop exists before the thread runs it
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        started.append((server, thread))
        return server.get_listeners()[0].getsockname()[1]

    yield start
    for server, thread in started:
        server.call_soon_threadsafe(server.stop, False)
        thread.join(5)
        server.disconnect()


def ask(port, headers=""):
    status, head, body = http_exchange(port, ("GET /who HTTP/1.1\r\nHost: x\r\n%s"
                                      "Connection: close\r\n\r\n" % headers).encode())
    return body.decode()


def test_forwarded_client_over_a_socket(serve):
    trusting = serve(trusted_proxies=["127.0.0.1"])
    assert ask(trusting, "X-Forwarded-For: 6.6.6.6, 203.0.113.9\r\n") == "203.0.113.9 0"
    assert ask(trusting, 'Forwarded: for="[2001:db8::7]:1234"\r\n') == "2001:db8::7 1234"
    assert ask(trusting, "X-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 203.0.113.9\r\n") == \
        "203.0.113.9 0"
    assert ask(trusting, "X-Forwarded-For: unknown\r\n").startswith("127.0.0.1 ")
    assert ask(trusting).startswith("127.0.0.1 ")
    # The default: nobody is trusted, the headers are ignored.
    plain = serve()
    assert ask(plain, "X-Forwarded-For: 203.0.113.9\r\n").startswith("127.0.0.1 ")
    other = serve(trusted_proxies=["10.0.0.0/8"])
    assert ask(other, "Forwarded: for=203.0.113.9\r\n").startswith("127.0.0.1 ")
