"""History operations: each function returns an operation for the history writer.

Times arrive as float seconds from `clock.now()` (monotonic, anchored to the wall clock), so
a request's timestamps never go backwards even if the system clock is stepped.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from apps.sessions.history import CreateRow, UpdateRow, events_log
from apps.sessions.models import LiveSession, ResponseRequest


def _dt(at: float) -> datetime:
    return datetime.fromtimestamp(at, tz=UTC)


def session_opened(*, key: uuid.UUID, model: str, connected_by: str, process_id: str, at: float):
    return CreateRow(
        LiveSession(
            id=key,
            model=model,
            connected_by=connected_by,
            process_id=process_id,
            started_at=_dt(at),
            heartbeat_at=_dt(at),
        ),
        event={"event": "session.opened", "session_key": str(key), "model": model, "by": connected_by},
    )


def session_identified(*, key: uuid.UUID, upstream_id: str, instructions: str, at: float):
    return UpdateRow(
        LiveSession,
        key,
        {
            "upstream_id": upstream_id,
            "status": LiveSession.Status.LIVE,
            "instructions": instructions,
            "heartbeat_at": _dt(at),
        },
        event={"event": "session.live", "session_key": str(key), "session": upstream_id},
    )


def session_updated(*, key: uuid.UUID, instructions: str):
    return UpdateRow(LiveSession, key, {"instructions": instructions})


def session_ended(*, key: uuid.UUID, status: str, reason: str, at: float):
    def op() -> None:
        events_log.info(
            json.dumps({"event": "session.ended", "session_key": str(key), "status": status, "reason": reason})
        )
        LiveSession.objects.filter(id=key).update(status=status, end_reason=reason, ended_at=_dt(at))
        # The actor has already failed every pending request; this is the safety net for a
        # request whose transition was lost, so that nothing stays pending forever.
        ResponseRequest.objects.filter(session_id=key).exclude(
            status__in=ResponseRequest.TERMINAL
        ).update(
            status=ResponseRequest.Status.FAILED,
            error_code="session_ended",
            error_message=reason,
            finished_at=_dt(at),
        )

    return op


def request_created(
    *,
    key: uuid.UUID,
    request_id: str,
    origin: str,
    event_id: str,
    response: Mapping[str, Any],
    instructions_mode: str,
    requested_by: str,
    at: float,
    status: str = ResponseRequest.Status.QUEUED,
    response_id: str = "",
):
    instructions = response.get("instructions")
    metadata = response.get("metadata")
    row = ResponseRequest(
        id=request_id,
        session_id=key,
        origin=origin,
        event_id=event_id,
        instructions=instructions if isinstance(instructions, str) else None,
        instructions_mode=instructions_mode,
        sent_instructions=instructions if isinstance(instructions, str) else None,
        conversation=conversation if isinstance(conversation := response.get("conversation"), str) else None,
        metadata=dict(metadata) if isinstance(metadata, Mapping) else None,
        requested_by=requested_by,
        status=status,
        response_id=response_id,
        created_at=_dt(at),
        started_at=_dt(at) if status == ResponseRequest.Status.IN_PROGRESS else None,
    )

    return CreateRow(
        row,
        event={
            "event": "request.created",
            "request": request_id,
            "session_key": str(key),
            "origin": origin,
            "by": requested_by,
            "status": status,
        },
    )


def request_status(
    *,
    request_id: str,
    status: str,
    at: float,
    response_id: str | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
    details: Mapping[str, Any] | None = None,
    sent_instructions: str | None = None,
):
    fields: dict[str, Any] = {"status": status}
    when = _dt(at)
    if status == ResponseRequest.Status.SENT:
        fields["sent_at"] = when
    elif status == ResponseRequest.Status.IN_PROGRESS:
        fields["started_at"] = when
    elif status in ResponseRequest.TERMINAL:
        fields["finished_at"] = when
    if sent_instructions is not None:
        fields["sent_instructions"] = sent_instructions
    if response_id:
        fields["response_id"] = response_id
    if error_code is not None:
        fields["error_code"] = error_code
    if error_message is not None:
        fields["error_message"] = error_message
    if details:
        if "output_text" in details:
            fields["output_text"] = details["output_text"]
        if "usage" in details:
            fields["usage"] = details["usage"]

    event = {"event": "request.status", "request": request_id, "status": status}
    if response_id:
        event["response_id"] = response_id
    if error_code:
        event["error_code"] = error_code
    return UpdateRow(ResponseRequest, request_id, fields, event=event)
