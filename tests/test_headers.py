"""minisoup.headers (libsoup's soup_header_* and soup_date_time_*) and the MessageHeaders
accessors built on it: unit tests on the sans-I/O functions, plus one Range exchange over
a real socket. tests/test_libsoup_reference.py compares the same functions with libsoup."""

import datetime
import http.client
import random
import time

import pytest

import minisoup
from conftest import running
from minisoup import (DateFormat, Expectation, MessageHeaders, date_time_new_from_http_string,
                      date_time_to_string, header_contains, header_parse_list,
                      header_parse_param_list, header_parse_param_list_strict,
                      header_parse_quality_list, header_parse_semi_param_list,
                      header_parse_semi_param_list_strict)
from minisoup.headers import parse_range

UTC = datetime.timezone.utc


def headers(*items):
    return MessageHeaders(list(items))


# --- lists ---

def test_parse_list_keeps_quoted_commas_and_skips_empty_items():
    assert header_parse_list(' a , "b, c" d,,\te ,') == ["a", '"b, c" d', "e"]
    assert header_parse_list('"a\\", b", c') == ['"a\\", b"', "c"]
    assert header_parse_list('"open, x') == ['"open, x']
    assert header_parse_list("") == [] and header_parse_list(" , ") == []
    # Only GLib's ASCII spaces are trimmed: a NBSP is part of the item.
    assert header_parse_list("\xa0a, b") == ["\xa0a", "b"]


def test_header_contains_ignores_ascii_case_only():
    assert header_contains("close, Upgrade", "upgrade")
    assert not header_contains("keep-alive", "keep")
    assert not header_contains("a, b", "")
    assert not header_contains("\u00e9", "\u00c9")  # as libsoup: ASCII case folding only


def test_quality_list_orders_by_q_and_splits_out_q0():
    acceptable, unacceptable = header_parse_quality_list(
        "text/html;q=0.5, text/plain, */*;q=0, a;q=0.50, b ; q = 0.999, c;Q=0.1")
    assert acceptable == ["text/plain", "b", "text/html", "a", "c"]
    assert unacceptable == ["*/*"]
    assert header_parse_quality_list("x;q=0.0001, y;q=0.") == ([], ["x", "y"])
    # Not a q-value: the item keeps its parameters and q=1.
    assert header_parse_quality_list("h;q=2, i;q=.5, j;level=1;q=0.2;x") == (
        ["h;q=2", "i;q=.5", "j;level=1"], [])
    assert header_parse_quality_list("") == ([], [])


# --- parameter lists ---

def test_param_lists_as_libsoup():
    assert header_parse_param_list('a=1, A=2, b="x,\\"y", c, =d, e*=UTF-8\'\'%C3%A9, e=no') == {
        "a": "1", "b": 'x,"y', "c": None, "e": "\u00e9"}
    assert header_parse_semi_param_list("f*=iso-8859-1'en'%E9; g*=koi8-r''x; h=\"open") == {
        "f": "\u00e9", "h": "open"}
    assert header_parse_semi_param_list("") == {}


def test_extended_values_that_do_not_decode_are_left_out():
    for bad in ("%", "%zz", "%4", "%00a", "%ff"):
        assert header_parse_semi_param_list("x*=UTF-8''" + bad) == {}, bad
    assert header_parse_semi_param_list("x*=utf''a; y*=''b; z*=UTF-8'a") == {}
    assert header_parse_semi_param_list("x*=utf-8''a%20b+c") == {"x": "a b+c"}


def test_strict_param_lists_refuse_repeated_names():
    assert header_parse_param_list_strict("a=1, b") == {"a": "1", "b": None}
    assert header_parse_param_list_strict("a=1, A=2") is None
    assert header_parse_semi_param_list_strict("a=1; a*=UTF-8''x") is None
    assert header_parse_semi_param_list_strict("a*=bad; a=1") == {"a": "1"}  # dropped: no repeat
    assert header_parse_param_list("a=1, a=2") == {"a": "1"}


# --- Content-Type and Content-Disposition ---

def test_get_content_type_keeps_the_type_and_returns_params():
    assert headers(("Content-Type", 'Text/HTML; Charset=UTF-8; a="b c"')).get_content_type() == (
        "Text/HTML", {"charset": "UTF-8", "a": "b c"})
    assert headers(("Content-Type", "text/plain")).get_content_type() == ("text/plain", {})
    for bad in ("text", "text /html", "a/b/c", ";x=1", "text/html x"):
        assert headers(("Content-Type", bad)).get_content_type() == (None, None), bad
    assert headers().get_content_type() == (None, None)


def test_set_content_type_writes_parameters_as_libsoup():
    h = headers()
    h.set_content_type("text/plain", {"charset": "utf-8", "q": 'a "b"', "n": None,
                                      "e": "\u00e9 x", "z": ""})
    assert h.get_one("Content-Type") == ('text/plain; charset=utf-8; q="a \\"b\\""; n; '
                                         "e*=UTF-8''%C3%A9%20x; z=\"\"")
    assert h.get_content_type() == ("text/plain", {"charset": "utf-8", "q": 'a "b"', "n": None,
                                                   "e": "\u00e9 x", "z": ""})
    h.set_content_type("text/html")
    assert h.get_all("Content-Type") == ["text/html"]


def test_set_content_headers_refuse_injection():
    h = headers()
    with pytest.raises(ValueError):
        h.set_content_type("text/plain\r\nX-Evil: 1")
    with pytest.raises(ValueError):
        h.set_content_type("text/plain", {"a": "x\r\nX-Evil: 1"})
    with pytest.raises(ValueError):
        h.set_content_disposition("attachment", {"file; x": "a"})
    # A non-ASCII value is percent-encoded, control characters and all.
    h.set_content_disposition("attachment", {"filename": "\u00e9\r\n.txt"})
    assert h.get_one("Content-Disposition") == "attachment; filename*=UTF-8''%C3%A9%0D%0A.txt"
    assert len(h) == 1


def test_content_disposition_as_libsoup():
    h = headers(("Content-Disposition", 'attachment; filename="../../etc/passwd"; size=3'))
    assert h.get_content_disposition() == ("attachment", {"filename": "passwd", "size": "3"})
    assert headers(("Content-Disposition", "filename=a.txt")).get_content_disposition() == (
        None, {"filename": "a.txt"})
    assert headers(("Content-Disposition", "attachment; filename")).get_content_disposition() == (
        "attachment", {})
    assert headers().get_content_disposition() is None
    h = headers()
    h.set_content_disposition("attachment", {"filename": "r\u00e9sum\u00e9 (1).pdf"})
    assert h.get_content_disposition() == ("attachment", {"filename": "r\u00e9sum\u00e9 (1).pdf"})


# --- Range and Content-Range ---

@pytest.mark.parametrize("value, total, expected", [
    ("bytes=0-499", 1000, [(0, 499)]),
    ("bytes=500-", 1000, [(500, 999)]),
    ("bytes=-500", 1000, [(500, 999)]),
    ("bytes=-5000", 1000, [(0, 999)]),               # longer suffix: all of it
    ("bytes=0-99999", 1000, [(0, 999)]),             # end past the last byte: cut
    ("bytes=900-1200,0-9", 1000, [(0, 9), (900, 999)]),
    ("bytes=0-5,3-9,20-30,25-26,29-40", 1000, [(0, 9), (20, 40)]),
    ("bytes=0-5,6-9", 1000, [(0, 5), (6, 9)]),       # adjacent: not merged
    ("bytes=1-1,1-1,1-1", 1000, [(1, 1)]),
    ("bytes=2000-3000", 1000, [(2000, 3000)]),       # unsatisfiable: the caller's 416
    ("bytes=-0", 1000, [(1000, 999)]),
    ("bytes=500-", 0, [(500, -1)]),                  # unknown length: as written
    ("bytes=-500", 0, [(-500, -1)]),
    ("bytes=5-,0-2", 0, [(5, -1), (0, 2)]),
    ("bytes = 1-2", 10, [(1, 2)]),
    ("bytes=9-0", 10, None), ("bytes=x", 10, None), ("bytes=", 10, None),
    ("Bytes=0-1", 10, None), ("items=0-1", 10, None), ("bytes=1-2-3", 10, None),
    ("bytes=+5-6", 10, None), ("bytes=1- 2", 10, None), ("bytes=-5-6", 10, None),
    ("bytes=\u0661-2", 10, None), ("bytes=0-" + "9" * 20, 10, None),
])
def test_get_ranges(value, total, expected):
    assert headers(("Range", value)).get_ranges(total) == expected


def test_get_ranges_without_range_and_bad_total():
    assert headers().get_ranges(10) is None
    assert headers(("Range", "bytes=0-1"), ("Range", "bytes=5-6")).get_ranges(10) == [(5, 6)]
    with pytest.raises(ValueError):
        headers(("Range", "bytes=0-1")).get_ranges(-1)


def test_set_ranges_and_content_range():
    h = headers()
    h.set_range(0, 499)
    assert h.get_one("Range") == "bytes=0-499"
    h.set_ranges([(0, 0), (5, -1), (-3, -1)])
    assert h.get_one("Range") == "bytes=0-0,5-,-3"
    assert h.get_ranges(10) == [(0, 0), (5, 9)]
    h.set_ranges([(1, 2), (4, 5)], 1)
    assert h.get_all("Range") == ["bytes=1-2"]
    h.set_content_range(0, 499, 1234)
    assert h.get_one("Content-Range") == "bytes 0-499/1234"
    assert h.get_content_range() == (0, 499, 1234)
    h.set_content_range(5, 9)
    assert h.get_one("Content-Range") == "bytes 5-9/*"
    assert h.get_content_range() == (5, 9, -1)


@pytest.mark.parametrize("value", ["bytes */1234", "Bytes 1-2/3", "bytes 1-2/3 ", "bytes 5-1/3",
                                   "bytes 1-2/2", "bytes 1-2/", "bytes 1-2", "bytes=1-2/3"])
def test_invalid_content_range(value):
    assert headers(("Content-Range", value)).get_content_range() is None


# --- Expect, header_equals, foreach, clean_connection_headers ---

def test_expectations():
    assert headers().get_expectations() == 0
    assert headers(("Expect", "100-Continue")).get_expectations() is Expectation.CONTINUE
    assert headers(("Expect", "100-continue, x")).get_expectations() is Expectation.UNRECOGNIZED
    h = headers()
    h.set_expectations(Expectation.CONTINUE)
    assert h.get_all("Expect") == ["100-continue"]
    h.set_expectations(0)
    assert "Expect" not in h
    with pytest.raises(ValueError):
        h.set_expectations(Expectation.UNRECOGNIZED)


def test_header_equals_foreach_and_clean_connection_headers():
    h = headers(("Connection", "close, X-Hop"), ("X-Hop", "1"), ("x-hop", "2"), ("Keep", "3"))
    assert h.header_equals("x-hop", "1, 2") and h.header_equals("X-HOP", "1, 2")
    assert not h.header_equals("X-Hop", "1") and not h.header_equals("Nope", "")
    seen = []
    h.foreach(lambda name, value, tag: seen.append((tag, name, value)), "t")
    assert seen[0] == ("t", "Connection", "close, X-Hop") and len(seen) == 4
    h.clean_connection_headers()
    assert h.items() == [("Connection", "close, X-Hop"), ("Keep", "3")]


# --- HTTP dates ---

@pytest.mark.parametrize("text", ["Sun, 06 Nov 1994 08:49:37 GMT",
                                  "Sunday, 06-Nov-94 08:49:37 GMT",
                                  "Sun Nov  6 08:49:37 1994", "sun, 6 nov 1994 8:49:37",
                                  " Sun, 06-Nov-1994 08:49:37 UTC trailing"])
def test_http_date_forms(text):
    assert date_time_new_from_http_string(text) == datetime.datetime(1994, 11, 6, 8, 49, 37,
                                                                     tzinfo=UTC)


def test_http_date_zones_and_years():
    parsed = date_time_new_from_http_string("Sun, 06 Nov 1994 08:49:37 +0130")
    assert parsed.utcoffset() == datetime.timedelta(minutes=90)
    assert parsed == datetime.datetime(1994, 11, 6, 7, 19, 37, tzinfo=UTC)
    parsed = date_time_new_from_http_string("Sun, 06 Nov 1994 08:49:37 EST")
    assert parsed.utcoffset() == datetime.timedelta(hours=-5)
    assert date_time_new_from_http_string("Sun, 06 Nov 69 08:49:37 GMT").year == 2069
    assert date_time_new_from_http_string("Sun, 06 Nov 70 08:49:37 GMT").year == 1970
    assert date_time_new_from_http_string("Sun, 06 Nov 1994 08:49:37 +9999").utcoffset() == \
        datetime.timedelta(0)


@pytest.mark.parametrize("text", ["", "x", "1994-11-06T08:49:37Z", "6 nov 1994 8:49:37",
                                  "Sun, 31 Feb 1994 08:49:37 GMT",
                                  "Sun, 06 Nov 1994 24:00:00 GMT", "Sun, 06 Nov 1994 08:49 GMT",
                                  "Sun, 06 November 1994 08:49:37 GMT", "Sun, -6 Nov 1994 1:2:3",
                                  "Sun, 06 Nov 10000 08:49:37 GMT",
                                  "Sun, 06 Nov 1994 1" + "0" * 99])
def test_http_date_refused(text):
    assert date_time_new_from_http_string(text) is None


def test_date_time_to_string():
    when = datetime.datetime(1994, 11, 6, 9, 49, 37, tzinfo=datetime.timezone(
        datetime.timedelta(hours=1)))
    assert date_time_to_string(when, DateFormat.HTTP) == "Sun, 06 Nov 1994 08:49:37 GMT"
    assert date_time_to_string(when, DateFormat.COOKIE) == "Sun, 06-Nov-1994 08:49:37 GMT"
    assert date_time_to_string(datetime.datetime(5, 3, 4, 1, 2, 3)) == "Fri, 04 Mar 5 01:02:03 GMT"
    assert date_time_new_from_http_string(date_time_to_string(when)) == when


# --- hostile input: never raises, bounded work ---

def test_hostile_values_never_raise_and_stay_linear():
    rng = random.Random(7)
    alphabet = 'ab=;,"\\ *\'%-0123456789qQ.\t:+/bytes\u00e9\xa0'
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(40)))
        header_parse_list(text)
        header_parse_quality_list(text)
        header_parse_param_list(text)
        header_parse_semi_param_list_strict(text)
        date_time_new_from_http_string(text)
        h = headers(("Range", "bytes=" + text), ("Content-Type", text),
                    ("Content-Disposition", text), ("Content-Range", "bytes " + text))
        h.get_ranges(100), h.get_content_type(), h.get_content_disposition()
        h.get_content_range()
    big = 64 * 1024
    start = time.perf_counter()
    header_parse_quality_list("a" + ";" * big)
    header_parse_quality_list('"' * big)
    header_parse_semi_param_list("a*=UTF-8''" + "%41" * (big // 3))
    parse_range("bytes=" + "0-1," * (big // 4), 10)
    parse_range("bytes=" + "9" * big + "-", 10)
    date_time_new_from_http_string("Sun, 06 Nov 1994 " + " " * big)
    assert time.perf_counter() - start < 2.0


def test_exported_from_the_package():
    for name in ("header_parse_list", "header_parse_quality_list", "header_parse_param_list",
                 "header_parse_param_list_strict", "header_parse_semi_param_list",
                 "header_parse_semi_param_list_strict", "header_contains",
                 "date_time_new_from_http_string", "date_time_to_string", "DateFormat",
                 "Expectation"):
        assert name in minisoup.__all__ and hasattr(minisoup, name)


# --- end to end: a handler that serves byte ranges ---

DATA = bytes(range(256)) * 4  # 1024 bytes


def _serve_ranges(server, msg, path, query, user_data):
    response = msg.get_response_headers()
    ranges = msg.get_request_headers().get_ranges(len(DATA))
    if ranges is None:
        msg.set_status(200)
        msg.set_response("application/octet-stream", DATA)
        return
    satisfiable = [r for r in ranges if r[0] < len(DATA)]
    if not satisfiable:
        msg.set_status(416)
        response.replace("Content-Range", "bytes */%d" % len(DATA))
        return
    start, end = satisfiable[0]  # one range per response here: no multipart/byteranges
    msg.set_status(206)
    response.set_content_range(start, end, len(DATA))
    msg.set_response("application/octet-stream", DATA[start:end + 1])


def _get(port, range_value=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/file", headers={"Range": range_value} if range_value else {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Range"), resp.read()
    finally:
        conn.close()


def test_range_requests_over_a_socket():
    server = minisoup.Server()
    server.add_handler("/file", _serve_ranges)
    with running(server) as port:
        assert _get(port) == (200, None, DATA)
        assert _get(port, "bytes=10-19") == (206, "bytes 10-19/1024", DATA[10:20])
        assert _get(port, "bytes=-4") == (206, "bytes 1020-1023/1024", DATA[-4:])
        assert _get(port, "bytes=1000-5000") == (206, "bytes 1000-1023/1024", DATA[1000:])
        assert _get(port, "bytes=5000-") == (416, "bytes */1024", b"")
        assert _get(port, "bytes=oops") == (200, None, DATA)


def test_is_options_ping_over_a_socket():
    seen = []
    server = minisoup.Server()
    server.add_handler(None, lambda s, msg, path, query, ud: msg.set_status(204))
    server.connect("request-read", lambda s, msg: seen.append((msg.get_method(),
                                                               msg.is_options_ping())))
    with running(server) as port:
        for target in ("*", "/x"):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("OPTIONS", target)
                conn.getresponse().read()
            finally:
                conn.close()
    assert seen == [("OPTIONS", True), ("OPTIONS", False)]
