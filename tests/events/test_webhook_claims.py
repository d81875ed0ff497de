"""Which deliveries the webhook worker claims: an endpoint turned off in the admin is sent
nothing, its retries included, until it is turned on again; then it gets what came meanwhile,
however long it was off, within the retry window; what waited past it fails. The retries of
a delivery over its day: 5 s, 10 s, 20 s …, never more than an hour apart."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from apps.events.models import Event, WebhookDelivery, WebhookEndpoint
from apps.events.retention import prune_events
from apps.events.webhooks import claim_due, expire_deliveries, fan_out, retry_delay

pytestmark = pytest.mark.django_db


def test_an_endpoint_turned_off_gets_no_retry_until_it_is_on_again():
    endpoint = WebhookEndpoint.objects.create(url="http://127.0.0.1:9/hook", cursor=0)
    WebhookDelivery.objects.create(
        endpoint=endpoint, event_id=7, event_type="request.status", payload="{}", attempts=1
    )
    endpoint.active = False
    endpoint.save(update_fields=["active"])

    assert claim_due() == [], "a delivery due to an endpoint that is off is not sent"
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == WebhookDelivery.Status.PENDING, "it waits, neither sent nor failed"

    endpoint.active = True
    endpoint.save(update_fields=["active"])
    assert [d.event_id for d in claim_due()] == [7], "turned on again, the endpoint gets it"


def test_an_endpoint_off_for_longer_than_the_log_keeps_events_gets_them_when_on_again(settings):
    # The log may hold events another test's server committed to this worker's database;
    # from this first write on, this test's transaction keeps other writers out.
    Event.objects.all().delete()
    endpoint = WebhookEndpoint.objects.create(url="http://127.0.0.1:9/hook", cursor=0, active=False)
    event = Event.objects.create(type="session.opened", session_key=uuid.uuid4(), payload="{}")
    fan_out()  # the worker's rounds go on while the endpoint is off
    later = datetime.now(UTC) + timedelta(seconds=settings.OC_EVENTS_RETENTION + 60)
    assert prune_events(now=later) == 1, "the event log no longer holds the event"

    endpoint.active = True
    endpoint.save(update_fields=["active"])
    fan_out()
    assert [d.event_id for d in claim_due()] == [event.id], "the event committed while off comes"


def test_what_an_endpoint_turned_off_kept_waiting_past_the_retry_window_fails(settings):
    endpoint = WebhookEndpoint.objects.create(url="http://127.0.0.1:9/hook", cursor=0, active=False)
    now = datetime.now(UTC)
    for event_id, age in ((1, settings.OC_WEBHOOK_RETRY_FOR + 60), (2, 60)):
        WebhookDelivery.objects.create(
            endpoint=endpoint, event_id=event_id, event_type="request.status", payload="{}",
            created_at=now - timedelta(seconds=age),
        )  # fmt: skip
    assert expire_deliveries(now=now) == 1
    statuses = dict(WebhookDelivery.objects.values_list("event_id", "status"))
    assert statuses == {1: "failed", 2: "pending"}, "only what outlived its window fails"


def test_retries_double_from_five_seconds_and_are_never_more_than_an_hour_apart(settings):
    assert (settings.OC_WEBHOOK_RETRY_BASE, settings.OC_WEBHOOK_RETRY_MAX) == (5, 3600)
    delays, elapsed = [], 0.0
    while elapsed <= settings.OC_WEBHOOK_RETRY_FOR:
        delays.append(retry_delay(len(delays) + 1))
        elapsed += delays[-1]
    for delay, nominal in zip(delays, (5, 10, 20, 40), strict=False):
        assert nominal * 0.9 <= delay <= nominal * 1.1, (delay, nominal)
    assert max(delays) <= 3600, "at most an hour apart, jitter included"
    assert 30 <= len(delays) <= 36, f"{len(delays)} attempts in a day"
