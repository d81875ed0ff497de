"""The session page's steering forms, shared by the views that take them (`views`, `calls`,
`approvals`): who may post them, and how a form's outcome is answered — as JSON to the page's
script (`Accept: application/json`), else as a message on the session page it came from.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_POST

from apps.sessions.models import STEER
from apps.sessions.services import ServiceError

View = Callable[..., Awaitable[HttpResponse]]


def wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


WATCH_ONLY = "You may watch sessions but not steer them."


async def steerer(request: HttpRequest, session_id: str) -> Any:
    """The user who may steer, or the answer for one who may not: one not logged in goes to
    log in (`logged_out`); one who may only watch is refused (403), in words for the page's
    script, else with the forbidden page."""
    user = await request.auser()
    if not user.is_authenticated:
        return logged_out(request, session_id)
    if not await sync_to_async(user.has_perm)(STEER):
        if wants_json(request):
            return JsonResponse({"ok": False, "errors": {"form": WATCH_ONLY}}, status=403)
        raise PermissionDenied(WATCH_ONLY)
    return user


def form(view: View) -> View:
    """A steering form of a session's page (POST), for steerers only (`steerer`); the view
    gets the steerer as `user`."""

    @require_POST
    @functools.wraps(view)
    async def steer(request: HttpRequest, session_id: str, **kwargs: Any) -> HttpResponse:
        user = await steerer(request, session_id)
        if isinstance(user, HttpResponse):
            return user
        return await view(request, session_id, user=user, **kwargs)

    return steer


def back(session_id: str) -> str:
    return reverse("console:session", args=[session_id])


def logged_out(request: HttpRequest, session_id: str) -> HttpResponse:
    """No one is logged in (the operator logged out, or their login expired, while the page
    was open): the page's script is told so (401), a form without JavaScript goes to log in
    and back to the session page."""
    if wants_json(request):
        message = "You are logged out: log in again (in another tab, to keep what is typed here)."
        return JsonResponse({"ok": False, "errors": {"form": message}}, status=401)
    return redirect_to_login(back(session_id))


def refused(
    request: HttpRequest,
    session_id: str,
    exc: ServiceError,
    *,
    field: str = "form",
    anchor: str = "",
    **more: Any,
) -> HttpResponse:
    """A form the services refused: the error as JSON (beside `field`, with `more`), else as
    a message on the session page (at `anchor`)."""
    if wants_json(request):
        return JsonResponse({"ok": False, "errors": {field: exc.message}, **more}, status=exc.status)
    messages.error(request, exc.message)
    return redirect(back(session_id) + anchor)


def done(
    request: HttpRequest,
    session_id: str,
    message: str,
    answer: dict[str, Any],
    *,
    status: int = 200,
    anchor: str = "",
) -> HttpResponse:
    """A form that did its work: `answer` as JSON, else `message` on the session page (at
    `anchor`)."""
    if wants_json(request):
        return JsonResponse({"ok": True, **answer}, status=status)
    messages.success(request, message)
    return redirect(back(session_id) + anchor)
