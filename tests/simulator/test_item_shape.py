"""A `conversation.item.create`'s item checked as the service checks it (`shape.check_item`,
from the SDK's `ConversationItemParam`): what the relay sends is taken, what the service
refuses is refused with its code, param and message, and a refused item is not added."""

from __future__ import annotations

import itertools
import json

import pytest

from apps.realtime import events
from apps.realtime.relay import RelayCore, ToUpstream
from apps.realtime.rotation import replayable
from apps.simulator import shape
from apps.simulator.wire import Rejected
from tests.simulator.client import recv, still_works


def message(role: str, *parts: dict, **extra) -> dict:
    return {"type": "message", "role": role, "content": list(parts), **extra}


def text(kind: str, words: str = "hello") -> dict:
    return {"type": kind, "text": words}


# Every variant the relay (notes, rotation's replay, approval decisions) or a caller sends.
ACCEPTED = {
    "system note": message("system", text("input_text"), id="item_oc1"),
    "user note": message("user", text("input_text")),
    "user audio": message("user", {"type": "input_audio", "audio": "AAA=", "transcript": "hi"}),
    "user image": message(
        "user", {"type": "input_image", "image_url": "data:image/png;base64,AA", "detail": "low"}
    ),
    "assistant text": message("assistant", text("output_text")),
    "assistant audio with its text": message(
        "assistant", {"type": "output_audio", "text": "hi", "transcript": "hi"}
    ),
    # `object` and `status` are the SDK's item params' own: they pass.
    "as announced": message(
        "user", text("input_text"), id="item_1", object="realtime.item", status="completed"
    ),
    "function call": {
        "type": "function_call", "id": "item_f", "call_id": "call_1", "name": "lookup",
        "arguments": "{}", "status": "completed",
    },
    "function call output": {"type": "function_call_output", "call_id": "call_1", "output": ""},
    "approval response": {
        "type": "mcp_approval_response", "id": "mcpa_1", "approval_request_id": "mcpr_1",
        "approve": False, "reason": None,
    },
    "tool list": {
        "type": "mcp_list_tools", "server_label": "crm",
        "tools": [{"name": "lookup", "input_schema": {"type": "object"}}],
    },
}


@pytest.mark.parametrize("item", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_items_of_every_variant_are_taken(item):
    shape.check_item(item)


UNKNOWN, TYPE, VALUE, MISSING = (
    "unknown_parameter", "invalid_type", "invalid_value", "missing_required_parameter"
)
USER_PARTS = "Supported values are: 'input_text', 'input_audio', and 'input_image'."
REFUSED = {
    "unknown key": (
        message("user", text("input_text"), foo=1), UNKNOWN, "item.foo",
        "Unknown parameter: 'item.foo'.",
    ),
    "unknown key of a part": (
        message("user", {**text("input_text"), "lang": "en"}), UNKNOWN,
        "item.content[0].lang", "Unknown parameter: 'item.content[0].lang'.",
    ),
    "a status on an approval response": (
        {**ACCEPTED["approval response"], "status": "completed"}, UNKNOWN, "item.status",
        "Unknown parameter: 'item.status'.",
    ),
    "beta text part of a user": (
        message("user", text("text")), VALUE, "item.content[0].type",
        f"Invalid value: 'text'. {USER_PARTS}",
    ),
    "input_text of an assistant": (
        message("assistant", text("input_text")), VALUE, "item.content[0].type",
        "Invalid value: 'input_text'. Supported values are: 'output_text' and 'output_audio'.",
    ),
    "output_text of a system message": (
        message("system", text("input_text"), text("output_text")), VALUE,
        "item.content[1].type", "Invalid value: 'output_text'. Value must be 'input_text'.",
    ),
    "input_image of an assistant": (
        message("assistant", {"type": "input_image"}), VALUE,
        "item.content[0].type",
        "Invalid value: 'input_image'. Supported values are: 'output_text' and 'output_audio'.",
    ),
    "a status none of the choices": (
        message("user", text("input_text"), status="done"), VALUE, "item.status",
        "Invalid value: 'done'. Supported values are: 'completed', 'incomplete', and "
        "'in_progress'.",
    ),
    "an image detail none of the choices": (
        message("user", {"type": "input_image", "image_url": "data:,", "detail": "max"}),
        VALUE, "item.content[0].detail",
        "Invalid value: 'max'. Supported values are: 'auto', 'low', and 'high'.",
    ),
    "a number as output": (
        {"type": "function_call_output", "call_id": "call_1", "output": 42}, TYPE,
        "item.output",
        "Invalid type for 'item.output': expected a string, but got integer instead.",
    ),
    "arguments as an object": (
        {**ACCEPTED["function call"], "arguments": {"q": 1}}, TYPE, "item.arguments",
        "Invalid type for 'item.arguments': expected a string, but got object instead.",
    ),
    "a part's text as a list": (
        message("user", {"type": "input_text", "text": ["hi"]}), TYPE, "item.content[0].text",
        "Invalid type for 'item.content[0].text': expected a string, but got array instead.",
    ),
    "approve as a string": (
        {**ACCEPTED["approval response"], "approve": "yes"}, TYPE, "item.approve",
        "Invalid type for 'item.approve': expected a boolean, but got string instead.",
    ),
    "an output without its call": (
        {"type": "function_call_output", "output": "42"}, MISSING, "item.call_id",
        "Missing required parameter: 'item.call_id'.",
    ),
    "an approval response without its id": (
        {"type": "mcp_approval_response", "approval_request_id": "mcpr_1", "approve": True},
        MISSING, "item.id", "Missing required parameter: 'item.id'.",
    ),
    "assistant audio with only its transcript": (
        message("assistant", {"type": "output_audio", "transcript": "hi"}), MISSING,
        "item.content[0].text", "Missing required parameter: 'item.content[0].text'.",
    ),
}


@pytest.mark.parametrize(
    ("item", "code", "param", "message"), REFUSED.values(), ids=REFUSED.keys()
)
def test_items_the_service_refuses_are_refused_in_its_words(item, code, param, message):
    with pytest.raises(Rejected) as refused:
        shape.check_item(item)
    assert (refused.value.code, refused.value.param, refused.value.message) == (
        code, param, message
    )


# Items as the service announces them (`conversation.item.done`), which rotation replays.
ANNOUNCED = {
    "spoken turn": message(
        "user", {"type": "input_audio", "transcript": "hi"}, id="item_u", status="completed"
    ),
    "spoken turn never transcribed": message(
        "user", {"type": "input_audio", "transcript": None}, id="item_n"
    ),
    "spoken reply": message(
        "assistant", {"type": "output_audio", "transcript": "hello"}, id="item_a",
        object="realtime.item", status="incomplete",
    ),
    "text reply": message("assistant", text("output_text"), id="item_t"),
    "empty reply": message("assistant", id="item_e"),
    "image": message("user", {"type": "input_image", "image_url": "data:,"}, id="item_i"),
    "function call": {**ACCEPTED["function call"], "object": "realtime.item"},
    "function output": {
        "id": "item_o", "object": "realtime.item", "type": "function_call_output",
        "status": "completed", "call_id": "call_1", "output": "{}",
    },
    "mcp call": {
        "id": "mcp_1", "object": "realtime.item", "type": "mcp_call", "server_label": "crm",
        "name": "lookup", "arguments": "{}", "output": "42", "error": None,
        "approval_request_id": None,
    },
    "approval response": {**ACCEPTED["approval response"], "object": "realtime.item"},
}


@pytest.mark.parametrize("plain", [False, True], ids=["as is", "plain"])
@pytest.mark.parametrize("item", ANNOUNCED.values(), ids=ANNOUNCED.keys())
def test_what_rotation_replays_into_a_fresh_session_is_taken(item, plain):
    replayed, _ = replayable(item, plain=plain)
    shape.check_item(replayed)


@pytest.mark.parametrize("role", ["system", "user"])
def test_an_operators_note_is_taken(role):
    ids = itertools.count(1)
    core = RelayCore(
        fallback_id="sess_fallback",
        connected_by="token:app",
        new_request_id=lambda: f"r{next(ids)}",
        new_event_id=lambda: f"e{next(ids)}",
    )
    core.upstream_attached(now=0.0)
    core.upstream_frame(events.dumps({"type": "session.created", "session": {"id": "s"}}), now=0)
    actions = core.note(item_id="item_oc1", role=role, text="Be brief.", now=1.0)
    [sent] = [json.loads(a.frame) for a in actions if isinstance(a, ToUpstream)]
    assert sent["type"] == "conversation.item.create"
    shape.check_item(sent["item"])


@pytest.mark.asyncio
async def test_a_refused_item_is_an_error_event_and_is_not_added(conn):
    item = {**message("assistant", text("input_text")), "id": "item_bad"}
    await conn.send({"type": "conversation.item.create", "event_id": "evt_bad", "item": item})
    error = await recv(conn)
    assert (error.type, error.error.code) == ("error", "invalid_value")
    assert (error.error.param, error.error.event_id) == ("item.content[0].type", "evt_bad")
    await conn.conversation.item.retrieve(item_id="item_bad")
    assert (await recv(conn)).error.code == "item_not_found", "nothing of it was added"
    await still_works(conn)
