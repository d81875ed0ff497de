"""Caps on what one credential holds open at once in this process: event streams per API
token (`OC_MAX_STREAMS_PER_TOKEN`), listen-in sockets per operator
(`OC_MAX_LISTENERS_PER_USER`), so that a leaked token or a runaway script cannot take a
process's memory and CPU. Each process counts its own: behind a load balancer, N processes
allow up to N times as many.
"""

from __future__ import annotations

import weakref
from collections.abc import Hashable


class PerKeyCap:
    """Holders per key (a token's id, a user's id), at most `limit` at once.

    A holder is given back with `release`, in a `finally` or a disconnect handler. Holders are
    also held weakly: one that is dropped without being given back (a stream whose answer was
    never sent, as a HEAD's; a consumer cancelled before its disconnect ran) stops counting
    once it is collected, so no way out can keep a place taken for ever."""

    def __init__(self) -> None:
        self._held: dict[Hashable, weakref.WeakSet] = {}

    def take(self, key: Hashable, holder: object, limit: int) -> bool:
        """Count `holder` under `key`; False (and not counted) when `key` has `limit` already."""
        held = self._held.setdefault(key, weakref.WeakSet())
        if len(held) >= limit:
            return False
        held.add(holder)
        return True

    def release(self, key: Hashable, holder: object) -> None:
        held = self._held.get(key)
        if held is None:
            return
        held.discard(holder)
        if not held:
            del self._held[key]

    def count(self, key: Hashable) -> int:
        held = self._held.get(key)
        return 0 if held is None else len(held)
