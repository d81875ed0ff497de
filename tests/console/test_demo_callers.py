"""`demo_callers` as `make run` starts it, on the embedded simulator: voice callers speak their
lines (appends in real time), server VAD ends their turns and the agent answers aloud; text
callers type. Real Daphne, real subprocesses, the relay between."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys

import pytest

from tests.support.servers import ROOT, DaphneProcess

pytestmark = pytest.mark.e2e


def _rows(db_path, sql: str) -> list[tuple]:
    with sqlite3.connect(db_path) as db:
        return db.execute(sql).fetchall()


@pytest.fixture
def embedded_server(tmp_path):
    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'demo.sqlite3'}",
        "OC_UPSTREAM_URL": "",
        "OPENAI_API_KEY": "",
        "OC_SIM_INTERVAL": "0.005",
        "OC_SIM_AUDIO_PACE": "0",  # spoken replies as fast as possible: the callers speak in real time
    }
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=ROOT, env={**os.environ, **env}, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    server = DaphneProcess(env)
    yield server, tmp_path / "demo.sqlite3"
    server.stop()


async def test_voice_and_text_callers_side_by_side(embedded_server):
    server, db_path = embedded_server
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "manage.py", "demo_callers", "--count", "2", "--voice", "1", "--turns", "2",
         "--sessions", "1", "--interval", "0.05", "--url", server.ws_base],
        cwd=ROOT, env={**os.environ, **server.env}, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + server.output()
    out = result.stdout
    assert "caller 1 (voice): session" in out and "caller 2 (voice)" not in out, out
    assert out.count("caller 1 says: ") == 2, out
    assert out.count("done after 2 turns") == 2, out
    # The voice caller never asked for a response: server VAD heard each line end and started
    # one (origin `server`); the text caller asked for its own (origin `caller`).
    rows = _rows(
        db_path,
        "SELECT origin, status, COUNT(*) FROM oc_sessions_responserequest GROUP BY origin, status",
    )
    assert sorted(rows) == [("caller", "completed", 2), ("server", "completed", 2)], rows
