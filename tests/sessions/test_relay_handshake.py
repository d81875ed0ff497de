"""A refused relay handshake says why: under real Daphne, an HTTP 403 (CONTRACT section 1; 400
for a bad `oc_label`) with a JSON body naming the missing or refused token, as websockets and the
`openai` SDK receive it."""

from __future__ import annotations

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
