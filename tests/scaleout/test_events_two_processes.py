"""Event streams across processes: two real Daphne processes on one real PostgreSQL and one
real Redis. An event produced in one process reaches a follower connected to the other, and
both processes' streams show one log, in one order."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.support.callers import SocketCaller, until_live
from tests.support.servers import DaphneProcess
from tests.support.sse import Follower

pytestmark = pytest.mark.e2e


def client(server: DaphneProcess, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"{server.http_url}/api/v1",
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx.Timeout(15, read=60),
    )


def completed(request_id: str):
    def check(events) -> bool:
        return any(
            e.data["type"] == "request.status" and e.data["request"]["id"] == request_id
            and e.data["request"]["status"] == "completed" for e in events
        )

    return check


async def test_an_event_produced_in_one_process_reaches_a_follower_of_the_other(pair, scaleout_db):
    a, b = pair
    token = scaleout_db.token
    async with client(a, token) as rest_a, client(b, token) as rest_b:
        caller_a = await SocketCaller.connect(a.ws_base, token)
        caller_b = await SocketCaller.connect(b.ws_base, token)
        followers: list[Follower] = []
        try:
            await until_live(rest_b, caller_a.session_id)
            await until_live(rest_a, caller_b.session_id)
            on_b = await Follower(rest_b, f"/sessions/{caller_a.session_id}/events").start()
            all_on_a = await Follower(rest_a, "/events").start()
            all_on_b = await Follower(rest_b, "/events").start()
            followers += [on_b, all_on_a, all_on_b]

            # A's session, nudged through B: its events are written by A's history writer
            # and by B's submit, and read by B's follower.
            await caller_a.say("Is my order late?")
            posted = await rest_b.post(f"/sessions/{caller_a.session_id}/responses", json={"instructions": "Check."})
            assert posted.status_code == 202, posted.text
            nudge = posted.json()["id"]
            # Meanwhile B's own session, nudged through A: both processes write at once.
            other = await rest_a.post(f"/sessions/{caller_b.session_id}/responses", json={"instructions": "Hi."})
            assert other.status_code == 202, other.text

            await on_b.until(completed(nudge), timeout=20, what="A's nudge on B's follower")
            statuses = [e.data["request"]["status"] for e in on_b.events
                        if e.data["type"] == "request.status" and e.data["request"]["id"] == nudge]
            assert statuses == ["queued", "sent", "in_progress", "completed"]
            words = [e.data["entry"]["text"] for e in on_b.events if e.data["type"] == "transcript.entry"]
            assert any("Is my order late?" in w for w in words) and any("Check." in w for w in words)

            # One log in one order, whichever process serves the stream.
            for follower in (all_on_a, all_on_b):
                await follower.until(completed(other.json()["id"]), timeout=20, what="B's nudge")
                await follower.until(completed(nudge), timeout=20, what="A's nudge")
            await asyncio.sleep(0.5)
            seen_a = [(e.id, e.data) for e in all_on_a.events]
            seen_b = [(e.id, e.data) for e in all_on_b.events]
            common = min(len(seen_a), len(seen_b))
            assert seen_a[:common] == seen_b[:common] and common >= 10
            assert {e.data["session_id"] for e in all_on_a.events} >= {caller_a.session_id, caller_b.session_id}

            # A script that lost B resumes on A, after the last id B gave it: exactly the rest.
            cut = on_b.events[2].id
            rest_of_it = [(e.id, e.data) for e in on_b.events if int(e.id) > int(cut)]
            resumed = await Follower(rest_a, f"/sessions/{caller_a.session_id}/events",
                                     headers={"Last-Event-ID": cut}).start()
            followers.append(resumed)
            await resumed.until(lambda events: len(events) >= len(rest_of_it), what="the rest, on A")
            assert [(e.id, e.data) for e in resumed.events] == rest_of_it
            for server in pair:
                assert "Traceback" not in server.output(), server.output()[-4000:]
        finally:
            for follower in followers:
                await follower.close()
            await caller_a.close()
            await caller_b.close()
