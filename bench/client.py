"""The one tus client of the benchmarks: it drives every server (ours, @tus/server and
ceiling-disk) with the same requests.

It speaks HTTP/1.1 itself over asyncio streams, with keep-alive connections, and sends
PATCH bodies with sendfile(2) straight from the source file: nothing is held in memory,
and the client spends as little of the machine's two cores as possible, so that the
server is what is measured. (An aiohttp client topped out near 550 MiB/s here.)
"""

from __future__ import annotations

import asyncio
from urllib.parse import urljoin, urlsplit

TUS = "Tus-Resumable: 1.0.0\r\n"


class TusError(Exception):
    """A server answered something a correct tus server would not."""


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers  # names in lower case
        self.body = body


class TusClient:
    """Use as `async with TusClient(url) as client:`; connections close at the end."""

    def __init__(self, collection_url: str, upload_metadata: str | None = None) -> None:
        self.collection_url = collection_url
        # Sent with every POST when set: for servers that need some metadata (tuspyserver).
        self.metadata = f"Upload-Metadata: {upload_metadata}\r\n" if upload_metadata else ""
        self._idle: dict[tuple[str, int], list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}

    async def __aenter__(self) -> TusClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for connections in self._idle.values():
            for _, writer in connections:
                writer.close()
        self._idle.clear()

    async def create(self, length: int) -> str:
        """POST a new upload of `length` bytes; return its absolute URL."""
        headers = f"{TUS}Upload-Length: {length}\r\n{self.metadata}"
        response = await self._request("POST", self.collection_url, headers)
        if response.status != 201 or "location" not in response.headers:
            raise TusError(f"POST answered {response.status}")
        return urljoin(self.collection_url, response.headers["location"])

    async def patch(self, url: str, offset: int, path: str, start: int, size: int) -> int:
        """PATCH `size` bytes of file `path` (from `start`) at `offset`; return the new offset."""
        headers = (
            f"{TUS}Content-Type: application/offset+octet-stream\r\n"
            f"Upload-Offset: {offset}\r\nContent-Length: {size}\r\n"
        )
        response = await self._request("PATCH", url, headers, (path, start, size))
        new_offset = int(response.headers.get("upload-offset", -1))
        if response.status != 204 or new_offset != offset + size:
            raise TusError(f"PATCH at {offset} (+{size}) answered {response.status}, offset {new_offset}")
        return new_offset

    async def head(self, url: str) -> int:
        response = await self._request("HEAD", url, TUS)
        if response.status != 200:
            raise TusError(f"HEAD answered {response.status}")
        return int(response.headers["upload-offset"])

    async def upload(self, path: str, size: int, patch_size: int | None = None) -> str:
        """Create an upload of the first `size` bytes of `path` and send them in PATCHes of
        `patch_size` (one PATCH when None); return the upload's URL."""
        url = await self.create(size)
        step = patch_size or size
        offset = 0
        while offset < size:
            offset = await self.patch(url, offset, path, offset, min(step, size - offset))
        return url

    async def _request(self, method: str, url: str, headers: str, body: tuple[str, int, int] | None = None) -> Response:
        parts = urlsplit(url)
        where = (parts.hostname or "127.0.0.1", parts.port or 80)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        idle = self._idle.setdefault(where, [])
        reader, writer = idle.pop() if idle else await asyncio.open_connection(*where)
        length = "Content-Length: 0\r\n" if body is None and method in ("POST", "PATCH") else ""
        writer.write(f"{method} {target} HTTP/1.1\r\nHost: {where[0]}:{where[1]}\r\n{headers}{length}\r\n".encode())
        try:
            if body is not None:
                path, start, size = body
                with open(path, "rb") as f:
                    await asyncio.get_running_loop().sendfile(writer.transport, f, start, size)
            else:
                await writer.drain()
            response, keep = await _read_response(reader, method)
        except BaseException:
            writer.close()
            raise
        if keep:
            idle.append((reader, writer))
        else:
            writer.close()
        return response


async def _read_response(reader: asyncio.StreamReader, method: str) -> tuple[Response, bool]:
    """One response; and whether the connection may carry another request."""
    line = await reader.readline()
    if not line:
        raise ConnectionError("the server closed the connection")
    status = int(line.split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    keep = headers.get("connection", "").lower() != "close"
    if method == "HEAD" or status in (204, 304) or status < 200:
        body = b""
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = await _read_chunked(reader)
    else:
        body, keep = await reader.read(), False
    return Response(status, headers, body), keep


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while size := int((await reader.readline()).split(b";")[0], 16):
        body += await reader.readexactly(size)
        await reader.readline()
    while (await reader.readline()) not in (b"\r\n", b"\n", b""):  # trailers
        pass
    return bytes(body)
