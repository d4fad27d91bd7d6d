"""RFC 6455 section 5 framing, sans-I/O: frame headers, masking, an incremental
frame parser, close payloads and fail-fast UTF-8 validation.

Nothing here touches a socket: bytes go in, tuples and bytes come out, and every
protocol violation is a :class:`ProtocolError` carrying the close code the
connection must be failed with.
"""

import codecs
import enum
import struct
import threading
from typing import Dict, List, Optional, Tuple, Union

from .errors import Error

__all__ = [
    "Opcode", "CloseCode", "RSV1", "RSV2", "RSV3", "MAX_CONTROL_PAYLOAD",
    "MASK_KEY_SIZE", "MASK_STRATEGY_THRESHOLD", "ProtocolError",
    "apply_mask", "apply_mask_int", "apply_mask_translate",
    "frame_header", "build_frame", "FrameParser",
    "parse_close_payload", "build_close_payload", "is_valid_close_code",
    "Utf8Validator",
]

BytesLike = Union[bytes, bytearray, memoryview]


class Opcode(enum.IntEnum):
    """Frame opcodes (RFC 6455 section 5.2). 8 and above are control frames."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(enum.IntEnum):
    """Close status codes (RFC 6455 section 7.4.1), named as libsoup's
    ``SoupWebsocketCloseCode``. NO_STATUS, ABNORMAL and TLS_HANDSHAKE are
    reserved: they are reported locally but never sent in a close frame."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005
    ABNORMAL = 1006
    BAD_DATA = 1007
    POLICY_VIOLATION = 1008
    TOO_BIG = 1009
    NO_EXTENSION = 1010
    SERVER_ERROR = 1011
    TLS_HANDSHAKE = 1015


# The three RSV bits as a small int (rsv1 is the high one), i.e. bits 6..4 of
# the first header byte shifted down by RSV_SHIFT.
RSV1 = 0x4
RSV2 = 0x2
RSV3 = 0x1
RSV_SHIFT = 4

MAX_CONTROL_PAYLOAD = 125
MASK_KEY_SIZE = 4

# First header byte.
FIN_BIT = 0x80
OPCODE_BITS = 0x0F
CONTROL_BIT = 0x08
# Second header byte.
MASK_BIT = 0x80
LENGTH_BITS = 0x7F
LENGTH_16 = 126  # 7-bit length value announcing a 16-bit extended length
LENGTH_64 = 127  # ... and a 64-bit one
MAX_LENGTH_16 = 0xFFFF
LENGTH_64_MSB = 1 << 63  # RFC 6455 5.2: the most significant bit MUST be 0

# Close codes a peer may put on the wire (RFC 6455 7.4.1/7.4.2, IANA registry).
CLOSE_CODE_RANGES = ((1000, 1003), (1007, 1014), (3000, 4999))
CLOSE_CODE_SIZE = 2
MAX_CLOSE_REASON = MAX_CONTROL_PAYLOAD - CLOSE_CODE_SIZE

_KNOWN_OPCODES = frozenset(int(op) for op in Opcode)
# The first byte of a final frame of a known opcode without RSV bits, and the second byte
# bound of a masked 7-bit length: FrameParser.next_frame's fast path.
_FINAL_PLAIN = frozenset(FIN_BIT | op for op in _KNOWN_OPCODES)
_MASKED_LENGTH_16 = MASK_BIT | LENGTH_16

_HEADER_2 = struct.Struct("!BB")
_HEADER_4 = struct.Struct("!BBH")
_HEADER_10 = struct.Struct("!BBQ")
_HOLDING_NOTHING = b""  # FrameParser._buf while no received byte is held
_UINT16 = struct.Struct("!H")
_UINT64 = struct.Struct("!Q")


class ProtocolError(Error):
    """A violation of RFC 6455 by the peer.

    ``close_code`` is the code to fail the connection with (1002, 1007 or
    1009); ``reason`` is a short human-readable explanation, also ``str(exc)``.
    """

    def __init__(self, close_code: int, reason: str) -> None:
        super().__init__(reason)
        self.close_code = close_code
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


# --------------------------------------------------------------------------
# Masking (RFC 6455 5.3)
#
# A per-byte Python loop runs at a few MB/s, so both strategies work over the
# whole payload in C: one big-integer XOR, or four strided bytes.translate()
# passes (one per key byte) with a 256-byte XOR table.  tools/bench_mask.py
# measures them; on the reference machine (CPython 3.11, 2 vCPUs, best of 3,
# two runs agreeing within 10%), MB/s:
#
#     size      int  translate
#     64 B      180         78
#     1 KiB     580        540
#     2 KiB     700        750
#     4 KiB     770        960
#     64 KiB    860       1320
#     1 MiB     430       1310
#     16 MiB    400       1250
#
# The integer path has the lower fixed cost (one call chain, no table
# look-ups), which wins for the small frames of chatty applications; the
# translate path streams and wins once a payload is a few KiB.  The crossover
# wanders between 1 and 2 KiB from run to run, hence the threshold below.
# --------------------------------------------------------------------------

MASK_STRATEGY_THRESHOLD = 2048  # payload bytes from which translate is used

# The translate strategy works on slabs of this many bytes. On 1 MiB at once,
# each strided pass makes two 256 KiB temporaries; glibc serves those with
# fresh pages and trims them again, so every call re-faults ~1.5 MiB (384
# page faults, +80% time, measured: 1,310 us vs 730 us per MiB). 64 KiB lanes
# are reused from the heap. Must be a multiple of MASK_KEY_SIZE.
UNMASK_SLAB = 256 * 1024

# Frame payloads from this size on are collected by _BigPayload: received into
# chunks of their own, of DIRECT_CHUNK_MIN to DIRECT_CHUNK_MAX bytes (powers of
# two), which go back to a pool of at most DIRECT_POOL_LIMIT bytes per process.
# A big payload gets its first chunk only once DIRECT_START of its bytes have
# arrived; until then they wait in the parser's read buffer, so that memory held
# follows what the peer sent, not what its header announced (15 bytes announcing
# 128 KiB used to pin a 64 KiB chunk: x4,000 over many connections).
DIRECT_MIN = 64 * 1024
DIRECT_CHUNK_MIN = 64 * 1024
DIRECT_CHUNK_MAX = 1024 * 1024
DIRECT_POOL_LIMIT = 4 * 1024 * 1024
DIRECT_START = DIRECT_CHUNK_MIN

_XOR_TABLES: List[Optional[bytes]] = [None] * 256


def _xor_table(key_byte: int) -> bytes:
    """The translate() table mapping every byte b to b ^ key_byte, built once."""
    table = _XOR_TABLES[key_byte]
    if table is None:
        table = bytes(b ^ key_byte for b in range(256))
        _XOR_TABLES[key_byte] = table
    return table


def apply_mask_int(data: BytesLike, key: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``key`` repeated, as one big-integer XOR.

    Cheapest for small payloads. Masking is its own inverse.
    """
    n = len(data)
    if not n:
        return b""
    repeated = (key * (n // MASK_KEY_SIZE + 1))[:n]
    # Little-endian is the native order on common hardware: a slightly
    # cheaper conversion, and the byte order is irrelevant to a XOR.
    return (int.from_bytes(data, "little") ^ int.from_bytes(repeated, "little")).to_bytes(n, "little")


def apply_mask_translate(data: BytesLike, key: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``key`` by four strided ``translate`` passes.

    Cheapest for large payloads. Masking is its own inverse.
    """
    out = bytearray(data)  # one copy, and bytearray slices have translate()
    _unmask_in_place(out, 0, len(out), key)
    return bytes(out)


def _unmask_in_place(buf: bytearray, start: int, end: int, key: BytesLike) -> None:
    """XOR ``buf[start:end]`` with ``key`` in place (translate strategy).

    Works slab by slab (UNMASK_SLAB bytes, a multiple of 4 so the key never
    rotates): each pass's temporaries stay small enough for malloc to reuse.
    """
    tables = [_xor_table(k) for k in key[:MASK_KEY_SIZE]]
    for slab in range(start, end, UNMASK_SLAB):
        slab_end = min(slab + UNMASK_SLAB, end)
        for i in range(MASK_KEY_SIZE):
            lane = slice(slab + i, slab_end, MASK_KEY_SIZE)
            buf[lane] = buf[lane].translate(tables[i])


def _copy_out(buf: bytearray, start: int, end: int) -> bytes:
    """``bytes(buf[start:end])`` with one copy instead of two."""
    with memoryview(buf) as view:
        return bytes(view[start:end])


def apply_mask(data: BytesLike, key: bytes) -> bytes:
    """Mask (or unmask) ``data`` with the 4-byte ``key``; returns new bytes.

    Accepts bytes, bytearray or memoryview of any length, including 0, and
    picks the faster strategy for the size (see MASK_STRATEGY_THRESHOLD).
    """
    if len(data) < MASK_STRATEGY_THRESHOLD:
        return apply_mask_int(data, key)
    return apply_mask_translate(data, key)


# --------------------------------------------------------------------------
# Serialising frames
# --------------------------------------------------------------------------

def frame_header(opcode: int, length: int, fin: bool = True, rsv: int = 0,
                 mask_key: Optional[bytes] = None) -> bytes:
    """The header of a frame carrying ``length`` payload bytes.

    2, 4 or 10 bytes with the minimal length encoding, plus the 4-byte
    ``mask_key`` when given (client frames). ``rsv`` is a RSV1|RSV2|RSV3 mask.
    Raises ValueError for a negative or over-63-bit length or a bad key.
    """
    b0 = (FIN_BIT if fin else 0) | (rsv << RSV_SHIFT) | opcode
    mask = 0
    if mask_key is not None:
        if len(mask_key) != MASK_KEY_SIZE:
            raise ValueError("mask key must be %d bytes" % MASK_KEY_SIZE)
        mask = MASK_BIT
    if length < 0 or length >= LENGTH_64_MSB:
        raise ValueError("invalid payload length %r" % length)
    if length < LENGTH_16:
        header = _HEADER_2.pack(b0, mask | length)
    elif length <= MAX_LENGTH_16:
        header = _HEADER_4.pack(b0, mask | LENGTH_16, length)
    else:
        header = _HEADER_10.pack(b0, mask | LENGTH_64, length)
    if mask:
        header += bytes(mask_key)
    return header


def build_frame(opcode: int, payload: BytesLike, fin: bool = True, rsv: int = 0,
                mask_key: Optional[bytes] = None) -> bytes:
    """A complete frame: :func:`frame_header` plus the payload, masked with
    ``mask_key`` when one is given, as a single bytes object."""
    header = frame_header(opcode, len(payload), fin, rsv, mask_key)
    if mask_key is not None:
        payload = apply_mask(payload, mask_key)
    return header + payload


# --------------------------------------------------------------------------
# Parsing frames
# --------------------------------------------------------------------------

Frame = Tuple[int, bool, int, bytes]


class FrameParser:
    """Incremental frame parser: :meth:`feed` bytes, then call
    :meth:`next_frame` until it returns None.

    ``require_mask`` is True on the server (client frames must be masked) and
    False on the client (server frames must not be). ``max_payload_size``
    (bytes, 0 = unlimited) and ``allowed_rsv`` (RSV bits negotiated
    extensions may set, default none) may be changed at any time.

    Every check that the header alone can decide raises :class:`ProtocolError`
    as soon as the header has arrived, before any payload is waited for.
    After an error the parser is unusable and should be dropped.
    """

    # Why it is written this way: received bytes accumulate in one bytearray
    # and frames are read at an offset into it, so that
    #  - a frame arriving in pieces costs amortised O(1) appends and one copy
    #    out (never re-slicing the buffer per piece: O(n^2));
    #  - many small frames in one feed cost a few integer ops each: the two
    #    header bytes are read by indexing, extended lengths with precompiled
    #    Structs, and the consumed prefix is dropped once per feed, not per
    #    frame (CPython's bytearray drops a prefix without moving the rest).
    # ``_need`` lets next_frame() return at once while a frame is incomplete.
    # A payload of DIRECT_MIN bytes or more that is incomplete once DIRECT_START of
    # its bytes are here (a 64 MiB frame, say) leaves this buffer: a _BigPayload
    # collects it, and the transport may receive into it directly (recv_buffer /
    # recv_done). Before that, a big frame waits here like a small one.
    # ``collecting`` caches "a _BigPayload still wants bytes" for the transport's
    # per-read test.

    # While no byte is held, ``_buf`` is the shared empty ``bytes`` (not a bytearray of
    # its own): an idle connection holds no buffer (56 bytes less each), whether it never
    # sent a frame or all it sent was read.

    __slots__ = ("require_mask", "max_payload_size", "allowed_rsv", "collecting",
                 "_buf", "_pos", "_need", "_big")

    def __init__(self, require_mask: bool, max_payload_size: int = 0) -> None:
        self.require_mask = require_mask
        self.max_payload_size = max_payload_size
        self.allowed_rsv = 0
        self._buf: Union[bytes, bytearray] = _HOLDING_NOTHING
        self._pos = 0
        self._need = 2  # bytes from _pos before parsing can progress
        self._big: Optional[_BigPayload] = None
        # True while a big payload's bytes are still to come (recv_buffer offers a view).
        self.collecting = False

    def feed(self, data: BytesLike) -> None:
        """Append received bytes."""
        if self.collecting:
            big = self._big
            taken = big.fill(data)
            self.collecting = big.left > 0
            if taken == len(data):
                return
            data = memoryview(data)[taken:]
        buf = self._buf
        if buf.__class__ is bytes:  # holding nothing
            self._buf = bytearray(data)
            return
        if self._pos:
            del buf[:self._pos]
            self._pos = 0
        buf += data  # in place

    def recv_buffer(self) -> Optional[memoryview]:
        """A writable view the next received bytes may go straight into, or None.

        Only while a big frame's payload is being collected; the view is never
        longer than the rest of that payload, so it never takes the next frame's
        bytes. Report how many bytes were written with :meth:`recv_done`.
        """
        if not self.collecting:
            return None
        return self._big.buffer()

    def recv_done(self, n: int) -> None:
        """``n`` bytes were written into the view :meth:`recv_buffer` returned."""
        big = self._big
        big.done(n)
        self.collecting = big.left > 0

    def buffered(self) -> int:
        """Number of received bytes not yet returned as frames."""
        held = len(self._buf) - self._pos
        return held + self._big.got if self._big is not None else held

    def memory_held(self) -> int:
        """Bytes of buffer this parser holds: its read buffer plus the capacity of the
        chunks a big payload is being received into (a measure for tests and memory
        accounting; not needed to parse)."""
        held = len(self._buf)
        return held + self._big.capacity() if self._big is not None else held

    def next_frame(self) -> Optional[Frame]:
        """The next complete frame as ``(opcode, fin, rsv, payload)`` with the
        payload unmasked, or None until more bytes are fed.

        Raises ProtocolError (1002 for malformed or forbidden frames, 1009 for
        a payload over ``max_payload_size``).
        """
        big = self._big
        if big is not None:
            if big.left:
                return None
            self._big = None
            return big.head + (big.finish(),)
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail < self._need:
            if not avail and pos:
                # All that was received has been read: let the buffer go.
                self._buf = _HOLDING_NOTHING
                self._pos = 0
            return None

        b0 = buf[pos]
        b1 = buf[pos + 1]
        if b0 in _FINAL_PLAIN and MASK_BIT <= b1 < _MASKED_LENGTH_16 and self.require_mask:
            # Hot path (every small client frame): final, known opcode, no RSV bit, masked,
            # a 7-bit length. Every header check below passes for it (a control frame's
            # length is then at most 125) but the payload limit.
            length = b1 & LENGTH_BITS
            limit = self.max_payload_size
            if limit and length > limit:
                raise ProtocolError(CloseCode.TOO_BIG, "frame payload of %d bytes exceeds "
                                    "the limit of %d" % (length, limit))
            start = pos + 6
            end = start + length
            if end - pos > avail:
                self._need = end - pos
                return None
            payload = apply_mask_int(buf[start:end], buf[pos + 2:start])
            self._pos = end
            self._need = 2
            return b0 & OPCODE_BITS, True, 0, payload
        opcode = b0 & OPCODE_BITS
        rsv = (b0 >> RSV_SHIFT) & (RSV1 | RSV2 | RSV3)
        length = b1 & LENGTH_BITS
        masked = b1 & MASK_BIT
        if opcode not in _KNOWN_OPCODES:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "unknown opcode %d" % opcode)
        if rsv:
            self._check_rsv(rsv, opcode)
        if opcode & CONTROL_BIT:
            if not b0 & FIN_BIT:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "fragmented control frame")
            if length > MAX_CONTROL_PAYLOAD:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR,
                                    "control frame payload over %d bytes" % MAX_CONTROL_PAYLOAD)
        if self.require_mask:
            if not masked:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "client frame not masked")
        elif masked:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "server frame masked")

        start = pos + 2
        if length >= LENGTH_16:
            if length == LENGTH_16:
                if avail < 4:
                    self._need = 4
                    return None
                length = _UINT16.unpack_from(buf, start)[0]
                start += 2
            else:
                if avail < 10:
                    self._need = 10
                    return None
                length = _UINT64.unpack_from(buf, start)[0]
                if length & LENGTH_64_MSB:
                    raise ProtocolError(CloseCode.PROTOCOL_ERROR,
                                        "64-bit payload length with the high bit set")
                start += 8
            # Non-minimal encodings are accepted on purpose (SPEC section 3).
        limit = self.max_payload_size
        if limit and length > limit:
            raise ProtocolError(CloseCode.TOO_BIG,
                                "frame payload of %d bytes exceeds the limit of %d" % (length, limit))

        if masked:
            key = buf[start:start + MASK_KEY_SIZE]
            start += MASK_KEY_SIZE
        end = start + length
        if end - pos > avail:
            if length < DIRECT_MIN:
                self._need = end - pos
            elif avail - (start - pos) < DIRECT_START:
                # The rest of the header, and then DIRECT_START payload bytes, first.
                self._need = start - pos + DIRECT_START
            else:
                self._big = _BigPayload((opcode, bool(b0 & FIN_BIT), rsv),
                                        bytes(key) if masked else None, length,
                                        memoryview(buf)[start:])
                # Its bytes are in the chunks now: let this buffer go at once rather
                # than hold a second copy until the payload is complete.
                self._buf = _HOLDING_NOTHING
                self._pos = 0
                self._need = 2
                self.collecting = self._big.left > 0
            return None
        if length < MASK_STRATEGY_THRESHOLD:
            payload = apply_mask_int(buf[start:end], key) if masked else bytes(buf[start:end])
        else:
            # Big payloads: unmask inside the receive buffer (those bytes are
            # consumed anyway) and copy out once; every extra copy of a fresh
            # multi-MiB buffer costs page faults comparable to the XOR itself.
            if masked:
                _unmask_in_place(buf, start, end, key)
            payload = _copy_out(buf, start, end)

        self._pos = end
        self._need = 2
        return opcode, bool(b0 & FIN_BIT), rsv, payload

    def _check_rsv(self, rsv: int, opcode: int) -> None:
        if opcode & CONTROL_BIT:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "RSV bit set on a control frame")
        if rsv & ~self.allowed_rsv:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR,
                                "RSV bits 0x%x set without a negotiated extension" % rsv)


class _ChunkPool:
    """Free payload chunks kept for reuse, at most ``limit`` bytes in all.

    Reusing them spares a zero-filled allocation per chunk and, more, the page
    faults of memory that malloc handed back to the kernel in between (measured:
    100-200 faults per 1 MiB message without the pool).
    """

    __slots__ = ("limit", "_free", "_size", "_lock")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free: Dict[int, List[bytearray]] = {}  # capacity -> free chunks
        self._size = 0
        # The server is single-threaded, but blocking clients may run in threads.
        self._lock = threading.Lock()

    def take(self, capacity: int) -> bytearray:
        """A chunk of ``capacity`` bytes (old contents, or zeros when new)."""
        with self._lock:
            stack = self._free.get(capacity)
            if stack:
                self._size -= capacity
                return stack.pop()
        return bytearray(capacity)

    def give(self, chunk: bytearray) -> None:
        """Keep ``chunk`` for reuse if the pool has room; else let it be freed."""
        capacity = len(chunk)
        with self._lock:
            if self._size + capacity <= self.limit:
                self._free.setdefault(capacity, []).append(chunk)
                self._size += capacity

    def size(self) -> int:
        """Bytes held in free chunks."""
        return self._size


_CHUNK_POOL = _ChunkPool(DIRECT_POOL_LIMIT)


class _BigPayload:
    """The payload of one big frame, collected in chunks that bytes are received into.

    Chunk capacities are powers of two from DIRECT_CHUNK_MIN to DIRECT_CHUNK_MAX, each
    at most about what was received of the payload so far: a peer announcing a huge
    frame and sending little ties up little memory. Each chunk is unmasked as soon as
    it is full (while still in the CPU's cache); :meth:`finish` joins them with one copy.
    """

    __slots__ = ("head", "key", "got", "left", "_chunks", "_chunk", "_fill", "_base")

    def __init__(self, head: Tuple[int, bool, int], key: Optional[bytes], length: int,
                 prefix: memoryview) -> None:
        self.head = head      # (opcode, fin, rsv)
        self.key = key        # the mask key, None for unmasked frames
        self.got = 0          # payload bytes received
        self.left = length    # payload bytes still to come
        self._chunks: List[bytearray] = []  # full chunks
        self._chunk: Optional[bytearray] = None  # the one being filled
        self._fill = 0        # bytes in it
        self._base = 0        # its offset in the payload
        if prefix:
            self.fill(prefix)
        prefix.release()

    def buffer(self) -> memoryview:
        """A view of the free part of the current chunk, never past the payload's end."""
        chunk = self._chunk
        if chunk is None:
            want = max(DIRECT_CHUNK_MIN, min(self.got, DIRECT_CHUNK_MAX))
            capacity = DIRECT_CHUNK_MIN
            while capacity < want and capacity < self.left:
                capacity *= 2
            chunk = self._chunk = _CHUNK_POOL.take(capacity)
            self._fill = 0
            self._base = self.got
        fill = self._fill
        return memoryview(chunk)[fill:fill + self.left]

    def capacity(self) -> int:
        """Bytes of chunk memory held: the full chunks plus the one being filled."""
        held = sum(len(chunk) for chunk in self._chunks)
        return held + len(self._chunk) if self._chunk is not None else held

    def done(self, n: int) -> None:
        """``n`` bytes were written into the view :meth:`buffer` returned."""
        self._fill += n
        self.got += n
        self.left -= n
        if self._fill == len(self._chunk) or not self.left:
            self._seal()

    def fill(self, data: BytesLike) -> int:
        """Copy the start of ``data`` in; return how many bytes were taken."""
        taken = 0
        with memoryview(data) as src:
            while self.left and taken < len(src):
                with self.buffer() as view:
                    n = min(len(view), len(src) - taken)
                    view[:n] = src[taken:taken + n]
                taken += n
                self.done(n)
        return taken

    def _seal(self) -> None:
        chunk, fill = self._chunk, self._fill
        key = self.key
        if key is not None:
            rot = self._base % MASK_KEY_SIZE
            _unmask_in_place(chunk, 0, fill, key[rot:] + key[:rot])
        self._chunks.append(chunk)
        self._chunk = None

    def finish(self) -> bytes:
        """The whole unmasked payload, once ``left`` is 0; the chunks go back to the pool."""
        chunks = self._chunks
        # Every chunk is full but the last, which holds _fill bytes (sealed at the end).
        views = [memoryview(c) for c in chunks]
        views[-1] = views[-1][:self._fill]
        payload = bytes(views[0]) if len(views) == 1 else b"".join(views)
        for view in views:
            view.release()
        for chunk in chunks:
            _CHUNK_POOL.give(chunk)
        self._chunks = []
        return payload


# --------------------------------------------------------------------------
# Close frames (RFC 6455 5.5.1, 7.4)
# --------------------------------------------------------------------------

def is_valid_close_code(code: int) -> bool:
    """Whether ``code`` may appear in a close frame on the wire.

    Valid: 1000-1003, 1007-1014 and 3000-4999. libsoup 3 also rejects
    1012-1014 (unassigned when it was written; now Service Restart, Try Again
    Later, Bad Gateway); we accept them, as the IANA registry and the Autobahn
    test suite do. 1004-1006, 1015, 1016-2999 and 5000+ are invalid.
    """
    for low, high in CLOSE_CODE_RANGES:
        if low <= code <= high:
            return True
    return False


# code -> member: a dict lookup (~0.05 us), where CloseCode(code) costs ~0.26 us per close.
_CLOSE_CODE_MEMBERS = {member.value: member for member in CloseCode}


def _close_code(code: int) -> int:
    """A CloseCode member when the code has a name, else the plain int."""
    return _CLOSE_CODE_MEMBERS.get(code, code)


def parse_close_payload(payload: BytesLike) -> Tuple[int, str]:
    """Decode a received close frame's payload into ``(code, reason)``.

    An empty payload gives ``(CloseCode.NO_STATUS, "")``. Raises
    ProtocolError 1002 for a 1-byte payload or an invalid code, 1007 for a
    reason that is not UTF-8 (libsoup answers 1002 for the latter).
    """
    if payload.__class__ is bytes:
        # Hot path (every close): a named code alone, or nothing, decoded once for all.
        parsed = _CLOSE_PAYLOADS.get(payload)
        if parsed is not None:
            return parsed
    if not payload:
        return CloseCode.NO_STATUS, ""
    if len(payload) < CLOSE_CODE_SIZE:
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, "close payload of 1 byte")
    code = _UINT16.unpack_from(payload)[0]
    if not is_valid_close_code(code):
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, "invalid close code %d" % code)
    try:
        reason = bytes(payload[CLOSE_CODE_SIZE:]).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(CloseCode.BAD_DATA, "close reason is not valid UTF-8") from None
    return _close_code(code), reason


# The received close payloads that need no decoding: each valid named code with no
# reason, and the empty payload.
_CLOSE_PAYLOADS: Dict[bytes, Tuple[int, str]] = {
    _UINT16.pack(member.value): (member, "") for member in CloseCode
    if is_valid_close_code(member.value)}
_CLOSE_PAYLOADS[b""] = (CloseCode.NO_STATUS, "")


def _truncate_utf8(data: bytes, size: int) -> bytes:
    """``data`` cut to at most ``size`` bytes, never inside a UTF-8 sequence."""
    if len(data) <= size:
        return data
    end = size
    # Back up over continuation bytes (10xxxxxx) so the cut lands on the lead
    # byte of the character that does not fit.
    while end > 0 and data[end] & 0xC0 == 0x80:
        end -= 1
    return data[:end]


def build_close_payload(code: int, reason: Union[str, bytes] = "") -> bytes:
    """The payload of a close frame: 2-byte ``code`` then the UTF-8 ``reason``,
    truncated so the whole fits in 125 bytes without splitting a character.

    ``code`` 0 or 1005 (NO_STATUS) gives an empty payload, as libsoup does.
    """
    if code in (0, CloseCode.NO_STATUS):
        return b""
    if isinstance(reason, str):
        reason = reason.encode("utf-8")
    return _UINT16.pack(code) + _truncate_utf8(bytes(reason), MAX_CLOSE_REASON)


# --------------------------------------------------------------------------
# UTF-8 validation of text messages (RFC 6455 8.1)
# --------------------------------------------------------------------------

_SURROGATE_LEAD = 0xED
_SURROGATE_MIN_SECOND = 0xA0


class Utf8Validator:
    """Incremental UTF-8 decoder for the fragments of one TEXT message.

    :meth:`feed` raises ProtocolError 1007 as soon as the bytes seen so far
    cannot start valid UTF-8 (overlong forms, surrogates, code points above
    U+10FFFF, stray bytes), so a bad fragment fails the connection at once;
    a sequence cut at the end is only an error when ``final`` is true.
    """

    # The decoder only validates; the bytes are kept in one bytearray and decoded once at
    # the end. Keeping each fragment's decoded str instead let a peer sending a message as
    # 1-character fragments pin ~80 bytes of objects per byte of the size limit.
    __slots__ = ("_decoder", "_data")

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._data = bytearray()

    def feed(self, data: BytesLike, final: bool) -> None:
        """Decode the next fragment; ``final`` marks the message's last one."""
        try:
            self._decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            raise ProtocolError(CloseCode.BAD_DATA,
                                "invalid UTF-8 in text message: %s" % exc.reason) from None
        self._data += data
        if not final and data and data[-1] & 0x80:
            self._check_pending()

    def _check_pending(self) -> None:
        # CPython's stateful decoder deliberately keeps "ED A0..ED BF" pending
        # (a truncated surrogate, for the surrogatepass handler) instead of
        # failing; no continuation can make it valid, so fail fast here.
        pending = self._decoder.getstate()[0]
        if (len(pending) >= 2 and pending[0] == _SURROGATE_LEAD
                and pending[1] >= _SURROGATE_MIN_SECOND):
            raise ProtocolError(CloseCode.BAD_DATA, "invalid UTF-8 in text message: surrogate")

    def result(self) -> str:
        """The whole decoded text so far; resets the validator for reuse."""
        data = self._data
        pending = len(self._decoder.getstate()[0])  # a sequence cut at the end so far
        text = (data[:len(data) - pending] if pending else data).decode("utf-8")
        self.reset()
        return text

    def reset(self) -> None:
        """Forget any partial message."""
        self._decoder.reset()
        self._data = bytearray()
