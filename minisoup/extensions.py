"""WebSocket extensions: the extension interface and ``Sec-WebSocket-Extensions`` negotiation.

RFC 6455 §9 lets a client offer extensions in ``Sec-WebSocket-Extensions`` and the server
accept some of them in its ``101`` response. This module holds the three pieces every
extension shares, none of them specific to one extension:

* :func:`parse_extension_header`, the RFC 6455 §9.1 grammar;
* :class:`WebsocketExtension`, the interface an extension type implements (negotiation
  class methods plus a per-message transform), as libsoup's ``SoupWebsocketExtension``;
* :func:`negotiate_server`, :func:`client_offer` and :func:`client_accept`, which match
  offers and answers against a list of extension types.

Protocol module: no sockets, no I/O. The connection drives the per-message transform.
"""

import re
from typing import List, Optional, Sequence, Tuple, Type

from .grammar import TOKEN

__all__ = [
    "ExtensionParams",
    "WebsocketExtension",
    "client_accept",
    "client_offer",
    "format_extension",
    "format_params",
    "negotiate_server",
    "parse_extension_header",
]

#: One extension's parameters, in header order: ``(key, value)``, value ``None`` when the
#: parameter was given without ``=``.
ExtensionParams = List[Tuple[str, Optional[str]]]

# Extension names, parameter names and (after unquoting) parameter values are all
# tokens (RFC 6455 §9.1): grammar.TOKEN.
# quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE, with qdtext and the escaped
# character limited to HTAB, SP and visible ASCII / obs-text (no other controls).
_QUOTED_RE = re.compile(r'"((?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*)"')
_QUOTED_PAIR_RE = re.compile(r"\\(.)")
# OWS: separators may be surrounded by spaces and tabs (RFC 7230 §3.2.3, §7).
_OWS_RE = re.compile(r"[ \t]*")

_LIST_SEPARATOR = ","
_PARAM_SEPARATOR = ";"
_VALUE_SEPARATOR = "="
_QUOTE = '"'


def _skip_ows(value: str, pos: int) -> int:
    match = _OWS_RE.match(value, pos)
    assert match is not None  # `*` always matches, possibly empty
    return match.end()


def _read_token(value: str, pos: int, what: str) -> Tuple[str, int]:
    match = TOKEN.match(value, pos)
    if match is None:
        raise ValueError("expected %s at offset %d in %r" % (what, pos, value))
    return match.group(), match.end()


def _read_param_value(value: str, pos: int) -> Tuple[str, int]:
    if value.startswith(_QUOTE, pos):
        match = _QUOTED_RE.match(value, pos)
        if match is None:
            raise ValueError("unterminated or invalid quoted-string at offset %d in %r" % (pos, value))
        unquoted = _QUOTED_PAIR_RE.sub(r"\1", match.group(1))
        # RFC 6455 §9.1: a quoted value must still be a token once unescaped.
        if TOKEN.fullmatch(unquoted) is None:
            raise ValueError("quoted parameter value %r is not a token" % unquoted)
        return unquoted, match.end()
    return _read_token(value, pos, "a parameter value")


def parse_extension_header(value: str) -> List[Tuple[str, ExtensionParams]]:
    """Parse a ``Sec-WebSocket-Extensions`` value into ``[(name, params), ...]``.

    Follows RFC 6455 §9.1: extensions are comma-separated, each a token followed by
    ``;``-separated parameters ``key`` or ``key=value`` where the value is a token or a
    quoted-string (returned unescaped). Spaces and tabs around separators are ignored, as
    are empty list elements (``"a, , b"``), as RFC 7230 §7 asks. Several header lines are
    handled by joining them with ``", "`` first. An empty value gives ``[]``.

    Names and values are returned exactly as sent (extension and parameter names are
    compared case-sensitively, as libsoup and python-websockets do).

    Raises ``ValueError`` on any syntax error (a non-token name or value, a dangling ``;``
    or ``=``, an unterminated quote, a quoted value that is not a token once unescaped,
    junk between elements).
    """
    result: List[Tuple[str, ExtensionParams]] = []
    end = len(value)
    pos = _skip_ows(value, 0)
    while pos < end:
        if value[pos] == _LIST_SEPARATOR:
            pos = _skip_ows(value, pos + 1)
            continue
        name, pos = _read_token(value, pos, "an extension name")
        params: ExtensionParams = []
        pos = _skip_ows(value, pos)
        while pos < end and value[pos] == _PARAM_SEPARATOR:
            pos = _skip_ows(value, pos + 1)
            key, pos = _read_token(value, pos, "a parameter name")
            pos = _skip_ows(value, pos)
            param_value: Optional[str] = None
            if pos < end and value[pos] == _VALUE_SEPARATOR:
                pos = _skip_ows(value, pos + 1)
                param_value, pos = _read_param_value(value, pos)
                pos = _skip_ows(value, pos)
            params.append((key, param_value))
        result.append((name, params))
        if pos < end:
            if value[pos] != _LIST_SEPARATOR:
                raise ValueError("unexpected %r at offset %d in %r" % (value[pos], pos, value))
            pos = _skip_ows(value, pos + 1)
    return result


def format_params(params: ExtensionParams) -> str:
    """Format parameters as header text: ``"key; key=value"`` (``""`` for none).

    Values that are not tokens are sent as quoted-strings. No leading ``"; "``: join it
    with the extension name with :func:`format_extension`.
    """
    parts = []
    for key, param_value in params:
        if param_value is None:
            parts.append(key)
        elif TOKEN.fullmatch(param_value):
            parts.append("%s=%s" % (key, param_value))
        else:
            escaped = param_value.replace("\\", "\\\\").replace('"', '\\"')
            parts.append('%s="%s"' % (key, escaped))
    return "; ".join(parts)


def format_extension(name: str, params_string: str) -> str:
    """One element of a ``Sec-WebSocket-Extensions`` list: ``name`` or ``name; params``."""
    return "%s; %s" % (name, params_string) if params_string else name


class WebsocketExtension:
    """Base class of a WebSocket extension (libsoup's ``SoupWebsocketExtension``).

    An extension *type* (the class) takes part in the handshake through class methods;
    an *instance* is the agreement for one connection and transforms its data messages.
    The defaults here describe a parameterless extension that does not change the data:
    a subclass overrides what it needs.

    Class attributes:

    * ``name``: the extension token, e.g. ``"permessage-deflate"``.
    * ``rsv_bits``: the RSV bits the extension owns, as a 3-bit int (``minisoup.frames.RSV1``
      is ``0x4``). Two extensions claiming the same bit are never negotiated together.

    Handshake (class methods; ``params`` is a list of ``(key, value_or_None)`` as
    returned by :func:`parse_extension_header`):

    * :meth:`server_accept` — server side: answer one offer, or decline it.
    * :meth:`client_offer` — client side: the offer text.
    * :meth:`client_accept` — client side: check the server's answer.

    Per message (instance methods, called by ``WebsocketConnection``; control frames are
    never passed to an extension):

    * incoming: :meth:`decode_start` on the first frame of each data message, then, if it
      returned ``True``, :meth:`decode` for each frame of that message;
    * outgoing: :meth:`encode` once per whole message.

    Extension instances belong to one connection and are not thread-safe.
    """

    name: str = ""
    rsv_bits: int = 0

    def __init__(self, params_string: str = "") -> None:
        """Create the agreement; ``params_string`` is what :meth:`get_params_string` returns."""
        self._params_string = params_string

    # -- handshake -----------------------------------------------------------------

    @classmethod
    def server_accept(cls, params: ExtensionParams) -> Optional[Tuple["WebsocketExtension", str]]:
        """Answer one client offer of this extension (server side).

        Returns ``(instance, response_params)`` to accept, where ``response_params`` is the
        parameter text for the response (``"key=value; key"``, ``""`` for none, without the
        name), or ``None`` to decline this offer: bad, unknown, duplicate or out-of-range
        parameters, or settings this end cannot honour. Must never raise: a declined offer
        lets the next offer of the same extension be tried (RFC 7692 §5).

        The default accepts an offer without parameters and declines any other.
        """
        if params:
            return None
        return cls(), ""

    @classmethod
    def client_offer(cls) -> str:
        """The offer for the client's ``Sec-WebSocket-Extensions``, name included.

        It may hold several comma-separated offers of this extension, most preferred
        first. The default offers the bare name.
        """
        return cls.name

    @classmethod
    def client_accept(cls, params: ExtensionParams) -> "WebsocketExtension":
        """Check the server's answer to :meth:`client_offer` and return the agreement.

        Raises ``ValueError`` when the answer is unacceptable (the client must then fail
        the connection, RFC 6455 §9.1). The default accepts only an answer without
        parameters.
        """
        if params:
            raise ValueError("%s takes no parameters, server sent %r" % (cls.name, params))
        return cls()

    # -- accessors -----------------------------------------------------------------

    def get_name(self) -> str:
        """The extension token, e.g. ``"permessage-deflate"``."""
        return self.name

    def get_params_string(self) -> str:
        """The negotiated parameters as sent in the handshake response (``""`` for none)."""
        return self._params_string

    def get_header_element(self) -> str:
        """The agreement as one ``Sec-WebSocket-Extensions`` element: name and parameters."""
        return format_extension(self.name, self.get_params_string())

    def __repr__(self) -> str:
        return "<%s %r>" % (type(self).__name__, self.get_header_element())

    # -- per-message transform -----------------------------------------------------

    def decode_start(self, rsv: int) -> bool:
        """Start an incoming data message whose first frame has RSV bits ``rsv``.

        Returns ``True`` when this extension transformed the message (then
        :meth:`decode` is called for each of its frames). The default claims the message
        when one of :attr:`rsv_bits` is set.
        """
        return bool(rsv & self.rsv_bits)

    def decode(self, data: bytes, fin: bool, max_size: int) -> bytes:
        """Decode one frame's payload of a message claimed by :meth:`decode_start`.

        ``fin`` is true on the last frame of the message. ``max_size`` is the limit in
        bytes for the whole decoded message so far (0 = no limit): an extension that
        expands data must raise ``ProtocolError(CloseCode.TOO_BIG)`` as soon as it would be
        exceeded, without producing the excess first. Malformed data raises
        ``ProtocolError`` (``BAD_DATA`` or ``PROTOCOL_ERROR``). The default returns
        ``data`` unchanged.
        """
        return data

    def encode(self, data: bytes) -> Tuple[bytes, int]:
        """Encode one whole outgoing data message.

        Returns ``(payload, rsv)``: ``rsv`` holds the bits to set on the message's first
        frame, 0 when the extension left this message untransformed. The default returns
        ``(data, 0)``.
        """
        return data, 0


ExtensionType = Type[WebsocketExtension]


def negotiate_server(
    header_value: Optional[str], extension_types: Sequence[ExtensionType]
) -> Tuple[List[WebsocketExtension], Optional[str]]:
    """Choose extensions from a client's ``Sec-WebSocket-Extensions`` (server side).

    ``header_value`` is the request's header (all lines comma-joined) or ``None``.
    Offers are considered in the client's order (its preference). For each offer, the
    first of ``extension_types`` with that name whose :meth:`~WebsocketExtension.server_accept`
    accepts it wins; a later offer of an extension already accepted is ignored (RFC 7692
    §5: the first acceptable offer is taken), and so is an offer whose type claims an RSV
    bit already owned by an accepted extension.

    Returns ``(instances, response_value)``: the accepted extensions in the order they
    were accepted (the order the response lists them), and the response header value,
    ``None`` when nothing was accepted. A syntactically broken header declines everything
    (``([], None)``): it never raises for the client's input.
    """
    if not header_value:
        return [], None
    try:
        offers = parse_extension_header(header_value)
    except ValueError:
        return [], None
    accepted: List[WebsocketExtension] = []
    elements: List[str] = []
    accepted_names = set()
    used_rsv = 0
    for name, params in offers:
        if name in accepted_names:
            continue
        for ext_type in extension_types:
            if ext_type.name != name or ext_type.rsv_bits & used_rsv:
                continue
            try:
                answer = ext_type.server_accept(params)
            except ValueError:
                # The contract says decline with None; a ValueError from a third-party
                # extension means the same thing and must not fail the handshake.
                answer = None
            if answer is None:
                continue
            instance, response_params = answer
            accepted.append(instance)
            elements.append(format_extension(name, response_params))
            accepted_names.add(name)
            used_rsv |= ext_type.rsv_bits
            break
    return accepted, (", ".join(elements) if elements else None)


def client_offer(extension_types: Sequence[ExtensionType]) -> Optional[str]:
    """The client's ``Sec-WebSocket-Extensions`` value for ``extension_types``, or ``None``."""
    offers = [ext_type.client_offer() for ext_type in extension_types]
    return ", ".join(offers) if offers else None


def client_accept(
    header_value: Optional[str], extension_types: Sequence[ExtensionType]
) -> List[WebsocketExtension]:
    """Check the server's ``Sec-WebSocket-Extensions`` answer (client side).

    Returns the agreed extension instances in the server's order (empty when the header
    is absent or empty). Raises ``ValueError`` when the header is malformed, names an
    extension not in ``extension_types`` (not offered), names one twice, names two that
    claim the same RSV bit, or when an extension's
    :meth:`~WebsocketExtension.client_accept` rejects its parameters.
    """
    if not header_value or not header_value.strip():
        return []
    accepted: List[WebsocketExtension] = []
    seen_names = set()
    used_rsv = 0
    for name, params in parse_extension_header(header_value):
        ext_type = next((t for t in extension_types if t.name == name), None)
        if ext_type is None:
            raise ValueError("server accepted extension %r, which was not offered" % name)
        if name in seen_names:
            raise ValueError("server accepted extension %r twice" % name)
        if ext_type.rsv_bits & used_rsv:
            raise ValueError("extension %r claims an RSV bit already in use" % name)
        accepted.append(ext_type.client_accept(params))
        seen_names.add(name)
        used_rsv |= ext_type.rsv_bits
    return accepted
