"""ConsoleConsumer: `/ws/console/`, the live part of the operator's pages.

The browser asks for what it shows: `{"type": "watch.sessions", "query": {…}}` (the dashboard,
with its search, filters, sort and page as in its URL; sent again when they change) or
`{"type": "watch.session", "session_id": "sess_…"}` (a session page). Everything the server
sends is JSON with a `type`: `sessions` (the dashboard's page and top-line figures), and for a
session `snapshot`, `transcript`, `request`, `presence`, `event`, `ended` — the actor's `console.*`
messages with the prefix dropped, passed on by one generic handler — `label` (the services': the
session was labelled) and `paused` (the channel layer is unreachable: no update comes until the
next snapshot).

Login is required (the route is wrapped in the session and auth middleware, behind an Origin
check); the user's name is what other operators see in presence.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from apps.console.dashboard import View
from apps.console.feed import feed
from apps.realtime import events
from apps.sessions import groups, selectors
from apps.sessions.consumers import (
    ClosedAtStop,
    DropsSendsToClosedSockets,
    SurvivesLayerOutages,
)
from apps.sessions.db import db_async
from apps.sessions.groups import user_group
from apps.sessions.models import LiveSession, ResponseRequest

log = logging.getLogger(__name__)

# A watch is renewed this often; the actor forgets a watcher after groups' WATCH_TTL.
RENEW_SECONDS = 30.0
# A page catching up after a layer outage is sent this many of the session's latest requests.
CATCH_UP_REQUESTS = 100
# ...and asks the actor for its snapshot every SNAPSHOT_RETRY seconds until it comes, at most
# SNAPSHOT_ASKS times (an ask is lost while the actor is not back in its own group yet).
SNAPSHOT_RETRY = 1.0
SNAPSHOT_ASKS = 10
_PREFIX = "console."


class ConsoleConsumer(
    ClosedAtStop, DropsSendsToClosedSockets, SurvivesLayerOutages, AsyncJsonWebsocketConsumer
):
    username = ""
    user_group: str | None = None
    watching: LiveSession | None = None
    _renew: asyncio.Task | None = None
    _resync: asyncio.Task | None = None
    _on_dashboard = False

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        self.username = user.get_username()
        self.user_group = user_group(user.pk)
        await self.accept()
        if not await self._quietly(self.channel_layer.group_add(self.user_group, self.channel_name)):
            self.join_later()

    def layer_groups(self) -> list[str]:
        joined = [self.user_group] if self.user_group else []
        if self.watching is not None:
            joined.append(groups.watch_group(self.watching.id))
        return joined

    async def receive(self, text_data=None, bytes_data=None, **kwargs) -> None:
        """A frame that is no JSON text (binary, not JSON, nested too deep for the parser) is
        answered with an `error`, as an unknown type is, and the socket goes on: Channels'
        JSON consumer would end it with 1011 and a traceback."""
        if text_data is None:
            await self._refuse("Messages are JSON text; a binary frame was sent.")
            return
        try:
            content = events.loads(text_data)
        except ValueError as exc:
            await self._refuse(f"Messages are JSON objects; this one is not JSON: {exc}.")
            return
        await self.receive_json(content)

    async def _refuse(self, message: str) -> None:
        await self.send_json({"type": "error", "message": message})

    async def receive_json(self, content: Any, **kwargs) -> None:
        if not isinstance(content, dict):
            given = events.json_type(content)
            await self._refuse(f"Messages are JSON objects with a type, not {given}.")
            return
        kind = content.get("type")
        if kind == "watch.sessions":
            self._on_dashboard = True
            query = content.get("query")
            await feed().add(self, View.from_query(query if isinstance(query, dict) else {}))
        elif kind == "watch.session":
            session_id = content.get("session_id")
            if isinstance(session_id, str):
                await self._watch(session_id)
            else:
                given = events.json_type(session_id) if "session_id" in content else "nothing"
                await self._refuse(f"watch.session needs a session_id string, not {given}.")
        else:
            await self._refuse(f"Unknown message type {_brief(repr(kind))}.")

    async def _watch(self, session_id: str) -> None:
        await self._unwatch()
        session = await db_async(selectors.session_row)(session_id=session_id)
        if session is None:
            await self._refuse(f"No session with id '{_brief(session_id)}'.")
            return
        if session.status != LiveSession.Status.LIVE:
            await self.send_json(_ended(session, session_id))
            return
        self.watching = session
        if not await self._quietly(self.channel_layer.group_add(groups.watch_group(session.id), self.channel_name)):
            self.join_later()
            await self.layer_lost()
        # What the actor told watchers between the page's render and this watch never reached
        # the page (a response that ended, a request made meanwhile): it catches up first.
        if not await self._catch_up():
            return
        await self._tell_actor(watch=True)
        self._renew = asyncio.get_running_loop().create_task(self._renew_watch())

    async def layer_lost(self) -> None:
        """Nothing the actor sends reaches this page until the layer is back: the page says
        so (`paused`) rather than look live; the snapshot it then gets ends the pause."""
        if self.watching is not None:
            await self.send_json({"type": "paused", "session_id": self.watching.upstream_id})

    async def layer_rejoined(self) -> None:
        """Back in the groups after an outage. What the actor told the watchers meanwhile was
        lost with the layer, so the page catches up from the table, then from the actor: it
        is asked for its snapshot (the transcript, the state) until it sends it. It may never
        have heard of the watch (the layer was down when it began); one that knew it renews
        it."""
        if self.watching is not None and await self._catch_up():
            self._stop_asking()
            self._resync = asyncio.get_running_loop().create_task(self._ask_for_snapshot())

    async def _ask_for_snapshot(self) -> None:
        for _ in range(SNAPSHOT_ASKS):
            await self._tell_actor(watch=True, snapshot=True)
            await asyncio.sleep(SNAPSHOT_RETRY)

    async def _catch_up(self) -> bool:
        """The watched session as the table has it now: its end (then the watch stops, and
        False), or its label and latest requests as they are now."""
        session, requests = await db_async(_as_now)(self.watching.pk)
        if session.status != LiveSession.Status.LIVE:
            await self.send_json(_ended(session, session.upstream_id or str(session.pk)))
            await self._unwatch()
            return False
        await self.send_json({"type": "label", "session_id": session.upstream_id, "label": session.label})
        for request in requests:
            await self.send_json(_request(request))
        return True

    async def _renew_watch(self) -> None:
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            await self._tell_actor(watch=True)

    async def _tell_actor(self, *, watch: bool, snapshot: bool = False) -> None:
        if self.watching is None:
            return
        message = {
            "type": groups.SESSION_WATCH,
            "channel": self.channel_name,
            "user": self.username,
            "watch": watch,
            "snapshot": snapshot,
        }
        await self._quietly(
            self.channel_layer.group_send(groups.session_group(self.watching.id), message)
        )

    async def _quietly(self, operation) -> bool:
        """A channel-layer call that may fail while the layer (Redis) is down: the watch is
        renewed every RENEW_SECONDS and groups are joined again when the layer is back."""
        try:
            await operation
            return True
        except Exception as exc:
            log.warning("channel layer call failed on %s: %r", self.channel_name, exc)
            return False

    async def _unwatch(self) -> None:
        self._stop_asking()
        if self._renew is not None:
            self._renew.cancel()
            self._renew = None
        if self.watching is not None:
            await self._tell_actor(watch=False)
            await self._quietly(
                self.channel_layer.group_discard(groups.watch_group(self.watching.id), self.channel_name)
            )
            self.watching = None

    def _stop_asking(self) -> None:
        if self._resync is not None:
            self._resync.cancel()
            self._resync = None

    async def disconnect(self, code) -> None:
        self.stop_joining()
        if self._on_dashboard:
            feed().discard(self)
        await self._unwatch()
        if self.user_group is not None:
            await self._quietly(self.channel_layer.group_discard(self.user_group, self.channel_name))

    async def user_logged_out(self, message) -> None:
        """The operator logged out (on any page, in any process): this socket ends too."""
        await self.close(code=4401)

    async def dispatch(self, message) -> None:
        kind = message["type"]
        if kind == groups.CONSOLE_FRAME:
            # The actor's messages to watchers arrive as the browser's JSON already.
            await self.send(text_data=message["frame"])
            if message["kind"] == groups.CONSOLE_SNAPSHOT:
                self._stop_asking()
            elif message["kind"] == groups.CONSOLE_ENDED:
                await self._unwatch()
            return
        if kind.startswith(_PREFIX):
            await self.send_json({**message, "type": kind[len(_PREFIX):]})
            return
        await super().dispatch(message)


def _brief(text: str, limit: int = 80) -> str:
    """What a page sent, as an error names it: a message of megabytes is not sent back."""
    return text if len(text) <= limit else f"{text[:limit]}…"


def _as_now(key) -> tuple[LiveSession, list[ResponseRequest]]:
    """A watched session's row and its latest requests, oldest first."""
    session = LiveSession.objects.get(pk=key)
    latest = ResponseRequest.objects.filter(session=session).order_by("-created_at", "-id")
    requests = list(latest[:CATCH_UP_REQUESTS])[::-1]
    for request in requests:
        request.session = session
    return session, requests


def _ended(session: LiveSession, session_id: str) -> dict[str, Any]:
    """The `ended` message of a session that is over, as its actor sends it."""
    return {
        "type": "ended",
        "session_id": session_id,
        "status": session.status,
        "reason": session.end_reason or None,
        "code": session.end_code,
        "detail": session.end_detail,
    }


def _request(request: ResponseRequest) -> dict[str, Any]:
    """The `request` message of a request as it is now, as its actor sends one per change."""
    data = request.to_dict()
    at = request.finished_at or request.started_at or request.sent_at or request.created_at
    return {
        "type": "request",
        "session_id": data["session_id"],
        "request_id": request.id,
        "origin": request.origin,
        "requested_by": request.requested_by,
        "instructions": request.instructions,
        "metadata": request.metadata,
        "conversation": data["conversation"],
        "status": request.status,
        "at": at.timestamp(),
        # What the actor's messages did not bring to the page (it missed them): the latency.
        "created_at": request.created_at.timestamp(),
        "started_at": request.started_at.timestamp() if request.started_at else None,
        "response_id": data["response_id"],
        "error_code": request.error_code or None,
        "error_message": request.error_message or None,
        "sent_instructions": request.sent_instructions,
    }
