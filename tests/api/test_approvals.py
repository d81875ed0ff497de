"""Tool approvals through the REST hook and the service, with a live caller session on the real
application and the simulator upstream asking for approval (`#mcp:NAME`)."""

from __future__ import annotations

import pytest

from apps.sessions.history import writer as history
from apps.sessions.models import LiveSession, ResponseRequest, ToolApproval
from tests.support.realtime import eventually, user_text

pytestmark = pytest.mark.django_db(transaction=True)

MCP_TOOL = {
    "type": "mcp",
    "server_label": "crm",
    "server_url": "https://crm.example/mcp",
    "require_approval": "always",
}


async def _ask_for_approval(caller, text: str = "Look it up #mcp:lookup {\"order\": 42}") -> str:
    """The caller's turn makes the simulated model ask to run `lookup`: the request's id."""
    await caller.send({"type": "session.update", "session": {"type": "realtime", "tools": [MCP_TOOL]}})
    await caller.until("session.updated")
    await caller.send({"type": "conversation.item.create", "item": user_text(text)})
    await caller.send({"type": "response.create"})
    events = await caller.until("response.done")
    requests = [
        e["item"] for e in events
        if e["type"] == "response.output_item.done" and e["item"]["type"] == "mcp_approval_request"
    ]
    assert len(requests) == 1, [e["type"] for e in events]
    return requests[0]["id"]


async def _own_caller(caller_token: str):
    """A caller on the real application that the test disconnects itself (the `caller`
    fixture's session starts before a test can change its settings, and outlives it)."""
    from channels.testing import WebsocketCommunicator

    from operator_console.asgi import application
    from tests.conftest import Caller

    communicator = WebsocketCommunicator(
        application, "/v1/realtime?model=gpt-realtime",
        headers=[(b"authorization", f"Bearer {caller_token}".encode())],
    )
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    created = await communicator.receive_json_from(timeout=5)
    return Caller(communicator, created["session"]["id"])


async def test_an_approval_posted_is_sent_upstream_once_and_the_tool_runs(caller, rest, simulator, relay_settings):
    approval_id = await _ask_for_approval(caller)
    url = f"/sessions/{caller.session_id}/approvals/{approval_id}"

    decided = await rest.post(url, json={"approve": True, "reason": "checked the order"})
    assert decided.status_code == 200, decided.text
    body = decided.json()
    assert body["id"] == approval_id and body["session_id"] == caller.session_id
    assert body["status"] == "approved" and body["decided_by"] == "token:script"
    assert body["name"] == "lookup" and body["server_label"] == "crm"
    assert body["reason"] == "checked the order"
    assert body["created_at"] and body["decided_at"]

    # The response asked for after the decision runs the tool; the caller sees it all.
    events = await caller.until("response.done", n=2)
    calls = [e["item"] for e in events if e["type"] == "conversation.item.done" and e["item"]["type"] == "mcp_call"]
    assert calls and "[simulated] crm.lookup" in calls[0]["output"]

    again = await rest.post(url, json={"approve": False})
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "already_decided"
    assert "token:script" in again.json()["error"]["message"]

    responses = simulator.sim.approval_responses(caller.session_id)
    assert [(r["approval_request_id"], r["approve"]) for r in responses] == [(approval_id, True)]

    await history.flush()
    row = await ToolApproval.objects.aget(approval_id=approval_id)
    assert (row.status, row.decided_by, row.reason) == ("approved", "token:script", "checked the order")
    listed = await rest.get(f"/sessions/{caller.session_id}/approvals")
    assert listed.status_code == 200
    assert [(a["id"], a["status"]) for a in listed.json()["items"]] == [(approval_id, "approved")]
    asked = await ResponseRequest.objects.filter(session__upstream_id=caller.session_id, origin="api").acount()
    assert asked == 1  # the response after the decision, an operator's request like any other


async def test_a_denial_says_so_upstream(caller, rest, simulator):
    approval_id = await _ask_for_approval(caller)
    decided = await rest.post(
        f"/sessions/{caller.session_id}/approvals/{approval_id}", json={"approve": False, "reason": "not allowed"}
    )
    assert decided.status_code == 200 and decided.json()["status"] == "denied"
    events = await caller.until("response.done", n=2)
    reply = events[-1]["response"]["output"][-1]["content"][0]["text"]
    assert "denied (not allowed)" in reply


async def test_unknown_approvals_and_sessions_are_404(caller, rest):
    missing = await rest.post(f"/sessions/{caller.session_id}/approvals/mcpr_nope", json={"approve": True})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "approval_not_found"
    no_session = await rest.post("/sessions/sess_nope/approvals/mcpr_nope", json={"approve": True})
    assert no_session.status_code == 404
    assert (await rest.get("/sessions/sess_nope/approvals")).status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "approve"),
        ({"approve": "yes"}, "approve"),
        ({"approve": True, "reason": "x" * 1001}, "reason"),
        ({"approve": True, "why": "x"}, "why"),
    ],
)
async def test_a_bad_body_is_422_naming_the_field(caller, rest, body, field):
    answer = await rest.post(f"/sessions/{caller.session_id}/approvals/mcpr_1", json=body)
    assert answer.status_code == 422, answer.text
    assert any(field in key for key in answer.json()["error"]["fields"]), answer.json()


async def test_deciding_needs_the_write_scope(caller, make_token):
    import httpx
    from asgiref.sync import sync_to_async

    from operator_console.asgi import application

    token = await sync_to_async(make_token)(scopes=["sessions:read"], name="reader")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=application), base_url="http://127.0.0.1/api/v1",
        headers={"Authorization": f"Bearer {token}"},
    ) as reader:
        answer = await reader.post(f"/sessions/{caller.session_id}/approvals/mcpr_1", json={"approve": True})
        assert answer.status_code == 403
        assert (await reader.get(f"/sessions/{caller.session_id}/approvals")).status_code == 200


async def test_a_session_started_with_a_short_timeout_expires_its_request(relay_settings, simulator, caller_token, rest):
    from asgiref.sync import sync_to_async
    relay_settings.OC_APPROVAL_TIMEOUT = 0.5
    caller = await _own_caller(caller_token)  # started with the short timeout
    communicator = caller.communicator
    await history.flush()
    try:
        approval_id = await _ask_for_approval(caller)
        events = await caller.until("response.done", n=2, timeout=5)
        reply = events[-1]["response"]["output"][-1]["content"][0]["text"]
        assert "denied (No operator decided within 0.5 s.)" in reply
        responses = simulator.sim.approval_responses(caller.session_id)
        assert [(r["approval_request_id"], r["approve"]) for r in responses] == [(approval_id, False)]

        def expired():
            history.flush_sync()
            row = ToolApproval.objects.filter(approval_id=approval_id).first()
            return row is not None and row.status == "expired" and "0.5 s" in row.reason

        await eventually(expired)
        log = [e for e in await sync_to_async(_approval_events)(caller.session_id) if "approval" in e]
        assert [(e["type"], e["approval"]["status"]) for e in log] == [
            ("approval.status", "pending"), ("approval.status", "expired")
        ]
        assert "0.5 s" in log[1]["approval"]["reason"] and log[1]["approval"]["decided_by"] == ""
        late = await rest.post(f"/sessions/{caller.session_id}/approvals/{approval_id}", json={"approve": True})
        assert late.status_code == 409
        assert "expired" in late.json()["error"]["message"]
    finally:
        await communicator.disconnect()


async def test_the_latest_rate_limits_are_the_sessions(caller):
    await caller.send({"type": "conversation.item.create", "item": user_text("Hello")})
    await caller.send({"type": "response.create"})
    events = await caller.until("response.done")
    sent = [e for e in events if e["type"] == "rate_limits.updated"][-1]["rate_limits"]

    def recorded():
        history.flush_sync()
        session = LiveSession.objects.get(upstream_id=caller.session_id)
        return session.rate_limits

    stored = await eventually(recorded)
    assert [(s["name"], s["remaining"], s["limit"]) for s in stored] == [
        (s["name"], s["remaining"], s["limit"]) for s in sent
    ]
    assert all("reset_at" in s for s in stored)


def _caller_answer(approval_id: str, approve: bool) -> dict:
    return {
        "type": "conversation.item.create",
        # With an `id`: the protocol requires one (the SDK's `RealtimeMcpApprovalResponseParam`).
        "item": {
            "type": "mcp_approval_response",
            "id": "mcpa_caller",
            "approval_request_id": approval_id,
            "approve": approve,
        },
    }


async def test_the_callers_own_answer_first_is_the_decision(caller, rest, simulator):
    approval_id = await _ask_for_approval(caller)
    await caller.send(_caller_answer(approval_id, approve=True))
    await caller.send({"type": "response.create"})
    await caller.until("response.done", n=2)

    late = await rest.post(f"/sessions/{caller.session_id}/approvals/{approval_id}", json={"approve": False})
    assert late.status_code == 409
    assert "approved by caller" in late.json()["error"]["message"]
    assert [r["approve"] for r in simulator.sim.approval_responses(caller.session_id)] == [True]
    await history.flush()
    row = await ToolApproval.objects.aget(approval_id=approval_id)
    assert (row.status, row.decided_by) == ("approved", "caller")


async def test_the_callers_answer_after_an_operators_is_refused_and_not_sent(caller, rest, simulator):
    approval_id = await _ask_for_approval(caller)
    decided = await rest.post(f"/sessions/{caller.session_id}/approvals/{approval_id}", json={"approve": True})
    assert decided.status_code == 200
    await caller.until("response.done", n=2)
    await caller.send({**_caller_answer(approval_id, approve=False), "event_id": "evt_late"})
    events = await caller.until("error")
    error = [e for e in events if e["type"] == "error"][-1]["error"]
    assert error["code"] == "approval_already_decided" and error["event_id"] == "evt_late"
    assert "token:script" in error["message"]
    await caller.settled()
    assert [r["approve"] for r in simulator.sim.approval_responses(caller.session_id)] == [True]


def _approval_events(session_id: str) -> list[dict]:
    """The session's events in the event log, as a script gets them, from its first approval
    on (the log is written by the history writer: flushed first)."""
    import json

    from apps.events.models import Event

    history.flush_sync()
    key = LiveSession.objects.get(upstream_id=session_id).pk
    events = [json.loads(e.body()) for e in Event.objects.filter(session_key=key).order_by("id")]
    kinds = [e["type"] for e in events]
    return events[kinds.index("approval.status"):] if "approval.status" in kinds else []


async def test_an_approval_its_session_ends_on_expires_in_the_event_log_and_the_metrics(
    relay_settings, simulator, caller_token
):
    from asgiref.sync import sync_to_async

    from apps.realtime.tools import UNDECIDED_AT_END
    from apps.sessions import metrics

    counted = ("expired", metrics.BY_SESSION_END)
    before = metrics.figures.approvals.get(counted, 0)
    caller = await _own_caller(caller_token)  # the test ends its session itself
    communicator = caller.communicator
    try:
        approval_id = await _ask_for_approval(caller)
    finally:
        await communicator.disconnect()  # the caller leaves before anyone decided

    def ended():
        events = _approval_events(caller.session_id)
        return events if events and events[-1]["type"] == "session.ended" else None

    events = await eventually(ended)
    kinds = [e["type"] for e in events]
    assert kinds.count("approval.status") == 2 and kinds[-1] == "session.ended"  # after it
    pending, expired = (e["approval"] for e in events if e["type"] == "approval.status")
    assert (pending["id"], pending["status"]) == (approval_id, "pending")
    assert (expired["id"], expired["status"], expired["reason"]) == (
        approval_id, "expired", UNDECIDED_AT_END
    )
    assert expired["decided_by"] == "" and expired["decided_at"]
    stored = await sync_to_async(
        lambda: ToolApproval.objects.select_related("session").get(approval_id=approval_id).to_dict()
    )()
    assert stored == expired  # the log's shape is the REST hook's
    assert metrics.figures.approvals.get(counted, 0) == before + 1
