"""The HTTP endpoint bounds how long a client may take to send its request line and headers: a
client trickling its headers is disconnected without an answer, and meanwhile other clients
are served. Real sockets on 127.0.0.1 against the aiohttp-based ``HttpServer``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from buildingd.service.http import HttpServer, Request, Response

HEADER_TIMEOUT_S = 1.0
TRICKLE_BYTES = 300  # one every 0.1 s: 30 s, far past the deadline, before the test gives up


@pytest.fixture
async def server() -> AsyncIterator[HttpServer]:
    async def hello(_: Request) -> Response:
        return Response.json({"hello": True})

    srv = HttpServer("127.0.0.1", 0, None, header_timeout_s=HEADER_TIMEOUT_S)
    srv.route("GET", "/hello", hello)
    await srv.start()
    yield srv
    await srv.stop()


async def get_hello(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
    reply = await reader.read()
    writer.close()
    return reply


async def test_a_client_trickling_headers_is_cut_off_and_others_are_served(
    server: HttpServer,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    closed = asyncio.create_task(read_until_closed(reader))
    sent = 0
    served_meanwhile = b""
    try:
        while not closed.done() and sent < TRICKLE_BYTES:
            writer.write(b"a")  # one header value, a byte at a time
            await writer.drain()
            sent += 1
            if sent == 3:  # the slow client holds its connection; another one is answered
                served_meanwhile = await get_hello(server.port)
            await asyncio.wait({closed}, timeout=0.1)
    except ConnectionError:
        pass  # the server closed while we wrote: that is the point
    finally:
        writer.close()
    assert sent < TRICKLE_BYTES, f"still connected after {sent} bytes of a header"
    answered = await asyncio.wait_for(closed, 30)
    assert answered == b"", f"the slow client got an answer: {answered[:80]!r}"
    assert served_meanwhile.startswith(b"HTTP/1.1 200"), served_meanwhile[:80]


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """What the server sent before it closed the connection."""
    try:
        return await reader.read()
    except ConnectionError:
        return b""


async def test_a_client_sending_its_headers_in_pieces_within_the_deadline_is_answered(
    server: HttpServer,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    for piece in (b"GET /hello HTTP/1.1\r\n", b"Host: x\r\n", b"X-A: b\r\n", b"\r\n"):
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0)
    reply = await reader.read()
    writer.close()
    assert reply.startswith(b"HTTP/1.1 200") and b'"hello": true' in reply, reply[:200]
