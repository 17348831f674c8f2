"""The aiohttp front door: create_app() mounts a TusService as an aiohttp Application."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from multidict import CIMultiDict

from .aiohttp_body import AiohttpContent
from .config import Config
from .exchange import Exchange
from .hooks import Hooks
from .keys import BYTES_IN, UPLOAD_ID
from .locking import Locker
from .ops import OPS_PATHS, ops_response
from .owners import Quota
from .service import SERVER_NAME, TusService, build_service
from .service import server_headers as _server_headers
from .stores.base import Store

SERVICE_KEY = web.AppKey("tus_service", TusService)
HANDLERS_KEY = web.AppKey("tus_handlers", object)  # the TusHandlers
STORE_KEY = web.AppKey("tus_store", object)
METRICS_KEY = web.AppKey("tus_metrics", object)
SHUTDOWN_KEY = web.AppKey("tus_shutdown", object)
AUTH_KEY = web.AppKey("tus_auth", object)  # the BearerAuth, or None without tokens

__all__ = ["SERVER_NAME", "create_app", "add_ops_routes", "server_headers"]


class AiohttpConnection:
    """The core's Connection over one aiohttp request: `answer` is what the handler returns."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.answer: web.StreamResponse | None = None

    @property
    def started(self) -> bool:
        return self.answer is not None and self.answer.prepared

    async def send(self, status: int, headers: CIMultiDict[str], body: bytes, *, close: bool) -> None:
        response = web.Response(status=status, headers=headers, body=body)
        self.answer = response
        if close:
            # The body's stop reason stays set on the request stream: aiohttp would linger to
            # read the rest, meet it and log it as an unhandled error. Answer, then close.
            await response.prepare(self.request)
            await response.write_eof()
            self.request.protocol.force_close()

    async def start(self, status: int, headers: CIMultiDict[str]) -> None:
        response = web.StreamResponse(status=status, headers=headers)
        self.answer = response
        await response.prepare(self.request)

    async def write(self, data: bytes | memoryview) -> None:
        assert self.answer is not None
        await self.answer.write(data)

    async def finish(self) -> None:
        assert self.answer is not None
        await self.answer.write_eof()

    async def interim(self, head: bytes) -> bool:
        await self.request.writer.write(head)
        return True

    def drop(self, *, at_once: bool) -> None:
        self.request.protocol.force_close()
        transport = self.request.transport
        if transport is not None:
            if at_once:
                transport.abort()
            else:
                transport.close()


def exchange_of(request: web.Request) -> tuple[Exchange, AiohttpConnection]:
    route_id = request.match_info.get("upload_id")
    on_route = "elsewhere" not in request.match_info
    collection = request.path
    if route_id is not None:
        collection = collection[: collection.rstrip("/").rfind("/") + 1]
    conn = AiohttpConnection(request)
    exchange = Exchange(
        method=request.method,
        url=request.rel_url,
        headers=request.headers,
        root_path=collection.rstrip("/"),
        route_id=route_id,
        peer=request,  # aiohttp works scheme, host and remote out on first use
        http_version=(request.version.major, request.version.minor),
        content=AiohttpContent(request.content),
        body_exists=request.body_exists,
        conn=conn,
        on_route=on_route,
    )
    return exchange, conn


def create_app(
    config: Config | None = None,
    *,
    store: Store | None = None,
    locker: Locker | None = None,
    hooks: Hooks | None = None,
    max_size_for: Callable[[Exchange], int | None] | None = None,
    quota_for: Callable[[Exchange], Quota | None] | None = None,
) -> web.Application:
    """A tus server as an aiohttp Application, with routes at "/" and "/{id}".
    Run it directly, or mount it with `app.add_subapp("/uploads/", create_app(...))`.

    `hooks` holds Python callbacks per event (see tusserver.hooks); `max_size_for(request)`
    may lower the maximum upload size per request (None: `config.max_size` applies), and
    `quota_for(request)` the owner's quota (a `Quota`; None: `quota_bytes`/`quota_uploads`).
    Both get the request as a tusserver Exchange (method, path, headers, query, remote)."""
    service = build_service(
        config, store=store, locker=locker, hooks=hooks, max_size_for=max_size_for, quota_for=quota_for
    )
    return aiohttp_app(service)


def aiohttp_app(service: TusService) -> web.Application:
    """`service` behind an aiohttp Application; the app's life starts and stops it."""

    async def handle(request: web.Request) -> web.StreamResponse:
        exchange, conn = exchange_of(request)
        try:
            await service.handle(exchange)
        finally:
            # For the middlewares of an application this one is mounted in.
            request[BYTES_IN] = exchange.bytes_in
            if exchange.upload_id is not None:
                request[UPLOAD_ID] = exchange.upload_id
        assert conn.answer is not None  # handle() answers every request
        return conn.answer

    app = web.Application()
    app[SERVICE_KEY] = service
    app[HANDLERS_KEY] = service.handlers
    app[STORE_KEY] = service.store
    app[METRICS_KEY] = service.metrics
    app[SHUTDOWN_KEY] = service.shutdown
    app[AUTH_KEY] = service.auth
    app.router.add_route("*", "/", handle)
    app.router.add_route("*", "/{upload_id}", handle)
    # Every other path too: the core's 404, with the headers of every answer (Server included).
    app.router.add_route("*", r"/{elsewhere:[\s\S]+}", handle)

    async def drain(app: web.Application) -> None:
        await service.drain()

    # Runs once the server stops listening (aiohttp then waits for the handlers); the
    # CLI drains earlier, on the signal, so that new uploads still get their 503.
    app.on_shutdown.append(drain)

    async def lifecycle(app: web.Application):
        await service.start()
        yield
        await service.close()

    app.cleanup_ctx.append(lifecycle)
    return app


async def server_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: a Server header without versions (aiohttp's names Python's and its
    own), and no content sniffing of any body, errors included."""
    _server_headers(response.headers)


def add_ops_routes(app: web.Application, tus_app: web.Application) -> None:
    """Serve /metrics, /healthz and /readyz of `tus_app` (an app from create_app) on `app`,
    which may be `tus_app` itself or the application it is mounted in."""
    service = tus_app[SERVICE_KEY]

    def page(path: str):
        async def handle(request: web.Request) -> web.Response:
            response = await ops_response(service, path)
            return web.Response(status=response.status, headers=response.headers, body=response.body)

        return handle

    for path in OPS_PATHS:
        app.router.add_get(path, page(path))
