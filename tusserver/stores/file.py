"""Local-disk store. Under `<dir>`:

- `<id>`: the bytes while the upload is in progress, and after it when it has no storage
  key; `<id>.info`: the state; `<id>.finals/`: links to the final uploads of a partial.
- `<key>` (may hold `/`): the bytes of a finished upload created with a storage key,
  moved there from `<id>` by one rename at finish; subdirectories are made on the way.
- `.keys/<sha256 of key>`: the claim on a key, naming the upload whose bytes go there
  (in progress) or are there (finished), and, while a newer upload is in progress on a
  reused key, the older one whose bytes are still there. It outlives the upload's finish.
- `.owners/<key>/<entry>` (empty files): the owners' index; `.unfinished/<id>` (empty,
  removed at finish): the uploads that may expire.

The offset is the data file's size, so whatever reached the disk counts and a
restart loses nothing. Writes run in a worker thread while the event loop reads the
next chunks; a PATCH holds at most a few hundred KiB in RAM, stalled or not.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
from collections.abc import AsyncIterable, AsyncIterator

from .. import storage_errors as storage
from ..cancellation import await_to_completion
from ..info import UploadInfo
from ..placement import Placement, check_key, key_problem
from ..protocol import is_valid_upload_id
from .base import Download, FileDownload, StoreUpload, parse_info
from .owner_index import entry_name, index_keys, is_entry, is_index_key
from .spool import process_alive

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
# `.tmp-<pid>-<random>` (`.tmp-<random>` from older versions): start() removes only those of
# processes that are gone, since under --workers the others' writes may be in flight.
_OWN_TEMP = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}(\.info)?\.tmp-(?:([0-9]+)-)?[0-9a-f]{8}")
KEYS_DIR = ".keys"  # a dot: never an upload id, and check_key refuses it as a key
_CLAIM_TEMP = re.compile(r"[0-9a-f]{64}\.tmp-(?:([0-9]+)-)?[0-9a-f]{8}")
# What an upload with a storage key is to the claim on that key.
IN_PROGRESS, FINISHED, VANISHED = "in progress", "finished", "vanished"

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
            if _debris(_OWN_TEMP.fullmatch(name)):
                _remove(os.path.join(self.directory, name))
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(os.path.join(self.directory, KEYS_DIR)):
                if _debris(_CLAIM_TEMP.fullmatch(name)):
                    _remove(os.path.join(self.directory, KEYS_DIR, name))

    async def close(self) -> None:
        return None

    async def ready(self) -> bool:
        """Whether the directory exists and is writable."""
        return os.path.isdir(self.directory) and os.access(self.directory, os.W_OK | os.X_OK)

    async def save_info(self, info: UploadInfo) -> None:
        self._write_info(info)

    def _write_info(self, info: UploadInfo) -> None:
        final = self._path(info.id, ".info")
        tmp = f"{final}{_temp_suffix()}"
        try:
            with open(tmp, "wb") as f:
                f.write(info.to_json())
            os.replace(tmp, final)
        finally:
            _remove(tmp)

    async def create(self, info: UploadInfo, placement: Placement | None = None) -> None:
        key = None
        if placement is not None and not placement.is_default(info.id):
            key = self._check_placement(info.id, placement)
        path = self._path(info.id)
        info.storage = {"type": "file", "path": path}
        if key is not None:
            info.storage["key"] = key
        try:
            with open(path, "xb"):  # O_EXCL: of two creations of one id, one wins
                pass
        except FileExistsError:
            raise storage.IdTaken() from None
        if key is None:
            self._create_state(info)
            return
        try:
            # Under the claims' lock until `.info` exists: another process checking the
            # claim sees this upload in progress, never vanished.
            with self._claims_locked():
                replaced = self._claim(key, info.id)
                try:
                    self._create_state(info)
                except BaseException:
                    self._unclaim(key, replaced)
                    raise
        except BaseException:
            _remove(path)  # storage.KeyTaken: nothing is left of the refused creation
            raise

    def _create_state(self, info: UploadInfo) -> None:
        try:
            self._mark(info.id)
            self._write_info(info)
        except BaseException:
            _remove(self._path(info.id))  # e.g. a full disk: no data file without its .info
            self._unmark(info.id)
            raise

    async def get_info(self, upload_id: str) -> UploadInfo:
        info = self._read_info(upload_id)
        path = self._locate(info)
        if path is None:
            info.offset = info.length or 0  # finished; its bytes were replaced at its key since
            return info
        try:
            info.offset = os.stat(path).st_size
        except FileNotFoundError:
            raise storage.NotFound() from None
        info.storage["path"] = path
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
        spool = self._path(info.id, _temp_suffix())
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
        if self._key_of(info) is None:
            info.finished = True
            await self.save_info(info)
        else:
            self._finish_at_key(info)
        self._unmark(info.id)

    async def terminate(self, info: UploadInfo) -> None:
        # .info after the bytes: a data file is never left without it (orphan cleanup only
        # removes empty ones), and a failed removal is retried by the next expiry pass.
        _remove(self._path(info.id))
        key = self._key_of(info)
        if key is not None:
            self._release_key(key, info)
        await self._drop_state(info)

    async def release(self, info: UploadInfo) -> None:
        key = self._key_of(info)
        if key is not None:
            with self._claims_locked():
                if self._read_claim(key)[0] == info.id:  # nobody else's to keep: the key is free
                    _remove(self._claim_path(key))
        await self._drop_state(info)

    async def _drop_state(self, info: UploadInfo) -> None:
        """Remove the upload's links, `.info`, expiry marker and owners' index entries."""
        shutil.rmtree(self._link_dir(info.id), ignore_errors=True)
        _remove(self._path(info.id, ".info"))
        self._unmark(info.id)
        if info.listed:  # after .info: an entry without its upload is skipped, never the reverse
            for index_key in index_keys(info):
                await self.unindex(index_key, entry_name(info))

    async def download(self, info: UploadInfo) -> Download:
        path = self._locate(info)
        # Checked before any header is sent; the handler opens the file itself (stream_file).
        if path is None or not os.path.isfile(path):
            raise storage.NotFound()
        return FileDownload(path)

    async def concatenate(self, final: UploadInfo, partials: list[UploadInfo]) -> None:
        target = self._path(final.id)
        sources = []
        for partial in partials:
            source = self._locate(partial)
            if source is None:
                raise storage.NotFound(f"the bytes of {partial.id} were replaced at its storage key")
            sources.append(source)
        await asyncio.to_thread(_concatenate_files, target, sources)
        final.length = sum(p.length or 0 for p in partials)
        final.offset = final.length
        if self._key_of(final) is None:
            final.finished = True
            await self.save_info(final)
        else:
            self._finish_at_key(final)

    # -- Storage keys ----------------------------------------------------------------
    # Claims are read and changed under an exclusive flock on `.keys`, in synchronous code
    # (no await inside): one process's coroutines cannot interleave there, and processes
    # sharing the directory take turns.

    def _key_path(self, key: str) -> str:
        return os.path.join(self.directory, *key.split("/"))

    def _key_of(self, info: UploadInfo) -> str | None:
        """The upload's storage key, checked again: `.info` is trusted to name an upload,
        never to name a path."""
        key = info.storage.get("key")
        if key is None:
            return None
        problem = check_key(key)
        if problem is not None:
            log.error("upload %s: its .info holds an unusable storage key %r: %s", info.id, key, problem)
            raise storage.Corrupt(info.id, f"unusable storage key: {problem}")
        return key

    def _refuse(self, upload_id: str, key: object, reason: str) -> storage.BadPlacement:
        log.error("upload %s: storage key %r refused: %s", upload_id, key, reason)
        return storage.BadPlacement(reason)

    def _check_placement(self, upload_id: str, placement: Placement) -> str:
        """The placement's key, or BadPlacement: before anything is written."""
        key = placement.key
        if placement.bucket is not None:
            raise self._refuse(upload_id, key, f"the disk store has no buckets (got {placement.bucket!r})")
        problem = key_problem(key, upload_id)
        if problem is None:
            longest = max(len(segment.encode("utf-8")) for segment in key.split("/"))
            if longest > os.pathconf(self.directory, "PC_NAME_MAX"):
                problem = f"a segment of {longest} bytes is longer than the filesystem allows"
        if problem is not None:
            raise self._refuse(upload_id, key, problem)
        parent = self._key_parent(upload_id, key, create=False)  # what is in the way now is refused now
        if parent is not None:
            os.close(parent)
        return key

    def _walk(self, upload_id: str, key: str, directories: list[str], *, create: bool) -> int | None:
        """A descriptor of `file_dir/<directories>`, reached one real directory at a time
        (a symlink, file or anything else on the way raises BadPlacement, naming `key`);
        `create`: missing ones are made, else None when one is missing."""
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for depth, segment in enumerate(directories):
                where = "/".join(directories[: depth + 1])
                try:
                    if create:
                        with contextlib.suppress(FileExistsError):
                            os.mkdir(segment, dir_fd=fd)
                    inner = os.open(segment, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except FileNotFoundError:
                    if create:
                        raise self._refuse(upload_id, key, f"{where} vanished") from None
                    os.close(fd)
                    return None
                except OSError as exc:
                    if exc.errno in (errno.ENOTDIR, errno.ELOOP):  # a file or a symlink
                        raise self._refuse(upload_id, key, f"{where} is in the way: not a directory") from None
                    raise self._refuse(upload_id, key, f"{where}: {exc.strerror}") from None
                os.close(fd)
                fd = inner
            # Belt and braces over O_NOFOLLOW: the directory reached is the one named.
            expected = os.path.join(os.path.realpath(self.directory), *directories)
            if os.path.realpath(os.path.join(self.directory, *directories)) != expected:
                raise self._refuse(upload_id, key, "its directory resolves outside file_dir")
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _key_parent(self, upload_id: str, key: str, *, create: bool) -> int | None:
        """A descriptor of the directory that holds `key`'s file (see _walk); BadPlacement
        when a directory is where the file goes."""
        *directories, name = key.split("/")
        fd = self._walk(upload_id, key, directories, create=create)
        if fd is None:
            return None
        try:
            try:
                mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
            except FileNotFoundError:
                return fd
            except OSError as exc:  # ENAMETOOLONG: a segment longer than the filesystem allows
                raise self._refuse(upload_id, key, exc.strerror or "cannot be a file name") from None
            if stat.S_ISDIR(mode):
                raise self._refuse(upload_id, key, "a directory is in the way at the key")
            return fd
        except BaseException:
            os.close(fd)
            raise

    @contextlib.contextmanager
    def _claims_locked(self):
        keys = os.path.join(self.directory, KEYS_DIR)
        os.makedirs(keys, exist_ok=True)
        fd = os.open(keys, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # short: a few small files, no await
            yield
        finally:
            os.close(fd)  # and the lock with it

    def _claim_path(self, key: str) -> str:
        return os.path.join(self.directory, KEYS_DIR, hashlib.sha256(key.encode("utf-8")).hexdigest())

    def _read_claim(self, key: str) -> tuple[str | None, str | None]:
        """(holder, previous): the upload that claims the key, and the finished one whose
        bytes are still there while the holder is in progress."""
        try:
            with open(self._claim_path(key), "rb") as f:
                ids = f.read(512).decode("ascii", "replace").split()
        except FileNotFoundError:
            return None, None
        named: list[str | None] = [i if is_valid_upload_id(i) else None for i in ids[:2]] + [None, None]
        return named[0], named[1]

    def _write_claim(self, key: str, content: bytes) -> None:
        path = self._claim_path(key)
        tmp = f"{path}{_temp_suffix()}"
        try:
            with open(tmp, "wb") as f:
                f.write(content)
            os.replace(tmp, path)
        finally:
            _remove(tmp)

    def _state_of(self, upload_id: str | None) -> str:
        if upload_id is None:
            return VANISHED
        try:
            return FINISHED if self._read_info(upload_id).finished else IN_PROGRESS
        except storage.NotFound:
            return VANISHED
        except storage.Corrupt:
            return IN_PROGRESS  # left for an operator (logged): its key is not taken from it

    def _claim(self, key: str, upload_id: str) -> bytes | None:
        """Claim `key` for the new upload, under the claims' lock: storage.KeyTaken while
        another upload in progress holds it; a finished or vanished holder's claim is taken
        over. Returns the claim replaced (None: there was none), for _unclaim."""
        path = self._claim_path(key)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            pass
        else:
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(f"{upload_id}\n".encode())
            except BaseException:
                _remove(path)
                raise
            return None
        with open(path, "rb") as f:
            replaced = f.read(512)
        holder, previous = self._read_claim(key)
        state = self._state_of(holder)
        if state == IN_PROGRESS:
            raise storage.KeyTaken()
        # Whose bytes stay at the key until this upload finishes: they are served, and
        # removed by that upload's termination, meanwhile.
        if state == FINISHED:
            kept = holder
        else:
            kept = previous if self._state_of(previous) == FINISHED else None
        self._write_claim(key, f"{upload_id}\n{kept}\n".encode() if kept else f"{upload_id}\n".encode())
        return replaced

    def _unclaim(self, key: str, replaced: bytes | None) -> None:
        """Undo _claim for a creation that failed after it (under the claims' lock)."""
        if replaced is None:
            _remove(self._claim_path(key))
        else:
            self._write_claim(key, replaced)

    def _finish_at_key(self, info: UploadInfo) -> None:
        """Finish an upload with a key: `.info` says finished (and where) first, then one
        rename moves the bytes from `<id>` to the key, so a crash in between loses nothing
        (_locate completes the move). A failure before the rename leaves it unfinished."""
        key = info.storage["key"]
        own = self._path(info.id)
        with self._claims_locked():
            holder, previous = self._read_claim(key)
            if holder != info.id:  # removed by hand, or taken over after a crash: stay at <id>
                log.warning("upload %s: it lost its claim on storage key %r; its bytes stay under its id", info.id, key)
                info.finished = True
                self._write_info(info)
                return
            parent = self._key_parent(info.id, key, create=True)
            assert parent is not None  # made on the way
            try:
                if previous is not None:  # the older upload's bytes are about to be replaced
                    self._write_claim(key, f"{info.id}\n".encode())
                info.finished = True
                info.storage["path"] = self._key_path(key)
                saved = False
                try:
                    self._write_info(info)
                    saved = True
                    os.replace(own, key.split("/")[-1], dst_dir_fd=parent)
                except BaseException as exc:
                    info.finished = False
                    info.storage["path"] = own
                    if saved:
                        self._write_info(info)
                    if isinstance(exc, OSError) and saved:
                        raise self._refuse(info.id, key, f"moving the bytes there failed: {exc.strerror}") from None
                    raise
            finally:
                os.close(parent)

    def _locate(self, info: UploadInfo) -> str | None:
        """Where the upload's bytes are: `<id>` until a keyed upload is moved to its key.
        None for a finished upload whose key a newer upload has taken since."""
        own = self._path(info.id)
        key = self._key_of(info)
        if key is None or not info.finished:
            return own
        if os.path.lexists(own) and not self._complete_move(info, key):
            return own
        holder, previous = self._read_claim(key)
        return self._key_path(key) if info.id in (holder, previous) else None

    def _complete_move(self, info: UploadInfo, key: str) -> bool:
        """The rename a crash kept finish() from doing, if the upload still holds its key."""
        with self._claims_locked():
            if self._read_claim(key)[0] != info.id:
                return False  # taken over meanwhile: its bytes are served from <id>
            try:
                parent = self._key_parent(info.id, key, create=True)
            except storage.BadPlacement:
                return False  # logged; served from <id>
            assert parent is not None
            try:
                os.replace(self._path(info.id), key.split("/")[-1], dst_dir_fd=parent)
            except FileNotFoundError:
                return True  # moved by another reader meanwhile
            finally:
                os.close(parent)
        log.info("upload %s: moved to its storage key after an interrupted finish", info.id)
        return True

    def _release_key(self, key: str, info: UploadInfo) -> None:
        """On termination: remove the bytes at the key only if they are this upload's, and
        its claim; a newer upload's claim and bytes at a reused key are left alone."""
        with self._claims_locked():
            holder, previous = self._read_claim(key)
            if holder == info.id and not info.finished:
                # Never written to the key: what is there (if anything) is not its to remove.
                if self._state_of(previous) == FINISHED:
                    self._write_claim(key, f"{previous}\n".encode())
                else:
                    _remove(self._claim_path(key))
            elif holder == info.id:
                self._remove_key_file(info.id, key)
                _remove(self._claim_path(key))
            elif previous == info.id and holder is not None:
                self._remove_key_file(info.id, key)
                self._write_claim(key, f"{holder}\n".encode())

    def _remove_key_file(self, upload_id: str, key: str) -> None:
        """Remove the key's file, then its directories that this leaves empty."""
        *directories, name = key.split("/")
        try:
            parent = self._walk(upload_id, key, directories, create=False)
            if parent is None:
                return  # gone already
            try:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(name, dir_fd=parent)
            finally:
                os.close(parent)
            while directories:
                name = directories.pop()
                parent = self._walk(upload_id, key, directories, create=False)
                if parent is None:
                    return
                try:
                    os.rmdir(name, dir_fd=parent)
                except OSError:
                    return  # not empty (another key's file is there), or not a real directory
                finally:
                    os.close(parent)
        except storage.BadPlacement:
            return  # logged; nothing but real directories under file_dir is touched

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


def _temp_suffix() -> str:
    return f".tmp-{os.getpid()}-{secrets.token_hex(4)}"


def _debris(match: re.Match[str] | None) -> bool:
    """Whether a temp file the pattern matched was left by a process that is gone."""
    if match is None:
        return False
    pid = match.group(match.re.groups)
    return pid is None or int(pid) == os.getpid() or not process_alive(int(pid))


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
