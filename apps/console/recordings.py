"""A session's audio on its page: the Listen control while it is live, the recording with its
timeline once it is over, and the recording's bytes for the page's player. Both are for
operators with "Can listen to live sessions" (a recording is the same conversation)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import reverse

from apps.sessions.models import LISTEN, LiveSession
from apps.sessions.recordings import recorded_session, recording_response, recording_timeline


def audio_context(request: HttpRequest, session: LiveSession, *, over: bool) -> dict:
    """What the session page needs to offer listening or the recording."""
    can_listen = request.user.has_perm(LISTEN)
    relayed = session.kind == LiveSession.Kind.RELAY
    context = {
        "can_listen": can_listen and relayed and not over,
        # An attached call's audio does not pass the console: say so where Listen would be.
        "audio_elsewhere": can_listen and not relayed,
        "recording_url": None,
        "timeline": [],
    }
    if can_listen and session.recording:
        context["recording_url"] = reverse("console:recording", args=[session.upstream_id])
        context["timeline"] = recording_timeline(session)
    return context


@login_required
def recording(request: HttpRequest, session_id: str) -> HttpResponse:
    if not request.user.has_perm(LISTEN):
        return HttpResponse("You may not listen to sessions.", status=403, content_type="text/plain")
    session = recorded_session(session_id=session_id)
    if session is None:
        raise Http404(f"No recording of a session with id '{session_id}'.")
    return recording_response(request, session)
