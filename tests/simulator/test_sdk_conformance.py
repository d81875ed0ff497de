"""Every server event the simulator sends, in a set of scenarios, checked against the official
`openai` SDK's `RealtimeServerEvent` union strictly: a type the union lacks, a required field
missing, a value outside its enum or of the wrong type (pydantic strict mode), and a field the
SDK's model does not declare (the SDK's models allow extras, so they are looked for by walking
the parsed model) all fail. Beside the shapes, the order the service keeps: each response opens
with `response.created` and closes with `response.done`, an item is `.added` before `.done`,
and `output_audio_buffer.*` (WebRTC and SIP only) never comes over a WebSocket.

The one extra allowed: `session.id`, `.object` and `.expires_at` in `session.created` and
`session.updated`, which the service sends and the SDK's request-shaped session type lacks."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_asyncio
from openai.types.realtime import RealtimeServerEvent
from pydantic import BaseModel, TypeAdapter

from apps.simulator.server import Simulator, SimulatorConfig
from tests.simulator.client import DELTAS, add_user_text, recv_until
from tests.simulator.test_voice import VAD, microphone, send_audio, silence, voice_session

ADAPTER = TypeAdapter(RealtimeServerEvent)
# (event type, path in the parsed event) → extra keys the service sends and the SDK lacks.
KNOWN_EXTRAS = {
    ("session.created", ".session"): {"id", "object", "expires_at"},
    ("session.updated", ".session"): {"id", "object", "expires_at"},
}
FUNCTION_TOOL = {"type": "function", "name": "lookup", "parameters": {"type": "object"}}


@pytest_asyncio.fixture
async def sim():
    """The package's simulator, keeping every event it sends (not only the latest)."""
    simulator = Simulator(
        SimulatorConfig(
            deltas_per_response=DELTAS,
            delta_interval=0.002,
            audio_pace=0,
            speech_engine="tone",
            record_limit=None,
        )
    )
    await simulator.start()
    yield simulator
    await simulator.aclose()


def undeclared(model: Any, path: str = "") -> list[tuple[str, set[str]]]:
    """(path, keys) of every parsed model in `model` holding keys its class does not declare."""
    found: list[tuple[str, set[str]]] = []
    if isinstance(model, BaseModel):
        if model.model_extra:
            found.append((path, set(model.model_extra)))
        for name in type(model).model_fields:
            found += undeclared(getattr(model, name), f"{path}.{name}")
    elif isinstance(model, list):
        for index, value in enumerate(model):
            found += undeclared(value, f"{path}[{index}]")
    return found


def conformance_problems(events: list[dict[str, Any]]) -> list[str]:
    problems = []
    for event in events:
        kind = event.get("type")
        try:
            parsed = ADAPTER.validate_python(event, strict=True)
        except ValueError as exc:
            problems.append(f"{kind}: {exc}")
            continue
        for path, keys in undeclared(parsed):
            unknown = keys - KNOWN_EXTRAS.get((kind, path), set())
            if unknown:
                problems.append(f"{kind}: {path} has keys the SDK lacks: {sorted(unknown)}")
    return problems


def order_problems(events: list[dict[str, Any]]) -> list[str]:
    problems = []
    open_responses: set[str] = set()
    added: set[str] = set()
    for event in events:
        kind = event["type"]
        if kind.startswith("output_audio_buffer."):
            problems.append(f"{kind} over a WebSocket (the service sends it on WebRTC/SIP only)")
        if kind == "response.created":
            open_responses.add(event["response"]["id"])
        elif kind == "response.done":
            if event["response"]["id"] not in open_responses:
                problems.append(f"response.done of {event['response']['id']} before its created")
            open_responses.discard(event["response"]["id"])
        elif kind.startswith("response.") and event.get("response_id", "") not in (
            open_responses | {""}
        ):
            problems.append(f"{kind} outside its response ({event['response_id']})")
        if kind == "conversation.item.added":
            added.add(event["item"]["id"])
        elif kind == "conversation.item.done" and event["item"]["id"] not in added:
            problems.append(f"conversation.item.done of {event['item']['id']} before .added")
    if open_responses:
        problems.append(f"responses never done: {sorted(open_responses)}")
    return problems


async def recorded(sim) -> list[dict[str, Any]]:
    session_id = await sim.wait_for_session()
    return [event for _, event in sim.sent(session_id)]


def assert_conforms(events: list[dict[str, Any]], expected_types: set[str]) -> None:
    seen = {event["type"] for event in events}
    assert expected_types <= seen, f"scenario did not produce {sorted(expected_types - seen)}"
    assert conformance_problems(events) == []
    assert order_problems(events) == []


async def test_text_tools_out_of_band_and_errors_conform(sim, conn):
    await conn.session.update(
        session={"type": "realtime", "instructions": "Be brief.", "tools": [FUNCTION_TOOL]}
    )
    await recv_until(conn, "session.updated")
    await add_user_text(conn, 'weather? #call:lookup {"city": "Oslo"}')
    await conn.response.create()
    events = await recv_until(conn, "response.done")
    call = next(e for e in events if e.type == "response.function_call_arguments.done")
    await conn.conversation.item.create(
        item={"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}
    )
    await recv_until(conn, "conversation.item.done")
    await conn.response.create(response={"metadata": {"topic": "weather"}})
    await recv_until(conn, "response.done")
    await conn.response.create(
        response={"conversation": "none", "metadata": {"kind": "summary"}, "input": []}
    )
    await recv_until(conn, "response.done")
    await conn.response.create(event_id="evt_cancel_me")
    await conn.response.cancel(event_id="evt_cancel")
    cancelled = (await recv_until(conn, "response.done"))[-1].response
    assert cancelled.status_details.reason == "client_cancelled"
    item_id = cancelled.output[0].id
    await conn.conversation.item.retrieve(item_id=item_id)
    await recv_until(conn, "conversation.item.retrieved")
    await conn.conversation.item.delete(item_id=item_id)
    await recv_until(conn, "conversation.item.deleted")
    await conn.send({"type": "no.such.event", "event_id": "evt_bad_type"})
    await conn.conversation.item.retrieve(item_id="item_missing", event_id="evt_missing")
    await conn.response.cancel(event_id="evt_nothing_to_cancel")
    errors = []
    for _ in range(3):
        errors.append((await recv_until(conn, "error"))[-1].error)
    assert [e.event_id for e in errors] == ["evt_bad_type", "evt_missing", "evt_nothing_to_cancel"]
    assert_conforms(
        await recorded(sim),
        {
            "session.created",
            "session.updated",
            "conversation.item.added",
            "conversation.item.done",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_text.delta",
            "rate_limits.updated",
            "conversation.item.retrieved",
            "conversation.item.deleted",
            "error",
        },
    )


@pytest.mark.parametrize("fmt", ["audio/pcm", "audio/pcmu"])
async def test_voice_turns_interruptions_and_truncation_conform(sim, conn, fmt):
    sim.config.reply_audio_ms = 600
    await conn.session.update(session=voice_session(fmt=fmt, vad=None))
    await recv_until(conn, "session.updated")
    await send_audio(conn, microphone("hello there", fmt), fmt)
    await conn.input_audio_buffer.commit()
    await recv_until(conn, "conversation.item.input_audio_transcription.completed")
    await conn.response.create()
    spoken = (await recv_until(conn, "response.done"))[-1].response
    await conn.conversation.item.truncate(
        item_id=spoken.output[0].id, content_index=0, audio_end_ms=200
    )
    await recv_until(conn, "conversation.item.truncated")
    await send_audio(conn, silence(200, fmt), fmt)
    await conn.input_audio_buffer.clear()
    await recv_until(conn, "input_audio_buffer.cleared")
    await conn.session.update(session=voice_session(fmt=fmt, vad=VAD))
    await recv_until(conn, "session.updated")
    turn = silence(300, fmt) + microphone("hello agent", fmt) + silence(600, fmt)
    await send_audio(conn, turn, fmt)
    await recv_until(conn, "response.done", timeout=20)
    assert_conforms(
        await recorded(sim),
        {
            "input_audio_buffer.committed",
            "input_audio_buffer.cleared",
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "conversation.item.input_audio_transcription.delta",
            "conversation.item.input_audio_transcription.completed",
            "response.output_audio.delta",
            "response.output_audio_transcript.delta",
            "response.output_audio.done",
            "response.output_audio_transcript.done",
            "conversation.item.truncated",
        },
    )


async def test_a_caller_speaking_over_the_agent_conforms(sim, conn):
    sim.config.audio_pace = 4.0  # the reply is still being spoken when the caller speaks
    await conn.session.update(session=voice_session(vad=VAD))
    await recv_until(conn, "session.updated")
    await send_audio(conn, microphone("hello") + silence(400))
    await recv_until(conn, "response.output_audio.delta")
    await send_audio(conn, microphone("wait a moment"))
    done = (await recv_until(conn, "response.done", timeout=20))[-1].response
    assert (done.status, done.status_details.reason) == ("cancelled", "turn_detected")
    assert_conforms(await recorded(sim), {"input_audio_buffer.speech_started", "response.done"})


def test_the_checks_catch_what_the_sdk_would_not_take():
    """The checks above could fail: a field of the wrong type, an unknown type, an undeclared
    key, and an item done before it was added are all found."""
    good = {"type": "input_audio_buffer.cleared", "event_id": "event_1"}
    assert conformance_problems([good]) == []
    assert conformance_problems([{**good, "event_id": 1}])
    assert conformance_problems([{**good, "type": "input_audio_buffer.emptied"}])
    assert conformance_problems([{**good, "extra": True}])
    item = {"id": "item_1", "type": "message", "role": "user", "content": []}
    done = {"type": "conversation.item.done", "event_id": "e", "item": item}
    assert order_problems([done])
    assert order_problems([{"type": "output_audio_buffer.started", "response_id": "r"}])
