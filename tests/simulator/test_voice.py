"""Audio in and out of the simulator, driven by the official `openai` SDK."""

from __future__ import annotations

import pytest

from tests.simulator.client import (
    RESPONSE_EVENTS,
    recv,
    recv_until,
)


@pytest.mark.asyncio
async def test_audio_commit_with_server_vad_starts_a_response(conn):
    await conn.input_audio_buffer.append(audio="AAAA" * 2400)  # 7200 bytes: 150 ms of pcm16
    await conn.input_audio_buffer.commit(event_id="evt_commit")
    events = await recv_until(conn, "response.done")
    types = [e.type for e in events]
    assert types[:4] == [
        "input_audio_buffer.committed",
        "conversation.item.created",
        "conversation.item.added",
        "conversation.item.done",
    ]
    assert types[4:] == RESPONSE_EVENTS
    user_item = events[1].item
    assert events[0].item_id == user_item.id
    assert user_item.role == "user" and user_item.content[0].type == "input_audio"
    assert "150 ms" in events[-1].response.output[0].content[0].text
    assert events[4].response.metadata is None

    # With turn detection off, a commit only adds the item.
    await conn.session.update(
        session={"type": "realtime", "audio": {"input": {"turn_detection": None}}}
    )
    await recv(conn)
    await conn.input_audio_buffer.append(audio="AAAA" * 2400)
    await conn.input_audio_buffer.commit()
    await recv_until(conn, "conversation.item.done")
    await conn.input_audio_buffer.clear()
    assert (await recv(conn)).type == "input_audio_buffer.cleared"
