"""Audio in and out of the simulator (GA voice protocol), driven by the official `openai` SDK:
server VAD on appended speech, spoken replies as audio deltas with a transcript, barge-in,
G.711, transcription placeholders, truncation, and appends the service refuses."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from pydantic import TypeAdapter

from apps.realtime import audio
from apps.simulator.speech import tone_speech
from tests.simulator.client import RESPONSE_EVENTS, add_user_text, recv, recv_until, still_works

TRANSCRIPTION = {"model": "gpt-4o-mini-transcribe"}
VAD = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 200,
    "silence_duration_ms": 300,
    "create_response": True,
    "interrupt_response": True,
}
SILENCE_BEFORE_MS = 500


def voice_session(*, fmt: str = "audio/pcm", vad: dict | None = VAD, transcription=TRANSCRIPTION):
    audio_format = {"type": fmt, "rate": 24000} if fmt == "audio/pcm" else {"type": fmt}
    return {
        "type": "realtime",
        "output_modalities": ["audio"],
        "audio": {
            "input": {
                "format": audio_format,
                "turn_detection": vad,
                "transcription": transcription,
            },
            "output": {"format": audio_format, "voice": "marin"},
        },
    }


async def configure(conn, **options) -> Any:
    await conn.session.update(session=voice_session(**options))
    updated = await recv(conn)
    assert updated.type == "session.updated"
    return updated.session


def microphone(text: str, fmt: str = "audio/pcm") -> bytes:
    """The caller's line: speech (one tone burst a word) in the session's input format."""
    rate = audio.FORMAT_RATES[fmt]
    pcm = tone_speech(text, rate).pcm
    return {"audio/pcmu": audio.ulaw_encode, "audio/pcma": audio.alaw_encode}.get(
        fmt, lambda data: data
    )(pcm)


def silence(ms: int, fmt: str = "audio/pcm") -> bytes:
    per_ms = audio.bytes_per_ms(fmt)
    byte = {"audio/pcmu": b"\xff", "audio/pcma": b"\xd5"}.get(fmt, b"\x00")
    return byte * (per_ms * ms)


async def send_audio(conn, data: bytes, fmt: str = "audio/pcm", chunk_ms: int = 40) -> None:
    step = audio.bytes_per_ms(fmt) * chunk_ms
    for offset in range(0, len(data), step):
        await conn.input_audio_buffer.append(
            audio=base64.b64encode(data[offset : offset + step]).decode()
        )


def decoded(events, fmt: str = "audio/pcm") -> bytes:
    """The PCM16 of every audio delta, in order (G.711 decoded)."""
    data = b"".join(
        base64.b64decode(e.delta) for e in events if e.type == "response.output_audio.delta"
    )
    return audio.to_pcm16(data, fmt)


def of_type(events, kind: str) -> list:
    return [e for e in events if e.type == kind]


@pytest.mark.asyncio
async def test_speech_then_silence_is_detected_committed_and_answered_aloud(sim, conn):
    session = await configure(conn)
    assert session.output_modalities == ["audio"]
    line = microphone("hello there agent")
    speech_ms = len(line) / 48
    await send_audio(conn, silence(SILENCE_BEFORE_MS) + line + silence(600))
    events = await recv_until(conn, "response.done")
    types = [e.type for e in events]

    started, stopped = events[0], events[1]
    assert (started.type, stopped.type) == (
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
    )
    # The start includes the prefix padding; the end includes the silence that ended it.
    assert abs(started.audio_start_ms - (SILENCE_BEFORE_MS - VAD["prefix_padding_ms"])) <= 20
    expected_end = SILENCE_BEFORE_MS + speech_ms + VAD["silence_duration_ms"]
    # (the line ends with a word's quiet tail and a 70 ms gap: VAD hears it end a bit earlier)
    assert expected_end - 200 <= stopped.audio_end_ms <= expected_end, (stopped, expected_end)
    assert stopped.item_id == started.item_id
    committed = events[2]
    assert committed.type == "input_audio_buffer.committed"
    assert committed.item_id == started.item_id and committed.previous_item_id is None
    added = next(e for e in events if e.type == "conversation.item.added")
    assert added.item.id == started.item_id and added.item.content[0].type == "input_audio"

    # Transcription is configured: the simulator says honestly what it cannot know.
    [delta] = of_type(events, "conversation.item.input_audio_transcription.delta")
    [completed] = of_type(events, "conversation.item.input_audio_transcription.completed")
    assert completed.item_id == started.item_id and completed.content_index == 0
    assert completed.transcript == delta.delta
    assert completed.transcript.startswith("[speech, ")
    assert "the simulator does not transcribe" in completed.transcript
    # gpt-4o-mini-transcribe is billed by tokens: the audio's, and the transcript's.
    usage = completed.usage
    assert usage.type == "tokens" and usage.input_token_details.audio_tokens > 5
    assert usage.input_token_details.text_tokens == 0
    assert usage.input_tokens == usage.input_token_details.audio_tokens
    assert usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    user_done = next(e for e in events if e.type == "conversation.item.done")
    assert user_done.item.content[0].transcript == completed.transcript

    # The reply: spoken, in order, with a transcript that matches what was said.
    reply = events[types.index("response.created") :]
    reply_types = [e.type for e in reply]
    assert reply_types[:5] == [
        "response.created",
        "rate_limits.updated",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
    ]
    assert reply[4].part.type == "audio"
    assert reply_types[-6:] == [
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    assert "response.output_text.delta" not in reply_types
    pcm = decoded(reply)
    assert len(pcm) > 24000 * 2, "more than a second of speech"
    assert audio.pcm16_rms(pcm) > 500, "the reply is audible, not silence"
    transcript = "".join(e.delta for e in of_type(reply, "response.output_audio_transcript.delta"))
    assert transcript == of_type(reply, "response.output_audio_transcript.done")[0].transcript
    assert transcript.startswith(
        "[instructions: You are a helpful assistant.] Reply 1 to: [speech, "
    )
    assert transcript.endswith("(conversation: 1 items)"), "spoken replies name it too"
    done = reply[-1].response
    assert done.status == "completed" and done.metadata is None
    assert done.output_modalities == ["audio"]
    assert done.audio.output.format.type == "audio/pcm" and done.audio.output.voice == "marin"
    assert done.output[0].content[0].type == "output_audio"
    assert done.output[0].content[0].transcript == transcript
    audio_ms = len(pcm) / 48
    details = done.usage.output_token_details
    assert details.audio_tokens == int(audio_ms // 50) and details.text_tokens > 0
    assert done.usage.output_tokens == details.audio_tokens + details.text_tokens
    assert done.usage.input_token_details.audio_tokens == int(
        (stopped.audio_end_ms - started.audio_start_ms) // 100
    )

    # Every event is one the SDK's strict server-event models accept.
    from openai.types.realtime import RealtimeServerEvent

    adapter = TypeAdapter(RealtimeServerEvent)
    session_id = await sim.wait_for_session()
    for _, event in sim.sent(session_id):
        adapter.validate_python(event)


@pytest.mark.asyncio
async def test_a_nudge_during_a_voice_call_is_spoken(conn):
    await configure(conn, vad=None)
    await conn.response.create(response={"instructions": "Offer the caller a refund."})
    events = await recv_until(conn, "response.done")
    transcript = of_type(events, "response.output_audio_transcript.done")[0].transcript
    assert transcript.startswith("[instructions: Offer the caller a refund.]")
    assert audio.pcm16_rms(decoded(events)) > 500


@pytest.mark.asyncio
@pytest.mark.parametrize("interrupt", [True, False])
async def test_speaking_over_the_agent(sim, conn, interrupt):
    sim.config.audio_pace = 4.0  # fast, yet the reply (several seconds) is still playing
    await configure(conn, vad={**VAD, "interrupt_response": interrupt})
    await send_audio(conn, microphone("hello") + silence(400))
    first = await recv_until(conn, "response.output_audio.delta")
    response_id = of_type(first, "response.created")[0].response.id
    await send_audio(conn, microphone("wait a moment"))
    events = await recv_until(conn, "response.done", timeout=20)
    assert "input_audio_buffer.speech_started" in [e.type for e in events]
    done = events[-1].response
    assert done.id == response_id
    if interrupt:
        assert done.status == "cancelled"
        assert done.status_details.type == "cancelled"
        assert done.status_details.reason == "turn_detected"
        assert done.output[0].status == "incomplete"
        full = of_type(events, "response.output_audio_transcript.done")[0].transcript
        assert "Reply 1 to:" not in full, "cut before the end of the reply"
        # The caller finishes speaking: the next turn is answered.
        await send_audio(conn, silence(400))
        after = await recv_until(conn, "response.done", timeout=20)
        assert after[-1].response.status == "completed"
        assert (
            "Reply 2 to: [speech, "
            in of_type(after, "response.output_audio_transcript.done")[0].transcript
        )
    else:
        assert done.status == "completed"


@pytest.mark.asyncio
@pytest.mark.parametrize("fmt", ["audio/pcmu", "audio/pcma"])
async def test_g711_sessions_hear_and_speak_g711(conn, fmt):
    session = await configure(conn, fmt=fmt)
    assert session.audio.output.format.type == fmt
    line = microphone("good morning", fmt)
    await send_audio(conn, silence(300, fmt) + line + silence(500, fmt), fmt)
    events = await recv_until(conn, "response.done")
    started = of_type(events, "input_audio_buffer.speech_started")[0]
    assert abs(started.audio_start_ms - 100) <= 20
    raw = b"".join(
        base64.b64decode(e.delta) for e in of_type(events, "response.output_audio.delta")
    )
    pcm = audio.to_pcm16(raw, fmt)
    assert len(pcm) == 2 * len(raw), "one byte a sample, 8 kHz"
    assert audio.pcm16_rms(pcm) > 500
    done = events[-1].response
    assert done.audio.output.format.type == fmt
    assert done.usage.output_token_details.audio_tokens == int(len(raw) / 8 // 50)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("audio_config", "code", "param"),
    [
        ({"input": {"format": {"type": "audio/wav"}}}, "invalid_value", "input.format.type"),
        ({"output": {"format": {"type": "g711_ulaw"}}}, "invalid_value", "output.format.type"),
        (
            {"input": {"format": {"type": "audio/pcm", "rate": 16000}}},
            "invalid_value",
            "input.format.rate",
        ),
        ({"output": {"format": "pcm16"}}, "invalid_type", "output.format"),
        (
            {"input": {"turn_detection": {"type": "vad"}}},
            "invalid_value",
            "input.turn_detection.type",
        ),
    ],
)
async def test_an_audio_setting_the_service_lacks_is_refused_and_nothing_applied(
    conn, audio_config, code, param
):
    await conn.send_raw(
        json.dumps(
            {
                "type": "session.update",
                "event_id": "evt_u",
                "session": {"type": "realtime", "instructions": "Changed.", "audio": audio_config},
            }
        )
    )
    error = (await recv(conn)).error
    assert (error.code, error.param, error.event_id) == (code, f"session.audio.{param}", "evt_u")
    # Nothing of it was applied: the session still hears and speaks 24 kHz PCM.
    await conn.session.update(session={"type": "realtime"})
    session = (await recv(conn)).session
    assert session.instructions != "Changed."
    assert session.audio.input.format.type == session.audio.output.format.type == "audio/pcm"
    assert session.audio.input.turn_detection.type == "server_vad"


@pytest.mark.asyncio
async def test_a_response_asking_for_an_output_format_the_service_lacks_is_refused(conn):
    await conn.send_raw(
        json.dumps(
            {
                "type": "response.create",
                "event_id": "evt_r",
                "response": {"audio": {"output": {"format": {"type": "audio/mp3"}}}},
            }
        )
    )
    error = (await recv(conn)).error
    assert (error.code, error.param, error.event_id) == (
        "invalid_value",
        "response.audio.output.format.type",
        "evt_r",
    )
    assert error.message == (
        "Invalid value: 'audio/mp3'. Supported values are: 'audio/pcm', 'audio/pcmu', and "
        "'audio/pcma'."
    )
    await still_works(conn)


@pytest.mark.asyncio
async def test_without_transcription_the_item_has_no_transcript_and_no_events(conn):
    await configure(conn, transcription=None)
    await send_audio(conn, microphone("hello") + silence(400))
    events = await recv_until(conn, "response.done")
    types = [e.type for e in events]
    assert not [t for t in types if t.startswith("conversation.item.input_audio_transcription")]
    user_item = of_type(events, "conversation.item.done")[0].item
    assert user_item.role == "user" and user_item.content[0].transcript is None
    # The reply still answers what it heard, honestly.
    transcript = of_type(events, "response.output_audio_transcript.done")[0].transcript
    assert "Reply 1 to: [speech, " in transcript


@pytest.mark.asyncio
async def test_without_turn_detection_speech_waits_for_a_manual_commit(conn):
    await configure(conn, vad=None)
    await send_audio(conn, microphone("hello there") + silence(400))
    await conn.input_audio_buffer.commit()
    events = await recv_until(conn, "conversation.item.done")
    assert events[0].type == "input_audio_buffer.committed", "no VAD events before the commit"
    assert not of_type(events, "input_audio_buffer.speech_started")
    await still_works(conn)  # and no response was started by the commit


@pytest.mark.asyncio
async def test_manual_commit_with_server_vad_starts_a_response(conn):
    await conn.input_audio_buffer.append(audio="AAAA" * 2400)  # 7200 bytes: 150 ms of silence
    await conn.input_audio_buffer.commit(event_id="evt_commit")
    events = await recv_until(conn, "response.done")
    types = [e.type for e in events]
    assert types[:4] == [
        "input_audio_buffer.committed",
        "conversation.item.created",
        "conversation.item.added",
        "conversation.item.done",
    ]
    assert types[4:] == RESPONSE_EVENTS  # a text session: the reply is text
    user_item = events[1].item
    assert events[0].item_id == user_item.id
    assert user_item.role == "user" and user_item.content[0].type == "input_audio"
    assert (
        events[-1]
        .response.output[0]
        .content[0]
        .text.endswith(
            "Reply 1 to: [speech, 0.1 s — the simulator does not transcribe] "
            "(conversation: 1 items)"
        )
    )
    await conn.input_audio_buffer.clear()
    assert (await recv(conn)).type == "input_audio_buffer.cleared"


@pytest.mark.asyncio
async def test_truncate_cuts_the_audio_and_its_transcript(conn):
    await configure(conn, vad=None)
    await add_user_text(conn, "tell me a long story")
    await conn.response.create()
    events = await recv_until(conn, "response.done")
    item = events[-1].response.output[0]
    full = item.content[0].transcript
    audio_ms = len(decoded(events)) / 48

    await conn.conversation.item.truncate(item_id=item.id, content_index=0, audio_end_ms=1000)
    truncated = await recv(conn)
    assert truncated.type == "conversation.item.truncated"
    assert (truncated.item_id, truncated.content_index, truncated.audio_end_ms) == (
        item.id,
        0,
        1000,
    )
    await conn.conversation.item.retrieve(item_id=item.id)
    kept = (await recv(conn)).item.content[0].transcript
    assert kept and full.startswith(kept) and len(kept) < len(full) / 2

    refusals = [
        (
            {"item_id": item.id, "content_index": 0, "audio_end_ms": int(audio_ms) + 5000},
            "invalid_value",
            "audio_end_ms",
        ),
        (
            {"item_id": item.id, "content_index": 0, "audio_end_ms": 1500},
            "invalid_value",
            "audio_end_ms",
        ),
        (
            {"item_id": item.id, "content_index": 0, "audio_end_ms": -1},
            "integer_below_min_value",
            "audio_end_ms",
        ),
        (
            {"item_id": item.id, "content_index": 1, "audio_end_ms": 10},
            "invalid_value",
            "content_index",
        ),
        (
            {"item_id": "item_nope", "content_index": 0, "audio_end_ms": 10},
            "item_not_found",
            "item_id",
        ),
    ]
    for fields, code, param in refusals:
        await conn.send_raw(
            json.dumps({"type": "conversation.item.truncate", "event_id": "evt_t", **fields})
        )
        error = (await recv(conn)).error
        assert (error.code, error.param, error.event_id) == (code, param, "evt_t"), fields
        assert error.type == "invalid_request_error"
    # A user item is not model audio.
    user_item_id = (await add_user_text(conn, "hi")).id
    await conn.send_raw(
        json.dumps(
            {
                "type": "conversation.item.truncate",
                "item_id": user_item_id,
                "content_index": 0,
                "audio_end_ms": 0,
            }
        )
    )
    error = (await recv(conn)).error
    assert (error.code, error.param) == ("invalid_value", "item_id")
    assert "Only model output audio messages can be truncated" in error.message


@pytest.mark.asyncio
@pytest.mark.parametrize("cancel", [True, False])
async def test_an_item_still_being_spoken_can_be_truncated(sim, conn, cancel):
    """The barge-in of a client that plays the audio itself: `response.cancel` (or not) and
    `conversation.item.truncate` (what was heard) in a row, while the reply still streams."""
    sim.config.audio_pace = 4.0  # the reply (several seconds) is still streaming
    await configure(conn, vad=None)
    await add_user_text(conn, "tell me a long story")
    await conn.response.create()
    first = await recv_until(conn, "response.output_audio.delta")
    while len(of_type(first, "response.output_audio.delta")) < 3:
        first += await recv_until(conn, "response.output_audio.delta")
    item_id = first[-1].item_id
    if cancel:
        await conn.response.cancel()
    await conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=150)
    events = await recv_until(conn, "response.done", timeout=20)
    while not of_type(events, "conversation.item.truncated") and not of_type(events, "error"):
        events.append(await recv(conn))
    assert not of_type(events, "error"), of_type(events, "error")
    [truncated] = of_type(events, "conversation.item.truncated")
    assert (truncated.item_id, truncated.content_index, truncated.audio_end_ms) == (item_id, 0, 150)
    done = of_type(events, "response.done")[0].response
    assert done.status == ("cancelled" if cancel else "completed")
    before_ms = len(decoded(first)) / 48
    after_ms = len(decoded(events)) / 48
    assert after_ms <= 300, f"no audio after the cut but what was on its way ({before_ms=})"
    await conn.conversation.item.retrieve(item_id=item_id)
    kept = (await recv(conn)).item.content[0].transcript
    spoken = "".join(
        e.delta for e in first + events if e.type == "response.output_audio_transcript.delta"
    )
    assert kept and spoken.startswith(kept) and len(kept) < len(spoken), (kept, spoken)
    # What was heard is now the item's length: a later cut beyond it is refused.
    await conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=200)
    error = (await recv(conn)).error
    assert (error.code, error.param) == ("invalid_value", "audio_end_ms")


@pytest.mark.asyncio
async def test_malformed_base64_append_is_answered_as_the_service_answers_it(sim, conn):
    await conn.send_raw(
        json.dumps(
            {"type": "input_audio_buffer.append", "audio": "not base64!", "event_id": "evt_a"}
        )
    )
    error = (await recv(conn)).error
    assert error.type == "invalid_request_error"
    assert (error.code, error.param, error.event_id) == ("invalid_value", "audio", "evt_a")
    assert error.message == (
        "Invalid 'audio'. Expected base64-encoded audio bytes (mono PCM16 at 24kHz) "
        "but got an invalid value."
    )
    await still_works(conn)
    session_id = await sim.wait_for_session()
    assert sim.sessions[session_id].audio.total_ms == 0, "nothing of it reached the buffer"


@pytest.mark.asyncio
async def test_an_append_over_15_mib_is_refused_naming_the_limit(sim, conn):
    limit_chars = 15 * 1024 * 1024 // 3 * 4
    await conn.send_raw(
        json.dumps(
            {
                "type": "input_audio_buffer.append",
                "audio": "A" * (limit_chars + 4),
                "event_id": "evt_big",
            }
        )
    )
    error = (await recv(conn, timeout=20)).error
    assert (error.code, error.param, error.event_id) == (
        "string_above_max_length",
        "audio",
        "evt_big",
    )
    assert str(limit_chars) in error.message and "15 MiB" in error.message
    # At the limit: taken (15 MiB of silence, about 5.5 minutes of PCM16).
    await conn.input_audio_buffer.append(audio="A" * limit_chars)
    await still_works(conn)
    session_id = await sim.wait_for_session()
    assert sim.sessions[session_id].audio.total_ms == pytest.approx(15 * 1024 * 1024 / 48)


@pytest.mark.asyncio
async def test_the_voice_cannot_change_once_the_model_has_spoken(conn):
    """The service's refusal, fields as it sends them (openai/openai-agents-python#1661): the
    update is refused whole, the session goes on with what it had."""
    await configure(conn, vad=None)
    await conn.session.update(
        session={"type": "realtime", "audio": {"output": {"voice": "cedar"}}}, event_id="evt_v1"
    )
    assert (await recv(conn)).session.audio.output.voice == "cedar", "nothing spoken yet"
    await add_user_text(conn, "hello")
    await conn.response.create()
    await recv_until(conn, "response.done")

    change = {
        "type": "realtime",
        "instructions": "Be brief.",
        "audio": {"output": {"voice": "marin"}},
    }
    await conn.session.update(session=change, event_id="evt_v2")
    error = (await recv(conn)).error
    assert (error.type, error.code, error.param, error.event_id) == (
        "invalid_request_error",
        "cannot_update_voice",
        None,
        "evt_v2",
    )
    assert error.message == "Cannot update a conversation's voice if assistant audio is present."
    # The same voice again is no change; the refused instructions were not applied either.
    same = {"type": "realtime", "audio": {"output": {"voice": "cedar"}}}
    await conn.session.update(session=same)
    updated = (await recv(conn)).session
    assert updated.audio.output.voice == "cedar" and updated.instructions != "Be brief."


@pytest.mark.asyncio
async def test_turn_detection_given_in_part_is_completed_with_the_defaults_it_then_uses(conn):
    """A client that sets only some of turn detection's fields is told (and gets) the rest as
    the service announces them in `session.created`: 200 ms of silence ends a turn."""
    created_defaults = {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 200,
        "idle_timeout_ms": None,
        "create_response": True,
        "interrupt_response": True,
    }
    session = await configure(conn, vad={"type": "semantic_vad"})
    assert session.audio.input.turn_detection.model_dump(exclude_unset=True) == {
        "type": "semantic_vad",
        "eagerness": "auto",
        "create_response": True,
        "interrupt_response": True,
    }
    session = await configure(conn, vad={"type": "server_vad", "threshold": 0.6})
    announced = session.audio.input.turn_detection.model_dump(exclude_unset=True)
    assert announced == {**created_defaults, "threshold": 0.6}
    # 300 ms of silence is more than the 200 ms announced: the turn ends and is answered.
    await send_audio(conn, microphone("hello") + silence(300))
    events = await recv_until(conn, "response.created")
    assert of_type(events, "input_audio_buffer.speech_stopped")


@pytest.mark.asyncio
async def test_a_turn_detection_update_replaces_the_old_one_whole(conn):
    """The service sets the turn detection a `session.update` gives, its defaults filling what
    is left out: nothing of the one before stays, whatever the new one's type."""

    async def update(turn_detection):
        audio = {"input": {"turn_detection": turn_detection}}
        await conn.session.update(session={"type": "realtime", "audio": audio})
        updated = await recv(conn)
        assert updated.type == "session.updated"
        given = updated.session.audio.input.turn_detection
        return None if given is None else given.model_dump(exclude_unset=True)

    custom = {"type": "server_vad", "silence_duration_ms": 800, "create_response": False}
    assert (await update(custom))["silence_duration_ms"] == 800
    assert await update({"type": "semantic_vad"}) == {
        "type": "semantic_vad",
        "eagerness": "auto",
        "create_response": True,
        "interrupt_response": True,
    }
    await update(custom)
    server_defaults = await update({"type": "server_vad"})
    assert server_defaults["silence_duration_ms"] == 200
    assert server_defaults["create_response"] is True
    # Without a type it is the schema's default type, and still nothing of the old one stays.
    await update(custom)
    assert await update({"threshold": 0.7}) == {**server_defaults, "threshold": 0.7}
    # null turns it off; an object after that is a whole turn detection, not a fragment.
    assert await update(None) is None
    assert await update({"create_response": False}) == {
        **server_defaults,
        "create_response": False,
    }


@pytest.mark.asyncio
async def test_whisper_transcription_usage_is_the_audio_duration(conn):
    """whisper-1 is billed by the minute: its usage is the committed audio's length."""
    await configure(conn, vad=None, transcription={"model": "whisper-1"})
    await send_audio(conn, microphone("hello") + silence(400))
    await conn.input_audio_buffer.commit()
    events = await recv_until(conn, "conversation.item.input_audio_transcription.completed")
    usage = events[-1].usage
    assert usage.model_dump() == {"type": "duration", "seconds": usage.seconds}
    assert usage.seconds > 0.5


@pytest.mark.asyncio
async def test_output_audio_buffer_clear_is_refused_over_a_websocket(conn):
    """Over a WebSocket the client plays the audio itself: the service has no output audio
    buffer to clear (the event is for WebRTC and SIP) and answers with an error."""
    await conn.send({"type": "output_audio_buffer.clear", "event_id": "evt_oac"})
    error = (await recv(conn)).error
    assert (error.type, error.code, error.param, error.event_id) == (
        "invalid_request_error",
        "invalid_value",
        "type",
        "evt_oac",
    )
    assert "output_audio_buffer.clear" in error.message and "WebRTC" in error.message
    await still_works(conn)


@pytest.mark.asyncio
@pytest.mark.parametrize("fmt", ["audio/pcm", "audio/pcmu"])
async def test_a_retrieved_user_audio_item_carries_the_audio_committed(conn, fmt):
    """`conversation.item.retrieve` gives the item's full content, audio included (base64,
    in the session's input format), with its transcript; its other events leave it out."""
    await configure(conn, fmt=fmt, vad=None)
    line = microphone("hello there", fmt) + silence(200, fmt)
    await send_audio(conn, line, fmt)
    await conn.input_audio_buffer.commit()
    events = await recv_until(conn, "conversation.item.done")
    done = events[-1].item
    assert done.content[0].audio is None
    await conn.conversation.item.retrieve(item_id=done.id, event_id="evt_get")
    retrieved = (await recv(conn)).item
    assert retrieved.id == done.id
    [part] = retrieved.content
    assert part.type == "input_audio" and base64.b64decode(part.audio) == line
    assert part.transcript == done.content[0].transcript and part.transcript


@pytest.mark.asyncio
async def test_a_vad_committed_item_retrieves_the_speech_it_heard(conn):
    """What server VAD commits is the speech from its start (with the prefix padding) to its
    end (with the silence that ended it): the retrieved audio is that stretch."""
    await configure(conn)
    line = microphone("hello")
    await send_audio(conn, silence(SILENCE_BEFORE_MS) + line + silence(600))
    events = await recv_until(conn, "conversation.item.done")
    started, stopped = events[0], events[1]
    await conn.conversation.item.retrieve(item_id=stopped.item_id)
    retrieved = (await recv_until(conn, "conversation.item.retrieved", timeout=10))[-1].item
    audio = base64.b64decode(retrieved.content[0].audio)
    assert len(audio) == (stopped.audio_end_ms - started.audio_start_ms) * 48
    assert line[:4800] in audio  # the speech's first 100 ms, byte for byte


def test_the_buffer_keeps_only_its_latest_minute_of_audio():
    """A call that streams for long without a commit does not grow without end: a commit
    still measures all of the buffer, and its item holds the last minute of audio."""
    from apps.simulator.voice import KEEP_BUFFER_MS, InputAudio

    buffer = InputAudio()
    second = silence(1000)
    for _ in range(KEEP_BUFFER_MS // 1000 + 5):
        buffer.feed(second, "audio/pcm", None)
    assert len(buffer.buffered) == KEEP_BUFFER_MS * 48
    duration_ms, audio = buffer.take_buffer()
    assert duration_ms == KEEP_BUFFER_MS + 5000 and len(audio) == KEEP_BUFFER_MS * 48
    assert not buffer.buffered


@pytest.mark.asyncio
async def test_a_client_created_user_audio_item_is_retrieved_with_its_audio(conn):
    """A user item the client creates with audio is retrieved with that audio (the service's
    retrieve gives the full content), each part with its own; its created/added/done events
    leave the audio out, as the service's do."""
    await configure(conn, vad=None)
    first, second = microphone("hello"), microphone("and goodbye")
    parts = [
        {"type": "input_audio", "audio": base64.b64encode(first).decode(), "transcript": "hi"},
        {"type": "input_text", "text": "between"},
        {"type": "input_audio", "audio": base64.b64encode(second).decode()},
    ]
    await conn.conversation.item.create(
        item={"type": "message", "role": "user", "id": "item_sent", "content": parts}
    )
    events = await recv_until(conn, "conversation.item.done")
    assert [e.type for e in events] == [
        "conversation.item.created", "conversation.item.added", "conversation.item.done"
    ]
    assert all(part.audio is None for e in events for part in e.item.content)
    await conn.conversation.item.retrieve(item_id="item_sent")
    retrieved = (await recv(conn)).item
    audio_parts = [p for p in retrieved.content if p.type == "input_audio"]
    assert [base64.b64decode(p.audio) for p in audio_parts] == [first, second]
    assert [p.transcript for p in audio_parts] == ["hi", None]
    assert retrieved.content[1].text == "between"
    # Deleted, its audio goes with it: an item created again under its id has none.
    await conn.conversation.item.delete(item_id="item_sent")
    assert (await recv(conn)).type == "conversation.item.deleted"
    again = [{"type": "input_audio", "transcript": "again"}]
    await conn.conversation.item.create(
        item={"type": "message", "role": "user", "id": "item_sent", "content": again}
    )
    await recv_until(conn, "conversation.item.done")
    await conn.conversation.item.retrieve(item_id="item_sent")
    [part] = (await recv(conn)).item.content
    assert (part.transcript, part.audio) == ("again", None)


@pytest.mark.asyncio
async def test_client_user_audio_is_kept_bounded_like_committed_audio(conn, monkeypatch):
    """Only the latest items' audio is kept, and none of an item with more audio than a
    committed item holds: such items are retrieved without it."""
    from apps.simulator import voice

    monkeypatch.setattr(voice, "_KEEP_USER_AUDIO", 1)
    monkeypatch.setattr(voice, "_KEEP_CLIENT_AUDIO_BYTES", 9600)  # 200 ms of PCM16
    for item_id, ms in (("item_old", 100), ("item_new", 100), ("item_long", 300)):
        part = {"type": "input_audio", "audio": base64.b64encode(silence(ms)).decode()}
        await conn.conversation.item.create(
            item={"type": "message", "role": "user", "id": item_id, "content": [part]}
        )
        await recv_until(conn, "conversation.item.done")
    kept = {}
    for item_id in ("item_old", "item_new", "item_long"):
        await conn.conversation.item.retrieve(item_id=item_id)
        kept[item_id] = (await recv(conn)).item.content[0].audio is not None
    assert kept == {"item_old": False, "item_new": True, "item_long": False}
