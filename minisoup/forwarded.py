"""The client behind a reverse proxy: ``Forwarded`` (RFC 7239) and ``X-Forwarded-For``.

No I/O here. ``Server(trusted_proxies=[...])`` lists the addresses and networks of
the reverse proxies in front of the server (gunicorn's ``forwarded_allow_ips``).
For a connection from one of them, :meth:`TrustedProxies.client_address` reads the
client from the headers; for any other peer the headers are ignored (anyone can
send them).

**Which entry.** Each proxy appends the address it got the request from, so the
list reads client, proxy 1, proxy 2, ... and only its right end is written by
proxies we trust. The client is the right-most address that is not itself a
trusted proxy; everything left of it may be forged and is not looked at. If that
entry is not an IP address (``unknown``, an obfuscated ``_identifier``, garbage) or
more than ``MAX_FORWARDED_HOPS`` trusted proxies are named, the client is unknown
and the peer's own address is kept.

**Both headers.** A proxy that sets one of the two headers passes the other through
as the client sent it: whichever one we preferred, a client could forge it behind a
proxy that sets the other. So when both are present they must name the same
client; if they do not, neither is believed and the peer's address is kept.

Nothing here raises on a header value: hostile input (garbage, brackets, ports,
zone ids, huge lists) gives ``None``, "no better answer than the peer".
"""

import ipaddress
import re
from typing import Any, Iterable, List, Optional, Tuple, Union

__all__ = ["TrustedProxies", "parse_trusted_proxies", "parse_node", "forwarded_for",
           "x_forwarded_for", "MAX_FORWARDED_HOPS"]

MAX_FORWARDED_HOPS = 32     # entries looked at, from the right (a longer chain: unknown)
_CACHE_SIZE = 1024          # peer addresses whose trust is remembered

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

# RFC 7239 section 4: forwarded-pair = token "=" value; value = token / quoted-string.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PAIR = re.compile(r"[ \t]*(%s)=(%s|\"(?:[^\"\\]|\\.)*\")[ \t]*([;,]|$)" % (_TOKEN, _TOKEN))
_QUOTED_PAIR = re.compile(r"\\(.)")


def parse_trusted_proxies(items: Iterable[str]) -> Tuple[Network, ...]:
    """Addresses and networks (``"10.0.0.1"``, ``"10.0.0.0/8"``, ``"::1"``) → networks.

    ``ValueError`` naming the bad entry; ``TypeError`` if ``items`` is a single str
    (a list is expected: ``["10.0.0.1"]``)."""
    if isinstance(items, (str, bytes)):
        raise TypeError("trusted_proxies is a list of addresses, e.g. [%r]" % (items,))
    networks = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(str(item).strip(), strict=False))
        except ValueError:
            raise ValueError("trusted_proxies: %r is not an IP address or network "
                             "(e.g. 10.0.0.1 or 10.0.0.0/8)" % (item,))
    return tuple(networks)


def _address(text: str) -> Optional[Address]:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:10.0.0.1 from a dual-stack socket
    return mapped if mapped is not None else address


def parse_node(node: str) -> Optional[Tuple[str, int]]:
    """One node as the headers write it → ``(ip, port)`` (port 0 if none or obfuscated),
    or ``None`` if it is not an IP address.

    Accepts ``192.0.2.1``, ``192.0.2.1:8080``, ``[2001:db8::1]``, ``[2001:db8::1]:8080``
    and a bare ``2001:db8::1`` (X-Forwarded-For writes IPv6 so)."""
    node = node.strip()
    port_text = ""
    if node.startswith("["):
        host, sep, rest = node[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:]
    elif node.count(":") == 1:
        host, _, port_text = node.partition(":")
    else:
        host = node
    address = _address(host)
    if address is None:
        return None
    port = int(port_text) if port_text.isdigit() and len(port_text) <= 5 else 0
    return str(address), port if port <= 65535 else 0


def forwarded_for(value: str) -> Optional[List[str]]:
    """The ``for=`` nodes of a ``Forwarded`` value, left to right (one per element;
    ``""`` for an element without ``for``), or ``None`` if the value is malformed."""
    nodes: List[str] = []
    current = ""
    pos, end = 0, len(value)
    while pos < end:
        match = _PAIR.match(value, pos)
        if match is None or match.end() == pos:
            return None
        name, raw, sep = match.groups()
        if name.lower() == "for":
            current = (_QUOTED_PAIR.sub(r"\1", raw[1:-1]) if raw.startswith('"') else raw)
        if sep != ";":
            nodes.append(current)
            current = ""
        pos = match.end()
        if sep == "," and pos >= end:
            return None  # a trailing comma
    return nodes


def x_forwarded_for(value: str) -> List[str]:
    """The nodes of an ``X-Forwarded-For`` value, left to right (at most
    ``MAX_FORWARDED_HOPS + 1``: the left-most one then holds the rest, unparsed)."""
    return [node.strip() for node in value.rsplit(",", MAX_FORWARDED_HOPS)]


class TrustedProxies:
    """The ``trusted_proxies`` of a server: who may say who the client is.

    ``bool(proxies)`` is False for an empty list (the server then skips all this)."""

    def __init__(self, items: Iterable[str] = ()) -> None:
        self.networks = parse_trusted_proxies(items)
        self._cache: dict = {}

    def __bool__(self) -> bool:
        return bool(self.networks)

    def is_trusted(self, host: Any) -> bool:
        """True if ``host`` (an IP address string) is in a trusted network."""
        trusted = self._cache.get(host)
        if trusted is None:
            address = _address(host) if isinstance(host, str) else None
            trusted = address is not None and any(address in net for net in self.networks)
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()  # bounded; a proxy's few addresses come straight back
            self._cache[host] = trusted
        return trusted

    def _client(self, nodes: Optional[List[str]]) -> Optional[Tuple[str, int]]:
        if not nodes:
            return None
        for node in reversed(nodes[-MAX_FORWARDED_HOPS:]):
            parsed = parse_node(node)
            if parsed is None:
                return None  # unknown, obfuscated or garbage: the client is not known
            if not self.is_trusted(parsed[0]):
                return parsed
        if len(nodes) > MAX_FORWARDED_HOPS:
            return None
        return parse_node(nodes[0])  # every one a trusted proxy: the left-most is the client

    def client_address(self, remote: Any, forwarded: Optional[str],
                       x_forwarded: Optional[str]) -> Any:
        """The client's ``(ip, port)`` according to the headers (their values as
        received, several lines comma-joined; ``None`` when absent) if the peer
        ``remote`` is a trusted proxy and the headers name one; else ``remote``."""
        if not remote or not self.is_trusted(remote[0]):
            return remote
        if forwarded is None and x_forwarded is None:
            return remote
        via_forwarded = self._client(forwarded_for(forwarded)) if forwarded is not None else None
        via_x = self._client(x_forwarded_for(x_forwarded)) if x_forwarded is not None else None
        if forwarded is not None and x_forwarded is not None:
            # Both: one of them came from the client untouched (see the module docstring).
            if via_forwarded is None or via_x is None or via_forwarded[0] != via_x[0]:
                return remote
        client = via_forwarded if forwarded is not None else via_x
        return client if client is not None else remote
