"""HTTP cookies on the server side (RFC 6265): libsoup's ``SoupCookie``,
``soup_cookies_from_request`` and ``soup_cookies_to_response`` (sans-I/O).

Header values in minisoup are ``str`` holding the wire bytes as latin-1 (that is how
requests are parsed and responses written). Cookie names and values may hold any text, as
in libsoup, which sends them as UTF-8: so Set-Cookie fields are appended in that form and
Cookie fields are read back from it.
"""

import datetime
import enum
import re
from email.utils import format_datetime
from typing import Any, List, Optional, Sequence

from .headers import parse_param_items

# Header injection: none of these may reach a Set-Cookie field from user code. ";" would
# start a new attribute (e.g. a forged Domain), the controls would end the field.
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f;]")
SESSION = -1                     # max_age of a cookie that ends with the browser session
MAX_AGE_ONE_HOUR = 60 * 60       # libsoup's SOUP_COOKIE_MAX_AGE_ONE_* constants
MAX_AGE_ONE_DAY = 24 * MAX_AGE_ONE_HOUR
MAX_AGE_ONE_WEEK = 7 * MAX_AGE_ONE_DAY
MAX_AGE_ONE_YEAR = 365 * MAX_AGE_ONE_DAY
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_LATEST = datetime.datetime.max.replace(tzinfo=datetime.timezone.utc)


class SameSitePolicy(enum.IntEnum):
    """libsoup's ``SoupSameSitePolicy`` (same values)."""
    NONE = 0     # no SameSite attribute is written, as libsoup
    LAX = 1
    STRICT = 2


_SAME_SITE_ATTRIBUTE = {SameSitePolicy.LAX: "; SameSite=Lax",
                        SameSitePolicy.STRICT: "; SameSite=Strict"}


def _check(what: str, text: Optional[str], optional: bool = False) -> Optional[str]:
    if text is None and optional:
        return None
    if not isinstance(text, str):
        raise TypeError("cookie %s must be str, not %s" % (what, type(text).__name__))
    bad = _FORBIDDEN.search(text)
    if bad:
        raise ValueError("cookie %s contains %r (a control character or ';'): %r"
                         % (what, bad.group(), text))
    return text


def _check_name(name: str) -> str:
    _check("name", name)
    if "=" in name:
        raise ValueError("cookie name contains '=': %r" % name)  # it would read back split
    return name


class Cookie:
    """An HTTP cookie (libsoup's ``SoupCookie``).

    ``Cookie(name, value, domain=None, path=None, max_age=-1)``: ``domain`` ``None``
    leaves the Domain attribute out (the cookie goes back to this host only), ``path``
    ``None`` leaves Path out; ``max_age`` is seconds from now (-1: a session cookie, 0:
    already expired, which deletes the cookie), turned into an Expires date as libsoup
    does. Names, values, domains and paths are ``str`` without control characters or
    ``;`` (and a name without ``=``): others raise ``ValueError`` (no header injection).
    The SameSite policy defaults to ``SameSitePolicy.LAX``, as in libsoup 3.4 and later.
    """

    __slots__ = ("_name", "_value", "_domain", "_path", "_expires", "_secure",
                 "_http_only", "_same_site_policy")

    def __init__(self, name: str, value: str, domain: Optional[str] = None,
                 path: Optional[str] = None, max_age: int = SESSION) -> None:
        self._name = _check_name(name)
        self._value = _check("value", value)
        self._domain = _check("domain", domain, optional=True)
        self._path = _check("path", path, optional=True)
        self._expires: Optional[datetime.datetime] = None
        self._secure = False
        self._http_only = False
        self._same_site_policy = SameSitePolicy.LAX
        self.set_max_age(max_age)

    def get_name(self) -> str:
        """The name."""
        return self._name

    def set_name(self, name: str) -> None:
        """Set the name (ValueError for control characters, ``;`` or ``=``)."""
        self._name = _check_name(name)

    def get_value(self) -> str:
        """The value."""
        return self._value

    def set_value(self, value: str) -> None:
        """Set the value (ValueError for control characters or ``;``)."""
        self._value = _check("value", value)

    def get_domain(self) -> Optional[str]:
        """The Domain attribute, or ``None``."""
        return self._domain

    def set_domain(self, domain: Optional[str]) -> None:
        """Set the Domain attribute; ``None`` leaves it out."""
        self._domain = _check("domain", domain, optional=True)

    def get_path(self) -> Optional[str]:
        """The Path attribute, or ``None``."""
        return self._path

    def set_path(self, path: Optional[str]) -> None:
        """Set the Path attribute; ``None`` leaves it out."""
        self._path = _check("path", path, optional=True)

    def get_expires(self) -> Optional[datetime.datetime]:
        """When the cookie expires (an aware UTC ``datetime``), or ``None`` for a
        session cookie."""
        return self._expires

    def set_expires(self, expires: Optional[datetime.datetime]) -> None:
        """Set the expiry time (a ``datetime``; a naive one is taken as UTC), or
        ``None`` for a session cookie. Same property as :meth:`set_max_age`."""
        if expires is None:
            self._expires = None
            return
        if not isinstance(expires, datetime.datetime):
            raise TypeError("expires must be a datetime or None, not %s"
                            % type(expires).__name__)
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=datetime.timezone.utc)
        self._expires = expires.astimezone(datetime.timezone.utc)

    def set_max_age(self, max_age: int) -> None:
        """Expire ``max_age`` seconds from now: -1 makes a session cookie, 0 an expired
        one (dated 1970, as libsoup, safe against clock skew)."""
        max_age = int(max_age)
        if max_age == SESSION:
            self._expires = None
        elif max_age == 0:
            self._expires = _EPOCH
        else:
            now = datetime.datetime.now(datetime.timezone.utc)
            try:
                self._expires = now + datetime.timedelta(seconds=max_age)
            except OverflowError:
                self._expires = _LATEST if max_age > 0 else _EPOCH

    def get_secure(self) -> bool:
        """The Secure attribute (send over https only)."""
        return self._secure

    def set_secure(self, secure: bool) -> None:
        """Set the Secure attribute."""
        self._secure = bool(secure)

    def get_http_only(self) -> bool:
        """The HttpOnly attribute (hidden from page scripts)."""
        return self._http_only

    def set_http_only(self, http_only: bool) -> None:
        """Set the HttpOnly attribute."""
        self._http_only = bool(http_only)

    def get_same_site_policy(self) -> SameSitePolicy:
        """The SameSite policy."""
        return self._same_site_policy

    def set_same_site_policy(self, policy: SameSitePolicy) -> None:
        """Set the SameSite policy (a :class:`SameSitePolicy`; ``NONE`` writes no
        attribute, as libsoup)."""
        self._same_site_policy = SameSitePolicy(policy)

    def to_set_cookie_header(self) -> str:
        """The Set-Cookie field value, attributes in libsoup's order: ``name=value;
        expires=…; path=…; domain=…; SameSite=…; secure; HttpOnly``. Expires is an RFC
        9110 IMF-fixdate (``Wed, 02 Jan 2030 03:04:05 GMT``). A cookie with an empty name
        and value gives ``""``, as libsoup."""
        if not self._name and not self._value:
            return ""
        out = [self._name, "=", self._value]
        if self._expires is not None:
            out.append("; expires=" + format_datetime(self._expires, usegmt=True))
        if self._path is not None:
            out.append("; path=" + self._path)
        if self._domain is not None:
            out.append("; domain=" + self._domain)
        out.append(_SAME_SITE_ATTRIBUTE.get(self._same_site_policy, ""))
        if self._secure:
            out.append("; secure")
        if self._http_only:
            out.append("; HttpOnly")
        return "".join(out)

    def to_cookie_header(self) -> str:
        """The Cookie field form, ``name=value`` (just ``value`` for an empty name, as
        libsoup)."""
        if not self._name:
            return self._value
        return self._name + "=" + self._value

    def __repr__(self) -> str:
        return "<Cookie %s>" % self.to_set_cookie_header()


def _wire_to_text(text: str) -> str:
    # Header values hold wire bytes as latin-1; cookies travel as UTF-8 (as libsoup's).
    try:
        return text.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return text


def _text_to_wire(text: str) -> str:
    return text.encode("utf-8").decode("latin-1")


def _request_cookie(name: str, value: str) -> Optional[Cookie]:
    try:
        return Cookie(_wire_to_text(name), _wire_to_text(value))
    except ValueError:
        return None  # a quoted value with ";" in it: not a cookie minisoup can hold


def cookies_from_request(msg: Any) -> List[Cookie]:
    """libsoup's ``soup_cookies_from_request``: the cookies of ``msg``'s Cookie request
    header(s), in order (``msg`` is anything with ``get_request_headers()``).

    As libsoup: ``;`` separates cookies, spaces around names and values are dropped, a
    quoted value is unquoted, items without ``=`` or with an empty name are skipped, and
    the first of repeated names wins (the browser sends the most specific first). Only
    name and value are known: domain, path and expires are ``None``. Cookie names are
    case-sensitive (RFC 6265); several Cookie fields are read as one joined by ``; ``
    (RFC 9113 §8.2.3). A value that a :class:`Cookie` cannot hold is skipped.
    """
    headers = msg.get_request_headers()
    values = headers.get_all("Cookie") if hasattr(headers, "get_all") else [headers.get_one("Cookie")]
    values = [value for value in values if value]
    if not values:
        return []
    cookies: List[Cookie] = []
    seen = set()
    for name, value, _ in parse_param_items("; ".join(values), ";", rfc8187=False):
        if value is None or name in seen:
            continue
        seen.add(name)
        cookie = _request_cookie(name, value)
        if cookie is not None:
            cookies.append(cookie)
    return cookies


def cookies_to_response(cookies: Sequence[Cookie], msg: Any) -> None:
    """libsoup's ``soup_cookies_to_response``: append one Set-Cookie response header to
    ``msg`` for each cookie (after any ``msg`` already has). A cookie with an empty name
    and value is left out (libsoup would append an empty field)."""
    headers = msg.get_response_headers()
    for cookie in cookies:
        header = cookie.to_set_cookie_header()
        if header:
            headers.append("Set-Cookie", _text_to_wire(header))
