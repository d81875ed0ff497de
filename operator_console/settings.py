"""Settings, read from the environment (CONTRACT.md "Settings")."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from operator_console.env import (
    database_from_url,
    env_bool,
    env_float,
    env_int,
    env_list,
    env_log_level,
    env_str,
    env_ws_url,
)
from operator_console.prices import prices_from_env

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

DEBUG = env_bool("DJANGO_DEBUG", True)

SECRET_KEY = env_str("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is false.")
    SECRET_KEY = "dev-only-insecure-secret-key-do-not-use-in-production"

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
if not DEBUG and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("DJANGO_ALLOWED_HOSTS must be set when DJANGO_DEBUG is false.")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.humanize",
    "django.contrib.staticfiles",
    "channels",
    "ninja",  # its static files: the /api/v1/docs page
    "apps.realtime",
    "apps.simulator",
    "apps.sessions",
    "apps.events",
    "apps.api",
    "apps.console",
    "apps.calls",
    "axes",  # login throttling: last, so its checks see the apps before it
]

# WhiteNoise's middleware is synchronous only. Under Django's ASGI handler every middleware
# between it and the (async) views then runs in async mode, and Django's own middleware
# hops to a thread and back for each of its hooks; innermost, it puts the whole chain in one
# thread, called once, which calls the view back on the event loop (bench/RESULTS.md).
# AxesMiddleware wraps every view: it turns a locked-out login into its answer.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "operator_console.unavailable.DatabaseUnavailableMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "apps.console.timezones.operator_timezone",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
]

ROOT_URLCONF = "operator_console.urls"
ASGI_APPLICATION = "operator_console.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

VAR_DIR.mkdir(exist_ok=True)
DATABASES = {"default": database_from_url("DATABASE_URL", str(VAR_DIR / "db.sqlite3"))}
# Connections are not kept between requests: under ASGI, Django runs each request's sync code
# on a thread of its own, so a kept connection would be one per finished request, left for
# the garbage collector. The database threads of apps/sessions/db.py last, and keep SQLite's.
DATABASES["default"]["CONN_MAX_AGE"] = 0
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # A file, not memory, for the test database too: the history writer's thread and the
    # test's own thread must see one database.
    # A file (not :memory:) so Daphne subprocesses share the tests' database. OC_TEST_DB
    # names another file, for two test runs side by side.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / (env_str("OC_TEST_DB") or "test.sqlite3"))}
    # WAL lets readers (admin, API) proceed while the history writer commits.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    from redis.exceptions import ConnectionError as RedisConnectionError

    CHANNEL_LAYERS = {
        "default": {
            # channels_redis' layer, with a warning line where a Redis outage left a traceback
            "BACKEND": "apps.sessions.layers.RedisChannelLayer",
            # redis-py's pool holds at most 100 connections by default and refuses the 101st
            # command in flight (MaxConnectionsError) instead of waiting: when a few hundred
            # callers left at once, their group leaves failed. Redis itself takes 10 000.
            # After Redis restarts, the pool's idle connections are to the Redis that is gone:
            # a command that fails on one is tried once more, on a fresh connection (without
            # it, the first steer through an idle process failed with 503).
            # A consumer waits for its messages in a pop that Redis answers after 5 s
            # (channels_redis' brpop_timeout) when none came: a read must wait longer than
            # that. redis-py's default, 5 s too, raced it: the wait timed out as Redis answered.
            "CONFIG": {
                "hosts": [
                    {
                        "address": REDIS_URL,
                        "max_connections": env_int("OC_REDIS_MAX_CONNECTIONS", 1000, minimum=1),
                        "retry_on_error": [RedisConnectionError],
                        "socket_timeout": 15,
                    }
                ]
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
# Login throttling (django-axes): 5 failed logins for one username from one address lock that
# pair out for 15 minutes (the login page says so, 429); a success resets the count. Only the
# login form authenticates through Django: API tokens and the WebSocket paths never pass here.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = 5
AXES_COOLOFF_TIME = timedelta(minutes=15)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_DISABLE_ACCESS_LOG = True  # failures are recorded; a row per successful login is not
AXES_LOCKOUT_CALLABLE = "apps.console.views.locked_out"
AXES_VERBOSE = False

# Content-Security-Policy on every answer: no inline script or style anywhere (the pages'
# scripts are static ES modules); the console's sockets are same-origin.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/console/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"  # collectstatic target; WhiteNoise also serves from the finders
STATIC_ROOT.mkdir(exist_ok=True)
# WhiteNoise serves the static files itself (collectstatic not needed): `daphne … asgi:application`
# alone serves a complete console.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
CSRF_FAILURE_VIEW = "apps.console.views.csrf_failure"
X_FRAME_OPTIONS = "DENY"
# Read under DEBUG too, where it does nothing, so that a bad value stops start-up there as well.
_secure_cookies = env_bool("DJANGO_SECURE_COOKIES", True)
if not DEBUG:
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = _secure_cookies
    # HSTS on answers to HTTPS requests (SecurityMiddleware sends it only on those): a year.
    SECURE_HSTS_SECONDS = 365 * 24 * 3600
    SECURE_HSTS_INCLUDE_SUBDOMAINS = False  # other hosts of the domain are not ours to decide
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

# --- Operator Console -------------------------------------------------------------------
OC_UPSTREAM_URL = env_ws_url("OC_UPSTREAM_URL")  # empty → embedded simulator
OPENAI_API_KEY = env_str("OPENAI_API_KEY")
OC_REALTIME_MODEL = env_str("OC_REALTIME_MODEL", "gpt-realtime") or "gpt-realtime"
# Calls that do not pass through the relay (CONTRACT section 7): the upstream's webhooks are
# verified with this secret (empty: every webhook is refused); a phone call to a number no call
# profile names is rejected when OC_SIP_REJECT_UNKNOWN, else answered with the default profile.
OPENAI_WEBHOOK_SECRET = env_str("OPENAI_WEBHOOK_SECRET")
OC_SIP_REJECT_UNKNOWN = env_bool("OC_SIP_REJECT_UNKNOWN", False)
# USD per 1M tokens, per model and token type: the defaults of operator_console/prices.py,
# with the models of OC_PRICES (JSON) over them. Turns usage into `cost_usd`.
OC_PRICES = prices_from_env("OC_PRICES")
# How long a sent response.create may wait for response.created before it fails.
OC_SEND_TIMEOUT = env_float("OC_SEND_TIMEOUT", 15.0, minimum=0.1)
# A response in progress with no upstream event for this long (checked at this interval, so
# noticed within twice it) means the upstream stalled: the caller is told and the session ends.
OC_UPSTREAM_STALL_TIMEOUT = env_float("OC_UPSTREAM_STALL_TIMEOUT", 30.0, minimum=0.1)
# How long the upstream may take to open and send session.created.
OC_UPSTREAM_CONNECT_TIMEOUT = env_float("OC_UPSTREAM_CONNECT_TIMEOUT", 10.0, minimum=0.1)
# Seconds before an attached call's sideband that failed to open is tried again, doubled
# after each failure in a row (apps/realtime/attached.py).
OC_SIDEBAND_RETRY_DELAY = env_float("OC_SIDEBAND_RETRY_DELAY", 0.25, minimum=0.0)
# A relayed session older than this (seconds) moves, between responses, to a fresh upstream
# session given its configuration and conversation (the service's cap is 60 minutes); 0: never.
OC_ROTATE_AFTER = env_float("OC_ROTATE_AFTER", 3000.0, minimum=0.0)
# An agent's request to run a tool that needs approval (MCP `require_approval`) waits this
# long (seconds) for an operator's decision; then it is denied, and recorded `expired`.
OC_APPROVAL_TIMEOUT = env_float("OC_APPROVAL_TIMEOUT", 30.0, minimum=0.1)
# Most requests that may wait in one session's queue; beyond it the REST hook answers 429.
OC_QUEUE_LIMIT = env_int("OC_QUEUE_LIMIT", 32, minimum=32)  # CONTRACT: at least 32
# How often each process looks in the table for operator requests whose ping was lost.
OC_PICKUP_INTERVAL = env_float("OC_PICKUP_INTERVAL", 2.0, minimum=0.05)
# REST hook rate limit per token and process: requests a second on average, and bursts.
OC_API_RATE = env_float("OC_API_RATE", 200.0, minimum=0.01)
OC_API_BURST = env_int("OC_API_BURST", 400, minimum=1)
# Most live sessions one process holds; a caller beyond it is told so and closed with 1013.
OC_MAX_SESSIONS = env_int("OC_MAX_SESSIONS", 1000, minimum=1)
# Each process stamps its sessions' heartbeat this often; a session whose heartbeat is older
# than OC_SESSION_STALE_AFTER belongs to a process that died, and any live process fails it.
OC_HEARTBEAT_INTERVAL = env_float("OC_HEARTBEAT_INTERVAL", 3.0, minimum=0.05)
OC_SESSION_STALE_AFTER = env_float("OC_SESSION_STALE_AFTER", 10.0, minimum=0.1)
if OC_SESSION_STALE_AFTER < 2 * OC_HEARTBEAT_INTERVAL:
    raise ImproperlyConfigured(
        f"OC_SESSION_STALE_AFTER={OC_SESSION_STALE_AFTER:g} must be at least twice "
        f"OC_HEARTBEAT_INTERVAL={OC_HEARTBEAT_INTERVAL:g}, or live sessions would be failed."
    )
# How long a cancel, note or interrupt waits for the session's actor to answer.
OC_ACTOR_REPLY_TIMEOUT = env_float("OC_ACTOR_REPLY_TIMEOUT", 5.0, minimum=0.1)
# How many server processes the deployment runs (WEB_CONCURRENCY is the platforms' spelling).
# More than one needs REDIS_URL: a system check refuses the in-memory channel layer then.
OC_PROCESSES = env_int("OC_PROCESSES", 1, minimum=1)
WEB_CONCURRENCY = env_int("WEB_CONCURRENCY", 1)
# Recordings of voice sessions (CONTRACT section 6): both sides to a stereo WAV, stored through
# Django's default storage (MEDIA_ROOT by default; any django-storages backend through
# STORAGES["default"]). Deleted after the retention by `manage.py delete_old_recordings`.
OC_RECORD_AUDIO = env_bool("OC_RECORD_AUDIO", False)
OC_RECORDING_RETENTION_DAYS = env_int("OC_RECORDING_RETENTION_DAYS", 30, minimum=1)
MEDIA_ROOT = VAR_DIR / "media"
# Recordings are people's voices: on disk, only the user the console runs as may read them
# (Django's default follows the umask, usually readable by every account on the machine).
FILE_UPLOAD_PERMISSIONS = 0o600
FILE_UPLOAD_DIRECTORY_PERMISSIONS = 0o700
# Ended sessions older than this many days are deleted, with their requests and recordings, by
# `manage.py delete_old_sessions`; 0 keeps them all.
OC_HISTORY_RETENTION_DAYS = env_int("OC_HISTORY_RETENTION_DAYS", 0, minimum=0)
# Event log (GET /api/v1/events, webhooks): events are kept this long (at least the 10 minutes
# a reconnecting script may ask for); other processes' events are polled this often; a
# follower with this many events unsent is too slow and dropped; a comment this often keeps
# idle streams open.
OC_EVENTS_RETENTION = env_float("OC_EVENTS_RETENTION", 900.0, minimum=600.0)
OC_EVENTS_POLL_INTERVAL = env_float("OC_EVENTS_POLL_INTERVAL", 0.25, minimum=0.01)
OC_EVENTS_FOLLOWER_QUEUE = env_int("OC_EVENTS_FOLLOWER_QUEUE", 2000, minimum=1)
OC_EVENTS_KEEPALIVE = env_float("OC_EVENTS_KEEPALIVE", 15.0, minimum=0.1)
# What one credential may hold open at once in this process (N processes: N times as much):
# event streams per API token (one more is a 429), listen-in sockets per operator (one more
# is closed with 4429). Each costs the process memory, and each listener a copy of the audio.
OC_MAX_STREAMS_PER_TOKEN = env_int("OC_MAX_STREAMS_PER_TOKEN", 10, minimum=1)
OC_MAX_LISTENERS_PER_USER = env_int("OC_MAX_LISTENERS_PER_USER", 4, minimum=1)
# Outbound webhooks: a failed delivery is tried again after OC_WEBHOOK_RETRY_BASE seconds,
# doubling up to OC_WEBHOOK_RETRY_MAX, for OC_WEBHOOK_RETRY_FOR seconds, then `failed`.
OC_WEBHOOK_RETRY_BASE = env_float("OC_WEBHOOK_RETRY_BASE", 5.0, minimum=0.01)
OC_WEBHOOK_RETRY_MAX = env_float("OC_WEBHOOK_RETRY_MAX", 3600.0, minimum=0.01)
OC_WEBHOOK_RETRY_FOR = env_float("OC_WEBHOOK_RETRY_FOR", 86400.0, minimum=1.0)
OC_WEBHOOK_TIMEOUT = env_float("OC_WEBHOOK_TIMEOUT", 10.0, minimum=0.1)
OC_WEBHOOK_INTERVAL = env_float("OC_WEBHOOK_INTERVAL", 1.0, minimum=0.01)
# Whether this process sends them (off: deliveries wait for a process that does).
OC_WEBHOOK_SEND = env_bool("OC_WEBHOOK_SEND", True)
# Embedded simulator stream shape (only used when OC_UPSTREAM_URL is empty).
OC_SIM_DELTAS = env_int("OC_SIM_DELTAS", 8, minimum=1)
OC_SIM_INTERVAL = env_float("OC_SIM_INTERVAL", 0.05)
# Its spoken replies' pace as a realtime factor: 1.0 real time, 0 as fast as possible.
OC_SIM_AUDIO_PACE = env_float("OC_SIM_AUDIO_PACE", 1.0)
# Its cap on a session's life, as the service's (60 minutes): at it the session expires.
OC_SIM_MAX_SESSION_SECONDS = env_float("OC_SIM_MAX_SESSION_SECONDS", 3600.0, minimum=0.1)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_log_level("OC_LOG_LEVEL", "INFO")},
    "loggers": {
        # Django's own handlers on `django` (a console one with DEBUG on, mail to admins
        # without) are replaced by none: its lines reach the root's handler once, not twice.
        "django": {"level": "INFO"},
        "daphne": {"level": "WARNING"},
        "websockets": {"level": "WARNING"},
        "axes": {"level": "WARNING"},
    },
}
