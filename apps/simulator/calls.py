"""Calls that do not pass through a WebSocket: WebRTC and SIP calls, as the service has them.

The interface (what the console's calls endpoints, webhook endpoint and sideband actor talk to).
Every path is on the simulator's own host and port, the same as its WebSocket: with
`OC_UPSTREAM_URL` = `ws://127.0.0.1:PORT/v1`, the HTTP base is `http://127.0.0.1:PORT/v1`.
Plain HTTP/1.1, one request per connection (`Connection: close`); see `apps.simulator.http`.

Every request needs `Authorization: Bearer <key>`: any non-empty key, or exactly
`SimulatorConfig.required_api_key` when that is set (else 401). Errors have the service's shape
`{"error": {"message", "type", "code", "param"}}`: 400 a bad body, 401 no key, 404 an unknown
path or call, 405 a method other than POST, 413 a body over 1 MiB, 415 an SDP offer that is
neither `application/sdp` nor `multipart/form-data`.

WebRTC
- `POST /v1/realtime/calls[?model=M]`, body `application/sdp` (the offer), or
  `multipart/form-data` with the parts `sdp` (the offer) and `session` (JSON: a session
  configuration, `{"type": "realtime", "model", "instructions", "audio", "tools", ...}`), as the
  `openai` SDK's `realtime.calls.create` sends them. → `201`, `Content-Type: application/sdp`,
  body = the answer SDP, `Location: /v1/realtime/calls/{call_id}` (`rtc_<hex>`). An offer
  with no media section (no audio, no data channel) is refused as the service refuses it:
  400 `invalid_offer`, "Please try again with a WHIP-compliant offer."
  The answer is a real `aiortc` peer: DTLS, the caller's `oai-events` data channel, one audio
  track each way. Every ICE candidate of the simulator is 127.0.0.1, and remote candidates that
  are not loopback are dropped before use (`apps.simulator.webrtc`).
- The call is a `SimSession` (the same protocol as a WebSocket session). Its server events go
  to the data channel *and* to every sideband joined to the call; client events from either act
  on the session. The first event on the data channel is `session.created`.
- Audio: the caller's incoming track is resampled to the session's input format (PCM16 24 kHz by
  default) and appended to the input buffer, so server VAD, commits and VAD responses work as
  over a WebSocket. A spoken reply is played on the outgoing track. As the service does over
  WebRTC, the reply's audio is not sent as `response.output_audio.delta` events on the data
  channel or the sidebands (the transcript deltas and every other event are; the sessions'
  `sent` logs still list the deltas). The output audio buffer is told as the service tells
  it over WebRTC and SIP (never over a WebSocket): `output_audio_buffer.started` with the
  `response_id` when a response's first audio goes out, `.stopped` once the response is done
  and its audio has all been played (the track drained; the simulated phone plays at once),
  and `.cleared` instead when `output_audio_buffer.clear` (from the data channel or a
  sideband) empties what the track has not played yet, or the caller speaks over the agent
  (`input_audio_buffer.speech_started`) with `interrupt_response` on.
  A call's session speaks by default (`output_modalities: ["audio"]`, as the service's calls
  do); a `session` with `"output_modalities": ["text"]` makes it answer in text.

Sideband
- `ws /v1/realtime?call_id=C` (same auth as any WebSocket) joins call C's session; an unknown or
  ended call id → handshake refused with 404. First event: `session.created` carrying the
  session's *current* configuration (our assumption of what the service sends a sideband), then
  every server event of the call. Client events sent on it act on the call's session (the
  errors they cause come back to it alone). When the call ends (hang up,
  refer, the peer closing its connection, the data channel closing) every sideband is closed
  with code 1000 and the reason `call ended: <end reason>`; end reasons: `hung_up`,
  `transferred` (refer), `rejected`, `peer_closed`, `not_answered` (a SIP call left pending
  for 60 s), `not_connected` (a WebRTC call whose peer did not connect within
  `SimulatorConfig.webrtc_connect_seconds` of its answer), `simulator_closed`, or the session's expiry message (`lifetime`: a call's session
  has the same cap as any other).

Call REST (`{call_id}` from `Location`, or the webhook's `data.call_id`); each answers `200`
with an empty body.
- `POST /v1/realtime/calls/{call_id}/accept`, JSON: a session configuration (`type` must be
  `realtime`; `model`, `instructions`, `audio`, `tools`, `output_modalities`, ... are applied to
  the session as a `session.update` would). Only a pending SIP call can be accepted (else 400
  `call_not_pending`); the call then starts (the simulated phone caller speaks).
- `POST /v1/realtime/calls/{call_id}/reject`, optional JSON `{"status_code": 486}` (default
  603): a pending SIP call is gone.
- `POST /v1/realtime/calls/{call_id}/hangup`: ends the call (peer closed, sidebands closed 1000).
- `POST /v1/realtime/calls/{call_id}/refer`, JSON `{"target_uri": "tel:…" | "sip:…"}` (the
  scheme in any case, `sips:` too): recorded as written;
  the call then ends as transferred. As the service's (the SIP REFER verb), for SIP calls only:
  a WebRTC call's refer is refused (400 `call_not_sip`, our code: the service's is not known).

SIP (simulator only, not part of the service)
- `POST /v1/_sim/sip_calls`, JSON `{"from": "+1555…", "to": "+1555…", "webhook_url": "http://…",
  "webhook_secret": "whsec_…", "say": ["sentence", ...] (optional)}` → creates a pending SIP call
  and POSTs the webhook the service would send, signed per Standard Webhooks (headers
  `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of
  "{id}.{timestamp}.{body}" keyed by the base64-decoded secret after "whsec_">`), body::

      {"object": "event", "id": "evt_…", "type": "realtime.call.incoming", "created_at": <unix s>,
       "data": {"call_id": "rtc_…", "sip_headers": [
           {"name": "From", "value": "sip:+1555…@sim.invalid"},
           {"name": "To", "value": "sip:+1555…@sip.api.openai.com"},
           {"name": "Call-ID", "value": "…"}]}}

  `openai.OpenAI(webhook_secret=...).webhooks.unwrap(body, headers)` verifies it. Answers `201`
  `{"call_id": "rtc_…", "webhook_status": 200}` once the webhook was answered (`webhook_status`
  null and `webhook_error` set when it could not be delivered). Once accepted the caller speaks
  each sentence of `say` (speech synthesis, fed as input audio in real time, each after the
  agent's previous reply is done); the agent's audio is consumed.
- `GET /v1/_sim/calls` → the counters below as JSON (tests of another process can read them).

What tests assert on: `Simulator.calls` (a `CallRegistry`): `calls` (live and pending, by id),
`get(call_id)` (also recently ended ones: `status`, `end_reason`, `session`, audio counts),
`accepts` [(call_id, session config)], `rejects` [(call_id, status_code)], `hangups` [call_id],
`refers` [(call_id, target_uri)], `offers` and `answers` (every SDP seen, in order),
`webhooks` [(call_id, the receiver's status)]. A call's session is also in
`Simulator.sessions` while the call is active. `close_sidebands(call_id, code)` closes a call's
sidebands as a failing upstream would, the call going on; `refuse_sidebands(call_id, count)`
makes the next `count` sideband handshakes for the call fail as the service fails when it
errs (HTTP 500, `server_error`), the call going on (`sidebands_refused` [call_id], one for each
refused); `slow_accept(call_id, seconds, status=200)` makes the call's next accept answer
`seconds` late: with 200 the call is accepted at once and only the answer is late (a slow
service, whose webhook sender may give up and deliver again), with 500 it is refused as the
service fails when it errs (`server_error`), the call left pending; `Simulator.close_session`
(or the session's expiry) ends the whole call.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import copy
import email.parser
import email.policy
import hashlib
import hmac
import json
import logging
import re
import time
import urllib.error
import urllib.request
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiortc import RTCDataChannel, RTCPeerConnection
from aiortc.exceptions import InvalidStateError
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from apps.realtime.audio import FORMAT_RATES, alaw_encode, resample_pcm16, to_pcm16, ulaw_encode
from apps.realtime.events import json_type
from apps.simulator import lifetime, speech, voice, webrtc
from apps.simulator.http import HTTPRequest, HTTPResponse, error_response, json_response
from apps.simulator.session import DEFAULT_MODEL, SimSession, default_session_config
from apps.simulator.wire import Rejected, dumps, new_event_id, new_id

if TYPE_CHECKING:
    from apps.simulator.server import Simulator

log = logging.getLogger(__name__)

EVENTS_CHANNEL = "oai-events"
SIP_DOMAIN = "sip.api.openai.com"
CALLER_DOMAIN = "sim.invalid"
DEFAULT_SAY = ("Hello, I would like to know your opening hours, please.",)
PENDING_SECONDS = 60.0  # a SIP call nobody accepts or rejects is dropped after this
WEBHOOK_TIMEOUT = 8.0  # below websockets' 10 s bound on a connection's first request
SIDEBAND_WAIT = 2.0  # an accepted phone caller waits this long for a sideband before speaking
REPLY_WAIT = 30.0  # ... and this long for the agent's reply before its next sentence
_KEEP_ENDED = 256  # ended calls kept readable in `history`
_READ_ONLY = frozenset({"id", "object", "expires_at", "type"})
_CALL_PATH = re.compile(
    r"(?:/v1)?/realtime/calls(?:/(?P<call_id>[^/]+)/(?P<action>accept|reject|hangup|refer))?"
)
_SIP_PATH = re.compile(r"(?:/v1)?/_sim/sip_calls")
_MEDIA_LINE = re.compile(r"^m=", re.MULTILINE)  # an SDP media section (audio, application)
_AUDIO_DELTA = '{"type":"response.output_audio.delta"'
_RESPONSE_DONE = '{"type":"response.done"'
_SPEECH_STARTED = '{"type":"input_audio_buffer.speech_started"'
_ERROR = '{"type":"error"'
_DATA_CHANNEL = "data channel"
# Which connection's client event is being handled (set in the task that reads it; the tasks it
# starts inherit it): an error goes back to that connection alone. None: the session itself.
_sender: contextvars.ContextVar[object | None] = contextvars.ContextVar("sender", default=None)


class CallOutputs:
    """What a call's `SimSession` has for a connection: one session, several outputs.

    `send` gives every server event to the data channel (once open) and to every sideband,
    except output audio, which goes to the call's speaker (the WebRTC track, or the simulated
    phone's ear); `state` is OPEN while the call is active; `close` ends the call."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.channel: RTCDataChannel | None = None
        self.sidebands: set[ServerConnection] = set()
        self.playing: str | None = None  # the response whose audio is in the output buffer
        self.cleared: str | None = None  # the response whose audio was cleared: no more of it

    @property
    def state(self) -> State:
        return State.OPEN if self.call.status == "active" else State.CLOSED

    async def send(self, frame: str) -> None:
        if frame.startswith(_AUDIO_DELTA):
            response_id = self.call.hear_agent(frame, self.cleared)
            if response_id is not None and response_id != self.playing:
                self.playing = response_id
                await self._tell("output_audio_buffer.started", response_id)
            return
        await self._forward(frame)
        if frame.startswith(_RESPONSE_DONE):
            self.call.reply_done.set()
            if self.playing is not None and json.loads(frame)["response"]["id"] == self.playing:
                self.call.start_task(self._stopped_once_played(self.playing), "stopped")
        elif frame.startswith(_SPEECH_STARTED) and self.playing is not None:
            turn_detection = _audio_config(self.call.session, "input").get("turn_detection")
            if isinstance(turn_detection, dict) and turn_detection.get("interrupt_response", True):
                await self.clear_output_audio()

    async def clear_output_audio(self) -> None:
        """`output_audio_buffer.clear`, or the caller speaking over the agent: the audio not
        yet played is dropped and, if some was playing, `output_audio_buffer.cleared`."""
        if self.call.track is not None:
            self.call.track.clear()
        response_id, self.playing = self.playing, None
        if response_id is not None:
            self.cleared = response_id
            await self._tell("output_audio_buffer.cleared", response_id)

    async def _stopped_once_played(self, response_id: str) -> None:
        if self.call.track is not None:
            await self.call.track.drained.wait()
        if self.playing == response_id:
            self.playing = None
            await self._tell("output_audio_buffer.stopped", response_id)

    async def _tell(self, kind: str, response_id: str) -> None:
        frame = dumps({"type": kind, "event_id": new_event_id(), "response_id": response_id})
        _record(self.call.session, frame)
        await self._forward(frame)

    async def _forward(self, frame: str) -> None:
        sender = _sender.get() if frame.startswith(_ERROR) else None
        channel = self.channel
        if channel is not None and channel.readyState == "open" and sender in (None, _DATA_CHANNEL):
            with contextlib.suppress(InvalidStateError, ConnectionError):  # closing under us
                channel.send(frame)
        for sideband in list(self.sidebands):
            if sender is not None and sender is not sideband:
                continue
            try:
                await sideband.send(frame)
            except ConnectionClosed:
                self.sidebands.discard(sideband)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.call.registry.end(self.call, reason or f"closed ({code})")


@dataclass(eq=False, kw_only=True)
class Call:
    """One WebRTC or SIP call and its session."""

    id: str
    kind: str  # "webrtc" or "sip"
    registry: CallRegistry
    status: str = "pending"  # pending (SIP, not yet accepted) → active → ended
    end_reason: str | None = None
    session: SimSession = field(init=False)
    outputs: CallOutputs = field(init=False)
    pc: RTCPeerConnection | None = None
    track: webrtc.AgentAudioTrack | None = None
    caller_number: str | None = None  # SIP
    dialled_number: str | None = None
    say: tuple[str, ...] = ()
    caller_audio_bytes: int = 0  # PCM16 taken in from the caller (track or simulated phone)
    agent_audio_bytes: int = 0  # PCM16 of the agent's speech sent to the caller
    reply_done: asyncio.Event = field(default_factory=asyncio.Event)
    sideband_joined: asyncio.Event = field(default_factory=asyncio.Event)
    connected: asyncio.Event = field(default_factory=asyncio.Event)  # WebRTC: ICE and DTLS up
    inbox: asyncio.Queue[str | bytes | None] = field(default_factory=asyncio.Queue)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.outputs = CallOutputs(self)

    def start_task(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"sim-{self.id}-{name}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def hear_agent(self, frame: str, cleared: str | None = None) -> str | None:
        """One `response.output_audio.delta` of the agent: to the track (WebRTC) or counted
        (the simulated phone consumes it). Returns its `response_id`, None for audio of the
        `cleared` response (dropped: the buffer was cleared while it was still streaming)."""
        try:
            event = json.loads(frame)
            data = base64.b64decode(event["delta"])
        except (ValueError, KeyError):
            return None
        if event.get("response_id") == cleared:
            return None
        format_type = voice.audio_format_type(_audio_config(self.session, "output"))
        pcm = to_pcm16(data, format_type)
        rate = FORMAT_RATES[format_type]
        if rate != webrtc.PCM_RATE:
            pcm = resample_pcm16(pcm, rate, webrtc.PCM_RATE)
        self.agent_audio_bytes += len(pcm)
        if self.track is not None:
            self.track.play(pcm)
        return event.get("response_id")


class CallRegistry:
    """The simulator's calls (`Simulator.calls`), its calls endpoints, and what tests count."""

    def __init__(self, simulator: Simulator) -> None:
        self.simulator = simulator
        self.calls: dict[str, Call] = {}  # pending and active, by id
        self.history: OrderedDict[str, Call] = OrderedDict()  # every call, the latest kept
        self.accepts: list[tuple[str, dict[str, Any]]] = []
        self.rejects: list[tuple[str, int]] = []
        self.hangups: list[str] = []
        self.refers: list[tuple[str, str]] = []
        self.offers: list[str] = []
        self.answers: list[str] = []
        self.webhooks: list[tuple[str, int | None]] = []  # (call id, the console's status)
        self._refusals: dict[str, int] = {}  # call id → sideband handshakes still to refuse
        self._slow_accepts: dict[str, tuple[float, int]] = {}  # call id → (delay, status)
        self.sidebands_refused: list[str] = []

    def get(self, call_id: str) -> Call | None:
        """A pending, active or recently ended call."""
        return self.history.get(call_id)

    def summary(self) -> dict[str, Any]:
        return {
            "calls": {
                c.id: {"kind": c.kind, "status": c.status, "end_reason": c.end_reason}
                for c in self.history.values()
            },
            "accepts": [{"call_id": i, "session": s} for i, s in self.accepts],
            "rejects": [{"call_id": i, "status_code": s} for i, s in self.rejects],
            "hangups": list(self.hangups),
            "refers": [{"call_id": i, "target_uri": t} for i, t in self.refers],
            "offers": len(self.offers),
            "answers": len(self.answers),
        }

    async def aclose(self) -> None:
        for call in list(self.calls.values()):
            await self.end(call, "simulator_closed")

    # --- HTTP ----------------------------------------------------------------------------

    async def handle(self, request: HTTPRequest) -> HTTPResponse:
        """Every plain HTTP request on the simulator's port (`apps.simulator.http`)."""
        path = request.path.rstrip("/")
        call_match = _CALL_PATH.fullmatch(path)
        sip_match = _SIP_PATH.fullmatch(path)
        if call_match is None and sip_match is None:
            return error_response(
                404, f"Invalid URL ({request.method} {path or '/'})", code="not_found"
            )
        if request.method != "POST":
            return error_response(
                405, f"Method {request.method} is not allowed on {path}; use POST.",
                code="method_not_allowed",
            )
        refusal = self._check_key(request)
        if refusal is not None:
            return refusal
        if sip_match is not None:
            return await self.create_sip_call(request)
        call_id, action = call_match.group("call_id"), call_match.group("action")
        if call_id is None:
            return await self.create_webrtc_call(request)
        call = self.calls.get(call_id)
        if call is None:
            return error_response(
                404, f"Call '{call_id}' not found (or already ended).", code="call_not_found",
                param="call_id",
            )
        try:
            body = _json_body(request) if action != "hangup" else {}
            if action == "accept":
                return await self.accept(call, body)
            if action == "reject":
                return await self.reject(call, body)
            if action == "refer":
                return await self.refer(call, body)
            self.hangups.append(call.id)
            await self.end(call, "hung_up")
            return HTTPResponse(status=200)
        except Rejected as rejected:
            return error_response(
                400, rejected.message, code=rejected.code, param=rejected.param,
                error_type=rejected.error_type,
            )

    def _check_key(self, request: HTTPRequest) -> HTTPResponse | None:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        required = self.simulator.config.required_api_key
        if scheme.lower() != "bearer" or not key.strip():
            return error_response(
                401, "You didn't provide an API key: send 'Authorization: Bearer <key>'.",
                code="missing_api_key",
            )
        if required is not None and key.strip() != required:
            return error_response(401, "Incorrect API key provided.", code="invalid_api_key")
        return None

    # --- WebRTC --------------------------------------------------------------------------

    async def create_webrtc_call(self, request: HTTPRequest) -> HTTPResponse:
        try:
            offer, update = _offer(request)
        except Rejected as rejected:
            status = 415 if rejected.code == "unsupported_media_type" else 400
            return error_response(status, rejected.message, code=rejected.code, param=rejected.param)
        model = (request.query.get("model") or [DEFAULT_MODEL])[0] or DEFAULT_MODEL
        call = self._new_call("webrtc", model)
        try:
            if update is not None:
                _apply_config(call.session, update)
        except Rejected as rejected:
            self._forget(call)
            return error_response(400, rejected.message, code=rejected.code, param=rejected.param)
        self.offers.append(offer)
        loopback = self.simulator.config.ice_loopback_only
        pc = call.pc = webrtc.new_peer_connection()
        self._wire_peer(call, pc)
        try:
            await webrtc.apply_remote(pc, offer, "offer", loopback_only=loopback)
            if any(t.kind == "audio" for t in pc.getTransceivers()):  # else: events only
                call.track = webrtc.AgentAudioTrack()
                pc.addTrack(call.track)
            answer = await webrtc.create_local(pc, "answer", loopback_only=loopback)
        except (ValueError, AttributeError, IndexError) as exc:  # aiortc's words for a bad offer
            await pc.close()
            self._forget(call)
            return error_response(
                400, f"Invalid SDP offer: {exc or type(exc).__name__}.", code="invalid_offer",
                param="sdp",
            )
        self.answers.append(answer)
        self._activate(call)
        call.start_task(self._pump(call), "inbox")
        call.start_task(self._end_if_not_connected(call), "connect")
        return HTTPResponse(
            status=201,
            body=answer.encode(),
            content_type="application/sdp",
            headers=[("Location", f"/v1/realtime/calls/{call.id}")],
        )

    def _wire_peer(self, call: Call, pc: RTCPeerConnection) -> None:
        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            if channel.label != EVENTS_CHANNEL or call.outputs.channel is not None:
                return
            call.outputs.channel = channel
            created = {
                "type": "session.created",
                "event_id": new_event_id(),
                "session": call.session.config,
            }
            _record(call.session, dumps(created))
            channel.send(dumps(created))

            @channel.on("message")
            def on_message(message: str | bytes) -> None:
                if call.status == "active":
                    call.inbox.put_nowait(message)

            @channel.on("close")
            def on_close() -> None:
                if call.status != "ended":
                    call.start_task(self.end(call, "peer_closed"), "end")

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                call.start_task(self._listen(call, track), "listen")

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState == "connected":
                call.connected.set()
            if pc.connectionState in ("failed", "closed") and call.status != "ended":
                await self.end(call, "peer_closed")

    async def _end_if_not_connected(self, call: Call) -> None:
        """A call whose peer never connects (it went away after the answer, or its network lets
        nothing through) ends, as the service ends it, instead of staying live for ever."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(call.connected.wait(), self.simulator.config.webrtc_connect_seconds)
        if not call.connected.is_set() and call.status != "ended":
            await self.end(call, "not_connected")

    async def _pump(self, call: Call) -> None:
        """Client events from the data channel, in order, into the session."""
        _sender.set(_DATA_CHANNEL)
        while (message := await call.inbox.get()) is not None:
            with contextlib.suppress(ConnectionClosed):
                await call.session.receive(message)

    async def _listen(self, call: Call, track: MediaStreamTrack) -> None:
        """The caller's microphone, as the session's input audio."""
        converter = webrtc.FrameConverter()
        while call.status != "ended":
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if call.status == "active":
                await _feed(call, converter.convert(frame))

    # --- sidebands -----------------------------------------------------------------------

    def joinable(self, call_id: str) -> bool:
        return call_id in self.calls

    def refuse_sidebands(self, call_id: str, count: int) -> None:
        """Tests: the next `count` sideband handshakes for the call fail (see the module
        docstring); the call itself goes on."""
        self._refusals[call_id] = count

    def refuses_sideband(self, call_id: str) -> bool:
        """Whether this sideband handshake is one to refuse (and counted if it is)."""
        left = self._refusals.get(call_id, 0)
        if left <= 0:
            return False
        self._refusals[call_id] = left - 1
        self.sidebands_refused.append(call_id)
        return True

    async def serve_sideband(self, connection: ServerConnection, call_id: str) -> None:
        """`ws …/realtime?call_id=C`: see the module docstring."""
        call = self.calls.get(call_id)
        if call is None:  # ended between the handshake and here
            await connection.close(1000, "call ended")
            return
        created = {"type": "session.created", "event_id": new_event_id(), "session": call.session.config}
        _sender.set(connection)
        try:
            await connection.send(dumps(created))
            call.outputs.sidebands.add(connection)
            call.sideband_joined.set()
            async for message in connection:
                if call.status == "ended":
                    break
                await call.session.receive(message)
        except ConnectionClosed:
            pass
        finally:
            call.outputs.sidebands.discard(connection)

    async def close_sidebands(self, call_id: str, code: int = 1011, reason: str = "") -> int:
        """Tests: close a live call's sideband sockets (as a failing upstream would) and leave
        the call going; returns how many were closed."""
        call = self.calls[call_id]
        sidebands = list(call.outputs.sidebands)
        call.outputs.sidebands.clear()
        for sideband in sidebands:
            with contextlib.suppress(ConnectionClosed):
                await sideband.close(code, reason)
        return len(sidebands)

    # --- call control --------------------------------------------------------------------

    def slow_accept(self, call_id: str, seconds: float, status: int = 200) -> None:
        """Tests: the call's next accept is answered `seconds` late, with `status` (see the
        module docstring)."""
        self._slow_accepts[call_id] = (seconds, status)

    async def accept(self, call: Call, body: dict[str, Any]) -> HTTPResponse:
        delay, status = self._slow_accepts.pop(call.id, (0.0, 200))
        if status >= 500:
            await asyncio.sleep(delay)
            return error_response(
                status, "The server had an error while processing your request.",
                code="server_error", error_type="server_error",
            )
        answer = self._accept(call, body)
        await asyncio.sleep(delay)
        return answer

    def _accept(self, call: Call, body: dict[str, Any]) -> HTTPResponse:
        if call.status != "pending":
            raise Rejected(
                "call_not_pending", f"Call '{call.id}' is not a pending SIP call: it cannot be accepted."
            )
        session_type = body.get("type")
        if session_type is None:
            raise Rejected.missing_parameter("type")
        _apply_config(call.session, body)
        self.accepts.append((call.id, copy.deepcopy(body)))
        self._activate(call)
        call.start_task(self._phone_caller(call), "caller")
        return HTTPResponse(status=200)

    async def reject(self, call: Call, body: dict[str, Any]) -> HTTPResponse:
        if call.status != "pending":
            raise Rejected(
                "call_not_pending", f"Call '{call.id}' is not a pending SIP call: it cannot be rejected."
            )
        status_code = body.get("status_code", 603)
        if not isinstance(status_code, int) or isinstance(status_code, bool) or not 400 <= status_code <= 699:
            raise Rejected(
                "invalid_value",
                f"Invalid 'status_code': expected a SIP status code 400–699, got {status_code!r}.",
                "status_code",
            )
        self.rejects.append((call.id, status_code))
        await self.end(call, "rejected")
        return HTTPResponse(status=200)

    async def refer(self, call: Call, body: dict[str, Any]) -> HTTPResponse:
        if call.kind != "sip":  # the service's refer is the SIP REFER verb: SIP calls only
            raise Rejected(
                "call_not_sip",
                f"Call '{call.id}' is a WebRTC call: only SIP calls can be transferred.",
                "call_id",
            )
        target = body.get("target_uri")
        scheme, _, rest = target.partition(":") if isinstance(target, str) else ("", "", "")
        # Schemes are case-insensitive (RFC 3986); sips: is a SIP URI over TLS.
        if scheme.lower() not in ("tel", "sip", "sips") or not rest:
            raise Rejected(
                "invalid_value",
                f"Invalid 'target_uri': expected a 'tel:' or 'sip:' URI, got {target!r}.",
                "target_uri",
            )
        self.refers.append((call.id, target))
        await self.end(call, "transferred")
        return HTTPResponse(status=200)

    async def end(self, call: Call, reason: str) -> None:
        """The call is over: its session stops, its sidebands close (1000), its peer closes."""
        if call.status == "ended":
            return
        call.status = "ended"
        call.end_reason = reason
        self.calls.pop(call.id, None)
        self.simulator.sessions.pop(call.session.id, None)
        call.session.stop_responses()
        call.inbox.put_nowait(None)
        current = asyncio.current_task()
        for task in list(call.tasks):
            if task is not current and task.get_name() != f"sim-{call.id}-end":
                task.cancel()
        sidebands = list(call.outputs.sidebands)
        call.outputs.sidebands.clear()
        for sideband in sidebands:
            with contextlib.suppress(ConnectionClosed):
                await sideband.close(1000, f"call ended: {reason}")
        if call.track is not None:
            call.track.stop()
        if call.pc is not None:
            await call.pc.close()
        log.debug("simulator call %s ended (%s)", call.id, reason)

    # --- SIP -----------------------------------------------------------------------------

    async def create_sip_call(self, request: HTTPRequest) -> HTTPResponse:
        try:
            body = _json_body(request)
            caller = _text_field(body, "from")
            dialled = _text_field(body, "to")
            url = _text_field(body, "webhook_url")
            secret = _text_field(body, "webhook_secret")
            if not url.startswith(("http://", "https://")):
                raise Rejected("invalid_value", "Invalid 'webhook_url': expected an http(s) URL.", "webhook_url")
            say = body.get("say", list(DEFAULT_SAY))
            if not isinstance(say, list) or not all(isinstance(s, str) and s.strip() for s in say):
                raise Rejected("invalid_type", "Invalid 'say': expected a list of sentences.", "say")
        except Rejected as rejected:
            return error_response(400, rejected.message, code=rejected.code, param=rejected.param)
        call = self._new_call("sip", DEFAULT_MODEL)
        call.caller_number, call.dialled_number, call.say = caller, dialled, tuple(say)
        call.start_task(self._drop_if_unanswered(call), "pending")
        payload = dumps(
            {
                "object": "event",
                "id": new_id("evt"),
                "type": "realtime.call.incoming",
                "created_at": int(time.time()),
                "data": {
                    "call_id": call.id,
                    "sip_headers": [
                        {"name": "From", "value": f"sip:{caller}@{CALLER_DOMAIN}"},
                        {"name": "To", "value": f"sip:{dialled}@{SIP_DOMAIN}"},
                        {"name": "Call-ID", "value": f"{new_id('sipcall')}@{CALLER_DOMAIN}"},
                    ],
                },
            }
        )
        status, problem = await deliver_webhook(url, secret, payload)
        self.webhooks.append((call.id, status))
        return json_response(
            201, {"call_id": call.id, "webhook_status": status, "webhook_error": problem}
        )

    async def _drop_if_unanswered(self, call: Call) -> None:
        await asyncio.sleep(PENDING_SECONDS)
        if call.status == "pending":
            await self.end(call, "not_answered")

    async def _phone_caller(self, call: Call) -> None:
        """The simulated phone caller: each sentence of `say`, spoken into the session once a
        sideband is there (or after SIDEBAND_WAIT), each after the agent's previous reply."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(call.sideband_joined.wait(), SIDEBAND_WAIT)
        options = self.simulator.config
        for sentence in call.say:
            spoken = await speech.synthesise(sentence, rate=webrtc.PCM_RATE, engine=options.speech_engine)
            turn_detection = _audio_config(call.session, "input").get("turn_detection")
            silence_ms = 1000
            if isinstance(turn_detection, dict):
                wanted = turn_detection.get("silence_duration_ms")
                if isinstance(wanted, int | float):
                    silence_ms = max(silence_ms, int(wanted) + 300)
            pcm = spoken.pcm + bytes(2 * webrtc.PCM_RATE * silence_ms // 1000)
            call.reply_done.clear()
            await _speak(call, pcm, options.audio_pace)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(call.reply_done.wait(), REPLY_WAIT)

    # --- calls and their sessions --------------------------------------------------------

    def _new_call(self, kind: str, model: str) -> Call:
        call = Call(id=new_id("rtc"), kind=kind, registry=self)
        options = self.simulator.config
        session_id = new_id("sess")
        config = default_session_config(session_id, model, options.default_instructions)
        config["output_modalities"] = ["audio"]  # the service's default, and what a call is for
        limit = options.record_limit
        call.session = SimSession(
            id=session_id,
            model=model,
            connection=call.outputs,  # type: ignore[arg-type]  # what SimSession uses of one
            options=options,
            config=config,
            conversation_id=new_id("conv"),
            received_log=deque(maxlen=limit),
            sent_log=deque(maxlen=limit),
            observer=self.simulator.observer,
        )
        self.calls[call.id] = call
        self.history[call.id] = call
        while len(self.history) > _KEEP_ENDED and next(iter(self.history.values())).status == "ended":
            self.history.popitem(last=False)
        return call

    def _activate(self, call: Call) -> None:
        call.status = "active"
        self.simulator.sessions[call.session.id] = call.session
        cap = self.simulator.config.max_session_seconds
        call.session.config["expires_at"] = int(time.time() + cap)
        call.start_task(lifetime.expire_at_cap(call.session, cap), "expiry")

    def _forget(self, call: Call) -> None:
        call.status = "ended"
        call.end_reason = "refused"
        self.calls.pop(call.id, None)
        self.history.pop(call.id, None)


# --- helpers -------------------------------------------------------------------------------


def sign_webhook(secret: str, webhook_id: str, timestamp: int, payload: str) -> str:
    """Standard Webhooks' `webhook-signature` value: `v1,<base64 HMAC-SHA256>` over
    `{id}.{timestamp}.{payload}`, keyed by the base64 secret after `whsec_` (as the `openai`
    SDK's `webhooks.verify_signature` checks it)."""
    key = base64.b64decode(secret[6:]) if secret.startswith("whsec_") else secret.encode()
    mac = hmac.new(key, f"{webhook_id}.{timestamp}.{payload}".encode(), hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


async def deliver_webhook(url: str, secret: str, payload: str) -> tuple[int | None, str | None]:
    """POST a signed webhook; returns (the receiver's HTTP status, None) or (None, what failed)."""
    webhook_id = new_id("wh")
    timestamp = int(time.time())
    request = urllib.request.Request(
        url,
        data=payload.encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "OpenAI/1.0 (+https://platform.openai.com/docs/webhooks) simulator",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign_webhook(secret, webhook_id, timestamp, payload),
        },
    )

    def post() -> tuple[int | None, str | None]:
        try:
            with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT) as response:  # noqa: S310
                return response.status, None
        except urllib.error.HTTPError as exc:
            return exc.code, None
        except (urllib.error.URLError, OSError) as exc:
            return None, f"webhook not delivered to {url}: {getattr(exc, 'reason', exc)}"

    return await asyncio.get_running_loop().run_in_executor(None, post)


def _record(session: SimSession, frame: str) -> None:
    if session.sent_log.maxlen != 0:
        session.sent_log.append((time.monotonic(), frame))


def _audio_config(session: SimSession, direction: str) -> dict[str, Any]:
    audio = session.config.get("audio")
    value = audio.get(direction) if isinstance(audio, dict) else None
    return value if isinstance(value, dict) else {}


async def _feed(call: Call, pcm: bytes) -> None:
    """Caller audio (mono PCM16 at 24 kHz) appended to the session's input buffer, in the
    session's input format, as an `input_audio_buffer.append` would."""
    if not pcm:
        return
    call.caller_audio_bytes += len(pcm)
    format_type = voice.audio_format_type(_audio_config(call.session, "input"))
    data = pcm
    if format_type != "audio/pcm":
        data = resample_pcm16(pcm, webrtc.PCM_RATE, FORMAT_RATES[format_type])
        data = ulaw_encode(data) if format_type == "audio/pcmu" else alaw_encode(data)
    event = {"type": "input_audio_buffer.append", "audio": base64.b64encode(data).decode()}
    with contextlib.suppress(Rejected, ConnectionClosed):
        await voice.on_audio_append(call.session, event)


async def _speak(call: Call, pcm: bytes, pace: float) -> None:
    """The simulated phone caller's audio, 20 ms at a time, at `pace` × real time (0: at once)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    step = 2 * webrtc.PCM_RATE * webrtc.FRAME_MS // 1000
    for index, offset in enumerate(range(0, len(pcm), step)):
        if call.status != "active":
            return
        if pace > 0:
            await asyncio.sleep(max(0.0, start + index * webrtc.FRAME_MS / 1000 / pace - loop.time()))
        else:
            await asyncio.sleep(0)
        await _feed(call, pcm[offset : offset + step])


def _json_body(request: HTTPRequest) -> dict[str, Any]:
    if not request.body.strip():
        return {}
    try:
        body = json.loads(request.body)
    except (ValueError, RecursionError):
        raise Rejected("invalid_json", "The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise Rejected("invalid_type", f"The body must be a JSON object, not a JSON {json_type(body)}.")
    return body


def _text_field(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise Rejected(
            "missing_required_parameter", f"Missing required parameter: '{name}' (a non-empty string).", name
        )
    return value.strip()


def _offer(request: HTTPRequest) -> tuple[str, dict[str, Any] | None]:
    """The SDP offer and the session configuration (or None) of `POST /realtime/calls`."""
    if request.content_type == "application/sdp":
        offer, update = request.body.decode("utf-8", "replace"), None
    elif request.content_type == "multipart/form-data":
        parts = _form_parts(request)
        if "sdp" not in parts:
            raise Rejected.missing_parameter("sdp")
        offer = parts["sdp"].decode("utf-8", "replace")
        update = None
        if "session" in parts:
            try:
                update = json.loads(parts["session"])
            except ValueError:
                raise Rejected("invalid_json", "The 'session' part is not valid JSON.", "session") from None
            if not isinstance(update, dict):
                raise Rejected("invalid_type", "The 'session' part must be a JSON object.", "session")
    else:
        raise Rejected(
            "unsupported_media_type",
            f"Unsupported Content-Type '{request.content_type}': send 'application/sdp' or "
            "'multipart/form-data' (parts 'sdp' and 'session').",
        )
    if not offer.lstrip().startswith("v=0"):
        raise Rejected("invalid_offer", "Invalid SDP offer: it must start with 'v=0'.", "sdp")
    if _MEDIA_LINE.search(offer) is None:
        # Nothing to connect (no audio, no data channel): the service refuses it in these words.
        raise Rejected(
            "invalid_offer",
            "Invalid SDP offer. Please try again with a WHIP-compliant offer.",
            "sdp",
        )
    return offer, update


def _form_parts(request: HTTPRequest) -> dict[str, bytes]:
    head = f"Content-Type: {request.headers.get('Content-Type', '')}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + request.body)
    parts = {}
    for part in message.iter_parts() if message.is_multipart() else ():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            parts[name] = part.get_payload(decode=True) or b""
    if not parts:
        raise Rejected("invalid_value", "The multipart body has no parts (or no boundary).")
    return parts


def _apply_config(session: SimSession, update: dict[str, Any]) -> None:
    """A session configuration (the `session` of a call, or an accept's body) applied as a
    `session.update` would, without an event."""
    session_type = update.get("type")
    if session_type is not None and session_type != "realtime":
        raise Rejected(
            "invalid_value", f"Invalid value: '{session_type}'. Supported values are: 'realtime'.", "type"
        )
    instructions = update.get("instructions")
    if "instructions" in update and not isinstance(instructions, str):
        raise Rejected.invalid_type("instructions", "a string", instructions)
    model = update.get("model")
    if model is not None:
        if not isinstance(model, str) or not model:
            raise Rejected("invalid_type", "Invalid type for 'model': expected a string.", "model")
        session.model = model
    session.configure({k: v for k, v in update.items() if k not in _READ_ONLY})
