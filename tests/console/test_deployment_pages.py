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


@pytest.mark.parametrize(
    ("secure_cookies", "says", "not_says"),
    [
        (True, "DJANGO_SECURE_COOKIES", "allow cookies for this site"),
        (False, "allow cookies for this site", "DJANGO_SECURE_COOKIES"),
    ],
    ids=["https-only-cookies", "plain-cookies"],
)
def test_a_form_sent_over_plain_http_without_the_cookie_says_why(secure_cookies, says, not_says):
    # A browser keeps no `Secure` cookie from a plain-HTTP page (but on localhost): the form
    # comes back without the CSRF cookie. With HTTPS-only cookies (DJANGO_SECURE_COOKIES, the
    # default with DEBUG off) that is the deployment's doing, not the browser's settings.
    client = Client(enforce_csrf_checks=True)
    form = {"username": "u", "password": "p"}
    with override_settings(DEBUG=False, CSRF_COOKIE_SECURE=secure_cookies):
        refused = client.post("/accounts/login/", form, HTTP_ORIGIN="http://testserver")
    assert refused.status_code == 403
    text = refused.content.decode()
    assert says in text and not_says not in text


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


@override_settings(DEBUG=False)
@pytest.mark.parametrize("path", ["/api/v1/sessions", "/v1/realtime/calls"])
def test_the_api_asked_for_at_a_host_outside_allowed_hosts_answers_json(path):
    # A script's client reads the error as it reads every other one (the fuzz of the REST hook
    # runs with DEBUG on, where Django shows its debug page instead, and so sends no Host).
    answer = Client(HTTP_HOST="console.example.com").get(path)
    assert answer.status_code == 400
    assert answer["Content-Type"].startswith("application/json")
    assert answer.json()["error"]["code"] == "bad_request"
