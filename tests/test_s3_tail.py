"""The S3 store's tail (bytes too few to be a part yet) as numbered chunk objects: S3
traffic per PATCH follows the PATCH's bytes, not the tail's; the number of chunks is
bounded; the spool is private, off the event loop and within its budget."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import threading

import pytest

from tests.test_s3_store import OCTETS, TUS, MiB, assert_no_temp_files, payload, proxy, s3, spool_dir
from tusserver import Config, create_app
from tusserver.load import ConfigError, load_config
from tusserver.stores.s3 import (
    S3Store,
    _Chunk,
    _Rest,
    chunks_to_absorb,
    merge_limit,
    plan_rest,
    tail_chain,
)
from tusserver.stores.spool import Spool, TempBudget, process_dir

KiB = 1024



# -- pure rules --------------------------------------------------------------------------------


def chunk(next_part: int, start: int, size: int) -> _Chunk:
    return _Chunk(f"k.part.{next_part}.{start}", next_part, start, size)


def test_tail_chain_follows_offsets_for_the_next_part_only():
    a, b, c = chunk(3, 100, 10), chunk(3, 110, 5), chunk(3, 115, 1)
    skipped = chunk(3, 105, 7)  # inside a: left behind by a merge
    old = chunk(2, 40, 60)  # in front of part 2, which is stored: stale
    far = chunk(3, 200, 4)  # not reached from where the parts end
    chain, stale = tail_chain([far, c, old, b, skipped, a], 3, 100)
    assert chain == [a, b, c]
    assert sorted(s.key for s in stale) == sorted(x.key for x in (far, old, skipped))
    assert tail_chain([a, b], 3, 101) == ([], [a, b])  # nothing starts where the parts end
    assert tail_chain([a, b], 4, 100) == ([], [a, b])


@pytest.mark.parametrize(
    ("pending", "rest", "completes", "uniform", "whole", "expected"),
    [
        (0, 0, False, False, False, _Rest.NONE),
        (0, 0, True, False, False, _Rest.NONE),  # nothing pending: the parts hold it all
        (10, 0, False, False, False, _Rest.NONE),  # an untouched tail stands
        (10, 0, True, False, False, _Rest.PART),  # the tail alone is the last part
        (10, 4, True, False, True, _Rest.WHOLE),
        (10, 4, False, False, False, _Rest.CHUNK),
        (100, 4, False, False, False, _Rest.PART),  # at least the smallest part
        (100, 4, False, True, False, _Rest.CHUNK),  # uniform parts: only exact ones
        (99, 99, False, False, True, _Rest.CHUNK),
    ],
)
def test_plan_rest(pending, rest, completes, uniform, whole, expected):
    assert (
        plan_rest(pending=pending, rest=rest, completes=completes, smallest=100, uniform=uniform, whole=whole)
        is expected
    )


def test_chunks_to_absorb_takes_trailing_chunks_within_the_limit():
    big, mid, small, tiny = chunk(1, 0, 500), chunk(1, 500, 60), chunk(1, 560, 30), chunk(1, 590, 9)
    assert chunks_to_absorb([big, mid, small, tiny], 100) == [mid, small, tiny]
    assert chunks_to_absorb([big, mid, small, tiny], 99) == [mid, small, tiny]
    assert chunks_to_absorb([big, mid, small, tiny], 98) == [small, tiny]
    assert chunks_to_absorb([big, mid, small, tiny], 38) == [tiny]
    assert chunks_to_absorb([big], 100) == []
    assert chunks_to_absorb([], 100) == []
    assert merge_limit(5 * MiB) == 80 * KiB and merge_limit(MiB) == 64 * KiB


# -- over HTTP, against moto -------------------------------------------------------------------


async def start(aiohttp_client, endpoint: str, bucket: str, spool_dir: str, **options):
    store = S3Store(bucket, endpoint_url=endpoint, path_style=True, temp_dir=spool_dir, **options)
    client = await aiohttp_client(create_app(Config(), store=store))
    return client, store


async def create(client, length: int | None) -> str:
    headers = {**TUS, **({"Upload-Length": str(length)} if length is not None else {"Upload-Defer-Length": "1"})}
    async with client.post("/", headers=headers) as resp:
        assert resp.status == 201
        return resp.headers["Location"].rsplit("/", 1)[1]


async def patch(client, upload_id: str, offset: int, data: bytes, expect: int = 204, **headers: str):
    h = {**TUS, "Upload-Offset": str(offset), "Content-Type": OCTETS, **headers}
    async with client.patch(f"/{upload_id}", data=data, headers=h) as resp:
        assert resp.status == expect, (resp.status, await resp.text())
        return resp.status, dict(resp.headers), await resp.text()


async def offset_of(client, upload_id: str) -> int:
    async with client.head(f"/{upload_id}", headers=TUS) as resp:
        assert resp.status == 200
        return int(resp.headers["Upload-Offset"])


async def test_4_kib_patches_on_a_4_mib_tail_move_at_most_256_kib_each(aiohttp_client, proxy, bucket, s3, spool_dir):
    """The issue's table row: 16 PATCHes of 4 KiB while a 4 MiB tail is pending. Before,
    each re-read and re-wrote the whole tail (8.2 MiB moved per PATCH)."""
    client, _ = await start(aiohttp_client, proxy.url, bucket, spool_dir, part_size=5 * MiB)
    data = payload(6 * MiB, seed=40)
    upload_id = await create(client, len(data))
    await patch(client, upload_id, 0, data[: 4 * MiB])
    offset, moved = 4 * MiB, []
    for _ in range(16):
        before = proxy.bytes_up + proxy.bytes_down
        await patch(client, upload_id, offset, data[offset : offset + 4 * KiB])
        moved.append(proxy.bytes_up + proxy.bytes_down - before)
        offset += 4 * KiB
        assert s3.tail(upload_id) == data[:offset]
    print(f"S3 bytes per 4 KiB PATCH on a 4 MiB tail: max {max(moved)}, mean {sum(moved) // len(moved)}")
    assert max(moved) <= 256 * KiB
    assert len(s3.chunks(upload_id)) == 2  # the 4 MiB chunk, and the 4 KiB ones merged into one
    # The PATCH that completes the part reads the tail back once, and the upload is whole.
    before = proxy.bytes_up + proxy.bytes_down
    await patch(client, upload_id, offset, data[offset:])
    assert proxy.bytes_up + proxy.bytes_down - before < 3 * len(data)
    s3.assert_object(upload_id, data)
    assert_no_temp_files(spool_dir)


async def test_many_tiny_patches_keep_few_tail_chunks(aiohttp_client, moto_endpoint, bucket, s3, spool_dir):
    client, _ = await start(aiohttp_client, moto_endpoint, bucket, spool_dir, part_size=5 * MiB)
    data = payload(5 * MiB + 3, seed=41)
    upload_id = await create(client, len(data))
    offset = 0
    sizes = [1] * 40 + [41 * KiB] * 40  # without merging: one object per PATCH, 80 of them
    for size in sizes:
        await patch(client, upload_id, offset, data[offset : offset + size])
        offset += size
    assert await offset_of(client, upload_id) == offset
    assert s3.tail(upload_id) == data[:offset]
    # Any two neighbours hold more than merge_limit (80 KiB) bytes: at most 2T/80 KiB + 1.
    bound = 2 * offset // (80 * KiB) + 1
    assert len(s3.chunks(upload_id)) <= bound == 42
    assert len(s3.chunks(upload_id)) == 20  # 41 KiB + 41 KiB absorbed by the next: 82 KiB each
    await patch(client, upload_id, offset, data[offset:])
    s3.assert_object(upload_id, data)
    assert_no_temp_files(spool_dir)


async def test_stale_chunks_left_by_a_merge_are_deleted_and_never_counted(
    aiohttp_client, moto_endpoint, bucket, s3, spool_dir
):
    client, store = await start(aiohttp_client, moto_endpoint, bucket, spool_dir, part_size=5 * MiB)
    data = payload(3 * MiB, seed=42)
    upload_id = await create(client, len(data))
    await patch(client, upload_id, 0, data[:MiB])
    await patch(client, upload_id, MiB, data[MiB : MiB + 10])
    # What a crash between a merge's PutObject and its delete leaves: a chunk off the chain.
    # The instance that crashed is gone: another one reads what S3 holds.
    s3.s3.put_object(Bucket=bucket, Key=f"{upload_id}.part.1.{MiB + 5}", Body=b"x" * 5)
    s3.s3.put_object(Bucket=bucket, Key=f"{upload_id}.part.1.{MiB + 10}", Body=b"y" * 7)  # chained: counted
    client, _ = await start(aiohttp_client, moto_endpoint, bucket, spool_dir, part_size=5 * MiB)
    assert await offset_of(client, upload_id) == MiB + 17
    s3.s3.delete_object(Bucket=bucket, Key=f"{upload_id}.part.1.{MiB + 10}")
    client, _ = await start(aiohttp_client, moto_endpoint, bucket, spool_dir, part_size=5 * MiB)
    assert await offset_of(client, upload_id) == MiB + 10
    await patch(client, upload_id, MiB + 10, data[MiB + 10 : MiB + 20])
    assert s3.chunks(upload_id) == [f"{upload_id}.part.1.0", f"{upload_id}.part.1.{MiB}"]
    assert s3.tail(upload_id) == data[: MiB + 20]
    await patch(client, upload_id, MiB + 20, data[MiB + 20 :])
    s3.assert_object(upload_id, data)


async def test_checksummed_patch_above_the_limit_is_413_and_stores_nothing(
    aiohttp_client, moto_endpoint, bucket, s3, spool_dir
):
    client, store = await start(
        aiohttp_client, moto_endpoint, bucket, spool_dir, part_size=5 * MiB, upload_concurrency=1
    )
    assert store.checksum_limit == 5 * MiB
    data = payload(12 * MiB, seed=43)
    upload_id = await create(client, len(data))
    await patch(client, upload_id, 0, data[:MiB])
    body = data[MiB : 7 * MiB]
    digest = base64.b64encode(hashlib.sha1(body).digest()).decode()
    _, headers, text = await patch(client, upload_id, MiB, body, expect=413, **{"Upload-Checksum": f"sha1 {digest}"})
    assert text.startswith("a PATCH with Upload-Checksum carries too many bytes for this server: at most 5242880")
    assert await offset_of(client, upload_id) == MiB
    assert s3.tail(upload_id) == data[:MiB]
    assert_no_temp_files(spool_dir)
    body = data[MiB : 6 * MiB]  # at the limit: accepted
    digest = base64.b64encode(hashlib.sha1(body).digest()).decode()
    await patch(client, upload_id, MiB, body, **{"Upload-Checksum": f"sha1 {digest}"})
    await patch(client, upload_id, 6 * MiB, data[6 * MiB :])
    s3.assert_object(upload_id, data)


async def test_spool_past_its_budget_is_503_with_retry_after_and_keeps_what_it_took(
    aiohttp_client, moto_endpoint, bucket, s3, spool_dir
):
    client, store = await start(
        aiohttp_client, moto_endpoint, bucket, spool_dir, part_size=5 * MiB, temp_max_size=8 * MiB
    )
    data = payload(7 * MiB, seed=44)
    upload_id = await create(client, len(data))
    await patch(client, upload_id, 0, data[: 100 * KiB])
    store.temp.take(7 * MiB + 768 * KiB)  # what the other uploads of the instance spool right now
    _, headers, text = await patch(client, upload_id, 100 * KiB, data[100 * KiB : 3 * MiB], expect=503)
    assert headers["Retry-After"] == "5"
    assert text == "server's temporary space is taken by other uploads; retry shortly\n"
    offset = await offset_of(client, upload_id)
    assert 100 * KiB <= offset <= 356 * KiB  # what was spooled before the budget ran out is stored
    assert s3.tail(upload_id) == data[:offset]
    assert store.temp.used == 7 * MiB + 768 * KiB
    assert_no_temp_files(spool_dir)
    store.temp.give(7 * MiB + 768 * KiB)  # they are done
    await patch(client, upload_id, offset, data[offset:])
    s3.assert_object(upload_id, data)
    assert store.temp.used == 0


async def test_spool_writes_run_off_the_event_loop(aiohttp_client, moto_endpoint, bucket, s3, spool_dir, monkeypatch):
    threads: set[int] = set()
    write = Spool._write

    def recording(self, data):
        threads.add(threading.get_ident())
        return write(self, data)

    monkeypatch.setattr(Spool, "_write", recording)
    client, _ = await start(aiohttp_client, moto_endpoint, bucket, spool_dir, part_size=5 * MiB)
    data = payload(7 * MiB, seed=45)
    upload_id = await create(client, len(data))
    await patch(client, upload_id, 0, data[: 3 * MiB])
    await patch(client, upload_id, 3 * MiB, data[3 * MiB :])  # the tail read back too
    s3.assert_object(upload_id, data)
    assert threads and threading.get_ident() not in threads


async def test_spool_files_are_private_to_the_process(tmp_path):
    old = os.umask(0o022)
    try:
        budget = TempBudget(None)
        spool = Spool(str(tmp_path), 10, budget)
        await spool.awrite(b"abc")
        directory = process_dir(str(tmp_path))
        assert os.path.dirname(spool._piece.path) == directory
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(spool._piece.path).st_mode) == 0o600
        assert budget.used == 3
        spool.discard()
        assert budget.used == 0 and os.listdir(tmp_path) == []  # the directory goes with its last file
    finally:
        os.umask(old)


def test_a_temp_budget_below_two_parts_is_refused_at_start():
    env = {
        "TUSSERVER_STORE": "s3",
        "TUSSERVER_S3_BUCKET": "b",
        "TUSSERVER_TEMP_MAX_SIZE": "31MiB",
        "TUSSERVER_S3_PART_SIZE": "16MiB",
    }
    with pytest.raises(ConfigError, match=r"temp_max_size \(32505856\) must be at least twice s3_part_size"):
        load_config(env=env, config_file=None)
    assert load_config(env={**env, "TUSSERVER_TEMP_MAX_SIZE": "32MiB"}, config_file=None).temp_max_size == 32 * MiB
