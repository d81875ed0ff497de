"""The session protocol (session, items, responses, refusals), driven by the official `openai` SDK."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from pydantic import TypeAdapter

from apps.simulator.server import Simulator, SimulatorConfig, event_sent_time_ns
from tests.simulator.client import (
    RESPONSE_EVENTS,
    add_user_text,
    recv,
    recv_until,
    sdk_client,
    still_works,
)

# --- connection and session ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_session_created_on_connect(sim):
    async with sdk_client(sim).realtime.connect(model="gpt-realtime-mini") as conn:
        event = await recv(conn)
        session_id = await sim.wait_for_session()
    assert event.type == "session.created"
    assert event.event_id.startswith("event_")
    session = event.session
    assert session.id == session_id and session_id.startswith("sess_")
    assert session.object == "realtime.session"
    assert session.type == "realtime"
    assert session.model == "gpt-realtime-mini"
    assert session.instructions == "You are a helpful assistant."
    assert session.tools == [] and session.tool_choice == "auto"
    assert session.max_output_tokens == "inf"
    assert session.output_modalities == ["text"]
    assert session.audio.input.turn_detection.type == "server_vad"
    assert session.audio.input.turn_detection.create_response is True


@pytest.mark.asyncio
async def test_session_update_is_reflected_whole(conn):
    await conn.session.update(
        session={
            "type": "realtime",
            "instructions": "You are Ada, a billing agent.",
            "audio": {"output": {"voice": "marin"}},
        }
    )
    event = await recv(conn)
    assert event.type == "session.updated"
    assert event.session.instructions == "You are Ada, a billing agent."
    assert event.session.audio.output.voice == "marin"
    # Untouched fields stay, nested ones too.
    assert event.session.audio.output.format.type == "audio/pcm"
    assert event.session.audio.input.turn_detection.type == "server_vad"
    assert event.session.model == "gpt-realtime"


@pytest.mark.asyncio
async def test_item_create_announces_the_full_item_in_order(conn):
    await conn.conversation.item.create(
        item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        event_id="evt_item_1",
    )
    first = await recv_until(conn, "conversation.item.done")
    assert [e.type for e in first] == [
        "conversation.item.created",
        "conversation.item.added",
        "conversation.item.done",
    ]
    item = first[0].item
    assert item.id.startswith("item_") and item.object == "realtime.item"
    assert item.status == "completed" and item.role == "user"
    assert item.content[0].text == "hi"
    assert first[0].previous_item_id is None

    await conn.conversation.item.create(
        item={
            "id": "item_mine",
            "type": "message",
            "role": "system",
            "content": [{"type": "input_text", "text": "be nice"}],
        }
    )
    second = await recv_until(conn, "conversation.item.done")
    assert second[0].item.id == "item_mine"
    assert second[0].previous_item_id == item.id


# --- responses -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_text_response_streams_deltas_then_done_with_usage(sim, conn):
    await add_user_text(conn, "hello")
    await conn.response.create(
        event_id="evt_resp_1",
        response={
            "instructions": "Speak like a pirate.",
            "metadata": {"topic": "billing", "tone": "warm"},
        },
    )
    events = await recv_until(conn, "response.done")
    assert [e.type for e in events] == RESPONSE_EVENTS

    created, done = events[0], events[-1]
    assert created.response.status == "in_progress"
    assert created.response.object == "realtime.response"
    assert created.response.id.startswith("resp_")
    assert created.response.metadata == {"topic": "billing", "tone": "warm"}
    assert created.response.conversation_id.startswith("conv_")
    assert created.response.output == [] and created.response.usage is None

    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    text = "".join(deltas)
    assert all(deltas)
    assert text == (
        "[instructions: Speak like a pirate.] [metadata: topic=billing, tone=warm] "
        "Reply 1 to: hello (conversation: 1 items)"
    )
    text_done = next(e for e in events if e.type == "response.output_text.done")
    assert text_done.text == text

    assert done.response.id == created.response.id
    assert done.response.status == "completed"
    assert done.response.metadata == {"topic": "billing", "tone": "warm"}
    [item] = done.response.output
    assert item.role == "assistant" and item.status == "completed"
    assert item.content[0].type == "output_text" and item.content[0].text == text
    usage = done.response.usage
    assert usage.output_tokens > 0 and usage.input_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_token_details.cached_tokens == 0
    assert usage.output_token_details.text_tokens == usage.output_tokens

    # Per-response instructions do not change the session's: the next reply uses those.
    await conn.response.create()
    second = await recv_until(conn, "response.done")
    second_text = second[-1].response.output[0].content[0].text
    assert second_text == (
        "[instructions: You are a helpful assistant.] Reply 2 to: hello (conversation: 2 items)"
    )
    assert second[-1].response.metadata is None

    # Event ids carry their send time; the recorded logs match what the client saw.
    session_id = await sim.wait_for_session()
    sent = sim.sent(session_id)
    sent_ids = [event["event_id"] for _, event in sent]
    assert sent_ids[-len(second) :] == [e.event_id for e in second]
    times = [event_sent_time_ns(event_id) for event_id in sent_ids]
    assert all(t is not None for t in times) and times == sorted(times)
    assert abs(times[-1] - time.time_ns()) < 5e9
    received = [event for _, event in sim.received(session_id)]
    assert [e["type"] for e in received] == [
        "conversation.item.create",
        "response.create",
        "response.create",
    ]
    assert received[1]["event_id"] == "evt_resp_1"


@pytest.mark.asyncio
async def test_every_event_sent_parses_as_the_sdk_server_event_types(sim, conn):
    """The Agents SDK validates server events strictly with these pydantic models."""
    from openai.types.realtime import RealtimeServerEvent

    adapter = TypeAdapter(RealtimeServerEvent)
    await conn.session.update(session={"type": "realtime", "instructions": "Be brief."})
    assert (await recv(conn)).type == "session.updated"
    await add_user_text(conn, "hello")
    await conn.response.create(response={"metadata": {"a": "b"}})
    await conn.response.create(response={"conversation": "none"})
    await conn.response.create()  # refused: one is active
    await conn.response.cancel()
    await conn.conversation.item.retrieve(item_id="nope")  # refused
    for _ in range(2):
        await recv_until(conn, "response.done")
    session_id = await sim.wait_for_session()
    sent = [event for _, event in sim.sent(session_id)]
    assert {"error", "session.updated", "response.done"} <= {e["type"] for e in sent}
    for event in sent:
        adapter.validate_python(event)


@pytest.mark.asyncio
async def test_second_response_create_while_active_is_refused(conn):
    await conn.response.create(event_id="evt_first")
    created = await recv(conn)
    assert created.type == "response.created"
    await conn.response.create(event_id="evt_second", response={"instructions": "again"})
    events = await recv_until(conn, "error")
    error = events[-1].error
    assert error.type == "invalid_request_error"
    assert error.code == "conversation_already_has_active_response"
    assert error.event_id == "evt_second"
    assert created.response.id in error.message
    # The active response carries on undisturbed, and then a new one may start.
    rest = await recv_until(conn, "response.done")
    assert rest[-1].response.id == created.response.id
    assert rest[-1].response.status == "completed"
    await conn.response.create(event_id="evt_third")
    assert (await recv_until(conn, "response.done"))[-1].response.status == "completed"


@pytest.mark.asyncio
async def test_out_of_band_response_runs_beside_an_active_one(sim, conn):
    await add_user_text(conn, "hello")
    session_id = await sim.wait_for_session()
    items_before = len(sim.sessions[session_id].items)
    await conn.response.create(event_id="evt_main")
    main_created = await recv(conn)
    await conn.response.create(
        event_id="evt_oob",
        response={
            "conversation": "none",
            "instructions": "Summarise for the operator.",
            "metadata": {"purpose": "summary"},
        },
    )
    done: dict[str, Any] = {}
    oob_events: list[Any] = []
    oob_id = None
    async with asyncio.timeout(5):
        while len(done) < 2:
            event = await conn.recv()
            assert event.type != "error"
            if event.type == "response.created":
                oob_id = event.response.id
                assert event.response.conversation_id is None
                assert event.response.metadata == {"purpose": "summary"}
            elif event.type == "response.done":
                done[event.response.id] = event.response
            response_id = getattr(event, "response_id", None) or getattr(
                getattr(event, "response", None), "id", None
            )
            if oob_id is not None and response_id == oob_id:
                oob_events.append(event)
    assert set(done) == {main_created.response.id, oob_id}
    oob = done[oob_id]
    assert oob.status == "completed"
    oob_text = oob.output[0].content[0].text
    assert oob_text.startswith(
        "[instructions: Summarise for the operator.] [metadata: purpose=summary]"
    )
    # Out of band: nothing was added to the conversation for it.
    assert "conversation.item.added" not in [e.type for e in oob_events]
    items = sim.sessions[session_id].items
    assert len(items) == items_before + 1  # the in-conversation reply only
    assert oob.output[0].id not in [item["id"] for item in items]


@pytest.mark.asyncio
async def test_response_cancel_ends_it_cancelled(sim):
    slow = Simulator(SimulatorConfig(deltas_per_response=50, delta_interval=0.05))
    await slow.start()
    try:
        async with sdk_client(slow).realtime.connect(model="gpt-realtime") as conn:
            await recv(conn)
            await conn.response.create()
            events = await recv_until(conn, "response.output_text.delta")
            response_id = events[0].response.id
            await conn.response.cancel(event_id="evt_cancel")
            rest = await recv_until(conn, "response.done")
            done = rest[-1].response
            assert done.id == response_id
            assert done.status == "cancelled"
            assert done.status_details.type == "cancelled"
            assert done.status_details.reason == "client_cancelled"
            assert done.output[0].status == "incomplete"
            deltas = [e for e in events + rest if e.type == "response.output_text.delta"]
            assert 1 <= len(deltas) < 50
            assert "response.output_text.done" in [e.type for e in rest]

            # Nothing left to cancel, or an unknown id: refused.
            await conn.response.cancel(event_id="evt_again")
            error = (await recv(conn)).error
            assert (error.code, error.event_id) == ("response_cancel_not_active", "evt_again")
            await conn.response.cancel(event_id="evt_unknown", response_id="resp_nope")
            error = (await recv(conn)).error
            assert (error.code, error.event_id) == ("response_cancel_not_active", "evt_unknown")
            # And a new response may start at once.
            await conn.response.create()
            assert (await recv(conn)).type == "response.created"
    finally:
        await slow.aclose()


@pytest.mark.asyncio
async def test_max_output_tokens_makes_the_response_incomplete(conn):
    await conn.response.create(response={"max_output_tokens": 2})
    done = (await recv_until(conn, "response.done"))[-1].response
    assert done.status == "incomplete"
    assert done.status_details.reason == "max_output_tokens"
    assert len(done.output[0].content[0].text) <= 8


# --- rejections --------------------------------------------------------------------------------


def metadata(pairs: int = 1, key_len: int = 3, value: object = "v") -> dict[str, object]:
    return {f"{i:0{key_len}d}": value for i in range(pairs)}


REJECTIONS = {
    "response null": (
        {"type": "response.create", "response": None},
        "invalid_type",
        "response",
    ),
    "response not an object": (
        {"type": "response.create", "response": "now"},
        "invalid_type",
        "response",
    ),
    "metadata not an object": (
        {"type": "response.create", "response": {"metadata": ["a"]}},
        "invalid_type",
        "response.metadata",
    ),
    "non-string metadata value": (
        {"type": "response.create", "response": {"metadata": {"n": 1}}},
        "invalid_type",
        "response.metadata.n",
    ),
    "17 metadata pairs": (
        {"type": "response.create", "response": {"metadata": metadata(pairs=17)}},
        "object_above_max_properties",
        "response.metadata",
    ),
    "65-char metadata key": (
        {"type": "response.create", "response": {"metadata": metadata(key_len=65)}},
        "string_above_max_length",
        "response.metadata",
    ),
    "513-char metadata value": (
        {"type": "response.create", "response": {"metadata": {"k": "x" * 513}}},
        "string_above_max_length",
        "response.metadata.k",
    ),
    "instructions not a string": (
        {"type": "response.create", "response": {"instructions": 5}},
        "invalid_type",
        "response.instructions",
    ),
    "unknown conversation": (
        {"type": "response.create", "response": {"conversation": "other"}},
        "invalid_value",
        "response.conversation",
    ),
    "unknown event type": ({"type": "response.make"}, "invalid_value", "type"),
    "missing event type": ({"response": {}}, "missing_required_parameter", "type"),
    "item not an object": (
        {"type": "conversation.item.create", "item": 3},
        "invalid_type",
        "item",
    ),
    "33-char item id": (
        {
            "type": "conversation.item.create",
            "item": {"id": "i" * 33, "type": "message", "role": "user", "content": []},
        },
        "string_above_max_length",
        "item.id",
    ),
    "unknown item": (
        {"type": "conversation.item.retrieve", "item_id": "item_nope"},
        "item_not_found",
        "item_id",
    ),
    "commit of an empty buffer": (
        {"type": "input_audio_buffer.commit"},
        "input_audio_buffer_commit_empty",
        None,
    ),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("case", list(REJECTIONS))
async def test_rejection_is_an_error_event_and_the_connection_stays(sim, conn, case):
    payload, code, param = REJECTIONS[case]
    await conn.send_raw(json.dumps({**payload, "event_id": "evt_bad"}))
    event = await recv(conn)
    assert event.type == "error"
    assert event.error.type == "invalid_request_error"
    assert event.error.code == code
    assert event.error.param == param
    assert event.error.event_id == "evt_bad"
    assert event.error.message
    await still_works(conn)
    session_id = await sim.wait_for_session()
    assert sim.sessions[session_id].active is None  # no response was started


@pytest.mark.asyncio
async def test_metadata_at_the_limits_is_accepted(conn):
    limits = metadata(pairs=15, key_len=64) | {"v": "x" * 512}
    assert len(limits) == 16
    await conn.response.create(response={"metadata": limits})
    created = await recv(conn)
    assert created.type == "response.created"
    assert created.response.metadata == limits


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "frame",
    [
        "{not json",
        "[1, 2]",
        '"text"',
        '{"type":"conversation.item.create","item":{"type":"message","role":"user",'
        '"content":[{"type":"input_text","text":"a \\ud800"}]}}',
    ],
    ids=["not-json", "array", "string", "lone-surrogate"],
)
async def test_a_frame_that_is_not_a_json_object_is_refused(sim, conn, frame):
    await conn.send_raw(frame)
    event = await recv(conn)
    assert event.type == "error"
    assert event.error.type == "invalid_request_error"
    assert event.error.code == "invalid_json"
    assert event.error.event_id is None
    await still_works(conn)
    session_id = await sim.wait_for_session()
    assert sim.received(session_id)[0][1] == {"type": None, "raw": frame}


@pytest.mark.asyncio
async def test_trigger_server_response_has_no_metadata(sim, conn):
    await add_user_text(conn, "are you there")
    session_id = await sim.wait_for_session()
    response_id = await sim.trigger_server_response(session_id)
    events = await recv_until(conn, "response.done")
    assert [e.type for e in events] == RESPONSE_EVENTS
    created, done = events[0], events[-1]
    assert created.response.id == response_id == done.response.id
    assert created.response.metadata is None
    assert created.response.conversation_id is not None
    assert done.response.status == "completed"
    assert done.response.output[0].content[0].text.endswith(
        "Reply 1 to: are you there (conversation: 1 items)"
    )
    assert "response.create" not in [e["type"] for _, e in sim.received(session_id)]


@pytest.mark.asyncio
async def test_server_response_interrupts_the_active_one(sim, conn):
    slow_interval = 0.05
    sim.config.delta_interval = slow_interval
    session_id = await sim.wait_for_session()
    await conn.response.create()
    first = (await recv(conn)).response.id
    second = await sim.trigger_server_response(session_id)
    events = await recv_until(conn, "response.created", timeout=2)
    cancelled = next(e for e in events if e.type == "response.done").response
    assert cancelled.id == first and cancelled.status == "cancelled"
    assert cancelled.status_details.reason == "turn_detected"
    assert events[-1].response.id == second
