"""The PATCH body as the store sees it: a byte stream cut at the upload's length,
hashed on the fly when a checksum was sent, and stoppable from outside."""

from __future__ import annotations

import asyncio
import hashlib
import time
import zlib
from collections.abc import AsyncIterator

from aiohttp import StreamReader

from . import errors
from .errors import TusError
from .protocol import Checksum


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
    ) -> None:
        self._content = content
        self._limit = limit
        self._checksum = checksum
        self._hasher = new_hasher(checksum.algorithm) if checksum else None
        self._read_timeout = read_timeout
        # When the pending read of the client's bytes began; None while the store is busy
        # (waiting for S3, for an upload slot): only the client's silence is idleness.
        self._reading_since: float | None = None
        self.received = 0
        self.overflowed = False
        self.stop_reason: Exception | None = None

    def stop(self, reason: Exception) -> None:
        """Stop receiving: a pending or future read raises `reason` inside the store."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self._content.set_exception(reason)

    async def _watch_idle(self) -> None:
        assert self._read_timeout is not None
        while self.stop_reason is None:
            since = self._reading_since
            idle = 0.0 if since is None else time.monotonic() - since
            if idle >= self._read_timeout:
                self.stop(TusError(errors.READ_TIMEOUT))
                return
            # Exact either way: a read that starts after this check times out no earlier.
            await asyncio.sleep(self._read_timeout - idle)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        watchdog = None
        if self._read_timeout:
            watchdog = asyncio.ensure_future(self._watch_idle())
        try:
            async for chunk in self._chunks():
                yield chunk
        finally:
            if watchdog is not None:
                watchdog.cancel()

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
        if self._checksum is not None and self._hasher.digest() != self._checksum.digest:
            raise TusError(errors.CHECKSUM_MISMATCH)


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
