"""Channel-layer group names and message types, in one place (consumers and services use these).

- `session_group(key)`: the consumer that holds a live session. Services send it
  `session.request` (a stored request to pick up), `session.cancel`, `session.note` and
  `session.interrupt`, which carry `reply_to`, a channel the actor answers on, and
  `session.watch` (an operator's console starts, renews or stops watching; the actor answers
  a new watcher with `console.snapshot` on its channel).
- `watch_group(key)`: operators watching one session. The actor sends it `console.event`
  (an upstream event operators see and the caller does not, such as an out-of-band operator
  response's), `console.request` (a request's status changed), `console.transcript`
  (transcript changes, at most every 50 ms), `console.presence` (who is watching) and
  `console.ended`.
"""

from __future__ import annotations

import json
import uuid

SESSION_REQUEST = "session.request"
SESSION_CANCEL = "session.cancel"
SESSION_NOTE = "session.note"
SESSION_INTERRUPT = "session.interrupt"
SESSION_WATCH = "session.watch"
SESSION_MESSAGE_TYPES = frozenset(
    {SESSION_REQUEST, SESSION_CANCEL, SESSION_NOTE, SESSION_INTERRUPT, SESSION_WATCH}
)

ACTOR_REPLY = "session.reply"

CONSOLE_EVENT = "console.event"
CONSOLE_REQUEST = "console.request"
CONSOLE_TRANSCRIPT = "console.transcript"
CONSOLE_PRESENCE = "console.presence"
CONSOLE_SNAPSHOT = "console.snapshot"
CONSOLE_ENDED = "console.ended"
# What the actor sends watchers: one of the above, already the browser's JSON text
# (`frame`, the message with its `console.` prefix dropped), and its `kind`.
CONSOLE_FRAME = "console.frame"
_PREFIX = "console."


def browser_json(message: dict) -> str:
    """A `console.*` message as the browser receives it: JSON, the prefix dropped."""
    kind = message["type"]
    return json.dumps({**message, "type": kind[len(_PREFIX):] if kind.startswith(_PREFIX) else kind})


def session_group(key: uuid.UUID) -> str:
    return f"session.{key.hex}"


def watch_group(key: uuid.UUID) -> str:
    return f"watch.{key.hex}"
