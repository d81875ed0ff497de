"""Selectors: the reads every surface (REST hook, console) makes of sessions and requests."""

from __future__ import annotations

import statistics
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Max, OuterRef, Q, QuerySet, Subquery
from django.utils import timezone

from apps.sessions.models import LiveSession, ResponseRequest

ORIGINS = tuple(ResponseRequest.Origin.values)


def sessions_with_counts() -> QuerySet[LiveSession]:
    """Named sessions (those the upstream has identified), newest first, with each one's
    queued count, per-origin counts and active in-conversation response id."""
    counts = {
        f"origin_{origin}": Count("requests", filter=Q(requests__origin=origin)) for origin in ORIGINS
    }
    active = (
        ResponseRequest.objects.filter(session=OuterRef("pk"), status=ResponseRequest.Status.IN_PROGRESS)
        .exclude(conversation="none")
        .order_by("-started_at")
        .values("response_id")[:1]
    )
    return (
        LiveSession.objects.filter(upstream_id__isnull=False)
        .annotate(
            queued=Count("requests", filter=Q(requests__status=ResponseRequest.Status.QUEUED)),
            active_response=Subquery(active),
            **counts,
        )
        .order_by("-started_at")
    )


def annotate_counts(session: LiveSession) -> None:
    """Give a plain row the annotations of `sessions_with_counts()`."""
    counted = sessions_with_counts().filter(pk=session.pk).values(
        "queued", "active_response", *(f"origin_{origin}" for origin in ORIGINS)
    )
    values = next(iter(counted), None) or {"queued": 0, "active_response": None}
    for origin in ORIGINS:
        values.setdefault(f"origin_{origin}", 0)
    for name, value in values.items():
        setattr(session, name, value)


def session_list(*, status: str | None = None, limit: int = 100) -> list[LiveSession]:
    sessions = sessions_with_counts()
    if status is not None:
        sessions = sessions.filter(status=status)
    return list(sessions[:limit])


def nameable(key: str) -> bool:
    """Whether a row could have this id. None has a NUL in it, and PostgreSQL refuses a NUL in
    a query (an error, so a 500, where the answer is "not found")."""
    return "\x00" not in key


def session_row(*, session_id: str) -> LiveSession | None:
    """The session with this public id, without counts."""
    if not nameable(session_id):
        return None
    return LiveSession.objects.filter(upstream_id=session_id).first()


def session_get(*, session_id: str) -> LiveSession | None:
    if not nameable(session_id):
        return None
    return sessions_with_counts().filter(upstream_id=session_id).first()


def request_list(*, session: LiveSession, limit: int = 1000) -> list[ResponseRequest]:
    """A session's requests, oldest first."""
    return list(
        ResponseRequest.objects.filter(session=session)
        .select_related("session")
        .order_by("created_at", "id")[:limit]
    )


def request_get(*, request_id: str) -> ResponseRequest | None:
    if not nameable(request_id):
        return None
    return ResponseRequest.objects.select_related("session").filter(id=request_id).first()


def live_sessions(*, limit: int = 500) -> list[LiveSession]:
    """Live sessions from the table (any process's), newest first, with the counts of
    `sessions_with_counts()` and the times of their latest request created and finished."""
    sessions = (
        sessions_with_counts()
        .filter(status=LiveSession.Status.LIVE)
        .annotate(last_created=Max("requests__created_at"), last_finished=Max("requests__finished_at"))
    )
    return list(sessions[:limit])


def nudge_stats(*, now: datetime | None = None) -> dict[str, Any]:
    """Top-line figures: nudges in the last minute, median nudge-to-start latency (last hour)."""
    now = now or timezone.now()
    operator = ResponseRequest.objects.filter(origin__in=("console", "api"))
    last_minute = operator.filter(created_at__gte=now - timedelta(minutes=1)).count()
    started = (
        operator.filter(created_at__gte=now - timedelta(hours=1), started_at__isnull=False)
        .order_by("-created_at")
        .values_list("created_at", "started_at")[:500]
    )
    latencies = sorted((start - created).total_seconds() * 1000 for created, start in started)
    return {
        "nudges_last_minute": last_minute,
        "median_nudge_to_start_ms": round(statistics.median(latencies), 1) if latencies else None,
    }
