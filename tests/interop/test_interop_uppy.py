"""Uppy (@uppy/core + @uppy/tus, bundled with esbuild) in headless Chromium. The page
comes from another origin than the tusserver, so every tus request is a CORS request
and the browser sends real preflights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from interop_support import INTEROP, MiB, decode_metadata, make_file, run_node

CHROMIUM = "/usr/bin/chromium"
SIZE = 7 * MiB
CHUNK = 2 * MiB
NAME = "uppy ✓ 7MiB.bin"

pytestmark = pytest.mark.both_doors


@pytest.fixture(scope="session")
def uppy_bundle(node_modules) -> Path:
    """dist/uppy-page.js, rebuilt once per session from page/uppy-page.js."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)")
    subprocess.run(["node", "build.mjs"], cwd=INTEROP, check=True, stdout=sys.stderr)
    return INTEROP / "dist" / "uppy-page.js"


@pytest.fixture
async def page_server(uppy_bundle, tmp_path):
    """Serves the Uppy page, its bundle and test files from a second 127.0.0.1 port."""
    files = tmp_path / "served"
    files.mkdir()

    async def index(_: web.Request) -> web.FileResponse:
        return web.FileResponse(INTEROP / "page" / "index.html")

    async def bundle(_: web.Request) -> web.FileResponse:
        return web.FileResponse(uppy_bundle)

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/dist/uppy-page.js", bundle)
    app.router.add_static("/data/", files)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    server.files = files  # type: ignore[attr-defined]
    server.origin = f"http://127.0.0.1:{server.port}"  # type: ignore[attr-defined]
    yield server
    await server.close()


async def test_uppy_pause_resume_and_resume_after_reload(make_target, page_server, tmp_path):
    origin = page_server.origin
    target = await make_target(cors_origins=[origin])
    assert target.base != origin
    path, digest = make_file(page_server.files, "seven.bin", SIZE, seed=21)

    options = {
        "pageUrl": origin + "/",
        "endpoint": target.endpoint,
        "fileUrl": f"{origin}/data/{path.name}",
        "name": NAME,
        "chunkSize": CHUNK,
        "userDataDir": str(tmp_path / "chromium-profile"),
    }
    result = await run_node("uppy-browser.mjs", json.dumps(options), timeout=120)
    first, second = result["first"], result["second"]

    # In the page: paused after the first chunk, resumed, paused after the second.
    assert first["errors"] == []
    assert first["pausedAt"] == [CHUNK, 2 * CHUNK]
    assert first["isPaused"] is True
    url = first["uploadUrl"]
    assert url.startswith(target.endpoint)
    # tus-js-client's browser URL storage remembers the unfinished upload...
    stored = list(first["storage"].values())
    assert [entry["uploadUrl"] for entry in stored] == [url]

    # ...and after a reload, a new Uppy finds it there and finishes the same upload.
    assert [entry["uploadUrl"] for entry in second["storageBefore"].values()] == [url]
    assert (second["errors"], second["failed"], second["successful"]) == ([], [], [url])

    browser = [r for r in target.requests if r.headers.get("Origin") == origin]
    assert len(browser) == len(target.requests)
    preflights = [r for r in browser if "Access-Control-Request-Method" in r.headers]
    assert {(r.path, r.headers["Access-Control-Request-Method"]) for r in preflights} >= {
        ("/files/", "POST"),
    }
    assert any(r.path != "/files/" for r in preflights)
    assert all(r.status == 204 for r in preflights)

    (post,) = target.received("POST")
    assert (post.status, post.headers["Upload-Length"]) == (201, str(SIZE))
    patches = target.received("PATCH", url)
    assert [int(p.headers["Upload-Offset"]) for p in patches] == [0, CHUNK, 2 * CHUNK, 3 * CHUNK]
    assert [p.bytes_in for p in patches] == [CHUNK, CHUNK, CHUNK, SIZE - 3 * CHUNK]
    assert all(p.status == 204 for p in patches)
    # One HEAD when resumed in the page, one after the reload (plus the test's own).
    assert len([r for r in target.received("HEAD", url) if r.headers.get("Origin") == origin]) == 2

    head = await target.head(url)
    assert decode_metadata(head.headers["Upload-Metadata"])["filename"] == NAME
    await target.check_bytes(url, digest, SIZE)
