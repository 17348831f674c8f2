"""Test helpers for requests that go wrong: a PATCH sent over a raw socket so that it
can stall mid-body, and a count of the body bytes a store has taken in."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll until `predicate()` holds; a bound against hanging, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.01)


class RawResponse:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class HangingPatch:
    """A PATCH announcing `length` body bytes, sent piece by piece, so that it can be
    left hanging like the request of a client whose network dropped."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.sent = 0

    @classmethod
    async def start(
        cls, host: str, port: int, path: str, offset: int, length: int, **headers: str
    ) -> HangingPatch:
        reader, writer = await asyncio.open_connection(host, port)
        lines = [
            f"PATCH {path} HTTP/1.1",
            f"Host: {host}:{port}",
            "Tus-Resumable: 1.0.0",
            "Content-Type: application/offset+octet-stream",
            f"Upload-Offset: {offset}",
            f"Content-Length: {length}",
            *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()
        self.sent += len(data)

    async def response(self) -> RawResponse:
        """The server's answer (it may come while the body is still unfinished)."""
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return RawResponse(int(status_line.split()[1]), headers, body)

    def close(self) -> None:
        self.writer.close()


class Received:
    """Counts the body bytes a store's upload sessions have taken in (wraps the real
    store's `open` on that instance, and the `append` of each session it opens), so a test
    knows the server holds them before it acts."""

    def __init__(self, store) -> None:
        self.total = 0
        original = store.open

        async def open_counted(upload_id: str):
            upload = await original(upload_id)
            append = upload.append

            async def counted_append(body, *, atomic: bool = False):
                async def counted():
                    async for chunk in body:
                        self.total += len(chunk)
                        yield chunk

                return await append(counted(), atomic=atomic)

            upload.append = counted_append
            return upload

        store.open = open_counted

    async def at_least(self, count: int) -> None:
        await wait_until(lambda: self.total >= count, f"the server to receive {count} bytes")
