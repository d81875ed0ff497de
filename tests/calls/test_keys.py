"""Minted client secrets: the shape of POST /v1/realtime/client_secrets, its limits, and the
places a key is (and is not) a bearer."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient
from django.utils import timezone

from apps.sessions.auth import Principal, Refusal, authenticate_relay
from apps.sessions.models import ClientSecret

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/v1/realtime/client_secrets"


async def mint(token: str, body: dict | None = None):
    return await AsyncClient().post(URL, body or {}, content_type="application/json", headers={"Authorization": f"Bearer {token}"})


async def test_a_minted_key_has_the_services_shape_and_lives_ten_minutes_by_default(api_token):
    before = time.time()
    response = await mint(api_token, {"session": {"type": "realtime", "instructions": "Be brief."}})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"value", "expires_at", "session"}
    assert body["value"].startswith("ek_oc_")
    assert before + 599 <= body["expires_at"] <= time.time() + 601
    assert body["session"] == {"type": "realtime", "model": "gpt-realtime", "instructions": "Be brief."}
    stored = await ClientSecret.objects.aget()
    assert stored.digest != body["value"] and body["value"] not in str(stored.__dict__)


async def test_expires_after_sets_the_lifetime(api_token):
    response = await mint(api_token, {"expires_after": {"anchor": "created_at", "seconds": 10}})
    assert response.status_code == 200
    assert response.json()["expires_at"] <= time.time() + 11


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"expires_after": {"seconds": 9}}, "expires_after.seconds", "between 10 and 7200, not 9"),
        ({"expires_after": {"seconds": 7201}}, "expires_after.seconds", "between 10 and 7200, not 7201"),
        ({"expires_after": {"seconds": "60"}}, "expires_after.seconds", "an integer"),
        ({"expires_after": {"anchor": "now", "seconds": 60}}, "expires_after.anchor", "'created_at'"),
        ({"expires_after": 60}, "expires_after", "an object"),
        ({"session": {"type": "transcription"}}, "session.type", "'realtime'"),
        ({"session": []}, "session", "an object"),
    ],
)
async def test_bad_parameters_are_refused_naming_the_field(api_token, body, param, words):
    response = await mint(api_token, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"]
    assert not await ClientSecret.objects.aexists()


async def test_minting_needs_a_token_with_realtime_connect(make_token):
    assert (await AsyncClient().post(URL, {}, content_type="application/json")).status_code == 401
    reader = await sync_to_async(make_token)(scopes=["sessions:read"])
    refused = await mint(reader)
    assert refused.status_code == 403 and "realtime:connect" in refused.json()["error"]["message"]
    key = (await mint(await sync_to_async(make_token)())).json()["value"]
    # A key cannot mint keys, nor use the REST hook: it stands for realtime:connect only.
    assert (await mint(key)).status_code == 401
    rest = await AsyncClient().get("/api/v1/sessions", headers={"Authorization": f"Bearer {key}"})
    assert rest.status_code == 401


def _scope(key: str) -> dict:
    return {"type": "websocket", "headers": [(b"authorization", f"Bearer {key}".encode())]}


async def test_the_relay_takes_a_minted_key_until_it_expires(api_token):
    key = (await mint(api_token)).json()["value"]
    principal = await authenticate_relay(_scope(key))
    assert isinstance(principal, Principal) and principal.kind == "key" and principal.name == "key:test"
    subprotocol = {"type": "websocket", "headers": [], "subprotocols": [f"openai-insecure-api-key.{key}"]}
    assert isinstance(await authenticate_relay(subprotocol), Principal)

    await ClientSecret.objects.aupdate(expires_at=timezone.now() - timedelta(seconds=1))
    refusal = await authenticate_relay(_scope(key))
    assert isinstance(refusal, Refusal)
    assert (refusal.status, refusal.code) == (403, "expired_client_secret")
    assert "expired" in refusal.message and "client_secrets" in refusal.message

    unknown = await authenticate_relay(_scope(ClientSecret.generate()))
    assert isinstance(unknown, Refusal) and unknown.status == 403
