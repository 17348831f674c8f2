"""tusserver: a tus 1.0.0 resumable-upload server on aiohttp, for disk and S3."""

from .app import create_app
from .auth import make_token
from .config import Config
from .errors import TusError
from .hooks import HookEvent, HookRejected, HookResult, Hooks
from .info import UploadInfo
from .locks import MemoryLocker
from .ops import add_ops_routes
from .stores import FileStore, Store

__all__ = [
    "Config",
    "FileStore",
    "HookEvent",
    "HookRejected",
    "HookResult",
    "Hooks",
    "MemoryLocker",
    "Store",
    "TusError",
    "UploadInfo",
    "add_ops_routes",
    "create_app",
    "make_token",
]
__version__ = "0.1.0"
