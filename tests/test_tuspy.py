"""tuspy (the PyPI tus client) against a real server: a 3 MiB file in 1 MiB chunks,
interrupted and resumed by new uploaders, checked by sha256 via GET and in the store."""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
import urllib.request

import pytest
from aiohttp import web
from tusclient import client as tus_client
from tusclient.storage.filestorage import FileStorage

from tests.stored import assert_store_holds
from tusserver import Config, create_app

MiB = 1 << 20


class ThreadedServer:
    """The app on a free loopback port, in its own thread and event loop (tuspy blocks)."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None
        self.port = 0

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        self.port = self.call(self._start())
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.runner is not None:
                self.call(self.runner.cleanup())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    async def _start(self) -> int:
        self.runner = web.AppRunner(self.app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return self.runner.addresses[0][1]

    def call(self, coro):
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)


def http(method: str, url: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method, headers={"Tus-Resumable": "1.0.0"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, dict(response.headers), response.read()


@pytest.fixture
def file_3mib(tmp_path):
    data = random.Random(42).randbytes(3 * MiB)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    return path, data


@pytest.fixture
def server(store_factory):
    store = store_factory()
    root = web.Application()
    root.add_subapp("/files/", create_app(Config(), store=store))
    with ThreadedServer(root) as running:
        running.store = store
        running.factory = store_factory
        yield running


def test_tuspy_upload_interrupted_and_resumed(server, file_3mib, tmp_path):
    path, data = file_3mib
    endpoint = f"http://127.0.0.1:{server.port}/files/"
    urls = FileStorage(str(tmp_path / "urls.json"))
    client = tus_client.TusClient(endpoint)

    def uploader(**kw):
        return client.uploader(
            str(path), chunk_size=MiB, store_url=True, url_storage=urls, metadata={"filename": "big.bin"}, **kw
        )

    first = uploader()
    first.upload(stop_at=MiB)  # interrupted after the first chunk
    url = first.url
    assert url.startswith(endpoint)
    upload_id = url.rsplit("/", 1)[1]
    status, headers, _ = http("HEAD", url)
    assert (status, headers["Upload-Offset"], headers["Upload-Length"]) == (200, str(MiB), str(3 * MiB))
    server.call(assert_store_holds(server.store, server.factory, upload_id, data[:MiB]))

    second = uploader()  # a new uploader finds the URL in url storage and asks for the offset
    assert second.url == url and second.offset == MiB
    second.upload(stop_at=2 * MiB)
    assert http("HEAD", url)[1]["Upload-Offset"] == str(2 * MiB)
    server.call(assert_store_holds(server.store, server.factory, upload_id, data[: 2 * MiB]))

    third = client.uploader(str(path), chunk_size=MiB, url=url)  # resume by URL alone
    assert third.offset == 2 * MiB
    third.upload()
    assert third.offset == 3 * MiB

    status, headers, _ = http("HEAD", url)
    assert (headers["Upload-Offset"], headers["Upload-Length"]) == (str(3 * MiB), str(3 * MiB))
    status, headers, body = http("GET", url)
    assert status == 200 and headers["Content-Length"] == str(3 * MiB)
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(data).hexdigest()
    server.call(assert_store_holds(server.store, server.factory, upload_id, data))
