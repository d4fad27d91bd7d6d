"""minisoup.forms: form_decode, form_encode, form_decode_multipart (sans-I/O, SPEC §11)."""

import pytest

from minisoup.forms import form_decode, form_decode_multipart, form_encode
from minisoup.http import MessageHeaders, parse_query
from minisoup.multipart import Multipart


def test_form_decode_is_the_query_decoder_on_wellformed_input():
    text = "a=1&b=x+y&c=%C3%A9&a=2&=e&f=&g&h==i"
    assert form_decode(text) == parse_query(text) == {
        "a": "2", "b": "x y", "c": "é", "": "e", "f": "", "h": "=i"}


def test_form_decode_skips_only_the_bad_pairs():
    # libsoup drops a pair with a malformed escape; parse_query (for the request
    # line, where libsoup answers 400) refuses the whole query.
    assert form_decode("a=1&b=%zz&c=%&d=2&e=%FF&f=%C3") == {"a": "1", "d": "2"}


def test_form_decode_bytes_bodies():
    assert form_decode(b"name=J%C3%BCrgen&x=1") == {"name": "Jürgen", "x": "1"}
    assert form_decode(bytearray(b"a=1")) == {"a": "1"}
    assert form_decode(memoryview(b"a=1")) == {"a": "1"}
    # Raw UTF-8 is read as UTF-8; raw non-UTF-8 loses its pair only.
    assert form_decode("k=é".encode()) == {"k": "é"}
    assert form_decode(b"a=\xff&b=2&c=\xc3\xa9") == {"b": "2", "c": "é"}
    assert form_decode(b"") == {}


def test_form_decode_keeps_what_c_strings_cut():
    assert form_decode("a=x%00y") == {"a": "x\x00y"}


def test_form_encode_escapes_as_libsoup():
    every = "".join(chr(i) for i in range(1, 128))
    expected = ("k=%01%02%03%04%05%06%07%08%09%0A%0B%0C%0D%0E%0F%10%11%12%13%14%15%16"
                "%17%18%19%1A%1B%1C%1D%1E%1F+%21%22%23%24%25%26%27%28%29%2A%2B%2C-.%2F"
                "0123456789%3A%3B%3C%3D%3E%3F%40ABCDEFGHIJKLMNOPQRSTUVWXYZ%5B%5C%5D%5E_"
                "%60abcdefghijklmnopqrstuvwxyz%7B%7C%7D%7E%7F")
    assert form_encode({"k": every}) == expected  # measured on libsoup 3.2
    assert form_encode({"a b": "é ü"}) == "a+b=%C3%A9+%C3%BC"


def test_form_encode_order_pairs_and_round_trip():
    assert form_encode([("b", "1"), ("a", "2"), ("b", "3")]) == "b=1&a=2&b=3"
    assert form_encode({}) == ""
    data = {"x&y=z": "1+2%3", "": "", "ü": "\x00\r\n"}
    assert form_decode(form_encode(data)) == data
    with pytest.raises(TypeError):
        form_encode({"a": 1})


def _multipart(*parts, boundary="BOUND", close=b"--BOUND--\r\n"):
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + p + b"\r\n" for p in parts) + close
    headers = MessageHeaders([("Content-Type", "multipart/form-data; boundary=" + boundary)])
    return Multipart.new_from_message(headers, body)


def _field(disposition, body, content_type=None):
    head = b"Content-Disposition: " + disposition
    if content_type is not None:
        head += b"\r\nContent-Type: " + content_type
    return head + b"\r\n\r\n" + body


def test_form_decode_multipart_fields_and_file():
    mp = _multipart(_field(b'form-data; name="a"', b"1"),
                    _field(b'form-data; name="upload"; filename="x/y/report.pdf"', b"%PDF\r\n\0",
                           b"application/pdf; x=y"),
                    _field(b'form-data; name="b"', "é".encode()))
    fields, filename, content_type, data = form_decode_multipart(mp, "upload")
    assert fields == {"a": "1", "b": "é"}
    assert (filename, content_type, data) == ("report.pdf", "application/pdf", b"%PDF\r\n\0")


def test_form_decode_multipart_as_libsoup_skips_and_repeats():
    mp = _multipart(_field(b"FORM-DATA; NAME=a", b"1"),
                    _field(b'attachment; name="b"', b"2"),          # not form-data
                    _field(b'form-data; filename="q"', b"3"),      # no name
                    b"\r\nno headers at all",
                    _field(b'form-data; name="a"', b"4"),          # the last wins
                    _field(b'form-data; name=c; name=d', b"5"),    # the first param wins
                    _field(b'form-data; name="bad"', b"\xff"),     # not UTF-8: left out
                    _field(b'form-data; name="f"; filename="1"', b"A"),
                    _field(b'form-data; name="f"; filename*=UTF-8\'\'%E2%82%AC.txt; '
                           b'filename="plain.txt"', b"B", b"Image/PNG"))
    fields, filename, content_type, data = form_decode_multipart(mp, "f")
    assert fields == {"a": "4", "c": "5"}
    assert (filename, content_type, data) == ("€.txt", "Image/PNG", b"B")


def test_form_decode_multipart_without_file_or_control():
    mp = _multipart(_field(b'form-data; name="f"', b"x"))
    assert form_decode_multipart(mp, None) == ({"f": "x"}, None, None, None)
    assert form_decode_multipart(mp, "f") == ({}, None, None, b"x")
    assert form_decode_multipart(mp, "other") == ({"f": "x"}, None, None, None)


def test_form_decode_multipart_of_none_is_none():
    # So that decode(Multipart.new_from_message(...)) needs one check for a bad body.
    assert form_decode_multipart(None, "f") is None
    headers = MessageHeaders([("Content-Type", "text/plain")])
    assert form_decode_multipart(Multipart.new_from_message(headers, b"x"), "f") is None


def test_filename_quoting_as_sent():
    mp = _multipart(_field(b'form-data; name="f"; filename="a\\"b c;d.txt"', b""),)
    assert form_decode_multipart(mp, "f")[1] == 'a"b c;d.txt'
    mp = _multipart(_field(b'form-data; name="f"; filename="C:\\\\dir\\\\x.txt"', b""),)
    assert form_decode_multipart(mp, "f")[1] == "C:\\dir\\x.txt"
    mp = _multipart(_field('form-data; name="f"; filename="été.txt"'.encode(), b""),)
    assert form_decode_multipart(mp, "f")[1] == "été.txt"
    mp = _multipart(_field(b'form-data; name="f"; filename="../../etc/passwd"', b""),)
    assert form_decode_multipart(mp, "f")[1] == "passwd"


# --- End to end: a Server handler decoding uploads and forms, setting cookies ---

import http.client  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402

import minisoup  # noqa: E402
from conftest import running  # noqa: E402
from minisoup.cookies import Cookie, SameSitePolicy, cookies_from_request, cookies_to_response  # noqa: E402


def _form_handler(server, msg, path, query, user_data):
    headers = msg.get_request_headers()
    if headers.get_content_type()[0] == "application/x-www-form-urlencoded":
        result = {"fields": form_decode(msg.get_request_body())}
    else:
        decoded = form_decode_multipart(
            Multipart.new_from_message(headers, msg.get_request_body()), "file")
        if decoded is None:
            msg.set_status(400)
            msg.set_response("text/plain", b"not a multipart/form-data body\n")
            return
        fields, filename, content_type, data = decoded
        result = {"fields": fields, "filename": filename, "content_type": content_type,
                  "file": data.hex() if data is not None else None}
    result["cookies"] = [[c.get_name(), c.get_value()] for c in cookies_from_request(msg)]
    session = Cookie("session", "s\u00e9ance", path="/", max_age=3600)
    session.set_http_only(True)
    session.set_same_site_policy(SameSitePolicy.STRICT)
    cookies_to_response([session, Cookie("seen", "1")], msg)
    msg.set_status(200)
    msg.set_response("application/json", json.dumps(result).encode())


def _post(port, body, content_type, cookie=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        headers = {"Content-Type": content_type}
        if cookie:
            headers["Cookie"] = cookie
        conn.request("POST", "/form", body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read(), resp.msg.get_all("Set-Cookie")
    finally:
        conn.close()


@pytest.fixture
def form_port():
    server = minisoup.Server()
    server.add_handler("/form", _form_handler)
    with running(server) as port:
        yield port


def test_server_decodes_a_hand_built_upload_and_sets_cookies(form_port):
    data = bytes(range(256)) + b"\r\n--not-the-boundary\r\n"
    body = (b"ignored preamble\r\n"
            b"------xyz\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\n"
            b"Caf\xc3\xa9 menu\r\n"
            b"------xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"menu.bin\"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n"
            b"------xyz--\r\n")
    status, answer, set_cookies = _post(form_port, body, "multipart/form-data; boundary=----xyz",
                                        cookie="theme=dark; lang=fr")
    assert status == 200
    result = json.loads(answer)
    assert result["fields"] == {"title": "Café menu"}
    assert (result["filename"], result["content_type"]) == ("menu.bin", "application/octet-stream")
    assert bytes.fromhex(result["file"]) == data
    assert result["cookies"] == [["theme", "dark"], ["lang", "fr"]]
    # http.client reads header bytes as latin-1; the cookie travelled as UTF-8.
    session, seen = [h.encode("latin-1").decode("utf-8") for h in set_cookies]
    assert session.startswith("session=s\u00e9ance; expires=") and session.endswith(
        " GMT; path=/; SameSite=Strict; HttpOnly")
    assert seen == "seen=1; SameSite=Lax"


def test_server_decodes_an_urlencoded_body(form_port):
    body = form_encode([("q", "a&b=c d"), ("n", "\u20ac")]).encode()
    status, answer, set_cookies = _post(form_port, body + b"&bad=%zz",
                                        "application/x-www-form-urlencoded")
    assert status == 200
    assert json.loads(answer) == {"fields": {"q": "a&b=c d", "n": "\u20ac"}, "cookies": []}
    assert len(set_cookies) == 2


def test_server_answers_400_to_a_malformed_upload(form_port):
    body = b"--xyz\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\ntruncated"
    status, answer, _ = _post(form_port, body, "multipart/form-data; boundary=xyz")
    assert status == 400


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_server_decodes_a_curl_upload(form_port, tmp_path):
    upload = tmp_path / "r\u00e9sum\u00e9 1.txt"
    data = os.urandom(100000) + b"\r\n--"
    upload.write_bytes(data)
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "-F", "name=Zo\u00e9", "-F", "note=<-",
         "-F", "file=@%s;type=text/plain" % upload,
         "-b", "a=1; b=2", "-D", "-", "http://127.0.0.1:%d/form" % form_port],
        input=b"from stdin", stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
    assert out.returncode == 0, out.stderr
    head, _, answer = out.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    result = json.loads(answer)
    assert result["fields"] == {"name": "Zo\u00e9", "note": "from stdin"}
    assert result["filename"] == "r\u00e9sum\u00e9 1.txt"
    assert result["content_type"] == "text/plain"
    assert bytes.fromhex(result["file"]) == data
    assert result["cookies"] == [["a", "1"], ["b", "2"]]
    assert head.count(b"\r\nSet-Cookie: ") == 2
