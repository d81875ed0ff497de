"""Where the relay's upstream is: OC_UPSTREAM_URL, or the embedded simulator.

With OC_UPSTREAM_URL unset, the first session in an event loop starts the simulator in that
loop on a free loopback port, and every later session of the loop uses it.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence

from django.conf import settings

from apps.realtime import upstream as sdk_upstream
from apps.simulator import discovery
from apps.simulator.server import Simulator, SimulatorConfig

_embedded: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task] = (
    weakref.WeakKeyDictionary()
)


async def embedded_simulator() -> Simulator:
    """The embedded simulator of the running loop, started on first use."""
    loop = asyncio.get_running_loop()
    task = _embedded.get(loop)
    if task is None:
        task = loop.create_task(_start_simulator())
        _embedded[loop] = task
    return await asyncio.shield(task)


async def _start_simulator() -> Simulator:
    simulator = Simulator(
        SimulatorConfig(
            deltas_per_response=settings.OC_SIM_DELTAS,
            delta_interval=settings.OC_SIM_INTERVAL,
            audio_pace=settings.OC_SIM_AUDIO_PACE,
            max_session_seconds=settings.OC_SIM_MAX_SESSION_SECONDS,
            record_limit=0,  # nobody reads the embedded simulator's logs
        )
    )
    await simulator.start("127.0.0.1", 0)
    # For commands run beside the console (`simulate_sip_call`): where this simulator is.
    discovery.write_url(settings.VAR_DIR, simulator.url)
    return simulator


async def base_url() -> str:
    if settings.OC_UPSTREAM_URL:
        return settings.OC_UPSTREAM_URL
    return (await embedded_simulator()).url


async def open_upstream(
    *,
    model: str,
    extra_headers: dict[str, str] | None = None,
    call_id: str | None = None,
    query: Sequence[tuple[str, str]] = (),
):
    """A relayed session's upstream (with the caller's other query parameters, `query`), or
    with `call_id` an attached call's sideband."""
    return await sdk_upstream.open_connection(
        base_url=await base_url(),
        api_key=settings.OPENAI_API_KEY if settings.OC_UPSTREAM_URL else "",
        model=model,
        extra_headers=extra_headers,
        open_timeout=settings.OC_UPSTREAM_CONNECT_TIMEOUT,
        call_id=call_id,
        query=query,
    )
