"""`python -m bench.run` (`make bench`): the relay against two floors, the REST nudge latency,
the dashboard fan-out and the two-process soak, each with its baseline measured in the same
run, written to bench/RESULTS.md.

    python -m bench.run                      # the full run, writes bench/RESULTS.md
    python -m bench.run --quick              # smoke run: C=10, short windows, a short soak
    python -m bench.run --only relay -c 100  # filters; partial runs write OUT/RESULTS-partial.md
    python -m bench.run --quick --out /tmp/b # raw results, logs and the report under /tmp/b

The parts are the modules in PARTS (and `--only` takes their names, or one of the relay
part's targets); what they share is in bench/common.py. Everything listens on 127.0.0.1
only; every process started here is terminated (then killed) on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import json
import platform
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench import attached, dashboard, events, fanout, nudge, relay, rotation, soak, voice
from bench.common import CORES, ROOT, Bench, failure, say

RESULTS = ROOT / "bench" / "RESULTS.md"  # only a full, unfiltered run writes it by default

PARTS = {"relay": relay, "voice": voice, "nudge": nudge, "fanout": fanout, "dashboard": dashboard,
         "events": events, "attached": attached, "rotation": rotation, "soak": soak}
TITLES = {"voice": "full-duplex voice (relay, floors, listen-in)",
          "nudge": "nudge latency (REST hook → upstream)", "fanout": "dashboard fan-out",
          "dashboard": "dashboard at 1 000 live sessions",
          "events": "event streams (SSE followers)",
          "attached": "attached calls (sideband: nudge latency, 200 calls, RSS)",
          "rotation": "upstream rotation (callers each moved once to a fresh upstream)",
          "soak": "soak (two Daphne processes, Redis, PostgreSQL)"}


def wanted(name: str, only: list[str]) -> bool:
    """Is the part asked for? The relay part runs for any of its targets."""
    return not only or name in only or (name == "relay" and bool(set(only) & set(relay.TARGETS)))


async def main(args: argparse.Namespace) -> int:
    started = time.monotonic()
    task = asyncio.current_task()  # SIGTERM and SIGINT cancel the run; `finally` stops everything
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, task.cancel)
    args.out.mkdir(parents=True, exist_ok=True)
    bench = Bench(out=args.out, workdir=Path(tempfile.mkdtemp(prefix="oc-bench-")), nice=args.nice)
    results: dict = {}
    try:
        for name, part in PARTS.items():
            if wanted(name, args.only):
                if name in TITLES:
                    say(TITLES[name])
                    await bench.quiet(10.0)
                results[name] = await run_part(part, bench, args)
    finally:
        await bench.stop_all()
        shutil.rmtree(bench.workdir, ignore_errors=True)
    results["meta"] = meta(args, time.monotonic() - started)
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    output = args.output or (RESULTS if args.full else args.out / "RESULTS-partial.md")
    Path(output).write_text(render(results))  # noqa: ASYNC240 - all done
    say(f"wrote {output} in {results['meta']['elapsed_s']:.0f} s")
    runs = (results.get("relay") or {}).get("runs", [])
    return 1 if any("failure" in r for r in runs + [results.get(n) or {} for n in PARTS]) else 0


async def run_part(part, bench: Bench, args) -> dict:
    try:
        result = await part.run(bench, args)
    except Exception as exc:  # noqa: BLE001 - reported; the other parts go on
        result = failure(exc)
    if "failure" in result:
        say(f"    FAILED: {result['failure']}")
    return result


def meta(args: argparse.Namespace, elapsed: float) -> dict:
    names = ["Django", "channels", "daphne", "Twisted", "autobahn", "websockets", "openai"]
    versions = []
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions.append(f"{name} {importlib.metadata.version(name)}")
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "elapsed_s": elapsed,
        "cores": CORES,
        "cpu": cpu_model(),
        "mem_gib": psutil.virtual_memory().total / 2**30,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": ", ".join(versions),
        **{key: getattr(args, key) for key in ("warmup", "window", "settle", "nice", "quick")},
    }


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def render(results: dict) -> str:
    m = results["meta"]
    quick = " (`--quick`: a smoke run, not figures to quote)" if m["quick"] else ""
    nice = f" Benchmark processes ran at niceness {m['nice']}." if m["nice"] else ""
    out = [
        "# Benchmarks\n",
        f"Generated by `python -m bench.run` (`make bench`) on {m['date']}, in "
        f"{m['elapsed_s']:.0f} s{quick}.\n",
        f"- Machine: {m['cores']} cores ({m['cpu']}), {m['mem_gib']:.0f} GiB RAM, {m['os']}; "
        f"Python {m['python']}.",
        f"- Packages: {m['versions']}.{nice}\n",
    ]
    out += [part.render(results.get(name)) for name, part in PARTS.items()]
    out.append("Raw results: `results.json`, and process logs in `logs/`, in the run's output "
               "directory (`--out`, `bench/out/` by default).")
    return "\n".join(out) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--quick", action="store_true", help="smoke run: C=10, short windows, short parts")
    add("--only", default="", help="comma-separated: " + ",".join({**relay.TARGETS, **PARTS}))
    add("--events-sessions", type=int, help="events part: streaming sessions (default 100)")
    add("--events-followers", type=int, help="events part: SSE followers (default 50)")
    add("--nudges", type=int, default=None, help="nudge part: sequential nudges (default 500)")
    add("-c", "--concurrency", default="", help="comma-separated C values (default 10,100,300)")
    add("--window", type=float, default=None, help="measurement window, s (default 10)")
    add("--warmup", type=float, default=None, help="warm-up, s (default 3)")
    add("--settle", type=float, default=1.5, help="idle time before sampling RSS, s")
    add("--no-profile", dest="profile", action="store_false")
    add("--profile-seconds", type=float, default=None, help="py-spy duration (default 6)")
    add("--nice", type=int, default=0, help="niceness of the benchmark's processes (-10 as root)")
    add("--soak-seconds", type=float, default=None, help="soak part: run length, s (default 300)")
    add("--soak-warmup", type=float, default=None, help="soak part: RSS warm-up, s (default 60)")
    add("--out", type=Path, default=ROOT / "bench" / "out", help="raw results and logs")
    add("--output", default=None, help="where to write the report")
    args = parser.parse_args(argv)
    known = {*relay.TARGETS, *PARTS}
    args.only = [k.strip() for k in args.only.split(",") if k.strip()]
    if set(args.only) - known:
        parser.error(f"--only takes {', '.join(sorted(known))}")
    args.concurrency = [int(c) for c in args.concurrency.split(",")] if args.concurrency else (
        [10] if args.quick else [10, 100, 300])
    if any(not 1 <= c <= 1000 for c in args.concurrency):
        parser.error("C must be in 1..1000")
    if args.nudges is not None and not 10 <= args.nudges <= 2000:
        parser.error("--nudges must be in 10..2000")
    args.window = args.window or (3.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 3.0)
    args.profile_seconds = args.profile_seconds or (2.0 if args.quick else 6.0)
    if not (0 < args.window <= 60 and 0 <= args.warmup <= 30 and 1 <= args.profile_seconds <= 30):
        parser.error("window ≤ 60 s, warm-up ≤ 30 s, profile 1..30 s")
    # Only a full, unfiltered run replaces bench/RESULTS.md by default.
    args.full = (not args.quick and not args.only and args.nudges is None
                 and args.concurrency == [10, 100, 300]
                 and args.events_sessions is None and args.events_followers is None)
    return args


if __name__ == "__main__":
    arguments = parse_args()
    try:
        sys.exit(asyncio.run(main(arguments)))
    except (asyncio.CancelledError, KeyboardInterrupt):
        say("interrupted; every process the benchmark started has been stopped")
        sys.exit(130)
