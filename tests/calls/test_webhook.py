"""POST /v1/webhooks/openai against a stand-in upstream: what is verified, what is done once,
and which call profile answers a phone call."""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta

import httpx
import pytest
from django.test import AsyncClient
from django.utils import timezone

from apps.calls import deliveries, webhooks
from apps.calls.models import CallProfile, SeenWebhook
from apps.calls.profiles import sip_number
from apps.sessions import upstream_calls
from apps.sessions.housekeeping import housekeeping
from apps.sessions.models import LiveSession
from tests.calls.support import WEBHOOK_SECRET, incoming_call, signed
from tests.conftest import UPSTREAM_KEY

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/v1/webhooks/openai"


@pytest.fixture
def stand_in(settings, monkeypatch):
    settings.OC_UPSTREAM_URL = "ws://upstream.invalid/v1"
    settings.OPENAI_API_KEY = UPSTREAM_KEY
    settings.OPENAI_WEBHOOK_SECRET = WEBHOOK_SECRET
    requests: list[tuple[str, dict, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        requests.append((request.url.path, json.loads(request.read() or b"{}"), request.headers.get("Authorization", "")))
        return httpx.Response(200)

    monkeypatch.setattr(upstream_calls, "client", lambda transport=None: httpx.AsyncClient(transport=httpx.MockTransport(answer)))
    attached: list[dict] = []

    async def record(**arguments):
        attached.append(arguments)
        return True

    monkeypatch.setattr(webhooks, "attach", record)
    # The data migration's default profile (a flush between transactional tests removes it).
    CallProfile.objects.get_or_create(
        is_default=True, defaults={"name": "Default", "instructions": "You are answering a phone call.", "voice": "marin"}
    )
    return {"requests": requests, "attached": attached}


async def deliver(body: bytes, headers: dict[str, str]):
    return await AsyncClient().post(URL, body, content_type="application/json", headers=headers)


async def test_an_incoming_call_is_accepted_with_the_default_profile_and_attached(stand_in):
    response = await deliver(*signed(incoming_call("rtc_a1", to="+15550001111", from_="+15559998888")))
    assert response.status_code == 200 and response.json()["status"] == "accepted"
    default = await CallProfile.objects.aget(is_default=True)
    [(path, config, authorization)] = stand_in["requests"]
    assert path == "/v1/realtime/calls/rtc_a1/accept"
    assert authorization == f"Bearer {UPSTREAM_KEY}"
    assert config == {"type": "realtime", "model": "gpt-realtime", "instructions": default.instructions, "audio": {"output": {"voice": "marin"}}}
    assert stand_in["attached"] == [{
        "call_id": "rtc_a1", "kind": "sip", "model": "gpt-realtime", "connected_by": "sip:+15559998888",
        "caller_number": "+15559998888", "dialled_number": "+15550001111", "label": "Default",
    }]


async def test_the_dialled_number_picks_the_profile_exact_then_longest_prefix(stand_in):
    tools = [{"type": "function", "name": "lookup_order", "parameters": {"type": "object", "properties": {}}}]
    await CallProfile.objects.acreate(name="Sales", dialled_number="+1555*", instructions="Sell.", voice="cedar")
    await CallProfile.objects.acreate(name="Support line", dialled_number="+15552*", instructions="Support.", tools=tools, model="gpt-realtime-mini")
    await CallProfile.objects.acreate(name="CEO", dialled_number="+15552000000", instructions="Be formal.")
    for to, name in [("+15552000000", "CEO"), ("+15552123456", "Support line"), ("+15557777777", "Sales"), ("+4420000000", "Default")]:
        response = await deliver(*signed(incoming_call(f"rtc_{to[1:]}", to=to)))
        assert response.json()["profile"] == name, to
    configs = [config for _, config, _ in stand_in["requests"]]
    assert configs[0]["instructions"] == "Be formal."
    assert configs[1] == {"type": "realtime", "model": "gpt-realtime-mini", "instructions": "Support.", "audio": {"output": {"voice": "marin"}}, "tools": tools}
    assert configs[2]["audio"] == {"output": {"voice": "cedar"}}


async def test_a_number_names_its_profile_with_or_without_its_plus(stand_in, settings):
    # Carriers send E.164 numbers with or without the +: the line is the same.
    settings.OC_SIP_REJECT_UNKNOWN = True
    await CallProfile.objects.acreate(name="CEO", dialled_number="+15552000000", instructions="Be formal.")
    await CallProfile.objects.acreate(name="Sales", dialled_number="+1555*", instructions="Sell.")
    await CallProfile.objects.acreate(name="UK", dialled_number="44*", instructions="Hello.")
    for to, name in [("15552000000", "CEO"), ("15557777777", "Sales"), ("+442071234567", "UK")]:
        response = await deliver(*signed(incoming_call(f"rtc_{to.lstrip('+')}", to=to)))
        assert response.json().get("profile") == name, (to, response.json())


async def test_numbers_too_long_for_the_sessions_record_are_cut_to_fit(stand_in):
    # The caller writes its From: a user part past the column would fail the session's row
    # (PostgreSQL refuses it), leaving an accepted call no operator sees.
    long_number = "+1" + "5" * 300
    response = await deliver(*signed(incoming_call("rtc_long", from_=long_number, to=long_number)))
    assert response.json()["status"] == "accepted"
    [attached] = stand_in["attached"]
    fields = {f.name: getattr(f, "max_length", None) for f in LiveSession._meta.get_fields()}
    for name in ("caller_number", "dialled_number", "connected_by", "label"):
        assert len(attached[name]) <= fields[name], name
    assert attached["caller_number"] == long_number[: fields["caller_number"]]


async def test_an_unknown_number_is_rejected_when_told(stand_in, settings):
    settings.OC_SIP_REJECT_UNKNOWN = True
    await CallProfile.objects.acreate(name="Sales", dialled_number="+15550001111", instructions="Sell.")
    response = await deliver(*signed(incoming_call("rtc_unknown", to="+15553334444")))
    assert response.status_code == 200 and response.json()["status"] == "rejected"
    assert [path for path, _, _ in stand_in["requests"]] == ["/v1/realtime/calls/rtc_unknown/reject"]
    assert stand_in["attached"] == []
    known = await deliver(*signed(incoming_call("rtc_known", to="+15550001111")))
    assert known.json()["status"] == "accepted"


async def test_a_full_server_answers_a_phone_call_busy(stand_in, settings):
    settings.OC_MAX_SESSIONS = 1
    held = housekeeping().holders
    held[uuid.uuid4()] = object()  # one session already held: the process is full
    try:
        response = await deliver(*signed(incoming_call("rtc_busy", to="+15550001111")))
    finally:
        held.clear()
    assert response.status_code == 200
    assert response.json() == {"status": "rejected", "call_id": "rtc_busy", "reason": "too_many_sessions"}
    assert [(path, body) for path, body, _ in stand_in["requests"]] == [("/v1/realtime/calls/rtc_busy/reject", {"status_code": 486})]
    assert stand_in["attached"] == []


@pytest.mark.parametrize(
    "tamper",
    [
        "bad_signature",
        "other_secret",
        "old_timestamp",
        "future_timestamp",
        "no_signature",
        "body_changed",
    ],
)
async def test_a_delivery_that_is_not_genuine_and_recent_does_nothing(stand_in, tamper):
    event = incoming_call("rtc_forged")
    if tamper == "other_secret":
        body, headers = signed(event, secret="whsec_" + "b3RoZXItc2VjcmV0LW9mLTMyLWJ5dGVzLWxvbmc=")
    elif tamper == "old_timestamp":
        body, headers = signed(event, timestamp=int(time.time()) - 301)
    elif tamper == "future_timestamp":
        body, headers = signed(event, timestamp=int(time.time()) + 301)
    else:
        body, headers = signed(event)
    if tamper == "bad_signature":
        headers["webhook-signature"] = "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
    elif tamper == "no_signature":
        del headers["webhook-signature"]
    elif tamper == "body_changed":
        body = body.replace(b"rtc_forged", b"rtc_evil00")
    response = await deliver(body, headers)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_signature"
    assert stand_in["requests"] == [] and stand_in["attached"] == []
    assert not await SeenWebhook.objects.aexists()


async def test_without_a_secret_every_webhook_is_refused(stand_in, settings):
    settings.OPENAI_WEBHOOK_SECRET = ""
    response = await deliver(*signed(incoming_call("rtc_x")))
    assert response.status_code == 400 and "OPENAI_WEBHOOK_SECRET" in response.json()["error"]["message"]
    assert stand_in["requests"] == []


async def test_a_repeated_delivery_is_answered_200_and_not_acted_on_twice(stand_in):
    body, headers = signed(incoming_call("rtc_once"), webhook_id="wh_repeat_1")
    first = await deliver(body, headers)
    again = await deliver(body, headers)
    assert first.json()["status"] == "accepted"
    assert again.status_code == 200 and again.json()["status"] == "already_handled"
    assert len(stand_in["requests"]) == 1 and len(stand_in["attached"]) == 1


async def test_other_event_types_are_ignored(stand_in):
    event = {"object": "event", "id": "evt_1", "type": "response.completed", "created_at": int(time.time()), "data": {"id": "resp_1"}}
    response = await deliver(*signed(event))
    assert response.status_code == 200 and response.json()["status"] == "ignored"
    assert stand_in["requests"] == []


async def test_an_upstream_failing_to_accept_leaves_the_delivery_to_be_retried(stand_in, monkeypatch):
    def fail(request):
        return httpx.Response(503, json={"error": {"message": "busy"}})

    monkeypatch.setattr(upstream_calls, "client", lambda transport=None: httpx.AsyncClient(transport=httpx.MockTransport(fail)))
    body, headers = signed(incoming_call("rtc_retry"), webhook_id="wh_retry")
    assert (await deliver(body, headers)).status_code == 502
    assert not await SeenWebhook.objects.filter(webhook_id="wh_retry").aexists()


async def test_a_call_whose_accept_is_refused_is_declined_not_left_ringing(stand_in, monkeypatch):
    """The upstream refuses the accept (4xx: say, a profile's configuration it will not
    take): retrying would be refused again, so the call is rejected at once."""
    requests = stand_in["requests"]

    def refuse_accept(request):
        requests.append((request.url.path, json.loads(request.read() or b"{}"), ""))
        if request.url.path.endswith("/accept"):
            return httpx.Response(400, json={"error": {"message": "Unknown parameter: 'session.x'."}})
        return httpx.Response(200)

    refusing = httpx.MockTransport(refuse_accept)
    monkeypatch.setattr(
        upstream_calls, "client", lambda transport=None: httpx.AsyncClient(transport=refusing)
    )
    body, headers = signed(incoming_call("rtc_refused"), webhook_id="wh_refused")
    response = await deliver(body, headers)
    assert response.status_code == 200
    assert response.json() == {"status": "accept_failed", "call_id": "rtc_refused", "upstream_status": 400}
    assert [path for path, _, _ in requests] == [
        "/v1/realtime/calls/rtc_refused/accept",
        "/v1/realtime/calls/rtc_refused/reject",
    ]
    assert stand_in["attached"] == []


@pytest.mark.parametrize("busy", [False, True])
async def test_an_upstream_failing_to_reject_leaves_the_delivery_to_be_retried(
    stand_in, settings, monkeypatch, busy
):
    """A rejection is an answer too: if the upstream fails to take it (5xx), the phone would
    ring on unanswered, so the delivery is answered 502 and not recorded, to be retried."""
    settings.OC_SIP_REJECT_UNKNOWN = not busy
    settings.OC_MAX_SESSIONS = 1

    def fail(request):
        return httpx.Response(503, json={"error": {"message": "busy"}})

    failing = httpx.MockTransport(fail)
    monkeypatch.setattr(
        upstream_calls, "client", lambda transport=None: httpx.AsyncClient(transport=failing)
    )
    held = housekeeping().holders
    if busy:
        held[uuid.uuid4()] = object()  # the process is full: the call is rejected busy
    try:
        call = incoming_call("rtc_no", to="+15553334444")
        body, headers = signed(call, webhook_id="wh_reject_retry")
        response = await deliver(body, headers)
    finally:
        held.clear()
    assert response.status_code == 502, response.content
    assert not await SeenWebhook.objects.filter(webhook_id="wh_reject_retry").aexists()


INCOMING = '{"type":"realtime.call.incoming","data":%s}'
SIP_HEADERS = "data.sip_headers"


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        (b"[]", "invalid_type", None),
        (b"1", "invalid_type", None),
        (b"null", "invalid_type", None),
        (b'"x"', "invalid_type", None),
        (b"{bad", "invalid_json", None),
        (b"[" * 5000 + b"]" * 5000, "invalid_json", None),  # deeper than json.loads can go
        (b'{"type":5}', "invalid_type", "type"),
        ((INCOMING % "[1]").encode(), "invalid_type", "data"),
        ((INCOMING % '"x"').encode(), "invalid_type", "data"),
        (b'{"type":"realtime.call.incoming"}', "invalid_type", "data"),
        ((INCOMING % "{}").encode(), "invalid_value", "data.call_id"),
        ((INCOMING % '{"call_id":5}').encode(), "invalid_type", "data.call_id"),
        ((INCOMING % '{"call_id":"rtc_1","sip_headers":5}').encode(), "invalid_type", SIP_HEADERS),
        ((INCOMING % '{"call_id":"rtc_\\u0000"}').encode(), "invalid_value", "data.call_id"),
    ],
)
async def test_a_well_signed_but_malformed_delivery_is_a_400_naming_the_problem(
    stand_in, body, code, param
):
    response = await deliver(*signed(body))
    assert response.status_code == 400, response.content[:300]
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == code, error
    assert error["param"] == param, error
    if param:
        assert param in error["message"], error
    assert stand_in["requests"] == [] and stand_in["attached"] == []
    assert not await SeenWebhook.objects.aexists(), "a delivery refused is not recorded as handled"


@pytest.mark.parametrize(("webhook_id", "words"), [("", "empty"), ("w" * 129, "128")])
async def test_an_empty_or_over_long_webhook_id_is_refused_not_cut(stand_in, webhook_id, words):
    response = await deliver(*signed(incoming_call("rtc_id"), webhook_id=webhook_id))
    assert response.status_code == 400, response.content[:300]
    error = response.json()["error"]
    assert error["param"] == "webhook-id" and words in error["message"], error
    assert stand_in["requests"] == [] and not await SeenWebhook.objects.aexists()
    longest = await deliver(*signed(incoming_call("rtc_id"), webhook_id="w" * 128))
    assert longest.json()["status"] == "accepted", "an id of 128 characters is taken whole"


async def test_an_accepted_call_whose_attach_failed_is_attached_by_the_retry_not_accepted_again(
    stand_in, monkeypatch
):
    """The upstream refuses a second accept of a call: the retry only attaches it."""
    calls = []

    async def attach_once_failing(**arguments):
        calls.append(arguments)
        if len(calls) == 1:
            raise RuntimeError("the sideband could not be started")
        return True

    monkeypatch.setattr(webhooks, "attach", attach_once_failing)
    body, headers = signed(incoming_call("rtc_fails"), webhook_id="wh_fails")
    failed = await deliver(body, headers)
    assert failed.status_code == 500 and failed["Content-Type"] == "application/json"
    assert failed.json()["error"]["type"] == "server_error"
    seen = await SeenWebhook.objects.aget(webhook_id="wh_fails")
    assert (seen.stage, seen.claimed_until) == ("accepted", None), "free for the retry"
    retried = await deliver(body, headers)
    assert retried.status_code == 200, "the retry is handled"
    assert retried.json()["status"] == "accepted"
    assert len(calls) == 2
    assert [path for path, _, _ in stand_in["requests"]] == ["/v1/realtime/calls/rtc_fails/accept"]
    again = await deliver(body, headers)
    assert again.json() == {"status": "already_handled", "handled": retried.json()}


async def test_a_repeat_finding_the_delivery_in_hand_past_its_wait_is_answered_200_and_not_acted_on(
    stand_in, monkeypatch
):
    """CONTRACT §7: a repeated webhook-id → 200, nothing done twice."""
    monkeypatch.setattr(deliveries, "REPEAT_WAIT", 0.2)
    held = timezone.now() + timedelta(seconds=60)
    await SeenWebhook.objects.acreate(webhook_id="wh_held", claimed_until=held)
    response = await deliver(*signed(incoming_call("rtc_held"), webhook_id="wh_held"))
    assert response.status_code == 200, response.content
    answer = response.json()
    assert answer["status"] == "in_progress" and "0.2 s" in answer["message"], answer
    assert stand_in["requests"] == [] and stand_in["attached"] == []


@pytest.mark.parametrize(("stage", "upstream"), [("received", ["accept"]), ("accepted", [])])
async def test_a_claim_whose_holder_died_is_taken_over_from_where_it_stopped(
    stand_in, stage, upstream
):
    lapsed = timezone.now() - timedelta(seconds=1)
    await SeenWebhook.objects.acreate(webhook_id="wh_orphan", stage=stage, claimed_until=lapsed)
    response = await deliver(*signed(incoming_call("rtc_orphan"), webhook_id="wh_orphan"))
    assert response.json()["status"] == "accepted", response.content
    assert [path.rsplit("/", 1)[-1] for path, _, _ in stand_in["requests"]] == upstream
    assert len(stand_in["attached"]) == 1


async def test_without_a_default_profile_the_projects_defaults_answer(stand_in):
    await CallProfile.objects.all().adelete()
    response = await deliver(*signed(incoming_call("rtc_bare")))
    assert response.json()["status"] == "accepted"
    assert stand_in["requests"][0][1] == {"type": "realtime", "model": "gpt-realtime", "audio": {"output": {"voice": "marin"}}}


@pytest.mark.parametrize(
    ("header", "number"),
    [
        ("sip:+15551234567@sip.api.openai.com", "+15551234567"),
        ('"Ann" <sip:+1-555-123.4567@host>;tag=abc', "+15551234567"),
        ("<tel:+442071234567>", "+442071234567"),
        ("sips:100@pbx.example.com;transport=tls", "100"),
        ("sip:alice@example.com", "alice"),
        ("", ""),
        # A display name is not the address, whatever it holds.
        ('"Hotel:Front" <sip:+15551234567@host>;tag=1', "+15551234567"),
        ('"sip:+15550000000" <sip:+15551234567@host>', "+15551234567"),
        # An escaped + (RFC 3261 lets a URI's user part escape it) is a +.
        ("<sip:%2B15551234567@host;user=phone>", "+15551234567"),
    ],
)
def test_numbers_are_read_from_sip_and_tel_uris(header, number):
    assert sip_number(header) == number


async def test_compact_from_and_to_headers_name_the_numbers(stand_in):
    await CallProfile.objects.acreate(name="Sales", dialled_number="+15550001111", instructions="Sell.")
    event = incoming_call("rtc_compact")
    event["data"]["sip_headers"] = [
        {"name": "f", "value": "<sip:+15559998888@carrier.example>;tag=9"},
        {"name": "t", "value": "<sip:+15550001111@sip.api.openai.com>"},
    ]
    response = await deliver(*signed(event))
    assert response.json()["profile"] == "Sales"
    [attached] = stand_in["attached"]
    assert (attached["caller_number"], attached["dialled_number"]) == ("+15559998888", "+15550001111")
