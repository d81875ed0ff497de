"""The transcript of a session that is over, shown as the live page showed it.

While a session lives, the page builds its transcript from the core's entries (session.js
`entryNode`): in the order the turns came, an agent's turn marked "operators only" when out of
band, "nudged by NAME" when an operator's request asked for it, "interrupted" when the caller
spoke over it or its request was cancelled or left incomplete. Once it is over the page is
rendered by the server from what was kept:

- a recorded call: `LiveSession.recording_transcript`, each entry with `at` (seconds into the
  recording, where its turn began), kept in the order turns became final, so sorted by `at`;
- otherwise the event log's `transcript.entry` events for the session (every final entry, as
  scripts following the session got it; an entry final again replaces itself in place);
- if neither is there (the log pruned), the agent's replies from the requests' output text.

The log keeps events `OC_EVENTS_RETENTION` seconds, so a session that ended (or began) longer
ago than that has lost all (or the start) of its logged transcript: the page then says what is
missing rather than show a conversation in which the caller never spoke.

The marks are worked out here the same way as in session.js, from the entries and the
session's requests, so the same turn reads the same before and after a reload.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from django.conf import settings

from apps.realtime.transcript import NEVER_TRANSCRIBED, UNTRANSCRIBED
from apps.sessions.models import LiveSession, ResponseRequest

OPERATOR_ORIGINS = frozenset({"console", "api"})
INTERRUPTED_STATUSES = frozenset({"cancelled", "incomplete"})


def ended_transcript(
    session: LiveSession, requests: Iterable[ResponseRequest]
) -> tuple[list[dict[str, Any]], str | None]:
    """The entries to render, each `{"id", "role", "classes", "who", "text", "interrupted",
    "tool"}` (`tool` None but for a tool call), and what is missing from them (None: nothing)."""
    requests = list(requests)
    recorded = _recorded(session)
    logged = [] if recorded else _logged(session)
    entries = recorded or logged or _replies(requests)
    gone = None
    if not recorded and not _log_holds_the_start(session):
        kept = f"turns are kept {settings.OC_EVENTS_RETENTION / 60:g} minutes"
        gone = (
            f"The start of this transcript is gone ({kept}): the later turns are shown."
            if logged
            else f"The caller's turns are gone ({kept}): the agent's replies are shown, "
            "from the response history."
        )
    by_id = {r.id: r for r in requests}
    by_response = {r.response_id: r for r in requests if r.response_id}
    return [_shown(entry, by_id, by_response) for entry in entries], gone


def _recorded(session: LiveSession) -> list[dict[str, Any]]:
    entries = [e for e in session.recording_transcript or () if isinstance(e, dict)]
    return sorted(entries, key=lambda e: e.get("at") or 0.0)  # stable: equal times keep their order


def _log_holds_the_start(session: LiveSession) -> bool:
    from apps.events.models import Event

    return Event.objects.filter(session_key=session.pk, type="session.opened").exists()


def _logged(session: LiveSession) -> list[dict[str, Any]]:
    from apps.events.models import Event

    entries: dict[str, dict[str, Any]] = {}
    payloads = Event.objects.filter(session_key=session.pk, type="transcript.entry").order_by("id")
    for payload in payloads.values_list("payload", flat=True).iterator():
        try:
            entry = json.loads(payload).get("entry")
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("id"), str):
            old = entries.get(entry["id"], {})
            # Flags, once set, stay (as the core keeps them): a later final only brings text.
            entries[entry["id"]] = {**old, **entry, "interrupted": bool(old.get("interrupted") or entry.get("interrupted"))}
    return list(entries.values())


def _replies(requests: list[ResponseRequest]) -> list[dict[str, Any]]:
    return [
        {
            "id": r.response_id or r.id,
            "role": "agent",
            "text": r.output_text,
            "oob": r.conversation == "none",
            "request_id": r.id,
            "response_id": r.response_id or None,
        }
        for r in requests
        if r.output_text
    ]


def _request_of(entry: dict[str, Any], by_id: dict, by_response: dict) -> ResponseRequest | None:
    request = by_id.get(entry.get("request_id"))
    if request is None and entry.get("response_id"):
        request = by_response.get(entry["response_id"])
    return request


def _shown(entry: dict[str, Any], by_id: dict, by_response: dict) -> dict[str, Any]:
    role = entry.get("role") or "user"
    text = entry.get("text") or ""
    if text == UNTRANSCRIBED:
        text = NEVER_TRANSCRIBED
    if role == "tool":
        return _tool(entry, text)
    request = _request_of(entry, by_id, by_response) if role == "agent" else None
    nudged = request is not None and request.origin in OPERATOR_ORIGINS
    interrupted = bool(entry.get("interrupted")) or (request is not None and request.status in INTERRUPTED_STATUSES)
    oob = bool(entry.get("oob"))
    marks = []
    if oob:
        marks.append("operators only")
    if nudged:
        marks.append(f"nudged by {request.requested_by or 'an operator'}")
    who = {"agent": "agent", "system": "note"}.get(role, "caller")
    classes = ["entry", f"role-{role}"]
    classes += [name for name, on in (("oob", oob), ("nudged", nudged), ("interrupted", interrupted)) if on]
    return {
        "id": entry.get("id", ""),
        "role": role,
        "classes": " ".join(classes),
        "who": " · ".join([who, *marks]),
        "text": text,
        "interrupted": interrupted,
        "tool": None,
    }


def _tool(entry: dict[str, Any], text: str) -> dict[str, Any]:
    """As tools.js `toolEntry` shows a tool call."""
    tool = entry.get("tool") if isinstance(entry.get("tool"), dict) else {}
    name = f"{tool['server_label']}.{tool.get('name', '')}" if tool.get("server_label") else tool.get("name")
    took = tool.get("duration_ms")
    took = None if took is None else f"{took} ms" if took < 1000 else f"{took / 1000:.1f} s"
    kind = "mcp" if tool.get("kind") == "mcp" else "function"
    if tool.get("error"):
        result = {"class": "tool-error", "text": f"Error: {tool['error']}"}
    elif tool.get("output") is None:
        result = {"class": "muted", "text": "No output."}
    else:
        result = {"class": "tool-output", "text": tool["output"]}
    return {
        "id": entry.get("id", ""),
        "role": "tool",
        "classes": "entry role-tool",
        "who": " · ".join(str(part) for part in ("tool", kind, name, took) if part),
        "text": text,
        "interrupted": False,
        "tool": {"arguments": tool.get("arguments") or "{}", "result": result},
    }
