"""The base class of minisoup's public exceptions.

Every exception minisoup raises on purpose derives from :class:`Error`, so that a
script can catch them all with ``except minisoup.Error`` while the specific classes
keep saying what went wrong: ``HTTPError`` (a request that cannot be served),
``HandshakeError`` (a refused WebSocket handshake), ``ProtocolError`` (the peer broke
RFC 6455), ``WebsocketError`` and its ``ConnectionClosed`` (a WebSocket failed or is
closed). Programming errors (``TypeError``, ``ValueError`` for a bad argument) stay
the built-in ones. This module imports nothing, so every other module may use it.
"""

__all__ = ["Error"]


class Error(Exception):
    """Base class of every exception minisoup raises on purpose (``except minisoup.Error``)."""
