"""What `/ws/console/` answers to messages it cannot use, as a hostile or buggy page sends them:
an `error` with a message, and the socket goes on (never 1011 and a traceback)."""

from __future__ import annotations

import json

import pytest
from channels.testing import WebsocketCommunicator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operator_console.asgi import application
from tests.console.test_console_consumer import HOST, ORIGIN, _cookie

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def cookie(transactional_db) -> bytes:
    return _cookie("mallory")


async def _console(cookie: bytes) -> WebsocketCommunicator:
    headers = [HOST, ORIGIN, (b"cookie", cookie)]
    communicator = WebsocketCommunicator(application, "/ws/console/", headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    return communicator


async def _still_answers(communicator: WebsocketCommunicator) -> None:
    await communicator.send_json_to({"type": "ping?"})
    answer = await communicator.receive_json_from(timeout=5)
    while answer["type"] == "sessions":  # a dashboard's page may be sent again meanwhile
        answer = await communicator.receive_json_from(timeout=5)
    assert answer == {"type": "error", "message": "Unknown message type 'ping?'."}


@pytest.mark.parametrize(
    ("frame", "said"),
    [
        ({"text": "hello"}, "not JSON"),
        ({"text": ""}, "not JSON"),
        ({"text": "[" * 100_000 + "]" * 100_000}, "nested more than"),
        ({"bytes": b'{"type": "watch.sessions"}'}, "binary frame"),
    ],
    ids=["not-json", "empty", "deep", "binary"],
)
async def test_a_frame_that_is_no_json_text_is_answered_and_the_socket_goes_on(cookie, frame, said):
    communicator = await _console(cookie)
    await communicator.send_input({"type": "websocket.receive", **frame})
    answer = await communicator.receive_json_from(timeout=5)
    assert answer["type"] == "error" and said in answer["message"], answer
    await _still_answers(communicator)
    await communicator.disconnect()


@pytest.mark.parametrize(
    "session_id", ["\udfff", "sess_\ud800", "a\x00b"], ids=["lone", "in-id", "nul"]
)
async def test_a_session_id_no_row_can_have_is_not_found(cookie, session_id):
    communicator = await _console(cookie)
    await communicator.send_json_to({"type": "watch.session", "session_id": session_id})
    answer = await communicator.receive_json_from(timeout=5)
    assert answer["type"] == "error" and answer["message"].startswith("No session with id"), answer
    await _still_answers(communicator)
    await communicator.disconnect()


@pytest.mark.parametrize(
    ("message", "given"),
    [
        ({"type": "watch.session", "session_id": 5}, "integer"),
        ({"type": "watch.session", "session_id": ["sess_1"]}, "array"),
        ({"type": "watch.session", "session_id": None}, "null"),
        ({"type": "watch.session"}, "nothing"),
    ],
    ids=["number", "array", "null", "missing"],
)
async def test_a_watch_without_a_string_id_says_what_is_wrong(cookie, message, given):
    communicator = await _console(cookie)
    await communicator.send_json_to(message)
    answer = await communicator.receive_json_from(timeout=5)
    expected = f"watch.session needs a session_id string, not {given}."
    assert answer == {"type": "error", "message": expected}, "not 'Unknown message type'"
    await _still_answers(communicator)
    await communicator.disconnect()


@pytest.mark.parametrize(
    ("page", "read"),
    [(2, "2"), ("2", "2"), (-3, None), (True, None), (2.5, None), ("x", None), ([2], None)],
)
async def test_the_dashboard_reads_its_page_as_text_or_a_number(cookie, page, read):
    """The page sends the number the server answered when it moved it to the last page there
    is (dashboard.js): a number is a page as its text is; anything else is page 1."""
    communicator = await _console(cookie)
    await communicator.send_json_to({"type": "watch.sessions", "query": {"page": page}})
    answer = await communicator.receive_json_from(timeout=5)
    assert answer["type"] == "sessions" and answer["view"].get("page") == read, answer["view"]
    await communicator.disconnect()


# Text as JSON can spell it: lone surrogates too (which `st.text` never draws), NULs, markup.
_SOME_TEXT = st.lists(
    st.characters() | st.sampled_from(["\x00", "\ud800", "\udfff", "<", "'"]), max_size=40
).map("".join)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _SOME_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_SOME_TEXT, inner, max_size=4),
    max_leaves=12,
)
_QUERY = st.dictionaries(
    st.sampled_from(["q", "state", "model", "kind", "origin", "sort", "page"]) | _SOME_TEXT,
    _JSON | st.sampled_from(["-started", "cost", "--x", "live", "relay", "console", "0", "-1"]),
    max_size=7,
)
_MESSAGES = st.one_of(
    st.fixed_dictionaries({"type": st.just("watch.sessions")}, optional={"query": _QUERY | _JSON}),
    st.fixed_dictionaries(
        {"type": st.just("watch.session")}, optional={"session_id": _SOME_TEXT | _JSON}
    ),
    st.dictionaries(st.just("type") | _SOME_TEXT, _JSON, max_size=4),
    _JSON,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(message=_MESSAGES)
async def test_every_message_is_answered_and_the_socket_goes_on(cookie, message):
    """Whatever JSON a page sends, its first answer is a message of the server's kinds (an
    `error` saying why, for what it cannot use), and the socket answers the next one."""
    communicator = await _console(cookie)
    await communicator.send_to(text_data=json.dumps(message))
    answer = await communicator.receive_json_from(timeout=5)
    assert answer["type"] in ("error", "sessions"), answer
    if answer["type"] == "error":
        assert isinstance(answer["message"], str) and answer["message"]
    await _still_answers(communicator)
    await communicator.disconnect()


@pytest.mark.parametrize(
    ("message", "said"),
    [
        ([{"type": "watch.sessions"}], "Messages are JSON objects with a type, not array."),
        (None, "Messages are JSON objects with a type, not null."),
        ({"type": "x" * 1_000_000}, f"Unknown message type '{'x' * 79}…."),
        (
            {"type": "watch.session", "session_id": "s" * 1_000_000},
            f"No session with id '{'s' * 80}…'.",
        ),
    ],
    ids=["array", "null", "huge-type", "huge-id"],
)
async def test_an_error_says_what_came_briefly(cookie, message, said):
    communicator = await _console(cookie)
    await communicator.send_json_to(message)
    answer = await communicator.receive_json_from(timeout=5)
    assert answer == {"type": "error", "message": said}
    await communicator.disconnect()


@pytest.mark.django_db
def test_an_id_longer_than_its_column_is_not_asked_of_the_database():
    """A page may send a megabyte of session id: none can be that long, and with DEBUG on
    every query is kept in the connection's log (Daphne grew by hundreds of MB)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from apps.sessions import selectors

    with CaptureQueriesContext(connection) as queries:
        assert selectors.session_row(session_id="s" * (selectors.MAX_ID_CHARS + 1)) is None
        assert selectors.request_get(request_id="r" * 1_000_000) is None
    assert len(queries) == 0, [query["sql"][:80] for query in queries]
    with CaptureQueriesContext(connection) as queries:
        assert selectors.session_row(session_id="s" * selectors.MAX_ID_CHARS) is None
    assert len(queries) == 1  # as long as an id may be: looked up
