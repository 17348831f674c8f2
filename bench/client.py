"""The one tus client of the benchmarks: it drives every server (ours, @tus/server and
ceiling-disk) with the same requests, and never holds a body in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urljoin

import aiohttp

CHUNK = 1 << 20  # bytes read from the source file per write to the socket
TUS = {"Tus-Resumable": "1.0.0"}
PATCH_HEADERS = {**TUS, "Content-Type": "application/offset+octet-stream"}


class TusError(Exception):
    """A server answered something a correct tus server would not."""


async def file_chunks(path: str, start: int, size: int) -> AsyncIterator[bytes]:
    """`size` bytes of `path` from `start`, read as they are sent. The source lives in the
    page cache, so plain reads are faster than a hop to a thread."""
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        left = size
        while left:
            chunk = f.read(min(CHUNK, left))
            if not chunk:
                raise TusError(f"{path} ends before {start + size}")
            left -= len(chunk)
            yield chunk


class TusClient:
    def __init__(self, session: aiohttp.ClientSession, collection_url: str) -> None:
        self.session = session
        self.collection_url = collection_url

    async def create(self, length: int) -> str:
        """POST a new upload of `length` bytes; return its absolute URL."""
        headers = {**TUS, "Upload-Length": str(length)}
        async with self.session.post(self.collection_url, headers=headers) as response:
            await response.read()
            if response.status != 201 or "Location" not in response.headers:
                raise TusError(f"POST answered {response.status}")
            return urljoin(self.collection_url, response.headers["Location"])

    async def patch(self, url: str, offset: int, path: str, start: int, size: int) -> int:
        """PATCH `size` bytes of file `path` (from `start`) at `offset`; return the new offset."""
        headers = {**PATCH_HEADERS, "Upload-Offset": str(offset), "Content-Length": str(size)}
        async with self.session.patch(url, data=file_chunks(path, start, size), headers=headers) as response:
            await response.read()
            new_offset = int(response.headers.get("Upload-Offset", -1))
            if response.status != 204 or new_offset != offset + size:
                raise TusError(f"PATCH at {offset} (+{size}) answered {response.status}, offset {new_offset}")
            return new_offset

    async def head(self, url: str) -> int:
        async with self.session.head(url, headers=TUS) as response:
            if response.status != 200:
                raise TusError(f"HEAD answered {response.status}")
            return int(response.headers["Upload-Offset"])

    async def upload(self, path: str, size: int, patch_size: int | None = None) -> str:
        """Create an upload of the first `size` bytes of `path` and send them in PATCHes of
        `patch_size` (one PATCH when None); return the upload's URL."""
        url = await self.create(size)
        step = patch_size or size
        offset = 0
        while offset < size:
            offset = await self.patch(url, offset, path, offset, min(step, size - offset))
        return url


def session(connections: int = 64) -> aiohttp.ClientSession:
    """A keep-alive session without timeouts (a 1 GiB PATCH to a slow server is no error)."""
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None), auto_decompress=False)
