"""Voice through the relay, end to end: the official `openai` SDK as a voice client on real
Daphne, the simulator speaking, an operator's nudge spoken, and the call recorded."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import time
import wave
from array import array

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.core.files.storage import default_storage
from openai import AsyncOpenAI

from apps.realtime import audio
from apps.sessions.models import LiveSession
from apps.simulator.speech import tone_speech
from tests.conftest import UPSTREAM_KEY
from tests.support.realtime import eventually
from tests.support.servers import DaphneProcess

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

VAD = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 200,
    "silence_duration_ms": 300,
    "create_response": True,
    "interrupt_response": True,
}
CHUNK_MS = 40


def voice_session(vad: dict | None = VAD) -> dict:
    pcm = {"type": "audio/pcm", "rate": 24000}
    return {
        "type": "realtime",
        "output_modalities": ["audio"],
        "audio": {
            "input": {"format": pcm, "turn_detection": vad},
            "output": {"format": pcm, "voice": "marin"},
        },
    }


def speech(text: str) -> bytes:
    return tone_speech(text, 24000).pcm


def silence(ms: int) -> bytes:
    return bytes(48 * ms)


async def speak(conn, pcm: bytes, *, real_time: bool = False) -> None:
    """The microphone: 40 ms appends, in real time if asked."""
    step = 48 * CHUNK_MS
    began = time.monotonic()
    for n, offset in enumerate(range(0, len(pcm), step)):
        await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[offset : offset + step]).decode())
        if real_time:
            await asyncio.sleep(max(0.0, began + (n + 1) * CHUNK_MS / 1000 - time.monotonic()))


async def until(conn, kind: str, timeout: float = 20.0) -> list:
    events = []
    async with asyncio.timeout(timeout):
        while True:
            event = await conn.recv()
            events.append(event)
            if event.type == kind:
                return events


def spoken(events) -> bytes:
    return b"".join(base64.b64decode(e.delta) for e in events if e.type == "response.output_audio.delta")


def transcript(events) -> str:
    done = [e for e in events if e.type == "response.output_audio_transcript.done"]
    return done[0].transcript if done else ""


@pytest.fixture
def fast_voice(simulator):
    with simulator.configured(speech_engine="tone", audio_pace=4.0):
        yield simulator


async def test_the_sdk_speaks_hears_the_reply_interrupts_it_and_hears_a_nudge(daphne, fast_voice, api_token):
    client = AsyncOpenAI(api_key=api_token, websocket_base_url=daphne.ws_base, max_retries=0)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        session_id = (await conn.recv()).session.id
        await conn.session.update(session=voice_session())
        assert (await until(conn, "session.updated"))[-1].session.output_modalities == ["audio"]

        # The caller speaks, then is silent: detected, committed, answered aloud.
        await speak(conn, speech("where is my parcel") + silence(500))
        events = await until(conn, "response.done")
        kinds = [e.type for e in events]
        for kind in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                     "input_audio_buffer.committed", "response.output_audio.delta",
                     "response.output_audio_transcript.delta"):
            assert kind in kinds, f"{kind} reached the caller"
        assert audio.pcm16_rms(spoken(events)) > 500, "the reply is heard"
        assert transcript(events).startswith("[instructions: ")
        assert events[-1].response.status == "completed"

        # The caller speaks over the next reply: it is cancelled for turn_detected.
        await speak(conn, speech("and my refund") + silence(500))
        await until(conn, "response.output_audio.delta")
        await speak(conn, speech("wait a moment please"))
        events = await until(conn, "response.done")
        cancelled = events[-1].response
        assert (cancelled.status, cancelled.status_details.reason) == ("cancelled", "turn_detected")
        await speak(conn, silence(500))
        await until(conn, "response.done")

        # An operator's nudge during the call is spoken in the next turn.
        async with httpx.AsyncClient(base_url=f"{daphne.http_url}/api/v1",
                                     headers={"Authorization": f"Bearer {api_token}"}) as rest:
            nudge = await rest.post(f"/sessions/{session_id}/responses",
                                    json={"instructions": "Offer the caller a refund."})
            assert nudge.status_code == 202, nudge.text
        events = await until(conn, "response.done")
        assert "Offer the caller a refund." in transcript(events), "the nudge is what the agent says"
        assert audio.pcm16_rms(spoken(events)) > 500
        assert events[-1].response.metadata is None, "the operator's metadata stays the operator's"


@pytest.fixture
def recording_daphne(django_db_setup, django_db_blocker, fast_voice):
    """Daphne recording voice calls, into the storage this process reads (MEDIA_ROOT)."""
    from django.db import connection

    with django_db_blocker.unblock():
        db_path = connection.settings_dict["NAME"]
    server = DaphneProcess(
        {
            "OC_UPSTREAM_URL": fast_voice.url,
            "OPENAI_API_KEY": UPSTREAM_KEY,
            "DATABASE_URL": f"sqlite:///{os.path.abspath(db_path)}",
            "OC_RECORD_AUDIO": "true",
        }
    )
    yield server
    server.stop()


def _loud(track: array, start: float, end: float) -> bool:
    window = track[int(start * 24000) : int(end * 24000)]
    return audio.pcm16_rms(window.tobytes()) > 1000


async def test_a_recorded_call_has_both_sides_on_one_timeline(recording_daphne, api_token):
    client = AsyncOpenAI(api_key=api_token, websocket_base_url=recording_daphne.ws_base, max_retries=0)
    began = time.monotonic()
    async with client.realtime.connect(model="gpt-realtime") as conn:
        session_id = (await conn.recv()).session.id
        await conn.session.update(session=voice_session())
        await until(conn, "session.updated")
        await speak(conn, silence(1000), real_time=True)
        said_from = time.monotonic() - began
        line = speech("hello I would like to ask about my order")
        await speak(conn, line, real_time=True)
        said_until = time.monotonic() - began
        await speak(conn, silence(500), real_time=True)
        events = await until(conn, "response.output_audio.delta")
        reply_from = time.monotonic() - began
        events += await until(conn, "response.done")
        reply_until = reply_from + len(spoken(events)) / 48000
        # Hang up once the reply has played out (as a caller would), a little after.
        await asyncio.sleep(max(0.0, reply_until + 0.5 - (time.monotonic() - began)))

    session = await eventually(
        lambda: LiveSession.objects.filter(upstream_id=session_id, ended_at__isnull=False).exclude(recording="").first(),
        timeout=15,
    )
    call_seconds = (session.ended_at - session.started_at).total_seconds()
    stored = await sync_to_async(lambda: default_storage.open(session.recording.name).read())()
    with wave.open(io.BytesIO(stored)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, 24000)
        seconds = wav.getnframes() / 24000
        frames = array("h")
        frames.frombytes(wav.readframes(wav.getnframes()))
    assert abs(seconds - call_seconds) < 0.5, f"recording {seconds:.2f} s, call {call_seconds:.2f} s"
    caller, agent = frames[0::2], frames[1::2]
    middle = (said_from + said_until) / 2
    assert _loud(caller, middle - 0.3, middle + 0.3), "the caller is heard while speaking"
    assert not _loud(caller, 0.1, said_from - 0.3), "silence before the caller spoke"
    assert not _loud(agent, 0.1, said_until - 0.3), "the agent is silent until it answers"
    reply_middle = (reply_from + reply_until) / 2
    assert _loud(agent, reply_middle - 0.2, reply_middle + 0.2), "the agent is heard answering"
    assert not _loud(caller, said_until + 0.3, reply_until), "the caller is silent meanwhile"
    assert session.recording_transcript, "the transcript is kept with the recording"
    assert session.recording_transcript[-1]["role"] == "agent"
    await sync_to_async(default_storage.delete)(session.recording.name)
