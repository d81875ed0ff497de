"""The shared Daphne is quiet before a test's database is emptied: a session the test left
ending is written first, not as a stray row in the next test of the worker (tests/conftest.py,
`_daphne_quiet_before_flush`). The two tests run in this order, in one worker (one module is
one xdist group)."""

from __future__ import annotations

import json
import threading

import pytest
from websockets.sync.client import connect

from apps.events.models import Event
from apps.sessions.models import LiveSession, ResponseRequest
from tests.support.realtime import user_text

pytestmark = pytest.mark.django_db(transaction=True)

# How long after its test's end the first test's caller takes its last turn and hangs up:
# longer than emptying the database takes, so that without the wait its rows would be
# written after that.
LAST_TURN_AFTER = 1.0


def _last_turn(socket) -> None:
    """Say something (a final transcript entry: an event of the live session), hang up."""
    try:
        socket.send(json.dumps({"type": "conversation.item.create", "item": user_text("Bye.")}))
        while not json.loads(socket.recv(timeout=10))["type"].startswith("conversation.item"):
            pass
    finally:
        socket.close()


def test_a_caller_takes_a_last_turn_a_moment_after_its_test_ended(daphne, api_token):
    socket = connect(
        f"{daphne.ws_base}/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {api_token}"},
        open_timeout=10,
    )
    created = json.loads(socket.recv(timeout=10))
    assert created["type"] == "session.created", created
    assert daphne.health()["sessions"] == 1, "the session is live as the test ends"
    last_turn = threading.Timer(LAST_TURN_AFTER, _last_turn, [socket])
    last_turn.daemon = True
    last_turn.start()


def test_the_next_test_finds_none_of_its_rows(daphne):
    daphne.wait_quiet()  # whatever the last session wrote is in the table now
    assert list(Event.objects.values_list("type", flat=True)) == []
    assert LiveSession.objects.count() == 0
    assert ResponseRequest.objects.count() == 0
