"""Tools told by the conversation: function calls, MCP listing, approval and calls."""

from __future__ import annotations

import json

import pytest

from apps.simulator.tools import trigger
from tests.simulator.client import add_user_text, recv_until

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather", "parameters": {}}


def mcp_tool(require_approval="always", allowed_tools=None) -> dict:
    tool = {
        "type": "mcp",
        "server_label": "crm",
        "server_url": "https://mcp.example.test/sse",
        "require_approval": require_approval,
    }
    if allowed_tools is not None:
        tool["allowed_tools"] = allowed_tools
    return tool


def test_trigger_reads_the_name_and_optional_json_arguments():
    assert trigger("please #call:get_weather") == ("call", "get_weather", "{}")
    assert trigger('#call:get_weather {"city": "Oslo"} now') == (
        "call",
        "get_weather",
        '{"city":"Oslo"}',
    )
    assert trigger("#mcp:lookup {not json") == ("mcp", "lookup", "{}")
    assert trigger("no tools here") is None


@pytest.mark.asyncio
async def test_function_call_then_output_then_a_reply_quoting_it(sim, conn):
    await conn.session.update(session={"type": "realtime", "tools": [WEATHER]})
    await recv_until(conn, "session.updated")
    await add_user_text(conn, 'What is it like? #call:get_weather {"city": "Oslo"}')
    await conn.response.create()
    events = await recv_until(conn, "response.done")
    kinds = [e.type for e in events]
    assert kinds == [
        "response.created",
        "rate_limits.updated",
        "response.output_item.added",
        "conversation.item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    args_done = events[5]
    assert args_done.name == "get_weather" and json.loads(args_done.arguments) == {"city": "Oslo"}
    [call] = events[-1].response.output
    assert call.type == "function_call" and call.status == "completed"
    assert call.call_id == args_done.call_id and call.call_id.startswith("call_")
    assert call.arguments == args_done.arguments
    assert events[-1].response.status == "completed"

    await conn.conversation.item.create(
        item={"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}
    )
    await recv_until(conn, "conversation.item.done")
    await conn.response.create()
    reply = (await recv_until(conn, "response.done"))[-1].response
    [message] = reply.output
    assert message.type == "message"
    text = message.content[0].text
    assert "[function get_weather returned: sunny, 21 C]" in text
    # user message, function call, function output: the reply's own item not yet counted.
    assert text.endswith("(conversation: 3 items)")


@pytest.mark.asyncio
async def test_a_trigger_for_a_tool_the_session_lacks_gets_a_text_reply(sim, conn):
    await add_user_text(conn, "#call:get_weather")
    await conn.response.create()
    reply = (await recv_until(conn, "response.done"))[-1].response
    assert reply.output[0].type == "message"
    assert "[no tool get_weather]" in reply.output[0].content[0].text


@pytest.mark.asyncio
async def test_mcp_tools_are_listed_when_the_server_is_added(sim, conn):
    await conn.session.update(
        session={"type": "realtime", "tools": [mcp_tool(allowed_tools=["find_order"])]}
    )
    events = await recv_until(conn, "conversation.item.done")
    assert [e.type for e in events] == [
        "session.updated",
        "conversation.item.added",
        "mcp_list_tools.in_progress",
        "mcp_list_tools.completed",
        "conversation.item.done",
    ]
    listed = events[-1].item
    assert listed.type == "mcp_list_tools" and listed.server_label == "crm"
    assert [t.name for t in listed.tools] == ["find_order"]
    assert events[2].item_id == events[3].item_id == listed.id
    # The same server again: not listed twice.
    await conn.session.update(session={"type": "realtime", "instructions": "Be brief."})
    await recv_until(conn, "session.updated")
    await add_user_text(conn, "next")


async def _approval_request(sim, conn, approval="always"):
    await conn.session.update(session={"type": "realtime", "tools": [mcp_tool(approval)]})
    await recv_until(conn, "conversation.item.done")
    await add_user_text(conn, 'Find it #mcp:lookup {"order": 42}')
    await conn.response.create()
    return await recv_until(conn, "response.done")


async def _answer(conn, request, *, approve: bool, **more) -> None:
    """The client's `mcp_approval_response` to `request`, once the simulator has added it."""
    item = {
        "type": "mcp_approval_response",
        "id": "mcpa_1",
        "approval_request_id": request.id,
        "approve": approve,
        **more,
    }
    await conn.conversation.item.create(item=item)
    await recv_until(conn, "conversation.item.done")


@pytest.mark.asyncio
async def test_mcp_call_needing_approval_runs_once_approved(sim, conn):
    events = await _approval_request(sim, conn)
    done = events[-1].response
    [request] = done.output
    assert request.type == "mcp_approval_request" and request.id.startswith("mcpr_")
    assert (request.server_label, request.name) == ("crm", "lookup")
    assert json.loads(request.arguments) == {"order": 42}
    assert done.status == "completed"
    session_id = await sim.wait_for_session()
    assert sim.approval_responses(session_id) == []

    await _answer(conn, request, approve=True)
    await conn.response.create()
    events = await recv_until(conn, "response.done")
    kinds = [e.type for e in events]
    assert kinds[:10] == [
        "response.created",
        "rate_limits.updated",
        "response.output_item.added",
        "conversation.item.added",
        "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.done",
        "response.mcp_call.in_progress",
        "response.mcp_call.completed",
        "response.output_item.done",
        "conversation.item.done",
    ]
    call, message = events[-1].response.output
    assert call.type == "mcp_call" and call.approval_request_id == request.id
    assert call.output == '[simulated] crm.lookup({"order":42})'
    assert call.arguments == '{"order":42}'
    text_events = [e for e in events if e.type == "response.output_text.delta"]
    assert text_events and all(e.output_index == 1 for e in text_events)
    assert f"[mcp crm.lookup returned: {call.output}]" in message.content[0].text
    [answer] = sim.approval_responses(session_id)
    assert answer["approval_request_id"] == request.id and answer["approve"] is True


@pytest.mark.asyncio
async def test_an_approved_call_runs_even_after_a_reply_made_while_it_waited(sim, conn):
    # An operator's nudge (or the caller's own turn) answered before anyone decided: the
    # service still runs the call once it is approved.
    events = await _approval_request(sim, conn)
    [request] = events[-1].response.output
    await conn.response.create()
    [waiting] = (await recv_until(conn, "response.done"))[-1].response.output
    assert waiting.type == "message" and "[mcp" not in waiting.content[0].text
    await _answer(conn, request, approve=True)
    await conn.response.create()
    call, message = (await recv_until(conn, "response.done"))[-1].response.output
    assert call.type == "mcp_call" and call.approval_request_id == request.id
    assert f"[mcp crm.lookup returned: {call.output}]" in message.content[0].text
    # Acted on once: the next response is a plain reply.
    await conn.response.create()
    [after] = (await recv_until(conn, "response.done"))[-1].response.output
    assert after.type == "message" and "[mcp" not in after.content[0].text


@pytest.mark.asyncio
async def test_a_denied_mcp_call_is_not_run_and_the_reply_says_why(sim, conn):
    events = await _approval_request(sim, conn)
    [request] = events[-1].response.output
    await _answer(conn, request, approve=False, reason="not now")
    await conn.response.create()
    events = await recv_until(conn, "response.done")
    assert not [e for e in events if e.type.startswith("response.mcp_call")]
    [message] = events[-1].response.output
    assert "[mcp crm.lookup not run: denied (not now)]" in message.content[0].text


@pytest.mark.asyncio
async def test_an_approval_for_an_unknown_request_is_refused(sim, conn):
    await conn.conversation.item.create(
        item={
            "type": "mcp_approval_response",
            "id": "mcpa_1",
            "approval_request_id": "mcpr_x",
            "approve": True,
        },
        event_id="evt_approve",
    )
    [error] = await recv_until(conn, "error")
    assert error.error.param == "item.approval_request_id"
    assert error.error.event_id == "evt_approve"


@pytest.mark.asyncio
async def test_mcp_call_without_approval_runs_in_the_first_response(sim, conn):
    events = await _approval_request(sim, conn, approval="never")
    call, message = events[-1].response.output
    assert call.type == "mcp_call" and call.approval_request_id is None
    assert call.output == '[simulated] crm.lookup({"order":42})'
    assert "returned: [simulated] crm.lookup" in message.content[0].text
    # The trigger fired once: the next response is a plain reply.
    await conn.response.create()
    again = (await recv_until(conn, "response.done"))[-1].response
    assert [item.type for item in again.output] == ["message"]
