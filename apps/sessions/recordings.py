"""Recordings as HTTP answers (the REST hook's `GET /api/v1/sessions/{id}/recording`, the
session page's player) and their deletion after the retention.

A recording is answered from storage in chunks, whole (`200`) or, for a player that seeks,
the byte range it asks for (`206`, one range; `416` for one the file does not have; one
that is not a range, like `bytes=5-3`, is ignored). A recording never changes once written:
its `ETag` (its name and size) lets a download that broke off resume with `If-Range`; a range
asked for with another validator gets the whole file, as it may have changed (RFC 9110,
13.1.5). Under Daphne each chunk waits until the client has room for it (apps/events/flow.py):
a call of an hour is some 350 MB, which a slow listener would otherwise make the process hold.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from datetime import timedelta

from django.core.files.storage import default_storage
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.utils import timezone

from apps.events.flow import Flow, flow_of, room
from apps.sessions.models import LiveSession

CHUNK = 64 * 1024
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
# A byte position longer than this is past any file (and int() refuses over 4300 digits).
_MAX_DIGITS = 18


def _position(digits: str) -> int:
    return int(digits) if len(digits) <= _MAX_DIGITS else 10**_MAX_DIGITS


def recorded_session(*, session_id: str) -> LiveSession | None:
    """The session with this public id if it has a recording that is still stored."""
    session = LiveSession.objects.filter(upstream_id=session_id).exclude(recording="").first()
    if session is None or not default_storage.exists(session.recording.name):
        return None
    return session


async def _chunks(name: str, start: int, length: int, flow: Flow | None):
    """The bytes asked for, read on a worker thread a chunk at a time, each once the client
    has room for it: an asynchronous iterator, which Django streams as it goes (a synchronous
    one it would read whole first)."""
    stored = await asyncio.to_thread(default_storage.open, name, "rb")
    if flow is not None:
        flow.attach()
    try:
        await asyncio.to_thread(stored.seek, start)
        while length > 0 and await room(flow):
            chunk = await asyncio.to_thread(stored.read, min(CHUNK, length))
            if not chunk:
                return
            length -= len(chunk)
            yield chunk
    finally:
        if flow is not None:
            flow.detach()
        await asyncio.to_thread(stored.close)


def recording_response(request: HttpRequest, session: LiveSession) -> HttpResponse:
    """The answer for this session's recording (call it off the event loop: it asks the
    storage for the size)."""
    name = session.recording.name
    size = default_storage.size(name)
    start, length, status = 0, size, 200
    etag = f'"{hashlib.sha256(name.encode()).hexdigest()[:16]}-{size}"'
    asked = _RANGE.match(request.headers.get("Range", "").strip())
    if asked and asked[1] and asked[2] and _position(asked[2]) < _position(asked[1]):
        asked = None  # not a range (its last byte before its first): ignored, as RFC 9110 says
    if_range = request.headers.get("If-Range")
    if asked and (asked[1] or asked[2]) and (if_range is None or if_range.strip() == etag):
        if asked[1]:
            start = _position(asked[1])
            end = min(_position(asked[2]), size - 1) if asked[2] else size - 1
        else:  # the last N bytes
            start, end = max(0, size - _position(asked[2])), size - 1
        if start >= size or end < start:
            refused = HttpResponse(status=416)
            refused["Content-Range"] = f"bytes */{size}"
            return refused
        length, status = end - start + 1, 206
    chunks = _chunks(name, start, length, flow_of(request))
    response = StreamingHttpResponse(chunks, status=status, content_type="audio/wav")
    response["Content-Length"] = str(length)
    response["Accept-Ranges"] = "bytes"
    response["ETag"] = etag
    # People's voices: kept by no cache, the browser's disk included (an operator's shared
    # computer keeps no copy after the page is closed).
    response["Cache-Control"] = "private, no-store"
    response["Content-Disposition"] = f'inline; filename="{session.upstream_id}.wav"'
    if status == 206:
        response["Content-Range"] = f"bytes {start}-{start + length - 1}/{size}"
    return response


def recording_timeline(session: LiveSession) -> list[dict]:
    """The recorded call's moments in order: each transcript turn where it began, and each
    operator's request where it was made (`at`: seconds into the recording)."""
    marks = []
    for entry in session.recording_transcript or ():
        role = entry.get("role", "")
        who = {"user": "Caller", "agent": "Agent", "system": "Note"}.get(role, role)
        if entry.get("request_id"):
            who += f" · nudged ({entry['request_id']})"
        if entry.get("interrupted"):
            who += " · interrupted"
        marks.append({"at": float(entry.get("at", 0.0)), "kind": role, "who": who, "text": entry.get("text", "")})
    operators = session.requests.filter(origin__in=("console", "api")).only(
        "id", "origin", "requested_by", "instructions", "created_at"
    )
    for request in operators:
        at = max(0.0, (request.created_at - session.started_at).total_seconds())
        asked = request.instructions or "(no instructions)"
        marks.append({"at": at, "kind": "request", "who": f"Request by {request.requested_by or request.origin}",
                      "text": asked})
    marks.sort(key=lambda mark: mark["at"])
    for mark in marks:
        minutes, seconds = divmod(int(mark["at"]), 60)
        mark["clock"] = f"{minutes}:{seconds:02d}"
        mark["at"] = round(mark["at"], 2)
    return marks


def recordings_delete_old(*, days: int) -> int:
    """Delete the recordings of sessions that started more than `days` days ago; how many."""
    deleted = 0
    old = LiveSession.objects.filter(started_at__lt=timezone.now() - timedelta(days=days))
    for session in old.exclude(recording="").only("id", "recording"):
        default_storage.delete(session.recording.name)
        LiveSession.objects.filter(id=session.id).update(recording="", recording_seconds=None)
        deleted += 1
    return deleted
