"""The rotation part: callers each moved once to a fresh upstream session during a run
(CONTRACT section 9), against the same run without rotation.

One Daphne process of the app (SQLite in the run's directory); the upstream is the simulator
in this process, so its receive logs tell which upstream session got each of a caller's
requests. How the callers converse and what is measured (gap, CPU, lost): ABOUT below, the
report's text. The simulator streams 10 deltas 0.1 s apart, so a turn lasts about a second:
the relay is not saturated, and a gap measures the rotation rather than queueing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import dataclass, field

import httpx

from bench import common
from bench.common import Bench, at_most, fmt, say, summary, table

TITLE = "Upstream rotation (a fresh upstream session per caller)"
GAP_P99_TARGET_MS = 100.0
CPU_RATIO_TARGET = 1.15
TURN_TIMEOUT = 10.0  # s: a turn's response.done
START_SHARE = 0.3  # callers start over this share of the run
# (callers, run seconds) for a full and a --quick run.
PLAN = {"full": (100, 60.0), "quick": (10, 12.0)}


@dataclass
class Turn:
    event_id: str
    gap: float | None = None  # s: last frame before sending → first frame of the turn
    status: str | None = None  # the response.done's status


@dataclass(kw_only=True)
class RotationCaller(common.Caller):
    """A caller that stamps its frames: the last one received, and the first of each turn."""

    last_at: float = 0.0
    turns: list[Turn] = field(default_factory=list)
    _sent_at: float | None = None
    _before: float = 0.0

    def on_frame(self, kind: bytes | None, data: bytes) -> None:
        now = time.monotonic()
        if self._sent_at is not None and self.turns:
            if self._before:  # not the first turn (its frame before was session.created)
                self.turns[-1].gap = now - self._before
            self._sent_at = None
        if kind == b"response.done" and self.turns:
            status = json.loads(data).get("response", {}).get("status")
            self.turns[-1].status = status if isinstance(status, str) else "?"
        self.last_at = now
        super().on_frame(kind, data)

    async def turn(self, index: int) -> None:
        n, expected = len(self.turns) + 1, self.dones + 1
        self.turns.append(Turn(f"evt_rot_{index}_{n}"))
        self._before, self._sent_at = self.last_at, time.monotonic()
        await self.send_turn(f"Caller {index}, turn {n}.", self.turns[-1].event_id)
        await self.wait_dones(expected, TURN_TIMEOUT)


async def run(bench: Bench, args) -> dict:
    callers, seconds = common.by_mode(PLAN, args)
    bench.prioritise(os.getpid())  # the simulator and the callers run in this process
    result: dict = {"callers": callers, "seconds": seconds, "runs": {}, "logs": {}}
    for label, rotate_after in (("rotating", seconds / 2), ("without rotation", 0.0)):
        await bench.quiet(10.0)
        say(f"    rotation: {callers} callers for {seconds:.0f} s, {label}")
        result["runs"][label] = await one_run(bench, label, callers, seconds, rotate_after, result)
    rotating, plain = result["runs"]["rotating"], result["runs"]["without rotation"]
    if rotating.get("cpu_s") and plain.get("cpu_s"):
        result["cpu_ratio"] = rotating["cpu_s"] / plain["cpu_s"]
    result["measured"] = True
    return result


async def one_run(bench, label, callers, seconds, rotate_after, result) -> dict:
    simulator = common.Simulator(
        common.SimulatorConfig(deltas_per_response=10, delta_interval=0.1, record_limit=None)
    )
    await simulator.start(common.HOST, 0)
    name = "rotation-" + ("on" if rotate_after else "off")
    env = bench.env(
        OC_UPSTREAM_URL=simulator.url,
        OC_ROTATE_AFTER=f"{rotate_after:g}",
        DATABASE_URL=f"sqlite:///{bench.workdir / f'{name}.sqlite3'}",
    )
    opened: list[RotationCaller] = []
    try:
        async with bench.app(name, env, result["logs"], label) as (base, token, daphne):
            cpu = common.CpuWindow({"daphne": common.ProcessGroup(daphne.pid)})
            try:
                await converse(common.realtime_url(base), token, callers, seconds, opened)
                window = cpu.end()
                figures = await read_figures(opened, simulator, base, token)
            finally:
                await asyncio.gather(*(caller.close() for caller in opened))
    finally:
        await simulator.aclose()
    return {**figures, "cpu_s": window["cpu_s"]["daphne"]}


async def converse(url, token, callers: int, seconds: float, opened: list) -> None:
    """Every caller converses back to back from its start until the run's end."""
    end = time.monotonic() + seconds

    async def one(index: int) -> None:
        await asyncio.sleep(START_SHARE * seconds * index / callers)
        caller = await RotationCaller.open(url, token)
        opened.append(caller)
        with contextlib.suppress(Exception):  # a lost turn is counted from the caller's turns
            while time.monotonic() < end and not caller.closed:
                await caller.turn(index)

    await asyncio.gather(*(one(i) for i in range(callers)))


async def read_figures(opened, simulator, http_base: str, token: str) -> dict:
    rotation_gaps, other_gaps, lost, rotated, errors, closed = [], [], 0, 0, [], 0
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as client:
        for caller in opened:
            answer = await client.get(f"{http_base}/api/v1/sessions/{caller.session_id}")
            upstreams = answer.json().get("upstream_sessions", []) if answer.is_success else []
            on_new = set()
            if len(upstreams) >= 2:
                rotated += 1
                on_new = {event.get("event_id") for _, event in simulator.received(upstreams[1])
                          if event.get("type") == "response.create"}
            first_new = next((t for t in caller.turns if t.event_id in on_new), None)
            for turn in caller.turns:
                if turn.status != "completed":
                    lost += 1
                elif turn.gap is not None:
                    (rotation_gaps if turn is first_new else other_gaps).append(turn.gap)
            errors += caller.errors
            closed += bool(caller.closed)
    return {
        "turns": sum(len(c.turns) for c in opened),
        "rotated": rotated,
        "lost": lost,
        "errors": len(errors), "error_samples": errors[:3],
        "closed": closed,
        "rotation_gap_ms": summary(rotation_gaps),
        "other_gap_ms": summary(other_gaps),
    }


ABOUT = (
    "{callers} callers, each conversing back to back for up to {seconds:.0f} s: a "
    "`conversation.item.create` and a `response.create` (event id `evt_rot_<caller>_<turn>`), "
    "the next turn as soon as the last `response.done` arrived. They start spread over the "
    f"first {START_SHARE:.0%} of the run, and `OC_ROTATE_AFTER` is half the run, so each "
    "rotates once, between two of its turns. *Gap*: the last frame the caller received before "
    "it sent a turn → the turn's first frame; the *rotation gap* is that of the first turn "
    "whose `response.create` reached the caller's second upstream session (its `Session`'s "
    "`upstream_sessions`), the *other gaps* the baseline beside it. *Daphne CPU s*: the "
    "process's CPU seconds over the conversations, against the run with `OC_ROTATE_AFTER=0` "
    "(no tracking at all). *Lost*: turns whose `response.done` never came (or came failed); "
    "errors and callers closed early count as lost in the target too.\n"
)


def body(result: dict) -> list[str]:
    runs = result["runs"]
    rows = []
    for label, r in runs.items():
        rotation, other = r["rotation_gap_ms"], r["other_gap_ms"]
        rows.append([label, fmt(r["turns"], 0), fmt(r["rotated"], 0), fmt(r["lost"], 0),
                     fmt(r["errors"], 0), fmt(rotation["p50"], 1), fmt(rotation["p99"], 1),
                     fmt(other["p50"], 1), fmt(other["p99"], 1), fmt(r["cpu_s"], 2)])
    columns = ["run", "turns", "rotated", "lost", "errors", "rotation gap p50 ms",
               "rotation gap p99 ms", "other gaps p50 ms", "other gaps p99 ms", "Daphne CPU s"]
    rotating = runs.get("rotating", {})
    gap_p99 = (rotating.get("rotation_gap_ms") or {}).get("p99")
    ratio = result.get("cpu_ratio")
    lost = sum(r["lost"] + r["errors"] + r["closed"] for r in runs.values())
    targets = (
        f"Targets: rotation gap p99 ≤ {GAP_P99_TARGET_MS:g} ms: "
        f"{at_most(gap_p99, GAP_P99_TARGET_MS)} ({fmt(gap_p99)} ms); "
        f"relay CPU ≤ {CPU_RATIO_TARGET:g}× without rotation: "
        f"{at_most(ratio, CPU_RATIO_TARGET)} ({fmt(ratio, 3)}×); "
        f"0 lost requests: {at_most(lost, 0)} ({lost}).\n"
    )
    samples = [f"- `{s[:200]}`" for r in runs.values() for s in r["error_samples"]]
    problems = common.problems_text(samples, result["logs"])
    return [ABOUT.format(**result), table(columns, rows), targets, problems]
