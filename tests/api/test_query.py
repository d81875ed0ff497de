"""`GET /api/v1/responses` (CONTRACT section 8): each filter, metadata filters combined, cursor
pages that cover every row exactly once, and refusals that name the field. Rows are written
straight to the table: the query reads the record, whoever wrote it."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from asgiref.sync import sync_to_async

from apps.sessions import export, selectors
from apps.sessions.models import LiveSession, ResponseRequest

pytestmark = pytest.mark.django_db(transaction=True)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def _session(upstream_id: str, model: str = "gpt-realtime") -> LiveSession:
    return LiveSession.objects.create(upstream_id=upstream_id, model=model, status="ended")


def _rows(session: LiveSession, n: int, *, start: int = 0, **fields) -> list[ResponseRequest]:
    rows = [
        ResponseRequest(
            id=f"req_{uuid.uuid4().hex}",
            session=session,
            origin=fields.get("origin", "api"),
            status=fields.get("status", "completed"),
            metadata=fields.get("metadata", {"n": str(i)}),
            requested_by=fields.get("requested_by", "token:script"),
            created_at=T0 + timedelta(seconds=i),
        )
        for i in range(start, start + n)
    ]
    return ResponseRequest.objects.bulk_create(rows)


@pytest.fixture
def scene(db):
    a, b = _session("sess_a"), _session("sess_b")
    _rows(a, 3, origin="api", metadata={"ticket": "T-1", "tier": "gold"})
    _rows(a, 2, start=3, origin="console", status="failed", requested_by="ada", metadata={"ticket": "T-1"})
    _rows(b, 4, start=5, origin="caller", status="cancelled", requested_by="", metadata=None)
    _rows(b, 1, start=9, origin="server", metadata={"ticket": "T-2", "tier": "gold", "a__b": "x y"})
    return a, b


async def _ids(rest, **params) -> list[str]:
    response = await rest.get("/responses", params=params)
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


async def _all(rest, **params) -> list[dict]:
    response = await rest.get("/responses", params={**params, "limit": 1000})
    return response.json()["items"]


async def test_each_filter_keeps_only_its_rows(rest, scene):
    everything = await _all(rest)
    assert len(everything) == 10
    assert [r["created_at"] for r in everything] == sorted(r["created_at"] for r in everything), "oldest first"

    def expect(predicate):
        return [r["id"] for r in everything if predicate(r)]

    assert await _ids(rest, session_id="sess_b") == expect(lambda r: r["session_id"] == "sess_b")
    assert await _ids(rest, origin="console") == expect(lambda r: r["origin"] == "console")
    assert await _ids(rest, status="cancelled") == expect(lambda r: r["status"] == "cancelled")
    assert await _ids(rest, requested_by="ada") == expect(lambda r: r["requested_by"] == "ada")
    since, until = (T0 + timedelta(seconds=2)).isoformat(), (T0 + timedelta(seconds=6)).isoformat()
    assert await _ids(rest, since=since) == expect(lambda r: r["created_at"] >= since), "since is inclusive"
    assert await _ids(rest, until=until) == expect(lambda r: r["created_at"] < until), "until is exclusive"
    assert len(await _ids(rest, since=since, until=until)) == 4
    assert await _ids(rest, session_id="sess_none") == []


async def test_metadata_filters_combine_and_take_any_key(rest, scene):
    gold = await _ids(rest, **{"metadata[tier]": "gold"})
    assert len(gold) == 4
    t1_gold = await _ids(rest, **{"metadata[ticket]": "T-1", "metadata[tier]": "gold"})
    assert len(t1_gold) == 3, "every metadata filter must match"
    assert await _ids(rest, **{"metadata[ticket]": "T-2", "metadata[tier]": "silver"}) == []
    assert len(await _ids(rest, **{"metadata[a__b]": "x y"})) == 1, "a key with __ is a key, not a path"
    both = await _ids(rest, **{"metadata[ticket]": "T-1", "origin": "console"})
    assert len(both) == 2, "metadata and the other filters combine"


async def test_a_metadata_key_is_matched_as_written_whatever_it_holds(rest, scene):
    a, _ = scene
    keys = ['say "hi"', "0", "-1", "a.b", "$", "[0]"]  # JSON path syntax and array indices
    for n, key in enumerate(keys):
        await sync_to_async(_rows)(a, 1, start=200 + n, metadata={key: "v", "which": key})
    for key in keys:
        response = await rest.get("/responses", params={f"metadata[{key}]": "v"})
        assert response.status_code == 200, (key, response.text)
        found = [item["metadata"]["which"] for item in response.json()["items"]]
        assert found == [key], f"metadata[{key}] finds the row with that key, and only it"


async def test_cursor_pages_cover_every_row_exactly_once_even_as_rows_are_added(rest, scene):
    a, _ = scene
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        body = (await rest.get("/responses", params=params)).json()
        seen += [item["id"] for item in body["items"]]
        pages += 1
        if pages == 2:
            await sync_to_async(_rows)(a, 2, start=100)  # newer rows arrive while a script pages
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 12, "each row once, the new ones included"
    assert pages == 4


async def test_bad_since_limit_and_cursor_are_422_naming_the_field(rest, scene):
    cases = {
        "since": {"since": "yesterday"},
        "until": {"until": "2025-03-01T12:00:00"},  # no offset
        "limit": {"limit": "5000"},
        "cursor": {"cursor": "not-a-cursor"},
        "origin": {"origin": "robot"},
    }
    for field, params in cases.items():
        response = await rest.get("/responses", params=params)
        assert response.status_code == 422, (field, response.text)
        error = response.json()["error"]
        assert field in error["fields"], (field, error)
    limit = (await rest.get("/responses", params={"limit": "0"})).json()["error"]
    assert "1" in limit["fields"]["limit"]
    over = (await rest.get("/responses", params={"limit": "1001"})).json()["error"]
    assert "1000" in over["fields"]["limit"], "the bound is named"
    nul = await rest.get("/responses", params={"metadata[k]": "a\x00b"})
    assert nul.status_code == 422 and "metadata[k]" in nul.json()["error"]["fields"]


async def test_csv_is_the_same_rows_as_the_json(rest, scene):
    items = await _all(rest)
    for ask in ({"params": {"format": "csv"}}, {"headers": {"Accept": "text/csv"}}):
        response = await rest.get("/responses", **ask)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        table = list(csv.DictReader(io.StringIO(response.text)))
        assert list(table[0]) == list(items[0]), "the header row is the ResponseRequest field names"
        assert [_from_csv(row) for row in table] == [_comparable(item) for item in items]


def _comparable(item: dict) -> dict:
    return {key: ("" if value is None else value) for key, value in item.items()}


def _from_csv(row: dict) -> dict:
    import json

    out = dict(row)
    for key in ("metadata", "usage", "error"):
        out[key] = json.loads(row[key]) if row[key] else ""
    out["cost_usd"] = float(row["cost_usd"]) if row["cost_usd"] else ""
    return out


@pytest.fixture
def writer_token(make_token) -> str:
    return make_token(scopes=["responses:write"], name="writer")


async def test_the_query_needs_sessions_read(writer_token, scene):
    import httpx

    from operator_console.asgi import application

    token = writer_token
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://127.0.0.1") as client:
        assert (await client.get("/api/v1/responses")).status_code == 401
        refused = await client.get("/api/v1/responses", headers={"Authorization": f"Bearer {token}"})
        assert refused.status_code == 403


async def test_the_openapi_document_says_csv_and_the_metadata_filter(rest):
    document = (await rest.get("/openapi.json")).json()
    operation = document["paths"]["/api/v1/responses"]["get"]
    assert set(operation["responses"]["200"]["content"]) == {"application/json", "text/csv"}
    metadata = next(p for p in operation["parameters"] if p["name"] == "metadata")
    assert metadata["style"] == "deepObject" and metadata["in"] == "query"



async def test_the_openapi_document_names_each_key_once(rest):
    """The docs page (Swagger UI at /api/v1/docs) refuses a document with a key twice in one
    object ("duplicated mapping key") and shows nothing else."""

    def once(pairs: list[tuple]) -> dict:
        keys = [key for key, _ in pairs]
        assert len(keys) == len(set(keys)), f"keys given twice: {keys}"
        return dict(pairs)

    json.loads((await rest.get("/openapi.json")).text, object_pairs_hook=once)


async def test_the_openapi_document_is_built_once_and_served_the_same(rest, monkeypatch):
    """Building it takes a fifth of a second of CPU: ninja would build it for every request."""
    from ninja import NinjaAPI

    from apps.api.api import api

    builds = []
    build = NinjaAPI.get_openapi_schema

    def counted(self, **options):
        builds.append(options)
        return build(self, **options)

    monkeypatch.setattr(NinjaAPI, "get_openapi_schema", counted)
    monkeypatch.setattr(api, "_schemas", {})
    first, second = [(await rest.get("/openapi.json")).json() for _ in range(2)]
    assert first == second and len(builds) == 1


def _cursor(raw: str) -> str:
    import base64

    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


async def test_times_out_of_range_in_utc_or_given_as_seconds_are_422_naming_the_field(rest, scene):
    cases = [
        ("since", {"since": "0001-01-01T00:00:00+14:00"}, "range"),  # before year 1 in UTC
        ("until", {"until": "9999-12-31T23:59:59-14:00"}, "range"),  # after year 9999 in UTC
        ("since", {"since": "1700000000"}, "ISO 8601"),  # Unix seconds are not ISO 8601
        ("until", {"until": "1700000000.5"}, "ISO 8601"),
        ("since", {"since": "2025-03-01T12:00:00 01:00"}, "%2B"),  # '+01:00' sent as a bare '+'
        ("cursor", {"cursor": _cursor('["0001-01-01T00:00:00+14:00","req_x"]')}, "cursor"),
        ("cursor", {"cursor": _cursor('["9999-12-31T23:59:59-14:00","req_x"]')}, "cursor"),
        ("cursor", {"cursor": _cursor("[" * 3000 + "]" * 3000)}, "cursor"),
        ("cursor", {"cursor": _cursor('["2026-01-01T00:00:00+00:00","\\ud800"]')}, "cursor"),
    ]
    for field, params, words in cases:
        response = await rest.get("/responses", params=params)
        assert response.status_code == 422, (params, response.status_code, response.text)
        error = response.json()["error"]
        assert error["code"] == "invalid_fields" and field in error["fields"], (params, error)
        assert words in error["fields"][field], (params, error)
    edge = await _ids(rest, since="0001-01-01T00:00:00+00:00", until="9999-12-31T23:59:59-00:00")
    assert len(edge) == 10, "the first and last moments in UTC are still times"
    zulu = T0.isoformat().replace("+00:00", "Z")
    assert len(await _ids(rest, since=zulu)) == 10, "Z is an offset"


@pytest.mark.parametrize(
    ("accept", "kind"),
    [
        ("text/csv;q=0.5, application/json", "application/json"),  # JSON has the higher q
        ("application/json;q=0.1, text/csv", "text/csv"),
        ("text/csv, application/json", "text/csv"),  # equal q: the client's order
        ("application/json, text/csv", "application/json"),
        ("text/csv", "text/csv"),
        ("text/csv; charset=utf-8", "text/csv"),
        ("text/csv; header=present", "text/csv"),  # RFC 7111's parameter
        ("text/CSV;charset=UTF-8", "text/csv"),
        ("text/*", "text/csv"),  # CSV is the only text offered
        ("text/csv;q=0, */*", "application/json"),  # q=0: not acceptable
        ("*/*", "application/json"),
        ("text/html", "application/json"),  # nothing offered is acceptable: JSON, not a 406
        ("", "application/json"),
    ],
)
async def test_accept_is_negotiated_by_quality(rest, scene, accept, kind):
    response = await rest.get("/responses", headers={"Accept": accept})
    assert response.status_code == 200, response.text
    answered = response.headers["content-type"]
    assert answered.startswith(kind), (accept, answered)


async def test_a_request_stored_late_with_an_earlier_time_is_not_paged_past(rest, scene):
    """The history writer stores a caller's request a moment after it was made, so a row can
    appear behind one already read: a page that has more after it stops before the newest
    rows (`selectors.SETTLE`), and the next page brings them with the one stored late."""
    a, _ = scene
    now = datetime.now(UTC)
    made = [now - timedelta(milliseconds=ms) for ms in (300, 200, 100)]
    await sync_to_async(ResponseRequest.objects.bulk_create)(
        [
            ResponseRequest(id=f"req_new{n}", session=a, origin="api", created_at=at)
            for n, at in enumerate(made)
        ]
    )
    seen: list[str] = []
    body = (await rest.get("/responses", params={"limit": 11})).json()
    seen += [item["id"] for item in body["items"]]
    assert body["next_cursor"] is not None
    # The caller's request made just before req_new0, stored by the history writer only now.
    await sync_to_async(ResponseRequest.objects.create)(
        id="req_late", session=a, origin="caller", created_at=made[0] - timedelta(milliseconds=50)
    )
    cursor = body["next_cursor"]
    while cursor:
        body = (await rest.get("/responses", params={"limit": 11, "cursor": cursor})).json()
        seen += [item["id"] for item in body["items"]]
        cursor = body["next_cursor"]
    assert "req_late" in seen, "a row stored late is on a later page, not behind the cursor"
    assert len(seen) == len(set(seen)) == 14, "every row once"


def test_a_page_of_rows_all_too_recent_is_empty_until_they_settle(scene):
    a, _ = scene
    now = datetime.now(UTC)
    ResponseRequest.objects.bulk_create(
        ResponseRequest(id=f"req_fresh{n}", session=a, origin="api", created_at=now)
        for n in range(3)
    )
    fresh = selectors.RequestFilter(since=now)
    rows, more = selectors.request_page(filters=fresh, limit=2, now=now)
    assert rows == [] and more == selectors.START, "nothing passed yet, and a cursor to ask again"
    assert export.cursor_decode(export.cursor_encode(more, fresh), fresh) == selectors.START
    rows, more = selectors.request_page(filters=fresh, limit=2, now=now + selectors.SETTLE * 2)
    assert [r.id for r in rows] == ["req_fresh0", "req_fresh1"], "settled: paged"
    assert more is not None


async def test_since_after_until_is_422_naming_until(rest, scene):
    since, until = (T0 + timedelta(seconds=6)).isoformat(), (T0 + timedelta(seconds=2)).isoformat()
    for params in ({"since": since, "until": until}, {"since": since, "until": until, "format": "csv"}):
        response = await rest.get("/responses", params=params)
        assert response.status_code == 422, (params, response.text)
        assert "since" in response.json()["error"]["fields"]["until"], "the field, and what it must follow"
    assert await _ids(rest, since=since, until=since) == [], "an empty window is a window"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ([("orgin", "console")], "orgin"),  # misspelt: it would select, and export, every row
        ([("session", "sess_a")], "session"),
        ([("origin", "api"), ("origin", "console")], "origin"),  # which one applies?
        ([("limit", "2"), ("limit", "3")], "limit"),
        ([("format", "csv"), ("format", "json")], "format"),
        ([("metadata[ticket]", "T-1"), ("metadata[ticket]", "T-2")], "metadata[ticket]"),
    ],
)
async def test_an_unknown_or_repeated_parameter_is_422_naming_it(rest, scene, query, field):
    for accept in ("application/json", "text/csv"):
        response = await rest.get("/responses", params=query, headers={"Accept": accept})
        assert response.status_code == 422, (query, accept, response.text[:200])
        error = response.json()["error"]
        assert error["code"] == "invalid_fields" and field in error["fields"], (query, error)


async def test_a_cursor_goes_only_with_the_filters_that_gave_it(rest, scene):
    """A keyset position of one filter's rows skips or repeats rows of another's: refused,
    while the same filters written otherwise (another offset, metadata in another order) go."""
    since = T0.isoformat()
    given = {"since": since, "metadata[ticket]": "T-1", "metadata[tier]": "gold", "limit": 2}
    first = (await rest.get("/responses", params=given)).json()
    cursor = first["next_cursor"]
    assert cursor is not None and len(first["items"]) == 2
    for other in ({"origin": "console"}, {"since": (T0 + timedelta(seconds=1)).isoformat()}, {"metadata[tier]": "x"}):
        refused = await rest.get("/responses", params={**given, **other, "cursor": cursor})
        assert refused.status_code == 422, (other, refused.text)
        assert "filters" in refused.json()["error"]["fields"]["cursor"], other
    alike = {
        "metadata[tier]": "gold",
        "metadata[ticket]": "T-1",
        "since": T0.astimezone(timezone(timedelta(hours=1))).isoformat(),
        "cursor": cursor,
    }
    rest_of_it = await rest.get("/responses", params=alike)
    assert rest_of_it.status_code == 200, rest_of_it.text
    as_csv = await rest.get("/responses", params={**alike, "format": "csv"})
    table = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [row["id"] for row in table] == [item["id"] for item in rest_of_it.json()["items"]]
    assert len(table) == 1, "T-1 and gold: 3 rows, 2 on the first page"


async def test_an_answer_chosen_by_accept_says_it_varies_by_accept(rest, scene):
    """One URL is JSON or CSV by the Accept header: a cache that is not told would hand the
    CSV to the next client asking for JSON."""
    for accept in ("application/json", "text/csv"):
        response = await rest.get("/responses", headers={"Accept": accept})
        vary = [part.strip().lower() for part in response.headers.get("vary", "").split(",")]
        assert "accept" in vary, (accept, response.headers)


async def test_csv_cells_are_the_values_even_those_a_spreadsheet_would_run(rest, scene):
    """The REST hook's CSV is for scripts: a cell beginning with = + - @ ' (or a tab or
    carriage return) is the value as the JSON has it. (The admin's export, for spreadsheets,
    writes such cells as text: tests/sessions/test_admin_export.py.)"""
    a, _ = scene
    texts = ['=HYPERLINK("http://evil","x")', "+1555", "-be brief", "@SUM(A1)", "\tx", "\r=1", "'quoted", "plain"]
    await sync_to_async(ResponseRequest.objects.bulk_create)(
        ResponseRequest(
            id=f"req_cell{n}", session=a, origin="console", instructions=text, requested_by="@ops",
            metadata={"k": text}, created_at=T0 + timedelta(minutes=5, seconds=n),
        )
        for n, text in enumerate(texts)
    )  # fmt: skip
    since = (T0 + timedelta(minutes=5)).isoformat()
    items = await _all(rest, since=since)
    table = list(csv.DictReader(io.StringIO((await rest.get("/responses", params={"since": since, "format": "csv"})).text)))
    assert [row["instructions"] for row in table] == texts == [item["instructions"] for item in items]
    assert {row["requested_by"] for row in table} == {"@ops"}
    assert [json.loads(row["metadata"]) for row in table] == [{"k": text} for text in texts]


def test_a_row_reads_of_its_session_only_what_its_json_shows():
    """A request's row names its session's public id and prices by its model; the session's
    transcript of a long recorded call (and its usage, rate limits…) was read and decoded again
    for every one of its requests: an export of a long call's history ran ten times slower."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    spoken = [{"at": i * 1.5, "role": "user", "text": "word " * 30} for i in range(300)]
    session = LiveSession.objects.create(
        upstream_id="sess_recorded", model="gpt-realtime", status="ended", recording_transcript=spoken
    )
    ResponseRequest.objects.bulk_create(
        ResponseRequest(id=f"req_read_{i}", session=session, origin="api", status="completed")
        for i in range(3)
    )
    with CaptureQueriesContext(connection) as queries:
        rows = [row.to_dict() for row in selectors.request_filtered(selectors.RequestFilter())]
    assert len(queries) == 1, [query["sql"] for query in queries]  # no query a row
    assert {(row["session_id"], row["id"]) for row in rows} == {
        ("sess_recorded", f"req_read_{i}") for i in range(3)
    }
    assert "recording_transcript" not in queries[0]["sql"]
