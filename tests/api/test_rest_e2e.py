"""End to end: a caller on the official `openai` SDK through real Daphne, nudged by a script
over real HTTP; the nudge visibly takes effect in the caller's next response. And what only
the real Daphne shows: the status line of an answer."""

from __future__ import annotations

import asyncio
import http.client
import os

import httpx
import pytest
from django.db import connection
from openai import AsyncOpenAI

from tests.conftest import UPSTREAM_KEY
from tests.support.realtime import collect_until, count, user_text
from tests.support.servers import DaphneProcess

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
done = count("response.done")


async def test_script_nudges_a_live_sdk_session_and_the_caller_hears_it(daphne, simulator, api_token):
    client = AsyncOpenAI(api_key=api_token, websocket_base_url=daphne.ws_base)
    async with (
        client.realtime.connect(model="gpt-realtime") as conn,
        httpx.AsyncClient(
            base_url=f"{daphne.http_url}/api/v1", headers={"Authorization": f"Bearer {api_token}"}
        ) as rest,
    ):
        created = await conn.recv()
        session_id = created.session.id
        session = await _until_live(rest, session_id)
        assert session["status"] == "live"

        await conn.conversation.item.create(item=user_text("Can I get my money back?"))
        posted = await rest.post(
            f"/sessions/{session_id}/responses",
            json={"instructions": "Offer the refund.", "metadata": {"ticket": "T-7"}},
            headers={"Idempotency-Key": "e2e-1"},
        )
        assert posted.status_code == 202, posted.text
        timing = posted.headers["Server-Timing"]
        assert "auth;dur=" in timing and "db;dur=" in timing and "ping;dur=" in timing, timing
        events = await collect_until(conn, done(1))

    reply = [e for e in events if e.type == "response.done"][0].response
    text = reply.output[0].content[0].text
    assert "Offer the refund." in text and "Reply 1 to: Can I get my money back?" in text
    assert reply.metadata is None, "the operator's metadata stays with the operator"
    assert not [e for e in events if e.type == "error"]


async def _until_live(rest: httpx.AsyncClient, session_id: str) -> dict:
    async def live():
        response = await rest.get(f"/sessions/{session_id}")
        return response.json() if response.status_code == 200 else None

    for _ in range(100):
        session = await live()
        if session is not None:
            return session
        await asyncio.sleep(0.02)
    raise AssertionError(f"session {session_id} never became visible to the REST hook")


@pytest.fixture
def strict_daphne(django_db_setup, django_db_blocker, simulator):
    """A Daphne of its own whose tokens may make one request, then one per 100 s."""
    with django_db_blocker.unblock():
        db_path = connection.settings_dict["NAME"]
    server = DaphneProcess(
        {
            "OC_UPSTREAM_URL": simulator.url,
            "OPENAI_API_KEY": UPSTREAM_KEY,
            "DATABASE_URL": f"sqlite:///{os.path.abspath(db_path)}",
            "OC_API_RATE": "0.01",
            "OC_API_BURST": "1",
        }
    )
    yield server
    server.stop()


def test_a_429_reads_too_many_requests_on_the_status_line(strict_daphne, api_token):
    connection_ = http.client.HTTPConnection("127.0.0.1", strict_daphne.port, timeout=10)
    try:
        answers = []
        for _ in range(2):
            connection_.request("GET", "/api/v1/sessions", headers={"Authorization": f"Bearer {api_token}"})
            answer = connection_.getresponse()
            answer.read()
            answers.append((answer.status, answer.reason))
    finally:
        connection_.close()
    assert answers == [(200, "OK"), (429, "Too Many Requests")], strict_daphne.output()[-2000:]


async def test_a_multipart_body_twisted_cannot_parse_reaches_the_application(daphne, api_token):
    # Twisted parsed multipart bodies for Daphne, which never reads what it made of them, and
    # answered one it could not parse with a bare 400 before the application saw it.
    headers = {
        "Authorization": f"Bearer {api_token}",
        "Content-Type": "multipart/form-data; boundary=x",
    }
    async with httpx.AsyncClient(base_url=daphne.http_url, headers=headers) as http:
        rest = await http.post(
            "/api/v1/sessions/sess_any/responses", content=b'{"instructions": "x"}'
        )
        calls = await http.post("/v1/realtime/calls", content=b"v=0\r\n")
    # The REST hook reads the JSON body whatever its type says: the session is unknown.
    assert rest.status_code == 404, rest.text
    assert rest.json()["error"]["code"] == "session_not_found", rest.text
    assert calls.status_code == 400, calls.text
    assert calls.json()["error"]["type"] == "invalid_request_error", calls.text
