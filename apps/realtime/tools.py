"""Tools with a human in the loop, and the session's rate limits. Pure, sans-I/O.

The relay core (`relay.RelayCore`) owns one `ToolDesk` and hands it the few events it is
about; the desk answers with the core's own actions (send upstream, tell watchers, answer an
operator) plus two of its own that the actor records: `ApprovalChanged` and
`RateLimitsChanged`. Like the core, it never awaits or reads a clock: time is `now`.

What it follows
  Tool calls    A `function_call` item (run by the caller's app) and an `mcp_call` item (run
                by the upstream) become transcript entries of role `tool`, with the name, the
                arguments, the output and the duration: a function's from its call item being
                done to its `function_call_output` item (the caller's answer, as the upstream
                echoes it); an MCP call's from `response.mcp_call.in_progress` to its item
                being done. Items are read from `conversation.item.done` and
                `response.output_item.done` alike, once each.
  Rate limits   The latest `rate_limits.updated` is the session's (`RateLimitsChanged`), and
                watchers are told. (The one that follows the `response.created` of an
                operator's out-of-band response is hidden from the caller, by the core, like
                the rest of that response.)
  Approvals     An `mcp_approval_request` item is pending until someone decides:
                - an operator (console or REST, `decide`): the first decision wins; a later one
                  is answered "already decided by X". The decision goes upstream as a
                  `conversation.item.create` of an `mcp_approval_response` (with an `id` of
                  the relay's, as the protocol requires; the relay's own event: an error about
                  it is not the caller's), followed by a
                  `response.create` that enters the sequencer as an operator's request, so it
                  never collides with another response (recorded with the surface's origin,
                  `console` or `api`, and the decider as `requested_by`).
                - the caller's own app, which sees the request as it sees every item: its
                  `mcp_approval_response`, if it comes first, is the decision (decided by
                  `caller`); the caller asks for its own next response, as it would without
                  the relay. An approval response of the caller's for a request already decided
                  is not sent upstream (the upstream would get two answers to one request): the
                  caller gets an `error` saying who decided.
                - nobody, within `approval_timeout` seconds: denied, status `expired`, with a
                  reason saying so and nobody as `decided_by`, sent upstream like an
                  operator's denial (its response asked for by "approval timeout").
                When the session ends, a request still pending is recorded `expired` too.

Functions the deployment marks as sensitive are not held for approval here: a function call is
run by the caller's app, which has the call (its item streams to the caller as it is made)
before any operator could see it, so an operator's "deny" could neither stop it nor be told
apart, upstream, from the caller's own output. Such a function is better exposed as an MCP tool
with `require_approval`, which the upstream holds until the decision.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

# The relay core's actions are imported where they are used: `relay` imports this module.
if TYPE_CHECKING:
    from apps.realtime.relay import RelayCore

# Upstream events the desk reads (the core parses them and hands them over).
ITEM_DONE_TYPES = frozenset({"conversation.item.done", "response.output_item.done"})
RATE_LIMITS_TYPE = "rate_limits.updated"
MCP_CALL_STARTED_TYPE = "response.mcp_call.in_progress"
UPSTREAM_TYPES = ITEM_DONE_TYPES | {RATE_LIMITS_TYPE, MCP_CALL_STARTED_TYPE}
# The caller's event the desk reads while an approval is known.
CALLER_ITEM_CREATE = "conversation.item.create"

APPROVAL_REQUEST = "mcp_approval_request"
APPROVAL_RESPONSE = "mcp_approval_response"
FUNCTION_CALL = "function_call"
FUNCTION_OUTPUT = "function_call_output"
MCP_CALL = "mcp_call"

PENDING, APPROVED, DENIED, EXPIRED = "pending", "approved", "denied", "expired"
# Why a request still pending at its session's end expired (another process's sweep of a lost
# session says the same).
UNDECIDED_AT_END = "The session ended before anyone decided."


def approval_response_id(approval_id: str) -> str:
    """The id of the relay's answer to an approval request. The protocol requires one (the
    SDK's `RealtimeMcpApprovalResponseParam`); one request is answered once, so one derived
    from the request's id is unique, and at 29 characters the service takes it from a client."""
    return "mcpa_" + hashlib.blake2s(approval_id.encode(), digest_size=12).hexdigest()
# Who decided, when it was not an operator.
BY_CALLER = "caller"
# Who asked for the response after a request expired (its `decided_by` stays empty).
TIMEOUT_REQUESTER = "approval timeout"

# Watchers' messages (the browser gets them without the `console.` prefix).
WATCH_APPROVAL = "console.approval"
WATCH_RATE_LIMITS = "console.rate_limits"

# Approvals and tool calls remembered per session (the oldest finished ones are forgotten).
MAX_APPROVALS = 64
MAX_CALLS = 64
# An operator's reason, as the REST hook allows it.
MAX_REASON_CHARS = 1000


# ---------------------------------------------------------------------------- actions


@dataclass(frozen=True, kw_only=True, slots=True)
class ApprovalChanged:
    """An approval request was made or decided: `approval` is its public shape
    (`Approval.as_dict()`)."""

    approval: dict[str, Any] = field(hash=False)
    at: float


@dataclass(frozen=True, kw_only=True, slots=True)
class RateLimitsChanged:
    """The upstream's latest `rate_limits` list, as it sent it, at `at`."""

    rate_limits: list[Any] = field(hash=False)
    at: float


# ---------------------------------------------------------------------------- state


@dataclass(slots=True)
class Approval:
    approval_id: str
    name: str
    server_label: str
    arguments: str
    created_at: float
    expires_at: float
    kind: str = "mcp"
    status: str = PENDING
    reason: str = ""
    decided_by: str = ""
    decided_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "approval_id": self.approval_id,
            "kind": self.kind,
            "name": self.name,
            "server_label": self.server_label,
            "arguments": self.arguments,
            "status": self.status,
            "reason": self.reason,
            "decided_by": self.decided_by,
            "created_at": self.created_at,
            "decided_at": self.decided_at,
        }


@dataclass(slots=True)
class _Call:
    """A tool call as the transcript shows it."""

    item_id: str
    kind: str  # "function" | "mcp"
    name: str
    arguments: str
    response_id: str | None
    started_at: float | None
    server_label: str = ""
    call_id: str = ""
    output: str | None = None
    error: str | None = None
    duration_ms: int | None = None
    done: bool = False

    def details(self) -> dict[str, Any]:
        details: dict[str, Any] = {
            "kind": self.kind,
            "name": self.name,
            "arguments": self.arguments,
            "output": self.output,
            "duration_ms": self.duration_ms,
        }
        if self.server_label:
            details["server_label"] = self.server_label
        if self.error:
            details["error"] = self.error
        return details


def _text(value: Any, limit: int = 65_536) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _error_text(error: Any) -> str | None:
    if error is None:
        return None
    if isinstance(error, dict):
        message = error.get("message")
        return _text(message) or _text(error.get("type")) or "error"
    return _text(error) or "error"


class ToolDesk:
    def __init__(self, core: RelayCore, *, approval_timeout: float = 30.0) -> None:
        self.core = core
        self.approval_timeout = approval_timeout
        self.approvals: OrderedDict[str, Approval] = OrderedDict()
        self.rate_limits: list[Any] | None = None
        self.rate_limits_at: float | None = None
        self._calls: OrderedDict[str, _Call] = OrderedDict()  # item id → call
        self._by_call_id: dict[str, str] = {}  # a function's call_id → its item id
        self._mcp_started: dict[str, float] = {}  # mcp_call item id → when it started

    # ------------------------------------------------------------------ views

    @property
    def reads_caller_items(self) -> bool:
        """Whether the caller's `conversation.item.create` must be read (an approval is known)."""
        return bool(self.approvals)

    @property
    def has_pending(self) -> bool:
        """An approval request waits for a decision: its answer must reach the upstream session
        that asked (a rotation should wait, or carry the request over)."""
        return any(a.status == PENDING for a in self.approvals.values())

    @property
    def next_deadline(self) -> float | None:
        pending = [a.expires_at for a in self.approvals.values() if a.status == PENDING]
        return min(pending, default=None)

    def snapshot(self) -> dict[str, Any]:
        """What a new watcher needs: every approval remembered, and the latest rate limits."""
        return {
            "approvals": [a.as_dict() for a in self.approvals.values()],
            "rate_limits": self._rate_limits_message(),
        }

    # ------------------------------------------------------------------ upstream

    def upstream_event(self, kind: str, event: dict[str, Any], now: float) -> list:
        if kind == RATE_LIMITS_TYPE:
            return self._rate_limits(event, now)
        if kind == MCP_CALL_STARTED_TYPE:
            item_id = event.get("item_id")
            if isinstance(item_id, str) and len(self._mcp_started) < MAX_CALLS:
                self._mcp_started.setdefault(item_id, now)
            return []
        item = event.get("item")
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            return []
        response_id = event.get("response_id")
        response_id = response_id if isinstance(response_id, str) else None
        item_type = item.get("type")
        if item_type == APPROVAL_REQUEST:
            return self._approval_requested(item, now)
        if item_type == FUNCTION_CALL:
            return self._function_called(item, response_id, now)
        if item_type == FUNCTION_OUTPUT:
            return self._function_answered(item, now)
        if item_type == MCP_CALL:
            return self._mcp_called(item, response_id, now)
        # An approval response in the conversation is ours, or the caller's: each was recorded
        # as it was sent.
        return []

    def _rate_limits(self, event: dict[str, Any], now: float) -> list:
        from apps.realtime.relay import ToWatchers

        limits = event.get("rate_limits")
        if not isinstance(limits, list):
            return []
        self.rate_limits = [limit for limit in limits if isinstance(limit, dict)]
        self.rate_limits_at = now
        actions: list = [RateLimitsChanged(rate_limits=self.rate_limits, at=now)]
        if self.core.watched:
            actions.append(ToWatchers(message=self._rate_limits_message()))
        return actions

    def _rate_limits_message(self) -> dict[str, Any] | None:
        if self.rate_limits is None:
            return None
        return {
            "type": WATCH_RATE_LIMITS,
            "session_id": self.core.session_id,
            "rate_limits": self.rate_limits,
            "at": self.rate_limits_at,
        }

    def _approval_requested(self, item: dict[str, Any], now: float) -> list:
        approval_id = item["id"]
        if approval_id in self.approvals:
            return []  # seen already (as an output item, then as a conversation item)
        approval = Approval(
            approval_id=approval_id,
            name=_text(item.get("name"), 128),
            server_label=_text(item.get("server_label"), 128),
            arguments=_text(item.get("arguments")),
            created_at=now,
            expires_at=now + self.approval_timeout,
        )
        self.approvals[approval_id] = approval
        self._forget_approvals()
        self.core.deadline_moved()
        return self._changed(approval, now)

    def _function_called(self, item: dict[str, Any], response_id: str | None, now: float) -> list:
        item_id = item["id"]
        if item_id in self._calls:
            return []
        call = _Call(
            item_id=item_id,
            kind="function",
            name=_text(item.get("name"), 128),
            arguments=_text(item.get("arguments")),
            response_id=response_id,
            started_at=now,
            call_id=_text(item.get("call_id"), 128),
        )
        self._remember(call)
        if call.call_id:
            self._by_call_id[call.call_id] = item_id
        return self._show(call, now)

    def _function_answered(self, item: dict[str, Any], now: float) -> list:
        call_id = item.get("call_id")
        item_id = self._by_call_id.pop(call_id, None) if isinstance(call_id, str) else None
        call = self._calls.get(item_id) if item_id is not None else None
        if call is None or call.done:
            return []
        call.output = _text(item.get("output"))
        call.done = True
        if call.started_at is not None:
            call.duration_ms = round((now - call.started_at) * 1000)
        return self._show(call, now)

    def _mcp_called(self, item: dict[str, Any], response_id: str | None, now: float) -> list:
        item_id = item["id"]
        known = self._calls.get(item_id)
        if known is not None and known.done:
            return []
        started = self._mcp_started.pop(item_id, None)
        call = _Call(
            item_id=item_id,
            kind="mcp",
            name=_text(item.get("name"), 128),
            arguments=_text(item.get("arguments")),
            response_id=response_id,
            started_at=started,
            server_label=_text(item.get("server_label"), 128),
            output=_text(item.get("output")) if item.get("output") is not None else None,
            error=_error_text(item.get("error")),
            done=True,
        )
        if started is not None:
            call.duration_ms = round((now - started) * 1000)
        self._remember(call)
        return self._show(call, now)

    def _remember(self, call: _Call) -> None:
        self._calls[call.item_id] = call
        while len(self._calls) > MAX_CALLS:
            _, old = self._calls.popitem(last=False)
            self._by_call_id.pop(old.call_id, None)

    def _show(self, call: _Call, now: float) -> list:
        self.core.transcript.tool(
            call.item_id, details=call.details(), done=call.done, response_id=call.response_id
        )
        self.core.transcript_changed(now)
        return []

    # ------------------------------------------------------------------ the caller

    def caller_item(self, frame: str, event: dict[str, Any], now: float) -> list:
        """The caller's `conversation.item.create`: passed on, unless it answers an approval
        request someone else decided first."""
        from apps.realtime.relay import ToUpstream

        item = event.get("item")
        if not isinstance(item, dict) or item.get("type") != APPROVAL_RESPONSE:
            return [ToUpstream(frame=frame)]
        approval = self.approvals.get(item.get("approval_request_id"))  # type: ignore[arg-type]
        if approval is None:
            return [ToUpstream(frame=frame)]  # not one the relay knows: the upstream judges it
        if approval.status != PENDING:
            event_id = event.get("event_id")
            return self.core.tell_caller(
                "approval_already_decided",
                f"Approval request '{approval.approval_id}' was already {approval.status} by "
                f"{approval.decided_by or 'the relay'}; this answer was not sent.",
                param="item.approval_request_id",
                event_id=event_id if isinstance(event_id, str) else None,
            )
        approve = item.get("approve") is True
        reason = _text(item.get("reason"), MAX_REASON_CHARS)
        self._decided(approval, APPROVED if approve else DENIED, reason, BY_CALLER, now)
        return [ToUpstream(frame=frame), *self._changed(approval, now)]

    # ------------------------------------------------------------------ operators

    def decide(
        self,
        approval_id: str,
        *,
        approve: bool,
        reason: str,
        by: str,
        origin: str,
        now: float,
    ) -> list:
        """An operator's decision. The answer (`Answer`, last) is `{"ok": True, "approval"}`, or
        `{"ok": False, "code", "message"}` with `approval` when it was already decided."""
        from apps.realtime.relay import Answer

        approval = self.approvals.get(approval_id)
        if approval is None:
            message = f"No approval request '{approval_id}' in this session."
            return [Answer(payload={"ok": False, "code": "approval_not_found", "message": message})]
        if approval.status != PENDING:
            return [Answer(payload=self._already(approval))]
        if self.core.ended is not None:
            message = "The session has ended; its approval requests can no longer be decided."
            return [Answer(payload={"ok": False, "code": "session_not_live", "message": message})]
        status = APPROVED if approve else DENIED
        actions = self._send_decision(approval, status, reason[:MAX_REASON_CHARS], by, origin, now)
        actions.append(Answer(payload={"ok": True, "approval": approval.as_dict()}))
        return actions

    @staticmethod
    def _already(approval: Approval) -> dict[str, Any]:
        who = approval.decided_by or "the relay (nobody decided in time)"
        return {
            "ok": False,
            "code": "already_decided",
            "message": f"Approval request '{approval.approval_id}' was already {approval.status} by {who}.",
            "approval": approval.as_dict(),
        }

    def _send_decision(
        self,
        approval: Approval,
        status: str,
        reason: str,
        by: str,
        origin: str,
        now: float,
        *,
        requested_by: str | None = None,
    ) -> list:
        from apps.realtime.relay import ToUpstream

        self._decided(approval, status, reason, by, now)
        item: dict[str, Any] = {
            "type": APPROVAL_RESPONSE,
            "id": approval_response_id(approval.approval_id),
            "approval_request_id": approval.approval_id,
            "approve": status == APPROVED,
        }
        if reason:
            item["reason"] = reason
        actions: list = [
            ToUpstream(frame=self.core.own_event("conversation.item.create", item=item)),
            *self._changed(approval, now),
        ]
        # The model goes on once told: a response asked for as an operator's, in the queue.
        asker = by if requested_by is None else requested_by
        actions += self.core.request_response(origin=origin, requested_by=asker, now=now)
        # An attached call's sideband being opened again: the decision goes once it is open.
        return self.core.held_while_offline(actions)

    # ------------------------------------------------------------------ time and the end

    def tick(self, now: float) -> list:
        actions: list = []
        for approval in list(self.approvals.values()):
            if approval.status == PENDING and now >= approval.expires_at:
                reason = f"No operator decided within {self.approval_timeout:g} s."
                actions += self._send_decision(
                    approval, EXPIRED, reason, "", "console", now, requested_by=TIMEOUT_REQUESTER
                )
        return actions

    def session_ended(self, now: float) -> list:
        """Requests still pending can no longer be decided: recorded `expired`."""
        actions: list = []
        for approval in self.approvals.values():
            if approval.status == PENDING:
                self._decided(approval, EXPIRED, UNDECIDED_AT_END, "", now)
                actions += self._changed(approval, now)
        return actions

    # ------------------------------------------------------------------ internals

    def _decided(self, approval: Approval, status: str, reason: str, by: str, now: float) -> None:
        approval.status, approval.reason, approval.decided_by = status, reason, by
        approval.decided_at = now
        self.core.deadline_moved()

    def _changed(self, approval: Approval, now: float) -> list:
        from apps.realtime.relay import ToWatchers

        shape = approval.as_dict()
        return [
            ApprovalChanged(approval=shape, at=now),
            ToWatchers(
                message={"type": WATCH_APPROVAL, "session_id": self.core.session_id, "approval": shape}
            ),
        ]

    def _forget_approvals(self) -> None:
        decided = [key for key, a in self.approvals.items() if a.status != PENDING]
        for key in decided[: max(0, len(self.approvals) - MAX_APPROVALS)]:
            del self.approvals[key]
