"""One writer at a time per process, for SQLite.

SQLite lets one connection write at a time; a second one waits in SQLite's busy handler,
which sleeps 1, 2, 5, … up to 100 ms between tries with no queue, so under load an unlucky
writer starves (measured: REST writes waiting over a second behind the history writer's
batches). Writers of this process take this lock first and queue in Python instead; the
lock is held only for the transaction. Other databases lock rows and need none of this.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from django.db import connection

_lock = threading.Lock()


@contextlib.contextmanager
def serialised_write() -> Iterator[None]:
    if connection.vendor != "sqlite":
        yield
        return
    with _lock:
        yield
