"""`python manage.py simulate_upstream`: the upstream Realtime simulator, standalone."""

from __future__ import annotations

import asyncio
import contextlib
import signal

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.simulator.server import Simulator, SimulatorConfig
from apps.simulator.speech import ENGINES


class Command(BaseCommand):
    help = (
        "Run the OpenAI Realtime upstream simulator until interrupted. Prints its base URL "
        "(ws://HOST:PORT/v1): point OC_UPSTREAM_URL at it."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
        parser.add_argument("--port", type=int, default=9100, help="port (default 9100; 0: any)")
        parser.add_argument(
            "--deltas",
            type=int,
            default=None,
            help="text deltas per response (default: OC_SIM_DELTAS, else 8)",
        )
        parser.add_argument(
            "--interval",
            type=float,
            default=None,
            help="seconds between deltas (default: OC_SIM_INTERVAL, else 0.05)",
        )
        parser.add_argument(
            "--audio-pace",
            type=float,
            default=None,
            help="spoken replies' pace, a realtime factor: 1 real time, 0 as fast as possible "
            "(default: OC_SIM_AUDIO_PACE, else 1)",
        )
        parser.add_argument(
            "--speech",
            choices=ENGINES,
            default="auto",
            help="voice of spoken replies: auto (espeak-ng when installed, else a tone) or tone",
        )
        parser.add_argument(
            "--reply-audio-ms",
            type=int,
            default=None,
            help="benchmarks: every spoken reply is this many ms of one tone (default: the "
            "reply text spoken)",
        )
        parser.add_argument(
            "--audio-stamp",
            action="store_true",
            help="benchmarks: each PCM16 output audio chunk starts with its send time "
            "(8 bytes, time.time_ns() little-endian)",
        )
        parser.add_argument(
            "--max-session-seconds",
            type=float,
            default=None,
            help="a session's life from its creation; at it the session expires as the "
            "service's does (default: OC_SIM_MAX_SESSION_SECONDS, else 3600)",
        )
        parser.add_argument(
            "--api-key",
            default=None,
            help="require 'Authorization: Bearer KEY' on connect (default: no key needed)",
        )

    def handle(self, *args, **options):
        defaults = SimulatorConfig()
        deltas = options["deltas"]
        if deltas is None:
            deltas = getattr(settings, "OC_SIM_DELTAS", defaults.deltas_per_response)
        interval = options["interval"]
        if interval is None:
            interval = getattr(settings, "OC_SIM_INTERVAL", defaults.delta_interval)
        audio_pace = options["audio_pace"]
        if audio_pace is None:
            audio_pace = getattr(settings, "OC_SIM_AUDIO_PACE", defaults.audio_pace)
        max_session_seconds = options["max_session_seconds"]
        if max_session_seconds is None:
            max_session_seconds = getattr(
                settings, "OC_SIM_MAX_SESSION_SECONDS", defaults.max_session_seconds
            )
        if max_session_seconds <= 0:
            raise CommandError("--max-session-seconds must be positive")
        if audio_pace < 0:
            raise CommandError("--audio-pace must not be negative")
        if deltas < 1:
            raise CommandError("--deltas must be at least 1")
        if interval < 0:
            raise CommandError("--interval must not be negative")
        reply_audio_ms = options["reply_audio_ms"]
        if reply_audio_ms is not None and not 1 <= reply_audio_ms <= 600_000:
            raise CommandError("--reply-audio-ms must be in 1..600000")
        config = SimulatorConfig(
            deltas_per_response=deltas,
            delta_interval=interval,
            audio_pace=audio_pace,
            speech_engine=options["speech"],
            reply_audio_ms=reply_audio_ms,
            audio_stamp=options["audio_stamp"],
            max_session_seconds=max_session_seconds,
            required_api_key=options["api_key"] or None,
            record_limit=0,  # nobody reads the event logs of a standalone simulator
        )
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(self._serve(config, options["host"], options["port"]))

    async def _serve(self, config: SimulatorConfig, host: str, port: int) -> None:
        simulator = Simulator(config)
        try:
            await simulator.start(host, port)
        except OSError as exc:
            raise CommandError(f"cannot listen on {host}:{port}: {exc}") from exc
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, stop.set)
        self.stdout.write(
            f"Realtime simulator listening; {config.deltas_per_response} deltas per response, "
            f"{config.delta_interval}s apart"
            + f"; audio at {config.audio_pace:g}x real time ({config.speech_engine})"
            + f"; sessions expire after {config.max_session_seconds:g}s"
            + ("; API key required" if config.required_api_key else "")
        )
        self.stdout.write(simulator.url)
        self.stdout.flush()
        try:
            await stop.wait()
        finally:
            await simulator.aclose()
