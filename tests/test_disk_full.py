"""A full disk or an unwritable directory, made real with small tmpfs mounts: 507 for
a full disk, 500 ERR_STORAGE_NOT_WRITABLE for a read-only one, nothing half-written,
no temp file left, and the upload resumes once there is room again."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from tests.stored import assert_store_holds
from tests.tus_client import create, download, head, patch, sha256
from tusserver import Config, create_app

MiB = 1 << 20


@pytest.fixture
def disks(tmp_path):
    """Mount small tmpfs file systems (needs root); unmounted after the test."""
    mounted = []

    def mount(name: str, size: str, *options: str):
        path = tmp_path / name
        path.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            message = f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}"
            if os.environ.get("CI"):  # CI runs as root: a skip there would hide a lost test
                pytest.fail(message)
            pytest.skip(message)
        mounted.append(path)
        return path

    def remount(path, *options: str) -> None:
        subprocess.run(["mount", "-o", ",".join(["remount", *options]), str(path)], check=True)

    yield SimpleNamespace(mount=mount, remount=remount)
    for path in mounted:
        subprocess.run(["umount", str(path)], check=False)


def fill(directory, size: int) -> str:
    path = os.path.join(directory, "filler")
    with open(path, "wb") as f:
        f.write(b"\0" * size)
    return path


def temp_files(directory) -> list[str]:
    return sorted(n for n in os.listdir(directory) if ".tmp-" in n or n.startswith("tusserver-spool-"))


# -- file store ------------------------------------------------------------------


async def test_file_store_full_disk_is_507_keeps_a_clean_prefix_and_resumes(aiohttp_client, disks):
    directory = disks.mount("data", "6m")
    store_config = Config(file_dir=str(directory))
    client = await aiohttp_client(create_app(store_config))
    filler = fill(directory, 3 * MiB)
    data = os.urandom(4 * MiB)
    path = await create(client, len(data))

    resp = await patch(client, path, 0, data, expect=507)
    assert await resp.text() == "server has no space left to store the upload\n"
    offset = int((await head(client, path)).headers["Upload-Offset"])
    assert offset < len(data)
    with open(directory / path.rsplit("/", 1)[1], "rb") as f:
        assert f.read() == data[:offset]  # every stored byte is the client's, in place
    assert temp_files(directory) == []

    os.remove(filler)  # the operator makes room
    await patch(client, path, offset, data[offset:])
    assert sha256(await download(client, path)) == sha256(data)


async def test_file_store_full_disk_during_a_checksum_patch_keeps_nothing(aiohttp_client, disks):
    import base64
    import hashlib

    directory = disks.mount("data", "6m")
    client = await aiohttp_client(create_app(Config(file_dir=str(directory))))
    data = os.urandom(2 * MiB)
    path = await create(client, 2 * len(data))
    await patch(client, path, 0, data[: MiB])
    fill(directory, 3 * MiB)  # the spooled copy fits, appending it does not
    checksum = "sha1 " + base64.b64encode(hashlib.sha1(data).digest()).decode()
    await patch(client, path, MiB, data, expect=507, Upload_Checksum=checksum)
    assert (await head(client, path)).headers["Upload-Offset"] == str(MiB)
    assert os.path.getsize(directory / path.rsplit("/", 1)[1]) == MiB
    assert temp_files(directory) == []


async def test_file_store_full_disk_on_post_creates_nothing(aiohttp_client, disks):
    directory = disks.mount("data", "1m")
    client = await aiohttp_client(create_app(Config(file_dir=str(directory))))
    with open(directory / "filler", "wb") as f:
        try:
            f.write(b"\0" * (2 * MiB))
        except OSError:
            pass  # the disk is full now
    before = sorted(os.listdir(directory))
    resp = await client.post("/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "10"})
    assert resp.status == 507, await resp.text()
    assert sorted(os.listdir(directory)) == before


async def test_file_store_read_only_directory_is_a_clear_500(aiohttp_client, disks):
    directory = disks.mount("data", "4m")
    client = await aiohttp_client(create_app(Config(file_dir=str(directory))))
    path = await create(client, 10)
    disks.remount(directory, "ro")
    resp = await client.post("/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "10"})
    assert resp.status == 500
    assert await resp.text() == "server cannot write to its storage or temp directory\n"
    await patch(client, path, 0, b"0123456789", expect=500)
    assert (await head(client, path)).headers["Upload-Offset"] == "0"


def test_unwritable_directory_stops_the_server_at_start_up(disks, tmp_path):
    directory = disks.mount("data", "1m", "ro")
    result = subprocess.run(
        [sys.executable, "-m", "tusserver", "--port", "0", "--file-dir", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "cannot start" in result.stderr and str(directory) in result.stderr


# -- S3 store spool ------------------------------------------------------------------


@pytest.fixture
def s3_app(aiohttp_client, moto_endpoint, bucket):
    from tusserver.stores.s3 import S3Store

    async def start(temp_dir):
        store = S3Store(bucket, endpoint_url=moto_endpoint, path_style=True, temp_dir=str(temp_dir), part_size=5 * MiB)
        return await aiohttp_client(create_app(Config(), store=store)), store

    start.factory = SimpleNamespace(endpoint=moto_endpoint)
    return start


async def test_s3_spool_full_is_507_sends_no_half_piece_and_resumes(s3_app, disks):
    spool = disks.mount("spool", "3m")
    client, store = await s3_app(spool)
    data = os.urandom(7 * MiB)
    path = await create(client, len(data))
    upload_id = path.rsplit("/", 1)[1]
    await patch(client, path, 0, data[:MiB])  # a .part of 1 MiB

    # The .part and 2 MiB of body fill the spool before a 5 MiB part is complete.
    resp = await patch(client, path, MiB, data[MiB:], expect=507)
    assert await resp.text() == "server has no space left to store the upload\n"
    assert (await head(client, path)).headers["Upload-Offset"] == str(MiB)  # the .part stands
    await assert_store_holds(store, s3_app.factory, upload_id, data[:MiB])
    assert temp_files(spool) == []

    disks.remount(spool, "size=16m")  # room again
    await patch(client, path, MiB, data[MiB:])
    await assert_store_holds(store, s3_app.factory, upload_id, data)
    assert temp_files(spool) == []


async def test_s3_read_only_spool_is_a_clear_500_and_stores_nothing(s3_app, disks):
    spool = disks.mount("spool", "8m")
    client, store = await s3_app(spool)
    data = os.urandom(6 * MiB)
    path = await create(client, len(data))
    disks.remount(spool, "ro")
    resp = await patch(client, path, 0, data, expect=500)
    assert await resp.text() == "server cannot write to its storage or temp directory\n"
    assert (await head(client, path)).headers["Upload-Offset"] == "0"
    await assert_store_holds(store, s3_app.factory, path.rsplit("/", 1)[1], b"")
    disks.remount(spool, "rw")
    await patch(client, path, 0, data)
    await assert_store_holds(store, s3_app.factory, path.rsplit("/", 1)[1], data)
