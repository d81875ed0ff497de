"""Tool approvals and rate limits on the session page without JavaScript, through Django's test
client: what the server renders, and the Approve / Deny form's answers. Sessions and approvals
are rows made directly; deciding on a live session (through its actor) is tested in
tests/api/test_approvals.py and in Chromium (test_approvals_browser.py)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from apps.sessions.models import LiveSession, ToolApproval
from tests.support.html import labelled_names

pytestmark = pytest.mark.django_db(transaction=True)

LIMITS = [
    {"name": "requests", "limit": 100, "remaining": 5, "reset_seconds": 30, "reset_at": "2026-01-01T10:00:30+00:00"},
    {"name": "tokens", "limit": 1000, "remaining": 900, "reset_seconds": 30, "reset_at": "2026-01-01T10:00:30+00:00"},
]


def _client(name: str, *, steer: bool) -> Client:
    user = get_user_model().objects.create_user(name, password="pw-for-tests")
    if steer:
        user.user_permissions.add(Permission.objects.get(codename="steer_session"))
    client = Client()
    client.force_login(user)
    return client


def _session(upstream_id: str, status: str) -> LiveSession:
    return LiveSession.objects.create(
        id=uuid.uuid4(), upstream_id=upstream_id, model="gpt-realtime", status=status, rate_limits=LIMITS
    )


def _approval(session: LiveSession, approval_id: str, **fields) -> ToolApproval:
    return ToolApproval.objects.create(
        session=session, approval_id=approval_id, name="lookup", server_label="crm", arguments='{"order": 42}', **fields
    )


def test_a_pending_request_renders_its_form_and_the_rate_limits_warn_when_low():
    session = _session("sess_tools1", "live")
    _approval(session, "mcpr_a")
    page = _client("alice", steer=True).get(reverse("console:session", args=["sess_tools1"])).content.decode()
    action = reverse("console:approval", args=["sess_tools1", "mcpr_a"])
    assert f'action="{action}"' in page
    assert 'value="approve"' in page and 'value="deny"' in page
    assert "crm ·</span> lookup" in page
    assert "Running low: requests under 10 % of the limit." in page
    assert "5 of 100 left" in page and "900 of 1000 left" in page
    meters = re.findall(r"<meter[^>]*>", page)
    assert len(meters) == 2 and all('aria-label="' in m for m in meters), f"meters named: {meters}"


def test_each_pending_requests_approve_and_deny_are_named_with_its_tool():
    # Two requests waiting were four buttons read "Approve", "Deny", "Approve", "Deny".
    session = _session("sess_tools2", "live")
    _approval(session, "mcpr_a")
    ToolApproval.objects.create(
        session=session, approval_id="mcpr_b", name="refund", arguments="{}"
    )
    page = _client("alice", steer=True).get(reverse("console:session", args=["sess_tools2"]))
    assert labelled_names(page.content.decode(), "button") == [
        "Approve crm · lookup", "Deny crm · lookup", "Approve refund", "Deny refund",
    ]


def test_an_operator_who_may_not_steer_sees_the_request_but_no_form_and_is_refused():
    session = _session("sess_tools2", "live")
    _approval(session, "mcpr_b")
    watcher = _client("watcher", steer=False)
    page = watcher.get(reverse("console:session", args=["sess_tools2"])).content.decode()
    assert "lookup" in page and 'value="approve"' not in page
    answer = watcher.post(reverse("console:approval", args=["sess_tools2", "mcpr_b"]), {"decision": "approve"})
    assert answer.status_code == 403


def test_a_decided_request_says_who_and_a_late_decision_is_told_without_javascript():
    session = _session("sess_tools3", "ended")
    _approval(
        session, "mcpr_c", status="approved", decided_by="bob", reason="checked",
        decided_at=datetime(2026, 1, 1, 10, 0, tzinfo=UTC),
    )
    alice = _client("alice", steer=True)
    page = alice.get(reverse("console:session", args=["sess_tools3"])).content.decode()
    assert "Approved by <strong>bob</strong>" in page and "“checked”" in page
    assert 'value="approve"' not in page
    answer = alice.post(reverse("console:approval", args=["sess_tools3", "mcpr_c"]), {"decision": "deny"}, follow=True)
    assert answer.redirect_chain[-1][0].startswith(reverse("console:session", args=["sess_tools3"]))
    assert "was already approved by bob" in answer.content.decode()
    as_json = alice.post(
        reverse("console:approval", args=["sess_tools3", "mcpr_c"]), {"decision": "deny"},
        headers={"Accept": "application/json"},
    )
    assert as_json.status_code == 409
    assert as_json.json()["approval"]["decided_by"] == "bob"


def test_a_form_without_a_decision_is_refused_and_says_why():
    session = _session("sess_tools4", "live")
    _approval(session, "mcpr_d")
    alice = _client("alice", steer=True)
    answer = alice.post(
        reverse("console:approval", args=["sess_tools4", "mcpr_d"]), {"reason": "x"}, headers={"Accept": "application/json"}
    )
    assert answer.status_code == 422 and answer.json()["errors"]["form"] == "Choose Approve or Deny."
    assert ToolApproval.objects.get(approval_id="mcpr_d").status == "pending"


def test_an_expired_request_on_an_ended_session_reads_denied_automatically():
    session = _session("sess_tools5", "ended")
    _approval(
        session, "mcpr_e", status="expired", reason="No operator decided within 30 s.",
        decided_at=datetime(2026, 1, 1, 10, 0, tzinfo=UTC),
    )
    page = _client("alice", steer=True).get(reverse("console:session", args=["sess_tools5"])).content.decode()
    assert "Denied automatically" in page and "No operator decided within 30 s." in page


def test_a_reason_the_rest_hook_refuses_is_refused_from_the_form_too(settings):
    # A NUL cannot be stored in PostgreSQL's text; the REST hook answers 422 for it.
    settings.OC_ACTOR_REPLY_TIMEOUT = 0.5  # without the check, the post waits for an actor
    session = _session("sess_tools6", "live")
    _approval(session, "mcpr_f")
    answer = _client("alice", steer=True).post(
        reverse("console:approval", args=["sess_tools6", "mcpr_f"]),
        {"decision": "deny", "reason": "bad\x00reason"},
        headers={"Accept": "application/json"},
    )
    assert answer.status_code == 400
    assert answer.json()["errors"]["form"].startswith("reason contains a NUL character")
    assert ToolApproval.objects.get(approval_id="mcpr_f").status == "pending"


def test_a_late_decision_on_a_request_expired_by_the_sessions_end_says_so():
    session = _session("sess_tools7", "ended")
    _approval(
        session, "mcpr_g", status="expired", reason="The session ended before anyone decided.",
        decided_at=datetime(2026, 1, 1, 10, 0, tzinfo=UTC),
    )
    answer = _client("alice", steer=True).post(
        reverse("console:approval", args=["sess_tools7", "mcpr_g"]), {"decision": "approve"},
        headers={"Accept": "application/json"},
    )
    assert answer.status_code == 409
    assert answer.json()["errors"]["form"] == (
        "Approval request 'mcpr_g' already expired: The session ended before anyone decided."
    )
