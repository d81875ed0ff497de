"""The call's audio, as the actor copies it to listeners and the recorder.

The relay core taps a session's audio only while someone listens or the session is recorded
(`AudioTapped`); then the actor hands each piece here. A piece is decoded once — base64, and
G.711 to PCM16 24 kHz — and:

- sent to the session's listen group (`groups.listen_group`) in binary frames, byte 0 the
  side (0 caller, 1 agent), the rest PCM16 little-endian mono 24 kHz (CONTRACT section 6). The
  channel layer copies each to every listener, in this process or another. A burst of
  pieces (frames that came at once) would be handed in faster than listeners' channels are
  read, and a full channel misses messages: so pieces are held for `FLUSH_DELAY` (the actor
  is told when, `due`), those of one side that follow each other sent as one frame, and at
  once when `FLUSH_BYTES` are held (`flush`). A listener whose socket stops reading is
  dropped by the server (`operator_console/daphne_compat.py`), never slowing the call.
- handed to the session's `Recording` (when `OC_RECORD_AUDIO` is on), which writes on a thread
  of its own; an agent item the caller stopped playing (`AudioCut`) is cut there too.

A piece whose base64 is malformed is skipped: the upstream answers the caller's append, as
the service does.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import uuid
from collections.abc import Callable

from channels.layers import get_channel_layer

from apps.realtime import audio
from apps.realtime.relay import AudioCut, AudioTapped
from apps.sessions import groups
from apps.sessions.recorder import Recording

log = logging.getLogger(__name__)

LISTEN_AUDIO = "listen.audio"
LISTEN_ENDED = "listen.ended"
LISTEN_CUT = "listen.cut"
AGENT = 1  # the side of the agent's audio (0: the caller's)
FLUSH_DELAY = 0.04  # seconds audio is held for listeners (their players buffer 0.1 s)
FLUSH_BYTES = 48_000  # held at most: half a second of one side's audio


def pcm16_24k(encoded: str, audio_format: str) -> bytes | None:
    """Base64 audio in a session's format as PCM16 mono 24 kHz; None when it is malformed.
    PCM16 comes as it was sent, an odd byte at the end too (`AudioTap` completes the sample)."""
    try:
        raw = binascii.a2b_base64(encoded, strict_mode=True)
    except (binascii.Error, ValueError):
        return None
    if audio_format == "pcmu":
        return audio.resample_pcm16(audio.ulaw_decode(raw), 8000, 24000)
    if audio_format == "pcma":
        return audio.resample_pcm16(audio.alaw_decode(raw), 8000, 24000)
    return raw


class AudioTap:
    def __init__(
        self, key: uuid.UUID, *, record: bool, started_at: float, due: Callable[[], None]
    ) -> None:
        self.group = groups.listen_group(key)
        self.listening = False
        self.recording = Recording(key, started_at=started_at) if record else None
        self._due = due  # asks the actor to call `flush`
        self._held: list[bytearray] = []  # frames for listeners not sent yet, in order
        self._bytes_held = 0  # bytes in them
        # Each side's PCM16 is one stream, as the upstream takes it: a piece that ends within
        # a sample leaves its first byte here for the side's next piece.
        self._split: list[bytes] = [b"", b""]

    def listeners_changed(self, count: int) -> None:
        self.listening = count > 0
        if not self.listening:
            self._held, self._bytes_held = [], 0

    async def tapped(self, piece: AudioTapped) -> None:
        pcm = pcm16_24k(piece.audio, piece.format)
        if pcm is not None and piece.format == "pcm16":
            pcm = self._split[piece.side] + pcm
            whole = len(pcm) & ~1
            pcm, self._split[piece.side] = pcm[:whole], pcm[whole:]
        if not pcm:
            return
        if self.recording is not None:
            self.recording.add(piece.side, pcm, piece.at, item_id=piece.item_id)
        if self.listening:
            if self._held and self._held[-1][0] == piece.side:
                self._held[-1] += pcm
            else:
                self._held.append(bytearray((piece.side,)) + pcm)
            self._bytes_held += len(pcm)
            if self._bytes_held >= FLUSH_BYTES:
                await self.flush()
            elif self._bytes_held == len(pcm):  # the first piece held
                asyncio.get_running_loop().call_later(FLUSH_DELAY, self._due)

    async def flush(self) -> None:
        """Send the frames held for listeners."""
        frames, self._held, self._bytes_held = self._held, [], 0
        for frame in frames:
            message = {"type": LISTEN_AUDIO, "bytes": bytes(frame)}
            try:
                await get_channel_layer().group_send(self.group, message)
            except Exception as exc:  # listeners miss a piece; the call goes on
                log.warning("sending audio to %s failed: %r", self.group, exc)

    async def cut(self, cut: AudioCut) -> None:
        """The caller stopped playing an agent item: the recording leaves out what followed,
        and listeners are told (`listen.cut`) to drop the agent's audio they have not played
        yet (the service sends a reply faster than it is spoken: seconds of it may wait in a
        listener's player, which would go on speaking over the caller)."""
        if self.recording is not None:
            self.recording.cut(cut.item_id, cut.audio_end_ms)
        if self.listening:
            await self.flush()
            message = {"type": LISTEN_CUT, "side": AGENT}
            try:
                await get_channel_layer().group_send(self.group, message)
            except Exception as exc:  # listeners hear the rest; the call goes on
                log.warning("telling %s of a cut failed: %r", self.group, exc)

    def transcript_final(self, entry: dict, at: float) -> None:
        if self.recording is not None:
            self.recording.note(entry, at)

    async def finish(self, *, at: float) -> None:
        """The session is over: listeners are told (`listen.ended`), the recording written."""
        if self.recording is not None:
            self.recording.finish(at=at)
        if self.listening:
            await self.flush()
            self.listening = False
            try:
                await get_channel_layer().group_send(self.group, {"type": LISTEN_ENDED})
            except Exception as exc:
                log.warning("telling %s the session ended failed: %r", self.group, exc)
