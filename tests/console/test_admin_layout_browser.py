"""The admin's response request list in real Chromium at 1280×800 (QA report 3): its results
fit beside the filters, and its typed-in filters read as Django's own."""

from __future__ import annotations

import uuid

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.utils import timezone

from apps.events.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from apps.sessions.models import ApiToken, LiveSession, ResponseRequest
from apps.sessions.tokens import api_token_create, api_token_revoke
from tests.console.conftest import PASSWORD, SCREENSHOTS

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _history() -> None:
    get_user_model().objects.create_superuser("root", password=PASSWORD)
    session = LiveSession.objects.create(id=uuid.uuid4(), upstream_id="sess_fb0a7e651acce3c8037c", model="gpt-realtime")
    for n in range(5):
        ResponseRequest.objects.create(
            id=f"req_{uuid.uuid4().hex}", session=session, origin="console", status="completed",
            requested_by="token:demo-callers", instructions=f"Nudge {n}",
        )


async def _admin(chromium, daphne):
    """A 1280×800 page logged in to the admin as the superuser `root`."""
    context = await chromium.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    await page.goto(f"{daphne.http_url}/admin/login/")
    await page.fill("#id_username", "root")
    await page.fill("#id_password", PASSWORD)
    await page.click("input[type=submit]")
    await page.wait_for_url(f"{daphne.http_url}/admin/")
    return context, page


async def _list_that_fits(chromium, daphne, rows, path: str, shot: str):
    """The admin's list at `path` (its `rows` made first), seen at 1280×800: its results fit
    beside the filters."""
    await sync_to_async(rows)()
    context, page = await _admin(chromium, daphne)
    await page.goto(f"{daphne.http_url}{path}")
    await page.screenshot(path=str(SCREENSHOTS / f"{shot}.png"))
    await _results_fit(page)
    return context, page


async def _results_fit(page) -> None:
    table = await page.locator("#result_list").bounding_box()
    area = await page.locator("#changelist-form").bounding_box()
    assert table["x"] + table["width"] <= area["x"] + area["width"] + 1, (
        f"the results ({table['width']:.0f} px) fit their area ({area['width']:.0f} px)"
    )


async def test_the_request_list_fits_beside_its_filters_at_1280(chromium, daphne):
    context, page = await _list_that_fits(
        chromium, daphne, _history, "/admin/oc_sessions/responserequest/", "admin-requests-desktop"
    )
    headers = [t.strip().lower() for t in await page.locator("#result_list thead th").all_inner_texts()]
    assert "status" in headers and "created" in headers, f"every heading reads whole: {headers}"
    summaries = await page.locator("#changelist-filter summary").all_inner_texts()
    assert "By requested by" in [s.strip().lstrip("↓→").strip() for s in summaries]
    spaced = await page.locator('#changelist-filter details[data-filter-title="requested by"] summary').evaluate(
        "(s) => s.textContent.startsWith(' ') || s.textContent.startsWith('\\n')"
    )
    assert spaced, "a space between the filter's arrow and its title, as Django's own filters have"
    field = page.locator('#changelist-filter input[name="requested_by"]')
    assert await field.evaluate("(i) => i.scrollWidth <= i.clientWidth + 1"), "the placeholder is not cut"
    assert await field.evaluate(
        "(i) => { const c = document.createElement('canvas').getContext('2d'); c.font = getComputedStyle(i).font;"
        " return c.measureText(i.placeholder).width <= i.clientWidth - 8; }"
    ), "the placeholder fits its field"
    await context.close()


async def test_on_a_phone_the_request_list_shows_each_requests_status(chromium, daphne):
    """At 390 px the list showed the id, the session and who asked: the status, what a support
    lead looks for, was past the screen's edge (the table scrolls in its own box)."""
    await sync_to_async(_history)()
    context, page = await _admin(chromium, daphne)
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.goto(f"{daphne.http_url}/admin/oc_sessions/responserequest/")
    await page.screenshot(path=str(SCREENSHOTS / "admin-requests-phone.png"))
    status = await page.locator("#result_list thead th.column-status").bounding_box()
    assert status["x"] + status["width"] <= 390, f"the status column ends at {status['x'] + status['width']:.0f} px"
    await context.close()


def _sessions() -> None:
    get_user_model().objects.create_superuser("root", password=PASSWORD)
    for n, (status, reason, code, detail) in enumerate((
        ("live", "", None, ""),
        ("ended", "caller_closed", None, ""),
        ("failed", "upstream_closed", 1011, "The upstream connection was lost (1011)."),
        ("ended", "server_shutdown", None, "The server was restarted; the caller was asked to reconnect, as a new session."),
    )):
        LiveSession.objects.create(
            id=uuid.uuid4(), upstream_id=f"sess_{uuid.uuid4().hex[:20]}", model="gpt-realtime-2025-08-28",
            status=status, end_reason=reason, end_code=code, end_detail=detail,
            connected_by=f"token:demo-callers-{n}", label="Order 42 · Jane Doe" if n % 2 else "",
            ended_at=timezone.now() if reason else None,
        )


async def test_the_session_list_fits_beside_its_filters_at_1280(chromium, daphne):
    context, page = await _list_that_fits(
        chromium, daphne, _sessions, "/admin/oc_sessions/livesession/", "admin-sessions-desktop"
    )
    ended = await page.locator("#result_list td.field-ended").all_inner_texts()
    assert any("The upstream ended the session" in text for text in ended), f"why, in words: {ended}"
    await page.goto(f"{daphne.http_url}/admin/oc_sessions/livesession/?q=Jane+Doe")
    assert await page.locator("#result_list tbody tr").count() == 2, "the label is searched"
    await context.close()


def _long_words() -> None:
    get_user_model().objects.create_superuser("root", password=PASSWORD)
    session = LiveSession.objects.create(
        id=uuid.uuid4(), upstream_id="sess_longwords", model="gpt-realtime", label="W" * 200
    )
    ResponseRequest.objects.create(
        id="req_longwords", session=session, origin="console", status="completed",
        instructions="Z" * 600, metadata={"K" * 64: "V" * 512},
    )


async def test_long_words_widen_neither_the_session_list_nor_a_sessions_page(chromium, daphne):
    # A label may be 200 characters, instructions and a metadata value hundreds, none with a space.
    context, page = await _list_that_fits(
        chromium, daphne, _long_words, "/admin/oc_sessions/livesession/", "admin-long-words-desktop"
    )
    await page.click("#result_list a[href*='/change/']")
    await page.wait_for_selector(".inline-group")
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 1280, f"the session's page, its history inline, is {width} px wide"
    await page.goto(f"{daphne.http_url}/admin/oc_sessions/responserequest/req_longwords/change/")
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 1280, f"the request's page is {width} px wide"
    await context.close()


def _ended_without_labels() -> None:
    get_user_model().objects.create_superuser("root", password=PASSWORD)
    for n in range(3):  # as `make run` leaves them: ended, their reason in words, no label
        LiveSession.objects.create(
            id=uuid.uuid4(), upstream_id=f"sess_{n}ended0123456789abcdef", model="gpt-realtime",
            status="ended", end_reason="server_shutdown", ended_at=timezone.now(),
            connected_by="token:demo-callers-5",
        )


async def test_a_shortened_session_id_stays_on_one_line(chromium, daphne):
    """It sets the column's width; once a label could break anywhere, so could the id, and
    its "…" went to a line of its own."""
    context, page = await _list_that_fits(
        chromium, daphne, _ended_without_labels, "/admin/oc_sessions/livesession/",
        "admin-sessions-unlabelled-desktop",
    )
    lines = await page.evaluate(
        """[...document.querySelectorAll('#result_list .field-short_session span[title]')]
           .map((span) => span.getClientRects().length)"""
    )
    assert lines == [1, 1, 1], f"a session id broke over lines: {lines}"
    await context.close()


def _tokens() -> None:
    get_user_model().objects.create_superuser("root", password=PASSWORD)
    for n in range(3):
        token, _ = api_token_create(name=f"support-agent-{n}", scopes=list(ApiToken.Scope.values))
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
    api_token_revoke(token=token)


async def test_the_token_list_shows_which_tokens_are_revoked_at_1280(chromium, daphne):
    """Whether a token is revoked, and its usage, were past the list's edge at 1280 px."""
    context, page = await _list_that_fits(
        chromium, daphne, _tokens, "/admin/oc_sessions/apitoken/", "admin-tokens-desktop"
    )
    cells = await page.locator("#result_list td.field-state").all_inner_texts()
    states = [cell.split("\n")[0] for cell in cells]
    assert sorted(states) == ["Active", "Active", "Revoked"], states
    await context.close()


def _deliveries() -> None:
    get_user_model().objects.create_superuser("root", password=PASSWORD)
    url = "https://hooks.example.com/operator-console/events"
    endpoint = WebhookEndpoint.objects.create(url=url, cursor=0)
    now = timezone.now()
    for n, status in enumerate(("pending", "delivered", "failed")):
        WebhookDelivery.objects.create(
            endpoint=endpoint, event_id=1000 + n, event_type="session.ended", payload="{}",
            attempts=n + 1, status=status, last_status_code=500 if n else None,
            delivered_at=now if n == 1 else None,
        )  # fmt: skip


async def test_the_delivery_log_fits_beside_its_filters_at_1280(chromium, daphne):
    """Ten columns ran 500 px past the list's edge: whether and when a delivery went out too."""
    context, page = await _list_that_fits(
        chromium, daphne, _deliveries, "/admin/oc_events/webhookdelivery/",
        "admin-deliveries-desktop",
    )
    await context.close()


def _delivery_with_attempts() -> int:
    get_user_model().objects.create_superuser("root", password=PASSWORD)
    endpoint = WebhookEndpoint.objects.create(url="http://127.0.0.1:9/hook", cursor=0)
    delivery = WebhookDelivery.objects.create(
        endpoint=endpoint, event_id=1, event_type="session.live", payload="{}", attempts=2
    )
    now = timezone.now()
    for number in (1, 2):
        WebhookAttempt.objects.create(
            delivery=delivery, number=number, started_at=now, finished_at=now,
            error="ConnectError: All connection attempts failed",
        )  # fmt: skip
    return delivery.pk


async def _broken_words(page, cells: str) -> tuple[int, list[str]]:
    """How many words the `cells` hold, and those broken over two lines."""
    return await page.evaluate(
        """(cells) => {
             let words = 0;
             const broken = [];
             for (const cell of document.querySelectorAll(cells)) {
               const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
               for (let text = walker.nextNode(); text; text = walker.nextNode()) {
                 for (const match of text.data.matchAll(/\\S+/g)) {
                   const range = document.createRange();
                   range.setStart(text, match.index);
                   range.setEnd(text, match.index + match[0].length);
                   words += 1;
                   if (range.getClientRects().length > 1) broken.push(match[0]);
                 }
               }
             }
             return [words, broken];
           }""",
        cells,
    )


async def test_a_sessions_history_keeps_its_statuses_and_codes_whole_at_1280(chromium, daphne):
    """At 1280 px the history inline's instructions and metadata took the width and its short
    columns broke inside words ("Consol/e", "complet/ed", "session_en/ded")."""

    def ended_session() -> str:
        get_user_model().objects.create_superuser("root", password=PASSWORD)
        session = LiveSession.objects.create(
            id=uuid.uuid4(), upstream_id="sess_5f0e2c1d9a7b", model="gpt-realtime",
            status="ended", end_reason="caller_closed", ended_at=timezone.now(),
        )
        for n, (origin, status) in enumerate([("console", "completed"), ("caller", "cancelled"), ("api", "failed")]):
            ResponseRequest.objects.create(
                id=f"req_{uuid.uuid4().hex}", session=session, origin=origin, status=status,
                instructions=f"Offer the refund for order {n} " * 3, error_code="session_ended",
                metadata={"ticket": f"T-{n}", "team": "billing", "customer": "Jane Roe"},
            )  # fmt: skip
        return str(session.pk)

    pk = await sync_to_async(ended_session)()
    context, page = await _admin(chromium, daphne)
    await page.goto(f"{daphne.http_url}/admin/oc_sessions/livesession/{pk}/change/")
    await page.locator(".inline-group").first.screenshot(path=str(SCREENSHOTS / "admin-session-history.png"))
    short = ".inline-group td:is(.field-origin, .field-status, .field-error_code)"
    words, broken = await _broken_words(page, short)
    assert words == 9, f"{words} words in the three requests' origins, statuses and codes"
    assert broken == [], f"words broken over lines: {broken}"
    await context.close()


async def test_an_inlines_words_break_between_words_on_a_phone(chromium, daphne):
    """A delivery's attempts at 390 px: five columns in a narrow table. Words broken anywhere
    made the columns as narrow as a letter ("Con/nect/Error"); on a phone words break where
    they must only, and a table wider than the screen scrolls in its own box."""
    pk = await sync_to_async(_delivery_with_attempts)()
    context, page = await _admin(chromium, daphne)
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.goto(f"{daphne.http_url}/admin/oc_events/webhookdelivery/{pk}/change/")
    await page.screenshot(path=str(SCREENSHOTS / "admin-delivery-phone.png"), full_page=True)
    words, broken = await _broken_words(page, ".inline-group td.field-error")
    assert words == 10, f"{words} words in the two attempts' errors"
    assert broken == [], f"words broken over lines: {broken}"
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width} px wide"
    box = page.locator(".inline-group").last
    fits = await box.evaluate("(box) => box.scrollWidth <= box.clientWidth")
    assert fits, "the attempts fit the screen without scrolling"
    await context.close()


async def test_a_signing_secrets_help_starts_under_the_secret(chromium, daphne):
    """The help under a webhook endpoint's secret took Django's indent for a field's help a
    second time, inside the value's own column: it began 170 px right of the secret."""
    pk = await sync_to_async(_delivery_with_attempts)()
    endpoint = await WebhookEndpoint.objects.aget(deliveries__pk=pk)
    context, page = await _admin(chromium, daphne)
    await page.goto(f"{daphne.http_url}/admin/oc_events/webhookendpoint/{endpoint.pk}/change/")
    await page.screenshot(path=str(SCREENSHOTS / "admin-webhook-secret.png"))
    secret = await page.locator(".field-signing_secret .readonly code").first.bounding_box()
    help_text = await page.locator(".field-signing_secret .readonly p.help").bounding_box()
    assert abs(help_text["x"] - secret["x"]) <= 1, (
        f"the help starts at {help_text['x']:.0f} px, the secret at {secret['x']:.0f} px"
    )
    await context.close()
