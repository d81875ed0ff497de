"""The console's pages and forms through Django's test client (no browser, no JavaScript):
the nudge form without JavaScript, its refusals, the row limit, ended sessions, awkward ids.

Sessions are rows made directly (status `live` with no actor behind them): submitting a request
only stores it and pings the session's group, which nobody hears, and that is all these tests
need. Views run their database work on other threads, hence the transactional database.
"""

from __future__ import annotations

import html
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from apps.console import feed
from apps.console.models import OperatorProfile
from apps.sessions import history, records
from apps.sessions.models import LiveSession, ResponseRequest
from apps.sessions.overrides import MAX_METADATA_PAIRS
from tests.support.html import labelled_names
from tests.support.sqlite import sqlite_steps

pytestmark = pytest.mark.django_db(transaction=True)

AWKWARD = "sess/<b>x</b>\"'&%2F"


def _session(upstream_id: str = "sess_pages1", **fields) -> LiveSession:
    return LiveSession.objects.create(
        id=uuid.uuid4(), upstream_id=upstream_id, model="gpt-realtime", **{"status": "live", **fields}
    )


def _rows(*pairs: tuple[str, str], total: int | None = None) -> dict[str, str]:
    """The formset's fields for these metadata rows, as the page posts them."""
    fields = {"metadata-TOTAL_FORMS": str(len(pairs) if total is None else total), "metadata-INITIAL_FORMS": "0"}
    for row, (key, value) in enumerate(pairs):
        fields[f"metadata-{row}-key"] = key
        fields[f"metadata-{row}-value"] = value
    return fields


def _post(client: Client, session_id: str, fields: dict, *, json_answer: bool = False):
    headers = {"Accept": "application/json"} if json_answer else {}
    return client.post(reverse("console:nudge", args=[session_id]), {"instructions_mode": "append", **fields}, headers=headers)


def _input(page: str, name: str) -> str:
    """The <input> tag of the field `name` in the page."""
    found = re.search(rf'<input[^>]*name="{re.escape(name)}"[^>]*>', page)
    assert found, f"no input named {name} on the page"
    return found.group(0)


def _error_beside(page: str, name: str) -> str:
    found = re.search(rf'<p class="field-error" id="err-{re.escape(name)}"[^>]*>(.*?)</p>', page, re.S)
    assert found, f"no error slot for {name} on the page"
    return html.unescape(found.group(1))


# ---------------------------------------------------------------- without JavaScript


def test_several_metadata_rows_are_added_without_javascript(operator):
    session = _session()
    typed = {"instructions": "Offer the refund.", "conversation": "none"}
    page = _post(operator, session.upstream_id, {**typed, **_rows(("ticket", "T-7")), "add_row": "1"})
    assert page.status_code == 200
    text = page.content.decode()
    assert 'name="metadata-TOTAL_FORMS" value="2"' in text, "the management form counts the new row"
    assert 'value="T-7"' in _input(text, "metadata-0-value"), "what was typed stays"
    assert "value=" not in _input(text, "metadata-1-key"), "the new row is empty"
    assert "Offer the refund." in text and "checked" in _input(text, "conversation")
    assert "field-error" in text and not re.search(r'class="field-error"[^>]*>[^<]+</p>', text), "no error yet"

    page = _post(operator, session.upstream_id, {**typed, **_rows(("ticket", "T-7"), ("reason", "late")), "add_row": "1"})
    assert 'name="metadata-TOTAL_FORMS" value="3"' in page.content.decode()

    sent = _post(operator, session.upstream_id, {**typed, **_rows(("ticket", "T-7"), ("reason", "late"), ("tier", "gold"))})
    assert sent.status_code == 302 and sent["Location"] == reverse("console:session", args=[session.upstream_id])
    row = ResponseRequest.objects.get(session=session)
    assert row.metadata == {"ticket": "T-7", "reason": "late", "tier": "gold"}
    assert row.instructions == "Offer the refund." and row.conversation == "none" and row.origin == "console"
    assert "Response requested" in operator.get(sent["Location"]).content.decode()


def test_without_javascript_a_row_ticked_remove_is_not_refused_nor_sent_nor_shown_again(operator):
    # A row once filled in could only be cleared by hand; a row with only a value was refused.
    session = _session()
    sid = session.upstream_id
    page = operator.get(reverse("console:session", args=[sid])).content.decode()
    assert 'type="checkbox"' in _input(page, "metadata-0-DELETE")
    assert "Remove row 1" in re.sub(r"<[^>]+>", "", page), "each box is named for its row"

    rows = _rows(("ticket", "T-7"), ("", "typo"), ("k" * 65, "wrong"), ("reason", "late"))
    ticked = {"metadata-1-DELETE": "on", "metadata-2-DELETE": "on"}
    typed = {"instructions": "Offer the refund.", **rows, **ticked}
    added = _post(operator, sid, {**typed, "add_row": "1"}).content.decode()
    assert 'name="metadata-TOTAL_FORMS" value="3"' in added, "two rows left, and the new one"
    assert 'value="late"' in _input(added, "metadata-1-value") and "typo" not in added
    assert "checked" not in _input(added, "metadata-0-DELETE")

    refused = _post(operator, sid, {**typed, "instructions": "x" * 32_769})
    assert refused.status_code == 422
    text = refused.content.decode()
    assert 'name="metadata-TOTAL_FORMS" value="2"' in text and "wrong" not in text
    assert _error_beside(text, "metadata-1-key") == "", "the removed rows' errors are not said"

    sent = _post(operator, sid, typed)
    assert sent.status_code == 302
    row = ResponseRequest.objects.get(session=session)
    assert row.metadata == {"ticket": "T-7", "reason": "late"}

    every = {**_rows(("", "typo")), "metadata-0-DELETE": "on", "add_row": "1"}
    alone = _post(operator, sid, every).content.decode()
    assert 'name="metadata-TOTAL_FORMS" value="2"' in alone, "a blank row kept, and the new one"
    assert "typo" not in alone


def test_a_refused_form_comes_back_with_what_was_typed_and_the_error_beside_its_field(operator):
    session = _session()
    fields = {"instructions": "Offer the refund, kindly.", **_rows(("ticket", "T-7"), ("k" * 65, "too long a key"))}
    page = _post(operator, session.upstream_id, fields)
    assert page.status_code == 422, "refused, not redirected"
    text = page.content.decode()
    assert "Offer the refund, kindly." in text
    assert 'value="T-7"' in _input(text, "metadata-0-value") and "too long a key" in _input(text, "metadata-1-value")
    assert _error_beside(text, "metadata-1-key") == "65 characters; a key has at most 64."
    assert 'aria-invalid="true"' in _input(text, "metadata-1-key")
    assert 'aria-invalid' not in _input(text, "metadata-0-key")
    assert not ResponseRequest.objects.exists(), "nothing was stored"


def test_a_refused_label_comes_back_with_what_was_typed_and_the_error_beside_it(operator):
    # Without JavaScript a redirect with a message at the top lost the label that was typed.
    session = _session(label="Order 42")
    typed = "Jane " + "x" * 200
    page = operator.post(reverse("console:label", args=[session.upstream_id]), {"label": typed})
    assert page.status_code == 422, "refused, not redirected"
    text = page.content.decode()
    assert f'value="{typed}"' in _input(text, "label"), "what was typed stays"
    assert 'aria-invalid="true"' in _input(text, "label") and "autofocus" in _input(text, "label")
    assert _error_beside(text, "label") == "Label is 205 characters; at most 200 are allowed."
    session.refresh_from_db()
    assert session.label == "Order 42", "nothing was stored"


def test_without_javascript_the_dashboard_shows_each_sessions_age_and_last_activity(operator):
    # dashboard.js fills these cells; without it they were blank.
    _session(started_at=timezone.now() - timedelta(hours=2, minutes=3, seconds=30))
    page = operator.get(reverse("console:dashboard")).content.decode()
    ages = re.findall(r'<td data-label="(?:Age|Last activity)" data-since="[^"]+">([^<]*)</td>', page)
    assert ages == ["2h 3m", "2h 3m"], "as dashboard.js words it, as of the page's load"


def test_without_javascript_reload_for_news_is_a_link_that_sends_no_form_again(operator):
    # A refused form's page is at the form's address: reloading it, as the page said to, posted
    # the form again. The reloads are links to the page itself (the dashboard's, with its view).
    session = _session()
    page = _post(operator, session.upstream_id, {"instructions": "x" * 32_769}).content.decode()
    here = reverse("console:session", args=[session.upstream_id])
    reload = r'<a href="([^"]*)">reload[^<]*</a>'
    reloads = re.findall(reload, page)
    assert reloads == [here, here], "both say to reload; each is a link to the session's page"
    dashboard = operator.get(reverse("console:dashboard") + "?q=jane&sort=label").content.decode()
    assert re.findall(reload, dashboard) == ["/console/?q=jane&amp;sort=label"]


def test_each_queued_requests_cancel_is_named_for_its_request(operator):
    # Each was "Cancel" (or "Cancel…"): tabbing through a queue, one could not tell which.
    session = _session()
    at = timezone.now().replace(hour=10, minute=0, second=0, microsecond=0)
    asked = [("console", "Offer the refund."), ("api", ""), ("caller", "")]
    for n, (origin, instructions) in enumerate(asked):
        ResponseRequest.objects.create(
            id=f"req_q{n}", session=session, origin=origin, status="queued",
            instructions=instructions, created_at=at + timedelta(seconds=n),
        )
    page = operator.get(reverse("console:session", args=[session.upstream_id])).content.decode()
    assert labelled_names(page, "button") == [
        "Cancel Offer the refund. 10:00:00",
        "Cancel no instructions 10:00:01",
    ]
    assert labelled_names(page, "summary") == ["Cancel… the caller’s own response 10:00:02"]


def _focused(page: str) -> list[str]:
    """The names of the fields with `autofocus`."""
    return re.findall(r'<(?:input|textarea)[^>]*name="([^"]+)"[^>]*\sautofocus[\s>]', page)


def test_without_javascript_the_field_to_fix_or_the_new_row_has_the_focus(operator):
    # The page comes back at its top; on a phone the field is a screen or more below.
    session = _session()
    sid = session.upstream_id
    text = _post(operator, sid, {"instructions": "x" * 32_769, **_rows(("k" * 65, "v"))})
    assert _focused(text.content.decode()) == ["instructions"], "the first refused, and it alone"
    alone = _post(operator, sid, _rows(("ticket", "T-7"), ("k" * 65, "v"))).content.decode()
    assert _focused(alone) == ["metadata-1-key"]
    added = _post(operator, sid, {**_rows(("ticket", "T-7")), "add_row": "1"}).content.decode()
    assert _focused(added) == ["metadata-1-key"], "the new row takes the focus"
    fresh = operator.get(reverse("console:session", args=[sid])).content.decode()
    assert _focused(fresh) == [], "a page loaded afresh takes no focus from the operator"


@pytest.mark.parametrize(
    ("fields", "field", "error"),
    [
        (_rows(("oc_request", "x")), "metadata-0-key", "'oc_request' is reserved by the relay."),
        (_rows(("topic", "a"), ("topic", "b")), "metadata-1-key", "This key is already used above."),
        (_rows(("", "orphan")), "metadata-0-key", "A value needs a key."),
        (_rows(("topic", "v" * 513)), "metadata-0-value", "513 characters; a value has at most 512."),
        ({"instructions": "x" * 32_769}, "instructions", "32769 characters; at most 32768 are allowed."),
        ({"instructions": "bad\x00text"}, "instructions", "This text contains a NUL character"),
        (_rows(("to\x00pic", "v")), "metadata-0-key", "This text contains a NUL character"),
        ({"instructions_mode": "merge"}, "instructions_mode", "Choose append or replace."),
        ({"conversation": "sideways"}, "conversation", "Choose auto or none."),
        ({"as_note": "on"}, "instructions", "Write the note's text."),
        # What a note cannot carry is refused, not dropped without a word.
        (
            {"as_note": "on", "instructions": "Prefers email.", **_rows(("topic", "billing"))},
            "metadata",
            "A note carries no metadata",
        ),
        (
            {"as_note": "on", "instructions": "Prefers email.", "conversation": "none"},
            "conversation",
            "A note goes into the conversation",
        ),
    ],
)
def test_each_limit_is_named_beside_its_field_in_json_and_html(operator, fields, field, error):
    session = _session()
    answer = _post(operator, session.upstream_id, fields, json_answer=True)
    assert answer.status_code == 422
    assert answer.json()["errors"][field].startswith(error)
    page = _post(operator, session.upstream_id, fields)
    assert page.status_code == 422 and _error_beside(page.content.decode(), field).startswith(error)
    assert not ResponseRequest.objects.exists()


def test_at_most_fifteen_rows_add_row_stops_there_and_a_sixteenth_is_refused(operator):
    session = _session()
    fourteen = [(f"k{i}", f"v{i}") for i in range(MAX_METADATA_PAIRS - 1)]
    page = _post(operator, session.upstream_id, {**_rows(*fourteen), "add_row": "1"}).content.decode()
    assert f'name="metadata-TOTAL_FORMS" value="{MAX_METADATA_PAIRS}"' in page
    assert re.search(r'<button[^>]*data-add-row[^>]*\bdisabled\b', page), "Add a metadata row is disabled at the limit"
    fifteen = [*fourteen, ("k14", "v14")]
    again = _post(operator, session.upstream_id, {**_rows(*fifteen), "add_row": "1"}).content.decode()
    assert f'name="metadata-TOTAL_FORMS" value="{MAX_METADATA_PAIRS}"' in again, "no sixteenth row"

    sixteen = [*fifteen, ("k15", "v15")]
    refused = _post(operator, session.upstream_id, _rows(*sixteen))
    assert refused.status_code == 422
    text = refused.content.decode()
    assert _error_beside(text, "metadata") == "At most 15 metadata rows; remove 1."
    assert 'value="v15"' in _input(text, "metadata-15-value"), "the sixteenth row is shown back, not dropped"
    assert _post(operator, session.upstream_id, _rows(*sixteen), json_answer=True).json()["errors"] == {
        "metadata": "At most 15 metadata rows; remove 1."
    }
    assert not ResponseRequest.objects.exists()

    accepted = _post(operator, session.upstream_id, _rows(*fifteen), json_answer=True)
    assert accepted.status_code == 202 and len(accepted.json()["request"]["metadata"]) == MAX_METADATA_PAIRS
    forged = _post(operator, session.upstream_id, _rows(total=1000), json_answer=True)
    assert forged.status_code == 422 and "metadata" in forged.json()["errors"], "a forged row count is refused"


def test_blank_rows_are_ignored_and_a_script_may_post_without_the_row_fields(operator):
    session = _session()
    assert _post(operator, session.upstream_id, {"instructions": "Hi.", **_rows(("", ""), ("a", "1"), ("", ""))}).status_code == 302
    assert _post(operator, session.upstream_id, {"instructions": "Plain."}).status_code == 302
    rows = list(ResponseRequest.objects.order_by("created_at").values_list("instructions", "metadata", "conversation"))
    assert rows == [("Hi.", {"a": "1"}, None), ("Plain.", None, None)]


# ---------------------------------------------------------------- one shape per entity


def test_requests_are_shown_in_the_rest_hooks_shape(operator):
    session = _session()
    answer = _post(operator, session.upstream_id, {"instructions": "Be brief.", **_rows(("n", "1"))}, json_answer=True)
    assert answer.status_code == 202
    row = ResponseRequest.objects.select_related("session").get()
    assert answer.json()["request"] == json.loads(json.dumps(row.to_dict()))
    page = operator.get(reverse("console:session", args=[session.upstream_id])).content.decode()
    embedded = re.search(r'<script id="requests-data" type="application/json">(.*?)</script>', page, re.S).group(1)
    assert json.loads(embedded) == [json.loads(json.dumps(row.to_dict()))]


def test_dashboard_summaries_are_the_session_shape_plus_the_dashboards_own(operator):
    session = _session(connected_by="token:agent-7", watchers=["bob"])
    _post(operator, session.upstream_id, {"instructions": "Hi."})
    [summary] = feed.summaries()
    shape = LiveSession.objects.get(pk=session.pk).to_dict()
    assert {key: summary[key] for key in shape} == shape
    assert summary["state"] == "idle" and summary["requests"] == 1 and summary["nudges"] == 1
    assert summary["watchers"] == ["bob"] and summary["connected_by"] == "token:agent-7"
    assert summary["last_activity"] >= summary["started_at"]



def test_the_dashboard_search_finds_a_phone_call_by_the_callers_number_or_its_call_id(operator):
    _session(
        upstream_id="sess_phone", kind="sip", call_id="rtc_u1_9c1f", caller_number="+15551234567"
    )
    _session(upstream_id="sess_other")
    for needle in ("+15551234567", "5551234", "rtc_u1_9c1f"):
        page = operator.get(reverse("console:dashboard"), {"q": needle}).content.decode()
        found = re.findall(r'<tr data-session="([^"]+)"', page)
        assert found == ["sess_phone"], f"searching {needle!r} found {found}"


def test_a_script_whose_operator_logged_out_is_told_so_not_sent_the_login_page(operator):
    session = _session()
    row = ResponseRequest.objects.create(
        id="req_out1", session=session, origin="console", status="queued"
    )
    logged_out = Client()
    json_answer = {"Accept": "application/json"}
    for url in (
        reverse("console:nudge", args=[session.upstream_id]),
        reverse("console:interrupt", args=[session.upstream_id]),
        reverse("console:label", args=[session.upstream_id]),
        reverse("console:cancel", args=[row.id]),
    ):
        answer = logged_out.post(url, {"instructions": "x", "label": "x"}, headers=json_answer)
        assert answer.status_code == 401, f"{url}: {answer.status_code}"
        assert "logged out" in answer.json()["errors"]["form"]


def test_a_script_of_an_operator_who_may_only_watch_is_told_why_it_is_refused(operator):
    from django.contrib.auth import get_user_model

    session = _session()
    row = ResponseRequest.objects.create(
        id="req_watch1", session=session, origin="console", status="queued"
    )
    watcher = Client()
    watcher.force_login(get_user_model().objects.create_user("watcher", password="pw-for-tests"))
    for url in (
        reverse("console:nudge", args=[session.upstream_id]),
        reverse("console:interrupt", args=[session.upstream_id]),
        reverse("console:cancel", args=[row.id]),
    ):
        answer = watcher.post(url, {"instructions": "x"}, headers={"Accept": "application/json"})
        assert answer.status_code == 403, f"{url}: {answer.status_code}"
        assert answer.json()["errors"]["form"] == "You may watch sessions but not steer them."


def test_the_dashboards_read_is_three_queries_however_many_sessions_are_live(
    operator, django_assert_num_queries
):
    for i in range(30):
        _session(upstream_id=f"sess_many{i:02d}", instructions="Long instructions. " * 50)
    # The sessions, their requests' counts, their active responses: nothing the summaries use
    # was left out of the read (a deferred column read per row would be a query per session).
    with django_assert_num_queries(3):
        summaries = feed.summaries()
    assert len(summaries) == 30


def _recorded(session: LiveSession, origins_and_statuses, *, start: int = 0, at: float) -> None:
    """Requests stored as the history writer stores the relay's (the row counts them)."""
    history.apply_batch(
        [
            records.request_created(
                key=session.pk, request_id=f"req_{session.upstream_id}{start + i}", origin=origin,
                event_id="", instructions=None, metadata=None, conversation=None,
                requested_by="", at=at, status=status,
                response_id=f"resp_{session.upstream_id}{start + i}" if status == "in_progress"
                else None,
            )
            for i, (origin, status) in enumerate(origins_and_statuses)
        ]
    )


def test_the_dashboards_read_does_not_grow_with_the_requests_of_a_session(operator):
    """Every request of every live session was counted on each of the feed's reads, once a
    second: 0.3 s a read at a thousand live sessions of 500 requests each. The counts by
    origin are kept on the session's row, the latest times read one index step each, and
    only the queued and in-progress requests are read: a call's history adds nothing to a
    read. Measured in SQLite's instructions, which a fast machine does not make fewer."""
    busy = _session(upstream_id="sess_busy")
    _session(upstream_id="sess_quiet")
    now = datetime.fromtimestamp(timezone.now().timestamp(), tz=UTC)  # as the writer stores it
    made = [("caller", "completed"), ("api", "completed"), ("console", "in_progress")]
    _recorded(busy, [*made, ("api", "queued")], at=now.timestamp())
    with sqlite_steps() as few:
        summaries = {s["id"]: s for s in feed.summaries()}
    counts = {"caller": 1, "console": 1, "api": 2, "server": 0}
    assert summaries["sess_busy"]["origin_counts"] == counts
    assert summaries["sess_busy"]["queued"] == 1 and summaries["sess_busy"]["nudges"] == 3
    assert summaries["sess_busy"]["active_response_id"] == "resp_sess_busy2"
    assert summaries["sess_busy"]["last_activity"] == now.isoformat()
    assert summaries["sess_quiet"]["requests"] == 0 and summaries["sess_quiet"]["state"] == "idle"

    earlier = (now - timedelta(hours=1)).timestamp()
    _recorded(busy, [("server", "completed")] * 300, start=4, at=earlier)
    with sqlite_steps() as many:
        summaries = {s["id"]: s for s in feed.summaries()}
    assert summaries["sess_busy"]["origin_counts"] == {**counts, "server": 300}
    assert many[0] <= few[0] * 1.1, f"300 more requests: {few[0]} → {many[0]} (×10 instructions)"


def test_a_long_sessions_page_shows_its_latest_requests_and_its_queue(operator):
    """A call of hours has more requests than the page holds: the page holds the latest,
    so the queue and the newest of the history are there (it held the oldest, and the
    queue and the last requests were missing until the page's socket caught up)."""
    from apps.console.views import PAGE_REQUESTS

    session = _session(upstream_id="sess_hours")
    start = timezone.now() - timedelta(hours=3)
    ResponseRequest.objects.bulk_create(
        ResponseRequest(
            id=f"req_hours{i:05d}", session=session, origin="caller", status="completed",
            created_at=start + timedelta(seconds=i),
        )
        for i in range(PAGE_REQUESTS + 5)
    )
    ResponseRequest.objects.create(
        id="req_hours_waiting", session=session, origin="console", status="queued",
        instructions="Offer the refund.",
    )
    page = operator.get(reverse("console:session", args=[session.upstream_id])).content.decode()
    shown = re.findall(r'<tr data-request="([^"]+)"', page)
    assert len(shown) == PAGE_REQUESTS
    assert shown[:2] == ["req_hours_waiting", f"req_hours{PAGE_REQUESTS + 4:05d}"], shown[:2]
    assert f"req_hours{6:05d}" in shown and f"req_hours{5:05d}" not in shown, "the oldest left out"
    data = re.search(r'<script id="requests-data" type="application/json">(.*?)</script>', page)
    assert "req_hours_waiting" in data.group(1), "the page's script knows the queue"


# ---------------------------------------------------------------- ended sessions


def test_an_ended_session_page_says_so_with_its_reason_and_offers_no_form(operator):
    session = _session(
        upstream_id="sess_over1", status="failed", end_reason="upstream_closed", end_code=1011,
        end_detail="The upstream connection was lost (1011).",
    )
    page = operator.get(reverse("console:session", args=[session.upstream_id]))
    text = page.content.decode()
    assert page.status_code == 200
    assert "The upstream ended the session: The upstream connection was lost (1011)." in text
    assert "upstream_closed · 1011" in text, "the code beside the words"
    assert re.search(r'<div class="ended-note" data-ended-note role="status">', text), "the note is shown"
    assert "data-nudge-form" not in text and "data-interrupt-form" not in text, "no steering"
    assert 'data-state="over"' in text and "Session over" in text and "Connecting" not in text
    assert 'data-status="failed"' in text


def test_a_live_session_page_has_the_form_and_the_end_note_hidden(operator):
    session = _session()
    text = operator.get(reverse("console:session", args=[session.upstream_id])).content.decode()
    assert "data-nudge-form" in text
    assert re.search(r'<div class="ended-note" data-ended-note role="status" hidden>', text)


def test_a_nudge_to_an_ended_session_comes_back_with_the_reason(operator):
    session = _session(upstream_id="sess_over2", status="ended", end_reason="caller_closed")
    refused = _post(operator, session.upstream_id, {"instructions": "Too late."})
    assert refused.status_code == 409
    assert "caller_closed" in refused.content.decode()
    answer = _post(operator, session.upstream_id, {"instructions": "Too late."}, json_answer=True)
    assert answer.status_code == 409 and "not live" in answer.json()["errors"]["form"]


# ---------------------------------------------------------------- a session id the console did not choose


def test_an_awkward_session_id_breaks_no_page_and_no_post(operator, settings):
    settings.OC_ACTOR_REPLY_TIMEOUT = 0.2  # no actor answers a row made by hand
    session = _session(upstream_id=AWKWARD)
    url = reverse("console:session", args=[AWKWARD])
    assert url == "/console/sessions/sess/%3Cb%3Ex%3C/b%3E%22'&%252F/"

    dashboard = operator.get("/console/").content.decode()
    assert "<b>x</b>" not in dashboard, "the id is text, not markup"
    assert html.escape(AWKWARD) in dashboard
    assert f'href="{html.escape(url)}"' in dashboard

    page = operator.get(url)
    text = page.content.decode()
    assert page.status_code == 200 and "<b>x</b>" not in text
    assert f"<h1 class=\"session-id\">{html.escape(AWKWARD)}</h1>" in text
    assert f'data-session-id="{html.escape(AWKWARD)}"' in text
    assert f'action="{html.escape(reverse("console:nudge", args=[AWKWARD]))}"' in text

    sent = _post(operator, AWKWARD, {"instructions": "Hello.", **_rows(("k", "v"))})
    assert sent.status_code == 302 and sent["Location"] == url
    assert _post(operator, AWKWARD, {"add_row": "1", **_rows(("k", "v"))}).status_code == 200
    assert _post(operator, AWKWARD, _rows(("oc_request", "v"))).status_code == 422
    row = ResponseRequest.objects.get(session=session)
    assert row.metadata == {"k": "v"}

    interrupted = operator.post(reverse("console:interrupt", args=[AWKWARD]), headers={"Accept": "application/json"})
    assert interrupted.status_code == 503, "routed to the session (whose actor does not answer), not a 404"
    assert AWKWARD in interrupted.json()["errors"]["form"]
    cancelled = operator.post(reverse("console:cancel", args=[row.id]))
    assert cancelled.status_code == 302 and cancelled["Location"] == url
    assert operator.get(url).status_code == 200

    logged_out = Client().post(reverse("console:nudge", args=[AWKWARD]), {"instructions": "x"})
    assert logged_out.status_code == 302
    assert parse_qs(urlsplit(logged_out["Location"]).query)["next"] == [url], "back to this session after the login"


START = datetime(2026, 12, 6, 15, 52, 13, tzinfo=UTC)


def test_a_page_that_finds_the_database_away_answers_503_without_asking_it_again(
    operator, monkeypatch
):
    """The operator's timezone is the first thing a page reads. When that read finds the
    database away (on PostgreSQL, after the pool's 10 s), the page is the 503 at once, not
    after the view has waited for the database a second time."""
    from django.db import OperationalError

    from apps.console import timezones

    def away(user):
        raise OperationalError("couldn't get a connection after 10.00 sec")

    monkeypatch.setattr(timezones, "chosen", away)
    page = operator.get(reverse("console:dashboard"))
    assert page.status_code == 503 and page["Retry-After"]
    assert "cannot reach its database" in page.content.decode()


@pytest.mark.parametrize(
    ("cookie", "setting", "shown"),
    [
        ("", "", "15:52:13 UTC"),
        ("America%2FNew_York", "", "10:52:13 EST"),  # the browser's, as clock.js encodes it
        ("America/New_York", "", "10:52:13 EST"),
        ("America%2FNew_York", "Asia/Kolkata", "21:22:13 IST"),  # the operator's choice wins
        ("Mars%2FOlympus", "", "15:52:13 UTC"),
    ],
)
def test_server_rendered_times_are_in_the_operators_timezone(operator, cookie, setting, shown):
    session = _session("sess_zone1", started_at=START)
    if setting:
        user = operator.session.get("_auth_user_id")
        OperatorProfile.objects.update_or_create(user_id=user, defaults={"timezone": setting})
    if cookie:
        operator.cookies["oc_tz"] = cookie
    page = operator.get(reverse("console:session", args=[session.upstream_id]))
    assert page.status_code == 200
    assert f">{shown}</time>" in page.content.decode(), shown
    settings_page = operator.get(reverse("console:preferences")).content.decode()
    if cookie == "America%2FNew_York":
        assert "America/New_York" in settings_page and "%2F" not in settings_page
