"""Fixtures shared by the suite: a real simulator, a real Daphne, tokens, users."""

from __future__ import annotations

import os

import pytest
from django.db import connection

from apps.realtime.simulator import SimulatorConfig
from tests.support.servers import DaphneProcess, SimulatorThread

UPSTREAM_KEY = "sk-upstream-secret-never-shown"


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


@pytest.fixture(scope="session")
def daphne(django_db_setup, django_db_blocker, simulator):
    """A real Daphne serving the app, on the test database, with the simulator upstream."""
    with django_db_blocker.unblock():
        db_path = connection.settings_dict["NAME"]
    server = DaphneProcess(
        {
            "OC_UPSTREAM_URL": simulator.url,
            "OPENAI_API_KEY": UPSTREAM_KEY,
            "DATABASE_URL": f"sqlite:///{os.path.abspath(db_path)}",
            "OC_SEND_TIMEOUT": "5",
        }
    )
    yield server
    server.stop()


@pytest.fixture
def make_token(transactional_db):
    from apps.sessions.tokens import api_token_create

    def make(scopes=None, name="test") -> str:
        return api_token_create(name=name, scopes=scopes)[1]

    return make


@pytest.fixture
def api_token(make_token) -> str:
    return make_token()
