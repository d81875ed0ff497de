"""The current protocol's shape: the beta shape refused, current fields accepted and checked,
rate limits at the start of each response."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

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


@pytest.mark.asyncio
async def test_a_beta_shaped_session_update_gets_the_error_then_close_4000(sim):
    async with ws_connect(sim.url + "/realtime?model=gpt-realtime") as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        beta = {
            "modalities": ["text", "audio"],
            "voice": "alloy",
            "input_audio_format": "pcm16",
            "turn_detection": {"type": "server_vad"},
        }
        await ws.send(json.dumps({"type": "session.update", "event_id": "evt_b", "session": beta}))
        frames = await _until_closed(ws)
    assert frames == [
        {
            "type": "error",
            "event_id": frames[0]["event_id"],
            "error": {**BETA_ERROR, "event_id": "evt_b"},
        }
    ]
    assert ws.close_code == 4000


@pytest.mark.asyncio
async def test_a_beta_key_beside_type_is_an_unknown_parameter_and_the_session_goes_on(conn):
    await conn.send({"type": "session.update", "session": {"type": "realtime", "voice": "ash"}})
    event = await recv(conn)
    assert event.type == "error" and event.error.code == "unknown_parameter"
    assert event.error.param == "session.voice"
    await add_user_text(conn, "still here")


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
