"""The ASGI front door as users run it: README's FastAPI and Starlette examples, copied
out of README.md, and `uvicorn --factory tusserver.asgi:from_env`, each in a real uvicorn
process on a free loopback port, driven by tuspy and by raw HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.asgiproc import ROOT, Process, server_env, tuspy_upload, uvicorn
from tests.conftest import free_port
from tests.hanging import HangingPatch, wait_until
from tests.tus_client import TUS

MiB = 1 << 20
SIZE = 3 * MiB + 17


def readme_example(name: str) -> str:
    """The Python block right after `<!-- example: NAME -->` in README.md."""
    readme = (ROOT / "README.md").read_text()
    found = re.findall(rf"<!-- example: {name} -->\n```python\n(.*?)\n```\n", readme, re.S)
    assert len(found) == 1, f"README.md has {len(found)} blocks marked 'example: {name}'"
    return found[0]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def payload(tmp_path) -> tuple[Path, bytes]:
    data = random.Random(14).randbytes(SIZE)
    path = tmp_path / "payload.bin"
    path.write_bytes(data)
    return path, data


async def check_tuspy_upload(endpoint: str, payload: tuple[Path, bytes], data_dir: Path) -> str:
    """tuspy uploads the payload under `endpoint` (stopped after 1 MiB, then resumed); the
    HEADs report exact offsets and both the GET and the stored file hold the bytes sent."""
    path, data = payload
    url, offsets = await asyncio.to_thread(tuspy_upload, endpoint, path, MiB)
    assert url.startswith(endpoint)
    upload_id = url[len(endpoint) :]
    assert re.fullmatch(r"[0-9a-f]{32}", upload_id), url
    assert offsets == [str(MiB), str(SIZE)]
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            assert response.status == 200
            assert sha256(await response.read()) == sha256(data)
    assert sha256((data_dir / upload_id).read_bytes()) == sha256(data)
    return url


@pytest.mark.parametrize("example", ["fastapi", "starlette"])
async def test_readme_example_serves_tus_under_its_mount(example, tmp_path, payload):
    source = readme_example(example)
    data_dir = tmp_path / "uploads"
    assert source.count('"/srv/uploads"') == 1
    (tmp_path / f"example_{example}.py").write_text(source.replace('"/srv/uploads"', repr(str(data_dir))))

    server = await uvicorn(f"example_{example}:app", server_env(), cwd=tmp_path).start()
    try:
        # The parent's lifespan started the tus app (the file store made its directory)
        # before any request reached it.
        assert data_dir.is_dir()
        await check_tuspy_upload(f"{server.base}/uploads/", payload, data_dir)
        if example == "fastapi":  # the parent app's own routes still answer
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{server.base}/hello") as response:
                    assert (response.status, await response.json()) == (200, {"uploads": "/uploads/"})
        server.signal(signal.SIGTERM)
        assert await server.wait() == -signal.SIGTERM  # uvicorn re-raises the signal it handled
        assert "Application shutdown complete." in server.log
        assert "Traceback" not in server.log, server.log
    finally:
        await server.stop()


async def test_readme_aiohttp_example_serves_tus_under_its_mount(tmp_path, payload):
    source = readme_example("aiohttp")
    data_dir = tmp_path / "uploads"
    assert source.count('"/srv/uploads"') == 1 and source.count("web.run_app(app)") == 1
    source = source.replace('"/srv/uploads"', repr(str(data_dir)))
    source = source.replace("web.run_app(app)", "web.run_app(app, host='127.0.0.1', port=int(sys.argv[1]))")
    (tmp_path / "example_aiohttp.py").write_text("import sys\n" + source)
    # run_app prints where it listens on stdout; the process's log is its stderr.
    run = "import runpy, sys; sys.stdout = sys.stderr; runpy.run_path('example_aiohttp.py', run_name='__main__')"
    argv = [sys.executable, "-c", run, "{port}"]
    server = await Process(argv, "Running on", server_env(), cwd=tmp_path).start()
    try:
        await check_tuspy_upload(f"{server.base}/uploads/", payload, data_dir)
        server.signal(signal.SIGTERM)
        assert await server.wait() == 0
        assert "Traceback" not in server.log, server.log
    finally:
        await server.stop()


async def metric(session: aiohttp.ClientSession, base: str, name: str, **labels: str) -> float:
    async with session.get(f"{base}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


async def test_uvicorn_factory_from_env_serves_ops_and_drains_on_sigterm(tmp_path, payload):
    data_dir = tmp_path / "uploads"
    env = server_env(
        TUSSERVER_STORE="file",
        TUSSERVER_FILE_DIR=str(data_dir),
        TUSSERVER_BASE_PATH="/files/",
        TUSSERVER_SHUTDOWN_GRACE="20",
    )
    server = await uvicorn("tusserver.asgi:from_env", env, factory=True).start()
    try:
        finished = await check_tuspy_upload(f"{server.base}/files/", payload, data_dir)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{server.base}/healthz") as response:
                assert (response.status, await response.text()) == (200, "ok\n")
            async with session.get(f"{server.base}/readyz") as response:
                assert (response.status, await response.text()) == (200, "ready\n")
            assert await metric(session, server.base, "tusserver_uploads_created_total") == 1
            assert await metric(session, server.base, "tusserver_uploads_finished_total") == 1
            assert await metric(session, server.base, "tusserver_received_bytes_total") == SIZE
            assert await metric(session, server.base, "tusserver_requests_total", method="PATCH", status="204") == 4

            # An upload in flight when SIGTERM comes: it finishes, every byte stored.
            data = random.Random(15).randbytes(6 * MiB + 3)
            async with session.post(f"{server.base}/files/", headers={**TUS, "Upload-Length": str(len(data))}) as resp:
                assert resp.status == 201
                url = resp.headers["Location"]
            upload_id = url.rsplit("/", 1)[1]
            inflight = await HangingPatch.start("127.0.0.1", server.port, f"/files/{upload_id}", 0, len(data))
            await inflight.send(data[: 5 * MiB])
            stored = data_dir / upload_id
            await wait_until(lambda: stored.stat().st_size >= 4 * MiB, "4 MiB on disk")

            server.signal(signal.SIGTERM)
            # Drained before uvicorn stops listening: a new upload is told to go elsewhere.
            await server.wait_for_log("shutting down: waiting up to 20s for 1 uploads")
            async with session.post(f"{server.base}/files/", headers={**TUS, "Upload-Length": "5"}) as resp:
                assert (resp.status, resp.headers["Retry-After"]) == (503, "2")
                assert await resp.text() == "server is shutting down; retry on another instance\n"
            async with session.head(finished, headers=TUS) as resp:  # reads still work
                assert (resp.status, resp.headers["Upload-Offset"]) == (200, str(SIZE))

            await inflight.send(data[5 * MiB :])
            done = await inflight.response()
            assert (done.status, done.headers["upload-offset"]) == (204, str(len(data)))
            inflight.close()
        assert await server.wait() == -signal.SIGTERM  # uvicorn re-raises the signal it handled
        assert "Application shutdown complete." in server.log
        assert "Traceback" not in server.log, server.log
        assert sha256(stored.read_bytes()) == sha256(data)
    finally:
        await server.stop()


async def test_uvicorn_factory_from_env_stops_an_upload_past_the_grace_and_keeps_its_bytes(tmp_path):
    data_dir = tmp_path / "uploads"
    env = server_env(TUSSERVER_FILE_DIR=str(data_dir), TUSSERVER_SHUTDOWN_GRACE="0.5")
    sent = 5 * MiB + 1234
    data = random.Random(16).randbytes(8 * MiB)
    server = await uvicorn("tusserver.asgi:from_env", env, factory=True).start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{server.base}/files/", headers={**TUS, "Upload-Length": str(len(data))}) as resp:
                assert resp.status == 201
                upload_id = resp.headers["Location"].rsplit("/", 1)[1]
        stalled = await HangingPatch.start("127.0.0.1", server.port, f"/files/{upload_id}", 0, len(data))
        await stalled.send(data[:sent])
        stored = data_dir / upload_id
        await wait_until(lambda: stored.stat().st_size >= 4 * MiB, "4 MiB on disk")

        server.signal(signal.SIGTERM)
        stopped = await stalled.response()
        assert (stopped.status, stopped.headers["retry-after"]) == (503, "2")
        stalled.close()
        assert await server.wait() == -signal.SIGTERM
        assert "shutting down: stopping 1 uploads; their bytes are kept" in server.log
    finally:
        await server.stop()
    assert sha256(stored.read_bytes()) == sha256(data[:sent])

    restarted = await uvicorn("tusserver.asgi:from_env", env, factory=True).start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.head(f"{restarted.base}/files/{upload_id}", headers=TUS) as resp:
                assert (resp.status, resp.headers["Upload-Offset"]) == (200, str(sent))
    finally:
        await restarted.stop()


async def test_uvicorn_factory_from_env_serves_ops_on_ops_port_only(tmp_path):
    """With ops_port, /metrics, /healthz and /readyz answer there and not on the public
    listener (where they are unknown paths), as with the `tusserver` command."""
    ops_port = free_port()
    env = server_env(
        TUSSERVER_STORE="file",
        TUSSERVER_FILE_DIR=str(tmp_path / "uploads"),
        TUSSERVER_OPS_HOST="127.0.0.1",
        TUSSERVER_OPS_PORT=str(ops_port),
    )
    server = await uvicorn("tusserver.asgi:from_env", env, factory=True).start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{server.base}/files/", headers={**TUS, "Upload-Length": "0"}) as resp:
                assert resp.status == 201
            ops = f"http://127.0.0.1:{ops_port}"
            async with session.get(f"{ops}/healthz") as response:
                assert (response.status, await response.text()) == (200, "ok\n")
            async with session.get(f"{ops}/readyz") as response:
                assert (response.status, await response.text()) == (200, "ready\n")
            assert await metric(session, ops, "tusserver_uploads_created_total") == 1
            async with session.get(f"{ops}/{'a' * 32}") as response:
                assert response.status == 404  # no tus routes there
            for path in ("/metrics", "/healthz", "/readyz"):
                async with session.get(f"{server.base}{path}") as response:
                    assert response.status == 404, path
        server.signal(signal.SIGTERM)
        assert await server.wait() == -signal.SIGTERM
        assert "Traceback" not in server.log, server.log
    finally:
        await server.stop()
