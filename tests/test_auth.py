"""Auth domains (SPEC 10): the sans-I/O parts, then Basic and Digest over real sockets,
with Python's urllib as the client, and across two pre-forked workers."""

import base64
import hashlib
import logging
import os
import re
import socket
import time
import types
import urllib.error
import urllib.request

import pytest

import minisoup
from minisoup.auth import (NonceCounts, NonceSigner, NonceState, digest_response,
                           parse_auth_params, parse_basic_credentials, quote_param)
from conftest import raw_connect, recv_until_closed, running
from serverproc import MinisoupProcess
import auth_apps

PASSWORD = "s3cret-PW"  # searched for in the logs: it must never appear there


# -- sans-I/O ------------------------------------------------------------------------------

def _basic(user, password):
    return "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode()).decode()


@pytest.mark.parametrize("header, expected", [
    (_basic("alice", "pw"), ("alice", "pw")),
    (_basic("alice", "a:b"), ("alice", "a:b")),            # the first colon splits
    (_basic("", ""), ("", "")),
    ("basic " + base64.b64encode(b"u:p").decode(), ("u", "p")),  # RFC 9110: any case
    ("Basic " + base64.b64encode("é:ü".encode()).decode(), ("é", "ü")),
    ("Basic " + base64.b64encode("é:ü".encode("latin-1")).decode(), ("é", "ü")),
    ("Basic !!!!", None),
    ("Basic " + base64.b64encode(b"nocolon").decode(), None),
    ("Basic " + base64.b64encode(b"a\x00b:c").decode(), None),
    ("Basic " + base64.b64encode(b"a:b\r\nX: y").decode(), None),
    ("Basic", None),
    ("Digest " + base64.b64encode(b"u:p").decode(), None),
    ("", None),
    (None, None),
])
def test_parse_basic_credentials(header, expected):
    assert parse_basic_credentials(header) == expected


@pytest.mark.parametrize("text, expected", [
    ('a="1", b=2', {"a": "1", "b": "2"}),
    ('A = "x\\"y\\\\z" ,, b="",', {"a": 'x"y\\z', "b": ""}),
    ('realm="a, b", nonce=n', {"realm": "a, b", "nonce": "n"}),
    ("", {}),
    ('a="1", a="2"', None),           # a repeated parameter
    ('a="1" b="2"', None),            # no comma
    ('a="unterminated', None),
    ('a', None),
    ('=x', None),
    ('a=x y', None),
    ('a="\x01"', None),
])
def test_parse_auth_params(text, expected):
    assert parse_auth_params(text) == expected


def test_quote_param_escapes():
    assert quote_param("realm", 'my "realm" \\') == 'realm="my \\"realm\\" \\\\"'


def test_digest_response_rfc2617_example():
    # RFC 2617 §3.5's worked example (MD5, qop=auth).
    hex_a1 = minisoup.AuthDomainDigest.encode_password("Mufasa", "testrealm@host.com",
                                                       "Circle Of Life")
    assert digest_response(hex_a1, "GET", "/dir/index.html", "dcd98b7102dd2f0e8b11d0f600bfb0c093",
                           "00000001", "0a4f113b") == "6629fae49393a05397450978507c4ef1"


def test_nonce_signer_valid_stale_invalid():
    signer = NonceSigner("r", lifetime=10.0)
    now = time.monotonic()
    nonce = signer.make(now)
    state, nonce_id, issued = signer.check(nonce, now + 1)
    assert state is NonceState.VALID and nonce_id
    assert signer.check(nonce, now + 11)[0] is NonceState.STALE
    assert signer.check(nonce, now - 1)[0] is NonceState.STALE  # from the future
    # Another secret, another realm, a changed byte, junk: not ours.
    assert NonceSigner("r", 10.0).check(nonce, now)[0] is NonceState.INVALID
    assert NonceSigner("other", 10.0, secret=signer._secret).check(nonce, now)[0] \
        is NonceState.INVALID
    tampered = ("B" if nonce[5] != "B" else "C").join((nonce[:5], nonce[6:]))
    for junk in (tampered, "", "x", "é" * 43, nonce + "AAAA", "%%%%"):
        assert signer.check(junk, now)[0] is NonceState.INVALID, junk
    assert signer.make(now) != signer.make(now)


def test_nonce_counts_refuse_replays_and_old_nonces_after_an_eviction():
    counts = NonceCounts(buckets=1)  # one bucket of 8 slots: evictions come soon
    life = 60000
    assert counts.advance(3, 0, 1, 0, life) is True         # issued at 0 ms: a nonce too
    assert counts.advance(7, 100, 1, 200, life) is True
    assert counts.advance(7, 100, 1, 200, life) is False   # replay
    assert counts.advance(7, 100, 3, 200, life) is True    # counts may skip
    assert counts.advance(7, 100, 2, 200, life) is False   # but never go back
    for nonce_id in range(8, 14):                           # fill the other 6 slots
        assert counts.advance(nonce_id, 100 + nonce_id, 1, 300, life) is True
    # A ninth live nonce pushes out the oldest (3, issued at 0 ms), a tenth the next (7).
    assert counts.advance(99, 500, 1, 600, life) is True
    assert counts.advance(3, 0, 2, 600, life) is None
    assert counts.advance(98, 500, 1, 600, life) is True
    # Nonce 7 is gone from the table: its counts cannot be vouched for any more.
    assert counts.advance(7, 100, 4, 600, life) is None
    assert counts.advance(1234, 90, 1, 600, life) is None   # issued before the watermark
    # An expired entry's slot is reused without raising the watermark.
    assert counts.advance(555, 70000, 1, 70000, life) is True


def test_nonce_counts_are_shared_with_forked_processes():
    counts = NonceCounts(buckets=4)
    pid = os.fork()
    if pid == 0:  # the child: what a pre-forked worker does
        os._exit(0 if counts.advance(42, 1, 5, 2, 60000) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert counts.advance(42, 1, 5, 2, 60000) is False  # the child's count is seen here
    assert counts.advance(42, 1, 6, 2, 60000) is True


# -- helpers over real sockets ------------------------------------------------------------------

def _request(port, method="GET", target="/", headers=(), body=b""):
    """One request on a new connection (closed after it); (status, headers dict of
    lists with lowercase names, body). Reads until the server closes."""
    sock = raw_connect(port)
    try:
        lines = ["%s %s HTTP/1.1" % (method, target), "Host: 127.0.0.1", "Connection: close"]
        lines += ["%s: %s" % item for item in headers]
        if body:
            lines.append("Content-Length: %d" % len(body))
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body)
        data = recv_until_closed(sock)
    finally:
        sock.close()
    return _parse_response(data)


def _parse_response(data):
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields.setdefault(name.strip().lower(), []).append(value.strip())
    return int(lines[0].split()[1]), fields, body


def _challenge_params(header):
    scheme, _, rest = header.partition(" ")
    return scheme, parse_auth_params(rest)


def _digest_header(challenge, user, password, method, uri, nc=1, cnonce="c0ffee",
                   realm=None):
    scheme, params = _challenge_params(challenge)
    assert scheme == "Digest"
    realm = params["realm"] if realm is None else realm
    hex_a1 = hashlib.md5(("%s:%s:%s" % (user, realm, password)).encode()).hexdigest()
    ncvalue = "%08x" % nc
    response = digest_response(hex_a1, method, uri, params["nonce"], ncvalue, cnonce)
    return ('Digest username="%s", realm="%s", nonce="%s", uri="%s", algorithm=MD5, '
            'response="%s", qop=auth, nc=%s, cnonce="%s"'
            % (user, realm, params["nonce"], uri, response, ncvalue, cnonce))


def _answer(server, msg, path, query, user_data):
    msg.set_status(200)
    msg.set_response("text/plain", "user=%s" % msg.get_auth_user())


def _basic_domain(realm="basic realm", users=None):
    users = {"alice": PASSWORD} if users is None else users
    return minisoup.AuthDomainBasic(
        realm, lambda domain, msg, username, password, data: users.get(username) == password)


def _digest_domain(realm="digest realm", nonce_lifetime=300.0):
    def lookup(domain, msg, username, data):
        if username != "bob":
            return None
        return minisoup.AuthDomainDigest.encode_password(username, realm, PASSWORD)
    return minisoup.AuthDomainDigest(realm, lookup, nonce_lifetime=nonce_lifetime)


def _server(*domains):
    server = minisoup.Server()
    server.add_handler(None, _answer)
    for domain in domains:
        server.add_auth_domain(domain)
    return server


def _opener(port, handler_class, user, password):
    manager = urllib.request.HTTPPasswordMgrWithDefaultRealm()
    manager.add_password(None, "http://127.0.0.1:%d/" % port, user, password)
    return urllib.request.build_opener(handler_class(manager))


# -- Basic and Digest with urllib ---------------------------------------------------------------

def test_urllib_basic_auth():
    domain = _basic_domain()
    domain.add_path("/private")
    with running(_server(domain)) as port:
        opener = _opener(port, urllib.request.HTTPBasicAuthHandler, "alice", PASSWORD)
        url = "http://127.0.0.1:%d/private/x" % port
        assert opener.open(url, timeout=5).read() == b"user=alice"
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(url, timeout=5)
        assert info.value.code == 401
        assert info.value.headers.get_all("WWW-Authenticate") == ['Basic realm="basic realm"']
        wrong = _opener(port, urllib.request.HTTPBasicAuthHandler, "alice", "nope")
        with pytest.raises(urllib.error.HTTPError) as info:
            wrong.open(url, timeout=5)
        assert info.value.code == 401
        # Not covered: no credentials needed, and no user.
        assert urllib.request.urlopen("http://127.0.0.1:%d/public" % port,
                                      timeout=5).read() == b"user=None"


def test_urllib_digest_auth():
    domain = _digest_domain()
    domain.add_path("/private")
    with running(_server(domain)) as port:
        opener = _opener(port, urllib.request.HTTPDigestAuthHandler, "bob", PASSWORD)
        for i in range(3):
            url = "http://127.0.0.1:%d/private/x%%20y?i=%d&q=a%%2Fb" % (port, i)
            assert opener.open(url, timeout=5).read() == b"user=bob"
        wrong = _opener(port, urllib.request.HTTPDigestAuthHandler, "bob", "nope")
        with pytest.raises(urllib.error.HTTPError) as info:
            wrong.open("http://127.0.0.1:%d/private/x" % port, timeout=5)
        assert info.value.code == 401


def test_digest_challenge_format():
    domain = _digest_domain(realm='a "quoted" realm')
    domain.add_path("/")
    with running(_server(domain)) as port:
        status, fields, body = _request(port, target="/x")
    assert status == 401 and body == b""
    [challenge] = fields["www-authenticate"]
    assert re.fullmatch(r'Digest realm="a \\"quoted\\" realm", nonce="[A-Za-z0-9_-]{43}", '
                        r'qop="auth", algorithm=MD5', challenge), challenge


def test_digest_replay_is_refused_and_counts_must_grow():
    domain = _digest_domain()
    domain.add_path("/d")
    with running(_server(domain)) as port:
        _, fields, _ = _request(port, target="/d")
        challenge = fields["www-authenticate"][0]
        auth1 = _digest_header(challenge, "bob", PASSWORD, "GET", "/d", nc=1)
        assert _request(port, target="/d", headers=[("Authorization", auth1)])[0] == 200
        status, fields, _ = _request(port, target="/d", headers=[("Authorization", auth1)])
        assert status == 401 and "stale" not in fields["www-authenticate"][0]
        auth3 = _digest_header(challenge, "bob", PASSWORD, "GET", "/d", nc=3)
        assert _request(port, target="/d", headers=[("Authorization", auth3)])[0] == 200
        auth2 = _digest_header(challenge, "bob", PASSWORD, "GET", "/d", nc=2)
        assert _request(port, target="/d", headers=[("Authorization", auth2)])[0] == 401
        # The response is bound to the method and the URI.
        auth4 = _digest_header(challenge, "bob", PASSWORD, "GET", "/d", nc=4)
        assert _request(port, "POST", "/d", [("Authorization", auth4)])[0] == 401
        assert _request(port, target="/d/other", headers=[("Authorization", auth4)])[0] == 401
        # A nonce this server never made, with a right response for it: refused.
        forged = challenge.replace(_challenge_params(challenge)[1]["nonce"], "A" * 43)
        auth = _digest_header(forged, "bob", PASSWORD, "GET", "/d")
        assert _request(port, target="/d", headers=[("Authorization", auth)])[0] == 401


def test_digest_stale_nonce_gets_stale_true():
    domain = _digest_domain(nonce_lifetime=0.3)
    domain.add_path("/d")
    with running(_server(domain)) as port:
        challenge = _request(port, target="/d")[1]["www-authenticate"][0]
        time.sleep(0.5)
        auth = _digest_header(challenge, "bob", PASSWORD, "GET", "/d")
        status, fields, _ = _request(port, target="/d", headers=[("Authorization", auth)])
        assert status == 401
        scheme, params = _challenge_params(fields["www-authenticate"][0])
        assert params["stale"] == "true" and params["nonce"] != _challenge_params(challenge)[1][
            "nonce"]
        # The fresh nonce works at once (what a client does on stale=true).
        auth = _digest_header(fields["www-authenticate"][0], "bob", PASSWORD, "GET", "/d")
        assert _request(port, target="/d", headers=[("Authorization", auth)])[0] == 200
        # A wrong password on an expired nonce is not "stale": the password is wrong too.
        time.sleep(0.5)
        auth = _digest_header(challenge, "bob", "wrong", "GET", "/d")
        status, fields, _ = _request(port, target="/d", headers=[("Authorization", auth)])
        assert status == 401 and "stale" not in fields["www-authenticate"][0]


# -- two pre-forked workers ------------------------------------------------------------------

def test_digest_nonce_valid_in_every_worker_and_replays_refused_in_all():
    with MinisoupProcess("auth_apps:digest", workers=2) as proc:
        proc.start(workers_ready=2)
        port = proc.port
        # urllib: one 401 and one retry per request, on new connections.
        opener = _opener(port, urllib.request.HTTPDigestAuthHandler, auth_apps.USER,
                         auth_apps.PASSWORD)
        for _ in range(4):
            worker, user = opener.open("http://127.0.0.1:%d/d" % port,
                                       timeout=5).read().decode().split()
            assert user == auth_apps.USER
        # One nonce, counts 1, 2, 3... each on a new connection: accepted by both workers.
        # Sequential short connections may all wake the same idle worker (the faster it
        # answers, the likelier), so an idle connection is held after each request: the
        # worker holding more than its share stops accepting and the other takes the next.
        challenge = _request(port, target="/d")[1]["www-authenticate"][0]
        workers = set()
        nc = 0
        held = []
        try:
            while len(workers) < 2:
                nc += 1
                assert nc < 200, "never reached both workers"
                auth = _digest_header(challenge, auth_apps.USER, auth_apps.PASSWORD, "GET",
                                      "/d", nc=nc)
                status, _, body = _request(port, target="/d", headers=[("Authorization", auth)])
                assert status == 200, body
                workers.add(body.split()[0])
                held.append(raw_connect(port))
        finally:
            for sock in held:
                sock.close()
        # Every one of those counts, replayed to whichever worker: refused.
        for old in range(1, nc + 1):
            auth = _digest_header(challenge, auth_apps.USER, auth_apps.PASSWORD, "GET", "/d",
                                  nc=old)
            assert _request(port, target="/d", headers=[("Authorization", auth)])[0] == 401
        assert PASSWORD not in proc.log_text()


# -- which requests are covered -----------------------------------------------------------

def test_paths_remove_path_and_filter():
    domain = _basic_domain()
    domain.add_path("/a")
    domain.remove_path("/a/open")
    seen = []

    def only_writes(domain_, msg, data):
        seen.append((data, msg.get_method()))
        return msg.get_method() != "GET"  # libsoup's advice: False only for what was checked

    domain.set_filter(only_writes, "filter-data")
    with running(_server(domain)) as port:
        assert _request(port, "POST", "/a/x")[0] == 401
        assert _request(port, "POST", "/ab")[0] == 401         # a plain string prefix
        assert _request(port, "GET", "/a/x")[0] == 200          # the filter lets it through
        assert _request(port, "POST", "/a/open/x")[0] == 200    # carved out
        assert _request(port, "POST", "/b")[0] == 200           # not covered
        assert _request(port, "POST", "/a/x", [("Authorization", _basic("alice", PASSWORD))]
                        )[2] == b"user=alice"
        domain.add_path("/a/open")                              # covered again
        assert _request(port, "POST", "/a/open/x")[0] == 401
    assert ("filter-data", "GET") in seen
    # covers() and accepts() as libsoup's, on a message.
    msg = types.SimpleNamespace(
        get_uri=lambda: types.SimpleNamespace(path="/a/x", query=""),
        get_method=lambda: "PUT",
        get_request_headers=lambda: minisoup.MessageHeaders(
            [("Authorization", _basic("alice", PASSWORD))]))
    assert domain.covers(msg) and domain.accepts(msg) == "alice"
    assert domain.get_realm() == "basic realm"


def test_generic_auth_callback_with_check_password():
    basic = minisoup.AuthDomainBasic("b")
    digest = minisoup.AuthDomainDigest("g")
    calls = []

    def generic(domain, msg, username, data):
        calls.append((type(domain).__name__, username, data))
        return username == "carol" and domain.check_password(msg, username, PASSWORD)

    for domain in (basic, digest):
        domain.set_generic_auth_callback(generic, "gd")
    basic.add_path("/b")
    digest.add_path("/g")
    with running(_server(basic, digest)) as port:
        assert _request(port, target="/b", headers=[("Authorization", _basic("carol", PASSWORD))]
                        )[2] == b"user=carol"
        assert _request(port, target="/b", headers=[("Authorization", _basic("carol", "x"))]
                        )[0] == 401
        challenge = _request(port, target="/g")[1]["www-authenticate"][0]
        auth = _digest_header(challenge, "carol", PASSWORD, "GET", "/g")
        response = _request(port, target="/g", headers=[("Authorization", auth)])
        assert response[2] == b"user=carol", response
        auth = _digest_header(challenge, "carol", "wrong", "GET", "/g", nc=2)
        assert _request(port, target="/g", headers=[("Authorization", auth)])[0] == 401
    assert ("AuthDomainBasic", "carol", "gd") in calls
    assert ("AuthDomainDigest", "carol", "gd") in calls


def test_one_challenge_per_covering_domain_first_acceptor_wins():
    basic = _basic_domain("one")
    digest = _digest_domain("two")
    for domain in (basic, digest):
        domain.add_path("/both")
    server = _server(basic, digest)
    with running(server) as port:
        status, fields, _ = _request(port, target="/both")
        assert status == 401
        assert [v.split()[0] for v in fields["www-authenticate"]] == ["Basic", "Digest"]
        assert fields["www-authenticate"][0] == 'Basic realm="one"'
        auth = _digest_header(fields["www-authenticate"][1], "bob", PASSWORD, "GET", "/both")
        assert _request(port, target="/both", headers=[("Authorization", auth)]
                        )[2] == b"user=bob"
        server.remove_auth_domain(basic)
        status, fields, _ = _request(port, target="/both")
        assert [v.split()[0] for v in fields["www-authenticate"]] == ["Digest"]
        server.remove_auth_domain(digest)
        assert _request(port, target="/both")[0] == 200


def test_401_before_the_early_handler_and_the_body():
    domain = _basic_domain()
    domain.add_path("/up")
    early = []
    server = _server(domain)
    server.add_early_handler("/up", lambda s, msg, path, q, d: early.append(msg.get_auth_user()))
    server.add_handler("/up", _answer)
    with running(server) as port:
        sock = raw_connect(port)
        try:
            sock.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                         b"Expect: 100-continue\r\n\r\n")
            data = recv_until_closed(sock)  # the server closes: the body was never read
        finally:
            sock.close()
        assert data.startswith(b"HTTP/1.1 401 ") and b"100 Continue" not in data
        assert b"Connection: close" in data
        assert early == []
        # Authenticated: the early handler runs and sees the user (libsoup skips it).
        status, _, body = _request(port, "POST", "/up",
                                   [("Authorization", _basic("alice", PASSWORD))], b"data")
        assert (status, body, early) == (200, b"user=alice", ["alice"])


def test_websocket_path_needs_credentials():
    domain = _basic_domain()
    domain.add_path("/ws")
    opened = []
    server = minisoup.Server()
    server.add_auth_domain(domain)
    server.add_websocket_handler(
        "/ws", None, None, lambda s, msg, path, conn, d: opened.append(msg.get_auth_user()))
    key = base64.b64encode(os.urandom(16)).decode()
    upgrade = [("Upgrade", "websocket"), ("Sec-WebSocket-Key", key),
               ("Sec-WebSocket-Version", "13")]
    with running(server) as port:
        sock = raw_connect(port)
        try:
            sock.sendall(("GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n%s\r\n\r\n"
                          % "\r\n".join("%s: %s" % h for h in upgrade)).encode())
            head = sock.recv(4096)
        finally:
            sock.close()
        assert head.startswith(b"HTTP/1.1 401 ") and b"WWW-Authenticate: Basic" in head
        sock = raw_connect(port)
        try:
            sock.sendall(("GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n%s\r\n"
                          "Authorization: %s\r\n\r\n"
                          % ("\r\n".join("%s: %s" % h for h in upgrade),
                             _basic("alice", PASSWORD))).encode())
            head = sock.recv(4096)
            assert head.startswith(b"HTTP/1.1 101 ")
        finally:
            sock.close()
    assert opened == ["alice"]


# -- hostile input, errors, logs ---------------------------------------------------------------

HOSTILE = [
    "", "Basic", "Basic ", "Basic ====", "Basic " + "A" * 5000, "Digest", "Digest ",
    'Digest username="bob"', 'Digest username=', 'Digest ,,,,', 'Digest username="bob',
    'Digest username="bob", username="bob"', 'Digest a=b=c', "Digest \\", "Bearer abc",
    'Digest username="bob", realm="digest realm", nonce="x", uri="/h", response="zz", '
    'qop=auth, nc=00000001, cnonce="c"',
    'Digest username="bob", realm="digest realm", nonce="x", uri="/h", response="00", '
    'qop=auth, nc=ffffffffff, cnonce="c"',
    'Digest username="bob", realm="digest realm", nonce="x", uri="/h", response="00", '
    'qop=auth, nc=00000000, cnonce="c"',
    'Digest username="bob", realm="digest realm", nonce="x", uri="%zz", response="00", '
    'qop=auth-int, nc=1, cnonce="c"',
    'Digest username="bob", realm="digest realm", nonce="\u00e9", uri="/h", response="00", '
    'qop=auth, nc=1, cnonce="c", algorithm=SHA-512',
    "Basic " + base64.b64encode(b"\xff\xfe:\x00").decode(),
]


def test_hostile_authorization_headers_get_401(caplog):
    basic, digest = _basic_domain(), _digest_domain()
    basic.add_path("/h")
    digest.add_path("/h")
    caplog.set_level(logging.DEBUG, logger="minisoup")
    with running(_server(basic, digest)) as port:
        for value in HOSTILE:
            status, fields, _ = _request(port, target="/h",
                                         headers=[("Authorization", value)] if value else [])
            assert status == 401, value
            assert len(fields["www-authenticate"]) == 2
        assert _request(port, target="/h", headers=[("Authorization", _basic("alice", PASSWORD))]
                        )[0] == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_credentials_never_logged(caplog):
    basic, digest = _basic_domain(), _digest_domain()
    basic.add_path("/b")
    digest.add_path("/d")

    def raising(domain, msg, username, password, data):
        raise RuntimeError("the user database is down")

    broken = minisoup.AuthDomainBasic("broken", raising)
    broken.add_path("/x-broken")
    caplog.set_level(logging.DEBUG)
    with running(_server(basic, digest, broken)) as port:
        _request(port, target="/b", headers=[("Authorization", _basic("alice", PASSWORD))])
        _request(port, target="/b", headers=[("Authorization", _basic("alice", PASSWORD + "x"))])
        challenge = _request(port, target="/d")[1]["www-authenticate"][0]
        auth = _digest_header(challenge, "bob", PASSWORD, "GET", "/d")
        _request(port, target="/d", headers=[("Authorization", auth)])
        _request(port, target="/d", headers=[("Authorization", auth)])  # a replay: logged
        status, _, _ = _request(port, target="/x-broken",
                                headers=[("Authorization", _basic("alice", PASSWORD))])
        assert status == 500  # an auth callback that raises: 500, the worker goes on
        assert _request(port, target="/b")[0] == 401
    text = caplog.text
    assert "the user database is down" in text and "replayed" in text
    encoded = _basic("alice", PASSWORD).split()[1]
    for secret in (PASSWORD, encoded, _challenge_params(auth)[1]["response"]):
        assert secret not in text


def test_domain_arguments_checked():
    with pytest.raises(ValueError):
        minisoup.AuthDomainBasic("bad\r\nrealm", None)
    with pytest.raises(ValueError):
        minisoup.AuthDomainDigest("r", None, nonce_lifetime=0)
    assert minisoup.AuthDomainDigest.encode_password("u", "r", "p") == hashlib.md5(
        b"u:r:p").hexdigest()
