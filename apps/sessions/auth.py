"""Who may open a relay session: one place for the handshake's checks.

Any one of: `Authorization: Bearer <token>` with scope realtime:connect; the browser
subprotocol `openai-insecure-api-key.<token>`; a logged-in console user's session cookie.
A handshake that carries an Origin header must come from an allowed host; one that
authenticates by cookie must carry one (a cookie is sent by browsers on any site's behalf).

The relay route is not wrapped in Channels' session middleware: that wrapper inspects the
session on every frame sent, and the relay needs the cookie only here, at the handshake.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from types import SimpleNamespace
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib import auth
from django.http.cookie import parse_cookie
from django.http.request import validate_host

from apps.sessions import tokens
from apps.sessions.db import db_async
from apps.sessions.models import ApiToken

SUBPROTOCOL_KEY_PREFIX = "openai-insecure-api-key."


@dataclass(frozen=True, slots=True)
class Principal:
    kind: str  # "token" | "user"
    name: str  # token name or username: who is recorded as connecting
    token_id: int | None = None
    user_id: int | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str


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
        return Refusal("origin not allowed")
    plain = offered_token(scope)
    if plain is not None:
        try:
            token = await db_async(tokens.api_token_authenticate)(
                plain=plain, scope=ApiToken.Scope.REALTIME_CONNECT
            )
        except tokens.MissingScope:
            return Refusal("token without the scope realtime:connect")
        if token is None:
            return Refusal("unknown or revoked token")
        return Principal(kind="token", name=f"token:{token.name}", token_id=token.pk)
    user = await session_user(scope)
    if user is not None and user.is_authenticated and user.is_active:
        if origin is None:
            return Refusal("cookie authentication without an Origin header")
        return Principal(kind="user", name=user.get_username(), user_id=user.pk)
    return Refusal("no credentials")


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
