"""Which deliveries the webhook worker claims: an endpoint turned off in the admin is sent
nothing, its retries included, until it is turned on again."""

from __future__ import annotations

import pytest

from apps.events.models import WebhookDelivery, WebhookEndpoint
from apps.events.webhooks import claim_due

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
