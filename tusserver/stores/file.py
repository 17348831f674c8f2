"""Local-disk store: `<dir>/<id>` holds the bytes, `<dir>/<id>.info` the state, and
`<dir>/.owners/<key>/<entry>` (empty files) the owners' index, and `<dir>/.unfinished/<id>`
(empty, removed at finish) the uploads that may expire.

The offset is the data file's size, so whatever reached the disk counts and a
restart loses nothing. Writes run in a worker thread while the event loop reads the
next chunks; a PATCH holds at most a few hundred KiB in RAM, stalled or not.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterable, AsyncIterator

from .. import storage_errors as storage
from ..cancellation import await_to_completion
from ..info import UploadInfo
from ..protocol import is_valid_upload_id
from .base import Download, FileDownload, StoreUpload, parse_info
from .owner_index import entry_name, index_keys, is_entry, is_index_key

WRITE_BATCH = 1 << 16  # bytes of a PATCH waiting for, or in, a write: its RAM in the store
# Except for the first FAST_WRITERS bodies being written, which gather FAST_BATCH (or what
# FLUSH_AFTER brings) and write it joined: one thread hop per MiB rather than one per read,
# which halved one large upload's throughput. They hold up to about 3 MiB each (batch,
# joined copy, write in flight). A stalled body's bytes still reach the disk FLUSH_AFTER later.
FAST_WRITERS = 8
FAST_BATCH = 1 << 20
FLUSH_AFTER = 0.05  # seconds
INLINE_WRITE = 1 << 16  # a chunk this small is written on the event loop when no write runs
_fast_writers = 0
UNFINISHED_DIR = ".unfinished"  # a dot: never an upload id
INDEXED = ".unfinished-indexed"  # written once every unfinished upload has its entry
# Temp files this store names (`_append_atomic`, `save_info`); nothing else is removed.
_OWN_TEMP = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}(\.info)?\.tmp-[0-9a-f]{8}")

log = logging.getLogger("tusserver.stores")


class FileStore:
    def __init__(self, directory: str) -> None:
        self.directory = os.path.abspath(directory)

    def _path(self, upload_id: str, suffix: str = "") -> str:
        if not is_valid_upload_id(upload_id):  # defence in depth; handlers validate too
            raise storage.NotFound()
        return os.path.join(self.directory, upload_id + suffix)

    async def start(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        # An unwritable directory stops the server at start-up, naming the directory.
        with tempfile.TemporaryFile(dir=self.directory):
            pass
        # Debris of a crash: half-written .info files and unverified PATCH spools.
        for name in os.listdir(self.directory):
            if _OWN_TEMP.fullmatch(name):
                _remove(os.path.join(self.directory, name))

    async def close(self) -> None:
        return None

    async def ready(self) -> bool:
        """Whether the directory exists and is writable."""
        return os.path.isdir(self.directory) and os.access(self.directory, os.W_OK | os.X_OK)

    async def save_info(self, info: UploadInfo) -> None:
        final = self._path(info.id, ".info")
        tmp = f"{final}.tmp-{secrets.token_hex(4)}"
        try:
            with open(tmp, "wb") as f:
                f.write(info.to_json())
            os.replace(tmp, final)
        finally:
            _remove(tmp)

    async def create(self, info: UploadInfo) -> None:
        path = self._path(info.id)
        info.storage = {"type": "file", "path": path}
        try:
            with open(path, "xb"):  # O_EXCL: of two creations of one id, one wins
                pass
        except FileExistsError:
            raise storage.IdTaken() from None
        try:
            self._mark(info.id)
            await self.save_info(info)
        except BaseException:
            _remove(path)  # e.g. a full disk: no data file without its .info
            self._unmark(info.id)
            raise

    async def get_info(self, upload_id: str) -> UploadInfo:
        info = self._read_info(upload_id)
        try:
            info.offset = os.stat(self._path(upload_id)).st_size
        except FileNotFoundError:
            raise storage.NotFound() from None
        return info

    async def open(self, upload_id: str) -> StoreUpload:
        """The upload, for a caller that holds its lock: the per-call methods hold no state."""
        return StoreUpload(self, await self.get_info(upload_id))

    async def peek_info(self, upload_id: str) -> UploadInfo:
        return self._read_info(upload_id)

    def _read_info(self, upload_id: str) -> UploadInfo:
        try:
            with open(self._path(upload_id, ".info"), "rb") as f:
                return parse_info(upload_id, f.read())
        except FileNotFoundError:
            raise storage.NotFound() from None

    async def append(
        self, info: UploadInfo, body: AsyncIterable[bytes], *, atomic: bool = False
    ) -> int:
        if atomic:
            return await self._append_atomic(info, body)
        path = self._path(info.id)
        with open(path, "r+b") as f:
            f.truncate(info.offset)  # bytes past the offset are never acknowledged
            f.seek(info.offset)
            written = await _write_stream(f, body)
        return info.offset + written

    async def _append_atomic(self, info: UploadInfo, body: AsyncIterable[bytes]) -> int:
        """Spool the whole body beside the data file; only a complete body is appended."""
        spool = self._path(info.id, f".tmp-{secrets.token_hex(4)}")
        try:
            with open(spool, "w+b") as f:
                written = await _write_stream(f, body)
                f.seek(0)
                # Not abandoned on cancel: the thread would go on appending (or truncating,
                # once `f` is closed under it) after the caller released the upload's lock.
                await await_to_completion(asyncio.to_thread(_append_file, f, self._path(info.id), info.offset))
        finally:
            _remove(spool)
        return info.offset + written

    async def set_length(self, info: UploadInfo, length: int) -> None:
        info.length = length
        await self.save_info(info)

    async def finish(self, info: UploadInfo) -> None:
        info.finished = True
        await self.save_info(info)
        self._unmark(info.id)

    async def terminate(self, info: UploadInfo) -> None:
        # .info after the bytes: a data file is never left without it (orphan cleanup only
        # removes empty ones), and a failed removal is retried by the next expiry pass.
        _remove(self._path(info.id))
        shutil.rmtree(self._link_dir(info.id), ignore_errors=True)
        _remove(self._path(info.id, ".info"))
        self._unmark(info.id)
        if info.listed:  # after .info: an entry without its upload is skipped, never the reverse
            for key in index_keys(info):
                await self.unindex(key, entry_name(info))

    async def download(self, info: UploadInfo) -> Download:
        path = self._path(info.id)
        # Checked before any header is sent; the handler opens the file itself (stream_file).
        if not os.path.isfile(path):
            raise storage.NotFound()
        return FileDownload(path)

    async def concatenate(self, final: UploadInfo, partials: list[UploadInfo]) -> None:
        target = self._path(final.id)
        sources = [self._path(p.id) for p in partials]
        await asyncio.to_thread(_concatenate_files, target, sources)
        final.length = sum(p.length or 0 for p in partials)
        final.offset = final.length
        final.finished = True
        await self.save_info(final)

    def _link_dir(self, partial_id: str) -> str:
        return self._path(partial_id, ".finals")

    async def link_final(self, partial_id: str, final_id: str) -> None:
        os.makedirs(self._link_dir(partial_id), exist_ok=True)
        with open(os.path.join(self._link_dir(partial_id), final_id), "wb"):
            pass

    async def finals_of(self, partial_id: str) -> list[str]:
        try:
            return [n for n in os.listdir(self._link_dir(partial_id)) if is_valid_upload_id(n)]
        except FileNotFoundError:
            return []

    async def unlink_final(self, partial_id: str, final_id: str) -> None:
        _remove(os.path.join(self._link_dir(partial_id), final_id))
        try:
            os.rmdir(self._link_dir(partial_id))
        except OSError:
            pass  # other finals still wait on this partial, or it is gone already

    # -- OwnerIndexStore ---------------------------------------------------------

    def _index_dir(self, key: str) -> str:
        if not is_index_key(key):
            raise ValueError(f"not an index key: {key!r}")
        return os.path.join(self.directory, ".owners", key)

    async def index_upload(self, info: UploadInfo) -> None:
        for key in index_keys(info):
            os.makedirs(self._index_dir(key), exist_ok=True)
            with open(os.path.join(self._index_dir(key), entry_name(info)), "wb"):
                pass

    async def list_index(self, key: str, after: str | None, limit: int) -> list[str]:
        try:
            names = sorted(name for name in os.listdir(self._index_dir(key)) if is_entry(name))
        except FileNotFoundError:
            return []
        start = bisect.bisect_right(names, after) if after is not None else 0
        return names[start : start + limit]

    async def unindex(self, key: str, entry: str) -> None:
        if is_entry(entry):
            _remove(os.path.join(self._index_dir(key), entry))

    # -- ExpiringStore -------------------------------------------------------------

    def _marker(self, upload_id: str) -> str:
        self._path(upload_id)  # validates the id
        return os.path.join(self.directory, UNFINISHED_DIR, upload_id)

    def _mark(self, upload_id: str) -> None:
        marker = self._marker(upload_id)
        for attempt in range(3):  # another process may remove the empty directory meanwhile
            try:
                with open(marker, "wb"):
                    return
            except FileNotFoundError:
                if attempt == 2:
                    raise
                os.makedirs(os.path.dirname(marker), exist_ok=True)

    def _unmark(self, upload_id: str) -> None:
        marker = self._marker(upload_id)
        _remove(marker)
        try:
            os.rmdir(os.path.dirname(marker))  # only when empty: no trace once all are finished
        except OSError:
            pass

    async def forget_unfinished(self, upload_id: str) -> None:
        self._unmark(upload_id)

    async def list_uploads(self) -> AsyncIterator[str]:
        for upload_id in await asyncio.to_thread(self._scan_ids):
            yield upload_id

    def _scan_ids(self) -> list[str]:
        ids = []
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if entry.name.endswith(".info") and is_valid_upload_id(entry.name[: -len(".info")]):
                    ids.append(entry.name[: -len(".info")])
        return ids

    async def list_unfinished(self, created_before: float) -> AsyncIterator[str]:
        for upload_id in await asyncio.to_thread(self._scan_unfinished, created_before):
            yield upload_id

    def _scan_unfinished(self, created_before: float) -> list[str]:
        """In a worker thread: directory scans must not stall the event loop."""
        found = []
        try:
            with os.scandir(os.path.join(self.directory, UNFINISHED_DIR)) as entries:
                for entry in entries:
                    with contextlib.suppress(FileNotFoundError):
                        if is_valid_upload_id(entry.name) and entry.stat().st_mtime < created_before:
                            found.append(entry.name)
        except FileNotFoundError:
            pass  # no unfinished upload
        indexed = os.path.join(self.directory, INDEXED)
        if os.path.exists(indexed):
            return found
        # Written by a version without the index: give every unfinished upload its entry, once.
        built = []
        for upload_id in self._scan_ids():
            try:
                with open(self._path(upload_id, ".info"), "rb") as f:
                    finished = parse_info(upload_id, f.read()).finished
            except (OSError, storage.StorageError):
                continue  # gone meanwhile, or unreadable (logged): never expired
            if not finished:
                self._mark(upload_id)
                built.append(upload_id)
        with open(indexed, "wb"):
            pass
        log.info("indexed %d unfinished uploads in %s for expiry", len(built), self.directory)
        return sorted(set(found) | set(built))

    async def clean_orphans(self, older_than: float) -> int:
        return await asyncio.to_thread(self._clean_orphans, older_than)

    def _clean_orphans(self, older_than: float) -> int:
        """Data files without `.info`. Only what this store could have left: an empty
        regular file named like an upload id (a crash inside create(); terminate() removes
        the bytes first), never a directory (`lost+found`), a link, or a file with data."""
        removed = 0
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if not is_valid_upload_id(entry.name) or not entry.is_file(follow_symlinks=False):
                    continue
                try:
                    stat = entry.stat(follow_symlinks=False)
                    if stat.st_size or stat.st_mtime >= older_than or os.path.exists(entry.path + ".info"):
                        continue
                    os.remove(entry.path)
                    removed += 1
                except FileNotFoundError:
                    continue
        return removed


async def _write_stream(f, body: AsyncIterable[bytes]) -> int:
    """Write `body` to `f`; return bytes written. Bytes received before an error in
    `body` are written before the error propagates."""
    writer = _Writer(f)
    try:
        async for chunk in body:
            await writer.write(chunk)
    finally:
        await writer.close()
    return writer.written


class _Writer:
    """Writes a body's chunks to `f` in a worker thread, one write at a time.

    Whatever arrives while a write runs is written next, all at once, so a fast body
    costs few thread hops and a stalled one holds nothing: its bytes reach the disk one
    write after they arrive. Beyond WRITE_BATCH bytes waiting or being written, plus the
    chunk that crossed it, the body waits (and aiohttp stops reading the socket).
    The first FAST_WRITERS writers instead gather FAST_BATCH, or FLUSH_AFTER's worth."""

    def __init__(self, f) -> None:
        global _fast_writers
        self._f = f
        self._loop = asyncio.get_running_loop()
        self._waiting: list[bytes] = []
        self._waiting_size = 0
        self._pending: asyncio.Future | None = None
        self._pending_size = 0
        self._error: BaseException | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._fast = _fast_writers < FAST_WRITERS
        _fast_writers += self._fast
        self.written = 0

    async def write(self, chunk: bytes) -> None:
        self._settle()
        self._raise_error()
        if not self._fast and self._pending is None and not self._waiting and len(chunk) <= INLINE_WRITE:
            # A read's worth into the page cache costs less than the hop to a thread and back.
            _write_chunks(self._f, [chunk])
            self.written += len(chunk)
            return
        self._waiting.append(chunk)
        self._waiting_size += len(chunk)
        if self._pending is None:
            self._start_or_gather()
        while self._full() and self._pending is not None:
            await asyncio.wait({self._pending})  # never cancels the write; see close()
            self._settle()
        self._raise_error()

    def _full(self) -> bool:
        if self._fast:
            return self._waiting_size >= FAST_BATCH
        return self._waiting_size + self._pending_size >= WRITE_BATCH

    def _start_or_gather(self) -> None:
        if not self._waiting:
            return
        if not self._fast or self._waiting_size >= FAST_BATCH:
            self._start()
        elif self._timer is None:
            self._timer = self._loop.call_later(FLUSH_AFTER, self._flush)

    def _flush(self) -> None:
        self._timer = None
        if self._pending is None and self._waiting and self._error is None:
            self._start()

    def _start(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        chunks, self._pending_size = self._waiting, self._waiting_size
        self._waiting, self._waiting_size = [], 0
        if self._fast and len(chunks) > 1:
            chunks = [b"".join(chunks)]  # the reads' buffers are freed now, and reused hot
        self._pending = self._loop.run_in_executor(None, _write_chunks, self._f, chunks)
        self._pending.add_done_callback(self._settle)

    def _settle(self, _: object = None) -> None:
        """Account for the write in flight once it is done, and start the next one with
        what waits. Called by the write's callback and, in case the caller runs first,
        before the caller looks at the state."""
        done = self._pending
        if done is None or not done.done():
            return
        self._pending = None
        size, self._pending_size = self._pending_size, 0
        if done.cancelled():
            self._error = asyncio.CancelledError()
        elif done.exception() is not None:
            self._error = done.exception()
        else:
            self.written += size
            self._start_or_gather()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    async def close(self) -> None:
        """Wait for the writes in flight, even when cancelled any number of times (the
        thread writes to `f`, which the caller closes next), then write what is left."""
        global _fast_writers
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._fast:
            self._fast = False
            _fast_writers -= 1
        cancelled: asyncio.CancelledError | None = None
        while self._pending is not None:
            try:
                await asyncio.wait({self._pending})
            except asyncio.CancelledError as exc:
                cancelled = exc  # the write ends first: the bytes received after it are kept too
            self._settle()
        if self._error is None and self._waiting:
            _write_chunks(self._f, self._waiting)  # below a batch: not worth a thread
            self.written += self._waiting_size
        self._waiting, self._waiting_size = [], 0
        self._f.flush()
        if cancelled is not None:
            raise cancelled
        self._raise_error()


def _write_chunks(f, chunks: list[bytes]) -> None:
    for chunk in chunks:
        f.write(chunk)
    f.flush()  # a stalled body's last small chunks would otherwise wait in f's buffer


def _append_file(src, target: str, offset: int) -> None:
    try:
        with open(target, "r+b") as out:
            out.truncate(offset)
            out.seek(offset)
            shutil.copyfileobj(src, out, WRITE_BATCH)
    except BaseException:
        os.truncate(target, offset)  # all or nothing, even when the disk fills half way
        raise


def _concatenate_files(target: str, sources: list[str]) -> None:
    with open(target, "r+b") as out:
        out.truncate(0)
        for source in sources:
            with open(source, "rb") as src:
                shutil.copyfileobj(src, out, WRITE_BATCH)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
