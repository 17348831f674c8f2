"""Helpers for the `tusserver upload` tests: the uploader as a real process, a loopback TCP
proxy that throttles, cuts or stalls the bytes going up, an HTTP proxy that answers 429 or
corrupts a PATCH body once, and readers of what a server stored and received."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time

import aiohttp
from aiohttp import web

MiB = 1 << 20


def write_random(path, size: int) -> str:
    """Write `size` random bytes to `path`; return their sha256."""
    data = os.urandom(size)
    with open(path, "wb") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


class Uploader:
    """One `python -m tusserver upload ...` process with its own XDG cache directory."""

    def __init__(self, cache_dir, *args: str, stdin: bytes | None = None) -> None:
        self.args = args
        self.cache_dir = str(cache_dir)
        self.stdin = stdin
        self.proc: asyncio.subprocess.Process | None = None
        self.stdout = b""
        self.stderr = b""
        self._io: asyncio.Task | None = None

    async def start(self) -> Uploader:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tusserver", "upload", *self.args,
            stdin=asyncio.subprocess.PIPE if self.stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "XDG_CACHE_HOME": self.cache_dir, "PYTHONUNBUFFERED": "1"},
        )
        self._io = asyncio.create_task(self.proc.communicate(self.stdin))
        return self

    async def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None and self._io is not None
        self.stdout, self.stderr = await asyncio.wait_for(self._io, timeout)
        return self.proc.returncode

    async def run(self, timeout: float = 60.0) -> int:
        await self.start()
        return await self.wait(timeout)

    @property
    def err(self) -> str:
        return self.stderr.decode(errors="replace")

    @property
    def out(self) -> str:
        return self.stdout.decode(errors="replace")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


class TcpProxy:
    """Forwards loopback TCP connections to `target_port`. Bytes going up (client to server)
    are counted in `forwarded`, and can be throttled to `rate` bytes/s, cut once after
    `cut_after` bytes (both sides closed), or stalled once after `stall_after` bytes (nothing
    forwarded for `stall_seconds`, then both sides closed)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.rate: float | None = None
        self.cut_after: int | None = None
        self.stall_after: int | None = None
        self.stall_seconds = 3.0
        self.forwarded = 0
        self.cuts = 0
        self.stalls = 0
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/files/"

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, client_reader, client_writer) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.close()
            self._tasks.discard(task)
            return
        up = asyncio.create_task(self._up(client_reader, server_writer))
        down = asyncio.create_task(self._pipe(server_reader, client_writer))
        try:
            await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (up, down):
                t.cancel()
            for writer in (client_writer, server_writer):
                writer.transport.abort()
            self._tasks.discard(task)

    async def _up(self, reader, writer) -> None:
        while data := await reader.read(64 * 1024):
            if self.cut_after is not None and self.forwarded + len(data) >= self.cut_after:
                take = self.cut_after - self.forwarded
                writer.write(data[:take])
                await writer.drain()
                self.forwarded += take
                self.cut_after = None
                self.cuts += 1
                return
            if self.stall_after is not None and self.forwarded + len(data) >= self.stall_after:
                take = self.stall_after - self.forwarded
                writer.write(data[:take])
                await writer.drain()
                self.forwarded += take
                self.stall_after = None
                self.stalls += 1
                await asyncio.sleep(self.stall_seconds)
                return
            writer.write(data)
            await writer.drain()
            self.forwarded += len(data)
            if self.rate:
                await asyncio.sleep(len(data) / self.rate)

    @staticmethod
    async def _pipe(reader, writer) -> None:
        while data := await reader.read(64 * 1024):
            writer.write(data)
            await writer.drain()


_HOP = {"content-length", "transfer-encoding", "connection", "keep-alive"}


class HttpProxy:
    """An HTTP reverse proxy to `target` that answers the next `too_many` PATCHes itself with
    429 and `Retry-After: retry_after`, and flips one byte in the body of the next `corrupt`
    PATCHes. `log` holds (method, status, monotonic time) of every answer."""

    def __init__(self, target: str) -> None:
        self.target = target.split("/files/")[0]  # the origin: request paths keep their /files/
        self.too_many = 0
        self.retry_after = 2
        self.corrupt = 0
        self.log: list[tuple[str, int, float]] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/files/"

    async def start(self) -> HttpProxy:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.method == "PATCH" and self.too_many > 0:
            self.too_many -= 1
            self.log.append(("PATCH", 429, time.monotonic()))
            return web.Response(status=429, text="slow down\n", headers={"Retry-After": str(self.retry_after)})
        if request.method == "PATCH" and self.corrupt > 0 and body:
            self.corrupt -= 1
            damaged = bytearray(body)
            damaged[len(damaged) // 2] ^= 0xFF
            body = bytes(damaged)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        assert self._session is not None
        async with self._session.request(
            request.method, self.target + request.rel_url.raw_path_qs, headers=headers, data=body or None
        ) as upstream:
            payload = await upstream.read()
            kept = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP}
            self.log.append((request.method, upstream.status, time.monotonic()))
            return web.Response(status=upstream.status, headers=kept, body=payload)


async def stored_sha256(url: str) -> str:
    """sha256 of what the server holds for the upload at `url` (GET)."""
    digest = hashlib.sha256()
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200, (url, response.status)
        async for block in response.content.iter_chunked(1 << 20):
            digest.update(block)
    return digest.hexdigest()


async def head(url: str) -> dict[str, str]:
    async with aiohttp.ClientSession() as session, session.head(url, headers={"Tus-Resumable": "1.0.0"}) as response:
        assert response.status == 200, (url, response.status)
        return dict(response.headers)


async def received_bytes(server_url: str) -> float:
    """The server's tusserver_received_bytes_total, from /metrics."""
    root = server_url.split("/files/")[0]
    async with aiohttp.ClientSession() as session, session.get(root + "/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith("tusserver_received_bytes_total "):
            return float(line.split()[1])
    raise AssertionError("no tusserver_received_bytes_total in /metrics")


async def wait_until(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
