"""Writing the event log: in the history writer's batch transaction, and in those of the
submit service (a request stored `queued`) and of the sweep (a dead process's session lost).

The history writer hands each batch to `BatchRecorder.prepare` before `merge` folds it (so
every transition is still there, in order), then calls `write()` inside the batch's
transaction, after its rows, and `committed()` after the commit. `write` reads the rows the
events report back (one query for the batch's requests, one for its sessions' public ids;
a lifecycle event also counts its session's requests) and stores one `Event` per transition.

Several transitions of one row in one batch (queued → sent → in_progress in 20 ms) are read
back once, in their final state; each event gets the row as it was after its own transition:
the fields set by the batch's later operations on that row take the value the batch gave them
up to this transition, or else the field's default (request fields are set once, as a request
goes along, so before this batch they held their default).

Ids grow in commit order: SQLite writes one transaction at a time; on PostgreSQL every
transaction that writes events takes one advisory lock (`lock_event_order`) just before
inserting them and holds it to its commit, the last lock it takes.
"""

from __future__ import annotations

import copy
import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from django.db import connection, transaction

from apps.events import notify
from apps.events.models import Event
from apps.sessions import selectors
from apps.sessions.history import CreateRow, UpdateRow
from apps.sessions.models import LiveSession, ResponseRequest

log = logging.getLogger(__name__)

# pg_advisory_xact_lock's key for "an event is being inserted": "ocev".
ORDER_LOCK = 0x6F636576

# The history writer's event names (apps/sessions/records.py) → the stream's types.
_SESSION_EVENTS = {
    "session.opened": "session.opened",
    "session.live": "session.live",
    "session.ended": "session.ended",
}
_REQUEST_EVENTS = {"request.created", "request.status"}
_TRANSCRIPT = "transcript.entry"


def lock_event_order() -> None:
    """Inside a transaction, just before it inserts its events, as its last writes: wait for
    the other writers' commits, so that ids are committed in the order they are given.

    Taken last, the lock is held only for the inserts and the commit, so the writers of the
    log queue for milliseconds, not for whole transactions. Nothing after it may wait for a
    row (another transaction could hold that row while waiting for this lock: a deadlock).
    Events have no foreign keys; but Django makes foreign keys DEFERRABLE INITIALLY DEFERRED
    on PostgreSQL, so the checks of the rows written before would run at the commit, under
    the lock, and wait for a session row a submit holds (it did, in the soak): they are run
    first (`SET CONSTRAINTS ALL IMMEDIATE`). Taking the lock again in the same transaction
    returns at once."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [ORDER_LOCK])


def dumps(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=_default)


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# ---------------------------------------------------------------------------- the submit service


def request_queued(request: ResponseRequest) -> None:
    """The `queued` event of a request the REST hook or the console stored: in the same
    transaction as the row (`request.session` is the row's session)."""
    session = request.session
    lock_event_order()
    event = Event.objects.create(
        type="request.status",
        session_key=session.pk,
        session_id=session.upstream_id or "",
        payload=dumps(
            {
                "type": "request.status",
                "created_at": datetime.now(UTC),
                "session_id": session.upstream_id,
                "request": request.to_dict(),
            }
        ),
    )
    transaction.on_commit(partial(notify.committed, notify.rows_of([event])))


def session_lost(*, key: uuid.UUID, request_ids: list[str]) -> None:
    """In the sweep's transaction, after it failed a dead process's session and its pending
    requests: a `request.status` `failed` for each, then the `session.ended`."""
    now = datetime.now(UTC)
    session = LiveSession.objects.filter(pk=key).first()
    if session is None:
        return
    selectors.annotate_counts(session)
    common = {"created_at": now, "session_id": session.upstream_id}
    payloads = [
        {"type": "request.status", **common, "request": request.to_dict()}
        for request in ResponseRequest.objects.select_related("session")
        .filter(pk__in=request_ids)
        .order_by("created_at")
    ]
    payloads.append({"type": "session.ended", **common, "session": session.to_dict()})
    lock_event_order()
    events = Event.objects.bulk_create(
        Event(
            type=payload["type"],
            session_key=key,
            session_id=session.upstream_id or "",
            created_at=now,
            payload=dumps(payload),
        )
        for payload in payloads
    )
    transaction.on_commit(partial(notify.committed, notify.rows_of(events)))


# ---------------------------------------------------------------------------- the history writer


@dataclass(slots=True)
class _Step:
    """One operation of the batch on a row that has events: the fields it sets, and its event
    (with its type on the stream) if it has one."""

    model: type
    pk: Any
    fields: dict[str, Any]
    kind: str | None = None
    event: dict[str, Any] | None = None


@dataclass(slots=True)
class Prepared:
    steps: list[_Step] = field(default_factory=list)
    written: list[Event] = field(default_factory=list)  # by the last `write`, ids set

    def write(self) -> None:
        """Inside the batch's transaction, after its rows: one Event per transition."""
        self.written = []
        requests = self._read(ResponseRequest)
        sessions = self._read(LiveSession)
        now = datetime.now(UTC)
        rows: list[Event] = []
        for step, state in self._states(requests, sessions):
            event = self._event(step, state, sessions, now)
            if event is not None:
                rows.append(event)
        if rows:
            lock_event_order()
            self.written = Event.objects.bulk_create(rows)

    def committed(self) -> None:
        notify.committed(notify.rows_of(self.written))

    # ------------------------------------------------------------------ internals

    def _read(self, model: type) -> dict[Any, Any]:
        keys = {step.pk for step in self.steps if step.model is model}
        if model is ResponseRequest:
            found = ResponseRequest.objects.select_related("session").filter(pk__in=keys)
        else:
            keys |= {step.pk for step in self.steps if step.kind == _TRANSCRIPT}
            found = LiveSession.objects.filter(pk__in=keys)
        return {row.pk: row for row in found} if keys else {}

    def _states(self, requests: dict, sessions: dict):
        """(step, the row after it) for each step with an event, in batch order."""
        by_row: dict[tuple[type, Any], list[int]] = {}
        for index, step in enumerate(self.steps):
            by_row.setdefault((step.model, step.pk), []).append(index)
        states: dict[int, Any] = {}
        for (model, pk), indexes in by_row.items():
            row = (requests if model is ResponseRequest else sessions).get(pk)
            if row is None:
                continue
            later: set[str] = set()
            set_after: list[set[str]] = []
            for index in reversed(indexes):
                set_after.append(set(later))
                later |= self.steps[index].fields.keys()
            set_after.reverse()
            given: dict[str, Any] = {}
            for index, after in zip(indexes, set_after, strict=True):
                step = self.steps[index]
                given.update(step.fields)
                if step.kind is None:
                    continue
                if step.kind == _TRANSCRIPT:
                    states[index] = row
                    continue
                state = row
                if after:
                    state = copy.copy(row)
                    for name in after:
                        value = given[name] if name in given else model._meta.get_field(name).get_default()
                        setattr(state, name, value)
                states[index] = state
        for index in sorted(states):
            yield self.steps[index], states[index]

    def _event(self, step: _Step, state: Any, sessions: dict, now: datetime) -> Event | None:
        kind = step.kind
        if kind == _TRANSCRIPT:
            payload = {
                "type": kind,
                "created_at": now,
                "session_id": state.upstream_id,
                "entry": step.event.get("entry"),
            }
            session = state
        elif kind == "request.status":
            if (
                step.event.get("event") == "request.status"
                and state.status == ResponseRequest.Status.QUEUED
                and state.sent_at is None
            ):
                return None  # the actor taking in a request stored `queued`: no transition
            session = state.session
            payload = {
                "type": kind,
                "created_at": now,
                "session_id": session.upstream_id,
                "request": state.to_dict(),
            }
        else:
            session = state
            selectors.annotate_counts(session)  # rare: three per session
            payload = {
                "type": kind,
                "created_at": now,
                "session_id": session.upstream_id,
                "session": session.to_dict(),
            }
        return Event(
            type=kind,
            session_key=session.pk,
            session_id=session.upstream_id or "",
            created_at=now,
            payload=dumps(payload),
        )


class BatchRecorder:
    """The history writer's `recorder` (set in `EventsConfig.ready`), which the submit
    service also asks to record the `queued` event of the requests it stores."""

    request_queued = staticmethod(request_queued)
    session_lost = staticmethod(session_lost)

    def prepare(self, batch: list) -> Prepared | None:
        """Before `merge`: which rows have events, and every operation on them, in order."""
        try:
            return self._prepare(batch)
        except Exception:  # never let the log stop the history: the batch goes on without it
            log.exception("the events of a history batch could not be prepared")
            return None

    def _prepare(self, batch: list) -> Prepared | None:
        evented: set[tuple[type, Any]] = set()
        for operation in batch:
            event = getattr(operation, "event", None)
            if event is not None:
                evented.add(_row_of(operation, event))
        if not evented:
            return None
        prepared = Prepared()
        for operation in batch:
            event = getattr(operation, "event", None)
            kind = type(operation)
            if kind is CreateRow:
                instance = operation.instance
                key = (type(instance), instance.pk)
                if key not in evented:
                    continue
                fields = {
                    f.name: getattr(instance, f.attname)
                    for f in instance._meta.concrete_fields
                    if not f.primary_key and not f.is_relation
                }
            elif kind is UpdateRow:
                key = (operation.model, operation.pk)
                if key not in evented:
                    continue
                fields = dict(operation.fields)
            elif event is not None:  # the end of a session: a function with its event
                key = _row_of(operation, event)
                fields = {
                    "status": event.get("status"),
                    "end_reason": event.get("reason") or "",
                    "end_code": event.get("code"),
                }
            else:
                continue
            prepared.steps.append(
                _Step(key[0], key[1], fields, kind=_stream_type(event), event=event)
            )
        return prepared


def _row_of(operation: Any, event: dict[str, Any]) -> tuple[type, Any]:
    if type(operation) is CreateRow:
        return type(operation.instance), operation.instance.pk
    if type(operation) is UpdateRow:
        return operation.model, operation.pk
    return LiveSession, uuid.UUID(event["session_key"])


def _stream_type(event: dict[str, Any] | None) -> str | None:
    if event is None:
        return None
    name = event.get("event")
    if name in _REQUEST_EVENTS:
        return "request.status"
    if name == _TRANSCRIPT:
        return _TRANSCRIPT
    return _SESSION_EVENTS.get(name)
