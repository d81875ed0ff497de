"""RelayConsumer: the caller's end of `/v1/realtime`.

Thin by design: it authenticates the handshake, then hands every frame to the session's actor
and never awaits the upstream itself (Channels handles one message at a time per consumer, so
an await here would hold up everything behind it).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Callable
from urllib.parse import parse_qs, parse_qsl

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from apps.realtime import events
from apps.sessions import groups
from apps.sessions import housekeeping as housekeeping_module
from apps.sessions.actor import SessionActor
from apps.sessions.auth import Refusal, authenticate_relay
from apps.sessions.db import AWAY
from apps.sessions.housekeeping import housekeeping
from apps.sessions.loops import per_loop
from apps.sessions.services import label_problem
from apps.sessions.upstream import open_upstream

log = logging.getLogger(__name__)
refusals = logging.getLogger("oc.events")


def _client(scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else ""

_FORWARDED_HEADERS = (b"openai-beta",)
# A browser cannot set headers: it offers this subprotocol to ask for the beta shape, which the
# service reads as the header `OpenAI-Beta: realtime=v1` (and refuses, as it does the header).
BETA_SUBPROTOCOL = "openai-beta.realtime-v1"
# Longest wait between two tries while the channel layer (Redis) is unreachable.
LAYER_RETRY_MAX = 1.0
# Seconds a caller's handshake waits for the database to check its token. Daphne drops a
# handshake still unanswered after 5 s (--websocket_connect_timeout) without a word, and the
# database pool waits 10 s for a connection while the database is away. Half of Daphne's
# limit leaves a busy process the time to send the refusal (4 s did not, in a test run).
AUTH_TIMEOUT = 2.5


def _query_label(scope) -> str:
    """`oc_label`: one of the relay's own query parameters, which never reach the upstream."""
    query = parse_qs(scope.get("query_string", b"").decode("latin1"), errors="replace")
    return (query.get("oc_label") or [""])[-1].strip()


def _upstream_query(scope) -> list[tuple[str, str]]:
    """The caller's query parameters for the upstream, in their order (CONTRACT section 1, rule
    6): all but the relay's own `oc_*` and `model`, which the upstream URL always carries."""
    query = parse_qsl(scope.get("query_string", b"").decode("latin1"), keep_blank_values=True)
    return [(key, value) for key, value in query if not key.startswith("oc_") and key != "model"]


def _query_model(scope) -> str:
    query = parse_qs(scope.get("query_string", b"").decode("latin1"))
    model = (query.get("model") or [""])[-1].strip()
    return model or settings.OC_REALTIME_MODEL


class DropsSendsToClosedSockets:
    """For a consumer that passes on what others publish (watch updates, listen-in audio): a
    message can arrive after the browser closed its socket and before the consumer has heard
    so. The server then refuses the send (Daphne raises autobahn's `Disconnected`, a
    `RuntimeError`; the ASGI spec asks for an `OSError`); the message is for no one, so it is
    dropped, and the disconnect already on its way ends the consumer. Without this, each such
    send ended the consumer with a traceback in the log."""

    async def __call__(self, scope, receive, send) -> None:
        async def send_unless_closed(message) -> None:
            try:
                await send(message)
            except (OSError, RuntimeError) as exc:
                log.debug("dropped a %s to a closed socket: %r", message.get("type"), exc)

        await super().__call__(scope, receive, send_unless_closed)


# Close code 1012, "service restart" (RFC 6455's registry), as callers are told at a stop.
SERVICE_RESTART = 1012
_operator_sockets: Callable[[], set[ClosedAtStop]] = per_loop(set)  # this loop's


class ClosedAtStop:
    """For an operator's socket (the console's, listen-in's): at a graceful stop of the process,
    once its sessions have ended and their watchers been told, the socket is closed with 1012
    and a reason (`close_operator_sockets`, a housekeeping farewell), so that a page says why
    and reconnects, through the load balancer, to another process. Daphne would otherwise drop
    it without a close frame (1006), the same as a crash."""

    async def __call__(self, scope, receive, send) -> None:
        _operator_sockets().add(self)
        try:
            await super().__call__(scope, receive, send)
        except asyncio.CancelledError:
            # Daphne cancels every application as it stops, and the socket stays open until
            # the farewell closes it; a socket that went before is gone from the set already.
            raise
        except BaseException:
            _operator_sockets().discard(self)
            raise
        _operator_sockets().discard(self)

    async def websocket_disconnect(self, message) -> None:
        _operator_sockets().discard(self)
        await super().websocket_disconnect(message)


async def close_operator_sockets() -> int:
    sockets = list(_operator_sockets())
    reason = housekeeping_module.STOPPING
    await asyncio.gather(
        *(socket.close(code=SERVICE_RESTART, reason=reason) for socket in sockets),
        return_exceptions=True,  # one closed meanwhile: nothing to say to it
    )
    return len(sockets)


housekeeping_module.farewells.append(close_operator_sockets)


class SurvivesLayerOutages:
    """For a Channels consumer: the channel layer (Redis) being unreachable for a while, or
    restarted, must not end the consumer.

    Channels' `AsyncConsumer.__call__` stores the layer's receive for the consumer's channel in
    `self.channel_receive` and ends the consumer (so closes its socket with 1011, telling no
    one why) at the first error from it. Here that receive waits the outage out instead, and
    the consumer joins its groups (`layer_groups()`) again when the layer answers: a restarted
    Redis has forgotten every group.
    """

    _join_task: asyncio.Task | None = None
    _leaving = False  # set by stop_joining(): from then on the consumer joins nothing again

    def layer_groups(self) -> list[str]:
        return []

    async def layer_lost(self) -> None:
        """Called when a receive finds the layer unreachable (once an outage, until rejoined)."""

    async def layer_rejoined(self) -> None:
        """Called once the consumer is back in its groups after an outage."""

    @property
    def channel_receive(self):
        return self._receive_through_outages

    @channel_receive.setter
    def channel_receive(self, receive) -> None:
        self._layer_receive = receive

    async def _receive_through_outages(self):
        delay = 0.05
        while True:
            try:
                return await self._layer_receive()
            except Exception as exc:
                if self._join_task is None or self._join_task.done():
                    log.warning("channel layer unreachable from %s: %r; retrying", self.channel_name, exc)
                    self.join_later()
                    await self.layer_lost()
                await asyncio.sleep(delay)
                delay = min(delay * 2, LAYER_RETRY_MAX)

    def join_later(self) -> None:
        """Join `layer_groups()` in the background, retrying until the layer answers."""
        if self._leaving:  # a receive that failed while the consumer leaves must not rejoin
            return
        if self._join_task is None or self._join_task.done():
            self._join_task = asyncio.get_running_loop().create_task(
                self._join_layer_groups(), name="layer-join"
            )

    async def _join_layer_groups(self) -> None:
        delay = 0.05
        while True:
            try:
                for group in self.layer_groups():
                    await self.channel_layer.group_add(group, self.channel_name)
            except Exception:
                await asyncio.sleep(delay)
                delay = min(delay * 2, LAYER_RETRY_MAX)
            else:
                log.info("channel layer reachable; %s joined %s", self.channel_name, self.layer_groups())
                await self.layer_rejoined()
                return

    def stop_joining(self) -> None:
        """The consumer is leaving its groups: stop joining them, now and later."""
        self._leaving = True
        if self._join_task is not None:
            self._join_task.cancel()
            self._join_task = None


class RelayConsumer(SurvivesLayerOutages, AsyncWebsocketConsumer):
    actor: SessionActor | None = None
    group: str | None = None
    ends_with: str | None = None  # the credential's group (`Principal.ends_with`)

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Channels calls `disconnect` only for a websocket.disconnect message: a consumer
            # that ends by an error must still end its actor, or the session would live on
            # (upstream open, heartbeats stamped, requests answered) with no caller.
            self.stop_joining()
            if self.actor is not None:
                self.actor.caller_closed()

    def layer_groups(self) -> list[str]:
        return [group for group in (self.group, self.ends_with) if group is not None]

    async def connect(self) -> None:
        try:
            principal = await asyncio.wait_for(authenticate_relay(self.scope), AUTH_TIMEOUT)
        except (*AWAY, TimeoutError) as exc:  # no token can be checked
            log.warning("relay handshake refused: the database is unavailable: %r", exc)
            await self.deny(
                503,
                "database_unavailable",
                "The server cannot check credentials now (its database is unavailable); "
                "try again in a moment.",
                error_type="server_error",
            )
            return
        if isinstance(principal, Refusal):
            refusals.info(json.dumps({"event": "relay.refused", "reason": principal.reason, "client": _client(self.scope)}))
            await self.deny(
                principal.status,
                principal.code,
                principal.message or principal.reason,
                error_type=principal.error_type,
                headers=principal.headers,
            )
            return
        label = _query_label(self.scope)
        problem = label_problem(label)
        if problem is not None:
            message = f"The query parameter oc_label was refused: {problem}."
            await self.deny(400, "invalid_label", message, param="oc_label")
            return
        upstream_query = _upstream_query(self.scope)
        if any(key == "call_id" for key, _ in upstream_query):
            # The service would join the call's sideband; the relay opens a session of its own
            # and sequences every response in it, which a call's own client would bypass.
            message = (
                "The query parameter call_id is not for the relay: it opens a session of its "
                "own. A WebRTC or SIP call placed through Operator Console (POST "
                "/v1/realtime/calls, or its webhook) is attached and steered by call id already."
            )
            await self.deny(400, "invalid_request", message, param="call_id")
            return
        offered = self.scope.get("subprotocols") or []
        await self.accept("realtime" if "realtime" in offered else None)
        if (refusal := housekeeping().full()) is not None:
            # 1012 (service restart) from a process that is stopping, as its callers get.
            code, message = refusal
            close = SERVICE_RESTART if code == "server_restarting" else 1013
            refused = {"event": "relay.refused", "reason": code, "by": principal.name}
            refusals.warning(json.dumps(refused))
            error = events.error_event(code=code, message=message, error_type="server_error")
            await self.send(text_data=events.dumps(error))
            await self.close_with(close, message)
            return
        headers = {
            key.decode("latin1"): value.decode("latin1")
            for key, value in self.scope.get("headers", ())
            if key in _FORWARDED_HEADERS
        }
        if BETA_SUBPROTOCOL in offered:
            headers.setdefault("openai-beta", "realtime=v1")
        # A minted key's configuration is the one its issuer chose: its model wins over the URL's.
        minted = principal.session or {}
        self.actor = SessionActor(
            caller=self,
            model=minted.get("model") or _query_model(self.scope),
            connected_by=principal.name,
            upstream_headers=headers,
            opener=functools.partial(open_upstream, query=upstream_query),
            label=label,
            minted_session=minted,
        )
        # Operators reach the session through its group: requests, cancels, notes, interrupts.
        self.group = groups.session_group(self.actor.key)
        self.ends_with = principal.ends_with
        try:
            for group in self.layer_groups():
                await self.channel_layer.group_add(group, self.channel_name)
        except Exception as exc:  # the layer is down: the session starts, and joins when it can
            log.warning("joining %s failed: %r; retrying in the background", self.group, exc)
            self.join_later()
        self.actor.start()

    async def deny(
        self,
        status: int,
        code: str,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """Refuse the handshake (no upstream is opened) and say why: an HTTP answer with a
        JSON body in the service's shape, `{"error": {"message", "type", "param", "code"}}`,
        and `headers` (such as `Retry-After`), where the server can send one (the ASGI
        `websocket.http.response` extension), else the bare 403 of a close."""
        if "websocket.http.response" not in self.scope.get("extensions", {}):
            await self.close()
            return
        error = {"message": message, "type": error_type, "param": param, "code": code}
        body = json.dumps({"error": error}).encode()
        answer = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *((name.lower().encode("latin1"), value.encode("latin1")) for name, value in headers),
        ]
        start = {"type": "websocket.http.response.start", "status": status, "headers": answer}
        await self.base_send(start)
        await self.base_send({"type": "websocket.http.response.body", "body": body})

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
        self.stop_joining()
        for group in self.layer_groups():
            try:
                await self.channel_layer.group_discard(group, self.channel_name)
            except Exception as exc:  # the layer is down; the membership expires on its own
                log.warning("leaving %s failed: %r", group, exc)
        if self.actor is not None:
            self.actor.caller_closed()
            await self.actor.wait_finished()

    async def token_revoked(self, message) -> None:
        await self._credential_ended("The token that opened this session was revoked.")

    async def user_logged_out(self, message) -> None:
        """The operator whose login opened this session logged out, or was turned off."""
        await self._credential_ended("The console login that opened this session has ended.")

    async def _credential_ended(self, reason: str) -> None:
        # The session ends now, even if the caller never answers the close.
        log.info("relay session closed: %s", reason)
        await self.close_with(4401, reason)
        if self.actor is not None:
            self.actor.caller_closed(detail=reason)

    # The actor's view of the caller socket.
    async def send_frame(self, frame: str | bytes) -> None:
        key = "text" if type(frame) is str else "bytes"
        message = {"type": "websocket.send", key: frame}
        try:
            await self.base_send(message)
        except Exception as exc:  # the caller's socket closed under us: end the session
            log.debug("send to a closed caller socket: %r", exc)
            if self.actor is not None:
                self.actor.caller_closed()

    async def close_with(self, code: int, reason: str) -> None:
        # A close reason is at most 123 bytes of UTF-8.
        encoded = reason.encode()[:123]
        await self.close(code=code, reason=encoded.decode("utf-8", "ignore"))
