"""Per-upload locks shared by the server processes of one machine (`--workers`), without
Redis. Under a directory they all use:

- `<id>.lock`: flock(2)ed by the process that holds the upload's lock, and holding the
  name of that process's locker, so that a request in another process can ask it to let go. It exists only while
  the lock is held or awaited: the holder unlinks it before unlocking, and a process that
  then gets the lock of the unlinked file sees that the path names another file (or none)
  and tries again. So an attacker who makes up ids leaves no files behind.
- `versions`: a table of VERSION_SLOTS numbers, shared through mmap; an upload's version
  is in the slot its id hashes to. Two ids sharing a slot only make each other's kept
  state look stale, never current. A slot changes only under the lock of an id that
  hashes to it.
- `r-<name>.sock`: each locker's Unix datagram socket for requests to let go of a lock
  (`<pid>.<random>`: a process may hold several lockers, as tests do).
- `lease-<name>`: when the named lease ends, read and written under flock.

Within one process, a MemoryLocker orders the requests first, as it does without
workers; only the one that holds it there competes for the file."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import logging
import mmap
import os
import secrets
import socket
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .. import errors
from ..errors import TusError
from .base import ReleaseCallback, holding_version
from .memory import MemoryLocker

log = logging.getLogger("tusserver.locking")

VERSION_SLOTS = 1 << 16  # 512 KiB of versions
_SLOT = struct.Struct("<q")
POLL_FIRST = 0.001  # seconds between tries of a held file lock, doubling...
POLL_MOST = 0.02  # ...up to this


class FileLocker(MemoryLocker):
    """Locks shared by every process that uses the same `directory` on one machine."""

    def __init__(self, directory: str, timeout: float = 3.0) -> None:
        super().__init__(timeout)
        self.directory = directory
        self._versions_map: mmap.mmap | None = None
        self._socket: socket.socket | None = None
        self._name = ""

    # -- lifecycle

    async def start(self) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        self._name = f"{os.getpid()}.{secrets.token_hex(4)}"
        path = os.path.join(self.directory, "versions")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < VERSION_SLOTS * _SLOT.size:
                os.ftruncate(fd, VERSION_SLOTS * _SLOT.size)  # zeros: no version yet
            self._versions_map = mmap.mmap(fd, VERSION_SLOTS * _SLOT.size)
        finally:
            os.close(fd)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(self._inbox(self._name))
        self._socket = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_request)

    async def close(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._socket.fileno())
            self._socket.close()
            self._socket = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._inbox(self._name))
        if self._versions_map is not None:
            self._versions_map.close()
            self._versions_map = None

    def _inbox(self, name: str) -> str:
        return os.path.join(self.directory, f"r-{name}.sock")

    def _on_request(self) -> None:
        """Another process asks this one to let go of an upload's lock."""
        assert self._socket is not None
        while True:
            try:
                data = self._socket.recv(512)
            except (BlockingIOError, InterruptedError):
                return
            entry = self._entries.get(data.decode("ascii", "replace"))
            if entry is not None and entry.on_release is not None and entry.lock.locked():
                entry.on_release()

    # -- files

    def _path(self, upload_id: str) -> str:
        if not upload_id or "/" in upload_id or upload_id.startswith("."):
            raise ValueError(f"not a lock name: {upload_id!r}")
        return os.path.join(self.directory, upload_id + ".lock")

    def _try_file(self, path: str) -> int | None:
        """The file lock at `path`, as an open descriptor, or None while another holds it.
        The file names this locker, for those who want it to let go."""
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    return None
                raise
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.pwrite(fd, self._name.encode().ljust(64), 0)
                return fd
            os.close(fd)  # unlinked by its last holder meanwhile: try the file at the path now

    def _let_go(self, path: str, fd: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # before unlocking: whoever gets the old file's lock tries again
        os.close(fd)

    def _ask_holder(self, path: str) -> None:
        try:
            with open(path, "rb") as f:
                holder = f.read(64).decode("ascii", "replace").strip()
        except OSError:
            return
        if holder and holder != self._name and "/" not in holder and self._socket is not None:
            name = os.path.basename(path)[: -len(".lock")]
            with contextlib.suppress(OSError):  # gone meanwhile: it let go
                self._socket.sendto(name.encode("ascii"), self._inbox(holder))

    async def _take_file(self, path: str, deadline: float) -> int:
        loop = asyncio.get_running_loop()
        fd = self._try_file(path)
        asked = False
        pause = POLL_FIRST
        while fd is None:
            if not asked:
                self._ask_holder(path)
                asked = True
            if loop.time() + pause > deadline:
                raise TusError(errors.LOCKED, headers={"Retry-After": "1"})
            await asyncio.sleep(pause)
            pause = min(pause * 2, POLL_MOST)
            fd = self._try_file(path)
        return fd

    # -- versions

    def _slot(self, upload_id: str) -> int:
        digest = hashlib.blake2b(upload_id.encode("utf-8", "surrogateescape"), digest_size=8).digest()
        return (int.from_bytes(digest, "little") % VERSION_SLOTS) * _SLOT.size

    def _read_version(self, upload_id: str) -> int:
        assert self._versions_map is not None, "FileLocker.start() was not called"
        return int(_SLOT.unpack_from(self._versions_map, self._slot(upload_id))[0])

    def _write_version(self, upload_id: str, number: int) -> None:
        assert self._versions_map is not None
        _SLOT.pack_into(self._versions_map, self._slot(upload_id), number)

    async def version(self, upload_id: str) -> int | None:
        if upload_id in self._entries:
            return None
        path = self._path(upload_id)
        if os.path.exists(path):
            return None  # held or awaited by another process
        number = self._read_version(upload_id)
        if number:
            return number
        # No version yet: give it one, under the file lock so that no holder moves it meanwhile.
        fd = self._try_file(path)
        if fd is None:
            return None
        try:
            number = self._read_version(upload_id)
            if not number:
                number = _new_number()
                self._write_version(upload_id, number)
            return number
        finally:
            self._let_go(path, fd)

    def _moved(self, upload_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Move the upload's version, under its file lock: before any change."""
        before = self._read_version(upload_id) or None
        now = _new_number()
        self._write_version(upload_id, now)
        return holding_version(upload_id, before, now)

    # -- Locker

    @asynccontextmanager
    async def lock(self, upload_id: str, on_release: ReleaseCallback | None = None) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        path = self._path(upload_id)
        entry = self._entry(upload_id)
        try:
            if entry.lock.locked() and entry.on_release is not None:
                entry.on_release()
            try:
                await asyncio.wait_for(entry.lock.acquire(), max(deadline - loop.time(), 0))
            except asyncio.TimeoutError:
                raise TusError(errors.LOCKED, headers={"Retry-After": "1"}) from None
            try:
                # Set before the file is ours: a newer request, here or in another process,
                # asks this one to let go as soon as it has the lock.
                entry.on_release = on_release
                fd = await self._take_file(path, deadline)
                try:
                    async with self._moved(upload_id):
                        yield
                finally:
                    self._let_go(path, fd)
            finally:
                entry.on_release = None
                entry.lock.release()
        finally:
            self._leave(upload_id, entry)

    @asynccontextmanager
    async def try_lock(self, upload_id: str) -> AsyncIterator[bool]:
        if upload_id in self._entries:
            yield False
            return
        path = self._path(upload_id)
        fd = self._try_file(path)
        if fd is None:
            yield False
            return
        entry = self._entry(upload_id)
        await entry.lock.acquire()  # a new lock: taken without suspending
        try:
            async with self._moved(upload_id):
                yield True
        finally:
            self._let_go(path, fd)
            entry.lock.release()
            self._leave(upload_id, entry)

    async def take_lease(self, name: str, seconds: float) -> bool:
        fd = os.open(os.path.join(self.directory, f"lease-{name}"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held for two tiny reads and writes
            try:
                ends = float(os.pread(fd, 32, 0) or b"0")
            except ValueError:
                ends = 0.0
            now = time.time()
            if ends > now:
                return False
            os.pwrite(fd, repr(now + seconds).encode().ljust(32), 0)
            return True
        finally:
            os.close(fd)


def _new_number() -> int:
    """A version no process has given: random, so that no counter needs sharing."""
    return secrets.randbits(62) + 1
