"""concatenation and concatenation-unfinished, on every store."""

from __future__ import annotations

import os

import pytest
from yarl import URL

from tests.tus_client import TUS, create, download, head, patch, sha256
from tusserver import Config, create_app
from tusserver.app import HANDLERS_KEY

MiB = 1 << 20


@pytest.fixture
async def client(aiohttp_client, store_factory):
    return await aiohttp_client(create_app(Config(), store=store_factory()))


async def upload_partial(client, data: bytes) -> str:
    path = await create(client, len(data), Upload_Concat="partial")
    if data:
        await patch(client, path, 0, data)
    return path


async def create_final(client, *paths: str, expect: int = 201):
    resp = await client.post("/", headers={**TUS, "Upload-Concat": "final;" + " ".join(paths)})
    assert resp.status == expect, (resp.status, await resp.text())
    return resp


async def final_path(client, *paths: str) -> str:
    return URL((await create_final(client, *paths)).headers["Location"]).path


async def test_final_is_the_partials_in_order_and_partials_stay(client):
    a, b, c = os.urandom(6 * MiB + 7), os.urandom(3 * MiB + 1), os.urandom(1000)
    pa, pb, pc = await upload_partial(client, a), await upload_partial(client, b), await upload_partial(client, c)
    final = await final_path(client, pb, pa, pc)
    assert sha256(await download(client, final)) == sha256(b + a + c)
    info = await head(client, final)
    assert info.status == 200
    assert info.headers["Upload-Offset"] == str(len(a) + len(b) + len(c))
    assert info.headers["Upload-Length"] == str(len(a) + len(b) + len(c))
    assert info.headers["Upload-Concat"] == f"final;{pb} {pa} {pc}"
    assert (await head(client, pa)).headers["Upload-Concat"] == "partial"
    # Deleting the final leaves the partials downloadable.
    assert (await client.delete(final, headers=TUS)).status == 204
    assert sha256(await download(client, pa)) == sha256(a)
    assert sha256(await download(client, pb)) == sha256(b)


async def test_small_partials_concatenate(client):
    parts = [os.urandom(n) for n in (1, 1000, 0, 70_000)]
    paths = [await upload_partial(client, p) for p in parts]
    final = await final_path(client, *paths)
    assert sha256(await download(client, final)) == sha256(b"".join(parts))


async def test_absolute_partial_urls_of_this_server_are_accepted(client):
    data = os.urandom(100)
    path = await upload_partial(client, data)
    url = str(client.make_url(path))
    final = await final_path(client, url)
    assert await download(client, final) == data


async def test_unfinished_final_completes_when_last_partial_finishes(client):
    a, b = os.urandom(5 * MiB + 3), os.urandom(2 * MiB)
    pa = await create(client, len(a), Upload_Concat="partial")
    pb = await upload_partial(client, b)
    final = await final_path(client, pa, pb)
    resp = await head(client, final)
    assert resp.status == 200
    assert "Upload-Offset" not in resp.headers
    assert (await client.get(final)).status == 409
    await patch(client, pa, 0, a[: 3 * MiB])
    assert "Upload-Offset" not in (await head(client, final)).headers
    await patch(client, pa, 3 * MiB, a[3 * MiB :])
    await client.app[HANDLERS_KEY].finals.drain()  # the PATCH only asked for the concatenation
    resp = await head(client, final)
    assert resp.headers["Upload-Offset"] == str(len(a) + len(b))
    assert sha256(await download(client, final)) == sha256(a + b)


async def test_patch_on_final_is_403_and_changes_nothing(client):
    data = os.urandom(10)
    final = await final_path(client, await upload_partial(client, data))
    await patch(client, final, 10, b"x", expect=403)
    assert await download(client, final) == data


async def test_missing_partial_is_404(client):
    await create_final(client, "/" + "0" * 32, expect=404)


async def test_non_partial_upload_is_400(client):
    path = await create(client, 1)
    await patch(client, path, 0, b"x")
    await create_final(client, path, expect=400)


@pytest.mark.parametrize(
    "url",
    ["http://elsewhere.example/abc", "/../etc/passwd", "/a%2F..%2Fb", "/x.info", "/", "/abc?x=1"],
)
async def test_foreign_or_tricky_partial_urls_are_400(client, url):
    await create_final(client, url, expect=400)


async def test_bad_concat_header_is_400(client):
    for value in ("partial;x", "final;", "final", "whole"):
        resp = await client.post("/", headers={**TUS, "Upload-Concat": value, "Upload-Length": "1"})
        assert resp.status == 400, value
