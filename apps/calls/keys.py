"""Short-lived keys of the project's own (`POST /v1/realtime/client_secrets`), in the shape of
the service's client secrets: `expires_after` `{"anchor": "created_at", "seconds": N}` with N
between 10 and 7200 (default 600), and the `session` configuration the key is for.

A key stands for the scope realtime:connect only: `/v1/realtime/calls` and the relay take it
until it expires (apps/sessions/tokens.py checks it). Only its digest is stored.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from apps.sessions.models import ApiToken, ClientSecret

DEFAULT_SECONDS = 600
MIN_SECONDS = 10
MAX_SECONDS = 7200


class InvalidParameter(ValueError):
    """A request field the service would refuse: `param` names it (`expires_after.seconds`)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


def lifetime(expires_after: Any) -> int:
    """Seconds a key lives, from the request's `expires_after` (None: the default)."""
    if expires_after is None:
        return DEFAULT_SECONDS
    if not isinstance(expires_after, dict):
        raise InvalidParameter("expires_after", "expires_after must be an object: {\"anchor\": \"created_at\", \"seconds\": N}.")
    anchor = expires_after.get("anchor", "created_at")
    if anchor != "created_at":
        raise InvalidParameter("expires_after.anchor", f"expires_after.anchor must be 'created_at', not {anchor!r}.")
    seconds = expires_after.get("seconds", DEFAULT_SECONDS)
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise InvalidParameter("expires_after.seconds", "expires_after.seconds must be an integer.")
    if not MIN_SECONDS <= seconds <= MAX_SECONDS:
        raise InvalidParameter(
            "expires_after.seconds",
            f"expires_after.seconds must be between {MIN_SECONDS} and {MAX_SECONDS}, not {seconds}.",
        )
    return seconds


def session_config(session: Any) -> dict[str, Any]:
    """The key's session configuration: a realtime session (the project relays no
    transcription sessions), its model the request's or OC_REALTIME_MODEL."""
    if session is None:
        session = {}
    if not isinstance(session, dict):
        raise InvalidParameter("session", "session must be an object (a realtime session configuration).")
    kind = session.get("type", "realtime")
    if kind != "realtime":
        raise InvalidParameter("session.type", f"session.type must be 'realtime', not {kind!r}.")
    model = session.get("model", settings.OC_REALTIME_MODEL)
    if not isinstance(model, str) or not model:
        raise InvalidParameter("session.model", "session.model must be a model name.")
    return {**session, "type": "realtime", "model": model}


def mint(*, expires_after: Any, session: Any, created_by: str) -> tuple[ClientSecret, str]:
    """A new key: (row, plain value). The plain value is not stored. Database work."""
    seconds = lifetime(expires_after)
    config = session_config(session)
    plain = ClientSecret.generate()
    now = timezone.now()
    secret = ClientSecret.objects.create(
        digest=ApiToken.hash(plain),
        session=config,
        created_by=created_by[:150],
        created_at=now,
        expires_at=now + timedelta(seconds=seconds),
    )
    return secret, plain


def delete_expired(*, older_than: timedelta = timedelta(days=1)) -> int:
    """Delete keys that expired more than `older_than` ago (kept a while so a late use is
    refused as expired, not as unknown). Returns how many."""
    deleted, _ = ClientSecret.objects.filter(expires_at__lt=timezone.now() - older_than).delete()
    return deleted
