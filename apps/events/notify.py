"""Wake this process's event streams and webhook worker at once when events are committed
here (by the history writer's thread or a submit on a database thread). Other processes'
events are found by polling."""

from __future__ import annotations

import threading
import weakref
from typing import Protocol


class Listener(Protocol):
    def wake_threadsafe(self) -> None: ...


_listeners: weakref.WeakSet = weakref.WeakSet()
_lock = threading.Lock()


def listen(listener: Listener) -> None:
    with _lock:
        _listeners.add(listener)


def committed() -> None:
    """Events were committed in this process: any thread may call this."""
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        listener.wake_threadsafe()
