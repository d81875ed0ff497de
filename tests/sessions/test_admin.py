"""Admin: history inline and read-only; staff only."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from apps.sessions.models import ApiToken, LiveSession, ResponseRequest
from apps.sessions.tokens import api_token_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def history():
    now = timezone.now()
    session = LiveSession.objects.create(
        id=uuid.uuid4(), upstream_id="sess_admin1", model="gpt-realtime", status="live"
    )
    ResponseRequest.objects.create(
        id="req_admin1", session=session, origin="api", status="completed",
        instructions="Offer the refund.", metadata={"ticket": "T-7"},
        created_at=now, sent_at=now + timedelta(milliseconds=5),
        started_at=now + timedelta(milliseconds=25), finished_at=now + timedelta(seconds=1),
    )
    return session


@pytest.fixture
def staff_client(client):
    user = get_user_model().objects.create_user("boss", password="pw", is_staff=True, is_superuser=True)
    client.force_login(user)
    return client


def test_staff_sees_a_sessions_history_inline(staff_client, history):
    page = staff_client.get(f"/admin/oc_sessions/livesession/{history.pk}/change/")
    assert page.status_code == 200
    assert b"req_admin1" in page.content and b"Offer the refund." in page.content


def test_history_is_searchable_filterable_and_shows_the_timeline(staff_client, history):
    found = staff_client.get("/admin/oc_sessions/responserequest/?q=T-7&status__exact=completed&origin__exact=api")
    assert found.status_code == 200 and b"req_admin1" in found.content
    missing = staff_client.get("/admin/oc_sessions/responserequest/?q=no-such-text")
    assert b"req_admin1" not in missing.content
    detail = staff_client.get("/admin/oc_sessions/responserequest/req_admin1/change/")
    assert b"5 ms" in detail.content and b"20 ms" in detail.content, "queue wait and latency shown"


def test_history_is_read_only(staff_client, history):
    response = staff_client.post(
        "/admin/oc_sessions/responserequest/req_admin1/change/", {"status": "failed"}
    )
    assert response.status_code == 403
    assert ResponseRequest.objects.get(id="req_admin1").status == "completed"
    assert staff_client.get("/admin/oc_sessions/responserequest/req_admin1/delete/").status_code == 403


def test_non_staff_user_is_refused(client, history):
    user = get_user_model().objects.create_user("agent", password="pw")
    client.force_login(user)
    response = client.get(f"/admin/oc_sessions/livesession/{history.pk}/change/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_tokens_are_revocable_from_the_admin(staff_client):
    token, _ = api_token_create(name="script")
    response = staff_client.post(
        "/admin/oc_sessions/apitoken/", {"action": "revoke", "_selected_action": [token.pk]}
    )
    assert response.status_code == 302
    assert ApiToken.objects.get(pk=token.pk).revoked_at is not None
