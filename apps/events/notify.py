"""Tell this process's event streams and webhook worker at once when events are committed
here (by the history writer's thread or a submit on a database thread). Other processes'
events are found by polling.

The committing thread passes the events it wrote, ids set, as `(id, session_key, type,
payload)` rows: the streams hand them out without reading them back (see `stream.Hub`)."""

from __future__ import annotations

import threading
import uuid
import weakref
from collections.abc import Iterable, Sequence
from typing import Protocol

# An event as the log holds it: (id, session_key, type, payload).
Row = tuple[int, uuid.UUID, str, str]


class Listener(Protocol):
    def committed_threadsafe(self, rows: Sequence[Row]) -> None: ...


_listeners: weakref.WeakSet = weakref.WeakSet()
_lock = threading.Lock()


def listen(listener: Listener) -> None:
    with _lock:
        _listeners.add(listener)


def rows_of(events: Iterable) -> list[Row]:
    """The rows of committed `Event`s (their ids are set by `create`/`bulk_create`)."""
    return [(e.id, e.session_key, e.type, e.payload) for e in events if e.id is not None]


def committed(rows: Sequence[Row] = ()) -> None:
    """Events were committed in this process: any thread may call this, with the rows it
    wrote when it has them (in id order)."""
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        listener.committed_threadsafe(rows)
