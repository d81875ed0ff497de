"""Fixtures shared by the suite: a real simulator, a real Daphne, tokens, users."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from channels.testing import WebsocketCommunicator
from django.db import connection

from apps.simulator.server import SimulatorConfig
from operator_console.asgi import application
from tests.calls.support import WEBHOOK_SECRET
from tests.support.servers import LOG_DIR, ROOT, DaphneProcess, SimulatorThread

UPSTREAM_KEY = "sk-upstream-secret-never-shown"

# A shell without job control starts a background command with SIGINT ignored, and the servers
# the tests start would inherit that: the tests that stop one with SIGINT, as Ctrl-C does,
# would then wait for a stop that never comes. The servers get SIGINT's default instead.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# `make test` runs the suite in two processes (pytest-xdist, `--dist loadgroup`), which share
# out groups of tests. A module is one group, so its module-scoped servers start once; the
# modules marked `EMBEDDED_SIMULATOR` (tests/support/servers.py) are one group together.


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items):
    # xdist hands tests out by node id: tests sharing one would run as one, the others never.
    shared = [nodeid for nodeid, n in Counter(item.nodeid for item in items).items() if n > 1]
    if shared:
        raise pytest.UsageError(
            f"{len(shared)} node ids are each shared by several tests, so `make test` would "
            f"run only one of each: {shared[:3]}"
        )
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))


@pytest.fixture(scope="session", autouse=True)
def fresh_daphne_logs():
    """This run's Daphne logs replace the last run's (they piled up in var/, one a server)."""
    shutil.rmtree(LOG_DIR, ignore_errors=True)


@dataclass(frozen=True)
class MigratedSqlite:
    """migrated_sqlite(path) → `path`, a new SQLite database migrated as `manage.py migrate`
    leaves one, holding `token` (`manage.py create_api_token`, default scopes), for a server
    of a test's own: a copy of one database made so once a session (SQLite's backup, whole
    whatever the journal)."""

    template: Path
    token: str

    def __call__(self, path: Path) -> Path:
        source, target = sqlite3.connect(self.template), sqlite3.connect(path)
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()
        return path


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory) -> MigratedSqlite:
    template = tmp_path_factory.mktemp("migrated") / "migrated.sqlite3"
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{template}"}
    for command in (["migrate", "--noinput"], ["create_api_token", "--name", "tests"]):
        made = subprocess.run(
            [sys.executable, "manage.py", *command],
            cwd=ROOT, env=env, check=True, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    return MigratedSqlite(template=template, token=made.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def simulator():
    """The upstream: a real simulator on a loopback port, shared by the session's tests."""
    thread = SimulatorThread(
        SimulatorConfig(deltas_per_response=5, delta_interval=0.01, required_api_key=UPSTREAM_KEY)
    )
    yield thread
    thread.stop()


@pytest.fixture
def relay_settings(settings, simulator):
    """In-process relay (communicator tests) pointed at the simulator."""
    settings.OC_UPSTREAM_URL = simulator.url
    settings.OPENAI_API_KEY = UPSTREAM_KEY
    settings.OC_SEND_TIMEOUT = 5.0
    return settings


def start_daphne(django_db_blocker, simulator, **env: str) -> DaphneProcess:
    """A real Daphne serving the app on the test database, the simulator upstream, with
    `env` over those settings."""
    with django_db_blocker.unblock():
        db_path = connection.settings_dict["NAME"]
    return DaphneProcess(
        {
            "OC_UPSTREAM_URL": simulator.url,
            "OPENAI_API_KEY": UPSTREAM_KEY,
            "DATABASE_URL": f"sqlite:///{os.path.abspath(db_path)}",
            # Not the test database's webhooks, which tests send with workers of their own
            # settings (a test that wants this server's worker turns it on).
            "OC_WEBHOOK_SEND": "false",
            **env,
        }
    )


@pytest.fixture(scope="session")
def daphne(django_db_setup, django_db_blocker, simulator):
    """A real Daphne serving the app, on the test database, with the simulator upstream (whose
    phone calls' webhooks it takes, signed with `WEBHOOK_SECRET`)."""
    server = start_daphne(
        django_db_blocker, simulator, OC_SEND_TIMEOUT="5", OPENAI_WEBHOOK_SECRET=WEBHOOK_SECRET
    )
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _daphne_quiet_before_flush(request):
    """A test that used the shared `daphne` ends only once that server is quiet (`wait_quiet`):
    the sessions the test drove through it have ended and their rows are written. Otherwise
    those rows could be committed after the test's database is emptied (a transactional test's
    teardown), as strays in the next test of the worker.

    This fixture's teardown runs before that emptying: it is set up after pytest-django's own
    (its autouse fixture, for a `django_db` mark) or sets up `transactional_db` itself first;
    and after the test's other fixtures are torn down (its callers closed)."""
    if "daphne" not in request.fixturenames:
        yield
        return
    if "transactional_db" in request.fixturenames:
        request.getfixturevalue("transactional_db")
    server = request.getfixturevalue("daphne")
    yield
    server.wait_quiet()


@pytest.fixture
def daphne_with(transactional_db, django_db_blocker, simulator):
    """daphne_with(**env) → a Daphne of the test's own (as `daphne`, with these settings);
    stopped after the test, before its database is emptied (`transactional_db`, set up first,
    is torn down after): a stopping Daphne ends its sessions and writes them before it exits."""
    started: list[DaphneProcess] = []

    def start(**env: str) -> DaphneProcess:
        started.append(start_daphne(django_db_blocker, simulator, **env))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def make_token(transactional_db):
    from apps.sessions.tokens import api_token_create

    made = []

    def make(scopes=None, name=None) -> str:
        """A token; unnamed ones are "test", then "test-2", … (names are unique)."""
        made.append(name)
        default = "test" if len(made) == 1 else f"test-{len(made)}"
        return api_token_create(name=name or default, scopes=scopes)[1]

    return make


@pytest.fixture
def api_token(make_token) -> str:
    return make_token()


# ---- an in-process caller and REST client on the real application, sharing one channel layer


@pytest.fixture
def rest_token(make_token) -> str:
    return make_token(name="script")


@pytest.fixture
async def rest(rest_token):
    """An httpx client for /api/v1/ authenticated with a token of every scope."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=application),
        base_url="http://127.0.0.1/api/v1",
        headers={"Authorization": f"Bearer {rest_token}"},
        timeout=10,
    ) as client:
        yield client


class Caller:
    """A Realtime caller on the relay (communicator), with helpers to read its events."""

    def __init__(self, communicator: WebsocketCommunicator, session_id: str) -> None:
        self.communicator = communicator
        self.session_id = session_id
        self.events: list[dict] = []

    async def send(self, event: dict) -> None:
        await self.communicator.send_json_to(event)

    async def until(self, kind: str, n: int = 1, timeout: float = 10.0) -> list[dict]:
        """Receive until `n` events of `kind` have been seen since the session began."""
        while sum(e["type"] == kind for e in self.events) < n:
            self.events.append(await self.communicator.receive_json_from(timeout=timeout))
        return self.events

    async def settled(self) -> None:
        """Wait until whatever was asked of the session so far has reached the upstream, so
        that a test can assert that something was *not* sent. Two round trips prove it: an
        interrupt through the session's group (the actor answers after every message pinged
        before it; with no response active it changes nothing), then a `session.update`
        through the upstream (answered after every frame the relay sent before it)."""
        from apps.sessions.services import session_interrupt

        assert await session_interrupt(session_id=self.session_id) is None, "a response is active"
        updates = sum(e["type"] == "session.updated" for e in self.events)
        await self.send({"type": "session.update", "session": {"type": "realtime"}})
        await self.until("session.updated", n=updates + 1)


@pytest.fixture
def caller_token(make_token) -> str:
    return make_token(name="caller")


@pytest.fixture
async def caller(relay_settings, simulator, caller_token):
    communicator = WebsocketCommunicator(
        application,
        "/v1/realtime?model=gpt-realtime",
        headers=[(b"authorization", f"Bearer {caller_token}".encode())],
    )
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    created = await communicator.receive_json_from(timeout=5)
    assert created["type"] == "session.created"  # by then the REST hook knows it (the actor)
    session = Caller(communicator, created["session"]["id"])
    yield session
    await communicator.disconnect()


@pytest.fixture(autouse=True)
def _webrtc_stays_on_loopback():
    """Every candidate in every SDP offer and answer a test of the suite saw (the simulator's,
    the aiortc client's: `apps.simulator.webrtc.sdp_log`) is 127.0.0.1 (issue 13)."""
    yield
    from tests.support.webrtc import drain_non_loopback

    foreign = drain_non_loopback()
    if foreign:
        pytest.fail(f"WebRTC candidates not on 127.0.0.1 in this test's SDPs: {foreign}")
