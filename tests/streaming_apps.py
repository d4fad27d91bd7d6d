"""The app of tests/test_streaming.py, served by ``python -m minisoup`` in a child process
(so that its memory can be read in /proc without the test's own)."""

import hashlib
import json
import weakref

import minisoup

BLOCK = bytes(range(256)) * 256  # 64 KiB, the unit of the streamed download

_uploads = weakref.WeakKeyDictionary()  # message → [sha256, bytes seen]


def app(server):
    server.add_early_handler("/upload", upload_early)
    server.add_handler("/upload", upload_done)
    server.add_handler("/download", download)


def upload_early(server, msg, path, query, user_data):
    # Stream the body: a running hash, nothing kept.
    msg.get_request_body().set_accumulate(False)
    state = _uploads[msg] = [hashlib.sha256(), 0]
    msg.connect("got-chunk", on_chunk, state)


def on_chunk(msg, data, state):
    state[0].update(data)
    state[1] += len(data)


def upload_done(server, msg, path, query, user_data):
    state = _uploads.pop(msg)
    msg.set_status(200)
    msg.set_response("application/json", json.dumps({
        "sha256": state[0].hexdigest(), "length": state[1],
        "kept": len(msg.get_request_body())}))


def download(server, msg, path, query, user_data):
    """``?blocks=N``: N copies of BLOCK, chunked, the next one appended from wrote-chunk."""
    left = [int(query["blocks"])]
    msg.set_status(200)
    msg.get_response_headers().set_encoding(minisoup.Encoding.CHUNKED)
    body = msg.get_response_body()

    def next_block(m):
        if left[0]:
            left[0] -= 1
            body.append(BLOCK)
        else:
            body.complete()

    msg.connect("wrote-chunk", next_block)
    next_block(msg)
