"""A blocking WebSocket client for scripts and tests, on the server's own framer.

``websocket_connect(url)`` performs the opening handshake and returns a
:class:`ClientConnection`. It drives the same :class:`WebsocketConnection` the
server uses (client side: frames are masked) through a blocking socket: the
``Transport`` and ``Clock`` it needs (:mod:`minisoup.interfaces`) are the small
blocking ones below, in place of the server's loop.
"""

import collections
import heapq
import socket
import ssl
import time
from typing import Any, Callable, Deque, List, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit

from .handshake import HandshakeError, client_check_response, client_request_headers
from .http import MessageHeaders
from .interfaces import Buffer, StreamProtocol
from .loop import Handle
from .websocket import (WebsocketConnection, WebsocketConnectionType, WebsocketDataType,
                        WebsocketError, WebsocketState)

__all__ = ["websocket_connect", "ClientConnection", "ConnectionClosed"]

MAX_RESPONSE_HEAD = 65536
RECV_SIZE = 65536   # below glibc's mmap threshold: no mmap/munmap per recv()
MIN_WAIT = 1e-6     # seconds: the shortest wait for data ("do not wait", kept blocking)


class ConnectionClosed(WebsocketError):
    """``recv()`` on a connection that is closed; ``code`` is its close code."""


class _Clock:
    """The ``Clock`` of a blocking connection: timers run when the owner waits for data."""

    def __init__(self) -> None:
        self._timers: List[Handle] = []

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Handle:
        """Run ``callback(*args)`` once ``delay`` seconds have passed, during a wait."""
        handle = Handle(time.monotonic() + delay, callback, args)
        heapq.heappush(self._timers, handle)
        return handle

    def next_deadline(self) -> Optional[float]:
        while self._timers and self._timers[0].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0].when if self._timers else None

    def run_due(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0].when <= now:
            entry = heapq.heappop(self._timers).take()
            if entry is not None:
                callback, args = entry
                callback(*args)


class _BlockingTransport:
    """A ``Transport`` over a blocking socket: each write is sent at once (``sendall``),
    and bytes are read only when the owner calls :meth:`receive`."""

    # The Transport's corking hint; nothing to batch when every write goes out at once.
    cork_reads = False

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.protocol: Optional[StreamProtocol] = None
        self.closed = False
        self._shut = False

    def set_protocol(self, protocol: StreamProtocol) -> None:
        """Deliver the bytes read to ``protocol``."""
        self.protocol = protocol

    def write(self, data: Buffer) -> None:
        """Send ``data`` now (blocking); an error closes the connection."""
        if self.closed or self._shut:
            return
        try:
            self.sock.sendall(data)
        except OSError as exc:
            self._lost(exc)

    def write_last(self, data: Buffer) -> None:
        """:meth:`write` (a blocking send needs no hint that the close follows)."""
        self.write(data)

    def writelines(self, parts: Sequence[Buffer]) -> None:
        """Send each part now, in order."""
        for part in parts:
            self.write(part)

    def flush(self) -> None:
        """Nothing to do: nothing is ever queued."""

    def get_write_buffer_size(self) -> int:
        """Always 0: nothing is ever queued."""
        return 0

    def pause_reading(self) -> None:
        """Nothing to do: bytes are read only in :meth:`receive`."""

    def resume_reading(self) -> None:
        """Nothing to do: bytes are read only in :meth:`receive`."""

    def receive(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds (0: do not wait) for bytes from the peer and
        give them to the protocol: ``data_received``, ``eof_received`` on FIN, or
        ``connection_lost`` on an error. False if nothing arrived in time."""
        if self.closed or self.protocol is None:
            return False
        # Never settimeout(0): that makes the socket non-blocking, where "nothing yet" is
        # BlockingIOError (ssl.SSLWantReadError on wss://), not socket.timeout.
        self.sock.settimeout(max(timeout, MIN_WAIT))
        try:
            data = self.sock.recv(RECV_SIZE)
        except socket.timeout:
            return False
        except OSError as exc:
            self._lost(exc)
            return True
        if data:
            self.protocol.data_received(data)
        else:
            self.protocol.eof_received()
        return True

    def shutdown_write(self) -> None:
        if not self._shut and not self.closed:
            self._shut = True
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        """Close the socket now (nothing is ever queued); ``connection_lost`` follows."""
        self._lost(None)

    def abort(self) -> None:
        """As :meth:`close`."""
        self._lost(None)

    def _lost(self, exc: Optional[Exception]) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass
        if self.protocol is not None:
            self.protocol.connection_lost(exc)


class ClientConnection:
    """A blocking WebSocket client connection.

    ``recv(timeout)`` returns the next ``(WebsocketDataType, data)``; it raises
    :class:`ConnectionClosed` once the connection is closed and no message is left,
    and ``socket.timeout`` when ``timeout`` passes. Pongs are collected in ``pongs``.
    """

    def __init__(self, sock: socket.socket, ws: WebsocketConnection, clock: _Clock,
                 transport: _BlockingTransport, timeout: float) -> None:
        self.sock = sock
        self.connection = ws
        self._clock = clock
        self._transport = transport
        self.timeout = timeout
        self.messages: Deque[Tuple[WebsocketDataType, Union[str, bytes]]] = collections.deque()
        self.pongs: Deque[bytes] = collections.deque()
        ws.connect("message", lambda _ws, kind, data: self.messages.append((kind, data)))
        ws.connect("pong", lambda _ws, data: self.pongs.append(data))

    # -- sending ---------------------------------------------------------------------
    def send_text(self, text: str) -> None:
        """Send a TEXT message."""
        self.connection.send_text(text)

    def send_binary(self, data: bytes) -> None:
        """Send a BINARY message."""
        self.connection.send_binary(data)

    def ping(self, data: bytes = b"") -> None:
        """Send a ping; the pong's payload lands in ``pongs`` during ``recv``/``wait_pong``."""
        self.connection.ping(data)

    def close(self, code: int = 1000, reason: Optional[str] = None) -> None:
        """Close: send a close frame and wait (up to the timeout) for the server's close."""
        self.connection.close(code, reason)
        deadline = time.monotonic() + self.timeout
        while self.connection.get_state() != WebsocketState.CLOSED:
            if not self._pump(deadline):
                self._transport.abort()
                break

    # -- receiving ---------------------------------------------------------------------
    def recv(self, timeout: Optional[float] = None
             ) -> Tuple[WebsocketDataType, Union[str, bytes]]:
        """The next message as ``(type, data)`` (``str`` for TEXT, ``bytes`` for BINARY)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self.messages:
            if self.connection.get_state() == WebsocketState.CLOSED:
                raise ConnectionClosed(self.get_close_code(), "connection closed (code %d %s)"
                                       % (self.get_close_code(), self.get_close_data() or ""))
            if not self._pump(deadline):
                raise socket.timeout("no message within the timeout")
        return self.messages.popleft()

    def wait_pong(self, timeout: Optional[float] = None) -> bytes:
        """Wait for the next pong and return its payload."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self.pongs:
            if self.connection.get_state() == WebsocketState.CLOSED or not self._pump(deadline):
                raise socket.timeout("no pong")
        return self.pongs.popleft()

    def wait_closed(self, timeout: Optional[float] = None) -> int:
        """Read (dropping messages) until the connection is closed; returns the close code."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while self.connection.get_state() != WebsocketState.CLOSED:
            if not self._pump(deadline):
                raise socket.timeout("connection not closed within the timeout")
        return self.get_close_code()

    def abort(self) -> None:
        """Drop the TCP connection now, without a closing handshake (no close frame is
        sent; the server sees the client vanish: close code 1006). For tests and scripts
        that simulate a lost client, or release a connection the server already closed.
        No effect once the socket is closed."""
        self._transport.abort()

    def _pump(self, deadline: float) -> bool:
        """Read once (or run a timer); False when ``deadline`` passed with nothing to do."""
        now = time.monotonic()
        timer = self._clock.next_deadline()
        wait = deadline - now
        if timer is not None:
            wait = min(wait, timer - now)
        if wait <= 0 and (timer is None or timer > now):
            return False
        if self._transport.closed:
            return False
        received = self._transport.receive(wait)
        self._clock.run_due()
        return received or (timer is not None and time.monotonic() < deadline)

    # -- properties ------------------------------------------------------------------------
    def get_protocol(self) -> Optional[str]:
        """The subprotocol the server chose, or ``None``."""
        return self.connection.get_protocol()

    def get_extensions(self) -> list:
        """The negotiated extension objects."""
        return self.connection.get_extensions()

    def get_close_code(self) -> int:
        """The close code the server sent (1006 if it vanished); 0 while open."""
        return self.connection.get_close_code()

    def get_close_data(self) -> Optional[str]:
        """The close reason the server sent."""
        return self.connection.get_close_data()

    def get_state(self) -> WebsocketState:
        """OPEN, CLOSING or CLOSED."""
        return self.connection.get_state()

    def __enter__(self) -> "ClientConnection":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.get_state() == WebsocketState.OPEN:
            self.close()
        self._transport.abort()


def _read_response_head(sock: socket.socket, deadline: float) -> Tuple[int, MessageHeaders, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        if len(buf) > MAX_RESPONSE_HEAD:
            raise HandshakeError(0, "response head too large")
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        data = sock.recv(65536)
        if not data:
            raise HandshakeError(0, "connection closed during the handshake")
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise HandshakeError(0, "malformed status line %r" % lines[0])
    headers = MessageHeaders()
    for line in lines[1:]:
        name, _, value = line.partition(":")
        try:
            headers.append(name.strip(), value.strip())
        except ValueError:
            raise HandshakeError(int(parts[1]), "malformed header line %r" % line) from None
    return int(parts[1]), headers, rest


def websocket_connect(url: str, origin: Optional[str] = None,
                      protocols: Optional[Sequence[str]] = None, timeout: float = 10,
                      extensions: Sequence[type] = (),
                      ssl_context: Optional[ssl.SSLContext] = None) -> ClientConnection:
    """Open a WebSocket to ``url`` (``ws://`` or ``wss://``) and return a blocking connection.

    ``extensions`` lists extension types to offer (e.g. ``[minisoup.WebsocketExtensionDeflate]``).
    ``ssl_context``: for ``wss://``, the client-side ``ssl.SSLContext`` (a private CA, a
    client certificate); default ``ssl.create_default_context()`` (system CAs, host name
    checked). Raises ``HandshakeError`` (``status`` is the server's HTTP status) when
    refused, ``ssl.SSLError`` when the TLS handshake fails.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss", "http", "https"):
        raise ValueError("not a ws:// or wss:// URL: %r" % url)
    secure = parts.scheme in ("wss", "https")
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if secure else 80)
    path = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    deadline = time.monotonic() + timeout
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        if secure:
            context = ssl_context if ssl_context is not None else ssl.create_default_context()
            sock = context.wrap_socket(sock, server_hostname=host)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        host_header = parts.netloc.rsplit("@", 1)[-1]
        key, headers = client_request_headers(host_header, path, origin, protocols, extensions)
        request = "GET %s HTTP/1.1\r\n%s\r\n" % (
            path, "".join("%s: %s\r\n" % item for item in headers))
        sock.sendall(request.encode("latin-1"))
        status, response_headers, rest = _read_response_head(sock, deadline)
        result = client_check_response(status, response_headers, key, protocols, extensions)
    except BaseException:
        sock.close()
        raise
    clock = _Clock()
    transport = _BlockingTransport(sock)
    ws = WebsocketConnection(transport, WebsocketConnectionType.CLIENT, clock,
                             uri=parts, origin=origin, protocol=result.protocol,
                             extensions=result.extensions, close_timeout=timeout)
    ws.set_max_incoming_payload_size(0)
    ws.set_max_total_message_size(0)
    transport.set_protocol(ws)
    conn = ClientConnection(sock, ws, clock, transport, timeout)
    if rest:
        ws.data_received(rest)
    return conn
