"""create_app(): the aiohttp application, mountable under any prefix."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from . import errors, ietf, protocol
from .auth import BearerAuth, auth_enabled
from .body import ClientGone, ReleaseRequested
from .cleanup import clean_periodically
from .config import Config
from .cors import install_cors
from .errors import TusError
from .handlers import TusHandlers
from .hooks import HookRunner, Hooks, Webhook
from .ietf_handlers import IetfHandlers
from .keys import BODY, BYTES_IN, DIALECT, HOOK_HEADERS, UPLOAD_ID
from .locks import Locker, locker_from_config
from .logs import printable
from .metrics import Metrics
from .owners import Quota, check_quota_config
from .shutdown import UPLOAD_METHODS, Shutdown
from .stores.base import Store, VersionedStore

log = logging.getLogger("tusserver")
access_log = logging.getLogger("tusserver.access")

HANDLERS_KEY = web.AppKey("tus_handlers", TusHandlers)
IETF_KEY = web.AppKey("tus_ietf_handlers", IetfHandlers)
STORE_KEY = web.AppKey("tus_store", object)
METRICS_KEY = web.AppKey("tus_metrics", Metrics)
SHUTDOWN_KEY = web.AppKey("tus_shutdown", Shutdown)
AUTH_KEY = web.AppKey("tus_auth", object)  # the BearerAuth, or None without tokens
SERVER_NAME = "tusserver"  # the Server header: no versions

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(error: TusError) -> web.Response:
    return web.Response(
        status=error.status,
        text=error.message + "\n",
        content_type="text/plain",
        headers=error.headers,
    )


def _answer(request: web.Request, error: TusError) -> web.Response:
    """The error response in the request's protocol: tus text, or the draft's problem details."""
    if DIALECT in request:
        return request.app[IETF_KEY].error_response(request, error)
    return error_response(error)


@web.middleware
async def tus_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.monotonic()
    status = 500
    try:
        method = _effective_method(request)
        dialect = ietf.select(method, request.headers, on_collection="upload_id" not in request.match_info)
        if dialect is not None:
            request[DIALECT] = dialect  # a request of the IETF draft: no Tus-Resumable
        elif request.method not in ("OPTIONS", "GET") and method != "GET":
            protocol.check_tus_resumable(
                protocol.single_value("Tus-Resumable", request.headers.getall("Tus-Resumable", []))
            )
        response = await handler(request)
        status = response.status
        return response
    except TusError as exc:
        response = _answer(request, exc)
        status = response.status
        return await _close_if_stopped(request, response)
    except ReleaseRequested:
        status = 400
        return await _close_if_stopped(request, _answer(request, TusError(errors.INTERRUPTED)))
    except ClientGone as exc:
        status = 400
        log.info("client went away mid-body: %s", exc)
        return _answer(request, TusError(errors.CLIENT_GONE))
    except web.HTTPException as exc:
        status = exc.status
        raise
    except Exception as exc:
        error = errors.storage_error(exc) if isinstance(exc, OSError) else None
        if error is None:
            log.exception("unhandled error on %s %s", request.method, printable(request.path))
            error = TusError(errors.INTERNAL)
        else:  # the operator must act (disk full, permissions); the client only learns the kind
            log.error("storage failure on %s %s: %s", request.method, printable(request.path), exc)
        status = error.status
        return _answer(request, error)
    finally:
        access_log.info(
            "%s %s %s in=%d %.1fms id=%s",
            request.method,
            printable(request.path),  # yarl decodes %0D%0A: a raw path could forge log lines
            status,
            request.get(BYTES_IN, 0),
            (time.monotonic() - started) * 1000,
            request.get(UPLOAD_ID, "-"),
        )


async def _close_if_stopped(request: web.Request, response: web.Response) -> web.Response:
    """A body stopped half way (lock release, read timeout, shutdown) keeps its stop reason
    set on the request stream: aiohttp would then linger to read the rest, meet the reason
    and log it as an unhandled error. Answer, then close the connection instead."""
    body = request.get(BODY)
    if body is None or body.stop_reason is None:
        return response
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()
    return response


async def _add_tus_resumable(request: web.Request, response: web.StreamResponse) -> None:
    dialect = request.get(DIALECT)
    if dialect is None:
        response.headers["Tus-Resumable"] = protocol.TUS_VERSION
    else:
        response.headers[ietf.INTEROP_HEADER] = str(dialect.interop)
    if response.status < 300:
        response.headers.update(request.get(HOOK_HEADERS, {}))


async def server_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: a Server header without versions (aiohttp's names Python's and its
    own), and no content sniffing of any body, errors included."""
    response.headers["Server"] = SERVER_NAME
    response.headers.setdefault("X-Content-Type-Options", "nosniff")


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
    quota_for: Callable[[web.Request], Quota | None] | None = None,
) -> web.Application:
    """A tus server as an aiohttp Application, with routes at "/" and "/{id}".
    Run it directly, or mount it with `app.add_subapp("/uploads/", create_app(...))`.

    `hooks` holds Python callbacks per event (see tusserver.hooks); `max_size_for(request)`
    may lower the maximum upload size per request (None: `config.max_size` applies), and
    `quota_for(request)` the owner's quota (a `Quota`; None: `quota_bytes`/`quota_uploads`)."""
    config = config or Config()
    if store is None:
        from .stores.factory import store_from_config

        store = store_from_config(config)
    metrics = Metrics()
    webhook = Webhook(config) if config.hooks_url else None
    runner = HookRunner(hooks, webhook, metrics, timeout=config.hooks_timeout)
    check_quota_config(config)
    locker = locker or locker_from_config(config)
    if isinstance(store, VersionedStore):
        store.use_versions(locker)
    handlers = TusHandlers(
        config,
        store,
        locker,
        runner,
        metrics=metrics,
        max_size_for=max_size_for,
        quota_for=quota_for,
    )
    draft = IetfHandlers(handlers)
    auth = BearerAuth(config) if auth_enabled(config) else None
    shutdown = Shutdown(config.shutdown_grace)

    collection: dict[str, Handler] = {"OPTIONS": handlers.options, "POST": handlers.post, "GET": handlers.listing}
    upload: dict[str, Handler] = {
        "OPTIONS": handlers.options,
        "HEAD": handlers.head,
        "PATCH": handlers.patch,
        "DELETE": handlers.delete,
        "GET": handlers.get,
    }

    draft_collection, draft_upload = draft.routes()

    def dispatch(tus_table: dict[str, Handler], draft_table: dict[str, Handler]) -> Handler:
        async def route(request: web.Request) -> web.StreamResponse:
            method = _effective_method(request)
            if auth is not None:
                await auth.check(request, method)
            table = tus_table if DIALECT not in request else draft_table
            handler = table.get(method)
            if handler is None:
                raise TusError(errors.METHOD_NOT_ALLOWED, headers={"Allow": ", ".join(table)})
            if method in UPLOAD_METHODS:
                async with shutdown.upload(request):
                    return await handler(request)
            return await handler(request)

        return route

    app = web.Application(middlewares=[tus_middleware])
    app[HANDLERS_KEY] = handlers
    app[IETF_KEY] = draft
    app[STORE_KEY] = store
    app[METRICS_KEY] = metrics
    app[SHUTDOWN_KEY] = shutdown
    app[AUTH_KEY] = auth
    app.router.add_route("*", "/", dispatch(collection, draft_collection))
    app.router.add_route("*", "/{upload_id}", dispatch(upload, draft_upload))
    app.on_response_prepare.append(_add_tus_resumable)
    app.on_response_prepare.append(server_headers)
    install_cors(app, config)
    app.middlewares.insert(0, metrics.middleware)  # outermost: counts preflights and errors too

    async def drain(app: web.Application) -> None:
        await shutdown.drain()

    # Runs once the server stops listening (aiohttp then waits for the handlers); the
    # CLI drains earlier, on the signal, so that new uploads still get their 503.
    app.on_shutdown.append(drain)

    async def lifecycle(app: web.Application):
        await store.start()
        await handlers.locker.start()
        metrics.watch_store(store)
        await handlers.finals.start()
        if webhook is not None:
            await webhook.start()
        cleaner = None
        if config.expire_after is not None:
            cleaner = asyncio.create_task(clean_periodically(store, config, handlers.locker))
        yield
        if cleaner is not None:
            cleaner.cancel()
        await handlers.finals.close()
        if webhook is not None:
            await webhook.close(config.hooks_timeout)
        if auth is not None:
            await auth.close()
        await handlers.locker.close()
        await store.close()

    app.cleanup_ctx.append(lifecycle)
    return app
