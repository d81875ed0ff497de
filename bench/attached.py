"""The attached part: calls that do not pass through the relay, steered through a sideband.

Phone calls placed at the simulator (`POST /v1/_sim/sip_calls`) get the signed
`realtime.call.incoming` webhook sent to the console, which accepts each and attaches a sideband
session, as in production. The simulator runs in a thread of this process
(`common.SimulatorThread`) and counts the creates it accepts. What is measured, and how: ABOUT
below, the report's text.
"""

from __future__ import annotations

import asyncio
import base64
import random
import time

import httpx

from bench import common
from bench.common import Bench, at_most, fmt, say, summary, table

TITLE = "Attached calls (sideband)"
SECRET = "whsec_" + base64.b64encode(b"bench-attached-webhook-secret-32").decode()
UPSTREAM_KEY = "sk-bench-attached"
PERIOD = 3.0  # s between two nudges of one call under load
NUDGE_TIMEOUT = 5.0
SEED = 13
# (attached calls, sequential nudges on one call, load duration s, drain limit s, budget s)
PLANS = {"full": (200, 300, 30.0, 30.0, 240.0), "quick": (20, 50, 8.0, 15.0, 60.0)}


class Run:
    def __init__(self, client: httpx.AsyncClient, base: str, token: str, sim) -> None:
        self.client, self.base, self.sim = client, base, sim
        self.auth = {"Authorization": f"Bearer {token}"}
        self.token = token
        self.placed = 0

    async def place_calls(self, count: int) -> list[str]:
        """`count` silent phone calls, each accepted and attached by the console."""
        url = self.sim.sim.url.replace("ws://", "http://", 1) + "/_sim/sip_calls"
        headers = {"Authorization": f"Bearer {UPSTREAM_KEY}"}

        async def one(index: int) -> str:
            body = {"from": f"+1555{self.placed + index:07d}", "to": "+15550000000", "say": [],
                    "webhook_url": f"{self.base}/v1/webhooks/openai", "webhook_secret": SECRET}
            answer = await self.client.post(url, json=body, headers=headers)
            data = answer.json()
            if answer.status_code != 201 or data.get("webhook_status") != 200:
                raise RuntimeError(f"SIP call → {answer.status_code}: {answer.text[:300]}")
            return data["call_id"]

        placed = await common.in_batches(range(count), one, size=20)
        self.placed += count
        return placed

    async def sessions_of(self, call_ids: list[str]) -> dict[str, str]:
        """call id → the attached session's id, once every one is live."""
        wanted, found = set(call_ids), {}
        live = {"status": "live", "limit": 1000}
        async with asyncio.timeout(30.0 + len(call_ids) / 5):
            while len(found) < len(wanted):
                answer = await self.client.get(f"{self.base}/api/v1/sessions", params=live,
                                               headers=self.auth)
                for item in answer.json()["items"]:
                    if item.get("call_id") in wanted:
                        found[item["call_id"]] = item["id"]
                await asyncio.sleep(0.1)
        return found

    async def nudge(self, session_id: str, n: int) -> tuple[str, float]:
        """(request id, when the client started writing the POST)."""
        response, sent, _ = await common.post_nudge(self.client, self.base, self.token,
                                                    session_id, n)
        return response.json()["id"], sent

    async def received(self, request_id: str, timeout: float = NUDGE_TIMEOUT) -> float:
        """When the simulator received the request's response.create."""
        async with asyncio.timeout(timeout):
            # The simulator runs on another thread's loop: polled, at a fraction of a target.
            while (seen := self.sim.sim.creates.get(request_id)) is None:  # noqa: ASYNC110
                await asyncio.sleep(0.0005)
        return seen[1]

    async def idle(self, session_id: str, request_id: str, timeout: float = NUDGE_TIMEOUT) -> None:
        """The call is idle on both sides: the simulator has ended the response, and the
        console has recorded it (as a relayed caller has its `response.done` once the relay
        has passed it on), so the next nudge does not race the last one's events."""
        sessions = self.sim.sim.sessions
        async with asyncio.timeout(timeout):
            # The simulator runs on another thread's loop: polled.
            while (session := sessions.get(session_id)) and session.active:  # noqa: ASYNC110
                await asyncio.sleep(0.001)
            url = f"{self.base}/api/v1/responses/{request_id}"
            while True:  # the console's record, polled
                answer = await self.client.get(url, headers=self.auth)
                if answer.json()["status"] == "completed":
                    return
                await asyncio.sleep(0.005)

    async def latency(self, session_id: str, count: int) -> dict:
        """POST → upstream of sequential nudges on an idle call."""
        samples = []
        for n in range(count + 10):
            request_id, sent = await self.nudge(session_id, n)
            at = await self.received(request_id)
            if n >= 10:  # the first ten warm up
                samples.append(at - sent)
            await self.idle(session_id, request_id)
        return summary(samples)

    async def load(self, sessions: list[str], duration: float, drain: float) -> dict:
        rng = random.Random(SEED)
        sent: dict[str, float] = {}
        failures: list[str] = []
        begin = time.monotonic() + 0.05

        async def series(session_id: str) -> None:
            at = begin + rng.uniform(0, PERIOD)
            n = 0
            while at < begin + duration:
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                try:
                    request_id, when = await self.nudge(session_id, n)
                    sent[request_id] = when
                except Exception as exc:  # noqa: BLE001 - counted
                    failures.append(f"{type(exc).__name__}: {exc}"[:300])
                n, at = n + 1, at + PERIOD

        await asyncio.gather(*(series(s) for s in sessions))
        statuses = await self.final_statuses(list(sent), drain)
        creates = self.sim.sim.creates
        received = {rid: creates[rid][1] for rid in sent if rid in creates}
        lost = [rid for rid in sent if statuses.get(rid) != "completed" or rid not in received]
        return {
            "nudges": len(sent),
            "nudges_per_s": len(sent) / duration,
            "lost": len(lost),
            "lost_samples": [f"{rid}: {statuses.get(rid)}" for rid in lost[:5]],
            "post_failures": len(failures), "failure_samples": failures[:5],
            "overlapping": len(self.sim.sim.overlaps),
            "duplicates": len(self.sim.sim.duplicates),
            "latency_ms": summary([received[rid] - sent[rid] for rid in received]),
        }

    async def final_statuses(self, request_ids: list[str], limit: float) -> dict[str, str]:
        """Each request's status once terminal (or as it stands at the limit). Every request
        still pending is asked once a round, 50 at a time; one never asked says so."""
        statuses = dict.fromkeys(request_ids, "not asked")

        async def ask(rid: str) -> None:
            answer = await self.client.get(f"{self.base}/api/v1/responses/{rid}", headers=self.auth)
            ok = answer.status_code == 200
            statuses[rid] = answer.json().get("status") if ok else str(answer.status_code)

        deadline = time.monotonic() + limit
        await common.until_done(request_ids, ask, lambda rid: statuses[rid] in common.TERMINAL,
                                deadline, 50, 0.2)
        return statuses


async def run(bench: Bench, args) -> dict:
    calls, sequential, duration, drain, budget = common.by_mode(PLANS, args)
    sim = common.SimulatorThread(common.SimulatorConfig(
        deltas_per_response=1, delta_interval=0.0, record_limit=0, required_api_key=UPSTREAM_KEY,
        speech_engine="tone", reply_audio_ms=100, audio_pace=0,
    ))
    env = bench.env(
        OC_UPSTREAM_URL=sim.sim.url, OPENAI_API_KEY=UPSTREAM_KEY, OPENAI_WEBHOOK_SECRET=SECRET,
        OC_MAX_SESSIONS=str(2 * calls + 50),
        DATABASE_URL=f"sqlite:///{bench.workdir / 'attached.sqlite3'}",
    )
    result: dict = {"calls": calls, "period": PERIOD, "duration": duration, "logs": {}}
    try:
        async with (bench.app("attached", env, result["logs"], "Daphne") as (base, token, daphne),
                    common.http_client(100, timeout=15.0) as client):
            plan = (calls, sequential, duration, drain)
            run_, group = Run(client, base, token, sim), common.ProcessGroup(daphne.pid)
            await asyncio.wait_for(measure(run_, group, args.settle, plan, result), budget)
    finally:
        sim.stop()
    return result


async def measure(run_: Run, daphne: common.ProcessGroup, settle: float, plan: tuple,
                  result: dict) -> None:
    """The nudge latency on one idle call, then the calls under load, then RSS per session."""
    calls, sequential, duration, drain = plan
    # One call first, for the latency: what its webhook and sideband load and warm up
    # (the SDK's webhook verification, the first sideband) is not counted per session.
    [first_call] = await run_.place_calls(1)
    first = (await run_.sessions_of([first_call]))[first_call]
    result["latency_ms"] = await run_.latency(first, sequential)
    await asyncio.sleep(settle)
    rss_idle = daphne.rss() / 2**20
    sessions = await run_.sessions_of(await run_.place_calls(calls))
    await asyncio.sleep(settle)
    rss_attached = daphne.rss() / 2**20
    load = result["load"] = await run_.load(list(sessions.values()), duration, drain)
    say(f"    load: {load['nudges']} nudges on {calls} calls, {load['lost']} lost")
    url = common.realtime_url(run_.base)
    callers = await common.in_batches(
        range(calls), lambda _: common.Caller.open(url, run_.token), size=20)
    try:
        await asyncio.sleep(settle)
        rss_relayed = daphne.rss() / 2**20
    finally:
        await asyncio.gather(*(c.close() for c in callers))
    result["rss"] = {
        "attached_kib_per_session": 1024 * (rss_attached - rss_idle) / calls,
        "relayed_kib_per_session": 1024 * (rss_relayed - rss_attached) / calls,
    }


ABOUT = """One Daphne process (in-memory channel layer, SQLite); the simulator in the benchmark's
process on a loop of its own (1 delta per response, a 100 ms tone as each spoken reply, sent
as fast as possible). Silent phone calls placed at the simulator, each accepted by the
console's webhook and attached through a sideband (kind `sip`). *Idle call*: one such call
first, alone, with sequential REST nudges (after 10 not counted), each once the previous
response has ended at the simulator and the console has recorded it `completed` (as the
nudge part waits for the caller's `response.done`); latency = the client starts writing
`POST /api/v1/sessions/{{id}}/responses` → the simulator receives the `response.create` on
the sideband. *Load*: {calls} more calls, every one nudged every {period:g} s for
{duration:g} s, then drained; *lost* = not `completed` or never received upstream;
*overlapping* = creates received while a response of the call was active, and duplicates.
*RSS per session*: the Daphne process's RSS with the {calls} calls held, minus before them
(after the first call), per call; then with as many relayed sessions (WebSocket callers)
added, per relayed session.
"""


def body(result: dict) -> list[str]:
    out = [ABOUT.format(**result)]
    lat, load, rss = result.get("latency_ms"), result.get("load"), result.get("rss")
    what = "nudge {q} ≤ {limit:g} ms (idle attached call)"
    rows = common.quantile_rows(lat, common.NUDGE_TARGETS_MS, what) if lat else []
    if load:
        rows.append([f"{result['calls']} attached calls under nudges: 0 lost",
                     f"{load['lost']} of {load['nudges']}", at_most(load["lost"], 0)])
        rows.append(["0 overlapping", f"{load['overlapping']} (+{load['duplicates']} duplicates)",
                     at_most(load["overlapping"] + load["duplicates"], 0)])
    out.append(common.targets_table(rows, left=1))
    if load:
        late = {k: fmt(load["latency_ms"][k], 2) for k in ("p50", "p99", "max")}
        out.append(f"Under load: {fmt(load['nudges_per_s'], 1)} nudges/s; POST → upstream p50 "
                   f"{late['p50']} ms, p99 {late['p99']} ms, max {late['max']} ms.\n")
    if rss:
        out.append(table(["RSS of the Daphne process", "KiB per session"], [
            ["attached call (sideband)", fmt(rss["attached_kib_per_session"], 0)],
            ["relayed session (caller + upstream)", fmt(rss["relayed_kib_per_session"], 0)],
        ]))
    problems = []
    if load and (load["lost"] or load["post_failures"]):
        problems.append(f"- {load['lost']} lost, {load['post_failures']} failed POSTs; e.g. "
                        + "; ".join(load["lost_samples"] + load["failure_samples"])[:600])
    return [*out, common.problems_text(problems, result.get("logs"))]
