"""Audio sample helpers of the Realtime formats. Pure: no I/O, no Django, no `audioop`.

The service's audio formats (`session.audio.*.format`):
- `audio/pcm`: PCM16, signed 16-bit little-endian, mono, 24 kHz;
- `audio/pcmu`: G.711 μ-law, one byte a sample, mono, 8 kHz;
- `audio/pcma`: G.711 A-law, one byte a sample, mono, 8 kHz.

G.711 is table-driven (ITU-T G.711, the classic Sun reference algorithm): decoding is one
256-entry table, encoding one 65 536-entry table indexed by the sample's 16 bits (built on
first use). PCM16 is handled through `array` ('h': signed, 'H': the same bits unsigned).
`g711_to_pcm16_24k` decodes and upsamples G.711 in one table look-up a sample (what the
listen-in and the recorder need of every G.711 call): the general `resample_pcm16` loops in
Python, some ten times slower.
"""

from __future__ import annotations

import functools
import math
import operator
import sys
from array import array
from collections.abc import Callable

__all__ = [
    "FORMAT_RATES",
    "alaw_decode",
    "alaw_encode",
    "bytes_per_ms",
    "g711_to_pcm16_24k",
    "pcm16_rms",
    "resample_pcm16",
    "to_pcm16",
    "ulaw_decode",
    "ulaw_encode",
]

# Sample rate of each format type, as the service names them.
FORMAT_RATES = {"audio/pcm": 24000, "audio/pcmu": 8000, "audio/pcma": 8000}

_BIG_ENDIAN = sys.byteorder == "big"
_ULAW_BIAS = 0x84
_ULAW_CLIP = 32635
_ALAW_SEGMENT_ENDS = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)


def _ulaw_encode_sample(sample: int) -> int:
    sign = 0x80 if sample < 0 else 0
    magnitude = min(-sample if sample < 0 else sample, _ULAW_CLIP) + _ULAW_BIAS
    exponent = magnitude.bit_length() - 8  # 0..7: magnitude is at least 0x84
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def _ulaw_decode_byte(byte: int) -> int:
    byte = ~byte & 0xFF
    exponent = (byte >> 4) & 0x07
    magnitude = (((byte & 0x0F) << 3) + _ULAW_BIAS) << exponent
    magnitude -= _ULAW_BIAS
    return -magnitude if byte & 0x80 else magnitude


def _alaw_encode_sample(sample: int) -> int:
    value = sample >> 3  # 13 significant bits
    if value >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        value = -value - 1
    segment = next((i for i, end in enumerate(_ALAW_SEGMENT_ENDS) if value <= end), 8)
    if segment >= 8:
        return 0x7F ^ mask
    code = segment << 4
    code |= (value >> 1 if segment < 2 else value >> segment) & 0x0F
    return code ^ mask


def _alaw_decode_byte(byte: int) -> int:
    byte ^= 0x55
    magnitude = (byte & 0x0F) << 4
    segment = (byte & 0x70) >> 4
    if segment == 0:
        magnitude += 8
    elif segment == 1:
        magnitude += 0x108
    else:
        magnitude = (magnitude + 0x108) << (segment - 1)
    return magnitude if byte & 0x80 else -magnitude


def _signed(bits: int) -> int:
    return bits - 0x10000 if bits & 0x8000 else bits


_ULAW_DECODE = tuple(_ulaw_decode_byte(b) for b in range(256))
_ALAW_DECODE = tuple(_alaw_decode_byte(b) for b in range(256))


@functools.cache
def _encode_table(encode_sample: Callable[[int], int]) -> bytes:
    """The code of every 16-bit pattern; built on first use (a fifth of a second each)."""
    return bytes(encode_sample(_signed(bits)) for bits in range(0x10000))


def _samples(pcm16: bytes, typecode: str = "h") -> array:
    """PCM16 little-endian bytes as an array (a trailing odd byte is ignored)."""
    samples = array(typecode)
    samples.frombytes(memoryview(pcm16)[: len(pcm16) & ~1])
    if _BIG_ENDIAN:
        samples.byteswap()
    return samples


def _pcm16_bytes(samples: array) -> bytes:
    if _BIG_ENDIAN:
        samples.byteswap()
    return samples.tobytes()


def ulaw_encode(pcm16: bytes) -> bytes:
    """PCM16 little-endian → G.711 μ-law, one byte a sample (the rate is unchanged)."""
    return bytes(map(_encode_table(_ulaw_encode_sample).__getitem__, _samples(pcm16, "H")))


def alaw_encode(pcm16: bytes) -> bytes:
    """PCM16 little-endian → G.711 A-law, one byte a sample (the rate is unchanged)."""
    return bytes(map(_encode_table(_alaw_encode_sample).__getitem__, _samples(pcm16, "H")))


def ulaw_decode(data: bytes) -> bytes:
    """G.711 μ-law → PCM16 little-endian (the rate is unchanged)."""
    return _pcm16_bytes(array("h", map(_ULAW_DECODE.__getitem__, data)))


def alaw_decode(data: bytes) -> bytes:
    """G.711 A-law → PCM16 little-endian (the rate is unchanged)."""
    return _pcm16_bytes(array("h", map(_ALAW_DECODE.__getitem__, data)))


def pcm16_rms(pcm16: bytes) -> float:
    """Root mean square of PCM16 little-endian samples, in sample units (0 to 32 768);
    0.0 for no samples. `20 * log10(rms / 32768)` is the level in dBFS."""
    samples = _samples(pcm16)
    if not samples:
        return 0.0
    return math.sqrt(sum(map(operator.mul, samples, samples)) / len(samples))


def resample_pcm16(pcm16: bytes, from_rate: int, to_rate: int) -> bytes:
    """PCM16 little-endian mono from one sample rate to another, by linear interpolation.
    Simple rather than studio-grade: fine for speech and level meters. Equal rates: a copy."""
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {from_rate} and {to_rate}")
    if from_rate == to_rate:
        return bytes(pcm16[: len(pcm16) & ~1])
    samples = _samples(pcm16)
    count = len(samples)
    if count == 0:
        return b""
    out_count = max(1, count * to_rate // from_rate)
    last = count - 1
    step = from_rate / to_rate
    out = array("h", bytes(2 * out_count))
    for i in range(out_count):
        position = i * step
        j = int(position)
        if j >= last:
            out[i] = samples[last]
            continue
        frac = position - j
        a = samples[j]
        out[i] = int(a + (samples[j + 1] - a) * frac)
    return _pcm16_bytes(out)


@functools.cache
def _upsample_table(format_type: str) -> tuple[bytes, ...]:
    """For each pair of G.711 codes (this sample's in the high byte, the next one's in the
    low byte), this sample's three PCM16 samples at 24 kHz, linearly interpolated towards the
    next one. Built on first use (some 0.1 s), 65 536 entries."""
    decode = _ULAW_DECODE if format_type == "audio/pcmu" else _ALAW_DECODE
    table = []
    for pair in range(0x10000):
        a, b = decode[pair >> 8], decode[pair & 0xFF]
        table.append(_pcm16_bytes(array("h", (a, int(a + (b - a) / 3), int(a + 2 * (b - a) / 3)))))
    return tuple(table)


def g711_to_pcm16_24k(data: bytes, format_type: str) -> bytes:
    """G.711 (`audio/pcmu` or `audio/pcma`, 8 kHz) → PCM16 little-endian 24 kHz: what
    `resample_pcm16(to_pcm16(data, format_type), 8000, 24000)` gives (within one step of
    rounding), with no Python loop. The last sample is held, as `resample_pcm16` does."""
    if not data:
        return b""
    pairs = bytearray(2 * len(data))  # native 16-bit words: this code, then the next one
    this, following = (slice(0, None, 2), slice(1, None, 2)) if _BIG_ENDIAN else (
        slice(1, None, 2), slice(0, None, 2))
    pairs[this] = data
    pairs[following] = data[1:] + data[-1:]
    return b"".join(map(_upsample_table(format_type).__getitem__, array("H", pairs)))


def bytes_per_ms(format_type: str) -> int:
    """Bytes of one millisecond of audio in a format (48 for `audio/pcm`, 8 for G.711)."""
    return 48 if format_type == "audio/pcm" else 8


def to_pcm16(data: bytes, format_type: str) -> bytes:
    """Audio in a service format as PCM16 at that format's own rate (G.711 decoded)."""
    if format_type == "audio/pcmu":
        return ulaw_decode(data)
    if format_type == "audio/pcma":
        return alaw_decode(data)
    return data
