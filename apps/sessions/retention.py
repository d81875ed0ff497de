"""Old history out: sessions that started more than `days` days ago and have ended, with
everything recorded of them (their requests, tool approvals, call actions and recording).
Live sessions are never touched. `manage.py delete_old_sessions` runs it; the setting
`OC_HISTORY_RETENTION_DAYS` says how many days (0, the default: keep everything)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from apps.sessions.models import LiveSession

log = logging.getLogger(__name__)

# Sessions deleted per transaction: one long delete would hold SQLite's only writer, and the
# live sessions' history writer waits for it.
BATCH = 500


def sessions_delete_old(*, days: int, now: datetime | None = None) -> int:
    """Delete the ended sessions that started more than `days` days ago; how many."""
    cutoff = (now or timezone.now()) - timedelta(days=days)
    old = LiveSession.objects.filter(
        status__in=[LiveSession.Status.ENDED, LiveSession.Status.FAILED], started_at__lt=cutoff
    ).order_by()
    deleted = 0
    while batch := list(old.values_list("id", "recording")[:BATCH]):
        with transaction.atomic():
            LiveSession.objects.filter(id__in=[key for key, _ in batch]).delete()
        # The files after the rows: a file that cannot be deleted is left behind (and logged),
        # never a session pointing at a file that is gone.
        for _, name in batch:
            if name:
                try:
                    default_storage.delete(name)
                except OSError as exc:
                    log.warning("could not delete the recording %s: %r", name, exc)
        deleted += len(batch)
    return deleted
