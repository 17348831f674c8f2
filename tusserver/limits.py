"""Per-instance limits beyond the protocol's: metadata size and count, concurrent uploads
and downloads."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from . import errors
from .config import Config
from .errors import TusError
from .protocol import Metadata

RETRY_AFTER = "5"  # seconds a client is asked to wait when the instance is full


def check_metadata(header: str | None, metadata: Metadata, config: Config) -> None:
    """Raise if Upload-Metadata (the header as sent, and its parsed keys) is over the limits."""
    size = len(header.encode("utf-8", "surrogateescape")) if header else 0
    if config.max_metadata_size is not None and size > config.max_metadata_size:
        raise TusError(errors.METADATA_TOO_LARGE, f"{size} bytes; the limit is {config.max_metadata_size}")
    if config.max_metadata_count is not None and len(metadata) > config.max_metadata_count:
        raise TusError(errors.TOO_MANY_METADATA_KEYS, f"{len(metadata)} keys; the limit is {config.max_metadata_count}")


class UploadSlots:
    """Counts requests receiving upload bytes; refuses new ones beyond `limit` (None: no limit)."""

    full = errors.TOO_MANY_UPLOADS

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.active = 0

    @contextmanager
    def take(self) -> Iterator[None]:
        if self.limit is not None and self.active >= self.limit:
            raise TusError(self.full, headers={"Retry-After": RETRY_AFTER})
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1


class DownloadSlots(UploadSlots):
    """Counts downloads being sent; refuses new ones beyond `limit`."""

    full = errors.TOO_MANY_DOWNLOADS
