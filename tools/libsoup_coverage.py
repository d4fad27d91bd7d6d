#!/usr/bin/python3
"""How much of libsoup 3's server-side API minisoup has, counted from GObject introspection.

Run with a Python that has PyGObject and the Soup-3.0 typelib (``/usr/bin/python3`` here):

    /usr/bin/python3 tools/libsoup_coverage.py

What is counted (the denominator), read from the installed Soup-3.0 typelib:

* each class below, once as a type (under its minisoup name), plus its methods,
  constructors and static functions (``Soup.<Class>.__info__.get_methods()``; ``new`` is
  present when the class's required ``__init__`` parameters are among the C constructor's):
  Server, ServerMessage, WebsocketConnection, WebsocketExtension, WebsocketExtensionDeflate,
  MessageHeaders, MessageBody, AuthDomain, AuthDomainBasic, AuthDomainDigest, Cookie, Multipart;
* their GObject signals (minisoup: the name is in the class's ``SIGNALS``, which is what
  ``connect(name, ...)`` accepts, see minisoup/signals.py);
* their GObject properties that have no ``get_``/``set_`` method of their own (a property with
  accessors would be counted twice), present as ``get_<p>``/``set_<p>`` or a constructor keyword;
  the ``*-data`` properties are the user_data halves of callback properties, not counted;
* the module functions ``soup_form_*``, ``soup_cookies_*``, ``soup_header_*``,
  ``soup_websocket_server_*`` and ``soup_date_time_*`` (the HTTP date helpers), looked up on the
  top-level ``minisoup`` package;
* the Soup enums and flags that appear in the arguments or return values of everything counted
  above (found by walking the signatures, so ``SoupStatus`` is out: ``set_status`` takes a
  ``guint``), plus ``SoupWebsocketCloseCode`` (the codes of ``close``/``get_close_code``): the
  type and each of its values.

Not counted (listed as ``excluded`` in the output, with the reason):
deprecated API; GObject/GBoxed boilerplate (``ref``, ``unref``, ``free``, ``copy``, ``equal``:
Python has references, ``copy`` and ``==``) and C-only helpers (GString builders, freeing
lists, ``SoupMemoryUse``, the ``GBytes`` variant of ``append``); API built on GIO streams that
minisoup replaces with sockets (``accept_iostream``, ``soup_websocket_connection_new``,
``get_io_stream``); client-only API (cookie-jar matching, ``Set-Cookie`` parsing,
``soup_cookies_*`` for requests/responses of a client, ``soup_websocket_client_*``); GError
domain enums (Python raises exceptions). minisoup's own additions (pub/sub, ``ping``, workers,
...) are not counted either: this measures libsoup's API only, of the installed version.
"""

import inspect
import os
import sys

import gi

gi.require_version("Soup", "3.0")
from gi.repository import Soup  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import minisoup  # noqa: E402

# libsoup class -> the minisoup class(es) that carry its API (README's "libsoup → minisoup").
CLASSES = [
    ("Server", ("Server",)),
    ("ServerMessage", ("ServerMessage",)),
    ("WebsocketConnection", ("WebsocketConnection",)),
    ("WebsocketExtension", ("WebsocketExtension",)),
    ("WebsocketExtensionDeflate", ("WebsocketExtensionDeflate",)),
    ("MessageHeaders", ("MessageHeaders",)),
    ("MessageBody", ("ResponseBody", "RequestBody")),  # response side / request side
    ("AuthDomain", ("AuthDomain",)),
    ("AuthDomainBasic", ("AuthDomainBasic",)),
    ("AuthDomainDigest", ("AuthDomainDigest",)),
    ("Cookie", ("Cookie",)),
    ("Multipart", ("Multipart",)),
]
MODULE_PREFIXES = ("form_", "cookies_", "header_", "websocket_server_", "date_time_")
EXTRA_ENUMS = ("WebsocketCloseCode",)
# Explicit renames from the README's map (C name without prefix -> minisoup name).
RENAMES = {"form_encode_hash": "form_encode", "form_encode_datalist": "form_encode",
           "ServerListenOptions": "ListenOptions"}

BOILERPLATE = {"ref", "unref", "free", "copy", "equal"}
EXCLUDED = {  # C symbol or type name -> reason
    "soup_server_accept_iostream": "GIO stream (minisoup: listen_socket)",
    "soup_websocket_connection_new": "GIO stream (minisoup makes connections itself)",
    "soup_websocket_connection_get_io_stream": "GIO stream (minisoup: sockets)",
    "soup_message_body_append_bytes": "GBytes variant of append (one bytes type in Python)",
    "soup_message_headers_free_ranges": "C memory management",
    "soup_header_free_param_list": "C memory management",
    "soup_header_g_string_append_param": "GString builder (C strings)",
    "soup_header_g_string_append_param_quoted": "GString builder (C strings)",
    "soup_cookie_applies_to_uri": "client-only (cookie jar)",
    "soup_cookie_domain_matches": "client-only (cookie jar)",
    "soup_cookie_parse": "client-only (parses Set-Cookie)",
    "soup_cookies_from_response": "client-only",
    "soup_cookies_to_request": "client-only",
    "soup_cookies_to_cookie_header": "client-only",
    "MemoryUse": "C memory ownership",
}


def excluded_reason(info):
    symbol = info.get_symbol() if hasattr(info, "get_symbol") else info.get_name()
    if info.is_deprecated():
        return "deprecated"
    if info.get_name() in BOILERPLATE:
        return "GObject/GBoxed boilerplate"
    return EXCLUDED.get(symbol)


def soup_enums(callable_info):
    """Soup enum/flags types in a function's or signal's arguments and return value."""
    types = [a.get_type() for a in callable_info.get_arguments()]
    types.append(callable_info.get_return_type())
    found = []
    for t in types:
        iface = t.get_interface() if t.get_tag_as_string() == "interface" else None
        if iface is not None and type(iface).__name__ == "EnumInfo" \
                and iface.get_namespace() == "Soup":
            found.append(iface.get_name())
    return found


def init_params(cls):
    try:
        return list(inspect.signature(cls.__init__).parameters.values())[1:]  # after self
    except (TypeError, ValueError):  # a builtin's __init__ (RequestBody is a bytes)
        return []


def has_kwarg(cls, name):
    return any(p.name == name for p in init_params(cls))


def constructible(cls, c_args):
    """``soup_x_new(args)`` is ``X(...)`` when X's required parameters are among args."""
    return all(p.name in c_args for p in init_params(cls)
               if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


class Tally:
    def __init__(self, title):
        self.title, self.present, self.missing, self.excluded = title, [], [], []

    def check(self, name, ok):
        (self.present if ok else self.missing).append(name)


def check_class(soup_name, mini_names, enums):
    info = getattr(Soup, soup_name).__info__
    tally = Tally("Soup%s -> %s" % (soup_name, " / ".join(mini_names)))
    targets = [getattr(minisoup, n) for n in mini_names if hasattr(minisoup, n)]
    tally.check("(type)", bool(targets))

    def on_target(attr):
        return any(hasattr(t, attr) for t in targets)

    methods = info.get_methods()
    for m in methods:
        reason = excluded_reason(m)
        label = m.get_symbol()
        if reason:
            tally.excluded.append("%s (%s)" % (label, reason))
            continue
        enums.extend(soup_enums(m))
        name = RENAMES.get(m.get_name(), m.get_name())
        if name == "new":  # the Python constructor: calling the class
            c_args = {a.get_name() for a in m.get_arguments()}
            tally.check(label, any(constructible(t, c_args) for t in targets))
        else:
            tally.check(label, on_target(name))
    if not hasattr(info, "get_signals"):  # boxed struct: no signals or properties
        return tally
    for s in info.get_signals():
        if s.is_deprecated():
            tally.excluded.append("signal %s (deprecated)" % s.get_name())
            continue
        enums.extend(soup_enums(s))
        tally.check("signal " + s.get_name(),
                    any(s.get_name() in getattr(t, "SIGNALS", ()) for t in targets))
    method_names = {m.get_name() for m in methods}
    for p in info.get_properties():
        attr = p.get_name().replace("-", "_")
        if ({"get_" + attr, "set_" + attr, "is_" + attr} & method_names
                or attr.endswith("_data")):
            continue  # counted through its accessor / a callback's user_data
        if p.is_deprecated():
            tally.excluded.append("property %s (deprecated)" % p.get_name())
            continue
        tally.check("property " + p.get_name(),
                    on_target("get_" + attr) or on_target("set_" + attr)
                    or any(has_kwarg(t, attr) for t in targets))
    return tally


def check_module_functions(enums):
    tally = Tally("module functions -> minisoup.*")
    seen = set()
    for info in gi.Repository.get_default().get_infos("Soup"):
        if type(info).__name__ != "FunctionInfo" or not info.get_name().startswith(MODULE_PREFIXES):
            continue
        symbol = info.get_symbol()
        if symbol in seen:
            continue
        seen.add(symbol)
        reason = excluded_reason(info)
        if reason:
            tally.excluded.append("%s (%s)" % (symbol, reason))
            continue
        enums.extend(soup_enums(info))
        tally.check(symbol, hasattr(minisoup, RENAMES.get(info.get_name(), info.get_name())))
    for prefix in ("soup_websocket_client_",):  # listed so the exclusion is visible
        for info in gi.Repository.get_default().get_infos("Soup"):
            if type(info).__name__ == "FunctionInfo" and info.get_symbol().startswith(prefix):
                tally.excluded.append("%s (client-only)" % info.get_symbol())
    return tally


def check_enums(enum_names):
    tally = Tally("enums and flags -> minisoup.*")
    for soup_name in sorted(set(enum_names)):
        if soup_name in EXCLUDED:
            tally.excluded.append("Soup%s (%s)" % (soup_name, EXCLUDED[soup_name]))
            continue
        mini = getattr(minisoup, RENAMES.get(soup_name, soup_name), None)
        tally.check("Soup" + soup_name, mini is not None)
        for v in getattr(Soup, soup_name).__info__.get_values():
            member = v.get_name().upper().rstrip("_")  # "continue_" -> CONTINUE
            tally.check("Soup%s.%s" % (soup_name, member), hasattr(mini, member))
    return tally


def main():
    print("libsoup %d.%d.%d (Soup-3.0 typelib via PyGObject %s); minisoup %s from %s"
          % (Soup.get_major_version(), Soup.get_minor_version(), Soup.get_micro_version(),
             ".".join(map(str, gi.version_info)), minisoup.__version__,
             os.path.dirname(minisoup.__file__)))
    print()
    enums = list(EXTRA_ENUMS)
    tallies = [check_class(soup_name, mini, enums) for soup_name, mini in CLASSES]
    tallies.append(check_module_functions(enums))
    tallies.append(check_enums(enums))
    present = total = 0
    for t in tallies:
        n = len(t.present) + len(t.missing)
        present += len(t.present)
        total += n
        print("%-58s %3d/%d" % (t.title, len(t.present), n))
        if t.missing:
            print("    missing:  " + ", ".join(t.missing))
        if t.excluded:
            print("    excluded: " + ", ".join(t.excluded))
    print()
    print("libsoup 3 server API symbols present in minisoup: %d of %d" % (present, total))
    return 0


if __name__ == "__main__":
    sys.exit(main())
