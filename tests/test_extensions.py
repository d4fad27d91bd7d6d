"""Tests for minisoup.extensions: header grammar, the base interface, negotiation."""

import pytest

from minisoup.deflate import WebsocketExtensionDeflate
from minisoup.extensions import (
    WebsocketExtension,
    client_accept,
    client_offer,
    format_extension,
    format_params,
    negotiate_server,
    parse_extension_header,
)
from minisoup.frames import RSV1, RSV2


# -- parse_extension_header -------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    ("", []),
    ("   ", []),
    ("foo", [("foo", [])]),
    ("foo, bar", [("foo", []), ("bar", [])]),
    ("foo; a", [("foo", [("a", None)])]),
    ("foo; a=1; b", [("foo", [("a", "1"), ("b", None)])]),
    ("permessage-deflate; client_max_window_bits",
     [("permessage-deflate", [("client_max_window_bits", None)])]),
    # whitespace (spaces and tabs) around every separator
    (" \tfoo \t;\t a \t= \t1 \t, \tbar\t", [("foo", [("a", "1")]), ("bar", [])]),
    ("foo;a=1;b", [("foo", [("a", "1"), ("b", None)])]),
    # quoted-string values are unquoted, escapes removed
    ('foo; a="10"', [("foo", [("a", "10")])]),
    ('foo; a="x\\yz"', [("foo", [("a", "xyz")])]),
    ('foo; a="1", bar', [("foo", [("a", "1")]), ("bar", [])]),
    # RFC 7230 §7: empty list elements are ignored
    ("foo, , bar,", [("foo", []), ("bar", [])]),
    (",foo", [("foo", [])]),
    # two header lines comma-joined
    ("a; x=1, b, a; y", [("a", [("x", "1")]), ("b", []), ("a", [("y", None)])]),
])
def test_parse_extension_header(value, expected):
    assert parse_extension_header(value) == expected


@pytest.mark.parametrize("value", [
    ";",
    "foo;",
    "foo; ;",
    "foo; =1",
    "foo; a=",
    "foo; a= ;b",
    "foo; a=1=2",
    "foo; a=1 2",
    "foo bar",
    "foo=1",
    'foo; a="unterminated',
    'foo; a="two words"',  # a quoted value must still be a token
    'foo; a=""',
    'foo; a="x"y',
    "foo; a=[1]",
    "fo\x00o",
    "foo\r\n, bar",
    "foo; a=\x7f",
    "foo; a=é",
])
def test_parse_extension_header_rejects_broken_syntax(value):
    with pytest.raises(ValueError):
        parse_extension_header(value)


def test_format_params_and_extension():
    assert format_params([]) == ""
    assert format_params([("a", None), ("b", "12")]) == "a; b=12"
    assert format_params([("a", 'x y"z')]) == 'a="x y\\"z"'
    assert format_extension("foo", "") == "foo"
    assert format_extension("foo", "a; b=1") == "foo; a; b=1"
    # what we format, we parse back
    assert parse_extension_header(format_extension("foo", format_params([("a", None), ("b", "1")]))) == [
        ("foo", [("a", None), ("b", "1")])]


# -- the base interface ------------------------------------------------------------------

class Noop(WebsocketExtension):
    """A parameterless extension on RSV2 using every default of the base class."""
    name = "x-noop"
    rsv_bits = RSV2


class Rsv1A(WebsocketExtension):
    name = "x-rsv1-a"
    rsv_bits = RSV1


class Rsv1B(WebsocketExtension):
    name = "x-rsv1-b"
    rsv_bits = RSV1


class Raising(WebsocketExtension):
    name = "x-raising"

    @classmethod
    def server_accept(cls, params):
        raise ValueError("bad params")


def test_base_class_defaults():
    assert Noop.server_accept([("a", None)]) is None
    instance, params = Noop.server_accept([])
    assert isinstance(instance, Noop) and params == ""
    assert instance.get_name() == "x-noop"
    assert instance.get_params_string() == ""
    assert instance.get_header_element() == "x-noop"
    assert "x-noop" in repr(instance)
    assert Noop.client_offer() == "x-noop"
    assert isinstance(Noop.client_accept([]), Noop)
    with pytest.raises(ValueError):
        Noop.client_accept([("a", "1")])
    assert instance.decode_start(RSV2) is True
    assert instance.decode_start(RSV1) is False
    assert instance.decode(b"abc", True, 0) == b"abc"
    assert instance.encode(b"abc") == (b"abc", 0)


# -- negotiate_server --------------------------------------------------------------------

def test_negotiate_server_without_header():
    assert negotiate_server(None, [WebsocketExtensionDeflate]) == ([], None)
    assert negotiate_server("", [WebsocketExtensionDeflate]) == ([], None)
    assert negotiate_server("x-unknown; a=1", [WebsocketExtensionDeflate]) == ([], None)


@pytest.mark.parametrize("header", [
    "permessage-deflate; client_max_window_bits=",
    "permessage-deflate;; x",
    'permessage-deflate; server_max_window_bits="10',
    "permessage-deflate client_max_window_bits",
])
def test_negotiate_server_broken_header_declines_all(header):
    # a syntax error anywhere declines everything, never raises
    assert negotiate_server(header + ", x-noop", [WebsocketExtensionDeflate, Noop]) == ([], None)


def test_negotiate_server_accepts_several_in_client_order():
    exts, response = negotiate_server("x-noop, permessage-deflate", [WebsocketExtensionDeflate, Noop])
    assert [type(e) for e in exts] == [Noop, WebsocketExtensionDeflate]
    assert response == "x-noop, permessage-deflate; server_max_window_bits=12"


def test_negotiate_server_two_extensions_on_rsv1_only_first():
    exts, response = negotiate_server("x-rsv1-a, x-rsv1-b", [Rsv1A, Rsv1B])
    assert [type(e) for e in exts] == [Rsv1A]
    assert response == "x-rsv1-a"
    exts, response = negotiate_server("x-rsv1-b, x-rsv1-a", [Rsv1A, Rsv1B])
    assert [type(e) for e in exts] == [Rsv1B]
    # deflate also owns RSV1
    exts, response = negotiate_server("permessage-deflate, x-rsv1-a", [WebsocketExtensionDeflate, Rsv1A])
    assert [type(e) for e in exts] == [WebsocketExtensionDeflate]


def test_negotiate_server_declined_offer_frees_rsv_bit():
    # the first RSV1 offer is declined (bad params): the second may take RSV1
    exts, response = negotiate_server("x-rsv1-a; bad, x-rsv1-b", [Rsv1A, Rsv1B])
    assert [type(e) for e in exts] == [Rsv1B]


def test_negotiate_server_takes_first_acceptable_offer_once():
    exts, response = negotiate_server("x-noop; bad, x-noop, x-noop", [Noop])
    assert len(exts) == 1
    assert response == "x-noop"


def test_negotiate_server_first_type_with_name_that_accepts():
    class Picky(WebsocketExtension):
        name = "x-noop"

        @classmethod
        def server_accept(cls, params):
            return None

    exts, _ = negotiate_server("x-noop", [Picky, Noop])
    assert [type(e) for e in exts] == [Noop]


def test_negotiate_server_value_error_from_extension_declines():
    assert negotiate_server("x-raising, x-noop", [Raising, Noop])[1] == "x-noop"


# -- client side -------------------------------------------------------------------------

def test_client_offer():
    assert client_offer([]) is None
    assert client_offer([WebsocketExtensionDeflate, Noop]) == (
        "permessage-deflate; client_max_window_bits, x-noop")


def test_client_accept_empty():
    assert client_accept(None, [Noop]) == []
    assert client_accept("", [Noop]) == []
    assert client_accept("  ", [Noop]) == []


@pytest.mark.parametrize("header", [
    "x-unknown",  # not offered
    "x-noop, x-noop",  # duplicate
    "x-noop; a=1",  # bad params for the extension
    "x-noop;",  # malformed
    "x-rsv1-a, x-rsv1-b",  # two extensions on one RSV bit
])
def test_client_accept_rejects(header):
    with pytest.raises(ValueError):
        client_accept(header, [Noop, Rsv1A, Rsv1B])


def test_round_trip_offer_negotiate_accept():
    types = [WebsocketExtensionDeflate, Noop]
    offer = client_offer(types)
    server_exts, response = negotiate_server(offer, types)
    client_exts = client_accept(response, types)
    assert [type(e) for e in server_exts] == [type(e) for e in client_exts] == types
    server_deflate, client_deflate = server_exts[0], client_exts[0]
    assert server_deflate.is_server and not client_deflate.is_server
    assert server_deflate.get_params_string() == client_deflate.get_params_string()
    assert server_deflate.client_max_window_bits == client_deflate.client_max_window_bits == 12
    payload, rsv = client_deflate.encode(b"round trip " * 20)
    assert rsv == RSV1
    assert server_deflate.decode_start(rsv)
    assert server_deflate.decode(payload, True, 0) == b"round trip " * 20
