"""The dashboard part: 1 000 live sessions and 10 operators on the dashboard; the server's CPU
for their updates (target: ≤ 10 % of one core). The set-up and why the sessions are rows held by
another process: ABOUT below (the report's text). The client process is
`python -m bench.dashboard` (`main` below).
"""

from __future__ import annotations

import asyncio
import random
import time

import httpx

from bench import common
from bench.common import Bench, at_most, fmt, table

TITLE = "Dashboard: 1 000 live sessions, 10 operators"
SESSIONS = {"full": 1000, "quick": 200}
OPERATORS = 10
CHURN_PER_S = 20
CPU_TARGET_PERCENT = 10.0  # of one core, for the dashboards' updates
PLAN = {"full": ("off,on,off,on,off,on", 15.0, 3.0), "quick": ("off,on", 5.0, 2.0)}
BUDGET_S = {"full": 300.0, "quick": 150.0}
USER_PREFIX = "bench-dash-"
# Each operator's view, as the page's URL gives it (and its script sends).
VIEWS = [
    {}, {}, {"sort": "-last_activity"}, {"q": "customer 4"}, {"state": "idle", "sort": "label"},
    {"model": "gpt-realtime-mini"}, {"page": "3"}, {"sort": "connected_by"}, {"q": "agent-3"},
    {"sort": "-requests", "page": "2"},
]
# `manage.py shell` code: `sessions` live sessions held by another process.
SESSIONS_CODE = """
from datetime import timedelta
from django.utils import timezone
from apps.sessions.models import LiveSession
now = timezone.now()
LiveSession.objects.bulk_create([LiveSession(
    upstream_id=f"sess_bench{{i:05d}}", model="gpt-realtime-mini" if i % 4 == 0 else "gpt-realtime",
    status="live", connected_by=f"token:agent-{{i % 9}}", process_id="bench-elsewhere",
    heartbeat_at=now + timedelta(hours=2), started_at=now - timedelta(seconds=i),
    label=f"Customer {{i}}") for i in range({sessions})])
"""


async def churn(base: str, token: str, sessions: int, stop: asyncio.Event, counts: dict) -> None:
    """Relabel CHURN_PER_S random sessions a second through the REST hook."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=f"{base}/api/v1", headers=headers, timeout=10) as client:
        while not stop.is_set():
            started = time.monotonic()
            for _ in range(CHURN_PER_S):
                i = random.randrange(sessions)
                label = f"Customer {i} · {random.randrange(1000)}"
                answer = await client.patch(f"/sessions/sess_bench{i:05d}", json={"label": label})
                counts["patched" if answer.status_code == 200 else "refused"] += 1
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))


async def main(args) -> dict:
    cookies = await common.log_in_operators(args.base, USER_PREFIX, OPERATORS)
    stop, counts = asyncio.Event(), {"patched": 0, "refused": 0}
    churner = asyncio.create_task(churn(args.base, args.token, args.sessions, stop, counts))
    daphne = {"target": common.ProcessGroup(args.target_pid)}
    dashboards: list[common.OperatorSocket] = []

    async def attach(on: bool) -> None:
        nonlocal dashboards
        if on and not dashboards:
            dashboards = [common.OperatorSocket(cookie) for cookie in cookies]
            await asyncio.gather(*(
                d.open(args.base, {"type": "watch.sessions", "query": VIEWS[i % len(VIEWS)]})
                for i, d in enumerate(dashboards)
            ))
        elif not on and dashboards:
            await asyncio.gather(*(d.close() for d in dashboards))
            dashboards = []

    async def measure(index: int, on: bool) -> dict:
        frames_before = sum(len(d.frames) for d in dashboards)
        measured = await common.measure_for(args.window, daphne)
        seconds, pages = measured["seconds"], sum(len(d.frames) for d in dashboards) - frames_before
        return {
            **measured, "index": index, "dashboards": on, "pages": pages,
            "daphne_cpu_percent": 100 * measured["cpu_s"]["target"] / seconds,
            "pages_per_s": pages / seconds,
        }

    try:
        await asyncio.sleep(args.settle)
        windows = await common.alternate(args.schedule, attach, measure, args.settle)
    finally:
        stop.set()
        await asyncio.gather(churner, return_exceptions=True)
        await asyncio.gather(*(d.close() for d in dashboards))
    errors = [e for d in dashboards for e in d.errors][:5]
    return {"windows": windows, "churn": counts, "operator_errors": errors}


async def run(bench: Bench, args) -> dict:
    schedule, window, settle = common.by_mode(PLAN, args)
    sessions = common.by_mode(SESSIONS, args)
    config = {"sessions": sessions, "schedule": schedule, "window": window, "settle": settle}
    seed = common.operators_code(USER_PREFIX, OPERATORS) + SESSIONS_CODE.format(sessions=sessions)
    budget = common.by_mode(BUDGET_S, args)
    result = await bench.app_with_clients("dashboard", config, budget, seed=seed)
    return {**result, **analyse(result["windows"]), "sessions": sessions}


def analyse(windows: list[dict]) -> dict:
    without, with_ = (common.cpu_side([w for w in windows if w["dashboards"] == on], "pages")
                      for on in (False, True))
    cost = with_["cpu_percent"] - without["cpu_percent"] if without and with_ else None
    return {"without": without, "with": with_, "dashboard_cpu_percent": cost}


ABOUT = (
    "One Daphne process (DJANGO_DEBUG=false, in-memory channel layer, SQLite), whose CPU is "
    "measured, and one client process. The {sessions} live sessions are rows held by another "
    "process (its heartbeat fresh), as in a scale-out where this one serves the dashboards and "
    "others hold the calls (the feed reads the table alike; real callers would measure the "
    f"relay, as the fan-out and relay parts do). {CHURN_PER_S} sessions are relabelled a second "
    "through the REST hook (`PATCH /api/v1/sessions/{{id}}`) in every window. Windows alternate "
    f"without and with {OPERATORS} operators on the dashboard (logged in through the login form, "
    "each on its own view: default, searched, filtered, sorted, paged); their cost is Daphne's "
    "CPU with them minus without.\n\n"
)


def body(r: dict) -> list[str]:
    cpu = {side: (r.get(side) or {}).get("cpu_percent") for side in ("with", "without")}
    rows = [[w["index"], "on" if w["dashboards"] else "off", fmt(w["daphne_cpu_percent"]),
             fmt(w["pages_per_s"]), fmt(100 * w["other_cpu_share"])] for w in r["windows"]]
    text = ABOUT.format(sessions=r["sessions"]) + (
        "Daphne's CPU for the dashboards' updates: "
        f"**{fmt(r['dashboard_cpu_percent'])} % of one core** (with "
        f"{fmt(cpu['with'])} %, without {fmt(cpu['without'])} %; target ≤ "
        f"{CPU_TARGET_PERCENT:g} %) {at_most(r['dashboard_cpu_percent'], CPU_TARGET_PERCENT)}.\n\n"
    )
    text += table(["window", "dashboards", "Daphne CPU %", "pages sent/s", "other work %"], rows)
    problems = [f"- an operator's dashboard: {error}" for error in r.get("operator_errors") or ()]
    if refused := (r.get("churn") or {}).get("refused"):
        problems.append(f"- relabels refused: {refused} of {refused + r['churn']['patched']}")
    return [text, common.problems_text(problems, r["logs"])]


if __name__ == "__main__":
    common.client_main(main)
