"""Where unfinished uploads are remembered between runs: one small JSON file in the user's
cache directory ($XDG_CACHE_HOME/tusserver/uploads.json), keyed by a fingerprint of the
file (absolute path, size, mtime) and the endpoint, so that the same command resumes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: runs that overlap may lose each other's entries; nothing worse
    fcntl = None  # type: ignore[assignment]

MAX_ENTRIES = 1000  # oldest dropped first
MAX_AGE = 30 * 86400.0  # seconds; servers expire unfinished uploads long before this


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tusserver"


def fingerprint(path: str, size: int, mtime_ns: int, endpoint: str) -> str:
    """The key of one file's upload to one endpoint; any change to the file makes a new key."""
    text = json.dumps([os.path.abspath(path), size, mtime_ns, endpoint])
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


class ResumeStore:
    """The remembered upload URLs; each call reads and rewrites the file under a lock, so
    concurrent runs do not lose each other's entries."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else cache_dir() / "uploads.json"

    def get(self, key: str) -> dict[str, Any] | None:
        with self._locked() as entries:
            entry = entries.get(key)
            return dict(entry) if isinstance(entry, dict) else None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        with self._locked(write=True) as entries:
            entries[key] = {**entry, "updated": time.time()}

    def drop(self, key: str) -> bool:
        with self._locked(write=True) as entries:
            return entries.pop(key, None) is not None

    @contextlib.contextmanager
    def _locked(self, write: bool = False) -> Iterator[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            entries = self._read()
            yield entries
            if write:
                self._write(entries)

    def _read(self) -> dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as f:
                entries = json.load(f)
        except (OSError, ValueError):  # missing or damaged: start afresh
            return {}
        return entries if isinstance(entries, dict) else {}

    def _write(self, entries: dict[str, Any]) -> None:
        now = time.time()
        fresh = {k: v for k, v in entries.items() if isinstance(v, dict) and now - v.get("updated", 0) < MAX_AGE}
        newest = sorted(fresh.items(), key=lambda item: item[1].get("updated", 0))[-MAX_ENTRIES:]
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(temp, "w", encoding="utf-8") as f:
                json.dump(dict(newest), f)
            os.replace(temp, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
