"""A refused relay handshake says why: under real Daphne, an HTTP 403 (CONTRACT section 1; 400
for a bad `oc_label`) with a JSON body naming the missing or refused token, as websockets and the
`openai` SDK receive it."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets
from asgiref.sync import sync_to_async
from openai import AsyncOpenAI
from websockets.exceptions import InvalidStatus

pytestmark = pytest.mark.django_db(transaction=True)


async def _refusal(url: str, **kwargs) -> tuple[int, dict]:
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(url, **kwargs):
            pass
    response = refused.value.response
    assert response.headers["content-type"] == "application/json"
    error = json.loads(bytes(response.body))["error"]
    assert set(error) == {"message", "type", "param", "code"}, "the service's error shape"
    return response.status_code, error


async def make_token_async(make_token, scopes):
    return await sync_to_async(make_token)(scopes=scopes, name=f"t{scopes}")


@pytest.mark.e2e
async def test_a_refused_handshake_answers_a_json_body_naming_the_missing_or_refused_token(
    daphne, make_token
):
    url = f"{daphne.ws_base}/realtime?model=gpt-realtime"
    status, error = await _refusal(url)
    assert status == 403 and error["code"] == "missing_token" and "Authorization: Bearer" in error["message"]
    status, error = await _refusal(url, additional_headers={"Authorization": "Bearer oct_not-a-token"})
    assert status == 403 and error["code"] == "invalid_token" and "unknown or revoked" in error["message"]
    narrow = await make_token_async(make_token, ["sessions:read"])
    status, error = await _refusal(url, additional_headers={"Authorization": f"Bearer {narrow}"})
    assert status == 403 and error["code"] == "missing_scope" and "realtime:connect" in error["message"]
    good = await make_token_async(make_token, None)
    status, error = await _refusal(
        f"{url}&oc_label={'x' * 201}", additional_headers={"Authorization": f"Bearer {good}"}
    )
    assert status == 400 and "oc_label" in error["message"] and "200" in error["message"]
    assert error["param"] == "oc_label"
    status, error = await _refusal(
        f"{url}&call_id=rtc_123", additional_headers={"Authorization": f"Bearer {good}"}
    )
    assert status == 400 and error["param"] == "call_id" and "/v1/realtime/calls" in error["message"]
    assert "Exception inside application" not in daphne.output(), "refusals are logged cleanly"


@pytest.mark.e2e
async def test_the_openai_sdk_sees_why_its_handshake_was_refused(daphne):
    client = AsyncOpenAI(api_key="oct_wrong", websocket_base_url=daphne.ws_base)
    with pytest.raises(InvalidStatus) as refused:
        async with client.realtime.connect(model="gpt-realtime"):
            pass
    body = json.loads(bytes(refused.value.response.body))
    assert refused.value.response.status_code == 403 and body["error"]["code"] == "invalid_token"


@pytest.mark.e2e
async def test_a_handshake_over_its_tokens_rate_is_the_services_429_before_any_upstream(
    daphne_with, make_token, simulator
):
    """Each handshake opens an upstream session: a token's handshakes take from its bucket of
    the REST hook's rate limit, and the one over it is refused before the upstream is asked."""
    server = daphne_with(OC_API_RATE="0.01", OC_API_BURST="2")
    url = f"{server.ws_base}/realtime?model=gpt-realtime"
    token = await make_token_async(make_token, None)
    other = await make_token_async(make_token, ["realtime:connect"])

    async def session_opened(plain: str) -> None:
        headers = {"Authorization": f"Bearer {plain}"}
        async with websockets.connect(url, additional_headers=headers) as socket:
            created = json.loads(await asyncio.wait_for(socket.recv(), 10))
            assert created["type"] == "session.created"

    for _ in range(2):
        await session_opened(token)
    opened = simulator.sim.connections_opened
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"}):
            pass
    response = refused.value.response
    assert response.status_code == 429 and response.headers["content-type"] == "application/json"
    assert int(response.headers["retry-after"]) >= 1
    error = json.loads(bytes(response.body))["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert "0.01 requests a second (OC_API_RATE)" in error["message"], error["message"]
    assert "bursts of 2 (OC_API_BURST)" in error["message"], error["message"]
    assert simulator.sim.connections_opened == opened, "no upstream was opened for the refused one"
    await session_opened(other)  # another token has its own bucket
