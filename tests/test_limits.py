"""Per-instance limits over real HTTP: metadata size and count, concurrent uploads, and a
maximum size chosen per request. (The read timeout is tested in test_locking.py.)"""

from __future__ import annotations

import asyncio
import os

import pytest

from tests.hanging import wait_until
from tests.tus_client import OCTETS, TUS, create, download, head, patch
from tusserver import Config, FileStore, create_app
from tusserver.app import HANDLERS_KEY

PATIENCE = 30  # seconds; a bound against hanging, not a timing assertion


def uploads_in(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.suffix == ".info") if directory.exists() else []


@pytest.fixture
def server(aiohttp_client, tmp_path):
    async def start(config: Config, **kw):
        return await aiohttp_client(create_app(config, store=FileStore(str(tmp_path / "uploads")), **kw))

    return start


async def test_metadata_over_the_size_limit_is_413_and_creates_nothing(server, tmp_path):
    client = await server(Config(max_metadata_size=20))
    header = "filename YS5wZGY=,k"  # 19 bytes
    resp = await client.post("/", headers={**TUS, "Upload-Length": "1", "Upload-Metadata": header + "x,y"})
    assert resp.status == 413
    assert await resp.text() == "Upload-Metadata is larger than the server allows: 22 bytes; the limit is 20\n"
    assert uploads_in(tmp_path / "uploads") == []
    resp = await client.post("/", headers={**TUS, "Upload-Length": "1", "Upload-Metadata": header + "x"})
    assert resp.status == 201  # exactly at the limit


async def test_metadata_with_too_many_keys_is_400_and_creates_nothing(server, tmp_path):
    client = await server(Config(max_metadata_count=2))
    resp = await client.post("/", headers={**TUS, "Upload-Length": "1", "Upload-Metadata": "a,b YQ==,c"})
    assert resp.status == 400
    assert await resp.text() == "Upload-Metadata has more keys than allowed: 3 keys; the limit is 2\n"
    assert uploads_in(tmp_path / "uploads") == []
    assert (await client.post("/", headers={**TUS, "Upload-Length": "1", "Upload-Metadata": "a,b YQ=="})).status == 201
    # Final uploads carry metadata too.
    partial = await create(client, 1, Upload_Concat="partial")
    resp = await client.post(
        "/", headers={**TUS, "Upload-Concat": f"final;{partial}", "Upload-Metadata": "a,b,c"}
    )
    assert resp.status == 400


async def test_concurrent_uploads_beyond_the_limit_get_503_with_retry_after(server, tmp_path):
    client = await server(Config(max_concurrent_uploads=1))
    data = os.urandom(2000)
    busy = await create(client, len(data))
    other = await create(client, 10)
    go_on = asyncio.Event()
    started = asyncio.Event()

    async def slow_body():
        yield data[:1000]
        started.set()
        await asyncio.wait_for(go_on.wait(), PATIENCE)
        yield data[1000:]

    headers = {**TUS, "Upload-Offset": "0", "Content-Type": OCTETS, "Content-Length": str(len(data))}
    running = asyncio.ensure_future(client.patch(busy, data=slow_body(), headers=headers))
    await asyncio.wait_for(started.wait(), PATIENCE)
    # The first PATCH holds the only slot: wait until the server counts it.
    app_handlers = client.app[HANDLERS_KEY]
    await wait_until(lambda: app_handlers.uploads.active == 1, "the first PATCH to take its slot")

    resp = await client.patch(other, data=b"0123456789", headers={**TUS, "Upload-Offset": "0", "Content-Type": OCTETS})
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "5"
    assert await resp.text() == "server has too many uploads in progress; retry shortly\n"
    before = uploads_in(tmp_path / "uploads")
    resp = await client.post("/", data=b"abc", headers={**TUS, "Upload-Length": "3", "Content-Type": OCTETS})
    assert resp.status == 503
    assert uploads_in(tmp_path / "uploads") == before  # a refused creation-with-upload creates nothing
    # Requests that carry no upload bytes are not limited.
    assert (await client.post("/", headers={**TUS, "Upload-Length": "3"})).status == 201
    assert (await head(client, other)).headers["Upload-Offset"] == "0"

    go_on.set()
    assert (await running).status == 204
    assert app_handlers.uploads.active == 0
    await patch(client, other, 0, b"0123456789")
    assert await download(client, busy) == data


async def test_max_size_for_lowers_the_limit_per_request(server):
    def plan_limit(request) -> int | None:
        return 10 if request.headers.get("X-Plan") == "free" else None

    client = await server(Config(max_size=100), max_size_for=plan_limit)
    free = {"X-Plan": "free"}
    resp = await client.post("/", headers={**TUS, **free, "Upload-Length": "11"})
    assert resp.status == 413
    assert await resp.text() == "upload is larger than the server's maximum size: limit is 10 bytes\n"
    assert (await client.post("/", headers={**TUS, "Upload-Length": "11"})).status == 201
    assert (await client.post("/", headers={**TUS, "Upload-Length": "101"})).status == 413
    assert (await client.options("/", headers={**TUS, **free})).headers["Tus-Max-Size"] == "10"
    assert (await client.options("/", headers=TUS)).headers["Tus-Max-Size"] == "100"

    # A deferred length is held to the same limit as its bytes arrive.
    path = await create(client, None, **{"X-Plan": "free"})
    resp = await client.patch(
        path, data=b"x" * 11, headers={**TUS, **free, "Upload-Offset": "0", "Content-Type": OCTETS}
    )
    assert resp.status == 413
    assert (await head(client, path)).headers["Upload-Offset"] == "0"
    headers = {**TUS, **free, "Upload-Offset": "0", "Upload-Length": "11", "Content-Type": OCTETS}
    resp = await client.patch(path, data=b"x" * 11, headers=headers)
    assert resp.status == 413


async def test_max_append_size_bounds_each_request_body(server, tmp_path):
    client = await server(Config(max_append_size=1000))
    # A creation with a body over the limit is refused before the upload exists.
    resp = await client.post(
        "/", headers={**TUS, "Upload-Length": "5000", "Content-Type": OCTETS}, data=os.urandom(1001)
    )
    assert resp.status == 413
    assert (await resp.text()).startswith("request body is larger than max_append_size: at most 1000")
    assert uploads_in(tmp_path / "uploads") == []
    location = await create(client, 5000)
    data = os.urandom(5000)
    resp = await patch(client, location, 0, data[:1001], expect=413)
    assert (await head(client, location)).headers["Upload-Offset"] == "0"

    # A chunked body (no Content-Length) keeps what fits, then is refused.
    async def chunked():
        yield data[:1500]

    resp = await client.patch(location, headers={**TUS, "Upload-Offset": "0", "Content-Type": OCTETS}, data=chunked())
    assert resp.status == 413
    assert (await head(client, location)).headers["Upload-Offset"] == "1000"
    for start in range(1000, 5000, 1000):
        await patch(client, location, start, data[start : start + 1000])
    assert await download(client, location) == data
