"""G.711 μ-law/A-law, PCM16 level and resampling (apps/realtime/audio.py): known values from
the ITU-T G.711 tables, round trips within G.711's quantisation error, levels of known signals."""

from __future__ import annotations

import math
from array import array

import pytest

from apps.realtime import audio

ALL_SAMPLES = array("h", range(-32768, 32768))


def pcm(samples) -> bytes:
    return array("h", samples).tobytes()


def samples(data: bytes) -> list[int]:
    out = array("h")
    out.frombytes(data)
    return list(out)


def sine(freq: float, rate: int, seconds: float, amplitude: float) -> bytes:
    n = int(rate * seconds)
    return pcm(round(amplitude * math.sin(2 * math.pi * freq * i / rate)) for i in range(n))


@pytest.mark.parametrize(
    ("decode", "code", "value"),
    [
        (audio.ulaw_decode, 0xFF, 0),
        (audio.ulaw_decode, 0x7F, 0),  # μ-law's negative zero
        (audio.ulaw_decode, 0x80, 32124),
        (audio.ulaw_decode, 0x00, -32124),
        (audio.ulaw_decode, 0xFE, 8),
        (audio.alaw_decode, 0xD5, 8),
        (audio.alaw_decode, 0x55, -8),
        (audio.alaw_decode, 0xAA, 32256),
        (audio.alaw_decode, 0x2A, -32256),
    ],
)
def test_known_codes_decode_to_the_g711_values(decode, code, value):
    assert samples(decode(bytes([code]))) == [value]


def test_known_samples_encode_to_the_g711_codes():
    assert audio.ulaw_encode(pcm([0, 8, 32767, -32768])) == bytes([0xFF, 0xFE, 0x80, 0x00])
    assert audio.alaw_encode(pcm([0, -8, 32767, -32768])) == bytes([0xD5, 0x55, 0xAA, 0x2A])


@pytest.mark.parametrize(
    ("encode", "decode", "slack"),
    [(audio.ulaw_encode, audio.ulaw_decode, 4.125), (audio.alaw_encode, audio.alaw_decode, 8)],
)
def test_every_sample_round_trips_within_the_g711_step(encode, decode, slack):
    """G.711 keeps about 5 bits of precision: the error grows with the sample, |x|/32 plus the
    smallest step, and nothing else (the clipping zone above 32 000 aside)."""
    back = samples(decode(encode(ALL_SAMPLES.tobytes())))
    assert len(back) == len(ALL_SAMPLES)
    for x, y in zip(ALL_SAMPLES, back, strict=True):
        if abs(x) <= 32000:
            assert abs(y - x) <= abs(x) / 32 + slack, (x, y)
        else:
            assert (y > 0) == (x > 0) and abs(y) >= 32000


@pytest.mark.parametrize(
    ("encode", "decode", "aliases"),
    [(audio.ulaw_encode, audio.ulaw_decode, {0x7F}), (audio.alaw_encode, audio.alaw_decode, set())],
)
def test_every_code_survives_decode_then_encode(encode, decode, aliases):
    codes = bytes(code for code in range(256) if code not in aliases)
    assert encode(decode(codes)) == codes


def test_rms_of_known_signals():
    assert audio.pcm16_rms(b"") == 0.0
    assert audio.pcm16_rms(bytes(960)) == 0.0
    assert audio.pcm16_rms(pcm([1000, -1000] * 50)) == pytest.approx(1000)
    tone = sine(440, 24000, 0.5, 10000)
    assert audio.pcm16_rms(tone) == pytest.approx(10000 / math.sqrt(2), rel=0.01)
    assert audio.pcm16_rms(tone + b"\x01") == audio.pcm16_rms(tone)  # a stray odd byte is ignored


@pytest.mark.parametrize(("src", "dst"), [(22050, 24000), (24000, 8000), (8000, 24000)])
def test_resampling_keeps_duration_pitch_and_level(src, dst):
    tone = sine(300, src, 1.0, 8000)
    out = audio.resample_pcm16(tone, src, dst)
    values = samples(out)
    assert abs(len(values) - dst) <= 1, "one second stays one second"
    crossings = sum(1 for a, b in zip(values, values[1:], strict=False) if a < 0 <= b)
    assert abs(crossings - 300) <= 2, "the pitch is kept"
    assert audio.pcm16_rms(out) == pytest.approx(audio.pcm16_rms(tone), rel=0.05)
    assert audio.resample_pcm16(tone, src, src) == tone
    with pytest.raises(ValueError, match="positive"):
        audio.resample_pcm16(tone, 0, dst)


@pytest.mark.parametrize("format_type", ["audio/pcmu", "audio/pcma"])
def test_g711_to_24khz_is_decoding_then_resampling(format_type):
    codes = bytes(range(256)) + bytes(reversed(range(256))) + b"\x00\xff\x7f\x80"
    fast = samples(audio.g711_to_pcm16_24k(codes, format_type))
    slow = samples(audio.resample_pcm16(audio.to_pcm16(codes, format_type), 8000, 24000))
    assert len(fast) == len(slow) == 3 * len(codes)
    assert max(abs(a - b) for a, b in zip(fast, slow, strict=True)) <= 1  # rounding aside
    assert audio.g711_to_pcm16_24k(b"", format_type) == b""


def test_format_helpers():
    assert audio.FORMAT_RATES == {"audio/pcm": 24000, "audio/pcmu": 8000, "audio/pcma": 8000}
    assert [audio.bytes_per_ms(t) for t in audio.FORMAT_RATES] == [48, 8, 8]
    data = bytes([0x80, 0x00])
    assert samples(audio.to_pcm16(data, "audio/pcmu")) == [32124, -32124]
    assert samples(audio.to_pcm16(bytes([0xAA]), "audio/pcma")) == [32256]
    assert audio.to_pcm16(b"\x01\x02", "audio/pcm") == b"\x01\x02"
