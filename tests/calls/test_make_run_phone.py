"""`make run`, then `simulate_sip_call` in another shell, as the README says: the command finds
the embedded simulator (`var/simulator.url`) and the development webhook secret `make run`
made (`var/webhook-secret`), and the console answers the phone call."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from openai import AsyncOpenAI

from devtools.services import ReservedPort
from tests.support.servers import EMBEDDED_SIMULATOR, ROOT

pytestmark = [pytest.mark.e2e, EMBEDDED_SIMULATOR]


def test_a_phone_call_simulated_beside_make_run_is_answered(tmp_path):
    # A reserved port: a free one could be taken by another worker's server before `make run`
    # binds it, and its /healthz would answer for it (another database: the token unknown).
    reserved = ReservedPort()
    port = reserved.port
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'run.sqlite3'}",
        "OC_UPSTREAM_URL": "",
        "OPENAI_API_KEY": "",
        "OPENAI_WEBHOOK_SECRET": "",  # make run's own development secret, not one from outside
        "OC_SIM_AUDIO_PACE": "0",
    }
    log = open(tmp_path / "make-run.log", "w")  # noqa: SIM115 - closed below
    run = subprocess.Popen(
        ["make", "--no-print-directory", "run", f"PORT={port}", "DEMO_CALLERS=0"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert run.poll() is None, (tmp_path / "make-run.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "make-run.log").read_text()
            time.sleep(0.2)
        # The embedded simulator starts with the first session: a token's first use of the
        # REST hook does not start it, so a relay connection is opened first.
        token = subprocess.run(
            [sys.executable, "manage.py", "create_api_token", "--name", "phone"],
            cwd=ROOT, env=env, capture_output=True, text=True, check=True,
        ).stdout.strip().splitlines()[-1]
        async def start_the_simulator() -> None:
            client = AsyncOpenAI(api_key=token, websocket_base_url=f"ws://127.0.0.1:{port}/v1")
            async with client.realtime.connect(model="gpt-realtime") as connection:
                await connection.recv()  # session.created: the embedded simulator runs

        asyncio.run(start_the_simulator())
        called = subprocess.run(
            [sys.executable, "manage.py", "simulate_sip_call", "--to", "+15550100", "--from", "+15557654321",
             "--webhook-url", f"http://127.0.0.1:{port}/v1/webhooks/openai"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )
        assert called.returncode == 0, called.stderr + (tmp_path / "make-run.log").read_text()[-5000:]
        call_id = called.stdout.strip().splitlines()[-1]
        assert call_id.startswith("rtc_")
        deadline = time.monotonic() + 20
        while True:
            items = httpx.get(
                f"http://127.0.0.1:{port}/api/v1/sessions", headers={"Authorization": f"Bearer {token}"}
            ).json()["items"]
            phone = [s for s in items if s["call_id"] == call_id]
            if phone and phone[0]["status"] == "live":
                break
            assert time.monotonic() < deadline, items
            time.sleep(0.2)
        assert phone[0]["kind"] == "sip"
        assert phone[0]["caller_number"] == "+15557654321" and phone[0]["dialled_number"] == "+15550100"
    finally:
        os.killpg(run.pid, signal.SIGINT)
        try:
            run.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        log.close()
        reserved.release()
