"""The PATCH body as the store sees it: a byte stream cut at the upload's length,
hashed on the fly when a checksum was sent, and stoppable from outside."""

from __future__ import annotations

import asyncio
import hashlib
import time
import zlib
from collections.abc import AsyncIterator

from . import errors
from .errors import TusError
from .exchange import BodyStream
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
        content: BodyStream,
        limit: int | None,
        checksum: Checksum | None = None,
        read_timeout: float | None = None,
        min_rate: int | None = None,
        rate_window: float = 60.0,
    ) -> None:
        self._content = content
        content.bound()
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
        fast = self._content.fast_reads()
        try:
            async for chunk in self._chunks():
                yield chunk
        finally:
            if watchdog is not None:
                watchdog.cancel()
            if fast is not None:
                self._content.slow_reads(fast)

    async def _read(self) -> tuple[bytes, BaseException | None]:
        """The next chunk, or on failure the bytes that had already arrived and the error."""
        self._reading_since = time.monotonic()
        try:
            return await self._content.readany(), None
        except (TusError, ReleaseRequested, asyncio.CancelledError) as exc:
            # Cancelled: aiohttp with handler_cancellation cancels on disconnect.
            error: BaseException = exc
        except Exception as exc:  # front doors report a dropped client in several ways
            error = self.stop_reason or ClientGone(str(exc) or type(exc).__name__)
        finally:
            self._waited += time.monotonic() - self._reading_since
            self._reading_since = None
        # aiohttp raises before handing over bytes that arrived just before the
        # connection dropped; they were received, so they are kept.
        return self._content.buffered(), error

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
