"""The history writer: database writes off the relay's hot path.

Actors hand it operations and go on at once. One thread per process applies them in
submission order, a batch per transaction, so a request's rows are written in the order of its
transitions and a slow disk never delays a frame. Within a batch, the transitions of one
request are merged: a request created and finished in the same batch is one INSERT, and
several transitions of an existing row are one UPDATE (later fields win, as they would have).

The thread keeps its database connection open across batches (opening SQLite and setting its
pragmas per batch cost more than the writes) and reopens it only after an error.
`flush()` waits until everything handed in so far is committed (tests, shutdown), and
`pending()` says how much is not yet (`GET /healthz`).

A batch that fails while the database does not answer (restarted, failing over, the network
gone; or SQLite's write lock kept by another connection) waits for it and is written then,
whole: the operations behind it wait in order, and nothing is lost to an outage. One that
fails while the database answers is at fault itself, and is retried one operation at a time
so that one bad row cannot take others with it.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from django.db import connection, transaction
from django.db.models import Model

from apps.sessions.db import is_database_away, is_database_busy, serialised_write

log = logging.getLogger(__name__)
# One JSON object per committed transition (sessions and requests): `oc.events`.
events_log = logging.getLogger("oc.events")

_MAX_BATCH = 1000
# While the database does not answer, a failed batch is tried again after these many seconds,
# doubling up to the second figure; once it answers, on at most this many fresh connections.
_OUTAGE_RETRY = (0.1, 2.0)
_FRESH_TRIES = 5


@dataclass(slots=True)
class CreateRow:
    """Insert a model instance (the fields it will have once later updates are merged)."""

    instance: Any
    event: dict[str, Any] | None = None  # logged (as JSON) once committed
    # Counters of other rows that this row adds one to, in its transaction: (model, pk, field).
    adds: tuple[tuple[type, Any, str], ...] = ()


@dataclass(slots=True)
class UpdateRow:
    """Update some fields of the row of `model` with primary key `pk`."""

    model: type
    pk: Any
    fields: dict[str, Any] = field(default_factory=dict)
    event: dict[str, Any] | None = None  # logged (as JSON) once committed


Operation = CreateRow | UpdateRow | Callable[[], None]


class HistoryWriter:
    # How long the thread gathers operations after the first one arrives. Waking a thread per
    # operation costs the event loop a GIL hand-over each time; a short window turns a busy
    # relay's many transitions into few batches.
    gather_seconds = 0.02

    def __init__(self) -> None:
        self._pending: deque[Operation] = deque()  # append/popleft are thread-safe
        # Operations taken from `_pending` and not yet committed (set by the writer's thread).
        self._in_hand = 0
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.failures = 0
        # The event log (apps/events sets it): `prepare(batch)` sees each batch before `merge`
        # folds it, and what it returns is `write()`n in the batch's transaction, after its
        # rows, then told `committed()`; or, when the batch failed, told `failed()` and
        # written again after its operations were retried one by one.
        self.recorder: Any = None
        # Whether another process may have swept this process's sessions (its lease has run
        # out: housekeeping.Lease sets it). A batch then first leaves out what it would write
        # over a request the table has as over (`without_settled`).
        self.doubtful: Callable[[], bool] | None = None

    def submit(self, operation: Operation) -> None:
        """Queue an operation; never blocks, and wakes the writer only when it is idle."""
        if self._thread is None:
            self._start()
        self._pending.append(operation)
        if not self._wake.is_set():
            self._wake.set()

    def pending(self) -> int:
        """How many operations handed in are not committed yet: 0 once everything is.

        An operation is counted in hand before it leaves the queue, and the queue is read
        first, so an uncommitted one is never missed (one on its way may count twice)."""
        return len(self._pending) + self._in_hand

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until every operation submitted before this call has been committed."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def resolve() -> None:
            loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

        self.submit(lambda: transaction.on_commit(resolve))
        await asyncio.wait_for(done, timeout)

    def flush_sync(self, timeout: float = 10.0) -> None:
        event = threading.Event()
        self.submit(lambda: transaction.on_commit(event.set))
        if not event.wait(timeout):
            raise TimeoutError("history writer did not catch up")

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="oc-history-writer", daemon=True
                )
                self._thread.start()
                # A process stopping (SIGTERM) writes what it has before it goes.
                atexit.register(self._flush_at_exit)

    def _flush_at_exit(self) -> None:
        try:
            self.flush_sync(timeout=2.0)
        except Exception as exc:  # the database is gone: the sweep of stale sessions remains
            log.warning("history not flushed at exit: %r", exc)

    def _run(self) -> None:
        pending = self._pending
        while True:
            self._wake.wait()
            time.sleep(self.gather_seconds)
            # Clear before draining: an operation added after the drain sets the event again.
            self._wake.clear()
            while pending:
                batch = []
                while pending and len(batch) < _MAX_BATCH:
                    self._in_hand += 1
                    batch.append(pending.popleft())
                recorder = self.recorder
                events = recorder.prepare(batch) if recorder is not None else None
                self._apply(merge(batch), events)
                self._in_hand = 0
                if events_log.isEnabledFor(logging.INFO):
                    for operation in batch:
                        event = getattr(operation, "event", None)
                        if event is not None:
                            events_log.info(json.dumps(event, default=str, separators=(",", ":")))

    def _apply(self, batch: list[Operation], events: Any = None) -> None:
        def whole() -> None:
            doubtful = self.doubtful
            apply_batch(without_settled(batch, events) if doubtful and doubtful() else batch)
            if events is not None:
                events.write()

        failed = f"history batch failed; retrying its {len(batch)} operations one by one"
        if self._commit(whole, failed):
            if events is not None:
                events.committed()
            return
        for operation in batch:
            one = partial(apply_batch, [operation])
            if not self._commit(one, f"history operation failed: {operation!r}"):
                self.failures += 1
        if events is not None:  # what was written, read back, in a transaction of its own
            events.failed()
            if self._commit(events.write, "the events of a failed history batch were not recorded"):
                events.committed()

    def _commit(self, work: Callable[[], None], failed: str) -> bool:
        """Run `work` in a transaction of its own, and again after a failure that was not its
        own: while the database does not answer, wait for it; once it answers, try a few fresh
        connections (after a restart the pool still holds some that broke). False (logged as
        `failed`) when it failed otherwise: the work itself is at fault."""
        delay, longest = _OUTAGE_RETRY
        waiting_since = None
        tries = 0
        while True:
            try:
                with serialised_write(), transaction.atomic():
                    work()
            except Exception as exc:
                connection.close()
                unreachable = is_database_away(exc)
                # A locked SQLite answers reads (`_database_answers`) and takes no write.
                if unreachable and (is_database_busy(exc) or not _database_answers()):
                    if waiting_since is None:
                        waiting_since = time.monotonic()
                        log.warning("the database does not answer; the history waits for it")
                    time.sleep(delay)
                    delay = min(delay * 2, longest)
                    continue
                if unreachable and tries < _FRESH_TRIES:
                    tries += 1
                    continue
                log.exception(failed)
                return False
            if waiting_since is not None:
                log.warning(
                    "the database answers again; the history waited %.1f s for it",
                    time.monotonic() - waiting_since,
                )
            return True


def _database_answers() -> bool:
    """Whether the database takes a query now: after a failed write, tells a database that is
    away from a write at fault."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:
        connection.close()
        return False
    return True


def without_settled(batch: list[Operation], events: Any = None) -> list[Operation]:
    """The batch without its status changes (and their events) of requests already over in
    the table, read and locked in the batch's transaction.

    Only another process's sweep ends a request this writer still moves: this process was
    held up (paused, or cut off from the database) and its sessions were found lost. What its
    actors did before they knew (a response finished, a request the sweep failed sent, a
    request taken in) was handed in then and comes here late; written, it would turn the
    sweep's `failed` into `completed`, or back into `in_progress` or `queued` for good. A
    final status stays final: the sweep's record stands alone."""
    from apps.sessions.models import ResponseRequest

    def moves(operation: Operation) -> bool:
        return (
            type(operation) is UpdateRow
            and operation.model is ResponseRequest
            and "status" in operation.fields
        )

    moving = {operation.pk for operation in batch if moves(operation)}
    if not moving:
        return batch
    over = ResponseRequest.objects.select_for_update().filter(
        pk__in=moving, status__in=ResponseRequest.TERMINAL
    )
    settled = set(over.values_list("pk", flat=True))
    if not settled:
        return batch
    log.warning("left out what came late for %d requests already over: %s", len(settled), settled)
    if events is not None:
        events.settled(ResponseRequest, settled)
    return [op for op in batch if not (moves(op) and op.pk in settled)]


def apply_batch(batch: list[Operation]) -> None:
    """Apply merged operations: between two callables, the inserts as one `bulk_create` per
    model, what they add to counters as one `add_many` per (model, field), and the updates as
    one `update_many` per (model, set of fields). Rows inserted here took their updates in
    `merge`, so the updates only touch older rows and their order among themselves does not
    matter."""
    inserts: dict[type, list] = {}
    adds: dict[tuple[type, str], dict[Any, int]] = {}
    updates: dict[tuple[type, tuple[str, ...]], list[UpdateRow]] = {}

    def drain() -> None:
        for model, instances in inserts.items():
            model.objects.bulk_create(instances)
        for (model, name), amounts in adds.items():
            add_many(model, name, amounts)
        for (model, names), rows in updates.items():
            update_many(model, names, rows)
        inserts.clear()
        adds.clear()
        updates.clear()

    for operation in batch:
        kind = type(operation)
        if kind is CreateRow:
            inserts.setdefault(type(operation.instance), []).append(operation.instance)
            for model, pk, name in operation.adds:
                amounts = adds.setdefault((model, name), {})
                amounts[pk] = amounts.get(pk, 0) + 1
        elif kind is UpdateRow:
            if operation.fields:
                names = tuple(sorted(operation.fields))
                updates.setdefault((operation.model, names), []).append(operation)
        else:
            drain()
            operation()
    drain()


def update_many(model: type[Model], names: tuple[str, ...], rows: list[UpdateRow]) -> None:
    """`UPDATE <table> SET a = %s, b = %s WHERE <pk> = %s` for each row, as one executemany.

    The one statement here that the ORM does not write. Its `bulk_update` builds a CASE
    expression per row and field, and an `update()` per row compiles a query each time; with
    the relay's transitions arriving hundreds a second, either costs the writer's thread (which
    shares the GIL with every live session) more than the relay's CPU target allows
    (bench/RESULTS.md, "History writer"). Names come from the model's `_meta` and values go
    through each field's own `get_db_prep_save`, so the rows are those `update()` would write
    (tests/sessions/test_history.py reads them back through the ORM).
    """
    meta = model._meta
    fields = [meta.get_field(name) for name in names]
    quote = connection.ops.quote_name
    params = [
        [field.get_db_prep_save(row.fields[field.name], connection) for field in fields]
        + [meta.pk.get_db_prep_save(row.pk, connection)]
        for row in rows
    ]
    assignments = ", ".join(f"{quote(field.column)} = %s" for field in fields)
    # A row whose status is final keeps it (a request): no write moves it on, not even one
    # that left this process before the sweep and reached the database after it (its
    # connection stalled). `without_settled` leaves such writes out as a rule, with their
    # events; this holds the row even for the one already on its way.
    final = sorted(map(str, getattr(model, "TERMINAL", ()))) if "status" in names else []
    if not final:
        _update_by_pk(model, assignments, params)
        return
    status = quote(meta.get_field("status").column)
    condition = f" AND {status} NOT IN ({', '.join(['%s'] * len(final))})"
    _update_by_pk(model, assignments, [[*row, *final] for row in params], condition)


def add_many(model: type[Model], name: str, amounts: dict[Any, int]) -> None:
    """`UPDATE <table> SET n = n + %s WHERE <pk> = %s` for each row (pk → amount): counters
    added to in the database, so that writers in other processes never overwrite each other."""
    meta = model._meta
    column = connection.ops.quote_name(meta.get_field(name).column)
    params = [[amount, meta.pk.get_db_prep_save(pk, connection)] for pk, amount in amounts.items()]
    _update_by_pk(model, f"{column} = {column} + %s", params)


def _update_by_pk(
    model: type[Model], assignments: str, params: list[list[Any]], condition: str = ""
) -> None:
    quote, meta = connection.ops.quote_name, model._meta
    where = f"{quote(meta.pk.column)} = %s{condition}"
    sql = f"UPDATE {quote(meta.db_table)} SET {assignments} WHERE {where}"
    with connection.cursor() as cursor:
        cursor.executemany(sql, params)


def merge(batch: list[Operation]) -> list[Operation]:
    """Fold each row's updates into its insert or into one update, keeping the order in which
    rows were first touched. Callables are barriers: nothing is moved across them."""
    merged: list[Operation] = []
    touched: dict[tuple[type, Any], CreateRow | UpdateRow] = {}
    for operation in batch:
        kind = type(operation)
        if kind is CreateRow:
            key = (type(operation.instance), operation.instance.pk)
            touched[key] = operation
            merged.append(operation)
        elif kind is UpdateRow:
            key = (operation.model, operation.pk)
            earlier = touched.get(key)
            if type(earlier) is CreateRow:
                for name, value in operation.fields.items():
                    setattr(earlier.instance, name, value)
            elif earlier is not None:
                earlier.fields.update(operation.fields)
            else:
                copy = UpdateRow(operation.model, operation.pk, dict(operation.fields))
                touched[key] = copy
                merged.append(copy)
        else:
            touched.clear()
            merged.append(operation)
    return merged


writer = HistoryWriter()
