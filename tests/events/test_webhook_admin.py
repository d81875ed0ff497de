"""Webhook endpoints in the admin: what the form takes is something the worker can send to; an
endpoint is deleted with its delivery log."""

from __future__ import annotations

import pytest

from apps.events.admin import WebhookEndpointForm
from apps.events.models import WebhookDelivery, WebhookEndpoint


@pytest.mark.parametrize("url", ["ftp://example.com/hook", "ftps://example.com/hook"])
def test_an_endpoint_url_the_worker_cannot_post_to_is_refused(url):
    form = WebhookEndpointForm(data={"url": url, "event_types": "[]", "active": "on"})
    assert not form.is_valid(), "an ftp URL would fail every attempt for a day"
    assert "http" in str(form.errors["url"])


def test_an_http_or_https_url_is_taken():
    for url in ("http://127.0.0.1:8080/hook", "https://hooks.example.com/oc"):
        form = WebhookEndpointForm(data={"url": url, "event_types": "[]", "active": "on"})
        assert form.is_valid(), form.errors


@pytest.mark.django_db
def test_an_endpoint_with_deliveries_can_be_deleted_with_its_log(admin_client):
    endpoint = WebhookEndpoint.objects.create(url="http://127.0.0.1:9/hook", cursor=0)
    WebhookDelivery.objects.bulk_create(
        WebhookDelivery(endpoint=endpoint, event_id=i, event_type="request.status", payload="{}")
        for i in range(3)
    )
    page = admin_client.get(f"/admin/oc_events/webhookendpoint/{endpoint.pk}/delete/")
    assert page.status_code == 200
    assert "Cannot delete" not in page.text, "the read-only delivery log does not forbid it"
    assert "3 webhook deliveries" in page.text, "the deliveries that go with it are counted"
    deleted = admin_client.post(
        f"/admin/oc_events/webhookendpoint/{endpoint.pk}/delete/", {"post": "yes"}
    )
    assert deleted.status_code == 302
    assert not WebhookEndpoint.objects.exists() and not WebhookDelivery.objects.exists()


@pytest.mark.django_db
def test_the_delivery_log_lists_its_page_without_reading_every_deliverys_date(admin_client):
    """The log grows with every event for every endpoint: its date hierarchy read the time
    of every delivery to list the months, on every view of the list. The date filter stays."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    endpoint = WebhookEndpoint.objects.create(url="https://hooks.example.com/oc")
    WebhookDelivery.objects.create(
        endpoint=endpoint, event_id=7, event_type="session.live", payload="{}"
    )
    with CaptureQueriesContext(connection) as queries:
        page = admin_client.get("/admin/oc_events/webhookdelivery/")
    assert page.status_code == 200 and b"session.live" in page.content
    assert not [q["sql"] for q in queries if "datetime_trunc" in q["sql"]], "the months were listed"
    assert b"created_at__gte" in page.content, "the date filter is offered"
