"""S3 store specifics, against moto in server mode (separate process, real HTTP, 5 MiB
minimum part size enforced unless a test starts its own moto with a lower one).

Every finished upload is checked by the sha256 of the object read back from S3."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import random
import time

import boto3
import pytest
from aiohttp import ClientSession, web
from yarl import URL

from tests.conftest import make_bucket, start_moto, stop_process
from tusserver import Config, create_app
from tusserver.info import UploadInfo
from tusserver.locking import MemoryLocker
from tusserver.locking.files import FileLocker
from tusserver.protocol import new_upload_id
from tusserver.stores import s3 as s3_module
from tusserver.stores.file import FileStore
from tusserver.stores.s3 import (
    MAX_OBJECT_SIZE,
    MAX_PART_SIZE,
    MAX_PARTS,
    S3Store,
    part_size_for,
    uniform_part_size,
    uniform_ranges,
)
from tusserver.stores.spool import TEMP_PREFIX, remove_stale_spools

MiB = 1 << 20
TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def dashed(headers: dict[str, str]) -> dict[str, str]:
    return {name.replace("_", "-"): value for name, value in headers.items()}


class Bucket:
    """Synchronous view of the test bucket, to check what S3 really holds."""

    def __init__(self, endpoint: str, name: str) -> None:
        self.name = name
        self.s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")

    def keys(self) -> list[str]:
        return sorted(o["Key"] for o in self.s3.list_objects_v2(Bucket=self.name).get("Contents", []))

    def multipart_uploads(self) -> list[dict]:
        return self.s3.list_multipart_uploads(Bucket=self.name).get("Uploads", [])

    def get(self, key: str) -> bytes:
        return self.s3.get_object(Bucket=self.name, Key=key)["Body"].read()

    def head(self, key: str) -> dict:
        return self.s3.head_object(Bucket=self.name, Key=key)

    def parts(self, upload_id: str) -> list[dict]:
        info = json.loads(self.get(f"{upload_id}.info"))
        if "upload_id" not in info["storage"]:  # no multipart upload created yet
            return []
        s3_id, key = info["storage"]["upload_id"], info["storage"]["key"]
        parts, marker = [], 0
        while True:
            page = self.s3.list_parts(Bucket=self.name, Key=key, UploadId=s3_id, PartNumberMarker=marker)
            parts += page.get("Parts", [])
            if not page.get("IsTruncated"):
                return parts
            marker = page["NextPartNumberMarker"]

    def chunks(self, upload_id: str) -> list[str]:
        """Every tail chunk object of the upload (`<id>.part.<n>.<start>`)."""
        return [key for key in self.keys() if key.startswith(f"{upload_id}.part.")]

    def tail(self, upload_id: str) -> bytes:
        """The bytes of the tail: the chunks for the part after the stored ones, chained
        from where the parts end (what the store counts in the offset)."""
        parts = self.parts(upload_id)
        position, wanted = sum(p["Size"] for p in parts), len(parts) + 1
        by_start = {}
        for key in self.chunks(upload_id):
            number, start = key[len(f"{upload_id}.part.") :].split(".")
            if int(number) == wanted:
                by_start[int(start)] = key
        held = b""
        while position in by_start:
            chunk = self.get(by_start.pop(position))
            held += chunk
            position += len(chunk)
        return held

    def assert_object(self, upload_id: str, data: bytes) -> None:
        assert sha256(self.get(upload_id)) == sha256(data)
        assert self.chunks(upload_id) == []
        assert self.multipart_uploads() == []


class Server:
    """One app instance (its own S3Store) over the shared bucket, on a real socket."""

    def __init__(self, client, store: S3Store) -> None:
        self.client = client
        self.store = store

    async def create(self, length: int | None, **headers: str) -> str:
        h = {**TUS, **dashed(headers)}
        h.update({"Upload-Length": str(length)} if length is not None else {"Upload-Defer-Length": "1"})
        async with self.client.post("/", headers=h) as resp:
            assert resp.status == 201, await resp.text()
            return URL(resp.headers["Location"]).path.rsplit("/", 1)[1]

    async def patch(self, upload_id: str, offset: int, data: bytes, expect: int = 204, **headers: str) -> int:
        h = {**TUS, "Upload-Offset": str(offset), "Content-Type": OCTETS, **dashed(headers)}
        async with self.client.patch(f"/{upload_id}", data=data, headers=h) as resp:
            assert resp.status == expect, (resp.status, await resp.text())
            return int(resp.headers["Upload-Offset"]) if expect == 204 else -1

    async def head(self, upload_id: str):
        async with self.client.head(f"/{upload_id}", headers=TUS) as resp:
            assert resp.status == 200, resp.status
            return resp.headers

    async def offset(self, upload_id: str) -> int:
        return int((await self.head(upload_id))["Upload-Offset"])

    async def drop_mid_patch(self, upload_id: str, offset: int, body: bytes, announced: int) -> None:
        """PATCH announcing `announced` bytes, send `body`, then close the socket."""
        server = self.client.server.runner.server
        before = set(server.connections)
        reader, writer = await asyncio.open_connection(self.client.host, self.client.port)
        head = (
            f"PATCH /{upload_id} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
            f"Upload-Offset: {offset}\r\nContent-Type: {OCTETS}\r\nContent-Length: {announced}\r\n\r\n"
        )
        writer.write(head.encode())
        for i in range(0, len(body), 65536):
            writer.write(body[i : i + 65536])
            await writer.drain()
        writer.close()
        await writer.wait_closed()
        for _ in range(2000):  # bounded wait for the server to finish with the dropped request
            if not set(server.connections) - before:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the dropped PATCH is still being handled")


@pytest.fixture
def spool_dir(tmp_path) -> str:
    path = tmp_path / "spool"
    path.mkdir()
    return str(path)


@pytest.fixture
def s3(moto_endpoint, bucket) -> Bucket:
    return Bucket(moto_endpoint, bucket)


@pytest.fixture
def serve(aiohttp_client, moto_endpoint, bucket, spool_dir):
    """Start an app instance over the test bucket; each call is a new server process's worth."""

    async def start(
        endpoint: str | None = None,
        bucket_name: str | None = None,
        config: Config | None = None,
        locker: MemoryLocker | None = None,
        **options,
    ) -> Server:
        options = {"part_size": 6 * MiB, **options}
        retry_attempts = options.pop("retry_attempts", None)
        endpoint = endpoint or moto_endpoint
        store = S3Store(bucket_name or bucket, endpoint_url=endpoint, path_style=True, temp_dir=spool_dir, **options)
        if retry_attempts is not None:
            store.retry_attempts = retry_attempts
        client = await aiohttp_client(create_app(config or Config(), store=store, locker=locker))
        return Server(client, store)

    return start


def assert_no_temp_files(spool_dir: str) -> None:
    assert os.listdir(spool_dir) == []


# -- write path ------------------------------------------------------------------------------


async def test_part_tails_across_patch_sizes_are_byte_exact(serve, s3, spool_dir):
    sizes = [1, 1000, 5 * MiB - 1, 5 * MiB, 3, 5 * MiB + 1, 11 * MiB, 7, 6 * MiB, 12 * MiB + 5, 2]
    data = payload(sum(sizes), seed=1)
    server = await serve()
    upload_id = await server.create(len(data))
    offset = 0
    for size in sizes:
        assert await server.patch(upload_id, offset, data[offset : offset + size]) == offset + size
        offset += size
        assert await server.offset(upload_id) == offset
        assert_no_temp_files(spool_dir)
        if offset < len(data):
            parts = s3.parts(upload_id)
            assert [p["PartNumber"] for p in parts] == list(range(1, len(parts) + 1))
            assert all(p["Size"] >= 5 * MiB for p in parts)
            in_parts = sum(p["Size"] for p in parts)
            assert s3.tail(upload_id) == data[in_parts:offset]  # the rest is the tail, exactly
    s3.assert_object(upload_id, data)
    assert set(s3.keys()) == {upload_id, f"{upload_id}.info"}
    info = json.loads(s3.get(f"{upload_id}.info"))
    assert info["finished"] is True and info["length"] == len(data)


async def test_more_than_1000_parts(aiohttp_client, spool_dir):
    proc, endpoint = start_moto(env={"S3_UPLOAD_PART_MIN_SIZE": "4096"})
    try:
        name = make_bucket(endpoint)
        store = S3Store(
            name, endpoint_url=endpoint, path_style=True, temp_dir=spool_dir, min_part_size=4096, part_size=4096
        )
        server = Server(await aiohttp_client(create_app(Config(), store=store)), store)
        data = payload(1006 * 4096 + 100, seed=2)
        upload_id = await server.create(len(data))
        offset = 0
        for size in [1000 * 4096 + 7, 3 * 4096, 4096 - 7, 2 * 4096 + 100]:
            assert await server.patch(upload_id, offset, data[offset : offset + size]) == offset + size
            offset += size
            assert await server.offset(upload_id) == offset
            if offset == 1004 * 4096:  # unfinished: the offset came from ListParts past 1000
                assert len(Bucket(endpoint, name).parts(upload_id)) == 1004
        bucket = Bucket(endpoint, name)
        bucket.assert_object(upload_id, data)
        assert_no_temp_files(spool_dir)
    finally:
        stop_process(proc)


async def test_deferred_length_finished_by_a_patch_carrying_upload_length(serve, s3):
    data = payload(13 * MiB + 11, seed=3)
    server = await serve()
    upload_id = await server.create(None)
    assert await server.patch(upload_id, 0, data[: 7 * MiB]) == 7 * MiB
    assert await server.patch(upload_id, 7 * MiB, data[7 * MiB : 8 * MiB]) == 8 * MiB
    headers = await server.head(upload_id)
    assert headers["Upload-Defer-Length"] == "1" and "Upload-Length" not in headers
    rest = data[8 * MiB :]
    assert await server.patch(upload_id, 8 * MiB, rest, Upload_Length=str(len(data))) == len(data)
    headers = await server.head(upload_id)
    assert headers["Upload-Length"] == str(len(data)) and headers["Upload-Offset"] == str(len(data))
    s3.assert_object(upload_id, data)


async def test_deferred_length_set_by_an_empty_patch_completes_the_tail(serve, s3):
    data = payload(6 * MiB + 3, seed=4)
    server = await serve()
    upload_id = await server.create(None)
    assert await server.patch(upload_id, 0, data) == len(data)
    assert await server.patch(upload_id, len(data), b"", Upload_Length=str(len(data))) == len(data)
    s3.assert_object(upload_id, data)


async def test_client_disconnect_mid_part_keeps_every_byte_and_resumes(serve, s3, spool_dir):
    data = payload(20 * MiB, seed=5)
    server = await serve()
    upload_id = await server.create(len(data))
    sent = 9 * MiB + 12345  # one full 6 MiB part plus a tail
    await server.drop_mid_patch(upload_id, 0, data[:sent], announced=len(data))
    assert await server.offset(upload_id) == sent
    assert_no_temp_files(spool_dir)
    assert [p["Size"] for p in s3.parts(upload_id)] == [6 * MiB]
    assert s3.tail(upload_id) == data[6 * MiB : sent]
    await server.drop_mid_patch(upload_id, sent, data[sent : sent + 100], announced=len(data) - sent)
    sent += 100
    assert await server.offset(upload_id) == sent
    assert await server.patch(upload_id, sent, data[sent:]) == len(data)
    s3.assert_object(upload_id, data)
    assert_no_temp_files(spool_dir)


async def test_restart_between_patches_continues_from_s3(serve, s3):
    data = payload(15 * MiB + 1, seed=6)
    first = await serve()
    upload_id = await first.create(len(data), Upload_Metadata=f"filename {b64('a.bin')}")
    assert await first.patch(upload_id, 0, data[: 8 * MiB]) == 8 * MiB
    await first.client.close()  # the server goes away, and its store with it
    second = await serve()
    assert await second.offset(upload_id) == 8 * MiB
    assert await second.patch(upload_id, 8 * MiB, data[8 * MiB :]) == len(data)
    s3.assert_object(upload_id, data)


async def test_two_instances_take_alternate_patches(serve, s3):
    """Each PATCH lands on the instance that did not answer the HEAD before it. They share
    their lock service, as instances must (Redis); each trusts the state it read only while
    nobody took the lock since, and none of those states is current when it PATCHes."""
    data = payload(17 * MiB + 9, seed=7)
    locker = MemoryLocker()
    one, two = await serve(locker=locker), await serve(locker=locker)
    upload_id = await one.create(len(data))
    cuts = [0, 3 * MiB, 7 * MiB, 7 * MiB + 1, 14 * MiB, len(data)]
    for i, (start, end) in enumerate(zip(cuts, cuts[1:], strict=False)):
        server = (one, two)[i % 2]
        other = (one, two)[(i + 1) % 2]
        assert await other.offset(upload_id) == start
        assert await server.patch(upload_id, start, data[start:end]) == end
    assert await one.offset(upload_id) == len(data) and await two.offset(upload_id) == len(data)
    s3.assert_object(upload_id, data)


@pytest.mark.parametrize("locks", ["memory", "files"])
async def test_a_kept_state_is_trusted_only_while_nobody_took_the_lock(serve, s3, tmp_path, locks):
    """A HEAD, or the PATCH after a creation, costs no S3 call when the state this instance
    read or wrote is current; once another instance took the lock, S3 is read again. With
    "files", each instance has its own FileLocker over one directory, as each process of
    --workers has."""
    if locks == "memory":
        locker = MemoryLocker()
        one, two = await serve(locker=locker), await serve(locker=locker)
    else:
        one = await serve(locker=FileLocker(str(tmp_path / "locks")))
        two = await serve(locker=FileLocker(str(tmp_path / "locks")))
    data = payload(3 * MiB, seed=34)
    upload_id = await one.create(len(data))
    calls = record_calls(one.store)
    assert await one.offset(upload_id) == 0
    assert calls == []  # what its creation wrote
    assert await two.patch(upload_id, 0, data[:MiB]) == MiB
    assert await one.offset(upload_id) == MiB  # not the 0 it kept
    assert calls == ["GetObject", "ListObjectsV2"]  # .info says the upload has a tail chunk
    calls.clear()
    assert await one.offset(upload_id) == MiB
    assert calls == []
    assert await one.patch(upload_id, MiB, data[MiB:]) == len(data)
    calls = record_calls(two.store)
    assert await two.offset(upload_id) == len(data)
    assert calls == ["GetObject"]  # finished: `.info` alone
    assert await two.offset(upload_id) == len(data)
    assert calls == ["GetObject"]
    s3.assert_object(upload_id, data)


async def test_heads_at_once_read_a_state_that_is_not_kept_once(serve, s3):
    server = await serve()
    data = payload(MiB, seed=36)
    upload_id = await server.create(2 * len(data))
    assert await server.patch(upload_id, 0, data) == len(data)  # a change: nothing kept
    calls = record_calls(server.store)
    offsets = await asyncio.gather(*(server.offset(upload_id) for _ in range(16)))
    assert offsets == [len(data)] * 16
    assert calls == ["GetObject", "ListObjectsV2"]  # one read, that the other 15 waited for


async def test_kept_states_are_bounded_in_number_and_parts(serve, s3, monkeypatch):
    monkeypatch.setattr(s3_module, "KNOWN_STATES", 3)
    monkeypatch.setattr(s3_module, "KNOWN_STATE_PARTS", 1)
    server = await serve(part_size=5 * MiB)
    ids = [await server.create(10) for _ in range(5)]
    assert list(server.store._known) == ids[2:]  # the 3 newest
    calls = record_calls(server.store)
    assert await server.offset(ids[0]) == 0 and calls == ["GetObject"]  # forgotten: read
    calls.clear()
    assert await server.offset(ids[4]) == 0 and calls == []
    data = payload(11 * MiB, seed=35)
    upload_id = await server.create(len(data))
    assert await server.patch(upload_id, 0, data[: 10 * MiB]) == 10 * MiB  # 2 parts
    for _ in range(2):  # a state of more parts than kept: read each time
        calls.clear()
        assert await server.offset(upload_id) == 10 * MiB
        assert "ListParts" in calls
    assert upload_id not in server.store._known and len(server.store._known) <= 3


async def test_uniform_parts_are_all_the_same_size(serve, s3):
    data = payload(20 * MiB + 5, seed=8)
    server = await serve(uniform_parts=True, part_size=5 * MiB)
    upload_id = await server.create(len(data))
    offset = 0
    for size in [7 * MiB, 1, 6 * MiB - 1, 2 * MiB, 5 * MiB + 5]:
        assert await server.patch(upload_id, offset, data[offset : offset + size]) == offset + size
        offset += size
        if offset < len(data):
            assert {p["Size"] for p in s3.parts(upload_id)} <= {5 * MiB}
    s3.assert_object(upload_id, data)
    head = s3.head(upload_id)
    assert head["ContentLength"] == len(data) and head["ETag"].endswith('-5"')


async def test_parts_in_flight_are_bounded_and_reading_waits_for_them(moto_endpoint, bucket, spool_dir, s3):
    proxy = S3Proxy(moto_endpoint)
    await proxy.start()
    store = S3Store(
        bucket,
        endpoint_url=proxy.url,
        path_style=True,
        temp_dir=spool_dir,
        part_size=5 * MiB,
        upload_concurrency=2,
    )
    await store.start()
    try:
        proxy.hold = 0.2
        info = UploadInfo(new_upload_id(), 40 * MiB)
        await store.create(info)
        data = payload(40 * MiB, seed=9)
        yielded = 0

        async def body():
            nonlocal yielded
            for i in range(0, len(data), 256 * 1024):
                yielded += 256 * 1024
                yield data[i : i + 256 * 1024]

        proxy.on_part = lambda number: proxy.read_ahead.append(yielded - number * 5 * MiB)
        assert await store.append(info, body()) == len(data)
        assert proxy.max_in_flight == 2
        # While part n is sent, at most the next part (in flight) and one more being filled are read.
        assert max(proxy.read_ahead) <= 2 * 5 * MiB
        await store.finish(info)
        s3.assert_object(info.id, data)
    finally:
        await store.close()
        await proxy.stop()


# -- failures --------------------------------------------------------------------------------


class S3Proxy:
    """A tiny HTTP proxy in front of moto that can fail or hold UploadPart requests."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.fail_parts = 0  # fail this many UploadPart requests (-1: all, until reset)
        self.hold = 0.0  # seconds to hold each UploadPart before forwarding it
        self.part_headers: list[dict[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.read_ahead: list[int] = []
        self.on_part = None
        self.url = ""
        self.bytes_up = 0  # request bodies sent to S3
        self.bytes_down = 0  # response bodies received from S3

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.bytes_up += len(body)
        is_part = (
            request.method == "PUT"
            and "partNumber" in request.query
            and "x-amz-copy-source" not in request.headers
        )
        if is_part:
            self.part_headers.append(dict(request.headers))
            if self.on_part is not None:
                self.on_part(int(request.query["partNumber"]))
            if self.fail_parts:
                self.fail_parts -= 1 if self.fail_parts > 0 else 0
                error = "<Error><Code>InternalError</Code><Message>injected</Message></Error>"
                return web.Response(status=500, text=error, content_type="application/xml")
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            await asyncio.sleep(self.hold)
        try:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "transfer-encoding")}
            async with self.session.request(
                request.method, self.upstream + request.path_qs, headers=headers, data=body
            ) as resp:
                content = await resp.read()
                self.bytes_down += len(content)
                skip = ("transfer-encoding", "content-encoding")
                out = {k: v for k, v in resp.headers.items() if k.lower() not in skip}
                return web.Response(status=resp.status, body=content, headers=out)
        finally:
            if is_part:
                self.in_flight -= 1

    async def start(self) -> None:
        self.session = ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        await self.runner.cleanup()
        await self.session.close()


@pytest.fixture
async def proxy(moto_endpoint):
    proxy = S3Proxy(moto_endpoint)
    await proxy.start()
    yield proxy
    await proxy.stop()


async def test_part_bodies_are_plain_not_aws_chunked(serve, proxy, s3):
    data = payload(13 * MiB, seed=10)
    server = await serve(endpoint=proxy.url)
    upload_id = await server.create(len(data))
    assert await server.patch(upload_id, 0, data) == len(data)
    assert len(proxy.part_headers) == 3
    for headers in proxy.part_headers:
        lowered = {k.lower(): v for k, v in headers.items()}
        assert "aws-chunked" not in lowered.get("content-encoding", "")
        assert not lowered.get("x-amz-content-sha256", "").startswith("STREAMING")
        assert "x-amz-decoded-content-length" not in lowered
    s3.assert_object(upload_id, data)


async def test_transient_upload_part_errors_are_retried_from_the_temp_file(serve, proxy, s3, spool_dir):
    data = payload(13 * MiB, seed=11)
    server = await serve(endpoint=proxy.url)
    upload_id = await server.create(len(data))
    proxy.fail_parts = 2
    assert await server.patch(upload_id, 0, data) == len(data)
    assert proxy.fail_parts == 0 and len(proxy.part_headers) == 5
    s3.assert_object(upload_id, data)
    assert_no_temp_files(spool_dir)


async def test_s3_down_during_upload_part_is_503_then_resumes_from_stored_bytes(serve, proxy, s3, spool_dir):
    data = payload(26 * MiB + 3, seed=12)
    server = await serve(endpoint=proxy.url, retry_attempts=2)  # S3 stays down: fail after one retry
    upload_id = await server.create(len(data))
    assert await server.patch(upload_id, 0, data[: 8 * MiB]) == 8 * MiB  # part 1 + a 2 MiB .part
    proxy.fail_parts = -1
    await server.patch(upload_id, 8 * MiB, data[8 * MiB : 20 * MiB], expect=503)
    # Nothing of the failed PATCH is stored; the old .part is still the tail.
    assert await server.offset(upload_id) == 8 * MiB
    assert s3.tail(upload_id) == data[6 * MiB : 8 * MiB]
    assert_no_temp_files(spool_dir)
    proxy.fail_parts = 0
    assert await server.patch(upload_id, 8 * MiB, data[8 * MiB :]) == len(data)
    s3.assert_object(upload_id, data)
    assert_no_temp_files(spool_dir)


async def test_cancelled_append_keeps_received_bytes_and_removes_temp_files(moto_endpoint, bucket, spool_dir, s3):
    store = S3Store(bucket, endpoint_url=moto_endpoint, path_style=True, temp_dir=spool_dir, part_size=5 * MiB)
    await store.start()
    try:
        data = payload(7 * MiB + 5, seed=13)
        info = UploadInfo(new_upload_id(), 10 * MiB)
        await store.create(info)
        received = asyncio.Event()

        async def body():
            for i in range(0, len(data), 1 * MiB):
                yield data[i : i + 1 * MiB]
            received.set()
            await asyncio.Event().wait()  # the client stalls

        task = asyncio.ensure_future(store.append(info, body()))
        await received.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(500):  # the shielded flush finishes in the background
            if (await store.get_info(info.id)).offset == len(data) and not os.listdir(spool_dir):
                break
            await asyncio.sleep(0.02)
        assert (await store.get_info(info.id)).offset == len(data)
        assert s3.tail(info.id) == data[5 * MiB :]
        assert_no_temp_files(spool_dir)
    finally:
        await store.close()


async def test_checksum_mismatch_leaves_parts_and_tail_untouched(serve, s3, spool_dir):
    data = payload(8 * MiB, seed=14)
    server = await serve()
    upload_id = await server.create(20 * MiB)
    assert await server.patch(upload_id, 0, data) == 8 * MiB
    before = (s3.parts(upload_id), s3.chunks(upload_id), s3.tail(upload_id))
    assert before[2] == data[6 * MiB :]
    wrong = base64.b64encode(hashlib.sha1(b"something else").digest()).decode()
    body = payload(7 * MiB, seed=15)
    await server.patch(upload_id, 8 * MiB, body, expect=460, Upload_Checksum=f"sha1 {wrong}")
    after = (s3.parts(upload_id), s3.chunks(upload_id), s3.tail(upload_id))
    assert after == before
    assert await server.offset(upload_id) == 8 * MiB
    assert_no_temp_files(spool_dir)
    right = base64.b64encode(hashlib.sha1(body).digest()).decode()
    assert await server.patch(upload_id, 8 * MiB, body, Upload_Checksum=f"sha1 {right}") == 15 * MiB


# -- finish, download, delete --------------------------------------------------------------


async def test_zero_byte_upload_is_an_empty_object_with_its_type(serve, s3):
    server = await serve()
    upload_id = await server.create(0, Upload_Metadata=f"filetype {b64('text/plain')}")
    assert (await server.head(upload_id))["Upload-Offset"] == "0"
    assert s3.get(upload_id) == b""
    assert s3.head(upload_id)["ContentType"] == "text/plain"
    assert s3.multipart_uploads() == []
    async with server.client.get(f"/{upload_id}") as resp:
        assert resp.status == 200 and await resp.read() == b""


async def test_small_upload_in_the_creation_request(serve, s3, spool_dir):
    data = b"hello, S3"
    server = await serve()
    headers = {**TUS, "Upload-Length": str(len(data)), "Content-Type": OCTETS}
    async with server.client.post("/", headers=headers, data=data) as resp:
        assert resp.status == 201 and resp.headers["Upload-Offset"] == str(len(data))
        upload_id = URL(resp.headers["Location"]).path.rsplit("/", 1)[1]
    s3.assert_object(upload_id, data)
    assert_no_temp_files(spool_dir)


def record_calls(store: S3Store) -> list[str]:
    """The S3 operations `store` makes from now on, in the order they start."""
    calls: list[str] = []
    store.client.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    return calls


async def test_only_an_upload_that_had_a_tail_chunk_is_listed(serve, s3):
    """`.info` says whether a tail chunk was ever written: HEADs of other uploads cost one GET."""
    data = payload(300 * 1024, seed=31)
    server = await serve()
    upload_id = await server.create(len(data))
    fresh = await serve()  # reads S3: it did not write the state itself
    calls = record_calls(fresh.store)
    assert await fresh.offset(upload_id) == 0
    assert calls == ["GetObject"]
    assert await server.patch(upload_id, 0, data[:1000]) == 1000  # too short for a part: a chunk
    assert json.loads(s3.get(f"{upload_id}.info"))["storage"]["tails"] is True
    other = await serve()  # knows nothing of the upload: `.info` alone tells it to list
    calls = record_calls(other.store)
    assert await other.offset(upload_id) == 1000
    assert sorted(calls) == ["GetObject", "ListObjectsV2"]
    # `.info` written before the flag existed: the chunks are listed.
    info = json.loads(s3.get(f"{upload_id}.info"))
    del info["storage"]["tails"]
    s3.s3.put_object(Bucket=s3.name, Key=f"{upload_id}.info", Body=json.dumps(info).encode())
    assert await (await serve()).offset(upload_id) == 1000
    assert await other.patch(upload_id, 1000, data[1000:]) == len(data)
    s3.assert_object(upload_id, data)


async def test_small_upload_in_one_patch_is_one_put_object_without_multipart(serve, s3, spool_dir):
    data = payload(256 * 1024, seed=30)
    server = await serve()
    calls = record_calls(server.store)
    upload_id = await server.create(
        len(data), Upload_Metadata=f"filetype {b64('image/png')},filename {b64('café.png')}"
    )
    # The expiry index entry and .info only: no multipart upload at creation.
    assert calls == ["PutObject", "PutObject"]
    calls.clear()
    assert await server.patch(upload_id, 0, data) == len(data)
    # No state read (this instance wrote it at creation, and nobody took the lock since),
    # the object in one PutObject, .info finished, the index entry deleted.
    assert sorted(calls) == ["DeleteObject", "PutObject", "PutObject"]
    s3.assert_object(upload_id, data)
    head = s3.head(upload_id)
    assert head["ContentType"] == "image/png" and head["Metadata"] == {"filetype": "image/png", "filename": "caf??.png"}
    info = json.loads(s3.get(f"{upload_id}.info"))
    assert info["finished"] and "upload_id" not in info["storage"] and "object_stored" not in info["storage"]
    assert info["storage"]["etag"] == head["ETag"]
    assert_no_temp_files(spool_dir)


async def test_unfinished_upload_without_multipart_costs_two_calls_per_head(serve, s3):
    data = payload(3 * MiB, seed=31)
    server = await serve()
    upload_id = await server.create(len(data))
    await server.patch(upload_id, 0, data[: MiB + 7])  # kept as .part: no part, no multipart upload
    assert s3.multipart_uploads() == []
    calls = record_calls(server.store)
    assert await server.offset(upload_id) == MiB + 7
    assert sorted(calls) == ["GetObject", "ListObjectsV2"]
    calls.clear()
    assert await server.offset(upload_id) == MiB + 7
    assert calls == []  # nobody took the upload's lock since: the state read is current
    assert await server.patch(upload_id, MiB + 7, data[MiB + 7 :]) == len(data)
    # No state read (the HEAD's is current); the tail read back in front of the rest, all in
    # one PutObject; its chunk and the index entry deleted after .info.
    assert sorted(calls) == sorted(["DeleteObject", "DeleteObjects", "GetObject", "PutObject", "PutObject"])
    s3.assert_object(upload_id, data)


async def test_multipart_upload_is_created_with_the_first_part_and_survives_restarts(serve, s3, spool_dir):
    data = payload(20 * MiB + 9, seed=32)
    first = await serve()
    upload_id = await first.create(len(data))
    assert await first.patch(upload_id, 0, data[:MiB]) == MiB  # a tail: still no multipart upload
    assert s3.multipart_uploads() == [] and "upload_id" not in json.loads(s3.get(f"{upload_id}.info"))["storage"]
    await first.client.close()

    second = await serve()
    calls = record_calls(second.store)
    # tail + body: part 1 (6 MiB, the part size here) and a new 2 MiB tail
    assert await second.patch(upload_id, MiB, data[MiB : 8 * MiB]) == 8 * MiB
    # Created, then recorded in .info (PutObject), before its first part was sent.
    created = calls.index("CreateMultipartUpload")
    assert calls[created + 1] == "PutObject" and calls.index("UploadPart") > created + 1
    recorded = json.loads(s3.get(f"{upload_id}.info"))["storage"]["upload_id"]
    assert [(u["Key"], u["UploadId"]) for u in s3.multipart_uploads()] == [(upload_id, recorded)]
    assert [p["Size"] for p in s3.parts(upload_id)] == [6 * MiB]
    assert s3.tail(upload_id) == data[6 * MiB : 8 * MiB]
    await second.client.close()

    third = await serve()  # finds the multipart upload through .info alone
    assert await third.offset(upload_id) == 8 * MiB
    calls = record_calls(third.store)
    assert await third.patch(upload_id, 8 * MiB, data[8 * MiB :]) == len(data)
    # The HEAD's state is current (nobody took the lock since): no ListParts at all, and
    # finish() reuses the parts append() stored.
    assert calls.count("ListParts") == 0 and calls.count("CreateMultipartUpload") == 0
    s3.assert_object(upload_id, data)
    assert_no_temp_files(spool_dir)


async def test_a_patch_of_full_parts_completes_with_the_parts_it_stored(serve, s3):
    data = payload(13 * MiB, seed=33)
    server = await serve()
    upload_id = await server.create(len(data))
    calls = record_calls(server.store)
    assert await server.patch(upload_id, 0, data) == len(data)
    assert sorted(calls) == sorted(
        ["CreateMultipartUpload", "PutObject"]  # no state read: the creation's is current
        + ["UploadPart"] * 3
        + ["CompleteMultipartUpload", "PutObject", "DeleteObject"]
    )
    s3.assert_object(upload_id, data)


async def test_get_streams_with_range(serve, s3):
    data = payload(7 * MiB + 3, seed=16)
    server = await serve()
    upload_id = await server.create(len(data))
    await server.patch(upload_id, 0, data)
    async with server.client.get(f"/{upload_id}") as resp:
        assert resp.status == 200 and sha256(await resp.read()) == sha256(data)
        assert resp.headers["ETag"] == s3.head(upload_id)["ETag"]
    async with server.client.get(f"/{upload_id}", headers={"Range": "bytes=6291450-6291460"}) as resp:
        assert resp.status == 206 and await resp.read() == data[6291450:6291461]
        assert resp.headers["Content-Range"] == f"bytes 6291450-6291460/{len(data)}"
    async with server.client.get(f"/{upload_id}", headers={"Range": "bytes=-5"}) as resp:
        assert resp.status == 206 and await resp.read() == data[-5:]


async def test_delete_removes_every_key_and_is_idempotent(serve, s3):
    data = payload(8 * MiB, seed=17)
    server = await serve()
    upload_id = await server.create(20 * MiB)
    await server.patch(upload_id, 0, data)
    tail = f"{upload_id}.part.2.{6 * MiB}"  # 2 MiB in front of part 2, from offset 6 MiB
    assert set(s3.keys()) == {f"{upload_id}.info", tail, f".unfinished/{upload_id}"}
    assert len(s3.multipart_uploads()) == 1
    info = await server.store.get_info(upload_id)
    async with server.client.delete(f"/{upload_id}", headers=TUS) as resp:
        assert resp.status == 204
    assert s3.keys() == [] and s3.multipart_uploads() == []
    async with server.client.delete(f"/{upload_id}", headers=TUS) as resp:
        assert resp.status == 404
    await server.store.terminate(info)  # again, at the store: no error
    finished = await server.create(3)
    await server.patch(finished, 0, b"abc")
    async with server.client.delete(f"/{finished}", headers=TUS) as resp:
        assert resp.status == 204
    assert s3.keys() == []


async def test_info_has_the_disk_store_schema_and_metadata_stays_intact(serve, s3, tmp_path):
    metadata = f"filename {b64('résumé ✓.txt')},filetype {b64('text/plain')},empty"
    server = await serve()
    upload_id = await server.create(5, Upload_Metadata=metadata)
    assert (await server.head(upload_id))["Upload-Metadata"] == metadata
    await server.patch(upload_id, 0, b"12345")
    doc = json.loads(s3.get(f"{upload_id}.info"))
    disk = FileStore(str(tmp_path / "disk"))
    await disk.start()
    disk_info = UploadInfo(new_upload_id(), 5, {"a": "b"})
    await disk.create(disk_info)
    disk_doc = json.loads((tmp_path / "disk" / f"{disk_info.id}.info").read_bytes())
    assert set(doc) == set(disk_doc)
    assert doc["metadata"] == {"filename": "résumé ✓.txt", "filetype": "text/plain", "empty": None}
    assert UploadInfo.from_json(s3.get(f"{upload_id}.info")).metadata == doc["metadata"]
    head = s3.head(upload_id)
    assert head["ContentType"] == "text/plain"
    assert all(value.isascii() for value in head["Metadata"].values())
    assert (await server.head(upload_id))["Upload-Metadata"] == metadata


async def test_unknown_upload_is_404(serve):
    server = await serve()
    async with server.client.head("/0123456789abcdef0123456789abcdef", headers=TUS) as resp:
        assert resp.status == 404


# -- housekeeping ------------------------------------------------------------------------------


async def test_start_removes_spool_files_of_dead_processes(moto_endpoint, bucket, spool_dir):
    dead = os.path.join(spool_dir, f"{TEMP_PREFIX}999999999-abc")
    mine = os.path.join(spool_dir, f"{TEMP_PREFIX}{os.getpid()}-abc")
    other = os.path.join(spool_dir, "unrelated")
    for path in (dead, mine, other):
        open(path, "wb").close()
    store = S3Store(bucket, endpoint_url=moto_endpoint, path_style=True, temp_dir=spool_dir)
    await store.start()
    await store.close()
    assert sorted(os.listdir(spool_dir)) == sorted([os.path.basename(mine), "unrelated"])
    assert remove_stale_spools(spool_dir) == 0


async def test_clean_orphans_aborts_uploads_without_info(moto_endpoint, bucket, s3, spool_dir):
    store = S3Store(bucket, prefix="tus/", endpoint_url=moto_endpoint, path_style=True, temp_dir=spool_dir)
    await store.start()
    try:
        kept = UploadInfo(new_upload_id(), 10)
        await store.create(kept)
        recorded = await store._start_upload(kept)  # as a PATCH does when its first part is ready
        # A crash between creating a multipart upload and recording it in `.info`.
        unrecorded = s3.s3.create_multipart_upload(Bucket=bucket, Key=f"tus/{kept.id}")["UploadId"]
        orphan = new_upload_id()
        s3.s3.create_multipart_upload(Bucket=bucket, Key=f"tus/{orphan}")
        s3.s3.put_object(Bucket=bucket, Key=f"tus/{orphan}.part", Body=b"x", Metadata={"tus-next-part": "1"})
        # Another application's object named like a tail, without our metadata: not ours.
        s3.s3.put_object(Bucket=bucket, Key=f"tus/{new_upload_id()}.part", Body=b"theirs")
        foreign = sorted(k for k in s3.keys() if k.endswith(".part") and orphan not in k)
        assert await store.clean_orphans(time.time() + 60) == 3
        assert [(u["Key"], u["UploadId"]) for u in s3.multipart_uploads()] == [(f"tus/{kept.id}", recorded)]
        assert recorded != unrecorded
        assert s3.keys() == sorted([f"tus/{kept.id}.info", f"tus/.unfinished/{kept.id}"] + foreign)
        # Younger than the cut-off: kept. (moto reports a fixed Initiated date for
        # multipart uploads, so only the .part object's age can be checked here.)
        s3.s3.put_object(Bucket=bucket, Key=f"tus/{orphan}.part", Body=b"x", Metadata={"tus-next-part": "1"})
        assert await store.clean_orphans(time.time() - 3600) == 0
        assert f"tus/{orphan}.part" in s3.keys()
        assert [i async for i in store.list_uploads()] == [kept.id]
    finally:
        await store.close()


async def test_orphan_cleanup_needs_a_prefix_or_a_dedicated_bucket(moto_endpoint, bucket, s3, spool_dir, caplog):
    """With an empty s3_prefix on a bucket that may be shared, other applications'
    multipart uploads and objects named like ours are never touched (M12)."""
    theirs = s3.s3.create_multipart_upload(Bucket=bucket, Key="backup-2024")["UploadId"]
    s3.s3.put_object(Bucket=bucket, Key="report.part", Body=b"x", Metadata={"tus-next-part": "1"})
    shared = S3Store(bucket, endpoint_url=moto_endpoint, path_style=True, temp_dir=spool_dir)
    await shared.start()
    try:
        assert await shared.clean_orphans(time.time() + 60) == 0
    finally:
        await shared.close()
    assert "set s3_prefix, or s3_dedicated_bucket = true" in caplog.text
    assert [u["UploadId"] for u in s3.multipart_uploads()] == [theirs]
    assert s3.keys() == ["report.part"]
    dedicated = S3Store(bucket, endpoint_url=moto_endpoint, path_style=True, temp_dir=spool_dir, dedicated_bucket=True)
    await dedicated.start()
    try:  # the operator said the bucket is ours alone
        assert await dedicated.clean_orphans(time.time() + 60) == 2
    finally:
        await dedicated.close()
    assert s3.multipart_uploads() == [] and s3.keys() == []


async def upload_partials(server, pieces: list[bytes]) -> list[str]:
    """One finished partial upload per piece; their ids."""
    ids = []
    for piece in pieces:
        upload_id = await server.create(len(piece), Upload_Concat="partial")
        if piece:
            await server.patch(upload_id, 0, piece)
        ids.append(upload_id)
    return ids


async def create_final(server, ids: list[str]) -> str:
    """The id of a final upload of `ids`, created with 201."""
    headers = {**TUS, "Upload-Concat": "final;" + " ".join(f"/{i}" for i in ids)}
    async with server.client.post("/", headers=headers) as resp:
        assert resp.status == 201, await resp.text()
        return URL(resp.headers["Location"]).path.rsplit("/", 1)[1]

async def test_concatenation_mixes_part_copies_and_streamed_small_partials(serve, s3, spool_dir):
    server = await serve()
    pieces = [payload(6 * MiB, seed=20), b"ab", payload(5 * MiB, seed=21), payload(3, seed=22), b"z"]
    ids = await upload_partials(server, pieces)
    final = await create_final(server, ids)
    s3.assert_object(final, b"".join(pieces))
    for upload_id, piece in zip(ids, pieces, strict=True):
        assert s3.get(upload_id) == piece
    assert_no_temp_files(spool_dir)


# -- part sizing -------------------------------------------------------------------------------


def count_parts(
    length: int | None, total: int, patch: int, preferred: int = 16 * MiB, max_parts: int = MAX_PARTS
) -> int:
    """Simulate the store's cutting of `total` bytes sent in PATCHes of `patch` bytes."""
    parts, offset, tail = 0, 0, 0
    while offset + tail < total:
        body = min(patch, total - offset - tail)
        pending = tail + body
        while True:
            size, smallest = part_size_for(
                length=length,
                offset=offset,
                parts_used=parts,
                preferred=preferred,
                min_part=5 * MiB,
                max_parts=max_parts,
            )
            assert size <= MAX_PART_SIZE
            if pending < size:
                break
            parts, offset, pending = parts + 1, offset + size, pending - size
        if pending and (offset + pending == total or pending >= smallest):
            parts, offset, tail = parts + 1, offset + pending, 0
        else:
            tail = pending
    return parts


def test_part_sizes_keep_the_largest_uploads_within_10000_parts():
    assert count_parts(MAX_OBJECT_SIZE, MAX_OBJECT_SIZE, 64 * 1024 * MiB) <= MAX_PARTS
    assert count_parts(None, MAX_OBJECT_SIZE, 64 * 1024 * MiB) <= MAX_PARTS
    assert count_parts(None, MAX_OBJECT_SIZE, 100 * MiB) <= MAX_PARTS  # smaller PATCHes, deferred
    assert count_parts(1 << 30, 1 << 30, 1 << 30) == 64  # the preferred 16 MiB when it fits
    assert part_size_for(length=None, offset=0, parts_used=0, preferred=16 * MiB, min_part=5 * MiB) == (
        16 * MiB,
        5 * MiB,
    )
    assert uniform_part_size(MAX_OBJECT_SIZE, 16 * MiB, 5 * MiB) * MAX_PARTS >= MAX_OBJECT_SIZE
    # Without a length, the preferred size: `.part` (re-read by every PATCH) stays below it.
    assert uniform_part_size(None, 16 * MiB, 5 * MiB) == 16 * MiB
    assert uniform_part_size(100 * MiB, 16 * MiB, 5 * MiB) == 16 * MiB


def test_uniform_ranges_cut_the_concatenation_into_equal_parts():
    assert uniform_ranges([], 5) == []
    assert uniform_ranges([0, 0], 5) == []
    assert uniform_ranges([5], 5) == [[(0, 0, 5)]]
    assert uniform_ranges([12], 5) == [[(0, 0, 5)], [(0, 5, 10)], [(0, 10, 12)]]
    assert uniform_ranges([7, 0, 2, 9], 5) == [
        [(0, 0, 5)],
        [(0, 5, 7), (2, 0, 2), (3, 0, 1)],
        [(3, 1, 6)],
        [(3, 6, 9)],
    ]


# -- uniform parts (Cloudflare R2): concatenation and deferred length ---------------------------


def object_part_sizes(s3: Bucket, key: str) -> list[int]:
    """The size of each part of a completed multipart object (HeadObject with PartNumber)."""
    count = s3.s3.head_object(Bucket=s3.name, Key=key, PartNumber=1).get("PartsCount", 1)
    return [s3.s3.head_object(Bucket=s3.name, Key=key, PartNumber=n)["ContentLength"] for n in range(1, count + 1)]


async def test_concatenation_with_uniform_parts_is_byte_exact_with_equal_parts(serve, s3, spool_dir):
    server = await serve(uniform_parts=True, part_size=5 * MiB)
    calls: list[str] = []
    for operation in ("UploadPart", "UploadPartCopy"):
        server.store.client.meta.events.register(
            f"provide-client-params.s3.{operation}", lambda params, op=operation, **kw: calls.append(op)
        )
    # Parts: [A 0-5M) copied; [A 5M-6M+1, B, C 0-4M-3) streamed; [C 4M-3..9M-3) copied from
    # the middle of C; [C 9M-3..12M, D, E) streamed, the shorter last part.
    pieces = [payload(6 * MiB + 1, seed=30), b"ab", payload(12 * MiB, seed=31), payload(3, seed=32), b"z"]
    ids = await upload_partials(server, pieces)
    calls.clear()
    final = await create_final(server, ids)
    data = b"".join(pieces)
    s3.assert_object(final, data)
    assert object_part_sizes(s3, final) == [5 * MiB, 5 * MiB, 5 * MiB, len(data) - 15 * MiB]
    assert sorted(calls) == ["UploadPart", "UploadPart", "UploadPartCopy", "UploadPartCopy"]
    assert_no_temp_files(spool_dir)
    assert (await server.head(final))["Upload-Length"] == str(len(data))


async def test_concatenation_with_uniform_parts_of_partials_smaller_than_a_part(serve, s3, spool_dir):
    server = await serve(uniform_parts=True, part_size=5 * MiB)
    pieces = [payload(3 * MiB, seed=33), payload(3 * MiB, seed=34), payload(3 * MiB, seed=35), b""]
    ids = await upload_partials(server, pieces)
    final = await create_final(server, ids)
    s3.assert_object(final, b"".join(pieces))
    assert object_part_sizes(s3, final) == [5 * MiB, 4 * MiB]
    assert_no_temp_files(spool_dir)


async def test_deferred_length_with_uniform_parts_moves_linear_bytes(serve, proxy, s3, spool_dir):
    part_size, chunk, patches = 6 * MiB, 5 * MiB, 12
    data = payload(chunk * patches, seed=36)
    server = await serve(endpoint=proxy.url, uniform_parts=True, part_size=part_size)
    upload_id = await server.create(None)
    proxy.bytes_up = proxy.bytes_down = 0
    for n in range(patches):
        extra = {"Upload_Length": str(len(data))} if n == patches - 1 else {}
        if extra:  # before the last PATCH: every part so far is exactly one part size
            sizes = [p["Size"] for p in s3.parts(upload_id)]
            assert sizes and set(sizes) == {part_size}
        assert await server.patch(upload_id, n * chunk, data[n * chunk : (n + 1) * chunk], **extra) == (n + 1) * chunk
    s3.assert_object(upload_id, data)
    moved = proxy.bytes_up + proxy.bytes_down
    # Each PATCH sends its body and re-reads and re-writes at most one part's worth of
    # `.part`: linear in the bytes. A part sized for 5 TiB kept every byte in `.part`,
    # re-read on each PATCH: 12 times the data here (2 times now).
    assert moved <= len(data) + 2 * part_size * patches, moved / len(data)
    assert_no_temp_files(spool_dir)


async def test_deferred_length_with_uniform_parts_resizes_parts_until_the_first_is_sent(serve, s3):
    server = await serve(uniform_parts=True, part_size=5 * MiB, config=Config(max_size=None))  # 60 GiB is allowed
    upload_id = await server.create(None)
    assert json.loads(s3.get(f"{upload_id}.info"))["storage"]["part_size"] == 5 * MiB
    # 60 GiB needs parts of 6,442,451 bytes to stay within 10,000 parts; no part is sent yet.
    await server.patch(upload_id, 0, b"x" * 100, Upload_Length=str(60 << 30))
    storage = json.loads(s3.get(f"{upload_id}.info"))["storage"]
    assert storage["part_size"] == -(-(60 << 30) // MAX_PARTS) == 6_442_451
    assert await server.offset(upload_id) == 100

    # Once a part is sent, the size stays: a length beyond 10,000 parts of it is refused.
    other = await server.create(None)
    data = payload(6 * MiB, seed=37)
    assert await server.patch(other, 0, data) == len(data)
    assert [p["Size"] for p in s3.parts(other)] == [5 * MiB]
    before = s3.get(f"{other}.info")
    await server.patch(other, len(data), b"", expect=413, Upload_Length=str(5 * MiB * MAX_PARTS + 1))
    assert s3.get(f"{other}.info") == before
    assert await server.patch(other, len(data), b"", Upload_Length=str(5 * MiB * MAX_PARTS)) == len(data)
