"""Fixtures of the simulator's tests: a fresh simulator, and an SDK connection to it."""

from __future__ import annotations

import pytest_asyncio

from apps.simulator.server import Simulator, SimulatorConfig
from tests.simulator.client import DELTAS, recv, sdk_client


@pytest_asyncio.fixture
async def sim():
    simulator = Simulator(
        SimulatorConfig(deltas_per_response=DELTAS, delta_interval=0.002, audio_pace=0)
    )
    await simulator.start()
    yield simulator
    await simulator.aclose()


@pytest_asyncio.fixture
async def conn(sim):
    async with sdk_client(sim).realtime.connect(model="gpt-realtime") as connection:
        created = await recv(connection)
        assert created.type == "session.created"
        yield connection
