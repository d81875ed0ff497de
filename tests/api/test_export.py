"""CSV export of the response history at size (CONTRACT section 8): 100 000 requests stream in
constant memory, to a client that reads them and to one that stops reading, and parse back with
the `csv` module to the rows the JSON API gives.

Memory is Daphne's RSS, sampled with every piece read while each export streams: its largest
value over 10 000 rows against over 100 000. A buffered export of 100 000 of these rows would
hold some 60 MB of text at once. (tracemalloc in this process showed the same, 5.7 MB against
6.1 MB, at four times the run time.)"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from asgiref.sync import sync_to_async

from apps.sessions.models import LiveSession, ResponseRequest
from tests.support.servers import served_to_a_reader_that_stops

pytestmark = pytest.mark.django_db(transaction=True)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
USAGE = {
    "total_tokens": 1234,
    "input_tokens": 1000,
    "output_tokens": 234,
    "input_token_details": {
        "text_tokens": 600,
        "audio_tokens": 400,
        "cached_tokens": 256,
        "cached_tokens_details": {"text_tokens": 128, "audio_tokens": 128},
    },
    "output_token_details": {"text_tokens": 34, "audio_tokens": 200},
}


def _bulk(n: int, *, start: int = 0) -> None:
    """`n` finished requests of realistic size (about 600 bytes of CSV each), in batches."""
    session, _ = LiveSession.objects.get_or_create(
        upstream_id="sess_export", defaults={"model": "gpt-realtime", "status": "ended"}
    )
    for first in range(start, start + n, 5000):
        ResponseRequest.objects.bulk_create(
            ResponseRequest(
                id=f"req_{uuid.uuid4().hex}",
                session=session,
                origin="api",
                status="completed",
                instructions=f"Offer the refund, ticket {i}, and say \"sorry\", twice.",
                sent_instructions=f"You are Ava.\n\nOffer the refund, ticket {i}.",
                metadata={"ticket": f"T-{i}", "tier": "gold"},
                response_id=f"resp_{i}",
                output_text=f"Reply {i}: I am sorry; here is your refund, ticket {i}.",
                usage=USAGE,
                requested_by="token:export",
                created_at=T0 + timedelta(milliseconds=i),
                sent_at=T0 + timedelta(milliseconds=i, microseconds=10),
                started_at=T0 + timedelta(milliseconds=i, microseconds=20),
                finished_at=T0 + timedelta(milliseconds=i, microseconds=30),
            )
            for i in range(first, min(first + 5000, start + n))
        )


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def _stream_csv(http: httpx.AsyncClient, pid: int) -> tuple[list[dict], int]:
    """The CSV export, streamed from Daphne, and Daphne's largest RSS (kB) seen meanwhile."""
    most = _rss_kb(pid)
    async with http.stream("GET", "/api/v1/responses", params={"format": "csv"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        assert "content-length" not in response.headers, "streamed, not buffered"
        text = io.StringIO()
        async for piece in response.aiter_text():
            text.write(piece)
            most = max(most, _rss_kb(pid))
    return list(csv.DictReader(io.StringIO(text.getvalue()))), most


async def _json_rows(http: httpx.AsyncClient, **params) -> list[dict]:
    rows, cursor = [], None
    while True:
        page = {**params, "limit": 1000, **({"cursor": cursor} if cursor else {})}
        body = (await http.get("/api/v1/responses", params=page)).json()
        rows += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return rows


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def _as_csv(items: list[dict]) -> list[dict]:
    return [{key: _cell(value) for key, value in item.items()} for item in items]


@pytest.mark.e2e
async def test_100k_rows_stream_in_flat_memory_and_parse_back_to_the_json_rows(daphne, api_token):
    headers = {"Authorization": f"Bearer {api_token}"}
    async with httpx.AsyncClient(base_url=daphne.http_url, headers=headers, timeout=300) as http:
        await sync_to_async(_bulk)(10_000)
        table_10k, rss_10k = await _stream_csv(http, daphne.proc.pid)
        await sync_to_async(_bulk)(90_000, start=10_000)
        table, rss_100k = await _stream_csv(http, daphne.proc.pid)

        # The JSON API's rows: all of the first 10 000, then windows across the rest (each page
        # of a 100 000-row table sorts it again until (created_at, id) has an index).
        first = await _json_rows(http, until=(T0 + timedelta(seconds=10)).isoformat())
        assert list(table[0]) == list(first[0]), "the header row: the ResponseRequest field names, in order"
        assert table_10k == table[:10_000] == _as_csv(first), "every row of the CSV is the JSON API's row"
        for start in (31_337, 64_000, 99_000):
            window = await _json_rows(
                http,
                since=(T0 + timedelta(milliseconds=start)).isoformat(),
                until=(T0 + timedelta(milliseconds=start + 1000)).isoformat(),
            )
            assert table[start : start + 1000] == _as_csv(window), start

        # 20 000 rows, some 15 MB of CSV: more than the socket's buffers hold.
        path = f"/api/v1/responses?format=csv&until={T0 + timedelta(seconds=20):%Y-%m-%dT%H:%M:%SZ}"
        held = await asyncio.to_thread(served_to_a_reader_that_stops, daphne, path, api_token, 4.0)

    print(f"Daphne's RSS while exporting 10 000 rows: at most {rss_10k / 1024:.1f} MB; 100 000: {rss_100k / 1024:.1f} MB")
    assert (len(table_10k), len(table)) == (10_000, 100_000)
    assert rss_100k - rss_10k < 16 * 1024, "memory does not grow with the rows (100 000 are ~60 MB of CSV)"
    assert not held, "a client that stops reading made Daphne hold the rest of the export"
    assert json.loads(table[0]["metadata"]) == {"ticket": "T-0", "tier": "gold"}, "metadata: JSON in one column"
    assert datetime.fromisoformat(table[0]["created_at"]).utcoffset() is not None, "times carry their offset"


class _StalledClient:
    """A Flow whose client never makes room (and never leaves)."""

    stopped = False
    aborted = False

    def attach(self) -> None:
        pass

    def detach(self) -> None:
        pass

    async def writable(self, timeout: float) -> bool:
        await asyncio.sleep(timeout)
        return False

    def abort(self) -> None:
        self.aborted = True


async def test_a_client_that_takes_nothing_is_cut_off_not_sent_a_short_csv(monkeypatch):
    """A stalled client holds the export's database connection: after STALL_SECONDS it is cut
    off, with no end of the answer, so what it got cannot pass for the whole export."""
    from apps.events import flow
    from apps.sessions import export, selectors

    await sync_to_async(_bulk)(10)
    monkeypatch.setattr(flow, "STALL_SECONDS", 0.05)
    client = _StalledClient()
    chunks = [chunk async for chunk in export.csv_chunks(selectors.RequestFilter(), flow=client)]
    assert len(chunks) == 1 and chunks[0].startswith(b"id,"), "the header row, then nothing"
    assert client.aborted
