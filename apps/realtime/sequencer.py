"""The sequencer: which `response.create` goes upstream, and when. Pure, sans-I/O.

Inputs are method calls; each returns the actions for the caller (the session actor) to
perform, in order. Nothing here awaits, reads a clock (time is the `now` argument, seconds),
or touches a socket or the database. Only the standard library is imported.

State
  queue        FIFO of in-conversation requests waiting to be sent.
  outstanding  the in-conversation request whose `response.create` was sent and whose
               `response.created` has not come (at most one).
  active       the in-conversation responses in progress (ours, the caller's or the server's);
               normally at most one. While there is one, nothing in-conversation is sent.
  out of band  requests with `response.conversation == "none"`: sent at once, tracked apart;
               they never block and are never blocked by in-conversation ones.

Rules
  submit     -> `queued`; then the head is sent (`sent`) when nothing is outstanding or active
                (and no retry delay is pending). Out-of-band: `queued` then `sent` at once.
                After closed(): `queued` then `failed` (`session_ended`).
  held       -> (`held = True`) nothing in-conversation is sent until resume(); the queue
                stays as it is (an upstream leg is being replaced: the queue is the session's).
  offline    -> (`offline = True`) no upstream leg is open at all: like held, and out-of-band
                requests wait too (`queued`, in order); resume() sends them first.
  sending    -> {"type": "response.create", "event_id": E, "response": {...}}: the request's
                fields without None values, plus `metadata.oc_request = <request id>`.
  created    -> names a request of ours that was sent (`metadata.oc_request`): `in_progress`,
                no longer outstanding; a pending cancel is sent now. Names a terminal request
                (e.g. timed out): the response is tracked as active, no status changes.
                Names nothing of ours: the server's response, observed with origin `server`
                and `in_progress`; an outstanding request stays outstanding.
  done       -> the response's request takes the server's terminal status (anything unknown
                is `failed`/`unexpected_status`); when no in-conversation response remains
                active, the next head is sent. The response of a request that had already
                ended (it timed out before its `response.created`): `LateResponse`, saying
                what became of it; the request keeps its status.
  error      -> about the outstanding request (its event_id, or no event_id while one is
                outstanding): `conversation_already_has_active_response` puts it back at the
                head of the queue (`queued`); it is re-sent with the same event_id when the
                active response is done, or on tick() after `retry_delay` if no response is
                known to be active. Any other code: `failed`, slot freed, next head sent.
                About a sent out-of-band request: `failed`. About any other event the
                sequencer sent (earlier requests, its own response.cancel): claimed only.
                Every error about a sequencer event yields ErrorClaimed; `forward_to_caller`
                is true only for a caller's request and a code other than the active one.
  cancel     -> queued: `cancelled`. Sent: response.cancel once its response is created.
                In progress: response.cancel. Terminal or unknown: RequestNotCancellable.
  interrupt  -> response.cancel for the active in-conversation response, if any.
  closed     -> every request not terminal: `failed` with the reason as error code. Later
                inputs return nothing, except submit (see above).
  tick       -> a request sent `send_timeout` ago without `response.created`: `failed`
                (`upstream_timeout`), slot freed, next head sent; also the delayed retry.

Statuses move only as `TRANSITIONS` allows: forward, queued -> sent -> in_progress ->
terminal (steps may be skipped), and back from sent to queued on
`conversation_already_has_active_response`. Each request reaches one terminal status at most.
An input that is the caller's fault raises a SequencerError and changes nothing; a status
change the table does not allow is the sequencer's own bug and raises IllegalTransition before
the request is changed.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

ACTIVE_RESPONSE_ERROR = "conversation_already_has_active_response"
OC_REQUEST_KEY = "oc_request"
SERVER_ORIGIN = "server"
CALLER_ORIGIN = "caller"


class RequestStatus(StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    INCOMPLETE = "incomplete"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES: frozenset[RequestStatus] = frozenset(
    {
        RequestStatus.COMPLETED,
        RequestStatus.CANCELLED,
        RequestStatus.INCOMPLETE,
        RequestStatus.FAILED,
    }
)

# Every status change a request may make. A request enters as `queued` (one the server started
# enters as `in_progress`); terminal statuses have no way out.
TRANSITIONS: Mapping[RequestStatus, frozenset[RequestStatus]] = {
    # sent; cancelled or failed before it was; in_progress when a response.created names it
    # after an error put it back here that turned out not to be about it.
    RequestStatus.QUEUED: frozenset(
        {
            RequestStatus.SENT,
            RequestStatus.IN_PROGRESS,
            RequestStatus.CANCELLED,
            RequestStatus.FAILED,
        }
    ),
    # created; back to the queue on conversation_already_has_active_response (or cancelled,
    # if a cancel was waiting for it); failed on any other error, a timeout or the session's end.
    RequestStatus.SENT: frozenset(
        {
            RequestStatus.QUEUED,
            RequestStatus.IN_PROGRESS,
            RequestStatus.CANCELLED,
            RequestStatus.FAILED,
        }
    ),
    # whatever response.done says, or failed when the session ends first.
    RequestStatus.IN_PROGRESS: frozenset(TERMINAL_STATUSES),
    **{status: frozenset() for status in TERMINAL_STATUSES},
}

# `response.status` values the server reports in `response.done`.
_DONE_STATUSES: Mapping[str, RequestStatus] = {
    "completed": RequestStatus.COMPLETED,
    "cancelled": RequestStatus.CANCELLED,
    "incomplete": RequestStatus.INCOMPLETE,
    "failed": RequestStatus.FAILED,
}


# ---------------------------------------------------------------------------- errors


class SequencerError(Exception):
    """An input the sequencer refuses; its state is unchanged."""


class RequestNotCancellable(SequencerError):
    """The caller's fault: cancel() of a request that is unknown or already terminal."""


class DuplicateRequest(SequencerError):
    """The caller's fault: submit() of a request id the sequencer already knows."""


class InvalidRequest(SequencerError):
    """The caller's fault: a request without event_id, or whose metadata is unusable."""


class IllegalTransition(SequencerError):
    """Our fault: a status change that `TRANSITIONS` does not allow. Nothing was changed."""


# ---------------------------------------------------------------------------- inputs / actions


@dataclass(frozen=True, kw_only=True)
class Request:
    id: str
    origin: str  # "caller" | "console" | "api" | "server"
    event_id: str  # client event_id of this request's response.create on the wire
    response: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def out_of_band(self) -> bool:
        return self.response.get("conversation") == "none"


@dataclass(frozen=True, kw_only=True)
class SendEvent:
    """Send this client event upstream (a plain JSON-able dict)."""

    event: dict[str, Any] = field(hash=False)
    request_id: str | None


@dataclass(frozen=True, kw_only=True)
class StatusChanged:
    request_id: str
    status: RequestStatus
    at: float
    response_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    details: Mapping[str, Any] | None = field(default=None, hash=False)


@dataclass(frozen=True, kw_only=True)
class ResponseObserved:
    """A response the server started by itself; a StatusChanged(in_progress) follows."""

    request: Request
    response_id: str
    at: float


@dataclass(frozen=True, kw_only=True)
class LateResponse:
    """The response of a request that had already ended (it failed `upstream_timeout`, its
    `response.created` came after) is done: what became of it. The request's status stays
    (terminal statuses have no way out); `error_message` is the request's, with the late
    response's outcome added; `error_code` is the request's, as it failed."""

    request_id: str
    response_id: str
    status: str  # as `response.done` gave it
    at: float
    error_message: str
    error_code: str | None = None
    details: Mapping[str, Any] | None = field(default=None, hash=False)


@dataclass(frozen=True, kw_only=True)
class ErrorClaimed:
    """The error event concerned one of the sequencer's events."""

    request_id: str | None
    forward_to_caller: bool


Action = SendEvent | StatusChanged | ResponseObserved | LateResponse | ErrorClaimed


# ---------------------------------------------------------------------------- state


@dataclass
class _Entry:
    request: Request
    status: RequestStatus
    sends: int = 0
    sent_at: float = 0.0
    response_id: str | None = None
    # Cancel asked before a response existed: cancel the response if one ever appears.
    cancel_pending: bool = False
    # Why it failed, for a response that comes after all.
    error_code: str | None = None
    error_message: str | None = None


@dataclass(frozen=True)
class _Live:
    """A response in progress upstream."""

    request_id: str
    in_conversation: bool


def counter(prefix: str) -> Callable[[], str]:
    """Ids `prefix_1`, `prefix_2`, …: the default when no id factory is given."""
    numbers = itertools.count(1)
    return lambda: f"{prefix}_{next(numbers)}"


class Sequencer:
    def __init__(
        self,
        *,
        new_request_id: Callable[[], str] | None = None,
        new_event_id: Callable[[], str] | None = None,
        send_timeout: float = 15.0,
        retry_delay: float = 0.25,
    ) -> None:
        self._new_request_id = new_request_id or counter("req_server")
        self._new_event_id = new_event_id or counter("event_seq")
        self.send_timeout = send_timeout
        self.retry_delay = retry_delay
        self._entries: dict[str, _Entry] = {}
        self._by_event_id: dict[str, str] = {}  # event_id -> latest request submitted with it
        self._cancel_events: dict[str, str] = {}  # our response.cancel event_id -> request id
        self._queue: deque[str] = deque()
        self._outstanding: str | None = None
        self._oob_sent: dict[str, None] = {}  # out-of-band requests awaiting created, in order
        self._live: dict[str, _Live] = {}  # response_id -> response in progress, in order
        self._retry_at: float | None = None
        self._closed = False
        # Held: nothing queued is sent until resume() (the upstream leg is being replaced; the
        # queue is the session's, not the leg's). Out-of-band requests are not held.
        self.held = False
        # Offline: no upstream leg is open (an attached call's sideband is being opened again):
        # held, and out-of-band requests wait too, in `_oob_waiting`, until resume().
        self.offline = False
        self._oob_waiting: deque[str] = deque()

    # ------------------------------------------------------------------ read-only views

    def status(self, request_id: str) -> RequestStatus:
        return self._entries[request_id].status

    def get(self, request_id: str) -> Request:
        return self._entries[request_id].request

    @property
    def queued_ids(self) -> tuple[str, ...]:
        return (*self._oob_waiting, *self._queue)

    @property
    def outstanding_id(self) -> str | None:
        return self._outstanding

    @property
    def active_response_id(self) -> str | None:
        for response_id, live in reversed(self._live.items()):
            if live.in_conversation:
                return response_id
        return None

    @property
    def live_response_ids(self) -> tuple[str, ...]:
        """Every response in progress, in and out of the conversation, in order."""
        return tuple(self._live)

    @property
    def active_request_id(self) -> str | None:
        response_id = self.active_response_id
        return None if response_id is None else self._live[response_id].request_id

    @property
    def is_closed(self) -> bool:
        return self._closed

    @property
    def next_deadline(self) -> float | None:
        """The earliest `now` at which tick() would act (a timeout or the delayed retry)."""
        if self._closed:
            return None
        deadlines = [self._entries[rid].sent_at + self.send_timeout for rid in self._oob_sent]
        if self._outstanding is not None:
            deadlines.append(self._entries[self._outstanding].sent_at + self.send_timeout)
        elif (
            self._retry_at is not None
            and self._queue
            and not self._conversation_busy
            and not (self.held or self.offline)
        ):
            deadlines.append(self._retry_at)
        return min(deadlines, default=None)

    # ------------------------------------------------------------------ inputs

    def submit(self, request: Request, *, now: float) -> list[Action]:
        _check_request(request)
        if request.id in self._entries:
            raise DuplicateRequest(f"request {request.id!r} was already submitted")
        entry = _Entry(request=request, status=RequestStatus.QUEUED)
        self._entries[request.id] = entry
        self._by_event_id[request.event_id] = request.id
        actions: list[Action] = [
            StatusChanged(request_id=request.id, status=RequestStatus.QUEUED, at=now)
        ]
        if self._closed:
            actions.append(
                self._status(
                    entry,
                    RequestStatus.FAILED,
                    now,
                    error_code="session_ended",
                    error_message="The session has ended.",
                )
            )
        elif request.out_of_band and self.offline:
            self._oob_waiting.append(request.id)
        elif request.out_of_band:
            self._oob_sent[request.id] = None
            actions += self._send(entry, now)
        else:
            self._queue.append(request.id)
            actions += self._pump(now)
        return actions

    def cancel(self, request_id: str, *, now: float) -> list[Action]:
        entry = self._entries.get(request_id)
        if entry is None:
            raise RequestNotCancellable(f"unknown request {request_id!r}")
        if self._closed:
            return []
        if entry.status.is_terminal:
            raise RequestNotCancellable(f"request {request_id!r} is already {entry.status.value}")
        if entry.status is RequestStatus.IN_PROGRESS:
            assert entry.response_id is not None
            return [self._cancel_event(entry.response_id, request_id)]
        entry.cancel_pending = True
        if entry.status is RequestStatus.SENT:
            return []  # response.cancel goes out when response.created names it
        if request_id in self._oob_waiting:
            self._oob_waiting.remove(request_id)
        else:
            self._queue.remove(request_id)
        return [self._status(entry, RequestStatus.CANCELLED, now)]

    def interrupt(self, *, now: float) -> list[Action]:
        response_id = self.active_response_id
        if self._closed or response_id is None:
            return []
        return [self._cancel_event(response_id, self._live[response_id].request_id)]

    def response_created(
        self,
        *,
        response_id: str,
        oc_request: str | None,
        now: float,
        observed_origin: str = SERVER_ORIGIN,
        observed_out_of_band: bool = False,
    ) -> list[Action]:
        """`observed_origin`: who started a response that names nothing of ours (`server`,
        or `caller` for an attached call, where the caller's creates bypass the sequencer);
        `observed_out_of_band`: that response is outside the conversation, so nothing waits
        for it."""
        if self._closed or response_id in self._live:
            return []
        entry = self._entries.get(oc_request) if oc_request is not None else None
        if entry is None or entry.sends == 0:
            return self._observe_server_response(
                response_id, now, observed_origin, out_of_band=observed_out_of_band
            )
        request_id = entry.request.id
        self._live[response_id] = _Live(request_id, not entry.request.out_of_band)
        actions: list[Action] = []
        # QUEUED here: it was sent, then put back on an error that was not about it after all.
        if entry.status in (RequestStatus.SENT, RequestStatus.QUEUED):
            if entry.status is RequestStatus.QUEUED:
                self._queue.remove(request_id)
            if self._outstanding == request_id:
                self._outstanding = None
            self._oob_sent.pop(request_id, None)
            entry.response_id = response_id
            actions.append(
                self._status(entry, RequestStatus.IN_PROGRESS, now, response_id=response_id)
            )
        if entry.cancel_pending:
            entry.cancel_pending = False
            actions.append(self._cancel_event(response_id, request_id))
        return actions

    def response_done(
        self,
        *,
        response_id: str,
        status: str,
        now: float,
        details: Mapping[str, Any] | None = None,
    ) -> list[Action]:
        if self._closed:
            return []
        live = self._live.pop(response_id, None)
        if live is None:
            return []
        actions: list[Action] = []
        entry = self._entries[live.request_id]
        if entry.status is RequestStatus.IN_PROGRESS and entry.response_id == response_id:
            terminal = _DONE_STATUSES.get(status)
            if terminal is None:
                actions.append(
                    self._status(
                        entry,
                        RequestStatus.FAILED,
                        now,
                        response_id=response_id,
                        error_code="unexpected_status",
                        error_message=f"response.done with status {status!r}",
                        details=details,
                    )
                )
            else:
                actions.append(
                    self._status(entry, terminal, now, response_id=response_id, details=details)
                )
        elif entry.status.is_terminal and entry.response_id is None:
            # Its response came after the request had ended: recorded, the status kept.
            entry.response_id = response_id
            ended = f"{entry.error_message} " if entry.error_message else ""
            outcome = status or "unknown"
            actions.append(
                LateResponse(
                    request_id=entry.request.id,
                    response_id=response_id,
                    status=status,
                    at=now,
                    error_message=f"{ended}Its response came later and ended {outcome}.",
                    error_code=entry.error_code,
                    details=details,
                )
            )
        if live.in_conversation and not self._conversation_busy:
            self._retry_at = None  # the response that was in the way is over
            actions += self._pump(now)
        return actions

    def error(
        self, *, event_id: str | None, code: str | None, message: str, now: float
    ) -> list[Action]:
        if self._closed:
            return []
        outstanding = self._outstanding
        if outstanding is not None and event_id in (
            None,
            self._entries[outstanding].request.event_id,
        ):
            return self._outstanding_error(self._entries[outstanding], code, message, now)
        if event_id is None:
            return []
        request_id = self._by_event_id.get(event_id)
        if request_id is not None:
            entry = self._entries[request_id]
            actions: list[Action] = [
                ErrorClaimed(request_id=request_id, forward_to_caller=_forward(entry.request, code))
            ]
            if entry.status is RequestStatus.SENT:  # sent, not outstanding: out of band
                del self._oob_sent[request_id]
                actions.append(
                    self._status(
                        entry, RequestStatus.FAILED, now, error_code=code, error_message=message
                    )
                )
            return actions
        if event_id in self._cancel_events:
            return [ErrorClaimed(request_id=self._cancel_events[event_id], forward_to_caller=False)]
        return []

    def closed(self, reason: str, *, now: float, detail: str | None = None) -> list[Action]:
        """The session is over: every request not yet terminal fails with `reason` as its
        code and `detail` (why the session ended) in its message."""
        if self._closed:
            return []
        self._closed = True
        self._queue.clear()
        self._oob_waiting.clear()
        self._outstanding = None
        self._oob_sent.clear()
        self._live.clear()
        self._retry_at = None
        return [
            self._status(
                entry,
                RequestStatus.FAILED,
                now,
                response_id=entry.response_id,
                error_code=reason,
                error_message=f"The session closed ({detail or reason}).",
            )
            for entry in self._entries.values()
            if not entry.status.is_terminal
        ]

    def forget_finished(self, *, keep: int) -> list[tuple[str, RequestStatus]]:
        """Forget terminal requests but the latest `keep`, so that a long session's state stays
        flat. A forgotten request is unknown to later inputs, as if never submitted: its late
        `response.created` counts as the server's, an error naming its event is not claimed.
        Returns the (id, final status) of those forgotten, oldest first. A request whose
        response still runs (it came after the request timed out) is kept until it is done."""
        running = {live.request_id for live in self._live.values()}
        finished = [
            rid
            for rid, entry in self._entries.items()
            if entry.status.is_terminal and rid not in running
        ]
        if len(finished) <= keep:
            return []
        dropped = []
        for request_id in finished[: len(finished) - keep]:
            entry = self._entries.pop(request_id)
            if self._by_event_id.get(entry.request.event_id) == request_id:
                del self._by_event_id[entry.request.event_id]
            dropped.append((request_id, entry.status))
        if self._cancel_events:
            gone = {request_id for request_id, _ in dropped}
            self._cancel_events = {e: r for e, r in self._cancel_events.items() if r not in gone}
        return dropped

    def resume(self, *, now: float) -> list[Action]:
        """No longer held nor offline: the out-of-band requests that waited are sent, then
        the head of the queue if nothing is in the way."""
        self.held = self.offline = False
        actions: list[Action] = []
        while self._oob_waiting:
            request_id = self._oob_waiting.popleft()
            self._oob_sent[request_id] = None
            actions += self._send(self._entries[request_id], now)
        return actions + self._pump(now)

    def tick(self, *, now: float) -> list[Action]:
        if self._closed:
            return []
        actions: list[Action] = []
        for request_id in list(self._oob_sent):
            entry = self._entries[request_id]
            if now >= entry.sent_at + self.send_timeout:
                del self._oob_sent[request_id]
                actions.append(self._timed_out(entry, now))
        if self._outstanding is not None:
            entry = self._entries[self._outstanding]
            if now >= entry.sent_at + self.send_timeout:
                self._outstanding = None
                actions.append(self._timed_out(entry, now))
        return actions + self._pump(now)

    # ------------------------------------------------------------------ internals

    @property
    def _conversation_busy(self) -> bool:
        return any(live.in_conversation for live in self._live.values())

    def _pump(self, now: float) -> list[Action]:
        """Send the head of the queue if nothing is in the way."""
        if (
            self._closed
            or self.held
            or self.offline
            or self._outstanding is not None
            or not self._queue
            or self._conversation_busy
            or (self._retry_at is not None and now < self._retry_at)
        ):
            return []
        self._retry_at = None
        request_id = self._queue.popleft()
        self._outstanding = request_id
        return self._send(self._entries[request_id], now)

    def _send(self, entry: _Entry, now: float) -> list[Action]:
        entry.sends += 1
        entry.sent_at = now
        event = _create_event(entry.request)
        return [
            SendEvent(event=event, request_id=entry.request.id),
            self._status(entry, RequestStatus.SENT, now),
        ]

    def _outstanding_error(
        self, entry: _Entry, code: str | None, message: str, now: float
    ) -> list[Action]:
        self._outstanding = None
        actions: list[Action] = [
            ErrorClaimed(
                request_id=entry.request.id, forward_to_caller=_forward(entry.request, code)
            )
        ]
        if code != ACTIVE_RESPONSE_ERROR:
            actions.append(
                self._status(
                    entry, RequestStatus.FAILED, now, error_code=code, error_message=message
                )
            )
            return actions + self._pump(now)
        # Something is in the way upstream. Wait for its response.done if we know of it, else
        # retry after a delay (its response.created may not have reached us yet). Either way
        # nothing can be sent now, so there is nothing to pump.
        self._retry_at = None if self._conversation_busy else now + self.retry_delay
        if entry.cancel_pending:  # asked to stop before it ever started: it is over
            actions.append(self._status(entry, RequestStatus.CANCELLED, now))
        else:
            self._queue.appendleft(entry.request.id)
            actions.append(self._status(entry, RequestStatus.QUEUED, now))
        return actions

    def _timed_out(self, entry: _Entry, now: float) -> StatusChanged:
        return self._status(
            entry,
            RequestStatus.FAILED,
            now,
            error_code="upstream_timeout",
            error_message=f"No response.created within {self.send_timeout:g} s of sending.",
        )

    def _observe_server_response(
        self,
        response_id: str,
        now: float,
        origin: str = SERVER_ORIGIN,
        *,
        out_of_band: bool = False,
    ) -> list[Action]:
        request_id = self._new_request_id()
        if request_id in self._entries:
            raise SequencerError(f"new_request_id() returned a known id {request_id!r}")
        response = {"conversation": "none"} if out_of_band else {}
        request = Request(id=request_id, origin=origin, event_id="", response=response)
        entry = _Entry(request=request, status=RequestStatus.IN_PROGRESS, response_id=response_id)
        self._entries[request_id] = entry
        self._live[response_id] = _Live(request_id, in_conversation=not out_of_band)
        return [
            ResponseObserved(request=request, response_id=response_id, at=now),
            StatusChanged(
                request_id=request_id,
                status=RequestStatus.IN_PROGRESS,
                at=now,
                response_id=response_id,
            ),
        ]

    def _cancel_event(self, response_id: str, request_id: str) -> SendEvent:
        event_id = self._new_event_id()
        self._cancel_events[event_id] = request_id
        return SendEvent(
            event={"type": "response.cancel", "event_id": event_id, "response_id": response_id},
            request_id=request_id,
        )

    @staticmethod
    def _status(
        entry: _Entry,
        status: RequestStatus,
        now: float,
        *,
        response_id: str | None = None,
        error_code: str | None = None,
        error_message: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> StatusChanged:
        if status not in TRANSITIONS[entry.status]:
            raise IllegalTransition(
                f"request {entry.request.id!r} cannot go from {entry.status.value} to {status.value}"
            )
        entry.status = status
        if error_code is not None:
            entry.error_code = error_code
        if error_message is not None:
            entry.error_message = error_message
        return StatusChanged(
            request_id=entry.request.id,
            status=status,
            at=now,
            response_id=response_id,
            error_code=error_code,
            error_message=error_message,
            details=details,
        )


def _check_request(request: Request) -> None:
    if not request.id:
        raise InvalidRequest("request id is empty")
    if not request.event_id:
        raise InvalidRequest(f"request {request.id!r} has no event_id")
    if not isinstance(request.response, Mapping):
        raise InvalidRequest(f"request {request.id!r}: response is not a mapping")
    metadata = request.response.get("metadata")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise InvalidRequest(f"request {request.id!r}: response.metadata is not a mapping")
    if metadata is not None and OC_REQUEST_KEY in metadata:
        raise InvalidRequest(f"request {request.id!r}: metadata.{OC_REQUEST_KEY} is reserved")


def _create_event(request: Request) -> dict[str, Any]:
    """response.create with only the fields that were set, tagged with the request id."""
    response = {key: value for key, value in request.response.items() if value is not None}
    metadata = request.response.get("metadata") or {}
    response["metadata"] = {
        **{key: value for key, value in metadata.items() if value is not None},
        OC_REQUEST_KEY: request.id,
    }
    return {"type": "response.create", "event_id": request.event_id, "response": response}


def _forward(request: Request, code: str | None) -> bool:
    return request.origin == CALLER_ORIGIN and code != ACTIVE_RESPONSE_ERROR
