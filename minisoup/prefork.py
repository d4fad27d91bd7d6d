"""Pre-fork: the master (:class:`Arbiter`) and the worker process lifecycle.

The design follows gunicorn's arbiter: the master binds nothing itself (the
``Server`` has already bound its listening sockets), forks N workers that share
those sockets, and then only supervises. Its loop is a signal queue plus a
self-pipe: signal handlers just queue the signal and write a byte to the pipe, and
the loop — ``reap_workers``, ``murder_workers``, ``manage_workers`` — runs in
ordinary code between ``select`` calls.

Master signals: ``SIGTERM``/``SIGINT`` graceful stop (``SIGTERM`` to the workers,
``SIGKILL`` to what is left after ``graceful_timeout``); ``SIGQUIT`` immediate stop;
``SIGTTIN``/``SIGTTOU`` one worker more/less (never fewer than one; the removed
worker stops gracefully); ``SIGHUP`` replace the workers one at a time (the new
worker serves before the old one is asked to stop). The listening sockets stay open
in the master throughout, so connections wait in the kernel's backlog while a
worker restarts instead of being refused.

Worker signals: ``SIGTERM``/``SIGINT`` graceful stop, ``SIGQUIT`` immediate stop;
``SIGHUP``, ``SIGTTIN`` and ``SIGTTOU`` are ignored (they are the master's).

Shared state lives in one anonymous ``MAP_SHARED`` mmap created before the first
fork (:class:`WorkerTable`): per worker slot, a heartbeat timestamp, the live
connection count and a state. The heartbeat lets the master kill a worker whose
loop is stuck; the counts drive the least-connections balancing (:class:`Balancer`).
"""

import logging
import mmap
import os
import select
import signal
import sys
import time
from heapq import heappush
from typing import Any, Dict, List, Optional, Tuple

log = logging.getLogger("minisoup")

# Defaults, in one place.
HEARTBEAT_INTERVAL_S = 1.0      # a worker stamps its slot this often (or 1/4 of the timeout)
DEFAULT_WORKER_TIMEOUT_S = 30.0  # no heartbeat for this long: the master SIGKILLs the worker
MASTER_TICK_S = 1.0             # the master wakes at least this often (heartbeat checks)
RELOAD_POLL_S = 0.05            # master tick while a SIGHUP replacement waits for its worker
CRASH_WINDOW_S = 1.0            # a worker dying this soon after its fork counts as a crash
BACKOFF_MIN_S = 0.1             # first wait before forking again after a crash...
BACKOFF_MAX_S = 5.0             # ...doubling up to this
QUIT_TIMEOUT_S = 1.0            # SIGQUIT: how long workers get before SIGKILL
RETIRE_GRACE_S = 1.0            # a retired worker gets graceful_timeout + this before SIGKILL
REAP_AFTER_KILL_S = 5.0         # how long the master waits for SIGKILLed workers to go
SIGNAL_QUEUE_MAX = 16           # signals beyond this, arriving in a burst, are dropped
BALANCE_SLACK = 2               # a worker may hold mean + max(SLACK, SLACK_RATIO * mean)
BALANCE_SLACK_RATIO = 0.1       # connections before it stops accepting
BALANCE_RECHECK_S = 0.05        # while paused by the balancer, re-check this often
# Worker-to-worker "accept again" kick. SIGWINCH because its default action is to be
# ignored: a kick that reached the wrong process (a pid reused) would do no harm.
BALANCE_KICK_SIGNAL = signal.SIGWINCH

# Slot states in the shared table.
SLOT_FREE, SLOT_BOOTING, SLOT_SERVING, SLOT_RETIRING = 0, 1, 2, 3


# -- log tag -------------------------------------------------------------------------------
_log_tag = None  # type: Optional[str]


def set_log_tag(tag: Optional[str]) -> None:
    """Set the ``%(worker)s`` field of this process's log records (``None``: ``pid P``)."""
    global _log_tag
    _log_tag = tag


def install_log_tag() -> None:
    """Give every ``LogRecord`` a ``worker`` attribute, e.g. ``worker 2 pid 4242``.

    A record factory rather than a handler filter, so that any handler's format may
    use ``%(worker)s``. Idempotent. The master sets ``master pid P``; each worker sets
    its own tag right after the fork.
    """
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_minisoup_tag", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.worker = _log_tag or "pid %d" % record.process
        return record

    factory._minisoup_tag = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


# -- shared table --------------------------------------------------------------------------
class WorkerTable:
    """One slot per worker in an anonymous shared mmap.

    Per slot: ``heartbeat`` a ``time.monotonic()`` stamp (CLOCK_MONOTONIC is system-wide
    on Linux, so stamps compare across processes); ``connections`` the worker's live
    connection count; ``state`` one of the ``SLOT_*`` constants; ``pid`` the worker's
    pid; ``paused`` 1 while the balancer keeps the worker from accepting. Each field is
    an aligned 8-byte word written whole, so readers need no lock: a value is at worst
    one update old, which the heartbeat and the balancer tolerate.
    """

    FIELDS = (("heartbeat", "d"), ("connections", "q"), ("state", "q"), ("pid", "q"),
              ("paused", "q"))

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        size = capacity * 8
        self._mmap = mmap.mmap(-1, len(self.FIELDS) * size)  # fileno -1: anonymous, shared
        self._view = memoryview(self._mmap)
        self._fields = []
        for index, (name, code) in enumerate(self.FIELDS):
            field = self._view[index * size:(index + 1) * size].cast(code)
            setattr(self, name, field)
            self._fields.append(field)
        self._free = list(range(capacity - 1, -1, -1))  # master only

    def allocate(self, now: float) -> Optional[int]:
        """Take a free slot for a worker about to be forked (master only)."""
        if not self._free:
            return None
        slot = self._free.pop()
        self.heartbeat[slot] = now
        self.connections[slot] = self.pid[slot] = self.paused[slot] = 0
        self.state[slot] = SLOT_BOOTING
        return slot

    def release(self, slot: int) -> None:
        """Give back a reaped worker's slot (master only)."""
        self.state[slot] = SLOT_FREE
        self.connections[slot] = self.pid[slot] = self.paused[slot] = 0
        self._free.append(slot)

    def serving_load(self) -> Tuple[int, int]:
        """``(connections, workers)`` summed over the slots in state SERVING."""
        total = live = 0
        for state, count in zip(self.state, self.connections):
            if state == SLOT_SERVING:
                total += count
                live += 1
        return total, live

    def close(self) -> None:
        """Unmap (the master, once every worker is gone)."""
        for view in self._fields + [self._view]:
            view.release()
        self._mmap.close()


class WorkerRecord:
    """The master's view of one worker process."""

    __slots__ = ("id", "pid", "slot", "started", "retiring", "retire_deadline", "killed")

    def __init__(self, worker_id: int, slot: int, started: float) -> None:
        self.id = worker_id
        self.pid = 0
        self.slot = slot
        self.started = started
        self.retiring = False        # asked to stop; not counted as one of the N
        self.retire_deadline = 0.0
        self.killed = False          # SIGKILL sent

    def __repr__(self) -> str:
        return "<worker %d pid %d>" % (self.id, self.pid)


# -- the master ------------------------------------------------------------------------------
class Arbiter:
    """The pre-fork master: fork ``workers`` workers of ``server`` and supervise them.

    ``server`` must already listen (its sockets are inherited by every worker).
    ``worker_timeout`` (s, default ``server.worker_timeout`` or 30): a worker whose
    heartbeat is older is killed and replaced (0: never). ``graceful_timeout`` (s, default
    ``server.graceful_timeout``): how long a graceful stop may take. :meth:`run`
    blocks in the calling (main) thread until the master is stopped by a signal.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
               signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD)

    def __init__(self, server: Any, workers: int, worker_timeout: Optional[float] = None,
                 graceful_timeout: Optional[float] = None) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.server = server
        self.num_workers = workers
        self.worker_timeout = float(worker_timeout if worker_timeout is not None else
                                    getattr(server, "worker_timeout", DEFAULT_WORKER_TIMEOUT_S))
        self.graceful_timeout = float(graceful_timeout if graceful_timeout is not None else
                                      server.graceful_timeout)
        self.pid = os.getpid()
        self.workers = {}  # type: Dict[int, WorkerRecord]   # pid → record
        self._table = None  # type: Optional[WorkerTable]
        self._pipe = None  # type: Optional[tuple]
        self._sig_queue = []  # type: List[int]
        self._old_handlers = {}  # type: Dict[int, Any]
        self._stopping = False
        self._backoff = 0.0
        self._next_spawn = 0.0
        self._reload = []  # type: List[WorkerRecord]   # old workers still to replace (SIGHUP)
        self._reload_new = None  # type: Optional[WorkerRecord]

    # -- main loop -----------------------------------------------------------------------
    def run(self) -> None:
        """Fork the workers and supervise them until a stop signal; then return."""
        self._setup()
        try:
            log.info("master pid %d: %d worker(s) on %s", self.pid, self.num_workers,
                     ", ".join(self.server.get_uris()))
            self.manage_workers()
            while True:
                self.reap_workers()
                while self._sig_queue:
                    if self._handle_signal(self._sig_queue.pop(0)):
                        return
                self.murder_workers()
                self._advance_reload()
                self.manage_workers()
                self._sleep(self._sleep_timeout())
        finally:
            self._teardown()

    def _setup(self) -> None:
        install_log_tag()
        set_log_tag("master pid %d" % self.pid)
        # Room for TTIN growth, a SIGHUP overlap and retiring workers still finishing.
        self._table = WorkerTable(4 * self.num_workers + 16)
        self._pipe = os.pipe()  # close-on-exec by default
        for fd in self._pipe:
            os.set_blocking(fd, False)
        try:
            for signum in self.SIGNALS:
                self._old_handlers[signum] = signal.signal(signum, self._on_signal)
        except ValueError:
            self._teardown()
            raise RuntimeError("run(workers=N) must be called from the main thread")

    def _teardown(self) -> None:
        if self.workers:  # only on an unexpected error: never leave workers behind
            log.error("master stopping with %d worker(s) left: killing them", len(self.workers))
            self._signal_workers(signal.SIGKILL)
            self._wait_workers(REAP_AFTER_KILL_S, interruptible=False)
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._old_handlers.clear()
        if self._pipe is not None:
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None
        if self._table is not None and not self.workers:
            self._table.close()
            self._table = None
        log.info("master pid %d: stopped", self.pid)
        set_log_tag(None)

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Runs between bytecodes: queue and wake the loop, nothing else.
        if signum != signal.SIGCHLD and len(self._sig_queue) < SIGNAL_QUEUE_MAX:
            self._sig_queue.append(signum)
        try:
            os.write(self._pipe[1], b".")
        except (OSError, TypeError):  # pipe full (a wake-up is pending anyway) or closed
            pass

    def _sleep(self, timeout: float) -> None:
        """Wait for a signal (through the self-pipe) or ``timeout`` seconds."""
        fd = self._pipe[0]
        try:
            ready = select.select([fd], [], [], max(0.0, timeout))[0]
        except InterruptedError:
            return
        if ready:
            try:
                while os.read(fd, 4096):
                    pass
            except (BlockingIOError, InterruptedError):
                pass

    def _sleep_timeout(self) -> float:
        timeout = min(MASTER_TICK_S, self.worker_timeout / 2 or MASTER_TICK_S)
        if self._reload:
            timeout = RELOAD_POLL_S
        backoff_left = self._next_spawn - time.monotonic()
        if backoff_left > 0:
            timeout = min(timeout, backoff_left)
        return max(0.01, timeout)

    def _handle_signal(self, signum: int) -> bool:
        """Act on one queued signal; True when the master has stopped."""
        name = signal.Signals(signum).name
        if signum in (signal.SIGTERM, signal.SIGINT):
            log.info("master: %s: graceful stop", name)
            self.stop(graceful=True)
            return True
        if signum == signal.SIGQUIT:
            log.info("master: %s: immediate stop", name)
            self.stop(graceful=False)
            return True
        if signum == signal.SIGTTIN:
            self.num_workers += 1
            log.info("master: SIGTTIN: now %d worker(s)", self.num_workers)
        elif signum == signal.SIGTTOU:
            if self.num_workers > 1:
                self.num_workers -= 1
                log.info("master: SIGTTOU: now %d worker(s)", self.num_workers)
            else:
                log.info("master: SIGTTOU ignored: already down to one worker")
        elif signum == signal.SIGHUP:
            self._start_reload()
        return False

    # -- stopping --------------------------------------------------------------------------
    def stop(self, graceful: bool = True) -> None:
        """Stop every worker and wait for them (called from the master's loop).

        Graceful: ``SIGTERM``, then ``SIGKILL`` after ``graceful_timeout``; a SIGQUIT,
        SIGTERM or SIGINT arriving meanwhile hurries it into an immediate stop.
        Immediate: ``SIGQUIT``, then ``SIGKILL`` after ``QUIT_TIMEOUT_S``.
        """
        self._stopping = True
        self._reload, self._reload_new = [], None
        immediate = not graceful
        if graceful:
            self._signal_workers(signal.SIGTERM)
            if not self._wait_workers(self.graceful_timeout, interruptible=True):
                log.info("master: hurried: immediate stop")
                immediate = True
        if immediate:
            self._signal_workers(signal.SIGQUIT)
            self._wait_workers(QUIT_TIMEOUT_S, interruptible=False)
        if self.workers:
            log.warning("master: %d worker(s) still running after the timeout: killing them",
                        len(self.workers))
            self._signal_workers(signal.SIGKILL)
            self._wait_workers(REAP_AFTER_KILL_S, interruptible=False)

    def _wait_workers(self, timeout: float, interruptible: bool) -> bool:
        """Reap until no worker is left or ``timeout`` passes (True), or a hurry signal
        arrives when ``interruptible`` (False)."""
        deadline = time.monotonic() + timeout
        while True:
            self.reap_workers()
            if not self.workers:
                return True
            if interruptible and self._sig_queue:
                hurry = (signal.SIGQUIT, signal.SIGTERM, signal.SIGINT)
                if any(s in hurry for s in self._sig_queue):
                    self._sig_queue.clear()
                    return False
                self._sig_queue.clear()  # scaling or reloading while stopping: moot
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            self._sleep(min(left, 0.1))

    def _signal_workers(self, signum: int) -> None:
        for worker in list(self.workers.values()):
            worker.retiring = True
            if signum == signal.SIGKILL:
                worker.killed = True
            self._kill(worker, signum)

    def _kill(self, worker: WorkerRecord, signum: int) -> None:
        try:
            os.kill(worker.pid, signum)
        except ProcessLookupError:
            pass  # already gone; reap_workers will collect it

    # -- the four duties -----------------------------------------------------------------------
    def spawn_worker(self, worker_id: Optional[int] = None) -> Optional[WorkerRecord]:
        """Fork one worker (``worker_id``: the lowest free one by default)."""
        now = time.monotonic()
        if worker_id is None:
            taken = {w.id for w in self.workers.values() if not w.retiring}
            worker_id = 1
            while worker_id in taken:
                worker_id += 1
        slot = self._table.allocate(now)
        if slot is None:
            log.error("master: no free worker slot (%d in use); not forking",
                      self._table.capacity)
            return None
        worker = WorkerRecord(worker_id, slot, now)
        _flush_std()  # or the child would write the parent's buffered output again
        # Block the signals the child must handle itself until it has installed its own
        # handlers: otherwise a SIGTERM right after the fork would run the master's.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            self._table.release(slot)
            log.error("master: fork failed: %s", exc)
            self._crashed(now)
            return None
        if pid == 0:
            self._become_worker(worker, mask)  # never returns
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        worker.pid = pid
        self.workers[pid] = worker
        log.info("master: booted worker %d (pid %d)", worker_id, pid)
        return worker

    def reap_workers(self) -> None:
        """Collect every exited child (``waitpid`` WNOHANG until none): no zombies."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is not None:
                self._worker_exited(worker, status)

    def murder_workers(self) -> None:
        """SIGKILL workers whose heartbeat is too old, or that outstay their retirement."""
        now = time.monotonic()
        for worker in list(self.workers.values()):
            if worker.killed:
                continue
            if worker.retiring:
                if now > worker.retire_deadline:
                    log.warning("master: worker %d (pid %d) did not stop within %.1f s; "
                                "killing it", worker.id, worker.pid,
                                self.graceful_timeout + RETIRE_GRACE_S)
                    worker.killed = True
                    self._kill(worker, signal.SIGKILL)
                continue
            silent = now - self._table.heartbeat[worker.slot]
            if self.worker_timeout and silent > self.worker_timeout:
                log.critical("master: worker %d (pid %d) timed out: no heartbeat for %.1f s; "
                             "killing it", worker.id, worker.pid, silent)
                worker.killed = True
                self._kill(worker, signal.SIGKILL)

    def manage_workers(self) -> None:
        """Keep ``num_workers`` workers (plus a SIGHUP replacement in flight) alive."""
        if self._stopping:
            return
        active = [w for w in self.workers.values() if not w.retiring]
        target = self.num_workers + (1 if self._reload_new is not None else 0)
        if len(active) < target:
            if time.monotonic() < self._next_spawn:
                return  # backing off after crashes
            self._next_spawn = 0.0
            for _ in range(target - len(active)):
                if self.spawn_worker() is None:
                    break
        elif len(active) > target:
            # Retire the highest ids so that the ones left keep ids 1..N.
            spare = sorted((w for w in active if w is not self._reload_new),
                           key=lambda w: (w.id, w.started), reverse=True)
            for worker in spare[:len(active) - target]:
                self.retire_worker(worker, "scaling down")

    def retire_worker(self, worker: WorkerRecord, why: str) -> None:
        """Ask ``worker`` to stop gracefully; it is no longer one of the N."""
        worker.retiring = True
        worker.retire_deadline = time.monotonic() + self.graceful_timeout + RETIRE_GRACE_S
        self._table.state[worker.slot] = SLOT_RETIRING
        log.info("master: stopping worker %d (pid %d) gracefully: %s", worker.id, worker.pid, why)
        self._kill(worker, signal.SIGTERM)

    def _worker_exited(self, worker: WorkerRecord, status: int) -> None:
        now = time.monotonic()
        self._table.release(worker.slot)
        if worker is self._reload_new:
            self._reload_new = None
        how = _describe_exit(status)
        lifetime = now - worker.started
        if worker.retiring or self._stopping:
            log.info("master: worker %d (pid %d) %s", worker.id, worker.pid, how)
            return
        log.error("master: worker %d (pid %d) %s after %.1f s; replacing it",
                  worker.id, worker.pid, how, lifetime)
        if lifetime < CRASH_WINDOW_S:
            self._crashed(now)
        else:
            self._backoff = 0.0

    def _crashed(self, now: float) -> None:
        # Workers dying at start (an app that fails in every worker, a fork failure):
        # forking again at once would spin; wait, doubling the wait each time.
        self._backoff = min(BACKOFF_MAX_S, max(BACKOFF_MIN_S, self._backoff * 2))
        self._next_spawn = now + self._backoff
        log.warning("master: a worker died within %.1f s of its start; waiting %.1f s "
                    "before forking again", CRASH_WINDOW_S, self._backoff)

    # -- SIGHUP: rolling replacement ------------------------------------------------------------
    def _start_reload(self) -> None:
        # Certificate files are read again here, so that the new workers fork with them
        # (broken files: the old certificate is kept, with a log line).
        self.server.reload_tls_certificate()
        self._reload = sorted((w for w in self.workers.values()
                               if not w.retiring and w is not self._reload_new),
                              key=lambda w: w.id)
        log.info("master: SIGHUP: replacing %d worker(s) one at a time", len(self._reload))

    def _advance_reload(self) -> None:
        # One step at a time: fork the replacement, wait until it serves, then retire
        # the old worker; the next old worker waits for the next round.
        while self._reload:
            old = self._reload[0]
            if old.retiring or old.pid not in self.workers:
                self._reload.pop(0)
                continue
            new = self._reload_new
            if new is None:
                if time.monotonic() >= self._next_spawn:
                    self._reload_new = self.spawn_worker(old.id)
                return
            if self._table.state[new.slot] != SLOT_SERVING:
                return
            self.retire_worker(old, "replaced by pid %d" % new.pid)
            self._reload.pop(0)
            self._reload_new = None

    # -- in the child -------------------------------------------------------------------------
    def _become_worker(self, worker: WorkerRecord, sigmask: Any) -> None:
        """Run in the forked child: serve, then ``os._exit`` (never return to the master)."""
        status = 1
        set_log_tag("worker %d pid %d" % (worker.id, os.getpid()))
        try:
            for fd in self._pipe:
                os.close(fd)
            process = WorkerProcess(self.server, worker.id, self._table, worker.slot, self.pid,
                                    min(HEARTBEAT_INTERVAL_S,
                                        self.worker_timeout / 4 or HEARTBEAT_INTERVAL_S))
            process.run(sigmask)
            status = 0
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            log.info("worker %d exiting with status %d", worker.id, status)
        except BaseException:
            log.exception("worker %d failed", worker.id)
        finally:
            _flush_std()
            os._exit(status)


# -- the worker ------------------------------------------------------------------------------
class WorkerProcess:
    """One forked worker: fresh per-process state, its signals, heartbeat and balancing."""

    def __init__(self, server: Any, worker_id: int, table: WorkerTable, slot: int,
                 master_pid: int, heartbeat_interval: float = HEARTBEAT_INTERVAL_S) -> None:
        self.server = server
        self.heartbeat_interval = heartbeat_interval
        self.worker_id = worker_id
        self.table = table
        self.slot = slot
        self.master_pid = master_pid
        self.balancer = None  # type: Optional[Balancer]

    def run(self, sigmask: Any) -> None:
        """Serve until stopped (``sigmask``: the signal mask to restore once ready)."""
        # The master's handlers must not run here: its signals are not ours.
        for signum in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(signum, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        loop = self._reset_server()
        loop.add_signal_handler(signal.SIGTERM, self._on_term)
        loop.add_signal_handler(signal.SIGINT, self._on_term)
        loop.add_signal_handler(signal.SIGQUIT, self._on_quit)
        loop.add_signal_handler(BALANCE_KICK_SIGNAL, self._on_kick)
        signal.pthread_sigmask(signal.SIG_SETMASK, sigmask)
        self.table.pid[self.slot] = os.getpid()
        self.balancer = Balancer(self.server, self.table, self.slot)
        self.server._may_accept = self.balancer.may_accept
        self.server._on_count_change = self._on_count_change
        self._heartbeat()
        self.table.state[self.slot] = SLOT_SERVING
        log.info("worker %d ready", self.worker_id)
        self.server._serve(install_signals=False)

    def _reset_server(self) -> Any:
        """Give the inherited ``Server`` a fresh loop and empty connection sets."""
        server = self.server
        inherited = server._loop
        server._loop = None  # the master's selector must not be shared: a new epoll set
        if inherited is not None:
            inherited.close()
        server._worker_id = self.worker_id
        server._http = set()
        server._websockets = set()
        server._accepting = False
        server._stopping = False
        server._sweep = None
        server._accept_paused_until = 0.0
        loop = server._get_loop()
        if inherited is not None:
            _adopt_callbacks(inherited, loop)
        return loop

    def _on_count_change(self, count: int) -> None:
        self.table.connections[self.slot] = count

    def _heartbeat(self) -> None:
        self.table.heartbeat[self.slot] = time.monotonic()
        if os.getppid() != self.master_pid and not self.server._stopping:
            log.warning("master (pid %d) is gone: stopping", self.master_pid)
            self._on_term(signal.SIGTERM)
        self.server._loop.call_later(self.heartbeat_interval, self._heartbeat)

    def _on_term(self, signum: int) -> None:
        if self.server._stopping:
            return
        log.info("%s: graceful stop", signal.Signals(signum).name)
        self.table.state[self.slot] = SLOT_RETIRING
        self.server.stop(graceful=True)

    def _on_kick(self, signum: int) -> None:
        # Another worker paused and saw this one below the mean: accept again now.
        self.server._update_accepting()

    def _on_quit(self, signum: int) -> None:
        self.table.state[self.slot] = SLOT_RETIRING
        self.server.stop(graceful=False)


class Balancer:
    """Least-connections gate on accepting, shared by the workers through the table.

    Why: every worker waits on the same listening socket with ``EPOLLEXCLUSIVE``,
    which avoids the thundering herd but wakes waiters in LIFO order — the worker
    that went idle last gets the next connection, so one fast worker ends up holding
    most long-lived WebSocket connections (measured: 365 of 400 with 2 of 4 workers
    getting none). Alternatives were worse here: ``SO_REUSEPORT`` with a socket per
    worker hashes connections evenly but is blind to how long they live, and a dead
    worker's accept queue is lost (refused connections — against the promise that a
    restart is invisible); the master accepting and passing descriptors adds a hop
    and a bottleneck. So each worker simply stops pulling from the shared queue while
    it holds more than the mean of the serving workers plus a slack
    (``BALANCE_SLACK`` connections or ``BALANCE_SLACK_RATIO`` of the mean, whichever is
    larger). Connections meanwhile wait in the kernel's backlog for a worker below the
    mean — someone always is. A paused worker accepts again when that is no longer
    true: on one of its own connections closing; when a worker that pauses sees it
    paused below the limit and kicks it (``BALANCE_KICK_SIGNAL``, so a burst never
    waits for a timer while every worker is paused); and, as a safety net, on a
    timer that runs only while it is paused. The cost is one pass over a small
    shared array per accepted connection.
    """

    def __init__(self, server: Any, table: WorkerTable, slot: int) -> None:
        self.server = server
        self.table = table
        self.slot = slot
        self._recheck = None  # type: Any

    def may_accept(self) -> bool:
        """Server hook: may this worker take one more connection now?"""
        table = self.table
        total, live = table.serving_load()
        if live >= 2:
            mean = total / live
            limit = mean + max(BALANCE_SLACK, BALANCE_SLACK_RATIO * mean)
            if self.server._connection_count() > limit:
                if not table.paused[self.slot]:
                    table.paused[self.slot] = 1
                    self._kick_paused_below(limit)
                if self._recheck is None:
                    self._recheck = self.server._loop.call_later(BALANCE_RECHECK_S,
                                                                 self._on_recheck)
                return False
        if table.paused[self.slot]:
            table.paused[self.slot] = 0
        return True

    def _kick_paused_below(self, limit: float) -> None:
        table = self.table
        for slot in range(table.capacity):
            if (slot != self.slot and table.paused[slot] and table.state[slot] == SLOT_SERVING
                    and table.connections[slot] < limit and table.pid[slot]):
                try:
                    os.kill(table.pid[slot], BALANCE_KICK_SIGNAL)
                except ProcessLookupError:
                    pass

    def _on_recheck(self) -> None:
        self._recheck = None
        self.server._update_accepting()


# -- helpers --------------------------------------------------------------------------------
def _adopt_callbacks(old: Any, new: Any) -> None:
    """Move callbacks scheduled before the fork (``server.call_later`` in the app's setup)
    from the master's loop to the worker's, so they run in every worker."""
    for handle in old._ready:
        if not handle.cancelled:
            new._ready.append(handle)
    for handle in old._timers:
        if not handle.cancelled:
            heappush(new._timers, handle)
    old._ready.clear()
    old._timers.clear()


def _describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = str(signum)
        return "was killed by %s" % name
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else status
    return "exited with status %d" % code


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
