"""A WebSocket handshake refused with a body that says why: ASGI's `websocket.http.response`
extension, which Daphne 4.2 lacks.

Daphne answers every refused handshake (a `websocket.close` before `websocket.accept`) with a
bare `403 Access denied`, so an SDK user whose token was missing or refused could not tell
which. The ASGI spec (2.4) lets an application answer the handshake with an HTTP response of
its own instead — `websocket.http.response.start` (status, headers), then
`websocket.http.response.body` — when the server lists the extension in the scope's
`extensions`. This adds that to Daphne:

- `Server.create_application` puts `{"websocket.http.response": {}}` in every WebSocket scope's
  `extensions`, so the application knows it may answer so (under another server, without the
  extension, it closes as before), and the `scheme` (`wss` behind TLS or a proxy that says
  so), which Daphne leaves out and the relay's Origin check needs;
- `WebSocketProtocol.handle_reply` collects the start and the body while the handshake is
  pending, then refuses it the way Daphne's own `serverReject` does;
- `sendHttpErrorResponse`, which autobahn calls to write the refusal, writes the
  application's status, headers and body instead of autobahn's empty answer.

If Daphne or autobahn changes shape, nothing is patched and refusals stay bare 403s.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

log = logging.getLogger(__name__)

EXTENSION = "websocket.http.response"


def _scheme(protocol) -> str:
    """`wss` or `ws`, which Daphne leaves out of a WebSocket scope (the relay compares a
    cookie's Origin with it): from X-Forwarded-Proto when Daphne runs with --proxy-headers,
    else from the connection itself."""
    forwarded = getattr(protocol, "client_scheme", None)
    if forwarded:
        return "wss" if forwarded in ("https", "wss") else "ws"
    try:
        from twisted.internet.interfaces import ISSLTransport

        return "wss" if ISSLTransport.providedBy(protocol.transport) else "ws"
    except Exception:  # noqa: BLE001 - no transport to ask: the ASGI default
        return "ws"


def install() -> None:
    try:
        from autobahn.websocket.types import ConnectionDeny
        from daphne.server import Server
        from daphne.ws_protocol import WebSocketProtocol
    except ImportError:  # Daphne not in use
        return
    if not all(hasattr(WebSocketProtocol, name) for name in ("handle_reply", "sendHttpErrorResponse")):
        log.warning("daphne/autobahn changed: refused handshakes stay bare 403s")
        return
    if getattr(WebSocketProtocol.handle_reply, "_oc_denial", False):
        return

    create_application = Server.create_application

    def create_application_with_extension(self, protocol, scope):
        if scope.get("type") == "websocket":
            scope.setdefault("extensions", {})[EXTENSION] = {}
            scope.setdefault("scheme", _scheme(protocol))
        return create_application(self, protocol, scope)

    Server.create_application = create_application_with_extension

    handle_reply = WebSocketProtocol.handle_reply

    def handle_reply_with_denial(self, message):
        kind = message.get("type", "")
        if not kind.startswith("websocket.http.response."):
            return handle_reply(self, message)
        if self.state != self.STATE_CONNECTING or not hasattr(self, "handshake_deferred"):
            raise ValueError(f"{kind} is only allowed before the handshake is answered")
        if kind == "websocket.http.response.start":
            self._oc_denial = {"status": int(message["status"]), "headers": message.get("headers", []), "body": b""}
            return None
        denial = getattr(self, "_oc_denial", None)
        if denial is None:
            raise ValueError("websocket.http.response.body before websocket.http.response.start")
        denial["body"] += message.get("body", b"")
        if message.get("more_body", False):
            return None
        status = denial["status"]
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Refused"
        # As Daphne's serverReject, with the application's status.
        self.handshake_deferred.errback(ConnectionDeny(code=status, reason=phrase))
        del self.handshake_deferred
        self.server.protocol_disconnected(self)
        # The details Daphne's own refusal logs: its access log reads `client`.
        client = f"{self.client_addr[0]}:{self.client_addr[1]}" if self.client_addr else None
        self.server.log_action("websocket", "rejected", {"path": self.request.path, "client": client})
        return None

    handle_reply_with_denial._oc_denial = True
    WebSocketProtocol.handle_reply = handle_reply_with_denial

    send_error = WebSocketProtocol.sendHttpErrorResponse

    def send_http_error_response(self, code, reason, responseHeaders=None):  # noqa: N803 (autobahn's name)
        denial = getattr(self, "_oc_denial", None)
        if denial is None or denial["status"] != code:
            return send_error(self, code, reason, responseHeaders)
        lines = [f"HTTP/1.1 {code} {reason}"]
        named = set()
        for name, value in denial["headers"]:
            name = name.decode("latin1") if isinstance(name, bytes) else name
            value = value.decode("latin1") if isinstance(value, bytes) else value
            named.add(name.lower())
            lines.append(f"{name}: {value}")
        if "content-length" not in named:
            lines.append(f"Content-Length: {len(denial['body'])}")
        lines.append("Connection: close")
        self.sendData(("\r\n".join(lines) + "\r\n\r\n").encode("latin1") + denial["body"])
        return None

    WebSocketProtocol.sendHttpErrorResponse = send_http_error_response
