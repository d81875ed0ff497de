"""Helpers for driving Realtime clients in tests (bounded in time, always)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


async def collect_until(conn, stop: Callable[[Any, list], bool], timeout: float = 10.0) -> list:
    """Receive SDK events until `stop(event, so_far)` is true; every event is kept."""
    seen: list = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out; saw {[e.type for e in seen]}")
        event = await asyncio.wait_for(conn.recv(), remaining)
        seen.append(event)
        if stop(event, seen):
            return seen


def count(kind: str) -> Callable[[Any, list], bool]:
    """Stop once `n` events of a type were seen: count('response.done')(n)."""

    def until(n: int):
        return lambda event, seen: sum(e.type == kind for e in seen) >= n

    return until


def user_text(text: str) -> dict:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


async def eventually(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02):
    """Poll a sync predicate (it may use the ORM) until it is truthy; return its value."""
    from asgiref.sync import sync_to_async

    call = sync_to_async(predicate)
    deadline = time.monotonic() + timeout
    while True:
        value = await call()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)
