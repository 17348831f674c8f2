"""Downloads are never active content on our origin, and no response names versions."""

from __future__ import annotations

import boto3
import pytest
from yarl import URL

from tests.tus_client import OCTETS, TUS, sha256
from tusserver import Config, create_app
from tusserver.cli import build_app
from tusserver.stores.s3 import S3Store

SAFE = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox", "Referrer-Policy": "no-referrer"}
SCRIPT = b"<script>fetch('/files/', {credentials: 'include'})</script><svg onload=alert(1)>"
ACTIVE = [
    "text/html",
    "TEXT/HTML",
    "image/svg+xml",
    "application/xml",
    "text/xml",
    "application/xhtml+xml",
    "application/javascript",
    "text/javascript",
    "application/pdf",
    "multipart/x-mixed-replace",
    "text/html; charset=utf-8",
]


def b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


async def upload(client, data: bytes, filetype: str | None) -> str:
    headers = {**TUS, "Upload-Length": str(len(data)), "Content-Type": OCTETS}
    if filetype is not None:
        headers["Upload-Metadata"] = f"filetype {b64(filetype)},filename {b64('x.html')}"
    resp = await client.post("/", headers=headers, data=data)
    assert resp.status == 201, await resp.text()
    return "/" + resp.headers["Location"].rsplit("/", 1)[1]


def security_headers(resp) -> dict[str, str]:
    return {name: resp.headers.get(name) for name in SAFE}


@pytest.fixture
async def client(aiohttp_client, store_factory):
    return await aiohttp_client(create_app(Config(), store=store_factory()))


async def test_active_types_are_octet_stream_attachments_in_a_sandbox(client):
    for filetype in ACTIVE:
        path = await upload(client, SCRIPT, filetype)
        resp = await client.get(path)
        assert resp.status == 200, filetype
        assert resp.headers["Content-Type"] == "application/octet-stream", filetype
        assert resp.headers["Content-Disposition"].startswith("attachment; "), filetype
        assert security_headers(resp) == SAFE, filetype
        assert sha256(await resp.read()) == sha256(SCRIPT)


async def test_inline_images_and_ranges_are_sandboxed_too(client):
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(40))
    path = await upload(client, png, "image/png")
    resp = await client.get(path)
    assert (resp.headers["Content-Type"], resp.headers["Content-Disposition"].split(";")[0]) == ("image/png", "inline")
    assert security_headers(resp) == SAFE and await resp.read() == png
    resp = await client.get(path, headers={"Range": "bytes=2-9"})
    assert (resp.status, await resp.read()) == (206, png[2:10])
    assert security_headers(resp) == SAFE


async def test_the_s3_object_stores_the_sanitised_content_type(aiohttp_client, moto_endpoint, bucket, tmp_path):
    store = S3Store(bucket, endpoint_url=moto_endpoint, path_style=True, temp_dir=str(tmp_path))
    client = await aiohttp_client(create_app(Config(), store=store))
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    expected = {"text/html": "application/octet-stream", "image/svg+xml": "application/octet-stream"}
    expected.update({"image/png": "image/png", "text/plain": "text/plain"})
    for filetype, stored in expected.items():
        upload_id = (await upload(client, SCRIPT, filetype))[1:]
        head = s3.head_object(Bucket=bucket, Key=upload_id)
        assert head["ContentType"] == stored, filetype
    upload_id = (await upload(client, SCRIPT, None))[1:]
    assert s3.head_object(Bucket=bucket, Key=upload_id)["ContentType"] == "application/octet-stream"


async def test_no_response_names_a_version_ops_routes_included(aiohttp_client, tmp_path):
    config = Config(file_dir=str(tmp_path / "up"), cors_origins=["https://app.example"])
    client = await aiohttp_client(build_app(config))
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    created = await client.post("/files/", headers={**TUS, "Upload-Length": "0"})
    assert created.status == 201
    answers = [
        created,
        await client.get(URL(created.headers["Location"]).path),
        await client.options("/files/", headers=preflight),
        await client.options("/files/"),
        await client.head("/files/" + "A" * 22, headers=TUS),  # 404
        await client.post("/files/", headers={"Upload-Length": "1"}),  # 412, no Tus-Resumable
        await client.get("/metrics"),
        await client.get("/healthz"),
        await client.get("/readyz"),
        await client.get("/nothing/here"),  # the root app's own 404
    ]
    assert [r.status for r in answers] == [201, 200, 204, 200, 404, 412, 200, 200, 200, 404]
    for resp in answers:
        assert resp.headers["Server"] == "tusserver", (resp.status, resp.url)
        assert resp.headers["X-Content-Type-Options"] == "nosniff", (resp.status, resp.url)
