"""Progress of the uploads: bars from rich on a terminal (one per file and a total), a line
every few seconds elsewhere (logs of CI jobs), or nothing (--quiet)."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.progress import TaskID

LINE_EVERY = 5.0  # seconds between lines off a terminal


class FileProgress:
    """The bytes of one file the server has (or that are on their way to it)."""

    def update(self, done: int) -> None:  # pragma: no cover - the silent default
        pass

    def finish(self) -> None:
        pass


class Progress:
    """The silent reporter, and the interface of the others."""

    def add_file(self, name: str, total: int | None) -> FileProgress:
        return FileProgress()

    def close(self) -> None:
        pass


class RichProgress(Progress):
    def __init__(self, total: int | None, stream: TextIO = sys.stderr) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as Bars

        self._bars = Bars(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(file=stream),
            transient=False,
        )
        self._total = self._bars.add_task("total", total=total)
        self._base = 0  # bytes of the files already finished
        self._bars.start()

    def add_file(self, name: str, total: int | None) -> FileProgress:
        task = self._bars.add_task(name, total=total)
        return _RichFile(self, task)

    def close(self) -> None:
        self._bars.stop()


class _RichFile(FileProgress):
    def __init__(self, owner: RichProgress, task: TaskID) -> None:
        self.owner = owner
        self.task = task
        self.done = 0

    def update(self, done: int) -> None:
        self.done = done
        bars = self.owner._bars
        bars.update(self.task, completed=done)
        bars.update(self.owner._total, completed=self.owner._base + done)

    def finish(self) -> None:
        bars = self.owner._bars
        total = bars.tasks[self.task].total
        if total is None:
            bars.update(self.task, total=self.done)
        self.owner._base += self.done


class LineProgress(Progress):
    def __init__(self, stream: TextIO = sys.stderr, every: float = LINE_EVERY) -> None:
        self.stream = stream
        self.every = every

    def add_file(self, name: str, total: int | None) -> FileProgress:
        return _LineFile(self, name, total)


class _LineFile(FileProgress):
    def __init__(self, owner: LineProgress, name: str, total: int | None) -> None:
        self.owner = owner
        self.name = name
        self.total = total
        self.started = self.last = time.monotonic()
        self.first: int | None = None  # bytes at the first update: a resumed upload's rate counts from there
        self.done = 0

    def update(self, done: int) -> None:
        self.done = done
        if self.first is None:
            self.first = done
        now = time.monotonic()
        if now - self.last >= self.owner.every:
            self.last = now
            self._line(now)

    def _line(self, now: float) -> None:
        rate = (self.done - (self.first or 0)) / max(now - self.started, 1e-9)
        text = f"{self.name}: {format_bytes(self.done)}"
        if self.total:
            text += f" of {format_bytes(self.total)} ({100 * self.done // self.total}%)"
        text += f", {format_bytes(rate)}/s"
        if self.total and rate > 0:
            text += f", {format_seconds((self.total - self.done) / rate)} left"
        print(text, file=self.owner.stream, flush=True)


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def make_progress(quiet: bool, total: int | None, stream: TextIO = sys.stderr) -> Progress:
    """Bars on a terminal, lines elsewhere, nothing when quiet."""
    if quiet:
        return Progress()
    if stream.isatty():
        return RichProgress(total, stream)
    return LineProgress(stream)
