"""Old history out (`manage.py delete_old_sessions`): ended sessions past the retention go with
everything recorded of them; live and newer ones stay; with no retention set, nothing goes."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command
from django.utils import timezone

from apps.sessions import retention
from apps.sessions.models import CallAction, LiveSession, ResponseRequest, ToolApproval

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


def _session(upstream_id: str, *, status: str, days_ago: float) -> LiveSession:
    session = LiveSession.objects.create(
        model="gpt-realtime",
        upstream_id=upstream_id,
        status=status,
        started_at=timezone.now() - timedelta(days=days_ago),
    )
    session.recording.name = default_storage.save(f"recordings/{upstream_id}.wav", ContentFile(b"RIFF"))
    session.save(update_fields=["recording"])
    ResponseRequest.objects.create(id=f"req_{upstream_id}", session=session, origin="api", status="completed")
    ToolApproval.objects.create(approval_id=f"mcpr_{upstream_id}", session=session, name="lookup")
    CallAction.objects.create(session=session, action="hangup", requested_by="ann")
    return session


def _delete(*args: str) -> str:
    out = io.StringIO()
    call_command("delete_old_sessions", *args, stdout=out)
    return out.getvalue()


def test_ended_sessions_past_the_retention_go_with_their_history_and_recording(settings, monkeypatch):
    monkeypatch.setattr(retention, "BATCH", 2)  # several batches
    old = [_session(f"sess_old{n}", status=status, days_ago=40) for n, status in enumerate(["ended", "failed", "ended"])]
    live = _session("sess_old_but_live", status="live", days_ago=40)
    recent = _session("sess_recent", status="ended", days_ago=5)
    settings.OC_HISTORY_RETENTION_DAYS = 30

    assert _delete() == "Deleted 3 ended session(s) older than 30 day(s).\n"
    kept = {live.id, recent.id}
    assert set(LiveSession.objects.values_list("id", flat=True)) == kept
    for model in (ResponseRequest, ToolApproval, CallAction):
        assert set(model.objects.values_list("session_id", flat=True)) == kept, model.__name__
    assert not any(default_storage.exists(s.recording.name) for s in old), "their recordings too"
    assert default_storage.exists(live.recording.name) and default_storage.exists(recent.recording.name)


def test_without_a_retention_every_session_is_kept_and_days_must_be_positive():
    _session("sess_ancient", status="ended", days_ago=4000)
    assert _delete() == "Keeping every session (OC_HISTORY_RETENTION_DAYS is 0).\n"
    assert LiveSession.objects.filter(upstream_id="sess_ancient").exists()
    with pytest.raises(CommandError, match="at least 1"):
        _delete("--days", "0")
    assert _delete("--days", "3650") == "Deleted 1 ended session(s) older than 3650 day(s).\n"
