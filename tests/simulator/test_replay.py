"""A conversation replayed into a fresh session keeps its ids: client item ids, previous_item_id,
and truncate/retrieve/delete on the replayed items (what upstream rotation relies on)."""

from __future__ import annotations

import base64

import pytest

from tests.simulator.client import recv, recv_until


def user(item_id: str, text: str) -> dict:
    return {
        "id": item_id,
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": text}],
    }


def spoken(item_id: str, transcript: str, audio: bytes | None = None) -> dict:
    # With `text`: the service refuses an assistant part without it, an `output_audio` one
    # with only its transcript too (openai-agents-js issue #963).
    part = {"type": "output_audio", "text": transcript, "transcript": transcript}
    if audio is not None:
        part["audio"] = base64.b64encode(audio).decode()
    return {"id": item_id, "type": "message", "role": "assistant", "content": [part]}


async def create(conn, item: dict, **extra):
    await conn.conversation.item.create(item=item, **extra)
    return await recv_until(conn, "conversation.item.done")


@pytest.mark.asyncio
async def test_replayed_items_keep_their_ids_and_places(conn):
    first = await create(conn, user("item_a", "one"))
    assert first[0].item.id == "item_a" and first[0].previous_item_id is None
    await create(conn, spoken("item_b", "two three"))
    # After a named item, and at the root.
    middle = await create(conn, user("item_c", "between"), previous_item_id="item_a")
    assert middle[0].previous_item_id == "item_a"
    root = await create(conn, user("item_0", "first of all"), previous_item_id="root")
    assert root[0].previous_item_id is None
    await conn.response.create()
    done = (await recv_until(conn, "response.done"))[-1].response
    # item_0, item_a, item_c, item_b: the reply was made with all four.
    assert done.output[0].content[0].text.endswith("(conversation: 4 items)")
    for item_id in ("item_0", "item_a", "item_c", "item_b"):
        await conn.conversation.item.retrieve(item_id=item_id)
        assert (await recv(conn)).item.id == item_id
    await conn.conversation.item.delete(item_id="item_c")
    deleted = await recv(conn)
    assert (deleted.type, deleted.item_id) == ("conversation.item.deleted", "item_c")
    # An id already in the conversation is refused.
    await conn.conversation.item.create(item=user("item_a", "again"), event_id="evt_dup")
    error = await recv(conn)
    assert (error.error.code, error.error.param, error.error.event_id) == (
        "item_already_exists",
        "item.id",
        "evt_dup",
    )


@pytest.mark.asyncio
async def test_a_replayed_assistant_audio_item_can_be_truncated(conn):
    # Without its audio (a transcript replayed): any cut is taken, the transcript kept whole.
    await create(conn, spoken("item_said", "hello there caller"))
    await conn.conversation.item.truncate(item_id="item_said", content_index=0, audio_end_ms=1500)
    truncated = await recv(conn)
    assert (truncated.type, truncated.item_id, truncated.audio_end_ms) == (
        "conversation.item.truncated",
        "item_said",
        1500,
    )
    # With its audio: cut to what was heard (one second of four words' two seconds: two words).
    pcm = bytes(24000 * 2 * 2)
    await create(conn, spoken("item_heard", "one two three four", audio=pcm))
    await conn.conversation.item.truncate(item_id="item_heard", content_index=0, audio_end_ms=1000)
    assert (await recv(conn)).type == "conversation.item.truncated"
    await conn.conversation.item.retrieve(item_id="item_heard")
    assert (await recv(conn)).item.content[0].transcript == "one two"
    await conn.conversation.item.truncate(item_id="item_heard", content_index=0, audio_end_ms=5000)
    error = await recv(conn)
    assert (error.error.code, error.error.param) == ("invalid_value", "audio_end_ms")


@pytest.mark.asyncio
async def test_truncating_a_text_item_gets_the_services_error(conn):
    await create(
        conn,
        {
            "id": "item_txt",
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "typed"}],
        },
    )
    await conn.conversation.item.truncate(item_id="item_txt", content_index=0, audio_end_ms=0)
    error = await recv(conn)
    assert (error.error.code, error.error.param) == ("invalid_value", "item_id")
    assert "Only model output audio messages can be truncated" in error.error.message
