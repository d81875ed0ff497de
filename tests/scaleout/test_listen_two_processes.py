"""Listen-in across processes: a caller on process A, an operator listening through process B
(two real Daphne processes, one real Redis, one real PostgreSQL). B's listener hears A's call
through the channel layer, from `listen.started` on, in order."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from array import array

import httpx
import pytest
import websockets

from tests.support.servers import DaphneProcess

pytestmark = pytest.mark.e2e


async def login_cookie(server: DaphneProcess, username: str, password: str) -> str:
    async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as http:
        await http.get("/accounts/login/")
        login = await http.post(
            "/accounts/login/",
            data={"username": username, "password": password,
                  "csrfmiddlewaretoken": http.cookies["csrftoken"], "next": "/console/"},
            headers={"Referer": f"{server.http_url}/accounts/login/", "Origin": server.http_url},
        )
        assert login.status_code == 302, login.text
        return f"sessionid={http.cookies['sessionid']}"


@contextlib.asynccontextmanager
async def listening(server: DaphneProcess, session_id: str, cookie: str):
    """A listen-in socket on `server`, once it has said `listen.started` (that message too)."""
    async with websockets.connect(
        f"ws://127.0.0.1:{server.port}/ws/console/sessions/{session_id}/audio",
        origin=server.http_url,
        additional_headers={"Cookie": cookie},
    ) as listener:
        started = json.loads(await asyncio.wait_for(listener.recv(), 10))
        yield listener, started


@contextlib.asynccontextmanager
async def calling(server: DaphneProcess, token: str):
    """A caller on `server`'s relay, and its session's id."""
    async with websockets.connect(
        f"{server.ws_base}/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {token}"},
    ) as call:
        yield call, json.loads(await call.recv())["session"]["id"]


def piece(n: int) -> bytes:
    """40 ms of PCM16 that says which piece it is."""
    return array("h", [n] * 960).tobytes()


async def test_a_listener_on_the_other_process_hears_the_call_in_order(pair, scaleout_db):
    a, b = pair
    cookie = await login_cookie(b, scaleout_db.username, scaleout_db.password)
    async with (
        calling(a, scaleout_db.token) as (call, session_id),
        listening(b, session_id, cookie) as (listener, started),
    ):
        assert started == {"type": "listen.started", "format": "pcm16", "rate": 24000}
        for n in range(1, 26):  # one second of the caller's audio, in real time
            await call.send(json.dumps({"type": "input_audio_buffer.append",
                                        "audio": base64.b64encode(piece(n)).decode()}))
            await asyncio.sleep(0.04)
        said = b"".join(piece(n) for n in range(1, 26))
        heard = []  # pieces that came close together may come as one frame
        async with asyncio.timeout(10):
            while sum(len(frame) - 1 for frame in heard) < len(said):
                frame = await listener.recv()
                if isinstance(frame, bytes):
                    heard.append(frame)
    assert all(frame[0] == 0 for frame in heard), "every piece is the caller's"
    assert b"".join(frame[1:] for frame in heard) == said, "all of it, in order"


async def test_a_listener_on_the_other_process_hears_the_call_again_after_redis_restarts(
    pair, scaleout_db, redis_server
):
    """A restarted Redis has forgotten every group: the listener joins its listen group again
    as soon as Redis is back and hears the call, it does not stay open and silent."""
    a, b = pair
    cookie = await login_cookie(b, scaleout_db.username, scaleout_db.password)
    async with (
        calling(a, scaleout_db.token) as (call, session_id),
        listening(b, session_id, cookie) as (listener, started),
    ):
        assert started["type"] == "listen.started"
        try:
            redis_server.restart(down_for=3.0)
        finally:
            if not redis_server.ping():
                redis_server.start()
        heard = []
        async with asyncio.timeout(3):  # the consumers retry the layer at least every second
            n = 0
            while not heard:  # a piece every 40 ms until one reaches the listener
                n += 1
                await call.send(json.dumps({"type": "input_audio_buffer.append",
                                            "audio": base64.b64encode(piece(n)).decode()}))
                try:
                    frame = await asyncio.wait_for(listener.recv(), 0.04)
                except TimeoutError:
                    continue
                if isinstance(frame, bytes):
                    heard.append(frame)
    first = heard[0][1 : 1 + len(piece(1))]  # (the frame may hold the pieces after it too)
    assert heard[0][0] == 0 and first in {piece(k) for k in range(1, n + 1)}
