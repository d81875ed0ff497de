"""`GET /metrics` on a real Daphne (CONTRACT section 8): the Prometheus text format, counters
that move as a real session (the `openai` SDK through the relay, the simulator upstream)
completes requests, no secret in it, and refusals without the scope `metrics:read`."""

from __future__ import annotations

import json

import httpx
import pytest
from django.conf import settings
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import UPSTREAM_KEY
from tests.support.callers import SocketCaller
from tests.support.realtime import collect_until, count, user_text

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
done = count("response.done")


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample by (name, labels without `process`)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "process"))
            out[(sample.name, labels)] = sample.value
    return out


def _value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def metrics_token(make_token) -> str:
    return make_token(scopes=["metrics:read"], name="prometheus")


async def test_metrics_move_as_a_real_session_completes_requests(daphne, api_token, metrics_token):
    async with httpx.AsyncClient(base_url=daphne.http_url, timeout=10) as http:
        async def scrape() -> tuple[str, dict]:
            response = await http.get("/metrics", headers={"Authorization": f"Bearer {metrics_token}"})
            assert response.status_code == 200, response.text
            assert response.headers["content-type"].startswith("text/plain")
            return response.text, _samples(response.text)

        _, before = await scrape()
        client = AsyncOpenAI(api_key=api_token, websocket_base_url=daphne.ws_base)
        rest = {"Authorization": f"Bearer {api_token}"}
        async with client.realtime.connect(model="gpt-realtime") as conn:
            session_id = (await conn.recv()).session.id
            await conn.conversation.item.create(item=user_text("Where is my order?"))
            await conn.response.create()
            await collect_until(conn, done(1))
            for _ in range(100):  # the REST hook sees the session once the history writer wrote it
                if (await http.get(f"/api/v1/sessions/{session_id}", headers=rest)).status_code == 200:
                    break
            posted = await http.post(
                f"/api/v1/sessions/{session_id}/responses", json={"instructions": "Offer the refund."}, headers=rest
            )
            assert posted.status_code == 202, posted.text
            await collect_until(conn, done(1))
            await conn.send({"type": "bogus.event", "event_id": "evt_bogus"})  # the upstream refuses it
            await collect_until(conn, lambda event, seen: event.type == "error")
            text, during = await scrape()

    growth = {
        "caller request completed": ("oc_requests_total", {"origin": "caller", "status": "completed"}),
        "nudge completed": ("oc_requests_total", {"origin": "api", "status": "completed"}),
        "nudge timed to its start": ("oc_nudge_start_seconds_count", {"origin": "api"}),
        "upstream error counted by code": ("oc_upstream_errors_total", {"code": "invalid_value"}),
    }
    for what, (name, labels) in growth.items():
        assert _value(during, name, **labels) == _value(before, name, **labels) + 1, (what, text)
    for direction in ("to_caller", "to_upstream"):
        assert _value(during, "oc_relayed_frames_total", direction=direction) > _value(
            before, "oc_relayed_frames_total", direction=direction
        ), direction
        assert _value(during, "oc_relayed_bytes_total", direction=direction) > _value(
            before, "oc_relayed_bytes_total", direction=direction
        ), direction
    assert _value(during, "oc_live_sessions", kind="relay") >= 1, "the session was live at the scrape"
    assert _value(during, "oc_nudge_start_seconds_sum", origin="api") > _value(before, "oc_nudge_start_seconds_sum", origin="api")
    assert "oc_listeners" in text and 'process="' in text

    for secret in (api_token, metrics_token, UPSTREAM_KEY, settings.SECRET_KEY, "oct_"):
        assert secret not in text, "no token or key in the metrics"


async def test_metrics_refuse_without_a_token_or_the_scope(daphne, api_token, metrics_token):
    async with httpx.AsyncClient(base_url=daphne.http_url, timeout=10) as http:
        missing = await http.get("/metrics")
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthenticated"
        unknown = await http.get("/metrics", headers={"Authorization": "Bearer oct_not-a-token"})
        assert unknown.status_code == 401
        scoped = await http.get("/metrics", headers={"Authorization": f"Bearer {api_token}"})
        assert scoped.status_code == 403, "the default scopes do not include metrics:read"
        assert "metrics:read" in scoped.json()["error"]["message"]
        assert (await http.post("/metrics", headers={"Authorization": f"Bearer {metrics_token}"})).status_code == 405


async def test_relayed_bytes_count_a_text_frames_utf8_bytes(daphne, api_token, metrics_token):
    """`oc_relayed_bytes_total` is in bytes, as its name says: a text frame counts as its
    UTF-8 encoding, as it goes on the wire, not as its characters."""
    def sent(samples) -> float:
        return _value(samples, "oc_relayed_bytes_total", direction="to_upstream")

    async with httpx.AsyncClient(base_url=daphne.http_url, timeout=10) as http:
        async def scrape() -> dict:
            answer = await http.get("/metrics", headers={"Authorization": f"Bearer {metrics_token}"})
            return _samples(answer.text)

        caller = await SocketCaller.connect(daphne.ws_base, api_token)
        try:
            before = await scrape()
            item = user_text("Grüße aus Köln, ça va? 東京 " * 20)
            frame = json.dumps(
                {"type": "conversation.item.create", "event_id": "evt_utf8", "item": item},
                ensure_ascii=False,
            )
            await caller.socket.send(frame)
            await caller.wait_for("conversation.item.created")
            after = await scrape()
        finally:
            await caller.close()
    assert len(frame.encode()) > len(frame), "the frame has characters of more than one byte"
    assert sent(after) - sent(before) == len(frame.encode())
