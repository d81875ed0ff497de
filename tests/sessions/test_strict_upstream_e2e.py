"""What operators make the relay send, end to end: the REST hook's nudges of every kind, notes
and an interrupt, through the session's actor to the simulator, each event read there as a
strict GA server reads it (`tests/support/strict_ga.py`); and the upstream handshake, without
the relay's own `oc_*` query parameters and with the GA headers only."""

from __future__ import annotations

import pytest
from channels.testing import WebsocketCommunicator

from operator_console.asgi import application
from tests.conftest import Caller
from tests.support import strict_ga

pytestmark = pytest.mark.django_db(transaction=True)

METADATA = {f"{index:02d}" + "k" * 62: "v" * 512 for index in range(15)}  # the most it takes
NUDGES = [
    {"instructions": "Offer the upgrade."},
    {"instructions": "Say goodbye.", "instructions_mode": "replace", "metadata": METADATA},
    {"conversation": "none", "instructions": "Summarise.", "metadata": {"kind": "summary"}},
    {"conversation": "auto"},
    {},
]


async def test_operators_nudges_notes_and_interrupts_reach_the_upstream_as_strict_ga(
    relay_settings, simulator, caller_token, rest
):
    communicator = WebsocketCommunicator(
        application,
        "/v1/realtime?model=gpt-realtime&oc_label=Order%2042&oc_later=1&intent=x",
        headers=[(b"authorization", f"Bearer {caller_token}".encode())],
    )
    assert (await communicator.connect(timeout=5))[0]
    created = await communicator.receive_json_from(timeout=5)
    caller = Caller(communicator, created["session"]["id"])
    base = f"/sessions/{caller.session_id}"
    try:
        for body in NUDGES:
            answer = await rest.post(f"{base}/responses", json=body)
            assert answer.status_code == 202, answer.text
        for role in ("system", "user"):
            noted = await rest.post(f"{base}/notes", json={"text": "Context ☃", "role": role})
            assert noted.status_code == 201, noted.text
        # Four of the nudges are in the conversation: the caller sees them as responses.
        await caller.until("response.done", n=4)
        with simulator.configured(delta_interval=1.0):  # long enough to be interrupted
            await caller.send({"type": "response.create"})
            await caller.until("response.created", n=5)
            assert (await rest.post(f"{base}/interrupt")).status_code == 202
            done = (await caller.until("response.done", n=5))[-1]
        assert done["response"]["status"] == "cancelled"
        await caller.settled()
        connection = simulator.sim.sessions[caller.session_id].connection
    finally:
        await communicator.disconnect()
    received = [event for _, event in simulator.sim.received(caller.session_id)]
    own = [e for e in received if str(e.get("event_id", "")).startswith("event_oc_")]
    kinds = [e["type"] for e in own]
    assert kinds.count("response.create") == 6 and kinds.count("conversation.item.create") == 2
    assert "response.cancel" in kinds
    assert {i: strict_ga.problems(e) for i, e in enumerate(own) if strict_ga.problems(e)} == {}
    request = connection.request
    assert request.path.endswith("/realtime?model=gpt-realtime&intent=x")
    assert request.headers["Authorization"].startswith("Bearer ")
    assert "OpenAI-Beta" not in request.headers
    assert "Sec-WebSocket-Protocol" not in request.headers
