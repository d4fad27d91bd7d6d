"""minisoup: libsoup 3's SoupServer (HTTP/1.1 and WebSocket handlers) for Python, stdlib only.

Names follow libsoup with the ``soup_server_`` / ``soup_websocket_connection_`` prefix
dropped: ``Server.add_websocket_handler(path, origin, protocols, callback, user_data,
destroy)`` is ``soup_server_add_websocket_handler``. See README.md for the name map.
"""

__version__ = "0.1.0"

from .http import Encoding, HTTPError, MessageHeaders  # noqa: E402
from .message import ResponseBody, ServerMessage  # noqa: E402
from .frames import CloseCode, ProtocolError  # noqa: E402
from .websocket import (WebsocketConnection, WebsocketConnectionType,  # noqa: E402
                        WebsocketDataType, WebsocketError, WebsocketState)
from .extensions import WebsocketExtension  # noqa: E402
from .deflate import WebsocketExtensionDeflate  # noqa: E402
from .handshake import HandshakeError  # noqa: E402
from .server import DEFAULT_LIMITS, Server  # noqa: E402
from .client import ClientConnection, ConnectionClosed, websocket_connect  # noqa: E402

# libsoup's SoupWebsocketCloseCode, under its own name too.
WebsocketCloseCode = CloseCode

__all__ = [
    "Server", "ServerMessage", "MessageHeaders", "ResponseBody", "Encoding", "HTTPError",
    "WebsocketConnection", "WebsocketConnectionType", "WebsocketDataType", "WebsocketState",
    "WebsocketError", "WebsocketCloseCode", "CloseCode", "ProtocolError", "HandshakeError",
    "WebsocketExtension", "WebsocketExtensionDeflate", "websocket_connect", "ClientConnection",
    "ConnectionClosed", "DEFAULT_LIMITS", "__version__",
]
