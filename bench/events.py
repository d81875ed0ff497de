"""The event-stream part: scripts following every session over SSE, and what they cost the relay.
The processes, the windows and the two follower lags: ABOUT below (the report's text). The
client process is `python -m bench.events` (`main` below).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from dataclasses import dataclass, field
from datetime import datetime

import httpx

from bench import common
from bench.common import Bench, at_most, fmt, summary, table

TITLE = "Event streams (SSE followers of every session)"
SESSIONS = 100
FOLLOWERS = 50
SIM_DELTAS = 20
SIM_INTERVAL = 0.02
PLAN = {"full": ("off,on,off,on,off", 12.0, 3.0, 5.0), "quick": ("off,on", 4.0, 1.0, 2.0)}
BUDGET_S = {"full": 300.0, "quick": 150.0}
CPU_TARGET = 1.2  # relay CPU with followers ÷ without
LAG_TARGET_MS = 200.0  # follower lag p99
RESPONSE_ID = re.compile(rb'"id"\s*:\s*"(resp_[^"]+)"')
COMPLETED = re.compile(rb'"response_id":"(resp_[^"]+)","output_text"')
CREATED_AT = re.compile(rb'"created_at":"([^"]+)"')


@dataclass(eq=False)
class LoopingCaller(common.Caller):
    """A caller that asks for the next response as soon as one is done, and notes when each
    response's `response.done` arrived."""

    index: int = 0
    done_at: dict[bytes, float] = field(default_factory=dict)
    stop: bool = False

    def on_frame(self, kind: bytes | None, data: bytes) -> None:
        super().on_frame(kind, data)
        if kind == common.DONE:
            match = RESPONSE_ID.search(data)
            if match:
                self.done_at[match.group(1)] = time.monotonic()
            if not self.stop:
                asyncio.get_running_loop().create_task(self.turn())

    async def turn(self) -> None:
        with contextlib.suppress(Exception):
            await self.send_turn(f"Hello from bench caller {self.index}.")


@dataclass(eq=False)
class StreamFollower:
    """A script on /api/v1/events: reads the stream, splits it into events, notes when each
    `request.status completed` arrived. Only those timed events (about one in six) are parsed,
    so the client process keeps up with 50 streams of ~1 000 events a second each and its own
    lag stays out of the figures."""

    events: int = 0
    completed_at: dict[bytes, float] = field(default_factory=dict)
    recorded_lag: list[tuple[float, float]] = field(default_factory=list)  # (recorded, lag)
    measuring: bool = False
    ended: str | None = None
    task: asyncio.Task | None = None
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, client: httpx.AsyncClient, url: str) -> None:
        buffer = b""
        try:
            async with client.stream("GET", url) as answer:
                if answer.status_code != 200:
                    self.ended = f"HTTP {answer.status_code}"
                    return
                self.opened.set()
                async for chunk in answer.aiter_raw():
                    now, wall = time.monotonic(), time.time()
                    buffer += chunk
                    *frames, buffer = buffer.split(b"\n\n")
                    for frame in frames:
                        if not frame.startswith(b"id:"):
                            continue
                        self.events += 1
                        if not self.measuring or b'"status":"completed"' not in frame:
                            continue
                        done, stamp = COMPLETED.search(frame), CREATED_AT.search(frame)
                        if done and stamp:
                            self.completed_at[done.group(1)] = now
                            recorded = datetime.fromisoformat(stamp.group(1).decode()).timestamp()
                            self.recorded_lag.append((recorded, wall - recorded))
            self.ended = "the server ended the stream"
        except Exception as exc:  # noqa: BLE001 - reported with the figures
            self.ended = f"{type(exc).__name__}: {exc}"
        finally:
            self.opened.set()


class Clients:
    def __init__(self, args) -> None:
        self.args = args
        self.callers: list[LoopingCaller] = []
        self.followers: list[StreamFollower] = []
        self.client = common.http_client(args.followers + 10, timeout=httpx.Timeout(10, read=None),
                                         headers={"Authorization": f"Bearer {args.token}"})
        self.groups = common.load_groups(args)

    async def attach(self, on: bool) -> None:
        if on and not self.followers:
            self.followers = [StreamFollower() for _ in range(self.args.followers)]
            for follower in self.followers:
                url = f"{self.args.base}/api/v1/events"
                follower.task = asyncio.create_task(follower.run(self.client, url))
            async with asyncio.timeout(15):
                await asyncio.gather(*(f.opened.wait() for f in self.followers))
        elif not on and self.followers:
            for follower in self.followers:
                follower.task.cancel()
            await asyncio.gather(*(f.task for f in self.followers), return_exceptions=True)
            self.followers = []

    async def window(self, index: int, on: bool) -> dict:
        dones = sum(c.dones for c in self.callers)
        events = [f.events for f in self.followers]
        for follower in self.followers:
            follower.measuring = True
            follower.completed_at.clear()
            follower.recorded_lag.clear()
        began, began_wall = time.monotonic(), time.time()
        measured = await common.measure_for(self.args.window, self.groups)
        ended, ended_wall = time.monotonic(), time.time()
        seconds, responses = measured["seconds"], sum(c.dones for c in self.callers) - dones
        per_follower = [(f.events - before) / seconds
                        for f, before in zip(self.followers, events, strict=True)]
        await asyncio.sleep(1.0)  # the events of the window's last responses arrive
        for follower in self.followers:
            follower.measuring = False
        # The lags of what happened in the window: responses done, events recorded.
        done_at = {rid: at for c in self.callers for rid, at in c.done_at.items()
                   if began <= at <= ended}
        lag = [at - done_at[rid] for f in self.followers
               for rid, at in f.completed_at.items() if rid in done_at]
        recorded = [lag for f in self.followers for at, lag in f.recorded_lag
                    if began_wall <= at <= ended_wall]
        return {
            **measured,
            "index": index,
            "followers": len(self.followers) if on else 0,
            "responses": responses,
            "responses_per_s": responses / seconds,
            "daphne_cpu_percent": 100 * measured["cpu_s"]["target"] / seconds,
            "events_per_s_per_follower": summary(per_follower, unit=1.0) if per_follower else None,
            "lag_done_ms": summary(lag) if lag else None,
            "lag_recorded_ms": summary(recorded) if recorded else None,
            "followers_ended": [f.ended for f in self.followers if f.ended],
        }

    async def close(self) -> None:
        await self.attach(False)
        for caller in self.callers:
            caller.stop = True
        await asyncio.gather(*(c.close() for c in self.callers), return_exceptions=True)
        await self.client.aclose()


async def main(args) -> dict:
    clients, url = Clients(args), common.realtime_url(args.base)
    try:
        clients.callers = await common.connect_all(
            args.sessions, lambda i: LoopingCaller.open(url, args.token, index=i))
        for caller in clients.callers:
            await caller.turn()
        await asyncio.sleep(args.warmup)
        windows = await common.alternate(args.schedule, clients.attach, clients.window, args.settle)
    finally:
        await clients.close()
    return {
        "sessions": len(clients.callers),
        "followers": args.followers,
        "windows": windows,
        "caller_errors": sum(len(c.errors) for c in clients.callers),
        "caller_error_samples": [e for c in clients.callers for e in c.errors][:5],
    }


async def run(bench: Bench, args) -> dict:
    schedule, window, settle, warmup = common.by_mode(PLAN, args)
    config = {"sessions": args.events_sessions or SESSIONS,
              "followers": args.events_followers or FOLLOWERS,
              "schedule": schedule, "window": window, "settle": settle, "warmup": warmup}
    result = await bench.app_with_clients("events", dict(config), common.by_mode(BUDGET_S, args),
                                          sim=(SIM_DELTAS, SIM_INTERVAL))
    return {**config, **result, **analyse(result["windows"])}


def analyse(windows: list[dict]) -> dict:
    counted = [w for w in windows if w["other_cpu_share"] <= common.NOISY_SHARE] or windows
    without, with_ = (common.cpu_side([w for w in counted if bool(w["followers"]) == on],
                                      "responses") for on in (False, True))
    # Per response: a saturated Daphne's CPU % cannot grow, it serves fewer responses instead.
    per = [side and side["cpu_s_per_1k"] for side in (with_, without)]
    lags = [w["lag_done_ms"] for w in counted if w.get("lag_done_ms")]
    return {
        "without": without,
        "with": with_,
        "cpu_ratio": per[0] / per[1] if all(per) else None,
        "lag_p99_ms": max((lag["p99"] for lag in lags), default=None),
    }


ABOUT = (
    "One Daphne process (DJANGO_DEBUG=false, SQLite, in-memory channel layer), whose CPU is "
    f"measured; the simulator in its own process ({SIM_DELTAS} deltas per response, "
    f"{SIM_INTERVAL * 1000:g} ms apart); one client process with {{sessions}} Realtime callers "
    "that loop (`conversation.item.create` + `response.create` → `response.done`, at once "
    "again), so every session streams at the simulator's pace, and, in the windows *with* "
    "followers, {followers} scripts on `GET /api/v1/events` (every session's events), each "
    "reading its stream. After {warmup:g} s of warm-up, windows of {window:g} s alternate "
    "without and with the followers at the same caller load (the event log is written in both: "
    "only following it differs). *done → follower* = the caller's `response.done` → that "
    "response's `request.status completed` at a follower (client clock for both: the whole "
    "path, history writer included); *recorded → follower* = the event's `created_at` (the "
    "history writer, just before its commit) → a follower (wall clock; one machine).\n"
)

def body(result: dict) -> list[str]:
    rows = []
    for w in result["windows"]:
        done, rec = w.get("lag_done_ms") or {}, w.get("lag_recorded_ms") or {}
        per = w.get("events_per_s_per_follower") or {}
        cpu = w["cpu_s"]
        rows.append([
            w["index"], w["followers"], fmt(w["responses_per_s"], 0), fmt(w["daphne_cpu_percent"]),
            fmt(per.get("p50"), 0),
            f"{fmt(done.get('p50'))} / {fmt(done.get('p99'))}",
            f"{fmt(rec.get('p50'))} / {fmt(rec.get('p99'))}",
            " / ".join([*(fmt(100 * cpu[k] / w["seconds"], 0) for k in ("simulator", "load")),
                        fmt(100 * w["other_cpu_share"], 0)]),
        ])
    columns = ["window", "followers", "responses/s", "Daphne CPU %", "events/s per follower",
               "done → follower p50 / p99 ms", "recorded → follower p50 / p99 ms",
               "simulator / clients / other CPU %"]
    ratio, lag = result.get("cpu_ratio"), result.get("lag_p99_ms")
    sides = [result.get("with") or {}, result.get("without") or {}]
    cpu_with, cpu_without = (fmt(side.get("cpu_percent")) for side in sides)
    per_with, per_without = (fmt(side.get("cpu_s_per_1k"), 2) for side in sides)
    targets = common.targets_table([
        [f"relay CPU with followers ≤ {CPU_TARGET}× without (per response)",
         f"{fmt(ratio, 3)}× ({per_with} vs {per_without} CPU-s per 1k responses; "
         f"{cpu_with} % vs {cpu_without} % of a core)",
         at_most(ratio, CPU_TARGET)],
        [f"follower lag p99 ≤ {LAG_TARGET_MS:g} ms",
         f"{fmt(lag)} ms (worst window, done → follower)",
         at_most(lag, LAG_TARGET_MS)],
    ])
    lines = common.errors_line("callers", result["caller_errors"], result["caller_error_samples"])
    lines += [f"- window {w['index']}: {len(w['followers_ended'])} follower(s) ended: "
              f"{w['followers_ended'][:2]}" for w in result["windows"] if w["followers_ended"]]
    lines += common.disturbed_windows(result["windows"])
    problems = common.problems_text(lines, result["logs"])
    return [ABOUT.format(**result), table(columns, rows, left=2), targets, problems]


if __name__ == "__main__":
    common.client_main(main)
