"""Scale-out, end to end: two real Daphne processes sharing one real Redis (channels_redis)
and one real PostgreSQL, the simulator as the upstream.

- A caller on process A; a REST nudge sent to process B completes on A's session; an operator
  console connected to B lists A's session and follows it live.
- Redis restarted while sessions are live: requests submitted while it is down and after it
  is back are all delivered, none twice (the pings are lost; the table is the inbox).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import websockets

from tests.scaleout.conftest import cluster_env
from tests.support.realtime import user_text
from tests.support.servers import ROOT, DaphneProcess, start_side_by_side

pytestmark = pytest.mark.e2e

TERMINAL = {"completed", "cancelled", "incomplete", "failed"}


# ------------------------------------------------------------------------------ helpers


async def until(check: Callable[[], Awaitable[Any]], *, timeout: float, what: str, interval: float = 0.05):
    """Poll an async `check` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)


class Caller:
    """A Realtime client (plain `websockets`) on one process; a reader task keeps every event."""

    def __init__(self, socket, session_id: str) -> None:
        self.socket = socket
        self.session_id = session_id
        self.events: list[dict] = []
        self.reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def connect(cls, server: DaphneProcess, token: str) -> Caller:
        socket = await websockets.connect(
            f"{server.ws_base}/realtime?model=gpt-realtime",
            additional_headers={"Authorization": f"Bearer {token}"},
            open_timeout=10,
        )
        created = json.loads(await asyncio.wait_for(socket.recv(), 10))
        assert created["type"] == "session.created", created
        return cls(socket, created["session"]["id"])

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for frame in self.socket:
                self.events.append(json.loads(frame))

    def count(self, kind: str) -> int:
        return sum(e["type"] == kind for e in self.events)

    async def wait_for(self, kind: str, n: int = 1, timeout: float = 10.0) -> None:
        async def seen():
            if self.reader.done() and self.count(kind) < n:
                raise AssertionError(
                    f"caller {self.session_id} closed ({self.socket.close_code} {self.socket.close_reason!r}) "
                    f"after {[e['type'] for e in self.events][-10:]}"
                )
            return self.count(kind) >= n

        await until(seen, timeout=timeout, what=f"{n} {kind} on {self.session_id}")

    async def say(self, text: str) -> None:
        await self.socket.send(json.dumps({"type": "conversation.item.create", "item": user_text(text)}))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.socket.close(), 5)
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)


class Console:
    """The operator console's socket, as the browser opens it: logged in over HTTP (CSRF and
    all), then `/ws/console/` with the session cookie and the site's Origin."""

    def __init__(self, socket) -> None:
        self.socket = socket
        self.messages: list[dict] = []
        self.reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def connect(cls, server: DaphneProcess, username: str, password: str) -> Console:
        async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as http:
            page = await http.get("/accounts/login/")
            assert page.status_code == 200, page.text
            csrf = http.cookies["csrftoken"]
            login = await http.post(
                "/accounts/login/",
                data={"username": username, "password": password, "csrfmiddlewaretoken": csrf, "next": "/console/"},
                headers={"Referer": f"{server.http_url}/accounts/login/", "Origin": server.http_url},
            )
            assert login.status_code == 302 and login.headers["location"] == "/console/", login.text
            cookie = http.cookies["sessionid"]
        socket = await websockets.connect(
            f"ws://127.0.0.1:{server.port}/ws/console/",
            origin=server.http_url,
            additional_headers={"Cookie": f"sessionid={cookie}"},
            open_timeout=10,
        )
        return cls(socket)

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for frame in self.socket:
                self.messages.append(json.loads(frame))

    async def send(self, message: dict) -> None:
        await self.socket.send(json.dumps(message))

    async def wait_for(self, predicate: Callable[[dict], bool], *, what: str, timeout: float = 10.0) -> dict:
        async def found():
            return next((m for m in self.messages if predicate(m)), None)

        try:
            return await until(found, timeout=timeout, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the console got {[m['type'] for m in self.messages]}") from None

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.socket.close(), 5)
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)


async def get_live(rest: httpx.AsyncClient, session_id: str) -> dict:
    async def live():
        response = await rest.get(f"/sessions/{session_id}")
        return response.json() if response.status_code == 200 and response.json()["status"] == "live" else None

    return await until(live, timeout=10, what=f"session {session_id} live in the table")


def operator_sends(simulator, session_id: str) -> list[str]:
    """The `oc_request` of every operator `response.create` the upstream received, in order."""
    sent = []
    for _, event in simulator.sim.received(session_id):
        if event.get("type") == "response.create":
            metadata = (event.get("response") or {}).get("metadata") or {}
            if str(metadata.get("oc_request", "")).startswith("req_"):
                sent.append(metadata["oc_request"])
    return sent


def crashes(*servers: DaphneProcess) -> str:
    """Tracebacks in the processes' logs (an application error inside Daphne)."""
    found = []
    for server in servers:
        output = server.output()
        if "Traceback" in output:
            found.append(f"--- daphne on :{server.port} ({server.log_path})\n{output[-6000:]}")
    return "\n".join(found)


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture
def start_pair(scaleout_db, redis_server, simulator):
    """start_pair(**env) → two Daphne processes (A, B) on PostgreSQL and Redis."""
    started: list[DaphneProcess] = []

    def start(**extra_env: str) -> tuple[DaphneProcess, DaphneProcess]:
        env = cluster_env(scaleout_db, redis_server, simulator, OC_SEND_TIMEOUT="5", **extra_env)
        started.extend(start_side_by_side(env, env))
        return started[-2], started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture
async def rest_clients(scaleout_db):
    clients: list[httpx.AsyncClient] = []

    def make(server: DaphneProcess) -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            base_url=f"{server.http_url}/api/v1",
            headers={"Authorization": f"Bearer {scaleout_db.token}"},
            timeout=15,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


# ------------------------------------------------------------------------------ tests


async def test_nudge_on_b_completes_on_the_session_held_by_a_and_b_shows_it_live(
    start_pair, rest_clients, scaleout_db, simulator
):
    # The table pickup is pushed out of reach: only the ping, through Redis, can carry the
    # nudge from B to the actor in A.
    a, b = start_pair(OC_PICKUP_INTERVAL="600")
    rest_b = rest_clients(b)
    caller = await Caller.connect(a, scaleout_db.token)
    console = None
    try:
        session = await get_live(rest_b, caller.session_id)
        assert session["model"] == "gpt-realtime"

        # The console on B lists A's session (from the shared table)...
        console = await Console.connect(b, scaleout_db.username, scaleout_db.password)
        await console.send({"type": "watch.sessions"})
        listed = await console.wait_for(
            lambda m: m["type"] == "sessions" and any(s["id"] == caller.session_id for s in m["rows"]),
            what="A's session on B's dashboard",
        )
        [row] = [s for s in listed["rows"] if s["id"] == caller.session_id]
        assert row["connected_by"] == "token:scaleout"

        # ...and follows it live: the snapshot comes from A's actor, through Redis.
        await console.send({"type": "watch.session", "session_id": caller.session_id})
        snapshot = await console.wait_for(lambda m: m["type"] == "snapshot", what="the snapshot from A")
        assert snapshot["session_id"] == caller.session_id
        await console.wait_for(
            lambda m: m["type"] == "presence" and m["watchers"] == [scaleout_db.username],
            what="B's operator in A's presence list",
        )
        # A label a script sets through A reaches the page on B, through Redis.
        labelled = await rest_clients(a).patch(f"/sessions/{caller.session_id}", json={"label": "Order 42"})
        assert labelled.status_code == 200, labelled.text
        await console.wait_for(
            lambda m: m["type"] == "label" and m["label"] == "Order 42", what="A's label on B's console"
        )

        await caller.say("Where is my parcel?")
        started = time.monotonic()
        posted = await rest_b.post(
            f"/sessions/{caller.session_id}/responses",
            json={"instructions": "Offer a discount.", "metadata": {"ticket": "T-42"}},
        )
        assert posted.status_code == 202, posted.text
        request_id = posted.json()["id"]

        await caller.wait_for("response.done", timeout=10)
        took = time.monotonic() - started
        done = next(e for e in caller.events if e["type"] == "response.done")["response"]
        text = done["output"][0]["content"][0]["text"]
        assert "Offer a discount." in text and "Where is my parcel?" in text

        async def completed():
            response = await rest_b.get(f"/responses/{request_id}")
            return response.json() if response.json()["status"] in TERMINAL else None

        record = await until(completed, timeout=10, what=f"{request_id} to finish")
        assert record["status"] == "completed", record
        assert record["response_id"] == done["id"]
        assert record["session_id"] == caller.session_id
        assert operator_sends(simulator, caller.session_id) == [request_id]

        # B's console saw the request go through, live.
        await console.wait_for(
            lambda m: m["type"] == "request" and m["request_id"] == request_id and m["status"] == "completed",
            what="the nudge's completion on B's console",
        )
        assert took < 10
        assert not crashes(a, b), crashes(a, b)
    finally:
        if console is not None:
            await console.close()
        await caller.close()


async def test_redis_restart_loses_no_request_and_sends_none_twice(
    start_pair, rest_clients, scaleout_db, simulator, redis_server
):
    a, b = start_pair(OC_PICKUP_INTERVAL="1")
    rest = [rest_clients(a), rest_clients(b)]
    callers = [await Caller.connect(server, scaleout_db.token) for server in (a, a, b)]
    submitted: dict[str, list[str]] = {caller.session_id: [] for caller in callers}
    try:
        for caller in callers:
            await get_live(rest[1], caller.session_id)

        async def submit(phase: str, n: int) -> None:
            # Each session gets requests through both processes: one hop through Redis, one not.
            for i in range(n):
                for k, caller in enumerate(callers):
                    client = rest[(i + k) % 2]
                    posted = await client.post(
                        f"/sessions/{caller.session_id}/responses",
                        json={"instructions": f"{phase} {i}", "metadata": {"phase": phase}},
                    )
                    assert posted.status_code == 202, f"{phase} {i} on {client.base_url}: {posted.text}"
                    submitted[caller.session_id].append(posted.json()["id"])

        await submit("before", 1)
        redis_server.stop_process()
        try:
            assert not redis_server.ping()
            await submit("during", 3)
            # A caller who arrives while Redis is down gets a working session too.
            late = await Caller.connect(a, scaleout_db.token)
            callers.append(late)
            submitted[late.session_id] = []
            await get_live(rest[1], late.session_id)
            await asyncio.sleep(2.5)  # more than two pickup rounds with Redis down
            await submit("during-late", 2)
        finally:
            redis_server.start()
        await submit("after", 3)

        async def all_finished():
            records = {}
            for client_index, session_id in enumerate(submitted):
                listing = await rest[client_index % 2].get(f"/sessions/{session_id}/responses")
                assert listing.status_code == 200, listing.text
                for item in listing.json()["items"]:
                    records[item["id"]] = item
            waiting = [r for r in records.values() if r["origin"] == "api" and r["status"] not in TERMINAL]
            return records if not waiting else None

        records = await until(all_finished, timeout=40, what="every request to finish", interval=0.25)

        for caller in callers:
            ids = submitted[caller.session_id]
            statuses = {rid: records[rid]["status"] for rid in ids}
            assert set(statuses.values()) == {"completed"}, statuses
            sent = operator_sends(simulator, caller.session_id)
            twice = [rid for rid, times in Counter(sent).items() if times > 1]
            assert not twice, f"sent upstream more than once: {twice}"
            assert sorted(sent) == sorted(ids), "every request reached the upstream, and nothing else"
            await caller.wait_for("response.done", n=len(ids), timeout=10)
            assert caller.count("response.done") == len(ids)
            assert not caller.reader.done(), "the caller's connection survived the restart"

        # Each session's consumer joined its group again once Redis was back (a restarted Redis
        # has forgotten every group): a note, which waits for the actor's answer through Redis,
        # reaches sessions that began before and during the outage, from the other process.
        for caller in (callers[0], late):
            note = await rest[1].post(
                f"/sessions/{caller.session_id}/notes", json={"text": "Redis is back.", "role": "system"}
            )
            assert note.status_code == 201, note.text

        # Redis is back for new sessions too: a new caller on A, nudged through B, by ping.
        fresh = await Caller.connect(a, scaleout_db.token)
        callers.append(fresh)
        await get_live(rest[1], fresh.session_id)
        posted = await rest[1].post(f"/sessions/{fresh.session_id}/responses", json={})
        assert posted.status_code == 202, posted.text
        await fresh.wait_for("response.done", timeout=10)
        assert operator_sends(simulator, fresh.session_id) == [posted.json()["id"]]
        assert not crashes(a, b), crashes(a, b)
    finally:
        if not redis_server.ping():
            redis_server.start()
        for caller in callers:
            await caller.close()


async def test_notes_and_interrupts_through_either_process_answer_at_once(
    start_pair, rest_clients, scaleout_db
):
    """A note or an interrupt waits for the actor's answer, which comes back through Redis to
    the process that asked. Both processes hold a caller, so each has a consumer reading Redis
    while it waits (channels_redis reads one list per process at a time)."""
    a, b = start_pair(OC_PICKUP_INTERVAL="600")
    rest = {"A": rest_clients(a), "B": rest_clients(b)}
    callers = {"A": await Caller.connect(a, scaleout_db.token), "B": await Caller.connect(b, scaleout_db.token)}
    try:
        for caller in callers.values():
            await get_live(rest["B"], caller.session_id)
        timings = {}
        for via, client in rest.items():
            for held_by, caller in callers.items():
                for _ in range(3):
                    started = time.monotonic()
                    note = await client.post(
                        f"/sessions/{caller.session_id}/notes", json={"text": f"via {via}", "role": "system"}
                    )
                    took = time.monotonic() - started
                    assert note.status_code == 201, f"note via {via} to {held_by}'s session: {note.text}"
                    timings[f"note via {via} to {held_by}"] = max(took, timings.get(f"note via {via} to {held_by}", 0))
                started = time.monotonic()
                interrupt = await client.post(f"/sessions/{caller.session_id}/interrupt")
                assert interrupt.status_code == 202, interrupt.text
                timings[f"interrupt via {via} to {held_by}"] = time.monotonic() - started
        slow = {what: round(took, 3) for what, took in timings.items() if took > 1.0}
        assert not slow, f"answers took over 1 s (normally a few ms): {slow}"
        assert not crashes(a, b), crashes(a, b)
    finally:
        for caller in callers.values():
            await caller.close()


async def test_two_hundred_callers_leaving_at_once_leave_every_group(start_pair, scaleout_db, redis_server):
    """Every consumer leaves its session's group in Redis when its caller goes, all at once
    included: with redis-py's default pool of 100 connections, leaves beyond it failed with
    MaxConnectionsError and memberships stayed behind (for the group expiry, 24 h)."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_server.url)

    async def groups() -> set[bytes]:
        return {key async for key in client.scan_iter(match="asgi:group:session.*")}

    async def members(keys: set[bytes]) -> int:
        return sum([await client.zcard(key) for key in keys])

    a, _ = start_pair()
    callers: list[Caller] = []
    try:
        earlier = await groups()  # other tests' sessions, on this test run's Redis
        for _ in range(10):
            callers += await asyncio.gather(*[Caller.connect(a, scaleout_db.token) for _ in range(20)])
        ours = await groups() - earlier
        assert len(ours) == 200 and await members(ours) == 200
        await asyncio.gather(*[caller.close() for caller in callers])
        callers = []

        async def none_left() -> bool:
            return await members(ours) == 0

        await until(none_left, timeout=15, what="every session group left")
        log = a.output()
        assert "MaxConnectionsError" not in log, log[-3000:]
        assert not crashes(a), crashes(a)
    finally:
        await asyncio.gather(*[caller.close() for caller in callers])
        await client.aclose()


async def test_submits_racing_through_both_processes_stop_exactly_at_the_queue_limit(
    start_pair, rest_clients, scaleout_db, simulator
):
    # The session's row lock (SELECT … FOR UPDATE on PostgreSQL) serialises the submits of
    # both processes, so the queue count each one makes sees every earlier insert.
    a, b = start_pair(OC_QUEUE_LIMIT="32")
    rest_a, rest_b = rest_clients(a), rest_clients(b)
    caller = await Caller.connect(a, scaleout_db.token)
    try:
        await get_live(rest_b, caller.session_id)
        with simulator.configured(delta_interval=1.0):  # the caller's response outlasts the burst
            await caller.say("Hold on.")
            await caller.socket.send(json.dumps({"type": "response.create"}))
            await caller.wait_for("response.created")
            url = f"/sessions/{caller.session_id}/responses"
            answers = await asyncio.gather(
                *(
                    (rest_a if n % 2 else rest_b).post(url, json={"metadata": {"n": str(n), "ü": "ß"}})
                    for n in range(80)
                )
            )
            statuses = Counter(answer.status_code for answer in answers)
            assert statuses == {202: 32, 429: 48}, statuses
            assert {answer.json()["error"]["code"] for answer in answers if answer.status_code == 429} == {
                "queue_full"
            }
            listed = (await rest_a.get(url)).json()["items"]
            api_rows = [row for row in listed if row["origin"] == "api"]
            assert len(api_rows) == 32 and all(row["status"] == "queued" for row in api_rows)
            accepted = {answer.json()["id"]: answer.json()["metadata"] for answer in answers if answer.status_code == 202}
            assert {row["id"]: row["metadata"] for row in api_rows} == accepted, "metadata stored as sent"
            assert all(meta["ü"] == "ß" for meta in accepted.values())
        assert not crashes(a, b), crashes(a, b)
    finally:
        await caller.close()


async def test_an_idle_process_steers_at_once_after_redis_restarted(
    start_pair, rest_clients, scaleout_db, redis_server
):
    """A process that did nothing while Redis restarted still holds connections to the Redis
    that is gone; the first command on one of them must not fail an operator's note (503)."""
    a, b = start_pair(OC_PICKUP_INTERVAL="600")
    rest_b = rest_clients(b)
    caller = await Caller.connect(a, scaleout_db.token)
    try:
        await get_live(rest_b, caller.session_id)
        url = f"/sessions/{caller.session_id}/notes"
        before = await rest_b.post(url, json={"text": "Before the restart.", "role": "system"})
        assert before.status_code == 201, before.text
        redis_server.restart(down_for=1.0)
        await asyncio.sleep(3)  # B does nothing meanwhile; A's consumer is back in its group
        answers = [
            await rest_b.post(url, json={"text": f"After the restart, {n}.", "role": "system"})
            for n in range(3)
        ]
        assert [answer.status_code for answer in answers] == [201, 201, 201], [
            answer.text for answer in answers
        ]
    finally:
        if not redis_server.ping():
            redis_server.start()
        await caller.close()


def test_a_channel_layer_read_waits_longer_than_the_pop_it_waits_for(redis_server):
    """A consumer waits for its messages in a blocking pop that Redis answers after 5 s when
    nothing came; the connection's read must wait longer than that. With redis-py's default
    read timeout (5 s too) the two raced: a wait could time out as Redis answered, the
    consumer took Redis for unreachable (and a message popped at that moment was lost).
    Checked on the layer and the connection pool the settings make (a 16 s idle run could
    miss the race by luck)."""
    code = (
        "import django; django.setup()\n"
        "from channels.layers import get_channel_layer\n"
        "layer = get_channel_layer()\n"
        "pool = layer.create_pool(0)\n"
        "print(layer.brpop_timeout, pool.connection_kwargs['socket_timeout'])\n"
    )
    env = {**os.environ, "REDIS_URL": redis_server.url, "DJANGO_SETTINGS_MODULE": "operator_console.settings"}
    shown = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    pop, read = (float(figure) for figure in shown.stdout.split())
    assert read > pop, f"a read times out after {read} s, the pop it waits for after {pop} s"
