"""Minted client secrets: the shape of POST /v1/realtime/client_secrets, its limits, and the
places a key is (and is not) a bearer."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient
from django.utils import timezone
from openai.types.realtime import ClientSecretCreateResponse, RealtimeSessionCreateResponse

from apps.sessions import tokens
from apps.sessions.auth import Principal, Refusal, authenticate_relay
from apps.sessions.models import ApiToken, ClientSecret

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
    session = body["session"]
    assert session.pop("id").startswith("sess_oc_")
    assert session == {
        "type": "realtime", "object": "realtime.session", "model": "gpt-realtime",
        "instructions": "Be brief.",
    }
    stored = await ClientSecret.objects.aget()
    assert stored.digest != body["value"] and body["value"] not in str(stored.__dict__)


async def test_a_minted_key_passes_the_sdks_own_check_of_the_services_answer(api_token):
    """The SDK parses answers leniently; a strict reader (its types validated) requires the
    `session`'s `object` and `id`, which the service sends. They are not part of the key's
    configuration: that holds only what the request asked for."""
    text_only = {"type": "realtime", "output_modalities": ["text"]}
    response = await mint(api_token, {"session": text_only})
    answer = ClientSecretCreateResponse.model_validate(response.json())
    assert isinstance(answer.session, RealtimeSessionCreateResponse)
    assert answer.session.object == "realtime.session"
    stored = await ClientSecret.objects.aget()
    assert stored.session == {**text_only, "model": "gpt-realtime"}


async def test_expires_after_sets_the_lifetime(api_token):
    response = await mint(api_token, {"expires_after": {"anchor": "created_at", "seconds": 10}})
    assert response.status_code == 200
    assert response.json()["expires_at"] <= time.time() + 11


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"expires_after": {"seconds": 9}}, "expires_after.seconds", "value >= 10, but got 9"),
        ({"expires_after": {"seconds": 7201}}, "expires_after.seconds", "<= 7200, but got 7201"),
        ({"expires_after": {"seconds": "60"}}, "expires_after.seconds", "an integer"),
        ({"expires_after": {"anchor": "now"}}, "expires_after.anchor", "are: 'created_at'."),
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


@pytest.mark.parametrize(
    ("seconds", "code", "words"),
    [
        (9, "integer_below_min_value", "below minimum value. Expected a value >= 10"),
        (7201, "integer_above_max_value", "above maximum value. Expected a value <= 7200"),
    ],
)
async def test_a_lifetime_out_of_range_is_refused_in_the_services_words(
    api_token, seconds, code, words
):
    """As the service refuses any number out of its range (and as `session.max_output_tokens`
    is refused here): the code says which bound, not a bare `invalid_value`."""
    lifetime = {"anchor": "created_at", "seconds": seconds}
    response = await mint(api_token, {"expires_after": lifetime})
    assert response.status_code == 400
    assert response.json()["error"] == {
        "type": "invalid_request_error", "code": code, "param": "expires_after.seconds",
        "message": f"Invalid 'expires_after.seconds': integer {words}, but got {seconds} instead.",
    }


INSTRUCTIONS = "session.instructions"
WRONG_TYPE = "expected a string, but got"
VOICE = "session.audio.output.voice"
TOO_LONG = "string_above_max_length"


@pytest.mark.parametrize(
    ("body", "code", "param", "words"),
    [
        ({"bogus": 1}, "unknown_parameter", "bogus", "Unknown parameter: 'bogus'."),
        ({"expires_after": {"seconds": 60, "x": 1}}, "unknown_parameter", "expires_after.x", "x'"),
        ({"session": {"instructions": 5}}, "invalid_type", INSTRUCTIONS, WRONG_TYPE),
        ({"session": {"model": ["m"]}}, "invalid_type", "session.model", WRONG_TYPE),
        ({"session": {"instructions": "a\ud800b"}}, "invalid_value", INSTRUCTIONS, "surrogate"),
        ({"session": {"instructions": "a\x00b"}}, "invalid_value", INSTRUCTIONS, "NUL"),
        ({"session": {"audio": {"output": {"voice": "m\x00"}}}}, "invalid_value", VOICE, "NUL"),
        ({"session": {"instructions": "x" * 2_000_000}}, TOO_LONG, INSTRUCTIONS, "32768"),
        ({"session": {"temperature": 0.7}}, "unknown_parameter", "session.temperature", "Unknown"),
        (
            {"session": {"audio": {"input": {"foo": 1}}}},
            "unknown_parameter",
            "session.audio.input.foo",
            "Unknown parameter",
        ),
        # A value of the wrong type anywhere the GA shape types it, as the service refuses it.
        ({"session": {"tools": "lookup"}}, "invalid_type", "session.tools", "expected an array"),
        ({"session": {"audio": {"output": {"voice": 5}}}}, "invalid_type", VOICE, "got an integer"),
        ({"session": {"audio": "loud"}}, "invalid_type", "session.audio", "expected an object"),
        (
            {"session": {"output_modalities": "audio"}},
            "invalid_type",
            "session.output_modalities",
            "expected an array, but got a string",
        ),
        (
            {"session": {"audio": {"input": {"turn_detection": {
                "type": "server_vad", "silence_duration_ms": "500"}}}}},
            "invalid_type",
            "session.audio.input.turn_detection.silence_duration_ms",
            "expected an integer",
        ),
        (
            {"session": {"tools": [{"type": "function", "name": 7}]}},
            "invalid_type",
            "session.tools[0].name",
            "expected a string",
        ),
        (
            {"session": {"max_output_tokens": True}},
            "invalid_type",
            "session.max_output_tokens",
            "got a boolean",
        ),
        # A value that is none of a fixed set's, as the service names the set.
        (
            {"session": {"output_modalities": ["text", "video"]}},
            "invalid_value",
            "session.output_modalities[1]",
            "Invalid value: 'video'. Supported values are: 'text' and 'audio'.",
        ),
        (
            {"session": {"audio": {"output": {"format": {"type": "audio/wav"}}}}},
            "invalid_value",
            "session.audio.output.format.type",
            "Supported values are: 'audio/pcm', 'audio/pcmu' and 'audio/pcma'.",
        ),
        (
            {"session": {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}},
            "invalid_value",
            "session.audio.input.format.rate",
            "Invalid value: 16000. Supported values are: 24000.",
        ),
        (
            {"session": {"tool_choice": "sometimes"}},
            "invalid_value",
            "session.tool_choice",
            "'required'",
        ),
        (
            {"session": {"max_output_tokens": "lots"}},
            "invalid_value",
            "session.max_output_tokens",
            "'inf'",
        ),
        # A number out of the service's range, the limit named.
        (
            {"session": {"max_output_tokens": 4097}},
            "integer_above_max_value",
            "session.max_output_tokens",
            "Expected a value <= 4096, but got 4097 instead.",
        ),
        (
            {"session": {"max_output_tokens": 0}},
            "integer_below_min_value",
            "session.max_output_tokens",
            "Expected a value >= 1, but got 0 instead.",
        ),
        (
            {"session": {"audio": {"output": {"speed": 2.0}}}},
            "decimal_above_max_value",
            "session.audio.output.speed",
            "Expected a value <= 1.5, but got 2.0 instead.",
        ),
    ],
)
async def test_what_the_service_would_refuse_is_refused_at_mint_time(
    api_token, body, code, param, words
):
    response = await mint(api_token, body)
    assert response.status_code == 400, response.content[:300]
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == code, error
    assert error["param"] == param and words in error["message"], error
    assert not await ClientSecret.objects.aexists(), "no key for a refused request"


async def test_a_full_session_of_the_right_types_is_taken(api_token):
    session = {
        "type": "realtime", "model": "gpt-realtime", "instructions": "Be brief.",
        "output_modalities": ["audio"], "max_output_tokens": "inf", "tracing": None,
        "audio": {
            "input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": None,
                      "noise_reduction": {"type": "near_field"}},
            "output": {"format": {"type": "audio/pcmu"}, "voice": "cedar", "speed": 1},
        },
        "tools": [{"type": "function", "name": "lookup", "description": "Find it.",
                   "parameters": {"type": "object", "properties": {"id": {"type": "string"}}}}],
        "tool_choice": "auto", "truncation": {"type": "retention_ratio", "retention_ratio": 0.5},
        "prompt": {"id": "pmpt_1", "variables": {"name": "Ann"}},
    }
    response = await mint(api_token, {"session": session})
    assert response.status_code == 200, response.content[:300]


async def test_settings_turned_off_with_null_are_taken(api_token):
    """As the service announces them, and as its documentation turns them off: `null`."""
    off = {"input": {"noise_reduction": None, "transcription": None, "turn_detection": None}}
    response = await mint(api_token, {"session": {"audio": off, "tracing": None}})
    assert response.status_code == 200, response.content[:300]


async def test_instructions_at_the_limit_are_taken(api_token):
    response = await mint(api_token, {"session": {"instructions": "x" * 32_768}})
    assert response.status_code == 200, response.content[:300]


@pytest.mark.parametrize(
    "raw",
    [b"[" * 5000 + b"]" * 5000, b'{"session":' * 5000 + b"{}" + b"}" * 5000, b"{bad", b"\xff"],
)
async def test_a_body_that_is_not_json_is_a_400_in_the_services_shape(api_token, raw):
    response = await AsyncClient().post(
        URL, raw, content_type="application/json", headers={"Authorization": f"Bearer {api_token}"}
    )
    assert response.status_code == 400 and response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_json", error
    assert not await ClientSecret.objects.aexists()


async def test_minting_needs_a_token_with_realtime_connect(make_token):
    assert (await AsyncClient().post(URL, {}, content_type="application/json")).status_code == 401
    reader = await sync_to_async(make_token)(scopes=["sessions:read"])
    refused = await mint(reader)
    assert refused.status_code == 403 and "realtime:connect" in refused.json()["error"]["message"]
    key = (await mint(await sync_to_async(make_token)())).json()["value"]
    # A key cannot mint keys, nor use the REST hook: it stands for realtime:connect only.
    # Refused as what it is (a valid key, the wrong credential), not as an unknown token.
    by_key = await mint(key)
    assert by_key.status_code == 401
    message = by_key.json()["error"]["message"]
    assert "client secret" in message and "API token" in message, message
    assert "unknown" not in message, message
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


async def test_a_keys_relay_handshakes_count_against_the_token_that_minted_it(
    settings, monkeypatch, make_token
):
    """The relay's handshake takes from the per-token rate limit as the calls endpoint does: a
    key from its token's bucket (minting more keys does not multiply the rate), or from its own
    where its row names no token."""
    token, other = [await sync_to_async(make_token)() for _ in range(2)]
    key, older = [(await mint(token)).json()["value"] for _ in range(2)]
    await ClientSecret.objects.filter(digest=ApiToken.hash(older)).aupdate(token=None)
    other_key = (await mint(other)).json()["value"]
    monkeypatch.setattr(tokens, "rate_limits", tokens.TokenBuckets())  # not the mints' buckets
    settings.OC_API_RATE, settings.OC_API_BURST = 0.01, 2

    assert isinstance(await authenticate_relay(_scope(key)), Principal)
    assert isinstance(await authenticate_relay(_scope(token)), Principal)
    for emptied in (key, token):
        refusal = await authenticate_relay(_scope(emptied))
        assert isinstance(refusal, Refusal)
        assert (refusal.status, refusal.code, refusal.error_type) == (
            429,
            "rate_limit_exceeded",
            "requests",
        )
        assert "OC_API_RATE" in refusal.message and "OC_API_BURST" in refusal.message
        assert dict(refusal.headers)["Retry-After"] == "100"  # a request's worth at 0.01 a second
    assert isinstance(await authenticate_relay(_scope(other_key)), Principal), "its own token's"
    assert isinstance(await authenticate_relay(_scope(older)), Principal), "its own bucket"


async def test_minting_deletes_keys_expired_over_a_day_ago(api_token):
    """Each mint sweeps the table, so keys do not pile up: one expired a day ago is deleted,
    one expired just now is kept, so its late use is refused as expired, not as unknown."""
    first = (await mint(api_token)).json()["value"]
    second = (await mint(api_token)).json()["value"]
    now = timezone.now()
    await ClientSecret.objects.filter(digest=ApiToken.hash(first)).aupdate(
        expires_at=now - timedelta(days=1, seconds=1)
    )
    await ClientSecret.objects.filter(digest=ApiToken.hash(second)).aupdate(
        expires_at=now - timedelta(seconds=1)
    )
    assert (await mint(api_token)).status_code == 200
    left = {s.digest async for s in ClientSecret.objects.all()}
    assert ApiToken.hash(first) not in left and ApiToken.hash(second) in left and len(left) == 2
