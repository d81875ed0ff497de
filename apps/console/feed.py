"""The dashboard feed: one task per process reads the live sessions from the table every
`INTERVAL` seconds and sends each dashboard socket of this process what changed.

Reading the table, not listening to actors, keeps the relay's hot path free of dashboard work
(a session costs its actor nothing while nobody watches it), and shows every process's
sessions alike when several processes share the database.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from apps.sessions import selectors
from apps.sessions.db import db_async
from apps.sessions.loops import per_loop
from apps.sessions.models import LiveSession

log = logging.getLogger(__name__)

INTERVAL = 1.0


class Viewer(Protocol):
    async def send_json(self, content: Any, close: bool = False) -> None: ...


def summary(session: LiveSession) -> dict[str, Any]:
    """A live session as the dashboard shows it: the REST hook's `Session` (`to_dict()`), and
    what only the dashboard shows. `session` comes from `selectors.live_sessions()`."""
    shape = session.to_dict()
    counts = shape["origin_counts"]
    moments = [m for m in (session.started_at, session.last_created, session.last_finished) if m]
    return {
        **shape,
        "state": "responding" if shape["active_response_id"] else "idle",
        "requests": sum(counts.values()),
        "nudges": counts["console"] + counts["api"],
        "last_activity": max(moments).isoformat(),
        "watchers": list(session.watchers or ()),
        "connected_by": session.connected_by,
    }


def summaries() -> list[dict[str, Any]]:
    """The dashboard's sessions, newest first."""
    return [summary(session) for session in selectors.live_sessions()]


def _read() -> tuple[dict[str, dict], dict[str, Any]]:
    return {s["id"]: s for s in summaries()}, selectors.nudge_stats()


class Feed:
    def __init__(self) -> None:
        self.viewers: set[Viewer] = set()
        self._sessions: dict[str, dict] = {}
        self._stats: dict[str, Any] = {}
        self._task: asyncio.Task | None = None

    async def add(self, viewer: Viewer) -> None:
        self.viewers.add(viewer)
        if self._task is None or self._task.done():
            # One task per process, started before any await so that viewers arriving
            # together cannot each start one; a task whose viewers all left ends.
            self._task = asyncio.get_running_loop().create_task(self._run(), name="dashboard-feed")
        sessions, stats = await db_async(_read)()
        await viewer.send_json({"type": "sessions", "sessions": list(sessions.values()), "stats": stats})

    def discard(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)

    async def _run(self) -> None:
        while self.viewers:
            await asyncio.sleep(INTERVAL)
            try:
                await self.once()
            except Exception:
                log.exception("dashboard feed failed; trying again")

    async def once(self) -> None:
        sessions, stats = await db_async(_read)()
        changed = [s for key, s in sessions.items() if self._sessions.get(key) != s]
        removed = [key for key in self._sessions if key not in sessions]
        stats_changed = stats != self._stats
        self._sessions, self._stats = sessions, stats
        if not (changed or removed or stats_changed):
            return
        update = {"type": "sessions.update", "upsert": changed, "remove": removed, "stats": stats}
        for viewer in list(self.viewers):
            try:
                await viewer.send_json(update)
            except Exception as exc:  # that socket is closing; its disconnect removes it
                log.debug("dashboard update not sent: %r", exc)


# This event loop's feed.
feed = per_loop(Feed)
