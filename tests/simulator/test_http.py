"""Plain HTTP on a websockets port (`apps.simulator.http`): non-GET requests are read and
answered by a handler; GET still opens WebSockets."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import serve

from apps.simulator.http import (
    MAX_BODY_BYTES,
    HTTPRequest,
    HTTPResponse,
    connection_factory,
    error_response,
)


@pytest.fixture
async def server():
    """An echo: the handler answers with what it read; a WebSocket echoes messages."""
    seen: list[HTTPRequest] = []

    async def handler(request: HTTPRequest) -> HTTPResponse:
        seen.append(request)
        if request.path == "/boom":
            raise RuntimeError("handler failed")
        return HTTPResponse(
            status=201,
            body=request.method.encode() + b" " + request.body,
            content_type="text/plain",
            headers=[("Location", "/made/1")],
        )

    async def echo(connection):
        async for message in connection:
            await connection.send(message)

    async with serve(echo, "127.0.0.1", 0, create_connection=connection_factory(handler)) as srv:
        port = srv.sockets[0].getsockname()[1]
        yield port, seen


async def exchange(port: int, *pieces: bytes, pause: float = 0.0) -> tuple[int, dict, bytes]:
    """Send the request in `pieces` (a pause between them); read the whole response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        async with asyncio.timeout(5):
            raw = await reader.read()  # the server closes after its answer
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    return int(status_line.split()[1]), headers, body


async def test_post_is_read_whole_and_answered_then_closed(server):
    port, seen = server
    status, headers, body = await exchange(
        port,
        b"POST /v1/things?x=1 HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 11\r\n\r\nhello world",
    )
    assert (status, body) == (201, b"POST hello world")
    assert headers["location"] == "/made/1"
    assert headers["connection"] == "close"
    assert headers["content-length"] == str(len(body)) == "16", "the answer's length, not the request's"
    request = seen[0]
    assert (request.path, request.query, request.content_type) == ("/v1/things", {"x": ["1"]}, "text/plain")


async def test_request_arriving_in_pieces_is_read_whole(server):
    port, seen = server
    status, _, body = await exchange(
        port, b"PO", b"ST /a HTTP/1.1\r\nContent-Le", b"ngth: 6\r\n\r\nabc", b"def", pause=0.02
    )
    assert (status, body) == (201, b"POST abcdef")
    assert len(seen) == 1


async def test_no_body_is_an_empty_body(server):
    port, _ = server
    status, _, body = await exchange(port, b"DELETE /x HTTP/1.1\r\n\r\n")
    assert (status, body) == (201, b"DELETE ")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 411),
        (f"POST /x HTTP/1.1\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode(), 413),
        (b"POST /x HTTP/1.1\r\nContent-Length: many\r\n\r\n", 400),
        (b"POST /x\r\n\r\n", 400),
        (b"BREW /x HTTP/1.1\r\nno colon here\r\n\r\n", 400),
    ],
)
async def test_requests_it_will_not_read_are_refused(server, request_bytes, status):
    port, seen = server
    got, headers, body = await exchange(port, request_bytes)
    assert got == status
    assert headers["content-type"] == "application/json"
    assert b'"error"' in body
    assert seen == []  # the handler never saw it


async def test_a_failing_handler_is_a_500_in_the_service_shape(server):
    port, _ = server
    status, _, body = await exchange(port, b"POST /boom HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert status == 500
    assert b'"server_error"' in body


async def test_websocket_handshakes_still_work_beside_plain_requests(server):
    port, _ = server
    status, _, _ = await exchange(port, b"POST /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert status == 201
    async with ws_connect(f"ws://127.0.0.1:{port}/anything") as ws:
        await ws.send("ping")
        async with asyncio.timeout(5):
            assert await ws.recv() == "ping"


def test_error_response_has_the_service_shape():
    response = error_response(404, "no such call", code="call_not_found", param="call_id")
    assert response.encode().endswith(
        b'{"error": {"message": "no such call", "type": "invalid_request_error", '
        b'"code": "call_not_found", "param": "call_id"}}'
    )


async def test_expect_100_continue_is_answered_before_the_body(server):
    port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    async with asyncio.timeout(5):
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"abc")
        raw = await reader.read()
    writer.close()
    assert raw.startswith(b"HTTP/1.1 201 ") and raw.endswith(b"POST abc")
