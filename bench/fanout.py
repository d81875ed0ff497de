"""Dashboard fan-out (issue 4): operator sockets on a busy relay, and what they cost it.

Run by `bench/run.py` (the `fanout` part). Processes, all on 127.0.0.1:

- one Daphne process serving `operator_console.asgi:application` (DJANGO_DEBUG=false,
  in-memory channel layer, SQLite in a bench-private file): the relay whose CPU is measured;
- the upstream simulator in its own process (`manage.py simulate_upstream`, `SIM_DELTAS` text
  deltas per response, `SIM_INTERVAL` apart);
- one client process (`python -m bench.fanout`, this module's `main`), holding
  `CALLERS` Realtime callers (`websockets`, bench/load.py's caller loop: `conversation.item.create`
  + `response.create` → read to `response.done`, again at once), so every session streams deltas
  at the simulator's steady pace; and, in the windows *with* dashboards, the operators' browser
  sockets on `/ws/console/`: `WATCHERS` watching one of those sessions (`watch.session`) and
  `DASHBOARDS` on the dashboard feed (`watch.sessions`), each logged in as its own operator (the
  login form's session cookie, the site's `Origin`), each reading and JSON-parsing every frame
  as a page's script does.

Measurement windows of the same length alternate without and with the operator sockets
(`SCHEDULE`: without, with, without, with, without — symmetric, so a slow drift of the machine
or of the relay's state weighs on both sides alike), at the same caller load. Before each
window the sockets are connected (and have their first message) or closed, then `SETTLE`
seconds pass, so logins, snapshots and presence changes stay outside the windows. Per window:
CPU time (user + system, psutil) of Daphne, the simulator and the client process, all the
machine's busy time, the deltas the callers received and their latency (simulator send stamp →
caller), and every frame each operator socket received (time, type, size).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil
from websockets.asyncio.client import connect

from bench.load import Stats, connect_caller, cpu_seconds, machine_busy, percentile, run_caller

CALLERS = 100
WATCHERS = 20
DASHBOARDS = 10
SIM_DELTAS = 20
SIM_INTERVAL = 0.02  # s between deltas: 50 deltas/s per session, 5,000/s in all
PASSWORD = "bench-operator-password"  # noqa: S105 - a bench-private database's users
USER_PREFIX = "bench-op-"

# (schedule, window s, settle s before each window, warm-up s), full and --quick.
PLAN = {
    "full": ("off,on,off,on,off", 16.0, 3.0, 5.0),
    "quick": ("off,on", 4.0, 1.0, 2.0),
}
BUDGET_S = {"full": 150.0, "quick": 75.0}  # the whole part, start-up included

CPU_TARGET = 1.25  # with dashboards ÷ without: Daphne CPU
TRANSCRIPT_PER_S = 20  # at most ~20 transcript updates a second per session per browser
FEED_PER_S = 1  # the dashboard feed: at most one update a second
NOISY_SHARE = 0.10  # other work above this share of the machine in a window: flagged


def emit(**fields) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


# --- the client process ----------------------------------------------------------------------


async def login(client: httpx.AsyncClient, base: str, username: str, password: str) -> str:
    """The login form, as a browser fills it: the `sessionid` cookie's value.

    Cookies are carried by hand: with DJANGO_DEBUG=false they are `Secure`, which a cookie jar
    does not send back over plain http (a browser would be on https)."""
    page = await client.get(f"{base}/accounts/login/")
    csrf = page.cookies.get("csrftoken")
    if page.status_code != 200 or not csrf:
        raise RuntimeError(f"GET /accounts/login/ → {page.status_code}, csrftoken {bool(csrf)}")
    answer = await client.post(
        f"{base}/accounts/login/",
        data={
            "username": username,
            "password": password,
            "csrfmiddlewaretoken": csrf,
            "next": "/console/",
        },
        headers={"Cookie": f"csrftoken={csrf}", "Referer": f"{base}/accounts/login/"},
    )
    session = answer.cookies.get("sessionid")
    if answer.status_code != 302 or not session:
        raise RuntimeError(f"login of {username} → {answer.status_code}: {answer.text[:200]}")
    return session


async def open_caller(url: str, token: str, stats: Stats) -> tuple[Any, str] | None:
    """A Realtime caller: its socket and the `session.id` of its `session.created`."""
    try:
        async with asyncio.timeout(30):
            ws = await connect_caller(url, {"Authorization": f"Bearer {token}"}, 30)
            while True:
                event = json.loads(await ws.recv())
                if event.get("type") == "session.created":
                    return ws, event["session"]["id"]
                if event.get("type") == "error":
                    stats.error(json.dumps(event))
    except Exception as exc:  # noqa: BLE001 - a failed caller is a figure, not a crash
        stats.error(f"connect: {type(exc).__name__}: {exc}")
        return None


@dataclass(eq=False)
class Operator:
    """One operator's browser socket on `/ws/console/`."""

    kind: str  # "watcher" (watch.session) or "dashboard" (watch.sessions)
    cookie: str
    frames: list[tuple[float, str, int]] = field(default_factory=list)  # (monotonic, type, bytes)
    first: dict | None = None
    errors: list[str] = field(default_factory=list)
    ws: Any = None
    reader: asyncio.Task | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False

    async def open(self, url: str, origin: str, subscribe: dict) -> None:
        # As a browser: the session cookie, the page's Origin, permessage-deflate offered.
        self.ws = await connect(
            url,
            origin=origin,
            additional_headers={"Cookie": f"sessionid={self.cookie}"},
            max_size=None,
            open_timeout=10,
            close_timeout=2,
            ping_interval=None,
        )
        self.reader = asyncio.create_task(self._read())
        await self.ws.send(json.dumps(subscribe))

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                at = time.monotonic()
                message = json.loads(frame)
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


def _max_in_one_second(times: list[float]) -> int:
    """The most messages in any 1 s interval (sliding)."""
    best, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] > 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


def socket_window(op: Operator, t0: float, t1: float) -> dict:
    """What one operator socket received in the window [t0, t1)."""
    frames = [f for f in op.frames if t0 <= f[0] < t1]
    seconds = t1 - t0
    by_type: dict[str, int] = {}
    for _, kind, _ in frames:
        by_type[kind] = by_type.get(kind, 0) + 1
    main = "transcript" if op.kind == "watcher" else "sessions.update"
    times = [at for at, kind, _ in frames if kind == main]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    return {
        "kind": op.kind,
        "frames_per_s": len(frames) / seconds,
        "bytes_per_s": sum(size for _, _, size in frames) / seconds,
        "by_type_per_s": {k: v / seconds for k, v in sorted(by_type.items())},
        "main_per_s": len(times) / seconds,
        "main_max_in_1s": _max_in_one_second(times),
        "main_gap_ms_min": min(gaps) * 1000 if gaps else None,
        "main_gap_ms_median": statistics.median(gaps) * 1000 if gaps else None,
        "closed": op.closed,
        "errors": len(op.errors),
    }


def _percentile_ms(values_ns, q: float) -> float | None:
    return percentile(sorted(values_ns), q)


async def main(args: argparse.Namespace) -> dict:
    base = args.base
    host = base.removeprefix("http://")
    target = psutil.Process(args.target_pid)
    watched = {
        "daphne": target,
        "simulator": psutil.Process(args.sim_pid),
        "clients": psutil.Process(),
    }
    stats = Stats()
    schedule = [phase.strip() == "on" for phase in args.schedule.split(",")]

    # Operators log in first (the password hash is the costly part: outside every window).
    started = time.monotonic()
    names = [f"{USER_PREFIX}{i:02d}" for i in range(1, args.watchers + args.dashboards + 1)]
    async with httpx.AsyncClient(timeout=30.0) as client:
        cookies = [await login(client, base, name, args.password) for name in names]
    emit(event="logged_in", operators=len(cookies), seconds=round(time.monotonic() - started, 2))

    # Callers.
    url = f"ws://{host}/v1/realtime?model={args.model}"
    started = time.monotonic()
    callers: list[tuple[Any, str]] = []
    for first in range(0, args.callers, 25):
        batch = range(first, min(first + 25, args.callers))
        opened = await asyncio.gather(*(open_caller(url, args.token, stats) for _ in batch))
        callers += [c for c in opened if c is not None]
    emit(event="connected", sessions=len(callers), seconds=round(time.monotonic() - started, 2))
    if not callers:
        raise RuntimeError(f"no caller connected: {stats.error_samples[:3]}")
    busy_session = callers[0][1]
    connect_errors = stats.errors
    gc.collect()
    gc.freeze()
    tasks = [asyncio.create_task(run_caller(ws, i, stats)) for i, (ws, _) in enumerate(callers)]
    await asyncio.sleep(args.warmup)

    operators: list[Operator] = []
    all_operators: list[Operator] = []
    windows: list[dict] = []
    console_url = f"ws://{host}/ws/console/"
    try:
        pending, retries, index = list(schedule), args.retries, 0
        while pending:
            with_dashboards = pending.pop(0)
            # Attach (or detach) the operators' sockets, then let things settle.
            if with_dashboards and not operators:
                operators = [
                    Operator("watcher" if i < args.watchers else "dashboard", cookie)
                    for i, cookie in enumerate(cookies)
                ]
                all_operators += operators
                t_attach = time.monotonic()

                async def attach(op: Operator) -> None:
                    subscribe = (
                        {"type": "watch.session", "session_id": busy_session}
                        if op.kind == "watcher"
                        else {"type": "watch.sessions"}
                    )
                    await op.open(console_url, base, subscribe)
                    async with asyncio.timeout(15):
                        await op.ready.wait()

                if args.attach == "together":
                    await asyncio.gather(*(attach(op) for op in operators))
                else:  # one after another, each once the previous one has its first message
                    for op in operators:
                        await attach(op)
                emit(
                    event="attached",
                    sockets=len(operators),
                    seconds=round(time.monotonic() - t_attach, 2),
                )
            elif not with_dashboards and operators:
                await asyncio.gather(*(op.close() for op in operators))
                operators = []
            await asyncio.sleep(args.settle)

            cpu0 = {name: cpu_seconds(proc) for name, proc in watched.items()}
            busy0 = machine_busy()
            deltas0, responses0, lat0 = stats.deltas, stats.responses, len(stats.latencies_ns)
            t0 = time.monotonic()
            stats.measuring = True
            await asyncio.sleep(args.window)
            stats.measuring = False
            t1 = time.monotonic()
            cpu1 = {name: cpu_seconds(proc) for name, proc in watched.items()}
            busy1 = machine_busy()
            seconds = t1 - t0
            cpu = {name: cpu1[name] - cpu0[name] for name in watched}
            other = max(0.0, busy1 - busy0 - sum(cpu.values()))
            latencies = stats.latencies_ns[lat0:]
            index += 1
            window = {
                "index": index,
                "dashboards": with_dashboards,
                "seconds": seconds,
                "deltas": stats.deltas - deltas0,
                "responses": stats.responses - responses0,
                "deltas_per_s": (stats.deltas - deltas0) / seconds,
                "latency_ms": {
                    "p50": _percentile_ms(latencies, 0.50),
                    "p99": _percentile_ms(latencies, 0.99),
                },
                "cpu_s": cpu,
                "other_cpu_s": other,
                "other_cpu_share": other / ((psutil.cpu_count() or 1) * seconds),
                "daphne_cpu_percent": 100 * cpu["daphne"] / seconds,
                "daphne_cpu_s_per_1k_deltas": (
                    cpu["daphne"] / (stats.deltas - deltas0) * 1000
                    if stats.deltas > deltas0
                    else None
                ),
                "sockets": [socket_window(op, t0, t1) for op in operators],
            }
            windows.append(window)
            if window["other_cpu_share"] > NOISY_SHARE and retries > 0:
                # Other work on the machine skewed it: kept in the table, left out of the sums,
                # and measured again (the same side, at once).
                retries -= 1
                window["repeated"] = True
                pending.insert(0, with_dashboards)
            emit(
                event="window",
                index=index,
                repeated=window.get("repeated", False),
                dashboards=with_dashboards,
                deltas_per_s=round(window["deltas_per_s"]),
                daphne_cpu_percent=round(window["daphne_cpu_percent"], 1),
                other_cpu_percent=round(100 * window["other_cpu_share"], 1),
            )
    finally:
        await asyncio.gather(*(op.close() for op in operators))
        stats.stop = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.gather(*(ws.close() for ws, _ in callers), return_exceptions=True)

    firsts = [op.first for op in all_operators if op.kind == "dashboard" and op.first]
    return {
        "event": "result",
        "callers": len(callers),
        "busy_session": busy_session,
        "attach": args.attach,
        "watchers": args.watchers,
        "dashboards": args.dashboards,
        "window_s": args.window,
        "settle_s": args.settle,
        "warmup_s": args.warmup,
        "windows": windows,
        "caller_errors": stats.errors,
        "caller_connect_errors": connect_errors,
        "caller_error_samples": stats.error_samples,
        "operator_errors": sum(len(op.errors) for op in all_operators),
        "operator_error_samples": [e for op in all_operators for e in op.errors][:5],
        "first_messages": sorted({str(op.first.get("type")) for op in all_operators if op.first}),
        "dashboard_sessions_listed": [len(f.get("sessions") or ()) for f in firsts],
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Dashboard fan-out clients (bench/run.py)")
    parser.add_argument("--base", required=True, help="http://127.0.0.1:PORT of the relay")
    parser.add_argument("--token", required=True, help="API token for the callers")
    parser.add_argument("--target-pid", type=int, required=True, help="the Daphne process")
    parser.add_argument("--sim-pid", type=int, required=True, help="the simulator process")
    parser.add_argument("--model", default="gpt-realtime")
    parser.add_argument("--password", default=PASSWORD)
    parser.add_argument("--callers", type=int, default=CALLERS)
    parser.add_argument("--watchers", type=int, default=WATCHERS)
    parser.add_argument("--dashboards", type=int, default=DASHBOARDS)
    parser.add_argument("--schedule", default=PLAN["full"][0], help="off/on per window")
    parser.add_argument(
        "--attach",
        choices=("together", "one-by-one"),
        default="together",
        help="operator sockets connect all at once (default) or one after another",
    )
    parser.add_argument(
        "--retries", type=int, default=1, help="disturbed windows measured again, at most"
    )
    parser.add_argument("--window", type=float, default=PLAN["full"][1])
    parser.add_argument("--settle", type=float, default=PLAN["full"][2])
    parser.add_argument("--warmup", type=float, default=PLAN["full"][3])
    args = parser.parse_args(argv)
    if not (1 <= args.callers <= 500 and 0 <= args.watchers <= 100 and 0 <= args.dashboards <= 100):
        parser.error("callers 1..500, watchers and dashboards 0..100")
    if not (0 < args.window <= 60 and 0 <= args.settle <= 30 and 0 <= args.warmup <= 30):
        parser.error("window ≤ 60 s, settle and warm-up ≤ 30 s")
    if len(args.schedule.split(",")) > 8:
        parser.error("at most 8 windows")
    return args


# --- the part, run by bench/run.py -------------------------------------------------------------


async def run_part(runner, args, *, plan: tuple | None = None, extra: tuple[str, ...] = ()) -> dict:
    """Start the simulator and a fresh Daphne on a fresh SQLite file (migrated; an API token;
    the operators' accounts), run the client process, stop everything; its result.
    `plan` and `extra` (more options for the client process) are for experiments by hand."""
    # bench/run.py's helpers (imported here: it imports this module).
    from bench.run import BIN, HOST, MODEL, PY, ROOT, free_port, say, scan_log

    mode = "quick" if args.quick else "full"
    schedule, window, settle, warmup = plan or PLAN[mode]
    env = runner.base_env()
    env.update(
        DJANGO_DEBUG="false",
        DATABASE_URL=f"sqlite:///{runner.workdir / 'fanout.sqlite3'}",
    )
    env.pop("BENCH_UPSTREAM_URL", None)
    handles = []
    logs: dict[str, dict] = {}
    result: dict | None = None
    started = time.monotonic()
    try:
        async with asyncio.timeout(BUDGET_S[mode]):
            sim, port = await runner.spawn_simulator(
                "fanout-simulator", deltas=SIM_DELTAS, interval=SIM_INTERVAL, env=env
            )
            handles.append(sim)
            env["OC_UPSTREAM_URL"] = f"ws://{HOST}:{port}/v1"
            token = await runner.migrate_with_token("bench-fanout", env=env)
            # The operators' accounts: one password hash for all (hashing is slow on purpose).
            users = WATCHERS + DASHBOARDS
            await runner.run_command(
                [
                    PY,
                    "manage.py",
                    "shell",
                    "-c",
                    "from django.contrib.auth import get_user_model\n"
                    "from django.contrib.auth.hashers import make_password\n"
                    "User = get_user_model()\n"
                    f"digest = make_password({PASSWORD!r})\n"
                    "User.objects.bulk_create([User(username=f'"
                    f"{USER_PREFIX}{{i:02d}}', password=digest) for i in range(1, {users + 1})])\n",
                ],
                env=env,
            )
            port = free_port()
            daphne = await runner.spawn(
                "fanout-relay",
                [
                    str(BIN / "daphne"),
                    "-b",
                    HOST,
                    "-p",
                    str(port),
                    "operator_console.asgi:application",
                ],
                env=env,
            )
            handles.append(daphne)
            await runner.wait_port(daphne, port)
            await asyncio.sleep(0.5)  # let start-up finish
            say(f"    set up in {time.monotonic() - started:.0f} s")
            clients = await asyncio.create_subprocess_exec(
                PY,
                "-m",
                "bench.fanout",
                "--base",
                f"http://{HOST}:{port}",
                "--token",
                token,
                "--target-pid",
                str(daphne.pid),
                "--sim-pid",
                str(sim.pid),
                "--model",
                MODEL,
                "--schedule",
                schedule,
                "--window",
                str(window),
                "--settle",
                str(settle),
                "--warmup",
                str(warmup),
                *extra,
                cwd=ROOT,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
            runner.prioritise(clients.pid)
            try:
                while True:
                    line = await clients.stdout.readline()
                    if not line:
                        break
                    with contextlib.suppress(ValueError):
                        message = json.loads(line)
                        event = message.pop("event", None)
                        if event == "result":
                            result = message
                        elif event:
                            say(
                                f"    {event}: " + ", ".join(f"{k} {v}" for k, v in message.items())
                            )
                await clients.wait()
            finally:
                if clients.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        clients.kill()
                    await clients.wait()
            stderr = (await clients.stderr.read()).decode(errors="replace")
            if result is None:
                raise RuntimeError(
                    f"fan-out clients gave no result (rc={clients.returncode}):\n{stderr[-2000:]}"
                )
            if daphne.proc.returncode is not None:
                result["daphne_exited"] = daphne.proc.returncode
    except TimeoutError:
        raise RuntimeError(f"the fan-out part exceeded its {BUDGET_S[mode]:g} s budget") from None
    finally:
        for handle in reversed(handles):
            await runner.stop(handle)
            logs[handle.name] = scan_log(handle.log_path)
    result.update(
        analyse(result["windows"]),
        logs=logs,
        sim_deltas=SIM_DELTAS,
        sim_interval=SIM_INTERVAL,
        seconds=time.monotonic() - started,
    )
    return result


def analyse(windows: list[dict]) -> dict:
    """Both sides (without / with the operator sockets) summed over their windows, the ratio,
    and the operator sockets' figures over the windows with them."""

    def side(with_dashboards: bool) -> dict | None:
        chosen = [
            w for w in windows if w["dashboards"] == with_dashboards and not w.get("repeated")
        ]
        seconds = sum(w["seconds"] for w in chosen)
        if not chosen or not seconds:
            return None
        cpu = sum(w["cpu_s"]["daphne"] for w in chosen)
        deltas = sum(w["deltas"] for w in chosen)
        per_window = [w["daphne_cpu_percent"] for w in chosen]
        return {
            "windows": len(chosen),
            "seconds": seconds,
            "daphne_cpu_percent": 100 * cpu / seconds,
            "daphne_cpu_percent_range": (min(per_window), max(per_window)),
            "daphne_cpu_s_per_1k_deltas": cpu / deltas * 1000 if deltas else None,
            "deltas_per_s": deltas / seconds,
        }

    without, with_ = side(False), side(True)
    out: dict[str, Any] = {"without": without, "with": with_, "cpu_ratio": None}
    if without and with_ and without["daphne_cpu_percent"]:
        out["cpu_ratio"] = with_["daphne_cpu_percent"] / without["daphne_cpu_percent"]
        if without["daphne_cpu_s_per_1k_deltas"] and with_["daphne_cpu_s_per_1k_deltas"]:
            out["cpu_per_delta_ratio"] = (
                with_["daphne_cpu_s_per_1k_deltas"] / without["daphne_cpu_s_per_1k_deltas"]
            )
    kinds: dict[str, dict] = {}
    for kind in ("watcher", "dashboard"):
        rows = [
            s
            for w in windows
            if w["dashboards"] and not w.get("repeated")
            for s in w["sockets"]
            if s["kind"] == kind
        ]
        if not rows:
            continue
        types: dict[str, float] = {}
        for row in rows:
            for name, rate in row["by_type_per_s"].items():
                types[name] = types.get(name, 0.0) + rate / len(rows)
        gaps = [row["main_gap_ms_min"] for row in rows if row["main_gap_ms_min"] is not None]
        medians = [r["main_gap_ms_median"] for r in rows if r["main_gap_ms_median"] is not None]
        kinds[kind] = {
            "samples": len(rows),  # sockets × windows
            "frames_per_s": _spread([r["frames_per_s"] for r in rows]),
            "main_per_s": _spread([r["main_per_s"] for r in rows]),
            "main_max_in_1s": max(r["main_max_in_1s"] for r in rows),
            "main_gap_ms_min": min(gaps) if gaps else None,
            "main_gap_ms_median": statistics.median(medians) if medians else None,
            "kib_per_s": _spread([r["bytes_per_s"] / 1024 for r in rows]),
            "by_type_per_s": dict(sorted(types.items(), key=lambda kv: -kv[1])),
            "closed": sum(1 for r in rows if r["closed"]),
        }
    out["sockets"] = kinds
    return out


def _spread(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


# --- report --------------------------------------------------------------------------------


def _f(value, digits=1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("**met**" if ok else "**missed**")


def render_section(result: dict | None) -> str:
    out: list[str] = []
    w = out.append
    w("## Dashboard fan-out (issue 4)\n")
    if result is None:
        w("Not run (filtered out).\n")
        return "\n".join(out) + "\n"
    if "failure" in result:
        w(f"The fan-out benchmark failed: `{result['failure'][:500]}`\n")
        return "\n".join(out) + "\n"
    windows = result["windows"]
    n_with = sum(1 for x in windows if x["dashboards"] and not x.get("repeated"))
    w(
        "One Daphne process (`daphne operator_console.asgi:application`, DJANGO_DEBUG=false, "
        "in-memory channel layer, SQLite in a bench-private file); the simulator in its own "
        f"process (`manage.py simulate_upstream`, {result['sim_deltas']} deltas per response, "
        f"{result['sim_interval'] * 1000:g} ms apart); one client process (`bench/fanout.py`) "
        f"with {result['callers']} Realtime callers, each looping `conversation.item.create` + "
        "`response.create` → read to `response.done` (bench/load.py's caller loop), so every "
        f"session streams about {1 / result['sim_interval']:g} deltas/s; and, in the windows "
        f"*with* dashboards, {result['watchers']} operator sockets on `/ws/console/` watching one "
        f"of those sessions (`watch.session`) and {result['dashboards']} on the dashboard feed "
        "(`watch.sessions`), each logged in as its own operator through the login form (session "
        "cookie, the site's `Origin`), each JSON-parsing every frame as a page's script does. "
        f"After {result['warmup_s']:g} s of warm-up, {len(windows)} windows of "
        f"{result['window_s']:g} s alternate without and with the operator sockets at the same "
        "caller load; before each, the sockets are connected (and have their first message) or "
        f"closed, then {result['settle_s']:g} s pass, so logins, snapshots and presence changes "
        "stay outside the windows. *Daphne CPU %* = user + system CPU time of the Daphne "
        "process (psutil) ÷ window time (100 % = one core); *caller delta p50/p99* = "
        "simulator send stamp → caller receive; *other* = CPU used meanwhile by everything "
        "else on the machine (2 cores = 200 %).\n"
    )
    w(
        "| window | operator sockets | deltas/s | caller delta p50 / p99 ms | Daphne CPU % "
        "| Daphne CPU-s / 1k deltas | simulator / clients / other CPU % |"
    )
    w("|---:|---|---:|---:|---:|---:|---:|")
    for x in windows:
        cpu = {k: 100 * v / x["seconds"] for k, v in x["cpu_s"].items()}
        sockets = f"{result['watchers']} + {result['dashboards']}" if x["dashboards"] else "none"
        mark = " (disturbed: measured again, not counted)" if x.get("repeated") else ""
        w(
            f"| {x['index']}{mark} | {sockets} | {_f(x['deltas_per_s'], 0)} "
            f"| {_f(x['latency_ms']['p50'], 2)} / {_f(x['latency_ms']['p99'], 2)} "
            f"| {_f(x['daphne_cpu_percent'])} | {_f(x['daphne_cpu_s_per_1k_deltas'], 4)} "
            f"| {_f(cpu['simulator'], 0)} / {_f(cpu['clients'], 0)} / "
            f"{_f(100 * x['other_cpu_s'] / x['seconds'], 0)} |"
        )
    w("")
    without, with_ = result["without"], result["with"]
    if without and with_:
        w(
            "| operator sockets | windows | Daphne CPU % (range over windows) "
            "| CPU-s / 1k deltas | deltas/s |"
        )
        w("|---|---:|---:|---:|---:|")
        for label, s in (
            ("none", without),
            (f"{result['watchers']} + {result['dashboards']}", with_),
        ):
            low, high = s["daphne_cpu_percent_range"]
            w(
                f"| {label} | {s['windows']} | {_f(s['daphne_cpu_percent'])} ({_f(low)}–{_f(high)}) "
                f"| {_f(s['daphne_cpu_s_per_1k_deltas'], 4)} | {_f(s['deltas_per_s'], 0)} |"
            )
        ratio = result.get("cpu_ratio")
        w(
            f"| **with ÷ without** | | **{_f(ratio, 3)}×** "
            f"| {_f(result.get('cpu_per_delta_ratio'), 3)}× | |"
        )
        w("")
    sockets = result.get("sockets") or {}
    if sockets:
        w(
            f"Frames delivered per browser socket, over the {n_with} window(s) with them (each "
            "socket in each window is one sample; *updates* = `transcript` messages for a session "
            "watcher, `sessions.update` for a dashboard):\n"
        )
        w(
            "| socket | samples | frames/s min / median / max | updates/s min / median / max "
            "| most updates in any 1 s | update gap min / median ms | KiB/s median "
            "| frames/s by type (mean) |"
        )
        w("|---|---:|---:|---:|---:|---:|---:|---|")
        labels = {
            "watcher": "session watcher (`watch.session`)",
            "dashboard": "dashboard (`watch.sessions`)",
        }
        for kind, s in sockets.items():
            fr, up = s["frames_per_s"], s["main_per_s"]
            types = ", ".join(f"`{k}` {v:.2f}" for k, v in s["by_type_per_s"].items())
            w(
                f"| {labels[kind]} | {s['samples']} "
                f"| {_f(fr['min'])} / {_f(fr['median'])} / {_f(fr['max'])} "
                f"| {_f(up['min'])} / {_f(up['median'])} / {_f(up['max'])} "
                f"| {s['main_max_in_1s']} | {_f(s['main_gap_ms_min'])} / {_f(s['main_gap_ms_median'])} "
                f"| {_f(s['kib_per_s']['median'])} | {types} |"
            )
        w("")
    listed = result.get("dashboard_sessions_listed") or []
    if listed:
        w(
            f"Each dashboard's first `sessions` message listed {min(listed)}–{max(listed)} live "
            f"sessions (callers: {result['callers']}).\n"
        )
    w("Targets (issue 4):\n")
    w("| target | measured | verdict |")
    w("|---|---|---|")
    ratio = result.get("cpu_ratio")
    if ratio is not None:
        w(
            f"| attaching the dashboards costs ≤ {100 * (CPU_TARGET - 1):.0f}% more relay CPU "
            f"| {_f(ratio, 3)}× ({_f(with_['daphne_cpu_percent'])} % vs "
            f"{_f(without['daphne_cpu_percent'])} % of a core; per delta "
            f"{_f(result.get('cpu_per_delta_ratio'), 3)}×) | {_verdict(ratio <= CPU_TARGET)} |"
        )
    else:
        w(
            f"| attaching the dashboards costs ≤ {100 * (CPU_TARGET - 1):.0f}% more relay CPU "
            "| – | not measured |"
        )
    watcher = sockets.get("watcher")
    if watcher:
        most = watcher["main_max_in_1s"]
        w(
            f"| ≤ ~{TRANSCRIPT_PER_S} transcript updates a second per session per socket "
            f"| at most {most} in any 1 s (median {_f(watcher['main_per_s']['median'])}/s) "
            f"| {_verdict(most <= TRANSCRIPT_PER_S + 1)} |"
        )
    dashboard = sockets.get("dashboard")
    if dashboard:
        most = dashboard["main_max_in_1s"]
        w(
            f"| dashboard feed: at most {FEED_PER_S} update a second (design) "
            f"| at most {most} in any 1 s (median {_f(dashboard['main_per_s']['median'], 2)}/s) "
            f"| {_verdict(most <= FEED_PER_S + 1)} |"
        )
    w("")
    problems = []
    if result.get("caller_errors"):
        problems.append(
            f"- callers: {result['caller_errors']} error(s); e.g. "
            + "; ".join(f"`{e[:200]}`" for e in result["caller_error_samples"][:3])
        )
    if result.get("operator_errors"):
        problems.append(
            f"- operator sockets: {result['operator_errors']} error(s); e.g. "
            + "; ".join(f"`{e[:200]}`" for e in result["operator_error_samples"][:3])
        )
    for kind, s in sockets.items():
        if s["closed"]:
            problems.append(f"- {s['closed']} {kind} socket(s) closed during a window")
    for x in windows:
        if x["other_cpu_share"] > NOISY_SHARE:
            problems.append(
                f"- window {x['index']}: disturbed: other processes used "
                f"{100 * x['other_cpu_share']:.0f}% of the machine meanwhile"
                + (" (measured again)" if x.get("repeated") else " (counted)")
            )
    if result.get("daphne_exited") is not None:
        problems.append(f"- Daphne exited with {result['daphne_exited']} during the run")
    for name, log in (result.get("logs") or {}).items():
        if log.get("counts"):
            problems.append(
                f"- {name} log: {log['counts']}; e.g. "
                + "; ".join(f"`{s[:200]}`" for s in log["samples"][:3])
            )
    w("Errors and log lines: " + ("\n\n" + "\n".join(problems) if problems else "none.") + "\n")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    emit(**asyncio.run(main(parse_args())))
