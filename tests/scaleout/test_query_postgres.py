"""The history's query, export and cost sums on a real PostgreSQL (the suite's own database is
SQLite): metadata filters through PostgreSQL's JSON operators, token sums cast from JSON, and
the CSV export's cursor read on a thread of its own from the connection pool."""

from __future__ import annotations

import json

from tests.scaleout.conftest import manage

SCRIPT = r"""
import asyncio, json, uuid
from datetime import timedelta
from django.utils import timezone
from apps.sessions import export, selectors
from apps.sessions.models import LiveSession, ResponseRequest

USAGE = {"total_tokens": 1500, "input_tokens": 1000, "output_tokens": 500,
         "input_token_details": {"text_tokens": 1000, "audio_tokens": 0,
                                 "cached_tokens_details": {"text_tokens": 200, "audio_tokens": 0}},
         "output_token_details": {"text_tokens": 500, "audio_tokens": 0}}
now = timezone.now()
session = LiveSession.objects.create(upstream_id=f"sess_pg_{uuid.uuid4().hex}", model="gpt-realtime", status="ended")
try:
    metas = [{"ticket": "T-1", "a__b": 'say "hi"'}, {"ticket": "T-1"}, {"ticket": "T-2", "0": "zero"}, None]
    for n, meta in enumerate(metas):
        ResponseRequest.objects.create(
            id=f"req_pg_{uuid.uuid4().hex}", session=session, origin="api", status="completed",
            metadata=meta, usage=USAGE, requested_by="token:pg-test", created_at=now + timedelta(seconds=n),
            finished_at=now + timedelta(seconds=n),
        )
    mine = ResponseRequest.objects.filter(session=session)

    def count(*pairs):
        return selectors.request_filtered(selectors.RequestFilter(session_id=session.upstream_id, metadata=pairs)).count()

    async def csv_rows():
        chunks = [c async for c in export.csv_chunks(selectors.RequestFilter(session_id=session.upstream_id), chunk_rows=2)]
        return b"".join(chunks).decode().count("\r\n") - 1

    print(json.dumps({
        "t1": count(("ticket", "T-1")),
        "t1_quoted": count(("ticket", "T-1"), ("a__b", 'say "hi"')),
        "none": count(("ticket", "T-3")),
        "digits": count(("0", "zero")),
        "csv": asyncio.run(csv_rows()),
        "tokens": selectors.usage_totals(mine)[None],
        "by_token": selectors.api_token_usage().get("token:pg-test"),
        "one_token": selectors.api_token_usage(tokens=["token:pg-test"]).get("token:pg-test"),
        "listed": [s.to_dict()["origin_counts"]["api"] for s in selectors.session_list(limit=1000)
                   if s.upstream_id == session.upstream_id],
    }))
finally:
    session.delete()
"""


def test_filters_sums_and_export_on_postgresql(scaleout_db):
    out = json.loads(manage(scaleout_db.url, "shell", "-c", SCRIPT).strip().splitlines()[-1])
    assert (out["t1"], out["t1_quoted"], out["none"]) == (2, 1, 0), "metadata filters on PostgreSQL's JSON"
    assert out["digits"] == 1, "a key of digits is a key, not an array index"
    assert out["csv"] == 4, "the CSV export reads its cursor on PostgreSQL"
    tokens = out["tokens"]
    assert (tokens["requests"], tokens["total_tokens"], tokens["unpriced_tokens"]) == (4, 6000, 0)
    # per request: 800 text in × $4 + 200 cached × $0.40 + 500 out × $16, per 1M tokens
    assert tokens["cost_usd"] == round(4 * (800 * 4 + 200 * 0.4 + 500 * 16) / 1e6, 6)
    assert out["by_token"]["requests"] == 4
    assert out["one_token"] == out["by_token"], "one token's sum is its share of all"
    assert out["listed"] == [4], "the session list counts through PostgreSQL's grouping"


LONG_NAMES = r"""
import json, time, uuid
from apps.sessions import history, records
from apps.sessions.models import LiveSession, ResponseRequest

key = uuid.uuid4()
history.apply_batch([records.session_opened(
    key=key, model="m" * 300, connected_by="token:pg", process_id="pg", at=time.time(),
)])
try:
    request_id = f"req_pg_{uuid.uuid4().hex}"
    history.apply_batch([records.request_created(
        key=key, request_id=request_id, origin="caller", event_id="evt_" + "x" * 300,
        instructions=None, metadata=None, conversation=None, requested_by="token:pg", at=time.time(),
    )])
    print(json.dumps({
        "model": LiveSession.objects.get(id=key).model,
        "event_id": ResponseRequest.objects.get(id=request_id).event_id,
    }))
finally:
    LiveSession.objects.filter(id=key).delete()
"""


def test_a_callers_long_model_and_event_id_are_recorded_on_postgresql(scaleout_db):
    """The caller names the model (`?model=`) and its events' ids as it likes, and the
    service reads them as they are: the session and its requests are recorded whatever their
    length."""
    out = json.loads(manage(scaleout_db.url, "shell", "-c", LONG_NAMES).strip().splitlines()[-1])
    assert (out["model"], out["event_id"]) == ("m" * 300, "evt_" + "x" * 300)
