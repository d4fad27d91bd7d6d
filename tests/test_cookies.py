"""minisoup.cookies: Cookie, cookies_from_request, cookies_to_response (sans-I/O)."""

import datetime
from email.utils import parsedate_to_datetime

import pytest

from minisoup.cookies import (MAX_AGE_ONE_HOUR, Cookie, SameSitePolicy, cookies_from_request,
                              cookies_to_response)
from minisoup.http import MessageHeaders

UTC = datetime.timezone.utc


class FakeMessage:
    """What the cookie functions need of a ServerMessage."""

    def __init__(self, *cookie_headers):
        self.request_headers = MessageHeaders([("Cookie", h) for h in cookie_headers])
        self.response_headers = MessageHeaders()

    def get_request_headers(self):
        return self.request_headers

    def get_response_headers(self):
        return self.response_headers


def test_defaults_and_accessors():
    c = Cookie("sid", "abc")
    assert (c.get_name(), c.get_value(), c.get_domain(), c.get_path(), c.get_expires()) == (
        "sid", "abc", None, None, None)
    assert (c.get_secure(), c.get_http_only()) == (False, False)
    assert c.get_same_site_policy() is SameSitePolicy.LAX
    assert c.to_set_cookie_header() == "sid=abc; SameSite=Lax"
    assert c.to_cookie_header() == "sid=abc"
    c.set_name("n"), c.set_value("v"), c.set_domain("example.com"), c.set_path("/p")
    c.set_secure(True), c.set_http_only(True), c.set_same_site_policy(SameSitePolicy.STRICT)
    c.set_expires(datetime.datetime(2030, 1, 2, 3, 4, 5))  # naive: UTC
    assert c.get_expires() == datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert c.to_set_cookie_header() == ("n=v; expires=Wed, 02 Jan 2030 03:04:05 GMT; path=/p; "
                                        "domain=example.com; SameSite=Strict; secure; HttpOnly")
    c.set_same_site_policy(SameSitePolicy.NONE)   # no attribute, as libsoup
    c.set_expires(None), c.set_domain(None), c.set_path(None)
    assert c.to_set_cookie_header() == "n=v; secure; HttpOnly"
    assert [int(p) for p in SameSitePolicy] == [0, 1, 2]


def test_max_age_becomes_an_expires_date():
    c = Cookie("n", "v", max_age=MAX_AGE_ONE_HOUR)
    expires = parsedate_to_datetime(c.to_set_cookie_header().split("expires=")[1].split(";")[0])
    now = datetime.datetime.now(UTC)
    assert abs((expires - now).total_seconds() - 3600) < 5
    c.set_max_age(0)   # deletes the cookie: dated 1970, whatever the client's clock says
    assert "expires=Thu, 01 Jan 1970 00:00:00 GMT" in c.to_set_cookie_header()
    c.set_max_age(-1)
    assert c.get_expires() is None
    c.set_max_age(10 ** 12)
    assert c.get_expires().year == 9999


def test_empty_names_and_values_as_libsoup():
    assert Cookie("", "v").to_set_cookie_header() == "=v; SameSite=Lax"
    assert Cookie("", "v").to_cookie_header() == "v"
    assert Cookie("n", "").to_cookie_header() == "n="
    assert Cookie("", "").to_set_cookie_header() == ""


@pytest.mark.parametrize("field", ["name", "value", "domain", "path"])
@pytest.mark.parametrize("bad", ["a\r\nSet-Cookie: x=y", "a\nb", "a\rb", "a\0b", "a;b", "a\x7f", "a\tb"])
def test_header_injection_raises(field, bad):
    args = {"name": "n", "value": "v", "domain": "d.example", "path": "/"}
    args[field] = bad
    with pytest.raises(ValueError):
        Cookie(args["name"], args["value"], args["domain"], args["path"])
    c = Cookie("n", "v")
    with pytest.raises(ValueError):
        getattr(c, "set_" + field)(bad)
    assert c.to_set_cookie_header() == "n=v; SameSite=Lax"


def test_other_misuse_raises():
    with pytest.raises(ValueError):
        Cookie("a=b", "v")
    with pytest.raises(TypeError):
        Cookie("n", 1)
    with pytest.raises(TypeError):
        Cookie("n", "v").set_expires(12)
    with pytest.raises(ValueError):
        Cookie("n", "v").set_same_site_policy(7)


def _pairs(cookies):
    return [(c.get_name(), c.get_value()) for c in cookies]


def test_cookies_from_request_as_libsoup():
    msg = FakeMessage('a=1; B=2; a=3; c="x\\"y"; d; =e; f=; g = 4 ;;; h=5, i=6; j=%41')
    cookies = cookies_from_request(msg)
    assert _pairs(cookies) == [("a", "1"), ("B", "2"), ("c", 'x"y'), ("f", ""), ("g", "4"),
                               ("h", "5, i=6"), ("j", "%41")]
    assert all(c.get_domain() is None and c.get_path() is None and c.get_expires() is None
               for c in cookies)


def test_cookies_from_request_differences():
    # Names are case-sensitive (RFC 6265); several fields are one list (RFC 9113).
    assert _pairs(cookies_from_request(FakeMessage("A=1; a=2", "b=3; A=4"))) == [
        ("A", "1"), ("a", "2"), ("b", "3")]
    # A quoted ";" cannot be held by a Cookie: that cookie is skipped, not an exception.
    assert _pairs(cookies_from_request(FakeMessage('c="x;y"; d=1'))) == [("d", "1")]
    assert cookies_from_request(FakeMessage()) == []
    # UTF-8 on the wire (header values hold wire bytes as latin-1), as libsoup sends it.
    wire = "k=\u20ac".encode().decode("latin-1")
    assert _pairs(cookies_from_request(FakeMessage(wire))) == [("k", "\u20ac")]
    assert _pairs(cookies_from_request(FakeMessage("k=\xe9"))) == [("k", "\xe9")]  # not UTF-8: kept


def test_cookies_to_response_one_field_each():
    msg = FakeMessage()
    msg.get_response_headers().append("Set-Cookie", "old=1")
    first = Cookie("a", "1", path="/")
    second = Cookie("b", "\u20ac", domain="example.com")
    cookies_to_response([first, Cookie("", ""), second], msg)
    assert msg.get_response_headers().get_all("Set-Cookie") == [
        "old=1", "a=1; path=/; SameSite=Lax",
        "b=\u20ac; domain=example.com; SameSite=Lax".encode().decode("latin-1")]


def test_request_cookies_go_back_unchanged():
    incoming = FakeMessage("sid=abc; theme=dark")
    outgoing = FakeMessage()
    cookies_to_response(cookies_from_request(incoming), outgoing)
    assert outgoing.get_response_headers().get_all("Set-Cookie") == [
        "sid=abc; SameSite=Lax", "theme=dark; SameSite=Lax"]
