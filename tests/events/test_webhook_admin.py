"""Webhook endpoints in the admin: what the form takes is something the worker can send to."""

from __future__ import annotations

import pytest

from apps.events.admin import WebhookEndpointForm


@pytest.mark.parametrize("url", ["ftp://example.com/hook", "ftps://example.com/hook"])
def test_an_endpoint_url_the_worker_cannot_post_to_is_refused(url):
    form = WebhookEndpointForm(data={"url": url, "event_types": "[]", "active": "on"})
    assert not form.is_valid(), "an ftp URL would fail every attempt for a day"
    assert "http" in str(form.errors["url"])


def test_an_http_or_https_url_is_taken():
    for url in ("http://127.0.0.1:8080/hook", "https://hooks.example.com/oc"):
        form = WebhookEndpointForm(data={"url": url, "event_types": "[]", "active": "on"})
        assert form.is_valid(), form.errors
