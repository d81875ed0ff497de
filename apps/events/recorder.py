"""Writing the event log: in the history writer's batch transaction, and in those of the
submit service (a request stored `queued`), of the label service (a session relabelled) and of
the sweep (a dead process's session lost).

The history writer hands each batch to `BatchRecorder.prepare` before `merge` folds it (so
every transition is still there, in order), then calls `write()` inside the batch's
transaction, after its rows, and `committed()` after the commit. Each event gets its row as it
was after its own transition: the row as it was before the batch, with the batch's operations
on it applied in order. The row before the batch is the one the batch inserts, or the one the
writer's last commit left (`Known`: a busy relay's batches read nothing back), or else read
back, with the fields the batch sets at their defaults (request fields are set once, as a
request goes along, so before this batch they held their default). A lifecycle event also
counts its session's requests.

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
from apps.sessions import approvals, selectors
from apps.sessions.history import CreateRow, UpdateRow
from apps.sessions.models import LiveSession, ResponseRequest, ToolApproval

log = logging.getLogger(__name__)

# pg_advisory_xact_lock's key for "an event is being inserted": "ocev".
ORDER_LOCK = 0x6F636576

# The history writer's event names (apps/sessions/records.py) → the stream's types.
_SESSION_EVENTS = {
    "session.opened": "session.opened",
    "session.live": "session.live",
    # A rotation changes the session's `upstream_sessions`.
    "session.rotated": "session.updated",
    "session.ended": "session.ended",
}
_REQUEST_EVENTS = {"request.created", "request.status"}
_TRANSCRIPT = "transcript.entry"
_APPROVAL = approvals.APPROVAL_STATUS
# Events that carry their own shape (a transcript entry, an approval as the tool desk has it)
# and need only their session's row, for its public id.
_OWN_SHAPE = frozenset({_TRANSCRIPT, _APPROVAL})


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


# ---------------------------------------------------------------------------- the services


def _insert(events: list[Event]) -> None:
    """Inside the caller's transaction, as its last writes: the events, told to this
    process's streams and webhook worker once it commits."""
    lock_event_order()
    written = Event.objects.bulk_create(events)
    transaction.on_commit(partial(notify.committed, notify.rows_of(written)))


def _record(kind: str, session: LiveSession, /, **shape: Any) -> None:
    """One event of `session`, with `shape` (`request=` or `session=`, as a dict)."""
    now = datetime.now(UTC)
    payload = {"type": kind, "created_at": now, "session_id": session.upstream_id, **shape}
    _insert([_event_row(kind, session, payload, now)])


def request_queued(request: ResponseRequest) -> None:
    """The `queued` event of a request the REST hook or the console stored: in the same
    transaction as the row (`request.session` is the row's session)."""
    _record("request.status", request.session, request=request.to_dict())


def session_updated(session: LiveSession) -> None:
    """`session.updated` with the whole session as it now is, in the transaction that changed
    it (its label: the label service)."""
    selectors.annotate_counts(session)
    _record("session.updated", session, session=session.to_dict())


def session_lost(*, key: uuid.UUID, request_ids: list[str], approval_ids: list[int]) -> None:
    """In the sweep's transaction, after it failed a dead process's session, its pending
    requests and approvals: a `request.status` `failed` for each request, an
    `approval.status` `expired` for each approval, then the `session.ended`."""
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
    expired = ToolApproval.objects.filter(pk__in=approval_ids).order_by("created_at", "id")
    for approval in expired:
        approval.session = session
        payloads.append({"type": _APPROVAL, **common, "approval": approval.to_dict()})
    payloads.append({"type": "session.ended", **common, "session": session.to_dict()})
    _insert([_event_row(payload["type"], session, payload, now) for payload in payloads])


# ---------------------------------------------------------------------------- the history writer


class Known:
    """What the history writer's thread knows of the rows its events describe, as its last
    commit left them, so that a busy relay's batches read nothing back.

    - **Requests, until they end.** While its session lives, the writer is a request's only
      writer (the submit service stores it `queued`, then the actor takes it in through the
      writer). Only a session's end (whose event makes the writer forget its requests) and
      the sweep (of other processes' sessions, which this writer never knew) write outside it.
    - **Sessions, by their public id.** A request's or a transcript entry's event names its
      session by the public id and prices its usage by the session's model; neither changes
      once the session is live. A session's own events read its row, which other writers
      change (label, recording, heartbeat).

    Only the writer's thread uses it. A failed batch forgets everything: what was written is
    read back."""

    LIMIT = 20_000  # rows; past it, everything is forgotten (a request ended where no event says)

    def __init__(self) -> None:
        self.requests: dict[str, ResponseRequest] = {}
        self.sessions: dict[uuid.UUID, LiveSession] = {}

    def clear(self) -> None:
        self.requests.clear()
        self.sessions.clear()

    def remember(self, requests: list[ResponseRequest], sessions: list[LiveSession]) -> None:
        for session in sessions:
            if session.status == LiveSession.Status.LIVE and session.upstream_id:
                self.sessions[session.pk] = session
            else:
                self.sessions.pop(session.pk, None)
                self.requests = {
                    pk: request
                    for pk, request in self.requests.items()
                    if request.session_id != session.pk
                }
        for request in requests:
            ended = request.status in ResponseRequest.TERMINAL
            if ended or request.session_id not in self.sessions:
                self.requests.pop(request.pk, None)
            else:
                self.requests[request.pk] = request
        if len(self.requests) + len(self.sessions) > self.LIMIT:
            self.clear()


@dataclass(slots=True)
class _Step:
    """One operation of the batch on a row that has events: the fields it sets, and its event
    (with its type on the stream) if it has one. `created`: a request inserted by this batch,
    as it was inserted (`merge` folds later updates into the instance the batch inserts).
    `approval`: an approval's, as the tool desk had it (`Approval.as_dict()`)."""

    model: type
    pk: Any
    fields: dict[str, Any]
    kind: str | None = None
    event: dict[str, Any] | None = None
    created: ResponseRequest | None = None
    ending: Any = None  # a session's end (`records.session_ended`), once it has run
    approval: dict[str, Any] | None = None


@dataclass(slots=True)
class Prepared:
    known: Known
    steps: list[_Step] = field(default_factory=list)
    written: list[Event] = field(default_factory=list)  # by the last `write`, ids set
    # The rows as the last `write` left them: what `known` holds once they are committed.
    requests_after: list[ResponseRequest] = field(default_factory=list)
    sessions_after: list[LiveSession] = field(default_factory=list)

    def write(self) -> None:
        """Inside the batch's transaction, after its rows: one Event per transition, each with
        its row as it was after that transition: the row as it was before the batch, with
        the batch's operations on it applied in order."""
        self.written = []
        rows = self._before()
        sessions = {pk: row for (model, pk), row in rows.items() if model is LiveSession}
        now = datetime.now(UTC)
        events: list[Event] = []
        for step in self.steps:
            row = rows.get((step.model, step.pk))
            if row is None:
                continue
            if step.kind == _TRANSCRIPT:
                events.append(_transcript_event(step, row, now))
                continue
            if step.kind == _APPROVAL:
                events.append(_approval_event(step, row, now))
                continue
            for name, value in step.fields.items():
                setattr(row, name, value)
            event = _event(step, row, now) if step.kind is not None else None
            if event is not None:
                events += _failed_by_the_end(step, row, now)
                events.append(event)
        self.requests_after = [row for (model, _), row in rows.items() if model is ResponseRequest]
        self.sessions_after = list(sessions.values())
        if events:
            lock_event_order()
            self.written = Event.objects.bulk_create(events)

    def settled(self, model: type, pks: set) -> None:
        """The batch leaves out its changes of these rows (`history.without_settled`): no
        events for them, and what was known of them is read again when next needed."""
        self.steps = [step for step in self.steps if not (step.model is model and step.pk in pks)]
        for pk in pks:
            self.known.requests.pop(pk, None)

    def failed(self) -> None:
        """The batch failed and its operations were retried one by one: what was written is
        read back at the next `write`, not assumed."""
        self.known.clear()
        for step in self.steps:
            step.created = None

    def committed(self) -> None:
        self.known.remember(self.requests_after, self.sessions_after)
        notify.committed(notify.rows_of(self.written))

    # ------------------------------------------------------------------ internals

    def _before(self) -> dict[tuple[type, Any], Any]:
        """Each row with an event-bearing step (a transcript entry's only names its session),
        as it was before the batch: inserted by it, known, or read (with the fields the batch
        sets back at their defaults: a request's fields are set once, as it goes along, so
        before this batch they held their default)."""
        rows: dict[tuple[type, Any], Any] = {}
        unread: dict[type, set] = {ResponseRequest: set(), LiveSession: set()}
        for step in self.steps:
            key = (step.model, step.pk)
            if step.kind in _OWN_SHAPE or key in rows or step.pk in unread[step.model]:
                continue
            if step.created is not None:
                rows[key] = step.created
            elif step.model is ResponseRequest and step.pk in self.known.requests:
                rows[key] = self.known.requests[step.pk]
            else:
                unread[step.model].add(step.pk)
        found: list[Any] = []
        if unread[ResponseRequest]:
            requests = ResponseRequest.objects.select_related("session")
            found += requests.filter(pk__in=unread[ResponseRequest])
        if unread[LiveSession]:
            found += LiveSession.objects.filter(pk__in=unread[LiveSession])
        for row in found:
            key, meta = (type(row), row.pk), type(row)._meta
            mine = [step for step in self.steps if (step.model, step.pk) == key]
            for name in {name for step in mine for name in step.fields}:
                setattr(row, name, meta.get_field(name).get_default())
            rows[key] = row
        self._name_sessions(rows)
        return rows

    def _name_sessions(self, rows: dict[tuple[type, Any], Any]) -> None:
        """Give each request its session, so that no `to_dict` reads it, and put the session
        of each transcript entry among the rows: the batch's own row, a known one, or read."""
        sessions = {pk: row for (model, pk), row in rows.items() if model is LiveSession}
        unnamed = [
            row for (model, _), row in rows.items()
            if model is ResponseRequest and not ResponseRequest.session.is_cached(row)
        ]
        transcripts = {step.pk for step in self.steps if step.kind in _OWN_SHAPE}
        wanted = {r.session_id for r in unnamed} | transcripts
        for pk in wanted - sessions.keys():
            if pk in self.known.sessions:
                sessions[pk] = self.known.sessions[pk]
        missing = wanted - sessions.keys()
        for session in LiveSession.objects.filter(pk__in=missing) if missing else ():
            sessions[session.pk] = rows[(LiveSession, session.pk)] = session  # known once live
        for pk in transcripts & sessions.keys():
            rows.setdefault((LiveSession, pk), sessions[pk])
        for request in unnamed:
            if request.session_id in sessions:
                request.session = sessions[request.session_id]


def _transcript_event(step: _Step, session: LiveSession, now: datetime) -> Event:
    payload = {
        "type": _TRANSCRIPT,
        "created_at": now,
        "session_id": session.upstream_id,
        "entry": step.event.get("entry"),
    }
    return _event_row(_TRANSCRIPT, session, payload, now)


def _approval_event(step: _Step, session: LiveSession, now: datetime) -> Event:
    payload = {
        "type": _APPROVAL,
        "created_at": now,
        "session_id": session.upstream_id,
        "approval": approvals.core_row(step.approval, session).to_dict(),
    }
    return _event_row(_APPROVAL, session, payload, now)


def _event(step: _Step, state: Any, now: datetime) -> Event | None:
    kind = step.kind
    if kind == "request.status":
        if (
            step.event.get("event") == "request.status"
            and state.status == ResponseRequest.Status.QUEUED
            and state.sent_at is None
        ):
            return None  # the actor taking in a request stored `queued`: no transition
        if not ResponseRequest.session.is_cached(state):
            return None  # its session's row is gone
        session, shape = state.session, {"request": state.to_dict()}
    else:
        session = state
        selectors.annotate_counts(session)  # rare: three per session
        shape = {"session": session.to_dict()}
    payload = {"type": kind, "created_at": now, "session_id": session.upstream_id, **shape}
    return _event_row(kind, session, payload, now)


def _failed_by_the_end(step: _Step, session: LiveSession, now: datetime) -> list[Event]:
    """The requests a session's end failed that the actor had not failed itself (it never
    knew them): a `request.status` for each, before the session's own end."""
    failed = getattr(step.ending, "failed", None)
    if not failed:
        return []
    events = []
    for request in ResponseRequest.objects.filter(pk__in=failed).order_by("created_at"):
        request.session = session
        payload = {
            "type": "request.status",
            "created_at": now,
            "session_id": session.upstream_id,
            "request": request.to_dict(),
        }
        events.append(_event_row("request.status", session, payload, now))
    return events


def _event_row(kind: str, session: LiveSession, payload: dict[str, Any], now: datetime) -> Event:
    return Event(
        type=kind,
        session_key=session.pk,
        session_id=session.upstream_id or "",
        created_at=now,
        payload=dumps(payload),
    )


class BatchRecorder:
    """The history writer's `recorder` (set in `EventsConfig.ready`), which the submit
    service also asks to record the `queued` event of the requests it stores, and the label
    service the `session.updated` of the sessions it relabels."""

    request_queued = staticmethod(request_queued)
    session_updated = staticmethod(session_updated)
    session_lost = staticmethod(session_lost)

    def __init__(self) -> None:
        self.known = Known()

    def prepare(self, batch: list) -> Prepared | None:
        """Before `merge`: which rows have events, and every operation on them, in order."""
        try:
            return self._prepare(batch)
        except Exception:  # never let the log stop the history: the batch goes on without it
            log.exception("the events of a history batch could not be prepared")
            self.known.clear()  # the batch changes rows it knows: they are read again
            return None

    def _prepare(self, batch: list) -> Prepared | None:
        """The steps: every operation on a row with a request or lifecycle event, and each
        transcript entry and approval (which name their session but need no state of its
        row)."""
        evented: set[tuple[type, Any]] = set()
        for operation in batch:
            event = getattr(operation, "event", None)
            if event is not None and event.get("event") not in _OWN_SHAPE:
                evented.add(_row_of(operation, event))
        prepared = Prepared(self.known)
        for operation in batch:
            event = getattr(operation, "event", None)
            kind = type(operation)
            created = None
            if event is not None and event.get("event") in _OWN_SHAPE:
                key, fields = _row_of(operation, event), {}
            elif kind is CreateRow:
                instance = operation.instance
                key = (type(instance), instance.pk)
                if key not in evented:
                    continue
                fields = {
                    f.name: getattr(instance, f.attname)
                    for f in instance._meta.concrete_fields
                    if not f.primary_key and not f.is_relation
                }
                if key[0] is ResponseRequest:
                    created = copy.copy(instance)
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
                    "ended_at": datetime.fromtimestamp(event["at"], tz=UTC),
                }
            else:
                continue
            step = _Step(key[0], key[1], fields, _stream_type(event), event, created)
            if step.kind == _APPROVAL:
                step.approval = operation.approval
            elif kind is not CreateRow and kind is not UpdateRow:
                step.ending = operation
            prepared.steps.append(step)
        return prepared if prepared.steps else None


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
    if name in _OWN_SHAPE:
        return name
    return _SESSION_EVENTS.get(name)
