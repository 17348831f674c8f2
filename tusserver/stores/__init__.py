from .base import (
    ConcatenatingStore,
    Download,
    ExpiringStore,
    FileDownload,
    LengthDeferringStore,
    RedirectDownload,
    Store,
    StreamDownload,
    TerminatingStore,
)
from .file import FileStore

__all__ = [
    "ConcatenatingStore",
    "Download",
    "ExpiringStore",
    "FileDownload",
    "FileStore",
    "LengthDeferringStore",
    "RedirectDownload",
    "Store",
    "StreamDownload",
    "TerminatingStore",
]
