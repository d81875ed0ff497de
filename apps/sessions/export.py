"""The response history out: opaque cursors for its pages, and CSV of any size.

CSV is made page by page (keyset pages of `selectors.request_page`, each read on the database
threads), as an async iterator: Django's ASGI handler would read a synchronous iterator whole
into a list before sending a byte, and a server-side cursor cannot follow a stream from
thread to thread. So memory holds one page, whatever the number of rows.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from django.utils import timezone

from apps.sessions import selectors
from apps.sessions.db import db_async

# The CSV's columns: the keys of `ResponseRequest.to_dict()` (CONTRACT's `ResponseRequest`).
COLUMNS = (
    "id", "session_id", "origin", "instructions", "instructions_mode", "sent_instructions",
    "conversation", "metadata", "status", "response_id", "output_text", "usage", "cost_usd",
    "error", "created_at", "sent_at", "started_at", "finished_at", "requested_by",
)  # fmt: skip
CSV_PAGE = 2000  # rows read from the database at a time


class BadCursor(ValueError):
    pass


def cursor_encode(position: tuple[datetime, str]) -> str:
    created_at, request_id = position
    raw = json.dumps([created_at.isoformat(), request_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def cursor_decode(cursor: str) -> tuple[datetime, str]:
    """The keyset position a `next_cursor` stands for; BadCursor if it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, request_id = json.loads(raw)
        moment = datetime.fromisoformat(created_at)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise BadCursor("not a cursor this API gave; pass next_cursor as it came") from None
    if moment.tzinfo is None or not isinstance(request_id, str) or "\x00" in request_id:
        raise BadCursor("not a cursor this API gave; pass next_cursor as it came")
    return moment, request_id


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return json.dumps(value)  # numbers: as the JSON API writes them


def csv_row(row: dict[str, Any]) -> list[str]:
    return [_cell(row[name]) for name in COLUMNS]


def _lines(rows: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue().encode()


async def csv_chunks(
    filters: selectors.RequestFilter,
    *,
    after: tuple[datetime, str] | None = None,
    page_size: int = CSV_PAGE,
) -> AsyncIterator[bytes]:
    """The CSV of every request matching `filters` (after `after`), oldest first: the header
    row, then one chunk of bytes per page."""
    yield _lines([list(COLUMNS)])

    def page(position):
        rows, more = selectors.request_page(filters=filters, after=position, limit=page_size)
        return _lines([csv_row(row.to_dict()) for row in rows]), more

    position = after
    while True:
        chunk, position = await db_async(page)(position)
        if chunk:
            yield chunk
        if position is None:
            return


def csv_filename() -> str:
    return f"response-requests-{timezone.now():%Y%m%dT%H%M%SZ}.csv"
