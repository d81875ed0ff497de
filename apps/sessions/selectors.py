"""Selectors: the reads every surface (REST hook, console) makes of sessions and requests."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import (
    BigIntegerField,
    Case,
    Count,
    F,
    Func,
    Max,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
    TextField,
    Value,
    When,
)
from django.db.models.fields.json import KT
from django.db.models.functions import Cast
from django.utils import timezone

from apps.realtime.events import text_problem
from apps.sessions.costs import DIGITS as COST_DIGITS
from apps.sessions.costs import cost_usd
from apps.sessions.models import ORIGINS, LiveSession, ResponseRequest


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


def counted(sessions: QuerySet[LiveSession], *, limit: int) -> list[LiveSession]:
    """The newest `limit` of `sessions`, each with the annotations of `sessions_with_counts()`
    and the times of its latest request created and finished (`last_created`,
    `last_finished`). The counts are one query over the sessions' requests grouped by the
    session's id, in the order of its index: the sessions joined to their requests and grouped
    by every column of the session (as SQLite groups an annotated query) sorted every request
    of every session listed."""
    newest = sessions.order_by("-started_at", "-id")[:limit]  # the same rows in both reads
    rows = list(newest)
    theirs = ResponseRequest.objects.filter(session__in=newest.values("pk")).order_by()
    counts = {
        row.pop("session"): row
        for row in theirs.values("session").annotate(
            queued=Count("pk", filter=Q(status=ResponseRequest.Status.QUEUED)),
            **{f"origin_{origin}": Count("pk", filter=Q(origin=origin)) for origin in ORIGINS},
            last_created=Max("created_at"),
            last_finished=Max("finished_at"),
        )
    }
    active = dict(
        theirs.filter(status=ResponseRequest.Status.IN_PROGRESS)
        .exclude(conversation="none")
        .order_by("started_at")  # the latest started wins, as in sessions_with_counts()
        .values_list("session", "response_id")
    )
    none = {
        "queued": 0,
        **{f"origin_{origin}": 0 for origin in ORIGINS},
        "last_created": None,
        "last_finished": None,
    }
    for session in rows:
        for name, value in counts.get(session.pk, none).items():
            setattr(session, name, value)
        session.active_response = active.get(session.pk)
    return rows


def session_list(*, status: str | None = None, limit: int = 100) -> list[LiveSession]:
    sessions = LiveSession.objects.filter(upstream_id__isnull=False)
    if status is not None:
        sessions = sessions.filter(status=status)
    return counted(sessions, limit=limit)


# No id is longer than a session's public id may be (a request's id is shorter still).
MAX_ID_CHARS = LiveSession._meta.get_field("upstream_id").max_length


def nameable(key: str) -> bool:
    """Whether a row could have this id. None has a NUL or a lone surrogate in it (a console
    socket's JSON can spell both), and the database refuses either in a query (PostgreSQL a
    NUL, both drivers a surrogate: an error where the answer is "not found"). None is longer
    than its column: a megabyte of id is not sent to the database (nor kept in the query log
    that DEBUG keeps of every query, by count and not by size)."""
    return len(key) <= MAX_ID_CHARS and text_problem(key) is None


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


def request_latest(*, session: LiveSession, limit: int) -> list[ResponseRequest]:
    """A session's latest `limit` requests, oldest first."""
    latest = ResponseRequest.objects.filter(session=session).order_by("-created_at", "-id")
    rows = list(latest[:limit])[::-1]
    for row in rows:
        row.session = session
    return rows


def request_get(*, request_id: str) -> ResponseRequest | None:
    if not nameable(request_id):
        return None
    return ResponseRequest.objects.select_related("session").filter(id=request_id).first()


# What the dashboard never shows of a live session: left out of its once-a-second read of
# every live session (the recording's transcript and the instructions can be long).
NOT_ON_DASHBOARD = (
    "process_id", "heartbeat_at", "instructions", "end_code", "end_detail", "rate_limits",
    "recording", "recording_seconds", "recording_transcript",
)


def _latest(field: str) -> Subquery:
    """The session's latest request `field` (a time): one step down its (session, field) index."""
    theirs = ResponseRequest.objects.filter(session=OuterRef("pk"), **{f"{field}__isnull": False})
    return Subquery(theirs.order_by(f"-{field}").values(field)[:1])


def live_sessions(*, limit: int = 500) -> list[LiveSession]:
    """Live sessions from the table (any process's), newest first, with the annotations of
    `counted()`; for the dashboard (`to_dict()` and what `apps.console.feed.summary` adds).

    Read once a second, so nothing here reads a session's requests one by one (they grow for
    as long as a call lasts): the counts by origin are the ones the row keeps, the latest
    times one index step each, and the queued and in-progress requests (few: a queue has a
    limit) come from the status index, all sessions' at once."""
    live = LiveSession.objects.filter(upstream_id__isnull=False, status=LiveSession.Status.LIVE)
    rows = list(
        live.defer(*NOT_ON_DASHBOARD)
        .annotate(last_created=_latest("created_at"), last_finished=_latest("finished_at"))
        .order_by("-started_at", "-id")[:limit]
    )
    waiting = ResponseRequest.objects.order_by()
    queued = Counter(
        waiting.filter(status=ResponseRequest.Status.QUEUED).values_list("session", flat=True)
    )
    active = dict(
        waiting.filter(status=ResponseRequest.Status.IN_PROGRESS)
        .exclude(conversation="none")
        .order_by("started_at")  # the latest started wins, as in sessions_with_counts()
        .values_list("session", "response_id")
    )
    for session in rows:
        session.queued = queued[session.pk]
        session.active_response = active.get(session.pk)
        for origin in ORIGINS:
            setattr(session, f"origin_{origin}", getattr(session, LiveSession.counter(origin)))
    return rows


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


# ---------------------------------------------------------------------------- history: query and export


@dataclass(frozen=True, kw_only=True)
class RequestFilter:
    """The filters of `GET /api/v1/responses` and of the admin's export (all must match).
    `since` is inclusive and `until` exclusive, on `created_at`."""

    session_id: str | None = None  # the public id
    origin: str | None = None
    status: str | None = None
    metadata: tuple[tuple[str, str], ...] = ()  # (key, value) pairs
    since: datetime | None = None
    until: datetime | None = None
    requested_by: str | None = None


def request_filtered(filters: RequestFilter, queryset: QuerySet[ResponseRequest] | None = None) -> QuerySet[ResponseRequest]:
    """Requests matching `filters`, oldest first (`created_at`, then `id`: the keyset of the
    cursor), with their sessions."""
    rows = ResponseRequest.objects.all() if queryset is None else queryset
    lookups = {
        "session__upstream_id": filters.session_id,
        "origin": filters.origin,
        "status": filters.status,
        "requested_by": filters.requested_by,
        "created_at__gte": filters.since,
        "created_at__lt": filters.until,
    }
    rows = rows.filter(**{lookup: value for lookup, value in lookups.items() if value is not None})
    rows = with_metadata(rows, filters.metadata).select_related("session").only(*_WITH_SESSION)
    return rows.order_by("created_at", "id")


# What `ResponseRequest.to_dict()` reads: the request, and of its session the public id and the
# model (not the session's transcript, usage and the rest, decoded again for every row).
_WITH_SESSION = (
    *(field.name for field in ResponseRequest._meta.concrete_fields),
    "session__upstream_id",
    "session__model",
)


class MetadataText(Func):
    """The text of `metadata[key]`, the key taken as written. Django's key transforms read a
    key of digits as an array index and put the key in a JSON path, which SQLite's cannot quote
    a `"` in; here PostgreSQL's `->>` takes the key as text, and SQLite's `json_each` compares
    it as a string."""

    output_field = TextField()

    def __init__(self, key: str) -> None:
        super().__init__(F("metadata"), Value(key, output_field=TextField()))

    def _parts(self, compiler, connection) -> tuple[str, str, list]:
        (column, column_params), (key, key_params) = (
            compiler.compile(expression) for expression in self.get_source_expressions()
        )
        return column, key, [*column_params, *key_params]

    def as_sql(self, compiler, connection, **extra):
        column, key, params = self._parts(compiler, connection)
        return f"({column} ->> ({key})::text)", params

    def as_sqlite(self, compiler, connection, **extra):
        column, key, params = self._parts(compiler, connection)
        return f"(SELECT value FROM json_each({column}) WHERE key = {key})", params


def with_metadata(rows: QuerySet[ResponseRequest], pairs: Iterable[tuple[str, str]]) -> QuerySet[ResponseRequest]:
    """The rows whose metadata has each key set to its value (SQLite and PostgreSQL alike)."""
    for n, (key, value) in enumerate(pairs):
        rows = rows.alias(**{f"_meta_{n}": MetadataText(key)}).filter(**{f"_meta_{n}": value})
    return rows


def request_after(rows: QuerySet[ResponseRequest], after: tuple[datetime, str]) -> QuerySet[ResponseRequest]:
    """The rows after the keyset position (created_at, id)."""
    created_at, request_id = after
    return rows.filter(Q(created_at__gt=created_at) | Q(created_at=created_at, id__gt=request_id))


# A request is stored a moment after it was made when the history writer stores it (a
# caller's, the server's: its batches gather, then wait their turn to write; bench/RESULTS.md
# has the delays measured), so a row can appear behind one already read. A page with more
# after it ends before the rows made in the last SETTLE, so that no cursor passes a row not
# yet stored.
SETTLE = timedelta(seconds=2)
# The position before every row: the cursor of a page left empty to let its rows settle.
START = (datetime(1, 1, 1, tzinfo=UTC), "")


def request_page(
    *,
    filters: RequestFilter,
    after: tuple[datetime, str] | None = None,
    limit: int = 100,
    now: datetime | None = None,
) -> tuple[list[ResponseRequest], tuple[datetime, str] | None]:
    """One page of `request_filtered`, after the keyset position `after`: (rows, the position
    of the last row when more follow, else None). New rows come after every page already
    read, the ones stored late too: a page with more after it stops before the rows made
    since `now` - SETTLE; it is empty (with a cursor) when all of it is that recent."""
    rows = request_filtered(filters)
    if after is not None:
        rows = request_after(rows, after)
    page = list(rows[: limit + 1])
    if len(page) <= limit:
        return page, None
    settled = (now or timezone.now()) - SETTLE
    page = [row for row in page[:limit] if row.created_at < settled]
    if not page:
        return [], after or START
    return page, (page[-1].created_at, page[-1].id)


# ---------------------------------------------------------------------------- usage and cost

# Where `usage` (of response.done, or a sum of them) holds each count.
_USAGE_PATHS = {
    "input_tokens": "input_tokens",
    "output_tokens": "output_tokens",
    "total_tokens": "total_tokens",
    "text_in": "input_token_details__text_tokens",
    "audio_in": "input_token_details__audio_tokens",
    "cached_text": "input_token_details__cached_tokens_details__text_tokens",
    "cached_audio": "input_token_details__cached_tokens_details__audio_tokens",
    "text_out": "output_token_details__text_tokens",
    "audio_out": "output_token_details__audio_tokens",
}


def _usage_of_sums(sums: dict[str, Any]) -> dict[str, Any]:
    """The summed counts in the shape of `usage`, for `costs.cost_usd`."""
    n = {name: int(sums.get(name) or 0) for name in _USAGE_PATHS}
    return {
        "input_tokens": n["input_tokens"],
        "output_tokens": n["output_tokens"],
        "total_tokens": n["total_tokens"],
        "input_token_details": {
            "text_tokens": n["text_in"],
            "audio_tokens": n["audio_in"],
            "cached_tokens_details": {"text_tokens": n["cached_text"], "audio_tokens": n["cached_audio"]},
        },
        "output_token_details": {"text_tokens": n["text_out"], "audio_tokens": n["audio_out"]},
    }


def usage_totals(requests: QuerySet[ResponseRequest], *, by: str | None = None) -> dict[Any, dict[str, Any]]:
    """Tokens and cost of `requests`, summed in the database per model (and per `by`, a field
    of the request, when given): `{by value (or None): {"requests", "input_tokens",
    "output_tokens", "total_tokens", "cost_usd", "unpriced_tokens"}}`. `cost_usd` is the cost of
    the priced models' tokens; `unpriced_tokens` counts those of models without a price."""
    sums = {
        name: Sum(Cast(KT(f"usage__{path}"), BigIntegerField())) for name, path in _USAGE_PATHS.items()
    }
    groups = ("session__model",) if by is None else (by, "session__model")
    rows = (
        requests.filter(usage__isnull=False)
        .order_by()
        .values(*groups)
        .annotate(requests=Count("id"), **sums)
    )
    totals: dict[Any, dict[str, Any]] = {}
    for row in rows:
        usage = _usage_of_sums(row)
        total = totals.setdefault(
            row[by] if by is not None else None,
            {"requests": 0, "input_tokens": 0, "output_tokens": 0, "total_tokens": 0, "cost_usd": 0.0, "unpriced_tokens": 0},
        )
        total["requests"] += row["requests"]
        for name in ("input_tokens", "output_tokens", "total_tokens"):
            total[name] += usage[name]
        cost = cost_usd(model=row["session__model"], usage=usage)
        if cost is None:
            total["unpriced_tokens"] += usage["total_tokens"]
        else:
            total["cost_usd"] = round(total["cost_usd"] + cost, COST_DIGITS)
    return totals


def fleet_usage_today(*, now: datetime | None = None) -> dict[str, Any]:
    """The fleet's top line: tokens and cost of the responses finished today (the day of
    TIME_ZONE), every session and process: `{"since", "requests", "input_tokens",
    "output_tokens", "total_tokens", "cost_usd", "unpriced_tokens"}`."""
    now = now or timezone.now()
    start = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)
    today = ResponseRequest.objects.filter(finished_at__gte=start)
    totals = usage_totals(today).get(None) or {
        "requests": 0, "input_tokens": 0, "output_tokens": 0, "total_tokens": 0, "cost_usd": 0.0, "unpriced_tokens": 0
    }
    return {"since": start.isoformat(), **totals}


def api_token_usage(*, tokens: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Tokens and cost of what each API token asked for, by `token:<name>` (see `usage_totals`
    for the figures): the requests it made (REST nudges, and its caller's own `response.create`)
    and the responses the server started (server VAD) in the sessions it connected.

    With `tokens` (names `token:<name>`), those tokens' alone, and only their rows are read,
    by the indexes on `requested_by`, on the sessions' `connected_by` and on (session,
    origin): a page of tokens costs their history, not everyone's. Without, every token's:
    the whole history is read."""
    server = ResponseRequest.Origin.SERVER
    asked = ResponseRequest.objects.annotate(
        token=Case(When(origin=server, then=F("session__connected_by")), default=F("requested_by"))
    )
    if tokens is None:
        return usage_totals(asked.filter(token__startswith="token:"), by="token")
    connected = LiveSession.objects.filter(connected_by__in=tokens).values("pk")
    theirs = (Q(requested_by__in=tokens) & ~Q(origin=server)) | Q(origin=server, session__in=connected)
    return usage_totals(asked.filter(theirs), by="token")
