"""Tests for minisoup.deflate: RFC 7692 negotiation and the per-message transform."""

import os
import tracemalloc
import zlib

import pytest

from minisoup.deflate import WebsocketExtensionDeflate
from minisoup.extensions import client_accept, negotiate_server, parse_extension_header
from minisoup.frames import RSV1, CloseCode, ProtocolError

KIB = 1024
MIB = 1024 * KIB
SYNC_TAIL = b"\x00\x00\xff\xff"


class Plain(WebsocketExtensionDeflate):
    """No server-side limits, as libsoup: the answer only echoes the offer."""
    max_window_bits = 15
    peer_max_window_bits = 15
    mem_level = 8


def accept(offer_params, ext_type=Plain):
    """server_accept() of one parsed permessage-deflate offer."""
    [(name, params)] = parse_extension_header("permessage-deflate" + offer_params)
    return ext_type.server_accept(params)


def pair(offer="permessage-deflate; client_max_window_bits", server_type=WebsocketExtensionDeflate,
         client_type=WebsocketExtensionDeflate):
    """A negotiated (server, client) pair of instances."""
    exts, response = negotiate_server(offer, [server_type])
    assert exts, "offer declined"
    return exts[0], client_accept(response, [client_type])[0]


def send(sender, receiver, message, max_size=0):
    payload, rsv = sender.encode(message)
    if receiver.decode_start(rsv):
        return receiver.decode(payload, True, max_size)
    return payload


def compress_raw(data, wbits=15, flush=zlib.Z_SYNC_FLUSH):
    compressor = zlib.compressobj(6, zlib.DEFLATED, -wbits)
    out = compressor.compress(data) + compressor.flush(flush)
    return out[:-4] if out.endswith(SYNC_TAIL) else out


# -- negotiation: accepted offers ----------------------------------------------------

@pytest.mark.parametrize("offer, response, expected", [
    ("", "", (False, False, 15, 15)),
    ("; server_no_context_takeover", "server_no_context_takeover", (True, False, 15, 15)),
    ("; client_no_context_takeover", "client_no_context_takeover", (False, True, 15, 15)),
    ("; server_max_window_bits=10", "server_max_window_bits=10", (False, False, 10, 15)),
    ('; server_max_window_bits="10"', "server_max_window_bits=10", (False, False, 10, 15)),
    ("; server_max_window_bits=15", "server_max_window_bits=15", (False, False, 15, 15)),
    # bare client_max_window_bits: the server may omit it (15) ...
    ("; client_max_window_bits", "", (False, False, 15, 15)),
    ("; client_max_window_bits=9", "client_max_window_bits=9", (False, False, 15, 9)),
    ("; client_max_window_bits=8", "client_max_window_bits=8", (False, False, 15, 8)),
    ("; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=11;"
     " client_max_window_bits=12",
     "server_no_context_takeover; client_no_context_takeover; server_max_window_bits=11;"
     " client_max_window_bits=12",
     (True, True, 11, 12)),
    # parameter order in the offer does not matter
    ("; client_max_window_bits; server_no_context_takeover", "server_no_context_takeover",
     (True, False, 15, 15)),
])
def test_accepted_offers(offer, response, expected):
    instance, params = accept(offer)
    assert params == response
    assert instance.get_params_string() == response
    assert (instance.server_no_context_takeover, instance.client_no_context_takeover,
            instance.server_max_window_bits, instance.client_max_window_bits) == expected
    assert instance.is_server


def test_browser_offer_with_default_policy():
    exts, response = negotiate_server("permessage-deflate; client_max_window_bits",
                                      [WebsocketExtensionDeflate])
    # ... or answer with a value: the default policy limits both windows to 12 bits
    assert response == "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"
    assert exts[0].server_max_window_bits == exts[0].client_max_window_bits == 12


def test_browser_offer_chrome_style():
    exts, response = negotiate_server(
        "permessage-deflate; client_max_window_bits, x-webkit-deflate-frame", [Plain])
    assert response == "permessage-deflate"
    assert type(exts[0]) is Plain


# -- negotiation: declined offers ----------------------------------------------------

@pytest.mark.parametrize("offer", [
    "; unknown",
    "; unknown=1",
    "; server_no_context_takeover; server_no_context_takeover",
    "; client_no_context_takeover; client_no_context_takeover",
    "; server_max_window_bits=10; server_max_window_bits=10",
    "; client_max_window_bits; client_max_window_bits",
    "; client_max_window_bits=10; client_max_window_bits",
    "; server_no_context_takeover=1",
    '; server_no_context_takeover="x"',
    "; client_no_context_takeover=true",
    "; server_max_window_bits",  # a value is required
    "; server_max_window_bits=7",
    "; server_max_window_bits=16",
    "; server_max_window_bits=0",
    "; server_max_window_bits=-9",
    "; server_max_window_bits=+9",
    "; server_max_window_bits=1e1",
    "; server_max_window_bits=abc",
    "; server_max_window_bits=0015",
    "; client_max_window_bits=7",
    "; client_max_window_bits=16",
    "; client_max_window_bits=x",
    "; Server_No_Context_Takeover",  # parameter names are case-sensitive
    # RFC 7692 7.1.2: a decimal integer without leading zeroes (libsoup takes "09" as 9)
    "; server_max_window_bits=09",
    '; server_max_window_bits="09"',
    "; server_max_window_bits=010",
    "; server_max_window_bits=9.0",
    "; client_max_window_bits=09",
    '; client_max_window_bits="09"',
    "; client_max_window_bits=+9",
    "; client_max_window_bits=9.0",
])
def test_declined_offers(offer):
    assert accept(offer) is None
    assert accept(offer, WebsocketExtensionDeflate) is None
    assert negotiate_server("permessage-deflate" + offer, [Plain]) == ([], None)


@pytest.mark.parametrize("offer", ['; server_max_window_bits=" 9"', '; client_max_window_bits="9 "'])
def test_window_bits_with_spaces_inside_quotes_declined(offer):
    # Not a token once unquoted: the header does not parse, nothing is accepted.
    assert negotiate_server("permessage-deflate" + offer, [Plain]) == ([], None)


def test_first_bad_offer_second_good():
    exts, response = negotiate_server(
        "permessage-deflate; server_max_window_bits=16, permessage-deflate; client_max_window_bits=10,"
        " permessage-deflate", [Plain])
    assert response == "permessage-deflate; client_max_window_bits=10"
    assert exts[0].client_max_window_bits == 10


def test_first_good_offer_wins():
    exts, response = negotiate_server(
        "permessage-deflate; server_no_context_takeover, permessage-deflate", [Plain])
    assert response == "permessage-deflate; server_no_context_takeover"
    assert len(exts) == 1


# -- negotiation: server policy --------------------------------------------------------

def test_policy_forces_no_context_takeover():
    class Forced(Plain):
        force_no_context_takeover = True
        peer_no_context_takeover = True

    instance, response = accept("", Forced)
    assert response == "server_no_context_takeover; client_no_context_takeover"
    assert instance.server_no_context_takeover and instance.client_no_context_takeover


@pytest.mark.parametrize("offer, response", [
    ("", "server_max_window_bits=12"),  # announced unasked (RFC 7692 §7.1.2.1)
    ("; server_max_window_bits=14", "server_max_window_bits=12"),
    ("; server_max_window_bits=10", "server_max_window_bits=10"),
    ("; client_max_window_bits", "server_max_window_bits=12; client_max_window_bits=12"),
    ("; client_max_window_bits=14", "server_max_window_bits=12; client_max_window_bits=12"),
    ("; client_max_window_bits=9", "server_max_window_bits=12; client_max_window_bits=9"),
])
def test_policy_caps_window_bits(offer, response):
    # default policy: 12 bits both ways; client_max_window_bits only when offered (§7.1.2.2)
    assert accept(offer, WebsocketExtensionDeflate)[1] == response


@pytest.mark.parametrize("attrs", [
    {"max_window_bits": 8},  # zlib cannot compress with an 8-bit raw window
    {"max_window_bits": 16},
    {"peer_max_window_bits": 7},
    {"mem_level": 0},
    {"mem_level": 10},
    {"compress_level": 10},
    {"compress_threshold": -1},
])
def test_policy_checked_at_class_definition(attrs):
    with pytest.raises(ValueError):
        type("Bad", (WebsocketExtensionDeflate,), attrs)


def test_server_window_8_accepted_but_sent_uncompressed():
    # zlib has no 8-bit raw compressor; compressing with 9 (libsoup) could emit distances
    # the client cannot resolve, so every message goes out uncompressed instead.
    server, client = pair("permessage-deflate; server_max_window_bits=8", Plain)
    assert server.get_params_string() == "server_max_window_bits=8"
    message = b"compressible " * 100
    assert server.encode(message) == (message, 0)
    # the other direction still compresses
    payload, rsv = client.encode(message)
    assert rsv == RSV1 and len(payload) < len(message)
    assert server.decode_start(rsv) and server.decode(payload, True, 0) == message


# -- client side -------------------------------------------------------------------------

def test_client_offer():
    assert WebsocketExtensionDeflate.client_offer() == "permessage-deflate; client_max_window_bits"

    class Strict(WebsocketExtensionDeflate):
        force_no_context_takeover = True
        peer_no_context_takeover = True

    assert Strict.client_offer() == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; client_max_window_bits")


@pytest.mark.parametrize("answer, expected", [
    ("permessage-deflate", (False, False, 15, 15)),
    ("permessage-deflate; server_no_context_takeover", (True, False, 15, 15)),
    ("permessage-deflate; client_no_context_takeover", (False, True, 15, 15)),
    ("permessage-deflate; server_max_window_bits=9; client_max_window_bits=10", (False, False, 9, 10)),
])
def test_client_accept(answer, expected):
    [instance] = client_accept(answer, [WebsocketExtensionDeflate])
    assert not instance.is_server
    assert (instance.server_no_context_takeover, instance.client_no_context_takeover,
            instance.server_max_window_bits, instance.client_max_window_bits) == expected


@pytest.mark.parametrize("answer", [
    "permessage-deflate; client_max_window_bits",  # a response must carry a value
    "permessage-deflate; server_max_window_bits",
    "permessage-deflate; server_max_window_bits=16",
    "permessage-deflate; client_max_window_bits=7",
    "permessage-deflate; server_max_window_bits=09",
    "permessage-deflate; client_max_window_bits=010",
    "permessage-deflate; unknown",
    "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
    "permessage-deflate; client_no_context_takeover=1",
    "permessage-deflate, permessage-deflate",
])
def test_client_accept_rejects(answer):
    with pytest.raises(ValueError):
        client_accept(answer, [WebsocketExtensionDeflate])


def test_client_accept_requires_requested_server_no_context_takeover():
    class Strict(WebsocketExtensionDeflate):
        peer_no_context_takeover = True

    with pytest.raises(ValueError):
        client_accept("permessage-deflate", [Strict])
    assert client_accept("permessage-deflate; server_no_context_takeover", [Strict])


def test_server_inflates_with_client_window_8():
    # zlib inflates with an 8-bit window even though it cannot compress with one
    server, _ = pair("permessage-deflate; client_max_window_bits=8", Plain)
    assert server.client_max_window_bits == 8
    message = b"short enough for a 256-byte window " * 3
    for _ in range(2):
        assert server.decode_start(RSV1)
        assert server.decode(compress_raw(message, wbits=9), True, 0) == message


def test_client_window_8_sends_uncompressed():
    [client] = client_accept("permessage-deflate; client_max_window_bits=8", [WebsocketExtensionDeflate])
    message = b"compressible " * 100
    assert client.encode(message) == (message, 0)


# -- accessors ---------------------------------------------------------------------------

def test_accessors_and_repr():
    server, client = pair()
    assert server.get_name() == client.get_name() == "permessage-deflate"
    assert server.get_params_string() == "server_max_window_bits=12; client_max_window_bits=12"
    assert server.get_header_element() == (
        "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12")
    text = repr(server)
    assert "server_max_window_bits=12" in text and "is_server=True" in text


# -- transform: round trips -------------------------------------------------------------

@pytest.mark.parametrize("message", [
    "héllo wörld, ünïcode text ".encode("utf-8") * 40,
    bytes(range(256)) * 16,
    b"\x00" * 100000,
    os.urandom(3000),
])
def test_round_trip_both_directions(message):
    server, client = pair()
    for _ in range(3):
        assert send(server, client, message) == message
        assert send(client, server, message) == message


@pytest.mark.parametrize("size", [1, 3, 7, 64, 1000])
def test_fragmented_decode(size):
    # the compressed payload split at arbitrary points, as fragments would split it
    server, client = pair()
    message = b"".join(b"fragment %d; " % i for i in range(2000))
    for _ in range(2):  # twice: the second message reuses the context
        payload, rsv = client.encode(message)
        assert server.decode_start(rsv)
        chunks = [payload[i:i + size] for i in range(0, len(payload), size)]
        out = [server.decode(chunk, i == len(chunks) - 1, 0) for i, chunk in enumerate(chunks)]
        assert b"".join(out) == message


def test_fragmented_decode_with_empty_final_fragment():
    server, client = pair()
    message = b"ends with an empty fin frame " * 10
    payload, rsv = client.encode(message)
    assert server.decode_start(rsv)
    assert server.decode(payload, False, 0) + server.decode(b"", True, 0) == message


def test_context_takeover_makes_repeats_smaller():
    message = b'{"type": "update", "user": "alice", "room": "general", "text": "hello everybody"}'
    server, client = pair()
    first, _ = server.encode(message)
    second, _ = server.encode(message)
    assert len(second) < len(first) / 2
    assert client.decode_start(RSV1) and client.decode(first, True, 0) == message
    assert client.decode_start(RSV1) and client.decode(second, True, 0) == message


def test_no_context_takeover_repeats_same_size():
    class NoTakeover(WebsocketExtensionDeflate):
        force_no_context_takeover = True
        peer_no_context_takeover = True

    message = b'{"type": "update", "user": "alice", "room": "general", "text": "hello everybody"}'
    server, client = pair(server_type=NoTakeover)
    assert server.server_no_context_takeover and client.client_no_context_takeover
    first, _ = server.encode(message)
    second, _ = server.encode(message)
    assert first == second
    for _ in range(3):
        assert send(server, client, message) == message
        assert send(client, server, message) == message
    # nothing kept between messages on either side
    assert not server.has_compressor() and not server.has_decompressor()
    assert not client.has_compressor() and not client.has_decompressor()


def test_zlib_objects_created_lazily():
    server, client = pair()
    assert not server.has_compressor() and not server.has_decompressor()
    send(server, client, b"lazy " * 50)
    assert server.has_compressor() and client.has_decompressor()
    assert not server.has_decompressor() and not client.has_compressor()


def test_decode_start_without_rsv1():
    server, _ = pair()
    assert server.decode_start(0) is False


def test_peer_final_block_resets_context():
    # A peer may end a message with a BFINAL block; the next message starts a new stream.
    server, _ = pair("permessage-deflate", Plain)
    for text in (b"first message " * 10, b"second message " * 10):
        payload = compress_raw(text, flush=zlib.Z_FINISH)
        assert server.decode_start(RSV1)
        assert server.decode(payload, True, 0) == text


class Always(WebsocketExtensionDeflate):
    compress_threshold = 0


class AlwaysNoTakeover(Always):
    force_no_context_takeover = True
    peer_no_context_takeover = True


@pytest.mark.parametrize("ext_type", [Always, AlwaysNoTakeover], ids=["takeover", "no-takeover"])
def test_empty_compressed_message(ext_type):
    server, client = pair(server_type=ext_type, client_type=ext_type)
    payload, rsv = server.encode(b"")
    if ext_type.force_no_context_takeover:
        assert (payload, rsv) == (b"", 0)  # compressing would not make it smaller
    else:
        # RFC 7692 7.2.3.6: an empty message compresses to the single byte 0x00
        assert (payload, rsv) == (b"\x00", RSV1)
    assert client.decode_start(rsv) == bool(rsv)
    assert (client.decode(payload, True, 0) if rsv else payload) == b""
    # ... and both sides' contexts still agree for the next messages
    for message in (b"after the empty one " * 5, b"after the empty one " * 6):
        assert send(server, client, message) == message
        assert send(client, server, message) == message


# How the empty message arrives with RSV1: zlib's 0x00, no bytes at all (some clients),
# or no bytes split over an empty first frame and an empty continuation.
EMPTY_SHAPES = {"zero-byte": [b"\x00"], "no-bytes": [b""], "fragmented-no-bytes": [b"", b""]}


@pytest.mark.parametrize("shape", sorted(EMPTY_SHAPES))
@pytest.mark.parametrize("ext_type", [Always, AlwaysNoTakeover], ids=["takeover", "no-takeover"])
def test_empty_compressed_message_then_the_next_one_decodes(ext_type, shape):
    # Regression: an empty payload with RSV1 fed the sync tail alone to the inflater, which
    # left it inside a stored block; the next valid message then failed with 1007.
    server, client = pair(server_type=ext_type, client_type=ext_type)
    first = b"context before " * 8
    assert send(client, server, first) == first
    frames = EMPTY_SHAPES[shape]
    assert server.decode_start(RSV1)
    out = [server.decode(f, i == len(frames) - 1, 0) for i, f in enumerate(frames)]
    assert out == [b""] * len(frames)
    for message in (b"context before and after " * 8, first):
        assert send(client, server, message) == message


def test_empty_final_fragment_after_data_still_ends_the_block():
    # Only a message with no compressed byte at all is skipped: an empty last frame after
    # data must still close the block with the sync tail.
    server, client = pair()
    for message in (b"first " * 30, b"second " * 30):
        payload, rsv = client.encode(message)
        assert server.decode_start(rsv)
        assert server.decode(payload, False, 0) + server.decode(b"", True, 0) == message


# -- transform: threshold ------------------------------------------------------------------

def test_small_message_below_threshold_is_not_compressed():
    server, _ = pair()
    message = b"x" * (WebsocketExtensionDeflate.compress_threshold - 1)
    assert server.encode(message) == (message, 0)
    assert not server.has_compressor()  # no compressor allocated for it
    payload, rsv = server.encode(b"x" * WebsocketExtensionDeflate.compress_threshold)
    assert rsv == RSV1


def test_incompressible_message_sent_raw_without_context_takeover():
    class NoTakeover(WebsocketExtensionDeflate):
        force_no_context_takeover = True

    message = os.urandom(1000)
    server, _ = pair(server_type=NoTakeover)
    assert server.encode(message) == (message, 0)
    # with context takeover the compressor's history must match the peer's: always RSV1
    server, client = pair()
    payload, rsv = server.encode(message)
    assert rsv == RSV1
    assert client.decode_start(rsv) and client.decode(payload, True, 0) == message


# -- transform: errors -------------------------------------------------------------------

@pytest.mark.parametrize("payload", [
    b"\xff\xff\xff\xff",
    b"\x07",  # reserved block type 3
    b"\x00\x05\x00\x00\x00",  # stored block whose length check fails
])
def test_corrupt_stream_is_bad_data(payload):
    server, _ = pair()
    assert server.decode_start(RSV1)
    with pytest.raises(ProtocolError) as info:
        server.decode(payload, True, 0)
    assert info.value.close_code == CloseCode.BAD_DATA


def test_data_after_final_block_is_bad_data():
    server, _ = pair("permessage-deflate", Plain)
    payload = compress_raw(b"final " * 10, flush=zlib.Z_FINISH) + b"junk"
    assert server.decode_start(RSV1)
    with pytest.raises(ProtocolError) as info:
        server.decode(payload, True, 0)
    assert info.value.close_code == CloseCode.BAD_DATA


def test_message_exactly_at_limit_passes_one_more_byte_fails():
    limit = 4096
    for size, ok in ((limit, True), (limit + 1, False)):
        server, client = pair()
        payload, rsv = client.encode(b"a" * size)
        assert server.decode_start(rsv)
        if ok:
            assert server.decode(payload, True, limit) == b"a" * size
        else:
            with pytest.raises(ProtocolError) as info:
                server.decode(payload, True, limit)
            assert info.value.close_code == CloseCode.TOO_BIG


def test_limit_applies_to_whole_message_across_fragments():
    server, client = pair()
    payload, rsv = client.encode(os.urandom(300))
    assert server.decode_start(rsv)
    third = len(payload) // 3
    assert len(server.decode(payload[:third], False, 250)) <= 250
    with pytest.raises(ProtocolError) as info:
        server.decode(payload[third:], True, 250)
    assert info.value.close_code == CloseCode.TOO_BIG
    # the next message starts counting from zero
    server, client = pair()
    for _ in range(3):
        assert send(client, server, b"b" * 200, max_size=250) == b"b" * 200


def test_bomb_is_stopped_while_inflating():
    bomb_size = 10 * MIB
    max_size = 128 * KIB
    payload = compress_raw(bytes(bomb_size))
    assert len(payload) < 16 * KIB  # 10 MiB of zeros in ~10 KiB
    server, _ = pair()
    tracemalloc.start()
    try:
        assert server.decode_start(RSV1)
        with pytest.raises(ProtocolError) as info:
            server.decode(payload, True, max_size)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.close_code == CloseCode.TOO_BIG
    # CPython routes zlib's allocations through PyMem_RawMalloc, so the inflater's window
    # is in this figure too: a small multiple of max_size, nowhere near the bomb.
    assert peak < 4 * max_size
    assert peak < bomb_size / 20


def test_fragmented_bomb_fails_on_an_early_fragment():
    payload = compress_raw(bytes(10 * MIB))
    server, _ = pair()
    assert server.decode_start(RSV1)
    fragment = 1024
    with pytest.raises(ProtocolError) as info:
        for offset in range(0, len(payload), fragment):
            server.decode(payload[offset:offset + fragment], offset + fragment >= len(payload), 128 * KIB)
    assert info.value.close_code == CloseCode.TOO_BIG
    assert offset < len(payload) // 2
