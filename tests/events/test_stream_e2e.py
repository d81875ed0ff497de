"""Following sessions over Server-Sent Events (CONTRACT section 8), end to end: a real Daphne,
a Realtime caller over a real socket, scripts over real HTTP."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.callers import SocketCaller, until_live
from tests.support.sse import Follower

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


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


def statuses(follower: Follower, request_id: str) -> list[str]:
    return [
        e.data["request"]["status"]
        for e in follower.events
        if e.data["type"] == "request.status" and e.data["request"]["id"] == request_id
    ]


def completed(request_id: str):
    def check(events) -> bool:
        done = any(
            e.data["type"] == "request.status" and e.data["request"]["id"] == request_id
            and e.data["request"]["status"] == "completed" for e in events
        )
        agent = any(e.data["type"] == "transcript.entry" and e.data["entry"].get("role") == "agent" for e in events)
        return done and agent

    return check


async def test_a_script_sees_a_nudge_through_every_status_and_the_transcript_in_order(caller, rest):
    follower = await Follower(rest, f"/sessions/{caller.session_id}/events").start()
    reference = await Follower(rest, "/events").start()  # every session: this one's events too
    try:
        assert follower.status == 200 and follower.content_type.startswith("text/event-stream")
        await caller.say("Where is my parcel?")
        await follower.until(
            lambda events: any(e.data["type"] == "transcript.entry" for e in events), what="the caller's words"
        )
        posted = await rest.post(f"/sessions/{caller.session_id}/responses", json={"instructions": "Apologise."})
        assert posted.status_code == 202, posted.text
        request_id = posted.json()["id"]
        await follower.until(completed(request_id), what="the nudge to complete")

        # In order: the caller's words, each status of the nudge, the agent's answer.
        assert statuses(follower, request_id) == ["queued", "sent", "in_progress", "completed"]
        kinds = [e.data["type"] for e in follower.events]
        first_status = kinds.index("request.status")
        words = [e.data["entry"] for e in follower.events if e.data["type"] == "transcript.entry"]
        assert words[0]["role"] == "user" and "Where is my parcel?" in words[0]["text"]
        assert words[-1]["role"] == "agent" and "Apologise." in words[-1]["text"]
        assert kinds.index("transcript.entry") < first_status
        assert kinds[-1] == "transcript.entry", "the answer is final once the response is done"
        ids = [int(e.id) for e in follower.events]
        assert ids == sorted(ids) and len(set(ids)) == len(ids), "ids grow with every event"
        for event in follower.events:
            assert event.data["id"] == int(event.id) and event.data["session_id"] == caller.session_id

        # Each status event carries the request as it was at that status.
        by_status = {e.data["request"]["status"]: e.data["request"] for e in follower.events
                     if e.data["type"] == "request.status"}
        assert by_status["queued"]["sent_at"] is None and by_status["queued"]["origin"] == "api"
        assert by_status["sent"]["sent_at"] and by_status["sent"]["started_at"] is None
        assert by_status["in_progress"]["started_at"] and by_status["in_progress"]["finished_at"] is None
        assert by_status["completed"]["finished_at"] and "Apologise." in by_status["completed"]["output_text"]

        # The stream of every session saw the same events, with the same ids and bodies.
        await reference.until(completed(request_id), what="the nudge on /events")
        mine = [(e.id, e.data) for e in reference.events if e.data.get("session_id") == caller.session_id]
        assert mine == [(e.id, e.data) for e in follower.events]
    finally:
        await follower.close()
        await reference.close()


async def test_a_reconnect_with_last_event_id_gets_exactly_what_it_missed(caller, rest):
    reference = await Follower(rest, f"/sessions/{caller.session_id}/events").start()
    first = await Follower(rest, f"/sessions/{caller.session_id}/events").start()
    try:
        await caller.say("Hello?")
        posted = await rest.post(f"/sessions/{caller.session_id}/responses", json={"instructions": "Greet."})
        request_id = posted.json()["id"]
        await first.until(lambda events: "sent" in statuses(first, request_id), what="sent")
        await first.close()  # the script loses its connection here
        last_seen = first.events[-1].id
        await reference.until(completed(request_id), what="the nudge to complete")
        missed = [(e.id, e.data) for e in reference.events if int(e.id) > int(last_seen)]
        assert missed, "something happened while the script was away"

        again = await Follower(rest, f"/sessions/{caller.session_id}/events", headers={"Last-Event-ID": last_seen}).start()
        by_query = await Follower(rest, f"/sessions/{caller.session_id}/events", params={"last_event_id": last_seen}).start()
        # event-source-polyfill's reconnect: `lastEventId` appended to the URL it was given
        # (here one that began at the first event), and no Last-Event-ID header.
        polyfill = await Follower(
            rest,
            f"/sessions/{caller.session_id}/events",
            params={"last_event_id": first.events[0].id, "lastEventId": last_seen},
        ).start()
        try:
            for follower in (again, by_query, polyfill):
                await follower.until(lambda events: len(events) >= len(missed), what="what was missed")
                await asyncio.sleep(0.3)  # nothing more, nothing twice
                assert [(e.id, e.data) for e in follower.events] == missed
        finally:
            await again.close()
            await by_query.close()
            await polyfill.close()
    finally:
        await reference.close()


async def test_a_script_sees_each_label_change_as_session_updated_with_the_session(caller, rest):
    """A label is set by a script (PATCH) or an operator: followers and webhooks learn of it
    as `session.updated`, once a change; setting the label it already has changes nothing."""
    follower = await Follower(rest, f"/sessions/{caller.session_id}/events").start()
    try:
        for label in ("VIP: Jane", "VIP: Jane", "  VIP: Jane  ", "Refund"):
            answer = await rest.patch(f"/sessions/{caller.session_id}", json={"label": label})
            assert answer.status_code == 200, answer.text

        def updates(events) -> list[dict]:
            return [e.data["session"] for e in events if e.data["type"] == "session.updated"]

        await follower.until(lambda events: len(updates(events)) >= 2, what="the two changes")
        assert [s["label"] for s in updates(follower.events)] == ["VIP: Jane", "Refund"]
        session = (await rest.get(f"/sessions/{caller.session_id}")).json()
        assert updates(follower.events)[-1] == session, "the whole Session, as the REST hook has it"
    finally:
        await follower.close()


async def test_every_sessions_stream_resumed_before_a_sessions_end_goes_on_after_it(
    daphne, api_token, rest
):
    """/events is not a session's stream: resumed from an id before some session's end, it
    sends that end and goes on, as a script reconnecting to it expects."""
    reference = await Follower(rest, "/events").start()
    caller = await SocketCaller.connect(daphne.ws_base, api_token)
    try:
        await until_live(rest, caller.session_id)
    finally:
        await caller.close()
    try:
        await reference.until(
            lambda events: any(e.data["type"] == "session.ended" for e in events), what="the end"
        )
    finally:
        await reference.close()
    resumed = await Follower(
        rest, "/events", headers={"Last-Event-ID": reference.events[0].id}
    ).start()
    try:
        await resumed.until(
            lambda events: any(e.data["type"] == "session.ended" for e in events), what="the end"
        )
        relabelled = await rest.patch(f"/sessions/{caller.session_id}", json={"label": "After"})
        assert relabelled.status_code == 200, relabelled.text
        await resumed.until(
            lambda events: events[-1].data["type"] == "session.updated",
            what="the relabelling, after the end it resumed through",
        )
    finally:
        await resumed.close()


# ---------------------------------------------------------------------------- tool approvals
# The caller asks the simulated model to run an MCP tool that needs approval (`#mcp:NAME`); the
# script learns of it from the stream and decides it through the REST hook, without polling.

MCP_TOOL = {
    "type": "mcp",
    "server_label": "crm",
    "server_url": "https://crm.example/mcp",
    "require_approval": "always",
}


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
