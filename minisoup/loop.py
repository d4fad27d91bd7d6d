"""The event loop: one ``selectors`` loop per process, timers, signals, buffered sockets.

No threads. Everything that happens in a worker is a callback run from
:meth:`Loop.run`: socket readiness, timers, POSIX signals (delivered through a
wake-up socket so they interrupt ``select``). :class:`SocketTransport` wraps one
connected socket with a write buffer and drives a *protocol* object with the
asyncio-like methods ``data_received(data)``, ``eof_received()``,
``connection_lost(exc)`` and, optionally, ``write_drained()`` and the pair
``get_buffer()`` / ``buffer_updated(nbytes)`` (receive straight into the
protocol's memory when ``get_buffer`` returns a view rather than None). Those
interfaces are declared in :mod:`minisoup.interfaces`: :class:`SocketTransport` is a
``Transport``, :class:`Loop` a ``Clock``, :class:`Handle` a ``TimerHandle``.
"""

import errno
import heapq
import logging
import math
import select
import selectors
import signal
import socket
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

from .interfaces import Buffer, StreamProtocol
from .signals import last_callback

log = logging.getLogger("minisoup")

READ_SIZE = 262144           # one recv(); large so a 1 MiB frame takes few calls
MAX_IOV = 64                 # buffers handed to one sendmsg()
SLOW_CALLBACK_S = 0.5        # a callback holding the loop longer than this is logged
# detach(): how long queued bytes may take to leave before the socket is handed over
# (blocking; only a client that stopped reading earlier pipelined responses makes it wait).
DETACH_FLUSH_TIMEOUT_S = 5.0
# The last bytes before a close are sent with MSG_MORE (Linux): the kernel holds a short
# last segment until shutdown() adds the FIN to it (SocketTransport._finish). One segment
# instead of two, and one wake-up of the peer fewer: ~3 us less kernel time per closing
# WebSocket (the answer to the peer's close frame; tools/bench.py handshakes) or closing
# HTTP response. Only for bytes that the close follows at once, so nothing waits on the
# flag (elsewhere, 0).
_MSG_MORE = getattr(socket, "MSG_MORE", 0)
EVENT_READ = _EVENT_READ = selectors.EVENT_READ     # for register()/modify()
EVENT_WRITE = _EVENT_WRITE = selectors.EVENT_WRITE
# What an epoll event means for selectors (as EpollSelector.select): writable unless it
# is EPOLLIN alone, readable unless it is EPOLLOUT alone (errors and hang-ups are both).
_EPOLLIN = getattr(select, "EPOLLIN", 0)
_EPOLLOUT = getattr(select, "EPOLLOUT", 0)
_NOT_EPOLLIN = ~_EPOLLIN
_NOT_EPOLLOUT = ~_EPOLLOUT
_monotonic = time.monotonic
# For Selector's register() (hot path).
_NOT_READ_WRITE = ~(_EVENT_READ | _EVENT_WRITE)
_SelectorKey = selectors.SelectorKey
_new_key = tuple.__new__  # a SelectorKey without its Python-level __new__


def _callback_name(callback: Any) -> str:
    """``module.qualname`` of a function or bound method, else its repr."""
    name = getattr(callback, "__qualname__", None)
    if name is None:
        return repr(callback)
    module = getattr(callback, "__module__", None)
    return "%s.%s" % (module, name) if module else name


class Handle:
    """A scheduled callback; :meth:`cancel` prevents it from running."""

    __slots__ = ("when", "_callback", "_args", "cancelled")

    def __init__(self, when: float, callback: Callable, args: tuple) -> None:
        self.when = when
        self._callback = callback
        self._args = args
        self.cancelled = False

    def cancel(self) -> None:
        """Do not run the callback (no effect once it has run)."""
        self.cancelled = True
        self._callback = self._args = None

    def take(self) -> Optional[Tuple[Callable, tuple]]:
        """For the scheduler whose handle this is, when it is due: ``(callback, args)``
        to run, or None if it was cancelled. Either way the handle is done afterwards
        (cancelled, its references dropped), so it runs at most once. The scheduler
        runs the callback itself, so that errors and slow callbacks are reported
        under the callback's own name."""
        if self.cancelled:
            return None
        entry = (self._callback, self._args)
        self.cancelled = True
        self._callback = self._args = None
        return entry

    def __lt__(self, other: "Handle") -> bool:
        return self.when < other.when


class Selector(selectors.DefaultSelector):  # type: ignore[misc, valid-type]
    """``selectors.DefaultSelector`` with hot-path additions: :meth:`key_map`, its
    fd → key dict itself (``get_map()`` is a Mapping view whose ``get`` runs Python code,
    ~0.1 us per event), and, over epoll, a ``select`` doing per event only what the loop
    needs (~0.15 us less than ``EpollSelector.select``; same results) and a
    ``register``/``unregister`` of a plain socket in one step (~1.4 us less per
    connection; everything else, errors included, goes the stdlib's way)."""

    def key_map(self) -> Dict[int, selectors.SelectorKey]:
        """The registered keys by file descriptor (read-only for callers)."""
        return self._fd_to_key

    def register_exclusive(self, sock: socket.socket, data: Any) -> None:
        """``register(sock, EVENT_READ, data)``, with ``EPOLLEXCLUSIVE`` over epoll where
        Linux has it (a socket shared by processes: one event wakes one of them)."""
        self.register(sock, _EVENT_READ, data)
        exclusive = getattr(select, "EPOLLEXCLUSIVE", 0)
        poller = getattr(self, "_selector", None)  # EpollSelector's epoll object
        if exclusive and isinstance(self, selectors.EpollSelector) and poller is not None:
            # EPOLL_CTL_MOD cannot add EPOLLEXCLUSIVE: the descriptor is added anew.
            poller.unregister(sock.fileno())
            poller.register(sock.fileno(), _EPOLLIN | exclusive)

    if selectors.DefaultSelector is getattr(selectors, "EpollSelector", None):
        # Hot path (every connection registers its socket and unregisters it at the
        # close): for a plain socket.socket, the work of the stdlib's register() and
        # unregister() (two levels of Python each, the fd found through
        # _fileobj_lookup) in one, ~1.4 us less per connection. Anything else, or
        # anything that is an error (bad events, a closed socket, an fd registered
        # twice or not at all), takes the stdlib's path, which raises as it does.
        def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
            if fileobj.__class__ is not socket.socket or events & _NOT_READ_WRITE or not events:
                return super().register(fileobj, events, data)
            fd = fileobj.fileno()
            keys = self._fd_to_key
            if fd < 0 or fd in keys:
                return super().register(fileobj, events, data)
            key = keys[fd] = _new_key(_SelectorKey, (fileobj, fd, events, data))
            try:
                self._selector.register(fd, (_EPOLLIN if events & _EVENT_READ else 0)
                                        | (_EPOLLOUT if events & _EVENT_WRITE else 0))
            except BaseException:
                del keys[fd]
                raise
            return key

        def unregister(self, fileobj: Any) -> selectors.SelectorKey:
            if fileobj.__class__ is not socket.socket:
                return super().unregister(fileobj)
            fd = fileobj.fileno()
            key = self._fd_to_key.pop(fd, None) if fd >= 0 else None
            if key is None:
                return super().unregister(fileobj)
            try:
                self._selector.unregister(fd)
            except OSError:
                pass
            return key

        def select(self, timeout: Optional[float] = None) -> List[Tuple[Any, int]]:
            if timeout is None:
                timeout = -1
            elif timeout <= 0:
                timeout = 0
            else:
                # epoll_wait() counts milliseconds: round up, to wait at least timeout.
                timeout = math.ceil(timeout * 1e3) * 1e-3
            keys = self._fd_to_key
            try:
                polled = self._selector.poll(timeout, max(len(keys), 1))
            except InterruptedError:
                return []
            get = keys.get
            ready = []
            for fd, event in polled:
                key = get(fd)
                if key is not None:
                    ready.append((key, ((_EVENT_WRITE if event & _NOT_EPOLLIN else 0)
                                        | (_EVENT_READ if event & _NOT_EPOLLOUT else 0))
                                  & key.events))
            return ready


class Loop:
    """A single-threaded event loop over ``selectors.DefaultSelector`` (:class:`Selector`)."""

    def __init__(self) -> None:
        self._selector = Selector()
        self._keys = self._selector.key_map()  # fd → the key registered now
        self._ready: Deque[Handle] = deque()
        self._timers: List[Handle] = []
        self._stopping = False
        self._signal_handlers: Dict[int, Callable[[int], None]] = {}
        self._pending_signals: List[int] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, _EVENT_READ, self._on_wakeup)
        self.slow_callback_s = SLOW_CALLBACK_S
        # Hot path: one receive buffer for every socket of this (single-threaded) loop.
        # sock.recv(READ_SIZE) mallocs a fresh 256 KiB bytes per call; unless the heap has
        # that much free at its top, glibc serves it by mmap, shrinks it by mremap and
        # frees it by munmap: three syscalls per read (strace), and on a VM the munmap's
        # TLB shootdown is dear (tools/bench.py: 64-byte echo 37k -> 103k msg/s).
        self._read_buffer = memoryview(bytearray(READ_SIZE))

    time = staticmethod(_monotonic)

    @property
    def read_buffer(self) -> memoryview:
        """The receive buffer (``READ_SIZE`` bytes) shared by every transport of this loop.

        Safe to share because the loop runs one callback at a time: a transport reads
        into it and copies out what arrived before the next read. Its content is
        garbage outside that window."""
        return self._read_buffer

    # -- scheduling ---------------------------------------------------------
    def call_soon(self, callback: Callable[..., Any], *args: Any) -> Handle:
        """Run ``callback(*args)`` on the next loop iteration."""
        handle = Handle(0.0, callback, args)
        self._ready.append(handle)
        return handle

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Handle:
        """Run ``callback(*args)`` after ``delay`` seconds; returns a cancellable handle."""
        handle = Handle(_monotonic() + max(0.0, delay), callback, args)
        heapq.heappush(self._timers, handle)
        return handle

    def adopt(self, old: "Loop") -> None:
        """Take over the callbacks scheduled on ``old`` and not yet run (``old`` keeps none).

        A pre-fork worker's fresh loop adopts those that the app scheduled on the master's
        loop before the fork (``server.call_later`` at setup), so they run in every worker.
        """
        # reach-in: another Loop's queues; same class, the one place they change hands.
        ready, timers = old._ready, old._timers
        for handle in ready:
            if not handle.cancelled:
                self._ready.append(handle)
        for handle in timers:
            if not handle.cancelled:
                heapq.heappush(self._timers, handle)
        ready.clear()
        timers.clear()

    # -- file descriptors ---------------------------------------------------
    def add_reader(self, sock: socket.socket, callback: Callable[[int], None]) -> None:
        """Call ``callback(events)`` whenever ``sock`` is readable."""
        self._selector.register(sock, _EVENT_READ, callback)

    def add_exclusive_reader(self, sock: socket.socket, callback: Callable[[int], None]) -> None:
        """Like :meth:`add_reader`, but with ``EPOLLEXCLUSIVE`` where Linux offers it.

        Used for a listening socket shared by pre-forked workers: one new
        connection wakes one idle worker instead of all of them (the thundering
        herd). Elsewhere it is a plain reader.
        """
        self._selector.register_exclusive(sock, callback)

    def remove_reader(self, sock: socket.socket) -> None:
        """Stop watching ``sock`` (no error if it was not watched)."""
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            pass

    def register(self, sock: socket.socket, events: int, callback: Callable[[int], None]) -> None:
        """Call ``callback(mask)`` when ``sock`` is ready for ``events``
        (``selectors.EVENT_READ | EVENT_WRITE``); ``KeyError`` if already watched."""
        self._selector.register(sock, events, callback)

    def modify(self, sock: socket.socket, events: int, callback: Callable[[int], None]) -> None:
        """Change the events (and callback) of a ``sock`` given to :meth:`register`."""
        self._selector.modify(sock, events, callback)

    # -- signals ------------------------------------------------------------
    def add_signal_handler(self, signum: int, callback: Callable[[int], None]) -> None:
        """Run ``callback(signum)`` from the loop when the process receives ``signum``."""
        self._signal_handlers[signum] = callback
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signum, self._on_signal)

    def remove_signal_handlers(self) -> None:
        """Restore the default disposition of every signal this loop handled."""
        for signum in list(self._signal_handlers):
            try:
                signal.signal(signum, signal.SIG_DFL)
            except (OSError, ValueError):
                pass
        self._signal_handlers.clear()
        try:
            signal.set_wakeup_fd(-1)
        except ValueError:
            pass

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Runs between bytecodes: only record; the wake-up fd makes select() return.
        self._pending_signals.append(signum)

    def _on_wakeup(self, events: int) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        self._dispatch_signals()

    def _dispatch_signals(self) -> None:
        while self._pending_signals:
            signum = self._pending_signals.pop(0)
            callback = self._signal_handlers.get(signum)
            if callback is not None:
                self._run_callback(callback, (signum,))

    def wakeup(self) -> None:
        """Make a blocked :meth:`run` iteration return (safe from a signal handler)."""
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    # -- running ------------------------------------------------------------
    def stop(self) -> None:
        """Make :meth:`run` return after the current iteration."""
        self._stopping = True

    def run(self) -> None:
        """Run until :meth:`stop` is called (a stop requested before ``run`` makes it return
        at once, so a stop from another thread cannot be lost in a race with the start)."""
        select = self._selector.select
        ready = self._ready
        last = last_callback
        timers = self._timers
        run_callback = self._run_callback
        while not self._stopping:
            timeout: Optional[float]
            if ready:
                timeout = 0.0
            elif timers:
                timeout = max(0.0, timers[0].when - _monotonic())
            else:
                timeout = None
            try:
                events = select(timeout)
            except InterruptedError:
                events = []
            if events:
                # Hot path: _run_callback inlined (no frame, no argument tuple per event),
                # and one clock read per event: each callback's end is the next one's start.
                # A callback may unwatch another socket of the same batch, close it, and
                # watch a new one that gets the same descriptor number: that socket's
                # event must reach neither the callback removed nor the new socket's.
                # Only a key still registered as it was is run; a key replaced by
                # modify() is skipped too, harmlessly (epoll is level-triggered: its
                # event comes back at the next select).
                keys = self._keys
                slow = self.slow_callback_s
                start = _monotonic()
                for key, mask in events:
                    if keys.get(key.fd) is not key:
                        continue
                    callback = key.data
                    last.value = None
                    try:
                        callback(mask)
                    except Exception:
                        log.exception("unhandled exception in loop callback %r", callback)
                    end = _monotonic()
                    if end - start > slow:
                        self._slow_callback(callback, end - start)
                    start = end
            if self._pending_signals:
                self._dispatch_signals()
            if timers:
                now = _monotonic()
                while timers and timers[0].when <= now:
                    handle = heapq.heappop(timers)
                    if not handle.cancelled:
                        ready.append(handle)
                if len(timers) > 256:
                    self._prune_timers()
            for _ in range(len(ready)):
                # Run here rather than by a Handle method: the slow-callback warning
                # then names the scheduled callback.
                entry = ready.popleft().take()
                if entry is not None:
                    run_callback(*entry)
        self._stopping = False

    def _prune_timers(self) -> None:
        # Cancelled keep-alive and timeout timers would otherwise pile up in the heap.
        live = [h for h in self._timers if not h.cancelled]
        if len(live) < len(self._timers) // 2:
            heapq.heapify(live)
            self._timers[:] = live

    def _run_callback(self, callback: Callable, args: tuple) -> None:
        start = _monotonic()
        last_callback.value = None
        try:
            callback(*args)
        except Exception:
            log.exception("unhandled exception in loop callback %r", callback)
        elapsed = _monotonic() - start
        if elapsed > self.slow_callback_s:
            self._slow_callback(callback, elapsed)

    def _slow_callback(self, callback: Callable, elapsed: float) -> None:
        # A socket event is only the way in: name the handler or signal callback that
        # ran last within it, which is almost always the one that blocked.
        user = last_callback.value
        log.warning("callback %s blocked the loop for %.3f s (other connections of "
                    "this worker waited)%s", _callback_name(callback), elapsed,
                    "; last handler run: %s" % _callback_name(user) if user is not None else "")

    def close(self) -> None:
        """Release the selector and wake-up sockets."""
        self.remove_signal_handlers()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()


def _unbound(protocol: Any, name: str) -> Optional[Callable[[Any], Any]]:
    """The optional method ``name`` of ``protocol`` as a function to call with the protocol,
    or None. Its class's function where it has one: a bound method kept per connection
    would cost 64 bytes for as long as the connection lives (idle WebSockets)."""
    function = getattr(type(protocol), name, None)
    if function is None:
        bound = getattr(protocol, name, None)  # an instance attribute: rare, kept bound
        if bound is None:
            return None
        return lambda _protocol: bound()
    return function


# Protocol class -> (get_buffer, write_drained) as _unbound gives them, for the classes whose
# instances cannot change the answer (no __dict__, no __getattr__, or both methods on the
# class). Hot path (twice per upgraded connection: construction and set_protocol): a class
# without one of the methods made each lookup raise and catch an AttributeError, ~0.1 us.
_class_optional: Dict[type, Tuple[Optional[Callable[[Any], Any]],
                                  Optional[Callable[[Any], Any]]]] = {}


def _optional_methods(protocol: Any) -> Tuple[Optional[Callable[[Any], Any]],
                                              Optional[Callable[[Any], Any]]]:
    """``(_unbound(protocol, "get_buffer"), _unbound(protocol, "write_drained"))``, looked
    up once per class where the instance cannot matter."""
    cls = type(protocol)
    methods = _class_optional.get(cls)
    if methods is None:
        methods = (_unbound(protocol, "get_buffer"), _unbound(protocol, "write_drained"))
        on_class = (getattr(cls, "get_buffer", None) is not None
                    and getattr(cls, "write_drained", None) is not None)
        if on_class or not (hasattr(protocol, "__dict__") or hasattr(cls, "__getattr__")
                            or cls.__getattribute__ is not object.__getattribute__):
            _class_optional[cls] = methods
    return methods


class SocketTransport:
    """A non-blocking connected socket with a write buffer, driving one protocol object.

    ``write`` never blocks: what the kernel does not take at once is queued and
    sent when the socket becomes writable. ``close`` flushes first; ``abort`` does
    not. ``shutdown_write`` sends FIN after the buffer drains and keeps reading
    (the lingering close of a failed WebSocket connection). With ``cork_reads`` set,
    the writes made while the protocol handles one read are sent together when it
    returns (``flush`` sends them earlier).
    """

    __slots__ = ("_loop", "_sock", "_protocol", "_get_buffer", "_write_drained", "_wbuf",
                 "_wsize", "_events", "_read_buffer",
                 "_closing", "_closed", "_shut_wr", "_reading", "_on_events_cb", "_corked",
                 "cork_reads", "_send_flags", "__weakref__")

    def __init__(self, loop: Loop, sock: socket.socket, protocol: StreamProtocol) -> None:
        self._loop = loop
        self._sock = sock
        self._protocol: Optional[StreamProtocol] = protocol
        # Optional protocol methods, looked up once (a missing attribute costs an exception).
        self._get_buffer, self._write_drained = _optional_methods(protocol)
        self._wbuf: Optional[Deque[Buffer]] = None  # created on the first short write
        self._wsize = 0
        self._closing = False
        self._closed = False
        self._shut_wr = False
        self._reading = True
        self._events = _EVENT_READ
        self._corked = False
        # The flags of each send: _MSG_MORE once what is sent is the last before the close
        # (close() with bytes queued, write_last()), else 0.
        self._send_flags = 0
        # Cork the writes made while handling each read (see _on_read). Worth it where one
        # read carries many small messages (WebSocket frames); an HTTP request and its one
        # response would only pay for the bookkeeping, so the server turns it on at the upgrade.
        self.cork_reads = False
        # Hot path: bound once here, so that a read costs no lookup through the loop.
        self._read_buffer = loop.read_buffer
        self._on_events_cb = self._on_events
        loop.register(sock, _EVENT_READ, self._on_events_cb)

    # -- queries --------------------------------------------------------------
    def get_write_buffer_size(self) -> int:
        """Bytes queued and not yet taken by the kernel."""
        return self._wsize

    def is_closing(self) -> bool:
        """True once ``close``/``abort`` was called or the connection was lost."""
        return self._closing or self._closed

    def set_protocol(self, protocol: StreamProtocol) -> None:
        """Hand the byte stream to another protocol (the WebSocket upgrade)."""
        self._protocol = protocol
        self._get_buffer, self._write_drained = _optional_methods(protocol)

    def get_socket(self) -> socket.socket:
        """The connected socket (to inspect it; the transport still owns it)."""
        return self._sock

    def detach(self) -> socket.socket:
        """Give the socket away (``ServerMessage.steal_connection``): what is queued is sent
        first (blocking, at most ``DETACH_FLUSH_TIMEOUT_S``; whatever is left then is
        dropped), the loop stops watching the socket, and the transport is done with
        it without closing it and without telling its protocol. The socket stays
        non-blocking."""
        if self._closed:
            raise RuntimeError("detach() on a closed transport")
        sock = self._sock
        wbuf = self._wbuf
        self._closed = True
        self._wbuf = None
        self._wsize = 0
        self._protocol = None
        if self._events:
            self._loop.remove_reader(sock)
            self._events = 0
        if wbuf:
            try:
                sock.settimeout(DETACH_FLUSH_TIMEOUT_S)
                for part in wbuf:
                    sock.sendall(part)
            except OSError as exc:
                log.info("detach: queued bytes not sent: %s", exc)
            finally:
                sock.setblocking(False)
        return sock

    # -- reading ---------------------------------------------------------------
    def pause_reading(self) -> None:
        """Stop reading (back-pressure); bytes wait in the kernel."""
        # Hot path, lazy on purpose: only the flag changes here, and the selector stops
        # watching the socket when a read event arrives while paused (``_on_events``).
        # An HTTP request pauses and resumes reading within one callback; done eagerly
        # that cost four epoll_ctl calls per keep-alive request (tools/profile_ws.py --http).
        if self._reading and not self._closed:
            self._reading = False

    def resume_reading(self) -> None:
        """Read again after :meth:`pause_reading`."""
        if not self._reading and not self._closed:
            self._reading = True
            if not self._events & _EVENT_READ:
                self._set_events(self._events | _EVENT_READ)

    def _set_events(self, events: int) -> None:
        if events == self._events:
            return
        if self._events and events:
            self._loop.modify(self._sock, events, self._on_events_cb)
        elif events:
            self._loop.register(self._sock, events, self._on_events_cb)
        else:
            self._loop.remove_reader(self._sock)
        self._events = events

    def _on_events(self, mask: int) -> None:
        try:
            if mask & _EVENT_WRITE:
                self._on_write()
            if mask & _EVENT_READ and not self._closed:
                if self._reading:
                    self._on_read()
                else:
                    self._set_events(self._events & ~_EVENT_READ)  # the lazy pause, made real
        except Exception:
            # A bug in a protocol object must not leave a connection open and wedged.
            log.exception("internal error on a connection; closing it")
            self.abort()

    def _on_read(self) -> None:
        # A protocol with get_buffer() may name where the bytes go (the rest of a big
        # WebSocket payload): received there, with no copy; else into the loop's buffer.
        get_buffer = self._get_buffer
        target = get_buffer(self._protocol) if get_buffer is not None else None
        try:
            n = self._sock.recv_into(self._read_buffer if target is None else target)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal(exc)
            return
        if not n:
            self.pause_reading()
            self._protocol.eof_received()
            return
        if target is None:
            # A copy of exactly what arrived: protocols may keep it.
            deliver, arg = self._protocol.data_received, self._read_buffer[:n].tobytes()
        else:
            target.release()
            deliver, arg = self._protocol.buffer_updated, n
        if not self.cork_reads:
            deliver(arg)
            return
        # Writes made while the protocol handles these bytes are corked: queued, then
        # sent together when it returns (one sendmsg for a burst of small frames
        # instead of one send each).
        self._corked = True
        try:
            deliver(arg)
        finally:
            self._corked = False
            self.flush()

    # -- writing ----------------------------------------------------------------
    def write(self, data: Buffer) -> None:
        """Queue ``data``; sent as soon as the kernel takes it. Ignored once closing."""
        if self._closing or self._closed or self._shut_wr or not data:
            return
        if self._wbuf or self._corked:
            self._queue(data)
            return
        try:
            sent = self._sock.send(data, self._send_flags)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._fatal(exc)
            return
        if sent < len(data):
            self._queue(memoryview(data)[sent:])

    def write_last(self, data: Buffer) -> None:
        """:meth:`write` for the last bytes before :meth:`close`, which the caller calls
        right after (nothing is written in between): they are sent with MSG_MORE, so that
        the FIN goes in their last segment instead of one of its own."""
        self._send_flags = _MSG_MORE
        self.write(data)

    def writelines(self, parts: Sequence[Buffer]) -> None:
        """Queue several buffers, sent with one ``sendmsg`` (no joining copy)."""
        if self._closing or self._closed or self._shut_wr:
            return
        if self._wbuf or self._corked:
            for part in parts:
                if part:
                    self._queue(part)
            return
        try:
            sent = self._sock.sendmsg(parts, (), self._send_flags)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._fatal(exc)
            return
        for part in parts:
            n = len(part)
            if sent >= n:
                sent -= n
                continue
            self._queue(memoryview(part)[sent:] if sent else part)
            sent = 0

    def _queue(self, data: Buffer) -> None:
        if self._wbuf is None:
            self._wbuf = deque()
        self._wbuf.append(data)
        self._wsize += len(data)
        if not self._events & _EVENT_WRITE and not self._corked:
            self._set_events(self._events | _EVENT_WRITE)

    def flush(self) -> None:
        """Send what is queued now, even while corked (the 101 before the WebSocket callback).

        What the kernel does not take waits for the socket to become writable, as any
        other queued data."""
        if self._wbuf and not self._closed and not self._events & _EVENT_WRITE:
            self._on_write()
            if self._wbuf and not self._closed:
                self._set_events(self._events | _EVENT_WRITE)

    def _on_write(self) -> None:
        wbuf = self._wbuf
        if not wbuf:
            self._set_events(self._events & ~_EVENT_WRITE)
            return
        flags = self._send_flags
        try:
            if len(wbuf) == 1:
                # The usual corked answer to one small frame: send() costs ~0.2 us less
                # than a one-buffer sendmsg() (no iovec to build).
                sent = self._sock.send(wbuf[0], flags)
            else:
                sent = self._sock.sendmsg([wbuf[i] for i in range(min(len(wbuf), MAX_IOV))], (),
                                          flags)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal(exc)
            return
        self._wsize -= sent
        while sent:
            head = wbuf[0]
            n = len(head)
            if sent >= n:
                wbuf.popleft()
                sent -= n
            else:
                wbuf[0] = memoryview(head)[sent:]
                sent = 0
        if not wbuf:
            self._wbuf = None
            if self._events & _EVENT_WRITE:  # else a corked flush: nothing to change
                self._set_events(self._events & ~_EVENT_WRITE)
            self._drained()

    def _drained(self) -> None:
        if self._closing:
            self._finish(None)
            return
        if self._shut_wr:
            self._do_shutdown()
        if self._write_drained is not None:
            self._write_drained(self._protocol)

    # -- closing ------------------------------------------------------------------
    def close(self) -> None:
        """Close after the write buffer is flushed."""
        if self._closing or self._closed:
            return
        self._closing = True
        self.pause_reading()
        if not self._wbuf:
            self._finish(None)
        else:
            # What is still queued is the last of it, and the socket closes once it is all
            # out (_drained): the FIN can ride on its last segment.
            self._send_flags = _MSG_MORE

    def abort(self) -> None:
        """Close now, dropping anything still buffered."""
        if not self._closed:
            self._finish(None)

    def shutdown_write(self) -> None:
        """Send FIN once the buffer is flushed; reading goes on until the peer closes."""
        if self._shut_wr or self._closed:
            return
        self._shut_wr = True
        if not self._wbuf:
            self._do_shutdown()

    def _do_shutdown(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _fatal(self, exc: Exception) -> None:
        if exc.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT, errno.ENOTCONN):
            log.debug("connection error: %s", exc)
        self._finish(exc)

    def _finish(self, exc: Optional[Exception]) -> None:
        if self._closed:
            return
        self._closed = True
        self._wbuf = None
        self._wsize = 0
        if self._events:
            self._loop.remove_reader(self._sock)
            self._events = 0
        # The bound method is a reference cycle (self -> method -> self): broken here, the
        # transport and its socket are freed by reference counting when the protocol lets
        # go, not by the cyclic GC (~3 objects per connection otherwise).
        self._on_events_cb = None
        sock = self._sock
        if self._send_flags:
            # The last bytes went with MSG_MORE: the kernel may still hold them. shutdown()
            # adds the FIN to them and sends them now. (close() alone would too, but not
            # if the peer sent bytes that nobody read: then it resets the connection at
            # once, and what it held is lost — a 400 or 413 answered mid-upload.)
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        try:
            sock.close()
        except OSError:
            pass
        protocol, self._protocol = self._protocol, None
        protocol.connection_lost(exc)
