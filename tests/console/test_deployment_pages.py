"""What a deployment's mistakes look like in the browser with DJANGO_DEBUG=false: the page a
refused form or request shows names the setting to fix, not a cause that is not the one."""

from __future__ import annotations

import pytest
from django.test import Client, override_settings

pytestmark = pytest.mark.django_db


def _login_form(client: Client, **extra) -> str:
    page = client.get("/accounts/login/", **extra)
    assert page.status_code == 200
    return page.cookies["csrftoken"].value


@override_settings(DEBUG=False, CSRF_COOKIE_SECURE=True, SESSION_COOKIE_SECURE=True)
def test_a_login_over_plain_http_with_https_only_cookies_names_django_secure_cookies():
    # A browser keeps no `Secure` cookie from a plain-HTTP page (but on localhost): the form
    # comes back without the CSRF cookie. The page must say why, not "allow cookies".
    client = Client(enforce_csrf_checks=True)
    form = {"username": "u", "password": "p"}
    refused = client.post("/accounts/login/", form, HTTP_ORIGIN="http://testserver")
    assert refused.status_code == 403
    text = refused.content.decode()
    assert "DJANGO_SECURE_COOKIES" in text and "HTTPS" in text
    assert "allow cookies for this site" not in text


@override_settings(DEBUG=False, CSRF_COOKIE_SECURE=False)
def test_a_form_without_the_cookie_over_http_with_plain_cookies_asks_to_allow_cookies():
    client = Client(enforce_csrf_checks=True)
    form = {"username": "u", "password": "p"}
    refused = client.post("/accounts/login/", form, HTTP_ORIGIN="http://testserver")
    assert refused.status_code == 403
    text = refused.content.decode()
    assert "allow cookies for this site" in text and "DJANGO_SECURE_COOKIES" not in text


@override_settings(DEBUG=False, CSRF_COOKIE_SECURE=True)
def test_an_https_page_the_server_saw_as_http_names_proxy_headers():
    # A proxy terminated TLS and Daphne runs without --proxy-headers: the browser's Origin is
    # https://, the request the server sees is http://.
    client = Client(enforce_csrf_checks=True)
    token = _login_form(client)
    refused = client.post(
        "/accounts/login/",
        {"username": "u", "password": "p", "csrfmiddlewaretoken": token},
        HTTP_ORIGIN="https://testserver",
    )
    assert refused.status_code == 403
    text = refused.content.decode()
    assert "--proxy-headers" in text
    assert "loaded before you last signed in" not in text


@override_settings(DEBUG=False)
def test_a_page_asked_for_at_a_host_outside_allowed_hosts_names_the_setting():
    answer = Client(HTTP_HOST="console.example.com").get("/accounts/login/")
    assert answer.status_code == 400
    assert "DJANGO_ALLOWED_HOSTS" in answer.content.decode()
