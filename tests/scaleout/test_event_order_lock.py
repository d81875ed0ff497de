"""The event log's order lock on a real PostgreSQL: two transactions that write events and
touch the same session, interleaved as they were when the soak deadlocked, both commit.

A submit holds its session's row and stores a request; the history writer, meanwhile, inserts
a request of that session and then writes its events. Django's foreign keys are deferred to
the commit on PostgreSQL, so without `lock_event_order` running those checks before it takes
the lock, the writer held the lock at its commit while waiting for the session row, and the
submit held the row while waiting for the lock: PostgreSQL aborted one of them."""

from __future__ import annotations

import json

from tests.scaleout.conftest import manage

SCRIPT = r"""
import json, threading, uuid
from django.db import connection, transaction
from apps.events.models import Event
from apps.events.recorder import lock_event_order
from apps.sessions.models import LiveSession, ResponseRequest

session = LiveSession.objects.create(upstream_id=f"sess_lock_{uuid.uuid4().hex}", status="live")
row_held, lock_taken = threading.Event(), threading.Event()
errors = {}


def request():
    return ResponseRequest(id=f"req_{uuid.uuid4().hex}", session=session, origin="api", status="queued")


def event():
    return Event(type="request.status", session_key=session.pk, session_id=session.upstream_id, payload="{}")


def submit():  # as services._request_store_locked: the session's row first, events last
    try:
        with transaction.atomic():
            # FOR UPDATE, the strongest row lock (the service takes FOR NO KEY UPDATE): here
            # only lock_event_order stands between the two and the deadlock.
            LiveSession.objects.select_for_update().get(pk=session.pk)
            request().save(force_insert=True)
            row_held.set()
            lock_taken.wait(3)  # the writer takes the lock while this holds the row
            lock_event_order()
            event().save(force_insert=True)
    except Exception as exc:
        errors["submit"] = repr(exc)
    finally:
        row_held.set()
        connection.close()


def history_batch():  # as HistoryWriter._apply: the batch's rows, then its events
    try:
        row_held.wait(3)
        with transaction.atomic():
            request().save(force_insert=True)
            lock_event_order()
            lock_taken.set()
            event().save(force_insert=True)
    except Exception as exc:
        errors["history"] = repr(exc)
    finally:
        lock_taken.set()
        connection.close()


threads = [threading.Thread(target=submit), threading.Thread(target=history_batch)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join(30)
print(json.dumps({
    "alive": [t.is_alive() for t in threads],
    "errors": errors,
    "requests": ResponseRequest.objects.filter(session=session).count(),
    "events": Event.objects.filter(session_key=session.pk).count(),
}))
"""


def test_a_submit_and_a_history_batch_on_one_session_both_commit(scaleout_db):
    out = json.loads(manage(scaleout_db.url, "shell", "-c", SCRIPT).strip().splitlines()[-1])
    assert out["alive"] == [False, False]
    assert out["errors"] == {}, "one of the two transactions was aborted"
    assert (out["requests"], out["events"]) == (2, 2)
