"""Presigned downloads: GET answers 302 to a presigned S3 URL, and following it gets the
exact bytes from S3 (moto server) without passing through the tus server."""

from __future__ import annotations

import os
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from tests.tus_client import TUS, create, patch, sha256
from tusserver import Config, HookRejected, Hooks, create_app
from tusserver.load import ConfigError, load_config
from tusserver.protocol import download_headers
from tusserver.stores.s3 import S3Store

MiB = 1 << 20
NAME = "0L7RgtGH0ZHRgiAyMDI0LnBkZg=="  # base64("отчёт 2024.pdf")


@pytest.fixture
def s3_factory(moto_endpoint, tmp_path):
    from tests.conftest import make_bucket

    bucket = make_bucket(moto_endpoint)

    def build(**kw):
        return S3Store(bucket, endpoint_url=moto_endpoint, path_style=True, temp_dir=str(tmp_path), **kw)

    build.endpoint = moto_endpoint
    return build


async def test_get_redirects_to_a_presigned_url_that_serves_the_exact_bytes(aiohttp_client, s3_factory):
    client = await aiohttp_client(
        create_app(Config(), store=s3_factory(presigned_downloads=True, presign_expiry=120))
    )
    data = os.urandom(6 * MiB + 3)  # two parts
    path = await create(client, len(data), Upload_Metadata=f"filename {NAME},filetype YXBwbGljYXRpb24vcGRm")
    await patch(client, path, 0, data)

    resp = await client.get(path, allow_redirects=False)
    assert resp.status == 302
    location = resp.headers["Location"]
    url = urlsplit(location)
    assert f"{url.scheme}://{url.netloc}" == s3_factory.endpoint  # the bytes skip the tus server
    query = parse_qs(url.query)
    assert query["X-Amz-Expires"] == ["120"]
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    expected = download_headers({"filename": "отчёт 2024.pdf", "filetype": "application/pdf"})
    assert query["response-content-disposition"] == [expected["Content-Disposition"]]
    assert "filename*=UTF-8''%D0%BE%D1%82%D1%87%D1%91%D1%82%202024.pdf" in expected["Content-Disposition"]
    assert query["response-content-type"] == ["application/octet-stream"]  # PDFs are attachments

    async with aiohttp.ClientSession() as s3, s3.get(location) as fetched:
        assert fetched.status == 200
        assert sha256(await fetched.read()) == sha256(data)


async def test_pre_get_and_unfinished_uploads_are_checked_before_redirecting(aiohttp_client, s3_factory):
    hooks = Hooks()

    @hooks.on("pre-get")
    def only_staff(event):
        if event.request.headers.get("X-Role") != "staff":
            raise HookRejected(403, "staff only")

    client = await aiohttp_client(create_app(Config(), store=s3_factory(presigned_downloads=True), hooks=hooks))
    path = await create(client, 4)
    assert (await client.get(path, allow_redirects=False, headers={"X-Role": "staff"})).status == 409  # unfinished
    await patch(client, path, 0, b"data")
    resp = await client.get(path, allow_redirects=False)
    assert (resp.status, await resp.text()) == (403, "staff only\n")
    resp = await client.get(path, allow_redirects=False, headers={"X-Role": "staff"})
    assert resp.status == 302
    assert resp.headers["Tus-Resumable"] == "1.0.0"


async def test_without_presigning_the_server_streams_the_bytes(aiohttp_client, s3_factory):
    client = await aiohttp_client(create_app(Config(), store=s3_factory()))
    path = await create(client, 3)
    await patch(client, path, 0, b"abc")
    resp = await client.get(path, allow_redirects=False, headers=TUS)
    assert (resp.status, await resp.read()) == (200, b"abc")


def test_presigning_is_configured_from_the_config():
    config = load_config(
        env={"TUSSERVER_S3_PRESIGNED_DOWNLOADS": "true", "TUSSERVER_S3_PRESIGN_EXPIRY": "600"},
        cli={"store": "s3", "s3_bucket": "b"},
    )
    store = S3Store.from_config(config)
    assert (store.presigned_downloads, store.presign_expiry) == (True, 600.0)
    with pytest.raises(ConfigError, match="s3_presign_expiry must be 1 to 604800"):
        load_config(env={"TUSSERVER_S3_PRESIGN_EXPIRY": "700000"})
