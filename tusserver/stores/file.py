"""Local-disk store: `<dir>/<id>` holds the bytes, `<dir>/<id>.info` the state, and
`<dir>/.owners/<key>/<entry>` (empty files) the owners' index.

The offset is the data file's size, so whatever reached the disk counts and a
restart loses nothing. Large writes run in a worker thread, double-buffered, so
the event loop keeps reading the next chunk while the previous one is written.
"""

from __future__ import annotations

import asyncio
import bisect
import glob
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterable, AsyncIterator

from .. import errors
from ..cancellation import await_to_completion
from ..errors import TusError
from ..info import UploadInfo
from ..protocol import is_valid_upload_id
from .base import Download, FileDownload, parse_info
from .owner_index import entry_name, index_keys, is_entry, is_index_key

WRITE_BATCH = 1 << 20  # bytes gathered before one write in the worker thread


class FileStore:
    def __init__(self, directory: str) -> None:
        self.directory = os.path.abspath(directory)

    def _path(self, upload_id: str, suffix: str = "") -> str:
        if not is_valid_upload_id(upload_id):  # defence in depth; handlers validate too
            raise TusError(errors.NOT_FOUND)
        return os.path.join(self.directory, upload_id + suffix)

    async def start(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        # An unwritable directory stops the server at start-up, naming the directory.
        with tempfile.TemporaryFile(dir=self.directory):
            pass
        # Debris of a crash: half-written .info files and unverified PATCH spools.
        for leftover in glob.glob(os.path.join(self.directory, "*.tmp-*")):
            _remove(leftover)

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
            raise TusError(errors.UPLOAD_ID_TAKEN) from None
        try:
            await self.save_info(info)
        except BaseException:
            _remove(path)  # e.g. a full disk: no data file without its .info
            raise

    async def get_info(self, upload_id: str) -> UploadInfo:
        info = await self.peek_info(upload_id)
        try:
            info.offset = os.stat(self._path(upload_id)).st_size
        except FileNotFoundError:
            raise TusError(errors.NOT_FOUND) from None
        return info

    async def peek_info(self, upload_id: str) -> UploadInfo:
        try:
            with open(self._path(upload_id, ".info"), "rb") as f:
                return parse_info(upload_id, f.read())
        except FileNotFoundError:
            raise TusError(errors.NOT_FOUND) from None

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

    async def terminate(self, info: UploadInfo) -> None:
        _remove(self._path(info.id, ".info"))
        _remove(self._path(info.id))
        shutil.rmtree(self._link_dir(info.id), ignore_errors=True)
        if info.listed:  # after .info: an entry without its upload is skipped, never the reverse
            for key in index_keys(info):
                await self.unindex(key, entry_name(info))

    async def download(self, info: UploadInfo) -> Download:
        path = self._path(info.id)
        # Checked before any header is sent; the handler opens the file itself (stream_file).
        if not os.path.isfile(path):
            raise TusError(errors.NOT_FOUND)
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

    async def list_uploads(self) -> AsyncIterator[str]:
        for name in os.listdir(self.directory):
            if name.endswith(".info"):
                yield name[: -len(".info")]

    async def clean_orphans(self, older_than: float) -> int:
        removed = 0
        for name in os.listdir(self.directory):
            path = os.path.join(self.directory, name)
            if "." in name or os.path.exists(path + ".info"):
                continue
            try:
                if os.stat(path).st_mtime < older_than:
                    _remove(path)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed


async def _write_stream(f, body: AsyncIterable[bytes]) -> int:
    """Write `body` to `f`; return bytes written. Bytes received before an error in
    `body` are written before the error propagates."""
    loop = asyncio.get_running_loop()
    pending: asyncio.Future | None = None
    batch: list[bytes] = []
    batched = 0
    written = 0
    try:
        async for chunk in body:
            batch.append(chunk)
            batched += len(chunk)
            if batched >= WRITE_BATCH:
                if pending is not None:
                    await pending
                    pending = None
                data = b"".join(batch)
                batch, batched = [], 0
                pending = loop.run_in_executor(None, f.write, data)
                written += len(data)
    finally:
        cancelled: asyncio.CancelledError | None = None
        if pending is not None:
            try:
                # Even when cancelled, any number of times: the thread is writing to `f`.
                await await_to_completion(pending)
            except asyncio.CancelledError as exc:
                cancelled = exc  # the write ended: the bytes received after it are kept too
        if batch:
            data = b"".join(batch)
            f.write(data)
            written += len(data)
        f.flush()
        if cancelled is not None:
            raise cancelled
    return written


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
