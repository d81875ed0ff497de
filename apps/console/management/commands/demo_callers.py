"""demo_callers: simulated callers through the relay, so the console has something to show.

Each caller opens a Realtime session on the relay (like any client would), gives its agent a
persona, and says a line from a support conversation every few seconds, waiting for the
agent's answer each time. Callers reconnect when their session ends, so a dashboard stays
alive for as long as the command runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal

import websockets
from django.core.management.base import BaseCommand, CommandError

from apps.sessions.models import ApiToken
from apps.sessions.tokens import api_token_create

PERSONA = "You are Ava, the support agent of Acme Outfitters. Be brief and kind."
LINES = [
    "Hi, my order hasn't arrived yet.",
    "It was supposed to come last Tuesday.",
    "The order number is A-1042.",
    "Can I get my money back?",
    "Is there a discount for the trouble?",
    "What are your opening hours?",
    "Thanks, that helps.",
]


class Command(BaseCommand):
    help = "Run N simulated Realtime callers through the relay (for demos: `make run` starts three)."

    def add_arguments(self, parser):
        parser.add_argument("--count", type=int, default=3, help="how many callers (default 3)")
        parser.add_argument("--url", default="ws://127.0.0.1:8000/v1", help="the relay's base URL")
        parser.add_argument("--interval", type=float, default=6.0, help="seconds between a caller's turns")
        parser.add_argument("--turns", type=int, default=0, help="turns per session (0: until stopped)")
        parser.add_argument("--sessions", type=int, default=0, help="sessions per caller (0: until stopped)")
        parser.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the relay to come up")
        parser.add_argument("--token", default="", help="an API token (default: a new one, scope realtime:connect)")

    def handle(self, *args, count, url, interval, turns, sessions, wait, token, **options):
        if count < 0 or interval < 0 or turns < 0 or sessions < 0:
            raise CommandError("--count, --interval, --turns and --sessions must not be negative")
        if count == 0:
            return
        if not token:
            _, token = api_token_create(name="demo-callers", scopes=[ApiToken.Scope.REALTIME_CONNECT])
        asyncio.run(self._run(count, url.rstrip("/"), interval, turns, sessions, wait, token))

    async def _run(self, count, url, interval, turns, sessions, wait, token):
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(signum, stop.set)
        callers = [
            asyncio.create_task(self._caller(n, url, interval, turns, sessions, wait, token, stop))
            for n in range(1, count + 1)
        ]
        stopper = asyncio.create_task(stop.wait())
        everyone = asyncio.gather(*callers)
        await asyncio.wait([stopper, everyone], return_when=asyncio.FIRST_COMPLETED)
        everyone.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await everyone
        stopper.cancel()

    async def _caller(self, n, url, interval, turns, sessions, wait, token, stop):
        rng = random.Random(n)
        opened, delay = 0, 1.0
        deadline = loop_time() + wait
        while not stop.is_set() and (not sessions or opened < sessions):
            try:
                async with websockets.connect(
                    f"{url}/realtime?model=gpt-realtime",
                    additional_headers={"Authorization": f"Bearer {token}"},
                    open_timeout=10,
                ) as socket:
                    opened, delay = opened + 1, 1.0
                    await self._converse(n, socket, rng, interval, turns, stop)
            except (OSError, websockets.WebSocketException) as exc:
                if opened == 0 and loop_time() > deadline:
                    self.stderr.write(f"caller {n}: the relay at {url} is not answering ({exc}); giving up")
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _converse(self, n, socket, rng, interval, turns, stop):
        created = json.loads(await socket.recv())
        session_id = created.get("session", {}).get("id", "?")
        self.stdout.write(f"caller {n}: session {session_id}")
        await socket.send(json.dumps({"type": "session.update", "session": {"type": "realtime", "instructions": PERSONA}}))
        said = 0
        while not stop.is_set() and (not turns or said < turns):
            line = LINES[(said + n) % len(LINES)]
            await socket.send(json.dumps({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": line}]}}))
            await socket.send(json.dumps({"type": "response.create"}))
            said += 1
            async with asyncio.timeout(60):
                while json.loads(await socket.recv()).get("type") != "response.done":
                    pass
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval * rng.uniform(0.6, 1.4)):
                    # Keep reading while waiting: operators' nudges produce responses too.
                    while True:
                        await socket.recv()
        self.stdout.write(f"caller {n}: session {session_id} done after {said} turns")


def loop_time() -> float:
    return asyncio.get_running_loop().time()
