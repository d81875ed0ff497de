"""Every answer of /api/v1/ has the error body `{"error": {"code", "message", "fields"?}}`
(CONTRACT section 2, "Errors"), those django-ninja makes outside its handlers included."""

from __future__ import annotations

import logging

import pytest

from apps.sessions import selectors
from apps.sessions.models import ResponseRequest

pytestmark = pytest.mark.django_db(transaction=True)


def _error(answer) -> dict:
    assert answer.headers["content-type"] == "application/json", answer.headers
    error = answer.json()["error"]
    assert set(error) >= {"code", "message"}, error
    return error


@pytest.mark.parametrize("path", ["responses", "notes"])
async def test_a_deeply_nested_body_is_400_invalid_json_not_a_500(caller, rest, path):
    # Under the 64 KiB limit, which is checked first (100 000 '[' are a 413), and far deeper
    # than the decoder can recurse.
    for body in (b"[" * 60_000, b'{"metadata": ' * 5_000):
        answer = await rest.post(
            f"/sessions/{caller.session_id}/{path}", content=body, headers={"Content-Type": "application/json"}
        )
        assert answer.status_code == 400, answer.text
        error = _error(answer)
        assert error["code"] == "invalid_json" and "nested too deeply" in error["message"], error
    assert not await ResponseRequest.objects.filter(session__upstream_id=caller.session_id).aexists()
    assert (await rest.post(f"/sessions/{caller.session_id}/responses", json={})).status_code == 202


async def test_a_body_over_djangos_own_limit_is_413_too(rest, settings):
    big = b'{"instructions": "' + b"x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1) + b'"}'
    answer = await rest.post("/sessions/sess_any/responses", content=big)
    assert answer.status_code == 413, answer.text
    assert _error(answer)["code"] == "body_too_large"


@pytest.mark.parametrize("path", ["interrupt", "hangup"])
async def test_a_body_over_64_kib_is_413_where_the_endpoint_reads_no_body_too(caller, rest, path):
    big = b'{"note": "' + b"x" * 64 * 1024 + b'"}'
    answer = await rest.post(f"/sessions/{caller.session_id}/{path}", content=big)
    assert answer.status_code == 413, answer.text
    assert _error(answer)["code"] == "body_too_large"
    # At the limit it is read as any other: this session is relayed, so a hang-up is a 409.
    at_limit = await rest.post(f"/sessions/{caller.session_id}/{path}", content=big[: 64 * 1024])
    assert at_limit.status_code == {"interrupt": 202, "hangup": 409}[path], at_limit.text


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/sessions", "GET, HEAD"),
        ("DELETE", "/sessions/sess_x", "GET, HEAD, PATCH"),
        ("PUT", "/sessions/sess_x/responses", "GET, HEAD, POST"),
        ("GET", "/sessions/sess_x/notes", "POST"),
        ("DELETE", "/sessions/sess_x/interrupt", "POST"),
        ("POST", "/responses/req_x", "DELETE, GET, HEAD"),
        ("OPTIONS", "/sessions", "GET, HEAD"),
        ("POST", "/openapi.json", "GET, HEAD"),
        ("DELETE", "/docs", "GET, HEAD"),
    ],
)
async def test_a_method_not_allowed_on_an_existing_path_is_405_with_the_error_body(rest, method, path, allowed):
    answer = await rest.request(method, path)
    assert answer.status_code == 405, answer.text
    error = _error(answer)
    assert error["code"] == "method_not_allowed" and method in error["message"]
    assert sorted(answer.headers["Allow"].split(", ")) == allowed.split(", ")


@pytest.mark.parametrize("method", ["GET", "OPTIONS"])
async def test_the_api_root_and_unknown_paths_are_404_with_the_error_body(rest, method):
    for path in ("/", "/nope/deeper"):
        answer = await rest.request(method, path)
        assert answer.status_code == 404, (path, answer.text)
        assert _error(answer)["code"] == "not_found"


async def test_an_unhandled_exception_is_a_500_with_the_error_body_and_its_traceback_logged(
    rest, monkeypatch, caplog
):
    def broken(**kwargs):
        raise RuntimeError("the secret detail of a bug")

    monkeypatch.setattr(selectors, "session_list", broken)
    with caplog.at_level(logging.ERROR, logger="apps.api.api"):
        answer = await rest.get("/sessions")
    assert answer.status_code == 500, answer.text
    error = _error(answer)
    assert error["code"] == "internal_error"
    assert "secret detail" not in answer.text, "the failure's details stay in the log"
    [record] = [r for r in caplog.records if r.name == "apps.api.api"]
    assert record.exc_info and "the secret detail of a bug" in str(record.exc_info[1])
    assert "GET /api/v1/sessions" in record.getMessage()
