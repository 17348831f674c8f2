"""One coroutine per tus verb. Each reads top to bottom: parse headers, lock,
load state, check it, call the store, answer."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from . import errors, protocol
from .body import Body, ClientGone, ReleaseRequested, bound_buffering
from .cancellation import await_to_completion
from .config import Config
from .errors import TusError
from .hooks import (
    POST_CREATE,
    POST_FINISH,
    POST_RECEIVE,
    POST_TERMINATE,
    PRE_CREATE,
    PRE_FINISH,
    PRE_GET,
    PRE_TERMINATE,
    HookRunner,
    checked_changes,
)
from .info import UploadInfo
from .keys import BODY, BYTES_IN, HOOK_HEADERS, MAX_SIZE, STOP_REASON, UPLOAD_ID
from .limits import UploadSlots, check_metadata
from .locks import Locker
from .metrics import Metrics
from .stores.base import (
    ConcatenatingStore,
    FileDownload,
    LengthDeferringStore,
    RedirectDownload,
    Store,
    StreamDownload,
    TerminatingStore,
    store_extensions,
)
from .urls import collection_path, request_origin, upload_location

log = logging.getLogger("tusserver")

# A PATCH saves a later expiry when the saved one is less than this share of `expire_after`
# away: at most every expire_after/3 while bytes flow, and never expired on the way.
EXPIRY_REFRESH = 2 / 3


@dataclasses.dataclass
class _Posts:
    """post-* events held back while the request holds an upload's lock, so that a slow
    hook never holds it; delivered once the lock is released."""

    events: list[tuple[str, UploadInfo]] = dataclasses.field(default_factory=list)

    def add(self, name: str, info: UploadInfo) -> None:
        self.events.append((name, copy.deepcopy(info)))  # as it is now, not as it is later


class TusHandlers:
    def __init__(
        self,
        config: Config,
        store: Store,
        locker: Locker,
        hooks: HookRunner | None = None,
        *,
        metrics: Metrics | None = None,
        max_size_for: Callable[[web.Request], int | None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.locker = locker
        self.hooks = hooks or HookRunner(None, None)
        self.max_size_for = max_size_for
        self.uploads = UploadSlots(config.max_concurrent_uploads)
        if metrics is not None:
            metrics.active_uploads.set_function(lambda: self.uploads.active)
        # checksum-trailer is not offered: aiohttp parses request trailers but does not expose them.
        self.extensions = store_extensions(store) + ["checksum"]
        if config.expire_after is not None:
            self.extensions.append("expiration")

    # -- helpers -----------------------------------------------------------

    def _upload_id(self, request: web.Request) -> str:
        upload_id = request.match_info["upload_id"]
        if not protocol.is_valid_upload_id(upload_id):
            raise TusError(errors.NOT_FOUND)
        request[UPLOAD_ID] = upload_id
        return upload_id

    async def _load(self, upload_id: str) -> UploadInfo:
        info = await self.store.get_info(upload_id)
        if info.expired(time.time(), self.config.expire_finished):
            raise TusError(errors.GONE)
        return info

    def _state_headers(self, info: UploadInfo) -> dict[str, str]:
        headers = {"Upload-Offset": str(info.offset), "Cache-Control": "no-store"}
        if info.expires is not None and not info.finished:
            headers["Upload-Expires"] = protocol.http_date(info.expires)
        return headers

    def _max_size(self, request: web.Request) -> int | None:
        """The smaller of `max_size` and the embedder's `max_size_for(request)`."""
        if MAX_SIZE not in request:
            limits = [self.config.max_size, self.max_size_for(request) if self.max_size_for else None]
            request[MAX_SIZE] = min((n for n in limits if n is not None), default=None)
        return request[MAX_SIZE]

    def _check_size(self, request: web.Request, length: int | None) -> None:
        max_size = self._max_size(request)
        if length is not None and max_size is not None and length > max_size:
            raise TusError(errors.MAX_SIZE_EXCEEDED, f"limit is {max_size} bytes")

    async def _receive(self, request: web.Request, info: UploadInfo, posts: _Posts) -> None:
        """Append the request body to `info` (locked by the caller) and finish the
        upload when it is complete. Updates `info.offset`."""
        checksum = protocol.parse_checksum(_header(request, "Upload-Checksum"))
        content_length = protocol.parse_content_length(request.headers.get("Content-Length"))
        max_size = self._max_size(request)
        if info.length is not None:
            limit: int | None = info.length - info.offset
        elif max_size is not None:
            limit = max_size - info.offset
        else:
            limit = None
        if content_length is not None and limit is not None and content_length > limit:
            raise TusError(errors.EXCEEDS_UPLOAD_LENGTH, f"{limit} bytes remain")
        body = Body(
            request.content,
            limit,
            checksum,
            self.config.read_timeout,
            self.config.min_upload_rate,
            self.config.min_upload_rate_window,
        )
        request[BODY] = body
        if STOP_REASON in request:  # asked to let go before the body started
            body.stop(request[STOP_REASON])
        # Before any byte: a cleaner in another process (cron, no shared lock) must never
        # find this upload expired while it receives bytes.
        await self._extend_expiry(info)
        stream = body if self.config.expire_after is None else self._keeping_alive(info, body)
        progress = self._report_progress(request, info, body)
        try:
            # The store call ends before the lock is released, even when this request is
            # cancelled (a dropped client, shutdown): then its body stops, and what arrived is kept.
            info.offset = await await_to_completion(
                self.store.append(info, stream, atomic=checksum is not None),
                on_cancel=lambda: stop_body(request, ClientGone("the request was cancelled")),
            )
        except Exception:
            if body.received and self.config.expire_after is not None:
                await self._save_expiry(info)  # the client resumes from here: a full expire_after
            raise
        finally:
            request[BYTES_IN] = body.received
            if progress is not None:
                progress.cancel()
        if body.received and self.hooks.wants(POST_RECEIVE):
            posts.add(POST_RECEIVE, info)
        if self.config.expire_after is not None:
            info.expires = time.time() + self.config.expire_after
        if info.length is not None and info.offset == info.length and not info.finished:
            await self._finish(request, info, posts)
        elif self.config.expire_after is not None:
            await self.store.save_info(info)
        if body.overflowed:
            raise TusError(errors.EXCEEDS_UPLOAD_LENGTH, "bytes past the length were discarded")

    async def _extend_expiry(self, info: UploadInfo) -> None:
        """Save a later expiry when the saved one comes close (see EXPIRY_REFRESH)."""
        if self.config.expire_after is None:
            return
        now = time.time()
        # None: saved before expiry was configured.
        if info.expires is None or info.expires - now < self.config.expire_after * EXPIRY_REFRESH:
            info.expires = now + self.config.expire_after
            await self.store.save_info(info)

    async def _keeping_alive(self, info: UploadInfo, body: Body) -> AsyncIterator[bytes]:
        """`body`, moving the saved expiry forward while bytes flow. Between two chunks the
        store waits for the next one and writes nothing, so saving `.info` there never races
        the store's own writes of it (the S3 store records its multipart upload there)."""
        async for chunk in body:
            yield chunk
            await self._extend_expiry(info)

    async def _save_expiry(self, info: UploadInfo) -> None:
        assert self.config.expire_after is not None
        info.expires = time.time() + self.config.expire_after
        try:
            await self.store.save_info(info)
        except Exception as exc:  # the request's own failure is what the client must see
            log.warning("could not save the expiry of upload %s: %s", info.id, exc)

    @contextlib.asynccontextmanager
    async def _locked(
        self, request: web.Request, upload_id: str, posts: _Posts | None = None, *, interrupt: bool = True
    ) -> AsyncIterator[_Posts]:
        """Hold the upload's lock for the block. post-* events the block adds are delivered
        after the lock is released (even when the block fails: they happened), by the
        outermost block when `posts` comes from one."""
        outermost = posts is None
        held_back = _Posts() if posts is None else posts
        try:
            async with self.locker.lock(upload_id, self._release(request) if interrupt else None):
                yield held_back
        finally:
            if outermost:
                await self._deliver(request, held_back)

    async def _deliver(self, request: web.Request, posts: _Posts) -> None:
        for name, info in posts.events:
            result = await self.hooks.post(name, request, info)
            if name == POST_FINISH and result.headers:
                request.setdefault(HOOK_HEADERS, {}).update(result.headers)

    def _report_progress(self, request: web.Request, info: UploadInfo, body: Body) -> asyncio.Task | None:
        """post-receive every `progress_interval` seconds while bytes arrive (0: only at the end)."""
        if not self.config.progress_interval or not self.hooks.wants(POST_RECEIVE):
            return None

        async def report() -> None:
            reported = 0
            while True:
                await asyncio.sleep(self.config.progress_interval)
                if body.received != reported:
                    reported = body.received
                    now = dataclasses.replace(info, offset=info.offset + reported)
                    await self.hooks.post(POST_RECEIVE, request, now)

        return asyncio.create_task(report())

    def _release(self, request: web.Request):
        def release() -> None:
            stop_body(request, ReleaseRequested())

        return release

    # -- verbs ---------------------------------------------------------------

    async def options(self, request: web.Request) -> web.Response:
        headers = {
            "Tus-Version": protocol.TUS_VERSION,
            "Tus-Extension": ",".join(self.extensions),
            "Tus-Checksum-Algorithm": ",".join(protocol.CHECKSUM_ALGORITHMS),
        }
        max_size = self._max_size(request)
        if max_size is not None:
            headers["Tus-Max-Size"] = str(max_size)
        return web.Response(status=200, headers=headers)  # as tusd: 200, which checkers expect

    async def post(self, request: web.Request) -> web.Response:
        if protocol.is_offset_content_type(request.headers.get("Content-Type")):
            bound_buffering(request.content)  # before any wait: meanwhile aiohttp reads on
            with self.uploads.take():  # a body: an upload in progress, within the instance's limit
                return await self._create(request)
        return await self._create(request)

    async def _create(self, request: web.Request) -> web.Response:
        metadata = protocol.parse_metadata(request.headers.get("Upload-Metadata"))
        check_metadata(request.headers.get("Upload-Metadata"), metadata, self.config)
        concat = protocol.parse_concat(_header(request, "Upload-Concat"))
        if concat is not None and not isinstance(self.store, ConcatenatingStore):
            raise TusError(errors.UNSUPPORTED_EXTENSION, "concatenation")
        if concat is not None and concat.final:
            return await self._create_final(request, concat, metadata)
        length = protocol.parse_creation_length(
            _header(request, "Upload-Length"), _header(request, "Upload-Defer-Length")
        )
        if length is None and not isinstance(self.store, LengthDeferringStore):
            raise TusError(errors.UNSUPPORTED_EXTENSION, "creation-defer-length")
        self._check_size(request, length)
        # Some clients label an empty POST application/octet-stream; only a real body must be ours.
        with_body = protocol.is_offset_content_type(request.headers.get("Content-Type"))
        if not with_body and request.body_exists:
            protocol.check_content_type(request.headers.get("Content-Type"))
        if with_body:
            # Everything that can reject the body is checked before the upload exists.
            protocol.parse_checksum(_header(request, "Upload-Checksum"))
            content_length = protocol.parse_content_length(request.headers.get("Content-Length"))
            limit = length if length is not None else self._max_size(request)
            if limit is not None and content_length is not None and content_length > limit:
                raise TusError(errors.EXCEEDS_UPLOAD_LENGTH, f"at most {limit} bytes fit")
        info = self._new_info(request, length, metadata)
        info.concat = "partial" if concat is not None else None
        await self._create_upload(request, info)
        await self.hooks.post(POST_CREATE, request, info)
        headers = {"Location": upload_location(request, self.config, info.id)}
        if with_body:
            try:
                async with self._locked(request, info.id) as posts:
                    await self._receive(request, info, posts)
            except TusError as exc:
                # The upload exists and keeps what arrived: the client can resume it.
                exc.headers.setdefault("Location", headers["Location"])
                raise
            headers.update(self._state_headers(info))
        elif info.expires is not None:
            headers["Upload-Expires"] = protocol.http_date(info.expires)
        if length == 0 and not info.finished:
            posts = _Posts()
            await self._finish(request, info, posts)
            await self._deliver(request, posts)
        return web.Response(status=201, headers=headers)

    async def _create_upload(self, request: web.Request, info: UploadInfo) -> None:
        """Run pre-create, apply what it changes (metadata, and the id = storage key), and
        create the upload in the store."""
        changes = checked_changes(await self.hooks.pre(PRE_CREATE, request, info))
        if changes.metadata is not None:
            info.metadata = changes.metadata
        if changes.upload_id is None or changes.upload_id == info.id:
            await self.store.create(info)
            return
        info.id = request[UPLOAD_ID] = changes.upload_id
        # A taken id is usually seen here, without asking a PATCH that holds its lock to let go.
        await self._check_id_free(info.id)
        # Two creations of one chosen id: the store's create is atomic per id, so the loser
        # gets 409. Checking again under the id's lock makes that hold also for S3-compatible
        # services that ignore If-None-Match (within one lock domain: the process, or Redis).
        async with self.locker.lock(info.id):
            await self._check_id_free(info.id)
            await self.store.create(info)

    async def _check_id_free(self, upload_id: str) -> None:
        try:
            await self.store.get_info(upload_id)
        except TusError as exc:
            if exc.kind is not errors.NOT_FOUND:
                raise
        else:
            raise TusError(errors.UPLOAD_ID_TAKEN)

    def _new_info(self, request: web.Request, length: int | None, metadata: protocol.Metadata) -> UploadInfo:
        info = UploadInfo(id=protocol.new_upload_id(), length=length, metadata=metadata)
        if self.config.expire_after is not None:
            info.expires = time.time() + self.config.expire_after
        request[UPLOAD_ID] = info.id
        return info

    async def _create_final(
        self, request: web.Request, concat: protocol.Concat, metadata: protocol.Metadata
    ) -> web.Response:
        if _header(request, "Upload-Length") is not None:
            raise TusError(errors.FINAL_WITH_LENGTH)
        base, origin = collection_path(request), request_origin(request, self.config)
        partial_ids = [protocol.upload_id_from_url(url, base, origin) for url in concat.urls]
        lengths: list[int | None] = []
        for partial_id in partial_ids:
            try:
                partial = await self._load(partial_id)
            except TusError as exc:
                if exc.kind in (errors.NOT_FOUND, errors.GONE):
                    raise TusError(errors.PARTIAL_NOT_FOUND, partial_id) from None
                raise
            if partial.concat != "partial":
                raise TusError(errors.NOT_PARTIAL, partial_id)
            lengths.append(partial.length)
        length = None if None in lengths else sum(n for n in lengths if n is not None)
        self._check_size(request, length)
        info = self._new_info(request, length, metadata)
        info.concat, info.partials = "final", partial_ids
        await self._create_upload(request, info)
        for partial_id in dict.fromkeys(partial_ids):
            await self.store.link_final(partial_id, info.id)
        await self.hooks.post(POST_CREATE, request, info)
        info = await self._complete_final(request, info.id) or info
        headers = {"Location": upload_location(request, self.config, info.id)}
        if info.expires is not None and not info.finished:
            headers["Upload-Expires"] = protocol.http_date(info.expires)
        return web.Response(status=201, headers=headers)

    async def _finish(self, request: web.Request, info: UploadInfo, posts: _Posts) -> None:
        # A pre-finish rejection leaves the upload complete but unfinished: a later HEAD
        # or empty PATCH asks again.
        try:
            await self.hooks.pre(PRE_FINISH, request, info)
        except Exception:
            # `info` may hold what only finish() would have saved (the S3 store's object
            # written whole, without a multipart upload): save it, or the bytes look lost.
            await self.store.save_info(info)
            raise
        await self.store.finish(info)
        posts.add(POST_FINISH, info)
        if info.concat == "partial":
            for final_id in await self.store.finals_of(info.id):
                if await self._complete_final(request, final_id, posts) is None:  # the final was deleted
                    await self.store.unlink_final(info.id, final_id)

    async def _complete_final(
        self, request: web.Request, final_id: str, posts: _Posts | None = None
    ) -> UploadInfo | None:
        """Concatenate a final upload once all its partials are finished. Idempotent,
        so the last partial's finish and the final's creation may both call it."""
        async with self._locked(request, final_id, posts, interrupt=False) as posts:
            try:
                final = await self.store.get_info(final_id)
            except TusError:
                return None
            if not final.finished:
                partials = await self._finished_partials(final)
                if partials is None:
                    return final
                await self.store.concatenate(final, partials)
                posts.add(POST_FINISH, final)
        for partial_id in dict.fromkeys(final.partials):
            await self.store.unlink_final(partial_id, final_id)
        return final

    async def _finished_partials(self, final: UploadInfo) -> list[UploadInfo] | None:
        partials = []
        for partial_id in final.partials:
            try:
                partial = await self.store.get_info(partial_id)
            except TusError:
                return None  # a partial was deleted: this final can never finish
            if not partial.finished:
                return None
            partials.append(partial)
        return partials

    async def head(self, request: web.Request) -> web.Response:
        upload_id = self._upload_id(request)
        async with self._locked(request, upload_id) as posts:
            info = await self._load(upload_id)
            if info.concat != "final" and info.length == info.offset and not info.finished:
                # Every byte is stored but the finish never ran (its PATCH was interrupted,
                # or the server died): finish now, since the client takes this as done.
                await self._finish(request, info, posts)
        if info.concat == "final" and not info.finished:
            info = await self._complete_final(request, upload_id) or info  # repairs a crash between finishes
        headers = self._state_headers(info)
        if info.concat == "final":
            base = collection_path(request)
            headers["Upload-Concat"] = "final;" + " ".join(base + p for p in info.partials)
            if not info.finished:
                del headers["Upload-Offset"]  # concatenation-unfinished: no offset until done
        elif info.concat == "partial":
            headers["Upload-Concat"] = "partial"
        if info.length is None:
            headers["Upload-Defer-Length"] = "1"
        else:
            headers["Upload-Length"] = str(info.length)
        if info.metadata:
            headers["Upload-Metadata"] = protocol.format_metadata(info.metadata)
        return web.Response(status=200, headers=headers)

    async def patch(self, request: web.Request) -> web.Response:
        bound_buffering(request.content)  # before any wait: meanwhile aiohttp reads on
        with self.uploads.take():  # an upload in progress, within the instance's limit
            return await self._patch(request)

    async def _patch(self, request: web.Request) -> web.Response:
        upload_id = self._upload_id(request)
        protocol.check_content_type(request.headers.get("Content-Type"))
        offset = protocol.parse_upload_offset(_header(request, "Upload-Offset"))
        new_length = _header(request, "Upload-Length")
        length = None if new_length is None else protocol.parse_upload_length(new_length)
        protocol.parse_checksum(_header(request, "Upload-Checksum"))  # malformed: refused before any change
        async with self._locked(request, upload_id) as posts:
            info = await self._load(upload_id)
            if info.concat == "final":
                raise TusError(errors.MODIFY_FINAL)
            if offset != info.offset:
                # The current offset comes along, so the client can resume without a HEAD.
                raise TusError(
                    errors.MISMATCHED_OFFSET, f"upload is at {info.offset}", headers=self._state_headers(info)
                )
            if length is not None and length != info.length:
                await self._set_length(request, info, length)
            if info.finished:
                # Any byte now would go past Upload-Length (413); a chunked body may carry bytes too.
                content_length = protocol.parse_content_length(request.headers.get("Content-Length"))
                if content_length or (content_length is None and request.body_exists):
                    raise TusError(errors.UPLOAD_FINISHED)
            else:
                await self._receive(request, info, posts)
        return web.Response(status=204, headers=self._state_headers(info))

    async def _set_length(self, request: web.Request, info: UploadInfo, length: int) -> None:
        if info.length is not None:
            raise TusError(errors.LENGTH_ALREADY_SET)
        if length < info.offset:
            raise TusError(errors.LENGTH_BELOW_OFFSET)
        self._check_size(request, length)
        # A body that will not fit is refused before the length is saved.
        content_length = protocol.parse_content_length(request.headers.get("Content-Length"))
        if content_length is not None and info.offset + content_length > length:
            raise TusError(errors.EXCEEDS_UPLOAD_LENGTH, f"{length - info.offset} bytes remain")
        assert isinstance(self.store, LengthDeferringStore)
        await self.store.set_length(info, length)

    async def delete(self, request: web.Request) -> web.Response:
        upload_id = self._upload_id(request)
        if not isinstance(self.store, TerminatingStore):
            raise TusError(errors.METHOD_NOT_ALLOWED)
        async with self.locker.lock(upload_id, self._release(request)):
            info = await self.store.get_info(upload_id)
            await self.hooks.pre(PRE_TERMINATE, request, info)
            await self.store.terminate(info)
        await self.hooks.post(POST_TERMINATE, request, info)
        return web.Response(status=204)

    async def get(self, request: web.Request) -> web.StreamResponse:
        upload_id = self._upload_id(request)
        if not self.config.downloads:
            raise TusError(errors.DOWNLOAD_DISABLED)
        info = await self._load(upload_id)
        if not info.finished:
            raise TusError(errors.UPLOAD_NOT_FINISHED, f"{info.offset} of {info.length} bytes received")
        if self.config.downloads_require_hook and not self.hooks.wants(PRE_GET):
            raise TusError(errors.DOWNLOAD_NOT_APPROVED)
        await self.hooks.pre(PRE_GET, request, info)
        headers = protocol.download_headers(info.metadata)
        download = await self.store.download(info)
        if isinstance(download, FileDownload):
            return web.FileResponse(download.path, headers=headers)
        if isinstance(download, RedirectDownload):
            raise web.HTTPFound(download.url)
        return await _stream_download(request, download, headers)


def _header(request: web.Request, name: str) -> str | None:
    """The value of a single-valued tus header; two different values are a 400."""
    return protocol.single_value(name, request.headers.getall(name, []))


def stop_body(request: web.Request, reason: Exception) -> None:
    """Stop receiving the request's body now, or as soon as it starts; the bytes
    received are kept and the request answers as `reason` says."""
    request.setdefault(STOP_REASON, reason)
    body = request.get(BODY)
    if body is not None:
        body.stop(reason)


async def _stream_download(
    request: web.Request, download: StreamDownload, headers: dict[str, str]
) -> web.StreamResponse:
    size = download.size
    try:
        rng = request.http_range
    except ValueError:
        raise TusError(errors.INVALID_RANGE, headers={"Content-Range": f"bytes */{size}"}) from None
    start, stop = rng.start, rng.stop
    partial = start is not None or stop is not None
    if start is None:
        start = 0
    elif start < 0:  # suffix range: the last -start bytes
        start = max(size + start, 0)
    if stop is None or stop > size:
        stop = size
    if partial and (start >= size or start >= stop):
        raise TusError(errors.INVALID_RANGE, headers={"Content-Range": f"bytes */{size}"})
    response = web.StreamResponse(status=206 if partial else 200, headers=headers)
    response.headers["Accept-Ranges"] = "bytes"
    if download.etag:
        response.headers["ETag"] = download.etag
    if partial:
        response.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    response.content_length = stop - start
    if stop == start:  # an empty upload: nothing to read
        await response.prepare(request)
        await response.write_eof()
        return response
    sent = 0
    try:
        # The store's first call happens on entry, before any header is sent: a missing
        # object or an unavailable store is still an ordinary tus error (404, 503).
        async with download.open(start, stop) as chunks:
            await response.prepare(request)
            async for chunk in chunks:
                await response.write(chunk)
                sent += len(chunk)
            await response.write_eof()
    except Exception as exc:
        if not response.prepared:
            raise
        # An answer now would be written into the body: close the connection instead, so
        # the client sees a body shorter than Content-Length, then EOF.
        _log_broken_download(request, exc, sent, stop - start)
        _drop_connection(request)
    return response


def _log_broken_download(request: web.Request, exc: Exception, sent: int, total: int) -> None:
    if isinstance(exc, ConnectionError):  # from write(): the store raises TusError only
        log.info("client went away after %d of %d bytes of %s: %s", sent, total, request.path, exc)
    elif isinstance(exc, TusError):
        log.warning("download of %s failed after %d of %d bytes; connection closed: %s", request.path, sent, total, exc)
    else:
        log.error(
            "download of %s failed after %d of %d bytes; connection closed", request.path, sent, total, exc_info=exc
        )


def _drop_connection(request: web.Request) -> None:
    """Close the connection once what is buffered is sent: no further response on it."""
    request.protocol.force_close()
    if request.transport is not None:
        request.transport.close()
