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
from typing import Any, Callable, Dict, List, Optional, Tuple

from .relay import RelayDirectory, RelaySlot

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
BALANCE_STALL_S = 0.1           # a connection waited this long, no peer accepting: take it
BALANCE_STALE_HEARTBEATS = 3    # a worker this many heartbeats late is not in the mean
# Worker-to-worker "accept again" kick. SIGWINCH because its default action is to be
# ignored: a kick that reached the wrong process (a pid reused) would do no harm.
BALANCE_KICK_SIGNAL = signal.SIGWINCH

# Slot states in the shared table.
SLOT_FREE, SLOT_BOOTING, SLOT_SERVING, SLOT_RETIRING = 0, 1, 2, 3


# -- log tag -------------------------------------------------------------------------------
_log_tag: Optional[str] = None
_tag_factory: Optional[Callable[..., logging.LogRecord]] = None  # the one installed


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
    global _tag_factory
    previous = logging.getLogRecordFactory()
    if previous is _tag_factory:
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.worker = _log_tag or "pid %d" % record.process
        return record

    _tag_factory = factory
    logging.setLogRecordFactory(factory)


# -- shared table --------------------------------------------------------------------------
class WorkerTable:
    """One slot per worker in an anonymous shared mmap.

    Per slot: ``heartbeat`` a ``time.monotonic()`` stamp (CLOCK_MONOTONIC is system-wide
    on Linux, so stamps compare across processes); ``connections`` the worker's live
    connection count; ``state`` one of the ``SLOT_*`` constants; ``pid`` the worker's
    pid; ``paused`` 1 while the balancer keeps the worker from accepting; ``accepted``
    how many connections the worker has accepted (only ever grows). Each field is
    an aligned 8-byte word written whole, so readers need no lock: a value is at worst
    one update old, which the heartbeat and the balancer tolerate.
    """

    FIELDS = (("heartbeat", "d"), ("connections", "q"), ("state", "q"), ("pid", "q"),
              ("paused", "q"), ("accepted", "q"))

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
        self.accepted[slot] = 0
        self.state[slot] = SLOT_BOOTING
        return slot

    def release(self, slot: int) -> None:
        """Give back a reaped worker's slot (master only)."""
        self.state[slot] = SLOT_FREE
        self.connections[slot] = self.pid[slot] = self.paused[slot] = 0
        self._free.append(slot)

    def serving_load(self, alive_since: float) -> Tuple[int, int]:
        """``(connections, workers)`` summed over the slots in state SERVING whose
        heartbeat is not older than ``alive_since`` (a ``time.monotonic()`` value)."""
        total = live = 0
        for state, count, heartbeat in zip(self.state, self.connections, self.heartbeat):
            if state == SLOT_SERVING and heartbeat >= alive_since:
                total += count
                live += 1
        return total, live

    def accepted_by_others(self, slot: int) -> int:
        """The accept counters of every slot but ``slot``, summed. Any change between two
        reads means some other worker accepted (or was reaped): its loop was running."""
        return sum(self.accepted) - self.accepted[slot]

    def close(self) -> None:
        """Unmap (the master, once every worker is gone)."""
        for view in self._fields + [self._view]:
            view.release()
        self._mmap.close()


class WorkerRecord:
    """The master's view of one worker process."""

    __slots__ = ("id", "pid", "slot", "started", "generation", "retiring", "retire_deadline",
                 "killed")

    def __init__(self, worker_id: int, slot: int, started: float, generation: int = 0) -> None:
        self.id = worker_id
        self.pid = 0
        self.slot = slot
        self.started = started
        self.generation = generation  # SIGHUPs received before its fork
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
        self.workers: Dict[int, WorkerRecord] = {}  # pid → record
        self._table: Optional[WorkerTable] = None
        self._relay: Optional[RelayDirectory] = None  # publish/subscribe between workers
        self._pipe: Optional[tuple] = None
        self._sig_queue: List[int] = []
        self._old_handlers: Dict[int, Any] = {}
        self._stopping = False
        self._backoff = 0.0
        self._next_spawn = 0.0
        # SIGHUP: workers forked before the latest SIGHUP (generation < _generation) are
        # replaced one at a time; _reload_old is the one the replacement in flight,
        # _reload_new, takes over from (same id).
        self._generation = 0
        self._reload_old: Optional[WorkerRecord] = None
        self._reload_new: Optional[WorkerRecord] = None

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
        self._relay = RelayDirectory(self._table.capacity)
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
        if self._relay is not None and not self.workers:
            self._relay.close()
            self._relay = None
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
        if self._reload_new is not None or self._stale_workers():
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
        self._reload_old = self._reload_new = None
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
        worker = WorkerRecord(worker_id, slot, now, self._generation)
        try:
            relay = self._relay.open_slot(slot, worker_id)  # before the fork: see relay.py
        except OSError as exc:
            self._table.release(slot)
            log.error("master: cannot create the relay socket: %s; not forking", exc)
            self._crashed(now)
            return None
        process = WorkerProcess(self.server, worker_id, self._table, slot, self.pid,
                                min(HEARTBEAT_INTERVAL_S,
                                    self.worker_timeout / 4 or HEARTBEAT_INTERVAL_S), relay)
        _flush_std()  # or the child would write the parent's buffered output again
        # Block the signals the child must handle itself until it has installed its own
        # handlers: otherwise a SIGTERM right after the fork would run the master's.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            self._table.release(slot)
            self._relay.close_slot(slot)
            log.error("master: fork failed: %s", exc)
            self._crashed(now)
            return None
        if pid == 0:
            self._become_worker(process, mask)  # never returns
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self._relay.forked(slot)
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
        self._relay.close_slot(worker.slot)
        if worker is self._reload_new or worker is self._reload_old:
            # The replacement died: its old worker is still stale and is picked again.
            # The old one died: the replacement simply takes its place (same id).
            self._reload_old = self._reload_new = None
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
        # No list to rebuild: the plan is derived from the generations each round, so a
        # SIGHUP during a replacement only widens it (the replacement in flight finishes
        # with the worker it was forked for, then is itself replaced, being older).
        self._generation += 1
        log.info("master: SIGHUP: replacing %d worker(s) one at a time",
                 len(self._stale_workers()) + (1 if self._reload_new is not None else 0))

    def _stale_workers(self) -> List[WorkerRecord]:
        """Workers forked before the latest SIGHUP and not yet being replaced, by id."""
        return sorted((w for w in self.workers.values()
                       if w.generation < self._generation and not w.retiring
                       and w is not self._reload_old and w is not self._reload_new),
                      key=lambda w: (w.id, w.started))

    def _advance_reload(self) -> None:
        # One step at a time: fork the replacement, wait until it serves, then retire
        # the old worker it was forked for; the next stale worker waits for the next round.
        new = self._reload_new
        if new is not None:
            old = self._reload_old
            if old.retiring:  # scaled down meanwhile: the replacement is a plain worker now
                self._reload_old = self._reload_new = None
            elif self._table.state[new.slot] != SLOT_SERVING:
                return
            else:
                self._reload_old = self._reload_new = None
                self.retire_worker(old, "replaced by pid %d" % new.pid)
        if self._stopping or time.monotonic() < self._next_spawn:
            return
        stale = self._stale_workers()
        if stale:
            old = stale[0]
            self._reload_new = self.spawn_worker(old.id)
            if self._reload_new is not None:
                self._reload_old = old

    # -- in the child -------------------------------------------------------------------------
    def _become_worker(self, process: "WorkerProcess", sigmask: Any) -> None:
        """Run in the forked child: serve, then ``os._exit`` (never return to the master)."""
        status = 1
        worker_id = process.worker_id
        set_log_tag("worker %d pid %d" % (worker_id, os.getpid()))
        try:
            for fd in self._pipe:
                os.close(fd)
            process.run(sigmask)
            status = 0
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            log.info("worker %d exiting with status %d", worker_id, status)
        except BaseException:
            log.exception("worker %d failed", worker_id)
        finally:
            _flush_std()
            os._exit(status)


# -- the worker ------------------------------------------------------------------------------
class WorkerProcess:
    """One worker: built in the master before the fork from named parts (it does nothing
    to the current process), then :meth:`run` in the forked child.

    It talks to the ``Server`` through its public methods and the one declared
    pre-fork entry point, :meth:`Server._run_worker`; the :class:`Balancer` is the
    server's accept gate. Its own duties: the worker's signals, the heartbeat, and its
    slot's state in the shared table.
    """

    def __init__(self, server: Any, worker_id: int, table: WorkerTable, slot: int,
                 master_pid: int, heartbeat_interval: float = HEARTBEAT_INTERVAL_S,
                 relay: Optional[RelaySlot] = None) -> None:
        self.server = server
        self.relay = relay  # this worker's end of the publish/subscribe relay
        self.heartbeat_interval = heartbeat_interval
        self.worker_id = worker_id
        self.table = table
        self.slot = slot
        self.master_pid = master_pid
        self.balancer: Optional[Balancer] = None
        self.stopping = False

    def run(self, sigmask: Any) -> None:
        """In the child: serve until stopped (``sigmask``: the mask to restore once ready)."""
        # The master's handlers must not run here: its signals are not ours.
        for signum in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(signum, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        self.balancer = Balancer(self.table, self.slot, self.server.get_listeners(),
                                 self.server.call_later, self.heartbeat_interval)
        signals = {signal.SIGTERM: self._on_term, signal.SIGINT: self._on_term,
                   signal.SIGQUIT: self._on_quit, BALANCE_KICK_SIGNAL: self._on_kick}
        # reach-in: Server's declared pre-fork entry point (the master → worker hand-over).
        self.server._run_worker(self.worker_id, self.balancer, signals,
                                lambda: self._ready(sigmask), self.relay)

    def _ready(self, sigmask: Any) -> None:
        # The app's worker-started callbacks have run; the loop is about to serve.
        # Signals blocked since the fork are delivered from here on, to our handlers.
        signal.pthread_sigmask(signal.SIG_SETMASK, sigmask)
        self.table.pid[self.slot] = os.getpid()
        self._heartbeat()
        self.table.state[self.slot] = SLOT_SERVING
        log.info("worker %d ready", self.worker_id)

    def _heartbeat(self) -> None:
        self.table.heartbeat[self.slot] = time.monotonic()
        if os.getppid() != self.master_pid and not self.stopping:
            log.warning("master (pid %d) is gone: stopping", self.master_pid)
            self._on_term(signal.SIGTERM)
        self.server.call_later(self.heartbeat_interval, self._heartbeat)

    def _on_term(self, signum: int) -> None:
        if self.stopping:
            return
        self.stopping = True
        log.info("%s: graceful stop", signal.Signals(signum).name)
        self.table.state[self.slot] = SLOT_RETIRING
        self.server.stop(graceful=True)

    def _on_kick(self, signum: int) -> None:
        # Another worker paused and saw this one below the mean: accept again now.
        self.balancer.recheck()

    def _on_quit(self, signum: int) -> None:
        self.stopping = True
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
    timer that runs only while it is paused.

    Never waiting for a worker that does not accept. A worker can be SERVING in the
    table and yet take nothing: stopped (``SIGSTOP``, a debugger) or its loop held by
    a long handler. Its share still holds the mean — and so the others' limit — up,
    and the connections they defer to it would wait until the heartbeat kills it
    (``worker_timeout``, 30 s). Two guards, one per time scale:

    * Within ``BALANCE_STALL_S`` (the bound): while paused, the recheck timer polls the
      listeners. The accept queue is FIFO, and a worker waiting in ``epoll_wait``
      takes a connection within moments of its arrival, while one that is stopped or
      inside a callback is not in ``epoll_wait`` at all, so ``EPOLLEXCLUSIVE`` hands the
      wake-up to a worker that is. Hence a listener readable at two checks
      ``BALANCE_STALL_S`` apart, with no other worker's accept counter moving between
      them, proves that the head of the queue has waited that long and that no worker
      the mean defers to is accepting. This worker then accepts regardless of the mean
      (``overflow``) until the queue is empty or another worker accepts again. Balance
      loses at most the connections that arrive while every other worker is stuck;
      no connection waits more than about ``BALANCE_STALL_S + BALANCE_RECHECK_S``.
    * Past ``BALANCE_STALE_HEARTBEATS`` heartbeats (the steady state): a worker whose
      heartbeat is that late is left out of the mean, so a long stall stops holding
      the limit down at all; it counts again from its next heartbeat.

    Cost per accepted connection: one pass over a small shared array (the heartbeat
    test rides in it) and one counter write. The listener poll runs only while paused.
    """

    def __init__(self, table: WorkerTable, slot: int, listeners: List[Any],
                 call_later: Callable[..., Any],
                 heartbeat_interval: float = HEARTBEAT_INTERVAL_S) -> None:
        self.table = table
        self.slot = slot
        self._call_later = call_later
        self._ask_again: Optional[Callable[[], None]] = None  # from attach()
        self._stale_after = BALANCE_STALE_HEARTBEATS * heartbeat_interval
        self._count = 0              # this worker's live connections
        self._recheck: Any = None
        self._overflow = False       # accepting above the limit: the others are stuck
        self._stall_since = 0.0      # when a waiting connection was first seen (0: none)
        self._stall_others = 0       # the others' accept counters at that moment
        self._backlog = select.poll()
        for sock in listeners:
            self._backlog.register(sock.fileno(), select.POLLIN)

    def attach(self, recheck: Callable[[], None]) -> None:
        """Server hook: ``recheck()`` makes the server ask :meth:`may_accept` again."""
        self._ask_again = recheck

    def recheck(self) -> None:
        """Have the server ask again now (a kick from a worker that paused)."""
        if self._ask_again is not None:
            self._ask_again()

    def may_accept(self) -> bool:
        """Server hook: may this worker take one more connection now?"""
        table = self.table
        total, live = table.serving_load(time.monotonic() - self._stale_after)
        if live >= 2:
            mean = total / live
            limit = mean + max(BALANCE_SLACK, BALANCE_SLACK_RATIO * mean)
            if self._count > limit:
                if not table.paused[self.slot]:
                    table.paused[self.slot] = 1
                    self._kick_paused_below(limit)
                if self._recheck is None:
                    self._recheck = self._call_later(BALANCE_RECHECK_S, self._on_recheck)
                return self._overflow
        if table.paused[self.slot]:
            table.paused[self.slot] = 0
        return True

    def connections_changed(self, count: int) -> None:
        """Server hook: this worker now holds ``count`` connections."""
        if count > self._count:  # only an accept adds one (an upgrade keeps the count)
            self.table.accepted[self.slot] += 1
        self._count = count
        self.table.connections[self.slot] = count

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
        if self.table.paused[self.slot]:
            self._overflow = self._backlog_stalled(time.monotonic())
        else:
            self._overflow = False
            self._stall_since = 0.0
        self.recheck()

    def _backlog_stalled(self, now: float) -> bool:
        """True when a connection has waited ``BALANCE_STALL_S`` with no other worker
        accepting anything meanwhile (see the class docstring for why that suffices)."""
        if not self._backlog.poll(0):
            self._stall_since = 0.0
            return False
        others = self.table.accepted_by_others(self.slot)
        if not self._stall_since or others != self._stall_others:
            self._stall_since, self._stall_others = now, others
            return False
        stalled = now - self._stall_since >= BALANCE_STALL_S
        if stalled and not self._overflow:
            log.debug("balancer: a connection waited %.0f ms and no other worker accepted; "
                      "accepting above the mean", 1000 * (now - self._stall_since))
        return stalled


# -- helpers --------------------------------------------------------------------------------
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
