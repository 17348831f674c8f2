"""The disk store with storage keys: the bytes of a finished upload land at `file_dir/<key>`
by one rename, never half-written there, never outside `file_dir`; two uploads in progress
never share a key; a reused key's newer file survives the older upload's termination."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import multiprocessing
import os

import pytest

from tests.tus_client import OCTETS, TUS, create, download, head, patch, sha256
from tusserver import Config, FileStore, MemoryLocker, create_app
from tusserver import storage_errors as storage
from tusserver.cleanup import clean_expired
from tusserver.info import UploadInfo
from tusserver.placement import Placement
from tusserver.protocol import new_upload_id
from tusserver.stores.base import FileDownload

KEY = "alice/2026/report.pdf"


async def body(data: bytes):
    yield data


async def new_store(directory) -> FileStore:
    store = FileStore(str(directory))
    await store.start()
    return store


async def upload(store: FileStore, data: bytes, key: str | None = None, *, finish: bool = True) -> UploadInfo:
    info = UploadInfo(id=new_upload_id(), length=len(data))
    await store.create(info, Placement(key) if key is not None else None)
    info.offset = await store.append(info, body(data))
    if finish:
        await store.finish(info)
    return info


def file_sha(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def claim_of(directory, key: str) -> str:
    with open(os.path.join(directory, ".keys", hashlib.sha256(key.encode()).hexdigest())) as f:
        return f.read()


def tree(directory) -> list[str]:
    """Every path under `directory`, relative, sorted (directories end with /)."""
    found = []
    for root, dirs, files in os.walk(directory):
        rel = os.path.relpath(root, directory)
        found += [os.path.normpath(os.path.join(rel, d)) + "/" for d in dirs]
        found += [os.path.normpath(os.path.join(rel, f)) for f in files]
    return sorted(found)


# -- FileStore directly ------------------------------------------------------------------


async def test_keyed_upload_ends_as_exactly_the_file_at_its_key(tmp_path):
    store = await new_store(tmp_path)
    data = os.urandom(300_000)
    info = await upload(store, data[:100_000], KEY, finish=False)
    info.length = len(data)
    await store.save_info(info)
    # In progress: the bytes are under the id, nothing at the key.
    assert not (tmp_path / "alice").exists()
    assert os.path.getsize(tmp_path / info.id) == 100_000
    assert (await store.get_info(info.id)).offset == 100_000
    info.offset = await store.append(info, body(data[100_000:]))
    await store.finish(info)

    assert file_sha(tmp_path / KEY) == sha256(data)
    assert not (tmp_path / info.id).exists()
    again = await store.get_info(info.id)
    assert (again.finished, again.offset) == (True, 300_000)
    assert again.storage == {"type": "file", "path": str(tmp_path / KEY), "key": KEY}
    assert await store.download(again) == FileDownload(str(tmp_path / KEY))
    assert claim_of(tmp_path, KEY) == f"{info.id}\n"
    assert not (tmp_path / ".unfinished" / info.id).exists()

    await store.terminate(again)
    # The file, its claim and the directories made for it are gone.
    assert tree(tmp_path) == [".keys/"]
    with pytest.raises(storage.NotFound):
        await store.get_info(info.id)


async def test_default_placement_is_stored_under_the_id_as_before(tmp_path):
    store = await new_store(tmp_path)
    info = UploadInfo(id=new_upload_id(), length=3)
    await store.create(info, Placement(info.id))
    assert info.storage == {"type": "file", "path": str(tmp_path / info.id)}
    info.offset = await store.append(info, body(b"abc"))
    await store.finish(info)
    assert file_sha(tmp_path / info.id) == sha256(b"abc")
    assert not (tmp_path / ".keys").exists()


async def test_second_upload_in_progress_on_a_key_is_key_taken_and_leaves_nothing(tmp_path):
    store = await new_store(tmp_path)
    first = await upload(store, b"first", KEY, finish=False)
    before = tree(tmp_path)
    claim = claim_of(tmp_path, KEY)
    second = UploadInfo(id=new_upload_id(), length=6)
    with pytest.raises(storage.KeyTaken):
        await store.create(second, Placement(KEY))
    assert tree(tmp_path) == before  # no data file, .info or unfinished marker of the second
    assert claim_of(tmp_path, KEY) == claim == f"{first.id}\n"
    # Once the first finished, the key may be reused.
    await store.finish(first)
    await store.create(second, Placement(KEY))
    assert claim_of(tmp_path, KEY) == f"{second.id}\n{first.id}\n"


async def test_reused_key_terminating_the_older_upload_keeps_the_newer_file(tmp_path):
    store = await new_store(tmp_path)
    old_data, new_data = os.urandom(5000), os.urandom(7000)
    old = await upload(store, old_data, KEY)
    new = await upload(store, new_data[:1000], KEY, finish=False)
    new.length = len(new_data)
    await store.save_info(new)
    # While the newer one is in progress, the older one's bytes are still served.
    assert await store.download(await store.get_info(old.id)) == FileDownload(str(tmp_path / KEY))
    assert file_sha(tmp_path / KEY) == sha256(old_data)
    new.offset = await store.append(new, body(new_data[1000:]))
    await store.finish(new)
    assert file_sha(tmp_path / KEY) == sha256(new_data)

    # The older upload is finished, its bytes replaced: HEAD still answers, GET is 404.
    stale = await store.get_info(old.id)
    assert (stale.finished, stale.offset) == (True, 5000)
    with pytest.raises(storage.NotFound):
        await store.download(stale)
    await store.terminate(stale)
    assert file_sha(tmp_path / KEY) == sha256(new_data)
    assert claim_of(tmp_path, KEY) == f"{new.id}\n"
    assert file_sha((await store.download(await store.get_info(new.id))).path) == sha256(new_data)
    assert not (tmp_path / f"{old.id}.info").exists()


async def test_terminating_the_older_upload_while_the_newer_is_in_progress(tmp_path):
    store = await new_store(tmp_path)
    old = await upload(store, b"old bytes", KEY)
    new = await upload(store, b"new", KEY, finish=False)
    # The older upload's bytes are still at the key: they are its own to remove.
    await store.terminate(await store.get_info(old.id))
    assert not (tmp_path / KEY).exists()
    assert claim_of(tmp_path, KEY) == f"{new.id}\n"
    await store.finish(new)
    assert file_sha(tmp_path / KEY) == sha256(b"new")


async def test_terminating_the_newer_upload_in_progress_gives_the_key_back(tmp_path):
    store = await new_store(tmp_path)
    old = await upload(store, b"old bytes", KEY)
    new = await upload(store, b"new", KEY, finish=False)
    await store.terminate(await store.get_info(new.id))
    # It never wrote to the key: the older upload's file and claim are as they were.
    assert file_sha(tmp_path / KEY) == sha256(b"old bytes")
    assert claim_of(tmp_path, KEY) == f"{old.id}\n"
    assert file_sha((await store.download(await store.get_info(old.id))).path) == sha256(b"old bytes")
    # And the key is free for another upload again, not taken by the terminated one.
    await upload(store, b"third", KEY)
    assert file_sha(tmp_path / KEY) == sha256(b"third")


async def test_key_of_a_vanished_holder_is_taken_over(tmp_path):
    store = await new_store(tmp_path)
    gone = await upload(store, b"x", KEY, finish=False)
    os.remove(tmp_path / f"{gone.id}.info")  # removed by hand: its claim names nobody
    os.remove(tmp_path / gone.id)
    info = await upload(store, b"taken over", KEY)
    assert claim_of(tmp_path, KEY) == f"{info.id}\n"
    assert file_sha(tmp_path / KEY) == sha256(b"taken over")


@pytest.mark.parametrize(
    "key",
    ["../outside", "a/../../outside", "/tmp/outside", ".keys/x", ".owners/x", "a//b", "a\\b", "x\x00y", "a/./b"],
)
async def test_bad_keys_are_refused_before_anything_is_written(tmp_path, key, caplog):
    store = await new_store(tmp_path / "files")
    info = UploadInfo(id=new_upload_id(), length=1)
    with caplog.at_level(logging.ERROR, logger="tusserver.stores"), pytest.raises(storage.BadPlacement):
        await store.create(info, Placement(key))
    assert tree(tmp_path) == ["files/"]
    assert info.id in caplog.text


async def test_key_named_like_another_upload_or_its_state_is_refused(tmp_path):
    store = await new_store(tmp_path)
    other = await upload(store, b"other", finish=False)
    for key in (other.id, f"{other.id}.info", f"{other.id}.part"):
        with pytest.raises(storage.BadPlacement):
            await store.create(UploadInfo(id=new_upload_id(), length=1), Placement(key))
    assert sorted(os.listdir(tmp_path)) == sorted([other.id, f"{other.id}.info", ".unfinished"])
    assert file_sha(tmp_path / other.id) == sha256(b"other")


async def test_a_bucket_is_refused_by_the_disk_store(tmp_path):
    store = await new_store(tmp_path)
    with pytest.raises(storage.BadPlacement):
        await store.create(UploadInfo(id=new_upload_id(), length=1), Placement("a/b", bucket="other"))
    assert os.listdir(tmp_path) == []


async def test_symlinked_subdirectory_is_refused_and_nothing_is_written_outside(tmp_path, caplog):
    files, outside = tmp_path / "files", tmp_path / "outside"
    outside.mkdir()
    store = await new_store(files)
    os.symlink(outside, files / "evil")
    with caplog.at_level(logging.ERROR, logger="tusserver.stores"), pytest.raises(storage.BadPlacement):
        await store.create(UploadInfo(id=new_upload_id(), length=1), Placement("evil/x"))
    assert os.listdir(outside) == []
    assert sorted(os.listdir(files)) == ["evil"]
    assert str(outside) not in caplog.text  # the log names the key, never a path outside

    # A symlink swapped in after the creation: the finish is refused, the bytes stay home.
    info = await upload(store, b"secret", "late/deeper/x", finish=False)
    os.mkdir(outside / "deeper")
    os.symlink(outside, files / "late")
    with pytest.raises(storage.BadPlacement):
        await store.finish(info)
    assert tree(outside) == ["deeper/"]
    assert info.finished is False
    again = await store.get_info(info.id)
    assert (again.finished, again.offset, again.storage["path"]) == (False, 6, str(files / info.id))
    assert file_sha(files / info.id) == sha256(b"secret")


async def test_a_file_or_directory_in_the_way_is_bad_placement(tmp_path, caplog):
    store = await new_store(tmp_path)
    (tmp_path / "a.txt").write_bytes(b"not a directory")
    with pytest.raises(storage.BadPlacement):
        await store.create(UploadInfo(id=new_upload_id(), length=1), Placement("a.txt/b"))
    (tmp_path / "d.dir" / "x").mkdir(parents=True)
    with pytest.raises(storage.BadPlacement):
        await store.create(UploadInfo(id=new_upload_id(), length=1), Placement("d.dir/x"))
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "d.dir"]

    # In the way only at finish: refused (logged, naming the upload), the upload stays
    # unfinished with every byte, and finishes once the way is clear.
    info = await upload(store, b"payload", "b.dir/c.bin", finish=False)
    (tmp_path / "b.dir").write_bytes(b"a file now")
    with caplog.at_level(logging.ERROR, logger="tusserver.stores"), pytest.raises(storage.BadPlacement):
        await store.finish(info)
    assert f"upload {info.id}: storage key 'b.dir/c.bin' refused" in caplog.text
    assert (await store.get_info(info.id)).finished is False
    os.remove(tmp_path / "b.dir")
    info = await store.get_info(info.id)
    await store.finish(info)
    assert file_sha(tmp_path / "b.dir" / "c.bin") == sha256(b"payload")


async def test_crash_between_info_and_rename_is_completed_on_the_next_read(tmp_path):
    store = await new_store(tmp_path)
    data = os.urandom(4096)
    info = await upload(store, data, KEY, finish=False)
    # What finish() leaves when the process dies between saving .info and the rename.
    info.finished = True
    info.storage["path"] = str(tmp_path / KEY)
    await store.save_info(info)
    assert not (tmp_path / KEY).exists()

    restarted = await new_store(tmp_path)
    again = await restarted.get_info(info.id)
    assert (again.finished, again.offset, again.storage["path"]) == (True, 4096, str(tmp_path / KEY))
    assert file_sha(tmp_path / KEY) == sha256(data)
    assert not (tmp_path / info.id).exists()


async def test_crash_between_info_and_rename_then_key_taken_serves_from_the_id(tmp_path):
    store = await new_store(tmp_path)
    info = await upload(store, b"crashed", KEY, finish=False)
    info.finished = True
    info.storage["path"] = str(tmp_path / KEY)
    await store.save_info(info)
    newer = await upload(store, b"newer", KEY, finish=False)  # the finished holder's key is taken over
    again = await store.get_info(info.id)
    assert (again.offset, again.storage["path"]) == (7, str(tmp_path / info.id))
    assert file_sha((await store.download(again)).path) == sha256(b"crashed")
    await store.finish(newer)
    assert file_sha(tmp_path / KEY) == sha256(b"newer")
    assert file_sha((await store.download(await store.get_info(info.id))).path) == sha256(b"crashed")


async def test_concatenation_into_a_key(tmp_path):
    store = await new_store(tmp_path)
    one, two = os.urandom(3000), os.urandom(2000)
    partials = []
    for data in (one, two):
        partial = await upload(store, data, finish=False)
        partial.concat = "partial"
        await store.finish(partial)
        partials.append(partial)
    final = UploadInfo(id=new_upload_id(), length=None, concat="final", partials=[p.id for p in partials])
    await store.create(final, Placement("joined/all.bin"))
    await store.concatenate(final, partials)
    assert file_sha(tmp_path / "joined" / "all.bin") == sha256(one + two)
    assert not (tmp_path / final.id).exists()
    again = await store.get_info(final.id)
    assert (again.finished, again.offset, again.length) == (True, 5000, 5000)


async def test_keys_and_their_directories_are_never_orphans_nor_uploads(tmp_path):
    store = await new_store(tmp_path)
    top = await upload(store, b"", "empty.txt")  # an empty file at the top: not debris
    deep = await upload(store, b"deep", "0a/0b")  # directories named like upload ids
    progressing = await upload(store, b"", "later.bin", finish=False)
    before = tree(tmp_path)
    assert await store.clean_orphans(older_than=2**40) == 0
    assert tree(tmp_path) == before
    assert sorted([u async for u in store.list_uploads()]) == sorted([top.id, deep.id, progressing.id])
    assert [u async for u in store.list_unfinished(created_before=2**40)] == [progressing.id]

    before = tree(tmp_path)
    (tmp_path / ".keys" / (hashlib.sha256(b"k").hexdigest() + ".tmp-0123abcd")).write_bytes(b"x")
    await new_store(tmp_path)  # start(): removes this store's own temp debris only
    assert tree(tmp_path) == before
    assert file_sha(tmp_path / "0a" / "0b") == sha256(b"deep")


async def test_expiry_removes_an_unfinished_keyed_upload_and_leaves_the_finished_file(tmp_path):
    store = await new_store(tmp_path)
    old = await upload(store, b"finished bytes", KEY)
    stale = UploadInfo(id=new_upload_id(), length=10, expires=1.0)
    await store.create(stale, Placement(KEY))
    stale.offset = await store.append(stale, body(b"half"))
    config = Config(expire_after=60)
    assert await clean_expired(store, config, MemoryLocker(), now=10_000_000_000.0) == 1
    assert sorted(os.listdir(tmp_path)) == sorted([".keys", ".unfinished-indexed", "alice", f"{old.id}.info"])
    assert claim_of(tmp_path, KEY) == f"{old.id}\n"
    assert file_sha((await store.download(await store.get_info(old.id))).path) == sha256(b"finished bytes")

    # With expire_finished, the finished one goes too, its file and directories with it.
    old_info = await store.get_info(old.id)
    old_info.expires = 1.0
    await store.save_info(old_info)
    config = Config(expire_after=60, expire_finished=True)
    assert await clean_expired(store, config, MemoryLocker(), now=10_000_000_000.0) == 1
    assert tree(tmp_path) == [".keys/", ".unfinished-indexed"]


# -- Through the HTTP server -----------------------------------------------------------------


class KeyedFileStore(FileStore):
    """A FileStore whose uploads get the key `choose(info)` names (None: under the id), as a
    pre-create hook's storage_key will."""

    def __init__(self, directory: str, choose) -> None:
        super().__init__(directory)
        self.choose = choose

    async def create(self, info: UploadInfo, placement: Placement | None = None) -> None:
        key = self.choose(info)
        await super().create(info, Placement(key) if key is not None else placement)


async def test_http_upload_lands_at_its_key_and_head_get_delete_by_id_work(aiohttp_client, tmp_path):
    store = KeyedFileStore(str(tmp_path), lambda info: KEY)
    client = await aiohttp_client(create_app(Config(), store=store))
    data = os.urandom(200_000)
    path = await create(client, len(data))
    upload_id = path.rsplit("/", 1)[1]
    await patch(client, path, 0, data[:50_000])
    assert not (tmp_path / "alice").exists()
    await patch(client, path, 50_000, data[50_000:])
    assert file_sha(tmp_path / KEY) == sha256(data)
    assert not (tmp_path / upload_id).exists()

    resp = await head(client, path)
    assert (resp.status, resp.headers["Upload-Offset"], resp.headers["Upload-Length"]) == (200, "200000", "200000")
    assert sha256(await download(client, path)) == sha256(data)

    # The first is finished: a second upload may reuse the key; a third, while the second
    # is in progress, may not, and leaves nothing behind.
    second = await create(client, 4)
    before = tree(tmp_path)
    resp = await client.post("/", headers={**TUS, "Upload-Length": "1"})
    assert resp.status == 409
    assert await resp.text() == "another upload in progress is writing to the same storage key\n"
    assert tree(tmp_path) == before
    await patch(client, second, 0, b"2nd!")
    assert file_sha(tmp_path / KEY) == sha256(b"2nd!")

    assert (await client.delete(path, headers=TUS)).status == 204
    assert (await head(client, path)).status == 404
    assert file_sha(tmp_path / KEY) == sha256(b"2nd!")  # the newer upload's file stays
    assert await download(client, second) == b"2nd!"
    assert (await client.delete(second, headers=TUS)).status == 204
    assert tree(tmp_path) == [".keys/"]


async def test_http_concatenation_final_lands_at_its_key(aiohttp_client, tmp_path):
    store = KeyedFileStore(str(tmp_path), lambda info: "joined/all.bin" if info.concat == "final" else None)
    client = await aiohttp_client(create_app(Config(), store=store))
    one, two = os.urandom(70_000), os.urandom(30_000)
    paths = []
    for data in (one, two):
        path = await create(client, len(data), Upload_Concat="partial")
        await patch(client, path, 0, data)
        paths.append(path)
    resp = await client.post("/", headers={**TUS, "Upload-Concat": "final;" + " ".join(paths)})
    assert resp.status == 201, await resp.text()
    final = resp.headers["Location"].rsplit("/", 1)[1]
    assert file_sha(tmp_path / "joined" / "all.bin") == sha256(one + two)
    assert not (tmp_path / final).exists()
    assert sha256(await download(client, "/" + final)) == sha256(one + two)
    resp = await head(client, "/" + final)
    assert (resp.status, resp.headers["Upload-Offset"]) == (200, "100000")


async def test_http_bad_key_is_a_500_and_writes_nothing(aiohttp_client, tmp_path):
    store = KeyedFileStore(str(tmp_path / "files"), lambda info: "../escape")
    client = await aiohttp_client(create_app(Config(), store=store))
    resp = await client.post("/", headers={**TUS, "Upload-Length": "5", "Content-Type": OCTETS})
    assert resp.status == 500
    assert "escape" not in await resp.text()
    assert tree(tmp_path) == ["files/"]


@pytest.mark.parametrize("key", ["a" * 300 + "/x", "x/" + "b" * 300, "c/" + "d" * 300 + "/e"])
async def test_a_segment_longer_than_the_filesystem_allows_is_bad_placement(tmp_path, key):
    store = await new_store(tmp_path)
    with pytest.raises(storage.BadPlacement):
        await store.create(UploadInfo(id=new_upload_id(), length=1), Placement(key))
    assert os.listdir(tmp_path) == []


async def test_a_creation_failing_after_its_claim_gives_the_key_back(tmp_path, monkeypatch):
    store = await new_store(tmp_path)
    old = await upload(store, b"old", KEY)
    before = tree(tmp_path)

    def disk_full(info):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "_write_info", disk_full)
    with pytest.raises(OSError):
        await store.create(UploadInfo(id=new_upload_id(), length=1), Placement(KEY))
    with pytest.raises(OSError):
        await store.create(UploadInfo(id=new_upload_id(), length=1), Placement("fresh/key.bin"))
    monkeypatch.undo()
    assert tree(tmp_path) == before
    assert claim_of(tmp_path, KEY) == f"{old.id}\n"
    assert file_sha((await store.download(await store.get_info(old.id))).path) == sha256(b"old")


def _create_on_key(directory: str, upload_id: str, key: str, start, results) -> None:
    """In a child process: wait for the others, then create an upload on `key`."""
    async def run() -> str:
        store = FileStore(directory)
        start.wait()
        try:
            await store.create(UploadInfo(id=upload_id, length=1), Placement(key))
        except storage.KeyTaken:
            return "taken"
        return "created"

    results.put((upload_id, asyncio.run(run())))


def test_processes_racing_for_a_reused_key_one_wins(tmp_path):
    """Processes sharing file_dir take turns on the claims: of many creations that all find
    the key's holder finished, exactly one takes the key over."""
    ctx = multiprocessing.get_context("fork")
    directory = str(tmp_path)
    for round_ in range(5):
        key = f"race/{round_}.bin"
        asyncio.run(_finished_upload(directory, key))
        start, results = ctx.Event(), ctx.Queue()
        ids = [new_upload_id() for _ in range(6)]
        procs = [ctx.Process(target=_create_on_key, args=(directory, i, key, start, results)) for i in ids]
        for proc in procs:
            proc.start()
        start.set()
        outcome = dict(results.get(timeout=30) for _ in procs)
        for proc in procs:
            proc.join(timeout=30)
        winners = [i for i, result in outcome.items() if result == "created"]
        assert len(winners) == 1, outcome
        assert claim_of(tmp_path, key).split("\n")[0] == winners[0]
        assert sorted(set(ids) & set(os.listdir(tmp_path))) == winners


async def _finished_upload(directory: str, key: str) -> None:
    await upload(await new_store(directory), b"x", key)
