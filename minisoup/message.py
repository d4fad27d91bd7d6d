"""``ServerMessage``: one request and its response (libsoup's SoupServerMessage)."""

import logging
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union
from urllib.parse import SplitResult, urljoin

from .http import MessageHeaders, _check_text, checked_value, quote_path, reason_phrase
from .signals import SignalEmitter, last_callback

log = logging.getLogger("minisoup")

__all__ = ["ServerMessage", "ResponseBody", "RequestBody"]


class RequestBody(bytes):
    """The request body (libsoup's SoupMessageBody, request side): a ``bytes`` subclass,
    so code that treats the body as ``bytes`` keeps working.

    In an early handler it is empty; once the body is read, the message's
    ``get_request_body()`` gives one that holds all of it, or nothing if
    accumulation was turned off. :meth:`set_accumulate` ``(False)`` in an early
    handler (or a ``got-headers`` callback) is how a handler streams an upload: the
    body then arrives through the message's ``got-chunk`` signal as it is read, is
    not kept, and ``max_body_size`` does not apply (the handler enforces its own).
    """

    # A flag in the instance's __dict__ only once set_accumulate() was called (bytes
    # subclasses cannot have __slots__): the common body costs no dict.
    _accumulate = True

    def flatten(self) -> bytes:
        """The whole body as plain ``bytes`` (libsoup's ``soup_message_body_flatten``)."""
        return bytes(self)

    def get_accumulate(self) -> bool:
        """Whether the body is kept as it is read (default True)."""
        return self._accumulate

    def set_accumulate(self, accumulate: bool) -> None:
        """Keep the body as it is read (True, the default) or only hand it to ``got-chunk``
        callbacks (False). Only has an effect before the body is read (early handler)."""
        self._accumulate = bool(accumulate)


class ResponseBody:
    """The response body (libsoup's SoupMessageBody): a list of chunks.

    ``append`` adds data; ``complete`` marks the end. As in libsoup, a response is
    *streamed* when the handler asked for it — ``get_response_headers().set_encoding(
    Encoding.CHUNKED)``, or a Content-Length larger than the body so far — and the body
    is not complete when the response starts: what was appended goes out at once, each
    later ``append`` follows (as a chunk, unless a Content-Length was set), and
    ``complete()`` ends it. Otherwise the body is sent whole, as it is.

    A large streamed body paces itself with the message's ``wrote-chunk`` signal:
    append the next piece from its callback, which runs once the previous pieces
    have left minisoup's buffer for the kernel's, so no more than about one piece
    waits in the server whatever the client's speed.
    """

    __slots__ = ("_chunks", "_length", "completed", "_stream")

    def __init__(self) -> None:
        self._chunks: List[bytes] = []
        self._length = 0
        self.completed = False
        self._stream = None  # set by stream_to() while streaming: callable(bytes|None)

    def append(self, data: Union[bytes, str]) -> None:
        """Add ``data`` (``str`` is encoded as UTF-8) to the body."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        if self.completed:
            raise RuntimeError("append() after complete()")
        if not data:
            return
        data = bytes(data)
        if self._stream is not None:
            self._stream(data)
            return
        self._chunks.append(data)
        self._length += len(data)

    def complete(self) -> None:
        """Mark the body as finished (ends a streamed response)."""
        if self.completed:
            return
        self.completed = True
        stream, self._stream = self._stream, None
        if stream is not None:
            stream(None)

    def truncate(self) -> None:
        """Drop everything appended so far (not what was already streamed)."""
        self._chunks = []
        self._length = 0

    def set(self, data: bytes) -> None:
        """Replace the body with ``data`` and mark it complete."""
        self._chunks = [data] if data else []
        self._length = len(data)
        self.completed = True

    def flatten(self) -> bytes:
        """The body so far as one ``bytes``."""
        if len(self._chunks) > 1:
            self._chunks = [b"".join(self._chunks)]
        return self._chunks[0] if self._chunks else b""

    get_data = flatten

    def stream_to(self, sink: Callable[[Optional[bytes]], None]) -> None:
        """For the connection: send the body to ``sink`` from now on (a streamed response).

        What was appended so far goes to ``sink`` at once and is not kept; each later
        :meth:`append` calls ``sink(data)``, and :meth:`complete` calls ``sink(None)``."""
        chunks, self._chunks, self._length = self._chunks, [], 0
        self._stream = sink
        for data in chunks:
            sink(data)

    def __len__(self) -> int:
        return self._length


class ServerMessage(SignalEmitter):
    """A request received by the server and the response being built for it.

    Handlers set the answer with :meth:`set_status` and :meth:`set_response` (or the
    response headers and body). :meth:`pause` keeps the response from being sent
    when the handler returns; :meth:`unpause` sends it later, from a timer or another
    callback. Response header values and reason phrases are checked: CR, LF or NUL
    raise ``ValueError`` (no header injection).

    Signals (``connect(name, callback, *user_data)`` → id, ``disconnect(id)``; the
    callback gets the message, the signal's arguments, then ``user_data``), in the
    order libsoup 3 emits them for one request:

    - ``got-headers``: the head was read (after the early handler ran; as in libsoup,
      where the early handler is part of this emission, a callback connected by the
      early handler is not called for it: connect in the server's ``request-started``);
    - ``got-chunk(data)``: a piece of the request body was read (``bytes``), each as it
      arrives, whether the body is accumulated or not;
    - ``got-body``: the whole body was read (after the normal handler ran; likewise
      not for callbacks the normal handler connects);
    - ``wrote-headers``: the response head was handed to the socket;
    - ``wrote-chunk``: a piece of the response body was sent. For a response sent whole,
      once, right after it was handed to the socket. For a streamed response, once per
      ``append()``, when that data has left minisoup's buffer for the kernel's (never
      from inside ``append()``): appending the next piece from this callback paces a
      download to the client's reading speed;
    - ``wrote-body``: the last of the body was handed to the socket;
    - ``finished``: done with this message (answered, or the connection was lost);
    - ``disconnected``: the connection was lost before the response was finished
      (after ``finished``), or was stolen (:meth:`steal_connection`).
    """

    SIGNALS = ("got-headers", "got-chunk", "got-body", "wrote-headers", "wrote-chunk",
               "wrote-body", "finished", "disconnected")

    __slots__ = ("_method", "_uri", "_version", "_request_headers", "_request_body",
                 "_remote", "_local", "_status", "_reason", "_response_headers",
                 "_response_body", "_paused", "_conn", "_started", "_peer_certificate",
                 "_auth_domain", "_auth_user", "_signals", "_leftover", "observed",
                 "_response_fields", "_content_type", "_sent_length", "_sent_fields",
                 "__weakref__")

    def __init__(self, conn: Any, method: str, uri: Tuple[str, str, str, str, str],
                 version: str, headers: MessageHeaders, remote: Any, local: Any,
                 peer_certificate: Optional[dict] = None,
                 response_fields: Optional[MessageHeaders] = None) -> None:
        # ``uri``: a SplitResult, or the plain tuple of its five fields (the connection's
        # hot path: the SplitResult is made by the first get_uri(), often never).
        # ``response_fields``: what every response starts with (the server's Date and
        # Server fields, as libsoup sets them before the handlers run): the response
        # headers start as a copy of them.
        self._conn = conn
        self._peer_certificate = peer_certificate
        self._method = method
        self._uri = uri
        self._version = version
        self._request_headers = headers
        self._request_body: Optional[RequestBody] = None  # made on first use
        self._remote = remote
        self._local = local
        self._status = 0
        self._reason: Optional[str] = None
        self._response_fields = response_fields
        # Made when first asked for (get_response_headers). Until then the response headers
        # are response_fields and _content_type, all that most handlers set: the connection
        # writes such a response without making them (take_plain_response(), hot path).
        self._response_headers: Optional[MessageHeaders] = None
        self._content_type: Optional[str] = None
        self._sent_length: Optional[int] = None  # the Content-Length sent that way
        self._sent_fields: Sequence[Tuple[str, str]] = ()  # a 101's fields, sent that way
        self._response_body = ResponseBody()
        self._paused = False
        self._started = time.monotonic()
        self._auth_domain: Any = None
        self._auth_user: Optional[str] = None
        self._signals: Optional[Dict[str, list]] = None  # made by the first connect()
        self._leftover = b""
        # True once a signal callback was connected: until then the connection emits
        # nothing (one attribute test per step instead of a call per signal).
        self.observed = False

    # -- signals ----------------------------------------------------------------
    def _handlers_map(self) -> Dict[str, list]:
        if self._signals is None:
            self._signals = {}
            self.observed = True
        return self._signals

    def disconnect(self, handler_id: int) -> None:
        """Disconnect the signal callback with this id (GObject's ``disconnect``)."""
        self.disconnect_signal(handler_id)

    def emit(self, name: str, *args: Any) -> None:
        """Call every callback connected to ``name`` (for the connection; an exception
        in a callback is logged and the others still run)."""
        self.emit_to(self.connected(name), name, *args)

    def connected(self, name: str) -> Tuple:
        """For the connection: the callbacks connected to ``name`` now (a snapshot).

        libsoup runs the early handler as part of the ``got-headers`` emission and the
        normal handler as part of ``got-body``, so a callback those handlers connect is
        not called for that emission (GObject's rule): the connection takes this
        snapshot before the handler and gives it to :meth:`emit_to` after."""
        signals = self._signals
        if not signals:
            return ()
        handlers = signals.get(name)
        return tuple(handlers) if handlers else ()

    def emit_to(self, handlers: Tuple, name: str, *args: Any) -> None:
        """For the connection: emit ``name`` to the callbacks of a :meth:`connected`
        snapshot that are still connected."""
        if not handlers:
            return
        current = self._signals.get(name) if self._signals else None
        for entry in handlers:
            if not current or entry not in current:
                continue  # disconnected by an earlier callback
            callback = entry[1]
            last_callback.value = callback
            try:
                callback(self, *args, *entry[2])
            except Exception:
                log.exception("exception in %r signal handler %r", name, callback)

    def has_handlers(self, name: str) -> bool:
        """True if a callback is connected to the signal ``name``."""
        signals = self._signals
        return bool(signals and signals.get(name))

    # -- the request ------------------------------------------------------------
    def get_method(self) -> str:
        """The request method, e.g. "GET"."""
        return self._method

    def get_uri(self) -> SplitResult:
        """The request URI (``scheme``, ``netloc``, ``path``, ``query``; query "" if none).

        ``path`` is decoded as libsoup hands it over (percent-decoding, dot segments
        removed); ``query`` is the raw query string."""
        uri = self._uri
        if type(uri) is tuple:
            uri = self._uri = SplitResult(*uri)
        return uri

    def get_http_version(self) -> str:
        """"HTTP/1.1" or "HTTP/1.0"."""
        return self._version

    def is_options_ping(self) -> bool:
        """True for ``OPTIONS *`` (a request about the server, not a resource): such a
        request reaches no handler (404, as libsoup 3.2), but server signals see it."""
        return self._method == "OPTIONS" and self._uri[2] == "*"  # (scheme, host, path, ...)

    def get_request_headers(self) -> MessageHeaders:
        """The request's headers."""
        return self._request_headers

    def get_request_body(self) -> RequestBody:
        """The request body, a :class:`RequestBody` (a ``bytes``): empty before it is read
        (in early handlers), then all of it (nothing if accumulation was turned off)."""
        body = self._request_body
        if body is None:
            body = self._request_body = RequestBody()
        return body

    def accumulates_body(self) -> bool:
        """For the connection: whether the request body is to be kept (see
        :meth:`RequestBody.set_accumulate`)."""
        body = self._request_body
        return body is None or body.get_accumulate()

    def get_remote_host(self) -> Optional[str]:
        """The client's IP address as a string."""
        return self._remote[0] if self._remote else None

    def get_remote_address(self) -> Optional[Tuple]:
        """The client's socket address, e.g. ``("127.0.0.1", 51234)``."""
        return self._remote

    def get_local_address(self) -> Optional[Tuple]:
        """The server's socket address for this connection."""
        return self._local

    def get_socket(self) -> Any:
        """The connection's ``socket.socket`` (over TLS, the TCP socket under it); ``None``
        once the message is done with (answered, aborted or stolen)."""
        conn = self._conn
        return conn.get_socket() if conn is not None else None

    def steal_connection(self) -> Any:
        """Take the connection away from the server (libsoup's
        ``soup_server_message_steal_connection``), for a custom upgrade.

        Returns the ``socket.socket``, still non-blocking; from now on it is the
        caller's: the server forgets it, does not close it and sends no response to
        this message (bytes already queued for earlier responses are sent first).
        Bytes the server had read past the request (a client that did not wait for
        the answer) are in :meth:`get_leftover_data`. Emits ``disconnected``; no
        ``finished``, as libsoup. Call it from a handler or a signal callback, or
        while the message is paused. ``None`` if the message has no connection any
        more. Not available over TLS (``NotImplementedError``).
        """
        conn = self._conn
        if conn is None:
            return None
        sock, self._leftover = conn.steal_connection(self)
        return sock

    def get_leftover_data(self) -> bytes:
        """After :meth:`steal_connection`: the bytes the server had already read past the
        request (usually empty); read them before what the stolen socket gives."""
        return self._leftover

    def get_tls_peer_certificate(self) -> Optional[dict]:
        """Over TLS, the client's verified certificate as ``ssl.SSLSocket.getpeercert()``
        gives it; ``None`` without one (or without TLS). See ``Server.set_tls_auth_mode``."""
        return self._peer_certificate

    def get_auth_user(self) -> Optional[str]:
        """The user name an auth domain accepted for this request (``None`` if no domain
        covered it; see ``Server.add_auth_domain``)."""
        return self._auth_user

    def get_auth_domain(self) -> Any:
        """The auth domain that accepted this request, or ``None``."""
        return self._auth_domain

    # -- the response -------------------------------------------------------------
    def set_status(self, status_code: int, reason_phrase: Optional[str] = None) -> None:
        """Set the response status; the reason phrase defaults to the standard one."""
        status_code = int(status_code)
        if not 100 <= status_code <= 999:
            raise ValueError("status code out of range: %d" % status_code)
        self._status = status_code
        self._reason = _check_text("reason phrase", reason_phrase) if reason_phrase else None

    def get_status(self) -> int:
        """The response status (0 while unset)."""
        return self._status

    def get_reason_phrase(self) -> Optional[str]:
        """The response reason phrase (``None`` while no status is set)."""
        if not self._status:
            return None
        return self._reason or reason_phrase(self._status)

    def get_response_headers(self) -> MessageHeaders:
        """The response headers, to modify before the response is sent."""
        headers = self._response_headers
        if headers is None:
            fields = self._response_fields
            headers = MessageHeaders() if fields is None else fields.copy()
            if self._content_type is not None:
                headers.append_unchecked("Content-Type", self._content_type)
            if self._sent_length is not None:
                # Asked for once sent: as they went out (Content-Length last).
                headers.append_unchecked("Content-Length", str(self._sent_length))
            for name, value in self._sent_fields:
                headers.append_unchecked(name, value)  # a 101's, as they went out
            self._response_headers = headers
        return headers

    def get_response_body(self) -> ResponseBody:
        """The response body (append to it; see :class:`ResponseBody` for streaming)."""
        return self._response_body

    def set_response(self, content_type: Optional[str], body: Union[bytes, str, None]) -> None:
        """Set the Content-Type and the whole body (``str`` is encoded as UTF-8).

        With ``content_type`` ``None`` the body is removed, as libsoup does.
        """
        headers = self._response_headers
        if content_type is None:
            if headers is None:
                self._content_type = None
            else:
                headers.remove("Content-Type")
            self._response_body.set(b"")
            return
        if isinstance(body, str):
            body = body.encode("utf-8")
        if headers is None:
            self._content_type = checked_value(content_type)  # as replace() would
        else:
            headers.replace("Content-Type", content_type)
        self._response_body.set(bytes(body or b""))

    def set_redirect(self, status_code: int, redirect_uri: str) -> None:
        """Answer with a redirect status and a ``Location`` header.

        As libsoup, a relative ``redirect_uri`` is resolved against the request's URI
        (``"/x"`` becomes ``http://host/x``); an absolute one is kept as it is.
        """
        _check_text("redirect URI", redirect_uri)  # before urljoin, which drops CR/LF/TAB
        uri = self.get_uri()
        if uri.netloc:
            base = "%s://%s%s" % (uri.scheme or "http", uri.netloc, quote_path(uri.path or "/"))
            redirect_uri = urljoin(base, redirect_uri)
        self.set_status(status_code)
        self.get_response_headers().replace("Location", redirect_uri)

    # -- pausing --------------------------------------------------------------------
    def pause(self) -> None:
        """Do not send the response when the handler returns; wait for :meth:`unpause`."""
        self._paused = True

    def unpause(self) -> None:
        """Send the response (or resume processing) on the next loop iteration."""
        if self._paused:
            self._paused = False
            if self._conn is not None:
                self._conn.message_unpaused(self)

    def is_paused(self) -> bool:
        """True between :meth:`pause` and :meth:`unpause`."""
        return self._paused

    # -- for the connection only (libsoup's soup-server-message-private.h) ----------------
    # What the connection may do to a message, named; handlers do not call these.
    def set_request_body(self, body: RequestBody) -> None:
        """For the connection: the request body has been read (a non-empty one)."""
        self._request_body = body

    def set_auth(self, domain: Any, user: str) -> None:
        """For the server: ``domain`` accepted this request as ``user`` (SPEC 10)."""
        self._auth_domain = domain
        self._auth_user = user

    def cleanup_response(self) -> None:
        """For the connection: forget the response built so far (status, reason, the
        headers set since the message was made, body) and any pause, before the
        connection answers with an error of its own."""
        self._paused = False
        self._status = 0
        self._reason = None
        self._response_headers = None
        self._content_type = None
        self._sent_length = None
        self._sent_fields = ()
        self._response_body.set(b"")

    def take_plain_response(
            self) -> Optional[Tuple[Optional[MessageHeaders], Optional[str], bytes]]:
        """For the connection, about to send the response whole with a Content-Length and
        nothing else added: while the response headers were never asked for, what they are
        and the body, ``(the server's fields, the Content-Type or None, the body)``, and the
        length is noted for headers asked for later; else None (the headers are made)."""
        if self._response_headers is not None:
            return None
        data = self._response_body.flatten()
        self._sent_length = len(data)
        return self._response_fields, self._content_type, data

    def take_plain_head(self, fields: Sequence[Tuple[str, str]]
                        ) -> Optional[Tuple[Optional[MessageHeaders], Optional[str]]]:
        """For the connection, about to send a head with no body that adds ``fields``
        to the response headers (the WebSocket 101): while the response headers were
        never asked for, what they are, ``(the server's fields, the Content-Type or
        None)``, and ``fields`` are noted for headers asked for later; else None (the
        headers are made)."""
        if self._response_headers is not None:
            return None
        self._sent_fields = fields
        return self._response_fields, self._content_type

    def detach(self) -> None:
        """For the connection: it is done with this message (answered, aborted or handed
        over), so a later :meth:`unpause` does nothing."""
        self._conn = None

    def get_start_time(self) -> float:
        """When the request head was read (``time.monotonic()``), for the access log."""
        return self._started

    def __repr__(self) -> str:
        return "<ServerMessage %s %s %d>" % (self._method, self._uri[2], self._status)
