"""The dashboard part: 1 000 live sessions and 10 operators on the dashboard; the server's CPU
for their updates (target: ≤ 10 % of one core).

Processes, all on 127.0.0.1: one Daphne serving `operator_console.asgi:application`
(DJANGO_DEBUG=false, in-memory channel layer, SQLite in a bench-private file), whose CPU is
measured, and one client process (`python -m bench.dashboard`, `main` below).

The sessions are rows of the shared table, live and held by another process (its heartbeat is
fresh for the run), as in a scale-out where this process serves the dashboards and others hold
the calls: the dashboard feed reads the table alike whichever process holds a session, and
1 000 real callers would measure the relay, which the fan-out and relay parts do. The sessions
change while the windows run: a script relabels `CHURN_PER_S` sessions a second through the
REST hook (`PATCH /api/v1/sessions/{id}`), in every window, so each tick has changes to send.

Windows alternate without and with the 10 dashboard sockets (logged in through the login form,
each on its own view: default, searched, filtered, sorted, another page). The dashboards' cost
is Daphne's CPU with them minus without, in % of one core.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import time

import httpx
from websockets.asyncio.client import connect

from bench.common import (
    HOST,
    OPERATOR_PASSWORD,
    PY,
    Bench,
    CpuWindow,
    ProcessGroup,
    emit,
    fmt,
    log_problems,
    login,
    problems_text,
    say,
    scan_log,
    section,
    table,
    verdict,
)

SESSIONS = {"full": 1000, "quick": 200}
OPERATORS = 10
CHURN_PER_S = 20
CPU_TARGET_PERCENT = 10.0  # of one core, for the dashboards' updates
PLAN = {"full": ("off,on,off,on,off,on", 15.0, 3.0), "quick": ("off,on", 5.0, 2.0)}
BUDGET_S = {"full": 300.0, "quick": 150.0}
USER_PREFIX = "bench-dash-"
APP = "operator_console.asgi:application"
# Each operator's view, as the page's URL gives it (and its script sends).
VIEWS = [
    {}, {}, {"sort": "-last_activity"}, {"q": "customer 4"}, {"state": "idle", "sort": "label"},
    {"model": "gpt-realtime-mini"}, {"page": "3"}, {"sort": "connected_by"}, {"q": "agent-3"},
    {"sort": "-requests", "page": "2"},
]


# ---------------------------------------------------------------------------- the client process


class Dashboard:
    """One operator's dashboard socket, reading every frame as the page's script does."""

    def __init__(self, cookie: str, view: dict) -> None:
        self.cookie, self.view = cookie, view
        self.frames: list[tuple[float, int]] = []
        self.first: dict | None = None
        self.errors: list[str] = []
        self.ready = asyncio.Event()
        self.ws = None
        self.reader: asyncio.Task | None = None

    async def open(self, url: str, origin: str) -> None:
        self.ws = await connect(url, origin=origin, additional_headers={"Cookie": f"sessionid={self.cookie}"},
                                max_size=None, open_timeout=10, close_timeout=2, ping_interval=None)
        self.reader = asyncio.create_task(self._read())
        await self.ws.send(json.dumps({"type": "watch.sessions", "query": self.view}))
        async with asyncio.timeout(15):
            await self.ready.wait()

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                message = json.loads(frame)
                self.frames.append((time.monotonic(), len(frame)))
                if message.get("type") == "error":
                    self.errors.append(frame[:300])
                if self.first is None:
                    self.first = message
                    self.ready.set()
        except Exception as exc:  # noqa: BLE001 - reported with the figures
            self.errors.append(f"reader: {type(exc).__name__}: {exc}")
        finally:
            self.ready.set()

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)


async def churn(base: str, token: str, sessions: int, stop: asyncio.Event, counts: dict) -> None:
    """Relabel CHURN_PER_S random sessions a second through the REST hook."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=f"{base}/api/v1", headers=headers, timeout=10) as client:
        while not stop.is_set():
            started = time.monotonic()
            for _ in range(CHURN_PER_S):
                i = random.randrange(sessions)
                answer = await client.patch(f"/sessions/sess_bench{i:05d}",
                                            json={"label": f"Customer {i} · {random.randrange(1000)}"})
                counts["patched" if answer.status_code == 200 else "refused"] += 1
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))


async def main(args: argparse.Namespace) -> dict:
    host = args.base.removeprefix("http://")
    async with httpx.AsyncClient(timeout=30.0) as client:
        cookies = [await login(client, args.base, f"{USER_PREFIX}{i:02d}") for i in range(1, OPERATORS + 1)]
    emit(event="logged_in", operators=len(cookies))
    stop, counts = asyncio.Event(), {"patched": 0, "refused": 0}
    churner = asyncio.create_task(churn(args.base, args.token, args.sessions, stop, counts))
    daphne = ProcessGroup(args.target_pid)
    windows, dashboards = [], []
    try:
        await asyncio.sleep(args.settle)
        for index, phase in enumerate(args.schedule.split(","), 1):
            on = phase.strip() == "on"
            if on and not dashboards:
                dashboards = [Dashboard(cookie, VIEWS[i % len(VIEWS)]) for i, cookie in enumerate(cookies)]
                await asyncio.gather(*(d.open(f"ws://{host}/ws/console/", args.base) for d in dashboards))
            elif not on and dashboards:
                await asyncio.gather(*(d.close() for d in dashboards))
                dashboards = []
            await asyncio.sleep(args.settle)
            cpu = CpuWindow({"daphne": daphne})
            frames_before = sum(len(d.frames) for d in dashboards)
            await asyncio.sleep(args.window)
            measured = cpu.end()
            seconds = measured["seconds"]
            window = {
                "index": index, "dashboards": on, "seconds": seconds,
                "daphne_cpu_percent": 100 * measured["cpu_s"]["daphne"] / seconds,
                "other_cpu_share": measured["other_cpu_share"],
                "pages_per_s": (sum(len(d.frames) for d in dashboards) - frames_before) / seconds,
            }
            windows.append(window)
            emit(event="window", index=index, dashboards=on,
                 daphne_cpu_percent=round(window["daphne_cpu_percent"], 1),
                 pages_per_s=round(window["pages_per_s"], 1))
        firsts = [d.first or {} for d in dashboards]
    finally:
        stop.set()
        await asyncio.gather(churner, return_exceptions=True)
        await asyncio.gather(*(d.close() for d in dashboards))
    return {
        "event": "result",
        "windows": windows,
        "churn": counts,
        "listed_live": [f.get("live") for f in firsts],
        "rows_per_page": [len(f.get("rows") or ()) for f in firsts],
        "page_bytes_median": statistics.median(size for d in dashboards for _, size in d.frames)
        if any(d.frames for d in dashboards) else None,
        "operator_errors": [e for d in dashboards for e in d.errors][:5],
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Dashboard clients (bench/dashboard.py)")
    parser.add_argument("--base", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--target-pid", type=int, required=True)
    parser.add_argument("--sessions", type=int, required=True)
    parser.add_argument("--schedule", default=PLAN["full"][0])
    parser.add_argument("--window", type=float, default=PLAN["full"][1])
    parser.add_argument("--settle", type=float, default=PLAN["full"][2])
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------- the part


async def run(bench: Bench, args) -> dict:
    mode = "quick" if args.quick else "full"
    schedule, window, settle = PLAN[mode]
    sessions = getattr(args, "dashboard_sessions", None) or SESSIONS[mode]
    env = bench.env(DATABASE_URL=f"sqlite:///{bench.workdir / 'dashboard.sqlite3'}")
    handles = []
    try:
        async with asyncio.timeout(BUDGET_S[mode]):
            token = await bench.migrate_with_token("bench-dashboard", env)
            await seed(bench, env, sessions)
            daphne, port = await bench.daphne("dashboard-server", APP, env)
            handles.append(daphne)
            argv = [PY, "-m", "bench.dashboard", "--base", f"http://{HOST}:{port}", "--token", token,
                    "--target-pid", str(daphne.pid), "--sessions", str(sessions),
                    "--schedule", schedule, "--window", str(window), "--settle", str(settle)]

            def progress(message: dict) -> None:
                event = message.pop("event", "")
                say(f"    {event}: " + ", ".join(f"{k} {v}" for k, v in message.items()))

            result = await bench.client("dashboard-clients", argv, env, BUDGET_S[mode], progress)
    except TimeoutError:
        raise RuntimeError(f"the dashboard part exceeded its {BUDGET_S[mode]:g} s budget") from None
    finally:
        for handle in reversed(handles):
            await bench.stop(handle)
    logs = {h.name: scan_log(h.log_path) for h in handles}
    return {**result, **analyse(result["windows"]), "sessions": sessions, "window_s": window, "logs": logs}


async def seed(bench: Bench, env: dict, sessions: int) -> None:
    """The operators' accounts and `sessions` live sessions held by another process."""
    code = (
        "from datetime import timedelta\n"
        "from django.contrib.auth import get_user_model\n"
        "from django.contrib.auth.hashers import make_password\n"
        "from django.utils import timezone\n"
        "from apps.sessions.models import LiveSession\n"
        "User = get_user_model()\n"
        f"digest = make_password({OPERATOR_PASSWORD!r})\n"
        f"User.objects.bulk_create([User(username=f'{USER_PREFIX}{{i:02d}}', password=digest) "
        f"for i in range(1, {OPERATORS + 1})])\n"
        "now = timezone.now()\n"
        "LiveSession.objects.bulk_create([LiveSession(upstream_id=f'sess_bench{i:05d}', "
        "model='gpt-realtime-mini' if i % 4 == 0 else 'gpt-realtime', status='live', "
        "connected_by=f'token:agent-{i % 9}', process_id='bench-elsewhere', "
        "heartbeat_at=now + timedelta(hours=2), started_at=now - timedelta(seconds=i), "
        f"label=f'Customer {{i}}') for i in range({sessions})])\n"
    )
    await bench.run_command([PY, "manage.py", "shell", "-c", code], env)


def analyse(windows: list[dict]) -> dict:
    def mean(on: bool) -> float | None:
        chosen = [w["daphne_cpu_percent"] for w in windows if w["dashboards"] == on]
        return statistics.mean(chosen) if chosen else None

    without, with_ = mean(False), mean(True)
    cost = with_ - without if without is not None and with_ is not None else None
    pages = [w["pages_per_s"] for w in windows if w["dashboards"]]
    return {"cpu_without_percent": without, "cpu_with_percent": with_, "dashboard_cpu_percent": cost,
            "pages_per_s": statistics.mean(pages) if pages else None,
            "ok": cost is not None and cost <= CPU_TARGET_PERCENT}


def render(result: dict | None) -> str:
    def body(r: dict) -> str:
        rows = [[w["index"], "on" if w["dashboards"] else "off", fmt(w["daphne_cpu_percent"]),
                 fmt(w["pages_per_s"]), fmt(100 * w["other_cpu_share"])] for w in r["windows"]]
        text = (f"{r['sessions']} live sessions, {OPERATORS} operators on the dashboard (each its own "
                f"view: searched, filtered, sorted, paged), {CHURN_PER_S} sessions relabelled a second "
                "through the REST hook in every window. Daphne's CPU for the dashboards' updates: "
                f"**{fmt(r['dashboard_cpu_percent'])} % of one core** (with {fmt(r['cpu_with_percent'])} %, "
                f"without {fmt(r['cpu_without_percent'])} %; target ≤ {CPU_TARGET_PERCENT:g} %) "
                f"{verdict(r['ok'])}.\n\n")
        text += table(["window", "dashboards", "Daphne CPU %", "pages sent/s", "other work %"], rows)
        text += problems_text(log_problems(r["logs"]))
        return [text]

    return section("Dashboard: 1 000 live sessions, 10 operators", result, body)


if __name__ == "__main__":
    emit(**asyncio.run(main(parse_args())))
