"""operator_console/daphne_compat.py: the reason phrases Twisted lacks (the WebSocket fixes are
tested through the relay, tests/sessions/)."""

from __future__ import annotations

from twisted.web.http import RESPONSES

from operator_console import daphne_compat


def test_twisted_knows_429_and_422_and_keeps_its_own_phrases():
    own = dict(RESPONSES)
    daphne_compat.add_reason_phrases()
    assert RESPONSES[429] == b"Too Many Requests"
    assert RESPONSES[422] == b"Unprocessable Entity"
    assert all(RESPONSES[code] == phrase for code, phrase in own.items()), "an entry of Twisted's changed"
    assert RESPONSES[504] == b"Gateway Time-out", "Twisted's own phrase, not Python's"
