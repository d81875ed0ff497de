"""What the parts of the benchmark share: processes and ports, CPU and memory readings,
percentiles, log scanning, Realtime callers, HTTP timing, and the report's formatting.

The parts (`relay`, `nudge`, `fanout`, `soak`) and the client processes (`load`, the fan-out
clients) import this module and never each other; `bench/run.py` imports the parts. The app is
reached only through its public surfaces (HTTP, WebSockets, `manage.py` commands, environment
settings) and the upstream simulator, which is imported here and nowhere else in bench/.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import re
import signal
import sys
import time
from array import array
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
CORES = psutil.cpu_count() or 1
NOISY_SHARE = 0.10  # other work above this share of the machine: a figure is disturbed
QUIET_PERCENT = 12.0  # machine busy % (all cores) below which it counts as quiet
QUIET_BUDGET_S = 120.0  # the whole run's time waiting for quiet
OPERATOR_PASSWORD = "bench-operator-password"  # noqa: S105 - a bench-private database's users


def say(text: str) -> None:
    print(text, flush=True)


def emit(**fields: Any) -> None:
    """One JSON line on stdout: how a client process reports to the run."""
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def failure(exc: BaseException) -> dict:
    return {"failure": f"{type(exc).__name__}: {exc}"[:2000]}


# ---------------------------------------------------------------------------- numbers


def nearest_rank(sorted_values: list, q: float):
    """The nearest-rank percentile `q` (0–1) of sorted values; None when there are none.
    Every part reports percentiles this way."""
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))]


def summary(values, unit: float = 1000.0) -> dict:
    """n, p50, p90, p99, max and mean of `values` × `unit` (seconds → ms by default)."""
    ordered = sorted(values)

    def at(q: float) -> float | None:
        value = nearest_rank(ordered, q)
        return None if value is None else value * unit

    return {
        "n": len(ordered),
        **{f"p{round(q * 100)}": at(q) for q in (0.5, 0.9, 0.99)},
        "max": ordered[-1] * unit if ordered else None,
        "mean": sum(ordered) / len(ordered) * unit if ordered else None,
    }


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


# ---------------------------------------------------------------------------- CPU and memory


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


def machine_busy() -> float:
    """CPU seconds all cores have been busy since boot."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


class CpuWindow:
    """CPU seconds of named processes, and of everything else on the machine, over a window
    from `begin()` to `end()`."""

    def __init__(self, groups: dict[str, ProcessGroup]) -> None:
        self.groups = groups
        self.begin()

    def begin(self) -> None:
        self.started = time.monotonic()
        self.busy = machine_busy()
        self.cpu = {name: group.cpu() for name, group in self.groups.items()}

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


# ---------------------------------------------------------------------------- logs

_LOG_STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
_ID_RE = re.compile(r"(?<=[.:_!-])[0-9a-f]{16,}|[0-9a-f]{8}-[0-9a-f-]{27}")
_LEVEL_RE = re.compile(r"\b(ERROR|CRITICAL|WARNING)\b")


def scan_log(path: Path, ignore: re.Pattern | None = None) -> dict:
    """The warnings, errors and tracebacks a process logged: counts, a few examples, and kinds
    (ids masked) with their first and last time. Lines matching `ignore` are not counted."""
    counts: collections.Counter = collections.Counter()
    samples: list[str] = []
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
            if len(samples) < 8:
                samples.append(line[:300])
            stamp = line[11:19] if _LOG_STAMP.match(line) else "?"
            what = _ID_RE.sub("X", line[24:] if stamp != "?" else line)[:160]
            first, _, n = kinds.get(what, (stamp, stamp, 0))
            kinds[what] = (first, stamp, n + 1)
    top = sorted(kinds.items(), key=lambda kv: -kv[1][2])[:6]
    return {
        "counts": dict(counts),
        "samples": samples,
        "kinds": [{"line": k, "first": f, "last": la, "n": n} for k, (f, la, n) in top],
    }


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
    log_file: Any = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


@dataclass
class Bench:
    """The run's processes (each logged to `out/logs/NAME.log`, terminated then killed on the
    way out), its private directory and its settings (`nice`)."""

    out: Path
    workdir: Path
    nice: int = 0
    procs: list[Proc] = field(default_factory=list)
    quiet_waited: float = 0.0

    def env(self, **changes: str | None) -> dict[str, str]:
        """The environment of a process of the app: production settings, SQLite in the run's
        directory, no Redis; then `changes` (None removes a variable)."""
        env = dict(os.environ)
        for name in ("DJANGO_SETTINGS_MODULE", "REDIS_URL", "OC_PROCESSES", "WEB_CONCURRENCY"):
            env.pop(name, None)
        env.update(
            PYTHONPATH=str(ROOT),
            PYTHONUNBUFFERED="1",
            DATABASE_URL=f"sqlite:///{self.workdir / 'bench.sqlite3'}",
            DJANGO_DEBUG="false",
            DJANGO_SECRET_KEY="bench",
            DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        )
        for name, value in changes.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    def log_path(self, name: str) -> Path:
        path = self.out / "logs" / f"{name}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    async def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        log_path = self.log_path(name)
        log_file = open(log_path, "w")  # noqa: SIM115, ASYNC230 - local; closed in stop()
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log_file,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True,
        )
        handle = Proc(name, proc, log_path, log_file)
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
        if handle.log_file is not None:
            handle.log_file.close()
            handle.log_file = None
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
            if handle.proc.returncode is not None:
                code = handle.proc.returncode
                raise RuntimeError(f"{handle.name} exited with {code}:\n{handle.log_tail()}")
            with contextlib.suppress(psutil.Error):
                for conn in process.net_connections(kind="tcp"):
                    if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port:
                        return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{handle.name} did not listen on {port} in {timeout}s")

    async def listening(self, name: str, argv_for_port, env: dict[str, str]) -> tuple[Proc, int]:
        """A server started on a free port (`argv_for_port(port)`), once it listens."""
        port = free_port()
        handle = await self.spawn(name, argv_for_port(port), env)
        await self.wait_port(handle, port)
        return handle, port

    async def daphne(self, name: str, app: str, env: dict[str, str]) -> tuple[Proc, int]:
        """Daphne serving `app` on a free port; (process, port), once start-up is done."""
        handle, port = await self.listening(
            name, lambda port: [str(BIN / "daphne"), "-b", HOST, "-p", str(port), app], env
        )
        await asyncio.sleep(0.5)  # imports after listen, first GC
        return handle, port

    async def simulator(self, name: str, *, deltas: int, interval: float, env) -> tuple[Proc, str]:
        """`manage.py simulate_upstream` in its own process; (process, its base URL)."""
        handle, port = await self.listening(name, lambda port: [
            PY, "manage.py", "simulate_upstream", "--host", HOST, "--port", str(port),
            "--deltas", str(deltas), "--interval", str(interval),
        ], env)
        return handle, f"ws://{HOST}:{port}/v1"

    async def migrate_with_token(self, name: str, env: dict[str, str]) -> str:
        """`manage.py migrate`, then `create_api_token --name NAME`; the plain token."""
        await self.run_command([PY, "manage.py", "migrate", "--noinput"], env)
        out = await self.run_command([PY, "manage.py", "create_api_token", "--name", name], env)
        lines = [line.strip() for line in out.splitlines() if line.strip()]
        if not lines:
            raise RuntimeError("create_api_token printed no token")
        return lines[-1]

    async def client(self, name: str, argv: list[str], env, budget: float, on_event) -> dict:
        """Run a client process of the benchmark (`python -m bench.X`) and read its JSON lines:
        `on_event(message)` for each progress event; its `result` is returned. Killed after
        `budget` s; its stderr goes to its log."""
        with open(self.log_path(name), "w") as log:  # noqa: ASYNC230 - local
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=log, start_new_session=True,
            )
            self.prioritise(proc.pid)
            result = None
            try:
                async with asyncio.timeout(budget):
                    async for line in proc.stdout:
                        message = None
                        with contextlib.suppress(ValueError):
                            message = json.loads(line)
                        if isinstance(message, dict) and message.get("event") == "result":
                            result = message
                        elif isinstance(message, dict):
                            on_event(message)
                    await proc.wait()
            except TimeoutError:
                say(f"    {name} exceeded its {budget:.0f} s budget; stopping it")
            finally:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
        if result is None:
            tail = "\n".join(self.log_path(name).read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(f"{name} gave no result (rc={proc.returncode}):\n{tail}")
        return result

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


# ---------------------------------------------------------------------------- operators


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


# ---------------------------------------------------------------------------- callers

TYPE_RE = re.compile(rb'"type"\s*:\s*"([a-z_.]+)"')  # an event's type comes first in its frame
STAMP_RE = re.compile(rb'"event_id"\s*:\s*"event_\d+_(\d+)"')  # the simulator's send stamp
DELTA = b"response.output_text.delta"
DONE = b"response.done"
CREATED = b"response.created"
ERROR = b"error"


async def connect_caller(url: str, token: str, timeout: float = 30.0):
    """A Realtime caller's socket as every part opens it: the token, no size cap, no
    compression, no keepalive pings (they would be measured too)."""
    return await connect(
        url, additional_headers={"Authorization": f"Bearer {token}"} if token else {},
        max_size=None, compression=None, open_timeout=timeout, close_timeout=2, ping_interval=None,
    )


async def open_caller(url: str, token: str, timeout: float = 30.0) -> tuple[Any, str]:
    """A caller's socket once `session.created` arrived, and the session's id. An `error`
    event before it raises."""
    ws = await connect_caller(url, token, timeout)
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


class Stats:
    """What the looping callers (`run_caller`) saw; counted while `measuring`."""

    def __init__(self) -> None:
        self.measuring = False
        self.stop = False
        self.deltas = 0
        self.responses = 0
        self.errors = 0
        self.error_samples: list[str] = []
        self.unstamped = 0
        self.latencies_ns = array("q")

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(text[:300])


def _turn_frames(index: int) -> tuple[str, str]:
    text = f"Hello from bench caller {index}."
    message = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    item = {"type": "conversation.item.create", "event_id": f"evt_bench_item_{index}",
            "item": message}
    create = {"type": "response.create", "event_id": f"evt_bench_resp_{index}"}
    return json.dumps(item, separators=(",", ":")), json.dumps(create, separators=(",", ":"))


async def run_caller(ws, index: int, stats: Stats) -> None:
    """Loop `conversation.item.create` + `response.create` → read to `response.done`, until
    `stats.stop`. Frames are not parsed: the type and the simulator's send stamp are read from
    the bytes; per-delta latency = receive time − send stamp."""
    item, create = _turn_frames(index)
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
                    if stats.measuring:
                        stats.responses += 1
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
    return {
        name: float(dur) / 1000 if dur else float(desc)
        for name, dur, desc in _TIMING_RE.findall(header or "")
    }


class Tracer:
    """httpcore trace hook: the monotonic time of each step of one request."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}

    async def __call__(self, name: str, info: dict) -> None:
        self.at[name] = time.monotonic()

    @property
    def sent(self) -> float | None:
        """The client started writing the request."""
        return self.at.get("http11.send_request_headers.started")

    @property
    def answered(self) -> float | None:
        """The client has the response headers."""
        return self.at.get("http11.receive_response_headers.complete")


async def timed_request(client, method: str, url: str, **kwargs):
    """(response, sent, answered): monotonic times of an httpx request's round trip."""
    tracer = Tracer()
    response = await client.request(method, url, extensions={"trace": tracer}, **kwargs)
    return response, tracer.sent, tracer.answered


async def wait_live(client, url: str, token: str, timeout: float, every: float) -> None:
    """Until the REST hook shows the session at `url` as `live` (its row is written once the
    upstream answered)."""
    async with asyncio.timeout(timeout):
        while True:
            response = await client.get(url, headers={"Authorization": f"Bearer {token}"})
            if response.status_code == 200 and response.json().get("status") == "live":
                return
            await asyncio.sleep(every)


# ---------------------------------------------------------------------------- report


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("**met**" if ok else "**missed**")


def table(columns: list[str], rows: list[list], left: int = 1) -> str:
    """A Markdown table: the first `left` columns left-aligned, the others right-aligned."""
    rule = "|" + "---|" * left + "---:|" * (len(columns) - left)
    lines = ["| " + " | ".join(columns) + " |", rule]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def examples(samples: list[str], n: int = 3) -> str:
    return "; ".join(f"`{s[:200]}`" for s in samples[:n])


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


def problems_text(problems: list[str]) -> str:
    return "Errors and log lines: " + ("\n\n" + "\n".join(problems) if problems else "none.") + "\n"
