"""API tokens: stored hashed, shown once, scoped."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command

from apps.sessions import tokens
from apps.sessions.models import ApiToken
from apps.sessions.tokens import (
    MissingScope,
    TokenBuckets,
    api_token_authenticate,
    api_token_create,
    api_token_revoke,
)

pytestmark = pytest.mark.django_db


def _create(*args) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("create_api_token", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_command_prints_the_token_alone_on_the_last_line_and_stores_only_a_digest():
    out, _ = _create("--name", "ci-bot")
    plain = out.strip().splitlines()[-1]
    assert plain.startswith("oct_") and " " not in plain
    token = ApiToken.objects.get(name="ci-bot")
    assert token.digest == ApiToken.hash(plain) and plain not in (token.digest, token.prefix)
    assert sorted(token.scopes) == sorted(ApiToken.DEFAULT_SCOPES), "default: the three scopes"
    assert "metrics:read" not in token.scopes, "metrics:read only when named"


def test_scopes_are_repeatable_and_checked():
    out, _ = _create("--name", "reader", "--scope", "sessions:read")
    plain = out.strip().splitlines()[-1]
    assert api_token_authenticate(plain=plain, scope="sessions:read") is not None
    with pytest.raises(MissingScope, match="realtime:connect"):
        api_token_authenticate(plain=plain, scope="realtime:connect")
    with pytest.raises(CommandError, match="unknown scope"):
        _create("--name", "bad", "--scope", "everything")


def test_the_command_makes_a_token_for_any_name_it_can_store():
    """CONTRACT section 1: `create_api_token --name NAME` prints a new token, a name another
    token has included (the admin asks people for a name of their own, `test_admin`); a name
    longer than the column is refused, naming the field and the limit."""
    _create("--name", "Straße-Bot")
    api_token_revoke(token=ApiToken.objects.get(name="Straße-Bot"))
    out, _ = _create("--name", "Straße-Bot")
    assert out.strip().splitlines()[-1].startswith("oct_")
    with pytest.raises(CommandError, match="^name is 101 characters; at most 100 are allowed"):
        _create("--name", "x" * 101)
    with pytest.raises(tokens.InvalidName) as refused:
        api_token_create(name="   ")
    assert refused.value.field == "name"
    assert ApiToken.objects.count() == 2
    assert tokens.api_token_free_name("straße-bot") == "straße-bot-2"


def test_revoked_token_is_refused_and_last_use_is_recorded():
    out, _ = _create("--name", "temp")
    plain = out.strip().splitlines()[-1]
    token = api_token_authenticate(plain=plain, scope="realtime:connect")
    assert token is not None and token.last_used_at is not None
    api_token_revoke(token=token)
    assert api_token_authenticate(plain=plain, scope="realtime:connect") is None


def test_an_unknown_or_empty_token_is_none():
    assert api_token_authenticate(plain="oct_nope", scope="sessions:read") is None
    assert api_token_authenticate(plain="", scope="sessions:read") is None


def test_last_use_is_written_at_most_once_a_minute():
    token, plain = api_token_create(name="busy")
    api_token_authenticate(plain=plain, scope="sessions:read")
    first = ApiToken.objects.get(pk=token.pk).last_used_at
    api_token_authenticate(plain=plain, scope="sessions:read")
    assert ApiToken.objects.get(pk=token.pk).last_used_at == first, "written again within the minute"
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=first - timedelta(minutes=2))
    api_token_authenticate(plain=plain, scope="sessions:read")
    assert ApiToken.objects.get(pk=token.pk).last_used_at > first, "not written after a minute"


def test_the_token_bucket_allows_a_burst_then_the_rate(settings, monkeypatch):
    settings.OC_API_RATE, settings.OC_API_BURST = 2.0, 3
    now = [1000.0]
    monkeypatch.setattr(tokens.time, "monotonic", lambda: now[0])
    buckets = TokenBuckets()
    assert [buckets.take(1) for _ in range(3)] == [0.0, 0.0, 0.0], "a burst of 3"
    assert buckets.take(1) == pytest.approx(0.5), "then one every 1/rate seconds"
    assert buckets.take(2) == 0.0, "each token has its own bucket"
    now[0] += 0.5
    assert buckets.take(1) == 0.0
    now[0] += 100
    assert [buckets.take(1) for _ in range(4)][-1] > 0, "refilled to the burst, no further"
