"""S3 provider profiles (s3_profile): what each one changes reaches the store and the
botocore client, and each part-size rule holds for uploads that cross several parts,
against moto in server mode. Every finished upload is checked by its sha256."""

from __future__ import annotations

import dataclasses
import math

import pytest
from aiobotocore.session import get_session

from tests import test_s3_store
from tests.conftest import make_bucket, start_moto, stop_process
from tests.test_s3_store import (
    Bucket,
    Server,
    assert_no_temp_files,
    count_parts,
    create_final,
    object_part_sizes,
    payload,
    sha256,
    upload_partials,
)
from tusserver import Config, create_app
from tusserver.stores.s3 import S3Store
from tusserver.stores.s3_profiles import PROFILES, Profile, profile
from tusserver.stores.s3_state import (
    MAX_OBJECT_SIZE,
    MAX_PART_SIZE,
    deferred_max_size,
    max_object_size,
    part_size_for,
    uniform_part_size,
)

MiB = 1 << 20
GiB = 1 << 30
# The S3 store tests' fixtures: an app over the moto bucket, the bucket's view, the spool.
serve, s3, spool_dir = test_s3_store.serve, test_s3_store.s3, test_s3_store.spool_dir


def test_each_profile_says_what_it_changes():
    changed = {
        name: {f.name: getattr(p, f.name) for f in dataclasses.fields(p) if getattr(p, f.name) != f.default}
        for name, p in PROFILES.items()
    }
    assert changed == {
        "aws": {"name": "aws"},
        "r2": {"name": "r2", "uniform_parts": True},
        "minio": {"name": "minio", "path_style": True},
        "ceph": {"name": "ceph", "path_style": True},
        "b2": {"name": "b2", "retry_mode": "adaptive", "retry_attempts": 10},
        "scaleway": {"name": "scaleway", "max_parts": 1000},
        "gcs": {"name": "gcs", "copy_parts": False, "batch_delete": False},
    }
    # The defaults every profile keeps: plain bodies without SDK checksums, 5 MiB parts.
    assert {(p.checksums, p.min_part_size) for p in PROFILES.values()} == {("when_required", 5 * MiB)}
    with pytest.raises(ValueError, match="unknown S3 profile 'wasabi'; expected one of aws, r2"):
        profile("wasabi")


def s3_config(**keys) -> Config:
    return Config(store="s3", s3_bucket="b", **keys)


@pytest.mark.parametrize("name", list(PROFILES))
def test_the_profile_sets_the_store_unless_a_key_is_set(name):
    p = PROFILES[name]
    store = S3Store.from_config(s3_config(s3_profile=name))
    assert store.profile is p
    assert (store.uniform_parts, store.path_style, store.max_parts, store.retry_attempts, store.copy_parts) == (
        p.uniform_parts,
        p.path_style,
        p.max_parts,
        p.retry_attempts,
        p.copy_parts,
    )
    assert store.min_part_size == 5 * MiB
    # Keys set explicitly win over the profile, either way.
    store = S3Store.from_config(
        s3_config(s3_profile=name, s3_uniform_parts=not p.uniform_parts, s3_path_style=not p.path_style, s3_max_parts=7)
    )
    assert (store.uniform_parts, store.path_style, store.max_parts) == (not p.uniform_parts, not p.path_style, 7)
    # s3_min_part_size raises the provider's minimum.
    assert S3Store.from_config(s3_config(s3_profile=name, s3_min_part_size=8 * MiB)).min_part_size == 8 * MiB


@pytest.mark.parametrize("name", list(PROFILES))
async def test_the_profile_reaches_the_botocore_client(name, moto_endpoint, bucket, spool_dir):
    p = PROFILES[name]
    store = S3Store(bucket, endpoint_url=moto_endpoint, temp_dir=spool_dir, provider=name)
    await store.start()  # HeadBucket through the client as configured
    try:
        config = store.client.meta.config
        # botocore's max_attempts counts the retries; total_max_attempts the first try too.
        assert config.retries == {"mode": p.retry_mode, "total_max_attempts": p.retry_attempts + 1}
        assert config.s3 == {"addressing_style": "path" if p.path_style else "auto"}
        assert config.request_checksum_calculation == config.response_checksum_validation == "when_required"
    finally:
        await store.close()


@pytest.mark.parametrize(("name", "path_style"), [("aws", None), ("minio", None), ("minio", False), ("aws", True)])
async def test_addressing_style_shows_in_the_urls(name, path_style):
    # AWS itself: botocore's "auto" addresses any other endpoint by path. A presigned URL
    # shows the addressing without a request.
    store = S3Store("bkt", region="us-east-1", provider=name, path_style=path_style)
    assert store.path_style == (PROFILES[name].path_style if path_style is None else path_style)
    async with store._create_client(get_session(), 1) as client:
        url = await client.generate_presigned_url("get_object", Params={"Bucket": "bkt", "Key": "k"})
    expected = "https://s3.amazonaws.com/bkt/k?" if store.path_style else "https://bkt.s3.amazonaws.com/k?"
    assert url.startswith(expected), url


# -- part budgets ------------------------------------------------------------------------------


def test_a_1000_part_budget_sizes_parts_for_1000_parts():
    largest = max_object_size(1000)
    assert largest == 1000 * MAX_PART_SIZE < MAX_OBJECT_SIZE
    assert max_object_size(10_000) == MAX_OBJECT_SIZE and deferred_max_size(10_000) == MAX_OBJECT_SIZE
    assert deferred_max_size(1000) == 500 * MAX_PART_SIZE
    assert count_parts(largest, largest, 64 * GiB, max_parts=1000) == 1000
    assert count_parts(100 * GiB, 100 * GiB, 1 * GiB, max_parts=1000) <= 1000
    # 10,000 parts at the preferred 16 MiB would take 156 GiB; 1,000 hold 15.6 GiB.
    assert count_parts(100 * GiB, 100 * GiB, 1 * GiB, max_parts=10_000) == 6400
    assert count_parts(None, deferred_max_size(1000), 64 * GiB, max_parts=1000) <= 1000
    assert count_parts(None, deferred_max_size(1000), 100 * MiB, max_parts=1000) <= 1000  # deferred, smaller PATCHes
    hundred = part_size_for(
        length=100 * GiB, offset=0, parts_used=0, preferred=16 * MiB, min_part=5 * MiB, max_parts=1000
    )
    assert hundred == (math.ceil(100 * GiB / 1000), math.ceil(100 * GiB / 1000))
    assert uniform_part_size(100 * GiB, 16 * MiB, 5 * MiB, 1000) == math.ceil(100 * GiB / 1000)
    assert uniform_part_size(largest, 16 * MiB, 5 * MiB, 1000) == MAX_PART_SIZE


async def test_scaleway_upload_that_needs_more_than_1000_parts_gets_bigger_parts(aiohttp_client, spool_dir):
    proc, endpoint = start_moto(env={"S3_UPLOAD_PART_MIN_SIZE": "4096"})
    try:
        name = make_bucket(endpoint)
        store = S3Store(
            name, endpoint_url=endpoint, temp_dir=spool_dir, min_part_size=4096, part_size=4096, provider="scaleway"
        )
        server = Server(await aiohttp_client(create_app(Config(), store=store)), store)
        # 1,004 parts at the configured 4096 bytes: at most 1,000 bigger ones instead.
        data = payload(1003 * 4096 + 100, seed=60)
        upload_id = await server.create(len(data))
        offset = 0
        for size in [500 * 4096 + 7, 3 * 4096, 4096 - 7, len(data) - 504 * 4096]:
            assert await server.patch(upload_id, offset, data[offset : offset + size]) == offset + size
            offset += size
            if offset < len(data):
                parts = Bucket(endpoint, name).parts(upload_id)
                assert parts[0]["Size"] == math.ceil(len(data) / 1000) > 4096
                assert sum(p["Size"] for p in parts) <= offset
        bucket = Bucket(endpoint, name)
        bucket.assert_object(upload_id, data)
        first = bucket.s3.head_object(Bucket=name, Key=upload_id, PartNumber=1)
        assert first["ContentLength"] == math.ceil(len(data) / 1000)
        assert 990 < first["PartsCount"] <= 1000
        assert_no_temp_files(spool_dir)
    finally:
        stop_process(proc)


async def test_scaleway_refuses_what_1000_parts_cannot_hold(serve):
    server = await serve(provider="scaleway", config=Config(max_size=None))
    async with server.client.post(
        "/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": str(1000 * MAX_PART_SIZE + 1)}
    ) as resp:
        assert resp.status == 413, await resp.text()
    assert await server.create(1000 * MAX_PART_SIZE)  # the most it holds


# -- equal parts (R2) --------------------------------------------------------------------------


async def test_r2_keeps_every_part_but_the_last_the_same_size(serve, s3, spool_dir):
    server = await serve(provider="r2", part_size=5 * MiB)
    assert server.store.uniform_parts
    sizes = [3 * MiB, 4 * MiB, 1, 6 * MiB + 3, 7 * MiB, 2 * MiB + 5]
    data = payload(sum(sizes), seed=61)
    upload_id = await server.create(len(data))
    offset = 0
    for size in sizes:
        assert await server.patch(upload_id, offset, data[offset : offset + size]) == offset + size
        offset += size
        if offset < len(data):
            parts = s3.parts(upload_id)
            assert [p["Size"] for p in parts] == [5 * MiB] * len(parts)
    s3.assert_object(upload_id, data)
    assert object_part_sizes(s3, upload_id) == [5 * MiB] * 4 + [len(data) - 20 * MiB]
    assert_no_temp_files(spool_dir)


# -- no UploadPartCopy, no DeleteObjects (GCS) -------------------------------------------------


def count_calls(store: S3Store) -> dict[str, int]:
    calls: dict[str, int] = {}

    def seen(model, **_) -> None:
        calls[model.name] = calls.get(model.name, 0) + 1

    store.client.meta.events.register("before-call.s3", seen)
    return calls


@pytest.mark.parametrize("name", ["gcs", "aws"])
async def test_concatenation_streams_where_the_provider_has_no_part_copy(name, serve, s3, spool_dir):
    server = await serve(provider=name, part_size=5 * MiB)
    pieces = [payload(6 * MiB + 1, seed=62), b"ab", payload(12 * MiB, seed=63), payload(3, seed=64), b"z"]
    ids = await upload_partials(server, pieces)
    calls = count_calls(server.store)
    final = await create_final(server, ids)
    data = b"".join(pieces)
    s3.assert_object(final, data)
    assert sha256(s3.get(final)) == sha256(data)
    if name == "gcs":  # every byte streamed, in equal parts
        assert calls.get("UploadPartCopy", 0) == 0
        assert calls["UploadPart"] == 4
        assert object_part_sizes(s3, final) == [5 * MiB, 5 * MiB, 5 * MiB, len(data) - 15 * MiB]
    else:  # a partial of at least 5 MiB is copied inside S3
        assert calls["UploadPartCopy"] >= 1
    for upload_id, piece in zip(ids, pieces, strict=True):
        assert s3.get(upload_id) == piece
    assert_no_temp_files(spool_dir)


@pytest.mark.parametrize("name", ["gcs", "aws"])
async def test_tail_chunks_are_deleted_one_by_one_without_delete_objects(name, serve, s3):
    server = await serve(provider=name, part_size=5 * MiB)
    data = payload(5 * MiB + 300, seed=65)
    upload_id = await server.create(len(data))
    calls = count_calls(server.store)
    for offset, end in [(0, 100), (100, 200), (200, len(data))]:  # two tail chunks, then a part
        assert await server.patch(upload_id, offset, data[offset:end]) == end
    s3.assert_object(upload_id, data)
    if name == "gcs":
        assert calls.get("DeleteObjects", 0) == 0 and calls["DeleteObject"] >= 1
    else:
        assert calls["DeleteObjects"] >= 1


def test_profile_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PROFILES["aws"].max_parts = 1  # type: ignore[misc]
    assert Profile("x").max_parts == 10_000
