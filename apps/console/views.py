"""Operator pages. Server-rendered first; forms work without JavaScript (POST, redirect,
message) and answer JSON to the page's scripts (`Accept: application/json`).

Views are thin: they check who may do what, translate the form, and call the services of
`apps.sessions` — the same ones the REST hook calls.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from apps.console import feed
from apps.console.forms import Nudge, parse_nudge
from apps.sessions import selectors, services
from apps.sessions.models import ResponseRequest

STEER = "oc_sessions.steer_session"


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def request_json(row: ResponseRequest) -> dict[str, Any]:
    """A request as the session page's scripts show it (the REST hook's fields)."""
    return {
        "id": row.id,
        "origin": row.origin,
        "status": row.status,
        "instructions": row.instructions,
        "instructions_mode": row.instructions_mode,
        "sent_instructions": row.sent_instructions,
        "conversation": row.conversation or "auto",
        "metadata": row.metadata,
        "requested_by": row.requested_by,
        "response_id": row.response_id or None,
        "output_text": row.output_text or None,
        "error": row.error,
        "created_at": row.created_at.isoformat() if row.created_at else None,
        "sent_at": row.sent_at.isoformat() if row.sent_at else None,
        "started_at": row.started_at.isoformat() if row.started_at else None,
        "finished_at": row.finished_at.isoformat() if row.finished_at else None,
    }


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    scheme = "wss" if request.is_secure() else "ws"
    return render(
        request,
        "console/dashboard.html",
        {
            "sessions": feed.summaries(),
            "stats": selectors.nudge_stats(),
            "relay_url": f"{scheme}://{request.get_host()}/v1",
            "upstream": settings.OC_UPSTREAM_URL or "embedded simulator",
        },
    )


@login_required
def session_page(request: HttpRequest, session_id: str) -> HttpResponse:
    session = selectors.session_get(session_id=session_id)
    if session is None:
        raise Http404(f"No session with id '{session_id}'.")
    rows = selectors.request_list(session=session, limit=1000)
    return render(
        request,
        "console/session.html",
        {
            "session": session,
            "requests": rows,
            "requests_json": [request_json(row) for row in rows],
            "can_steer": request.user.has_perm(STEER),
            "nudge": Nudge(rows=[("", "")]),
            "limits": {
                "metadata_pairs": 15,
                "metadata_key": 64,
                "metadata_value": 512,
                "instructions": 32768,
            },
        },
    )


async def _steerer(request: HttpRequest):
    user = await request.auser()
    if not user.is_authenticated:
        return None
    if not await sync_to_async(user.has_perm)(STEER):
        raise PermissionDenied("You may watch sessions but not steer them.")
    return user


def _back(session_id: str) -> str:
    return reverse("console:session", args=[session_id])


def _refused(request: HttpRequest, session_id: str, exc: services.ServiceError) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse({"ok": False, "errors": {"form": exc.message}}, status=exc.status)
    messages.error(request, exc.message)
    return redirect(_back(session_id))


@require_POST
async def nudge(request: HttpRequest, session_id: str) -> HttpResponse:
    user = await _steerer(request)
    if user is None:
        return redirect(f"{settings.LOGIN_URL}?next={_back(session_id)}")
    form = parse_nudge(request.POST)
    if not form.ok:
        if _wants_json(request):
            return JsonResponse({"ok": False, "errors": form.errors}, status=422)
        for name, message in form.errors.items():
            messages.error(request, f"{name.replace('_', ' ')}: {message}")
        return redirect(_back(session_id))
    try:
        if form.as_note:
            note = await services.note_add(
                session_id=session_id, text=form.instructions, role="system", requested_by=user.get_username()
            )
            answer: dict[str, Any] = {"ok": True, "note": {"id": note.id, "text": note.text}}
            done = "Note added to the conversation."
        else:
            row, _ = await services.response_request_submit(
                session_id=session_id,
                overrides=form.overrides,
                origin=ResponseRequest.Origin.CONSOLE,
                requested_by=user.get_username(),
            )
            answer = {"ok": True, "request": request_json(row)}
            done = f"Response requested ({row.id}): {row.status}."
    except services.ServiceError as exc:
        return _refused(request, session_id, exc)
    if _wants_json(request):
        return JsonResponse(answer, status=202 if "request" in answer else 201)
    messages.success(request, done)
    return redirect(_back(session_id))


@require_POST
async def cancel(request: HttpRequest, request_id: str) -> HttpResponse:
    user = await _steerer(request)
    row = await sync_to_async(selectors.request_get)(request_id=request_id)
    if row is None:
        raise Http404(f"No response request with id '{request_id}'.")
    session_id = row.session.upstream_id
    if user is None:
        return redirect(f"{settings.LOGIN_URL}?next={_back(session_id)}")
    try:
        row = await services.response_request_cancel(request_id=request_id)
    except services.ServiceError as exc:
        return _refused(request, session_id, exc)
    if _wants_json(request):
        return JsonResponse({"ok": True, "request": request_json(row)})
    messages.success(request, f"Cancelled {request_id}.")
    return redirect(_back(session_id))


@require_POST
async def interrupt(request: HttpRequest, session_id: str) -> HttpResponse:
    user = await _steerer(request)
    if user is None:
        return redirect(f"{settings.LOGIN_URL}?next={_back(session_id)}")
    try:
        response_id = await services.session_interrupt(session_id=session_id)
    except services.ServiceError as exc:
        return _refused(request, session_id, exc)
    if _wants_json(request):
        return JsonResponse({"ok": True, "response_id": response_id}, status=202)
    messages.success(request, f"Interrupted {response_id}." if response_id else "No response was active.")
    return redirect(_back(session_id))


def home(request: HttpRequest) -> HttpResponse:
    return redirect("console:dashboard")
