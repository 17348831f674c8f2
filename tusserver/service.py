"""The upload service: what every request goes through, whichever front door (aiohttp,
ASGI) brought it. CORS, the protocol dialect, bearer tokens, method override, routing,
the shutdown gate, the error answers, the response headers, metrics and the access log
live here once; the front doors only translate requests and responses."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from . import errors, ietf, protocol
from .auth import BearerAuth, auth_enabled
from .body import ClientGone, ReleaseRequested
from .cleanup import clean_periodically
from .config import Config
from .cors import Cors
from .errors import TusError
from .exchange import Exchange, Response
from .handlers import TusHandlers
from .hooks import HookRunner, Hooks
from .ietf_handlers import IetfHandlers
from .locking import Locker, locker_from_config
from .logs import printable
from .metrics import Metrics
from .owners import Quota, check_quota_config
from .shutdown import UPLOAD_METHODS, Shutdown
from .storage_errors import StorageError
from .stores.base import Store, VersionedStore
from .webhook import Webhook

log = logging.getLogger("tusserver")
access_log = logging.getLogger("tusserver.access")

SERVER_NAME = "tusserver"  # the Server header: no versions
# Bytes of a download handed to the front door at a time, each within download_stall_timeout:
# about what a write waits to drain, so the timeout measures a stall, not a slow link.
DOWNLOAD_PIECE = 64 * 1024

Handler = Callable[[Exchange], Awaitable[Response]]


class DownloadStalled(Exception):
    """The client read nothing for download_stall_timeout seconds."""


class TusService:
    """One tus server: its store, locks, hooks and limits, and `handle` for each request."""

    def __init__(
        self,
        config: Config,
        store: Store,
        locker: Locker,
        hooks: Hooks | None = None,
        *,
        max_size_for: Callable[[Exchange], int | None] | None = None,
        quota_for: Callable[[Exchange], Quota | None] | None = None,
    ) -> None:
        check_quota_config(config)
        self.config = config
        self.store = store
        self.metrics = Metrics()
        self.webhook = Webhook(config) if config.hooks_url else None
        runner = HookRunner(hooks, self.webhook, self.metrics, timeout=config.hooks_timeout)
        if isinstance(store, VersionedStore):
            store.use_versions(locker)
        self.handlers = TusHandlers(
            config, store, locker, runner, metrics=self.metrics, max_size_for=max_size_for, quota_for=quota_for
        )
        self.locker = locker
        self.draft = IetfHandlers(self.handlers)
        self.auth = BearerAuth(config) if auth_enabled(config) else None
        self.shutdown = Shutdown(config.shutdown_grace)
        self.cors = Cors(config)
        tus = self.handlers
        self._collection: dict[str, Handler] = {"OPTIONS": tus.options, "POST": tus.post, "GET": tus.listing}
        self._upload: dict[str, Handler] = {
            "OPTIONS": tus.options,
            "HEAD": tus.head,
            "PATCH": tus.patch,
            "DELETE": tus.delete,
            "GET": tus.get,
        }
        self._draft_collection, self._draft_upload = self.draft.routes()
        self._cleaner: asyncio.Task | None = None
        self.started = False

    # -- life ----------------------------------------------------------------

    async def start(self) -> None:
        await self.store.start()
        await self.locker.start()
        self.metrics.watch_store(self.store)
        await self.handlers.finals.start()
        if self.webhook is not None:
            await self.webhook.start()
        if self.config.expire_after is not None:
            self._cleaner = asyncio.create_task(clean_periodically(self.store, self.config, self.locker))
        self.started = True

    async def drain(self) -> None:
        """Refuse new uploads, give those in flight the grace, then stop them (see Shutdown)."""
        await self.shutdown.drain()

    async def close(self) -> None:
        if self._cleaner is not None:
            self._cleaner.cancel()
        await self.handlers.finals.close()
        if self.webhook is not None:
            await self.webhook.close(self.config.hooks_timeout)
        if self.auth is not None:
            await self.auth.close()
        await self.locker.close()
        await self.store.close()
        self.started = False

    # -- requests ------------------------------------------------------------

    async def handle(self, request: Exchange) -> None:
        """Answer `request` on its connection. Never raises but for cancellation."""
        started = time.monotonic()
        status = 500
        preflight = self.cors.preflight(request)
        response = preflight
        try:
            if response is None:
                response = await self._respond(request)
            status = await self._send(request, response)
        finally:
            if response is not None and response.sent is not None:
                response.sent()
            self.metrics.count(request.method, status, request.bytes_in)
            if preflight is None:
                access_log.info(
                    "%s %s %s in=%d %.1fms id=%s",
                    request.method,
                    printable(request.path),  # a decoded %0D%0A could forge log lines
                    status,
                    request.bytes_in,
                    (time.monotonic() - started) * 1000,
                    request.upload_id or "-",
                )

    async def _respond(self, request: Exchange) -> Response:
        try:
            return await self._route(request)
        except Exception as exc:
            return self._failure(request, exc)

    async def _route(self, request: Exchange) -> Response:
        method = effective_method(request)
        request.dialect = ietf.select(method, request.headers, on_collection=request.route_id is None)
        if request.dialect is None and request.method not in ("OPTIONS", "GET") and method != "GET":
            protocol.check_tus_resumable(
                protocol.single_value("Tus-Resumable", request.headers.getall("Tus-Resumable", []))
            )
        if not request.on_route:
            raise TusError(errors.NOT_FOUND)
        if self.auth is not None:
            await self.auth.check(request, method)
        if request.dialect is None:
            table = self._collection if request.route_id is None else self._upload
        else:
            table = self._draft_collection if request.route_id is None else self._draft_upload
        handler = table.get(method)
        if handler is None:
            raise TusError(errors.METHOD_NOT_ALLOWED, headers={"Allow": ", ".join(table)})
        if method in UPLOAD_METHODS:
            async with self.shutdown.upload(request):
                return await handler(request)
        return await handler(request)

    def _failure(self, request: Exchange, exc: Exception) -> Response:
        """The answer to a request that failed with `exc`: every failure is one of ours."""
        if isinstance(exc, ClientGone):
            log.info("client went away mid-body: %s", exc)
            return self.error_response(request, TusError(errors.CLIENT_GONE))
        if isinstance(exc, StorageError):
            exc = errors.from_storage(exc)  # a Corrupt one was logged where it was found
        if isinstance(exc, (TusError, ReleaseRequested)):
            response = self.error_response(request, exc if isinstance(exc, TusError) else TusError(errors.INTERRUPTED))
            # A body stopped half way (lock release, read timeout, shutdown) still has bytes
            # coming: answer, then close the connection rather than read them.
            response.close = request.body is not None and request.body.stop_reason is not None
            return response
        error = errors.storage_error(exc) if isinstance(exc, OSError) else None
        if error is None:
            log.error("unhandled error on %s %s", request.method, printable(request.path), exc_info=exc)
            error = TusError(errors.INTERNAL)
        else:  # the operator must act (disk full, permissions); the client only learns the kind
            log.error("storage failure on %s %s: %s", request.method, printable(request.path), exc)
        return self.error_response(request, error)

    def error_response(self, request: Exchange, error: TusError) -> Response:
        """The error in the request's protocol: tus text, or the draft's problem details."""
        if request.dialect is not None:
            return self.draft.error_response(request, error)
        return Response.text(error.status, error.message + "\n", error.headers)

    def _decorate(self, request: Exchange, response: Response) -> None:
        headers = response.headers
        if request.dialect is None:
            headers["Tus-Resumable"] = protocol.TUS_VERSION
        else:
            headers[ietf.INTEROP_HEADER] = str(request.dialect.interop)
        if response.status < 300:
            headers.update(request.hook_headers)
        server_headers(headers)
        self.cors.grant(request, headers)

    async def _send(self, request: Exchange, response: Response) -> int:
        """Send `response`; the status the client got."""
        stream = response.stream
        if stream is None:
            self._decorate(request, response)
            await request.conn.send(response.status, response.headers, response.body, close=response.close)
            return response.status
        conn, stall = request.conn, self.config.download_stall_timeout
        sent = 0
        try:
            # The store's first call happens on entry, before any header is sent: a missing
            # object or an unavailable store is still an ordinary error answer (404, 503).
            async with stream.open() as chunks:
                response.headers["Content-Length"] = str(stream.length)
                self._decorate(request, response)
                await conn.start(response.status, response.headers)
                async for chunk in chunks:
                    view = memoryview(chunk)
                    for at in range(0, len(view), DOWNLOAD_PIECE):
                        await _within(stall, conn.write(view[at : at + DOWNLOAD_PIECE]))
                    sent += len(chunk)
                await _within(stall, conn.finish())
        except Exception as exc:
            if not conn.started:
                return await self._send(request, self._failure(request, exc))
            # An answer now would be written into the body: close the connection instead, so
            # the client sees a body shorter than Content-Length, then EOF.
            _log_broken_download(request, exc, sent, stream.length)
            conn.drop(at_once=isinstance(exc, DownloadStalled))
        return response.status


def build_service(
    config: Config | None = None,
    *,
    store: Store | None = None,
    locker: Locker | None = None,
    hooks: Hooks | None = None,
    max_size_for: Callable[[Exchange], int | None] | None = None,
    quota_for: Callable[[Exchange], Quota | None] | None = None,
) -> TusService:
    """A TusService from the configuration; the store and locker it names unless given."""
    config = config or Config()
    if store is None:
        from .stores.factory import store_from_config

        store = store_from_config(config)
    locker = locker or locker_from_config(config)
    return TusService(config, store, locker, hooks, max_size_for=max_size_for, quota_for=quota_for)


def effective_method(request: Exchange) -> str:
    """The method, or on a POST the one X-HTTP-Method-Override names (for clients that
    cannot send PATCH or DELETE)."""
    override = request.headers.get("X-HTTP-Method-Override")
    if request.method == "POST" and override:
        return override.strip().upper()
    return request.method


def server_headers(headers) -> None:
    """A Server header without versions, and no content sniffing of any body, errors included."""
    headers["Server"] = SERVER_NAME
    headers.setdefault("X-Content-Type-Options", "nosniff")


async def _within(stall_timeout: float, write: Awaitable[None]) -> None:
    """`write`, which waits while the client does not read; DownloadStalled after `stall_timeout`."""
    try:
        if _timeout is None:  # Python 3.10
            await asyncio.wait_for(write, stall_timeout)
        else:
            async with _timeout(stall_timeout):  # no task per write, unlike wait_for before 3.12
                await write
    except asyncio.TimeoutError:
        raise DownloadStalled(f"the client read nothing for {stall_timeout:g} s") from None


_timeout = getattr(asyncio, "timeout", None)


def _log_broken_download(request: Exchange, exc: Exception, sent: int, total: int) -> None:
    path = printable(request.path)
    if isinstance(exc, DownloadStalled):
        log.info("download of %s dropped after %d of %d bytes: %s", path, sent, total, exc)
    elif isinstance(exc, ConnectionError):  # from write(): the store raises StorageError only
        log.info("client went away after %d of %d bytes of %s: %s", sent, total, path, exc)
    elif isinstance(exc, (StorageError, TusError)):
        log.warning("download of %s failed after %d of %d bytes; connection closed: %s", path, sent, total, exc)
    else:
        log.error("download of %s failed after %d of %d bytes; connection closed", path, sent, total, exc_info=exc)
