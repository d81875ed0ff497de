"""The legs of a live session, as its actor drives them (see `apps/sessions/actor.py`).

- The caller leg: whatever the caller's frames go to. `RelayConsumer` is one (the socket of
  `/v1/realtime`); a session steered through a sideband has none.
- The mailbox: what the legs (and everything else) put for the actor, in order.
- The upstream leg: an open Realtime connection and the task that reads it, putting each frame
  (text as `str`, binary as `bytes`) and finally its close on the actor's mailbox, each tagged
  with the leg it came from, so that the actor can drop what a leg it has replaced still sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any, Protocol

from websockets.exceptions import ConnectionClosed

log = logging.getLogger(__name__)

UPSTREAM_FRAME = "upstream.frame"
UPSTREAM_CLOSED = "upstream.closed"


class Mailbox:
    """A FIFO with one reader: a deque and at most one waiting future (the actor is its only
    reader, so it needs none of asyncio.Queue's bookkeeping on every frame)."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[tuple[str, Any, Any]] = deque()
        self._waiter: asyncio.Future | None = None

    def put(self, item: tuple[str, Any, Any]) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> tuple[str, Any, Any]:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


class Caller(Protocol):
    """The caller leg, as the actor sees it (`RelayConsumer` is one)."""

    async def send_frame(self, frame: str | bytes) -> None: ...

    async def close_with(self, code: int, reason: str) -> None: ...


class UpstreamLeg:
    """An open upstream connection and the task that reads it into the actor's mailbox."""

    def __init__(self, connection: Any, mailbox: Mailbox, name: str) -> None:
        self.connection = connection
        self._reader = asyncio.create_task(self._read(mailbox), name=f"upstream-{name}")

    async def _read(self, mailbox: Mailbox) -> None:
        put, recv = mailbox.put, self.connection.recv
        try:
            while True:
                put((UPSTREAM_FRAME, await recv(), self))
        except ConnectionClosed as exc:
            received = exc.rcvd
            put(
                (
                    UPSTREAM_CLOSED,
                    (received.code, received.reason) if received else (1006, ""),
                    self,
                )
            )
        except Exception as exc:  # the socket failed in some other way
            log.warning("upstream read failed: %r", exc)
            put((UPSTREAM_CLOSED, (1006, ""), self))

    async def send(self, frame: str | bytes) -> None:
        try:
            await self.connection.send(frame)
        except Exception as exc:  # the reader sees the close, and the session ends
            log.info("upstream send failed: %r", exc)

    async def close(self) -> None:
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        # Closing a broken socket can fail; there is nothing more to do about it then.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.connection.close(), 1.0)
