"""The `make run` configuration: Daphne with no OC_UPSTREAM_URL serves a page and a relay
backed by the embedded simulator that the openai SDK can use."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import urllib.request

import pytest
from openai import AsyncOpenAI

from tests.support.realtime import collect_until, count, user_text
from tests.support.servers import EMBEDDED_SIMULATOR, ROOT, DaphneProcess

pytestmark = [pytest.mark.e2e, EMBEDDED_SIMULATOR]


def _manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def embedded_server(tmp_path_factory, migrated_sqlite):
    """One `make run`-like server for the module's tests: setting up a new database and
    starting Django four times over is most of their time."""
    database = migrated_sqlite(tmp_path_factory.mktemp("run") / "run.sqlite3")
    env = {
        "DATABASE_URL": f"sqlite:///{database}",
        "OC_UPSTREAM_URL": "",
        "OPENAI_API_KEY": "",
        "OC_SIM_INTERVAL": "0.005",
        "OC_SIM_AUDIO_PACE": "0",  # the voice demo caller's answers as fast as possible
    }
    full_env = {**os.environ, **env}
    login = _manage(full_env, "ensure_demo_operator")
    assert "operator" in login, "make run prints the demo login"
    server = DaphneProcess(env)
    yield server, migrated_sqlite.token
    server.stop()


async def test_embedded_simulator_serves_page_and_relay(embedded_server):
    server, token = embedded_server
    page = await asyncio.to_thread(lambda: urllib.request.urlopen(server.http_url + "/", timeout=5).read())
    assert b"Operator Console" in page
    client = AsyncOpenAI(api_key=token, websocket_base_url=server.ws_base)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        assert (await conn.recv()).type == "session.created"
        await conn.conversation.item.create(item=user_text("ping"))
        await conn.response.create()
        events = await collect_until(conn, count("response.done")(1))
    done = events[-1]
    assert done.response.status == "completed"
    assert "ping" in done.response.output[0].content[0].text


async def test_demo_callers_hold_conversations_through_the_relay(embedded_server, tmp_path):
    server, _ = embedded_server
    env = {**os.environ, **server.env}
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "manage.py", "demo_callers", "--count", "2", "--turns", "2", "--sessions", "1",
         "--interval", "0.05", "--url", server.ws_base],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("done after 2 turns") == 2, result.stdout


def test_make_run_starts_demo_callers_only_on_the_simulator_unless_asked():
    """The README's way to the real service is `OC_UPSTREAM_URL=wss://… make run`: its demo
    callers would talk to the real, billed model without end, so there are none unless
    DEMO_CALLERS asks; and the start line names the upstream it uses."""

    def dry_run(*args: str, upstream: str = "") -> str:
        result = subprocess.run(
            ["make", "--no-print-directory", "--dry-run", "run", *args],
            cwd=ROOT, env={**os.environ, "OC_UPSTREAM_URL": upstream},
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "demo_callers --count 3 " in dry_run()
    assert "embedded simulator" in dry_run()
    real = dry_run(upstream="wss://api.openai.com/v1")
    assert "demo_callers --count 0 " in real and "upstream wss://api.openai.com/v1" in real
    assert "embedded simulator" not in real
    asked = dry_run("DEMO_CALLERS=2", upstream="wss://api.openai.com/v1")
    assert "demo_callers --count 2 " in asked


def test_make_run_on_every_interface_shows_an_address_the_console_answers_at():
    """`make run HOST=0.0.0.0` with DJANGO_ALLOWED_HOSTS naming the address (the README's
    way): the start line showed http://0.0.0.0:PORT/, which the console refuses (400: a host
    DJANGO_ALLOWED_HOSTS does not name)."""

    def start_line(*args: str, hosts: str | None = None) -> str:
        env = {k: v for k, v in os.environ.items() if k != "DJANGO_ALLOWED_HOSTS"}
        if hosts is not None:
            env["DJANGO_ALLOWED_HOSTS"] = hosts
        result = subprocess.run(
            ["make", "--no-print-directory", "--dry-run", "run", "PORT=8080", *args],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return next(line for line in result.stdout.splitlines() if "Console on" in line)

    named = start_line("HOST=0.0.0.0", hosts=".example.com,console.lan,10.0.0.5")
    assert "http://console.lan:8080/console/" in named and "0.0.0.0" not in named
    assert "http://127.0.0.1:8080/console/" in start_line("HOST=0.0.0.0")
    assert "http://10.0.0.5:8080/console/" in start_line("HOST=10.0.0.5", hosts="10.0.0.5")


def test_make_run_on_a_port_in_use_says_so_before_starting_anything(tmp_path):
    """Daphne's own complaint came after the start line, and after the demo callers had
    joined whatever served that port; `make run` now stops first, saying what to do."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            ["make", "--no-print-directory", "-o", "migrate", "run", f"PORT={port}"],
            cwd=ROOT, env={**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'none.sqlite3'}"},
            capture_output=True, text=True, timeout=60, start_new_session=True,
        )  # fmt: skip
    assert result.returncode != 0
    assert f"Cannot listen on 127.0.0.1:{port}" in result.stderr, result.stderr
    assert "make run PORT=" in result.stderr, "the message says how to choose another port"
    assert "Console on" not in result.stdout and "caller 1" not in result.stdout
