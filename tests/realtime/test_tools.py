"""Tool calls, approvals and rate limits in the relay core (`apps/realtime/tools.py`).

Synchronous and table-driven, like tests/realtime/test_relay.py: each step is an input and the
actions it returns, summarised as short strings:
  "upstream <type>"                       ToUpstream (an approval response shows its decision)
  "caller <type>" / "caller error <code>"  ToCaller
  "approval <id> <status> <by>"          ApprovalChanged
  "rate_limits <remaining>,…"            RateLimitsChanged
  "watchers <kind>"                      ToWatchers (kind without the prefix)
  "recorded <id> <origin> <status>" / "<id> <status>"   the response asked for after a decision
  "answer ok" / "answer <code>"          Answer
"""

from __future__ import annotations

import itertools
import json

import pytest

from apps.realtime import events
from apps.realtime.relay import (
    Answer,
    RelayCore,
    RequestChanged,
    RequestRecorded,
    SessionEnded,
    ToCaller,
    ToUpstream,
    ToWatcher,
    ToWatchers,
    TranscriptFinal,
)
from apps.realtime.tools import ApprovalChanged, RateLimitsChanged, approval_response_id
from apps.simulator import shape
from apps.simulator.session import ITEM_ID_MAX_CHARS

TIMEOUT = 30.0


def summary(actions) -> list[str]:
    out = []
    for action in actions:
        match action:
            case ToUpstream(frame=frame):
                event = json.loads(frame)
                item = event.get("item") or {}
                if item.get("type") == "mcp_approval_response":
                    word = "approve" if item["approve"] else "deny"
                    out.append(f"upstream approval {item['approval_request_id']} {word}")
                else:
                    out.append(f"upstream {event['type']}")
            case ToCaller(frame=frame):
                event = json.loads(frame)
                code = f" {event['error']['code']}" if event["type"] == "error" else ""
                out.append(f"caller {event['type']}{code}")
            case ApprovalChanged(approval=approval):
                by = approval["decided_by"] or "-"
                out.append(f"approval {approval['approval_id']} {approval['status']} {by}")
            case RateLimitsChanged(rate_limits=limits):
                out.append("rate_limits " + ",".join(str(limit["remaining"]) for limit in limits))
            case ToWatchers(message=message):
                out.append(f"watchers {message['type'].removeprefix('console.')}")
            case ToWatcher():
                pass  # the snapshot a watcher starts from: looked at on its own
            case RequestRecorded(request_id=rid, origin=origin, status=status):
                out.append(f"recorded {rid} {origin} {status.value}")
            case RequestChanged(request_id=rid, status=status):
                out.append(f"{rid} {status.value}")
            case Answer(payload=payload):
                out.append("answer " + ("ok" if payload.get("ok") else payload["code"]))
            case TranscriptFinal():
                pass  # looked at in the transcript tests
            case SessionEnded(reason=reason):
                out.append(f"ended {reason.value}")
            case _:
                raise AssertionError(f"unexpected action {action!r}")
    return out


def frame(**event) -> str:
    return events.dumps({"event_id": "ev", **event})


def approval_item(approval_id: str = "mcpr_1", name: str = "lookup") -> dict:
    return {
        "id": approval_id,
        "type": "mcp_approval_request",
        "name": name,
        "server_label": "crm",
        "arguments": '{"order": 42}',
    }


def approval_done(approval_id: str = "mcpr_1", kind: str = "response.output_item.done") -> str:
    extra = {"response_id": "resp_1", "output_index": 0} if kind.startswith("response.") else {}
    return frame(type=kind, item=approval_item(approval_id), **extra)


def response_event(kind: str, response_id: str, oc_request: str | None = None) -> str:
    metadata = {"oc_request": oc_request} if oc_request else None
    status = "in_progress" if kind == "response.created" else "completed"
    return frame(type=kind, response={"id": response_id, "status": status, "metadata": metadata})


def caller_answer(approval_id: str = "mcpr_1", approve: bool = True) -> str:
    item = {"type": "mcp_approval_response", "approval_request_id": approval_id, "approve": approve}
    return frame(type="conversation.item.create", item=item)


def new_core() -> RelayCore:
    requests, event_ids = itertools.count(1), itertools.count(1)
    core = RelayCore(
        fallback_id="sess_fallback",
        connected_by="token:app",
        new_request_id=lambda: f"r{next(requests)}",
        new_event_id=lambda: f"e{next(event_ids)}",
        approval_timeout=TIMEOUT,
    )
    core.upstream_attached(now=0.0)
    core.upstream_frame(frame(type="session.created", session={"id": "sess_1"}), now=0.0)
    return core


def decide(core, approval_id="mcpr_1", *, approve=True, by="ann", reason="", now=2.0):
    return core.tools.decide(
        approval_id, approve=approve, reason=reason, by=by, origin="console", now=now
    )


# The response asked for after a decision: recorded, queued, sent.
ASKED_R1 = [
    "recorded r1 console queued",
    "r1 queued",
    "watchers request",
    "upstream response.create",
    "r1 sent",
    "watchers request",
]
PENDING = ["approval mcpr_1 pending -", "watchers approval", "caller response.output_item.done"]
APPROVED_BY_ANN = [
    "upstream approval mcpr_1 approve",
    "approval mcpr_1 approved ann",
    "watchers approval",
    *ASKED_R1,
    "answer ok",
]

# Each case: a list of (input, expected summary). Inputs: ("up", frame), ("caller", frame),
# ("decide", kwargs), ("tick", now), ("end", None).
CASES = {
    "an approval request is pending, and shown to watchers": [
        (("up", approval_done()), PENDING),
    ],
    "seen as an output item and as a conversation item, it is one request": [
        (("up", approval_done()), PENDING),
        (("up", approval_done(kind="conversation.item.done")), ["caller conversation.item.done"]),
    ],
    "the first operator's decision goes upstream, with a response asked for after it": [
        (("up", approval_done()), PENDING),
        (("decide", {}), APPROVED_BY_ANN),
    ],
    "a later decision is told who decided first, and nothing more goes upstream": [
        (("up", approval_done()), PENDING),
        (("decide", {}), APPROVED_BY_ANN),
        (("decide", {"by": "bob", "approve": False}), ["answer already_decided"]),
    ],
    "a decision on an unknown request is refused": [
        (("decide", {"approval_id": "mcpr_nope"}), ["answer approval_not_found"]),
    ],
    "a denial is sent as a denial": [
        (("up", approval_done()), PENDING),
        (
            ("decide", {"approve": False, "reason": "not this customer"}),
            [
                "upstream approval mcpr_1 deny",
                "approval mcpr_1 denied ann",
                "watchers approval",
                *ASKED_R1,
                "answer ok",
            ],
        ),
    ],
    "nobody deciding before the timeout: nothing happens early": [
        (("up", approval_done()), PENDING),
        (("tick", 1.0 + TIMEOUT - 0.01), []),
    ],
    "nobody deciding within the timeout: denied, and expired": [
        (("up", approval_done()), PENDING),
        (
            ("tick", 1.0 + TIMEOUT),
            [
                "upstream approval mcpr_1 deny",
                "approval mcpr_1 expired -",
                "watchers approval",
                *ASKED_R1,
            ],
        ),
        (("decide", {"now": 40.0}), ["answer already_decided"]),
    ],
    "the caller's app answering first is the decision, recorded as the caller's": [
        (("up", approval_done()), PENDING),
        (
            ("caller", caller_answer(approve=True)),
            ["upstream approval mcpr_1 approve", "approval mcpr_1 approved caller", "watchers approval"],
        ),
        (("decide", {}), ["answer already_decided"]),
    ],
    "the caller's answer after an operator's is not sent upstream, and the caller is told": [
        (("up", approval_done()), PENDING),
        (("decide", {}), APPROVED_BY_ANN),
        (("caller", caller_answer(approve=False)), ["caller error approval_already_decided"]),
    ],
    "a caller's answer to a request the relay does not know goes upstream as it is": [
        (("up", approval_done()), PENDING),
        (("caller", caller_answer("mcpr_other")), ["upstream approval mcpr_other approve"]),
    ],
    "the decision's response waits for the active response to finish": [
        (("up", response_event("response.created", "resp_1")), [
            "recorded r1 server in_progress", "r1 in_progress", "caller response.created"
        ]),
        (("up", approval_done()), PENDING),
        (
            ("decide", {}),
            [
                "upstream approval mcpr_1 approve",
                "approval mcpr_1 approved ann",
                "watchers approval",
                "recorded r2 console queued",
                "r2 queued",
                "watchers request",
                "answer ok",
            ],
        ),
        (
            ("up", response_event("response.done", "resp_1")),
            ["r1 completed", "upstream response.create", "r2 sent", "watchers request", "caller response.done"],
        ),
    ],
    "an upstream error about the relay's approval response is not the caller's": [
        (("up", approval_done()), PENDING),
        (("decide", {}), APPROVED_BY_ANN),
        (
            ("up", frame(type="error", error={"type": "invalid_request_error", "code": "x", "message": "m", "event_id": "e1"})),
            ["watchers event"],  # operators see it; the caller never sent that event
        ),
    ],
    "a session that ends with a request pending records it expired": [
        (("up", approval_done()), PENDING),
        (("end", None), ["approval mcpr_1 expired -", "watchers approval", "watchers ended", "ended caller_closed"]),
        (("decide", {"now": 5.0}), ["answer already_decided"]),
    ],
}


@pytest.mark.parametrize("steps", CASES.values(), ids=CASES.keys())
def test_approvals(steps):
    core = new_core()
    for (kind, argument), expected in steps:
        if kind == "up":
            actions = core.upstream_frame(argument, now=1.0)
        elif kind == "caller":
            actions = core.caller_frame(argument, now=1.5)
        elif kind == "decide":
            actions = decide(core, **argument)
        elif kind == "tick":
            actions = core.tick(now=argument)
        else:
            actions = core.caller_closed(now=3.0)
        assert summary(actions) == expected, (kind, argument)


def test_a_pending_request_sets_the_deadline_at_the_timeout():
    core = new_core()
    assert core.next_deadline is None
    core.upstream_frame(approval_done(), now=1.0)
    assert core.next_deadline == 1.0 + TIMEOUT
    assert core.tools.has_pending
    decide(core)  # decided: only the response it asked for has a deadline now (its send's)
    assert not core.tools.has_pending
    assert core.next_deadline == 2.0 + core.sequencer.send_timeout


def test_the_decision_sent_upstream_is_the_protocols_approval_response():
    core = new_core()
    core.upstream_frame(approval_done(), now=1.0)
    actions = decide(core, approve=False, reason="wrong account")
    sent = json.loads(actions[0].frame)
    assert sent["type"] == "conversation.item.create"
    assert sent["item"] == {
        "type": "mcp_approval_response",
        "id": approval_response_id("mcpr_1"),
        "approval_request_id": "mcpr_1",
        "approve": False,
        "reason": "wrong account",
    }
    answer = actions[-1].payload
    assert answer["approval"]["decided_by"] == "ann"
    assert answer["approval"]["reason"] == "wrong account"
    assert answer["approval"]["decided_at"] == 2.0


@pytest.mark.parametrize(
    "how",
    ["approved", "denied", "denied with a reason", "expired"],
)
def test_every_approval_response_the_relay_sends_is_one_the_service_takes(how):
    # The SDK's `RealtimeMcpApprovalResponseParam` requires an `id` (OpenAI's own Ruby
    # example sends one); a strict upstream refuses an approval response without it, and the
    # model would then wait for a decision that never came. Each decision gets its own id,
    # one the service takes from a client (at most 32 characters).
    core = new_core()
    core.upstream_frame(approval_done("mcpr_1"), now=1.0)
    core.upstream_frame(approval_done("mcpr_2"), now=1.0)
    if how == "expired":
        actions = core.tick(now=1.0 + TIMEOUT)
    else:
        reason = "wrong account" if how.endswith("reason") else ""
        actions = decide(core, "mcpr_1", approve=how == "approved", reason=reason)
        actions += decide(core, "mcpr_2", approve=how == "approved", reason=reason)
    sent = [json.loads(a.frame).get("item", {}) for a in actions if isinstance(a, ToUpstream)]
    items = [item for item in sent if item.get("type") == "mcp_approval_response"]
    assert len(items) == 2
    for item in items:
        shape.check_item(item)  # raises Rejected if the simulator's strict checks refuse it
        assert len(item["id"]) <= ITEM_ID_MAX_CHARS
    assert items[0]["id"] != items[1]["id"], "one conversation cannot hold two items of one id"


def test_an_expired_request_says_it_timed_out():
    core = new_core()
    core.upstream_frame(approval_done(), now=1.0)
    actions = core.tick(now=1.0 + TIMEOUT)
    item = json.loads(actions[0].frame)["item"]
    assert item["approve"] is False
    assert item["reason"] == f"No operator decided within {TIMEOUT:g} s."
    changed = next(a for a in actions if isinstance(a, ApprovalChanged))
    assert changed.approval["status"] == "expired"
    assert changed.approval["reason"] == item["reason"]
    assert changed.approval["decided_by"] == ""  # nobody decided
    (asked,) = [a for a in actions if isinstance(a, RequestRecorded)]
    assert asked.requested_by == "approval timeout"


def test_already_decided_names_who_decided():
    core = new_core()
    core.upstream_frame(approval_done(), now=1.0)
    decide(core, by="ann")
    answer = decide(core, by="bob")[-1].payload
    assert "ann" in answer["message"] and answer["approval"]["status"] == "approved"


def test_a_new_watcher_is_given_the_approvals_and_the_rate_limits():
    core = new_core()
    core.upstream_frame(approval_done(), now=1.0)
    limits = [{"name": "tokens", "limit": 1000, "remaining": 50, "reset_seconds": 2.5}]
    core.upstream_frame(frame(type="rate_limits.updated", rate_limits=limits), now=1.2)
    snapshot = core.watch("w1", user="ann", watching=True, now=2.0)[0].message
    assert [a["approval_id"] for a in snapshot["approvals"]] == ["mcpr_1"]
    assert snapshot["approvals"][0]["status"] == "pending"
    assert snapshot["rate_limits"]["rate_limits"] == limits
    assert snapshot["rate_limits"]["at"] == 1.2


@pytest.mark.parametrize("watched", [False, True])
def test_rate_limits_are_the_latest_and_watchers_are_told(watched):
    core = new_core()
    if watched:
        core.watch("w1", user="ann", watching=True, now=0.5)
    first = [{"name": "requests", "limit": 100, "remaining": 99, "reset_seconds": 1}]
    second = [{"name": "requests", "limit": 100, "remaining": 98, "reset_seconds": 1}]
    core.upstream_frame(frame(type="rate_limits.updated", rate_limits=first), now=1.0)
    actions = core.upstream_frame(frame(type="rate_limits.updated", rate_limits=second), now=2.0)
    expected = ["rate_limits 98", "caller rate_limits.updated"]
    if watched:
        expected.insert(1, "watchers rate_limits")
    assert summary(actions) == expected
    assert core.tools.rate_limits == second


# ---------------------------------------------------------------------------- tool calls


def watched_core() -> RelayCore:
    core = new_core()
    core.watch("w1", user="ann", watching=True, now=0.5)
    return core


def tool_entries(core) -> list[dict]:
    return [entry for entry in core.transcript.snapshot() if entry["role"] == "tool"]


def test_a_function_call_and_its_output_are_one_transcript_entry_with_its_duration():
    core = watched_core()
    call = {"id": "item_fc", "type": "function_call", "name": "get_weather", "call_id": "call_1", "arguments": '{"city": "Oslo"}'}
    core.upstream_frame(frame(type="response.output_item.done", response_id="resp_1", item=call), now=1.0)
    core.upstream_frame(frame(type="conversation.item.done", item=call), now=1.01)
    (entry,) = tool_entries(core)
    assert entry["done"] is False and entry["tool"]["output"] is None
    output = {"id": "item_out", "type": "function_call_output", "call_id": "call_1", "output": '{"temp": 3}'}
    actions = core.upstream_frame(frame(type="conversation.item.done", item=output), now=1.25)
    (entry,) = tool_entries(core)
    assert entry["id"] == "item_fc" and entry["done"] is True
    assert entry["response_id"] == "resp_1"
    assert entry["tool"] == {
        "kind": "function",
        "name": "get_weather",
        "arguments": '{"city": "Oslo"}',
        "output": '{"temp": 3}',
        "duration_ms": 250,
    }
    finals = [a.entry for a in actions if isinstance(a, TranscriptFinal)]
    assert finals and finals[0]["tool"]["output"] == '{"temp": 3}'
    flushed = core.tick(now=2.0)
    sent = [a.message for a in flushed if isinstance(a, ToWatchers)]
    assert sent and sent[0]["entries"][-1]["tool"]["duration_ms"] == 250


def test_an_mcp_call_is_timed_from_in_progress_to_its_item():
    core = watched_core()
    core.upstream_frame(frame(type="response.mcp_call.in_progress", item_id="mcp_1", output_index=0), now=1.0)
    item = {"id": "mcp_1", "type": "mcp_call", "name": "lookup", "server_label": "crm", "arguments": "{}", "output": "order 42: shipped", "approval_request_id": "mcpr_1"}
    core.upstream_frame(frame(type="response.output_item.done", response_id="resp_2", item=item), now=1.5)
    core.upstream_frame(frame(type="conversation.item.done", item=item), now=1.6)
    (entry,) = tool_entries(core)
    assert entry["text"] == "order 42: shipped"
    assert entry["tool"]["kind"] == "mcp" and entry["tool"]["server_label"] == "crm"
    assert entry["tool"]["duration_ms"] == 500


def test_a_failed_mcp_call_shows_its_error():
    core = watched_core()
    item = {"id": "mcp_2", "type": "mcp_call", "name": "lookup", "server_label": "crm", "arguments": "{}", "output": None, "error": {"type": "http_error", "code": 500, "message": "server down"}}
    core.upstream_frame(frame(type="conversation.item.done", item=item), now=1.0)
    (entry,) = tool_entries(core)
    assert entry["tool"]["error"] == "server down"
    assert entry["tool"]["duration_ms"] is None  # its start was not seen


def test_the_rate_limits_of_an_operators_out_of_band_response_are_not_the_callers():
    from apps.realtime.relay import OperatorRequest

    core = new_core()
    core.submit(OperatorRequest(id="op1", origin="console", conversation="none"), now=1.0)
    core.upstream_frame(response_event("response.created", "resp_oob", oc_request="op1"), now=1.1)
    limits = [{"name": "tokens", "limit": 100, "remaining": 90, "reset_seconds": 1}]
    actions = core.upstream_frame(frame(type="rate_limits.updated", rate_limits=limits), now=1.2)
    assert summary(actions) == ["rate_limits 90", "watchers event"]  # recorded, never the caller's
    core.upstream_frame(response_event("response.created", "resp_caller"), now=1.3)
    actions = core.upstream_frame(frame(type="rate_limits.updated", rate_limits=limits), now=1.4)
    assert summary(actions) == ["rate_limits 90", "caller rate_limits.updated"]
