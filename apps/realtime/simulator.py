"""An in-process simulator of the OpenAI Realtime service (GA protocol). No Django.

It speaks the WebSocket protocol of `wss://api.openai.com/v1/realtime?model=M` strictly enough
that the official clients (the `openai` SDK, the Agents SDK's realtime model) work against it,
and it rejects, with the same `error` events, what the real service rejects. The model's
"reply" is deterministic text that shows what the response was asked for::

    [instructions: <effective instructions>] [metadata: k=v, ...] Reply 3 to: <last user text>

(effective instructions: the response's own `instructions` if given, else the session's;
the metadata part is left out when there is none), streamed as `deltas_per_response`
`response.output_text.delta` events `delta_interval` seconds apart.

Event ids: every server event's `event_id` is `event_<counter>_<time.time_ns() at send>`,
so a benchmark can read a frame's send time from the frame itself
(`event_sent_time_ns(event_id)`).

Deliberate simplifications (the real service would differ):
- Output is text only: responses stream `response.output_text.*` whatever the modalities
  asked for, and `session.created` advertises `output_modalities: ["text"]`.
- No voice activity detection on appended audio: `input_audio_buffer.commit` (≥ 100 ms of
  audio) adds a user item whose transcript is a placeholder, and, when turn detection is on
  with `create_response`, starts a response as server VAD does. `trigger_server_response`
  starts such a response directly.
- A client-created item is announced with `conversation.item.created` and with the GA pair
  `conversation.item.added` / `conversation.item.done` (the real GA service sends the pair).

Use::

    sim = Simulator(SimulatorConfig(deltas_per_response=4, delta_interval=0.01))
    await sim.start()                 # port 0: any free port
    client = openai.AsyncOpenAI(api_key="sk-test", websocket_base_url=sim.url)
    ...
    await sim.aclose()
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import logging
import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.typing import Subprotocol

from apps.realtime.events import error_event, json_type

log = logging.getLogger(__name__)

__all__ = [
    "SimResponse",
    "SimSession",
    "Simulator",
    "SimulatorConfig",
    "event_sent_time_ns",
    "new_event_id",
]

DEFAULT_MODEL = "gpt-realtime"

# Limits of the real service on response.create.
METADATA_MAX_PAIRS = 16
METADATA_MAX_KEY_CHARS = 64
METADATA_MAX_VALUE_CHARS = 512
MIN_COMMIT_MS = 100.0

CLIENT_EVENT_TYPES = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.retrieve",
    "conversation.item.truncate",
    "conversation.item.delete",
    "response.create",
    "response.cancel",
    "output_audio_buffer.clear",
)
ITEM_TYPES = frozenset(
    {
        "message",
        "function_call",
        "function_call_output",
        "mcp_approval_response",
        "mcp_approval_request",
        "mcp_call",
        "mcp_list_tools",
    }
)
_SESSION_READ_ONLY = frozenset({"id", "object", "expires_at"})
_KEEP_CLOSED_LOGS = 256  # event logs of this many ended sessions stay readable

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_event_counter = itertools.count(1)
_EVENT_ID = re.compile(r"event_\d+_(\d+)\Z")


def new_event_id() -> str:
    """`event_<counter>_<time.time_ns()>`: the id itself carries the time it was made (sent)."""
    return f"event_{next(_event_counter)}_{time.time_ns()}"


def event_sent_time_ns(event_id: object) -> int | None:
    """The `time.time_ns()` a simulator event was sent at, read from its id; else None."""
    if not isinstance(event_id, str):
        return None
    match = _EVENT_ID.match(event_id)
    return int(match.group(1)) if match else None


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


def _tokens(text: str) -> int:
    """A rough token count (4 characters a token), never zero."""
    return max(1, (len(text) + 3) // 4)


def _deep_merge(target: dict[str, Any], update: dict[str, Any]) -> None:
    """Merge `update` into `target` key by key. A new object with a `type` (a tagged union such
    as `turn_detection` or `format`) replaces the old one whole."""
    for key, value in update.items():
        current = target.get(key)
        if isinstance(value, dict) and isinstance(current, dict) and "type" not in value:
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


@dataclass(kw_only=True)
class SimulatorConfig:
    deltas_per_response: int = 8
    delta_interval: float = 0.02  # seconds between deltas
    # If set, a handshake without `Authorization: Bearer <key>` (or the browser subprotocol
    # `openai-insecure-api-key.<key>`) is refused with HTTP 401.
    required_api_key: str | None = None
    default_instructions: str = "You are a helpful assistant."
    # Events kept per session and direction for `received`/`sent` (the latest ones);
    # None keeps all, 0 none. Bounded by default so long benchmarks don't grow memory.
    record_limit: int | None = 256
    # Metadata keys left out of the reply text (they stay in `response.metadata`):
    # the relay's own bookkeeping key is not something a model would talk about.
    text_hides_metadata_keys: tuple[str, ...] = ("oc_request",)
    # Fault injection: after this many deltas a response goes silent (no more events, not
    # even for response.cancel), as a stalled upstream would. None: never.
    stall_after_deltas: int | None = None


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
    task: asyncio.Task[None] | None = None
    cancel_reason: str | None = None  # set once cancelled ("client_cancelled"/"turn_detected")
    _wake: asyncio.Future[None] | None = None

    def cancel(self, reason: str) -> None:
        self.cancel_reason = reason
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)


@dataclass(eq=False, kw_only=True)
class SimSession:
    """One connection's state."""

    id: str
    model: str
    connection: ServerConnection
    config: dict[str, Any]  # the session object, as last sent to the client
    conversation_id: str
    items: list[dict[str, Any]] = field(default_factory=list)  # the conversation, in order
    responses: dict[str, SimResponse] = field(default_factory=dict)  # running, by id
    active: SimResponse | None = None  # the running in-conversation response
    audio_buffer_bytes: int = 0
    responses_started: int = 0
    received_log: deque[tuple[float, dict[str, Any]]] = field(default_factory=deque)
    sent_log: deque[tuple[float, str]] = field(default_factory=deque)

    @property
    def instructions(self) -> str:
        value = self.config.get("instructions")
        return value if isinstance(value, str) else ""

    def item_index(self, item_id: str) -> int | None:
        for index, item in enumerate(self.items):
            if item.get("id") == item_id:
                return index
        return None


class _Rejected(Exception):
    """A client event the service refuses; becomes an `error` event."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


def _wake_up(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Simulator:
    """The Realtime service, in process. See the module docstring."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.sessions: dict[str, SimSession] = {}  # live sessions by id
        self.connections_opened = 0
        self.connections_active = 0
        self.handshakes_refused = 0
        self._server: Server | None = None
        self._host = "127.0.0.1"
        self._logs: dict[str, SimSession] = {}  # live and recently ended sessions
        self._ended: deque[str] = deque()
        # Sessions not yet returned by wait_for_session (bounded: benchmarks never ask).
        self._unclaimed: deque[str] = deque(maxlen=4 * _KEEP_CLOSED_LOGS)
        self._session_waiters: list[asyncio.Future[None]] = []
        self._handlers: dict[str, Callable[[SimSession, dict[str, Any]], Any]] = {
            "session.update": self._on_session_update,
            "input_audio_buffer.append": self._on_audio_append,
            "input_audio_buffer.commit": self._on_audio_commit,
            "input_audio_buffer.clear": self._on_audio_clear,
            "conversation.item.create": self._on_item_create,
            "conversation.item.retrieve": self._on_item_retrieve,
            "conversation.item.truncate": self._on_item_truncate,
            "conversation.item.delete": self._on_item_delete,
            "response.create": self._on_response_create,
            "response.cancel": self._on_response_cancel,
            "output_audio_buffer.clear": self._on_output_audio_clear,
        }

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if self._server is not None:
            raise RuntimeError("simulator already started")
        self._host = host
        self._server = await serve(
            self._serve_connection,
            host,
            port,
            max_size=None,
            compression=None,
            process_request=self._process_request,
            select_subprotocol=_select_subprotocol,
        )

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("simulator not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """The base URL (`ws://host:port/v1`); clients connect to `url + "/realtime?model=M"`."""
        host = "127.0.0.1" if self._host in ("", "0.0.0.0") else self._host
        if host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"ws://{host}:{self.port}/v1"

    async def aclose(self) -> None:
        """Stop listening and close every connection (code 1001)."""
        server, self._server = self._server, None
        if server is None:
            return
        for session in list(self.sessions.values()):
            self._stop_responses(session)
        server.close(close_connections=True)
        await server.wait_closed()

    async def __aenter__(self) -> Simulator:
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- observability and control (for tests and benchmarks) --------------------------------

    def received(self, session_id: str) -> list[tuple[float, dict[str, Any]]]:
        """Client events received, in order: (time.monotonic(), parsed event). A frame that was
        not a JSON object is recorded as `{"type": None, "raw": <text>}`."""
        return list(self._session_logs(session_id).received_log)

    def sent(self, session_id: str) -> list[tuple[float, dict[str, Any]]]:
        """Server events sent, in order: (time.monotonic(), event)."""
        return [(t, json.loads(frame)) for t, frame in self._session_logs(session_id).sent_log]

    async def trigger_server_response(self, session_id: str) -> str | None:
        """Start a response as server VAD does (no client event, no metadata). Returns its id,
        or None when turn detection says not to interrupt the active response."""
        session = self.sessions.get(session_id)
        if session is None:
            raise KeyError(f"no live session {session_id!r}")
        return await self._server_response(session)

    async def close_session(self, session_id: str, code: int = 1011, reason: str = "") -> None:
        """Close one connection from the server side."""
        session = self.sessions.get(session_id)
        if session is None:
            raise KeyError(f"no live session {session_id!r}")
        self._stop_responses(session)
        await session.connection.close(code, reason)

    async def wait_for_session(self, timeout: float = 5.0) -> str:
        """The id of the oldest live session not yet returned by this method; waits for a new
        one when there is none. Raises TimeoutError after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            while self._unclaimed:
                session_id = self._unclaimed.popleft()
                if session_id in self.sessions:
                    return session_id
            waiter: asyncio.Future[None] = loop.create_future()
            self._session_waiters.append(waiter)
            try:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError("no new simulator session appeared")
                await asyncio.wait_for(waiter, remaining)
            finally:
                if waiter in self._session_waiters:
                    self._session_waiters.remove(waiter)

    def _session_logs(self, session_id: str) -> SimSession:
        session = self._logs.get(session_id)
        if session is None:
            raise KeyError(f"unknown session {session_id!r}")
        return session

    # --- connections -----------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path.rstrip("/")
        if not path.endswith("/realtime"):
            self.handshakes_refused += 1
            return _json_response(
                connection,
                HTTPStatus.NOT_FOUND,
                "invalid_request_error",
                "not_found",
                f"Invalid URL (GET {path or '/'})",
            )
        key = self.config.required_api_key
        if key is not None and not _authorized(request, key):
            self.handshakes_refused += 1
            return _json_response(
                connection,
                HTTPStatus.UNAUTHORIZED,
                "invalid_request_error",
                "invalid_api_key",
                "Incorrect API key provided.",
            )
        return None

    async def _serve_connection(self, connection: ServerConnection) -> None:
        query = parse_qs(urlsplit(connection.request.path if connection.request else "").query)
        model = (query.get("model") or [DEFAULT_MODEL])[0] or DEFAULT_MODEL
        limit = self.config.record_limit
        session_id = _new_id("sess")
        session = SimSession(
            id=session_id,
            model=model,
            connection=connection,
            config=self._default_session_config(session_id, model),
            conversation_id=_new_id("conv"),
            received_log=deque(maxlen=limit),
            sent_log=deque(maxlen=limit),
        )
        self.sessions[session.id] = session
        self._logs[session.id] = session
        self.connections_opened += 1
        self.connections_active += 1
        self._unclaimed.append(session.id)
        for waiter in self._session_waiters:
            if not waiter.done():
                waiter.set_result(None)
        log.debug("simulator session %s opened (model %s)", session.id, model)
        try:
            await self._send(
                session,
                {"type": "session.created", "event_id": new_event_id(), "session": session.config},
            )
            async for message in connection:
                await self._on_message(session, message)
        except ConnectionClosed:
            pass
        finally:
            self._stop_responses(session)
            self.sessions.pop(session.id, None)
            self.connections_active -= 1
            self._ended.append(session.id)
            while len(self._ended) > _KEEP_CLOSED_LOGS:
                self._logs.pop(self._ended.popleft(), None)
            log.debug("simulator session %s closed", session.id)

    def _default_session_config(self, session_id: str, model: str) -> dict[str, Any]:
        """The session object as the real service announces it (text output aside)."""
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": session_id,
            "model": model,
            "output_modalities": ["text"],
            "instructions": self.config.default_instructions,
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
                        "threshold": 0.5,
                        "prefix_padding_ms": 300,
                        "silence_duration_ms": 200,
                        "idle_timeout_ms": None,
                        "create_response": True,
                        "interrupt_response": True,
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

    @staticmethod
    def _stop_responses(session: SimSession) -> None:
        for response in list(session.responses.values()):
            if response.task is not None:
                response.task.cancel()

    # --- sending ---------------------------------------------------------------------------

    async def _send(self, session: SimSession, event: dict[str, Any]) -> None:
        """Send one event (built with `type` then `event_id` first, as the service does)."""
        await self._send_frame(session, _dumps(event))

    async def _send_frame(self, session: SimSession, frame: str) -> None:
        # Recorded right before the write: `send` writes a whole text frame before it first
        # yields, so the log order is the wire order even with several tasks sending.
        if session.sent_log.maxlen != 0:
            session.sent_log.append((time.monotonic(), frame))
        await session.connection.send(frame)

    async def _error(
        self,
        session: SimSession,
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
        await self._send(session, event)

    # --- client events ---------------------------------------------------------------------

    async def _on_message(self, session: SimSession, message: str | bytes) -> None:
        received_at = time.monotonic()
        text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
        try:
            event = json.loads(text)
        except (ValueError, RecursionError):  # not JSON, or nested deeper than it can read
            event = None
        if not isinstance(event, dict):
            if session.received_log.maxlen != 0:
                session.received_log.append((received_at, {"type": None, "raw": text}))
            what = "not valid JSON" if event is None else f"a JSON {json_type(event)}"
            await self._error(
                session,
                "invalid_json",
                f"The server could not parse the event: it is {what}, not a JSON object.",
            )
            return
        if session.received_log.maxlen != 0:
            session.received_log.append((received_at, event))
        event_id = event.get("event_id")
        client_event_id = event_id if isinstance(event_id, str) else None
        kind = event.get("type")
        try:
            if kind is None:
                raise _Rejected(
                    "missing_required_parameter", "Missing required parameter: 'type'.", "type"
                )
            if not isinstance(kind, str):
                raise _Rejected(
                    "invalid_type",
                    f"Invalid type for 'type': expected a string, but got {json_type(kind)} instead.",
                    "type",
                )
            handler = self._handlers.get(kind)
            if handler is None:
                supported = ", ".join(f"'{name}'" for name in CLIENT_EVENT_TYPES)
                raise _Rejected(
                    "invalid_value",
                    f"Invalid value: '{kind}'. Supported values are: {supported}.",
                    "type",
                )
            await handler(session, event)
        except _Rejected as rejected:
            await self._error(
                session,
                rejected.code,
                rejected.message,
                param=rejected.param,
                client_event_id=client_event_id,
            )
        except ConnectionClosed:
            raise
        except Exception:
            log.exception("simulator failed on a %s event", kind)
            await self._error(
                session,
                "server_error",
                "The server had an error while processing your request.",
                client_event_id=client_event_id,
                error_type="server_error",
            )

    async def _on_session_update(self, session: SimSession, event: dict[str, Any]) -> None:
        update = event.get("session")
        if update is None:
            raise _Rejected(
                "missing_required_parameter", "Missing required parameter: 'session'.", "session"
            )
        if not isinstance(update, dict):
            raise _Rejected(
                "invalid_type",
                f"Invalid type for 'session': expected an object, but got {json_type(update)} instead.",
                "session",
            )
        session_type = update.get("type")
        if session_type is not None and session_type != "realtime":
            raise _Rejected(
                "invalid_value",
                f"Invalid value: '{session_type}'. Supported values are: 'realtime'.",
                "session.type",
            )
        instructions = update.get("instructions")
        if "instructions" in update and not isinstance(instructions, str):
            raise _Rejected(
                "invalid_type",
                "Invalid type for 'session.instructions': expected a string, "
                f"but got {json_type(instructions)} instead.",
                "session.instructions",
            )
        _deep_merge(
            session.config, {k: v for k, v in update.items() if k not in _SESSION_READ_ONLY}
        )
        await self._send(
            session,
            {"type": "session.updated", "event_id": new_event_id(), "session": session.config},
        )

    # conversation items

    async def _on_item_create(self, session: SimSession, event: dict[str, Any]) -> None:
        item = event.get("item")
        if item is None:
            raise _Rejected(
                "missing_required_parameter", "Missing required parameter: 'item'.", "item"
            )
        if not isinstance(item, dict):
            raise _Rejected(
                "invalid_type",
                f"Invalid type for 'item': expected an object, but got {json_type(item)} instead.",
                "item",
            )
        item_type = item.get("type")
        if item_type not in ITEM_TYPES:
            if item_type is None:
                raise _Rejected(
                    "missing_required_parameter",
                    "Missing required parameter: 'item.type'.",
                    "item.type",
                )
            supported = ", ".join(f"'{name}'" for name in sorted(ITEM_TYPES))
            raise _Rejected(
                "invalid_value",
                f"Invalid value: '{item_type}'. Supported values are: {supported}.",
                "item.type",
            )
        if item_type == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system"):
                raise _Rejected(
                    "invalid_value",
                    f"Invalid value: '{role}'. Supported values are: 'user', 'assistant' and 'system'.",
                    "item.role",
                )
            if not isinstance(item.get("content"), list):
                raise _Rejected(
                    "invalid_type",
                    "Invalid type for 'item.content': expected an array, "
                    f"but got {json_type(item.get('content'))} instead.",
                    "item.content",
                )
        item_id = item.get("id")
        if item_id is not None and session.item_index(item_id) is not None:
            raise _Rejected(
                "item_already_exists",
                f"Item with id '{item_id}' already exists in the conversation.",
                "item.id",
            )
        stored = _stored_item(item)
        stored["id"] = item_id if isinstance(item_id, str) and item_id else _new_id("item")
        stored["object"] = "realtime.item"
        if stored.get("status") is None:
            stored["status"] = "completed"
        previous_item_id = self._insert_item(session, stored, event.get("previous_item_id"))
        await self._announce_item(session, stored, previous_item_id, created=True)

    def _insert_item(
        self, session: SimSession, item: dict[str, Any], after: object = None
    ) -> str | None:
        """Put `item` into the conversation (at the end, first for "root", or after an item);
        returns the id of the item before it."""
        if after is None:
            index = len(session.items)
        elif after == "root":
            index = 0
        else:
            found = session.item_index(after) if isinstance(after, str) else None
            if found is None:
                raise _Rejected(
                    "invalid_value",
                    f"Previous item with id '{after}' does not exist in the conversation.",
                    "previous_item_id",
                )
            index = found + 1
        session.items.insert(index, item)
        return session.items[index - 1]["id"] if index > 0 else None

    async def _announce_item(
        self,
        session: SimSession,
        item: dict[str, Any],
        previous_item_id: str | None,
        *,
        created: bool,
    ) -> None:
        kinds = ("conversation.item.created",) if created else ()
        for kind in (*kinds, "conversation.item.added", "conversation.item.done"):
            await self._send(
                session,
                {
                    "type": kind,
                    "event_id": new_event_id(),
                    "previous_item_id": previous_item_id,
                    "item": item,
                },
            )

    async def _on_item_retrieve(self, session: SimSession, event: dict[str, Any]) -> None:
        index = self._existing_item(session, event)
        await self._send(
            session,
            {
                "type": "conversation.item.retrieved",
                "event_id": new_event_id(),
                "item": session.items[index],
            },
        )

    async def _on_item_delete(self, session: SimSession, event: dict[str, Any]) -> None:
        index = self._existing_item(session, event)
        item = session.items.pop(index)
        await self._send(
            session,
            {
                "type": "conversation.item.deleted",
                "event_id": new_event_id(),
                "item_id": item["id"],
            },
        )

    async def _on_item_truncate(self, session: SimSession, event: dict[str, Any]) -> None:
        index = self._existing_item(session, event)
        audio_end_ms = event.get("audio_end_ms")
        content_index = event.get("content_index", 0)
        if not isinstance(audio_end_ms, int) or isinstance(audio_end_ms, bool):
            raise _Rejected(
                "invalid_type",
                "Invalid type for 'audio_end_ms': expected an integer, "
                f"but got {json_type(audio_end_ms)} instead.",
                "audio_end_ms",
            )
        await self._send(
            session,
            {
                "type": "conversation.item.truncated",
                "event_id": new_event_id(),
                "item_id": session.items[index]["id"],
                "content_index": content_index,
                "audio_end_ms": audio_end_ms,
            },
        )

    @staticmethod
    def _existing_item(session: SimSession, event: dict[str, Any]) -> int:
        item_id = event.get("item_id")
        index = session.item_index(item_id) if isinstance(item_id, str) else None
        if index is None:
            raise _Rejected(
                "item_not_found",
                f"Item with item_id '{item_id}' not found in the conversation.",
                "item_id",
            )
        return index

    # input audio

    async def _on_audio_append(self, session: SimSession, event: dict[str, Any]) -> None:
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise _Rejected(
                "invalid_type",
                f"Invalid type for 'audio': expected a string, but got {json_type(audio)} instead.",
                "audio",
            )
        # Decoded size from the base64 length, without decoding.
        session.audio_buffer_bytes += len(audio) * 3 // 4 - audio[-2:].count("=")

    async def _on_audio_clear(self, session: SimSession, event: dict[str, Any]) -> None:
        session.audio_buffer_bytes = 0
        await self._send(
            session, {"type": "input_audio_buffer.cleared", "event_id": new_event_id()}
        )

    async def _on_audio_commit(self, session: SimSession, event: dict[str, Any]) -> None:
        audio_input = session.config.get("audio", {}).get("input", {})
        audio_format = (audio_input.get("format") or {}).get("type", "audio/pcm")
        bytes_per_ms = 48 if audio_format == "audio/pcm" else 8  # pcm16 24 kHz; G.711 8 kHz
        duration_ms = session.audio_buffer_bytes / bytes_per_ms
        if duration_ms < MIN_COMMIT_MS:
            raise _Rejected(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"100ms of audio, but buffer only has {duration_ms:.2f}ms of audio.",
            )
        session.audio_buffer_bytes = 0
        item: dict[str, Any] = {
            "id": _new_id("item"),
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [
                {"type": "input_audio", "transcript": f"<{round(duration_ms)} ms of audio>"}
            ],
        }
        previous_item_id = self._insert_item(session, item)
        await self._send(
            session,
            {
                "type": "input_audio_buffer.committed",
                "event_id": new_event_id(),
                "previous_item_id": previous_item_id,
                "item_id": item["id"],
            },
        )
        await self._announce_item(session, item, previous_item_id, created=True)
        turn_detection = audio_input.get("turn_detection")
        if isinstance(turn_detection, dict) and turn_detection.get("create_response", True):
            await self._server_response(session)

    async def _on_output_audio_clear(self, session: SimSession, event: dict[str, Any]) -> None:
        """Accepted and ignored: the simulator plays no audio."""

    # responses

    async def _on_response_create(self, session: SimSession, event: dict[str, Any]) -> None:
        params = _validated_response_params(event)
        in_conversation = params.get("conversation") in (None, "auto")
        active = session.active
        if in_conversation and active is not None:
            raise _Rejected(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {active.id}. "
                "Wait until the response is finished before creating a new one.",
            )
        event_id = event.get("event_id")
        self._start_response(session, params, event_id if isinstance(event_id, str) else None)

    async def _on_response_cancel(self, session: SimSession, event: dict[str, Any]) -> None:
        response_id = event.get("response_id")
        target = session.responses.get(response_id) if response_id else session.active
        if target is None or target.cancel_reason is not None:
            raise _Rejected(
                "response_cancel_not_active", "Cancellation failed: no active response found"
            )
        target.cancel("client_cancelled")

    async def _server_response(self, session: SimSession) -> str | None:
        """A response the service starts by itself (server VAD)."""
        while session.active is not None:
            turn_detection = session.config.get("audio", {}).get("input", {}).get("turn_detection")
            if (
                isinstance(turn_detection, dict)
                and turn_detection.get("interrupt_response") is False
            ):
                return None
            active = session.active
            active.cancel("turn_detected")
            if active.task is not None:
                await asyncio.wait({active.task})
        if session.connection.state is not State.OPEN:
            return None
        return self._start_response(session, {}, None).id

    def _start_response(
        self, session: SimSession, params: dict[str, Any], client_event_id: str | None
    ) -> SimResponse:
        in_conversation = params.get("conversation") in (None, "auto")
        instructions = params.get("instructions")
        if not isinstance(instructions, str):
            instructions = session.instructions
        metadata = params.get("metadata") or None
        session.responses_started += 1
        context = self._context(session, params.get("input"))
        parts = [f"[instructions: {instructions}]"]
        hidden = self.config.text_hides_metadata_keys
        shown = [f"{k}={v}" for k, v in (metadata or {}).items() if k not in hidden]
        if shown:
            parts.append(f"[metadata: {', '.join(shown)}]")
        parts.append(f"Reply {session.responses_started} to: {_last_user_text(context)}")
        text = " ".join(parts)

        max_output_tokens = params.get("max_output_tokens")
        if max_output_tokens is None:
            max_output_tokens = session.config.get("max_output_tokens", "inf")
        incomplete = isinstance(max_output_tokens, int) and _tokens(text) > max_output_tokens
        if incomplete:
            text = text[: max(1, int(max_output_tokens)) * 4]

        response = SimResponse(
            id=_new_id("resp"),
            item_id=_new_id("item"),
            in_conversation=in_conversation,
            conversation_id=session.conversation_id if in_conversation else None,
            client_event_id=client_event_id,
            instructions=instructions,
            metadata=dict(metadata) if metadata else None,
            output_modalities=["text"],  # whatever was asked: the simulator only writes text
            max_output_tokens=max_output_tokens,
            text=text,
            incomplete=incomplete,
            input_tokens=_tokens(instructions) + sum(_tokens(_item_text(i)) for i in context),
        )
        session.responses[response.id] = response
        if in_conversation:
            session.active = response
        response.task = asyncio.get_running_loop().create_task(
            self._stream(session, response), name=f"sim-{response.id}"
        )
        return response

    @staticmethod
    def _context(session: SimSession, input_items: object) -> list[dict[str, Any]]:
        """The items a response sees: its own `input` if given, else the conversation."""
        if not isinstance(input_items, list):
            return session.items
        context = []
        for item in input_items:
            if not isinstance(item, dict):
                continue
            if item.get("type") == "item_reference":
                ref = item.get("id")
                index = session.item_index(ref) if isinstance(ref, str) else None
                if index is not None:
                    context.append(session.items[index])
            else:
                context.append(item)
        return context

    def _response_object(
        self,
        session: SimSession,
        response: SimResponse,
        *,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None = None,
        status_details: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        audio_output = session.config.get("audio", {}).get("output", {})
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
                    "format": audio_output.get("format"),
                    "voice": audio_output.get("voice"),
                }
            },
            "usage": usage,
            "metadata": response.metadata,
        }

    async def _pause(self, response: SimResponse, deadline: float) -> None:
        """Sleep until `deadline` (loop time), or until the response is cancelled."""
        loop = asyncio.get_running_loop()
        wake: asyncio.Future[None] = loop.create_future()
        response._wake = wake
        timer = loop.call_at(deadline, _wake_up, wake)
        try:
            await wake
        finally:
            timer.cancel()
            response._wake = None

    async def _stream(self, session: SimSession, response: SimResponse) -> None:
        try:
            await self._stream_events(session, response)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("simulator response %s failed", response.id)
            await session.connection.close(1011, "simulator error")
        finally:
            session.responses.pop(response.id, None)
            if session.active is response:
                session.active = None

    async def _stream_events(self, session: SimSession, response: SimResponse) -> None:
        rid, item_id = response.id, response.item_id
        await self._send(
            session,
            {
                "type": "response.created",
                "event_id": new_event_id(),
                "response": self._response_object(
                    session, response, status="in_progress", output=[]
                ),
            },
        )
        item: dict[str, Any] = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        await self._send(
            session,
            {
                "type": "response.output_item.added",
                "event_id": new_event_id(),
                "response_id": rid,
                "output_index": 0,
                "item": item,
            },
        )
        previous_item_id: str | None = None
        if response.in_conversation:
            previous_item_id = self._insert_item(session, item)
            await self._send(
                session,
                {
                    "type": "conversation.item.added",
                    "event_id": new_event_id(),
                    "previous_item_id": previous_item_id,
                    "item": item,
                },
            )
        where = {"response_id": rid, "item_id": item_id, "output_index": 0, "content_index": 0}
        await self._send(
            session,
            {
                "type": "response.content_part.added",
                "event_id": new_event_id(),
                **where,
                "part": {"type": "text", "text": ""},
            },
        )

        # The hot loop: each delta frame is two string joins around a pre-encoded piece.
        chunks = _split(response.text, self.config.deltas_per_response)
        head = '{"type":"response.output_text.delta","event_id":"'
        middle = f'",{_dumps(where)[1:-1]},"delta":'
        interval = self.config.delta_interval
        start = asyncio.get_running_loop().time()
        sent = 0
        for index, chunk in enumerate(chunks):
            if response.cancel_reason is None:
                await self._pause(response, start + (index + 1) * interval)
            if response.cancel_reason is not None:
                break
            if self.config.stall_after_deltas is not None and sent >= self.config.stall_after_deltas:
                await asyncio.Event().wait()  # silent until the connection is closed
            await self._send_frame(session, head + new_event_id() + middle + _dumps(chunk) + "}")
            sent += 1

        text = "".join(chunks[:sent])
        if response.cancel_reason is not None:
            status = "cancelled"
            details: dict[str, Any] | None = {
                "type": "cancelled",
                "reason": response.cancel_reason,
            }
        elif response.incomplete:
            status = "incomplete"
            details = {"type": "incomplete", "reason": "max_output_tokens"}
        else:
            status, details = "completed", None
        item["status"] = "completed" if status == "completed" else "incomplete"
        item["content"] = [{"type": "output_text", "text": text}]

        await self._send(
            session,
            {
                "type": "response.output_text.done",
                "event_id": new_event_id(),
                **where,
                "text": text,
            },
        )
        await self._send(
            session,
            {
                "type": "response.content_part.done",
                "event_id": new_event_id(),
                **where,
                "part": {"type": "text", "text": text},
            },
        )
        await self._send(
            session,
            {
                "type": "response.output_item.done",
                "event_id": new_event_id(),
                "response_id": rid,
                "output_index": 0,
                "item": item,
            },
        )
        if response.in_conversation:
            await self._send(
                session,
                {
                    "type": "conversation.item.done",
                    "event_id": new_event_id(),
                    "previous_item_id": previous_item_id,
                    "item": item,
                },
            )
        output_tokens = _tokens(text) if text else 0
        usage = {
            "total_tokens": response.input_tokens + output_tokens,
            "input_tokens": response.input_tokens,
            "output_tokens": output_tokens,
            "input_token_details": {
                "text_tokens": response.input_tokens,
                "audio_tokens": 0,
                "image_tokens": 0,
                "cached_tokens": 0,
                "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
            },
            "output_token_details": {"text_tokens": output_tokens, "audio_tokens": 0},
        }
        # No longer active from here on: a client that answers response.done with a new
        # response.create must not be refused, even if the write below waits for the socket.
        session.responses.pop(rid, None)
        if session.active is response:
            session.active = None
        await self._send(
            session,
            {
                "type": "response.done",
                "event_id": new_event_id(),
                "response": self._response_object(
                    session,
                    response,
                    status=status,
                    output=[item],
                    usage=usage,
                    status_details=details,
                ),
            },
        )


# --- helpers -------------------------------------------------------------------------------


def _validated_response_params(event: dict[str, Any]) -> dict[str, Any]:
    """The `response` object of a response.create, checked as the service checks it."""
    if "response" not in event:
        return {}
    params = event["response"]
    if not isinstance(params, dict):
        raise _Rejected(
            "invalid_type",
            f"Invalid type for 'response': expected an object, but got {json_type(params)} instead.",
            "response",
        )
    instructions = params.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise _Rejected(
            "invalid_type",
            "Invalid type for 'response.instructions': expected a string, "
            f"but got {json_type(instructions)} instead.",
            "response.instructions",
        )
    conversation = params.get("conversation")
    if conversation is not None and conversation not in ("auto", "none"):
        raise _Rejected(
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
            raise _Rejected(
                "invalid_type",
                "Invalid type for 'response.max_output_tokens': expected an integer or 'inf', "
                f"but got {json_type(max_output_tokens)} instead.",
                "response.max_output_tokens",
            )
        if not 1 <= max_output_tokens <= 4096:
            raise _Rejected(
                "integer_out_of_range" if max_output_tokens > 4096 else "integer_below_min_value",
                "Invalid 'response.max_output_tokens': expected a value between 1 and 4096, "
                f"but got {max_output_tokens} instead.",
                "response.max_output_tokens",
            )
    return params


def _check_metadata(metadata: object) -> None:
    if not isinstance(metadata, dict):
        raise _Rejected(
            "invalid_type",
            "Invalid type for 'response.metadata': expected an object, "
            f"but got {json_type(metadata)} instead.",
            "response.metadata",
        )
    if len(metadata) > METADATA_MAX_PAIRS:
        raise _Rejected(
            "object_above_max_properties",
            "Invalid 'response.metadata': too many properties. Expected an object with at most "
            f"{METADATA_MAX_PAIRS} properties, but got an object with {len(metadata)} "
            "properties instead.",
            "response.metadata",
        )
    for key, value in metadata.items():
        if len(key) > METADATA_MAX_KEY_CHARS:
            raise _Rejected(
                "string_above_max_length",
                f"Invalid 'response.metadata': key '{key}' is too long. Expected a key with "
                f"maximum length {METADATA_MAX_KEY_CHARS}, but got a key with length "
                f"{len(key)} instead.",
                "response.metadata",
            )
        param = f"response.metadata.{key}"
        if not isinstance(value, str):
            raise _Rejected(
                "invalid_type",
                f"Invalid type for '{param}': expected a string, "
                f"but got {json_type(value)} instead.",
                param,
            )
        if len(value) > METADATA_MAX_VALUE_CHARS:
            raise _Rejected(
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


def _last_user_text(items: Sequence[dict[str, Any]]) -> str:
    for item in reversed(items):
        if item.get("type") == "message" and item.get("role") == "user":
            return _item_text(item) or "(no text)"
    return "(nothing yet)"


def _authorized(request: Request, key: str) -> bool:
    if request.headers.get("Authorization", "") == f"Bearer {key}":
        return True
    offered = ",".join(request.headers.get_all("Sec-WebSocket-Protocol"))
    return f"openai-insecure-api-key.{key}" in (p.strip() for p in offered.split(","))


def _select_subprotocol(
    connection: ServerConnection, subprotocols: Sequence[Subprotocol]
) -> Subprotocol | None:
    """Browsers offer `realtime` (and the key as a second subprotocol); pick `realtime`."""
    return Subprotocol("realtime") if "realtime" in subprotocols else None


def _json_response(
    connection: ServerConnection, status: HTTPStatus, error_type: str, code: str, message: str
) -> Response:
    body = _dumps({"error": {"message": message, "type": error_type, "param": None, "code": code}})
    response = connection.respond(status, body)
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    return response
