"""Rotation end to end: the `openai` SDK as the caller on a real Daphne, the simulator upstream
with a short cap (`max_session_seconds`), and the relay moving the session to fresh upstream
sessions before each cap (CONTRACT section 9)."""

from __future__ import annotations

import asyncio
import base64
import re
import time

import httpx
import pytest
from openai import AsyncOpenAI
from websockets.exceptions import ConnectionClosed

from apps.simulator.speech import tone_speech
from tests.support.realtime import user_text

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

LENGTH = re.compile(r"[(]conversation: ([0-9]+) items[)]")
PCM = {"type": "audio/pcm", "rate": 24000}
VOICE_SESSION = {
    "type": "realtime",
    "output_modalities": ["audio"],
    "instructions": "Keep every turn.",
    "audio": {
        "input": {
            "format": PCM,
            "transcription": {"model": "gpt-4o-mini-transcribe"},
            "turn_detection": {
                "type": "server_vad",
                "threshold": 0.5,
                "prefix_padding_ms": 200,
                "silence_duration_ms": 300,
                "create_response": True,
            },
        },
        "output": {"format": PCM, "voice": "marin"},
    },
}


@pytest.fixture
def capped(simulator):
    """The simulator's sessions expire at 10 s; spoken replies are quick."""
    with simulator.configured(max_session_seconds=10.0, speech_engine="tone", audio_pace=8.0):
        yield simulator


async def speak(conn, text: str) -> None:
    pcm = tone_speech(text, 24000).pcm + bytes(48 * 600)  # the words, then silence
    step = 48 * 40
    for offset in range(0, len(pcm), step):
        chunk = base64.b64encode(pcm[offset : offset + step]).decode()
        await conn.input_audio_buffer.append(audio=chunk)


async def until(conn, kind: str, timeout: float = 15.0) -> list:
    """Events up to the first of `kind`; any error or close fails the test."""
    seen = []
    async with asyncio.timeout(timeout):
        while True:
            event = await conn.recv()
            assert event.type != "error", f"the caller got an error: {event}"
            assert event.type != "session.created", "a fresh upstream's set-up reached the caller"
            seen.append(event)
            if event.type == kind:
                return seen


def reply_text(done) -> str:
    content = done.response.output[0].content[0]
    return content.transcript or content.text or ""


async def session_json(server, token: str, session_id: str) -> dict:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as rest:
        answer = await rest.get(f"{server.http_url}/api/v1/sessions/{session_id}")
        assert answer.status_code == 200, answer.text
        return answer.json()


async def rotated(server, token: str, session_id: str, timeout: float = 15.0) -> None:
    """Until the session has moved to a second upstream session."""
    for _ in range(int(timeout / 0.2)):
        if len((await session_json(server, token, session_id))["upstream_sessions"]) >= 2:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"no rotation within {timeout:g} s")


async def test_a_35_second_call_outlives_a_10_second_cap_and_keeps_its_turns(
    daphne_with, capped, api_token
):
    server = daphne_with(OC_ROTATE_AFTER="6", OC_SEND_TIMEOUT="5")
    client = AsyncOpenAI(api_key=api_token, websocket_base_url=server.ws_base, max_retries=0)
    lengths: list[int] = []
    spoken_items: list[tuple[float, str]] = []
    began = time.monotonic()
    async with client.realtime.connect(model="gpt-realtime") as conn:
        session_id = (await conn.recv()).session.id
        await conn.session.update(session=VOICE_SESSION)
        await until(conn, "session.updated")
        turn = 0
        truncated_at: float | None = None
        while time.monotonic() - began < 35.0:
            turn += 1
            if turn % 2:
                await conn.conversation.item.create(item=user_text(f"Text turn {turn}."))
                await conn.response.create()
            else:
                await speak(conn, f"spoken turn number {turn}")
            done = (await until(conn, "response.done"))[-1]
            assert done.response.status == "completed", done.response
            lengths.append(int(LENGTH.search(reply_text(done)).group(1)))
            spoken_items.append((time.monotonic(), done.response.output[0].id))
            if truncated_at is None and time.monotonic() - began > 20.0:
                # A spoken reply from the first seconds, long since on another upstream.
                truncated_at = time.monotonic()
                item_id = spoken_items[0][1]
                await conn.conversation.item.truncate(
                    item_id=item_id, content_index=0, audio_end_ms=100
                )
                answer = (await until(conn, "conversation.item.truncated"))[-1]
                assert answer.item_id == item_id
            await asyncio.sleep(0.3)
        assert truncated_at is not None
        # Every turn is kept: each reply sees the conversation so far (a user item and a reply
        # for each turn before, and its own user item), across every rotation.
        assert lengths == list(range(1, 2 * len(lengths), 2)), lengths
        public = await session_json(server, api_token, session_id)
        assert public["status"] == "live"
    assert len(public["upstream_sessions"]) >= 5, public["upstream_sessions"]
    assert public["upstream_sessions"][0] == session_id


async def test_a_rotation_waits_for_a_streaming_response_and_a_queued_nudge_goes_once_to_the_new_upstream(
    daphne_with, simulator, api_token
):
    server = daphne_with(OC_ROTATE_AFTER="2", OC_SEND_TIMEOUT="5")
    client = AsyncOpenAI(api_key=api_token, websocket_base_url=server.ws_base, max_retries=0)
    with simulator.configured(deltas_per_response=10, delta_interval=0.3):
        async with client.realtime.connect(model="gpt-realtime") as conn:
            session_id = (await conn.recv()).session.id
            await conn.conversation.item.create(item=user_text("A long answer, please."))
            await conn.response.create()
            await until(conn, "response.created")
            await asyncio.sleep(2.2)  # the rotation is due now; the response streams on
            async with httpx.AsyncClient(headers={"Authorization": f"Bearer {api_token}"}) as rest:
                nudge = await rest.post(
                    f"{server.http_url}/api/v1/sessions/{session_id}/responses",
                    json={"instructions": "Mention the nudge."},
                )
                assert nudge.status_code == 202, nudge.text
                request_id = nudge.json()["id"]
            first = await until(conn, "response.done")
            deltas = [e for e in first if e.type == "response.output_text.delta"]
            assert first[-1].response.status == "completed" and len(deltas) == 10
            second = (await until(conn, "response.done"))[-1]
            assert second.response.status == "completed"
            assert "Mention the nudge." in reply_text(second)
            public = await session_json(server, api_token, session_id)
    old, new = public["upstream_sessions"][:2]
    tagged = [
        [e for _, e in simulator.sim.received(upstream) if e.get("type") == "response.create"]
        for upstream in (old, new)
    ]
    nudges = [
        [e for e in creates if e["response"].get("metadata", {}).get("oc_request") == request_id]
        for creates in tagged
    ]
    assert (len(nudges[0]), len(nudges[1])) == (0, 1), "the nudge went once, to the new upstream"


async def test_without_rotation_the_cap_ends_the_session_expired_with_close_1001(
    daphne_with, simulator, api_token
):
    server = daphne_with(OC_ROTATE_AFTER="0")
    client = AsyncOpenAI(api_key=api_token, websocket_base_url=server.ws_base, max_retries=0)
    with simulator.configured(max_session_seconds=2.0):
        async with client.realtime.connect(model="gpt-realtime") as conn:
            session_id = (await conn.recv()).session.id
            async with asyncio.timeout(10):
                error = await conn.recv()
                assert (error.type, error.error.code) == ("error", "session_expired")
                with pytest.raises(ConnectionClosed) as closed:
                    await conn.recv()
    assert closed.value.rcvd.code == 1001
    assert closed.value.rcvd.reason == "Your session hit the maximum duration of 0.03 minutes."
    public = await session_json(server, api_token, session_id)
    assert (public["status"], public["end_reason"]) == ("ended", "session_expired")
    assert public["upstream_sessions"] == [session_id]


async def test_after_a_rotation_the_callers_item_ids_name_the_same_items_and_no_set_up_reaches_it(
    daphne_with, simulator, api_token
):
    """The simulator acknowledges each replayed item with `.created`, `.added` and `.done`:
    none of them reaches the caller, and retrieve and delete by the ids the caller held before
    the rotation act on those items."""
    server = daphne_with(OC_ROTATE_AFTER="4", OC_SEND_TIMEOUT="5")
    client = AsyncOpenAI(api_key=api_token, websocket_base_url=server.ws_base, max_retries=0)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        session_id = (await conn.recv()).session.id
        await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        await until(conn, "session.updated")
        await conn.conversation.item.create(item={"id": "item_user1", **user_text("first")})
        await conn.response.create()
        reply_id = (await until(conn, "response.done"))[-1].response.output[0].id
        # Put first: the service announces it with no previous item (null), as the first item.
        await conn.conversation.item.create(
            item={"id": "item_first", **user_text("zeroth")}, previous_item_id="root"
        )
        await until(conn, "conversation.item.done")
        await rotated(server, api_token, session_id)
        # Whatever the fresh session's set-up let through reached the caller before this answer.
        await conn.conversation.item.retrieve(item_id="item_user1")
        seen = await until(conn, "conversation.item.retrieved")
        assert [e.type for e in seen] == ["conversation.item.retrieved"], (
            "set-up reached the caller"
        )
        user = seen[-1].item
        assert (user.id, user.role, user.content[0].text) == ("item_user1", "user", "first")
        await conn.conversation.item.retrieve(item_id=reply_id)
        reply = (await until(conn, "conversation.item.retrieved"))[-1].item
        assert (reply.id, reply.role) == (reply_id, "assistant")
        # A delete of the reply deletes the reply upstream, and is reported with its id.
        await conn.conversation.item.delete(item_id=reply_id)
        deleted = await until(conn, "conversation.item.deleted")
        assert [(e.type, e.item_id) for e in deleted] == [("conversation.item.deleted", reply_id)]
        await conn.conversation.item.retrieve(item_id="item_user1")
        assert (await until(conn, "conversation.item.retrieved"))[-1].item.id == "item_user1"
        public = await session_json(server, api_token, session_id)
    new = public["upstream_sessions"][1]
    received = [event for _, event in simulator.sim.received(new)]
    replayed = [e["item"]["id"] for e in received if e.get("type") == "conversation.item.create"]
    assert replayed == ["item_first", "item_user1", reply_id], "the conversation keeps its order"
    deletes = [e for e in received if e.get("type") == "conversation.item.delete"]
    assert [e["item_id"] for e in deletes] == [reply_id], "the reply was deleted upstream"
