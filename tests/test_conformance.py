"""RFC 6455 conformance of the server, organised like the Autobahn|Testsuite sections.

An echo handler is driven over raw sockets with hand-built masked frames
(``minisoup.frames.build_frame``); the server's frames are parsed by the small
reader in ``wsraw.py``. Each case checks what comes back on the wire: the echo,
the pong, or the close code the connection is failed with.
"""

import socket
import struct
import time

import pytest

import minisoup
from conftest import running
from wsraw import BINARY, CLOSE, CONT, MASK_KEY, PING, PONG, TEXT, Closed, RawWebSocket

SHORT = 2.0  # seconds: every answer in this file is expected well within it


def _echo(server, msg, path, conn, user_data):
    def on_message(conn, kind, data):
        conn.send_message(kind, data)
    conn.connect("message", on_message)


@pytest.fixture(scope="module")
def port():
    # One server for the whole module: each case opens its own connection.
    server = minisoup.Server(close_timeout=1.0)
    server.add_websocket_handler("/", None, None, _echo)
    with running(server) as p:
        yield p


@pytest.fixture
def ws(port):
    with RawWebSocket(port, timeout=SHORT) as raw:
        yield raw


def assert_failed(ws, code):
    """The server fails the connection with ``code`` and then closes the TCP connection."""
    ws.expect_close(code)
    ws.send_close(code if code not in (1005, 1006) else None)
    assert ws.wait_eof(SHORT), "server did not close the TCP connection"


def assert_alive(ws):
    """The connection still works: a text round trip."""
    ws.send_frame(TEXT, b"alive?")
    assert ws.read_message() == (TEXT, b"alive?")


# -- 1 framing -----------------------------------------------------------------------
LENGTHS = [0, 125, 126, 127, 128, 65535, 65536]


@pytest.mark.parametrize("length", LENGTHS)
def test_1_1_text_lengths_echoed(ws, length):
    payload = b"*" * length
    ws.send_frame(TEXT, payload)
    assert ws.read_message() == (TEXT, payload)


@pytest.mark.parametrize("length", LENGTHS)
def test_1_2_binary_lengths_echoed(ws, length):
    payload = bytes(range(256)) * (length // 256) + bytes(range(length % 256))
    ws.send_frame(BINARY, payload)
    assert ws.read_message() == (BINARY, payload)


@pytest.mark.parametrize("opcode", [TEXT, BINARY])
def test_1_3_frame_sent_byte_by_byte(ws, opcode):
    frame = minisoup.frames.build_frame(opcode, b"sent one byte at a time", True, 0, MASK_KEY)
    for i in range(len(frame)):
        ws.send_raw(frame[i:i + 1])
    assert ws.read_message() == (opcode, b"sent one byte at a time")


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_1_4_many_frames_in_chunks(ws, chunk):
    payloads = [b"m%d" % i * (i * 37 % 300) for i in range(20)]
    stream = b"".join(minisoup.frames.build_frame(BINARY, p, True, 0, MASK_KEY) for p in payloads)
    for i in range(0, len(stream), chunk):
        ws.send_raw(stream[i:i + chunk])
    for p in payloads:
        assert ws.read_message() == (BINARY, p)


def test_1_5_many_frames_in_one_write(ws):
    payloads = [b"%d" % i for i in range(200)]
    ws.send_raw(b"".join(minisoup.frames.build_frame(TEXT, p, True, 0, MASK_KEY)
                         for p in payloads))
    for p in payloads:
        assert ws.read_message() == (TEXT, p)


# -- 2 ping/pong -----------------------------------------------------------------------
@pytest.mark.parametrize("length", [0, 125])
def test_2_1_ping_answered_with_same_payload(ws, length):
    payload = bytes(i % 256 for i in range(length))
    ws.send_frame(PING, payload)
    assert ws.read_frame()[::3] == (PONG, payload)


def test_2_2_binary_ping_payload(ws):
    ws.send_frame(PING, b"\x00\xff\xfe\xfd\xfc\xfb\x00\xff")
    assert ws.read_frame()[::3] == (PONG, b"\x00\xff\xfe\xfd\xfc\xfb\x00\xff")


def test_2_3_ping_of_126_bytes_fails(ws):
    ws.send_frame(PING, b"x" * 126)
    assert_failed(ws, 1002)


def test_2_4_unsolicited_pong_ignored(ws):
    ws.send_frame(PONG, b"unsolicited")
    ws.send_frame(PONG, b"")
    assert_alive(ws)


def test_2_5_unsolicited_pong_then_ping(ws):
    ws.send_frame(PONG, b"unsolicited")
    ws.send_frame(PING, b"ping")
    assert ws.read_frame()[::3] == (PONG, b"ping")


def test_2_6_ten_pings_answered_in_order(ws):
    for i in range(10):
        ws.send_frame(PING, b"ping %d" % i)
    for i in range(10):
        assert ws.read_frame()[::3] == (PONG, b"ping %d" % i)


def test_2_6b_ten_pings_sent_byte_by_byte(ws):
    stream = b"".join(minisoup.frames.build_frame(PING, b"p%d" % i, True, 0, MASK_KEY)
                      for i in range(10))
    for i in range(len(stream)):
        ws.send_raw(stream[i:i + 1])
    for i in range(10):
        assert ws.read_frame()[::3] == (PONG, b"p%d" % i)


def test_2_7_ping_after_close_is_not_answered(ws):
    ws.send_close(1000)
    ws.send_frame(PING, b"late")
    frames = []
    try:
        while True:
            frames.append(ws.read_frame()[0])
    except Closed:
        pass
    assert frames == [CLOSE]


# -- 3 reserved bits ---------------------------------------------------------------------
@pytest.mark.parametrize("rsv", [1, 2, 3, 4, 5, 6, 7])
def test_3_1_rsv_without_extension_fails(ws, rsv):
    ws.send_frame(TEXT, b"hello", rsv=rsv)
    assert_failed(ws, 1002)


@pytest.mark.parametrize("rsv", [1, 2, 4])
def test_3_2_rsv_after_a_valid_message(ws, rsv):
    ws.send_frame(TEXT, b"valid")
    ws.send_frame(TEXT, b"rsv", rsv=rsv)
    ws.send_frame(PING, b"never answered")
    assert ws.read_message() == (TEXT, b"valid")
    assert_failed(ws, 1002)


@pytest.mark.parametrize("opcode", [BINARY, PING, CLOSE])
def test_3_3_rsv_on_binary_and_control_frames(ws, opcode):
    payload = b"\x03\xe8" if opcode == CLOSE else b"x"
    ws.send_frame(opcode, payload, rsv=4)
    assert_failed(ws, 1002)


# -- 4 opcodes -------------------------------------------------------------------------
@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 11, 12, 13, 14, 15])
def test_4_1_reserved_opcode_fails(ws, opcode):
    ws.send_frame(opcode, b"payload")
    assert_failed(ws, 1002)


@pytest.mark.parametrize("opcode", [3, 11])
def test_4_2_reserved_opcode_after_a_valid_message(ws, opcode):
    ws.send_frame(TEXT, b"first")
    ws.send_frame(opcode, b"")
    assert ws.read_message() == (TEXT, b"first")
    assert_failed(ws, 1002)


# -- 5 fragmentation -------------------------------------------------------------------
@pytest.mark.parametrize("count", [1, 2, 5, 50])
def test_5_1_text_in_n_fragments(ws, count):
    parts = [b"part%d-" % i for i in range(count)]
    for i, part in enumerate(parts):
        ws.send_frame(TEXT if i == 0 else CONT, part, fin=i == count - 1)
    assert ws.read_message() == (TEXT, b"".join(parts))


def test_5_2_binary_fragments_with_empty_ones(ws):
    ws.send_frame(BINARY, b"", fin=False)
    ws.send_frame(CONT, b"\x00\x01", fin=False)
    ws.send_frame(CONT, b"", fin=False)
    ws.send_frame(CONT, b"\x02", fin=True)
    assert ws.read_message() == (BINARY, b"\x00\x01\x02")


def test_5_3_control_frames_inside_fragmented_message(ws):
    ws.send_frame(TEXT, b"frag1 ", fin=False)
    ws.send_frame(PING, b"p1")
    ws.send_frame(CONT, b"frag2 ", fin=False)
    ws.send_frame(PONG, b"unsolicited")
    ws.send_frame(PING, b"p2")
    ws.send_frame(CONT, b"frag3", fin=True)
    assert ws.read_frame()[::3] == (PONG, b"p1")
    assert ws.read_frame()[::3] == (PONG, b"p2")
    assert ws.read_frame()[::3] == (TEXT, b"frag1 frag2 frag3")


def test_5_4_fragmented_message_sent_byte_by_byte(ws):
    stream = (minisoup.frames.build_frame(TEXT, b"ab", False, 0, MASK_KEY)
              + minisoup.frames.build_frame(PING, b"p", True, 0, MASK_KEY)
              + minisoup.frames.build_frame(CONT, b"cd", True, 0, MASK_KEY))
    for i in range(len(stream)):
        ws.send_raw(stream[i:i + 1])
    assert ws.read_frame()[::3] == (PONG, b"p")
    assert ws.read_frame()[::3] == (TEXT, b"abcd")


@pytest.mark.parametrize("fin", [True, False])
def test_5_5_continuation_without_start_fails(ws, fin):
    ws.send_frame(CONT, b"orphan", fin=fin)
    assert_failed(ws, 1002)


def test_5_6_continuation_after_a_finished_message_fails(ws):
    ws.send_frame(TEXT, b"done")
    ws.send_frame(CONT, b"orphan")
    assert ws.read_message() == (TEXT, b"done")
    assert_failed(ws, 1002)


@pytest.mark.parametrize("second", [TEXT, BINARY])
def test_5_7_new_data_frame_inside_fragmented_message_fails(ws, second):
    ws.send_frame(TEXT, b"start", fin=False)
    ws.send_frame(second, b"intruder", fin=True)
    assert_failed(ws, 1002)


@pytest.mark.parametrize("opcode", [PING, PONG, CLOSE])
def test_5_8_fragmented_control_frame_fails(ws, opcode):
    ws.send_frame(opcode, b"\x03\xe8" if opcode == CLOSE else b"frag", fin=False)
    assert_failed(ws, 1002)


@pytest.mark.parametrize("opcode", [TEXT, BINARY, PING])
def test_5_9_unmasked_client_frame_fails(ws, opcode):
    ws.send_frame(opcode, b"no mask", mask=False)
    assert_failed(ws, 1002)


# -- 6 UTF-8 -----------------------------------------------------------------------------
VALID_TEXTS = [
    "Hello-\u00b5@\u00df\u00f6\u00e4\u00fc\u00e0\u00e1-UTF-8!!",
    "\u03ba\u1f79\u03c3\u03bc\u03b5",
    "\U0001f600 \U0010ffff \ud7ff \ue000 \ufffd",
    "\u0080\u07ff\u0800\uffff\U00010000",
]


@pytest.mark.parametrize("text", VALID_TEXTS)
def test_6_1_valid_utf8_whole(ws, text):
    ws.send_frame(TEXT, text.encode("utf-8"))
    assert ws.read_message() == (TEXT, text.encode("utf-8"))


@pytest.mark.parametrize("text", VALID_TEXTS)
def test_6_2_valid_utf8_one_byte_per_fragment(ws, text):
    # Every multi-byte code point is split across fragment boundaries.
    data = text.encode("utf-8")
    for i in range(len(data)):
        ws.send_frame(TEXT if i == 0 else CONT, data[i:i + 1], fin=i == len(data) - 1)
    assert ws.read_message() == (TEXT, data)


def test_6_3_split_inside_a_four_byte_code_point(ws):
    data = "a\U0001f600b".encode("utf-8")
    ws.send_frame(TEXT, data[:3], fin=False)   # 'a' + 2 of the 4 bytes
    ws.send_frame(CONT, data[3:4], fin=False)
    ws.send_frame(CONT, data[4:], fin=True)
    assert ws.read_message() == (TEXT, data)


INVALID_UTF8 = [
    b"\xff",                      # never valid
    b"\xc0\xaf",                  # overlong '/'
    b"\xe0\x80\xaf",              # overlong, 3 bytes
    b"\xed\xa0\x80",              # surrogate U+D800
    b"\xf4\x90\x80\x80",          # above U+10FFFF
    b"\x80",                      # stray continuation byte
    b"\xce\xba\xe1\xbd",          # truncated at the end of the message
    b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
]


@pytest.mark.parametrize("data", INVALID_UTF8)
def test_6_4_invalid_utf8_whole_message(ws, data):
    ws.send_frame(TEXT, data)
    assert_failed(ws, 1007)


@pytest.mark.parametrize("data", INVALID_UTF8)
def test_6_5_invalid_utf8_one_byte_per_fragment(ws, data):
    try:
        for i in range(len(data)):
            ws.send_frame(TEXT if i == 0 else CONT, data[i:i + 1], fin=i == len(data) - 1)
    except OSError:
        pass  # the server may have failed the connection already
    assert_failed(ws, 1007)


@pytest.mark.parametrize("bad", [b"\xff", b"ok\xc0\xaf", b"\xed\xa0", b"\xf4\x90"])
def test_6_6_fail_fast_on_first_fragment(ws, bad):
    # Three-fragment text whose FIRST fragment is already invalid: the close must
    # arrive after fragment 1 alone, before the others are sent.
    ws.send_frame(TEXT, bad, fin=False)
    ws.expect_close(1007, timeout=SHORT)
    ws.send_frame(CONT, b"fragment 2", fin=False)
    ws.send_frame(CONT, b"fragment 3", fin=True)
    ws.send_close(1007)
    assert ws.wait_eof(SHORT)


def test_6_7_invalid_utf8_in_later_fragment(ws):
    ws.send_frame(TEXT, "\u03ba\u1f79".encode("utf-8"), fin=False)
    ws.send_frame(CONT, b"\xf8\x88\x80\x80\x80", fin=False)
    ws.expect_close(1007)


def test_6_8_binary_is_not_checked(ws):
    ws.send_frame(BINARY, b"\xff\xfe\xc0\xaf")
    assert ws.read_message() == (BINARY, b"\xff\xfe\xc0\xaf")


# -- 7 closing -----------------------------------------------------------------------------
VALID_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999]
INVALID_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]


@pytest.mark.parametrize("code", VALID_CODES)
def test_7_1_valid_close_code_echoed(ws, code):
    ws.send_close(code, b"reason")
    assert ws.read_close()[0] == code
    assert ws.wait_eof(SHORT)


@pytest.mark.parametrize("code", INVALID_CODES)
def test_7_2_invalid_close_code_fails(ws, code):
    ws.send_close(code)
    ws.expect_close(1002)
    assert ws.wait_eof(SHORT)


def test_7_3_one_byte_close_payload_fails(ws):
    ws.send_frame(CLOSE, b"\x03")
    ws.expect_close(1002)
    assert ws.wait_eof(SHORT)


def test_7_4_close_reason_invalid_utf8_fails(ws):
    ws.send_close(1000, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80")
    ws.expect_close(1007)
    assert ws.wait_eof(SHORT)


def test_7_5_close_with_valid_utf8_reason(ws):
    ws.send_close(1000, "\u03ba\u1f79\u03c3\u03bc\u03b5".encode("utf-8"))
    assert ws.read_close()[0] == 1000
    assert ws.wait_eof(SHORT)


def test_7_6_close_with_max_length_reason(ws):
    ws.send_close(1000, b"r" * 123)
    assert ws.read_close()[0] == 1000
    assert ws.wait_eof(SHORT)


def test_7_6b_close_payload_over_125_bytes_fails(ws):
    ws.send_close(1000, b"r" * 124)
    ws.expect_close(1002)
    assert ws.wait_eof(SHORT)


def test_7_7_empty_close_answered_with_1000(ws):
    # As libsoup: the answer to a close without a status carries 1000.
    ws.send_frame(CLOSE, b"")
    assert ws.read_close() == (1000, b"")
    assert ws.wait_eof(SHORT)


def test_7_8_data_after_close_ignored(ws):
    # The text and ping follow the close in the same write: never answered.
    ws.send_raw(minisoup.frames.build_frame(CLOSE, struct.pack("!H", 1000), True, 0, MASK_KEY)
                + minisoup.frames.build_frame(TEXT, b"after close", True, 0, MASK_KEY)
                + minisoup.frames.build_frame(PING, b"after close", True, 0, MASK_KEY))
    opcode, _fin, _rsv, payload = ws.read_frame()
    assert (opcode, payload[:2]) == (CLOSE, struct.pack("!H", 1000))
    assert ws.wait_eof(SHORT)
    assert ws.buf == b"", "the server answered data sent after the close"


def test_7_9_data_after_close_separate_writes(ws):
    ws.send_close(1000)
    try:
        ws.send_frame(TEXT, b"after close")
    except OSError:
        pass
    assert ws.read_close()[0] == 1000
    assert ws.wait_eof(SHORT)
    assert ws.buf == b""


def test_7_10_message_then_close(ws):
    ws.send_frame(TEXT, b"last words")
    ws.send_close(1000)
    assert ws.read_message() == (TEXT, b"last words")
    assert ws.read_close()[0] == 1000
    assert ws.wait_eof(SHORT)


def test_7_11_server_closes_tcp_after_closing_handshake(ws):
    ws.send_close(1000, b"bye")
    assert ws.read_close() == (1000, b"")
    t0 = time.monotonic()
    assert ws.wait_eof(SHORT)
    assert time.monotonic() - t0 < 0.5, "server did not close the TCP connection at once"


# -- 9 limits -----------------------------------------------------------------------------
DEFAULT_LIMIT = 131072


@pytest.mark.parametrize("opcode", [TEXT, BINARY])
def test_9_1_payload_at_the_limit_echoed(ws, opcode):
    payload = b"L" * DEFAULT_LIMIT
    ws.send_frame(opcode, payload)
    assert ws.read_message() == (opcode, payload)


@pytest.mark.parametrize("opcode", [TEXT, BINARY])
def test_9_2_payload_over_the_limit_gets_1009(ws, opcode):
    try:
        ws.send_frame(opcode, b"L" * (DEFAULT_LIMIT + 1))
    except OSError:
        pass
    # The client must READ the close code (the lingering close), not get a reset.
    ws.expect_close(1009)
    ws.send_close(1009)
    assert ws.wait_eof(SHORT)


def test_9_3_fragmented_message_at_the_limit_echoed(ws):
    half = DEFAULT_LIMIT // 2
    ws.send_frame(BINARY, b"a" * half, fin=False)
    ws.send_frame(CONT, b"b" * half, fin=True)
    assert ws.read_message() == (BINARY, b"a" * half + b"b" * half)


def test_9_4_fragmented_message_over_the_limit_gets_1009(ws):
    half = DEFAULT_LIMIT // 2
    ws.send_frame(BINARY, b"a" * half, fin=False)
    ws.send_frame(CONT, b"b" * (half + 1), fin=True)
    ws.expect_close(1009)


def test_9_5_header_of_oversized_frame_fails_before_its_payload(ws):
    # Only the header of a 1 GiB frame is sent: the server must not wait for the payload.
    ws.send_raw(struct.pack("!BBQ", 0x82, 0x80 | 127, 1 << 30) + MASK_KEY)
    ws.expect_close(1009)


def test_9_6_64bit_length_with_msb_set_fails(ws):
    ws.send_raw(struct.pack("!BBQ", 0x82, 0x80 | 127, (1 << 63) | 5) + MASK_KEY + b"hello")
    assert_failed(ws, 1002)


@pytest.mark.parametrize("encoding", [126, 127])
def test_9_7_non_minimal_length_accepted(ws, encoding):
    payload = b"short"
    masked = minisoup.frames.apply_mask(payload, MASK_KEY)
    if encoding == 126:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, len(payload))
    else:
        header = struct.pack("!BBQ", 0x81, 0x80 | 127, len(payload))
    ws.send_raw(header + MASK_KEY + masked)
    assert ws.read_message() == (TEXT, payload)


def test_9_8_many_connections_at_once(port):
    socks = [RawWebSocket(port, timeout=SHORT) for _ in range(20)]
    try:
        for i, raw in enumerate(socks):
            raw.send_frame(TEXT, b"conn %d" % i)
        for i, raw in enumerate(socks):
            assert raw.read_message() == (TEXT, b"conn %d" % i)
    finally:
        for raw in socks:
            raw.close()


def test_garbage_instead_of_a_frame(ws):
    ws.send_raw(b"GET / HTTP/1.1\r\n\r\n")
    assert_failed(ws, 1002)


def test_server_still_serves_after_failures(port):
    for _ in range(3):
        with RawWebSocket(port, timeout=SHORT) as raw:
            raw.send_frame(7, b"")
            raw.expect_close(1002)
    with RawWebSocket(port, timeout=SHORT) as raw:
        assert_alive(raw)


def test_reset_by_peer_mid_frame_does_not_stop_server(port):
    raw = RawWebSocket(port, timeout=SHORT)
    raw.send_raw(minisoup.frames.build_frame(BINARY, b"x" * 1000, True, 0, MASK_KEY)[:500])
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()
    with RawWebSocket(port, timeout=SHORT) as again:
        assert_alive(again)
