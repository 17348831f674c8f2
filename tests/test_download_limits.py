"""Downloads cannot starve uploads: a bounded number of streaming downloads, each on S3
connections of its own, and a download whose client stops reading is dropped after
`download_stall_timeout`. Over real HTTP, with raw sockets that stop reading."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import time

import pytest
from yarl import URL

from tests.hanging import wait_until
from tests.tus_client import OCTETS, TUS
from tusserver import Config, add_ops_routes, create_app
from tusserver import storage_errors as storage
from tusserver.app import HANDLERS_KEY
from tusserver.load import ConfigError, load_config
from tusserver.stores.s3 import S3Store

MiB = 1 << 20
PATIENCE = 30  # seconds; a bound against hanging, not a timing assertion
ANSWER_WITHIN = 2.0  # seconds, as the issue asks: uploads keep being answered


class StalledDownload:
    """A GET over a raw socket with a tiny receive buffer, that reads the response's
    head and then stops reading, like a client that went to sleep."""

    def __init__(self, sock: socket.socket, status: int, head: bytes) -> None:
        self.sock = sock
        self.status = status
        self.head = head

    @classmethod
    async def open(cls, host: str, port: int, path: str) -> StalledDownload:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, port))
        await loop.sock_sendall(sock, f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await loop.sock_recv(sock, 1)  # byte by byte: take none of the body
            if not chunk:
                raise AssertionError(f"connection closed before the response head: {head!r}")
            head += chunk
        return cls(sock, int(head.split(b" ", 2)[1]), head)

    async def read(self, length: int) -> bytes:
        """Resume reading: the body's first `length` bytes, or less if the server closes
        the connection first."""
        loop = asyncio.get_running_loop()
        body = bytearray()
        while len(body) < length:
            try:
                chunk = await loop.sock_recv(self.sock, 1 << 16)
            except ConnectionResetError:
                break
            if not chunk:
                break
            body += chunk
        return bytes(body)

    def close(self) -> None:
        self.sock.close()


async def upload(client, data: bytes) -> str:
    headers = {**TUS, "Upload-Length": str(len(data)), "Content-Type": OCTETS}
    resp = await client.post("/", data=data, headers=headers)
    assert resp.status == 201, await resp.text()
    return URL(resp.headers["Location"]).path


async def stall(client, path: str, count: int) -> list[StalledDownload]:
    opening = [StalledDownload.open(client.host, client.port, path) for _ in range(count)]
    return await asyncio.wait_for(asyncio.gather(*opening), PATIENCE)


async def post_and_head(client) -> float:
    """Seconds a new upload's POST and then its HEAD took to be answered."""
    started = time.monotonic()
    resp = await client.post("/", headers={**TUS, "Upload-Length": "10"})
    assert resp.status == 201, await resp.text()
    resp = await client.head(URL(resp.headers["Location"]).path, headers=TUS)
    assert (resp.status, resp.headers["Upload-Offset"]) == (200, "0")
    return time.monotonic() - started


@pytest.fixture
def s3_store(moto_endpoint, bucket, tmp_path):
    return lambda: S3Store(bucket, endpoint_url=moto_endpoint, path_style=True, temp_dir=str(tmp_path))


async def test_48_stalled_s3_downloads_leave_uploads_answered_within_2s(aiohttp_client, s3_store):
    client = await aiohttp_client(create_app(Config(), store=s3_store()))
    data = os.urandom(24 * MiB)
    path = await upload(client, data)
    stalled = await stall(client, path, 48)
    try:
        statuses = sorted(d.status for d in stalled)
        # The default max_concurrent_downloads (32) stream; the rest are told to come back.
        assert statuses == [200] * 32 + [503] * 16
        assert all(b"\r\nRetry-After: 5\r\n" in d.head for d in stalled if d.status == 503)
        latencies = [await asyncio.wait_for(post_and_head(client), ANSWER_WITHIN) for _ in range(5)]
        print(f"POST+HEAD under 48 stalled downloads: {', '.join(f'{t * 1000:.0f} ms' for t in latencies)}")
    finally:
        for download in stalled:
            download.close()
    # Once they are gone, their slots are free again, and a reader gets every byte.
    handlers = client.app[HANDLERS_KEY]
    await wait_until(lambda: handlers.downloads.active == 0, "the closed downloads to give back their slots")
    resp = await client.get(path)
    assert hashlib.sha256(await resp.read()).hexdigest() == hashlib.sha256(data).hexdigest()


@pytest.fixture
async def serve(aiohttp_client, store_factory):
    async def start(**settings):
        return await aiohttp_client(create_app(Config(**settings), store=store_factory()))

    return start


async def test_a_download_whose_client_stops_reading_is_dropped_after_the_stall_timeout(serve, caplog):
    caplog.set_level(logging.INFO, "tusserver")
    client = await serve(download_stall_timeout=1)
    data = os.urandom(16 * MiB)  # more than the socket buffers hold
    path = await upload(client, data)
    handlers = client.app[HANDLERS_KEY]
    [stalled] = await stall(client, path, 1)
    assert stalled.status == 200
    assert handlers.downloads.active == 1
    # The server gives up on it, and says so; the connection is closed without the rest.
    await wait_until(lambda: handlers.downloads.active == 0, "the server to drop the stalled download", PATIENCE)
    received = await asyncio.wait_for(stalled.read(len(data)), PATIENCE)
    assert len(received) < len(data) and data.startswith(received)
    stalled.close()
    dropped = [r.getMessage() for r in caplog.records if "dropped after" in r.getMessage()]
    assert len(dropped) == 1 and dropped[0].endswith(f"of {len(data)} bytes: the client read nothing for 1 s")
    # A client that pauses for less than the timeout gets every byte.
    [paused] = await stall(client, path, 1)
    await asyncio.sleep(0.3)
    body = await asyncio.wait_for(paused.read(len(data)), PATIENCE)
    paused.close()
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(data).hexdigest()


async def test_downloads_beyond_the_limit_get_503_with_retry_after(serve):
    client = await serve(max_concurrent_downloads=2)
    data = os.urandom(16 * MiB)
    path = await upload(client, data)
    stalled = await stall(client, path, 2)
    assert [d.status for d in stalled] == [200, 200]
    resp = await client.get(path)
    assert (resp.status, resp.headers["Retry-After"]) == (503, "5")
    assert await resp.text() == "server has too many downloads in progress; retry shortly\n"
    # Uploads are not downloads: they are still served.
    assert await asyncio.wait_for(post_and_head(client), ANSWER_WITHIN) < ANSWER_WITHIN
    # A client that goes away gives its slot back.
    stalled[0].close()
    handlers = client.app[HANDLERS_KEY]
    await wait_until(lambda: handlers.downloads.active == 1, "the closed download to give back its slot")
    resp = await client.get(path)
    assert resp.status == 200
    assert hashlib.sha256(await resp.read()).hexdigest() == hashlib.sha256(data).hexdigest()
    stalled[1].close()


async def test_an_s3_call_waiting_for_a_pooled_connection_gives_up(aiohttp_client, moto_endpoint, bucket, tmp_path):
    # A pool of one connection, held by a download that is not read: the next call waits
    # for it at most pool_wait (per attempt), then fails as the store being unavailable.
    store = S3Store(bucket, endpoint_url=moto_endpoint, path_style=True, temp_dir=str(tmp_path), download_concurrency=1)
    store.retry_attempts, store.pool_wait = 1, 0.5
    client = await aiohttp_client(create_app(Config(), store=store))
    data = os.urandom(3 * MiB)
    info = await store.get_info((await upload(client, data)).lstrip("/"))
    download = await store.download(info)
    async with download.open(0, len(data)) as held:
        with pytest.raises(storage.Unavailable):
            async with download.open(0, 1):
                pass
        # The pool of uploads and HEADs is another one: untouched.
        assert await asyncio.wait_for(post_and_head(client), ANSWER_WITHIN) < ANSWER_WITHIN
        body = b"".join([chunk async for chunk in held])
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(data).hexdigest()
    # Once it is back, the next download gets it.
    async with download.open(2, 5) as chunks:
        assert b"".join([chunk async for chunk in chunks]) == data[2:5]


async def test_readyz_asks_s3_at_most_once_a_second(aiohttp_client, s3_store):
    store = s3_store()
    app = create_app(Config(), store=store)
    add_ops_routes(app, app)
    client = await aiohttp_client(app)
    asked = []
    store.client.meta.events.register("before-call.s3.HeadBucket", lambda **kw: asked.append(1))
    answers = await asyncio.gather(*(client.get("/readyz") for _ in range(20)))
    answers += [await client.get("/readyz") for _ in range(5)]
    assert [r.status for r in answers] == [200] * 25
    assert len(asked) == 1
    await asyncio.sleep(1.1)  # past READY_CACHE: the next one asks again
    assert (await client.get("/readyz")).status == 200
    assert len(asked) == 2


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TUSSERVER_MAX_CONCURRENT_DOWNLOADS": "0"}, "max_concurrent_downloads must be at least 1, got 0"),
        ({"TUSSERVER_DOWNLOAD_STALL_TIMEOUT": "0"}, "download_stall_timeout must be more than 0 seconds, got 0.0"),
    ],
)
def test_download_limits_cannot_be_switched_off(env, message):
    with pytest.raises(ConfigError) as caught:
        load_config(env=env)
    assert str(caught.value) == message
    assert load_config(env={}).max_concurrent_downloads == 32
    assert load_config(env={}).download_stall_timeout == 30.0
