"""tusserver.client as a library: upload() and upload_sync() against a real tusserver, and
the pure parts (Retry-After, ranges, the resume store's bounds) without a server."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import time

import pytest

from tests.serverproc import ServerProcess
from tests.uploader_support import MiB, stored_sha256, write_random
from tusserver.client import ResumeStore, UploadError, upload, upload_sync
from tusserver.client import resume as resume_module
from tusserver.client.tus import MAX_RETRY_AFTER, parse_retry_after
from tusserver.client.uploader import split


@pytest.fixture
async def file_server(tmp_path):
    proc = await ServerProcess("--store", "file", "--file-dir", str(tmp_path / "uploads")).start()
    yield proc
    await proc.stop()


async def test_async_upload_reports_progress_and_forgets_finished(file_server, tmp_path):
    source = tmp_path / "a.bin"
    sha = write_random(source, 5 * MiB + 1)
    store = ResumeStore(tmp_path / "resume.json")
    seen: list[int] = []
    result = await upload(source, file_server.url, store=store, chunk_size=2 * MiB, progress=seen.append)
    assert (result.size, result.resumed_from) == (5 * MiB + 1, 0)
    assert seen[-1] == 5 * MiB + 1 and seen == sorted(seen)
    assert await stored_sha256(result.url) == sha
    assert json.loads((tmp_path / "resume.json").read_text()) == {}


async def test_sync_upload_of_a_stream(file_server, tmp_path):
    data = os.urandom(3 * MiB + 5)
    result = await asyncio.to_thread(upload_sync, io.BytesIO(data), file_server.url, chunk_size=MiB)
    assert result.size == len(data)
    assert await stored_sha256(result.url) == hashlib.sha256(data).hexdigest()


async def test_upload_resumes_a_remembered_upload(file_server, tmp_path):
    """A remembered URL the server holds half of: only the other half is sent."""
    import aiohttp

    source = tmp_path / "a.bin"
    sha = write_random(source, 4 * MiB)
    data = source.read_bytes()
    store = ResumeStore(tmp_path / "resume.json")
    tus = {"Tus-Resumable": "1.0.0"}
    async with aiohttp.ClientSession() as session:
        async with session.post(file_server.url, headers={**tus, "Upload-Length": str(len(data))}) as r:
            url = r.headers["Location"]
        patch = {**tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
        async with session.patch(url, headers=patch, data=data[: 3 * MiB]) as r:
            assert r.status == 204
    st = os.stat(source)
    key = resume_module.fingerprint(str(source), st.st_size, st.st_mtime_ns, file_server.url)
    store.put(key, {"urls": [url], "concat": False})
    result = await upload(source, file_server.url, store=store)
    assert (result.url, result.resumed_from) == (url, 3 * MiB)
    assert await stored_sha256(url) == sha


async def test_upload_error_names_the_reason(tmp_path):
    source = tmp_path / "a.bin"
    write_random(source, 10)
    with pytest.raises(UploadError, match="gave up after 0 retries: OPTIONS failed"):
        await upload(source, "http://127.0.0.1:1/files/", retries=0, store=ResumeStore(tmp_path / "r.json"))


def test_retry_after_takes_seconds_or_a_date_and_is_capped():
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("999999") == MAX_RETRY_AFTER
    now = time.time()
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 10))
    assert 8.5 <= parse_retry_after(date, now) <= 10.0


def test_split_covers_every_byte_once():
    assert split(10, 4) == [(0, 2), (2, 3), (5, 2), (7, 3)]
    assert split(0, 1) == [(0, 0)]


def test_fingerprint_changes_with_the_file_and_the_endpoint():
    base = resume_module.fingerprint("/x/a", 10, 1, "http://h/files/")
    assert base == resume_module.fingerprint("/x/a", 10, 1, "http://h/files/")
    assert len({base, resume_module.fingerprint("/x/a", 11, 1, "http://h/files/"),
                resume_module.fingerprint("/x/a", 10, 2, "http://h/files/"),
                resume_module.fingerprint("/x/a", 10, 1, "http://other/files/")}) == 4


def test_resume_store_keeps_the_newest_entries_up_to_its_bound(tmp_path):
    path = tmp_path / "resume.json"
    now = time.time()
    entries = {f"k{i}": {"urls": [f"u{i}"], "updated": now - 1000 + i} for i in range(resume_module.MAX_ENTRIES)}
    entries["stale"] = {"urls": ["old"], "updated": now - resume_module.MAX_AGE - 1}
    path.write_text(json.dumps(entries))
    store = ResumeStore(path)
    store.put("new", {"urls": ["n"]})
    kept = json.loads(path.read_text())
    assert len(kept) == resume_module.MAX_ENTRIES
    assert "new" in kept and "k0" not in kept and "stale" not in kept and "k1" in kept


def test_damaged_resume_store_starts_afresh(tmp_path):
    path = tmp_path / "resume.json"
    path.write_text("{not json")
    store = ResumeStore(path)
    assert store.get("k") is None
    store.put("k", {"urls": ["u"]})
    assert store.get("k")["urls"] == ["u"]


def test_off_a_terminal_progress_is_a_line_with_bytes_rate_and_eta():
    from tusserver.client.progress import LineProgress, make_progress

    out = io.StringIO()
    assert isinstance(make_progress(False, 10, out), LineProgress)  # StringIO is not a TTY
    watcher = LineProgress(out, every=0.0).add_file("a.bin", 4 * MiB)
    watcher.update(0)
    watcher.update(MiB)
    line = out.getvalue().splitlines()[-1]
    assert line.startswith("a.bin: 1.0 MiB of 4.0 MiB (25%), ") and line.endswith(" left")
    assert make_progress(True, 10, out).add_file("a", 1).update(1) is None  # --quiet: silent


def test_the_client_loads_without_the_server_side():
    import subprocess
    import sys

    server_side = ("aiohttp.web", "tusserver.stores", "tusserver.app")
    probe = f"import sys, tusserver.client; print(sorted(m for m in sys.modules if m in {server_side!r}))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
