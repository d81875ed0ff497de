"""The session page's call control: hang up and transfer an attached call (WebRTC or phone).

Plain form posts, answered with a redirect to the session page and a message (or JSON for a
script that asks for it), as the page's other forms are. Steering permission is needed; the
services (`apps/sessions/calls.py`) refuse relayed and ended sessions and bad targets.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from apps.console.views import _back, _refused, _steerer, _wants_json
from apps.sessions import calls, services


@require_POST
async def hangup(request: HttpRequest, session_id: str) -> HttpResponse:
    user = await _steerer(request)
    if user is None:
        return redirect_to_login(_back(session_id))
    try:
        await calls.call_hangup(session_id=session_id, requested_by=user.get_username())
    except services.ServiceError as exc:
        return _refused(request, session_id, exc)
    if _wants_json(request):
        return JsonResponse({"ok": True}, status=202)
    messages.success(request, "The call was hung up.")
    return redirect(_back(session_id))


@require_POST
async def refer(request: HttpRequest, session_id: str) -> HttpResponse:
    user = await _steerer(request)
    if user is None:
        return redirect_to_login(_back(session_id))
    target = request.POST.get("target_uri", "").strip()
    try:
        await calls.call_refer(session_id=session_id, target_uri=target, requested_by=user.get_username())
    except services.ServiceError as exc:
        return _refused(request, session_id, exc)
    if _wants_json(request):
        return JsonResponse({"ok": True, "target_uri": target}, status=202)
    messages.success(request, f"The call was transferred to {target}.")
    return redirect(_back(session_id))
