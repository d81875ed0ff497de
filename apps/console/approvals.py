"""Tool approvals and rate limits on the session page.

`approvals_context` gives the page what it renders before its socket is live: the session's
approval requests as recorded, the latest rate limits, and whether this operator may decide.
`decide` is the Approve / Deny form: it works without JavaScript (POST, redirect, message) and
answers JSON to the page's script; it calls the same service as the REST hook
(`apps.sessions.approvals.approval_decide`), so the first decision wins wherever it is made.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.utils.dateparse import parse_datetime

from apps.console import steering
from apps.sessions import approvals
from apps.sessions.models import LiveSession
from apps.sessions.services import ServiceError

# Below this share of a limit remaining, the page warns that the session runs low.
LOW_SHARE = 0.10


def rate_limit_rows(session: LiveSession) -> list[dict[str, Any]]:
    """The latest rate limits as the page shows them: each with its share left and whether it
    is low (the browser draws the same from the live updates)."""
    rows = []
    for limit in session.rate_limits or ():
        if not isinstance(limit, dict):
            continue
        total, left = limit.get("limit"), limit.get("remaining")
        share = left / total if isinstance(total, int | float) and total > 0 and isinstance(left, int | float) else None
        low_at = total * LOW_SHARE if isinstance(total, int | float) else None
        reset = limit.get("reset_at")
        rows.append({
            **limit, "share": share, "low": share is not None and share < LOW_SHARE, "low_at": low_at,
            # A datetime, so the page without JavaScript shows a clock time like its others.
            "reset_time": parse_datetime(reset) if isinstance(reset, str) else None,
        })
    return rows


def approvals_context(request: HttpRequest, session: LiveSession, *, can_steer: bool) -> dict[str, Any]:
    limits = rate_limit_rows(session)
    return {
        "approvals": approvals.approvals_of(session),
        "approval_timeout": f"{settings.OC_APPROVAL_TIMEOUT:g}",
        "rate_limits": limits,
        "rate_low": [limit.get("name") or "?" for limit in limits if limit["low"]],
        "low_share": round(LOW_SHARE * 100),
        "can_decide": can_steer,
    }


@steering.form
async def decide(request: HttpRequest, session_id: str, approval_id: str, *, user: Any) -> HttpResponse:
    decision = request.POST.get("decision")
    reason = request.POST.get("reason", "").strip()
    if decision not in ("approve", "deny"):
        problem = "Choose Approve or Deny."
        if steering.wants_json(request):
            return JsonResponse({"ok": False, "errors": {"form": problem}}, status=422)
        messages.error(request, problem)
        return redirect(steering.back(session_id))
    try:
        approval = await approvals.approval_decide(
            session_id=session_id,
            approval_id=approval_id,
            approve=decision == "approve",
            reason=reason,
            decided_by=user.get_username(),
            origin="console",
        )
    except ServiceError as exc:
        more = {}
        if isinstance(exc, approvals.AlreadyDecided) and exc.approval is not None:
            more["approval"] = exc.approval
        return steering.refused(request, session_id, exc, anchor="#approvals", **more)
    done = f"{approval['name']}: {approval['status']}."
    return steering.done(request, session_id, done, {"approval": approval}, anchor="#approvals")
