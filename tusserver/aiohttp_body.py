"""The aiohttp front door's request body: aiohttp's StreamReader as a BodyStream, with
the buffering of each body bounded at the reader and at the socket."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from aiohttp import StreamReader

# What aiohttp and the event loop may hold of one body before the store takes it: the
# reader stops reading the socket beyond 2 x READ_BUFFER, and one socket read adds at most
# SOCKET_READ. Their defaults (2 x 64 KiB, and 256 KiB on asyncio, 256 KB on uvloop) would
# be most of a PATCH's RAM, so 500 bodies in flight would hold hundreds of MiB. Each read
# still takes 64 KiB.
READ_BUFFER = 1 << 14
SOCKET_READ = 1 << 16
# Except for the first FAST_BODIES bodies in flight, which read FAST_SOCKET_READ at a time:
# each read costs the same Python work whatever its size, and at 64 KiB one large upload
# ran at half the speed. They hold up to 32 + 256 KiB each here (and see the file store's
# FAST_WRITERS), while many bodies in flight keep their small RAM each.
FAST_BODIES = 8
FAST_SOCKET_READ = 1 << 18
_fast_bodies = 0


class AiohttpContent:
    """A request's StreamReader as the core's BodyStream."""

    def __init__(self, content: StreamReader) -> None:
        self.content = content

    async def readany(self) -> bytes:
        return await self.content.readany()

    def set_exception(self, exc: BaseException) -> None:
        self.content.set_exception(exc)

    def buffered(self) -> bytes:
        return _buffered(self.content)

    def bound(self) -> None:
        bound_buffering(self.content)

    def fast_reads(self) -> object | None:
        return _take_fast_reads(self.content)

    def slow_reads(self, token: object) -> None:
        _give_back_fast_reads(token)


def bound_buffering(content: StreamReader) -> None:
    """Lower what aiohttp's reader and the socket transport buffer of this body (see
    READ_BUFFER); the earlier, the better. Neither has a public knob per request (the
    server's `read_bufsize` is the reader's, for every request); without them, the defaults stay."""
    try:
        content._low_water = min(content._low_water, READ_BUFFER)
        content._high_water = min(content._high_water, 2 * READ_BUFFER)
    except AttributeError:
        pass
    reads = _socket_reads(content)
    if reads is not None:
        reads.max_size = min(reads.max_size, SOCKET_READ)


def _take_fast_reads(content: StreamReader):
    """Raise this body's socket reads to FAST_SOCKET_READ if fewer than FAST_BODIES
    bodies have; returns what to hand back to _give_back_fast_reads, or None."""
    global _fast_bodies
    reads = _socket_reads(content)
    if _fast_bodies >= FAST_BODIES or reads is None:
        return None
    _fast_bodies += 1
    reads.max_size = FAST_SOCKET_READ
    return reads


def _give_back_fast_reads(reads) -> None:
    global _fast_bodies
    _fast_bodies -= 1
    reads.max_size = SOCKET_READ  # the connection may carry another body


def _socket_reads(content: StreamReader) -> Any:
    """What sets the size of one socket read on this body's connection, as `max_size`:
    asyncio's transport, or on uvloop, a _BoundedReads put in front of aiohttp's protocol.
    None for other transports (TLS, say), which keep their defaults."""
    protocol = getattr(content, "_protocol", None)
    transport: Any = getattr(protocol, "transport", None)
    if isinstance(getattr(transport, "max_size", None), int):
        return transport
    if type(transport).__module__ != "uvloop.loop" or type(transport).__name__ not in ("TCPTransport", "UnixTransport"):
        return None
    current = transport.get_protocol()
    if isinstance(current, _BoundedReads):
        return current
    if current is not protocol:
        return None
    bounded = _BoundedReads(protocol)
    transport.set_protocol(bounded)  # uvloop restarts a running read with the buffered callbacks
    return bounded


class _BoundedReads(asyncio.BufferedProtocol):
    """aiohttp's protocol, fed by reads of at most `max_size` bytes. uvloop reads a plain
    protocol's socket 256 KB at a time into a new bytes object, and has no max_size to lower
    as asyncio has: a buffered protocol is the one way to size its reads. Each read still
    becomes one bytes object for aiohttp, as uvloop's own reads do."""

    def __init__(self, protocol: asyncio.Protocol) -> None:
        self.protocol = protocol
        self.max_size = SOCKET_READ
        self._view = _read_buffer()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view[: self.max_size]

    def buffer_updated(self, nbytes: int) -> None:
        self.protocol.data_received(self._view[:nbytes].tobytes())

    def eof_received(self) -> bool | None:
        return self.protocol.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        self.protocol.pause_writing()

    def resume_writing(self) -> None:
        self.protocol.resume_writing()


_read_buffers = threading.local()


def _read_buffer() -> memoryview:
    """The buffer every _BoundedReads of this thread's loop reads into: a read is copied out
    before the loop reads any other socket, and a loop runs in one thread."""
    view = getattr(_read_buffers, "view", None)
    if view is None:
        view = _read_buffers.view = memoryview(bytearray(max(SOCKET_READ, FAST_SOCKET_READ)))
    return view


def _buffered(content: StreamReader) -> bytes:
    """Bytes waiting in `content` even though it has an exception set. aiohttp has no
    public way to reach them, so this uses its private reader and degrades to nothing."""
    read_nowait = getattr(content, "_read_nowait", None)
    if read_nowait is None:
        return b""
    try:
        return read_nowait(-1)
    except Exception:
        return b""
