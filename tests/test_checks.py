"""The system check that refuses several processes on the in-memory channel layer."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from apps.sessions.checks import several_processes_need_redis
from tests.support.servers import ROOT

IN_MEMORY = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
REDIS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": ["redis://127.0.0.1:6379/0"]},
    }
}


@pytest.fixture
def in_memory(settings):
    settings.REDIS_URL = ""
    settings.CHANNEL_LAYERS = IN_MEMORY
    settings.OC_PROCESSES = 1
    settings.WEB_CONCURRENCY = 1
    return settings


def test_one_process_on_the_in_memory_layer_is_fine(in_memory):
    assert several_processes_need_redis() == []


@pytest.mark.parametrize(
    ("name", "value"), [("OC_PROCESSES", 2), ("WEB_CONCURRENCY", 4)]
)
def test_several_processes_on_the_in_memory_layer_are_an_error(in_memory, name, value):
    setattr(in_memory, name, value)
    [error] = several_processes_need_redis()
    assert error.id == "oc_sessions.E001"
    assert error.is_serious()
    assert f"{name}={value}" in error.msg and "in-memory channel layer" in error.msg
    assert "REDIS_URL" in error.hint


def test_several_processes_on_redis_are_fine(in_memory):
    in_memory.OC_PROCESSES = 3
    in_memory.WEB_CONCURRENCY = 3
    in_memory.REDIS_URL = "redis://127.0.0.1:6379/0"
    in_memory.CHANNEL_LAYERS = REDIS
    assert several_processes_need_redis() == []


def test_the_check_is_registered(in_memory):
    in_memory.OC_PROCESSES = 2
    with pytest.raises(SystemCheckError, match=r"oc_sessions\.E001"):
        call_command("check")
    in_memory.OC_PROCESSES = 1
    call_command("check")


def _check(tmp_path, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'check.sqlite3'}", **env}
    for name in ("REDIS_URL", "OC_PROCESSES", "WEB_CONCURRENCY"):
        if name not in env:
            full_env.pop(name, None)
    return subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=full_env, capture_output=True,
        text=True, timeout=60,
    )


def test_the_environment_reaches_the_check_through_settings(tmp_path):
    environments = [
        {"OC_PROCESSES": "2"},
        {"WEB_CONCURRENCY": "3"},
        # Redis is not contacted by the check: naming it is enough.
        {"OC_PROCESSES": "2", "REDIS_URL": "redis://127.0.0.1:9/0"},
        {},
        {"OC_PROCESSES": "0"},
    ]
    with ThreadPoolExecutor() as pool:  # five Django start-ups, side by side
        several, web, named, plain, bad = pool.map(lambda env: _check(tmp_path, **env), environments)
    assert several.returncode != 0
    assert "oc_sessions.E001" in several.stderr and "OC_PROCESSES=2" in several.stderr
    assert "Set REDIS_URL" in several.stderr
    assert web.returncode != 0 and "WEB_CONCURRENCY=3" in web.stderr
    assert named.returncode == 0 and plain.returncode == 0
    assert bad.returncode != 0 and "OC_PROCESSES=0 is below the minimum of 1" in bad.stderr


def test_daphne_refuses_to_start_several_processes_on_the_in_memory_layer(tmp_path):
    """`daphne` runs no system checks; the application makes this one as it loads."""
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'check.sqlite3'}", "OC_PROCESSES": "2"}
    for name in ("REDIS_URL", "WEB_CONCURRENCY"):
        env.pop(name, None)
    daphne = os.path.join(os.path.dirname(sys.executable), "daphne")
    refused = subprocess.run(
        [daphne, "-b", "127.0.0.1", "-p", "0", "operator_console.asgi:application"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert refused.returncode != 0
    assert "oc_sessions.E001" in refused.stderr and "OC_PROCESSES=2" in refused.stderr, refused.stderr[-2000:]
    assert "Set REDIS_URL" in refused.stderr


@pytest.mark.django_db
def test_the_migrations_hold_every_model_change():
    """A model changed without its migration works in the tests (they build the schema from
    the models' migrations, which would then miss it) and breaks on a user's database."""
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)
