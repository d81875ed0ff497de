"""The soak part: many live sessions on two Daphne processes sharing Redis and PostgreSQL, the
scale-out set-up of DESIGN.md ("Several processes"). The set-up, the load and what is measured:
`about` and the tables below (the report's text). A session's caller turns and its REST nudges
(posted to the *other* process) run on independent timers, so the relay must queue, never send
a second in-conversation create while one is active.

This process's garbage collector is off while the load runs (as `timeit` does): its full
collections stopped the callers, the HTTP client and the simulator together, and each pause
counted as the product's latency.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import json
import os
import random
import re
import time
from dataclasses import asdict, dataclass, field, replace

import httpx
from websockets.exceptions import ConnectionClosed

from bench import common
from bench.common import TERMINAL, Bench, at_most, fmt, say, summary, table, verdict
from devtools.services import PostgresServer, RedisServer

TITLE = "Soak: two processes, Redis, PostgreSQL"
UPSTREAM_KEY = "sk-bench-soak-upstream"  # the simulator's key; never a real one
SAMPLE_EVERY = 5.0  # s between RSS samples
LATENCY_TARGET_MS = 30.0
RSS_FLAT_SHARE = 0.05  # RSS is flat when it grows less than this after warm-up
RSS_FLAT_MIB = 8.0  # ... or less than this many MiB (short runs: one GC arena is ~1 MiB)
DAPHNES = ("daphne-A", "daphne-B")
# Expected: 404s of the "is the session live yet" polls before its row is written.
EXPECTED_LOG = re.compile(r"WARNING django\.request Not Found: /api/v1/sessions/[\w-]+$")


@dataclass(frozen=True)
class Plan:
    sessions: int
    duration: float  # s of streaming and nudging, all sessions connected
    warmup: float  # s at the start not counted for RSS flatness
    drain: float  # s at most, after the last submission, for every request to end
    nudge_every: tuple[float, float] = (5.0, 10.0)  # s between a session's nudges (uniform)
    turn_every: tuple[float, float] = (10.0, 20.0)  # s between a caller's turns (uniform)
    deltas: int = 4  # per response
    delta_interval: float = 0.02  # s

    @property
    def budget(self) -> float:
        """The whole part's limit: start-up, connecting, the run, drain, read-back."""
        return 240.0 + self.sessions * 0.5 + self.duration + self.drain


PLANS = {  # the full run loads the machine without saturating it
    "full": Plan(sessions=300, duration=300.0, warmup=60.0, drain=30.0),
    "quick": Plan(sessions=50, duration=45.0, warmup=15.0, drain=20.0),
}


@dataclass
class Turn:
    done_status: str | None = None  # as the caller saw it in response.done
    error: str | None = None  # the code of an error event about its response.create


@dataclass
class Nudge:
    key: str  # metadata.n
    session: str
    via: str  # the process posted to
    sent: float | None = None
    answered: float | None = None
    request_id: str | None = None
    refusal: str | None = None  # why, when not 202
    timing: dict[str, float] | None = None  # the POST's Server-Timing (s)


@dataclass(eq=False)
class SoakCaller(common.Caller):
    index: int = 0
    server: str = ""  # "A" or "B": the process holding the session
    turns: dict[str, Turn] = field(default_factory=dict)
    frames: int = 0
    deltas: int = 0
    codes: collections.Counter = field(default_factory=collections.Counter)  # error events

    def on_frame(self, kind: bytes | None, data: bytes) -> None:
        self.frames += 1
        if kind == common.DELTA:
            self.deltas += 1
        elif kind == common.DONE:
            self.dones += 1
            response = json.loads(data).get("response") or {}
            turn = self.turns.get((response.get("metadata") or {}).get("bench_turn"))
            if turn is not None:
                turn.done_status = response.get("status")
        elif kind == common.ERROR:
            error = json.loads(data).get("error") or {}
            self.codes[error.get("code") or "?"] += 1
            if len(self.errors) < 3:
                self.errors.append(data[:300].decode(errors="replace"))
            turn = self.turns.get((error.get("event_id") or "").removeprefix("evt_soak_"))
            if turn is not None:
                turn.error = error.get("code") or "?"

    async def turn(self, n: int) -> None:
        key = f"{self.index}-{n}"
        self.turns[key] = Turn()
        await self.send_turn(f"Soak turn {key}.", f"evt_soak_{key}", metadata={"bench_turn": key})


@dataclass
class Soak:
    plan: Plan
    token: str
    sim: common.SimulatorThread
    groups: dict[str, common.ProcessGroup]
    clients: dict[str, httpx.AsyncClient]  # "A"/"B" → a client with that process's base URL
    callers: list[SoakCaller] = field(default_factory=list)
    nudges: list[Nudge] = field(default_factory=list)
    connect_failures: list[str] = field(default_factory=list)
    read_errors: list[str] = field(default_factory=list)
    samples: list[tuple[float, dict]] = field(default_factory=list)  # (t, RSS per Daphne)
    cpu: dict = field(default_factory=dict)  # `CpuWindow.end()` over the warm-up and the run
    phase: str = "connect"
    run_started: float = 0.0
    wall: dict[str, str] = field(default_factory=dict)  # phase → local wall-clock time
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def mark(self, phase: str) -> None:
        self.phase = phase
        self.wall[phase] = time.strftime("%H:%M:%S")

    async def pause(self, rng: random.Random, low: float, high: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), rng.uniform(low, high))

    async def open_session(self, index: int) -> None:
        """A caller on A (even) or B (odd), once the *other* process's REST hook has its
        session `live`; a failure is counted."""
        name = "AB"[index % 2]
        url = common.realtime_url(str(self.clients[name].base_url))
        caller = None
        try:
            caller = await SoakCaller.open(url, self.token, index=index, server=name)
            session = f"/api/v1/sessions/{caller.session_id}"
            await common.wait_live(self.clients[other(name)], session, self.token, 30, 0.05)
            self.callers.append(caller)
        except Exception as exc:  # noqa: BLE001 - counted and reported
            who = f"{name} {caller and caller.session_id}"
            self.connect_failures.append(f"{who}: {type(exc).__name__}: {exc}"[:300])
            if caller is not None:
                await caller.close()

    async def connect_all(self) -> None:
        self.mark("connect")
        await common.in_batches(range(self.plan.sessions), self.open_session)
        self.callers.sort(key=lambda c: c.index)

    async def caller_loop(self, caller: SoakCaller, rng: random.Random) -> None:
        low, high = self.plan.turn_every
        await self.pause(rng, 0, high)  # spread the phases
        n = 0
        while not self.stop.is_set() and caller.closed is None:
            try:
                await caller.turn(n)
            except ConnectionClosed as exc:
                caller.closed = caller.closed or f"send: {exc}"
                return
            n += 1
            await self.pause(rng, low, high)

    async def nudge_loop(self, caller: SoakCaller, rng: random.Random) -> None:
        low, high = self.plan.nudge_every
        await self.pause(rng, 0, high)
        k = 0
        while not self.stop.is_set():
            nudge = Nudge(f"{caller.index}-{k}", caller.session_id, other(caller.server))
            self.nudges.append(nudge)
            await self.post(nudge)
            k += 1
            await self.pause(rng, low, high)

    async def post(self, nudge: Nudge) -> None:
        try:
            response, nudge.sent, nudge.answered = await common.timed_request(
                self.clients[nudge.via], "POST", f"/api/v1/sessions/{nudge.session}/responses",
                json={"metadata": {"n": nudge.key}},
            )
            if response.status_code == 202:
                nudge.request_id = response.json()["id"]
                nudge.timing = common.parse_server_timing(response.headers.get("server-timing", ""))
            else:
                nudge.refusal = f"HTTP {response.status_code} {response.text[:80]}"
        except Exception as exc:  # noqa: BLE001 - a failed POST is counted with its reason
            nudge.refusal = f"{type(exc).__name__}: {exc}"[:200]

    async def sampler(self) -> None:
        """The Daphnes' RSS every SAMPLE_EVERY s of the warm-up and the run (t = 0 at its
        start)."""
        while True:
            await asyncio.sleep(SAMPLE_EVERY)
            if self.phase in ("warm-up", "run"):
                rss = {name: self.groups[name].rss() for name in DAPHNES}
                self.samples.append((time.monotonic() - self.run_started, rss))

    async def run_load(self) -> None:
        rng = random.Random(5)
        self.mark("warm-up")
        self.run_started, window = time.monotonic(), common.CpuWindow(self.groups)
        tasks = [asyncio.create_task(loop(c, random.Random(rng.random())))
                 for loop in (self.caller_loop, self.nudge_loop) for c in self.callers]
        try:
            await asyncio.sleep(self.plan.warmup)
            self.mark("run")
            await asyncio.sleep(self.plan.duration - self.plan.warmup)
        finally:
            self.cpu = window.end()
            self.stop.set()
            self.mark("drain")
            # Every loop ends after its current action (a POST in flight is answered first).
            await common.cancel_all((await asyncio.wait(tasks, timeout=30))[1])

    def settled(self) -> bool:
        """Every accepted nudge reached the upstream, every turn was answered, and no response
        is in progress."""
        sim = self.sim.sim
        if any(n.request_id and n.request_id not in sim.creates for n in self.nudges):
            return False
        turns = [t for c in self.callers if not c.closed for t in c.turns.values()]
        if any(t.done_status is None and t.error is None for t in turns):
            return False
        return not any(s.active is not None for s in list(sim.sessions.values()))

    async def drain(self) -> float:
        started = time.monotonic()
        deadline = started + self.plan.drain
        # Polled: the simulator's side changes in its own thread.
        while time.monotonic() < deadline and not self.settled():  # noqa: ASYNC110
            await asyncio.sleep(0.25)
        await asyncio.sleep(min(2.0, max(0.0, deadline - time.monotonic())))  # the last writes land
        return time.monotonic() - started

    async def read_back(self, deadline: float) -> dict[str, dict[str, dict]]:
        """Every session's requests through the REST hook of the process not holding it; a
        session with a request of ours not terminal is read again until the deadline."""
        rows: dict[str, dict[str, dict]] = {}
        ours = self.ours()

        async def fetch(caller: SoakCaller) -> None:
            try:
                response = await self.clients[other(caller.server)].get(
                    f"/api/v1/sessions/{caller.session_id}/responses", params={"limit": 1000}
                )
                response.raise_for_status()
                rows[caller.session_id] = {r["id"]: r for r in response.json()["items"]}
            except Exception as exc:  # noqa: BLE001 - read again; missing if it never works
                self.read_errors.append(f"{caller.session_id}: {type(exc).__name__}: {exc}")

        def done(caller: SoakCaller) -> bool:
            mine = rows.get(caller.session_id, {})
            return all(state(mine, kind, key) in TERMINAL for kind, key in ours[caller.session_id])

        await common.until_done(self.callers, fetch, done, deadline, 20, 1.0)
        return rows

    def ours(self) -> dict[str, list[tuple[str, str]]]:
        """Per session, ("api", request id) of each accepted nudge, ("caller", key) of each turn."""
        found: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
        for nudge in self.nudges:
            if nudge.request_id:
                found[nudge.session].append(("api", nudge.request_id))
        for caller in self.callers:
            found[caller.session_id] += [("caller", key) for key in caller.turns]
        return found

    async def close_all(self) -> int:
        """Close every caller; how many sessions are still `live` after up to 15 s."""
        self.mark("close")
        await asyncio.gather(*(c.close() for c in self.callers))
        deadline, live = time.monotonic() + 15, -1
        while time.monotonic() < deadline:
            live_now = {"status": "live", "limit": 1000}
            response = await self.clients["A"].get("/api/v1/sessions", params=live_now)
            if response.status_code == 200 and (live := len(response.json()["items"])) == 0:
                break
            await asyncio.sleep(0.5)
        self.mark("closed")
        return live


def other(name: str) -> str:
    return "B" if name == "A" else "A"


def state(rows: dict[str, dict], kind: str, key: str) -> str:
    """The state of one of our requests among a session's rows: found by id for a nudge, by
    `bench_turn` for a turn."""
    row = rows.get(key) if kind == "api" else next(
        (r for r in rows.values() if r.get("origin") == "caller"
         and (r.get("metadata") or {}).get("bench_turn") == key), None)
    if row is None:
        return "missing"
    if row["status"] == "failed":
        return f"failed: {(row.get('error') or {}).get('code', '?')}"
    return row["status"]


def requests(soak: Soak, rows: dict[str, dict[str, dict]]) -> dict:
    """Final states through the REST hook, and the lost requests (not terminal, or missing)."""
    outcomes = {"api": collections.Counter(), "caller": collections.Counter()}
    refusals, seen, lost = collections.Counter(), collections.Counter(), []
    for nudge in soak.nudges:
        if nudge.request_id is None:
            refusals[nudge.refusal] += 1
            continue
        result = state(rows.get(nudge.session, {}), "api", nudge.request_id)
        outcomes["api"][result] += 1
        if result.split(":")[0] not in TERMINAL:
            lost.append({"kind": "nudge", "request": nudge.request_id, "session": nudge.session,
                         "state": result, "via": nudge.via})
    for caller in soak.callers:
        for key, turn in caller.turns.items():
            result = state(rows.get(caller.session_id, {}), "caller", key)
            outcomes["caller"][result] += 1
            seen[turn.done_status or (f"error {turn.error}" if turn.error else "nothing")] += 1
            if result.split(":")[0] not in TERMINAL:
                lost.append({"kind": "caller", "turn": key, "session": caller.session_id,
                             "state": result, "holder": caller.server})
    others = collections.Counter(
        f"{r.get('origin')} {r['status']}" for session_rows in rows.values()
        for r in session_rows.values() if r.get("origin") not in ("api", "caller")
    )
    return {
        "nudges_submitted": len(soak.nudges),
        "nudges_accepted": sum(1 for n in soak.nudges if n.request_id),
        "nudge_refusals": dict(refusals),
        "nudge_outcomes": dict(outcomes["api"]),
        "turns_submitted": sum(len(c.turns) for c in soak.callers),
        "turn_outcomes": dict(outcomes["caller"]),
        "turns_seen_by_caller": dict(seen),
        "other_rows": dict(others),
        "lost": lost[:20],
        "lost_count": len(lost),
    }


def latency(soak: Soak) -> dict:
    """POST starts → the simulator has the tagged create: direct nudges and those that waited
    behind a response of their session."""
    sim, direct, waited = soak.sim.sim, [], []
    accepted = [n for n in soak.nudges if n.request_id and n.sent is not None]
    for nudge in accepted:
        if (stamp := sim.creates.get(nudge.request_id)) is not None:
            behind = sim.waited(stamp[0], nudge.sent, stamp[1])
            (waited if behind else direct).append(stamp[1] - nudge.sent)
    timed = [n.timing for n in accepted if n.timing]
    return {
        "latency_direct_ms": summary(direct),
        "latency_waited_ms": summary(waited),
        "latency_all_ms": summary(direct + waited),
        "post_rtt_ms": summary([n.answered - n.sent for n in accepted if n.answered is not None]),
        "post_split_ms": {p: summary([t[p] for t in timed if p in t]) for p in common.PHASES},
    }


def rss_flatness(soak: Soak) -> dict:
    """Per Daphne: RSS from the end of warm-up to the end of the run, and whether it is flat."""
    out = {}
    for name in DAPHNES:
        series = [(t, rss[name]) for t, rss in soak.samples if rss[name] is not None]
        after = [(t, v) for t, v in series if t >= soak.plan.warmup]
        entry = out[name] = {"connected": series[0][1] if series else None}
        if len(after) >= 2:
            start, end = after[0][1], after[-1][1]
            entry.update(
                at_warmup=start, end=end, peak=max(v for _, v in after), growth=end - start,
                slope_mib_min=slope(after) * 60 / 2**20,
                flat=end - start <= max(RSS_FLAT_SHARE * start, RSS_FLAT_MIB * 2**20),
            )
    return out


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (t, value), value per second."""
    mt, mv = (sum(p[i] for p in points) / len(points) for i in (0, 1))
    den = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (v - mv) for t, v in points) / den if den else 0.0


def analyse(soak: Soak, rows: dict[str, dict[str, dict]]) -> dict:
    sim, callers, cpu = soak.sim.sim, soak.callers, soak.cpu
    codes = sum((c.codes for c in callers), collections.Counter())
    closed = [f"{c.session_id} ({c.server}): {c.closed}" for c in callers if c.closed]
    return {
        **requests(soak, rows),
        **latency(soak),
        "measured": True,
        "sessions": len(callers),
        "sessions_by_process": dict(collections.Counter(c.server for c in callers)),
        "connect_failures": soak.connect_failures[:10],
        "connect_failure_count": len(soak.connect_failures),
        "read_errors": soak.read_errors[:5],
        "overlaps": sim.overlaps[:10], "overlap_count": len(sim.overlaps),
        "duplicates": sim.duplicates[:10], "duplicate_count": len(sim.duplicates),
        "creates_at_upstream": sim.creates_total,
        "caller_errors": dict(codes),
        "caller_error_samples": [s for c in callers for s in c.errors][:5],
        "caller_active_errors": codes.get("conversation_already_has_active_response", 0),
        "closed_early": closed[:10], "closed_early_count": len(closed),
        **common.totals(callers, "frames", "deltas", "dones"),
        "rss": rss_flatness(soak),
        "cpu_pct_mean": {n: 100 * (s or 0.0) / cpu["seconds"] for n, s in cpu["cpu_s"].items()},
        "other_pct_mean": 100 * cpu["other_cpu_s"] / cpu["seconds"],
        "machine_pct_mean": cpu["machine_cpu_percent"],
        "wall": soak.wall,
    }


def postmaster_pid(postgres: PostgresServer) -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((postgres.data / "postmaster.pid").read_text().split()[0])
    return os.getpid()


async def run(bench: Bench, args) -> dict:
    """The soak, start to end; every server it starts is stopped on the way out."""
    plan = common.by_mode(PLANS, args)
    plan = replace(plan, duration=args.soak_seconds or plan.duration,
                   warmup=args.soak_warmup or plan.warmup)
    bench.prioritise(os.getpid())  # the simulator and the callers run in this process
    services, sim, handles, result = [], None, [], {"plan": asdict(plan)}
    try:
        async with asyncio.timeout(plan.budget):
            for server in (RedisServer(), PostgresServer(user="soak", password="soak-bench-pw",
                                                         database="soak")):
                services.append(server)
                await asyncio.to_thread(server.start)
            say(f"    redis on :{services[0].port}, PostgreSQL on :{services[1].port}")
            sim = await asyncio.to_thread(common.SimulatorThread, common.SimulatorConfig(
                deltas_per_response=plan.deltas, delta_interval=plan.delta_interval,
                required_api_key=UPSTREAM_KEY, record_limit=1,  # it counts as it goes
            ))
            await soak_run(bench, plan, services, sim, handles, result)
    except TimeoutError:
        result["failure"] = f"the soak did not end within its {plan.budget:.0f} s budget"
    except Exception as exc:  # noqa: BLE001 - reported with the logs; servers stopped below
        result["failure"] = f"{type(exc).__name__}: {exc}"[:2000]
    finally:
        exited = {h.name: h.proc.returncode for h in handles}
        result["exited_early"] = {name: rc for name, rc in exited.items() if rc is not None}
        for handle in handles:
            await bench.stop(handle)
        if sim is not None:
            await asyncio.to_thread(sim.stop)
        for server in reversed(services):
            await asyncio.to_thread(server.stop)
    result["logs"] = {h.name: common.scan_log(h.log_path, ignore=EXPECTED_LOG) for h in handles}
    return result


async def start_daphnes(bench: Bench, env: dict, handles: list, token: str) -> dict:
    """Daphne A and B; an HTTP client of each ("A"/"B")."""
    started = await asyncio.gather(*(bench.daphne(f"daphne-{name}", common.APP, env)
                                     for name in "AB"))
    handles += [handle for handle, _ in started]
    auth = {"Authorization": f"Bearer {token}"}
    return {name: common.http_client(64, base_url=f"http://{common.HOST}:{port}", headers=auth,
                                     timeout=15.0)
            for name, (_, port) in zip("AB", started, strict=True)}


async def soak_run(bench: Bench, plan: Plan, services, sim, handles: list, result: dict) -> None:
    redis, postgres = services
    env = bench.env(DATABASE_URL=postgres.url)
    token = await bench.migrate_with_token("bench-soak", env)
    env.update(
        REDIS_URL=redis.url, OC_PROCESSES="2", OC_UPSTREAM_URL=sim.sim.url,
        OPENAI_API_KEY=UPSTREAM_KEY,
    )
    clients = await start_daphnes(bench, env, handles, token)
    groups = {name: common.ProcessGroup(h.pid) for name, h in zip(DAPHNES, handles, strict=True)}
    groups.update(postgres=common.ProcessGroup(postmaster_pid(postgres), children=True),
                  redis=common.ProcessGroup(redis.proc.pid), bench=common.ProcessGroup(os.getpid()))
    soak = Soak(plan, token, sim, groups, clients)
    sampler = asyncio.create_task(soak.sampler())
    try:
        await soak.connect_all()
        say(f"    {len(soak.callers)}/{plan.sessions} sessions live "
            f"({len(soak.connect_failures)} failed); running {plan.duration:g} s")
        await measure(soak, result)
        result.update(analyse(soak, result.pop("rows")))
        result["live_after_close"] = await soak.close_all()
    finally:
        await common.cancel_all([sampler])
        await asyncio.gather(*(c.close() for c in soak.callers), return_exceptions=True)
        for client in clients.values():
            await client.aclose()


async def measure(soak: Soak, result: dict) -> None:
    """The load with this process's collector off, the drain, the read-back."""
    gc.collect()
    gc.freeze()  # the callers and the simulator live through the run
    gc.disable()
    try:
        await soak.run_load()
    finally:
        gc.enable()
        gc.unfreeze()
        gc.collect()
    result["drain_s"] = await soak.drain()
    left = max(5.0, soak.plan.drain - result["drain_s"])
    result["rows"] = await soak.read_back(time.monotonic() + left)


PHASE_LABELS = {
    "auth": "token check (`Server-Timing` auth)",
    "db": "the store (`Server-Timing` db)",
    "ping": "ping over Redis (`Server-Timing` ping)",
}


def mib(value) -> str:
    return "–" if value is None else f"{value / 2**20:,.1f}"


def counts(counter: dict) -> str:
    ordered = sorted(counter.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{k} {v:,}" for k, v in ordered) or "none"


def body(r: dict) -> list[str]:
    parts = (about, request_table, overlaps, latency_table, rss_table, targets, problems)
    return [part(r) for part in parts]


def about(r: dict) -> str:
    plan, n = r["plan"], r["sessions"]
    (n_lo, n_hi), (t_lo, t_hi) = plan["nudge_every"], plan["turn_every"]
    return (
        f"{n} live sessions ({counts(r['sessions_by_process'])}) for {plan['duration']:g} s on "
        "two Daphne processes (A, B: DJANGO_DEBUG=false, OC_PROCESSES=2) sharing one "
        "`redis-server` and one PostgreSQL cluster (fsync off; devtools/services.py). Upstream: "
        "the simulator, on an event loop of its own in a thread of the benchmark process, "
        f"{plan['deltas']} deltas {1000 * plan['delta_interval']:g} ms apart per response. Per "
        f"session: a caller (on A for even sessions, B for odd) that every {t_lo:g}–{t_hi:g} s "
        f"sends a user message and a `response.create`; and a REST nudge every {n_lo:g}–{n_hi:g} "
        f"s to the **other** process. In all about {n * 2 / (n_lo + n_hi):.0f} nudges/s and "
        f"{n * 2 / (t_lo + t_hi):.0f} turns/s. The first {plan['warmup']:g} s are warm-up for "
        "the RSS verdict only. Requests are read back through the REST hook after a drain of at "
        f"most {plan['drain']:g} s (took {fmt(r.get('drain_s'))} s); *lost* = accepted but not "
        "terminal, or not there.\n"
    )


def request_table(r: dict) -> str:
    lost = {kind: sum(item["kind"] == kind for item in r["lost"]) for kind in ("nudge", "caller")}
    if r["lost_count"] > len(r["lost"]):  # only the first ones were kept
        lost = {"nudge": None, "caller": None}
    refused = f"; refused: {counts(r['nudge_refusals'])}" if r["nudge_refusals"] else ""
    rows = [
        ["REST nudges (cross-process)", r["nudges_submitted"], r["nudges_accepted"],
         counts(r["nudge_outcomes"]) + refused, fmt(lost["nudge"])],
        ["caller `response.create`", r["turns_submitted"], "–", counts(r["turn_outcomes"]),
         fmt(lost["caller"])],
    ]
    return table(["requests", "submitted", "accepted", "final states (REST hook)", "lost"], rows)


def overlaps(r: dict) -> str:
    return (
        f"Callers saw for their own turns: {counts(r['turns_seen_by_caller'])}. Other rows: "
        f"{counts(r['other_rows'])}. Callers received {r['frames']:,} frames ({r['deltas']:,} "
        f"deltas, {r['dones']:,} `response.done`); the simulator received "
        f"{r['creates_at_upstream']:,} `response.create`.\n\n"
        "**Overlapping `response.create`** (in-conversation, arriving while a response was "
        f"active): **{r['overlap_count']}**; `conversation_already_has_active_response` errors "
        f"at callers: {r['caller_active_errors']}; a request's create accepted twice: "
        f"{r['duplicate_count']}. Caller `error` events: {counts(r['caller_errors'])}. Callers "
        f"closed early: {r['closed_early_count']}; sessions that failed to connect or go live: "
        f"{r['connect_failure_count']}; still `live` 15 s after every caller closed: "
        f"{r.get('live_after_close', '–')}.\n"
    )


def latency_table(r: dict) -> str:
    keys = ("p50", "p90", "p99", "max", "mean")
    named = [("direct", r["latency_direct_ms"]), ("behind a response", r["latency_waited_ms"]),
             ("all", r["latency_all_ms"]), ("*beside:* POST round trip (202)", r["post_rtt_ms"])]
    named += [(f"*beside:* in the POST: {label}", r["post_split_ms"][p])
              for p, label in PHASE_LABELS.items() if r["post_split_ms"][p]["n"]]
    rows = [[label, s["n"], *[fmt(s[k], 2) for k in keys]] for label, s in named]
    return (
        "Cross-process nudge latency: the client starts writing the POST to one process → the "
        "simulator receives the tagged `response.create` from the other (CLOCK_MONOTONIC). "
        "*Direct*: no other response of the session was in progress meanwhile; *behind a "
        "response*: one was, and the request waited its turn (by design). The p99 target is "
        "for direct nudges.\n\n" + table(["nudges", "n", *[f"{k} ms" for k in keys]], rows)
    )


def rss_table(r: dict) -> str:
    keys = ("connected", "at_warmup", "end", "peak", "growth")
    rows = [[name, *[mib(e.get(k)) for k in keys],
             fmt(e.get("slope_mib_min"), 2)] for name, e in r["rss"].items()]
    cpu = ", ".join(f"{k} {fmt(v, 0)}" for k, v in r["cpu_pct_mean"].items())
    return (
        f"RSS every {SAMPLE_EVERY:g} s from the start of the warm-up (MiB; *all live*: the first "
        "sample):\n\n"
        + table(["process", "all live", "end of warm-up", "end", "peak after warm-up",
                 "growth after warm-up", "slope MiB/min"], rows)
        + f"\nMean CPU over the run, % of one core: {cpu}, everything else "
        f"{fmt(r['other_pct_mean'], 0)}; machine {fmt(r['machine_pct_mean'], 0)}% of its "
        f"{common.CORES} cores.\n"
    )


def targets(r: dict) -> str:
    d, a, lost = r["latency_direct_ms"], r["latency_all_ms"], r["lost_count"]
    at_sim, at_callers = r["overlap_count"], r["caller_active_errors"]
    rows = [
        ["0 lost requests", f"{lost} lost", at_most(lost, 0)],
        ["0 overlapping `response.create`", f"{at_sim} at the simulator, {at_callers} at callers",
         at_most(at_sim + at_callers, 0)],
        [f"cross-process nudge p99 ≤ {LATENCY_TARGET_MS:g} ms (direct)",
         f"{fmt(d['p99'], 2)} ms (p50 {fmt(d['p50'], 2)} ms)",
         at_most(d["p99"], LATENCY_TARGET_MS)],
        ["*beside:* nudge p99, all", f"{fmt(a['p99'], 2)} ms (p50 {fmt(a['p50'], 2)} ms)",
         "no target: it includes waiting for the session's response in progress"],
    ]
    rows += [[f"RSS flat after warm-up, {name}", f"{mib(e['at_warmup'])} → {mib(e['end'])} MiB "
              f"({mib(e['growth'])} MiB, {fmt(e['slope_mib_min'], 2)} MiB/min)", verdict(e["flat"])]
             for name, e in r["rss"].items() if "growth" in e]
    return (
        common.targets_table(rows)
        + f"\n(*Flat*: growth from the end of warm-up to the end of the run under "
        f"{100 * RSS_FLAT_SHARE:g}% of the RSS then, or under {RSS_FLAT_MIB:g} MiB.)\n"
    )


def problems(r: dict) -> str:
    found = (("lost", "lost"), ("overlaps", "overlaps"), ("twice", "duplicates"))
    lines = [f"- {what}: " + "; ".join(f"`{json.dumps(item)}`" for item in r[key][:5])
             for what, key in found if r[key]]
    if r["caller_error_samples"]:
        lines.append(f"- caller errors: {common.examples(r['caller_error_samples'], 5)}")
    others = r["closed_early"][:5] + r["connect_failures"][:5] + r["read_errors"]
    lines += [f"- `{item[:200]}`" for item in others]
    lines += [f"- {name} exited with {rc} during the soak" for name, rc in
              r["exited_early"].items()]
    if (other_pct := r["other_pct_mean"]) > 100 * common.CORES * common.NOISY_SHARE:
        lines.append(f"- disturbed: other processes used {other_pct:.0f}% of a core on average")
    if "failure" in r:
        lines.append(f"- failure: `{r['failure'][:500]}`")
    wall = ", ".join(f"{k} {v}" for k, v in r["wall"].items())
    text = common.problems_text(lines, r["logs"])
    return f"Phases, local time (for the log lines): {wall}.\n\n" + text
