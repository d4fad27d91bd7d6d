"""Multipart bodies (RFC 2046 §5.1, RFC 7578): libsoup's ``SoupMultipart`` for reading
(sans-I/O); header parameters are parsed by :mod:`minisoup.headers`.

A body is untrusted input: parsing never raises on it (malformed gives ``None``), looks
for each delimiter once with ``bytes.find`` from where the last one ended (linear in the
body, however the boundary is chosen), and stops at :data:`MAX_PARTS` parts.
"""

import re
from typing import Dict, List, Optional, Tuple

from .headers import ASCII_SPACE, header_parse_semi_param_list
from .http import MessageHeaders

MAX_PARTS = 1000                # more parts than this: refused (None), not parsed
MAX_BOUNDARY_LENGTH = 70        # RFC 2046 §5.1.1: 1 to 70 characters
CRLF = b"\r\n"
_DASHES = b"--"
# RFC 2046 §5.1.1: a boundary line may end with spaces and tabs (transport padding).
_PADDED_LINE_END = re.compile(rb"[ \t]*\r\n")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")


# --- Header parameters (the grammar lives in minisoup.headers) ---

# libsoup's soup_header_parse_semi_param_list, under the name this module has used.
parse_semi_param_list = header_parse_semi_param_list


def _split_parameterized(value: Optional[str]) -> Optional[Tuple[str, Dict[str, Optional[str]]]]:
    if value is None:
        return None
    head, _, rest = value.partition(";")
    head = head.strip(ASCII_SPACE)
    if not head:
        return None
    return head, parse_semi_param_list(rest)


def parse_media_type(value: Optional[str]) -> Optional[str]:
    """The media type of a Content-Type value without its parameters (case kept, as
    libsoup), or ``None`` for a missing or empty one."""
    parsed = _split_parameterized(value)
    return parsed[0] if parsed else None


def parse_content_disposition(value: Optional[str]) -> Optional[Tuple[str, Dict[str, Optional[str]]]]:
    """A part's Content-Disposition as form decoding reads it: ``(disposition, params)``,
    or ``None`` for a missing value or one with no disposition-type (which no form part
    has; ``MessageHeaders.get_content_disposition`` reads every value). As libsoup, a
    ``filename`` keeps only what follows its last ``/``, so that a client cannot name a
    file outside the directory a server saves into (a ``\\`` is kept: it is a valid file
    name character on POSIX)."""
    parsed = _split_parameterized(value)
    if parsed is None:
        return None
    params = parsed[1]
    filename = params.get("filename")
    if filename is not None:
        params["filename"] = filename.rpartition("/")[2]
    return parsed


# --- Multipart bodies ---

def _parse_part_headers(block: bytes) -> Optional[MessageHeaders]:
    # As libsoup's soup_headers_parse: lines end with LF (CR optional), continuation lines
    # are joined with a space, lines that are not "token: value" are dropped, and a NUL
    # anywhere refuses the whole body. Values are UTF-8 (browsers send file names so).
    if b"\0" in block:
        return None
    items: List[Tuple[str, str]] = []
    for raw in block.split(b"\n"):
        line = raw.decode("utf-8", "replace").rstrip("\r")
        if line[:1] in (" ", "\t"):
            if items:
                name, value = items[-1]
                items[-1] = (name, (value + " " + line.strip()).strip())
            continue
        name, colon, value = line.partition(":")
        if colon and _TOKEN.match(name):
            items.append((name, value.strip(" \t")))
    return MessageHeaders(items)


class _Delimiter:
    """Finds the boundary lines of one body; each search resumes where the last ended."""

    __slots__ = ("body", "dash_boundary", "delimiter")

    def __init__(self, body: bytes, boundary: bytes) -> None:
        self.body = body
        self.dash_boundary = _DASHES + boundary
        self.delimiter = CRLF + self.dash_boundary

    def line_end(self, pos: int) -> Optional[Tuple[bool, int]]:
        """At a dash-boundary starting at ``pos``: ``(is_close, where the part starts)``,
        or ``None`` when the line goes on with something else (not a delimiter)."""
        body = self.body
        i = pos + len(self.dash_boundary)
        if body.startswith(_DASHES, i):
            return True, i + 2
        line_end = _PADDED_LINE_END.match(body, i)
        return (False, line_end.end()) if line_end else None

    def find(self, start: int) -> Optional[Tuple[int, bool, int]]:
        """The next delimiter (CRLF included) at or after ``start``: ``(its position,
        is_close, where the next part starts)``, or ``None``."""
        while True:
            pos = self.body.find(self.delimiter, start)
            if pos < 0:
                return None
            end = self.line_end(pos + 2)
            if end is not None:
                return (pos,) + end
            start = pos + 1

    def first(self) -> Optional[Tuple[int, bool, int]]:
        """The first boundary: at the very start of the body, or after the preamble."""
        if self.body.startswith(self.dash_boundary):
            end = self.line_end(0)
            if end is not None:
                return (0,) + end
        return self.find(0)


class Multipart:
    """A parsed multipart body (libsoup's ``SoupMultipart``): ``get_length()`` parts,
    each ``get_part(i)`` → ``(MessageHeaders, bytes)``.

    Make one with :meth:`new_from_message`. As libsoup, part headers are not interpreted
    (every part is binary, whatever its Content-Transfer-Encoding says).
    """

    __slots__ = ("_mime_type", "_boundary", "_parts")

    def __init__(self, mime_type: str, boundary: str,
                 parts: List[Tuple[MessageHeaders, bytes]]) -> None:
        self._mime_type = mime_type
        self._boundary = boundary
        self._parts = parts

    @classmethod
    def new_from_message(cls, headers: MessageHeaders, body: bytes) -> Optional["Multipart"]:
        """libsoup's ``soup_multipart_new_from_message``: the parts of ``body``, or
        ``None`` when ``headers`` do not say ``multipart/*`` with a ``boundary`` (1 to 70
        characters) or the body is malformed: no boundary line, no closing boundary, a
        part without the blank line that ends its headers, a NUL in part headers, or more
        than :data:`MAX_PARTS` parts. Never raises on the body's content.

        RFC 2046: anything before the first boundary line (the preamble) and after the
        closing one (the epilogue) is ignored; a boundary line may end with spaces or
        tabs (transport padding); the CRLF before a boundary belongs to the boundary.
        """
        parsed = _split_parameterized(headers.get_one("Content-Type"))
        if parsed is None:
            return None
        mime_type, params = parsed
        boundary = params.get("boundary")
        if (not mime_type.lower().startswith("multipart/") or not boundary
                or len(boundary) > MAX_BOUNDARY_LENGTH):
            return None
        try:
            boundary_bytes = boundary.encode("latin-1")  # header values arrive as latin-1
        except UnicodeEncodeError:
            return None
        parts = _parse_parts(bytes(body), boundary_bytes)
        if parts is None:
            return None
        return cls(mime_type, boundary, parts)

    def get_length(self) -> int:
        """The number of parts."""
        return len(self._parts)

    def get_part(self, part: int) -> Tuple[MessageHeaders, bytes]:
        """``(headers, body)`` of part number ``part`` (from 0). Raises IndexError when out
        of range (libsoup returns FALSE)."""
        if not 0 <= part < len(self._parts):
            raise IndexError("multipart has %d parts, no part %d" % (len(self._parts), part))
        return self._parts[part]

    def __repr__(self) -> str:
        return "<Multipart %s, %d parts>" % (self._mime_type, len(self._parts))


def _parse_parts(body: bytes, boundary: bytes) -> Optional[List[Tuple[MessageHeaders, bytes]]]:
    delimiters = _Delimiter(body, boundary)
    found = delimiters.first()
    if found is None:
        return None
    _, close, start = found
    parts: List[Tuple[MessageHeaders, bytes]] = []
    while not close:
        if len(parts) >= MAX_PARTS:
            return None
        found = delimiters.find(start)
        if found is None:
            return None  # no closing boundary: truncated
        end, close, next_start = found
        # The headers end at the first blank line; a part with no headers starts with it
        # (the search starts 2 bytes early to see the boundary line's own CRLF), and one
        # whose headers run into the next boundary has an empty body.
        split = body.find(b"\r\n\r\n", start - 2, end + 2)
        if split < 0:
            return None
        headers = _parse_part_headers(body[start:split] if split > start else b"")
        if headers is None:
            return None
        parts.append((headers, body[min(split + 4, end):end]))
        start = next_start
    return parts
