"""Per-upload locks. A request that needs a held lock asks the holder to let go
(the holder stops reading its body, keeps what it has, and releases), then waits
a bounded time. Background jobs (expiry) never ask: they `try_lock`, and take a
held lock as a sign that the upload is alive.

Versions: an upload's state changes only under its lock, so a locker that numbers each
taking of a lock tells a store whether state it read earlier is still current (see
`held_version` and `Locker.version`). The numbers come from one counter per locker and are
never reused, so a forgotten number can only make a cached state look stale, never current."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from contextvars import ContextVar
from typing import Protocol

ReleaseCallback = Callable[[], None]

# upload id -> (the version before this task took the lock, the version it made), for the
# locks the current task holds.
_HELD: ContextVar[dict[str, tuple[int | None, int]] | None] = ContextVar("tus_held_versions", default=None)
VERSIONS_KEPT = 10_000  # ids whose version a MemoryLocker remembers (about 2 MiB)
# One series for every MemoryLocker of the process: a number one locker gave can never
# look current to a store that another locker's number (or none) was meant for.
_NUMBERS = itertools.count(1)


def held_version(upload_id: str) -> tuple[int | None, int] | None:
    """(the version before, the version now) if the current task holds the upload's lock
    from a locker that numbers them; else None."""
    return (_HELD.get() or {}).get(upload_id)


@asynccontextmanager
async def holding_version(upload_id: str, before: int | None, now: int) -> AsyncIterator[None]:
    """Within the block, held_version(upload_id) is (before, now): for a locker that just took
    the upload's lock and moved its version from `before` to `now`."""
    token = _HELD.set({**(_HELD.get() or {}), upload_id: (before, now)})
    try:
        yield
    finally:
        _HELD.reset(token)


# upload id -> the version a request read from the locker while nobody held the lock, so
# the store need not ask again (with Redis, a round trip) within the same request.
_SEEN: ContextVar[dict[str, int] | None] = ContextVar("tus_seen_versions", default=None)


def seen_version(upload_id: str) -> int | None:
    return (_SEEN.get() or {}).get(upload_id)


@contextmanager
def seeing_version(upload_id: str, version: int) -> Iterator[None]:
    """Within the block, seen_version(upload_id) is `version`, which Locker.version just gave."""
    token = _SEEN.set({**(_SEEN.get() or {}), upload_id: version})
    try:
        yield
    finally:
        _SEEN.reset(token)


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

    async def version(self, upload_id: str) -> int | None:
        """The upload's version while nobody holds or awaits its lock: state read after
        this call and found under the same version later is still current. 0 when nobody
        holds it but it has no version (no state may be trusted or kept); None when the lock
        is held or awaited, or the locker cannot tell."""
