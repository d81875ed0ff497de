"""Floor 1: a minimal pass-through relay on the `websockets` library alone.

Per caller connection: open the upstream (`{upstream}/realtime?<caller's query>`), pump frames
both ways unchanged, close both when either side closes. No auth, no parsing, nothing else.

    python bench/floor_websockets.py --port 9001 --upstream ws://127.0.0.1:9000/v1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed


async def _pump(source, sink) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for frame in source:
            await sink.send(frame)


def make_handler(upstream_base: str):
    async def handler(caller) -> None:
        query = caller.request.path.partition("?")[2]
        url = f"{upstream_base.rstrip('/')}/realtime" + (f"?{query}" if query else "")
        try:
            upstream = await connect(url, max_size=None)
        except Exception:
            await caller.close(1011, "upstream unavailable")
            return
        async with upstream:
            down = asyncio.create_task(_pump(upstream, caller))
            up = asyncio.create_task(_pump(caller, upstream))
            await asyncio.wait({down, up}, return_when=asyncio.FIRST_COMPLETED)
            for task in (down, up):
                task.cancel()
            await asyncio.gather(down, up, return_exceptions=True)
        await caller.close()

    return handler


async def main(host: str, port: int, upstream: str) -> None:
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    # compression=None: the caller side is uncompressed, as it is under Daphne (which does not
    # negotiate permessage-deflate), so the three targets carry the same bytes to the caller.
    async with serve(make_handler(upstream), host, port, max_size=None, compression=None):
        print(f"floor_websockets listening on ws://{host}:{port}", flush=True)
        await stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="e.g. ws://127.0.0.1:9000/v1")
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port, args.upstream))
