"""API tokens: create, authenticate, revoke, and each token's rate limit. Tokens are stored
only as digests.

`api_token_authenticate` is the one token check: the REST hook's auth and the relay's
handshake (apps/sessions/auth.py) both call it. `client_secret_authenticate` checks the
short-lived keys minted by `POST /v1/realtime/client_secrets` (apps/calls): they stand for the
scope realtime:connect only, so only the relay's handshake and `/v1/realtime/calls` take them.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Hashable, Iterable
from datetime import timedelta

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from apps.sessions import groups
from apps.sessions.models import ApiToken, ClientSecret

log = logging.getLogger(__name__)

# last_used_at is a hint for humans, so it is written at most this often per token.
_LAST_USED_GRANULARITY = timedelta(minutes=1)


class InvalidScope(ValueError):
    pass


class InvalidName(ValueError):
    """The token's name cannot be taken (the message names the field, `name`)."""

    field = "name"


class MissingScope(Exception):
    """The token is valid but lacks the scope asked for (the REST hook's 403)."""

    def __init__(self, token: ApiToken, scope: str) -> None:
        super().__init__(f"the token '{token.name}' lacks the scope '{scope}'")
        self.token = token
        self.scope = scope


def api_token_create(*, name: str, scopes: Iterable[str] | None = None, created_by=None) -> tuple[ApiToken, str]:
    """Create a token; returns (row, plain token). The plain token is not stored anywhere."""
    chosen = list(dict.fromkeys(scopes or ApiToken.DEFAULT_SCOPES))
    unknown = [s for s in chosen if s not in ApiToken.ALL_SCOPES]
    if unknown:
        raise InvalidScope(
            f"unknown scope {', '.join(unknown)}; choose from {', '.join(ApiToken.ALL_SCOPES)}"
        )
    name = name.strip()
    if not name:
        raise InvalidName("a token needs a name")
    if (problem := _name_too_long(name)) is not None:
        raise InvalidName(problem)
    plain = ApiToken.generate()
    token = ApiToken.objects.create(
        name=name,
        prefix=plain[:10],
        digest=ApiToken.hash(plain),
        scopes=chosen,
        created_by=created_by,
    )
    return token, plain


def api_token_name_problem(name: str) -> str | None:
    """Why the admin will not name a new token so (None: it may). A request's `requested_by`
    names its token (`token:<name>`), so a person making a token there is asked for a name
    no other token has, ignoring case; revoked ones count too, as their requests stay in the
    history. `create_api_token` (CONTRACT section 1) makes a token for any name, and tokens
    made before this may share names: nothing in the database holds it."""
    if (problem := _name_too_long(name)) is not None:
        return problem
    token = _tokens_by_name().get(name.casefold())
    if token is None:
        return None
    revoked = ", revoked" if token.revoked_at is not None else ""
    return (
        f"name '{name}' is taken by another token ('{token.name}'{revoked}): give each token "
        "a name of its own, as each request's requested_by names its token"
    )


def _name_too_long(name: str) -> str | None:
    limit = ApiToken._meta.get_field("name").max_length
    if len(name) > limit:
        return f"name is {len(name)} characters; at most {limit} are allowed"
    return None


def api_token_free_name(base: str) -> str:
    """`base`, or else the first of `base-2`, `base-3`, … that no token has: for a command
    that makes itself a token at each start."""
    taken = _tokens_by_name()
    name, n = base, 1
    while name.casefold() in taken:
        n += 1
        name = f"{base}-{n}"
    return name


def _tokens_by_name() -> dict[str, ApiToken]:
    """Every token by its name case-folded. Compared here, not in SQL: SQLite's LIKE and
    lower() fold ASCII letters alone. Tokens are few: made by hand, and one a `make run`."""
    return {token.name.casefold(): token for token in ApiToken.objects.only("name", "revoked_at")}


def api_token_authenticate(*, plain: str, scope: str) -> ApiToken | None:
    """The unrevoked token with this value: None if there is none, MissingScope if it lacks
    `scope`. Records when it was last used (at most once a minute). Database work."""
    if not plain:
        return None
    token = ApiToken.objects.filter(digest=ApiToken.hash(plain), revoked_at__isnull=True).first()
    if token is None:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > _LAST_USED_GRANULARITY:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    if not token.has_scope(scope):
        raise MissingScope(token, scope)
    return token


class ClientSecretExpired(Exception):
    """The minted key exists but its `expires_at` has passed (a 401 that says so)."""

    def __init__(self, secret: ClientSecret) -> None:
        super().__init__(f"the client secret expired at {secret.expires_at.isoformat()}")
        self.secret = secret


def client_secret_authenticate(*, plain: str) -> ClientSecret | None:
    """The minted key with this value: None if it is not one (wrong prefix or unknown) or the
    token that minted it was revoked since, ClientSecretExpired once it has expired. Database
    work. (Keys minted before keys named their token have none, and live out their minutes.)"""
    if not plain or not plain.startswith(ClientSecret.PREFIX):
        return None
    live_token = Q(token__isnull=True) | Q(token__revoked_at__isnull=True)
    secret = ClientSecret.objects.filter(live_token, digest=ApiToken.hash(plain)).first()
    if secret is None:
        return None
    if secret.expires_at <= timezone.now():
        raise ClientSecretExpired(secret)
    return secret


def api_token_revoked(*, token_id: int) -> bool:
    """Whether the token was revoked (or deleted) since it was taken: for what outlives a
    request, such as an event stream. Database work."""
    return not ApiToken.objects.filter(pk=token_id, revoked_at__isnull=True).exists()


def api_token_revoke(*, token: ApiToken) -> None:
    """Refuse the token from now on, and end the relay sessions it (or a key it minted) has
    open, in every process: a leaked token must not talk on to the model through them."""
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        transaction.on_commit(functools.partial(_end_sessions_of, token.pk))


def _end_sessions_of(token_id: int) -> None:
    try:
        group = groups.token_group(token_id)
        async_to_sync(get_channel_layer().group_send)(group, {"type": "token.revoked"})
    except Exception as exc:  # the layer is away: the sessions go on, the token is refused
        log.warning("could not end the relay sessions of token %s: %r", token_id, exc)


class TokenBuckets:
    """Per-token rate limit: `OC_API_RATE` requests a second on average, bursts of
    `OC_API_BURST` (a token bucket per token). One bucket a token for every endpoint that takes
    it: the REST hook, `/metrics`, `/v1/realtime/client_secrets`, `/v1/realtime/calls` and the
    relay's handshake, where a minted key takes from the bucket of the token that minted it
    (`key_bucket`).

    Kept in each process: with N processes a token may make N times the rate in all. Taken
    only on the event loop (each caller's auth, after its database call), so it needs no lock.
    """

    def __init__(self) -> None:
        self._buckets: dict[Hashable, tuple[float, float]] = {}  # key → (tokens left, at)

    def take(self, key: Hashable) -> float:
        """Take one request's worth: 0.0 if allowed, else the seconds until one is. `key` is
        the token's id, or another key of the caller's that no token id equals."""
        rate, burst = settings.OC_API_RATE, settings.OC_API_BURST
        now = time.monotonic()
        tokens, at = self._buckets.get(key, (burst, now))
        tokens = min(burst, tokens + (now - at) * rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / rate
        self._buckets[key] = (tokens - 1.0, now)
        return 0.0


rate_limits = TokenBuckets()


def key_bucket(secret: ClientSecret) -> Hashable:
    """The bucket a minted key's requests take from: the token's that minted it, so that
    minting keys does not multiply a token's rate; or the key's own where its row names no
    token (keys minted before keys named their token), which no token's id equals."""
    return secret.token_id if secret.token_id is not None else ("key", secret.pk)


def rate_limit_message(wait: float) -> str:
    """What a request over its token's rate is told, wherever it was refused: the limit, the
    settings that make it, and when to try again."""
    return (
        f"This token may make {settings.OC_API_RATE:g} requests a second (OC_API_RATE), in "
        f"bursts of {settings.OC_API_BURST} (OC_API_BURST), with the keys it minted; "
        f"retry after {wait:.2f} s."
    )


def retry_after(wait: float) -> str:
    """The `Retry-After` header for a wait of `wait` seconds: whole seconds, at least one."""
    return str(max(1, math.ceil(wait)))
