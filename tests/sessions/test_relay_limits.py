"""Limits on the relay: message size (1009, naming the size) and live sessions per process."""

from __future__ import annotations

import json

import pytest
import websockets
from channels.testing import WebsocketCommunicator

from apps.sessions.models import LiveSession
from operator_console.asgi import application
from tests.support.realtime import eventually, user_text

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.e2e
async def test_a_2_mib_frame_is_refused_with_1009_naming_the_size_and_the_next_session_works(
    daphne, api_token
):
    headers = {"Authorization": f"Bearer {api_token}"}
    url = f"{daphne.ws_base}/realtime?model=gpt-realtime"
    async with websockets.connect(url, additional_headers=headers, max_size=None) as socket:
        session_id = json.loads(await socket.recv())["session"]["id"]
        await socket.send(json.dumps({"type": "conversation.item.create", "item": user_text("x" * (2 * 1024 * 1024))}))
        with pytest.raises(websockets.ConnectionClosedError):
            while True:
                await socket.recv()
    assert socket.close_code == 1009
    assert "exceeds payload limit of 1048576" in socket.close_reason
    session = await eventually(
        lambda: LiveSession.objects.filter(upstream_id=session_id).exclude(status="live").first()
    )
    assert session.status == "ended"
    async with websockets.connect(url, additional_headers=headers) as socket:
        assert json.loads(await socket.recv())["type"] == "session.created", "the process is healthy"


async def test_callers_beyond_the_per_process_cap_are_told_and_closed_with_1013(
    relay_settings, simulator, api_token
):
    relay_settings.OC_MAX_SESSIONS = 1
    headers = [(b"authorization", f"Bearer {api_token}".encode())]
    first = WebsocketCommunicator(application, "/v1/realtime", headers=headers)
    assert (await first.connect(timeout=5))[0]
    assert (await first.receive_json_from(timeout=5))["type"] == "session.created"
    before = simulator.sim.connections_opened
    second = WebsocketCommunicator(application, "/v1/realtime", headers=headers)
    assert (await second.connect(timeout=5))[0]
    error = await second.receive_json_from(timeout=5)
    assert error["type"] == "error" and error["error"]["code"] == "too_many_sessions"
    assert "maximum of 1 live sessions" in error["error"]["message"]
    closed = await second.receive_output(timeout=5)
    assert closed["type"] == "websocket.close" and closed["code"] == 1013
    assert simulator.sim.connections_opened == before, "no upstream for a refused caller"
    await first.disconnect()
