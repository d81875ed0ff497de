"""A tool approval on the event stream and in the metrics, end to end: a real Daphne, a Realtime
caller over a real socket asking the simulated model to run an MCP tool that needs approval
(`#mcp:NAME`), and a script following the session over Server-Sent Events that decides it
through the REST hook as soon as the stream tells it, without polling the approvals."""

from __future__ import annotations

import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.callers import SocketCaller, until_live
from tests.support.sse import Follower

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MCP_TOOL = {
    "type": "mcp",
    "server_label": "crm",
    "server_url": "https://crm.example/mcp",
    "require_approval": "always",
}


@pytest.fixture
async def rest(daphne, api_token):
    async with httpx.AsyncClient(
        base_url=f"{daphne.http_url}/api/v1",
        headers={"Authorization": f"Bearer {api_token}"},
        timeout=httpx.Timeout(10, read=30),
    ) as client:
        yield client


@pytest.fixture
async def caller(daphne, api_token, rest):
    caller = await SocketCaller.connect(daphne.ws_base, api_token)
    await until_live(rest, caller.session_id)
    yield caller
    await caller.close()


@pytest.fixture
def metrics_token(make_token) -> str:
    return make_token(scopes=["metrics:read"], name="prometheus")


@pytest.fixture
async def scrape(daphne, metrics_token):
    token = metrics_token
    async with httpx.AsyncClient(base_url=daphne.http_url, timeout=10) as http:

        async def samples() -> dict[tuple[str, tuple], float]:
            """Every sample by (name, labels without `process`)."""
            answer = await http.get("/metrics", headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 200, answer.text
            out = {}
            for family in text_string_to_metric_families(answer.text):
                for sample in family.samples:
                    labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "process"))
                    out[(sample.name, labels)] = sample.value
            return out

        yield samples


APPROVED = ("oc_approvals_total", (("by", "operator"), ("outcome", "approved")))
PENDING = ("oc_pending_approvals", ())


def approvals(follower: Follower) -> list[dict]:
    return [e.data["approval"] for e in follower.events if e.data["type"] == "approval.status"]


async def test_a_script_sees_an_approval_pending_then_decided_and_can_resume_after_it(
    caller, rest, scrape
):
    before = await scrape()
    follower = await Follower(rest, f"/sessions/{caller.session_id}/events").start()
    try:
        session = {"type": "realtime", "tools": [MCP_TOOL]}
        await caller.socket.send(json.dumps({"type": "session.update", "session": session}))
        await caller.wait_for("session.updated")
        await caller.say('Look it up #mcp:lookup {"order": 42}')
        await caller.socket.send(json.dumps({"type": "response.create"}))

        await follower.until(lambda _: approvals(follower), what="the approval request")
        (pending,) = approvals(follower)
        assert pending["status"] == "pending" and pending["id"].startswith("mcpr_")
        assert pending["session_id"] == caller.session_id
        assert (pending["name"], pending["server_label"], pending["kind"]) == ("lookup", "crm", "mcp")
        assert json.loads(pending["arguments"]) == {"order": 42}
        assert (pending["reason"], pending["decided_by"], pending["decided_at"]) == ("", "", None)
        # The same shape as the REST hook's, whichever a script reads.
        listed = (await rest.get(f"/sessions/{caller.session_id}/approvals")).json()["items"]
        assert listed == [pending]
        assert (await scrape())[PENDING] == 1

        url = f"/sessions/{caller.session_id}/approvals/{pending['id']}"
        decided = await rest.post(url, json={"approve": True, "reason": "checked the order"})
        assert decided.status_code == 200, decided.text
        await follower.until(lambda _: len(approvals(follower)) == 2, what="the decision")
        approved = approvals(follower)[1]
        assert approved == decided.json()
        assert approved["status"] == "approved" and approved["decided_by"].startswith("token:")
        assert approved["reason"] == "checked the order"

        after = await scrape()
        assert after[APPROVED] == before.get(APPROVED, 0) + 1
        assert after[PENDING] == 0

        # A script that lost its connection just before the request resumes with both events.
        ids = [e.id for e in follower.events]
        kinds = [e.data["type"] for e in follower.events]
        first = kinds.index("approval.status")
        assert first > 0, "the caller's words come first"
        last_seen = ids[first - 1]
        again = await Follower(
            rest, f"/sessions/{caller.session_id}/events", headers={"Last-Event-ID": last_seen}
        ).start()
        try:
            await again.until(lambda _: len(approvals(again)) == 2, what="the approval, resumed")
            resumed = [(e.id, e.data) for e in again.events if e.data["type"] == "approval.status"]
            assert resumed == [
                (e.id, e.data) for e in follower.events if e.data["type"] == "approval.status"
            ]
            assert again.events[0].id == ids[first]
        finally:
            await again.close()
    finally:
        await follower.close()
