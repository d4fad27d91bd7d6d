"""WebsocketConnection without a socket: a fake transport and a fake clock drive the core."""

import pytest

from minisoup.frames import DIRECT_START, FrameParser, Opcode, build_close_payload, build_frame
from minisoup.websocket import (WebsocketConnection, WebsocketConnectionType, WebsocketDataType,
                                WebsocketState)

KEY = b"\x01\x02\x03\x04"


class FakeTransport:
    """A minisoup.interfaces.Transport that records (checked in tests/test_interfaces.py)."""

    def __init__(self):
        self.sent = bytearray()
        self.closed = self.aborted = self.shut = False
        self.protocol = None
        self.buffered = 0
        self.cork_reads = False

    def set_protocol(self, protocol):
        self.protocol = protocol

    def flush(self):
        pass

    def write(self, data):
        self.sent += data

    write_last = write

    def writelines(self, parts):
        for part in parts:
            self.sent += part

    def get_write_buffer_size(self):
        return self.buffered

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    def shutdown_write(self):
        self.shut = True

    def close(self):
        self.closed = True
        self.protocol.connection_lost(None)

    def abort(self):
        self.aborted = True
        self.protocol.connection_lost(None)

    def frames(self):
        """The frames the connection wrote (server frames: unmasked)."""
        parser = FrameParser(require_mask=False)
        parser.feed(bytes(self.sent))
        self.sent.clear()
        out = []
        while True:
            frame = parser.next_frame()
            if frame is None:
                return out
            out.append(frame)


class FakeClock:
    """A minisoup.interfaces.Clock whose time moves only in advance()."""

    def __init__(self):
        self.now = 0.0
        self.timers = []

    def call_later(self, delay, callback, *args):
        timer = FakeTimer(self.now + delay, callback, args)
        self.timers.append(timer)
        return timer

    def advance(self, seconds):
        self.now += seconds
        for timer in sorted(self.timers, key=lambda t: t.when):
            if timer.when <= self.now and not timer.cancelled:
                timer.cancelled = True
                timer.callback(*timer.args)


class FakeTimer:
    def __init__(self, when, callback, args):
        self.when, self.callback, self.args = when, callback, args
        self.cancelled = False

    def cancel(self):
        self.cancelled = True


def server_connection(**kw):
    transport, clock = FakeTransport(), FakeClock()
    conn = WebsocketConnection(transport, WebsocketConnectionType.SERVER, clock, **kw)
    transport.set_protocol(conn)
    events = []
    for name in ("message", "pong", "closing", "closed", "error"):
        conn.connect(name, lambda c, *args, n=name: events.append((n,) + args))
    return conn, transport, clock, events


def client_frame(opcode, payload=b"", fin=True, rsv=0):
    return build_frame(opcode, payload, fin, rsv, KEY)


def test_messages_in_and_out():
    conn, transport, _, events = server_connection()
    conn.data_received(client_frame(Opcode.TEXT, "héllo".encode()) + client_frame(Opcode.BINARY, b"\x00\x01"))
    assert events == [("message", WebsocketDataType.TEXT, "héllo"),
                      ("message", WebsocketDataType.BINARY, b"\x00\x01")]
    conn.send_text("out")
    conn.send_binary(b"\xff")
    assert transport.frames() == [(Opcode.TEXT, True, 0, b"out"), (Opcode.BINARY, True, 0, b"\xff")]


def test_fragments_with_a_ping_in_between():
    conn, transport, _, events = server_connection()
    conn.data_received(client_frame(Opcode.TEXT, b"ab", fin=False))
    conn.data_received(client_frame(Opcode.PING, b"p"))
    conn.data_received(client_frame(Opcode.CONTINUATION, b"cd"))
    assert events == [("message", WebsocketDataType.TEXT, "abcd")]
    assert transport.frames() == [(Opcode.PONG, True, 0, b"p")]


def test_big_payload_is_offered_a_direct_buffer_and_delivered_whole():
    conn, transport, _, events = server_connection()
    conn.set_max_incoming_payload_size(0)
    conn.set_max_total_message_size(0)
    assert conn.get_buffer() is None                 # nothing pending: normal reads
    payload = bytes(range(256)) * 1024               # 256 KiB
    frame = client_frame(Opcode.BINARY, payload)
    conn.data_received(frame[:1000])                 # header and the start of the payload
    assert conn.get_buffer() is None                 # too little yet for a buffer of its own
    pos, direct = 1000, 0
    while pos < len(frame):
        view = conn.get_buffer()
        if view is None:                             # a normal read
            assert pos < 14 + DIRECT_START
            n = min(50000, len(frame) - pos)
            conn.data_received(frame[pos:pos + n])
        else:
            assert len(view) <= len(frame) - pos
            n = min(len(view), 50000)
            view[:n] = frame[pos:pos + n]
            view.release()
            conn.buffer_updated(n)
            direct += n
        pos += n
    assert conn.get_buffer() is None
    assert direct >= len(payload) - DIRECT_START - 50000
    assert events == [("message", WebsocketDataType.BINARY, payload)]
    conn.data_received(client_frame(Opcode.PING, b"after"))
    assert transport.frames() == [(Opcode.PONG, True, 0, b"after")]


def test_peer_initiated_close_is_echoed_and_the_server_closes_tcp():
    conn, transport, _, events = server_connection()
    conn.data_received(client_frame(Opcode.CLOSE, build_close_payload(4001, "bye")))
    assert transport.frames() == [(Opcode.CLOSE, True, 0, build_close_payload(4001, ""))]
    assert transport.closed and conn.get_state() == WebsocketState.CLOSED
    assert (conn.get_close_code(), conn.get_close_data()) == (4001, "bye")
    assert [e[0] for e in events] == ["closing", "closed"]


def test_an_empty_close_is_answered_with_1000_and_reported_as_no_status():
    conn, transport, _, events = server_connection()
    conn.data_received(client_frame(Opcode.CLOSE, b""))
    assert transport.frames() == [(Opcode.CLOSE, True, 0, build_close_payload(1000))]
    assert conn.get_close_code() == 1005 and events[-1] == ("closed",)


def test_our_close_waits_for_the_peer_then_times_out():
    conn, transport, clock, events = server_connection(close_timeout=5)
    conn.close(1000, "done")
    assert conn.get_state() == WebsocketState.CLOSING
    assert transport.frames() == [(Opcode.CLOSE, True, 0, build_close_payload(1000, "done"))]
    conn.send_text("ignored")                       # not OPEN: dropped with a warning
    assert transport.frames() == []
    clock.advance(4.9)
    assert not transport.aborted
    clock.advance(0.2)
    assert transport.aborted and conn.get_close_code() == 1006
    assert [e[0] for e in events] == ["closing", "closed"]


def test_protocol_error_fails_with_a_lingering_close():
    conn, transport, clock, events = server_connection(close_timeout=2)
    conn.data_received(build_frame(Opcode.TEXT, b"unmasked"))       # clients must mask
    assert transport.frames()[0][:1] == (Opcode.CLOSE,)
    assert transport.shut and not transport.closed                   # FIN sent, still reading
    assert conn.get_close_code() == 1002
    assert events[0][0] == "error" and events[0][1].code == 1002
    conn.data_received(b"garbage after the failure is discarded")
    clock.advance(2.1)
    assert transport.aborted and events[-1] == ("closed",)


def test_invalid_utf8_fails_on_the_first_fragment():
    conn, transport, _, events = server_connection()
    conn.data_received(client_frame(Opcode.TEXT, b"ok \xff", fin=False))
    assert conn.get_close_code() == 1007
    assert not [e for e in events if e[0] == "message"]


def test_size_limits():
    conn, transport, _, _ = server_connection()
    conn.set_max_incoming_payload_size(10)
    conn.data_received(client_frame(Opcode.BINARY, b"x" * 11)[:4])  # the header alone
    assert conn.get_close_code() == 1009
    conn, transport, _, _ = server_connection()
    conn.set_max_total_message_size(10)
    conn.data_received(client_frame(Opcode.BINARY, b"x" * 6, fin=False))
    conn.data_received(client_frame(Opcode.CONTINUATION, b"x" * 6))
    assert conn.get_close_code() == 1009


def test_keepalive_pings_and_pong_timeout():
    conn, transport, clock, events = server_connection()
    conn.set_keepalive_interval(10)
    conn.set_keepalive_pong_timeout(3)
    clock.advance(10)
    assert transport.frames() == [(Opcode.PING, True, 0, b"")]
    conn.data_received(client_frame(Opcode.PONG, b""))              # answered in time
    clock.advance(3)
    assert conn.get_state() == WebsocketState.OPEN
    clock.advance(7)
    assert transport.frames()[0][0] == Opcode.PING
    clock.advance(3.1)                                                # no pong this time
    assert conn.get_close_code() == 1008


def test_exception_in_a_message_handler_closes_with_1011():
    conn, transport, _, _ = server_connection()

    def handler(c, kind, data):
        raise RuntimeError("handler bug")

    conn.connect("message", handler)
    conn.data_received(client_frame(Opcode.TEXT, b"hi"))
    assert transport.frames()[0][3][:2] == (1011).to_bytes(2, "big")


def test_write_buffer_limit_cuts_a_peer_that_does_not_read():
    conn, transport, _, _ = server_connection(write_buffer_limit=100)
    transport.buffered = 50
    conn.send_binary(b"x" * 500)          # under the limit before it: queued
    transport.buffered = 550
    conn.send_binary(b"y")                # the peer is not reading: 1008
    frames = transport.frames()
    assert frames[0][3] == b"x" * 500 and frames[-1][0] == Opcode.CLOSE
    assert conn.get_close_code() == 1008


def test_client_side_masks_and_rejects_masked_server_frames():
    transport, clock = FakeTransport(), FakeClock()
    conn = WebsocketConnection(transport, WebsocketConnectionType.CLIENT, clock)
    transport.protocol = conn
    conn.send_text("masked")
    assert transport.sent[1] & 0x80
    parser = FrameParser(require_mask=True)
    parser.feed(bytes(transport.sent))
    assert parser.next_frame() == (Opcode.TEXT, True, 0, b"masked")
    transport.sent.clear()
    conn.data_received(build_frame(Opcode.TEXT, b"x", mask_key=KEY))   # servers must not mask
    assert conn.get_close_code() == 1002


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 5000])
def test_close_refuses_codes_that_cannot_be_sent(code):
    conn, _, _, _ = server_connection()
    if code in (0, 1005):
        conn.close(code)                   # "no status": an empty close payload
        assert conn.get_state() == WebsocketState.CLOSING
    else:
        with pytest.raises(ValueError):
            conn.close(code)


def test_signal_handlers_connect_disconnect_and_emission_order():
    transport, clock = FakeTransport(), FakeClock()
    conn = WebsocketConnection(transport, WebsocketConnectionType.SERVER, clock)
    transport.set_protocol(conn)
    seen = []
    first = conn.connect("message", lambda c, t, d, tag: seen.append((tag, d)), "first")

    def second(c, t, d):
        seen.append(("second", d))
        # Connected during an emission: runs from the next one on (as SignalEmitter).
        conn.connect("message", lambda c, t, d: seen.append(("late", d)))

    second_id = conn.connect("message", second)
    conn.data_received(client_frame(Opcode.BINARY, b"1"))
    assert seen == [("first", b"1"), ("second", b"1")]
    conn.disconnect_signal(first)
    conn.disconnect_signal(second_id)
    with pytest.raises(KeyError):
        conn.disconnect_signal(first)
    with pytest.raises(ValueError):
        conn.connect("no-such-signal", print)
    seen.clear()
    conn.data_received(client_frame(Opcode.BINARY, b"2"))
    assert seen == [("late", b"2")]


def test_one_message_handler_costs_an_idle_connection_little_memory():
    # Idle memory (issue 15): an application's one "message" handler used to cost a dict,
    # a list and a tuple per connection (~340 bytes).
    import tracemalloc

    def echo(conn, kind, data):
        conn.send_message(kind, data)

    conns = [WebsocketConnection(FakeTransport(), WebsocketConnectionType.SERVER, FakeClock())
             for _ in range(200)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for conn in conns:
            conn.connect("message", echo)
        per_conn = (tracemalloc.get_traced_memory()[0] - before) / len(conns)
    finally:
        tracemalloc.stop()
    assert per_conn < 200, per_conn
