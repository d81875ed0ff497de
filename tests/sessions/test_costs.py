"""Usage into cost (CONTRACT section 2 `cost_usd`): the OC_PRICES table, a session's and a
request's cost, null without a price, per-token and fleet totals, and a bad table refused at
start-up naming the key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from apps.sessions import selectors
from apps.sessions.costs import cost_usd
from apps.sessions.models import LiveSession, ResponseRequest
from operator_console.prices import DEFAULT_PRICES, parse_prices
from tests.support.servers import ROOT

# A voice turn: 1 000 text + 2 000 audio tokens in, of which 400 text and 1 000 audio cached;
# 100 text and 500 audio tokens out.
USAGE = {
    "total_tokens": 3600,
    "input_tokens": 3000,
    "output_tokens": 600,
    "input_token_details": {
        "text_tokens": 1000,
        "audio_tokens": 2000,
        "image_tokens": 0,
        "cached_tokens": 1400,
        "cached_tokens_details": {"text_tokens": 400, "audio_tokens": 1000, "image_tokens": 0},
    },
    "output_token_details": {"text_tokens": 100, "audio_tokens": 500},
}
# gpt-realtime, USD per 1M: text in 4, cached 0.40, audio in 32, cached audio 0.40, text out 16,
# audio out 64.
GPT_REALTIME = (600 * 4 + 400 * 0.4 + 1000 * 32 + 1000 * 0.4 + 100 * 16 + 500 * 64) / 1e6


def test_a_usage_is_priced_by_type_with_cached_tokens_taken_out_of_the_input():
    assert cost_usd(model="gpt-realtime", usage=USAGE) == pytest.approx(GPT_REALTIME, abs=1e-6)
    mini = DEFAULT_PRICES["gpt-realtime-mini"]
    expected = (
        600 * mini["text_input"] + 400 * mini["cached_input"] + 1000 * mini["audio_input"]
        + 1000 * mini["cached_audio_input"] + 100 * mini["text_output"] + 500 * mini["audio_output"]
    ) / 1e6  # fmt: skip
    assert cost_usd(model="gpt-realtime-mini", usage=USAGE) == pytest.approx(expected, abs=1e-6)


def test_a_dated_snapshot_is_priced_as_its_model_and_an_unknown_model_has_no_price():
    assert cost_usd(model="gpt-realtime-2025-08-28", usage=USAGE) == cost_usd(model="gpt-realtime", usage=USAGE)
    assert cost_usd(model="gpt-realtime-mini-2025-10-06", usage=USAGE) == cost_usd(model="gpt-realtime-mini", usage=USAGE)
    assert cost_usd(model="my-own-model", usage=USAGE) is None
    assert cost_usd(model="gpt-realtime", usage=None) is None, "a request not finished has no cost yet"
    assert cost_usd(model="gpt-realtime", usage={}) == 0.0


@pytest.mark.django_db
def test_session_and_request_json_carry_cost_usd(settings):
    session = LiveSession.objects.create(upstream_id="sess_cost", model="gpt-realtime", status="ended", usage=USAGE)
    request = ResponseRequest.objects.create(id="req_cost", session=session, origin="api", usage=USAGE)
    assert session.to_dict()["cost_usd"] == pytest.approx(GPT_REALTIME, abs=1e-6)
    assert request.to_dict()["cost_usd"] == pytest.approx(GPT_REALTIME, abs=1e-6)
    settings.OC_PRICES = parse_prices('{"gpt-realtime": null}')
    assert session.to_dict()["cost_usd"] is None, "a model without a price: null"
    settings.OC_PRICES = parse_prices(json.dumps({"gpt-realtime": {key: 1 for key in DEFAULT_PRICES["gpt-realtime"]}}))
    assert session.to_dict()["cost_usd"] == pytest.approx(3600 / 1e6), "the table is the setting's"


@pytest.mark.django_db
def test_fleet_and_token_totals_sum_in_the_database_per_model():
    now = timezone.now()
    priced = LiveSession.objects.create(upstream_id="sess_p", model="gpt-realtime")
    unpriced = LiveSession.objects.create(upstream_id="sess_u", model="my-own-model")
    for n, (session, by, finished) in enumerate(
        [(priced, "token:ci", now), (priced, "token:ci", now), (unpriced, "token:ci", now),
         (priced, "ada", now), (priced, "token:ci", now - timedelta(days=2))]
    ):  # fmt: skip
        ResponseRequest.objects.create(
            id=f"req_t{n}", session=session, origin="console" if by == "ada" else "api",
            usage=USAGE, requested_by=by, finished_at=finished,
        )  # fmt: skip
    ResponseRequest.objects.create(id="req_open", session=priced, origin="api", requested_by="token:ci")

    today = selectors.fleet_usage_today(now=now)
    assert today["requests"] == 4 and today["total_tokens"] == 4 * 3600
    assert today["cost_usd"] == pytest.approx(3 * GPT_REALTIME, abs=1e-6)
    assert today["unpriced_tokens"] == 3600, "tokens of a model without a price are counted apart"
    assert today["since"].endswith("+00:00")

    tokens = selectors.api_token_usage()
    assert set(tokens) == {"token:ci"}, "operators are not tokens"
    assert tokens["token:ci"]["requests"] == 4
    assert tokens["token:ci"]["cost_usd"] == pytest.approx(3 * GPT_REALTIME, abs=1e-6)


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ("{not json", "OC_PRICES"),
        ('{"gpt-realtime": {"text_input": 4, "speech_in": 1}}', "speech_in"),
        ('{"m": {"text_input": -1, "cached_input": 0, "audio_input": 0, "text_output": 0, "audio_output": 0}}', "text_input"),
        ('{"m": {"text_input": 1}}', "cached_input"),
        ('{"m": 5}', "'m'"),
        ("[1]", "OC_PRICES"),
    ],
)
def test_a_bad_table_is_refused_naming_the_key(raw, named):
    with pytest.raises(ImproperlyConfigured, match=named):
        parse_prices(raw)


def test_start_up_stops_on_a_bad_table():
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**os.environ, "OC_PRICES": '{"gpt-realtime": {"text_inptu": 4}}'},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "OC_PRICES['gpt-realtime']['text_inptu']" in result.stderr


def test_overrides_keep_the_other_defaults():
    prices = parse_prices('{"custom": {"text_input": 1, "cached_input": 0.1, "audio_input": 2, "text_output": 3, "audio_output": 4}}')
    assert prices["gpt-realtime"] == DEFAULT_PRICES["gpt-realtime"] and prices["custom"]["audio_output"] == 4.0


@pytest.mark.django_db
def test_a_tokens_usage_counts_what_its_caller_and_its_sessions_asked_for():
    """A token that connects a caller's session pays for that caller's own responses and for
    those the server started in it (server VAD); a nudge is paid by whoever asked for it."""
    session = LiveSession.objects.create(
        upstream_id="sess_app", model="gpt-realtime", connected_by="token:app"
    )
    for n, (origin, by) in enumerate(
        [("caller", "token:app"), ("server", ""), ("api", "token:ops"), ("console", "ada")]
    ):
        ResponseRequest.objects.create(
            id=f"req_pay{n}", session=session, origin=origin, usage=USAGE, requested_by=by
        )

    tokens = selectors.api_token_usage()
    assert set(tokens) == {"token:app", "token:ops"}, "operators are not tokens"
    assert tokens["token:app"]["requests"] == 2, "the caller's own and the server's responses"
    assert tokens["token:app"]["cost_usd"] == pytest.approx(2 * GPT_REALTIME, abs=1e-6)
    assert tokens["token:ops"]["requests"] == 1, "the nudge is the nudger's"
