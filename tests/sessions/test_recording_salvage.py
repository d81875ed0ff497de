"""A call's recording survives the death of the process that wrote it (SIGKILL, the OOM
killer): the spool it leaves is made into the recording by the next process's upkeep, with its
timeline, as far as it was written; and a recording stops cleanly at the WAV format's 4 GiB."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import sys
import textwrap
import time
import wave
from array import array

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.core.files.storage import default_storage

from apps.console.recordings import recording_timeline
from apps.realtime.audio import pcm16_rms
from apps.sessions import housekeeping, recorder
from apps.sessions.models import LiveSession
from apps.sessions.recorder import RATE, Recording
from apps.sessions.spool import spool_root

pytestmark = pytest.mark.django_db(transaction=True)

# A process that records a call and then waits, to be killed: the caller speaks for 1 s from
# 0.5 s, the agent's 1 s reply arrives at 2.0 s, each turn is noted.
WRITER = textwrap.dedent(
    """
    import sys, time, uuid
    from array import array

    import django

    django.setup()
    from django.conf import settings

    settings.MEDIA_ROOT = sys.argv[1]
    from apps.sessions import recorder

    started = time.time() - 3.0
    tone = array("h", [6000 if (i // 24) % 2 else -6000 for i in range(960)]).tobytes()
    recording = recorder.Recording(uuid.UUID(sys.argv[2]), started_at=started)
    recording.note({"id": "item_u", "role": "user", "text": "Where is it?"}, started + 0.5)
    for n in range(25):
        recording.add(0, tone, started + 0.5 + n * 0.04)
        recording.add(1, tone, started + 2.0)
    recording.note({"id": "item_a", "role": "agent", "text": "On its way."}, started + 2.0)
    assert recorder.flush()
    print("written", flush=True)
    sys.stdin.read()
    """
)


def _tone(samples: int) -> bytes:
    return array("h", [6000 if (i // 24) % 2 else -6000 for i in range(samples)]).tobytes()


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def _wav(name: str) -> tuple[int, int, list[bytes]]:
    """The stored WAV's frames, its data's bytes, and each channel's samples."""
    with default_storage.open(name) as stored:
        data = stored.read()
    with wave.open(io.BytesIO(data)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, RATE)
        frames = wav.getnframes()
        samples = array("h")
        samples.frombytes(wav.readframes(frames))
    assert len(data) == 44 + frames * 4, "the header's sizes are the file's"
    return frames, len(data) - 44, [samples[0::2].tobytes(), samples[1::2].tobytes()]


def _loud(track: bytes, second: float) -> bool:
    return pcm16_rms(track[int(second * RATE) * 2 : int((second + 0.1) * RATE) * 2]) > 1000


def _abandoned(session: LiveSession, *, caller: float, agent: float = 0.0) -> Recording:
    """A recording written as far as `caller` and `agent` seconds, whose writer then died: its
    spool's lock let go of without the spool being deleted, as the kernel does for the dead."""
    recording = Recording(session.id, started_at=time.time() - max(caller, agent))
    recording.note({"id": "item_u", "role": "user", "text": "Hello?"}, recording.started_at)
    recording.add(0, _tone(int(caller * RATE)), recording.started_at)
    if agent:
        recording.add(1, _tone(int(agent * RATE)), recording.started_at)
    assert recorder.flush()
    with recorder._writer._lock:  # the dead write no more
        recorder._writer._watched.discard(recording)
    recording._spool.release()
    return recording


async def test_the_recording_of_a_killed_process_is_salvaged_and_served(media, rest):
    session = await sync_to_async(LiveSession.objects.create)(
        model="gpt-realtime", upstream_id="sess_killed", status="live"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "operator_console.settings"}
    writer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WRITER, str(media), session.id.hex,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        cwd=django_settings.BASE_DIR, env=env,
    )
    try:
        assert await asyncio.wait_for(writer.stdout.readline(), 30) == b"written\n"
        assert recorder.housekeeping_chore in housekeeping.chores
        await recorder.housekeeping_chore()
        await session.arefresh_from_db()
        assert not session.recording, "a live writer's recording is its own"
    finally:
        writer.send_signal(signal.SIGKILL)
        await writer.wait()

    await recorder.housekeeping_chore()
    await session.arefresh_from_db()
    assert session.recording.name == f"recordings/{session.id.hex}.wav"
    frames, data, (caller, agent) = await sync_to_async(_wav)(session.recording.name)
    assert frames == round(session.recording_seconds * RATE) and data == frames * 4
    # To where the writer stopped (its files' last change), which the reply's end reached.
    assert session.recording_seconds == pytest.approx(3.0, abs=0.05)
    assert [_loud(caller, s) for s in (0.1, 0.6, 1.3, 2.5)] == [False, True, True, False]
    assert [_loud(agent, s) for s in (0.1, 1.0, 2.1, 2.8)] == [False, False, True, True]
    timeline = [(e["id"], e["at"]) for e in session.recording_transcript]
    assert timeline[:2] == [("item_u", 0.5), ("item_a", 2.0)], "who spoke when survives"
    assert timeline[2][0] == "recording_salvaged"
    assert timeline[2][1] == pytest.approx(session.recording_seconds, abs=0.001)
    assert not await sync_to_async(spool_root().joinpath(session.id.hex).exists)()

    served = await rest.get("/sessions/sess_killed/recording")
    assert served.status_code == 200 and served.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(served.content)) as wav:
        assert (wav.getnchannels(), wav.getnframes()) == (2, frames)


def test_a_track_cut_mid_sample_is_salvaged_to_its_last_whole_sample(media):
    session = LiveSession.objects.create(model="gpt-realtime", upstream_id="sess_cut")
    recording = _abandoned(session, caller=1.0, agent=0.5)
    caller_pcm = spool_root() / session.id.hex / "0.pcm"
    os.truncate(caller_pcm, os.path.getsize(caller_pcm) - 1)  # the last sample half written
    with open(spool_root() / session.id.hex / "notes.jsonl", "ab") as notes:
        notes.write(b'{"id":"item_x","role":"ag')  # a note the death cut short
    assert recorder.salvage_abandoned() == 1
    session.refresh_from_db()
    frames, data, (caller, _) = _wav(session.recording.name)
    assert frames == RATE - 1 and data == frames * 4
    assert session.recording_seconds == pytest.approx(frames / RATE)
    assert [e["id"] for e in session.recording_transcript] == ["item_u", "recording_salvaged"]
    assert recording.key == session.id and recorder.salvage_abandoned() == 0, "salvaged once"


def test_a_spool_with_no_audio_written_gives_no_recording_and_is_deleted(media):
    session = LiveSession.objects.create(model="gpt-realtime", upstream_id="sess_silent")
    _abandoned(session, caller=0.5)
    os.truncate(spool_root() / session.id.hex / "0.pcm", 0)  # nothing reached the disk
    assert recorder.salvage_abandoned() == 0
    session.refresh_from_db()
    assert not session.recording and session.recording_seconds is None
    assert not (spool_root() / session.id.hex).exists()


def test_a_finished_recording_leaves_no_spool(media):
    session = LiveSession.objects.create(model="gpt-realtime", upstream_id="sess_done")
    recording = Recording(session.id, started_at=0.0)
    recording.add(0, _tone(RATE), 0.0)
    assert recorder.flush()
    assert (spool_root() / session.id.hex / "0.pcm").stat().st_mode & 0o077 == 0, "voices"
    assert recorder.salvage_abandoned() == 0, "its writer is alive"
    recording.finish(at=1.0)
    assert recorder.flush()
    session.refresh_from_db()
    assert session.recording_seconds == 1.0
    assert list(spool_root().iterdir()) == []


def test_a_recording_stops_at_the_wav_limit_with_a_note_on_its_timeline(
    media, monkeypatch, caplog
):
    monkeypatch.setattr(recorder, "MAX_FRAMES", RATE)  # 1 s stands for 4 GiB
    session = LiveSession.objects.create(model="gpt-realtime", upstream_id="sess_capped")
    recording = Recording(session.id, started_at=0.0)
    for n in range(75):  # 3 s of the caller, and the agent's reply after a silence
        recording.add(0, _tone(RATE // 25), n * 0.04)
    recording.add(1, _tone(RATE // 2), 2.0)
    recording.note({"id": "item_u", "role": "user", "text": "Hello?"}, 0.0)
    with caplog.at_level(logging.WARNING, logger="apps.sessions.recorder"):
        recording.finish(at=3.0)
        assert recorder.flush()
    session.refresh_from_db()
    frames, _, (caller, agent) = _wav(session.recording.name)
    assert frames == RATE and session.recording_seconds == 1.0, "stopped at the limit"
    assert _loud(caller, 0.5) and not _loud(agent, 0.5)
    assert [(e["id"], e["at"]) for e in session.recording_transcript] == [
        ("item_u", 0.0), ("recording_capped", 1.0)
    ]
    assert "4 GiB" in recording_timeline(session)[1]["text"], "the page shows why it stops"
    assert sum("WAV limit" in r.getMessage() for r in caplog.records) == 1, "logged once"


def test_the_wav_limit_is_the_formats():
    """The RIFF size (the data and 36 bytes of header) of the longest recording fits 32 bits;
    one more frame would not."""
    assert 36 + recorder.MAX_FRAMES * 4 <= 0xFFFF_FFFF < 36 + (recorder.MAX_FRAMES + 1) * 4
