"""Database work from async code: on this process's own threads, one SQLite writer at a time.

`db_async`: `channels.db.database_sync_to_async` runs the work on the current request's
thread. Under Django's ASGI handler that is a thread started for each HTTP request, and with
it a new Django connection object (connections are per thread) whose helpers hold reference
cycles: per REST call, a thread start and cyclic garbage for the collector.

`db_async` runs it on a pool of `THREADS` threads that last as long as the process. Each call
still closes its connection at the end (`CONN_MAX_AGE` 0): back to the pool on PostgreSQL,
closed on SQLite, as before. Every call is self-contained (its own transaction, if any), so
nothing relies on the calling thread.

`serialised_write`: SQLite lets one connection write at a time; a second one waits in
SQLite's busy handler, which sleeps 1, 2, 5, … up to 100 ms between tries with no queue, so
under load an unlucky writer starves (REST writes were seen waiting behind the history
writer's batches). Writers of this process take this lock first and queue in Python instead;
the lock is held only for the transaction. Other databases lock rows and need none of this.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from channels.db import DatabaseSyncToAsync
from django.db import connection

# At most this many database calls of this process at once; the rest queue here, not in the
# PostgreSQL pool (whose `max_size` is 16). Each thread that allocates gets a malloc arena of
# its own, which keeps what it once held: more threads, more memory per relayed session.
THREADS = 4

_executor = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="oc-db")


def db_async(function: Callable[..., Any]) -> Callable[..., Any]:
    """`function` as a coroutine function running on the database threads."""
    return DatabaseSyncToAsync(function, thread_sensitive=False, executor=_executor)


_write_lock = threading.Lock()


@contextlib.contextmanager
def serialised_write() -> Iterator[None]:
    if connection.vendor != "sqlite":
        yield
        return
    with _write_lock:
        yield
