"""HEAD on every GET of /api/v1/ and /metrics (RFC 9110 §9.3.2): the status and headers the
GET answers, no body, as soon as the GET would start answering (an event stream's HEAD does
not stay open); with the same token check and rate as the GET. Where GET is not allowed,
neither is HEAD. (A 405's `Allow` lists HEAD beside GET: tests/api/test_errors.py.)"""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from django.test import AsyncClient

from apps.api.api import api

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = "http://127.0.0.1"  # of the `rest` client, whose paths are under /api/v1
PARAM = re.compile(r"\{(?:\w+:)?(\w+)\}")


def get_paths() -> list[str]:
    """Every path of the REST hook that takes GET (its routes, so a new one is not forgotten),
    the OpenAPI document and the docs page."""
    paths = [
        path
        for path, view in api.default_router.path_operations.items()
        if any("GET" in operation.methods for operation in view.operations)
    ]
    assert "/sessions/{session_id}/events" in paths and "/responses/{request_id}" in paths
    return [*paths, api.openapi_url, api.docs_url]


@pytest.fixture
async def ids(caller, rest) -> dict[str, str]:
    """A live session and a finished request of it, for the routes' parameters."""
    posted = await rest.post(f"/sessions/{caller.session_id}/responses", json={})
    assert posted.status_code == 202, posted.text
    await caller.until("response.done")
    for _ in range(100):  # the history writer stores what the caller has seen a moment later
        if (await rest.get(f"/responses/{posted.json()['id']}")).json()["status"] == "completed":
            break
        await asyncio.sleep(0.02)
    else:  # a row still changing would make a HEAD and its GET differ by chance
        raise AssertionError("the request was not stored completed within 2 s")
    return {"session_id": caller.session_id, "request_id": posted.json()["id"], "rest": "nope"}


async def _head_and_get(rest, url: str, headers: dict[str, str]) -> tuple:
    """(HEAD through the ASGI application over httpx, which, unlike Django's test client,
    strips no body; GET through Django's test client, which does not read a streamed body)."""
    async with asyncio.timeout(5):  # an event stream's HEAD that stayed open would hang here
        head = await rest.head(ORIGIN + url, headers=headers)
    got = await AsyncClient().get(url, headers=headers)
    return head, got


def _same_answer(head, got, url: str) -> None:
    assert head.status_code == got.status_code, (url, head.status_code, got.status_code)
    assert head.content == b"", (url, head.content[:200])
    assert dict(head.headers) == {name.lower(): value for name, value in got.headers.items()}, url


async def test_every_get_answers_head_with_its_status_and_headers_and_no_body(ids, rest):
    seen = set()
    for path in get_paths():
        url = "/api/v1" + PARAM.sub(lambda match: ids[match.group(1)], path)
        head, got = await _head_and_get(rest, url, dict(rest.headers))
        _same_answer(head, got, url)
        seen.add((path, got.status_code))
        if path == api.openapi_url:
            document = json.loads(got.content)
    assert ("/sessions/{session_id}/events", 200) in seen, "a live session's stream"
    assert ("/responses/{request_id}", 200) in seen and ("/{anypath:rest}", 404) in seen
    documented = {method for operations in document["paths"].values() for method in operations}
    assert "get" in documented and "head" not in documented, "HEAD is not a second operation"


@pytest.fixture
def metrics_token(make_token) -> str:
    return make_token(scopes=["metrics:read"], name="prometheus")


async def test_head_takes_the_token_and_the_rate_of_the_get(ids, rest, rest_token, metrics_token, settings):
    for path in get_paths()[:-2]:  # the OpenAPI document and the docs page are public
        url = "/api/v1" + PARAM.sub(lambda match: ids[match.group(1)], path)
        head, got = await _head_and_get(rest, url, {"Authorization": "Bearer oc_unknown"})
        _same_answer(head, got, url)
        assert head.status_code == (404 if "anypath" in path else 401), url
    for token, status in ((metrics_token, 200), (rest_token, 403)):
        head, got = await _head_and_get(rest, "/metrics", {"Authorization": f"Bearer {token}"})
        _same_answer(head, got, "/metrics")
        assert head.status_code == status

    settings.OC_API_RATE, settings.OC_API_BURST = 1.0, 2
    heads = [await rest.head("/sessions") for _ in range(2)]
    assert [head.status_code for head in heads] == [200, 200]
    refused = await rest.get("/sessions")
    assert refused.status_code == 429, "each HEAD took from the token's bucket as a GET does"
    assert (await rest.head("/sessions")).status_code == 429


async def test_head_where_get_is_not_allowed_is_a_405_that_lists_what_is(rest):
    answer = await rest.head("/sessions/sess_x/notes")
    assert (answer.status_code, answer.headers["Allow"], answer.content) == (405, "POST", b"")
