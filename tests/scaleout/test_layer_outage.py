"""The app's channel layer (apps.sessions.layers) on a real Redis that stops just as a message
is received: what the layer then does by itself is logged as a warning line, not as a
traceback, and the layer works again once Redis is back. The app's own calls on the layer
through an outage: tests/scaleout/test_two_processes.py, test_console_redis_outage.py."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from apps.sessions.layers import RedisChannelLayer

pytestmark = pytest.mark.e2e


async def test_redis_stopping_as_a_message_is_received_leaves_no_traceback(redis_server, caplog):
    # As operator_console/settings.py has it: a command that fails on a connection to the
    # Redis that is gone is tried once more, on a new one.
    layer = RedisChannelLayer(
        hosts=[{"address": redis_server.url, "retry_on_error": [RedisConnectionError]}]
    )
    channel = await layer.new_channel()
    try:
        await layer.send(channel, {"type": "test.message", "n": 1})
        assert (await layer.receive(channel))["n"] == 1
        # The layer has scheduled the removal of the message's copy from Redis; the loop has
        # not run it yet, and does not until this returns: Redis stops in between.
        redis_server.stop_process()
        try:
            with caplog.at_level(logging.WARNING):
                async with asyncio.timeout(10):
                    while not caplog.records:  # the removal runs, fails, and is reported
                        await asyncio.sleep(0.01)
                        gc.collect()  # asyncio reports an exception nobody took as a task goes
        finally:
            redis_server.start()
        assert "the copy of a message on" in caplog.text, caplog.text
        assert all(record.exc_info is None for record in caplog.records), caplog.text
        await layer.send(channel, {"type": "test.message", "n": 2})  # Redis is back
        async with asyncio.timeout(10):
            assert (await layer.receive(channel))["n"] == 2
    finally:
        await layer.flush()
        await layer.close_pools()
