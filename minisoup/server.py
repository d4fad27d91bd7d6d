"""``Server``: libsoup's SoupServer — handler table, listening sockets, the worker loop."""

import errno
import ipaddress
import logging
import select
import signal
import socket
import time
from typing import (Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Protocol, Sequence,
                    Tuple, Union)
from urllib.parse import SplitResult

from ._version import __version__
from .auth import AuthDomain, authenticate
from .connection import HTTPConnection
from .forwarded import TrustedProxies
from .handshake import HandshakeError, response_fields, server_handshake
from .http import UpgradeHeads, _check_text, checked_value, quote_path
from .loop import Handle, Loop, SocketTransport
from .message import ServerMessage
from .broker import RedisBroker, new_origin
from .pubsub import PubSub, Subscription
from .resp import parse_redis_url
from .signals import SignalEmitter, last_callback
from .tls import ListenOptions, TlsAuthMode, TlsConfig, TLSTransport
from .websocket import CloseCode, WebsocketConnection, WebsocketConnectionType

log = logging.getLogger("minisoup")
access_log = logging.getLogger("minisoup.access")
_SERVER = WebsocketConnectionType.SERVER

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


class AcceptGate(Protocol):
    """A pre-fork worker's say over accepting (``prefork.Balancer`` implements it).

    The seam between a ``Server`` and the worker process it runs in
    (:meth:`Server._run_worker`): the server asks :meth:`may_accept` before taking
    connections from the shared listening sockets and reports every change of its
    live connection count to :meth:`connections_changed`; once, before serving, it
    hands the gate ``recheck`` through :meth:`attach`, to be called when the gate's
    answer may have turned from False to True (the server then asks again).
    """

    def may_accept(self) -> bool:
        """May this worker take one more connection now? Called per accept: keep it cheap."""

    def connections_changed(self, count: int) -> None:
        """This worker now holds ``count`` connections (HTTP and WebSocket)."""

    def attach(self, recheck: Callable[[], None]) -> None:
        """Keep ``recheck``: calling it makes the server ask :meth:`may_accept` again."""


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
        self.early: Optional[Handler] = None
        self.normal: Optional[Handler] = None
        self.websocket: Optional[WebsocketHandler] = None

    def is_empty(self) -> bool:
        return self.early is None and self.normal is None and self.websocket is None


class _ConnectionOwner:
    """The server's side of the seam with its HTTP connections (``connection.ConnectionOwner``).

    Built by the server from its own bound methods, so that a connection calls
    ``owner.lookup(path)`` at the cost of a plain method call and never touches the
    server's private fields.
    """

    __slots__ = ("server", "lookup", "upgrade", "connection_closed", "access_log", "emit",
                 "call_soon", "authenticate", "client_address", "signal_handlers",
                 "auth_domains", "upgrade_heads")

    def __init__(self, server: "Server", lookup: Callable, upgrade: Callable,
                 connection_closed: Callable, access_log: Callable,
                 authenticate: Callable, client_address: Callable,
                 signal_handlers: Dict[str, list], auth_domains: List[AuthDomain],
                 upgrade_heads: UpgradeHeads) -> None:
        self.server = server
        self.upgrade_heads = upgrade_heads
        self.lookup = lookup
        self.authenticate = authenticate
        # The server's own dict and list, which it changes in place (connect(),
        # add_auth_domain()): the connection tests them before calling emit/authenticate.
        self.signal_handlers = signal_handlers
        self.auth_domains = auth_domains
        self.upgrade = upgrade
        self.connection_closed = connection_closed
        self.access_log = access_log
        self.emit = server.emit
        self.call_soon = server.call_soon
        self.client_address = client_address


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

    ``broker``: ``"redis://HOST:PORT[/DB]"`` to publish/subscribe across server
    processes and hosts through Redis (:meth:`publish`; see ``broker.py``); ``ValueError``
    for a URL that is not one. ``trusted_proxies``: addresses or networks
    (``["10.0.0.0/8", "::1"]``) of reverse proxies whose ``Forwarded`` /
    ``X-Forwarded-For`` headers name the client for ``msg.get_remote_host()`` and
    ``get_remote_address()`` (see ``forwarded.py``); default none.

    Signals: ``request-started``, ``request-read``, ``request-finished``,
    ``request-aborted``, each with the :class:`ServerMessage`; ``worker-started``
    (no argument: ``callback(server, *user_data)``), emitted in each process that is
    about to serve — in every pre-forked worker after the fork (``get_worker_id()``
    already says which), or once in :meth:`run` without workers — the place for
    per-process setup (gunicorn's ``post_fork``). An exception from a
    ``worker-started`` callback propagates: that worker fails and the master replaces
    it, backing off if every worker fails so.
    """

    SIGNALS = ("request-started", "request-read", "request-finished", "request-aborted",
               "worker-started")

    def __init__(self, server_header: Optional[str] = DEFAULT_SERVER_HEADER,
                 broker: Optional[str] = None, trusted_proxies: Sequence[str] = (),
                 **limits: Any) -> None:
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
        self._signal_handlers: Dict[str, list] = {}
        self._handlers: Dict[str, _Entry] = {}
        self._paths: List[str] = []  # longest first
        self._extensions = _default_extensions()
        self._listeners: List[socket.socket] = []
        self._tls = TlsConfig()
        self._https_listeners: set = set()  # listening sockets that serve TLS
        self._loop: Optional[Loop] = None
        self._http: set = set()
        self._websockets: set = set()
        # The URI of the last WebSocket upgraded, shared by the next ones to the same URL
        # (see _websocket_handshake).
        self._last_ws_uri: Optional[tuple] = None
        # The WebSocket upgrade head the connections' parsers share (http.UpgradeHeads),
        # and what the checks of the last upgrade by a shared head found, for the next
        # ones: (head, handler, subprotocol, Origin). See _websocket_handshake.
        self._upgrade_heads = UpgradeHeads()
        self._upgrade_answer: Optional[tuple] = None
        self._accepting = False
        self._stopping = False
        self._running = False
        self._worker_id = 0
        self._sweep: Optional[Handle] = None
        self._stop_deadline = 0.0
        self._accept_paused_until = 0.0
        self._gate: Optional[AcceptGate] = None  # a pre-fork worker's balancer
        self._pubsub = PubSub(self)  # publish/subscribe (SPEC 9); each worker has its own
        self._auth_domains: List[AuthDomain] = []
        # The broker (SPEC 9): checked now, connected in each serving process (_serve).
        self._broker_url = parse_redis_url(broker) if broker is not None else None
        self._broker_origin: Optional[bytes] = None  # drawn in run(): one per server process
        self._broker: Optional[RedisBroker] = None
        self._trusted_proxies = TrustedProxies(trusted_proxies)
        # One bound method shared by every WebSocket (64 bytes each otherwise).
        self._on_websocket_closed = self._websocket_closed
        self._owner = _ConnectionOwner(self, self._lookup, self._websocket_handshake,
                                       self._connection_closed, self._access_log,
                                       self._authenticate,
                                       self._client_address if self._trusted_proxies
                                       else _peer_address,
                                       self._signal_handlers, self._auth_domains,
                                       self._upgrade_heads)

    def _handlers_map(self) -> Dict[str, list]:
        return self._signal_handlers

    def _signal_callback_failed(self, name: str, exc: Exception) -> None:
        if name == "worker-started":
            raise exc  # a process whose setup failed must not serve (see the class docstring)

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
        self._upgrade_answer = None  # not to hold the old handler
        entry.websocket = WebsocketHandler(callback, user_data, destroy, origin, protocols)

    def remove_handler(self, path: Optional[str]) -> None:
        """Remove the early, normal and WebSocket handlers at exactly ``path``."""
        entry = self._handlers.pop(_normalize_path(path), None)
        if entry is None:
            return
        self._paths = sorted(self._handlers, key=len, reverse=True)
        self._upgrade_answer = None  # not to hold the handler
        for handler in (entry.early, entry.normal, entry.websocket):
            _destroy(handler)

    def _lookup(self, path: str) -> Optional[_Entry]:
        # libsoup's path map: longest registered prefix, compared as plain strings. A path
        # that is not absolute ("*", CONNECT's host:port) matches nothing, as in libsoup.
        if not path.startswith("/"):
            return None
        # A path registered as is is its own longest prefix: one lookup (most requests name
        # a handler's path exactly, "/echo"), not a scan of the prefixes longest first.
        entry = self._handlers.get(path)
        if entry is not None:
            return entry
        for prefix in self._paths:
            if path.startswith(prefix):
                return self._handlers[prefix]
        return self._handlers.get("/")

    # -- auth domains (SPEC 10) ------------------------------------------------------
    def add_auth_domain(self, domain: AuthDomain) -> None:
        """Check requests against ``domain`` (an ``AuthDomainBasic`` or
        ``AuthDomainDigest``) when their headers are read, before the early handler. A
        covered request that no domain accepts is answered ``401`` with each covering
        domain's challenge; domains are tried in the order they were added."""
        if domain not in self._auth_domains:
            self._auth_domains.append(domain)

    def remove_auth_domain(self, domain: AuthDomain) -> None:
        """Stop checking requests against ``domain`` (no-op if it was not added)."""
        if domain in self._auth_domains:
            self._auth_domains.remove(domain)

    def _authenticate(self, msg: ServerMessage) -> bool:
        domains = self._auth_domains
        return not domains or authenticate(domains, msg)

    def add_websocket_extension(self, extension_type: type) -> None:
        """Offer ``extension_type`` to every WebSocket handler (no-op if already there)."""
        if extension_type not in self._extensions:
            self._extensions.append(extension_type)

    def remove_websocket_extension(self, extension_type: type) -> None:
        """Stop offering ``extension_type``."""
        if extension_type in self._extensions:
            self._extensions.remove(extension_type)

    # -- listening ----------------------------------------------------------------------
    def listen(self, address: Tuple[str, int], options: int = 0) -> None:
        """Bind and listen on ``(host, port)`` now; port 0 picks a free port. IPv6 hosts work.

        ``options``: :class:`ListenOptions`; ``HTTPS`` serves TLS (``ValueError`` if no
        certificate is set)."""
        self._check_listen_options(options)
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
        self.listen_socket(sock, options)

    def listen_local(self, port: int, options: int = 0) -> None:
        """Listen on the loopback addresses: 127.0.0.1 and, where the host has IPv6, ::1
        (on the same port), as libsoup does. ``options``: :class:`ListenOptions`
        (``IPV4_ONLY``/``IPV6_ONLY`` keep one of the two)."""
        self._listen_both("127.0.0.1", "::1", port, options)

    def listen_all(self, port: int, options: int = 0) -> None:
        """Listen on every address: 0.0.0.0 and, where the host has IPv6, :: (same port).
        ``options`` as :meth:`listen_local`."""
        self._listen_both("0.0.0.0", "::", port, options)

    def _listen_both(self, ipv4: str, ipv6: str, port: int, options: int) -> None:
        self._check_listen_options(options)
        if options & ListenOptions.IPV6_ONLY:
            self.listen((ipv6, port), options)
            return
        self.listen((ipv4, port), options)
        if options & ListenOptions.IPV4_ONLY:
            return
        port = self._listeners[-1].getsockname()[1]  # port 0: the IPv6 side takes the same
        if socket.has_ipv6:
            try:
                self.listen((ipv6, port), options)
            except OSError as exc:
                log.debug("no IPv6 listener on [%s]:%d: %s", ipv6, port, exc)

    def _check_listen_options(self, options: int) -> None:
        options = ListenOptions(options)
        if options & ListenOptions.IPV4_ONLY and options & ListenOptions.IPV6_ONLY:
            raise ValueError("IPV4_ONLY and IPV6_ONLY exclude each other")
        if options & ListenOptions.HTTPS and self._tls.context is None:
            raise ValueError("ListenOptions.HTTPS needs a certificate: call "
                             "set_tls_certificate() first")

    def listen_socket(self, sock: socket.socket, options: int = 0) -> None:
        """Serve on an already listening socket (``options``: ``ListenOptions.HTTPS`` for TLS)."""
        self._check_listen_options(options)
        sock.setblocking(False)
        if options & ListenOptions.HTTPS:
            self._https_listeners.add(sock)
        self._listeners.append(sock)
        if self._accepting and self._loop is not None:
            self._loop.add_exclusive_reader(sock, self._make_acceptor(sock))

    def get_listeners(self) -> List[socket.socket]:
        """The listening sockets."""
        return list(self._listeners)

    def get_uris(self) -> List[str]:
        """``http://host:port/`` (``https://`` for a TLS listener) for each listening
        socket (the real port after port 0)."""
        uris = []
        for sock in self._listeners:
            host, port = sock.getsockname()[:2]
            if ":" in host:
                host = "[%s]" % host
            scheme = "https" if sock in self._https_listeners else "http"
            uris.append("%s://%s:%d/" % (scheme, host, port))
        return uris

    # -- TLS (SPEC section 8) -----------------------------------------------------------
    def set_tls_certificate(self, certificate: Any, keyfile: Optional[str] = None,
                            password: Optional[Any] = None) -> None:
        """The server's certificate: PEM paths (``certfile``, ``keyfile`` if the key is
        apart, ``password`` if it is encrypted), or a server-side ``ssl.SSLContext``.
        Files are read now (``OSError``/``ssl.SSLError`` here, not at the first client).
        Listeners opened with ``ListenOptions.HTTPS`` then serve TLS 1.2+ with ALPN
        ``http/1.1`` and no renegotiation (see ``tls.create_server_context``)."""
        self._tls.set_certificate(certificate, keyfile, password)

    def get_tls_certificate(self) -> Optional[Any]:
        """The server-side ``ssl.SSLContext`` in use (``None`` without a certificate)."""
        return self._tls.context

    def set_tls_database(self, cafile: Optional[str]) -> None:
        """CA certificates (a PEM file) that client certificates must chain to."""
        self._tls.set_database(cafile)

    def get_tls_database(self) -> Optional[str]:
        """The CA file given to :meth:`set_tls_database`, or ``None``."""
        return self._tls.cafile

    def set_tls_auth_mode(self, mode: TlsAuthMode) -> None:
        """Ask clients for a certificate: ``TlsAuthMode.NONE`` (default), ``REQUESTED``
        (a client without one is served; a bad one is refused), ``REQUIRED``."""
        self._tls.set_auth_mode(mode)

    def get_tls_auth_mode(self) -> TlsAuthMode:
        """The :class:`TlsAuthMode` in use."""
        return self._tls.auth_mode

    def is_https(self) -> bool:
        """True once a TLS certificate is set (as libsoup's ``soup_server_is_https``)."""
        return self._tls.context is not None

    def reload_tls_certificate(self) -> bool:
        """Read the certificate files again (the pre-fork master does this on SIGHUP,
        before replacing the workers). Broken files: the certificate in use is kept
        and the error logged; returns False."""
        return self._tls.reload()

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

    def call_soon_threadsafe(self, callback: Callable[..., Any], *args: Any) -> Handle:
        """Like :meth:`call_soon`, but callable from any thread: the loop is woken up.

        The one safe way for another thread to act on a running server, e.g.
        ``server.call_soon_threadsafe(server.stop)`` to stop a :meth:`run` that serves
        in a thread. Create the loop first (any ``call_soon``/``call_later`` from the
        thread that will call :meth:`run`, or from before starting it), so that two
        threads never create it at once.
        """
        loop = self._get_loop()
        handle = loop.call_soon(callback, *args)  # deque.append: atomic in CPython
        loop.wakeup()
        return handle

    # -- publish/subscribe (SPEC 9) ------------------------------------------------------------
    def publish(self, topic: str, data: Any, exclude: Optional[WebsocketConnection] = None
                ) -> None:
        """Send ``data`` to every WebSocket subscribed to ``topic`` (``conn.subscribe``) in
        every worker of this server: ``str`` as a TEXT message, ``bytes`` as BINARY.

        ``exclude``: a connection that must not receive it (the sender). Never blocks;
        delivery is at most once, in publication order per worker and topic. Also runs
        the :meth:`subscribe` listeners of ``topic`` in every worker. With a ``broker``,
        also in every other server attached to it (exactly once each; dropped for them
        while Redis is unreachable, see ``broker.py``). ``TypeError`` /
        ``ValueError`` for a topic that is not 1-1024 bytes of text or data over 16 MiB.
        """
        self._pubsub.publish(topic, data, exclude)

    def subscribe(self, topic: str, callback: Callable[..., Any], *user_data: Any) -> Subscription:
        """Call ``callback(server, topic, data, *user_data)`` for each publication on
        ``topic``, in this process: registered before :meth:`run`, in every worker.
        Returns a handle; ``handle.cancel()`` stops it."""
        return self._pubsub.add_listener(topic, callback, user_data)

    def get_worker_id(self) -> int:
        """The worker this code runs in: 1..N under ``run(workers=N)``, 0 otherwise."""
        return self._worker_id

    # -- running ----------------------------------------------------------------------------
    def run(self, workers: int = 0) -> None:
        """Serve until stopped. ``workers=0``: in this process; ``N``: N forked workers."""
        if not self._listeners:
            raise RuntimeError("call listen(), listen_local() or listen_all() before run()")
        # Before the fork: the master's workers share it (see broker.py, exactly once).
        self._broker_origin = new_origin()
        if workers:
            from .prefork import Arbiter
            Arbiter(self, workers).run()
        else:
            self.emit("worker-started")
            self._serve(install_signals=True)

    def _run_worker(self, worker_id: int, gate: AcceptGate,
                    signals: Mapping[int, Callable[[int], None]],
                    on_ready: Callable[[], None], relay: Any = None) -> None:
        """Serve as pre-fork worker ``worker_id``, in the forked child, until stopped.

        The one entry point of ``prefork.WorkerProcess`` (the hand-over master → worker):
        resets this process's share of the server — a fresh loop (the master's epoll set
        must not be shared) that adopts the callbacks scheduled before the fork, no
        connections, not stopping — takes ``gate`` as the accept gate, runs ``signals``
        (signum → ``callback(signum)``) from the loop in place of the single-process
        handlers, joins the publish/subscribe ``relay`` (a ``relay.RelaySlot``, if
        given), emits ``worker-started``, calls ``on_ready()`` and serves.
        """
        inherited = self._loop
        self._loop = Loop()
        if inherited is not None:
            self._loop.adopt(inherited)
            inherited.close()
        self._worker_id = worker_id
        self._http = set()
        self._websockets = set()
        self._accepting = self._stopping = self._running = False
        self._sweep = None
        self._accept_paused_until = 0.0
        self._gate = gate
        gate.attach(self._update_accepting)
        for signum, callback in signals.items():
            self._loop.add_signal_handler(signum, callback)
        if relay is not None:
            self._pubsub.attach_relay(relay.start(self._loop, self._pubsub.deliver_record))
        self.emit("worker-started")
        on_ready()
        self._serve(install_signals=False)

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
        self._start_broker()
        try:
            loop.run()
        finally:
            self._running = False
            self._stop_accepting()
            self._stop_broker()
            for conn in list(self._http) + list(self._websockets):
                conn.transport.abort()
            if install_signals:
                loop.remove_signal_handlers()

    def _start_broker(self) -> None:
        """With ``broker=``: attach this process to Redis (each worker has its own)."""
        if self._broker_url is None:
            return
        if self._broker_origin is None:
            self._broker_origin = new_origin()
        self._broker = RedisBroker(self._loop, self._broker_url, self._broker_origin,
                                   self._pubsub)
        self._pubsub.attach_broker(self._broker)
        self._broker.start()

    def _stop_broker(self) -> None:
        broker, self._broker = self._broker, None
        if broker is not None:
            self._pubsub.attach_broker(None)
            broker.close()

    def get_broker(self) -> Optional[str]:
        """The broker's URL as given to ``Server(broker=...)`` (password hidden), or None."""
        return self._broker_url.display() if self._broker_url is not None else None

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
        self._https_listeners.clear()
        for path in list(self._handlers):
            self.remove_handler(path)

    # -- accepting -----------------------------------------------------------------------------
    def _make_acceptor(self, listener: socket.socket) -> Callable[[int], None]:
        # Hot path: what every connection from this listener shares, looked up once here
        # (socket.family converts to an enum member on every read: ~0.35 us).
        acceptor = _Acceptor(listener, listener in self._https_listeners)
        # After each accept, a poll() of this listener alone says whether another connection
        # waits (~0.3 us): cheaper than the accept() failing with EAGAIN that used to end
        # every wakeup (~4 us, most of it the BlockingIOError).
        backlog = select.poll()
        backlog.register(listener, select.POLLIN)
        waiting = backlog.poll

        def on_readable(events: int) -> None:
            self._accept(listener, waiting, acceptor)
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
        """The pre-fork worker's gate, if any: may this worker take more connections now?"""
        return self._gate is None or self._gate.may_accept()

    def _accept(self, listener: socket.socket, waiting: Callable[[int], list],
                acceptor: "_Acceptor") -> None:
        """Accept the connections waiting on ``listener``, at most ``ACCEPT_PER_WAKEUP``;
        ``waiting(0)``: a poll of the listener, empty once none is left."""
        # Hot path (every connection): socket.accept()'s own work, without what it redoes
        # per call: the listener's family and type converted to enum members, and the
        # timeout test (a non-blocking listener: none). ~1.1 us less per connection. A
        # listener whose class has its own accept() (a subclass) gets that called.
        socket_args = acceptor.socket_args
        if socket_args is not None:
            # reach-in: socket.socket's own first step of accept() (the stdlib's, stable since 3.3).
            raw_accept = listener._accept
            family, kind, proto = socket_args
        for _ in range(ACCEPT_PER_WAKEUP):
            try:
                if socket_args is not None:
                    fd, addr = raw_accept()
                    sock = socket.socket(family, kind, proto, fd)
                else:
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
            self._new_connection(sock, addr, acceptor)
            if not self._accepting:
                return
            # _connection_count() and _may_accept(), inlined (hot path: every connection).
            gate = self._gate
            if (len(self._http) + len(self._websockets) >= self.max_connections
                    or (gate is not None and not gate.may_accept())):
                self._update_accepting()
                return
            if not waiting(0):
                return

    def _new_connection(self, sock: socket.socket, addr: Any, acceptor: "_Acceptor") -> None:
        sock.setblocking(False)
        if acceptor.set_nodelay:
            acceptor.nodelay(sock)
        local = acceptor.local
        if local is None:
            try:
                local = sock.getsockname()
            except OSError:
                local = None
        tls = acceptor.tls
        if tls:
            conn = HTTPConnection(self._owner, None, addr, local, scheme="https")
            conn.transport = TLSTransport(self._loop, sock, conn, self._tls.context, addr)
        else:
            conn = HTTPConnection(self._owner, None, addr, local)
            conn.transport = SocketTransport(self._loop, sock, conn)
        self._http.add(conn)
        if self._gate is not None:
            self._gate.connections_changed(len(self._http) + len(self._websockets))

    def _connection_closed(self, conn: Any) -> None:
        self._http.discard(conn)
        self._websockets.discard(conn)
        if self._gate is not None:
            self._gate.connections_changed(len(self._http) + len(self._websockets))
        if self._stopping:
            self._check_stopped(time.monotonic())
        elif not self._accepting:
            self._update_accepting()

    # -- WebSocket upgrade: the policy; the handover is HTTPConnection.take_over() ------------
    def _websocket_handshake(self, conn: HTTPConnection, msg: ServerMessage,
                             handler: WebsocketHandler) -> bool:
        """Check the handshake; on success write the 101 and hand over. Returns True if upgraded."""
        headers = msg.get_request_headers()
        req = conn.request  # (None only if the connection no longer has the request)
        shared = req.shared_head if req is not None else None
        answer = self._upgrade_answer
        key = None
        if (shared is not None and answer is not None and answer[0] is shared
                and answer[1] is handler and headers is req.headers):
            key = shared.key_in(headers)
        if key is not None:
            # Hot path: an upgrade by the head of one checked in full to the same handler
            # (http.UpgradeHeads: the same bytes but for the key, one client program's),
            # whose headers nothing read or changed since they were parsed (key_in). Every
            # check server_handshake() makes has the same outcome, and no extension was
            # offered (negotiating one makes each connection its own): only the accept is
            # new. No field is split, indexed or looked up.
            protocol, origin, extensions = answer[2], answer[3], ()
            fields = response_fields(key, protocol)
        else:
            # Whether the checks below see the head as parsed (then what they find holds
            # for its next repetitions), or headers that someone read or changed first.
            as_parsed = (req is not None and headers is req.headers
                         and headers.parsed_fields() is not None)
            try:
                protocol, extensions, fields = server_handshake(
                    msg.get_method(), msg.get_http_version(), headers, handler.origin,
                    handler.protocols, self._extensions)
            except HandshakeError as exc:
                _refuse_handshake(msg, exc)
                return False
            origin = headers.get_one("Origin")
            if as_parsed:
                head = shared
                if head is None and self._upgrade_heads.missed():
                    head = conn.upgrade_head()
                if head is not None and headers.get_list("Sec-WebSocket-Extensions") is None:
                    self._upgrade_answer = (head, handler, protocol, origin)
            if extensions:
                # The handshake's own values need no injection check (~0.6 us each):
                # constants, the base64 accept key, and a protocol taken from the client's
                # parsed offer. The extension answer comes from extension classes, which
                # may be third-party.
                fields = [(name, checked_value(value) if name == "Sec-WebSocket-Extensions"
                           else value) for name, value in fields]
        msg.set_status(101)
        # The callback runs once the 101 is written (SPEC 1): take_over() flushes it.
        transport, leftover = conn.take_over(fields)
        self._http.discard(conn)
        if transport.is_closing():
            return True  # the peer left during the 101: the request was aborted
        uri = msg.get_uri()
        # Idle memory: the connections to one URL (most of them) share one URI tuple and
        # its strings, ~200 bytes less per connection than a tuple, host and path each.
        ws_uri = _websocket_uri(uri)
        if ws_uri == self._last_ws_uri:
            ws_uri = self._last_ws_uri
        else:
            self._last_ws_uri = ws_uri
        # Hot path: the arguments by position (~0.25 us less than by keyword).
        ws = WebsocketConnection(transport, _SERVER, self._loop, ws_uri,
                                 origin, protocol, extensions,
                                 self.close_timeout, self.write_buffer_limit,
                                 self._on_websocket_closed, msg.get_remote_address())
        ws.attach_pubsub(self._pubsub)
        self._websockets.add(ws)
        transport.set_protocol(ws)
        transport.cork_reads = True
        self._access_log(msg, 0)
        if self._signal_handlers:  # else nobody is connected (no call: hot path)
            self.emit("request-finished", msg)
        callback = handler.callback
        last_callback.value = callback
        try:
            callback(self, msg, uri.path, ws, handler.user_data)
        except Exception:
            log.exception("exception in WebSocket handler %r", callback)
            ws.close(1011, "handler error")
        if leftover:
            ws.data_received(leftover)
        transport.resume_reading()
        return True

    def _client_address(self, remote: Any, headers: Any) -> Any:
        """The client of a request (SPEC 1b): behind a trusted proxy, from its headers."""
        if not self._trusted_proxies.is_trusted(remote[0] if remote else None):
            return remote
        return self._trusted_proxies.client_address(
            remote, headers.get_list("Forwarded"), headers.get_list("X-Forwarded-For"))

    def get_trusted_proxies(self) -> List[str]:
        """The ``trusted_proxies`` networks, as strings (e.g. ``["10.0.0.0/8"]``)."""
        return [str(network) for network in self._trusted_proxies.networks]

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


class _Acceptor:
    """What the connections accepted from one listener share, worked out once: whether
    it is TLS, the family, type and protocol each accepted socket is made with
    (``socket_args``), the local address when the listener is bound to one address (each
    connection's own ``getsockname()`` would give the same), and whether TCP_NODELAY
    still has to be set on each connection (Linux copies the listener's to the
    connections it accepts: checked on the first one, then no ``setsockopt`` per
    connection)."""

    __slots__ = ("tls", "local", "set_nodelay", "_probe", "socket_args")

    def __init__(self, listener: socket.socket, tls: bool) -> None:
        self.tls = tls
        # What socket.accept() makes each accepted socket with, read once (see _accept);
        # None for a listener with an accept() of its own.
        self.socket_args: Optional[Tuple[int, int, int]] = (
            (listener.family, listener.type, listener.proto)
            if type(listener).accept is socket.socket.accept else None)
        self.local: Any = None
        tcp = listener.family in (socket.AF_INET, socket.AF_INET6)
        self.set_nodelay = tcp
        self._probe = tcp  # the first connection says whether the listener's is inherited
        if not tcp:
            return
        try:
            listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            local = listener.getsockname()
        except OSError:
            return
        address = ipaddress.ip_address(local[0].split("%", 1)[0])
        mapped = getattr(address, "ipv4_mapped", None)
        if not (mapped or address).is_unspecified:
            self.local = local

    def nodelay(self, sock: socket.socket) -> None:
        """Small writes go out at once (no Nagle delay) on ``sock``, a new connection."""
        try:
            if self._probe:
                self._probe = False
                if sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY):
                    self.set_nodelay = False  # inherited from the listener
                    return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def _refuse_handshake(msg: ServerMessage, exc: HandshakeError) -> None:
    """Answer a failed handshake: its status, fields and message, and the connection closes."""
    log.info("WebSocket handshake refused for %s: %d %s",
             msg.get_remote_host(), exc.status, exc.message)
    msg.set_status(exc.status)
    response_headers = msg.get_response_headers()
    for name, value in exc.headers:
        response_headers.replace(name, value)
    response_headers.replace("Connection", "close")  # the connection closes after it
    msg.set_response("text/plain; charset=utf-8", exc.message + "\n")


def _websocket_uri(uri: SplitResult) -> tuple:
    # The connection's URI names the WebSocket: ws:// or, over TLS, wss:// (SPEC 8). A
    # plain tuple: the connection makes it a SplitResult if someone asks (hot path).
    return ("wss" if uri.scheme == "https" else "ws",) + uri[1:]


def _peer_address(remote: Any, headers: Any) -> Any:
    # Without trusted proxies: the socket's peer, whatever the headers say.
    return remote


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
