"""The session page as the server renders it (no JavaScript): an ended session's transcript as
the live page showed it, and what the page says without scripts (QA report 3)."""

from __future__ import annotations

import html
import json
import re
import uuid
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

from apps.events.models import Event
from apps.realtime.relay import EndReason
from apps.sessions.models import END_REASON_WORDS, LiveSession, ResponseRequest

pytestmark = pytest.mark.django_db(transaction=True)


def _session(upstream_id: str, **fields) -> LiveSession:
    return LiveSession.objects.create(
        id=uuid.uuid4(), upstream_id=upstream_id, model="gpt-realtime", **{"status": "ended", **fields}
    )


def _request(session: LiveSession, rid: str, **fields) -> ResponseRequest:
    return ResponseRequest.objects.create(
        id=rid, session=session, created_at=session.started_at + timedelta(seconds=1), **fields
    )


def _entries(page: str) -> list[tuple[str, str, str, bool]]:
    """(classes, who, text, marked interrupted) of each transcript entry, in page order."""
    block = re.search(r"<ol class=\"transcript\".*?</ol>", page, re.S).group(0)
    found = []
    for item in re.finditer(r'<li class="([^"]*)"[^>]*><span class="who">(.*?)</span><p>(.*?)</p>(.*?)</li>', block, re.S):
        found.append((item.group(1), item.group(2), item.group(3), "interrupted</span>" in item.group(4)))
    return found


def test_a_recorded_session_shows_its_turns_in_time_order_with_the_live_pages_marks(operator):
    session = _session("sess_ended_voice")
    _request(session, "req_oob1", origin="console", requested_by="ann", status="completed",
             conversation="none", response_id="resp_oob")
    _request(session, "req_long", origin="caller", status="cancelled", response_id="resp_long")
    # As the recorder stored it before: in the order turns became final, no interrupted flag.
    LiveSession.objects.filter(pk=session.pk).update(recording_transcript=[
        {"id": "item_u", "role": "user", "text": "Tell me a long story.", "done": True, "oob": False, "at": 0.004},
        {"id": "item_n", "role": "system", "text": "The caller is a VIP.", "done": True, "oob": False, "at": 17.4},
        {"id": "item_o", "role": "agent", "text": "Summary for operators.", "done": True, "oob": True,
         "response_id": "resp_oob", "request_id": "req_oob1", "at": 19.5},
        {"id": "item_l", "role": "agent", "text": "Once upon a time", "done": True, "oob": False,
         "response_id": "resp_long", "at": 2.3},
    ])
    entries = _entries(operator.get("/console/sessions/sess_ended_voice/").content.decode())
    assert [text for _, _, text, _ in entries] == [
        "Tell me a long story.", "Once upon a time", "The caller is a VIP.", "Summary for operators."
    ], "in the order the turns began"
    caller, long_reply, note, oob = entries
    assert caller[1] == "caller" and note[1] == "note"
    assert long_reply[3] and "interrupted" in long_reply[0].split(), "its request was cancelled: interrupted"
    assert oob[1] == "agent · operators only · nudged by ann", "the live page's words, not the request id"
    assert {"oob", "nudged"} <= set(oob[0].split())


def test_a_text_session_shows_the_callers_turns_too(operator):
    session = _session("sess_ended_text")
    _request(session, "req_t1", origin="caller", status="completed", response_id="resp_1", output_text="Hello! How can I help?")
    _request(session, "req_t2", origin="console", requested_by="bob", status="completed", response_id="resp_2",
             output_text="Your parcel ships today.")
    logged = [
        {"id": "item_1", "role": "user", "text": "Hi there", "done": True, "oob": False},
        {"id": "item_2", "role": "agent", "text": "Hello! How can I help?", "done": True, "oob": False, "response_id": "resp_1"},
        {"id": "item_3", "role": "user", "text": "Where is my parcel?", "done": True, "oob": False},
        {"id": "item_4", "role": "agent", "text": "Your parcel ships today.", "done": True, "oob": False,
         "response_id": "resp_2", "request_id": "req_t2"},
    ]
    for entry in logged:
        Event.objects.create(type="transcript.entry", session_key=session.pk, session_id=session.upstream_id,
                             payload=json.dumps({"type": "transcript.entry", "entry": entry}))
    Event.objects.create(type="transcript.entry", session_key=uuid.uuid4(), payload=json.dumps(
        {"type": "transcript.entry", "entry": {"id": "item_x", "role": "user", "text": "another session's"}}))
    entries = _entries(operator.get("/console/sessions/sess_ended_text/").content.decode())
    assert [(who, text) for _, who, text, _ in entries] == [
        ("caller", "Hi there"),
        ("agent", "Hello! How can I help?"),
        ("caller", "Where is my parcel?"),
        ("agent · nudged by bob", "Your parcel ships today."),
    ]


def test_without_a_kept_transcript_the_agents_replies_are_shown(operator):
    session = _session("sess_ended_bare")
    _request(session, "req_b1", origin="api", requested_by="token:x", status="completed", output_text="Done.",
             conversation="none")
    entries = _entries(operator.get("/console/sessions/sess_ended_bare/").content.decode())
    assert [(who, text) for _, who, text, _ in entries] == [("agent · operators only · nudged by token:x", "Done.")]


def test_without_javascript_the_page_shows_what_the_server_knows_and_hides_what_needs_a_script(operator):
    from django.utils import timezone

    user = get_user_model().objects.get(username="alice")
    user.user_permissions.add(Permission.objects.get(codename="listen_session"))
    session = _session("sess_nojs", status="live", rate_limits=[
        {"name": "requests", "limit": 5000, "remaining": 4999, "reset_at": "2026-12-06T14:45:17.561590+00:00"},
    ])
    created = timezone.now() - timedelta(seconds=5)
    ResponseRequest.objects.create(
        id="req_nojs", session=session, origin="console", requested_by="alice", status="completed",
        instructions="Offer the refund.", created_at=created, started_at=created + timedelta(milliseconds=412),
    )
    page = operator.get("/console/sessions/sess_nojs/").content.decode()
    assert "2026-12-06T14:45:17.561590+00:00</time>" not in page, "no raw timestamp as text"
    assert re.search(r"resets <time[^>]*>14:45:17</time>", page), "the reset as a clock time, like the page's others"
    row = re.search(r'<tr data-request="req_nojs".*?</tr>', page, re.S).group(0)
    assert "412 ms" in row, "the latency is rendered by the server"
    for marker in ('<figure class="chart" data-script-only hidden>', "data-live-status data-script-only"):
        assert marker in page, f"script-only part shown without a script: {marker}"
    assert re.search(r'<p class="live-status" data-live-status data-script-only aria-live="polite" hidden>', page)
    listen = re.search(r"<div [^>]*\bdata-listen(?=[\s>])[^>]*>", page)  # alice may listen
    assert listen and " hidden" in listen.group(0), "Listen/Mute need a script"
    assert "<noscript>" in page and ">reload it</a> for news" in page


@pytest.mark.parametrize("kind", ["relay", "sip"])
def test_the_latency_is_shown_only_for_a_request_the_console_sent(operator, kind):
    """The server's responses, and an attached call's caller's (sent to the model directly),
    are seen only as they start: a request → start time of 0 ms would mean nothing."""
    session = _session(f"sess_latency_{kind}", kind=kind)
    for rid, origin in (("req_op", "api"), ("req_caller", "caller"), ("req_server", "server")):
        request = _request(session, f"{rid}_{kind}", origin=origin, status="completed")
        request.started_at = request.created_at + timedelta(milliseconds=0 if origin == "server" else 37)
        request.save(update_fields=["started_at"])
    page = operator.get(f"/console/sessions/sess_latency_{kind}/").content.decode()
    latency = {
        rid: re.search(rf'<tr data-request="{rid}_{kind}".*?class="num latency"[^>]*>(.*?)</span>', page, re.S)
        .group(1) for rid in ("req_op", "req_caller", "req_server")
    }
    caller = "37 ms" if kind == "relay" else ""
    assert latency == {"req_op": "37 ms", "req_caller": caller, "req_server": ""}
    assert f'data-kind="{kind}"' in page, "session.js measures its live rows by the same rule"


def test_without_javascript_a_watcher_is_not_told_that_steering_works(transactional_db):
    from django.test import Client

    _session("sess_watched", status="live")
    watcher = Client()
    watcher.force_login(get_user_model().objects.create_user("watcher", password="pw-for-tests"))
    note = re.search(r'<noscript><p class="noscript-note">(.*?)</p>', watcher.get(
        "/console/sessions/sess_watched/").content.decode(), re.S).group(1)
    assert "Steering" not in note and "label work" not in note, note


def test_without_javascript_the_dashboard_does_not_claim_to_be_connecting(operator):
    page = operator.get("/console/").content.decode()
    status = re.search(r'<p class="live-status" data-live-status[^>]*>', page).group(0)
    assert "data-script-only" in status and " hidden" in status, f"a socket's state, none: {status}"
    assert re.search(r"<noscript><p class=\"live-status\">Not updating live", page)


def test_an_unknown_page_answers_in_the_consoles_look_and_the_api_and_relay_as_before(operator, settings):
    from django.template import loader

    settings.DEBUG = False
    page = operator.get("/console/sessions/sess_nobody/")
    body = page.content.decode()
    assert page.status_code == 404
    assert 'class="topbar"' in body and "css/console.css" in body, "the console's look"
    assert '<a href="/console/">Back to the live sessions</a>' in body
    assert "sess_nobody" in body, "says what was asked for"
    api = operator.get("/api/v1/no-such-thing")
    assert api.status_code == 404 and api["Content-Type"].startswith("application/json"), "the API keeps its errors"
    relay = operator.get("/v1/no-such-thing")
    assert relay.status_code == 404 and "topbar" not in relay.content.decode(), "the relay's paths keep Django's page"
    # The 500 page needs nothing: no context, no request, no template tag that could fail.
    server_error = loader.get_template("500.html").render()
    assert "{%" not in server_error and '<a href="/console/">Back to the live sessions</a>' in server_error


def test_an_unknown_session_or_request_is_the_consoles_404_even_with_debug_on(operator, settings):
    # `make run` serves with DEBUG on: a stale link must still land on the console's page,
    # not Django's technical one (the URL patterns, "You're seeing this error because…").
    settings.DEBUG = True
    for answer in (
        operator.get("/console/sessions/sess_gone/"),
        operator.post("/console/requests/req_gone/cancel"),
    ):
        body = answer.content.decode()
        assert answer.status_code == 404
        assert 'class="topbar"' in body and "Back to the live sessions" in body, "the console's"
        assert "DEBUG = True" not in body and "URLconf" not in body, "not Django's debug page"


@pytest.mark.parametrize("reason", list(EndReason))
def test_an_ended_session_says_why_in_words_with_its_code_beside(operator, reason):
    _session("sess_why", status="failed", end_reason=reason.value, end_code=1011)
    page = operator.get("/console/sessions/sess_why/").content.decode()
    words = html.unescape(re.search(r"<span data-end-reason>(.*?)</span>", page).group(1))
    assert words == END_REASON_WORDS[reason] + ".", "every reason has its words"
    code = re.search(r"<code class=\"end-reason\" data-end-code>(.*?)</code>", page).group(1)
    assert code == f"{reason.value} · 1011"
    words_for_script = json.loads(re.search(r'id="end-words"[^>]*>(.*?)</script>', page).group(1))
    assert words_for_script[reason.value] == END_REASON_WORDS[reason], "the live page words it the same"


def _gone_note(page: str) -> str | None:
    found = re.search(r"<p [^>]*data-transcript-gone>(.*?)</p>", page, re.S)
    return found.group(1) if found else None


def _log(session: LiveSession, kind: str, entry: dict | None = None) -> None:
    payload = {"type": kind, "entry": entry} if entry else {"type": kind}
    Event.objects.create(
        type=kind,
        session_key=session.pk,
        session_id=session.upstream_id,
        payload=json.dumps(payload),
    )


def test_an_ended_session_whose_log_is_whole_says_nothing_is_missing(operator):
    session = _session("sess_whole")
    _log(session, "session.opened")
    _log(session, "transcript.entry", {"id": "item_1", "role": "user", "text": "Hi there"})
    page = operator.get("/console/sessions/sess_whole/").content.decode()
    assert [text for _, _, text, _ in _entries(page)] == ["Hi there"]
    assert _gone_note(page) is None, "the log still holds the session from its start"


def test_an_ended_session_past_the_logs_window_says_the_callers_turns_are_gone(operator):
    session = _session("sess_pruned")
    _request(session, "req_p1", origin="caller", status="completed", response_id="resp_p1",
             output_text="Hello!")
    page = operator.get("/console/sessions/sess_pruned/").content.decode()
    assert [(who, text) for _, who, text, _ in _entries(page)] == [("agent", "Hello!")]
    note = _gone_note(page)
    assert note is not None and "caller&#x27;s turns are gone" in note and "15 minutes" in note, (
        "a transcript of the agent alone says why the caller is missing"
    )


def test_an_ended_session_whose_start_left_the_log_says_so(operator):
    session = _session("sess_long")
    _log(session, "transcript.entry", {"id": "item_9", "role": "user", "text": "One more thing"})
    page = operator.get("/console/sessions/sess_long/").content.decode()
    assert [text for _, _, text, _ in _entries(page)] == ["One more thing"]
    note = _gone_note(page)
    assert note is not None and "start of this transcript is gone" in note


@pytest.mark.parametrize(
    ("model", "usage", "shown"),
    [
        ("gpt-realtime", {}, "<span data-usage-text>no tokens used yet</span>"),
        (
            "gpt-realtime",
            {"total_tokens": 12345, "input_tokens": 12000, "output_tokens": 345},
            'title="12,000 input, 345 output">12,345 tokens · $',
        ),
        (
            "a-model-with-no-price",
            {"total_tokens": 7, "input_tokens": 7},
            'title="7 input, 0 output">7 tokens · no price for a-model-with-no-price',
        ),
    ],
)
def test_the_page_says_what_the_session_used_and_what_it_cost(operator, model, usage, shown):
    session = _session("sess_usage", usage=usage)
    LiveSession.objects.filter(pk=session.pk).update(model=model)
    page = operator.get("/console/sessions/sess_usage/").content.decode()
    assert shown in page


def test_an_ended_transcript_renders_without_a_failed_lookup_per_entry(operator, caplog):
    """Each entry that was not a tool call failed the template's lookup of its tool: with
    DEBUG logs on, a traceback logged per entry, thousands for a long call's page, and
    much of the page's time spent on them."""
    session = _session("sess_ended_lookups")
    LiveSession.objects.filter(pk=session.pk).update(recording_transcript=[
        {"id": f"item_{n}", "role": ("user", "agent")[n % 2], "text": f"Turn {n}", "done": True,
         "oob": False, "at": float(n)}
        for n in range(4)
    ])  # fmt: skip
    with caplog.at_level("DEBUG", logger="django.template"):
        page = operator.get("/console/sessions/sess_ended_lookups/").content.decode()
    assert [text for _, _, text, _ in _entries(page)] == ["Turn 0", "Turn 1", "Turn 2", "Turn 3"]
    failed = [r.getMessage() for r in caplog.records if r.name == "django.template"]
    assert not [message for message in failed if "'tool'" in message], failed
