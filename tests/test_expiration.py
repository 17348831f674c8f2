"""The expiration extension, on every store."""

from __future__ import annotations

import asyncio
import email.utils
import os
import subprocess
import sys
import time

import pytest

from tests.tus_client import create, download, head, patch, sha256
from tusserver import Config, MemoryLocker, create_app
from tusserver.cleanup import clean_expired

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
    config = Config(expire_after=0.5)
    client = await aiohttp_client(create_app(config, store=store))
    stale = await create(client, 10)
    await patch(client, stale, 0, b"01234")
    done = await create(client, 3)
    await patch(client, done, 0, b"xyz")
    await asyncio.sleep(0.8)
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


def test_cleanup_command_removes_expired_uploads(tmp_path):
    """`tusserver cleanup` as a one-shot process over a disk store."""
    from tusserver.info import UploadInfo

    directory = tmp_path / "data"
    directory.mkdir()
    for upload_id, expires in (("a" * 32, time.time() - 10), ("b" * 32, time.time() + 3600)):
        (directory / upload_id).write_bytes(b"data")
        info = UploadInfo(id=upload_id, length=100, expires=expires)
        (directory / f"{upload_id}.info").write_bytes(info.to_json())
    orphan = directory / ("c" * 32)
    orphan.write_bytes(b"left by a crash")
    os.utime(orphan, (time.time() - 7200, time.time() - 7200))
    result = subprocess.run(
        [sys.executable, "-m", "tusserver", "cleanup", "--file-dir", str(directory), "--expire-after", "60"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in directory.iterdir()) == ["b" * 32, "b" * 32 + ".info"]
    assert sha256((directory / ("b" * 32)).read_bytes()) == sha256(b"data")
