"""Input the fuzz (tests/api/test_fuzz.py) found trouble with, each answered as documented."""

from __future__ import annotations

import pytest

from apps.sessions.history import writer as history
from apps.sessions.models import ResponseRequest

pytestmark = pytest.mark.django_db(transaction=True)


def _paths(session_id: str, request_id: str) -> list[tuple[str, str]]:
    return [
        ("GET", f"/sessions/{session_id}"),
        ("GET", f"/sessions/{session_id}/responses"),
        ("POST", f"/sessions/{session_id}/responses"),
        ("POST", f"/sessions/{session_id}/notes"),
        ("POST", f"/sessions/{session_id}/interrupt"),
        ("GET", f"/responses/{request_id}"),
        ("DELETE", f"/responses/{request_id}"),
    ]


@pytest.mark.parametrize("awkward", ["a%2Fb", "%2F", "a%00b"])
async def test_an_id_with_a_slash_or_a_nul_is_a_404_with_the_error_body(rest, awkward):
    """A '/' splits the path, which then matches no route: it was Django's HTML 404 page. A NUL
    is refused by PostgreSQL in a query: it was a 500 there (SQLite finds nothing)."""
    for method, path in [*_paths(awkward, awkward), ("GET", "/nope"), ("GET", "/sessions/")]:
        body = {"text": "x"} if path.endswith("/notes") else {} if method == "POST" else None
        response = await rest.request(method, path, json=body)
        assert response.status_code == 404, (method, path, response.text)
        assert response.headers["content-type"] == "application/json", (method, path)
        assert set(response.json()["error"]) >= {"code", "message"}, (method, path)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("responses", {"instructions": "a\x00b"}, "instructions"),
        ("responses", {"metadata": {"k\x00": "v"}}, "metadata"),
        ("responses", {"metadata": {"k": "v\x00"}}, "metadata"),
        ("responses", '{"metadata": {"k\\udfff": "v"}}', "metadata"),
        ("responses", '{"metadata": {"k": "v\\ud800"}}', "metadata"),
        ("notes", {"text": "a\x00b"}, "text"),
    ],
)
async def test_text_with_a_nul_or_a_lone_surrogate_is_422_and_the_session_lives_on(
    caller, rest, simulator, path, body, field
):
    """A lone surrogate in metadata was accepted (202), then could not be encoded when sent
    upstream, which ended the caller's session; a NUL was a 500 on PostgreSQL."""
    if isinstance(body, str):  # JSON escapes that make a lone surrogate
        response = await rest.post(
            f"/sessions/{caller.session_id}/{path}",
            content=body.encode(),
            headers={"Content-Type": "application/json"},
        )
    else:
        response = await rest.post(f"/sessions/{caller.session_id}/{path}", json=body)
    assert response.status_code == 422, response.text
    assert list(response.json()["error"]["fields"]) == [field]
    assert not await ResponseRequest.objects.filter(session__upstream_id=caller.session_id).aexists()

    ok = await rest.post(f"/sessions/{caller.session_id}/responses", json={"metadata": {"k": "v"}})
    assert ok.status_code == 202, ok.text
    await caller.until("response.done")
    await caller.settled()  # the session still answers through its upstream
    await history.flush()
    session = (await rest.get(f"/sessions/{caller.session_id}")).json()
    assert session["status"] == "live"
