"""Load generator of the relay part: C concurrent Realtime callers against one target, in a
process of its own (run by bench/relay.py).

Each caller connects, waits for `session.created`, then loops (`common.run_caller`):
`conversation.item.create` + `response.create` → read to `response.done`. Phases: connect
all callers → settle (target RSS sampled) → warm-up (not counted) → the measurement window
(deltas, per-delta latency, CPU of the watched processes). Progress events and the result
are JSON lines on stdout.

    python -m bench.load --url 'ws://127.0.0.1:9001/v1/realtime?model=m' -c 100 \
        --target-pid 1234 --token TOKEN --watch simulator 1233
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import time

from bench.common import CpuWindow, ProcessGroup, Stats, emit, open_caller, run_caller, summary


async def open_callers(args: argparse.Namespace, stats: Stats) -> list:
    """Every caller's socket, connected in batches; a failed one is counted, not raised."""

    async def one():
        try:
            return (await open_caller(args.url, args.token, args.connect_timeout))[0]
        except Exception as exc:  # noqa: BLE001 - a failed caller is a figure, not a crash
            stats.error(f"connect: {type(exc).__name__}: {exc}")

    sockets = []
    for start in range(0, args.concurrency, args.connect_batch):
        size = min(args.connect_batch, args.concurrency - start)
        sockets += await asyncio.gather(*(one() for _ in range(size)))
    return [ws for ws in sockets if ws is not None]


async def prime(args: argparse.Namespace) -> None:
    """One session opened and closed first, so one-time costs (lazy imports, first client
    objects) are in the RSS baseline and not charged to the measured sessions."""
    with contextlib.suppress(Exception):
        ws, _ = await open_caller(args.url, args.token, args.connect_timeout)
        await ws.close()
    await asyncio.sleep(1.0)


async def main(args: argparse.Namespace) -> dict:
    stats = Stats()
    target = ProcessGroup(args.target_pid)
    groups = {"target": target, "load": ProcessGroup(os.getpid())}
    groups.update((name, ProcessGroup(pid)) for name, pid in args.watch)
    await prime(args)
    rss_before = target.rss()
    started = time.monotonic()
    live = await open_callers(args, stats)
    emit(event="connected", sessions=len(live), seconds=round(time.monotonic() - started, 2))
    await asyncio.sleep(args.settle)
    rss_idle = target.rss()
    connect_errors = stats.errors
    gc.collect()
    gc.freeze()
    tasks = [asyncio.create_task(run_caller(ws, i, stats)) for i, ws in enumerate(live)]
    await asyncio.sleep(args.warmup)
    window = CpuWindow(groups)
    stats.measuring = True
    emit(event="measure_start")
    await asyncio.sleep(args.window)
    stats.measuring = False
    measured = window.end()
    emit(event="measure_end")
    stats.stop = True
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            await asyncio.gather(*(ws.close() for ws in live), return_exceptions=True)
    rss = None
    if rss_before is not None and rss_idle is not None and live:
        rss = (rss_idle - rss_before) / len(live)
    return result(stats, measured, sessions=len(live), connect_errors=connect_errors, rss=rss)


def result(stats: Stats, measured: dict, *, sessions: int, connect_errors: int, rss) -> dict:
    seconds, target_cpu = measured["seconds"], measured["cpu_s"]["target"]
    return {
        "event": "result",
        "sessions": sessions,
        "window_seconds": seconds,
        "deltas": stats.deltas,
        "responses": stats.responses,
        "deltas_per_s": stats.deltas / seconds,
        "latency_ms": summary(stats.latencies_ns, unit=1e-6),
        "unstamped_deltas": stats.unstamped,
        "errors": stats.errors,
        "connect_errors": connect_errors,
        "error_samples": stats.error_samples,
        "cpu_seconds": measured["cpu_s"],
        "other_cpu_s": measured["other_cpu_s"],
        "other_cpu_share": measured["other_cpu_share"],
        "machine_cpu_percent": measured["machine_cpu_percent"],
        "target_cpu_s_per_1000_deltas": (
            target_cpu / stats.deltas * 1000 if target_cpu is not None and stats.deltas else None
        ),
        "rss_per_session_bytes": rss,
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Realtime load generator for the benchmark")
    parser.add_argument("--url", required=True, help="ws://host:port/v1/realtime?model=…")
    parser.add_argument("--token", default="")
    parser.add_argument("-c", "--concurrency", type=int, default=10)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--window", type=float, default=8.0)
    parser.add_argument("--settle", type=float, default=1.5)
    parser.add_argument("--connect-batch", type=int, default=25)
    parser.add_argument("--connect-timeout", type=float, default=30.0)
    parser.add_argument("--target-pid", type=int, required=True)
    parser.add_argument("--watch", nargs=2, action="append", default=[], metavar=("NAME", "PID"),
                        help="another process whose CPU to report")
    args = parser.parse_args(argv)
    args.watch = [(name, int(pid)) for name, pid in args.watch]
    if not (1 <= args.concurrency <= 2000):
        parser.error("concurrency must be in 1..2000")
    if not (0 < args.window <= 120 and 0 <= args.warmup <= 60):
        parser.error("window must be in (0, 120] s and warm-up in [0, 60] s")
    return args


if __name__ == "__main__":
    emit(**asyncio.run(main(parse_args())))
