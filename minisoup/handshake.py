"""The WebSocket opening handshake (RFC 6455 section 4), sans-I/O.

The server side checks a request the way libsoup's
``soup_websocket_server_check_handshake`` does, with the differences the SPEC
asks for (all failures are 400 except a bad Origin, 403; HTTP/1.1 is required;
a wrong version is answered with ``Sec-WebSocket-Version: 13``). The client
side builds the request headers and verifies the server's answer.

Headers arrive as any object with ``get_one(name)`` (last value) and
``get_list(name)`` (all values comma-joined), case-insensitive names.
"""

import base64
import binascii
import hashlib
import re
import secrets
from http import HTTPStatus
from typing import List, NamedTuple, Optional, Protocol, Sequence, Tuple

from .errors import Error
from .extensions import client_accept, client_offer, negotiate_server
from .grammar import CTL, WEBSOCKET_KEY, is_token, list_contains, split_list

__all__ = [
    "WEBSOCKET_GUID", "WEBSOCKET_VERSION", "KEY_SIZE",
    "compute_accept", "HandshakeError", "HandshakeResult",
    "server_handshake", "response_fields", "client_request_headers", "client_check_response",
]

WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WEBSOCKET_VERSION = "13"
_GUID_BYTES = WEBSOCKET_GUID.encode("ascii")
KEY_SIZE = 16  # bytes of randomness in Sec-WebSocket-Key

UPGRADE_TOKEN = "websocket"
CONNECTION_TOKEN = "upgrade"

Header = Tuple[str, str]


class HeadersLike(Protocol):
    """What the handshake functions need from a headers object."""

    def get_one(self, name: str) -> Optional[str]:
        """The last (or only) value of ``name``, or None."""
        ...

    def get_list(self, name: str) -> Optional[str]:
        """All values of ``name`` joined with ", ", or None."""
        ...


class HandshakeError(Error):
    """A failed handshake.

    On the server, ``status`` (400 or 403) and ``message`` (names the failed
    check; used as the response body) describe the error response, and
    ``headers`` lists extra response headers it must carry. On the client,
    ``status`` is the server's status code and ``message`` says what was wrong.
    """

    def __init__(self, status: int, message: str, headers: Sequence[Header] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = list(headers)


class HandshakeResult(NamedTuple):
    """A successful handshake.

    ``protocol``: the chosen subprotocol or None; ``extensions``: the
    negotiated extension instances, in order; ``headers``: on the server, the
    headers of the 101 response (empty on the client).
    """

    protocol: Optional[str]
    extensions: list
    headers: List[Header]


def compute_accept(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key``: base64 of the
    SHA-1 of the key (as sent, not decoded) followed by the RFC's GUID."""
    # Hot path (every handshake): binascii directly, the GUID encoded once (~0.15 us less).
    digest = hashlib.sha1(key.encode("ascii") + _GUID_BYTES).digest()
    return binascii.b2a_base64(digest, newline=False).decode("ascii")


def _has_token(headers: HeadersLike, name: str, token: str) -> bool:
    """Whether header ``name`` lists ``token`` (compared case-insensitively; ``token`` is
    lower case)."""
    value = headers.get_list(name)
    # Hot path: a value that is the token alone ("websocket", "Upgrade") needs no split.
    return value is not None and (value.lower() == token or list_contains(value, token))


def _repeated(headers: HeadersLike, name: str) -> bool:
    """Whether field ``name`` appears more than once: the comma-joined list of its
    values then differs from its last value."""
    value = headers.get_list(name)
    return value is not None and value != headers.get_one(name)


# What base64.b64decode(key, validate=True) accepts as KEY_SIZE (16) bytes (grammar's
# WEBSOCKET_KEY). Hot path: one precompiled match instead of b64decode (~0.1 us less per
# upgrade).
_KEY = re.compile(WEBSOCKET_KEY)


def _valid_key(key: Optional[str]) -> bool:
    """Whether ``key`` is the base64 of KEY_SIZE bytes."""
    return key is not None and _KEY.fullmatch(key) is not None


def _bad_request(message: str, headers: Sequence[Header] = ()) -> HandshakeError:
    return HandshakeError(HTTPStatus.BAD_REQUEST, message, headers)


def server_handshake(method: str, http_version: str, headers: HeadersLike,
                     origin: Optional[str], protocols: Optional[Sequence[str]],
                     extension_types: Sequence = ()) -> HandshakeResult:
    """Check a WebSocket upgrade request and prepare the 101 response.

    ``method`` and ``http_version`` ("HTTP/1.1" or "HTTP/1.0") come from the
    request line. ``origin``: when not None, the request's Origin must equal
    it case-insensitively (403 otherwise). ``protocols``: when not None and
    the client offers subprotocols, the first of ``protocols`` that the client
    offered is chosen (server preference), and no match is a 400.
    ``extension_types`` are negotiated via ``minisoup.extensions``; offers
    with bad parameters are declined, never an error.

    Raises HandshakeError (400, or 403 for the Origin) naming the first check
    that failed, in this order: method GET, HTTP/1.1, Upgrade, Connection,
    Sec-WebSocket-Version, Sec-WebSocket-Key (each must appear exactly once),
    Origin, Sec-WebSocket-Protocol.
    """
    if method != "GET":
        raise _bad_request("WebSocket handshake expected: method must be GET, not %s" % method)
    if http_version != "HTTP/1.1":
        raise _bad_request("WebSocket handshake expected: HTTP/1.1 required, not %s" % http_version)
    if not _has_token(headers, "Upgrade", UPGRADE_TOKEN):
        raise _bad_request("WebSocket handshake expected: Upgrade header must contain websocket")
    if not _has_token(headers, "Connection", CONNECTION_TOKEN):
        raise _bad_request("WebSocket handshake expected: Connection header must contain Upgrade")
    # Hot path (every upgrade): the lookups bound once, each field looked up once or twice.
    get_list = headers.get_list
    get_one = headers.get_one

    # RFC 6455 11.3.1 and 11.3.5: Key and Version MUST NOT appear more than once in a
    # request. Taking the last of several (as libsoup does for the Key) would let a
    # proxy's checks and ours see different keys or versions (a repeated field's
    # comma-joined list differs from its last value).
    # Hot path (every upgrade): one lookup each when the field is there once and exactly
    # right. The comma-joined list of several fields always holds ", ", so a list equal
    # to "13", or to a key that is 24 base64 characters, is one field, already trimmed.
    if get_list("Sec-WebSocket-Version") != WEBSOCKET_VERSION:
        version = get_one("Sec-WebSocket-Version")
        if version is not None and get_list("Sec-WebSocket-Version") != version:
            raise _bad_request("Invalid WebSocket version: Sec-WebSocket-Version must appear once",
                               [("Sec-WebSocket-Version", WEBSOCKET_VERSION)])
        if version is None or version.strip() != WEBSOCKET_VERSION:
            # RFC 6455 4.4: tell the client which version we speak (libsoup does not).
            raise _bad_request("Unsupported WebSocket version: Sec-WebSocket-Version must be 13",
                               [("Sec-WebSocket-Version", WEBSOCKET_VERSION)])

    key = get_list("Sec-WebSocket-Key")
    if key is None or _KEY.fullmatch(key) is None:
        key = get_one("Sec-WebSocket-Key")
        if key is not None:
            if get_list("Sec-WebSocket-Key") != key:
                raise _bad_request("Invalid WebSocket key: Sec-WebSocket-Key must appear once")
            key = key.strip()  # RFC 6455 4.2.2: the accept uses the trimmed key
        if not _valid_key(key):
            raise _bad_request("Invalid WebSocket key: Sec-WebSocket-Key must be base64 of 16 bytes")

    if origin is not None:
        # Whole-string, case-insensitive, no normalisation: as libsoup. Every Origin field
        # takes part (comma-joined), so a second one cannot smuggle a foreign origin past.
        request_origin = get_list("Origin")
        if request_origin is None or request_origin.lower() != origin.lower():
            raise HandshakeError(HTTPStatus.FORBIDDEN, "Incorrect WebSocket Origin header")

    protocol = None
    if protocols is not None:
        offered_value = get_list("Sec-WebSocket-Protocol")
        if offered_value is not None:
            offered = split_list(offered_value)
            protocol = next((p for p in protocols if p in offered), None)
            if protocol is None:
                raise _bad_request("Unsupported WebSocket subprotocol: none of %s offered"
                                   % ", ".join(protocols))

    response = response_fields(key, protocol)

    accepted: list = []
    if extension_types:
        offer = get_list("Sec-WebSocket-Extensions")
        if offer is not None:  # no offer, nothing to negotiate (most clients but browsers)
            accepted, answer = negotiate_server(offer, list(extension_types))
            if answer:
                response.append(("Sec-WebSocket-Extensions", answer))
    return HandshakeResult(protocol, accepted, response)


def response_fields(key: str, protocol: Optional[str]) -> List[Header]:
    """The fields of the 101 that accepts the trimmed ``key`` with ``protocol`` (or none),
    before any extension's answer."""
    fields = [("Upgrade", UPGRADE_TOKEN), ("Connection", "Upgrade"),
              ("Sec-WebSocket-Accept", compute_accept(key))]
    if protocol is not None:
        fields.append(("Sec-WebSocket-Protocol", protocol))
    return fields


def _check_header_value(what: str, value: str) -> None:
    # A control character would let a caller's value break out of a header line or the
    # request line.
    if CTL.search(value):
        raise ValueError("%s contains control characters: %r" % (what, value))


def client_request_headers(host: str, path: str, origin: Optional[str] = None,
                           protocols: Optional[Sequence[str]] = None,
                           extension_types: Sequence = ()) -> Tuple[str, List[Header]]:
    """Headers of a client upgrade request, and the fresh random key in them.

    ``host`` is the Host header value ("host[:port]"), ``path`` the request
    target (validated here so the caller can put it in the request line as
    is). Returns ``(key, headers)``; keep ``key`` for
    :func:`client_check_response`. Raises ValueError for a path not starting
    with "/", values with control characters or whitespace in the path, or a
    subprotocol that is not an RFC 7230 token.
    """
    if not path.startswith("/") or " " in path:
        raise ValueError("request path must start with / and contain no spaces: %r" % path)
    for what, value in (("path", path), ("host", host), ("origin", origin or "")):
        _check_header_value(what, value)

    key = base64.b64encode(secrets.token_bytes(KEY_SIZE)).decode("ascii")
    headers = [
        ("Host", host),
        ("Upgrade", UPGRADE_TOKEN),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", WEBSOCKET_VERSION),
    ]
    if origin is not None:
        headers.append(("Origin", origin))
    if protocols:
        for protocol in protocols:
            if not is_token(protocol):  # what a subprotocol name may be made of
                raise ValueError("invalid subprotocol name %r" % protocol)
        headers.append(("Sec-WebSocket-Protocol", ", ".join(protocols)))
    if extension_types:
        offer = client_offer(list(extension_types))
        if offer:
            headers.append(("Sec-WebSocket-Extensions", offer))
    return key, headers


def client_check_response(status: int, headers: HeadersLike, key: str,
                          protocols: Optional[Sequence[str]] = None,
                          extension_types: Sequence = ()) -> HandshakeResult:
    """Verify the server's answer to our upgrade request.

    Checks status 101, the Upgrade and Connection tokens, that
    Sec-WebSocket-Accept matches ``key`` exactly, that neither it nor
    Sec-WebSocket-Protocol appears twice, that a returned subprotocol
    is one of ``protocols`` we offered, and that the extensions accepted are
    ones we offered (via ``minisoup.extensions.client_accept``).
    Raises HandshakeError(status, message) naming the failed check.
    """
    if status != HTTPStatus.SWITCHING_PROTOCOLS:
        raise HandshakeError(status, "Server rejected WebSocket handshake (status %d)" % status)
    if not _has_token(headers, "Upgrade", UPGRADE_TOKEN):
        raise HandshakeError(status, "Server ignored WebSocket handshake: Upgrade header missing websocket")
    if not _has_token(headers, "Connection", CONNECTION_TOKEN):
        raise HandshakeError(status, "Server ignored WebSocket handshake: Connection header missing Upgrade")

    # RFC 6455 11.3.3 and 11.3.4: Accept and Protocol MUST NOT appear more than once in
    # a response.
    for name in ("Sec-WebSocket-Accept", "Sec-WebSocket-Protocol"):
        if _repeated(headers, name):
            raise HandshakeError(status, "Server returned %s more than once" % name)
    accept = headers.get_one("Sec-WebSocket-Accept")
    # Exact comparison: base64 is case-sensitive (libsoup compares ignoring case).
    if accept is None or accept.strip() != compute_accept(key):
        raise HandshakeError(status, "Server returned incorrect Sec-WebSocket-Accept key")

    protocol = headers.get_one("Sec-WebSocket-Protocol")
    if protocol is not None:
        protocol = protocol.strip()
        if not protocols or protocol not in protocols:
            raise HandshakeError(status, "Server requested unsupported protocol %r" % protocol)

    answer = headers.get_list("Sec-WebSocket-Extensions")
    if answer is not None and not answer.strip():
        answer = None
    accepted: list = []
    if extension_types:
        try:
            accepted = client_accept(answer, list(extension_types))
        except (ValueError, HandshakeError) as exc:
            raise HandshakeError(status, "Server returned bad Sec-WebSocket-Extensions: %s" % exc) from None
    elif answer is not None:
        raise HandshakeError(status, "Server requested unsupported extension: %s" % answer)
    return HandshakeResult(protocol, accepted, [])
