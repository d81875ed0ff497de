"""A process killed with its sessions (SIGKILL: no last words): another process's sweep fails
them `session_lost`, and tells whoever followed them from elsewhere, as the holding actor
would have: operators watching the session page get `ended`, listeners `listen.ended` and a
close. Nothing stays open on a session that is over."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets

from tests.scaleout.conftest import cluster_env
from tests.scaleout.test_listen_two_processes import listening, login_cookie
from tests.scaleout.test_two_processes import Console
from tests.support.servers import start_side_by_side

pytestmark = pytest.mark.e2e


async def test_a_killed_process_sessions_end_for_their_watchers_and_listeners_elsewhere(
    scaleout_db, redis_server, simulator
):
    env = cluster_env(
        scaleout_db, redis_server, simulator, OC_HEARTBEAT_INTERVAL="0.5", OC_SESSION_STALE_AFTER="2"
    )
    a, b = start_side_by_side(env, env)
    console = None
    try:
        call = await websockets.connect(
            f"{a.ws_base}/realtime?model=gpt-realtime",
            additional_headers={"Authorization": f"Bearer {scaleout_db.token}"},
        )
        session_id = json.loads(await call.recv())["session"]["id"]
        console = await Console.connect(b, scaleout_db.username, scaleout_db.password)
        await console.send({"type": "watch.session", "session_id": session_id})
        await console.wait_for(lambda m: m["type"] == "snapshot", what="the snapshot from A")
        cookie = await login_cookie(b, scaleout_db.username, scaleout_db.password)
        async with listening(b, session_id, cookie) as (listener, started):
            assert started["type"] == "listen.started"
            headers = {"Authorization": f"Bearer {scaleout_db.token}"}
            with simulator.configured(delta_interval=1.0):  # still streaming at the kill
                async with httpx.AsyncClient(base_url=b.http_url, headers=headers) as rest:
                    nudge = await rest.post(f"/api/v1/sessions/{session_id}/responses", json={})
                assert nudge.status_code == 202, nudge.text
                request_id = nudge.json()["id"]
                await console.wait_for(
                    lambda m: m["type"] == "request" and m["request_id"] == request_id
                    and m["status"] == "in_progress",
                    what="the nudge in progress on B's page",
                )
                a.proc.kill()
            ended = await console.wait_for(lambda m: m["type"] == "ended", what="the end on B")
            assert (ended["session_id"], ended["status"], ended["reason"]) == (
                session_id, "failed", "session_lost",
            )
            assert ended["detail"]
            failed = [
                (m["request_id"], m["error_code"])
                for m in console.messages if m["type"] == "request" and m["status"] == "failed"
            ]
            assert failed == [(request_id, "session_lost")]
            told = []
            with pytest.raises(websockets.ConnectionClosedOK):
                async with asyncio.timeout(5):
                    while True:
                        told.append(await listener.recv())
            texts = [json.loads(m) for m in told if isinstance(m, str)]
            assert texts == [{"type": "listen.ended"}]
        await call.close()
    finally:
        if console is not None:
            await console.close()
        a.stop()
        b.stop()
