"""`tusserver upload` as a real process against real servers: tusserver on both stores and
@tus/server. Every test checks the sha256 of what the server stored (read back with GET)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess

import pytest

from tests.conftest import free_port, wait_for_port
from tests.serverproc import ServerProcess
from tests.uploader_support import (
    HttpProxy,
    MiB,
    TcpProxy,
    Uploader,
    head,
    received_bytes,
    stored_sha256,
    wait_until,
    write_random,
)

NODE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "tus-node")


@pytest.fixture
async def server(server_args):
    proc = await ServerProcess(*server_args).start()
    yield proc
    await proc.stop()


@pytest.fixture
async def file_server(tmp_path):
    proc = await ServerProcess("--store", "file", "--file-dir", str(tmp_path / "uploads")).start()
    yield proc
    await proc.stop()


@pytest.fixture
async def tcp_proxy(file_server):
    proxy = await TcpProxy(file_server.port).start()
    yield proxy
    await proxy.close()


def remembered(cache_dir) -> dict:
    path = cache_dir / "tusserver" / "uploads.json"
    return json.loads(path.read_text()) if path.exists() else {}


async def test_upload_prints_each_url_and_stores_exact_bytes(server, tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.bin"
    sha_a, sha_b = write_random(a, 3 * MiB + 7), write_random(b, 0)
    up = Uploader(tmp_path / "cache", str(a), str(b), "--url", server.url, "--json", "--metadata", "team=blue")
    assert await up.run() == 0, up.err
    results = [json.loads(line) for line in up.out.splitlines()]
    assert [(r["file"], r["size"]) for r in results] == [(str(a), 3 * MiB + 7), (str(b), 0)]
    assert await stored_sha256(results[0]["url"]) == sha_a
    assert await stored_sha256(results[1]["url"]) == sha_b
    metadata = (await head(results[0]["url"]))["Upload-Metadata"]
    assert sorted(metadata.split(",")) == ["filename YS50eHQ=", "filetype dGV4dC9wbGFpbg==", "team Ymx1ZQ=="]
    assert remembered(tmp_path / "cache") == {}  # finished uploads are not kept


async def test_sigkill_mid_file_then_same_command_resumes(server, tmp_path):
    size = 24 * MiB
    source = tmp_path / "big.bin"
    sha = write_random(source, size)
    proxy = await TcpProxy(server.port).start()
    try:
        proxy.rate = 12 * MiB
        args = (str(source), "--url", proxy.url, "--quiet")
        first = await Uploader(tmp_path / "cache", *args).start()
        await wait_until(lambda: proxy.forwarded > 10 * MiB, what="10 MiB through the proxy")
        first.signal(signal.SIGKILL)
        assert await first.wait() == -signal.SIGKILL
        assert len(remembered(tmp_path / "cache")) == 1
        proxy.rate = None
        again = Uploader(tmp_path / "cache", *args)
        assert await again.run() == 0, again.err
        url = again.out.strip()
        received = await received_bytes(server.url)
        print(f"resume after SIGKILL: the server received {received / size:.3f}x the file")
        assert received < 1.2 * size, f"the server received {received / size:.2f}x the file"
        assert await stored_sha256(url) == sha
        assert remembered(tmp_path / "cache") == {}
    finally:
        await proxy.close()


async def test_sigint_exits_130_with_how_to_resume_then_resumes(file_server, tcp_proxy, tmp_path):
    size = 24 * MiB
    source = tmp_path / "big.bin"
    sha = write_random(source, size)
    tcp_proxy.rate = 12 * MiB
    args = (str(source), "--url", tcp_proxy.url)
    first = await Uploader(tmp_path / "cache", *args).start()
    await wait_until(lambda: tcp_proxy.forwarded > 10 * MiB, what="10 MiB through the proxy")
    first.signal(signal.SIGINT)
    assert await first.wait() == 130
    assert "interrupted; run the same command again to resume" in first.err
    assert "Traceback" not in first.err
    tcp_proxy.rate = None
    again = Uploader(tmp_path / "cache", *args)
    assert await again.run() == 0, again.err
    received = await received_bytes(file_server.url)
    assert received < 1.2 * size, f"the server received {received / size:.2f}x the file"
    assert await stored_sha256(again.out.strip()) == sha


async def test_connection_cut_mid_patch_is_resumed_from_the_servers_offset(file_server, tcp_proxy, tmp_path):
    size = 16 * MiB
    source = tmp_path / "big.bin"
    sha = write_random(source, size)
    tcp_proxy.cut_after = 7 * MiB
    up = Uploader(tmp_path / "cache", str(source), "--url", tcp_proxy.url)
    assert await up.run() == 0, up.err
    assert tcp_proxy.cuts == 1
    assert "PATCH failed" in up.err  # the retry notice
    received = await received_bytes(file_server.url)
    assert received < 1.2 * size, f"the server received {received / size:.2f}x the file"
    assert await stored_sha256(up.out.strip()) == sha


async def test_stalled_connection_is_detected_and_retried(file_server, tcp_proxy, tmp_path):
    size = 12 * MiB
    source = tmp_path / "big.bin"
    sha = write_random(source, size)
    tcp_proxy.stall_after = 5 * MiB
    tcp_proxy.stall_seconds = 3.0
    up = Uploader(tmp_path / "cache", str(source), "--url", tcp_proxy.url, "--timeout", "1")
    assert await up.run() == 0, up.err
    assert tcp_proxy.stalls == 1
    assert "no progress for 1s" in up.err
    assert await stored_sha256(up.out.strip()) == sha


async def test_stdin_is_sent_with_deferred_length(server, tmp_path):
    data = os.urandom(10 * MiB + 3)
    up = Uploader(tmp_path / "cache", "-", "--url", server.url, "--chunk-size", "4MiB", "--json", stdin=data)
    assert await up.run() == 0, up.err
    result = json.loads(up.out)
    assert result["size"] == len(data)
    headers = await head(result["url"])
    assert (headers["Upload-Length"], headers["Upload-Offset"]) == (str(len(data)),) * 2
    import hashlib

    assert await stored_sha256(result["url"]) == hashlib.sha256(data).hexdigest()


async def test_parallel_4_sends_partials_and_concatenates(server, tmp_path):
    size = 24 * MiB + 11
    source = tmp_path / "big.bin"
    sha = write_random(source, size)
    up = Uploader(tmp_path / "cache", str(source), "--url", server.url, "--parallel", "4")
    assert await up.run() == 0, up.err
    url = up.out.strip()
    concat = (await head(url))["Upload-Concat"]
    assert concat.startswith("final;") and len(concat[len("final;") :].split()) == 4
    assert await stored_sha256(url) == sha


async def test_checksum_mismatch_resends_the_chunk(file_server, tmp_path):
    size = 3 * MiB
    source = tmp_path / "big.bin"
    sha = write_random(source, size)
    proxy = await HttpProxy(file_server.url).start()
    try:
        proxy.corrupt = 1
        args = (str(source), "--url", proxy.url, "--checksum", "sha256", "--chunk-size", "1MiB")
        up = Uploader(tmp_path / "cache", *args)
        assert await up.run() == 0, up.err
        assert [status for method, status, _ in proxy.log if method == "PATCH"] == [460, 204, 204, 204]
        assert await stored_sha256(up.out.strip()) == sha
    finally:
        await proxy.close()


async def test_429_waits_for_retry_after(file_server, tmp_path):
    source = tmp_path / "small.bin"
    sha = write_random(source, MiB)
    proxy = await HttpProxy(file_server.url).start()
    try:
        proxy.too_many, proxy.retry_after = 1, 2
        up = Uploader(tmp_path / "cache", str(source), "--url", proxy.url)
        assert await up.run() == 0, up.err
        patches = [(status, at) for method, status, at in proxy.log if method == "PATCH"]
        assert [status for status, _ in patches] == [429, 204]
        assert patches[1][1] - patches[0][1] >= 1.9  # Retry-After: 2 was honoured, not the 0.5 s back-off
        assert await stored_sha256(up.out.strip()) == sha
    finally:
        await proxy.close()


async def test_server_down_at_first_then_up(tmp_path):
    source = tmp_path / "small.bin"
    sha = write_random(source, 2 * MiB)
    server = ServerProcess("--store", "file", "--file-dir", str(tmp_path / "uploads"))
    up = await Uploader(tmp_path / "cache", str(source), "--url", server.url).start()
    try:
        await asyncio.sleep(1.5)
        assert up.proc.returncode is None  # still trying
        await server.start()
        assert await up.wait() == 0, up.err
        assert "Connection refused" in up.err or "Connect call failed" in up.err
        assert await stored_sha256(up.out.strip()) == sha
    finally:
        await up.kill()
        await server.stop()


async def test_gives_up_with_one_line_reason_and_exit_1(tmp_path):
    source = tmp_path / "small.bin"
    write_random(source, 10)
    url = f"http://127.0.0.1:{free_port()}/files/"
    up = Uploader(tmp_path / "cache", str(source), "--url", url, "--retries", "1", "--quiet")
    assert await up.run() == 1
    assert up.err.startswith(f"tusserver upload: {source}: gave up after 1 retries: OPTIONS failed")
    assert len(up.err.strip().splitlines()) == 1


async def test_rejection_is_one_line_and_exit_1(tmp_path):
    server = await ServerProcess("--store", "file", "--file-dir", str(tmp_path / "u"), "--max-size", "1000").start()
    try:
        source, missing = tmp_path / "big.bin", tmp_path / "missing.bin"
        write_random(source, 1001)
        up = Uploader(tmp_path / "cache", str(source), str(missing), "--url", server.url)
        assert await up.run() == 1
        assert up.err.splitlines() == [
            f"tusserver upload: {source}: 1001 bytes is more than the server accepts (1000)",
            f"tusserver upload: {missing}: No such file or directory",
        ]
    finally:
        await server.stop()


async def test_forget_and_no_resume_start_a_new_upload(file_server, tcp_proxy, tmp_path):
    size = 16 * MiB
    source = tmp_path / "big.bin"
    sha = write_random(source, size)
    tcp_proxy.rate = 12 * MiB
    args = (str(source), "--url", tcp_proxy.url, "--quiet")
    first = await Uploader(tmp_path / "cache", *args).start()
    await wait_until(lambda: tcp_proxy.forwarded > 4 * MiB, what="4 MiB through the proxy")
    first.signal(signal.SIGKILL)
    await first.wait()
    tcp_proxy.rate = None
    forget = Uploader(tmp_path / "cache", *args, "--forget")
    assert await forget.run() == 0
    assert forget.err == f"{source}: forgotten\n"
    assert remembered(tmp_path / "cache") == {}
    fresh = Uploader(tmp_path / "cache", *args, "--no-resume")
    assert await fresh.run() == 0, fresh.err
    assert await received_bytes(file_server.url) >= size + 4 * MiB  # sent whole again
    assert await stored_sha256(fresh.out.strip()) == sha


# -- @tus/server, a third-party tus server -------------------------------------------------


@pytest.fixture
async def tus_node(tmp_path):
    if not os.path.isdir(os.path.join(NODE_DIR, "node_modules")):
        # As bench/run.py installs it: from the committed lockfile, no install scripts.
        npm = ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"]
        await asyncio.to_thread(subprocess.run, npm, cwd=NODE_DIR, check=True)
    port = free_port()
    directory = tmp_path / "tus-node"
    directory.mkdir()
    proc = await asyncio.create_subprocess_exec(
        shutil.which("node") or "node", os.path.join(NODE_DIR, "server.js"), "file", str(port), str(directory),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await asyncio.to_thread(wait_for_port, port)
        yield f"http://127.0.0.1:{port}/files/", port
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


async def test_against_tus_node_server_resumes_after_sigkill(tus_node, tmp_path):
    url, port = tus_node
    size = 16 * MiB
    source = tmp_path / "big.bin"
    sha = write_random(source, size)
    proxy = await TcpProxy(port).start()
    try:
        proxy.rate = 12 * MiB
        args = (str(source), "--url", proxy.url, "--quiet", "--chunk-size", "4MiB")
        first = await Uploader(tmp_path / "cache", *args).start()
        await wait_until(lambda: proxy.forwarded > 9 * MiB, what="9 MiB through the proxy")
        first.signal(signal.SIGKILL)
        await first.wait()
        proxy.rate = None
        again = Uploader(tmp_path / "cache", *args)
        assert await again.run() == 0, again.err
        assert proxy.forwarded < 1.2 * size + 64 * 1024  # bodies plus a few requests' headers
        assert await stored_sha256(again.out.strip()) == sha
    finally:
        await proxy.close()


async def test_against_tus_node_server_stdin(tus_node, tmp_path):
    import hashlib

    url, _ = tus_node
    data = os.urandom(5 * MiB + 1)
    up = Uploader(tmp_path / "cache", "-", "--url", url, "--chunk-size", "2MiB", "--json", stdin=data)
    assert await up.run() == 0, up.err
    assert await stored_sha256(json.loads(up.out)["url"]) == hashlib.sha256(data).hexdigest()
