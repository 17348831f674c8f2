"""Per-upload locking on every store: a request that needs a held lock asks the holder
to let go; the holder keeps every byte it received; concurrent PATCHes never mix."""

from __future__ import annotations

import asyncio
import logging
import os
import random

import aiohttp
import pytest

from tests.hanging import HangingPatch, Received
from tests.tus_client import OCTETS, TUS, create, download, head, patch, sha256
from tusserver import Config, MemoryLocker, create_app
from tusserver.locking import held_version

MiB = 1 << 20

pytestmark = pytest.mark.both_doors


@pytest.fixture
async def server(aiohttp_client, store_factory, store_kind):
    """Start a server on a fresh store instance; returns (client, store)."""

    async def start(config: Config | None = None, locker=None):
        # 5 MiB parts on S3, so a body of a few MiB spans a part and a .part tail.
        store = store_factory() if store_kind == "file" else store_factory(part_size=5 * MiB)
        client = await aiohttp_client(create_app(config or Config(), store=store, locker=locker))
        return client, store

    return start


async def test_head_while_a_patch_hangs_interrupts_it_and_the_client_resumes(server, store_factory, caplog):
    """tus-js-client after a network drop: its old PATCH still holds the lock when its
    HEAD and its new PATCH arrive."""
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    client, store = await server()
    received = Received(store)
    data = os.urandom(11 * MiB + 7)
    path = await create(client, len(data))
    sent = 5 * MiB + 1234  # a whole part and a tail on S3
    old = await HangingPatch.start(client.host, client.port, path, 0, len(data))
    await old.send(data[:sent])
    await received.at_least(sent)

    resp = await head(client, path)
    assert resp.status == 200
    assert resp.headers["Upload-Offset"] == str(sent)
    interrupted = await old.response()
    assert interrupted.status == 400
    assert b"interrupted by a newer request" in interrupted.body
    old.close()

    resp = await patch(client, path, sent, data[sent:])
    assert resp.headers["Upload-Offset"] == str(len(data))
    assert sha256(await download(client, path)) == sha256(data)
    from tests.stored import assert_store_holds

    upload_id = path.rsplit("/", 1)[1]
    await assert_store_holds(store, store_factory, upload_id, data)
    # The interrupted request's connection is closed, not read to its end by aiohttp,
    # which would log the release as an unhandled exception.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_patch_while_a_patch_hangs_takes_over_at_the_kept_offset(server):
    client, store = await server()
    received = Received(store)
    data = os.urandom(3 * MiB)
    path = await create(client, len(data))
    sent = MiB + 5
    old = await HangingPatch.start(client.host, client.port, path, 0, len(data))
    await old.send(data[:sent])
    await received.at_least(sent)

    # A client that kept count of what it sent (no HEAD first) resumes directly.
    resp = await patch(client, path, sent, data[sent:])
    assert resp.headers["Upload-Offset"] == str(len(data))
    assert (await old.response()).status == 400
    old.close()
    assert sha256(await download(client, path)) == sha256(data)


async def test_lock_that_is_not_released_answers_423_with_retry_after(server):
    locker = MemoryLocker(timeout=0.2)
    client, _ = await server(locker=locker)
    path = await create(client, 10)
    upload_id = path.rsplit("/", 1)[1]
    async with locker.lock(upload_id):  # a holder that ignores release requests
        resp = await client.patch(
            path, data=b"0123456789", headers={**TUS, "Upload-Offset": "0", "Content-Type": OCTETS}
        )
        assert resp.status == 423
        assert resp.headers["Retry-After"] == "1"
        assert (await resp.text()).startswith("upload is in use")
        assert (await head(client, path)).status == 423
    resp = await head(client, path)
    assert resp.headers["Upload-Offset"] == "0"  # the refused PATCH stored nothing


async def test_idle_patch_is_ended_keeps_its_bytes_and_frees_the_lock(server, store_factory):
    client, store = await server(Config(read_timeout=0.3))
    received = Received(store)
    data = os.urandom(6 * MiB)
    path = await create(client, len(data))
    sent = 5 * MiB + 99
    idle = await HangingPatch.start(client.host, client.port, path, 0, len(data))
    await idle.send(data[:sent])
    await received.at_least(sent)

    timed_out = await idle.response()  # no other request asked: the read timeout ended it
    assert timed_out.status == 408
    assert b"stalled" in timed_out.body
    idle.close()
    resp = await head(client, path)
    assert resp.headers["Upload-Offset"] == str(sent)
    from tests.stored import assert_store_holds

    await assert_store_holds(store, store_factory, path.rsplit("/", 1)[1], data[:sent])
    await patch(client, path, sent, data[sent:])
    assert sha256(await download(client, path)) == sha256(data)


async def test_read_timeout_counts_the_clients_silence_not_a_slow_s3(aiohttp_client, bucket, moto_endpoint, tmp_path):
    """read_timeout=1 while each UploadPart takes 2 s with one in flight: the store stops
    reading for seconds at a time (back-pressure), yet the client never stalls."""
    from tusserver.stores.s3 import S3Store

    store = S3Store(
        bucket,
        endpoint_url=moto_endpoint,
        path_style=True,
        temp_dir=str(tmp_path / "spool"),
        part_size=5 * MiB,
        upload_concurrency=1,
    )
    upload_part = store._upload_part

    async def slow_upload_part(*args):
        await asyncio.sleep(2)
        return await upload_part(*args)

    store._upload_part = slow_upload_part
    client = await aiohttp_client(create_app(Config(read_timeout=1), store=store))
    data = os.urandom(12 * MiB)
    path = await create(client, len(data))
    resp = await patch(client, path, 0, data)
    assert resp.headers["Upload-Offset"] == str(len(data))
    assert sha256(await download(client, path)) == sha256(data)


async def test_try_lock_fails_at_once_when_held_or_awaited_and_never_asks():
    locker = MemoryLocker(timeout=5)
    asked = asyncio.Event()
    async with locker.lock("u1", on_release=asked.set):
        async with locker.try_lock("u1") as acquired:
            assert acquired is False
        assert not asked.is_set()
    async with locker.try_lock("u1") as acquired:
        assert acquired is True
        order = []

        async def request() -> None:
            async with locker.lock("u1"):
                order.append("request")

        waiting = asyncio.create_task(request())
        await asyncio.sleep(0.05)
        async with locker.try_lock("u1") as other:  # held, and awaited: no
            assert other is False
        order.append("job")
    await waiting
    assert order == ["job", "request"]
    async with locker.try_lock("u1") as acquired:
        assert acquired is True


async def client_loop(
    client, path: str, data: bytes, chunk: int, outcomes: list[int], stored: list | None = None
) -> None:
    """One of several clients racing on one upload: HEAD, then PATCH from there.
    `stored` collects (data, start, end) of every PATCH answered 204."""
    while True:
        try:
            resp = await head(client, path)
        except aiohttp.ClientError:  # a pooled connection the server closed after a 400
            continue
        if resp.status == 423:
            outcomes.append(423)
            continue
        assert resp.status == 200, resp.status
        offset = int(resp.headers["Upload-Offset"])
        if offset == len(data):
            return
        headers = {**TUS, "Upload-Offset": str(offset), "Content-Type": OCTETS}
        try:
            resp = await client.patch(path, data=data[offset : offset + chunk], headers=headers)
            text = await resp.text()
        except aiohttp.ClientError:
            # Interrupted while still sending: the server may close before we read its 400.
            outcomes.append(0)
            continue
        # 204: stored; 409: another PATCH moved the offset first; 400: interrupted by a
        # newer request (its bytes are kept); 423: the lock stayed busy.
        assert resp.status in (204, 409, 400, 423), (resp.status, text)
        if resp.status == 400:
            assert "interrupted" in text
        if resp.status == 204 and stored is not None:
            stored.append((data, offset, int(resp.headers["Upload-Offset"])))
        outcomes.append(resp.status)
        if resp.status != 204:
            await asyncio.sleep(random.uniform(0, 0.05))  # a retry delay, as real clients have


def assert_made_of(held: bytes, sources: list[bytes], block: int = 4096) -> None:
    """Every byte of `held` is the byte some source has at that position."""
    for start in range(0, len(held), block):
        piece = held[start : start + block]
        if any(src[start : start + block] == piece for src in sources):
            continue
        for i, byte in enumerate(piece, start):
            assert any(src[i] == byte for src in sources), f"byte {i} comes from no client"


@pytest.mark.parametrize("clients", [8])
async def test_concurrent_patches_on_one_upload_never_mix_bytes(server, store_factory, store_kind, clients):
    client, store = await server()
    size, chunk = (3 * MiB + 17, 256 * 1024) if store_kind == "file" else (16 * MiB + 17, 3 * MiB)
    data = os.urandom(size)
    path = await create(client, len(data))
    outcomes: list[int] = []
    await asyncio.gather(*(client_loop(client, path, data, chunk, outcomes) for _ in range(clients)))
    assert sha256(await download(client, path)) == sha256(data)
    from tests.stored import assert_store_holds

    await assert_store_holds(store, store_factory, path.rsplit("/", 1)[1], data)
    print(f"{store_kind}: outcomes", {s: outcomes.count(s) for s in sorted(set(outcomes))})


async def test_post_with_body_is_locked_like_a_patch(server):
    """creation-with-upload holds the lock while it receives, so a HEAD interrupts it too."""
    client, store = await server()
    received = Received(store)
    data = os.urandom(2 * MiB)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        (
            f"POST / HTTP/1.1\r\nHost: {client.host}\r\nTus-Resumable: 1.0.0\r\nUpload-Length: {len(data)}\r\n"
            f"Content-Type: {OCTETS}\r\nContent-Length: {len(data)}\r\n\r\n"
        ).encode()
        + data[:MiB]
    )
    await writer.drain()
    await received.at_least(MiB)
    # The upload exists; its id is only in the response, so find it through the store.
    uploads = [u async for u in store.list_uploads()]
    assert len(uploads) == 1
    path = "/" + uploads[0]
    resp = await head(client, path)
    assert resp.headers["Upload-Offset"] == str(MiB)
    status_line = await reader.readline()
    assert b" 400 " in status_line
    writer.close()
    await patch(client, path, MiB, data[MiB:])
    assert sha256(await download(client, path)) == sha256(data)


async def test_concurrent_patches_of_different_bytes_each_land_whole(server, store_kind):
    """Each client sends its own bytes, so bytes written by two PATCHes at once would
    show: every PATCH answered 204 must find exactly its bytes in its range."""
    client, store = await server()
    size, chunk = (8 * MiB + 17, 1536 * 1024) if store_kind == "file" else (16 * MiB + 17, 3 * MiB)
    sources = [os.urandom(size) for _ in range(6 if store_kind == "file" else 3)]
    path = await create(client, size)
    outcomes: list[int] = []
    stored: list = []
    await asyncio.gather(*(client_loop(client, path, src, chunk, outcomes, stored) for src in sources))
    held = await download(client, path)
    assert len(held) == size
    print(f"{store_kind}: outcomes", {s: outcomes.count(s) for s in sorted(set(outcomes))})
    assert_made_of(held, sources)
    # On S3 the clients' HEADs usually interrupt every PATCH before it ends (400), so
    # there may be no 204 at all; the check above covers the bytes of interrupted ones.
    for src, start, end in stored:
        assert held[start:end] == src[start:end], f"the PATCH of bytes {start}-{end} was overwritten"


async def test_a_second_patch_at_the_same_offset_interrupts_the_first_and_gets_409(server, store_factory):
    """Two PATCHes at one offset with different bytes: the first keeps what it received,
    the second finds the offset moved. Nothing of the second is stored."""
    client, store = await server()
    received = Received(store)
    first, second = os.urandom(8 * MiB), os.urandom(8 * MiB)
    path = await create(client, len(first))
    sent = 5 * MiB + 100
    old = await HangingPatch.start(client.host, client.port, path, 0, len(first))
    await old.send(first[:sent])
    await received.at_least(sent)

    resp = await patch(client, path, 0, second, expect=409)
    assert (await resp.text()).strip().endswith(f"current offset: upload is at {sent}")
    assert (await old.response()).status == 400
    old.close()
    from tests.stored import assert_store_holds

    upload_id = path.rsplit("/", 1)[1]
    await assert_store_holds(store, store_factory, upload_id, first[:sent])
    await patch(client, path, sent, first[sent:])
    await assert_store_holds(store, store_factory, upload_id, first)


async def test_memory_locker_versions_change_with_every_taking_of_the_lock():
    """What lets a store trust a state it read earlier: the number changes whenever the
    lock was taken, there is none while it is held, and no number is ever given twice."""
    locker = MemoryLocker()
    first = await locker.version("a")
    assert first is not None and await locker.version("a") == first  # nobody took it
    async with locker.lock("a"):
        held = held_version("a")
        assert held is not None and held[0] == first and held[1] != first
        assert await locker.version("a") is None  # a state read now may be half written
    assert held_version("a") is None
    assert await locker.version("a") == held[1]
    async with locker.try_lock("a") as acquired:
        assert acquired
        bumped = held_version("a")
        assert bumped is not None and bumped[0] == held[1]
    assert bumped[1] not in (first, held[1])
    assert await MemoryLocker().version("a") not in (first, held[1], bumped[1])
