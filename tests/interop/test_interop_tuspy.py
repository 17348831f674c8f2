"""tuspy (the PyPI tus client) against a real tusserver, per store. The clients run in
a worker thread (tuspy's sync uploader blocks; the async one gets its own loop there)
so the in-process server keeps serving."""

from __future__ import annotations

import asyncio

import pytest
from interop_support import MiB, decode_metadata, make_file
from tusclient.client import TusClient
from tusclient.storage.filestorage import FileStorage

SIZE = 5 * MiB + 123

pytestmark = pytest.mark.both_doors


def offsets(target, url: str) -> list[int]:
    return [int(r.headers["Upload-Offset"]) for r in target.received("PATCH", url)]


async def test_tuspy_chunked_upload(make_target, tmp_path):
    target = await make_target()
    path, digest = make_file(tmp_path, "five.bin", SIZE, seed=11)

    def upload() -> str:
        uploader = TusClient(target.endpoint).uploader(
            file_path=str(path), chunk_size=MiB, metadata={"filename": "tüspy ✓.bin"}
        )
        uploader.upload()
        return uploader.url

    url = await asyncio.to_thread(upload)
    assert len(target.received("POST")) == 1
    assert offsets(target, url) == [i * MiB for i in range(6)]
    assert [r.bytes_in for r in target.received("PATCH", url)] == [MiB] * 5 + [123]
    head = await target.head(url)
    assert decode_metadata(head.headers["Upload-Metadata"]) == {"filename": "tüspy ✓.bin"}
    await target.check_bytes(url, digest, SIZE)


async def test_tuspy_resumes_from_url_storage_after_a_partial_upload(make_target, tmp_path):
    target = await make_target()
    path, digest = make_file(tmp_path, "five.bin", SIZE, seed=12)
    storage_file = str(tmp_path / "tuspy-urls.json")

    def uploader():
        # A new client and a new storage object each time, as after a restart of the script.
        return TusClient(target.endpoint).uploader(
            file_path=str(path), chunk_size=MiB, store_url=True, url_storage=FileStorage(storage_file)
        )

    def first() -> str:
        up = uploader()
        up.upload(stop_at=2 * MiB)
        assert up.offset == 2 * MiB
        return up.url

    url = await asyncio.to_thread(first)
    head = await target.head(url)
    assert (head.headers["Upload-Offset"], head.headers["Upload-Length"]) == (str(2 * MiB), str(SIZE))

    def second() -> tuple[str, int]:
        up = uploader()
        resumed_at = up.offset  # from the stored URL and a HEAD, before any byte is sent
        up.upload()
        return up.url, resumed_at

    resumed_url, resumed_at = await asyncio.to_thread(second)
    assert (resumed_url, resumed_at) == (url, 2 * MiB)
    assert len(target.received("POST")) == 1
    assert offsets(target, url) == [i * MiB for i in range(6)]
    await target.check_bytes(url, digest, SIZE)


async def test_tuspy_async_uploader(make_target, tmp_path):
    target = await make_target()
    path, digest = make_file(tmp_path, "five.bin", SIZE, seed=13)

    async def upload() -> str:
        uploader = TusClient(target.endpoint).async_uploader(file_path=str(path), chunk_size=2 * MiB)
        await uploader.upload()
        return uploader.url

    url = await asyncio.to_thread(asyncio.run, upload())
    assert len(target.received("POST")) == 1
    assert offsets(target, url) == [0, 2 * MiB, 4 * MiB]
    await target.check_bytes(url, digest, SIZE)
