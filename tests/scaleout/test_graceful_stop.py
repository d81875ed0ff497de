"""A graceful stop (SIGTERM) of one of two processes, seen by the operators it was serving:
its console and listen-in sockets are closed saying why (1012, service restart) and its event
streams end cleanly, so that pages and scripts reconnect through another process, where they
find the stopped process's sessions ended `server_shutdown` and the other's still live."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import websockets

from tests.scaleout.test_listen_two_processes import listening, login_cookie
from tests.scaleout.test_two_processes import Console, crashes
from tests.support.callers import SocketCaller, until_live
from tests.support.sse import Follower

pytestmark = pytest.mark.e2e


def rest(server, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"{server.http_url}/api/v1",
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx.Timeout(15, read=60),
    )


async def test_a_stopping_process_closes_its_operators_sockets_and_streams_saying_why(
    pair, scaleout_db
):
    a, b = pair
    token = scaleout_db.token
    async with rest(a, token) as rest_a, rest(b, token) as rest_b:
        on_a = await SocketCaller.connect(a.ws_base, token)
        on_b = await SocketCaller.connect(b.ws_base, token)
        console = None
        streams: list[Follower] = []
        try:
            await until_live(rest_a, on_b.session_id)
            # An operator served by A follows B's session: page, listen-in and a script.
            console = await Console.connect(a, scaleout_db.username, scaleout_db.password)
            await console.send({"type": "watch.session", "session_id": on_b.session_id})
            await console.wait_for(lambda m: m["type"] == "snapshot", what="the snapshot from B")
            cookie = await login_cookie(a, scaleout_db.username, scaleout_db.password)
            everything = await Follower(rest_a, "/events").start()
            one = await Follower(rest_a, f"/sessions/{on_b.session_id}/events").start()
            streams += [everything, one]
            async with listening(a, on_b.session_id, cookie) as (listener, started):
                assert started["type"] == "listen.started"
                a.proc.terminate()
                async with asyncio.timeout(10):
                    await everything.wait_ended()
                    await one.wait_ended()
                    await console.reader
                    with pytest.raises(websockets.ConnectionClosed):
                        while True:
                            await listener.recv()
            assert a.proc.wait(10) == 0
            for socket in (console.socket, listener):
                assert socket.close_code == 1012, (socket.close_code, socket.close_reason)
                assert "restarting" in socket.close_reason
            for stream in streams:
                assert stream.error is None, f"{stream.path} was cut: {stream.error!r}"
                assert any("restarting" in comment for comment in stream.comments), stream.comments
            # Picked up at B after the last event A gave: A's session's end, once in all.
            resumed = await Follower(
                rest_b, "/events", headers={"Last-Event-ID": everything.events[-1].id}
            ).start()
            streams.append(resumed)

            def ends() -> list[str]:
                return [
                    e.data["session"]["id"] for e in everything.events + resumed.events
                    if e.data["type"] == "session.ended"
                ]

            await resumed.until(lambda _: ends(), what="the end of A's session")
            assert ends() == [on_a.session_id]
            assert (await rest_b.get(f"/sessions/{on_a.session_id}")).json()["end_reason"] == (
                "server_shutdown"
            )
            assert not on_b.reader.done(), "B's caller goes on"
        finally:
            for stream in streams:
                await stream.close()
            if console is not None:
                await console.close()
            await on_a.close()
            await on_b.close()
    assert not crashes(a, b), crashes(a, b)
