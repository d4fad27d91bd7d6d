"""The relay between pre-forked workers: how a publication made in one worker reaches the others.

**Design: a mesh of Unix stream sockets, no hub.** Before forking a worker, the
master binds a listening Unix socket for it (:meth:`RelayDirectory.open_slot`) and
writes the worker's *epoch* — a number never reused — into a small shared table. A
worker that publishes connects on demand to every worker listed there and writes
its records (``pubsub.encode_record``) straight to it.

**Where the sockets live.** On Linux, in the abstract namespace (an address that
starts with a NUL byte): no file at all, so nothing is left behind when the master
is SIGKILLed, and nothing to clean up. Abstract sockets have no file permissions
and their names are listed in ``/proc/net/unix`` for anyone to read, so the name
is no secret and two checks keep the relay to this server's processes, as the
private directory's mode 0700 did: (1) a receiver reads the kernel's record of who
connected (``SO_PEERCRED``, taken at ``connect()``, not forgeable) and drops any
stream from another user; (2) a sender checks the same of the listener it reached
(its creator: our master), so that publications never go to someone who bound a
dead worker's name. Names are also unguessable — a hash of a random secret drawn
by the master and the epoch — so that no one can bind the next worker's name first
and keep it from starting. Elsewhere, the sockets are files in a private directory
(mode 0700) that the master removes.

Why not a socketpair per worker with the master fanning out: the master would
become an I/O loop on the path of every publication (one more copy and hop, and a
bottleneck that all workers share), while it is kept to supervision on purpose, as
gunicorn's arbiter. Why not datagrams: a Unix datagram is limited by the socket
buffer (~208 KiB here), too small for a 16 MiB publication, and would need
fragmenting. With one stream per (sender, receiver) pair, one worker's publications
reach each other worker in order, exactly once or not at all, whatever their size.

**Joining and leaving.** The listening socket exists before the fork, so a worker
receives whatever is flushed after its epoch appears in the table (connections and
bytes wait in the kernel until its loop runs). When it exits, the master clears its
epoch and removes its socket file; senders see EOF on their stream, drop it and
stop sending there. A respawned worker has a new epoch (and socket file), so no
sender can mistake it for its predecessor.

**Bounds.** Publications made in one loop iteration are batched (``RELAY_BATCH_SIZE``
bytes at most, then flushed at once) and written once per peer; a publisher with many
subscribers of its own flushes before its local fan-out instead
(``pubsub.FLUSH_RELAY_FROM``), so that the workers fan out in parallel. Per peer the
sender queues at most ``RELAY_PEER_BUFFER_LIMIT`` bytes beyond what the kernel took;
a peer over it is not reading (stopped, stuck): it is **cut off** — its queue is
discarded, its stream closed, and what is published for it in the next
``RELAY_RETRY_S`` is dropped and counted; a log line says how much. The publisher,
the master and the other workers never wait for it. A receiver reads records as
they come and delivers each at once: it has no queue of its own beyond one
incomplete record (``pubsub.MAX_RECORD_SIZE``).
"""

import hashlib
import logging
import mmap
import os
import shutil
import socket
import struct
import sys
import tempfile
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from .loop import Loop, SocketTransport
from .pubsub import (MAX_RECORD_SIZE, RECORD_HELLO, RecordParser, RelayProtocolError,
                     decode_hello, encode_hello)

log = logging.getLogger("minisoup")

__all__ = ["RelayDirectory", "RelaySlot", "RelayEndpoint", "RELAY_PEER_BUFFER_LIMIT",
           "RELAY_BATCH_SIZE", "RELAY_RETRY_S", "RELAY_BACKLOG"]

RELAY_PEER_BUFFER_LIMIT = 4 * 1024 * 1024  # bytes queued for one peer before it is cut off
RELAY_BATCH_SIZE = 64 * 1024              # a batch this big is flushed at once, not at the
                                          # end of the loop iteration
RELAY_RETRY_S = 1.0                       # a cut-off (or unreachable) peer gets nothing this long
RELAY_BACKLOG = 64                        # pending connections per worker's relay socket
SOCKET_NAME = "%d.sock"                   # a worker's socket file, by epoch (not Linux)
ABSTRACT_PREFIX = b"\0minisoup-relay-"    # + hash of (secret, epoch): Linux's abstract names
ABSTRACT = sys.platform.startswith("linux")
_UNIX_PATH_MAX = 100                      # sun_path is 108 bytes on Linux, 104 on BSDs
_PEERCRED = struct.Struct("3i")           # struct ucred: pid, uid, gid


def peer_is_us(sock: socket.socket) -> bool:
    """True if the other end of the Unix stream ``sock`` runs as our effective user
    (Linux: ``SO_PEERCRED``; elsewhere the private directory vouches for it)."""
    if not ABSTRACT:
        return True
    try:
        _pid, uid, _gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                           _PEERCRED.size))
    except OSError:
        return False
    return uid == os.geteuid()


class RelayDirectory:
    """The relay's shared parts, created by the master before the first fork.

    The workers' socket addresses (Linux: abstract names; elsewhere files in a
    private directory, ``path``) and, in an anonymous shared mmap, per worker slot: the epoch of the worker in it (0: none) and its worker id (for log
    lines). The master writes; workers read (each value is an aligned 8-byte word
    written whole, as in ``prefork.WorkerTable``).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.path: Optional[str] = None
        self._secret = os.urandom(16)  # inherited by the workers; see the module docstring
        if not ABSTRACT:
            self.path = tempfile.mkdtemp(prefix="minisoup-relay-")  # mode 0700
            if len(os.path.join(self.path, SOCKET_NAME % 10 ** 9)) > _UNIX_PATH_MAX:
                os.rmdir(self.path)  # a long $TMPDIR: fall back to the short one
                self.path = tempfile.mkdtemp(prefix="minisoup-relay-", dir="/tmp")
        self._mmap = mmap.mmap(-1, 2 * 8 * capacity)
        self._view = memoryview(self._mmap)
        self.epochs = self._view[:8 * capacity].cast("q")
        self.worker_ids = self._view[8 * capacity:].cast("q")
        self._next_epoch = 1
        self._listeners: Dict[int, socket.socket] = {}  # master: not yet handed over

    def socket_path(self, epoch: int) -> Any:
        """The socket address of the worker with ``epoch``: an abstract name (bytes
        starting with NUL) on Linux, else a file's path."""
        if self.path is None:
            digest = hashlib.sha256(self._secret + b"%d" % epoch).hexdigest()[:32]
            return ABSTRACT_PREFIX + digest.encode("ascii")
        return os.path.join(self.path, SOCKET_NAME % epoch)

    # -- master ----------------------------------------------------------------------------
    def open_slot(self, slot: int, worker_id: int) -> "RelaySlot":
        """Bind the relay socket of the worker about to be forked into ``slot`` and list it."""
        epoch = self._next_epoch
        self._next_epoch += 1
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.socket_path(epoch))
            listener.listen(RELAY_BACKLOG)
        except OSError:
            listener.close()
            raise
        listener.setblocking(False)
        self._listeners[slot] = listener
        self.worker_ids[slot] = worker_id
        self.epochs[slot] = epoch  # last: a sender that sees it finds the socket there
        return RelaySlot(self, slot, epoch, worker_id, listener)

    def forked(self, slot: int) -> None:
        """The worker of ``slot`` has its copy of the socket: close the master's."""
        listener = self._listeners.pop(slot, None)
        if listener is not None:
            listener.close()

    def close_slot(self, slot: int) -> None:
        """The worker of ``slot`` is gone (or its fork failed): unlist it, remove its file."""
        self.forked(slot)
        epoch = self.epochs[slot]
        self.epochs[slot] = 0
        if epoch and self.path is not None:
            try:
                os.unlink(self.socket_path(epoch))
            except OSError:
                pass

    def close(self) -> None:
        """Remove the directory and unmap (the master, once every worker is gone)."""
        for slot in list(self._listeners):
            self.forked(slot)
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
        for view in (self.epochs, self.worker_ids, self._view):
            view.release()
        self._mmap.close()

    # -- workers ---------------------------------------------------------------------------
    def live(self) -> Iterator[Tuple[int, int]]:
        """``(slot, epoch)`` of every listed worker."""
        for slot, epoch in enumerate(self.epochs):
            if epoch:
                yield slot, epoch


class RelaySlot:
    """What one worker gets of the relay at its fork: its slot, epoch and listening socket.

    :meth:`start` (in the worker, on its loop) returns the running endpoint.
    """

    def __init__(self, directory: RelayDirectory, slot: int, epoch: int, worker_id: int,
                 listener: socket.socket) -> None:
        self.directory = directory
        self.slot = slot
        self.epoch = epoch
        self.worker_id = worker_id
        self.listener = listener

    def start(self, loop: Loop, deliver: Callable[[int, str, bytes], None]) -> "RelayEndpoint":
        """Serve the relay on ``loop``: ``deliver(data_type, topic, payload)`` per record
        received from another worker."""
        return RelayEndpoint(loop, self, deliver)


class RelayEndpoint:
    """One worker's end of the relay: sends its publications, receives the others'.

    :meth:`send` takes one record; records are written to every other listed worker
    at the end of the loop iteration (or once ``RELAY_BATCH_SIZE`` bytes wait).
    """

    def __init__(self, loop: Loop, slot: RelaySlot,
                 deliver: Callable[[int, str, bytes], None]) -> None:
        self.loop = loop
        self.directory = slot.directory
        self._slot = slot.slot
        self.epoch = slot.epoch
        self._streams_opened = 0
        self._listener = slot.listener
        self.deliver = deliver
        self._batch: List[bytes] = []
        self._batch_size = 0
        self._flush_handle: Any = None
        self._peers: Dict[int, _Peer] = {}  # slot → outgoing stream
        self._inbound: set = set()
        # sender epoch → (its newest stream number seen, that stream): see pubsub's HELLO.
        self._newest: Dict[int, Tuple[int, _Inbound]] = {}
        loop.add_reader(self._listener, self._on_accept)

    # -- sending ------------------------------------------------------------------------------
    def send(self, record: bytes) -> None:
        """Queue ``record`` for every other worker (never blocks)."""
        self._batch.append(record)
        self._batch_size += len(record)
        if self._batch_size >= RELAY_BATCH_SIZE:
            self.flush()
        elif self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write the batch to every other listed worker now."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._batch:
            return
        count = len(self._batch)
        data = self._batch[0] if count == 1 else b"".join(self._batch)
        self._batch = []
        self._batch_size = 0
        now = time.monotonic()
        peers = self._peers
        seen = set()
        for slot, epoch in self.directory.live():
            if slot == self._slot:
                continue
            seen.add(slot)
            peer = peers.get(slot)
            if peer is None or peer.epoch != epoch:
                if peer is not None:
                    peer.forget()
                peer = peers[slot] = _Peer(self, slot, epoch)
            peer.send(data, count, now)
        for slot in [s for s in peers if s not in seen]:
            peers.pop(slot).forget()

    # -- receiving ----------------------------------------------------------------------------
    def _on_accept(self, events: int) -> None:
        for _ in range(RELAY_BACKLOG):
            try:
                sock, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.error("relay: accept failed: %s", exc)
                return
            if not peer_is_us(sock):
                log.warning("relay: refused a connection from another user")
                sock.close()
                continue
            sock.setblocking(False)
            inbound = _Inbound(self)
            inbound.transport = SocketTransport(self.loop, sock, inbound)
            self._inbound.add(inbound)

    def next_stream(self) -> bytes:
        """The HELLO for a new outgoing stream (numbered in the order opened)."""
        self._streams_opened += 1
        return encode_hello(self.epoch, self._streams_opened)

    def claim(self, inbound: "_Inbound", sender: int, stream: int) -> bool:
        """``inbound`` says it is stream ``stream`` of ``sender``: False if a newer one
        from that sender is known (drop this one); else an older one is dropped."""
        newest = self._newest.get(sender)
        if newest is not None:
            if newest[0] > stream:
                return False
            if newest[1] is not inbound:
                log.info("relay: dropping an abandoned stream from relay epoch %d", sender)
                newest[1].transport.abort()
        self._newest[sender] = (stream, inbound)
        return True

    def stream_closed(self, inbound: "_Inbound", sender: int) -> None:
        self._inbound.discard(inbound)
        if sender and sender not in dict(self.directory.live()).values():
            self._newest.pop(sender, None)  # that worker has exited: forget it

    def close(self) -> None:
        """Stop: close every relay stream and the listening socket."""
        self.loop.remove_reader(self._listener)
        self._listener.close()
        for peer in self._peers.values():
            peer.forget()
        self._peers.clear()
        for inbound in list(self._inbound):
            inbound.transport.abort()


class _Peer:
    """The outgoing stream to one other worker: a stream protocol for ``SocketTransport``.

    The receiver never writes back; its EOF means it exited.
    """

    __slots__ = ("_endpoint", "_loop", "_directory", "slot", "epoch", "transport", "retry_at",
                 "dropped", "discarded_bytes", "cut_off")

    def __init__(self, endpoint: RelayEndpoint, slot: int, epoch: int) -> None:
        self._endpoint = endpoint
        self._loop = endpoint.loop
        self._directory = endpoint.directory
        self.slot = slot
        self.epoch = epoch
        self.transport: Optional[SocketTransport] = None
        self.retry_at = 0.0      # while cut off or unreachable: no connection before this
        self.dropped = 0         # publications dropped for this peer since the last report
        self.discarded_bytes = 0  # queued bytes discarded at cut-offs since the last report
        self.cut_off = False     # dropped because it did not read (not merely unreachable)

    def _name(self) -> str:
        return "worker %d (relay epoch %d)" % (self._directory.worker_ids[self.slot], self.epoch)

    def send(self, data: bytes, count: int, now: float) -> None:
        transport = self.transport
        if transport is None:
            if now < self.retry_at or not self._connect(now):
                self.dropped += count
                return
            transport = self.transport
        elif transport.get_write_buffer_size() > RELAY_PEER_BUFFER_LIMIT:
            self._cut(now)
            self.dropped += count
            return
        transport.write(data)

    def _connect(self, now: float) -> bool:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            # A Unix stream connect completes at once, or fails at once (EAGAIN when the
            # peer's backlog is full: it is not accepting).
            sock.connect(self._directory.socket_path(self.epoch))
            if not peer_is_us(sock):
                raise OSError("the socket is not ours (another user bound its name)")
        except OSError as exc:
            sock.close()
            log.debug("relay: cannot reach %s: %s", self._name(), exc)
            self.retry_at = now + RELAY_RETRY_S
            return False
        self.transport = SocketTransport(self._loop, sock, self)
        self.transport.write(self._endpoint.next_stream())
        if self.dropped:
            log.warning("relay: %s reachable again; %d publication(s) for it were dropped "
                        "meanwhile%s", self._name(), self.dropped,
                        " (and %d bytes queued for it discarded)" % self.discarded_bytes
                        if self.discarded_bytes else "")
            self.dropped = self.discarded_bytes = 0
            self.cut_off = False
        return True

    def _cut(self, now: float) -> None:
        queued = self.transport.get_write_buffer_size()
        log.warning("relay: %s is not reading: %d bytes queued for it (limit %d); cutting it "
                    "off, publications for it are dropped for %.1f s", self._name(), queued,
                    RELAY_PEER_BUFFER_LIMIT, RELAY_RETRY_S)
        self.discarded_bytes += queued
        self.cut_off = True
        self.retry_at = now + RELAY_RETRY_S
        transport, self.transport = self.transport, None
        transport.abort()

    def forget(self) -> None:
        """The peer is no longer listed (it exited): close the stream, report the drops."""
        if self.dropped:
            log.log(logging.WARNING if self.cut_off else logging.DEBUG,
                    "relay: %s left; %d publication(s) for it were dropped", self._name(),
                    self.dropped)
            self.dropped = 0
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.abort()

    # -- stream protocol ------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        pass  # nothing is expected from a receiver

    def eof_received(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        # The receiver exited (or we cut it off): the next flush reconnects if it is
        # still listed, after the retry delay.
        if self.transport is not None:
            self.transport = None
            self.retry_at = time.monotonic() + RELAY_RETRY_S


class _Inbound:
    """One incoming stream from another worker: records in, delivered at once."""

    __slots__ = ("transport", "_parser", "_endpoint", "_sender")

    def __init__(self, endpoint: RelayEndpoint) -> None:
        self.transport: Any = None
        self._parser = RecordParser(MAX_RECORD_SIZE)
        self._endpoint = endpoint
        self._sender = 0  # the sender's epoch, from the HELLO

    def data_received(self, data: bytes) -> None:
        try:
            records = self._parser.feed(data)
            if records and not self._sender:
                self._hello(records.pop(0))
        except RelayProtocolError as exc:
            log.error("relay: %s; closing that stream", exc)
            self.transport.abort()
            return
        deliver = self._endpoint.deliver
        for record in records:
            if record[0] == RECORD_HELLO or self.transport.is_closing():
                break  # a HELLO mid-stream is malformed; a closed stream delivers no more
            deliver(*record)

    def _hello(self, record: Tuple[int, str, bytes]) -> None:
        if record[0] != RECORD_HELLO:
            raise RelayProtocolError("a relay stream must start with HELLO")
        sender, stream = decode_hello(record[2])
        self._sender = sender
        if not self._endpoint.claim(self, sender, stream):
            log.info("relay: dropping a stale stream from relay epoch %d", sender)
            self.transport.abort()

    def eof_received(self) -> None:
        # A sender that cut us off (we did not read) may have closed mid-record.
        if self._parser.pending():
            log.info("relay: a stream ended inside a record; %d bytes discarded",
                     self._parser.pending())
        self.transport.close()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._endpoint.stream_closed(self, self._sender)
