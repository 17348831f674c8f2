"""tusserver: a tus 1.0.0 resumable-upload server for disk and S3, on aiohttp or any ASGI server."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Imported on first use, so that `tusserver.client` (the uploader) and `tusserver.protocol`
# load without the server side (aiohttp.web, the stores).
_EXPORTS = {
    "Config": ".config",
    "FileStore": ".stores",
    "HookEvent": ".hooks",
    "HookRejected": ".hooks",
    "HookResult": ".hooks",
    "Hooks": ".hooks",
    "MemoryLocker": ".locking",
    "Quota": ".owners",
    "Store": ".stores",
    "TusError": ".errors",
    "UploadInfo": ".info",
    "add_ops_routes": ".app",
    "create_app": ".app",
    "create_asgi_app": ".asgi",
    "make_token": ".auth",
}

if TYPE_CHECKING:
    from .app import add_ops_routes, create_app
    from .asgi import create_asgi_app
    from .auth import make_token
    from .config import Config
    from .errors import TusError
    from .hooks import HookEvent, HookRejected, HookResult, Hooks
    from .info import UploadInfo
    from .locking import MemoryLocker
    from .owners import Quota
    from .stores import FileStore, Store

__all__ = [
    "Config",
    "FileStore",
    "HookEvent",
    "HookRejected",
    "HookResult",
    "Hooks",
    "MemoryLocker",
    "Quota",
    "Store",
    "TusError",
    "UploadInfo",
    "add_ops_routes",
    "create_app",
    "create_asgi_app",
    "make_token",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tusserver' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
