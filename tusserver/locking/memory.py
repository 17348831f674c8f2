"""Per-upload locks and their versions within one process."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field

from .. import errors
from ..errors import TusError
from .base import _NUMBERS, VERSIONS_KEPT, ReleaseCallback, holding_version


@dataclass
class _Entry:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0
    on_release: ReleaseCallback | None = None


class MemoryLocker:
    """Locks for a single server process. Its versions hold only when every change to
    the uploads goes through it: one instance, or instances sharing it in one process."""

    def __init__(self, timeout: float = 3.0) -> None:
        self.timeout = timeout
        self._entries: dict[str, _Entry] = {}
        self._leases: dict[str, float] = {}  # name -> when it ends (loop time)
        self._versions: OrderedDict[str, int] = OrderedDict()

    async def version(self, upload_id: str) -> int | None:
        if upload_id in self._entries:
            return None
        number = self._versions.get(upload_id)
        if number is None:  # not seen since it was forgotten: a new number
            number = self._renumber(upload_id)
        return number

    def _renumber(self, upload_id: str) -> int:
        number = self._versions[upload_id] = next(_NUMBERS)
        self._versions.move_to_end(upload_id)
        while len(self._versions) > VERSIONS_KEPT:
            self._versions.popitem(last=False)
        return number

    def _bump(self, upload_id: str) -> AbstractAsyncContextManager[None]:
        before = self._versions.get(upload_id)
        return holding_version(upload_id, before, self._renumber(upload_id))

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _entry(self, upload_id: str) -> _Entry:
        """The upload's entry, with one more user (see _leave)."""
        entry = self._entries.setdefault(upload_id, _Entry())
        entry.users += 1
        return entry

    def _leave(self, upload_id: str, entry: _Entry) -> None:
        entry.users -= 1
        if entry.users == 0:
            del self._entries[upload_id]

    @asynccontextmanager
    async def lock(
        self, upload_id: str, on_release: ReleaseCallback | None = None
    ) -> AsyncIterator[None]:
        entry = self._entry(upload_id)
        try:
            if entry.lock.locked() and entry.on_release is not None:
                entry.on_release()
            try:
                await asyncio.wait_for(entry.lock.acquire(), self.timeout)
            except asyncio.TimeoutError:
                raise TusError(errors.LOCKED, headers={"Retry-After": "1"}) from None
            entry.on_release = on_release
            try:
                async with self._bump(upload_id):
                    yield
            finally:
                entry.on_release = None
                entry.lock.release()
        finally:
            self._leave(upload_id, entry)

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
        entry = self._entry(upload_id)
        await entry.lock.acquire()  # a new lock: taken without suspending
        try:
            async with self._bump(upload_id):
                yield True
        finally:
            entry.lock.release()
            self._leave(upload_id, entry)
