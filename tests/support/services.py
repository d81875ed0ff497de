"""Real Redis and PostgreSQL for tests (devtools/services.py), with the tests' rule for a
missing binary: it skips the tests that need it, except when `CI` is set: then it fails them,
so CI never passes by skipping (`make test` installs the packages:
scripts/install-system-deps.sh)."""

from __future__ import annotations

import os

import pytest

from devtools import services


def missing(message: str) -> None:
    """A binary the tests need is absent: fail under CI, skip elsewhere."""
    message = f"{message}: run `make test`"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


class RedisServer(services.RedisServer):
    def __init__(self, *args, **kwargs) -> None:
        try:
            super().__init__(*args, **kwargs)
        except services.ServiceUnavailable as exc:
            missing(str(exc))


class PostgresServer(services.PostgresServer):
    def __init__(self, *args, **kwargs) -> None:
        try:
            super().__init__(*args, **kwargs)
        except services.ServiceUnavailable as exc:
            missing(str(exc))
