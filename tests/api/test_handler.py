"""The REST hook is served by Django's own ASGI handler and middleware: its security and
common middleware apply to it as to every page."""

from __future__ import annotations

import httpx
import pytest

from operator_console.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


async def test_api_answers_carry_the_security_middlewares_headers(rest):
    answer = await rest.get("/sessions")
    assert answer.status_code == 200
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Referrer-Policy"] == "same-origin"
    assert answer.headers["Cross-Origin-Opener-Policy"] == "same-origin"


async def test_a_host_outside_allowed_hosts_is_refused(rest_token):
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=application), base_url="http://evil.example/api/v1"
    ) as client:
        answer = await client.get("/sessions", headers={"Authorization": f"Bearer {rest_token}"})
    assert answer.status_code == 400, "CommonMiddleware's host check runs for the REST hook"
    assert answer.json()["error"]["code"] == "bad_request", "in the REST hook's error shape"


async def test_an_unknown_path_under_api_outside_v1_is_a_json_404(rest_token):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://127.0.0.1") as client:
        answer = await client.get("/api/v2/sessions")
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "not_found"


async def test_pages_outside_the_api_keep_djangos_own_error_pages(rest_token):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://127.0.0.1") as client:
        answer = await client.get("/no-such-page")
    assert answer.status_code == 404
    assert answer.headers["content-type"].startswith("text/html")
