"""Browser fixtures: Debian's Chromium through Playwright, operators, a live caller.

Playwright's own browser download cannot work here; `make test` installs Debian's chromium
(scripts/install-system-deps.sh) and the tests launch it by path. Screenshots go to
var/screenshots/ for a person to look at.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path

import pytest
import pytest_asyncio
import websockets
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client

CHROMIUM = os.environ.get("OC_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"
# axe-core, pinned in tests/axe/package-lock.json; `make test` puts it in node_modules there.
AXE = Path(__file__).resolve().parents[1] / "axe" / "node_modules" / "axe-core" / "axe.min.js"
PASSWORD = "pw-for-browser-tests"


@pytest.fixture
def operator(transactional_db) -> Client:
    """A logged-in operator who may steer, for the pages as the server renders them."""
    user = get_user_model().objects.create_user("alice", password="pw-for-tests")
    user.user_permissions.add(Permission.objects.get(codename="steer_session"))
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture(scope="session")
def chromium_path() -> str:
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing: run `make test` (it installs Debian's chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture
def axe_source() -> str:
    """axe-core's script, to run in a page (`page.evaluate`: the CSP refuses inline scripts)."""
    if not AXE.exists():
        message = f"{AXE} is missing: run `make test` (it installs axe-core with npm)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return AXE.read_text()


@contextlib.asynccontextmanager
async def launched(chromium_path: str, args: list[str]):
    """Chromium launched with `args` (Playwright's driver with it), closed after the block."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium_path, args=args)
        yield browser
        await browser.close()


@contextlib.asynccontextmanager
async def fresh_contexts(browser):
    """The browser, for one test: every context (cookies, storage, cache) that the test left
    open is closed after it, so the next test starts with none."""
    assert browser.is_connected(), "the shared Chromium is gone"
    yield browser
    for context in browser.contexts:
        await context.close()


# Launching Chromium (and Playwright's driver) takes seconds; the browser tests share one and
# each test has contexts of its own. They run on the session's event loop, where it lives
# (`pytest_collection_modifyitems` below), and so do the async fixtures they use.
SESSION_LOOP_FIXTURES = {"chromium", "login", "connect_caller", "audio_browser"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SESSION_LOOP_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.asyncio(loop_scope="session"), append=False)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def shared_chromium(chromium_path):
    async with launched(chromium_path, CHROMIUM_ARGS) as browser:
        yield browser


@pytest_asyncio.fixture(loop_scope="session")
async def chromium(shared_chromium):
    async with fresh_contexts(shared_chromium) as browser:
        yield browser


class Operator:
    def __init__(self, page, errors: list[str]) -> None:
        self.page = page
        self.errors = errors

    async def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def users(transactional_db) -> dict[str, str]:
    User = get_user_model()
    steer = Permission.objects.get(codename="steer_session")
    alice = User.objects.create_user("alice", password=PASSWORD)
    alice.user_permissions.add(steer)
    bob = User.objects.create_user("bob", password=PASSWORD)
    bob.user_permissions.add(steer)
    User.objects.create_user("watcher", password=PASSWORD)
    return {"alice": PASSWORD, "bob": PASSWORD, "watcher": PASSWORD}


@pytest_asyncio.fixture(loop_scope="session")
async def login(chromium, daphne, users):
    """login(name, javascript=True) → an Operator with a logged-in page; JS errors collected."""
    contexts = []

    async def open_as(name: str, *, javascript: bool = True, width: int = 1280, height: int = 800) -> Operator:
        context = await chromium.new_context(java_script_enabled=javascript, viewport={"width": width, "height": height})
        contexts.append(context)
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
        page.on(
            "console",
            lambda msg: msg.type == "error"
            and errors.append(f"console: {msg.text} ({msg.location.get('url', '')})"),
        )
        await page.goto(f"{daphne.http_url}/console/")
        assert "/accounts/login/" in page.url, "the console requires a login"
        await page.fill("#id_username", name)
        await page.fill("#id_password", users[name])
        await page.click("button[type=submit]")
        await page.wait_for_url(f"{daphne.http_url}/console/")
        return Operator(page, errors)

    yield open_as
    for context in contexts:
        await context.close()


class LiveCaller:
    """A Realtime caller on the relay through Daphne (plain websockets), reading all events."""

    def __init__(self, socket, session_id: str) -> None:
        self.socket = socket
        self.session_id = session_id
        self.events: list[dict] = []
        self._arrived = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for frame in self.socket:
                self.events.append(json.loads(frame))
                self._arrived.set()

    async def send(self, event: dict) -> None:
        await self.socket.send(json.dumps(event))

    async def say(self, text: str) -> None:
        await self.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}})
        await self.send({"type": "response.create"})

    async def wait_for(self, kind: str, n: int = 1, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while sum(e["type"] == kind for e in self.events) < n:
                self._arrived.clear()
                await self._arrived.wait()


@pytest.fixture
def agent_token(make_token) -> str:
    return make_token(name="agent-7")


@pytest_asyncio.fixture(loop_scope="session")
async def connect_caller(daphne, agent_token):
    """connect_caller() → a LiveCaller whose session has started."""
    callers: list[LiveCaller] = []

    async def connect() -> LiveCaller:
        socket = await websockets.connect(
            f"{daphne.ws_base}/realtime?model=gpt-realtime",
            additional_headers={"Authorization": f"Bearer {agent_token}"},
        )
        created = json.loads(await socket.recv())
        assert created["type"] == "session.created"
        caller = LiveCaller(socket, created["session"]["id"])
        callers.append(caller)
        return caller

    yield connect
    for caller in callers:
        await caller.socket.close()
        caller._reader.cancel()
