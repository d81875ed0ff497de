"""Soak: many live sessions on two Daphne processes sharing Redis and PostgreSQL, for minutes.

Run by `bench/run.py` (the `soak` part; issue 5's benchmark). The set-up is the scale-out one
of DESIGN.md ("Several processes"): one `redis-server` and one PostgreSQL cluster, each on a
loopback port and in a temporary directory of its own (`tests/support/services.py`), the
database migrated with `manage.py migrate`; two Daphne processes, A and B, serving
`operator_console.asgi:application` with the same environment (`DATABASE_URL=postgres://…`,
`REDIS_URL=redis://…`, `OC_PROCESSES=2`, `DJANGO_DEBUG=false`, the REST hook's per-token rate
limit raised out of the way); the upstream is the simulator, in a thread of this process with
an event loop of its own (`SoakSimulator`: it counts overlapping `response.create` and stamps
each tagged one as it arrives, without keeping every event).

Sessions are split over A and B (even on A, odd on B). Each one has:

- a caller (plain `websockets`, `Authorization: Bearer`) that keeps reading its socket and
  converses: every `turn_every` seconds (uniformly random in the range) it sends a user
  message item and a `response.create` whose `metadata.bench_turn` names the turn;
- a REST nudger that every `nudge_every` seconds posts `{"metadata": {"n": …}}` to
  `POST /api/v1/sessions/{id}/responses` on the *other* process (stored via that process,
  pinged over Redis to the actor in the holding one).

The timers of a session are independent, so a nudge may arrive while the caller's response
is streaming (and the other way round): the relay must queue it, never send a second
in-conversation `response.create` while one is active.

Measured:
- per request, its final state read back through the REST hook after a drain
  (`GET /api/v1/sessions/{id}/responses`): lost = accepted but not terminal, or missing;
- overlapping `response.create` at the simulator (an in-conversation create arriving while a
  response is active: the simulator refuses it with `conversation_already_has_active_response`),
  and such errors seen by callers; `response.create` received twice for one request;
- cross-process nudge latency: the client starts writing the POST (httpcore trace) → the
  simulator receives the `response.create` tagged with the request's id (CLOCK_MONOTONIC, one
  clock for every process on Linux). Nudges that had to wait for another response of their
  session (one in progress at the simulator between the POST and the create) are reported
  apart: their wait is the sequencing, not the path;
- RSS (and CPU) of both Daphne processes, PostgreSQL, Redis and this process every 5 s.

This process's garbage collector is off while the load runs, as in the nudge part (and as
`timeit` does): its full collections stopped the callers, the HTTP client and the simulator
together for 55-138 ms every ~30 s, and each pause was counted as the product's latency
(the direct nudges' p99 fell from 16.8 to 14.8 ms and their max from 132 to 31 ms with it off,
in two 2-minute runs). Its memory growth and the collection at the end are reported.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import gc
import json
import math
import os
import random
import re
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import psutil
from websockets.exceptions import ConnectionClosed

from apps.realtime.simulator import Simulator, SimulatorConfig
from bench.load import connect_caller, rss_bytes
from bench.nudge import percentile

HOST = "127.0.0.1"
MODEL = "gpt-realtime"
BIN = Path(sys.executable).parent
PY = sys.executable
UPSTREAM_KEY = "sk-bench-soak-upstream"  # the simulator's key; never a real one

TERMINAL = {"completed", "cancelled", "incomplete", "failed"}
SAMPLE_EVERY = 5.0  # s between resource samples
CORES = psutil.cpu_count() or 1
NOISY_SHARE = 0.10  # as bench/run.py: other work above this share of the machine = disturbed
LATENCY_TARGET_MS = 30.0
RSS_FLAT_SHARE = 0.05  # RSS counts as flat when it grows less than this after warm-up
RSS_FLAT_MIB = 8.0  # ... or less than this many MiB (short runs: one GC arena is ~1 MiB)

TYPE_RE = re.compile(rb'"type"\s*:\s*"([a-z_.]+)"')
DELTA = b"response.output_text.delta"
DONE = b"response.done"
ERROR = b"error"

# Expected in Daphne's log: 404s of the "is the session live yet" polls before its row is
# written (Django logs 4xx answers as warnings).
EXPECTED_LOG = re.compile(r"WARNING django\.request Not Found: /api/v1/sessions/[\w-]+$")


@dataclass(frozen=True)
class Plan:
    sessions: int
    duration: float  # s of streaming and nudging, all sessions connected
    warmup: float  # s at the start of the run not counted for RSS flatness
    nudge_every: tuple[float, float]  # s between a session's nudges (uniform)
    turn_every: tuple[float, float]  # s between a caller's turns (uniform)
    deltas: int  # per response
    delta_interval: float  # s
    connect_batch: int
    drain: float  # s at most, after the last submission, for every request to end

    @property
    def budget(self) -> float:
        """The whole part's hard limit: start-up, connecting, the run, drain, read-back."""
        return 240.0 + self.sessions * 0.5 + self.duration + self.drain


# Rates: a nudge every 5–10 s and a caller turn every 10–20 s per session, 60 requests/s at 300
# sessions. Measured (PostgreSQL through a pool): each request, its response included, costs
# about 9 ms of Daphne CPU (both processes), 1 ms of PostgreSQL and 3 ms of this process, so the
# 2-core machine runs about 40% busy: loaded, not saturated.
PLANS = {
    "full": Plan(
        sessions=300,
        duration=300.0,
        warmup=60.0,
        nudge_every=(5.0, 10.0),
        turn_every=(10.0, 20.0),
        deltas=4,
        delta_interval=0.02,
        connect_batch=25,
        drain=30.0,
    ),
    "quick": Plan(
        sessions=50,
        duration=45.0,
        warmup=15.0,
        nudge_every=(5.0, 10.0),
        turn_every=(10.0, 20.0),
        deltas=4,
        delta_interval=0.02,
        connect_batch=25,
        drain=20.0,
    ),
}


# ---------------------------------------------------------------------------- the upstream


class SoakSimulator(Simulator):
    """The simulator, counting what the soak checks as it happens (its own event logs are
    bounded, so nothing is read back from them):

    - `creates`: oc_request → (session id, receive stamp) of the first accepted create;
    - `duplicates`: a request's create accepted a second time;
    - `overlaps`: an in-conversation create arriving while a response is active;
    - `intervals`: per session, [start, end] of each in-conversation response (monotonic).
    """

    def __init__(self, config: SimulatorConfig) -> None:
        super().__init__(config)
        self.creates: dict[str, tuple[str, float]] = {}
        self.duplicates: list[dict] = []
        self.overlaps: list[dict] = []
        self.creates_total = 0
        self.intervals: dict[str, list[list[float]]] = collections.defaultdict(list)
        self._open: dict[str, list[float]] = {}

    async def _on_response_create(self, session, event):
        # `_on_message` logged the event, with its receive stamp, right before calling this.
        received_at = session.received_log[-1][0] if session.received_log else time.monotonic()
        self.creates_total += 1
        params = event.get("response") if isinstance(event.get("response"), dict) else {}
        metadata = params.get("metadata") if isinstance(params.get("metadata"), dict) else {}
        tag = metadata.get("oc_request")
        in_conversation = params.get("conversation") in (None, "auto")
        if in_conversation and session.active is not None:
            self.overlaps.append(
                {
                    "session": session.id,
                    "at": received_at,
                    "oc_request": tag,
                    "event_id": event.get("event_id"),
                    "active_response": session.active.id,
                    "active_request": (session.active.metadata or {}).get("oc_request"),
                }
            )
        elif isinstance(tag, str):
            if tag in self.creates:
                self.duplicates.append(
                    {"session": session.id, "oc_request": tag, "at": received_at}
                )
            else:
                self.creates[tag] = (session.id, received_at)
        await super()._on_response_create(session, event)

    def _start_response(self, session, params, client_event_id):
        response = super()._start_response(session, params, client_event_id)
        if response.in_conversation:
            interval = [time.monotonic(), math.inf]
            self.intervals[session.id].append(interval)
            self._open[response.id] = interval
        return response

    async def _stream(self, session, response):
        try:
            await super()._stream(session, response)
        finally:
            interval = self._open.pop(response.id, None)
            if interval is not None:
                interval[1] = time.monotonic()

    def waited(self, session_id: str, sent: float, received: float) -> bool:
        """Was a response of this session in progress at some point between the POST and the
        arrival of its create (so the request had to wait its turn)?"""
        intervals = self.intervals.get(session_id, [])
        starts = [i[0] for i in intervals]
        index = bisect.bisect_left(starts, received)  # responses started before the create
        return any(end > sent for _, end in intervals[max(0, index - 8) : index])

    def active_count(self) -> int:
        return sum(1 for s in list(self.sessions.values()) if s.active is not None)


class SimulatorThread:
    """The simulator on an event loop of its own in a daemon thread, so its receive stamps do
    not wait behind the callers' and the HTTP client's work in the main loop. A probe measures
    that loop's own lag (how late a 20 ms sleep wakes up)."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="soak-sim", daemon=True)
        self.thread.start()
        self.lags: list[float] = []
        self.sim: SoakSimulator = self.call(self._start(config))
        self._probe = asyncio.run_coroutine_threadsafe(self._lag_probe(), self.loop)

    async def _start(self, config: SimulatorConfig) -> SoakSimulator:
        sim = SoakSimulator(config)
        await sim.start(HOST, 0)
        return sim

    async def _lag_probe(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.02)
            self.lags.append(time.monotonic() - before - 0.02)

    def call(self, coro, timeout: float = 15.0):
        future: Future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def stop(self) -> None:
        self._probe.cancel()
        try:
            self.call(self.sim.aclose())
        except Exception:  # noqa: BLE001, S110 - stopping anyway
            pass
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)


# ---------------------------------------------------------------------------- callers


@dataclass
class Turn:
    key: str  # metadata.bench_turn
    sent: float
    done_status: str | None = None  # as the caller saw it in response.done
    error: str | None = None  # an error event about its response.create


@dataclass
class Nudge:
    key: str  # metadata.n
    session: str
    via: str  # the process posted to
    sent: float | None = None
    answered: float | None = None
    status: int | None = None  # HTTP status; None: no answer
    request_id: str | None = None
    refusal: str | None = None  # why, when not 202
    timing: dict[str, float] | None = None  # the POST's Server-Timing (s): auth, db, ping


@dataclass
class SoakCaller:
    index: int
    server: str  # "A" or "B": the process holding the session
    ws: object
    session_id: str
    turns: dict[str, Turn] = field(default_factory=dict)
    frames: int = 0
    deltas: int = 0
    dones: int = 0
    errors: collections.Counter = field(default_factory=collections.Counter)
    error_samples: list[str] = field(default_factory=list)
    closed: str | None = None  # why the socket closed, if it did before the end
    reader: asyncio.Task | None = None
    ending: bool = False

    @classmethod
    async def open(cls, index: int, server: str, url: str, token: str) -> SoakCaller:
        ws = await connect_caller(url, {"Authorization": f"Bearer {token}"}, 30)
        try:
            async with asyncio.timeout(30):
                while True:
                    event = json.loads(await ws.recv())
                    if event.get("type") == "session.created":
                        caller = cls(index, server, ws, event["session"]["id"])
                        break
                    if event.get("type") == "error":
                        raise RuntimeError(f"error before session.created: {event}")
        except BaseException:
            with contextlib.suppress(Exception):
                await ws.close()
            raise
        caller.reader = asyncio.create_task(caller._read())
        return caller

    async def _read(self) -> None:
        try:
            while True:
                data = await self.ws.recv(decode=False)
                self.frames += 1
                match = TYPE_RE.search(data)
                kind = match.group(1) if match else None
                if kind == DELTA:
                    self.deltas += 1
                elif kind == DONE:
                    self.dones += 1
                    self._on_done(json.loads(data))
                elif kind == ERROR:
                    self._on_error(json.loads(data), data)
        except ConnectionClosed as exc:
            if not self.ending:
                self.closed = f"closed: {exc}"
        except Exception as exc:  # noqa: BLE001 - a broken caller is a finding, not a crash
            self.closed = f"reader: {type(exc).__name__}: {exc}"

    def _on_done(self, event: dict) -> None:
        response = event.get("response") or {}
        key = (response.get("metadata") or {}).get("bench_turn")
        turn = self.turns.get(key) if key else None
        if turn is not None:
            turn.done_status = response.get("status")

    def _on_error(self, event: dict, raw: bytes) -> None:
        error = event.get("error") or {}
        code = error.get("code") or "?"
        self.errors[code] += 1
        if len(self.error_samples) < 3:
            self.error_samples.append(raw[:300].decode(errors="replace"))
        event_id = error.get("event_id") or ""
        if event_id.startswith("evt_soak_"):
            turn = self.turns.get(event_id.removeprefix("evt_soak_"))
            if turn is not None:
                turn.error = code

    async def turn(self, n: int) -> None:
        key = f"{self.index}-{n}"
        item = {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": f"Soak turn {key}."}],
            },
        }
        create = {
            "type": "response.create",
            "event_id": f"evt_soak_{key}",
            "response": {"metadata": {"bench_turn": key}},
        }
        self.turns[key] = Turn(key, time.monotonic())
        await self.ws.send(json.dumps(item))
        await self.ws.send(json.dumps(create))

    async def close(self) -> None:
        self.ending = True
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self.ws.close()
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)


# ---------------------------------------------------------------------------- measuring


class Tracer:
    """httpcore trace hook: the monotonic time of each step of one request."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}

    async def __call__(self, name: str, info: dict) -> None:
        self.at[name] = time.monotonic()


_TIMING_RE = re.compile(r"(\w+);dur=([\d.]+)")


def parse_server_timing(header: str) -> dict[str, float]:
    """`auth;dur=0.5, db;dur=1.2, ping;dur=0.1` → seconds."""
    return {name: float(ms) / 1000 for name, ms in _TIMING_RE.findall(header or "")}


def summary(values: list[float]) -> dict:
    return {
        "n": len(values),
        "p50": percentile(values, 0.50),
        "p90": percentile(values, 0.90),
        "p99": percentile(values, 0.99),
        "max": max(values) * 1000 if values else None,
        "mean": sum(values) / len(values) * 1000 if values else None,
    }


class ProcessGroup:
    """CPU seconds and RSS of a process and (optionally) its children, which may come and go
    (PostgreSQL's backends): the children's CPU is counted while they are alive, plus what
    the parent collected from those that ended (`children_user/system`)."""

    def __init__(self, pid: int, children: bool = False) -> None:
        self.proc = psutil.Process(pid)
        self.children = children

    def members(self) -> list[psutil.Process]:
        if not self.children:
            return [self.proc]
        with contextlib.suppress(psutil.Error):
            return [self.proc, *self.proc.children(recursive=True)]
        return [self.proc]

    def cpu(self) -> float:
        total = 0.0
        for member in self.members():
            with contextlib.suppress(psutil.Error):
                times = member.cpu_times()
                total += times.user + times.system
                if member is self.proc and self.children:
                    total += times.children_user + times.children_system
        return total

    def rss(self) -> int:
        return sum(rss_bytes(m) or 0 for m in self.members())


@dataclass
class Soak:
    plan: Plan
    token: str
    servers: dict[str, tuple[int, int]]  # name → (port, pid)
    sim: SimulatorThread
    watched: dict[str, ProcessGroup]
    clients: dict[str, httpx.AsyncClient] = field(default_factory=dict)
    callers: list[SoakCaller] = field(default_factory=list)
    nudges: list[Nudge] = field(default_factory=list)
    connect_failures: list[str] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)
    phase: str = "connect"
    run_started: float = 0.0
    run_ended: float = 0.0
    read_errors: list[str] = field(default_factory=list)
    wall: dict[str, str] = field(default_factory=dict)  # phase → local wall-clock time
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    loop_lags: list[float] = field(default_factory=list)

    def mark(self, what: str) -> None:
        self.wall[what] = time.strftime("%H:%M:%S")

    def other(self, name: str) -> str:
        return "B" if name == "A" else "A"

    def http(self, name: str) -> str:
        return f"http://{HOST}:{self.servers[name][0]}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    # --- sessions ------------------------------------------------------------------------

    async def open_session(self, index: int) -> None:
        name = "A" if index % 2 == 0 else "B"
        port = self.servers[name][0]
        url = f"ws://{HOST}:{port}/v1/realtime?model={MODEL}"
        try:
            caller = await SoakCaller.open(index, name, url, self.token)
        except Exception as exc:  # noqa: BLE001 - counted and reported
            self.connect_failures.append(f"{name}: {type(exc).__name__}: {exc}"[:300])
            return
        # The REST hook of the *other* process finds the session once its row is `live`.
        client = self.clients[self.other(name)]
        try:
            async with asyncio.timeout(30):
                while True:
                    response = await client.get(
                        f"/api/v1/sessions/{caller.session_id}", headers=self.auth
                    )
                    if response.status_code == 200 and response.json().get("status") == "live":
                        break
                    await asyncio.sleep(0.05)
        except Exception as exc:  # noqa: BLE001
            self.connect_failures.append(
                f"{caller.session_id} not live via {self.other(name)}: {type(exc).__name__}: {exc}"
            )
            await caller.close()
            return
        self.callers.append(caller)

    async def connect_all(self) -> float:
        self.mark("connect")
        started = time.monotonic()
        for start in range(0, self.plan.sessions, self.plan.connect_batch):
            batch = range(start, min(start + self.plan.connect_batch, self.plan.sessions))
            await asyncio.gather(*(self.open_session(i) for i in batch))
        self.callers.sort(key=lambda c: c.index)
        return time.monotonic() - started

    # --- the load ------------------------------------------------------------------------

    async def caller_loop(self, caller: SoakCaller, rng: random.Random) -> None:
        low, high = self.plan.turn_every
        n = 0
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.stop.wait(), rng.uniform(0, high))  # spread the phases
        while not self.stop.is_set() and caller.closed is None:
            try:
                await caller.turn(n)
            except ConnectionClosed as exc:
                caller.closed = caller.closed or f"send: {exc}"
                return
            n += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop.wait(), rng.uniform(low, high))

    async def nudge_loop(self, caller: SoakCaller, rng: random.Random) -> None:
        low, high = self.plan.nudge_every
        via = self.other(caller.server)
        client = self.clients[via]
        url = f"/api/v1/sessions/{caller.session_id}/responses"
        k = 0
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.stop.wait(), rng.uniform(0, high))
        while not self.stop.is_set():
            nudge = Nudge(f"{caller.index}-{k}", caller.session_id, via)
            self.nudges.append(nudge)
            k += 1
            tracer = Tracer()
            try:
                response = await client.post(
                    url,
                    json={"metadata": {"n": nudge.key}},
                    headers=self.auth,
                    extensions={"trace": tracer},
                )
                nudge.status = response.status_code
                if response.status_code == 202:
                    nudge.request_id = response.json()["id"]
                    nudge.timing = parse_server_timing(response.headers.get("server-timing", ""))
                else:
                    try:
                        code = response.json()["error"]["code"]
                    except Exception:  # noqa: BLE001
                        code = response.text[:80]
                    nudge.refusal = f"HTTP {response.status_code} {code}"
            except Exception as exc:  # noqa: BLE001 - a failed POST is counted with its reason
                nudge.refusal = f"{type(exc).__name__}: {exc}"[:200]
            nudge.sent = tracer.at.get("http11.send_request_headers.started")
            nudge.answered = tracer.at.get("http11.receive_response_headers.complete")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop.wait(), rng.uniform(low, high))

    async def sampler(self) -> None:
        previous = {name: group.cpu() for name, group in self.watched.items()}
        prev_at = time.monotonic()
        psutil.cpu_percent(interval=None)
        while True:
            await asyncio.sleep(SAMPLE_EVERY)
            now = time.monotonic()
            cpu = {name: group.cpu() for name, group in self.watched.items()}
            span = now - prev_at
            sample = {
                "t": now - self.run_started if self.run_started else None,
                "at": now,
                "phase": self.phase,
                "rss": {name: g.rss() for name, g in self.watched.items()},
                "cpu_pct": {
                    name: 100 * (cpu[name] - previous[name]) / span for name in self.watched
                },
                "machine_pct": psutil.cpu_percent(interval=None),
                "sessions": len(self.callers),
                "sim_active": self.sim.sim.active_count(),
            }
            # Everything else on the machine, in % of one core.
            sample["other_pct"] = max(
                0.0, sample["machine_pct"] * CORES - sum(sample["cpu_pct"].values())
            )
            self.samples.append(sample)
            previous, prev_at = cpu, now

    async def loop_lag_probe(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.02)
            self.loop_lags.append(time.monotonic() - before - 0.02)

    async def run_load(self) -> None:
        rng = random.Random(5)
        self.phase = "warm-up"
        self.mark("run")
        self.run_started = time.monotonic()
        tasks = [
            asyncio.create_task(self.caller_loop(c, random.Random(rng.random())))
            for c in self.callers
        ]
        tasks += [
            asyncio.create_task(self.nudge_loop(c, random.Random(rng.random())))
            for c in self.callers
        ]

        async def phases():
            await asyncio.sleep(self.plan.warmup)
            self.phase = "run"

        phase_task = asyncio.create_task(phases())
        try:
            await asyncio.sleep(self.plan.duration)
        finally:
            phase_task.cancel()
            self.stop.set()
            self.mark("drain")
            self.phase = "drain"
            # Every loop ends after its current action (a POST in flight is answered first).
            done, pending = await asyncio.wait(tasks, timeout=30)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self.run_ended = time.monotonic()

    # --- the end -------------------------------------------------------------------------

    def settled(self) -> bool:
        """Every accepted nudge reached the upstream, every caller turn was answered, and no
        response is in progress."""
        sim = self.sim.sim
        for nudge in self.nudges:
            if nudge.request_id and nudge.request_id not in sim.creates:
                return False
        for caller in self.callers:
            if caller.closed:
                continue
            for turn in caller.turns.values():
                if turn.done_status is None and turn.error is None:
                    return False
        return sim.active_count() == 0

    async def drain(self) -> float:
        started = time.monotonic()
        deadline = started + self.plan.drain
        # Polled: the simulator's side changes in its own thread.
        while time.monotonic() < deadline and not self.settled():  # noqa: ASYNC110
            await asyncio.sleep(0.25)
        # The history writer commits in batches: give its last one time to land.
        await asyncio.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        return time.monotonic() - started

    async def read_back(self, deadline: float) -> dict[str, dict[str, dict]]:
        """Every session's requests through the REST hook (of the process not holding it);
        sessions with a request of ours not terminal are read again until the deadline."""
        rows: dict[str, dict[str, dict]] = {}
        ours = self.ours()
        pending = list(self.callers)
        while pending:

            async def fetch(caller: SoakCaller) -> None:
                client = self.clients[self.other(caller.server)]
                try:
                    response = await client.get(
                        f"/api/v1/sessions/{caller.session_id}/responses",
                        params={"limit": 1000},
                        headers=self.auth,
                    )
                    response.raise_for_status()
                    rows[caller.session_id] = {r["id"]: r for r in response.json()["items"]}
                except Exception as exc:  # noqa: BLE001 - read again; missing if it never works
                    self.read_errors.append(f"{caller.session_id}: {type(exc).__name__}: {exc}")

            for start in range(0, len(pending), 20):
                await asyncio.gather(*(fetch(c) for c in pending[start : start + 20]))
            pending = [
                c
                for c in pending
                if any(
                    _state(rows.get(c.session_id, {}), key, kind) not in TERMINAL
                    for kind, key in ours.get(c.session_id, ())
                )
            ]
            if not pending or time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
        return rows

    def ours(self) -> dict[str, list[tuple[str, str]]]:
        """Per session, the (kind, key) of every request the soak made: ("api", request id)
        for accepted nudges, ("caller", bench_turn) for caller turns."""
        found: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
        for nudge in self.nudges:
            if nudge.request_id:
                found[nudge.session].append(("api", nudge.request_id))
        for caller in self.callers:
            for key in caller.turns:
                found[caller.session_id].append(("caller", key))
        return found

    async def close_all(self) -> int:
        """Close every caller; then how many sessions the REST hook still lists as live after
        up to 15 s (each should end when its caller leaves)."""
        self.mark("close")
        await asyncio.gather(*(c.close() for c in self.callers))
        deadline = time.monotonic() + 15
        live = -1
        while time.monotonic() < deadline:
            response = await self.clients["A"].get(
                "/api/v1/sessions", params={"status": "live", "limit": 1000}, headers=self.auth
            )
            if response.status_code == 200:
                live = len(response.json()["items"])
                if live == 0:
                    break
            await asyncio.sleep(0.5)
        return live


def _state(rows: dict[str, dict], key: str, kind: str) -> str:
    """The status of one of our requests in a session's rows: `missing` when absent."""
    if kind == "api":
        row = rows.get(key)
    else:
        row = next(
            (
                r
                for r in rows.values()
                if r.get("origin") == "caller"
                and (r.get("metadata") or {}).get("bench_turn") == key
            ),
            None,
        )
    return row["status"] if row else "missing"


# ---------------------------------------------------------------------------- analysis


def analyse(soak: Soak, rows: dict[str, dict[str, dict]]) -> dict:
    sim = soak.sim.sim
    plan = soak.plan

    # Requests: final states through the REST hook.
    by_turn: dict[tuple[str, str], dict] = {}
    for session_id, session_rows in rows.items():
        for row in session_rows.values():
            turn = (row.get("metadata") or {}).get("bench_turn")
            if row.get("origin") == "caller" and turn:
                by_turn[(session_id, turn)] = row

    def outcome(row: dict | None) -> str:
        if row is None:
            return "missing"
        status = row["status"]
        if status == "failed":
            return f"failed: {(row.get('error') or {}).get('code', '?')}"
        return status

    nudge_outcomes: collections.Counter = collections.Counter()
    refusals: collections.Counter = collections.Counter()
    lost: list[dict] = []
    for nudge in soak.nudges:
        if nudge.request_id is None:
            refusals[nudge.refusal or f"HTTP {nudge.status}"] += 1
            continue
        row = rows.get(nudge.session, {}).get(nudge.request_id)
        result = outcome(row)
        nudge_outcomes[result] += 1
        if row is None or row["status"] not in TERMINAL:
            lost.append(
                {
                    "kind": "nudge",
                    "request": nudge.request_id,
                    "session": nudge.session,
                    "state": result,
                    "via": nudge.via,
                }
            )
    turn_outcomes: collections.Counter = collections.Counter()
    caller_seen: collections.Counter = collections.Counter()
    for caller in soak.callers:
        for key, turn in caller.turns.items():
            row = by_turn.get((caller.session_id, key))
            result = outcome(row)
            turn_outcomes[result] += 1
            caller_seen[
                turn.done_status or (f"error {turn.error}" if turn.error else "nothing")
            ] += 1
            if row is None or row["status"] not in TERMINAL:
                lost.append(
                    {
                        "kind": "caller",
                        "turn": key,
                        "session": caller.session_id,
                        "state": result,
                        "holder": caller.server,
                    }
                )
    other_rows = collections.Counter(
        (r.get("origin"), r["status"])
        for session_rows in rows.values()
        for r in session_rows.values()
        if r.get("origin") not in ("api", "caller")
    )
    api_rows = sum(
        1
        for session_rows in rows.values()
        for r in session_rows.values()
        if r.get("origin") == "api"
    )

    # Latency: POST starts → the simulator has the tagged response.create.
    direct: list[float] = []
    waited: list[float] = []
    everything: list[tuple[float, float, bool]] = []  # (run time, latency, waited)
    rtts: list[float] = []
    split: dict[str, list[float]] = {"auth": [], "db": [], "ping": []}
    direct_nudges: list[tuple[float, Nudge]] = []
    for nudge in soak.nudges:
        if not nudge.request_id or nudge.sent is None:
            continue
        if nudge.answered is not None:
            rtts.append(nudge.answered - nudge.sent)
        for name, values in split.items():
            if nudge.timing and name in nudge.timing:
                values.append(nudge.timing[name])
        stamp = sim.creates.get(nudge.request_id)
        if stamp is None:
            continue
        latency = stamp[1] - nudge.sent
        was_waiting = sim.waited(stamp[0], nudge.sent, stamp[1])
        (waited if was_waiting else direct).append(latency)
        everything.append((nudge.sent - soak.run_started, latency, was_waiting))
        if not was_waiting:
            direct_nudges.append((latency, nudge))

    # Timeline: per bucket of the run, nudges and their latency, and the resources.
    bucket = max(SAMPLE_EVERY, plan.duration / 10)
    timeline = []
    for b in range(math.ceil(plan.duration / bucket)):
        lo, hi = b * bucket, (b + 1) * bucket
        lats = [lat for t, lat, _ in everything if lo <= t < hi]
        lats_direct = [lat for t, lat, w in everything if lo <= t < hi and not w]
        window = [s for s in soak.samples if s["t"] is not None and lo < s["t"] <= hi]
        timeline.append(
            {
                "from": lo,
                "to": hi,
                "nudges": len(lats),
                "p50": percentile(lats_direct, 0.5),
                "p99": percentile(lats_direct, 0.99),
                "p99_all": percentile(lats, 0.99),
                "rss": {name: window[-1]["rss"][name] if window else None for name in soak.watched},
                "cpu_pct": {
                    name: (sum(s["cpu_pct"][name] for s in window) / len(window))
                    if window
                    else None
                    for name in soak.watched
                },
                "machine_pct": (sum(s["machine_pct"] for s in window) / len(window))
                if window
                else None,
                "other_pct": _mean([s["other_pct"] for s in window]),
            }
        )

    # RSS after warm-up: the first sample at or after the warm-up's end → the last of the run.
    rss = {}
    for name in ("daphne-A", "daphne-B"):
        series = [
            (s["t"], s["rss"][name])
            for s in soak.samples
            if s["t"] is not None and s["t"] <= plan.duration + 0.1
        ]
        after = [(t, v) for t, v in series if t >= plan.warmup]
        connected = next((v for t, v in series if t >= 0), None)
        entry = {"series": [(s["t"], s["phase"], s["rss"][name]) for s in soak.samples]}
        if len(after) >= 2:
            start, end = after[0][1], after[-1][1]
            minutes = (after[-1][0] - after[0][0]) / 60
            slope = _slope(after) * 60 / 2**20  # MiB per minute
            growth = end - start
            entry.update(
                connected=connected,
                at_warmup=start,
                end=end,
                peak=max(v for _, v in after),
                growth=growth,
                slope_mib_min=slope,
                minutes=minutes,
                flat=growth <= max(RSS_FLAT_SHARE * start, RSS_FLAT_MIB * 2**20),
            )
        rss[name] = entry

    sessions_by = collections.Counter(c.server for c in soak.callers)
    closed_early = [f"{c.session_id} ({c.server}): {c.closed}" for c in soak.callers if c.closed]
    caller_errors = collections.Counter()
    for c in soak.callers:
        caller_errors.update(c.errors)
    error_samples = [s for c in soak.callers for s in c.error_samples][:5]
    cpu_run = {
        name: _mean([s["cpu_pct"][name] for s in soak.samples if s["phase"] in ("warm-up", "run")])
        for name in soak.watched
    }
    return {
        "sessions": len(soak.callers),
        "sessions_by_process": dict(sessions_by),
        "connect_failures": soak.connect_failures[:10],
        "connect_failure_count": len(soak.connect_failures),
        "read_errors": soak.read_errors[:5],
        "nudges_submitted": len(soak.nudges),
        "nudges_accepted": sum(1 for n in soak.nudges if n.request_id),
        "nudge_refusals": dict(refusals),
        "nudge_outcomes": dict(nudge_outcomes),
        "turns_submitted": sum(len(c.turns) for c in soak.callers),
        "turn_outcomes": dict(turn_outcomes),
        "turns_seen_by_caller": dict(caller_seen),
        "api_rows": api_rows,
        "other_rows": {f"{o} {s}": n for (o, s), n in other_rows.items()},
        "lost": lost[:20],
        "lost_count": len(lost),
        "overlaps": sim.overlaps[:10],
        "overlap_count": len(sim.overlaps),
        "duplicates": sim.duplicates[:10],
        "duplicate_count": len(sim.duplicates),
        "creates_at_upstream": sim.creates_total,
        "caller_errors": dict(caller_errors),
        "caller_error_samples": error_samples,
        "caller_active_errors": caller_errors.get("conversation_already_has_active_response", 0),
        "closed_early": closed_early[:10],
        "closed_early_count": len(closed_early),
        "frames": sum(c.frames for c in soak.callers),
        "deltas": sum(c.deltas for c in soak.callers),
        "dones": sum(c.dones for c in soak.callers),
        "latency_direct_ms": summary(direct),
        "latency_waited_ms": summary(waited),
        "latency_all_ms": summary(direct + waited),
        "post_rtt_ms": summary(rtts),
        "post_split_ms": {name: summary(values) for name, values in split.items()},
        "tail": _tail(direct_nudges),
        "sim_loop_lag_ms": summary(soak.sim.lags),
        "bench_loop_lag_ms": summary(soak.loop_lags),
        "timeline": timeline,
        "rss": rss,
        "cpu_pct_mean": cpu_run,
        "other_pct_mean": _mean(
            [s["other_pct"] for s in soak.samples if s["phase"] in ("warm-up", "run")]
        ),
        "machine_pct_mean": _mean(
            [s["machine_pct"] for s in soak.samples if s["phase"] in ("warm-up", "run")]
        ),
    }


def _tail(samples: list[tuple[float, Nudge]]) -> dict | None:
    """Where the slowest 1% of direct nudges spent their time (means, ms): the POST round trip
    and its timed parts, and what came after the answer (POST answered → upstream)."""
    if len(samples) < 100:
        return None
    ordered = sorted(samples, key=lambda item: item[0])
    slow = ordered[int(0.99 * len(ordered)) :]

    def mean_ms(values: list[float]) -> float | None:
        return 1000 * sum(values) / len(values) if values else None

    with_answer = [(lat, n) for lat, n in slow if n.answered is not None]
    return {
        "n": len(slow),
        "from_ms": 1000 * slow[0][0],
        "latency": mean_ms([lat for lat, _ in slow]),
        "rtt": mean_ms([n.answered - n.sent for _, n in with_answer]),
        "auth": mean_ms([n.timing["auth"] for _, n in slow if n.timing and "auth" in n.timing]),
        "db": mean_ms([n.timing["db"] for _, n in slow if n.timing and "db" in n.timing]),
        "ping": mean_ms([n.timing["ping"] for _, n in slow if n.timing and "ping" in n.timing]),
        "after_answer": mean_ms([max(0.0, lat - (n.answered - n.sent)) for lat, n in with_answer]),
        "via": dict(collections.Counter(n.via for _, n in slow)),
    }


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (t, value), value per second."""
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (v - mv) for t, v in points) / den if den else 0.0


# ---------------------------------------------------------------------------- the part


def _start_services():
    """Redis and PostgreSQL from the tests' helpers; a missing binary becomes a RuntimeError
    (those helpers skip or fail the calling test through pytest)."""
    import pytest

    from tests.support.services import PostgresServer, RedisServer

    redis = postgres = None
    try:
        redis = RedisServer()
        redis.start()
        postgres = PostgresServer(user="soak", password="soak-bench-pw", database="soak")
        postgres.start()
    except (pytest.skip.Exception, pytest.fail.Exception) as exc:
        for server in (postgres, redis):
            if server is not None:
                server.stop()
        raise RuntimeError(f"cannot start the services: {exc}") from None
    except BaseException:
        for server in (postgres, redis):
            if server is not None:
                server.stop()
        raise
    return redis, postgres


def _postmaster_pid(postgres) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((postgres.data / "postmaster.pid").read_text().split()[0])
    return None


def _pg_sessions(postgres) -> int | None:
    """Connections PostgreSQL has accepted to the soak's database so far."""
    try:
        out = postgres.psql(
            f"SELECT sessions FROM pg_stat_database WHERE datname = '{postgres.database}';"
        )
        return int(out.strip())
    except (RuntimeError, ValueError):
        return None


async def run(
    runner, *, quick: bool, out: Path, say=print, duration: float | None = None, warmup: float | None = None
) -> dict:
    """The soak part, start to end; every server it starts is stopped on the way out.
    `duration` and `warmup` (s) override the plan's, for a longer run."""
    plan = PLANS["quick" if quick else "full"]
    if duration is not None or warmup is not None:
        plan = replace(
            plan,
            duration=plan.duration if duration is None else duration,
            warmup=plan.warmup if warmup is None else warmup,
        )
    redis = postgres = sim = None
    handles = []
    clients: dict[str, httpx.AsyncClient] = {}
    soak: Soak | None = None
    exits: dict[str, int | None] = {}
    result: dict = {"plan": plan.__dict__}
    try:
        async with asyncio.timeout(plan.budget):
            redis, postgres = await asyncio.to_thread(_start_services)
            say(f"    redis on :{redis.port}, PostgreSQL on :{postgres.port}")
            sim = await asyncio.to_thread(
                SimulatorThread,
                SimulatorConfig(
                    deltas_per_response=plan.deltas,
                    delta_interval=plan.delta_interval,
                    required_api_key=UPSTREAM_KEY,
                    record_limit=1,  # the soak counts online (SoakSimulator)
                ),
            )
            env = runner.base_env()
            for name in ("BENCH_UPSTREAM_URL", "OC_PROCESSES", "WEB_CONCURRENCY", "REDIS_URL"):
                env.pop(name, None)
            env.update(DATABASE_URL=postgres.url, DJANGO_DEBUG="false")
            token = await runner.migrate_with_token("bench-soak", env=env)
            env.update(
                REDIS_URL=redis.url,
                OC_PROCESSES="2",
                OC_UPSTREAM_URL=sim.sim.url,
                OPENAI_API_KEY=UPSTREAM_KEY,
                # The per-token rate limit is policy, not cost: out of the way (it still runs).
                OC_API_RATE="100000",
                OC_API_BURST="100000",
            )
            servers: dict[str, tuple[int, int]] = {}
            for name in ("A", "B"):
                port = _free_port()
                handle = await runner.spawn(
                    f"soak-daphne-{name}",
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
                handles.append(handle)
                servers[name] = (port, handle.pid)
            for (port, _), handle in zip(servers.values(), handles, strict=True):
                await runner.wait_port(handle, port)
            await asyncio.sleep(1.0)  # start-up done (imports after listen)
            watched = {
                "daphne-A": ProcessGroup(servers["A"][1]),
                "daphne-B": ProcessGroup(servers["B"][1]),
                "postgres": ProcessGroup(_postmaster_pid(postgres) or os.getpid(), children=True),
                "redis": ProcessGroup(redis.proc.pid),
                "bench": ProcessGroup(os.getpid()),
            }
            limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
            for name, (port, _) in servers.items():
                clients[name] = httpx.AsyncClient(
                    base_url=f"http://{HOST}:{port}", limits=limits, timeout=15.0
                )
            soak = Soak(plan, token, servers, sim, watched, clients)
            sampler = asyncio.create_task(soak.sampler())
            lag_probe = asyncio.create_task(soak.loop_lag_probe())
            try:
                connect_s = await soak.connect_all()
                say(
                    f"    {len(soak.callers)}/{plan.sessions} sessions live in {connect_s:.1f} s "
                    f"({len(soak.connect_failures)} failed); running {plan.duration:g} s"
                )
                pg_before = await asyncio.to_thread(_pg_sessions, postgres)
                # The measuring process's own collector is off while it measures (as in the
                # nudge part, and as `timeit` does): left on, its full collections stopped the
                # callers, the HTTP client and the simulator together for 55-138 ms every
                # ~30 s, and each pause was counted as the product's latency.
                gc.collect()
                gc.freeze()  # the callers and the simulator live through the run
                rss_before = watched["bench"].rss()
                gc.disable()  # on again once the lag probes are stopped, below
                await soak.run_load()
                result["harness_rss_growth"] = watched["bench"].rss() - rss_before
                pg_after = await asyncio.to_thread(_pg_sessions, postgres)
                drain_s = await soak.drain()
                rows = await soak.read_back(time.monotonic() + max(5.0, plan.drain - drain_s))
                result.update(analyse(soak, rows))
                result.update(connect_s=connect_s, drain_s=drain_s)
                if pg_before is not None and pg_after is not None:
                    result["pg_sessions_run"] = pg_after - pg_before
                result["live_after_close"] = await soak.close_all()
                soak.mark("closed")
                result["wall"] = soak.wall
            finally:
                sampler.cancel()
                lag_probe.cancel()
                await asyncio.gather(sampler, lag_probe, return_exceptions=True)
                if not gc.isenabled():
                    gc.enable()
                    gc.unfreeze()
                    collect_started = time.perf_counter()
                    result["harness_garbage"] = gc.collect()
                    result["harness_collect_ms"] = (time.perf_counter() - collect_started) * 1000
    except TimeoutError:
        result["failure"] = f"the soak did not end within its {plan.budget:.0f} s budget"
    except Exception as exc:  # noqa: BLE001 - reported with the logs, servers stopped below
        result["failure"] = f"{type(exc).__name__}: {exc}"[:2000]
    finally:
        if soak is not None:
            await asyncio.gather(*(c.close() for c in soak.callers), return_exceptions=True)
        for client in clients.values():
            with contextlib.suppress(Exception):
                await client.aclose()
        for handle in handles:
            exits[handle.name] = handle.proc.returncode  # None: still running, as it should
            await runner.stop(handle)
        if sim is not None:
            await asyncio.to_thread(sim.stop)
        for server in (postgres, redis):
            if server is not None:
                await asyncio.to_thread(server.stop)
    result["exited_early"] = {name: rc for name, rc in exits.items() if rc is not None}
    from bench.run import scan_log

    result["logs"] = {h.name: scan_log(h.log_path, ignore=EXPECTED_LOG) for h in handles}
    result["log_bytes"] = {h.name: _size(h.log_path) for h in handles}
    if soak is not None and soak.samples:
        creates = soak.sim.sim.creates
        nudges = [
            {
                "key": n.key,
                "via": n.via,
                "sent": n.sent,
                "answered": n.answered,
                "upstream": creates[n.request_id][1] if n.request_id in creates else None,
                "status": n.status,
                "refusal": n.refusal,
                "timing": n.timing,
            }
            for n in soak.nudges
        ]
        (out / "soak-samples.json").write_text(  # noqa: ASYNC240 - local, at the end
            json.dumps({"resources": soak.samples, "nudges": nudges}, default=str)
        )
    return result


def _size(path: Path) -> int | None:
    with contextlib.suppress(OSError):
        return path.stat().st_size
    return None


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------- report


SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float]) -> str:
    if not values:
        return ""
    lo, hi = min(values), max(values)
    if hi - lo < 1e-9:
        return SPARK[0] * len(values)
    return "".join(SPARK[min(7, int((v - lo) / (hi - lo) * 8))] for v in values)


def _f(value, digits=1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _mib(value) -> str:
    return "–" if value is None else f"{value / 2**20:,.1f}"


def _counts(counter: dict) -> str:
    if not counter:
        return "none"
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counter.items(), key=lambda kv: -kv[1]))


def render_section(result: dict | None) -> str:
    out: list[str] = []
    w = out.append
    w("## Soak: two processes, Redis, PostgreSQL (issue 5)\n")
    if result is None:
        w("Not run (filtered out).\n")
        return "\n".join(out) + "\n"
    if "failure" in result and "sessions" not in result:
        w(f"The soak failed: `{result['failure'][:800]}`\n")
        return "\n".join(out) + "\n"
    plan = result["plan"]
    n_lo, n_hi = plan["nudge_every"]
    t_lo, t_hi = plan["turn_every"]
    sessions = result["sessions"]
    nudge_rate = sessions * 2 / (n_lo + n_hi)
    turn_rate = sessions * 2 / (t_lo + t_hi)
    w(
        f"{sessions} live sessions ({_counts(result['sessions_by_process'])}) for "
        f"{plan['duration']:g} s on two Daphne processes (A, B: "
        "`daphne operator_console.asgi:application`, DJANGO_DEBUG=false, OC_PROCESSES=2) sharing "
        "one `redis-server` (channels_redis) and one PostgreSQL cluster (fsync off; both from "
        "`tests/support/services.py`, loopback ports of their own), migrated with `manage.py "
        "migrate`. Upstream: the simulator, in a thread of the benchmark process with an event "
        f"loop of its own, {plan['deltas']} deltas {1000 * plan['delta_interval']:g} ms apart per "
        "response. Per session: a caller (`websockets`, on A for even sessions, B for odd) that "
        "keeps reading and, every "
        f"{t_lo:g}–{t_hi:g} s (uniform), sends a user message and a `response.create` "
        "(`metadata.bench_turn`); and a REST nudge every "
        f"{n_lo:g}–{n_hi:g} s (uniform) — `POST /api/v1/sessions/{{id}}/responses` "
        '`{"metadata": {"n": …}}` — sent to the **other** process (stored via it, pinged over '
        "Redis to the holder's actor). The two timers are independent, so nudges and turns "
        f"collide at times. In all about {nudge_rate:.0f} nudges/s and {turn_rate:.0f} caller "
        f"turns/s. The REST hook's rate limit is raised out of the way. The first "
        f"{plan['warmup']:g} s are warm-up for the RSS verdict only; every request counts.\n"
    )
    w(
        "Requests are read back after the run through the REST hook (`GET /api/v1/sessions/{id}/"
        f"responses`), after a drain of at most {plan['drain']:g} s (took "
        f"{_f(result.get('drain_s'))} s). *Lost*: accepted (202, or a caller `response.create` "
        "sent) but not terminal, or not there.\n"
    )
    w("| requests | submitted | accepted | final states (REST hook) | lost |")
    w("|---|---:|---:|---|---:|")
    lost_nudges = sum(1 for item in result["lost"] if item["kind"] == "nudge")
    lost_turns = sum(1 for item in result["lost"] if item["kind"] == "caller")
    if result["lost_count"] > len(result["lost"]):
        lost_nudges = lost_turns = None
    refused = _counts(result["nudge_refusals"])
    w(
        f"| REST nudges (cross-process) | {result['nudges_submitted']:,} | "
        f"{result['nudges_accepted']:,} | {_counts(result['nudge_outcomes'])}"
        f"{'' if not result['nudge_refusals'] else '; refused: ' + refused} "
        f"| {_f(lost_nudges, 0) if lost_nudges is not None else '–'} |"
    )
    w(
        f"| caller `response.create` | {result['turns_submitted']:,} | – | "
        f"{_counts(result['turn_outcomes'])} | "
        f"{_f(lost_turns, 0) if lost_turns is not None else '–'} |"
    )
    w("")
    w(
        f"Callers saw for their own turns: {_counts(result['turns_seen_by_caller'])}. Other rows: "
        f"{_counts(result['other_rows'])}. Callers received {result['frames']:,} frames "
        f"({result['deltas']:,} deltas, {result['dones']:,} `response.done`); the simulator "
        f"received {result['creates_at_upstream']:,} `response.create`.\n"
    )
    w(
        f"**Overlapping `response.create`** (in-conversation, arriving at the simulator while "
        f"a response was active): **{result['overlap_count']}**; "
        f"`conversation_already_has_active_response` errors seen by callers: "
        f"{result['caller_active_errors']}; a request's `response.create` accepted twice: "
        f"{result['duplicate_count']}. Caller `error` events: {_counts(result['caller_errors'])}. "
        f"Callers closed early: {result['closed_early_count']}; sessions that failed to "
        f"connect or go live: {result['connect_failure_count']}; sessions still `live` 15 s "
        f"after every caller closed: {result.get('live_after_close', '–')}.\n"
    )
    d, a, wt = result["latency_direct_ms"], result["latency_all_ms"], result["latency_waited_ms"]
    w(
        "Cross-process nudge latency: the client starts writing the POST to one process → the "
        "simulator receives the `response.create` tagged with the request's id from the other "
        "(CLOCK_MONOTONIC). *Direct*: no other response of the session was in progress at the "
        "simulator between the POST and that moment; *behind a response*: one was, and the "
        "request waited its turn (the sequencing, by design: never two in-conversation "
        "responses at once). The p99 target is for direct nudges: the wait behind a response "
        "depends on how long that response streams, not on the path.\n"
    )
    w("| nudges | n | p50 ms | p90 ms | p99 ms | max ms | mean ms |")
    w("|---|---:|---:|---:|---:|---:|---:|")
    for label, s in (("direct", d), ("behind a response", wt), ("all", a)):
        w(
            f"| {label} | {s['n']:,} | {_f(s['p50'], 2)} | {_f(s['p90'], 2)} | "
            f"**{_f(s['p99'], 2)}** | {_f(s['max'], 2)} | {_f(s['mean'], 2)} |"
        )
    rtt = result["post_rtt_ms"]
    w(
        f"| *beside:* POST round trip (202) | {rtt['n']:,} | {_f(rtt['p50'], 2)} | "
        f"{_f(rtt['p90'], 2)} | {_f(rtt['p99'], 2)} | {_f(rtt['max'], 2)} | {_f(rtt['mean'], 2)} |"
    )
    labels = {
        "auth": "in the POST: token lookup apart (`Server-Timing` auth)",
        "db": "in the POST: token check and write, one database call (`Server-Timing` db)",
        "ping": "in the POST: ping over Redis (`Server-Timing` ping)",
    }
    for name, label in labels.items():
        s = result.get("post_split_ms", {}).get(name)
        if s and s["n"]:
            w(
                f"| *beside:* {label} | {s['n']:,} | {_f(s['p50'], 2)} | {_f(s['p90'], 2)} | "
                f"{_f(s['p99'], 2)} | {_f(s['max'], 2)} | {_f(s['mean'], 2)} |"
            )
    w("")
    tail = result.get("tail")
    if tail:
        untimed = None
        if tail["rtt"] is not None:
            timed = sum(tail[k] or 0.0 for k in ("auth", "db", "ping"))
            untimed = tail["rtt"] - timed
        w(
            f"The slowest 1% of direct nudges ({tail['n']}, from {_f(tail['from_ms'], 1)} ms; "
            f"posted to {_counts(tail['via'])}), means: latency {_f(tail['latency'], 1)} ms = "
            f"POST round trip {_f(tail['rtt'], 1)} ms ("
            + (f"token lookup {_f(tail['auth'], 1)}, " if tail["auth"] is not None else "")
            + f"database call {_f(tail['db'], 1)}, ping {_f(tail['ping'], 1)}, the rest of the "
            f"request in Daphne, Django and the network {_f(untimed, 1)}) + after the answer "
            f"{_f(tail['after_answer'], 1)} ms (the ping's delivery through Redis to the holding "
            "process, its actor, the upstream send, where not already done before the answer).\n"
        )
    if result.get("pg_sessions_run") is not None:
        requests = result["nudges_submitted"] + result["turns_submitted"]
        w(
            f"PostgreSQL accepted {result['pg_sessions_run']:,} new connections to the database "
            f"during the run (`pg_stat_database.sessions`): "
            f"{result['pg_sessions_run'] / max(1, requests):.2f} per request submitted "
            "(each costs a TCP connection, a forked backend and SCRAM authentication, about "
            "5–10 ms on this machine).\n"
        )
    lag_sim, lag_bench = result["sim_loop_lag_ms"], result["bench_loop_lag_ms"]
    w(
        "Measuring-side lag (how late a 20 ms sleep woke up; it delays the stamps): simulator's "
        f"loop p50 {_f(lag_sim['p50'], 2)} / p99 {_f(lag_sim['p99'], 2)} / max "
        f"{_f(lag_sim['max'], 1)} ms; the callers' and HTTP client's loop p50 "
        f"{_f(lag_bench['p50'], 2)} / p99 {_f(lag_bench['p99'], 2)} / max "
        f"{_f(lag_bench['max'], 1)} ms. The benchmark process's garbage collector was off "
        "during the load (its full collections would stop the callers, the HTTP client and the "
        "simulator together, and count as the product's latency); its RSS grew "
        f"{_mib(result.get('harness_rss_growth'))} MiB meanwhile, and the collection at the end "
        f"freed {result.get('harness_garbage', 0):,} objects in "
        f"{_f(result.get('harness_collect_ms'), 0)} ms.\n"
    )
    w(
        "Over time (t = 0 when every session is live; latency of direct nudges posted in the "
        "interval, p99 of all in brackets; RSS at the interval's last sample; CPU % of one core, "
        "mean of the 5 s samples; *other*: CPU used by everything else on the machine, % of "
        "one core; machine % of all cores):\n"
    )
    w(
        "| t s | nudges | p50 ms | p99 ms (all) | RSS A MiB | RSS B MiB | CPU % A / B | "
        "CPU % postgres / redis / bench | other % | machine % |"
    )
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in result["timeline"]:
        cpu = row["cpu_pct"]
        w(
            f"| {row['from']:.0f}–{row['to']:.0f} | {row['nudges']:,} | {_f(row['p50'], 1)} | "
            f"{_f(row['p99'], 1)} ({_f(row['p99_all'], 0)}) | {_mib(row['rss'].get('daphne-A'))} | "
            f"{_mib(row['rss'].get('daphne-B'))} | {_f(cpu.get('daphne-A'), 0)} / "
            f"{_f(cpu.get('daphne-B'), 0)} | {_f(cpu.get('postgres'), 0)} / "
            f"{_f(cpu.get('redis'), 0)} / {_f(cpu.get('bench'), 0)} | "
            f"{_f(row.get('other_pct'), 0)} | {_f(row['machine_pct'], 0)} |"
        )
    w("")
    w(f"RSS every {SAMPLE_EVERY:g} s from the first connection to the end of the run:\n")
    w(
        "| process | RSS, connecting → end of run | all live | end of warm-up | end | peak after warm-up | growth after warm-up | slope MiB/min |"
    )
    w("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, entry in result["rss"].items():
        values = [v for t, phase, v in entry["series"] if phase in ("connect", "warm-up", "run")]
        w(
            f"| {name} | `{sparkline(values)}` | {_mib(entry.get('connected'))} | "
            f"{_mib(entry.get('at_warmup'))} | {_mib(entry.get('end'))} | {_mib(entry.get('peak'))} | "
            f"{_mib(entry.get('growth'))} MiB | {_f(entry.get('slope_mib_min'), 2)} |"
        )
    w("")
    cpu = result["cpu_pct_mean"]
    w(
        "Mean CPU over the run, % of one core: "
        + ", ".join(f"{k} {_f(v, 0)}" for k, v in cpu.items())
        + f", everything else {_f(result.get('other_pct_mean'), 0)}; machine "
        f"{_f(result['machine_pct_mean'], 0)}% of its {CORES} cores.\n"
    )

    w("Targets (issue 5):\n")
    w("| target | measured | verdict |")
    w("|---|---|---|")

    def verdict(ok: bool | None) -> str:
        return "not measured" if ok is None else ("**met**" if ok else "**missed**")

    w(f"| 0 lost requests | {result['lost_count']} lost | {verdict(result['lost_count'] == 0)} |")
    w(
        f"| 0 overlapping `response.create` | {result['overlap_count']} at the simulator, "
        f"{result['caller_active_errors']} errors at callers | "
        f"{verdict(result['overlap_count'] == 0 and result['caller_active_errors'] == 0)} |"
    )
    p99 = d["p99"]
    w(
        f"| nudge p99 ≤ {LATENCY_TARGET_MS:g} ms (direct) | {_f(p99, 2)} ms (p50 "
        f"{_f(d['p50'], 2)} ms) | {verdict(None if p99 is None else p99 <= LATENCY_TARGET_MS)} |"
    )
    w(
        f"| *beside:* nudge p99, all | {_f(a['p99'], 2)} ms (p50 {_f(a['p50'], 2)} ms) | "
        f"no target: it includes waiting for the session's response in progress |"
    )
    for name, entry in result["rss"].items():
        if "growth" in entry:
            w(
                f"| RSS flat after warm-up, {name} | {_mib(entry['at_warmup'])} → "
                f"{_mib(entry['end'])} MiB ({_mib(entry['growth'])} MiB, "
                f"{_f(entry['slope_mib_min'], 2)} MiB/min) | {verdict(entry['flat'])} |"
            )
    w("")
    w(
        f"(*Flat*: growth from the end of warm-up to the end of the run under "
        f"{100 * RSS_FLAT_SHARE:g}% of the RSS then, or under {RSS_FLAT_MIB:g} MiB.)\n"
    )
    problems = []
    if result["lost"]:
        problems.append(
            "- lost: " + "; ".join(f"`{json.dumps(item)}`" for item in result["lost"][:5])
        )
    if result["overlaps"]:
        problems.append(
            "- overlaps: " + "; ".join(f"`{json.dumps(item)}`" for item in result["overlaps"][:5])
        )
    if result["duplicates"]:
        problems.append(
            "- twice: " + "; ".join(f"`{json.dumps(item)}`" for item in result["duplicates"][:5])
        )
    if result["caller_error_samples"]:
        problems.append(
            "- caller errors: " + "; ".join(f"`{s[:200]}`" for s in result["caller_error_samples"])
        )
    for item in (
        result["closed_early"][:5] + result["connect_failures"][:5] + result.get("read_errors", [])
    ):
        problems.append(f"- `{item[:200]}`")
    for name, rc in result.get("exited_early", {}).items():
        problems.append(f"- {name} exited with {rc} during the soak")
    for name, log in result.get("logs", {}).items():
        if log["counts"]:
            problems.append(
                f"- {name} log: {log['counts']}, by kind (ids masked; first–last time): "
                + "; ".join(
                    f"`{k['line']}` ×{k['n']} ({k['first']}–{k['last']})"
                    for k in log.get("kinds", [])
                )
            )
    other = result.get("other_pct_mean")
    if other is not None and other > 100 * CORES * NOISY_SHARE:
        problems.append(
            f"- disturbed: other processes used {other:.0f}% of a core on average during the run "
            f"(over {100 * NOISY_SHARE:.0f}% of the machine)"
        )
    if "failure" in result:
        problems.append(f"- failure: `{result['failure'][:500]}`")
    wall = result.get("wall") or {}
    if wall:
        w(
            "Phases, local time (for the log lines below): "
            + ", ".join(f"{k} {v}" for k, v in wall.items())
            + " (read-back of the requests between drain and close).\n"
        )
    w("Errors and log lines: " + ("\n\n" + "\n".join(problems) if problems else "none.") + "\n")
    return "\n".join(out) + "\n"
