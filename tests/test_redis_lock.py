"""Locks for several instances, on a real redis-server started for these tests:
leases, renewal, token checks, release requests over pub/sub, and two server
instances on one bucket taking alternate PATCHes of 20 concurrent uploads."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
import uuid

import pytest
from redis.asyncio import Redis

from tests.conftest import free_port
from tests.hanging import HangingPatch, Received, wait_until
from tests.stored import assert_store_holds
from tests.trickle import CleanupRuns, cleanup_args, trickle_patch
from tests.tus_client import create, download, head, patch, sha256
from tusserver import Config, MemoryLocker, create_app
from tusserver.app import HANDLERS_KEY
from tusserver.cleanup import clean_expired
from tusserver.errors import TusError
from tusserver.locking import held_version
from tusserver.locking.redis import RedisLocker

KiB = 1 << 10
MiB = 1 << 20


@pytest.fixture
def prefix() -> str:
    """A key prefix of its own for each test, so tests never see each other's locks."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def lockers(redis_url, prefix):
    """Build RedisLockers (each with its own connections, like separate instances)."""
    made: list[RedisLocker] = []

    async def make(**kw) -> RedisLocker:
        locker = RedisLocker(redis_url, prefix=prefix, **kw)
        await locker.start()
        made.append(locker)
        return locker

    yield make
    for locker in made:
        await locker.close()


async def test_a_held_lock_is_refused_with_423_after_the_timeout(lockers):
    a, b = await lockers(), await lockers(timeout=0.3)
    async with a.lock("u1"):
        with pytest.raises(TusError) as refused:
            async with b.lock("u1"):
                pass
        assert refused.value.status == 423
        assert refused.value.headers == {"Retry-After": "1"}
    async with b.lock("u1"):  # free again
        pass


async def test_release_request_reaches_the_holder_on_another_instance(lockers):
    a, b = await lockers(), await lockers(timeout=5)
    asked = asyncio.Event()
    let_go = asyncio.Event()

    async def holder() -> None:
        async with a.lock("u1", on_release=asked.set):
            await let_go.wait()

    task = asyncio.create_task(holder())
    await wait_until(lambda: bool(a._held), "the first instance to hold the lock")

    async def release_when_asked() -> None:
        await asked.wait()
        let_go.set()

    helper = asyncio.create_task(release_when_asked())
    async with b.lock("u1"):
        assert asked.is_set()
    await task
    await helper


async def test_a_blocked_waiter_asks_the_holder_a_few_times_not_every_poll(lockers, redis_url, prefix):
    """A holder that cannot let go (no on_release, e.g. a concatenation) blocks a waiter for
    the whole lock_timeout: the waiter publishes a handful of release requests (at 0, 1
    and 3 s), not one per 100 ms poll (30 of them before), and still gets its 423."""
    a, b = await lockers(), await lockers(timeout=3.0)
    watcher = Redis.from_url(redis_url)
    pubsub = watcher.pubsub()
    await pubsub.subscribe(f"{prefix}:release")
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    try:
        async with a.lock("u1"):
            with pytest.raises(TusError) as refused:
                async with b.lock("u1"):
                    pass
            assert refused.value.status == 423
        requests = []
        while (message := await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)) is not None:
            requests.append(message["data"])
        assert 1 <= len(requests) <= 3, requests
        assert len(set(requests)) == 1  # every request names the one holder
    finally:
        await pubsub.aclose()
        await watcher.aclose()


async def test_renewal_keeps_a_long_holders_lock(lockers):
    a = await lockers(lease=0.3)  # renewed every 0.1 s
    b = await lockers(timeout=1.2)  # waits four leases
    async with a.lock("u1"):
        with pytest.raises(TusError) as refused:
            async with b.lock("u1"):
                pass
        assert refused.value.status == 423


async def test_release_checks_the_token_and_a_holder_that_lost_its_lease_is_stopped(lockers, redis_url, prefix):
    a = await lockers(lease=0.6)
    b = await lockers(timeout=2)
    redis = Redis.from_url(redis_url)
    key = f"{prefix}:lock:u1"
    stopped = asyncio.Event()
    try:
        held_by_a = a.lock("u1", on_release=stopped.set)
        await held_by_a.__aenter__()
        await redis.delete(key)  # as if a's lease had run out while its process stalled
        held_by_b = b.lock("u1")
        await held_by_b.__aenter__()
        b_token = await redis.get(key)
        assert b_token is not None
        await asyncio.wait_for(stopped.wait(), 5)  # a's next renewal found the lock gone
        await held_by_a.__aexit__(None, None, None)
        assert await redis.get(key) == b_token  # a's release left b's lock alone
        await held_by_b.__aexit__(None, None, None)
        assert await redis.get(key) is None
    finally:
        await redis.aclose()


async def test_releasing_someone_elses_lock_is_a_no_op(lockers, redis_url, prefix):
    a = await lockers(lease=5)
    redis = Redis.from_url(redis_url)
    key = f"{prefix}:lock:u1"
    try:
        async with a.lock("u1"):
            await redis.set(key, "someone-else", px=5000)
        assert await redis.get(key) == b"someone-else"
    finally:
        await redis.aclose()


HOLDER = """
import asyncio, sys
from tusserver.locking.redis import RedisLocker

async def main():
    locker = RedisLocker(sys.argv[1], prefix=sys.argv[2], lease=0.5)
    async with locker.lock("u1"):  # never lets go when asked
        print("held", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_crashed_holders_lease_expires(lockers, redis_url, prefix):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, redis_url, prefix, stdout=subprocess.PIPE
    )
    try:
        assert await proc.stdout.readline() == b"held\n"
        waiter = await lockers(timeout=1.5)
        with pytest.raises(TusError):  # alive: it renews, three leases pass in vain
            async with waiter.lock("u1"):
                pass
        proc.kill()  # SIGKILL: no release, no more renewals
        await proc.wait()
        patient = await lockers(timeout=5)
        async with patient.lock("u1"):
            pass
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_unreachable_redis_answers_503(aiohttp_client, tmp_path):
    config = Config(file_dir=str(tmp_path / "uploads"), redis_url=f"redis://127.0.0.1:{free_port()}/0")
    locker = RedisLocker(config.redis_url, timeout=0.5)
    with pytest.raises(TusError) as failed:
        async with locker.lock("u1"):
            pass
    assert failed.value.status == 503
    await locker.close()


# -- two server instances ------------------------------------------------------------


@pytest.fixture
async def two_instances(aiohttp_client, moto_endpoint, bucket, redis_url, prefix, tmp_path):
    """Two apps over one bucket, each with its own S3Store and its own RedisLocker
    (built by create_app from redis_url), as two processes behind a load balancer."""
    from tusserver.stores.s3 import S3Store

    clients, stores = [], []
    for name in ("a", "b"):
        store = S3Store(bucket, endpoint_url=moto_endpoint, path_style=True, temp_dir=str(tmp_path / name))
        config = Config(redis_url=redis_url, redis_prefix=prefix, lock_timeout=5)
        app = create_app(config, store=store)
        assert isinstance(app[HANDLERS_KEY].locker, RedisLocker)
        clients.append(await aiohttp_client(app))
        stores.append(store)
    return clients, stores


async def s3_sha256(endpoint: str, bucket: str, key: str) -> str:
    from aiobotocore.session import get_session

    async with get_session().create_client("s3", endpoint_url=endpoint, region_name="us-east-1") as s3:
        obj = await s3.get_object(Bucket=bucket, Key=key)
        return hashlib.sha256(await obj["Body"].read()).hexdigest()


async def test_twenty_uploads_with_patches_alternating_between_instances_are_byte_exact(
    two_instances, moto_endpoint, bucket
):
    clients, _ = two_instances
    chunk = 2 * MiB

    async def upload(n: int) -> tuple[str, str]:
        data = os.urandom(5 * MiB + 1000 * n + 1)
        path = await create(clients[n % 2], len(data))
        offset, turn = 0, n
        while offset < len(data):
            turn += 1
            resp = await patch(clients[turn % 2], path, offset, data[offset : offset + chunk])
            offset = int(resp.headers["Upload-Offset"])
        return path.rsplit("/", 1)[1], sha256(data)

    results = await asyncio.gather(*(upload(n) for n in range(20)))
    for upload_id, expected in results:
        assert await s3_sha256(moto_endpoint, bucket, upload_id) == expected


async def test_head_on_one_instance_interrupts_a_patch_hanging_on_the_other(two_instances, moto_endpoint, bucket):
    (a, b), (store_a, _) = two_instances
    received = Received(store_a)
    data = os.urandom(7 * MiB)
    path = await create(a, len(data))
    sent = 5 * MiB + 4321
    hanging = await HangingPatch.start(a.host, a.port, path, 0, len(data))
    await hanging.send(data[:sent])
    await received.at_least(sent)

    resp = await head(b, path)
    assert resp.headers["Upload-Offset"] == str(sent)
    assert (await hanging.response()).status == 400
    hanging.close()
    await patch(b, path, sent, data[sent:])
    assert await s3_sha256(moto_endpoint, bucket, path.rsplit("/", 1)[1]) == sha256(data)


async def test_an_instance_trusts_its_kept_state_only_while_redis_says_nobody_took_the_lock(
    two_instances, moto_endpoint, bucket
):
    """The versions in Redis: a HEAD costs no S3 call while the state an instance kept is
    current, and one made after the other instance PATCHed reads S3 and sees the new offset."""
    (a, b), (store_a, _) = two_instances
    calls: list[str] = []
    store_a.client.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    data = os.urandom(3 * MiB)
    path = await create(a, len(data))
    for _ in range(2):  # never locked, so no version: read each time, and nothing kept
        calls.clear()
        assert (await head(a, path)).headers["Upload-Offset"] == "0"
        assert calls == ["GetObject"]
    await patch(a, path, 0, data[:MiB])
    calls.clear()
    assert (await head(a, path)).headers["Upload-Offset"] == str(MiB)
    assert calls == ["GetObject", "ListObjectsV2"]  # read, and kept under the PATCH's version
    calls.clear()
    locker = a.server.app[HANDLERS_KEY].locker
    asked: list[str] = []
    version = locker.version
    locker.version = lambda upload_id: asked.append(upload_id) or version(upload_id)
    assert (await head(a, path)).headers["Upload-Offset"] == str(MiB)
    assert calls == [] and len(asked) == 1  # one Redis round trip, shared by handler and store
    locker.version = version
    await patch(b, path, MiB, data[MiB : 2 * MiB])
    assert (await head(a, path)).headers["Upload-Offset"] == str(2 * MiB)  # not the MiB it kept
    assert calls == ["GetObject", "ListObjectsV2"]
    await patch(a, path, 2 * MiB, data[2 * MiB :])  # a's kept state is from before b's PATCH
    assert await s3_sha256(moto_endpoint, bucket, path.rsplit("/", 1)[1]) == sha256(data)


async def test_256_heads_at_once_of_one_idle_upload_on_two_instances_are_all_answered(two_instances):
    """HEADs of an upload nobody writes take no lock: behind Redis they queued for it, one
    after another, and got 423 after lock_timeout. And redis-py's pool failed commands at once
    beyond 100 connections (503); the locker's pool waits for a connection."""
    (a, b), _ = two_instances
    data = os.urandom(1000)
    path = await create(a, 2 * len(data))
    await patch(a, path, 0, data)
    replies = await asyncio.gather(*(head((a, b)[n % 2], path) for n in range(256)))
    assert [(r.status, r.headers.get("Upload-Offset")) for r in replies] == [(200, "1000")] * 256


async def test_heads_of_made_up_ids_leave_nothing_in_redis(two_instances, redis_url, prefix):
    (a, _), _ = two_instances
    for _ in range(50):
        assert (await head(a, "/" + uuid.uuid4().hex)).status == 404
    redis = Redis.from_url(redis_url)
    try:
        assert [key async for key in redis.scan_iter(match=f"{prefix}:*")] == []
    finally:
        await redis.aclose()


async def test_versions_move_with_each_lock_and_are_never_given_twice(lockers):
    one, two = await lockers(), await lockers()
    assert await one.version("u") == 0  # free, never locked: no version, and asking makes none
    async with one.lock("u"):
        first = held_version("u")
        assert first is not None and first[0] is None
        assert await two.version("u") is None  # held: a state read now may be half written
    assert await two.version("u") == first[1]
    async with two.lock("u"):
        held = held_version("u")
        assert held == (first[1], held[1]) and held[1] > first[1]
    assert await one.version("u") == held[1]
    async with one.lock("other"):
        assert held_version("other")[1] not in (first[1], held[1])  # one series for all uploads


# -- background jobs: try_lock (issue 11) -----------------------------------------------


async def test_try_lock_fails_at_once_when_held_and_never_asks_the_holder(lockers):
    a, b = await lockers(), await lockers(timeout=5)
    asked = asyncio.Event()
    async with a.lock("u1", on_release=asked.set):

        async def attempt() -> bool:
            async with b.try_lock("u1") as acquired:
                return acquired

        assert await asyncio.wait_for(attempt(), 2) is False  # not b's 5 s lock timeout
        await asyncio.sleep(0.3)  # time for a release request to arrive, had one been sent
        assert not asked.is_set()
    async with b.try_lock("u1") as acquired:
        assert acquired is True
        async with a.try_lock("u1") as other:
            assert other is False
    async with a.try_lock("u1") as acquired:  # released
        assert acquired is True


async def test_a_cancel_while_the_acquire_answer_is_on_its_way_leaves_no_lock(lockers, redis_url, prefix):
    """Redis ran SET NX, then the request was cancelled before the answer came back."""
    locker = await lockers()
    acquire = locker._acquire
    ran = asyncio.Event()

    async def slow_answer(**kw):
        result = await acquire(**kw)
        ran.set()
        await asyncio.sleep(0.5)  # the answer is still on its way when the cancel lands
        return result

    locker._acquire = slow_answer

    async def request() -> None:
        async with locker.lock("u1"):
            pass

    task = asyncio.create_task(request())
    await ran.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    redis = Redis.from_url(redis_url)
    try:
        assert await redis.get(f"{prefix}:lock:u1") is None
    finally:
        await redis.aclose()
    other = await lockers(timeout=0.3)
    async with other.lock("u1"):  # not 423 for a whole lease
        pass


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_the_cleaner_skips_an_expired_upload_that_a_request_holds(
    aiohttp_client, store_factory, lockers, kind
):
    """The request (e.g. a PATCH that just took the lock) is not asked to let go, and
    the upload is not removed; once it is free, the next round removes it."""
    store = store_factory()
    config = Config(expire_after=0.3)
    client = await aiohttp_client(create_app(config, store=store))
    upload_id = (await create(client, 10)).rsplit("/", 1)[1]
    await asyncio.sleep(0.5)
    if kind == "memory":
        holder = cleaner = MemoryLocker()
    else:
        holder, cleaner = await lockers(), await lockers()
    asked = asyncio.Event()
    async with holder.lock(upload_id, on_release=asked.set):
        assert await clean_expired(store, config, cleaner) == 0
        await asyncio.sleep(0.3)  # time for a release request to arrive, had one been sent
        assert not asked.is_set()
        assert (await store.get_info(upload_id)).id == upload_id
    assert await clean_expired(store, config, cleaner) == 1


async def test_cleanup_from_cron_with_redis_never_interrupts_an_upload_receiving_bytes(
    aiohttp_client, store_factory, store_kind, tmp_path, redis_url, prefix
):
    """expire_after=3; one PATCH of 900 KiB at 100 KiB/s on a server sharing Redis with
    `tusserver cleanup` run again and again meanwhile."""
    store = store_factory()
    config = Config(expire_after=3, cleanup_interval=3600, redis_url=redis_url, redis_prefix=prefix)
    client = await aiohttp_client(create_app(config, store=store))
    data = os.urandom(900 * KiB)
    path = await create(client, len(data))
    created = time.monotonic()
    cron = CleanupRuns(
        *cleanup_args(store_kind, store_factory, tmp_path),
        *("--expire-after", "3", "--redis-url", redis_url, "--redis-prefix", prefix),
    ).start()
    try:
        resp = await trickle_patch(client, path, 0, data, 100 * KiB)
        finished = time.monotonic()
    finally:
        await cron.stop()
    assert resp.status == 204, await resp.text()
    assert resp.headers["Upload-Offset"] == str(len(data))
    assert cron.completed_between(created + 3.5, finished) >= 1, cron.runs
    await assert_store_holds(store, store_factory, path.rsplit("/", 1)[1], data)
    assert sha256(await download(client, path)) == sha256(data)


async def test_with_redis_one_instance_cleans_per_interval(lockers, tmp_path):
    """Two instances over one store: the first to try runs the pass (and the orphan
    sweep), the other skips it without a single store call until the interval passed."""
    from tusserver import FileStore
    from tusserver.cleanup import clean_if_due
    from tusserver.info import UploadInfo

    config = Config(expire_after=0.2, cleanup_interval=1.0)
    a, b = await lockers(), await lockers()
    store_a, store_b = FileStore(str(tmp_path)), FileStore(str(tmp_path))
    await store_a.start()
    expired = UploadInfo("e" * 32, 10, expires=time.time() - 1)
    await store_a.create(expired)
    os.utime(tmp_path / ".unfinished" / expired.id, (time.time() - 5, time.time() - 5))
    listed: list[str] = []
    original = store_b.list_unfinished

    def counting(created_before):
        listed.append("b")
        return original(created_before)

    store_b.list_unfinished = counting
    assert await clean_if_due(store_a, config, a) == 1
    assert await clean_if_due(store_b, config, b) is None
    assert await clean_if_due(store_a, config, a) is None  # the lease binds its taker too
    assert listed == []
    await asyncio.sleep(1.0)  # the lease (0.9 of the interval) ran out
    assert await clean_if_due(store_b, config, b) == 0
    assert listed == ["b"]
