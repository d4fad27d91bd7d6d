"""HTML forms: libsoup's ``soup_form_decode``, ``soup_form_encode_*`` and
``soup_form_decode_multipart`` (sans-I/O).

``application/x-www-form-urlencoded`` is decoded by :func:`minisoup.http.parse_query`, the
decoder the server already uses for every request's query; :func:`form_decode` adds what
libsoup's function does on input a query never reaches it with: a pair that cannot be
decoded is left out instead of failing the whole form.
"""

from typing import Dict, Iterable, Mapping, Optional, Tuple, Union

from .http import HTTPError, parse_query
from .multipart import Multipart, parse_content_disposition, parse_media_type

FORM_MIME_TYPE_URLENCODED = "application/x-www-form-urlencoded"
FORM_MIME_TYPE_MULTIPART = "multipart/form-data"

# soup_form_encode leaves only these bytes (and the space, as "+") unescaped: ASCII letters
# and digits, "-", "_", "." — not "~", unlike RFC 3986's unreserved set (checked on libsoup 3).
_FORM_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
_FORM_BYTE = tuple(chr(b) if b in _FORM_SAFE else "+" if b == 0x20 else "%%%02X" % b
                   for b in range(256))

MultipartForm = Tuple[Dict[str, str], Optional[str], Optional[str], Optional[bytes]]


def _decode_pair(pair: str) -> Dict[str, str]:
    try:
        return parse_query(pair) or {}
    except HTTPError:
        return {}  # a malformed escape, or not UTF-8 once decoded: libsoup skips the pair


def form_decode(encoded_form: Union[str, bytes, bytearray, memoryview]) -> Dict[str, str]:
    """libsoup's ``soup_form_decode``: the name/value pairs of an urlencoded form.

    Takes a query string or an ``application/x-www-form-urlencoded`` body (``str`` or
    bytes-like). ``&`` separates pairs, ``+`` is a space, ``%XX`` a byte; the last of
    repeated names wins; a pair without ``=`` is skipped. Never raises on malformed
    input: a pair with a bad ``%`` escape is left out (as libsoup), and so is a pair whose
    name or value is not UTF-8 once decoded (libsoup hands such bytes on as they are,
    which a Python ``str`` cannot hold). Raw non-ASCII in a body is read as UTF-8.
    """
    if isinstance(encoded_form, (bytes, bytearray, memoryview)):
        raw = bytes(encoded_form)
        try:
            encoded_form = raw.decode("utf-8")
        except UnicodeDecodeError:
            # Only the pairs holding the bad bytes are lost, not the whole form.
            result: Dict[str, str] = {}
            for piece in raw.split(b"&"):
                try:
                    result.update(_decode_pair(piece.decode("utf-8")))
                except UnicodeDecodeError:
                    pass
            return result
    try:
        return parse_query(encoded_form) or {}
    except HTTPError:
        pass
    # Slow path, only for a form holding a bad pair: decode pair by pair.
    result = {}
    for pair in encoded_form.split("&"):
        result.update(_decode_pair(pair))
    return result


def _form_encode_text(text: str) -> str:
    return "".join([_FORM_BYTE[b] for b in text.encode("utf-8")])


def form_encode(form_data_set: Union[Mapping[str, str], Iterable[Tuple[str, str]]]) -> str:
    """libsoup's ``soup_form_encode_hash`` / ``soup_form_encode_datalist``: an
    ``application/x-www-form-urlencoded`` string of ``form_data_set``.

    Takes a mapping or an iterable of ``(name, value)`` pairs, encoded in that order
    (libsoup's hash table gives no order). Names and values are UTF-8 encoded; a space
    becomes ``+``; every byte but ASCII letters, digits, ``-``, ``_`` and ``.`` becomes
    ``%XX`` with upper-case hex, exactly as libsoup. Names and values must be ``str``.
    """
    items = form_data_set.items() if isinstance(form_data_set, Mapping) else form_data_set
    pairs = []
    for name, value in items:
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError("form names and values must be str, not %s=%s"
                            % (type(name).__name__, type(value).__name__))
        pairs.append(_form_encode_text(name) + "=" + _form_encode_text(value))
    return "&".join(pairs)


def form_decode_multipart(multipart: Optional[Multipart],
                          file_control_name: Optional[str]) -> Optional[MultipartForm]:
    """libsoup's ``soup_form_decode_multipart``: a ``multipart/form-data`` form with
    (at most) one file upload control.

    Returns ``(fields, filename, content_type, file_bytes)``, or ``None`` when
    ``multipart`` is ``None`` (so that ``form_decode_multipart(Multipart.new_from_message(
    headers, body), "file")`` is ``None`` for a body that is not multipart or is
    malformed: answer 400). ``fields`` maps every other control's name to its value as
    ``str``. The part named ``file_control_name`` (the last one, if repeated) gives
    ``filename`` (the ``filename`` parameter, ``filename*`` preferred, with any directory
    up to the last ``/`` removed, as libsoup; ``None`` if absent), ``content_type`` (its
    media type without parameters, ``None`` if absent) and ``file_bytes``; all three are
    ``None`` without such a part. As libsoup, parts whose Content-Disposition is not
    ``form-data`` with a ``name`` are skipped, and the last of repeated names wins. A field
    whose value is not UTF-8 is left out (its bytes are in ``multipart.get_part(i)``).
    """
    if multipart is None:
        return None
    fields: Dict[str, str] = {}
    filename: Optional[str] = None
    content_type: Optional[str] = None
    file_bytes: Optional[bytes] = None
    for i in range(multipart.get_length()):
        headers, body = multipart.get_part(i)
        disposition = parse_content_disposition(headers.get_one("Content-Disposition"))
        if disposition is None:
            continue
        kind, params = disposition
        name = params.get("name")
        if kind.lower() != "form-data" or name is None:
            continue
        if file_control_name is not None and name == file_control_name:
            filename = params.get("filename")
            content_type = parse_media_type(headers.get_one("Content-Type"))
            file_bytes = body
        else:
            try:
                fields[name] = body.decode("utf-8")
            except UnicodeDecodeError:
                fields.pop(name, None)  # a later bad value still replaces an earlier one
    return fields, filename, content_type, file_bytes
