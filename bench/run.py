"""`python -m bench.run` (`make bench`): the relay against two floors, written to bench/RESULTS.md.

One simulator process (20 deltas per response, 10 ms apart) feeds every target. For each
target (websockets floor, Channels floor, the relay) and each C (10, 100, 300), a fresh target
process is started, `bench/load.py` connects C callers in its own process and measures, and the
target is stopped. Then the relay is profiled with py-spy at C=100. Last, the nudge part
(`bench/nudge.py`): REST hook POST → upstream `response.create` latency on a fresh Daphne,
with the simulator in this process. Everything listens on 127.0.0.1 only; every process
started here is terminated (then killed) on the way out.

    python -m bench.run                      # the full run, writes bench/RESULTS.md
    python -m bench.run --quick              # smoke run: C=10, short windows, fewer nudges
    python -m bench.run --only relay -c 100  # filters; partial runs write bench/out/
    python -m bench.run --only nudge         # the nudge latency part alone (< 2 min)
    python -m bench.run --only fanout        # the dashboard fan-out part alone (< 2.5 min)
    python -m bench.run --only soak          # issue 5's soak: 300 sessions, 2 processes, 5 min
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
OUT = BENCH / "out"
PY = sys.executable
BIN = Path(PY).parent
HOST = "127.0.0.1"
MODEL = "gpt-realtime"

SIM_DELTAS = 20
SIM_INTERVAL = 0.01

# Issue 2 targets.
CPU_RATIO_TARGET = 1.3
P99_TARGET_MS = 10.0
P99_TARGET_C = 100
RSS_TARGET_KIB = 150.0


@dataclass
class Target:
    key: str
    label: str


TARGETS = [
    Target("websockets", "websockets floor"),
    Target("channels", "Channels floor (Daphne)"),
    Target("relay", "relay (Daphne)"),
]
NUDGE = "nudge"  # the nudge latency part (bench/nudge.py), not a target of the C loop
FANOUT = "fanout"  # the dashboard fan-out part (bench/fanout.py), not a target either
SOAK = "soak"  # the two-process soak (bench/soak.py): Redis, PostgreSQL, Daphne A and B

# Nudge part: (sequential nudges on one session, sessions × nudges each at once, warm-up
# nudges per session, time limit per scenario in s), full and --quick.
NUDGE_PLAN = {"full": (500, (10, 50), 20, 45.0), "quick": (100, (10, 10), 5, 20.0)}
NUDGE_OPEN_PERIOD = 0.1  # open loop: each session nudged every 100 ms (10 sessions: 100/s)
NUDGE_BUDGET_S = 170.0  # the whole nudge part, start-up, quiet waits and second attempts included
# Expected 4xx lines, which Django logs as warnings: the baseline's token-less POSTs (401), and
# polls for a new session before its row is written (404 on GET; a failed POST is counted).
NUDGE_EXPECTED_LOG = re.compile(
    r"WARNING django\.request (Unauthorized: /api/v1/sessions/sess_none/"
    r"|Not Found: /api/v1/sessions/[\w-]+$)"
)


@dataclass
class Proc:
    name: str
    proc: asyncio.subprocess.Process
    log_path: Path
    log_file: object = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace").splitlines()
            return "\n".join(text[-lines:])
        return ""


@dataclass
class Runner:
    args: argparse.Namespace
    workdir: Path
    procs: list[Proc] = field(default_factory=list)
    sim_url: str = ""
    token: str = ""
    notes: list[str] = field(default_factory=list)

    # --- processes -------------------------------------------------------------------------

    def base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "PYTHONPATH": str(ROOT),
                "PYTHONUNBUFFERED": "1",
                "DATABASE_URL": f"sqlite:///{self.workdir / 'bench.sqlite3'}",
                "DJANGO_DEBUG": "false",
                "DJANGO_SECRET_KEY": "bench",
                "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
            }
        )
        env.pop("DJANGO_SETTINGS_MODULE", None)
        if self.sim_url:
            env["OC_UPSTREAM_URL"] = self.sim_url
            env["BENCH_UPSTREAM_URL"] = self.sim_url
        return env

    async def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        log_path = OUT / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = open(log_path, "w")  # noqa: SIM115, ASYNC230 - local file; closed in stop()
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=ROOT,
            env=env or self.base_env(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        handle = Proc(name, proc, log_path, log_file)
        self.procs.append(handle)
        self.prioritise(proc.pid)
        return handle

    def prioritise(self, pid: int) -> None:
        """With --nice N, run a benchmark process at niceness N (ahead of other work)."""
        if self.args.nice:
            try:
                os.setpriority(os.PRIO_PROCESS, pid, self.args.nice)
            except OSError as exc:
                say(f"    cannot set niceness {self.args.nice} on {pid}: {exc}")

    async def stop(self, handle: Proc, timeout: float = 5.0) -> None:
        proc = handle.proc
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if handle.log_file is not None:
            handle.log_file.close()
            handle.log_file = None
        if handle in self.procs:
            self.procs.remove(handle)

    async def stop_all(self) -> None:
        for handle in reversed(list(self.procs)):
            await self.stop(handle)

    async def run_command(
        self, argv: list[str], timeout: float = 120, env: dict[str, str] | None = None
    ) -> str:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=ROOT,
            env=env or self.base_env(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RuntimeError(f"timed out: {' '.join(argv)}") from None
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} failed ({proc.returncode}):\n{err.decode(errors='replace')}"
            )
        return out.decode()

    async def wait_port(self, handle: Proc, port: int, timeout: float = 60.0) -> None:
        """Until the process listens on the port (read from the OS: no probe connection)."""
        deadline = time.monotonic() + timeout
        process = psutil.Process(handle.pid)
        while time.monotonic() < deadline:
            if handle.proc.returncode is not None:
                raise RuntimeError(
                    f"{handle.name} exited with {handle.proc.returncode}:\n{handle.log_tail()}"
                )
            with contextlib.suppress(psutil.Error):
                for conn in process.net_connections(kind="tcp"):
                    if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port:
                        return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{handle.name} did not listen on {port} in {timeout}s")

    # --- set-up ------------------------------------------------------------------------------

    async def spawn_simulator(
        self, name: str, *, deltas: int, interval: float, env: dict[str, str] | None = None
    ) -> tuple[Proc, int]:
        """`manage.py simulate_upstream` on a free port, listening; (process, port)."""
        port = free_port()
        sim = await self.spawn(
            name,
            [
                PY,
                "manage.py",
                "simulate_upstream",
                "--host",
                HOST,
                "--port",
                str(port),
                "--deltas",
                str(deltas),
                "--interval",
                str(interval),
            ],
            env=env,
        )
        await self.wait_port(sim, port)
        return sim, port

    async def start_simulator(self) -> Proc:
        sim, _ = await self.spawn_simulator("simulator", deltas=SIM_DELTAS, interval=SIM_INTERVAL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            match = re.search(r"ws://\S+/v1", sim.log_path.read_text(errors="replace"))
            if match:
                self.sim_url = match.group(0)
                return sim
            await asyncio.sleep(0.1)
        raise RuntimeError(f"simulator printed no URL:\n{sim.log_tail()}")

    async def migrate_with_token(self, name: str, env: dict[str, str] | None = None) -> str:
        """`manage.py migrate`, then `create_api_token --name NAME`; the plain token."""
        await self.run_command([PY, "manage.py", "migrate", "--noinput"], env=env)
        out = await self.run_command([PY, "manage.py", "create_api_token", "--name", name], env=env)
        lines = [line.strip() for line in out.splitlines() if line.strip()]
        if not lines:
            raise RuntimeError("create_api_token printed no token")
        return lines[-1]

    async def prepare_relay(self) -> None:
        self.token = await self.migrate_with_token("bench")

    def target_argv(self, key: str, port: int) -> list[str]:
        daphne = [str(BIN / "daphne"), "-b", HOST, "-p", str(port)]
        if key == "websockets":
            return [
                PY,
                "-m",
                "bench.floor_websockets",
                "--port",
                str(port),
                "--upstream",
                self.sim_url,
            ]
        if key == "channels":
            return [*daphne, "bench.floor_channels:application"]
        if key == "relay":
            return [*daphne, "operator_console.asgi:application"]
        raise ValueError(key)

    async def start_target(self, key: str, tag: str) -> tuple[Proc, int]:
        port = free_port()
        handle = await self.spawn(f"{key}-{tag}", self.target_argv(key, port))
        await self.wait_port(handle, port)
        await asyncio.sleep(0.5)  # let start-up finish (imports after listen, first GC)
        return handle, port

    # --- one measurement -------------------------------------------------------------------

    async def run_load(
        self,
        target: Proc,
        port: int,
        concurrency: int,
        *,
        window: float,
        warmup: float,
        on_measure_start=None,
    ) -> dict:
        argv = [
            PY,
            "-m",
            "bench.load",
            "--url",
            f"ws://{HOST}:{port}/v1/realtime?model={MODEL}",
            "--token",
            self.token,
            "-c",
            str(concurrency),
            "--warmup",
            str(warmup),
            "--window",
            str(window),
            "--settle",
            str(self.args.settle),
            "--target-pid",
            str(target.pid),
            "--watch",
            "simulator",
            str(self.sim_pid),
        ]
        load = await asyncio.create_subprocess_exec(
            *argv,
            cwd=ROOT,
            env=self.base_env(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        self.prioritise(load.pid)
        # Bounded: connecting (≤ 30 s per batch is the load's own limit), settle, warm-up,
        # window, closing.
        budget = 60 + self.args.settle + warmup + window + concurrency / 10
        result: dict | None = None
        side_tasks = []
        try:
            async with asyncio.timeout(budget):
                while True:
                    line = await load.stdout.readline()
                    if not line:
                        break
                    with contextlib.suppress(ValueError):
                        message = json.loads(line)
                        if message.get("event") == "measure_start" and on_measure_start:
                            side_tasks.append(asyncio.create_task(on_measure_start()))
                        elif message.get("event") == "connected":
                            say(
                                f"    {message['sessions']}/{concurrency} sessions connected "
                                f"in {message['seconds']} s"
                            )
                        elif message.get("event") == "result":
                            result = message
                await load.wait()
        except TimeoutError:
            say(f"    load generator exceeded its {budget:.0f} s budget; stopping it")
        finally:
            if load.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    load.kill()
                await load.wait()
            for task in side_tasks:
                with contextlib.suppress(Exception):
                    await task
        stderr = (await load.stderr.read()).decode(errors="replace")
        if result is None:
            raise RuntimeError(
                f"load generator gave no result (rc={load.returncode}):\n{stderr[-2000:]}"
            )
        if target.proc.returncode is not None:
            result["target_exited"] = target.proc.returncode
        result["target_log"] = scan_log(target.log_path)
        return result

    sim_pid: int = 0
    quiet_waited: float = 0.0


QUIET_PERCENT = 12.0  # machine busy % (all cores) below which the machine counts as quiet
QUIET_BUDGET_S = 120.0  # total time the whole run may spend waiting for quiet
NOISY_SHARE = 0.10  # other work above this share of the window's CPU capacity: run again once


async def wait_quiet(runner: Runner, limit: float) -> float:
    """Wait (at most `limit` s) until the machine is nearly idle; returns the time waited.

    Other work on the machine (tests run by others) competes for the same 2 cores and skews
    every figure; this only delays a run, it never stops one.
    """
    started = time.monotonic()
    psutil.cpu_percent(interval=None)
    while True:
        await asyncio.sleep(1.0)
        busy = psutil.cpu_percent(interval=None)
        waited = time.monotonic() - started
        if busy < QUIET_PERCENT or waited >= limit:
            if waited > 1.5:
                say(f"    waited {waited:.0f} s for a quiet machine (now {busy:.0f}% busy)")
            return waited


async def run_nudge(runner: Runner, args: argparse.Namespace) -> dict:
    """The nudge latency part: the simulator in this process; Daphne's HTTP floor; then a
    fresh Daphne on a fresh SQLite file for the baseline and the scenarios of `bench/nudge.py`,
    first with DJANGO_DEBUG=true (its `Server-Timing` then carries the start stamp the split
    needs), then with DJANGO_DEBUG=false (production settings) for the end-to-end figure. A
    file each, so the second process does not find (and sweep) the first one's sessions."""
    import httpx

    from bench import nudge

    sequential, (sessions, per_session), warmup, limit = NUDGE_PLAN[
        "quick" if args.quick else "full"
    ]
    if args.nudges:
        sequential = args.nudges
        per_session = max(1, args.nudges // sessions)
    # The simulator and the callers run in this process: with --nice, so does it.
    runner.prioritise(os.getpid())
    simulator = nudge.bench_simulator()
    await simulator.start(HOST, 0)
    env = runner.base_env()
    env["OC_UPSTREAM_URL"] = simulator.url
    # The per-token rate limit (default 200/s) is policy, not cost: out of the way here (the
    # limiter still runs on every request).
    env["OC_API_RATE"] = env["OC_API_BURST"] = "100000"
    env.pop("BENCH_UPSTREAM_URL", None)
    open_label = (
        f"{sessions} sessions, open loop (each every {NUDGE_OPEN_PERIOD * 1000:g} ms, "
        f"{sessions / NUDGE_OPEN_PERIOD:g}/s in all)"
    )
    plan = [
        (
            "true",
            [
                ("1 session, sequential", 1, sequential, None),
                (
                    f"{sessions} sessions, closed loop (each sequential: throughput)",
                    sessions,
                    per_session,
                    None,
                ),
                (open_label, sessions, per_session, NUDGE_OPEN_PERIOD),
            ],
        ),
        (
            "false",
            [
                ("1 session, sequential, DJANGO_DEBUG=false", 1, sequential, None),
                (f"{open_label}, DJANGO_DEBUG=false", sessions, per_session, NUDGE_OPEN_PERIOD),
            ],
        ),
    ]
    baselines: dict[str, dict] = {}
    scenarios: list[dict] = []
    logs: dict[str, dict] = {}
    handle = None
    try:
        async with asyncio.timeout(NUDGE_BUDGET_S):
            # Daphne alone: the smallest ASGI app (bench/floor_http.py).
            port = free_port()
            handle = await runner.spawn(
                "nudge-floor-http",
                [str(BIN / "daphne"), "-b", HOST, "-p", str(port), "bench.floor_http:application"],
                env=env,
            )
            await runner.wait_port(handle, port)
            await asyncio.sleep(0.5)
            async with httpx.AsyncClient(timeout=10.0) as client:
                floor = await nudge.round_trips(
                    client, "GET", f"http://{HOST}:{port}/healthz", 200, nudge.BASELINE_REQUESTS
                )
            await runner.stop(handle)
            handle = None
            say(f"    Daphne floor: p50 {fmt(floor['p50'], 2)} ms, p99 {fmt(floor['p99'], 2)} ms")
            for debug, runs in plan:
                server_env = {
                    **env,
                    "DJANGO_DEBUG": debug,
                    "DATABASE_URL": f"sqlite:///{runner.workdir / f'nudge-debug-{debug}.sqlite3'}",
                }
                token = await runner.migrate_with_token("bench-nudge", env=server_env)
                port = free_port()
                handle = await runner.spawn(
                    f"nudge-relay-debug-{debug}",
                    [
                        str(BIN / "daphne"),
                        "-b",
                        HOST,
                        "-p",
                        str(port),
                        "operator_console.asgi:application",
                    ],
                    env=server_env,
                )
                await runner.wait_port(handle, port)
                await asyncio.sleep(0.5)  # let start-up finish
                limits = httpx.Limits(
                    max_connections=2 * sessions + 2, max_keepalive_connections=2 * sessions + 2
                )
                async with httpx.AsyncClient(limits=limits, timeout=10.0) as client:
                    bench = nudge.Bench(
                        http_base=f"http://{HOST}:{port}",
                        ws_url=f"ws://{HOST}:{port}/v1/realtime?model={MODEL}",
                        token=token,
                        simulator=simulator,
                        client=client,
                        server_pid=handle.pid,
                    )
                    baseline = baselines[debug] = await bench.baseline()
                    say(
                        f"    DJANGO_DEBUG={debug}: GET /healthz p50 "
                        f"{fmt(baseline['healthz']['p50'], 2)} ms, "
                        f"p99 {fmt(baseline['healthz']['p99'], 2)} ms"
                    )
                    for label, n_sessions, count, period in runs:
                        for attempt in (1, 2):
                            result = await bench.scenario(
                                n_sessions, count, warmup, limit, period=period
                            )
                            result.update(label=label, debug=debug, attempt=attempt)
                            share = result["other_cpu_share"]
                            if share <= NOISY_SHARE or attempt == 2:
                                break
                            say(
                                f"    {label}: other processes used {100 * share:.0f}% of the "
                                "machine meanwhile: measuring again"
                            )
                            await wait_quiet(runner, 10.0)
                        scenarios.append(result)
                        lat = result["latency_ms"]
                        say(
                            f"    {label}: {result['nudges']} nudges, p50 "
                            f"{fmt(lat['p50'], 2)} ms, p99 {fmt(lat['p99'], 2)} ms, max "
                            f"{fmt(lat['max'], 2)} ms, {result['failures']} failures, "
                            f"Daphne {result['server_cpu_ms']:.2f} CPU-ms/nudge, "
                            f"in {result['seconds']:.1f} s"
                        )
                await runner.stop(handle)
                # The baseline's 401s are logged as warnings by design: not a problem.
                logs[debug] = scan_log(handle.log_path, ignore=NUDGE_EXPECTED_LOG)
                handle = None
    finally:
        if handle is not None:
            await runner.stop(handle)
        await simulator.aclose()
    raw = {sc["label"]: sc.pop("samples") for sc in scenarios}
    (OUT / "nudge-samples.json").write_text(json.dumps(raw))  # noqa: ASYNC240 - small, local
    return {
        "floor": floor,
        "baselines": baselines,
        "scenarios": scenarios,
        "warmup": warmup,
        "logs": logs,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


LOG_STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
ID_RE = re.compile(r"(?<=[.:_!-])[0-9a-f]{16,}|[0-9a-f]{8}-[0-9a-f-]{27}")


def scan_log(path: Path, ignore: re.Pattern | None = None) -> dict:
    """Count the warnings, errors and tracebacks a target logged, keep a few examples, and
    group them by kind (ids masked; first and last time, count). Lines matching `ignore` are
    not counted."""
    counts: collections.Counter = collections.Counter()
    samples: list[str] = []
    kinds: dict[str, tuple[str, str, int]] = {}  # line with ids masked → first, last, count
    with contextlib.suppress(OSError), open(path, errors="replace") as log:
        for line in log:
            line = line.rstrip("\n")
            if ignore is not None and ignore.search(line):
                continue
            kind = None
            if "Traceback" in line:
                kind = "traceback"
            elif re.search(r"\b(ERROR|CRITICAL)\b", line):
                kind = "error"
            elif re.search(r"\bWARNING\b", line):
                kind = "warning"
            if kind:
                counts[kind] += 1
                if len(samples) < 8:
                    samples.append(line[:300])
                stamp = line[11:19] if LOG_STAMP.match(line) else "?"
                what = ID_RE.sub("X", line[24:] if stamp != "?" else line)[:160]
                first, _, n = kinds.get(what, (stamp, stamp, 0))
                kinds[what] = (first, stamp, n + 1)
    top = sorted(kinds.items(), key=lambda kv: -kv[1][2])[:6]
    return {
        "counts": dict(counts),
        "samples": samples,
        "kinds": [{"line": k, "first": f, "last": la, "n": n} for k, (f, la, n) in top],
    }


def say(text: str) -> None:
    print(text, flush=True)


# --- profiling ---------------------------------------------------------------------------


async def py_spy_record(pid: int, seconds: float, output: Path, *, gil: bool) -> str | None:
    """Sample the process with py-spy (all threads); None on success, else why it failed."""
    exe = shutil.which("py-spy", path=str(BIN)) or shutil.which("py-spy")
    if exe is None:
        return "py-spy is not installed (.venv/bin/pip install py-spy)"
    argv = [
        exe,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(seconds)),
        "--rate",
        str(PROFILE_RATE),
        "--format",
        "raw",
        "--threads",
        "--output",
        str(output),
    ]
    if gil:
        argv.append("--gil")
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), seconds + 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return "py-spy timed out"
    if proc.returncode != 0 or not output.exists():  # noqa: ASYNC240 - a local stat
        return f"py-spy failed ({proc.returncode}): {out.decode(errors='replace')[-500:]}"
    return None


PROFILE_RATE = 200
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def where(path: str) -> str:
    """A short home for a source file: the package, `apps/...`, or `stdlib:module`."""
    if "site-packages/" in path:
        rest = path.split("site-packages/", 1)[1]
        parts = rest.split("/")
        return parts[0] if len(parts) > 1 else rest.removesuffix(".py")
    root = str(ROOT) + "/"
    if path.startswith(root):
        return path[len(root) :]
    match = re.search(r"/lib/python3\.\d+/(.+)$", path)
    if match:
        module = match.group(1).split("/")[0].removesuffix(".py")
        return f"stdlib:{module}"
    return path


def _home(path: str) -> str:
    home = where(path)
    return home if home.startswith("apps/") else home.split("/")[0]


def summarise_profile(raw: Path, top: int = 25) -> dict:
    """Self time per function, per package and per thread from py-spy's raw (collapsed) output."""
    self_fn = collections.Counter()
    self_pkg = collections.Counter()
    incl_pkg = collections.Counter()
    threads = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        if frames[0].startswith("thread ("):
            name = frames.pop(0).split(": ", 1)[-1]
            threads[re.sub(r"_\d+$", "", name)] += n
        parsed = []
        for frame in frames:
            match = _FRAME.match(frame)
            parsed.append((match.group("func"), match.group("file")) if match else (frame, ""))
        if not parsed:
            continue
        func, file = parsed[-1]
        self_fn[f"{func} ({where(file) if file else '?'})"] += n
        self_pkg[_home(file) if file else "?"] += n
        for home in {_home(f) for _, f in parsed if f}:
            incl_pkg[home] += n
    return {
        "samples": total,
        "threads": threads.most_common(),
        "self_functions": self_fn.most_common(top),
        "self_packages": self_pkg.most_common(15),
        "inclusive_packages": incl_pkg.most_common(20),
    }


# --- report ------------------------------------------------------------------------------


def fmt(value, digits=1, suffix=""):
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{suffix}"
    return f"{value:,}{suffix}"


def verdict(ok: bool | None) -> str:
    if ok is None:
        return "not measured"
    return "**met**" if ok else "**missed**"


def versions() -> str:
    names = ["Django", "channels", "daphne", "Twisted", "autobahn", "websockets", "openai"]
    found = []
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{name} {importlib.metadata.version(name)}")
    return ", ".join(found)


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


RELAY_VS_FLOORS = """## What the relay does that the floors do not

Per caller frame: parse it as JSON (a frame that is not an object gets an `error` back, not
forwarded). Per upstream frame: read the event type from the frame's first bytes and forward it
unparsed unless it is `session.*`, `response.created`, `response.done` or `error`, which are
parsed to drive the sequencer (and the first two re-serialised without the relay's `oc_request`
tag). Per response: a request row written by the history thread (merged per batch, one
executemany), the sequencer's bookkeeping, a timer for the send timeout. Every frame goes
through the session actor's mailbox (one extra task hop versus a pump).

Where the relay does *less* than a stock Channels consumer, and the Channels floor does not
(so the ratio counts these in the relay's favour): caller frames skip Channels' per-message
`aclose_old_connections()` thread hop (the relay's receive handler uses no database), and the
relay route is not wrapped in `AuthMiddlewareStack` (it authenticates at the handshake only).
The relay process also runs with a 1 ms GIL switch interval, for the history thread's sake.
"""


def render(results: dict, meta: dict, profile: dict | None) -> str:
    by = {(r["target"], r["concurrency"]): r for r in results["runs"]}
    cs = sorted({r["concurrency"] for r in results["runs"]})
    keys = [t.key for t in TARGETS if any(r["target"] == t.key for r in results["runs"])]
    labels = {t.key: t.label for t in TARGETS}
    out = []
    w = out.append
    w("# Relay benchmark\n")
    w(
        f"Generated by `python -m bench.run` (`make bench`) on {meta['date']}, "
        f"in {meta['elapsed_s']:.0f} s.\n"
    )
    w(
        f"- Machine: {meta['cores']} cores ({meta['cpu']}), {meta['mem_gib']:.0f} GiB RAM, "
        f"{meta['os']}; Python {meta['python']}."
    )
    w(f"- Packages: {meta['versions']}.")
    if not results["runs"]:
        # A run of the nudge part alone.
        if meta.get("nice"):
            w(f"- Benchmark processes ran at niceness {meta['nice']}.")
        w("")
        w(nudge_section(results))
        w(fanout_section(results))
        w(soak_section(results))
        return "\n".join(out) + "\n"
    w(
        f"- Upstream: `manage.py simulate_upstream`, {SIM_DELTAS} deltas per response, "
        f"{SIM_INTERVAL * 1000:.0f} ms apart, one process for the whole run."
    )
    w(
        f"- Per target and C: a fresh target process; C callers in one load-generator process "
        f"(`bench/load.py`); {meta['warmup']:g} s warm-up (not counted), then a "
        f"{meta['window']:g} s measurement window. Each caller loops "
        "`conversation.item.create` + `response.create` → read to `response.done`."
    )
    w(
        "- **Simulator, target and load generator share the same 2 cores.** At C=100 and above "
        "the machine is saturated (see the `machine CPU` column): deltas/s then shows the "
        "ceiling of the whole set-up and latency includes queueing in every process, the load "
        "generator's included. The figures are as measured, not corrected."
    )
    w(
        "- Before each measurement the run waits (≤ 30 s, ≤ 120 s in all) for the machine to be "
        "nearly idle, and measures once more when other processes took more than "
        f"{100 * NOISY_SHARE:.0f}% of the machine during the window; what remains is listed "
        "under *disturbed runs* below."
        + (f" Benchmark processes ran at niceness {meta['nice']}." if meta.get("nice") else "")
        + "\n"
    )

    w(RELAY_VS_FLOORS)
    w(
        "Columns: *deltas/s* received by all callers in the window; *p50/p99* per-delta latency "
        "= caller receive `time.time_ns()` − the simulator's send stamp in `event_id` "
        "(simulator → target → caller, so it includes the simulator's and load generator's "
        "own scheduling); *CPU/1k* = target-process user+system CPU seconds per 1000 deltas "
        "received; *RSS/session* = (target RSS with C sessions connected and idle, after a "
        f"{meta['settle']:g} s settle − RSS before any session) / C, the baseline taken after "
        "one priming session was opened and closed so one-time lazy imports are not charged "
        "to sessions; *target CPU %* = of one core; *sim / load / other CPU-s* = CPU seconds "
        "in the window of the simulator, the load generator, and everything else on the machine "
        "(all busy CPU time minus the three benchmark processes: non-zero means other work "
        "competed with the run); *machine CPU* = all cores busy % in the window (100 % = both "
        "cores).\n"
    )

    for c in cs:
        w(f"## C = {c}\n")
        w(
            "| target | sessions | deltas/s | p50 ms | p99 ms | CPU-s / 1k deltas | "
            "RSS / session KiB | errors | target CPU % | sim / load / other CPU-s | machine CPU % |"
        )
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for key in keys:
            r = by.get((key, c))
            if r is None:
                continue
            if "failure" in r:
                w(f"| {labels[key]} | failed: {r['failure'][:80]} |||||||||")
                continue
            cpu = r["cpu_seconds"]
            win = r["window_seconds"]
            rss = r["rss_per_session_bytes"]
            w(
                f"| {labels[key]} | {r['sessions']} | {fmt(r['deltas_per_s'], 0)} "
                f"| {fmt(r['latency_ms']['p50'], 2)} | {fmt(r['latency_ms']['p99'], 2)} "
                f"| {fmt(r['target_cpu_s_per_1000_deltas'], 4)} "
                f"| {fmt(rss / 1024 if rss is not None else None, 1)} "
                f"| {r['errors']} "
                f"| {fmt(100 * cpu['target'] / win if cpu.get('target') is not None else None, 0)} "
                f"| {fmt(cpu.get('simulator'), 1)} / {fmt(cpu.get('load'), 1)} / "
                f"{fmt(other_cpu(r, meta['cores']), 1)} "
                f"| {fmt(r['machine_cpu_percent'], 0)} |"
            )
        relay, chan, wsf = by.get(("relay", c)), by.get(("channels", c)), by.get(("websockets", c))
        ratios = []
        if ok(relay) and ok(chan):
            ratios.append(f"relay / Channels floor CPU per delta = **{ratio(relay, chan):.2f}×**")
        if ok(relay) and ok(wsf):
            ratios.append(f"relay / websockets floor = {ratio(relay, wsf):.2f}×")
        if ok(chan) and ok(wsf):
            ratios.append(f"Channels floor / websockets floor = {ratio(chan, wsf):.2f}×")
        if ratios:
            w("\n" + "; ".join(ratios) + ".")
        w("")

    # Targets.
    w("## Targets (issue 2)\n")
    w("| target | C | measured | verdict |")
    w("|---|---:|---|---|")
    for c in cs:
        relay, chan = by.get(("relay", c)), by.get(("channels", c))
        if ok(relay) and ok(chan):
            rt = ratio(relay, chan)
            w(
                f"| relay CPU per delta ≤ {CPU_RATIO_TARGET}× Channels floor | {c} | "
                f"{rt:.2f}× ({relay['target_cpu_s_per_1000_deltas']:.4f} vs "
                f"{chan['target_cpu_s_per_1000_deltas']:.4f} CPU-s/1k) | "
                f"{verdict(rt <= CPU_RATIO_TARGET)} |"
            )
    relay = by.get(("relay", P99_TARGET_C))
    if ok(relay):
        p99 = relay["latency_ms"]["p99"]
        floors = ", ".join(
            f"{labels[k]} {by[(k, P99_TARGET_C)]['latency_ms']['p99']:.2f} ms"
            for k in ("websockets", "channels")
            if ok(by.get((k, P99_TARGET_C)))
        )
        w(
            f"| relay p99 latency ≤ {P99_TARGET_MS:g} ms | {P99_TARGET_C} | {p99:.2f} ms"
            f"{f' (floors: {floors})' if floors else ''} | {verdict(p99 <= P99_TARGET_MS)} |"
        )
    else:
        w(f"| relay p99 latency ≤ {P99_TARGET_MS:g} ms | {P99_TARGET_C} | – | not measured |")
    for c in cs:
        relay = by.get(("relay", c))
        if ok(relay) and relay["rss_per_session_bytes"] is not None:
            kib = relay["rss_per_session_bytes"] / 1024
            w(
                f"| relay RSS per live session ≤ {RSS_TARGET_KIB:g} KiB | {c} | {kib:.1f} KiB | "
                f"{verdict(kib <= RSS_TARGET_KIB)} |"
            )
    w("")
    w(
        "RSS per session at C=10 rests on a difference of a few hundred KiB and is the noisiest "
        "of the three; C=100 and C=300 are the telling ones.\n"
    )

    # Errors and logs.
    problems = []
    for r in results["runs"]:
        label = f"{labels[r['target']]}, C={r['concurrency']}"
        if "failure" in r:
            problems.append(f"- {label}: run failed: `{r['failure']}`")
            continue
        if r["errors"] or r.get("unstamped_deltas"):
            problems.append(
                f"- {label}: {r['errors']} error(s) seen by callers, "
                f"{r.get('unstamped_deltas', 0)} unstamped deltas; e.g. "
                + "; ".join(f"`{s[:200]}`" for s in r["error_samples"][:3])
            )
        counts = r.get("target_log", {}).get("counts", {})
        if counts:
            problems.append(
                f"- {label}: target log: {counts}; e.g. "
                + "; ".join(f"`{s[:200]}`" for s in r["target_log"]["samples"][:3])
            )
        if r.get("other_cpu_share", 0) > NOISY_SHARE:
            problems.append(
                f"- {label}: disturbed: other processes used "
                f"{100 * r['other_cpu_share']:.0f}% of the machine in the window "
                f"(attempt {r.get('attempt', 1)} of 2)"
            )
        if r.get("target_exited") is not None:
            problems.append(f"- {label}: target exited with {r['target_exited']} during the run")
    w("## Errors, log lines, disturbed runs\n")
    w(
        "\n".join(problems)
        if problems
        else "None: no caller saw an `error` event or a failed connect, and no target logged a "
        "warning, error or traceback."
    )
    w("")

    # Profile.
    w(
        f"## Profile: relay at C={profile['concurrency'] if profile and 'concurrency' in profile else 100}\n"
    )
    if profile is None:
        w("Not run (filtered out or `--no-profile`).\n")
    elif "error" in profile:
        w(f"Profiling failed: {profile['error']}\n")
    else:
        g, a = profile["gil"], profile["active"]
        secs = profile["seconds"]
        possible = PROFILE_RATE * secs
        c = profile["concurrency"]
        w(
            f"py-spy on the relay's Daphne process during a separate C={c} load run (py-spy "
            "pauses the process to sample, so that run's figures are not in the tables; it ran at "
            f"{fmt(profile['load'].get('deltas_per_s'), 0)} deltas/s, "
            f"{fmt(profile['load'].get('target_cpu_s_per_1000_deltas'), 4)} CPU-s/1k deltas). "
            f"Two consecutive {secs:g} s recordings at {PROFILE_RATE} Hz, all threads: "
            f"`--gil` (only the thread holding the GIL: where Python CPU goes; {g['samples']:,} "
            f"samples) and default (every thread not idle: adds time spent in sqlite, socket "
            f"writes and waiting for the GIL; {a['samples']:,} samples). Raw stacks: "
            f"`bench/out/profile-relay-c{c}-gil.txt`, `…-active.txt`.\n"
        )
        w("Share of wall time per thread (100 % = the thread busy for the whole recording):\n")
        w("| thread | holding the GIL % | not idle % |")
        w("|---|---:|---:|")
        active = dict(a["threads"])
        gil = dict(g["threads"])
        for name in sorted(set(active) | set(gil), key=lambda k: -active.get(k, 0)):
            w(
                f"| `{name}` | {100 * gil.get(name, 0) / possible:.0f} | "
                f"{100 * active.get(name, 0) / possible:.0f} |"
            )
        w("")
        for title, s_ in (("holding the GIL", g), ("not idle", a)):
            total = s_["samples"] or 1
            w(f"Top self-time functions, {title} (% of that recording's samples):\n")
            w("| function (package / file) | self % |")
            w("|---|---:|")
            for name, n in s_["self_functions"][:20]:
                w(f"| `{name}` | {100 * n / total:.1f} |")
            w("")
        total = g["samples"] or 1
        self_pkg = dict(g["self_packages"])
        w(
            "By package or file, holding the GIL: self = the frame on top of the stack; "
            "inclusive = anywhere on the stack (so `asyncio`/`twisted`/`daphne`, the loop, "
            "include nearly everything):\n"
        )
        w("| package / file | self % | inclusive % |")
        w("|---|---:|---:|")
        for name, n in g["inclusive_packages"]:
            w(f"| `{name}` | {100 * self_pkg.get(name, 0) / total:.1f} | {100 * n / total:.1f} |")
        w("")
    w(nudge_section(results))
    w(fanout_section(results))
    w(soak_section(results))
    w("Raw results of every run: `bench/out/results.json`; process logs: `bench/out/logs/`.")
    return "\n".join(out) + "\n"


def nudge_section(results: dict) -> str:
    from bench import nudge

    return nudge.render_section(results.get("nudge"))


def fanout_section(results: dict) -> str:
    from bench import fanout

    return fanout.render_section(results.get("fanout"))


def soak_section(results: dict) -> str:
    from bench import soak

    return soak.render_section(results.get("soak"))


def other_cpu(r: dict, cores: int) -> float | None:
    """CPU seconds used in the window by processes outside the benchmark."""
    if r.get("machine_cpu_percent") is None:
        return None
    busy = r["machine_cpu_percent"] / 100 * cores * r["window_seconds"]
    ours = sum(v for v in r["cpu_seconds"].values() if v is not None)
    return max(0.0, busy - ours)


def ok(r: dict | None) -> bool:
    return bool(r) and "failure" not in r and r.get("target_cpu_s_per_1000_deltas") is not None


def ratio(a: dict, b: dict) -> float:
    return a["target_cpu_s_per_1000_deltas"] / b["target_cpu_s_per_1000_deltas"]


# --- main --------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> int:
    started = time.monotonic()
    # SIGTERM (and SIGINT) cancel the run, so the `finally` below stops every process.
    task = asyncio.current_task()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, task.cancel)
    OUT.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="oc-bench-"))
    runner = Runner(args, workdir)
    targets = [t for t in TARGETS if not args.only or t.key in args.only]
    runs: list[dict] = []
    profile: dict | None = None
    nudge_result: dict | None = None
    fanout_result: dict | None = None
    soak_result: dict | None = None
    try:
        if targets:
            sim = await runner.start_simulator()
            runner.sim_pid = sim.pid
            say(f"simulator at {runner.sim_url} (pid {sim.pid})")
        if any(t.key == "relay" for t in targets):
            await runner.prepare_relay()
            say("relay database migrated, token created")

        for target in targets:
            for c in args.concurrency:
                say(f"{target.label}, C={c}")
                for attempt in (1, 2):
                    handle = None
                    quiet_left = max(0.0, QUIET_BUDGET_S - runner.quiet_waited)
                    runner.quiet_waited += await wait_quiet(runner, min(30.0, quiet_left))
                    try:
                        handle, port = await runner.start_target(target.key, f"c{c}")
                        result = await runner.run_load(
                            handle, port, c, window=args.window, warmup=args.warmup
                        )
                    except Exception as exc:  # noqa: BLE001 - report it, go on with the others
                        result = {"failure": f"{type(exc).__name__}: {exc}"[:2000]}
                        say(f"    FAILED: {result['failure']}")
                    finally:
                        if handle is not None:
                            await runner.stop(handle)
                    if "failure" in result:
                        break
                    other = other_cpu(result, psutil.cpu_count()) or 0.0
                    capacity = psutil.cpu_count() * result["window_seconds"]
                    result["attempt"] = attempt
                    result["other_cpu_share"] = other / capacity
                    if other <= NOISY_SHARE * capacity or attempt == 2:
                        break
                    say(
                        f"    other processes used {other:.1f} CPU-s in the window "
                        f"({100 * other / capacity:.0f}% of the machine): measuring again"
                    )
                result.update(target=target.key, concurrency=c)
                runs.append(result)
                if "failure" not in result:
                    say(
                        f"    {result['deltas_per_s']:.0f} deltas/s, p50 "
                        f"{fmt(result['latency_ms']['p50'], 2)} ms, p99 "
                        f"{fmt(result['latency_ms']['p99'], 2)} ms, "
                        f"{fmt(result['target_cpu_s_per_1000_deltas'], 4)} CPU-s/1k, "
                        f"{fmt((result['rss_per_session_bytes'] or 0) / 1024, 1)} KiB/session, "
                        f"{result['errors']} errors, machine {result['machine_cpu_percent']}%"
                    )
                await asyncio.sleep(1.0)

        if args.profile and any(t.key == "relay" for t in targets):
            c = 100 if not args.quick else min(args.concurrency)
            say(f"profiling the relay at C={c} for 2 × {args.profile_seconds:g} s")
            quiet_left = max(0.0, QUIET_BUDGET_S - runner.quiet_waited)
            runner.quiet_waited += await wait_quiet(runner, min(30.0, quiet_left))
            handle = None
            failure: list[str] = []
            raws = {mode: OUT / f"profile-relay-c{c}-{mode}.txt" for mode in ("gil", "active")}
            try:
                handle, port = await runner.start_target("relay", "profile")

                async def record():
                    # Two consecutive recordings of the same load: threads holding the GIL
                    # (Python CPU), then every non-idle thread (also counts time in sqlite,
                    # socket writes and waits for the GIL).
                    for mode, raw in raws.items():
                        with contextlib.suppress(FileNotFoundError):
                            raw.unlink()
                        error = await py_spy_record(
                            handle.pid, args.profile_seconds, raw, gil=mode == "gil"
                        )
                        if error:
                            failure.append(error)
                            return

                load = await runner.run_load(
                    handle,
                    port,
                    c,
                    window=2 * args.profile_seconds + 3,
                    warmup=args.warmup,
                    on_measure_start=record,
                )
                if failure:
                    profile = {"error": failure[0]}
                else:
                    profile = {
                        "seconds": args.profile_seconds,
                        "concurrency": c,
                        "gil": summarise_profile(raws["gil"]),
                        "active": summarise_profile(raws["active"]),
                        "load": load,
                    }
            except Exception as exc:  # noqa: BLE001
                profile = {"error": f"{type(exc).__name__}: {exc}"}
            finally:
                if handle is not None:
                    await runner.stop(handle)
            if "error" in profile:
                say(f"    profile failed: {profile['error']}")

        if not args.only or NUDGE in args.only:
            say("nudge latency (REST hook → upstream)")
            quiet_left = max(0.0, QUIET_BUDGET_S - runner.quiet_waited)
            runner.quiet_waited += await wait_quiet(runner, min(10.0, quiet_left))
            try:
                nudge_result = await run_nudge(runner, args)
            except Exception as exc:  # noqa: BLE001 - report it
                nudge_result = {"failure": f"{type(exc).__name__}: {exc}"[:2000]}
                say(f"    FAILED: {nudge_result['failure']}")

        if not args.only or FANOUT in args.only:
            from bench import fanout

            say("dashboard fan-out (operator sockets on a busy relay)")
            quiet_left = max(0.0, QUIET_BUDGET_S - runner.quiet_waited)
            runner.quiet_waited += await wait_quiet(runner, min(10.0, quiet_left))
            try:
                fanout_result = await fanout.run_part(runner, args)
            except Exception as exc:  # noqa: BLE001 - report it
                fanout_result = {"failure": f"{type(exc).__name__}: {exc}"[:2000]}
                say(f"    FAILED: {fanout_result['failure']}")

        if not args.only or SOAK in args.only:
            from bench import soak

            say("soak (two Daphne processes, Redis, PostgreSQL)")
            quiet_left = max(0.0, QUIET_BUDGET_S - runner.quiet_waited)
            runner.quiet_waited += await wait_quiet(runner, min(10.0, quiet_left))
            runner.prioritise(os.getpid())  # the simulator and the callers run in this process
            try:
                soak_result = await soak.run(
                    runner, quick=args.quick, out=OUT, say=say,
                    duration=args.soak_seconds, warmup=args.soak_warmup,
                )
            except Exception as exc:  # noqa: BLE001 - report it
                soak_result = {"failure": f"{type(exc).__name__}: {exc}"[:2000]}
            if "failure" in soak_result:
                say(f"    FAILED: {soak_result['failure']}")
    finally:
        await runner.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)

    elapsed = time.monotonic() - started
    meta = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "elapsed_s": elapsed,
        "cores": psutil.cpu_count(logical=True),
        "cpu": cpu_model(),
        "mem_gib": psutil.virtual_memory().total / 2**30,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": versions(),
        "warmup": args.warmup,
        "window": args.window,
        "settle": args.settle,
        "nice": args.nice,
    }
    results = {"meta": meta, "runs": runs, "profile": profile, "nudge": nudge_result}
    results["fanout"] = fanout_result
    results["soak"] = soak_result
    (OUT / "results.json").write_text(json.dumps(results, indent=2, default=str))
    output = args.output or (BENCH / "RESULTS.md" if args.full else OUT / "RESULTS-partial.md")
    Path(output).write_text(render(results, meta, profile))  # noqa: ASYNC240 - all done
    say(f"wrote {output} in {elapsed:.0f} s")
    failed = any("failure" in r for r in runs) or "failure" in (nudge_result or {})
    failed = failed or "failure" in (fanout_result or {})
    failed = failed or "failure" in (soak_result or {})
    return 1 if failed else 0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: C=10, 1 s warm-up, 3 s windows"
    )
    parser.add_argument(
        "--only", default="", help="comma-separated parts: websockets,channels,relay,nudge,fanout,soak"
    )
    parser.add_argument(
        "--nudges",
        type=int,
        default=None,
        help="nudge part: sequential nudges (default 500, --quick 100); "
        "the 10-session scenarios send as many in all",
    )
    parser.add_argument(
        "-c", "--concurrency", default="", help="comma-separated C values (default 10,100,300)"
    )
    parser.add_argument(
        "--window", type=float, default=None, help="measurement window, s (default 10)"
    )
    parser.add_argument("--warmup", type=float, default=None, help="warm-up, s (default 3)")
    parser.add_argument(
        "--settle", type=float, default=1.5, help="idle time before sampling RSS, s"
    )
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    parser.add_argument(
        "--profile-seconds", type=float, default=None, help="py-spy duration (default 6)"
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness of the benchmark's processes (e.g. -10 on a shared "
        "machine, as root, to run ahead of other work); default 0",
    )
    parser.add_argument(
        "--soak-seconds", type=float, default=None, help="soak part: run length, s (default 300)"
    )
    parser.add_argument(
        "--soak-warmup", type=float, default=None, help="soak part: warm-up for the RSS verdict, s (default 60)"
    )
    parser.add_argument("--output", default=None, help="where to write the report")
    args = parser.parse_args(argv)
    known = {t.key for t in TARGETS} | {NUDGE, FANOUT, SOAK}
    args.only = [k.strip() for k in args.only.split(",") if k.strip()]
    if set(args.only) - known:
        parser.error(f"--only takes {', '.join(sorted(known))}")
    if args.concurrency:
        args.concurrency = [int(c) for c in args.concurrency.split(",")]
    else:
        args.concurrency = [10] if args.quick else [10, 100, 300]
    if any(not 1 <= c <= 1000 for c in args.concurrency):
        parser.error("C must be in 1..1000")
    if args.nudges is not None and not 10 <= args.nudges <= 2000:
        parser.error("--nudges must be in 10..2000")
    args.window = args.window if args.window is not None else (3.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 3.0)
    args.profile_seconds = args.profile_seconds or (2.0 if args.quick else 6.0)
    if not (0 < args.window <= 60 and 0 <= args.warmup <= 30 and 1 <= args.profile_seconds <= 30):
        parser.error("window ≤ 60 s, warm-up ≤ 30 s, profile 1..30 s")
    # Only a full, unfiltered run replaces bench/RESULTS.md by default.
    args.full = (
        not args.quick
        and not args.only
        and args.concurrency == [10, 100, 300]
        and args.nudges is None
    )
    return args


if __name__ == "__main__":
    arguments = parse_args()
    try:
        sys.exit(asyncio.run(main(arguments)))
    except (asyncio.CancelledError, KeyboardInterrupt):
        say("interrupted; every process the benchmark started has been stopped")
        sys.exit(130)
