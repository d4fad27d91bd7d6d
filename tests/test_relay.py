"""The relay's sockets (minisoup/relay.py): Linux abstract names, nothing on disk even
after a SIGKILLed master, and the peer-credential checks that replace the private
directory's permissions."""

import logging
import os
import socket
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from minisoup.loop import Loop  # noqa: E402
from minisoup.pubsub import encode_hello, encode_record  # noqa: E402
from minisoup.relay import ABSTRACT, RelayDirectory  # noqa: E402
from serverproc import MinisoupProcess  # noqa: E402

TEXT = 1
NOBODY = 65534
linux_only = pytest.mark.skipif(not ABSTRACT, reason="abstract Unix sockets are Linux's")
needs_root = pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                                reason="needs root, to run a process as another user")


def spin(loop, seconds):
    loop.call_later(seconds, loop.stop)
    loop.run()


def unix_sockets():
    """``{inode: name}`` of every Unix socket with an address, from /proc/net/unix
    (abstract names start with ``@``)."""
    found = {}
    with open("/proc/net/unix") as table:
        next(table)
        for line in table:
            fields = line.split()
            if len(fields) >= 8:
                found[fields[6]] = fields[7]
    return found


def socket_inodes(pid):
    inodes = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


@linux_only
def test_relay_sockets_are_abstract_and_unguessable():
    one, two = RelayDirectory(2), RelayDirectory(2)
    try:
        assert one.path is None
        slot = one.open_slot(0, 1)
        name = slot.listener.getsockname()
        assert name[:1] == b"\0" and name == one.socket_path(slot.epoch)
        # Another server's epoch 1 has another name: no collision, nothing to predict.
        assert one.socket_path(1) != two.socket_path(1)
        assert one.socket_path(1) != one.socket_path(2)
    finally:
        one.close()
        two.close()


def run_as_nobody(body):
    """Fork a child that drops to uid ``NOBODY`` and runs ``body(write_fd)``; returns
    ``(pid, read_fd)``."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(read_fd)
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            body(write_fd)
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    return pid, read_fd


@linux_only
@needs_root
def test_a_stream_from_another_user_is_refused(caplog):
    directory = RelayDirectory(2)
    loop = Loop()
    got = []
    caplog.set_level(logging.INFO, logger="minisoup")
    try:
        slot = directory.open_slot(0, 1)
        endpoint = slot.start(loop, lambda *record: got.append(record))
        address = directory.socket_path(slot.epoch)

        def inject(write_fd):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(address)  # anyone can connect to an abstract name...
            sock.sendall(encode_hello(99, 1) + encode_record(TEXT, b"room", b"forged"))
            os.write(write_fd, b"sent")
            time.sleep(0.5)

        pid, read_fd = run_as_nobody(inject)
        assert os.read(read_fd, 4) == b"sent"
        spin(loop, 0.3)
        assert os.waitpid(pid, 0)[1] == 0
        assert got == []  # ...but what another user sends is never delivered
        assert any("refused a connection from another user" in r.getMessage()
                   for r in caplog.records)
        endpoint.close()
    finally:
        loop.close()
        directory.close()


@linux_only
@needs_root
def test_a_sender_never_writes_to_a_squatter_of_a_dead_workers_name():
    directory = RelayDirectory(4)
    loop = Loop()
    try:
        slot_a = directory.open_slot(0, 1)
        slot_b = directory.open_slot(1, 2)
        sender = slot_a.start(loop, lambda *record: None)
        address = directory.socket_path(slot_b.epoch)
        slot_b.listener.close()  # worker 2 died; the master has not unlisted it yet

        def squat(write_fd):
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(address)
            listener.listen(4)
            listener.settimeout(3)
            os.write(write_fd, b"bound")
            received = b""
            try:
                conn, _ = listener.accept()
                conn.settimeout(2)
                while True:
                    data = conn.recv(65536)
                    if not data:
                        break
                    received += data
            except OSError:
                pass
            os.write(write_fd, b"%d" % len(received))

        pid, read_fd = run_as_nobody(squat)
        assert os.read(read_fd, 5) == b"bound"
        sender.send(encode_record(TEXT, b"room", b"secret"))
        spin(loop, 0.2)
        assert os.read(read_fd, 16) == b"0"  # not one byte reached the other user
        os.waitpid(pid, 0)
        sender.close()
    finally:
        loop.close()
        directory.close()


@linux_only
def test_a_sigkilled_master_leaves_no_relay_socket_behind():
    proc = MinisoupProcess("pubsub_apps:room", workers=2)
    try:
        proc.start(workers_ready=2)
        workers = proc.live_workers()
        names = unix_sockets()
        ours = [names[inode] for pid in workers for inode in socket_inodes(pid)
                if inode in names]
        relay = [name for name in ours if name.startswith("@minisoup-relay-")]
        assert len(relay) >= 2, ours  # each worker's listening socket, abstract
        assert not [name for name in ours if name.startswith("/")]  # no socket file at all
    finally:
        proc.kill()
    deadline = time.monotonic() + 5
    while set(relay) & set(unix_sockets().values()):
        assert time.monotonic() < deadline, "relay names still bound after SIGKILL"
        time.sleep(0.05)
