"""Operations endpoints: /metrics (Prometheus text), /healthz (alive), /readyz (store reachable)."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .app import METRICS_KEY, STORE_KEY
from .keys import OPS_REQUEST
from .stores.base import ReadyStore

log = logging.getLogger("tusserver")

READY_TIMEOUT = 5.0  # seconds the store gets to answer /readyz


def add_ops_routes(app: web.Application, tus_app: web.Application) -> None:
    """Serve /metrics, /healthz and /readyz of `tus_app` (an app from create_app) on `app`,
    which may be `tus_app` itself or the application it is mounted in."""
    metrics = tus_app[METRICS_KEY]
    store = tus_app[STORE_KEY]

    async def metrics_page(request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(metrics.registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        if await store_ready(store):
            return web.Response(text="ready\n")
        return web.Response(status=503, text="store unreachable\n")

    for path, handler in (("/metrics", metrics_page), ("/healthz", healthz), ("/readyz", readyz)):
        app.router.add_get(path, _not_counted(handler))


def _not_counted(handler):
    # When the tus app serves these itself (base_path "/"), scrapes must not count as tus requests.
    async def handle(request: web.Request) -> web.StreamResponse:
        request[OPS_REQUEST] = True
        return await handler(request)

    return handle


async def store_ready(store: object) -> bool:
    """Whether the store answers its `ready()` (if it has one) in time."""
    if not isinstance(store, ReadyStore):
        return True
    try:
        return bool(await asyncio.wait_for(store.ready(), READY_TIMEOUT))
    except Exception as exc:
        log.warning("readiness check failed: %s", exc or type(exc).__name__)
        return False
