"""Recordings: both sides on one timeline in a stereo WAV, written off the call's path, and a
failed write costs only that recording."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import sqlite3
import time
import wave
from array import array
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.core.files.storage import default_storage
from django.db import connection

from apps.realtime.audio import pcm16_rms
from apps.realtime.transcript import NEVER_TRANSCRIBED
from apps.sessions import recorder
from apps.sessions.models import LiveSession
from apps.sessions.recorder import RATE, Recording
from tests.support.servers import served_to_a_reader_that_stops

pytestmark = pytest.mark.django_db(transaction=True)

CHUNK = RATE * 40 // 1000  # 40 ms


def _tone(samples: int, amplitude: int = 6000) -> bytes:
    return array("h", [amplitude if (i // 24) % 2 else -amplitude for i in range(samples)]).tobytes()


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def _channels(name: str) -> tuple[int, list[bytes]]:
    with default_storage.open(name) as stored, wave.open(io.BytesIO(stored.read())) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, RATE)
        frames = array("h")
        frames.frombytes(wav.readframes(wav.getnframes()))
        return wav.getnframes(), [frames[0::2].tobytes(), frames[1::2].tobytes()]


def _loud(track: bytes, second: float) -> bool:
    window = track[int(second * RATE) * 2 : int((second + 0.1) * RATE) * 2]
    return pcm16_rms(window) > 1000


def test_both_sides_are_on_the_calls_timeline_with_silence_between(media):
    session = LiveSession.objects.create(model="gpt-realtime", upstream_id="sess_rec1")
    recording = Recording(session.id, started_at=100.0)
    for n in range(25):  # the caller speaks for 1 s, in real time, from 0.5 s
        recording.add(0, _tone(CHUNK), 100.5 + n * 0.04)
    for _ in range(25):  # the agent's 1 s reply arrives at once at 2.0 s, faster than it plays
        recording.add(1, _tone(CHUNK), 102.0)
    recording.note({"id": "item_u", "role": "user", "text": "[spoken; no transcript yet]"}, 100.5)
    recording.note({"id": "item_a", "role": "agent", "text": "On its way.", "request_id": "req_1"}, 102.0)
    recording.note({"id": "item_u", "role": "user", "text": "Where is it?"}, 101.6)  # transcribed later
    recording.finish(at=104.0)
    assert recorder.flush()

    session.refresh_from_db()
    assert session.recording.name == f"recordings/{session.id.hex}.wav"
    assert session.recording_seconds == pytest.approx(4.0)
    frames, (caller, agent) = _channels(session.recording.name)
    assert frames == 4 * RATE, "the call's length"
    assert [_loud(caller, s) for s in (0.1, 0.6, 1.3, 2.5, 3.5)] == [False, True, True, False, False]
    assert [_loud(agent, s) for s in (0.1, 1.0, 2.1, 2.8, 3.5)] == [False, False, True, True, False]
    assert session.recording_transcript == [
        {"id": "item_u", "role": "user", "text": "Where is it?", "at": 0.5},
        {"id": "item_a", "role": "agent", "text": "On its way.", "request_id": "req_1", "at": 2.0},
    ], "each turn where it began, with its latest text"


def test_the_transcript_is_stored_in_the_order_turns_began_with_its_marks_kept(media):
    session = LiveSession.objects.create(model="gpt-realtime", upstream_id="sess_rec_order")
    recording = Recording(session.id, started_at=100.0)
    recording.add(0, _tone(CHUNK), 100.0)
    recording.note({"id": "item_u", "role": "user", "text": "Tell me a story."}, 100.0)
    recording.note({"id": "item_n", "role": "system", "text": "A VIP."}, 117.4)
    # A long reply that began at 2.3 s is final last; its first final said it was interrupted.
    recording.note({"id": "item_l", "role": "agent", "text": "Once", "interrupted": True}, 102.3)
    recording.note({"id": "item_l", "role": "agent", "text": "Once upon a time"}, 119.0)
    recording.finish(at=120.0)
    assert recorder.flush()
    session.refresh_from_db()
    assert [(e["id"], e["at"]) for e in session.recording_transcript] == [
        ("item_u", 0.0), ("item_l", 2.3), ("item_n", 17.4)
    ], "sorted by where each turn began"
    assert session.recording_transcript[1]["interrupted"] is True, "the mark stays with its text"


def test_a_session_without_audio_has_no_recording(media):
    session = LiveSession.objects.create(model="gpt-realtime", upstream_id="sess_rec2")
    Recording(session.id, started_at=0.0).finish(at=5.0)
    assert recorder.flush()
    session.refresh_from_db()
    assert not session.recording and session.recording_seconds is None


def test_a_refused_write_is_logged_and_the_next_recording_is_written(settings, tmp_path, caplog):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the storage wants a folder")
    settings.MEDIA_ROOT = blocked
    first = LiveSession.objects.create(model="gpt-realtime", upstream_id="sess_rec3")
    recording = Recording(first.id, started_at=0.0)
    recording.add(0, _tone(CHUNK), 0.0)
    recording.finish(at=1.0)
    assert recorder.flush()
    assert "recording of session" in caplog.text and str(first.id) in caplog.text
    first.refresh_from_db()
    assert not first.recording

    settings.MEDIA_ROOT = tmp_path / "media"
    second = LiveSession.objects.create(model="gpt-realtime", upstream_id="sess_rec4")
    recording = Recording(second.id, started_at=0.0)
    recording.add(1, _tone(CHUNK), 0.0)
    recording.finish(at=1.0)
    assert recorder.flush()
    second.refresh_from_db()
    assert second.recording, "the recorder thread went on"


def test_a_disk_that_fills_during_the_write_leaves_no_partial_file(media, monkeypatch, caplog):
    """A part-written WAV would be named by no row: nothing (the retention included) would ever
    delete it, and it would hold on to the space every later recording needs."""

    class DiskFills(recorder.File):
        def chunks(self, chunk_size=None):
            yield next(super().chunks(chunk_size=4096))
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(recorder, "File", DiskFills)
    session = LiveSession.objects.create(model="gpt-realtime", upstream_id="sess_rec_full")
    recording = Recording(session.id, started_at=0.0)
    recording.add(0, _tone(RATE), 0.0)
    recording.finish(at=1.0)
    assert recorder.flush()
    assert "No space left on device" in caplog.text
    assert not list((media / "recordings").iterdir()), "the part written was deleted"
    session.refresh_from_db()
    assert not session.recording


def test_a_recording_finished_while_the_database_is_locked_is_named_on_its_row_later(
    media, monkeypatch
):
    """The WAV is saved; its row, which the REST hook and the retention read, is told once the
    database takes writes again (as the history is), not given up on with the file orphaned."""
    from apps.sessions.history import writer as history

    session = LiveSession.objects.create(model="gpt-realtime", upstream_id="sess_rec_locked")
    locked_write = recorder.serialised_write

    @contextlib.contextmanager
    def impatient():
        connection.ensure_connection()  # the recorder thread's own: 10 ms of busy wait, not 20 s
        connection.connection.execute("PRAGMA busy_timeout = 10")
        with locked_write():
            yield

    monkeypatch.setattr(recorder, "serialised_write", impatient)
    holder = sqlite3.connect(connection.settings_dict["NAME"], isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's write transaction
    try:
        recording = Recording(session.id, started_at=0.0)
        recording.add(0, _tone(CHUNK), 0.0)
        recording.finish(at=1.0)
        assert recorder.flush()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    history.flush_sync()
    session.refresh_from_db()
    assert session.recording and session.recording_seconds == 1.0
    assert default_storage.exists(session.recording.name)


# ---------------------------------------------------------------------------- over HTTP


def _recorded(upstream_id: str, *, seconds: float = 1.0) -> LiveSession:
    session = LiveSession.objects.create(model="gpt-realtime", upstream_id=upstream_id)
    recording = Recording(session.id, started_at=0.0)
    recording.add(0, _tone(int(seconds * RATE)), 0.0)
    recording.finish(at=seconds)
    assert recorder.flush()
    session.refresh_from_db()
    return session


async def test_the_rest_hook_gives_the_recording_whole_or_the_range_a_player_asks_for(media, rest, make_token):
    from asgiref.sync import sync_to_async

    session = await sync_to_async(_recorded)("sess_http1")
    whole = await rest.get("/sessions/sess_http1/recording")
    assert whole.status_code == 200 and whole.headers["content-type"] == "audio/wav"
    assert whole.headers["cache-control"] == "private, no-store", "no cache keeps the voices"
    with wave.open(io.BytesIO(whole.content)) as wav:
        assert wav.getnchannels() == 2 and wav.getnframes() == RATE
    part = await rest.get("/sessions/sess_http1/recording", headers={"Range": "bytes=44-1043"})
    assert part.status_code == 206 and part.content == whole.content[44:1044]
    assert part.headers["content-range"] == f"bytes 44-1043/{len(whole.content)}"
    tail = await rest.get("/sessions/sess_http1/recording", headers={"Range": "bytes=-10"})
    assert tail.content == whole.content[-10:]
    beyond = await rest.get("/sessions/sess_http1/recording", headers={"Range": f"bytes={len(whole.content)}-"})
    assert beyond.status_code == 416
    # Past Python's 4300 digits, int() raises: a number that long is merely beyond the file.
    far = await rest.get("/sessions/sess_http1/recording", headers={"Range": f"bytes={'9' * 5000}-"})
    assert far.status_code == 416
    url = "/sessions/sess_http1/recording"
    backwards = await rest.get(url, headers={"Range": "bytes=5-3"})
    assert (backwards.status_code, backwards.content) == (200, whole.content), "not a range"
    etag = whole.headers["etag"]
    resumed = await rest.get(url, headers={"Range": "bytes=100-", "If-Range": etag})
    assert (resumed.status_code, resumed.content) == (206, whole.content[100:]), "resumed"
    other = await rest.get(url, headers={"Range": "bytes=100-", "If-Range": '"x"'})
    assert (other.status_code, other.content) == (200, whole.content), "another validator"

    assert (await rest.get("/sessions/sess_none/recording")).status_code == 404
    await sync_to_async(default_storage.delete)(session.recording.name)
    gone = await rest.get("/sessions/sess_http1/recording")
    assert gone.status_code == 404 and "sess_http1" in gone.json()["error"]["message"]
    writer_only = await sync_to_async(make_token)(scopes=["responses:write"])
    refused = await rest.get("/sessions/sess_http1/recording", headers={"Authorization": f"Bearer {writer_only}"})
    assert refused.status_code == 403
    assert (await rest.get("/sessions/sess_http1/recording", headers={"Authorization": ""})).status_code == 401


def _long_recording(upstream_id: str, megabytes: int) -> str:
    """A recording of `megabytes` (about a minute and a half a 16 MB) where Daphne stores them."""
    session = LiveSession.objects.create(model="gpt-realtime", upstream_id=upstream_id)
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(bytes(megabytes * 1024 * 1024))
    name = default_storage.save(f"recordings/{session.id.hex}.wav", io.BytesIO(out.getvalue()))
    LiveSession.objects.filter(pk=session.pk).update(recording=name)
    return name


@pytest.mark.e2e
async def test_a_listener_that_stops_reading_makes_daphne_hold_no_more_of_the_recording(
    daphne, api_token
):
    """A call of an hour is some 350 MB: without waiting for the client's room, Daphne read it
    all into the connection's buffer at once, for a listener that had stopped."""
    name = await sync_to_async(_long_recording)("sess_long_call", 16)
    try:
        held = await asyncio.to_thread(
            served_to_a_reader_that_stops, daphne, "/api/v1/sessions/sess_long_call/recording", api_token, 3.0
        )
    finally:
        await sync_to_async(default_storage.delete)(name)
    assert not held, "Daphne sent the whole recording to a client that had stopped reading"


def test_recordings_past_the_retention_are_deleted_and_newer_ones_kept(media):
    from django.core.management import call_command
    from django.utils import timezone

    old, new = _recorded("sess_old"), _recorded("sess_new")
    LiveSession.objects.filter(id=old.id).update(started_at=timezone.now() - timedelta(days=31))
    out = io.StringIO()
    call_command("delete_old_recordings", stdout=out)
    assert "Deleted 1 recording" in out.getvalue()
    old.refresh_from_db()
    new.refresh_from_db()
    assert not old.recording and new.recording
    assert default_storage.exists(new.recording.name)
    assert not (media / "recordings" / f"{old.id.hex}.wav").exists()


# ---------------------------------------------------------------------------- on the pages


def test_the_session_page_and_the_admin_play_the_recording_with_its_timeline(media, client):
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    from apps.sessions.models import ResponseRequest

    session = _recorded("sess_page", seconds=3.0)
    LiveSession.objects.filter(id=session.id).update(
        status="ended",
        recording_transcript=[
            {"id": "item_1", "role": "user", "text": "Where is my parcel?", "at": 0.4},
            {"id": "item_2", "role": "agent", "text": "Let me see.", "at": 2.1, "interrupted": True},
        ],
    )
    ResponseRequest.objects.create(
        id="req_page", session=session, origin="console", status="completed", requested_by="ann",
        instructions="Offer the refund.", created_at=session.started_at + timedelta(seconds=1.5),
    )
    User = get_user_model()
    ann = User.objects.create_user("ann", password="pw")
    ann.user_permissions.add(Permission.objects.get(codename="listen_session"))
    User.objects.create_user("eve", password="pw")

    client.force_login(ann)
    page = client.get("/console/sessions/sess_page/").content.decode()
    assert "data-recording" in page and "/console/sessions/sess_page/recording.wav" in page
    seeks = [float(at) for at in re.findall(r'data-seek="([0-9.]+)"', page)]
    assert seeks == [0.4, 1.5, 2.1], "caller, the operator's request, then the agent: in order"
    assert "Offer the refund." in page and "interrupted" in page
    assert "data-listen-toggle" not in page, "an ended session has nothing to listen to"
    wav = client.get("/console/sessions/sess_page/recording.wav", HTTP_RANGE="bytes=0-43")
    assert wav.status_code == 206 and wav["Content-Range"].startswith("bytes 0-43/")

    client.force_login(User.objects.get(username="eve"))
    page = client.get("/console/sessions/sess_page/").content.decode()
    assert "data-recording" not in page, "no recording for an operator who may not listen"
    assert client.get("/console/sessions/sess_page/recording.wav").status_code == 403

    admin = User.objects.create_superuser("root", password="pw")
    client.force_login(admin)
    page = client.get(f"/admin/oc_sessions/livesession/{session.id}/change/").content.decode()
    assert "data-recording" in page and 'data-seek="1.5"' in page


def test_admin_staff_who_may_not_listen_get_no_player_for_a_recording(media, client):
    """The admin's session page offers the recording only to those the WAV is served to."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    session = _recorded("sess_staff", seconds=1.0)
    staff = get_user_model().objects.create_user("auditor", password="pw", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_livesession"))
    client.force_login(staff)
    page = client.get(f"/admin/oc_sessions/livesession/{session.id}/change/").content.decode()
    assert client.get("/console/sessions/sess_staff/recording.wav").status_code == 403
    assert "data-recording" not in page and "recording.wav" not in page, "a player they cannot play"
    assert "Hearing it needs the permission" in page, "the page says there is a recording"

    staff.user_permissions.add(Permission.objects.get(codename="listen_session"))
    page = client.get(f"/admin/oc_sessions/livesession/{session.id}/change/").content.decode()
    assert "data-recording" in page and "/console/sessions/sess_staff/recording.wav" in page


@pytest.fixture
def recorded(relay_settings, media):
    relay_settings.OC_RECORD_AUDIO = True


async def test_agent_audio_the_caller_cut_short_leaves_the_timeline_to_the_next_reply(
    recorded, caller, simulator
):
    """The service sends a reply's audio faster than it plays. When the caller stops playing
    it (`conversation.item.truncate`), the rest was never heard: the next reply is recorded
    where it came, not after the unheard rest of the first."""
    from apps.sessions.models import LiveSession as Session
    from tests.support.realtime import eventually

    await caller.send({"type": "session.update", "session": {
        "type": "realtime", "output_modalities": ["audio"],
        "audio": {"input": {"turn_detection": None}}}})
    await caller.until("session.updated", n=1)
    with simulator.configured(audio_pace=0, reply_audio_ms=3000):
        began = time.monotonic()
        await caller.send({"type": "response.create"})
        events = await caller.until("response.done")
        item_id = next(e for e in events if e["type"] == "response.output_item.added")["item"]["id"]
        await caller.send({"type": "conversation.item.truncate", "item_id": item_id,
                           "content_index": 0, "audio_end_ms": 300})
        await caller.until("conversation.item.truncated")
        await asyncio.sleep(1.0)
        second_at = time.monotonic() - began
        await caller.send({"type": "response.create"})
        await caller.until("response.done", n=2)
        await asyncio.sleep(0.5)  # the caller hears half a second of it, then hangs up
    await caller.communicator.disconnect()

    def written():
        return Session.objects.filter(upstream_id=caller.session_id).exclude(recording="").first()

    session = await eventually(written, timeout=10)
    _, (_, agent) = await sync_to_async(_channels)(session.recording.name)
    tenths = [n / 10 for n in range(len(agent) // 2 // (RATE // 10))]
    loud = [s for s in tenths if _loud(agent, s)]
    first = loud[0]  # where the first reply began; the second came second_at after it
    heard = [s for s in loud if s < first + second_at - 0.2]
    assert heard[-1] <= first + 0.35, f"the first reply's unheard rest is not recorded: {loud}"
    assert _loud(agent, first + second_at + 0.2), f"the second reply is where it came: {loud}"


async def test_a_reply_the_hang_up_cut_short_is_on_the_recordings_timeline_interrupted(
    recorded, caller, simulator
):
    """The caller hangs up while the agent speaks: the WAV ends at the hang-up, and the reply
    it cut is on the timeline shown with it, marked interrupted, where its audio began. Nobody
    watched, so its words were never read: it is shown as spoken."""
    from apps.sessions.models import LiveSession as Session
    from apps.sessions.recordings import recording_timeline
    from tests.support.realtime import eventually

    await caller.send({"type": "session.update", "session": {
        "type": "realtime", "output_modalities": ["audio"],
        "audio": {"input": {"turn_detection": None}}}})
    await caller.until("session.updated", n=1)
    with simulator.configured(audio_pace=1.0, reply_audio_ms=5000):
        await caller.send({"type": "response.create"})
        events = await caller.until("response.output_audio.delta")
    item_id = next(e for e in events if e["type"] == "response.output_item.added")["item"]["id"]
    await caller.communicator.disconnect()

    def written():
        return Session.objects.filter(upstream_id=caller.session_id).exclude(recording="").first()

    session = await eventually(written, timeout=10)
    [cut] = [e for e in session.recording_transcript if e["id"] == item_id]
    assert (cut["role"], cut["interrupted"], cut["text"]) == ("agent", True, NEVER_TRANSCRIBED)
    assert cut["at"] <= session.recording_seconds
    marks = await sync_to_async(recording_timeline)(session)
    assert [m["who"] for m in marks if m["kind"] == "agent"] == ["Agent · interrupted"]


def test_a_cut_reply_whose_words_the_core_had_keeps_them_on_the_timeline(media):
    """Watched, the core makes the cut turn final with its words (interrupted): the recording
    keeps that entry, not a second one for the same reply."""
    session = LiveSession.objects.create(model="gpt-realtime", upstream_id="sess_rec_cut_words")
    recording = Recording(session.id, started_at=100.0)
    recording.add(1, _tone(CHUNK), 101.0, item_id="item_a")
    entry = {"id": "item_a", "role": "agent", "text": "Ahoy", "done": True, "interrupted": True}
    recording.note(entry, 101.0)
    recording.finish(at=101.5)
    assert recorder.flush()

    session.refresh_from_db()
    assert session.recording_transcript == [{**entry, "at": 1.0}]


def test_agent_audio_not_yet_played_when_the_call_ended_is_not_recorded(media):
    """The service sends a reply faster than it is spoken: a caller who hangs up 1 s into a
    4 s reply heard 1 s of it. The recording ends with the call, not with 3 s of speech that
    nobody heard after it."""
    session = LiveSession.objects.create(model="gpt-realtime", upstream_id="sess_rec_hangup")
    recording = Recording(session.id, started_at=100.0)
    recording.add(0, _tone(CHUNK), 100.0)
    for _ in range(100):  # a 4 s reply, all of it sent at 1.0 s
        recording.add(1, _tone(CHUNK), 101.0, item_id="item_a")
    recording.finish(at=102.0)
    assert recorder.flush()

    session.refresh_from_db()
    assert session.recording_seconds == pytest.approx(2.0), "as long as the call"
    frames, (_, agent) = _channels(session.recording.name)
    assert frames == 2 * RATE, "the WAV ends with the call"
    assert _loud(agent, 1.85), "what was heard before the hang-up is kept"


def test_a_recording_on_disk_is_readable_by_the_consoles_user_alone(media):
    """A call's voices are personal data: other accounts on the machine may not read them."""
    path = media / _recorded("sess_rec_mode").recording.name
    assert oct(path.stat().st_mode & 0o777) == oct(0o600), "the file"
    assert oct(path.parent.stat().st_mode & 0o777) == oct(0o700), "the folder of recordings"
