"""S3 failing under the S3 store: a fault-injecting proxy sits between the store and
moto. Transient faults are retried (botocore standard retries); lasting ones answer
503; the stored upload is never corrupt and a client that retries ends byte-exact."""

from __future__ import annotations

import asyncio
import logging
import os
from types import SimpleNamespace

import aiohttp
import pytest

from tests.faultproxy import FaultProxy
from tests.hanging import HangingPatch, Received
from tests.stored import assert_store_holds
from tests.tus_client import OCTETS, TUS, create, download, head, patch, sha256
from tusserver import Config, create_app

MiB = 1 << 20

pytestmark = pytest.mark.both_doors
# The store's botocore retries={"max_attempts": 4} counts retries: 5 attempts in all, so
# a fault met this many times in a row outlasts them.
ATTEMPTS = 5
PATIENCE = 30  # seconds; a bound against hanging, not a timing assertion


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    """botocore still retries as configured, but without its backoff of up to seconds."""
    from botocore.retries.standard import ExponentialBackoff

    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: 0.01)


@pytest.fixture
async def proxy(moto_endpoint):
    proxy = await FaultProxy(moto_endpoint).start()
    yield proxy
    await proxy.close()


@pytest.fixture
def factory(moto_endpoint):
    return SimpleNamespace(endpoint=moto_endpoint)


@pytest.fixture
async def server(aiohttp_client, proxy, bucket, tmp_path):
    from tusserver.stores.s3 import S3Store

    spool = tmp_path / "spool"
    store = S3Store(bucket, endpoint_url=proxy.url, path_style=True, temp_dir=str(spool), part_size=5 * MiB)
    client = await aiohttp_client(create_app(Config(), store=store))
    return SimpleNamespace(client=client, store=store, spool=spool)


def upload_id(path: str) -> str:
    return path.rsplit("/", 1)[1]


def spool_files(server) -> list[str]:
    return os.listdir(server.spool) if server.spool.exists() else []


@pytest.mark.parametrize("action", ["error", "reset", "reset_after"])
async def test_transient_faults_on_upload_part_are_retried(server, proxy, factory, action):
    data = os.urandom(11 * MiB + 1)
    path = await create(server.client, len(data))
    proxy.inject("UploadPart", action, times=2)
    resp = await patch(server.client, path, 0, data)
    assert resp.headers["Upload-Offset"] == str(len(data))
    assert proxy.injected == 2
    await assert_store_holds(server.store, factory, upload_id(path), data)
    assert spool_files(server) == []


async def test_upload_part_failing_for_good_is_503_and_the_client_resumes(server, proxy, factory):
    data = os.urandom(12 * MiB)
    path = await create(server.client, len(data))
    proxy.inject("UploadPart", "error", times=None)  # S3 refuses every part for a while
    resp = await patch(server.client, path, 0, data, expect=503)
    assert await resp.text() == "storage backend failed; retry later\n"
    proxy.clear()
    offset = int((await head(server.client, path)).headers["Upload-Offset"])
    # Part 1 failed: whatever went up after it is not counted, so nothing is.
    assert offset == 0
    await assert_store_holds(server.store, factory, upload_id(path), b"")
    assert spool_files(server) == []
    await patch(server.client, path, 0, data)
    await assert_store_holds(server.store, factory, upload_id(path), data)


async def test_a_later_part_failing_for_good_keeps_the_parts_before_it(server, proxy, factory):
    data = os.urandom(16 * MiB)
    path = await create(server.client, len(data))
    server.store.upload_concurrency = 1  # parts go up one after the other
    proxy.inject("UploadPart", "error", times=ATTEMPTS, skip=1)  # part 1 gets in, part 2 never
    await patch(server.client, path, 0, data, expect=503)
    assert (await head(server.client, path)).headers["Upload-Offset"] == str(5 * MiB)
    await assert_store_holds(server.store, factory, upload_id(path), data[: 5 * MiB])
    assert spool_files(server) == []
    await patch(server.client, path, 5 * MiB, data[5 * MiB :])
    await assert_store_holds(server.store, factory, upload_id(path), data)


async def test_list_parts_failing_is_503_and_changes_nothing(server, proxy, factory):
    data = os.urandom(12 * MiB)
    path = await create(server.client, len(data))
    await patch(server.client, path, 0, data[: 7 * MiB])  # a part: the multipart upload exists
    server.store._upload_ids.clear()  # as on another instance: no cached UploadId shortcut
    proxy.inject("ListParts", "error", times=None)
    assert (await head(server.client, path)).status == 503
    await patch(server.client, path, 7 * MiB, data[7 * MiB :], expect=503)
    proxy.clear()
    assert (await head(server.client, path)).headers["Upload-Offset"] == str(7 * MiB)
    await assert_store_holds(server.store, factory, upload_id(path), data[: 7 * MiB])
    await patch(server.client, path, 7 * MiB, data[7 * MiB :])
    await assert_store_holds(server.store, factory, upload_id(path), data)


@pytest.mark.parametrize("action", ["error", "reset", "truncate"])
async def test_reading_the_part_tail_failing_keeps_it_and_the_retry_completes(server, proxy, factory, action):
    data = os.urandom(7 * MiB)
    path = await create(server.client, len(data))
    await patch(server.client, path, 0, data[: 3 * MiB])  # a 3 MiB .part
    proxy.inject("GetPart", action, times=None)
    await patch(server.client, path, 3 * MiB, data[3 * MiB :], expect=503)
    assert proxy.injected >= 1
    assert (await head(server.client, path)).headers["Upload-Offset"] == str(3 * MiB)
    await assert_store_holds(server.store, factory, upload_id(path), data[: 3 * MiB])
    assert spool_files(server) == []
    proxy.clear()
    await patch(server.client, path, 3 * MiB, data[3 * MiB :])
    await assert_store_holds(server.store, factory, upload_id(path), data)


async def test_transient_fault_reading_the_part_tail_is_retried(server, proxy, factory):
    data = os.urandom(7 * MiB)
    path = await create(server.client, len(data))
    await patch(server.client, path, 0, data[: 3 * MiB])
    proxy.inject("GetPart", "error", times=1)
    await patch(server.client, path, 3 * MiB, data[3 * MiB :])
    assert proxy.injected == 1
    await assert_store_holds(server.store, factory, upload_id(path), data)


async def test_slow_s3_pushes_back_and_a_release_still_keeps_every_byte(server, proxy, factory):
    """Slow UploadParts: the body is read only as fast as parts go up; a HEAD arriving
    meanwhile waits for the flush and then reports every byte received."""
    server.store.upload_concurrency = 1
    proxy.inject("UploadPart", "slow", times=None, delay=0.3)
    received = Received(server.store)
    data = os.urandom(13 * MiB)
    path = await create(server.client, len(data))
    hanging = await HangingPatch.start(server.client.host, server.client.port, path, 0, len(data))
    sent = 11 * MiB + 5
    await hanging.send(data[:sent])
    await received.at_least(sent)
    resp = await head(server.client, path)
    assert resp.headers["Upload-Offset"] == str(sent)
    assert (await hanging.response()).status == 400
    hanging.close()
    await assert_store_holds(server.store, factory, upload_id(path), data[:sent])
    await patch(server.client, path, sent, data[sent:])
    assert sha256(await download(server.client, path)) == sha256(data)


async def test_a_client_that_retries_completes_exactly_under_random_faults(server, proxy, factory):
    for operation in ("UploadPart", "ListParts", "GetPart", "PutPart", "HeadPart"):
        for action in ("error", "reset", "reset_after"):
            proxy.inject(operation, action, times=None, probability=0.15)
    proxy.inject("GetPart", "truncate", times=None, probability=0.3)
    data = os.urandom(23 * MiB + 11)
    path = await create(server.client, len(data))
    chunk = 4 * MiB
    attempts = 0
    while True:
        attempts += 1
        assert attempts < 200, "no progress"
        try:
            resp = await head(server.client, path)
            if resp.status != 200:
                assert resp.status == 503, resp.status
                continue
            offset = int(resp.headers["Upload-Offset"])
            if offset == len(data):
                break
            headers = {**TUS, "Upload-Offset": str(offset), "Content-Type": OCTETS}
            async with server.client.patch(path, data=data[offset : offset + chunk], headers=headers) as resp:
                assert resp.status in (204, 503), (resp.status, await resp.text())
        except aiohttp.ClientError:
            continue
    injected = proxy.injected
    proxy.clear()
    assert injected > 0
    await assert_store_holds(server.store, factory, upload_id(path), data)
    assert sha256(await download(server.client, path)) == sha256(data)
    assert spool_files(server) == []
    print(f"{attempts} HEAD+PATCH rounds; faults injected: {injected}")


# -- downloads -----------------------------------------------------------------------------------


async def raw_get(server, path: str) -> tuple[bytes, dict[str, str], bytes]:
    """GET over a plain socket, read to EOF: (status line, headers, every byte after them)."""
    reader, writer = await asyncio.open_connection(server.client.host, server.client.port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        response = await asyncio.wait_for(reader.read(), PATIENCE)
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    return status.encode(), {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}, body


async def test_get_object_failing_for_good_is_503_before_any_byte(server, proxy):
    data = os.urandom(3 * MiB)
    path = await create(server.client, len(data))
    await patch(server.client, path, 0, data)
    proxy.inject("GET object", "error", times=None)
    status, headers, body = await raw_get(server, path)
    assert status == b"HTTP/1.1 503 Service Unavailable"
    assert headers["tus-resumable"] == "1.0.0"
    assert body == b"storage backend failed; retry later\n"
    proxy.clear()
    assert sha256(await download(server.client, path)) == sha256(data)


@pytest.mark.parametrize("ranged", [False, True])
async def test_get_object_cut_mid_body_closes_the_connection_after_a_true_prefix(
    server, proxy, caplog, ranged, front_door
):
    caplog.set_level(logging.DEBUG)
    data = os.urandom(3 * MiB)
    path = await create(server.client, len(data))
    await patch(server.client, path, 0, data)
    proxy.inject("GET object", "truncate")  # S3 sends half the bytes, then closes
    reader, writer = await asyncio.open_connection(server.client.host, server.client.port)
    try:
        extra = "Range: bytes=1000-\r\n" if ranged else ""
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n".encode())
        response = await asyncio.wait_for(reader.read(), PATIENCE)  # EOF: the server closed
    finally:
        writer.close()
    expected = data[1000:] if ranged else data
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 206 " if ranged else b"HTTP/1.1 200 ")
    assert f"content-length: {len(expected)}".encode() in head.lower().split(b"\r\n")  # ASGI lowercases names
    assert 0 < len(body) < len(expected)
    assert body == expected[: len(body)]  # a true prefix: never a second response spliced in
    assert b"HTTP/1.1" not in body
    failures = [r for r in caplog.records if r.getMessage().startswith(f"download of {path} failed")]
    assert [r.levelno for r in failures] == [logging.WARNING]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    if front_door == "asgi":
        # ASGI's only way to cut a response is to end the app with it incomplete; uvicorn
        # reports that once, without a traceback. Nothing else may be an error.
        assert [(r.name, r.getMessage(), r.exc_info) for r in errors] == [
            ("uvicorn.error", "ASGI callable returned without completing response.", None)
        ]
    else:
        assert errors == []
    # The fault is gone: the next download is whole.
    assert sha256(await download(server.client, path)) == sha256(data)


# -- creation --------------------------------------------------------------------------------------


async def test_create_whose_answer_was_lost_is_201_when_the_retry_finds_its_own_info(server, proxy):
    proxy.inject("PUT info", "reset_after")  # the .info is written, its answer lost: botocore retries
    path = await create(server.client, 5)
    assert proxy.injected == 1
    assert proxy.seen.count("PUT info") == 2  # the retry met If-None-Match
    await patch(server.client, path, 0, b"hello")
    assert await download(server.client, path) == b"hello"
