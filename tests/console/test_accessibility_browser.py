"""The console's main pages under axe-core in real Chromium, served by the real server: no
serious or critical violation of WCAG 2.2 AA (and axe's best practices) at a desktop's and a
phone's width. One test, one caller, one browser: the suite's time is short."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from playwright.async_api import expect

from apps.sessions.models import LiveSession
from tests.support.realtime import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.django_db(transaction=True)]

TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"]
SIZES = {"desktop": (1280, 800), "phone": (390, 844)}  # the session page and docs at both


async def _axe(page, axe_source: str, where: str) -> list[str]:
    """The page's serious and critical violations, each as `where: rule (help): elements`."""
    if not await page.evaluate("typeof axe !== 'undefined'"):
        await page.evaluate(axe_source)
    violations = await page.evaluate(
        """async (tags) => (await axe.run(document, { runOnly: { type: "tag", values: tags }, resultTypes: ["violations"] }))
            .violations.filter((v) => ["serious", "critical"].includes(v.impact))
            .map((v) => `${v.id} (${v.help}): ${v.nodes.slice(0, 3).map((n) => n.target.join(" ")).join(", ")}`)""",
        TAGS,
    )
    return [f"{where}: {violation}" for violation in violations]


def _operator_who_may_listen_and_administer(name: str) -> None:
    get_user_model().objects.filter(username=name).update(is_staff=True, is_superuser=True)


async def test_the_main_pages_have_no_serious_or_critical_axe_violations(
    login, connect_caller, daphne, axe_source
):
    found: list[str] = []
    await sync_to_async(_operator_who_may_listen_and_administer)("alice")
    alice = await login("alice")
    page = alice.page
    caller = await connect_caller()
    await caller.say("Where is my parcel?")
    await caller.wait_for("response.done")
    session = f"{daphne.http_url}/console/sessions/{caller.session_id}/"

    await page.goto(f"{daphne.http_url}/console/")
    await expect(page.locator(f'tr[data-session="{caller.session_id}"]')).to_be_visible()
    found += await _axe(page, axe_source, "dashboard")
    for size, (width, height) in SIZES.items():
        await page.set_viewport_size({"width": width, "height": height})
        await page.goto(session)
        await expect(page.locator("[data-transcript] .role-agent")).to_be_visible()
        await expect(page.locator("[data-listen-toggle]")).to_be_visible()
        await expect(page.locator('[data-requests] tr[data-status="completed"]')).to_have_count(1)
        found += await _axe(page, axe_source, f"live session ({size})")

    await page.set_viewport_size({"width": 1280, "height": 800})
    await page.goto(f"{daphne.http_url}/admin/oc_sessions/responserequest/")
    found += await _axe(page, axe_source, "response history")

    # The REST hook's docs (Swagger UI): as loaded, then with an operation tried out.
    await page.goto(f"{daphne.http_url}/api/v1/docs")
    await page.locator(".opblock-summary-control").first.click()
    await page.get_by_role("button", name="Try it out").click()
    await expect(page.get_by_role("combobox", name="status")).to_be_enabled()
    found += await _axe(page, axe_source, "REST hook docs")
    # Answered, Swagger UI shows copy buttons with no name at all (`<button></button>` in its
    # Curl and HighlightCode components): only those, until Swagger UI names them.
    await page.get_by_role("button", name="Execute").click()
    await expect(page.locator(".responses-wrapper .live-responses-table")).to_be_visible()
    unnamed = "button-name (Buttons must have discernible text): "
    unnamed += ".curl-command > .copy-to-clipboard > button, .highlight-code > .copy-to-clipboard > button"
    assert await _axe(page, axe_source, "docs") == [f"docs: {unnamed}"]
    # At a phone's width the highlighted bodies wrap taller than Swagger UI's 400px box, and
    # ran on below it, light text on the light page.
    width, height = SIZES["phone"]
    await page.set_viewport_size({"width": width, "height": height})
    assert await _axe(page, axe_source, "docs (phone)") == [f"docs (phone): {unnamed}"]
    await page.set_viewport_size({"width": 1280, "height": 800})  # the pages below: as before
    alice.errors[:] = [e for e in alice.errors if "status of 401" not in e]  # tried without a token

    await caller.socket.close()
    await eventually(lambda: LiveSession.objects.get(upstream_id=caller.session_id).status == "ended")
    await page.goto(session)
    await expect(page.locator("[data-ended-note]")).to_be_visible()
    found += await _axe(page, axe_source, "ended session")
    await page.get_by_role("button", name="Log out").click()
    await page.wait_for_url(f"{daphne.http_url}/accounts/login/")
    found += await _axe(page, axe_source, "login")

    assert not found, "axe found serious or critical violations:\n" + "\n".join(found)
    assert not alice.errors, alice.errors
