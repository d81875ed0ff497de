"""The event log as the history writer, the submit service and the sweep write it: one event
per transition, each with its row as it was at that transition, even when several
transitions of one row are written in one batch."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from apps.events.models import Event
from apps.events.recorder import BatchRecorder
from apps.realtime.sequencer import RequestStatus
from apps.realtime.tools import UNDECIDED_AT_END
from apps.sessions import records
from apps.sessions.history import apply_batch, merge
from apps.sessions.history import writer as history
from apps.sessions.housekeeping import sweep_lost_sessions
from apps.sessions.models import LiveSession, ResponseRequest, ToolApproval

pytestmark = pytest.mark.django_db(transaction=True)


def events_of(key: uuid.UUID) -> list[dict]:
    return [json.loads(e.body()) for e in Event.objects.filter(session_key=key).order_by("id")]


def test_transitions_merged_in_one_batch_each_carry_their_own_state():
    key, at = uuid.uuid4(), datetime.now(UTC).timestamp()
    operations = [
        records.session_opened(key=key, model="gpt-realtime", connected_by="token:t", process_id="p", at=at),
        records.session_identified(key=key, upstream_id="sess_batch", instructions="Be kind.", at=at),
        records.request_created(
            key=key, request_id="req_batch", origin="caller", event_id="evt_1", instructions=None,
            metadata=None, conversation=None, requested_by="token:t", at=at,
        ),
        records.request_status(request_id="req_batch", status="sent", at=at + 0.1),
        records.request_status(request_id="req_batch", status="in_progress", at=at + 0.2, response_id="resp_1"),
        records.request_status(
            request_id="req_batch", status="completed", at=at + 0.3, response_id="resp_1", output_text="Hello."
        ),
        records.transcript_final(key=key, entry={"id": "item_1", "role": "agent", "text": "Hello."}, at=at + 0.3),
        records.session_ended(key=key, status="ended", reason="caller_closed", code=None, detail="", at=at + 1),
    ]
    for operation in operations:  # handed over at once: the writer takes them as one batch
        history.submit(operation)
    history.flush_sync()

    events = events_of(key)
    assert [e["type"] for e in events] == [
        "session.opened", "session.live", "request.status", "request.status", "request.status",
        "request.status", "transcript.entry", "session.ended",
    ]
    ids = [e["id"] for e in events]
    assert ids == sorted(ids)
    opened, live = events[0]["session"], events[1]["session"]
    assert opened["status"] == "connecting" and opened["id"] is None
    assert live["status"] == "live" and live["id"] == "sess_batch"
    requests = [e["request"] for e in events if e["type"] == "request.status"]
    assert [r["status"] for r in requests] == ["queued", "sent", "in_progress", "completed"]
    assert requests[0]["sent_at"] is None and requests[0]["response_id"] is None
    assert requests[1]["sent_at"] and requests[1]["started_at"] is None
    assert requests[2]["response_id"] == "resp_1" and requests[2]["output_text"] is None
    assert requests[3]["output_text"] == "Hello." and requests[3]["finished_at"]
    assert events[6]["entry"]["text"] == "Hello." and events[6]["session_id"] == "sess_batch"
    ended = events[7]["session"]
    assert ended["status"] == "ended" and ended["end_reason"] == "caller_closed"
    assert ended["origin_counts"]["caller"] == 1
    assert ended == LiveSession.objects.get(pk=key).to_dict(), "the Session as the REST hook has it"
    assert ended["ended_at"] == datetime.fromtimestamp(at + 1, UTC).isoformat()


def test_a_session_that_fails_before_it_goes_live_ends_with_its_end_time():
    """Opened and failed in one batch (the upstream could not be reached): its `session.ended`
    has the session as it ended, `ended_at` included, not as it was opened."""
    key, at = uuid.uuid4(), datetime.now(UTC).timestamp()
    history.submit(records.session_opened(key=key, model="m", connected_by="t", process_id="p", at=at))
    history.submit(
        records.session_ended(
            key=key, status="failed", reason="upstream_closed", code=1011, detail="refused", at=at + 2
        )
    )
    history.flush_sync()

    opened, ended = (e["session"] for e in events_of(key))
    assert opened["ended_at"] is None
    assert ended["ended_at"] == datetime.fromtimestamp(at + 2, UTC).isoformat(), ended
    assert ended == LiveSession.objects.get(pk=key).to_dict()


def test_the_actor_taking_in_a_stored_request_is_no_transition():
    key, at = uuid.uuid4(), datetime.now(UTC).timestamp()
    history.submit(records.session_opened(key=key, model="m", connected_by="t", process_id="p", at=at))
    history.flush_sync()
    ResponseRequest.objects.create(id="req_stored", session_id=key, origin="api", status="queued")
    history.submit(records.request_status(request_id="req_stored", status=RequestStatus.QUEUED.value, at=at))
    history.flush_sync()
    assert [e["type"] for e in events_of(key)] == ["session.opened"]


def test_a_lost_session_ends_with_its_requests_in_the_log():
    # Judged as of a later time rather than stamped in the past: a Daphne of this process's
    # earlier tests, on the same database, sweeps as of the real time, and would find a
    # heartbeat in the past stale and fail the session itself before this sweep does.
    old = datetime.now(UTC)
    now = old + timedelta(seconds=settings.OC_SESSION_STALE_AFTER + 1)
    session = LiveSession.objects.create(
        upstream_id="sess_lost", model="gpt-realtime", status="live", process_id="elsewhere:1", heartbeat_at=old
    )
    ResponseRequest.objects.create(id="req_lost", session=session, origin="api", status="sent")
    ResponseRequest.objects.create(id="req_done", session=session, origin="api", status="completed")
    assert list(sweep_lost_sessions(now=now)) == ["sess_lost"]
    events = events_of(session.pk)
    assert [e["type"] for e in events] == ["request.status", "session.ended"]
    assert events[0]["request"]["id"] == "req_lost" and events[0]["request"]["status"] == "failed"
    assert events[0]["request"]["error"]["code"] == "session_lost"
    assert events[1]["session"]["status"] == "failed" and events[1]["session"]["end_reason"] == "session_lost"


def test_a_lost_session_expires_its_pending_approvals_in_the_log():
    old = datetime.now(UTC)
    now = old + timedelta(seconds=settings.OC_SESSION_STALE_AFTER + 1)
    session = LiveSession.objects.create(
        upstream_id="sess_lost_tool", model="gpt-realtime", status="live", process_id="elsewhere:1",
        heartbeat_at=old,
    )
    common = {"session": session, "name": "lookup", "server_label": "crm", "arguments": "{}"}
    ToolApproval.objects.create(approval_id="mcpr_waiting", **common)
    ToolApproval.objects.create(approval_id="mcpr_done", status="approved", decided_by="ann", **common)
    assert list(sweep_lost_sessions(now=now)) == ["sess_lost_tool"]
    events = events_of(session.pk)
    assert [e["type"] for e in events] == ["approval.status", "session.ended"]
    approval = events[0]["approval"]
    assert (approval["id"], approval["status"], approval["session_id"]) == (
        "mcpr_waiting", "expired", "sess_lost_tool"
    )
    assert approval["reason"] == UNDECIDED_AT_END and approval["decided_at"] == now.isoformat()


def test_a_request_the_actor_never_took_in_fails_with_the_session_in_the_log():
    """A request stored through another process whose ping came after the session ended: the
    actor never knew it, so the end's safety net fails it, and says so in the log, before the
    session's end, so that a follower of the request is not left waiting at `queued`."""
    key, at = uuid.uuid4(), datetime.now(UTC).timestamp()
    history.submit(
        records.session_opened(key=key, model="m", connected_by="t", process_id="p", at=at)
    )
    history.submit(
        records.session_identified(key=key, upstream_id="sess_net", instructions="", at=at)
    )
    history.flush_sync()
    for request_id, status in (("req_unknown", "queued"), ("req_finished", "completed")):
        ResponseRequest.objects.create(id=request_id, session_id=key, origin="api", status=status)
    history.submit(
        records.session_ended(
            key=key, status="ended", reason="caller_closed", code=None, detail="", at=at + 1
        )
    )
    history.flush_sync()
    events = events_of(key)
    assert [e["type"] for e in events] == [
        "session.opened", "session.live", "request.status", "session.ended",
    ]
    failed = events[2]["request"]
    assert (failed["id"], failed["status"]) == ("req_unknown", "failed")
    assert failed["error"]["code"] == "session_ended" and failed["finished_at"]
    assert events[2]["session_id"] == "sess_net"


# ---------------------------------------------------------------------------- what the writer knows


def _batch(recorder: BatchRecorder, operations: list) -> list[str]:
    """One batch as the history writer runs it, on this thread; what `write` read (SELECTs of
    requests or sessions)."""
    prepared = recorder.prepare(operations)
    with transaction.atomic():
        apply_batch(merge(operations))
        with CaptureQueriesContext(connection) as queries:
            prepared.write()
    prepared.committed()
    tables = (ResponseRequest._meta.db_table, LiveSession._meta.db_table)
    return [
        q["sql"] for q in queries.captured_queries
        if q["sql"].startswith("SELECT") and any(table in q["sql"] for table in tables)
    ]


def _live_session(recorder: BatchRecorder, key: uuid.UUID, at: float) -> None:
    _batch(recorder, [
        records.session_opened(key=key, model="gpt-realtime", connected_by="t", process_id="p", at=at),
        records.session_identified(key=key, upstream_id=f"sess_{key.hex[:8]}", instructions="", at=at),
    ])


def test_a_busy_relays_batches_read_nothing_back_and_each_event_has_its_state():
    recorder, key, at = BatchRecorder(), uuid.uuid4(), datetime.now(UTC).timestamp()
    _live_session(recorder, key, at)
    created = records.request_created(
        key=key, request_id="req_known", origin="caller", event_id="e", instructions=None,
        metadata={"k": "v"}, conversation=None, requested_by="t", at=at,
    )
    sent = records.request_status(request_id="req_known", status="sent", at=at + 0.1)
    first = _batch(recorder, [created, sent])
    started = records.request_status(request_id="req_known", status="in_progress", at=at + 0.2, response_id="r")
    entry = records.transcript_final(key=key, entry={"id": "i", "role": "user", "text": "Hi"}, at=at + 0.2)
    usage = records.usage_changed(key=key, usage={"total_tokens": 12})  # the session's row: no event
    second = _batch(recorder, [started, entry, usage])
    done = records.request_status(request_id="req_known", status="completed", at=at + 0.3, output_text="Yes")
    third = _batch(recorder, [done])

    assert first == second == third == [], "nothing read back"
    events = events_of(key)[2:]
    assert [(e["type"], (e.get("request") or {}).get("status")) for e in events] == [
        ("request.status", "queued"), ("request.status", "sent"), ("request.status", "in_progress"),
        ("transcript.entry", None), ("request.status", "completed"),
    ]
    assert {e["session_id"] for e in events} == {f"sess_{key.hex[:8]}"}
    queued, sent_, started_, _, done_ = (e.get("request") for e in events)
    assert queued["sent_at"] is None and sent_["sent_at"] and started_["response_id"] == "r"
    assert started_["output_text"] is None and done_["output_text"] == "Yes"
    assert done_["metadata"] == {"k": "v"} and done_["finished_at"]
    assert "req_known" not in recorder.known.requests, "an ended request is forgotten"


def test_a_request_stored_elsewhere_is_read_once_then_known():
    recorder, key, at = BatchRecorder(), uuid.uuid4(), datetime.now(UTC).timestamp()
    _live_session(recorder, key, at)
    ResponseRequest.objects.create(
        id="req_api", session_id=key, origin="api", status="queued", instructions="Offer the refund."
    )
    taken_in = records.request_status(request_id="req_api", status="queued", at=at)
    sent = records.request_status(request_id="req_api", status="sent", at=at + 0.1, sent_instructions="x")
    assert len(_batch(recorder, [taken_in, sent])) == 1, "the request, with its session"
    started = records.request_status(request_id="req_api", status="in_progress", at=at + 0.2)
    assert _batch(recorder, [started]) == []
    requests = [e["request"] for e in events_of(key) if e["type"] == "request.status"]
    assert [r["status"] for r in requests] == ["sent", "in_progress"]
    assert requests[0]["instructions"] == "Offer the refund." and requests[0]["started_at"] is None
    assert requests[1]["sent_instructions"] == "x" and requests[1]["started_at"]


def test_an_ended_session_and_a_failed_batch_are_forgotten():
    recorder, at = BatchRecorder(), datetime.now(UTC).timestamp()
    for key in (uuid.uuid4(), uuid.uuid4()):
        _live_session(recorder, key, at)
        _batch(recorder, [
            records.request_created(
                key=key, request_id=f"req_{key.hex}", origin="caller", event_id="e", instructions=None,
                metadata=None, conversation=None, requested_by="t", at=at,
            )
        ])
    assert set(recorder.known.requests) == {f"req_{key.hex}" for key in recorder.known.sessions}
    ended, other = list(recorder.known.sessions)

    _batch(recorder, [
        records.session_ended(key=ended, status="ended", reason="caller_closed", code=None, detail="", at=at + 2)
    ])
    assert set(recorder.known.sessions) == {other} and set(recorder.known.requests) == {f"req_{other.hex}"}
    assert events_of(ended)[-1]["session"]["status"] == "ended"

    prepared = recorder.prepare([records.request_status(request_id=f"req_{other.hex}", status="sent", at=at)])
    prepared.failed()  # as the writer does when the batch's transaction failed
    assert recorder.known.requests == {} and recorder.known.sessions == {}


def test_a_batch_whose_events_cannot_be_prepared_forgets_what_it_would_change(monkeypatch):
    recorder, key, at = BatchRecorder(), uuid.uuid4(), datetime.now(UTC).timestamp()
    _live_session(recorder, key, at)
    assert recorder.known.sessions

    def broken(batch):
        raise ValueError("a bug in the recorder")

    monkeypatch.setattr(recorder, "_prepare", broken)
    assert recorder.prepare([records.request_status(request_id="req_x", status="sent", at=at)]) is None
    assert recorder.known.sessions == {} and recorder.known.requests == {}


def test_a_rotation_is_a_session_updated_with_the_upstream_sessions_so_far():
    """`Session.upstream_sessions` changes at each rotation: the stream says so, as it says
    every other change of a session, with the whole session."""
    key, at = uuid.uuid4(), datetime.now(UTC).timestamp()
    history.submit(records.session_opened(key=key, model="m", connected_by="t", process_id="p", at=at))
    history.submit(records.session_identified(key=key, upstream_id="sess_a", instructions="", at=at))
    history.flush_sync()
    history.submit(records.upstream_sessions(key=key, session_ids=["sess_a", "sess_b"]))
    history.flush_sync()
    events = events_of(key)
    assert [e["type"] for e in events] == ["session.opened", "session.live", "session.updated"]
    updated = events[-1]["session"]
    assert (updated["id"], updated["upstream_sessions"]) == ("sess_a", ["sess_a", "sess_b"])


def test_what_a_held_up_process_writes_late_does_not_undo_the_sweep(monkeypatch):
    """A process held up (paused, or cut off from the database) past the staleness had its
    session swept meanwhile. What its actor handed the writer before it knew (one request
    finished, the next sent) comes after the sweep's record; while its lease has run out, it
    is left out: each request stays `failed`, with one final event, the sweep's."""
    key, at = uuid.uuid4(), datetime.now(UTC).timestamp()
    for operation in [
        records.session_opened(key=key, model="m", connected_by="t", process_id="p", at=at),
        records.session_identified(key=key, upstream_id="sess_late", instructions="", at=at),
        *[
            records.request_created(
                key=key, request_id=request_id, origin="api", event_id="", instructions=None,
                metadata=None, conversation=None, requested_by="token:t", at=at,
            )
            for request_id in ("req_late_done", "req_late_next")
        ],
        records.request_status(request_id="req_late_done", status="sent", at=at),
        records.request_status(
            request_id="req_late_done", status="in_progress", at=at, response_id="resp_1"
        ),
    ]:
        history.submit(operation)
    history.flush_sync()  # the writer now knows both requests as it left them
    stamped = datetime.now(UTC)
    LiveSession.objects.filter(pk=key).update(heartbeat_at=stamped, process_id="elsewhere:1")
    now = stamped + timedelta(seconds=settings.OC_SESSION_STALE_AFTER + 1)
    assert list(sweep_lost_sessions(now=now)) == ["sess_late"]

    monkeypatch.setattr(history, "doubtful", lambda: True)  # the process's lease has run out
    history.submit(
        records.request_status(
            request_id="req_late_done", status="completed", at=at + 1, response_id="resp_1",
            output_text="Done.",
        )
    )
    history.submit(records.request_status(request_id="req_late_next", status="sent", at=at + 1))
    history.flush_sync()

    for request_id in ("req_late_done", "req_late_next"):
        row = ResponseRequest.objects.get(pk=request_id)
        assert (row.status, row.error_code) == ("failed", "session_lost"), request_id
        seen = [
            e["request"]["status"] for e in events_of(key)
            if e["type"] == "request.status" and e["request"]["id"] == request_id
        ]
        assert seen[-1] == "failed" and sum(s in ResponseRequest.TERMINAL for s in seen) == 1, seen


def test_a_write_that_reaches_the_database_after_the_sweep_leaves_a_final_status_alone():
    """A write on its way when the process's connection stalled (a request taken in
    `queued`) reaches the database after the sweep failed the request, so nothing could leave
    it out beforehand: the row keeps its final status, while the same write moves a request
    that is not over."""
    session = LiveSession.objects.create(upstream_id="sess_stalled", model="m", status="failed")
    ResponseRequest.objects.create(id="req_swept", session=session, origin="api", status="failed")
    ResponseRequest.objects.create(id="req_going", session=session, origin="api", status="queued")
    with transaction.atomic():
        apply_batch([
            records.request_status(request_id=request_id, status="sent", at=1.0)
            for request_id in ("req_swept", "req_going")
        ])
    statuses = dict(ResponseRequest.objects.values_list("id", "status"))
    assert statuses == {"req_swept": "failed", "req_going": "sent"}
