"""The written-out statements (apps/sessions/sql.py) read and write what the ORM would.

These run on SQLite; the scale-out tests run the same paths on PostgreSQL (every REST call's
token, and racing submits through two processes against the session's row lock)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.sessions import sql
from apps.sessions.models import ApiToken, LiveSession, ResponseRequest
from apps.sessions.tokens import api_token_create, api_token_revoke

pytestmark = pytest.mark.django_db


def _values(row: ResponseRequest) -> dict:
    return {field.attname: getattr(row, field.attname) for field in ResponseRequest._meta.concrete_fields}


def _session(upstream_id: str = "sess_sql", status: str = "live") -> LiveSession:
    return LiveSession.objects.create(upstream_id=upstream_id, model="gpt-realtime", status=status)


def test_an_inserted_row_reads_back_through_the_orm_field_for_field():
    session = _session()
    written = ResponseRequest(
        id="req_sql1",
        session=session,
        origin="api",
        instructions="Offer the refund — politely.",
        instructions_mode="replace",
        conversation="none",
        metadata={"ticket": "T-1", "ü": "ß", "nested": {"a": [1, 2]}},
        status="sent",
        usage={"total_tokens": 7},
        requested_by="token:script",
        sent_at=timezone.now() - timedelta(seconds=3),
        idempotency_scope="token:1",
        idempotency_key="k-1",
        idempotency_digest="d" * 64,
    )
    sql.insert_rows(ResponseRequest, [written])
    assert not written._state.adding, "the instance knows it is saved"
    read = ResponseRequest.objects.get(pk="req_sql1")
    assert _values(read) == _values(written)
    assert read.metadata["nested"] == {"a": [1, 2]} and read.sent_at == written.sent_at


def test_several_rows_go_in_one_call():
    session = _session()
    rows = [ResponseRequest(id=f"req_many{n}", session=session, origin="caller") for n in range(3)]
    sql.insert_rows(ResponseRequest, rows)
    assert sorted(ResponseRequest.objects.values_list("id", flat=True)) == ["req_many0", "req_many1", "req_many2"]


def test_lock_session_loads_the_id_public_id_and_status_or_none():
    session = _session(status="ended")
    locked = sql.lock_session("sess_sql")
    assert (locked.pk, locked.upstream_id, locked.status) == (session.pk, "sess_sql", "ended")
    assert sql.lock_session("sess_other") is None


def test_count_requests_counts_one_sessions_rows_in_one_status():
    session, other = _session(), _session("sess_other")
    for n, (owner, status) in enumerate([(session, "queued"), (session, "queued"), (session, "sent"), (other, "queued")]):
        ResponseRequest.objects.create(id=f"req_c{n}", session=owner, origin="api", status=status)
    assert sql.count_requests(session, "queued") == 2
    assert sql.count_requests(session, "sent") == 1
    assert sql.count_requests(other, "queued") == 1


def test_active_token_finds_unrevoked_tokens_by_digest_with_their_scopes():
    token, plain = api_token_create(name="reader", scopes=["sessions:read"])
    found = sql.active_token(ApiToken.hash(plain))
    assert found.pk == token.pk and found.scopes == ["sessions:read"] and found.name == "reader"
    assert sql.active_token(ApiToken.hash("oct_nope")) is None
    api_token_revoke(token=token)
    assert sql.active_token(ApiToken.hash(plain)) is None
