"""Outbound webhooks (issue 14 item 3), end to end: a real Daphne delivers a session's events
to a real local HTTP endpoint that fails twice before it answers 2xx; each event arrives
once, signed as the `openai` SDK's `webhooks.unwrap` verifies."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from asgiref.sync import sync_to_async
from openai import InvalidWebhookSignatureError, OpenAI

from apps.events.models import Event, WebhookDelivery
from apps.events.webhooks import webhook_endpoint_create
from apps.sessions.models import LiveSession
from tests.support.callers import SocketCaller, until_live

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


class Endpoint:
    """A webhook receiver on a loopback port: answers 500 to its first `failures` POSTs."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.received: list[tuple[int, dict[str, str], bytes]] = []  # (status answered, headers, body)
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with outer.lock:
                    status = 500 if len(outer.received) < outer.failures else 204
                    outer.received.append((status, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/oc"

    def accepted(self) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return [(headers, body) for status, headers, body in self.received if status < 300]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint():
    server = Endpoint(failures=2)
    yield server
    server.stop()


@pytest.fixture
def hook_daphne(daphne_with):
    return daphne_with(
        OC_WEBHOOK_SEND="true",
        OC_WEBHOOK_RETRY_BASE="0.2",
        OC_WEBHOOK_INTERVAL="0.1",
        OC_WEBHOOK_TIMEOUT="5",
    )


async def test_an_endpoint_that_fails_twice_receives_each_event_once_signed(hook_daphne, endpoint, api_token):
    hook = await sync_to_async(webhook_endpoint_create)(url=endpoint.url, description="test receiver")
    async with httpx.AsyncClient(
        base_url=f"{hook_daphne.http_url}/api/v1", headers={"Authorization": f"Bearer {api_token}"}, timeout=10
    ) as rest:
        caller = await SocketCaller.connect(hook_daphne.ws_base, api_token)
        try:
            await until_live(rest, caller.session_id)
            await caller.say("Refund, please.")
            posted = await rest.post(f"/sessions/{caller.session_id}/responses", json={"instructions": "Refund."})
            assert posted.status_code == 202, posted.text
            await caller.wait_for("response.done")
        finally:
            await caller.close()

    def the_log():
        key = LiveSession.objects.get(upstream_id=caller.session_id).pk
        return {e.id: e.body() for e in Event.objects.filter(session_key=key).order_by("id")}

    async with asyncio.timeout(20):
        while True:
            events = await sync_to_async(the_log)()
            kinds = [json.loads(body)["type"] for body in events.values()]
            delivered = {headers["webhook-id"] for headers, _ in endpoint.accepted()}
            if "session.ended" in kinds and {f"evt_{i}" for i in events} <= delivered:
                break
            await asyncio.sleep(0.1)
    assert kinds[:2] == ["session.opened", "session.live"] and kinds[-1] == "session.ended", kinds
    assert kinds.count("request.status") >= 4 and "transcript.entry" in kinds

    # Two refusals, then every event exactly once: nothing lost, nothing twice.
    assert [status for status, _, _ in endpoint.received[:2]] == [500, 500]
    accepted = endpoint.accepted()
    ids = Counter(headers["webhook-id"] for headers, _ in accepted)
    assert set(ids.values()) == {1}, f"delivered more than once: {ids}"
    retried = {headers["webhook-id"] for _, headers, _ in endpoint.received[:2]}
    assert retried <= set(ids), "the refused deliveries were retried until accepted"

    client = OpenAI(api_key="unused")
    for headers, body in accepted:
        event_id = int(headers["webhook-id"].removeprefix("evt_"))
        if event_id not in events:
            continue  # another test's session
        assert body.decode() == events[event_id], "the body is the event as the stream gives it"
        client.webhooks.unwrap(body, headers, secret=hook.secret)  # raises if the signature is wrong
        assert headers["content-type"] == "application/json"
    headers, body = next((h, b) for h, b in accepted if int(h["webhook-id"][4:]) in events)
    with pytest.raises(InvalidWebhookSignatureError):
        client.webhooks.unwrap(body, headers, secret="whsec_" + "QUJD" * 8)
    with pytest.raises(InvalidWebhookSignatureError):
        client.webhooks.unwrap(body.replace(b"Refund", b"Refuse"), headers, secret=hook.secret)

    def log_rows():
        return list(WebhookDelivery.objects.filter(endpoint=hook).values_list("status", "attempts"))

    rows = await sync_to_async(log_rows)()
    assert {status for status, _ in rows} == {"delivered"}, rows
    assert sum(attempts - 1 for _, attempts in rows) == 2, "the delivery log counts the two retries"
