"""The fan-out load generator of tools/bench.py: many idle subscribers, and when each got what.

    python3 tools/fanload.py --port P --conns N [--path /fanout] [--nice 19]

Opens ``--conns`` WebSocket connections to ``--path`` (the server subscribes each to a
topic and greets it with a text message ``W<worker id>``), waits for every greeting, and
prints ``READY {"conns": N, "workers": {"<id>": count, ...}}``. From then on every text
message ``P<seq> ...`` (a publication) is accounted for; once each open connection has
received publication ``seq``, the process prints one line::

    GOT <seq> <first> <last> <last_read> <count> {"<worker id>": [<first>, <last>], ...}

``first``/``last``: the earliest and latest time the publication's bytes reached one of
this process's sockets, from the kernel's receive timestamp (``SO_TIMESTAMPNS``,
CLOCK_REALTIME, taken when the segment is queued on the socket, not when this process
reads it); ``last_read``: ``time.monotonic()`` when this process had read the last copy;
then the first and last times per server worker (the one that greeted the connection).
The process ends at ``END`` or EOF on stdin.

Why kernel timestamps: the subscriber "has" the message once it is in its socket. This
process reads thousands of sockets one by one, and it runs at a low priority (``--nice``)
so that it does not take CPU from the server it measures; the kernel's timestamp does not
depend on when it gets round to reading. ``last_read`` is the cruder figure, reported next
to it. epoll directly, one ``recvmsg`` per readable socket; the open file limit is raised
to its hard limit (one descriptor per connection).

Why ``--linger`` (default 2 ms of sleep after each batch of reads): on loopback the
sender's system call does the receiver's TCP work, including waking this process when
it sleeps in ``epoll_wait``. Reading as fast as copies arrive, it would fall asleep and
be woken again for nearly every copy, at the server's expense (measured: 8.3 against
7.6 us of server CPU per delivery, and 5.3 against 3.4 us of its own). Lingering, it
is woken about once per 2 ms; the kernel timestamps are unaffected.
"""

import argparse
import json
import os
import resource
import select
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from loadgen import OP_CLOSE, OP_TEXT, WS_ACCEPT, connect, read_head, upgrade_request  # noqa: E402

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)   # Linux; SCM_TIMESTAMPNS is the same
TIMESPEC = struct.Struct("@qq")                          # struct timespec on 64-bit Linux
ANC_SIZE = socket.CMSG_SPACE(TIMESPEC.size)
RECV_SIZE = 65536
OPEN_BATCH = 200          # upgrade requests in flight at once while connecting
GREETING_TIMEOUT_S = 120.0
POLL_S = 1.0
LINGER_S = 0.002         # default --linger
GREETING = ord("W")
PUBLICATION = ord("P")


class Subscriber:
    """One connection: its socket and a partial frame, if a read ended inside one."""

    __slots__ = ("sock", "fd", "buf", "worker")

    def __init__(self, sock: socket.socket, rest: bytes) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.buf = rest
        self.worker = "?"   # the server worker's id, from the greeting


def raise_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise SystemExit("fanload: %d connections need %d descriptors; the hard limit is %d"
                             % (needed - 64, needed, hard))
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def open_subscribers(host: str, port: int, path: str, count: int) -> list:
    """``count`` upgraded connections, ``OPEN_BATCH`` handshakes in flight at a time."""
    request = upgrade_request(host, port, path)
    subs = []
    while len(subs) < count:
        socks = []
        for _ in range(min(OPEN_BATCH, count - len(subs))):
            sock = connect(host, port)
            sock.sendall(request)
            socks.append(sock)
        for sock in socks:
            head, rest = read_head(sock)
            if not head.startswith(b"HTTP/1.1 101") or WS_ACCEPT not in head:
                raise ConnectionError("upgrade refused: %r" % head[:200])
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            sock.setblocking(False)
            subs.append(Subscriber(sock, rest))
    return subs


def frames(buf: bytes) -> tuple:
    """``([(opcode, payload), ...], rest)``: the complete server frames at the start of ``buf``."""
    out, pos, end = [], 0, len(buf)
    while end - pos >= 2:
        n = buf[pos + 1] & 0x7F
        head = 2
        if n == 126:
            if end - pos < 4:
                break
            n, head = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
        elif n == 127:
            if end - pos < 10:
                break
            n, head = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
        if end - pos < head + n:
            break
        out.append((buf[pos] & 0x0F, buf[pos + head:pos + head + n]))
        pos += head + n
    return out, buf[pos:]


class FanoutLoad:
    """The epoll loop over every subscriber of this process."""

    def __init__(self, subs: list, linger: float = LINGER_S) -> None:
        self.subs = {s.fd: s for s in subs}
        self.linger = linger
        self.poller = select.epoll()
        for s in subs:
            self.poller.register(s.fd, select.EPOLLIN)
        self.workers = {}       # worker id -> greetings seen
        self.greeted = 0
        self.pending = {}       # seq -> [count, first, last, last_read, {worker: [first, last]}]
        self.errors = 0

    def drop(self, s: Subscriber, why: str) -> None:
        print("fanload: %s" % why, file=sys.stderr)
        self.errors += 1
        del self.subs[s.fd]
        self.poller.unregister(s.fd)
        s.sock.close()
        for seq in sorted(self.pending):   # a publication it was the last one missing
            self.maybe_done(seq)

    def maybe_done(self, seq: int) -> None:
        rec = self.pending[seq]
        if rec[0] >= len(self.subs):
            del self.pending[seq]
            print("GOT %d %r %r %r %d %s" % (seq, rec[1], rec[2], rec[3], rec[0],
                                             json.dumps(rec[4])), flush=True)

    def handle(self, s: Subscriber, data: bytes, stamp: float, now: float) -> None:
        # The usual case: exactly one small unfragmented frame, nothing left over.
        if not s.buf and len(data) >= 2 and data[1] < 126 and len(data) == data[1] + 2:
            messages = ((data[0] & 0x0F, data[2:]),)
        else:
            messages, s.buf = frames(s.buf + data)
        for opcode, payload in messages:
            if opcode == OP_CLOSE:
                raise ConnectionError("the server closed the connection (%r)" % payload[:2])
            if opcode != OP_TEXT or not payload:
                continue    # a ping, say: not what is measured
            if payload[0] == PUBLICATION:
                seq = int(payload[1:payload.index(b" ")])
                rec = self.pending.get(seq)
                if rec is None:
                    rec = self.pending[seq] = [0, stamp, stamp, now, {}]
                rec[0] += 1
                if stamp < rec[1]:
                    rec[1] = stamp
                if stamp > rec[2]:
                    rec[2] = stamp
                rec[3] = now
                span = rec[4].get(s.worker)
                if span is None:
                    rec[4][s.worker] = [stamp, stamp]
                elif stamp < span[0]:
                    span[0] = stamp
                elif stamp > span[1]:
                    span[1] = stamp
                if rec[0] >= len(self.subs):
                    self.maybe_done(seq)
            elif payload[0] == GREETING:
                s.worker = worker = payload[1:].decode()
                self.workers[worker] = self.workers.get(worker, 0) + 1
                self.greeted += 1

    def run(self, until_greeted: bool = False) -> bool:
        """Serve reads; returns at ``END``/EOF on stdin (False), or (``until_greeted``)
        once every subscriber has its greeting (True)."""
        subs, poll = self.subs, self.poller.poll
        monotonic, wall = time.monotonic, time.time
        unpack = TIMESPEC.unpack
        for s in list(subs.values()):   # greetings that came with the 101
            if s.buf:
                data, s.buf = s.buf, b""
                self.handle(s, data, wall(), monotonic())
        deadline = monotonic() + GREETING_TIMEOUT_S
        while True:
            if until_greeted:
                if self.greeted >= len(subs):
                    return True
                if monotonic() > deadline:
                    raise SystemExit("fanload: %d of %d greetings after %.0f s"
                                     % (self.greeted, len(subs), GREETING_TIMEOUT_S))
            events = poll(POLL_S)
            for fd, _ev in events:
                if fd == 0:
                    text = sys.stdin.readline()
                    if not text or text.strip() == "END":
                        return False
                    continue
                s = subs.get(fd)
                if s is None:
                    continue
                try:
                    data, anc, _flags, _addr = s.sock.recvmsg(RECV_SIZE, ANC_SIZE)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:
                    self.drop(s, str(exc))
                    continue
                now = monotonic()
                if not data:
                    self.drop(s, "the server closed a connection")
                    continue
                if anc:
                    sec, nsec = unpack(anc[0][2][:TIMESPEC.size])
                    stamp = sec + nsec * 1e-9
                else:
                    stamp = wall()
                try:
                    self.handle(s, data, stamp, now)
                except (ConnectionError, ValueError) as exc:
                    self.drop(s, str(exc))
            if events and self.linger:
                time.sleep(self.linger)

    def close(self) -> None:
        for s in self.subs.values():
            s.sock.close()
        self.poller.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--conns", type=int, default=1000, help="subscribers in this process")
    parser.add_argument("--path", default="/fanout")
    parser.add_argument("--nice", type=int, default=0,
                        help="lower this process's priority by this much once connected")
    parser.add_argument("--linger", type=float, default=LINGER_S,
                        help="seconds to sleep after each batch of reads (see the docstring)")
    args = parser.parse_args()
    raise_file_limit(args.conns + 64)
    load = FanoutLoad(open_subscribers(args.host, args.port, args.path, args.conns), args.linger)
    try:
        load.run(until_greeted=True)
        if args.nice:
            os.nice(args.nice)
        print("READY %s" % json.dumps({"conns": len(load.subs), "workers": load.workers}),
              flush=True)
        load.poller.register(0, select.EPOLLIN)
        load.run()
    finally:
        load.close()
    print(json.dumps({"errors": load.errors, "conns": len(load.subs)}), flush=True)


if __name__ == "__main__":
    main()
