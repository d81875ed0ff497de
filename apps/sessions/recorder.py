"""Recordings: both sides of a voice call on one timeline, written off the relay's hot path.

The actor hands each piece of the call's audio (PCM16 mono 24 kHz, already decoded) to a
`Recording` with the time it passed the relay, and finishes it when the session ends. One
thread per process does the rest, in the order handed in:

- Each side is appended to a temporary file of its own. A piece is placed at the time it
  arrived, after silence if the side was silent since (a gap longer than `GAP`); a piece that
  arrives before the side's audio so far has played out (the agent's audio comes faster than
  real time) follows it directly. So both sides share the session's clock, and speech keeps
  its own pace.
- Each final transcript entry is kept with its time (`at`, seconds into the recording), so
  that the recording can be played with its transcript as a timeline.
- At the end the two sides are interleaved into a stereo WAV (channel 0 the caller, 1 the
  agent; the shorter side padded with silence to the call's length), saved through Django's
  default storage, and the session's row is given its name and length.

A session with no audio at all has no recording. A refused or failed write is logged and
costs that recording only; the call never waits for the disk, and when the thread falls too
far behind (`MAX_PENDING` pieces), audio is dropped from the recording and logged, not queued
without bound.
"""

from __future__ import annotations

import logging
import queue
import tempfile
import threading
import uuid
import wave
from array import array

from django.core.files import File
from django.core.files.storage import default_storage

from apps.sessions.db import serialised_write

log = logging.getLogger(__name__)

RATE = 24_000  # samples per second, each side
SAMPLE_BYTES = 2
GAP = 0.1  # seconds: a side silent for longer gets silence in its track
MAX_PENDING = 20_000  # pieces handed in and not yet written (about 7 minutes of a full-duplex call)
_BLOCK = RATE  # samples per side interleaved at a time


class Recording:
    """One session's recording. `add` and `finish` are called by the actor; the work is
    done on the recorder thread."""

    def __init__(self, key: uuid.UUID, *, started_at: float) -> None:
        self.key = key
        self.started_at = started_at
        self.failed = False
        self._files: list = [None, None]
        self._cursors = [0, 0]  # samples written, each side
        self._dropped = False
        self._entries: dict[str, dict] = {}  # transcript entries by id, in order of first final

    def note(self, entry: dict, at: float) -> None:
        """A transcript entry is final (or final again, with new text); `at` is when its turn
        began, or when it became final if that is not known."""
        _writer.put(self, self._note, (entry, at))

    def add(self, side: int, pcm: bytes, at: float) -> None:
        _writer.put(self, self._write, (side, pcm, at))

    def finish(self, *, at: float) -> None:
        """The call is over: write the WAV (`recordings/{session key}.wav`)."""
        _writer.put(self, self._finish, (f"recordings/{self.key.hex}.wav", at))

    # ------------------------------------------------------------------ on the recorder thread

    def _write(self, side: int, pcm: bytes, at: float) -> None:
        if self.failed:
            return
        track = self._files[side]
        if track is None:
            # Closed in _finish, once the WAV is written.
            track = self._files[side] = tempfile.TemporaryFile(prefix="oc-rec-")  # noqa: SIM115
        start = round((at - self.started_at) * RATE)
        cursor = self._cursors[side]
        if start - cursor > GAP * RATE:
            track.write(bytes((start - cursor) * SAMPLE_BYTES))
            cursor = start
        track.write(pcm)
        self._cursors[side] = cursor + len(pcm) // SAMPLE_BYTES

    def _note(self, entry: dict, at: float) -> None:
        first = self._entries.get(entry["id"])
        when = first["at"] if first is not None else round(max(0.0, at - self.started_at), 3)
        self._entries[entry["id"]] = {**entry, "at": when}

    def _finish(self, name: str, at: float) -> None:
        try:
            if self.failed or self._files == [None, None]:
                return
            samples = max(round((at - self.started_at) * RATE), *self._cursors)
            with tempfile.TemporaryFile(prefix="oc-rec-") as out:
                self._interleave(out, samples)
                out.seek(0)
                stored = default_storage.save(name, File(out))
            from apps.sessions.models import LiveSession

            with serialised_write():
                LiveSession.objects.filter(id=self.key).update(
                    recording=stored,
                    recording_seconds=samples / RATE,
                    recording_transcript=list(self._entries.values()),
                )
        finally:
            for track in self._files:
                if track is not None:
                    track.close()
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


class RecorderThread:
    """The process's one recorder thread, started with the first piece handed in."""

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=MAX_PENDING)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def put(self, recording: Recording | None, work, args: tuple) -> None:
        if self._thread is None:
            self._start()
        try:
            self._queue.put_nowait((recording, work, args))
        except queue.Full:
            if recording is not None and not recording._dropped:
                recording._dropped = True
                log.warning("recorder is behind: audio of session %s left out", recording.key)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything handed in so far is written (tests, shutdown)."""
        done = threading.Event()
        self.put(None, done.set, ())
        return done.wait(timeout)

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            recording, work, args = self._queue.get()
            try:
                work(*args)
            except Exception as exc:
                if recording is None:
                    log.exception("recorder work failed")
                else:
                    recording._failed(exc)


_writer = RecorderThread()


def flush(timeout: float = 10.0) -> bool:
    return _writer.flush(timeout)

