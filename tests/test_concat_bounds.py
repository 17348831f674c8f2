"""Concatenation is bounded (issue 12), over real HTTP on both stores: each partial named
once, at most `max_concat_partials`, the final's size checked before any byte is copied
(also when lengths are deferred), at most `max_finals_per_partial` finals per partial,
finals completed by a bounded background worker, and a HEAD of an unfinished final that
reads only the final."""

from __future__ import annotations

import asyncio
import os

import boto3
import pytest
from yarl import URL

from tests.tus_client import TUS, create, download, head, patch, sha256
from tusserver import Config, create_app
from tusserver.app import HANDLERS_KEY
from tusserver.finals import FinalWorker

MiB = 1 << 20
KiB = 1 << 10
PATIENCE = 30  # seconds; a bound against hanging, not a timing assertion


# -- helpers -----------------------------------------------------------------------------------


class Stored:
    """What the storage under a test holds, read directly (disk directory or S3 bucket)."""

    def __init__(self, store_factory, store) -> None:
        self.store = store
        self.bucket = getattr(store_factory, "bucket", None)
        if self.bucket is not None:
            self.s3 = boto3.client("s3", endpoint_url=store_factory.endpoint, region_name="us-east-1")

    def data(self) -> dict[str, int]:
        """Upload id -> bytes stored for it (data file; S3 object, .part and multipart parts)."""
        if self.bucket is None:
            directory = self.store.directory
            names = os.listdir(directory) if os.path.isdir(directory) else []
            return {n: os.path.getsize(os.path.join(directory, n)) for n in names if "." not in n}
        held: dict[str, int] = {}
        for obj in self.s3.list_objects_v2(Bucket=self.bucket).get("Contents", []):
            name, _, suffix = obj["Key"].partition(".")
            if suffix in ("", "part"):
                held[name] = held.get(name, 0) + obj["Size"]
        for upload in self.s3.list_multipart_uploads(Bucket=self.bucket).get("Uploads", []):
            parts = self.s3.list_parts(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            held[upload["Key"]] = held.get(upload["Key"], 0) + sum(p["Size"] for p in parts.get("Parts", []))
        return held

    def uploads(self) -> set[str]:
        if self.bucket is None:
            return {n[: -len(".info")] for n in os.listdir(self.store.directory) if n.endswith(".info")}
        keys = [o["Key"] for o in self.s3.list_objects_v2(Bucket=self.bucket).get("Contents", [])]
        return {k[: -len(".info")] for k in keys if k.endswith(".info")}

    def total(self) -> int:
        return sum(self.data().values())


class CountingStore:
    """A store that counts get_info calls (each one or more storage reads) and can hold
    concatenations until released."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.reads = 0
        self.release = asyncio.Event()
        self.release.set()
        self.concatenating = asyncio.Event()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def get_info(self, upload_id):
        self.reads += 1
        return await self.inner.get_info(upload_id)

    async def concatenate(self, final, partials):
        self.concatenating.set()
        await asyncio.wait_for(self.release.wait(), PATIENCE)
        return await self.inner.concatenate(final, partials)


@pytest.fixture
def server(aiohttp_client, store_factory):
    async def start(config: Config | None = None, store=None, **kw):
        store = store or store_factory()
        client = await aiohttp_client(create_app(config or Config(), store=store, **kw))
        client.stored = Stored(store_factory, store.inner if isinstance(store, CountingStore) else store)
        return client

    return start


def worker(client) -> FinalWorker:
    return client.app[HANDLERS_KEY].finals


async def upload_partial(client, data: bytes, **headers: str) -> str:
    path = await create(client, len(data), Upload_Concat="partial", **headers)
    if data:
        await patch(client, path, 0, data)
    return path


async def post_final(client, *paths: str, **headers: str):
    h = {**TUS, "Upload-Concat": "final;" + " ".join(paths)}
    h.update({k.replace("_", "-"): v for k, v in headers.items()})
    return await client.post("/", headers=h)


def id_of(resp_or_path) -> str:
    path = resp_or_path if isinstance(resp_or_path, str) else URL(resp_or_path.headers["Location"]).path
    return path.rsplit("/", 1)[1]


async def assert_refused(resp, status: int, text: str) -> None:
    assert resp.status == status, (resp.status, await resp.text())
    assert await resp.text() == text + "\n"
    assert "Location" not in resp.headers


# -- each partial once, at most max_concat_partials --------------------------------------------


async def test_a_final_naming_a_partial_50_times_is_400_and_stores_nothing(server):
    """The issue's row: one 1 MiB partial, then one final naming it 50 times (was 51 MiB stored)."""
    client = await server()
    data = os.urandom(MiB)
    partial = await upload_partial(client, data)
    before = client.stored.uploads()
    resp = await post_final(client, *[partial] * 50)
    await assert_refused(resp, 400, f"Upload-Concat names the same partial upload twice: {id_of(partial)}")
    assert client.stored.uploads() == before
    assert client.stored.data() == {id_of(partial): MiB}  # 1 byte stored per byte sent
    # An absolute URL and a path naming the same partial are the same partial.
    resp = await post_final(client, partial, str(client.make_url(partial)))
    assert resp.status == 400
    assert sha256(await download(client, partial)) == sha256(data)


async def test_more_partials_than_max_concat_partials_is_400_before_any_is_read(server):
    client = await server()
    # 101 ids that do not exist: refused for their number, not looked up (which would be 404).
    ids = [f"/{i:032x}" for i in range(101)]
    await assert_refused(
        await post_final(client, *ids),
        400,
        "Upload-Concat names more partial uploads than the server allows: at most 100",
    )
    assert (await post_final(client, *ids[:100])).status == 404  # at the limit: looked up


async def test_max_concat_partials_is_configurable_and_exact(server):
    client = await server(Config(max_concat_partials=3))
    pieces = [os.urandom(n) for n in (10, 20, 30, 40)]
    paths = [await upload_partial(client, p) for p in pieces]
    before = client.stored.uploads()
    await assert_refused(
        await post_final(client, *paths),
        400,
        "Upload-Concat names more partial uploads than the server allows: at most 3",
    )
    assert client.stored.uploads() == before
    resp = await post_final(client, *paths[1:])
    assert resp.status == 201
    assert sha256(await download(client, URL(resp.headers["Location"]).path)) == sha256(b"".join(pieces[1:]))


# -- the size limit, before anything is copied --------------------------------------------------


async def test_final_over_max_size_is_413_and_nothing_is_copied(server):
    client = await server(Config(max_size=MiB))
    a, b = os.urandom(600 * KiB), os.urandom(600 * KiB)
    pa, pb = await upload_partial(client, a), await upload_partial(client, b)
    before = client.stored.uploads()
    await assert_refused(
        await post_final(client, pa, pb),
        413,
        f"upload is larger than the server's maximum size: the partial uploads add up to {len(a) + len(b)} "
        f"bytes; limit is {MiB}",
    )
    assert client.stored.uploads() == before
    assert client.stored.total() == len(a) + len(b)
    resp = await post_final(client, pa)  # within the limit
    assert resp.status == 201
    assert sha256(await download(client, URL(resp.headers["Location"]).path)) == sha256(a)


async def test_final_over_the_embedders_max_size_for_is_413(server):
    client = await server(max_size_for=lambda request: int(request.headers.get("X-Plan-Limit", 1 << 40)))
    a, b = os.urandom(1000), os.urandom(1000)
    pa, pb = await upload_partial(client, a), await upload_partial(client, b)
    resp = await post_final(client, pa, pb, X_Plan_Limit="1999")
    assert resp.status == 413
    assert client.stored.total() == 2000
    resp = await post_final(client, pa, pb, X_Plan_Limit="2000")
    assert resp.status == 201
    assert await download(client, URL(resp.headers["Location"]).path) == a + b


async def test_deferred_partials_over_the_limit_of_creation_fail_the_final_without_copying(server):
    """The final's limit is the one of its POST (here the embedder's, from a header), kept in
    its .info and checked when the partials' lengths become known: 413, nothing copied."""
    client = await server(max_size_for=lambda request: int(request.headers.get("X-Plan-Limit", 1 << 40)))
    a, b = os.urandom(600 * KiB), os.urandom(600 * KiB)
    pa = await create(client, None, Upload_Concat="partial")
    pb = await create(client, None, Upload_Concat="partial")
    resp = await post_final(client, pa, pb, X_Plan_Limit=str(MiB))
    assert resp.status == 201, await resp.text()
    final = URL(resp.headers["Location"]).path
    await patch(client, pa, 0, a, Upload_Length=str(len(a)))  # each partial alone is within any limit
    await patch(client, pb, 0, b, Upload_Length=str(len(b)))
    await worker(client).drain()
    resp = await head(client, final)
    assert resp.status == 413
    assert "Upload-Offset" not in resp.headers
    resp = await client.get(final)
    assert resp.status == 413
    assert await resp.text() == (
        "the partial uploads add up to more than the limit that applied when this final upload was created; "
        "it will not be completed\n"
    )
    await patch(client, final, 0, b"x", expect=413)
    held = client.stored.data()
    assert held.pop(id_of(final), 0) == 0  # nothing copied (the disk store's empty data file at most)
    assert held == {id_of(pa): len(a), id_of(pb): len(b)}
    assert sha256(await download(client, pa)) == sha256(a)
    assert sha256(await download(client, pb)) == sha256(b)
    assert (await client.delete(final, headers=TUS)).status == 204


async def test_deferred_partials_within_the_limit_complete(server):
    client = await server(Config(max_size=MiB))
    a, b = os.urandom(300 * KiB), os.urandom(200 * KiB)
    pa = await create(client, None, Upload_Concat="partial")
    pb = await upload_partial(client, b)
    resp = await post_final(client, pa, pb)
    assert resp.status == 201
    final = URL(resp.headers["Location"]).path
    resp = await head(client, final)
    assert resp.headers["Upload-Defer-Length"] == "1" and "Upload-Offset" not in resp.headers
    await patch(client, pa, 0, a, Upload_Length=str(len(a)))
    await worker(client).drain()
    resp = await head(client, final)
    assert resp.headers["Upload-Offset"] == resp.headers["Upload-Length"] == str(len(a) + len(b))
    assert sha256(await download(client, final)) == sha256(a + b)


async def test_a_deleted_partial_fails_its_final_with_410(server):
    client = await server()
    a = os.urandom(100)
    pa = await create(client, len(a), Upload_Concat="partial")
    pb = await upload_partial(client, b"b" * 10)
    final = URL((await post_final(client, pa, pb)).headers["Location"]).path
    assert (await client.delete(pb, headers=TUS)).status == 204
    await patch(client, pa, 0, a)
    await worker(client).drain()
    resp = await head(client, final)
    assert resp.status == 410
    resp = await client.get(final)
    assert resp.status == 410
    assert await resp.text() == "a partial upload of this final upload was deleted; it will not be completed\n"


# -- finals per partial ---------------------------------------------------------------------------


async def test_finals_per_partial_are_capped_at_10_so_a_byte_is_stored_at_most_11_times(server):
    client = await server()
    data = os.urandom(MiB)
    partial = await upload_partial(client, data)
    other = await upload_partial(client, b"other")
    sent = len(data) + len(b"other")
    finals = []
    for _ in range(10):
        resp = await post_final(client, partial)
        assert resp.status == 201
        finals.append(URL(resp.headers["Location"]).path)
        sent += len(f"final;{partial}")
    before = client.stored.uploads()
    message = (
        "a partial upload is already part of as many final uploads as the server allows: "
        f"{id_of(partial)} is part of 10 final uploads"
    )
    await assert_refused(await post_final(client, partial), 409, message)
    await assert_refused(await post_final(client, other, partial), 409, message)  # nothing linked to `other`
    assert client.stored.uploads() == before
    assert len(await client.stored.store.finals_of(id_of(other))) == 0
    # Deleting a final does not free its place: the copy work it cost stays counted.
    assert (await client.delete(finals[0], headers=TUS)).status == 204
    assert (await post_final(client, partial)).status == 409
    for final in finals[1:]:
        assert sha256(await download(client, final)) == sha256(data)
    stored = client.stored.total()
    assert stored == 10 * MiB + len(b"other")  # the partial and 9 finals of it
    assert stored / sent < 11


async def test_concurrent_finals_never_pass_the_cap(server):
    client = await server(Config(max_finals_per_partial=3))
    partial = await upload_partial(client, b"abc")
    responses = await asyncio.gather(*(post_final(client, partial) for _ in range(12)))
    assert {r.status for r in responses} <= {201, 409}
    # Creations that passed the cap together all withdraw: the links and the finals go.
    created = {id_of(r) for r in responses if r.status == 201}
    assert len(created) <= 3
    assert set(await client.stored.store.finals_of(id_of(partial))) == created
    assert client.stored.uploads() == {id_of(partial)} | created
    while len(created) < 3:
        resp = await post_final(client, partial)
        assert resp.status == 201
        created.add(id_of(resp))
    assert (await post_final(client, partial)).status == 409
    assert client.stored.uploads() == {id_of(partial)} | created


# -- the background worker -------------------------------------------------------------------------


async def test_the_partials_finishing_patch_does_not_run_the_concatenations(server, store_factory):
    store = CountingStore(store_factory())
    client = await server(store=store)
    data = os.urandom(2 * MiB)
    partial = await create(client, len(data), Upload_Concat="partial")
    finals = [URL((await post_final(client, partial)).headers["Location"]).path for _ in range(3)]
    store.release.clear()  # every concatenation now waits
    await asyncio.wait_for(patch(client, partial, 0, data), PATIENCE)  # answered while they wait
    await asyncio.wait_for(store.concatenating.wait(), PATIENCE)
    assert "Upload-Offset" not in (await head(client, finals[0])).headers
    store.release.set()
    await worker(client).drain()
    for final in finals:
        resp = await head(client, final)
        assert resp.headers["Upload-Offset"] == str(len(data))
        assert sha256(await download(client, final)) == sha256(data)


async def test_a_full_queue_drops_finals_and_a_later_head_completes_them(server, store_factory):
    store = CountingStore(store_factory())
    client = await server(store=store)
    handlers = client.app[HANDLERS_KEY]
    await handlers.finals.close()
    handlers.finals = FinalWorker(store, handlers.locker, handlers._post_finish, workers=1, queue_size=1)
    await handlers.finals.start()
    pieces = [os.urandom(1000 + i) for i in range(4)]
    partials = [await create(client, len(p), Upload_Concat="partial") for p in pieces]
    finals = [URL((await post_final(client, p)).headers["Location"]).path for p in partials]
    await handlers.finals.drain()
    dropped = handlers.finals.dropped
    store.release.clear()
    await patch(client, partials[0], 0, pieces[0])  # its final is taken by the one worker, which waits
    await asyncio.wait_for(store.concatenating.wait(), PATIENCE)
    await patch(client, partials[1], 0, pieces[1])  # queued: the one place in the queue
    await patch(client, partials[2], 0, pieces[2])  # dropped
    await patch(client, partials[3], 0, pieces[3])  # dropped
    assert handlers.finals.dropped - dropped == 2
    store.release.set()
    await handlers.finals.drain()
    assert [("Upload-Offset" in (await head(client, f)).headers) for f in finals] == [True, True, False, False]
    await handlers.finals.drain()  # the HEADs submitted the two waiting finals again
    for final, piece in zip(finals, pieces, strict=True):
        assert (await head(client, final)).headers["Upload-Offset"] == str(len(piece))
        assert await download(client, final) == piece


async def test_a_restarted_server_completes_a_final_whose_check_was_lost(server, store_factory):
    client = await server()
    data = os.urandom(3000)
    partial = await create(client, len(data), Upload_Concat="partial")
    final = URL((await post_final(client, partial)).headers["Location"]).path
    await worker(client).drain()
    worker(client).submit = lambda final_id, request: None  # the process dies before its worker runs
    await patch(client, partial, 0, data)
    assert "Upload-Offset" not in (await head(client, final)).headers
    restarted = await server()  # a new process over the same storage
    assert "Upload-Offset" not in (await head(restarted, final)).headers  # answered at once ...
    await worker(restarted).drain()  # ... and checked in the background
    assert (await head(restarted, final)).headers["Upload-Offset"] == str(len(data))
    assert sha256(await download(restarted, final)) == sha256(data)


# -- HEAD cost -------------------------------------------------------------------------------------


async def test_head_of_an_unfinished_final_reads_the_final_not_its_100_partials(server, store_factory):
    store = CountingStore(store_factory())
    client = await server(store=store)
    paths = [await upload_partial(client, bytes([i])) for i in range(99)]
    last = await create(client, 1, Upload_Concat="partial")
    store.reads = 0
    final = URL((await post_final(client, *paths, last)).headers["Location"]).path
    await worker(client).drain()
    assert store.reads == 100 + 2  # the POST reads each partial once; its check the final and `last`
    store.reads = 0
    for _ in range(20):
        resp = await head(client, final)
        assert resp.status == 200 and "Upload-Offset" not in resp.headers
        await worker(client).drain()
    assert store.reads == 20 * 3  # per HEAD: the final; in the background: the final and `last`
    await patch(client, last, 0, b"\xff")
    await worker(client).drain()
    assert await download(client, final) == bytes(range(99)) + b"\xff"
