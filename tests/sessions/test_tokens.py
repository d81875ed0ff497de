"""API tokens: stored hashed, shown once, scoped."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from apps.sessions.models import ApiToken
from apps.sessions.tokens import api_token_authenticate, api_token_revoke

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
    assert sorted(token.scopes) == sorted(ApiToken.ALL_SCOPES), "default: all three scopes"


def test_scopes_are_repeatable_and_checked():
    out, _ = _create("--name", "reader", "--scope", "sessions:read")
    plain = out.strip().splitlines()[-1]
    assert api_token_authenticate(plain=plain, scope="sessions:read") is not None
    assert api_token_authenticate(plain=plain, scope="realtime:connect") is None
    with pytest.raises(CommandError, match="unknown scope"):
        _create("--name", "bad", "--scope", "everything")


def test_revoked_token_is_refused_and_last_use_is_recorded():
    out, _ = _create("--name", "temp")
    plain = out.strip().splitlines()[-1]
    token = api_token_authenticate(plain=plain, scope="realtime:connect")
    assert token is not None and token.last_used_at is not None
    api_token_revoke(token=token)
    assert api_token_authenticate(plain=plain, scope="realtime:connect") is None
