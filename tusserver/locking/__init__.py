"""Per-upload locks: the Locker protocol and its versions (base), one process's locks
(memory), locks shared by the processes of one machine through files (files), and locks
shared by several instances through Redis (redis)."""

from __future__ import annotations

from ..config import Config
from .base import Locker, ReleaseCallback, held_version, holding_version, seeing_version, seen_version
from .memory import MemoryLocker

__all__ = [
    "Locker",
    "MemoryLocker",
    "ReleaseCallback",
    "held_version",
    "holding_version",
    "locker_from_config",
    "seeing_version",
    "seen_version",
]


def locker_from_config(config: Config) -> Locker:
    """RedisLocker when `redis_url` is set (several instances), else FileLocker when
    `lock_dir` is (several processes on one machine), else MemoryLocker."""
    if config.redis_url:
        from .redis import RedisLocker

        return RedisLocker.from_config(config)
    if config.lock_dir:
        from .files import FileLocker

        return FileLocker(config.lock_dir, config.lock_timeout)
    return MemoryLocker(config.lock_timeout)
