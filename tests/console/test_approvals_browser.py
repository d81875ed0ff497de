"""Tool approvals on the session page, in headless Chromium against real Daphne and the
simulator asking for approval (`#mcp:NAME`): two operators, one decision, and the timeout."""

from __future__ import annotations

import json
import re

import pytest
import websockets
from playwright.async_api import expect

from apps.sessions.models import LiveSession, ToolApproval
from tests.console.conftest import LiveCaller
from tests.support.realtime import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PHONE = {"width": 390, "height": 844}
MCP_TOOL = {
    "type": "mcp",
    "server_label": "crm",
    "server_url": "https://crm.example/mcp",
    "require_approval": "always",
}
ASK = 'Where is my order? #mcp:lookup {"order": 42}'


async def _with_mcp_tool(caller: LiveCaller) -> None:
    await caller.send({"type": "session.update", "session": {"type": "realtime", "tools": [MCP_TOOL]}})
    await caller.wait_for("session.updated")


async def _open(operator, base_url: str, session_id: str) -> None:
    await eventually(lambda: LiveSession.objects.filter(upstream_id=session_id, status="live").exists())
    await operator.page.goto(f"{base_url}/console/sessions/{session_id}/")
    await expect(operator.page.locator("[data-live-status]")).to_have_text("Connected", timeout=5000)


async def _sideways(page) -> int:
    return await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")


async def test_two_operators_see_the_request_one_approves_the_other_sees_it_decided(
    login, connect_caller, daphne, simulator
):
    alice, bob = await login("alice"), await login("bob")
    caller = await connect_caller()
    await _with_mcp_tool(caller)
    await _open(alice, daphne.http_url, caller.session_id)
    await _open(bob, daphne.http_url, caller.session_id)

    await caller.say(ASK)
    for operator in (alice, bob):
        card = operator.page.locator("[data-approval]")
        await expect(card).to_have_count(1, timeout=5000)
        await expect(card).to_contain_text("lookup")
        await expect(card.locator(".arguments")).to_contain_text('"order"')
        await expect(card.locator(".arguments")).to_contain_text("42")
        await expect(card.get_by_role("button", name="Approve")).to_be_visible()
        await expect(card.get_by_role("button", name="Deny")).to_be_visible()
        # Named with the tool, as the server names its own (not "Approve" among others alike).
        named = card.get_by_role("button", name=re.compile(r"^(Approve|Deny) .*lookup$"))
        await expect(named).to_have_count(2)
    await caller.wait_for("response.done")
    await expect(alice.page.locator("[data-rate-limits] .rate")).to_have_count(2, timeout=5000)
    await expect(alice.page.locator("[data-rate-limits]")).to_contain_text("left")
    await expect(alice.page.get_by_role("meter", name="requests left")).to_have_count(1)
    await alice.screenshot("approval-pending-1280")

    await bob.page.fill("[data-approval] input[name=reason]", "Order belongs to the caller")
    await bob.page.get_by_role("button", name="Approve").click()

    for operator in (alice, bob):
        card = operator.page.locator("[data-approval]")
        await expect(card).to_contain_text("Approved by bob", timeout=5000)
        await expect(card).to_contain_text("Order belongs to the caller")
        await expect(card.get_by_role("button", name="Approve")).to_have_count(0)
    await expect(alice.page.locator("[data-toasts]")).to_contain_text("lookup: approved (by bob)")

    # The tool runs once approved; its output is in the transcript, with its name.
    await caller.wait_for("response.done", n=2)
    tool = alice.page.locator("[data-transcript] .role-tool")
    await expect(tool).to_contain_text("[simulated] crm.lookup", timeout=5000)
    await expect(tool).to_contain_text("crm.lookup")
    await expect(tool).to_contain_text('"order"')
    await expect(alice.page.locator("[data-transcript]")).to_contain_text("[mcp crm.lookup returned:")
    await alice.screenshot("approval-decided-1280")

    responses = simulator.sim.approval_responses(caller.session_id)
    assert len(responses) == 1, responses
    assert responses[0]["approve"] is True and responses[0]["reason"] == "Order belongs to the caller"

    # A later decision (a forged or stale form) is told who decided first.
    approval_id = await alice.page.locator("[data-approval]").get_attribute("data-approval")
    token = await alice.page.locator("input[name=csrfmiddlewaretoken]").first.get_attribute("value")
    late = await alice.page.request.post(
        f"{daphne.http_url}/console/sessions/{caller.session_id}/approvals/{approval_id}",
        form={"csrfmiddlewaretoken": token, "decision": "deny"},
        headers={"Referer": f"{daphne.http_url}/console/", "Accept": "application/json"},
    )
    assert late.status == 409
    assert "bob" in (await late.json())["errors"]["form"]
    assert len(simulator.sim.approval_responses(caller.session_id)) == 1

    row = await ToolApproval.objects.aget(approval_id=approval_id)
    assert (row.status, row.decided_by) == ("approved", "bob")
    assert alice.errors == [] and bob.errors == []


async def test_a_request_nobody_decides_is_denied_at_the_timeout(
    login, daphne_with, agent_token, simulator
):
    short = daphne_with(OC_APPROVAL_TIMEOUT="3", OC_SEND_TIMEOUT="5")
    alice = await login("alice", **PHONE)  # the session cookie holds for every port of the host
    socket = await websockets.connect(
        f"{short.ws_base}/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {agent_token}"},
    )
    try:
        created = json.loads(await socket.recv())
        caller = LiveCaller(socket, created["session"]["id"])
        await _with_mcp_tool(caller)
        await _open(alice, short.http_url, caller.session_id)
        await caller.say(ASK)
        card = alice.page.locator("[data-approval]")
        await expect(card.get_by_role("button", name="Approve")).to_be_visible(timeout=5000)
        await expect(card.locator("[data-countdown]")).to_contain_text("Denied automatically in")
        assert await _sideways(alice.page) <= 0
        await alice.screenshot("approval-pending-390")

        await expect(card).to_contain_text("Denied automatically", timeout=6000)
        await expect(card.locator(".badge")).to_have_text("expired")
        await expect(card).to_contain_text("No operator decided within 3 s.")
        await expect(card.get_by_role("button", name="Approve")).to_have_count(0)
        await caller.wait_for("response.done", n=2)
        reply = caller.events[-1]["response"]["output"][-1]["content"][0]["text"]
        assert "denied (No operator decided within 3 s.)" in reply
        responses = simulator.sim.approval_responses(caller.session_id)
        assert [r["approve"] for r in responses] == [False]
        assert await _sideways(alice.page) <= 0
        await alice.screenshot("approval-expired-390")

        def expired():
            row = ToolApproval.objects.filter(session__upstream_id=caller.session_id).first()
            return row is not None and row.status == "expired" and row.decided_by == ""

        await eventually(expired)
        assert alice.errors == []
    finally:
        await socket.close()
        caller._reader.cancel()


async def test_a_function_call_shows_its_output_and_duration_and_low_rate_limits_warn(
    login, connect_caller, daphne, simulator
):
    alice = await login("alice")
    with simulator.configured(rate_limit_requests=1):
        caller = await connect_caller()
        weather = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}
        await caller.send({"type": "session.update", "session": {"type": "realtime", "tools": [weather]}})
        await caller.wait_for("session.updated")
        await _open(alice, daphne.http_url, caller.session_id)
        await caller.say('What is the weather? #call:get_weather {"city": "Oslo"}')
        await caller.wait_for("response.done")
    call = next(e["item"] for e in caller.events if e["type"] == "response.output_item.done")
    assert call["type"] == "function_call"
    tool = alice.page.locator("[data-transcript] .role-tool")
    await expect(tool).to_contain_text("Waiting for its output", timeout=5000)
    await expect(tool).to_contain_text("get_weather")
    await caller.send({"type": "conversation.item.create", "item": {
        "type": "function_call_output", "call_id": call["call_id"], "output": '{"temp_c": 3}'}})
    await expect(tool).to_contain_text('{"temp_c": 3}', timeout=5000)
    await expect(tool.locator(".who")).to_contain_text(" ms")  # its duration, call to output

    # One request a minute, and this session has used it: under 10 % left, said in words.
    warning = alice.page.locator("[data-rate-warning]")
    await expect(warning).to_be_visible()
    await expect(warning).to_contain_text("requests (0 % left)")
    await expect(alice.page.locator("[data-rate-limits] .rate.low")).to_have_count(1)
    await alice.screenshot("tool-call-and-low-limits-1280")
    assert alice.errors == []


async def test_a_pending_requests_countdown_runs_before_the_socket_is_live(login, daphne):
    # The page's socket never connects (a slow or broken network): the countdown the server's
    # page starts with must still read in seconds, from when the request was made.
    session = await LiveSession.objects.acreate(
        upstream_id="sess_countdown", model="gpt-realtime", status="live"
    )
    await ToolApproval.objects.acreate(
        session=session, approval_id="mcpr_wait", name="lookup", arguments="{}"
    )
    alice = await login("alice")
    await alice.page.route_web_socket("**/ws/console/**", lambda ws: None)
    await alice.page.goto(f"{daphne.http_url}/console/sessions/sess_countdown/")
    countdown = alice.page.locator("[data-approval] [data-countdown]")
    reads = re.compile(r"^Denied automatically in \d+ s$")
    await expect(countdown).to_have_text(reads, timeout=5000)
