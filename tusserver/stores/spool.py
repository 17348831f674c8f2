"""Temp-file spooling: a byte stream cut into files of a given size ("pieces"), so
that whole parts can be sent (and re-sent on retry) without holding them in memory."""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import secrets
import tempfile
from dataclasses import dataclass
from typing import BinaryIO

# pid in the name: start-up cleanup must not remove files of another live process.
TEMP_PREFIX = "tusserver-spool-"


@dataclass
class Piece:
    """One temp file holding `size` bytes. Whoever holds a piece removes it."""

    path: str
    size: int = 0

    def open(self) -> BinaryIO:
        return open(self.path, "rb")

    def remove(self) -> None:
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass


class Spool:
    """Writes bytes into consecutive pieces of `piece_size` bytes (the last one shorter).

    `piece_size` may change between writes; it applies to the piece being filled."""

    def __init__(self, temp_dir: str | None, piece_size: int) -> None:
        self.temp_dir = temp_dir or tempfile.gettempdir()
        self.piece_size = piece_size
        self._piece: Piece | None = None
        self._file: BinaryIO | None = None

    @property
    def pending(self) -> int:
        """Bytes in the piece being filled."""
        return self._piece.size if self._piece else 0

    def write(self, data: bytes) -> list[Piece]:
        """Append `data`; return the pieces it filled (now owned by the caller)."""
        full: list[Piece] = []
        view = memoryview(data)
        try:
            while view:
                if self._piece is None:
                    self._open()
                assert self._piece is not None and self._file is not None
                room = self.piece_size - self._piece.size
                taken = view[:room]
                self._file.write(taken)
                self._piece.size += len(taken)
                view = view[len(taken) :]
                if self._piece.size >= self.piece_size:
                    full.append(self.cut())  # type: ignore[arg-type]
        except OSError:
            # A full disk or an unwritable directory: how much of the piece reached the
            # file is unknown, so it must never be sent. Its bytes are not kept.
            for piece in full:
                piece.remove()
            self.discard()
            raise
        return full

    def cut(self) -> Piece | None:
        """Hand over the piece being filled (None if it is empty)."""
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
        """Remove the piece being filled."""
        piece, self._piece = self._piece, None
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()
        if piece is not None:
            piece.remove()

    def _open(self) -> None:
        os.makedirs(self.temp_dir, exist_ok=True)
        path = os.path.join(self.temp_dir, f"{TEMP_PREFIX}{_owner(os.getpid())}-{secrets.token_hex(8)}")
        self._file = open(path, "xb")
        self._piece = Piece(path)


def check_writable(temp_dir: str | None) -> None:
    """Fail early, with the OSError naming the directory, when spooling cannot work."""
    directory = temp_dir or tempfile.gettempdir()
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryFile(dir=directory, prefix="tusserver-probe-"):
        pass


def remove_stale_spools(temp_dir: str | None) -> int:
    """Remove spool files left by processes that no longer run (a crash)."""
    removed = 0
    for path in glob.glob(os.path.join(temp_dir or tempfile.gettempdir(), TEMP_PREFIX + "*")):
        owner = os.path.basename(path)[len(TEMP_PREFIX) :].split("-")
        pid = owner[0]
        # A restarted container runs the server under the same pid again (often 1): the
        # start time tells the crashed process from the live one.
        if pid.isdigit() and _alive(int(pid)) and (len(owner) < 3 or owner[1] == _started(int(pid))):
            continue
        Piece(path).remove()
        removed += 1
    return removed


@functools.lru_cache(maxsize=4)
def _owner(pid: int) -> str:
    """This process's tag in spool file names; keyed by pid so a forked child gets its own."""
    return f"{pid}-{_started(pid)}"


def _started(pid: int) -> str:
    """When the process started (clock ticks since boot), or "0" where /proc is missing."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2 :].split()[19].decode()
    except (OSError, ValueError, IndexError):
        return "0"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
