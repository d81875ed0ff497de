"""RelayConsumer: the caller's end of `/v1/realtime`.

Thin by design: it authenticates the handshake, then hands every frame to the session's actor
and never awaits the upstream itself (Channels handles one message at a time per consumer, so
an await here would hold up everything behind it).
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from apps.realtime import events
from apps.sessions import groups
from apps.sessions.actor import SessionActor
from apps.sessions.auth import Refusal, authenticate_relay
from apps.sessions.housekeeping import housekeeping

log = logging.getLogger(__name__)

_FORWARDED_HEADERS = (b"openai-beta",)


def _query_model(scope) -> str:
    query = parse_qs(scope.get("query_string", b"").decode("latin1"))
    model = (query.get("model") or [""])[-1].strip()
    return model or settings.OC_REALTIME_MODEL


class RelayConsumer(AsyncWebsocketConsumer):
    actor: SessionActor | None = None
    group: str | None = None

    async def connect(self) -> None:
        principal = await authenticate_relay(self.scope)
        if isinstance(principal, Refusal):
            log.info("relay handshake refused: %s", principal.reason)
            await self.close()  # before accept → HTTP 403, and no upstream is opened
            return
        offered = self.scope.get("subprotocols") or []
        await self.accept("realtime" if "realtime" in offered else None)
        held = len(housekeeping().holders)
        if held >= settings.OC_MAX_SESSIONS:
            log.warning("relay refused %s: this process holds %d sessions", principal.name, held)
            message = (
                f"This server holds its maximum of {settings.OC_MAX_SESSIONS} live sessions; "
                "try again later."
            )
            error = events.error_event(code="too_many_sessions", message=message, error_type="server_error")
            await self.send_text(events.dumps(error))
            await self.close_with(1013, message)
            return
        headers = {
            key.decode("latin1"): value.decode("latin1")
            for key, value in self.scope.get("headers", ())
            if key in _FORWARDED_HEADERS
        }
        self.actor = SessionActor(
            caller=self,
            model=_query_model(self.scope),
            connected_by=principal.name,
            upstream_headers=headers,
        )
        # Operators reach the session through its group: requests, cancels, notes, interrupts.
        self.group = groups.session_group(self.actor.key)
        await self.channel_layer.group_add(self.group, self.channel_name)
        self.actor.start()

    async def dispatch(self, message) -> None:
        # Channels closes stale database connections before every handler, through a hop to a
        # worker thread. Frames from the caller and operators' messages never touch the
        # database (the actor and the history writer do), so they skip that hop; connect and
        # disconnect keep it.
        kind = message["type"]
        if kind == "websocket.receive":
            await self.websocket_receive(message)
        elif kind in groups.SESSION_MESSAGE_TYPES:
            if self.actor is not None:
                self.actor.operator_message(message)
        else:
            await super().dispatch(message)

    async def receive(self, text_data=None, bytes_data=None) -> None:
        if self.actor is not None:
            self.actor.caller_frame(text_data if text_data is not None else bytes_data)

    async def disconnect(self, code) -> None:
        if self.group is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)
        if self.actor is not None:
            self.actor.caller_closed()
            await self.actor.wait_finished()

    # The actor's view of the caller socket.
    async def send_text(self, text: str) -> None:
        await self.base_send({"type": "websocket.send", "text": text})

    async def close_with(self, code: int, reason: str) -> None:
        # A close reason is at most 123 bytes of UTF-8.
        encoded = reason.encode()[:123]
        await self.close(code=code, reason=encoded.decode("utf-8", "ignore"))
