"""Scale-out fixtures: a real Redis and a real PostgreSQL, started for the test session on
loopback ports of their own and stopped after it (devtools/services.py), and the
migrated PostgreSQL database with an operator and an API token. With `CI` set, a missing
server binary fails these tests instead of skipping them."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import pytest

from tests.support.servers import ROOT
from tests.support.services import PostgresServer, RedisServer

OPERATOR = "scaleout-operator"
OPERATOR_PASSWORD = "pw-for-scaleout-tests"


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server():
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


def manage(database_url: str, *args: str, extra_env: dict[str, str] | None = None) -> str:
    """`manage.py ARGS` on that database; its stdout. Fails the test with stderr on an error."""
    env = {**os.environ, "DATABASE_URL": database_url, **(extra_env or {})}
    for name in ("REDIS_URL", "OC_PROCESSES", "WEB_CONCURRENCY"):  # one-off commands
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    if result.returncode != 0:
        pytest.fail(f"manage.py {' '.join(args)} exited with {result.returncode}:\n{result.stderr}")
    return result.stdout


@dataclass(frozen=True)
class ScaleoutDatabase:
    url: str
    token: str  # every scope: realtime:connect, responses:write, sessions:read
    username: str
    password: str


@pytest.fixture(scope="session")
def scaleout_db(postgres_server) -> ScaleoutDatabase:
    """The PostgreSQL database, migrated, with an operator who can log in and an API token."""
    url = postgres_server.url
    manage(url, "migrate", "--noinput")
    manage(
        url, "createsuperuser", "--noinput",
        extra_env={
            "DJANGO_SUPERUSER_USERNAME": OPERATOR,
            "DJANGO_SUPERUSER_PASSWORD": OPERATOR_PASSWORD,
            "DJANGO_SUPERUSER_EMAIL": "operator@example.invalid",
        },
    )
    token = manage(url, "create_api_token", "--name", "scaleout").strip().splitlines()[-1]
    return ScaleoutDatabase(url=url, token=token, username=OPERATOR, password=OPERATOR_PASSWORD)


def cluster_env(scaleout_db, redis_server, simulator, **extra: str) -> dict[str, str]:
    """The environment of a Daphne process of a two-process cluster on the PostgreSQL
    database and Redis, with the simulator upstream; `extra` settings added."""
    from tests.conftest import UPSTREAM_KEY

    return {
        "DATABASE_URL": scaleout_db.url,
        "REDIS_URL": redis_server.url,
        "OC_UPSTREAM_URL": simulator.url,
        "OPENAI_API_KEY": UPSTREAM_KEY,
        "OC_PROCESSES": "2",
        **extra,
    }


@pytest.fixture
def pair(scaleout_db, redis_server, simulator):
    """Two Daphne processes on the PostgreSQL database and Redis, the simulator upstream."""
    from tests.support.servers import start_side_by_side

    env = cluster_env(scaleout_db, redis_server, simulator, OC_EVENTS_POLL_INTERVAL="0.1")
    servers = start_side_by_side(env, env)
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()
