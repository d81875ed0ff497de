"""The REST hook's ASGI handler and middleware (operator_console/asgi.py, api_middleware.py):
Django's security and common middleware still apply, and a REST call makes no trip through
asgiref's shared thread."""

from __future__ import annotations

import httpx
import pytest
from asgiref.sync import SyncToAsync

from operator_console.asgi import ApiHandler, application

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


async def test_a_request_hook_that_answers_still_gets_the_response_hooks(settings):
    # A request hook that answers (SecurityMiddleware's HTTPS redirect) is followed by the
    # response hooks of the middleware that ran, as in Django's own chain.
    settings.SECURE_SSL_REDIRECT = True
    handler = ApiHandler()  # its middleware reads the settings as it is made
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=handler), base_url="http://127.0.0.1/api/v1"
    ) as client:
        answer = await client.get("/sessions")
    assert answer.status_code == 301
    assert answer.headers["Location"] == "https://127.0.0.1/api/v1/sessions"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"


async def test_a_rest_call_makes_no_trip_through_the_shared_thread(rest, monkeypatch):
    shared: list[str] = []
    original = SyncToAsync.__call__

    async def spy(self, *args, **kwargs):
        if self._thread_sensitive:
            shared.append(getattr(self.func, "__qualname__", repr(self.func)))
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "__call__", spy)
    answer = await rest.get("/sessions")
    assert answer.status_code == 200
    assert (await rest.get("/sessions/nope")).status_code == 404
    assert shared == [], f"thread-sensitive sync_to_async calls per REST call: {shared}"
