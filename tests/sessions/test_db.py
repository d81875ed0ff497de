"""`log_failure`: how the background rounds (housekeeping, webhooks, the event log, the
dashboard feed) report a round that failed. The end to end case is in
tests/scaleout/test_database_outage.py."""

from __future__ import annotations

import logging

from django.db import InterfaceError, OperationalError

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
