"""The session page's call control through Django's test client (no browser): shown for an
attached call only, to operators who may steer; refusals come back as messages."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from apps.sessions.models import CallAction, LiveSession

pytestmark = pytest.mark.django_db(transaction=True)


def _session(upstream_id: str, **fields) -> LiveSession:
    return LiveSession.objects.create(
        id=uuid.uuid4(), upstream_id=upstream_id, model="gpt-realtime", **{"status": "live", **fields}
    )


def _client(name: str, *, steer: bool) -> Client:
    user = get_user_model().objects.create_user(name, password="pw-for-tests")
    if steer:
        user.user_permissions.add(Permission.objects.get(codename="steer_session"))
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize(
    ("fields", "steer", "badge", "buttons"),
    [
        ({"kind": "webrtc", "call_id": "rtc_1"}, True, True, True),
        ({"kind": "sip", "call_id": "rtc_2", "caller_number": "+15559998888"}, True, True, True),
        ({"kind": "webrtc", "call_id": "rtc_3"}, False, False, False),  # may watch, not steer
        ({"kind": "relay"}, True, False, False),
    ],
)
def test_call_control_and_the_badge_show_for_attached_calls_to_steerers_only(fields, steer, badge, buttons):
    session = _session("sess_page", **fields)
    page = _client("alice", steer=steer).get(reverse("console:session", args=[session.upstream_id]))
    text = page.content.decode()
    assert page.status_code == 200
    assert "{#" not in text and "#}" not in text, "a template's comment shown as text on the page"
    assert ("data-caller-sees" in text) is badge
    assert ("data-call-control" in text) is buttons
    if buttons and fields.get("caller_number"):
        assert "+15559998888" in text


@pytest.mark.parametrize(("status", "steer"), [("live", False), ("ended", True), ("ended", False)])
def test_a_phone_calls_page_names_the_call_and_both_numbers_to_everyone_live_or_ended(
    status, steer
):
    """Which call it was (its id, who called, which number) is not a control: a watcher sees it,
    and so does anyone reading the page once the call is over."""
    session = _session(
        "sess_numbers", kind="sip", call_id="rtc_n1", caller_number="+15559998888",
        dialled_number="+15550100", status=status,
    )
    page = _client("carol", steer=steer).get(reverse("console:session", args=[session.upstream_id]))
    text = page.content.decode()
    assert page.status_code == 200
    for shown in ("rtc_n1", "+15559998888", "+15550100"):
        assert shown in text, shown


def test_a_webrtc_call_offers_no_transfer_and_its_transfer_is_refused_with_a_message():
    """The service transfers SIP calls only (its refer is the SIP REFER verb); a phone call's
    page offers it (the refused transfer below)."""
    session = _session("sess_webrtc_refer", kind="webrtc", call_id="rtc_w")
    client = _client("alice", steer=True)
    text = client.get(reverse("console:session", args=[session.upstream_id])).content.decode()
    assert "data-hangup" in text and "data-refer" not in text
    answer = client.post(
        reverse("console:refer", args=[session.upstream_id]), {"target_uri": "tel:+15550002222"}, follow=True
    )
    assert "only phone (SIP) calls can be transferred" in answer.content.decode()
    assert CallAction.objects.count() == 0


def test_a_relayed_sessions_hang_up_is_refused_with_a_message_and_nothing_recorded():
    session = _session("sess_relayed", kind="relay")
    client = _client("alice", steer=True)
    answer = client.post(reverse("console:hangup", args=[session.upstream_id]), follow=True)
    assert "relayed" in answer.content.decode() and "no call to hang up" in answer.content.decode()
    assert CallAction.objects.count() == 0


def test_a_watcher_may_not_hang_up():
    session = _session("sess_call", kind="webrtc", call_id="rtc_9")
    answer = _client("watcher", steer=False).post(reverse("console:hangup", args=[session.upstream_id]))
    assert answer.status_code == 403
    assert CallAction.objects.count() == 0


def test_the_history_shows_each_call_action_with_who_did_it():
    session = _session("sess_hist", kind="sip", call_id="rtc_h", status="ended")
    CallAction.objects.create(session=session, action="refer", target_uri="tel:+15550002222", requested_by="alice", ok=True)
    CallAction.objects.create(session=session, action="hangup", requested_by="token:ops", ok=False, error="HTTP 404: gone")
    text = _client("bob", steer=False).get(reverse("console:session", args=[session.upstream_id])).content.decode()
    assert "transfer to <code>tel:+15550002222</code>" in text and "by alice" in text
    assert "hang-up" in text and "by token:ops" in text and "HTTP 404: gone" in text


def test_a_refused_transfer_comes_back_open_with_the_target_typed_and_the_error_beside_it():
    """Without JavaScript too: the operator mends the address instead of typing it again."""
    session = _session("sess_transfer", kind="sip", call_id="rtc_t")
    client = _client("alice", steer=True)
    refer = reverse("console:refer", args=[session.upstream_id])
    answer = client.post(refer, {"target_uri": "mailto:bob@example.com"})
    text = answer.content.decode()
    assert answer.status_code == 422
    assert '<details class="confirm" data-refer open>' in text
    assert 'value="mailto:bob@example.com"' in text and 'aria-invalid="true"' in text
    assert 'id="err-target_uri" role="alert">' in text and "tel:" in text
    assert CallAction.objects.count() == 0


def test_a_transfer_target_whose_scheme_is_in_capitals_is_taken_and_sent_upstream(relay_settings):
    """`Sip:` is `sip:` (URI schemes are case-insensitive): the form sends it on. The upstream
    no longer knows this call, which is what the operator is then told."""
    session = _session("sess_caps", kind="sip", call_id="rtc_gone")
    answer = _client("alice", steer=True).post(
        reverse("console:refer", args=[session.upstream_id]), {"target_uri": "Sip:Desk@Example.com"}, follow=True
    )
    text = answer.content.decode()
    assert 'id="err-target_uri"' not in text
    assert "its call is over (the upstream no longer knows it" in text, text
