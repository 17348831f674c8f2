"""The ASGI front door in tests: an ASGI app served by uvicorn inside the test's own event
loop behind aiohttp's test-server interface, so `aiohttp_client(UvicornTestServer(app))`
gives the usual TestClient; and the ASGI twin of an aiohttp app a test built with
create_app (the same TusService behind TusAsgi)."""

from __future__ import annotations

import asyncio
import contextlib
import types
from collections.abc import Callable, Mapping
from typing import Any

import uvicorn
from aiohttp import web
from aiohttp.test_utils import BaseTestServer
from multidict import CIMultiDict
from yarl import URL

# Bounds a test server's teardown while a test left a request hanging; aiohttp's test
# server cancels such handlers instead.
GRACEFUL_CLOSE = 10.0


class UvicornTestServer(BaseTestServer):
    """An ASGI app served by uvicorn (httptools, lifespan on) on a free loopback port in the
    running event loop. `app` is what `TestClient.app` returns: a mapping like the aiohttp
    Application's (HANDLERS_KEY, AUTH_KEY, ...) for the tests that reach into the server."""

    def __init__(self, asgi_app: Any, *, app: Mapping[Any, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.asgi_app = asgi_app
        self.app = app
        self.uvicorn: uvicorn.Server | None = None
        self._main_loop: asyncio.Task | None = None

    async def start_server(self, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any) -> None:
        if self.uvicorn is not None:
            return
        config = uvicorn.Config(
            self.asgi_app,
            host=self.host,
            port=self.port or 0,
            lifespan="on",
            http="httptools",
            log_level="warning",
            log_config=None,  # leave logging to pytest: errors reach caplog like the app's own
            access_log=False,
            timeout_graceful_shutdown=GRACEFUL_CLOSE,
        )
        config.load()
        server = uvicorn.Server(config)
        # startup/main_loop/shutdown are serve() without its signal handlers, which would
        # take SIGINT and SIGTERM away from pytest. uvicorn binds the socket itself, as in
        # production: asyncio then sets TCP_NODELAY, which a socket made with proto 0 misses.
        server.lifespan = config.lifespan_class(config)
        try:
            await server.startup()
        except SystemExit as exc:  # uvicorn's answer to a failed lifespan startup or bind
            raise RuntimeError(f"the ASGI app did not start (uvicorn exit code {exc.code})") from None
        self.uvicorn = server
        self._main_loop = asyncio.create_task(server.main_loop())
        assert server.started
        self.host, self.port = server.servers[0].sockets[0].getsockname()[:2]
        self.scheme = "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._root = URL(f"http://{host}:{self.port}")

    async def _make_runner(self, **kwargs: Any) -> Any:
        raise NotImplementedError("uvicorn runs the app; there is no aiohttp runner")

    @property
    def started(self) -> bool:
        return self.uvicorn is not None

    async def close(self) -> None:
        """Stop listening, finish the requests in flight, run the lifespan shutdown."""
        if self.uvicorn is None or self._closed:
            return
        self._closed = True
        self.uvicorn.should_exit = True
        assert self._main_loop is not None
        self._main_loop.cancel()  # it only ticks (Date header, should_exit): no need to wait for one
        with contextlib.suppress(asyncio.CancelledError):
            await self._main_loop
        await self.uvicorn.shutdown()
        self._root = None
        self.port = None

    def in_flight(self) -> set[object]:
        """Open connections and the app calls still running (uvicorn lets a call run on
        after its connection closed)."""
        assert self.uvicorn is not None
        state = self.uvicorn.server_state
        return set(state.connections) | set(state.tasks)


def in_flight(server: BaseTestServer) -> set[object]:
    """What a test server of either front door is still handling."""
    if isinstance(server, UvicornTestServer):
        return server.in_flight()
    assert server.runner is not None and server.runner.server is not None
    return set(server.runner.server.connections)


# -- the ASGI twin of an aiohttp test app ----------------------------------------------------------


def tus_asgi_of(app: web.Application) -> Any:
    """TusAsgi over the very TusService an aiohttp app from create_app holds."""
    from tusserver.app import SERVICE_KEY
    from tusserver.asgi import TusAsgi

    return TusAsgi(app[SERVICE_KEY])


def service_keys(service: Any) -> Mapping[Any, Any]:
    """What a test reads from a create_app app (`client.app[HANDLERS_KEY]`, ...), from the service."""
    from tusserver.app import AUTH_KEY, HANDLERS_KEY, METRICS_KEY, SERVICE_KEY, SHUTDOWN_KEY, STORE_KEY

    return types.MappingProxyType(
        {
            SERVICE_KEY: service,
            HANDLERS_KEY: service.handlers,
            STORE_KEY: service.store,
            METRICS_KEY: service.metrics,
            SHUTDOWN_KEY: service.shutdown,
            AUTH_KEY: service.auth,
        }
    )


def is_tus_app(app: web.Application) -> bool:
    from tusserver.app import SERVICE_KEY

    return SERVICE_KEY in app


def asgi_server_for(target: web.Application | BaseTestServer, **kwargs: Any) -> UvicornTestServer:
    """The ASGI (uvicorn) server that serves what `target` would serve on aiohttp: a create_app
    app, or a bare aiohttp app that only mounts create_app apps under prefixes (served as a
    Starlette app with a Mount per prefix). Anything else has no ASGI twin and raises."""
    if isinstance(target, UvicornTestServer):
        return target
    if isinstance(target, BaseTestServer):
        app = getattr(target, "app", None)
        if not isinstance(app, web.Application):
            raise TypeError(f"no ASGI twin for {target!r}: it serves no aiohttp Application")
        return asgi_server_for(app, host=target.host, port=target.port, **kwargs)
    if not isinstance(target, web.Application):
        raise TypeError(f"no ASGI twin for {target!r}")
    if is_tus_app(target):
        tus = tus_asgi_of(target)
        return UvicornTestServer(tus, app=service_keys(tus.service), **kwargs)
    return UvicornTestServer(_mounted(target), app=types.MappingProxyType(dict(target)), **kwargs)


def _mounted(root: web.Application) -> Any:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    routes = []
    for resource in root.router.resources():
        info = resource.get_info()
        sub = info.get("app")
        if not isinstance(sub, web.Application) or not is_tus_app(sub):
            raise TypeError(f"no ASGI twin for the route {resource!r}: only mounted create_app apps translate")
        routes.append(Mount(info["prefix"].rstrip("/"), app=tus_asgi_of(sub)))
    # add_subapp registers one startup, shutdown and cleanup signal per sub-app; any more
    # (or a middleware, or a response hook) is the test's own and has no ASGI twin.
    bare = web.Application()
    signals = [(root.on_startup, bare.on_startup), (root.on_shutdown, bare.on_shutdown)]
    signals.append((root.on_cleanup, bare.on_cleanup))
    if (
        root.middlewares
        or len(root.on_response_prepare)
        or len(root.cleanup_ctx)
        or any(len(mine) != len(plain) + len(routes) for mine, plain in signals)
    ):
        raise TypeError("no ASGI twin for an aiohttp app with middlewares or signals of its own: mark it aiohttp_only")
    return Starlette(routes=routes)


# -- what a parent app saw: the ASGI twin of an aiohttp recording middleware ------------------------


class RecordRequests:
    """ASGI middleware that reports each HTTP request once it is answered: method, path,
    status (500 if the app failed before answering), request headers and the body bytes
    the app took from `receive`."""

    def __init__(self, app: Any, record: Callable[[str, str, int, CIMultiDict[str], int], None]) -> None:
        self.app = app
        self.record = record

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        bytes_in = 0

        async def counting_receive() -> dict:
            nonlocal bytes_in
            message = await receive()
            if message["type"] == "http.request":
                bytes_in += len(message.get("body", b""))
            return message

        async def status_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, counting_receive, status_send)
        finally:
            headers = CIMultiDict((k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"])
            self.record(scope["method"], scope["path"], status, headers, bytes_in)
