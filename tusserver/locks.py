"""Moved to tusserver.locking; kept for imports of the old name."""

from .locking import *  # noqa: F403
from .locking import __all__  # noqa: F401
