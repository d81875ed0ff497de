"""A graceful stop (SIGTERM) of one of two processes, seen by the operators it was serving:
its console and listen-in sockets are closed saying why (1012, service restart) and its event
streams end cleanly, so that pages and scripts reconnect through another process, where they
find the stopped process's sessions ended `server_shutdown` and the other's still live."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import re
import socket
import threading

import httpx
import pytest
import websockets

from tests.scaleout.conftest import cluster_env
from tests.scaleout.test_listen_two_processes import listening, login_cookie
from tests.scaleout.test_two_processes import Console, crashes
from tests.support.callers import SocketCaller, until_live
from tests.support.servers import start_side_by_side
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


class DeafUpstream:
    """A Realtime upstream that opens the session, then hears nothing more, not even a close:
    a session's end waits for its close handshake (the relay's close timeout, 2 s)."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"ws://127.0.0.1:{self.server.getsockname()[1]}/v1"
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = self.server.accept()
                self.connections.append(connection)
                request = b""
                while b"\r\n\r\n" not in request:
                    request += connection.recv(4096)
                key = re.search(rb"(?i)sec-websocket-key: *(\S+)", request).group(1)
                accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
                connection.sendall(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
                )
                created = json.dumps({
                    "type": "session.created", "event_id": "event_1",
                    "session": {"type": "realtime", "object": "realtime.session",
                                "id": f"sess_deaf{len(self.connections)}", "model": "gpt-realtime",
                                "instructions": ""},
                }).encode()
                connection.sendall(bytes([0x81, 126]) + len(created).to_bytes(2, "big") + created)

    def close(self) -> None:
        self.server.close()
        for connection in self.connections:
            connection.close()


WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def test_a_caller_arriving_while_the_process_stops_is_sent_elsewhere(
    scaleout_db, redis_server, simulator
):
    """A load balancer goes on sending callers to a process for a moment after it was told to
    stop, while its sessions end (here held open: the upstream never answers their close).
    Such a caller is refused at once (1012, as the callers it had), not taken on and then cut
    when the process exits, its session left for another process's sweep."""
    upstream = DeafUpstream()
    env = cluster_env(scaleout_db, redis_server, simulator, OC_UPSTREAM_URL=upstream.url)
    [a] = start_side_by_side(env)
    headers = {"Authorization": f"Bearer {scaleout_db.token}"}
    url = f"{a.ws_base}/realtime?model=gpt-realtime"
    try:
        async with websockets.connect(url, additional_headers=headers) as first:
            assert json.loads(await first.recv())["type"] == "session.created"
            a.proc.terminate()
            async with asyncio.timeout(5):  # the stop has begun: the first caller was told
                with pytest.raises(websockets.ConnectionClosed):
                    await first.recv()
            assert first.close_code == 1012
            assert a.proc.poll() is None, "the first session's end holds the stop"
            async with httpx.AsyncClient(base_url=a.http_url) as http:
                ready = await http.get("/readyz")
            assert ready.status_code == 503 and ready.json()["process"] == "stopping", ready.text
            async with websockets.connect(url, additional_headers=headers) as late:
                async with asyncio.timeout(3):
                    said = json.loads(await late.recv())
                    with pytest.raises(websockets.ConnectionClosed):
                        await late.recv()
            assert said["type"] == "error" and said["error"]["code"] == "server_restarting", said
            assert late.close_code == 1012, (late.close_code, late.close_reason)
    finally:
        a.stop()
        upstream.close()
