"""Load generator of the relay part: C concurrent Realtime callers against one target, in a
process of its own (run by bench/relay.py).

Each caller connects, waits for `session.created`, then loops (`common.run_caller`):
`conversation.item.create` + `response.create` → read to `response.done`. Phases: connect
all callers → settle (target RSS sampled) → warm-up (not counted) → the measurement window
(deltas, per-delta latency, CPU of the watched processes). Progress events and the result
are JSON lines on stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import time

from bench.common import (
    CpuWindow,
    ProcessGroup,
    Stats,
    client_main,
    emit,
    in_batches,
    open_caller,
    realtime_url,
    run_caller,
    summary,
)


async def open_callers(args, stats: Stats) -> list:
    """Every caller's socket, connected in batches; a failed one is counted, not raised."""

    async def one(_):
        try:
            return (await open_caller(realtime_url(args.base), args.token))[0]
        except Exception as exc:  # noqa: BLE001 - a failed caller is a figure, not a crash
            stats.error(f"connect: {type(exc).__name__}: {exc}")

    return await in_batches(args.concurrency, one)


async def prime(args) -> None:
    """One session opened and closed first, so one-time costs (lazy imports, first client
    objects) are in the RSS baseline and not charged to the measured sessions."""
    with contextlib.suppress(Exception):
        ws, _ = await open_caller(realtime_url(args.base), args.token)
        await ws.close()
    await asyncio.sleep(1.0)


async def main(args) -> dict:
    stats = Stats()
    target = ProcessGroup(args.target_pid)
    groups = {"target": target, "load": ProcessGroup(os.getpid())}
    groups.update((name, ProcessGroup(pid)) for name, pid in args.watch.items())
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


if __name__ == "__main__":
    client_main(main)
