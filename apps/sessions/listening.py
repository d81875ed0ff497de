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
the service does. A large G.711 piece (an append may hold minutes of audio) is decoded a few
seconds of audio at a time, giving the event loop back in between: decoded at once, it would
stop every session of the process for as long.
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
G711_SLICE = 24_000  # G.711 bytes (3 s of audio) decoded between returns to the event loop
G711_TYPES = {"pcmu": "audio/pcmu", "pcma": "audio/pcma"}


def _raw(encoded: str) -> bytes | None:
    try:
        return binascii.a2b_base64(encoded, strict_mode=True)
    except (binascii.Error, ValueError):
        return None


def pcm16_24k(encoded: str, audio_format: str) -> bytes | None:
    """Base64 audio in a session's format as PCM16 mono 24 kHz; None when it is malformed.
    PCM16 comes as it was sent, an odd byte at the end too (`AudioTap` completes the sample)."""
    raw = _raw(encoded)
    if raw is None or audio_format not in G711_TYPES:
        return raw
    return audio.g711_to_pcm16_24k(raw, G711_TYPES[audio_format])


async def g711_pcm16_24k_in_slices(encoded: str, audio_format: str) -> bytes | None:
    """`pcm16_24k` of a large G.711 piece, `G711_SLICE` bytes at a time, the event loop given
    back between slices. Each slice is decoded with the first byte of the next, so that its
    last sample leads into the next one as in a piece decoded at once."""
    raw = _raw(encoded)
    if raw is None:
        return None
    format_type = G711_TYPES[audio_format]
    slices = []
    for start in range(0, len(raw), G711_SLICE):
        size = min(G711_SLICE, len(raw) - start)
        pcm = audio.g711_to_pcm16_24k(raw[start : start + size + 1], format_type)
        slices.append(pcm[: 6 * size])  # 3 samples of 2 bytes each code
        await asyncio.sleep(0)
    return b"".join(slices)


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
        if piece.format in G711_TYPES and len(piece.audio) > 4 * G711_SLICE // 3:
            pcm = await g711_pcm16_24k_in_slices(piece.audio, piece.format)
        else:
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
