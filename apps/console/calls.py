"""The session page's call control: hang up and transfer an attached call (WebRTC or phone).

Plain form posts, answered with a redirect to the session page and a message (or JSON for a
script that asks for it), as the page's other forms are; a transfer refused for its target or
by the upstream comes back open, with what was typed and the error beside it, to be mended.
Steering permission is needed; the services (`apps/sessions/calls.py`) refuse relayed and
ended sessions and bad targets.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse

from apps.console import steering, views
from apps.sessions import calls, services


@steering.form
async def hangup(request: HttpRequest, session_id: str, *, user: Any) -> HttpResponse:
    try:
        await calls.call_hangup(session_id=session_id, requested_by=user.get_username())
    except services.ServiceError as exc:
        return steering.refused(request, session_id, exc)
    return steering.done(request, session_id, "The call was hung up.", {}, status=202)


@steering.form
async def refer(request: HttpRequest, session_id: str, *, user: Any) -> HttpResponse:
    target = request.POST.get("target_uri", "").strip()
    try:
        await calls.call_refer(session_id=session_id, target_uri=target, requested_by=user.get_username())
    except services.ServiceError as exc:
        mendable = isinstance(exc, calls.InvalidTargetUri | calls.CallControlFailed)
        if mendable and not steering.wants_json(request):
            return await views.refused_transfer(
                request, session_id, target, exc.message, exc.status
            )
        return steering.refused(request, session_id, exc)
    done = f"The call was transferred to {target}."
    return steering.done(request, session_id, done, {"target_uri": target}, status=202)
