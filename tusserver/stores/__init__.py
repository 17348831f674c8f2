from .base import (
    ConcatenatingStore,
    Download,
    ExpiringStore,
    FileDownload,
    LengthDeferringStore,
    RedirectDownload,
    SessionStore,
    Store,
    StreamDownload,
    TerminatingStore,
    Upload,
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
    "SessionStore",
    "Store",
    "StreamDownload",
    "TerminatingStore",
    "Upload",
]
