"""Session labels (CONTRACT section 8): set by the caller (`oc_label`), by a script (PATCH),
refused over 200 characters with the field and the limit named."""

from __future__ import annotations

import pytest
from channels.testing import WebsocketCommunicator

from apps.sessions.history import writer as history
from apps.sessions.models import LiveSession
from operator_console.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


def _auth(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


async def test_the_callers_oc_label_labels_the_session_and_never_reaches_the_upstream(
    relay_settings, simulator, api_token
):
    """...while the caller's other query parameters reach it, in order (CONTRACT §1 rule 6)."""
    communicator = WebsocketCommunicator(
        application,
        "/v1/realtime?model=gpt-realtime&intent=x&oc_label=Order%20%2342%20%C2%B7%20Jane&tag=a%26b&tag=",
        headers=_auth(api_token),
    )
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    created = await communicator.receive_json_from(timeout=5)
    session_id = created["session"]["id"]
    await history.flush()
    row = await LiveSession.objects.aget(upstream_id=session_id)
    assert row.label == "Order #42 · Jane"
    upstream_path = simulator.sim.sessions[session_id].connection.request.path
    assert upstream_path.endswith("/realtime?model=gpt-realtime&intent=x&tag=a%26b&tag=")
    await communicator.disconnect()


async def test_an_oc_label_over_200_characters_is_refused_before_any_upstream_opens(
    relay_settings, simulator, api_token
):
    before = simulator.sim.connections_opened
    communicator = WebsocketCommunicator(application, f"/v1/realtime?oc_label={'x' * 201}", headers=_auth(api_token))
    connected, _ = await communicator.connect(timeout=5)
    assert not connected
    assert simulator.sim.connections_opened == before


async def test_a_script_labels_a_session_and_the_label_is_in_its_session(caller, rest):
    answer = await rest.patch(f"/sessions/{caller.session_id}", json={"label": "  VIP: Jane Doe  "})
    assert answer.status_code == 200, answer.json()
    assert answer.json()["label"] == "VIP: Jane Doe" and answer.json()["id"] == caller.session_id
    assert (await rest.get(f"/sessions/{caller.session_id}")).json()["label"] == "VIP: Jane Doe"
    cleared = await rest.patch(f"/sessions/{caller.session_id}", json={"label": ""})
    assert cleared.status_code == 200 and cleared.json()["label"] is None


async def test_a_label_over_200_characters_is_a_422_naming_the_field_and_the_limit(caller, rest):
    answer = await rest.patch(f"/sessions/{caller.session_id}", json={"label": "x" * 201})
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["fields"]["label"] == "label is 201 characters; at most 200 are allowed", (
        "the reason in our words, without pydantic's 'Value error, '"
    )
    row = await LiveSession.objects.aget(upstream_id=caller.session_id)
    assert row.label == ""


async def test_labelling_an_unknown_session_or_an_unknown_field_is_refused(caller, rest):
    unknown = await rest.patch("/sessions/sess_does_not_exist", json={"label": "x"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "session_not_found"
    extra = await rest.patch(f"/sessions/{caller.session_id}", json={"label": "x", "colour": "red"})
    assert extra.status_code == 422 and "colour" in extra.json()["error"]["fields"]
