"""Security headers and login throttling (issue 14, item 9), through Django's test client."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.test import Client, override_settings

from apps.sessions.models import LiveSession

pytestmark = pytest.mark.django_db

PAGES = [
    "/accounts/login/", "/console/", "/console/settings/", "/console/sessions/sess_headers/",
    "/console/call/", "/admin/", "/api/v1/docs",
]


@pytest.fixture
def staff() -> Client:
    user = get_user_model().objects.create_user("root", password="pw-for-tests", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize("path", PAGES)
def test_every_page_has_a_policy_and_no_inline_script(staff, path):
    LiveSession.objects.create(upstream_id="sess_headers", model="gpt-realtime", status="live")
    answer = staff.get(path)
    assert answer.status_code == 200, path
    policy = answer["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    html = answer.content.decode()
    inline = [tag for tag in re.findall(r"<script\b[^>]*>", html) if "src=" not in tag and "application/json" not in tag]
    assert inline == [], f"inline scripts on {path}: {inline}"
    assert not re.search(r"\son[a-z]+=\"", html), f"inline event handler on {path}"


def test_hsts_only_for_https_when_debug_is_off(settings, staff):
    settings.SECURE_HSTS_SECONDS = 31536000  # as settings.py sets it with DJANGO_DEBUG=false
    assert "Strict-Transport-Security" not in staff.get("/console/")
    secure = staff.get("/console/", secure=True)
    assert secure["Strict-Transport-Security"].startswith("max-age=31536000")


def test_the_production_settings_turn_hsts_on():
    import subprocess
    import sys

    code = "from django.conf import settings; print(settings.SECURE_HSTS_SECONDS)"
    env = {"DJANGO_DEBUG": "false", "DJANGO_SECRET_KEY": "x", "DJANGO_ALLOWED_HOSTS": "example.com",
           "DJANGO_SETTINGS_MODULE": "operator_console.settings", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", f"import django; django.setup(); {code}"], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert int(out.strip()) >= 31536000


@override_settings(AXES_FAILURE_LIMIT=3)
def test_failed_logins_lock_the_user_and_address_out_but_not_tokens(make_token):
    get_user_model().objects.create_user("op", password="right-password")
    client = Client()
    for _ in range(3):
        client.post("/accounts/login/", {"username": "op", "password": "wrong"})
    locked = client.post("/accounts/login/", {"username": "op", "password": "right-password"})
    assert locked.status_code == 429 and b"Too many failed logins" in locked.content
    assert "_auth_user_id" not in client.session
    token = make_token(name="script")
    api = Client().get("/api/v1/sessions", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert api.status_code == 200, "API tokens are not throttled by failed logins"
