"""Auth domains: libsoup's SoupAuthDomainBasic and SoupAuthDomainDigest (SPEC section 10).

A domain covers some request paths (``add_path``/``remove_path``, longest prefix wins,
as libsoup's path map) minus what its filter lets through. The server checks its
domains when a request's headers have been read, before the early handler
(:func:`authenticate`, as libsoup's ``got_headers``): the first covering domain that
accepts the ``Authorization`` header names the user (``msg.get_auth_user()``); a
covered request that none accepts is answered ``401`` with one ``WWW-Authenticate``
challenge per covering domain, and its body is never read.

Digest (RFC 7616, MD5 and ``qop=auth`` as libsoup) is stateless across pre-forked
workers: a nonce is ``issue time | random | HMAC-SHA-256(secret, realm | both)``, the
secret made when the domain is created (before the fork), so any worker can check a
nonce any other one issued. A nonce expires after ``nonce_lifetime`` seconds (then
``stale=true`` is offered, if the response was right otherwise). Each nonce's highest
nonce count is kept in a small table in shared memory (:class:`NonceCounts`), created
with the domain and so shared by every worker: a replayed count is refused whichever
worker it reaches.

The parsing and the digest arithmetic are pure functions (no socket, no clock of
their own); credentials are compared in constant time (``hmac.compare_digest``) and
never logged.
"""

import base64
import binascii
import fcntl
import hashlib
import hmac
import logging
import mmap
import os
import re
import struct
import tempfile
import threading
import time
import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .grammar import TCHAR, has_ctl
from .http import HTTPError, parse_target, quote_path

log = logging.getLogger("minisoup")

__all__ = ["AuthDomain", "AuthDomainBasic", "AuthDomainDigest", "NonceCounts", "authenticate",
           "parse_basic_credentials", "parse_auth_params", "digest_response", "quote_param"]

UNAUTHORIZED = 401
INTERNAL_SERVER_ERROR = 500
WWW_AUTHENTICATE = "WWW-Authenticate"
AUTHORIZATION = "Authorization"

DEFAULT_NONCE_LIFETIME = 300.0   # seconds a Digest nonce is good for (Apache's default)
NONCE_SECRET_SIZE = 32           # bytes of the HMAC key made per domain
NONCE_RANDOM_SIZE = 8            # bytes of randomness in each nonce
NONCE_TAG_SIZE = 16              # bytes of HMAC-SHA-256 kept in each nonce
MAX_NONCE_COUNT = 0xFFFFFFFF     # nc is 8 hex digits (RFC 7616 §3.4)
# The shared nonce-count table: NONCE_BUCKETS buckets of NONCE_SLOTS slots (~200 KiB),
# i.e. room for ~8,000 nonces in use within one nonce lifetime before the oldest are
# pushed out (a pushed-out nonce is then answered as stale: the client retries).
NONCE_BUCKETS = 1024
NONCE_SLOTS = 8

_SLOT = struct.Struct("=QQI4x")      # nonce id, issue time (ms), highest nc seen
_WATERMARK = struct.Struct("=Q")     # 1 + issue time (ms) of the newest nonce pushed out
_BUCKET_SIZE = _WATERMARK.size + NONCE_SLOTS * _SLOT.size


# -- the grammar, sans-I/O -------------------------------------------------------------

# RFC 9110 §11.2 auth-param: token BWS "=" BWS ( token / quoted-string ), comma separated.
_AUTH_PARAM = re.compile(
    r'[ \t]*([%s]+)[ \t]*=[ \t]*(?:([%s]+)|"((?:[^"\\\x00-\x08\x0a-\x1f\x7f]'
    r'|\\[^\x00-\x08\x0a-\x1f\x7f])*)")[ \t]*' % (TCHAR, TCHAR))
_QUOTED_PAIR = re.compile(r"\\(.)")
_LIST_SEPARATOR = re.compile(r"[ \t]*(?:,[ \t]*)*")
_SCHEME = re.compile(r"([%s]+)(?: +|$)" % TCHAR)
_NONCE_COUNT = re.compile(r"[0-9A-Fa-f]{1,8}")
_HEX_DIGEST = re.compile(r"[0-9a-f]+")


def split_scheme(header: str) -> Tuple[str, str]:
    """``("basic", "rest")`` of a credentials field: the auth-scheme, lowercased (RFC
    9110 §11.1: schemes are case-insensitive), and what follows it; ``("", "")`` if the
    value does not start with a scheme."""
    match = _SCHEME.match(header)
    if match is None:
        return "", ""
    return match.group(1).lower(), header[match.end():]


def parse_basic_credentials(header: Optional[str]) -> Optional[Tuple[str, str]]:
    """``(username, password)`` of a ``Basic`` credentials field (RFC 7617), or ``None``
    if it is not one or is malformed (not base64, no colon, a NUL or control character).
    The bytes are read as UTF-8, else as ISO-8859-1 (what older clients send)."""
    if not header:
        return None
    scheme, rest = split_scheme(header)
    if scheme != "basic":
        return None
    try:
        raw = base64.b64decode(rest.strip(" \t"), validate=True)
    except (binascii.Error, ValueError):
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("iso-8859-1")
    username, colon, password = text.partition(":")
    if not colon or has_ctl(text):
        return None
    return username, password


def parse_auth_params(text: str) -> Optional[Dict[str, str]]:
    """The auth-params of a challenge or credentials field (after the scheme) as a dict
    with lowercase names and unquoted values; ``None`` if malformed or a name repeats."""
    params: Dict[str, str] = {}
    pos = _LIST_SEPARATOR.match(text).end()
    end = len(text)
    while pos < end:
        match = _AUTH_PARAM.match(text, pos)
        if match is None:
            return None
        name = match.group(1).lower()
        if name in params:
            return None  # RFC 7616: each parameter at most once; two are an attack or a bug
        token, quoted = match.group(2), match.group(3)
        params[name] = token if token is not None else _QUOTED_PAIR.sub(r"\1", quoted)
        pos = match.end()
        if pos < end:
            if text[pos] != ",":
                return None
            pos = _LIST_SEPARATOR.match(text, pos).end()
    return params


def quote_param(name: str, value: str) -> str:
    """``name="value"`` with ``"`` and ``\\`` escaped (RFC 9110 §5.6.4), as libsoup's
    ``soup_header_g_string_append_param_quoted``."""
    return '%s="%s"' % (name, value.replace("\\", "\\\\").replace('"', '\\"'))


# RFC 7616 §3.4.2: the algorithms this server checks. libsoup's server knows MD5 only.
_HASHES: Dict[str, Callable[..., Any]] = {"MD5": hashlib.md5}


def encode_password(username: str, realm: str, password: str) -> str:
    """``H(username ":" realm ":" password)`` in hex (RFC 7616's ``A1`` hash; an
    Apache .htdigest entry): what a Digest auth callback returns."""
    return hashlib.md5(("%s:%s:%s" % (username, realm, password)).encode("utf-8")).hexdigest()


def digest_response(hex_a1: str, method: str, uri: str, nonce: str, nc: str, cnonce: str,
                    qop: str = "auth", algorithm: str = "MD5") -> str:
    """RFC 7616 §3.4.1 ``response`` for ``qop=auth``: ``KD(H(A1), nonce:nc:cnonce:qop:H(A2))``
    with ``A2 = method:uri``; ``hex_a1`` is :func:`encode_password`'s value."""
    hash_ = _HASHES[algorithm]
    hex_a2 = hash_(("%s:%s" % (method, uri)).encode("utf-8")).hexdigest()
    data = "%s:%s:%s:%s:%s:%s" % (hex_a1, nonce, nc, cnonce, qop, hex_a2)
    return hash_(data.encode("utf-8")).hexdigest()


# -- nonces ---------------------------------------------------------------------------

class NonceState:
    """What :meth:`NonceSigner.check` says of a nonce."""
    VALID = "valid"
    STALE = "stale"      # made by us, expired
    INVALID = "invalid"  # not made by us (or not by this server process and its workers)


class NonceSigner:
    """Makes and checks stateless Digest nonces: ``issued_ms | random | tag``, base64url,
    where ``tag = HMAC-SHA-256(secret, realm NUL issued_ms random)``, truncated.

    ``issued_ms`` is :meth:`elapsed_ms`: ``time.monotonic()`` (the system-wide clock
    every worker reads alike, immune to wall-clock steps) counted from the signer's
    creation, so that a nonce does not tell the host's uptime. ``secret`` is made here:
    create the signer before forking and every worker checks every other one's nonces.
    """

    __slots__ = ("_secret", "_realm", "_epoch", "lifetime")

    def __init__(self, realm: str, lifetime: float, secret: Optional[bytes] = None) -> None:
        self._secret = secret if secret is not None else os.urandom(NONCE_SECRET_SIZE)
        self._realm = realm.encode("utf-8") + b"\0"
        self._epoch = time.monotonic()
        self.lifetime = lifetime

    def elapsed_ms(self, now: float) -> int:
        """``now`` (``time.monotonic()``) in ms since the signer was made."""
        return int((now - self._epoch) * 1000)

    def _tag(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, self._realm + payload, hashlib.sha256).digest()[
            :NONCE_TAG_SIZE]

    def make(self, now: float) -> str:
        """A new nonce issued at ``now`` (``time.monotonic()``)."""
        payload = struct.pack(">Q", self.elapsed_ms(now)) + os.urandom(NONCE_RANDOM_SIZE)
        raw = payload + self._tag(payload)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def check(self, nonce: str, now: float) -> Tuple[str, int, int]:
        """``(NonceState, nonce id, issued_ms)`` of ``nonce`` at ``now``; the id (64 bits
        of its tag, which no one can choose) keys the nonce-count table."""
        size = 8 + NONCE_RANDOM_SIZE + NONCE_TAG_SIZE
        try:
            raw = base64.urlsafe_b64decode(nonce.encode("ascii") + b"=" * (-len(nonce) % 4))
        except (binascii.Error, ValueError, UnicodeEncodeError):
            return NonceState.INVALID, 0, 0
        if len(raw) != size:
            return NonceState.INVALID, 0, 0
        payload, tag = raw[:-NONCE_TAG_SIZE], raw[-NONCE_TAG_SIZE:]
        if not hmac.compare_digest(tag, self._tag(payload)):
            return NonceState.INVALID, 0, 0
        issued_ms = struct.unpack(">Q", payload[:8])[0]
        nonce_id = int.from_bytes(tag[:8], "big")
        age = self.elapsed_ms(now) - issued_ms
        if age < 0 or age > self.lifetime * 1000:
            return NonceState.STALE, nonce_id, issued_ms
        return NonceState.VALID, nonce_id, issued_ms


class NonceCounts:
    """The highest nonce count seen per nonce, in memory shared by every worker.

    A table of ``NONCE_BUCKETS`` buckets of ``NONCE_SLOTS`` slots in a shared mapping
    (a memfd, else an unlinked temporary file) made when the domain is created, i.e.
    before the fork. A bucket is updated under a POSIX record lock on its byte range
    (``fcntl.lockf``), which the kernel drops if a worker dies holding it, plus a thread
    lock (record locks do not exclude threads of one process).

    :meth:`advance` accepts a count only if it is above the last one recorded for that
    nonce. When a bucket is full of live nonces, the one issued first is pushed out and
    the bucket's *watermark* rises to its issue time: from then on a nonce of that bucket
    that is not in the table and was issued no later than the watermark may have been
    used already, so it is refused as stale (the client retries with a fresh nonce, as
    for an expired one). Replay protection is thus exact; a full table costs retries.
    """

    def __init__(self, buckets: int = NONCE_BUCKETS) -> None:
        self._buckets = buckets
        size = buckets * _BUCKET_SIZE
        self._fd = _shared_file(size)
        self._map = mmap.mmap(self._fd, size)
        self._thread_lock = threading.Lock()
        weakref.finalize(self, _close_shared, self._map, self._fd)

    def advance(self, nonce_id: int, issued_ms: int, nc: int, now_ms: int,
                lifetime_ms: int) -> Optional[bool]:
        """Record ``nc`` for the nonce: True if it is above the last count seen for it
        (accept), False if not (a replay), ``None`` if the table cannot vouch for the nonce
        (it may have been pushed out: answer stale)."""
        bucket = nonce_id % self._buckets
        offset = bucket * _BUCKET_SIZE
        with self._thread_lock:
            fcntl.lockf(self._fd, fcntl.LOCK_EX, _BUCKET_SIZE, offset)
            try:
                return self._advance(offset, nonce_id, issued_ms, nc, now_ms, lifetime_ms)
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN, _BUCKET_SIZE, offset)

    def _advance(self, offset: int, nonce_id: int, issued_ms: int, nc: int, now_ms: int,
                 lifetime_ms: int) -> Optional[bool]:
        table = self._map
        first = offset + _WATERMARK.size
        free = oldest = -1
        oldest_issued = 0
        for i in range(NONCE_SLOTS):
            slot_offset = first + i * _SLOT.size
            slot_id, slot_issued, slot_nc = _SLOT.unpack_from(table, slot_offset)
            if slot_nc and slot_id == nonce_id:
                if nc <= slot_nc:
                    return False
                _SLOT.pack_into(table, slot_offset, nonce_id, issued_ms, nc)
                return True
            if not slot_nc or slot_issued + lifetime_ms < now_ms:
                if free < 0:
                    free = slot_offset  # empty, or its nonce has expired anyway
            elif oldest < 0 or slot_issued < oldest_issued:
                oldest, oldest_issued = slot_offset, slot_issued
        # Stored plus one: 0 is "nothing pushed out yet" and a nonce issued at 0 ms counts.
        watermark = _WATERMARK.unpack_from(table, offset)[0]
        if issued_ms < watermark:
            return None
        if free < 0:
            _WATERMARK.pack_into(table, offset, max(watermark, oldest_issued + 1))
            free = oldest
            if issued_ms <= oldest_issued:
                return None  # this nonce is as old as the one pushed out
        _SLOT.pack_into(table, free, nonce_id, issued_ms, nc)
        return True


def _shared_file(size: int) -> int:
    # A file, not an anonymous mapping: lockf() needs one. memfd (Linux) needs no directory.
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        try:
            fd = memfd_create("minisoup-nonces", getattr(os, "MFD_CLOEXEC", 0))
        except OSError:
            fd = -1
    else:
        fd = -1
    if fd < 0:
        with tempfile.TemporaryFile() as tmp:
            fd = os.dup(tmp.fileno())
        os.set_inheritable(fd, False)  # forked workers share it; exec'ed programs do not
    os.ftruncate(fd, size)
    return fd


def _close_shared(table: mmap.mmap, fd: int) -> None:
    table.close()
    os.close(fd)


# -- the domains ------------------------------------------------------------------------

class AuthDomain:
    """What Basic and Digest domains share (libsoup's SoupAuthDomain): a realm, the paths
    covered, a filter, a generic auth callback. Not used directly: see
    :class:`AuthDomainBasic` and :class:`AuthDomainDigest`."""

    SCHEME = ""

    def __init__(self, realm: str) -> None:
        if not isinstance(realm, str) or has_ctl(realm):
            raise ValueError("realm must be a str without control characters")
        self._realm = realm
        self._paths: Dict[str, bool] = {}
        self._prefixes: List[str] = []  # longest first
        self._filter: Optional[Callable[..., Any]] = None
        self._filter_data: Any = None
        self._generic_callback: Optional[Callable[..., Any]] = None
        self._generic_data: Any = None

    def get_realm(self) -> str:
        """The realm named in this domain's challenges."""
        return self._realm

    # -- which requests need authentication ----------------------------------------------
    def add_path(self, path: str) -> None:
        """Require authentication for requests under ``path`` (a prefix, compared as plain
        strings, as handler paths; "" is "/"). Undoes a :meth:`remove_path` of ``path``."""
        self._set_path(path, True)

    def remove_path(self, path: str) -> None:
        """Require no authentication under ``path``, even inside a path added with
        :meth:`add_path` (as libsoup: this carves out a subtree, the longest prefix
        decides; a filter cannot bring authentication back there)."""
        self._set_path(path, False)

    def _set_path(self, path: str, covered: bool) -> None:
        key = path or "/"  # as libsoup: "" must not match "*"
        self._paths[key] = covered
        self._prefixes = sorted(self._paths, key=len, reverse=True)

    def set_filter(self, callback: Optional[Callable[..., Any]], user_data: Any = None) -> None:
        """``callback(domain, msg, user_data)`` → False: this request needs no
        authentication after all. Called only for requests under a covered path. Return
        True by default and False for the cases you have checked (libsoup's advice)."""
        self._filter, self._filter_data = callback, user_data

    def covers(self, msg: Any) -> bool:
        """True if ``msg`` must be authenticated by this domain (its paths and filter)."""
        path = msg.get_uri().path
        for prefix in self._prefixes:
            if path.startswith(prefix):
                if not self._paths[prefix]:
                    return False
                break
        else:
            return False
        if self._filter is not None and not self._filter(self, msg, self._filter_data):
            return False
        return True

    # -- checking credentials ---------------------------------------------------------
    def set_generic_auth_callback(self, callback: Optional[Callable[..., Any]],
                                  user_data: Any = None) -> None:
        """``callback(domain, msg, username, user_data)`` → True to accept; used when the
        domain has no auth callback of its own. It looks the password up and returns
        ``domain.check_password(msg, username, password)``."""
        self._generic_callback, self._generic_data = callback, user_data

    def try_generic_auth_callback(self, msg: Any, username: str) -> bool:
        """The generic callback's verdict on ``username`` (False without one)."""
        callback = self._generic_callback
        if callback is None:
            return False
        return bool(callback(self, msg, username, self._generic_data))

    def accepts(self, msg: Any) -> Optional[str]:
        """The user name ``msg``'s ``Authorization`` authenticates in this domain, or
        ``None``. (Whether the domain covers ``msg`` is :meth:`covers`'s question.)"""
        header = msg.get_request_headers().get_one(AUTHORIZATION)
        if header is None:
            return None
        return self._accepts(msg, header)

    def _accepts(self, msg: Any, header: str) -> Optional[str]:
        raise NotImplementedError

    def check_password(self, msg: Any, username: str, password: str) -> bool:
        """True if ``msg``'s credentials are ``username`` with ``password``."""
        raise NotImplementedError

    def challenge(self, msg: Any) -> None:
        """Answer ``msg`` with ``401`` and add this domain's ``WWW-Authenticate``."""
        msg.set_status(UNAUTHORIZED)
        msg.get_response_headers().append(WWW_AUTHENTICATE, self._challenge(msg))

    def _challenge(self, msg: Any) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return "<%s realm=%r>" % (type(self).__name__, self._realm)


class AuthDomainBasic(AuthDomain):
    """HTTP Basic authentication (RFC 7617; libsoup's SoupAuthDomainBasic).

    ``auth_callback(domain, msg, username, password, user_data)`` → True to accept. With
    ``auth_callback`` ``None`` the generic callback decides
    (:meth:`AuthDomain.set_generic_auth_callback`). Basic sends the password in clear:
    serve it over HTTPS.
    """

    SCHEME = "Basic"

    def __init__(self, realm: str, auth_callback: Optional[Callable[..., Any]] = None,
                 user_data: Any = None) -> None:
        super().__init__(realm)
        self._auth_callback = auth_callback
        self._auth_data = user_data

    def set_auth_callback(self, callback: Optional[Callable[..., Any]],
                          user_data: Any = None) -> None:
        """Replace the auth callback (``None``: use the generic one)."""
        self._auth_callback, self._auth_data = callback, user_data

    def _accepts(self, msg: Any, header: str) -> Optional[str]:
        credentials = parse_basic_credentials(header)
        if credentials is None:
            return None
        username, password = credentials
        if self._auth_callback is not None:
            ok = self._auth_callback(self, msg, username, password, self._auth_data)
        else:
            ok = self.try_generic_auth_callback(msg, username)
        return username if ok else None

    def check_password(self, msg: Any, username: str, password: str) -> bool:
        credentials = parse_basic_credentials(
            msg.get_request_headers().get_one(AUTHORIZATION))
        if credentials is None:
            return False
        # Both compared, in constant time, whatever the first gives.
        same_user = hmac.compare_digest(credentials[0].encode("utf-8"), username.encode("utf-8"))
        same_password = hmac.compare_digest(credentials[1].encode("utf-8"),
                                            password.encode("utf-8"))
        return same_user and same_password

    def _challenge(self, msg: Any) -> str:
        return "Basic " + quote_param("realm", self._realm)


class AuthDomainDigest(AuthDomain):
    """HTTP Digest authentication (RFC 7616, MD5, ``qop=auth``; libsoup's
    SoupAuthDomainDigest).

    ``auth_callback(domain, msg, username, user_data)`` → the user's stored
    :meth:`encode_password` (hex MD5 of ``username:realm:password``, an .htdigest
    entry), or ``None`` for an unknown user. With ``auth_callback`` ``None`` the generic
    callback decides. ``nonce_lifetime``: seconds a nonce is good for (then the client
    is told ``stale=true`` and retries with a new one).

    Nonces are checked without server state, in any worker (see the module docstring),
    and each nonce's count must grow from one request to the next: a replayed request
    is refused, whichever worker it reaches.
    """

    SCHEME = "Digest"

    def __init__(self, realm: str, auth_callback: Optional[Callable[..., Any]] = None,
                 user_data: Any = None, nonce_lifetime: float = DEFAULT_NONCE_LIFETIME) -> None:
        super().__init__(realm)
        if not nonce_lifetime > 0:
            raise ValueError("nonce_lifetime must be > 0")
        self._auth_callback = auth_callback
        self._auth_data = user_data
        self._signer = NonceSigner(realm, nonce_lifetime)
        self._counts = NonceCounts()
        # Messages whose nonce was stale but whose response was right: their challenge
        # says stale=true. Weak: a message is forgotten when it is done.
        self._stale: "weakref.WeakSet[Any]" = weakref.WeakSet()

    encode_password = staticmethod(encode_password)

    def set_auth_callback(self, callback: Optional[Callable[..., Any]],
                          user_data: Any = None) -> None:
        """Replace the auth callback (``None``: use the generic one)."""
        self._auth_callback, self._auth_data = callback, user_data

    def _accepts(self, msg: Any, header: str) -> Optional[str]:
        params = _digest_params(header)
        if params is None:
            return None
        username = params["username"]
        if self._auth_callback is not None:
            hex_a1 = self._auth_callback(self, msg, username, self._auth_data)
            ok = hex_a1 is not None and self._check(msg, params, username, hex_a1)
        else:
            ok = self.try_generic_auth_callback(msg, username)
        return username if ok else None

    def check_password(self, msg: Any, username: str, password: str) -> bool:
        params = _digest_params(msg.get_request_headers().get_one(AUTHORIZATION) or "")
        if params is None:
            return False
        return self._check(msg, params, username,
                           encode_password(username, self._realm, password))

    def _check(self, msg: Any, params: Dict[str, str], username: str, hex_a1: str) -> bool:
        """The whole RFC 7616 verification of ``params`` against ``hex_a1``: parameters,
        request URI, nonce signature and age, response, then the nonce count."""
        if not hmac.compare_digest(params["username"].encode("utf-8"),
                                   username.encode("utf-8")):
            return False
        if params["realm"] != self._realm or not _same_target(msg, params["uri"]):
            return False
        now = time.monotonic()
        state, nonce_id, issued_ms = self._signer.check(params["nonce"], now)
        if state is NonceState.INVALID:
            return False
        nc_text = params["nc"]
        expected = digest_response(str(hex_a1).lower(), msg.get_method(), params["uri"],
                                   params["nonce"], nc_text, params["cnonce"], "auth",
                                   params["algorithm"])
        if not hmac.compare_digest(expected.encode("ascii"),
                                   params["response"].lower().encode("ascii")):
            return False
        if state is NonceState.STALE:
            self._stale.add(msg)
            return False
        lifetime_ms = int(self._signer.lifetime * 1000)
        verdict = self._counts.advance(nonce_id, issued_ms, int(nc_text, 16),
                                       self._signer.elapsed_ms(now), lifetime_ms)
        if verdict is None:
            self._stale.add(msg)
            return False
        if not verdict:
            log.info("Digest: a nonce count was replayed (%s %s from %s); refused",
                     msg.get_method(), quote_path(msg.get_uri().path),
                     msg.get_remote_host() or "-")
        return verdict

    def _challenge(self, msg: Any) -> str:
        parts = ["Digest " + quote_param("realm", self._realm),
                 quote_param("nonce", self._signer.make(time.monotonic())),
                 'qop="auth"', "algorithm=MD5"]
        if msg in self._stale:
            parts.append("stale=true")
        return ", ".join(parts)


_DIGEST_REQUIRED = ("username", "realm", "nonce", "uri", "response", "nc", "cnonce")


def _digest_params(header: str) -> Optional[Dict[str, str]]:
    """The parameters of Digest credentials if they are complete and well-formed for
    ``qop=auth`` with a known algorithm (normalised into ``"algorithm"``), else ``None``."""
    scheme, rest = split_scheme(header)
    if scheme != "digest":
        return None
    params = parse_auth_params(rest)
    if params is None:
        return None
    for name in _DIGEST_REQUIRED:
        if name not in params:
            return None
    if params.get("qop") != "auth" or params.get("userhash", "false").lower() != "false":
        return None
    algorithm = params.get("algorithm", "MD5").upper()
    if algorithm not in _HASHES:
        return None
    params["algorithm"] = algorithm
    nc = params["nc"]
    if not _NONCE_COUNT.fullmatch(nc) or not 0 < int(nc, 16) <= MAX_NONCE_COUNT:
        return None
    if not _HEX_DIGEST.fullmatch(params["response"].lower()):
        return None
    return params


def _same_target(msg: Any, uri: str) -> bool:
    """True if the Digest ``uri`` parameter names ``msg``'s request target (RFC 7616
    §3.4.6): the same path once decoded as the server decodes it, the same query."""
    try:
        path, query, _host = parse_target(msg.get_method(), uri)
    except HTTPError:
        return False
    request = msg.get_uri()
    return path == request.path and (query or "") == (request.query or "")


# -- the server's side ------------------------------------------------------------------

def authenticate(domains: Sequence[AuthDomain], msg: Any) -> bool:
    """Check ``msg`` against ``domains`` as libsoup's server does when the headers are
    read. Returns True to go on (no domain covers it, or one accepted it: then
    ``msg.get_auth_user()`` names the user); False if ``msg`` was answered: ``401`` with
    each covering domain's challenge, or ``500`` if an auth callback raised."""
    try:
        covering = [domain for domain in domains if domain.covers(msg)]
        for domain in covering:
            user = domain.accepts(msg)
            if user is not None:
                msg.set_auth(domain, user)
                return True
        if not covering:
            return True
        for domain in covering:
            domain.challenge(msg)
    except Exception:
        # The traceback, never the header: it holds the credentials.
        log.exception("exception in an auth domain callback for %s %s",
                      msg.get_method(), quote_path(msg.get_uri().path))
        msg.cleanup_response()
        msg.set_status(INTERNAL_SERVER_ERROR)
        return False
    log.debug("authentication required for %s %s from %s", msg.get_method(),
              quote_path(msg.get_uri().path), msg.get_remote_host() or "-")
    return False
