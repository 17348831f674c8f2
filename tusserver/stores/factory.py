"""Build the configured store."""

from __future__ import annotations

from ..config import Config
from .base import Store


def store_from_config(config: Config) -> Store:
    if config.store == "file":
        from .file import FileStore

        return FileStore(config.file_dir)
    if config.store == "s3":
        from .s3 import S3Store

        return S3Store.from_config(config)
    raise ValueError(f"unknown store {config.store!r}; expected 'file' or 's3'")
