"""Moved to tusserver.locking.redis; kept for imports of the old name."""

from .locking.redis import *  # noqa: F403
from .locking.redis import RedisLocker  # noqa: F401
