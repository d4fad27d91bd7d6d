"""Header-value grammar as libsoup's ``soup_header_*`` and ``soup_date_time_*`` (sans-I/O).

Pure functions over ``str``: comma and semicolon lists with quoted-strings
(``header_parse_list``, ``header_contains``), quality lists for Accept-like fields
(``header_parse_quality_list``), ``name=value`` parameter lists with RFC 8187 extended
values (``header_parse_param_list`` and friends), the Content-Type, Content-Disposition,
Range and Content-Range values that :class:`~minisoup.http.MessageHeaders` reads and
writes, and HTTP dates (``date_time_new_from_http_string``, ``date_time_to_string``).

Header values are untrusted input: nothing here raises on one (a malformed value gives
``None`` or an empty result), and every parser is one pass over the value, so the work
is linear in its length (the request parser already bounds that length).

Where libsoup 3.2 and RFC 9110 disagree, these follow the RFC and say so in the
docstring (the README's differences list names them too).
"""

import datetime
import enum
import re
from typing import Dict, List, Optional, Tuple
from urllib.parse import quote_from_bytes, unquote_to_bytes

from .grammar import TOKEN

__all__ = [
    "header_parse_list", "header_parse_quality_list", "header_contains",
    "header_parse_param_list", "header_parse_param_list_strict",
    "header_parse_semi_param_list", "header_parse_semi_param_list_strict",
    "date_time_new_from_http_string", "date_time_to_string", "DateFormat", "Expectation",
    "parse_param_items", "format_param", "parse_content_type", "parse_content_disposition",
    "format_content_value", "parse_range", "format_ranges", "parse_content_range",
    "format_content_range", "parse_expectations",
]

Param = Tuple[str, Optional[str], bool]
Params = Dict[str, Optional[str]]

#: What GLib's ``g_ascii_isspace`` (and so libsoup) skips around list items: SP, HTAB,
#: LF, FF and CR. Not ``str.strip()``'s set, which also takes VT and Unicode spaces.
ASCII_SPACE = " \t\n\f\r"
#: A position in a Range or Content-Range value: at most 19 digits (what fits in
#: libsoup's 64-bit goffset). A longer number makes the whole value invalid.
MAX_POSITION_DIGITS = 19
#: The highest quality value, in thousandths (RFC 9110 §12.4.2: "q=1" is 1000).
Q_MAX = 1000

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
# RFC 8187 §3.2.1 attr-char: what an extended value may carry without percent-encoding.
_ATTR_CHAR_SAFE = b"!#$&+-.^_`|~"
# A "%" that does not start a two-hex-digit escape, or an escaped NUL: libsoup refuses the
# whole extended value for either (its URI decoder does).
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})|%00")
_EXT_CHARSETS = {"utf-8": "utf-8", "iso-8859-1": "latin-1"}


def ascii_lower(text: str) -> str:
    """``text`` with only A-Z lower-cased (GLib's ``g_ascii_strdown``): header names and
    tokens compare this way, so a non-ASCII letter never matches an ASCII one."""
    return text.translate(_ASCII_LOWER)


# --- Lists (RFC 9110 §5.6.1 with quoted-strings) ---

def split_items(header: str, delim: str = ",") -> List[str]:
    """The items of a ``delim``-separated list, as libsoup's ``parse_list``: an item ends
    at a ``delim`` outside a quoted-string (``\\`` escapes inside quotes; an unterminated
    quote runs to the end), whitespace around items is dropped, empty items are skipped."""
    if '"' not in header:  # the usual case: no quoted-string, a plain split
        return [s for s in (part.strip(ASCII_SPACE) for part in header.split(delim)) if s]
    items = []
    start = 0
    quoted = False
    i = 0
    n = len(header)
    while i < n:
        c = header[i]
        if c == '"':
            quoted = not quoted
        elif quoted:
            if c == "\\":
                i += 1
        elif c == delim:
            items.append(header[start:i])
            start = i + 1
        i += 1
    items.append(header[start:])
    return [s for s in (item.strip(ASCII_SPACE) for item in items) if s]


def header_parse_list(header: str) -> List[str]:
    """libsoup's ``soup_header_parse_list``: the items of a comma list (RFC 9110
    ``#element``), quoted-strings kept whole and as written, empty items skipped."""
    return split_items(header, ",")


def header_contains(header: str, token: str) -> bool:
    """libsoup's ``soup_header_contains``: True if an item of the comma list ``header`` is
    ``token``, ignoring ASCII case (not for lists with parameters or q-values)."""
    token = ascii_lower(token)
    return any(ascii_lower(item) == token for item in split_items(header, ","))


def _quality(item: str, pos: int) -> Optional[int]:
    # The parameter of ``item`` starting at ``pos`` if it is "q=" (OWS allowed around "="),
    # as thousandths; None if it is not a q-value. As libsoup: "1…" is 1, "0.ddd" takes up
    # to three digits, anything else ("q=.5", "q=2") is not a q-value. Positions, not
    # slices: an item with many ";" must not cost quadratic copying.
    n = len(item)
    while pos < n and item[pos] in ASCII_SPACE:
        pos += 1
    if pos >= n or item[pos] not in "qQ":
        return None
    pos += 1
    while pos < n and item[pos] in ASCII_SPACE:
        pos += 1
    if pos >= n or item[pos] != "=":
        return None
    pos += 1
    while pos < n and item[pos] in ASCII_SPACE:
        pos += 1
    first = item[pos:pos + 1]
    if first == "1":
        return Q_MAX
    if first != "0":
        return None
    digits = ""
    if item[pos + 1:pos + 2] == ".":
        for c in item[pos + 2:pos + 5]:
            if not "0" <= c <= "9":
                break
            digits += c
    return int((digits + "000")[:3])


def header_parse_quality_list(header: str) -> Tuple[List[str], List[str]]:
    """libsoup's ``soup_header_parse_quality_list``, for Accept, Accept-Encoding, TE...:
    ``(acceptable, unacceptable)``. ``acceptable`` holds the items with a q-value above 0,
    highest first (items of equal q keep their order), each without its ``;q=`` and what
    follows it; ``unacceptable`` the items with ``q=0``, in header order.

    A q-value is ``q=1…`` or ``q=0.ddd`` (three digits at most; ``q=0.0001`` is 0); an item
    without one has q=1. Differences from libsoup 3.2, after RFC 9110 §12.4.2: ``Q=`` counts
    too (parameter names are case-insensitive), an item keeps no whitespace before its
    ``;q=``, and ``unacceptable`` is in header order (libsoup's is reversed).
    """
    acceptable: List[Tuple[int, str]] = []
    unacceptable: List[str] = []
    for item in split_items(header, ","):
        q = Q_MAX
        semi = item.find(";")
        while semi >= 0:
            found = _quality(item, semi + 1)
            if found is not None:
                q = found
                item = item[:semi].rstrip(ASCII_SPACE)
                break
            semi = item.find(";", semi + 1)
        if q == 0:
            unacceptable.append(item)
        else:
            acceptable.append((q, item))
    acceptable.sort(key=lambda entry: -entry[0])  # stable: equal q keep header order
    return [item for _, item in acceptable], unacceptable


# --- Parameter lists (name[=value], RFC 8187 extended values) ---

def _unquote(value: str) -> str:
    # A quoted-string up to its closing quote (or the end), backslash escapes removed;
    # anything after the closing quote is ignored, as libsoup does.
    out = []
    i = 1
    n = len(value)
    while i < n and value[i] != '"':
        if value[i] == "\\" and i + 1 < n:
            i += 1
        out.append(value[i])
        i += 1
    return "".join(out)


def _decode_ext_value(value: str) -> Optional[str]:
    # RFC 8187 §3.2: charset'language'percent-encoded, charset UTF-8 or ISO-8859-1 (the two
    # the RFC and libsoup know). None when it does not decode: libsoup then drops the item.
    charset, sep, rest = value.partition("'")
    _language, sep2, encoded = rest.partition("'")
    codec = _EXT_CHARSETS.get(ascii_lower(charset))
    if not (sep and sep2) or codec is None or _BAD_ESCAPE.search(encoded):
        return None
    try:
        return unquote_to_bytes(encoded.encode("utf-8")).decode(codec)
    except UnicodeError:
        return None


def parse_param_items(header: str, delim: str = ";", rfc8187: bool = True) -> List[Param]:
    """The ``name[=value]`` items of a header, in order: ``(name, value, extended)``.

    ``value`` is ``None`` for an item without ``=``, unquoted for a quoted-string, and
    (with ``rfc8187``) decoded for an RFC 8187 ``name*=charset'lang'%XX`` item
    (``extended`` True, the ``*`` dropped from ``name``). Items with an empty name or an
    undecodable extended value are left out, as in libsoup.
    """
    result: List[Param] = []
    for item in split_items(header, delim):
        name, eq, value = item.partition("=")
        if not eq:
            result.append((item, None, False))
            continue
        name = name.rstrip(ASCII_SPACE)
        if not name:
            continue
        value = value.lstrip(ASCII_SPACE)
        if rfc8187 and name.endswith("*") and len(name) > 1:
            decoded = _decode_ext_value(value)
            if decoded is not None:
                result.append((name[:-1], decoded, True))
            continue
        if value.startswith('"'):
            value = _unquote(value)
        result.append((name, value, False))
    return result


def _param_dict(header: str, delim: str, strict: bool) -> Optional[Params]:
    # Keys are lower-cased: libsoup's table compares names ignoring case, a dict cannot.
    params: Params = {}
    for name, value, extended in parse_param_items(header, delim):
        key = ascii_lower(name)
        if key in params:
            if strict:
                return None
            if not extended:
                continue
        params[key] = value
    return params


def header_parse_param_list(header: str) -> Params:
    """libsoup's ``soup_header_parse_param_list``: a comma list of ``token[=value]`` as a
    dict keyed by lower-cased name (``None`` for a name without ``=``). The first of
    repeated names wins, except that an RFC 8187 ``name*=UTF-8''…`` value wins over a plain
    one; quoted values are unquoted; an item with an empty name or an extended value that
    does not decode is left out. Differences from libsoup 3.2: the charset must be
    ``UTF-8`` or ``ISO-8859-1`` in full (libsoup also takes a prefix such as ``utf``), and a
    value that does not decode to text is left out (libsoup returns its raw bytes)."""
    params = _param_dict(header, ",", strict=False)
    assert params is not None
    return params


def header_parse_param_list_strict(header: str) -> Optional[Params]:
    """As :func:`header_parse_param_list`, but ``None`` if a name appears twice (in any
    case, plain or extended), as libsoup's ``soup_header_parse_param_list_strict``."""
    return _param_dict(header, ",", strict=True)


def header_parse_semi_param_list(header: str) -> Params:
    """As :func:`header_parse_param_list` for a ``;``-separated list (the parameters of
    Content-Type or Content-Disposition), as libsoup's ``soup_header_parse_semi_param_list``."""
    params = _param_dict(header, ";", strict=False)
    assert params is not None
    return params


def header_parse_semi_param_list_strict(header: str) -> Optional[Params]:
    """As :func:`header_parse_semi_param_list`, but ``None`` if a name appears twice."""
    return _param_dict(header, ";", strict=True)


def format_param(name: str, value: Optional[str]) -> str:
    """One parameter as libsoup's ``soup_header_g_string_append_param`` writes it: ``name``
    alone for ``None``, ``name=value`` for a token, ``name*=UTF-8''…`` (RFC 8187) for a value
    with non-ASCII characters, else a quoted-string. ``name`` must be a token
    (``ValueError``). An empty value is written ``name=""`` (libsoup writes ``name=``)."""
    if not isinstance(name, str) or TOKEN.fullmatch(name) is None:
        raise ValueError("parameter name is not a token: %r" % (name,))
    if value is None:
        return name
    if not isinstance(value, str):
        raise TypeError("parameter value must be str or None, not %s" % type(value).__name__)
    if not value.isascii():
        return "%s*=UTF-8''%s" % (name, quote_from_bytes(value.encode("utf-8"),
                                                         safe=_ATTR_CHAR_SAFE))
    if TOKEN.fullmatch(value):
        return "%s=%s" % (name, value)
    return '%s="%s"' % (name, value.replace("\\", "\\\\").replace('"', '\\"'))


# --- Content-Type, Content-Disposition ---

def _split_head(value: str) -> Tuple[str, Params]:
    # The part before the first ";" (trailing whitespace dropped) and the parameters after.
    head, semi, rest = value.partition(";")
    return head.rstrip(ASCII_SPACE), header_parse_semi_param_list(rest) if semi else {}


def parse_content_type(value: Optional[str]) -> Optional[Tuple[str, Params]]:
    """A Content-Type value as libsoup's ``soup_message_headers_get_content_type`` reads it:
    ``(media_type, params)``, the media type as written (case kept), or ``None`` when the
    value is missing or the part before ``;`` is not ``type/subtype`` (exactly one ``/``,
    no space)."""
    if value is None:
        return None
    media_type, params = _split_head(value)
    slash = media_type.find("/")
    if slash < 0 or " " in media_type or "/" in media_type[slash + 1:]:
        return None
    return media_type, params


def parse_content_disposition(value: Optional[str]) -> Optional[Tuple[Optional[str], Params]]:
    """A Content-Disposition value as libsoup's ``soup_message_headers_get_content_disposition``
    reads it: ``(disposition, params)``, or ``None`` for a missing value. A value that starts
    with a parameter (``filename=a.txt``, which some sites send) gives ``disposition``
    ``None``. A ``filename`` keeps only what follows its last ``/`` (so that it cannot name
    a file outside the directory a server saves into); one without a value is dropped."""
    if value is None:
        return None
    eq = value.find("=")
    semi = value.find(";")
    if eq >= 0 and (semi < 0 or eq < semi):
        disposition: Optional[str] = None
        params = header_parse_semi_param_list(value)
    else:
        disposition, params = _split_head(value)
    if "filename" in params:
        filename = params["filename"]
        if filename is None:
            del params["filename"]
        else:
            params["filename"] = filename.rpartition("/")[2]
    return disposition, params


def format_content_value(head: str, params: Optional[Params]) -> str:
    """``head; name=value; …`` as libsoup's ``set_content_type`` / ``set_content_disposition``
    write it (each parameter by :func:`format_param`, in the mapping's order)."""
    if not isinstance(head, str):
        raise TypeError("expected str, not %s" % type(head).__name__)
    if not params:
        return head
    return "; ".join([head] + [format_param(name, value) for name, value in params.items()])


# --- Range, Content-Range (RFC 9110 §14) ---

def _position(digits: str) -> Optional[int]:
    # Bounded on purpose: int() of a long digit string is quadratic work.
    if not digits or len(digits) > MAX_POSITION_DIGITS or not digits.isdigit() \
            or not digits.isascii():
        return None
    return int(digits)


def parse_range(value: Optional[str], total_length: int) -> Optional[List[Tuple[int, int]]]:
    """The byte ranges of a Range value, as libsoup's ``soup_message_headers_get_ranges``:
    a list of ``(start, end)`` (``end`` included), or ``None`` when ``value`` is missing or
    not a valid ``bytes=`` range set (an item that is not ``first-last``, ``first-`` or
    ``-suffix`` in digits, a ``last`` before its ``first``, a number of more than
    :data:`MAX_POSITION_DIGITS` digits).

    With ``total_length`` 0 (unknown) the ranges come as written: ``first-`` is
    ``(first, -1)`` and ``-suffix`` is ``(-suffix, -1)``. With a ``total_length``, every
    range is explicit, the list is sorted by start and overlapping ranges are merged
    (adjacent ones are not). Satisfiability is the caller's: a range whose start is
    ``>= total_length`` (``-0`` gives ``(total_length, total_length - 1)``) cannot be
    served, and if none can, the answer is 416 with ``Content-Range: bytes */length``.

    Differences from libsoup 3.2, after RFC 9110 §14.1.2: a suffix longer than the
    representation selects all of it (libsoup gives a negative start), an end past the
    last byte is cut to it, merging is complete (3.2 can leave an overlap after a merge),
    and numbers are digits only (libsoup's ``strtoull`` also takes ``+`` and spaces).
    """
    if value is None or not value.startswith("bytes"):
        return None
    rest = value[5:].lstrip(ASCII_SPACE)
    if rest[:1] != "=":
        return None
    specs = split_items(rest[1:], ",")
    if not specs:
        return None
    ranges: List[Tuple[int, int]] = []
    for spec in specs:
        first_text, dash, last_text = spec.partition("-")
        if not dash:
            return None
        if not first_text:  # "-suffix": the last bytes
            suffix = _position(last_text)
            if suffix is None:
                return None
            if total_length:
                ranges.append((max(0, total_length - suffix), total_length - 1))
            else:
                ranges.append((-suffix, -1))
            continue
        first = _position(first_text)
        if first is None:
            return None
        if not last_text:
            ranges.append((first, total_length - 1))
            continue
        last = _position(last_text)
        if last is None or last < first:
            return None
        if total_length and first < total_length:
            last = min(last, total_length - 1)
        ranges.append((first, last))
    if total_length:
        ranges = _coalesce(ranges)
    return ranges


def _coalesce(ranges: List[Tuple[int, int]]) -> List[Tuple[int, int]]:
    # Sorted by start; a range starting at or before the previous one's end joins it.
    merged: List[Tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def format_ranges(ranges: List[Tuple[int, int]]) -> str:
    """A Range value as libsoup's ``soup_message_headers_set_ranges`` writes it:
    ``(start, end)`` with ``end >= 0`` is ``start-end``, ``(start, -1)`` is ``start-``, and
    a negative ``start`` with ``end`` -1 is the suffix ``-N``."""
    specs = []
    for start, end in ranges:
        start, end = int(start), int(end)
        if end >= 0:
            specs.append("%d-%d" % (start, end))
        elif start >= 0:
            specs.append("%d-" % start)
        else:
            specs.append("%d" % start)
    return "bytes=" + ",".join(specs)


_CONTENT_RANGE = re.compile(r"bytes [ \t\n\f\r]*([0-9]+)-([0-9]+)/([0-9]+|\*)\Z")


def parse_content_range(value: Optional[str]) -> Optional[Tuple[int, int, int]]:
    """A Content-Range value as libsoup's ``soup_message_headers_get_content_range``:
    ``(start, end, total_length)``, ``total_length`` -1 for ``*``; ``None`` when missing or
    not ``bytes first-last/length``. Differences from libsoup 3.2, after RFC 9110 §14.4: a
    range with ``last < first`` or ``length <= last`` is invalid (``None``), and numbers
    are digits only."""
    match = _CONTENT_RANGE.match(value) if value is not None else None
    if match is None:
        return None
    start, end = _position(match.group(1)), _position(match.group(2))
    total = -1 if match.group(3) == "*" else _position(match.group(3))
    if start is None or end is None or total is None or end < start \
            or (total >= 0 and total <= end):
        return None
    return start, end, total


def format_content_range(start: int, end: int, total_length: int = -1) -> str:
    """``bytes start-end/total_length`` (``/*`` when ``total_length`` is negative), as
    libsoup's ``soup_message_headers_set_content_range``."""
    start, end, total_length = int(start), int(end), int(total_length)
    if total_length >= 0:
        return "bytes %d-%d/%d" % (start, end, total_length)
    return "bytes %d-%d/*" % (start, end)


# --- Expect ---

class Expectation(enum.IntFlag):
    """libsoup's ``SoupExpectation``: what an Expect header asks for."""
    UNRECOGNIZED = 1
    CONTINUE = 2


CONTINUE_EXPECTATION = "100-continue"


def parse_expectations(value: Optional[str]) -> Expectation:
    """An Expect value as libsoup reads it: no value is no expectation (0), exactly
    ``100-continue`` (any case) is ``CONTINUE``, anything else ``UNRECOGNIZED``."""
    if value is None:
        return Expectation(0)
    if ascii_lower(value) == CONTINUE_EXPECTATION:
        return Expectation.CONTINUE
    return Expectation.UNRECOGNIZED


# --- HTTP dates ---

class DateFormat(enum.IntEnum):
    """libsoup's ``SoupDateFormat``: what :func:`date_time_to_string` writes."""
    HTTP = 1    # RFC 9110 IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT"
    COOKIE = 2  # the Netscape cookie Expires form: "Sun, 06-Nov-1994 08:49:37 GMT"


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_NUMBERS = {ascii_lower(name): number for number, name in enumerate(_MONTHS, 1)}
_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
# C's isspace, which strtoul skips: GLib's ASCII_SPACE plus VT.
_C_SPACE = ASCII_SPACE + "\v"
_DIGITS = re.compile(r"[0-9]*")
_MAX_DATE_FIELD = 10 ** 9  # bigger numbers wrap around in libsoup's C ints: refused here
# RFC 5322 §4.3 obsolete zones, in minutes east of UTC.
_ZONES = {"EST": -300, "EDT": -240, "CST": -360, "CDT": -300,
          "MST": -420, "MDT": -360, "PST": -480, "PDT": -420}
_MINUTES_PER_DAY = 24 * 60


class _DateScanner:
    """Reads an HTTP date left to right as libsoup's ``parse_textual_date``: numbers as C's
    ``strtoul`` (leading whitespace and a sign allowed), fields separated by spaces or dashes."""

    __slots__ = ("text", "pos")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def peek(self) -> str:
        return self.text[self.pos:self.pos + 1]

    def skip(self, chars: str) -> None:
        text, pos = self.text, self.pos
        while pos < len(text) and text[pos] in chars:
            pos += 1
        self.pos = pos

    def skip_alpha(self) -> None:
        text, pos = self.text, self.pos
        while pos < len(text) and text[pos].isascii() and text[pos].isalpha():
            pos += 1
        self.pos = pos

    def number(self) -> Optional[Tuple[int, int]]:
        """``(value, characters consumed)`` or ``None`` without digits (position kept)."""
        text = self.text
        pos = self.pos
        while pos < len(text) and text[pos] in _C_SPACE:
            pos += 1
        sign = 1
        if text[pos:pos + 1] in ("+", "-"):
            sign = -1 if text[pos] == "-" else 1
            pos += 1
        digits = _DIGITS.match(text, pos).group()
        if not digits:
            return None
        value = int(digits) if len(digits) <= 10 else _MAX_DATE_FIELD
        consumed = pos + len(digits) - self.pos
        self.pos = pos + len(digits)
        # strtoul negates in unsigned arithmetic: in libsoup a "-5" day is a huge number,
        # which no date field accepts; "-0" stays 0.
        return (value if sign > 0 or value == 0 else _MAX_DATE_FIELD), consumed

    def day(self) -> Optional[int]:
        found = self.number()
        if found is None:
            return None
        self.skip(" -")
        return found[0]

    def month(self) -> Optional[int]:
        month = _MONTH_NUMBERS.get(ascii_lower(self.text[self.pos:self.pos + 3]))
        if month is None:
            return None
        self.pos += 3
        self.skip(" -")
        return month

    def year(self) -> Optional[int]:
        found = self.number()
        if found is None:
            return None
        year, consumed = found
        if consumed == 2:  # two digits: 70-99 are 19xx, 00-69 are 20xx (RFC 9110 §5.6.7)
            year += 2000 if year < 70 else 1900
        elif consumed == 3:  # RFC 5322 §4.3: a three-digit year is 1900 + it
            year += 1900
        self.skip(" -")
        return year

    def time(self) -> Optional[Tuple[int, int, int]]:
        fields = []
        for i in range(3):
            found = self.number()
            if found is None:
                return None
            fields.append(found[0])
            if i < 2:
                if self.peek() != ":":
                    return None
                self.pos += 1
        self.skip(" ")
        return fields[0], fields[1], fields[2]

    def timezone(self) -> datetime.tzinfo:
        """The zone after the time: ``±hhmm``, ``±hh:mm``, ``Z``, ``GMT``/``UTC`` or an RFC
        5322 US zone; anything else (or nothing) is UTC, as in libsoup."""
        rest = self.text[self.pos:]
        if rest[:1] in ("+", "-"):
            self.pos += 1
            found = self.number()
            value = found[0] if found else 0
            if self.peek() == ":":
                self.pos += 1
                found = self.number()
                minutes = 60 * value + (found[0] if found else 0)
            else:
                minutes = 60 * (value // 100) + value % 100
            if rest[0] == "-":
                minutes = -minutes
            if abs(minutes) >= _MINUTES_PER_DAY:  # past what a zone can be: libsoup uses UTC
                return datetime.timezone.utc
            return datetime.timezone(datetime.timedelta(minutes=minutes))
        zone = _ZONES.get(rest[:3])
        if zone is not None:
            return datetime.timezone(datetime.timedelta(minutes=zone))
        return datetime.timezone.utc


def date_time_new_from_http_string(date_string: str) -> Optional[datetime.datetime]:
    """libsoup's ``soup_date_time_new_from_http_string``: an aware ``datetime`` from an
    HTTP date, or ``None`` if it cannot be read. Takes the three RFC 9110 §5.6.7 forms
    (IMF-fixdate ``Sun, 06 Nov 1994 08:49:37 GMT``, RFC 850 ``Sunday, 06-Nov-94 08:49:37
    GMT``, asctime ``Sun Nov  6 08:49:37 1994``), RFC 5322 dates with a numeric zone, and
    the same leniencies as libsoup: any case, no weekday, one-digit fields, dashes for
    spaces, no zone (UTC), two-digit years (70-99 are 19xx), trailing text ignored.

    A date that does not exist (31 Feb, 24:00:00, a leap second) or a zone of a day or more
    gives ``None`` / UTC as in libsoup. Difference from libsoup 3.2: the RFC 5322 zones
    ``EST``…``PDT`` have their real offsets (3.2 reads ``EST`` as +0000 and ``PST`` as
    -1500)."""
    if not isinstance(date_string, str):
        return None
    scanner = _DateScanner(date_string)
    scanner.skip(ASCII_SPACE)
    first = scanner.peek()
    # A date starting with a digit must have a month name further on (libsoup's check
    # that turns away ISO 8601, which has its own parser: datetime.fromisoformat).
    if "0" <= first <= "9" and not any(c in date_string for c in "JFMASOND"):
        return None
    if first.isascii() and first.isalpha():  # a weekday, skipped
        scanner.skip_alpha()
        if scanner.peek() == ",":
            scanner.pos += 1
        scanner.skip(ASCII_SPACE)
    fields: Optional[tuple]
    nxt = scanner.peek()
    if nxt.isascii() and nxt.isalpha():  # asctime: "Nov  6 08:49:37 1994"
        month = scanner.month()
        day = scanner.day() if month is not None else None
        hms = scanner.time() if day is not None else None
        year = scanner.year() if hms is not None else None
        fields = (year, month, day, hms) if year is not None else None
    else:  # "06 Nov 1994 08:49:37 GMT" and its variants
        day = scanner.day()
        month = scanner.month() if day is not None else None
        year = scanner.year() if month is not None else None
        hms = scanner.time() if year is not None else None
        fields = (year, month, day, hms) if hms is not None else None
    if fields is None:
        return None
    year, month, day, (hour, minute, second) = fields
    tz = scanner.timezone()
    try:
        return datetime.datetime(year, month, day, hour, minute, second, tzinfo=tz)
    except (ValueError, OverflowError):
        return None


def date_time_to_string(date: datetime.datetime, format: DateFormat = DateFormat.HTTP) -> str:
    """libsoup's ``soup_date_time_to_string``: ``date`` in UTC as ``format`` says
    (:class:`DateFormat`); a naive ``datetime`` is taken as UTC. Weekday and month names
    are English whatever the locale; the year is not zero-padded (as GLib writes it)."""
    if not isinstance(date, datetime.datetime):
        raise TypeError("date must be a datetime, not %s" % type(date).__name__)
    format = DateFormat(format)
    if date.tzinfo is None:
        date = date.replace(tzinfo=datetime.timezone.utc)
    utc = date.astimezone(datetime.timezone.utc)
    pattern = "%s, %02d %s %d %02d:%02d:%02d GMT" if format is DateFormat.HTTP \
        else "%s, %02d-%s-%d %02d:%02d:%02d GMT"
    return pattern % (_WEEKDAYS[utc.weekday()], utc.day, _MONTHS[utc.month - 1], utc.year,
                      utc.hour, utc.minute, utc.second)

