"""One HTTP/1.1 connection on the server: drives the parser, the handlers and the response.

The order for one request is SPEC section 1: headers read → the entry's early
handler; body read → its normal handler; then, if nothing set a status, the
WebSocket handshake; else 500. Pipelined requests wait in the parser until the
response before them is finished, so they are answered in order.
"""

import logging
import time
from typing import Any, Dict, Optional
from urllib.parse import SplitResult

from .http import (LAST_CHUNK, Encoding, HTTPError, RequestParser, build_response_head, chunk,
                   http_date, quote_path, reason_phrase)
from .message import ServerMessage
from .signals import last_callback

log = logging.getLogger("minisoup")

# Connection states.
HEAD, BODY, HANDLING, STREAMING, CLOSED = range(5)
# Where a paused message resumes.
AFTER_EARLY, AFTER_HANDLER = 1, 2
NO_BODY_STATUSES = frozenset((204, 304))
CONTINUE_LINE = b"HTTP/1.1 100 Continue\r\n\r\n"
# Back-pressure: with more than this of a response still unsent, the next (pipelined)
# request is not read until the peer has read it. Without it, a client pipelining small
# requests without reading made the server buffer every response (54 KB of GETs → 197 MB).
PIPELINE_HIGH_WATER = 64 * 1024
FIRST_REQUEST_GRACE_S = 1.0  # graceful stop: how long a new connection may take to speak
# A request body must arrive at this average rate (bytes/s) once request_timeout has passed:
# a body trickled a byte at a time within the timeout (R-U-Dead-Yet) cannot hold a worker.
MIN_BODY_RATE = 1024


class HTTPConnection:
    """The protocol object of one server-side HTTP connection (see ``loop.SocketTransport``)."""

    __slots__ = ("server", "transport", "parser", "state", "msg", "request", "entry",
                 "phase", "deadline", "keep_alive", "remote", "local", "_processing",
                 "_must_close", "_idle", "_draining", "_send_mark", "_body_start",
                 "_body_bytes", "scheme", "__weakref__")

    def __init__(self, server: Any, transport: Any, remote: Any, local: Any,
                 scheme: str = "http") -> None:
        self.server = server
        self.scheme = scheme  # "https": the transport is a tls.TLSTransport
        self.transport = transport
        self.parser = RequestParser(server.max_header_size, server.max_body_size)
        self.state = HEAD
        self.msg = None  # type: Optional[ServerMessage]
        self.request = None
        self.entry = None
        self.phase = 0
        self.remote = remote
        self.local = local
        self.keep_alive = True
        self._processing = False
        self._must_close = False
        # Until the first byte: idle_timeout would be kind; a silent client is a slowloris
        # client, so the header deadline starts now.
        self.deadline = time.monotonic() + server.request_timeout
        self._idle = False  # True between keep-alive requests: the deadline is idle_timeout's
        self._send_mark = None  # (bytes queued, since when) while a response waits to be read
        self._body_start = 0.0
        self._body_bytes = 0
        self._draining = False  # waiting for the peer to read a response (back-pressure)

    # -- protocol interface -----------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        if self.state == BODY:
            timeout = self.server.request_timeout
            self._body_bytes += len(data)
            self.deadline = min(time.monotonic() + timeout,
                                self._body_start + timeout + self._body_bytes / MIN_BODY_RATE)
        elif self._idle:
            # The first byte of the next keep-alive request: from now on its head has
            # request_timeout to arrive, not what is left of idle_timeout.
            self._idle = False
            self.deadline = time.monotonic() + self.server.request_timeout
        self._process()

    def eof_received(self) -> None:
        if self.state in (HEAD, BODY) and not self.parser.has_data and self.msg is None:
            self.transport.close()
        elif self.state in (HEAD, BODY):
            # Half a request and then EOF: nothing to answer.
            self.transport.close()
        else:
            # The client half-closed after sending a whole request: answer, then close.
            self._must_close = True

    def connection_lost(self, exc: Optional[Exception]) -> None:
        msg = self.msg
        self.state = CLOSED
        self.server._connection_closed(self)
        if msg is not None:
            msg._conn = None
            self.msg = None
            self.server.emit("request-aborted", msg)

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
            # Still sending: the idle and header clocks start once the response is out.
            if self._idle:
                self.deadline = max(self.deadline, now + self.server.idle_timeout)
            return
        elif self._send_mark is not None:
            self._send_mark = None
        if self.state in (HEAD, BODY) and now > self.deadline and not self._draining:
            if self.msg is None and not self.parser.has_data:
                log.debug("closing idle connection from %s", _addr(self.remote))
            elif self.state == BODY:
                log.info("closing connection from %s: request body stalled or slower than "
                         "%d bytes/s", _addr(self.remote), MIN_BODY_RATE)
            else:
                log.info("closing connection from %s: request not received within %g s",
                         _addr(self.remote), self.server.request_timeout)
            self.transport.abort()

    def close_if_idle(self) -> None:
        """Graceful stop: close now if idle between keep-alive requests, else after the
        response. A connection still waiting for its first request gets
        ``FIRST_REQUEST_GRACE_S`` to send it: it was accepted a moment ago and its request
        is most likely on the wire (closing it now would reset it, e.g. during a SIGHUP)."""
        self._must_close = True
        if self.state == HEAD and self.msg is None and not self.parser.has_data:
            if self._idle:
                self.transport.close()
            else:
                self.deadline = min(self.deadline, time.monotonic() + FIRST_REQUEST_GRACE_S)

    # -- the request loop -------------------------------------------------------------
    def _process(self) -> None:
        if self._processing:
            return
        self._processing = True
        try:
            while self.state in (HEAD, BODY) and not self._draining:
                if self.state == HEAD:
                    req = self.parser.read_head()
                    if req is None:
                        break
                    self._start_request(req)
                else:
                    body = self.parser.read_body()
                    if body is None:
                        break
                    self._body_read(body)
        except HTTPError as exc:
            self._fail(exc)
        finally:
            self._processing = False

    def _start_request(self, req: Any) -> None:
        server = self.server
        self.request = req
        self.keep_alive = req.keep_alive
        path, query = req.path, req.query
        host = req.host or req.headers.get_one("Host") or ""
        uri = SplitResult(self.scheme, host, path, query or "", "")
        msg = ServerMessage(self, req.method, uri, req.version, req.headers, self.remote, self.local,
                            peer_certificate=self.transport.get_peer_certificate()
                            if self.scheme == "https" else None)
        msg._started = time.monotonic()
        self.msg = msg
        self.state = HANDLING
        self.transport.pause_reading()
        server.emit("request-started", msg)
        entry = self.entry = server._lookup(path)
        if entry is not None and entry.early is not None:
            self._call(entry.early, msg, path, req.form)
        self._after_early()

    def _after_early(self) -> None:
        msg = self.msg
        if msg is None:
            return
        if msg._paused:
            self.phase = AFTER_EARLY
            return
        if msg._status:
            # Answered before the body: if one is coming, the stream cannot be reused.
            req = self.request
            if req.chunked or req.content_length:
                self._must_close = True
            self._respond()
            return
        if self.request.expect_continue:
            self.transport.write(CONTINUE_LINE)
        self.state = BODY
        self._body_start = time.monotonic()
        self._body_bytes = 0
        self.deadline = self._body_start + self.server.request_timeout
        self.transport.resume_reading()

    def _body_read(self, body: bytes) -> None:
        msg = self.msg
        msg._request_body = body
        self.state = HANDLING
        self.transport.pause_reading()
        self.server.emit("request-read", msg)
        entry = self.entry
        if entry is not None and entry.normal is not None:
            self._call(entry.normal, msg, msg._uri.path, self.request.form)
        self._after_handler()

    def _after_handler(self) -> None:
        msg = self.msg
        if msg is None:
            return
        if msg._paused:
            self.phase = AFTER_HANDLER
            return
        entry = self.entry
        if not msg._status:
            if entry is None:
                msg.set_status(404)
            elif entry.websocket is not None:
                if self.server._websocket_handshake(self, msg, entry.websocket):
                    return
            else:
                log.error("no handler set a status for %s %s (handler at %r forgot to answer)",
                          msg._method, quote_path(msg._uri.path), entry.path)
                msg.set_status(500)
        self._respond()

    def _call(self, handler: Any, msg: ServerMessage, path: str,
              form: Optional[Dict[str, str]]) -> None:
        callback, user_data = handler[0], handler[1]
        last_callback.value = callback
        try:
            # Each handler gets its own dict: one that edits it cannot surprise the next.
            callback(self.server, msg, path, dict(form) if form is not None else None,
                     user_data)
        except Exception:
            log.exception("exception in handler %r for %s %s", callback, msg._method,
                          quote_path(path))
            self._internal_error(msg)

    def _internal_error(self, msg: ServerMessage) -> None:
        msg._paused = False
        msg._response_headers.clear()
        msg._response_body.set(b"")
        msg.set_status(500)

    def message_unpaused(self, msg: ServerMessage) -> None:
        """Called by ``ServerMessage.unpause()``: continue on the next loop iteration."""
        self.server._loop.call_soon(self._resume, msg)

    def _resume(self, msg: ServerMessage) -> None:
        if msg is not self.msg or self.state != HANDLING or msg._paused:
            return
        if self.phase == AFTER_EARLY:
            self._after_early()
        else:
            self._after_handler()
        if self.state in (HEAD, BODY):
            self._process()

    # -- responses ------------------------------------------------------------------
    def _fail(self, exc: HTTPError) -> None:
        """A request we cannot parse: answer ``exc.status`` and close (SPEC 1b)."""
        log.info("bad request from %s: %d %s", _addr(self.remote), exc.status, exc.message)
        self._must_close = True
        msg = self.msg
        if msg is None or self.state in (HEAD, BODY):
            if msg is None:
                uri = SplitResult(self.scheme, "", "", "", "")
                msg = ServerMessage(self, "-", uri, "HTTP/1.1", _empty_headers(), self.remote,
                                    self.local)
                msg._started = time.monotonic()
                self.msg = msg
            msg._response_headers.clear()
            msg.set_status(exc.status)
            msg.set_response("text/plain; charset=utf-8", exc.message + "\n")
            self._respond()
        else:
            self.transport.abort()

    def _response_head(self, msg: ServerMessage, status: int) -> Any:
        headers = msg._response_headers
        server = self.server
        if "Date" not in headers:
            headers._add("Date", http_date())
        if server.server_header and "Server" not in headers:
            headers._add("Server", server.server_header)
        version = msg._version if msg._version in ("HTTP/1.0", "HTTP/1.1") else "HTTP/1.1"
        if self._must_close or server._stopping or not self.keep_alive:
            self.keep_alive = False
            headers._set("Connection", "close")
        elif version == "HTTP/1.0":
            headers._set("Connection", "keep-alive")
        return version

    def _respond(self) -> None:
        msg = self.msg
        status = msg._status
        if status < 200:
            # 1xx is never a final response (the WebSocket 101 is written elsewhere); the
            # client would wait for one forever. libsoup sends it, then a 500.
            log.error("a handler set the informational status %d as the response to %s %s; "
                      "answering 500", status, msg._method, quote_path(msg._uri.path))
            self._internal_error(msg)
            status = 500
        headers = msg._response_headers
        body = msg._response_body
        version = self._response_head(msg, status)
        no_body = status in NO_BODY_STATUSES
        if not no_body and not body.completed and _wants_streaming(headers, len(body)):
            self._start_streaming(msg, version)
            return
        data = b"" if no_body else body.flatten()
        if not no_body:
            headers.set_content_length(len(data))
        head = build_response_head(version, status, msg.get_reason_phrase(), headers)
        if msg._method == "HEAD" or no_body or not data:
            self.transport.write(head)
        else:
            self.transport.writelines([head, data])
        self._finish(len(data))

    def _start_streaming(self, msg: ServerMessage, version: str) -> None:
        headers = msg._response_headers
        if headers.get_one("Content-Length") is not None:
            encoding = Encoding.CONTENT_LENGTH
        elif version == "HTTP/1.1":
            encoding = Encoding.CHUNKED
        else:
            # An HTTP/1.0 client cannot read chunks: the end of the body is the close.
            encoding = Encoding.EOF
            headers.remove("Transfer-Encoding")
            self.keep_alive = False
            headers._set("Connection", "close")
        head = build_response_head(version, msg._status, msg.get_reason_phrase(), headers)
        self.transport.write(head)
        self.state = STREAMING
        is_head = msg._method == "HEAD"
        sent = [0]

        def stream(data: Optional[bytes]) -> None:
            if self.msg is not msg or self.state != STREAMING:
                return
            if data is None:
                msg._response_body._stream = None
                if encoding is Encoding.CHUNKED and not is_head:
                    self.transport.write(LAST_CHUNK)
                self._finish(sent[0])
                return
            sent[0] += len(data)
            if is_head:
                return
            self.transport.write(chunk(data) if encoding is Encoding.CHUNKED else data)

        body = msg._response_body
        body._stream = stream
        for data in body._take():
            stream(data)

    def _finish(self, length: int) -> None:
        msg = self.msg
        self.msg = None
        self.entry = None
        self.request = None
        msg._conn = None
        self.server._access_log(msg, length)
        self.server.emit("request-finished", msg)
        if not self.keep_alive or self._must_close:
            self.state = CLOSED
            self.transport.close()
            return
        self.state = HEAD
        self.phase = 0
        # A pipelined request already begun has request_timeout for its head; else idle.
        self._idle = not self.parser.has_data
        self.deadline = time.monotonic() + (self.server.idle_timeout if self._idle
                                            else self.server.request_timeout)
        if self.transport.get_write_buffer_size() > PIPELINE_HIGH_WATER:
            self._draining = True  # reading stays paused; write_drained() carries on
            return
        self.transport.resume_reading()
        if self.parser.has_data and not self._processing:
            self._process()

    def write_drained(self) -> None:
        """The transport sent everything queued: read the next request if we waited."""
        if not self._draining:
            return
        self._draining = False
        if self.state != HEAD:
            return
        self.deadline = time.monotonic() + (self.server.idle_timeout if self._idle
                                            else self.server.request_timeout)
        self.transport.resume_reading()
        if self.parser.has_data and not self._processing:
            self._process()


def _wants_streaming(headers: Any, body_length: int) -> bool:
    # libsoup's rule: the body is streamed when the handler asked for chunked encoding, or
    # set a Content-Length that the body has not reached yet; otherwise the response goes
    # out whole, with the body as it is.
    if headers.get_encoding() is Encoding.CHUNKED:
        return True
    length = headers.get_content_length()
    return length is not None and length > body_length


def _empty_headers() -> Any:
    from .http import MessageHeaders
    return MessageHeaders()


def _addr(remote: Any) -> str:
    if not remote:
        return "-"
    return "%s:%s" % (remote[0], remote[1])


__all__ = ["HTTPConnection", "reason_phrase"]
