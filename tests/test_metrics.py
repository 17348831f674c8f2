"""/metrics, /healthz and /readyz over real HTTP, on the app the CLI builds: the numbers
change as an upload goes through, per app, on both stores."""

from __future__ import annotations

import asyncio
import os
import shutil

import boto3
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.tus_client import OCTETS, TUS, create, download, patch
from tusserver import Config, FileStore, Hooks, add_ops_routes, create_app
from tusserver.cli import build_app

MiB = 1 << 20
PATIENCE = 30  # seconds; a bound against hanging, not a timing assertion


def config_for(store_factory, tmp_path, **kw) -> Config:
    """The stand-alone server's config over the test's storage."""
    if hasattr(store_factory, "bucket"):
        return Config(
            store="s3",
            s3_bucket=store_factory.bucket,
            s3_endpoint=store_factory.endpoint,
            s3_path_style=True,
            temp_dir=store_factory.temp_dir,
            **kw,
        )
    return Config(file_dir=str(tmp_path / "uploads"), **kw)


async def scrape(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(await resp.text()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def until(client, predicate, what: str) -> dict:
    for _ in range(PATIENCE * 50):
        samples = await scrape(client)
        if predicate(samples):
            return samples
        await asyncio.sleep(0.02)
    raise AssertionError(f"gave up waiting for {what}")


async def test_an_upload_moves_the_counters(aiohttp_client, store_factory, tmp_path):
    # Without expiry: with it, every unfinished PATCH also rewrites .info (counted below).
    client = await aiohttp_client(build_app(config_for(store_factory, tmp_path, expire_after=None)))
    before = await scrape(client)
    assert value(before, "tusserver_uploads_created_total") == 0
    assert value(before, "tusserver_requests_total", method="GET", status="200") == 0  # scrapes do not count

    data = os.urandom(1000)
    path = await create(client, len(data), path="/files/")
    await patch(client, path, 0, data[:400])
    await patch(client, path, 400, data[400:])
    assert await download(client, path) == data
    resp = await client.patch(path, data=b"x", headers={**TUS, "Upload-Offset": "0", "Content-Type": OCTETS})
    assert resp.status == 409
    assert (await client.delete(path, headers=TUS)).status == 204
    after = await scrape(client)

    assert value(after, "tusserver_requests_total", method="POST", status="201") == 1
    assert value(after, "tusserver_requests_total", method="PATCH", status="204") == 2
    assert value(after, "tusserver_requests_total", method="PATCH", status="409") == 1
    assert value(after, "tusserver_requests_total", method="GET", status="200") == 1
    assert value(after, "tusserver_requests_total", method="DELETE", status="204") == 1
    assert value(after, "tusserver_received_bytes_total") == 1000
    assert value(after, "tusserver_uploads_created_total") == 1
    assert value(after, "tusserver_uploads_finished_total") == 1
    assert value(after, "tusserver_uploads_terminated_total") == 1
    assert value(after, "tusserver_active_uploads") == 0
    assert value(after, "tusserver_temp_bytes") == 0
    s3_calls = {labels[0][1]: n for (name, labels), n in after.items() if name == "tusserver_s3_request_seconds_count"}
    if hasattr(store_factory, "bucket"):
        # 1000 bytes never make a part: the object is written whole, with no multipart upload.
        for operation in ("CreateMultipartUpload", "UploadPart", "ListParts", "CompleteMultipartUpload"):
            assert operation not in s3_calls, operation
        assert "AbortMultipartUpload" not in s3_calls
        # .info at creation, before the first tail chunk (it says the upload has one now), and
        # at the finish; the expiry index entry; the tail chunk; the object
        assert s3_calls["PutObject"] == 6
        for (name, labels), n in after.items():
            if name == "tusserver_s3_request_seconds_sum":
                assert n > 0, labels
            if name == "tusserver_s3_request_errors_total":  # 404s for a missing .part are no failures
                assert n == 0, labels
    else:
        assert s3_calls == {}


async def test_active_uploads_and_spool_bytes_while_a_patch_runs(aiohttp_client, store_factory, tmp_path):
    client = await aiohttp_client(build_app(config_for(store_factory, tmp_path)))
    data = os.urandom(2 * MiB)
    path = await create(client, len(data), path="/files/")
    go_on = asyncio.Event()

    async def body():
        yield data[:MiB]
        await asyncio.wait_for(go_on.wait(), PATIENCE)
        yield data[MiB:]

    headers = {**TUS, "Upload-Offset": "0", "Content-Type": OCTETS, "Content-Length": str(len(data))}
    pending = asyncio.ensure_future(client.patch(path, data=body(), headers=headers))
    spooling = hasattr(store_factory, "bucket")  # the S3 store spools parts in temp files

    def in_progress(samples) -> bool:
        spooled = value(samples, "tusserver_temp_bytes") >= MiB
        return value(samples, "tusserver_active_uploads") == 1 and (spooled or not spooling)

    during = await until(client, in_progress, "the PATCH to be in progress")
    assert value(during, "tusserver_uploads_finished_total") == 0
    go_on.set()
    resp = await pending
    assert resp.status == 204
    after = await scrape(client)
    assert value(after, "tusserver_active_uploads") == 0
    assert value(after, "tusserver_temp_bytes") == 0
    assert value(after, "tusserver_received_bytes_total") == len(data)
    assert await download(client, path) == data


async def test_two_apps_in_one_process_keep_separate_numbers(aiohttp_client, tmp_path):
    first = create_app(Config(), store=FileStore(str(tmp_path / "a")))
    second = create_app(Config(), store=FileStore(str(tmp_path / "b")))
    add_ops_routes(first, first)
    add_ops_routes(second, second)
    a = await aiohttp_client(first)
    b = await aiohttp_client(second)
    await create(a, 5)
    await create(a, 5)
    assert value(await scrape(a), "tusserver_uploads_created_total") == 2
    assert value(await scrape(b), "tusserver_uploads_created_total") == 0


async def test_hook_calls_and_failures_are_counted(aiohttp_client, tmp_path):
    hooks = Hooks()
    hooks.on("pre-create", lambda event: None)

    def broken(event):
        raise RuntimeError("boom")

    hooks.on("post-create", broken)
    app = create_app(Config(), store=FileStore(str(tmp_path)), hooks=hooks)
    add_ops_routes(app, app)
    client = await aiohttp_client(app)
    await create(client, 1)
    await create(client, 1)
    samples = await scrape(client)
    assert value(samples, "tusserver_hook_invocations_total", event="pre-create", source="python") == 2
    assert value(samples, "tusserver_hook_invocations_total", event="post-create", source="python") == 2
    assert value(samples, "tusserver_hook_errors_total", event="post-create", source="python") == 2
    assert value(samples, "tusserver_hook_errors_total", event="pre-create", source="python") == 0


@pytest.mark.parametrize("base_path", ["/files/", "/"])
async def test_health_and_readiness(aiohttp_client, store_factory, tmp_path, base_path):
    client = await aiohttp_client(build_app(config_for(store_factory, tmp_path, base_path=base_path)))
    resp = await client.get("/healthz")
    assert (resp.status, await resp.text()) == (200, "ok\n")
    resp = await client.get("/readyz")
    assert (resp.status, await resp.text()) == (200, "ready\n")
    # The tus routes still work beside them, whatever the base path.
    path = await create(client, 2, path=base_path)
    await patch(client, path, 0, b"ok")
    assert await download(client, path) == b"ok"
    assert (await client.head("/metrics", headers=TUS)).status == 200


async def test_readyz_is_503_when_the_upload_directory_is_gone(aiohttp_client, tmp_path):
    client = await aiohttp_client(build_app(Config(file_dir=str(tmp_path / "uploads"))))
    assert (await client.get("/readyz")).status == 200
    shutil.rmtree(tmp_path / "uploads")
    resp = await client.get("/readyz")
    assert (resp.status, await resp.text()) == (503, "store unreachable\n")
    assert (await client.get("/healthz")).status == 200  # alive all the same


async def test_readyz_is_503_when_the_bucket_goes_away_after_start(aiohttp_client, moto_endpoint, bucket, tmp_path):
    # A missing bucket stops the server at start-up (test_s3_startup.py); one lost later shows here.
    config = Config(store="s3", s3_bucket=bucket, s3_endpoint=moto_endpoint, s3_path_style=True)
    client = await aiohttp_client(build_app(config))
    assert (await client.get("/readyz")).status == 200
    boto3.client("s3", endpoint_url=moto_endpoint).delete_bucket(Bucket=bucket)
    # The answer is cached for a second (one HeadBucket a second at most): it turns within a few.
    for _ in range(50):
        resp = await client.get("/readyz")
        if resp.status != 200:
            break
        await asyncio.sleep(0.1)
    assert (resp.status, await resp.text()) == (503, "store unreachable\n")
