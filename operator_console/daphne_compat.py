"""Let Daphne send the close reason that ASGI's `websocket.close` carries.

ASGI (spec 2.3+) gives `websocket.close` a `reason`; Daphne 4.2 passes on the code only, so a
caller whose upstream failed would see a bare 1011. The relay tells callers why in an `error`
event as well, so this is a nicety; if Daphne changes shape, it is left alone.
"""

from __future__ import annotations


def install() -> None:
    try:
        from daphne.ws_protocol import WebSocketProtocol
    except ImportError:  # Daphne not in use
        return
    original = WebSocketProtocol.handle_reply
    if getattr(original, "_oc_patched", False):
        return

    def handle_reply(self, message):
        if (
            message.get("type") == "websocket.close"
            and message.get("reason")
            and self.state != self.STATE_CONNECTING
        ):
            code = message.get("code") or 1000
            self.sendClose(code=code, reason=str(message["reason"])[:123])
            return
        return original(self, message)

    handle_reply._oc_patched = True
    WebSocketProtocol.handle_reply = handle_reply
