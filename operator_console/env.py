"""Strict readers for settings that come from the environment.

A bad value stops start-up with ImproperlyConfigured naming the variable, so a typo in a
deployment is found at boot, not at the first request.
"""

from __future__ import annotations

import math
import os
from urllib.parse import parse_qs, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}
_LOG_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(
        f"{name}={raw!r} is not a boolean: use true/false, 1/0 or yes/no (any case)."
    )


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a whole number.") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} is below the minimum of {minimum}.")
    return value


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number.") from None
    if not math.isfinite(value):  # float() takes "nan" and "inf"; no setting means either
        raise ImproperlyConfigured(f"{name}={raw!r} is not a finite number.")
    if value < minimum:
        raise ImproperlyConfigured(f"{name}={value} is below the minimum of {minimum}.")
    return value


def env_log_level(name: str, default: str) -> str:
    """A logging level's name, in any case."""
    raw = env_str(name)
    if not raw:
        return default
    if raw.upper() not in _LOG_LEVELS:
        raise ImproperlyConfigured(
            f"{name}={raw!r} is not a log level: use DEBUG, INFO, WARNING, ERROR or CRITICAL."
        )
    return raw.upper()


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return list(default)
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_ws_url(name: str) -> str:
    """A WebSocket base URL (ws:// or wss://), or empty. Trailing slash removed."""
    raw = env_str(name)
    if not raw:
        return ""
    parts = urlsplit(raw)
    if parts.scheme not in {"ws", "wss"} or not parts.netloc:
        raise ImproperlyConfigured(
            f"{name}={raw!r} is not a WebSocket base URL such as wss://api.openai.com/v1."
        )
    return raw.rstrip("/")


def _connect_again_for_waiters(pool) -> None:
    """psycopg_pool's `reconnect_failed`: an attempt to replace a connection gave up. A
    request that comes later starts a new one; requests already waiting would not, and waited
    out their `timeout` though the database came back meanwhile: for them, one starts now
    (`check()` grows an empty pool). Attempts go on about once a second while any waits."""
    if pool.get_stats().get("requests_waiting"):
        pool.check()


def database_from_url(name: str, default_sqlite_path: str) -> dict:
    """Django DATABASES['default'] from a URL: sqlite:///path or postgres://user:pw@host:port/db."""
    raw = env_str(name)
    if not raw:
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": default_sqlite_path}
    parts = urlsplit(raw)
    if parts.scheme == "sqlite":
        path = unquote(parts.path)
        if path.startswith("//"):  # sqlite:////abs/path, the usual spelling of an absolute path
            path = path[1:]
        if parts.netloc:  # sqlite://relative/path is a mistake worth naming
            raise ImproperlyConfigured(f"{name}={raw!r}: use sqlite:////absolute/path.")
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": path or default_sqlite_path}
    if parts.scheme in {"postgres", "postgresql", "pgsql"}:
        if not parts.path.strip("/"):
            raise ImproperlyConfigured(f"{name}={raw!r} names no database.")
        options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")),
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
            # A pool (psycopg_pool): under ASGI each request's database work runs on a thread
            # of its own, and a new connection per step (TCP, a forked backend, SCRAM) cost
            # more than the queries. Query options override the pool's size.
            # A broken connection is replaced by a connection attempt that, while the database
            # is away, retries after 1, 2, 4, 8… s (psycopg_pool's backoff) for
            # `reconnect_timeout` s, and a request waits for that attempt rather than start
            # one. At the default 300 s, a database back after a 20 s outage was not tried
            # again for ten more: each request meanwhile waited out `timeout` and got a 503.
            # At 2 s the attempts stop after three tries: the next request starts anew, and
            # for those already waiting `_connect_again_for_waiters` does.
            "OPTIONS": {
                "pool": {
                    "min_size": 2,
                    "max_size": 16,
                    "timeout": 10,
                    "reconnect_timeout": 2,
                    "reconnect_failed": _connect_again_for_waiters,
                },
                **options,
            },
            "CONN_MAX_AGE": 0,
        }
    raise ImproperlyConfigured(
        f"{name}={raw!r}: unsupported scheme {parts.scheme!r} (use sqlite:// or postgres://)."
    )
