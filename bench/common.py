"""What the parts of the benchmark share: processes and ports, CPU and memory readings,
percentiles, log scanning, the simulator, Realtime callers, operators, HTTP timing, and the
report's formatting.

The parts and their client processes import this module and never each other; `bench/run.py`
imports the parts. The app is reached only through its public surfaces (HTTP, WebSockets,
`manage.py` commands, environment settings) and the upstream simulator, which is imported here
and nowhere else in bench/.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import contextlib
import json
import math
import os
import re
import signal
import sys
import threading
import time
from array import array
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from apps.simulator import server as _simulator
from devtools.services import free_port

# The upstream simulator: imported here only, so a move of its module is one line here.
Simulator = _simulator.Simulator
SimulatorConfig = _simulator.SimulatorConfig

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
BIN = Path(PY).parent
HOST = "127.0.0.1"
MODEL = "gpt-realtime"
APP = "operator_console.asgi:application"
CORES = psutil.cpu_count() or 1
NOISY_SHARE = 0.10  # other work above this share of the machine: a figure is disturbed
QUIET_PERCENT = 12.0  # machine busy % (all cores) below which it counts as quiet
QUIET_BUDGET_S = 120.0  # the whole run's time waiting for quiet
NUDGE_TARGETS_MS = {"p50": 5.0, "p99": 20.0}  # a REST nudge → the upstream has its create
TERMINAL = {"completed", "cancelled", "incomplete", "failed"}  # a request's final states
OPERATOR_PASSWORD = "bench-operator-password"  # noqa: S105 - a bench-private database's users


def say(text: str) -> None:
    print(text, flush=True)


def emit(**fields: Any) -> None:
    """One JSON line on stdout: how a client process reports to the run."""
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def failure(exc: BaseException) -> dict:
    return {"failure": f"{type(exc).__name__}: {exc}"[:2000]}


def show_progress(message: dict) -> None:
    """A client process's progress event, as one line of the run's output."""
    event = message.pop("event", "")
    if not event.startswith("measure_"):
        say(f"    {event}: " + ", ".join(f"{k} {v}" for k, v in message.items()))


def client_main(main) -> None:
    """A client process (`Bench.client`): its settings are one JSON argument, its result the
    last JSON line it prints."""
    emit(event="result", **asyncio.run(main(argparse.Namespace(**json.loads(sys.argv[1])))))


def by_mode(plans: dict, args):
    """A part's plan for a full run or a `--quick` one."""
    return plans["quick" if args.quick else "full"]


async def in_batches(items, open_one, size: int = 25, on_error=None) -> list:
    """`open_one(item)` for each of `items`, `size` at a time; what is not None. With
    `on_error(text)`, a failure is passed to it and not raised."""

    async def one(item):
        try:
            return await open_one(item)
        except Exception as exc:
            if on_error is None:
                raise
            on_error(f"connect: {type(exc).__name__}: {exc}")

    items, opened = list(items), []
    for start in range(0, len(items), size):
        opened += await asyncio.gather(*(one(item) for item in items[start : start + size]))
    return [item for item in opened if item is not None]


async def connect_all(count: int, open_one, stats: Stats | None = None) -> list:
    """A client process's callers (`in_batches`; with `stats`, a failed one is counted there, a
    figure, not a crash), announced as `connected`; none connected raises."""
    opened = await in_batches(range(count), open_one, on_error=stats and stats.error)
    emit(event="connected", sessions=len(opened))
    if not opened:
        raise RuntimeError(f"no caller connected: {stats and stats.error_samples[:3]}")
    return opened


async def until_done(items, fetch, done, deadline: float, size: int, every: float) -> None:
    """`fetch(item)` for every item, `size` at a time; again, every `every` s, for those not
    yet `done(item)`, until none is left or the (monotonic) deadline has passed."""
    pending = list(items)
    while pending:
        await in_batches(pending, fetch, size)
        pending = [item for item in pending if not done(item)]
        if not pending or time.monotonic() > deadline:
            return
        await asyncio.sleep(every)


async def cancel_all(tasks) -> None:
    """Cancel the tasks and wait for them to end."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def close_sockets(sockets) -> None:
    """Close the sockets at once, giving up after 5 s."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


# -------------------------------------------------------------------------- numbers, CPU and memory
def summary(values, unit: float = 1000.0, quantiles=(0.5, 0.9, 0.99)) -> dict:
    """n, the percentiles (p50, p90, p99), max and mean of `values` × `unit` (seconds → ms by
    default); None for each when there are no values. Every part reports percentiles this way:
    nearest rank."""
    ordered = sorted(values)
    last = len(ordered) - 1

    def at(q: float) -> float | None:
        return ordered[min(last, max(0, round(q * last)))] * unit if ordered else None

    return {
        "n": len(ordered),
        **{f"p{round(q * 100)}": at(q) for q in quantiles},
        "max": at(1.0),
        "mean": sum(ordered) / len(ordered) * unit if ordered else None,
    }


def totals(items, *names: str) -> dict:
    """Each attribute of `names` summed over `items`."""
    return {name: sum(getattr(item, name) for item in items) for name in names}


class ProcessGroup:
    """CPU seconds and RSS of a process and, optionally, its children, which may come and go
    (PostgreSQL's backends): the children's CPU counts while they live, plus what the parent
    collected from those that ended (`children_user/system`)."""

    def __init__(self, pid: int, children: bool = False) -> None:
        self.proc = psutil.Process(pid)
        self.children = children

    def members(self) -> list[psutil.Process]:
        if self.children:
            with contextlib.suppress(psutil.Error):
                return [self.proc, *self.proc.children(recursive=True)]
        return [self.proc]

    def cpu(self) -> float | None:
        """User + system seconds; None once the process is gone."""
        total = 0.0
        for member in self.members():
            try:
                times = member.cpu_times()
            except psutil.Error:
                if member is self.proc:
                    return None
                continue
            total += times.user + times.system
            if member is self.proc and self.children:
                total += times.children_user + times.children_system
        return total

    def rss(self) -> int | None:
        total = None
        for member in self.members():
            with contextlib.suppress(psutil.Error):
                total = (total or 0) + member.memory_info().rss
        return total


def load_groups(args) -> dict[str, ProcessGroup]:
    """What a load generator or a part's client process measures: the target, itself, and the
    processes of `args.watch` (the simulator)."""
    watched = {name: ProcessGroup(pid) for name, pid in args.watch.items()}
    return {"target": ProcessGroup(args.target_pid), "load": ProcessGroup(os.getpid()), **watched}


def machine_busy() -> float:
    """CPU seconds all cores have been busy since boot."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


class CpuWindow:
    """CPU seconds of named processes, and of everything else on the machine, over a window
    from its start to `end()`."""

    def __init__(self, groups: dict[str, ProcessGroup]) -> None:
        self.groups, self.started, self.busy = groups, time.monotonic(), machine_busy()
        self.cpu = {name: group.cpu() for name, group in groups.items()}

    def end(self) -> dict:
        seconds = time.monotonic() - self.started
        busy = machine_busy() - self.busy
        cpu = {}
        for name, group in self.groups.items():
            now, then = group.cpu(), self.cpu[name]
            cpu[name] = None if now is None or then is None else now - then
        other = max(0.0, busy - sum(v for v in cpu.values() if v is not None))
        return {
            "seconds": seconds,
            "cpu_s": cpu,
            "other_cpu_s": other,
            "other_cpu_share": other / (CORES * seconds) if seconds else 0.0,
            "machine_cpu_percent": 100 * busy / (CORES * seconds) if seconds else None,
        }


def cpu_side(windows: list[dict], count: str) -> dict | None:
    """Windows of one side (without or with what a part adds) together: how many, the target's
    CPU % of one core (and its range over the windows), its CPU-s per 1k of `count` (a key of
    each window) and `count` a second."""
    seconds = sum(w["seconds"] for w in windows)
    if not seconds:
        return None
    cpu, n = sum(w["cpu_s"]["target"] for w in windows), sum(w[count] for w in windows)
    per_window = [100 * w["cpu_s"]["target"] / w["seconds"] for w in windows]
    return {
        "windows": len(windows),
        "cpu_percent": 100 * cpu / seconds,
        "cpu_percent_range": (min(per_window), max(per_window)),
        "cpu_s_per_1k": cpu / n * 1000 if n else None,
        "per_s": n / seconds,
    }


async def measure_for(seconds: float, groups: dict[str, ProcessGroup], stats=None) -> dict:
    """A measurement window of `seconds`: `CpuWindow(groups).end()`, announced as
    `measure_start` and `measure_end`; `stats.measuring` meanwhile, and its bounds (wall clock)
    in `stats.window_start_ns` and `window_end_ns`."""
    window = CpuWindow(groups)
    if stats is not None:
        stats.window_start_ns, stats.measuring = time.time_ns(), True
    emit(event="measure_start")
    await asyncio.sleep(seconds)
    if stats is not None:
        stats.measuring, stats.window_end_ns = False, time.time_ns()
    measured = window.end()
    emit(event="measure_end")
    return measured


# ---------------------------------------------------------------------------- logs
_LOG_STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
_ID_RE = re.compile(r"(?<=[.:_!-])[0-9a-f]{16,}|[0-9a-f]{8}-[0-9a-f-]{27}")
_LEVEL_RE = re.compile(r"\b(ERROR|CRITICAL|WARNING)\b")


def scan_log(path: Path, ignore: re.Pattern | None = None) -> dict:
    """The warnings, errors and tracebacks a process logged: counts, and the commonest kinds
    (ids masked) with their first and last time. Lines matching `ignore` are not counted."""
    counts: collections.Counter = collections.Counter()
    kinds: dict[str, tuple[str, str, int]] = {}
    with contextlib.suppress(OSError), open(path, errors="replace") as log:
        for line in log:
            line = line.rstrip("\n")
            if ignore is not None and ignore.search(line):
                continue
            level = _LEVEL_RE.search(line)
            kind = "traceback" if "Traceback" in line else level and level.group(1).lower()
            if not kind:
                continue
            counts["error" if kind == "critical" else kind] += 1
            stamp = line[11:19] if _LOG_STAMP.match(line) else "?"
            what = _ID_RE.sub("X", line[24:] if stamp != "?" else line)[:160]
            first, _, n = kinds.get(what, (stamp, stamp, 0))
            kinds[what] = (first, stamp, n + 1)
    top = sorted(kinds.items(), key=lambda kv: -kv[1][2])[:6]
    return {
        "counts": dict(counts),
        "kinds": [{"line": k, "first": f, "last": la, "n": n} for k, (f, la, n) in top],
    }


def log_tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def log_problems(logs: dict[str, dict]) -> list[str]:
    """Report lines for the processes whose log had warnings, errors or tracebacks."""
    return [
        f"- {name} log: {log['counts']}, by kind (ids masked; first–last time): "
        + "; ".join(f"`{k['line']}` ×{k['n']} ({k['first']}–{k['last']})" for k in log["kinds"])
        for name, log in logs.items()
        if log.get("counts")
    ]


# ---------------------------------------------------------------------------- processes
@dataclass
class Proc:
    name: str
    proc: asyncio.subprocess.Process
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass
class Bench:
    """The run's processes (each logged to `out/logs/NAME.log`, terminated then killed on the
    way out), its private directory and its settings (`nice`)."""

    out: Path
    workdir: Path
    nice: int = 0
    procs: list[Proc] = field(default_factory=list)
    quiet_waited: float = 0.0
    tokens_made: int = 0

    def env(self, **changes: str) -> dict[str, str]:
        """The environment of a process of the app: production settings, SQLite in the run's
        directory, no Redis; then `changes`."""
        unset = ("DJANGO_SETTINGS_MODULE", "REDIS_URL", "OC_PROCESSES", "WEB_CONCURRENCY")
        return {
            **{name: value for name, value in os.environ.items() if name not in unset},
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            "DATABASE_URL": f"sqlite:///{self.workdir / 'bench.sqlite3'}",
            "DJANGO_DEBUG": "false",
            "DJANGO_SECRET_KEY": "bench",
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
            # A bench's many event followers share one token, its listeners one operator:
            # the caps on what one credential holds open would refuse most of them.
            "OC_MAX_STREAMS_PER_TOKEN": "100000",
            "OC_MAX_LISTENERS_PER_USER": "100000",
            # The per-token rate limit is policy, not cost: out of the way of a bench's
            # handshakes and REST calls, which share one token (the limiter still runs).
            "OC_API_RATE": "100000",
            "OC_API_BURST": "100000",
            **changes,
        }

    async def spawn(self, name: str, argv: list[str], env: dict[str, str],
                    piped: bool = False) -> Proc:
        """A process logged to `out/logs/NAME.log`; with `piped`, only its stderr is, its stdout
        is read through `proc.stdout`."""
        log_path, pipe = self.out / "logs" / f"{name}.log", asyncio.subprocess.PIPE
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "w") as log:  # noqa: ASYNC230 - local; the process has its own copy
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=pipe if piped else log, stderr=log if piped else asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        handle = Proc(name, proc, log_path)
        self.procs.append(handle)
        self.prioritise(proc.pid)
        return handle

    def prioritise(self, pid: int) -> None:
        """With --nice N, run a benchmark process at niceness N (ahead of other work)."""
        if self.nice:
            try:
                os.setpriority(os.PRIO_PROCESS, pid, self.nice)
            except OSError as exc:
                say(f"    cannot set niceness {self.nice} on {pid}: {exc}")

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
        if handle in self.procs:
            self.procs.remove(handle)

    async def stop_all(self) -> None:
        for handle in reversed(list(self.procs)):
            await self.stop(handle)

    async def run_command(self, argv: list[str], env: dict[str, str], timeout: float = 120) -> str:
        """Run a command to its end; its stdout. A failure raises with its stderr."""
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RuntimeError(f"timed out: {' '.join(argv)}") from None
        if proc.returncode != 0:
            stderr = err.decode(errors="replace")
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{stderr}")
        return out.decode()

    async def wait_port(self, handle: Proc, port: int, timeout: float = 60.0) -> None:
        """Until the process listens on the port (read from the OS: no probe connection)."""
        deadline = time.monotonic() + timeout
        process = psutil.Process(handle.pid)
        while time.monotonic() < deadline:
            if (code := handle.proc.returncode) is not None:
                tail = log_tail(handle.log_path)
                raise RuntimeError(f"{handle.name} exited with {code}:\n{tail}")
            with contextlib.suppress(psutil.Error):
                for conn in process.net_connections(kind="tcp"):
                    if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port:
                        return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{handle.name} did not listen on {port} in {timeout}s")

    async def listening(self, name: str, argv_for_port, env: dict[str, str],
                        settle: float = 0.5) -> tuple[Proc, int]:
        """A server started on a free port (`argv_for_port(port)`), once it listens and `settle`
        s more have passed (its start-up goes on after listen: imports, the first GC)."""
        port = free_port()
        handle = await self.spawn(name, argv_for_port(port), env)
        await self.wait_port(handle, port)
        await asyncio.sleep(settle)
        return handle, port

    async def daphne(self, name: str, app: str, env: dict[str, str]) -> tuple[Proc, int]:
        """Daphne serving `app` on a free port, started: (process, port)."""
        return await self.listening(name, lambda port: daphne_argv(port, app), env)

    async def simulator(self, name: str, *options) -> tuple[Proc, str]:
        """`manage.py simulate_upstream OPTIONS` in its own process; (process, its base URL)."""
        handle, port = await self.listening(name, lambda port: [
            PY, "manage.py", "simulate_upstream", "--host", HOST, "--port", str(port),
            *map(str, options)], self.env(), settle=0.0)
        say(f"    simulator at ws://{HOST}:{port}/v1 (pid {handle.pid})")
        return handle, f"ws://{HOST}:{port}/v1"

    async def migrate_with_token(self, name: str, env: dict[str, str]) -> str:
        """`manage.py migrate`, then `create_api_token --name NAME-<n>` (token names are unique,
        and a part measured again makes another on the same database); the plain token."""
        await self.run_command([PY, "manage.py", "migrate", "--noinput"], env)
        self.tokens_made += 1
        name = f"{name}-{self.tokens_made}"
        out = await self.run_command([PY, "manage.py", "create_api_token", "--name", name], env)
        lines = [line.strip() for line in out.splitlines() if line.strip()]
        if not lines:
            raise RuntimeError("create_api_token printed no token")
        return lines[-1]

    @contextlib.asynccontextmanager
    async def app(self, name: str, env: dict[str, str], logs: dict, label: str = "", ignore=None,
                  seed: str = ""):
        """A migrated database with an API token (then `manage.py shell -c SEED`), and one
        Daphne of the app on it: (its base URL, the token, its process). Stopped at the end, its
        log scanned into `logs[label or name]`."""
        token = await self.migrate_with_token(f"bench-{name}", env)
        if seed:
            await self.run_command([PY, "manage.py", "shell", "-c", seed], env)
        handle, port = await self.daphne(name, APP, env)
        try:
            yield f"http://{HOST}:{port}", token, handle
        finally:
            await self.stop(handle)
            logs[label or name] = scan_log(handle.log_path, ignore)

    async def client(self, name: str, module: str, config: dict, env, budget: float,
                     on_event=show_progress) -> dict:
        """Run a client process of the benchmark (`python -m bench.MODULE CONFIG`, see
        `client_main`) and read its JSON lines: `on_event(message)` for each progress event;
        its `result` is returned. Killed after `budget` s; its stderr goes to its log."""
        argv = [PY, "-m", f"bench.{module}", json.dumps(config)]
        handle, result = await self.spawn(name, argv, env, piped=True), None
        try:
            async with asyncio.timeout(budget):
                async for line in handle.proc.stdout:
                    message = None
                    with contextlib.suppress(ValueError):
                        message = json.loads(line)
                    if isinstance(message, dict) and message.get("event") == "result":
                        result = message
                    elif isinstance(message, dict):
                        on_event(message)
                await handle.proc.wait()
        except TimeoutError:
            say(f"    {name} exceeded its {budget:.0f} s budget; stopping it")
        finally:
            await self.stop(handle, timeout=0)
        if result is None:
            tail = log_tail(handle.log_path, 20)
            raise RuntimeError(f"{name} gave no result (rc={handle.proc.returncode}):\n{tail}")
        return result

    async def measured_twice(self, measure, retry: bool = True) -> dict:
        """`measure()` once the machine is quiet; measured once more (with `retry`) when other
        work took more than NOISY_SHARE of the machine in the window. A failure is reported,
        not raised: the other runs go on."""
        for attempt in (1, 2):
            await self.quiet(30.0)
            try:
                result = await measure()
            except Exception as exc:  # noqa: BLE001 - reported; the other runs go on
                say(f"    FAILED: {exc}")
                return failure(exc)
            result["attempt"] = attempt
            share = result["other_cpu_share"]
            if share <= NOISY_SHARE or not retry or attempt == 2:
                return result
            say(f"    other processes used {100 * share:.0f}% of the machine: measuring again")

    async def against_target(self, key: str, name: str, env: dict, load: str, config: dict,
                             budget: float, on_start=None) -> dict:
        """A fresh target process (`key`: a floor or the relay, see `target_argv`), then the
        load generator `python -m bench.LOAD` against it (`config` plus the target's `base`
        URL and `target_pid`), the target stopped. `on_start(pid)` runs beside the
        measurement window. The load's result, with the target's log."""
        sim_url = env["OC_UPSTREAM_URL"]
        handle, port = await self.listening(name, lambda p: target_argv(key, p, sim_url), env)
        side = []

        def progress(message: dict) -> None:
            if message["event"] == "measure_start" and on_start:
                side.append(asyncio.create_task(on_start(handle.pid)))
            show_progress(message)

        try:
            config.update(base=f"http://{HOST}:{port}", target_pid=handle.pid)
            result = await self.client(f"{load}-{name}", load, config, env, budget, progress)
            for task in side:
                with contextlib.suppress(Exception):
                    await task
            if handle.proc.returncode is not None:
                result["target_exited"] = handle.proc.returncode
        finally:
            await self.stop(handle)
        return {**result, "target_log": scan_log(handle.log_path)}

    async def app_with_clients(self, part: str, config: dict, budget: float, *, sim=None,
                               seed: str = "") -> dict:
        """A fresh SQLite database, the simulator when `sim` gives its (deltas, interval), the
        app on that database (`app`, seeded with SEED), then the part's client process
        (`python -m bench.PART`) with `config` plus the Daphne's `base` URL, its `target_pid`,
        the simulator's pid to `watch` and the `token`. Every process is stopped at the end; the
        client's result, with the processes' logs."""
        env = self.env(DATABASE_URL=f"sqlite:///{self.workdir / f'{part}.sqlite3'}")
        logs, simulator = {}, None
        try:
            async with asyncio.timeout(budget):
                if sim:
                    simulator, env["OC_UPSTREAM_URL"] = await self.simulator(
                        f"{part}-simulator", "--deltas", sim[0], "--interval", sim[1])
                    config["watch"] = {"simulator": simulator.pid}
                async with self.app(f"{part}-relay", env, logs, seed=seed) as (base, token, daphne):
                    config.update(base=base, target_pid=daphne.pid, token=token)
                    result = await self.client(f"{part}-clients", part, config, env, budget)
                    if daphne.proc.returncode is not None:
                        result["daphne_exited"] = daphne.proc.returncode
        except TimeoutError:
            raise RuntimeError(f"the {part} part exceeded its {budget:g} s budget") from None
        finally:
            if simulator is not None:
                await self.stop(simulator)
                logs[simulator.name] = scan_log(simulator.log_path)
        return {**result, "logs": logs}

    async def quiet(self, limit: float) -> None:
        """Wait (≤ `limit` s, and ≤ QUIET_BUDGET_S over the whole run) until the machine is
        nearly idle. Other work (tests run by others) competes for the same cores and skews
        every figure; this only delays a measurement, it never stops one."""
        limit = max(0.0, min(limit, QUIET_BUDGET_S - self.quiet_waited))
        started = time.monotonic()
        psutil.cpu_percent(interval=None)
        while True:
            await asyncio.sleep(1.0)
            busy = psutil.cpu_percent(interval=None)
            waited = time.monotonic() - started
            if busy < QUIET_PERCENT or waited >= limit:
                break
        self.quiet_waited += waited
        if waited > 1.5:
            say(f"    waited {waited:.0f} s for a quiet machine (now {busy:.0f}% busy)")


# The relay and the two floors it is measured against (bench/floor_*.py).
TARGETS = {
    "websockets": "websockets floor",
    "channels": "Channels floor (Daphne)",
    "relay": "relay (Daphne)",
}


def target_argv(key: str, port: int, sim_url: str) -> list[str]:
    """A target on `port`: the websockets floor, the Channels floor, else the relay."""
    if key == "websockets":
        return [PY, "-m", "bench.floor_websockets", "--port", str(port), "--upstream", sim_url]
    return daphne_argv(port, "bench.floor_channels:application" if key == "channels" else APP)


def daphne_argv(port: int, app: str) -> list[str]:
    return [str(BIN / "daphne"), "-b", HOST, "-p", str(port), app]


# ---------------------------------------------------------------------------- the upstream
class CountingSimulator(Simulator):
    """The simulator, counting as it happens (its own event logs are bounded): `creates`
    (oc_request → session, receive stamp of the first accepted create), `duplicates` (a
    request's create accepted again), `overlaps` (an in-conversation create while a response
    is active), and per session the [start, end] of each in-conversation response."""

    def __init__(self, config: SimulatorConfig) -> None:
        super().__init__(config)
        self.observer = self  # each session tells it of creates, starts and ends
        self.creates: dict[str, tuple[str, float]] = {}
        self.duplicates: list[dict] = []
        self.overlaps: list[dict] = []
        self.creates_total = 0
        self.intervals: dict[str, list[list[float]]] = collections.defaultdict(list)
        self._open: dict[str, list[float]] = {}

    def response_create(self, session, event):
        received_at = session.received_log[-1][0] if session.received_log else time.monotonic()
        self.creates_total += 1
        params = event.get("response") if isinstance(event.get("response"), dict) else {}
        metadata = params.get("metadata") if isinstance(params.get("metadata"), dict) else {}
        tag = metadata.get("oc_request")
        if params.get("conversation") in (None, "auto") and session.active is not None:
            active = (session.active.metadata or {}).get("oc_request")
            self.overlaps.append({"session": session.id, "at": received_at, "oc_request": tag,
                                  "event_id": event.get("event_id"), "active_request": active})
        elif isinstance(tag, str) and tag in self.creates:
            self.duplicates.append({"session": session.id, "oc_request": tag, "at": received_at})
        elif isinstance(tag, str):
            self.creates[tag] = (session.id, received_at)

    def response_started(self, session, response):
        if response.in_conversation:
            self._open[response.id] = [time.monotonic(), math.inf]
            self.intervals[session.id].append(self._open[response.id])

    def response_ended(self, session, response):
        if (interval := self._open.pop(response.id, None)) is not None:
            interval[1] = time.monotonic()

    def waited(self, session_id: str, sent: float, received: float) -> bool:
        """Was a response of this session in progress between the POST and its create?"""
        intervals = self.intervals.get(session_id, [])
        index = bisect.bisect_left([i[0] for i in intervals], received)
        return any(end > sent for _, end in intervals[max(0, index - 8) : index])


class SimulatorThread:
    """A `CountingSimulator` on an event loop of its own in a daemon thread, so its receive
    stamps do not wait behind the benchmark's work."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-sim", daemon=True)
        self.thread.start()
        self.sim: CountingSimulator = self.call(self._start(config))

    async def _start(self, config: SimulatorConfig) -> CountingSimulator:
        sim = CountingSimulator(config)
        await sim.start(HOST, 0)
        return sim

    def call(self, coro, timeout: float = 15.0):
        future: Future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.call(self.sim.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


# ----------------------------------------------------- operators, and windows with and without them
async def login(client: httpx.AsyncClient, base: str, username: str) -> str:
    """The login form, as a browser fills it: the `sessionid` cookie's value. Cookies are
    carried by hand: with DJANGO_DEBUG=false they are `Secure`, which a cookie jar does not
    send back over plain http."""
    page = await client.get(f"{base}/accounts/login/")
    csrf = page.cookies.get("csrftoken")
    if page.status_code != 200 or not csrf:
        raise RuntimeError(f"GET /accounts/login/ → {page.status_code}, csrftoken {bool(csrf)}")
    form = {"username": username, "password": OPERATOR_PASSWORD, "csrfmiddlewaretoken": csrf,
            "next": "/console/"}
    answer = await client.post(
        f"{base}/accounts/login/", data=form,
        headers={"Cookie": f"csrftoken={csrf}", "Referer": f"{base}/accounts/login/"},
    )
    session = answer.cookies.get("sessionid")
    if answer.status_code != 302 or not session:
        raise RuntimeError(f"login of {username} → {answer.status_code}: {answer.text[:200]}")
    return session


async def log_in_operators(base: str, prefix: str, count: int) -> list[str]:
    """The session cookies of operators PREFIX01… (`operators_code`), logged in one by one."""
    async with httpx.AsyncClient(timeout=30.0) as client:
        return [await login(client, base, f"{prefix}{i:02d}") for i in range(1, count + 1)]


def operators_code(prefix: str, count: int) -> str:
    """`manage.py shell` code creating the operators PREFIX01…: one password hash for all
    (hashing is slow on purpose)."""
    return (
        "from django.contrib.auth import get_user_model\n"
        "from django.contrib.auth.hashers import make_password\n"
        "User = get_user_model()\n"
        f"digest = make_password({OPERATOR_PASSWORD!r})\n"
        f"User.objects.bulk_create([User(username=f'{prefix}{{i:02d}}', password=digest) "
        f"for i in range(1, {count + 1})])\n"
    )


@dataclass(eq=False)
class OperatorSocket:
    """One operator's browser socket on `/ws/console/`: the session cookie, the page's Origin,
    permessage-deflate offered; every frame JSON-parsed as the page's script does."""

    cookie: str
    kind: str = "dashboard"
    frames: list[tuple[float, str, int]] = field(default_factory=list)  # (monotonic, type, bytes)
    first: dict | None = None
    errors: list[str] = field(default_factory=list)
    ws: Any = None
    reader: asyncio.Task | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False

    async def open(self, base: str, subscribe: dict) -> None:
        """Connected and subscribed, once the first message arrived."""
        self.ws = await connect(
            base.replace("http", "ws", 1) + "/ws/console/", origin=base,
            additional_headers={"Cookie": f"sessionid={self.cookie}"},
            max_size=None, open_timeout=10, close_timeout=2, ping_interval=None,
        )
        self.reader = asyncio.create_task(self._read())
        await self.ws.send(json.dumps(subscribe))
        async with asyncio.timeout(15):
            await self.ready.wait()

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                at, message = time.monotonic(), json.loads(frame)
                kind = message.get("type") if isinstance(message, dict) else None
                self.frames.append((at, str(kind), len(frame)))
                if kind == "error":
                    self.errors.append(frame[:300])
                if self.first is None:
                    self.first = message
                    self.ready.set()
        except Exception as exc:  # noqa: BLE001 - reported with the figures
            self.errors.append(f"reader: {type(exc).__name__}: {exc}")
        finally:
            self.closed = True
            self.ready.set()

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)


async def alternate(schedule: str, attach, measure, settle: float, retry: bool = False) -> list:
    """The windows of `schedule` (`off,on,…`): `attach(on)`, `settle` s, then `measure(index,
    on)` → the window. With `retry`, the first disturbed window (other work above NOISY_SHARE
    of the machine) is kept, marked `repeated`, and measured again at once."""
    pending, windows, retries = [p.strip() == "on" for p in schedule.split(",")], [], int(retry)
    while pending:
        on = pending.pop(0)
        await attach(on)
        await asyncio.sleep(settle)
        window = await measure(len(windows) + 1, on)
        windows.append(window)
        emit(event="window", index=window["index"], on=on)
        if retries and window["other_cpu_share"] > NOISY_SHARE:
            retries -= 1
            window["repeated"] = True
            pending.insert(0, on)
    return windows


# ---------------------------------------------------------------------------- callers
TYPE_RE = re.compile(rb'"type"\s*:\s*"([a-z_.]+)"')  # an event's type comes first in its frame
STAMP_RE = re.compile(rb'"event_id"\s*:\s*"event_\d+_(\d+)"')  # the simulator's send stamp
DELTA = b"response.output_text.delta"
DONE = b"response.done"
CREATED = b"response.created"
ERROR = b"error"


def realtime_url(base: str) -> str:
    """The Realtime endpoint of the server at `base` (`http://host:port`)."""
    return base.replace("http", "ws", 1) + f"/v1/realtime?model={MODEL}"


async def open_caller(url: str, token: str, timeout: float = 30.0) -> tuple[Any, str]:
    """A Realtime caller's socket as every part opens it (the token, no size cap, no
    compression, no keepalive pings: they would be measured too), once `session.created`
    arrived, and the session's id. An `error` event before it raises."""
    ws = await connect(
        url, additional_headers={"Authorization": f"Bearer {token}"} if token else {},
        max_size=None, compression=None, open_timeout=timeout, close_timeout=2, ping_interval=None,
    )
    try:
        async with asyncio.timeout(timeout):
            while True:
                event = json.loads(await ws.recv())
                if event.get("type") == "session.created":
                    return ws, event["session"]["id"]
                if event.get("type") == "error":
                    raise RuntimeError(f"error before session.created: {json.dumps(event)[:300]}")
    except BaseException:
        with contextlib.suppress(Exception):
            await ws.close()
        raise


@dataclass
class Stats:
    """What the looping callers (`run_caller`) saw; counted while `measuring`."""

    measuring: bool = False
    stop: bool = False
    deltas: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    unstamped: int = 0
    latencies_ns: array = field(default_factory=lambda: array("q"))
    window_start_ns: int = 0  # the measurement window's bounds (`measure_for`)
    window_end_ns: int = 0

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(text[:300])


def turn_frames(text: str, event_id: str = "", item_id: str = "", **response) -> list[str]:
    """A caller's turn as JSON frames: `conversation.item.create` (a user message, `text`),
    then `response.create`; each with its event id, and the create's `response`, when given."""
    content = [{"type": "input_text", "text": text}]
    item = {"type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": content}}
    create: dict[str, Any] = {"type": "response.create"}
    if item_id:
        item["event_id"] = item_id
    if event_id:
        create["event_id"] = event_id
    if response:
        create["response"] = response
    return [json.dumps(frame, separators=(",", ":")) for frame in (item, create)]


async def run_caller(ws, index: int, stats: Stats) -> None:
    """Loop `conversation.item.create` + `response.create` → read to `response.done`, until
    `stats.stop`. Frames are not parsed: the type and the simulator's send stamp are read from
    the bytes; per-delta latency = receive time − send stamp."""
    text = f"Hello from bench caller {index}."
    item, create = turn_frames(text, f"evt_bench_resp_{index}", f"evt_bench_item_{index}")
    try:
        while not stats.stop:
            await ws.send(item)
            await ws.send(create)
            created = False
            while True:
                frame = await ws.recv(decode=False)
                now = time.time_ns()
                match = TYPE_RE.search(frame)
                kind = match.group(1) if match else None
                if kind == DELTA:
                    if stats.measuring:
                        stamp = STAMP_RE.search(frame)
                        if stamp is None:
                            stats.unstamped += 1
                        else:
                            stats.latencies_ns.append(now - int(stamp.group(1)))
                        stats.deltas += 1
                elif kind == DONE:
                    break
                elif kind == CREATED:
                    created = True
                elif kind == ERROR:
                    stats.error(frame.decode("utf-8", "replace"))
                    if not created:
                        break  # our response.create was refused: ask again
    except ConnectionClosed as exc:
        if not stats.stop:
            stats.error(f"closed by target: {exc}")


@dataclass(eq=False)
class Caller:
    """A Realtime caller that keeps reading its socket: counts `response.done` (waking
    `changed`), keeps `error` events, and says why it closed if it did before `close()`.
    Subclasses see every frame through `on_frame`."""

    ws: Any
    session_id: str
    dones: int = 0
    errors: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    closed: str | None = None
    reader: asyncio.Task | None = None
    ending: bool = False

    @classmethod
    async def open(cls, url: str, token: str, **fields: Any) -> Caller:
        ws, session_id = await open_caller(url, token)
        caller = cls(ws, session_id, **fields)
        caller.reader = asyncio.create_task(caller._read())
        return caller

    async def _read(self) -> None:
        try:
            while True:
                data = await self.ws.recv(decode=False)
                match = TYPE_RE.search(data)
                self.on_frame(match.group(1) if match else None, data)
        except ConnectionClosed as exc:
            if not self.ending:
                self.closed = f"closed: {exc}"
        except Exception as exc:  # noqa: BLE001 - a broken caller is a finding, not a crash
            self.closed = f"reader: {type(exc).__name__}: {exc}"
        finally:
            self.changed.set()

    def on_frame(self, kind: bytes | None, data: bytes) -> None:
        if kind == DONE:
            self.dones += 1
            self.changed.set()
        elif kind == ERROR:
            self.errors.append(data[:300].decode(errors="replace"))

    async def send_turn(self, text: str, event_id: str = "", **response) -> None:
        """A turn (`turn_frames`): a user message, then `response.create`."""
        for frame in turn_frames(text, event_id, **response):
            await self.ws.send(frame)

    async def wait_dones(self, count: int, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while self.dones < count:
                if self.closed:
                    raise RuntimeError(f"caller {self.session_id}: {self.closed}")
                self.changed.clear()
                await self.changed.wait()

    async def close(self) -> None:
        self.ending = True
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self.ws.close()
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)


# ---------------------------------------------------------------------------- HTTP
PHASES = ("auth", "db", "ping")  # the POST's Server-Timing phases, in order; any may be absent
_TIMING_RE = re.compile(r'(\w+);(?:dur=([\d.]+)|desc="([\d.]+)")')


def parse_server_timing(header: str) -> dict[str, float]:
    """`auth;dur=0.5, db;dur=1.2, ping;dur=0.1, start;desc="123.4"` → seconds; `start` (sent
    with DJANGO_DEBUG true only) is the server's monotonic clock as the request's timing began."""
    return {name: float(dur) / 1000 if dur else float(desc)
            for name, dur, desc in _TIMING_RE.findall(header or "")}


async def timed_request(client, method: str, url: str, **kwargs):
    """(response, sent, answered): an httpx request, and the monotonic times (httpcore's trace
    hook) when the client started writing it and when it had the response headers."""
    at: dict[str, float] = {}

    async def trace(name: str, info: dict) -> None:
        at[name] = time.monotonic()

    response = await client.request(method, url, extensions={"trace": trace}, **kwargs)
    sent, answered = "send_request_headers.started", "receive_response_headers.complete"
    return response, at.get(f"http11.{sent}"), at.get(f"http11.{answered}")


def http_client(connections: int, **kwargs) -> httpx.AsyncClient:
    """A keep-alive HTTP client with room for `connections` at once."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(limits=limits, **kwargs)


async def post_nudge(client, base: str, token: str, session_id: str, n: int):
    """A REST nudge, `POST /api/v1/sessions/{id}/responses` (202, or it raises): (the response,
    when the client started writing it, when it had the response headers), monotonic."""
    body = {"instructions": "Bench nudge: answer briefly.", "metadata": {"n": str(n)}}
    url = f"{base}/api/v1/sessions/{session_id}/responses"
    headers = {"Authorization": f"Bearer {token}"}
    response, sent, answered = await timed_request(client, "POST", url, json=body, headers=headers)
    if response.status_code != 202:
        raise RuntimeError(f"POST → {response.status_code}: {response.text[:200]}")
    return response, sent, answered


async def wait_live(client, url: str, token: str, timeout: float, every: float) -> None:
    """Until the REST hook shows the session at `url` as `live` (its row is written once the
    upstream answered)."""
    async with asyncio.timeout(timeout):
        while True:
            response = await client.get(url, headers={"Authorization": f"Bearer {token}"})
            if response.status_code == 200 and response.json().get("status") == "live":
                return
            await asyncio.sleep(every)


# ------------------------------------------ report, and the per-C runs of the relay and voice parts
def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("**met**" if ok else "**missed**")


def at_most(value, limit) -> str:
    """The verdict on `value` ≤ `limit`: not measured when there is no value."""
    return verdict(None if value is None else value <= limit)


def quantile_rows(latency: dict, limits: dict, what: str, *cells) -> list[list]:
    """Target rows `what` (with `{q}` and `{limit}`), `cells`, then the measured quantile and
    its verdict, for each quantile q ≤ limit (ms) of `limits`."""
    return [[what.format(q=q, limit=limit), *cells, f"{fmt(latency[q], 2)} ms",
             at_most(latency[q], limit)] for q, limit in limits.items()]


def table(columns: list[str], rows: list[list], left: int = 1) -> str:
    """A Markdown table: the first `left` columns left-aligned, the others right-aligned."""
    rule = "|" + "---|" * left + "---:|" * (len(columns) - left)
    lines = ["| " + " | ".join(columns) + " |", rule]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def targets_table(rows: list[list], title="Targets:", columns=("measured",), left=3) -> str:
    """The targets: what, then `columns`, then the verdict."""
    return f"{title}\n\n" + table(["target", *columns, "verdict"], rows, left=left)


def disturbed(label: str, share: float, rest: str = "") -> str:
    """A report line for a figure measured while other work took more than NOISY_SHARE."""
    return f"- {label}: disturbed: other processes used {100 * share:.0f}% of the machine{rest}"


def disturbed_windows(windows: list[dict], rest=lambda window: "") -> list[str]:
    """`disturbed` lines for the windows in which other work took more than NOISY_SHARE."""
    return [disturbed(f"window {w['index']}", w["other_cpu_share"], rest(w))
            for w in windows if w["other_cpu_share"] > NOISY_SHARE]


def examples(samples: list[str], n: int = 3) -> str:
    return "; ".join(f"`{s[:200]}`" for s in samples[:n])


def errors_line(label: str, count: int, samples: list[str]) -> list[str]:
    """A report line for errors seen, with a few examples; none without errors."""
    return [f"- {label}: {count} error(s); e.g. {examples(samples)}"] if count else []


def section(title: str, result: dict | None, body) -> str:
    """A report section: the paragraphs of `body(result)`, or why there are none. A failed
    part with figures (`measured` in its result) is still rendered."""
    out = [f"## {title}\n"]
    if result is None:
        out.append("Not run (filtered out).\n")
    elif "failure" in result and not result.get("measured"):
        out.append(f"Failed: `{result['failure'][:800]}`\n")
    else:
        out += body(result)
    return "\n".join(out) + "\n"


def problems_text(problems: list[str], logs: dict | None = None) -> str:
    """The report's list of errors, warnings and log lines (`log_problems(logs)` after
    `problems`)."""
    problems = problems + log_problems(logs or {})
    return "Errors and log lines: " + ("\n\n" + "\n".join(problems) if problems else "none.") + "\n"


def ok_run(run: dict | None, key: str) -> bool:
    """Did a target's run (relay and voice parts) measure `key`?"""
    return bool(run) and "failure" not in run and bool(run.get(key))


def run_ratio(a: dict | None, b: dict | None, key: str, get=None) -> float | None:
    """`get(run)` (by default its `key`) of run `a` ÷ that of run `b`, when both measured
    `key`; else None."""
    if not (ok_run(a, key) and ok_run(b, key)):
        return None
    x, y = (get(a), get(b)) if get else (a[key], b[key])
    return x / y if x is not None and y else None


def ratios_text(by: dict, c: int, key: str, pairs) -> str:
    """`text` formatted with the ratio of target a's run at C to b's, for each (a, b, text, get)
    of `pairs` both measured (`run_ratio`), joined."""
    found = [text.format(r) for a, b, text, get in pairs
             if (r := run_ratio(by.get((a, c)), by.get((b, c)), key, get)) is not None]
    return "; ".join(found) + ".\n" if found else ""


def per_c(runs: list[dict], labels: dict, c_table, ratios) -> tuple[dict, list[int], list[str]]:
    """The runs by (target, C), the Cs, and per C its heading, `c_table(runs)` and
    `ratios(by, c)`."""
    by = {(r["target"], r["concurrency"]): r for r in runs}
    cs, out = sorted({r["concurrency"] for r in runs}), []
    for c in cs:
        runs_at_c = [by[k, c] for k in labels if (k, c) in by]
        out += [f"### C = {c}\n", c_table(runs_at_c), ratios(by, c)]
    return by, cs, out


def runs_table(runs: list[dict], labels: dict, columns: list[str], cells) -> str:
    """One row per run: its label, then `cells(run)`, or why it failed."""
    rows = [[labels[r["target"]], *cells(r)] if "failure" not in r else
            [labels[r["target"]], f"failed: {r['failure'].splitlines()[0][:80]}",
             *[""] * (len(columns) - 2)] for r in runs]
    return table(columns, rows)


def runs_problems(runs: list[dict], labels: dict, lines_of, clean: str) -> str:
    """Report lines for each run: a failure, or `lines_of(label, run)`, the target's log, a
    disturbed window, an early exit; `clean` when there are none."""
    lines = []
    for r in runs:
        label = f"{labels[r['target']]}, C={r['concurrency']}"
        if "failure" in r:
            lines.append(f"- {label}: run failed: `{' '.join(r['failure'].split())[-600:]}`")
            continue
        lines += lines_of(label, r) + log_problems({f"{label}: target": r["target_log"]})
        if r["other_cpu_share"] > NOISY_SHARE:
            rest = f" in the window (attempt {r['attempt']})"
            lines.append(disturbed(label, r["other_cpu_share"], rest))
        if r.get("target_exited") is not None:
            lines.append(f"- {label}: target exited with {r['target_exited']} during the run")
    return "\n".join(lines) + "\n" if lines else f"None: {clean}\n"
