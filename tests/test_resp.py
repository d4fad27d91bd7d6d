"""RESP2 (minisoup/resp.py): the encoder, the incremental reply parser on partial and
hostile input, and the broker URL."""

import os
import random
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from minisoup.resp import (MAX_ARRAY_LENGTH, MAX_LINE_SIZE, MAX_NESTING, ErrorReply,  # noqa: E402
                           ReplyParser, RespProtocolError, encode_command, parse_redis_url)


def test_encode_command():
    assert encode_command("PING") == b"*1\r\n$4\r\nPING\r\n"
    assert encode_command("SELECT", 3) == b"*2\r\n$6\r\nSELECT\r\n$1\r\n3\r\n"
    assert encode_command("PUBLISH", "é", b"a\r\nb") == \
        b"*3\r\n$7\r\nPUBLISH\r\n$2\r\n\xc3\xa9\r\n$4\r\na\r\nb\r\n"
    assert encode_command("X", b"") == b"*2\r\n$1\r\nX\r\n$0\r\n\r\n"


STREAM = (b"+OK\r\n-ERR unknown command\r\n:42\r\n:-1\r\n$5\r\nhe\r\no\r\n$0\r\n\r\n$-1\r\n"
          b"*3\r\n$7\r\nmessage\r\n$4\r\nroom\r\n$3\r\nhi!\r\n*-1\r\n*0\r\n"
          b"*2\r\n*1\r\n:1\r\n+x\r\n")
REPLIES = [b"OK", "ERR unknown command", 42, -1, b"he\r\no", b"", None,
           [b"message", b"room", b"hi!"], None, [], [[1], b"x"]]


def test_replies_in_one_piece_and_in_every_split():
    replies = ReplyParser().feed(STREAM)
    assert replies == REPLIES
    assert isinstance(replies[1], ErrorReply)
    parser, got = ReplyParser(), []
    for i in range(len(STREAM)):  # byte by byte
        got += parser.feed(STREAM[i:i + 1])
    assert got == REPLIES and parser.pending() == 0
    rng = random.Random(7)
    for _ in range(200):  # random cuts
        parser, got, pos = ReplyParser(), [], 0
        while pos < len(STREAM):
            step = rng.randint(1, 12)
            got += parser.feed(STREAM[pos:pos + step])
            pos += step
        assert got == REPLIES


def test_a_big_bulk_string_waits_for_all_its_bytes():
    payload = os.urandom(300000)
    data = b"$%d\r\n" % len(payload) + payload + b"\r\n+OK\r\n"
    parser = ReplyParser()
    assert parser.feed(data[:100000]) == []
    assert parser.feed(data[100000:-5]) == [payload]
    assert parser.feed(data[-5:]) == [b"OK"]


@pytest.mark.parametrize("data", [
    b"?what\r\n",                          # unknown type
    b"\x00\x01\x02",                       # binary garbage
    b":12a\r\n", b": 1\r\n", b":+1\r\n", b":\r\n", b":" + b"9" * 30 + b"\r\n",
    b"$-2\r\n", b"$abc\r\n", b"$3\r\nabcXY",   # bad length, bulk without CRLF
    b"$%d\r\n" % (1 << 40),                # a bulk string over the limit
    b"*-5\r\n", b"*%d\r\n" % (MAX_ARRAY_LENGTH + 1),
    b"*1\r\n" * (MAX_NESTING + 1) + b":1\r\n",  # nested too deep
    b"+" + b"x" * (MAX_LINE_SIZE + 10),    # a line that never ends
])
def test_hostile_input_raises_protocol_error(data):
    with pytest.raises(RespProtocolError):
        ReplyParser().feed(data)


def test_hostile_input_fed_in_pieces_raises_too():
    parser = ReplyParser()
    with pytest.raises(RespProtocolError):
        for _ in range(MAX_LINE_SIZE // 1000 + 2):
            parser.feed(b"-" + b"e" * 999)


def test_pending_is_bounded():
    parser = ReplyParser(max_bulk_size=1000)
    parser.feed(b"$1000\r\n" + b"x" * 999)  # one byte short: held
    assert parser.pending() > 999
    with pytest.raises(RespProtocolError):
        ReplyParser(max_bulk_size=1000).feed(b"$1001\r\n")
    # An array of many small items held incomplete cannot grow past the limit either.
    with pytest.raises(RespProtocolError):
        ReplyParser(max_bulk_size=100).feed(b"*1000\r\n" + (b"$100\r\n" + b"y" * 100 + b"\r\n")
                                            * 999)


def test_random_garbage_never_raises_anything_else():
    rng = random.Random(11)
    alphabet = b"+-:$*\r\n0123456789-abc"
    for _ in range(2000):
        data = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        parser = ReplyParser(max_bulk_size=64)
        try:
            parser.feed(data)
            parser.feed(data)
        except RespProtocolError:
            pass


def test_redis_urls():
    url = parse_redis_url("redis://127.0.0.1:6380/2")
    assert (url.host, url.port, url.db, url.password) == ("127.0.0.1", 6380, 2, None)
    assert url.is_numeric() and url.display() == "redis://127.0.0.1:6380/2"
    url = parse_redis_url("redis://redis.example")
    assert (url.host, url.port, url.db) == ("redis.example", 6379, 0)
    assert not url.is_numeric()
    url = parse_redis_url("redis://[::1]:7000/")
    assert (url.host, url.port, url.db) == ("::1", 7000, 0)
    assert url.display() == "redis://[::1]:7000/0"
    url = parse_redis_url("redis://user:s%40cret@h:1/0")
    assert (url.username, url.password) == ("user", "s@cret")
    assert "s@cret" not in url.display() and "cret" not in url.display()
    for bad in ("rediss://h:1", "http://h", "redis://", "redis://h:99999", "redis://h/x",
                "redis://h/1?x=1", "redis://h:port"):
        with pytest.raises(ValueError):
            parse_redis_url(bad)
    with pytest.raises(TypeError):
        parse_redis_url(None)
