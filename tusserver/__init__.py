"""tusserver: a tus 1.0.0 resumable-upload server on aiohttp, for disk and S3."""

from .app import create_app
from .config import Config
from .errors import TusError
from .info import UploadInfo
from .locks import MemoryLocker
from .stores import FileStore, Store

__all__ = ["Config", "FileStore", "MemoryLocker", "Store", "TusError", "UploadInfo", "create_app"]
__version__ = "0.1.0"
