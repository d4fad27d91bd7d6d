"""Measure what permessage-deflate costs per connection, for each setting.

    python3 tools/deflate_memory.py [--connections 1000] [--message-size 16384]

For each setting, a fresh subprocess negotiates ``--connections`` server-side
``WebsocketExtensionDeflate`` agreements, then has each one inflate one client message
and compress one reply of ``--message-size`` bytes of JSON-like text (big enough to touch
the whole window), and keeps them all alive. It prints, per connection:

* ``RSS KiB``: the growth of the resident set (``/proc/self/statm``), i.e. pages really
  touched, measured without tracemalloc;
* ``alloc KiB``: the bytes allocated and still held, from tracemalloc in a second run
  (CPython routes zlib's allocations through ``PyMem_RawMalloc``, which tracemalloc
  sees, so this includes zlib's untouched buffers);
* ``ratio``: compressed/raw size over a stream of 300 chat-sized JSON messages
  (80-600 bytes) sent on one connection with that setting (lower is better).

Linux only (``/proc``). Not a test: a figure for the README.
"""

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import tracemalloc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minisoup.deflate import WebsocketExtensionDeflate  # noqa: E402
from minisoup.extensions import client_accept, negotiate_server  # noqa: E402

BROWSER_OFFER = "permessage-deflate; client_max_window_bits"
KIB = 1024
RATIO_MESSAGES = 300


def _policy(**attrs: object) -> type:
    return type("Policy", (WebsocketExtensionDeflate,), dict(attrs))


# name -> (server policy, client offer, whether connections exchange a message)
LIBSOUP = _policy(mem_level=8, max_window_bits=15, peer_max_window_bits=15)
BARE_OFFER = "permessage-deflate"

SETTINGS = {
    "idle (negotiated, no message yet)": (WebsocketExtensionDeflate, BROWSER_OFFER, False),
    "default: takeover, 12/12 bits, memLevel 5": (WebsocketExtensionDeflate, BROWSER_OFFER, True),
    "default, client offers no client_max_window_bits": (WebsocketExtensionDeflate, BARE_OFFER, True),
    "libsoup: takeover, 15/15 bits, memLevel 8": (LIBSOUP, BROWSER_OFFER, True),
    "takeover, 15/15 bits, memLevel 5": (
        _policy(max_window_bits=15, peer_max_window_bits=15), BROWSER_OFFER, True),
    "takeover, 10/10 bits, memLevel 4": (
        _policy(mem_level=4, max_window_bits=10, peer_max_window_bits=10), BROWSER_OFFER, True),
    "takeover, 9/9 bits, memLevel 1": (
        _policy(mem_level=1, max_window_bits=9, peer_max_window_bits=9), BROWSER_OFFER, True),
    "server no takeover (default bits), client takeover": (
        _policy(force_no_context_takeover=True), BROWSER_OFFER, True),
    "no context takeover both ways": (
        _policy(force_no_context_takeover=True, peer_no_context_takeover=True), BROWSER_OFFER, True),
}


def _text(rng: random.Random, size: int) -> bytes:
    words = ["alpha", "bravo", "charlie", "delta", "echo", "user", "room", "text", "id", "ts"]
    items = []
    length = 0
    while length < size:
        item = json.dumps({"id": rng.randrange(10 ** 6), "user": rng.choice(words),
                           "text": " ".join(rng.choice(words) for _ in range(rng.randrange(3, 12)))})
        items.append(item)
        length += len(item) + 1
    return ("[" + ",".join(items) + "]").encode()[:size]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _client_message(policy: type, offer: str, size: int) -> bytes:
    """One compressed message as a client with this agreement would send it."""
    _exts, response = negotiate_server(offer, [policy])
    client = client_accept(response, [type("Client", (WebsocketExtensionDeflate,), {})])[0]
    payload, _rsv = client.encode(_text(random.Random(1), size))
    return payload


def measure(name: str, connections: int, size: int, traced: bool) -> float:
    policy, offer, exchange = SETTINGS[name]
    incoming = _client_message(policy, offer, size)
    outgoing = _text(random.Random(2), size)
    gc.collect()
    if traced:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
    else:
        before = _rss_bytes()
    kept = []
    for _ in range(connections):
        ext = negotiate_server(offer, [policy])[0][0]
        if exchange:
            ext.decode_start(0x4)
            ext.decode(incoming, True, 0)
            ext.encode(outgoing)
        kept.append(ext)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0] if traced else _rss_bytes()
    return (after - before) / connections / KIB


def ratio(name: str) -> float:
    policy, offer, _exchange = SETTINGS[name]
    ext = negotiate_server(offer, [policy])[0][0]
    rng = random.Random(3)
    raw = packed = 0
    for _ in range(RATIO_MESSAGES):
        message = _text(rng, rng.randrange(80, 600))
        payload, _rsv = ext.encode(message)
        raw += len(message)
        packed += len(payload)
    return packed / raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--message-size", type=int, default=16 * KIB)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(measure(args.one, args.connections, args.message_size, args.traced))
        return
    print("%d connections, %d-byte messages, CPython %s" % (
        args.connections, args.message_size, sys.version.split()[0]))
    print("%-52s %9s %10s %6s" % ("setting", "RSS KiB", "alloc KiB", "ratio"))
    for name in SETTINGS:
        figures = []
        for traced in (False, True):
            command = [sys.executable, __file__, "--one", name, "--connections", str(args.connections),
                       "--message-size", str(args.message_size)] + (["--traced"] if traced else [])
            figures.append(float(subprocess.check_output(command)))
        print("%-52s %9.1f %10.1f %6.3f" % (name, figures[0], figures[1], ratio(name)))


if __name__ == "__main__":
    main()
