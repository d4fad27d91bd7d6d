"""minisoup.Error: the one base class of the public exceptions (issue 10, item 5)."""

import pytest

import minisoup
from minisoup.frames import FrameParser, Opcode, build_frame
from minisoup.http import MessageHeaders, RequestParser
from minisoup.handshake import server_handshake

# How to make one of each public exception (the classes the package exports).
EXAMPLES = {
    minisoup.HTTPError: lambda: minisoup.HTTPError(400, "bad request"),
    minisoup.HandshakeError: lambda: minisoup.HandshakeError(403, "origin"),
    minisoup.ProtocolError: lambda: minisoup.ProtocolError(1002, "unmasked frame"),
    minisoup.WebsocketError: lambda: minisoup.WebsocketError(1009, "too big"),
    minisoup.ConnectionClosed: lambda: minisoup.ConnectionClosed(1000, "closed"),
}


def public_exceptions():
    return {obj for obj in (getattr(minisoup, name) for name in minisoup.__all__)
            if isinstance(obj, type) and issubclass(obj, BaseException)}


def test_every_public_exception_derives_from_error():
    assert minisoup.Error in public_exceptions()
    assert issubclass(minisoup.Error, Exception)
    # A new public exception must be added to EXAMPLES, and so checked here.
    assert public_exceptions() - {minisoup.Error} == set(EXAMPLES)
    for cls in EXAMPLES:
        assert issubclass(cls, minisoup.Error), cls


@pytest.mark.parametrize("cls", sorted(EXAMPLES, key=lambda c: c.__name__))
def test_except_error_catches_each_and_keeps_its_fields(cls):
    exc = EXAMPLES[cls]()
    with pytest.raises(minisoup.Error) as info:
        raise exc
    assert info.value is exc and isinstance(exc, cls)
    assert str(exc)   # the message survives the new base


def test_errors_raised_by_the_library_are_caught_as_error():
    parser = RequestParser()
    parser.feed(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(minisoup.Error) as info:
        parser.read_head()
    assert isinstance(info.value, minisoup.HTTPError) and info.value.status == 400

    with pytest.raises(minisoup.Error) as info:
        server_handshake("POST", "HTTP/1.1", MessageHeaders(), None, None)
    assert isinstance(info.value, minisoup.HandshakeError) and info.value.status == 400

    frames = FrameParser(require_mask=True)
    frames.feed(build_frame(Opcode.TEXT, b"unmasked"))
    with pytest.raises(minisoup.Error) as info:
        frames.next_frame()
    assert isinstance(info.value, minisoup.ProtocolError) and info.value.close_code == 1002
