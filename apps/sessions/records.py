"""History operations: each function returns an operation for the history writer, and
`of_action` gives the one for each action of the relay core that is recorded.

Times arrive as float seconds from `clock.now()` (monotonic, anchored to the wall clock), so
a request's timestamps never go backwards even if the system clock is stepped.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from apps.realtime import relay, rotation
from apps.sessions import approvals
from apps.sessions.history import CreateRow, Operation, UpdateRow
from apps.sessions.models import LiveSession, ResponseRequest


def _dt(at: float) -> datetime:
    return datetime.fromtimestamp(at, tz=UTC)


def session_opened(
    *,
    key: uuid.UUID,
    model: str,
    connected_by: str,
    process_id: str,
    at: float,
    label: str = "",
    kind: str = LiveSession.Kind.RELAY,
    call_id: str | None = None,
    caller_number: str = "",
    dialled_number: str = "",
):
    """A session's row; an attached call's (`apps/sessions/sideband.py`) with its kind, call
    id and numbers."""
    return CreateRow(
        LiveSession(
            id=key,
            model=model,
            connected_by=connected_by,
            label=label,
            kind=kind,
            call_id=call_id or None,
            caller_number=caller_number,
            dialled_number=dialled_number,
            process_id=process_id,
            started_at=_dt(at),
            heartbeat_at=_dt(at),
        ),
        event={
            "event": "session.opened",
            "session_key": str(key),
            "model": model,
            "by": connected_by,
        },
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


def upstream_sessions(*, key: uuid.UUID, session_ids: list[str]):
    """The session moved to a fresh upstream session (rotation): the ids it went through."""
    return UpdateRow(
        LiveSession,
        key,
        {"upstream_sessions": session_ids},
        event={"event": "session.rotated", "session_key": str(key), "sessions": session_ids},
    )


def session_ended(
    *, key: uuid.UUID, status: str, reason: str, code: int | None, detail: str, at: float
):
    def op() -> None:
        # The first end stands: a sweep that found the session lost while this process was
        # held up has told everyone so already (the actor then ends it too: `RelayCore.lost`).
        LiveSession.objects.filter(id=key, status__in=LiveSession.OPEN).update(
            status=status, end_reason=reason, end_code=code, end_detail=detail, ended_at=_dt(at)
        )
        # The actor has already failed every pending request it knew; this is the safety net
        # for the others (one stored through another process whose ping came after the end,
        # one whose transition was lost), so that nothing stays pending forever. The event
        # log tells their followers too (`op.failed`).
        pending = ResponseRequest.objects.filter(session_id=key).exclude(
            status__in=ResponseRequest.TERMINAL
        )
        failed = list(pending.values_list("id", flat=True))
        op.failed = failed  # type: ignore[attr-defined]
        if failed:
            pending.filter(id__in=failed).update(
                status=ResponseRequest.Status.FAILED,
                error_code="session_ended",
                error_message=f"The session closed ({detail or reason}).",
                finished_at=_dt(at),
            )

    # Logged once committed, and recorded in the event log, like the rows' events.
    op.event = {  # type: ignore[attr-defined]
        "event": "session.ended",
        "session_key": str(key),
        "status": status,
        "reason": reason,
        "code": code,
        "at": at,
    }
    return op


def usage_changed(*, key: uuid.UUID, usage: dict[str, Any]):
    return UpdateRow(LiveSession, key, {"usage": usage})


def transcript_final(*, key: uuid.UUID, entry: dict[str, Any], at: float):
    """A final transcript entry: no row of its own, an event for those who follow."""
    return UpdateRow(
        LiveSession,
        key,
        {},
        event={"event": "transcript.entry", "session_key": str(key), "entry": entry, "at": at},
    )


def watchers_changed(*, key: uuid.UUID, names: list[str]):
    return UpdateRow(LiveSession, key, {"watchers": names})


def request_created(
    *,
    key: uuid.UUID,
    request_id: str,
    origin: str,
    event_id: str,
    instructions: str | None,
    metadata: Mapping[str, Any] | None,
    conversation: str | None,
    requested_by: str,
    at: float,
    status: str = ResponseRequest.Status.QUEUED,
    response_id: str | None = None,
):
    """A request the relay took in itself: the caller's (its instructions are sent as they
    are, so `replace`), or a response the server started."""
    row = ResponseRequest(
        id=request_id,
        session_id=key,
        origin=origin,
        event_id=event_id,
        instructions=instructions,
        instructions_mode="replace",
        sent_instructions=instructions,
        conversation=conversation,
        metadata=dict(metadata) if metadata is not None else None,
        requested_by=requested_by,
        status=status,
        response_id=response_id or "",
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
        adds=((LiveSession, key, LiveSession.counter(origin)),),
    )


def request_status(
    *,
    request_id: str,
    status: str,
    at: float,
    response_id: str | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
    output_text: str | None = None,
    usage: Mapping[str, Any] | None = None,
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
    if output_text is not None:
        fields["output_text"] = output_text
    if usage is not None:
        fields["usage"] = usage

    event = {"event": "request.status", "request": request_id, "status": status}
    if response_id:
        event["response_id"] = response_id
    if error_code:
        event["error_code"] = error_code
    return UpdateRow(ResponseRequest, request_id, fields, event=event)


def late_response(
    *,
    request_id: str,
    response_id: str,
    error_message: str,
    output_text: str | None = None,
    usage: Mapping[str, Any] | None = None,
):
    """The response of a request that had already failed came after all: recorded on the
    request, whose status stays. Its followers get the request as it now is."""
    fields: dict[str, Any] = {"response_id": response_id, "error_message": error_message}
    if output_text is not None:
        fields["output_text"] = output_text
    if usage is not None:
        fields["usage"] = usage
    event = {"event": "request.status", "request": request_id, "response_id": response_id}
    return UpdateRow(ResponseRequest, request_id, fields, event=event)


# The core's actions that are recorded (`of_action`); the others go to sockets and watchers.
RECORDED = frozenset(
    {
        relay.SessionNamed,
        relay.InstructionsChanged,
        relay.RequestRecorded,
        relay.RequestChanged,
        relay.LateResponseRecorded,
        relay.UsageChanged,
        relay.WatchersChanged,
        relay.TranscriptFinal,
        relay.SessionEnded,
        *approvals.RECORDED,
        rotation.UpstreamSessions,
    }
)


def of_action(key: uuid.UUID, action: relay.Action) -> Operation:
    """The history operation that records one of the core's actions."""
    match action:
        case relay.SessionNamed(session_id=session_id, instructions=instructions, at=at):
            return session_identified(
                key=key, upstream_id=session_id, instructions=instructions, at=at
            )
        case relay.InstructionsChanged(instructions=instructions):
            return session_updated(key=key, instructions=instructions)
        case relay.RequestRecorded():
            return request_created(
                key=key,
                request_id=action.request_id,
                origin=action.origin,
                event_id=action.event_id,
                instructions=action.instructions,
                metadata=action.metadata,
                conversation=action.conversation,
                requested_by=action.requested_by,
                at=action.at,
                status=action.status.value,
                response_id=action.response_id,
            )
        case relay.RequestChanged():
            return request_status(
                request_id=action.request_id,
                status=action.status.value,
                at=action.at,
                response_id=action.response_id,
                error_code=action.error_code,
                error_message=action.error_message,
                output_text=action.output_text,
                usage=action.usage,
                sent_instructions=action.sent_instructions,
            )
        case relay.LateResponseRecorded():
            return late_response(
                request_id=action.request_id,
                response_id=action.response_id,
                error_message=action.error_message,
                output_text=action.output_text,
                usage=action.usage,
            )
        case relay.UsageChanged(usage=usage):
            return usage_changed(key=key, usage=usage)
        case relay.WatchersChanged(names=names):
            return watchers_changed(key=key, names=list(names))
        case relay.TranscriptFinal(entry=entry, at=at):
            return transcript_final(key=key, entry=entry, at=at)
        case relay.SessionEnded(status=status, reason=reason, code=code, detail=detail, at=at):
            return session_ended(
                key=key, status=status, reason=reason.value, code=code, detail=detail, at=at
            )
        case rotation.UpstreamSessions(session_ids=session_ids):
            return upstream_sessions(key=key, session_ids=list(session_ids))
    if type(action) in approvals.RECORDED:
        return approvals.record(key, action)
    raise TypeError(f"no record for {action!r}")
