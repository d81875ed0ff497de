"""Tool approvals and rate limits: their records, and the service every surface decides with.

The relay core's tool desk (`apps/realtime/tools.py`) decides what an approval is; this module
records what it says (`record`, for the history writer) and carries an operator's decision to
the session's actor (`approval_decide`), the same way for the REST hook and the console: a
`session.approval` message to the session's group, answered by the actor. Only the actor knows
whether someone decided first (the table learns of a decision a moment later), so a decision is
never answered 200 for a request someone else had already decided.

An approval's JSON (`Approval`): `{"id", "session_id", "kind", "name", "server_label",
"arguments", "status": "pending|approved|denied|expired", "reason", "decided_by",
"created_at", "decided_at"}`; `id` is the upstream's approval request item id.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from apps.realtime import tools
from apps.realtime.events import text_problem
from apps.realtime.relay import Action, RelayCore
from apps.sessions import groups
from apps.sessions.db import db_async
from apps.sessions.history import UpdateRow
from apps.sessions.models import LiveSession, ToolApproval
from apps.sessions.services import (
    ServiceError,
    SessionNotLive,
    _ask_actor,
    session_found,
)

log = logging.getLogger(__name__)

MAX_REASON_CHARS = tools.MAX_REASON_CHARS


class ApprovalNotFound(ServiceError):
    status, code = 404, "approval_not_found"


class AlreadyDecided(ServiceError):
    """Someone decided first; `approval` is the request as decided."""

    status, code = 409, "already_decided"

    def __init__(self, message: str, approval: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.approval = approval


def _dt(at: float | None) -> datetime | None:
    return datetime.fromtimestamp(at, tz=UTC) if at is not None else None


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


# ---------------------------------------------------------------------------- shapes


def core_row(approval: dict[str, Any], session: LiveSession | None = None) -> ToolApproval:
    """The core's shape of an approval (`Approval.as_dict()`) as an unsaved row, so that the
    REST hook's answers and the event log give it as the table does (`ToolApproval.to_dict`)."""
    row = ToolApproval(
        approval_id=approval["approval_id"],
        kind=approval["kind"],
        server_label=approval["server_label"],
        name=approval["name"],
        arguments=approval["arguments"],
        status=approval["status"],
        reason=approval["reason"],
        decided_by=approval["decided_by"],
        created_at=_dt(approval["created_at"]),
        decided_at=_dt(approval["decided_at"]),
    )
    if session is not None:
        row.session = session
    return row


# ---------------------------------------------------------------------------- records

# The event log's type (and the history writer's event name) of an approval made or decided.
APPROVAL_STATUS = "approval.status"

# The tool desk's actions the history writer records.
RECORDED = frozenset({tools.ApprovalChanged, tools.RateLimitsChanged})


def record(key: uuid.UUID, action: Action):
    """The history operation for one of the tool desk's actions."""
    if type(action) is tools.RateLimitsChanged:
        return _rate_limits_changed(key, action)
    return _approval_changed(key, action)


def _approval_changed(key: uuid.UUID, action: tools.ApprovalChanged):
    approval = action.approval
    fields = {
        "kind": approval["kind"],
        "server_label": approval["server_label"],
        "name": approval["name"],
        "arguments": approval["arguments"],
        "status": approval["status"],
        "reason": approval["reason"],
        "decided_by": approval["decided_by"],
        "decided_at": _dt(approval["decided_at"]),
    }

    def op() -> None:
        # The approval's row has no id the core knows (its key is the session and the
        # upstream's item id), so it is written by that key: made, then updated in place.
        ToolApproval.objects.update_or_create(
            session_id=key,
            approval_id=approval["approval_id"],
            defaults=fields,
            create_defaults={**fields, "created_at": _dt(approval["created_at"])},
        )

    # Logged once committed, like the rows' events; the event log (apps/events) records it as
    # an `approval.status` with the approval as it is now (`op.approval`, the core's shape).
    op.event = {  # type: ignore[attr-defined]
        "event": APPROVAL_STATUS,
        "session_key": str(key),
        "approval": approval["approval_id"],
        "status": approval["status"],
        "name": approval["name"],
        "by": approval["decided_by"],
    }
    op.approval = approval  # type: ignore[attr-defined]
    return op


def _rate_limits_changed(key: uuid.UUID, action: tools.RateLimitsChanged):
    # Each limit as the upstream sent it, with the moment it resets (its `reset_seconds`
    # counted from when the event came), so a page read later still knows.
    limits = []
    for limit in action.rate_limits:
        stored = dict(limit)
        seconds = limit.get("reset_seconds")
        if isinstance(seconds, int | float) and not isinstance(seconds, bool):
            stored["reset_at"] = _iso(_dt(action.at + seconds))
        limits.append(stored)
    return UpdateRow(LiveSession, key, {"rate_limits": limits})


# ---------------------------------------------------------------------------- the actor's side


def decide(core: RelayCore, message: dict[str, Any], now: float) -> list[Action]:
    """The actor's input for a `session.approval` message."""
    return core.tools.decide(
        str(message.get("approval_id") or ""),
        approve=message.get("approve") is True,
        reason=str(message.get("reason") or ""),
        by=str(message.get("by") or ""),
        origin=str(message.get("origin") or "api"),
        now=now,
    )


# ---------------------------------------------------------------------------- services


async def approval_decide(
    *, session_id: str, approval_id: str, approve: bool, reason: str, decided_by: str, origin: str
) -> dict[str, Any]:
    """Approve or deny a pending approval request. Returns the approval as decided; raises
    ApprovalNotFound, AlreadyDecided (naming who decided) or SessionNotLive."""
    if len(reason) > MAX_REASON_CHARS:
        raise ServiceError(f"reason is {len(reason)} characters; at most {MAX_REASON_CHARS} are allowed.")
    # The REST hook's schema refuses these too; the console's form reaches here unchecked.
    problem = text_problem(reason)
    if problem is not None:
        raise ServiceError(f"reason {problem}.")
    session = await db_async(session_found)(session_id)
    if session.status != LiveSession.Status.LIVE:
        row = await db_async(_stored)(session, approval_id)
        if row is None:
            raise ApprovalNotFound(f"No approval request '{approval_id}' in session '{session_id}'.")
        if row.status != ToolApproval.Status.PENDING:
            raise _already(row.to_dict())
        raise SessionNotLive(f"Session '{session_id}' is {session.status}, not live.")
    reply = await _ask_actor(
        session,
        {
            "type": groups.SESSION_APPROVAL,
            "approval_id": approval_id,
            "approve": approve,
            "reason": reason,
            "by": decided_by,
            "origin": origin,
        },
    )
    if reply.get("ok"):
        return core_row(reply["approval"], session).to_dict()
    code = reply.get("code")
    if code == "already_decided":
        raise _already(core_row(reply["approval"], session).to_dict())
    if code == "approval_not_found":
        raise ApprovalNotFound(f"No approval request '{approval_id}' in session '{session_id}'.")
    raise SessionNotLive(reply.get("message") or f"Session '{session_id}' is not live.")


def _already(approval: dict[str, Any]) -> AlreadyDecided:
    if approval["status"] == tools.EXPIRED:
        # Its reason says why: nobody decided in time, or the session ended first.
        why = approval["reason"] or "nobody decided in time."
        return AlreadyDecided(f"Approval request '{approval['id']}' already expired: {why}", approval)
    return AlreadyDecided(
        f"Approval request '{approval['id']}' was already {approval['status']} by "
        f"{approval['decided_by']}.",
        approval,
    )


def _stored(session: LiveSession, approval_id: str) -> ToolApproval | None:
    row = ToolApproval.objects.filter(session=session, approval_id=approval_id).first()
    if row is not None:
        row.session = session
    return row


def approval_list(*, session_id: str) -> list[dict[str, Any]]:
    """A session's approval requests, oldest first, as recorded."""
    return approvals_of(session_found(session_id))


def approvals_of(session: LiveSession) -> list[dict[str, Any]]:
    """The approval requests of `session`, oldest first, each as `ToolApproval.to_dict`."""
    rows = list(ToolApproval.objects.filter(session=session).order_by("created_at", "id"))
    for row in rows:
        row.session = session  # named, not read again for each row
    return [row.to_dict() for row in rows]

