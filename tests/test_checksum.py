"""The checksum extension, on every store: verified while streaming, all or nothing."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import zlib

import boto3
import pytest

from tests.tus_client import OCTETS, TUS, create, download, head, patch, sha256
from tusserver import Config, create_app

MiB = 1 << 20


def digest(algorithm: str, data: bytes) -> str:
    if algorithm == "crc32":
        raw = zlib.crc32(data).to_bytes(4, "big")
    else:
        raw = hashlib.new(algorithm, data).digest()
    return f"{algorithm} {base64.b64encode(raw).decode()}"


def storage_snapshot(store_factory, tmp_path) -> list:
    """Everything the store holds, to prove a rejected PATCH changed nothing."""
    if hasattr(store_factory, "bucket"):
        s3 = boto3.client("s3", endpoint_url=store_factory.endpoint)
        objects = s3.list_objects_v2(Bucket=store_factory.bucket).get("Contents", [])
        state = [(o["Key"], o["Size"], o["ETag"]) for o in objects]
        for mpu in s3.list_multipart_uploads(Bucket=store_factory.bucket).get("Uploads", []):
            parts = s3.list_parts(Bucket=store_factory.bucket, Key=mpu["Key"], UploadId=mpu["UploadId"])
            state.append((mpu["Key"], [(p["PartNumber"], p["ETag"]) for p in parts.get("Parts", [])]))
        return sorted(state, key=repr)
    root = tmp_path / "uploads"
    return sorted((p.name, p.read_bytes()) for p in root.rglob("*") if p.is_file())


@pytest.fixture
async def client(aiohttp_client, store_factory):
    return await aiohttp_client(create_app(Config(), store=store_factory()))


@pytest.mark.parametrize("algorithm", ["sha1", "md5", "sha256", "sha512", "crc32"])
async def test_matching_checksum_is_stored(client, algorithm):
    data = os.urandom(6 * MiB + 5)
    path = await create(client, len(data))
    resp = await patch(client, path, 0, data, Upload_Checksum=digest(algorithm, data))
    assert resp.headers["Upload-Offset"] == str(len(data))
    assert sha256(await download(client, path)) == sha256(data)


async def test_options_lists_checksum_algorithms(client):
    resp = await client.options("/")
    assert "checksum" in resp.headers["Tus-Extension"].split(",")
    assert resp.headers["Tus-Checksum-Algorithm"] == "sha1,md5,sha256,sha512,crc32"


async def test_mismatch_is_460_and_changes_nothing(client, store_factory, tmp_path):
    first = os.urandom(MiB + 3)  # leaves a short tail (.part on S3)
    path = await create(client, 20 * MiB)
    await patch(client, path, 0, first)
    before = storage_snapshot(store_factory, tmp_path)
    body = os.urandom(12 * MiB)  # more than two parts' worth
    await patch(client, path, len(first), body, expect=460, Upload_Checksum=digest("sha1", b"other"))
    assert storage_snapshot(store_factory, tmp_path) == before
    assert (await head(client, path)).headers["Upload-Offset"] == str(len(first))
    # The same bytes with the right checksum then go through.
    await patch(client, path, len(first), body, Upload_Checksum=digest("sha256", body))
    rest = os.urandom(20 * MiB - len(first) - len(body))
    await patch(client, path, len(first) + len(body), rest)
    assert sha256(await download(client, path)) == sha256(first + body + rest)


@pytest.mark.parametrize(
    "value",
    ["sha1", "sha1 !!!!", "whirlpool AAAA", "sha1  x y"],
)
async def test_malformed_checksum_is_400_and_stores_nothing(client, value):
    path = await create(client, 10)
    await patch(client, path, 0, b"0123456789", expect=400, Upload_Checksum=value)
    assert (await head(client, path)).headers["Upload-Offset"] == "0"


@pytest.mark.parametrize(
    "value",
    [
        "sha1 " + base64.b64encode(b"short").decode(),
        "sha256 " + base64.b64encode(hashlib.sha1(b"x").digest()).decode(),
        "crc32 " + base64.b64encode(b"\0" * 8).decode(),
    ],
)
async def test_digest_of_the_wrong_size_is_460_and_changes_nothing(client, store_factory, tmp_path, value):
    first = os.urandom(MiB + 3)
    path = await create(client, 20 * MiB)
    await patch(client, path, 0, first)
    before = storage_snapshot(store_factory, tmp_path)
    body = os.urandom(6 * MiB)  # more than a part's worth on S3
    await patch(client, path, len(first), body, expect=460, Upload_Checksum=value)
    assert storage_snapshot(store_factory, tmp_path) == before
    assert (await head(client, path)).headers["Upload-Offset"] == str(len(first))
    # Creation-with-upload: known to fail before the upload exists, so none is created.
    headers = {**TUS, "Upload-Length": "1000", "Content-Type": OCTETS, "Upload-Checksum": value}
    resp = await client.post("/", data=os.urandom(1000), headers=headers)
    assert resp.status == 460, await resp.text()
    assert "Location" not in resp.headers
    assert storage_snapshot(store_factory, tmp_path) == before


async def test_interrupted_patch_with_checksum_stores_nothing(client):
    data = os.urandom(2 * MiB)
    path = await create(client, len(data))
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        (
            f"PATCH {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
            f"Content-Type: {OCTETS}\r\nContent-Length: {len(data)}\r\n"
            f"Upload-Checksum: {digest('sha1', data)}\r\n\r\n"
        ).encode()
        + data[: MiB]
    )
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.close()
    for _ in range(50):  # the server notices the drop asynchronously
        resp = await head(client, path)
        if resp.status == 200:
            break
        await asyncio.sleep(0.1)
    assert resp.headers["Upload-Offset"] == "0"
    await patch(client, path, 0, data, Upload_Checksum=digest("md5", data))
    assert sha256(await download(client, path)) == sha256(data)


async def test_creation_with_upload_checks_checksum(client):
    data = os.urandom(1000)
    headers = {**TUS, "Upload-Length": "1000", "Content-Type": OCTETS, "Upload-Checksum": digest("sha1", data)}
    resp = await client.post("/", data=data, headers=headers)
    assert resp.status == 201
    assert resp.headers["Upload-Offset"] == "1000"
