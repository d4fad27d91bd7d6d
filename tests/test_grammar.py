"""Unit tests of minisoup.grammar: the RFC 9110 / 3986 rules shared by http, handshake and
extensions."""

import pytest

from minisoup.grammar import (CTL, CTL_EXCEPT_HTAB, HEAD_CTL_BYTES, TOKEN, TOKEN_BYTES, has_ctl,
                              is_host, is_token, list_contains, split_list)

TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def test_token_is_exactly_the_rfc_9110_tchar_set():
    for code in range(256):
        char = chr(code)
        assert is_token(char) == (char in TCHARS), repr(char)
        assert (TOKEN_BYTES.fullmatch(bytes([code])) is not None) == (char in TCHARS)
    assert is_token("permessage-deflate") and is_token("x" * 1000)
    assert not is_token("") and not is_token("a b") and not is_token("a,b") and not is_token("a\n")
    assert TOKEN.match("abc;q=1").group() == "abc"          # reads one token from a position


def test_control_characters():
    for code in range(128):
        char = chr(code)
        ctl = code < 0x20 or code == 0x7F
        assert has_ctl(char) == ctl
        assert has_ctl(char, allow_htab=True) == (ctl and char != "\t")
        assert (CTL.search(char) is not None) == ctl
        assert (CTL_EXCEPT_HTAB.search(char) is not None) == (ctl and char != "\t")
        assert (HEAD_CTL_BYTES.search(bytes([code])) is not None) == (ctl and char not in "\t\r\n")
    assert not has_ctl("caf\u00e9 \u00a0x")                 # obs-text is not a control


@pytest.mark.parametrize("value, items", [
    (None, []), ("", []), (",", []), (" , \t,", []),
    ("a", ["a"]), ("a,b", ["a", "b"]), (" a , b ", ["a", "b"]), (",a", ["a"]), ("a,", ["a"]),
    ("a, ,b,,", ["a", "b"]), ("\ta\t,\tb", ["a", "b"]),
    ("a\u00a0", ["a\u00a0"]),                               # NBSP is not OWS
])
def test_split_list_ignores_empty_elements_and_strips_ows(value, items):
    assert split_list(value) == items


def test_list_contains_is_case_insensitive_and_exact():
    assert list_contains("keep-alive, Upgrade", "upgrade")
    assert list_contains(",UPGRADE,", "Upgrade")
    assert not list_contains("upgrades", "upgrade") and not list_contains(None, "upgrade")
    assert not list_contains("x-upgrade, upgrade2", "upgrade")


@pytest.mark.parametrize("value", [
    "", "h", "h:", "h:80", "h:99999", "example.com", "EXAMPLE.com.", "a-b_c~d", "a%20b",
    "!$&'()*+,;=", "1.2.3.4", "1.2.3.4:8080", "[::1]", "[::1]:80", "[2001:db8::1]:443",
    "[::ffff:1.2.3.4]", "[v1.x]", "[V7.a:b]",
])
def test_valid_hosts(value):
    assert is_host(value)


@pytest.mark.parametrize("value", [
    "a, b", "a b", "a b/c@d", "user@h", "u:p@h", "h/", "h/p", "h?q", "h#f", "h:x", "h:80:80",
    ":", ":80", "h: 80", " h", "h\t", "::1", "[::1", "::1]", "[::1]x", "[::1]:x", "[1::2::3]",
    "[::1%eth0]", "[]", "[v.x]", "[v1.]", "[vz.x]", "a%", "a%zz", "a%2", "\u00e9", "h\\x",
    "h\x00", "h\r\nX: y", '"h"', "<h>", "h|i", "h[1]",
])
def test_invalid_hosts(value):
    assert not is_host(value)


def test_host_check_is_linear():
    import time
    start = time.process_time()
    for value in ("a" * 100000 + " ", "%41" * 30000 + "%", "[" + ":" * 50000):
        assert not is_host(value)
    assert time.process_time() - start < 0.5


def test_modules_use_the_shared_rules():
    # The handshake's own token regex ended in "$", which also matches before a final
    # newline: a client subprotocol "chat\n" passed the check and reached the request.
    from minisoup.handshake import client_request_headers
    with pytest.raises(ValueError):
        client_request_headers("h", "/", protocols=["chat\n"])
    client_request_headers("h", "/", protocols=["chat", "v2.json"])
