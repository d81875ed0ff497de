"""Real servers for tests: the simulator in a thread of its own, Daphne as a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import Future
from pathlib import Path

import pytest

from apps.simulator.server import Simulator, SimulatorConfig

ROOT = Path(__file__).resolve().parents[2]
# The Daphne logs of this test run, kept after it for a failure to be read; the next run of
# the same test database (OC_TEST_DB: runs side by side keep apart) starts with it empty. Each
# worker of a parallel run (pytest-xdist) has its own.
LOG_DIR = (
    ROOT / "var" / "test-logs"
    / Path(os.environ.get("OC_TEST_DB") or "test").stem
    / os.environ.get("PYTEST_XDIST_WORKER", "main")
)


# The mark of a test module whose servers run the embedded simulator: each such server writes
# `var/simulator.url`, which `simulate_sip_call` reads (tests/calls/test_make_run_phone.py), so
# these modules run one after another, never side by side (tests/conftest.py).
EMBEDDED_SIMULATOR = pytest.mark.xdist_group("embedded-simulator")


BOOT_TIMEOUT = 30.0  # seconds for a Daphne to listen
QUIET_TIMEOUT = 10.0  # seconds for a Daphne's sessions to end and their rows to be written


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SimulatorThread:
    """A Simulator on its own event loop in a daemon thread, usable from any test loop."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="simulator", daemon=True)
        self.thread.start()
        self.sim: Simulator = self.call(self._start(config))

    async def _start(self, config):
        sim = Simulator(config)
        await sim.start("127.0.0.1", 0)
        return sim

    def call(self, coro, timeout: float = 10.0):
        future: Future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    async def acall(self, coro, timeout: float = 10.0):
        return await asyncio.wait_for(
            asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop)), timeout
        )

    @property
    def url(self) -> str:
        return self.sim.url

    def set_config(self, **changes) -> None:
        for name, value in changes.items():
            setattr(self.sim.config, name, value)

    @contextlib.contextmanager
    def configured(self, **changes):
        """Change the simulator's config for a block; the previous values come back after."""
        before = {name: getattr(self.sim.config, name) for name in changes}
        self.set_config(**changes)
        try:
            yield self
        finally:
            self.set_config(**before)

    def stop(self) -> None:
        try:
            self.call(self.sim.aclose())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)


class DaphneProcess:
    """`daphne operator_console.asgi:application` on a free loopback port.

    A free port is only free when it is looked at: another worker's server (a Daphne, the
    simulator, Redis) may take it before this Daphne binds it. Then that other server answers
    on it while this one fails to bind and exits, and a test would talk to the wrong server
    (another database: "the token is unknown"). So a Daphne is ready only once the server
    answering on its port is this process (`/healthz` names its pid); when another one is, it
    starts again on another free port (unless the port was given)."""

    def __init__(self, env: dict[str, str], port: int | None = None, *, wait: bool = True) -> None:
        """Started; listening when this returns, unless `wait` is false (`wait_ready()`)."""
        self._port_given = port is not None
        self.env = dict(env)
        self._launch(port or free_port())
        if wait:
            self.wait_ready()

    def _launch(self, port: int) -> None:
        self.port = port
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = LOG_DIR / f"daphne-{self.port}.log"
        # PYTHONFAULTHANDLER: a crash of the server (a signal at exit) leaves every thread's stack
        # in its log.
        full_env = {**os.environ, "DJANGO_DEBUG": "true", "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1", **self.env}
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
             "operator_console.asgi:application"],
            cwd=ROOT,
            env=full_env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1"

    def wait_ready(self, timeout: float = BOOT_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:  # looks at least once, however little time is left
            if self.proc.poll() is not None:
                if self._port_given or "Address already in use" not in self.output():
                    raise RuntimeError(f"daphne exited early:\n{self.output()}")
                self._relaunch()  # another server took the port first
                continue
            serving = self._serving()
            if serving:
                return
            if serving is False:  # another Daphne answers there: this one cannot bind it
                if self._port_given:
                    self.stop()
                    raise RuntimeError(f"another server took port {self.port} first")
                self._relaunch()
                continue
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        raise RuntimeError(f"daphne did not listen within {timeout:g}s:\n{self.output()}")

    def _serving(self) -> bool | None:
        """True when this Daphne answers on its port (its `/healthz` names its pid: `PROCESS_ID`
        is host:pid:random), False when another Daphne does, None when nothing answers yet (or
        not in HTTP). An HTTP refusal (its settings do not allow the host 127.0.0.1) is taken
        to be this Daphne's, as long as it runs."""
        try:
            process = self.health().get("process") or ""
        except urllib.error.HTTPError:
            return self.proc.poll() is None
        except (OSError, ValueError, http.client.HTTPException):
            return None
        return f":{self.proc.pid}:" in process

    def _relaunch(self) -> None:
        self.stop()
        self._launch(free_port())

    def health(self) -> dict:
        with urllib.request.urlopen(f"{self.http_url}/healthz", timeout=5) as response:
            return json.loads(response.read())

    def wait_quiet(self, timeout: float = QUIET_TIMEOUT) -> None:
        """Wait until the server holds no sessions and has written all it had to (`/healthz`):
        from then on it writes nothing to the database unasked (its housekeeping's sweep and
        pruning aside). A test whose callers it served waits for this before the database is
        emptied for the next test: an ending session's rows, committed after that, would be
        the next test's strays."""
        deadline = time.monotonic() + timeout
        while True:  # looks at least once, however little time is left
            health = self.health()
            busy = {k: health[k] for k in ("sessions", "history_pending", "recordings_pending")}
            if not any(busy.values()):
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        raise AssertionError(
            f"daphne on port {self.port} was not quiet within {timeout:g}s ({busy}): a test "
            f"left a session of it live?\n{self.output()[-3000:]}"
        )

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def start_side_by_side(*envs: dict[str, str]) -> list[DaphneProcess]:
    """A Daphne for each of `envs`, booting at once (as a deployment's processes do, and in the
    time of one); all listening when this returns, or all stopped if one failed. Booting side
    by side, each is slower than alone: together they have the time they would have had one
    after the other."""
    deadline = time.monotonic() + BOOT_TIMEOUT * len(envs)
    servers = [DaphneProcess(env, wait=False) for env in envs]
    try:
        for server in servers:
            server.wait_ready(deadline - time.monotonic())
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


def served_to_a_reader_that_stops(server: DaphneProcess, path: str, token: str, seconds: float) -> bool:
    """Whether Daphne finishes the answer to `GET path` (and logs it served) within `seconds`
    while its client reads no more than the answer's head (a small receive buffer, so its
    side fills soon): for a large answer, it could only by holding the rest in memory."""
    served = f'"GET {path}" 200'
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        sock.connect(("127.0.0.1", server.port))
        head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n"
        sock.sendall(head.encode())
        sock.settimeout(10)
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if served in server.output():
                return True
            time.sleep(0.1)
        return False
    finally:
        sock.close()
