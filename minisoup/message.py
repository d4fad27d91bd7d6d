"""``ServerMessage``: one request and its response (libsoup's SoupServerMessage)."""

import time
from typing import Any, Callable, List, Optional, Tuple, Union
from urllib.parse import SplitResult, urljoin

from .http import MessageHeaders, _check_text, quote_path, reason_phrase

__all__ = ["ServerMessage", "ResponseBody"]


class ResponseBody:
    """The response body (libsoup's SoupMessageBody): a list of chunks.

    ``append`` adds data; ``complete`` marks the end. As in libsoup, a response is
    *streamed* when the handler asked for it — ``get_response_headers().set_encoding(
    Encoding.CHUNKED)``, or a Content-Length larger than the body so far — and the body
    is not complete when the response starts: what was appended goes out at once, each
    later ``append`` follows (as a chunk, unless a Content-Length was set), and
    ``complete()`` ends it. Otherwise the body is sent whole, as it is.
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


class ServerMessage:
    """A request received by the server and the response being built for it.

    Handlers set the answer with :meth:`set_status` and :meth:`set_response` (or the
    response headers and body). :meth:`pause` keeps the response from being sent
    when the handler returns; :meth:`unpause` sends it later, from a timer or another
    callback. Response header values and reason phrases are checked: CR, LF or NUL
    raise ``ValueError`` (no header injection).
    """

    __slots__ = ("_method", "_uri", "_version", "_request_headers", "_request_body",
                 "_remote", "_local", "_status", "_reason", "_response_headers",
                 "_response_body", "_paused", "_conn", "_started", "_peer_certificate",
                 "_auth_domain", "_auth_user", "__weakref__")

    def __init__(self, conn: Any, method: str, uri: SplitResult, version: str,
                 headers: MessageHeaders, remote: Any, local: Any,
                 peer_certificate: Optional[dict] = None) -> None:
        self._conn = conn
        self._peer_certificate = peer_certificate
        self._method = method
        self._uri = uri
        self._version = version
        self._request_headers = headers
        self._request_body = b""
        self._remote = remote
        self._local = local
        self._status = 0
        self._reason: Optional[str] = None
        self._response_headers = MessageHeaders()
        self._response_body = ResponseBody()
        self._paused = False
        self._started = time.monotonic()
        self._auth_domain: Any = None
        self._auth_user: Optional[str] = None

    # -- the request ------------------------------------------------------------
    def get_method(self) -> str:
        """The request method, e.g. "GET"."""
        return self._method

    def get_uri(self) -> SplitResult:
        """The request URI (``scheme``, ``netloc``, ``path``, ``query``; query "" if none).

        ``path`` is decoded as libsoup hands it over (percent-decoding, dot segments
        removed); ``query`` is the raw query string."""
        return self._uri

    def get_http_version(self) -> str:
        """"HTTP/1.1" or "HTTP/1.0"."""
        return self._version

    def get_request_headers(self) -> MessageHeaders:
        """The request's headers."""
        return self._request_headers

    def get_request_body(self) -> bytes:
        """The request body (empty before it is read, i.e. in early handlers)."""
        return self._request_body

    def get_remote_host(self) -> Optional[str]:
        """The client's IP address as a string."""
        return self._remote[0] if self._remote else None

    def get_remote_address(self) -> Optional[Tuple]:
        """The client's socket address, e.g. ``("127.0.0.1", 51234)``."""
        return self._remote

    def get_local_address(self) -> Optional[Tuple]:
        """The server's socket address for this connection."""
        return self._local

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
        return self._response_headers

    def get_response_body(self) -> ResponseBody:
        """The response body (append to it; see :class:`ResponseBody` for streaming)."""
        return self._response_body

    def set_response(self, content_type: Optional[str], body: Union[bytes, str, None]) -> None:
        """Set the Content-Type and the whole body (``str`` is encoded as UTF-8).

        With ``content_type`` ``None`` the body is removed, as libsoup does.
        """
        if content_type is None:
            self._response_headers.remove("Content-Type")
            self._response_body.set(b"")
            return
        if isinstance(body, str):
            body = body.encode("utf-8")
        self._response_headers.replace("Content-Type", content_type)
        self._response_body.set(bytes(body or b""))

    def set_redirect(self, status_code: int, redirect_uri: str) -> None:
        """Answer with a redirect status and a ``Location`` header.

        As libsoup, a relative ``redirect_uri`` is resolved against the request's URI
        (``"/x"`` becomes ``http://host/x``); an absolute one is kept as it is.
        """
        _check_text("redirect URI", redirect_uri)  # before urljoin, which drops CR/LF/TAB
        uri = self._uri
        if uri.netloc:
            base = "%s://%s%s" % (uri.scheme or "http", uri.netloc, quote_path(uri.path or "/"))
            redirect_uri = urljoin(base, redirect_uri)
        self.set_status(status_code)
        self._response_headers.replace("Location", redirect_uri)

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
    def set_request_body(self, body: bytes) -> None:
        """For the connection: the request body has been read."""
        self._request_body = body

    def set_auth(self, domain: Any, user: str) -> None:
        """For the server: ``domain`` accepted this request as ``user`` (SPEC 10)."""
        self._auth_domain = domain
        self._auth_user = user

    def cleanup_response(self) -> None:
        """For the connection: forget the response built so far (status, reason, headers,
        body) and any pause, before the connection answers with an error of its own."""
        self._paused = False
        self._status = 0
        self._reason = None
        self._response_headers.clear()
        self._response_body.set(b"")

    def detach(self) -> None:
        """For the connection: it is done with this message (answered, aborted or handed
        over), so a later :meth:`unpause` does nothing."""
        self._conn = None

    def get_start_time(self) -> float:
        """When the request head was read (``time.monotonic()``), for the access log."""
        return self._started

    def __repr__(self) -> str:
        return "<ServerMessage %s %s %d>" % (self._method, self._uri.path, self._status)
