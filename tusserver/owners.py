"""Owners: who an upload belongs to, who may use it, the per-owner index that lists an
owner's uploads newest first, and per-owner quotas.

The index (names in stores/owner_index.py): one entry per upload under `all` and under its
owner's hash, sorted newest first. Entries are written before the upload is created and
removed when it is terminated (DELETE, expiry); an entry whose upload is gone is skipped,
and removed once it is old enough not to belong to a creation under way.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from . import errors
from . import storage_errors as storage
from .config import Config
from .errors import TusError
from .info import UploadInfo
from .load import ConfigError
from .stores.base import CorruptInfo, OwnerIndexStore
from .stores.owner_index import entry_created, entry_name, entry_upload, index_keys, is_entry, owner_key

# An entry without its upload is only removed when older than this: a younger one may
# belong to a creation that has written its entry and not yet its `.info`.
STALE_AFTER = 600.0
LOAD_CONCURRENCY = 16  # `.info` reads at once for one listing or quota check
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


@dataclass(frozen=True)
class Caller:
    """Who a request comes from, by its bearer token."""

    subject: str | None
    admin: bool = False
    upload: str | None = None  # the one upload a bound token (a download link) is for

    def may_use(self, info: UploadInfo) -> bool:
        """Its owner, an admin, a token bound to it; anyone for an upload without an owner
        (created by a token without `sub`, or before owners were recorded)."""
        if self.admin or info.owner is None or self.upload == info.id:
            return True
        return self.subject is not None and self.subject == info.owner


@dataclass(frozen=True)
class Quota:
    """What one owner may hold: bytes (lengths, or bytes received while deferred) and uploads.
    None: no limit."""

    bytes: int | None = None
    uploads: int | None = None

    def tighter(self, other: Quota | None) -> Quota:
        if other is None:
            return self
        return Quota(_smaller(self.bytes, other.bytes), _smaller(self.uploads, other.uploads))

    @property
    def limited(self) -> bool:
        return self.bytes is not None or self.uploads is not None


def _smaller(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


@dataclass
class Usage:
    bytes: int = 0
    uploads: int = 0


@dataclass
class _OwnerState:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0
    # upload id -> bytes it counts for while a request of this instance may add to it
    # (a creation under way; a PATCH of a deferred upload, for what its body may bring).
    reserved: dict[str, int] = field(default_factory=dict)


class Owners:
    """The owners' index over a store that keeps one, and the quotas counted from it."""

    def __init__(self, store: object, *, indexing: bool) -> None:
        self.store = store if isinstance(store, OwnerIndexStore) else None
        self.indexing = indexing and self.store is not None
        self._owners: dict[str, _OwnerState] = {}

    # -- the index -----------------------------------------------------------------

    async def add(self, info: UploadInfo) -> None:
        """Write `info`'s entries before the upload is created (a crash then leaves an
        entry without its upload, which listings skip, never an upload missing from them)."""
        if self.indexing:
            assert self.store is not None
            info.listed = True
            await self.store.index_upload(info)

    async def uploads(
        self, key: str, after: str | None, limit: int, now: float | None = None
    ) -> tuple[list[UploadInfo], str | None]:
        """Up to `limit` live uploads of one index, newest first, after the entry `after`;
        and the entry to continue after, or None when the index is read to its end."""
        found: list[UploadInfo] = []
        async for entry, info in self._live(key, after, limit + 1, now):
            if len(found) == limit:
                return found, after
            found.append(info)
            after = entry
        return found, None

    async def _live(
        self, key: str, after: str | None, page: int, now: float | None = None
    ) -> AsyncIterator[tuple[str, UploadInfo]]:
        """(entry, upload) for each live upload of one index, in order, read a page at a time."""
        assert self.store is not None
        slots = asyncio.Semaphore(LOAD_CONCURRENCY)
        while True:
            entries = await self.store.list_index(key, after, page)
            loaded = await asyncio.gather(*(self._load(key, entry, slots, now) for entry in entries))
            for entry, info in zip(entries, loaded, strict=True):
                if info is not None:
                    yield entry, info
            if len(entries) < page:
                return
            after = entries[-1]

    async def _load(self, key: str, entry: str, slots: asyncio.Semaphore, now: float | None) -> UploadInfo | None:
        """The upload of an entry with its offset, or None for an entry to skip (removed
        when it is stale)."""
        assert self.store is not None
        upload_id = entry_upload(entry)
        now = time.time() if now is None else now
        async with slots:
            try:
                info = await self.store.peek_info(upload_id)
                if info.finished:
                    info.offset = info.length or 0
                else:
                    info = await self.store.get_info(upload_id)  # bytes received: derived, not stored
            except CorruptInfo:
                return None  # the store logged it; an operator must look at it
            except storage.NotFound:
                info = None
        if info is None or not info.listed or entry_name(info) != entry or key not in index_keys(info):
            # Its upload is gone, or the id was taken by another (a creation that lost).
            if now - entry_created(entry) > STALE_AFTER:
                await self.store.unindex(key, entry)
            return None
        if info.expired(now):
            return None  # about to be cleaned up (which removes the entry)
        return info

    # -- quotas ----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _owner(self, owner: str) -> AsyncIterator[_OwnerState]:
        state = self._owners.setdefault(owner, _OwnerState())
        state.users += 1
        try:
            yield state
        finally:
            state.users -= 1
            if state.users == 0 and not state.reserved:
                del self._owners[owner]

    async def _usage(self, owner: str, state: _OwnerState) -> Usage:
        """What `owner` holds now: its stored uploads, with what this instance reserved
        in place of what is stored for the same upload."""
        usage = Usage()
        seen = set()
        # Taken before the store is read: a creation that ends meanwhile drops its reservation,
        # and its upload may not have been stored yet when the listing passed it.
        reservations = dict(state.reserved)
        if self.store is not None:
            async for _, info in self._live(owner_key(owner), None, 1000):
                seen.add(info.id)
                usage.uploads += 1
                if info.id in reservations:
                    usage.bytes += reservations[info.id]
                else:
                    usage.bytes += info.length if info.length is not None else info.offset
        for upload_id, reserved in reservations.items():
            if upload_id not in seen:
                usage.uploads += 1
                usage.bytes += reserved
        return usage

    @contextlib.asynccontextmanager
    async def creating(self, info: UploadInfo, quota: Quota) -> AsyncIterator[None]:
        """Hold a place for a new upload within its owner's quota while the block creates
        it; raises TusError(QUOTA_EXCEEDED) when it does not fit."""
        if info.owner is None or not quota.limited or not self.indexing:
            yield
            return
        async with self._owner(info.owner) as state:
            async with state.lock:  # checks and reservations of one owner, one at a time
                usage = await self._usage(info.owner, state)
                if quota.uploads is not None and usage.uploads + 1 > quota.uploads:
                    raise _exceeded(f"quota_uploads is {quota.uploads} uploads, 0 left")
                _check_bytes(quota, usage, info.length or 0)
                state.reserved[info.id] = info.length or 0
            try:
                yield
            finally:
                state.reserved.pop(info.id, None)

    async def set_length(
        self, info: UploadInfo, length: int, quota: Quota, set_length: Callable[[], Awaitable[None]]
    ) -> None:
        """Set a deferred upload's length (await `set_length()`) if it fits its owner's quota."""
        if info.owner is None or quota.bytes is None or not self.indexing:
            await set_length()
            return
        async with self._owner(info.owner) as state, state.lock:
            usage = await self._usage(info.owner, state)
            counted = state.reserved.get(info.id, info.offset)
            _check_bytes(quota, usage, length - counted)
            await set_length()

    @contextlib.asynccontextmanager
    async def receiving(self, info: UploadInfo, quota: Quota, wanted: int | None) -> AsyncIterator[int | None]:
        """For a PATCH of a deferred upload: the bytes its body may bring within the owner's
        quota (None: no limit), held for it until the block ends. `wanted` is the body's
        Content-Length, if known; a body that cannot fit is refused before it is read."""
        if info.owner is None or quota.bytes is None or not self.indexing or info.length is not None:
            yield None
            return
        async with self._owner(info.owner) as state:
            async with state.lock:
                usage = await self._usage(info.owner, state)
                left = max(quota.bytes - usage.bytes, 0)
                if wanted is not None and wanted > left:
                    raise _exceeded(f"quota_bytes is {quota.bytes} bytes, {left} left")
                granted = left if wanted is None else wanted
                state.reserved[info.id] = info.offset + granted
            try:
                yield granted
            finally:
                state.reserved.pop(info.id, None)


def _check_bytes(quota: Quota, usage: Usage, more: int) -> None:
    if quota.bytes is not None and usage.bytes + more > quota.bytes:
        raise _exceeded(f"quota_bytes is {quota.bytes} bytes, {max(quota.bytes - usage.bytes, 0)} left")


def _exceeded(detail: str) -> TusError:
    return TusError(errors.QUOTA_EXCEEDED, detail)


def check_quota_config(config: Config) -> None:
    """Quotas count an owner's uploads, and owners exist only while tokens are on."""
    for name in ("quota_bytes", "quota_uploads"):
        value = getattr(config, name)
        if value is not None and value < 0:
            raise ConfigError(f"{name} must not be negative, got {value}")
        if value is not None and not (config.auth_secret or config.auth_jwks_url):
            raise ConfigError(f"{name} needs tokens (auth_secret or auth_jwks_url): owners are who tokens name")


def parse_limit(value: str | None) -> int:
    """`?limit=` of a listing: 1 to MAX_LIMIT, DEFAULT_LIMIT when absent."""
    if value is None:
        return DEFAULT_LIMIT
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_LIMIT:
        raise TusError(errors.INVALID_QUERY, f"limit must be 1 to {MAX_LIMIT}")
    return int(value)


def parse_cursor(value: str | None) -> str | None:
    if value is None:
        return None
    if not is_entry(value):
        raise TusError(errors.INVALID_QUERY, "cursor is not one this server gave")
    return value
