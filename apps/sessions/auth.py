"""Who may open a relay session: one place for the handshake's checks.

Any one of: `Authorization: Bearer <token>` with scope realtime:connect (or a short-lived key
minted by `POST /v1/realtime/client_secrets`, until it expires); the browser
subprotocol `openai-insecure-api-key.<token>`; a logged-in console user's session cookie.
A handshake that carries an Origin header must come from an allowed host; one that
authenticates by cookie must carry one, and it must be this site's own origin: the same
scheme, host and port as the handshake itself (a cookie is sent by browsers on any site's
behalf, and another port or plain http on the same host is another site).

A refusal says why, in words an SDK user can act on: a `code` for the JSON body the consumer
answers the handshake with. The status is 403 (400 for a bad `oc_label`, 429 over the rate
limit below), as CONTRACT section 1 says of a refused handshake; the `code` tells a missing
token from a refused one.

A token or a minted key is also held to the per-token rate limit that the REST hook and the
other endpoints under `/v1/realtime/` share (`tokens.rate_limits`; a key takes from the bucket
of the token that minted it, `tokens.key_bucket`): each handshake opens an upstream session,
which costs money, so a leaked token in a loop is refused `429` as it would be elsewhere. A
console login is not limited, as on `/v1/realtime/calls`: the limit is a token's.

The relay route is not wrapped in Channels' session middleware: that wrapper inspects the
session on every frame sent, and the relay needs the cookie only here, at the handshake.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from importlib import import_module
from types import SimpleNamespace
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.contrib import auth
from django.http.cookie import parse_cookie
from django.http.request import validate_host

from apps.sessions import groups, tokens
from apps.sessions.db import db_async
from apps.sessions.models import ApiToken, ClientSecret

SUBPROTOCOL_KEY_PREFIX = "openai-insecure-api-key."


@dataclass(frozen=True, slots=True)
class Principal:
    kind: str  # "token" | "key" (a minted client secret) | "user"
    name: str  # token name or username: who is recorded as connecting
    token_id: int | None = None
    user_id: int | None = None
    session: dict | None = None  # a minted key's session configuration
    # The group told when the credential is no longer good (a token revoked, an operator
    # logged out or turned off): the session it opened ends then.
    ends_with: str | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str  # for the log
    status: int = 403
    code: str = "forbidden"
    message: str = ""
    error_type: str = "invalid_request_error"  # the error body's `type`
    headers: tuple[tuple[str, str], ...] = ()  # for the answer, such as `Retry-After`


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin1")
    return None


def origin_allowed(origin: str) -> bool:
    host = urlsplit(origin).hostname
    if not host:
        return False
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:
        allowed = ["localhost", "127.0.0.1", "[::1]"]
    return validate_host(host, allowed)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_tuple(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin, the port made explicit; None if it is not one."""
    try:
        parts = urlsplit(url)
        scheme, host = parts.scheme.lower(), parts.hostname
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:  # a port that is not a number
        return None
    if not host or port is None:
        return None
    return scheme, host, port


def own_origin(scope) -> tuple[str, str, int] | None:
    """The origin a page of this site has when it opens this handshake: the handshake's
    scheme (ws → http, wss → https; `SECURE_PROXY_SSL_HEADER` is honoured as Django honours
    it for pages) and its Host header."""
    scheme = "https" if scope.get("scheme") in ("wss", "https") else "http"
    proxy = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy:
        name, secure = proxy
        header = name.removeprefix("HTTP_").replace("_", "-").lower().encode("latin1")
        forwarded = _header(scope, header)
        if forwarded is not None:
            scheme = "https" if forwarded.split(",")[0].strip() == secure else "http"
    host = _header(scope, b"host")
    if host is None and scope.get("server"):
        server_host, server_port = scope["server"][:2]
        host = f"[{server_host}]:{server_port}" if ":" in server_host else f"{server_host}:{server_port}"
    return _origin_tuple(f"{scheme}://{host}") if host else None


def same_origin(scope, origin: str) -> bool:
    mine = own_origin(scope)
    return mine is not None and _origin_tuple(origin) == mine


class SameOriginOnly:
    """For a socket that takes the console's session cookie (`/ws/console/`, listen-in): a
    handshake whose Origin is not this site's own (`same_origin`: scheme, host and port) is
    refused with 403 before the consumer runs. Wraps `AllowedHostsOriginValidator`, which
    refuses a missing Origin and foreign hosts but compares hosts alone: a page served from
    another port or over plain http on the same host, or from a subdomain that a pattern such
    as `.example.com` admits, is another site whose handshakes carry the operator's cookie."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        origin = _header(scope, b"origin")
        if origin is not None and not same_origin(scope, origin):
            return await WebsocketDenier()(scope, receive, send)
        return await self.app(scope, receive, send)


def offered_token(scope) -> str | None:
    authorization = _header(scope, b"authorization")
    if authorization is not None:
        scheme, _, credentials = authorization.partition(" ")
        return credentials.strip() if scheme.lower() == "bearer" else ""
    for protocol in scope.get("subprotocols", ()):
        if protocol.startswith(SUBPROTOCOL_KEY_PREFIX):
            return protocol[len(SUBPROTOCOL_KEY_PREFIX):]
    return None


async def authenticate_relay(scope) -> Principal | Refusal:
    origin = _header(scope, b"origin")
    if origin is not None and not origin_allowed(origin):
        return Refusal(
            "origin not allowed", 403, "origin_not_allowed", f"The Origin {origin!r} is not one of this server's hosts."
        )
    plain = offered_token(scope)
    if plain is not None:
        try:
            token = await db_async(tokens.api_token_authenticate)(
                plain=plain, scope=ApiToken.Scope.REALTIME_CONNECT
            )
        except tokens.MissingScope:
            return Refusal(
                "token without the scope realtime:connect",
                403,
                "missing_scope",
                "The token was refused: it lacks the scope realtime:connect.",
            )
        if token is None and plain.startswith(ClientSecret.PREFIX):
            return await _client_secret_principal(plain)
        if token is None:
            return Refusal(
                "unknown or revoked token",
                403,
                "invalid_token",
                "The token was refused: it is unknown or revoked (check the bearer token or the "
                "subprotocol openai-insecure-api-key.<token>).",
            )
        return _over_rate(token.pk) or Principal(
            kind="token", name=f"token:{token.name}", token_id=token.pk,
            ends_with=groups.token_group(token.pk),
        )
    user = await session_user(scope)
    if user is not None and user.is_authenticated and user.is_active:
        if origin is None:
            return Refusal(
                "cookie authentication without an Origin header",
                403,
                "origin_required",
                "A console login cookie is accepted only from this site's pages (with an Origin header).",
            )
        if not same_origin(scope, origin):
            return Refusal(
                "cookie authentication from another origin",
                403,
                "origin_mismatch",
                f"A console login cookie is accepted only from this site's own origin, not {origin!r}.",
            )
        return Principal(
            kind="user", name=user.get_username(), user_id=user.pk,
            ends_with=groups.user_group(user.pk),
        )
    return Refusal(
        "no credentials",
        403,
        "missing_token",
        "No token was sent: send `Authorization: Bearer <token>` (a token with the scope "
        "realtime:connect, from `manage.py create_api_token`) or the subprotocol "
        "`openai-insecure-api-key.<token>`.",
    )


async def _client_secret_principal(plain: str) -> Principal | Refusal:
    """A key minted by `POST /v1/realtime/client_secrets`: it may connect until it expires."""
    try:
        secret = await db_async(tokens.client_secret_authenticate)(plain=plain)
    except tokens.ClientSecretExpired as expired:
        return Refusal(
            "expired client secret",
            403,
            "expired_client_secret",
            f"The client secret expired at {expired.secret.expires_at.isoformat()}: mint a new one "
            "with POST /v1/realtime/client_secrets.",
        )
    if secret is None:
        return Refusal(
            "unknown client secret",
            403,
            "invalid_token",
            "The client secret was refused: it is unknown, or the token that minted it "
            "was revoked.",
        )
    minter = groups.token_group(secret.token_id) if secret.token_id is not None else None
    return _over_rate(tokens.key_bucket(secret)) or Principal(
        kind="key", name=f"key:{secret.created_by}", session=secret.session, ends_with=minter
    )


def _over_rate(bucket: Hashable) -> Refusal | None:
    """The service's 429 for too many requests when the caller's bucket is empty, else None.
    Taken on the event loop (the handshake's auth is async), as the buckets have no lock."""
    wait = tokens.rate_limits.take(bucket)
    if not wait:
        return None
    return Refusal(
        "over the token's rate limit",
        429,
        "rate_limit_exceeded",
        tokens.rate_limit_message(wait),
        error_type="requests",
        headers=(("Retry-After", tokens.retry_after(wait)),),
    )


async def session_user(scope):
    """The user of the handshake's session cookie: None without one, else a (possibly
    anonymous) user."""
    cookie = _header(scope, b"cookie")
    if not cookie:
        return None
    session_key = parse_cookie(cookie).get(settings.SESSION_COOKIE_NAME)
    if not session_key:
        return None
    return await db_async(_user_for_session_key)(session_key)


def _user_for_session_key(session_key: str):
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    return auth.get_user(SimpleNamespace(session=store))
