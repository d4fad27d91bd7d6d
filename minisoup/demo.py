"""The built-in demo app of ``python -m minisoup``: a page at ``/`` talking to an echo at ``/echo``.

Also ``/worker``: a plain-text line naming the worker and pid that answered (handy to
watch the pre-fork workers share the load, and for tests), and ``/chat``: a chat room
over publish/subscribe (WebSocket ``/chat/ws``, topic ``chat``) whose every line says
which worker relayed it, so that a room spanning the pre-forked workers can be watched.
"""

import os
from typing import Any, Dict, Optional, Union

from .message import ServerMessage
from .server import Server
from .websocket import WebsocketConnection, WebsocketDataType

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>minisoup WebSocket echo</title>
<style>
  body { font-family: sans-serif; max-width: 40em; margin: 2em auto; }
  #log { border: 1px solid #ccc; height: 20em; overflow-y: auto; padding: .5em;
         font-family: monospace; white-space: pre-wrap; }
  .sent { color: #06c; } .received { color: #080; } .status { color: #888; }
</style>
</head>
<body>
<h1>minisoup WebSocket echo</h1>
<form id="form"><input id="text" size="40" autocomplete="off" autofocus
  placeholder="type a message, press Enter"> <button>Send</button></form>
<div id="log"></div>
<script>
const log = document.getElementById("log");
function show(text, cls) {
  const line = document.createElement("div");
  line.className = cls;
  line.textContent = text;
  log.appendChild(line);
  log.scrollTop = log.scrollHeight;
}
const ws = new WebSocket("ws://" + location.host + "/echo");
ws.onopen = () => show("connected", "status");
ws.onmessage = (event) => show("< " + event.data, "received");
ws.onclose = (event) => show("closed (" + event.code + ")", "status");
ws.onerror = () => show("error", "status");
document.getElementById("form").onsubmit = (event) => {
  event.preventDefault();
  const input = document.getElementById("text");
  if (input.value && ws.readyState === WebSocket.OPEN) {
    ws.send(input.value);
    show("> " + input.value, "sent");
    input.value = "";
  }
};
</script>
</body>
</html>
"""


CHAT_TOPIC = "chat"
CHAT_PAGE = (PAGE.replace("minisoup WebSocket echo", "minisoup chat room")
             .replace('"/echo"', '"/chat/ws"')
             .replace('show("> " + input.value, "sent");', ""))


def register(server: Server) -> None:
    """Add the demo's handlers to ``server``: ``/`` (HTML), ``/echo`` (WebSocket), ``/worker``,
    ``/chat`` (HTML) and ``/chat/ws`` (WebSocket)."""
    server.add_handler("/", _page)
    server.add_websocket_handler("/echo", None, None, _echo)
    server.add_handler("/worker", _worker)
    server.add_handler("/chat", _chat_page)
    server.add_websocket_handler("/chat/ws", None, None, _chat)


def _chat_page(server: Server, msg: ServerMessage, path: str,
               query: Optional[Dict[str, str]], user_data: Any) -> None:
    msg.set_status(200)
    msg.set_response("text/html; charset=utf-8", CHAT_PAGE)


def _chat(server: Server, msg: ServerMessage, path: str, connection: WebsocketConnection,
          user_data: Any) -> None:
    connection.subscribe(CHAT_TOPIC)
    connection.connect("message", _chat_message, server)
    connection.send_text("[worker %d] you joined the room" % server.get_worker_id())


def _chat_message(connection: WebsocketConnection, data_type: WebsocketDataType,
                  data: Union[str, bytes], server: Server) -> None:
    if data_type == WebsocketDataType.TEXT:  # everyone, the sender too: their line comes back
        server.publish(CHAT_TOPIC, "[worker %d] %s" % (server.get_worker_id(), data[:1000]))


def _page(server: Server, msg: ServerMessage, path: str, query: Optional[Dict[str, str]],
          user_data: Any) -> None:
    if path != "/":
        msg.set_status(404)
        msg.set_response("text/plain; charset=utf-8", "Not Found\n")
        return
    msg.set_status(200)
    msg.set_response("text/html; charset=utf-8", PAGE)


def _echo(server: Server, msg: ServerMessage, path: str, connection: WebsocketConnection,
          user_data: Any) -> None:
    connection.connect("message", _echo_message)


def _echo_message(connection: WebsocketConnection, data_type: WebsocketDataType,
                  data: Union[str, bytes]) -> None:
    connection.send_message(data_type, data)


def _worker(server: Server, msg: ServerMessage, path: str, query: Optional[Dict[str, str]],
            user_data: Any) -> None:
    msg.set_status(200)
    msg.set_response("text/plain; charset=utf-8",
                     "worker %d pid %d\n" % (server.get_worker_id(), os.getpid()))
