"""``WebsocketConnection``: RFC 6455 §5–7 state, messages, closing handshake, keepalive.

One class serves both ends: the server hands it a loop transport after the 101,
the blocking client (``client.py``) a socket wrapper. It consumes bytes through
``data_received`` and writes frames through ``transport.write``/``writelines``;
timers come from ``clock.call_later``. The frame format itself is ``frames.py``.
"""

import enum
import logging
import secrets
import struct
from typing import Any, Callable, FrozenSet, List, Optional, Sequence, Union
from urllib.parse import SplitResult

from .errors import Error
from .frames import (CloseCode, FrameParser, Opcode, ProtocolError, Utf8Validator,
                     build_close_payload, frame_header, is_valid_close_code,
                     parse_close_payload, apply_mask)
from .signals import SignalEmitter, check_signal, last_callback, new_handler_id

log = logging.getLogger("minisoup")

__all__ = ["WebsocketConnection", "WebsocketState", "WebsocketDataType",
           "WebsocketConnectionType", "WebsocketError", "CloseCode"]

# libsoup's defaults (SPEC section 3).
DEFAULT_MAX_INCOMING_PAYLOAD_SIZE = 128 * 1024
DEFAULT_MAX_TOTAL_MESSAGE_SIZE = 128 * 1024
DEFAULT_CLOSE_TIMEOUT = 5.0
# Payloads up to this size are joined to their header (one small write); larger ones are
# handed to sendmsg() next to the header so a 1 MiB payload is never copied.
JOIN_BELOW = 16 * 1024

_OP_CONT = Opcode.CONTINUATION.value
_OP_TEXT = Opcode.TEXT.value
_OP_BINARY = Opcode.BINARY.value
_OP_CLOSE = Opcode.CLOSE.value
_OP_PING = Opcode.PING.value
_OP_PONG = Opcode.PONG.value


class WebsocketState(enum.IntEnum):
    """libsoup's SoupWebsocketState."""
    OPEN = 1
    CLOSING = 2
    CLOSED = 3


class WebsocketDataType(enum.IntEnum):
    """libsoup's SoupWebsocketDataType (the frame opcodes of data messages)."""
    TEXT = 1
    BINARY = 2


class WebsocketConnectionType(enum.IntEnum):
    """libsoup's SoupWebsocketConnectionType."""
    UNKNOWN = 0
    CLIENT = 1
    SERVER = 2


class WebsocketError(Error):
    """A WebSocket protocol or I/O error; ``code`` is the close code it leads to."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = int(code)
        self.message = message


_OPEN = WebsocketState.OPEN
_CLOSING = WebsocketState.CLOSING
_CLOSED = WebsocketState.CLOSED
_TEXT = WebsocketDataType.TEXT
_BINARY = WebsocketDataType.BINARY
_CLIENT = WebsocketConnectionType.CLIENT
_SERVER = WebsocketConnectionType.SERVER
# The 2-byte header of an unmasked final frame of up to 125 bytes, by opcode and length.
_SMALL_HEADER = struct.Struct("!BB").pack
_SMALL_PAYLOAD = 126
_FIN = 0x80
_NORMAL = CloseCode.NORMAL
_NO_STATUS = CloseCode.NO_STATUS
# A server's whole close frame for a code with no reason (the answer to a peer's close),
# built once per code: a dict lookup instead of the payload, the header and a join.
_SERVER_CLOSE_FRAMES = {member.value: frame_header(_OP_CLOSE, 2) + build_close_payload(member)
                        for member in CloseCode if is_valid_close_code(member.value)}


class WebsocketConnection(SignalEmitter):
    """An open WebSocket (libsoup's SoupWebsocketConnection).

    Signals (callback gets the connection, the arguments, then user data):
    ``message(type, data)`` — ``data`` is ``str`` for TEXT, ``bytes`` for BINARY;
    ``pong(data)``; ``closing()``; ``closed()`` (exactly once, however it ended);
    ``error(exc)`` with a :class:`WebsocketError`. An exception raised by a signal
    callback is logged and the connection is closed with 1011.

    Built by the server after the 101 (``remote`` is the peer's address, for
    :meth:`get_remote_address` and the logs) or by the blocking client. ``uri`` may be
    a ``SplitResult`` or the plain tuple of its five fields (the server's hot path: the
    ``SplitResult`` is then made by the first :meth:`get_uri`).
    """

    SIGNALS = ("message", "pong", "closing", "closed", "error")
    __slots__ = ("transport", "_type", "_clock", "_uri", "_origin", "_protocol",
                 "_extensions", "_parser", "_state", "_close_code", "_close_data",
                 "_sent_close", "_received_close", "_msg_type", "_msg_parts", "_msg_size",
                 "_msg_ext", "_utf8", "_max_total", "_keepalive_interval",
                 "_keepalive_pong_timeout", "_keepalive_timer", "_pong_timer", "_close_timer",
                 "_close_timeout", "_write_buffer_limit", "_on_closed", "_signals",
                 "_discarding", "_remote", "_max_payload", "_pubsub", "__weakref__")

    def __init__(self, transport: Any, connection_type: WebsocketConnectionType, clock: Any,
                 uri: Any = None, origin: Optional[str] = None, protocol: Optional[str] = None,
                 extensions: Optional[List[Any]] = None,
                 close_timeout: float = DEFAULT_CLOSE_TIMEOUT, write_buffer_limit: int = 0,
                 on_closed: Optional[Callable[["WebsocketConnection"], None]] = None,
                 remote: Any = None) -> None:
        self.transport = transport
        # A member as is (the enum call costs ~0.18 us per connection); an int converted.
        self._type = (connection_type if connection_type.__class__ is WebsocketConnectionType
                      else WebsocketConnectionType(connection_type))
        self._clock = clock
        self._uri = uri
        self._origin = origin
        self._protocol = protocol
        # The limit lives here too: the parser is dropped on close and replaced on failure,
        # and the getter must keep answering.
        self._max_payload = DEFAULT_MAX_INCOMING_PAYLOAD_SIZE
        self._parser = parser = FrameParser(self._type is _SERVER,
                                            DEFAULT_MAX_INCOMING_PAYLOAD_SIZE)
        if extensions:
            self._extensions = tuple(extensions)
            rsv = 0
            for ext in self._extensions:
                rsv |= ext.rsv_bits
            parser.allowed_rsv = rsv
        else:
            self._extensions = ()  # shared; the parser allows no RSV bit
        self._state = _OPEN
        self._close_code = 0
        self._close_data: Optional[str] = None
        self._sent_close = False
        self._received_close = False
        self._msg_type = 0
        self._msg_parts: Optional[bytearray] = None
        self._msg_size = 0
        self._msg_ext = None
        self._utf8: Optional[Utf8Validator] = None
        self._max_total = DEFAULT_MAX_TOTAL_MESSAGE_SIZE
        self._keepalive_interval = 0
        self._keepalive_pong_timeout = 0
        self._keepalive_timer = None
        self._pong_timer = None
        self._close_timer = None
        self._close_timeout = close_timeout
        self._write_buffer_limit = write_buffer_limit
        self._on_closed = on_closed
        self._signals: Optional[tuple] = None  # see connect()
        self._discarding = False
        self._remote = remote  # the peer's address, for get_remote_address() and the logs
        self._pubsub = None  # the server's pubsub.PubSub (attach_pubsub), server side only

    # -- signals ----------------------------------------------------------------------------
    # SignalEmitter's API, with the handlers kept compactly: one tuple of
    # ``(name, handler_id, callback, user_data)`` entries (None without any), replaced on
    # each change, never mutated. SignalEmitter's dict of lists held ~340 bytes for the one
    # "message" handler of an idle connection (dict, list, entry tuple); this holds ~130.
    # Immutability also lets emit() iterate without copying, with the same semantics:
    # a handler connected or disconnected during an emission takes effect at the next one.
    def connect(self, name: str, callback: Callable[..., Any], *user_data: Any) -> int:
        """Call ``callback(self, *args, *user_data)`` on each emission of ``name``;
        returns an id for :meth:`disconnect_signal`."""
        check_signal(self, name, callback)
        handler_id = new_handler_id()
        self._signals = (self._signals or ()) + ((name, handler_id, callback, user_data),)
        return handler_id

    def disconnect_signal(self, handler_id: int) -> None:
        """Remove the callback with this id (``KeyError`` if there is none)."""
        entries = self._signals or ()
        kept = tuple(entry for entry in entries if entry[1] != handler_id)
        if len(kept) == len(entries):
            raise KeyError("no signal handler with id %r" % handler_id)
        self._signals = kept or None

    def emit(self, name: str, *args: Any) -> None:
        """Call every callback connected to ``name``, in the order they were connected."""
        # Hot path (every message): a scan of a tuple of a few entries.
        entries = self._signals
        if entries is None:
            return
        for entry_name, _id, callback, user_data in entries:
            if entry_name != name:
                continue
            last_callback.value = callback
            try:
                callback(self, *args, *user_data)
            except Exception as exc:
                log.exception("exception in %r signal handler %r", name, callback)
                self._signal_callback_failed(name, exc)

    # -- properties ---------------------------------------------------------------------
    def get_state(self) -> WebsocketState:
        """OPEN, CLOSING or CLOSED."""
        return self._state

    def get_close_code(self) -> int:
        """The close code the peer sent (or ours on a failure, 1006 if none); 0 while open."""
        return self._close_code

    def get_close_data(self) -> Optional[str]:
        """The close reason that goes with :meth:`get_close_code`; ``None`` while open."""
        return self._close_data

    def get_protocol(self) -> Optional[str]:
        """The negotiated subprotocol, or ``None``."""
        return self._protocol

    def get_origin(self) -> Optional[str]:
        """The Origin of the handshake request, or ``None``."""
        return self._origin

    def get_uri(self) -> Any:
        """The URI of the handshake request."""
        uri = self._uri
        if uri.__class__ is tuple:
            uri = self._uri = SplitResult(*uri)
        return uri

    def get_extensions(self) -> List[Any]:
        """The active extension objects (e.g. a ``WebsocketExtensionDeflate``)."""
        return list(self._extensions)

    def get_connection_type(self) -> WebsocketConnectionType:
        """SERVER or CLIENT."""
        return self._type

    def get_remote_address(self) -> Any:
        """The peer's socket address."""
        return self._remote

    def get_buffered_amount(self) -> int:
        """Bytes queued for sending and not yet taken by the kernel (slow down above a level)."""
        return self.transport.get_write_buffer_size() if self._state != _CLOSED else 0

    def get_max_incoming_payload_size(self) -> int:
        """Largest accepted frame payload in bytes (default 131072; 0 = no limit)."""
        return self._max_payload

    def set_max_incoming_payload_size(self, size: int) -> None:
        """Set the frame payload limit in bytes (0 = no limit); bigger frames close with 1009."""
        self._max_payload = max(0, int(size))
        if self._parser is not None:
            self._parser.max_payload_size = self._max_payload

    def get_max_total_message_size(self) -> int:
        """Largest reassembled/decompressed message in bytes (default 131072; 0 = no limit)."""
        return self._max_total

    def set_max_total_message_size(self, size: int) -> None:
        """Set the message size limit in bytes (0 = no limit); bigger messages close with 1009."""
        self._max_total = max(0, int(size))

    def get_keepalive_interval(self) -> float:
        """Seconds between pings sent by this end (0 = none, the default)."""
        return self._keepalive_interval

    def set_keepalive_interval(self, interval: float) -> None:
        """Send a ping every ``interval`` seconds (0 disables)."""
        self._keepalive_interval = max(0, interval)
        if self._keepalive_timer is not None:
            self._keepalive_timer.cancel()
            self._keepalive_timer = None
        if self._keepalive_interval and self._state == _OPEN:
            self._keepalive_timer = self._clock.call_later(self._keepalive_interval,
                                                           self._on_keepalive)

    def get_keepalive_pong_timeout(self) -> float:
        """Seconds to wait for a pong to a keepalive ping before closing with 1008 (0 = never)."""
        return self._keepalive_pong_timeout

    def set_keepalive_pong_timeout(self, timeout: float) -> None:
        """Set the pong timeout in seconds (0 = never)."""
        self._keepalive_pong_timeout = max(0, timeout)

    # -- sending ------------------------------------------------------------------------------
    def send_text(self, text: str) -> None:
        """Queue a TEXT message."""
        self.send_message(WebsocketDataType.TEXT, text)

    def send_binary(self, data: Union[bytes, bytearray, memoryview]) -> None:
        """Queue a BINARY message."""
        self.send_message(WebsocketDataType.BINARY, data)

    def send_message(self, type: WebsocketDataType, data: Union[str, bytes]) -> None:
        """Queue one message of ``type``; never blocks. Ignored (with a warning) unless OPEN."""
        if self._state is not _OPEN:
            log.warning("WebSocket send ignored: connection is %s", self._state.name)
            return
        if data.__class__ is str:
            data = data.encode("utf-8")
        elif isinstance(data, str):
            data = str(data).encode("utf-8")
        elif type == _OP_TEXT:
            data = bytes(data)
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError("send_message(TEXT, ...) with bytes that are not UTF-8")
        if self._extensions:
            rsv = 0
            for ext in self._extensions:
                data, ext_rsv = ext.encode(data)
                rsv |= ext_rsv
            self._send_frame(int(type), data, rsv)
            return
        opcode = int(type)
        length = len(data)
        if length < _SMALL_PAYLOAD and self._type is _SERVER and opcode in (_OP_TEXT, _OP_BINARY):
            # Hot path (the 64-byte echo): a small server frame, its header packed here.
            transport = self.transport
            limit = self._write_buffer_limit
            if (limit and transport.get_write_buffer_size() > limit
                    and self._write_limit_exceeded()):
                return
            transport.write(_SMALL_HEADER(_FIN | opcode, length) + data)
            return
        self._send_frame(opcode, data, 0)

    def ping(self, data: bytes = b"") -> None:
        """Send a ping (payload at most 125 bytes); the answer is the ``pong`` signal."""
        if self._state == _OPEN:
            self._send_frame(_OP_PING, bytes(data)[:125], 0)

    def _send_frame(self, opcode: int, payload: Any, rsv: int) -> None:
        # Hot path: one header, no copy of large payloads, one write call.
        if self._type is _CLIENT:
            key = secrets.token_bytes(4)
            header = frame_header(opcode, len(payload), True, rsv, key)
            payload = apply_mask(payload, key)
        else:
            header = frame_header(opcode, len(payload), True, rsv)
        transport = self.transport
        if opcode != _OP_CLOSE and self._write_limit_exceeded():
            return
        if len(payload) < JOIN_BELOW:
            transport.write(header + payload)
        else:
            transport.writelines([header, payload])

    def _write_limit_exceeded(self) -> bool:
        # Checked before queueing: a message bigger than the limit still goes out to a peer
        # that reads, while one that does not is cut at the next message (memory stays under
        # the limit plus one message). True: the connection has been failed with 1008.
        limit = self._write_buffer_limit
        if not limit or self.transport.get_write_buffer_size() <= limit:
            return False
        log.warning("WebSocket peer %s is not reading: %d bytes queued (write_buffer_limit "
                    "%d); closing with 1008", self._remote, self.transport.get_write_buffer_size(),
                    limit)
        self._fail(CloseCode.POLICY_VIOLATION, "write buffer limit exceeded")
        return True

    # -- publish/subscribe (SPEC 9; the registry is the server's pubsub.PubSub) ---------------
    def attach_pubsub(self, pubsub: Any) -> None:
        """Server hook, at the upgrade: the ``pubsub.PubSub`` that :meth:`subscribe` uses."""
        self._pubsub = pubsub

    def subscribe(self, topic: str) -> None:
        """Receive every message ``server.publish``-ed on ``topic`` (in any worker) until
        :meth:`unsubscribe` or the close. Server-side connections only (``RuntimeError``
        otherwise); a closed connection is ignored."""
        if self._pubsub is None:
            raise RuntimeError("subscribe() is for server-side WebSocket connections")
        self._pubsub.subscribe(self, topic)

    def unsubscribe(self, topic: str) -> None:
        """Stop receiving ``topic`` (no-op if not subscribed)."""
        if self._pubsub is not None:
            self._pubsub.unsubscribe(self, topic)

    def get_topics(self) -> FrozenSet[str]:
        """The topics this connection is subscribed to (empty once closed)."""
        return self._pubsub.topics_of(self) if self._pubsub is not None else frozenset()

    def send_broadcast(self, type: int, payload: bytes, frame: Sequence[bytes]) -> None:
        """Queue one message that many connections receive (a publication).

        ``payload`` is the message (UTF-8 for TEXT, already checked); ``frame`` the
        same message framed once for all (``frames.frame_header`` + payload, as one
        buffer or, for a big payload, ``(header, payload)``). A server-side connection
        without extensions sends ``frame`` as is: no framing per subscriber. Others
        (permessage-deflate) encode ``payload`` themselves. Silently ignored unless OPEN:
        a subscriber that is closing is not an error.
        """
        if self._state != _OPEN:
            return
        if self._extensions or self._type != WebsocketConnectionType.SERVER:
            rsv = 0
            for ext in self._extensions:
                payload, ext_rsv = ext.encode(payload)
                rsv |= ext_rsv
            self._send_frame(int(type), payload, rsv)
        elif not self._write_limit_exceeded():
            if len(frame) == 1:
                self.transport.write(frame[0])
            else:
                self.transport.writelines(frame)

    # -- receiving ------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        """Feed bytes read from the peer (the transport calls this)."""
        parser = self._parser
        if self._discarding or parser is None:
            return
        parser.feed(data)
        self._process(parser)

    def get_buffer(self) -> Optional[memoryview]:
        """Where the transport may receive the next bytes directly (the rest of a big
        frame's payload), or None for a normal read and :meth:`data_received`."""
        parser = self._parser
        # Called before every read: one attribute test in the common case.
        if parser is None or not parser.collecting or self._discarding:
            return None
        return parser.recv_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were received into the view :meth:`get_buffer` returned."""
        parser = self._parser
        parser.recv_done(nbytes)
        self._process(parser)

    def _process(self, parser: FrameParser) -> None:
        next_frame = parser.next_frame
        handle = self._handle_frame
        try:
            while not self._discarding:
                frame = next_frame()
                if frame is None:
                    break
                handle(*frame)
        except ProtocolError as exc:
            self._fail(exc.close_code, exc.reason)

    def _handle_frame(self, opcode: int, fin: bool, rsv: int, payload: bytes) -> None:
        if opcode >= _OP_CLOSE:
            self._handle_control(opcode, payload)
            return
        if self._sent_close:
            return  # after our close frame, data is read and dropped (RFC 6455 §5.5.1)
        if opcode == _OP_CONT:
            if not self._msg_type:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "continuation frame without a start")
            if rsv:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "RSV bit set on a continuation frame")
        else:
            if self._msg_type:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR,
                                    "new data frame inside a fragmented message")
            if fin and not rsv:
                self._deliver_whole(opcode, payload)
                return
            self._msg_type = opcode
            # One growing buffer, not a list of fragments: a peer sending a message as
            # 1-byte (or empty) fragments must not pin ~50 bytes of objects per fragment.
            self._msg_parts = bytearray()
            self._msg_size = 0
            self._msg_ext = None
            if rsv:
                for ext in self._extensions:
                    if ext.decode_start(rsv):
                        self._msg_ext = ext
                        break
                else:
                    raise ProtocolError(CloseCode.PROTOCOL_ERROR, "RSV bits set without extension")
        ext = self._msg_ext
        if ext is not None:
            payload = ext.decode(payload, fin, self._max_total)
        self._msg_size += len(payload)
        if self._max_total and self._msg_size > self._max_total:
            raise ProtocolError(CloseCode.TOO_BIG, "message larger than %d bytes" % self._max_total)
        if self._msg_type == _OP_TEXT:
            if self._utf8 is None:
                self._utf8 = Utf8Validator()
            self._utf8.feed(payload, fin)
        else:
            self._msg_parts += payload
        if fin:
            msg_type = self._msg_type
            if msg_type == _OP_TEXT:
                data = self._utf8.result()
            else:
                data = bytes(self._msg_parts)
            self._msg_type = 0
            self._msg_parts = None
            self._msg_ext = None
            self.emit("message", WebsocketDataType(msg_type), data)

    def _deliver_whole(self, opcode: int, payload: bytes) -> None:
        # Fast path: an unfragmented, untransformed message (nearly all traffic).
        max_total = self._max_total
        if max_total and len(payload) > max_total:
            raise ProtocolError(CloseCode.TOO_BIG, "message larger than %d bytes" % max_total)
        if opcode == _OP_TEXT:
            try:
                data = payload.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ProtocolError(CloseCode.BAD_DATA, "invalid UTF-8 in text message: %s" % exc)
            self.emit("message", _TEXT, data)
        else:
            self.emit("message", _BINARY, payload)  # the parser hands out bytes

    def _handle_control(self, opcode: int, payload: bytes) -> None:
        if opcode == _OP_PING:
            if not self._sent_close:
                self._send_frame(_OP_PONG, payload, 0)
        elif opcode == _OP_PONG:
            if self._pong_timer is not None:
                self._pong_timer.cancel()
                self._pong_timer = None
            self.emit("pong", bytes(payload))
        else:
            code, reason = parse_close_payload(payload)
            self._received_close = True
            self._close_code = code
            self._close_data = reason
            if not self._sent_close:
                self._set_closing()
                # The peer's code is echoed; an empty close is answered with 1000, as libsoup
                # does (get_close_code() still reports 1005, "no status", as libsoup).
                self._write_close(code if code != _NO_STATUS else _NORMAL, "")
            self._closing_handshake_done()

    # -- closing ----------------------------------------------------------------------------------
    def close(self, code: int = CloseCode.NORMAL, data: Optional[str] = None) -> None:
        """Start the closing handshake with ``code`` and optional reason ``data``.

        The TCP connection is closed when the peer answers with its close frame, or
        after the server's ``close_timeout``. A code of 0 or 1005 sends no code.
        Messages sent before go out before the close frame: a stopping server calls
        ``close(CloseCode.GOING_AWAY, ...)`` and the peer still gets what was queued.
        """
        if self._state != _OPEN or self._sent_close:
            return
        if code not in (0, CloseCode.NO_STATUS) and not is_valid_close_code(code):
            raise ValueError("invalid close code %r" % code)
        self._close_code = code or CloseCode.NO_STATUS
        self._close_data = data or ""
        self._set_closing()
        self._write_close(code, data or "")
        self._arm_close_timer()

    def _set_closing(self) -> None:
        if self._state is _OPEN:
            self._state = _CLOSING
            self._cancel_keepalive()
            if self._signals is not None:  # else nobody is connected (no call: hot path)
                self.emit("closing")

    def _write_close(self, code: int, reason: str) -> None:
        if self._sent_close:
            return
        self._sent_close = True
        if not reason and self._type is _SERVER:
            frame = _SERVER_CLOSE_FRAMES.get(code)
            if frame is not None:  # hot path: the answer to a peer's close
                self.transport.write(frame)
                return
        payload = build_close_payload(code, reason) if code else b""
        self._send_frame(_OP_CLOSE, payload, 0)

    def _arm_close_timer(self) -> None:
        if self._close_timer is None and self._close_timeout:
            self._close_timer = self._clock.call_later(self._close_timeout, self._on_close_timeout)

    def _on_close_timeout(self) -> None:
        self._close_timer = None
        if self._state != _CLOSED:
            log.info("WebSocket closing handshake with %s timed out after %g s",
                     self._remote, self._close_timeout)
            self.transport.abort()

    def _closing_handshake_done(self) -> None:
        if self._type is _SERVER:
            # RFC 6455 §7.1.1: the server closes the TCP connection first.
            self.transport.close()
        else:
            self._arm_close_timer()

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 §7.1.7) with a lingering close."""
        if self._state == _CLOSED:
            return
        log.info("WebSocket %s failed: %d %s", self._remote, code, reason)
        self.emit("error", WebsocketError(code, reason))
        if not self._sent_close:
            self._close_code, self._close_data = code, reason
        self._set_closing()
        self._write_close(code, reason)
        self._discarding = True
        self._msg_parts = None
        self._parser = FrameParser(require_mask=False)  # drops what was buffered
        self.transport.shutdown_write()
        self.transport.resume_reading()
        self._arm_close_timer()

    def _signal_callback_failed(self, name: str, exc: Exception) -> None:
        if self._state == _OPEN:
            self.close(CloseCode.SERVER_ERROR, "handler error")

    # -- keepalive ------------------------------------------------------------------------------
    def _on_keepalive(self) -> None:
        self._keepalive_timer = None
        if self._state != _OPEN:
            return
        self._send_frame(_OP_PING, b"", 0)
        if self._keepalive_pong_timeout and self._pong_timer is None:
            self._pong_timer = self._clock.call_later(self._keepalive_pong_timeout,
                                                      self._on_pong_timeout)
        self._keepalive_timer = self._clock.call_later(self._keepalive_interval,
                                                       self._on_keepalive)

    def _on_pong_timeout(self) -> None:
        self._pong_timer = None
        if self._state == _OPEN:
            self._fail(CloseCode.POLICY_VIOLATION, "no pong within %g s" % self._keepalive_pong_timeout)

    def _cancel_keepalive(self) -> None:
        timer = self._keepalive_timer
        if timer is not None:
            timer.cancel()
            self._keepalive_timer = None
        timer = self._pong_timer
        if timer is not None:
            timer.cancel()
            self._pong_timer = None

    # -- transport callbacks ------------------------------------------------------------------
    def eof_received(self) -> None:
        """Transport callback: the peer sent FIN."""
        if self._received_close or self._discarding:
            self.transport.close()
        else:
            self.transport.abort()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        """Transport callback: the TCP connection is gone; emits ``closed`` (once)."""
        if self._state is _CLOSED:
            return
        if not self._received_close and not self._discarding:
            # The peer vanished (or never answered our close): no close code was received.
            if exc is not None:
                self.emit("error", WebsocketError(CloseCode.ABNORMAL, str(exc)))
            self._close_code, self._close_data = CloseCode.ABNORMAL, ""
        # 'closing' first if it was not emitted yet. Leaving OPEN cancelled the keepalive
        # timers, and none is armed once the state is not OPEN: nothing more to cancel.
        if self._state is _OPEN:
            self._set_closing()
        self._state = _CLOSED
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self._parser = None
        if self._pubsub is not None:  # unsubscribed before "closed" handlers run
            self._pubsub.connection_closed(self)
        if self._signals is not None:  # else nobody is connected (no call: hot path)
            self.emit("closed")
        if self._on_closed is not None:
            self._on_closed(self)
            self._on_closed = None
        self._signals = None

    def __repr__(self) -> str:
        return "<WebsocketConnection %s %s %s>" % (self._type.name, self._state.name,
                                                   getattr(self.get_uri(), "path", ""))
