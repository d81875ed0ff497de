"""The relay part: CPU per relayed delta, per-delta latency and RSS per session of the relay
against two floors measured in the same run, a websockets-only relay
(`bench/floor_websockets.py`) and a minimal Channels relay (`bench/floor_channels.py`); then
a py-spy profile of the relay. The set-up and what each figure means: `intro`, ABOUT and
COLUMNS below (the report's text); the load generator is `main` (`python -m bench.relay`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import os
import re
import shutil
from functools import partial
from pathlib import Path

from bench import common
from bench.common import Bench, at_most, fmt, say, summary, table

TITLE = "Relay against two floors"
SIM_DELTAS = 20
SIM_INTERVAL = 0.01
CPU_RATIO_TARGET = 1.3  # relay CPU per delta ÷ the Channels floor's
P99_TARGET_MS = 10.0
P99_TARGET_C = 100
RSS_TARGET_KIB = 150.0
PROFILE_RATE = 200  # py-spy samples a second
CPU_KEY = "target_cpu_s_per_1000_deltas"


async def run(bench: Bench, args) -> dict:
    """Every target (or those of `--only`) at every C of `args.concurrency`, then the profile."""
    keys = [k for k in common.TARGETS if not args.only or k in args.only]
    sim, url = await bench.simulator("simulator", "--deltas", SIM_DELTAS,
                                     "--interval", SIM_INTERVAL)
    env = bench.env(OC_UPSTREAM_URL=url, BENCH_UPSTREAM_URL=url)
    token = await bench.migrate_with_token("bench", env) if "relay" in keys else ""
    plan = {key: getattr(args, key) for key in ("warmup", "window", "settle")}
    load = {**plan, "token": token, "watch": {"simulator": sim.pid}}  # `main`'s settings
    runs, profile = [], None
    for key in keys:
        for c in args.concurrency:
            say(f"{common.TARGETS[key]}, C={c}")
            measure = partial(with_target, bench, env, {**load, "concurrency": c}, key, f"c{c}")
            result = await bench.measured_twice(measure)  # again once when disturbed
            runs.append({**result, "target": key, "concurrency": c})
            await asyncio.sleep(1.0)
    if args.profile and "relay" in keys:
        c = min(args.concurrency) if args.quick else 100
        profile = await run_profile(bench, args, env, {**load, "concurrency": c})
    await bench.stop(sim)
    return {"runs": runs, "profile": profile, **plan}


async def with_target(bench: Bench, env: dict, load: dict, key: str, tag: str,
                      on_start=None) -> dict:
    """A fresh target process, `load["concurrency"]` callers (`main`, its settings `load`)
    against it, the target stopped. `on_start(pid)` runs beside the measurement window."""
    budget = 60 + load["settle"] + load["warmup"] + load["window"] + load["concurrency"] / 10
    return await bench.against_target(key, f"{key}-{tag}", env, "relay", load, budget, on_start)


async def main(args) -> dict:
    """The load generator (`python -m bench.relay CONFIG`): C callers against the target, each
    looping (`common.run_caller`). Phases: connect all → settle (target RSS sampled) → warm-up
    (not counted) → the window (deltas, per-delta latency, CPU of the watched processes)."""
    stats, groups, url = common.Stats(), common.load_groups(args), common.realtime_url(args.base)
    # One session opened and closed first, so one-time costs (lazy imports, first client
    # objects) are in the RSS baseline and not charged to the measured sessions.
    with contextlib.suppress(Exception):
        ws, _ = await common.open_caller(url, args.token)
        await ws.close()
    await asyncio.sleep(1.0)
    rss_before = groups["target"].rss()
    live = await common.connect_all(
        args.concurrency, lambda _: common.open_caller(url, args.token), stats)
    await asyncio.sleep(args.settle)
    rss_idle = groups["target"].rss()
    gc.collect()
    gc.freeze()
    tasks = [asyncio.create_task(common.run_caller(ws, i, stats)) for i, (ws, _) in enumerate(live)]
    await asyncio.sleep(args.warmup)
    measured = await common.measure_for(args.window, groups, stats)
    stats.stop = True
    await common.cancel_all(tasks)
    await common.close_sockets(ws for ws, _ in live)
    target_cpu, deltas = measured["cpu_s"]["target"], stats.deltas
    return {
        **measured,
        "sessions": len(live),
        "deltas_per_s": deltas / measured["seconds"],
        "latency_ms": summary(stats.latencies_ns, unit=1e-6),
        "unstamped_deltas": stats.unstamped,
        "errors": stats.errors, "error_samples": stats.error_samples,
        CPU_KEY: target_cpu / deltas * 1000 if target_cpu is not None and deltas else None,
        "rss_per_session_bytes": None if rss_before is None or rss_idle is None else (
            (rss_idle - rss_before) / len(live)),
    }


async def run_profile(bench: Bench, args, env: dict, load: dict) -> dict:
    """py-spy on the relay during a load run of its own: two consecutive recordings, threads
    holding the GIL (Python CPU), then every non-idle thread (adds time in the database,
    socket writes and waits for the GIL)."""
    c = load["concurrency"]
    say(f"profiling the relay at C={c} for 2 × {args.profile_seconds:g} s")
    await bench.quiet(30.0)
    raws = {mode: bench.out / f"profile-relay-c{c}-{mode}.txt" for mode in ("gil", "active")}
    errors: list[str] = []

    async def record(pid: int) -> None:
        for mode, raw in raws.items():
            if error := await py_spy_record(bench, pid, args.profile_seconds, raw,
                                            gil=mode == "gil"):
                errors.append(error)
                return

    config = {**load, "window": 2 * args.profile_seconds + 3}
    try:
        measured = await with_target(bench, env, config, "relay", "profile", on_start=record)
    except Exception as exc:  # noqa: BLE001 - reported
        errors.append(f"{type(exc).__name__}: {exc}")
    if errors:
        say(f"    profile failed: {errors[0]}")
        return {"error": errors[0]}
    profile = {mode: summarise_profile(raw) for mode, raw in raws.items()}
    return {"seconds": args.profile_seconds, "concurrency": c, "load": measured, **profile}


async def py_spy_record(bench: Bench, pid: int, seconds: float, output: Path, *,
                        gil: bool) -> str | None:
    """Sample the process with py-spy (all threads); None on success, else why it failed."""
    exe = shutil.which("py-spy", path=str(common.BIN)) or shutil.which("py-spy")
    if exe is None:
        return "py-spy is not installed (.venv/bin/pip install py-spy)"
    output.unlink(missing_ok=True)  # noqa: ASYNC240 - local
    argv = [exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate",
            str(PROFILE_RATE), "--format", "raw", "--threads", "--output", str(output)]
    try:
        await bench.run_command(argv + ["--gil"] * gil, dict(os.environ), seconds + 30)
    except RuntimeError as exc:
        return f"py-spy: {str(exc)[-500:]}"
    return None if output.exists() else "py-spy wrote no profile"  # noqa: ASYNC240 - local


_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def summarise_profile(raw: Path, top: int = 20) -> dict:
    """Samples per thread and self time per function, from py-spy's raw (collapsed) output."""
    self_fn, threads, total = collections.Counter(), collections.Counter(), 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n, frames = int(count), stack.split(";")
        total += n
        if frames[0].startswith("thread ("):
            threads[re.sub(r"_\d+$", "", frames.pop(0).split(": ", 1)[-1])] += n
        if frames and (m := _FRAME.match(frames[-1])):
            self_fn[f"{m['func']} ({m['file'] or '?'})"] += n  # py-spy shortens file names
        elif frames:
            self_fn[f"{frames[-1]} (?)"] += n
    return {"samples": total, "threads": threads.most_common(),
            "self_functions": self_fn.most_common(top)}


ABOUT = """### What the relay does that the floors do not

Every frame, both ways, has its event type read from its first bytes; a frame the relay need
not act on is forwarded unparsed. Parsed: the caller's `response.create` (it enters the
sequencer; refused ones get an `error` back) and any frame whose type cannot be read that way;
from the upstream, `session.*`, `response.created`, `response.done`, `error` and items with
transcript text (the first two re-serialised without the relay's `oc_request` tag). Each frame
is an input of the session's relay core and passes through its actor's mailbox (one extra task
hop versus a pump). Per response: a request row and its transitions written by the history
writer's thread, the sequencer's bookkeeping, a timer for the send timeout. The Channels floor
is a stock `AsyncWebsocketConsumer` that pumps frames both ways: no auth, no database, no
parsing, no channel layer.
"""
COLUMNS = """Columns: *deltas/s* received by all callers in the window; *p50/p99* per-delta
latency = caller receive `time.time_ns()` − the simulator's send stamp in `event_id`
(simulator → target → caller); *CPU/1k* = target-process user+system CPU seconds per 1000
deltas received; *RSS/session* = (target RSS with C sessions connected and idle, after a
{settle:g} s settle − RSS before any session) / C, the baseline taken after one priming session
was opened and closed; *target CPU %* = of one core; *sim / load / other CPU-s* = CPU seconds
in the window of the simulator, the load generator, and everything else on the machine;
*machine CPU* = all cores busy % in the window.
"""


def ok(run: dict | None) -> bool:
    return common.ok_run(run, CPU_KEY)


def body(result: dict) -> list[str]:
    runs = result["runs"]
    by, cs, per = common.per_c(runs, common.TARGETS, c_table, ratios)
    out = [intro(result), ABOUT, COLUMNS.format(settle=result["settle"]), *per]
    clean = ("no caller saw an `error` event or a failed connect, and no target logged a "
             "warning, error or traceback.")
    out += [targets(by, cs), "### Errors, log lines, disturbed runs\n",
            common.runs_problems(runs, common.TARGETS, problems, clean)]
    return out + render_profile(result["profile"])


def intro(r: dict) -> str:
    return (
        f"- Upstream: `manage.py simulate_upstream`, {SIM_DELTAS} deltas per response, "
        f"{SIM_INTERVAL * 1000:.0f} ms apart, one process for the whole part.\n"
        "- Per target and C: a fresh target process; C callers in one load-generator process "
        f"(`python -m bench.relay`); {r['warmup']:g} s warm-up (not counted), then a "
        f"{r['window']:g} s window. Each caller loops `conversation.item.create` + "
        "`response.create` → read to `response.done`.\n"
        f"- **Simulator, target and load generator share the same {common.CORES} cores.** When the "
        "machine is saturated (the `machine CPU` column), deltas/s shows the ceiling of the "
        "whole set-up and latency includes queueing in every process. The figures are as "
        "measured.\n"
        "- Before each measurement the run waits (≤ 30 s, ≤ 120 s in all) for the machine to "
        "be nearly idle, and measures once more when other processes took more than "
        f"{100 * common.NOISY_SHARE:.0f}% of the machine in the window; what remains is listed "
        "under *disturbed runs* below.\n"
    )


def c_table(runs: list[dict]) -> str:
    def cells(r: dict) -> list:
        cpu, rss = r["cpu_s"], r["rss_per_session_bytes"]
        return [r["sessions"], fmt(r["deltas_per_s"], 0), fmt(r["latency_ms"]["p50"], 2),
                fmt(r["latency_ms"]["p99"], 2), fmt(r[CPU_KEY], 4), fmt(rss and rss / 1024),
                r["errors"], fmt(cpu["target"] and 100 * cpu["target"] / r["seconds"], 0),
                f"{fmt(cpu['simulator'])} / {fmt(cpu['load'])} / {fmt(r['other_cpu_s'])}",
                fmt(r["machine_cpu_percent"], 0)]

    columns = ["target", "sessions", "deltas/s", "p50 ms", "p99 ms", "CPU-s / 1k deltas",
               "RSS / session KiB", "errors", "target CPU %", "sim / load / other CPU-s",
               "machine CPU %"]
    return common.runs_table(runs, common.TARGETS, columns, cells)


def ratios(by: dict, c: int) -> str:
    return common.ratios_text(by, c, CPU_KEY, [
        ("relay", "channels", "relay / Channels floor CPU per delta = **{:.2f}×**", None),
        ("relay", "websockets", "relay / websockets floor = {:.2f}×", None),
        ("channels", "websockets", "Channels floor / websockets floor = {:.2f}×", None),
    ])


def targets(by: dict, cs: list[int]) -> str:
    rows = []
    for c in cs:
        relay, chan = by.get(("relay", c)), by.get(("channels", c))
        if (r := common.run_ratio(relay, chan, CPU_KEY)) is not None:
            measured = f"{r:.2f}× ({relay[CPU_KEY]:.4f} vs {chan[CPU_KEY]:.4f} CPU-s/1k)"
            what = f"relay CPU per delta ≤ {CPU_RATIO_TARGET}× Channels floor"
            rows.append([what, c, measured, at_most(r, CPU_RATIO_TARGET)])
    at = {k: by[k, P99_TARGET_C] for k in common.TARGETS if ok(by.get((k, P99_TARGET_C)))}
    p99 = {k: r["latency_ms"]["p99"] for k, r in at.items()}
    floors = ", ".join(f"{common.TARGETS[k]} {p99[k]:.2f} ms" for k in ("websockets", "channels")
                       if k in p99)
    relay_p99 = f"{p99['relay']:.2f} ms" if "relay" in p99 else "–"
    rows.append([f"relay p99 latency ≤ {P99_TARGET_MS:g} ms", P99_TARGET_C,
                 relay_p99 + (f" (floors: {floors})" if floors else ""),
                 at_most(p99.get("relay"), P99_TARGET_MS)])
    for c in cs:
        if ok(relay := by.get(("relay", c))) and relay["rss_per_session_bytes"] is not None:
            kib = relay["rss_per_session_bytes"] / 1024
            rows.append([f"relay RSS per live session ≤ {RSS_TARGET_KIB:g} KiB", c,
                         f"{kib:.1f} KiB", at_most(kib, RSS_TARGET_KIB)])
    return (
        common.targets_table(rows, "### Targets", ("C", "measured"), left=1)
        + "\nRSS per session at C=10 rests on a difference of a few hundred KiB and is the "
        "noisiest; C=100 and C=300 are the telling ones.\n"
    )


def problems(label: str, r: dict) -> list[str]:
    if not (r["errors"] or r["unstamped_deltas"]):
        return []
    return [f"- {label}: {r['errors']} error(s) seen by callers, {r['unstamped_deltas']} "
            f"unstamped deltas; e.g. {common.examples(r['error_samples'])}"]


def render_profile(profile: dict | None) -> list[str]:
    c = (profile or {}).get("concurrency", 100)
    out = [f"### Profile: relay at C={c}\n"]
    if profile is None:
        return [*out, "Not run (filtered out or `--no-profile`).\n"]
    if "error" in profile:
        return [*out, f"Profiling failed: {profile['error']}\n"]
    g, a, secs, load = profile["gil"], profile["active"], profile["seconds"], profile["load"]
    out.append(
        f"py-spy on the relay's Daphne process during a separate C={c} load run (py-spy pauses "
        f"the process to sample, so that run's figures are not in the tables; it ran at "
        f"{fmt(load['deltas_per_s'], 0)} deltas/s, {fmt(load[CPU_KEY], 4)} CPU-s/1k deltas). "
        f"Two consecutive {secs:g} s recordings at {PROFILE_RATE} Hz, all threads: `--gil` (the "
        f"thread holding the GIL: where Python CPU goes; {g['samples']:,} samples) and default "
        f"(every thread not idle; {a['samples']:,} samples). Raw stacks: "
        f"`profile-relay-c{c}-gil.txt` and `…-active.txt` in the run's output directory.\n"
    )
    gil, active, possible = dict(g["threads"]), dict(a["threads"]), PROFILE_RATE * secs
    names = sorted(set(gil) | set(active), key=lambda k: -active.get(k, 0))
    rows = [[f"`{n}`", f"{100 * gil.get(n, 0) / possible:.0f}",
             f"{100 * active.get(n, 0) / possible:.0f}"] for n in names]
    out.append("Share of wall time per thread (100 % = the thread busy for the whole recording):\n")
    out.append(table(["thread", "holding the GIL %", "not idle %"], rows))
    total = g["samples"] or 1
    rows = [[f"`{name}`", f"{100 * n / total:.1f}"] for name, n in g["self_functions"]]
    out.append("Top self-time functions, holding the GIL (% of that recording's samples):\n")
    return [*out, table(["function (package / file)", "self %"], rows)]


if __name__ == "__main__":
    common.client_main(main)
