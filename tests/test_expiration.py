"""The expiration extension, on every store."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import subprocess
import sys
import time

import pytest

from tests.stored import assert_store_holds
from tests.trickle import CleanupRuns, cleanup_args, trickle_patch
from tests.tus_client import create, download, head, patch, sha256
from tusserver import Config, MemoryLocker, create_app
from tusserver.cleanup import clean_expired
from tusserver.errors import TusError
from tusserver.storage_errors import StorageError
from tusserver.stores.base import CorruptInfo

EXPIRY = 60.0


@pytest.fixture
async def client(aiohttp_client, store_factory):
    return await aiohttp_client(create_app(Config(expire_after=EXPIRY), store=store_factory()))


def expires_at(resp) -> float:
    return email.utils.parsedate_to_datetime(resp.headers["Upload-Expires"]).timestamp()


async def test_upload_expires_header_on_post_patch_and_head(client):
    started = time.time()
    resp = await client.post("/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "4"})
    assert resp.status == 201
    assert started + EXPIRY - 1 <= expires_at(resp) <= time.time() + EXPIRY + 1
    path = await create(client, 4)
    first = expires_at(await head(client, path))
    await asyncio.sleep(1.1)  # HTTP dates have whole seconds
    resp = await patch(client, path, 0, b"ab")
    assert expires_at(resp) > first  # each PATCH extends it
    assert expires_at(await head(client, path)) == expires_at(resp)
    resp = await patch(client, path, 2, b"cd")
    assert "Upload-Expires" not in resp.headers  # finished uploads do not expire
    assert "Upload-Expires" not in (await head(client, path)).headers


async def test_a_day_by_default_and_off_when_unset(aiohttp_client, store_factory):
    client = await aiohttp_client(create_app(Config(), store=store_factory()))
    before = time.time()
    resp = await client.post("/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "4"})
    # HTTP dates have whole seconds: the expiry lies within a second of a day from now.
    assert before + 86400 - 1 <= expires_at(resp) <= time.time() + 86400
    client = await aiohttp_client(create_app(Config(expire_after=None), store=store_factory()))
    resp = await client.post("/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "4"})
    assert resp.status == 201 and "Upload-Expires" not in resp.headers


async def test_expired_upload_is_410_and_cleaned(aiohttp_client, store_factory):
    store = store_factory()
    # `fresh` must outlive the dozen S3 requests below, also on a busy machine.
    config = Config(expire_after=1.0)
    client = await aiohttp_client(create_app(config, store=store))
    stale = await create(client, 10)
    await patch(client, stale, 0, b"01234")
    done = await create(client, 3)
    await patch(client, done, 0, b"xyz")
    await asyncio.sleep(1.3)
    fresh = await create(client, 10)
    assert (await head(client, stale)).status == 410
    await patch(client, stale, 5, b"56789", expect=410)
    assert (await head(client, done)).status == 200
    removed = await clean_expired(store, config, MemoryLocker())
    assert removed == 1
    assert (await head(client, stale)).status == 404
    assert (await head(client, fresh)).status == 200
    assert await download(client, done) == b"xyz"


async def test_finished_uploads_expire_only_when_configured(aiohttp_client, store_factory):
    store = store_factory()
    config = Config(expire_after=0.3, expire_finished=True)
    client = await aiohttp_client(create_app(config, store=store))
    done = await create(client, 3)
    await patch(client, done, 0, b"xyz")
    await asyncio.sleep(0.5)
    assert (await head(client, done)).status == 410
    assert await clean_expired(store, config, MemoryLocker()) == 1
    assert (await head(client, done)).status == 404


async def test_background_cleaner_removes_expired_uploads(aiohttp_client, store_factory):
    config = Config(expire_after=0.3, cleanup_interval=0.2)
    client = await aiohttp_client(create_app(config, store=store_factory()))
    path = await create(client, 10)
    for _ in range(50):
        if (await head(client, path)).status == 404:
            break
        await asyncio.sleep(0.1)
    assert (await head(client, path)).status == 404


def test_cleanup_command_removes_expired_uploads_and_only_our_own_debris(tmp_path):
    """`tusserver cleanup` as a one-shot process over a disk store written by a version
    without the unfinished index (it is built on the way). Of the files without `.info`,
    only the empty data file a crash inside create() leaves is removed: `lost+found`, a
    Makefile, a symlink and a non-empty file named like an id stay (M12, L9)."""
    from tusserver.info import UploadInfo

    directory = tmp_path / "data"
    directory.mkdir()
    for upload_id, expires in (("a" * 32, time.time() - 10), ("b" * 32, time.time() + 3600)):
        (directory / upload_id).write_bytes(b"data")
        info = UploadInfo(id=upload_id, length=100, expires=expires)
        (directory / f"{upload_id}.info").write_bytes(info.to_json())
    old = time.time() - 7200
    orphan = directory / ("c" * 32)
    orphan.write_bytes(b"")  # a crash between claiming the id and writing .info
    (directory / "lost+found").mkdir()
    (directory / "Makefile").write_bytes(b"all:\n")
    (directory / "LICENSE").write_bytes(b"")
    (directory / "notes").write_bytes(b"not an upload")
    (directory / "link").symlink_to(directory / "Makefile")
    for path in (orphan, directory / "lost+found", directory / "Makefile", directory / "notes"):
        os.utime(path, (old, old))
    os.utime(directory / "LICENSE", (old, old))
    result = subprocess.run(
        [sys.executable, "-m", "tusserver", "cleanup", "--file-dir", str(directory), "--expire-after", "60"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    # LICENSE is empty and named like an id, as our own debris is: it is the one foreign
    # name that goes, and it held nothing.
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [".unfinished", ".unfinished-indexed", "Makefile", "b" * 32, "b" * 32 + ".info", "link", "lost+found", "notes"]
    )
    assert os.listdir(directory / ".unfinished") == ["b" * 32]  # the index of unfinished uploads
    assert sha256((directory / ("b" * 32)).read_bytes()) == sha256(b"data")
    assert (directory / "Makefile").read_bytes() == b"all:\n"
    assert (directory / "notes").read_bytes() == b"not an upload"


# -- uploads receiving bytes are alive (issue 11) ----------------------------------------

KiB = 1 << 10
SLOW = dict(size=900 * KiB, rate=100 * KiB)  # one PATCH of 9 s, three times the expiry


class AliveWatch:
    """Reads the upload's state through a store instance of its own, as a cleaner in
    another process does, while a PATCH runs; notes every moment it looks expired or gone."""

    def __init__(self, store, upload_id: str) -> None:
        self.store = store
        self.upload_id = upload_id
        self.problems: list[str] = []
        self.looks = 0
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> AliveWatch:
        await self.store.start()
        self._task = asyncio.create_task(self._watch())
        return self

    async def _watch(self) -> None:
        while True:
            try:
                info = await self.store.get_info(self.upload_id)
                if info.expired(time.time()):
                    self.problems.append(f"expired {time.time() - info.expires:.1f}s ago")
            except (TusError, StorageError) as exc:
                self.problems.append(str(exc))
            self.looks += 1
            await asyncio.sleep(0.2)

    async def __aexit__(self, *exc) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        await self.store.close()


async def test_the_cleaner_never_interrupts_nor_removes_an_upload_receiving_bytes(aiohttp_client, store_factory):
    """expire_after=3, cleanup_interval=1, one PATCH of 900 KiB at 100 KiB/s: the
    expiry moves forward while bytes flow, and a held upload is skipped."""
    store = store_factory()
    client = await aiohttp_client(create_app(Config(expire_after=3, cleanup_interval=1), store=store))
    data = os.urandom(SLOW["size"])
    path = await create(client, len(data))
    resp = await trickle_patch(client, path, 0, data, SLOW["rate"])
    assert resp.status == 204, await resp.text()
    assert resp.headers["Upload-Offset"] == str(len(data))
    await assert_store_holds(store, store_factory, path.rsplit("/", 1)[1], data)
    assert sha256(await download(client, path)) == sha256(data)


async def test_cleanup_from_cron_without_redis_never_removes_an_upload_receiving_bytes(
    aiohttp_client, store_factory, store_kind, tmp_path
):
    """No lock is shared with the server: the expiry saved in `.info` is all the cron
    process sees, so the PATCH keeps it ahead while it receives bytes."""
    store = store_factory()
    config = Config(expire_after=3, cleanup_interval=3600)  # only the cron process cleans
    client = await aiohttp_client(create_app(config, store=store))
    data = os.urandom(SLOW["size"])
    path = await create(client, len(data))
    created = time.monotonic()
    cron = CleanupRuns(*cleanup_args(store_kind, store_factory, tmp_path), "--expire-after", "3").start()
    try:
        async with AliveWatch(store_factory(), path.rsplit("/", 1)[1]) as watch:
            resp = await trickle_patch(client, path, 0, data, SLOW["rate"])
            finished = time.monotonic()
    finally:
        await cron.stop()
    assert resp.status == 204, await resp.text()
    assert resp.headers["Upload-Offset"] == str(len(data))
    assert watch.problems == [] and watch.looks > 20
    # The cleaner ran while the expiry saved at creation had long passed.
    assert cron.completed_between(created + 3.5, finished) >= 1, cron.runs
    await assert_store_holds(store, store_factory, path.rsplit("/", 1)[1], data)
    assert sha256(await download(client, path)) == sha256(data)


async def write_info(store_factory, tmp_path, upload_id: str, data: bytes) -> None:
    """Overwrite the upload's `.info` record behind the store's back."""
    if not hasattr(store_factory, "bucket"):
        (tmp_path / "uploads" / f"{upload_id}.info").write_bytes(data)
        return
    from aiobotocore.session import get_session

    async with get_session().create_client("s3", endpoint_url=store_factory.endpoint) as s3:
        await s3.put_object(Bucket=store_factory.bucket, Key=f"{upload_id}.info", Body=data)


async def test_an_unreadable_info_is_left_alone_and_expiry_goes_on(aiohttp_client, store_factory, tmp_path, caplog):
    """A zero-length `.info` (power loss) and one of a newer schema (rolling upgrade): the
    cleaner skips both and removes the expired upload; requests on them are a 500 with one
    log line naming the id, no traceback."""
    config = Config(expire_after=0.5)
    first = store_factory()
    creator = await aiohttp_client(create_app(config, store=first))
    ids = [(await create(creator, 10)).rsplit("/", 1)[1] for _ in range(3)]
    truncated, newer, stale = ids
    # After the power loss, or on the upgraded instance: a process that did not write them.
    store = store_factory()
    client = await aiohttp_client(create_app(config, store=store))
    await write_info(store_factory, tmp_path, truncated, b"")
    document = json.loads((await first.get_info(newer)).to_json())
    await write_info(store_factory, tmp_path, newer, json.dumps({**document, "version": 2}).encode())
    await asyncio.sleep(0.7)
    caplog.clear()

    assert await clean_expired(store, config, MemoryLocker()) == 1
    assert (await head(client, f"/{stale}")).status == 404
    for upload_id in (truncated, newer):
        resp = await head(client, f"/{upload_id}")
        assert resp.status == 500
        logged = [r for r in caplog.records if upload_id in r.getMessage()]
        assert logged and all(r.levelno == logging.ERROR for r in logged)
    assert "schema version 2" in " ".join(r.getMessage() for r in caplog.records)
    assert [r for r in caplog.records if r.exc_info] == []
    # Left for an operator: neither record was removed.
    with pytest.raises(CorruptInfo):
        await store.get_info(truncated)
    with pytest.raises(CorruptInfo):
        await store.get_info(newer)


# -- a pass costs nothing per finished upload (issue 12) -----------------------------------


async def test_a_cleanup_pass_reads_no_finished_upload_and_no_young_one(aiohttp_client, store_factory, store_kind):
    """40 finished uploads (zero-length POSTs, as a flood makes them) and a young unfinished
    one cost a pass no read: on S3 the pass is one ListObjectsV2 of the index, on disk no
    `.info` is read. The expired upload costs its own reads and is removed. (The first
    pass on storage without the index builds it, reading each `.info` once.)"""
    store = store_factory()
    config = Config(expire_after=EXPIRY)
    client = await aiohttp_client(create_app(config, store=store))
    assert await clean_expired(store, config, MemoryLocker(), orphans=False) == 0  # builds the index
    for _ in range(40):
        resp = await client.post("/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "0"})
        assert resp.status == 201
    young = await create(client, 10)
    calls: list[str] = []
    if store_kind == "s3":
        store.client.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    else:
        for name in ("peek_info", "get_info"):
            method = getattr(store, name)

            def counted(upload_id, _method=method, _name=name):
                calls.append(_name)
                return _method(upload_id)

            setattr(store, name, counted)
    assert await clean_expired(store, config, MemoryLocker(), orphans=False) == 0
    assert calls == (["ListObjectsV2"] if store_kind == "s3" else [])

    calls.clear()  # past the expiry: only the unfinished upload is read, and removed
    assert await clean_expired(store, config, MemoryLocker(), now=time.time() + EXPIRY + 1, orphans=False) == 1
    if store_kind == "s3":
        assert calls[0] == "ListObjectsV2" and calls.count("GetObject") == 2  # .info, then under the lock
    else:
        assert calls == ["peek_info", "get_info"]
    assert (await head(client, young)).status == 404
    assert len([u async for u in store.list_uploads()]) == 40
