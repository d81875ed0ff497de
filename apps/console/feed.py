"""The dashboard feed: one task per process reads the live sessions from the table every
`INTERVAL` seconds and sends each dashboard socket of this process its page when it changed.

Each socket watches a `dashboard.View` (search, filters, sort, page: the page's query string);
its page is cut from the one read in memory, so a thousand live sessions cost one query per
tick however many operators watch, and a page that did not change is not sent.

Reading the table, not listening to actors, keeps the relay's hot path free of dashboard work
(a session costs its actor nothing while nobody watches it), and shows every process's
sessions alike when several processes share the database.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from apps.console.dashboard import View, fleet
from apps.sessions import selectors
from apps.sessions.db import db_async, log_failure
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


# Every live session is read: a process holds at most OC_MAX_SESSIONS, and with several
# processes sharing the table a few thousand is still one quick query.
MAX_LIVE = 10_000


def summaries() -> list[dict[str, Any]]:
    """The dashboard's sessions, newest first."""
    return [summary(session) for session in selectors.live_sessions(limit=MAX_LIVE)]


def page_message(
    view: View, sessions: list[dict], stats: dict[str, Any], figures: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What a dashboard socket is sent: its page, and the top-line figures."""
    page = view.page_of(sessions, figures)
    return {"type": "sessions", **page, "stats": stats, "view": view.params()}


def _read() -> tuple[dict[str, dict], dict[str, Any]]:
    return {s["id"]: s for s in summaries()}, selectors.nudge_stats()


class Feed:
    def __init__(self, interval: float = INTERVAL) -> None:
        self.interval = interval  # seconds between reads
        self.viewers: dict[Viewer, View] = {}
        self._sent: dict[Viewer, dict[str, Any]] = {}
        self._sessions: dict[str, dict] = {}
        self._stats: dict[str, Any] = {}
        self._task: asyncio.Task | None = None

    async def add(self, viewer: Viewer, view: View | None = None) -> None:
        """Watch `view` (again, when the viewer changes its search, filters, sort or page).
        A new viewer's page is read afresh: it follows a page the server has just rendered.
        A change of view is cut from the task's latest read (at most an interval old; the next
        read sends what changed), so a search answers as the operator types."""
        changing = viewer in self.viewers
        self.viewers[viewer] = view or View()
        if self._task is None or self._task.done():
            # One task per process, started before any await so that viewers arriving
            # together cannot each start one; a task whose viewers all left ends. What it
            # read last is not kept up to date any more: the new one reads afresh.
            self._sessions, self._stats = {}, {}
            self._task = asyncio.get_running_loop().create_task(self._run(), name="dashboard-feed")
        if changing and self._stats:
            sessions, stats = self._sessions, self._stats
        else:
            sessions, stats = await db_async(_read)()
            # A newer read of the task's may have finished first and sent its pages: the task
            # forgets what it read, so its next read compares every page with what was sent.
            self._sessions, self._stats = {}, {}
        if viewer in self.viewers:
            await self._send(viewer, page_message(self.viewers[viewer], list(sessions.values()), stats))

    def discard(self, viewer: Viewer) -> None:
        self.viewers.pop(viewer, None)
        self._sent.pop(viewer, None)

    async def _send(self, viewer: Viewer, message: dict[str, Any]) -> None:
        self._sent[viewer] = message
        try:
            await viewer.send_json(message)
        except Exception as exc:  # that socket is closing; its disconnect removes it
            log.debug("dashboard update not sent: %r", exc)

    async def _run(self) -> None:
        while self.viewers:
            await asyncio.sleep(self.interval)
            try:
                await self.once()
            except Exception as exc:
                log_failure(log, "dashboard feed failed; trying again", exc)

    async def once(self) -> None:
        sessions, stats = await db_async(_read)()
        if sessions == self._sessions and stats == self._stats:
            return
        self._sessions, self._stats = sessions, stats
        everything = list(sessions.values())
        figures = fleet(everything)
        pages: dict[View, dict[str, Any]] = {}  # operators on the same view share its page
        for viewer, view in list(self.viewers.items()):
            if (message := pages.get(view)) is None:
                message = pages[view] = page_message(view, everything, stats, figures)
            if message != self._sent.get(viewer):
                await self._send(viewer, message)


# This event loop's feed.
feed = per_loop(Feed)
