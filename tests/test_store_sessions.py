"""Upload sessions (store.open): what one locked request learns lives in its session,
never in the store between requests; sessions opened one after the other see each
other's changes."""

from __future__ import annotations

import dataclasses
import hashlib
import random

from tests.stored import assert_store_holds
from tusserver import Config, create_app
from tusserver.info import UploadInfo
from tusserver.locking import MemoryLocker
from tusserver.protocol import new_upload_id
from tusserver.stores import s3 as s3_module
from tusserver.stores.base import SessionStore, Upload, VersionedStore
from tusserver.stores.s3 import S3Store, S3Upload

MiB = 1 << 20
TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


async def chunks(data: bytes, size: int = 256 * 1024):
    for start in range(0, len(data), size):
        yield data[start : start + size]


def session_objects(value: object, path: str, found: list[str], seen: set[int]) -> None:
    """Append to `found` the path of every UploadInfo, S3 state or session inside `value`."""
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, (UploadInfo, s3_module._State, S3Upload)):
        found.append(f"{path}: {type(value).__name__}")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            session_objects(item, f"{path}[{key!r}]", found, seen)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for index, item in enumerate(value):
            session_objects(item, f"{path}[{index}]", found, seen)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            session_objects(getattr(value, field.name), f"{path}.{field.name}", found, seen)


async def test_no_per_request_state_is_left_in_the_s3_store_between_requests(
    aiohttp_client, moto_endpoint, bucket, tmp_path, monkeypatch
):
    """After PATCHes, HEADs and finishes of many uploads, nothing of a request's state is
    left in the store: no UploadInfo, no S3 state, no session, except in the bounded cache
    of states known current (`_known`)."""
    monkeypatch.setattr(s3_module, "KNOWN_STATES", 4)
    store = S3Store(bucket, endpoint_url=moto_endpoint, path_style=True, temp_dir=str(tmp_path), part_size=5 * MiB)
    client = await aiohttp_client(create_app(Config(), store=store))
    uploads = {}
    for n in range(12):
        data = payload(6 * MiB + n, seed=n) if n % 3 == 0 else payload(1000 + n, seed=n)
        async with client.post("/", headers={**TUS, "Upload-Length": str(len(data))}) as resp:
            assert resp.status == 201
            uploads[resp.headers["Location"].rsplit("/", 1)[1]] = data
    for upload_id, data in uploads.items():
        for start, end in ((0, len(data) - 100), (len(data) - 100, len(data) - 100)):  # the second: empty
            headers = {**TUS, "Upload-Offset": str(start), "Content-Type": OCTETS}
            async with client.patch(f"/{upload_id}", data=data[start:end], headers=headers) as resp:
                assert (resp.status, resp.headers["Upload-Offset"]) == (204, str(end))
        async with client.head(f"/{upload_id}", headers=TUS) as resp:  # read, and not followed by a PATCH
            assert resp.headers["Upload-Offset"] == str(len(data) - 100)
    for upload_id, data in list(uploads.items())[::2]:
        headers = {**TUS, "Upload-Offset": str(len(data) - 100), "Content-Type": OCTETS}
        async with client.patch(f"/{upload_id}", data=data[-100:], headers=headers) as resp:
            assert (resp.status, resp.headers["Upload-Offset"]) == (204, str(len(data)))
        async with client.get(f"/{upload_id}") as resp:
            assert hashlib.sha256(await resp.read()).hexdigest() == hashlib.sha256(data).hexdigest()

    found: list[str] = []
    seen: set[int] = set()
    for name, value in vars(store).items():
        if name != "_known":
            session_objects(value, name, found, seen)
    assert found == []
    assert len(store._known) <= 4
    assert store._reading == {}
    assert not hasattr(store, "_states") and not hasattr(store, "_completed")


async def test_sessions_opened_one_after_the_other_under_the_lock_see_each_others_changes(store_factory):
    store = store_factory(part_size=5 * MiB)  # the file store takes no options
    locker = MemoryLocker()
    if isinstance(store, VersionedStore):
        store.use_versions(locker)  # as the server does: sessions start from the states it kept
    assert isinstance(store, SessionStore)
    data = payload(12 * MiB + 5, seed=40)
    await store.start()
    try:
        info = UploadInfo(new_upload_id(), None)
        await store.create(info)
        async with locker.lock(info.id):
            first = await store.open(info.id)
            assert isinstance(first, Upload) and first.info.offset == 0
            assert await first.append(chunks(data[: 7 * MiB])) == 7 * MiB
            assert first.info.offset == 7 * MiB

            second = await store.open(info.id)
            assert (second.info.offset, second.info.length) == (7 * MiB, None)
            await second.set_length(len(data))

            third = await store.open(info.id)
            assert (third.info.offset, third.info.length) == (7 * MiB, len(data))
            assert await third.append(chunks(data[7 * MiB :])) == len(data)  # complete; finished by the next

            fourth = await store.open(info.id)
            assert (fourth.info.offset, fourth.info.finished) == (len(data), False)
            await fourth.finish()

            fifth = await store.open(info.id)
            assert (fifth.info.offset, fifth.info.finished) == (len(data), True)
        await assert_store_holds(store, store_factory, info.id, data)
        assert (await store.get_info(info.id)).finished
    finally:
        await store.close()
