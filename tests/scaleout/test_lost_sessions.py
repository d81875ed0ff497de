"""A process killed with its sessions (SIGKILL: no last words): another process's sweep fails
them `session_lost`, and tells whoever followed them from elsewhere, as the holding actor
would have: operators watching the session page get `ended`, listeners `listen.ended` and a
close. Nothing stays open on a session that is over. The requests it fails are counted in the
sweeping process's metrics, and its pending tool approvals expire."""

from __future__ import annotations

import asyncio
import json
import signal

import httpx
import pytest
import websockets

from tests.scaleout.conftest import cluster_env, manage
from tests.scaleout.test_listen_two_processes import listening, login_cookie
from tests.scaleout.test_two_processes import Console, crashes, until
from tests.sessions.test_sideband import Observer
from tests.support.callers import SocketCaller, until_live
from tests.support.realtime import user_text
from tests.support.servers import start_side_by_side
from tests.support.sse import Follower

pytestmark = pytest.mark.e2e

MCP_TOOL = {
    "type": "mcp",
    "server_label": "crm",
    "server_url": "https://crm.example/mcp",
    "require_approval": "always",
}


async def test_a_killed_process_sessions_end_for_their_watchers_and_listeners_elsewhere(
    scaleout_db, redis_server, simulator
):
    env = cluster_env(
        scaleout_db, redis_server, simulator, OC_HEARTBEAT_INTERVAL="0.5", OC_SESSION_STALE_AFTER="2"
    )
    scrape = manage(
        scaleout_db.url, "create_api_token", "--name", "lost-metrics", "--scope", "metrics:read"
    )
    scraper = {"Authorization": f"Bearer {scrape.strip().splitlines()[-1]}"}
    a, b = start_side_by_side(env, env)
    console = None
    try:
        call = await websockets.connect(
            f"{a.ws_base}/realtime?model=gpt-realtime",
            additional_headers={"Authorization": f"Bearer {scaleout_db.token}"},
        )
        session_id = json.loads(await call.recv())["session"]["id"]
        # The agent asks to run a tool that needs an approval; nobody decides before the kill.
        tools = {"type": "realtime", "tools": [MCP_TOOL]}
        await call.send(json.dumps({"type": "session.update", "session": tools}))
        asked = user_text('Look it up #mcp:lookup {"order": 42}')
        await call.send(json.dumps({"type": "conversation.item.create", "item": asked}))
        await call.send(json.dumps({"type": "response.create"}))
        async with asyncio.timeout(10):
            while json.loads(await call.recv())["type"] != "response.done":
                pass
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
            # The approval can no longer be decided: expired, as at any session's end.
            async with httpx.AsyncClient(base_url=b.http_url, headers=headers) as rest:
                listed = await rest.get(f"/api/v1/sessions/{session_id}/approvals")
            assert [(a["status"], a["decided_by"]) for a in listed.json()["items"]] == [
                ("expired", "")
            ], listed.text
            told = []
            with pytest.raises(websockets.ConnectionClosedOK):
                async with asyncio.timeout(5):
                    while True:
                        told.append(await listener.recv())
            texts = [json.loads(m) for m in told if isinstance(m, str)]
            assert texts == [{"type": "listen.ended"}]
        # The requests B's sweep failed are counted where they failed, in B's figures: nobody
        # scrapes A any more, and a fleet's sum of failures must not miss the lost sessions'.
        async with httpx.AsyncClient(base_url=b.http_url, headers=scraper) as http:
            scraped = (await http.get("/metrics")).text
        failed_api = [
            line for line in scraped.splitlines()
            if line.startswith("oc_requests_total{") and 'origin="api"' in line
            and 'status="failed"' in line
        ]
        assert [line.rsplit(" ", 1)[1] for line in failed_api] == ["1.0"], scraped
        await call.close()
    finally:
        if console is not None:
            await console.close()
        a.stop()
        b.stop()


async def test_a_paused_process_whose_session_was_swept_ends_it_and_tells_its_caller(
    scaleout_db, redis_server, simulator
):
    """A holder that was only held up (SIGSTOP here; a stalled database or a frozen VM alike)
    finds, at its next heartbeat, that another process swept its session as lost: it ends
    the call rather than relay on a session that everyone else has as over and no one can
    steer, and the sweep's record stands."""
    env = cluster_env(
        scaleout_db, redis_server, simulator,
        OC_HEARTBEAT_INTERVAL="0.5", OC_SESSION_STALE_AFTER="2",
    )
    a, b = start_side_by_side(env, env)
    try:
        call = await SocketCaller.connect(a.ws_base, scaleout_db.token)
        headers = {"Authorization": f"Bearer {scaleout_db.token}"}
        async with httpx.AsyncClient(base_url=f"{b.http_url}/api/v1", headers=headers) as rest:
            await until_live(rest, call.session_id)

            async def swept() -> bool:
                answer = await rest.get(f"/sessions/{call.session_id}")
                return answer.json()["status"] != "live"

            a.proc.send_signal(signal.SIGSTOP)
            try:  # B's sweep: within the staleness and a beat
                await until(swept, timeout=10, what="B's sweep of A's session")
            finally:
                a.proc.send_signal(signal.SIGCONT)
            async with asyncio.timeout(5):  # A's next heartbeat round
                await call.reader
            assert call.socket.close_code == 1011
            assert "declared lost" in call.socket.close_reason
            await asyncio.sleep(1)  # A's end, written
            session = (await rest.get(f"/sessions/{call.session_id}")).json()
        assert (session["status"], session["end_reason"]) == ("failed", "session_lost")
        assert not crashes(a, b), crashes(a, b)
    finally:
        a.stop()
        b.stop()


async def test_a_paused_process_does_nothing_more_for_a_session_swept_meanwhile(
    scaleout_db, redis_server, simulator
):
    """Held up with one nudge streaming and one queued, A wakes to find them failed by B's
    sweep. It neither finishes the first (its response.done arrived meanwhile) nor sends the
    second upstream, and records nothing more: each request and the session end once, as the
    sweep said (its lease had run out, so its actor asked the table before anything else)."""
    env = cluster_env(
        scaleout_db, redis_server, simulator,
        OC_HEARTBEAT_INTERVAL="0.5", OC_SESSION_STALE_AFTER="2",
    )
    a, b = start_side_by_side(env, env)
    simulator.sim.observer = observer = Observer()
    try:
        call = await SocketCaller.connect(a.ws_base, scaleout_db.token)
        headers = {"Authorization": f"Bearer {scaleout_db.token}"}
        async with httpx.AsyncClient(
            base_url=f"{b.http_url}/api/v1", headers=headers, timeout=10
        ) as rest:
            await until_live(rest, call.session_id)
            # The whole log, not the session's stream (which ends at the first `session.ended`).
            stream = await Follower(rest, "/events").start()
            with simulator.configured(delta_interval=0.6):  # 3 s a response
                first = (await rest.post(f"/sessions/{call.session_id}/responses", json={}))
                second = (await rest.post(f"/sessions/{call.session_id}/responses", json={}))
                first_id, second_id = first.json()["id"], second.json()["id"]

                async def streaming() -> bool:
                    answer = await rest.get(f"/responses/{first_id}")
                    return answer.json()["status"] == "in_progress"

                await until(streaming, timeout=10, what="the first nudge streaming")

                async def swept() -> bool:
                    answer = await rest.get(f"/sessions/{call.session_id}")
                    return answer.json()["status"] != "live"

                a.proc.send_signal(signal.SIGSTOP)
                try:
                    await until(swept, timeout=10, what="B's sweep of A's session")
                    # The first response ends upstream while A sleeps: its done waits for A.
                    await asyncio.sleep(3)
                finally:
                    a.proc.send_signal(signal.SIGCONT)
                async with asyncio.timeout(5):
                    await call.reader
            assert call.socket.close_code == 1011
            await asyncio.sleep(1.5)  # anything A would still write, and B's stream send
            await stream.close()
            requests = [(await rest.get(f"/responses/{r}")).json() for r in (first_id, second_id)]
        assert [(r["status"], r["error"]["code"]) for r in requests] == [
            ("failed", "session_lost"), ("failed", "session_lost"),
        ], requests
        sent = [
            (event.get("response") or {}).get("metadata", {}).get("oc_request")
            for _, event in observer.creates
        ]
        assert second_id not in sent, "the request the sweep failed was sent upstream after all"
        events = [e.data for e in stream.events if e.data.get("session_id") == call.session_id]
        finals = [
            (e["request"]["id"], e["request"]["status"])
            for e in events
            if e["type"] == "request.status"
            and e["request"]["status"] in ("completed", "failed", "cancelled")
        ]
        assert sorted(finals) == sorted([(first_id, "failed"), (second_id, "failed")]), finals
        assert [e["type"] for e in events].count("session.ended") == 1, events
        assert not crashes(a, b), crashes(a, b)
    finally:
        simulator.sim.observer = None
        a.stop()
        b.stop()
