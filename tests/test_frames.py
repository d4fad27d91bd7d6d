"""Tests for minisoup.frames: RFC 6455 section 5 framing, masking, close
payloads and incremental UTF-8 validation."""

import random
import struct

import pytest

from minisoup import frames as frames_mod
from minisoup.frames import (
    MAX_CONTROL_PAYLOAD, RSV1, RSV2, RSV3, CloseCode, FrameParser, Opcode,
    ProtocolError, Utf8Validator, apply_mask, apply_mask_int,
    apply_mask_translate, build_close_payload, build_frame, frame_header,
    is_valid_close_code, parse_close_payload)

KEY = b"\x01\x80\xfe\x7f"
LENGTHS = (0, 1, 125, 126, 65535, 65536, 70000)


def random_bytes(rng, n):
    """n seeded pseudo-random bytes, fast and Python 3.8 compatible."""
    return rng.getrandbits(8 * n).to_bytes(n, "little") if n else b""


def naive_mask(data, key):
    """The RFC's per-byte definition, as the reference."""
    return bytes(b ^ key[i % 4] for i, b in enumerate(bytes(data)))


def parse_all(parser, data):
    parser.feed(data)
    frames = []
    frame = parser.next_frame()
    while frame is not None:
        frames.append(frame)
        frame = parser.next_frame()
    return frames


def raw_frame(b0, b1, extra=b""):
    """Hand-built frame bytes for malformed cases."""
    return bytes([b0, b1]) + extra


def assert_protocol_error(parser, data, code):
    parser.feed(data)
    with pytest.raises(ProtocolError) as info:
        parser.next_frame()
    assert info.value.close_code == code
    return info.value


# --- masking -------------------------------------------------------------

@pytest.mark.parametrize("func", [apply_mask, apply_mask_int, apply_mask_translate])
def test_mask_matches_reference(func):
    rng = random.Random(6455)
    lengths = [0, 1, 2, 3, 4, 5, 7, 8, 63, 64, 65, 1023, 2047, 2048, 2049, 4097]
    lengths += [rng.randrange(0, 10000) for _ in range(30)]
    for n in lengths:
        data = random_bytes(rng, n)
        key = random_bytes(rng, 4)
        expected = naive_mask(data, key)
        for form in (data, bytearray(data), memoryview(data)):
            result = func(form, key)
            assert type(result) is bytes
            assert result == expected
        # memoryview over a slice of a larger buffer (non-zero offset)
        padded = b"xx" + data + b"yy"
        assert func(memoryview(padded)[2:2 + n], key) == expected


def test_mask_is_involution():
    data = bytes(range(256)) * 40
    assert apply_mask(apply_mask(data, KEY), KEY) == data


# --- building ------------------------------------------------------------

@pytest.mark.parametrize("length,header_size", [(0, 2), (125, 2), (126, 4), (65535, 4),
                                                (65536, 10), (70000, 10)])
def test_header_minimal_length(length, header_size):
    assert len(frame_header(Opcode.BINARY, length)) == header_size
    assert len(frame_header(Opcode.BINARY, length, mask_key=KEY)) == header_size + 4


def test_header_bits():
    header = frame_header(Opcode.TEXT, 5, fin=False, rsv=RSV1 | RSV3, mask_key=KEY)
    assert header[0] == 0x01 | 0x40 | 0x10
    assert header[1] == 0x80 | 5
    assert header[2:] == KEY


@pytest.mark.parametrize("bad", [-1, 1 << 63])
def test_header_rejects_bad_length(bad):
    with pytest.raises(ValueError):
        frame_header(Opcode.BINARY, bad)


# --- round trips -----------------------------------------------------------

@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("masked", [True, False])
def test_round_trip(length, masked):
    payload = random_bytes(random.Random(length), length)
    key = KEY if masked else None
    frame = build_frame(Opcode.BINARY, payload, mask_key=key)
    if masked and length:
        assert payload not in frame
    frames = parse_all(FrameParser(require_mask=masked), frame)
    assert frames == [(Opcode.BINARY, True, 0, payload)]


def test_round_trip_fields():
    frames = [
        build_frame(Opcode.TEXT, b"he", fin=False, mask_key=KEY),
        build_frame(Opcode.PING, b"p", mask_key=KEY),
        build_frame(Opcode.CONTINUATION, b"llo", mask_key=KEY),
        build_frame(Opcode.CLOSE, build_close_payload(1000, "bye"), mask_key=KEY),
    ]
    parser = FrameParser(require_mask=True)
    assert parse_all(parser, b"".join(frames)) == [
        (Opcode.TEXT, False, 0, b"he"),
        (Opcode.PING, True, 0, b"p"),
        (Opcode.CONTINUATION, True, 0, b"llo"),
        (Opcode.CLOSE, True, 0, b"\x03\xe8bye"),
    ]


def test_allowed_rsv_passes_through():
    parser = FrameParser(require_mask=True)
    parser.allowed_rsv = RSV1
    frame = build_frame(Opcode.TEXT, b"x", rsv=RSV1, mask_key=KEY)
    assert parse_all(parser, frame) == [(Opcode.TEXT, True, RSV1, b"x")]


def test_split_feeds_give_same_frames():
    rng = random.Random(42)
    payloads = [b"", b"a", bytes(125), bytes(126), bytes(300), bytes(70000), b"z" * 3000]
    stream = b"".join(build_frame(Opcode.BINARY, p, mask_key=KEY) for p in payloads)
    expected = [(Opcode.BINARY, True, 0, p) for p in payloads]

    assert parse_all(FrameParser(True), stream) == expected

    parser = FrameParser(True)
    got = []
    small = stream[:2000]  # byte by byte on a prefix holding several frames
    for i in range(len(small)):
        got += parse_all(parser, small[i:i + 1])
    got += parse_all(parser, stream[2000:])
    assert got == expected

    for _ in range(20):
        parser = FrameParser(True)
        got = []
        pos = 0
        while pos < len(stream):
            step = rng.choice((1, 2, 3, 7, 100, 4096, 20000))
            got += parse_all(parser, memoryview(stream)[pos:pos + step])
            pos += step
        assert got == expected
        assert parser.buffered() == 0


def test_incomplete_frame_returns_none():
    frame = build_frame(Opcode.BINARY, b"hello", mask_key=KEY)
    parser = FrameParser(True)
    parser.feed(frame[:-1])
    assert parser.next_frame() is None
    assert parser.next_frame() is None
    parser.feed(frame[-1:])
    assert parser.next_frame() == (Opcode.BINARY, True, 0, b"hello")
    assert parser.next_frame() is None


@pytest.mark.parametrize("length_bytes,payload_len", [
    (bytes([126]) + struct.pack("!H", 5), 5),          # 16-bit for a 7-bit length
    (bytes([127]) + struct.pack("!Q", 5), 5),          # 64-bit for a 7-bit length
    (bytes([127]) + struct.pack("!Q", 300), 300),      # 64-bit for a 16-bit length
])
def test_non_minimal_length_accepted(length_bytes, payload_len):
    payload = b"q" * payload_len
    data = bytes([0x82]) + length_bytes + payload
    assert parse_all(FrameParser(require_mask=False), data) == [(Opcode.BINARY, True, 0, payload)]


# --- protocol errors ------------------------------------------------------

@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 11, 12, 13, 14, 15])
def test_unknown_opcode(opcode):
    assert_protocol_error(FrameParser(False), raw_frame(0x80 | opcode, 0), 1002)


@pytest.mark.parametrize("opcode", [Opcode.CLOSE, Opcode.PING, Opcode.PONG])
def test_fragmented_control_frame(opcode):
    assert_protocol_error(FrameParser(False), raw_frame(opcode, 0), 1002)


@pytest.mark.parametrize("opcode", [Opcode.CLOSE, Opcode.PING, Opcode.PONG])
def test_control_frame_too_long(opcode):
    # Only the 2 header bytes (126 announces an extended length): raised anyway.
    assert_protocol_error(FrameParser(False), raw_frame(0x80 | opcode, 126), 1002)
    ok = build_frame(opcode, b"x" * MAX_CONTROL_PAYLOAD)
    assert parse_all(FrameParser(False), ok)[0][3] == b"x" * MAX_CONTROL_PAYLOAD


@pytest.mark.parametrize("rsv", [RSV1, RSV2, RSV3, RSV1 | RSV2 | RSV3])
def test_rsv_without_extension(rsv):
    assert_protocol_error(FrameParser(False), raw_frame(0x80 | rsv << 4 | 1, 0), 1002)


def test_rsv_not_allowed_by_extension():
    parser = FrameParser(False)
    parser.allowed_rsv = RSV1
    assert_protocol_error(parser, raw_frame(0x80 | RSV2 << 4 | 1, 0), 1002)


def test_rsv_on_control_frame():
    parser = FrameParser(False)
    parser.allowed_rsv = RSV1
    assert_protocol_error(parser, raw_frame(0x80 | RSV1 << 4 | Opcode.PING, 0), 1002)


def test_64bit_length_high_bit():
    header = raw_frame(0x82, 127, struct.pack("!Q", 1 << 63))
    assert_protocol_error(FrameParser(False), header, 1002)


def test_unmasked_client_frame():
    err = assert_protocol_error(FrameParser(require_mask=True),
                                build_frame(Opcode.TEXT, b"hi"), 1002)
    assert "mask" in str(err)


def test_masked_server_frame():
    assert_protocol_error(FrameParser(require_mask=False),
                          build_frame(Opcode.TEXT, b"hi", mask_key=KEY), 1002)


@pytest.mark.parametrize("length", [126, 65536, 1 << 40])
def test_max_payload_size_from_header_alone(length):
    parser = FrameParser(require_mask=True, max_payload_size=125)
    err = assert_protocol_error(parser, frame_header(Opcode.BINARY, length, mask_key=KEY),
                                CloseCode.TOO_BIG)
    assert err.close_code == 1009


def test_max_payload_size_is_mutable_and_inclusive():
    parser = FrameParser(require_mask=False)
    parser.max_payload_size = 10
    assert parse_all(parser, build_frame(Opcode.BINARY, b"x" * 10))[0][3] == b"x" * 10
    assert_protocol_error(parser, frame_header(Opcode.BINARY, 11), 1009)


def test_error_raised_before_payload():
    # A header announcing a huge masked binary frame without its mask bit:
    # the parser must not wait for the payload to complain.
    assert_protocol_error(FrameParser(True), frame_header(Opcode.BINARY, 1 << 20), 1002)


def test_protocol_error_str():
    err = ProtocolError(1002, "bad thing")
    assert str(err) == "bad thing" and err.reason == "bad thing" and err.close_code == 1002


# --- close payloads --------------------------------------------------------

VALID_CODES = list(range(1000, 1004)) + list(range(1007, 1015)) + [3000, 3999, 4000, 4999]
INVALID_CODES = [0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]


@pytest.mark.parametrize("code", VALID_CODES)
def test_valid_close_codes(code):
    assert is_valid_close_code(code)
    assert parse_close_payload(struct.pack("!H", code) + b"ok") == (code, "ok")


@pytest.mark.parametrize("code", INVALID_CODES)
def test_invalid_close_codes(code):
    assert not is_valid_close_code(code)
    with pytest.raises(ProtocolError) as info:
        parse_close_payload(struct.pack("!H", code))
    assert info.value.close_code == 1002


def test_close_codes_with_a_name_come_back_as_members():
    code, _ = parse_close_payload(struct.pack("!H", 1001))
    assert code is CloseCode.GOING_AWAY
    code, _ = parse_close_payload(struct.pack("!H", 4000))
    assert type(code) is int and code == 4000


def test_close_payload_empty_and_short():
    assert parse_close_payload(b"") == (CloseCode.NO_STATUS, "")
    with pytest.raises(ProtocolError) as info:
        parse_close_payload(b"\x03")
    assert info.value.close_code == 1002


def test_close_reason_bad_utf8():
    with pytest.raises(ProtocolError) as info:
        parse_close_payload(b"\x03\xe8\xff\xfe")
    assert info.value.close_code == 1007


def test_close_payload_named_code():
    code, reason = parse_close_payload(build_close_payload(CloseCode.GOING_AWAY, "h\u00e9"))
    assert code is CloseCode.GOING_AWAY and reason == "h\u00e9"


def test_build_close_payload_no_status():
    assert build_close_payload(1005) == b""
    assert build_close_payload(0, "ignored") == b""
    assert build_close_payload(1000) == b"\x03\xe8"


@pytest.mark.parametrize("char", ["a", "\u00e9", "\u20ac", "\U0001f600"])
def test_build_close_payload_truncates_on_char_boundary(char):
    payload = build_close_payload(1000, char * 200)
    assert len(payload) <= MAX_CONTROL_PAYLOAD
    assert len(payload) > MAX_CONTROL_PAYLOAD - len(char.encode("utf-8"))
    code, reason = parse_close_payload(payload)
    assert code == 1000 and set(reason) == {char}


def test_close_frame_fits_control_limit():
    frame = build_frame(Opcode.CLOSE, build_close_payload(4000, "x" * 500), mask_key=KEY)
    parsed = parse_all(FrameParser(True), frame)
    assert parse_close_payload(parsed[0][3]) == (4000, "x" * 123)


# --- UTF-8 ----------------------------------------------------------------

def test_utf8_fragments_split_inside_characters():
    text = "h\u00e9llo \u20ac \U0001f600 world"
    data = text.encode("utf-8")
    for cut in range(len(data) + 1):
        validator = Utf8Validator()
        validator.feed(data[:cut], False)
        validator.feed(data[cut:], True)
        assert validator.result() == text


def test_utf8_result_resets():
    validator = Utf8Validator()
    validator.feed(b"one", True)
    assert validator.result() == "one"
    validator.feed(b"two", True)
    assert validator.result() == "two"


def test_utf8_bad_byte_fails_on_first_fragment():
    validator = Utf8Validator()
    with pytest.raises(ProtocolError) as info:
        validator.feed(b"valid \xff then more", False)
    assert info.value.close_code == 1007


@pytest.mark.parametrize("bad", [
    b"\xed\xa0\x80",       # UTF-16 surrogate D800
    b"\xed\xbf\xbf",       # surrogate DFFF
    b"\xc0\x80",           # overlong NUL
    b"\xe0\x80\xaf",       # overlong "/"
    b"\xf4\x90\x80\x80",   # U+110000
    b"\xf5\x80\x80\x80",   # beyond the 4-byte range
    b"\x80",               # lone continuation
])
def test_utf8_invalid_sequences_fail_fast(bad):
    # The full sequence, then only the prefix that already proves it invalid:
    # both must fail without waiting for the final fragment.
    for prefix in (bad, bad[:2] if len(bad) > 2 else bad):
        validator = Utf8Validator()
        with pytest.raises(ProtocolError) as info:
            validator.feed(b"ok " + prefix, False)
        assert info.value.close_code == 1007


def test_utf8_truncated_only_fails_when_final():
    validator = Utf8Validator()
    validator.feed(b"abc\xe2\x82", False)  # first 2 bytes of the euro sign
    with pytest.raises(ProtocolError) as info:
        validator.feed(b"", True)
    assert info.value.close_code == 1007


def test_utf8_valid_edges():
    text = "\u0000\u007f\u0080\u07ff\u0800\ud7ff\ue000\uffff\U00010000\U0010ffff"
    validator = Utf8Validator()
    validator.feed(text.encode("utf-8"), True)
    assert validator.result() == text


# --- big payloads: slabbed unmasking, direct receive, chunk pool ----------------

@pytest.mark.parametrize("extra", [-5, -4, -1, 0, 1, 3, 4, 7])
def test_translate_mask_across_slab_boundaries(extra):
    rng = random.Random(extra)
    n = 2 * frames_mod.UNMASK_SLAB + extra
    data = random_bytes(rng, n)
    key = random_bytes(rng, 4)
    assert apply_mask_translate(data, key) == apply_mask_int(data, key)


def feed_in_pieces(parser, data, rng, direct_share=0.7, largest=300000):
    """Give ``data`` to the parser as a transport would: into recv_buffer() when it offers
    one (most of the time), else through feed(); random piece sizes. Returns the frames."""
    frames, pos = [], 0
    while pos < len(data):
        view = parser.recv_buffer()
        if view is not None and rng.random() < direct_share:
            n = min(len(view), rng.randint(1, largest), len(data) - pos)
            view[:n] = data[pos:pos + n]
            view.release()
            parser.recv_done(n)
        else:
            if view is not None:
                view.release()
            n = rng.choice([1, 2, 7, rng.randint(1, largest)])
            parser.feed(data[pos:pos + n])
        pos += n
        frame = parser.next_frame()
        while frame is not None:
            frames.append(frame)
            frame = parser.next_frame()
    return frames


@pytest.mark.parametrize("masked", [True, False])
def test_big_payload_received_directly_in_random_pieces(masked):
    rng = random.Random(7692 + masked)
    sizes = [frames_mod.DIRECT_MIN, frames_mod.DIRECT_MIN + 1, 100003, 1 << 20, 3 * (1 << 20) + 1]
    for n in sizes:
        for _ in range(3):
            payload = random_bytes(rng, n)
            key = random_bytes(rng, 4) if masked else None
            data = (build_frame(Opcode.BINARY, payload, mask_key=key)
                    + build_frame(Opcode.TEXT, b"after", mask_key=key)
                    + build_frame(Opcode.BINARY, payload[:70000], fin=False, mask_key=key))
            frames = feed_in_pieces(FrameParser(require_mask=masked), data, rng)
            assert [f[:3] for f in frames] == [(Opcode.BINARY, True, 0), (Opcode.TEXT, True, 0),
                                               (Opcode.BINARY, False, 0)]
            assert frames[0][3] == payload
            assert frames[1][3] == b"after"
            assert frames[2][3] == payload[:70000]


def test_recv_buffer_only_inside_a_big_payload_and_never_past_its_end():
    parser = FrameParser(require_mask=True)
    assert parser.recv_buffer() is None
    parser.feed(build_frame(Opcode.BINARY, b"x" * 1000, mask_key=KEY))
    assert parser.recv_buffer() is None            # small frames are parsed from feed()
    assert parser.next_frame()[3] == b"x" * 1000
    payload = bytes(range(256)) * 400               # 102,400 bytes
    frame = build_frame(Opcode.BINARY, payload, mask_key=KEY)
    header = frame[:14]
    parser.feed(header[:5])                          # mask key not complete yet
    assert parser.next_frame() is None and parser.recv_buffer() is None
    parser.feed(header[5:])
    assert parser.next_frame() is None and parser.recv_buffer() is None
    start = frames_mod.DIRECT_START                  # the first bytes come through feed()
    parser.feed(frame[14:14 + start - 1])
    assert parser.next_frame() is None and parser.recv_buffer() is None
    parser.feed(frame[14 + start - 1:14 + start])
    assert parser.next_frame() is None
    received = start
    while received < len(payload):
        view = parser.recv_buffer()
        assert 0 < len(view) <= len(payload) - received
        n = len(view)
        view[:] = frame[14 + received:14 + received + n]
        view.release()
        parser.recv_done(n)
        received += n
    assert parser.recv_buffer() is None
    assert parser.next_frame() == (Opcode.BINARY, True, 0, payload)
    assert parser.buffered() == 0


def test_a_huge_announced_frame_ties_up_memory_only_for_what_arrives():
    parser = FrameParser(require_mask=True)           # no size limit
    header = frame_header(Opcode.BINARY, 1 << 40, mask_key=KEY)
    parser.feed(header + b"abc")
    assert parser.next_frame() is None
    # Regression: a 64 KiB chunk was taken as soon as the header was complete.
    assert parser.recv_buffer() is None
    assert parser.memory_held() == len(header) + 3
    got = 3
    while got < frames_mod.DIRECT_START - 1000:       # the transport reads with feed()
        parser.feed(b"x" * 1000)
        assert parser.next_frame() is None and parser.recv_buffer() is None
        got += 1000
        assert parser.memory_held() == len(header) + got
    parser.feed(b"x" * (frames_mod.DIRECT_START - got))
    got = frames_mod.DIRECT_START
    assert parser.next_frame() is None
    assert parser.memory_held() <= got               # in a chunk now, the read buffer freed
    view = parser.recv_buffer()
    assert len(view) <= frames_mod.DIRECT_CHUNK_MIN  # not 1 TiB, not even 1 MiB
    view.release()
    while got < (1 << 20):
        view = parser.recv_buffer()
        n = len(view)
        view.release()
        parser.recv_done(n)
        got += n
        assert parser.memory_held() <= 2 * got
    assert parser.buffered() == got


def test_many_parsers_each_holding_a_big_frame_header_and_one_byte_pin_little():
    # Issue 14, item 7: 15 bytes (a header announcing 128 KiB, then 1 payload byte) took a
    # 64 KiB receive chunk; over 1,000 connections, +64 MB. Now memory follows what arrived.
    import tracemalloc
    count = 1000
    data = frame_header(Opcode.BINARY, 128 * 1024, mask_key=KEY) + b"x"
    assert len(data) == 15
    parsers = [FrameParser(require_mask=True, max_payload_size=128 * 1024) for _ in range(count)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for parser in parsers:
            parser.feed(data)
            assert parser.next_frame() is None
            parser.recv_buffer()                     # what the transport asks before a read
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert all(parser.memory_held() == 15 for parser in parsers)
    assert grown / count < 256, "%.0f bytes per parser" % (grown / count)


def test_a_parser_holds_no_buffer_before_any_byte_or_once_all_was_read():
    # Idle memory (issue 15): each parser kept a bytearray from its start, and after
    # traffic one as large as its last read, for as long as its connection lived.
    import tracemalloc
    count = 1000
    frame = build_frame(Opcode.BINARY, b"x" * 100, True, 0, KEY)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        parsers = [FrameParser(require_mask=True) for _ in range(count)]
        fresh = tracemalloc.get_traced_memory()[0] - before
        for parser in parsers:
            parser.feed(frame * 2)
            assert parser.next_frame()[3] == b"x" * 100
            assert parser.next_frame()[3] == b"x" * 100
            assert parser.next_frame() is None
        after_reading = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # The parser objects themselves (~96 bytes each), no buffer of their own.
    assert fresh / count < 128, "%.0f bytes per new parser" % (fresh / count)
    assert after_reading <= fresh + 8 * count, "%.0f bytes per parser after reading" % (
        (after_reading - fresh) / count)
    assert all(parser.buffered() == 0 and parser.memory_held() == 0 for parser in parsers)
    # What comes next is read as before: in pieces, and after a partial frame.
    parser = parsers[0]
    parser.feed(frame[:3])
    assert parser.next_frame() is None and parser.buffered() == 3
    parser.feed(frame[3:] + frame[:1])
    assert parser.next_frame()[3] == b"x" * 100
    assert parser.next_frame() is None and parser.buffered() == 1
    parser.feed(frame[1:])
    assert parser.next_frame()[3] == b"x" * 100 and parser.buffered() == 0


def test_payload_chunks_go_back_to_a_bounded_pool():
    pool = frames_mod._CHUNK_POOL
    parser = FrameParser(require_mask=True)
    payload = b"\x00" * (1 << 20)
    frames = parse_all(parser, build_frame(Opcode.BINARY, payload[:100], mask_key=KEY))
    assert frames[0][3] == payload[:100]
    data = build_frame(Opcode.BINARY, payload, mask_key=KEY)
    parser.feed(data[:20])
    assert parser.next_frame() is None
    parser.feed(data[20:])
    assert parser.next_frame()[3] == payload
    assert 0 < pool.size() <= pool.limit
    small = frames_mod._ChunkPool(limit=100000)
    chunk = small.take(65536)
    assert len(chunk) == 65536
    small.give(chunk)
    small.give(bytearray(65536))                     # over the limit: dropped
    assert small.size() == 65536
    assert small.take(65536) is chunk and small.size() == 0
