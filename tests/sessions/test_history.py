"""The history writer: ordered, merged, durable, and a bad row does not take others with it."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
import uuid

import pytest
from django.db import connection

from apps.sessions import records
from apps.sessions.history import CreateRow, HistoryWriter, UpdateRow, merge
from apps.sessions.models import LiveSession, ResponseRequest

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def t0() -> float:
    """The time the test's session opens: now. Its heartbeat is stamped then, and a heartbeat
    in the past would be stale to the sweep of a Daphne that earlier tests of this process
    started on the same database, which would fail the live session under the test (a fixed
    date was in the future when written, and would have become such a past)."""
    return time.time()


def _session_ops(key, t0):
    return [
        records.session_opened(key=key, model="m", connected_by="t", process_id="p", at=t0),
        records.session_identified(key=key, upstream_id=f"sess_{key.hex[:8]}", instructions="I", at=t0 + 1),
    ]


def _request_ops(key, request_id, at):
    return [
        records.request_created(
            key=key, request_id=request_id, origin="caller", event_id="e", requested_by="x",
            instructions="be kind", metadata={"a": "1"}, conversation=None, at=at,
        ),
        records.request_status(request_id=request_id, status="sent", at=at + 1),
        records.request_status(request_id=request_id, status="in_progress", at=at + 2, response_id="resp_1"),
        records.request_status(
            request_id=request_id, status="completed", at=at + 3,
            output_text="done", usage={"total_tokens": 7},
        ),
    ]


def test_merge_folds_a_rows_transitions_into_its_insert(t0):
    key = uuid.uuid4()
    merged = merge(_session_ops(key, t0) + _request_ops(key, "req_a", t0))
    assert [type(op) for op in merged] == [CreateRow, CreateRow]
    row = merged[1].instance
    assert (row.status, row.response_id, row.output_text) == ("completed", "resp_1", "done")


def test_merge_keeps_updates_of_older_rows_as_one_update_and_respects_barriers():
    marks = []
    batch = [
        UpdateRow(ResponseRequest, "req_old", {"status": "sent"}),
        UpdateRow(ResponseRequest, "req_old", {"status": "in_progress", "response_id": "r"}),
        lambda: marks.append("barrier"),
        UpdateRow(ResponseRequest, "req_old", {"status": "completed"}),
    ]
    merged = merge(batch)
    assert len(merged) == 3
    assert merged[0].fields == {"status": "in_progress", "response_id": "r"}
    assert merged[2].fields == {"status": "completed"}


def _apply(writer: HistoryWriter, operations) -> None:
    for operation in operations:
        writer.submit(operation)
    writer.flush_sync()


def test_writes_land_in_order_with_every_field(t0):
    writer = HistoryWriter()
    key = uuid.uuid4()
    _apply(writer, _session_ops(key, t0) + _request_ops(key, "req_b", t0))
    # Later transitions of an existing row, in a separate batch: the UPDATE path.
    _apply(writer, _request_ops(key, "req_c", t0 + 10)[:1])
    _apply(writer, _request_ops(key, "req_c", t0 + 10)[1:])
    session = LiveSession.objects.get(id=key)
    assert (session.status, session.instructions) == ("live", "I")
    for request_id in ("req_b", "req_c"):
        row = ResponseRequest.objects.get(id=request_id)
        assert row.status == "completed" and row.usage == {"total_tokens": 7}
        assert row.metadata == {"a": "1"} and row.instructions == "be kind"
        assert row.created_at < row.sent_at < row.started_at < row.finished_at


def test_a_bad_operation_does_not_take_the_rest_of_its_batch_with_it(t0):
    writer = HistoryWriter()
    key = uuid.uuid4()
    _apply(writer, _session_ops(key, t0))
    ops = [
        CreateRow(LiveSession(id=key, model="again")),  # primary key taken: fails
        *_request_ops(key, "req_d", t0),
    ]
    _apply(writer, ops)
    assert writer.failures == 1
    assert ResponseRequest.objects.get(id="req_d").status == "completed"


def test_session_end_fails_whatever_is_still_pending(t0):
    writer = HistoryWriter()
    key = uuid.uuid4()
    _apply(writer, _session_ops(key, t0) + _request_ops(key, "req_e", t0)[:2])
    _apply(writer, [records.session_ended(key=key, status="failed", reason="relay_error", code=None, detail="gone", at=t0 + 9)])
    row = ResponseRequest.objects.get(id="req_e")
    assert (row.status, row.error_code) == ("failed", "session_ended")


def test_updates_of_several_rows_with_different_fields_land_in_one_batch(t0):
    writer = HistoryWriter()
    key = uuid.uuid4()
    _apply(writer, _session_ops(key, t0) + [
        _request_ops(key, request_id, t0)[0] for request_id in ("req_f", "req_g", "req_h")
    ])
    f, g, h = (_request_ops(key, request_id, t0) for request_id in ("req_f", "req_g", "req_h"))
    _apply(writer, [f[1], g[1], g[2], h[1], h[2], h[3], records.session_updated(key=key, instructions="J")])
    rows = {row.id: row for row in ResponseRequest.objects.filter(id__in=["req_f", "req_g", "req_h"])}
    assert (rows["req_f"].status, rows["req_f"].response_id) == ("sent", "")
    assert (rows["req_g"].status, rows["req_g"].response_id) == ("in_progress", "resp_1")
    assert (rows["req_h"].status, rows["req_h"].usage) == ("completed", {"total_tokens": 7})
    assert rows["req_f"].sent_at is not None and rows["req_f"].started_at is None
    assert LiveSession.objects.get(id=key).instructions == "J"


def test_a_database_another_process_keeps_locked_delays_the_history_and_loses_none_of_it(
    t0, monkeypatch
):
    """SQLite answers reads while another connection holds its write lock (a backup, an admin's
    open `sqlite3` shell): each write waits out the busy timeout and fails. The batch is not at
    fault, and is written, whole, once the lock is let go; no operation is given up on."""
    from apps.sessions import history

    writer, key = HistoryWriter(), uuid.uuid4()
    _apply(writer, _session_ops(key, t0))
    monkeypatch.setattr(history, "_OUTAGE_RETRY", (0.001, 0.001))
    tries, enough = 0, threading.Event()
    locked_write = history.serialised_write

    @contextlib.contextmanager
    def counted():
        nonlocal tries
        tries += 1
        # Past the tries a write at fault gets: the batch's, then its operation's on its own.
        if tries > 2 * (history._FRESH_TRIES + 1):
            enough.set()
        connection.ensure_connection()  # the writer's own: its busy wait, 10 ms, not 20 s
        connection.connection.execute("PRAGMA busy_timeout = 10")
        with locked_write():
            yield

    monkeypatch.setattr(history, "serialised_write", counted)
    holder = sqlite3.connect(connection.settings_dict["NAME"], isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        for operation in _request_ops(key, "req_locked", t0):
            writer.submit(operation)
        assert enough.wait(5), f"the writer tried {tries} times, then gave up"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    writer.flush_sync()
    assert writer.failures == 0
    assert ResponseRequest.objects.get(id="req_locked").status == "completed"
