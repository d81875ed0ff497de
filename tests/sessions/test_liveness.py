"""Ownership and liveness: a process that dies leaves sessions that another process fails,
with every pending request, within 15 s (issue 5). Two real Daphne processes on one database."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import websockets
from django.db import connection

from apps.sessions.housekeeping import sweep_lost_sessions
from apps.sessions.models import LiveSession, ResponseRequest
from tests.conftest import UPSTREAM_KEY
from tests.support.realtime import eventually, user_text
from tests.support.servers import start_side_by_side

pytestmark = pytest.mark.django_db(transaction=True)


def judged_later(settings) -> tuple[datetime, datetime]:
    """(`now`, `later`): a heartbeat stamped `now` is stale for a sweep judging as of `later`.

    The tests below sweep as of `later` rather than stamp heartbeats in the past: a Daphne that
    earlier tests of this process started serves the same database, and its own sweep (every
    few seconds, as of the real time) would otherwise fail the test's stale rows itself
    between the test's write and its sweep; to it, a heartbeat stamped `now` is fresh."""
    now = datetime.now(UTC)
    return now, now + timedelta(seconds=settings.OC_SESSION_STALE_AFTER + 1)


@pytest.fixture
def two_processes(simulator, transactional_db):
    env = {
        "OC_UPSTREAM_URL": simulator.url,
        "OPENAI_API_KEY": UPSTREAM_KEY,
        "DATABASE_URL": f"sqlite:///{os.path.abspath(connection.settings_dict['NAME'])}",
    }
    a, b = start_side_by_side(env, env)
    yield a, b
    a.stop()
    b.stop()


@pytest.mark.e2e
async def test_kill_9_of_the_holding_process_fails_its_session_and_requests_within_15_s(
    two_processes, simulator, api_token
):
    a, b = two_processes
    with simulator.configured(delta_interval=0.5):
        socket = await websockets.connect(
            f"{a.ws_base}/realtime?model=gpt-realtime", additional_headers={"Authorization": f"Bearer {api_token}"}
        )
        session_id = json.loads(await socket.recv())["session"]["id"]
        await socket.send(json.dumps({"type": "conversation.item.create", "item": user_text("hi")}))
        for n in range(3):
            await socket.send(json.dumps({"type": "response.create", "event_id": f"evt_{n}"}))
        await eventually(lambda: LiveSession.objects.filter(upstream_id=session_id, status="live").exists())
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {api_token}"}) as rest:
            nudge = await rest.post(f"{b.http_url}/api/v1/sessions/{session_id}/responses", json={})
            assert nudge.status_code == 202  # stored through B, for the session A holds
        await eventually(lambda: ResponseRequest.objects.filter(session__upstream_id=session_id).count() == 4)
        pending = await eventually(
            lambda: ResponseRequest.objects.filter(session__upstream_id=session_id, status="in_progress").exists()
        )
        assert pending

        a.proc.kill()  # SIGKILL: no cleanup, no close frames, no last words
        killed = time.monotonic()
        session = await eventually(
            lambda: LiveSession.objects.filter(upstream_id=session_id, status="failed").first(), timeout=20
        )
        took = time.monotonic() - killed
        await socket.close()

    assert took <= 15.0, f"the session was failed {took:.1f} s after its process died"
    assert session.end_reason == "session_lost"
    requests = [r async for r in ResponseRequest.objects.filter(session=session)]
    assert len(requests) == 4
    assert {(r.status, r.error_code) for r in requests} == {("failed", "session_lost")}, [
        (r.origin, r.status, r.error_code) for r in requests
    ]


def test_the_sweep_spares_fresh_heartbeats_and_its_own_sessions(transactional_db, settings):
    from apps.sessions.process import PROCESS_ID

    old, now = judged_later(settings)
    rows = {
        "sess_dead": dict(process_id="elsewhere:1", heartbeat_at=old),
        "sess_fresh": dict(process_id="elsewhere:2", heartbeat_at=now),
        "sess_mine": dict(process_id=PROCESS_ID, heartbeat_at=old),
        "sess_ended": dict(process_id="elsewhere:1", heartbeat_at=old, status="ended"),
    }
    for upstream_id, fields in rows.items():
        session = LiveSession.objects.create(
            upstream_id=upstream_id, model="gpt-realtime", status=fields.pop("status", "live"), **fields
        )
        ResponseRequest.objects.create(id=f"req_{upstream_id}", session=session, origin="api", status="queued")
    assert list(sweep_lost_sessions(now=now)) == ["sess_dead"]
    assert not sweep_lost_sessions(now=now), "a session is failed once"
    statuses = dict(LiveSession.objects.values_list("upstream_id", "status"))
    assert statuses == {"sess_dead": "failed", "sess_fresh": "live", "sess_mine": "live", "sess_ended": "ended"}
    assert ResponseRequest.objects.get(id="req_sess_dead").error_code == "session_lost"
    assert ResponseRequest.objects.get(id="req_sess_fresh").status == "queued"


@pytest.mark.parametrize("kind", ["relay", "webrtc", "sip"])
def test_a_lost_session_is_worded_for_what_the_console_held(transactional_db, settings, kind):
    """A relayed session is lost with its process; an attached call only lost its sideband:
    the call itself may go on between the caller and the model, and its record says so (the
    session page, the admin and the requests' errors all read it)."""
    from apps.realtime.relay import LOST_CALL
    from apps.sessions.housekeeping import LOST

    old, now = judged_later(settings)
    session = LiveSession.objects.create(
        upstream_id=f"sess_lost_{kind}", model="gpt-realtime", status="live", kind=kind,
        process_id="elsewhere:1", heartbeat_at=old,
    )
    ResponseRequest.objects.create(
        id=f"req_lost_{kind}", session=session, origin="api", status="queued"
    )
    lost = sweep_lost_sessions(now=now)
    said = LOST if kind == "relay" else LOST_CALL
    session.refresh_from_db()
    assert (session.end_reason, session.end_detail, lost[session.upstream_id].detail) == (
        "session_lost", said, said
    )
    assert ResponseRequest.objects.get(id=f"req_lost_{kind}").error_message == said
    if kind != "relay":
        assert "the call itself may have gone on" in session.end_summary


def test_a_late_end_from_a_held_up_holder_leaves_the_sweeps_record_standing(
    transactional_db, settings
):
    from apps.sessions import records

    old, now = judged_later(settings)
    session = LiveSession.objects.create(
        upstream_id="sess_held_up", model="gpt-realtime", status="live",
        process_id="elsewhere:1", heartbeat_at=old,
    )
    assert list(sweep_lost_sessions(now=now)) == ["sess_held_up"]
    swept = LiveSession.objects.get(pk=session.pk)
    # The holder resumes and ends the session itself, as its caller left meanwhile.
    records.session_ended(
        key=session.pk, status="ended", reason="caller_closed", code=None, detail="", at=time.time()
    )()
    after = LiveSession.objects.get(pk=session.pk)
    assert (after.status, after.end_reason, after.end_detail, after.ended_at) == (
        "failed", "session_lost", swept.end_detail, swept.ended_at,
    )


def test_a_restarted_process_whose_host_and_pid_repeat_sweeps_its_predecessors_sessions(
    transactional_db, settings
):
    """A container restarted after a SIGKILL (an OOM kill) keeps its hostname, and its server
    often gets the same pid again (pid 1, say). The sessions the killed process held are not
    the new process's own: with no other process alive, only its sweep can end them."""
    import os
    import socket

    old, now = judged_later(settings)
    predecessor = f"{socket.gethostname()}:{os.getpid()}"
    session = LiveSession.objects.create(
        upstream_id="sess_before_restart", model="gpt-realtime", status="live",
        process_id=predecessor, heartbeat_at=old,
    )
    ResponseRequest.objects.create(
        id="req_before_restart", session=session, origin="api", status="queued"
    )
    assert list(sweep_lost_sessions(now=now)) == ["sess_before_restart"]
    session.refresh_from_db()
    assert (session.status, session.end_reason) == ("failed", "session_lost")


async def test_after_losing_the_database_a_process_judges_no_heartbeat_for_a_while(
    transactional_db, settings, monkeypatch
):
    """While the database was away no holder could write its heartbeat: a process whose sweep
    failed then judges none until it has had the database back for OC_SESSION_STALE_AFTER,
    or it would fail every live session of the others the moment the database returned."""
    from django.db import OperationalError

    from apps.sessions import housekeeping as module

    settings.OC_HEARTBEAT_INTERVAL, settings.OC_SESSION_STALE_AFTER = 0.5, 1.0
    # Stale for this test's 1 s, fresh for the 10 s of a Daphne of this process's earlier
    # tests that serves the same database (its sweep would otherwise fail the row first).
    old = datetime.now(UTC) - timedelta(seconds=2)
    await LiveSession.objects.acreate(
        upstream_id="sess_other", model="gpt-realtime", status="live",
        process_id="elsewhere:1", heartbeat_at=old,
    )
    keeper = module.Housekeeping()

    def away(**kwargs):
        raise OperationalError("the database is away")

    monkeypatch.setattr(module, "sweep_lost_sessions", away)
    with pytest.raises(OperationalError):
        await keeper.sweep()
    monkeypatch.undo()
    assert await keeper.sweep() == [], "judged at once when the database came back"
    assert (await LiveSession.objects.aget(upstream_id="sess_other")).status == "live"
    await asyncio.sleep(1.1)
    assert await keeper.sweep() == ["sess_other"], "judged once the database has been back a while"


async def test_holding_process_keeps_its_sessions_fresh(relay_settings, simulator, api_token, settings):
    """An actor's process stamps its session's heartbeat while the session lives."""
    from channels.testing import WebsocketCommunicator

    from operator_console.asgi import application

    settings.OC_HEARTBEAT_INTERVAL = 0.1
    communicator = WebsocketCommunicator(
        application, "/v1/realtime", headers=[(b"authorization", f"Bearer {api_token}".encode())]
    )
    assert (await communicator.connect(timeout=5))[0]
    session_id = (await communicator.receive_json_from(timeout=5))["session"]["id"]
    first = await eventually(
        lambda: LiveSession.objects.filter(upstream_id=session_id).values_list("heartbeat_at", flat=True).first()
    )
    # The next beat is the proof: the stamp moves on.
    await eventually(
        lambda: LiveSession.objects.filter(upstream_id=session_id, heartbeat_at__gt=first).exists()
    )
    await communicator.disconnect()


class Held:
    """A holder as the housekeeping keeps it (an actor), by its key alone."""

    def __init__(self, key) -> None:
        self.key = key


async def test_a_lease_run_out_asks_the_table_once_an_interval_and_a_beat_renews_it(
    transactional_db, settings, monkeypatch
):
    """A process held up longer than a sweep could wait (its lease run out) asks the table
    whether its sessions were swept before its actors handle anything more: once a heartbeat
    interval, the answer shared by every actor; a heartbeat that stamps them all renews it."""
    from apps.sessions import housekeeping as module
    from apps.sessions.history import writer as history

    settings.OC_HEARTBEAT_INTERVAL, settings.OC_SESSION_STALE_AFTER = 0.2, 1.0
    old = datetime.now(UTC) - timedelta(seconds=5)
    swept = await LiveSession.objects.acreate(
        upstream_id="sess_lease_swept", model="gpt-realtime", status="failed",
        end_reason="session_lost", process_id="here:1", heartbeat_at=old,
    )
    kept = await LiveSession.objects.acreate(
        upstream_id="sess_lease_kept", model="gpt-realtime", status="live",
        process_id="here:1", heartbeat_at=old,
    )
    keeper = module.Housekeeping()
    for row in (swept, kept):
        keeper.holders[row.pk] = Held(row.pk)
    lease = keeper.lease
    assert not lease.expired(), "a new process's lease runs a staleness from its start"

    asked = []
    real = module._swept
    monkeypatch.setattr(module, "_swept", lambda keys: asked.append(keys) or real(keys))
    lease.until = time.monotonic() - 1  # held up (SIGSTOP) past what a sweep waits
    assert lease.expired()
    answers = await asyncio.gather(
        lease.swept(swept.pk), lease.swept(kept.pk), lease.swept(swept.pk)
    )
    assert answers == [True, False, True]
    assert len(asked) == 1, "the actors share one question"
    assert await lease.swept(swept.pk) and len(asked) == 1, "asked again only an interval on"
    await asyncio.sleep(0.25)
    assert await lease.swept(swept.pk) and len(asked) == 2

    # A beat that finds a held session swept does not renew: its actor must learn it first.
    await keeper.heartbeat()
    await history.flush()
    assert lease.expired()
    # Once the swept session's actor is gone, the next beat stamps every session held.
    del keeper.holders[swept.pk]
    await keeper.heartbeat()
    await history.flush()
    assert not lease.expired()
    assert lease.until > time.monotonic() + 0.5


async def test_a_lease_whose_question_fails_lets_the_sessions_go_on(
    transactional_db, settings, monkeypatch
):
    """The table cannot be asked (the database is away): nothing can be known, and a call is
    not stopped for an outage; it is asked again an interval on."""
    from django.db import OperationalError

    from apps.sessions import housekeeping as module

    settings.OC_HEARTBEAT_INTERVAL, settings.OC_SESSION_STALE_AFTER = 0.2, 1.0
    keeper = module.Housekeeping()
    key = uuid.uuid4()
    keeper.holders[key] = Held(key)

    def away(keys):
        raise OperationalError("the database is away")

    monkeypatch.setattr(module, "_swept", away)
    keeper.lease.until = time.monotonic() - 1
    assert await keeper.lease.swept(key) is False


async def test_a_lease_is_not_renewed_before_the_writes_handed_in_earlier(
    transactional_db, settings
):
    """A process whose swept sessions have ended holds none, but the writes its actors handed
    in before they knew may still wait for the database: the lease is renewed only after
    them, so that the writer leaves out what they would change of the sweep's record."""
    import threading

    from apps.sessions import housekeeping as module
    from apps.sessions.history import writer as history

    settings.OC_HEARTBEAT_INTERVAL, settings.OC_SESSION_STALE_AFTER = 0.2, 1.0
    keeper = module.Housekeeping()
    keeper.lease.until = time.monotonic() - 1  # held up past what a sweep waits
    released = threading.Event()
    history.submit(lambda: released.wait(10))  # a late write, waiting for the database
    try:
        assert await keeper.heartbeat() == 0
        assert keeper.lease.expired(), "renewed before the late write was written"
    finally:
        released.set()
    await history.flush()
    assert not keeper.lease.expired()


async def test_a_lease_whose_question_does_not_answer_lets_the_sessions_go_on(
    transactional_db, settings, monkeypatch
):
    """The database is away and the question waits for a connection (the pool waits up to
    its timeout): the actors wait for it no longer than `_PATIENCE`, together, and go on; the
    answer, once it comes, is used."""
    import threading

    from apps.sessions import housekeeping as module

    settings.OC_HEARTBEAT_INTERVAL, settings.OC_SESSION_STALE_AFTER = 0.2, 1.0
    keeper = module.Housekeeping()
    key = uuid.uuid4()
    keeper.holders[key] = Held(key)
    answer = threading.Event()

    def stalled(keys):
        answer.wait(10)
        return keys  # swept, as the table says once it answers

    monkeypatch.setattr(module, "_swept", stalled)
    keeper.lease.until = time.monotonic() - 1
    started = time.monotonic()
    try:
        asked = [keeper.lease.swept(key) for _ in range(3)]
        assert await asyncio.wait_for(asyncio.gather(*asked), 5) == [False] * 3
        assert time.monotonic() - started < module._PATIENCE + 1, "held up past the patience"
        assert await keeper.lease.swept(key) is False, "a later input does not wait again"
    finally:
        answer.set()
    await eventually(lambda: key in keeper.lease._swept)
    assert await keeper.lease.swept(key) is True
