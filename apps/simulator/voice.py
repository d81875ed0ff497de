"""Audio in and out of the simulated service, as the GA Realtime service does it.

In: `input_audio_buffer.append` (base64 in the session's input format, at most 15 MiB of audio
an event), `.commit`, `.clear`, and server VAD on the appended audio's energy
(`InputAudio.feed`, pure): `input_audio_buffer.speech_started`/`speech_stopped`/`committed`,
the user's audio item, `conversation.item.input_audio_transcription.delta`/`.completed` when
`audio.input.transcription` is configured (its `usage` in tokens, or a duration for the
Whisper models), a response when `create_response`, and an active response cancelled
(`turn_detected`) when the caller speaks over it and `interrupt_response`. The committed
audio is returned by `conversation.item.retrieve` (`with_user_audio`), as is the audio of a
user item the client creates (`remember_client_audio`).

`turn_detection` is honoured as: `type` `server_vad` (and `semantic_vad`, treated alike);
`threshold` (0–1) mapped onto an energy threshold of `-60 + 50 × threshold` dBFS, so the
default 0.5 is -35 dBFS; `prefix_padding_ms`; `silence_duration_ms`; `create_response`;
`interrupt_response`; `null` = no VAD, manual commits. `idle_timeout_ms` is not simulated.

What words were spoken the simulator cannot know: the transcript of a caller's audio says so
(`[speech, 2.1 s — the simulator does not transcribe]`), and a reply answers that.

Out: for a response whose output modalities include audio, the reply text is spoken
(`speech.synthesise`) in the session's output format and streamed as
`response.output_audio.delta` (`SimulatorConfig.audio_chunk_ms` each, paced by `audio_pace`)
with the words of `response.output_audio_transcript.delta` as their audio is sent.
`conversation.item.truncate` cuts an assistant audio item and its transcript to what was heard
(one the model spoke or is still speaking, whose audio then stops there, or one a client added
with `output_audio` content: `remember_client_audio`);
a text item gets the service's error ("Only model output audio messages can be truncated").
Once the model has spoken, a `session.update` changing the voice is refused
(`cannot_update_voice`: `check_voice_update`).

Handlers here take the session and the client event, as `session.HANDLERS` calls them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import math
import re
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from apps.realtime.audio import FORMAT_RATES, bytes_per_ms, pcm16_rms, to_pcm16
from apps.simulator import speech
from apps.simulator.wire import (
    Rejected,
    dumps,
    event_sent_time_ns,
    new_event_id,
    new_id,
    tokens,
)

if TYPE_CHECKING:
    from apps.simulator.session import SimResponse, SimSession

MIN_COMMIT_MS = 100.0
MAX_APPEND_BYTES = 15 * 1024 * 1024  # the service's limit on one append's audio
MAX_APPEND_CHARS = MAX_APPEND_BYTES // 3 * 4  # the same, as base64 (20 MiB of characters)
VAD_FRAME_MS = 20
# Transcription models priced by the minute of audio, whose usage is a duration.
DURATION_BILLED_TRANSCRIBERS = frozenset({"whisper-1", "gpt-realtime-whisper"})
_FORMAT_WORDS = {
    "audio/pcm": "mono PCM16 at 24kHz",
    "audio/pcmu": "G.711 μ-law at 8kHz",
    "audio/pcma": "G.711 A-law at 8kHz",
}
_KEEP_SPOKEN = 64  # assistant audio items remembered for truncation
# What a simulated session keeps of its caller's audio, so that a long call does not grow
# without end: the bytes of the uncommitted buffer's latest minute (a longer buffer's item
# holds its last minute), and the audio of the latest committed items (older ones are
# retrieved without it).
KEEP_BUFFER_MS = 60_000
_KEEP_USER_AUDIO = 16
# A client's user audio item is kept with at most as much audio as a committed item holds.
_KEEP_CLIENT_AUDIO_BYTES = KEEP_BUFFER_MS * bytes_per_ms("audio/pcm")
STAMP_BYTES = 8  # SimulatorConfig.audio_stamp: the send time at the start of each chunk
LATENCY_SAMPLES = 4096  # append latencies kept per session (the latest)


# What the service announces of turn detection a client gave in part (`session.created` shows
# the server VAD's): the missing fields are filled in, and the VAD then works by them.
TURN_DETECTION_DEFAULTS: dict[str, dict[str, Any]] = {
    "server_vad": {
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 200,
        "idle_timeout_ms": None,
        "create_response": True,
        "interrupt_response": True,
    },
    "semantic_vad": {"eagerness": "auto", "create_response": True, "interrupt_response": True},
}


def complete_turn_detection(config: dict[str, Any]) -> None:
    """Fill in the fields a session's turn detection was given without (`session.update`).
    Without a `type` it is `server_vad`, the type the API's schema names as the default."""
    audio = config.get("audio")
    audio_input = audio.get("input") if isinstance(audio, dict) else None
    turn_detection = audio_input.get("turn_detection") if isinstance(audio_input, dict) else None
    if isinstance(turn_detection, dict):
        if turn_detection.get("type") is None:
            turn_detection["type"] = "server_vad"
        for key, value in TURN_DETECTION_DEFAULTS.get(turn_detection.get("type"), {}).items():
            turn_detection.setdefault(key, value)


def energy_threshold(threshold: object) -> float:
    """The RMS (in PCM16 sample units) that `turn_detection.threshold` stands for."""
    value = threshold if isinstance(threshold, int | float) else 0.5
    value = min(1.0, max(0.0, float(value)))
    return 32768 * 10 ** ((-60 + 50 * value) / 20)


def speech_placeholder(duration_ms: float) -> str:
    return f"[speech, {duration_ms / 1000:.1f} s — the simulator does not transcribe]"


@dataclass(frozen=True, kw_only=True)
class Spoken:
    """An assistant audio item as it was sent: its length, and when each sent word starts."""

    duration_ms: float
    words: tuple[tuple[float, str], ...]

    @property
    def transcript(self) -> str:
        return "".join(word for _, word in self.words)

    def cut(self, audio_end_ms: float) -> Spoken:
        """What is left when the audio is cut at `audio_end_ms`: the service removes what was
        not heard from the transcript, so the words whose audio started before the cut stay."""
        kept = tuple((at, word) for at, word in self.words if at < audio_end_ms)
        return Spoken(duration_ms=audio_end_ms, words=kept)


@dataclass(eq=False, kw_only=True)
class InputAudio:
    """A session's input audio: the buffer, and server VAD over it. Pure: no I/O.

    Positions are milliseconds of all audio appended in the session (the service's
    `audio_start_ms`/`audio_end_ms` timeline)."""

    total_ms: float = 0.0  # end of all audio appended so far
    buffer_start_ms: float = 0.0  # where the uncommitted buffer begins
    judged_ms: float = 0.0  # VAD has judged the audio up to here
    pending: bytearray = field(default_factory=bytearray)  # less than a frame, not judged yet
    speaking: bool = False
    speech_start_ms: float = 0.0
    silence_ms: float = 0.0
    item_id: str | None = None  # the item the current speech will become
    user_audio_ms: dict[str, float] = field(default_factory=dict)  # committed items' lengths
    # The bytes of the buffer's audio (at most its latest KEEP_BUFFER_MS), in the input format
    # they were appended in, and the committed audio of the latest user items, by item id.
    buffered: bytearray = field(default_factory=bytearray)
    buffered_format: str = "audio/pcm"
    # The audio of each `input_audio` part, in order (None: that part had none).
    user_audio: OrderedDict[str, tuple[bytes | None, ...]] = field(default_factory=OrderedDict)
    spoken: OrderedDict[str, Spoken] = field(default_factory=OrderedDict)  # assistant audio
    # What a benchmark compares with what its callers sent and received: audio bytes (decoded)
    # taken in by appends and sent in output audio deltas, and the one-way latency of each
    # append whose `event_id` carries its send time (`event_<n>_<time_ns>`, as ours do).
    received_bytes: int = 0
    sent_bytes: int = 0
    append_latency_ns: deque[int] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))

    @property
    def buffer_ms(self) -> float:
        return self.total_ms - self.buffer_start_ms

    def feed(
        self, data: bytes, format_type: str, turn_detection: dict[str, Any] | None
    ) -> list[tuple[str, int]]:
        """Append audio; with turn detection, judge it frame by frame. Returns what VAD saw, in
        order: ("started", audio_start_ms) and ("stopped", audio_end_ms)."""
        per_ms = bytes_per_ms(format_type)
        self.total_ms += len(data) / per_ms
        self.buffered += data
        self.buffered_format = format_type
        if len(self.buffered) > KEEP_BUFFER_MS * per_ms:
            del self.buffered[: len(self.buffered) - KEEP_BUFFER_MS * per_ms]
        if turn_detection is None:
            self.judged_ms = self.total_ms
            return []
        threshold = energy_threshold(turn_detection.get("threshold"))
        silence_needed = _ms(turn_detection.get("silence_duration_ms"), 500)
        prefix = _ms(turn_detection.get("prefix_padding_ms"), 300)
        frame_bytes = VAD_FRAME_MS * per_ms
        self.pending += data
        seen: list[tuple[str, int]] = []
        position = self.judged_ms
        while len(self.pending) >= frame_bytes:
            frame = bytes(self.pending[:frame_bytes])
            del self.pending[:frame_bytes]
            loud = pcm16_rms(to_pcm16(frame, format_type)) >= threshold
            end = position + VAD_FRAME_MS
            if loud:
                self.silence_ms = 0.0
                if not self.speaking:
                    self.speaking = True
                    self.speech_start_ms = max(self.buffer_start_ms, position - prefix)
                    seen.append(("started", round(self.speech_start_ms)))
            elif self.speaking:
                self.silence_ms += VAD_FRAME_MS
                if self.silence_ms >= silence_needed:
                    self.speaking = False
                    self.silence_ms = 0.0
                    seen.append(("stopped", round(end)))
            position = end
        self.judged_ms = position
        return seen

    def take_speech(self, end_ms: float) -> tuple[float, bytes]:
        """VAD commits the speech that ended at `end_ms`: returns its length and its audio;
        the buffer then holds what came after."""
        duration = end_ms - self.speech_start_ms
        start = self._offset(self.speech_start_ms)
        end = self._offset(end_ms)
        audio = bytes(self.buffered[start:end])
        del self.buffered[:end]
        self.buffer_start_ms = end_ms
        return duration, audio

    def take_buffer(self) -> tuple[float, bytes]:
        """A manual commit (or a clear): the whole buffer; returns its length and its audio."""
        duration = self.buffer_ms
        audio = bytes(self.buffered)
        self.buffered.clear()
        self.buffer_start_ms = self.judged_ms = self.total_ms
        self.pending.clear()
        self.speaking = False
        self.silence_ms = 0.0
        return duration, audio

    def _offset(self, at_ms: float) -> int:
        """Where in `buffered` the audio at `at_ms` begins, on a whole sample."""
        per_ms = bytes_per_ms(self.buffered_format)
        offset = len(self.buffered) - round((self.total_ms - at_ms) * per_ms)
        offset -= offset % (2 if self.buffered_format == "audio/pcm" else 1)
        return min(len(self.buffered), max(0, offset))

    def remember_user_audio(self, item_id: str, audio: tuple[bytes | None, ...]) -> None:
        """Keep a user item's audio, one entry an `input_audio` part, for retrieve; only the
        latest items' is kept."""
        self.user_audio[item_id] = audio
        while len(self.user_audio) > _KEEP_USER_AUDIO:
            self.user_audio.popitem(last=False)

    def remember_spoken(self, item_id: str, spoken: Spoken) -> None:
        self.spoken[item_id] = spoken
        while len(self.spoken) > _KEEP_SPOKEN:
            self.spoken.popitem(last=False)


def _ms(value: object, default: int) -> float:
    return float(value) if isinstance(value, int | float) and value >= 0 else float(default)


def _audio_input(session: SimSession) -> dict[str, Any]:
    audio = session.config.get("audio")
    value = audio.get("input") if isinstance(audio, dict) else None
    return value if isinstance(value, dict) else {}


def audio_format_type(config: dict[str, Any]) -> str:
    audio_format = config.get("format")
    kind = audio_format.get("type") if isinstance(audio_format, dict) else None
    return kind if kind in FORMAT_RATES else "audio/pcm"


def _turn_detection(session: SimSession) -> dict[str, Any] | None:
    turn_detection = _audio_input(session).get("turn_detection")
    return turn_detection if isinstance(turn_detection, dict) else None


# --- input audio ---------------------------------------------------------------------------


async def on_audio_append(session: SimSession, event: dict[str, Any]) -> None:
    audio = event.get("audio")
    if not isinstance(audio, str):
        raise Rejected.invalid_type("audio", "a string", audio)
    if len(audio) > MAX_APPEND_CHARS:
        raise Rejected(
            "string_above_max_length",
            "Invalid 'audio': string too long. Expected a string with maximum length "
            f"{MAX_APPEND_CHARS} (15 MiB of audio), but got a string with length {len(audio)} "
            "instead.",
            "audio",
        )
    format_type = audio_format_type(_audio_input(session))
    try:
        data = base64.b64decode(audio, validate=True)
    except (binascii.Error, ValueError):
        raise Rejected(
            "invalid_value",
            f"Invalid 'audio'. Expected base64-encoded audio bytes ({_FORMAT_WORDS[format_type]}) "
            "but got an invalid value.",
            "audio",
        ) from None
    session.audio.received_bytes += len(data)
    stamp = event_sent_time_ns(event.get("event_id"))
    if stamp is not None:
        session.audio.append_latency_ns.append(time.time_ns() - stamp)
    turn_detection = _turn_detection(session)
    for what, at_ms in session.audio.feed(data, format_type, turn_detection):
        if what == "started":
            await _speech_started(session, at_ms, turn_detection or {})
        else:
            await _speech_stopped(session, at_ms, turn_detection or {})


async def _speech_started(session: SimSession, at_ms: int, turn_detection: dict) -> None:
    item_id = session.audio.item_id = new_id("item")
    await session.send(
        {
            "type": "input_audio_buffer.speech_started",
            "event_id": new_event_id(),
            "audio_start_ms": at_ms,
            "item_id": item_id,
        }
    )
    active = session.active
    if active is not None and turn_detection.get("interrupt_response", True) is not False:
        active.cancel("turn_detected")


async def _speech_stopped(session: SimSession, at_ms: int, turn_detection: dict) -> None:
    item_id = session.audio.item_id or new_id("item")
    session.audio.item_id = None
    await session.send(
        {
            "type": "input_audio_buffer.speech_stopped",
            "event_id": new_event_id(),
            "audio_end_ms": at_ms,
            "item_id": item_id,
        }
    )
    await _commit(session, item_id, *session.audio.take_speech(at_ms))
    if turn_detection.get("create_response", True) is not False:
        await session.server_response()


async def on_audio_clear(session: SimSession, event: dict[str, Any]) -> None:
    session.audio.take_buffer()
    session.audio.item_id = None
    await session.send({"type": "input_audio_buffer.cleared", "event_id": new_event_id()})


async def on_audio_commit(session: SimSession, event: dict[str, Any]) -> None:
    duration_ms = session.audio.buffer_ms
    if duration_ms < MIN_COMMIT_MS:
        raise Rejected(
            "input_audio_buffer_commit_empty",
            "Error committing input audio buffer: buffer too small. Expected at least "
            f"100ms of audio, but buffer only has {duration_ms:.2f}ms of audio.",
        )
    item_id = session.audio.item_id or new_id("item")
    session.audio.item_id = None
    await _commit(session, item_id, *session.audio.take_buffer())
    turn_detection = _turn_detection(session)
    if turn_detection is not None and turn_detection.get("create_response", True) is not False:
        await session.server_response()


async def _commit(session: SimSession, item_id: str, duration_ms: float, audio: bytes) -> None:
    """The buffer becomes a user audio item: committed, the item, its transcription. Its
    audio is kept for `conversation.item.retrieve` (`with_user_audio`), never sent with the
    item's events (the service leaves it out of them)."""
    transcription = _audio_input(session).get("transcription")
    transcribing = isinstance(transcription, dict)
    part: dict[str, Any] = {"type": "input_audio", "transcript": None}
    item: dict[str, Any] = {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": "completed",
        "role": "user",
        "content": [part],
    }
    previous_item_id = session.insert_item(item)
    session.audio.user_audio_ms[item_id] = duration_ms
    session.audio.remember_user_audio(item_id, (audio,))
    await session.send(
        {
            "type": "input_audio_buffer.committed",
            "event_id": new_event_id(),
            "previous_item_id": previous_item_id,
            "item_id": item_id,
        }
    )
    for kind in ("conversation.item.created", "conversation.item.added"):
        await session.send(
            {"type": kind, "event_id": new_event_id(), "previous_item_id": previous_item_id, "item": item}
        )
    if transcribing:
        transcript = speech_placeholder(duration_ms)
        where = {"item_id": item_id, "content_index": 0}
        await session.send(
            {
                "type": "conversation.item.input_audio_transcription.delta",
                "event_id": new_event_id(),
                **where,
                "delta": transcript,
            }
        )
        await session.send(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "event_id": new_event_id(),
                **where,
                "transcript": transcript,
                "usage": transcription_usage(transcription, duration_ms, transcript),
            }
        )
        part["transcript"] = transcript
    await session.send(
        {
            "type": "conversation.item.done",
            "event_id": new_event_id(),
            "previous_item_id": previous_item_id,
            "item": item,
        }
    )


def transcription_usage(
    transcription: dict[str, Any], duration_ms: float, transcript: str
) -> dict[str, Any]:
    """The `usage` of a finished transcription, as its model is billed: the Whisper models by
    the audio's length, the others (the gpt-4o-transcribe family) by tokens, the audio
    counted as the realtime models count it (100 ms a token)."""
    if transcription.get("model") in DURATION_BILLED_TRANSCRIBERS:
        return {"type": "duration", "seconds": round(duration_ms / 1000, 3)}
    audio_tokens = int(duration_ms // 100)
    prompt = transcription.get("prompt")
    text_tokens = tokens(prompt) if isinstance(prompt, str) and prompt else 0
    output_tokens = tokens(transcript)
    return {
        "type": "tokens",
        "total_tokens": audio_tokens + text_tokens + output_tokens,
        "input_tokens": audio_tokens + text_tokens,
        "input_token_details": {"text_tokens": text_tokens, "audio_tokens": audio_tokens},
        "output_tokens": output_tokens,
    }


def with_user_audio(session: SimSession, item: dict[str, Any]) -> dict[str, Any]:
    """An item as `conversation.item.retrieve` returns it: a user audio item with its audio
    (base64; committed from the input buffer, in the format it was appended in, or as the
    client created it), as the service's retrieve gives "the full content of the item,
    including audio data"."""
    kept = session.audio.user_audio.get(item.get("id"))  # type: ignore[arg-type]
    if kept is None:
        return item
    audio = iter(kept)
    content = []
    for part in item.get("content", ()):
        if isinstance(part, dict) and part.get("type") == "input_audio":
            data = next(audio, None)
            if data is not None:
                part = {**part, "audio": base64.b64encode(data).decode()}
        content.append(part)
    retrieved = copy.copy(item)
    retrieved["content"] = content
    return retrieved


def heard(session: SimSession, item: dict[str, Any]) -> str | None:
    """What a reply takes a user audio item to have said, when it has no transcript."""
    duration_ms = session.audio.user_audio_ms.get(item.get("id"))  # type: ignore[arg-type]
    return None if duration_ms is None else speech_placeholder(duration_ms)


# --- output audio --------------------------------------------------------------------------


async def speak(session: SimSession, response: SimResponse, where: dict[str, Any]) -> str:
    """Stream the response's text as audio with its transcript; returns the transcript sent
    (all of it, or the words whose audio went out before a cancel)."""
    format_type = response.audio_format
    if session.options.reply_audio_ms is not None:
        rate = FORMAT_RATES[format_type]
        spoken = speech.fixed_speech(response.text, session.options.reply_audio_ms, rate)
    else:
        spoken = await speech.synthesise(
            response.text,
            voice=response.voice,
            rate=FORMAT_RATES[format_type],
            engine=session.options.speech_engine,
        )
    data = spoken.encoded(format_type)
    stamped = session.options.audio_stamp and format_type == "audio/pcm"
    per_ms = bytes_per_ms(format_type)
    chunk_bytes = max(1, session.options.audio_chunk_ms) * per_ms
    head = '{"type":"response.output_audio.delta","event_id":"'
    middle = f'",{dumps(where)[1:-1]},"delta":"'
    loop = asyncio.get_running_loop()
    start = loop.time()
    words = spoken.words
    sent_words = 0
    sent_ms = 0.0
    for offset in range(0, len(data), chunk_bytes):
        pace = session.options.audio_pace
        if response.cancel_reason is None and response.cut_ms is None:
            if pace > 0:
                await response.pause(start + sent_ms / 1000 / pace)
            else:
                await asyncio.sleep(0)  # as fast as possible, yet never hogging the loop
        if response.cancel_reason is not None or response.cut_ms is not None:
            break
        chunk = data[offset : offset + chunk_bytes]
        chunk_end_ms = sent_ms + len(chunk) / per_ms
        while sent_words < len(words) and words[sent_words][0] < chunk_end_ms:
            await _transcript_delta(session, where, words[sent_words][1])
            sent_words += 1
        if stamped and len(chunk) >= STAMP_BYTES:
            chunk = time.time_ns().to_bytes(STAMP_BYTES, "little") + chunk[STAMP_BYTES:]
        b64 = base64.b64encode(chunk).decode("ascii")
        session.audio.sent_bytes += len(chunk)
        await session.send_frame(head + new_event_id() + middle + b64 + '"}')
        sent_ms = response.audio_ms = chunk_end_ms
    if response.cancel_reason is None and response.cut_ms is None:
        for _, word in words[sent_words:]:
            await _transcript_delta(session, where, word)
        sent_words = len(words)
    spoken = Spoken(duration_ms=sent_ms, words=words[:sent_words])
    if response.cut_ms is not None:  # truncated while it was spoken: what was heard
        spoken = spoken.cut(response.cut_ms)
        session.audio.remember_spoken(response.item_id, spoken)
        return spoken.transcript.rstrip()
    session.audio.remember_spoken(response.item_id, spoken)
    return spoken.transcript


async def _transcript_delta(session: SimSession, where: dict[str, Any], word: str) -> None:
    await session.send(
        {
            "type": "response.output_audio_transcript.delta",
            "event_id": new_event_id(),
            **where,
            "delta": word,
        }
    )


async def on_item_truncate(session: SimSession, event: dict[str, Any]) -> None:
    index = session.existing_item(event)
    item = session.items[index]
    item_id = item["id"]
    audio_end_ms = event.get("audio_end_ms")
    content_index = event.get("content_index", 0)
    if not isinstance(audio_end_ms, int) or isinstance(audio_end_ms, bool):
        raise Rejected.invalid_type("audio_end_ms", "an integer", audio_end_ms)
    if audio_end_ms < 0:
        raise Rejected(
            "integer_below_min_value",
            f"Invalid 'audio_end_ms': expected a value >= 0, but got {audio_end_ms} instead.",
            "audio_end_ms",
        )
    content = item.get("content")
    spoken = session.audio.spoken.get(item_id)
    # An item still being spoken (its audio has begun) is cut when its response ends.
    speaking = None if spoken is not None else _speaking(session, item_id)
    if item.get("role") != "assistant" or not isinstance(content, list) or (
        spoken is None and speaking is None
    ):
        raise Rejected(
            "invalid_value",
            f"Only model output audio messages can be truncated; item '{item_id}' is not one.",
            "item_id",
        )
    audio_part = speaking is not None or (content and content[0].get("type") == "output_audio")
    if content_index != 0 or not audio_part:
        raise Rejected(
            "invalid_value",
            f"Invalid 'content_index': item '{item_id}' has no audio content part at index "
            f"{content_index}.",
            "content_index",
        )
    if speaking is not None:
        duration_ms = speaking.audio_ms if speaking.cut_ms is None else speaking.cut_ms
    else:
        duration_ms = spoken.duration_ms
    if audio_end_ms > duration_ms:
        raise Rejected(
            "invalid_value",
            f"Audio content of {int(duration_ms)}ms is already shorter than {audio_end_ms}ms.",
            "audio_end_ms",
        )
    if speaking is not None:
        speaking.cut(audio_end_ms)
    else:
        heard = spoken.cut(audio_end_ms)
        content[0]["transcript"] = heard.transcript.rstrip()
        session.audio.remember_spoken(item_id, heard)
    await session.send(
        {
            "type": "conversation.item.truncated",
            "event_id": new_event_id(),
            "item_id": item_id,
            "content_index": content_index,
            "audio_end_ms": audio_end_ms,
        }
    )


def check_voice_update(session: SimSession, update: dict[str, Any]) -> None:
    """A `session.update` that changes the output voice once the model has spoken is refused
    whole, as the service refuses it: `cannot_update_voice`, no `param` (its words and fields,
    as seen from it: openai/openai-agents-python#1661; the docs: "Voice cannot be changed
    during the session once the model has responded with audio at least once"). Assumed: an
    update naming the voice the session already has is no change and passes; "spoken" means
    assistant audio in the conversation (the model's, or an `output_audio` item a client
    added) or audio of a response still being spoken."""
    audio = update.get("audio")
    output = audio.get("output") if isinstance(audio, dict) else None
    if not isinstance(output, dict) or "voice" not in output:
        return
    current = session.config.get("audio", {}).get("output", {}).get("voice")
    if output["voice"] == current:
        return
    spoken = session.audio.spoken
    if any(r.audio_ms > 0 for r in session.responses.values()) or any(
        item.get("id") in spoken for item in session.items
    ):
        raise Rejected(
            "cannot_update_voice",
            "Cannot update a conversation's voice if assistant audio is present.",
        )


def _speaking(session: SimSession, item_id: str) -> SimResponse | None:
    """The response speaking this item, once some of its audio has been sent."""
    for response in session.responses.values():
        if response.item_id == item_id and response.audio_ms > 0:
            return response
    return None


def remember_client_audio(session: SimSession, item_id: str, item: dict[str, Any]) -> None:
    """Keep what a client's audio item needs later: a user item's audio for retrieve, an
    assistant item's length for truncation."""
    if item.get("type") == "message" and item.get("role") == "user":
        _remember_user_parts(session, item_id, item)
    else:
        _remember_assistant_audio(session, item_id, item)


def _remember_user_parts(session: SimSession, item_id: str, item: dict[str, Any]) -> None:
    """The audio of a user item the client creates is kept as a committed item's is (in the
    same store of the latest items), for retrieve; never sent in the item's events. An item
    whose audio is longer than a committed item can hold is kept without it."""
    content = item.get("content")
    given = [
        part.get("audio")
        for part in (content if isinstance(content, list) else ())
        if isinstance(part, dict) and part.get("type") == "input_audio"
    ]
    given = [audio if isinstance(audio, str) and audio else None for audio in given]
    if not any(given) or sum(len(a) // 4 * 3 for a in given if a) > _KEEP_CLIENT_AUDIO_BYTES:
        return
    try:
        decoded = tuple(base64.b64decode(a, validate=True) if a else None for a in given)
    except (binascii.Error, ValueError):
        return
    session.audio.remember_user_audio(item_id, decoded)


def _remember_assistant_audio(session: SimSession, item_id: str, item: dict[str, Any]) -> None:
    """An assistant audio item a client adds (a conversation replayed into a fresh session) can
    be truncated like one the model spoke. Its length is that of its `audio` when given (in the
    session's output format), the words of its transcript spread evenly over it; without audio
    its length is unknown: any cut is taken, and the transcript is kept whole (cut at 0: none)."""
    if item.get("type") != "message" or item.get("role") != "assistant":
        return
    content = item.get("content")
    part = content[0] if isinstance(content, list) and content else None
    if not isinstance(part, dict) or part.get("type") != "output_audio":
        return
    transcript = part.get("transcript")
    words = re.findall(r"\S+\s*", transcript) if isinstance(transcript, str) else []
    duration = math.inf
    audio = part.get("audio")
    if isinstance(audio, str) and audio:
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            data = b""
        output = session.config.get("audio", {}).get("output", {})
        if data:
            duration = len(data) / bytes_per_ms(audio_format_type(output))
    step = 0.0 if math.isinf(duration) or not words else duration / len(words)
    timed = tuple((index * step, word) for index, word in enumerate(words))
    session.audio.remember_spoken(item_id, Spoken(duration_ms=duration, words=timed))


async def on_output_audio_clear(session: SimSession, event: dict[str, Any]) -> None:
    """A call's output audio is cleared (`calls.CallOutputs.clear_output_audio`), whether the
    event came on its data channel or a sideband. Over a WebSocket session the service has no
    output audio buffer (the client plays the audio itself) and refuses the event."""
    clear = getattr(session.connection, "clear_output_audio", None)
    if clear is None:
        raise Rejected(
            "invalid_value",
            "Invalid value: output_audio_buffer.clear is only supported for WebRTC",
            "type",
        )
    await clear()
