"""The simulator's voice: espeak-ng when installed, an audible tone sequence otherwise."""

from __future__ import annotations

import pytest

from apps.realtime.audio import FORMAT_RATES, pcm16_rms, ulaw_decode
from apps.simulator import speech

TEXT = "Thank you for calling, how can I help?"
WORDS = TEXT.split()


def bursts(pcm: bytes, rate: int, frame_ms: int = 10) -> int:
    """How many separate loud stretches the audio has (gaps of at least 40 ms between)."""
    frame = rate * frame_ms // 1000 * 2
    loud = [pcm16_rms(pcm[i : i + frame]) > 300 for i in range(0, len(pcm), frame)]
    count, quiet_run = 0, 99
    for is_loud in loud:
        if is_loud and quiet_run >= 4:
            count += 1
        quiet_run = 0 if is_loud else quiet_run + 1
    return count


@pytest.mark.asyncio
async def test_espeak_speaks_when_installed():
    assert speech.espeak_available(), "espeak-ng is installed by scripts/install-system-deps.sh"
    spoken = await speech.synthesise(TEXT, rate=24000)
    assert spoken.engine == "espeak-ng"
    assert 1500 < spoken.duration_ms < 6000
    assert pcm16_rms(spoken.pcm) > 1000
    assert "".join(word for _, word in spoken.words) == TEXT
    starts = [at for at, _ in spoken.words]
    assert starts == sorted(starts) and starts[-1] < spoken.duration_ms


@pytest.mark.asyncio
async def test_without_espeak_the_reply_is_a_tone_burst_per_word(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert not speech.espeak_available()
    spoken = await speech.synthesise(TEXT, rate=24000)
    assert spoken.engine == "tone"
    assert bursts(spoken.pcm, 24000) == len(WORDS), "one burst a word"
    assert pcm16_rms(spoken.pcm) > 1000, "audible, never silence"
    assert [word.strip() for _, word in spoken.words] == WORDS
    nothing = await speech.synthesise("", rate=24000)
    assert pcm16_rms(nothing.pcm) > 1000, "even nothing to say is heard"


@pytest.mark.asyncio
@pytest.mark.parametrize("engine", ["auto", "tone"])
async def test_g711_speech_is_encoded_at_8khz(engine):
    spoken = await speech.synthesise(TEXT, rate=FORMAT_RATES["audio/pcmu"], engine=engine)
    data = spoken.encoded("audio/pcmu")
    assert len(data) == len(spoken.pcm) // 2
    assert pcm16_rms(ulaw_decode(data)) == pytest.approx(pcm16_rms(spoken.pcm), rel=0.05)
    with pytest.raises(ValueError, match="24000 Hz audio; this speech is at 8000 Hz"):
        (await speech.synthesise("hi", rate=8000, engine="tone")).encoded("audio/pcm")
    with pytest.raises(ValueError, match="speech engine"):
        await speech.synthesise("hi", engine="festival")
