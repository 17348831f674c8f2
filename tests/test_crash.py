"""SIGKILL a real server process mid-PATCH, restart it over the same storage: HEAD
reports exactly what is stored, the resumed upload completes byte-exact, and the
crash's temp files are removed at start-up."""

from __future__ import annotations

import base64
import hashlib
import os
import signal
from types import SimpleNamespace

import aiohttp
import pytest

from tests.hanging import HangingPatch
from tests.stored import assert_store_holds
from tests.test_shutdown import stored_at_least
from tests.tus_client import OCTETS, TUS, sha256

MiB = 1 << 20

pytestmark = pytest.mark.both_doors


async def direct_store(store_kind: str, tmp_path, request):
    """A store over the server's storage, to read what it holds without the server."""
    if store_kind == "file":
        from tusserver.stores.file import FileStore

        return FileStore(str(tmp_path / "uploads")), None
    from tusserver.stores.s3 import S3Store

    endpoint = request.getfixturevalue("moto_endpoint")
    store = S3Store(request.getfixturevalue("bucket"), endpoint_url=endpoint, path_style=True, temp_dir=str(tmp_path))
    await store.start()
    return store, SimpleNamespace(endpoint=endpoint)


async def test_sigkill_mid_patch_then_restart_resumes_byte_exact(
    serve_process, server_args, store_kind, tmp_path, request
):
    data = os.urandom(13 * MiB + 5)
    sent = 11 * MiB + 321
    server = await serve_process(*server_args).start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(server.url, headers={**TUS, "Upload-Length": str(len(data))}) as resp:
                upload_id = resp.headers["Location"].rsplit("/", 1)[1]
        patch = await HangingPatch.start("127.0.0.1", server.port, "/files/" + upload_id, 0, len(data))
        await patch.send(data[:sent])
        # Kill while bytes are stored and more are on their way: two parts on S3.
        await stored_at_least(
            store_kind, tmp_path, server.url + upload_id, 10 * MiB if store_kind == "s3" else 8 * MiB, request
        )
        server.signal(signal.SIGKILL)
        await server.wait()
        patch.close()
        if store_kind == "s3":  # the piece being spooled when the process died
            assert [p for p in os.listdir(tmp_path / "spool") if p.startswith("tusserver-spool-")]
    finally:
        await server.stop()

    restarted = await serve_process(*server_args).start()
    store, factory = await direct_store(store_kind, tmp_path, request)
    try:
        if store_kind == "s3":
            assert [p for p in os.listdir(tmp_path / "spool") if p.startswith("tusserver-spool-")] == []
        async with aiohttp.ClientSession() as session:
            url = restarted.url + upload_id
            async with session.head(url, headers=TUS) as resp:
                offset = int(resp.headers["Upload-Offset"])
            # Bytes not yet stored died with the process; what HEAD reports is what is stored.
            assert 8 * MiB <= offset <= sent
            if store_kind == "s3":
                assert offset % (5 * MiB) == 0  # whole parts only: the tail was never flushed
            await assert_store_holds(store, factory, upload_id, data[:offset])
            headers = {**TUS, "Upload-Offset": str(offset), "Content-Type": OCTETS}
            async with session.patch(url, data=data[offset:], headers=headers) as resp:
                assert resp.status == 204, await resp.text()
                assert resp.headers["Upload-Offset"] == str(len(data))
            async with session.get(url) as resp:
                assert sha256(await resp.read()) == sha256(data)
        await assert_store_holds(store, factory, upload_id, data)
    finally:
        await restarted.stop()
        await store.close()


async def test_sigkill_during_a_checksum_patch_keeps_nothing_of_it_and_cleans_up(
    serve_process, server_args, store_kind, tmp_path, request
):
    """With Upload-Checksum a PATCH is all or nothing, a crash included."""
    first, rest = os.urandom(MiB + 3), os.urandom(6 * MiB)
    server = await serve_process(*server_args).start()
    try:
        async with aiohttp.ClientSession() as session:
            headers = {**TUS, "Upload-Length": str(len(first) + len(rest))}
            async with session.post(server.url, headers=headers) as resp:
                upload_id = resp.headers["Location"].rsplit("/", 1)[1]
            headers = {**TUS, "Upload-Offset": "0", "Content-Type": OCTETS}
            async with session.patch(server.url + upload_id, data=first, headers=headers) as resp:
                assert resp.status == 204
        checksum = "sha1 " + base64.b64encode(hashlib.sha1(rest).digest()).decode()
        patch = await HangingPatch.start(
            "127.0.0.1", server.port, "/files/" + upload_id, len(first), len(rest), Upload_Checksum=checksum
        )
        await patch.send(rest[: 5 * MiB + 1])
        spool_dir = tmp_path / ("uploads" if store_kind == "file" else "spool")
        spool_prefix = upload_id + ".tmp-" if store_kind == "file" else "tusserver-spool-"

        def spooled() -> int:
            found = [p for p in spool_dir.iterdir() if p.name.startswith(spool_prefix)]
            files = [f for p in found for f in (p.iterdir() if p.is_dir() else [p])]  # S3: a directory per process
            return sum(f.stat().st_size for f in files)

        from tests.hanging import wait_until

        await wait_until(lambda: spooled() >= 4 * MiB, "the checksum PATCH to be spooled")
        server.signal(signal.SIGKILL)
        await server.wait()
        patch.close()
    finally:
        await server.stop()

    restarted = await serve_process(*server_args).start()
    store, factory = await direct_store(store_kind, tmp_path, request)
    try:
        assert spooled() == 0
        async with aiohttp.ClientSession() as session:
            async with session.head(restarted.url + upload_id, headers=TUS) as resp:
                assert resp.headers["Upload-Offset"] == str(len(first))
        await assert_store_holds(store, factory, upload_id, first)
    finally:
        await restarted.stop()
        await store.close()


async def test_startup_keeps_spool_files_of_a_live_process_and_removes_a_reused_pids(tmp_path):
    from tusserver.stores.spool import TEMP_PREFIX, Spool, _started, remove_stale_spools

    live = Spool(str(tmp_path), 10)
    live.write(b"abc")
    assert live._piece is not None
    # What a crashed process with this very pid, started at another time, left behind.
    crashed = tmp_path / f"{TEMP_PREFIX}{os.getpid()}-{int(_started(os.getpid())) - 1}-{'0' * 16}"
    crashed.write_bytes(b"old")
    dead_pid = tmp_path / f"{TEMP_PREFIX}{2**22 + 1}-5-{'1' * 16}"
    dead_pid.write_bytes(b"old")
    assert remove_stale_spools(str(tmp_path)) == 2
    # The live process's spool directory stands, with its piece in it.
    assert os.listdir(tmp_path) == [os.path.basename(os.path.dirname(live._piece.path))]
    assert os.path.exists(live._piece.path)
    live.discard()
