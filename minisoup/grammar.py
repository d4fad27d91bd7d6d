"""The RFC 9110 / RFC 3986 grammar the HTTP and WebSocket modules share, sans-I/O.

One place for the rules that were written once per module before: ``token``
(RFC 9110 §5.6.2), control characters (RFC 5234 ``CTL``), comma-separated lists
(RFC 9110 §5.6.1, empty elements ignored, OWS around elements removed), and the
``Host`` field value (RFC 9110 §7.2: ``uri-host [ ":" port ]`` of RFC 3986 §3.2.2).

Compiled patterns are module constants on purpose: request-head parsing runs them on
every request, so callers bind them once instead of going through a function.
"""

import ipaddress
import re
from typing import List, Optional

__all__ = [
    "TCHAR", "TOKEN", "TOKEN_BYTES", "CTL", "CTL_EXCEPT_HTAB", "HEAD_CTL_BYTES", "OWS",
    "is_token", "has_ctl", "split_list", "list_contains", "is_host",
]

#: RFC 9110 §5.6.2 tchar, as the body of a regex character class (str).
TCHAR = r"!#$%&'*+\-.^_`|~0-9A-Za-z"
#: ``token = 1*tchar``; use ``.fullmatch`` for a whole value, ``.match(s, pos)`` to read one.
TOKEN = re.compile("[%s]+" % TCHAR)
TOKEN_BYTES = re.compile(b"[%s]+" % TCHAR.encode("ascii"))

#: Any RFC 5234 CTL (%x00-1F / %x7F): what may not appear in a request-line part.
CTL = re.compile(r"[\x00-\x1f\x7f]")
#: CTL other than HTAB: what a field value may not contain (RFC 9110 §5.5: field-vchar,
#: SP and HTAB only), so also what user code may not put in one (no header injection).
CTL_EXCEPT_HTAB = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
#: CTL other than HTAB, CR and LF, over raw bytes: in a request head CR and LF are the
#: line structure, which the parser checks on its own.
HEAD_CTL_BYTES = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

#: A ``Sec-WebSocket-Key`` value (RFC 6455 §4.1): the base64 of 16 bytes, as the body of a
#: regex. What base64.b64decode(key, validate=True) takes as 16 bytes: 22 base64 characters
#: and "==" (the last one's spare bits are ignored, as b64decode does). Always 24 characters.
WEBSOCKET_KEY = r"[A-Za-z0-9+/]{22}=="
WEBSOCKET_KEY_SIZE = 24

#: RFC 9110 §5.6.3 optional whitespace: the characters to strip around list elements.
OWS = " \t"


def is_token(text: str) -> bool:
    """True if ``text`` is an RFC 9110 token (one or more tchar, nothing else)."""
    return TOKEN.fullmatch(text) is not None


def has_ctl(text: str, allow_htab: bool = False) -> bool:
    """True if ``text`` holds a control character (HTAB allowed with ``allow_htab``)."""
    return (CTL_EXCEPT_HTAB if allow_htab else CTL).search(text) is not None


def split_list(value: Optional[str]) -> List[str]:
    """The elements of an RFC 9110 §5.6.1 comma list, OWS stripped, empty ones ignored.

    ``"a, ,b,"`` gives ``["a", "b"]``; ``None`` or ``""`` give ``[]``. Only SP and HTAB
    count as whitespace (``str.strip()`` would also remove a NBSP, letting a lookalike
    through). Quoted strings are not parsed: for lists whose elements may contain a
    quoted comma, use a real parser (see ``extensions.parse_extension_header``).
    """
    if not value:
        return []
    return [item for item in (part.strip(OWS) for part in value.split(",")) if item]


def list_contains(value: Optional[str], token: str) -> bool:
    """True if the comma list ``value`` has an element equal to ``token``, ignoring case."""
    token = token.lower()
    return any(item.lower() == token for item in split_list(value))


# RFC 3986 §3.2.2. reg-name = *( unreserved / pct-encoded / sub-delims ); an IPv4 address
# is a reg-name too as far as the characters go. IP-literal = "[" IPv6address / IPvFuture "]".
_UNRESERVED_SUB_DELIMS = r"A-Za-z0-9\-._~!$&'()*+,;="
_HOST = re.compile(
    r"(?!:)"                                    # no empty host before a port
    r"(?:[%s]*(?:%%[0-9A-Fa-f]{2}[%s]*)*"       # reg-name (and IPv4address)
    r"|\[(?:(?P<ipv6>[0-9A-Fa-f:.]+)"          # IPv6address, checked below
    r"|[vV][0-9A-Fa-f]+\.[%s:]+)\])"           # IPvFuture
    r"(?::[0-9]*)?" % ((_UNRESERVED_SUB_DELIMS,) * 3))


def is_host(value: str) -> bool:
    """True if ``value`` is a valid ``Host`` field value: RFC 3986 ``host [":" port]``.

    ``host`` is a reg-name, an IPv4 address or a bracketed IPv6 address or IPvFuture
    literal; ``port`` is digits, possibly none. No userinfo, path, query, whitespace,
    list or non-ASCII character (an internationalised name travels as punycode). The
    whole value may be empty (RFC 9112 §3.2, for a target without an authority), but not
    the host alone (":80"): an "http" URI has none such (RFC 9110 §4.2.1).
    """
    match = _HOST.fullmatch(value)
    if match is None:
        return False
    if "[" not in value:
        return True  # hot path: a name or an IPv4 address
    ipv6 = match.group("ipv6")
    if ipv6 is not None:
        try:
            ipaddress.IPv6Address(ipv6)
        except ValueError:
            return False
    return True
