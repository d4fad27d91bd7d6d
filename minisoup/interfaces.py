"""The seams between minisoup's stateful parts, declared as ``typing.Protocol`` classes.

A connection is three objects that meet here and nowhere else:

- a **transport** owns the byte stream (the socket) and its write buffer;
- the **stream protocol** it drives consumes the bytes and writes through the transport
  (``connection.HTTPConnection``, then ``websocket.WebsocketConnection`` after the upgrade:
  one ``Transport.set_protocol`` call hands the stream over);
- a **clock** gives the protocol its timers (close timeout, keep-alive pings).

+------------------+------------------------------------------------------------------+
| interface        | implemented by                                                   |
+==================+==================================================================+
| Transport        | ``loop.SocketTransport`` (the server's, non-blocking),           |
|                  | ``client._BlockingTransport`` (the blocking client's),           |
|                  | ``FakeTransport`` in tests/test_websocket.py (no socket)         |
+------------------+------------------------------------------------------------------+
| StreamProtocol   | ``connection.HTTPConnection``, ``websocket.WebsocketConnection`` |
+------------------+------------------------------------------------------------------+
| Clock            | ``loop.Loop``, ``client._Clock``, ``FakeClock`` in the tests     |
+------------------+------------------------------------------------------------------+
| TimerHandle      | ``loop.Handle``, ``FakeTimer`` in the tests                      |
+------------------+------------------------------------------------------------------+

The classes are structural: nothing inherits from them, an object conforms by having
the members. ``tests/test_interfaces.py`` checks every implementation above, both
with ``isinstance`` (they are ``runtime_checkable``) and member by member against the
signatures declared here.

Optional protocol methods. ``typing.Protocol`` has no optional members, so each
optional group is a protocol of its own that a stream protocol implements as well,
or not: :class:`BufferedStreamProtocol` (``get_buffer``/``buffer_updated``, receive
into the protocol's own memory) and :class:`DrainListener` (``write_drained``). A
transport looks them up once, with ``getattr``, when it is given the protocol
(``__init__`` and ``set_protocol``), not on every read.
"""

from typing import Any, Callable, Optional, Protocol, Sequence, Union, runtime_checkable

__all__ = ["Buffer", "Transport", "StreamProtocol", "BufferedStreamProtocol",
           "DrainListener", "Clock", "TimerHandle"]

Buffer = Union[bytes, bytearray, memoryview]
"""What a transport accepts to send: any bytes-like object the socket takes as is."""


@runtime_checkable
class StreamProtocol(Protocol):
    """What a transport calls on the object that consumes its bytes (asyncio's names)."""

    def data_received(self, data: bytes) -> None:
        """Bytes read from the peer; the protocol may keep ``data`` (it is its own copy)."""

    def eof_received(self) -> None:
        """The peer sent FIN; the transport has stopped reading."""

    def connection_lost(self, exc: Optional[Exception]) -> None:
        """The stream is closed (``exc`` is the I/O error, or None); called exactly once."""


@runtime_checkable
class BufferedStreamProtocol(StreamProtocol, Protocol):
    """Optional: a protocol that can name where the next bytes go (no copy).

    Before each read the transport calls :meth:`get_buffer`; ``None`` means a normal
    read and :meth:`StreamProtocol.data_received`. A view means: receive into it, then
    call :meth:`buffer_updated` (the transport releases the view first).
    """

    def get_buffer(self) -> Optional[memoryview]:
        """A writable view to receive the next bytes into, or None."""

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` (> 0) were received into the view :meth:`get_buffer` returned."""


@runtime_checkable
class DrainListener(Protocol):
    """Optional: a protocol told when the transport's write buffer has emptied."""

    def write_drained(self) -> None:
        """Everything queued was taken by the kernel (the moment to send more)."""


@runtime_checkable
class Transport(Protocol):
    """What a stream protocol (and the server's upgrade) needs of its byte stream.

    Writes never block the caller: what the peer cannot take yet is buffered (a
    blocking transport simply sends at once). Once closing, writes are ignored.
    """

    cork_reads: bool
    """A hint: batch the writes made while the protocol handles one read, sending them
    when it returns. Set at the WebSocket upgrade; a transport that sends each write
    at once (the blocking client's) may ignore it."""

    def write(self, data: Buffer) -> None:
        """Queue ``data`` for sending."""

    def write_last(self, data: Buffer) -> None:
        """:meth:`write` for the last bytes before :meth:`close`, which the caller calls
        right after (a transport may send the end of the stream with them)."""

    def writelines(self, parts: Sequence[Buffer]) -> None:
        """Queue several buffers, in order (sent together where the transport can)."""

    def flush(self) -> None:
        """Send what is queued now, even while corked (the 101 before the handler runs)."""

    def get_write_buffer_size(self) -> int:
        """Bytes queued and not yet taken by the kernel."""

    def pause_reading(self) -> None:
        """Stop delivering bytes until :meth:`resume_reading` (back-pressure)."""

    def resume_reading(self) -> None:
        """Deliver bytes again."""

    def shutdown_write(self) -> None:
        """Send FIN once the buffer is flushed; reading goes on (a lingering close)."""

    def close(self) -> None:
        """Close after the write buffer is flushed; ``connection_lost`` follows."""

    def abort(self) -> None:
        """Close now, dropping anything still buffered; ``connection_lost`` follows."""

    def set_protocol(self, protocol: StreamProtocol) -> None:
        """Deliver the stream to ``protocol`` from now on (the WebSocket upgrade)."""


@runtime_checkable
class TimerHandle(Protocol):
    """A scheduled callback that can still be called off."""

    def cancel(self) -> None:
        """Do not run the callback (no effect once it has run)."""


@runtime_checkable
class Clock(Protocol):
    """The timers a WebsocketConnection needs (the loop's, or a fake one in tests)."""

    def call_later(self, delay: float, callback: Callable[..., Any],
                   *args: Any) -> TimerHandle:
        """Run ``callback(*args)`` after ``delay`` seconds."""
