"""Admin: history inline and read-only; staff only."""

from __future__ import annotations

import html
import re
import time
import uuid
from datetime import timedelta
from urllib.parse import quote

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from apps.sessions.models import ApiToken, LiveSession, ResponseRequest
from apps.sessions.tokens import api_token_create, api_token_revoke
from tests.support.sqlite import sqlite_steps

pytestmark = pytest.mark.django_db


@pytest.fixture
def history():
    now = timezone.now()
    session = LiveSession.objects.create(
        id=uuid.uuid4(), upstream_id="sess_admin1", model="gpt-realtime", status="live"
    )
    ResponseRequest.objects.create(
        id="req_admin1", session=session, origin="api", status="completed",
        instructions="Offer the refund.", metadata={"ticket": "T-7"},
        created_at=now, sent_at=now + timedelta(milliseconds=5),
        started_at=now + timedelta(milliseconds=25), finished_at=now + timedelta(seconds=1),
    )
    return session


@pytest.fixture
def staff_client(client):
    user = get_user_model().objects.create_user("boss", password="pw", is_staff=True, is_superuser=True)
    client.force_login(user)
    return client


def test_staff_sees_a_sessions_history_inline(staff_client, history):
    page = staff_client.get(f"/admin/oc_sessions/livesession/{history.pk}/change/")
    assert page.status_code == 200
    assert b"req_admin1" in page.content and b"Offer the refund." in page.content


def test_staff_who_may_view_sessions_but_not_requests_get_no_link_to_the_requests(client, history):
    """The session page links to its requests only for users the request list answers."""
    from django.contrib.auth.models import Permission

    viewer = get_user_model().objects.create_user("auditor", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_livesession"))
    client.force_login(viewer)
    requests = reverse("admin:oc_sessions_responserequest_changelist")
    assert client.get(requests).status_code == 403
    page = client.get(f"/admin/oc_sessions/livesession/{history.pk}/change/").content.decode()
    assert requests not in page, "a link to a list that refuses them"

    viewer.user_permissions.add(Permission.objects.get(codename="view_responserequest"))
    page = client.get(f"/admin/oc_sessions/livesession/{history.pk}/change/").content.decode()
    assert f"{requests}?session__id__exact={history.pk}" in page

def _staff_with(client, name: str, *codenames: str):
    from django.contrib.auth.models import Permission

    user = get_user_model().objects.create_user(name, password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client.force_login(user)
    return user


def test_a_requests_page_links_its_session_only_for_staff_who_may_view_sessions(client, history):
    """The link led staff who may view requests but not sessions to a 403."""
    session_page = reverse("admin:oc_sessions_livesession_change", args=[history.pk])
    request_page = reverse("admin:oc_sessions_responserequest_change", args=["req_admin1"])
    _staff_with(client, "auditor", "view_responserequest")
    assert client.get(session_page).status_code == 403
    page = client.get(request_page).content.decode()
    assert session_page not in page, "a link to a page that refuses them"
    assert re.search(r'<div class="readonly">sess_admin1</div>', page), "the session's id, as text"

    _staff_with(client, "chief", "view_responserequest", "view_livesession")
    page = client.get(request_page).content.decode()
    assert f'<a href="{session_page}">sess_admin1</a>' in page


def test_a_sessions_requests_inline_is_for_staff_who_may_view_requests(client, history):
    """Without the view permission on requests there is no inline, and the page works; a
    permission to delete them (never used: the history is read-only) showed an empty one."""
    session_page = reverse("admin:oc_sessions_livesession_change", args=[history.pk])
    for name, codenames in [
        ("viewer", ["view_livesession"]),
        ("deleter", ["view_livesession", "delete_responserequest"]),
    ]:
        _staff_with(client, name, *codenames)
        page = client.get(session_page)
        assert page.status_code == 200
        assert "Response requests (the latest" not in page.content.decode(), name

    _staff_with(client, "reader", "view_livesession", "view_responserequest")
    page = client.get(session_page).content.decode()
    assert "Response requests (the latest" in page and "req_admin1" in page


def test_history_is_searchable_filterable_and_shows_the_timeline(staff_client, history):
    found = staff_client.get("/admin/oc_sessions/responserequest/?q=T-7&status__exact=completed&origin__exact=api")
    assert found.status_code == 200 and b"req_admin1" in found.content
    missing = staff_client.get("/admin/oc_sessions/responserequest/?q=no-such-text")
    assert b"req_admin1" not in missing.content
    detail = staff_client.get("/admin/oc_sessions/responserequest/req_admin1/change/")
    assert b"5 ms" in detail.content and b"20 ms" in detail.content, "queue wait and latency shown"


def test_the_origin_of_a_rest_request_reads_api(staff_client, history):
    page = staff_client.get("/admin/oc_sessions/responserequest/").content.decode()
    assert "API<br>" in page, "the origin column"
    assert re.search(r'origin__exact=api"[^>]*>API</a>', page), "the origin filter"
    assert "Api" not in page


def test_the_request_list_shows_the_newest_first(staff_client, history):
    ResponseRequest.objects.create(
        id="req_admin2", session=history, origin="console", status="queued",
        created_at=timezone.now() + timedelta(seconds=5),
    )
    page = staff_client.get("/admin/oc_sessions/responserequest/").content.decode()
    shown = re.findall(r'title="(req_admin\d)"', page)
    assert shown == ["req_admin2", "req_admin1"], f"the latest request on top: {shown}"


def test_admin_pages_name_the_consoles_icon(staff_client):
    """Without it the browser asks for /favicon.ico, a 404 logged on every admin page."""
    page = staff_client.get("/admin/").content.decode()
    assert re.search(r'<link rel="icon" href="/static/favicon[^"]*\.svg"', page), "no icon named"


def test_admin_pages_name_the_product_not_django(staff_client):
    page = staff_client.get("/admin/").content.decode()
    assert "Django administration" not in page and "Django site admin" not in page
    assert "Operator Console administration" in page
    assert "<title>Site administration | Operator Console admin</title>" in page


def test_admin_pages_say_which_zone_their_times_are_in_and_where_to_change_it(staff_client):
    """Its times name no zone ("Dec. 7, 2026, 8:13 p.m."): the header says it, as the
    console's settings choose it."""
    from apps.console.models import OperatorProfile

    zone = '<a href="/console/settings/" class="oc-zone">Times in {}</a>'
    page = staff_client.get("/admin/oc_sessions/livesession/").content.decode()
    assert zone.format("UTC") in page
    user = get_user_model().objects.get(username="boss")
    OperatorProfile.objects.update_or_create(user=user, defaults={"timezone": "Asia/Kolkata"})
    page = staff_client.get("/admin/").content.decode()
    assert zone.format("Asia/Kolkata") in page


def test_usage_rate_limits_and_metadata_read_as_words_not_json(staff_client, history):
    """They were JSON dumps on one line ({"total_tokens": 998, "input_tokens": …}); the JSON
    stays under "As the REST hook gives it"."""
    usage = {
        "total_tokens": 998, "input_tokens": 212, "output_tokens": 786,
        "input_token_details": {"text_tokens": 122, "audio_tokens": 90, "image_tokens": 0},
        "output_token_details": {"text_tokens": 108, "audio_tokens": 678},
    }  # fmt: skip
    limits = [{"name": "requests", "limit": 5000, "remaining": 4997, "reset_seconds": 45.108}]
    LiveSession.objects.filter(pk=history.pk).update(usage=usage, rate_limits=limits)
    metadata = {"ticket": "T-7", "team": "billing"}
    ResponseRequest.objects.filter(id="req_admin1").update(usage=usage, metadata=metadata)
    words = "998 tokens: 212 (122 text, 90 audio) in, 786 (108 text, 678 audio) out"
    session = staff_client.get(f"/admin/oc_sessions/livesession/{history.pk}/change/").text
    assert f'<div class="readonly">{words}</div>' in session
    limit = "requests: 4,997 of 5,000 left, reset in 45.1 s"
    assert f'<div class="readonly">{limit}<br></div>' in session
    request = staff_client.get("/admin/oc_sessions/responserequest/req_admin1/change/").text
    assert f'<div class="readonly">{words}</div>' in request
    assert '<div class="readonly">ticket = T-7<br>team = billing<br></div>' in request


def test_history_is_read_only(staff_client, history):
    response = staff_client.post(
        "/admin/oc_sessions/responserequest/req_admin1/change/", {"status": "failed"}
    )
    assert response.status_code == 403
    assert ResponseRequest.objects.get(id="req_admin1").status == "completed"
    assert staff_client.get("/admin/oc_sessions/responserequest/req_admin1/delete/").status_code == 403


def test_non_staff_user_is_refused(client, history):
    user = get_user_model().objects.create_user("agent", password="pw")
    client.force_login(user)
    response = client.get(f"/admin/oc_sessions/livesession/{history.pk}/change/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_tokens_are_revocable_from_the_admin(staff_client):
    token, _ = api_token_create(name="script")
    response = staff_client.post(
        "/admin/oc_sessions/apitoken/", {"action": "revoke", "_selected_action": [token.pk]}
    )
    assert response.status_code == 302
    assert ApiToken.objects.get(pk=token.pk).revoked_at is not None


def test_the_token_list_says_in_words_which_tokens_are_active_and_filters_by_it(staff_client):
    api_token_create(name="kept")
    gone, _ = api_token_create(name="gone")
    api_token_revoke(token=gone)
    page = staff_client.get("/admin/oc_sessions/apitoken/").content.decode()
    assert '<td class="field-state">Active</td>' in page
    assert '<td class="field-state">Revoked<br><small>' in page
    assert "No date" not in page and "Has date" not in page, "the filter speaks of tokens"
    active = staff_client.get("/admin/oc_sessions/apitoken/?state=active").content.decode()
    revoked = staff_client.get("/admin/oc_sessions/apitoken/?state=revoked").content.decode()
    assert ">kept<" in active and ">gone<" not in active
    assert ">gone<" in revoked and ">kept<" not in revoked


def test_staff_who_may_only_view_tokens_cannot_revoke_them(client):
    from django.contrib.auth.models import Permission

    viewer = get_user_model().objects.create_user("auditor", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_apitoken"))
    client.force_login(viewer)
    token, _ = api_token_create(name="script")
    listing = client.get("/admin/oc_sessions/apitoken/")
    assert listing.status_code == 200
    assert b'value="revoke"' not in listing.content, "no revoke offered"
    revoke = {"action": "revoke", "_selected_action": [token.pk]}
    client.post("/admin/oc_sessions/apitoken/", revoke)
    assert ApiToken.objects.get(pk=token.pk).revoked_at is None, "a view-only user revoked a token"


def test_the_revoke_message_tells_the_time_in_the_operators_timezone(staff_client):
    import zoneinfo

    from apps.console.models import OperatorProfile

    boss = get_user_model().objects.get(username="boss")
    OperatorProfile.objects.create(user=boss, timezone="Asia/Tokyo")
    token, _ = api_token_create(name="script")
    before = timezone.now()
    revoke = {"action": "revoke", "_selected_action": [token.pk]}
    page = staff_client.post("/admin/oc_sessions/apitoken/", revoke, follow=True)
    after = timezone.now()
    said = re.search(r"Revoked at (\d\d:\d\d:\d\d)", page.content.decode()).group(1)
    tokyo = zoneinfo.ZoneInfo("Asia/Tokyo")
    assert said in {f"{moment.astimezone(tokyo):%H:%M:%S}" for moment in (before, after)}, said


def test_a_long_sessions_page_shows_its_latest_requests_and_links_to_all(staff_client, history):
    from apps.sessions.admin import INLINE_LIMIT

    start = timezone.now()
    ResponseRequest.objects.bulk_create(
        ResponseRequest(
            id=f"req_bulk{i:05d}", session=history, origin="caller", status="completed",
            created_at=start + timedelta(seconds=i),
        )
        for i in range(INLINE_LIMIT + 50)
    )
    page = staff_client.get(f"/admin/oc_sessions/livesession/{history.pk}/change/")
    assert page.status_code == 200
    assert f"req_bulk{INLINE_LIMIT + 49:05d}".encode() in page.content, "the newest is shown"
    assert b"req_bulk00000" not in page.content, "the oldest beyond the limit are not"
    listing = f"/admin/oc_sessions/responserequest/?session__id__exact={history.pk}"
    first = staff_client.get(listing)
    assert first.status_code == 200 and f"req_bulk{INLINE_LIMIT + 49:05d}".encode() in first.content
    last = staff_client.get(f"{listing}&p=3")
    assert b"req_bulk00000" in last.content, "the oldest on the last page"


def test_history_list_on_100k_rows_makes_no_full_count(staff_client, history):
    start = timezone.now()
    rows = (
        ResponseRequest(
            id=f"req_big{i:06d}", session=history, origin=("caller", "api", "server")[i % 3],
            status=("completed", "cancelled")[i % 2], instructions=f"note {i}",
            metadata={"ticket": f"T-{i}"}, created_at=start - timedelta(seconds=i),
        )
        for i in range(100_000)
    )
    ResponseRequest.objects.bulk_create(rows, batch_size=5000)
    for url in (
        "/admin/oc_sessions/responserequest/",
        "/admin/oc_sessions/responserequest/?status__exact=completed&origin__exact=api",
        "/admin/oc_sessions/responserequest/?q=T-99999",
    ):
        started = time.perf_counter()
        with CaptureQueriesContext(connection) as queries:
            page = staff_client.get(url)
        print(f"admin {url}: {(time.perf_counter() - started) * 1000:.0f} ms, {len(queries)} queries")
        assert page.status_code == 200
        counts = [q["sql"] for q in queries if "COUNT(" in q["sql"].upper()]
        assert len(counts) <= 1, f"{url}: one count for the paginator at most, got {counts}"
        assert len(queries) <= 12, f"{url}: {len(queries)} queries"
    assert b"req_big099999" in page.content, "search over metadata finds the row"


def test_staff_creates_a_token_in_the_admin_and_sees_it_once(staff_client):
    page = staff_client.post(
        "/admin/oc_sessions/apitoken/add/", {"name": "ci-bot", "scopes": ["sessions:read"]}
    )
    assert page.status_code == 200 and b"shown only this once" in page.content
    plain = re.search(rb'value="(oct_[^"]+)"', page.content).group(1).decode()
    token = ApiToken.objects.get(name="ci-bot")
    assert token.digest == ApiToken.hash(plain) and plain not in str(token.__dict__)
    assert token.scopes == ["sessions:read"] and token.created_by.username == "boss"
    assert plain.encode() not in staff_client.get(f"/admin/oc_sessions/apitoken/{token.pk}/change/").content
    assert "Set-Cookie" not in page.headers or plain not in page.headers["Set-Cookie"]


def test_the_admin_refuses_a_token_named_as_another_even_revoked_ignoring_case(staff_client):
    """A request's requested_by is `token:<name>`: two tokens named alike would make the
    history ambiguous, a revoked one's requests included."""
    old, _ = api_token_create(name="CI-Bot")
    api_token_revoke(token=old)
    page = staff_client.post(
        "/admin/oc_sessions/apitoken/add/", {"name": "ci-bot", "scopes": ["sessions:read"]}
    )
    assert page.status_code == 200 and b"shown only this once" not in page.content
    errors = page.context["adminform"].form.errors
    assert list(errors) == ["name"], errors
    assert "taken by another token ('CI-Bot', revoked)" in errors["name"][0]
    assert ApiToken.objects.count() == 1


def test_the_admin_writes_api_in_capitals(staff_client):
    """As everywhere else (the README, the token's own page): API tokens, not 'Api tokens'."""
    index = staff_client.get("/admin/").content.decode()
    add = staff_client.get("/admin/oc_sessions/apitoken/add/").content.decode()
    assert ">API tokens<" in index and "Add API token" in add
    assert "Api token" not in index + add


def test_the_end_reason_shows_in_words_with_its_code_and_detail(staff_client):
    session = LiveSession.objects.create(
        id=uuid.uuid4(), upstream_id="sess_admin_over", model="gpt-realtime", status="failed",
        end_reason="upstream_closed", end_code=1011, end_detail="The upstream connection was lost (1011).",
        ended_at=timezone.now(),
    )
    summary = b'<span title="upstream_closed">The upstream ended the session (1011): The upstream connection was lost (1011).</span>'
    listing = staff_client.get("/admin/oc_sessions/livesession/?end_reason=upstream_closed")
    in_list = (
        b'<small title="upstream_closed \xc2\xb7 1011: The upstream connection was lost (1011).">'
        b"The upstream ended the session</small>"
    )
    assert listing.status_code == 200 and in_list in listing.content, "the list says why in words, the code on hover"
    assert b">The caller disconnected</a>" in listing.content, "the filter offers the reasons in words"
    assert b">caller_closed</a>" not in listing.content
    assert b"sess_admin_over" in staff_client.get("/admin/oc_sessions/livesession/?end_reason__exact=upstream_closed").content
    detail = staff_client.get(f"/admin/oc_sessions/livesession/{session.pk}/change/")
    assert detail.status_code == 200 and summary in detail.content
    assert b"Ended because" in detail.content, "under its own label"


@pytest.mark.parametrize(
    ("seconds", "shown"), [(333.0588333333333, "5 min 33 s"), (4.4, "4 s"), (None, "—")]
)
def test_a_recordings_length_reads_in_minutes_and_seconds(staff_client, seconds, shown):
    """A session with no recording said "Length: None" (a method's None is not the admin's
    empty value on a read-only page): it reads "—", as its recording line does."""
    session = LiveSession.objects.create(
        id=uuid.uuid4(), upstream_id="sess_admin_rec", model="gpt-realtime", status="ended",
        recording_seconds=seconds,
    )
    page = staff_client.get(f"/admin/oc_sessions/livesession/{session.pk}/change/").content.decode()
    assert f'<div class="readonly">{shown}</div>' in page
    assert f">{seconds}<" not in page, "not the stored float"


def test_an_awkward_session_id_is_text_in_the_admin(staff_client):
    awkward = "sess/<b>x</b>\"'&%2F"
    session = LiveSession.objects.create(id=uuid.uuid4(), upstream_id=awkward, model="gpt-realtime", status="live")
    ResponseRequest.objects.create(id="req_awkward", session=session, origin="api", status="queued")
    escaped = html.escape(awkward).encode()
    for url in (
        "/admin/oc_sessions/livesession/",
        f"/admin/oc_sessions/livesession/?q={quote(awkward)}",
        f"/admin/oc_sessions/livesession/{session.pk}/change/",
        "/admin/oc_sessions/responserequest/",
        "/admin/oc_sessions/responserequest/req_awkward/change/",
    ):
        page = staff_client.get(url)
        assert page.status_code == 200, url
        assert b"<b>x</b>" not in page.content and escaped in page.content, url
    detail = staff_client.get(f"/admin/oc_sessions/livesession/{session.pk}/change/")
    console = html.escape(reverse("console:session", args=[awkward])).encode()
    assert b'href="' + console + b'"' in detail.content, "the link to the console page routes"


def test_each_page_shows_the_row_as_the_rest_hook_gives_it(staff_client, history):
    """One shape per entity: the admin shows `to_dict()`, the REST hook's JSON, to copy."""
    import json

    for url, row in (
        (f"/admin/oc_sessions/livesession/{history.pk}/change/", history),
        ("/admin/oc_sessions/responserequest/req_admin1/change/", ResponseRequest.objects.get(id="req_admin1")),
    ):
        page = staff_client.get(url).content.decode()
        shown = re.search(r"<pre>(.*?)</pre>", page, re.S).group(1)
        assert json.loads(html.unescape(shown)) == json.loads(json.dumps(row.to_dict())), url


def test_the_token_pages_read_the_requests_once_and_the_detail_for_its_token_alone(staff_client):
    """Each token's usage sums its whole history: the list read it twice (its columns are
    asked for once for the table and once for the sortable headings), and a token's page
    summed every token's to show one."""
    script, _ = api_token_create(name="script")
    api_token_create(name="other")
    session = LiveSession.objects.create(
        upstream_id="sess_tokens", model="gpt-realtime", connected_by="token:script"
    )
    usage = {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}
    for n, by in enumerate(("token:script", "token:other", "token:other")):
        ResponseRequest.objects.create(
            id=f"req_tok{n}", session=session, origin="api", requested_by=by, usage=usage
        )

    def reads_of_the_requests(url: str) -> tuple[list[str], str]:
        with CaptureQueriesContext(connection) as queries:
            page = staff_client.get(url)
        assert page.status_code == 200, url
        reads = [q["sql"] for q in queries if '"oc_sessions_responserequest"' in q["sql"]]
        return reads, page.content.decode()

    reads, listing = reads_of_the_requests("/admin/oc_sessions/apitoken/")
    assert len(reads) == 1, f"the list summed the history {len(reads)} times"
    assert "15 tokens in 1 request," in listing and "30 tokens in 2 requests" in listing
    reads, detail = reads_of_the_requests(f"/admin/oc_sessions/apitoken/{script.pk}/change/")
    assert len(reads) == 1 and "'token:script'" in reads[0], f"not its token's alone: {reads}"
    assert "15 tokens in 1 request," in detail


def _token_session(upstream_id: str, connected_by: str) -> LiveSession:
    return LiveSession.objects.create(
        upstream_id=upstream_id, model="gpt-realtime", connected_by=connected_by
    )


def test_the_token_list_reads_its_tokens_history_not_everyones(staff_client):
    """The list summed every token's requests for each page: a full scan of the history
    (200 000 requests, every view). It reads the page's tokens' rows alone, by their names'
    indexes: the operators' requests and another token's sessions add nothing to a view.
    Measured in SQLite's instructions, which a fast machine does not make fewer."""
    api_token_create(name="script")
    usage = {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}
    mine = _token_session("sess_mine", "token:script")
    asked = (("caller", "token:script"), ("server", ""), ("console", "alice"))
    ResponseRequest.objects.bulk_create(
        ResponseRequest(id=f"req_mine{n}", session=mine, origin=o, requested_by=by, usage=usage)
        for n, (o, by) in enumerate(asked)
    )

    def view() -> tuple[int, str]:
        with sqlite_steps() as steps:
            page = staff_client.get("/admin/oc_sessions/apitoken/")
        assert page.status_code == 200
        return steps[0], page.content.decode()

    view()  # the first view reads the user, the session, the permissions
    few, listing = view()
    assert "30 tokens in 2 requests" in listing, "its caller's request and the server's"
    theirs = _token_session("sess_theirs", "alice")
    ResponseRequest.objects.bulk_create(
        ResponseRequest(id=f"req_{o}{n}", session=session, origin=o, requested_by=by, usage=usage)
        for n in range(200)
        for session, o, by in ((theirs, "server", ""), (mine, "console", "alice"))
    )
    many, listing = view()
    assert "30 tokens in 2 requests" in listing
    assert many <= few * 1.1, f"400 requests of others: {few} → {many} (×10 instructions)"


def test_the_session_list_reads_its_page_by_an_index_and_scans_no_dates(staff_client):
    """Months of sessions: the list sorted every session to show its newest page, and its
    date hierarchy read the start of every session to list the months (the date filter
    stays, as on the request list). The suite runs on SQLite, whose plan this reads;
    PostgreSQL's queries are run in tests/scaleout/test_query_postgres.py."""
    now = timezone.now()
    LiveSession.objects.bulk_create(
        LiveSession(upstream_id=f"sess_month{i}", model="gpt-realtime", status="ended",
                    started_at=now - timedelta(days=i))
        for i in range(3)
    )  # fmt: skip
    with CaptureQueriesContext(connection) as queries:
        page = staff_client.get("/admin/oc_sessions/livesession/")
    assert page.status_code == 200 and b"sess_month2" in page.content
    assert not [q for q in queries if "datetime_trunc" in q["sql"]], "the months were listed"
    newest_first = '"oc_sessions_livesession"."started_at" DESC'
    [listing] = [q["sql"] for q in queries if newest_first in q["sql"]]
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN QUERY PLAN {listing}")
        plan = [row[-1] for row in cursor.fetchall()]
    assert not [step for step in plan if "TEMP B-TREE" in step], f"sorted every session: {plan}"
