"""Nudge latency: REST hook POST → the upstream receiving its `response.create`.

Run by `bench/run.py` (the `nudge` part) against one real Daphne process serving
`operator_console.asgi:application` with SQLite in a bench-private file; the upstream is the
simulator (`apps.realtime.simulator.Simulator`) in the benchmark's own process, so its receive
log (`received(session_id)`: `time.monotonic()` when a client frame arrived) can be read.
The callers are real Realtime WebSocket clients (`websockets`), the operator a keep-alive
`httpx` client. Everything listens on 127.0.0.1.

Per nudge, all on CLOCK_MONOTONIC (system-wide on Linux, so the three processes' readings
compare directly):

- `sent`: the client starts writing the request (httpcore trace
  `http11.send_request_headers.started`);
- `start`, `db`, `ping`: the POST's `Server-Timing` header (`start` = the server's
  `time.monotonic()` when the view's timing record was made, which the view does as
  authentication starts (apps/api/api.py `TokenAuth.__call__`; sent only with DJANGO_DEBUG
  true); `db` is the one database call that checks the token and stores the request; a
  malformed request has its token looked up apart first, `auth`, and is not measured here);
- `answered`: the client has the response headers (trace
  `http11.receive_response_headers.complete`);
- `upstream`: the simulator received the `response.create` whose
  `response.metadata.oc_request` is the request's id (its own receive stamp).

Latency = upstream − sent. Its split, which sums to it exactly:
HTTP in = start − sent; db; ping; then "actor + upstream send" = upstream − (start + db +
ping), which also holds the part of the view the server does not time (body parsing and
validation before the database call). HTTP out = answered − (start + db + ping) runs beside
the last one and is reported apart.

Two ways of driving several sessions at once:

- closed loop ("one after another"): the next nudge of a session is posted only after the caller
  has read the previous response's `response.done` (the relay updates its sequencer before
  forwarding it, so the session is idle then) and the simulator has logged the
  `response.create`. With 10 sessions this keeps 10 nudges in flight and saturates the one
  Daphne process: it measures throughput, and its latency is queueing (Little's law:
  mean latency ≈ nudges in flight ÷ throughput), not the path;
- open loop: each session is nudged on a fixed schedule (every `period` s, the sessions' first
  nudges spread at random over one period), whether or not its previous nudge is done, so the
  offered rate is fixed and below saturation: latency under concurrent load. Each sample also
  keeps its scheduled time; the client's lag behind the schedule is reported beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import random
import re
import time
from dataclasses import dataclass, field

import httpx
import psutil

from apps.realtime.simulator import Simulator, SimulatorConfig
from bench.load import connect_caller, cpu_seconds, machine_busy, nearest_rank

MODEL = "gpt-realtime"
NUDGE_TIMEOUT = 5.0  # s: one nudge, POST to response.done at the caller
LIVE_TIMEOUT = 10.0  # s: a new session's row becoming `live`
MAX_FAILURES = 10  # per scenario: stop it after this many failed nudges
BASELINE_REQUESTS = 300
NOISY_SHARE = 0.10  # as bench/run.py: other work above this share of the machine = disturbed
OPEN_LOOP_SEED = 4  # the open loop's start offsets: the same in every run

_TIMING_RE = re.compile(r'(\w+);(?:dur=([\d.]+)|desc="([\d.]+)")')


def bench_simulator() -> Simulator:
    """The upstream: the smallest response (one delta, no pause), so a session is idle soon."""
    return Simulator(SimulatorConfig(deltas_per_response=1, delta_interval=0.0, record_limit=64))


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank percentile (`bench.load.nearest_rank`) of seconds, in ms."""
    value = nearest_rank(sorted(values), q)
    return None if value is None else value * 1000


def summary(values: list[float]) -> dict:
    return {
        "n": len(values),
        "p50": percentile(values, 0.50),
        "p99": percentile(values, 0.99),
        "max": max(values) * 1000 if values else None,
        "mean": sum(values) / len(values) * 1000 if values else None,
    }


def parse_server_timing(header: str) -> dict[str, float]:
    """`auth;dur=0.5, db;dur=1.2, ping;dur=0.1, start;desc="123.4"` → seconds (start as is)."""
    out: dict[str, float] = {}
    for name, dur, desc in _TIMING_RE.findall(header or ""):
        out[name] = float(dur) / 1000 if dur else float(desc)
    return out


class Tracer:
    """httpcore trace hook: the monotonic time of each step of one request."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}

    async def __call__(self, name: str, info: dict) -> None:
        self.at[name] = time.monotonic()


async def timed_request(client: httpx.AsyncClient, method: str, url: str, **kwargs):
    tracer = Tracer()
    response = await client.request(method, url, extensions={"trace": tracer}, **kwargs)
    sent = tracer.at.get("http11.send_request_headers.started")
    answered = tracer.at.get("http11.receive_response_headers.complete")
    return response, sent, answered


async def round_trips(
    client: httpx.AsyncClient, method: str, url: str, status: int, count: int, **kwargs
) -> dict:
    """`count` sequential requests after 20 not counted: round trip = the client starts
    writing → has the response headers."""
    rtts = []
    for index in range(20 + count):
        response, sent, answered = await timed_request(client, method, url, **kwargs)
        if response.status_code != status:
            raise RuntimeError(f"{method} {url} → {response.status_code}, not {status}")
        if index >= 20:
            rtts.append(answered - sent)
    return summary(rtts)


@dataclass
class Caller:
    """One Realtime caller that keeps reading its socket and counts `response.done`."""

    ws: object
    session_id: str
    dones: int = 0
    errors: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    reader: asyncio.Task | None = None
    closed: bool = False

    @classmethod
    async def open(cls, url: str, token: str) -> Caller:
        ws = await connect_caller(url, {"Authorization": f"Bearer {token}"}, 10)
        async with asyncio.timeout(10):
            while True:
                event = json.loads(await ws.recv())
                if event.get("type") == "session.created":
                    caller = cls(ws, event["session"]["id"])
                    break
        caller.reader = asyncio.create_task(caller._read())
        return caller

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                kind = json.loads(frame).get("type")
                if kind == "response.done":
                    self.dones += 1
                    self.changed.set()
                elif kind == "error":
                    self.errors.append(frame[:300])
        except Exception as exc:  # noqa: BLE001 - a dropped caller is reported, not raised
            self.errors.append(f"reader: {type(exc).__name__}: {exc}")
        finally:
            self.closed = True
            self.changed.set()

    async def wait_dones(self, count: int, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while self.dones < count:
                if self.closed:
                    raise RuntimeError(f"caller {self.session_id} closed: {self.errors[-1:]}")
                self.changed.clear()
                await self.changed.wait()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)


@dataclass
class Bench:
    http_base: str  # http://127.0.0.1:PORT
    ws_url: str  # ws://127.0.0.1:PORT/v1/realtime?model=M
    token: str
    simulator: Simulator
    client: httpx.AsyncClient
    server_pid: int  # the Daphne process, for its CPU time

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def open_session(self) -> Caller:
        caller = await Caller.open(self.ws_url, self.token)
        url = f"{self.http_base}/api/v1/sessions/{caller.session_id}"
        async with asyncio.timeout(LIVE_TIMEOUT):
            while True:
                response = await self.client.get(url, headers=self.auth)
                if response.status_code == 200 and response.json().get("status") == "live":
                    return caller
                await asyncio.sleep(0.005)

    def upstream_time(self, session_id: str, request_id: str) -> float | None:
        """The simulator's receive time of the `response.create` tagged with the request."""
        for at, event in reversed(self.simulator.received(session_id)):
            if event.get("type") != "response.create":
                continue
            metadata = (event.get("response") or {}).get("metadata") or {}
            if metadata.get("oc_request") == request_id:
                return at
        return None

    async def post_nudge(self, caller: Caller, index: int) -> tuple[httpx.Response, str, float, float]:
        """POST one nudge; (response, request id, sent, answered). Anything but 202 raises."""
        body = {"instructions": "Bench nudge: answer briefly.", "metadata": {"n": str(index)}}
        response, sent, answered = await timed_request(
            self.client,
            "POST",
            f"{self.http_base}/api/v1/sessions/{caller.session_id}/responses",
            json=body,
            headers=self.auth,
        )
        if response.status_code != 202:
            raise RuntimeError(f"POST → {response.status_code}: {response.text[:200]}")
        request_id = response.json()["id"]
        return response, request_id, sent, answered

    async def nudge(self, caller: Caller, index: int) -> dict:
        """One nudge, to the end of its response; the sample's times (monotonic seconds)."""
        expected = caller.dones + 1
        response, request_id, sent, answered = await self.post_nudge(caller, index)
        await caller.wait_dones(expected, NUDGE_TIMEOUT)
        upstream = self.upstream_time(caller.session_id, request_id)
        if upstream is None:
            raise RuntimeError(f"no response.create for {request_id} at the simulator")
        timing = parse_server_timing(response.headers.get("server-timing", ""))
        return {"sent": sent, "answered": answered, "upstream": upstream, **timing}

    async def open_nudge(self, caller: Caller, index: int, scheduled: float) -> dict:
        """One open-loop nudge: posted at its scheduled time, done when the simulator has its
        `response.create` (other nudges of the session may be in flight meanwhile)."""
        response, request_id, sent, answered = await self.post_nudge(caller, index)
        async with asyncio.timeout(NUDGE_TIMEOUT):
            while (upstream := self.upstream_time(caller.session_id, request_id)) is None:
                if caller.closed:
                    raise RuntimeError(f"caller {caller.session_id} closed: {caller.errors[-1:]}")
                caller.changed.clear()
                # Woken by the next response.done; a wake-up missed between the look-up and
                # the wait only delays this check, never the time measured.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(caller.changed.wait(), 0.05)
        timing = parse_server_timing(response.headers.get("server-timing", ""))
        return {
            "scheduled": scheduled,
            "sent": sent,
            "answered": answered,
            "upstream": upstream,
            **timing,
        }

    async def open_series(
        self,
        caller: Caller,
        count: int,
        start: float,
        period: float,
        samples: list,
        failures: list,
    ) -> None:
        """`count` nudges at start, start + period, …, each posted on time (open loop)."""

        async def one(index: int, at: float) -> None:
            try:
                samples.append(await self.open_nudge(caller, index, at))
            except Exception as exc:  # noqa: BLE001 - counted; the schedule goes on
                failures.append(f"{type(exc).__name__}: {exc}"[:300])

        pending = []
        for index in range(count):
            at = start + index * period
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            if len(failures) >= MAX_FAILURES:
                break
            pending.append(asyncio.create_task(one(index, at)))
        await asyncio.gather(*pending)
        if len(failures) >= MAX_FAILURES:
            raise RuntimeError(f"{len(failures)} nudges failed: {failures[:3]}")

    async def nudge_series(self, caller: Caller, count: int, samples: list, failures: list):
        for index in range(count):
            try:
                samples.append(await self.nudge(caller, index))
            except Exception as exc:  # noqa: BLE001 - counted; the series goes on
                failures.append(f"{type(exc).__name__}: {exc}"[:300])
                if len(failures) >= MAX_FAILURES:
                    raise RuntimeError(f"{len(failures)} nudges failed: {failures[:3]}") from exc

    async def baseline(self, count: int = BASELINE_REQUESTS) -> dict:
        """Bare HTTP round trips on the same Daphne and client: `GET /healthz`, and the nudge
        POST without a token (401: routing and the auth check, no database)."""
        return {
            "healthz": await round_trips(
                self.client, "GET", f"{self.http_base}/healthz", 200, count
            ),
            "post_401": await round_trips(
                self.client,
                "POST",
                f"{self.http_base}/api/v1/sessions/sess_none/responses",
                401,
                count,
                json={},
            ),
        }

    async def scenario(
        self,
        sessions: int,
        per_session: int,
        warmup: int,
        timeout: float,
        period: float | None = None,
    ) -> dict:
        """`sessions` idle sessions, each nudged `per_session` times, all sessions at once:
        one after another (closed loop), or with `period` every `period` s on a fixed schedule
        (open loop); `warmup` nudges per session first, one after another, not counted."""
        callers: list[Caller] = []
        samples: list[dict] = []
        failures: list[str] = []
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                callers = list(
                    await asyncio.gather(*(self.open_session() for _ in range(sessions)))
                )
                ignored: list[dict] = []
                await asyncio.gather(
                    *(self.nudge_series(c, warmup, ignored, failures) for c in callers)
                )
                gc.collect()
                gc.disable()  # the measuring process's own collector pauses stay out
                server, me = psutil.Process(self.server_pid), psutil.Process()
                try:
                    cpu_before = cpu_seconds(server), cpu_seconds(me), machine_busy()
                    measure_start = time.monotonic()
                    if period is None:
                        series = [
                            self.nudge_series(c, per_session, samples, failures) for c in callers
                        ]
                    else:
                        # Open loop: the sessions' first nudges spread at random over one period.
                        rng = random.Random(OPEN_LOOP_SEED)
                        begin = measure_start + 0.01
                        series = [
                            self.open_series(
                                c,
                                per_session,
                                begin + rng.uniform(0, period),
                                period,
                                samples,
                                failures,
                            )
                            for c in callers
                        ]
                    await asyncio.gather(*series)
                    measured = time.monotonic() - measure_start
                    cpu_after = cpu_seconds(server), cpu_seconds(me), machine_busy()
                finally:
                    gc.enable()
        except TimeoutError:
            raise RuntimeError(
                f"{sessions} session(s) × {per_session} nudges: not done within {timeout:g} s "
                f"({len(samples)} measured)"
            ) from None
        finally:
            caller_errors = [e for c in callers for e in c.errors]
            await asyncio.gather(*(c.close() for c in callers))
        result = analyse(samples)
        result["samples"] = samples  # raw, for bench/out/nudge-samples.json
        result.update(
            sessions=sessions,
            per_session=per_session,
            period=period,
            warmup=warmup,
            failures=len(failures),
            failure_samples=failures[:5],
            caller_errors=len(caller_errors),
            caller_error_samples=caller_errors[:5],
            seconds=time.monotonic() - started,
            nudges_per_s=len(samples) / measured if measured else None,
            # CPU ms per nudge (the response it asks for included) of Daphne and of this
            # process (callers, HTTP client, simulator).
            server_cpu_ms=(cpu_after[0] - cpu_before[0]) * 1000 / max(1, len(samples)),
            bench_cpu_ms=(cpu_after[1] - cpu_before[1]) * 1000 / max(1, len(samples)),
        )
        # CPU used meanwhile by everything else on the machine (other work skews every
        # figure), as a share of the machine's capacity in the measured time.
        ours = sum(cpu_after[i] - cpu_before[i] for i in (0, 1))
        other = max(0.0, cpu_after[2] - cpu_before[2] - ours)
        result["other_cpu_share"] = other / ((psutil.cpu_count() or 1) * measured)
        result["measured_s"] = measured
        return result


def analyse(samples: list[dict]) -> dict:
    total = [s["upstream"] - s["sent"] for s in samples]
    rtt = [s["answered"] - s["sent"] for s in samples]
    parts: dict[str, list[float]] = {
        k: [] for k in ("http_in", "db", "ping", "to_upstream", "http_out")
    }
    for s in samples:
        if not {"start", "db", "ping"} <= s.keys():
            continue
        # `start` is stamped as authentication starts (apps/api/api.py).
        ping_end = s["start"] + s["db"] + s["ping"]
        parts["http_in"].append(s["start"] - s["sent"])
        parts["db"].append(s["db"])
        parts["ping"].append(s["ping"])
        parts["to_upstream"].append(s["upstream"] - ping_end)
        parts["http_out"].append(s["answered"] - ping_end)
    lag = [s["sent"] - s["scheduled"] for s in samples if "scheduled" in s]
    from_schedule = [s["upstream"] - s["scheduled"] for s in samples if "scheduled" in s]
    return {
        "nudges": len(samples),
        "schedule_lag_ms": summary(lag) if lag else None,
        "from_schedule_ms": summary(from_schedule) if from_schedule else None,
        "latency_ms": summary(total),
        "rtt_ms": summary(rtt),
        "split_ms": {k: summary(v) for k, v in parts.items() if v},
    }


# --- report ------------------------------------------------------------------------------

P50_TARGET_MS = 5.0
P99_TARGET_MS = 20.0

SPLIT_LABELS = {
    "http_in": "HTTP in: client writes the request → authentication starts "
    "(Daphne, Django, ninja routing)",
    "db": "database call: token check and write (`Server-Timing` db)",
    "ping": "ping: group send (`Server-Timing` ping)",
    "to_upstream": "actor + upstream send: ping done → simulator received `response.create` "
    "(includes the view's untimed body parsing)",
    "http_out": "*beside the above:* HTTP out: ping done → client has the response headers",
}


def _f(value, digits=2) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def render_section(result: dict | None) -> str:
    out: list[str] = []
    w = out.append
    w("## Nudge latency (REST hook → upstream)\n")
    if result is None:
        w("Not run (filtered out).\n")
        return "\n".join(out) + "\n"
    if "failure" in result:
        w(f"The nudge benchmark failed: `{result['failure'][:500]}`\n")
        return "\n".join(out) + "\n"
    w(
        "One Daphne process (`daphne operator_console.asgi:application`, in-memory channel "
        "layer, SQLite in a bench-private file); the simulator in the benchmark's process, "
        "1 delta per response and no pause, so a session is idle again about a millisecond "
        "after its `response.create`; real Realtime callers (`websockets`) that keep reading "
        "their sockets; one keep-alive `httpx` client posting "
        '`{"instructions": …, "metadata": {"n": …}}` to '
        "`POST /api/v1/sessions/{id}/responses` with a `responses:write` token (its rate "
        "limit raised out of the way). *Sequential* and *closed loop*: a session's next nudge "
        "is posted when its caller has read the previous one's `response.done`; with several "
        "sessions at once that keeps one nudge per session in flight and saturates the Daphne "
        "process, so the closed loop measures **throughput**, and its latency is queueing "
        "(Little's law: mean latency ≈ nudges in flight ÷ nudges/s), not the path. *Open "
        "loop*: each session is nudged on a fixed schedule whatever happened to its previous "
        "nudge (the sessions' first nudges spread at random over one period), so the offered "
        "rate is fixed below saturation: **latency under concurrent load**. "
        f"Each scenario first sends {result['warmup']} warm-up nudges per session, one after "
        "another (not counted). Latency = the client starts writing the POST → the simulator "
        "receives the "
        "`response.create` tagged with the request's id; every stamp is CLOCK_MONOTONIC "
        "(one clock for all processes on Linux). The split comes from the POST's "
        "`Server-Timing` header; its `start` stamp is only sent with DJANGO_DEBUG=true, so "
        "Daphne runs first with DEBUG (split) and then, restarted, with DJANGO_DEBUG=false "
        "(production settings; end to end only). *CPU-ms/nudge*: CPU time of the Daphne "
        "process / of the benchmark process (callers, HTTP client, simulator) per measured "
        "nudge, the response it asks for included; *other CPU %*: CPU used meanwhile by "
        "everything else on the machine, % of its capacity (a scenario is measured again "
        f"once when above {100 * NOISY_SHARE:.0f}%).\n"
    )
    baselines = result["baselines"]
    w(
        "Baselines, measured in the same run on the same Daphne process and HTTP client "
        f"({BASELINE_REQUESTS} sequential requests each; round trip = the client starts "
        "writing → has the response headers):\n"
    )
    w("| baseline round trip | DJANGO_DEBUG | p50 ms | p99 ms | max ms |")
    w("|---|---|---:|---:|---:|")
    floor = result.get("floor")
    if floor:
        w(
            "| Daphne floor: `GET` on the smallest ASGI app (`bench/floor_http.py`), no Django "
            f"| – | {_f(floor['p50'])} | {_f(floor['p99'])} | {_f(floor['max'])} |"
        )
    for debug, base in baselines.items():
        for key, label in (
            ("healthz", "`GET /healthz` (200)"),
            ("post_401", "nudge POST without a token (401: no database)"),
        ):
            s = base[key]
            w(f"| {label} | {debug} | {_f(s['p50'])} | {_f(s['p99'])} | {_f(s['max'])} |")
    w("")

    scenarios = result["scenarios"]
    w(
        "| scenario | nudges | POST → upstream p50 ms | p99 ms | max ms | "
        "÷ `GET /healthz` p50 / p99 | POST round trip p50 / p99 ms | nudges/s | "
        "CPU-ms/nudge Daphne / bench | other CPU % | failures |"
    )
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for sc in scenarios:
        lat, rtt = sc["latency_ms"], sc["rtt_ms"]
        healthz = baselines[sc["debug"]]["healthz"]
        ratio = (
            f"{lat['p50'] / healthz['p50']:.1f}× / {lat['p99'] / healthz['p99']:.1f}×"
            if lat["p50"] and healthz["p50"]
            else "–"
        )
        w(
            f"| {sc['label']} | {sc['nudges']} | **{_f(lat['p50'])}** | **{_f(lat['p99'])}** "
            f"| {_f(lat['max'])} | {ratio} | {_f(rtt['p50'])} / {_f(rtt['p99'])} "
            f"| {_f(sc['nudges_per_s'], 0)} | {_f(sc['server_cpu_ms'])} / "
            f"{_f(sc['bench_cpu_ms'])} | {_f(100 * sc['other_cpu_share'], 0)} "
            f"| {sc['failures'] + sc['caller_errors']} |"
        )
    w("")
    notes = []
    for sc in scenarios:
        lat, lag, late = sc["latency_ms"], sc.get("schedule_lag_ms"), sc.get("from_schedule_ms")
        if sc.get("period") and lag:
            notes.append(
                f"- {sc['label']}: offered {sc['sessions'] / sc['period']:g} nudges/s; the client "
                f"started writing each POST {_f(lag['p50'])} ms (p50) / {_f(lag['p99'])} ms (p99) "
                f"/ {_f(lag['max'])} ms (max) after its scheduled time; scheduled time → upstream "
                f"p50 {_f(late['p50'])} ms, p99 {_f(late['p99'])} ms."
            )
        elif sc["sessions"] > 1 and sc["nudges_per_s"] and lat["mean"] is not None:
            notes.append(
                f"- {sc['label']}: {sc['sessions']} nudges in flight ÷ "
                f"{sc['nudges_per_s']:,.0f} nudges/s = "
                f"{1000 * sc['sessions'] / sc['nudges_per_s']:,.1f} ms, against a mean "
                f"POST → upstream of {lat['mean']:,.1f} ms (the rest of each cycle is the "
                "response and the client): Little's law, the latency is queueing."
            )
    if notes:
        w("\n".join(notes) + "\n")
    for sc in scenarios:
        if not sc["split_ms"]:
            continue
        w(
            f"Split, {sc['label']} (DJANGO_DEBUG=true; ms; p50 and p99 are taken per part, "
            "so only the means add up to the total):\n"
        )
        w("| part | p50 | p99 | max | mean |")
        w("|---|---:|---:|---:|---:|")
        for key, label in SPLIT_LABELS.items():
            s = sc["split_ms"].get(key)
            if s:
                w(
                    f"| {label} | {_f(s['p50'], 3)} | {_f(s['p99'], 3)} | {_f(s['max'], 3)} "
                    f"| {_f(s['mean'], 3)} |"
                )
        lat = sc["latency_ms"]
        w(
            f"| **total** (POST → upstream) | {_f(lat['p50'], 3)} | {_f(lat['p99'], 3)} "
            f"| {_f(lat['max'], 3)} | {_f(lat['mean'], 3)} |"
        )
        w("")
    w("Targets (issue: one Daphne process with SQLite):\n")
    w("| target | scenario | measured | verdict |")
    w("|---|---|---|---|")
    for sc in scenarios:
        lat = sc["latency_ms"]
        if sc["sessions"] > 1 and not sc.get("period"):
            # Closed loop: a throughput figure; its latency is queueing, not a target's.
            w(
                f"| throughput (no target; its latency is queueing) | {sc['label']} "
                f"| {_f(sc['nudges_per_s'], 0)} nudges/s at {_f(sc['server_cpu_ms'])} Daphne "
                f"CPU-ms/nudge (p50 {_f(lat['p50'])} ms, p99 {_f(lat['p99'])} ms) | – |"
            )
            continue
        for q, limit in (("p50", P50_TARGET_MS), ("p99", P99_TARGET_MS)):
            value = lat[q]
            verdict = (
                "not measured" if value is None else ("**met**" if value <= limit else "**missed**")
            )
            w(f"| nudge {q} ≤ {limit:g} ms | {sc['label']} | {_f(value)} ms | {verdict} |")
    w("")
    problems = []
    for sc in scenarios:
        if sc["failures"] or sc["caller_errors"]:
            problems.append(
                f"- {sc['label']}: {sc['failures']} failed nudge(s), {sc['caller_errors']} "
                "caller error(s); e.g. "
                + "; ".join(
                    f"`{e[:200]}`" for e in sc["failure_samples"] + sc["caller_error_samples"]
                )
            )
        if sc["other_cpu_share"] > NOISY_SHARE:
            problems.append(
                f"- {sc['label']}: disturbed: other processes used "
                f"{100 * sc['other_cpu_share']:.0f}% of the machine meanwhile "
                f"(attempt {sc.get('attempt', 1)} of 2)"
            )
    for debug, log in result.get("logs", {}).items():
        if log.get("counts"):
            problems.append(
                f"- Daphne log (DJANGO_DEBUG={debug}): {log['counts']}; e.g. "
                + "; ".join(f"`{s[:200]}`" for s in log["samples"][:3])
            )
    w("Errors and log lines: " + ("\n\n" + "\n".join(problems) if problems else "none.") + "\n")
    return "\n".join(out) + "\n"
