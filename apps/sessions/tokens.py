"""API token services: create, authenticate, revoke. Tokens are stored only as digests."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

from django.utils import timezone

from apps.sessions import sql
from apps.sessions.models import ApiToken

# last_used_at is a hint for humans, so it is written at most this often per token.
_LAST_USED_GRANULARITY = timedelta(minutes=1)


class InvalidScope(ValueError):
    pass


def api_token_create(*, name: str, scopes: Iterable[str] | None = None, created_by=None) -> tuple[ApiToken, str]:
    """Create a token; returns (row, plain token). The plain token is not stored anywhere."""
    chosen = list(dict.fromkeys(scopes or ApiToken.ALL_SCOPES))
    unknown = [s for s in chosen if s not in ApiToken.ALL_SCOPES]
    if unknown:
        raise InvalidScope(
            f"unknown scope {', '.join(unknown)}; choose from {', '.join(ApiToken.ALL_SCOPES)}"
        )
    name = name.strip()
    if not name:
        raise ValueError("a token needs a name")
    plain = ApiToken.generate()
    token = ApiToken.objects.create(
        name=name,
        prefix=plain[:10],
        digest=ApiToken.hash(plain),
        scopes=chosen,
        created_by=created_by,
    )
    return token, plain


def api_token_authenticate(*, plain: str, scope: str) -> ApiToken | None:
    """The active token with this value and scope, or None. Records when it was last used."""
    token = api_token_lookup(plain=plain)
    return token if token is not None and token.has_scope(scope) else None


def api_token_lookup(*, plain: str) -> ApiToken | None:
    """The active token with this value, whatever its scopes, or None. Records its use."""
    if not plain:
        return None
    token = sql.active_token(ApiToken.hash(plain))
    if token is None:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > _LAST_USED_GRANULARITY:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


def api_token_revoke(*, token: ApiToken) -> None:
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
