"""The event streams' limits, end to end on a real Daphne: a follower that stops reading is
dropped without slowing the session or the other followers; bad input is answered clearly."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from asgiref.sync import sync_to_async

from apps.events.models import Event
from apps.events.retention import prune_events
from tests.support.callers import SocketCaller, until_live
from tests.support.sse import Follower

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

QUEUE = 50  # events a follower may have waiting


@pytest.fixture
def small_queue_daphne(daphne_with):
    return daphne_with(OC_EVENTS_FOLLOWER_QUEUE=str(QUEUE))


def rest_client(server, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"{server.http_url}/api/v1",
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx.Timeout(10, read=30),
    )


def stalled_follower(port: int, token: str) -> socket.socket:
    """A client that asks for every event, reads the answer's first bytes, then stops
    reading (a small receive buffer, so the server's side fills soon)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        f"GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    sock.settimeout(10)
    head = sock.recv(1024)
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def read_to_the_end(sock: socket.socket, timeout: float) -> tuple[int, str]:
    """(bytes read, how it ended) once the server has closed or reset the connection."""
    sock.settimeout(timeout)
    total = 0
    try:
        while chunk := sock.recv(65536):
            total += len(chunk)
        return total, "closed"
    except ConnectionResetError:
        return total, "reset"
    except TimeoutError:
        return total, "still open"


async def test_a_follower_that_stops_reading_is_dropped_and_slows_nobody(small_queue_daphne, api_token):
    server = small_queue_daphne
    async with rest_client(server, api_token) as rest:
        caller = await SocketCaller.connect(server.ws_base, api_token)
        stalled = None
        reader = None
        try:
            await until_live(rest, caller.session_id)
            reader = await Follower(rest, f"/sessions/{caller.session_id}/events").start()
            stalled = await asyncio.to_thread(stalled_follower, server.port, api_token)

            # Long caller turns, each a transcript entry of ~16 KiB, in bursts of 20 that a
            # reading follower keeps up with (its queue holds 50).
            turns, burst = 400, 20
            text = "lorem ipsum " * 1400
            started = time.monotonic()
            for first in range(0, turns, burst):
                for i in range(first, first + burst):
                    await caller.say(f"{i}: {text}")
                await reader.until(
                    lambda events, n=first + burst: sum(e.data["type"] == "transcript.entry" for e in events) >= n,
                    timeout=20, what=f"turn {first + burst} on the reading follower",
                )
            flood = time.monotonic() - started

            # The session still answers at once: a nudge goes through while the stalled
            # follower holds nothing up.
            nudged = time.monotonic()
            posted = await rest.post(f"/sessions/{caller.session_id}/responses", json={"instructions": "Still here."})
            assert posted.status_code == 202
            request_id = posted.json()["id"]
            await reader.until(
                lambda events: any(
                    e.data["type"] == "request.status" and e.data["request"]["id"] == request_id
                    and e.data["request"]["status"] == "completed" for e in events
                ),
                what="the nudge to complete",
            )
            assert time.monotonic() - nudged < 5

            total, ending = await asyncio.to_thread(read_to_the_end, stalled, 10)
            assert ending in ("closed", "reset"), f"the stalled follower was not dropped ({total} bytes read)"
            assert total < turns * len(text), "it was dropped long before it got the flood"
            assert "an event follower fell 50 events behind and was dropped" in server.output()
            assert not reader.ended, "the reading follower goes on"
            assert flood < 60
        finally:
            if stalled is not None:
                stalled.close()
            if reader is not None:
                await reader.close()
            await caller.close()


def _commit_at_once(count: int) -> None:
    """`count` events in one transaction, as another process's busy history writer commits
    them: the hub reads them in one page and hands them out together."""
    key = uuid.uuid4()
    Event.objects.bulk_create(
        Event(type="request.status", session_key=key, payload='{"type":"request.status"}')
        for _ in range(count)
    )


async def test_a_follower_that_reads_takes_a_burst_larger_than_its_queue(
    small_queue_daphne, api_token
):
    """The queue bounds what waits for a client that does not read; a burst handed out in one
    go is not that, and a client reading at full speed is not dropped for it."""
    server = small_queue_daphne
    async with rest_client(server, api_token) as rest:
        reader = await Follower(rest, "/events").start()
        try:
            await reader.until(lambda _: "following" in reader.comments, what="the stream's start")
            await sync_to_async(_commit_at_once)(3 * QUEUE)
            await reader.until(
                lambda events: len(events) >= 3 * QUEUE, what="the whole burst on the reader"
            )
            ids = [int(e.id) for e in reader.events]
            assert ids == list(range(ids[0], ids[0] + 3 * QUEUE)), "each once, in order"
            assert not reader.ended, "the reading follower goes on"
            assert "was dropped" not in server.output()
        finally:
            await reader.close()


async def test_bad_input_is_answered_clearly(daphne, make_token, api_token):
    async with rest_client(daphne, api_token) as rest:
        anonymous = await rest.get("/events", headers={"Authorization": ""})
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["code"] == "unauthenticated"

        writer_only = await sync_to_async(make_token)(scopes=["responses:write"], name="writer")
        refused = await rest.get("/events", headers={"Authorization": f"Bearer {writer_only}"})
        assert refused.status_code == 403
        assert refused.json()["error"] == {"code": "missing_scope", "message": "This token lacks the scope 'sessions:read'."}

        unknown = await rest.get("/sessions/sess_nope/events")
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "session_not_found"
        assert "sess_nope" in unknown.json()["error"]["message"]

        # A parameter the streams do not take looks like a filter and would stream every
        # event; one given twice leaves the resume point unclear: both are refused.
        queries = [
            ("/events", [("session_id", "sess_x")], "session_id"),
            ("/events", [("type", "request.status")], "type"),
            ("/events", [("last_event_id", "1"), ("last_event_id", "2")], "last_event_id"),
            ("/sessions/sess_nope/events", [("types", "session.*")], "types"),
        ]
        for path, query, field in queries:
            # As a stream: one wrongly taken would never end.
            async with rest.stream("GET", path, params=query) as answer:
                assert answer.status_code == 422, query
                await answer.aread()
            error = answer.json()["error"]
            assert error["code"] == "invalid_fields" and field in error["fields"], error

        cases = [("abc", None), (None, "-1"), ("12x", None), ("9" * 19, None)]
        # Digits that str.isdigit() takes but are not ASCII: superscript two (int() refuses it),
        # Arabic-Indic one (int() reads it as 1), fullwidth one; as a query and as a header
        # (Latin-1 on the wire, as HTTP carries it).
        cases += [(None, "²"), (None, "١"), (None, "１"), ("²", None)]
        for header, query in cases:
            answer = await rest.get(
                "/events",
                headers={"Last-Event-ID": header.encode("latin-1")} if header else {},
                params={"last_event_id": query} if query else {},
            )
            assert answer.status_code == 400, (header, query, answer.text)
            error = answer.json()["error"]
            assert error["code"] == "invalid_last_event_id"
            assert (header or query) in error["message"]


async def a_session_that_ended(server, rest, token: str) -> str:
    """The id of a session that went live and ended (its caller hung up)."""
    caller = await SocketCaller.connect(server.ws_base, token)
    try:
        await until_live(rest, caller.session_id)
    finally:
        await caller.close()
    return caller.session_id


async def test_an_id_older_than_the_window_is_named_in_a_gap_event(daphne, api_token):
    async with rest_client(daphne, api_token) as rest:
        await a_session_that_ended(daphne, rest, api_token)
        # Everything so far is pruned (as if an hour had passed); then a new event comes.
        await asyncio.sleep(0.5)
        await sync_to_async(prune_events)(now=datetime.now(UTC) + timedelta(hours=1))
        follower = await Follower(rest, "/events", headers={"Last-Event-ID": "1"}).start()
        try:
            await follower.until(lambda events: len(events) >= 1, what="the gap notice")
            gap = follower.events[0]
            assert gap.id is None and gap.data["type"] == "stream.gap"
            assert gap.data["last_event_id"] == 1 and "older than" in gap.data["message"]
        finally:
            await follower.close()


async def test_an_ended_session_answers_204_so_event_source_stops(daphne, api_token):
    async with rest_client(daphne, api_token) as rest:
        caller = await SocketCaller.connect(daphne.ws_base, api_token)
        follower = None
        try:
            await until_live(rest, caller.session_id)
            follower = await Follower(rest, f"/sessions/{caller.session_id}/events").start()
        finally:
            await caller.close()
        await follower.until(lambda events: any(e.data["type"] == "session.ended" for e in events), what="the end")
        await follower.wait_ended()
        ended = follower.events[-1]
        assert ended.data["session"]["status"] == "ended" and ended.data["session"]["end_reason"] == "caller_closed"
        again = await rest.get(f"/sessions/{caller.session_id}/events", headers={"Last-Event-ID": ended.id})
        assert again.status_code == 204
        missed = await rest.get(f"/sessions/{caller.session_id}/events", headers={"Last-Event-ID": str(int(ended.id) - 1)})
        assert missed.status_code == 200 and "session.ended" in missed.text, "an unseen end is still sent"


async def test_an_ended_session_tells_a_gap_once_then_answers_204(daphne, api_token):
    """An ended session's events, its end too, pruned while a script was away: its stream
    tells the gap and ends; resumed from the id the gap came with, it is a 204, no loop."""
    async with rest_client(daphne, api_token) as rest:
        url = f"/sessions/{await a_session_that_ended(daphne, rest, api_token)}/events"
        async with asyncio.timeout(10):
            while True:
                if (await rest.get(url)).status_code == 204:  # its end is stored
                    break
                await asyncio.sleep(0.05)
        await sync_to_async(prune_events)(now=datetime.now(UTC) + timedelta(hours=1))

        follower = await Follower(rest, url, headers={"Last-Event-ID": "1"}).start()
        await follower.wait_ended()
        assert (follower.status, follower.error) == (200, None)
        [gap] = follower.events
        assert gap.data["type"] == "stream.gap" and gap.data["last_event_id"] == 1, gap
        assert "has ended" in gap.data["message"] and gap.id is not None
        again = await rest.get(url, headers={"Last-Event-ID": gap.id})
        assert again.status_code == 204, "the reconnect after the gap is told to stop"
