"""`log_failure`: how the background rounds (housekeeping, webhooks, the event log, the
dashboard feed) report a round that failed. The end to end case is in
tests/scaleout/test_database_outage.py."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import InterfaceError, OperationalError

from apps.sessions import db
from apps.sessions.db import log_failure

log = logging.getLogger("tests.sessions.db")


def test_a_database_that_is_away_is_a_warning_line_without_a_traceback(caplog):
    away = [
        OperationalError("couldn't get a connection after 10.00 sec"),  # the pool waited
        InterfaceError("connection already closed"),
    ]
    with caplog.at_level(logging.WARNING, logger=log.name):
        for exception in away:
            log_failure(log, "webhook round failed", exception)
    assert [(r.levelno, r.exc_info, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, None, f"webhook round failed: the database is unavailable: {exception}")
        for exception in away
    ]


def test_any_other_failure_is_an_error_with_its_traceback(caplog):
    try:
        {}["missing"]
    except KeyError as exc:
        failure = exc
    with caplog.at_level(logging.WARNING, logger=log.name):
        log_failure(log, "webhook round failed", failure)
    [record] = caplog.records
    assert (record.levelno, record.getMessage()) == (logging.ERROR, "webhook round failed")
    assert record.exc_info[1] is failure
    assert "Traceback" in caplog.text


def test_a_writer_waits_for_its_turn_no_longer_than_sqlite_would_for_the_lock(monkeypatch):
    """While another connection keeps SQLite locked, each writer of this process waits out the
    busy timeout in turn: queued behind others, a REST hook's nudge answered only after all of
    them (50 s for the second of two), when its client had given up, and was carried out then.
    Its turn is bounded like SQLite's own wait, and not getting it is the database being busy
    (a 503 for the REST hook, a wait for the history writer)."""
    monkeypatch.setattr(db, "busy_timeout", lambda: 0.05)

    def write() -> None:
        with db.serialised_write():
            pass

    with ThreadPoolExecutor(1) as pool, db.serialised_write():  # a writer stuck on the lock
        turn = pool.submit(write)
        with pytest.raises(OperationalError) as raised:
            turn.result(timeout=5)
    assert db.is_database_busy(raised.value)
