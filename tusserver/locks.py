"""Per-upload locks. A request that needs a held lock asks the holder to let go
(the holder stops reading its body, keeps what it has, and releases), then waits
a bounded time. Background jobs (expiry) never ask: they `try_lock`, and take a
held lock as a sign that the upload is alive."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

from . import errors
from .config import Config
from .errors import TusError

ReleaseCallback = Callable[[], None]


class Locker(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def lock(
        self, upload_id: str, on_release: ReleaseCallback | None = None
    ) -> AbstractAsyncContextManager[None]:
        """Hold the upload's lock for the `async with` block; raise TusError(LOCKED)
        if it cannot be had in time. `on_release` is called when another request asks."""

    def try_lock(self, upload_id: str) -> AbstractAsyncContextManager[bool]:
        """Hold the upload's lock for the `async with` block if nobody holds or awaits it
        right now (yields True); else yield False at once, without asking anyone to let go."""

    async def take_lease(self, name: str, seconds: float) -> bool:
        """Take the named lease for `seconds` unless someone (any instance sharing the
        locks) holds it; it is never released early. For "one instance does this job per
        period"."""


@dataclass
class _Entry:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0
    on_release: ReleaseCallback | None = None


class MemoryLocker:
    """Locks for a single server process."""

    def __init__(self, timeout: float = 3.0) -> None:
        self.timeout = timeout
        self._entries: dict[str, _Entry] = {}
        self._leases: dict[str, float] = {}  # name -> when it ends (loop time)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    @asynccontextmanager
    async def lock(
        self, upload_id: str, on_release: ReleaseCallback | None = None
    ) -> AsyncIterator[None]:
        entry = self._entries.setdefault(upload_id, _Entry())
        entry.users += 1
        try:
            if entry.lock.locked() and entry.on_release is not None:
                entry.on_release()
            try:
                await asyncio.wait_for(entry.lock.acquire(), self.timeout)
            except asyncio.TimeoutError:
                raise TusError(errors.LOCKED, headers={"Retry-After": "1"}) from None
            entry.on_release = on_release
            try:
                yield
            finally:
                entry.on_release = None
                entry.lock.release()
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._entries[upload_id]

    async def take_lease(self, name: str, seconds: float) -> bool:
        now = asyncio.get_running_loop().time()
        if self._leases.get(name, now) > now:
            return False
        self._leases[name] = now + seconds
        return True

    @asynccontextmanager
    async def try_lock(self, upload_id: str) -> AsyncIterator[bool]:
        if upload_id in self._entries:  # held, or awaited by a request
            yield False
            return
        entry = self._entries[upload_id] = _Entry(users=1)
        await entry.lock.acquire()  # a new lock: taken without suspending
        try:
            yield True
        finally:
            entry.lock.release()
            entry.users -= 1
            if entry.users == 0:
                del self._entries[upload_id]


def locker_from_config(config: Config) -> Locker:
    """RedisLocker when `redis_url` is set (several instances), else MemoryLocker."""
    if config.redis_url:
        from .redis_lock import RedisLocker

        return RedisLocker.from_config(config)
    return MemoryLocker(config.lock_timeout)
