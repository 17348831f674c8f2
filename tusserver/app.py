"""create_app(): the aiohttp application, mountable under any prefix."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from . import errors, protocol
from .auth import BearerAuth
from .body import ClientGone, ReleaseRequested
from .cleanup import clean_periodically
from .config import Config
from .cors import install_cors
from .errors import TusError
from .handlers import TusHandlers
from .hooks import HOOK_HEADERS, HookRunner, Hooks, Webhook
from .locks import Locker, MemoryLocker
from .metrics import Metrics
from .stores.base import Store

log = logging.getLogger("tusserver")
access_log = logging.getLogger("tusserver.access")

HANDLERS_KEY = web.AppKey("tus_handlers", TusHandlers)
STORE_KEY = web.AppKey("tus_store", object)
METRICS_KEY = web.AppKey("tus_metrics", Metrics)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(error: TusError) -> web.Response:
    return web.Response(
        status=error.status,
        text=error.message + "\n",
        content_type="text/plain",
        headers=error.headers,
    )


@web.middleware
async def tus_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.monotonic()
    status = 500
    try:
        if request.method not in ("OPTIONS", "GET") and _effective_method(request) != "GET":
            protocol.check_tus_resumable(request.headers.get("Tus-Resumable"))
        response = await handler(request)
        status = response.status
        return response
    except TusError as exc:
        status = exc.status
        return error_response(exc)
    except ReleaseRequested:
        status = 400
        return error_response(TusError(errors.LOCKED, "interrupted by a newer request", status=400))
    except ClientGone as exc:
        status = 400
        log.info("client went away mid-body: %s", exc)
        return error_response(TusError(errors.INVALID_HEADER, "client went away", status=400))
    except web.HTTPException as exc:
        status = exc.status
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(TusError(errors.INTERNAL))
    finally:
        access_log.info(
            "%s %s %s in=%d %.1fms id=%s",
            request.method,
            request.path,
            status,
            request.get("bytes_in", 0),
            (time.monotonic() - started) * 1000,
            request.get("upload_id", "-"),
        )


async def _add_tus_resumable(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Tus-Resumable"] = protocol.TUS_VERSION
    if response.status < 300:
        response.headers.update(request.get(HOOK_HEADERS, {}))


def _effective_method(request: web.Request) -> str:
    override = request.headers.get("X-HTTP-Method-Override")
    if request.method == "POST" and override:
        return override.strip().upper()
    return request.method


def create_app(
    config: Config | None = None,
    *,
    store: Store | None = None,
    locker: Locker | None = None,
    hooks: Hooks | None = None,
    max_size_for: Callable[[web.Request], int | None] | None = None,
) -> web.Application:
    """A tus server as an aiohttp Application, with routes at "/" and "/{id}".
    Run it directly, or mount it with `app.add_subapp("/uploads/", create_app(...))`.

    `hooks` holds Python callbacks per event (see tusserver.hooks); `max_size_for(request)`
    may lower the maximum upload size per request (None: `config.max_size` applies)."""
    config = config or Config()
    if store is None:
        from .stores.factory import store_from_config

        store = store_from_config(config)
    metrics = Metrics()
    webhook = Webhook(config) if config.hooks_url else None
    runner = HookRunner(hooks, webhook, metrics)
    handlers = TusHandlers(
        config, store, locker or MemoryLocker(config.lock_timeout), runner, metrics=metrics, max_size_for=max_size_for
    )
    auth = BearerAuth(config.auth_secret) if config.auth_secret else None

    collection: dict[str, Handler] = {"OPTIONS": handlers.options, "POST": handlers.post}
    upload: dict[str, Handler] = {
        "OPTIONS": handlers.options,
        "HEAD": handlers.head,
        "PATCH": handlers.patch,
        "DELETE": handlers.delete,
        "GET": handlers.get,
    }

    def dispatch(table: dict[str, Handler]) -> Handler:
        async def route(request: web.Request) -> web.StreamResponse:
            method = _effective_method(request)
            if auth is not None:
                auth.check(request, method)
            handler = table.get(method)
            if handler is None:
                raise TusError(errors.METHOD_NOT_ALLOWED, headers={"Allow": ", ".join(table)})
            return await handler(request)

        return route

    app = web.Application(middlewares=[tus_middleware])
    app[HANDLERS_KEY] = handlers
    app[STORE_KEY] = store
    app[METRICS_KEY] = metrics
    app.router.add_route("*", "/", dispatch(collection))
    app.router.add_route("*", "/{upload_id}", dispatch(upload))
    app.on_response_prepare.append(_add_tus_resumable)
    install_cors(app, config)
    app.middlewares.insert(0, metrics.middleware)  # outermost: counts preflights and errors too

    async def lifecycle(app: web.Application):
        await store.start()
        metrics.watch_store(store)
        if webhook is not None:
            await webhook.start()
        cleaner = None
        if config.expire_after is not None:
            cleaner = asyncio.create_task(clean_periodically(store, config, handlers.locker))
        yield
        if cleaner is not None:
            cleaner.cancel()
        if webhook is not None:
            await webhook.close(config.hooks_timeout)
        await store.close()

    app.cleanup_ctx.append(lifecycle)
    return app
