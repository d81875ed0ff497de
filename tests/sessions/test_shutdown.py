"""A stopped server ends its sessions itself: SIGTERM (or SIGINT, as Ctrl-C in `make run`) to a
real Daphne with live sessions leaves them `ended` with `server_shutdown` and every pending
request `failed` with `session_ended`, before the process exits; nothing is left for another
process to find `session_lost`."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import httpx
import pytest
from openai import AsyncOpenAI

from apps.simulator.server import SimulatorConfig
from tests.support.realtime import user_text
from tests.support.servers import EMBEDDED_SIMULATOR, ROOT, DaphneProcess, SimulatorThread
from tests.support.sse import Follower

pytestmark = [pytest.mark.e2e, EMBEDDED_SIMULATOR]


def _manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _rows(db_path, sql: str) -> list[tuple]:
    with sqlite3.connect(db_path) as db:
        return db.execute(sql).fetchall()


@pytest.fixture
def slow_simulator():
    thread = SimulatorThread(SimulatorConfig(deltas_per_response=400, delta_interval=0.05))
    yield thread
    thread.stop()


@pytest.fixture
def server_env(tmp_path, slow_simulator, migrated_sqlite):
    db_path = migrated_sqlite(tmp_path / "shutdown.sqlite3")
    env = {
        "DATABASE_URL": f"sqlite:///{db_path}",
        "OC_UPSTREAM_URL": slow_simulator.url,
        "OPENAI_API_KEY": "",
        "OC_RECORD_AUDIO": "true",
    }
    return env, migrated_sqlite.token, db_path


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT])
async def test_a_stopped_server_ends_its_sessions_and_fails_their_pending_requests(server_env, how):
    env, token, db_path = server_env
    server = DaphneProcess(env)
    try:
        client = AsyncOpenAI(api_key=token, websocket_base_url=server.ws_base)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            session_id = (await conn.recv()).session.id
            await conn.input_audio_buffer.append(audio=base64.b64encode(bytes(9600)).decode())
            await conn.conversation.item.create(item=user_text("talk for a while"))
            await conn.response.create()  # streams for 20 s
            await conn.response.create()  # waits behind it
            while (await conn.recv()).type != "response.output_text.delta":
                pass
            async with httpx.AsyncClient(
                base_url=server.http_url, headers={"Authorization": f"Bearer {token}"}
            ) as rest:
                nudge = await rest.post(
                    f"/api/v1/sessions/{session_id}/responses", json={"instructions": "Wrap up."}
                )
            assert nudge.status_code == 202
            server.proc.send_signal(how)
            with pytest.raises(Exception) as closed:  # noqa: PT011 - the SDK raises websockets' ConnectionClosed
                while True:
                    await asyncio.wait_for(conn.recv(), 10)
        assert getattr(closed.value, "rcvd", None) is not None and closed.value.rcvd.code == 1012, (
            repr(closed.value)
        )
        exit_code = await asyncio.to_thread(server.proc.wait, 15)
        assert exit_code == 0, server.output()[-20000:]
    finally:
        server.stop()
    sessions = _rows(db_path, "SELECT upstream_id, status, end_reason FROM oc_sessions_livesession")
    assert sessions == [(session_id, "ended", "server_shutdown")], server.output()
    [(recording,)] = _rows(db_path, "SELECT recording FROM oc_sessions_livesession")
    assert recording, "the call's recording is written before the process exits"
    (ROOT / "var" / "media" / recording).unlink()
    requests = _rows(
        db_path,
        "SELECT origin, status, error_code FROM oc_sessions_responserequest ORDER BY created_at",
    )
    assert requests == [
        ("caller", "failed", "session_ended"),
        ("caller", "failed", "session_ended"),
        ("api", "failed", "session_ended"),
    ]


async def test_a_stop_waits_for_a_database_lock_let_go_within_its_grace(server_env):
    """Another connection (a long transaction of another process, a backup) holds SQLite's
    write lock when the server is told to stop, for longer than the stop used to wait, and
    an API request is writing behind it. Once the lock is let go, within the stop's grace,
    the sessions' ends are written and the request's thread finishes while the event loop
    still runs: the process exits cleanly, nothing left for a sweep to find lost. The stop
    used to give up after 5 s; the request's thread, woken after the loop had stopped,
    then waited for it forever, and the process never exited."""
    from apps.sessions.housekeeping import STOP_GRACE

    env, token, db_path = server_env
    hold = 5.5  # longer than the stop used to wait (5 s), well within its grace
    assert hold <= STOP_GRACE - 1.5
    server = DaphneProcess(env)
    lock = sqlite3.connect(db_path, isolation_level=None)
    try:
        client = AsyncOpenAI(api_key=token, websocket_base_url=server.ws_base)
        async with client.realtime.connect(model="gpt-realtime") as conn, httpx.AsyncClient(
            base_url=server.http_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as rest:
            session_id = (await conn.recv()).session.id
            await conn.conversation.item.create(item=user_text("talk for a while"))
            await conn.response.create()  # streams for 20 s
            await conn.response.create()  # waits behind it
            while (await conn.recv()).type != "response.output_text.delta":
                pass
            lock.execute("BEGIN IMMEDIATE")
            nudge = asyncio.ensure_future(
                rest.post(f"/api/v1/sessions/{session_id}/responses", json={"instructions": "Go"})
            )
            server.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            with pytest.raises(Exception):  # noqa: PT011, B017 - websockets' ConnectionClosed
                while True:
                    await asyncio.wait_for(conn.recv(), 10)
            # The lock is what this test is about: held this long after the signal.
            await asyncio.sleep(hold - (time.monotonic() - signalled))
            assert server.proc.poll() is None, "the stop waits for the database"
            lock.execute("ROLLBACK")
            exit_code = await asyncio.to_thread(server.proc.wait, 10)
            await asyncio.gather(nudge, return_exceptions=True)
        assert exit_code == 0, server.output()[-5000:]
    finally:
        lock.close()
        server.stop()
    sessions = _rows(db_path, "SELECT upstream_id, status, end_reason FROM oc_sessions_livesession")
    assert sessions == [(session_id, "ended", "server_shutdown")], server.log_path.read_text()
    requests = _rows(db_path, "SELECT status, error_code FROM oc_sessions_responserequest")
    assert len(requests) >= 2 and set(requests) == {("failed", "session_ended")}, requests


async def test_after_make_run_is_stopped_and_started_again_no_earlier_session_failed(
    tmp_path, migrated_sqlite
):
    """`make run`'s shape: Daphne on the embedded simulator with demo callers, stopped with
    Ctrl-C (SIGINT to both), then started again on the same database."""
    db_path = migrated_sqlite(tmp_path / "run.sqlite3")
    env = {
        "DATABASE_URL": f"sqlite:///{db_path}",
        "OC_UPSTREAM_URL": "",
        "OPENAI_API_KEY": "",
        "OC_SIM_INTERVAL": "0.02",
    }
    server = DaphneProcess(env)
    callers = await asyncio.create_subprocess_exec(
        sys.executable,
        "manage.py",
        "demo_callers",
        "--count",
        "3",
        "--url",
        server.ws_base,
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Up to 60 s for the three sessions to be live: the callers' process starts Django and
        # the SDK first, which took more than 10 s on a loaded 2-core CI machine. How soon
        # they are live is not what this test is about; what the restart finds is.
        deadline = time.monotonic() + 60
        while True:
            live = _rows(
                db_path, "SELECT COUNT(*) FROM oc_sessions_livesession WHERE status = 'live'"
            )[0][0]
            if live >= 3 or callers.returncode is not None or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert live >= 3, (callers.returncode, server.output())
        server.proc.send_signal(signal.SIGINT)
        callers.send_signal(signal.SIGINT)
        exit_code = await asyncio.to_thread(server.proc.wait, 15)
        assert exit_code == 0, server.output()[-20000:]
    finally:
        if callers.returncode is None:
            callers.kill()
        await callers.wait()
        server.stop()
    restarted = DaphneProcess(env)
    try:
        token = _manage(env, "create_api_token", "--name", "after-restart").strip().splitlines()[-1]
        async with httpx.AsyncClient(
            base_url=restarted.http_url, headers={"Authorization": f"Bearer {token}"}
        ) as rest:
            sessions = (await rest.get("/api/v1/sessions")).json()["items"]
    finally:
        restarted.stop()
    assert len(sessions) >= 3
    assert {(s["status"], s["end_reason"]) for s in sessions} <= {
        ("ended", "server_shutdown"),
        ("ended", "caller_closed"),
    }, sessions


async def test_event_streams_whose_clients_leave_as_the_server_stops_leave_no_traceback(
    server_env,
):
    """Daphne cancels the streams still open when it stops; Django's handler, cancelled,
    left its disconnect listener to raise `RequestAborted` unretrieved, a traceback at each
    restart (operator_console/asgi.py, `EndDisconnectListeners`)."""
    env, token, _ = server_env
    server = DaphneProcess(env)
    try:
        async with httpx.AsyncClient(
            base_url=f"{server.http_url}/api/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(10, read=60),
        ) as rest:
            followers = [await Follower(rest, "/events").start() for _ in range(3)]
            assert all(f.status == 200 for f in followers)
        server.proc.send_signal(signal.SIGTERM)  # as the clients' connections close
        exit_code = await asyncio.to_thread(server.proc.wait, 15)
    finally:
        server.stop()
    log = server.log_path.read_text()
    assert exit_code == 0, log[-5000:]
    assert "Traceback" not in log, log[-5000:]


def test_tasks_a_stopped_loop_will_never_resume_are_closed_at_exit():
    """The shape that crashed Python 3.11.7 at exit (gh-113566): a task waiting in
    asyncio.Queue.get, woken by a put, and the loop stopped before it ran again."""
    from apps.sessions.housekeeping import finish_unfinished_tasks

    loop = asyncio.new_event_loop()
    try:
        queue: asyncio.Queue = asyncio.Queue()
        waiting = loop.create_task(queue.get())
        loop.run_until_complete(asyncio.sleep(0))  # the task now waits in get()
        queue.put_nowait("woken, never run")
        coroutine = waiting.get_coro()
        assert coroutine.cr_frame is not None
        assert finish_unfinished_tasks(loop) == 1
        assert waiting.cancelled()  # ended now, not by the garbage collector at exit
        assert coroutine.cr_frame is None
    finally:
        loop.close()


@pytest.mark.django_db(transaction=True)
async def test_a_stop_the_database_takes_no_write_in_still_says_goodbye_within_its_grace(
    monkeypatch,
):
    """The database keeps its lock past the stop's grace: the stop gives up waiting at the
    grace, leaving the sessions' ends to the sweep, and still closes its operators' sockets
    and streams (`farewells`) rather than fail before them."""
    from django.db import connection

    from apps.sessions import housekeeping as module
    from apps.sessions.history import writer as history

    said = []

    async def goodbye():
        said.append("goodbye")

    monkeypatch.setattr(module, "farewells", [goodbye])
    holder = sqlite3.connect(connection.settings_dict["NAME"], isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        await module.housekeeping().shutdown(grace=0.3)
        assert time.monotonic() - started < 2
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert said == ["goodbye"]
    await history.flush()


def test_a_stop_that_outlives_its_grace_ends_the_process_all_the_same(monkeypatch):
    from apps.sessions import housekeeping as module

    exited = threading.Event()
    statuses = []

    def fake_exit(status: int) -> None:
        statuses.append(status)
        exited.set()

    monkeypatch.setattr(module.os, "_exit", fake_exit)
    timer = module.exit_at_the_latest(0.05)
    assert exited.wait(5), "the process was not ended"
    timer.join(5)
    assert statuses == [1]


@pytest.mark.django_db(transaction=True)
async def test_a_stop_waits_for_the_http_requests_being_answered_within_its_grace(monkeypatch):
    """A request held up as the server stops (its write behind a lock the stop waited out)
    comes back to the event loop: the stop waits for it, within its grace, since a thread of
    Django's that came back to a stopped loop would wait for it for ever."""
    from apps.sessions import housekeeping as module

    monkeypatch.setattr(module, "farewells", [])
    keeper = module.Housekeeping()
    keeper.request_began()
    answered = []

    async def answer_later():
        await asyncio.sleep(0.3)
        answered.append(time.monotonic())
        keeper.request_ended()

    started = time.monotonic()
    later = asyncio.ensure_future(answer_later())
    await keeper.shutdown(grace=5)
    assert answered, "the stop waited for the answer"
    assert time.monotonic() - started < 2, "and no longer"
    await later
    # One that never comes back is waited for no longer than the grace.
    keeper = module.Housekeeping()
    keeper.request_began()
    started = time.monotonic()
    await keeper.shutdown(grace=0.2)
    assert 0.2 <= time.monotonic() - started < 2
