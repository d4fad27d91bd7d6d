"""minisoup.multipart: Multipart.new_from_message and header parameters (sans-I/O)."""

import random
import time

import pytest

from minisoup.http import MessageHeaders
from minisoup.multipart import (MAX_PARTS, Multipart, parse_content_disposition,
                                parse_media_type, parse_semi_param_list)

CT = "multipart/form-data; boundary=xx"


def parse(body, content_type=CT):
    headers = MessageHeaders([("Content-Type", content_type)] if content_type else [])
    return Multipart.new_from_message(headers, body)


def parts(body, content_type=CT):
    mp = parse(body, content_type)
    if mp is None:
        return None
    return [(mp.get_part(i)[0].items(), mp.get_part(i)[1]) for i in range(mp.get_length())]


def test_one_part_and_the_crlf_rules():
    assert parts(b"--xx\r\nA: 1\r\n\r\nbody\r\n--xx--\r\n") == [([("A", "1")], b"body")]
    # The CRLF before a boundary belongs to the boundary; the body keeps its own.
    assert parts(b"--xx\r\n\r\n\r\nx\r\n\r\n--xx--\r\n") == [([], b"\r\nx\r\n")]
    assert parts(b"--xx\r\nA: 1\r\n\r\n\r\n--xx--\r\n") == [([("A", "1")], b"")]
    # Headers that run into the boundary: an empty body (libsoup 3.2 crashes here).
    assert parts(b"--xx\r\nA: 1\r\n\r\n--xx--\r\n") == [([("A", "1")], b"")]


def test_preamble_epilogue_padding_and_close_at_the_very_end():
    assert parts(b"preamble\r\n--xx\r\n\r\nx\r\n--xx--\r\nepilogue--xx\r\n") == [([], b"x")]
    assert parts(b"\r\n--xx\r\n\r\nx\r\n--xx--") == [([], b"x")]      # no CRLF after the close
    assert parts(b"--xx \t \r\n\r\nx\r\n--xx\t\r\n\r\ny\r\n--xx--") == [([], b"x"), ([], b"y")]
    assert parts(b"--xx--\r\n") == []


def test_near_boundaries_are_body():
    body = b"--xx\r\n\r\nx--xx\r\n--xxy\r\n--x\r\n-- xx\r\n--xx--\r\n"
    assert parts(body) == [([], b"x--xx\r\n--xxy\r\n--x\r\n-- xx")]
    # "--xx" not at the start of a line (or followed by junk) is no boundary: the
    # preamble goes on, up to the closing boundary here (as libsoup).
    assert parts(b"preamble--xx\r\n\r\nx\r\n--xx--\r\n") == []
    assert parts(b"--xxjunk\r\n\r\nx\r\n--xx--") == []


def test_quoted_and_token_boundaries():
    assert parts(b"--a b:c\r\n\r\nx\r\n--a b:c--", 'multipart/mixed; boundary="a b:c"') == [([], b"x")]
    assert parts(b"--'()+_,-./=?\r\n\r\nx\r\n--'()+_,-./=?--",
                 "Multipart/Form-Data; BOUNDARY='()+_,-./=?") == [([], b"x")]
    assert parse(b"--q\r\n\r\nx\r\n--q--", 'multipart/mixed; boundary="q"; boundary=r') is not None


def test_part_headers_as_libsoup():
    body = (b"--xx\r\nA: 1\nB:2 \r\n folded\r\nbad line\r\nC : dropped\r\n"
            b"D: \xc3\xa9\r\n\r\nx\r\n--xx--\r\n")
    assert parts(body) == [([("A", "1"), ("B", "2 folded"), ("D", "é")], b"x")]


@pytest.mark.parametrize("content_type,body", [
    (None, b"--xx\r\n\r\nx\r\n--xx--"),
    ("text/plain; boundary=xx", b"--xx\r\n\r\nx\r\n--xx--"),
    ("multipart/form-data", b"--xx\r\n\r\nx\r\n--xx--"),
    ("multipart/form-data; boundary=", b"--\r\n\r\nx\r\n----"),
    ("multipart/form-data; boundary=" + "b" * 71, b"--" + b"b" * 71 + b"\r\n\r\nx\r\n--" + b"b" * 71 + b"--"),
    ("multipart/form-data; boundary=\u20ac", b"--x\r\n\r\nx\r\n--x--"),
    (CT, b""),
    (CT, b"no boundary at all"),
    (CT, b"--xx\r\nA: 1\r\n\r\nx"),                    # truncated: no closing boundary
    (CT, b"--xx\r\nA: 1\r\n\r\nx\r\n--xx\r\n"),
    (CT, b"--xx\r\nA: 1\r\n--xx--\r\n"),                # no blank line after the headers
    (CT, b"--xx\r\nA: a\x00b\r\n\r\nx\r\n--xx--"),      # NUL in a header
    (CT, b"--xx\nA: 1\n\nx\n--xx--\n"),                # bare LF boundaries
])
def test_malformed_is_none(content_type, body):
    assert parse(body, content_type) is None


def test_get_part_out_of_range():
    mp = parse(b"--xx\r\n\r\nx\r\n--xx--")
    assert mp.get_length() == 1
    with pytest.raises(IndexError):
        mp.get_part(1)
    with pytest.raises(IndexError):
        mp.get_part(-1)


def test_part_count_limit():
    body = b"".join([b"--xx\r\n\r\n%d\r\n" % i for i in range(MAX_PARTS)]) + b"--xx--"
    assert parse(body).get_length() == MAX_PARTS
    body = b"".join([b"--xx\r\n\r\n%d\r\n" % i for i in range(MAX_PARTS + 1)]) + b"--xx--"
    assert parse(body) is None


def _cpu(func):
    start = time.process_time()
    result = func()
    return time.process_time() - start, result


@pytest.mark.parametrize("name,build", [
    # Each line is the boundary but for its last byte: a naive search backs up each time.
    ("near boundaries", lambda b: b"--" + b + b"\r\n\r\n" + (b"\r\n--" + b[:-1] + b"!") * (2 ** 20 // (len(b) + 4))),
    # Full boundaries followed by junk: each one must be looked at and rejected.
    ("boundary + junk", lambda b: b"--" + b + b"\r\n\r\n" + (b"\r\n--" + b + b"!") * (2 ** 20 // (len(b) + 5))),
    # Megabytes of transport padding after a boundary.
    ("padding", lambda b: b"--" + b + b" " * 2 ** 20),
    ("dashes", lambda b: b"-" * 2 ** 20),
    ("crlfs", lambda b: b"--" + b + b"\r\n" + b"\r\n" * 2 ** 19),
    ("many tiny parts", lambda b: (b"--" + b + b"\r\n\r\n\r\n") * (2 ** 20 // (len(b) + 8))),
])
def test_hostile_megabyte_bodies_parse_in_linear_time(name, build):
    boundary = b"a" * 69 + b"b"
    body = build(boundary)
    assert len(body) >= 2 ** 20 - 200
    seconds, result = _cpu(lambda: parse(body, "multipart/form-data; boundary=" + boundary.decode()))
    assert result is None or result.get_length() <= MAX_PARTS
    assert seconds < 0.1, "%s: %.3f s of CPU" % (name, seconds)


def test_random_bodies_never_raise():
    rng = random.Random(1234)
    pieces = [b"--xx", b"\r\n", b"\n", b"--", b"A: 1", b"x", b" ", b"\0", b":", b"\xff", b'"']
    for _ in range(3000):
        body = b"".join(rng.choice(pieces) for _ in range(rng.randrange(20)))
        mp = parse(body)
        if mp is not None:
            for i in range(mp.get_length()):
                mp.get_part(i)


def test_param_lists_as_libsoup():
    assert parse_semi_param_list(' a=1 ; A=2; b="x;\\"y"; c; =d; e*=UTF-8\'\'%C3%A9; e=no') == {
        "a": "1", "b": 'x;"y', "c": None, "e": "é"}
    assert parse_semi_param_list('f*=iso-8859-1\'en\'%E9; g*=koi8-r\'\'x; h="unterminated') == {
        "f": "é", "h": "unterminated"}
    assert parse_media_type(" Text/HTML ; charset=utf-8") == "Text/HTML"
    assert parse_media_type("") is None and parse_media_type(None) is None
    assert parse_content_disposition('form-data; name="a"; filename="dir/x"') == (
        "form-data", {"name": "a", "filename": "x"})
    assert parse_content_disposition(";name=a") is None
