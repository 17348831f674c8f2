"""Python hooks over real HTTP: each event's effect, rejections, changes, and failures
that never corrupt an upload nor leak details to the client."""

from __future__ import annotations

import asyncio
import logging
import os
import threading

import pytest

from tests.hanging import wait_until
from tests.stored import assert_store_holds
from tests.tus_client import OCTETS, TUS, create, download, head, patch, sha256
from tusserver import Config, FileStore, HookRejected, HookResult, Hooks, create_app
from tusserver.hooks import EVENTS, clean_message

MiB = 1 << 20
PATIENCE = 30  # seconds; a bound against hanging, not a timing assertion
NAME = "cmVwb3J0LnBkZg=="  # base64("report.pdf")


class Recorder:
    """Registers on every event and keeps what each hook saw."""

    def __init__(self, hooks: Hooks) -> None:
        self.events = []
        for name in EVENTS:
            hooks.on(name, self.record)

    def record(self, event) -> None:
        self.events.append(event)

    def types(self) -> list[str]:
        return [e.type for e in self.events]

    def of(self, name: str):
        return [e for e in self.events if e.type == name]


async def start(aiohttp_client, store, config: Config | None = None, hooks: Hooks | None = None):
    return await aiohttp_client(create_app(config or Config(), store=store, hooks=hooks))


def no_uploads(store_factory, tmp_path) -> bool:
    if hasattr(store_factory, "bucket"):
        import boto3

        s3 = boto3.client("s3", endpoint_url=store_factory.endpoint)
        return not s3.list_objects_v2(Bucket=store_factory.bucket).get("Contents") and not s3.list_multipart_uploads(
            Bucket=store_factory.bucket
        ).get("Uploads")
    directory = tmp_path / "uploads"
    return not directory.exists() or not any(directory.iterdir())


async def test_every_event_fires_once_in_order_with_upload_and_request(aiohttp_client, store_factory):
    hooks = Hooks()
    seen = Recorder(hooks)
    client = await start(aiohttp_client, store_factory(), Config(progress_interval=0), hooks)
    data = os.urandom(1000)
    path = await create(client, len(data), Upload_Metadata=f"filename {NAME},private", X_Tenant="acme")
    upload_id = path.rsplit("/", 1)[1]
    await patch(client, path, 0, data)
    assert await download(client, path) == data
    assert (await client.delete(path, headers=TUS)).status == 204

    # post-* hooks run once the PATCH released the upload's lock: after its pre-finish.
    assert seen.types() == [
        "pre-create",
        "post-create",
        "pre-access",
        "pre-finish",
        "post-receive",
        "post-finish",
        "pre-access",
        "pre-get",
        "pre-access",
        "pre-terminate",
        "post-terminate",
    ]
    assert [e.action for e in seen.of("pre-access")] == ["patch", "get", "delete"]
    pre_create, post_create, _, pre_finish, receive, post_finish = seen.events[:6]
    assert pre_create.upload.id == upload_id
    assert pre_create.upload.length == 1000
    assert pre_create.upload.metadata == {"filename": "report.pdf", "private": None}
    assert pre_create.request.method == "POST"
    assert pre_create.request.uri == "/"
    assert pre_create.request.remote_addr == "127.0.0.1"
    assert pre_create.request.headers["X-Tenant"] == "acme"
    assert (post_create.upload.offset, receive.upload.offset, pre_finish.upload.offset) == (0, 1000, 1000)
    assert receive.request.method == "PATCH" and receive.request.uri == path
    assert (pre_finish.upload.finished, post_finish.upload.finished) == (False, True)
    storage = post_finish.upload.storage
    if storage["type"] == "file":
        assert storage["path"].endswith("/" + upload_id)
    else:
        assert (storage["bucket"], storage["key"]) == (store_factory.bucket, upload_id)
    assert seen.of("pre-get")[0].request.method == "GET"
    assert seen.of("post-terminate")[0].upload.id == upload_id


async def test_sync_and_async_callbacks_and_the_decorator_form(aiohttp_client, tmp_path):
    hooks = Hooks()
    calls = []

    @hooks.on("post-create")
    async def first(event):
        await asyncio.sleep(0)
        calls.append(("async", event.upload.id))

    hooks.on("post-create", lambda event: calls.append(("sync", event.upload.id)))
    client = await start(aiohttp_client, FileStore(str(tmp_path)), hooks=hooks)
    upload_id = (await create(client, 5)).rsplit("/", 1)[1]
    assert calls == [("async", upload_id), ("sync", upload_id)]
    with pytest.raises(ValueError, match="unknown hook event 'post-upload'"):
        hooks.on("post-upload", print)


async def test_pre_create_rejection_reaches_the_client_and_creates_nothing(aiohttp_client, store_factory, tmp_path):
    hooks = Hooks()

    @hooks.on("pre-create")
    def refuse(event):
        if event.upload.metadata.get("filename") == "report.pdf":
            raise HookRejected(402, "quota of acme\nis used up")

    client = await start(aiohttp_client, store_factory(), hooks=hooks)
    data = os.urandom(100)
    resp = await client.post(
        "/",
        data=data,
        headers={**TUS, "Upload-Length": "100", "Upload-Metadata": f"filename {NAME}", "Content-Type": OCTETS},
    )
    assert resp.status == 402
    assert await resp.text() == "quota of acme is used up\n"
    assert "Location" not in resp.headers
    assert no_uploads(store_factory, tmp_path)


@pytest.mark.parametrize(
    ("status", "message", "expected_status", "expected_body"),
    [
        (200, "fine?", 400, "fine?"),
        (302, "", 400, "request was rejected by a hook"),
        (700, "x" * 500, 599, "x" * 197 + "..."),
        (409, "line one\r\nline two\x00", 409, "line one line two"),
    ],
)
async def test_rejection_status_and_message_are_kept_within_limits(
    aiohttp_client, tmp_path, status, message, expected_status, expected_body
):
    hooks = Hooks()

    def refuse(event):
        raise HookRejected(status, message)

    hooks.on("pre-create", refuse)
    client = await start(aiohttp_client, FileStore(str(tmp_path)), hooks=hooks)
    resp = await client.post("/", headers={**TUS, "Upload-Length": "1"})
    assert resp.status == expected_status
    assert await resp.text() == expected_body + "\n"
    assert len(clean_message("y" * 10_000)) == 200


async def test_pre_create_changes_metadata_and_chooses_the_id_and_storage_key(aiohttp_client, store_factory):
    hooks = Hooks()

    @hooks.on("pre-create")
    async def rename(event):
        return HookResult(
            metadata={**event.upload.metadata, "owner": "acme"}, upload_id=f"acme-{event.upload.metadata['n']}"
        )

    store = store_factory()
    client = await start(aiohttp_client, store, hooks=hooks)
    data = os.urandom(3000)
    path = await create(client, len(data), Upload_Metadata="n MQ==")  # n = "1"
    assert path == "/acme-1"
    resp = await head(client, path)
    assert resp.headers["Upload-Metadata"] == "n MQ==,owner YWNtZQ=="
    await patch(client, path, 0, data)
    info = await store.get_info("acme-1")
    if info.storage["type"] == "file":
        assert info.storage["path"].endswith("/acme-1")
    else:
        assert info.storage["key"] == "acme-1"
    await assert_store_holds(store, store_factory, "acme-1", data)

    # The same id again is taken: 409, and the first upload is untouched.
    resp = await client.post("/", headers={**TUS, "Upload-Length": "5", "Upload-Metadata": "n MQ=="})
    assert resp.status == 409
    assert await resp.text() == "an upload with the id chosen by a hook already exists\n"
    assert sha256(await download(client, path)) == sha256(data)


@pytest.mark.parametrize(
    "result",
    [
        HookResult(upload_id="../../etc/passwd"),
        HookResult(upload_id=""),
        HookResult(metadata={"bad key": "x"}),
        HookResult(metadata={"n": 5}),  # type: ignore[dict-item]
    ],
)
async def test_pre_create_asking_for_an_invalid_change_is_a_logged_500(aiohttp_client, tmp_path, caplog, result):
    hooks = Hooks()
    hooks.on("pre-create", lambda event: result)
    client = await start(aiohttp_client, FileStore(str(tmp_path / "uploads")), hooks=hooks)
    resp = await client.post("/", headers={**TUS, "Upload-Length": "5"})
    assert resp.status == 500
    assert await resp.text() == "a server hook failed\n"
    assert "pre-create hook" in caplog.text
    assert not any((tmp_path / "uploads").iterdir())


async def test_a_failing_pre_hook_is_500_without_its_details(aiohttp_client, tmp_path, caplog):
    hooks = Hooks()

    def broken(event):
        raise RuntimeError("database password is hunter2")

    hooks.on("pre-create", broken)
    client = await start(aiohttp_client, FileStore(str(tmp_path / "uploads")), hooks=hooks)
    resp = await client.post("/", headers={**TUS, "Upload-Length": "5"})
    assert resp.status == 500
    text = await resp.text()
    assert text == "a server hook failed\n"
    assert "hunter2" in caplog.text  # the operator sees it in the log
    assert not any((tmp_path / "uploads").iterdir())


async def test_failing_post_hooks_are_logged_and_never_fail_the_request(aiohttp_client, tmp_path, caplog):
    hooks = Hooks()

    def broken(event):
        raise RuntimeError(f"{event.type} exploded")

    for name in ("post-create", "post-receive", "post-finish", "post-terminate"):
        hooks.on(name, broken)
    client = await start(aiohttp_client, FileStore(str(tmp_path)), hooks=hooks)
    data = os.urandom(50)
    path = await create(client, len(data))
    await patch(client, path, 0, data)
    assert await download(client, path) == data
    assert (await client.delete(path, headers=TUS)).status == 204
    for name in ("post-create", "post-receive", "post-finish", "post-terminate"):
        assert f"{name} exploded" in caplog.text


async def test_pre_finish_rejection_keeps_the_bytes_and_the_upload_unfinished(aiohttp_client, store_factory):
    hooks = Hooks()
    scans = []
    finished = []

    @hooks.on("pre-finish")
    def scan(event):
        scans.append(event.request.method)
        if len(scans) < 3:
            raise HookRejected(422, "virus scan failed")

    hooks.on("post-finish", lambda event: finished.append(event.upload.id))
    store = store_factory()
    client = await start(aiohttp_client, store, hooks=hooks)
    data = os.urandom(5 * MiB + 100)  # a part and a tail on S3
    path = await create(client, len(data))
    upload_id = path.rsplit("/", 1)[1]

    resp = await client.patch(path, data=data, headers={**TUS, "Upload-Offset": "0", "Content-Type": OCTETS})
    assert resp.status == 422
    assert await resp.text() == "virus scan failed\n"
    # HEAD finishes a fully stored upload, so it asks the hook again (and is refused too).
    assert (await head(client, path)).status == 422
    assert (await client.get(path)).status == 409  # not finished
    info = await store.get_info(upload_id)
    assert (info.offset, info.finished) == (len(data), False)
    await assert_store_holds(store, store_factory, upload_id, data)
    assert finished == []

    # The client asks again with an empty PATCH; this time the hook agrees.
    resp = await patch(client, path, len(data), b"")
    assert resp.headers["Upload-Offset"] == str(len(data))
    assert scans == ["PATCH", "HEAD", "PATCH"]
    assert finished == [upload_id]
    assert sha256(await download(client, path)) == sha256(data)
    await assert_store_holds(store, store_factory, upload_id, data)


async def test_post_finish_adds_response_headers_to_the_finishing_request_only(aiohttp_client, tmp_path):
    hooks = Hooks()
    hooks.on("post-finish", lambda event: HookResult(headers={"X-File-Url": f"https://cdn.example/{event.upload.id}"}))
    client = await start(aiohttp_client, FileStore(str(tmp_path)), hooks=hooks)
    data = os.urandom(20)
    path = await create(client, len(data))
    upload_id = path.rsplit("/", 1)[1]
    first = await patch(client, path, 0, data[:10])
    assert "X-File-Url" not in first.headers
    last = await patch(client, path, 10, data[10:])
    assert last.headers["X-File-Url"] == f"https://cdn.example/{upload_id}"

    # An upload finished at creation (length 0) gets them on its 201.
    resp = await client.post("/", headers={**TUS, "Upload-Length": "0"})
    assert resp.status == 201
    assert resp.headers["X-File-Url"].endswith(resp.headers["Location"].rsplit("/", 1)[1])


async def test_pre_terminate_rejection_keeps_the_upload(aiohttp_client, store_factory):
    hooks = Hooks()
    terminated = []

    @hooks.on("pre-terminate")
    def protect(event):
        if "keep" in event.upload.metadata:
            raise HookRejected(403, "this upload is protected")

    hooks.on("post-terminate", lambda event: terminated.append(event.upload.id))
    store = store_factory()
    client = await start(aiohttp_client, store, hooks=hooks)
    data = os.urandom(64)
    kept = await create(client, len(data), Upload_Metadata="keep")
    await patch(client, kept, 0, data)
    resp = await client.delete(kept, headers=TUS)
    assert resp.status == 403
    assert await resp.text() == "this upload is protected\n"
    assert await download(client, kept) == data
    assert terminated == []

    gone = await create(client, 10)
    assert (await client.delete(gone, headers=TUS)).status == 204
    assert terminated == [gone.rsplit("/", 1)[1]]
    assert (await head(client, gone)).status == 404


async def test_pre_get_decides_downloads(aiohttp_client, tmp_path):
    hooks = Hooks()

    @hooks.on("pre-get")
    def only_owner(event):
        if event.request.headers.get("X-User") != "owner":
            raise HookRejected(404, "no such file")

    client = await start(aiohttp_client, FileStore(str(tmp_path)), Config(downloads_require_hook=True), hooks)
    data = os.urandom(30)
    path = await create(client, len(data))
    await patch(client, path, 0, data)
    resp = await client.get(path)
    assert (resp.status, await resp.text()) == (404, "no such file\n")
    resp = await client.get(path, headers={"X-User": "owner"})
    assert (resp.status, await resp.read()) == (200, data)


async def test_downloads_requiring_a_hook_are_403_without_one(aiohttp_client, tmp_path):
    client = await start(aiohttp_client, FileStore(str(tmp_path)), Config(downloads_require_hook=True))
    path = await create(client, 3)
    await patch(client, path, 0, b"abc")
    resp = await client.get(path)
    assert resp.status == 403
    assert await resp.text() == "downloads need the approval of a pre-get hook\n"


async def test_post_receive_reports_progress_during_a_patch(aiohttp_client, tmp_path):
    hooks = Hooks()
    offsets: list[int] = []
    reported = {n: asyncio.Event() for n in (1000, 2000, 3000)}

    def progress(event):
        offsets.append(event.upload.offset)
        reported[event.upload.offset].set()

    hooks.on("post-receive", progress)
    client = await start(aiohttp_client, FileStore(str(tmp_path)), Config(progress_interval=0.01), hooks)
    data = os.urandom(3 * 1000)
    path = await create(client, len(data))

    async def body():
        # Each chunk waits until it was reported: progress arrives while the PATCH runs.
        for end in (1000, 2000, 3000):
            yield data[end - 1000 : end]
            await asyncio.wait_for(reported[end].wait(), PATIENCE)

    resp = await client.patch(path, data=body(), headers={**TUS, "Upload-Offset": "0", "Content-Type": OCTETS})
    assert resp.status == 204
    # Throttled: a report only when the offset moved; the last one comes with the end of the PATCH.
    assert offsets[:3] == [1000, 2000, 3000]
    assert set(offsets[3:]) <= {3000}
    assert offsets == sorted(offsets)
    assert await download(client, path) == data


async def test_post_receive_with_no_interval_reports_once_per_patch(aiohttp_client, tmp_path):
    hooks = Hooks()
    offsets: list[int] = []
    hooks.on("post-receive", lambda event: offsets.append(event.upload.offset))
    client = await start(aiohttp_client, FileStore(str(tmp_path)), Config(progress_interval=0), hooks)
    path = await create(client, 10)
    await patch(client, path, 0, b"01234")
    await patch(client, path, 5, b"56789")
    assert offsets == [5, 10]


async def test_a_final_upload_fires_create_and_finish_hooks(aiohttp_client, tmp_path):
    hooks = Hooks()
    seen = Recorder(hooks)
    client = await start(aiohttp_client, FileStore(str(tmp_path)), hooks=hooks)
    first = await create(client, 3, Upload_Concat="partial")
    await patch(client, first, 0, b"abc")
    second = await create(client, 2, Upload_Concat="partial")
    await patch(client, second, 0, b"de")
    seen.events.clear()
    resp = await client.post("/", headers={**TUS, "Upload-Concat": f"final;{first} {second}"})
    assert resp.status == 201
    final_id = resp.headers["Location"].rsplit("/", 1)[1]
    assert seen.types() == ["pre-create", "post-create", "post-finish"]
    assert seen.events[0].upload.concat == "final"
    assert seen.events[0].upload.partials == [first[1:], second[1:]]
    assert seen.events[2].upload.id == final_id and seen.events[2].upload.finished


async def test_hooks_see_a_copy_of_the_upload(aiohttp_client, tmp_path):
    hooks = Hooks()

    def meddle(event):
        event.upload.metadata["sneaky"] = "yes"
        event.upload.length = 1

    hooks.on("pre-create", meddle)
    client = await start(aiohttp_client, FileStore(str(tmp_path)), hooks=hooks)
    path = await create(client, 5)
    resp = await head(client, path)
    assert resp.headers["Upload-Length"] == "5"
    assert "Upload-Metadata" not in resp.headers


async def test_logs_name_the_failing_hook(aiohttp_client, tmp_path, caplog):
    caplog.set_level(logging.ERROR, "tusserver.hooks")
    hooks = Hooks()

    def notify_billing(event):
        raise KeyError("plan")

    hooks.on("post-create", notify_billing)
    client = await start(aiohttp_client, FileStore(str(tmp_path)), hooks=hooks)
    await create(client, 1)
    assert "post-create hook" in caplog.text and "notify_billing" in caplog.text


# -- hooks never hold an upload hostage (issue 11) ---------------------------------------


async def test_a_python_hook_that_hangs_is_cut_off_at_hooks_timeout(aiohttp_client, tmp_path, caplog):
    hooks = Hooks()

    @hooks.on("pre-create")
    async def hangs(event):
        await asyncio.Event().wait()

    @hooks.on("post-finish")
    def blocks(event):  # sync, and stuck (e.g. an HTTP call without a timeout)
        threading.Event().wait(3)

    client = await start(aiohttp_client, FileStore(str(tmp_path)), Config(hooks_timeout=0.5), hooks)
    resp = await asyncio.wait_for(client.post("/", headers={**TUS, "Upload-Length": "3"}), PATIENCE)
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "5"
    assert "pre-create hook" in caplog.text and "did not return within 0.5s" in caplog.text

    hooks.callbacks("pre-create").clear()
    path = await create(client, 3)
    resp = await asyncio.wait_for(patch(client, path, 0, b"abc"), PATIENCE)  # post-finish gave up on
    assert resp.headers["Upload-Offset"] == "3"
    assert "post-finish hook" in caplog.text


async def test_a_sync_hook_runs_off_the_event_loop(aiohttp_client, tmp_path):
    """While a sync pre-create hook waits, the server still answers other requests."""
    hooks = Hooks()
    entered, answered = threading.Event(), threading.Event()
    saw = []

    @hooks.on("pre-create")
    def slow(event):
        entered.set()
        saw.append(answered.wait(5))  # set only once an OPTIONS was answered meanwhile

    client = await start(aiohttp_client, FileStore(str(tmp_path)), Config(hooks_timeout=10), hooks)
    creating = asyncio.create_task(create(client, 3))
    await wait_until(entered.is_set, "the hook to start")
    resp = await client.options("/")
    assert resp.status == 200
    answered.set()
    await creating
    assert saw == [True]


@pytest.mark.parametrize("event", ["post-receive", "post-finish"])
async def test_post_hooks_run_after_the_upload_lock_is_released(aiohttp_client, store_factory, event):
    """A slow post-* hook of a PATCH does not hold the upload: a HEAD meanwhile gets its
    state at once (not 423), and the PATCH then answers as usual."""
    hooks = Hooks()
    running, done = asyncio.Event(), asyncio.Event()

    @hooks.on(event)
    async def slow(hook_event):
        running.set()
        await done.wait()

    config = Config(lock_timeout=0.3, progress_interval=0)
    client = await start(aiohttp_client, store_factory(), config, hooks)
    data = os.urandom(1000)
    length = len(data) if event == "post-finish" else len(data) + 1
    path = await create(client, length)
    patching = asyncio.create_task(patch(client, path, 0, data))
    await asyncio.wait_for(running.wait(), PATIENCE)
    resp = await head(client, path)
    assert resp.status == 200  # 423: the PATCH still held the lock
    assert resp.headers["Upload-Offset"] == str(len(data))
    assert not patching.done()  # still delivering its post-* event
    done.set()
    resp = await asyncio.wait_for(patching, PATIENCE)
    assert resp.headers["Upload-Offset"] == str(len(data))
