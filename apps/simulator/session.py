"""The session protocol of the simulated service: one connection's state and its client events.

`SimSession.receive` parses a client frame, dispatches it, and answers what the service
refuses with the service's `error` event (`wire.Rejected`). Here: `session.update`,
conversation items, `response.create`/`response.cancel`, and the streaming of a response.
A `session.update`, `response.create` or `conversation.item.create` outside the GA shape (no
`session.type`, a key the SDK's types lack, the read-only `id`/`object`/`expires_at` among
them; a content part the message's role does not take) is refused whole, the session going
on: `shape` says what and on what evidence.
Audio in and out (input buffer, VAD, spoken output) is `voice`'s.

The model's "reply" is deterministic text that shows what the response was asked for::

    [instructions: <instructions>] [metadata: k=v, ...] Reply 3 to: <last user text> (conversation: 5 items)

(instructions: the response's own `instructions` if given, else the session's;
the metadata part is left out when there is none), streamed as `deltas_per_response`
`response.output_text.delta` events `delta_interval` seconds apart. A spoken reply says the
same words. The closing `(conversation: N items)` is the conversation's length when the
response started: every item in it (messages, function calls and outputs, MCP items), the
reply's own item not yet counted; always the word "items", so a test can match the regular
expression `[(]conversation: ([0-9]+) items[)]` and see that a conversation kept its turns.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from apps.realtime import ga
from apps.realtime.audio import FORMAT_RATES
from apps.realtime.events import error_event, json_type
from apps.simulator import limits, shape, voice
from apps.simulator import tools as simtools
from apps.simulator.config import SimulatorConfig
from apps.simulator.wire import (
    Rejected,
    dumps,
    holds_lone_surrogate,
    new_event_id,
    new_id,
    required_object,
    tokens,
)

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gpt-realtime"

# Limits of the real service on response.create.
METADATA_MAX_PAIRS = 16
METADATA_MAX_KEY_CHARS = 64
METADATA_MAX_VALUE_CHARS = 512
# A client's own item id: the service refuses a longer one (a UUID's 36 characters, say).
ITEM_ID_MAX_CHARS = 32



def default_session_config(
    session_id: str, model: str, instructions: str
) -> dict[str, Any]:
    """The session object as the real service announces it (text output aside)."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": ["text"],
        "instructions": instructions,
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": int(time.time()) + 3600,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": {
                    "type": "server_vad",
                    **voice.TURN_DETECTION_DEFAULTS["server_vad"],
                },
            },
            "output": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "voice": "alloy",
                "speed": 1.0,
            },
        },
        "include": None,
    }


@dataclass(eq=False, kw_only=True)
class SimResponse:
    """One response being streamed."""

    id: str
    item_id: str
    in_conversation: bool
    conversation_id: str | None
    client_event_id: str | None
    instructions: str
    metadata: dict[str, str] | None
    output_modalities: list[str]
    max_output_tokens: int | str
    text: str  # the full text it will stream (already cut to max_output_tokens)
    incomplete: bool  # the text was cut to max_output_tokens
    input_tokens: int
    input_audio_tokens: int = 0
    audio_format: str = "audio/pcm"  # spoken responses: the output format and voice
    voice: str = "alloy"
    audio_ms: float = 0.0  # audio sent so far
    cut_ms: float | None = None  # its item was truncated here while it was being spoken
    tool: simtools.ToolPlan | None = None  # a tool step before (or instead of) the text
    output_index: int = 0  # the text item's (1 after a tool item)
    before: list[dict[str, Any]] = field(default_factory=list)  # output items before the text
    task: asyncio.Task[None] | None = None
    cancel_reason: str | None = None  # set once cancelled ("client_cancelled"/"turn_detected")
    _wake: asyncio.Future[None] | None = None

    def cancel(self, reason: str) -> None:
        self.cancel_reason = reason
        self._stop_pausing()

    def cut(self, audio_end_ms: float) -> None:
        """Its item is truncated while it is spoken: no audio is sent after this."""
        self.cut_ms = audio_end_ms
        self._stop_pausing()

    def _stop_pausing(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def pause(self, deadline: float) -> None:
        """Sleep until `deadline` (loop time), or until the response is cancelled or cut."""
        loop = asyncio.get_running_loop()
        wake: asyncio.Future[None] = loop.create_future()
        self._wake = wake
        timer = loop.call_at(deadline, _wake_up, wake)
        try:
            await wake
        finally:
            timer.cancel()
            self._wake = None


def _wake_up(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


@dataclass(eq=False, kw_only=True)
class SimSession:
    """One connection's state, and the handlers of its client events."""

    id: str
    model: str
    connection: ServerConnection
    options: SimulatorConfig  # the simulator's (shared, may change while the session runs)
    config: dict[str, Any]  # the session object, as last sent to the client
    conversation_id: str
    items: list[dict[str, Any]] = field(default_factory=list)  # the conversation, in order
    responses: dict[str, SimResponse] = field(default_factory=dict)  # running, by id
    active: SimResponse | None = None  # the running in-conversation response
    audio: voice.InputAudio = field(default_factory=voice.InputAudio)
    tool_state: simtools.ToolState = field(default_factory=simtools.ToolState)
    rate_window: limits.RateWindow = field(default_factory=limits.RateWindow)
    responses_started: int = 0
    received_log: deque[tuple[float, dict[str, Any]]] = field(default_factory=deque)
    sent_log: deque[tuple[float, str]] = field(default_factory=deque)
    # Told of every response.create as it arrives, and of each response's start and end (the
    # soak benchmark counts overlaps and duplicates with it): `Simulator.observer`.
    observer: Any = None

    @property
    def instructions(self) -> str:
        value = self.config.get("instructions")
        return value if isinstance(value, str) else ""

    def configure(self, update: dict[str, Any]) -> None:
        """Apply a session configuration: a `session.update`'s, or a call's (its offer's
        `session` or its accept). A turn detection given in part is completed with the
        service's defaults, so what is announced is what the VAD works by."""
        _deep_merge(self.config, update)
        voice.complete_turn_detection(self.config)

    def item_index(self, item_id: str) -> int | None:
        for index, item in enumerate(self.items):
            if item.get("id") == item_id:
                return index
        return None

    def stop_responses(self) -> None:
        for response in list(self.responses.values()):
            if response.task is not None:
                response.task.cancel()

    # --- sending -------------------------------------------------------------------------

    async def send(self, event: dict[str, Any]) -> None:
        """Send one event (built with `type` then `event_id` first, as the service does)."""
        await self.send_frame(dumps(event))

    async def send_frame(self, frame: str) -> None:
        # Recorded right before the write: `send` writes a whole text frame before it first
        # yields, so the log order is the wire order even with several tasks sending.
        if self.sent_log.maxlen != 0:
            self.sent_log.append((time.monotonic(), frame))
        await self.connection.send(frame)

    async def error(
        self,
        code: str,
        message: str,
        *,
        param: str | None = None,
        client_event_id: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        event = error_event(
            code=code,
            message=message,
            param=param,
            client_event_id=client_event_id,
            error_type=error_type,
        )
        event["event_id"] = new_event_id()  # stamped with the send time, like every event here
        await self.send(event)

    # --- client events -------------------------------------------------------------------

    async def receive(self, message: str | bytes) -> None:
        """One client frame: parsed, recorded, handled; a refusal becomes an `error` event."""
        received_at = time.monotonic()
        text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
        try:
            event = json.loads(text)
        except (ValueError, RecursionError):  # not JSON, or nested deeper than it can read
            event = None
        if "\\u" in text and holds_lone_surrogate(event):
            event = None
        if not isinstance(event, dict):
            if self.received_log.maxlen != 0:
                self.received_log.append((received_at, {"type": None, "raw": text}))
            what = "not valid JSON" if event is None else f"a JSON {json_type(event)}"
            await self.error(
                "invalid_json",
                f"The server could not parse the event: it is {what}, not a JSON object.",
            )
            return
        if self.received_log.maxlen != 0:
            self.received_log.append((received_at, event))
        event_id = event.get("event_id")
        client_event_id = event_id if isinstance(event_id, str) else None
        kind = event.get("type")
        try:
            if kind is None:
                raise Rejected.missing_parameter("type")
            if not isinstance(kind, str):
                raise Rejected.invalid_type("type", "a string", kind)
            handler = HANDLERS.get(kind)
            if handler is None:
                supported = ", ".join(f"'{name}'" for name in HANDLERS)
                raise Rejected(
                    "invalid_value",
                    f"Invalid value: '{kind}'. Supported values are: {supported}.",
                    "type",
                )
            await handler(self, event)
        except Rejected as rejected:
            await self.error(
                rejected.code,
                rejected.message,
                param=rejected.param,
                client_event_id=client_event_id,
                error_type=rejected.error_type,
            )
        except ConnectionClosed:
            raise
        except Exception:
            log.exception("simulator failed on a %s event", kind)
            await self.error(
                "server_error",
                "The server had an error while processing your request.",
                client_event_id=client_event_id,
                error_type="server_error",
            )

    async def on_session_update(self, event: dict[str, Any]) -> None:
        update = required_object(event, "session")
        shape.check_session_update(update)
        voice.check_voice_update(self, update)
        instructions = update.get("instructions")
        if "instructions" in update and not isinstance(instructions, str):
            raise Rejected.invalid_type("session.instructions", "a string", instructions)
        self.configure(update)
        await self.send(
            {"type": "session.updated", "event_id": new_event_id(), "session": self.config}
        )
        await simtools.list_mcp_tools(self)

    # conversation items

    async def on_item_create(self, event: dict[str, Any]) -> None:
        item = required_object(event, "item")
        item_type = item.get("type")
        if item_type not in ga.ITEM_TYPES:
            if item_type is None:
                raise Rejected.missing_parameter("item.type")
            supported = ", ".join(f"'{name}'" for name in sorted(ga.ITEM_TYPES))
            raise Rejected(
                "invalid_value",
                f"Invalid value: '{item_type}'. Supported values are: {supported}.",
                "item.type",
            )
        if item_type == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system"):
                raise Rejected(
                    "invalid_value",
                    f"Invalid value: '{role}'. Supported values are: 'user', 'assistant' and 'system'.",
                    "item.role",
                )
            if not isinstance(item.get("content"), list):
                raise Rejected.invalid_type("item.content", "an array", item.get("content"))
        shape.check_item(item)
        item_id = item.get("id")
        if item_id is not None and not isinstance(item_id, str):
            raise Rejected.invalid_type("item.id", "a string", item_id)
        if item_id is not None and len(item_id) > ITEM_ID_MAX_CHARS:
            raise Rejected(
                "string_above_max_length",
                "Invalid 'item.id': string too long. Expected a string with maximum length "
                f"{ITEM_ID_MAX_CHARS}, but got a string with length {len(item_id)} instead.",
                "item.id",
            )
        if item_id is not None and self.item_index(item_id) is not None:
            raise Rejected(
                "item_already_exists",
                f"Item with id '{item_id}' already exists in the conversation.",
                "item.id",
            )
        simtools.check_item(self, item)
        stored = _stored_item(item)
        stored["id"] = item_id if isinstance(item_id, str) and item_id else new_id("item")
        stored["object"] = "realtime.item"
        if stored.get("status") is None:
            stored["status"] = "completed"
        previous_item_id = self.insert_item(stored, event.get("previous_item_id"))
        simtools.item_added(self, stored)
        voice.remember_client_audio(self, stored["id"], item)
        await self.announce_item(stored, previous_item_id, created=True)

    def insert_item(self, item: dict[str, Any], after: object = None) -> str | None:
        """Put `item` into the conversation (at the end, first for "root", or after an item);
        returns the id of the item before it."""
        if after is None:
            index = len(self.items)
        elif after == "root":
            index = 0
        else:
            found = self.item_index(after) if isinstance(after, str) else None
            if found is None:
                raise Rejected(
                    "invalid_value",
                    f"Previous item with id '{after}' does not exist in the conversation.",
                    "previous_item_id",
                )
            index = found + 1
        self.items.insert(index, item)
        return self.items[index - 1]["id"] if index > 0 else None

    async def announce_item(
        self, item: dict[str, Any], previous_item_id: str | None, *, created: bool
    ) -> None:
        kinds = ("conversation.item.created",) if created else ()
        for kind in (*kinds, "conversation.item.added", "conversation.item.done"):
            await self.send(
                {
                    "type": kind,
                    "event_id": new_event_id(),
                    "previous_item_id": previous_item_id,
                    "item": item,
                }
            )

    async def on_item_retrieve(self, event: dict[str, Any]) -> None:
        index = self.existing_item(event)
        await self.send(
            {
                "type": "conversation.item.retrieved",
                "event_id": new_event_id(),
                "item": voice.with_user_audio(self, self.items[index]),
            }
        )

    async def on_item_delete(self, event: dict[str, Any]) -> None:
        index = self.existing_item(event)
        item = self.items.pop(index)
        # Its audio goes with it: an item the client creates again under its id has its own.
        self.audio.user_audio.pop(item["id"], None)
        await self.send(
            {"type": "conversation.item.deleted", "event_id": new_event_id(), "item_id": item["id"]}
        )

    def existing_item(self, event: dict[str, Any]) -> int:
        item_id = event.get("item_id")
        index = self.item_index(item_id) if isinstance(item_id, str) else None
        if index is None:
            raise Rejected(
                "item_not_found",
                f"Item with item_id '{item_id}' not found in the conversation.",
                "item_id",
            )
        return index

    # responses

    async def on_response_create(self, event: dict[str, Any]) -> None:
        if self.observer is not None:
            self.observer.response_create(self, event)
        params = _validated_response_params(event)
        in_conversation = params.get("conversation") in (None, "auto")
        active = self.active
        if in_conversation and active is not None:
            raise Rejected(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {active.id}. "
                "Wait until the response is finished before creating a new one.",
            )
        event_id = event.get("event_id")
        self.start_response(params, event_id if isinstance(event_id, str) else None)

    async def on_response_cancel(self, event: dict[str, Any]) -> None:
        response_id = event.get("response_id")
        target = self.responses.get(response_id) if response_id else self.active
        if target is None or target.cancel_reason is not None:
            raise Rejected(
                "response_cancel_not_active", "Cancellation failed: no active response found"
            )
        target.cancel("client_cancelled")

    async def server_response(self) -> str | None:
        """A response the service starts by itself (server VAD)."""
        while self.active is not None:
            turn_detection = self.config.get("audio", {}).get("input", {}).get("turn_detection")
            if isinstance(turn_detection, dict) and turn_detection.get("interrupt_response") is False:
                return None
            active = self.active
            active.cancel("turn_detected")
            if active.task is not None:
                await asyncio.wait({active.task})
        if self.connection.state is not State.OPEN:
            return None
        return self.start_response({}, None).id

    def start_response(self, params: dict[str, Any], client_event_id: str | None) -> SimResponse:
        in_conversation = params.get("conversation") in (None, "auto")
        instructions = params.get("instructions")
        if not isinstance(instructions, str):
            instructions = self.instructions
        metadata = params.get("metadata") or None
        self.responses_started += 1
        context = self._context(params.get("input"))
        parts = [f"[instructions: {instructions}]"]
        hidden = self.options.text_hides_metadata_keys
        shown = [f"{k}={v}" for k, v in (metadata or {}).items() if k not in hidden]
        if shown:
            parts.append(f"[metadata: {', '.join(shown)}]")
        parts.append(f"Reply {self.responses_started} to: {self._last_user_text(context)}")
        tool, note = simtools.plan(self, params, context)
        if note:
            parts.append(note)
        parts.append(f"(conversation: {len(self.items)} items)")
        text = " ".join(parts)

        max_output_tokens = params.get("max_output_tokens")
        if max_output_tokens is None:
            max_output_tokens = self.config.get("max_output_tokens", "inf")
        incomplete = isinstance(max_output_tokens, int) and tokens(text) > max_output_tokens
        if incomplete:
            text = text[: max(1, int(max_output_tokens)) * 4]

        modalities = params.get("output_modalities") or self.config.get("output_modalities")
        if not isinstance(modalities, list) or not modalities:
            modalities = ["text"]
        audio_output = _audio_output(params) or _audio_output(self.config)
        default_output = _audio_output(self.config)
        audio_format = audio_output.get("format") or default_output.get("format") or {}
        voice_name = audio_output.get("voice") or default_output.get("voice") or "alloy"
        audio_ms = [self.audio.user_audio_ms.get(i.get("id"), 0.0) for i in context]
        response = SimResponse(
            id=new_id("resp"),
            item_id=new_id("item"),
            in_conversation=in_conversation,
            conversation_id=self.conversation_id if in_conversation else None,
            client_event_id=client_event_id,
            instructions=instructions,
            metadata=dict(metadata) if metadata else None,
            output_modalities=list(modalities),
            max_output_tokens=max_output_tokens,
            text=text,
            incomplete=incomplete,
            input_tokens=tokens(instructions) + sum(tokens(_item_text(i)) for i in context),
            input_audio_tokens=int(sum(audio_ms) // 100),  # the service counts 100 ms a token
            audio_format=voice.audio_format_type({"format": audio_format}),
            voice=voice_name if isinstance(voice_name, str) else "alloy",
            tool=tool,
        )
        self.responses[response.id] = response
        if in_conversation:
            self.active = response
        response.task = asyncio.get_running_loop().create_task(
            self._stream(response), name=f"sim-{response.id}"
        )
        if self.observer is not None:
            self.observer.response_started(self, response)
        return response

    def _last_user_text(self, items: Sequence[dict[str, Any]]) -> str:
        for item in reversed(items):
            if item.get("type") == "message" and item.get("role") == "user":
                return _item_text(item) or voice.heard(self, item) or "(no text)"
        return "(nothing yet)"

    def _context(self, input_items: object) -> list[dict[str, Any]]:
        """The items a response sees: its own `input` if given, else the conversation."""
        if not isinstance(input_items, list):
            return self.items
        context = []
        for item in input_items:
            if not isinstance(item, dict):
                continue
            if item.get("type") == "item_reference":
                ref = item.get("id")
                index = self.item_index(ref) if isinstance(ref, str) else None
                if index is not None:
                    context.append(self.items[index])
            else:
                context.append(item)
        return context

    def _response_object(
        self,
        response: SimResponse,
        *,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None = None,
        status_details: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return {
            "object": "realtime.response",
            "id": response.id,
            "status": status,
            "status_details": status_details,
            "output": output,
            "conversation_id": response.conversation_id,
            "output_modalities": response.output_modalities,
            "max_output_tokens": response.max_output_tokens,
            "audio": {
                "output": {
                    "format": _format_object(response.audio_format),
                    "voice": response.voice,
                }
            },
            "usage": usage,
            "metadata": response.metadata,
        }

    async def _stream(self, response: SimResponse) -> None:
        try:
            await self._stream_events(response)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("simulator response %s failed", response.id)
            await self.connection.close(1011, "simulator error")
        finally:
            self.responses.pop(response.id, None)
            if self.active is response:
                self.active = None
            if self.observer is not None:
                self.observer.response_ended(self, response)

    async def _stream_events(self, response: SimResponse) -> None:
        rid, item_id = response.id, response.item_id
        await self.send(
            {
                "type": "response.created",
                "event_id": new_event_id(),
                "response": self._response_object(response, status="in_progress", output=[]),
            }
        )
        await limits.announce(self, response)
        if response.tool is not None:
            tool_item = await simtools.run(self, response)
            if response.tool.kind != "mcp_call":  # the tool's item is the whole output
                await self._done(response, [tool_item], "", "completed", None)
                return
            response.before, response.output_index = [tool_item], 1
        item: dict[str, Any] = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        await self.send(
            {
                "type": "response.output_item.added",
                "event_id": new_event_id(),
                "response_id": rid,
                "output_index": response.output_index,
                "item": item,
            }
        )
        previous_item_id: str | None = None
        if response.in_conversation:
            previous_item_id = self.insert_item(item)
            await self.send(
                {
                    "type": "conversation.item.added",
                    "event_id": new_event_id(),
                    "previous_item_id": previous_item_id,
                    "item": item,
                }
            )
        where = {
            "response_id": rid,
            "item_id": item_id,
            "output_index": response.output_index,
            "content_index": 0,
        }
        spoken = "audio" in response.output_modalities
        await self.send(
            {
                "type": "response.content_part.added",
                "event_id": new_event_id(),
                **where,
                "part": {"type": "audio", "transcript": ""} if spoken else {"type": "text", "text": ""},
            }
        )
        if spoken:
            text = await voice.speak(self, response, where)
        else:
            text = await self._stream_text(response, where)
        if response.cancel_reason is not None:
            status = "cancelled"
            details: dict[str, Any] | None = {"type": "cancelled", "reason": response.cancel_reason}
        elif response.incomplete:
            status = "incomplete"
            details = {"type": "incomplete", "reason": "max_output_tokens"}
        else:
            status, details = "completed", None
        item["status"] = "completed" if status == "completed" else "incomplete"
        if spoken:
            item["content"] = [{"type": "output_audio", "transcript": text}]
            for kind, extra in (
                ("response.output_audio.done", {}),
                ("response.output_audio_transcript.done", {"transcript": text}),
                ("response.content_part.done", {"part": {"type": "audio", "transcript": text}}),
            ):
                await self.send({"type": kind, "event_id": new_event_id(), **where, **extra})
        else:
            item["content"] = [{"type": "output_text", "text": text}]
            for kind, extra in (
                ("response.output_text.done", {"text": text}),
                ("response.content_part.done", {"part": {"type": "text", "text": text}}),
            ):
                await self.send({"type": kind, "event_id": new_event_id(), **where, **extra})

        await self._finish(response, item, previous_item_id, text, status, details)

    async def _stream_text(self, response: SimResponse, where: dict[str, Any]) -> str:
        """The reply as `response.output_text.delta`s; returns the text sent."""
        # The hot loop: each delta frame is two string joins around a pre-encoded piece.
        chunks = _split(response.text, self.options.deltas_per_response)
        head = '{"type":"response.output_text.delta","event_id":"'
        middle = f'",{dumps(where)[1:-1]},"delta":'
        interval = self.options.delta_interval
        start = asyncio.get_running_loop().time()
        sent = 0
        for index, chunk in enumerate(chunks):
            if response.cancel_reason is None:
                await response.pause(start + (index + 1) * interval)
            if response.cancel_reason is not None:
                break
            stall = self.options.stall_after_deltas
            if stall is not None and sent >= stall:
                await asyncio.Event().wait()  # silent until the connection is closed
            await self.send_frame(head + new_event_id() + middle + dumps(chunk) + "}")
            sent += 1
        return "".join(chunks[:sent])

    async def _finish(
        self,
        response: SimResponse,
        item: dict[str, Any],
        previous_item_id: str | None,
        text: str,
        status: str,
        details: dict[str, Any] | None,
    ) -> None:
        rid = response.id
        await self.send(
            {
                "type": "response.output_item.done",
                "event_id": new_event_id(),
                "response_id": rid,
                "output_index": response.output_index,
                "item": item,
            }
        )
        if response.in_conversation:
            await self.send(
                {
                    "type": "conversation.item.done",
                    "event_id": new_event_id(),
                    "previous_item_id": previous_item_id,
                    "item": item,
                }
            )
        await self._done(response, [*response.before, item], text, status, details)

    async def _done(
        self,
        response: SimResponse,
        output: list[dict[str, Any]],
        text: str,
        status: str,
        details: dict[str, Any] | None,
    ) -> None:
        """Usage, then `response.done` with `output`."""
        rid = response.id
        text_tokens = tokens(text) if text else 0
        audio_tokens = int(response.audio_ms // 50)  # the service counts 50 ms a token
        output_tokens = text_tokens + audio_tokens
        input_tokens = response.input_tokens + response.input_audio_tokens
        usage = {
            "total_tokens": input_tokens + output_tokens,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "input_token_details": {
                "text_tokens": response.input_tokens,
                "audio_tokens": response.input_audio_tokens,
                "image_tokens": 0,
                "cached_tokens": 0,
                "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
            },
            "output_token_details": {"text_tokens": text_tokens, "audio_tokens": audio_tokens},
        }
        # No longer active from here on: a client that answers response.done with a new
        # response.create must not be refused, even if the write below waits for the socket.
        self.responses.pop(rid, None)
        if self.active is response:
            self.active = None
        await self.send(
            {
                "type": "response.done",
                "event_id": new_event_id(),
                "response": self._response_object(
                    response, status=status, output=output, usage=usage, status_details=details
                ),
            }
        )


Handler = Callable[[SimSession, dict[str, Any]], Awaitable[None]]

# Every client event type the service takes, in the order its error message lists them.
HANDLERS: dict[str, Handler] = {
    "session.update": SimSession.on_session_update,
    "input_audio_buffer.append": voice.on_audio_append,
    "input_audio_buffer.commit": voice.on_audio_commit,
    "input_audio_buffer.clear": voice.on_audio_clear,
    "conversation.item.create": SimSession.on_item_create,
    "conversation.item.retrieve": SimSession.on_item_retrieve,
    "conversation.item.truncate": voice.on_item_truncate,
    "conversation.item.delete": SimSession.on_item_delete,
    "response.create": SimSession.on_response_create,
    "response.cancel": SimSession.on_response_cancel,
    "output_audio_buffer.clear": voice.on_output_audio_clear,
}


# --- helpers -------------------------------------------------------------------------------


# Objects a session configuration replaces whole even when given without a `type`: the
# service sets the turn detection it is given, its own defaults filling what is left out, and
# keeps nothing of the one before.
_REPLACED_WHOLE = frozenset({"turn_detection"})


def _deep_merge(target: dict[str, Any], update: dict[str, Any]) -> None:
    """Merge `update` into `target` key by key. A new object with a `type` (a tagged union such
    as `turn_detection` or `format`) replaces the old one whole, as a turn detection does."""
    for key, value in update.items():
        current = target.get(key)
        if (
            isinstance(value, dict)
            and isinstance(current, dict)
            and "type" not in value
            and key not in _REPLACED_WHOLE
        ):
            _deep_merge(current, value)
        else:
            target[key] = copy.deepcopy(value)


def _split(text: str, parts: int) -> list[str]:
    """`text` cut into `parts` non-empty, nearly equal pieces (padded if it is too short)."""
    parts = max(1, parts)
    if len(text) < parts:
        filler = " (simulated reply)"
        text += (filler * (parts // len(filler) + 1))[: parts - len(text)]
    size = len(text)
    bounds = [i * size // parts for i in range(parts + 1)]
    return [text[bounds[i] : bounds[i + 1]] for i in range(parts)]

def _validated_response_params(event: dict[str, Any]) -> dict[str, Any]:
    """The `response` object of a response.create, checked as the service checks it."""
    if "response" not in event:
        return {}
    params = event["response"]
    if not isinstance(params, dict):
        raise Rejected.invalid_type("response", "an object", params)
    shape.check_response_params(params)
    instructions = params.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise Rejected.invalid_type("response.instructions", "a string", instructions)
    conversation = params.get("conversation")
    if conversation is not None and conversation not in ("auto", "none"):
        raise Rejected(
            "invalid_value",
            f"Invalid value: '{conversation}'. Supported values are: 'auto' and 'none'.",
            "response.conversation",
        )
    metadata = params.get("metadata")
    if metadata is not None:
        _check_metadata(metadata)
    max_output_tokens = params.get("max_output_tokens")
    if max_output_tokens is not None and max_output_tokens != "inf":
        if not isinstance(max_output_tokens, int) or isinstance(max_output_tokens, bool):
            raise Rejected.invalid_type(
                "response.max_output_tokens", "an integer or 'inf'", max_output_tokens
            )
        if not 1 <= max_output_tokens <= 4096:
            raise Rejected(
                "integer_out_of_range" if max_output_tokens > 4096 else "integer_below_min_value",
                "Invalid 'response.max_output_tokens': expected a value between 1 and 4096, "
                f"but got {max_output_tokens} instead.",
                "response.max_output_tokens",
            )
    return params


def _check_metadata(metadata: object) -> None:
    if not isinstance(metadata, dict):
        raise Rejected.invalid_type("response.metadata", "an object", metadata)
    if len(metadata) > METADATA_MAX_PAIRS:
        raise Rejected(
            "object_above_max_properties",
            "Invalid 'response.metadata': too many properties. Expected an object with at most "
            f"{METADATA_MAX_PAIRS} properties, but got an object with {len(metadata)} "
            "properties instead.",
            "response.metadata",
        )
    for key, value in metadata.items():
        if len(key) > METADATA_MAX_KEY_CHARS:
            raise Rejected(
                "string_above_max_length",
                f"Invalid 'response.metadata': key '{key}' is too long. Expected a key with "
                f"maximum length {METADATA_MAX_KEY_CHARS}, but got a key with length "
                f"{len(key)} instead.",
                "response.metadata",
            )
        param = f"response.metadata.{key}"
        if not isinstance(value, str):
            raise Rejected.invalid_type(param, "a string", value)
        if len(value) > METADATA_MAX_VALUE_CHARS:
            raise Rejected(
                "string_above_max_length",
                f"Invalid '{param}': string too long. Expected a string with maximum length "
                f"{METADATA_MAX_VALUE_CHARS}, but got a string with length {len(value)} instead.",
                param,
            )


def _stored_item(item: dict[str, Any]) -> dict[str, Any]:
    """A copy of a client item as the service keeps and reports it: without audio bytes."""
    stored = copy.deepcopy(item)
    content = stored.get("content")
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                part.pop("audio", None)
    return stored


def _item_text(item: dict[str, Any]) -> str:
    """The readable text of a message item (text, or audio transcripts)."""
    pieces = []
    content = item.get("content")
    for part in content if isinstance(content, list) else ():
        if isinstance(part, dict):
            text = part.get("text")
            if not isinstance(text, str):
                text = part.get("transcript")
            if isinstance(text, str):
                pieces.append(text)
    return " ".join(pieces)


def _format_object(format_type: str) -> dict[str, Any]:
    if format_type == "audio/pcm":
        return {"type": format_type, "rate": FORMAT_RATES[format_type]}
    return {"type": format_type}


def _audio_output(config: dict[str, Any]) -> dict[str, Any]:
    audio = config.get("audio")
    output = audio.get("output") if isinstance(audio, dict) else None
    return output if isinstance(output, dict) else {}


