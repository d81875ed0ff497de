"""Short-lived keys of the project's own (`POST /v1/realtime/client_secrets`), in the shape of
the service's client secrets: `expires_after` `{"anchor": "created_at", "seconds": N}` with N
between 10 and 7200 (default 600), and the `session` configuration the key is for.

A key stands for the scope realtime:connect only: `/v1/realtime/calls` and the relay take it
until it expires (apps/sessions/tokens.py checks it). Only its digest is stored.

What the service would refuse is refused when the key is minted, in its words, not when a
call later uses the key: a parameter it does not know, a value of the wrong type (a null
passes: the service turns settings off with it), a value that is none of a fixed set's
(`output_modalities`, a format's `type`), instructions over the limit, a number out of its
range (`max_output_tokens`, `audio.output.speed`), and any text (key or value) in the
session configuration that cannot be stored or sent on (a NUL, a lone surrogate;
`events.find_problem`). The rest of the configuration goes to the upstream as
given, which judges it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from apps.realtime import ga
from apps.realtime.events import find_problem, json_type
from apps.sessions.models import ApiToken, ClientSecret
from apps.sessions.overrides import MAX_INSTRUCTIONS_CHARS

DEFAULT_SECONDS = 600
MIN_SECONDS = 10
MAX_SECONDS = 7200
PARAMETERS = ("expires_after", "session")  # the request body's, as the service takes them
# The session's numbers the service bounds (its API reference: "an integer between 1 and 4096,
# or inf"; a spoken reply's speed "0.25 to 1.5"), by their path in the session.
RANGES: dict[tuple[str, ...], tuple[float, float]] = {
    ("max_output_tokens",): (1, 4096),
    ("audio", "output", "speed"): (0.25, 1.5),
}


class InvalidParameter(ValueError):
    """A request field the service would refuse: `param` names it (`expires_after.seconds`),
    `code` is the service's (`unknown_parameter`, `invalid_type`, `invalid_value`, …)."""

    def __init__(self, param: str | None, message: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.param = param
        self.message = message
        self.code = code

    @classmethod
    def unknown(cls, param: str) -> InvalidParameter:
        return cls(param, f"Unknown parameter: '{param}'.", "unknown_parameter")

    @classmethod
    def wrong_type(
        cls, param: str | None, expected: str, value: Any, *, what: str | None = None
    ) -> InvalidParameter:
        """`what` names a value that is no parameter (the body itself: `param` None)."""
        kind = json_type(value)
        got = ga.expected_types((kind,))
        where = what or f"'{param}'"
        message = f"Invalid type for {where}: expected {expected}, but got {got} instead."
        return cls(param, message, "invalid_type")


def check_parameters(body: dict[str, Any]) -> None:
    """Refuse a top-level parameter the service does not take."""
    for name in body:
        if name not in PARAMETERS:
            raise InvalidParameter.unknown(name)


def lifetime(expires_after: Any) -> int:
    """Seconds a key lives, from the request's `expires_after` (None: the default)."""
    if expires_after is None:
        return DEFAULT_SECONDS
    if not isinstance(expires_after, dict):
        raise InvalidParameter.wrong_type(
            "expires_after", 'an object ({"anchor": "created_at", "seconds": N})', expires_after
        )
    for name in expires_after:
        if name not in ("anchor", "seconds"):
            raise InvalidParameter.unknown(f"expires_after.{name}")
    anchor = expires_after.get("anchor", "created_at")
    if anchor != "created_at":
        raise InvalidParameter(
            "expires_after.anchor",
            f"Invalid value: {_shown(anchor)}. Supported values are: 'created_at'.",
        )
    seconds = expires_after.get("seconds", DEFAULT_SECONDS)
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise InvalidParameter.wrong_type("expires_after.seconds", "an integer", seconds)
    _check_range("expires_after.seconds", seconds, MIN_SECONDS, MAX_SECONDS)
    return seconds


def session_config(session: Any) -> dict[str, Any]:
    """The key's session configuration: a realtime session (the project relays no
    transcription sessions), its model the request's or OC_REALTIME_MODEL. Instructions are
    a string of at most MAX_INSTRUCTIONS_CHARS, the limit of per-response instructions."""
    if session is None:
        session = {}
    if not isinstance(session, dict):
        raise InvalidParameter.wrong_type(
            "session", "an object (a realtime session configuration)", session
        )
    problem = find_problem(session, "session")
    if problem is not None:
        path, reason = problem
        raise InvalidParameter(path, f"Invalid '{path}': it {reason}.")
    kind = session.get("type", "realtime")
    if kind != "realtime":
        raise InvalidParameter("session.type", f"session.type must be 'realtime', not {kind!r}.")
    unknown = ga.unknown_session_parameter(session)
    if unknown is not None:  # the service refuses it now, not when the key is used
        raise InvalidParameter.unknown(unknown)
    mistyped = ga.mistyped_session_parameter(session, null_allowed=True)
    if mistyped is not None:
        param, allowed, value = mistyped
        raise InvalidParameter.wrong_type(param, ga.expected_types(allowed), value)
    unsupported = ga.unsupported_session_value(session)
    if unsupported is not None:
        param, choices, value = unsupported
        raise InvalidParameter(
            param, f"Invalid value: {_shown(value)}. Supported values are: {_listed(choices)}."
        )
    _check_ranges(session)
    model = session.get("model", settings.OC_REALTIME_MODEL)
    if not isinstance(model, str):
        raise InvalidParameter.wrong_type("session.model", "a string", model)
    if not model:
        raise InvalidParameter("session.model", "session.model must be a model name.")
    instructions = session.get("instructions", "")
    if not isinstance(instructions, str):
        raise InvalidParameter.wrong_type("session.instructions", "a string", instructions)
    if len(instructions) > MAX_INSTRUCTIONS_CHARS:
        raise InvalidParameter(
            "session.instructions",
            "Invalid 'session.instructions': string too long. Expected a string with maximum "
            f"length {MAX_INSTRUCTIONS_CHARS}, but got a string with length {len(instructions)} "
            "instead.",
            "string_above_max_length",
        )
    return {**session, "type": "realtime", "model": model}


def _check_ranges(session: dict[str, Any]) -> None:
    """Refuse a number out of the service's range (`RANGES`), in its words. The types are
    checked already: a number here is an int or a float (a bool is refused as a type)."""
    for path, (low, high) in RANGES.items():
        value: Any = session
        for name in path:
            value = value.get(name) if isinstance(value, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            _check_range("session." + ".".join(path), value, low, high)


def _check_range(param: str, value: float, low: float, high: float) -> None:
    """Refuse a number outside low–high as the service does, naming the bound it passed."""
    kind = "integer" if isinstance(value, int) else "decimal"
    if value > high:
        raise InvalidParameter(
            param,
            f"Invalid '{param}': {kind} above maximum value. Expected a value <= {high}, "
            f"but got {value} instead.",
            f"{kind}_above_max_value",
        )
    if value < low:
        raise InvalidParameter(
            param,
            f"Invalid '{param}': {kind} below minimum value. Expected a value >= {low}, "
            f"but got {value} instead.",
            f"{kind}_below_min_value",
        )


def _shown(value: Any) -> str:
    return f"'{value}'" if isinstance(value, str) else str(value)


def _listed(choices: tuple[Any, ...]) -> str:
    """'a', 'b' and 'c', as the service lists them."""
    shown = [_shown(choice) for choice in choices]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} and {shown[-1]}"


def mint(
    *, expires_after: Any, session: Any, created_by: str, token_id: int | None = None
) -> tuple[ClientSecret, str]:
    """A new key: (row, plain value). The plain value is not stored. Database work."""
    seconds = lifetime(expires_after)
    config = session_config(session)
    plain = ClientSecret.generate()
    now = timezone.now()
    secret = ClientSecret.objects.create(
        digest=ApiToken.hash(plain),
        session=config,
        created_by=created_by[:150],
        token_id=token_id,
        created_at=now,
        expires_at=now + timedelta(seconds=seconds),
    )
    return secret, plain


def minted(secret: ClientSecret, plain: str) -> dict[str, Any]:
    """The answer to a mint, in the service's shape (the SDK's `ClientSecretCreateResponse`):
    its `session` is a `realtime.session` object with an `id`, as the service's is. The id
    names the key's configuration, not a session it opens (each of those is named by the
    upstream); neither is stored with the configuration, which goes upstream as it is."""
    config_id = f"sess_oc_{secret.digest[:20]}"
    named = {"type": "realtime", "object": "realtime.session", "id": config_id}
    return {
        "value": plain,
        "expires_at": int(secret.expires_at.timestamp()),
        "session": {**named, **secret.session},
    }


def delete_expired(*, older_than: timedelta = timedelta(days=1)) -> int:
    """Delete keys that expired more than `older_than` ago (kept a while so a late use is
    refused as expired, not as unknown). Returns how many."""
    deleted, _ = ClientSecret.objects.filter(expires_at__lt=timezone.now() - older_than).delete()
    return deleted
