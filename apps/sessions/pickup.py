"""Pickup: the safety net under the "new request" ping.

Every `OC_PICKUP_INTERVAL` seconds, one task per process (per event loop) asks the table for
operator requests still `queued` in the sessions this process holds, and hands each to its
actor exactly as a ping would. The actor ignores requests it already knows, so a request that
was pinged is never sent twice; one whose ping was lost is sent at most an interval (plus a
grace period for pings in flight) late.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Protocol

from channels.db import database_sync_to_async
from django.conf import settings

from apps.sessions import groups
from apps.sessions.models import ResponseRequest
from apps.sessions.services import request_message

log = logging.getLogger(__name__)

OPERATOR_ORIGINS = (ResponseRequest.Origin.CONSOLE, ResponseRequest.Origin.API)
# A request younger than this is left to its ping.
GRACE = timedelta(seconds=0.5)


class Holder(Protocol):
    key: uuid.UUID

    def operator_message(self, message: dict) -> None: ...


class Pickup:
    def __init__(self) -> None:
        self.holders: dict[uuid.UUID, Holder] = {}
        self._task: asyncio.Task | None = None

    def add(self, holder: Holder) -> None:
        self.holders[holder.key] = holder
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="request-pickup")

    def discard(self, holder: Holder) -> None:
        if self.holders.get(holder.key) is holder:
            del self.holders[holder.key]

    async def _run(self) -> None:
        while self.holders:
            await asyncio.sleep(settings.OC_PICKUP_INTERVAL)
            try:
                await self.once()
            except Exception:  # a database hiccup: try again next round
                log.exception("request pickup failed")

    async def once(self) -> int:
        """Hand every waiting operator request of the held sessions to its actor."""
        keys = list(self.holders)
        if not keys:
            return 0
        rows = await database_sync_to_async(_waiting_requests)(keys)
        for row in rows:
            holder = self.holders.get(row.session_id)
            if holder is not None:
                holder.operator_message({"type": groups.SESSION_REQUEST, "request": request_message(row)})
        return len(rows)


def _waiting_requests(keys: list[uuid.UUID]) -> list[ResponseRequest]:
    before = datetime.now(UTC) - GRACE
    return list(
        ResponseRequest.objects.filter(
            session_id__in=keys,
            status=ResponseRequest.Status.QUEUED,
            origin__in=OPERATOR_ORIGINS,
            created_at__lt=before,
        ).order_by("created_at")
    )


_pickups: dict[asyncio.AbstractEventLoop, Pickup] = {}


def pickup() -> Pickup:
    """This event loop's pickup (Daphne runs one loop; tests may run several in turn)."""
    loop = asyncio.get_running_loop()
    for other in [other for other in _pickups if other.is_closed()]:
        del _pickups[other]
    return _pickups.setdefault(loop, Pickup())
