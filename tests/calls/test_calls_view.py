"""POST /v1/realtime/calls against a stand-in upstream (httpx's MockTransport): what is
forwarded, and how the upstream's answers and errors are passed on. The end-to-end tests
(test_calls_e2e.py) place real calls on the simulator."""

from __future__ import annotations

import json
import uuid

import httpx
import httpx2
import openai
import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import AsyncClient

from apps.calls import views
from apps.sessions import tokens, upstream_calls
from apps.sessions.housekeeping import housekeeping
from apps.sessions.models import ClientSecret
from tests.conftest import UPSTREAM_KEY

pytestmark = pytest.mark.django_db(transaction=True)

OFFER = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
ANSWER = "v=0\r\no=- 3 4 IN IP4 127.0.0.1\r\ns=answer\r\nt=0 0\r\n"


class Upstream:
    """Records the requests it gets; answers with `status` and `body`."""

    def __init__(self, status: int = 201, body: bytes = ANSWER.encode(), headers: dict | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.status = status
        self.body = body
        self.headers = headers if headers is not None else {"Location": "/v1/realtime/calls/rtc_test123", "Content-Type": "application/sdp"}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        return httpx.Response(self.status, content=self.body, headers=self.headers)


@pytest.fixture
def stand_in(settings, monkeypatch):
    settings.OC_UPSTREAM_URL = "wss://upstream.invalid/v1"
    settings.OPENAI_API_KEY = UPSTREAM_KEY
    fake = Upstream()
    monkeypatch.setattr(upstream_calls, "client", lambda transport=None: httpx.AsyncClient(transport=httpx.MockTransport(fake)))
    attached: list[dict] = []

    async def record(**arguments):
        attached.append(arguments)
        return True

    monkeypatch.setattr(views, "attach", record)
    fake.attached = attached
    return fake


async def post_sdp(token: str | None, body: str = OFFER, query: str = "?model=gpt-realtime-mini", **extra):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await AsyncClient().post(f"/v1/realtime/calls{query}", body, content_type="application/sdp", headers=headers, **extra)


async def mint(token: str, session: dict | None = None) -> str:
    response = await AsyncClient().post(
        "/v1/realtime/client_secrets", {"session": session or {}}, content_type="application/json",
        headers={"Authorization": f"Bearer {token}"},
    )
    return response.json()["value"]


async def test_an_sdp_offer_is_forwarded_with_the_upstream_key_and_answered_201(stand_in, api_token):
    response = await post_sdp(api_token)
    assert response.status_code == 201
    assert response["Content-Type"] == "application/sdp"
    assert response["Location"] == "/v1/realtime/calls/rtc_test123"
    assert response.content.decode() == ANSWER
    sent = stand_in.requests[0]
    assert str(sent.url) == "https://upstream.invalid/v1/realtime/calls?model=gpt-realtime-mini"
    assert sent.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert sent.headers["Content-Type"] == "application/sdp" and sent.content.decode() == OFFER
    assert stand_in.attached == [{"call_id": "rtc_test123", "kind": "webrtc", "model": "gpt-realtime-mini", "connected_by": "token:test"}]
    assert UPSTREAM_KEY not in str(response.headers) and UPSTREAM_KEY.encode() not in response.content


async def test_a_multipart_offer_sends_its_session_and_a_minted_keys_configuration_wins(stand_in, api_token):
    key = await mint(api_token, {"instructions": "From the key.", "audio": {"output": {"voice": "cedar"}}})
    response = await AsyncClient().post(
        "/v1/realtime/calls",
        {"sdp": OFFER, "session": json.dumps({"type": "realtime", "instructions": "From the browser.", "output_modalities": ["audio"]})},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 201, response.content
    sent = stand_in.requests[0]
    assert sent.headers["Content-Type"].startswith("multipart/form-data")
    parts = sent.content.decode()
    session = json.loads(parts.split('name="session"')[1].split("\r\n\r\n", 1)[1].split("\r\n--", 1)[0])
    assert session == {
        "type": "realtime", "model": "gpt-realtime", "instructions": "From the key.",
        "audio": {"output": {"voice": "cedar"}}, "output_modalities": ["audio"],
    }
    assert OFFER in parts
    assert stand_in.attached[0]["connected_by"] == "key:test"


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, {"error": {"type": "invalid_request_error", "code": "invalid_offer", "message": "The SDP offer has no media.", "param": "sdp"}}),
        (401, {"error": {"type": "invalid_request_error", "code": "invalid_api_key", "message": "Incorrect API key provided.", "param": None}}),
        (429, {"error": {"type": "rate_limit_error", "code": "rate_limit_exceeded", "message": "Slow down.", "param": None}}),
    ],
)
async def test_upstream_errors_are_passed_on_with_their_status_and_body(stand_in, api_token, status, body):
    stand_in.status, stand_in.body, stand_in.headers = status, json.dumps(body).encode(), {"Content-Type": "application/json", "X-Upstream-Secret": UPSTREAM_KEY}
    response = await post_sdp(api_token)
    assert response.status_code == status
    assert response.json() == body
    assert UPSTREAM_KEY not in str(response.headers) and stand_in.attached == []


async def test_an_upstream_refusal_naming_the_key_is_passed_on_without_it(stand_in, api_token):
    """The service names the key it refused, masked; a proxy may echo it whole. A caller (a
    browser, with a minted key) gets the refusal without any of it."""
    masked = UPSTREAM_KEY[:8] + "****" + UPSTREAM_KEY[-4:]
    said = f"Incorrect API key provided: {masked}. Sent: Bearer {UPSTREAM_KEY}"
    error = {"type": "invalid_request_error", "code": "invalid_api_key", "message": said}
    stand_in.status, stand_in.body = 401, json.dumps({"error": error}).encode()
    stand_in.headers = {"Content-Type": "application/json"}
    response = await post_sdp(api_token)
    assert response.status_code == 401
    passed_on = "Incorrect API key provided: [redacted]. Sent: [redacted]"
    assert response.json()["error"] == {**error, "message": passed_on}
    assert UPSTREAM_KEY not in response.content.decode() and masked not in response.content.decode()


async def test_an_upstream_error_without_json_becomes_one(stand_in, api_token):
    stand_in.status, stand_in.body, stand_in.headers = 503, b"<html>busy</html>", {"Content-Type": "text/html"}
    response = await post_sdp(api_token)
    assert response.status_code == 503
    assert "503" in response.json()["error"]["message"]


async def test_an_unreachable_upstream_is_a_502(settings, api_token, monkeypatch):
    settings.OC_UPSTREAM_URL = "ws://127.0.0.1:9/v1"

    def refuse(request):
        raise httpx.ConnectError("refused", request=request)

    monkeypatch.setattr(upstream_calls, "client", lambda transport=None: httpx.AsyncClient(transport=httpx.MockTransport(refuse)))
    response = await post_sdp(api_token)
    assert response.status_code == 502 and response.json()["error"]["code"] == "upstream_unreachable"


async def test_bad_offers_are_refused_before_the_upstream(stand_in, api_token):
    not_sdp = await post_sdp(api_token, body="hello")
    assert not_sdp.status_code == 400 and not_sdp.json()["error"]["param"] == "sdp"
    wrong_type = await AsyncClient().post("/v1/realtime/calls", {"sdp": OFFER}, content_type="application/json", headers={"Authorization": f"Bearer {api_token}"})
    assert wrong_type.status_code == 415 and "application/sdp" in wrong_type.json()["error"]["message"]
    bad_session = await AsyncClient().post(
        "/v1/realtime/calls", {"sdp": OFFER, "session": "{not json"}, headers={"Authorization": f"Bearer {api_token}"}
    )
    assert bad_session.status_code == 400 and bad_session.json()["error"]["param"] == "session"
    get = await AsyncClient().get("/v1/realtime/calls", headers={"Authorization": f"Bearer {api_token}"})
    assert get.status_code == 405
    assert stand_in.requests == []


@pytest.mark.parametrize(
    ("part", "code"),
    [
        ("{not json", "invalid_json"),
        ("[" * 5000 + "]" * 5000, "invalid_json"),  # deeper than json.loads can go
        ("[1]", "invalid_type"),
        ("null", "invalid_type"),
    ],
)
async def test_a_session_part_that_is_no_json_object_is_a_400_as_for_a_key(
    stand_in, api_token, part, code
):
    """The offer's `session` part is refused with the codes a minted key's `session` gets
    (`invalid_json`, `invalid_type`): nested too deep for Python's parser is no 500."""
    response = await AsyncClient().post(
        "/v1/realtime/calls", {"sdp": OFFER, "session": part},
        headers={"Authorization": f"Bearer {api_token}"},
    )
    assert response.status_code == 400, response.content[:300]
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error", code, "session"
    ), error
    assert stand_in.requests == [] and stand_in.attached == []


@pytest.mark.parametrize(
    ("session", "code", "param"),
    [
        ({"type": "realtime", "temperature": 0.8}, "unknown_parameter", "session.temperature"),
        (
            {"type": "realtime", "audio": {"input": {"noise": 1}}},
            "unknown_parameter",
            "session.audio.input.noise",
        ),
        ({"type": "transcription"}, "invalid_value", "session.type"),
        ({"type": "realtime", "instructions": 5}, "invalid_type", "session.instructions"),
    ],
)
async def test_an_offers_session_is_refused_as_the_service_would_not_changed(
    stand_in, api_token, session, code, param
):
    """The multipart `session` is checked as a minted key's is, and refused naming the
    parameter; it is not sent on with the unknown key, nor turned into a realtime session."""
    response = await AsyncClient().post(
        "/v1/realtime/calls", {"sdp": OFFER, "session": json.dumps(session)},
        headers={"Authorization": f"Bearer {api_token}"},
    )
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param), error
    assert stand_in.requests == [] and stand_in.attached == []


async def test_callers_without_credentials_are_refused(stand_in, make_token):
    assert (await post_sdp(None)).status_code == 401
    assert (await post_sdp("oct_not-a-token")).status_code == 401
    reader = await sync_to_async(make_token)(scopes=["sessions:read"])
    assert (await post_sdp(reader)).status_code == 403
    assert stand_in.requests == []


async def test_another_sites_page_may_place_a_call_and_read_the_answer(stand_in, api_token):
    """As the service allows a browser app on any origin to post its offer with a minted key."""
    preflight = await AsyncClient().options(
        "/v1/realtime/calls",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight["Access-Control-Allow-Origin"] == "*"
    assert preflight["Access-Control-Allow-Methods"] == "POST"
    assert preflight["Access-Control-Allow-Headers"] == "Authorization, Content-Type"
    assert "Access-Control-Allow-Credentials" not in preflight
    assert stand_in.requests == []

    placed = await post_sdp(await mint(api_token), HTTP_ORIGIN="https://app.example")
    assert placed.status_code == 201
    assert (placed["Access-Control-Allow-Origin"], placed["Access-Control-Expose-Headers"]) == (
        "*",
        "Location, Retry-After",
    )
    refused = await post_sdp(None, HTTP_ORIGIN="https://app.example")
    assert (refused.status_code, refused["Access-Control-Allow-Origin"]) == (401, "*")
    # A plain OPTIONS (no preflight) is a request like any other: not this endpoint's method.
    assert (await AsyncClient().options("/v1/realtime/calls")).status_code == 405


def _headers_the_sdk_sends() -> list[str]:
    """The names of the headers the `openai` SDK sends with `realtime.calls.create` that a
    browser's preflight asks about (its JavaScript twin sends the same `X-Stainless-*` ones)."""
    seen: list[str] = []

    def answer(request):
        seen.extend(request.headers.keys())
        location = {"Location": "/v1/realtime/calls/rtc_1"}
        return httpx2.Response(201, content=b"v=0", headers=location)

    transport = httpx2.MockTransport(answer)
    http = httpx2.Client(transport=transport)
    sdk = openai.OpenAI(base_url="http://x.invalid/v1", api_key="k", http_client=http)
    sdk.realtime.calls.create(sdp=OFFER)
    # What a browser sets itself (or is safelisted) is never asked about in a preflight.
    own = {"accept", "accept-encoding", "connection", "content-length", "host", "user-agent"}
    return [name for name in seen if name.lower() not in own]


async def test_a_preflight_allows_the_headers_the_openai_sdk_sends():
    """A browser app placing its call with the `openai` SDK: a preflight refused any of the
    SDK's headers would stop the browser from sending the offer at all."""
    asked = _headers_the_sdk_sends()
    names = {h.lower() for h in asked}
    assert {"authorization", "content-type", "x-stainless-retry-count"} <= names
    preflight = await AsyncClient().options(
        "/v1/realtime/calls",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": ",".join(asked),
        },
    )
    assert preflight.status_code == 204
    allowed = {h.strip().lower() for h in preflight["Access-Control-Allow-Headers"].split(",")}
    assert names <= allowed, preflight["Access-Control-Allow-Headers"]
    assert "Access-Control-Allow-Credentials" not in preflight


def _operator(name: str, *, steers: bool):
    user = get_user_model().objects.create_user(name, password=f"pw-{name}-123")
    if steers:
        user.user_permissions.add(Permission.objects.get(codename="steer_session"))
    return user


async def test_a_logged_in_operator_calls_with_the_csrf_token_only(stand_in, transactional_db):
    await sync_to_async(_operator)("olga", steers=True)
    client = AsyncClient(enforce_csrf_checks=True)
    await sync_to_async(client.force_login)(await get_user_model().objects.aget(username="olga"))
    page = await client.get("/console/call/")
    assert page.status_code == 200
    token = page.content.decode().split('name="csrfmiddlewaretoken" value="')[1].split('"')[0]
    without = await client.post("/v1/realtime/calls", OFFER, content_type="application/sdp")
    assert without.status_code == 403 and without.json()["error"]["code"] == "csrf_failed"
    with_token = await client.post("/v1/realtime/calls", OFFER, content_type="application/sdp", headers={"X-CSRFToken": token})
    assert with_token.status_code == 201
    assert stand_in.attached[0]["connected_by"] == "olga"
    assert UPSTREAM_KEY not in page.content.decode()


async def test_an_operator_who_may_not_steer_cannot_place_calls_from_the_console(stand_in, transactional_db):
    await sync_to_async(_operator)("wanda", steers=False)
    client = AsyncClient(enforce_csrf_checks=True)
    await sync_to_async(client.force_login)(await get_user_model().objects.aget(username="wanda"))
    page = await client.get("/console/call/")
    text = page.content.decode()
    assert page.status_code == 403 and "You cannot place calls" in text
    assert "data-call>" not in text and "call.js" not in text and "Call the agent</a>" not in text
    token = text.split('name="csrfmiddlewaretoken" value="')[1].split('"')[0]
    refused = await client.post("/v1/realtime/calls", OFFER, content_type="application/sdp", headers={"X-CSRFToken": token})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "permission_denied"
    assert stand_in.requests == []


async def test_a_call_that_cannot_be_attached_is_still_answered_and_logged(stand_in, api_token, monkeypatch, caplog):
    from apps.calls import attach as attaching

    async def broken(**arguments):
        raise RuntimeError("the sideband could not start")

    monkeypatch.setattr(views, "attach", attaching.attach)
    monkeypatch.setattr(attaching, "attach_call", broken)
    response = await post_sdp(api_token)
    assert response.status_code == 201 and response["Location"] == "/v1/realtime/calls/rtc_test123"
    assert any("call.attach_failed" in r.getMessage() and "rtc_test123" in r.getMessage() for r in caplog.records)


async def test_a_full_server_refuses_the_call_before_placing_it(stand_in, api_token, settings):
    settings.OC_MAX_SESSIONS = 1
    held = housekeeping().holders
    held[uuid.uuid4()] = object()  # one session already held: the process is full
    try:
        response = await post_sdp(api_token)
    finally:
        held.clear()
    assert response.status_code == 503 and response["Retry-After"] == "30"
    body = response.json()["error"]
    assert body["code"] == "too_many_sessions" and body["type"] == "server_error"
    assert "maximum of 1 live sessions" in body["message"]
    assert stand_in.requests == [] and stand_in.attached == []
    assert (await post_sdp(api_token)).status_code == 201


async def test_a_stopping_server_refuses_the_call_saying_it_is_restarting(stand_in, api_token):
    keeper = housekeeping()
    keeper.stopping = True  # told to stop: the load balancer may still send it an offer
    try:
        response = await post_sdp(api_token)
    finally:
        keeper.stopping = False
    assert response.status_code == 503
    body = response.json()["error"]
    assert body["code"] == "server_restarting" and body["type"] == "server_error"
    assert body["message"] == "This server is restarting; connect again."
    assert stand_in.requests == [] and stand_in.attached == []


def _openai_error(response, status: int) -> dict:
    """The service's error shape, as JSON: what the `openai` SDK reads."""
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"] == "application/json", response["Content-Type"]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    return error


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/realtime/calls/rtc_x"),
        ("POST", "/v1/realtime/calls/rtc_x/hangup"),
        ("GET", "/v1/nope"),
    ],
)
async def test_an_unknown_v1_url_is_a_404_in_the_services_shape(method, path):
    response = await AsyncClient().generic(method, path)
    error = _openai_error(response, 404)
    assert error["type"] == "invalid_request_error" and f"{method} {path}" in error["message"]


async def test_the_sdks_call_control_at_an_unknown_v1_url_is_a_404_not_a_csrf_refusal(api_token):
    """`client.realtime.calls.hangup(...)` pointed at the console posts with a bearer token and
    no CSRF cookie, as every API client does: the answer is the service's 404 in JSON, not
    Django's HTML "CSRF verification failed" page (403)."""
    response = await AsyncClient(enforce_csrf_checks=True).post(
        "/v1/realtime/calls/rtc_x/hangup", {}, content_type="application/json",
        headers={"Authorization": f"Bearer {api_token}"},
    )
    error = _openai_error(response, 404)
    assert "POST /v1/realtime/calls/rtc_x/hangup" in error["message"], error


async def test_a_v1_body_over_djangos_limit_is_refused_in_the_services_shape(api_token, settings):
    big = b'{"session": {"instructions": "' + b"x" * settings.DATA_UPLOAD_MAX_MEMORY_SIZE + b'"}}'
    response = await AsyncClient().post(
        "/v1/realtime/client_secrets", big, content_type="application/json",
        headers={"Authorization": f"Bearer {api_token}"},
    )
    error = _openai_error(response, 413)
    assert str(settings.DATA_UPLOAD_MAX_MEMORY_SIZE) in error["message"], error


@pytest.mark.parametrize(
    "path", ["/v1/realtime/client_secrets", "/v1/realtime/calls", "/v1/webhooks/openai"]
)
async def test_a_v1_body_over_djangos_limit_is_a_413_in_json_with_debug_on_too(
    api_token, settings, path
):
    """`make run` serves with DEBUG on, where Django answers a body over the limit with its
    HTML debug page (400), not handler400: the endpoints answer it themselves."""
    settings.DEBUG = True
    settings.OPENAI_WEBHOOK_SECRET = "whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTEyMzQ="
    big = b"v=0\r\n" + b"a=x\r\n" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE // 5)
    response = await AsyncClient(raise_request_exception=False).post(
        path, big, content_type="application/sdp", headers={"Authorization": f"Bearer {api_token}"},
    )
    error = _openai_error(response, 413)
    assert error["code"] == "request_too_large", error


async def test_a_failure_under_v1_is_a_500_in_the_services_shape(api_token, monkeypatch):
    def broken(**kwargs):
        raise RuntimeError("the secret detail of a bug")

    monkeypatch.setattr(views, "_mint", broken)
    response = await AsyncClient(raise_request_exception=False).post(
        "/v1/realtime/client_secrets", {}, content_type="application/json",
        headers={"Authorization": f"Bearer {api_token}"},
    )
    error = _openai_error(response, 500)
    assert error["type"] == "server_error" and "secret detail" not in error["message"]


async def test_outside_api_and_v1_django_pages_stay_pages():
    response = await AsyncClient().get("/console/no-such-page/")
    assert response.status_code == 404 and response["Content-Type"].startswith("text/html")


# ---- the per-token rate limit, shared with the REST hook (OC_API_RATE, OC_API_BURST)


@pytest.fixture
def burst_of(settings, monkeypatch):
    """Buckets of their own for the test, refilling too slowly to matter: `OC_API_BURST` = n."""
    monkeypatch.setattr(tokens, "rate_limits", tokens.TokenBuckets())

    def set_burst(n: int) -> None:
        settings.OC_API_RATE, settings.OC_API_BURST = 0.01, n

    return set_burst


def _rate_limited(response) -> dict:
    """The service's 429 for too many requests, with the limit, its settings and Retry-After."""
    error = _openai_error(response, 429)
    assert (error["type"], error["code"], error["param"]) == (
        "requests",
        "rate_limit_exceeded",
        None,
    )
    assert "0.01 requests a second (OC_API_RATE)" in error["message"], error["message"]
    assert "OC_API_BURST" in error["message"], error["message"]
    assert int(response["Retry-After"]) >= 1
    return error


@pytest.fixture
def two_tokens(make_token) -> tuple[str, str]:
    """Two tokens: one to go over its rate, and another."""
    return make_token(), make_token()


async def _mint_answer(token: str):
    return await AsyncClient().post(
        "/v1/realtime/client_secrets", {}, content_type="application/json",
        headers={"Authorization": f"Bearer {token}"},
    )


async def test_minting_over_the_tokens_rate_is_the_services_429(burst_of, two_tokens):
    burst_of(2)
    token, other = two_tokens
    answers = [await _mint_answer(token) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    _rate_limited(answers[-1])
    assert (await _mint_answer(other)).status_code == 200, "another token has its own bucket"
    assert await ClientSecret.objects.acount() == 3, "the refused request minted nothing"


async def test_calls_over_the_tokens_rate_are_refused_before_the_upstream(
    stand_in, burst_of, two_tokens
):
    burst_of(2)
    token, other = two_tokens
    answers = [await post_sdp(token) for _ in range(3)]
    assert [a.status_code for a in answers] == [201, 201, 429]
    _rate_limited(answers[-1])
    assert len(stand_in.requests) == 2, "the refused offer was not sent upstream"
    assert (await post_sdp(other)).status_code == 201, "another token has its own bucket"


async def test_a_minted_keys_calls_count_against_the_token_that_minted_it(
    stand_in, burst_of, two_tokens
):
    burst_of(3)
    token, other = two_tokens
    key = await mint(token)  # the token's first request
    assert [(await post_sdp(key)).status_code for _ in range(2)] == [201, 201]
    refused = await post_sdp(key)
    _rate_limited(refused)
    _rate_limited(await _mint_answer(token))  # the key's calls emptied the token's bucket
    assert (await post_sdp(await mint(other))).status_code == 201


async def test_a_key_that_names_no_token_counts_against_itself(stand_in, burst_of, api_token):
    """Keys minted before keys named their token: their calls take from their own bucket."""
    burst_of(2)
    key = await mint(api_token)
    await ClientSecret.objects.aupdate(token=None)
    assert [(await post_sdp(key)).status_code for _ in range(2)] == [201, 201]
    _rate_limited(await post_sdp(key))
    assert (await _mint_answer(api_token)).status_code == 200, "the token has one request left"


async def test_the_rate_is_shared_with_the_rest_hook(stand_in, burst_of, api_token):
    """One bucket a token: its REST calls and its /v1/ calls take from the same one."""
    burst_of(2)
    headers = {"Authorization": f"Bearer {api_token}"}
    rest = [await AsyncClient().get("/api/v1/sessions", headers=headers) for _ in range(2)]
    assert [a.status_code for a in rest] == [200, 200]
    _rate_limited(await _mint_answer(api_token))
    _rate_limited(await post_sdp(api_token))
    again = await AsyncClient().get("/api/v1/sessions", headers=headers)
    assert again.status_code == 429 and again.json()["error"]["code"] == "rate_limited"
    assert stand_in.requests == []
