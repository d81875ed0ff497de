"""`GET /metrics`: this process's figures (apps/sessions/metrics.py) in the Prometheus text
format, for a bearer token with the scope `metrics:read` (CONTRACT section 8).

Refusals use the REST hook's error body: 401 without a valid token, 403 without the scope;
HEAD is answered as the REST hook answers it (`rest_view`).
The view is async, so the figures are read on the event loop that changes them.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from apps.api.api import error_response, rest_view
from apps.sessions import tokens
from apps.sessions.db import db_async
from apps.sessions.metrics import REGISTRY
from apps.sessions.models import ApiToken

SCOPE = ApiToken.Scope.METRICS_READ


@rest_view  # HEAD as the REST hook answers it: the GET's status and headers, no body
@csrf_exempt  # a bearer token, never a cookie: a 405 for other methods, not CSRF's 403
async def metrics(request: HttpRequest) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        refused = error_response(405, "method_not_allowed", f"{request.method} is not allowed here; allowed: GET, HEAD.")
        refused["Allow"] = "GET, HEAD"
        return refused
    scheme, _, plain = request.headers.get("Authorization", "").partition(" ")
    try:
        token = None
        if scheme.lower() == "bearer" and plain.strip():
            token = await db_async(tokens.api_token_authenticate)(plain=plain.strip(), scope=SCOPE)
    except tokens.MissingScope:
        return error_response(403, "missing_scope", f"This token lacks the scope '{SCOPE}'.", request=request)
    if token is None:
        refused = error_response(
            401, "unauthenticated", "Send a valid API token with the scope 'metrics:read' as 'Authorization: Bearer <token>'.", request=request
        )
        refused["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return refused
    wait = tokens.rate_limits.take(token.pk)
    if wait:
        message = tokens.rate_limit_message(wait)
        refused = error_response(429, "rate_limited", message, request=request)
        refused["Retry-After"] = tokens.retry_after(wait)
        return refused
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
