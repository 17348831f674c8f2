"""The resumable tus uploader behind `tusserver upload`, for use from other programs.

    from tusserver.client import upload, upload_sync
    result = await upload("big.iso", "https://example.com/files/")   # or upload_sync(...)
    print(result.url)

It works against any tus 1.0.0 server. Uploads of files are remembered in the user's cache
directory, so calling it again for the same file and endpoint resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from typing import BinaryIO

from .http import HttpClient
from .progress import FileProgress
from .resume import ResumeStore
from .tus import UploadError
from .uploader import Options, Uploader, UploadResult

__all__ = ["Options", "ResumeStore", "UploadError", "UploadResult", "Uploader", "upload", "upload_sync"]


class _Callback(FileProgress):
    def __init__(self, callback: Callable[[int], None]) -> None:
        self.callback = callback

    def update(self, done: int) -> None:
        self.callback(done)


async def upload(
    source: str | os.PathLike[str] | BinaryIO,
    url: str,
    *,
    metadata: Mapping[str, str | None] | None = None,
    headers: Mapping[str, str] | None = None,
    token: str | None = None,
    chunk_size: int | None = None,
    parallel: int = 1,
    checksum: str | None = None,
    retries: int = 10,
    timeout: float = 30.0,
    resume: bool = True,
    store: ResumeStore | None = None,
    progress: Callable[[int], None] | None = None,
) -> UploadResult:
    """Upload a file (a path) or a binary stream (deferred length) to the tus endpoint `url`.
    `progress(n)` is called with the bytes sent so far. Raises UploadError when it fails."""
    all_headers = dict(headers or {})
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    options = Options(
        chunk_size=chunk_size, parallel=parallel, checksum=checksum, retries=retries, timeout=timeout, resume=resume
    )
    watcher = _Callback(progress) if progress is not None else None
    async with HttpClient(timeout) as http:
        uploader = Uploader(http, url, headers=all_headers, options=options, store=store or ResumeStore())
        if isinstance(source, (str, os.PathLike)):
            return await uploader.upload_file(os.fspath(source), watcher, metadata)
        return await uploader.upload_stream(source, str(getattr(source, "name", "-")), watcher, metadata)


def upload_sync(source: str | os.PathLike[str] | BinaryIO, url: str, **options) -> UploadResult:
    """`upload` for code without an event loop; takes the same arguments."""
    return asyncio.run(upload(source, url, **options))
