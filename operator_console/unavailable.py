"""Pages and `/v1/` endpoints while the database is away.

A restart, a failover or a full connection pool is nobody's bug and passes: the answer is
`503` with `Retry-After`, saying so, not the `500` "something went wrong" that asks for a bug
report. The REST hook says the same in its own error body (`apps.api.api`); the relay's
handshake in `apps.sessions.consumers`. This covers the console, the admin and the login page
(a standalone page, as the 500 page is: rendering the site's layout would need the database)
and the OpenAI-compatible endpoints under `/v1/` (the service's error shape).
"""

from __future__ import annotations

import logging

from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.utils.deprecation import MiddlewareMixin

from apps.calls.auth import error
from apps.sessions.db import is_database_away

log = logging.getLogger(__name__)

RETRY_AFTER = "5"


def unavailable(request: HttpRequest, exception: Exception) -> HttpResponse:
    """The `503` of a request that found the database away (`exception`)."""
    log.warning(
        "%s %s: the database is unavailable: %s", request.method, request.path, exception
    )
    if request.path.startswith("/v1/"):
        response = error(
            503,
            "database_unavailable",
            "The server cannot answer now (its database is unavailable); "
            "try again in a moment.",
            kind="server_error",
        )
    else:
        response = HttpResponse(render_to_string("503.html"), status=503)
    response["Retry-After"] = RETRY_AFTER
    return response


class DatabaseUnavailableMiddleware(MiddlewareMixin):
    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        return unavailable(request, exception) if is_database_away(exception) else None
