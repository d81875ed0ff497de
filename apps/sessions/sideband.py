"""Attached calls: sessions with no caller leg, steered through a sideband.

A WebRTC call placed through `/v1/realtime/calls`, or a phone call accepted from a webhook,
talks to the model directly. The console attaches to it with a second WebSocket,
`{OC_UPSTREAM_URL}/realtime?call_id=C` (the embedded simulator's URL when OC_UPSTREAM_URL is
unset; `Authorization: Bearer OPENAI_API_KEY`, or the simulator's placeholder key), and drives
it with a `SessionActor` like any other session: same sequencer, heartbeat, ownership, history
and end reasons. Only its relay core runs in attached mode (`apps/realtime/attached.py` says
what that changes, and what is and is not guaranteed).

Interface (for the calls views and the webhook):

    actor = await attach_call(call_id=C, kind="webrtc" | "sip", model=M, connected_by=NAME,
                              caller_number="", dialled_number="", label="")

Call it from async code in the process's running loop (Daphne's: an async view). It returns
at once, the actor started: the session's row (`LiveSession`, with `kind`, `call_id` and the
numbers) is written by the history writer as the actor starts, and the session is named (goes
`live`) from the sideband's first session event, `session.created` as the service sends it
on join, or `session.updated` if that comes first; with neither within a short wait
(`apps.realtime.attached.NAME_WAIT`), the call id names it. A sideband that cannot be opened
is tried again a few times, with a backoff (`OC_SIDEBAND_RETRY_DELAY`), as a lost one is
(`apps.realtime.attached`); the session ends (`failed`, `upstream_closed`) when no try is left
or the upstream refuses it for good (404: the call is gone).

This module holds what a relayed session's consumer holds for it: a reference to the actor
(so its task is not collected), and a channel on the channel layer in the session's group, so
services reach the actor as they reach a relayed one (requests, cancels, notes, interrupts,
watches, hang-ups). `held(key)` finds an attached call's actor in this process. The process's
shutdown ends attached sessions with every other (`housekeeping().shutdown()`: each actor
registers itself there). Nothing else reaches into these actors.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid

from channels.layers import get_channel_layer

from apps.sessions import groups
from apps.sessions.actor import SessionActor
from apps.sessions.loops import per_loop
from apps.sessions.models import LiveSession
from apps.sessions.upstream import open_upstream

log = logging.getLogger(__name__)

KINDS = (LiveSession.Kind.WEBRTC, LiveSession.Kind.SIP)
# Longest wait between two tries while the channel layer (Redis) is unreachable.
LAYER_RETRY_MAX = 1.0


class AttachedCall:
    """One attached call: its actor, and the channel-layer channel that feeds it."""

    def __init__(self, actor: SessionActor) -> None:
        self.actor = actor
        self.group = groups.session_group(actor.key)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        actor_task = self.actor.start()
        self._task = asyncio.get_running_loop().create_task(
            self._hold(actor_task), name=f"attached-{self.actor.key}"
        )

    async def _hold(self, actor_task: asyncio.Task) -> None:
        listener = asyncio.create_task(self._listen(), name=f"attached-listen-{self.actor.key}")
        try:
            await asyncio.wait({actor_task})
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            registry().pop(self.actor.key, None)

    async def _listen(self) -> None:
        """Put the session group's messages on the actor's mailbox until cancelled; through a
        channel-layer outage, join the group again once it answers (a restarted Redis has
        forgotten every group)."""
        layer, channel, delay = get_channel_layer(), None, 0.05
        try:
            while True:
                try:
                    if channel is None:
                        # The default prefix, as consumers' channels have (see
                        # services._ask_actor: channels_redis reads per prefix).
                        channel = await layer.new_channel()
                        await layer.group_add(self.group, channel)
                        delay = 0.05
                    message = await layer.receive(channel)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("channel layer unreachable for %s: %r; retrying", self.group, exc)
                    channel = None
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, LAYER_RETRY_MAX)
                    continue
                if message.get("type") in groups.SESSION_MESSAGE_TYPES:
                    self.actor.operator_message(message)
        finally:
            if channel is not None:
                try:
                    await layer.group_discard(self.group, channel)
                except Exception as exc:  # the membership expires on its own
                    log.info("leaving %s failed: %r", self.group, exc)


registry = per_loop(dict[uuid.UUID, AttachedCall])


def held(key: uuid.UUID) -> SessionActor | None:
    """The actor of an attached call this process holds, by its session key."""
    call = registry().get(key)
    return call.actor if call is not None else None


async def attach_call(
    *,
    call_id: str,
    kind: str,
    model: str,
    connected_by: str,
    caller_number: str = "",
    dialled_number: str = "",
    label: str = "",
) -> SessionActor:
    """Start steering call `call_id` through its sideband; returns the started actor."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if not call_id:
        raise ValueError("call_id must not be empty")
    actor = SessionActor(
        caller=None,
        model=model,
        connected_by=connected_by,
        opener=functools.partial(open_upstream, call_id=call_id),
        label=label,
        call={
            "kind": kind,
            "call_id": call_id,
            "caller_number": caller_number,
            "dialled_number": dialled_number,
        },
    )
    call = AttachedCall(actor)
    registry()[actor.key] = call
    call.start()
    return actor
