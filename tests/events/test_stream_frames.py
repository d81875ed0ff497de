"""An event's frame on the stream: one `id:` line and one `data:` line, whichever way a client
splits lines. httpx's `iter_lines` (the README's script) splits like `str.splitlines`, also at
U+2028, U+2029 and U+0085, which JSON leaves unescaped in strings."""

from __future__ import annotations

import json

import pytest

from apps.events.recorder import dumps
from apps.events.stream import frame


@pytest.mark.parametrize("text", ["line\u2028separator", "para\u2029graph", "next\x85line", "plain"])
def test_a_frame_is_two_lines_for_every_line_splitter(text):
    payload = dumps({"type": "transcript.entry", "entry": {"role": "agent", "text": text}})
    lines = frame(42, payload).decode().splitlines()
    assert lines == ["id: 42", lines[1], ""], "one id line, one data line, the blank line"
    assert json.loads(lines[1].removeprefix("data: "))["entry"]["text"] == text, "the text unchanged"
