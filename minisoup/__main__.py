"""``python -m minisoup [APP] [--bind HOST:PORT ...] [--workers N] [--log-level LEVEL]
[--certfile FILE [--keyfile FILE] [--ca-certs FILE [--client-cert optional|required]]]
[--broker redis://HOST:PORT[/DB]] [--trusted-proxies IP[/BITS],...]``.

``APP`` is ``module:function``; the function is called with the :class:`Server`
before the workers are forked, to register handlers. Without ``APP``, the built-in
demo (:mod:`minisoup.demo`) is served. ``--post-fork module:function`` is called with
the ``Server`` in each worker after the fork, before it serves (the server's
``worker-started`` signal).
"""

import argparse
import importlib
import logging
import os
import ssl
import sys
from typing import Any, Callable, List, Optional, Tuple

from ._version import __version__
from .errors import Error
from .forwarded import parse_trusted_proxies
from .prefork import install_log_tag
from .resp import parse_redis_url
from .server import DEFAULT_LIMITS, Server
from .tls import ListenOptions, TlsAuthMode

log = logging.getLogger("minisoup")

DEFAULT_BIND = "127.0.0.1:8080"
LOG_FORMAT = "%(asctime)s [%(worker)s] %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
CLIENT_CERT_MODES = {"none": TlsAuthMode.NONE, "optional": TlsAuthMode.REQUESTED,
                     "required": TlsAuthMode.REQUIRED}


class AppError(Error):
    """``APP`` cannot be loaded (bad syntax, import failure, missing or non-callable name)."""


def parse_bind(text: str) -> Tuple[str, int]:
    """``HOST:PORT``, ``[IPV6]:PORT`` or ``:PORT`` (all IPv4 interfaces) → ``(host, port)``."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":") or not host:
            raise argparse.ArgumentTypeError("expected [IPV6]:PORT, got %r" % text)
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise argparse.ArgumentTypeError("expected HOST:PORT, got %r" % text)
        if ":" in host:
            raise argparse.ArgumentTypeError(
                "put an IPv6 address in brackets, e.g. [::1]:8080 (got %r)" % text)
        host = host or "0.0.0.0"
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise argparse.ArgumentTypeError("bad port in %r (0-65535; 0 picks a free one)" % text)
    return host, int(port_text)


def _non_negative(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError("not a number: %r" % text)
        if value < 0:
            raise argparse.ArgumentTypeError("must be >= 0: %r" % text)
        return value
    return parse


def _broker_url(text: str) -> str:
    try:
        parse_redis_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc))
    return text


def _trusted_proxies(text: str) -> Tuple[str, ...]:
    items = tuple(item.strip() for item in text.split(",") if item.strip())
    try:
        parse_trusted_proxies(items)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc))
    return items


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser (every option documented in ``--help``)."""
    cpus = os.cpu_count() or 1
    parser = argparse.ArgumentParser(
        prog="python -m minisoup",
        description="Serve minisoup handlers: HTTP/1.1 and WebSocket, pre-forked workers.",
        epilog="Signals to the master: TERM/INT graceful stop, QUIT immediate stop, "
               "TTIN one worker more, TTOU one worker less, HUP replace the workers "
               "one at a time. Without APP: the demo (a page at / talking to a "
               "WebSocket echo at /echo; /worker names the worker that answered).")
    parser.add_argument("app", nargs="?", metavar="APP",
                        help="MODULE:FUNCTION called with the Server before the workers "
                             "are forked, to register handlers (default: the built-in demo)")
    parser.add_argument("-b", "--bind", action="append", type=parse_bind, metavar="HOST:PORT",
                        help="address to listen on; repeat for several; IPv6 as [::1]:8080; "
                             "port 0 picks a free port (default: %s)" % DEFAULT_BIND)
    parser.add_argument("-w", "--workers", type=_non_negative(int), default=cpus, metavar="N",
                        help="worker processes to fork; 0 serves in this process without "
                             "forking (default: the number of CPUs, %d)" % cpus)
    parser.add_argument("--log-level", default="info", type=str.lower, choices=LOG_LEVELS,
                        metavar="LEVEL",
                        help="one of %s (default: info; info logs one access line per "
                             "request)" % ", ".join(LOG_LEVELS))
    parser.add_argument("--graceful-timeout", type=_non_negative(float), metavar="SECONDS",
                        default=DEFAULT_LIMITS["graceful_timeout"],
                        help="how long a graceful stop may take before connections are "
                             "cut (default: %(default)g)")
    parser.add_argument("--worker-timeout", type=_non_negative(float), metavar="SECONDS",
                        default=DEFAULT_LIMITS["worker_timeout"],
                        help="a worker silent (no heartbeat) this long is killed and "
                             "replaced; 0 never (default: %(default)g)")
    parser.add_argument("--max-connections", type=_non_negative(int), metavar="N",
                        default=DEFAULT_LIMITS["max_connections"],
                        help="connections per worker above which it stops accepting "
                             "(default: %(default)d)")
    parser.add_argument("--broker", metavar="redis://HOST:PORT[/DB]", type=_broker_url,
                        help="publish/subscribe across servers (hosts) through this Redis "
                             "server; each worker keeps its own connections to it")
    parser.add_argument("--trusted-proxies", metavar="IP[/BITS],...", type=_trusted_proxies,
                        default=(),
                        help="comma-separated addresses or networks of reverse proxies "
                             "whose Forwarded / X-Forwarded-For headers name the client "
                             "(default: none, the headers are ignored)")
    parser.add_argument("--post-fork", metavar="MODULE:FUNCTION",
                        help="called with the Server in each worker after the fork, before "
                             "it serves (per-process setup; server.get_worker_id() says "
                             "which worker); an exception stops that worker")
    tls = parser.add_argument_group("TLS (every --bind serves https:// and wss://; SIGHUP "
                                    "re-reads the files as it replaces the workers)")
    tls.add_argument("--certfile", metavar="FILE",
                     help="the server's certificate chain (PEM); its key too unless --keyfile")
    tls.add_argument("--keyfile", metavar="FILE", help="the certificate's private key (PEM)")
    tls.add_argument("--ca-certs", metavar="FILE",
                     help="CA certificates (PEM) that client certificates must chain to")
    tls.add_argument("--client-cert", choices=sorted(CLIENT_CERT_MODES), default=None,
                     help="ask clients for a certificate: none, optional (a bad one is "
                          "refused), required (default with --ca-certs: required)")
    parser.add_argument("--print-uris", action="store_true",
                        help="print each listening URI (real port, after port 0) on "
                             "stdout once bound, one per line, for scripts")
    parser.add_argument("--version", action="version", version="minisoup " + __version__)
    return parser


def load_app(spec: str, what: str = "APP") -> Callable[[Server], Any]:
    """Import ``module:function`` (the function may be a dotted attribute path).

    ``what`` names the option in error messages (``APP``, ``--post-fork``)."""
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise AppError("%s must be MODULE:FUNCTION, e.g. myapp:setup (got %r)" % (what, spec))
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does, for the console script too
    try:
        target = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise AppError("cannot import %s module %r: no module named %r"
                           % (what, module_name, exc.name))
        log.exception("importing %s module %r failed", what, module_name)
        raise AppError("importing %s module %r failed: %s" % (what, module_name, exc))
    except Exception as exc:
        log.exception("importing %s module %r failed", what, module_name)
        raise AppError("importing %s module %r failed: %s: %s"
                       % (what, module_name, type(exc).__name__, exc))
    for name in attr_path.split("."):
        try:
            target = getattr(target, name)
        except AttributeError:
            raise AppError("%s module %r has no attribute %r" % (what, module_name, attr_path))
    if not callable(target):
        raise AppError("%s %r is not callable" % (what, spec))
    return target


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit status (0 after a normal stop)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.keyfile or args.ca_certs or args.client_cert) and not args.certfile:
        parser.error("--keyfile, --ca-certs and --client-cert need --certfile")
    if args.client_cert in ("optional", "required") and not args.ca_certs:
        parser.error("--client-cert %s needs --ca-certs" % args.client_cert)
    install_log_tag()
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    server = Server(graceful_timeout=args.graceful_timeout, worker_timeout=args.worker_timeout,
                    max_connections=args.max_connections, broker=args.broker,
                    trusted_proxies=args.trusted_proxies)
    try:
        if args.app:
            register = load_app(args.app)
        else:
            from .demo import register
        post_fork = load_app(args.post_fork, "--post-fork") if args.post_fork else None
    except AppError as exc:
        print("minisoup: error: %s" % exc, file=sys.stderr)
        return EXIT_ERROR
    try:
        register(server)
    except Exception:
        log.exception("APP %s raised while registering handlers", args.app)
        print("minisoup: error: APP %s raised while registering handlers (traceback above)"
              % args.app, file=sys.stderr)
        return EXIT_ERROR
    if post_fork is not None:
        server.connect("worker-started", post_fork)
    options = 0
    if args.certfile:
        try:
            server.set_tls_certificate(args.certfile, args.keyfile)
            if args.ca_certs:
                server.set_tls_database(args.ca_certs)
                server.set_tls_auth_mode(CLIENT_CERT_MODES[args.client_cert or "required"])
        except (OSError, ssl.SSLError, ValueError) as exc:
            print("minisoup: error: cannot load the TLS certificate: %s" % exc, file=sys.stderr)
            return EXIT_ERROR
        options = ListenOptions.HTTPS
    for host, port in args.bind or [parse_bind(DEFAULT_BIND)]:
        try:
            server.listen((host, port), options)
        except OSError as exc:
            print("minisoup: error: cannot listen on %s:%d: %s" % (host, port, exc.strerror or exc),
                  file=sys.stderr)
            return EXIT_ERROR
    for uri in server.get_uris():
        log.info("listening on %s", uri)
        if args.print_uris:
            print(uri, flush=True)
    try:
        server.run(workers=args.workers)
    finally:
        server.disconnect()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
