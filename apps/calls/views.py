"""`POST /v1/realtime/client_secrets`, `POST /v1/realtime/calls` (CONTRACT section 7) and the
"Call the agent" page.

Both endpoints mirror the service's, so the `openai` SDK and a browser's WebRTC code work
against them unchanged: errors in the service's shape, the answer SDP with
`Location: /v1/realtime/calls/{call_id}`. The upstream key stays here: the offer is forwarded
with it, and the caller gets the upstream's SDP, status and JSON error body, never its headers.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET

from apps.calls import keys
from apps.calls.attach import attach
from apps.calls.auth import Caller, authenticate, error
from apps.realtime import events
from apps.sessions import upstream_calls
from apps.sessions.db import db_async, serialised_write
from apps.sessions.housekeeping import housekeeping
from apps.sessions.models import STEER, LiveSession

log = logging.getLogger("oc.events")


def _post_only(request: HttpRequest) -> JsonResponse | None:
    if request.method != "POST":
        response = error(405, "method_not_allowed", f"{request.method} is not allowed here: use POST.")
        response["Allow"] = "POST"
        return response
    return None


View = Callable[..., Awaitable[HttpResponse]]


def from_any_page(view: View) -> View:
    """CORS for a call placed by another site's page, as the service allows it: a browser app
    posts its offer here with a minted key, as it would to the service. Any origin may, and
    may read the answer, its `Location`, the errors and their `Retry-After`; no cookie is
    taken on its behalf (no `Access-Control-Allow-Credentials`), so a console operator's
    session stays this site's."""

    @functools.wraps(view)
    async def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            response = HttpResponse(status=204)
            response["Access-Control-Allow-Methods"] = "POST"
            response["Access-Control-Allow-Headers"] = allowed_headers(request)
            response["Access-Control-Max-Age"] = "600"
        else:
            response = await view(request, *args, **kwargs)
            response["Access-Control-Expose-Headers"] = "Location, Retry-After"
        response["Access-Control-Allow-Origin"] = "*"
        return response

    return wrapped


# Header names as RFC 9110 has them (a token): what a preflight may ask for and get back.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def allowed_headers(request: HttpRequest) -> str:
    """The request headers a preflight is allowed: Authorization and Content-Type, and any
    others it asks for, as the service allows them. The `openai` SDKs send headers of their
    own with every request (`X-Stainless-Lang`, `X-Stainless-Retry-Count`, ...): a browser
    whose preflight was refused one of them would not send the offer at all. Allowing them is
    safe because no cookie is taken (no `Access-Control-Allow-Credentials`)."""
    allowed = ["Authorization", "Content-Type"]
    asked = request.headers.get("Access-Control-Request-Headers", "")
    for name in (part.strip() for part in asked.split(",")):
        if _HEADER_NAME.fullmatch(name) and name.lower() not in {a.lower() for a in allowed}:
            allowed.append(name)
    return ", ".join(allowed)


def body_too_big(request: HttpRequest) -> JsonResponse | None:
    """Read the body now: one over DATA_UPLOAD_MAX_MEMORY_SIZE is the service's 413, in DEBUG
    too (there Django answers it with its HTML debug page, not with `refusal`)."""
    try:
        request.body  # noqa: B018
    except RequestDataTooBig as exc:
        return refusal(request, 413, exc)
    return None


def _mint(*, expires_after: Any, session: Any, created_by: str, token_id: int | None):
    with serialised_write():
        keys.delete_expired()
        return keys.mint(
            expires_after=expires_after, session=session, created_by=created_by, token_id=token_id
        )


@csrf_exempt
async def client_secrets(request: HttpRequest) -> HttpResponse:
    """A short-lived key for a browser or a device: it may place calls and open relay
    sessions until it expires, and carries the session configuration its calls get."""
    if (refused := _post_only(request) or body_too_big(request)) is not None:
        return refused
    caller = await authenticate(request, keys=False, cookie=False)
    if not isinstance(caller, Caller):
        return caller
    try:
        body = events.loads(request.body or b"{}")  # nesting too deep is a ValueError too
    except ValueError as exc:
        return error(400, "invalid_json", f"The body must be a JSON object; it is not JSON: {exc}.")
    if not isinstance(body, dict):
        return error(400, "invalid_json", "The body must be a JSON object.")
    try:
        keys.check_parameters(body)
        secret, plain = await db_async(_mint)(
            expires_after=body.get("expires_after"),
            session=body.get("session"),
            created_by=caller.name.removeprefix("token:"),
            token_id=caller.token_id,
        )
    except keys.InvalidParameter as invalid:
        return error(400, invalid.code, invalid.message, param=invalid.param)
    log.info(json.dumps({"event": "client_secret.minted", "by": caller.name, "expires_at": secret.expires_at.isoformat()}))
    return JsonResponse(keys.minted(secret, plain))


def _offer(request: HttpRequest) -> tuple[str, dict[str, Any]] | JsonResponse:
    """(SDP offer, session configuration) of an `application/sdp` or multipart request."""
    content_type = request.content_type or ""
    if content_type == "application/sdp":
        sdp, session = request.body.decode("utf-8", "replace"), {}
    elif content_type == "multipart/form-data":
        sdp = _part(request, "sdp")
        raw = _part(request, "session")
        session = {}
        if raw:
            try:
                session = events.loads(raw)  # nesting too deep is a ValueError too
            except ValueError as exc:
                message = f"The session part is not JSON: {exc}."
                return error(400, "invalid_json", message, param="session")
            try:
                if not isinstance(session, dict):  # as the key's `session` is refused
                    expected = "an object (a realtime session configuration)"
                    raise keys.InvalidParameter.wrong_type("session", expected, session)
                keys.session_config(session)  # refused as the service refuses it, as a key's is
            except keys.InvalidParameter as invalid:
                return error(400, invalid.code, invalid.message, param=invalid.param)
    else:
        return error(
            415,
            "unsupported_content_type",
            f"The offer must be sent as application/sdp or multipart/form-data (parts sdp and session), not {content_type or 'nothing'!r}.",
        )
    if not sdp.lstrip().startswith("v="):
        return error(400, "invalid_value", "The SDP offer is missing or is not SDP (it must start with v=).", param="sdp")
    return sdp, session


def _part(request: HttpRequest, name: str) -> str:
    if name in request.FILES:
        return request.FILES[name].read().decode("utf-8", "replace")
    return request.POST.get(name, "")


@csrf_exempt
@from_any_page
async def calls(request: HttpRequest) -> HttpResponse:
    """Place a WebRTC call: forward the offer upstream, answer with the upstream's SDP, and
    attach a sideband session to the call (kind `webrtc`)."""
    # The body is read first: the CSRF check and the multipart parser use it.
    if (refused := _post_only(request) or body_too_big(request)) is not None:
        return refused
    caller = await authenticate(request, keys=True, cookie=True)
    if not isinstance(caller, Caller):
        return caller
    offer = _offer(request)
    if isinstance(offer, JsonResponse):
        return offer
    sdp, session = offer
    if (refusal := housekeeping().full()) is not None:
        log.warning(json.dumps({"event": "call.refused", "reason": refusal.code, "by": caller.name}))
        response = error(503, refusal.code, refusal.message, kind="server_error")
        response["Retry-After"] = "30"
        return response
    # A minted key's configuration is the one its issuer chose: it wins over the request's.
    session = {**session, **caller.session}
    model = session.get("model") or request.GET.get("model") or settings.OC_REALTIME_MODEL
    if session:
        session = {**session, "type": "realtime", "model": model}
    try:
        answer = await upstream_calls.create_call(sdp=sdp, model=model, session=session or None)
    except httpx.HTTPError as exc:
        log.warning(json.dumps({"event": "call.upstream_unreachable", "error": type(exc).__name__}))
        return error(502, "upstream_unreachable", "The upstream could not be reached to place the call.", kind="upstream_error")
    if not answer.ok:
        log.info(json.dumps({"event": "call.refused_upstream", "status": answer.status, "by": caller.name}))
        return JsonResponse(answer.error_body(), status=answer.status)
    call_id = upstream_calls.call_id_from_location(answer.location)
    if not call_id:
        return error(502, "upstream_error", "The upstream answered the call without its Location.", kind="upstream_error")
    log.info(json.dumps({"event": "call.placed", "call_id": call_id, "kind": "webrtc", "by": caller.name, "model": model}))
    await attach(call_id=call_id, kind="webrtc", model=model, connected_by=caller.name)
    response = HttpResponse(answer.body, status=201, content_type="application/sdp")
    response["Location"] = f"/v1/realtime/calls/{call_id}"
    return response


@csrf_exempt
def unknown_url(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
    """Last of the /v1/ routes: any other URL there is the service's 404, in DEBUG too. API
    clients post here without a CSRF cookie (the SDK's `realtime.calls.hangup`, for one): the
    answer is that 404, not Django's CSRF page; the view does nothing a forged post could use."""
    return error(404, "not_found", f"Invalid URL ({request.method} {request.path}).")


def refusal(request: HttpRequest, status: int, exception: Exception | None = None) -> JsonResponse:
    """Django's own refusals under /v1/ (its handler400/403/404/500), answered as the service
    answers, in its error shape: the `openai` SDK and a browser's code read these too."""
    if isinstance(exception, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        message = f"The request body is over the limit of {limit} bytes."
        return error(413, "request_too_large", message)
    if status == 404:
        return unknown_url(request)
    if status == 403:
        return error(403, "forbidden", "The request was refused.")
    if status >= 500:
        return error(
            500,
            "server_error",
            "The server had an error while processing your request; the failure is logged.",
            kind="server_error",
        )
    return error(400, "bad_request", "The request was refused as malformed or not for this host.")


@login_required
def call_page(request: HttpRequest) -> HttpResponse:
    """The "Call the agent" page: the browser places a WebRTC call through /v1/realtime/calls.
    A call is steered like any other, so placing one needs the permission to steer."""
    can_call = request.user.has_perm(STEER)
    context = {"model": settings.OC_REALTIME_MODEL, "can_call": can_call}
    return render(request, "calls/call.html", context, status=200 if can_call else 403)


@require_GET
@login_required
def call_session(request: HttpRequest) -> JsonResponse:
    """The console session attached to a call (`?call_id=`): the call page asks until it is
    listed, then links to it. Not listed yet is an answer, not an error: `"session_id": null`."""
    call_id = request.GET.get("call_id", "")
    session = (
        LiveSession.objects.filter(call_id=call_id, upstream_id__isnull=False).only("upstream_id", "status").first()
        if call_id
        else None
    )
    if session is None:
        return JsonResponse({"session_id": None, "status": None, "url": None, "hangup_url": None})
    return JsonResponse(
        {
            "session_id": session.upstream_id,
            "status": session.status,
            "url": reverse("console:session", args=[session.upstream_id]),
            # The page's Hang up goes through the console, so the call ends `hung_up`, by whom.
            "hangup_url": reverse("console:hangup", args=[session.upstream_id]),
        }
    )
