"""The console's session page through a Redis outage: what the actors told its watchers while
Redis was away is lost with the layer, so a watcher back in its group catches up from the
table — a session that ended meanwhile shows ended, requests show the status they reached —
and from the actor, which sends it the whole transcript again (a reply made meanwhile). While
Redis is away the page is told its updates are paused."""

from __future__ import annotations

import asyncio
from datetime import datetime

import httpx
import pytest

from tests.scaleout.conftest import cluster_env
from tests.scaleout.test_two_processes import Caller, Console
from tests.support.servers import start_side_by_side

pytestmark = pytest.mark.e2e


async def test_a_page_watching_through_a_redis_outage_catches_up_when_redis_is_back(
    scaleout_db, redis_server, simulator
):
    env = cluster_env(scaleout_db, redis_server, simulator)
    a, b = start_side_by_side(env, env)
    leaving = await Caller.connect(a, scaleout_db.token)
    staying = await Caller.connect(a, scaleout_db.token)
    pages = []
    headers = {"Authorization": f"Bearer {scaleout_db.token}"}
    rest = httpx.AsyncClient(base_url=f"{b.http_url}/api/v1", headers=headers, timeout=15)
    try:
        for caller in (leaving, staying):
            page = await Console.connect(b, scaleout_db.username, scaleout_db.password)
            pages.append(page)
            await page.send({"type": "watch.session", "session_id": caller.session_id})
            await page.wait_for(lambda m: m["type"] == "snapshot", what="the snapshot")
        on_leaving, on_staying = pages
        redis_server.stop_process()
        try:
            for page in pages:  # not looking live while nothing can reach it
                await page.wait_for(lambda m: m["type"] == "paused", what="the pause")
            await leaving.close()  # the session ends while its page cannot be told
            posted = await rest.post(f"/sessions/{staying.session_id}/responses", json={})
            assert posted.status_code == 202, posted.text
            request_id = posted.json()["id"]
            await staying.wait_for("response.done", timeout=10)  # picked up from the table
            await asyncio.sleep(0.5)
        finally:
            redis_server.start()
        ended = await on_leaving.wait_for(lambda m: m["type"] == "ended", what="the end")
        assert (ended["session_id"], ended["status"], ended["reason"]) == (
            leaving.session_id, "ended", "caller_closed",
        )
        done = await on_staying.wait_for(
            lambda m: m["type"] == "request" and m["request_id"] == request_id
            and m["status"] == "completed",
            what="the nudge's completion",
        )
        assert done["origin"] == "api" and done["response_id"]
        made = datetime.fromisoformat(posted.json()["created_at"]).timestamp()
        assert done["created_at"] == pytest.approx(made, abs=1e-6), "when it was made: its latency"
        [reply] = [e["response"] for e in staying.events if e["type"] == "response.done"]
        said = reply["output"][0]["content"][0]["text"]
        await on_staying.wait_for(
            lambda m: m["type"] == "snapshot" and any(e["text"] == said for e in m["transcript"]),
            what="the reply made during the outage in the page's transcript",
        )
    finally:
        await rest.aclose()
        for page in pages:
            await page.close()
        await staying.close()
        a.stop()
        b.stop()
