"""``Server``: libsoup's SoupServer — handler table, listening sockets, the worker loop."""

import errno
import logging
import signal
import socket
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

from . import __version__
from .connection import HTTPConnection
from .handshake import HandshakeError, server_handshake
from .http import _check_text, quote_path
from .loop import Handle, Loop, SocketTransport
from .message import ServerMessage
from .signals import SignalEmitter, last_callback
from .websocket import CloseCode, WebsocketConnection, WebsocketConnectionType

log = logging.getLogger("minisoup")
access_log = logging.getLogger("minisoup.access")

# Defaults: one place, quoted by the README (SPEC section 4).
DEFAULT_SERVER_HEADER = "minisoup/" + __version__
DEFAULT_LIMITS = {
    "max_header_size": 64 * 1024,        # bytes of request line + headers → 431
    "max_body_size": 16 * 1024 * 1024,   # bytes of request body → 413
    "request_timeout": 30.0,             # seconds for a request's headers (slowloris)
    "idle_timeout": 60.0,                # seconds a keep-alive connection may sit idle
    "close_timeout": 5.0,                # seconds for the WebSocket closing handshake
    "max_connections": 10000,            # per worker; above it, stop accepting
    "write_buffer_limit": 16 * 1024 * 1024,  # bytes queued per WebSocket before 1008
    "graceful_timeout": 30.0,            # seconds a graceful stop may take
    "worker_timeout": 30.0,              # pre-fork: seconds without a heartbeat → SIGKILL
}
LISTEN_BACKLOG = 1024
ACCEPT_PER_WAKEUP = 16       # accept() calls per readiness event (fairness between workers)
EMFILE_BACKOFF_S = 0.5       # out of descriptors: stop accepting this long, then retry


class Handler(NamedTuple):
    """An early or normal handler as registered: ``callback(server, msg, path, query,
    user_data)``, and ``destroy(user_data)`` when it is removed (or ``None``)."""
    callback: Callable
    user_data: Any
    destroy: Optional[Callable]


class WebsocketHandler(NamedTuple):
    """A WebSocket handler as registered (``add_websocket_handler``'s arguments)."""
    callback: Callable
    user_data: Any
    destroy: Optional[Callable]
    origin: Optional[str]
    protocols: Optional[Tuple[str, ...]]


class _Entry:
    """One path's slot in the table: at most one early, one normal, one WebSocket handler."""

    __slots__ = ("path", "early", "normal", "websocket")

    def __init__(self, path: str) -> None:
        self.path = path
        self.early = None  # type: Optional[Handler]
        self.normal = None  # type: Optional[Handler]
        self.websocket = None  # type: Optional[WebsocketHandler]

    def is_empty(self) -> bool:
        return self.early is None and self.normal is None and self.websocket is None


class _ConnectionOwner:
    """The server's side of the seam with its HTTP connections (``connection.ConnectionOwner``).

    Built by the server from its own bound methods, so that a connection calls
    ``owner.lookup(path)`` at the cost of a plain method call and never touches the
    server's private fields.
    """

    __slots__ = ("server", "lookup", "upgrade", "connection_closed", "is_stopping",
                 "access_log", "emit", "call_soon")

    def __init__(self, server: "Server", lookup: Callable, upgrade: Callable,
                 connection_closed: Callable, is_stopping: Callable[[], bool],
                 access_log: Callable) -> None:
        self.server = server
        self.lookup = lookup
        self.upgrade = upgrade
        self.connection_closed = connection_closed
        self.is_stopping = is_stopping
        self.access_log = access_log
        self.emit = server.emit
        self.call_soon = server.call_soon


def _default_extensions() -> list:
    from .deflate import WebsocketExtensionDeflate
    return [WebsocketExtensionDeflate]


class Server(SignalEmitter):
    """An HTTP/1.1 and WebSocket server (libsoup's SoupServer).

    Register handlers, listen, then :meth:`run`. Keyword limits (defaults in
    ``DEFAULT_LIMITS``): ``max_header_size`` (bytes, 431 above), ``max_body_size``
    (bytes, 413 above), ``request_timeout`` (s for a request's headers),
    ``idle_timeout`` (s for an idle keep-alive connection), ``close_timeout`` (s for
    the WebSocket closing handshake), ``max_connections`` (per worker, soft cap),
    ``write_buffer_limit`` (bytes queued per WebSocket; above it, close 1008),
    ``graceful_timeout`` (s a graceful stop may take), ``worker_timeout`` (s a pre-forked
    worker may go without a heartbeat before the master kills and replaces it).

    Signals: ``request-started``, ``request-read``, ``request-finished``,
    ``request-aborted``, each with the :class:`ServerMessage`.
    """

    SIGNALS = ("request-started", "request-read", "request-finished", "request-aborted")

    def __init__(self, server_header: Optional[str] = DEFAULT_SERVER_HEADER, **limits: Any) -> None:
        unknown = set(limits) - set(DEFAULT_LIMITS)
        if unknown:
            raise TypeError("unknown Server option(s): %s" % ", ".join(sorted(unknown)))
        if server_header is not None:
            _check_text("server_header", server_header)  # no header injection from config
        self.server_header = server_header
        for name, default in DEFAULT_LIMITS.items():
            value = limits.get(name, default)
            if value is None or value < 0:
                raise ValueError("%s must be >= 0" % name)
            setattr(self, name, value)
        self._signal_handlers = {}  # type: Dict[str, list]
        self._handlers = {}  # type: Dict[str, _Entry]
        self._paths = []  # type: List[str]   # longest first
        self._extensions = _default_extensions()
        self._listeners = []  # type: List[socket.socket]
        self._loop = None  # type: Optional[Loop]
        self._http = set()  # type: set
        self._websockets = set()  # type: set
        self._accepting = False
        self._stopping = False
        self._running = False
        self._worker_id = 0
        self._sweep = None  # type: Optional[Handle]
        self._stop_deadline = 0.0
        self._accept_paused_until = 0.0
        # Set by the pre-fork worker: called with the live connection count on each change.
        self._on_count_change = None  # type: Optional[Callable[[int], None]]
        self._owner = _ConnectionOwner(self, self._lookup, self._websocket_handshake,
                                       self._connection_closed, self._is_stopping,
                                       self._access_log)

    def _handlers_map(self) -> Dict[str, list]:
        return self._signal_handlers

    # -- handlers -------------------------------------------------------------------
    def _entry(self, path: Optional[str]) -> _Entry:
        key = _normalize_path(path)
        entry = self._handlers.get(key)
        if entry is None:
            entry = self._handlers[key] = _Entry(key)
            self._paths = sorted(self._handlers, key=len, reverse=True)
        return entry

    def add_handler(self, path: Optional[str], callback: Callable, user_data: Any = None,
                    destroy: Optional[Callable] = None) -> None:
        """Run ``callback(server, msg, path, query, user_data)`` after a request's body is read.

        ``path`` is a prefix (``None`` or "/" is the default handler). Replacing a
        handler calls the old one's ``destroy(user_data)``.
        """
        entry = self._entry(path)
        _destroy(entry.normal)
        entry.normal = Handler(callback, user_data, destroy)

    def add_early_handler(self, path: Optional[str], callback: Callable, user_data: Any = None,
                          destroy: Optional[Callable] = None) -> None:
        """Like :meth:`add_handler`, but run as soon as the headers are read (before the body)."""
        entry = self._entry(path)
        _destroy(entry.early)
        entry.early = Handler(callback, user_data, destroy)

    def add_websocket_handler(self, path: Optional[str], origin: Optional[str],
                              protocols: Optional[Sequence[str]], callback: Callable,
                              user_data: Any = None, destroy: Optional[Callable] = None) -> None:
        """Accept WebSocket handshakes under ``path`` (libsoup's argument order).

        ``origin``: if not ``None``, the request's Origin must equal it
        (case-insensitive) or the answer is 403. ``protocols``: if not ``None``, the
        first of these the client offered is chosen (400 if the client offered only
        others). ``callback(server, msg, path, connection, user_data)`` runs once the
        101 response is written, with a :class:`WebsocketConnection` in state OPEN.
        The handshake is checked after the early and normal handlers, only if neither
        set a status.
        """
        if protocols is not None:
            if isinstance(protocols, str):
                raise TypeError("protocols must be a list of strings or None, not a str")
            protocols = tuple(protocols)
        entry = self._entry(path)
        _destroy(entry.websocket)
        entry.websocket = WebsocketHandler(callback, user_data, destroy, origin, protocols)

    def remove_handler(self, path: Optional[str]) -> None:
        """Remove the early, normal and WebSocket handlers at exactly ``path``."""
        entry = self._handlers.pop(_normalize_path(path), None)
        if entry is None:
            return
        self._paths = sorted(self._handlers, key=len, reverse=True)
        for handler in (entry.early, entry.normal, entry.websocket):
            _destroy(handler)

    def _lookup(self, path: str) -> Optional[_Entry]:
        # libsoup's path map: longest registered prefix, compared as plain strings. A path
        # that is not absolute ("*", CONNECT's host:port) matches nothing, as in libsoup.
        if not path.startswith("/"):
            return None
        for prefix in self._paths:
            if path.startswith(prefix):
                return self._handlers[prefix]
        return self._handlers.get("/")

    def add_websocket_extension(self, extension_type: type) -> None:
        """Offer ``extension_type`` to every WebSocket handler (no-op if already there)."""
        if extension_type not in self._extensions:
            self._extensions.append(extension_type)

    def remove_websocket_extension(self, extension_type: type) -> None:
        """Stop offering ``extension_type``."""
        if extension_type in self._extensions:
            self._extensions.remove(extension_type)

    # -- listening ----------------------------------------------------------------------
    def listen(self, address: Tuple[str, int]) -> None:
        """Bind and listen on ``(host, port)`` now; port 0 picks a free port. IPv6 hosts work."""
        host, port = address[0], int(address[1])
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            sock.listen(LISTEN_BACKLOG)
        except OSError:
            sock.close()
            raise
        self.listen_socket(sock)

    def listen_local(self, port: int) -> None:
        """Listen on the loopback addresses: 127.0.0.1 and, where the host has IPv6, ::1
        (on the same port), as libsoup does."""
        self._listen_both("127.0.0.1", "::1", port)

    def listen_all(self, port: int) -> None:
        """Listen on every address: 0.0.0.0 and, where the host has IPv6, :: (same port)."""
        self._listen_both("0.0.0.0", "::", port)

    def _listen_both(self, ipv4: str, ipv6: str, port: int) -> None:
        self.listen((ipv4, port))
        port = self._listeners[-1].getsockname()[1]  # port 0: the IPv6 side takes the same
        if socket.has_ipv6:
            try:
                self.listen((ipv6, port))
            except OSError as exc:
                log.debug("no IPv6 listener on [%s]:%d: %s", ipv6, port, exc)

    def listen_socket(self, sock: socket.socket) -> None:
        """Serve on an already listening socket."""
        sock.setblocking(False)
        self._listeners.append(sock)
        if self._accepting and self._loop is not None:
            self._loop.add_exclusive_reader(sock, self._make_acceptor(sock))

    def get_listeners(self) -> List[socket.socket]:
        """The listening sockets."""
        return list(self._listeners)

    def get_uris(self) -> List[str]:
        """``http://host:port/`` for each listening socket (the real port after port 0)."""
        uris = []
        for sock in self._listeners:
            host, port = sock.getsockname()[:2]
            if ":" in host:
                host = "[%s]" % host
            uris.append("http://%s:%d/" % (host, port))
        return uris

    # -- timers -----------------------------------------------------------------------------
    def _get_loop(self) -> Loop:
        if self._loop is None:
            self._loop = Loop()
        return self._loop

    def call_later(self, delay_s: float, callback: Callable, *args: Any) -> Handle:
        """Run ``callback(*args)`` on this worker's loop after ``delay_s`` seconds."""
        return self._get_loop().call_later(delay_s, callback, *args)

    def call_soon(self, callback: Callable, *args: Any) -> Handle:
        """Run ``callback(*args)`` on this worker's loop on its next iteration."""
        return self._get_loop().call_soon(callback, *args)

    def get_worker_id(self) -> int:
        """The worker this code runs in: 1..N under ``run(workers=N)``, 0 otherwise."""
        return self._worker_id

    # -- running ----------------------------------------------------------------------------
    def run(self, workers: int = 0) -> None:
        """Serve until stopped. ``workers=0``: in this process; ``N``: N forked workers."""
        if not self._listeners:
            raise RuntimeError("call listen(), listen_local() or listen_all() before run()")
        if workers:
            from .prefork import Arbiter
            Arbiter(self, workers).run()
        else:
            self._serve(install_signals=True)

    def _serve(self, install_signals: bool = False) -> None:
        """Run this process's loop on the listening sockets until stopped."""
        loop = self._get_loop()
        self._running = True
        self._stopping = False
        if install_signals:
            import threading
            if threading.current_thread() is threading.main_thread():
                loop.add_signal_handler(signal.SIGTERM, lambda s: self.stop(graceful=True))
                loop.add_signal_handler(signal.SIGINT, lambda s: self.stop(graceful=True))
                loop.add_signal_handler(signal.SIGQUIT, lambda s: self.stop(graceful=False))
        self._start_accepting()
        self._schedule_sweep()
        try:
            loop.run()
        finally:
            self._running = False
            self._stop_accepting()
            for conn in list(self._http) + list(self._websockets):
                conn.transport.abort()
            if install_signals:
                loop.remove_signal_handlers()

    def _schedule_sweep(self) -> None:
        tick = max(0.05, min(1.0, self.request_timeout / 4, self.idle_timeout / 4))
        self._sweep = self._loop.call_later(tick, self._on_sweep, tick)

    def _on_sweep(self, tick: float) -> None:
        # One periodic check of every HTTP connection's deadline instead of a timer per
        # request: keep-alive requests then cost no timer at all.
        now = time.monotonic()
        for conn in list(self._http):
            conn.check_deadline(now)
        if self._stopping:
            self._check_stopped(now)
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            self._update_accepting()
        self._sweep = self._loop.call_later(tick, self._on_sweep, tick)

    def stop(self, graceful: bool = True) -> None:
        """Stop serving. Graceful: stop accepting, close WebSockets with 1001 (after their
        queued messages), let in-flight HTTP responses finish, then return from :meth:`run`
        (forced after ``graceful_timeout``). Not graceful: close everything now."""
        if self._loop is None:
            return
        self._stopping = True
        self._stop_accepting()
        for ws in list(self._websockets):
            # After what each has queued; the close frames go out as the sockets take them.
            ws.close(CloseCode.GOING_AWAY, "server shutting down")
        if not graceful:
            self._stop_deadline = float("inf")  # the loop stops now; no timeout warning
            for conn in list(self._http) + list(self._websockets):
                conn.transport.abort()
            self._loop.stop()
            return
        for conn in list(self._http):
            conn.close_if_idle()
        self._stop_deadline = time.monotonic() + self.graceful_timeout
        self._check_stopped(time.monotonic())

    def _check_stopped(self, now: float) -> None:
        if not self._http and not self._websockets:
            self._loop.stop()
        elif now >= self._stop_deadline:
            log.warning("stop: %d connection(s) still open after the timeout; closing them",
                        len(self._http) + len(self._websockets))
            for conn in list(self._http) + list(self._websockets):
                conn.transport.abort()
            self._loop.stop()

    def disconnect(self, handler_id: Optional[int] = None) -> None:
        """Without an argument: stop listening and close every connection (WebSocket peers
        get 1001), call every handler's ``destroy``. With a signal handler id: disconnect
        that signal handler (GObject's ``disconnect``)."""
        if handler_id is not None:
            self.disconnect_signal(handler_id)
            return
        if self._running:
            self.stop(graceful=False)
        for sock in self._listeners:
            try:
                sock.close()
            except OSError:
                pass
        self._listeners = []
        for path in list(self._handlers):
            self.remove_handler(path)

    # -- accepting -----------------------------------------------------------------------------
    def _make_acceptor(self, listener: socket.socket) -> Callable[[int], None]:
        def on_readable(events: int) -> None:
            self._accept(listener)
        return on_readable

    def _start_accepting(self) -> None:
        if self._accepting:
            return
        self._accepting = True
        for sock in self._listeners:
            self._loop.add_exclusive_reader(sock, self._make_acceptor(sock))

    def _stop_accepting(self) -> None:
        if not self._accepting:
            return
        self._accepting = False
        for sock in self._listeners:
            self._loop.remove_reader(sock)

    def _connection_count(self) -> int:
        return len(self._http) + len(self._websockets)

    def _update_accepting(self) -> None:
        """Accept only below ``max_connections`` and outside an EMFILE back-off."""
        if self._stopping or not self._running:
            return
        want = (self._connection_count() < self.max_connections
                and not self._accept_paused_until and self._may_accept())
        if want:
            self._start_accepting()
        else:
            self._stop_accepting()

    def _may_accept(self) -> bool:
        """Hook for the pre-fork balancer: may this worker take more connections now?"""
        return True

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(ACCEPT_PER_WAKEUP):
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: the listener stays readable, so retrying now would
                    # spin the CPU. Back off; the sweep re-enables accepting.
                    log.error("accept failed: %s; not accepting for %.1f s", exc, EMFILE_BACKOFF_S)
                    self._accept_paused_until = time.monotonic() + EMFILE_BACKOFF_S
                    self._stop_accepting()
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                raise
            self._new_connection(sock, addr)
            if not self._accepting:
                return
            if self._connection_count() >= self.max_connections or not self._may_accept():
                self._update_accepting()
                return

    def _new_connection(self, sock: socket.socket, addr: Any) -> None:
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            local = sock.getsockname()
        except OSError:
            local = None
        conn = HTTPConnection(self._owner, None, addr, local)
        conn.transport = SocketTransport(self._loop, sock, conn)
        self._http.add(conn)
        if self._on_count_change is not None:
            self._on_count_change(len(self._http) + len(self._websockets))

    def _connection_closed(self, conn: Any) -> None:
        self._http.discard(conn)
        self._websockets.discard(conn)
        if self._on_count_change is not None:
            self._on_count_change(len(self._http) + len(self._websockets))
        if self._stopping:
            self._check_stopped(time.monotonic())
        elif not self._accepting:
            self._update_accepting()

    # -- the seam with HTTPConnection (see _ConnectionOwner) ---------------------------------
    def _is_stopping(self) -> bool:
        return self._stopping

    # -- WebSocket upgrade: the policy; the handover is HTTPConnection.take_over() ------------
    def _websocket_handshake(self, conn: HTTPConnection, msg: ServerMessage,
                             handler: WebsocketHandler) -> bool:
        """Check the handshake; on success write the 101 and hand over. Returns True if upgraded."""
        headers = msg.get_request_headers()
        response_headers = msg.get_response_headers()
        try:
            result = server_handshake(msg.get_method(), msg.get_http_version(), headers,
                                      handler.origin, handler.protocols, self._extensions)
        except HandshakeError as exc:
            log.info("WebSocket handshake refused for %s: %d %s",
                     msg.get_remote_host(), exc.status, exc.message)
            msg.set_status(exc.status)
            for name, value in exc.headers:
                response_headers.replace(name, value)
            response_headers.replace("Connection", "close")  # the connection closes after it
            msg.set_response("text/plain; charset=utf-8", exc.message + "\n")
            return False
        msg.set_status(101)
        for name, value in result.headers:
            response_headers.replace(name, value)
        response_headers.replace("Connection", "Upgrade")
        # The callback runs once the 101 is written (SPEC 1): take_over() flushes it.
        transport, leftover = conn.take_over()
        self._http.discard(conn)
        if transport.is_closing():
            return True  # the peer left during the 101: the request was aborted
        ws = WebsocketConnection(transport, WebsocketConnectionType.SERVER, self._loop,
                                 uri=msg.get_uri(), origin=headers.get_one("Origin"),
                                 protocol=result.protocol, extensions=result.extensions,
                                 close_timeout=self.close_timeout,
                                 write_buffer_limit=self.write_buffer_limit,
                                 on_closed=self._websocket_closed,
                                 remote=msg.get_remote_address())
        self._websockets.add(ws)
        transport.set_protocol(ws)
        transport.cork_reads = True
        self._access_log(msg, 0)
        self.emit("request-finished", msg)
        callback = handler.callback
        last_callback.value = callback
        try:
            callback(self, msg, msg.get_uri().path, ws, handler.user_data)
        except Exception:
            log.exception("exception in WebSocket handler %r", callback)
            ws.close(1011, "handler error")
        if leftover:
            ws.data_received(leftover)
        transport.resume_reading()
        return True

    def _websocket_closed(self, ws: WebsocketConnection) -> None:
        if access_log.isEnabledFor(logging.INFO):
            remote = ws.get_remote_address()
            access_log.info('%s "WEBSOCKET %s" closed %d %s', remote[0] if remote else "-",
                            quote_path(getattr(ws.get_uri(), "path", "-")), ws.get_close_code(),
                            ws.get_close_data() or "")
        self._connection_closed(ws)

    # -- logging ---------------------------------------------------------------------------
    def _access_log(self, msg: ServerMessage, length: int) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        elapsed = (time.monotonic() - msg.get_start_time()) * 1000.0
        access_log.info('%s "%s %s %s" %d %d %.1fms', msg.get_remote_host() or "-",
                        msg.get_method(), quote_path(msg.get_uri().path), msg.get_http_version(),
                        msg.get_status(), length, elapsed)


def _normalize_path(path: Optional[str]) -> str:
    # None and "/" are both libsoup's default handler.
    if path is None or path == "":
        return "/"
    return path


def _destroy(handler: Union[Handler, WebsocketHandler, None]) -> None:
    if handler is not None and handler.destroy is not None:
        try:
            handler.destroy(handler.user_data)
        except Exception:
            log.exception("exception in destroy notifier %r", handler.destroy)
