"""The PATCH body as the store sees it: a byte stream cut at the upload's length,
hashed on the fly when a checksum was sent, and stoppable from outside."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import StreamReader

from . import errors
from .errors import TusError
from .protocol import Checksum

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


class ClientGone(Exception):
    """The client stopped sending before the body was complete."""


class ReleaseRequested(Exception):
    """Another request for this upload asked us to let go of its lock."""


class _Crc32:
    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


def new_hasher(algorithm: str):
    return _Crc32() if algorithm == "crc32" else hashlib.new(algorithm)


class Body:
    """Iterate to receive the body. `received` counts the bytes yielded so far."""

    def __init__(
        self,
        content: StreamReader,
        limit: int | None,
        checksum: Checksum | None = None,
        read_timeout: float | None = None,
        min_rate: int | None = None,
        rate_window: float = 60.0,
    ) -> None:
        self._content = content
        bound_buffering(content)
        self._limit = limit
        self._checksum = checksum
        self._hasher = new_hasher(checksum.algorithm) if checksum else None
        self._read_timeout = read_timeout
        self._min_rate = min_rate
        self._rate_window = rate_window
        # When the pending read of the client's bytes began; None while the store is busy
        # (waiting for S3, for an upload slot): only the client's silence is idleness, and
        # only time spent waiting for the client counts against its rate.
        self._reading_since: float | None = None
        self._waited = 0.0  # seconds the finished reads waited for the client
        self.received = 0
        self.overflowed = False
        self.stop_reason: Exception | None = None

    def stop(self, reason: Exception) -> None:
        """Stop receiving: a pending or future read raises `reason` inside the store."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self._content.set_exception(reason)

    async def _watch(self) -> None:
        """Stop the body when the client is silent for read_timeout, or sends fewer than
        min_rate x rate_window bytes in a window of rate_window seconds of waiting for it."""
        window_waited, window_received = 0.0, 0
        while self.stop_reason is None:
            since = self._reading_since
            idle = 0.0 if since is None else time.monotonic() - since
            naps = []
            if self._read_timeout:
                if idle >= self._read_timeout:
                    self.stop(TusError(errors.READ_TIMEOUT))
                    return
                naps.append(self._read_timeout - idle)
            if self._min_rate:
                waited = self._waited + idle - window_waited
                if waited >= self._rate_window:
                    got = self.received - window_received
                    if got < self._min_rate * self._rate_window:
                        self.stop(
                            TusError(
                                errors.UPLOAD_TOO_SLOW,
                                f"{got} bytes in {waited:.0f} s; the minimum is {self._min_rate} bytes/s",
                            )
                        )
                        return
                    window_waited, window_received = window_waited + waited, self.received
                    waited = 0.0
                naps.append(self._rate_window - waited)
            # Exact either way: a read that starts after this check times out no earlier.
            await asyncio.sleep(min(naps))

    async def __aiter__(self) -> AsyncIterator[bytes]:
        watchdog = None
        if self._read_timeout or self._min_rate:
            watchdog = asyncio.ensure_future(self._watch())
        fast = _take_fast_reads(self._content)
        try:
            async for chunk in self._chunks():
                yield chunk
        finally:
            if watchdog is not None:
                watchdog.cancel()
            if fast is not None:
                _give_back_fast_reads(fast)

    async def _read(self) -> tuple[bytes, BaseException | None]:
        """The next chunk, or on failure the bytes that had already arrived and the error."""
        self._reading_since = time.monotonic()
        try:
            return await self._content.readany(), None
        except (TusError, ReleaseRequested, asyncio.CancelledError) as exc:
            # Cancelled: aiohttp with handler_cancellation cancels on disconnect.
            error: BaseException = exc
        except Exception as exc:  # aiohttp reports a dropped client in several ways
            error = self.stop_reason or ClientGone(str(exc) or type(exc).__name__)
        finally:
            self._waited += time.monotonic() - self._reading_since
            self._reading_since = None
        # aiohttp raises before handing over bytes that arrived just before the
        # connection dropped; they were received, so they are kept.
        return _buffered(self._content), error

    async def _chunks(self) -> AsyncIterator[bytes]:
        while True:
            chunk, error = await self._read()
            if self._limit is not None and self.received + len(chunk) > self._limit:
                chunk = chunk[: self._limit - self.received]
                self.overflowed = True
            if chunk:
                if self._hasher is not None:
                    self._hasher.update(chunk)
                self.received += len(chunk)
                yield chunk
            if error is not None:
                raise error
            if not chunk or self.overflowed:
                break
        if self._checksum is not None and self._hasher is not None and self._hasher.digest() != self._checksum.digest:
            raise TusError(errors.CHECKSUM_MISMATCH)


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
