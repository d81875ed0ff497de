"""A minted key's session configuration, applied to a relayed session. Pure, sans-I/O.

A key minted by `POST /v1/realtime/client_secrets` carries the session configuration its
issuer chose, and the service opens a client secret's session with it: its `session.created`
already shows it. The relay connects upstream with the project's own key, so it applies the
configuration itself, and shows the caller what the service would:

- `session.update` with the configuration goes upstream first, before any frame of the
  caller's. The upstream handles events in order, so an update of the caller's own comes after
  it and wins where the two differ. It holds what an update may (`ga.updatable_session`): not
  the model, which is chosen in the upstream's URL, nor a null the GA shape does not allow
  (minting lets one pass, `transcription: null`: left out, the setting stays off).
- The upstream's `session.created` is held until the answer to that update, the first
  `session.updated`. That answer is not forwarded; the held `session.created` goes out carrying
  the updated session instead.
- If the upstream refuses the update (an `error` naming its event id), the held
  `session.created` goes out as it came, then the error: the caller learns that the key's
  configuration was refused, as it would have been told when minting it from the service.

`RelayCore` owns one of these for a caller who connected with such a key; it imports nothing
beyond the standard library, `events` and `ga`.
"""

from __future__ import annotations

from typing import Any

from apps.realtime import events, ga

# Parts of a minted configuration that are not the session's to update.
NOT_UPDATED = frozenset({"model"})


def needs_update(config: dict[str, Any]) -> bool:
    """Whether a key's configuration says more than its type and model."""
    return any(key not in NOT_UPDATED | {"type"} for key in config)


class MintedSession:
    def __init__(self, config: dict[str, Any], *, event_id: str) -> None:
        self.event_id = event_id
        self.config = ga.updatable_session(config)
        self.settled = False  # the update was answered: events pass as they come
        self._created: dict[str, Any] | None = None

    def update_frame(self) -> str:
        return events.dumps({"type": "session.update", "event_id": self.event_id, "session": self.config})

    def outward(self, kind: str, event: dict[str, Any], frame: str) -> tuple[list[str], str | None]:
        """Until the update is answered: what the caller is sent before this upstream event,
        and the event itself (None: held back or replaced)."""
        if kind == "session.created":
            self._created = event
            return [], None
        if kind == "session.updated":
            self.settled = True
            created = self._created or {"type": "session.created", "event_id": event.get("event_id")}
            return [events.dumps({**created, "session": event.get("session")})], None
        if kind == "error" and events.error_fields(event)[0] == self.event_id:
            self.settled = True
            return ([events.dumps(self._created)] if self._created is not None else []), frame
        return [], frame
