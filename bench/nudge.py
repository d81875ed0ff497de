"""The nudge part: REST hook `POST /api/v1/sessions/{id}/responses` on an idle session → the
upstream receiving its `response.create`. The set-up, the closed and the open loop, the
latency and its split: ABOUT and SPLIT_LABELS below (the report's text); how a sample's times
are taken and split: `Server.nudge` and `analyse`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import os
import random
import re
import time
from dataclasses import dataclass

import httpx

from bench import common
from bench.common import Bench, fmt, say, summary, table

TITLE = "Nudge latency (REST hook → upstream)"
NUDGE_TIMEOUT = 5.0  # s: one nudge, POST to the upstream's create (closed loop: to response.done)
LIVE_TIMEOUT = 10.0  # s: a new session's row becoming `live`
MAX_FAILURES = 10  # per scenario
BASELINE_REQUESTS = 300
OPEN_PERIOD = 0.1  # open loop: each session nudged every 100 ms
OPEN_LOOP_SEED = 4  # the open loop's start offsets: the same in every run
BUDGET_S = 170.0  # the whole part
# (sequential nudges on one session, sessions × nudges each at once, warm-up nudges per
# session, time limit per scenario in s).
PLAN = {"full": (500, (10, 50), 20, 45.0), "quick": (100, (10, 10), 5, 20.0)}
# Expected 4xx lines (Django logs them as warnings): the baseline's token-less POSTs, and polls
# for a new session before its row is written.
EXPECTED_LOG = re.compile(
    r"WARNING django\.request "
    r"(Unauthorized: /api/v1/sessions/sess_none/|Not Found: /api/v1/sessions/[\w-]+$)"
)


@dataclass
class Server:
    """One Daphne process of the app, its simulator, and the operator's HTTP client."""

    http_base: str
    token: str
    simulator: common.CountingSimulator | None
    client: httpx.AsyncClient
    pid: int

    async def open_session(self) -> common.Caller:
        """A caller, once its session is `live` through the REST hook."""
        caller = await common.Caller.open(common.realtime_url(self.http_base), self.token)
        url = f"{self.http_base}/api/v1/sessions/{caller.session_id}"
        await common.wait_live(self.client, url, self.token, LIVE_TIMEOUT, 0.005)
        return caller

    async def upstream_time(self, caller: common.Caller, request_id: str) -> float:
        """The simulator's receive time of the `response.create` tagged with the request."""
        async with asyncio.timeout(NUDGE_TIMEOUT):
            while (seen := self.simulator.creates.get(request_id)) is None:
                if caller.closed:
                    raise RuntimeError(f"caller {caller.session_id}: {caller.closed}")
                caller.changed.clear()
                # Woken by the next response.done; a missed wake-up only delays the look-up,
                # never the time measured.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(caller.changed.wait(), 0.05)
        return seen[1]

    async def nudge(self, caller: common.Caller, index: int, scheduled: float | None) -> dict:
        """One nudge; its sample (monotonic seconds): `sent` and `answered` (`timed_request`),
        `upstream` (`upstream_time`) and the POST's `Server-Timing` (`start` with DJANGO_DEBUG
        only, then `auth`, `db`, `ping`, each of which may be absent). Closed loop (`scheduled`
        None): done once the caller has the response's `response.done`, so the session is idle
        again."""
        expected = caller.dones + 1
        response, sent, answered = await common.post_nudge(
            self.client, self.http_base, self.token, caller.session_id, index
        )
        if scheduled is None:
            await caller.wait_dones(expected, NUDGE_TIMEOUT)
        upstream = await self.upstream_time(caller, response.json()["id"])
        timing = common.parse_server_timing(response.headers.get("server-timing", ""))
        sample = {"sent": sent, "answered": answered, "upstream": upstream, **timing}
        return sample if scheduled is None else {**sample, "scheduled": scheduled}

    async def series(self, caller: common.Caller, count: int, out: tuple[list, list], start=0.0,
                     period=None) -> None:
        """`count` nudges: one after another, or (open loop) at start, start + period, …"""
        samples, failures = out

        async def one(index: int, at: float | None) -> None:
            try:
                samples.append(await self.nudge(caller, index, at))
            except Exception as exc:  # noqa: BLE001 - counted; the series goes on
                failures.append(f"{type(exc).__name__}: {exc}"[:300])

        pending = []
        for index in range(count):
            if len(failures) >= MAX_FAILURES:
                break
            if period is None:
                await one(index, None)
                continue
            at = start + index * period
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            pending.append(asyncio.create_task(one(index, at)))
        await asyncio.gather(*pending)
        if len(failures) >= MAX_FAILURES:
            raise RuntimeError(f"{len(failures)} nudges failed: {failures[:3]}")

    async def round_trips(self, method: str, path: str, status: int, **kwargs) -> dict:
        """BASELINE_REQUESTS sequential requests after 20 not counted: sent → answered."""
        rtts = []
        for index in range(20 + BASELINE_REQUESTS):
            url = self.http_base + path
            response, sent, answered = await common.timed_request(
                self.client, method, url, **kwargs)
            if response.status_code != status:
                raise RuntimeError(f"{method} {path} → {response.status_code}, not {status}")
            if index >= 20:
                rtts.append(answered - sent)
        return summary(rtts)

    async def scenario(self, sessions: int, each: int, warmup: int, limit: float,
                       period=None) -> dict:
        """`sessions` idle sessions at once, each nudged `each` times (closed loop, or every
        `period` s), after `warmup` nudges each, one after another, not counted."""
        callers: list[common.Caller] = []
        samples, failures = [], []
        try:
            async with asyncio.timeout(limit):
                opened = await asyncio.gather(*(self.open_session() for _ in range(sessions)))
                callers = list(opened)
                await asyncio.gather(*(self.series(c, warmup, ([], failures)) for c in callers))
                measured = await self.measure(callers, each, (samples, failures), period)
        except TimeoutError:
            raise RuntimeError(f"{sessions} × {each} nudges: not done within {limit:g} s "
                               f"({len(samples)} measured)") from None
        finally:
            caller_errors = [e for c in callers for e in c.errors]
            await asyncio.gather(*(c.close() for c in callers))
        cpu, n = measured["cpu_s"], max(1, len(samples))
        return {
            **analyse(samples),
            "sessions": sessions,
            "period": period,
            "failures": len(failures), "failure_samples": failures[:5],
            "caller_errors": len(caller_errors), "caller_error_samples": caller_errors[:5],
            "nudges_per_s": len(samples) / measured["seconds"],
            "server_cpu_ms": (cpu["server"] or 0) * 1000 / n,  # the response it asks for included
            "bench_cpu_ms": (cpu["bench"] or 0) * 1000 / n,
            "other_cpu_share": measured["other_cpu_share"],
        }

    async def measure(self, callers: list[common.Caller], count: int, out: tuple[list, list],
                      period) -> dict:
        """The measured nudges, with this process's collector off (its pauses stay out)."""
        groups = {"server": common.ProcessGroup(self.pid),
                  "bench": common.ProcessGroup(os.getpid())}
        rng = random.Random(OPEN_LOOP_SEED)  # open loop: first nudges spread over a period
        gc.collect()
        gc.disable()
        try:
            window = common.CpuWindow(groups)
            begin = time.monotonic() + 0.01
            await asyncio.gather(*(
                self.series(c, count, out, begin + rng.uniform(0, period or 0), period)
                for c in callers
            ))
            return window.end()
        finally:
            gc.enable()


def analyse(samples: list[dict]) -> dict:
    """Latency = `upstream` − `sent`, all on CLOCK_MONOTONIC (system-wide on Linux, so the
    processes' readings compare directly). Its split: HTTP in = the server's `start` − `sent`;
    the `Server-Timing` phases, one after another; "actor + upstream send" = `upstream` − the
    end of the last phase (it also holds what the view does untimed); HTTP out = `answered` −
    the end of the last phase, beside it."""
    parts: dict[str, list[float]] = collections.defaultdict(list)
    for s in samples:
        if "start" not in s:  # DJANGO_DEBUG false: no split
            continue
        end = s["start"]
        parts["http_in"].append(end - s["sent"])
        for phase in common.PHASES:
            if phase in s:
                parts[phase].append(s[phase])
                end += s[phase]
        parts["to_upstream"].append(s["upstream"] - end)
        parts["http_out"].append(s["answered"] - end)
    scheduled = [s for s in samples if "scheduled" in s]
    return {
        "nudges": len(samples),
        "latency_ms": summary([s["upstream"] - s["sent"] for s in samples]),
        "rtt_ms": summary([s["answered"] - s["sent"] for s in samples]),
        "split_ms": {k: summary(v) for k, v in parts.items()},
        "schedule_lag_ms": summary([s["sent"] - s["scheduled"] for s in scheduled]),
        "from_schedule_ms": summary([s["upstream"] - s["scheduled"] for s in scheduled]),
    }


def plan(args) -> tuple[list[tuple[str, list[tuple]]], int, float]:
    """[(DJANGO_DEBUG, [(label, sessions, nudges each, period)])], warm-up nudges, limit."""
    sequential, (n, each), warmup, limit = common.by_mode(PLAN, args)
    if args.nudges:
        sequential, each = args.nudges, max(1, args.nudges // n)
    every = f"each every {OPEN_PERIOD * 1000:g} ms, {n / OPEN_PERIOD:g}/s in all"
    open_loop = f"{n} sessions, open loop ({every})"
    runs = [
        ("true", [
            ("1 session, sequential", 1, sequential, None),
            (f"{n} sessions, closed loop (each sequential: throughput)", n, each, None),
            (open_loop, n, each, OPEN_PERIOD),
        ]),
        ("false", [
            ("1 session, sequential, DJANGO_DEBUG=false", 1, sequential, None),
            (f"{open_loop}, DJANGO_DEBUG=false", n, each, OPEN_PERIOD),
        ]),
    ]
    return runs, warmup, limit


async def run(bench: Bench, args) -> dict:
    """The Daphne floor (`bench/floor_http.py`), then, on a fresh Daphne and SQLite file each,
    the baselines and scenarios with DJANGO_DEBUG=true (its `Server-Timing` carries `start`,
    which the split needs) and with DJANGO_DEBUG=false (production settings)."""
    runs, warmup, limit = plan(args)
    bench.prioritise(os.getpid())  # the simulator and the callers run in this process
    config = common.SimulatorConfig(deltas_per_response=1, delta_interval=0.0, record_limit=64)
    simulator = common.CountingSimulator(config)
    await simulator.start(common.HOST, 0)
    env = bench.env(OC_UPSTREAM_URL=simulator.url)
    result = {"warmup": warmup, "baselines": {}, "scenarios": [], "logs": {}}
    try:
        async with asyncio.timeout(BUDGET_S):
            result["floor"] = await http_floor(bench, env)
            for debug, scenarios in runs:
                database = f"sqlite:///{bench.workdir / f'nudge-{debug}.sqlite3'}"
                server_env = {**env, "DJANGO_DEBUG": debug, "DATABASE_URL": database}
                await server_run(bench, server_env, simulator, scenarios, (warmup, limit), result)
    finally:
        await simulator.aclose()
    return result


async def http_floor(bench: Bench, env: dict) -> dict:
    """Daphne alone: round trips to the smallest ASGI app."""
    handle, port = await bench.daphne("nudge-floor-http", "bench.floor_http:application", env)
    try:
        async with httpx.AsyncClient(timeout=10.0) as client:
            server = Server(f"http://{common.HOST}:{port}", "", None, client, handle.pid)
            return await server.round_trips("GET", "/healthz", 200)
    finally:
        await bench.stop(handle)


async def server_run(bench: Bench, env: dict, simulator, scenarios, limits, result: dict) -> None:
    """One Daphne (DJANGO_DEBUG as `env` says): its baselines, then each scenario, measured
    again once when disturbed."""
    (warmup, limit), debug = limits, env["DJANGO_DEBUG"]
    log = f"Daphne (DJANGO_DEBUG={debug})"
    async with (bench.app(f"nudge-relay-debug-{debug}", env, result["logs"], log, EXPECTED_LOG)
                as (base, token, daphne), common.http_client(120, timeout=10.0) as client):
        server = Server(base, token, simulator, client, daphne.pid)
        # Bare round trips on the same process and client: `GET /healthz`, and the nudge POST
        # without a token (401: routing and the auth check, no database).
        post = ("POST", "/api/v1/sessions/sess_none/responses", 401)
        result["baselines"][debug] = {"healthz": await server.round_trips("GET", "/healthz", 200),
                                      "post_401": await server.round_trips(*post, json={})}
        for label, sessions, each, period in scenarios:
            for attempt in (1, 2):
                sc = await server.scenario(sessions, each, warmup, limit, period)
                share = sc["other_cpu_share"]
                if share <= common.NOISY_SHARE or attempt == 2:
                    break
                say(f"    {label}: other processes used {100 * share:.0f}%: measuring again")
                await bench.quiet(10.0)
            sc.update(label=label, debug=debug, attempt=attempt)
            result["scenarios"].append(sc)
            say(f"    {label}: {sc['nudges']} nudges, {sc['failures']} failures")


SPLIT_LABELS = {
    "http_in": "HTTP in: client writes the request → the view's timing starts (Daphne, Django)",
    "auth": "token check (`Server-Timing` auth)",
    "db": "the store (`Server-Timing` db)",
    "ping": "ping: group send (`Server-Timing` ping)",
    "to_upstream": "actor + upstream send: last phase done → simulator has `response.create`",
    "http_out": "*beside the above:* HTTP out: last phase done → client has the response headers",
}
ABOUT = """One Daphne process (`daphne operator_console.asgi:application`, in-memory channel
layer, SQLite in a bench-private file); the simulator in the benchmark's process, 1 delta per
response and no pause, so a session is idle again about a millisecond after its
`response.create`; real Realtime callers that keep reading their sockets; one keep-alive
`httpx` client posting `{{"instructions": …, "metadata": {{"n": …}}}}` to
`POST /api/v1/sessions/{{id}}/responses` (the token's rate limit raised out of the way).
*Sequential* and *closed loop*: a session's next nudge is posted when its caller has read the
previous one's `response.done`; with several sessions that saturates Daphne, so the closed
loop measures **throughput** and its latency is queueing (Little's law). *Open loop*: each
session is nudged on a fixed schedule (first nudges spread at random over one period), below
saturation: **latency under concurrent load**. Each scenario first sends {warmup} warm-up
nudges per session (not counted). Latency = the client starts writing the POST → the
simulator receives the `response.create` tagged with the request's id (CLOCK_MONOTONIC, one
clock for all processes). The split comes from the POST's `Server-Timing` header; its `start`
stamp is sent with DJANGO_DEBUG=true only, so Daphne runs with DEBUG (split) and then,
restarted, with DJANGO_DEBUG=false (production settings; end to end only). *CPU-ms/nudge*:
CPU of Daphne / of the benchmark process per measured nudge; *other CPU %*: CPU used
meanwhile by everything else, % of the machine (a scenario is measured again once above
{noisy:.0f}%).
"""


def body(result: dict) -> list[str]:
    scenarios = result["scenarios"]
    about = ABOUT.format(warmup=result["warmup"], noisy=100 * common.NOISY_SHARE)
    out = [about, baselines(result), scenario_table(result), notes(scenarios)]
    out += [split_table(sc) for sc in scenarios if sc["split_ms"]]
    return [*out, targets(scenarios), problems(result)]


def _cells(s: dict, digits: int = 2, keys=("p50", "p99", "max")) -> list[str]:
    return [fmt(s[k], digits) for k in keys]


def baselines(result: dict) -> str:
    rows = []
    if result.get("floor"):
        floor = "Daphne floor: `GET` on the smallest ASGI app (`bench/floor_http.py`), no Django"
        rows.append([floor, "–", *_cells(result["floor"])])
    for debug, base in result["baselines"].items():
        rows.append(["`GET /healthz` (200)", debug, *_cells(base["healthz"])])
        rows.append(["nudge POST without a token (401: no database)", debug,
                     *_cells(base["post_401"])])
    columns = ["baseline round trip", "DJANGO_DEBUG", "p50 ms", "p99 ms", "max ms"]
    return ("Baselines, measured in the same run on the same Daphne process and HTTP client "
            f"({BASELINE_REQUESTS} sequential requests each; round trip = the client starts "
            "writing → has the response headers):\n\n" + table(columns, rows, left=2))


def scenario_table(result: dict) -> str:
    rows = []
    for sc in result["scenarios"]:
        lat, rtt = sc["latency_ms"], sc["rtt_ms"]
        healthz = result["baselines"][sc["debug"]]["healthz"]
        ratio = "–"
        if lat["p50"] and healthz["p50"]:
            ratio = f"{lat['p50'] / healthz['p50']:.1f}× / {lat['p99'] / healthz['p99']:.1f}×"
        rows.append([
            sc["label"], sc["nudges"], f"**{fmt(lat['p50'], 2)}**", f"**{fmt(lat['p99'], 2)}**",
            fmt(lat["max"], 2), ratio, f"{fmt(rtt['p50'], 2)} / {fmt(rtt['p99'], 2)}",
            fmt(sc["nudges_per_s"], 0),
            f"{fmt(sc['server_cpu_ms'], 2)} / {fmt(sc['bench_cpu_ms'], 2)}",
            fmt(100 * sc["other_cpu_share"], 0), sc["failures"] + sc["caller_errors"],
        ])
    columns = ["scenario", "nudges", "POST → upstream p50 ms", "p99 ms", "max ms",
               "÷ `GET /healthz` p50 / p99", "POST round trip p50 / p99 ms", "nudges/s",
               "CPU-ms/nudge Daphne / bench", "other CPU %", "failures"]
    return table(columns, rows)


def notes(scenarios: list[dict]) -> str:
    lines = []
    for sc in scenarios:
        lat, lag, late = sc["latency_ms"], sc["schedule_lag_ms"], sc["from_schedule_ms"]
        rate = sc["nudges_per_s"]
        if sc["period"] and lag["n"]:
            lines.append(
                f"- {sc['label']}: offered {sc['sessions'] / sc['period']:g} nudges/s; the client "
                f"started writing each POST {fmt(lag['p50'], 2)} / {fmt(lag['p99'], 2)} / "
                f"{fmt(lag['max'], 2)} ms (p50 / p99 / max) after its scheduled time; scheduled "
                f"time → upstream p50 {fmt(late['p50'], 2)} ms, p99 {fmt(late['p99'], 2)} ms.")
        elif sc["sessions"] > 1 and rate and lat["mean"] is not None:
            lines.append(
                f"- {sc['label']}: {sc['sessions']} nudges in flight ÷ {rate:,.0f} nudges/s = "
                f"{1000 * sc['sessions'] / rate:,.1f} ms, against a mean POST → upstream of "
                f"{lat['mean']:,.1f} ms: Little's law, the latency is queueing.")
    return "\n".join(lines) + "\n" if lines else ""


def split_table(sc: dict) -> str:
    keys = ("p50", "p99", "max", "mean")
    rows = [[label, *_cells(sc["split_ms"][k], 3, keys)]
            for k, label in SPLIT_LABELS.items() if k in sc["split_ms"]]
    rows.append(["**total** (POST → upstream)", *_cells(sc["latency_ms"], 3, keys)])
    return (f"Split, {sc['label']} (ms; p50 and p99 are taken per part, so only the means add "
            "up to the total; a phase the server did not report is left out):\n\n"
            + table(["part", *keys], rows))


def targets(scenarios: list[dict]) -> str:
    rows = []
    for sc in scenarios:
        lat = sc["latency_ms"]
        if sc["sessions"] > 1 and not sc["period"]:  # closed loop: its latency is queueing
            measured = (f"{fmt(sc['nudges_per_s'], 0)} nudges/s at {fmt(sc['server_cpu_ms'], 2)} "
                        f"Daphne CPU-ms/nudge (p50 {fmt(lat['p50'], 2)} ms, p99 "
                        f"{fmt(lat['p99'], 2)} ms)")
            rows.append(["throughput (no target)", sc["label"], measured, "–"])
        else:
            what = "nudge {q} ≤ {limit:g} ms"
            rows += common.quantile_rows(lat, common.NUDGE_TARGETS_MS, what, sc["label"])
    title = "Targets (one Daphne process with SQLite):"
    return common.targets_table(rows, title, ("scenario", "measured"))


def problems(result: dict) -> str:
    lines = []
    for sc in result["scenarios"]:
        if sc["failures"] or sc["caller_errors"]:
            lines.append(f"- {sc['label']}: {sc['failures']} failed nudge(s), "
                         f"{sc['caller_errors']} caller error(s); e.g. "
                         + common.examples(sc["failure_samples"] + sc["caller_error_samples"]))
        if sc["other_cpu_share"] > common.NOISY_SHARE:
            rest = f" meanwhile (attempt {sc['attempt']} of 2)"
            lines.append(common.disturbed(sc["label"], sc["other_cpu_share"], rest))
    return common.problems_text(lines, result["logs"])
