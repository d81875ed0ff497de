"""Channel-layer group names and message types, in one place (consumers and services use these),
and the actor's sends to them (`send`, `publish`).

- `session_group(key)`: the consumer that holds a live session. Services send it
  `session.request` (a stored request to pick up), `session.cancel`, `session.note` and
  `session.interrupt`, which carry `reply_to`, a channel the actor answers on, and
  `session.watch` (an operator's console starts, renews or stops watching; the actor answers
  a new watcher with `console.snapshot` on its channel, and one that asks with `snapshot`
  again), and `session.listen` (the same for a listener of the call's audio; a new one is
  answered `listen.started`).
- `watch_group(key)`: operators watching one session. The actor sends it `console.event`
  (an upstream event operators see and the caller does not, such as an out-of-band operator
  response's), `console.request` (a request's status changed), `console.transcript`
  (transcript changes, at most every 50 ms), `console.presence` (who is watching) and
  `console.ended`. The services send it `console.label` (an operator or a script labelled
  the session: `live_session_label_set`).
- `listen_group(key)`: operators listening to the call. The actor sends it `listen.audio`
  (`bytes`: the side, then PCM16 24 kHz) while anyone listens.
- `user_group(user_id)`: every socket an operator's login opened (the console's, listen-in's,
  a relay session's by cookie). apps/console/signals.py sends it `user.logged_out` when the
  operator logs out, is turned off or deleted, or has a new password: each socket closes.
- `token_group(token_id)`: the relay sessions an API token opened, itself or with a key it
  minted. `tokens.api_token_revoke` sends it `token.revoked`: each session ends.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import TYPE_CHECKING, Any

from channels.layers import get_channel_layer

from apps.realtime import relay

if TYPE_CHECKING:
    from apps.sessions.models import ResponseRequest

log = logging.getLogger(__name__)

SESSION_REQUEST = "session.request"
SESSION_CANCEL = "session.cancel"
SESSION_NOTE = "session.note"
SESSION_INTERRUPT = "session.interrupt"
SESSION_WATCH = "session.watch"
SESSION_LISTEN = "session.listen"
# An attached call is being hung up (`pending`), or its hang-up failed (apps/sessions/calls.py).
SESSION_HANGUP = "session.hangup"
SESSION_APPROVAL = "session.approval"  # an operator's decision on a tool approval request
# From this process's housekeeping only, never through a group: another process swept the
# session as lost while this one was held up (`Housekeeping.end_swept`).
SESSION_LOST = "session.lost"
SESSION_MESSAGE_TYPES = frozenset(
    {
        SESSION_REQUEST,
        SESSION_CANCEL,
        SESSION_NOTE,
        SESSION_INTERRUPT,
        SESSION_WATCH,
        SESSION_LISTEN,
        SESSION_HANGUP,
        SESSION_APPROVAL,
    }
)

ACTOR_REPLY = "session.reply"

# The relay core names what watchers are sent.
CONSOLE_EVENT = relay.WATCH_EVENT
CONSOLE_REQUEST = relay.WATCH_REQUEST
CONSOLE_TRANSCRIPT = relay.WATCH_TRANSCRIPT
CONSOLE_PRESENCE = relay.WATCH_PRESENCE
CONSOLE_SNAPSHOT = relay.WATCH_SNAPSHOT
CONSOLE_ENDED = relay.WATCH_ENDED
CONSOLE_LABEL = "console.label"  # the services', not the actor's: the label is not the relay's
# What the actor sends watchers: one of the above, already the browser's JSON text
# (`frame`, the message with its `console.` prefix dropped), and its `kind`.
CONSOLE_FRAME = "console.frame"
_PREFIX = "console."


def browser_json(message: dict) -> str:
    """A `console.*` message as the browser receives it: JSON, the prefix dropped."""
    kind = message["type"]
    return json.dumps(
        {**message, "type": kind[len(_PREFIX) :] if kind.startswith(_PREFIX) else kind}
    )


def console_frame(message: dict) -> dict:
    """A `console.*` message as the layer carries it to watchers' consumers."""
    return {"type": CONSOLE_FRAME, "kind": message["type"], "frame": browser_json(message)}


def request_message(request: ResponseRequest) -> dict[str, Any]:
    """What the actor needs of a stored operator request (the ping and the pickup carry it)."""
    return {
        "id": request.id,
        "origin": request.origin,
        "instructions": request.instructions,
        "instructions_mode": request.instructions_mode,
        "metadata": request.metadata,
        "conversation": request.conversation,
        "requested_by": request.requested_by,
        "created_at": request.created_at.timestamp(),  # for the nudge → start latency
    }


def operator_request(data: dict[str, Any]) -> relay.OperatorRequest:
    """The relay core's input for a `request_message`."""
    return relay.OperatorRequest(
        id=data["id"],
        origin=data.get("origin") or "api",
        instructions=data.get("instructions"),
        instructions_mode=data.get("instructions_mode") or "append",
        metadata=data.get("metadata"),
        conversation=data.get("conversation"),
        requested_by=data.get("requested_by") or "",
        created_at=data.get("created_at"),
    )


def session_group(key: uuid.UUID) -> str:
    return f"session.{key.hex}"


def watch_group(key: uuid.UUID) -> str:
    return f"watch.{key.hex}"


def listen_group(key: uuid.UUID) -> str:
    return f"listen.{key.hex}"


def user_group(user_id) -> str:
    return f"user.{user_id}"


def token_group(token_id: int) -> str:
    return f"token.{token_id}"


async def send(channel: str, message: dict[str, Any]) -> None:
    """One message to one channel (an asker, a watcher), a console one in the browser's JSON.
    A failure is logged: the asker or watcher gave up, and the session goes on."""
    try:
        if message.get("type", "").startswith(_PREFIX):
            message = console_frame(message)
        await get_channel_layer().send(channel, message)
    except Exception as exc:
        log.warning("sending to %s failed: %r", channel, exc)


async def publish(key: uuid.UUID, messages: list[dict[str, Any]]) -> None:
    """Messages to the operators watching session `key`, in order, each made into the
    browser's JSON once whatever the number of watchers. After a failure the rest are
    dropped: the watchers miss an update, and the session goes on."""
    group, layer = watch_group(key), get_channel_layer()
    for message in messages:
        try:
            await layer.group_send(group, console_frame(message))
        except Exception as exc:
            log.warning("publishing to %s failed: %r", group, exc)
            return
