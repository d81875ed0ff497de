"""The relay core: every decision about one live session. Pure, sans-I/O.

A session is a caller leg (zero or one: the client connected to `/v1/realtime`), an upstream
leg (exactly one at a time: the Realtime connection the relay holds) and the operators who
watch and steer it. This class decides, for every input, what happens; the session actor
(`apps/sessions/actor.py`) performs what it decides. Inputs are method calls, each with the
time as `now` (seconds); each returns the actions to perform, in order. Nothing here awaits,
reads a clock, or touches a socket, the database or the channel layer; only the standard
library and this package are imported.

Inputs
  upstream_attached  the upstream leg is open: `session.created` must come within
                     `connect_timeout`.
  upstream_frame     an event from the upstream. Most go to the caller as received, unparsed
                     (the type is read from the frame's first bytes); session, response
                     lifecycle, error and transcript events are parsed and acted on.
  caller_frame       an event from the caller. Everything goes upstream as received except
                     `response.create`, which enters the sequencer (origin `caller`).
  submit             a stored operator request (REST hook or console), by ping or pickup.
  cancel, note, interrupt
                     an operator's command; each answers (`Answer`) whoever asked.
  watch              an operator's console starts, renews or stops watching.
  listen             an operator starts, renews or stops listening to the call's audio.
  tick               time has reached `next_deadline` (or passed it): request timeouts, the
                     session's start deadline, a stalled upstream, the transcript's flush.
  caller_closed, upstream_closed, upstream_failed, shutdown, crashed
                     the session ends; `SessionEnded` says how, and every request not yet
                     terminal fails (`session_ended`). An attached call's sideband lost or
                     not opened is opened again instead while tries are left (`OpenUpstream`).

What the caller sees (CONTRACT section 1)
  - Upstream events unchanged and in order, except: `oc_request` never appears in a response's
    metadata; an operator's response carries no metadata and no instructions; an operator's
    out-of-band response is not seen at all (its events go to watchers only); errors about the
    relay's own events (sequencing, notes, cancels) are not seen.
  - A caller who connected with a minted key sees the session configured as the key says
    (`minted`), as the service would show it.
  - An `error` event for each of its events the relay refuses: not JSON, nested too deep, not
    an object, invalid `response`, metadata, or text (NUL, lone surrogates), over the queue
    limit (`queue_full`); and `upstream_timeout` for a `response.create` of its own whose
    `response.created` never came.

Audio (CONTRACT section 6)
  Audio passes unparsed unless someone listens or the session is recorded: then the caller's
  `input_audio_buffer.append` and the upstream's `response.output_audio.delta` are read, and
  an `AudioTapped` action carries their base64 audio, the side and the session's format for
  that side (from `session.created`/`session.updated`, and from the caller's `session.update`
  as soon as it goes up), for the actor to decode and copy; the upstream's
  `conversation.item.truncated` (the caller stopped playing an agent item) is an `AudioCut`.
  An operator's out-of-band response is not part of the call and is not tapped.

Attached mode (`attached=True`): a call the relay does not carry, steered through a sideband
  (no caller leg). Responses the caller's app asked for are observed with origin `caller`; a
  normal close after `hangup_requested` ends the session `hung_up`; the session is named by its
  call id if no session event comes soon. `apps/realtime/attached.py` says how, and what is and
  is not guaranteed in this mode.

Besides, the core keeps what is recorded of the session (its id and instructions, each
request's transitions, who watches, the sum of every response's `usage`) and tells watchers
what changed; a new watcher's snapshot has the latest status of the requests that changed
last, which its page's read of the tables may predate (the history is written a moment
later). After the session has ended, frames and ticks return nothing; an operator's command
still gets its answer, and a request submitted then fails at once.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from apps.realtime import attached as attached_mode
from apps.realtime import events, minted, rotation, tools
from apps.realtime.sequencer import (
    ACTIVE_RESPONSE_ERROR,
    OC_REQUEST_KEY,
    ErrorClaimed,
    LateResponse,
    Request,
    RequestStatus,
    ResponseObserved,
    SendEvent,
    Sequencer,
    SequencerError,
    StatusChanged,
    counter,
)
from apps.realtime.transcript import DELTA_TYPES, ITEM_TYPES, Transcript

CALLER = "caller"
SERVER = "server"
OPERATOR_ORIGINS = frozenset({"console", "api"})

# Upstream event types the core parses; every other type goes to the caller unparsed (and the
# transcript's deltas are parsed too while someone watches).
PARSED_TYPES = (
    frozenset({"session.created", "session.updated", "response.created", "response.done", "error"})
    | ITEM_TYPES
    | tools.UPSTREAM_TYPES
)
# Transcript changes reach watchers at most this often.
FLUSH_INTERVAL = 0.05
# A watcher that has not renewed its watch in this long is gone (its socket died unseen).
WATCH_TTL = 90.0
# Finished requests kept whole (late events may name them); older ones are forgotten every
# FORGET_EVERY finished requests, so a long session's state stays flat. Of the latest
# FORGOTTEN_IDS forgotten, the id and final status stay: a late ping, pickup or cancel of one
# is still recognised.
REMEMBER_FINISHED = 8
FORGET_EVERY = 8
FORGOTTEN_IDS = 64
# A new watcher's snapshot carries the latest status of the requests that changed last, this
# many: the page's table read may predate the history writer's commit of their changes.
RECENT_CHANGES = 16
# The relay's own client events (notes, approval decisions) whose errors are told apart from
# the caller's: the latest, as an error about an event comes while the next few are sent.
OWN_EVENTS_KEPT = 64
# The upstream allows 16 metadata pairs; the relay's `oc_request` takes one.
MAX_CALLER_METADATA_PAIRS = 15
# Close codes passed on to the caller as the upstream sent them; others become 1011.
PASSABLE_CLOSE_CODES = frozenset({1000, 1001, 1008, 1009, 1011, 1012, 1013, 1014})
# Turns whose start is remembered until they are final (a bound: the upstream decides).
MAX_TURNS_STARTED = 64
# A public session id as the console and the database can hold it.
MAX_SESSION_ID_CHARS = 128
# How many times an attached call's sideband is opened again (`apps/realtime/attached.py`).
MAX_REATTACHES = attached_mode.MAX_REATTACHES
# Why an attached call's session was lost (`session_lost`), for its operators: the console lost
# the call's sideband, not the call.
LOST_CALL = (
    "The process holding the call's sideband stopped, so the console lost the call; "
    "the call itself may have gone on between the caller and the model, no longer seen or "
    "steered here."
)
# Audio events, read only while the session's audio is tapped (listened to or recorded).
CALLER_AUDIO_TYPE = "input_audio_buffer.append"
CALLER_SESSION_UPDATE = "session.update"
# Codes of the upstream's refusals of a whole `session.update` that name no `session.*` param.
SESSION_UPDATE_REFUSALS = frozenset({"cannot_update_voice"})
AGENT_AUDIO_TYPES = frozenset({"response.output_audio.delta", "response.audio.delta"})
SPEECH_STARTED_TYPE = "input_audio_buffer.speech_started"
TRUNCATED_TYPE = "conversation.item.truncated"
TAPPED_TYPES = AGENT_AUDIO_TYPES | {SPEECH_STARTED_TYPE, TRUNCATED_TYPE}
# The sides of a call's audio, as listeners receive them in byte 0 of each frame.
CALLER_SIDE = 0
AGENT_SIDE = 1
# Audio formats, as the session names them (GA `audio.*.format.type`, or the beta shape's
# `*_audio_format`), and as the core names them to the actor.
AUDIO_FORMATS = {
    "audio/pcm": "pcm16",
    "pcm16": "pcm16",
    "audio/pcmu": "pcmu",
    "g711_ulaw": "pcmu",
    "audio/pcma": "pcma",
    "g711_alaw": "pcma",
}


class EndReason(StrEnum):
    """Why a session ended (`Session.end_reason`, CONTRACT section 2)."""

    CALLER_CLOSED = "caller_closed"
    UPSTREAM_CLOSED = "upstream_closed"
    SESSION_EXPIRED = "session_expired"
    HUNG_UP = "hung_up"  # an attached call was hung up (by an operator, or by the caller)
    SERVER_SHUTDOWN = "server_shutdown"
    SESSION_LOST = "session_lost"  # decided by another process's sweep (`lost` follows it)
    RELAY_ERROR = "relay_error"


# ---------------------------------------------------------------------------- inputs


@dataclass(frozen=True, kw_only=True, slots=True)
class OperatorRequest:
    """A stored request from the REST hook or the console."""

    id: str
    origin: str  # "console" | "api"
    instructions: str | None = None
    instructions_mode: str = "append"  # "append" | "replace"
    metadata: Mapping[str, str] | None = None
    conversation: str | None = None  # None | "auto" | "none"
    requested_by: str = ""
    created_at: float | None = None  # when it was stored (its row's `created_at`)


# ---------------------------------------------------------------------------- actions


@dataclass(frozen=True, kw_only=True, slots=True)
class ToCaller:
    frame: str | bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class ToUpstream:
    frame: str | bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class CloseCaller:
    code: int
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionNamed:
    """The upstream named the session (`session.created`): it is live under this id."""

    session_id: str
    instructions: str
    at: float


@dataclass(frozen=True, kw_only=True, slots=True)
class InstructionsChanged:
    instructions: str


@dataclass(frozen=True, kw_only=True, slots=True)
class RequestRecorded:
    """A request the core itself took in (the caller's, or a response the server started)."""

    request_id: str
    origin: str
    event_id: str
    instructions: str | None
    metadata: Mapping[str, Any] | None
    conversation: str | None
    requested_by: str
    status: RequestStatus
    response_id: str | None
    at: float


@dataclass(frozen=True, kw_only=True, slots=True)
class RequestChanged:
    """A request's status changed (the sequencer's StatusChanged, with what was sent)."""

    request_id: str
    status: RequestStatus
    at: float
    response_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    output_text: str | None = None
    usage: Mapping[str, Any] | None = None
    sent_instructions: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class LateResponseRecorded:
    """A request that had already ended (it timed out waiting for `response.created`) got its
    response after all: the response's id, output and usage are recorded on the request, and
    its outcome in the request's error message; the request's status stays as it was."""

    request_id: str
    response_id: str
    at: float
    error_message: str
    output_text: str | None = None
    usage: Mapping[str, Any] | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class UsageChanged:
    """The session's token counts so far: every response's `usage`, summed field by field."""

    usage: dict[str, Any] = field(hash=False)


@dataclass(frozen=True, kw_only=True, slots=True)
class WatchersChanged:
    names: tuple[str, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class TranscriptFinal:
    """A transcript entry is final (the caller's turn, the agent's, a note): recorded for the
    scripts that follow the session, whether or not an operator is watching."""

    entry: dict[str, Any] = field(hash=False)
    at: float
    # When the turn began, if the core saw it (audio tapped): the caller's speech detected,
    # the agent's first audio.
    started_at: float | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class AudioTapped:
    """A piece of the call's audio, for listeners and the recorder: base64 as it was sent, in
    `format` (`pcm16` 24 kHz, or G.711 `pcmu`/`pcma` 8 kHz)."""

    side: int  # CALLER_SIDE or AGENT_SIDE
    audio: str
    format: str
    at: float
    item_id: str | None = None  # the agent's item it is of


@dataclass(frozen=True, kw_only=True, slots=True)
class AudioCut:
    """The caller stopped playing an agent item at `audio_end_ms` of its audio (the upstream's
    `conversation.item.truncated`): the rest of it, sent ahead of playback, was never heard."""

    item_id: str
    audio_end_ms: int


@dataclass(frozen=True, kw_only=True, slots=True)
class ListenersChanged:
    """Who listens changed: the actor copies audio to the session's listen group only while
    `count` is not 0."""

    count: int


@dataclass(frozen=True, kw_only=True, slots=True)
class ToWatchers:
    """A message for every operator watching (`type` is one of the `console.*` kinds)."""

    message: dict[str, Any] = field(hash=False)


@dataclass(frozen=True, kw_only=True, slots=True)
class ToWatcher:
    """A message for one watcher only (the snapshot a new watcher starts from)."""

    watcher: str
    message: dict[str, Any] = field(hash=False)


@dataclass(frozen=True, kw_only=True, slots=True)
class Answer:
    """The answer to the operator command being handled (cancel, note, interrupt)."""

    payload: dict[str, Any] = field(hash=False)


@dataclass(frozen=True, kw_only=True, slots=True)
class OpenUpstream:
    """Open the upstream leg again: an attached call's sideband (the actor answers with
    `upstream_attached` or `upstream_failed`)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionEnded:
    """The session is over: record it, close the legs. Always the last action of a session."""

    status: str  # "ended" | "failed"
    reason: EndReason
    at: float
    code: int | None = None  # the upstream's close code, for upstream_closed
    detail: str = ""


Action = (
    ToCaller
    | ToUpstream
    | CloseCaller
    | SessionNamed
    | InstructionsChanged
    | RequestRecorded
    | RequestChanged
    | LateResponseRecorded
    | UsageChanged
    | WatchersChanged
    | TranscriptFinal
    | AudioTapped
    | AudioCut
    | ListenersChanged
    | ToWatchers
    | ToWatcher
    | Answer
    | OpenUpstream
    | SessionEnded
)

# Kinds of the messages for watchers (the browser gets them without the prefix).
WATCH_EVENT = "console.event"
WATCH_REQUEST = "console.request"
WATCH_TRANSCRIPT = "console.transcript"
WATCH_PRESENCE = "console.presence"
WATCH_SNAPSHOT = "console.snapshot"
WATCH_ENDED = "console.ended"
WATCH_USAGE = "console.usage"
# What a new listener is sent first, on its own channel.
LISTEN_STARTED = "listen.started"


# ---------------------------------------------------------------------------- state


@dataclass(slots=True)
class _Info:
    """What the core keeps of a request beyond the sequencer's view of it."""

    origin: str
    out_of_band: bool
    requested_by: str = ""
    instructions: str | None = None  # as the requester gave them
    metadata: Any = None  # as the requester gave it (the caller's is restored on the way back)
    append: str | None = None  # an operator's text, composed with the session's when sent
    sent_instructions: str | None = None
    event_id: str = ""
    created_at: float | None = None  # as its row has it: watchers' request → start latency

    @property
    def operator_out_of_band(self) -> bool:
        """An operator's out-of-band response: the caller never sees any of it."""
        return self.out_of_band and self.origin in OPERATOR_ORIGINS


def compose_instructions(*, session_instructions: str, text: str) -> str:
    """What `append` sends as a response's `instructions`: the upstream treats per-response
    instructions as a replacement of the session's, so the session's come first, then the
    operator's text. (`replace` sends the operator's text as it is.)"""
    if not session_instructions:
        return text
    if not text:
        return session_instructions
    return f"{session_instructions}\n\n{text}"


class RelayCore:
    def __init__(
        self,
        *,
        fallback_id: str,
        connected_by: str = "",
        send_timeout: float = 15.0,
        connect_timeout: float = 10.0,
        stall_timeout: float = 30.0,
        queue_limit: int = 32,
        new_request_id: Callable[[], str] | None = None,
        new_event_id: Callable[[], str] | None = None,
        record_audio: bool = False,
        attached: bool = False,
        approval_timeout: float = 30.0,
        rotate_after: float = 0.0,
        minted_session: dict[str, Any] | None = None,
        price: Callable[[Mapping[str, Any]], float | None] | None = None,
        reopen_delay: float = attached_mode.REOPEN_DELAY,
    ) -> None:
        # What usage costs in USD, `price(usage=…)` (None: not priced); watchers see it grow.
        self._price = price or (lambda usage: None)
        # Attached: a call steered through a sideband, with no caller leg (`attached`).
        self.attached = attached
        self._turns = attached_mode.Turns() if attached else None
        # Its sideband: open or not, and the tries to open another (`attached`).
        self._sideband = attached_mode.Sideband(reopen_delay) if attached else None
        self.fallback_id = fallback_id
        self.connected_by = connected_by
        self.connect_timeout = connect_timeout
        self.stall_timeout = stall_timeout
        self.queue_limit = queue_limit
        self._new_request_id = new_request_id or counter("req")
        self._new_event_id = new_event_id or counter("event_oc")
        self.sequencer = Sequencer(
            new_request_id=self._new_request_id,
            new_event_id=self._new_event_id,
            send_timeout=send_timeout,
        )
        self.sequencer.offline = attached  # until its sideband opens
        self.transcript = Transcript()
        # Tool calls, approvals and rate limits (`tools`): the events about them go to it.
        self.tools = tools.ToolDesk(self, approval_timeout=approval_timeout)
        # Rotation to a fresh upstream session (`rotation`), for a relayed session that lives
        # longer than `rotate_after` seconds (0: never).
        self.rotation: rotation.Rotator | None = None
        self._parsed: Any = PARSED_TYPES
        if rotate_after > 0 and not attached:
            state = rotation.Rotation(
                rotate_after=rotate_after,
                new_event_id=self._new_event_id,
                ready_timeout=connect_timeout,
            )
            self.rotation = rotation.Rotator(self, state)
            self._parsed = PARSED_TYPES | rotation.OBSERVED_TYPES
        # A minted key's session configuration (`minted`), applied for a relayed caller.
        self._minted: minted.MintedSession | None = None
        if minted_session and minted.needs_update(minted_session) and not attached:
            self._minted = minted.MintedSession(minted_session, event_id=self._new_event_id())
        self.session_id: str | None = None  # the upstream's session.id, once named
        self.session_instructions = ""
        self.usage: dict[str, Any] = {}  # the sum of every response's usage
        # Upstream errors by code (its `error` events, and failures of the leg itself): plain
        # counts for the process's /metrics, read from outside between inputs.
        self.upstream_errors: dict[str, int] = {}
        self.ended: SessionEnded | None = None
        self._infos: dict[str, _Info] = {}
        self._forgotten: dict[str, str] = {}  # request id → final status, oldest first
        self._forgotten_hidden: dict[str, None] = {}  # forgotten operators' out-of-band ones
        self._finished_since_forget = 0
        # Request id → its latest change as watchers saw it, oldest first (RECENT_CHANGES).
        self._recent_changes: dict[str, dict[str, Any]] = {}
        self._hidden: set[str] = set()  # response ids of operators' out-of-band responses
        self._created_hidden = False  # the latest response.created was of one of those
        self._own_event_ids: dict[str, None] = {}  # the relay's own events, oldest first
        self._watchers: dict[str, tuple[str, float]] = {}  # watcher → (user, expires at)
        self._listeners: dict[str, tuple[str, float]] = {}  # listener → (user, expires at)
        self.record_audio = record_audio
        self._tapping = record_audio  # listened to or recorded: audio events are read
        # The audio formats of the caller's events as they reach the upstream, which takes
        # them in order: those the upstream last announced, changed at once by each of the
        # caller's `session.update`s it has not answered yet (`_format_updates` of them).
        self.audio_formats = {CALLER_SIDE: "pcm16", AGENT_SIDE: "pcm16"}
        self._announced_formats = dict(self.audio_formats)
        self._format_updates = 0
        self._response_formats: dict[str, str] = {}  # response id → the output format it named
        self._turn_started: dict[str, float] = {}  # item id → when its audio began
        self._start_deadline: float | None = None
        self._flush_at: float | None = None
        self._last_upstream_at = 0.0
        self._stall_check_at: float | None = None  # while a response runs
        self._expired = False  # the upstream said session_expired; its close follows
        # Hang-ups of an attached call under way (each one's close follows it); a count, as
        # two may cross and only one of them succeed.
        self._hangups_pending = 0
        self._deadline: float | None = None
        self._deadline_stale = False

    # ------------------------------------------------------------------ views

    @property
    def next_deadline(self) -> float | None:
        """The earliest `now` at which tick() has something to do; None when nothing waits.
        Worked out again only after an input that may have moved it: a frame passed on as it
        came moves none (the stall check is anchored, not moved by each frame)."""
        if self._deadline_stale:
            self._deadline_stale = False
            self._deadline = self._earliest_deadline()
        return self._deadline

    def _earliest_deadline(self) -> float | None:
        if self.ended is not None:
            return None
        if not self._busy:
            self._stall_check_at = None
        elif self._stall_check_at is None:
            self._stall_check_at = self._last_upstream_at + self.stall_timeout
        deadlines = (
            self.sequencer.next_deadline,
            self._start_deadline,
            self._flush_at,
            self._stall_check_at,
            self.tools.next_deadline,
            self.rotation.next_deadline if self.rotation is not None else None,
            self._sideband.reopen_at if self._sideband is not None else None,
        )
        return min((d for d in deadlines if d is not None), default=None)

    @property
    def watchers(self) -> tuple[str, ...]:
        """Who is watching: their user names, each once, sorted."""
        return tuple(sorted({user for user, _ in self._watchers.values()}))

    def snapshot(self) -> dict[str, Any]:
        """What a new watcher needs before the live updates: the transcript and the state."""
        return {
            "session_id": self.session_id,
            "transcript": self.transcript.snapshot(),
            "watchers": list(self.watchers),
            "active_response_id": self.sequencer.active_response_id,
            "queued": list(self.sequencer.queued_ids),
            "requests": list(self._recent_changes.values()),
            **self.usage_summary(),
            **self.tools.snapshot(),
        }

    def usage_summary(self) -> dict[str, Any]:
        """The tokens used so far (every response's usage summed) and what they cost."""
        return {"usage": copy.deepcopy(self.usage), "cost_usd": self._price(usage=self.usage)}

    # ------------------------------------------------------------------ legs and the end

    def upstream_attached(self, *, now: float) -> list[Action]:
        self._deadline_stale = True
        self._last_upstream_at = now
        if self._sideband is not None:
            return self._sideband_opened(now)
        if self.session_id is None:
            self._start_deadline = now + self.connect_timeout
            if self._minted is not None:  # before any frame of the caller's
                return [ToUpstream(frame=self._minted.update_frame())]
        return []

    def upstream_failed(
        self, detail: str, *, now: float, status: int | None = None
    ) -> list[Action]:
        """The upstream leg could not be opened: refused with HTTP `status`, or not answered
        (None). An attached call's sideband is tried again after a backoff, while tries are
        left and unless the upstream refused it for good (`attached`)."""
        self._deadline_stale = True
        if self.ended is not None:
            return []
        sideband = self._sideband
        if sideband is None:
            message = f"Could not connect to the upstream: {detail}"
            return self._fail_upstream("upstream_unavailable", message, now=now)
        if not attached_mode.refused_for_good(status) and self._may_reopen():
            sideband.failed(now)
            if self.session_id is None and self._start_deadline is None:
                self._start_deadline = now + attached_mode.NAME_WAIT  # seen while it is tried
            return []
        tries = "" if sideband.failures == 0 else f" ({sideband.failures + 1} tries)"
        if sideband.lost is None:
            message = f"Could not open the call's sideband{tries}: {detail}"
            return self._fail_upstream("upstream_unavailable", message, now=now)
        code, reason = sideband.lost
        why = f"{self._close_reason(code, reason)} It could not be opened again{tries}: {detail}"
        return self._upstream_ended(code, why, now)

    def upstream_closed(self, code: int, reason: str, *, now: float) -> list[Action]:
        self._deadline_stale = True
        if self.ended is not None:
            return []
        if self.may_reattach(code):
            self._sideband.closed(code, reason)
            self.sequencer.offline = True
            return [OpenUpstream()]
        return self._upstream_ended(code, self._close_reason(code, reason), now)

    @staticmethod
    def _close_reason(code: int, reason: str) -> str:
        if reason:
            return reason
        if code in (1000, 1001):
            return "The upstream closed the session."
        return f"The upstream connection was lost ({code})."

    def _upstream_ended(self, code: int, why: str, now: float) -> list[Action]:
        """The upstream leg closed with `code` for good: the session ends, saying `why`."""
        normal = code in (1000, 1001)
        caller_code = code if code in PASSABLE_CLOSE_CODES or 3000 <= code <= 4999 else 1011
        if self._expired:
            end = self._end("ended", EndReason.SESSION_EXPIRED, now, code=code, detail=why)
        elif self._hangups_pending and normal:
            end = self._end("ended", EndReason.HUNG_UP, now, code=code, detail=why)
        else:
            if not normal:  # the upstream leg failed
                self._count_error("upstream_closed")
            end = self._end(
                "ended" if normal else "failed",
                EndReason.UPSTREAM_CLOSED,
                now,
                code=code,
                detail=why,
            )
        return [CloseCaller(code=caller_code, reason=why), *end]

    def may_reattach(self, code: int) -> bool:
        """An attached call's sideband closed with `code`: whether the call may go on without
        it, so that a new sideband should be opened (counted: at most `MAX_REATTACHES` a
        session, with the opens tried again after a failure) rather than the session ended.
        The model closes sidebands with 1000 when the call ends (hung up, transferred, the
        caller gone), and with 1001 at the session's expiry (after its `session_expired`); any
        other close (1001 otherwise, 1006, 1011, …) loses the sideband, not the call."""
        return self._sideband is not None and code != 1000 and self._may_reopen()

    def _may_reopen(self) -> bool:
        """Whether an attached call may go on, and a sideband be tried again (counted)."""
        return (
            self._sideband is not None
            and self.ended is None
            and not self._expired
            and not self._hangups_pending
            and self._sideband.may_reopen()
        )

    def _sideband_opened(self, now: float) -> list[Action]:
        """An attached call's sideband is open: what waited for it goes, in order (notes and
        cancels, then the requests)."""
        if self.session_id is None and self._start_deadline is None:
            self._start_deadline = now + attached_mode.NAME_WAIT
        actions: list[Action] = [ToUpstream(frame=f) for f in self._sideband.opened()]
        self._apply(self.sequencer.resume(now=now), actions)
        return self._finish(actions, now)

    def _held(self, actions: list[Action]) -> list[Action]:
        """The frames for the upstream among `actions` wait while there is none: an attached
        call's sideband is being opened again, or a rotation replaces the upstream."""
        sideband = self._sideband
        if sideband is None or sideband.open:
            return actions if self.rotation is None else self.rotation.held_frames(actions)
        return self.held_while_offline(actions)

    def held_while_offline(self, actions: list[Action]) -> list[Action]:
        """`actions` without their frames for the upstream while an attached call has no
        sideband open: those wait in order, and go once one opens (see `attached`)."""
        sideband = self._sideband
        if sideband is None or sideband.open:
            return actions
        sideband.frames += [a.frame for a in actions if type(a) is ToUpstream]
        return [a for a in actions if type(a) is not ToUpstream]

    def caller_closed(self, *, now: float, detail: str = "") -> list[Action]:
        """The caller leg closed: by the caller, or by the relay for a reason it gives (the
        credential that opened the session was revoked, say)."""
        self._deadline_stale = True
        if self.ended is not None:
            return []
        return self._end("ended", EndReason.CALLER_CLOSED, now, detail=detail)

    def shutdown(self, *, now: float) -> list[Action]:
        """The server process is stopping: the session ends cleanly, and the caller is told
        to come back (1012, service restart). An attached call has no caller leg here: the call
        itself goes on with the model, no longer steered, and its record says so."""
        self._deadline_stale = True
        if self.ended is not None:
            return []
        if self.attached:
            detail = told = (
                "The console stopped: the call goes on between the caller and the model, "
                "no longer seen or steered here."
            )
        else:  # the record is read by operators, the close reason by the caller's client
            told = "The server is restarting; reconnect to start a new session."
            detail = (
                "The server was restarted; the caller was asked to reconnect, as a new session."
            )
        return [
            CloseCaller(code=1012, reason=told),
            *self._end("ended", EndReason.SERVER_SHUTDOWN, now, detail=detail),
        ]

    def lost(self, *, now: float) -> list[Action]:
        """Another process's sweep failed this session (`session_lost`): this process sent no
        heartbeat for too long (it was paused, or its database writes stalled). The table and
        every follower already have the session as over, and operators can no longer steer
        it, so it ends here too rather than go on unseen: the caller is told to reconnect. An
        attached call has no caller here to tell: its sideband closes, and the call itself may
        go on between the caller and the model.

        The sweep's record stands alone: it failed the session, its pending requests and
        approvals, and told the followers. So nothing of this end is recorded or told again
        (no request is failed twice, no second `session.ended`); the core only stops."""
        self._deadline_stale = True
        if self.ended is not None:
            return []
        if self.attached:
            message = LOST_CALL
            told: list[Action] = []
        else:
            message = (
                "This server stopped answering for a while and the session was declared lost; "
                "reconnect to start a new session."
            )
            told = self._tell_caller("session_lost", message, error_type="server_error")
        reason = EndReason.SESSION_LOST
        self._end("failed", reason, now, detail=message, request_code="session_lost")
        return [*told, CloseCaller(code=1011, reason=message)]

    def crashed(self, detail: str, *, now: float) -> list[Action]:
        """The relay itself failed (a bug): the session cannot go on."""
        self._deadline_stale = True
        if self.ended is not None:
            return []
        message = "The relay failed; the session cannot go on."
        return [
            *self._tell_caller("relay_error", message, error_type="server_error"),
            CloseCaller(code=1011, reason=message),
            *self._end("failed", EndReason.RELAY_ERROR, now, detail=detail),
        ]

    # ------------------------------------------------------------------ upstream → caller

    def upstream_frame(self, frame: str | bytes, *, now: float) -> list[Action]:
        if self.ended is not None:
            return []
        self._last_upstream_at = now
        if type(frame) is bytes:
            return [ToCaller(frame=frame)]  # binary: not an event the relay can read
        kind = events.peek_type(frame)
        if kind == attached_mode.TURN_ENDED and self._turns is not None:
            self._turns.speech_stopped()
        if (
            kind is not None
            and kind not in self._parsed
            and not self._hidden
            and (not self._watchers or kind not in DELTA_TYPES)
            and (not self._tapping or kind not in TAPPED_TYPES)
        ):
            return [ToCaller(frame=frame)]
        self._deadline_stale = True
        event = events.loads_object(frame)
        if event is None:  # not a JSON object: the caller's client will make of it what it can
            return [ToCaller(frame=frame)]
        kind = event.get("type")
        actions: list[Action] = []
        forward: str | None = frame
        if self.rotation is not None and self.rotation.upstream_event(kind, event, now):
            return self._finish(self.rotation.upstream_done(now), now)  # its barrier's answer
        if kind in ("response.created", "response.done"):
            forward = self._on_response_event(kind, event, frame, actions, now)
        elif kind == "error":
            forward = self._on_error(event, frame, actions, now)
        elif kind in ("session.created", "session.updated"):
            self._on_session_event(kind, event, actions, now)
        elif kind in ITEM_TYPES:
            self._on_item_event(kind, event, now)
        else:
            hidden = bool(self._hidden) and self._response_of(event) in self._hidden
            if kind == tools.RATE_LIMITS_TYPE:  # names no response: it follows the one created
                hidden = bool(self._hidden) and self._created_hidden
            if hidden:
                forward = None
            if self._watchers and kind in DELTA_TYPES:
                self._on_delta(event, hidden, now)
            if self._tapping and kind in TAPPED_TYPES and not hidden:
                item_id = event.get("item_id")
                if kind == TRUNCATED_TYPE:
                    actions += self._cut(event)
                elif isinstance(item_id, str) and len(self._turn_started) < MAX_TURNS_STARTED:
                    self._turn_started.setdefault(item_id, now)  # where its audio began
                if kind in AGENT_AUDIO_TYPES:
                    spoken_in = self._response_formats.get(event.get("response_id"))
                    actions += self._tap(
                        AGENT_SIDE, event.get("delta"), now, spoken_in, item_id=item_id
                    )
        if kind in tools.UPSTREAM_TYPES:
            actions += self.tools.upstream_event(kind, event, now)
        if forward is not None and self._minted is not None and not self._minted.settled:
            before, forward = self._minted.outward(kind, event, forward)
            actions += [ToCaller(frame=held) for held in before]
        if forward is not None and self.rotation is not None:
            forward = self.rotation.outward(event, forward)
        if forward is not None:
            actions.append(ToCaller(frame=forward))
        else:
            actions.append(
                ToWatchers(
                    message={"type": WATCH_EVENT, "session_id": self.session_id, "event": frame}
                )
            )
        if self.rotation is not None:
            actions += self.rotation.upstream_done(now)
        return self._finish(actions, now)

    def _on_session_event(self, kind: str, event: dict, actions: list[Action], now: float) -> None:
        session = event.get("session")
        if not isinstance(session, dict):
            return
        instructions = session.get("instructions")
        if isinstance(instructions, str):
            self.session_instructions = instructions
        self._announced_formats.update(_audio_formats(session))
        if kind == "session.updated" and self._format_updates > 0:
            self._format_updates -= 1
        if self._format_updates == 0:
            self.audio_formats = dict(self._announced_formats)
        if self._turns is not None:
            self._turns.session(session)
        if self.session_id is None and (kind == "session.created" or self.attached):
            self.session_id = _public_id(session.get("id"), self.fallback_id)
            self._start_deadline = None
            actions.append(
                SessionNamed(
                    session_id=self.session_id, instructions=self.session_instructions, at=now
                )
            )
        elif isinstance(instructions, str):
            actions.append(InstructionsChanged(instructions=instructions))

    def _caller_session_update(self, event: dict) -> None:
        """The caller's `session.update` on its way: its audio after it is in its formats."""
        session = event.get("session")
        if isinstance(session, dict):
            self._format_updates += 1
            self.audio_formats.update(_audio_formats(session))

    def _on_response_event(
        self, kind: str, event: dict, frame: str, actions: list[Action], now: float
    ) -> str | None:
        response = event.get("response")
        if not isinstance(response, dict) or not isinstance(response.get("id"), str):
            return frame
        response_id = response["id"]
        metadata = response.get("metadata")
        tag = metadata.get(OC_REQUEST_KEY) if isinstance(metadata, dict) else None
        tag = tag if isinstance(tag, str) else None
        if kind == "response.created":
            spoken_in = _audio_formats(response).get(AGENT_SIDE)  # its own output format
            if spoken_in is not None:
                self._response_formats[response_id] = spoken_in
            if tag is not None and self._operator_out_of_band(tag):
                # Whatever became of its request (even timed out), this response is the
                # operator's alone: none of its events reach the caller.
                self._hidden.add(response_id)
            # Outside the conversation (`conversation_id` null): the server never starts one
            # by itself, so nobody's but the caller's app (attached mode) if not ours.
            out_of_band = "conversation_id" in response and response["conversation_id"] is None
            if out_of_band:
                origin = CALLER
            else:
                origin = self._turns.origin() if self._turns is not None else SERVER
            self._apply(
                self.sequencer.response_created(
                    response_id=response_id,
                    oc_request=tag,
                    now=now,
                    observed_origin=origin,
                    observed_out_of_band=out_of_band,
                ),
                actions,
            )
        else:
            status = response.get("status")
            details = {
                "output_text": events.response_output_text(response),
                "usage": response.get("usage"),
            }
            self._apply(
                self.sequencer.response_done(
                    response_id=response_id,
                    status=status if isinstance(status, str) else "",
                    now=now,
                    details=details,
                ),
                actions,
            )
        hidden = response_id in self._hidden
        if kind == "response.created":
            self._created_hidden = hidden  # the rate_limits.updated that follows is its
        if kind == "response.done":
            usage = response.get("usage")
            if isinstance(usage, dict) and add_usage(self.usage, usage):
                actions.append(UsageChanged(usage=copy.deepcopy(self.usage)))
                if self.watched:
                    summary = self.usage_summary()
                    message = {"type": WATCH_USAGE, "session_id": self.session_id, **summary}
                    actions.append(ToWatchers(message=message))
            self._hidden.discard(response_id)
            self._response_formats.pop(response_id, None)
            info = self._infos.get(tag) if tag is not None else None
            nudged = info is not None and info.origin in OPERATOR_ORIGINS
            self.transcript.response_done(
                response, oob=hidden, request_id=tag if nudged else None
            )
            self._schedule_flush(now)
        if hidden:
            return None
        if tag is None:
            return frame  # the server's own response: nothing of ours in it
        info = self._infos.get(tag)
        if info is None or info.origin in OPERATOR_ORIGINS:
            # An operator's response: its metadata and instructions are the operator's.
            response["metadata"] = None
            response.pop("instructions", None)
        else:
            response["metadata"] = info.metadata
        return events.dumps(event)

    def _on_error(self, event: dict, frame: str, actions: list[Action], now: float) -> str | None:
        event_id, code, message = events.error_fields(event)
        self._count_error(code)
        param = event["error"].get("param") if isinstance(event.get("error"), dict) else None
        if self._format_updates > 0 and (
            code in SESSION_UPDATE_REFUSALS
            or (isinstance(param, str) and param.startswith("session."))
        ):
            # The caller's session.update was refused: nothing of it applies.
            self._format_updates -= 1
            if self._format_updates == 0:
                self.audio_formats = dict(self._announced_formats)
        if code == "session_expired":
            # The upstream ends the session (its close follows): the caller's news, not the
            # failure of whichever request happens to be outstanding.
            self._expired = True
            return frame
        if event_id is not None and event_id in self._own_event_ids:
            del self._own_event_ids[event_id]
            return None  # about a note: the operators see it, the caller never sent it
        claims = self._apply(
            self.sequencer.error(event_id=event_id, code=code, message=message, now=now), actions
        )
        if claims:
            return frame if claims[0].forward_to_caller else None
        # An error about none of the sequencer's events is the caller's own: it goes through.
        # Not conversation_already_has_active_response: every response.create of the caller's
        # passes the sequencer, so that one answers the relay's sequencing (a request that
        # timed out, refused later without its event_id or once forgotten).
        return None if code == ACTIVE_RESPONSE_ERROR else frame

    def _response_of(self, event: dict) -> Any:
        response_id = event.get("response_id")
        if response_id is None and isinstance(event.get("response"), dict):
            response_id = event["response"].get("id")
        return response_id

    # ------------------------------------------------------------------ transcript

    def _on_item_event(self, kind: str, event: dict, now: float) -> None:
        if kind == "conversation.item.done":
            item = event.get("item")
            if isinstance(item, dict):
                self.transcript.item_done(item)
        else:  # the caller's speech, transcribed
            item_id, text = event.get("item_id"), event.get("transcript")
            if isinstance(item_id, str) and isinstance(text, str):
                self.transcript.transcription(item_id, text)
        self._schedule_flush(now)

    def _on_delta(self, event: dict, hidden: bool, now: float) -> None:
        item_id, delta, response_id = (
            event.get("item_id"),
            event.get("delta"),
            event.get("response_id"),
        )
        if isinstance(item_id, str) and isinstance(delta, str):
            self.transcript.delta(
                item_id=item_id,
                response_id=response_id if isinstance(response_id, str) else None,
                text=delta,
                oob=hidden,
            )
            self._schedule_flush(now)

    def _schedule_flush(self, now: float) -> None:
        if self._flush_at is None and self.transcript.has_changes:
            self._flush_at = now + FLUSH_INTERVAL

    def _flush(self) -> list[Action]:
        self._flush_at = None
        entries = self.transcript.drain()
        if not entries or not self._watchers:
            return []
        return [
            ToWatchers(
                message={
                    "type": WATCH_TRANSCRIPT,
                    "session_id": self.session_id,
                    "entries": entries,
                }
            )
        ]

    # ------------------------------------------------------------------ caller → upstream

    def caller_frame(self, frame: str | bytes, *, now: float) -> list[Action]:
        if self.ended is not None:
            return []
        if type(frame) is str and events.may_need_refusal(frame):
            refusal = self._refusal(frame)
            if refusal is not None:
                return refusal
        if self.rotation is not None:  # held while the upstream is replaced; ids translated
            rotated = self.rotation.caller_frame(frame)
            if rotated is not None:
                return rotated
        if type(frame) is bytes:
            return [ToUpstream(frame=frame)]
        kind = events.peek_type(frame)
        if self.tools.reads_caller_items and kind in (tools.CALLER_ITEM_CREATE, None):
            event = events.loads_object(frame)  # an approval response may answer one
            if event is not None and event.get("type") == tools.CALLER_ITEM_CREATE:
                return self._finish(self.tools.caller_item(frame, event, now), now)
        if kind is not None and kind != "response.create":
            if kind == CALLER_AUDIO_TYPE and self._tapping:
                return [ToUpstream(frame=frame), *self._tap_frame(CALLER_SIDE, frame, now)]
            if kind == CALLER_SESSION_UPDATE:
                event = events.loads_object(frame)
                if event is not None:
                    self._caller_session_update(event)
            return [ToUpstream(frame=frame)]
        self._deadline_stale = True
        try:
            event = events.loads(frame)
        except ValueError as exc:
            return self._not_json(frame, exc)
        if not isinstance(event, dict):
            return self._tell_caller(
                "invalid_type",
                f"Expected an event object, but got {events.json_type(event)} instead.",
            )
        if event.get("type") == CALLER_AUDIO_TYPE and self._tapping:
            return [ToUpstream(frame=frame), *self._tap(CALLER_SIDE, event.get("audio"), now)]
        if event.get("type") == CALLER_SESSION_UPDATE:
            self._caller_session_update(event)
        if event.get("type") != "response.create":
            return [ToUpstream(frame=frame)]
        return self._finish(self._caller_response_create(event, now), now)

    def _refusal(self, frame: str) -> list[Action] | None:
        """The `error` for a caller event the upstream must not get: nested too deep, or text
        that cannot be stored or sent on (NUL, a lone surrogate) anywhere in it. None: the
        frame goes on as usual (a `response.create` is checked, in more detail, below)."""
        try:
            event = events.loads(frame)
        except ValueError as exc:
            return self._not_json(frame, exc)
        if not isinstance(event, dict) or event.get("type") == "response.create":
            return None
        problem = events.find_problem(event, "")
        if problem is None:
            return None
        param, reason = problem
        event_id = event.get("event_id")
        if not isinstance(event_id, str) or events.text_problem(event_id):
            event_id = None
        message = f"'{param}' {reason}." if param else f"The event {reason}."
        return self._tell_caller("invalid_value", message, param=param or None, event_id=event_id)

    def _caller_response_create(self, event: dict, now: float) -> list[Action]:
        event_id = event.get("event_id")
        if event_id is not None and not isinstance(event_id, str):
            kind = events.json_type(event_id)
            return self._tell_caller(
                "invalid_type",
                f"Invalid type for 'event_id': expected a string, but got {kind} instead.",
                param="event_id",
            )
        if not event_id:
            event_id = self._new_event_id()
        elif events.text_problem(event_id):
            return self._tell_caller(
                "invalid_value", f"'event_id' {events.text_problem(event_id)}.", param="event_id"
            )
        response = event.get("response", {})
        if not isinstance(response, dict):
            kind = events.json_type(response)
            return self._tell_caller(
                "invalid_type",
                f"Invalid type for 'response': expected an object, but got {kind} instead.",
                param="response",
                event_id=event_id,
            )
        refusal = _caller_response_problem(response)
        if refusal is not None:
            code, param, message = refusal
            return self._tell_caller(code, message, param=param, event_id=event_id)
        out_of_band = response.get("conversation") == "none"
        queued = len(self.sequencer.queued_ids)
        if not out_of_band and queued >= self.queue_limit:
            return self._tell_caller(
                "queue_full",
                f"{queued} responses are already waiting in this session (the limit is "
                f"{self.queue_limit}); send response.create again once some have started.",
                event_id=event_id,
            )
        request = Request(
            id=self._new_request_id(), origin=CALLER, event_id=event_id, response=response
        )
        instructions = response.get("instructions")
        metadata = response.get("metadata")
        info = _Info(
            origin=CALLER,
            out_of_band=out_of_band,
            requested_by=self.connected_by,
            instructions=instructions if isinstance(instructions, str) else None,
            metadata=metadata,
            sent_instructions=instructions if isinstance(instructions, str) else None,
            event_id=event_id,
            created_at=now,
        )
        self._infos[request.id] = info
        actions: list[Action] = [
            RequestRecorded(
                request_id=request.id,
                origin=CALLER,
                event_id=event_id,
                instructions=info.instructions,
                metadata=dict(metadata) if isinstance(metadata, dict) else None,
                # As the relay reads it: a value the upstream will refuse is not a record's.
                conversation="none" if out_of_band else None,
                requested_by=self.connected_by,
                status=RequestStatus.QUEUED,
                response_id=None,
                at=now,
            )
        ]
        # The sequencer's own checks were all made above; what it returns is applied as usual.
        self._apply(self.sequencer.submit(request, now=now), actions)
        return actions

    def _not_json(self, frame: str, exc: ValueError) -> list[Action]:
        return self._tell_caller(
            "invalid_json",
            f"The frame is not valid JSON: {exc}.",
            event_id=events.leading_event_id(frame),
        )

    def _tell_caller(
        self,
        code: str,
        message: str,
        *,
        param: str | None = None,
        event_id: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> list[Action]:
        error = events.error_event(
            code=code, message=message, param=param, client_event_id=event_id, error_type=error_type
        )
        error["event_id"] = self._new_event_id()
        return [ToCaller(frame=events.dumps(error))]

    # ------------------------------------------------------------------ operators

    def submit(self, stored: OperatorRequest, *, now: float) -> list[Action]:
        self._deadline_stale = True
        if self.rotation is not None and self.rotation.submit(stored):
            return []  # submitted once the upstream is replaced
        if stored.id in self._infos or stored.id in self._forgotten:
            return []  # both pinged and picked up, or cancelled before it arrived
        response: dict[str, Any] = {}
        if stored.metadata:
            response["metadata"] = dict(stored.metadata)
        if stored.conversation is not None:
            response["conversation"] = stored.conversation
        info = _Info(
            origin=stored.origin,
            out_of_band=stored.conversation == "none",
            requested_by=stored.requested_by,
            instructions=stored.instructions,
            metadata=stored.metadata,
            created_at=stored.created_at,
        )
        if stored.instructions is not None and stored.instructions_mode == "replace":
            response["instructions"] = info.sent_instructions = stored.instructions
        elif stored.instructions is not None:
            info.append = stored.instructions  # composed when sent, with the instructions of then
        request = Request(
            id=stored.id, origin=stored.origin, event_id=self._new_event_id(), response=response
        )
        info.event_id = request.event_id
        self._infos[stored.id] = info
        actions: list[Action] = []
        try:
            self._apply(self.sequencer.submit(request, now=now), actions)
        except SequencerError as exc:  # the services validated it, so this is our bug
            actions.append(
                RequestChanged(
                    request_id=stored.id,
                    status=RequestStatus.FAILED,
                    at=now,
                    error_code="invalid_request",
                    error_message=str(exc),
                )
            )
        return self._finish(actions, now)

    def cancel(self, request_id: str, *, now: float) -> list[Action]:
        """Cancel a request only while it is still queued; the answer says what it is now
        (with `at` only when this cancel is what cancelled it)."""
        self._deadline_stale = True
        if request_id in self._forgotten:
            return [Answer(payload={"status": self._forgotten[request_id]})]
        info = self._infos.get(request_id)
        if info is None:
            # Its ping was lost and the pickup has not brought it yet: it was never sent.
            # Remembering it keeps the pickup from sending it later.
            self._forgotten[request_id] = RequestStatus.CANCELLED.value
            return [
                RequestChanged(request_id=request_id, status=RequestStatus.CANCELLED, at=now),
                Answer(payload={"status": RequestStatus.CANCELLED.value, "at": now}),
            ]
        try:
            status = self.sequencer.status(request_id)
        except KeyError:  # refused when submitted; its record says so
            return [Answer(payload={"status": RequestStatus.FAILED.value})]
        if status is not RequestStatus.QUEUED or self.ended is not None:
            return [Answer(payload={"status": status.value})]
        actions: list[Action] = []
        self._apply(self.sequencer.cancel(request_id, now=now), actions)
        if info.origin == CALLER:
            # The caller's client waits for a response to its response.create; tell it why
            # none will come, as the upstream tells it of a response.create it refuses.
            actions += self._tell_caller(
                "response_cancelled",
                "An operator cancelled this response.create before it was sent.",
                event_id=info.event_id,
            )
        actions.append(Answer(payload={"status": RequestStatus.CANCELLED.value, "at": now}))
        return self._finish(actions, now)

    def note(self, *, item_id: str, role: str, text: str, now: float) -> list[Action]:
        """Add a message item to the conversation without asking for a response."""
        self._deadline_stale = True
        if self.ended is not None:
            return [Answer(payload={"ok": False, "message": "The session has ended."})]
        event_id = self._new_event_id()
        self._own(event_id)
        item = {
            "id": item_id,
            "type": "message",
            "role": role,
            "content": [{"type": "input_text", "text": text}],
        }
        event = {"type": "conversation.item.create", "event_id": event_id, "item": item}
        actions: list[Action] = [
            ToUpstream(frame=events.dumps(event)),
            Answer(payload={"ok": True, "at": now}),
        ]
        return self._held(actions)

    def interrupt(self, *, now: float) -> list[Action]:
        self._deadline_stale = True
        response_id = self.sequencer.active_response_id
        actions: list[Action] = []
        self._apply(self.sequencer.interrupt(now=now), actions)
        actions.append(Answer(payload={"response_id": response_id}))
        return self._held(actions)

    def hangup_requested(self, *, pending: bool, now: float) -> list[Action]:
        """An attached call is being hung up (`pending`), or that hang-up failed: a normal
        close of the upstream while any is pending ends the session with `hung_up` (see
        `attached`). A failed one does not cancel another that is under way."""
        if self.attached:
            self._hangups_pending = max(0, self._hangups_pending + (1 if pending else -1))
        return [Answer(payload={"ok": self.ended is None, "at": now})]

    def watch(
        self, watcher: str, *, user: str, watching: bool, now: float, snapshot: bool = False
    ) -> list[Action]:
        """An operator's console starts (renews) or stops watching this session. A new watcher
        is sent the snapshot; one that renews is sent it again when it asks (`snapshot`): the
        updates sent to it while its channel layer was away were lost."""
        self._deadline_stale = True
        before = self.watchers
        actions: list[Action] = []
        send_snapshot = watching and (snapshot or watcher not in self._watchers)
        if watching:
            self._watchers[watcher] = (user, now + WATCH_TTL)
        else:
            self._watchers.pop(watcher, None)
        for gone in [w for w, (_, expires) in self._watchers.items() if expires < now]:
            del self._watchers[gone]
        # The transcript learns first that it is watched again: a turn whose deltas went
        # unread while nobody watched is then given as partial, not as its stale beginning.
        self.transcript.watched(bool(self._watchers), streaming=self.sequencer.live_response_ids)
        if send_snapshot:
            actions.append(
                ToWatcher(watcher=watcher, message={"type": WATCH_SNAPSHOT, **self.snapshot()})
            )
        after = self.watchers
        if after != before:
            actions.append(
                ToWatchers(
                    message={
                        "type": WATCH_PRESENCE,
                        "session_id": self.session_id,
                        "watchers": list(after),
                    }
                )
            )
            actions.append(WatchersChanged(names=after))
        return actions

    # ------------------------------------------------------------------ for the rotation

    @property
    def between_responses(self) -> bool:
        """No response in progress and none asked for: the upstream may be replaced."""
        return not self._busy and self.sequencer.outstanding_id is None

    def resume_queue(self, *, now: float) -> list[Action]:
        """The sequencer was held while the upstream leg was replaced: it goes on."""
        actions: list[Action] = []
        self._apply(self.sequencer.resume(now=now), actions)
        return actions

    # ------------------------------------------------------------------ for the tool desk

    @property
    def watched(self) -> bool:
        return bool(self._watchers)

    def deadline_moved(self) -> None:
        self._deadline_stale = True

    def transcript_changed(self, now: float) -> None:
        self._schedule_flush(now)

    def tell_caller(self, code: str, message: str, **fields: Any) -> list[Action]:
        return self._tell_caller(code, message, **fields)

    def _own(self, event_id: str) -> None:
        self._own_event_ids[event_id] = None
        if len(self._own_event_ids) > OWN_EVENTS_KEPT:
            del self._own_event_ids[next(iter(self._own_event_ids))]

    def own_event(self, kind: str, **fields: Any) -> str:
        """A client event of the relay's own, as a frame: an error about it is not the
        caller's (it never reaches the caller)."""
        event_id = self._new_event_id()
        self._own(event_id)
        return events.dumps({"type": kind, "event_id": event_id, **fields})

    def request_response(self, *, origin: str, requested_by: str, now: float) -> list[Action]:
        """Ask for the next response on an operator's behalf (no overrides): recorded, then
        queued in the sequencer like any operator's request."""
        request_id = self._new_request_id()
        recorded = RequestRecorded(
            request_id=request_id,
            origin=origin,
            event_id="",
            instructions=None,
            metadata=None,
            conversation=None,
            requested_by=requested_by,
            status=RequestStatus.QUEUED,
            response_id=None,
            at=now,
        )
        stored = OperatorRequest(id=request_id, origin=origin, requested_by=requested_by)
        return [recorded, *self.submit(stored, now=now)]

    # ------------------------------------------------------------------ audio

    def listen(self, listener: str, *, user: str, listening: bool, now: float) -> list[Action]:
        """An operator starts (renews) or stops listening. A new listener is told
        `listen.started` on its own channel: the audio of every input after this one reaches
        it, since it joined the session's listen group before asking."""
        before = len(self._listeners)
        actions: list[Action] = []
        if listening:
            if listener not in self._listeners:
                message = {"type": LISTEN_STARTED, "format": "pcm16", "rate": 24000}
                actions.append(ToWatcher(watcher=listener, message=message))
            self._listeners[listener] = (user, now + WATCH_TTL)
        else:
            self._listeners.pop(listener, None)
        for gone in [name for name, (_, expires) in self._listeners.items() if expires < now]:
            del self._listeners[gone]
        self._tapping = self.record_audio or bool(self._listeners)
        if len(self._listeners) != before:
            actions.append(ListenersChanged(count=len(self._listeners)))
        return actions

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    def _tap_frame(self, side: int, frame: str | bytes, now: float) -> list[Action]:
        event = events.loads_object(frame)
        return [] if event is None else self._tap(side, event.get("audio"), now)

    def _tap(
        self,
        side: int,
        audio: Any,
        now: float,
        audio_format: str | None = None,
        *,
        item_id: Any = None,
    ) -> list[Action]:
        """`audio_format`: the response's own, when it named one (else the session's)."""
        if not isinstance(audio, str) or not audio:
            return []  # the upstream answers a malformed append; there is nothing to copy
        audio_format = audio_format or self.audio_formats[side]
        item_id = item_id if isinstance(item_id, str) else None
        return [AudioTapped(side=side, audio=audio, format=audio_format, at=now, item_id=item_id)]

    def _cut(self, event: dict) -> list[Action]:
        item_id, audio_end_ms = event.get("item_id"), event.get("audio_end_ms")
        if not isinstance(item_id, str) or type(audio_end_ms) is not int or audio_end_ms < 0:
            return []
        return [AudioCut(item_id=item_id, audio_end_ms=audio_end_ms)]

    # ------------------------------------------------------------------ time

    def tick(self, *, now: float) -> list[Action]:
        self._deadline_stale = True
        self._stall_check_at = None  # anchored again at the latest frame
        if self.ended is not None:
            return []
        if self._start_deadline is not None and now >= self._start_deadline and self.attached:
            self._start_deadline = None  # no session event yet: named by the call id
            self.session_id = self.fallback_id
            return [SessionNamed(session_id=self.session_id, instructions="", at=now)]
        if self._start_deadline is not None and now >= self._start_deadline:
            return self._fail_upstream(
                "upstream_timeout",
                f"The upstream did not start the session within {self.connect_timeout:g} s.",
                now=now,
            )
        if self._busy and now >= self._last_upstream_at + self.stall_timeout:
            return self._fail_upstream(
                "upstream_timeout",
                f"The upstream sent nothing for {self.stall_timeout:g} s during a response.",
                now=now,
            )
        actions: list[Action] = []
        if self._sideband is not None and self._sideband.due(now):
            actions.append(OpenUpstream())
        self._apply(self.sequencer.tick(now=now), actions)
        actions += self.tools.tick(now)
        if self.rotation is not None:
            actions += self.rotation.tick(now)
        if self._flush_at is not None and now >= self._flush_at:
            actions += self._flush()
        return self._finish(actions, now)

    # ------------------------------------------------------------------ internals

    @property
    def _busy(self) -> bool:
        """A response is in progress upstream, so frames are due."""
        return bool(self._hidden) or self.sequencer.active_response_id is not None

    def _fail_upstream(self, code: str, message: str, *, now: float) -> list[Action]:
        """The upstream cannot go on (unreachable, never started, stalled): the caller is told
        why, and the session fails."""
        self._count_error(code)
        return [
            *self._tell_caller(code, message, error_type="server_error"),
            CloseCaller(code=1011, reason=message),
            *self._end("failed", EndReason.UPSTREAM_CLOSED, now, detail=message),
        ]

    def _end(
        self,
        status: str,
        reason: EndReason,
        now: float,
        *,
        code: int | None = None,
        detail: str = "",
        request_code: str = "session_ended",
    ) -> list[Action]:
        end = self.ended = SessionEnded(
            status=status, reason=reason, at=now, code=code, detail=detail
        )
        self._start_deadline = None
        actions: list[Action] = []
        why = f"{reason.value}: {detail}" if detail else reason.value
        self._apply(self.sequencer.closed(request_code, now=now, detail=why), actions)
        actions += self.tools.session_ended(now)
        self._hidden.clear()
        self.transcript.session_ended()
        if self.session_id is not None:
            actions += self._flush()
            actions.append(
                ToWatchers(
                    message={
                        "type": WATCH_ENDED,
                        "session_id": self.session_id,
                        "status": end.status,
                        "reason": end.reason.value,
                        "code": end.code,
                        "detail": end.detail,
                    }
                )
            )
        actions += self._finals(now)  # the turns the end cut short, recorded before it
        actions.append(end)
        return actions

    def _finish(self, actions: list[Action], now: float) -> list[Action]:
        """After each input: the transcript entries it made final; forget old finished
        requests once enough have piled up."""
        if self.transcript.has_finals:
            actions += self._finals(now)
        if self._finished_since_forget >= FORGET_EVERY:
            self._finished_since_forget = 0
            for request_id, status in self.sequencer.forget_finished(keep=REMEMBER_FINISHED):
                info = self._infos.pop(request_id, None)
                self._forgotten[request_id] = status.value
                if info is not None and info.operator_out_of_band:
                    self._forgotten_hidden[request_id] = None
            for kept in (self._forgotten, self._forgotten_hidden):
                for request_id in list(itertools.islice(kept, max(0, len(kept) - FORGOTTEN_IDS))):
                    del kept[request_id]
        return actions

    def _finals(self, now: float) -> list[Action]:
        """The transcript entries made final since the last call, each with where its turn
        began if the core saw it."""
        return [
            TranscriptFinal(
                entry=entry, at=now, started_at=self._turn_started.pop(entry["id"], None)
            )
            for entry in self.transcript.drain_finals()
        ]

    def origin_of(self, request_id: str) -> str | None:
        """The origin of a request the core holds (None once forgotten, or never known)."""
        info = self._infos.get(request_id)
        return info.origin if info is not None else None

    def _count_error(self, code: Any) -> None:
        key = code if isinstance(code, str) and code else "unknown"
        self.upstream_errors[key] = self.upstream_errors.get(key, 0) + 1

    def _operator_out_of_band(self, request_id: str) -> bool:
        info = self._infos.get(request_id)
        if info is None:
            return request_id in self._forgotten_hidden
        return info.operator_out_of_band

    def _apply(self, sequenced: list, actions: list[Action]) -> list[ErrorClaimed]:
        """Turn the sequencer's actions into the core's, appending them to `actions`; returns
        the error claims among them."""
        claims: list[ErrorClaimed] = []
        for action in sequenced:
            kind = type(action)
            if kind is SendEvent:
                actions.append(ToUpstream(frame=events.dumps(self._composed(action))))
            elif kind is StatusChanged:
                actions += self._changed(action)
            elif kind is ResponseObserved:
                origin = action.request.origin  # `caller` only in attached mode
                out_of_band = action.request.out_of_band
                if self._turns is not None and not out_of_band:  # it answers no turn
                    self._turns.observed()
                self._infos[action.request.id] = _Info(
                    origin=origin, out_of_band=out_of_band, created_at=action.at
                )
                actions.append(
                    RequestRecorded(
                        request_id=action.request.id,
                        origin=origin,
                        event_id="",
                        instructions=None,
                        metadata=None,
                        conversation="none" if out_of_band else None,
                        requested_by="",
                        status=RequestStatus.IN_PROGRESS,
                        response_id=action.response_id,
                        at=action.at,
                    )
                )
            elif kind is LateResponse:
                actions += self._late(action)
            elif kind is ErrorClaimed:
                claims.append(action)
        return claims

    def _composed(self, send: SendEvent) -> dict[str, Any]:
        """`append` mode: the session's instructions as last seen, then the operator's text."""
        event = send.event
        info = self._infos.get(send.request_id) if send.request_id is not None else None
        if info is not None and info.append is not None and event.get("type") == "response.create":
            info.sent_instructions = compose_instructions(
                session_instructions=self.session_instructions, text=info.append
            )
            event["response"]["instructions"] = info.sent_instructions
        return event

    def _changed(self, change: StatusChanged) -> list[Action]:
        info = self._infos.get(change.request_id)
        status = change.status
        if status.is_terminal:
            self._finished_since_forget += 1
        details = change.details or {}
        sent = info.sent_instructions if info is not None and status is RequestStatus.SENT else None
        actions: list[Action] = [
            RequestChanged(
                request_id=change.request_id,
                status=status,
                at=change.at,
                response_id=change.response_id,
                error_code=change.error_code,
                error_message=change.error_message,
                output_text=details.get("output_text"),
                usage=details.get("usage"),
                sent_instructions=sent,
            )
        ]
        if info is None:
            return actions
        actions += self._to_watchers(
            change.request_id,
            info,
            status=status,
            at=change.at,
            response_id=change.response_id,
            error_code=change.error_code,
            error_message=change.error_message,
            sent_instructions=sent,
        )
        if (
            info.origin == CALLER
            and status is RequestStatus.FAILED
            and change.error_code == "upstream_timeout"
        ):
            # The caller's client waits for this response; the upstream never answered.
            actions += self._tell_caller(
                "upstream_timeout", change.error_message or "", event_id=info.event_id
            )
        return actions

    def _late(self, late: LateResponse) -> list[Action]:
        """A request that had ended got its response after all: recorded, and the watchers'
        row of it gets the response and the longer error message (its status stays)."""
        details = late.details or {}
        actions: list[Action] = [
            LateResponseRecorded(
                request_id=late.request_id,
                response_id=late.response_id,
                at=late.at,
                error_message=late.error_message,
                output_text=details.get("output_text"),
                usage=details.get("usage"),
            )
        ]
        info = self._infos.get(late.request_id)
        if info is not None:
            actions += self._to_watchers(
                late.request_id,
                info,
                status=self.sequencer.status(late.request_id),
                at=late.at,
                response_id=late.response_id,
                error_code=late.error_code,
                error_message=late.error_message,
            )
        return actions

    def _to_watchers(
        self,
        request_id: str,
        info: _Info,
        *,
        status: RequestStatus,
        at: float,
        response_id: str | None,
        error_code: str | None,
        error_message: str | None,
        sent_instructions: str | None = None,
    ) -> list[Action]:
        """A request as it is now, for the session pages: kept among the recent changes (a new
        watcher's snapshot starts from them) and sent to the watchers (an operator's request
        always, as its status changes always were)."""
        message = {
            "type": WATCH_REQUEST,
            "session_id": self.session_id,
            "request_id": request_id,
            "origin": info.origin,
            "requested_by": info.requested_by,
            "instructions": info.instructions,
            "metadata": info.metadata,
            "conversation": "none" if info.out_of_band else "auto",
            "status": status.value,
            "at": at,
            "created_at": info.created_at,
            "response_id": response_id,
            "error_code": error_code,
            "error_message": error_message,
            "sent_instructions": sent_instructions,
        }
        self._recent_changes.pop(request_id, None)
        self._recent_changes[request_id] = message
        if len(self._recent_changes) > RECENT_CHANGES:
            del self._recent_changes[next(iter(self._recent_changes))]
        if self._watchers or info.origin in OPERATOR_ORIGINS:
            return [ToWatchers(message=message)]
        return []


def add_usage(total: dict[str, Any], usage: Mapping[str, Any]) -> bool:
    """Add a response's `usage` to a running total, number by number, nested objects
    (`input_token_details`, …) included; anything else is left out. Whether anything was added."""
    added = False
    for key, value in usage.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            total[key] = total.get(key, 0) + value
            added = True
        elif isinstance(value, Mapping):
            inner = total.get(key)
            if not isinstance(inner, dict):
                inner = total[key] = {}
            added = add_usage(inner, value) or added
    return added


def _audio_formats(session: dict) -> dict[int, str]:
    """The audio formats a session object names (GA `audio.*.format.type`, or the beta shape's
    `*_audio_format`), by side."""
    audio = session.get("audio")
    formats = {}
    for side, direction, beta_key in (
        (CALLER_SIDE, "input", "input_audio_format"),
        (AGENT_SIDE, "output", "output_audio_format"),
    ):
        named = session.get(beta_key)
        if isinstance(audio, dict) and isinstance(audio.get(direction), dict):
            given = audio[direction].get("format")
            named = given.get("type") if isinstance(given, dict) else named
        if isinstance(named, str) and named in AUDIO_FORMATS:
            formats[side] = AUDIO_FORMATS[named]
    return formats


def _public_id(value: Any, fallback: str) -> str:
    """The upstream's session.id, if the console and the database can hold it."""
    if (
        isinstance(value, str)
        and 0 < len(value) <= MAX_SESSION_ID_CHARS
        and not events.text_problem(value)
    ):
        return value
    return fallback


def _caller_response_problem(response: dict[str, Any]) -> tuple[str, str, str] | None:
    """Why the relay refuses a caller's `response` object: (code, param, message), or None."""
    metadata = response.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        return (
            "invalid_type",
            "response.metadata",
            "Invalid type for 'response.metadata': expected an object.",
        )
    if isinstance(metadata, dict) and (
        OC_REQUEST_KEY in metadata or len(metadata) > MAX_CALLER_METADATA_PAIRS
    ):
        return (
            "invalid_value",
            "response.metadata",
            f"The relay reserves the metadata key '{OC_REQUEST_KEY}' and so allows at most "
            f"{MAX_CALLER_METADATA_PAIRS} pairs.",
        )
    # The upstream refuses a value that is not a string; the sequencer would drop a null one
    # and send the rest, so the caller would never hear of it.
    for key, value in (metadata or {}).items():
        if not isinstance(value, str):
            param = f"response.metadata.{key}"
            return (
                "invalid_type",
                param,
                f"Invalid type for '{param}': expected a string, but got "
                f"{events.json_type(value)} instead.",
            )
    problem = events.find_problem(response, "response")
    if problem is not None:
        param, message = problem
        return "invalid_value", param, f"'{param}' {message}."
    return None
