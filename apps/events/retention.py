"""Upkeep of the event log and the delivery log, run by every process's housekeeping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Max

from apps.events.models import Event, EventLogHorizon
from apps.events.webhooks import expire_deliveries, prune_deliveries, worker
from apps.sessions.db import db_async, serialised_write

DELIVERY_LOG_DAYS = 7  # finished deliveries stay in the admin's log this long


def prune_events(*, now: datetime | None = None) -> int:
    """Delete events older than OC_EVENTS_RETENTION; remember the newest id deleted."""
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(seconds=settings.OC_EVENTS_RETENTION)
    through = Event.objects.filter(created_at__lt=cutoff).aggregate(newest=Max("id"))["newest"]
    if through is None:
        return 0
    with serialised_write(), transaction.atomic():
        horizon, _ = EventLogHorizon.objects.select_for_update().get_or_create(pk=1)
        if through > horizon.pruned_through:
            horizon.pruned_through = through
            horizon.save(update_fields=["pruned_through"])
        deleted, _ = Event.objects.filter(id__lte=through).delete()
    return deleted


def upkeep() -> None:
    now = datetime.now(UTC)
    prune_events(now=now)
    expire_deliveries(now=now)
    prune_deliveries(older_than=now - timedelta(days=DELIVERY_LOG_DAYS))


async def housekeeping_chore() -> None:
    """Every process: make sure its webhook worker runs (where OC_WEBHOOK_SEND), and prune."""
    if settings.OC_WEBHOOK_SEND:
        worker().start()
    await db_async(upkeep)()
