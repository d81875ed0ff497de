"""Who may place a call or mint a key, for the HTTP endpoints under `/v1/realtime/`.

- `Authorization: Bearer <API token>` with scope realtime:connect (the one token check,
  apps/sessions/tokens.py);
- `Authorization: Bearer <minted key>` (`/v1/realtime/calls` only): the key's session
  configuration applies to the call;
- a logged-in console user's session cookie with the CSRF token (`/v1/realtime/calls` only):
  the "Call the agent" page. A cookie rides along with any site's request, so the CSRF check
  is what makes it this site's page.

Refusals are JSON in the service's error shape, naming the problem.

A token or a minted key is held to the token's rate limit of the REST hook (`OC_API_RATE`,
`OC_API_BURST`, one bucket a token in `tokens.rate_limits`): a key takes from the bucket of
the token that minted it (the key's row names it), or from its own where the row names none.
A console login (the "Call the agent" page) is not: the limit is a token's.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware

from apps.sessions import tokens
from apps.sessions.db import db_async
from apps.sessions.models import STEER, ApiToken, ClientSecret


@dataclass(frozen=True, slots=True)
class Caller:
    name: str  # recorded as who connected: token:NAME, key:NAME or a username
    session: dict[str, Any] = field(default_factory=dict)  # a minted key's configuration
    token_id: int | None = None  # the API token's, when it is one


def error(status: int, code: str, message: str, *, param: str | None = None, kind: str = "invalid_request_error") -> JsonResponse:
    """An error in the service's shape, which the `openai` SDK reads."""
    return JsonResponse({"error": {"type": kind, "code": code, "message": message, "param": param}}, status=status)


def bearer(request: HttpRequest) -> str | None:
    """The bearer credentials, "" for another scheme, None without an Authorization header."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, credentials = header.partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else ""


async def authenticate(request: HttpRequest, *, keys: bool, cookie: bool) -> Caller | JsonResponse:
    plain = bearer(request)
    if plain is None and cookie:
        return await _cookie_caller(request)
    if not plain:
        return error(
            401,
            "missing_token",
            "No token was sent: send `Authorization: Bearer <token>` (a token with the scope "
            "realtime:connect, from `manage.py create_api_token`"
            + (", or a key from POST /v1/realtime/client_secrets)." if keys else ")."),
        )
    if keys and plain.startswith(ClientSecret.PREFIX):
        try:
            secret = await db_async(tokens.client_secret_authenticate)(plain=plain)
        except tokens.ClientSecretExpired as expired:
            return error(
                401,
                "expired_client_secret",
                f"The client secret expired at {expired.secret.expires_at.isoformat()}: mint a new one "
                "with POST /v1/realtime/client_secrets.",
            )
        if secret is None:
            return error(
                401,
                "invalid_client_secret",
                "The client secret was refused: it is unknown, or the token that minted it "
                "was revoked.",
            )
        return _over_rate(tokens.key_bucket(secret)) or Caller(
            name=f"key:{secret.created_by}", session=dict(secret.session or {})
        )
    if plain.startswith(ClientSecret.PREFIX):
        return error(
            401,
            "invalid_token",
            "A client secret cannot be used here: send an API token with the scope "
            "realtime:connect (client secrets are minted with one, on your server).",
        )
    try:
        token = await db_async(tokens.api_token_authenticate)(plain=plain, scope=ApiToken.Scope.REALTIME_CONNECT)
    except tokens.MissingScope:
        return error(403, "missing_scope", "The token was refused: it lacks the scope realtime:connect.")
    if token is None:
        return error(401, "invalid_token", "The token was refused: it is unknown or revoked.")
    return _over_rate(token.pk) or Caller(name=f"token:{token.name}", token_id=token.pk)


def _over_rate(bucket: Hashable) -> JsonResponse | None:
    """The service's 429 when the caller's bucket is empty, else None. Called on the event
    loop (the views are async), as the buckets have no lock."""
    wait = tokens.rate_limits.take(bucket)
    if not wait:
        return None
    # The service's own words for a rate limit on requests (not on tokens of text).
    response = error(429, "rate_limit_exceeded", tokens.rate_limit_message(wait), kind="requests")
    response["Retry-After"] = tokens.retry_after(wait)
    return response


async def _cookie_caller(request: HttpRequest) -> Caller | JsonResponse:
    user = await request.auser()
    if not (user.is_authenticated and user.is_active):
        return error(
            401,
            "missing_token",
            "No token was sent: send `Authorization: Bearer <token>` (a token with the scope "
            "realtime:connect, or a key from POST /v1/realtime/client_secrets), or log in to the console.",
        )
    # The request body is read already (the view reads it first), so the CSRF check may parse it.
    if CsrfViewMiddleware(lambda request: None).process_view(request, None, (), {}) is not None:
        return error(
            403,
            "csrf_failed",
            "A console login is accepted only from this site's pages, with the CSRF token (header X-CSRFToken).",
        )
    if not await sync_to_async(user.has_perm)(STEER):
        return error(
            403,
            "permission_denied",
            "Placing calls from the console needs the permission to steer live sessions; ask an admin.",
        )
    return Caller(name=user.get_username())
