"""Unit tests of the sans-I/O HTTP/1.1 parser and MessageHeaders."""

import pytest

from minisoup.http import (HTTPError, MessageHeaders, RequestParser, build_response_head, chunk,
                           quote_path, parse_query, remove_dot_segments, split_target)


def parse(data, **kw):
    p = RequestParser(**kw)
    p.feed(data)
    req = p.read_head()
    body = p.read_body() if req is not None else None
    return p, req, body


def status_of(data, **kw):
    with pytest.raises(HTTPError) as info:
        parse(data, **kw)
    return info.value.status


def test_simple_get():
    p, req, body = parse(b"GET /a/b?x=1 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nx-a: 2\r\n\r\n")
    assert (req.method, req.target, req.version) == ("GET", "/a/b?x=1", "HTTP/1.1")
    assert req.headers.get_list("X-A") == "1, 2"
    assert req.headers.get_one("x-a") == "2"
    assert req.keep_alive and body == b""


def test_content_length_body_and_pipelining():
    data = (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
    p, req, body = parse(data)
    assert body == b"hello"
    req2 = p.read_head()
    assert req2.target == "/2" and p.read_body() == b""


def test_chunked_body_with_extensions_and_trailers():
    data = (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n")
    _, req, body = parse(data)
    assert req.chunked and body == b"hello world"


def test_byte_by_byte_is_the_same():
    data = (b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n")
    p = RequestParser()
    req = body = None
    for i in range(len(data)):
        p.feed(data[i:i + 1])
        if req is None:
            req = p.read_head()
        if req is not None and body is None:
            body = p.read_body()
    assert req.target == "/x" and body == b"abc"


def test_http10_keep_alive_rules():
    _, req, _ = parse(b"GET / HTTP/1.0\r\n\r\n")
    assert not req.keep_alive
    _, req, _ = parse(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert req.keep_alive
    _, req, _ = parse(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert not req.keep_alive


def test_expect_continue():
    _, req, _ = parse(b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n")
    assert req.expect_continue
    assert status_of(b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: magic\r\n\r\n") == 417


@pytest.mark.parametrize("data, status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505),
    (b"GET / HTTP/1.1\r\n\r\n", 400),                                     # no Host
    (b"GET / HTTP/1.1\r\nHost: h\r\nBad Header: x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX : y\r\n\r\n", 400),                  # space before colon
    (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n", 400),             # obs-fold
    (b"GET / HTTP/1.1\nHost: h\n\n", 400),                                 # bare LF
    (b"GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n", 400),                     # bare CR
    (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n", 400),              # NUL
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x10\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 40 + b"\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n", 400),
])
def test_malformed_requests(data, status):
    assert status_of(data) == status


def test_header_block_too_large_is_431():
    big = b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"a" * 2000
    assert status_of(big, max_header_size=1024) == 431
    assert status_of(big + b"\r\n\r\n", max_header_size=1024) == 431


def test_body_too_large_is_413_before_reading_it():
    p = RequestParser(max_body_size=10)
    p.feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n")
    with pytest.raises(HTTPError) as info:
        p.read_head()
    assert info.value.status == 413
    chunked = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n"
    assert status_of(chunked, max_body_size=10) == 413


def test_message_headers_refuse_injection():
    h = MessageHeaders()
    for value in ("a\r\nX: y", "a\nb", "a\rb", "a\x00b"):
        with pytest.raises(ValueError):
            h.append("X-Test", value)
    with pytest.raises(ValueError):
        h.append("X Test", "v")
    with pytest.raises(ValueError):
        h.append("X\r\nY", "v")
    h.append("X-Test", "ok")
    h.replace("x-test", "ok2")
    assert h.items() == [("x-test", "ok2")]
    assert h.header_contains("Connection", "x") is False


def test_response_head_and_chunks():
    h = MessageHeaders([("Content-Length", "2")])
    assert build_response_head("HTTP/1.1", 200, "OK", h) == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
    assert chunk(b"hello") == b"5\r\nhello\r\n" and chunk(b"") == b""


def test_targets_and_queries():
    assert split_target("/a?b=1#f") == ("/a", "b=1#f", "")
    assert split_target("http://host:8/p?q") == ("/p", "q", "host:8")
    assert split_target("/a") == ("/a", None, "")
    assert parse_query(None) is None


# Measured on libsoup 3 (tests/test_libsoup_reference.py compares the two where libsoup runs).
@pytest.mark.parametrize("query, expected", [
    ("a=1&b=%20x&c", {"a": "1", "b": " x"}),          # a pair without "=" is skipped
    ("a", {}),
    ("", {}),
    ("a=1&&b=2", {"a": "1", "b": "2"}),
    ("=x&b=2", {"": "x", "b": "2"}),
    ("a=b=c", {"a": "b=c"}),
    ("a=1;b=2", {"a": "1;b=2"}),                        # only "&" separates
    ("a+b=c+d%2B", {"a b": "c d+"}),
    ("a=1&a=2", {"a": "2"}),                            # the last one wins
    ("%C3%A9=%c3%a9", {"\u00e9": "\u00e9"}),
])
def test_query_decoded_as_libsoup(query, expected):
    assert parse_query(query) == expected


@pytest.mark.parametrize("query", ["a=%zz", "a=%", "a=%4", "a=%ff", "%C0%80=1"])
def test_malformed_or_non_utf8_query_is_400(query):
    with pytest.raises(HTTPError) as info:
        parse_query(query)
    assert info.value.status == 400


@pytest.mark.parametrize("target, path", [
    ("/n", "/n"),
    ("/%6e", "/n"),                        # unreserved characters decoded
    ("/%6E/x", "/n/x"),
    ("/%7Euser", "/~user"),
    ("/n%2Fx", "/n/x"),                    # then everything is decoded for the handler...
    ("/n%20x", "/n x"),
    ("/n/%C3%A9", "/n/\u00e9"),
    ("/n%3Fa=1", "/n?a=1"),
    ("/n/%25", "/n/%"),
    ("/n/%2525", "/n/%25"),                # ... once
    ("/n/x%23y", "/n/x#y"),
    ("/n%0Ax", "/n\nx"),                  # as libsoup: a handler may see controls (logs don't)
    ("/n/../n", "/n"),                     # dot segments removed (RFC 3986 5.2.4)
    ("/a/./b", "/a/b"),
    ("/a/%2e%2e/n", "/n"),                 # "%2e" is a dot
    ("/n/.%2e/x", "/x"),
    ("/n/%2F/..", "/n/"),                  # "%2F" is decoded after dot removal
    ("/..", "/"),
    ("/../n", "/n"),
    ("/n/..", "/"),
    ("/n/x/..", "/n/"),
    ("/n/.", "/n/"),
    ("//n", "//n"),
    ("/.hidden/x.txt", "/.hidden/x.txt"),
    ("/a+b", "/a+b"),                      # "+" is only a space in queries
    ("http://h:8/%6e?q", "/n"),
])
def test_request_path_as_libsoup_handlers_see_it(target, path):
    req = parse(b"GET " + target.encode() + b" HTTP/1.1\r\nHost: h\r\n\r\n")[1]
    assert req.path == path


@pytest.mark.parametrize("method, target", [
    ("GET", "/n%"), ("GET", "/n%zz"), ("GET", "/n%4"), ("GET", "/n/%00"), ("GET", "/n/%ff"),
    ("GET", "/n%C0%80"), ("GET", "/n%ED%A0%80"), ("GET", "/n?a=%zz&b=1"), ("GET", "n"),
    ("GET", "*"), ("GET", "ftp://h/x"),
])
def test_bad_targets_are_400(method, target):
    parser = RequestParser()
    parser.feed(method.encode() + b" " + target.encode() + b" HTTP/1.1\r\nHost: h\r\n\r\n")
    with pytest.raises(HTTPError) as info:
        parser.read_head()
    assert info.value.status == 400


def test_asterisk_and_authority_forms_have_no_handler_path():
    options = parse(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n")[1]
    connect = parse(b"CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n")[1]
    assert (options.path, options.query) == ("*", None)
    assert (connect.path, connect.query) == ("h:443", None)


def test_remove_dot_segments_never_climbs_above_the_root():
    assert remove_dot_segments("/a/b/../../../../c") == "/c"
    assert remove_dot_segments("/a/b/./../c/.") == "/a/c/"


def test_loggable_paths_cannot_forge_log_lines():
    assert quote_path("/n\nGET /forged HTTP/1.1") == "/n%0AGET%20/forged%20HTTP/1.1"
    assert quote_path('/a"b\\c\u00e9') == "/a%22b%5Cc%C3%A9"
    assert quote_path("/plain/path?x=1") == "/plain/path?x=1"
