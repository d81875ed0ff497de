"""The relay under real Daphne, driven by the official `openai` SDK and the Agents SDK."""

from __future__ import annotations

import asyncio

import pytest
from openai import AsyncOpenAI

from apps.sessions.models import LiveSession, ResponseRequest
from tests.support.realtime import collect_until, count, eventually, user_text

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
done = count("response.done")


def _types(events) -> list[str]:
    return [e.type for e in events]


async def _session(conn):
    first = await conn.recv()
    assert first.type == "session.created"
    return first.session.id


async def test_back_to_back_response_creates_complete_in_order_without_errors(
    daphne, simulator, api_token
):
    client = AsyncOpenAI(api_key=api_token, websocket_base_url=daphne.ws_base)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        session_id = await _session(conn)
        await conn.conversation.item.create(item=user_text("hello"))
        await conn.response.create(event_id="evt_first")
        await conn.response.create(event_id="evt_second")
        events = await collect_until(conn, done(2))

    assert "error" not in _types(events), [e for e in events if e.type == "error"]
    created = [e.response.id for e in events if e.type == "response.created"]
    finished = [e.response.id for e in events if e.type == "response.done"]
    assert len(created) == 2 and created == finished, "responses complete one after the other"
    assert all(e.response.status == "completed" for e in events if e.type == "response.done")

    # Upstream's view: the second response.create arrived only after the first response.done.
    received = simulator.sim.received(session_id)
    sent = simulator.sim.sent(session_id)
    creates = [(t, e) for t, e in received if e["type"] == "response.create"]
    assert [e["event_id"] for _, e in creates] == ["evt_first", "evt_second"]
    first_done_at = next(t for t, e in sent if e["type"] == "response.done")
    assert creates[1][0] >= first_done_at


async def test_caller_metadata_and_event_id_survive_and_oc_request_is_hidden(
    daphne, simulator, api_token
):
    client = AsyncOpenAI(api_key=api_token, websocket_base_url=daphne.ws_base)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        session_id = await _session(conn)
        await conn.conversation.item.create(item=user_text("hi"))
        await conn.response.create(
            event_id="evt_mine", response={"metadata": {"ticket": "T-42", "lang": "en"}}
        )
        events = await collect_until(conn, done(1))
        # And one without metadata: the caller sees null, as the upstream would show it.
        await conn.response.create(event_id="evt_plain")
        events += await collect_until(conn, done(1))

    upstream_create = next(
        e for _, e in simulator.sim.received(session_id) if e.get("event_id") == "evt_mine"
    )
    assert upstream_create["response"]["metadata"]["ticket"] == "T-42"
    assert "oc_request" in upstream_create["response"]["metadata"], "the relay tags its requests"

    lifecycle = [e for e in events if e.type in ("response.created", "response.done")]
    assert len(lifecycle) == 4
    assert lifecycle[0].response.metadata == {"ticket": "T-42", "lang": "en"}
    assert lifecycle[1].response.metadata == {"ticket": "T-42", "lang": "en"}
    assert lifecycle[2].response.metadata is None and lifecycle[3].response.metadata is None
    assert all("oc_request" not in e.model_dump_json() for e in events)


async def test_request_lifecycle_is_recorded_with_output_usage_and_ordered_timestamps(
    daphne, simulator, api_token
):
    client = AsyncOpenAI(api_key=api_token, websocket_base_url=daphne.ws_base)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        session_id = await _session(conn)
        await conn.conversation.item.create(item=user_text("first question"))
        await conn.response.create(event_id="evt_1")
        await conn.response.create(event_id="evt_2", response={"instructions": "Be brief."})
        await collect_until(conn, done(2))

    def rows():
        found = list(
            ResponseRequest.objects.filter(session__upstream_id=session_id).order_by("created_at")
        )
        return found if len(found) == 2 and all(r.is_terminal for r in found) else None

    first, second = await eventually(rows)
    assert second.status == "completed" and second.origin == "caller"
    assert "Be brief." in second.output_text, "output text is recorded from response.done"
    assert second.usage and second.usage["total_tokens"] > 0
    assert second.created_at <= second.sent_at <= second.started_at <= second.finished_at
    # The second request waited behind the first: sent only after the first finished.
    assert second.sent_at >= first.finished_at
    session = await LiveSession.objects.aget(upstream_id=session_id)
    assert session.model == "gpt-realtime" and session.connected_by == "token:test"


async def test_upstream_failure_reaches_the_caller_as_close_code_and_reason_through_daphne(
    daphne, simulator, api_token
):
    import json

    import websockets

    async with websockets.connect(
        f"{daphne.ws_base}/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {api_token}"},
    ) as ws:
        created = json.loads(await ws.recv())
        await simulator.acall(simulator.sim.close_session(created["session"]["id"], 1011, "simulated outage"))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd.code == 1011
    assert "simulated outage" in closed.value.rcvd.reason


async def test_upstream_messages_over_one_mebibyte_reach_the_caller_whole(
    daphne, simulator, api_token
):
    # Every caller frame stays under 1 MiB (Daphne's default limit, which the relay raises); the
    # upstream's reply, which echoes both texts, is over 1.4 MiB.
    persona, question = "p" * 600_000, "q" * 900_000
    client = AsyncOpenAI(api_key=api_token, websocket_base_url=daphne.ws_base)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await _session(conn)
        await conn.session.update(session={"type": "realtime", "instructions": persona})
        await conn.conversation.item.create(item=user_text(question))
        await conn.response.create()
        events = await collect_until(conn, done(1), timeout=30)
    text = events[-1].response.output[0].content[0].text
    assert len(text.encode()) > 1_400_000
    assert persona in text and question in text, "the whole response arrived unchanged"
