"""Database work from async code: on this process's own threads, one SQLite writer at a time.

`db_async`: `channels.db.database_sync_to_async` runs the work on the current request's
thread. Under Django's ASGI handler that is a thread started for each HTTP request, and with
it a new Django connection object (connections are per thread) whose helpers hold reference
cycles: per REST call, a thread start and cyclic garbage for the collector.

`db_async` runs it on a pool of `THREADS` threads that last as long as the process. Every call
is self-contained (its own transaction, if any), so nothing relies on the calling thread. On
PostgreSQL each call gives its connection back to Django's pool at the end (`CONN_MAX_AGE` 0).
On SQLite, which has no pool, each of these threads keeps its connection for the life of the
process: opening one costs more CPU than most calls' queries (SQLite reads the whole schema
again), and a process made that many times a second (bench/RESULTS.md). A request's own
thread still closes its connection when the request ends, as Django does.

`serialised_write`: SQLite lets one connection write at a time; a second one waits in
SQLite's busy handler, which sleeps 1, 2, 5, … up to 100 ms between tries with no queue, so
under load an unlucky writer starves (REST writes were seen waiting behind the history
writer's batches). Writers of this process take this lock first and queue in Python instead;
the lock is held only for the transaction, and a turn not had within SQLite's busy timeout is
the database being busy (`WriteTurnTimeout`). Other databases lock rows and need none of this.

`log_failure`: a background loop's round that failed, logged. The database being away (a
restart, a failover, every pooled connection taken) is nobody's bug and passes: a warning
line, as the pages' 503 has, and the next round tries again; anything else is a bug, logged
with its traceback.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import SyncToAsync
from django.db import InterfaceError, OperationalError, close_old_connections, connection

# At most this many database calls of this process at once; the rest queue here, not in the
# PostgreSQL pool (whose `max_size` is 16). Each thread that allocates gets a malloc arena of
# its own, which keeps what it once held: more threads, more memory per relayed session.
THREADS = 4

_executor = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="oc-db")

AWAY = (OperationalError, InterfaceError)


def is_database_away(exception: BaseException) -> bool:
    """Whether `exception` says the database cannot be reached (psycopg's pool timing out
    included), not that the work was wrong."""
    return isinstance(exception, AWAY)


class WriteTurnTimeout(OperationalError):
    """`serialised_write` waited out SQLite's busy timeout for this process's turn to write."""


def is_database_busy(exception: BaseException) -> bool:
    """Whether `exception` says another connection kept SQLite's write lock past the busy
    timeout (a backup, another process's long transaction): the database answers reads, and
    the write is not at fault; it goes once the lock is let go."""
    if isinstance(exception, WriteTurnTimeout):
        return True
    cause = exception.__cause__
    return isinstance(cause, sqlite3.OperationalError) and (
        getattr(cause, "sqlite_errorcode", 0) & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    )


def log_failure(logger: logging.Logger, message: str, exception: BaseException) -> None:
    """A round of background work failed with `exception`; the next round tries again."""
    if is_database_away(exception):
        logger.warning("%s: the database is unavailable: %s", message, exception)
    else:
        logger.error(message, exc_info=exception)


class _OnDatabaseThread(SyncToAsync):
    """`channels.db.DatabaseSyncToAsync`, except that SQLite's connection is kept."""

    def thread_handler(self, loop, *args, **kwargs):
        _tidy_connection()
        try:
            return super().thread_handler(loop, *args, **kwargs)
        finally:
            _tidy_connection()


def _tidy_connection() -> None:
    if connection.vendor == "sqlite":
        if connection.in_atomic_block:  # a call left a transaction open: never carry it over
            connection.close()
    else:
        close_old_connections()


def db_async(function: Callable[..., Any]) -> Callable[..., Any]:
    """`function` as a coroutine function running on the database threads."""
    return _OnDatabaseThread(function, thread_sensitive=False, executor=_executor)


_write_lock = threading.Lock()


def busy_timeout() -> float:
    """Seconds SQLite waits for another connection's write lock (Django's `timeout` option)."""
    return float(connection.settings_dict.get("OPTIONS", {}).get("timeout", 5.0))


@contextlib.contextmanager
def serialised_write() -> Iterator[None]:
    if connection.vendor != "sqlite":
        yield
        return
    # Bounded as SQLite's own wait is: while another connection keeps the database locked,
    # each writer ahead of this one waits out the busy timeout, and an unbounded turn would
    # add up their waits (a REST call answered long after its client gave up).
    if not _write_lock.acquire(timeout=busy_timeout()):
        raise WriteTurnTimeout("database is locked: this process's other writes are waiting")
    try:
        yield
    finally:
        _write_lock.release()
