"""The fresh upstream leg of a rotation, as a session's actor drives it.

The relay core decides when a session moves to a fresh upstream session
(`apps/realtime/rotation.py`); this is the actor's side of it: it opens the fresh connection
in the background (the actor's mailbox keeps flowing meanwhile), reads it into the same
mailbox tagged with its own leg, sends it the replay, and at the swap hands the leg to
`SessionActor.replace_upstream`, which closes the old one. Items of a fresh leg that was
closed (the rotation abandoned or failed) are recognised by their tag and dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from apps.realtime.relay import RelayCore
from apps.realtime.rotation import CloseFresh, OpenFresh, SwapUpstream, ToFresh
from apps.sessions.legs import UPSTREAM_CLOSED, UPSTREAM_FRAME, Mailbox, UpstreamLeg

log = logging.getLogger(__name__)

FRESH_OPENED = "fresh.opened"
FRESH_FAILED = "fresh.failed"
# The core's actions this performs (the actor hands them over).
ACTIONS = frozenset({OpenFresh, ToFresh, CloseFresh, SwapUpstream})


class FreshLeg:
    def __init__(self, mailbox: Mailbox, opener: Callable[[], Awaitable[Any]], name: str) -> None:
        self._mailbox = mailbox
        self._opener = opener
        self._name = name
        self._attempt: object | None = None  # tags a failure of the current attempt
        self._opening: asyncio.Future | None = None
        self.leg: UpstreamLeg | None = None

    def owns(self, tag: Any) -> bool:
        """Whether a mailbox item came from the current fresh leg (or its opening)."""
        return tag is not None and (tag is self.leg or tag is self._attempt)

    def route(self, core: RelayCore, kind: str, payload: Any, now: float) -> list[Any]:
        """The core's input for a mailbox item of the fresh leg."""
        rotator = core.rotation
        if rotator is None:
            return []
        if kind == FRESH_OPENED:
            return rotator.fresh_attached(now=now)
        if kind == FRESH_FAILED:
            return rotator.fresh_failed(payload, now=now)
        if kind == UPSTREAM_FRAME:
            return rotator.fresh_frame(payload, now=now)
        if kind == UPSTREAM_CLOSED:
            self.leg = None
            return rotator.fresh_closed(*payload, now=now)
        return []

    async def perform(
        self, action: Any, replace_upstream: Callable[[Any], Awaitable[None]]
    ) -> None:
        kind = type(action)
        if kind is OpenFresh:
            await self.close()
            self._attempt = attempt = object()
            self._opening = asyncio.ensure_future(self._open(attempt))
        elif kind is ToFresh:
            if self.leg is not None:
                await self.leg.send(action.frame)
        elif kind is SwapUpstream:
            leg, self.leg, self._attempt = self.leg, None, None
            if leg is not None:
                log.info("session %s moved to upstream session %s", self._name, action.session_id)
                await replace_upstream(leg)
        elif kind is CloseFresh:
            log.info("session %s: %s", self._name, action.detail)
            await self.close()

    async def _open(self, attempt: object) -> None:
        try:
            connection = await self._opener()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # refused, unreachable, timed out: the core tries again later
            self._mailbox.put((FRESH_FAILED, str(exc) or type(exc).__name__, attempt))
            return
        finally:
            self._opening = None
        if attempt is not self._attempt:  # given up meanwhile
            await UpstreamLeg(connection, Mailbox(), f"{self._name}-stale").close()
            return
        self.leg = UpstreamLeg(connection, self._mailbox, f"{self._name}-fresh")
        self._mailbox.put((FRESH_OPENED, None, self.leg))

    async def close(self) -> None:
        """Give up the fresh leg (opening or open); the session's own leg is untouched."""
        self._attempt = None
        opening, self._opening = self._opening, None
        if opening is not None:
            opening.cancel()
            await asyncio.gather(opening, return_exceptions=True)
        leg, self.leg = self.leg, None
        if leg is not None:
            await leg.close()
