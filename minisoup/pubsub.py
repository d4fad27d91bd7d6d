"""Publish/subscribe (SPEC section 9): topics, the local fan-out, the relay's record format.

No I/O here. Three parts:

- :class:`TopicRegistry`: which WebSocket connections, and which server-side
  listeners (:class:`Subscription`), are subscribed to which topic.
- The relay record, the unit in which a publication travels between pre-forked
  workers (``relay.py`` moves the bytes): :func:`encode_record` and
  :class:`RecordParser`. One record per publication, length-prefixed so that many
  ride in one write and a reader needs no other framing::

      !I  length of the rest of the record (bytes)
      !B  data type: 1 TEXT, 2 BINARY (the WebSocket opcodes); 0 HELLO
      !H  topic length (bytes)
          topic (UTF-8), then the payload (TEXT payloads are UTF-8)

  A stream starts with one HELLO record (no topic; payload ``!QQ``: the sender's
  epoch and the number of this stream among the streams it opened): when a sender
  had to abandon a stream and open another to the same worker, the receiver keeps
  the newer and drops the older, so that stale records never overtake newer ones.

- The broker envelope, the unit in which a publication travels through Redis
  (``broker.py`` speaks to Redis): :func:`encode_envelope` and
  :func:`decode_envelope`. The topic is the Redis channel's name; the message is::

      3s  b"MS1" (what this is, and its version)
      !B  data type: 1 TEXT, 2 BINARY
      8s  origin: the id of the server process (master and its workers) that published
          the payload

  The origin is what makes delivery exactly once across hosts: a server's own
  publications reached its workers through the relay already, so each of its
  workers ignores them when Redis sends them back.

- :class:`PubSub`: the server's side. :meth:`PubSub.publish` delivers in this
  process at once and hands one record to the relay, if this process has one (a
  pre-forked worker), and the publication to the broker, if there is one; the
  relay calls :meth:`PubSub.deliver_record` for each record another worker
  published, the broker :meth:`PubSub.deliver` for each publication of another
  server.
"""

import logging
import struct
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple, Union

from .frames import frame_header
from .signals import last_callback
from .websocket import JOIN_BELOW, WebsocketDataType, WebsocketState

log = logging.getLogger("minisoup")

__all__ = ["PubSub", "TopicRegistry", "Subscription", "RecordParser", "RelayProtocolError",
           "encode_record", "encode_envelope", "decode_envelope", "check_topic", "MAX_TOPIC_SIZE", "MAX_PUBLICATION_SIZE",
           "MAX_RECORD_SIZE"]

MAX_TOPIC_SIZE = 1024                      # bytes of a topic's UTF-8 (ValueError above)
MAX_PUBLICATION_SIZE = 16 * 1024 * 1024    # bytes of one publication's data (ValueError above)
RECORD_HEADER = struct.Struct("!IBH")      # rest length, data type, topic length
RECORD_PREFIX_SIZE = 4                     # the !I that the rest length does not count
MAX_RECORD_SIZE = RECORD_HEADER.size + MAX_TOPIC_SIZE + MAX_PUBLICATION_SIZE
FLUSH_RELAY_FROM = 32     # local subscribers from which publish() sends to the relay at once
RECORD_HELLO = 0
HELLO_PAYLOAD = struct.Struct("!QQ")     # sender's epoch, stream number
ENVELOPE_MAGIC = b"MS1"
ENVELOPE = struct.Struct("!3sB8s")       # magic, data type, origin
ORIGIN_SIZE = 8                          # bytes of a server process's id

_TEXT = int(WebsocketDataType.TEXT)
_BINARY = int(WebsocketDataType.BINARY)
_DATA_TYPES = frozenset((_TEXT, _BINARY))
_OPEN = WebsocketState.OPEN
_CLOSED = WebsocketState.CLOSED

Data = Union[str, bytes, bytearray, memoryview]


def check_topic(topic: Any) -> bytes:
    """A topic's UTF-8 bytes; ``TypeError`` unless a ``str``, ``ValueError`` if empty or
    longer than ``MAX_TOPIC_SIZE`` bytes."""
    if not isinstance(topic, str):
        raise TypeError("a topic is a str, not %s" % type(topic).__name__)
    encoded = topic.encode("utf-8")
    if not encoded or len(encoded) > MAX_TOPIC_SIZE:
        raise ValueError("a topic is 1 to %d bytes of UTF-8 (got %d)" % (MAX_TOPIC_SIZE,
                                                                         len(encoded)))
    return encoded


# -- the relay record ------------------------------------------------------------------------
class RelayProtocolError(Exception):
    """Bytes on a relay stream that are not a record (a bug or a stranger on the socket)."""


def encode_hello(epoch: int, stream: int) -> bytes:
    """The HELLO record that starts a relay stream (see the module docstring)."""
    return encode_record(RECORD_HELLO, b"", HELLO_PAYLOAD.pack(epoch, stream))


def decode_hello(payload: bytes) -> Tuple[int, int]:
    """``(epoch, stream)`` of a HELLO record's payload (``RelayProtocolError`` if malformed)."""
    if len(payload) != HELLO_PAYLOAD.size:
        raise RelayProtocolError("bad relay HELLO: %d bytes" % len(payload))
    return HELLO_PAYLOAD.unpack(payload)


def encode_record(data_type: int, topic: bytes, payload: bytes) -> bytes:
    """One publication as a relay record (see the module docstring), as one bytes object."""
    rest = RECORD_HEADER.size - RECORD_PREFIX_SIZE + len(topic) + len(payload)
    return b"".join((RECORD_HEADER.pack(rest, data_type, len(topic)), topic, payload))


class RecordParser:
    """Splits a relay byte stream back into ``(data_type, topic, payload)`` records.

    :meth:`feed` takes whatever a read returned and gives back every record it
    completed. Memory is bounded: at most one incomplete record (no more than
    ``max_record_size`` bytes, larger declared lengths raise
    :class:`RelayProtocolError`) plus the rest of one read.
    """

    __slots__ = ("_buf", "max_record_size")

    def __init__(self, max_record_size: int = MAX_RECORD_SIZE) -> None:
        self._buf = bytearray()
        self.max_record_size = max_record_size

    def feed(self, data: bytes) -> List[Tuple[int, str, bytes]]:
        """Add ``data``; return the records now complete, in order (topics decoded)."""
        buf = self._buf
        buf += data
        records = []
        offset, end = 0, len(buf)
        header_size = RECORD_HEADER.size
        while end - offset >= header_size:
            rest, data_type, topic_size = RECORD_HEADER.unpack_from(buf, offset)
            size = RECORD_PREFIX_SIZE + rest
            if size > self.max_record_size or size < header_size + topic_size:
                raise RelayProtocolError("bad relay record: %d bytes, topic %d bytes"
                                         % (size, topic_size))
            if data_type not in _DATA_TYPES and data_type != RECORD_HELLO:
                raise RelayProtocolError("bad relay record: data type %d" % data_type)
            if (topic_size == 0) != (data_type == RECORD_HELLO):
                raise RelayProtocolError("bad relay record: a topic is required on data, "
                                         "and only there")
            if end - offset < size:
                break
            start = offset + header_size
            try:
                topic = buf[start:start + topic_size].decode("utf-8")
            except UnicodeDecodeError:
                raise RelayProtocolError("bad relay record: topic is not UTF-8")
            records.append((data_type, topic, bytes(buf[start + topic_size:offset + size])))
            offset += size
        if offset:
            del buf[:offset]  # one move per read, not one per record
        return records

    def pending(self) -> int:
        """Bytes of an incomplete record held (what an EOF now would discard)."""
        return len(self._buf)


# -- the broker envelope ----------------------------------------------------------------------
def encode_envelope(data_type: int, origin: bytes) -> bytes:
    """The start of a Redis message (see the module docstring); the payload follows it."""
    return ENVELOPE.pack(ENVELOPE_MAGIC, data_type, origin)


def decode_envelope(message: bytes) -> Tuple[bytes, int, bytes]:
    """``(origin, data_type, payload)`` of a Redis message; ``RelayProtocolError`` if it
    is not one of ours (another program publishing on the channel) or is malformed."""
    if len(message) < ENVELOPE.size:
        raise RelayProtocolError("broker message of %d bytes: too short" % len(message))
    magic, data_type, origin = ENVELOPE.unpack_from(message)
    if magic != ENVELOPE_MAGIC or data_type not in _DATA_TYPES:
        raise RelayProtocolError("broker message not from minisoup (starts %r)" % message[:4])
    payload = message[ENVELOPE.size:]
    if data_type == _TEXT:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            raise RelayProtocolError("broker TEXT message is not UTF-8")
    return origin, data_type, payload


# -- who is subscribed -----------------------------------------------------------------------
class Subscription:
    """A server-side listener (``Server.subscribe``); :meth:`cancel` removes it."""

    __slots__ = ("topic", "callback", "user_data", "_registry")

    def __init__(self, registry: "TopicRegistry", topic: str, callback: Callable[..., Any],
                 user_data: tuple) -> None:
        self.topic = topic
        self.callback = callback
        self.user_data = user_data
        self._registry: Optional[TopicRegistry] = registry

    def cancel(self) -> None:
        """Stop calling the callback (idempotent; takes effect for the next publication)."""
        registry, self._registry = self._registry, None
        if registry is not None:
            registry.remove_listener(self)

    def is_active(self) -> bool:
        """False once cancelled."""
        return self._registry is not None


class TopicRegistry:
    """Topic → subscribed connections and listeners, and connection → its topics.

    Connections of a topic are kept in subscription order (a dict used as an ordered
    set), so that a publication reaches them in a stable order. Empty topics are
    dropped at once: memory follows what is subscribed, not what was ever published.

    ``watcher``, if set, is called ``watcher(topic, True)`` when a topic gets its
    first subscriber (connection or listener) and ``watcher(topic, False)`` when it
    loses its last: what a broker subscribes to follows this.
    """

    __slots__ = ("_connections", "_topics", "_listeners", "watcher")

    def __init__(self) -> None:
        self._connections: Dict[str, Dict[Any, None]] = {}
        self._topics: Dict[Any, set] = {}
        self._listeners: Dict[str, List[Subscription]] = {}
        self.watcher: Optional[Callable[[str, bool], None]] = None

    def is_active(self, topic: str) -> bool:
        """True if ``topic`` has a subscribed connection or a listener."""
        return topic in self._connections or topic in self._listeners

    def active_topics(self) -> List[str]:
        """Every topic with a subscribed connection or a listener."""
        return list(self._connections) + [t for t in self._listeners
                                          if t not in self._connections]

    def subscribe(self, conn: Any, topic: str) -> None:
        """Add ``conn`` to ``topic`` (no-op if already there)."""
        members = self._connections.get(topic)
        if members is None:
            members = self._connections[topic] = {}
            if self.watcher is not None and topic not in self._listeners:
                self.watcher(topic, True)
        members[conn] = None
        self._topics.setdefault(conn, set()).add(topic)

    def unsubscribe(self, conn: Any, topic: str) -> None:
        """Remove ``conn`` from ``topic`` (no-op if not there)."""
        topics = self._topics.get(conn)
        if topics is None or topic not in topics:
            return
        topics.discard(topic)
        if not topics:
            del self._topics[conn]
        self._drop(conn, topic)

    def forget(self, conn: Any) -> None:
        """Remove ``conn`` from every topic (it closed)."""
        for topic in self._topics.pop(conn, ()):
            self._drop(conn, topic)

    def _drop(self, conn: Any, topic: str) -> None:
        members = self._connections[topic]
        del members[conn]
        if not members:
            del self._connections[topic]
            if self.watcher is not None and topic not in self._listeners:
                self.watcher(topic, False)

    def topics_of(self, conn: Any) -> FrozenSet[str]:
        """The topics ``conn`` is subscribed to."""
        return frozenset(self._topics.get(conn, ()))

    def connections(self, topic: str) -> Optional[Dict[Any, None]]:
        """The connections subscribed to ``topic`` (None if none). Do not modify it."""
        return self._connections.get(topic)

    def add_listener(self, topic: str, callback: Callable[..., Any],
                     user_data: tuple) -> Subscription:
        """Register a server-side listener on ``topic``; returns its handle."""
        subscription = Subscription(self, topic, callback, user_data)
        listeners = self._listeners.get(topic)
        if listeners is None:
            listeners = self._listeners[topic] = []
            if self.watcher is not None and topic not in self._connections:
                self.watcher(topic, True)
        listeners.append(subscription)
        return subscription

    def remove_listener(self, subscription: Subscription) -> None:
        """Remove a listener (what :meth:`Subscription.cancel` calls)."""
        listeners = self._listeners.get(subscription.topic)
        if listeners is not None and subscription in listeners:
            listeners.remove(subscription)
            if not listeners:
                del self._listeners[subscription.topic]
                if self.watcher is not None and subscription.topic not in self._connections:
                    self.watcher(subscription.topic, False)

    def listeners(self, topic: str) -> Optional[List[Subscription]]:
        """The listeners of ``topic`` (None if none). Do not modify it."""
        return self._listeners.get(topic)


# -- the server's side -----------------------------------------------------------------------
class PubSub:
    """Publish/subscribe for one ``Server`` in one process (each worker has its own).

    ``server`` is passed to listeners as their first argument. Without a relay
    (``workers=0``, or the master before the fork) publications stay in this
    process; with one (:meth:`attach_relay`, a pre-forked worker), each is also
    sent, once, to every other worker.
    """

    def __init__(self, server: Any) -> None:
        self._server = server
        self._registry = TopicRegistry()
        self._relay: Any = None  # relay.RelayEndpoint, in a pre-forked worker
        self._broker: Any = None  # broker.RedisBroker, with Server(broker=...)

    def attach_relay(self, relay: Any) -> None:
        """Use ``relay`` (an object with ``send(record)``, which may batch, and ``flush()``)
        to reach the other workers."""
        self._relay = relay

    def attach_broker(self, broker: Any) -> None:
        """Use ``broker`` to reach other servers: ``broker.publish(data_type, topic,
        payload)`` per publication, ``broker.topic_added(topic)`` /
        ``broker.topic_removed(topic)`` as topics gain their first subscriber and lose
        their last (``None``: detach)."""
        self._broker = broker
        self._registry.watcher = self._topic_changed if broker is not None else None

    def active_topics(self) -> List[str]:
        """The topics subscribed to in this process (what the broker must listen to)."""
        return self._registry.active_topics()

    def _topic_changed(self, topic: str, active: bool) -> None:
        broker = self._broker
        if broker is not None:
            if active:
                broker.topic_added(topic)
            else:
                broker.topic_removed(topic)

    # -- connections (WebsocketConnection.subscribe & co. call these) ----------------------
    def subscribe(self, conn: Any, topic: str) -> None:
        """Subscribe ``conn`` to ``topic`` (a closed connection is ignored)."""
        check_topic(topic)
        if conn.get_state() != _CLOSED:
            self._registry.subscribe(conn, topic)

    def unsubscribe(self, conn: Any, topic: str) -> None:
        """Unsubscribe ``conn`` from ``topic`` (no-op if it was not subscribed)."""
        self._registry.unsubscribe(conn, topic)

    def topics_of(self, conn: Any) -> FrozenSet[str]:
        """The topics ``conn`` is subscribed to."""
        return self._registry.topics_of(conn)

    def connection_closed(self, conn: Any) -> None:
        """``conn`` closed: unsubscribe it from everything."""
        self._registry.forget(conn)

    # -- listeners --------------------------------------------------------------------------
    def add_listener(self, topic: str, callback: Callable[..., Any],
                     user_data: tuple) -> Subscription:
        """``callback(server, topic, data, *user_data)`` for each publication on ``topic``."""
        check_topic(topic)
        if not callable(callback):
            raise TypeError("callback must be callable")
        return self._registry.add_listener(topic, callback, user_data)

    # -- publishing ---------------------------------------------------------------------------
    def publish(self, topic: str, data: Data, exclude: Any = None) -> None:
        """Deliver ``data`` to ``topic`` here and, through the relay, in every other worker.

        ``str`` is a TEXT message, a bytes-like object a BINARY one; ``exclude`` is a
        connection of this process not to send it to. ``TypeError``/``ValueError`` for
        a bad topic or data, or data over ``MAX_PUBLICATION_SIZE`` bytes.
        """
        topic_bytes = check_topic(topic)
        if isinstance(data, str):
            data_type, text, payload = _TEXT, data, data.encode("utf-8")
        elif isinstance(data, (bytes, bytearray, memoryview)):
            data_type, text, payload = _BINARY, None, bytes(data)
        else:
            raise TypeError("publish() data is str (TEXT) or bytes (BINARY), not %s"
                            % type(data).__name__)
        if len(payload) > MAX_PUBLICATION_SIZE:
            raise ValueError("publication of %d bytes; the limit is %d"
                             % (len(payload), MAX_PUBLICATION_SIZE))
        relay = self._relay
        if relay is not None:
            relay.send(encode_record(data_type, topic_bytes, payload))
            members = self._registry.connections(topic)
            if members is not None and len(members) >= FLUSH_RELAY_FROM:
                # The relay batches until the end of the loop iteration, which would come
                # after this worker's whole fan-out below: the other workers would start
                # theirs only then. Sent first, the record lets them fan out at the same
                # time (10,000 subscribers on 2 workers: the time until the last has it
                # nearly halves), for one write per worker, small next to the sends here.
                relay.flush()
        if self._broker is not None:
            self._broker.publish(data_type, topic_bytes, payload)
        self.deliver(data_type, topic, payload, text, exclude)

    def deliver_record(self, data_type: int, topic: str, payload: bytes) -> None:
        """A record from another worker: deliver it in this process."""
        self.deliver(data_type, topic, payload)

    def deliver(self, data_type: int, topic: str, payload: bytes, text: Optional[str] = None,
                exclude: Any = None) -> None:
        """Send one publication to this process's subscribers of ``topic`` and listeners.

        Hot path. The frame is built once here for every subscriber and handed over
        as is to those that can take it (``send_broadcast``: no extension); a
        connection with permessage-deflate compresses it itself, as it must. The
        subscriber list is copied first: a send may close a connection (its
        ``write_buffer_limit``), which unsubscribes it.
        """
        registry = self._registry
        members = registry.connections(topic)
        if members:
            header = frame_header(data_type, len(payload))
            frame = (header + payload,) if len(payload) < JOIN_BELOW else (header, payload)
            for conn in list(members):
                if conn is not exclude:
                    conn.send_broadcast(data_type, payload, frame)
        listeners = registry.listeners(topic)
        if listeners:
            if data_type == _TEXT:
                data: Data = text if text is not None else payload.decode("utf-8")
            else:
                data = payload
            server = self._server
            for subscription in list(listeners):
                if not subscription.is_active():
                    continue  # cancelled by an earlier listener of this publication
                callback = subscription.callback
                last_callback.value = callback
                try:
                    callback(server, topic, data, *subscription.user_data)
                except Exception:
                    log.exception("exception in subscriber %r of topic %r", callback, topic)
