"""Locks for several instances, on a real redis-server started for these tests:
leases, renewal, token checks, release requests over pub/sub, and two server
instances on one bucket taking alternate PATCHes of 20 concurrent uploads."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import sys
import uuid

import pytest
from redis.asyncio import Redis

from tests.conftest import free_port, stop_process, wait_for_port
from tests.hanging import HangingPatch, Received, wait_until
from tests.tus_client import create, head, patch, sha256
from tusserver import Config, create_app
from tusserver.app import HANDLERS_KEY
from tusserver.errors import TusError
from tusserver.redis_lock import RedisLocker

MiB = 1 << 20


@pytest.fixture(scope="module")
def redis_url():
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server; scripts/test does it)")
    port = free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port)
    yield f"redis://127.0.0.1:{port}/0"
    stop_process(proc)


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
from tusserver.redis_lock import RedisLocker

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
