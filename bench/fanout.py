"""The fan-out part: operator sockets on a busy relay, and what they cost it. The processes,
the windows and what is measured in them: ABOUT below (the report's text). The client process
is `python -m bench.fanout` (`main` below).

Windows of the same length alternate without and with the operator sockets (symmetric, so a
slow drift weighs on both sides alike), at the same caller load.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from typing import Any

from bench import common
from bench.common import Bench, at_most, fmt, summary, table

TITLE = "Dashboard fan-out"
CALLERS = 100
WATCHERS = 20
DASHBOARDS = 10
SIM_DELTAS = 20
SIM_INTERVAL = 0.02  # s between deltas: 50 deltas/s per session
USER_PREFIX = "bench-op-"
# (schedule, window s, settle s before each window, warm-up s), full and --quick.
PLAN = {"full": ("off,on,off,on,off", 16.0, 3.0, 5.0), "quick": ("off,on", 4.0, 1.0, 2.0)}
BUDGET_S = {"full": 240.0, "quick": 120.0}  # the whole part, logins included
CPU_TARGET = 1.25  # Daphne CPU with the operator sockets ÷ without
TRANSCRIPT_PER_S = 20  # at most ~20 transcript updates a second per session per socket
FEED_PER_S = 1  # the dashboard feed: at most one update a second


def max_in_one_second(times: list[float]) -> int:
    """The most messages in any 1 s interval (sliding)."""
    best, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] > 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


def socket_window(op: common.OperatorSocket, t0: float, t1: float) -> dict:
    """What one operator socket received in the window [t0, t1)."""
    frames = [f for f in op.frames if t0 <= f[0] < t1]
    seconds = t1 - t0
    main = "transcript" if op.kind == "watcher" else "sessions"
    times = [at for at, kind, _ in frames if kind == main]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    by_type: dict[str, float] = {}
    for _, kind, _ in frames:
        by_type[kind] = by_type.get(kind, 0) + 1 / seconds
    return {
        "kind": op.kind,
        "frames_per_s": len(frames) / seconds,
        "bytes_per_s": sum(size for _, _, size in frames) / seconds,
        "by_type_per_s": by_type,
        "main_per_s": len(times) / seconds,
        "main_max_in_1s": max_in_one_second(times),
        "main_gap_ms_min": min(gaps) * 1000 if gaps else None,
        "main_gap_ms_median": statistics.median(gaps) * 1000 if gaps else None,
        "closed": op.closed,
    }


class Clients:
    """The client process's callers and operator sockets, and its measurement windows."""

    def __init__(self, args) -> None:
        self.args = args
        self.stats = common.Stats()
        self.callers: list[tuple[Any, str]] = []
        self.operators: list[common.OperatorSocket] = []
        self.all_operators: list[common.OperatorSocket] = []
        self.cookies: list[str] = []
        self.groups = common.load_groups(args)

    async def attach(self, with_dashboards: bool) -> None:
        """Connect the operator sockets (all at once) or close them."""
        if with_dashboards and not self.operators:
            watch = {"type": "watch.session", "session_id": self.callers[0][1]}
            feed = {"type": "watch.sessions"}
            self.operators = [
                common.OperatorSocket(cookie, "watcher" if i < WATCHERS else "dashboard")
                for i, cookie in enumerate(self.cookies)
            ]
            self.all_operators += self.operators
            await asyncio.gather(*(op.open(self.args.base, watch if op.kind == "watcher" else feed)
                                   for op in self.operators))
        elif not with_dashboards and self.operators:
            await asyncio.gather(*(op.close() for op in self.operators))
            self.operators = []

    async def window(self, index: int, with_dashboards: bool) -> dict:
        stats = self.stats
        deltas, lat, started = stats.deltas, len(stats.latencies_ns), time.monotonic()
        measured = await common.measure_for(self.args.window, self.groups, stats)
        seconds, daphne, n = measured["seconds"], measured["cpu_s"]["target"], stats.deltas - deltas
        return {
            **measured,
            "index": index,
            "dashboards": with_dashboards,
            "deltas": n,
            "deltas_per_s": n / seconds,
            "latency_ms": summary(stats.latencies_ns[lat:], unit=1e-6),
            "daphne_cpu_percent": 100 * daphne / seconds,
            "daphne_cpu_s_per_1k_deltas": daphne / n * 1000 if n else None,
            "sockets": [socket_window(op, started, started + seconds) for op in self.operators],
        }

    async def close(self, tasks: list[asyncio.Task]) -> None:
        await asyncio.gather(*(op.close() for op in self.operators))
        self.stats.stop = True
        await common.cancel_all(tasks)
        await common.close_sockets(ws for ws, _ in self.callers)


async def main(args) -> dict:
    clients, url = Clients(args), common.realtime_url(args.base)
    # Operators log in first: the password hash is the costly part, outside every window.
    clients.cookies = await common.log_in_operators(args.base, USER_PREFIX, WATCHERS + DASHBOARDS)
    clients.callers = await common.connect_all(
        CALLERS, lambda _: common.open_caller(url, args.token), clients.stats)
    gc.collect()
    gc.freeze()
    tasks = [asyncio.create_task(common.run_caller(ws, i, clients.stats))
             for i, (ws, _) in enumerate(clients.callers)]
    try:
        await asyncio.sleep(args.warmup)
        windows = await common.alternate(args.schedule, clients.attach, clients.window, args.settle,
                                  retry=True)
    finally:
        await clients.close(tasks)
    ops, stats = clients.all_operators, clients.stats
    return {
        "callers": len(clients.callers),
        "windows": windows,
        "caller_errors": stats.errors, "caller_error_samples": stats.error_samples,
        "operator_errors": sum(len(op.errors) for op in ops),
        "operator_error_samples": [e for op in ops for e in op.errors][:5],
        "dashboard_sessions_listed": [op.first.get("live", 0) for op in ops
                                      if op.kind == "dashboard" and isinstance(op.first, dict)],
    }


async def run(bench: Bench, args) -> dict:
    """The simulator and a fresh Daphne on a fresh SQLite file (migrated; an API token; the
    operators' accounts), the client process, everything stopped; the result."""
    schedule, window, settle, warmup = common.by_mode(PLAN, args)
    config = {"schedule": schedule, "window": window, "settle": settle, "warmup": warmup}
    result = await bench.app_with_clients(
        "fanout", dict(config), common.by_mode(BUDGET_S, args), sim=(SIM_DELTAS, SIM_INTERVAL),
        seed=common.operators_code(USER_PREFIX, WATCHERS + DASHBOARDS),
    )
    return {**result, **analyse(result["windows"]), **config}


def analyse(windows: list[dict]) -> dict:
    """Both sides (without / with the operator sockets) over their windows, the ratio, and the
    operator sockets' figures over the windows with them. Repeated windows are left out."""
    counted = [w for w in windows if not w.get("repeated")]
    without, with_ = (common.cpu_side([w for w in counted if w["dashboards"] == on], "deltas")
                      for on in (False, True))
    out: dict[str, Any] = {"without": without, "with": with_, "cpu_ratio": None,
                           "cpu_per_delta_ratio": None}
    if without and with_:
        out["cpu_ratio"] = with_["cpu_percent"] / without["cpu_percent"]
        per_delta = [s["cpu_s_per_1k"] for s in (with_, without)]
        if all(per_delta):
            out["cpu_per_delta_ratio"] = per_delta[0] / per_delta[1]
    rows = [s for w in counted if w["dashboards"] for s in w["sockets"]]
    kinds = [kind for kind in ("watcher", "dashboard") if any(r["kind"] == kind for r in rows)]
    out["sockets"] = {kind: sockets([r for r in rows if r["kind"] == kind]) for kind in kinds}
    return out


def sockets(rows: list[dict]) -> dict:
    """One kind of operator socket, each socket in each window one sample."""
    def spread(key: str, scale: float = 1.0) -> dict:
        values = [r[key] * scale for r in rows]
        return {"min": min(values), "median": statistics.median(values), "max": max(values)}

    types: dict[str, float] = {}
    for row in rows:
        for name, rate in row["by_type_per_s"].items():
            types[name] = types.get(name, 0.0) + rate / len(rows)
    gaps = [r["main_gap_ms_min"] for r in rows if r["main_gap_ms_min"] is not None]
    medians = [r["main_gap_ms_median"] for r in rows if r["main_gap_ms_median"] is not None]
    return {
        "samples": len(rows),
        "frames_per_s": spread("frames_per_s"),
        "main_per_s": spread("main_per_s"),
        "kib_per_s": spread("bytes_per_s", 1 / 1024),
        "main_max_in_1s": max(r["main_max_in_1s"] for r in rows),
        "main_gap_ms_min": min(gaps) if gaps else None,
        "main_gap_ms_median": statistics.median(medians) if medians else None,
        "by_type_per_s": dict(sorted(types.items(), key=lambda kv: -kv[1])),
        "closed": sum(1 for r in rows if r["closed"]),
    }


ABOUT = (
    "One Daphne process (`daphne operator_console.asgi:application`, DJANGO_DEBUG=false, "
    "in-memory channel layer, SQLite in a bench-private file); the simulator in its own process "
    f"(`manage.py simulate_upstream`, {SIM_DELTAS} deltas per response, "
    f"{SIM_INTERVAL * 1000:g} ms apart); one client process (`bench/fanout.py`) with "
    "{callers} Realtime callers, each looping `conversation.item.create` + `response.create` → "
    f"read to `response.done`, so every session streams about {1 / SIM_INTERVAL:g} deltas/s; "
    f"and, in the windows *with* dashboards, {WATCHERS} operator sockets on `/ws/console/` "
    f"watching one of those sessions (`watch.session`) and {DASHBOARDS} on the dashboard feed "
    "(`watch.sessions`), each logged in as its own operator through the login form, each "
    "JSON-parsing every frame. After {warmup:g} s of warm-up, {n} windows of {window:g} s "
    "alternate without and with the operator sockets at the same caller load; before each, the "
    "sockets are connected (and have their first message) or closed, then {settle:g} s pass. "
    "*Daphne CPU %* = user + system CPU of the Daphne process ÷ window time (100 % = one "
    "core); *caller delta p50/p99* = simulator send stamp → caller receive; *other* = CPU used "
    "meanwhile by everything else on the machine.\n"
)
OPERATORS = f"{WATCHERS} + {DASHBOARDS}"
LABELS = {
    "watcher": "session watcher (`watch.session`)",
    "dashboard": "dashboard (`watch.sessions`)",
}


def body(result: dict) -> list[str]:
    rows = []
    for x in result["windows"]:
        cpu = {k: fmt(100 * v / x["seconds"], 0) for k, v in x["cpu_s"].items()}
        other = fmt(100 * x["other_cpu_s"] / x["seconds"], 0)
        mark = " (disturbed: measured again, not counted)" if x.get("repeated") else ""
        rows.append([
            f"{x['index']}{mark}", OPERATORS if x["dashboards"] else "none",
            fmt(x["deltas_per_s"], 0),
            f"{fmt(x['latency_ms']['p50'], 2)} / {fmt(x['latency_ms']['p99'], 2)}",
            fmt(x["daphne_cpu_percent"]), fmt(x["daphne_cpu_s_per_1k_deltas"], 4),
            f"{cpu['simulator']} / {cpu['load']} / {other}",
        ])
    columns = ["window", "operator sockets", "deltas/s", "caller delta p50 / p99 ms",
               "Daphne CPU %", "Daphne CPU-s / 1k deltas", "simulator / clients / other CPU %"]
    about = ABOUT.format(n=len(result["windows"]), **result)
    return [about, table(columns, rows, left=2), sides(result), socket_table(result),
            targets(result), problems(result)]


def sides(result: dict) -> str:
    without, with_ = result["without"], result["with"]
    if not (without and with_):
        return ""
    rows = []
    for label, s in (("none", without), (OPERATORS, with_)):
        low, high = s["cpu_percent_range"]
        cpu = f"{fmt(s['cpu_percent'])} ({fmt(low)}–{fmt(high)})"
        rows.append([label, s["windows"], cpu,
                     fmt(s["cpu_s_per_1k"], 4), fmt(s["per_s"], 0)])
    rows.append(["**with ÷ without**", "", f"**{fmt(result['cpu_ratio'], 3)}×**",
                 f"{fmt(result['cpu_per_delta_ratio'], 3)}×", ""])
    columns = ["operator sockets", "windows", "Daphne CPU % (range over windows)",
               "CPU-s / 1k deltas", "deltas/s"]
    return table(columns, rows)


def socket_table(result: dict) -> str:
    if not result["sockets"]:
        return ""
    rows = []
    for kind, s in result["sockets"].items():
        fr, up = s["frames_per_s"], s["main_per_s"]
        rows.append([
            LABELS[kind], s["samples"], " / ".join(fmt(fr[k]) for k in ("min", "median", "max")),
            " / ".join(fmt(up[k]) for k in ("min", "median", "max")), s["main_max_in_1s"],
            f"{fmt(s['main_gap_ms_min'])} / {fmt(s['main_gap_ms_median'])}",
            fmt(s["kib_per_s"]["median"]),
            ", ".join(f"`{k}` {v:.2f}" for k, v in s["by_type_per_s"].items()),
        ])
    columns = ["socket", "samples", "frames/s min / median / max", "updates/s min / median / max",
               "most updates in any 1 s", "update gap min / median ms", "KiB/s median",
               "frames/s by type (mean)"]
    text = ("Frames delivered per operator socket over the windows with them (each socket in each "
            "window is one sample; *updates* = `transcript` messages for a watcher, "
            "`sessions`, a page, for a dashboard):\n\n" + table(columns, rows))
    if listed := result["dashboard_sessions_listed"]:
        text += (f"\nEach dashboard's first `sessions` message listed {min(listed)}–"
                 f"{max(listed)} live sessions (callers: {result['callers']}).\n")
    return text


def targets(result: dict) -> str:
    ratio, kinds = result["cpu_ratio"], result["sockets"]
    measured = "–"
    if ratio is not None:
        measured = (f"{fmt(ratio, 3)}× ({fmt(result['with']['cpu_percent'])} % vs "
                    f"{fmt(result['without']['cpu_percent'])} % of a core; per delta "
                    f"{fmt(result['cpu_per_delta_ratio'], 3)}×)")
    rows = [[f"attaching the dashboards costs ≤ {100 * (CPU_TARGET - 1):.0f}% more relay CPU",
             measured, at_most(ratio, CPU_TARGET)]]
    limits = (
        ("watcher", TRANSCRIPT_PER_S, f"≤ ~{TRANSCRIPT_PER_S} transcript updates a second"),
        ("dashboard", FEED_PER_S, f"dashboard feed: at most {FEED_PER_S} update a second"),
    )
    for kind, limit, what in limits:
        if kind in kinds:
            most, median = kinds[kind]["main_max_in_1s"], kinds[kind]["main_per_s"]["median"]
            measured = f"at most {most} in any 1 s (median {fmt(median, 2)}/s)"
            rows.append([what, measured, at_most(most, limit + 1)])
    return common.targets_table(rows)


def problems(result: dict) -> str:
    lines = [line for who in ("caller", "operator") for line in common.errors_line(
        f"{who}s", result[f"{who}_errors"], result[f"{who}_error_samples"])]
    lines += [f"- {s['closed']} {kind} socket(s) closed during a window"
              for kind, s in result["sockets"].items() if s["closed"]]
    lines += common.disturbed_windows(result["windows"], lambda w: " meanwhile " + (
        "(measured again)" if w.get("repeated") else "(counted)"))
    if result.get("daphne_exited") is not None:
        lines.append(f"- Daphne exited with {result['daphne_exited']} during the run")
    return common.problems_text(lines, result["logs"])


if __name__ == "__main__":
    common.client_main(main)
