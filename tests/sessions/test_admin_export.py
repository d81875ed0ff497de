"""Admin: the response history filtered by metadata and requester, exported as the REST hook's
CSV (a button for the list's filters, an action for the selected rows), and costs on the
session, request and token pages."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.utils import timezone

from apps.sessions.models import LiveSession, ResponseRequest
from apps.sessions.tokens import api_token_create

pytestmark = pytest.mark.django_db

USAGE = {
    "total_tokens": 3_000_000,
    "input_tokens": 2_000_000,
    "output_tokens": 1_000_000,
    "input_token_details": {"text_tokens": 2_000_000, "audio_tokens": 0, "cached_tokens": 0},
    "output_token_details": {"text_tokens": 1_000_000, "audio_tokens": 0},
}  # on gpt-realtime: 2 × $4 + 1 × $16 = $24


@pytest.fixture
def rows():
    now = timezone.now()
    session = LiveSession.objects.create(upstream_id="sess_exp", model="gpt-realtime", status="ended", usage=USAGE)
    made = []
    for n, (by, meta) in enumerate(
        [("token:ci", {"ticket": "T-1"}), ("ada", {"ticket": "T-1"}), ("ada", {"ticket": "T-2"}), ("bob", None)]
    ):
        made.append(
            ResponseRequest.objects.create(
                id=f"req_exp{n}", session=session, origin="api" if by.startswith("token:") else "console",
                status="completed", metadata=meta, requested_by=by, usage=USAGE,
                created_at=now + timedelta(seconds=n),
            )
        )
    return made


@pytest.fixture
def staff(admin_client):
    return admin_client  # pytest-django's: a logged-in superuser


LIST = "/admin/oc_sessions/responserequest/"


def _listed(page) -> set[str]:
    return {f"req_exp{n}" for n in range(4) if f"req_exp{n}".encode() in page.content}


async def _read(chunks) -> bytes:
    return b"".join([chunk async for chunk in chunks])


def _csv_ids(response) -> list[str]:
    assert response["Content-Type"].startswith("text/csv")
    body = async_to_sync(_read)(response.streaming_content).decode()  # as the ASGI handler reads it
    table = list(csv.DictReader(io.StringIO(body)))
    assert table and "cost_usd" in table[0] and "metadata" in table[0]
    return [row["id"] for row in table]


def test_the_list_filters_by_metadata_and_requester(staff, rows):
    assert _listed(staff.get(LIST, {"metadata": "ticket=T-1"})) == {"req_exp0", "req_exp1"}
    assert _listed(staff.get(LIST, {"requested_by": "ada"})) == {"req_exp1", "req_exp2"}
    both = staff.get(LIST, {"requested_by": "ada", "metadata": "ticket=T-1"})
    assert _listed(both) == {"req_exp1"}
    assert b'placeholder="key=value"' in both.content, "the filters are typed in"


@pytest.mark.django_db(transaction=True)  # the export reads on a thread of its own
def test_export_csv_streams_what_the_list_shows(staff, rows):
    page = staff.get(LIST, {"requested_by": "ada"})
    assert b"Export CSV" in page.content and b"export.csv?requested_by=ada" in page.content
    assert _csv_ids(staff.get(f"{LIST}export.csv", {"requested_by": "ada"})) == ["req_exp1", "req_exp2"]
    assert _csv_ids(staff.get(f"{LIST}export.csv", {"metadata": "ticket=T-1"})) == ["req_exp0", "req_exp1"]
    chosen = staff.post(LIST, {"action": "export_csv", "_selected_action": ["req_exp3", "req_exp0"]})
    assert _csv_ids(chosen) == ["req_exp0", "req_exp3"], "the action exports the selected rows, oldest first"


@pytest.mark.django_db(transaction=True)  # the export reads on a thread of its own
def test_export_csv_writes_cells_a_spreadsheet_would_run_as_text(staff, rows):
    """OWASP's CSV injection: people open the admin's export in spreadsheets, where a cell
    beginning with = + - @ (or a tab or carriage return) is a formula. Such a cell gets a '
    first, which shows it as text; so does one beginning with ' itself, so removing one
    leading ' gives every value back."""
    texts = ['=HYPERLINK("http://evil","x")', "+1555", "-be brief", "@SUM(A1)", "\tx", "\r=1", "'q", "plain"]
    session = rows[0].session
    for n, text in enumerate(texts):
        ResponseRequest.objects.create(
            id=f"req_cell{n}", session=session, origin="console", instructions=text,
            requested_by="@ops", metadata={"k": text},
        )  # fmt: skip
    response = staff.get(f"{LIST}export.csv", {"requested_by": "@ops"})
    body = async_to_sync(_read)(response.streaming_content).decode()
    table = list(csv.DictReader(io.StringIO(body)))
    assert [row["instructions"] for row in table] == [t if t == "plain" else f"'{t}" for t in texts]
    assert {row["requested_by"] for row in table} == {"'@ops"}
    assert [json.loads(row["metadata"]) for row in table] == [{"k": t} for t in texts], "JSON as is"


def test_export_is_for_staff_only(client, rows):
    response = client.get(f"{LIST}export.csv")
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_costs_show_on_the_session_request_and_token_pages(staff, rows):
    session = rows[0].session
    assert b"$24.0000" in staff.get(f"/admin/oc_sessions/livesession/{session.pk}/change/").content
    assert b"$24.0000" in staff.get(f"{LIST}req_exp0/change/").content
    token, _ = api_token_create(name="ci")
    api_token_create(name="idle")
    tokens = staff.get("/admin/oc_sessions/apitoken/").content.decode()
    assert "3,000,000 tokens in 1 request, $24.0000" in tokens, "ci made one request"
    assert staff.get(f"/admin/oc_sessions/apitoken/{token.pk}/change/").content.decode().count("$24.0000") == 1


def test_a_model_without_a_price_says_so(staff, rows):
    session = LiveSession.objects.create(id=uuid.uuid4(), upstream_id="sess_free", model="my-own-model", usage=USAGE)
    assert b"no price" in staff.get(f"/admin/oc_sessions/livesession/{session.pk}/change/").content


@pytest.mark.parametrize("query", [{"bogus": "1"}, {"created_at__gte": "garbage"}, {"session__id__exact": "abc"}])
def test_export_of_a_filter_the_list_cannot_apply_answers_as_the_list_does(staff, rows, query):
    """A stale or hand-edited link: the list answers it with itself, unfiltered, flagged `e=1`
    ("incorrect lookup parameters"); its export did the same, not a server error."""
    listed = staff.get(LIST, query)
    exported = staff.get(f"{LIST}export.csv", query)
    assert (listed.status_code, listed["Location"]) == (302, f"{LIST}?e=1")
    assert (exported.status_code, exported["Location"]) == (302, f"{LIST}?e=1")
