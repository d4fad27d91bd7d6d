"""TLS for the server: ``https://`` and ``wss://`` on the worker's selectors loop.

Two parts:

- :class:`TlsConfig` holds what ``Server.set_tls_certificate``, ``set_tls_database`` and
  ``set_tls_auth_mode`` set, and the server-side ``ssl.SSLContext`` built from it
  (:func:`create_server_context`: TLS 1.2 minimum, ALPN ``http/1.1``, renegotiation off,
  the ciphers of ``ssl.create_default_context(Purpose.CLIENT_AUTH)``).
- :class:`TLSTransport` runs one server connection's TLS over a :class:`loop.SocketTransport`.

Why an ``ssl.SSLObject`` over a ``MemoryBIO`` pair rather than a non-blocking
``SSLSocket``: the socket I/O, its write buffer, corking, lazy pausing and lingering
close stay in ``SocketTransport``, unchanged and shared with plain TCP; TLS becomes a
layer that turns ciphertext into plaintext and back, with no socket in sight.
``SSLSocket`` would need a second copy of all that I/O code, with its own rules
(``SSLWantWriteError`` on a read during a handshake or key update, ``send`` taking
only whole records, ``pending()`` bytes that ``select`` never reports), and no way to
count what is really not on the wire yet. The price is one copy of each plaintext and
ciphertext through the BIOs, small next to the encryption itself.

The layering, one connection::

    app protocol (HTTPConnection, then WebsocketConnection)
         |  data_received / buffer_updated / eof_received / connection_lost
    TLSTransport       <- the app's Transport: write() encrypts, pause/resume, close
         |  SSLObject(incoming MemoryBIO, outgoing MemoryBIO)
    SocketTransport    <- TLSTransport is its protocol: ciphertext in, ciphertext out
         |
    socket

The handshake runs as bytes arrive (``do_handshake`` until it stops asking for more),
never blocking the loop. The app protocol hears nothing until it is done, so an
``HTTPConnection``'s header deadline, which starts at accept, also bounds the
handshake: a silent or trickled handshake is cut at ``request_timeout`` by the
server's sweep, like a silent plain-HTTP client.
"""

import enum
import logging
import ssl
from typing import Any, Dict, List, Optional, Sequence

from .interfaces import Buffer, StreamProtocol
from .loop import Loop, SocketTransport

__all__ = ["ListenOptions", "TlsAuthMode", "TlsConfig", "TLSTransport", "create_server_context"]

log = logging.getLogger("minisoup")

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
ALPN_PROTOCOLS = ("http/1.1",)
# Plaintext is encrypted WRITE_CHUNK bytes at a time (small parts joined up to it, big
# ones sliced), and the next piece only once the socket has taken the ciphertext of the
# last: the ciphertext in memory stays about one piece, in objects malloc reuses from
# its heap. Encrypting a 1 MiB message at once made a fresh 1 MiB join and a 1 MiB
# MemoryBIO.read() per message, which glibc takes from the kernel and gives back each
# time (~740 page faults per MiB echoed).
WRITE_CHUNK = 64 * 1024
# Handshake failures worth an INFO line (a refused client certificate); others, the
# noise of scanners and plain-HTTP clients, are logged at DEBUG.
_AUTH_FAILURE_REASONS = ("CERTIFICATE", "PEER_DID_NOT_RETURN", "UNKNOWN_CA")

# Handshake states of a TLSTransport.
_HANDSHAKE, _OPEN = 0, 1
# The peer's end of stream: not seen, seen (FIN or close_notify) but not told yet, told.
_EOF_NONE, _EOF_SEEN, _EOF_DELIVERED = 0, 1, 2


class ListenOptions(enum.IntFlag):
    """libsoup's SoupServerListenOptions: the optional second argument of ``listen*``."""

    HTTPS = 1        # serve TLS on this listener (a certificate must be set first)
    IPV4_ONLY = 2    # listen_local/listen_all: the IPv4 address only
    IPV6_ONLY = 4    # listen_local/listen_all: the IPv6 address only


class TlsAuthMode(enum.IntEnum):
    """GLib's GTlsAuthenticationMode: whether the server asks clients for a certificate."""

    NONE = 0         # no client certificate is asked for
    REQUESTED = 1    # asked for; a client without one is served, a bad one is refused
    REQUIRED = 2     # a client without a valid certificate is refused


_VERIFY_MODES = {TlsAuthMode.NONE: ssl.CERT_NONE, TlsAuthMode.REQUESTED: ssl.CERT_OPTIONAL,
                 TlsAuthMode.REQUIRED: ssl.CERT_REQUIRED}


def create_server_context(certfile: str, keyfile: Optional[str] = None,
                          password: Optional[Any] = None, cafile: Optional[str] = None,
                          auth_mode: TlsAuthMode = TlsAuthMode.NONE) -> ssl.SSLContext:
    """A server-side ``ssl.SSLContext`` with minisoup's defaults.

    ``certfile``/``keyfile``/``password`` as ``SSLContext.load_cert_chain`` (PEM; the
    key may be in ``certfile``). ``cafile``: PEM CA certificates that client
    certificates must chain to. The context starts from
    ``ssl.create_default_context(Purpose.CLIENT_AUTH)`` (its ciphers and options, and
    no system CA store for clients), then: TLS 1.2 minimum, ALPN ``http/1.1``,
    renegotiation off. Raises ``OSError`` or ``ssl.SSLError`` for unreadable or
    mismatched files.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = MINIMUM_VERSION
    # Client-initiated renegotiation is a DoS lever and has no use for HTTP/1.1.
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    context.set_alpn_protocols(list(ALPN_PROTOCOLS))
    context.load_cert_chain(certfile, keyfile, password)
    if cafile:
        context.load_verify_locations(cafile)
    context.verify_mode = _VERIFY_MODES[TlsAuthMode(auth_mode)]
    return context


class TlsConfig:
    """The server's TLS settings and the context in use (``None`` until a certificate).

    Either certificate files (rebuilt into a fresh context by each setter and by
    :meth:`reload`) or a context given by the caller (the database and auth mode are
    then applied to it). Errors surface at the setter's call.
    """

    def __init__(self) -> None:
        self.context: Optional[ssl.SSLContext] = None
        self.files: Optional[tuple] = None  # (certfile, keyfile, password)
        self.cafile: Optional[str] = None
        self.auth_mode = TlsAuthMode.NONE

    def set_certificate(self, certificate: Any, keyfile: Optional[str] = None,
                        password: Optional[Any] = None) -> None:
        """PEM paths, or a server-side ``ssl.SSLContext`` used as it is."""
        if isinstance(certificate, ssl.SSLContext):
            if keyfile is not None or password is not None:
                raise TypeError("keyfile and password go with a certificate file, "
                                "not with an SSLContext")
            # check_hostname too: before 3.10, create_default_context() (a client's)
            # is a PROTOCOL_TLS context, and only check_hostname tells it apart.
            if certificate.protocol == ssl.PROTOCOL_TLS_CLIENT or certificate.check_hostname:
                raise ValueError("a client-side SSLContext cannot serve: use "
                                 "ssl.PROTOCOL_TLS_SERVER or ssl.create_default_context("
                                 "ssl.Purpose.CLIENT_AUTH)")
            self.files = None
            self.context = certificate
            self._apply_to(certificate)
            return
        files = (certificate, keyfile, password)
        self.context = self._build(files)
        self.files = files

    def set_database(self, cafile: Optional[str]) -> None:
        """CA certificates (PEM) that client certificates must chain to."""
        if self.files is not None:
            self.context = self._build(self.files, cafile=cafile)
        elif self.context is not None and cafile:
            self.context.load_verify_locations(cafile)
        self.cafile = cafile

    def set_auth_mode(self, mode: TlsAuthMode) -> None:
        """Whether client certificates are asked for (:class:`TlsAuthMode`)."""
        mode = TlsAuthMode(mode)
        self.auth_mode = mode
        if self.context is not None:
            self.context.verify_mode = _VERIFY_MODES[mode]

    def reload(self) -> bool:
        """Read the certificate files again (SIGHUP). On failure the context in use is
        kept and the error logged. False if there are no files or they are broken."""
        if self.files is None:
            return False
        try:
            self.context = self._build(self.files)
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.error("TLS: cannot reload the certificate %s: %s; keeping the one in use",
                      self.files[0], exc)
            return False
        log.info("TLS: certificate %s reloaded", self.files[0])
        return True

    def _build(self, files: tuple, cafile: Any = False) -> ssl.SSLContext:
        return create_server_context(files[0], files[1], files[2],
                                     self.cafile if cafile is False else cafile,
                                     self.auth_mode)

    def _apply_to(self, context: ssl.SSLContext) -> None:
        if self.cafile:
            context.load_verify_locations(self.cafile)
        if self.auth_mode != TlsAuthMode.NONE:
            context.verify_mode = _VERIFY_MODES[self.auth_mode]


class TLSTransport:
    """A server-side TLS connection: the app protocol's ``Transport``, and the
    protocol of the ``SocketTransport`` that carries the ciphertext.

    Behaves as ``SocketTransport`` for the app: ``write`` never blocks;
    ``get_write_buffer_size`` counts what is not on the wire yet (plaintext waiting
    for the handshake, a cork or the socket, plus ciphertext the kernel has not
    taken; a big write is encrypted a piece at a time, as the socket takes it);
    ``cork_reads`` batches the writes made while handling one read into one TLS
    record; ``pause_reading`` stops delivering (and reading the socket), and
    ``resume_reading`` delivers what the TLS layer already holds before waiting for
    the socket; ``close`` sends close_notify after the buffered data, then closes;
    ``shutdown_write`` sends close_notify and FIN, and reading goes on; ``abort``
    drops everything. A peer that closes without close_notify is a normal end of
    stream (``eof_received``), as browsers commonly do.
    """

    __slots__ = ("_loop", "_peer", "_protocol", "_get_buffer", "_write_drained",
                 "_incoming", "_outgoing", "_sslobj", "_raw", "_state", "_pending",
                 "_pending_size", "_reading", "_delivering", "_drain_handle", "_eof",
                 "_closing", "_shut_wr", "_lost", "_corked", "_peer_cert", "_read_buffer",
                 "cork_reads", "__weakref__")

    def __init__(self, loop: Loop, sock: Any, protocol: StreamProtocol,
                 context: ssl.SSLContext, peer: Any = None) -> None:
        self._loop = loop
        self._peer = peer
        self._protocol: Optional[StreamProtocol] = protocol
        self._get_buffer = getattr(protocol, "get_buffer", None)
        self._write_drained = getattr(protocol, "write_drained", None)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._sslobj = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._state = _HANDSHAKE
        self._pending: List[Buffer] = []  # plaintext not yet encrypted
        self._pending_size = 0
        self._reading = True        # the app protocol's wish (pause/resume_reading)
        self._delivering = False    # inside _deliver: a nested call only sets flags
        self._drain_handle: Any = None
        self._eof = _EOF_NONE
        self._closing = False
        self._shut_wr = False       # close_notify sent: no more application data
        self._lost = False
        self._corked = False
        self._peer_cert: Optional[Dict[str, Any]] = None
        self._read_buffer = loop.read_buffer
        self.cork_reads = False
        self._raw = SocketTransport(loop, sock, self)

    # -- queries ------------------------------------------------------------------
    def get_peer_certificate(self) -> Optional[Dict[str, Any]]:
        """The client's verified certificate (``SSLSocket.getpeercert()``'s dict), or None."""
        return self._peer_cert

    def get_socket(self) -> Any:
        """The TCP socket under the TLS layer (to inspect it; the transport owns it)."""
        return self._raw.get_socket()

    def get_write_buffer_size(self) -> int:
        """Bytes not on the wire yet: plaintext waiting, plus ciphertext queued."""
        return self._pending_size + self._raw.get_write_buffer_size()

    def is_closing(self) -> bool:
        """True once ``close``/``abort`` was called or the connection was lost."""
        return self._closing or self._lost or self._raw.is_closing()

    def set_protocol(self, protocol: StreamProtocol) -> None:
        """Deliver the plaintext to ``protocol`` from now on (the WebSocket upgrade)."""
        self._protocol = protocol
        self._get_buffer = getattr(protocol, "get_buffer", None)
        self._write_drained = getattr(protocol, "write_drained", None)

    # -- the raw side: SocketTransport's protocol (ciphertext) ------------------------
    def get_buffer(self) -> memoryview:
        """SocketTransport: receive the ciphertext into the loop's buffer (no copy out
        of it: the BIO takes it from there). A fresh view, as the caller releases it."""
        return self._read_buffer[:]

    def buffer_updated(self, nbytes: int) -> None:
        """SocketTransport: ``nbytes`` of ciphertext are in the loop's buffer."""
        view = self._read_buffer[:nbytes]
        self._incoming.write(view)
        view.release()
        self._ciphertext_received()

    def data_received(self, data: bytes) -> None:
        """SocketTransport: ciphertext (unused while :meth:`get_buffer` gives a view)."""
        self._incoming.write(data)
        self._ciphertext_received()

    def eof_received(self) -> None:
        """SocketTransport: the peer sent FIN (with or without close_notify before it)."""
        if self._state == _HANDSHAKE:
            log.debug("TLS: %s closed the connection during the handshake", _addr(self._peer))
            self._raw.close()
            return
        if self._eof == _EOF_NONE:
            self._eof = _EOF_SEEN
        self._deliver()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        """SocketTransport: the socket is closed; tell the app protocol, once."""
        self._lost = True
        self._pending = []
        self._pending_size = 0
        if self._drain_handle is not None:
            self._drain_handle.cancel()
            self._drain_handle = None
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.connection_lost(exc)

    def write_drained(self) -> None:
        """SocketTransport: the ciphertext is all on the wire: encrypt the next piece of
        the plaintext waiting, or tell the app protocol that all is sent."""
        if self._lost:
            return
        if self._pending and self._state == _OPEN and not self._corked:
            self._encrypt_pending()
            if self._raw.get_write_buffer_size():
                return   # called again once the socket took it
        if not self._pending and self._write_drained is not None and not self._lost:
            self._write_drained()

    def _ciphertext_received(self) -> None:
        if self._state == _HANDSHAKE and not self._handshake():
            return
        if not self.cork_reads:
            self._deliver()
            return
        # Writes made while the app handles these bytes become one TLS record, sent
        # with one send (the WebSocket answers to a burst of small frames).
        self._corked = True
        try:
            self._deliver()
        finally:
            self._corked = False
            self.flush()

    def _handshake(self) -> bool:
        """Advance the handshake with what arrived; True once it is done."""
        try:
            self._sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self._push_out()
            return False
        except ssl.SSLError as exc:
            self._handshake_failed(exc)
            return False
        self._push_out()
        self._state = _OPEN
        if self._sslobj.context.verify_mode != ssl.CERT_NONE:
            self._peer_cert = self._sslobj.getpeercert() or None
        if self._pending and not self._corked:
            self._encrypt_pending()
        if not self._reading:
            self._raw.pause_reading()
        return not self._lost

    def _handshake_failed(self, exc: ssl.SSLError) -> None:
        # Expected from scanners, plain-HTTP clients and refused client certificates:
        # one line, no traceback. The alert OpenSSL produced is sent before closing.
        reason = getattr(exc, "reason", None) or str(exc)
        level = logging.INFO if (isinstance(exc, ssl.SSLCertVerificationError)
                                 or any(r in reason for r in _AUTH_FAILURE_REASONS)) \
            else logging.DEBUG
        log.log(level, "TLS handshake with %s failed: %s", _addr(self._peer), reason)
        self._push_out()
        self._raw.close()

    def _deliver(self) -> None:
        """Give the app the plaintext the TLS layer holds, while it wants to read.

        Reads until OpenSSL asks for more ciphertext: a record already decrypted
        (``pending()``) or still in the incoming BIO is never left waiting for the
        next packet. Then the peer's end of stream, if it came."""
        if self._delivering or self._state != _OPEN:
            return
        self._delivering = True
        try:
            exhausted = False
            while self._reading and not self._lost and not self._closing:
                # Nothing decrypted nor received left: done, without the
                # SSLWantReadError that asking OpenSSL would raise (~1 us each).
                if not self._has_plaintext() or self._read_plaintext() is None:
                    exhausted = True   # OpenSSL wants more ciphertext, or the stream ended
                    break
            if exhausted and self._eof == _EOF_SEEN:
                self._eof = _EOF_DELIVERED
                self._raw.pause_reading()
                self._protocol.eof_received()
        finally:
            self._delivering = False
        if self._outgoing.pending and not self._lost:
            self._push_out()  # a TLS 1.3 KeyUpdate answer, an alert

    def _read_plaintext(self) -> Optional[int]:
        """Read what the TLS layer has into the app's buffer (or the loop's) and
        deliver it. The count, or None when there is nothing (more) to read."""
        protocol = self._protocol
        target = self._get_buffer() if self._get_buffer is not None else None
        buf = self._read_buffer if target is None else target
        total = self._fill(buf)
        if total < 0:
            if target is not None:
                target.release()
            return None
        if target is not None:
            target.release()
            if total:
                protocol.buffer_updated(total)
        elif total:
            # A copy of exactly what arrived: protocols may keep it.
            protocol.data_received(self._read_buffer[:total].tobytes())
        return total if total else None

    def _fill(self, buf: memoryview) -> int:
        """Decrypt into ``buf`` as many records as fit; -1 after a fatal error."""
        sslobj = self._sslobj
        incoming = self._incoming
        size = len(buf)
        total = 0
        while total < size:
            view = buf[total:] if total else buf
            try:
                n = sslobj.read(size - total, view)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                n = 0
            except ssl.SSLError as exc:
                log.debug("TLS error from %s: %s", _addr(self._peer),
                          getattr(exc, "reason", None) or exc)
                self._push_out()
                self._raw.close()
                return -1
            finally:
                if total:
                    view.release()
            if not n:
                # close_notify: the end of the stream, as a FIN would be.
                if self._eof == _EOF_NONE:
                    self._eof = _EOF_SEEN
                break
            total += n
            if not (incoming.pending or sslobj.pending()):
                break   # asking for more would only raise SSLWantReadError
        return total

    def _has_plaintext(self) -> bool:
        # Records not yet read: decrypted (pending()), or ciphertext still in the BIO
        # (perhaps an incomplete record: then a read only asks for more).
        return bool(self._incoming.pending or self._sslobj.pending())

    def _schedule_deliver(self) -> None:
        if self._drain_handle is None and not self._delivering:
            self._drain_handle = self._loop.call_soon(self._scheduled_deliver)

    def _scheduled_deliver(self) -> None:
        self._drain_handle = None
        if not self._lost:
            self._deliver()

    # -- the app side: Transport (plaintext) ------------------------------------------
    def write(self, data: Buffer) -> None:
        """Queue ``data``: encrypted and sent at once unless the handshake is not done,
        writes are corked, or earlier data still waits for the socket. Ignored once
        closing."""
        if self._closing or self._lost or self._shut_wr or not data:
            return
        if self._state != _OPEN or self._corked or self._pending or len(data) > WRITE_CHUNK:
            self._pending.append(data)
            self._pending_size += len(data)
            if self._state == _OPEN and not self._corked:
                self._encrypt_pending()
            return
        self._encrypt(data)

    def write_last(self, data: Buffer) -> None:
        """:meth:`write`: the close_notify alert goes after these bytes anyway."""
        self.write(data)

    def writelines(self, parts: Sequence[Buffer]) -> None:
        """Queue several buffers, in order; small ones become one TLS record."""
        if self._closing or self._lost or self._shut_wr:
            return
        pending = self._pending
        for part in parts:
            if part:
                pending.append(part)
                self._pending_size += len(part)
        if self._state == _OPEN and not self._corked:
            self._encrypt_pending()

    def flush(self) -> None:
        """Encrypt and send what is corked now (the 101 before the WebSocket callback)."""
        if self._pending and self._state == _OPEN and not self._lost:
            self._encrypt_pending()
        if not self._lost:
            self._raw.flush()

    def _encrypt_pending(self, everything: bool = False) -> None:
        """Encrypt the queued plaintext a piece at a time, while the socket takes the
        ciphertext at once (or all of it: ``everything``, before close_notify). What
        is left waits for :meth:`write_drained`."""
        pending = self._pending
        raw = self._raw
        while pending and not self._lost and (everything or not raw.get_write_buffer_size()):
            first = pending[0]
            size = len(first)
            if size > WRITE_CHUNK:
                # A slice of a big buffer: no copy of it, and its ciphertext is one piece.
                view = first if isinstance(first, memoryview) else memoryview(first)
                piece: Buffer = view[:WRITE_CHUNK]
                pending[0] = view[WRITE_CHUNK:]
                size = WRITE_CHUNK
            else:
                # Whole parts up to WRITE_CHUNK: one write, so small ones share records.
                count = 1
                while count < len(pending) and size + len(pending[count]) <= WRITE_CHUNK:
                    size += len(pending[count])
                    count += 1
                piece = first if count == 1 else b"".join(pending[:count])
                del pending[:count]
            self._pending_size -= size
            self._encrypt(piece)

    def _encrypt(self, data: Buffer) -> None:
        try:
            # With a memory BIO, SSL_write takes everything at once (no partial writes).
            self._sslobj.write(data)
        except ssl.SSLError as exc:
            log.debug("TLS write to %s failed: %s", _addr(self._peer), exc)
            self._raw.abort()
            return
        self._push_out()

    def _push_out(self) -> None:
        if self._outgoing.pending:
            self._raw.write(self._outgoing.read())

    def pause_reading(self) -> None:
        """Stop delivering plaintext (and reading the socket) until :meth:`resume_reading`."""
        self._reading = False
        if self._state == _OPEN and not self._lost:
            self._raw.pause_reading()

    def resume_reading(self) -> None:
        """Deliver again: first what the TLS layer holds (on the next loop iteration,
        or by the delivery in progress), then what the socket brings."""
        if self._reading or self._lost or self._closing:
            return
        self._reading = True
        if self._state != _OPEN:
            return
        if self._eof == _EOF_NONE:
            self._raw.resume_reading()
        if self._eof == _EOF_SEEN or self._has_plaintext():
            self._schedule_deliver()

    def shutdown_write(self) -> None:
        """Send what is queued, then close_notify and FIN; reading goes on."""
        if self._shut_wr or self._lost:
            return
        if self._state == _OPEN:
            if self._pending:
                self._encrypt_pending(everything=True)
            self._send_close_notify()
        self._shut_wr = True
        self._raw.shutdown_write()

    def close(self) -> None:
        """Send what is queued and close_notify, then close; ``connection_lost`` follows."""
        if self._closing or self._lost:
            return
        if self._state == _OPEN:
            if self._pending:
                self._encrypt_pending(everything=True)
            self._send_close_notify()
        self._closing = True
        self._reading = False
        self._raw.close()

    def abort(self) -> None:
        """Close now, dropping anything still buffered; ``connection_lost`` follows."""
        self._closing = True
        self._raw.abort()

    def _send_close_notify(self) -> None:
        if self._shut_wr or self._lost:
            return
        self._shut_wr = True
        try:
            self._sslobj.unwrap()
        except ssl.SSLError:
            pass  # SSLWantReadError: sent, and the peer's own is not awaited
        self._push_out()


def _addr(peer: Any) -> str:
    if not peer:
        return "-"
    if isinstance(peer, tuple) and len(peer) >= 2:
        return "%s:%s" % (peer[0], peer[1])
    return str(peer)
