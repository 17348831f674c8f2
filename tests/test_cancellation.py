"""A PATCH cancelled while its store still works. aiohttp cancels the handler when the
client drops (handler_cancellation, on in the test server), and again at the end of
shutdown_timeout. The upload's lock is held until the store call has really ended, no
temp file survives, and the stored bytes stay consistent."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import threading

from aiohttp import web

from tests.hanging import HangingPatch, Received, wait_until
from tests.stored import assert_store_holds
from tests.tus_client import create, head
from tusserver import Config, FileStore, create_app
from tusserver.info import UploadInfo
from tusserver.protocol import new_upload_id
from tusserver.stores.s3 import S3Store

MiB = 1 << 20


class PatchTasks:
    """A middleware noting the task that handles each PATCH, so a test can cancel it
    again the way aiohttp does at the end of shutdown_timeout."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task] = []

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        if request.method == "PATCH":
            self.tasks.append(asyncio.current_task())
        return await handler(request)


async def start(aiohttp_client, store) -> tuple:
    # lock_timeout: a HEAD that finds the lock held answers 423 after 0.3 s.
    app = create_app(Config(lock_timeout=0.3), store=store)
    probe = PatchTasks()
    app.middlewares.append(probe.middleware)
    return await aiohttp_client(app), probe


async def drop_and_cancel_again(sending: HangingPatch, probe: PatchTasks) -> asyncio.Task:
    """The client drops (aiohttp cancels the handler), then a second cancel comes."""
    handler = probe.tasks[-1]
    sending.close()
    await wait_until(lambda: handler.cancelling() > 0 or handler.done(), "aiohttp to cancel the handler")
    handler.cancel()
    return handler


async def test_a_cancelled_checksum_patch_holds_the_lock_until_the_append_thread_ended(
    aiohttp_client, tmp_path, monkeypatch
):
    from tusserver.stores import file as file_store

    entered, go_on = threading.Event(), threading.Event()
    append_file = file_store._append_file

    def held_append(src, target: str, offset: int) -> None:
        entered.set()
        go_on.wait(30)
        append_file(src, target, offset)

    monkeypatch.setattr(file_store, "_append_file", held_append)
    directory = tmp_path / "uploads"
    client, probe = await start(aiohttp_client, FileStore(str(directory)))
    data = os.urandom(3 * MiB)
    path = await create(client, len(data) + 10)
    digest = base64.b64encode(hashlib.sha1(data).digest()).decode()
    sending = await HangingPatch.start(
        client.host, client.port, path, 0, len(data), Upload_Checksum=f"sha1 {digest}"
    )
    await sending.send(data)
    await wait_until(entered.is_set, "the verified body's append to start")
    handler = await drop_and_cancel_again(sending, probe)

    assert (await head(client, path)).status == 423  # the thread is appending: still locked
    go_on.set()
    await wait_until(handler.done, "the cancelled handler to end")
    resp = await head(client, path)
    assert (resp.status, resp.headers["Upload-Offset"]) == (200, str(len(data)))
    upload_id = path.rsplit("/", 1)[1]
    assert hashlib.sha256((directory / upload_id).read_bytes()).digest() == hashlib.sha256(data).digest()
    assert [name for name in os.listdir(directory) if ".tmp-" in name] == []


def s3_store(bucket: str, endpoint: str, spool) -> S3Store:
    # One part in flight per upload: the second piece waits for the first one's slot.
    return S3Store(
        bucket, endpoint_url=endpoint, path_style=True, temp_dir=str(spool), part_size=5 * MiB, upload_concurrency=1
    )


def hold_parts(store: S3Store) -> tuple[asyncio.Event, asyncio.Event]:
    """UploadPart waits for the returned `gate`; `started` is set when the first one begins."""
    started, gate = asyncio.Event(), asyncio.Event()
    upload_part = store._upload_part

    async def held(key, upload, number, piece):
        started.set()
        await gate.wait()
        return await upload_part(key, upload, number, piece)

    store._upload_part = held
    return started, gate


async def test_a_cancelled_patch_holds_the_lock_until_s3_has_its_parts(
    aiohttp_client, bucket, moto_endpoint, tmp_path
):
    """Part 1 is being uploaded and part 2 waits for its slot when the client drops and a
    second cancel follows: both parts are stored before anyone else gets the upload."""
    spool = tmp_path / "spool"
    store = s3_store(bucket, moto_endpoint, spool)
    started, gate = hold_parts(store)
    client, probe = await start(aiohttp_client, store)
    received = Received(store)
    data = os.urandom(10 * MiB)
    path = await create(client, 20 * MiB)
    sending = await HangingPatch.start(client.host, client.port, path, 0, 20 * MiB)
    await sending.send(data)
    await received.at_least(len(data))
    await started.wait()
    handler = await drop_and_cancel_again(sending, probe)

    assert (await head(client, path)).status == 423  # parts are on their way: still locked
    gate.set()
    await wait_until(handler.done, "the cancelled handler to end")
    resp = await head(client, path)
    assert (resp.status, resp.headers["Upload-Offset"]) == (200, str(len(data)))
    factory = type("Factory", (), {"endpoint": moto_endpoint})
    await assert_store_holds(store, factory, path.rsplit("/", 1)[1], data)
    assert os.listdir(spool) == []


async def test_cancelling_an_s3_append_while_a_piece_waits_for_a_slot_keeps_it_and_leaks_nothing(
    bucket, moto_endpoint, tmp_path
):
    """The store on its own (an embedder cancels its task): the piece that waited for an
    upload slot is neither lost nor left behind as a temp file."""
    spool = tmp_path / "spool"
    store = s3_store(bucket, moto_endpoint, spool)
    started, gate = hold_parts(store)
    await store.start()
    try:
        info = UploadInfo(new_upload_id(), 20 * MiB)
        await store.create(info)
        data = os.urandom(10 * MiB)
        yielded = 0

        async def body():
            nonlocal yielded
            for start_at in range(0, len(data), MiB):
                yielded += MiB
                yield data[start_at : start_at + MiB]
            await asyncio.Event().wait()  # the client sends no more

        append = asyncio.create_task(store.append(info, body()))
        await started.wait()
        await wait_until(lambda: yielded == len(data), "the second piece to be spooled")
        await asyncio.sleep(0.05)  # it waits for the slot part 1 holds
        append.cancel()
        await asyncio.sleep(0.05)
        assert not append.done()  # the part in flight is awaited
        gate.set()
        try:
            await append
        except asyncio.CancelledError:
            pass
        assert os.listdir(spool) == []
        assert (await store.get_info(info.id)).offset == len(data)
        factory = type("Factory", (), {"endpoint": moto_endpoint})
        await assert_store_holds(store, factory, info.id, data)
    finally:
        await store.close()
