"""Speech synthesis for the simulated service (and the demo callers): text → audible PCM16.

`espeak-ng --stdout` when it is installed (Debian's `espeak-ng`; `scripts/install-system-deps.sh`
installs it), run as an async subprocess, its 22 050 Hz WAV resampled off the event loop; when
it is missing or fails, a syllable-like tone sequence, one burst per word — never silence.

Each result carries when each word starts, so a transcript can be streamed beside the audio
and trimmed where the audio was cut. For espeak-ng the word times are estimated from the
characters (espeak does not say); for the tone they are exact.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
import shutil
import struct
import zlib
from array import array
from dataclasses import dataclass

from apps.realtime.audio import FORMAT_RATES, alaw_encode, resample_pcm16, ulaw_encode

log = logging.getLogger(__name__)

ENGINES = ("auto", "tone")
ESPEAK = "espeak-ng"
# The service's voices, each given an espeak-ng voice of its own so two agents sound apart.
_ESPEAK_VOICES = {
    "alloy": "en-us",
    "ash": "en-us+m3",
    "ballad": "en-gb+m2",
    "coral": "en-us+f2",
    "echo": "en-us+m1",
    "sage": "en-gb+f3",
    "shimmer": "en-us+f4",
    "verse": "en-us+m4",
    "marin": "en-us+f3",
    "cedar": "en-gb+m3",
}
_WORD = re.compile(r"\S+\s*")
_TONE_AMPLITUDE = 9000  # about -14 dBFS peak: clearly audible, well above any VAD threshold
_TONE_GAP_MS = 70


@dataclass(frozen=True, kw_only=True)
class Speech:
    """Mono PCM16 little-endian at `rate`, and when each word of the text starts in it."""

    pcm: bytes
    rate: int
    words: tuple[tuple[float, str], ...]  # (start in ms, the word with its trailing space)
    engine: str  # "espeak-ng" or "tone"

    @property
    def duration_ms(self) -> float:
        return len(self.pcm) / 2 / self.rate * 1000

    def encoded(self, format_type: str) -> bytes:
        """The audio in a service format (`audio/pcm`, `audio/pcmu`, `audio/pcma`) at that
        format's rate, which must be this speech's rate."""
        rate = FORMAT_RATES.get(format_type, 24000)
        if rate != self.rate:
            raise ValueError(f"{format_type} is {rate} Hz audio; this speech is at {self.rate} Hz")
        if format_type == "audio/pcmu":
            return ulaw_encode(self.pcm)
        if format_type == "audio/pcma":
            return alaw_encode(self.pcm)
        return self.pcm


def espeak_available() -> bool:
    return shutil.which(ESPEAK) is not None


async def synthesise(
    text: str, *, voice: str = "alloy", rate: int = 24000, engine: str = "auto"
) -> Speech:
    """`text` spoken at `rate` Hz: espeak-ng (engine "auto", when installed), else a tone."""
    if engine not in ENGINES:
        raise ValueError(f"speech engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    loop = asyncio.get_running_loop()
    if engine == "auto" and text.strip() and espeak_available():
        wav = await _espeak_wav(text, _ESPEAK_VOICES.get(voice, "en-us"))
        if wav is not None:
            speech = await loop.run_in_executor(None, _from_wav, text, wav, rate)
            if speech is not None:
                return speech
    return await loop.run_in_executor(None, tone_speech, text, rate)


async def _espeak_wav(text: str, voice: str) -> bytes | None:
    try:
        process = await asyncio.create_subprocess_exec(
            ESPEAK, "--stdout", "-v", voice, "-s", "170",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        # The text goes in on stdin: never parsed as options, whatever it starts with.
        out, err = await process.communicate(text.encode("utf-8"))
    except OSError as exc:
        log.warning("espeak-ng could not run (%s); speaking with a tone", exc)
        return None
    if process.returncode != 0 or not out:
        log.warning("espeak-ng failed (%s): %s; speaking with a tone", process.returncode, err[:200])
        return None
    return out


def _from_wav(text: str, wav: bytes, rate: int) -> Speech | None:
    """espeak-ng's streamed WAV (its sizes are placeholders) as Speech at `rate`."""
    fmt = wav.find(b"fmt ")
    data = wav.find(b"data")
    if fmt < 0 or data < 0 or len(wav) < fmt + 24:
        return None
    channels, source_rate = struct.unpack_from("<HI", wav, fmt + 10)
    bits = struct.unpack_from("<H", wav, fmt + 22)[0]
    if channels != 1 or bits != 16:
        return None
    pcm = resample_pcm16(wav[data + 8 :], source_rate, rate)
    duration_ms = len(pcm) / 2 / rate * 1000
    return Speech(pcm=pcm, rate=rate, words=_spread_words(text, duration_ms), engine=ESPEAK)


def _spread_words(text: str, duration_ms: float) -> tuple[tuple[float, str], ...]:
    """Word start times estimated from character offsets over the speech's duration."""
    total = max(1, len(text))
    return tuple((duration_ms * m.start() / total, m.group()) for m in _WORD.finditer(text))


def tone_speech(text: str, rate: int = 24000) -> Speech:
    """A syllable-like tone sequence: one voiced burst per word, its length following the word's,
    its pitch from the word, with gaps between words. Audible, and never mistaken for words."""
    samples = array("h")
    words = []
    for word in _WORD.findall(text) or ["…"]:  # nothing to say is still heard as a murmur
        words.append((len(samples) / rate * 1000, word))
        samples.extend(_burst(word.strip(), rate))
        samples.extend(bytes(2 * rate * _TONE_GAP_MS // 1000))
    return Speech(pcm=samples.tobytes(), rate=rate, words=tuple(words), engine="tone")


def fixed_speech(text: str, duration_ms: int, rate: int = 24000) -> Speech:
    """`duration_ms` of one tone whatever the text (made once per length and rate), its words
    spread over it: a reply of the same length every time, for benchmarks."""
    return Speech(
        pcm=_fixed_tone(duration_ms, rate),
        rate=rate,
        words=_spread_words(text, duration_ms),
        engine="tone",
    )


@functools.lru_cache(maxsize=8)
def _fixed_tone(duration_ms: int, rate: int) -> bytes:
    n = rate * duration_ms // 1000
    w = 2 * math.pi * 180 / rate
    return array("h", (int(_TONE_AMPLITUDE * math.sin(w * i)) for i in range(n))).tobytes()


def _burst(word: str, rate: int) -> array:
    """One word: a 110–220 Hz voice with two harmonics, rising then falling like a syllable."""
    seed = zlib.crc32(word.lower().encode("utf-8"))
    pitch = 110 + seed % 110
    duration = min(600, 90 + 55 * len(word)) / 1000
    n = int(rate * duration)
    w = 2 * math.pi * pitch / rate
    sin = math.sin
    return array(
        "h",
        (
            int(
                _TONE_AMPLITUDE
                * sin(math.pi * i / n)  # the syllable's envelope
                * (0.6 * sin(w * i) + 0.3 * sin(2 * w * i) + 0.1 * sin(3 * w * i))
            )
            for i in range(n)
        ),
    )
