"""Unit tests of the event loop: timers, signals, SocketTransport buffering and closing."""

import logging
import os
import signal
import socket
import time

import pytest

from conftest import NullProtocol, linux_tcp_info, segments_received
from minisoup.loop import EVENT_READ, EVENT_WRITE, Loop, SocketTransport


class Recorder:
    """A protocol object that records what the transport tells it."""

    def __init__(self):
        self.data = []
        self.eof = False
        self.lost = []
        self.drained = 0

    def data_received(self, data):
        self.data.append(bytes(data))

    def eof_received(self):
        self.eof = True

    def connection_lost(self, exc):
        self.lost.append(exc)

    def write_drained(self):
        self.drained += 1


def run_until(loop, predicate, timeout=3.0):
    deadline = time.monotonic() + timeout

    def check():
        if predicate() or time.monotonic() > deadline:
            loop.stop()
        else:
            loop.call_later(0.005, check)

    loop.call_soon(check)
    loop.run()
    assert predicate(), "condition not reached within %s s" % timeout


def test_timers_run_in_order_and_cancel_works():
    loop = Loop()
    order = []
    loop.call_later(0.03, order.append, "late")
    loop.call_later(0.01, order.append, "early")
    cancelled = loop.call_later(0.02, order.append, "cancelled")
    loop.call_soon(order.append, "soon")
    cancelled.cancel()
    loop.call_later(0.05, loop.stop)
    loop.run()
    loop.close()
    assert order == ["soon", "early", "late"]


def test_stop_before_run_returns_at_once():
    loop = Loop()
    loop.stop()
    start = time.monotonic()
    loop.run()
    assert time.monotonic() - start < 0.5
    loop.close()


def test_an_exception_in_a_callback_is_logged_and_the_loop_goes_on(caplog):
    loop = Loop()
    ran = []

    def boom():
        raise RuntimeError("bad callback")

    loop.call_soon(boom)
    loop.call_later(0.01, ran.append, 1)
    loop.call_later(0.02, loop.stop)
    with caplog.at_level(logging.ERROR, "minisoup"):
        loop.run()
    loop.close()
    assert ran == [1]
    assert any("bad callback" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


def test_slow_callback_warning(caplog):
    loop = Loop()
    loop.slow_callback_s = 0.05

    def slow():
        time.sleep(0.08)

    loop.call_soon(slow)
    loop.call_later(0.1, loop.stop)
    with caplog.at_level(logging.WARNING, "minisoup"):
        loop.run()
    loop.close()
    assert any("blocked the loop" in r.getMessage() and "slow" in r.getMessage()
               for r in caplog.records)


def test_signal_handler_runs_from_the_loop():
    loop = Loop()
    got = []
    loop.add_signal_handler(signal.SIGUSR1, got.append)
    try:
        loop.call_later(0.01, os.kill, os.getpid(), signal.SIGUSR1)
        run_until(loop, lambda: got)
    finally:
        loop.close()
    assert got == [signal.SIGUSR1]
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def make_pair(loop):
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    proto = Recorder()
    transport = SocketTransport(loop, ours, proto)
    return transport, proto, peer


def test_reads_reach_the_protocol_and_eof_is_reported():
    loop = Loop()
    transport, proto, peer = make_pair(loop)
    peer.sendall(b"hello")
    peer.shutdown(socket.SHUT_WR)
    run_until(loop, lambda: proto.eof)
    assert b"".join(proto.data) == b"hello"
    transport.abort()
    assert proto.lost == [None]
    peer.close()
    loop.close()


def test_writes_are_buffered_when_the_peer_does_not_read_and_flushed_later():
    loop = Loop()
    transport, proto, peer = make_pair(loop)
    payload = os.urandom(8 << 20)
    transport.writelines([b"head", payload])          # more than the socket buffers hold
    assert transport.get_write_buffer_size() > 0       # queued, and write() did not block
    received = bytearray()
    peer.setblocking(False)

    def read_some():
        try:
            while True:
                chunk = peer.recv(1 << 20)
                if not chunk:
                    break
                received.extend(chunk)
        except BlockingIOError:
            pass
        return len(received) == len(payload) + 4

    run_until(loop, read_some, timeout=10)
    assert bytes(received) == b"head" + payload
    assert transport.get_write_buffer_size() == 0 and proto.drained >= 1
    transport.abort()
    peer.close()
    loop.close()


def test_close_flushes_first_and_abort_does_not():
    loop = Loop()
    transport, proto, peer = make_pair(loop)
    data = os.urandom(4 << 20)
    transport.write(data)
    transport.close()
    assert transport.is_closing()
    transport.write(b"ignored after close")
    peer.settimeout(5)
    received = bytearray()
    peer.setblocking(False)

    def drain():
        try:
            while True:
                chunk = peer.recv(1 << 20)
                if not chunk:
                    return True
                received.extend(chunk)
        except BlockingIOError:
            return False

    run_until(loop, drain, timeout=10)
    assert bytes(received) == data and proto.lost == [None]
    peer.close()

    transport, proto, peer = make_pair(loop)
    transport.write(os.urandom(8 << 20))
    transport.abort()
    assert proto.lost == [None] and transport.get_write_buffer_size() == 0
    peer.close()
    loop.close()


def test_a_closed_transport_is_freed_without_the_cyclic_gc():
    # Nothing per connection may wait for the garbage collector (issue 15): once the
    # transport is closed and its protocol lets go, reference counting frees it.
    import gc
    import weakref
    loop = Loop()
    transport, proto, peer = make_pair(loop)
    ref = weakref.ref(transport)
    gc.disable()
    try:
        transport.close()
        assert proto.lost == [None]
        del transport
        assert ref() is None
    finally:
        gc.enable()
    peer.close()
    loop.close()


def test_shutdown_write_sends_fin_after_the_buffer_and_keeps_reading():
    loop = Loop()
    transport, proto, peer = make_pair(loop)
    transport.write(b"last words")
    transport.shutdown_write()
    peer.settimeout(5)
    assert peer.recv(100) == b"last words"
    assert peer.recv(100) == b""                   # FIN
    peer.sendall(b"still listening")
    run_until(loop, lambda: proto.data)
    assert proto.data == [b"still listening"]
    transport.abort()
    peer.close()
    loop.close()


def test_pause_and_resume_reading():
    loop = Loop()
    transport, proto, peer = make_pair(loop)
    transport.pause_reading()
    peer.sendall(b"wait")
    loop.call_later(0.05, loop.stop)
    loop.run()
    assert proto.data == []
    transport.resume_reading()
    run_until(loop, lambda: proto.data)
    assert proto.data == [b"wait"]
    transport.abort()
    peer.close()
    loop.close()


class Echo(Recorder):
    """Writes three answers per read, then optionally closes: exercises corked writes."""

    def __init__(self, close_after=False):
        super().__init__()
        self.transport = None
        self.close_after = close_after

    def data_received(self, data):
        super().data_received(data)
        for i in range(3):
            self.transport.write(b"%d:%s;" % (i, data))
        self.transport.writelines([b"[", b"lines", b"]"])
        if self.close_after:
            self.transport.close()


def test_corked_writes_are_sent_together_in_order_and_close_flushes_them():
    for close_after in (False, True):
        loop = Loop()
        ours, peer = socket.socketpair()
        ours.setblocking(False)
        proto = Echo(close_after)
        transport = proto.transport = SocketTransport(loop, ours, proto)
        transport.cork_reads = True
        peer.sendall(b"x")
        run_until(loop, lambda: proto.data)
        peer.settimeout(5)
        expected = b"0:x;1:x;2:x;[lines]"
        got = b""
        while len(got) < len(expected):
            got += peer.recv(100)
        assert got == expected
        assert transport.get_write_buffer_size() == 0
        if close_after:
            assert peer.recv(100) == b"" and proto.lost == [None]
        else:
            transport.abort()
        peer.close()
        loop.close()


class Direct(Recorder):
    """Offers a buffer of its own for the first ``room`` bytes (get_buffer), then none."""

    def __init__(self, room):
        super().__init__()
        self.store = bytearray(room)
        self.filled = 0
        self.updates = []

    def get_buffer(self):
        if self.filled == len(self.store):
            return None
        return memoryview(self.store)[self.filled:]

    def buffer_updated(self, nbytes):
        self.updates.append(nbytes)
        self.filled += nbytes


def test_a_protocol_buffer_receives_the_bytes_it_asks_for_and_the_rest_goes_to_data_received():
    for cork in (False, True):
        loop = Loop()
        ours, peer = socket.socketpair()
        ours.setblocking(False)
        proto = Direct(room=10000)
        transport = SocketTransport(loop, ours, proto)
        transport.cork_reads = cork
        message = bytes(range(256)) * 50          # 12,800 bytes
        peer.sendall(message)
        peer.shutdown(socket.SHUT_WR)
        run_until(loop, lambda: proto.eof)
        assert bytes(proto.store) == message[:10000]
        assert sum(proto.updates) == 10000 and all(proto.updates)
        assert b"".join(proto.data) == message[10000:]
        transport.abort()
        peer.close()
        loop.close()


def test_set_protocol_picks_up_the_new_protocols_get_buffer():
    loop = Loop()
    transport, first, peer = make_pair(loop)
    peer.sendall(b"http")
    run_until(loop, lambda: first.data)
    second = Direct(room=4)
    transport.set_protocol(second)
    peer.sendall(b"wsws+rest")
    run_until(loop, lambda: second.data)
    assert bytes(second.store) == b"wsws" and b"".join(second.data) == b"+rest"
    transport.abort()
    peer.close()
    loop.close()


class Slotless(NullProtocol):
    """A protocol with a __dict__ and no optional method: instances may carry them."""


class Slotted:
    """A protocol with __slots__ and no optional method (as HTTPConnection lacks get_buffer)."""

    __slots__ = ("data",)

    def __init__(self):
        self.data = []

    def data_received(self, data):
        self.data.append(bytes(data))

    def eof_received(self):
        pass

    def connection_lost(self, exc):
        pass


def test_optional_methods_given_by_instances_are_used_and_a_slotted_class_has_none():
    # The transport looks a class's optional methods up once per class; an instance that
    # may carry its own (a __dict__) is still asked each time.
    loop = Loop()
    transport, first, peer = make_pair(loop)
    try:
        for _ in range(2):
            slotted = Slotted()
            transport.set_protocol(slotted)
            peer.sendall(b"x")
            run_until(loop, lambda: slotted.data)
        store = bytearray(2)
        own = Slotless()
        own.get_buffer = lambda: memoryview(store) if not own.updates else None
        own.updates = []
        own.buffer_updated = own.updates.append
        drained = []
        own.write_drained = lambda: drained.append(1)
        transport.set_protocol(Slotless())      # the class seen once: instances still asked
        transport.set_protocol(own)
        peer.sendall(b"ab")
        run_until(loop, lambda: own.updates)
        assert bytes(store) == b"ab" and own.updates == [2]
        transport.write(os.urandom(8 << 20))   # more than the socket buffers hold: queued
        assert transport.get_write_buffer_size() > 0
        peer.setblocking(False)

        def read_all():
            try:
                while peer.recv(1 << 20):
                    pass
            except BlockingIOError:
                pass
            return drained

        run_until(loop, read_all, timeout=10)
        assert drained == [1]
    finally:
        transport.abort()
        peer.close()
        loop.close()


def test_handing_over_to_a_protocol_with_optional_methods_allocates_nothing_per_connection():
    # Idle memory (issue 15): the transport used to keep a bound get_buffer method (64
    # bytes) for as long as an upgraded connection lived.
    import tracemalloc
    loop = Loop()
    pairs = [make_pair(loop) for _ in range(100)]
    protocols = [Direct(room=4) for _ in pairs]
    try:
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for (transport, _first, _peer), proto in zip(pairs, protocols):
                transport.set_protocol(proto)
            per_conn = (tracemalloc.get_traced_memory()[0] - before) / len(pairs)
        finally:
            tracemalloc.stop()
        assert per_conn < 16, per_conn
        transport, _first, peer = pairs[0]
        peer.sendall(b"abcdef")
        run_until(loop, lambda: protocols[0].data)
        assert bytes(protocols[0].store) == b"abcd" and protocols[0].data == [b"ef"]
    finally:
        for transport, _first, peer in pairs:
            transport.abort()
            peer.close()
        loop.close()


def test_register_and_modify_keep_selectors_rules():
    loop = Loop()
    ours, peer = socket.socketpair()
    try:
        loop.register(ours, EVENT_READ, lambda mask: None)
        try:
            loop.register(ours, EVENT_READ, lambda mask: None)
            raise AssertionError("registered twice")
        except KeyError:
            pass
        loop.remove_reader(ours)
        loop.remove_reader(ours)                  # not watched: no error
        try:
            loop.modify(ours, EVENT_WRITE, lambda mask: None)
            raise AssertionError("modified an unwatched socket")
        except KeyError:
            pass
    finally:
        ours.close()
        peer.close()
        loop.close()


def test_callbacks_get_the_events_they_asked_for():
    loop = Loop()
    ours, peer = socket.socketpair()
    got = []
    try:
        loop.register(ours, EVENT_WRITE, got.append)   # writable at once, not readable
        peer.sendall(b"x")
        run_until(loop, lambda: got)
        assert set(got) == {EVENT_WRITE}
        got.clear()
        loop.modify(ours, EVENT_READ | EVENT_WRITE, got.append)
        run_until(loop, lambda: got)
        assert got[0] == EVENT_READ | EVENT_WRITE
        got.clear()
        loop.modify(ours, EVENT_READ, got.append)
        peer.close()                                   # a hang-up reads as readable only
        run_until(loop, lambda: got)
        assert set(got) == {EVENT_READ}
    finally:
        loop.remove_reader(ours)
        ours.close()
        peer.close()
        loop.close()


def test_a_socket_closed_before_it_is_unwatched_can_still_be_removed():
    loop = Loop()
    ours, peer = socket.socketpair()
    loop.add_reader(ours, lambda mask: None)
    ours.close()
    loop.remove_reader(ours)                           # found by identity, fileno() is -1
    again, other = socket.socketpair()                 # likely the same descriptor number
    try:
        loop.add_reader(again, lambda mask: None)      # no "already registered"
        loop.remove_reader(again)
    finally:
        for sock in (peer, again, other):
            sock.close()
        loop.close()


def test_no_event_reaches_a_socket_unwatched_or_replaced_earlier_in_the_same_batch():
    # Two readable sockets come back from one epoll_wait. Whichever callback runs first
    # closes the other socket and watches a fresh one in its place, with the same
    # descriptor number: the other's event must reach neither the callback removed nor
    # the new socket's (nothing was sent to it).
    loop = Loop()
    pairs = [socket.socketpair() for _ in range(2)]
    calls = []
    replacement = []

    def make_callback(index):
        def on_readable(mask):
            calls.append(index)
            if len(calls) > 1:
                return
            other_sock = pairs[1 - index][0]
            number = other_sock.fileno()
            loop.remove_reader(other_sock)
            other_sock.close()
            fresh, fresh_peer = socket.socketpair()
            replacement.extend([fresh, fresh_peer])
            assert number in (fresh.fileno(), fresh_peer.fileno())
            if fresh.fileno() != number:
                fresh, fresh_peer = fresh_peer, fresh
            loop.add_reader(fresh, lambda mask: calls.append("replacement"))
            loop.remove_reader(pairs[index][0])
        return on_readable

    try:
        for index, (ours, peer) in enumerate(pairs):
            loop.add_reader(ours, make_callback(index))
            peer.sendall(b"x")
        loop.call_later(0.05, loop.stop)
        loop.run()
        assert len(calls) == 1, calls
    finally:
        for sock in [s for pair in pairs for s in pair] + replacement:
            loop.remove_reader(sock)
            sock.close()
        loop.close()


def test_the_loops_selector_reports_what_the_default_selector_reports():
    # loop.Selector's own select() (over epoll) must give the same (key, events) as the
    # selectors module's, for readable, writable, both, and a peer that hung up.
    import selectors

    from minisoup.loop import Selector

    a, b = socket.socketpair()
    c, d = socket.socketpair()
    d.close()  # c: hung up (readable: EOF; writable: EPIPE)
    mine, theirs = Selector(), selectors.DefaultSelector()
    try:
        for sel in (mine, theirs):
            sel.register(a, selectors.EVENT_READ | selectors.EVENT_WRITE, "a")
            sel.register(b, selectors.EVENT_READ, "b")
            sel.register(c, selectors.EVENT_READ | selectors.EVENT_WRITE, "c")

        def seen(sel, timeout):
            return sorted((key.data, events) for key, events in sel.select(timeout))

        assert seen(mine, 0) == seen(theirs, 0)
        b.send(b"x")  # a: readable too
        assert seen(mine, 0.01) == seen(theirs, 0.01) == [
            ("a", selectors.EVENT_READ | selectors.EVENT_WRITE),
            ("c", selectors.EVENT_READ | selectors.EVENT_WRITE)]
        assert mine.key_map()[a.fileno()].data == "a"
        for sel in (mine, theirs):
            sel.unregister(a)
            sel.unregister(c)
        assert seen(mine, 0) == seen(theirs, 0) == []
        assert seen(mine, 0.001) == []
    finally:
        mine.close()
        theirs.close()
        for s in (a, b, c):
            s.close()


def test_the_loops_selector_registers_as_the_default_selector_does():
    # loop.Selector's own register()/unregister() (over epoll, for a plain socket) must
    # give the same keys and raise the same errors as the selectors module's.
    import selectors

    from minisoup.loop import Selector

    a, b = socket.socketpair()
    mine, theirs = Selector(), selectors.DefaultSelector()
    try:
        for sel in (mine, theirs):
            key = sel.register(a, selectors.EVENT_READ | selectors.EVENT_WRITE, "a")
            assert type(key) is selectors.SelectorKey
            assert key == (a, a.fileno(), 3, "a") and sel.get_key(a) is key
            with pytest.raises(KeyError):
                sel.register(a, selectors.EVENT_READ)
            for events in (0, 4, selectors.EVENT_READ | 8):
                with pytest.raises(ValueError):
                    sel.register(b, events)
            with pytest.raises(KeyError):
                sel.unregister(b)
            assert sel.unregister(a) is key
            with pytest.raises(KeyError):
                sel.unregister(a)
            sel.register(b, selectors.EVENT_WRITE, "b")
        assert [k.data for k, _ in mine.select(0)] == [k.data for k, _ in theirs.select(0)] == ["b"]
        for sel in (mine, theirs):
            key = sel.register(a, selectors.EVENT_READ, "a")
        fd = a.fileno()
        a.close()  # closed while registered: found by the socket object, as the stdlib does
        for sel in (mine, theirs):
            assert sel.unregister(a).fd == fd
    finally:
        mine.close()
        theirs.close()
        a.close()
        b.close()


# -- the FIN with the last bytes (MSG_MORE) -------------------------------------------------

class CloseOnRead(Recorder):
    """Answers its first read and closes (as a WebSocket answers the peer's close frame)."""

    def __init__(self):
        super().__init__()
        self.transport = None

    def data_received(self, data):
        super().data_received(data)
        self.transport.write(b"bye")
        self.transport.close()


def _tcp_pair(loop, proto):
    """A SocketTransport over one end of a TCP connection on 127.0.0.1, and the other end."""
    listener = socket.create_server(("127.0.0.1", 0))
    peer = socket.create_connection(listener.getsockname(), timeout=5)
    ours, _ = listener.accept()
    listener.close()
    ours.setblocking(False)
    return SocketTransport(loop, ours, proto), peer


def _read_to_eof(peer):
    """What ``peer`` reads until EOF, or until a reset (which comes after the bytes sent)."""
    received = b""
    try:
        while True:
            data = peer.recv(4096)
            if not data:
                return received
            received += data
    except ConnectionResetError:
        return received


def _segments_until_closed(how):
    """``(bytes the peer read until EOF, segments it received meanwhile)`` when our end
    sends 100 bytes with ``write``/``write_last`` and closes, or (``corked``/``uncorked``)
    answers the peer's bytes and closes, its writes corked during the read or not."""
    loop = Loop()
    proto = CloseOnRead() if how in ("corked", "uncorked") else Recorder()
    transport, peer = _tcp_pair(loop, proto)
    proto.transport = transport
    try:
        before = segments_received(peer)
        if how in ("corked", "uncorked"):
            transport.cork_reads = how == "corked"  # corked: as after a WebSocket upgrade
            peer.sendall(b"close")
            run_until(loop, lambda: proto.lost)
        else:
            getattr(transport, how)(b"x" * 100)
            transport.close()
        received = _read_to_eof(peer)
        assert proto.lost == [None]
        return received, segments_received(peer) - before
    finally:
        transport.abort()
        peer.close()
        loop.close()


@linux_tcp_info
def test_write_last_sends_the_fin_in_the_segment_of_its_bytes():
    # write_last() sends with MSG_MORE: the close() that follows puts the FIN in the same
    # segment (one segment and one wake-up of the peer fewer). write() then close():
    # the bytes, then the FIN, two segments.
    assert _segments_until_closed("write") == (b"x" * 100, 2)
    assert _segments_until_closed("write_last") == (b"x" * 100, 1)


@linux_tcp_info
def test_bytes_still_queued_at_close_go_with_the_fin():
    # Writes corked during a read are queued when the protocol closes (a WebSocket's answer
    # to the peer's close frame): they are sent with MSG_MORE, the FIN in their segment.
    # (Both counts include our ACK of the peer's bytes, if the kernel sent it alone.)
    corked, corked_segments = _segments_until_closed("corked")
    uncorked, uncorked_segments = _segments_until_closed("uncorked")
    assert corked == uncorked == b"bye"
    assert corked_segments == uncorked_segments - 1


@linux_tcp_info
def test_bytes_held_for_the_fin_still_go_out_when_the_peer_sent_bytes_nobody_read():
    # Closing a socket with unread input resets the connection, and the kernel drops what
    # it still held: bytes sent with MSG_MORE would be lost (a 400 or 413 answered while
    # the client still uploads). The transport sends them, with the FIN, before it closes.
    loop = Loop()
    transport, peer = _tcp_pair(loop, Recorder())
    try:
        peer.sendall(b"unread upload " * 100)
        time.sleep(0.05)  # in our kernel's receive queue, never read
        transport.write_last(b"HTTP/1.1 413 Payload Too Large\r\n\r\n")
        transport.close()
        assert _read_to_eof(peer) == b"HTTP/1.1 413 Payload Too Large\r\n\r\n"
    finally:
        transport.abort()
        peer.close()
        loop.close()
