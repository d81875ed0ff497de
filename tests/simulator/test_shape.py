"""The current protocol's shape: the beta handshake refused, events outside the GA shape refused
with the session going on, current fields accepted and checked, rate limits at the start of
each response."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from apps.realtime.ga import updatable_session
from tests.simulator.client import add_user_text, recv, recv_until, sdk_client

BETA_ERROR = {
    "type": "invalid_request_error",
    "code": "beta_api_shape_disabled",
    "message": "The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API.",
    "param": None,
}


async def _until_closed(ws) -> list[dict]:
    frames = []
    async with asyncio.timeout(5):
        try:
            async for frame in ws:
                frames.append(json.loads(frame))
        except ConnectionClosed:
            pass
    return frames


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "how",
    [
        {"additional_headers": {"OpenAI-Beta": "realtime=v1"}},
        {"subprotocols": ["openai-beta.realtime-v1"]},
    ],
    ids=["header", "subprotocol"],
)
async def test_a_beta_handshake_gets_the_error_then_close_4000(sim, how):
    async with ws_connect(sim.url + "/realtime?model=gpt-realtime", **how) as ws:
        frames = await _until_closed(ws)
    assert [f["type"] for f in frames] == ["error"], "no session.created for the beta shape"
    assert frames[0]["error"] == {**BETA_ERROR, "event_id": None}
    assert (ws.close_code, ws.close_reason) == (
        4000,
        "invalid_request_error.beta_api_shape_disabled",
    )


# semantic_vad's key under server_vad; a rate on a format that has none
SERVER_VAD_EAGER = {"type": "server_vad", "eagerness": "low"}
PCMU_RATE = {"type": "audio/pcmu", "rate": 8000}


async def _reply_text(conn) -> str:
    """The text of a fresh response: it names the instructions in force."""
    await conn.response.create()
    done = (await recv_until(conn, "response.done"))[-1]
    return done.response.output[0].content[0].text


@pytest.mark.asyncio
async def test_a_session_update_without_type_is_refused_and_the_session_goes_on(conn):
    # As TanStack/ai #586 reports of the service: a type-less (beta-shaped) update gets
    # missing_required_parameter, the connection stays, and nothing of it is applied.
    beta = {
        "instructions": "Speak like a pirate.",
        "voice": "ash",
        "modalities": ["text", "audio"],
        "tools": [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}],
    }
    await conn.send({"type": "session.update", "event_id": "evt_b", "session": beta})
    error = await recv(conn)
    assert error.type == "error"
    assert error.error.model_dump(exclude_none=False) == {
        "type": "invalid_request_error",
        "code": "missing_required_parameter",
        "message": "Missing required parameter: 'session.type'.",
        "param": "session.type",
        "event_id": "evt_b",
    }
    await add_user_text(conn, "still here")
    assert "Speak like a pirate." not in await _reply_text(conn), "nothing was applied"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("event", "param"),
    [
        ({"type": "realtime", "temperature": 0.8}, "session.temperature"),
        ({"type": "realtime", "modalities": ["text"]}, "session.modalities"),
        ({"type": "realtime", "id": "sess_1"}, "session.id"),
        ({"type": "realtime", "object": "realtime.session"}, "session.object"),
        ({"type": "realtime", "expires_at": 1}, "session.expires_at"),
        ({"type": "realtime", "foo": 1}, "session.foo"),
        ({"type": "realtime", "audio": {"input": {"foo": 1}}}, "session.audio.input.foo"),
        (
            {"type": "realtime", "audio": {"input": {"turn_detection": SERVER_VAD_EAGER}}},
            "session.audio.input.turn_detection.eagerness",
        ),
        (
            {"type": "realtime", "audio": {"output": {"format": PCMU_RATE}}},
            "session.audio.output.format.rate",
        ),
        (
            {"type": "realtime", "tools": [{"type": "function", "name": "f", "meta": {}}]},
            "session.tools[0].meta",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
async def test_a_key_outside_the_ga_session_shape_is_an_unknown_parameter(conn, event, param):
    # TanStack/ai PR #699: the service refuses the whole update over one unknown key.
    session = {**event, "instructions": "Speak like a pirate."}
    await conn.send({"type": "session.update", "event_id": "evt_u", "session": session})
    error = await recv(conn)
    assert error.type == "error"
    assert (error.error.code, error.error.param, error.error.event_id) == (
        "unknown_parameter",
        param,
        "evt_u",
    )
    assert error.error.message == f"Unknown parameter: '{param}'."
    await add_user_text(conn, "still here")
    assert "Speak like a pirate." not in await _reply_text(conn), "nothing was applied"


@pytest.mark.asyncio
async def test_a_session_type_other_than_realtime_is_an_invalid_value(conn):
    await conn.send({"type": "session.update", "session": {"type": "chat"}})
    error = await recv(conn)
    assert (error.error.code, error.error.param) == ("invalid_value", "session.type")


@pytest.mark.asyncio
async def test_the_announced_session_sent_back_as_ga_allows_is_accepted(conn):
    # What a client (or the relay's rotation) may send back of session.created: every
    # updatable key of the service's session object, with `type`.
    update = {"type": "session.update", "session": {"type": "realtime", "instructions": "x"}}
    await conn.send(update)
    announced = (await recv(conn)).session.model_dump(exclude_unset=True)
    await conn.send({"type": "session.update", "session": updatable_session(announced)})
    assert (await recv_until(conn, "session.updated"))[-1].type == "session.updated"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("response", "param"),
    [
        ({"modalities": ["text"]}, "response.modalities"),
        ({"temperature": 0.7}, "response.temperature"),
        ({"voice": "ash"}, "response.voice"),
        ({"output_audio_format": "pcm16"}, "response.output_audio_format"),
        ({"audio": {"output": {"voice": "ash", "speed": 1.2}}}, "response.audio.output.speed"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
async def test_a_key_outside_the_ga_response_shape_is_an_unknown_parameter(conn, response, param):
    await conn.send({"type": "response.create", "event_id": "evt_r", "response": response})
    error = await recv(conn)
    assert (error.type, error.error.code, error.error.param, error.error.event_id) == (
        "error",
        "unknown_parameter",
        param,
        "evt_r",
    )
    await add_user_text(conn, "still here")
    assert "Reply 1 to" in await _reply_text(conn), "the refused response never started"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("event", "param"),
    [
        (
            {"type": "session.update", "session": {"type": "realtime", "tools": "x"}},
            "session.tools",
        ),
        (
            {"type": "session.update", "session": {"type": "realtime", "max_output_tokens": [9]}},
            "session.max_output_tokens",
        ),
        (
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"output": {"voice": 5}}},
            },
            "session.audio.output.voice",
        ),
        (
            {"type": "response.create", "response": {"output_modalities": "text"}},
            "response.output_modalities",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
async def test_a_value_of_a_type_the_ga_shape_does_not_allow_is_refused(conn, event, param):
    await conn.send({**event, "event_id": "evt_typed"})
    error = await recv(conn)
    assert (error.type, error.error.code, error.error.param, error.error.event_id) == (
        "error",
        "invalid_type",
        param,
        "evt_typed",
    )
    assert f"Invalid type for '{param}': expected" in error.error.message
    await conn.send({"type": "session.update", "session": {"type": "realtime"}})
    updated = (await recv_until(conn, "session.updated"))[-1]
    assert updated.session.tools == [] and updated.session.max_output_tokens == "inf", (
        "nothing of the refused update was applied"
    )


@pytest.mark.asyncio
async def test_reasoning_and_parallel_tool_calls_are_accepted(conn):
    await conn.session.update(
        session={
            "type": "realtime",
            "model": "gpt-realtime-2",
            "reasoning": {"effort": "low"},
            "parallel_tool_calls": False,
        }
    )
    updated = await recv(conn)
    assert updated.type == "session.updated"
    assert updated.session.model == "gpt-realtime-2"
    await conn.response.create(
        response={"reasoning": {"effort": "xhigh"}, "parallel_tool_calls": True}
    )
    done = (await recv_until(conn, "response.done"))[-1]
    assert done.response.status == "completed"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("event", "code", "param"),
    [
        (
            {
                "type": "session.update",
                "session": {"type": "realtime", "reasoning": {"effort": "max"}},
            },
            "invalid_value",
            "session.reasoning.effort",
        ),
        (
            {"type": "session.update", "session": {"type": "realtime", "reasoning": "high"}},
            "invalid_type",
            "session.reasoning",
        ),
        (
            {
                "type": "session.update",
                "session": {"type": "realtime", "parallel_tool_calls": "yes"},
            },
            "invalid_type",
            "session.parallel_tool_calls",
        ),
        (
            {"type": "response.create", "response": {"reasoning": {"effort": 3}}},
            "invalid_value",
            "response.reasoning.effort",
        ),
        (
            {"type": "response.create", "response": {"parallel_tool_calls": 1}},
            "invalid_type",
            "response.parallel_tool_calls",
        ),
    ],
)
async def test_current_fields_are_checked_and_errors_name_the_param(conn, event, code, param):
    await conn.send({**event, "event_id": "evt_bad"})
    error = await recv(conn)
    assert error.type == "error"
    assert (error.error.code, error.error.param, error.error.event_id) == (code, param, "evt_bad")
    if code == "invalid_type":  # the service names the param in the message too
        assert param in error.error.message
    else:  # and for a bad value, lists the values it takes
        assert "'minimal', 'low', 'medium', 'high' and 'xhigh'" in error.error.message


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "model",
    [
        "gpt-realtime",
        "gpt-realtime-2",
        "gpt-realtime-2.1-mini",
        "gpt-realtime-mini-2025-12-15",
        "gpt-4o-realtime-preview-2025-06-03",
    ],
)
async def test_current_model_names_open_sessions(sim, model):
    async with sdk_client(sim).realtime.connect(model=model) as conn:
        created = await recv(conn)
        assert created.session.model == model


@pytest.mark.asyncio
async def test_rate_limits_follow_each_response_created_and_decrease(sim, conn):
    seen = []
    for text in ("one", "two"):
        await add_user_text(conn, text)
        await conn.response.create()
        events = await recv_until(conn, "response.done")
        assert [e.type for e in events[:2]] == ["response.created", "rate_limits.updated"]
        seen.append({limit.name: limit for limit in events[1].rate_limits})
    first, second = seen
    assert first["requests"].limit == sim.config.rate_limit_requests
    assert first["requests"].remaining == sim.config.rate_limit_requests - 1
    assert second["requests"].remaining == first["requests"].remaining - 1
    assert second["tokens"].remaining < first["tokens"].remaining < first["tokens"].limit
    assert 0 < second["tokens"].reset_seconds <= first["tokens"].reset_seconds <= 60
