"""Upstream faults (issue 5): each one is told to the caller, ends every pending request with a
reason, and leaves the process healthy for the next session."""

from __future__ import annotations

import json

import pytest
from channels.testing import WebsocketCommunicator

from apps.sessions.history import writer as history
from apps.sessions.models import LiveSession, ResponseRequest
from operator_console.asgi import application
from tests.support.realtime import user_text

pytestmark = pytest.mark.django_db(transaction=True)


async def _open(token: str) -> tuple[WebsocketCommunicator, str]:
    communicator = WebsocketCommunicator(
        application, "/v1/realtime", headers=[(b"authorization", f"Bearer {token}".encode())]
    )
    assert (await communicator.connect(timeout=5))[0]
    created = await communicator.receive_json_from(timeout=5)
    return communicator, created["session"]["id"]


async def _until(communicator, kind: str, timeout: float = 5.0) -> list[dict]:
    seen = []
    while True:
        message = await communicator.receive_output(timeout=timeout)
        if message["type"] == "websocket.close":
            seen.append({"type": "<close>", "code": message.get("code"), "reason": message.get("reason")})
            if kind == "<close>":
                return seen
            raise AssertionError(f"closed before {kind}: {seen}")
        event = json.loads(message["text"])
        seen.append(event)
        if event["type"] == kind:
            return seen


async def _healthy(token: str) -> None:
    communicator, _ = await _open(token)
    await communicator.send_json_to({"type": "conversation.item.create", "item": user_text("still there?")})
    await communicator.send_json_to({"type": "response.create"})
    done = (await _until(communicator, "response.done"))[-1]
    assert done["response"]["status"] == "completed"
    await communicator.disconnect()


async def test_a_stall_mid_response_ends_the_session_with_a_reason(relay_settings, simulator, api_token):
    relay_settings.OC_UPSTREAM_STALL_TIMEOUT = 0.3
    with simulator.configured(stall_after_deltas=2):
        communicator, session_id = await _open(api_token)
        await communicator.send_json_to({"type": "conversation.item.create", "item": user_text("hi")})
        await communicator.send_json_to({"type": "response.create", "event_id": "evt_one"})
        await communicator.send_json_to({"type": "response.create", "event_id": "evt_two"})
        events = await _until(communicator, "<close>", timeout=3)
    assert sum(e["type"] == "response.output_text.delta" for e in events) == 2
    error = [e for e in events if e["type"] == "error"][-1]["error"]
    assert error["code"] == "upstream_timeout" and "0.3 s" in error["message"]
    assert events[-1]["code"] == 1011
    await history.flush()
    session = await LiveSession.objects.aget(upstream_id=session_id)
    assert (session.status, session.end_reason) == ("failed", "upstream_closed")
    assert "sent nothing" in session.end_detail
    requests = [r async for r in ResponseRequest.objects.filter(session=session)]
    assert {(r.status, r.error_code) for r in requests} == {("failed", "session_ended")}
    assert all("sent nothing" in r.error_message for r in requests)
    await _healthy(api_token)


async def test_malformed_and_unknown_upstream_frames_are_relayed_and_the_session_goes_on(
    relay_settings, simulator, api_token
):
    communicator, session_id = await _open(api_token)
    connection = simulator.sim.sessions[session_id].connection
    await simulator.acall(connection.send("this is not json"))
    await simulator.acall(connection.send('{"type": "future.event", "detail": 1}'))
    await simulator.acall(connection.send("[1, 2, 3]"))
    assert (await communicator.receive_from(timeout=5)) == "this is not json"
    assert json.loads(await communicator.receive_from(timeout=5)) == {"type": "future.event", "detail": 1}
    assert (await communicator.receive_from(timeout=5)) == "[1, 2, 3]"
    await communicator.send_json_to({"type": "conversation.item.create", "item": user_text("hi")})
    await communicator.send_json_to({"type": "response.create"})
    assert (await _until(communicator, "response.done"))[-1]["response"]["status"] == "completed"
    await communicator.disconnect()


async def test_session_expired_is_a_normal_end_told_to_the_caller(relay_settings, simulator, api_token):
    with simulator.configured(delta_interval=0.2):
        communicator, session_id = await _open(api_token)
        await communicator.send_json_to({"type": "conversation.item.create", "item": user_text("hi")})
        await communicator.send_json_to({"type": "response.create", "event_id": "evt_one"})
        await communicator.send_json_to({"type": "response.create", "event_id": "evt_two"})
        await _until(communicator, "response.created")
        connection = simulator.sim.sessions[session_id].connection
        expired = {
            "type": "error",
            "event_id": "event_expired",
            "error": {
                "type": "invalid_request_error",
                "code": "session_expired",
                "message": "Your session hit the maximum duration of 60 minutes.",
                "param": None,
                "event_id": None,
            },
        }
        await simulator.acall(connection.send(json.dumps(expired)))
        await simulator.acall(simulator.sim.close_session(session_id, 1001, "session expired"))
        events = await _until(communicator, "<close>")
    told = [e for e in events if e["type"] == "error"]
    assert told and told[0]["error"]["code"] == "session_expired", "the caller is told"
    assert events[-1]["code"] == 1001
    await history.flush()
    session = await LiveSession.objects.aget(upstream_id=session_id)
    assert (session.status, session.end_reason) == ("ended", "session_expired")
    requests = [r async for r in ResponseRequest.objects.filter(session=session)]
    assert len(requests) == 2
    assert {(r.status, r.error_code) for r in requests} == {("failed", "session_ended")}
    assert all("session_expired" in r.error_message for r in requests)
    await _healthy(api_token)
