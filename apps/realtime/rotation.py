"""Upstream rotation: moving a live session to a fresh upstream session. Pure, sans-I/O.

The service closes every session at its cap (60 minutes) with no renewal. A relayed session
older than `rotate_after` seconds therefore moves, between responses, to a fresh upstream
session that is given the session's configuration and the conversation so far; the caller's
connection, the public session id and every id the caller holds stay valid (CONTRACT section 9).

`Rotation` is the relay core's part for this (`RelayCore` owns one when rotation is on and
calls it with a few lines). Like the sequencer, it imports nothing beyond the standard library,
`events` and `ga` (the SDK's GA types, data only), reads no clock (time is `now`) and returns
actions:

What it tracks (from the current upstream's events, `observe`)
  config        the session configuration as last confirmed (`session.created`/`.updated`),
                without the read-only fields (`id`, `object`, `expires_at`, `client_secret`).
  conversation  the items in order (`conversation.item.added`/`.created` insert after their
                `previous_item_id`, first when it is null; `.done`, `.retrieved` and
                `response.done` outputs replace an item's content; `.deleted` removes it;
                transcripts of input and output audio fill in the audio parts; `.truncated`
                drops a reply's transcript, as the service drops the words never heard).
  speaking      the caller's speech was detected and not yet committed; after a commit, its
                item (and, with turn detection on, the response it starts) not yet come.
  unfinished    items added and not yet done.
  buffered      with turn detection off, the caller appended audio not yet committed.
  responses     the responses in progress upstream (in the conversation or out of band).

The steps (phases)
  idle       until `prewarm` before `due_at` (the session's start, then each swap, plus
             `rotate_after`).
  opening    `OpenFresh` asked the actor for a fresh upstream leg, ahead of time, so that its
             handshake is not part of anyone's wait. The session goes on as usual.
  open       the fresh leg is attached (its `session.created` is read). Once the rotation is
             due, the core holds its sequencer (what is queued waits for the fresh upstream)
             and the next idle moment starts the replay: no response in progress or asked for,
             the caller not speaking, no audio of a caller that commits its own turns waiting
             uncommitted, no tool approval pending (a rotation due while a response streams
             waits for its `response.done`).
  replaying  the core holds every caller frame, operator request and note (`hold`), in order;
             `session.update` with the configuration (what of the last announced session an
             update takes, with `type`, without `model`: `ga.updatable_session`) and a
             `conversation.item.create` per item (the same item ids, each after the one before
             through `previous_item_id`) went to the fresh leg (`ToFresh`); its
             acknowledgements are awaited (`session.created`, `session.updated`, every item
             acknowledged). Then a `conversation.item.retrieve` of the last item drains the
             set-up (below). Nothing of this reaches the caller. The old upstream is sent a
             barrier as the hold starts (below).
  swap       all acknowledged and drained, and the barrier answered: `SwapUpstream` (the actor
             makes the fresh leg the session's and closes the old one), `UpstreamSessions`
             (recorded), then the core resumes its sequencer and releases what it held, onto
             the fresh leg.

Acknowledgements
  Services differ in what they send for a created item: the GA service `conversation.item.added`
  and `.done`, the beta one `.created`, the simulator all three. An item counts as acknowledged
  at the first of them that names it (or, naming an id not sent, the next item awaited: the
  upstream named it itself); the later ones name an item already counted and are only read.
  Since which of them are still to come is not known, the swap waits for one more answer: the
  upstream answers in order, so its `conversation.item.retrieved` for the last replayed item
  comes after every event of the replay. Whatever the fresh leg sends until then is set-up,
  read here and never relayed; after the swap its events are the session's.

The old upstream's barrier
  Until the hold, the caller's frames go to the old upstream as usual, and the replay is built
  from what the old upstream has said so far: a caller's item created (or audio committed, a
  `session.update`) just before the hold may not be answered yet. Were the swap made before
  its answer came, the old leg would be closed with it: the item on neither the fresh session
  nor the caller's screen. So as the hold starts the old upstream is sent a retrieve of an item
  no conversation holds (`BARRIER_ITEM_ID`); it answers in order, so its `error` for it (naming
  the retrieve's event id) comes after its answers to everything sent before. Those answers
  reach the caller as usual and, changing the conversation, abandon the rotation (the next
  attempt replays the item); the `error` is the rotation's, never relayed nor counted, even
  when it comes after the rotation was abandoned (`barriers`). The swap waits for it (a barrier
  never answered is the fresh leg not ready in time).

When it does not go
  The old upstream changes the conversation or starts a response while a rotation is under way
  (an item, speech, a server response): the rotation is abandoned (`CloseFresh`), what was held
  goes to the old upstream, and it starts again at the next idle moment. The fresh leg cannot
  be opened, closes, answers with an `error`, or is not ready within `ready_timeout`: the same,
  and the next attempt waits a backoff (`retry_delay`, doubled up to `max_retry_delay`).

  The old upstream closing (at its cap, or lost) ends the session as without rotation
  (`session_expired` after the cap's error, else `upstream_closed`), in every phase: opening
  and open, the fresh session holds nothing yet; replaying, it holds the configuration and
  the conversation only once all is acknowledged, and even then the old upstream's answers
  to what it was sent before the hold (the barrier's) never come, so what the caller created
  last could be missing without anyone knowing; and the caller has already been told
  `session_expired` (the cap's error). The rotation comes `rotate_after` into the session,
  well before the cap, so only rotations failing for the whole margin, or a lost old leg,
  meet this. Frames and requests the rotation held are dropped with the session (the
  requests are failed `session_ended` as the session's end is recorded, `records`).

Ids
  The fresh session is given the caller's item ids; an upstream that assigned others would be
  mapped (`renamed`: caller id → upstream id) and translated both ways. The public session id
  stays the first `session.id`: a `session.updated` from a later upstream carries it. So does
  the conversation id: every upstream session has a conversation of its own (`conv_…`), and a
  later upstream's responses carry the one the caller saw first (`conversation_id`). Response
  ids are not replayed (responses are over by then), so none needs translating.

Spoken turns become text on the fresh session (the protocol cannot create audio content
without its audio). A `conversation.item.truncate` of such an item, which was audio for the
caller, cannot be done upstream; the relay answers it itself with `conversation.item.truncated`
and marks the item truncated in its copy; the text the fresh upstream holds stays whole (the
model keeps the words of a reply whose audio was cut before the rotation). A retrieve of such
an item answers the text version; a delete works as before.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from apps.realtime import events, ga

# Upstream event types the rotation reads on the current leg.
OBSERVED_TYPES = frozenset(
    {
        "session.created",
        "session.updated",
        "conversation.item.added",
        "conversation.item.created",
        "conversation.item.done",
        "conversation.item.retrieved",
        "conversation.item.deleted",
        "conversation.item.truncated",
        "conversation.item.input_audio_transcription.completed",
        "response.output_audio_transcript.done",
        "response.audio_transcript.done",
        "response.created",
        "response.done",
        "input_audio_buffer.speech_started",
        "input_audio_buffer.committed",
        "input_audio_buffer.cleared",
    }
)
# Fresh-leg events that acknowledge a replayed item (which of them a service sends differs).
ACKNOWLEDGING_TYPES = frozenset(
    {"conversation.item.created", "conversation.item.added", "conversation.item.done"}
)
# Of those, the ones that change what a fresh session would need while it is being prepared.
CHANGING_TYPES = OBSERVED_TYPES - {"session.created", "conversation.item.retrieved"}
# Caller events that name items, read once the session has rotated.
CALLER_ITEM_TYPES = frozenset(
    {
        "conversation.item.truncate",
        "conversation.item.delete",
        "conversation.item.retrieve",
        "conversation.item.create",
    }
)
# Item types a client may create as they are; any other is replayed as a system message that
# describes it. That is every MCP item: calls, tool lists and approval requests are the
# service's own, and the one a client may create, `mcp_approval_response`, must answer an
# `mcp_approval_request` of the same session, which a client cannot create.
CREATABLE_TYPES = frozenset({"message", "function_call", "function_call_output"})
# After this many failed attempts in a row, function calls and their outputs are replayed as
# text too (a fresh session that refuses an item would otherwise refuse every attempt).
PLAIN_AFTER_FAILURES = 2
# Text for a spoken turn whose transcript never came.
NO_TRANSCRIPT = "[spoken; no transcript]"
# Text for a spoken reply the caller cut short before the rotation (what it heard is not known).
CUT_SHORT = "[spoken; cut short by the caller; no transcript]"
# Item fields the service adds that a client does not send.
SERVER_ITEM_FIELDS = frozenset({"object", "status"})
MAX_UPSTREAM_ID_CHARS = 128
# The fresh leg is opened this long before the rotation is due (at most a quarter of
# `rotate_after`), so that its handshake is not part of the caller's wait.
PREWARM = 5.0
# After a rotation was abandoned for a change in the conversation, the next try waits this
# long at least (the next idle moment after it).
ABANDONED_RETRY_DELAY = 0.25
# The item the old upstream is asked to retrieve when the replay starts (no conversation holds
# it): its `error` (naming the retrieve's event id) marks where the old upstream's answers to
# everything sent to it before the hold end.
BARRIER_ITEM_ID = "oc_rotation_barrier"


class Phase(StrEnum):
    IDLE = "idle"
    OPENING = "opening"
    OPEN = "open"
    REPLAYING = "replaying"


# ---------------------------------------------------------------------------- actions


@dataclass(frozen=True, kw_only=True, slots=True)
class OpenFresh:
    """Open a fresh upstream leg beside the session's (the actor answers with
    `RelayCore.fresh_attached` or `fresh_failed`)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ToFresh:
    frame: str


@dataclass(frozen=True, kw_only=True, slots=True)
class CloseFresh:
    """Close the fresh leg: the rotation was abandoned (`detail` says why, for the log)."""

    detail: str


@dataclass(frozen=True, kw_only=True, slots=True)
class SwapUpstream:
    """The fresh leg becomes the session's upstream; the old one is closed."""

    session_id: str


@dataclass(frozen=True, kw_only=True, slots=True)
class UpstreamSessions:
    """The upstream session ids the session went through, in order (recorded)."""

    session_ids: tuple[str, ...]
    at: float


RotationAction = OpenFresh | ToFresh | CloseFresh | SwapUpstream | UpstreamSessions


# ---------------------------------------------------------------------------- the conversation


class Conversation:
    """The conversation as the upstream holds it: items by id, in order."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self._order: list[str] = []
        self.truncated: set[str] = set()

    @property
    def ids(self) -> list[str]:
        return list(self._order)

    def added(self, item: Any, previous_item_id: Any) -> None:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            return
        item_id = item["id"]
        if item_id in self.items:
            self.items[item_id] = _kept(item)
            return
        self.items[item_id] = _kept(item)
        # No previous item (null: the service's word for an item put first, the client's
        # "root"): first. A previous item this copy lacks: at the end, as new items go.
        if previous_item_id is None or previous_item_id == "root":
            index = 0
        elif isinstance(previous_item_id, str) and previous_item_id in self.items:
            last = self._order[-1] == previous_item_id
            index = len(self._order) if last else self._order.index(previous_item_id) + 1
        else:
            index = len(self._order)
        self._order.insert(index, item_id)

    def replaced(self, item: Any) -> None:
        """A newer view of a known item (its `.done`, a retrieve, a response's output)."""
        if isinstance(item, dict) and item.get("id") in self.items:
            self.items[item["id"]] = _kept(item)

    def deleted(self, item_id: Any) -> None:
        if isinstance(item_id, str) and self.items.pop(item_id, None) is not None:
            self._order.remove(item_id)
            self.truncated.discard(item_id)

    def transcribed(self, item_id: Any, content_index: Any, transcript: Any) -> None:
        item = self.items.get(item_id) if isinstance(item_id, str) else None
        content = item.get("content") if item is not None else None
        if not isinstance(content, list) or not isinstance(transcript, str):
            return
        index = content_index if isinstance(content_index, int) else 0
        if 0 <= index < len(content) and isinstance(content[index], dict):
            content[index]["transcript"] = transcript

    def cut(self, item_id: str, content_index: Any) -> None:
        """The upstream truncated an item's audio: it drops the text of it the caller did not
        hear, which this copy cannot tell apart, so the transcript goes (a retrieve's answer
        later gives the upstream's view). A cut reply is replayed as `CUT_SHORT`."""
        item = self.items.get(item_id)
        content = item.get("content") if item is not None else None
        index = content_index if isinstance(content_index, int) else 0
        if isinstance(content, list) and 0 <= index < len(content):
            part = content[index]
            if isinstance(part, dict) and part.get("type") in ("output_audio", "audio"):
                content[index] = {**part, "transcript": CUT_SHORT}

    def replay(self, *, plain: bool = False) -> list[tuple[dict[str, Any], bool]]:
        """Each item as a client creates it, in order, and whether it was audio made text."""
        return [replayable(self.items[item_id], plain=plain) for item_id in self._order]


def _kept(item: dict[str, Any]) -> dict[str, Any]:
    """A copy of an item, without audio bytes (only their transcripts are replayed), that the
    conversation may change (its content parts are copied; the rest is only read)."""
    kept = dict(item)
    content = item.get("content")
    if isinstance(content, list):
        kept["content"] = [
            {k: v for k, v in part.items() if k != "audio"} if isinstance(part, dict) else part
            for part in content
        ]
    return kept


def replayable(item: dict[str, Any], *, plain: bool = False) -> tuple[dict[str, Any], bool]:
    """An item as `conversation.item.create` can give it to a fresh session: text as it is,
    audio as its transcript, function calls and outputs as they are (as text too if `plain`),
    any other (MCP items) as a system message describing it. Returns the item and whether
    audio became text."""
    kind = item.get("type")
    fields = {k: v for k, v in item.items() if k not in SERVER_ITEM_FIELDS}
    if kind == "message":
        return _message(fields)
    if kind in CREATABLE_TYPES and not plain:
        return fields, False
    described = {k: v for k, v in fields.items() if k != "id"}
    text = f"[{kind}] {json.dumps(described, ensure_ascii=False, sort_keys=True)}"
    return _text_message(item.get("id"), "system", text), False


def _message(item: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    role = item.get("role")
    text_type = "output_text" if role == "assistant" else "input_text"
    parts: list[dict[str, Any]] = []
    spoken = False
    content = item.get("content")
    for part in content if isinstance(content, list) else ():
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": text_type, "text": str(part.get("text") or "")})
        elif kind in ("input_audio", "output_audio", "audio"):
            spoken = True
            transcript = part.get("transcript")
            text = transcript if isinstance(transcript, str) and transcript else NO_TRANSCRIPT
            parts.append({"type": text_type, "text": text})
        elif kind == "input_image":
            parts.append({k: v for k, v in part.items()})
    if not parts:
        parts.append({"type": text_type, "text": NO_TRANSCRIPT if spoken else ""})
    message = {"id": item.get("id"), "type": "message", "role": role, "content": parts}
    return message, spoken


def _text_message(item_id: Any, role: str, text: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "role": role,
        "content": [{"type": "input_text", "text": text}],
    }


# ---------------------------------------------------------------------------- the rotation


class Rotation:
    def __init__(
        self,
        *,
        rotate_after: float,
        new_event_id: Callable[[], str],
        ready_timeout: float = 10.0,
        retry_delay: float = 1.0,
        max_retry_delay: float = 60.0,
        prewarm: float = PREWARM,
    ) -> None:
        if rotate_after <= 0:
            raise ValueError(f"rotate_after must be above 0 seconds, not {rotate_after!r}")
        self.rotate_after = rotate_after
        self.ready_timeout = ready_timeout
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.prewarm = min(prewarm, rotate_after / 4)
        self._new_event_id = new_event_id
        self.config: dict[str, Any] = {}
        self.conversation = Conversation()
        self.speaking = False
        # Turns are committed by the caller (turn detection off): audio it appended since the
        # last commit lives only in the old session's input buffer, so the swap waits for it.
        self.manual_turns = False
        self.buffered = False
        # After a commit: what must still come before the session is idle ("item": the user
        # item, "response": the response turn detection starts), or None.
        self.turn_pending: str | None = None
        # Items added and not yet done (their content may still change); a response's end
        # clears it, so an item whose `.done` never comes holds nothing for long.
        self.unfinished: set[str] = set()
        self._auto_response = True
        self.responses: set[str] = set()  # in progress upstream, in or out of the conversation
        self.phase = Phase.IDLE
        self.holding = False  # replaying: the core holds the caller's and operators' inputs
        self.due_at: float | None = None
        self.session_ids: list[str] = []
        # The conversation id (`conv_…`) of the first in-conversation response the caller saw:
        # each upstream session has a conversation of its own, the caller one.
        self.conversation_id: str | None = None
        self.renamed: dict[str, str] = {}  # caller item id → upstream item id, where they differ
        self.renamed_back: dict[str, str] = {}
        self.textified: set[str] = set()  # items that were audio for the caller, text upstream
        self.caller_types: frozenset[str] = frozenset()  # what caller_event must see
        self.rotations = 0
        self.failures = 0  # attempts that failed in a row
        self._held: list[tuple[str, Any]] = []
        self._ready_by: float | None = None
        self._fresh_id: str | None = None
        # Item ids sent to the fresh session and not yet acknowledged there, in order, with
        # the type of each (and a message's role).
        self._awaiting: dict[str, tuple[Any, Any]] = {}
        self._acknowledged_ids: set[str] = set()  # the fresh session's ids of those that were
        self._last_replayed: str | None = None  # the caller's id of the last item replayed
        self._drain_id: str | None = None  # the fresh session's id of it, once retrieved
        self._drained = False  # its retrieve was answered: nothing of the set-up is to come
        # The old upstream's barrier (the event id of its retrieve) while its answer is awaited,
        # and every barrier whose answer is still to come (an abandoned rotation's too): those
        # answers are the rotation's, never the caller's.
        self.barrier: str | None = None
        self.barriers: set[str] = set()
        self._config_confirmed = False
        self._textified_next: set[str] = set()
        self._renamed_next: dict[str, str] = {}
        self._renamed_back_next: dict[str, str] = {}
        self._due_reached = False
        self._opened_at = 0.0

    # ------------------------------------------------------------------ views

    @property
    def next_deadline(self) -> float | None:
        if self.phase is Phase.IDLE:
            return None if self.due_at is None else self.due_at - self.prewarm
        if self.phase is Phase.OPEN:
            return None if self._due_reached else self.due_at
        return self._ready_by

    def wants_open(self, now: float) -> bool:
        """Time to open the fresh leg (`prewarm` before the rotation is due)."""
        return (
            self.phase is Phase.IDLE
            and self.due_at is not None
            and now >= self.due_at - self.prewarm
        )

    def ready_to_replay(self, now: float) -> bool:
        """The fresh leg is open and the rotation due: at the next idle moment it replays."""
        if self.phase is Phase.OPEN and self.due_at is not None and now >= self.due_at:
            self._due_reached = True
        return self.phase is Phase.OPEN and self._due_reached

    # ------------------------------------------------------------------ the current leg

    def observe(self, kind: str, event: dict[str, Any], now: float) -> bool:
        """An event of the current upstream (parsed). Returns whether it changes what a fresh
        session would be given, while one is being prepared (the rotation is then abandoned
        by the core)."""
        if kind in ("session.created", "session.updated"):
            session = event.get("session")
            if isinstance(session, dict):
                self.config = ga.updatable_session(session)
                self.manual_turns, self._auto_response = _turn_detection(session)
                if kind == "session.created" and not self.session_ids:
                    self.session_ids.append(_upstream_id(session.get("id")))
                    self.due_at = now + self.rotate_after
        elif kind in ("conversation.item.added", "conversation.item.created"):
            item = event.get("item")
            self.conversation.added(item, event.get("previous_item_id"))
            if self.turn_pending == "item":
                self.turn_pending = None
            if kind == "conversation.item.added" and isinstance(item, dict):
                self.unfinished.add(item.get("id"))  # type: ignore[arg-type]
        elif kind in ("conversation.item.done", "conversation.item.retrieved"):
            item = event.get("item")
            self.conversation.replaced(item)
            if kind == "conversation.item.done" and isinstance(item, dict):
                self.unfinished.discard(item.get("id"))  # type: ignore[arg-type]
        elif kind == "conversation.item.deleted":
            self.conversation.deleted(event.get("item_id"))
            self.unfinished.discard(event.get("item_id"))  # type: ignore[arg-type]
        elif kind == "conversation.item.truncated":
            if isinstance(event.get("item_id"), str):
                self.conversation.truncated.add(event["item_id"])
                self.conversation.cut(event["item_id"], event.get("content_index"))
        elif kind == "conversation.item.input_audio_transcription.completed" or kind in (
            "response.output_audio_transcript.done",
            "response.audio_transcript.done",
        ):
            self.conversation.transcribed(
                event.get("item_id"), event.get("content_index"), event.get("transcript")
            )
        elif kind == "response.created":
            response = event.get("response")
            if isinstance(response, dict) and isinstance(response.get("id"), str):
                self.responses.add(response["id"])
                conversation_id = response.get("conversation_id")
                if self.conversation_id is None and isinstance(conversation_id, str):
                    self.conversation_id = conversation_id
            self.turn_pending = None
        elif kind == "response.done":
            response = event.get("response")
            if isinstance(response, dict):
                self.responses.discard(response.get("id"))  # type: ignore[arg-type]
            output = response.get("output") if isinstance(response, dict) else None
            for item in output if isinstance(output, list) else ():
                if not isinstance(item, dict) or item.get("id") not in self.conversation.truncated:
                    self.conversation.replaced(item)  # a reply cut while it streamed stays cut
            self.unfinished.clear()
        elif kind == "input_audio_buffer.speech_started":
            self.speaking = True
        elif kind == "input_audio_buffer.committed":
            self.speaking = self.buffered = False
            self.turn_pending = "response" if self._auto_response else "item"
        elif kind == "input_audio_buffer.cleared":
            self.speaking = self.buffered = False
        return self.holding and kind in CHANGING_TYPES

    # ------------------------------------------------------------------ the steps

    def open(self, now: float) -> list[RotationAction]:
        """Open the fresh leg ahead of time: the session goes on meanwhile."""
        self.phase = Phase.OPENING
        self._ready_by = now + self.ready_timeout
        self._fresh_id = None
        self._awaiting = {}
        self._config_confirmed = False
        self._due_reached = False
        return [OpenFresh()]

    def hold(self, kind: str, payload: Any) -> None:
        """Keep an input of the core's for after the rotation (`caller`, `submit`, `upstream`)."""
        self._held.append((kind, payload))

    def take_held(self) -> list[tuple[str, Any]]:
        held, self._held = self._held, []
        return held

    def attached(self, now: float) -> list[RotationAction]:
        """The fresh leg is open; it waits for the rotation to be due and the session idle."""
        if self.phase is not Phase.OPENING:
            return [CloseFresh(detail="no rotation is under way")]
        self.phase = Phase.OPEN
        self._ready_by = None
        self._opened_at = now  # the fresh session's age counts from here
        return []

    def replay(self, now: float) -> list[RotationAction]:
        """The session is idle: hold its inputs, give the fresh session the configuration and
        the conversation."""
        self.phase = Phase.REPLAYING
        self.holding = True
        self._ready_by = now + self.ready_timeout
        update = {
            "type": "session.update",
            "event_id": self._new_event_id(),
            "session": self.config,
        }
        actions: list[RotationAction] = [ToFresh(frame=events.dumps(update))]
        previous: str | None = None
        self._textified_next = set(self.textified)
        self._renamed_next, self._renamed_back_next = {}, {}
        self._acknowledged_ids, self._last_replayed, self._drain_id = set(), None, None
        plain = self.failures >= PLAIN_AFTER_FAILURES
        for item, spoken in self.conversation.replay(plain=plain):
            create: dict[str, Any] = {
                "type": "conversation.item.create",
                "event_id": self._new_event_id(),
                "item": item,
            }
            if previous is not None:
                create["previous_item_id"] = previous
            self._awaiting[item["id"]] = _kind(item)
            self._last_replayed = item["id"]
            if spoken and item.get("role") == "assistant":
                self._textified_next.add(item["id"])
            previous = item["id"]
            actions.append(ToFresh(frame=events.dumps(create)))
        self._drained = self._last_replayed is None  # nothing replayed, nothing to drain
        return actions

    def barrier_frame(self) -> str:
        """The old upstream's barrier, sent to it as the replay starts (the core holds what
        would follow it): the old upstream answers in order, so once its `error` for this
        comes, it has answered every frame sent to it before (a caller's item created just
        before the hold, say). Until then the swap waits, and whatever the old upstream
        changes meanwhile abandons the rotation, as always."""
        self.barrier = self._new_event_id()
        self.barriers.add(self.barrier)
        retrieve = {
            "type": "conversation.item.retrieve",
            "event_id": self.barrier,
            "item_id": BARRIER_ITEM_ID,
        }
        return events.dumps(retrieve)

    def barrier_answered(self, event: dict[str, Any]) -> bool:
        """Whether an `error` of the session's upstream answers a barrier (it is then the
        rotation's, read here and never relayed)."""
        event_id, _, _ = events.error_fields(event)
        if event_id not in self.barriers:
            return False
        self.barriers.discard(event_id)
        if event_id == self.barrier:
            self.barrier = None
        return True

    @property
    def complete(self) -> bool:
        """The fresh session is created, configured, given every item and drained, and the
        old upstream answered its barrier: the swap may be made."""
        return (
            self.phase is Phase.REPLAYING
            and self._fresh_id is not None
            and self._config_confirmed
            and not self._awaiting
            and self._drained
            and self.barrier is None
        )

    def fresh_frame(self, frame: str | bytes, now: float) -> tuple[list[RotationAction], bool]:
        """An event of the fresh leg, while it is prepared. Returns the actions and whether
        the rotation is complete (the core then releases what it held)."""
        if self.phase not in (Phase.OPEN, Phase.REPLAYING):
            return [], False
        event = events.loads_object(frame)
        kind = event.get("type") if event is not None else None
        if kind == "error":
            _, code, message = events.error_fields(event)
            return self.failed(f"the fresh upstream answered {code}: {message}", now), False
        if kind == "session.created":
            session = event.get("session")
            self._fresh_id = _upstream_id(session.get("id") if isinstance(session, dict) else None)
        elif kind == "session.updated":
            self._config_confirmed = True
        elif kind in ACKNOWLEDGING_TYPES:
            item = event.get("item")
            if isinstance(item, dict):
                self._acknowledged(item)
            if not self._awaiting and self._drain_id is None and self._last_replayed is not None:
                return [self._drain()], False
        elif kind == "conversation.item.retrieved" and self._drain_id is not None:
            item = event.get("item")
            if isinstance(item, dict) and item.get("id") == self._drain_id:
                self._drained = True
        if not self.complete:
            return [], False
        return self.swapped(now), True

    def _acknowledged(self, item: dict[str, Any]) -> None:
        """An acknowledgement of `item` (with an upstream item id): the first for an item
        counts it; a later one (`.added` after `.created`, `.done`) is set-up and only read. An
        item of another kind than the next awaited is the upstream's own (the tool list of an
        MCP server the configuration names): it acknowledges nothing."""
        given = item.get("id")
        if not isinstance(given, str) or given in self._acknowledged_ids:
            return
        if given in self._awaiting:
            ours = given
        elif self._awaiting:
            ours = next(iter(self._awaiting))
            kind, role = _kind(item)
            expected_kind, expected_role = self._awaiting[ours]
            if (kind is not None and kind != expected_kind) or (
                role is not None and role != expected_role
            ):
                return
            # The upstream named it itself: the caller's id is mapped to the upstream's.
            self._renamed_next[ours] = given
            self._renamed_back_next[given] = ours
        else:
            return
        del self._awaiting[ours]
        self._acknowledged_ids.add(given)

    def _drain(self) -> ToFresh:
        """Every replayed item is acknowledged: a retrieve of the last one, whose answer comes
        after whatever else the upstream sends for the replay."""
        assert self._last_replayed is not None
        self._drain_id = self._renamed_next.get(self._last_replayed, self._last_replayed)
        retrieve = {
            "type": "conversation.item.retrieve",
            "event_id": self._new_event_id(),
            "item_id": self._drain_id,
        }
        return ToFresh(frame=events.dumps(retrieve))

    def swapped(self, now: float) -> list[RotationAction]:
        """The swap (`complete`): the fresh session becomes the session's upstream."""
        assert self._fresh_id is not None
        self.barriers.clear()  # the old upstream, which answered them, is closed
        self.session_ids.append(self._fresh_id)
        self.rotations += 1
        self.failures = 0
        self.textified = self._textified_next & set(self.conversation.items)
        self.renamed, self.renamed_back = self._renamed_next, self._renamed_back_next
        self.caller_types = CALLER_ITEM_TYPES
        self._idle(self._opened_at + self.rotate_after)
        return [
            SwapUpstream(session_id=self._fresh_id),
            UpstreamSessions(session_ids=tuple(self.session_ids), at=now),
        ]

    def failed(self, detail: str, now: float) -> list[RotationAction]:
        """The fresh leg could not be opened, closed, refused the replay or was too slow: keep
        the old one and try again after a backoff."""
        if self.phase is Phase.IDLE:
            return []
        delay = min(self.max_retry_delay, self.retry_delay * 2**self.failures)
        self.failures += 1
        self._idle(now + delay + self.prewarm)  # the next fresh leg is opened after `delay`
        return [CloseFresh(detail=f"rotation failed ({detail}); next attempt in {delay:g} s")]

    def abandoned(self, now: float) -> list[RotationAction]:
        """The old upstream's conversation moved while the fresh one was prepared."""
        self._idle(now + ABANDONED_RETRY_DELAY)
        return [CloseFresh(detail="the conversation changed while the rotation was prepared")]

    def expired(self, now: float) -> bool:
        """Opening, or replaying, for longer than `ready_timeout`."""
        return self._ready_by is not None and now >= self._ready_by

    def _idle(self, due_at: float) -> None:
        self.phase = Phase.IDLE
        self.holding = False
        self.due_at = due_at
        self._ready_by = None
        self._awaiting = {}
        self._last_replayed = self._drain_id = None
        self.barrier = None  # an answer still to come is read and dropped (`barriers`)

    # ------------------------------------------------------------------ ids

    def caller_event(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """A caller's item event after a rotation: its ids translated to the upstream's, or
        None for a truncate the relay answers itself (`truncated_answer`)."""
        kind = event.get("type")
        item_id = event.get("item_id")
        if kind == "conversation.item.truncate" and item_id in self.textified:
            end = event.get("audio_end_ms")
            if isinstance(end, int) and not isinstance(end, bool) and end >= 0:
                self.conversation.truncated.add(item_id)
                return None
        if not self.renamed:
            return event
        if isinstance(item_id, str) and item_id in self.renamed:
            event["item_id"] = self.renamed[item_id]
        previous = event.get("previous_item_id")
        if isinstance(previous, str) and previous in self.renamed:
            event["previous_item_id"] = self.renamed[previous]
        return event

    def truncated_answer(self, event: dict[str, Any]) -> dict[str, Any]:
        """What the relay answers to a truncate of an item that is text upstream: what the
        service would have answered."""
        return {
            "type": "conversation.item.truncated",
            "event_id": self._new_event_id(),
            "item_id": event.get("item_id"),
            "content_index": event.get("content_index", 0),
            "audio_end_ms": event.get("audio_end_ms"),
        }

    def outward(self, event: dict[str, Any], public_session_id: str | None) -> bool:
        """An upstream event on its way to the caller after a rotation: the caller's item ids,
        the public session id and conversation id put back. Returns whether anything changed."""
        changed = False
        response = event.get("response")
        if (
            isinstance(response, dict)
            and public_session_id is not None
            and isinstance(response.get("conversation_id"), str)
            and self.conversation_id is not None
            and response["conversation_id"] != self.conversation_id
        ):
            response["conversation_id"] = self.conversation_id
            changed = True
        session = event.get("session")
        if (
            isinstance(session, dict)
            and public_session_id is not None
            and "id" in session
            and session["id"] != public_session_id
        ):
            session["id"] = public_session_id
            changed = True
        if not self.renamed_back:
            return changed
        back = self.renamed_back
        for holder in (event, event.get("item")):
            if not isinstance(holder, dict):
                continue
            for key in ("item_id", "previous_item_id", "id"):
                value = holder.get(key)
                if holder is event and key == "id":
                    continue
                if isinstance(value, str) and value in back:
                    holder[key] = back[value]
                    changed = True
        return changed


def _turn_detection(session: dict[str, Any]) -> tuple[bool, bool]:
    """Whether the session's turn detection is off (GA `audio.input.turn_detection`, or the
    beta shape's `turn_detection`, given as null), and whether a commit starts a response
    (turn detection on, `create_response` not false)."""
    audio = session.get("audio")
    given = audio.get("input") if isinstance(audio, dict) else None
    holder = given if isinstance(given, dict) and "turn_detection" in given else session
    detection = holder.get("turn_detection", {})
    if "turn_detection" in holder and detection is None:
        return True, False
    creates = not isinstance(detection, dict) or detection.get("create_response") is not False
    return False, creates


def _kind(item: dict[str, Any]) -> tuple[Any, Any]:
    """An item's type and, for a message, its role (None where not given)."""
    return item.get("type"), item.get("role")


def _upstream_id(value: Any) -> str:
    if isinstance(value, str) and 0 < len(value) <= MAX_UPSTREAM_ID_CHARS:
        return value
    return "(unnamed)"


# ---------------------------------------------------------------------------- the core's side


class _Everything:
    """Every event type: once an item id is mapped, the core parses every upstream event."""

    def __contains__(self, kind: object) -> bool:
        return True


class Rotator:
    """The relay core's rotation: a `Rotation` and what the core must do for it. The core
    calls it at a few points (an upstream event parsed, the end of an upstream frame, a
    caller frame, an operator's request or note, a tick) and the actor gives it the fresh
    leg's inputs (`fresh_attached`, `fresh_failed`, `fresh_frame`, `fresh_closed`)."""

    def __init__(self, core: Any, rotation: Rotation) -> None:
        self.core = core
        self.state = rotation
        self._abandon = False
        self._translated = False  # the event in hand had upstream item ids put back

    @property
    def holding(self) -> bool:
        return self.state.holding

    @property
    def next_deadline(self) -> float | None:
        return self.state.next_deadline

    # ------------------------------------------------------------------ from the core

    def upstream_event(self, kind: str, event: dict[str, Any], now: float) -> bool:
        """A parsed event of the current upstream (before the core acts on it): the caller's
        item ids put back first, so the core and the conversation see the caller's. Returns
        whether it is the answer to a barrier (the core then only calls `upstream_done`)."""
        if kind == "error" and self.state.barriers and self.state.barrier_answered(event):
            return True
        self._translated = bool(self.state.renamed_back) and self.state.outward(event, None)
        if kind in OBSERVED_TYPES and self.state.observe(kind, event, now):
            self._abandon = True
        return False

    def outward(self, event: dict[str, Any], frame: str) -> str:
        """The frame for the caller, with the caller's ids, after a rotation."""
        translated, self._translated = self._translated, False
        if self.state.rotations and self.state.outward(event, self.core.session_id):
            translated = True
        return events.dumps(event) if translated else frame

    def upstream_done(self, now: float) -> list[Any]:
        """After a parsed upstream event: abandon a rotation the event spoiled, or start one
        that is due now that the session may be idle."""
        if self._abandon:
            self._abandon = False
            if self.state.holding:
                return [*self.state.abandoned(now), *self._release(now)]
        if self.state.holding and self.state.complete:  # the barrier's answer came last
            return self._swap(self.state.swapped(now), now)
        return self._poll(now)

    def caller_frame(self, frame: str | bytes) -> list[Any] | None:
        """A caller frame: held during a rotation; after one, an item event with its ids
        translated, or a truncate answered. None: the core goes on as usual."""
        state = self.state
        if state.holding:
            state.hold("caller", frame)
            return []
        if type(frame) is bytes or not (state.caller_types or state.manual_turns):
            return None
        kind = events.peek_type(frame)
        if kind == "input_audio_buffer.append":
            state.buffered = True
        if kind not in state.caller_types:
            return None
        event = events.loads_object(frame)
        if event is None:
            return None
        before = events.dumps(event)
        translated = self.state.caller_event(event)
        if translated is None:
            answer = self.state.truncated_answer(event)
            return [_relay().ToCaller(frame=events.dumps(answer))]
        after = events.dumps(translated)
        return None if after == before else [_relay().ToUpstream(frame=after)]

    def submit(self, stored: Any) -> bool:
        """An operator's request during a rotation: held (True), submitted once it is over."""
        if self.state.holding:
            self.state.hold("submit", stored)
            return True
        return False

    def held_frames(self, actions: list[Any]) -> list[Any]:
        """The frames for the upstream among `actions` are held during a rotation (a note)."""
        if not self.state.holding:
            return actions
        to_upstream = _relay().ToUpstream
        for action in actions:
            if type(action) is to_upstream:
                self.state.hold("upstream", action.frame)
        return [action for action in actions if type(action) is not to_upstream]

    def tick(self, now: float) -> list[Any]:
        if self.state.expired(now):
            return self._failed(f"not ready within {self.state.ready_timeout:g} s", now)
        return self._poll(now)

    # ------------------------------------------------------------------ from the actor

    def fresh_attached(self, *, now: float) -> list[Any]:
        self.core.deadline_moved()
        if self.core.ended is not None:
            return [CloseFresh(detail="the session has ended")]
        return [*self.state.attached(now), *self._poll(now)]

    def fresh_failed(self, detail: str, *, now: float) -> list[Any]:
        self.core.deadline_moved()
        return self._failed(f"could not connect: {detail}", now)

    def fresh_frame(self, frame: str | bytes, *, now: float) -> list[Any]:
        if self.core.ended is not None:
            return []
        self.core.deadline_moved()
        actions, done = self.state.fresh_frame(frame, now)
        if done:
            return self._swap(actions, now)
        if any(type(action) is CloseFresh for action in actions):
            return [*actions, *self._release(now)]
        return list(actions)

    def fresh_closed(self, code: int, reason: str, *, now: float) -> list[Any]:
        self.core.deadline_moved()
        return self._failed(f"the fresh upstream closed ({code} {reason})".strip(), now)

    # ------------------------------------------------------------------ internals

    def _poll(self, now: float) -> list[Any]:
        """Open the fresh leg when it is time; replay when it is open, the rotation due and
        the session idle (until then, what is queued waits for the fresh upstream)."""
        core, state = self.core, self.state
        if core.ended is not None or state.holding:
            return []
        actions: list[Any] = []
        if state.wants_open(now):
            core.deadline_moved()
            actions += state.open(now)
        if state.ready_to_replay(now):
            core.deadline_moved()
            core.sequencer.held = True
            if (
                core.between_responses
                and not state.speaking
                and state.turn_pending is None
                and not state.unfinished
                and not state.responses
                and not (state.manual_turns and state.buffered)
                and not core.tools.has_pending  # no approval awaits an answer
            ):
                actions += state.replay(now)
                actions.append(_relay().ToUpstream(frame=state.barrier_frame()))
        return actions

    def _swap(self, swapped: list[RotationAction], now: float) -> list[Any]:
        """The swap's actions, then what was held goes to the fresh upstream. With item ids
        mapped, every upstream event is read from now on, to translate them."""
        parsed = _relay().PARSED_TYPES | OBSERVED_TYPES
        self.core._parsed = _Everything() if self.state.renamed else parsed
        return [*swapped, *self._release(now)]

    def _failed(self, detail: str, now: float) -> list[Any]:
        if self.core.ended is not None:
            return []
        actions = list(self.state.failed(detail, now))
        return [*actions, *self._release(now)] if actions else []

    def _release(self, now: float) -> list[Any]:
        """After the swap, or without one: the queue goes on, then what was held, in order."""
        core, relay = self.core, _relay()
        actions: list[Any] = list(core.resume_queue(now=now))
        for kind, payload in self.state.take_held():
            if kind == "caller":
                actions += core.caller_frame(payload, now=now)
            elif kind == "submit":
                actions += core.submit(payload, now=now)
            else:
                actions.append(relay.ToUpstream(frame=payload))
        return actions


def _relay() -> Any:
    """The relay core's module (it imports this one, so it is looked up when needed)."""
    from apps.realtime import relay

    return relay
