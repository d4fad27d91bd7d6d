"""HTTP/1.1 as a sans-I/O state machine: request parsing, ``MessageHeaders``, response heads.

Nothing here touches a socket. :class:`RequestParser` takes bytes and gives back
request heads and bodies; :func:`build_response_head` and :func:`chunk` turn a
response into bytes. Parsing is strict on purpose (request smuggling): lines must
end in CRLF, header names must be tokens, obs-fold is refused, and a request with
both ``Content-Length`` and ``Transfer-Encoding``, several ``Content-Length``
fields, a transfer coding other than a final ``chunked``, or a ``Host`` that is not
``host[:port]`` is refused with 400. The grammar rules (token, control characters,
comma lists, Host) come from :mod:`minisoup.grammar`.
"""

import enum
import re
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple
from urllib.parse import quote, unquote_to_bytes

from .errors import Error
from .grammar import (CTL_EXCEPT_HTAB, HEAD_CTL_BYTES, OWS, TCHAR, TOKEN_BYTES,
                      WEBSOCKET_KEY, WEBSOCKET_KEY_SIZE, is_host, list_contains, split_list)
from .headers import (Expectation, ascii_lower, format_content_range, format_content_value,
                      format_ranges, header_parse_list, parse_content_disposition,
                      parse_content_range, parse_content_type, parse_expectations, parse_range)

__all__ = [
    "Encoding", "HTTPError", "MessageHeaders", "Request", "RequestParser",
    "build_plain_head", "build_response_head", "checked_value", "chunk", "head_end",
    "reason_phrase", "http_date", "LAST_CHUNK",
]

CRLF = b"\r\n"
HEADERS_END = b"\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"
MAX_CHUNK_SIZE_DIGITS = 16          # 64-bit sizes; more digits is an attack, not a body
# Empty lines tolerated before a request line (RFC 9112 §2.2 asks for at least one, for old
# clients that end a POST body with an extra CRLF). libsoup 3 tolerates 2 and answers a
# third with 400 (measured); unbounded, they were a free way to keep a worker busy.
MAX_EMPTY_LINES = 2
SUPPORTED_VERSIONS = ("HTTP/1.1", "HTTP/1.0")

_is_token = TOKEN_BYTES.fullmatch
# Hot path: the usual methods and the supported versions are looked up, not matched and
# decoded (this pays for the Host check).
_KNOWN_METHODS = {m.encode("ascii"): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE",
                                                 "OPTIONS", "PATCH", "CONNECT", "TRACE")}
_SUPPORTED_VERSIONS = {v.encode("ascii"): v for v in SUPPORTED_VERSIONS}
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]\Z")
# A header line that does not start with "token:" (obs-fold, space before the colon, ...).
_BAD_HEADER_START = re.compile(rb"\r\n(?![%s]+:)" % TCHAR.encode("ascii"))
_TARGET = re.compile(rb"[\x21-\x7e]+\Z")


class Encoding(enum.Enum):
    """How a response body is framed on the wire (libsoup's ``SoupEncoding``)."""
    CONTENT_LENGTH = "content-length"
    CHUNKED = "chunked"
    EOF = "eof"


class HTTPError(Error):
    """A request that cannot be served: ``status`` is the answer, ``message`` the body.

    After one of these the connection is always closed: the parser cannot know
    where the next request would begin.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = message


def reason_phrase(status: int) -> str:
    """The standard reason phrase for ``status`` ("Unknown Error" for unregistered codes,
    as libsoup)."""
    return _REASONS.get(status, "Unknown Error")


# Hot path: a dict lookup instead of constructing the enum (~0.25 us per response).
_REASONS = {status.value: status.phrase for status in HTTPStatus}


def _check_text(what: str, text: str) -> str:
    # Header injection: user code must never be able to write CR/LF onto the wire.
    if not isinstance(text, str):
        raise TypeError("%s must be str, not %s" % (what, type(text).__name__))
    if CTL_EXCEPT_HTAB.search(text):
        raise ValueError("%s contains a control character (CR, LF or NUL): %r" % (what, text))
    return text


# Hot path: handlers set the same few header names response after response, so the names
# found valid are remembered (a set lookup instead of two regex passes, ~0.3 us), at most
# VALID_NAMES_CACHED of them.
VALID_NAMES_CACHED = 256
_valid_names: set = set()


def _check_name(name: str) -> None:
    if type(name) is str and name in _valid_names:
        return
    _check_text("header name", name)
    if not _is_token(name.encode("latin-1", "replace")):
        raise ValueError("header name is not a token: %r" % name)
    if len(_valid_names) >= VALID_NAMES_CACHED:
        _valid_names.clear()
    _valid_names.add(name)


# Hot path: handlers set the same few values too (a Content-Type), so short values found
# valid are remembered as well (a set lookup instead of a regex search, ~0.1 us), at most
# VALID_VALUES_CACHED of them, each at most VALID_VALUE_CACHED_LENGTH characters long.
VALID_VALUES_CACHED = 256
VALID_VALUE_CACHED_LENGTH = 64
_valid_values: set = set()


def checked_value(value: Any) -> str:
    """``value`` as :meth:`MessageHeaders.replace` sets it: a ``str`` (converted), checked
    (``ValueError`` for a CR, LF or NUL: no header injection)."""
    if type(value) is str and value in _valid_values:
        return value
    return _check_value(value)


def _check_value(value: Any) -> str:
    value = _check_text("header value", str(value))
    if len(value) <= VALID_VALUE_CACHED_LENGTH:
        if len(_valid_values) >= VALID_VALUES_CACHED:
            _valid_values.clear()
        _valid_values.add(value)
    return value


class MessageHeaders:
    """Case-insensitive, multi-valued HTTP headers in arrival order (libsoup's SoupMessageHeaders).

    ``get_one(name)`` gives the last value of a field, ``get_list(name)`` all values
    joined with ", " (``None`` when absent). Values set by user code are checked:
    a CR, LF or NUL raises ``ValueError`` (no header injection).
    """

    # Hot path: every request and response looks fields up several times, so besides the
    # ordered (name, value) list an index maps each lower-cased name to its values. Both
    # are made when first needed: the index on the first lookup by name, and for a head
    # the parser checked (``fields``) the list itself. Many handlers read no request
    # field, and building them per field cost ~0.3 us each, a quarter of parsing a
    # browser's head.
    __slots__ = ("_items", "_index", "_fields")

    def __init__(self, items: Optional[Iterable[Tuple[str, str]]] = None, *,
                 fields: Optional[str] = None,
                 index: Optional[Dict[str, Tuple[str, ...]]] = None) -> None:
        """``items``: (name, value) pairs to start with, unchecked. ``fields``: for
        minisoup's parser, the field lines of a request head it has already checked,
        decoded as latin-1, each as ``"\\r\\nName:value"`` with no OWS after the
        value (what ``_SIMPLE_HEAD`` matches); split into fields when first needed.
        ``index``: for :meth:`copy`, the index of ``items`` (copied)."""
        self._items: List[Tuple[str, str]] = list(items) if items else []
        # Values as tuples, so that copy() may share them (a shallow copy of the dict).
        self._index: Optional[Dict[str, Tuple[str, ...]]] = (
            None if index is None else index.copy())  # else made by the first lookup
        self._fields = fields or None
        if self._fields is not None and self._items:
            self._items[:0] = _FIELD.findall(self._fields)  # the head's fields come first
            self._fields = None
            self._index = None

    @classmethod
    def _of(cls, items: List[Tuple[str, str]], index: Optional[Dict[str, Tuple[str, ...]]],
            fields: Optional[str]) -> "MessageHeaders":
        # The hot paths' constructor: the parts as they are, taken over (no copy, no check,
        # no keyword handling: ~0.1 us less than __init__).
        self = cls.__new__(cls)
        self._items = items
        self._index = index
        self._fields = fields
        return self

    @classmethod
    def from_checked_fields(cls, fields: str) -> "MessageHeaders":
        """``MessageHeaders(fields=fields)``, for minisoup's parser (hot path)."""
        return cls._of([], None, fields or None)

    def _split_fields(self) -> None:
        # Only before anything else touched _items: they are the head's fields, in order.
        self._items = _FIELD.findall(self._fields)
        self._fields = None

    def _get_index(self) -> Dict[str, Tuple[str, ...]]:
        index = self._index
        if index is None:
            if self._fields is not None:
                self._split_fields()
            items = self._items
            index = self._index = {}
            # Hot path (the first lookup in a request's fields): each name once, as most
            # are; the loop that gathers repeated names only when one is repeated (~0.15 us
            # less for an upgrade's six fields).
            for name, value in items:
                index[name.lower()] = (value,)
            if len(index) != len(items):
                index.clear()
                for name, value in items:
                    lname = name.lower()
                    values = index.get(lname)
                    index[lname] = (value,) if values is None else values + (value,)
        return index

    def parsed_fields(self) -> Optional[str]:
        """The field lines these headers were made from by minisoup's parser, as it gave
        them (see ``fields``), while nothing has read or changed the headers; else None.
        (Reading or changing them splits the lines: ``_fields`` is None from then on.)"""
        return self._fields

    def _get_items(self) -> List[Tuple[str, str]]:
        if self._fields is not None:
            self._split_fields()
        return self._items

    def extend_unchecked(self, items: Iterable[Tuple[str, str]]) -> None:
        """:meth:`append_unchecked` for each (name, value) of ``items``, in order."""
        if self._index is None:
            self._get_items().extend(items)
        else:
            for name, value in items:
                self.append_unchecked(name, value)

    def append_unchecked(self, name: str, value: str) -> None:
        """:meth:`append` without the checks, for minisoup's own use: fields the parser
        has already checked, or values the server itself made (Date, Connection)."""
        if self._fields is not None:
            self._split_fields()
        self._items.append((name, value))
        index = self._index
        if index is None:
            return  # made from _items on the first lookup
        lname = name.lower()
        values = index.get(lname)
        index[lname] = (value,) if values is None else values + (value,)

    def replace_unchecked(self, name: str, value: str) -> None:
        """:meth:`replace` without the checks (see :meth:`append_unchecked`)."""
        # Hot path (a 101's three fields, every replace()): remove() and append_unchecked()
        # in one pass, the name lower-cased once.
        index = self._index
        if index is None:
            index = self._get_index()
        lname = name.lower()
        if lname in index:
            self._items = [(k, v) for k, v in self._items if k.lower() != lname]
        self._items.append((name, value))
        index[lname] = (value,)

    def copy(self) -> "MessageHeaders":
        """A copy of these headers (later changes to one do not show in the other)."""
        # The index too (its values are tuples): a response's headers start as a copy of
        # the server's Date and Server, already indexed (hot path).
        index = self._index
        return self._of(self._get_items()[:], None if index is None else index.copy(), None)

    def append(self, name: str, value: str) -> None:
        """Add a field (keeping any existing ones of the same name)."""
        _check_name(name)
        self.append_unchecked(name, value if type(value) is str and value in _valid_values
                              else _check_value(value))

    def replace(self, name: str, value: str) -> None:
        """Set a field to a single value, removing the others of that name."""
        _check_name(name)
        self.replace_unchecked(name, checked_value(value))

    def remove(self, name: str) -> None:
        """Remove every field called ``name`` (case-insensitive)."""
        if not self._items and self._fields is None:
            return  # hot path: a response's first field
        lname = name.lower()
        if self._get_index().pop(lname, None) is not None:
            self._items = [(k, v) for k, v in self._items if k.lower() != lname]

    def clear(self) -> None:
        """Remove every field."""
        self._items = []
        self._index = None
        self._fields = None

    def get_one(self, name: str) -> Optional[str]:
        """The last value of ``name``, or ``None``."""
        index = self._index
        values = (self._get_index() if index is None else index).get(name.lower())
        return values[-1] if values else None

    def get_all(self, name: str) -> List[str]:
        """Every value of ``name``, in order."""
        return list(self._get_index().get(name.lower(), ()))

    def get_list(self, name: str) -> Optional[str]:
        """All values of ``name`` joined with ", " (the comma-list form), or ``None``."""
        index = self._index
        values = (self._get_index() if index is None else index).get(name.lower())
        if not values:
            return None
        # Hot path (a handshake's six lookups): one value, no join.
        return values[0] if len(values) == 1 else ", ".join(values)

    def header_contains(self, name: str, token: str) -> bool:
        """True if the comma list of ``name`` holds ``token`` (case-insensitive)."""
        return list_contains(self.get_list(name), token)

    def get_content_length(self) -> Optional[int]:
        """The Content-Length as an int, or ``None``."""
        value = self.get_one("Content-Length")
        # isascii(): "²" is a digit to str.isdigit() but not to int().
        return int(value) if value is not None and value.isascii() and value.isdigit() else None

    def set_content_length(self, length: int) -> None:
        """Set Content-Length (and drop Transfer-Encoding)."""
        value = str(int(length))
        index = self._index
        if index is None:
            index = self._get_index()
        # Hot path (every response sent whole): usually neither field is there yet, and
        # then the field is added here directly (append_unchecked's work, known ahead).
        if "transfer-encoding" in index or "content-length" in index:
            self.remove("Transfer-Encoding")
            self.remove("Content-Length")
            self.append_unchecked("Content-Length", value)
            return
        self._items.append(("Content-Length", value))
        index["content-length"] = (value,)

    def get_encoding(self) -> Encoding:
        """How a body with these headers is framed."""
        if self.header_contains("Transfer-Encoding", "chunked"):
            return Encoding.CHUNKED
        if self.get_one("Content-Length") is not None:
            return Encoding.CONTENT_LENGTH
        return Encoding.EOF

    def set_encoding(self, encoding: Encoding) -> None:
        """Ask for a body framing; ``Encoding.CHUNKED`` streams the response."""
        if encoding is Encoding.CHUNKED:
            self.remove("Content-Length")
            self.replace_unchecked("Transfer-Encoding", "chunked")
        else:
            self.remove("Transfer-Encoding")

    def get_content_type(self) -> Tuple[Optional[str], Optional[Dict[str, Optional[str]]]]:
        """libsoup's ``get_content_type``: ``(media_type, params)``, the media type as sent
        (case kept) and its parameters keyed by lower-cased name; ``(None, None)`` without a
        Content-Type or when it is not ``type/subtype``
        (:func:`minisoup.headers.parse_content_type`)."""
        parsed = parse_content_type(self.get_one("Content-Type"))
        return parsed if parsed is not None else (None, None)

    def field_lines(self) -> bytes:
        """The fields as they go on the wire: ``b"Name: value\\r\\n"`` each, in order
        (latin-1), without the blank line that ends a head."""
        items = self._items if self._fields is None else self._get_items()
        try:
            # Hot path: the lines of fields seen lately, made once (the Date and Server of
            # every response this second, a handler's usual Content-Type, ...).
            # A line not made yet is made by _FieldLines.__missing__ (no exception: the
            # 101's Sec-WebSocket-Accept is new every time, ~1 us less per handshake).
            return b"".join(map(_field_line_of, items))
        except TypeError:  # a (name, value) pair given as a list (unhashable)
            return b"".join(map(_field_line, items))

    def items(self) -> List[Tuple[str, str]]:
        """A copy of the (name, value) pairs in order."""
        return list(self._get_items())

    def __iter__(self) -> Iterator[Tuple[str, str]]:
        return iter(list(self._get_items()))

    def __len__(self) -> int:
        return len(self._get_items())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._get_index()

    def __repr__(self) -> str:
        return "MessageHeaders(%r)" % (self._get_items(),)

    # --- libsoup's typed accessors: Range, Content-Range, Content-Disposition, Expect, ...
    # (the value grammar is in minisoup.headers; values set here go through replace(),
    # which refuses CR, LF and NUL, or are made of integers only).

    def set_content_type(self, content_type: str,
                         params: Optional[Dict[str, Optional[str]]] = None) -> None:
        """Set Content-Type to ``content_type`` with ``params`` (``name: value``; ``None``
        writes the name alone; a non-ASCII value is written RFC 8187 ``name*=UTF-8''…``).
        ``ValueError`` for a parameter name that is not a token or a CR/LF/NUL."""
        self.replace("Content-Type", format_content_value(content_type, params))

    def get_content_disposition(self) -> Optional[Tuple[Optional[str], Dict[str, Optional[str]]]]:
        """``(disposition, params)`` of the Content-Disposition, or ``None`` without one;
        a ``filename`` keeps only its last path component
        (:func:`minisoup.headers.parse_content_disposition`)."""
        return parse_content_disposition(self.get_one("Content-Disposition"))

    def set_content_disposition(self, disposition: str,
                                params: Optional[Dict[str, Optional[str]]] = None) -> None:
        """Set Content-Disposition (e.g. ``"attachment", {"filename": "résumé.pdf"}``),
        parameters written as :meth:`set_content_type` writes them."""
        self.replace("Content-Disposition", format_content_value(disposition, params))

    def get_ranges(self, total_length: int) -> Optional[List[Tuple[int, int]]]:
        """The byte ranges of the Range header as ``(start, end)`` pairs (``end``
        included), or ``None`` without a valid ``bytes=`` Range (then serve the whole
        representation). With ``total_length`` > 0 they are explicit, sorted and merged;
        a range starting at or past ``total_length`` cannot be served, and 416 is the
        caller's answer when none can (:func:`minisoup.headers.parse_range`)."""
        total_length = int(total_length)
        if total_length < 0:
            raise ValueError("total_length must be >= 0, not %d" % total_length)
        return parse_range(self.get_one("Range"), total_length)

    def set_range(self, start: int, end: int) -> None:
        """Set Range to one range: ``end`` -1 is open-ended, a negative ``start`` with
        ``end`` -1 the last ``-start`` bytes."""
        self.set_ranges([(start, end)])

    def set_ranges(self, ranges: List[Tuple[int, int]], length: Optional[int] = None) -> None:
        """Set Range to ``ranges`` (``(start, end)`` pairs, as :meth:`set_range`); ``length``
        uses only the first ``length`` of them (libsoup's array length)."""
        ranges = list(ranges)
        if length is not None:
            ranges = ranges[:length]
        self.replace_unchecked("Range", format_ranges(ranges))

    def get_content_range(self) -> Optional[Tuple[int, int, int]]:
        """``(start, end, total_length)`` of the Content-Range (``total_length`` -1 for
        ``*``), or ``None`` without a valid one."""
        return parse_content_range(self.get_one("Content-Range"))

    def set_content_range(self, start: int, end: int, total_length: int = -1) -> None:
        """Set Content-Range to ``bytes start-end/total_length`` (``/*`` for a negative
        ``total_length``: unknown). ``total_length`` is the whole representation's."""
        self.replace_unchecked("Content-Range", format_content_range(start, end, total_length))

    def get_expectations(self) -> Expectation:
        """What the Expect header asks: 0 without one, ``Expectation.CONTINUE`` for
        ``100-continue``, ``Expectation.UNRECOGNIZED`` for anything else."""
        return parse_expectations(self.get_list("Expect"))

    def set_expectations(self, expectations: Expectation) -> None:
        """``Expectation.CONTINUE`` sets ``Expect: 100-continue``; 0 removes Expect. Other
        flags raise ``ValueError`` (there is nothing to write for them)."""
        expectations = Expectation(expectations)
        if expectations & ~Expectation.CONTINUE:
            raise ValueError("only Expectation.CONTINUE can be set, not %r" % expectations)
        if expectations:
            self.replace_unchecked("Expect", "100-continue")
        else:
            self.remove("Expect")

    def header_equals(self, name: str, value: str) -> bool:
        """True if the field ``name`` (all its values, comma-joined) is ``value``, ignoring
        ASCII case (as libsoup)."""
        found = self.get_list(name)
        return found is not None and ascii_lower(found) == ascii_lower(value)

    def foreach(self, func: Any, *user_data: Any) -> None:
        """Call ``func(name, value, *user_data)`` for each field in order (over a copy:
        ``func`` may change the headers)."""
        for name, value in list(self._get_items()):
            func(name, value, *user_data)

    def clean_connection_headers(self) -> None:
        """Remove the fields that the Connection header names (RFC 9110 §7.6.1: they are
        for this hop only); Connection itself stays."""
        for name in header_parse_list(self.get_list("Connection") or ""):
            self.remove(name)


class Request:
    """A parsed request head: ``method``, ``target``, ``version``, ``headers``, ``keep_alive``;
    and from the target (:func:`parse_target`): ``path`` (decoded, as handlers see it),
    ``query`` (the raw query string, None without a ``?``), ``form`` (the query decoded by
    :func:`parse_query`, None without one) and ``host`` (absolute form). ``host_field`` is
    the ``Host`` field's value (None without one). ``connection`` is the ``Connection``
    field's comma list (None without one), from which ``keep_alive`` is decided.
    A malformed query is the whole request's 400, as in libsoup. ``shared_head`` is the
    :class:`UpgradeHead` the request was parsed by (see :class:`UpgradeHeads`), else None."""

    __slots__ = ("method", "target", "version", "headers", "keep_alive",
                 "content_length", "chunked", "expect_continue", "path", "query", "form",
                 "host", "host_field", "shared_head")

    def __init__(self, method: str, target: str, version: str, headers: MessageHeaders,
                 connection: Optional[str], host_field: Optional[str] = None) -> None:
        self.method = method
        self.target = target
        if (target[:1] == "/" and "?" not in target and "%" not in target
                and "/." not in target and "#" not in target):
            # The common case, inlined (hot path): nothing to split, decode or remove.
            self.path, self.query, self.host, self.form = target, None, "", None
        else:
            self.path, self.query, self.host = parse_target(method, target)
            self.form = parse_query(self.query)
        self.version = version
        self.headers = headers
        self.host_field = host_field
        if not connection:
            tokens: Any = ()
        elif "," in connection:
            tokens = split_list(connection.lower())
        else:
            tokens = (connection.lower(),)  # hot path: one token, already without OWS
        if version == "HTTP/1.1":
            self.keep_alive = "close" not in tokens
        else:
            self.keep_alive = "keep-alive" in tokens
        self.content_length = 0
        self.chunked = False
        self.expect_continue = False
        self.shared_head: Optional[UpgradeHead] = None

    def again(self, headers: Optional[MessageHeaders]) -> "Request":
        """This request read again (a keep-alive client repeating its head byte for byte,
        see :class:`RequestParser`): everything parsed is shared, and ``headers`` are the new
        request's own (``None``: a template, for the parser to keep). Only for a request
        without a body (nothing else of it changes after parsing)."""
        req = _new_request(Request)
        req.method = self.method
        req.target = self.target
        req.version = self.version
        req.headers = headers
        req.keep_alive = self.keep_alive
        req.content_length = 0
        req.chunked = False
        req.expect_continue = False
        req.path = self.path
        req.query = self.query
        req.form = self.form  # never changed: each handler gets its own copy
        req.host = self.host
        req.host_field = self.host_field
        req.shared_head = None
        return req


_new_request = object.__new__


# The common request, parsed in a few C-level passes (hot path): a usual method, an
# origin-form target, HTTP/1.0 or 1.1, and field lines "token:value" whose values hold
# only HTAB, SP, VCHAR and obs-text and do not end in SP or HTAB, so no bare CR or LF,
# no control character, no obs-fold anywhere, and nothing to strip after the value.
# One fullmatch checks all of that; whatever it does not match goes the line-by-line
# way of _parse_head, which names what is wrong. Its method is a subset of
# _KNOWN_METHODS; every other check below is _parse_head's too.
_SIMPLE_HEAD = re.compile(
    rb"(GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH) (/[\x21-\x7e]*) HTTP/1\.([01])"
    rb"((?:\r\n[%s]+:[ \t]*(?:[\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)*)"
    % TCHAR.encode("ascii"))
# One field line of such a head (decoded as latin-1): name, value without leading OWS.
_FIELD = re.compile(r"\r\n([^:]+):[ \t]*([^\r]*)")
# The field lines of such a head that the parser itself reads, in one pass.
_PARSER_FIELD = re.compile(
    r"\r\n(?i:(host|connection|content-length|transfer-encoding|expect)):[ \t]*([^\r]*)", re.ASCII)
_VERSIONS_BY_DIGIT = {b"1": "HTTP/1.1", b"0": "HTTP/1.0"}
# The longest head (with its blank line) a parser remembers to recognise its repetition
# (RequestParser.read_head): a browser's is usually under 1 KiB, and what is kept per
# connection stays small.
SAME_HEAD_MAX = 2048


def _parse_simple_head(buf: bytes, start: int, end: int,
                       max_body_size: int) -> Optional[Tuple[Request, str, bool]]:
    """:func:`_parse_head` for the common request (see ``_SIMPLE_HEAD``) whose head is
    ``buf[start:end]``, or ``None`` if it is not one of those: then :func:`_parse_head`
    must decide. With the request, what read_head() needs to reuse the parse: the field
    lines as they were checked, and whether a field frames a body (Content-Length,
    Transfer-Encoding, Expect)."""
    match = _SIMPLE_HEAD.fullmatch(buf, start, end)
    if match is None:
        return None
    method, target, digit, fields = match.groups()
    text = fields.decode("latin-1")
    headers = MessageHeaders.from_checked_fields(text)
    host = connection = None
    hosts = 0
    framing = False
    for name, value in _PARSER_FIELD.findall(text):
        name = name.lower()
        if name == "host":
            hosts += 1
            if host is None:
                host = value
        elif name == "connection":
            connection = value if connection is None else connection + ", " + value
        else:
            framing = True  # Content-Length, Transfer-Encoding, Expect: _frame_body
    version = _VERSIONS_BY_DIGIT[digit]
    req = Request(_KNOWN_METHODS[method], target.decode("ascii"), version, headers,
                  connection, host)
    if hosts > 1:
        raise HTTPError(400, "More than one Host header")
    _check_host(host, version)
    if framing:
        _frame_body(req, max_body_size)
    return req, text, framing


def _check_host(host: Optional[str], version: str) -> None:
    if host is not None:
        if host not in _valid_hosts:
            if not is_host(host):
                # RFC 9112 §3.2: an invalid Host value is a 400 too ("a, b", "a b/c@d").
                raise HTTPError(400, "Invalid Host header")
            _remember_host(host)
    elif version == "HTTP/1.1":
        raise HTTPError(400, "Missing Host header")


def _parse_head(block: bytes, max_body_size: int) -> Request:
    """Parse a header block (without its final blank line) into a :class:`Request`."""
    lines = block.split(CRLF)
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise HTTPError(400, "Malformed request line")
    method, target, version = parts
    method_s = _KNOWN_METHODS.get(method)
    if method_s is None:
        if not _is_token(method):
            raise HTTPError(400, "Malformed request method")
        method_s = method.decode("ascii")
    if not _TARGET.match(target):
        raise HTTPError(400, "Malformed request target")
    version_s = _SUPPORTED_VERSIONS.get(version)
    if version_s is None:
        if not _VERSION.match(version):
            raise HTTPError(400, "Malformed HTTP version")
        raise HTTPError(505, "HTTP version not supported")
    # Control characters other than HTAB, CR and LF have no place anywhere in a request head.
    if HEAD_CTL_BYTES.search(block):
        raise HTTPError(400, "Invalid character in the request head")
    if _BAD_HEADER_START.search(block):
        for line in lines[1:]:
            if line[:1] in (b" ", b"\t"):
                raise HTTPError(400, "Obsolete line folding in headers")
        raise HTTPError(400, "Malformed header line")
    items = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        items.append((name.decode("ascii"), value.strip(b" \t").decode("latin-1")))
    headers = MessageHeaders(items)
    hosts = headers.get_all("Host")
    req = Request(method_s, target.decode("ascii"), version_s, headers,
                  headers.get_list("Connection"), hosts[0] if hosts else None)
    if len(hosts) > 1:
        # RFC 9112 §3.2: which one would a proxy in front of us have used?
        raise HTTPError(400, "More than one Host header")
    _check_host(req.host_field, version_s)
    _frame_body(req, max_body_size)
    return req


# Hot path: a server sees the same few Host values request after request, so the last
# valid ones are remembered (a set lookup instead of a regex match), at most
# VALID_HOSTS_CACHED of them (a client sending a new Host each time only refills it).
VALID_HOSTS_CACHED = 64
_valid_hosts: set = set()


def _remember_host(host: str) -> None:
    if len(_valid_hosts) >= VALID_HOSTS_CACHED:
        _valid_hosts.clear()
    _valid_hosts.add(host)


def _frame_body(req: Request, max_body_size: int) -> None:
    """Decide how the body is framed (RFC 9112 §6.3), refusing every ambiguous shape."""
    headers = req.headers
    te = headers.get_all("Transfer-Encoding")
    cl = headers.get_all("Content-Length")
    if te and cl:
        raise HTTPError(400, "Both Content-Length and Transfer-Encoding")
    if te:
        # RFC 9110 §5.6.1: empty list elements are ignored (",chunked" is chunked). A field
        # line with no coding at all is refused with the other shapes a proxy may misread.
        codings = [split_list(value.lower()) for value in te]
        if not all(codings):
            raise HTTPError(400, "Transfer-Encoding without a coding")
        codings = [coding for field in codings for coding in field]
        if req.version != "HTTP/1.1" or codings[-1] != "chunked":
            raise HTTPError(400, "Transfer-Encoding without a final chunked")
        if len(codings) != 1:
            raise HTTPError(501, "Transfer coding not implemented")
        req.chunked = True
    elif cl:
        if len(cl) != 1 or not cl[0].isdigit() or not cl[0].isascii() or len(cl[0]) > 18:
            raise HTTPError(400, "Invalid or repeated Content-Length")
        req.content_length = int(cl[0])
        if max_body_size and req.content_length > max_body_size:
            raise HTTPError(413, "Request body larger than %d bytes" % max_body_size)
    expect = headers.get_one("Expect")
    if expect is not None:
        if expect.lower() != "100-continue":
            raise HTTPError(417, "Unsupported Expect value")
        req.expect_continue = req.version == "HTTP/1.1"


class ChunkState(enum.IntEnum):
    """Where the chunked-body reader is (RFC 9112 §7.1): SIZE → DATA → DATA_END → SIZE …,
    and SIZE → TRAILER on the last (zero-size) chunk, until the empty line ends the body."""
    SIZE = 1      # reading a chunk-size line (with its extensions)
    DATA = 2      # reading chunk data: _chunk_left bytes to go
    DATA_END = 3  # the CRLF after the chunk data
    TRAILER = 4   # trailer fields, up to the empty line


_SIZE, _DATA, _DATA_END, _TRAILER = (ChunkState.SIZE, ChunkState.DATA, ChunkState.DATA_END,
                                     ChunkState.TRAILER)


# The Sec-WebSocket-Key field of a head that _SIMPLE_HEAD matched, in its field lines
# (decoded as latin-1: see _FIELD): group 1 is its value, the whole rest of the line.
_KEY_FIELD = re.compile(r"\r\n(?i:sec-websocket-key):[ \t]*(%s)(?=\r\n|\Z)" % WEBSOCKET_KEY,
                        re.ASCII)
# A key of the right form, over the bytes of a head (UpgradeHeads.match).
_KEY_BYTES = re.compile(WEBSOCKET_KEY.encode("ascii"))


class UpgradeHead:
    """A WebSocket upgrade head that parsed the simple way (see ``_SIMPLE_HEAD``), kept to
    parse the heads equal to it but for their ``Sec-WebSocket-Key`` value: the one part
    of an upgrade request that changes from one connection to the next of the same client
    program, which draws a new key each time (RFC 6455 §4.1).

    Such a head, whose key is ``WEBSOCKET_KEY_SIZE`` characters of base64 too, passes
    every check of the parser that the first one passed, and parses to the same request
    but for its field lines: the key is no field the parser reads (Host, Connection and those about a body),
    and its characters (letters, digits, "+", "/", "=") are allowed in a field value and
    can neither end one nor start another. So ``request`` (the first head's request,
    without its headers) is taken again, with the new head's own field lines.

    ``prefix`` and ``suffix`` are the bytes before and after the key (the suffix ends
    with the blank line); ``key_start`` where the key starts, ``fields_start`` where the field lines
    start, both from the start of the head; ``length`` the whole head's."""

    __slots__ = ("length", "prefix", "suffix", "key_start", "fields_start", "request")

    def __init__(self, head: bytes, fields_start: int, key_start: int,
                 request: "Request") -> None:
        self.length = len(head)
        self.prefix = head[:key_start]
        self.suffix = head[key_start + WEBSOCKET_KEY_SIZE:]
        self.key_start = key_start
        self.fields_start = fields_start
        self.request = request

    def key_in(self, headers: "MessageHeaders") -> Optional[str]:
        """The ``Sec-WebSocket-Key`` of a request parsed by this head (``headers`` are
        its headers), where this head has it: ``None`` once anything has read or
        changed them (see :meth:`MessageHeaders.parsed_fields`), as it may then have
        changed the key."""
        text = headers.parsed_fields()
        if text is None:
            return None
        start = self.key_start - self.fields_start
        return text[start:start + WEBSOCKET_KEY_SIZE]


# A head kept by UpgradeHeads gives way to another only after this many upgrades in a
# row were checked in full instead of by it: one client program's upgrades mixed with a
# few of others' leave it in place. Each head replaced before it parsed any upgrade doubles
# the count, up to HEAD_REPLACED_AFTER_MAX; and a head that has parsed none of the last
# HEAD_TRIED_FOR upgrades is no longer compared with the next ones. When the heads all
# differ (a cookie each, say), making a head (~2 us, measured in the handshake cycle) and
# comparing one (~0.5 us) become rare.
HEAD_REPLACED_AFTER = 4
HEAD_REPLACED_AFTER_MAX = 1024
HEAD_TRIED_FOR = 64


class UpgradeHeads:
    """The WebSocket upgrade head (an :class:`UpgradeHead`) a server's connections share.
    Their parsers (``RequestParser(shared=...)``) parse by it the heads equal to it but for
    their key, and the server skips its handshake checks for them (see
    ``Server._websocket_handshake``): measured with wsload's handshake cycle, 8 at a time,
    ~10 us less of the server's CPU per cycle (about 48 us instead of 58).

    For each upgrade it checked in full and accepted, the server calls :meth:`missed`,
    and when that says so, offers the upgrade's head (:meth:`offer`). The first head is
    kept; another replaces it once it has parsed none of ``HEAD_REPLACED_AFTER`` upgrades
    in a row (more while the heads replaced parsed nothing).

    Only bytes are compared, all of them: a client gets nothing of another's head but the
    parse of bytes equal to its own. ``length`` is the head's (-1 without one, or while it
    is not tried): the one test that a request of another length pays."""

    __slots__ = ("head", "length", "_misses", "_replaced_after", "_used")

    def __init__(self) -> None:
        self.head: Optional[UpgradeHead] = None
        self.length = -1
        self._misses = 0  # upgrades checked in full in a row since the head last parsed one
        self._replaced_after = HEAD_REPLACED_AFTER  # misses that replace the head
        self._used = False  # the head has parsed an upgrade

    def match(self, buf: bytes, off: int, end: int) -> Optional["Request"]:
        """The request of the head ``buf[off:end]`` (its blank line after) if it is the
        shared head but for its key, else None (then it must be parsed in full). Only for
        a head of ``length`` bytes, blank line included: the caller's test (hot path)."""
        head = self.head
        key_start = off + head.key_start
        key_end = key_start + WEBSOCKET_KEY_SIZE
        if (not buf.startswith(head.prefix, off)
                or not buf.startswith(head.suffix, key_end)
                or _KEY_BYTES.fullmatch(buf, key_start, key_end) is None):
            return None
        if not self._used:
            self._used = True
            self._replaced_after = HEAD_REPLACED_AFTER
        self._misses = 0
        fields = buf[off + head.fields_start:end].decode("latin-1")
        req = head.request.again(MessageHeaders.from_checked_fields(fields))
        req.shared_head = head
        return req

    def missed(self) -> bool:
        """Count an upgrade checked in full and accepted that the head did not parse. True
        if its head is to be offered: there is no head yet, or it is time to replace it."""
        if self.head is None:
            return True
        misses = self._misses = self._misses + 1
        if misses >= HEAD_TRIED_FOR:
            self.length = -1  # parsed none of the last ones: no longer compared
        return misses >= self._replaced_after

    def offer(self, head: bytes, req: "Request", fields: str) -> Optional[UpgradeHead]:
        """Make the head of an upgrade checked in full the shared one (once :meth:`missed`
        said so): ``head`` (the bytes, blank line included), parsed the simple way to
        ``req`` (``fields``: its field lines as parsed), if it can be one: a GET in HTTP/1.1
        with a ``Sec-WebSocket-Key`` of the right form. Returns the new
        :class:`UpgradeHead`, or None (then the head stays as it was)."""
        if req.method != "GET" or req.version != "HTTP/1.1":
            return None
        key = _KEY_FIELD.search(fields)
        if key is None:
            return None
        if self.head is not None and not self._used:
            self._replaced_after = min(self._replaced_after * 2, HEAD_REPLACED_AFTER_MAX)
        fields_start = len(head) - 4 - len(fields)
        shared = UpgradeHead(head, fields_start, fields_start + key.start(1), req.again(None))
        self.head = shared
        self.length = shared.length
        self._misses = 0
        self._used = False
        return shared


class RequestParser:
    """Incremental parser for a stream of HTTP/1.x requests on one connection.

    Call :meth:`feed` with bytes, then :meth:`read_head` until it gives a
    :class:`Request`, then :meth:`read_body` until it gives the body (``bytes``).
    The next request is not parsed until the caller calls :meth:`read_head` again,
    which is how pipelined requests are answered one at a time, in order.
    Errors raise :class:`HTTPError`; the connection must then be closed.

    A body may also be handed out piece by piece as it is parsed: after
    :meth:`report_body`, :meth:`take_body_pieces` gives what was parsed since the last
    call, and with ``keep=False`` the body is not kept (nor limited by
    ``max_body_size``). With ``defer_length_check`` a ``Content-Length`` over
    ``max_body_size`` is not refused by :meth:`read_head`: the caller asks
    :meth:`body_too_large` once it knows whether the body will be kept. ``body_type``
    is the type :meth:`read_body` builds a non-empty body as (``bytes`` by default).
    ``shared``: the :class:`UpgradeHeads` of the server, whose connections' parsers share
    it (see :meth:`share_head`).
    """

    __slots__ = ("_buf", "_off", "max_header_size", "max_body_size", "_request", "_body",
                 "_body_size", "_chunk_left", "_chunk_state", "_scanned", "_line_scanned",
                 "_empty_lines", "_metadata_size", "_defer_length_check", "_pieces", "_keep",
                 "body_type", "_same", "_shared")

    def __init__(self, max_header_size: int = 65536, max_body_size: int = 16 * 1024 * 1024,
                 defer_length_check: bool = False, body_type: type = bytes,
                 shared: Optional[UpgradeHeads] = None) -> None:
        self._buf = b""
        # Where the unparsed bytes of _buf begin. Parsing advances it instead of slicing
        # the rest off: slicing per request made pipelined requests quadratic (9,700 GETs
        # in one 256 KiB read copied ~1.2 GB). _buf is cut once per feed() instead, and
        # dropped as soon as it is all parsed, so an idle connection holds nothing.
        self._off = 0
        self.max_header_size = max_header_size
        self.max_body_size = max_body_size
        self._defer_length_check = defer_length_check
        self.body_type = body_type
        self._pieces: Optional[List[bytes]] = None  # report_body(): pieces not yet taken
        self._keep = True  # False: report_body(keep=False), the body is not kept
        self._request: Optional[Request] = None
        # One buffer, created on the first body byte: a list of pieces let a body of
        # 1-byte chunks pin ~40 bytes of objects per byte of max_body_size.
        self._body: Any = None  # None, bytes (one piece) or bytearray
        self._body_size = 0
        self._chunk_left = 0
        self._chunk_state = _SIZE
        self._scanned = 0  # unparsed bytes of _buf already searched by read_head()
        self._line_scanned = 0  # bytes of an incomplete chunk line already searched
        self._empty_lines = 0  # empty lines seen before the current request line
        # Bytes of chunk extensions and trailer fields in the current body: together they
        # may not exceed max_header_size, as the head may not (else many lines, each under
        # the limit, could be sent without end).
        self._metadata_size = 0
        # The last head parsed that a repetition may reuse: (its bytes with the blank line,
        # its Request, its field lines as parsed), or None. See read_head().
        self._same: Optional[Tuple[bytes, Request, str]] = None
        # The upgrade head shared by a server's connections' parsers (UpgradeHeads).
        self._shared = shared

    def feed(self, data: bytes) -> None:
        """Add bytes read from the peer."""
        buf = self._buf
        if not buf:
            self._buf = data
        else:
            self._buf = (buf[self._off:] if self._off else buf) + data
            self._off = 0

    def take_buffer(self) -> bytes:
        """Remove and return the unparsed bytes (what follows a WebSocket upgrade)."""
        data = self._buf[self._off:] if self._off else self._buf
        self._buf, self._off = b"", 0
        self._scanned = 0
        self._same = None
        return data

    @property
    def has_data(self) -> bool:
        """True if unparsed bytes are buffered."""
        return len(self._buf) > self._off

    def _consumed(self, pos: int) -> None:
        """The bytes of _buf before ``pos`` are parsed (all of them: drop the buffer)."""
        if pos >= len(self._buf):
            self._buf, self._off = b"", 0
        else:
            self._off = pos

    def read_head(self) -> Optional[Request]:
        """The next request head, or ``None`` if more bytes are needed."""
        buf = self._buf
        off = self._off
        if off >= len(buf):
            return None
        # A few leading empty lines between requests are tolerated (RFC 9112 §2.2). Skipped
        # by moving the offset: slicing once per line was quadratic (1 MB: 1.7 s).
        if buf[off] == 13 and buf.startswith(CRLF, off):  # the byte test first: hot path
            empty = self._empty_lines
            while buf.startswith(CRLF, off):
                off += 2
                empty += 1
                if empty > MAX_EMPTY_LINES:
                    raise HTTPError(400, "More than %d empty lines before the request line"
                                    % MAX_EMPTY_LINES)
            self._empty_lines = empty
            self._consumed(off)
            buf, off = self._buf, self._off
            self._scanned = 0
        # Only the bytes that arrived since the last call are searched: a head trickled in
        # after 60 KB cost 70 µs per 1-byte packet when every call rescanned the buffer.
        scanned = self._scanned
        end = buf.find(HEADERS_END, off + scanned - 3 if scanned > 3 else off)
        limit = self.max_header_size
        if end < 0 or end - off + 4 > limit:
            # Incomplete or too long. The status is the one the earliest offending byte
            # gives, so that it does not depend on how TCP split the bytes: a bare LF
            # within the limit is a 400, a head that runs past the limit a 431.
            stop = min(len(buf), off + limit)
            lf = buf.find(b"\n", off + scanned, stop)
            while lf >= 0:
                if lf == off or buf[lf - 1] != 13:  # not preceded by CR
                    raise HTTPError(400, "Bare LF line ending (CRLF required)")
                lf = buf.find(b"\n", lf + 1, stop)
            if end >= 0 or len(buf) - off > limit:
                raise HTTPError(431, "Request header block larger than %d bytes" % limit)
            self._scanned = len(buf) - off
            return None
        self._consumed(end + 4)
        self._scanned = 0
        same = self._same
        if same is not None and end + 4 - off == len(same[0]) and buf.startswith(same[0], off):
            # Hot path: a keep-alive client repeats its head byte for byte. What parsing
            # found of those bytes (every check passed, the same fields, no body) is true
            # of them again: only the headers are made anew, each message's own.
            template = same[1]
            if template.headers is not None:
                # The first repeat: keep a copy without the first request's headers (which
                # its handler may have grown), not them, for as long as the connection lives.
                template = template.again(None)
                self._same = (same[0], template, same[2])
            req = template.again(MessageHeaders.from_checked_fields(same[2]))
        else:
            shared = self._shared
            req = (shared.match(buf, off, end)
                   if shared is not None and shared.length == end + 4 - off else None)
            if req is not None:
                # Hot path: an upgrade by the head a server's connections share (see
                # UpgradeHeads); not kept for a repetition on this connection.
                self._same = None
            else:
                max_body_size = 0 if self._defer_length_check else self.max_body_size
                parsed = _parse_simple_head(buf, off, end, max_body_size)
                if parsed is None:
                    block = buf[off:end]
                    bare = block.replace(CRLF, b"")
                    if b"\n" in bare or b"\r" in bare:
                        raise HTTPError(400, "Bare CR or LF in the request head (CRLF required)")
                    req = _parse_head(block, max_body_size)
                    self._same = None
                else:
                    req, fields, framing = parsed
                    if not framing and end + 4 - off <= SAME_HEAD_MAX:
                        # No field about a body (whose checks depend on more than these
                        # bytes), parsed the common way: remembered (the bytes are not copied
                        # when they are all the read held, as usual).
                        head = buf if off == 0 and end + 4 == len(buf) else buf[off:end + 4]
                        self._same = (head, req, fields)
                    else:
                        self._same = None
        self._request = req
        self._body = None
        self._pieces = None
        self._keep = True
        self._body_size = 0
        self._chunk_state = _SIZE
        self._chunk_left = req.content_length
        self._line_scanned = 0
        self._empty_lines = 0
        self._metadata_size = 0
        return req

    def share_head(self, req: Request) -> Optional[UpgradeHead]:
        """The head of ``req``, the last request read, made this parser's server's shared
        upgrade head (:meth:`UpgradeHeads.offer`), or the one it was parsed by. None if
        it cannot be one: no ``shared`` was given, the head was not parsed the simple way,
        has a field about a body, is over ``SAME_HEAD_MAX`` bytes or has no key of the
        right form. For the server, once the request has proved an upgrade it accepts
        (and :meth:`UpgradeHeads.missed` said to offer it)."""
        if req.shared_head is not None:
            return req.shared_head
        same = self._same
        if self._shared is None or same is None or same[1] is not req:
            return None
        return self._shared.offer(*same)

    def read_body(self) -> Optional[bytes]:
        """The whole body of the current request, or ``None`` if more bytes are needed."""
        req = self._request
        if req is None:
            raise RuntimeError("read_body() before read_head()")
        if req.chunked:
            done = self._read_chunked()
        else:
            done = not self._chunk_left or self._read_length()  # hot path: no body
        if not done:
            return None
        self._request = None
        body = self.body_type(self._body) if self._body else b""
        self._body = None
        return body

    def body_too_large(self) -> bool:
        """True if the current request's ``Content-Length`` is over ``max_body_size``
        (what :meth:`read_head` refuses unless ``defer_length_check``)."""
        req = self._request
        limit = self.max_body_size
        return bool(req is not None and limit and req.content_length > limit)

    def report_body(self, keep: bool = True) -> None:
        """Hand the current request's body out as it is parsed (:meth:`take_body_pieces`).

        With ``keep`` False it is not kept either (:meth:`read_body` then gives ``b""``)
        and ``max_body_size`` does not apply: the caller streams it and sets its own limit.
        """
        self._pieces = []
        self._keep = keep

    def take_body_pieces(self) -> List[bytes]:
        """The body bytes parsed since the last call (after :meth:`report_body`), in order."""
        pieces = self._pieces
        if not pieces:
            return []
        self._pieces = []
        return pieces

    def _take(self, n: int) -> bytes:
        off = self._off
        data = self._buf[off:off + n]
        self._consumed(off + len(data))
        return data

    def _read_length(self) -> bool:
        if self._chunk_left and self.has_data:
            piece = self._take(self._chunk_left)
            self._add_body(piece)
            self._chunk_left -= len(piece)
        return self._chunk_left == 0

    def _add_body(self, piece: bytes) -> None:
        self._body_size += len(piece)
        if self._pieces is not None:
            self._pieces.append(piece)
            if not self._keep:
                return  # streamed, not kept: the caller's limit, not max_body_size
        if self.max_body_size and self._body_size > self.max_body_size:
            raise HTTPError(413, "Request body larger than %d bytes" % self.max_body_size)
        body = self._body
        if body is None:
            self._body = piece  # the common case: the whole body in one piece, no copy
        else:
            if type(body) is bytes:
                body = self._body = bytearray(body)
            body += piece

    def _read_chunked(self) -> bool:
        # One cursor over the buffer, which is never sliced: slicing it for every chunk
        # made a body of tiny chunks quadratic (1 MB of 1-byte chunks: 5 s).
        done, pos = self._read_chunks(self._buf, self._off)
        self._consumed(pos)
        return done

    def _read_chunks(self, buf: bytes, pos: int) -> Tuple[bool, int]:
        """Parse chunks from ``buf`` at ``pos``: (body complete?, where parsing stopped)."""
        available = len(buf)
        while True:
            state = self._chunk_state
            if state is _DATA:
                if pos >= available:
                    return False, pos
                end = min(available, pos + self._chunk_left)
                self._add_body(buf[pos:end])
                self._chunk_left -= end - pos
                pos = end
                if self._chunk_left == 0:
                    self._chunk_state = _DATA_END
                continue
            end = self._line_end(buf, pos)
            if end < 0:
                return False, pos
            line = buf[pos:end]
            pos = end + 2
            if state is _SIZE:
                size_text, semicolon, _ = line.partition(b";")
                if semicolon:
                    self._count_metadata(len(line) - len(size_text))
                size_text = size_text.strip(b" \t")
                if (not size_text or len(size_text) > MAX_CHUNK_SIZE_DIGITS
                        or size_text.strip(b"0123456789abcdefABCDEF")):
                    raise HTTPError(400, "Invalid chunk size")
                chunk_size = int(size_text, 16)
                if (self.max_body_size and self._keep
                        and self._body_size + chunk_size > self.max_body_size):
                    raise HTTPError(413, "Request body larger than %d bytes" % self.max_body_size)
                self._chunk_left = chunk_size
                self._chunk_state = _DATA if chunk_size else _TRAILER
            elif state is _DATA_END:
                if line:
                    raise HTTPError(400, "Chunk data not followed by CRLF")
                self._chunk_state = _SIZE
            else:  # trailer fields are read and ignored, up to the blank line
                if not line:
                    return True, pos
                self._count_metadata(len(line) + 2)

    def _count_metadata(self, size: int) -> None:
        """Count chunk-extension or trailer bytes against max_header_size: 431 past it.

        Only complete lines are counted, after :meth:`_line_end` has checked them, so the
        status does not depend on how TCP split the bytes (a line is at most
        max_header_size long, which bounds what is buffered before the count)."""
        self._metadata_size += size
        if self._metadata_size > self.max_header_size:
            raise HTTPError(431, "Chunk extensions and trailers larger than %d bytes"
                            % self.max_header_size)

    def _line_end(self, buf: bytes, pos: int) -> int:
        """Where the CRLF ending the line that starts at ``pos`` is; -1 if not there yet."""
        limit = self.max_header_size
        # Only what arrived since the last call is searched (its last byte again: a CR
        # there may begin the CRLF): a trickled chunk-extension or trailer line cost 44 µs
        # per 1-byte packet once 60 KB were buffered when every call rescanned it.
        scanned = self._line_scanned
        start = pos + scanned - 1 if scanned else pos
        end = buf.find(CRLF, start)
        if end == pos:
            return end  # the empty line after chunk data and at the end: most lines
        if 0 < end - pos <= limit:
            if buf.find(b"\n", start, end) >= 0 or buf.find(b"\r", pos, end) >= 0:
                raise HTTPError(400, "Bare CR or LF in chunked body")
            self._line_scanned = 0
            return end
        stop = len(buf) if end < 0 else end
        # As for the head, the earliest offending byte decides, whatever the split: a bare
        # LF within the limit is a 400, a line longer than the limit a 431 (a trailing CR
        # may be the start of the CRLF, so it does not count yet).
        if buf.find(b"\n", start, min(stop, pos + limit)) >= 0:
            raise HTTPError(400, "Bare LF in chunked body")
        length = stop - pos - (1 if end < 0 and stop > pos and buf[stop - 1] == 13 else 0)
        if length > limit:
            raise HTTPError(431, "Chunk line or trailer longer than %d bytes" % limit)
        # Here the line is incomplete: a complete one this long was refused just above.
        self._line_scanned = stop - pos
        return -1


_date_cache = [0, ""]


def http_date(now: Optional[float] = None) -> str:
    """The ``Date`` header value for now, cached per second (the hot path asks often)."""
    t = int(time.time() if now is None else now)
    if _date_cache[0] != t:
        _date_cache[0] = t
        _date_cache[1] = formatdate(t, usegmt=True)
    return _date_cache[1]


def build_response_head(version: str, status: int, reason: str,
                        headers: MessageHeaders) -> bytes:
    """Serialize a status line and header block (ending with the blank line)."""
    return b"".join((_status_line(version, status, reason), headers.field_lines(), CRLF))


def build_plain_head(version: str, status: int, reason: str, field_lines: bytes,
                     content_type: Optional[str], end: bytes) -> bytes:
    """:func:`build_response_head` for headers that are ``field_lines`` (on the wire already:
    :meth:`MessageHeaders.field_lines`), then ``Content-Type`` (unless None), then ``end``:
    the last field lines and the blank line (:func:`head_end`). What most responses and
    the WebSocket 101 are (hot path, no MessageHeaders made)."""
    return b"".join((_status_line(version, status, reason), field_lines,
                     b"" if content_type is None else _field_lines[("Content-Type", content_type)],
                     end))


def head_end(fields: Sequence[Tuple[str, str]]) -> bytes:
    """The lines of ``fields`` (values checked already) and the blank line that ends a
    head: :func:`build_plain_head`'s ``end`` (a whole response's is its Content-Length)."""
    # Not through _field_lines: a 101's Sec-WebSocket-Accept line is new every time and
    # would evict the lines that cache is for (Date, Server) every 256 handshakes.
    return "".join([f"{name}: {value}\r\n" for name, value in fields]).encode("latin-1") + CRLF


def _status_line(version: str, status: int, reason: str) -> bytes:
    key = (version, status, reason)
    status_line = _status_lines.get(key)
    if status_line is None:
        status_line = ("%s %d %s\r\n" % key).encode("latin-1")
        if len(_status_lines) >= STATUS_LINES_CACHED:
            _status_lines.clear()
        _status_lines[key] = status_line
    return status_line


# Hot path: the wire form of each (name, value) field seen lately (MessageHeaders.field_lines),
# at most FIELD_LINES_CACHED of them, each at most FIELD_LINE_CACHED_LENGTH bytes long: a
# response's fields are mostly the same few (its Date changes once a second).
FIELD_LINES_CACHED = 256
FIELD_LINE_CACHED_LENGTH = 128


class _FieldLines(dict):
    """The cache of field lines: ``_field_lines[item]`` makes (and keeps) a missing one."""

    __slots__ = ()

    def __missing__(self, item: Tuple[str, str]) -> bytes:
        line = ("%s: %s\r\n" % item).encode("latin-1")
        if len(line) <= FIELD_LINE_CACHED_LENGTH:
            if len(self) >= FIELD_LINES_CACHED:
                self.clear()
            self[item] = line
        return line


_field_lines: Dict[Tuple[str, str], bytes] = _FieldLines()
_field_line_of = _field_lines.__getitem__


def _field_line(item: Tuple[str, str]) -> bytes:
    if type(item) is not tuple:
        item = tuple(item)  # a (name, value) pair given as a list
    return _field_lines[item]


# Hot path: the status line of each (version, status, reason) seen, as bytes; a few are
# common, and reasons set by handlers are bounded by STATUS_LINES_CACHED.
STATUS_LINES_CACHED = 64
_status_lines: Dict[Tuple[str, int, str], bytes] = {}


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (empty data gives nothing: use LAST_CHUNK to end)."""
    if not data:
        return b""
    return b"%x\r\n%s\r\n" % (len(data), data)


_AUTHORITY_END = re.compile(r"[/?#]")


def _is_absolute(target: str) -> bool:
    # The scheme is case-insensitive (RFC 3986 §3.1): "HTTP://h/p" too, as in libsoup.
    return target[:8].lower().startswith(("http://", "https://"))


def split_target(target: str) -> Tuple[str, Optional[str], str]:
    """``(path, query, host)`` of a request target, undecoded: ``query`` is ``None``
    without a ``?``, ``host`` is "" unless the target was in absolute form."""
    host = ""
    if target[:1] != "/" and _is_absolute(target):
        rest = target.split("://", 1)[1]
        # The authority ends at the first "/", "?" or "#" (RFC 3986 §3.2): "http://h?a=b"
        # is host "h", path "/", query "a=b".
        end = _AUTHORITY_END.search(rest)
        host, target = (rest, "/") if end is None else (rest[:end.start()], rest[end.start():])
        if not target.startswith("/"):
            target = "/" + target
    path, sep, query = target.partition("?")
    path = path.split("#", 1)[0]
    return path, (query if sep else None), host


# libsoup parses the target as a URI (GLib's GUri) before routing; the handlers and the
# path map see its path: percent-decoded, dot segments removed (measured on libsoup 3:
# "/%6e", "/x/../n" and "/n/.%2e/n" all reach a handler at "/n" as "/n"). Routing on the
# raw path instead would let "/%61dmin" or "/public/../admin" slip past a handler
# registered at "/admin" to a shorter prefix.
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _unreserved_escape(match: "re.Match") -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else match.group(0)


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 for an absolute path: "/a/./b/../c" -> "/a/c"; never above "/"."""
    out: List[str] = []
    segments = path.split("/")[1:]
    for segment in segments:
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    if segments[-1] in (".", ".."):
        out.append("")  # "/a/b/.." is the directory "/a/"
    return "/" + "/".join(out)


def decode_path(path: str) -> str:
    """A request path as libsoup's handlers see it (see above).

    Raises HTTPError 400 for a ``%`` not followed by two hex digits, for ``%00``, for
    bytes that are not UTF-8 once decoded, and for a ``..`` segment that decoding made
    (``/x/..%2Fadmin``), as libsoup does.
    """
    if "%" in path:
        if _BAD_ESCAPE.search(path):
            raise HTTPError(400, "Malformed percent-encoding in the request path")
        path = _ESCAPE.sub(_unreserved_escape, path)  # "%2e" is a dot before dot removal
    if "/." in path:
        path = remove_dot_segments(path)
    if "%" in path:
        raw = unquote_to_bytes(path)
        if b"\0" in raw:
            raise HTTPError(400, "NUL (%00) in the request path")
        try:
            path = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise HTTPError(400, "Request path is not UTF-8 once percent-decoded") from None
        # "/x/..%2Fadmin" is "/x/../admin" only now, after dot-segment removal: a ".."
        # made by decoding could climb past a handler's prefix. 400, as libsoup.
        if "/../" in path or path.endswith("/.."):
            raise HTTPError(400, "Dot segment made by percent-decoding in the request path")
    return path


def parse_target(method: str, target: str) -> Tuple[str, Optional[str], str]:
    """``(path, query, host)`` of a request target, checked as libsoup does: ``path``
    decoded (:func:`decode_path`), ``query`` raw (None without ``?``; see :func:`parse_query`).

    Raises HTTPError 400 for a target that is none of RFC 9112's forms: an absolute path,
    an absolute URI (``http`` or ``https``, its authority a non-empty ``host[:port]``: no
    userinfo), ``*`` (OPTIONS only) or ``host:port`` (CONNECT only).
    """
    if target == "*":
        if method != "OPTIONS":
            raise HTTPError(400, "Request target * is only for OPTIONS")
        return target, None, ""  # matches no handler: 404, as libsoup
    if method == "CONNECT" and not target.startswith("/"):
        return target, None, ""  # authority form: no handler path matches it either
    absolute = not target.startswith("/")
    if absolute and not _is_absolute(target):
        raise HTTPError(400, "Malformed request target")
    path, query, host = split_target(target)
    # An absolute-form target's authority stands in for Host (RFC 9112 §3.2.2): the same
    # rule, plus RFC 9110 §4.2.1 (no empty host) and §4.2.4 (no userinfo; is_host refuses "@").
    if absolute and (not host or not is_host(host)):
        raise HTTPError(400, "Invalid authority in the request target")
    return decode_path(path or "/"), query, host


def quote_path(text: str) -> str:
    """A decoded path percent-encoded again (control characters, spaces, quotes,
    backslashes, non-ASCII): fit for a log line, which it cannot forge, and for a URI."""
    return quote(text, safe="/:@!$&'()*+,;=?#[]%^`{|}<>~")


def _form_decode(text: str) -> str:
    try:
        return unquote_to_bytes(text.replace("+", " ")).decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPError(400, "Query is not UTF-8 once percent-decoded") from None


def parse_query(query: Optional[str]) -> Optional[Dict[str, str]]:
    """libsoup's ``soup_form_decode``: a dict of the decoded query, or ``None`` without one.

    As libsoup: ``&`` separates pairs, a pair without ``=`` is skipped, ``+`` is a space,
    the last of repeated names wins. Raises HTTPError 400 for a malformed ``%`` escape or
    a name or value that is not UTF-8 once decoded.
    """
    if query is None:
        return None
    if "%" in query and _BAD_ESCAPE.search(query):
        raise HTTPError(400, "Malformed percent-encoding in the query")
    result = {}
    if "%" not in query and query.isascii():
        # Hot path: no escape, so nothing to decode but "+" (and ASCII is UTF-8).
        if "+" in query:
            query = query.replace("+", " ")
        for pair in query.split("&"):
            name, eq, value = pair.partition("=")
            if eq:
                result[name] = value
        return result
    for pair in query.split("&"):
        name, eq, value = pair.partition("=")
        if eq:
            result[_form_decode(name)] = _form_decode(value)
    return result
