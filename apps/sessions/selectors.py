"""Selectors: the reads every surface (REST hook, console) makes of sessions and requests."""

from __future__ import annotations

from django.db.models import Count, OuterRef, Q, QuerySet, Subquery

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


def session_list(*, status: str | None = None, limit: int = 100) -> list[LiveSession]:
    sessions = sessions_with_counts()
    if status is not None:
        sessions = sessions.filter(status=status)
    return list(sessions[:limit])


def session_get(*, session_id: str) -> LiveSession | None:
    return sessions_with_counts().filter(upstream_id=session_id).first()


def origin_counts(session: LiveSession) -> dict[str, int]:
    """The per-origin counts of a session from `sessions_with_counts`."""
    return {origin: getattr(session, f"origin_{origin}") for origin in ORIGINS}


def request_list(*, session: LiveSession, limit: int = 1000) -> list[ResponseRequest]:
    """A session's requests, oldest first."""
    return list(
        ResponseRequest.objects.filter(session=session)
        .select_related("session")
        .order_by("created_at", "id")[:limit]
    )


def request_get(*, request_id: str) -> ResponseRequest | None:
    return ResponseRequest.objects.select_related("session").filter(id=request_id).first()
