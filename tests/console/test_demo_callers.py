"""`demo_callers` as `make run` starts it, on the embedded simulator: voice callers speak their
lines (appends in real time), server VAD ends their turns and the agent answers aloud; text
callers type. Real Daphne, real subprocesses, the relay between."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import threading

import pytest
import websockets
from django.core.management import call_command
from websockets.sync.server import serve

from apps.sessions.models import ApiToken
from apps.sessions.tokens import api_token_create, api_token_revoke
from tests.support.servers import EMBEDDED_SIMULATOR, ROOT, DaphneProcess

pytestmark = [pytest.mark.e2e, EMBEDDED_SIMULATOR]


def _rows(db_path, sql: str) -> list[tuple]:
    with sqlite3.connect(db_path) as db:
        return db.execute(sql).fetchall()


@pytest.fixture
def embedded_server(tmp_path, migrated_sqlite):
    env = {
        "DATABASE_URL": f"sqlite:///{migrated_sqlite(tmp_path / 'demo.sqlite3')}",
        "OC_UPSTREAM_URL": "",
        "OPENAI_API_KEY": "",
        "OC_SIM_INTERVAL": "0.005",
        "OC_SIM_AUDIO_PACE": "0",  # spoken replies as fast as possible: the callers speak in real time
    }
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



def _demo_callers_on(relay, **options) -> None:
    """`demo_callers` (one caller, one turn, one session) against `relay`, a scripted stand-in
    for the relay: a real WebSocket server on a loopback port, one thread a connection."""
    with serve(relay, "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        call_command(
            "demo_callers", count=1, turns=1, sessions=1, interval=0.05,
            url=f"ws://127.0.0.1:{server.socket.getsockname()[1]}/v1", stdout=io.StringIO(),
            **options,
        )  # fmt: skip
        server.shutdown()

def test_voice_caller_lets_a_nudged_answer_finish_before_speaking():
    """A nudged answer is in progress when the voice caller is ready to speak: it waits for
    its end instead of talking over it (server VAD would cut it short, and that answer's
    `response.done` would pass for the answer to the caller's own line)."""
    while_agent_talked: list[str] = []
    spoke_after: list[str] = []  # the relay stand-in runs in the server's thread: its record

    def response(kind: str, response_id: str) -> str:
        return json.dumps({"type": kind, "response": {"id": response_id}})

    def relay(socket):
        socket.send(json.dumps({"type": "session.created", "session": {"id": "sess_demo"}}))
        assert json.loads(socket.recv())["type"] == "session.update"
        socket.send(response("response.created", "resp_nudged"))
        with contextlib.suppress(TimeoutError):
            while_agent_talked.append(json.loads(socket.recv(timeout=1))["type"])
        socket.send(response("response.done", "resp_nudged"))
        while json.loads(socket.recv())["type"] != "input_audio_buffer.append":
            pass
        spoke_after.append("input_audio_buffer.append")
        socket.send(response("response.created", "resp_answer"))
        socket.send(response("response.done", "resp_answer"))
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                socket.recv()

    _demo_callers_on(relay, voice=1, token="oct_unused")
    assert while_agent_talked == [], "the caller spoke while the nudged answer was in progress"
    assert spoke_after == ["input_audio_buffer.append"], "the caller spoke once it was done"


def test_the_token_it_made_is_revoked_when_it_stops(db):
    """Each `make run` makes its demo callers a token that nobody else holds: once they stop,
    it is revoked, not left valid in the admin's token list, one more for every start. Its
    name is its own (the last start's token, revoked, still names that start's requests)."""
    last_start, _ = api_token_create(name="demo-callers")
    api_token_revoke(token=last_start)

    def relay(socket):
        socket.send(json.dumps({"type": "session.created", "session": {"id": "sess_demo"}}))
        while json.loads(socket.recv())["type"] != "response.create":
            pass
        socket.send(json.dumps({"type": "response.done", "response": {"id": "resp_1"}}))
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                socket.recv()

    _demo_callers_on(relay, voice=0)
    tokens = list(ApiToken.objects.exclude(pk=last_start.pk).values_list("name", "revoked_at"))
    assert len(tokens) == 1 and tokens[0][1] is not None, "the demo callers' token outlived them"
    assert tokens[0][0] == "demo-callers-2", "named apart from the last start's"
