"""Fixtures for the real-client tests: the npm tree and tusservers on free loopback ports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestServer
from interop_support import INTEROP, PREFIX, Received, TusTarget
from multidict import CIMultiDict

from tests.asgi_support import RecordRequests, UvicornTestServer
from tusserver.app import create_app
from tusserver.config import Config
from tusserver.keys import BYTES_IN


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """The pinned npm tree; `npm ci` runs here when it is missing or older than the lockfile,
    so `pytest tests/interop` works on its own."""
    tree = INTEROP / "node_modules"
    marker = tree / ".package-lock.json"
    lock = INTEROP / "package-lock.json"
    if not marker.exists() or marker.stat().st_mtime < lock.stat().st_mtime:
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=INTEROP, check=True, stdout=sys.stderr)
    return tree


@pytest.fixture
async def make_target(store_factory, store_kind, front_door):
    """`await make_target(**config)` starts a tusserver (under /files/) on a free
    127.0.0.1 port over a fresh store; all are stopped after the test. On the ASGI door it
    is create_asgi_app mounted in a FastAPI app, served by uvicorn."""
    targets: list[BaseTestServer] = []

    async def make(**options) -> TusTarget:
        store = store_factory()
        config = Config(**options)
        requests: list[Received] = []
        if front_door == "aiohttp":
            server: BaseTestServer = TestServer(aiohttp_target(config, store, requests), host="127.0.0.1", port=0)
        else:
            server = UvicornTestServer(asgi_target(config, store, requests), host="127.0.0.1", port=0)
        await server.start_server()
        targets.append(server)
        s3_endpoint = getattr(store_factory, "endpoint", None)
        return TusTarget(f"http://127.0.0.1:{server.port}", store_kind, store, s3_endpoint, requests)

    yield make
    for server in targets:
        await server.close()


def aiohttp_target(config: Config, store, requests: list[Received]) -> web.Application:
    @web.middleware
    async def record(request: web.Request, handler):
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            requests.append(
                Received(
                    request.method,
                    request.path,
                    status,
                    CIMultiDict(request.headers),
                    request.get(BYTES_IN, 0),
                )
            )

    root = web.Application(middlewares=[record])
    root.add_subapp(PREFIX, create_app(config, store=store))
    return root


def asgi_target(config: Config, store, requests: list[Received]):
    """The mounted case as FastAPI users write it; what the parent saw is recorded around it."""
    from fastapi import FastAPI

    from tusserver.asgi import create_asgi_app

    tus = create_asgi_app(config, store=store)
    parent = FastAPI(lifespan=tus.lifespan)
    parent.mount(PREFIX.rstrip("/"), tus)
    return RecordRequests(parent, lambda *seen: requests.append(Received(*seen)))
