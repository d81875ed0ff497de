"""PostgreSQL briefly unavailable (restarted, as in a failover: every connection cut) under a
real Daphne with live calls. The relay keeps relaying; the record loses nothing: every
transition the history writer was given during the outage is written once the database is
back, so each request ends with the status its response really had. The REST hook says what
is wrong meanwhile: `503` `database_unavailable`, in its error shape, to be tried again."""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import websockets
from django.db.utils import ConnectionHandler
from psycopg_pool import PoolTimeout

from operator_console.env import database_from_url
from tests.conftest import UPSTREAM_KEY
from tests.scaleout.conftest import cluster_env
from tests.support.callers import SocketCaller, until_live
from tests.support.servers import DaphneProcess, start_side_by_side

pytestmark = pytest.mark.e2e

TERMINAL = {"completed", "cancelled", "incomplete", "failed"}


@pytest.fixture
def server(scaleout_db, simulator):
    process = DaphneProcess({
        "DATABASE_URL": scaleout_db.url,
        "OC_UPSTREAM_URL": simulator.url,
        "OPENAI_API_KEY": UPSTREAM_KEY,
    })
    yield process
    process.stop()


@pytest.fixture
async def call(server, scaleout_db):
    """A live call on `server`, and a REST client for it."""
    caller = await SocketCaller.connect(server.ws_base, scaleout_db.token)
    headers = {"Authorization": f"Bearer {scaleout_db.token}"}
    rest = httpx.AsyncClient(base_url=f"{server.http_url}/api/v1", headers=headers, timeout=30)
    try:
        await until_live(rest, caller.session_id)
        yield caller, rest
    finally:
        await rest.aclose()
        await caller.close()


async def test_responses_during_a_database_restart_are_all_recorded_as_they_ended(
    call, server, postgres_server
):
    caller, rest = call
    await caller.say("Talk to me.")

    async def ask(n: int) -> None:  # a response asked for every 0.2 s: transitions flow
        for _ in range(n):
            await caller.socket.send(json.dumps({"type": "response.create"}))
            await asyncio.sleep(0.2)

    asking = asyncio.create_task(ask(30))
    await asyncio.sleep(1.5)
    await asyncio.to_thread(postgres_server.restart, 2.0)
    await asking
    await caller.wait_for("response.done", n=30, timeout=30)
    assert not caller.reader.done(), "the call went on through the outage"

    async def recorded():
        answer = await rest.get(f"/sessions/{caller.session_id}/responses")
        if answer.status_code != 200:
            return None
        items = answer.json()["items"]
        done = len(items) == 30 and all(item["status"] in TERMINAL for item in items)
        return items if done else None

    items = None
    async with asyncio.timeout(20):
        while items is None:
            items = await recorded()
            await asyncio.sleep(0.25)
    done = {e["response"]["id"] for e in caller.events if e["type"] == "response.done"}
    assert {(item["origin"], item["status"]) for item in items} == {("caller", "completed")}
    assert {item["response_id"] for item in items} == done
    assert "history operation failed" not in server.output()


async def test_the_rest_hook_answers_503_while_the_database_is_away(call, server, postgres_server):
    """So do the /v1/ endpoints, in the service's shape, and the console's pages, on a page of
    their own: an outage is not a bug to report, and it passes."""
    caller, rest = call
    site = httpx.AsyncClient(
        base_url=server.http_url, timeout=30, cookies={"sessionid": "an-operator-s-session"}
    )
    bearer = {"Authorization": rest.headers["Authorization"]}
    postgres_server.stop_process()
    try:
        api, v1, page = await asyncio.gather(
            asyncio.gather(
                rest.get(f"/sessions/{caller.session_id}"),
                rest.post(f"/sessions/{caller.session_id}/responses", json={}),
                rest.get("/responses"),
            ),
            asyncio.gather(
                site.post("/v1/realtime/client_secrets", json={}, headers=bearer),
                site.post("/v1/realtime/calls", content="v=0\r\n", headers={
                    **bearer, "Content-Type": "application/sdp"
                }),
            ),
            site.get("/console/"),
        )
    finally:
        postgres_server.start_process()
        await site.aclose()
    for answer in api:
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "database_unavailable", answer.text
        assert "database" in answer.json()["error"]["message"]
        assert answer.headers["Retry-After"]
    for answer in v1:
        assert answer.status_code == 503, answer.text
        error = answer.json()["error"]
        assert (error["type"], error["code"]) == ("server_error", "database_unavailable"), error
        assert answer.headers["Retry-After"]
    assert page.status_code == 503, page.text
    assert "cannot reach its database" in page.text and page.headers["Retry-After"]
    assert "Traceback" not in server.output()
    await until_live(rest, caller.session_id, timeout=20)  # all is well again once it is back
    posted = await rest.post(f"/sessions/{caller.session_id}/responses", json={})
    assert posted.status_code == 202, posted.text
    # Nor does any of the process's own rounds (housekeeping, webhooks) that met the outage:
    # each that waited for the pool then is done by now, as the requests before these are.
    assert "Traceback" not in server.output()


def test_the_pool_connects_at_once_when_the_database_is_back(
    postgres_server, monkeypatch, django_db_blocker
):
    """The pool with the app's options (Django's backend makes it from DATABASE_URL), through
    an outage: its connections broke, and requests waited for new ones while its attempts
    backed off. Once the database is back, a request that waited since the outage and a new
    one are both answered at once, not after the pool's next attempt (at psycopg_pool's
    defaults, 7 s and 15 s after the first)."""
    monkeypatch.setenv("OC_POOL_TEST_URL", postgres_server.url)
    databases = {"default": {}, "outage": database_from_url("OC_POOL_TEST_URL", "")}
    database = ConnectionHandler(databases)["outage"]  # a default, unused: Django wants one
    with django_db_blocker.unblock(), ThreadPoolExecutor(1) as thread:
        try:
            with database.cursor() as cursor:  # the pool opens with its connections
                cursor.execute("SELECT 1")
            database.close()
            postgres_server.stop_process()
            try:
                database.pool.check()  # the connections it held are found broken: attempts begin
                with pytest.raises(PoolTimeout):
                    database.pool.getconn(timeout=0.5)
                waiting = thread.submit(database.pool.getconn, timeout=20)
                time.sleep(8)  # past the attempt at 7 s
            finally:
                postgres_server.start_process()
            back = time.monotonic()
            database.pool.putconn(waiting.result(timeout=20))  # a request waiting since then
            with database.cursor() as cursor:  # and one that comes now
                cursor.execute("SELECT 1")
            waited = time.monotonic() - back
            assert waited < 2, f"requests after the outage waited {waited:.1f} s more"
        finally:
            database.close()
            database.close_pool()


async def test_a_database_outage_longer_than_the_staleness_loses_no_live_session(
    scaleout_db, redis_server, simulator, postgres_server
):
    """While the database is away no process can write its heartbeats, so none may judge
    another's by them when it is back: the sessions live on, steerable from either process."""
    env = cluster_env(
        scaleout_db, redis_server, simulator, OC_HEARTBEAT_INTERVAL="0.5", OC_SESSION_STALE_AFTER="2"
    )
    a, b = start_side_by_side(env, env)
    caller = await SocketCaller.connect(a.ws_base, scaleout_db.token)
    headers = {"Authorization": f"Bearer {scaleout_db.token}"}
    rest = httpx.AsyncClient(base_url=f"{b.http_url}/api/v1", headers=headers, timeout=30)
    try:
        await until_live(rest, caller.session_id)
        await asyncio.to_thread(postgres_server.restart, 5.0)  # over twice the staleness
        await until_live(rest, caller.session_id, timeout=20)
        await asyncio.sleep(3)  # every process has swept since, more than once
        session = (await rest.get(f"/sessions/{caller.session_id}")).json()
        assert (session["status"], session["end_reason"]) == ("live", None), session
        posted = await rest.post(f"/sessions/{caller.session_id}/responses", json={})
        assert posted.status_code == 202, posted.text
        await caller.wait_for("response.done", timeout=10)
    finally:
        await rest.aclose()
        await caller.close()
        a.stop()
        b.stop()


async def test_a_caller_arriving_while_the_database_is_away_is_told_why(
    server, scaleout_db, postgres_server
):
    """Its token cannot be checked: the handshake is refused with 503 and the reason in JSON,
    not a bare 500, and a caller arriving once the database is back gets its session."""
    url = f"{server.ws_base}/realtime?model=gpt-realtime"
    headers = {"Authorization": f"Bearer {scaleout_db.token}"}
    postgres_server.stop_process()
    try:
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(url, additional_headers=headers, open_timeout=30)
    finally:
        postgres_server.start_process()
    answer = refused.value.response
    assert answer.status_code == 503
    error = json.loads(answer.body)["error"]
    assert (error["type"], error["code"]) == ("server_error", "database_unavailable"), error
    assert "Exception inside application" not in server.output()
    async with asyncio.timeout(20):
        while True:
            try:
                caller = await SocketCaller.connect(server.ws_base, scaleout_db.token)
                break
            except websockets.InvalidStatus:
                await asyncio.sleep(0.25)  # the pool is reconnecting
    await caller.close()
