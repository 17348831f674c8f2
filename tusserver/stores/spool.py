"""Temp-file spooling: a byte stream cut into files of a given size ("pieces"), so
that whole parts can be sent (and re-sent on retry) without holding them in memory.

Spool files are private: mode 0600 in a directory of this process only (mode 0700,
`tusserver-spool-<pid>-<start time>`), removed when its last file is. Every byte in
them is counted by a `TempBudget`, which refuses bytes past the operator's limit."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import glob
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from typing import BinaryIO

from .. import storage_errors as storage
from ..cancellation import await_to_completion

# pid in the name: start-up cleanup must not remove files of another live process.
TEMP_PREFIX = "tusserver-spool-"
COPY_BLOCK = 1 << 20
RETRY_AFTER = "5"  # seconds a client is asked to wait when the temp budget is spent


class TempBudget:
    """Bytes in the spool files of one store, against a limit (None: no limit)."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int, *, force: bool = False) -> None:
        """Count `size` more bytes, or raise storage.Full when they do
        not fit. `force`: bytes already received whose loss would lose client data."""
        if not force and self.limit is not None and self.used + size > self.limit:
            raise storage.Full()
        self.used += size

    def give(self, size: int) -> None:
        self.used = max(0, self.used - size)


@dataclass
class Piece:
    """One temp file holding `size` bytes. Whoever holds a piece removes it."""

    path: str
    size: int = 0
    budget: TempBudget | None = field(default=None, repr=False)

    def open(self) -> BinaryIO:
        return open(self.path, "rb")

    def remove(self) -> None:
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass
        if self.budget is not None:
            self.budget.give(self.size)
            self.budget = None
        directory = os.path.dirname(self.path)
        if os.path.basename(directory).startswith(TEMP_PREFIX):
            with contextlib.suppress(OSError):  # not empty: another piece is still there
                os.rmdir(directory)


class Spool:
    """Writes bytes into consecutive pieces of `piece_size` bytes (the last one shorter).

    `piece_size` may change between writes; it applies to the piece being filled.
    `first_size`, if given, is the size of the first piece instead. `awrite` writes in
    a worker thread; `write` blocks the caller."""

    def __init__(
        self, temp_dir: str | None, piece_size: int, budget: TempBudget | None = None, *, first_size: int | None = None
    ) -> None:
        self.temp_dir = temp_dir or tempfile.gettempdir()
        self.piece_size = piece_size
        self.budget = budget
        self._first_size = first_size  # until the first piece is cut
        self._filled: list[Piece] = []
        self._piece: Piece | None = None
        self._file: BinaryIO | None = None

    @property
    def pending(self) -> int:
        """Bytes in the piece being filled."""
        return self._piece.size if self._piece else 0

    async def awrite(self, data: bytes, *, force: bool = False) -> None:
        """`write`, off the event loop; the pieces it fills wait in `take_filled()`. A
        cancel waits for the thread: the file is never closed under a write in flight,
        and the filled pieces stay there for the owner to take."""
        if not data:
            return
        if self.budget is not None:
            self.budget.take(len(data), force=force)
        work = asyncio.ensure_future(asyncio.to_thread(self._write, data))
        try:
            await await_to_completion(work)
        finally:
            if self.budget is not None:
                self.budget.give(len(data))  # now counted by the pieces that hold them
            if work.done() and not work.cancelled() and work.exception() is None:
                self._filled += work.result()

    def take_filled(self) -> Piece | None:
        """The oldest piece `awrite` filled (now owned by the caller), or None."""
        return self._filled.pop(0) if self._filled else None

    def write(self, data: bytes) -> list[Piece]:
        """Append `data`; return the pieces it filled (now owned by the caller)."""
        if self.budget is not None:
            self.budget.take(len(data))
        try:
            return self._write(data)
        finally:
            if self.budget is not None:
                self.budget.give(len(data))

    def _write(self, data: bytes) -> list[Piece]:
        full: list[Piece] = []
        view = memoryview(data)
        try:
            while view:
                if self._piece is None:
                    self._open()
                assert self._piece is not None and self._file is not None
                size = self.piece_size if self._first_size is None else self._first_size
                room = size - self._piece.size
                taken = view[:room]
                self._file.write(taken)
                self._piece.size += len(taken)
                if self.budget is not None:
                    self.budget.take(len(taken), force=True)
                view = view[len(taken) :]
                if self._piece.size >= size:
                    full.append(self.cut())  # type: ignore[arg-type]
        except OSError:
            # A full disk or an unwritable directory: how much of the piece reached the
            # file is unknown, so it must never be sent. Its bytes are not kept.
            for piece in full:
                piece.remove()
            self.discard()
            raise
        return full

    async def acopy(self, piece: Piece) -> None:
        """Append the bytes of `piece` (already counted by the budget), off the event loop."""

        def copy() -> list[Piece]:
            full: list[Piece] = []
            with piece.open() as f:
                while data := f.read(COPY_BLOCK):
                    full += self._write(data)
            return full

        self._filled += await await_to_completion(asyncio.to_thread(copy))

    def cut(self) -> Piece | None:
        """Hand over the piece being filled (None if it is empty)."""
        self._first_size = None
        piece, self._piece = self._piece, None
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()  # flushes: may fail on a full disk
            except OSError:
                if piece is not None:
                    piece.remove()
                raise
        if piece is not None and piece.size == 0:
            piece.remove()
            return None
        return piece

    def discard(self) -> None:
        """Remove the piece being filled, and the filled ones not taken."""
        for filled in self._filled:
            filled.remove()
        self._filled = []
        piece, self._piece = self._piece, None
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()
        if piece is not None:
            piece.remove()

    def _open(self) -> None:
        for attempt in range(3):
            directory = process_dir(self.temp_dir)
            _make_private_dir(directory)
            path = os.path.join(directory, os.urandom(8).hex())
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            except FileNotFoundError:  # the directory was removed with its last piece meanwhile
                if attempt == 2:
                    raise
                continue
            self._file = os.fdopen(fd, "wb")
            self._piece = Piece(path, budget=self.budget)
            return


def process_dir(temp_dir: str | None) -> str:
    """This process's private spool directory under `temp_dir`."""
    return os.path.join(temp_dir or tempfile.gettempdir(), f"{TEMP_PREFIX}{_owner(os.getpid())}")


def _make_private_dir(directory: str) -> None:
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    try:
        os.mkdir(directory, 0o700)
        return
    except FileExistsError:
        pass
    info = os.lstat(directory)
    # Someone else's directory (or a link) under our name: never write into it.
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise PermissionError(f"{directory} is not a directory of this user")
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(directory, 0o700)


def check_writable(temp_dir: str | None) -> None:
    """Fail early, with the OSError naming the directory, when spooling cannot work."""
    directory = temp_dir or tempfile.gettempdir()
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryFile(dir=directory, prefix="tusserver-probe-"):
        pass


def remove_stale_spools(temp_dir: str | None) -> int:
    """Remove spool directories (and files, from older versions) left by processes that
    no longer run (a crash)."""
    removed = 0
    for path in glob.glob(os.path.join(glob.escape(temp_dir or tempfile.gettempdir()), TEMP_PREFIX + "*")):
        owner = os.path.basename(path)[len(TEMP_PREFIX) :].split("-")
        pid = owner[0]
        # A restarted container runs the server under the same pid again (often 1): the
        # start time tells the crashed process from the live one.
        directory = os.path.isdir(path) and not os.path.islink(path)
        # Files of older versions are named <pid>-<start>-<token>, or <pid>-<token>.
        unknown_start = len(owner) < (2 if directory else 3)
        if pid.isdigit() and process_alive(int(pid)) and (unknown_start or owner[1] == _started(int(pid))):
            continue
        if directory:
            shutil.rmtree(path, ignore_errors=True)
        else:
            Piece(path).remove()
        removed += 1
    return removed


def all_spool_bytes(temp_dir: str | None) -> int:
    """Bytes in the spool files of every process using `temp_dir` (--workers)."""
    return _bytes_of(os.path.join(glob.escape(temp_dir or tempfile.gettempdir()), TEMP_PREFIX + "*", "*"))


def spool_bytes(temp_dir: str | None) -> int:
    """Bytes in this process's spool files."""
    return _bytes_of(os.path.join(glob.escape(process_dir(temp_dir)), "*"))


def _bytes_of(pattern: str) -> int:
    total = 0
    for path in glob.glob(pattern):
        try:
            total += os.stat(path).st_size
        except FileNotFoundError:
            continue  # removed while we looked
    return total


@functools.lru_cache(maxsize=4)
def _owner(pid: int) -> str:
    """This process's tag in spool names; keyed by pid so a forked child gets its own."""
    return f"{pid}-{_started(pid)}"


def _started(pid: int) -> str:
    """When the process started (clock ticks since boot), or "0" where /proc is missing."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_line = f.read()
        return stat_line[stat_line.rindex(b")") + 2 :].split()[19].decode()
    except (OSError, ValueError, IndexError):
        return "0"


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
