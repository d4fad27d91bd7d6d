"""Tests for minisoup.handshake: RFC 6455 section 4 with libsoup's rules."""

import base64

import pytest

from minisoup.handshake import (
    WEBSOCKET_GUID, HandshakeError, HandshakeResult, client_check_response,
    client_request_headers, compute_accept, server_handshake)

RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 section 1.3
ORIGIN = "http://example.com"


class FakeHeaders:
    """The two lookups the handshake uses, over a list of (name, value)."""

    def __init__(self, items=()):
        self.items = list(items)

    def _values(self, name):
        return [v for n, v in self.items if n.lower() == name.lower()]

    def get_one(self, name):
        values = self._values(name)
        return values[-1] if values else None

    def get_list(self, name):
        values = self._values(name)
        return ", ".join(values) if values else None

    def replace(self, name, value):
        self.items = [(n, v) for n, v in self.items if n.lower() != name.lower()]
        if value is not None:
            self.items.append((name, value))
        return self


def request(**changes):
    """A valid client request's headers, with some replaced or (None) removed."""
    headers = FakeHeaders([
        ("Host", "example.com"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", RFC_KEY),
        ("Sec-WebSocket-Version", "13"),
        ("Origin", ORIGIN),
    ])
    for name, value in changes.items():
        headers.replace(name.replace("_", "-"), value)
    return headers


def handshake(headers, method="GET", version="HTTP/1.1", origin=None, protocols=None):
    return server_handshake(method, version, headers, origin, protocols, [])


def failure(headers, **kwargs):
    with pytest.raises(HandshakeError) as info:
        handshake(headers, **kwargs)
    return info.value


def test_accept_key_rfc_example():
    assert compute_accept(RFC_KEY) == RFC_ACCEPT
    assert WEBSOCKET_GUID == "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def test_success_response_headers():
    result = handshake(request())
    assert isinstance(result, HandshakeResult)
    assert result.protocol is None and result.extensions == []
    assert result.headers == [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", RFC_ACCEPT),
    ]


# --- each failing check, in order -------------------------------------------

@pytest.mark.parametrize("kwargs,headers,status,words", [
    ({"method": "POST"}, {}, 400, "GET"),
    ({"method": "get"}, {}, 400, "GET"),
    ({"version": "HTTP/1.0"}, {}, 400, "HTTP/1.1"),
    ({}, {"Upgrade": None}, 400, "Upgrade"),
    ({}, {"Upgrade": "h2c"}, 400, "Upgrade"),
    ({}, {"Upgrade": "websocketx"}, 400, "Upgrade"),
    ({}, {"Connection": None}, 400, "Connection"),
    ({}, {"Connection": "keep-alive"}, 400, "Connection"),
    ({}, {"Connection": "upgraded"}, 400, "Connection"),
    ({}, {"Sec-WebSocket-Version": None}, 400, "Version"),
    ({}, {"Sec-WebSocket-Version": "8"}, 400, "Version"),
    ({}, {"Sec-WebSocket-Version": "130"}, 400, "Version"),
    ({}, {"Sec-WebSocket-Key": None}, 400, "Key"),
    ({}, {"Sec-WebSocket-Key": "not base64!"}, 400, "Key"),
    ({}, {"Sec-WebSocket-Key": base64.b64encode(b"x" * 15).decode()}, 400, "Key"),
    ({}, {"Sec-WebSocket-Key": base64.b64encode(b"x" * 17).decode()}, 400, "Key"),
    ({}, {"Sec-WebSocket-Key": RFC_KEY.rstrip("=")}, 400, "Key"),
    ({}, {"Sec-WebSocket-Key": "d GhlIHNhbXBsZSBub25jZQ=="}, 400, "Key"),
    ({}, {"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ\u00e9="}, 400, "Key"),
    ({"origin": ORIGIN}, {"Origin": None}, 403, "Origin"),
    ({"origin": ORIGIN}, {"Origin": "http://evil.example"}, 403, "Origin"),
    ({"protocols": ["chat"]}, {"Sec-WebSocket-Protocol": "superchat"}, 400, "subprotocol"),
])
def test_failing_checks(kwargs, headers, status, words):
    err = failure(request(**{k.replace("-", "_"): v for k, v in headers.items()}), **kwargs)
    assert err.status == status
    assert words in err.message
    assert str(err) == err.message


def test_wrong_version_advertises_13():
    err = failure(request(Sec_WebSocket_Version="8"))
    assert ("Sec-WebSocket-Version", "13") in err.headers


def test_checks_run_in_order():
    # Everything wrong at once: the method is reported first.
    headers = FakeHeaders([("Origin", "http://other")])
    assert "GET" in failure(headers, method="PUT", origin=ORIGIN).message
    # Valid upgrade headers but bad version and key: the version is reported.
    bad = request(Sec_WebSocket_Version="7", Sec_WebSocket_Key="x")
    assert "Version" in failure(bad).message
    # Bad key and bad origin: 400 for the key before the origin's 403.
    assert failure(request(Sec_WebSocket_Key="x", Origin="http://o"), origin=ORIGIN).status == 400


OTHER_KEY = base64.b64encode(b"y" * 16).decode()


@pytest.mark.parametrize("name,values,words", [
    ("Sec-WebSocket-Key", [RFC_KEY, OTHER_KEY], "Key"),
    ("Sec-WebSocket-Key", [RFC_KEY, RFC_KEY], "Key"),
    ("Sec-WebSocket-Key", [RFC_KEY, ""], "Key"),
    ("Sec-WebSocket-Key", ["", RFC_KEY], "Key"),
    ("Sec-WebSocket-Version", ["13", "13"], "Version"),
    ("Sec-WebSocket-Version", ["8", "13"], "Version"),
], ids=["two-keys", "same-key-twice", "key-then-empty", "empty-then-key", "version-twice",
        "version-8-then-13"])
def test_field_that_must_appear_once_repeated_is_400(name, values, words):
    # RFC 6455 11.3.1 / 11.3.5. Regression: the last field was used, so two keys got a 101.
    headers = request(**{name.replace("-", "_"): None})
    headers.items += [(name, value) for value in values]
    err = failure(headers)
    assert err.status == 400
    assert words in err.message and "once" in err.message


@pytest.mark.parametrize("name,value", [
    ("Sec-WebSocket-Key", RFC_KEY + ", " + OTHER_KEY),
    ("Sec-WebSocket-Key", RFC_KEY + "," + RFC_KEY),
    ("Sec-WebSocket-Version", "13, 8"),
    ("Sec-WebSocket-Version", "13,13"),
])
def test_comma_joined_key_or_version_is_400(name, value):
    assert failure(request(**{name.replace("-", "_"): value})).status == 400


# --- tolerance -------------------------------------------------------------

@pytest.mark.parametrize("upgrade,connection", [
    ("WebSocket", "upgrade"),
    ("WEBSOCKET", "UPGRADE"),
    ("foo, websocket", "keep-alive, Upgrade"),
    ("websocket", "Upgrade,keep-alive"),
])
def test_tokens_case_insensitive_lists(upgrade, connection):
    assert handshake(request(Upgrade=upgrade, Connection=connection)).headers[0] == ("Upgrade", "websocket")


def test_connection_header_repeated():
    headers = request(Connection="keep-alive")
    headers.items.append(("Connection", "Upgrade"))
    handshake(headers)


@pytest.mark.parametrize("key", [
    RFC_KEY, OTHER_KEY, "A" * 22 + "==", "/" * 22 + "==", "+" * 21 + "B==",
    "A" * 21 + "B==",  # spare bits set: b64decode ignores them, so do we
    "A" * 22 + "=", "A" * 22, "A" * 23 + "=", "A" * 21 + "==", "A" * 24 + "==",
    "A" * 20 + "====", "A" * 11 + "=" + "A" * 10 + "==", "A" * 22 + "==\n", "\n" + RFC_KEY,
    "A" * 21 + "-==", "A" * 21 + "_==", "A" * 21 + "\u00c1==", "", "==",
])
def test_key_check_agrees_with_b64decode(key):
    # The key is checked with a regex (hot path); it must accept exactly what
    # base64.b64decode(validate=True) decodes to 16 bytes, once trimmed.
    try:
        expected = len(base64.b64decode(key.strip(), validate=True)) == 16
    except (ValueError, TypeError):
        expected = False
    headers = request(Sec_WebSocket_Key=None)
    headers.items.append(("Sec-WebSocket-Key", key))
    if expected:
        assert handshake(headers).headers[2] == ("Sec-WebSocket-Accept", compute_accept(key.strip()))
    else:
        assert "Key" in failure(headers).message


def test_key_surrounding_whitespace_trimmed():
    result = handshake(request(Sec_WebSocket_Key=" %s " % RFC_KEY))
    assert ("Sec-WebSocket-Accept", RFC_ACCEPT) in result.headers


@pytest.mark.parametrize("sent", [ORIGIN, "HTTP://EXAMPLE.COM", "http://Example.Com"])
def test_origin_case_insensitive(sent):
    handshake(request(Origin=sent), origin=ORIGIN)
    handshake(request(Origin=ORIGIN), origin=sent)


@pytest.mark.parametrize("sent", [
    "http://example.com/", "http://example.com.evil", " http://example.com",
    "http://example.com ", "https://example.com", "http://example.com:80", "null",
])
def test_origin_not_normalised(sent):
    assert failure(request(Origin=sent), origin=ORIGIN).status == 403


def test_origin_none_accepts_anything():
    handshake(request(Origin=None))
    handshake(request(Origin="http://anything"))


# --- subprotocols ------------------------------------------------------------

def protocol_of(offer, server):
    result = handshake(request(Sec_WebSocket_Protocol=offer), protocols=server)
    chosen = [v for n, v in result.headers if n == "Sec-WebSocket-Protocol"]
    assert chosen == ([result.protocol] if result.protocol else [])
    return result.protocol


def test_protocol_server_preference():
    assert protocol_of("a, b", ["b", "a"]) == "b"
    assert protocol_of("b,a", ["a", "b"]) == "a"
    assert protocol_of(" x ,  a ", ["a"]) == "a"


def test_protocol_repeated_header_lines():
    headers = request(Sec_WebSocket_Protocol="x")
    headers.items.append(("Sec-WebSocket-Protocol", "chat"))
    assert handshake(headers, protocols=["chat"]).protocol == "chat"


def test_protocol_no_match_is_400():
    assert failure(request(Sec_WebSocket_Protocol="a, b"), protocols=["c"]).status == 400
    assert failure(request(Sec_WebSocket_Protocol="Chat"), protocols=["chat"]).status == 400
    assert failure(request(Sec_WebSocket_Protocol=""), protocols=["chat"]).status == 400


def test_protocol_not_offered_by_client():
    assert protocol_of(None, ["chat"]) is None


def test_protocols_none_accepts_any_offer():
    assert protocol_of("whatever", None) is None


# --- client side -------------------------------------------------------------

def server_answer(key, **changes):
    headers = FakeHeaders([
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", compute_accept(key)),
    ])
    for name, value in changes.items():
        headers.replace(name.replace("_", "-"), value)
    return headers


def test_client_request_headers():
    key, headers = client_request_headers("example.com:8080", "/ws?x=1", origin=ORIGIN,
                                          protocols=["chat", "superchat"])
    assert len(base64.b64decode(key, validate=True)) == 16
    as_dict = dict(headers)
    assert as_dict["Host"] == "example.com:8080"
    assert as_dict["Sec-WebSocket-Key"] == key
    assert as_dict["Sec-WebSocket-Version"] == "13"
    assert as_dict["Origin"] == ORIGIN
    assert as_dict["Sec-WebSocket-Protocol"] == "chat, superchat"
    assert "Sec-WebSocket-Extensions" not in as_dict
    assert client_request_headers("h", "/")[0] != key  # fresh random key each time


def test_client_request_round_trips_through_server():
    key, headers = client_request_headers("h", "/", origin=ORIGIN, protocols=["b", "a"])
    result = server_handshake("GET", "HTTP/1.1", FakeHeaders(headers), ORIGIN, ["a"], [])
    answer = client_check_response(101, FakeHeaders(result.headers), key, ["b", "a"])
    assert answer.protocol == "a" == result.protocol


@pytest.mark.parametrize("kwargs", [
    {"path": "ws"}, {"path": "/a b"}, {"path": "/\r\nX: y"},
    {"host": "h\r\nX: y"}, {"origin": "o\n"}, {"protocols": ["a b"]}, {"protocols": ["a,b"]},
    {"protocols": [""]},
])
def test_client_request_rejects_unsafe_values(kwargs):
    args = {"host": "h", "path": "/"}
    args.update(kwargs)
    with pytest.raises(ValueError):
        client_request_headers(**args)


def test_client_accepts_correct_answer():
    result = client_check_response(101, server_answer(RFC_KEY), RFC_KEY)
    assert result == HandshakeResult(None, [], [])
    result = client_check_response(101, server_answer(RFC_KEY, Sec_WebSocket_Protocol="chat"),
                                   RFC_KEY, protocols=["chat"])
    assert result.protocol == "chat"


@pytest.mark.parametrize("status,changes,words", [
    (400, {}, "rejected"),
    (200, {}, "rejected"),
    (101, {"Upgrade": None}, "Upgrade"),
    (101, {"Connection": "close"}, "Connection"),
    (101, {"Sec-WebSocket-Accept": None}, "Accept"),
    (101, {"Sec-WebSocket-Accept": RFC_ACCEPT.lower()}, "Accept"),
    (101, {"Sec-WebSocket-Accept": compute_accept("AAAAAAAAAAAAAAAAAAAAAA==")}, "Accept"),
    (101, {"Sec-WebSocket-Protocol": "other"}, "protocol"),
    (101, {"Sec-WebSocket-Extensions": "permessage-deflate"}, "extension"),
])
def test_client_rejects_bad_answer(status, changes, words):
    with pytest.raises(HandshakeError) as info:
        client_check_response(status, server_answer(RFC_KEY, **changes), RFC_KEY, protocols=["chat"])
    assert info.value.status == status
    assert words in info.value.message


@pytest.mark.parametrize("name,second", [
    ("Sec-WebSocket-Accept", RFC_ACCEPT), ("Sec-WebSocket-Accept", "x"),
    ("Sec-WebSocket-Protocol", "chat"), ("Sec-WebSocket-Protocol", "other"),
])
def test_client_rejects_answer_field_repeated(name, second):
    # RFC 6455 11.3.3 / 11.3.4: Accept and Protocol MUST NOT appear more than once.
    headers = server_answer(RFC_KEY, Sec_WebSocket_Protocol="chat")
    headers.items.append((name, second))
    with pytest.raises(HandshakeError) as info:
        client_check_response(101, headers, RFC_KEY, protocols=["chat", "other"])
    assert name in info.value.message


def test_client_rejects_protocol_when_none_offered():
    with pytest.raises(HandshakeError):
        client_check_response(101, server_answer(RFC_KEY, Sec_WebSocket_Protocol="chat"), RFC_KEY)
