"""Caller faults (issue 5): a thousand callers that connect and vanish without a close frame
leave nothing behind in the relay — no task, no socket, no file, no database connection."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
import urllib.request

import psutil
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
CYCLES = 1000


def _health(daphne) -> dict:
    with urllib.request.urlopen(f"{daphne.http_url}/healthz", timeout=5) as response:
        return json.loads(response.read())


def _sockets(pid: int) -> int:
    return len([c for c in psutil.Process(pid).net_connections(kind="tcp") if c.status != psutil.CONN_LISTEN])


async def _vanish(port: int, token: str, wait_for_session: bool) -> None:
    """Open the WebSocket handshake, maybe read session.created, then drop the TCP connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            "GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101"), head[:60]
    if wait_for_session:
        await asyncio.wait_for(reader.read(2), 5)  # the first frame's header: session.created
    writer.transport.abort()  # no close frame, no FIN handshake: a reset


async def _churn(port: int, tokens: list[str], cycles: int) -> None:
    """Batches of 20 callers, each batch's on the next of `tokens`: every handshake takes from
    its token's bucket of the rate limit (`OC_API_BURST`, 400 by default), which a thousand
    handshakes of one token could empty on a fast machine and be refused."""
    for batch in range(cycles // 20):
        token = tokens[batch % len(tokens)]
        await asyncio.gather(*[_vanish(port, token, wait_for_session=(n + batch) % 2 == 0) for n in range(20)])


async def _settled(daphne, baseline: dict) -> dict:
    """Health once the churn's sessions are gone: as many as `baseline` at most (the
    session-wide Daphne may hold another module's session, as it did before the churn)."""
    deadline = time.monotonic() + 30
    while True:
        health = await asyncio.to_thread(_health, daphne)
        if health["sessions"] <= baseline["sessions"] and health["tasks"] <= baseline["tasks"] + 2:
            return health
        assert time.monotonic() < deadline, f"still held after 30 s: {health}"
        await asyncio.sleep(0.5)


@pytest.fixture
def churn_tokens(make_token) -> list[str]:
    """Enough tokens that no one makes 400 of the churn's 1,100 handshakes."""
    return [make_token() for _ in range(4)]


async def test_a_thousand_vanishing_callers_leak_nothing(daphne, churn_tokens):
    """Counted after a first round of 100 cycles, which fills what is pooled and bounded (the
    database threads; SQLite keeps a closed connection's file open while another connection of
    the process holds a lock, and reuses it): a leak grows with the cycles, a pool does not."""
    pid = daphne.proc.pid
    idle = await asyncio.to_thread(_health, daphne)  # housekeeping started, modules loaded
    await _churn(daphne.port, churn_tokens, 100)
    before = await _settled(daphne, idle)
    sockets_before = _sockets(pid)
    started = time.monotonic()
    await _churn(daphne.port, churn_tokens, CYCLES)
    took = time.monotonic() - started

    after = await _settled(daphne, before)
    assert after["open_files"] <= before["open_files"] + 5, (before, after)
    assert after["threads"] <= before["threads"] + 2, (before, after)
    assert _sockets(pid) <= sockets_before + 2, "TCP connections (callers, upstream, database) remain"
    assert daphne.proc.poll() is None
    print(f"{CYCLES} cycles in {took:.1f} s; before {before}; after {after}")
