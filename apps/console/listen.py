"""ListenConsumer: `/ws/console/sessions/{session_id}/audio`, an operator hearing a live call.

CONTRACT section 6. Only a logged-in operator with `oc_sessions.listen_session` gets past the
handshake (403 otherwise). The consumer joins the session's listen group, then asks the
session's actor to count it as a listener; the actor answers `listen.started` on this
consumer's channel, and every piece of audio that passes the relay after that reaches the
group. Binary frames: byte 0 the side (0 caller, 1 agent), then PCM16 little-endian mono
24 kHz. Text frames are JSON status: `listen.started` first, `listen.cut` (`side` 1) when the
caller cut the agent's reply short (what of it the listener has not played yet is not to be
heard), `listen.ended` when the session ends (then the socket closes with 1000), `error` for a
session that is not live (then 4404), or for an operator already listening on
`OC_MAX_LISTENERS_PER_USER` sockets in this process (then 4429, the limit in the reason too).
An operator who logs out stops listening: the socket closes with 4401, as the console's does.
One who loses the permission (or whose account is turned off) stops within RENEW_SECONDS: each
renewal checks it again, and the socket closes with 4403.

A listener is renewed every RENEW_SECONDS, so the actor forgets one whose process died. A
listener whose socket stops reading is dropped by the server, never waited for
(`operator_console/daphne_compat.py`).
"""

from __future__ import annotations

import asyncio
import json
import logging

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.contrib.auth import get_user_model

from apps.sessions import groups, selectors
from apps.sessions.caps import PerKeyCap
from apps.sessions.consumers import (
    ClosedAtStop,
    DropsSendsToClosedSockets,
    SurvivesLayerOutages,
)
from apps.sessions.db import db_async
from apps.sessions.groups import user_group
from apps.sessions.listening import LISTEN_AUDIO
from apps.sessions.models import LISTEN, LiveSession

log = logging.getLogger(__name__)

RENEW_SECONDS = 30.0
TOO_MANY_LISTENERS = 4429  # as HTTP's 429: the operator holds as many sockets as allowed
# Each operator's listening sockets (by user id), in this process: every one copies the audio.
listeners = PerKeyCap()
# A WebRTC or phone call's audio goes between the caller and the model: none passes the console.
NOT_RELAYED = (
    "This call's audio goes between the caller and the model directly (a WebRTC or phone call):"
    " it does not pass the console, so it cannot be heard or recorded here."
)


@database_sync_to_async
def _may_listen(user) -> bool:
    return user is not None and user.is_authenticated and user.has_perm(LISTEN)


@database_sync_to_async
def _may_still_listen(user_id) -> bool:
    """As `_may_listen`, read afresh (a user object caches its permissions)."""
    user = get_user_model().objects.filter(pk=user_id).first()
    return user is not None and user.is_active and user.has_perm(LISTEN)


class ListenConsumer(
    ClosedAtStop, DropsSendsToClosedSockets, SurvivesLayerOutages, AsyncWebsocketConsumer
):
    session: LiveSession | None = None
    user_group: str | None = None
    user_id = None
    _renew: asyncio.Task | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        if not await _may_listen(user):
            await self.close()  # before accept: the handshake is refused with 403
            return
        self.username = user.get_username()
        session_id = self.scope["url_route"]["kwargs"]["session_id"]
        session = await db_async(selectors.session_row)(session_id=session_id)
        await self.accept()
        if session is not None and session.kind != LiveSession.Kind.RELAY:
            await self.send(text_data=json.dumps({"type": "error", "message": NOT_RELAYED}))
            await self.close(code=4409)
            return
        if session is None or session.status != LiveSession.Status.LIVE:
            state = "no such session" if session is None else f"the session is {session.status}"
            await self.send(
                text_data=json.dumps(
                    {"type": "error", "message": f"Cannot listen to '{session_id}': {state}."}
                )
            )
            await self.close(code=4404)
            return
        limit = settings.OC_MAX_LISTENERS_PER_USER
        if not listeners.take(user.pk, self, limit):
            message = (
                f"You are already listening on {limit} sockets on this server process, the most "
                "OC_MAX_LISTENERS_PER_USER allows: stop listening in another tab to listen here."
            )
            await self.send(text_data=json.dumps({"type": "error", "message": message}))
            reason = f"Too many listeners: OC_MAX_LISTENERS_PER_USER={limit}"
            await self.close(code=TOO_MANY_LISTENERS, reason=reason)
            return
        self.user_id = user.pk  # its place under the cap is given back as it disconnects
        self.session = session
        self.user_group = user_group(user.pk)  # told when this operator logs out
        await self._start_listening()
        self._renew = asyncio.get_running_loop().create_task(self._renew_listening(user.pk))

    def layer_groups(self) -> list[str]:
        if self.session is None:
            return []
        return [groups.listen_group(self.session.id), self.user_group]

    async def _start_listening(self) -> None:
        try:
            for group in self.layer_groups():
                await self.channel_layer.group_add(group, self.channel_name)
        except Exception as exc:
            log.warning("joining the listen group failed on %s: %r", self.channel_name, exc)
            self.join_later()
        await self._tell_actor(listen=True)

    async def layer_rejoined(self) -> None:
        """Back in the listen group after an outage: the actor may never have heard of this
        listener (the layer was down when it came), so it is told again."""
        await self._tell_actor(listen=True)

    async def _renew_listening(self, user_id) -> None:
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            if not await _may_still_listen(user_id):
                await self.close(code=4403, reason="You may no longer listen to sessions.")
                return
            await self._tell_actor(listen=True)

    async def _tell_actor(self, *, listen: bool) -> None:
        message = {
            "type": groups.SESSION_LISTEN,
            "channel": self.channel_name,
            "user": self.username,
            "listen": listen,
        }
        try:
            await self.channel_layer.group_send(groups.session_group(self.session.id), message)
        except Exception as exc:  # renewed later, or the listener leaves
            log.warning("telling %s about a listener failed: %r", self.session.id, exc)

    async def receive(self, text_data=None, bytes_data=None) -> None:
        pass  # listeners only listen

    async def disconnect(self, code) -> None:
        if self.user_id is not None:
            listeners.release(self.user_id, self)
        self.stop_joining()
        if self._renew is not None:
            self._renew.cancel()
        if self.session is not None:
            await self._tell_actor(listen=False)
            try:
                for group in self.layer_groups():
                    await self.channel_layer.group_discard(group, self.channel_name)
            except Exception as exc:
                log.warning("leaving the listen group failed on %s: %r", self.channel_name, exc)

    # ------------------------------------------------------------------ from the actor

    async def dispatch(self, message) -> None:
        # Channels closes stale database connections before every handler, through a hop to
        # its one database thread: the call's audio (25 pieces a second or more) would wait
        # there behind any slow query of the process. Audio touches no database, so it skips
        # that hop, as the relay's frames do (`RelayConsumer.dispatch`).
        if message["type"] == LISTEN_AUDIO:
            await self.listen_audio(message)
        else:
            await super().dispatch(message)

    async def listen_audio(self, message) -> None:
        await self.send(bytes_data=message["bytes"])

    async def listen_started(self, message) -> None:
        await self.send(text_data=json.dumps(message))

    async def listen_cut(self, message) -> None:
        await self.send(text_data=json.dumps(message))

    async def user_logged_out(self, message) -> None:
        """The operator logged out (on any page, in any process): they hear no more."""
        await self.close(code=4401)

    async def listen_ended(self, message) -> None:
        await self.send(text_data=json.dumps(message))
        await self.close(code=1000)
