"""What a store is: small protocols, one per capability. The server advertises an
extension only when its store implements the protocol behind it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import BinaryIO, Protocol, runtime_checkable

from .. import storage_errors as storage
from ..info import SCHEMA_VERSION, UploadInfo
from ..locking import Locker
from ..placement import Placement

log = logging.getLogger("tusserver.stores")


CorruptInfo = storage.Corrupt


def parse_info(upload_id: str, data: bytes) -> UploadInfo:
    """The `.info` record of `upload_id`; raises (and logs, naming the id) CorruptInfo."""
    try:
        info = UploadInfo.from_json(data)
        if (
            not isinstance(info.id, str)
            or not isinstance(info.storage, dict)
            or not isinstance(info.owner, (str, type(None)))
            or not isinstance(info.server_metadata, dict)
        ):
            raise ValueError("fields of the wrong type")
        return info
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        reason = f"{type(exc).__name__}: {exc}" if data else "empty file"
        log.error(
            "upload %s: .info is unreadable (%s; this version reads schema %d); left for an operator",
            upload_id,
            reason,
            SCHEMA_VERSION,
        )
        raise CorruptInfo(upload_id, reason) from None


@dataclass(frozen=True)
class FileDownload:
    """A finished upload that is a local file; sent as `stream_file(path)` is."""

    path: str


@dataclass(frozen=True)
class StreamDownload:
    """A finished upload served by streaming: `async with open(start, end) as chunks`
    (end exclusive). Entering makes the first storage call, before any response header
    is sent, so a missing object raises storage.NotFound and an unavailable store
    storage.Unavailable while an error answer is still possible. Iterating
    `chunks` raises storage.StorageError only."""

    size: int
    etag: str | None
    open: Callable[[int, int], AbstractAsyncContextManager[AsyncIterator[bytes]]]


@dataclass(frozen=True)
class RedirectDownload:
    url: str


Download = FileDownload | StreamDownload | RedirectDownload

FILE_CHUNK = 1 << 20  # bytes read from a local file per worker-thread call


async def stream_file(path: str) -> StreamDownload:
    """A local file as a StreamDownload, read a chunk at a time in a worker thread. So a
    file is sent like any other download, under the stall timeout: aiohttp's sendfile
    waits for ever on a client that stops reading. The ETag is FileResponse's."""
    try:
        stat = await asyncio.to_thread(os.stat, path)
    except OSError as exc:
        raise _file_error(exc) from None

    @contextlib.asynccontextmanager
    async def open_range(start: int, end: int) -> AsyncIterator[AsyncIterator[bytes]]:
        try:
            file = await asyncio.to_thread(open, path, "rb")
        except OSError as exc:
            raise _file_error(exc) from None
        try:
            yield _read_file(file, start, end)
        finally:
            file.close()

    return StreamDownload(stat.st_size, f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"', open_range)


async def _read_file(file: BinaryIO, start: int, end: int) -> AsyncIterator[bytes]:
    try:
        await asyncio.to_thread(file.seek, start)
        while start < end:
            chunk = await asyncio.to_thread(file.read, min(FILE_CHUNK, end - start))
            if not chunk:
                raise storage.Unavailable(f"the file ended at {start} of {end} bytes")
            start += len(chunk)
            yield chunk
    except OSError as exc:
        raise storage.Unavailable(f"reading the file failed: {exc}") from None


def _file_error(exc: OSError) -> storage.StorageError:
    if isinstance(exc, (FileNotFoundError, IsADirectoryError)):
        return storage.NotFound()
    log.warning("cannot open %s: %s", exc.filename, exc)
    return storage.Unavailable()


@runtime_checkable
class Store(Protocol):
    """Core tus: create uploads, append bytes, report state, finish."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def create(self, info: UploadInfo, placement: Placement | None = None) -> None:
        """Persist a new, empty upload. `info.storage` may be filled in. Atomic per id:
        raises storage.IdTaken when an upload with `info.id` exists. `placement`: where
        the finished bytes go (None: under the id); storage.KeyTaken when another upload
        in progress has its key, storage.BadPlacement when the store may not use it."""

    async def get_info(self, upload_id: str) -> UploadInfo:
        """The upload's state with `offset` derived from what is stored.
        Raises storage.NotFound for an unknown id."""

    async def append(
        self, info: UploadInfo, body: AsyncIterable[bytes], *, atomic: bool = False
    ) -> int:
        """Store `body` at `info.offset` and return the new offset.

        If `body` raises, every byte it yielded before is kept (the exception then
        propagates), unless `atomic`, in which case nothing is kept."""

    async def finish(self, info: UploadInfo) -> None:
        """Mark a fully received upload finished (and assemble it, where needed)."""

    async def save_info(self, info: UploadInfo) -> None:
        """Persist `info` (its `.info` record) as it is now."""

    async def download(self, info: UploadInfo) -> Download:
        """How to serve the finished upload. Bytes that are gone raise storage.NotFound
        here, or when a StreamDownload is opened; either way before any header is sent."""


@runtime_checkable
class Upload(Protocol):
    """One upload, opened for a caller that holds the upload's lock, and valid only until it
    releases it (another request may change the upload then): what the session read when it
    was opened is trusted, not read again. Its methods keep `info` current."""

    info: UploadInfo

    async def append(self, body: AsyncIterable[bytes], *, atomic: bool = False) -> int:
        """Store `body` at `info.offset` and return the new offset (also set in `info`).
        The bytes `body` yielded before it raised are kept, as by Store.append."""

    async def set_length(self, length: int) -> None:
        """Set a deferred length (the store must be a LengthDeferringStore) and save `.info`."""

    async def save_info(self) -> None:
        """Persist `info` (its `.info` record) as it is now."""

    async def finish(self) -> None:
        """Mark the fully received upload finished (and assemble it, where needed)."""


@runtime_checkable
class SessionStore(Protocol):
    async def open(self, upload_id: str) -> Upload:
        """The upload, for a caller that holds its lock; reads its state once.
        Raises storage.NotFound for an unknown id."""


class StoreUpload:
    """An Upload over a store's per-call methods, for a store that keeps nothing between
    them (the file store; any Store without `open`)."""

    def __init__(self, store: Store, info: UploadInfo) -> None:
        self.store = store
        self.info = info

    async def append(self, body: AsyncIterable[bytes], *, atomic: bool = False) -> int:
        self.info.offset = await self.store.append(self.info, body, atomic=atomic)
        return self.info.offset

    async def set_length(self, length: int) -> None:
        assert isinstance(self.store, LengthDeferringStore)
        await self.store.set_length(self.info, length)

    async def save_info(self) -> None:
        await self.store.save_info(self.info)

    async def finish(self) -> None:
        await self.store.finish(self.info)


async def open_upload(store: Store, upload_id: str) -> Upload:
    """`store.open(upload_id)`, or a StoreUpload for a store without sessions. The caller
    holds the upload's lock while it uses the result."""
    if isinstance(store, SessionStore):
        return await store.open(upload_id)
    return StoreUpload(store, await store.get_info(upload_id))


@runtime_checkable
class TerminatingStore(Protocol):
    async def terminate(self, info: UploadInfo) -> None:
        """Remove every trace of the upload. Idempotent."""


@runtime_checkable
class ReleasingStore(Protocol):
    async def release(self, info: UploadInfo) -> None:
        """Forget the finished upload `info`: its state goes, its bytes stay at their key
        (keep_info_after_finish = false). Afterwards the id is unknown."""


@runtime_checkable
class LengthDeferringStore(Protocol):
    async def set_length(self, info: UploadInfo, length: int) -> None: ...


@runtime_checkable
class ConcatenatingStore(Protocol):
    async def concatenate(self, final: UploadInfo, partials: list[UploadInfo]) -> None:
        """Build `final` from finished `partials`, in order, and mark it finished."""

    # A final upload created before its partials finish is found again from the partial
    # through a link, so that finishing the last partial (on any instance) completes it.
    async def link_final(self, partial_id: str, final_id: str) -> None: ...

    async def finals_of(self, partial_id: str) -> list[str]: ...

    async def unlink_final(self, partial_id: str, final_id: str) -> None: ...


@runtime_checkable
class ExpiringStore(Protocol):
    """What expiry needs. A pass must not cost a read per stored upload: finished uploads
    (which never expire by default) are skipped by listing an index of unfinished ones."""

    def list_uploads(self) -> AsyncIterator[str]:
        """Every upload id the store holds, from a listing alone."""

    def list_unfinished(self, created_before: float) -> AsyncIterator[str]:
        """Ids in the store's index of unfinished uploads whose entry was made before
        `created_before`, from a listing alone. An entry may outlive the unfinished state
        (a crash, a concatenation): the caller drops it with `forget_unfinished`. On
        storage written by a version without the index, the first call builds it,
        reading every `.info` once."""

    async def forget_unfinished(self, upload_id: str) -> None: ...

    async def peek_info(self, upload_id: str) -> UploadInfo:
        """The `.info` record alone, in one read (`offset` not derived). Raises
        storage.NotFound or CorruptInfo."""

    async def clean_orphans(self, older_than: float) -> int:
        """Remove storage debris older than a timestamp that is recognisably this
        server's own (e.g. multipart uploads no `.info` records). Returns a count."""


@runtime_checkable
class OwnerIndexStore(Store, Protocol):
    """Keeps an index per owner (see owners.py): entry names sort newest first, so that
    listing an owner's uploads costs what the owner holds, not what the store holds."""

    async def peek_info(self, upload_id: str) -> UploadInfo:
        """The `.info` record as stored, in one read: `offset` is not derived (0).
        Raises storage.NotFound for an unknown id."""

    async def index_upload(self, info: UploadInfo) -> None:
        """Write the index entries of `info` (before the upload is created)."""

    async def list_index(self, key: str, after: str | None, limit: int) -> list[str]:
        """At most `limit` entry names of one index, in order, after the entry `after`."""

    async def unindex(self, key: str, entry: str) -> None:
        """Remove one entry. Idempotent."""


@runtime_checkable
class VersionedStore(Protocol):
    def use_versions(self, locker: Locker) -> None:
        """Trust state read or written earlier while `locker`'s versions say it is current."""


class StoreStartError(Exception):
    """start() found the store unusable as configured; the message tells the operator why."""


@runtime_checkable
class ReadyStore(Protocol):
    async def ready(self) -> bool:
        """Whether the storage answers right now (for /readyz); cheap and without side effects."""


def store_extensions(store: object) -> list[str]:
    extensions = ["creation", "creation-with-upload"]
    if isinstance(store, LengthDeferringStore):
        extensions.append("creation-defer-length")
    if isinstance(store, TerminatingStore):
        extensions.append("termination")
    if isinstance(store, ConcatenatingStore):
        extensions += ["concatenation", "concatenation-unfinished"]
    return extensions
