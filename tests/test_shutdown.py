"""SIGTERM on a real server process: new uploads are refused with 503 and Retry-After,
uploads in flight finish within the grace period, the ones that do not are stopped
with their received bytes stored, and the process exits."""

from __future__ import annotations

import os
import signal

import aiohttp
import pytest

from tests.hanging import HangingPatch, wait_until
from tests.serverproc import ServerProcess
from tests.tus_client import OCTETS, TUS, sha256

MiB = 1 << 20

pytestmark = pytest.mark.both_doors


async def create(session: aiohttp.ClientSession, server: ServerProcess, length: int) -> str:
    async with session.post(server.url, headers={**TUS, "Upload-Length": str(length)}) as resp:
        assert resp.status == 201, await resp.text()
        return resp.headers["Location"]


async def stored_at_least(store_kind: str, tmp_path, upload_url: str, count: int, request) -> None:
    """Wait until the server has put `count` bytes into storage (read directly)."""
    upload_id = upload_url.rsplit("/", 1)[1]
    if store_kind == "file":
        path = tmp_path / "uploads" / upload_id
        await wait_until(lambda: path.stat().st_size >= count, f"{count} bytes on disk")
        return
    import boto3

    s3 = boto3.client("s3", endpoint_url=request.getfixturevalue("moto_endpoint"))
    bucket = request.getfixturevalue("bucket")

    def in_parts() -> int:
        total = 0
        for upload in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            if upload["Key"] == upload_id:
                parts = s3.list_parts(Bucket=bucket, Key=upload_id, UploadId=upload["UploadId"])
                total += sum(p["Size"] for p in parts.get("Parts", []))
        return total

    await wait_until(lambda: in_parts() >= count, f"{count} bytes in parts")


async def test_sigterm_refuses_new_uploads_and_lets_the_one_in_flight_finish(
    serve_process, server_args, store_kind, tmp_path, request
):
    server = await serve_process(*server_args, "--shutdown-grace", "20").start()
    try:
        async with aiohttp.ClientSession() as session:
            data = os.urandom(6 * MiB + 3)
            url = await create(session, server, len(data))
            other = await create(session, server, 10)
            path = url[url.index("/files/") :]
            inflight = await HangingPatch.start("127.0.0.1", server.port, path, 0, len(data))
            await inflight.send(data[: 5 * MiB + 10])
            await stored_at_least(store_kind, tmp_path, url, 4 * MiB if store_kind == "file" else 5 * MiB, request)

            server.signal(signal.SIGTERM)
            await server.wait_for_log("shutting down: waiting up to 20s for 1 uploads")
            async with session.post(server.url, headers={**TUS, "Upload-Length": "5"}) as resp:
                assert resp.status == 503
                assert resp.headers["Retry-After"] == "2"
                assert (await resp.text()) == "server is shutting down; retry on another instance\n"
            headers = {**TUS, "Upload-Offset": "0", "Content-Type": OCTETS}
            async with session.patch(other, data=b"0123456789", headers=headers) as resp:
                assert resp.status == 503
            async with session.head(other, headers=TUS) as resp:  # reads still work
                assert resp.headers["Upload-Offset"] == "0"

            await inflight.send(data[5 * MiB + 10 :])
            done = await inflight.response()
            assert done.status == 204
            assert done.headers["upload-offset"] == str(len(data))
            inflight.close()
        assert await server.wait() == server.stopped_by_sigterm
        assert server.stopped_line in server.log
    finally:
        await server.stop()

    restarted = await serve_process(*server_args).start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(restarted.url + url.rsplit("/", 1)[1]) as resp:
                assert resp.status == 200
                assert sha256(await resp.read()) == sha256(data)
    finally:
        await restarted.stop()


async def test_sigterm_stops_an_upload_past_the_grace_and_keeps_its_bytes(
    serve_process, server_args, store_kind, tmp_path, request
):
    server = await serve_process(*server_args, "--shutdown-grace", "0.5").start()
    # On S3 a whole part and a tail: the tail must be flushed to .part on the way out.
    sent = 5 * MiB + 1234
    data = os.urandom(8 * MiB)
    try:
        async with aiohttp.ClientSession() as session:
            url = await create(session, server, len(data))
        path = url[url.index("/files/") :]
        stalled = await HangingPatch.start("127.0.0.1", server.port, path, 0, len(data))
        await stalled.send(data[:sent])
        await stored_at_least(store_kind, tmp_path, url, 5 * MiB if store_kind == "s3" else 4 * MiB, request)

        server.signal(signal.SIGTERM)
        stopped = await stalled.response()
        assert stopped.status == 503
        assert stopped.headers["retry-after"] == "2"
        stalled.close()
        assert await server.wait() == server.stopped_by_sigterm
        assert "shutting down: stopping 1 uploads; their bytes are kept" in server.log
    finally:
        await server.stop()

    restarted = await serve_process(*server_args).start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.head(url.replace(server.url, restarted.url), headers=TUS) as resp:
                assert resp.headers["Upload-Offset"] == str(sent)
            upload = restarted.url + url.rsplit("/", 1)[1]
            headers = {**TUS, "Upload-Offset": str(sent), "Content-Type": OCTETS}
            async with session.patch(upload, data=data[sent:], headers=headers) as resp:
                assert resp.status == 204, await resp.text()
            async with session.get(upload) as resp:
                assert sha256(await resp.read()) == sha256(data)
    finally:
        await restarted.stop()


async def test_a_second_sigterm_cuts_the_grace_short_and_keeps_the_bytes(
    serve_process, server_args, store_kind, tmp_path, request
):
    server = await serve_process(*server_args, "--shutdown-grace", "600").start()
    sent = 5 * MiB + 77
    data = os.urandom(6 * MiB)
    try:
        async with aiohttp.ClientSession() as session:
            url = await create(session, server, len(data))
        stalled = await HangingPatch.start("127.0.0.1", server.port, url[url.index("/files/") :], 0, len(data))
        await stalled.send(data[:sent])
        await stored_at_least(store_kind, tmp_path, url, 4 * MiB if store_kind == "file" else 5 * MiB, request)
        server.signal(signal.SIGTERM)
        await server.wait_for_log("shutting down: waiting up to 600s for 1 uploads")
        server.signal(signal.SIGTERM)
        assert (await stalled.response()).status == 503
        assert await server.wait() == server.stopped_by_sigterm
        stalled.close()
    finally:
        await server.stop()
    restarted = await serve_process(*server_args).start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.head(restarted.url + url.rsplit("/", 1)[1], headers=TUS) as resp:
                assert resp.headers["Upload-Offset"] == str(sent)
    finally:
        await restarted.stop()
