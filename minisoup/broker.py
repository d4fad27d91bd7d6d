"""The Redis broker: publish/subscribe between server processes, on one host or several.

``Server(broker="redis://HOST:PORT[/DB]")`` (SPEC section 9). Each process that
serves (every pre-forked worker, or the single process) runs one
:class:`RedisBroker` on its own loop; the master never talks to Redis.

**Two connections per process.** In RESP2 a connection that has subscribed can
only (un)subscribe and ping, so PUBLISH needs its own: the *subscriber* connection
follows the topics this process's WebSockets and listeners are subscribed to
(``SUBSCRIBE`` when a topic gets its first subscriber, ``UNSUBSCRIBE`` when it loses
its last: Redis then sends each worker only what someone in it wants), and the
*publisher* connection carries this process's PUBLISH commands, in order: one
connection, so Redis keeps the order of one worker's publications.

**Exactly once.** A publication is delivered in its own worker at once, to the
server's other workers through the relay (``relay.py``), and is PUBLISHed to Redis
tagged with the *origin*, an id drawn once per server process (``Server.run``,
before the fork: the master and all its workers share it). Redis sends it to every
subscribed worker of every server, and a worker drops those whose origin is its
own server's: they came through the relay already. Workers do not relay what they
receive from Redis, since every worker has its own subscriber connection.

**Redis going away.** Local delivery (same worker, other workers through the
relay) never depends on Redis. While the publisher connection is down, or has
``BROKER_BUFFER_LIMIT`` bytes queued that Redis did not read, publications are
dropped for Redis and counted; a log line says how many (at most one line per
``BROKER_LOG_INTERVAL_S`` per connection). Each connection reconnects by itself with
an exponential back-off (``BROKER_BACKOFF_MIN_S`` to ``BROKER_BACKOFF_MAX_S``, with
jitter so that workers do not reconnect in step), resubscribes, and a connection
from which nothing came for ``BROKER_DEAD_AFTER_S`` (pings included: a host that
vanished without a reset) is dropped and reopened. Nothing here blocks the loop:
the connect is non-blocking, and a host name (not an IP address) is resolved in a
short-lived thread whose answer comes back through the loop.

Redis ignores the DB number for publish/subscribe (channels are global to a Redis
server), so the DB is part of the channel name, ``minisoup:DB:TOPIC``: servers given
different DBs do not hear each other, as one would expect. ``SELECT DB`` is still
sent, so that a DB Redis does not have is reported.
"""

import enum
import errno
import logging
import os
import random
import selectors
import socket
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from .loop import Handle, Loop, SocketTransport
from .pubsub import ORIGIN_SIZE, RelayProtocolError, decode_envelope, encode_envelope
from .resp import (ErrorReply, RedisURL, ReplyParser, RespProtocolError, encode_command,
                   parse_redis_url)

log = logging.getLogger("minisoup")

__all__ = ["RedisBroker", "new_origin", "parse_redis_url", "BROKER_BUFFER_LIMIT",
           "BROKER_BATCH_SIZE", "BROKER_CONNECT_TIMEOUT_S", "BROKER_BACKOFF_MIN_S",
           "BROKER_BACKOFF_MAX_S", "BROKER_PING_INTERVAL_S", "BROKER_DEAD_AFTER_S",
           "BROKER_LOG_INTERVAL_S", "CHANNEL_PREFIX"]

BROKER_BUFFER_LIMIT = 8 * 1024 * 1024  # bytes queued for Redis per connection; above: drop
BROKER_BATCH_SIZE = 64 * 1024          # publications of one loop iteration written together,
                                       # or at once when this many bytes wait
BROKER_CONNECT_TIMEOUT_S = 5.0         # a TCP connect (and name resolution) may take this long
BROKER_BACKOFF_MIN_S = 0.1             # first wait before reconnecting...
BROKER_BACKOFF_MAX_S = 5.0             # ...doubling up to this
BROKER_BACKOFF_JITTER = 0.2            # plus up to this fraction, at random
BROKER_PING_INTERVAL_S = 5.0           # an open connection sends PING this often
BROKER_DEAD_AFTER_S = 15.0             # nothing received this long: the connection is dropped
BROKER_LOG_INTERVAL_S = 10.0           # at most one "unreachable / dropped" line this often
SUBSCRIBE_BATCH = 256                  # channels per SUBSCRIBE when (re)subscribing
CHANNEL_PREFIX = "minisoup:%d:"        # + topic, with the DB number (see the docstring)

_PUBLISH = b"$7\r\nPUBLISH\r\n"
_EVENT_WRITE = selectors.EVENT_WRITE


def new_origin() -> bytes:
    """A fresh server-process id for the broker envelope (random: no coordination
    between hosts is needed for ids to differ)."""
    return os.urandom(ORIGIN_SIZE)


# -- one connection's lifecycle ---------------------------------------------------------------
class LinkState(enum.Enum):
    """Where a connection to Redis stands."""

    WAITING = "waiting"        # down; a reconnect is scheduled (the back-off)
    CONNECTING = "connecting"  # resolving the host or in a non-blocking connect
    OPEN = "open"              # connected; commands may be written
    CLOSED = "closed"          # the broker was closed: terminal


_TRANSITIONS = {
    LinkState.WAITING: (LinkState.CONNECTING, LinkState.CLOSED),
    LinkState.CONNECTING: (LinkState.OPEN, LinkState.WAITING, LinkState.CLOSED),
    LinkState.OPEN: (LinkState.WAITING, LinkState.CLOSED),
    LinkState.CLOSED: (),
}


class _Link:
    """One connection to Redis (the publisher or the subscriber): connect, handshake,
    keepalive, reconnect with back-off. A stream protocol for ``SocketTransport``;
    replies go to ``on_reply(reply)``, an open connection is announced to
    ``on_open()`` (which writes the role's own commands)."""

    def __init__(self, broker: "RedisBroker", role: str, on_open: Callable[[], None],
                 on_reply: Callable[[Any], None]) -> None:
        self.broker = broker
        self.loop = broker.loop
        self.url = broker.url
        self.role = role
        self.state = LinkState.WAITING
        self.transport: Optional[SocketTransport] = None
        self._on_open = on_open
        self._on_reply = on_reply
        self._parser = ReplyParser()
        self._sock: Optional[socket.socket] = None  # while connecting
        self._timer: Optional[Handle] = None        # retry, connect timeout or ping
        self._attempt = 0          # connects tried since the last reply (picks the address)
        self._backoff = BROKER_BACKOFF_MIN_S
        self._heard = False        # a reply came on this connection: Redis is there
        self._last_heard = 0.0
        self._down_since: Optional[float] = None  # None: never down since the last reply
        self._last_log = 0.0
        self._last_error = ""
        self.ever_up = False

    def _set_state(self, state: LinkState) -> None:
        if state not in _TRANSITIONS[self.state]:
            raise AssertionError("broker %s: %s -> %s" % (self.role, self.state, state))
        self.state = state

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def is_open(self) -> bool:
        """Connected: a command written now goes to Redis (unless the connection fails)."""
        return self.state is LinkState.OPEN

    def buffered(self) -> int:
        """Bytes written and not yet taken by the kernel."""
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def writelines(self, parts: List[bytes]) -> None:
        if self.transport is not None:
            self.transport.writelines(parts)

    # -- connecting ---------------------------------------------------------------------
    def connect(self) -> None:
        """Start a connection attempt (from WAITING)."""
        self._timer = None
        self._set_state(LinkState.CONNECTING)
        self._timer = self.loop.call_later(BROKER_CONNECT_TIMEOUT_S, self._fail,
                                           "no connection after %g s" % BROKER_CONNECT_TIMEOUT_S)
        if self.url.is_numeric():
            # Numeric: getaddrinfo returns at once, without asking any resolver.
            try:
                infos = socket.getaddrinfo(self.url.host, self.url.port, type=socket.SOCK_STREAM,
                                           flags=socket.AI_NUMERICHOST)
            except OSError as exc:
                self._fail(str(exc))
                return
            self._connect_to(infos)
            return
        # A name: resolving may block for seconds (a slow DNS server), so in a thread.
        thread = threading.Thread(target=self._resolve, args=(self._timer,),
                                  name="minisoup-broker-resolve", daemon=True)
        thread.start()

    def _resolve(self, attempt: Handle) -> None:
        # In the resolver thread: only getaddrinfo and a hand-back to the loop.
        try:
            result: Any = socket.getaddrinfo(self.url.host, self.url.port,
                                             type=socket.SOCK_STREAM)
        except OSError as exc:
            result = exc
        self.loop.call_soon(self._resolved, attempt, result)  # deque.append: thread-safe
        self.loop.wakeup()

    def _resolved(self, attempt: Handle, result: Any) -> None:
        if self.state is not LinkState.CONNECTING or self._timer is not attempt:
            return  # that attempt timed out, or the broker closed
        if isinstance(result, OSError):
            self._fail("cannot resolve %s: %s" % (self.url.host, result))
        elif not result:
            self._fail("no address for %s" % self.url.host)
        else:
            self._connect_to(result)

    def _connect_to(self, infos: List[Tuple]) -> None:
        family, kind, proto, _, address = infos[self._attempt % len(infos)]
        self._attempt += 1
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        code = sock.connect_ex(address)
        if code not in (0, errno.EINPROGRESS, errno.EAGAIN):
            sock.close()
            self._fail(os.strerror(code))
            return
        self._sock = sock
        self.loop.register(sock, _EVENT_WRITE, self._on_connected)

    def _on_connected(self, events: int) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        self.loop.remove_reader(sock)
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            sock.close()
            self._fail(os.strerror(code))
            return
        self._cancel_timer()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._set_state(LinkState.OPEN)
        self._parser = ReplyParser()
        self._heard = False
        self._last_heard = time.monotonic()
        self.transport = SocketTransport(self.loop, sock, self)
        url = self.url
        hello = []
        if url.password is not None:
            hello.append(encode_command("AUTH", url.username, url.password) if url.username
                         else encode_command("AUTH", url.password))
        if url.db:
            hello.append(encode_command("SELECT", url.db))
        hello.append(encode_command("PING"))  # its answer proves Redis is there
        self.transport.write(b"".join(hello))
        if self.state is LinkState.OPEN:  # the write may have found the peer gone
            self._on_open()
        if self.state is LinkState.OPEN:
            self._timer = self.loop.call_later(BROKER_PING_INTERVAL_S, self._ping)

    def _fail(self, reason: str) -> None:
        """This attempt or connection failed: close it, schedule the next one."""
        if self.state is LinkState.CLOSED or self.state is LinkState.WAITING:
            return  # closed for good, or already failed (the retry is scheduled)
        self._cancel_timer()
        if self._sock is not None:
            self.loop.remove_reader(self._sock)
            self._sock.close()
            self._sock = None
        transport, self.transport = self.transport, None
        self._set_state(LinkState.WAITING)
        if transport is not None:
            transport.abort()  # connection_lost finds the state WAITING: nothing more
        now = time.monotonic()
        self._last_error = reason
        if self._heard or self._down_since is None:
            # Up until now (or the first attempt failed): say so once, at once.
            self._down_since = now
            self._last_log = now
            log.warning("broker: %s connection to %s %s: %s; reconnecting with back-off "
                        "(local delivery goes on)", self.role, self.url.display(),
                        "lost" if self._heard else "failed", reason)
            self._backoff = BROKER_BACKOFF_MIN_S
        elif now - self._last_log >= BROKER_LOG_INTERVAL_S:
            self._last_log = now
            log.warning("broker: %s still cannot reach %s after %.0f s: %s%s", self.role,
                        self.url.display(), now - self._down_since, reason,
                        self.broker.drop_summary() if self.role == "publisher" else "")
        self._heard = False
        delay = self._backoff * (1.0 + random.random() * BROKER_BACKOFF_JITTER)
        self._backoff = min(BROKER_BACKOFF_MAX_S, self._backoff * 2)
        self._timer = self.loop.call_later(delay, self.connect)

    def _ping(self) -> None:
        self._timer = None
        if time.monotonic() - self._last_heard > BROKER_DEAD_AFTER_S:
            self._fail("nothing received for %g s" % BROKER_DEAD_AFTER_S)
            return
        if self.buffered() > BROKER_BUFFER_LIMIT:
            self._fail("Redis is not reading (%d bytes queued)" % self.buffered())
            return
        self.write(encode_command("PING"))
        self._timer = self.loop.call_later(BROKER_PING_INTERVAL_S, self._ping)

    def close(self) -> None:
        """Close for good (the broker is closing)."""
        if self.state is LinkState.CLOSED:
            return
        self._cancel_timer()
        if self._sock is not None:
            self.loop.remove_reader(self._sock)
            self._sock.close()
            self._sock = None
        self._set_state(LinkState.CLOSED)
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.abort()

    # -- stream protocol ----------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        try:
            replies = self._parser.feed(data)
        except RespProtocolError as exc:
            self._fail("not Redis: %s" % exc)
            return
        self._last_heard = time.monotonic()
        for reply in replies:
            if isinstance(reply, ErrorReply):
                # AUTH refused, no such DB, NOAUTH...: a configuration to fix; say it.
                self._fail("Redis answered %s" % reply)
                return
            if not self._heard:
                self._up()
            self._on_reply(reply)
            if self.transport is None:
                return

    def _up(self) -> None:
        self._heard = True
        self._attempt = 0
        self._backoff = BROKER_BACKOFF_MIN_S
        if self._down_since is not None:
            log.warning("broker: %s connection to %s up again after %.1f s%s", self.role,
                        self.url.display(), time.monotonic() - self._down_since,
                        self.broker.drop_summary() if self.role == "publisher" else "")
        elif not self.ever_up:
            log.info("broker: %s connected to %s", self.role, self.url.display())
        self._down_since = None
        self.ever_up = True

    def eof_received(self) -> None:
        self._fail("Redis closed the connection")

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self.state is LinkState.OPEN:
            self.transport = None
            self._fail(str(exc) if exc else "connection lost")


# -- the broker ----------------------------------------------------------------------------------
class RedisBroker:
    """One process's attachment to Redis: publishes its publications, subscribes to its
    topics, delivers the other servers' publications.

    ``pubsub`` is the process's ``pubsub.PubSub`` (its ``deliver`` and
    ``active_topics`` are used); ``origin`` the server process's id
    (:func:`new_origin`, shared by a master's workers). :meth:`start` connects;
    :meth:`close` disconnects for good. Counters: ``published`` (written to Redis),
    ``dropped`` (could not be), ``echoes`` (own publications that came back, ignored).
    """

    def __init__(self, loop: Loop, url: Any, origin: bytes, pubsub: Any) -> None:
        self.loop = loop
        self.url: RedisURL = url if isinstance(url, RedisURL) else parse_redis_url(url)
        self.origin = origin
        self._pubsub = pubsub
        self.prefix = (CHANNEL_PREFIX % self.url.db).encode()
        self.published = 0
        self.dropped = 0
        self.echoes = 0
        self._dropped_reported = 0
        self._last_drop_log = 0.0
        self._last_bad_log = 0.0
        self._batch: List[bytes] = []
        self._batch_size = 0
        self._batch_count = 0
        self._flush_handle: Optional[Handle] = None
        self._envelopes: Dict[int, bytes] = {}
        self.publisher = _Link(self, "publisher", self._publisher_open, self._publisher_reply)
        self.subscriber = _Link(self, "subscriber", self._subscriber_open,
                                self._subscriber_reply)

    def start(self) -> None:
        """Connect both connections (non-blocking; they keep reconnecting until closed)."""
        self.publisher.connect()
        self.subscriber.connect()

    def close(self) -> None:
        """Disconnect for good; what is not yet written is dropped."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._batch = []
        self.publisher.close()
        self.subscriber.close()

    def channel(self, topic: str) -> bytes:
        """The Redis channel of ``topic``."""
        return self.prefix + topic.encode("utf-8")

    # -- publishing ---------------------------------------------------------------------
    def publish(self, data_type: int, topic: bytes, payload: bytes) -> None:
        """PUBLISH one publication (``topic`` as UTF-8), or drop and count it if Redis
        cannot take it now. Never blocks; written at the end of the loop iteration."""
        link = self.publisher
        if not link.is_open() or link.buffered() > BROKER_BUFFER_LIMIT:
            self._drop(1)
            return
        envelope = self._envelopes.get(data_type)
        if envelope is None:
            envelope = self._envelopes[data_type] = encode_envelope(data_type, self.origin)
        channel = self.prefix + topic
        message_size = len(envelope) + len(payload)
        head = b"".join((b"*3\r\n", _PUBLISH, b"$%d\r\n" % len(channel), channel,
                         b"\r\n$%d\r\n" % message_size, envelope))
        self._batch.append(head)
        self._batch.append(payload)
        self._batch.append(b"\r\n")
        self._batch_count += 1
        self._batch_size += len(head) + len(payload) + 2
        if self._batch_size >= BROKER_BATCH_SIZE:
            self.flush()
        elif self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write the batched PUBLISH commands now."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        batch, count = self._batch, self._batch_count
        self._batch, self._batch_size, self._batch_count = [], 0, 0
        if not batch:
            return
        if not self.publisher.is_open():
            self._drop(count)  # the connection went down within this loop iteration
            return
        self.publisher.writelines(batch)
        self.published += count

    def _drop(self, count: int) -> None:
        self.dropped += count
        now = time.monotonic()
        if self.publisher.is_open() and now - self._last_drop_log >= BROKER_LOG_INTERVAL_S:
            # Connected but not reading fast enough (while down, _Link's lines report).
            self._last_drop_log = now
            log.warning("broker: Redis at %s is not taking publications fast enough "
                        "(%d bytes queued, limit %d)%s", self.url.display(),
                        self.publisher.buffered(), BROKER_BUFFER_LIMIT, self.drop_summary())

    def drop_summary(self) -> str:
        """``"; N publication(s) dropped for Redis"`` since the last summary, or ""."""
        count = self.dropped - self._dropped_reported
        self._dropped_reported = self.dropped
        return "; %d publication(s) dropped for Redis meanwhile" % count if count else ""

    def _publisher_open(self) -> None:
        pass  # publications are written from now on

    def _publisher_reply(self, reply: Any) -> None:
        pass  # PUBLISH answers the number of receivers; PING, AUTH, SELECT: OK

    # -- subscribing --------------------------------------------------------------------
    def topic_added(self, topic: str) -> None:
        """``topic`` got its first subscriber in this process: SUBSCRIBE (if connected;
        else the next connection subscribes to every active topic)."""
        if self.subscriber.is_open():
            self.subscriber.write(encode_command("SUBSCRIBE", self.channel(topic)))

    def topic_removed(self, topic: str) -> None:
        """``topic`` lost its last subscriber in this process: UNSUBSCRIBE."""
        if self.subscriber.is_open():
            self.subscriber.write(encode_command("UNSUBSCRIBE", self.channel(topic)))

    def _subscriber_open(self) -> None:
        channels = [self.channel(topic) for topic in self._pubsub.active_topics()]
        commands = [encode_command("SUBSCRIBE", *channels[i:i + SUBSCRIBE_BATCH])
                    for i in range(0, len(channels), SUBSCRIBE_BATCH)]
        if commands:
            self.subscriber.write(b"".join(commands))

    def _subscriber_reply(self, reply: Any) -> None:
        # ["message", channel, data]; the rest ("subscribe", "pong", OK) needs nothing.
        if type(reply) is list and len(reply) == 3 and reply[0] == b"message":
            self._message(reply[1], reply[2])

    def _message(self, channel: Any, data: Any) -> None:
        prefix = self.prefix
        if not isinstance(channel, bytes) or not isinstance(data, bytes) \
                or not channel.startswith(prefix):
            return
        try:
            origin, data_type, payload = decode_envelope(data)
            topic = channel[len(prefix):].decode("utf-8")
        except (RelayProtocolError, UnicodeDecodeError) as exc:
            now = time.monotonic()
            if now - self._last_bad_log >= BROKER_LOG_INTERVAL_S:
                self._last_bad_log = now
                log.warning("broker: ignoring a message on %r: %s", channel[:100], exc)
            return
        if origin == self.origin:
            self.echoes += 1  # ours: this server's workers had it through the relay
            return
        self._pubsub.deliver(data_type, topic, payload)
