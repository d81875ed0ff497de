"""Operator pages. Server-rendered first; forms work without JavaScript and answer JSON to the
page's scripts (`Accept: application/json`).

Without JavaScript the nudge form posts, and a request made redirects back with a message; a
refused form re-renders the page with what was typed and each error beside its field (422),
and "Add a metadata row" re-renders it with one more row.

Views are thin: they check who may do what, translate the form, and call the services of
`apps.sessions` — the same ones the REST hook calls. Requests are shown in the REST hook's own
shape, `ResponseRequest.to_dict()`.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import REASON_NO_CSRF_COOKIE
from django.shortcuts import redirect, render
from django.views import defaults
from django.views.decorators.http import require_POST

from apps.console import feed, steering, timezones, transcripts
from apps.console.approvals import approvals_context
from apps.console.dashboard import (
    DEFAULT_SORT,
    KINDS,
    ORIGINS,
    STATES,
    View,
    headings,
    sort_choices,
)
from apps.console.forms import Nudge
from apps.console.models import OperatorProfile
from apps.console.recordings import audio_context
from apps.realtime.transcript import NEVER_TRANSCRIBED, UNTRANSCRIBED
from apps.sessions import overrides, selectors, services
from apps.sessions.costs import cost_usd
from apps.sessions.models import END_REASON_WORDS, STEER, LiveSession, ResponseRequest

OPERATOR_ORIGINS = (ResponseRequest.Origin.CONSOLE, ResponseRequest.Origin.API)
# The requests a session's page holds, the latest (the queue, the history, the chart's points).
PAGE_REQUESTS = 1000
OVER = (LiveSession.Status.ENDED, LiveSession.Status.FAILED)
LIMITS = {
    "metadata_pairs": overrides.MAX_METADATA_PAIRS,
    "metadata_key": overrides.MAX_METADATA_KEY_CHARS,
    "metadata_value": overrides.MAX_METADATA_VALUE_CHARS,
    "instructions": overrides.MAX_INSTRUCTIONS_CHARS,
}


def not_found(request: HttpRequest, message: str) -> HttpResponse:
    """The console's 404 page, rendered here rather than raised: with DEBUG on (`make run`)
    a raised `Http404` shows Django's technical page, no page for an operator on a stale link."""
    return defaults.page_not_found(request, Http404(message))


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    """The live sessions: searched, filtered, sorted and paged as the query string says (the
    same `View` the page's socket then watches)."""
    scheme = "wss" if request.is_secure() else "ws"
    view = View.from_query(request.GET)
    page = view.page_of(feed.summaries())
    return render(
        request,
        "console/dashboard.html",
        {
            "view": view,
            "page": page,
            "headings": headings(view),
            "sorts": sort_choices(),
            "choices": {"state": STATES, "kind": KINDS, "origin": ORIGINS},
            "previous": view.link(page=page["page"] - 1) if page["page"] > 1 else None,
            "next": view.link(page=page["page"] + 1) if page["page"] < page["pages"] else None,
            "filtered": bool(view.params(sort=DEFAULT_SORT, page=1)),
            "stats": selectors.nudge_stats(),
            "relay_url": f"{scheme}://{request.get_host()}/v1",
            "upstream": settings.OC_UPSTREAM_URL or "embedded simulator",
        },
    )


@login_required
def session_page(request: HttpRequest, session_id: str) -> HttpResponse:
    return _session_page(request, session_id, Nudge())


def _session_page(
    request: HttpRequest,
    session_id: str,
    nudge: Nudge,
    *,
    status: int = 200,
    refer: dict[str, str] | None = None,
    label: dict[str, str] | None = None,
) -> HttpResponse:
    """The page; `nudge` is the nudge form (bound when it was refused), `refer` a refused
    transfer (`target`, `error`), shown open with what was typed, `label` a refused label
    (`text`, `error`), likewise."""
    session = selectors.session_get(session_id=session_id)
    if session is None:
        return not_found(request, f"No session with id '{session_id}'.")
    rows = selectors.request_latest(session=session, limit=PAGE_REQUESTS)
    transcript, transcript_gone = transcripts.ended_transcript(session, rows)
    return render(
        request,
        "console/session.html",
        {
            "session": session,
            "session_cost_usd": cost_usd(model=session.model, usage=session.usage or {}),
            "over": session.status in OVER,
            "requests": rows,
            "requests_shown": queue_first(rows, relayed=session.kind == LiveSession.Kind.RELAY),
            "transcript": transcript,
            "transcript_gone": transcript_gone if session.status in OVER else None,
            "untranscribed": (UNTRANSCRIBED, NEVER_TRANSCRIBED),
            "requests_json": [row.to_dict() for row in rows],
            "end_words": {reason.value: words for reason, words in END_REASON_WORDS.items()},
            "can_steer": request.user.has_perm(STEER),
            "nudge": nudge,
            "refer": refer,
            "refused_label": label,
            "limits": LIMITS,
            **audio_context(request, session, over=session.status in OVER),
            **approvals_context(request, session, can_steer=request.user.has_perm(STEER)),
        },
        status=status,
    )


async def refused_transfer(
    request: HttpRequest, session_id: str, target: str, error: str, status: int
) -> HttpResponse:
    return await sync_to_async(_session_page)(
        request, session_id, Nudge(), status=status, refer={"target": target, "error": error}
    )


def queue_first(rows: list[ResponseRequest], *, relayed: bool) -> list[ResponseRequest]:
    """The requests as the session page lists them: what waits or runs first, oldest on top
    (the order they go out), then the history, newest first; so at 1280×800 the queue and the
    latest of the history are on screen without scrolling, however long the history. Each row
    is given its latency (request → start, ms, when the console sent it: see `sent_here`) and
    whether the history starts with it. session.js orders and measures its live updates the
    same way."""
    waiting = sorted((r for r in rows if not r.is_terminal), key=lambda r: (r.created_at, r.id))
    done = sorted((r for r in rows if r.is_terminal), key=lambda r: (r.created_at, r.id), reverse=True)
    for r in waiting + done:
        measured = sent_here(r, relayed=relayed) and r.started_at is not None
        r.latency_ms = (
            round((r.started_at - r.created_at).total_seconds() * 1000) if measured else None
        )
        r.first_history = False
    if waiting and done:
        done[0].first_history = True
    return waiting + done


def sent_here(r: ResponseRequest, *, relayed: bool) -> bool:
    """Whether the console sent the request's `response.create`, so that its request → start
    time means something: an operator's request, or a caller's on a relayed session. The
    server's own responses, and an attached call's caller's (they go to the model directly),
    are seen only as they start."""
    if r.origin == ResponseRequest.Origin.CALLER:
        return relayed
    return r.origin != ResponseRequest.Origin.SERVER


@steering.form
async def nudge(request: HttpRequest, session_id: str, *, user: Any) -> HttpResponse:
    wants_json = steering.wants_json(request)
    if "add_row" in request.POST and not wants_json:
        return await sync_to_async(_session_page)(request, session_id, Nudge.with_row_added(request.POST))
    form = Nudge(request.POST)
    if not form.is_valid():
        if wants_json:
            return JsonResponse({"ok": False, "errors": form.errors()}, status=422)
        return await sync_to_async(_session_page)(request, session_id, form, status=422)
    try:
        if form.as_note:
            note = await services.note_add(
                session_id=session_id, text=form.instructions, role="system", requested_by=user.get_username()
            )
            answer: dict[str, Any] = {"note": {"id": note.id, "text": note.text}}
            done = "Note added to the conversation."
        else:
            row, _ = await services.response_request_submit(
                session_id=session_id,
                overrides=form.overrides,
                origin=ResponseRequest.Origin.CONSOLE,
                requested_by=user.get_username(),
            )
            answer = {"request": row.to_dict()}
            done = f"Response requested ({row.id}): {row.status}."
    except services.ServiceError as exc:
        if wants_json:
            return JsonResponse({"ok": False, "errors": {"form": exc.message}}, status=exc.status)
        # What was typed stays on the page (a full queue empties; a session may come back).
        form.refuse("form", exc.message)
        return await sync_to_async(_session_page)(request, session_id, form, status=exc.status)
    return steering.done(request, session_id, done, answer, status=202 if "request" in answer else 201)


@require_POST
async def cancel(request: HttpRequest, request_id: str) -> HttpResponse:
    row = await sync_to_async(selectors.request_get)(request_id=request_id)
    if row is None:
        message = f"No response request with id '{request_id}'."
        return await sync_to_async(not_found)(request, message)
    session_id = row.session.upstream_id
    user = await steering.steerer(request, session_id)
    if isinstance(user, HttpResponse):
        return user
    if row.origin not in OPERATOR_ORIGINS and request.POST.get("confirm") != "caller":
        # A caller's own request is theirs: cancelling it is a separate, confirmed action.
        return steering.refused(
            request,
            session_id,
            services.NotCancellable(
                f"Request '{request_id}' is the {row.origin}'s own: confirm to cancel it "
                "(the caller will not get the response it asked for)."
            ),
        )
    try:
        row = await services.response_request_cancel(request_id=request_id)
    except services.ServiceError as exc:
        return steering.refused(request, session_id, exc)
    return steering.done(request, session_id, f"Cancelled {request_id}.", {"request": row.to_dict()})


@steering.form
async def interrupt(request: HttpRequest, session_id: str, *, user: Any) -> HttpResponse:
    try:
        response_id = await services.session_interrupt(session_id=session_id)
    except services.ServiceError as exc:
        return steering.refused(request, session_id, exc)
    done = f"Interrupted {response_id}." if response_id else "No response was active."
    return steering.done(request, session_id, done, {"response_id": response_id}, status=202)


@steering.form
async def label(request: HttpRequest, session_id: str, *, user: Any) -> HttpResponse:
    text = request.POST.get("label", "")
    try:
        session = await services.live_session_label_set(
            session_id=session_id, label=text, by=user.get_username()
        )
    except services.ServiceError as exc:
        if isinstance(exc, services.InvalidLabel) and not steering.wants_json(request):
            # Without JavaScript, as a refused nudge: what was typed stays, the error beside it.
            refused = {"text": text, "error": exc.message}
            return await sync_to_async(_session_page)(
                request, session_id, Nudge(), status=exc.status, label=refused
            )
        return steering.refused(request, session_id, exc, field="label")
    done = f"Labelled “{session.label}”." if session.label else "Label cleared."
    return steering.done(request, session_id, done, {"label": session.label})


@login_required
def preferences(request: HttpRequest) -> HttpResponse:
    """The operator's own settings: the timezone times are shown in."""
    profile, _ = OperatorProfile.objects.get_or_create(user=request.user)
    if request.method == "POST":
        zone = request.POST.get("timezone", "")
        if zone and not timezones.valid(zone):
            messages.error(request, f"'{zone}' is not a timezone this server knows.")
        else:
            profile.timezone = zone
            profile.save(update_fields=["timezone"])
            messages.success(request, f"Times are shown in {zone or 'your browser’s timezone'}.")
            return redirect("console:preferences")
    return render(
        request,
        "console/preferences.html",
        {"profile": profile, "zones": sorted(timezones.zones()), "browser_zone": timezones.browser_zone(request)},
    )


def home(request: HttpRequest) -> HttpResponse:
    return redirect("console:dashboard")


def locked_out(request: HttpRequest, response=None, credentials=None) -> HttpResponse:
    """django-axes' answer to a locked-out login: the login page, saying why and for how long."""
    minutes = int(settings.AXES_COOLOFF_TIME.total_seconds() // 60)
    return render(
        request,
        "registration/login.html",
        {
            "locked_out": True,
            "minutes": minutes,
            "failures": settings.AXES_FAILURE_LIMIT,
            "next": request.POST.get("next") or request.GET.get("next") or "",
            "username": (credentials or {}).get("username") or request.POST.get("username", ""),
        },
        status=429,
    )


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """A form that failed Django's CSRF check (`CSRF_FAILURE_VIEW`): most often a page loaded
    before its operator signed out or in again in another tab. Django's own view gives a
    template of ours no context; this one says which case it is, and the reason. Two cases
    are the deployment's, not the operator's, and reloading would not help: HTTPS-only cookies
    (DJANGO_SECURE_COOKIES) on a page served over plain HTTP, which the browser does not keep;
    and an HTTPS page whose request the server saw as plain HTTP (a proxy terminated TLS and
    Daphne was not told: `--proxy-headers`)."""
    no_cookie = reason == REASON_NO_CSRF_COOKIE
    secure_cookie_over_http = no_cookie and settings.CSRF_COOKIE_SECURE and not request.is_secure()
    seen_as_http = (
        not request.is_secure() and request.headers.get("Origin") == f"https://{request.get_host()}"
    )
    context = {
        "reason": reason,
        "no_cookie": no_cookie and not secure_cookie_over_http,
        "secure_cookie_over_http": secure_cookie_over_http,
        "seen_as_http": seen_as_http and not no_cookie,
    }
    return render(request, "403_csrf.html", context, status=403)
