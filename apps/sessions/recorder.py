"""Recordings: both sides of a voice call on one timeline, written off the relay's hot path.

The actor hands each piece of the call's audio (PCM16 mono 24 kHz, already decoded) to a
`Recording` with the time it passed the relay, and finishes it when the session ends. Handing
in is an append to the recording's own deque, nothing more: one thread per process takes what
has accumulated in every recording each `DRAIN_SECONDS` (a few wake-ups a second, however many
calls are recorded), in the order handed in:

- Each side is appended to a file of its own in the recording's spool (apps/sessions/
  spool.py), which outlives a process killed during the call. A piece is placed at the time
  it arrived, after silence if the side was silent since (a gap longer than `GAP`); a piece
  that arrives before the side's audio so far has played out (the agent's audio comes faster than
  real time) follows it directly. So both sides share the session's clock, and speech keeps
  its own pace. An agent item the caller stopped playing (`cut`) ends where it stopped: what
  was sent of it beyond that was never heard, and the agent's next audio comes in its place.
- Each final transcript entry is kept with its time (`at`, seconds into the recording, where
  its turn began), so that the recording can be played with its transcript as a timeline;
  the session's row gets them in that order.
- At the end the two sides are interleaved into a stereo WAV (channel 0 the caller, 1 the
  agent; the shorter side padded with silence to the call's length, the agent's audio that had
  not played when the call ended left out; the reply the end cut short kept on the timeline,
  marked interrupted), saved through Django's default storage, and the
  session's row is given its name and length.

A process that dies during a call (SIGKILL, the OOM killer) leaves the spool behind: every
process's housekeeping looks for spools whose writer is gone (`salvage_abandoned`) and makes
each into the recording as far as it was written, with its timeline, ending where the writer
stopped (a note on the timeline says so). Finishing or salvaging at the end, rather than
keeping a WAV valid as it grows, is explained in apps/sessions/spool.py.

The WAV format counts its bytes in 32 bits: a recording stops at `MAX_FRAMES` (4 GiB, some
12.4 hours), logged, with a note at that point on its timeline; the call goes on unrecorded.

A session with no audio at all has no recording. A saved WAV whose row the database cannot
take now (away, or locked) is named on it by the history writer once it can. A refused or
failed write is logged and costs that recording only; the call never waits for the disk,
and when the thread falls too far behind (`MAX_PENDING` pieces waiting in one recording),
audio is left out of that recording and logged, not queued without bound.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import threading
import uuid
import wave
from array import array
from collections import deque

from django.core.files import File
from django.core.files.storage import default_storage

from apps.realtime.transcript import NEVER_TRANSCRIBED
from apps.sessions.db import db_async, is_database_away, serialised_write
from apps.sessions.history import writer as history
from apps.sessions.spool import Spool, abandoned

log = logging.getLogger(__name__)

RATE = 24_000  # samples per second, each side
SAMPLE_BYTES = 2
GAP = 0.1  # seconds: a side silent for longer gets silence in its track
DRAIN_SECONDS = 0.25
MAX_PENDING = 15_000  # pieces waiting in one recording (about 5 minutes of a full-duplex call)
_BLOCK = RATE  # samples per side interleaved at a time
# The most stereo frames a WAV holds: its RIFF size (the data's bytes and 36 more) is 32 bits.
MAX_FRAMES = (0xFFFF_FFFF - 36) // (2 * SAMPLE_BYTES)
CAPPED = "The recording stopped here: a WAV file holds at most 4 GiB; the call went on."
SALVAGED = "The recording ends here: the process recording the call stopped."
_AUDIO, _NOTE, _CUT, _FINISH = "audio", "note", "cut", "finish"


class Recording:
    """One session's recording. `add`, `note` and `finish` are called by the actor; the work
    is done on the recorder thread."""

    def __init__(self, key: uuid.UUID, *, started_at: float) -> None:
        self.key = key
        self.started_at = started_at
        self.failed = False
        self._pending: deque[tuple] = deque()  # appended by the actor, drained by the thread
        self._spool: Spool | None = None  # made at the first audio
        self._files: list = [None, None]  # each side's file in the spool
        self._capped = False  # a side reached MAX_FRAMES (each side stops there)
        self._cursors = [0, 0]  # samples written, each side
        self._agent_item: tuple[str, int] | None = None  # the latest agent item, where it began
        self._dropped = False
        self._watched = False
        self._entries: dict[str, dict] = {}  # transcript entries by id, in order of first final

    def add(self, side: int, pcm: bytes, at: float, *, item_id: str | None = None) -> None:
        """A piece of one side's audio (`item_id`: the agent's item it is of)."""
        if len(self._pending) >= MAX_PENDING:
            if not self._dropped:
                self._dropped = True
                log.warning("recorder is behind: audio of session %s left out", self.key)
            return
        self._hand_in((_AUDIO, side, pcm, at, item_id))

    def cut(self, item_id: str, audio_end_ms: int) -> None:
        """The caller stopped playing the agent's item at `audio_end_ms` of its audio."""
        self._hand_in((_CUT, item_id, audio_end_ms))

    def note(self, entry: dict, at: float) -> None:
        """A transcript entry is final (or final again, with new text); `at` is when its turn
        began, or when it became final if that is not known."""
        self._hand_in((_NOTE, entry, at))

    def finish(self, *, at: float) -> None:
        """The call is over: write the WAV (`recordings/{session key}.wav`)."""
        self._hand_in((_FINISH, at))

    def _hand_in(self, item: tuple) -> None:
        if self.failed:  # nothing more of this recording is written
            return
        self._pending.append(item)
        if not self._watched:  # the thread watches it from now until it is finished
            self._watched = True
            _writer.watch(self)

    def _drain(self) -> bool:
        """Write what has accumulated; True once the recording is finished (or failed)."""
        while self._pending:
            item = self._pending.popleft()
            try:
                if item[0] == _AUDIO:
                    self._write(*item[1:])
                elif item[0] == _NOTE:
                    self._note(*item[1:])
                elif item[0] == _CUT:
                    self._cut(*item[1:])
                else:
                    self._finish(f"recordings/{self.key.hex}.wav", item[1])
                    return True
            except Exception as exc:
                self._failed(exc)
                self._pending.clear()
                return True
        if self._spool is not None:
            try:
                self._spool.flush()
            except Exception as exc:
                self._failed(exc)
                return True
        return False

    # ------------------------------------------------------------------ on the recorder thread

    def _write(self, side: int, pcm: bytes, at: float, item_id: str | None) -> None:
        cursor = self._cursors[side]
        if cursor >= MAX_FRAMES:
            return
        if self._spool is None:  # removed in _finish, once the WAV is written
            entries = list(self._entries.values())
            self._spool = Spool.create(self.key, started_at=self.started_at, entries=entries)
        track = self._files[side] = self._spool.track(side)
        start = round((at - self.started_at) * RATE)
        if start - cursor > GAP * RATE:
            start = min(start, MAX_FRAMES)
            track.write(bytes((start - cursor) * SAMPLE_BYTES))
            cursor = self._cursors[side] = start
        if cursor + len(pcm) // SAMPLE_BYTES >= MAX_FRAMES:
            pcm = pcm[: (MAX_FRAMES - cursor) * SAMPLE_BYTES]
            self._cap()
        if item_id is not None and (self._agent_item is None or self._agent_item[0] != item_id):
            self._agent_item = (item_id, cursor)
        track.write(pcm)
        self._cursors[side] = cursor + len(pcm) // SAMPLE_BYTES

    def _cut(self, item_id: str, audio_end_ms: int) -> None:
        """Only the latest agent item is cut: nothing of another follows it yet."""
        if self._agent_item is None or self._agent_item[0] != item_id:
            return
        self._end_agent(self._agent_item[1] + audio_end_ms * RATE // 1000)

    def _cap(self) -> None:
        """A side reached the most a WAV holds: it stops there, and the timeline says so."""
        if self._capped:
            return
        self._capped = True
        log.warning(
            "recording of session %s stopped at the WAV limit of %d frames (4 GiB); "
            "the rest of the call is not recorded", self.key, MAX_FRAMES,
        )
        self._note({"id": "recording_capped", "role": "system", "text": CAPPED},
                   self.started_at + MAX_FRAMES / RATE)

    def _end_agent(self, end: int) -> None:
        """The agent's track ends at sample `end`: what followed was never heard."""
        if end < self._cursors[1]:
            self._files[1].truncate(end * SAMPLE_BYTES)
            self._files[1].seek(end * SAMPLE_BYTES)
            self._cursors[1] = end

    def _note(self, entry: dict, at: float) -> None:
        first = self._entries.get(entry["id"])
        when = first["at"] if first is not None else round(max(0.0, at - self.started_at), 3)
        noted = {**entry, "at": when}
        if first is not None and first.get("interrupted"):
            noted["interrupted"] = True  # a mark, once made, stays (as the core keeps it)
        self._entries[entry["id"]] = noted
        if self._spool is not None:
            self._spool.note(noted)

    def _note_cut_reply(self) -> None:
        """The agent's latest item is on the timeline even if the call ended while it was
        being spoken. The core makes such a turn final when it has its words (someone was
        watching); if not, its words were never read, and the turn is shown as spoken,
        interrupted, where its audio began."""
        if self._agent_item is None or self._agent_item[0] in self._entries:
            return
        item_id, began = self._agent_item
        self._entries[item_id] = {
            "id": item_id, "role": "agent", "text": NEVER_TRANSCRIBED, "done": True,
            "oob": False, "interrupted": True, "at": round(began / RATE, 3),
        }

    def _finish(self, name: str, at: float) -> None:
        try:
            if self._files == [None, None]:
                return
            # The agent's audio comes faster than it is spoken: what of it had not played
            # when the call ended was never heard, and the recording ends with the call.
            end = min(MAX_FRAMES, max(0, round((at - self.started_at) * RATE)))
            self._end_agent(end)
            self._note_cut_reply()
            self._store(name, max(end, self._cursors[0]))
        finally:
            self._close()

    def _store(self, name: str, samples: int) -> None:
        """The WAV of the first `samples` frames saved, and the session's row told."""
        with tempfile.TemporaryFile(prefix="oc-rec-") as out:
            self._interleave(out, samples)
            out.seek(0)
            stored = _save(name, out)
        from apps.sessions.models import LiveSession

        named = functools.partial(
            LiveSession.objects.filter(id=self.key).update,
            recording=stored,
            recording_seconds=samples / RATE,
            # In the order the turns began (a long reply becomes final after the
            # turns that followed it), as the recording plays them.
            recording_transcript=sorted(self._entries.values(), key=lambda e: e["at"]),
        )
        try:
            with serialised_write():
                named()
        except Exception as exc:
            if not is_database_away(exc):
                raise
            # The WAV is saved: its row is told when the database takes writes again, as
            # the history is (which waits out an outage), or no one could ever find it.
            log.warning("recording %s: its row waits for the database: %r", stored, exc)
            history.submit(named)

    def _close(self) -> None:
        """The spool deleted: the recording is saved, or lost."""
        if self._spool is not None:
            self._spool.remove()
        self._spool = None
        self._files = [None, None]

    def _interleave(self, out, samples: int) -> None:
        with wave.open(out, "wb") as wav:
            wav.setnchannels(2)
            wav.setsampwidth(SAMPLE_BYTES)
            wav.setframerate(RATE)
            for track in self._files:
                if track is not None:
                    track.seek(0)
            done = 0
            while done < samples:
                n = min(_BLOCK, samples - done)
                stereo = array("h", bytes(n * 2 * SAMPLE_BYTES))
                for channel, track in enumerate(self._files):
                    if track is None:
                        continue
                    side = array("h")
                    side.frombytes(track.read(n * SAMPLE_BYTES))
                    if len(side) < n:  # this side ended earlier: silence
                        side.extend(array("h", bytes((n - len(side)) * SAMPLE_BYTES)))
                    stereo[channel::2] = side
                wav.writeframes(stereo.tobytes())
                done += n

    def _failed(self, exc: BaseException) -> None:
        self.failed = True
        log.error("recording of session %s failed: %r", self.key, exc)
        self._close()


def _save(name: str, content) -> str:
    """`content` saved under `name` (or the storage's free variant of it). A write that fails
    part way (a full disk) leaves no part-written file: no row would name it, so nothing would
    ever delete it, and it would keep the space that later recordings need."""
    name = default_storage.get_available_name(name)
    try:
        return default_storage.save(name, File(content))
    except Exception:
        try:
            default_storage.delete(name)
        except Exception as exc:
            log.warning("could not delete the part-written recording %s: %r", name, exc)
        raise


def salvage_abandoned() -> int:
    """Make each spool whose writer died into its session's recording (see the module's
    docstring); how many were. One that cannot be made now (the database is away) is left for
    the next look; one that fails otherwise is logged and deleted, as a failed write is."""
    salvaged = 0
    for spool in abandoned():
        try:
            salvaged += _salvage(spool)
        except Exception as exc:
            if is_database_away(exc):
                log.warning("salvaging the recording in %s waits for the database", spool.folder)
                spool.release()
                continue
            log.error("salvaging the recording in %s failed: %r", spool.folder, exc)
            spool.remove()
    return salvaged


def _salvage(spool: Spool) -> bool:
    from apps.sessions.models import LiveSession

    key = uuid.UUID(spool.folder.name)
    named = LiveSession.objects.filter(id=key).values_list("recording", flat=True).first()
    if named is None or named:  # the session is deleted, or its WAV was saved before the end
        spool.remove()
        return False
    started_at, entries = spool.read_notes()
    recording = Recording(key, started_at=started_at)
    recording._spool, recording._files = spool, spool.tracks
    recording._entries = {entry["id"]: entry for entry in entries}
    stopped = 0.0  # when the writer last wrote
    for side, track in enumerate(spool.tracks):
        if track is not None:
            stat = os.fstat(track.fileno())
            stopped = max(stopped, stat.st_mtime)
            # A piece the death cut short ends at its last whole sample.
            recording._cursors[side] = min(stat.st_size // SAMPLE_BYTES, MAX_FRAMES)
            track.truncate(recording._cursors[side] * SAMPLE_BYTES)
    caller, agent = recording._cursors
    if not caller and not agent:
        recording._close()
        return False
    # The agent's audio not yet played when the writer stopped was never heard (as at an end).
    end = max(caller, min(agent, round((stopped - started_at) * RATE)))
    recording._end_agent(end)
    recording._entries["recording_salvaged"] = {
        "id": "recording_salvaged", "role": "system", "text": SALVAGED, "at": round(end / RATE, 3)
    }
    name = f"recordings/{key.hex}.wav"
    if default_storage.exists(name):  # a save the death cut short: no row names it
        default_storage.delete(name)
    try:
        recording._store(name, end)
    finally:
        recording._close()
    log.warning("recording of session %s salvaged: its writer stopped at %.1f s", key, end / RATE)
    return True


async def housekeeping_chore() -> None:
    """Every process: salvage the recordings whose writers died."""
    await db_async(salvage_abandoned)()


class RecorderThread:
    """The process's one recorder thread, started with the first recording handed in. Every
    DRAIN_SECONDS it drains the recordings it watches; a finished one is forgotten."""

    def __init__(self) -> None:
        self._watched: set[Recording] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._drained = threading.Condition(self._lock)
        self._rounds = 0
        self._thread: threading.Thread | None = None

    def watch(self, recording: Recording) -> None:
        with self._lock:
            self._watched.add(recording)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
                self._thread.start()

    def pending(self) -> int:
        """How many recordings are not written yet (being made, or being saved)."""
        return len(self._watched)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything handed in so far is written (tests, shutdown)."""
        with self._lock:
            if self._thread is None:
                return True
            target = self._rounds + 2  # a round that began after this call has ended
            self._wake.set()
            return self._drained.wait_for(lambda: self._rounds >= target, timeout)

    def _run(self) -> None:
        while True:
            self._wake.wait(DRAIN_SECONDS)
            self._wake.clear()
            with self._lock:
                watched = list(self._watched)
            done = [recording for recording in watched if recording._drain()]
            with self._lock:
                self._watched.difference_update(done)
                self._rounds += 1
                self._drained.notify_all()
                if any(recording._pending for recording in self._watched):
                    self._wake.set()


_writer = RecorderThread()


def flush(timeout: float = 10.0) -> bool:
    return _writer.flush(timeout)


def pending() -> int:
    return _writer.pending()
