"""Every implementation of minisoup.interfaces conforms: by isinstance (runtime_checkable)
and member by member, each method callable the way the Protocol declares it."""

import inspect
import socket
import typing

import pytest

from minisoup import interfaces
from minisoup.client import _BlockingTransport, _Clock
from minisoup.connection import HTTPConnection
from minisoup.frames import FrameParser
from minisoup.loop import Handle, Loop, SocketTransport
from minisoup.websocket import WebsocketConnection, WebsocketConnectionType
from test_loop import Recorder
from test_websocket import FakeClock, FakeTimer, FakeTransport


def protocol_members(proto):
    """The names a typing.Protocol declares: its methods and annotated attributes."""
    names = set()
    for cls in proto.__mro__:
        if cls in (typing.Protocol, typing.Generic, object):
            continue
        names.update(name for name in vars(cls) if not name.startswith("_"))
        names.update(getattr(cls, "__annotations__", {}))
    return names


def _call_shapes(signature):
    """Argument lists a caller may use by the Protocol's signature (self dropped):
    the required arguments alone, then every positional one, then two extra for *args."""
    required, every, var = [], [], False
    for param in list(signature.parameters.values())[1:]:
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            every.append(param.name)
            if param.default is param.empty:
                required.append(param.name)
        elif param.kind is param.VAR_POSITIONAL:
            var = True
    shapes = [required, every]
    if var:
        shapes.append(every + ["extra1", "extra2"])
    return shapes


def mismatches(obj, proto):
    """What ``obj`` lacks, or declares incompatibly, to be a ``proto``; [] if it conforms."""
    problems = []
    hints = typing.get_type_hints(proto)
    for name in sorted(protocol_members(proto)):
        if not hasattr(obj, name):
            problems.append("missing %s" % name)
            continue
        declared = getattr(proto, name, None)
        value = getattr(obj, name)
        if not callable(declared):
            expected = hints.get(name)
            if isinstance(expected, type) and not isinstance(value, expected):
                problems.append("%s is %r, not %s" % (name, value, expected.__name__))
            continue
        if not callable(value):
            problems.append("%s is not callable" % name)
            continue
        actual = inspect.signature(value)
        for shape in _call_shapes(inspect.signature(declared)):
            try:
                actual.bind(*shape)
            except TypeError as exc:
                problems.append("%s%s cannot be called with %s: %s"
                                % (name, actual, tuple(shape), exc))
    return problems


@pytest.fixture
def sockets():
    pair = socket.socketpair()
    yield pair
    for sock in pair:
        sock.close()


@pytest.fixture
def loop():
    loop = Loop()
    yield loop
    loop.close()


def socket_transport(loop, sock):
    return SocketTransport(loop, sock, Recorder())


def websocket_connection():
    return WebsocketConnection(FakeTransport(), WebsocketConnectionType.SERVER, FakeClock())


IMPLEMENTATIONS = [
    # (interface, how to make one implementation, its name)
    (interfaces.Transport, lambda loop, socks: socket_transport(loop, socks[0]), "SocketTransport"),
    (interfaces.Transport, lambda loop, socks: _BlockingTransport(socks[0]), "client transport"),
    (interfaces.Transport, lambda loop, socks: FakeTransport(), "test FakeTransport"),
    (interfaces.Clock, lambda loop, socks: loop, "Loop"),
    (interfaces.Clock, lambda loop, socks: _Clock(), "client clock"),
    (interfaces.Clock, lambda loop, socks: FakeClock(), "test FakeClock"),
    (interfaces.TimerHandle, lambda loop, socks: loop.call_later(60, print), "Handle"),
    (interfaces.TimerHandle, lambda loop, socks: FakeTimer(0, print, ()), "test FakeTimer"),
    (interfaces.StreamProtocol, lambda loop, socks: websocket_connection(), "WebsocketConnection"),
    (interfaces.BufferedStreamProtocol, lambda loop, socks: websocket_connection(),
     "WebsocketConnection"),
    (interfaces.StreamProtocol, lambda loop, socks: Recorder(), "test_loop Recorder"),
    (interfaces.DrainListener, lambda loop, socks: Recorder(), "test_loop Recorder"),
]


@pytest.mark.parametrize("proto,make,name", IMPLEMENTATIONS,
                         ids=["%s-%s" % (p.__name__, n) for p, _, n in IMPLEMENTATIONS])
def test_implementation_conforms(proto, make, name, loop, sockets):
    obj = make(loop, sockets)
    assert isinstance(obj, proto), "%s is not a %s" % (name, proto.__name__)
    assert mismatches(obj, proto) == []


def test_http_connection_is_a_stream_protocol_and_a_drain_listener():
    # Checked on the class: an instance needs a whole server around it.
    for proto in (interfaces.StreamProtocol, interfaces.DrainListener):
        for name in protocol_members(proto):
            assert callable(getattr(HTTPConnection, name, None)), name
            declared = inspect.signature(getattr(proto, name))
            assert (list(inspect.signature(getattr(HTTPConnection, name)).parameters)
                    == list(declared.parameters)), name


def test_the_checker_sees_a_missing_member_and_a_wrong_signature():
    class Broken:
        cork_reads = "no"

        def write(self):                    # data missing
            pass

    problems = mismatches(Broken(), interfaces.Transport)
    assert "missing abort" in problems and "missing set_protocol" in problems
    assert any(p.startswith("write") for p in problems)
    assert any(p.startswith("cork_reads") for p in problems)
    assert not isinstance(Broken(), interfaces.Transport)


def test_frame_parser_is_no_stream_protocol():
    # isinstance is not vacuous: an object with other methods does not pass.
    assert not isinstance(FrameParser(require_mask=True), interfaces.StreamProtocol)
