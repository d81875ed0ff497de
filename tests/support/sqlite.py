"""How much work SQLite did: a measure of a read's cost that a fast machine does not shrink."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection

EVERY = 10  # instructions between two calls of the handler


@contextmanager
def sqlite_steps() -> Iterator[list[int]]:
    """Count the virtual-machine instructions SQLite runs on this thread's connection inside
    the block (in units of EVERY): yields a one-item list that holds the count afterwards.
    A query that reads a table row by row runs instructions for every row it reads."""
    connection.ensure_connection()
    raw = connection.connection
    steps = [0]

    def step() -> int:
        steps[0] += 1
        return 0  # go on

    raw.set_progress_handler(step, EVERY)
    try:
        yield steps
    finally:
        raw.set_progress_handler(None, EVERY)
