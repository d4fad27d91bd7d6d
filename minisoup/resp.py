"""RESP2, the Redis serialization protocol, as far as a publish/subscribe client needs it.

No I/O here: :func:`encode_command` turns a command into bytes, :class:`ReplyParser`
turns whatever a read returned into complete replies; ``broker.py`` moves the
bytes. Also :func:`parse_redis_url` (``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]``).

Reply types (https://redis.io/docs/reference/protocol-spec/, RESP2) and what
:meth:`ReplyParser.feed` gives for each:

====  ================  =======================================
byte  type              Python value
====  ================  =======================================
``+`` simple string     ``bytes``
``-`` error             :class:`ErrorReply` (a value, not raised)
``:`` integer           ``int``
``$`` bulk string       ``bytes``, or ``None`` for ``$-1``
``*`` array             ``list``, or ``None`` for ``*-1``
====  ================  =======================================

The parser treats the server as untrusted input: every length is checked against
a named limit before anything is buffered for it, so a broken or hostile peer
costs at most ``max_pending`` bytes and raises :class:`RespProtocolError`.
"""

import ipaddress
from typing import Any, List, NamedTuple, Optional, Tuple, Union
from urllib.parse import unquote, urlsplit

__all__ = ["encode_command", "ReplyParser", "ErrorReply", "RespProtocolError", "RedisURL",
           "parse_redis_url", "MAX_BULK_SIZE", "MAX_LINE_SIZE", "MAX_ARRAY_LENGTH",
           "MAX_NESTING", "DEFAULT_REDIS_PORT"]

CRLF = b"\r\n"
MAX_BULK_SIZE = 17 * 1024 * 1024   # bytes of one bulk string (a 16 MiB publication + envelope)
MAX_LINE_SIZE = 64 * 1024          # bytes of a simple string, error or length line
MAX_ARRAY_LENGTH = 1024            # elements of one array (pub/sub replies have 3 or 4)
MAX_NESTING = 4                    # arrays within arrays
DEFAULT_REDIS_PORT = 6379

SIMPLE, ERROR, INTEGER, BULK, ARRAY = b"+", b"-", b":", b"$", b"*"
_TYPES = frozenset((SIMPLE, ERROR, INTEGER, BULK, ARRAY))
_INCOMPLETE = object()  # sentinel: the value is not all here yet

Arg = Union[bytes, bytearray, memoryview, str, int]


class RespProtocolError(Exception):
    """Bytes from the server that are not RESP2 within our limits (a bug or a stranger)."""


class ErrorReply(str):
    """An error reply (``-ERR ...``), as its text; a value in the reply stream, not raised."""


def encode_command(*args: Arg) -> bytes:
    """One command as a RESP array of bulk strings, e.g. ``encode_command("PUBLISH",
    channel, data)``. ``str`` is sent as UTF-8, ``int`` in decimal."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode("utf-8")
        elif isinstance(arg, int):
            arg = b"%d" % arg
        parts.append(b"$%d\r\n" % len(arg))
        parts.append(bytes(arg))
        parts.append(CRLF)
    return b"".join(parts)


class ReplyParser:
    """Splits a RESP2 byte stream into replies.

    :meth:`feed` takes whatever a read returned and gives back every reply it
    completed, in order. An incomplete reply is parsed again from its start when
    more bytes come; that costs little because each length is checked before its
    bytes are looked at, and arrays are small (``MAX_ARRAY_LENGTH``, ``MAX_NESTING``).
    At most ``max_pending`` bytes wait for a reply to complete.
    """

    __slots__ = ("_buf", "max_bulk_size", "max_pending")

    def __init__(self, max_bulk_size: int = MAX_BULK_SIZE) -> None:
        self._buf = bytearray()
        self.max_bulk_size = max_bulk_size
        self.max_pending = max_bulk_size + MAX_LINE_SIZE

    def feed(self, data: bytes) -> List[Any]:
        """Add ``data``; return the replies now complete. ``RespProtocolError`` on bytes
        that are not RESP2 (the stream is then unusable: close the connection)."""
        buf = self._buf
        buf += data
        replies = []
        offset = 0
        while offset < len(buf):
            value, end = self._value(buf, offset, 0)
            if value is _INCOMPLETE:
                break
            replies.append(value)
            offset = end
        if offset:
            del buf[:offset]  # one move per read, not one per reply
        if len(buf) > self.max_pending:
            raise RespProtocolError("%d bytes pending without a complete reply (limit %d)"
                                    % (len(buf), self.max_pending))
        return replies

    def pending(self) -> int:
        """Bytes of an incomplete reply held."""
        return len(self._buf)

    def _line(self, buf: bytearray, start: int) -> Tuple[Optional[bytes], int]:
        end = buf.find(CRLF, start, start + MAX_LINE_SIZE + 2)
        if end < 0:
            if len(buf) - start > MAX_LINE_SIZE + 1:
                raise RespProtocolError("a line longer than %d bytes" % MAX_LINE_SIZE)
            return None, start
        return bytes(buf[start:end]), end + 2

    def _value(self, buf: bytearray, offset: int, depth: int) -> Tuple[Any, int]:
        kind = bytes(buf[offset:offset + 1])
        if kind not in _TYPES:
            raise RespProtocolError("unknown reply type %r" % kind)
        line, pos = self._line(buf, offset + 1)
        if line is None:
            return _INCOMPLETE, offset
        if kind == SIMPLE:
            return line, pos
        if kind == ERROR:
            return ErrorReply(line.decode("utf-8", "replace")), pos
        if kind == INTEGER:
            return _integer(line), pos
        if kind == BULK:
            size = _integer(line)
            if size == -1:
                return None, pos
            if not 0 <= size <= self.max_bulk_size:
                raise RespProtocolError("bulk string of %d bytes (limit %d)"
                                        % (size, self.max_bulk_size))
            if len(buf) < pos + size + 2:
                return _INCOMPLETE, offset
            if buf[pos + size:pos + size + 2] != CRLF:
                raise RespProtocolError("bulk string not followed by CRLF")
            return bytes(buf[pos:pos + size]), pos + size + 2
        if kind == ARRAY:
            count = _integer(line)
            if count == -1:
                return None, pos
            if not 0 <= count <= MAX_ARRAY_LENGTH:
                raise RespProtocolError("array of %d elements (limit %d)"
                                        % (count, MAX_ARRAY_LENGTH))
            if depth >= MAX_NESTING:
                raise RespProtocolError("arrays nested deeper than %d" % MAX_NESTING)
            items = []
            for _ in range(count):
                if pos >= len(buf):
                    return _INCOMPLETE, offset
                item, pos = self._value(buf, pos, depth + 1)
                if item is _INCOMPLETE:
                    return _INCOMPLETE, offset
                items.append(item)
            return items, pos
        raise AssertionError(kind)  # _TYPES lists the kinds handled above


def _integer(line: bytes) -> int:
    # int() would accept " 1", "+1", "1_000" and other spellings that RESP does not.
    digits = line[1:] if line[:1] == b"-" else line
    if not digits.isdigit() or len(digits) > 19:
        raise RespProtocolError("bad integer %r" % line[:32])
    return int(line)


# -- the broker URL ------------------------------------------------------------------------
class RedisURL(NamedTuple):
    """A parsed ``redis://`` URL."""

    host: str
    port: int
    db: int
    username: Optional[str]
    password: Optional[str]

    def display(self) -> str:
        """The URL without its password, for log lines."""
        host = "[%s]" % self.host if ":" in self.host else self.host
        auth = "%s:***@" % (self.username or "") if self.password is not None else ""
        return "redis://%s%s:%d/%d" % (auth, host, self.port, self.db)

    def is_numeric(self) -> bool:
        """True if the host is an IP address (connecting needs no name resolution)."""
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


def parse_redis_url(url: str) -> RedisURL:
    """``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`` → :class:`RedisURL`.

    Port 6379 and DB 0 by default; an IPv6 host in brackets. ``ValueError`` with what
    is wrong (another scheme, e.g. ``rediss://``, which is not supported)."""
    if not isinstance(url, str):
        raise TypeError("the broker is a redis:// URL (str), not %s" % type(url).__name__)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError("bad broker URL %r: %s" % (url, exc))
    if parts.scheme != "redis":
        raise ValueError("the broker URL must start with redis:// (got %r)" % url)
    if not parts.hostname:
        raise ValueError("the broker URL has no host: %r" % url)
    if parts.query or parts.fragment:
        raise ValueError("the broker URL takes no query or fragment: %r" % url)
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError("the broker URL's path is a DB number, e.g. redis://host:6379/0 "
                         "(got %r)" % url)
    password = unquote(parts.password) if parts.password is not None else None
    username = unquote(parts.username) if parts.username else None
    return RedisURL(parts.hostname, port if port is not None else DEFAULT_REDIS_PORT,
                    int(path) if path else 0, username, password)
