"""A recording's spool: what the recorder has written of a call so far, on disk under a name,
so that a process killed during the call (SIGKILL, the OOM killer, a lost machine) leaves it
behind to be made into the recording, instead of the anonymous temporary files that vanished
with their process and took the whole call with them.

A spool is a folder `MEDIA_ROOT/recording-spool/{session key}/` (readable by the console's
user alone) with each side's PCM (`0.pcm` the caller, `1.pcm` the agent) and `notes.jsonl`:
its first line when the recording began, then each final transcript entry as the recorder
noted it. Its writer holds an exclusive `flock` on `notes.jsonl` for as long as it writes; the
kernel lets go of it when the writer's process dies, however it dies. So a lock that can be
taken is the one sure sign that the writer is gone, and no database state, heartbeat or clock
has to be trusted for it: a process that is only paused keeps its lock and its recording.
Whoever holds the lock (the writer, or the process that salvages the spool) deletes the
folder before letting go, so a spool is made into a recording once.

Why not keep a WAV's header valid as it grows instead: the recorder does not write the WAV
until the call is over. It keeps the two sides apart until then, since the agent's audio
arrives faster than it plays and is cut back when the caller interrupts it; interleaving as
it goes would have to wait for each side to settle, for no gain over doing it at the end.

Each side's file is flushed once per drain of the recorder (a few times a second, not per
piece of audio), which a killed process's page cache keeps; it is synced to the disk every
`SYNC_SECONDS`, which is what a power loss may cost.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings

SYNC_SECONDS = 10.0
NOTES = "notes.jsonl"
STALE_HIDDEN = 60.0  # seconds: a spool still hidden after this lost its writer while being made


def spool_root() -> Path:
    """Where spools are: on this machine's disk, beside the recordings' default place.
    MEDIA_ROOT even when the recordings are stored elsewhere: a spool is local, and salvaged
    by a process of the same machine."""
    return Path(settings.MEDIA_ROOT) / "recording-spool"


def _open(path: Path, mode: str):
    flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if mode == "w+b" else 0)
    return os.fdopen(os.open(path, flags, 0o600), mode)


class Spool:
    def __init__(self, folder: Path, notes) -> None:
        self.folder = folder
        self._notes = notes  # its lock is the spool's
        self.tracks: list = [None, None]
        self._synced = time.monotonic()

    @classmethod
    def create(cls, key: uuid.UUID, *, started_at: float, entries: list[dict]) -> Spool:
        """A new spool, locked, with the entries noted so far. It is made under a hidden name
        and renamed once locked, so no one can take its lock before its writer."""
        root = spool_root()
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        hidden = root / f".{key.hex}"
        hidden.mkdir(mode=0o700)
        notes = _open(hidden / NOTES, "w+b")
        fcntl.flock(notes, fcntl.LOCK_EX)
        spool = cls(root / key.hex, notes)
        spool._append({"key": key.hex, "started_at": started_at})
        for entry in entries:
            spool._append(entry)
        notes.flush()
        hidden.rename(spool.folder)
        return spool

    def track(self, side: int):
        """This side's file, made at its first audio."""
        if self.tracks[side] is None:
            self.tracks[side] = _open(self.folder / f"{side}.pcm", "w+b")
        return self.tracks[side]

    def note(self, entry: dict) -> None:
        self._append(entry)
        self._notes.flush()

    def _append(self, entry: dict) -> None:
        self._notes.write(json.dumps(entry, separators=(",", ":")).encode() + b"\n")

    def flush(self) -> None:
        """What was written since the last drain, to the operating system; to the disk every
        SYNC_SECONDS."""
        sync = time.monotonic() - self._synced >= SYNC_SECONDS
        for file in (*self.tracks, self._notes):
            if file is not None:
                file.flush()
                if sync:
                    os.fsync(file.fileno())
        if sync:
            self._synced = time.monotonic()

    def read_notes(self) -> tuple[float, list[dict]]:
        """When the recording began, and the entries noted, the latest of each (a line that
        the writer's death cut short is left out)."""
        self._notes.seek(0)
        lines = self._notes.read().split(b"\n")
        started_at = float(json.loads(lines[0])["started_at"])
        entries: dict[str, dict] = {}
        for line in lines[1:]:
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                entries[entry["id"]] = entry
        return started_at, list(entries.values())

    def remove(self) -> None:
        """Delete the spool, then let go of its lock."""
        try:
            shutil.rmtree(self.folder, ignore_errors=True)
        finally:
            self.release()

    def release(self) -> None:
        """Let go of the spool, leaving it for whoever looks next."""
        for file in (*self.tracks, self._notes):
            if file is not None:
                file.close()
        self.tracks = [None, None]


def abandoned() -> Iterator[Spool]:
    """The spools whose writer is gone, each locked while the caller works on it (it calls
    `remove` when done, or the spool is left for the next look)."""
    root = spool_root()
    if not root.is_dir():
        return
    for folder in sorted(root.iterdir()):
        hidden = folder.name.startswith(".")
        if hidden and not _older_than(folder, STALE_HIDDEN):
            continue  # being made: its writer may not have locked it yet
        spool = _claim(folder)
        if spool is None:
            continue
        if hidden:  # its writer died making it: it holds no audio
            spool.remove()
            continue
        for side in (0, 1):
            path = folder / f"{side}.pcm"
            if path.exists():
                spool.tracks[side] = _open(path, "r+b")
        yield spool


def _older_than(folder: Path, seconds: float) -> bool:
    try:
        return time.time() - folder.stat().st_mtime > seconds
    except OSError:
        return False


def _claim(folder: Path) -> Spool | None:
    """The spool in this folder, locked, if no one else holds it and it is still there."""
    try:
        notes = _open(folder / NOTES, "r+b")
    except OSError:  # removed meanwhile, or not a spool
        return None
    try:
        fcntl.flock(notes, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # The holder deletes the folder before letting go: the file locked must still be it.
        if os.fstat(notes.fileno()).st_ino != os.stat(folder / NOTES).st_ino:
            raise FileNotFoundError(folder)
    except OSError:
        notes.close()
        return None
    return Spool(folder, notes)
