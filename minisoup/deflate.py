"""permessage-deflate (RFC 7692): :class:`WebsocketExtensionDeflate`.

Each data message is compressed with raw DEFLATE (no zlib header), flushed with
``Z_SYNC_FLUSH`` and stripped of the final empty stored block ``00 00 ff ff``; RSV1 on the
message's first frame says it is compressed. The receiver appends the four octets back
and inflates. Control frames are never compressed.

The zlib objects are created lazily, on the first message that needs them, and dropped
after every message on a side where "no context takeover" was agreed, so an idle or
quiet connection holds no zlib memory at all. ``tools/deflate_memory.py`` measures the
cost per connection of each setting.

Protocol module: no sockets, no I/O.
"""

import re
import zlib
from typing import Dict, Optional, Tuple

from .extensions import ExtensionParams, WebsocketExtension, format_params
from .frames import RSV1, CloseCode, ProtocolError

__all__ = ["WebsocketExtensionDeflate"]

EXTENSION_NAME = "permessage-deflate"

SERVER_NO_CONTEXT_TAKEOVER = "server_no_context_takeover"
CLIENT_NO_CONTEXT_TAKEOVER = "client_no_context_takeover"
SERVER_MAX_WINDOW_BITS = "server_max_window_bits"
CLIENT_MAX_WINDOW_BITS = "client_max_window_bits"

#: RFC 7692 §7.1.2: window sizes are 2**8 .. 2**15 bytes; absent means the largest.
MIN_WINDOW_BITS = 8
MAX_WINDOW_BITS = 15
#: zlib cannot build a raw-deflate *compressor* with an 8-bit window (deflateInit2 rejects
#: it since zlib 1.2.9: https://github.com/madler/zlib/issues/171); inflating with 8 works.
MIN_COMPRESS_WINDOW_BITS = 9
#: zlib's memLevel range (1 = least memory, 9 = most).
MIN_MEM_LEVEL = 1
MAX_MEM_LEVEL = 9

#: The empty stored block a sync flush ends with; RFC 7692 §7.2.1 strips it on the wire.
_SYNC_TAIL = b"\x00\x00\xff\xff"
_SYNC_TAIL_LEN = len(_SYNC_TAIL)

# RFC 7692 §7.1.2.1/§7.1.2.2: "a decimal integer value without leading zeroes" (a quoted
# "10" arrives here already unquoted). Every valid size fits in two digits, so longer input
# is out of range without int(); "09", "+9", " 9" or "9.0" never reach int() (which would
# take them all but the last).
_DIGITS_RE = re.compile(r"[1-9][0-9]?")

_WINDOW_PARAMS = (SERVER_MAX_WINDOW_BITS, CLIENT_MAX_WINDOW_BITS)


def _parse_window_bits(value: Optional[str]) -> int:
    if value is None or _DIGITS_RE.fullmatch(value) is None:
        raise ValueError("window bits must be a number from %d to %d, got %r"
                         % (MIN_WINDOW_BITS, MAX_WINDOW_BITS, value))
    bits = int(value)
    if not MIN_WINDOW_BITS <= bits <= MAX_WINDOW_BITS:
        raise ValueError("window bits %d out of range %d-%d" % (bits, MIN_WINDOW_BITS, MAX_WINDOW_BITS))
    return bits


def _parse_params(params: ExtensionParams, is_offer: bool) -> Dict[str, Optional[int]]:
    """Validate permessage-deflate parameters (RFC 7692 §7.1) into ``{name: value}``.

    A flag maps to ``None``; a window parameter maps to its int, or to ``None`` for the
    bare ``client_max_window_bits`` that only an offer may carry (§7.1.2.2). Raises
    ``ValueError`` on an unknown or repeated parameter, a value on a flag, or a missing or
    out-of-range window size.
    """
    parsed: Dict[str, Optional[int]] = {}
    for key, value in params:
        if key in parsed:
            raise ValueError("duplicate parameter %r" % key)
        if key in (SERVER_NO_CONTEXT_TAKEOVER, CLIENT_NO_CONTEXT_TAKEOVER):
            if value is not None:
                raise ValueError("parameter %r takes no value, got %r" % (key, value))
            parsed[key] = None
        elif key == CLIENT_MAX_WINDOW_BITS and value is None and is_offer:
            parsed[key] = None
        elif key in _WINDOW_PARAMS:
            parsed[key] = _parse_window_bits(value)
        else:
            raise ValueError("unknown parameter %r" % key)
    return parsed


class WebsocketExtensionDeflate(WebsocketExtension):
    """permessage-deflate (RFC 7692), added to every ``Server`` by default, as in libsoup.

    **Policy.** The class attributes below are this end's policy; subclass to change them
    and register the subclass instead (``server.remove_websocket_extension(
    WebsocketExtensionDeflate)`` then ``server.add_websocket_extension(MyDeflate)``).
    "Local" is this end's compressor (the server's, on a server), "peer" the other end's.
    They are checked when the subclass is defined (``ValueError`` when out of range).

    * ``compress_threshold`` (bytes, default 64): outgoing messages shorter than this are
      sent uncompressed, RSV1 clear. Without a shared context, deflate cannot shrink a
      message this short (measured: a 32-byte JSON message "compresses" to 31 bytes),
      and skipping them means a connection that only ever sends short messages never
      allocates a compressor. 0 compresses every message.
    * ``compress_level`` (0-9 or -1, default -1 = zlib's default, 6).
    * ``mem_level`` (1-9, default 5): the size of zlib's hash table and buffers; the
      compressor holds about ``2**(mem_level + 9)`` bytes for them. zlib's and libsoup's
      8 costs 128 KiB more per connection for a ratio about 1% better on chat traffic.
    * ``max_window_bits`` (9-15, default 12): the largest window this end compresses
      with (the compressor holds ``2**(bits + 2)`` bytes). A server announces it below 15
      as ``server_max_window_bits``, which RFC 7692 §7.1.2.1 allows unasked, so that the
      client may inflate with a smaller window too.
    * ``peer_max_window_bits`` (8-15, default 12; server side only): asked of the
      client, when its offer carries ``client_max_window_bits`` (browsers' does), as the
      window it compresses with; this end then inflates with a ``2**bits``-byte window.
      A client that does not offer the parameter keeps its 15 bits (§7.1.2.2).
    * ``force_no_context_takeover`` (default ``False``, as libsoup): when ``True`` the
      server always answers ``server_no_context_takeover`` and starts each message with a
      fresh compressor, dropped after the message: no compressor memory between
      messages, but about twice the bytes on the wire for small, similar messages.
    * ``peer_no_context_takeover`` (default ``False``): when ``True`` the server always
      answers ``client_no_context_takeover``, so its decompressor is dropped after each
      message.

    The defaults (12-bit windows, ``mem_level`` 5, context takeover; python-websockets'
    choice too) hold about 50 KiB per connection once both directions have carried a
    message, against about 300 KiB for libsoup's 15 bits and ``mem_level`` 8, for
    compressed output about 8% larger on chat-sized JSON (``tools/deflate_memory.py``).
    Before the first compressed message nothing is allocated.

    **Negotiation** follows RFC 7692 §7 exactly: an offer with an unknown or repeated
    parameter, a value on ``*_no_context_takeover``, or a missing, out-of-range (8-15) or
    not plainly written (``09``, ``+9``) window size is declined, and the next offer is
    tried. The browser offer
    ``permessage-deflate; client_max_window_bits`` is accepted.

    **Agreement.** An instance exposes what was agreed, whichever side it is on:
    ``server_no_context_takeover``, ``client_no_context_takeover`` (bools),
    ``server_max_window_bits``, ``client_max_window_bits`` (ints, 15 when not limited)
    and ``is_server``.
    """

    name = EXTENSION_NAME
    rsv_bits = RSV1

    compress_threshold: int = 64
    compress_level: int = zlib.Z_DEFAULT_COMPRESSION
    mem_level: int = 5
    max_window_bits: int = 12
    force_no_context_takeover: bool = False
    peer_max_window_bits: int = 12
    peer_no_context_takeover: bool = False

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        cls._check_policy()

    @classmethod
    def _check_policy(cls) -> None:
        """Reject an impossible policy when the class is defined, not at handshake time."""
        if cls.compress_threshold < 0:
            raise ValueError("compress_threshold must be >= 0")
        if not (cls.compress_level == zlib.Z_DEFAULT_COMPRESSION or 0 <= cls.compress_level <= 9):
            raise ValueError("compress_level must be -1 or 0-9")
        if not MIN_MEM_LEVEL <= cls.mem_level <= MAX_MEM_LEVEL:
            raise ValueError("mem_level must be %d-%d" % (MIN_MEM_LEVEL, MAX_MEM_LEVEL))
        if not MIN_COMPRESS_WINDOW_BITS <= cls.max_window_bits <= MAX_WINDOW_BITS:
            raise ValueError("max_window_bits must be %d-%d (zlib cannot compress with 8)"
                             % (MIN_COMPRESS_WINDOW_BITS, MAX_WINDOW_BITS))
        if not MIN_WINDOW_BITS <= cls.peer_max_window_bits <= MAX_WINDOW_BITS:
            raise ValueError("peer_max_window_bits must be %d-%d" % (MIN_WINDOW_BITS, MAX_WINDOW_BITS))

    def __init__(
        self,
        server_no_context_takeover: bool = False,
        client_no_context_takeover: bool = False,
        server_max_window_bits: int = MAX_WINDOW_BITS,
        client_max_window_bits: int = MAX_WINDOW_BITS,
        is_server: bool = True,
        params_string: str = "",
    ) -> None:
        """Create the agreement for one connection (normally done by the negotiation).

        Window sizes are in bits (8-15). ``is_server`` picks which half is local: the
        server compresses with the ``server_*`` settings and inflates with the
        ``client_*`` ones, the client the other way round. ``params_string`` is the
        response's parameter text, returned by :meth:`get_params_string`.
        """
        super().__init__(params_string)
        self.server_no_context_takeover = server_no_context_takeover
        self.client_no_context_takeover = client_no_context_takeover
        self.server_max_window_bits = server_max_window_bits
        self.client_max_window_bits = client_max_window_bits
        self.is_server = is_server
        if is_server:
            local_bits, self._local_no_takeover = server_max_window_bits, server_no_context_takeover
            self._peer_bits, self._peer_no_takeover = client_max_window_bits, client_no_context_takeover
        else:
            local_bits, self._local_no_takeover = client_max_window_bits, client_no_context_takeover
            self._peer_bits, self._peer_no_takeover = server_max_window_bits, server_no_context_takeover
        # An agreed 8-bit local window cannot be honoured by zlib, and compressing with 9
        # instead (libsoup's choice) can emit distances the peer's 256-byte window cannot
        # resolve. RFC 7692 lets any message go uncompressed, so this end keeps the
        # agreement exactly by sending everything with RSV1 clear, while still inflating
        # what the peer compresses: better than declining, which would lose both.
        self._compress_enabled = local_bits >= MIN_COMPRESS_WINDOW_BITS
        # A smaller window than agreed is always valid: the policy caps it silently.
        self._local_bits = min(local_bits, self.max_window_bits)
        self._deflater: Optional[zlib._Compress] = None
        self._inflater: Optional[zlib._Decompress] = None
        self._decoded_size = 0
        self._message_has_input = False  # a compressed byte of this message arrived

    def __repr__(self) -> str:
        return ("%s(server_no_context_takeover=%r, client_no_context_takeover=%r, "
                "server_max_window_bits=%d, client_max_window_bits=%d, is_server=%r)"
                % (type(self).__name__, self.server_no_context_takeover, self.client_no_context_takeover,
                   self.server_max_window_bits, self.client_max_window_bits, self.is_server))

    def has_compressor(self) -> bool:
        """Whether a zlib compressor is held now: created on the first message compressed,
        kept with context takeover, dropped after each message without it."""
        return self._deflater is not None

    def has_decompressor(self) -> bool:
        """Whether a zlib decompressor is held now (as :meth:`has_compressor`, for the
        peer's messages; also dropped when the peer ends its stream with BFINAL)."""
        return self._inflater is not None

    # -- negotiation ---------------------------------------------------------------

    @classmethod
    def server_accept(cls, params: ExtensionParams) -> Optional[Tuple["WebsocketExtensionDeflate", str]]:
        """Answer one client offer (RFC 7692 §7.1); ``None`` declines it. Never raises.

        The answer echoes what the client asked for, tightened by the class policy:
        ``server_no_context_takeover`` if asked or forced; ``client_no_context_takeover``
        if offered or forced (either way the client resets its context, so this end can
        drop its decompressor between messages); ``server_max_window_bits`` as offered
        or capped by ``max_window_bits``; ``client_max_window_bits`` only when offered
        (§7.1.2.2 forbids it otherwise), capped by ``peer_max_window_bits``.
        """
        try:
            offer = _parse_params(params, is_offer=True)
        except ValueError:
            return None
        server_no_takeover = SERVER_NO_CONTEXT_TAKEOVER in offer or cls.force_no_context_takeover
        client_no_takeover = CLIENT_NO_CONTEXT_TAKEOVER in offer or cls.peer_no_context_takeover
        offered_server_bits = offer.get(SERVER_MAX_WINDOW_BITS)
        server_bits = min(offered_server_bits or MAX_WINDOW_BITS, cls.max_window_bits)
        # offered_server_bits == 8 stays 8: the instance then sends uncompressed (see
        # __init__), which honours the client's limit where zlib cannot.
        client_bits = MAX_WINDOW_BITS
        announce_client_bits = False
        if CLIENT_MAX_WINDOW_BITS in offer:
            client_bits = min(offer[CLIENT_MAX_WINDOW_BITS] or MAX_WINDOW_BITS, cls.peer_max_window_bits)
            announce_client_bits = client_bits < MAX_WINDOW_BITS or offer[CLIENT_MAX_WINDOW_BITS] is not None

        response: ExtensionParams = []
        if server_no_takeover:
            response.append((SERVER_NO_CONTEXT_TAKEOVER, None))
        if client_no_takeover:
            response.append((CLIENT_NO_CONTEXT_TAKEOVER, None))
        if offered_server_bits is not None or server_bits < MAX_WINDOW_BITS:
            response.append((SERVER_MAX_WINDOW_BITS, str(server_bits)))
        if announce_client_bits:
            response.append((CLIENT_MAX_WINDOW_BITS, str(client_bits)))
        params_string = format_params(response)
        instance = cls(server_no_takeover, client_no_takeover, server_bits, client_bits,
                       is_server=True, params_string=params_string)
        return instance, params_string

    @classmethod
    def client_offer(cls) -> str:
        """The client's offer: ``"permessage-deflate; client_max_window_bits"``.

        As libsoup's and browsers' offer, it lets the server choose the client's window
        and does not limit the server's (a server unable to honour a limit would decline
        compression altogether); ``max_window_bits`` still caps the client's own
        compressor, silently, since a smaller window than agreed is always valid.
        ``peer_no_context_takeover`` adds ``server_no_context_takeover`` and
        ``force_no_context_takeover`` adds ``client_no_context_takeover``.
        """
        offer: ExtensionParams = []
        if cls.peer_no_context_takeover:
            offer.append((SERVER_NO_CONTEXT_TAKEOVER, None))
        if cls.force_no_context_takeover:
            offer.append((CLIENT_NO_CONTEXT_TAKEOVER, None))
        offer.append((CLIENT_MAX_WINDOW_BITS, None))
        return "%s; %s" % (cls.name, format_params(offer))

    @classmethod
    def client_accept(cls, params: ExtensionParams) -> "WebsocketExtensionDeflate":
        """Check the server's answer to :meth:`client_offer` (RFC 7692 §7.1).

        Raises ``ValueError`` for a malformed answer (unknown or repeated parameter, a
        value on a flag, a bare or out-of-range window size) or for one without the
        ``server_no_context_takeover`` that the offer asked for. The server may add
        either ``*_no_context_takeover`` and either window size (8-15) unasked.
        """
        answer = _parse_params(params, is_offer=False)
        server_no_takeover = SERVER_NO_CONTEXT_TAKEOVER in answer
        if cls.peer_no_context_takeover and not server_no_takeover:
            raise ValueError("server ignored the requested %s" % SERVER_NO_CONTEXT_TAKEOVER)
        client_no_takeover = CLIENT_NO_CONTEXT_TAKEOVER in answer or cls.force_no_context_takeover
        server_bits = answer.get(SERVER_MAX_WINDOW_BITS) or MAX_WINDOW_BITS
        client_bits = answer.get(CLIENT_MAX_WINDOW_BITS) or MAX_WINDOW_BITS
        return cls(server_no_takeover, client_no_takeover, server_bits, client_bits,
                   is_server=False, params_string=format_params(params))

    # -- incoming ------------------------------------------------------------------

    def decode_start(self, rsv: int) -> bool:
        """Start an incoming data message; ``True`` when RSV1 says it is compressed."""
        self._decoded_size = 0
        self._message_has_input = False
        return bool(rsv & RSV1)

    def decode(self, data: bytes, fin: bool, max_size: int) -> bytes:
        """Inflate one frame of a compressed message; see :meth:`WebsocketExtension.decode`.

        Output is bounded while inflating: zlib is never asked for more than the rest of
        ``max_size`` (0 = no limit) plus one byte, so a "zip bomb" costs at most
        ``max_size`` bytes before ``ProtocolError(CloseCode.TOO_BIG)``. Corrupt data
        raises ``ProtocolError(CloseCode.BAD_DATA)``.

        An empty message may arrive compressed as the single byte ``0x00`` (RFC 7692
        §7.2.3.6, what zlib makes of it) or, from some clients, as no bytes at all; both
        decode to ``b""`` and leave the context as it was.
        """
        if not data:
            if not fin or not self._message_has_input:
                # Nothing to inflate. A whole message without a compressed byte is the
                # empty message: the sync-flush tail alone would open a stored block that
                # the next message's bytes would then be read as (and fail with 1007).
                return b""
        else:
            self._message_has_input = True
        inflater = self._inflater
        if inflater is None:
            inflater = self._inflater = zlib.decompressobj(wbits=-self._peer_bits)
        try:
            output = self._inflate(inflater, data, max_size)
            if fin and not inflater.eof:
                # §7.2.2: the sender stripped the sync-flush tail; put it back.
                output += self._inflate(inflater, _SYNC_TAIL, max_size)
        except zlib.error as exc:
            self._inflater = None
            raise ProtocolError(CloseCode.BAD_DATA, "invalid compressed data: %s" % exc)
        except ProtocolError:
            self._inflater = None
            raise
        if fin and (self._peer_no_takeover or inflater.eof):
            # No context to keep (agreed, or the peer ended its stream with BFINAL):
            # drop the decompressor until the next compressed message.
            self._inflater = None
        return output

    def _inflate(self, inflater: "zlib._Decompress", data: bytes, max_size: int) -> bytes:
        if inflater.eof:
            if data:
                raise ProtocolError(CloseCode.BAD_DATA, "data after the end of the deflate stream")
            return b""
        if max_size:
            budget = max_size - self._decoded_size
            # Ask for one byte more than allowed: getting it proves the message too big,
            # without ever inflating the rest (the input is left in unconsumed_tail).
            output = inflater.decompress(data, budget + 1)
            if len(output) > budget:
                raise ProtocolError(CloseCode.TOO_BIG,
                                    "decompressed message exceeds %d bytes" % max_size)
        else:
            output = inflater.decompress(data)
        if inflater.unused_data:
            raise ProtocolError(CloseCode.BAD_DATA, "data after the end of the deflate stream")
        self._decoded_size += len(output)
        return output

    # -- outgoing ------------------------------------------------------------------

    def encode(self, data: bytes) -> Tuple[bytes, int]:
        """Compress one whole outgoing message: ``(payload, RSV1)``, or ``(data, 0)`` as is.

        A message is sent uncompressed when it is shorter than ``compress_threshold``,
        when the agreed window is 8 bits (see ``__init__``), or, without context
        takeover, when compressing did not make it smaller.
        """
        if not self._compress_enabled or len(data) < self.compress_threshold:
            return data, 0
        deflater = self._deflater
        if deflater is None:
            deflater = zlib.compressobj(self.compress_level, zlib.DEFLATED, -self._local_bits, self.mem_level)
            if not self._local_no_takeover:
                self._deflater = deflater
        # Hot path: the sync-flush tail is always the last 4 bytes of flush()'s (short)
        # output, so it is cut there rather than by copying the whole payload again.
        head = deflater.compress(data)
        tail = deflater.flush(zlib.Z_SYNC_FLUSH)
        payload = head + tail[:-_SYNC_TAIL_LEN]
        if self._local_no_takeover and len(payload) >= len(data):
            # Only safe without context takeover: with it, the peer's window must see
            # exactly what ours did.
            return data, 0
        return payload, RSV1
