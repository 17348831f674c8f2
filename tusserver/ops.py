"""Operations endpoints: /metrics (Prometheus text), /healthz (alive), /readyz (store reachable).
Not tus requests: they are neither counted in the metrics nor in the access log."""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CONTENT_TYPE_LATEST

from .exchange import Response
from .service import TusService, server_headers
from .stores.base import ReadyStore

log = logging.getLogger("tusserver")

READY_TIMEOUT = 5.0  # seconds the store gets to answer /readyz
OPS_PATHS = ("/metrics", "/healthz", "/readyz")


async def ops_response(service: TusService, path: str) -> Response:
    """The answer of the ops endpoint at `path` (one of OPS_PATHS)."""
    if path == "/metrics":
        response = Response(200, body=service.metrics.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    elif path == "/healthz":
        response = Response.text(200, "ok\n")
    elif await store_ready(service.store):
        response = Response.text(200, "ready\n")
    else:
        response = Response.text(503, "store unreachable\n")
    server_headers(response.headers)
    return response


async def store_ready(store: object) -> bool:
    """Whether the store answers its `ready()` (if it has one) in time."""
    if not isinstance(store, ReadyStore):
        return True
    try:
        return bool(await asyncio.wait_for(store.ready(), READY_TIMEOUT))
    except Exception as exc:
        log.warning("readiness check failed: %s", exc or type(exc).__name__)
        return False
