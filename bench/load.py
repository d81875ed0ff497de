"""Load generator: C concurrent Realtime callers against one target, in its own process.

Each caller connects (with the auth header), waits for `session.created`, then loops for the
run: send `conversation.item.create` (a user text message) and `response.create`, read until
`response.done`. Frames are not JSON-parsed: the event type and the simulator's send stamp
(`event_id` = `event_<counter>_<time_ns at send>`) are read from the raw bytes with regexes.

Phases: connect all callers → settle (target RSS sampled) → stream: warm-up (not counted),
then the measurement window (deltas, per-delta latency, CPU of the watched processes).
Progress lines and the final result are JSON objects, one per line, on stdout.

    python -m bench.load --url 'ws://127.0.0.1:9001/v1/realtime?model=bench' -c 100 \
        --target-pid 1234 --token TOKEN
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import re
import sys
import time
from array import array

import psutil
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

TYPE_RE = re.compile(
    rb'"type"\s*:\s*"(response\.output_text\.delta|response\.done|response\.created|error|session\.created)"'
)
STAMP_RE = re.compile(rb'"event_id"\s*:\s*"event_\d+_(\d+)"')
DELTA = b"response.output_text.delta"
DONE = b"response.done"
CREATED = b"response.created"
ERROR = b"error"
SESSION_CREATED = b"session.created"

MAX_ERROR_SAMPLES = 5


def emit(**fields) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


class Stats:
    def __init__(self) -> None:
        self.measuring = False
        self.stop = False
        self.deltas = 0
        self.responses = 0
        self.errors = 0
        self.error_samples: list[str] = []
        self.unstamped = 0
        self.latencies_ns = array("q")

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(text[:300])


def _frames(index: int) -> tuple[str, str]:
    item = json.dumps(
        {
            "type": "conversation.item.create",
            "event_id": f"evt_bench_item_{index}",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": f"Hello from bench caller {index}."}],
            },
        },
        separators=(",", ":"),
    )
    create = json.dumps(
        {"type": "response.create", "event_id": f"evt_bench_resp_{index}"}, separators=(",", ":")
    )
    return item, create


async def connect_caller(url: str, headers: dict[str, str], open_timeout: float):
    """A Realtime caller's socket, as every benchmark opens it: no size cap, no compression,
    no keepalive pings (they would be measured too)."""
    return await connect(
        url,
        additional_headers=headers,
        max_size=None,
        compression=None,
        open_timeout=open_timeout,
        close_timeout=2,
        ping_interval=None,
    )


async def open_caller(url: str, headers: dict[str, str], stats: Stats, timeout: float):
    """Connect and wait for session.created; None (and an error counted) on failure."""
    try:
        async with asyncio.timeout(timeout):
            ws = await connect_caller(url, headers, timeout)
            while True:
                frame = await ws.recv(decode=False)
                match = TYPE_RE.search(frame)
                if match and match.group(1) == SESSION_CREATED:
                    return ws
                if match and match.group(1) == ERROR:
                    stats.error(frame.decode("utf-8", "replace"))
    except Exception as exc:  # noqa: BLE001 - a failed caller is a figure, not a crash
        stats.error(f"connect: {type(exc).__name__}: {exc}")
        return None


async def run_caller(ws, index: int, stats: Stats) -> None:
    item, create = _frames(index)
    latencies = stats.latencies_ns
    try:
        while not stats.stop:
            await ws.send(item)
            await ws.send(create)
            created = False
            while True:
                frame = await ws.recv(decode=False)
                now = time.time_ns()
                match = TYPE_RE.search(frame)
                if match is None:
                    continue
                kind = match.group(1)
                if kind == DELTA:
                    if stats.measuring:
                        stamp = STAMP_RE.search(frame)
                        if stamp is None:
                            stats.unstamped += 1
                        else:
                            latencies.append(now - int(stamp.group(1)))
                        stats.deltas += 1
                elif kind == DONE:
                    if stats.measuring:
                        stats.responses += 1
                    break
                elif kind == CREATED:
                    created = True
                elif kind == ERROR:
                    stats.error(frame.decode("utf-8", "replace"))
                    if not created:
                        break  # our response.create was refused: ask again
    except ConnectionClosed as exc:
        if not stats.stop:
            stats.error(f"closed by target: {exc}")


def cpu_seconds(proc: psutil.Process | None) -> float | None:
    """CPU seconds (user + system) the process has used, or None when it is gone."""
    if proc is None:
        return None
    try:
        times = proc.cpu_times()
    except psutil.Error:
        return None
    return times.user + times.system


def rss_bytes(proc: psutil.Process | None) -> int | None:
    if proc is None:
        return None
    try:
        return proc.memory_info().rss
    except psutil.Error:
        return None


def machine_busy() -> float:
    """CPU seconds all cores have been busy since boot."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def nearest_rank(sorted_values: list, q: float):
    """The nearest-rank percentile `q` (0–1) of sorted values, or None when there are none.
    Every benchmark part reports percentiles this way."""
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))]


def percentile(sorted_values: list[int], q: float) -> float | None:
    """Of sorted nanoseconds, in ms."""
    value = nearest_rank(sorted_values, q)
    return None if value is None else value / 1e6


async def main(args: argparse.Namespace) -> dict:
    stats = Stats()
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    target = psutil.Process(args.target_pid) if args.target_pid else None
    watched = {"target": target, "load": psutil.Process()}
    for name, pid in args.watch:
        watched[name] = psutil.Process(pid)

    if args.prime:
        # One session opened and closed first, so that one-time costs (lazy imports, first
        # client objects) are in the baseline and not charged to the measured sessions.
        primer = await open_caller(args.url, headers, stats, args.connect_timeout)
        if primer is not None:
            await primer.close()
        await asyncio.sleep(1.0)
    rss_before = rss_bytes(target)
    t_connect = time.monotonic()
    sockets = []
    for start in range(0, args.concurrency, args.connect_batch):
        batch = range(start, min(start + args.connect_batch, args.concurrency))
        sockets += await asyncio.gather(
            *(open_caller(args.url, headers, stats, args.connect_timeout) for _ in batch)
        )
    live = [ws for ws in sockets if ws is not None]
    connect_s = time.monotonic() - t_connect
    emit(event="connected", sessions=len(live), seconds=round(connect_s, 2))

    await asyncio.sleep(args.settle)
    rss_idle = rss_bytes(target)
    connect_errors = stats.errors
    gc.collect()
    gc.freeze()

    tasks = [asyncio.create_task(run_caller(ws, i, stats)) for i, ws in enumerate(live)]
    await asyncio.sleep(args.warmup)

    cpu0 = {name: cpu_seconds(proc) for name, proc in watched.items()}
    psutil.cpu_percent(interval=None)
    stats.measuring = True
    t0 = time.monotonic()
    emit(event="measure_start")
    await asyncio.sleep(args.window)
    stats.measuring = False
    elapsed = time.monotonic() - t0
    machine_cpu = psutil.cpu_percent(interval=None)
    cpu1 = {name: cpu_seconds(proc) for name, proc in watched.items()}
    emit(event="measure_end")

    stats.stop = True
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            await asyncio.gather(*(ws.close() for ws in live), return_exceptions=True)

    lat = sorted(stats.latencies_ns)
    cpu_s = {
        name: (None if cpu0[name] is None or cpu1[name] is None else cpu1[name] - cpu0[name])
        for name in watched
    }
    target_cpu = cpu_s.get("target")
    return {
        "event": "result",
        "url": args.url,
        "concurrency": args.concurrency,
        "sessions": len(live),
        "connect_seconds": round(connect_s, 3),
        "window_seconds": round(elapsed, 3),
        "deltas": stats.deltas,
        "responses": stats.responses,
        "deltas_per_s": stats.deltas / elapsed if elapsed else 0.0,
        "latency_ms": {
            "p50": percentile(lat, 0.50),
            "p90": percentile(lat, 0.90),
            "p99": percentile(lat, 0.99),
            "max": lat[-1] / 1e6 if lat else None,
            "mean": (sum(lat) / len(lat) / 1e6) if lat else None,
        },
        "unstamped_deltas": stats.unstamped,
        "errors": stats.errors,
        "connect_errors": connect_errors,
        "error_samples": stats.error_samples,
        "cpu_seconds": cpu_s,
        "target_cpu_s_per_1000_deltas": (
            target_cpu / stats.deltas * 1000 if target_cpu is not None and stats.deltas else None
        ),
        "machine_cpu_percent": machine_cpu,
        "rss_before_bytes": rss_before,
        "rss_idle_bytes": rss_idle,
        "rss_per_session_bytes": (
            (rss_idle - rss_before) / len(live)
            if rss_before is not None and rss_idle is not None and live
            else None
        ),
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
    parser.add_argument("--target-pid", type=int, default=0)
    parser.add_argument(
        "--no-prime",
        dest="prime",
        action="store_false",
        help="do not open and close one session before the RSS baseline",
    )
    parser.add_argument(
        "--watch",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "PID"),
        type=lambda v: v,
        help="another process whose CPU to report",
    )
    args = parser.parse_args(argv)
    args.watch = [(name, int(pid)) for name, pid in args.watch]
    if not (1 <= args.concurrency <= 2000):
        parser.error("concurrency must be in 1..2000")
    if not (0 < args.window <= 120 and 0 <= args.warmup <= 60):
        parser.error("window must be in (0, 120] s and warm-up in [0, 60] s")
    return args


if __name__ == "__main__":
    args = parse_args()
    result = asyncio.run(main(args))
    emit(**result)
