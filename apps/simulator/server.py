"""The simulated Realtime service's WebSocket server, and the simulator's public API. No Django.

It speaks the WebSocket protocol of `wss://api.openai.com/v1/realtime?model=M` strictly enough
that the official clients (the `openai` SDK, the Agents SDK's realtime model) work against it,
and it rejects, with the same `error` events, what the real service rejects. What a session
says and does is `session`'s (and `voice`'s); this module accepts connections, checks
handshakes, and keeps what tests and benchmarks look at. The long-call behaviours and the
current protocol: `lifetime` (the session cap), `shape` (the beta shape refused, current
fields checked), `limits` (`rate_limits.updated`), `tools` (function calls and MCP, told by
`#call:`/`#mcp:` in the user's text).

Event ids: every server event's `event_id` is `event_<counter>_<time.time_ns() at send>`,
so a benchmark can read a frame's send time from the frame itself
(`event_sent_time_ns(event_id)`).

Deliberate simplifications (the real service would differ):
- `session.created` advertises `output_modalities: ["text"]` (the service's default is
  `["audio"]`), so clients that ask for nothing get text, cheaply; a session or response
  that asks for `["audio"]` gets spoken replies (`voice`).
- Spoken replies are synthesised speech of the reply text (`speech`: espeak-ng, else a tone
  sequence); a caller's audio is measured (VAD) but never transcribed: its transcript is an
  honest placeholder, `[speech, 2.1 s — the simulator does not transcribe]`.
- A client-created item, or a committed audio buffer, is announced with
  `conversation.item.created` and with the GA pair `conversation.item.added` / `.done`.

Use::

    sim = Simulator(SimulatorConfig(deltas_per_response=4, delta_interval=0.01))
    await sim.start()                 # port 0: any free port
    client = openai.AsyncOpenAI(api_key="sk-test", websocket_base_url=sim.url)
    ...
    await sim.aclose()
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from apps.simulator import lifetime, shape
from apps.simulator.calls import CallRegistry
from apps.simulator.config import SimulatorConfig
from apps.simulator.http import connection_factory
from apps.simulator.session import DEFAULT_MODEL, SimResponse, SimSession, default_session_config
from apps.simulator.wire import dumps, event_sent_time_ns, new_event_id, new_id

log = logging.getLogger(__name__)

__all__ = [
    "SimResponse",
    "SimSession",
    "Simulator",
    "SimulatorConfig",
    "event_sent_time_ns",
    "new_event_id",
]

_KEEP_CLOSED_LOGS = 256  # event logs of this many ended sessions stay readable


class Simulator:
    """The Realtime service, in process. See the module docstring."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.observer = None  # see SimSession.observer
        self.sessions: dict[str, SimSession] = {}  # live sessions by id
        self.connections_opened = 0
        self.connections_active = 0
        self.handshakes_refused = 0
        self.calls = CallRegistry(self)  # WebRTC and SIP calls, and their HTTP endpoints
        self._server: Server | None = None
        self._host = "127.0.0.1"
        self._logs: dict[str, SimSession] = {}  # live and recently ended sessions
        self._ended: deque[str] = deque()
        # Sessions not yet returned by wait_for_session (bounded: benchmarks never ask).
        self._unclaimed: deque[str] = deque(maxlen=4 * _KEEP_CLOSED_LOGS)
        self._session_waiters: list[asyncio.Future[None]] = []

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
            # Plain HTTP (the calls endpoints) on the same port: `http`'s docstring says why.
            create_connection=connection_factory(self.calls.handle),
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
        await self.calls.aclose()
        for session in list(self.sessions.values()):
            session.stop_responses()
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

    def approval_responses(self, session_id: str) -> list[dict[str, Any]]:
        """The `mcp_approval_response` items a live or recently ended session received, in
        order (`tools`)."""
        return list(self._session_logs(session_id).tool_state.approval_responses)

    async def trigger_server_response(self, session_id: str) -> str | None:
        """Start a response as server VAD does (no client event, no metadata). Returns its id,
        or None when turn detection says not to interrupt the active response."""
        session = self.sessions.get(session_id)
        if session is None:
            raise KeyError(f"no live session {session_id!r}")
        return await session.server_response()

    async def close_session(self, session_id: str, code: int = 1011, reason: str = "") -> None:
        """Close one connection from the server side."""
        session = self.sessions.get(session_id)
        if session is None:
            raise KeyError(f"no live session {session_id!r}")
        session.stop_responses()
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

    def audio_counts(self, session_id: str) -> dict[str, Any]:
        """A live or recently ended session's audio: bytes (decoded) taken in by appends and
        sent as output audio, and the one-way latency (ns) of its stamped appends."""
        audio = self._session_logs(session_id).audio
        return {
            "audio_in_bytes": audio.received_bytes,
            "audio_out_bytes": audio.sent_bytes,
            "append_latency_ns": list(audio.append_latency_ns),
        }

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        split = urlsplit(request.path)
        path = split.path.rstrip("/")
        if path.endswith("/_stats"):
            # Benchmarks: GET {url}/_stats?session=ID&session=ID → {"sessions": {ID: counts}}
            # (`audio_counts`), sessions unknown here left out. Not part of the service's API.
            ids = parse_qs(split.query).get("session", [])
            counts = {i: self.audio_counts(i) for i in ids if i in self._logs}
            return _json(connection, HTTPStatus.OK, {"sessions": counts})
        if path.endswith("/_sim/calls"):
            # Tests: the calls' counters (`CallRegistry.summary`). Not part of the service's API.
            return _json(connection, HTTPStatus.OK, self.calls.summary())
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
        call_id = (parse_qs(split.query).get("call_id") or [""])[0]
        if call_id and not self.calls.joinable(call_id):
            self.handshakes_refused += 1
            return _json_response(
                connection,
                HTTPStatus.NOT_FOUND,
                "invalid_request_error",
                "call_not_found",
                f"Call '{call_id}' not found (or already ended).",
            )
        if call_id and self.calls.refuses_sideband(call_id):  # tests: as the service errs
            self.handshakes_refused += 1
            return _json_response(
                connection,
                HTTPStatus.INTERNAL_SERVER_ERROR,
                "server_error",
                None,
                "The server had an error while processing your request. Sorry about that!",
            )
        return None

    async def _serve_connection(self, connection: ServerConnection) -> None:
        query = parse_qs(urlsplit(connection.request.path if connection.request else "").query)
        if query.get("call_id"):  # a sideband: joins a call's session (`calls`)
            await self.calls.serve_sideband(connection, query["call_id"][0])
            return
        if connection.request is not None and shape.beta_handshake(connection.request.headers):
            await shape.refuse_beta(connection)  # as the service does: error, close 4000
            return
        model = (query.get("model") or [DEFAULT_MODEL])[0] or DEFAULT_MODEL
        limit = self.config.record_limit
        session_id = new_id("sess")
        session = SimSession(
            id=session_id,
            model=model,
            connection=connection,
            options=self.config,
            config=default_session_config(session_id, model, self.config.default_instructions),
            conversation_id=new_id("conv"),
            received_log=deque(maxlen=limit),
            sent_log=deque(maxlen=limit),
            observer=self.observer,
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
        cap = self.config.max_session_seconds
        session.config["expires_at"] = int(time.time() + cap)
        expiry = asyncio.get_running_loop().create_task(lifetime.expire_at_cap(session, cap))
        try:
            await session.send(
                {"type": "session.created", "event_id": new_event_id(), "session": session.config}
            )
            async for message in connection:
                await session.receive(message)
        except ConnectionClosed:
            pass
        finally:
            expiry.cancel()
            session.stop_responses()
            self.sessions.pop(session.id, None)
            self.connections_active -= 1
            self._ended.append(session.id)
            while len(self._ended) > _KEEP_CLOSED_LOGS:
                self._logs.pop(self._ended.popleft(), None)
            log.debug("simulator session %s closed", session.id)


# --- handshakes ----------------------------------------------------------------------------


def _authorized(request: Request, key: str) -> bool:
    if request.headers.get("Authorization", "") == f"Bearer {key}":
        return True
    offered = ",".join(request.headers.get_all("Sec-WebSocket-Protocol"))
    return f"openai-insecure-api-key.{key}" in (p.strip() for p in offered.split(","))


def _select_subprotocol(
    connection: ServerConnection, subprotocols: Sequence[Subprotocol]
) -> Subprotocol | None:
    """Browsers offer `realtime` (and the key as a second subprotocol); pick `realtime`. A beta
    client's `openai-beta.realtime-v1` is taken too, so that it hears the refusal (`shape`)."""
    if "realtime" in subprotocols:
        return Subprotocol("realtime")
    if shape.BETA_SUBPROTOCOL in subprotocols:
        return Subprotocol(shape.BETA_SUBPROTOCOL)
    return None


def _json_response(
    connection: ServerConnection,
    status: HTTPStatus,
    error_type: str,
    code: str | None,
    message: str,
) -> Response:
    error = {"message": message, "type": error_type, "param": None, "code": code}
    return _json(connection, status, {"error": error})


def _json(connection: ServerConnection, status: HTTPStatus, body: dict[str, Any]) -> Response:
    response = connection.respond(status, dumps(body))
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    return response
