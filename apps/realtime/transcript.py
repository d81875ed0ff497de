"""A live session's transcript, as operators see it. No Django, no I/O.

The actor feeds it upstream events; it keeps the last `limit` entries (caller text and audio
transcripts, the agent's output, operator notes) and, while `recording` is on (someone is
watching), a log of changes since the last `drain()`. Draining at most every ~50 ms turns a
stream of deltas into one update per entry per interval, so a busy session cannot flood a
browser.

Entries are given out as dicts: `{"id", "role": "user"|"agent"|"system", "text", "done", "oob",
"response_id"?, "request_id"?, "interrupted"?, "partial"?}`: an agent's turn names the operator's
request that asked for it (a nudged turn), and says when the caller interrupted it (its response
was cancelled because the caller spoke) or the session's end cut it short (`session_ended`).
Deltas are read only while someone watches. An agent's turn that was already streaming when
watching began has missed its first deltas: it is `partial` (its text lacks its beginning) until
its response ends and gives the whole text (or the session ends first).
A change is `{"id", "role", "append": str}` (text to add) or a whole entry (`"text"` replaces
what the browser has).
A tool call (`tools`) is an entry of role `"tool"` whose `"tool"` holds its kind, name,
arguments, output and duration; its text is the output. They are kept as plain tuples of strings and flags,
smaller than dicts and, holding no containers, untracked by the garbage collector (which only
untracks exact tuples, not named ones): every live session keeps its transcript, watched or not.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

# Upstream events that carry transcript text. The first group arrives once per item and is
# always read; the deltas are read only while someone is watching.
ITEM_TYPES = frozenset(
    {"conversation.item.done", "conversation.item.input_audio_transcription.completed"}
)
DELTA_TYPES = frozenset({"response.output_text.delta", "response.output_audio_transcript.delta"})
# A spoken turn of the caller's until (unless) its transcription comes: the words are not known.
UNTRANSCRIBED = "[spoken; no transcript yet]"
# The same turn once the session is over: no transcription will come any more.
NEVER_TRANSCRIBED = "[spoken; not transcribed]"


def _message_text(item: Mapping[str, Any]) -> str:
    pieces = []
    for part in item.get("content") or ():
        if not isinstance(part, Mapping):
            continue
        for key in ("text", "transcript"):
            value = part.get(key)
            if isinstance(value, str) and value:
                pieces.append(value)
                break
    return "".join(pieces)


def _spoken(item: Mapping[str, Any]) -> bool:
    return any(
        isinstance(part, Mapping) and part.get("type") == "input_audio"
        for part in item.get("content") or ()
    )


# (id, role, text, done, oob, response_id, request_id, interrupted)
Entry = tuple[str, str, str, bool, bool, str | None, str | None, bool]


def _as_dict(entry: Entry) -> dict[str, Any]:
    entry_id, role, text, done, oob, response_id, request_id, interrupted = entry
    given = {"id": entry_id, "role": role, "text": text, "done": done, "oob": oob}
    if response_id is not None:
        given["response_id"] = response_id
    if request_id is not None:
        given["request_id"] = request_id
    if interrupted:
        given["interrupted"] = True
    return given


def _interrupted(response: Mapping[str, Any]) -> bool:
    """The caller spoke over this response and the service cancelled it."""
    details = response.get("status_details")
    return (
        response.get("status") == "cancelled"
        and isinstance(details, Mapping)
        and details.get("reason") == "turn_detected"
    )


class Transcript:
    def __init__(self, limit: int = 100) -> None:
        self.limit = limit
        self.recording = False
        self._partial: set[str] = set()  # streaming agent entries whose beginning was not read
        self._missed: frozenset[str] = frozenset()  # responses streaming as watching began
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._changes: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._finals: list[dict[str, Any]] = []
        self._tools: dict[str, dict[str, Any]] = {}  # a tool entry's id → its details

    # ------------------------------------------------------------------ views

    def snapshot(self) -> list[dict[str, Any]]:
        return [self._given(entry) for entry in self._entries.values()]

    @property
    def has_changes(self) -> bool:
        return bool(self._changes)

    def drain(self) -> list[dict[str, Any]]:
        changes = list(self._changes.values())
        self._changes.clear()
        return changes

    @property
    def has_finals(self) -> bool:
        return bool(self._finals)

    def drain_finals(self) -> list[dict[str, Any]]:
        """The entries that became final (or changed once final) since the last call, for
        every session, watched or not."""
        finals, self._finals = self._finals, []
        return finals

    # ------------------------------------------------------------------ inputs

    def watched(self, watched: bool, *, streaming: tuple[str, ...] = ()) -> None:
        """Someone watches (or nobody does any more). `streaming`: the responses in progress,
        whose deltas so far were not read."""
        if watched and not self.recording:
            for entry_id, entry in self._entries.items():
                if entry[1] == "agent" and not entry[3]:  # deltas went unread: a gap
                    self._entries[entry_id] = (entry_id, "agent", "", *entry[3:])
                    self._partial.add(entry_id)
            self._missed = frozenset(streaming)
        self.recording = watched

    def item_done(self, item: Mapping[str, Any]) -> None:
        """A conversation item is complete (the caller's text, an operator's note)."""
        if item.get("type") != "message" or not isinstance(item.get("id"), str):
            return
        role = item.get("role")
        if role not in ("user", "system"):
            return  # the agent's items are read from response.done, with their response id
        text = _message_text(item)
        if not text and role == "user" and _spoken(item):
            old = self._entries.get(item["id"])
            text = old[2] if old is not None else UNTRANSCRIBED  # a transcript may come first
        if text or role == "system":
            self._set(item["id"], role=role, text=text, done=True)

    def transcription(self, item_id: str, text: str) -> None:
        """The caller's speech, transcribed."""
        self._set(item_id, role="user", text=text, done=True)

    def delta(self, *, item_id: str, response_id: str | None, text: str, oob: bool) -> None:
        entry = self._entries.get(item_id)
        if entry is None:
            entry = self._add((item_id, "agent", "", False, oob, response_id, None, False))
            if response_id in self._missed:
                self._partial.add(item_id)
        whole = entry[2] + text
        self._entries[item_id] = (item_id, entry[1], whole, *entry[3:])
        if not self.recording:
            return
        change = self._changes.get(item_id)
        if change is None:
            change = {
                "id": item_id, "role": "agent", "append": text, "oob": oob,
                "response_id": response_id,
            }
            if item_id in self._partial:
                change["partial"] = True
            self._changes[item_id] = change
        elif "append" in change:
            change["append"] += text
        else:
            change["text"] = whole

    def response_done(
        self, response: Mapping[str, Any], *, oob: bool, request_id: str | None = None
    ) -> None:
        """The agent's output items, complete; `request_id` names the operator's request that
        asked for the response."""
        interrupted = _interrupted(response)
        for item in response.get("output") or ():
            if isinstance(item, Mapping) and item.get("type") == "message" and isinstance(item.get("id"), str):
                self._set(
                    item["id"], role="agent", text=_message_text(item), done=True, oob=oob,
                    response_id=response.get("id"), request_id=request_id, interrupted=interrupted,
                )

    def session_ended(self) -> None:
        """The session is over: an agent's turn still streaming will never end (its response
        was cut by the end, or the upstream went away mid-response). It is final as far as it
        went, marked interrupted as a turn the caller spoke over is, rather than left typing."""
        for entry_id, entry in list(self._entries.items()):
            if entry[1] == "agent" and not entry[3]:
                self._set(entry_id, role="agent", text=entry[2], done=True, interrupted=True)

    def tool(
        self, entry_id: str, *, details: Mapping[str, Any], done: bool, response_id: str | None = None
    ) -> None:
        """A tool call made, or answered: `details` as `tools` gives them."""
        self._tools[entry_id] = dict(details)
        output = details.get("output")
        self._set(
            entry_id, role="tool", text=output if isinstance(output, str) else "", done=done,
            response_id=response_id, changed=True,
        )

    # ------------------------------------------------------------------ internals

    def _given(self, entry: Entry) -> dict[str, Any]:
        given = _as_dict(entry)
        if entry[0] in self._partial:
            given["partial"] = True
        if entry[1] == "tool" and entry[0] in self._tools:
            given["tool"] = dict(self._tools[entry[0]])
        return given

    def _add(self, entry: Entry) -> Entry:
        self._entries[entry[0]] = entry
        while len(self._entries) > self.limit:
            gone, _ = self._entries.popitem(last=False)
            self._tools.pop(gone, None)
            self._partial.discard(gone)
        return entry

    def _set(
        self, entry_id: str, *, role: str, text: str, done: bool, oob: bool | None = None,
        response_id: str | None = None, request_id: str | None = None, interrupted: bool = False,
        changed: bool = False,
    ) -> None:
        old = self._entries.get(entry_id)
        if old is None:
            entry = self._add(
                (entry_id, role, text, done, bool(oob), response_id, request_id, interrupted)
            )
        else:
            entry = (
                entry_id,
                role,
                text,
                done,
                old[4] if oob is None else oob,
                old[5] if response_id is None else response_id,
                old[6] if request_id is None else request_id,
                old[7] or interrupted,
            )
            if entry == old and not changed and entry_id not in self._partial:
                return
            self._entries[entry_id] = entry
        self._partial.discard(entry_id)  # its whole text
        if done:
            self._finals.append(self._given(entry))
        if self.recording:
            self._changes[entry_id] = self._given(entry)
