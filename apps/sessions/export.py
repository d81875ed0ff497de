"""The response history out: opaque cursors for its pages (each tied to its filters), and CSV
of any size.

CSV is one query, read with a cursor (`.iterator(chunk_size=…)`) on a thread of the export's
own, and handed to the event loop a chunk at a time through a pipe at most two chunks deep;
under Daphne the next chunk is taken only once the client has room for it (the request's
`Flow`, apps/events/flow.py): memory holds a few chunks whatever the number of rows, and the
reading goes no faster than the client reads. The response is an async iterator because
Django's ASGI handler reads a synchronous one whole into a list before sending a byte. One
query, not a query per keyset page: without an index on (created_at, id) every page would
sort the table again.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import csv
import hashlib
import io
import json
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from django.db import connections
from django.db.models import QuerySet
from django.utils import timezone

from apps.events.flow import room
from apps.realtime.events import text_problem
from apps.sessions import selectors
from apps.sessions.models import ResponseRequest

# The CSV's columns: the keys of `ResponseRequest.to_dict()` (CONTRACT's `ResponseRequest`).
COLUMNS = (
    "id", "session_id", "origin", "instructions", "instructions_mode", "sent_instructions",
    "conversation", "metadata", "status", "response_id", "output_text", "usage", "cost_usd",
    "error", "created_at", "sent_at", "started_at", "finished_at", "requested_by",
)  # fmt: skip
CSV_CHUNK_ROWS = 1000  # rows read from the database, and sent, at a time


class BadCursor(ValueError):
    pass


def filters_digest(filters: selectors.RequestFilter) -> str:
    """A short digest of what `filters` select: the same for filters written differently that
    select the same rows (times in another offset, metadata pairs in another order)."""

    def moment(value: datetime | None) -> str | None:
        return value.astimezone(UTC).isoformat() if value is not None else None

    canonical = [
        filters.session_id, filters.origin, filters.status, filters.requested_by,
        moment(filters.since), moment(filters.until), sorted(filters.metadata),
    ]  # fmt: skip
    raw = json.dumps(canonical, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
    return hashlib.sha256(raw).hexdigest()[:16]


def cursor_encode(position: tuple[datetime, str], filters: selectors.RequestFilter) -> str:
    """The cursor of a page: its keyset position, tied to the filters that made the page."""
    created_at, request_id = position
    raw = json.dumps([created_at.isoformat(), request_id, filters_digest(filters)], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def cursor_decode(cursor: str, filters: selectors.RequestFilter) -> tuple[datetime, str]:
    """The keyset position a `next_cursor` stands for; BadCursor if it is not one of ours, or
    was given for other filters (its position would then skip or repeat rows of these).
    Whatever a client sends decodes or is refused here, never later: nesting too deep for
    the JSON parser, a moment that is aware but outside years 1 to 9999 once in UTC (the
    database reads it in UTC), an id that the database could not take (NUL, lone surrogate)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, request_id, digest = json.loads(raw)
        moment = datetime.fromisoformat(created_at)
        moment.astimezone(UTC)
    except (binascii.Error, ValueError, TypeError, RecursionError, OverflowError):
        raise BadCursor("not a cursor this API gave; pass next_cursor as it came") from None
    if moment.tzinfo is None or not isinstance(request_id, str) or text_problem(request_id):
        raise BadCursor("not a cursor this API gave; pass next_cursor as it came")
    if digest != filters_digest(filters):
        raise BadCursor(
            "was given for other filters; send it with the filters of the request that gave "
            "it, or leave it out to start again"
        )
    return moment, request_id


# A cell that a spreadsheet would read as a formula (OWASP, "CSV injection"): `=`, `+`, `-`,
# `@`, and a tab or carriage return before them. In the admin's export, which people open in
# spreadsheets, such a cell is written with a `'` first, which spreadsheets show as text; so is
# one that begins with `'` itself, so that every value comes back by removing that one `'`.
# The REST hook's CSV is read by scripts: its cells are the values, as the JSON gives them.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def _cell(value: Any, spreadsheet: bool) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return f"'{value}" if spreadsheet and value.startswith(_FORMULA_STARTS) else value
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return json.dumps(value)  # numbers: as the JSON API writes them


def csv_row(row: dict[str, Any], *, spreadsheet: bool = False) -> list[str]:
    return [_cell(row[name], spreadsheet) for name in COLUMNS]


def _lines(rows: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue().encode()


class _Pipe:
    """Chunks from the export's thread to the event loop, at most `depth` ahead of the reader
    (the thread waits for a slow client instead of reading on)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, depth: int = 2) -> None:
        self.loop = loop
        self.items: asyncio.Queue = asyncio.Queue()
        self.slots = threading.Semaphore(depth)
        self.stopped = threading.Event()

    def put(self, item: Any) -> bool:
        """From the thread: False once the reader is gone."""
        while not self.slots.acquire(timeout=0.5):
            if self.stopped.is_set():
                return False
        if self.stopped.is_set():
            return False
        self.loop.call_soon_threadsafe(self.items.put_nowait, item)
        return True

    async def get(self) -> Any:
        item = await self.items.get()
        self.slots.release()
        return item

    def stop(self) -> None:
        self.stopped.set()
        self.slots.release()


_END = object()


def _produce(pipe: _Pipe, rows: Any, chunk_rows: int, spreadsheet: bool) -> None:
    """The export's thread: one query read with a cursor, `chunk_rows` rows a chunk."""
    try:
        batch: list[list[str]] = []
        for row in rows.iterator(chunk_size=chunk_rows):
            batch.append(csv_row(row.to_dict(), spreadsheet=spreadsheet))
            if len(batch) == chunk_rows:
                if not pipe.put(_lines(batch)):
                    return
                batch = []
        if batch and not pipe.put(_lines(batch)):
            return
        pipe.put(_END)
    except Exception as exc:
        pipe.put(exc)
    finally:
        connections.close_all()  # this thread's own connection


async def csv_chunks(
    filters: selectors.RequestFilter,
    *,
    after: tuple[datetime, str] | None = None,
    queryset: QuerySet[ResponseRequest] | None = None,
    chunk_rows: int = CSV_CHUNK_ROWS,
    flow: Any = None,
    spreadsheet: bool = False,
) -> AsyncIterator[bytes]:
    """The CSV of every request matching `filters` (after `after`; within `queryset`, if
    given), oldest first: the header row, then a chunk of bytes per `chunk_rows` rows; each
    chunk once the client has room for it, when `flow` (the request's `Flow`) can tell. For
    a `spreadsheet`, cells that would be formulas are written as text (above)."""
    yield _lines([list(COLUMNS)])
    rows = selectors.request_filtered(filters, queryset)
    if after is not None:
        rows = selectors.request_after(rows, after)
    pipe = _Pipe(asyncio.get_running_loop())
    thread = threading.Thread(target=_produce, args=(pipe, rows, chunk_rows, spreadsheet), name="oc-export", daemon=True)
    thread.start()
    try:
        if flow is not None:
            flow.attach()
        while await room(flow):
            item = await pipe.get()
            if item is _END:
                return
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        pipe.stop()  # the client left, or the end: the thread stops at its next chunk
        if flow is not None:
            flow.detach()


def csv_filename() -> str:
    return f"response-requests-{timezone.now():%Y%m%dT%H%M%SZ}.csv"
