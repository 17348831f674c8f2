"""A body is read from its socket in pieces of at most aiohttp_body.SOCKET_READ (FAST_SOCKET_READ for
the first few bodies in flight) on asyncio's event loop and on uvloop's, whose transports
have no max_size to lower: what aiohttp holds of a body between two reads of the handler."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest
import uvloop
from aiohttp import web

from tusserver import aiohttp_body as body
from tusserver.body import Body

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
LENGTH = 4 << 20


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_body_is_read_from_its_socket_in_bounded_pieces(loop_kind):
    loop = LOOPS[loop_kind]()
    try:
        plain, fast, fast_slots = loop.run_until_complete(two_bodies())
    finally:
        loop.close()
    # Between two reads of the handler, aiohttp holds what its reader buffers before it
    # stops reading (2 x READ_BUFFER) plus one socket read. uvloop's own reads: 256,000 bytes.
    assert max(plain) <= 2 * body.READ_BUFFER + body.SOCKET_READ, max(plain)
    assert max(fast) <= 2 * body.READ_BUFFER + body.FAST_SOCKET_READ, max(fast)
    assert set(fast_slots) == {1} and body._fast_bodies == 0  # taken while reading, then given back


async def two_bodies() -> tuple[list[int], list[int], list[int]]:
    """The sizes the handler read: of a body read plainly after bound_buffering, then, on
    the same connection, of one read through a Body, which takes a fast slot while it reads
    (and the fast slots taken at each of its reads)."""
    started = asyncio.Event()
    sizes: list[int] = []
    fast_slots: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        body.bound_buffering(request.content)
        started.set()
        digest = hashlib.sha256()
        if request.path == "/plain":
            while chunk := await request.content.readany():
                sizes.append(len(chunk))
                digest.update(chunk)
                await asyncio.sleep(0.002)  # the client's bytes pile up in the socket meanwhile
        else:
            async for chunk in Body(body.AiohttpContent(request.content), LENGTH):
                fast_slots.append(body._fast_bodies)
                sizes.append(len(chunk))
                digest.update(chunk)
                await asyncio.sleep(0.002)
        return web.Response(text=digest.hexdigest())

    app = web.Application()
    app.router.add_post("/{kind}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await post(reader, writer, "/plain", started)
        plain_sizes, sizes[:] = sizes[:], []
        await post(reader, writer, "/fast", started)
        writer.close()
    finally:
        await runner.cleanup()
    return plain_sizes, sizes, fast_slots


async def post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, started: asyncio.Event) -> None:
    """Send LENGTH random bytes once the handler runs, so that every read of them is
    bounded; the handler answers the sha256 of what it read."""
    started.clear()
    data = os.urandom(LENGTH)
    writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {LENGTH}\r\n\r\n".encode())
    await started.wait()
    writer.write(data)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"\r\nContent-Length: 64\r\n" in head
    assert (await reader.readexactly(64)).decode() == hashlib.sha256(data).hexdigest()
