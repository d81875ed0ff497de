"""Webhook endpoints in the admin: what the form takes is something the worker can send to; an
endpoint is deleted with its delivery log; its secret is rolled without refusing a delivery.
A delivery's page lists its attempts, which go with it when the log is pruned."""

from __future__ import annotations

import time
from datetime import timedelta
from html.parser import HTMLParser

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from openai import InvalidWebhookSignatureError, OpenAI

from apps.events.admin import WebhookEndpointForm
from apps.events.models import SECRET_OVERLAP, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from apps.events.webhooks import prune_deliveries, signed_headers


@pytest.mark.parametrize("url", ["ftp://example.com/hook", "ftps://example.com/hook"])
def test_an_endpoint_url_the_worker_cannot_post_to_is_refused(url):
    form = WebhookEndpointForm(data={"url": url, "event_types": "[]", "active": "on"})
    assert not form.is_valid(), "an ftp URL would fail every attempt for a day"
    assert "http" in str(form.errors["url"])


def test_an_http_or_https_url_is_taken():
    for url in ("http://127.0.0.1:8080/hook", "https://hooks.example.com/oc"):
        form = WebhookEndpointForm(data={"url": url, "event_types": "[]", "active": "on"})
        assert form.is_valid(), form.errors


@pytest.mark.parametrize("types", ['["approval.status"]', '["approval.*", "session.ended"]'])
def test_an_endpoint_may_choose_the_approvals(types):
    form = WebhookEndpointForm(
        data={"url": "https://hooks.example.com/oc", "event_types": types, "active": "on"}
    )
    assert form.is_valid(), form.errors
    assert form.instance.wants("approval.status") and not form.instance.wants("request.status")


@pytest.mark.django_db
def test_an_endpoint_with_deliveries_can_be_deleted_with_its_log(admin_client):
    endpoint = WebhookEndpoint.objects.create(url="http://127.0.0.1:9/hook", cursor=0)
    WebhookDelivery.objects.bulk_create(
        WebhookDelivery(endpoint=endpoint, event_id=i, event_type="request.status", payload="{}")
        for i in range(2)
    )
    _delivery_with_attempts(endpoint, 2)
    page = admin_client.get(f"/admin/oc_events/webhookendpoint/{endpoint.pk}/delete/")
    assert page.status_code == 200
    assert "Cannot delete" not in page.text, "the read-only delivery log does not forbid it"
    assert "3 webhook deliveries" in page.text, "the deliveries that go with it are counted"
    assert "3 webhook attempts" in page.text, "and their attempts, which go with them"
    assert list(page.context["model_count"]) == [
        ("webhook endpoints", 1), ("webhook deliveries", 3), ("webhook attempts", 3)
    ]
    deleted = admin_client.post(
        f"/admin/oc_events/webhookendpoint/{endpoint.pk}/delete/", {"post": "yes"}
    )
    assert deleted.status_code == 302
    assert not WebhookEndpoint.objects.exists() and not WebhookDelivery.objects.exists()
    assert not WebhookAttempt.objects.exists()


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


@pytest.mark.django_db
def test_a_rolled_secret_signs_beside_its_successor_for_a_day_then_alone(admin_client):
    """Rolling a secret must not make a receiver refuse deliveries while it moves to the new
    one: for a day each delivery carries both signatures, and either secret verifies it."""
    endpoint = WebhookEndpoint.objects.create(url="https://hooks.example.com/oc", cursor=0)
    old = endpoint.secret
    answer = admin_client.post(
        "/admin/oc_events/webhookendpoint/",
        {"action": "roll_secret", "_selected_action": [endpoint.pk]},
        follow=True,
    )
    assert "New signing secret for 1 endpoint(s)" in answer.text
    endpoint.refresh_from_db()
    assert endpoint.secret != old and endpoint.previous_secret == old
    delivery = WebhookDelivery.objects.create(
        endpoint=endpoint, event_id=7, event_type="session.live", payload='{"type":"session.live"}'
    )
    body = delivery.payload.encode()
    verify = OpenAI(api_key="unused").webhooks.verify_signature  # raises when none matches
    for secret in (old, endpoint.secret):
        headers = signed_headers(delivery, str(int(time.time())), body)
        verify(body, headers, secret=secret)
    page = admin_client.get(f"/admin/oc_events/webhookendpoint/{endpoint.pk}/change/")
    assert "The previous secret signs each delivery too" in page.text

    rolled_at = endpoint.previous_secret_until - SECRET_OVERLAP
    assert abs((rolled_at - timezone.now()).total_seconds()) < 60, "the day starts at the roll"
    endpoint.previous_secret_until = timezone.now()  # the day is over
    endpoint.save()
    delivery.refresh_from_db()
    headers = signed_headers(delivery, str(int(time.time())), body)
    verify(body, headers, secret=endpoint.secret)
    with pytest.raises(InvalidWebhookSignatureError):
        verify(body, headers, secret=old)


def _staff_who_may(client, django_user_model, codename: str) -> None:
    """`client` logged in as staff with this one permission."""
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user("viewer", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename=codename))
    client.force_login(viewer)


@pytest.mark.django_db
def test_an_operator_who_may_only_view_endpoints_cannot_roll_a_secret(client, django_user_model):
    _staff_who_may(client, django_user_model, "view_webhookendpoint")
    endpoint = WebhookEndpoint.objects.create(url="https://hooks.example.com/oc", cursor=0)
    client.post(
        "/admin/oc_events/webhookendpoint/",
        {"action": "roll_secret", "_selected_action": [endpoint.pk]},
    )
    assert WebhookEndpoint.objects.get(pk=endpoint.pk).secret == endpoint.secret


def _delivery_with_attempts(endpoint: WebhookEndpoint, event_id: int, **fields) -> WebhookDelivery:
    delivery = WebhookDelivery.objects.create(
        endpoint=endpoint, event_id=event_id, event_type="request.status", payload="{}", **fields
    )
    start = timezone.now() - timedelta(minutes=5)
    WebhookAttempt.objects.bulk_create(
        WebhookAttempt(
            delivery=delivery,
            number=number,
            started_at=start + timedelta(seconds=10 * number),
            finished_at=start + timedelta(seconds=10 * number, milliseconds=250 * number),
            status_code=status,
            error=error,
        )
        for number, status, error in (
            (1, None, "ConnectError: connection refused"),
            (2, 502, "HTTP 502: bad gateway"),
            (3, 200, ""),
        )
    )
    return delivery


def _delivery_page_for_root(client, django_user_model, *, attempts: int):
    """A delivered delivery's admin page, as a superuser sees it."""
    client.force_login(django_user_model.objects.create_superuser("root", password=None))
    endpoint = WebhookEndpoint.objects.create(url="https://hooks.example.com/oc", cursor=0)
    delivery = _delivery_with_attempts(endpoint, 7, status="delivered", attempts=attempts)
    return client.get(f"/admin/oc_events/webhookdelivery/{delivery.pk}/change/")


@pytest.mark.django_db
def test_a_deliverys_page_lists_every_attempt_newest_first(client, django_user_model):
    page = _delivery_page_for_root(client, django_user_model, attempts=3)
    assert page.status_code == 200
    text = page.text
    shown = [text.index(what) for what in ("750 ms", "HTTP 502: bad gateway", "connection refused")]
    assert shown == sorted(shown), "the newest attempt (3, 750 ms) first, the first one last"
    assert "500 ms" in text and "250 ms" in text, "each attempt's duration"


@pytest.mark.django_db
def test_a_deliverys_payload_reads_indented_not_as_one_line(client, django_user_model):
    """It is sent on one line; shown so, a request's payload was a wall of JSON to read."""
    client.force_login(django_user_model.objects.create_superuser("root", password=None))
    endpoint = WebhookEndpoint.objects.create(url="https://hooks.example.com/oc", cursor=0)
    payload = '{"id":7,"type":"request.status","request":{"status":"completed","output_text":"Hi"}}'
    delivery = WebhookDelivery.objects.create(
        endpoint=endpoint, event_id=7, event_type="request.status", payload=payload
    )
    page = client.get(f"/admin/oc_events/webhookdelivery/{delivery.pk}/change/").text
    assert '<pre>{\n  &quot;id&quot;: 7,\n  &quot;type&quot;: &quot;request.status&quot;,' in page
    assert '\n    &quot;status&quot;: &quot;completed&quot;,' in page, "nested keys indented"


@pytest.mark.django_db
def test_the_delivery_log_says_when_each_delivery_went_out_or_is_tried_next(
    client, django_user_model
):
    client.force_login(django_user_model.objects.create_superuser("root", password=None))
    endpoint = WebhookEndpoint.objects.create(url="https://hooks.example.com/oc", cursor=0)
    for n, status in enumerate(("pending", "delivered", "failed")):
        WebhookDelivery.objects.create(
            endpoint=endpoint, event_id=n, event_type="session.ended", payload="{}",
            status=status, attempts=n + 1, last_status_code=502 if n else None,
            delivered_at=timezone.now() if status == "delivered" else None,
        )  # fmt: skip
    page = client.get("/admin/oc_events/webhookdelivery/").text
    shown_all = ("next try ", "delivered ", "— (given up)", "1 attempt<", "3 attempts, last HTTP 502")
    for shown in shown_all:
        assert shown in page, shown


class _VisibleText(HTMLParser):
    """The text a browser shows of a page: what is outside its tags."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


@pytest.mark.django_db
def test_a_deliverys_page_shows_each_fields_help_as_written(client, django_user_model):
    """The admin does not escape help texts: one with a tag-like word in it (`<id>`) lost it."""
    page = _delivery_page_for_root(client, django_user_model, attempts=1)
    reader = _VisibleText()
    reader.feed(page.text)
    visible = "".join(reader.parts)
    helps = [f.help_text for f in WebhookDelivery._meta.fields if f.help_text]
    assert helps and all(str(help) in visible for help in helps), helps


@pytest.mark.django_db
def test_staff_who_may_view_deliveries_see_their_attempts(client, django_user_model):
    """An attempt is part of its delivery: no permission of its own is needed to see it."""
    _staff_who_may(client, django_user_model, "view_webhookdelivery")
    endpoint = WebhookEndpoint.objects.create(url="https://hooks.example.com/oc", cursor=0)
    delivery = _delivery_with_attempts(endpoint, 7, status="delivered", attempts=3)
    page = client.get(f"/admin/oc_events/webhookdelivery/{delivery.pk}/change/")
    assert page.status_code == 200
    assert "Attempts, newest first" in page.text and "HTTP 502: bad gateway" in page.text


@pytest.mark.django_db
def test_the_attempts_are_pruned_with_their_delivery(settings):
    endpoint = WebhookEndpoint.objects.create(url="https://hooks.example.com/oc", cursor=0)
    old = _delivery_with_attempts(endpoint, 1, status="failed", attempts=3)
    kept = _delivery_with_attempts(endpoint, 2, status="delivered", attempts=3)
    WebhookDelivery.objects.filter(pk=old.pk).update(updated_at=timezone.now() - timedelta(days=8))
    with CaptureQueriesContext(connection) as queries:
        assert prune_deliveries(older_than=timezone.now() - timedelta(days=7)) == 1
    assert not [q for q in queries if "payload" in q["sql"]], "no delivery's body was read"
    assert list(WebhookDelivery.objects.values_list("pk", flat=True)) == [kept.pk]
    assert set(WebhookAttempt.objects.values_list("delivery", flat=True)) == {kept.pk}


@pytest.mark.django_db
def test_the_signing_secret_is_shown_only_to_staff_who_may_change_the_endpoint(
    client, django_user_model
):
    """The secret signs deliveries: staff who may only view endpoints could forge one with it."""
    endpoint = WebhookEndpoint.objects.create(url="https://hooks.example.com/oc", cursor=0)
    page = f"/admin/oc_events/webhookendpoint/{endpoint.pk}/change/"
    _staff_who_may(client, django_user_model, "view_webhookendpoint")
    viewer = client.get(page).content.decode()
    assert endpoint.url in viewer, "the viewer should see the endpoint"
    assert endpoint.secret not in viewer
    assert "Shown to staff who may change webhook endpoints." in viewer

    client.force_login(django_user_model.objects.create_superuser("root", password=None))
    assert endpoint.secret in client.get(page).content.decode()
