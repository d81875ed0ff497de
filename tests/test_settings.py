"""Settings come from the environment; a bad value stops start-up naming the variable."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from operator_console import env
from tests.support.servers import ROOT


@pytest.mark.parametrize("raw", ["true", "TRUE", "1", "yes", "Yes"])
def test_true_spellings(monkeypatch, raw):
    monkeypatch.setenv("X_FLAG", raw)
    assert env.env_bool("X_FLAG", False) is True


@pytest.mark.parametrize("raw", ["false", "False", "0", "no", "NO"])
def test_false_spellings(monkeypatch, raw):
    monkeypatch.setenv("X_FLAG", raw)
    assert env.env_bool("X_FLAG", True) is False


def test_bad_boolean_names_the_variable(monkeypatch):
    monkeypatch.setenv("X_FLAG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="X_FLAG"):
        env.env_bool("X_FLAG", True)


def test_database_urls():
    os.environ.pop("X_DB", None)
    assert env.database_from_url("X_DB", "/tmp/d.sqlite3")["NAME"] == "/tmp/d.sqlite3"
    os.environ["X_DB"] = "postgres://u:p%40ss@db.local:5433/oc"
    try:
        db = env.database_from_url("X_DB", "")
        assert (db["ENGINE"], db["USER"], db["PASSWORD"], db["HOST"], db["PORT"], db["NAME"]) == (
            "django.db.backends.postgresql", "u", "p@ss", "db.local", "5433", "oc"
        )
        os.environ["X_DB"] = "sqlite:////var/tmp/x.sqlite3"
        assert env.database_from_url("X_DB", "")["NAME"] == "/var/tmp/x.sqlite3"
        os.environ["X_DB"] = "mysql://x/y"
        with pytest.raises(ImproperlyConfigured, match="X_DB"):
            env.database_from_url("X_DB", "")
    finally:
        del os.environ["X_DB"]


def test_upstream_url_must_be_a_websocket_url(monkeypatch):
    monkeypatch.setenv("OC_UPSTREAM_URL", "https://api.openai.com/v1")
    with pytest.raises(ImproperlyConfigured, match="OC_UPSTREAM_URL"):
        env.env_ws_url("OC_UPSTREAM_URL")
    monkeypatch.setenv("OC_UPSTREAM_URL", "wss://api.openai.com/v1/")
    assert env.env_ws_url("OC_UPSTREAM_URL") == "wss://api.openai.com/v1"


@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "Infinity"])
def test_a_number_of_seconds_must_be_finite(monkeypatch, raw):
    monkeypatch.setenv("OC_SEND_TIMEOUT", raw)
    with pytest.raises(ImproperlyConfigured, match="OC_SEND_TIMEOUT"):
        env.env_float("OC_SEND_TIMEOUT", 15.0, minimum=0.1)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DJANGO_DEBUG", "sometimes"),
        ("OC_UPSTREAM_URL", "api.openai.com"),
        ("OC_SEND_TIMEOUT", "soon"),
        ("OC_LOG_LEVEL", "verbose"),
        ("OC_MAX_STREAMS_PER_TOKEN", "0"),  # below its minimum of 1: no stream at all
    ],
)
def test_start_up_stops_with_a_message_naming_the_variable(variable, value):
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**os.environ, variable: value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert variable in result.stderr


SETTINGS_SOURCE = (ROOT / "operator_console" / "settings.py").read_text()
BOOLEANS = re.findall(r'env_bool\(\s*"(\w+)"', SETTINGS_SOURCE)


@pytest.mark.parametrize("variable", BOOLEANS)
def test_every_boolean_setting_refuses_a_bad_value_at_start_up(variable):
    """Each boolean the settings read, whatever the other settings (DEBUG on here): one read
    only in some configurations would let a typo through until the day it matters."""
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**os.environ, variable: "maybe"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and f"{variable}='maybe' is not a boolean" in result.stderr


def test_production_needs_a_secret_key():
    environ = {k: v for k, v in os.environ.items() if k != "DJANGO_SECRET_KEY"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**environ, "DJANGO_DEBUG": "false", "DJANGO_ALLOWED_HOSTS": "example.com"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "DJANGO_SECRET_KEY" in result.stderr


# Variables read where no user sets them: pytest-xdist's worker name, and a URL one test sets
# for itself.
NOT_SETTINGS = {"PYTEST_XDIST_WORKER", "OC_POOL_TEST_URL"}


def test_the_readme_table_names_every_setting():
    """Each variable the code reads (settings.py, a command, the tests and their servers) has a
    row in the README's settings table, where users look."""
    read = r'(?:env_\w+|os\.environ\.get|database_from_url|prices_from_env)\(\s*"([A-Z][A-Z0-9_]+)"'
    sources = [ROOT / "operator_console" / "settings.py"]
    sources += [*(ROOT / "apps").rglob("*.py"), *(ROOT / "devtools").rglob("*.py")]
    # This module's own readers take made-up names (X_FLAG), to test the readers themselves.
    sources += [path for path in (ROOT / "tests").rglob("*.py") if path.name != "test_settings.py"]
    names = {name for path in sources for name in re.findall(read, path.read_text())} - NOT_SETTINGS
    assert {"OC_UPSTREAM_URL", "DATABASE_URL", "OC_CHROMIUM"} <= names, "the pattern misses readers"
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Settings (environment)", 1)[1].split("\n## ", 1)[0]
    rows = "\n".join(line for line in table.splitlines() if line.startswith("| `"))
    assert sorted(name for name in names if f"`{name}`" not in rows) == []


def test_a_django_log_line_is_printed_once_with_debug_on():
    """`make run` runs with DEBUG on, where Django's own console handler on the `django` logger
    printed each of its lines (every refused request) a second time beside the root's."""
    script = (
        "import django, logging; django.setup(); "
        "logging.getLogger('django.request').warning('Forbidden (printed once?)')"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "operator_console.settings",
            "DJANGO_DEBUG": "true",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("Forbidden (printed once?)") == 1, result.stderr
