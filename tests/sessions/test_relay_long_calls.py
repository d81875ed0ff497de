"""Through the relay, to a caller that is not rotated: the simulator's cap (session_expired and
close 1001 with the service's reason) and the beta shape's refusal (beta_api_shape_disabled and
close 4000) pass unchanged; the current fields (reasoning, parallel_tool_calls) pass through."""

from __future__ import annotations

import json

import pytest
from channels.testing import WebsocketCommunicator

from apps.sessions.history import writer as history
from apps.sessions.models import LiveSession
from operator_console.asgi import application
from tests.support.realtime import user_text

pytestmark = pytest.mark.django_db(transaction=True)

BETA_MESSAGE = "The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API."


def _caller(
    token: str, *headers: tuple[bytes, bytes], subprotocols: list[str] | None = None
) -> WebsocketCommunicator:
    return WebsocketCommunicator(
        application,
        "/v1/realtime",
        headers=[(b"authorization", f"Bearer {token}".encode()), *headers],
        subprotocols=subprotocols,
    )


async def _until_close(communicator, timeout: float = 5.0) -> list[dict]:
    seen = []
    while True:
        message = await communicator.receive_output(timeout=timeout)
        if message["type"] == "websocket.close":
            seen.append({"type": "<close>", "code": message.get("code"), "reason": message.get("reason")})
            return seen
        seen.append(json.loads(message["text"]))


async def test_the_cap_reaches_a_caller_that_is_not_rotated(relay_settings, simulator, api_token):
    relay_settings.OC_ROTATE_AFTER = 0  # never rotated
    message = "Your session hit the maximum duration of 0.02 minutes."
    with simulator.configured(max_session_seconds=1.2, delta_interval=0.2):
        caller = _caller(api_token)
        assert (await caller.connect(timeout=5))[0]
        created = await caller.receive_json_from(timeout=5)
        session_id = created["session"]["id"]
        await caller.send_json_to({"type": "conversation.item.create", "item": user_text("hi")})
        await caller.send_json_to({"type": "response.create"})
        events = await _until_close(caller, timeout=5)
    errors = [e for e in events if e["type"] == "error"]
    assert [e["error"] for e in errors] == [
        {
            "type": "invalid_request_error",
            "code": "session_expired",
            "message": message,
            "param": None,
            "event_id": None,
        }
    ], "the service's error, unchanged"
    assert events[-1] == {"type": "<close>", "code": 1001, "reason": message}
    await history.flush()
    session = await LiveSession.objects.aget(upstream_id=session_id)
    assert (session.status, session.end_reason) == ("ended", "session_expired")


@pytest.mark.parametrize(
    "asked",
    [
        {"headers": [(b"openai-beta", b"realtime=v1")]},
        {"headers": [], "subprotocols": ["realtime", "openai-beta.realtime-v1"]},
    ],
    ids=["header", "browser-subprotocol"],
)
async def test_a_beta_handshake_gets_the_services_answer_through_the_relay(
    relay_settings, api_token, asked
):
    caller = _caller(api_token, *asked["headers"], subprotocols=asked.get("subprotocols"))
    connected, _ = await caller.connect(timeout=5)
    events = await _until_close(caller, timeout=5) if connected else []
    assert [e["type"] for e in events] == ["error", "<close>"], events
    assert events[0]["error"] == {
        "type": "invalid_request_error",
        "code": "beta_api_shape_disabled",
        "message": BETA_MESSAGE,
        "param": None,
        "event_id": None,
    }
    assert (events[1]["code"], events[1]["reason"]) == (
        4000,
        "invalid_request_error.beta_api_shape_disabled",
    )


async def test_a_beta_shaped_session_update_gets_the_services_answer_through_the_relay(
    relay_settings, api_token
):
    # The service answers a type-less update with missing_required_parameter and keeps the
    # session (TanStack/ai #586); the relay passes the error on unchanged.
    caller = _caller(api_token)
    assert (await caller.connect(timeout=5))[0]
    await caller.receive_json_from(timeout=5)
    beta = {"modalities": ["text"], "voice": "alloy", "input_audio_format": "pcm16"}
    await caller.send_json_to({"type": "session.update", "event_id": "evt_beta", "session": beta})
    error = await caller.receive_json_from(timeout=5)
    assert error["type"] == "error"
    assert error["error"] == {
        "type": "invalid_request_error",
        "code": "missing_required_parameter",
        "message": "Missing required parameter: 'session.type'.",
        "param": "session.type",
        "event_id": "evt_beta",
    }
    await caller.send_json_to({"type": "conversation.item.create", "item": user_text("hi")})
    while (event := await caller.receive_json_from(timeout=5))["type"] != "conversation.item.done":
        assert event["type"] != "error", event
    await caller.disconnect()


async def test_current_fields_pass_through_the_relay(relay_settings, api_token):
    caller = _caller(api_token)
    assert (await caller.connect(timeout=5))[0]
    await caller.receive_json_from(timeout=5)
    session = {"type": "realtime", "reasoning": {"effort": "low"}, "parallel_tool_calls": True}
    await caller.send_json_to({"type": "session.update", "session": session})
    updated = await caller.receive_json_from(timeout=5)
    assert updated["type"] == "session.updated"
    assert updated["session"]["reasoning"] == {"effort": "low"}
    await caller.send_json_to({"type": "conversation.item.create", "item": user_text("hi")})
    await caller.send_json_to(
        {"type": "response.create", "response": {"reasoning": {"effort": "high"}, "parallel_tool_calls": False}}
    )
    kinds = []
    while not kinds or kinds[-1] != "response.done":
        event = await caller.receive_json_from(timeout=5)
        kinds.append(event["type"])
        assert event["type"] != "error", event
    assert "rate_limits.updated" in kinds, "rate limits reach the caller"
    await caller.disconnect()


@pytest.mark.parametrize("model", ["gpt-realtime-2", "gpt-realtime-2.1-mini", "gpt-realtime-mini"])
async def test_current_model_names_pass_through_the_relay(relay_settings, api_token, model):
    caller = WebsocketCommunicator(
        application,
        f"/v1/realtime?model={model}",
        headers=[(b"authorization", f"Bearer {api_token}".encode())],
    )
    assert (await caller.connect(timeout=5))[0]
    created = await caller.receive_json_from(timeout=5)
    assert created["session"]["model"] == model
    await history.flush()
    session = await LiveSession.objects.aget(upstream_id=created["session"]["id"])
    assert session.model == model
    await caller.disconnect()
