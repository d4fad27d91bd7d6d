"""One HTTP/1.1 connection on the server: drives the parser, the handlers and the response.

The order for one request is SPEC section 1: headers read → the entry's early
handler; body read → its normal handler; then, if nothing set a status, the
WebSocket handshake; else 500. Pipelined requests wait in the parser until the
response before them is finished, so they are answered in order.

The connection's whole lifecycle is one :class:`ConnState` and the table
``TRANSITIONS`` below; every change goes through ``HTTPConnection._set_state``, which
raises :class:`IllegalTransition` at once for a change the table does not list. What
the connection asks of its server is declared as :class:`ConnectionOwner`; what it
does to a message goes through ``ServerMessage``'s getters and its few setters for
the connection (libsoup's soup-server-message-private.h).

The message's own signals (``got-headers`` … ``disconnected``, see ``ServerMessage``)
are emitted here, in libsoup's order, and only for a message someone connected to
(``msg.observed``): a request nobody watches pays one attribute test per step.
"""

import enum
import logging
import time
from typing import (Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Protocol, Sequence,
                    Tuple)

from .http import (LAST_CHUNK, Encoding, HTTPError, MessageHeaders, RequestParser,
                   UpgradeHead, build_plain_head, build_response_head, chunk, head_end,
                   http_date, quote_path, reason_phrase)
from .message import RequestBody, ServerMessage
from .signals import last_callback

log = logging.getLogger("minisoup")


class ConnState(enum.IntEnum):
    """Where an :class:`HTTPConnection` is in its lifecycle (the table is ``TRANSITIONS``)."""
    HEAD = 1       # reading a request head: request_timeout (a new connection starts here)
    IDLE = 2       # keep-alive, no byte of the next request yet: idle_timeout
    EARLY = 3      # head read: the early handler ran, or paused the message
    BODY = 4       # reading the request body: request_timeout, then MIN_BODY_RATE
    HANDLER = 5    # body read: the normal handler ran, or paused the message
    STREAMING = 6  # response head written; the body follows as the handler appends it
    DRAINING = 7   # response done, over PIPELINE_HIGH_WATER unsent: not reading until sent
    YIELDED = 8    # MAX_REQUESTS_PER_TURN answered in one turn: go on at the next loop turn
    UPGRADED = 9   # take_over() gave the byte stream to another protocol (WebSocket)
    STOLEN = 11    # steal_connection() gave the socket to the application
    CLOSED = 10


(_HEAD, _IDLE, _EARLY, _BODY, _HANDLER, _STREAMING, _DRAINING, _YIELDED, _UPGRADED, _STOLEN,
 _CLOSED) = (
    ConnState.HEAD, ConnState.IDLE, ConnState.EARLY, ConnState.BODY, ConnState.HANDLER,
    ConnState.STREAMING, ConnState.DRAINING, ConnState.YIELDED, ConnState.UPGRADED,
    ConnState.STOLEN, ConnState.CLOSED)

# A response is done: the next state is one of these (CLOSED unless keep-alive).
_AFTER_RESPONSE = (_HEAD, _IDLE, _DRAINING, _CLOSED)

# Every state change the connection may make; anything else is a bug and raises at once.
TRANSITIONS: Dict[ConnState, Tuple[ConnState, ...]] = {
    _HEAD: (_EARLY, _YIELDED, _CLOSED),        # a head parsed (or a parse error answered)
    _IDLE: (_EARLY, _HEAD, _CLOSED),           # the next request came: whole head, or a part
    # HANDLER: no body to read; STOLEN (here and below): steal_connection() while a
    # message is in progress, whatever its stage (as libsoup).
    _EARLY: (_BODY, _HANDLER, _STREAMING, _STOLEN) + _AFTER_RESPONSE,
    _BODY: (_HANDLER, _STOLEN, _CLOSED),       # body read (or a parse error answered)
    _HANDLER: (_STREAMING, _UPGRADED, _STOLEN) + _AFTER_RESPONSE,
    _STREAMING: (_STOLEN,) + _AFTER_RESPONSE,
    _DRAINING: (_HEAD, _IDLE, _CLOSED),        # the peer read enough of the responses
    _YIELDED: (_HEAD, _CLOSED),                # the next loop turn
    _UPGRADED: (_CLOSED,),                     # only if the peer left during the 101
    # Only for the table's rule that every state may close: the transport is detached,
    # so no connection_lost() follows a steal.
    _STOLEN: (_CLOSED,),
    _CLOSED: (),
}
# The same as sets, for _set_state (a frozenset of IntEnums is a C-level lookup).
_ALLOWED: Dict[ConnState, FrozenSet[ConnState]] = {
    state: frozenset(nexts) for state, nexts in TRANSITIONS.items()}
# States whose deadline the periodic sweep enforces (waiting for the peer to send).
_TIMED = frozenset((_HEAD, _IDLE, _BODY))

NO_BODY_STATUSES = frozenset((204, 304))
CONTINUE_LINE = b"HTTP/1.1 100 Continue\r\n\r\n"
SWITCHING_PROTOCOLS = 101
# Back-pressure: with more than this of a response still unsent, the next (pipelined)
# request is not read until the peer has read it. Without it, a client pipelining small
# requests without reading made the server buffer every response (54 KB of GETs → 197 MB).
PIPELINE_HIGH_WATER = 64 * 1024
# Fairness: at most this many requests are answered per read (or per turn after one);
# the rest wait for the next loop iteration, with reading paused. Without it ~9,700
# pipelined GETs in one 256 KiB read were answered in one callback, holding the loop
# (and every other connection of the worker) for 0.7 s.
MAX_REQUESTS_PER_TURN = 32
# A response body up to this size is sent in one buffer with its head (joined).
JOIN_BODY_MAX = 16 * 1024
FIRST_REQUEST_GRACE_S = 1.0  # graceful stop: how long a new connection may take to speak
# A request body must arrive at this average rate (bytes/s) once request_timeout has passed:
# a body trickled a byte at a time within the timeout (R-U-Dead-Yet) cannot hold a worker.
MIN_BODY_RATE = 1024


class IllegalTransition(RuntimeError):
    """An :class:`HTTPConnection` was asked for a state change ``TRANSITIONS`` does not allow."""


class ConnectionOwner(Protocol):
    """What an :class:`HTTPConnection` asks of the server that accepted it.

    ``server`` is handed to handlers as their first argument, and its public limits
    (``request_timeout``, ``idle_timeout``, ``max_header_size``, ``max_body_size``,
    ``server_header``) are read from it. ``Server`` provides one of these for its
    connections; tests provide a fake.
    """

    server: Any = None
    # The server's connected signal callbacks by name, empty while nobody is connected:
    # ``emit`` is only called while it is not, so an unwatched server pays one test.
    signal_handlers: Mapping[str, Any] = {}
    # The server's auth domains: ``authenticate`` is only called while there are some.
    auth_domains: Sequence[Any] = ()
    # The WebSocket upgrade head the server's connections' parsers share
    # (``http.UpgradeHeads``), or None.
    upgrade_heads: Any = None

    def lookup(self, path: str) -> Any:
        """The handler entry for ``path`` (``.path``, ``.early``, ``.normal``,
        ``.websocket``; each handler has ``.callback`` and ``.user_data``), or ``None``."""

    def upgrade(self, conn: "HTTPConnection", msg: ServerMessage, handler: Any) -> bool:
        """Check ``msg`` as a handshake for the WebSocket ``handler``: on success, take the
        stream over (:meth:`HTTPConnection.take_over`) and return True; else set the
        failure response on ``msg`` and return False."""

    def authenticate(self, msg: ServerMessage) -> bool:
        """The headers of ``msg`` are read: check them against the server's auth domains
        (SPEC 10; only called while ``auth_domains`` is not empty). True to go on to the early handler; False if ``msg`` was answered
        (its status set, e.g. 401 with the challenges)."""

    def connection_closed(self, conn: "HTTPConnection") -> None:
        """The connection's transport is closed, or its socket was stolen
        (``ServerMessage.steal_connection``): either way, forget the connection."""

    def access_log(self, msg: ServerMessage, length: int) -> None:
        """Log one answered request (``length`` bytes of body sent)."""

    def emit(self, signal: str, msg: ServerMessage) -> None:
        """Emit one of the server's ``request-*`` signals (only called while
        ``signal_handlers`` is not empty)."""

    def call_soon(self, callback: Callable, *args: Any) -> Any:
        """Run ``callback(*args)`` at the next loop iteration."""

    def client_address(self, remote: Any, headers: Any) -> Any:
        """The client's address for a request from ``remote`` with ``headers``: ``remote``
        itself unless it is a trusted proxy (``Server(trusted_proxies=...)``)."""


class HTTPConnection:
    """The protocol object of one server-side HTTP connection (see ``loop.SocketTransport``).

    ``owner`` is the server's side of the seam (:class:`ConnectionOwner`); ``transport``
    may be set after construction, before the first byte; ``scheme`` is "http" or "https"
    (then the transport is a ``tls.TLSTransport``). ``state`` is a
    :class:`ConnState`.
    """

    __slots__ = ("owner", "server", "transport", "parser", "state", "msg", "request", "entry",
                 "deadline", "keep_alive", "remote", "local", "scheme", "_send_mark",
                 "_body_start", "_body_bytes", "_body_reported", "_held_body", "_unacked",
                 "_ack_pending", "__weakref__")

    def __init__(self, owner: ConnectionOwner, transport: Any, remote: Any, local: Any,
                 scheme: str = "http") -> None:
        self.owner = owner
        self.server = server = owner.server
        self.scheme = scheme  # "https": the transport is a tls.TLSTransport
        self.transport = transport
        # The Content-Length limit is checked after the early handler, which may stream
        # the body instead (RequestBody.set_accumulate(False)).
        # (Hot path: every connection; by position, ~0.05 us less than by keyword.)
        self.parser = RequestParser(server.max_header_size, server.max_body_size, True,
                                    RequestBody, owner.upgrade_heads)
        # (defer_length_check, body_type, shared)
        self.state = _HEAD
        self.msg: Optional[ServerMessage] = None
        self.request = None
        self.entry = None
        self.remote = remote
        self.local = local
        # False once this connection is to close after the current response: the request
        # or the response said so, the peer half-closed, or the server is stopping.
        self.keep_alive = True
        # Until the first byte: idle_timeout would be kind; a silent client is a slowloris
        # client, so the header deadline starts now.
        self.deadline = time.monotonic() + server.request_timeout
        self._send_mark = None  # (bytes queued, since when) while a response waits to be read
        self._body_start = 0.0
        self._body_bytes = 0
        self._body_reported = False  # the body goes to got-chunk as it is read
        self._held_body: Optional[bytes] = None  # read while a got-chunk callback paused
        self._unacked = 0  # streamed chunks written whose wrote-chunk is not emitted yet
        self._ack_pending = False  # an emission of those is scheduled (or awaits the drain)

    def _set_state(self, new: ConnState) -> None:
        # Hot path (three calls per keep-alive GET: IDLE → EARLY → HANDLER → IDLE): one
        # dict and one set lookup, ~0.15 us each.
        if new not in _ALLOWED[self.state]:
            raise IllegalTransition("HTTPConnection: %s -> %s is not a legal transition"
                                    % (self.state.name, new.name))
        self.state = new

    # -- protocol interface -----------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        state = self.state
        if state is _BODY:
            timeout = self.server.request_timeout
            self._body_bytes += len(data)
            self.deadline = min(time.monotonic() + timeout,
                                self._body_start + timeout + self._body_bytes / MIN_BODY_RATE)
        elif state is _IDLE:
            # The first bytes of the next keep-alive request: from now on its head has
            # request_timeout to arrive, not what is left of idle_timeout. (_process moves
            # on to EARLY, or to HEAD if the head is not all there.)
            self.deadline = time.monotonic() + self.server.request_timeout
        self._process()

    def eof_received(self) -> None:
        if self.state in _TIMED:
            # Nothing, or half a request, and then EOF: nothing to answer.
            self.transport.close()
        else:
            # The client half-closed after sending a whole request: answer, then close.
            self.keep_alive = False

    def connection_lost(self, exc: Optional[Exception]) -> None:
        msg = self.msg
        if self.state is not _CLOSED:
            self._set_state(_CLOSED)
        self.owner.connection_closed(self)
        if msg is not None:
            msg.detach()
            self.msg = None
            # libsoup's order: the message's finished, the server's request-aborted,
            # then the message's disconnected.
            observed = msg.observed
            if observed:
                msg.emit("finished")
            if self.owner.signal_handlers:
                self.owner.emit("request-aborted", msg)
            if observed:
                msg.emit("disconnected")

    def write_drained(self) -> None:
        """The transport sent everything queued: read the next request if we waited, or
        tell a streaming handler its chunks went out (``wrote-chunk``)."""
        state = self.state
        if state is _DRAINING:
            self._await_next_request()
            self._process()
        elif state is _STREAMING and self._ack_pending:
            self._ack_chunks(self.msg)

    # -- the handover (libsoup's soup_server_message_steal_connection) -----------------
    def take_over(self, fields: Sequence[Tuple[str, str]] = ()) -> Tuple[Any, bytes]:
        """Write the current message's ``101`` response head and give the stream away.

        ``fields`` are added to the response headers first, as ``replace_unchecked``
        would (the handshake's Upgrade, Connection and Sec-WebSocket-* fields, their
        values checked by the caller). Returns ``(transport, leftover)``: the
        transport, to be given a new protocol (``transport.set_protocol``), and the
        bytes already read past the request (the first frames of a WebSocket). The head
        is flushed before this returns. From then on this connection does nothing; the
        server no longer counts it. If the peer was found gone while the head was
        written, the transport returned is already closed (``transport.is_closing()``)
        and the request was aborted.
        """
        msg = self.msg
        if msg is None or msg.get_status() != SWITCHING_PROTOCOLS:
            raise IllegalTransition("take_over() needs a message answered with 101")
        self._set_state(_UPGRADED)
        # The version only: a 101 gets no Connection field of ours (_response_head's).
        req = self.request
        version = req.version if req is not None else "HTTP/1.1"
        plain = msg.take_plain_head(fields)
        if plain is not None:
            # Hot path (every upgrade): response headers nobody asked for are written
            # from the server's field lines as made once per second, no MessageHeaders
            # (as _respond's plain responses).
            server_fields, content_type = plain
            head = build_plain_head(version, SWITCHING_PROTOCOLS, msg.get_reason_phrase(),
                                    _lines_of(server_fields), content_type, head_end(fields))
        else:
            headers = msg.get_response_headers()
            for name, value in fields:
                headers.replace_unchecked(name, value)
            head = build_response_head(version, SWITCHING_PROTOCOLS, msg.get_reason_phrase(),
                                       headers)
        transport = self.transport
        transport.write(head)
        transport.flush()
        msg.detach()
        self.msg = self.entry = self.request = None
        return transport, self.parser.take_buffer()

    def upgrade_head(self) -> Optional[UpgradeHead]:
        """The head of the current request as the server's shared upgrade head (see
        ``http.UpgradeHeads``; None if it cannot be one): for the server, once the request
        is an upgrade it accepts, and before :meth:`take_over`."""
        req = self.request
        return self.parser.share_head(req) if req is not None else None

    def steal_connection(self, msg: ServerMessage) -> Tuple[Any, bytes]:
        """``ServerMessage.steal_connection``: give the socket to the application.

        Returns ``(socket, leftover)``: the socket, detached from the loop (what was
        queued for it is sent first) and no longer this connection's or the server's,
        and the bytes read past the request. ``(None, b"")`` if ``msg`` is no longer
        this connection's message. The message gets ``disconnected``, as in libsoup.
        """
        if msg is not self.msg:
            return None, b""
        if self.scheme == "https":
            # The TLS state lives in this connection's SSLObject, not in the socket.
            raise NotImplementedError("steal_connection() is not available over TLS")
        self._set_state(_STOLEN)
        leftover = self.parser.take_buffer()
        sock = self.transport.detach()
        msg.detach()
        self.msg = self.entry = self.request = None
        self.owner.connection_closed(self)
        if msg.observed:
            msg.emit("disconnected")
        return sock, leftover

    def get_socket(self) -> Any:
        """``ServerMessage.get_socket``: the connection's socket."""
        return self.transport.get_socket()

    # -- timeouts (checked by the server's periodic sweep, no timer per request) --
    def check_deadline(self, now: float) -> None:
        buffered = self.transport.get_write_buffer_size()
        if buffered:
            # A client that stops reading its response holds a buffer: cut it once no
            # byte has left for idle_timeout (a slow but moving reader is left alone).
            mark = self._send_mark
            if mark is None or buffered < mark[0]:
                self._send_mark = (buffered, now)
            elif now - mark[1] > self.server.idle_timeout:
                log.info("closing connection from %s: response not read for %g s (%d bytes "
                         "queued)", _addr(self.remote), self.server.idle_timeout, buffered)
                self.transport.abort()
                return
            # Still sending: the idle clock starts once the response is out.
            if self.state is _IDLE:
                self.deadline = max(self.deadline, now + self.server.idle_timeout)
            return
        elif self._send_mark is not None:
            self._send_mark = None
        state = self.state
        if state in _TIMED and now > self.deadline:
            if state is _BODY and self.msg is not None and self.msg.is_paused():
                return  # the handler paused the upload: not the client's delay
            if state is _IDLE or (state is _HEAD and not self.parser.has_data):
                log.debug("closing idle connection from %s", _addr(self.remote))
            elif state is _BODY:
                log.info("closing connection from %s: request body stalled or slower than "
                         "%d bytes/s", _addr(self.remote), MIN_BODY_RATE)
            else:
                log.info("closing connection from %s: request not received within %g s",
                         _addr(self.remote), self.server.request_timeout)
            self.transport.abort()

    def close_if_idle(self) -> None:
        """Graceful stop: close now if idle between keep-alive requests, else after the
        response (this is how a connection learns of the stop: every response from now
        on says ``Connection: close``). A connection still waiting for its first request gets
        ``FIRST_REQUEST_GRACE_S`` to send it: it was accepted a moment ago and its request
        is most likely on the wire (closing it now would reset it, e.g. during a SIGHUP)."""
        self.keep_alive = False
        state = self.state
        if state is _IDLE or (state is _DRAINING and not self.parser.has_data):
            self.transport.close()  # after what is still queued
        elif state is _HEAD and not self.parser.has_data:
            self.deadline = min(self.deadline, time.monotonic() + FIRST_REQUEST_GRACE_S)

    # -- the request loop -------------------------------------------------------------
    def _process(self) -> None:
        """Read and answer requests while the parser has them, at most
        ``MAX_REQUESTS_PER_TURN`` per call: the rest wait for the next loop turn."""
        budget = MAX_REQUESTS_PER_TURN
        parser = self.parser
        try:
            while True:
                state = self.state
                if state is _HEAD or state is _IDLE:
                    if not budget:
                        if parser.has_data:
                            self._yield_turn()
                        break
                    req = parser.read_head()
                    if req is None:
                        if state is _IDLE and parser.has_data:
                            self._set_state(_HEAD)  # part of a head: request_timeout's now
                        break
                    budget -= 1
                    self._start_request(req)
                    if self.state is _IDLE:
                        break  # answered, and nothing more was buffered (hot path)
                elif state is _BODY:
                    body = parser.read_body()
                    if self._body_reported and not self._report_body():
                        # Answered, paused, stolen or lost from a got-chunk callback.
                        if body is not None and self.state is _BODY:
                            self._held_body = body  # paused: _resume() goes on with it
                        break
                    if body is None:
                        break
                    self._body_read(body)
                else:
                    break
        except HTTPError as exc:
            self._fail(exc)

    def _yield_turn(self) -> None:
        self._set_state(_YIELDED)
        self.transport.pause_reading()
        self.owner.call_soon(self._next_turn)

    def _next_turn(self) -> None:
        if self.state is _YIELDED:  # else closed meanwhile
            self._set_state(_HEAD)
            self.transport.resume_reading()
            self._process()

    def _start_request(self, req: Any) -> None:
        # Hot path: what a request nobody watches does not need is one test away (the
        # server's signals, auth domains, the message's signals).
        owner = self.owner
        self.request = req
        if not req.keep_alive:
            self.keep_alive = False
        path = req.path
        # The URI as a plain tuple: the message makes its SplitResult if someone asks.
        uri = (self.scheme, req.host or req.host_field or "", path, req.query or "", "")
        remote = owner.client_address(self.remote, req.headers)  # behind a trusted proxy
        msg = ServerMessage(self, req.method, uri, req.version, req.headers, remote,
                            self.local, self.transport.get_peer_certificate()
                            if self.scheme == "https" else None, self._server_fields())
        self.msg = msg
        self._set_state(_EARLY)
        self.transport.pause_reading()
        if owner.signal_handlers:
            owner.emit("request-started", msg)
        entry = self.entry = owner.lookup(path)
        # got-headers: after the early handler, to the callbacks connected before it
        # (libsoup runs it inside that emission). Only if someone watched the message.
        watchers = msg.connected("got-headers") if msg.observed else ()
        # The auth domains first (SPEC 10): a 401 is answered as an early handler's status.
        if ((not owner.auth_domains or owner.authenticate(msg))
                and entry is not None and entry.early is not None):
            self._call(entry.early, msg, path, req.form)
        if watchers:
            msg.emit_to(watchers, "got-headers")
        self._after_early()

    def _after_early(self) -> None:
        msg = self.msg
        if msg is None or msg.is_paused():
            return  # lost meanwhile, or _resume() carries on
        req = self.request
        status = msg.get_status()
        if status:
            # Answered before the body: if one is coming, the stream cannot be reused.
            if req.chunked or req.content_length:
                self.keep_alive = False
            self._respond(status)
            return
        if not (req.chunked or req.content_length or req.expect_continue):
            # No body to wait for (most requests): no BODY state, no deadline, no read.
            self._body_read(self.parser.read_body())
            return
        keep = msg.accumulates_body()
        if keep and self.parser.body_too_large():
            self._fail(HTTPError(413, "Request body larger than %d bytes"
                                 % self.server.max_body_size))
            return
        if not keep or (msg.observed and msg.has_handlers("got-chunk")):
            self.parser.report_body(keep)
            self._body_reported = True
        # The state changes before each write: a write that finds the peer gone closes
        # the connection at once (connection_lost), and CLOSED must then be final.
        self._set_state(_BODY)
        self._body_start = time.monotonic()
        self._body_bytes = 0
        self.deadline = self._body_start + self.server.request_timeout
        if req.expect_continue:
            self.transport.write(CONTINUE_LINE)
        self.transport.resume_reading()

    def _report_body(self) -> bool:
        """Emit ``got-chunk`` for the body bytes parsed since the last call. False if a
        callback answered (then the request is answered now, the rest of the body is
        not read, and the connection closes after the response: how a streaming
        handler enforces its own limit), paused the message (reading stops until
        ``unpause()``), stole the connection, or the peer left."""
        msg = self.msg
        for piece in self.parser.take_body_pieces():
            msg.emit("got-chunk", piece)
            if self.msg is not msg or self.state is not _BODY:
                return False
            if msg.get_status():
                self.keep_alive = False
                self.transport.pause_reading()
                self._body_reported = False
                self._set_state(_HANDLER)
                self._after_handler()
                return False
        if msg.is_paused():
            # Back-pressure from the handler (its sink is slow): read no more until
            # unpause(); what was already parsed has been handed over.
            self.transport.pause_reading()
            return False
        return True

    def _body_read(self, body: bytes) -> None:
        msg = self.msg
        if body:
            msg.set_request_body(body)
        self._body_reported = False
        if self.state is _BODY:
            self.transport.pause_reading()  # else still paused since the head
        self._set_state(_HANDLER)
        if self.owner.signal_handlers:
            self.owner.emit("request-read", msg)
        entry = self.entry
        watchers = msg.connected("got-body") if msg.observed else ()  # as got-headers
        if entry is not None and entry.normal is not None:
            req = self.request
            self._call(entry.normal, msg, req.path, req.form)
        if watchers:
            msg.emit_to(watchers, "got-body")
        self._after_handler()

    def _after_handler(self) -> None:
        msg = self.msg
        if msg is None or msg.is_paused():
            return  # lost meanwhile, or _resume() carries on
        status = msg.get_status()
        if not status:
            entry = self.entry
            if entry is None:
                msg.set_status(404)
            elif entry.websocket is not None:
                if self.owner.upgrade(self, msg, entry.websocket):
                    return
            else:
                log.error("no handler set a status for %s %s (handler at %r forgot to answer)",
                          msg.get_method(), quote_path(msg.get_uri().path), entry.path)
                msg.set_status(500)
            status = msg.get_status()
        self._respond(status)

    def _call(self, handler: Any, msg: ServerMessage, path: str,
              form: Optional[Dict[str, str]]) -> None:
        callback = handler.callback
        last_callback.value = callback
        try:
            # Each handler gets its own dict: one that edits it cannot surprise the next.
            callback(self.server, msg, path, dict(form) if form is not None else None,
                     handler.user_data)
        except Exception:
            log.exception("exception in handler %r for %s %s", callback, msg.get_method(),
                          quote_path(path))
            msg.cleanup_response()
            msg.set_status(500)

    def message_unpaused(self, msg: ServerMessage) -> None:
        """Called by ``ServerMessage.unpause()``: continue on the next loop iteration."""
        self.owner.call_soon(self._resume, msg)

    def _resume(self, msg: ServerMessage) -> None:
        if msg is not self.msg or msg.is_paused():
            return
        state = self.state
        if state is _EARLY:
            self._after_early()
        elif state is _HANDLER:
            self._after_handler()
        elif state is _BODY:
            # A streamed upload paused from got-chunk: read on, and the body's rate is
            # measured from now (the pause was the handler's, not the client's).
            held, self._held_body = self._held_body, None
            if held is not None:
                self._body_read(held)  # it had all arrived
            else:
                self._body_start = time.monotonic()
                self._body_bytes = 0
                self.deadline = self._body_start + self.server.request_timeout
                self.transport.resume_reading()
        else:
            return
        self._process()

    # -- responses ------------------------------------------------------------------
    def _fail(self, exc: HTTPError) -> None:
        """A request we cannot parse: answer ``exc.status`` and close (SPEC 1b)."""
        log.info("bad request from %s: %d %s", _addr(self.remote), exc.status, exc.message)
        self.keep_alive = False
        msg = self.msg
        if msg is None or self.state is _BODY or self.state is _EARLY:
            if msg is None:
                uri = (self.scheme, "", "", "", "")
                msg = ServerMessage(self, "-", uri, "HTTP/1.1", MessageHeaders(), self.remote,
                                    self.local, response_fields=self._server_fields())
                self.msg = msg
            msg.cleanup_response()
            msg.set_status(exc.status)
            msg.set_response("text/plain; charset=utf-8", exc.message + "\n")
            self._respond(exc.status)
        else:
            self.transport.abort()

    def _response_head(self, msg: ServerMessage, headers: MessageHeaders) -> str:
        """Complete a final response's headers (Connection); returns the HTTP version to
        answer with. (The 101 of an upgrade gets no Connection field of ours: take_over.)"""
        req = self.request  # None for an unparsable request: answered as HTTP/1.1
        version = req.version if req is not None else "HTTP/1.1"
        # As libsoup: a response that says "Connection: close" ends the connection (RFC
        # 9112 §9.6: the server MUST then close after it). The failed handshake says it.
        if (not self.keep_alive
                or (headers.get_one("Connection") is not None
                    and headers.header_contains("Connection", "close"))):
            self.keep_alive = False
            _set_trusted(headers, "Connection", "close")
        elif version == "HTTP/1.0":
            _set_trusted(headers, "Connection", "keep-alive")
        return version

    def _server_fields(self) -> MessageHeaders:
        """The fields every response starts with, as libsoup sets them before the
        handlers run: ``Server`` (unless ``server_header`` is None or empty) and
        ``Date``. A handler may replace or remove them."""
        date = http_date()
        server_header = self.server.server_header
        cached = _server_fields
        if cached[0] is not date or cached[1] != server_header:
            # Hot path: one MessageHeaders per second (and server_header), indexed once;
            # each message's response headers start as a copy.
            fields = MessageHeaders(
                (("Server", server_header), ("Date", date)) if server_header
                else (("Date", date),))
            fields.get_one("Date")  # index it now, once
            cached[:] = [date, server_header, fields, fields.field_lines()]
        return cached[2]

    def _respond(self, status: int) -> None:
        """Send the response to ``self.msg``, whose status is ``status``."""
        msg = self.msg
        if status < 200:
            # 1xx is never a final response (the WebSocket 101 is written by take_over);
            # the client would wait for one forever. libsoup sends it, then a 500.
            log.error("a handler set the informational status %d as the response to %s %s; "
                      "answering 500", status, msg.get_method(), quote_path(msg.get_uri().path))
            msg.cleanup_response()
            msg.set_status(500)
            status = 500
        req = self.request
        plain = (msg.take_plain_response() if (self.keep_alive and not msg.observed
                                               and not self.owner.signal_handlers
                                               and status not in NO_BODY_STATUSES
                                               and req is not None
                                               and req.version == "HTTP/1.1")
                 else None)
        if plain is not None:
            # Hot path: response headers nobody asked for are the server's fields and a
            # Content-Type; with nothing to add (keep-alive HTTP/1.1, no one watching) the
            # head is written from their lines as made once per second, no MessageHeaders.
            fields, content_type, data = plain
            self._write_response(build_plain_head(
                "HTTP/1.1", status, msg.get_reason_phrase(), _lines_of(fields), content_type,
                b"Content-Length: %d\r\n\r\n" % len(data)), data, req.method != "HEAD")
            self._finish(len(data))
            return
        headers = msg.get_response_headers()
        body = msg.get_response_body()
        version = self._response_head(msg, headers)
        no_body = status in NO_BODY_STATUSES
        if not no_body and not body.completed and _wants_streaming(headers, len(body)):
            self._start_streaming(msg, version)
            return
        data = b"" if no_body else body.flatten()
        if not no_body:
            headers.set_content_length(len(data))
        head = build_response_head(version, status, msg.get_reason_phrase(), headers)
        with_body = not no_body and (req is None or req.method != "HEAD")
        # The connection's last response, with no signal whose handlers could run between
        # it and the close (_finish): the FIN may go in its last segment (write_last).
        last = not self.keep_alive and not msg.observed and not self.owner.signal_handlers
        self._write_response(head, data, with_body, last)
        if msg.observed:
            self._emit_wrote(msg, with_body and bool(data))
        self._finish(len(data))

    def _write_response(self, head: bytes, data: bytes, with_body: bool,
                        last: bool = False) -> None:
        # ``last``: the transport is closed right after (transport.write_last).
        write = self.transport.write_last if last else self.transport.write
        if not with_body or not data:
            write(head)
        elif len(data) <= JOIN_BODY_MAX:
            # A small body is joined to the head (one send, no list; the copy is cheaper
            # than sendmsg's scatter list); a large one goes with it, uncopied.
            write(head + data)
        else:
            self.transport.writelines([head, data])

    def _emit_wrote(self, msg: ServerMessage, with_body: bool) -> None:
        # A response sent whole: its head and body were handed to the transport at once.
        # wrote-chunk is emitted once for the body, as libsoup does for a whole body.
        for name in ("wrote-headers", "wrote-chunk", "wrote-body"):
            if self.msg is not msg:
                return  # the peer was found gone, or a callback stole the connection
            if with_body or name != "wrote-chunk":
                msg.emit(name)

    def _is_head(self) -> bool:
        req = self.request
        return req is not None and req.method == "HEAD"

    def _start_streaming(self, msg: ServerMessage, version: str) -> None:
        headers = msg.get_response_headers()
        if headers.get_one("Content-Length") is not None:
            encoding = Encoding.CONTENT_LENGTH
        elif version == "HTTP/1.1":
            encoding = Encoding.CHUNKED
        else:
            # An HTTP/1.0 client cannot read chunks: the end of the body is the close.
            encoding = Encoding.EOF
            headers.remove("Transfer-Encoding")
            self.keep_alive = False
            _set_trusted(headers, "Connection", "close")
        head = build_response_head(version, msg.get_status(), msg.get_reason_phrase(), headers)
        self._set_state(_STREAMING)  # before the write, which may find the peer gone
        self._unacked = 0
        self._ack_pending = False
        self.transport.write(head)
        if msg.observed and self.msg is msg:
            msg.emit("wrote-headers")
        is_head = self._is_head()
        chunked = encoding is Encoding.CHUNKED
        sent = [0]

        def sink(data: Optional[bytes]) -> None:
            if self.msg is not msg or self.state is not _STREAMING:
                return
            if data is None:
                if self._unacked:
                    self._ack_all(msg)  # every wrote-chunk before wrote-body
                    if self.msg is not msg or self.state is not _STREAMING:
                        return
                if chunked and not is_head:
                    self.transport.write(LAST_CHUNK)
                if msg.observed and self.msg is msg:
                    msg.emit("wrote-body")
                self._finish(sent[0])
                self._process()
                return
            sent[0] += len(data)
            if not is_head:
                self.transport.write(chunk(data) if chunked else data)
            if msg.observed:
                self._chunk_sent(msg)

        msg.get_response_body().stream_to(sink)

    # -- wrote-chunk for a streamed response: the pacing of a download ---------------------
    # A chunk counts as written once the transport holds nothing more (the kernel took
    # it), checked on the next loop iteration or when the transport drains: never from
    # inside append(), so a callback that appends the next chunk neither recurses nor
    # buffers more than the socket takes.
    def _chunk_sent(self, msg: ServerMessage) -> None:
        self._unacked += 1
        if not self._ack_pending:
            self._ack_pending = True
            if not self.transport.get_write_buffer_size():
                self.owner.call_soon(self._ack_chunks, msg)
            # else write_drained() calls _ack_chunks

    def _ack_chunks(self, msg: Any) -> None:
        if (msg is not self.msg or self.state is not _STREAMING or not self._ack_pending
                or self.transport.get_write_buffer_size()):
            return  # done meanwhile, or still sending: write_drained() comes back
        self._ack_pending = False
        # Only the chunks written so far: those appended by the callbacks wait for their
        # own turn (else a callback appending the next chunk would never stop here).
        for _ in range(self._unacked):
            if self.msg is not msg or self.state is not _STREAMING:
                return
            self._unacked -= 1
            msg.emit("wrote-chunk")

    def _ack_all(self, msg: ServerMessage) -> None:
        self._ack_pending = False
        while self._unacked and self.msg is msg and self.state is _STREAMING:
            self._unacked -= 1
            msg.emit("wrote-chunk")

    def _finish(self, length: int) -> None:
        msg = self.msg
        if msg is None:
            return  # the connection was lost while the response was written
        self.msg = self.entry = self.request = None
        msg.detach()
        if msg.observed:
            msg.emit("finished")
        owner = self.owner
        owner.access_log(msg, length)
        if owner.signal_handlers:
            owner.emit("request-finished", msg)
        if self.state is _CLOSED:
            return
        if not self.keep_alive:
            self._set_state(_CLOSED)
            self.transport.close()
        elif self.transport.get_write_buffer_size() > PIPELINE_HIGH_WATER:
            self._set_state(_DRAINING)  # reading stays paused; write_drained() carries on
        else:
            self._await_next_request()

    def _await_next_request(self) -> None:
        # A pipelined request already begun has request_timeout for its head; else idle.
        if self.parser.has_data:
            self._set_state(_HEAD)
            self.deadline = time.monotonic() + self.server.request_timeout
        else:
            self._set_state(_IDLE)
            self.deadline = time.monotonic() + self.server.idle_timeout
        self.transport.resume_reading()


# (date, server_header, the fields, their lines on the wire): HTTPConnection._server_fields,
# made once per second.
_server_fields: List[Any] = [None, None, None, None]


def _lines_of(fields: Optional[MessageHeaders]) -> bytes:
    """The wire lines of the fields a message's response headers started as (the
    server's: their lines are made with them, once per second)."""
    cached = _server_fields
    return (cached[3] if fields is cached[2]
            else b"" if fields is None else fields.field_lines())


# The server's own Connection values need no injection check (append()'s costs ~0.5 us).
_set_trusted = MessageHeaders.replace_unchecked


def _wants_streaming(headers: Any, body_length: int) -> bool:
    # libsoup's rule: the body is streamed when the handler asked for chunked encoding, or
    # set a Content-Length that the body has not reached yet; otherwise the response goes
    # out whole, with the body as it is.
    if headers.get_encoding() is Encoding.CHUNKED:
        return True
    length = headers.get_content_length()
    return length is not None and length > body_length


def _addr(remote: Any) -> str:
    if not remote:
        return "-"
    return "%s:%s" % (remote[0], remote[1])


__all__ = ["HTTPConnection", "ConnectionOwner", "ConnState", "TRANSITIONS",
           "IllegalTransition", "reason_phrase"]
