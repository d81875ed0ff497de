"""Limits on the relay: message size (16 MiB, the service's 15 MiB audio append plus its JSON;
1009 naming the size and the limit above it) and live sessions per process."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading

import pytest
import websockets
from channels.testing import WebsocketCommunicator

from apps.sessions.models import LiveSession
from operator_console.asgi import application
from tests.support.realtime import eventually
from tests.support.servers import DaphneProcess

pytestmark = pytest.mark.django_db(transaction=True)

MiB = 1024 * 1024


class RecordingUpstream:
    """An upstream that names the session and keeps every frame it is sent, as received: a
    bare websockets server on a loop of its own, so that what arrives is not interpreted."""

    def __init__(self) -> None:
        self.frames: list[str | bytes] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self):
        return await websockets.serve(self._serve, "127.0.0.1", 0, max_size=None)

    async def _serve(self, socket) -> None:
        created = {"type": "session.created", "event_id": "ev_1", "session": {"id": "sess_rec", "instructions": ""}}
        await socket.send(json.dumps(created))
        async for frame in socket:
            self.frames.append(frame)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def _stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def recording_daphne(django_db_setup, django_db_blocker):
    from django.db import connection

    upstream = RecordingUpstream()
    with django_db_blocker.unblock():
        db_path = connection.settings_dict["NAME"]
    server = DaphneProcess(
        {"OC_UPSTREAM_URL": upstream.url, "DATABASE_URL": f"sqlite:///{os.path.abspath(db_path)}"}
    )
    yield server, upstream
    server.stop()
    upstream.stop()


def append(nbytes: int) -> str:
    """An `input_audio_buffer.append` whose JSON is about `nbytes` long."""
    audio = base64.b64encode(bytes(range(256)) * (nbytes * 3 // 4 // 256)).decode()
    return json.dumps({"type": "input_audio_buffer.append", "event_id": "ev_big", "audio": audio})


def exactly(nbytes: int) -> str:
    """An `input_audio_buffer.append` of exactly `nbytes` (valid base64: silence)."""
    empty = json.dumps({"type": "input_audio_buffer.append", "event_id": "ev_", "audio": ""})
    room = nbytes - len(empty)
    frame = json.dumps(
        {
            "type": "input_audio_buffer.append",
            "event_id": "ev_" + "x" * (room % 4),
            "audio": "A" * (room - room % 4),
        }
    )
    assert len(frame) == nbytes
    return frame


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("make", "nbytes"), [(append, 3 * MiB), (exactly, 16 * MiB)], ids=["3-mib", "exactly-16-mib"]
)
async def test_an_audio_append_up_to_16_mib_reaches_the_upstream_whole(
    recording_daphne, api_token, make, nbytes
):
    server, upstream = recording_daphne
    frame = make(nbytes)
    headers = {"Authorization": f"Bearer {api_token}"}
    async with websockets.connect(
        f"{server.ws_base}/realtime?model=gpt-realtime", additional_headers=headers, max_size=None
    ) as socket:
        assert json.loads(await socket.recv())["type"] == "session.created"
        await socket.send(frame)
        await eventually(lambda: upstream.frames or None)
        assert socket.close_code is None, "the caller is still connected"
    assert upstream.frames == [frame], "the append reached the upstream as the caller sent it"


@pytest.mark.e2e
async def test_a_17_mib_message_is_refused_with_1009_naming_the_limit_and_the_next_session_works(
    daphne, api_token
):
    headers = {"Authorization": f"Bearer {api_token}"}
    url = f"{daphne.ws_base}/realtime?model=gpt-realtime"
    async with websockets.connect(url, additional_headers=headers, max_size=None) as socket:
        session_id = json.loads(await socket.recv())["session"]["id"]
        with pytest.raises(websockets.ConnectionClosedError):
            await socket.send(append(17 * MiB))  # the refusal may come before it is all sent
            while True:
                await socket.recv()
    assert socket.close_code == 1009
    assert "exceeds" in socket.close_reason and str(16 * MiB) in socket.close_reason, socket.close_reason
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
