"""minisoup: libsoup 3's SoupServer (HTTP/1.1 and WebSocket handlers) for Python, stdlib only.

Names follow libsoup with the ``soup_server_`` / ``soup_websocket_connection_`` prefix
dropped: ``Server.add_websocket_handler(path, origin, protocols, callback, user_data,
destroy)`` is ``soup_server_add_websocket_handler``. See README.md for the name map.
"""

from ._version import __version__
from .errors import Error
from .http import Encoding, HTTPError, MessageHeaders
from .message import ResponseBody, ServerMessage
from .frames import CloseCode, ProtocolError
from .websocket import (WebsocketConnection, WebsocketConnectionType,
                        WebsocketDataType, WebsocketError, WebsocketState)
from .extensions import WebsocketExtension
from .deflate import WebsocketExtensionDeflate
from .handshake import HandshakeError
from .server import DEFAULT_LIMITS, Server
from .client import ClientConnection, ConnectionClosed, websocket_connect

# libsoup's SoupWebsocketCloseCode, under its own name too.
WebsocketCloseCode = CloseCode

__all__ = [
    "Error", "Server", "ServerMessage", "MessageHeaders", "ResponseBody", "Encoding", "HTTPError",
    "WebsocketConnection", "WebsocketConnectionType", "WebsocketDataType", "WebsocketState",
    "WebsocketError", "WebsocketCloseCode", "CloseCode", "ProtocolError", "HandshakeError",
    "WebsocketExtension", "WebsocketExtensionDeflate", "websocket_connect", "ClientConnection",
    "ConnectionClosed", "DEFAULT_LIMITS", "__version__",
]
