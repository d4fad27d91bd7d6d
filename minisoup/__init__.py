"""minisoup: libsoup 3's SoupServer (HTTP/1.1 and WebSocket handlers) for Python, stdlib only.

Names follow libsoup with the ``soup_server_`` / ``soup_websocket_connection_`` prefix
dropped: ``Server.add_websocket_handler(path, origin, protocols, callback, user_data,
destroy)`` is ``soup_server_add_websocket_handler``. See README.md for the name map.
"""

from ._version import __version__
from .errors import Error
from .http import Encoding, HTTPError, MessageHeaders
from .headers import (DateFormat, Expectation, date_time_new_from_http_string,
                      date_time_to_string, header_contains, header_parse_list,
                      header_parse_param_list, header_parse_param_list_strict,
                      header_parse_quality_list, header_parse_semi_param_list,
                      header_parse_semi_param_list_strict)
from .message import RequestBody, ResponseBody, ServerMessage
from .frames import CloseCode, ProtocolError
from .websocket import (WebsocketConnection, WebsocketConnectionType,
                        WebsocketDataType, WebsocketError, WebsocketState)
from .extensions import WebsocketExtension
from .deflate import WebsocketExtensionDeflate
from .handshake import HandshakeError
from .server import DEFAULT_LIMITS, Server
from .auth import AuthDomain, AuthDomainBasic, AuthDomainDigest
from .tls import ListenOptions, TlsAuthMode
from .client import ClientConnection, ConnectionClosed, websocket_connect
from .forms import (FORM_MIME_TYPE_MULTIPART, FORM_MIME_TYPE_URLENCODED, form_decode,
                    form_decode_multipart, form_encode)
from .multipart import Multipart
from .cookies import Cookie, SameSitePolicy, cookies_from_request, cookies_to_response

# libsoup's SoupWebsocketCloseCode, under its own name too.
WebsocketCloseCode = CloseCode

__all__ = [
    "Error", "Server", "ServerMessage", "MessageHeaders", "ResponseBody", "Encoding", "HTTPError",
    "RequestBody",
    "WebsocketConnection", "WebsocketConnectionType", "WebsocketDataType", "WebsocketState",
    "WebsocketError", "WebsocketCloseCode", "CloseCode", "ProtocolError", "HandshakeError",
    "WebsocketExtension", "WebsocketExtensionDeflate", "websocket_connect", "ClientConnection",
    "ConnectionClosed", "DEFAULT_LIMITS", "__version__",
    "form_decode", "form_encode", "form_decode_multipart", "FORM_MIME_TYPE_URLENCODED",
    "FORM_MIME_TYPE_MULTIPART", "Multipart", "Cookie", "SameSitePolicy", "cookies_from_request",
    "cookies_to_response", "ListenOptions", "TlsAuthMode",
    "AuthDomain", "AuthDomainBasic", "AuthDomainDigest",
    "header_parse_list", "header_parse_quality_list", "header_parse_param_list",
    "header_parse_param_list_strict", "header_parse_semi_param_list",
    "header_parse_semi_param_list_strict", "header_contains", "date_time_new_from_http_string",
    "date_time_to_string", "DateFormat", "Expectation",
]
