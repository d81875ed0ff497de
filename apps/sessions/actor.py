"""SessionActor: one live session, one task, one mailbox.

Everything that changes a session's state — the caller's frames, the upstream's frames,
timers, and operator messages (requests, cancels, notes, interrupts) — is put on the mailbox and handled by one task in
arrival order. The sequencer therefore needs no locks, and the upstream and caller sockets
each have exactly one writer, which keeps frames in order.

Hot path: an upstream frame whose type (read from the frame's first bytes, see
`events.peek_type`) needs no attention is forwarded to the caller as received, without being
parsed. Only session, response lifecycle and error events are parsed; while an operator's
out-of-band response is streaming, response events are parsed too so that its frames can be
kept from the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from channels.layers import get_channel_layer
from django.conf import settings

from apps.realtime import events
from apps.realtime.overrides import effective_instructions, upstream_response
from apps.realtime.sequencer import (
    OC_REQUEST_KEY,
    ErrorClaimed,
    Request,
    RequestStatus,
    ResponseObserved,
    SendEvent,
    Sequencer,
    SequencerError,
    StatusChanged,
)
from apps.realtime.transcript import DELTA_TYPES, ITEM_TYPES, Transcript
from apps.sessions import clock, groups, records
from apps.sessions.history import UpdateRow
from apps.sessions.history import writer as history
from apps.sessions.housekeeping import housekeeping
from apps.sessions.models import LiveSession
from apps.sessions.process import PROCESS_ID
from apps.sessions.upstream import open_upstream

log = logging.getLogger(__name__)

# Mailbox message kinds.
CALLER_FRAME = "caller.frame"
CALLER_CLOSED = "caller.closed"
UPSTREAM_FRAME = "upstream.frame"
UPSTREAM_CLOSED = "upstream.closed"
OPERATOR = "operator"
TICK = "tick"
FLUSH = "flush"
STALL_CHECK = "stall.check"

# Watchers' updates (transcript deltas) are sent at most this often per session.
FLUSH_INTERVAL = 0.05
# A watcher that has not renewed its watch in this long is gone (its socket died unseen).
WATCH_TTL = 90.0
# Finished requests a session keeps whole (for late events naming them); older ones are
# forgotten every FORGET_EVERY finished requests, so a long session's memory stays flat. Of
# the latest FORGOTTEN_IDS forgotten, the id and final status stay (untracked by the garbage
# collector): a duplicate ping or a pickup that read the table before the history writer
# caught up is still known, and so is a late cancel.
REMEMBER_FINISHED = 8
FORGET_EVERY = 8
FORGOTTEN_IDS = 64

# Upstream event types the actor parses; every other type is forwarded untouched (and the
# transcript's deltas are parsed too while someone watches the session).
WATCHED_TYPES = (
    frozenset({"session.created", "session.updated", "response.created", "response.done", "error"})
    | ITEM_TYPES
)
OPERATOR_ORIGINS = frozenset({"console", "api"})
# Close codes that may be passed on to the caller as they are.
_PASSABLE_CLOSE_CODES = frozenset({1000, 1001, 1008, 1009, 1011, 1012, 1013, 1014})
_RESERVED_METADATA_ERROR = (
    f"The relay reserves the metadata key '{OC_REQUEST_KEY}' and so allows at most 15 pairs."
)


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


class Mailbox:
    """A FIFO with one reader: a deque and at most one waiting future.

    asyncio.Queue does more per item than the relay can afford on every frame (loop checks,
    a waiter deque, unfinished-task counting); the actor is its only reader.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[tuple[str, Any]] = deque()
        self._waiter: asyncio.Future | None = None

    def put(self, item: tuple[str, Any]) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def get(self) -> tuple[str, Any]:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


class Caller(Protocol):
    """The caller's socket, as the actor sees it (the consumer implements it)."""

    async def send_text(self, text: str) -> None: ...

    async def close_with(self, code: int, reason: str) -> None: ...


@dataclass(slots=True)
class _RequestInfo:
    origin: str
    out_of_band: bool
    # What the caller gave as response.metadata (restored on the way back; None = absent).
    caller_metadata: Any = None
    # An operator's text, composed with the session's instructions when the request is sent.
    append_instructions: str | None = None
    sent_instructions: str | None = None
    requested_by: str = ""
    # What the requester asked for, as operators see it.
    instructions: str | None = None
    metadata: Any = None


class SessionActor:
    def __init__(
        self,
        *,
        caller: Caller,
        model: str,
        connected_by: str,
        upstream_headers: Mapping[str, str] | None = None,
        opener: Callable[..., Awaitable[Any]] = open_upstream,
    ) -> None:
        self.key = uuid.uuid4()
        self.model = model
        self.connected_by = connected_by
        self.upstream_id: str | None = None
        self.session_instructions = ""
        self.mailbox = Mailbox()
        self.sequencer = Sequencer(
            new_request_id=new_request_id, send_timeout=settings.OC_SEND_TIMEOUT
        )
        self._caller = caller
        self._opener = opener
        self._upstream_headers = dict(upstream_headers or {})
        self._upstream: Any = None
        self._requests: dict[str, _RequestInfo] = {}
        self._forgotten: dict[str, str] = {}  # request id → final status, oldest first
        # Operator out-of-band responses: their events go to operators, never to the caller.
        self._hidden_responses: set[str] = set()
        # event_ids of the relay's own client events (notes): errors about them are not the caller's.
        self._own_event_ids: set[str] = set()
        # Messages for the operators watching this session, sent after each mailbox message.
        self._outbox: list[dict[str, Any]] = []
        # Operators watching: their console socket's channel → (username, watch expires at).
        self._watchers: dict[str, tuple[str, float]] = {}
        self.transcript = Transcript()
        self._flush: asyncio.TimerHandle | None = None
        # Upstream frames so far (counted by the reader) and at the last stall check.
        self._frames = 0
        self._frames_checked = -1
        self._expired = False  # the upstream said session_expired; its close follows
        self._finished_since_forget = 0
        self._stall_timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None
        self._reader: asyncio.Task | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._session_deadline: float | None = None
        self._connecting = True
        self.end_status: str | None = None
        self.end_reason: str | None = None

    # ------------------------------------------------------------------ outside interface

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"session-actor-{self.key}")

    def caller_frame(self, text: str) -> None:
        self.mailbox.put((CALLER_FRAME, text))

    def operator_message(self, message: dict[str, Any]) -> None:
        """A `session.*` message from the session's group (see `groups`), or from the pickup."""
        self.mailbox.put((OPERATOR, message))

    def caller_closed(self) -> None:
        if self._connecting and self._task is not None:
            # Nothing is flowing yet; stop waiting for the upstream.
            self._task.cancel()
        self.mailbox.put((CALLER_CLOSED, None))

    async def wait_finished(self, timeout: float = 5.0) -> None:
        if self._task is None:
            return
        # asyncio.wait neither raises the task's outcome (it may have been cancelled while
        # connecting) nor cancels it on timeout.
        _, pending = await asyncio.wait({self._task}, timeout=timeout)
        if pending:
            log.warning("session actor %s did not stop in %.1fs; cancelling", self.key, timeout)
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=1.0)

    # ------------------------------------------------------------------ the task

    async def _run(self) -> None:
        housekeeping().add(self)  # heartbeats from now on; requests once the session is named
        history.submit(
            records.session_opened(
                key=self.key,
                model=self.model,
                connected_by=self.connected_by,
                process_id=PROCESS_ID,
                at=clock.now(),
            )
        )
        try:
            try:
                self._upstream = await self._opener(
                    model=self.model, extra_headers=self._upstream_headers
                )
            except asyncio.CancelledError:
                self._end(LiveSession.Status.ENDED, "caller_closed")
                raise
            except Exception as exc:  # refused, unreachable, timed out
                log.warning("upstream connection failed for %s: %s", self.key, exc)
                await self._tell_caller_and_close(
                    1011, "upstream_unavailable", f"Could not connect to the upstream: {exc}"
                )
                self._end(LiveSession.Status.FAILED, "upstream_unavailable")
                return
            self._connecting = False
            self._session_deadline = clock.now() + settings.OC_UPSTREAM_CONNECT_TIMEOUT
            self._reader = asyncio.create_task(self._read_upstream(), name=f"upstream-{self.key}")
            self._rearm_timer()
            self._arm_stall_check()
            await self._loop()
        finally:
            await self._cleanup()

    async def _loop(self) -> None:
        get = self.mailbox.get
        while True:
            kind, payload = await get()
            if kind is UPSTREAM_FRAME:
                await self._on_upstream_frame(payload)
            elif kind is CALLER_FRAME:
                await self._on_caller_frame(payload)
            elif kind is OPERATOR:
                await self._on_operator(payload)
            elif kind is TICK:
                await self._on_tick()
            elif kind is FLUSH:
                self._on_flush()
            elif kind is STALL_CHECK:
                await self._on_stall_check()
            elif kind is UPSTREAM_CLOSED:
                await self._on_upstream_closed(*payload)
                return
            elif kind is CALLER_CLOSED:
                self._end(LiveSession.Status.ENDED, "caller_closed")
                return
            if self._outbox:
                await self._publish()
            if self.end_status is not None:
                return
            if self._finished_since_forget >= FORGET_EVERY:
                self._forget_finished()

    async def _read_upstream(self) -> None:
        from websockets.exceptions import ConnectionClosed

        put = self.mailbox.put
        recv = self._upstream.recv_bytes
        try:
            while True:
                put((UPSTREAM_FRAME, await recv()))
                self._frames += 1
        except ConnectionClosed as exc:
            received = exc.rcvd
            put((UPSTREAM_CLOSED, (received.code if received else 1006, received.reason if received else "")))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the socket failed in some other way
            log.warning("upstream read failed for %s: %r", self.key, exc)
            put((UPSTREAM_CLOSED, (1006, "")))

    async def _cleanup(self) -> None:
        housekeeping().discard(self)
        if self._timer is not None:
            self._timer.cancel()
        if self._flush is not None:
            self._flush.cancel()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
        if self.end_status is None:
            self._end(LiveSession.Status.FAILED, "relay_error")
        for action in self.sequencer.closed("session_ended", now=clock.now(), detail=self.end_reason):
            self._record(action)  # closing fails requests; it sends nothing
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._upstream is not None:
            # Closing a broken socket can fail; there is nothing more to do about it then.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._upstream.close(), 1.0)
        history.submit(
            records.session_ended(
                key=self.key, status=self.end_status, reason=self.end_reason or "", at=clock.now()
            )
        )
        if self.upstream_id is not None:
            self._on_flush()
            self._outbox.append(
                {
                    "type": groups.CONSOLE_ENDED,
                    "session_id": self.upstream_id,
                    "status": self.end_status,
                    "reason": self.end_reason or "",
                }
            )
            await self._publish()

    def _end(self, status: str, reason: str) -> None:
        if self.end_status is None:
            self.end_status, self.end_reason = status, reason

    # ------------------------------------------------------------------ upstream → caller

    async def _on_upstream_frame(self, data: bytes | str) -> None:
        kind = events.peek_type(data)
        text = data if isinstance(data, str) else data.decode("utf-8", "replace")
        if (
            kind is not None
            and kind not in WATCHED_TYPES
            and not self._hidden_responses
            and (not self._watchers or kind not in DELTA_TYPES)
        ):
            await self._caller.send_text(text)
            return
        try:
            event = json.loads(text)
        except ValueError:
            log.warning("upstream sent a frame that is not JSON on %s; relayed as is", self.key)
            event = None
        if not isinstance(event, dict):
            await self._caller.send_text(text)
            return
        kind = event.get("type")
        forward: str | None = text
        if kind == "response.created" or kind == "response.done":
            forward = await self._on_response_event(kind, event, forward)
        elif kind == "error":
            forward = await self._on_error(event, forward)
        elif kind == "session.created" or kind == "session.updated":
            self._on_session_event(kind, event)
        elif kind in ITEM_TYPES:
            self._on_item_event(kind, event)
        else:
            hidden = bool(self._hidden_responses) and self._is_hidden(event)
            if hidden:
                forward = None
            if kind in DELTA_TYPES and self._watchers:
                self._on_delta(event, oob=hidden)
        if forward is not None:
            await self._caller.send_text(forward)
        else:
            self._outbox.append(
                {"type": groups.CONSOLE_EVENT, "session_id": self.upstream_id, "event": text}
            )
        self._rearm_timer()

    def _on_session_event(self, kind: str, event: dict) -> None:
        session = event.get("session")
        if not isinstance(session, dict):
            return
        instructions = session.get("instructions")
        if isinstance(instructions, str):
            self.session_instructions = instructions
        if kind == "session.created" and self.upstream_id is None:
            session_id = session.get("id")
            self.upstream_id = session_id if isinstance(session_id, str) else f"sess_{self.key.hex}"
            self._session_deadline = None
            history.submit(
                records.session_identified(
                    key=self.key,
                    upstream_id=self.upstream_id,
                    instructions=self.session_instructions,
                    at=clock.now(),
                )
            )
        elif isinstance(instructions, str):
            history.submit(records.session_updated(key=self.key, instructions=instructions))

    async def _on_response_event(self, kind: str, event: dict, raw: str) -> str | None:
        response = event.get("response")
        if not isinstance(response, dict) or not isinstance(response.get("id"), str):
            return raw
        response_id = response["id"]
        metadata = response.get("metadata")
        tag = metadata.get(OC_REQUEST_KEY) if isinstance(metadata, dict) else None
        tag = tag if isinstance(tag, str) else None
        now = clock.now()
        if kind == "response.created":
            await self._apply(
                self.sequencer.response_created(response_id=response_id, oc_request=tag, now=now)
            )
        else:
            details = {
                "output_text": events.response_output_text(response),
                "usage": response.get("usage"),
            }
            status = response.get("status")
            await self._apply(
                self.sequencer.response_done(
                    response_id=response_id,
                    status=status if isinstance(status, str) else "",
                    now=now,
                    details=details,
                )
            )
        hidden = response_id in self._hidden_responses
        if kind == "response.done":
            self._hidden_responses.discard(response_id)
            self.transcript.response_done(response, oob=hidden)
            self._schedule_flush()
        if hidden:
            return None
        if tag is None:
            return raw  # the server's own response: nothing of ours in it
        info = self._requests.get(tag)
        if info is None or info.origin in OPERATOR_ORIGINS:
            # An operator's response: its metadata and instructions are the operator's.
            response["metadata"] = None
            response.pop("instructions", None)
        else:
            response["metadata"] = info.caller_metadata
        return events.dumps(event)

    async def _on_error(self, event: dict, raw: str) -> str | None:
        event_id, code, message = events.error_fields(event)
        if code == "session_expired":
            # The upstream ends the session (a close 1001 follows): that is the caller's news,
            # not the failure of whichever request happens to be outstanding.
            self._expired = True
            return raw
        if event_id is not None and event_id in self._own_event_ids:
            self._own_event_ids.discard(event_id)
            log.warning("upstream refused the relay's event %s on %s: %s", event_id, self.key, message)
            return None
        actions = self.sequencer.error(event_id=event_id, code=code, message=message, now=clock.now())
        await self._apply(actions)
        # An error about none of the sequencer's events is the caller's: it goes through.
        claims = [a for a in actions if type(a) is ErrorClaimed]
        return raw if not claims or claims[0].forward_to_caller else None

    def _is_hidden(self, event: dict) -> bool:
        response_id = event.get("response_id")
        if response_id is None and isinstance(event.get("response"), dict):
            response_id = event["response"].get("id")
        return response_id in self._hidden_responses

    # ------------------------------------------------------------------ transcript

    def _on_item_event(self, kind: str, event: dict) -> None:
        if kind == "conversation.item.done":
            item = event.get("item")
            if isinstance(item, dict):
                self.transcript.item_done(item)
        else:  # the caller's speech, transcribed
            item_id, text = event.get("item_id"), event.get("transcript")
            if isinstance(item_id, str) and isinstance(text, str):
                self.transcript.transcription(item_id, text)
        self._schedule_flush()

    def _on_delta(self, event: dict, *, oob: bool) -> None:
        item_id, delta = event.get("item_id"), event.get("delta")
        if isinstance(item_id, str) and isinstance(delta, str):
            response_id = event.get("response_id")
            self.transcript.delta(
                item_id=item_id,
                response_id=response_id if isinstance(response_id, str) else None,
                text=delta,
                oob=oob,
            )
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._flush is None and self.transcript.has_changes:
            self._flush = asyncio.get_running_loop().call_later(
                FLUSH_INTERVAL, self.mailbox.put, (FLUSH, None)
            )

    def _on_flush(self) -> None:
        self._flush = None
        entries = self.transcript.drain()
        if entries and self._watchers:
            self._outbox.append(
                {"type": groups.CONSOLE_TRANSCRIPT, "session_id": self.upstream_id, "entries": entries}
            )

    async def _on_upstream_closed(self, code: int, reason: str) -> None:
        normal = code in (1000, 1001)
        caller_code = code if code in _PASSABLE_CLOSE_CODES or 3000 <= code <= 4999 else 1011
        why = reason or ("upstream closed the session" if normal else f"upstream connection lost ({code})")
        if self._expired:
            self._end(LiveSession.Status.ENDED, "session_expired")
        else:
            self._end(LiveSession.Status.ENDED if normal else LiveSession.Status.FAILED, f"upstream_closed: {why}")
        await self._close_caller(caller_code, why)

    # ------------------------------------------------------------------ caller → upstream

    async def _on_caller_frame(self, text: str | bytes) -> None:
        if isinstance(text, bytes):
            await self._reply_error(
                code="invalid_json",
                message="Binary frames are not supported; send each event as a JSON text frame.",
            )
            return
        try:
            event = json.loads(text)
        except ValueError as exc:
            await self._reply_error(
                code="invalid_json", message=f"The frame is not valid JSON: {exc}."
            )
            return
        if not isinstance(event, dict):
            await self._reply_error(
                code="invalid_type",
                message=f"Expected an event object, but got {type(event).__name__} instead.",
            )
            return
        if event.get("type") == "response.create":
            await self._on_caller_response_create(event)
            return
        await self._send_upstream(text)

    async def _on_caller_response_create(self, event: dict) -> None:
        event_id = event.get("event_id")
        if not isinstance(event_id, str) or not event_id:
            event_id = events.new_event_id("event_relay")
        response = event.get("response", {})
        if not isinstance(response, dict):
            kind = "null" if response is None else type(response).__name__
            await self._reply_error(
                code="invalid_type",
                param="response",
                message=f"Invalid type for 'response': expected an object, but got {kind} instead.",
                client_event_id=event_id,
            )
            return
        metadata = response.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            await self._reply_error(
                code="invalid_type",
                param="response.metadata",
                message="Invalid type for 'response.metadata': expected an object.",
                client_event_id=event_id,
            )
            return
        if isinstance(metadata, dict) and (OC_REQUEST_KEY in metadata or len(metadata) >= 16):
            await self._reply_error(
                code="invalid_value",
                param="response.metadata",
                message=_RESERVED_METADATA_ERROR,
                client_event_id=event_id,
            )
            return
        request = Request(id=new_request_id(), origin="caller", event_id=event_id, response=response)
        self._requests[request.id] = _RequestInfo(
            origin="caller",
            out_of_band=request.out_of_band,
            caller_metadata=metadata,
            requested_by=self.connected_by,
            instructions=response.get("instructions") if isinstance(response.get("instructions"), str) else None,
            metadata=metadata,
        )
        history.submit(
            records.request_created(
                key=self.key,
                request_id=request.id,
                origin="caller",
                event_id=event_id,
                response=response,
                instructions_mode="replace",
                requested_by=self.connected_by,
                at=clock.now(),
            )
        )
        await self._apply(self.sequencer.submit(request, now=clock.now()))
        self._rearm_timer()

    async def _send_upstream(self, text: str) -> None:
        try:
            await self._upstream.send_raw(text)
        except Exception as exc:  # the reader sees the close and ends the session
            log.info("upstream send failed on %s: %r", self.key, exc)

    # ------------------------------------------------------------------ operators

    async def _on_operator(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == groups.SESSION_REQUEST:
            await self._submit_operator_request(message["request"])
            return
        if kind == groups.SESSION_CANCEL:
            reply = await self._cancel_queued(message["request_id"])
        elif kind == groups.SESSION_NOTE:
            reply = await self._add_note(message)
        elif kind == groups.SESSION_INTERRUPT:
            response_id = self.sequencer.active_response_id
            await self._apply(self.sequencer.interrupt(now=clock.now()))
            reply = {"response_id": response_id}
        elif kind == groups.SESSION_WATCH:
            await self._on_watch(message)
            return
        else:
            log.warning("unknown operator message %r on %s", kind, self.key)
            return
        reply_to = message.get("reply_to")
        if reply_to:
            try:
                await get_channel_layer().send(reply_to, {"type": groups.ACTOR_REPLY, **reply})
            except Exception as exc:  # the asker gave up; the action itself stands
                log.warning("reply to %s on %s failed: %r", kind, self.key, exc)

    async def _submit_operator_request(self, data: dict[str, Any]) -> None:
        """A stored request from the REST hook or the console (by ping or by pickup)."""
        request_id = data["id"]
        if request_id in self._requests or request_id in self._forgotten:
            return  # both pinged and picked up, or cancelled before it arrived
        text = data.get("instructions")
        mode = data.get("instructions_mode") or "append"
        response = upstream_response(metadata=data.get("metadata"), conversation=data.get("conversation"))
        info = _RequestInfo(
            origin=data.get("origin") or "api",
            out_of_band=response.get("conversation") == "none",
            requested_by=data.get("requested_by") or "",
            instructions=text,
            metadata=data.get("metadata"),
        )
        if text is not None and mode == "replace":
            response["instructions"] = info.sent_instructions = text
        elif text is not None:
            info.append_instructions = text  # composed when sent, with the instructions of then
        request = Request(
            id=request_id, origin=info.origin, event_id=events.new_event_id(), response=response
        )
        self._requests[request_id] = info
        try:
            actions = self.sequencer.submit(request, now=clock.now())
        except SequencerError as exc:  # the services validated it, so this is our bug
            log.error("sequencer refused stored request %s on %s: %s", request_id, self.key, exc)
            self._record(
                StatusChanged(
                    request_id=request_id,
                    status=RequestStatus.FAILED,
                    at=clock.now(),
                    error_code="invalid_request",
                    error_message=str(exc),
                )
            )
            return
        await self._apply(actions)
        self._rearm_timer()

    async def _cancel_queued(self, request_id: str) -> dict[str, Any]:
        """Cancel a request only if it is still queued (a sent one is interrupted instead)."""
        now = clock.now()
        info = self._requests.get(request_id)
        if info is None and request_id in self._forgotten:
            return {"status": self._forgotten[request_id]}
        if info is None:
            # Its ping was lost and the pickup has not brought it yet: it was never sent, and
            # remembering it keeps the pickup from sending it later (and a second cancel
            # hears that it is cancelled already).
            self._forgotten[request_id] = RequestStatus.CANCELLED.value
            self._record(StatusChanged(request_id=request_id, status=RequestStatus.CANCELLED, at=now))
            return {"status": RequestStatus.CANCELLED.value, "at": now}
        try:
            status = self.sequencer.status(request_id)
        except KeyError:  # refused when submitted; its record already says so
            return {"status": RequestStatus.FAILED.value}
        if status is not RequestStatus.QUEUED:
            return {"status": status.value}
        await self._apply(self.sequencer.cancel(request_id, now=now))
        if info.origin == "caller":
            # The caller's client waits for a response to its response.create; tell it why
            # none will come, as the upstream tells it of a response.create it refuses.
            await self._reply_error(
                code="response_cancelled",
                message="An operator cancelled this response.create before it was sent.",
                client_event_id=self.sequencer.get(request_id).event_id,
            )
        return {"status": RequestStatus.CANCELLED.value, "at": now}

    async def _on_watch(self, message: dict[str, Any]) -> None:
        """An operator's console starts (renews) or stops watching this session."""
        channel = message.get("channel")
        if not isinstance(channel, str):
            return
        now = clock.now()
        before = self._watcher_names()
        if message.get("watch", True):
            first = channel not in self._watchers
            self._watchers[channel] = (str(message.get("user") or ""), now + WATCH_TTL)
            if first:
                try:
                    snapshot = {"type": groups.CONSOLE_SNAPSHOT, **self.snapshot()}
                    await get_channel_layer().send(
                        channel,
                        {"type": groups.CONSOLE_FRAME, "kind": snapshot["type"], "frame": groups.browser_json(snapshot)},
                    )
                except Exception as exc:
                    log.warning("snapshot to %s failed on %s: %r", channel, self.key, exc)
        else:
            self._watchers.pop(channel, None)
        for gone in [c for c, (_, expires) in self._watchers.items() if expires < now]:
            del self._watchers[gone]
        self.transcript.recording = bool(self._watchers)
        after = self._watcher_names()
        if after != before:
            self._outbox.append({"type": groups.CONSOLE_PRESENCE, "session_id": self.upstream_id, "watchers": after})
            history.submit(UpdateRow(LiveSession, self.key, {"watchers": after}))

    def _watcher_names(self) -> list[str]:
        return sorted({name for name, _ in self._watchers.values()})

    def snapshot(self) -> dict[str, Any]:
        """What a new watcher needs before the live updates: the transcript and the state."""
        return {
            "session_id": self.upstream_id,
            "transcript": self.transcript.snapshot(),
            "watchers": self._watcher_names(),
            "active_response_id": self.sequencer.active_response_id,
            "queued": list(self.sequencer.queued_ids),
        }

    async def _add_note(self, message: dict[str, Any]) -> dict[str, Any]:
        event_id = events.new_event_id()
        self._own_event_ids.add(event_id)
        event = {
            "type": "conversation.item.create",
            "event_id": event_id,
            "item": {
                "id": message["item_id"],
                "type": "message",
                "role": message["role"],
                "content": [{"type": "input_text", "text": message["text"]}],
            },
        }
        await self._send_upstream(events.dumps(event))
        return {"ok": True, "at": clock.now()}

    async def _publish(self) -> None:
        """Send the outbox to the operators watching this session, in order. Each message is
        made into the browser's JSON here, once, whatever the number of watchers (the layer
        copies what it carries for each of them; a string costs nothing to copy)."""
        messages, self._outbox = self._outbox, []
        group = groups.watch_group(self.key)
        layer = get_channel_layer()
        for message in messages:
            frame = {"type": groups.CONSOLE_FRAME, "kind": message["type"], "frame": groups.browser_json(message)}
            try:
                await layer.group_send(group, frame)
            except Exception as exc:  # watchers miss an update; the session goes on
                log.warning("publishing to %s failed: %r", group, exc)
                return

    # ------------------------------------------------------------------ actions and timers

    async def _apply(self, actions) -> None:
        for action in actions:
            if type(action) is SendEvent:
                if action.request_id is not None:
                    info = self._requests.get(action.request_id)
                    if info is not None and info.append_instructions is not None:
                        self._compose_instructions(info, action.event)
                await self._send_upstream(events.dumps(action.event))
            else:
                self._record(action)

    def _compose_instructions(self, info: _RequestInfo, event: dict[str, Any]) -> None:
        """`append` mode: the session's instructions as last seen, then the operator's text."""
        if event.get("type") != "response.create":
            return
        sent = effective_instructions(
            session_instructions=self.session_instructions,
            text=info.append_instructions,
            mode="append",
        )
        event["response"]["instructions"] = sent
        info.sent_instructions = sent

    def _forget_finished(self) -> None:
        self._finished_since_forget = 0
        forgotten = self._forgotten
        for request_id, status in self.sequencer.forget_finished(keep=REMEMBER_FINISHED):
            self._requests.pop(request_id, None)
            forgotten[request_id] = status.value
        for request_id in list(itertools.islice(forgotten, max(0, len(forgotten) - FORGOTTEN_IDS))):
            del forgotten[request_id]

    def _record(self, action) -> None:
        """Record a status change or an observed response (other actions need no record)."""
        if type(action) is StatusChanged:
            if action.status.is_terminal:
                self._finished_since_forget += 1  # the loop forgets old ones between messages
            info = self._requests.get(action.request_id)
            if (
                action.response_id
                and info is not None
                and info.out_of_band
                and info.origin in OPERATOR_ORIGINS
                and action.status == "in_progress"
            ):
                self._hidden_responses.add(action.response_id)
            history.submit(
                records.request_status(
                    request_id=action.request_id,
                    status=action.status.value,
                    at=action.at,
                    response_id=action.response_id,
                    error_code=action.error_code,
                    error_message=action.error_message,
                    details=action.details,
                    sent_instructions=(
                        info.sent_instructions
                        if info is not None and action.status is RequestStatus.SENT
                        else None
                    ),
                )
            )
            if info is not None and (self._watchers or info.origin in OPERATOR_ORIGINS):
                self._outbox.append(
                    {
                        "type": groups.CONSOLE_REQUEST,
                        "session_id": self.upstream_id,
                        "request_id": action.request_id,
                        "origin": info.origin,
                        "requested_by": info.requested_by,
                        "instructions": info.instructions,
                        "metadata": info.metadata,
                        "conversation": "none" if info.out_of_band else "auto",
                        "status": action.status.value,
                        "at": action.at,
                        "response_id": action.response_id,
                        "error_code": action.error_code,
                        "error_message": action.error_message,
                        "sent_instructions": info.sent_instructions if action.status is RequestStatus.SENT else None,
                    }
                )
        elif type(action) is ResponseObserved:
            request = action.request
            self._requests[request.id] = _RequestInfo(origin="server", out_of_band=False)
            history.submit(
                records.request_created(
                    key=self.key,
                    request_id=request.id,
                    origin="server",
                    event_id="",
                    response={},
                    instructions_mode="replace",
                    requested_by="",
                    at=action.at,
                    status="in_progress",
                    response_id=action.response_id,
                )
            )

    async def _on_tick(self) -> None:
        now = clock.now()
        self._timer_at = None
        if self._session_deadline is not None and now >= self._session_deadline:
            self._session_deadline = None
            self._end(LiveSession.Status.FAILED, "upstream_timeout")
            await self._tell_caller_and_close(
                1011, "upstream_timeout", "The upstream did not start the session in time."
            )
            return
        await self._apply(self.sequencer.tick(now=now))
        self._rearm_timer()

    def _arm_stall_check(self) -> None:
        self._stall_timer = asyncio.get_running_loop().call_later(
            settings.OC_UPSTREAM_STALL_TIMEOUT, self.mailbox.put, (STALL_CHECK, None)
        )

    async def _on_stall_check(self) -> None:
        """A response in progress with no upstream event for a whole check interval: the
        upstream has stalled. The session cannot go on; the caller is told, and it ends."""
        busy = self.sequencer.active_response_id is not None or bool(self._hidden_responses)
        if busy and self._frames == self._frames_checked:
            timeout = settings.OC_UPSTREAM_STALL_TIMEOUT
            self._end(LiveSession.Status.FAILED, "upstream_stalled")
            await self._tell_caller_and_close(
                1011, "upstream_timeout", f"The upstream sent nothing for {timeout:g} s during a response."
            )
            return
        self._frames_checked = self._frames
        self._arm_stall_check()

    def _rearm_timer(self) -> None:
        deadline = self.sequencer.next_deadline
        if self._session_deadline is not None:
            deadline = self._session_deadline if deadline is None else min(deadline, self._session_deadline)
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            delay = max(0.0, deadline - clock.now())
            self._timer = asyncio.get_running_loop().call_later(
                delay, self.mailbox.put, (TICK, None)
            )

    # ------------------------------------------------------------------ telling the caller

    async def _reply_error(
        self,
        *,
        code: str,
        message: str,
        param: str | None = None,
        client_event_id: str | None = None,
    ) -> None:
        await self._caller.send_text(
            events.dumps(
                events.error_event(
                    code=code, message=message, param=param, client_event_id=client_event_id
                )
            )
        )

    async def _tell_caller_and_close(self, close_code: int, code: str, message: str) -> None:
        try:
            await self._caller.send_text(
                events.dumps(events.error_event(code=code, message=message, error_type="server_error"))
            )
        finally:
            await self._close_caller(close_code, message)

    async def _close_caller(self, code: int, reason: str) -> None:
        try:
            await self._caller.close_with(code, reason)
        except Exception as exc:
            log.warning("closing the caller of %s with %d failed: %r", self.key, code, exc)
