"""Audio in and out of the simulated service: the input audio buffer and truncation.

Handlers here take the session and the client event, as `session.HANDLERS` calls them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from apps.realtime.events import json_type
from apps.simulator.wire import Rejected, new_event_id, new_id

if TYPE_CHECKING:
    from apps.simulator.session import SimSession

MIN_COMMIT_MS = 100.0


@dataclass(eq=False, kw_only=True)
class InputAudio:
    """A session's input audio buffer."""

    buffer_bytes: int = 0


async def on_audio_append(session: SimSession, event: dict[str, Any]) -> None:
    audio = event.get("audio")
    if not isinstance(audio, str):
        raise Rejected(
            "invalid_type",
            f"Invalid type for 'audio': expected a string, but got {json_type(audio)} instead.",
            "audio",
        )
    # Decoded size from the base64 length, without decoding.
    session.audio.buffer_bytes += len(audio) * 3 // 4 - audio[-2:].count("=")


async def on_audio_clear(session: SimSession, event: dict[str, Any]) -> None:
    session.audio.buffer_bytes = 0
    await session.send({"type": "input_audio_buffer.cleared", "event_id": new_event_id()})


async def on_audio_commit(session: SimSession, event: dict[str, Any]) -> None:
    audio_input = session.config.get("audio", {}).get("input", {})
    audio_format = (audio_input.get("format") or {}).get("type", "audio/pcm")
    bytes_per_ms = 48 if audio_format == "audio/pcm" else 8  # pcm16 24 kHz; G.711 8 kHz
    duration_ms = session.audio.buffer_bytes / bytes_per_ms
    if duration_ms < MIN_COMMIT_MS:
        raise Rejected(
            "input_audio_buffer_commit_empty",
            "Error committing input audio buffer: buffer too small. Expected at least "
            f"100ms of audio, but buffer only has {duration_ms:.2f}ms of audio.",
        )
    session.audio.buffer_bytes = 0
    item: dict[str, Any] = {
        "id": new_id("item"),
        "object": "realtime.item",
        "type": "message",
        "status": "completed",
        "role": "user",
        "content": [{"type": "input_audio", "transcript": f"<{round(duration_ms)} ms of audio>"}],
    }
    previous_item_id = session.insert_item(item)
    await session.send(
        {
            "type": "input_audio_buffer.committed",
            "event_id": new_event_id(),
            "previous_item_id": previous_item_id,
            "item_id": item["id"],
        }
    )
    await session.announce_item(item, previous_item_id, created=True)
    turn_detection = audio_input.get("turn_detection")
    if isinstance(turn_detection, dict) and turn_detection.get("create_response", True):
        await session.server_response()


async def on_item_truncate(session: SimSession, event: dict[str, Any]) -> None:
    index = session.existing_item(event)
    audio_end_ms = event.get("audio_end_ms")
    content_index = event.get("content_index", 0)
    if not isinstance(audio_end_ms, int) or isinstance(audio_end_ms, bool):
        raise Rejected(
            "invalid_type",
            "Invalid type for 'audio_end_ms': expected an integer, "
            f"but got {json_type(audio_end_ms)} instead.",
            "audio_end_ms",
        )
    await session.send(
        {
            "type": "conversation.item.truncated",
            "event_id": new_event_id(),
            "item_id": session.items[index]["id"],
            "content_index": content_index,
            "audio_end_ms": audio_end_ms,
        }
    )


async def on_output_audio_clear(session: SimSession, event: dict[str, Any]) -> None:
    """Accepted and ignored: the simulator plays no audio."""
