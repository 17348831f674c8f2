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

from . import errors, protocol
from . import storage_errors as storage
from .auth import auth_enabled
from .body import Body, ClientGone, ReleaseRequested
from .cancellation import await_to_completion
from .config import Config
from .errors import TusError
from .exchange import Exchange, Response, parse_range
from .finals import FinalWorker, failure
from .hooks import (
    POST_CREATE,
    POST_FINISH,
    POST_RECEIVE,
    POST_TERMINATE,
    PRE_ACCESS,
    PRE_CREATE,
    PRE_FINISH,
    PRE_GET,
    PRE_TERMINATE,
    HookResult,
    HookRunner,
    checked_changes,
    metadata_text,
)
from .info import FinalProgress, UploadInfo
from .limits import DownloadSlots, UploadSlots, check_metadata
from .locking import Locker, seeing_version
from .metrics import Metrics
from .owners import Caller, Owners, Quota, parse_cursor, parse_limit
from .placement import Placement, render_key
from .storage_errors import StorageError
from .stores.base import (
    ConcatenatingStore,
    FileDownload,
    LengthDeferringStore,
    OwnerIndexStore,
    RedirectDownload,
    ReleasingStore,
    Store,
    StreamDownload,
    TerminatingStore,
    Upload,
    open_upload,
    store_extensions,
    stream_file,
)
from .stores.owner_index import ALL, owner_key
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

    def add(self, name: str, info: UploadInfo, *, snapshot: bool = True) -> None:
        """`snapshot`: deliver the upload as it is now, not as it is later (a deep copy)."""
        self.events.append((name, copy.deepcopy(info) if snapshot else info))


class TusHandlers:
    def __init__(
        self,
        config: Config,
        store: Store,
        locker: Locker,
        hooks: HookRunner | None = None,
        *,
        metrics: Metrics | None = None,
        max_size_for: Callable[[Exchange], int | None] | None = None,
        quota_for: Callable[[Exchange], Quota | None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.locker = locker
        self.hooks = hooks or HookRunner(None, None)
        self.max_size_for = max_size_for
        self.quota_for = quota_for
        # Owners are checked, indexed and held to quotas while tokens say who calls.
        self.owners = Owners(store, indexing=auth_enabled(config))
        self.uploads = UploadSlots(config.max_concurrent_uploads)
        self.finals = FinalWorker(store, locker, self._post_finish)
        self.downloads = DownloadSlots(config.max_concurrent_downloads)
        if metrics is not None:
            metrics.active_uploads.set_function(lambda: self.uploads.active)
        # checksum-trailer is not offered: aiohttp parses request trailers but does not expose them.
        self.extensions = store_extensions(store) + ["checksum"]
        if config.expire_after is not None:
            self.extensions.append("expiration")

    # -- helpers -----------------------------------------------------------

    def upload_id_of(self, request: Exchange) -> str:
        upload_id = request.route_id
        if upload_id is None or not protocol.is_valid_upload_id(upload_id):
            raise TusError(errors.NOT_FOUND)
        request.upload_id = upload_id
        return upload_id

    async def _load(self, upload_id: str, request: Exchange | None = None) -> UploadInfo:
        """The upload's state; for `request`, only if its caller may use it (else 404)."""
        info = await self.store.get_info(upload_id)
        self._check_usable(info, request)
        return info

    async def _open(self, upload_id: str, request: Exchange) -> Upload:
        """The upload's session, for `request`, which holds its lock (see _load)."""
        upload = await open_upload(self.store, upload_id)
        self._check_usable(upload.info, request)
        return upload

    def _check_usable(self, info: UploadInfo, request: Exchange | None) -> None:
        if request is not None:
            self._check_owner(request, info)
        if info.expired(time.time(), self.config.expire_finished):
            raise TusError(errors.GONE)
        failed = failure(info)  # a final that can never complete says why, to HEAD, GET and PATCH
        if failed is not None:
            raise TusError(failed)

    def _caller(self, request: Exchange) -> Caller | None:
        """Who calls, by the bearer token; None while tokens are off."""
        claims = request.auth_claims
        if claims is None:
            return None
        return Caller(claims.subject, "admin" in claims.scopes, claims.upload)

    def _may_use(self, request: Exchange, info: UploadInfo) -> bool:
        caller = self._caller(request)
        return caller is None or caller.may_use(info)

    def _check_owner(self, request: Exchange, info: UploadInfo) -> None:
        if not self._may_use(request, info):
            raise TusError(errors.NOT_FOUND)  # as if it did not exist: ids are not confirmed to others

    async def _access(self, request: Exchange, upload_id: str, action: str) -> None:
        """Before the upload's lock is taken, so that a request that will be refused never
        asks the holder (the owner's PATCH) to let go: the owner check, then pre-access."""
        caller = self._caller(request)
        if (caller is None or caller.admin) and not self.hooks.wants(PRE_ACCESS):
            return  # nothing to check
        if isinstance(self.store, OwnerIndexStore) and not self.hooks.wants(PRE_ACCESS):
            info = await self.store.peek_info(upload_id)  # one read: the owner check needs no offset
        else:
            info = await self.store.get_info(upload_id)
        self._check_owner(request, info)
        await self.hooks.pre(PRE_ACCESS, request, info, action=action)

    def _quota(self, request: Exchange) -> Quota:
        """`quota_bytes` / `quota_uploads`, tightened by the embedder's `quota_for(request)`."""
        if request.quota is None:
            quota = Quota(self.config.quota_bytes, self.config.quota_uploads)
            request.quota = quota.tighter(self.quota_for(request) if self.quota_for else None)
        return request.quota

    def _state_headers(self, info: UploadInfo) -> dict[str, str]:
        headers = {"Upload-Offset": str(info.offset), "Cache-Control": "no-store"}
        if info.expires is not None and not info.finished:
            headers["Upload-Expires"] = protocol.http_date(info.expires)
        return headers

    def max_size(self, request: Exchange) -> int | None:
        """The smaller of `max_size` and the embedder's `max_size_for(request)`."""
        if not request.max_size_known:
            limits = [self.config.max_size, self.max_size_for(request) if self.max_size_for else None]
            request.max_size = min((n for n in limits if n is not None), default=None)
            request.max_size_known = True
        return request.max_size

    def check_append_size(self, content_length: int | None) -> None:
        """Refuse a body announced larger than `max_append_size`, before anything changes."""
        most = self.config.max_append_size
        if content_length is not None and most is not None and content_length > most:
            raise TusError(errors.APPEND_TOO_LARGE, f"at most {most} bytes per request")

    def check_size(self, request: Exchange, length: int | None) -> None:
        max_size = self.max_size(request)
        if length is not None and max_size is not None and length > max_size:
            raise TusError(errors.MAX_SIZE_EXCEEDED, f"limit is {max_size} bytes")

    async def _receive_owned(
        self, request: Exchange, upload: Upload, posts: _Posts, *, completes: bool = False
    ) -> None:
        """_receive() within the owner's quota: a deferred upload's body may bring what the
        quota has left, held for it meanwhile. `completes`: the body is the rest of the upload."""
        async with self.owners.receiving(upload.info, self._quota(request), request.content_length) as granted:
            await self._receive(request, upload, posts, granted)
        if completes and not upload.info.finished:
            await self._complete(request, upload, posts)

    async def _receive(self, request: Exchange, upload: Upload, posts: _Posts, quota_left: int | None = None) -> None:
        """Append the request body to the upload (locked by the caller) and finish it when
        it is complete. Updates `upload.info.offset`."""
        info = upload.info
        checksum, content_length = request.checksum, request.content_length
        max_size = self.max_size(request)
        if info.length is not None:
            limit: int | None = info.length - info.offset
        elif max_size is not None:
            limit = max_size - info.offset
        else:
            limit = None
        if content_length is not None and limit is not None and content_length > limit:
            raise TusError(errors.EXCEEDS_UPLOAD_LENGTH, f"{limit} bytes remain")
        self.check_append_size(content_length)
        by_quota = quota_left is not None and (limit is None or quota_left < limit)
        if by_quota:
            limit = quota_left
        most = self.config.max_append_size
        by_append = most is not None and (limit is None or most < limit)
        if by_append:
            limit, by_quota = most, False
        body = Body(
            request.content,
            limit,
            checksum,
            self.config.read_timeout,
            self.config.min_upload_rate,
            self.config.min_upload_rate_window,
        )
        request.body = body
        if request.stop_reason is not None:  # asked to let go before the body started
            body.stop(request.stop_reason)
        # Before any byte: a cleaner in another process (cron, no shared lock) must never
        # find this upload expired while it receives bytes.
        await self._extend_expiry(upload)
        stream = body if self.config.expire_after is None else self._keeping_alive(upload, body)
        progress = self._report_progress(request, info, body)
        try:
            # The store call ends before the lock is released, even when this request is
            # cancelled (a dropped client, shutdown): then its body stops, and what arrived is kept.
            await await_to_completion(
                upload.append(stream, atomic=checksum is not None),
                on_cancel=lambda: stop_body(request, ClientGone("the request was cancelled")),
            )
        except Exception:
            # A checksummed body is all or nothing: failed, it stored nothing, and a rejected
            # request changes nothing. Otherwise the client resumes from what was kept.
            if body.received and checksum is None and self.config.expire_after is not None:
                await self._save_expiry(upload)  # a full expire_after from here
            raise
        finally:
            request.bytes_in = body.received
            if progress is not None:
                progress.cancel()
        if body.received and self.hooks.wants(POST_RECEIVE):
            posts.add(POST_RECEIVE, info)
        if self.config.expire_after is not None:
            info.expires = time.time() + self.config.expire_after
        if info.length is not None and info.offset == info.length and not info.finished:
            await self._finish(request, upload, posts)
        elif self.config.expire_after is not None:
            await upload.save_info()
        if body.overflowed and by_append:
            raise TusError(errors.APPEND_TOO_LARGE, "bytes past it were discarded")
        if body.overflowed and by_quota:
            quota = self._quota(request).bytes
            raise TusError(errors.QUOTA_EXCEEDED, f"quota_bytes is {quota} bytes; bytes past it were discarded")
        if body.overflowed:
            raise TusError(errors.EXCEEDS_UPLOAD_LENGTH, "bytes past the length were discarded")

    async def _extend_expiry(self, upload: Upload) -> None:
        """Save a later expiry when the saved one comes close (see EXPIRY_REFRESH)."""
        if self.config.expire_after is None:
            return
        now, info = time.time(), upload.info
        # None: saved before expiry was configured.
        if info.expires is None or info.expires - now < self.config.expire_after * EXPIRY_REFRESH:
            info.expires = now + self.config.expire_after
            await upload.save_info()

    async def _keeping_alive(self, upload: Upload, body: Body) -> AsyncIterator[bytes]:
        """`body`, moving the saved expiry forward while bytes flow. Between two chunks the
        store waits for the next one and writes nothing, so saving `.info` there never races
        the store's own writes of it (the S3 store records its multipart upload there)."""
        async for chunk in body:
            yield chunk
            await self._extend_expiry(upload)

    async def _save_expiry(self, upload: Upload) -> None:
        assert self.config.expire_after is not None
        upload.info.expires = time.time() + self.config.expire_after
        try:
            await upload.save_info()
        except Exception as exc:  # the request's own failure is what the client must see
            log.warning("could not save the expiry of upload %s: %s", upload.info.id, exc)

    @contextlib.asynccontextmanager
    async def _locked(
        self, request: Exchange, upload_id: str, posts: _Posts | None = None, *, interrupt: bool = True
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

    async def _deliver(self, request: Exchange, posts: _Posts) -> None:
        for name, info in posts.events:
            if name == POST_FINISH:
                await self._post_finish(request, info)
            else:
                await self.hooks.post(name, request, info)

    def _report_progress(self, request: Exchange, info: UploadInfo, body: Body) -> asyncio.Task | None:
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

    def _release(self, request: Exchange):
        def release() -> None:
            stop_body(request, ReleaseRequested())

        return release

    # -- verbs ---------------------------------------------------------------

    async def options(self, request: Exchange) -> Response:
        headers = {
            "Tus-Version": protocol.TUS_VERSION,
            "Tus-Extension": ",".join(self.extensions),
            "Tus-Checksum-Algorithm": ",".join(protocol.CHECKSUM_ALGORITHMS),
        }
        max_size = self.max_size(request)
        if max_size is not None:
            headers["Tus-Max-Size"] = str(max_size)
        return Response(200, headers)  # as tusd: 200, which checkers expect

    async def post(self, request: Exchange) -> Response:
        if protocol.is_offset_content_type(request.headers.get("Content-Type")):
            request.content.bound()  # before any wait: meanwhile the front door reads on
            with self.uploads.take():  # a body: an upload in progress, within the instance's limit
                return await self._create(request)
        return await self._create(request)

    async def _create(self, request: Exchange) -> Response:
        metadata = protocol.parse_metadata(request.headers.get("Upload-Metadata"))
        check_metadata(request.headers.get("Upload-Metadata"), metadata, self.config)
        concat = protocol.parse_concat(request.single("Upload-Concat"))
        if concat is not None and not isinstance(self.store, ConcatenatingStore):
            raise TusError(errors.UNSUPPORTED_EXTENSION, "concatenation")
        if concat is not None and concat.final:
            return await self._create_final(request, concat, metadata)
        length = protocol.parse_creation_length(
            request.single("Upload-Length"), request.single("Upload-Defer-Length")
        )
        if length is None and not isinstance(self.store, LengthDeferringStore):
            raise TusError(errors.UNSUPPORTED_EXTENSION, "creation-defer-length")
        self.check_size(request, length)
        # Some clients label an empty POST application/octet-stream; only a real body must be ours.
        with_body = protocol.is_offset_content_type(request.headers.get("Content-Type"))
        if not with_body and request.body_exists:
            protocol.check_content_type(request.headers.get("Content-Type"))
        if with_body:
            # Everything that can reject the body is checked before the upload exists.
            _ = request.checksum  # parsed now: a malformed one is refused before the upload exists
            content_length = request.content_length
            limit = length if length is not None else self.max_size(request)
            if limit is not None and content_length is not None and content_length > limit:
                raise TusError(errors.EXCEEDS_UPLOAD_LENGTH, f"at most {limit} bytes fit")
            self.check_append_size(content_length)
        info = await self.create_upload(request, length, metadata, concat="partial" if concat is not None else None)
        headers = {"Location": upload_location(request, self.config, info.id)}
        if with_body:
            info = await self.receive_creation(request, info, headers["Location"])
            headers.update(self._state_headers(info))
        elif info.expires is not None:
            headers["Upload-Expires"] = protocol.http_date(info.expires)
        if length == 0 and not info.finished:
            await self.complete(request, info)
        return Response(201, headers)

    async def create_upload(
        self, request: Exchange, length: int | None, metadata: protocol.Metadata, *, concat: str | None = None
    ) -> UploadInfo:
        """A new upload (not a final concatenation): pre-create, owners and quota, the store,
        post-create."""
        info = self._new_info(request, length, metadata)
        info.concat = concat
        await self._create_upload(request, info)
        await self.hooks.post(POST_CREATE, request, info)
        return info

    async def complete(self, request: Exchange, info: UploadInfo) -> UploadInfo:
        """Finish the upload `info` describes now that its client says every byte is here
        (see `_complete`); its state after."""
        async with self._locked(request, info.id) as posts:
            # The creator's own upload, just made: no owner check (pre-create may name another).
            upload = await open_upload(self.store, info.id)
            await self._complete(request, upload, posts)
        return upload.info

    async def receive_creation(
        self, request: Exchange, info: UploadInfo, location: str, *, completes: bool = False
    ) -> UploadInfo:
        """Receive the body of the request that created `info` (tus creation-with-upload, or
        the draft's creation); `completes`: the body is the rest of the upload. Its state after."""
        try:
            async with self._locked(request, info.id) as posts:
                upload = await open_upload(self.store, info.id)  # the creator's, as in complete()
                await self._receive_owned(request, upload, posts, completes=completes)
            return upload.info
        except (TusError, StorageError) as exc:
            # The upload exists and keeps what arrived: the client can resume it.
            raise with_location(exc, location) from None
        except ReleaseRequested:
            raise TusError(errors.INTERRUPTED, headers={"Location": location}) from None

    async def _complete(self, request: Exchange, upload: Upload, posts: _Posts) -> None:
        """The client says every byte is here: a deferred length becomes the offset, and a
        known one must have been reached. Then the upload finishes."""
        info = upload.info
        if info.length is None:
            await self._set_length(request, upload, info.offset, body_pending=False)
        elif info.length != info.offset:
            raise TusError(errors.LENGTH_NOT_REACHED, f"{info.offset} of {info.length} bytes received")
        if not info.finished:
            await self._finish(request, upload, posts)

    async def _create_upload(self, request: Exchange, info: UploadInfo) -> None:
        """Run pre-create, apply what it changes (metadata, and the id = storage key), and
        create the upload in the store."""
        info.owner = request.auth_subject  # the hook sees it, and may choose another
        changes = checked_changes(await self.hooks.pre(PRE_CREATE, request, info))
        if changes.metadata is not None:
            info.metadata = changes.metadata
        if changes.server_metadata is not None:
            info.server_metadata = changes.server_metadata
        if changes.owner is not None:
            info.owner = changes.owner
        if changes.upload_id is None or changes.upload_id == info.id:
            async with self.owners.creating(info, self._quota(request)):
                await self.owners.add(info)
                await self._store_create(info, changes)
            return
        info.id = request.upload_id = changes.upload_id
        # A taken id is usually seen here, without asking a PATCH that holds its lock to let go.
        await self._check_id_free(info.id)
        # Two creations of one chosen id: the store's create is atomic per id, so the loser
        # gets 409. Checking again under the id's lock makes that hold also for S3-compatible
        # services that ignore If-None-Match (within one lock domain: the process, or Redis).
        async with self.owners.creating(info, self._quota(request)), self.locker.lock(info.id):
            await self._check_id_free(info.id)
            await self.owners.add(info)
            await self._store_create(info, changes)

    async def _store_create(self, info: UploadInfo, changes: HookResult) -> None:
        """The store's create, told where the bytes land: the hook's key, else the
        template's. Partial uploads are only parts of a final one: the template places the
        final, and a partial stays under its id unless a hook says otherwise. A store that
        predates placements is only asked for the default."""
        key = changes.storage_key
        if key is None and info.concat == "partial":
            key = info.id
        elif key is None:
            key = render_key(
                self.config.storage_key_template,
                upload_id=info.id,
                owner=info.owner,
                filename=info.metadata.get("filename"),
                created=info.created,
            )
        placement = Placement(
            key,
            bucket=changes.bucket,
            cache_control=changes.cache_control,
            storage_class=changes.storage_class,
            tags=dict(changes.tags or {}),
        )
        if placement.is_default(info.id):
            await self.store.create(info)
        else:
            await self.store.create(info, placement)

    async def _check_id_free(self, upload_id: str) -> None:
        try:
            await self.store.get_info(upload_id)
        except storage.NotFound:
            pass
        else:
            raise TusError(errors.UPLOAD_ID_TAKEN)

    def _new_info(self, request: Exchange, length: int | None, metadata: protocol.Metadata) -> UploadInfo:
        info = UploadInfo(id=protocol.new_upload_id(), length=length, metadata=metadata)
        if self.config.expire_after is not None:
            info.expires = time.time() + self.config.expire_after
        request.upload_id = info.id
        return info

    async def _create_final(self, request: Exchange, concat: protocol.Concat, metadata: protocol.Metadata) -> Response:
        if request.single("Upload-Length") is not None:
            raise TusError(errors.FINAL_WITH_LENGTH)
        # Bounded before anything is read: how many partials, each named once.
        if len(concat.urls) > self.config.max_concat_partials:
            raise TusError(errors.TOO_MANY_PARTIALS, f"at most {self.config.max_concat_partials}")
        base, origin = collection_path(request), request_origin(request, self.config)
        partial_ids = [protocol.upload_id_from_url(url, base, origin) for url in concat.urls]
        named: set[str] = set()
        for partial_id in partial_ids:
            if partial_id in named:
                raise TusError(errors.DUPLICATE_PARTIAL, partial_id)
            named.add(partial_id)
        partials = [await self._load_partial(request, partial_id) for partial_id in partial_ids]
        for partial in partials:
            await self._check_finals_of(partial.id)
        # Lengths still deferred are checked against the same limit once they are known.
        limit = self.max_size(request)
        known = sum(p.length for p in partials if p.length is not None)
        if limit is not None and known > limit:
            raise TusError(errors.MAX_SIZE_EXCEEDED, f"the partial uploads add up to {known} bytes; limit is {limit}")
        length = None if any(p.length is None for p in partials) else known
        info = self._new_info(request, length, metadata)
        info.concat, info.partials = "final", partial_ids
        info.progress = FinalProgress(limit=limit)
        for partial in partials:  # a finished partial stays finished: no need to read it again
            if not partial.finished:
                break
            info.progress.ready += 1
            info.progress.ready_bytes += partial.length or 0
        await self._create_upload(request, info)
        await self._link_final(info)
        await self.hooks.post(POST_CREATE, request, info)
        location = upload_location(request, self.config, info.id)
        # Submitted even with partials unfinished: one may have finished before the link existed.
        done = self.finals.submit(info.id, request)
        if done is not None and info.progress.ready == len(partial_ids):
            try:
                finished = await asyncio.shield(done)  # the client waits for its own final
                info = finished or info
            except (TusError, StorageError) as exc:
                raise with_location(exc, location) from None
        headers = {"Location": location}
        if info.expires is not None and not info.finished:
            headers["Upload-Expires"] = protocol.http_date(info.expires)
        return Response(201, headers)

    async def _load_partial(self, request: Exchange, partial_id: str) -> UploadInfo:
        try:
            partial = await self._load(partial_id)
        except storage.NotFound:
            raise TusError(errors.PARTIAL_NOT_FOUND, partial_id) from None
        except TusError as exc:
            if exc.kind is errors.GONE:
                raise TusError(errors.PARTIAL_NOT_FOUND, partial_id) from None
            raise
        if not self._may_use(request, partial):  # someone else's: as if it did not exist
            raise TusError(errors.PARTIAL_NOT_FOUND, partial_id)
        if partial.concat != "partial":
            raise TusError(errors.NOT_PARTIAL, partial_id)
        return partial

    async def _check_finals_of(self, partial_id: str, *, linked: bool = False) -> None:
        """Refuse a final beyond `max_finals_per_partial` for the partial; `linked`: the
        new final is among its links already."""
        assert isinstance(self.store, ConcatenatingStore)
        cap = self.config.max_finals_per_partial
        if len(await self.store.finals_of(partial_id)) - linked >= cap:
            raise TusError(errors.TOO_MANY_FINALS, f"{partial_id} is part of {cap} final uploads")

    async def _link_final(self, info: UploadInfo) -> None:
        """Link the new final from each partial. The links stay for the partial's life and
        count against its cap; concurrent creations that went past it together are undone."""
        assert isinstance(self.store, ConcatenatingStore)
        linked: list[str] = []
        try:
            for partial_id in info.partials:
                await self.store.link_final(partial_id, info.id)
                linked.append(partial_id)
            for partial_id in info.partials:
                await self._check_finals_of(partial_id, linked=True)
        except BaseException:
            for partial_id in linked:
                await self.store.unlink_final(partial_id, info.id)
            async with self.locker.lock(info.id):
                assert isinstance(self.store, TerminatingStore)
                await self.store.terminate(info)
            raise

    async def _finish(self, request: Exchange, upload: Upload, posts: _Posts) -> None:
        # A pre-finish rejection leaves the upload complete but unfinished: a later HEAD
        # or empty PATCH asks again.
        info = upload.info
        try:
            await self.hooks.pre(PRE_FINISH, request, info)
        except Exception:
            # `info` may hold what only finish() would have saved (the S3 store's object
            # written whole, without a multipart upload): save it, or the bytes look lost.
            await upload.save_info()
            raise
        await upload.finish()
        # Counted by the metrics either way; copied only for a hook that will see it.
        posts.add(POST_FINISH, info, snapshot=self.hooks.wants(POST_FINISH))
        if info.concat == "partial" and isinstance(self.store, ConcatenatingStore):
            # Their concatenations run in the background, not in this request.
            for final_id in await self.store.finals_of(info.id):
                self.finals.submit(final_id, request)

    async def _post_finish(self, request: Exchange, info: UploadInfo) -> None:
        result = await self.hooks.post(POST_FINISH, request, info)
        if result.headers:
            request.hook_headers.update(result.headers)
        if not self.config.keep_info_after_finish:
            await self._drop_state(info)

    async def _drop_state(self, info: UploadInfo) -> None:
        """keep_info_after_finish = false: the finished upload's state goes, its bytes stay
        at their key (post-finish told where). A partial keeps its state: a final made
        of it later reads it."""
        if not info.finished or info.concat == "partial" or not isinstance(self.store, ReleasingStore):
            return
        try:
            async with self.locker.lock(info.id):
                await self.store.release(info)
        except Exception as exc:  # the upload is finished: its client has its answer
            log.warning("could not delete the state of finished upload %s: %s", info.id, exc)

    async def current(self, request: Exchange, upload_id: str) -> UploadInfo:
        """The upload's state for an offset request (tus HEAD, the draft's HEAD or GET). Taking
        the lock stops a request in flight on it, so the offset is one the next PATCH accepts."""
        await self._access(request, upload_id, "head")
        info = None
        version = await self.locker.version(upload_id)
        if version is not None:
            # Nobody holds or awaits the lock: nothing to stop, and HEADs of one upload do not
            # queue for it (behind Redis, 32 at once ran into 423s).
            with seeing_version(upload_id, version):
                info = await self._load(upload_id, request)
            if _needs_finish(info):
                info = None
        if info is None:
            async with self._locked(request, upload_id) as posts:
                upload = await self._open(upload_id, request)
                info = upload.info
                if _needs_finish(info):
                    # Every byte is stored but the finish never ran (its PATCH was interrupted,
                    # or the server died): finish now, since the client takes this as done.
                    await self._finish(request, upload, posts)
        if info.concat == "final" and not info.finished:
            # Answered from the final's .info alone; the check (which also repairs a crash or
            # a dropped submit) runs in the background, once however many HEADs ask.
            self.finals.submit(upload_id, request)
        return info

    async def head(self, request: Exchange) -> Response:
        upload_id = self.upload_id_of(request)
        info = await self.current(request, upload_id)
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
        return Response(200, headers)

    async def patch(self, request: Exchange) -> Response:
        request.content.bound()  # before any wait: meanwhile the front door reads on
        with self.uploads.take():  # an upload in progress, within the instance's limit
            return await self._patch(request)

    async def _patch(self, request: Exchange) -> Response:
        upload_id = self.upload_id_of(request)
        patch = protocol.parse_append(
            request.headers.get("Content-Type"),
            request.single("Upload-Offset"),
            request.single("Upload-Length"),
            request.checksum,
        )
        info = await self.append(request, upload_id, patch.offset, patch.length)
        return Response(204, self._state_headers(info))

    async def append(
        self, request: Exchange, upload_id: str, offset: int, length: int | None, *, completes: bool = False
    ) -> UploadInfo:
        """Append the request body at `offset` (a tus PATCH, or the draft's append), setting
        a deferred `length` first; `completes`: the body is the rest of the upload."""
        await self._access(request, upload_id, "patch")
        async with self._locked(request, upload_id) as posts:
            upload = await self._open(upload_id, request)
            info = upload.info
            if info.concat == "final":
                raise TusError(errors.MODIFY_FINAL)
            if offset != info.offset:
                # The current offset comes along, so the client can resume without a HEAD.
                raise TusError(
                    errors.MISMATCHED_OFFSET, f"upload is at {info.offset}", headers=self._state_headers(info)
                )
            if length is not None and length != info.length:
                await self._set_length(request, upload, length)
            if info.finished:
                # Any byte now would go past Upload-Length (413); a chunked body may carry bytes too.
                content_length = request.content_length
                if content_length or (content_length is None and request.body_exists):
                    raise TusError(errors.UPLOAD_FINISHED)
            else:
                await self._receive_owned(request, upload, posts, completes=completes)
        return info

    async def _set_length(self, request: Exchange, upload: Upload, length: int, *, body_pending: bool = True) -> None:
        """`body_pending`: the request's body is still to come, and must fit."""
        info = upload.info
        if info.length is not None:
            raise TusError(errors.LENGTH_ALREADY_SET)
        if length < info.offset:
            raise TusError(errors.LENGTH_BELOW_OFFSET)
        self.check_size(request, length)
        # A body that will not fit is refused before the length is saved.
        content_length = request.content_length
        if body_pending and content_length is not None and info.offset + content_length > length:
            raise TusError(errors.EXCEEDS_UPLOAD_LENGTH, f"{length - info.offset} bytes remain")
        assert isinstance(self.store, LengthDeferringStore)
        await self.owners.set_length(info, length, self._quota(request), lambda: upload.set_length(length))

    async def delete(self, request: Exchange) -> Response:
        upload_id = self.upload_id_of(request)
        if not isinstance(self.store, TerminatingStore):
            raise TusError(errors.METHOD_NOT_ALLOWED)
        await self._access(request, upload_id, "delete")
        async with self.locker.lock(upload_id, self._release(request)):
            info = await self.store.get_info(upload_id)
            self._check_owner(request, info)
            await self.hooks.pre(PRE_TERMINATE, request, info)
            await self.store.terminate(info)
        await self.hooks.post(POST_TERMINATE, request, info)
        return Response(204)

    async def get(self, request: Exchange) -> Response:
        slot = contextlib.ExitStack()
        slot.enter_context(self.downloads.take())  # held until the last byte is sent, or the client is dropped
        try:
            response = await self._get(request)
        except BaseException:
            slot.close()
            raise
        response.sent = slot.close
        return response

    async def _get(self, request: Exchange) -> Response:
        upload_id = self.upload_id_of(request)
        if not self.config.downloads:
            raise TusError(errors.DOWNLOAD_DISABLED)
        info = await self._load(upload_id, request)
        await self.hooks.pre(PRE_ACCESS, request, info, action="get")
        if not info.finished:
            raise TusError(errors.UPLOAD_NOT_FINISHED, f"{info.offset} of {info.length} bytes received")
        if self.config.downloads_require_hook and not self.hooks.wants(PRE_GET):
            raise TusError(errors.DOWNLOAD_NOT_APPROVED)
        await self.hooks.pre(PRE_GET, request, info)
        headers = protocol.download_headers(info.metadata)
        download = await self.store.download(info)
        if isinstance(download, RedirectDownload):
            return Response(302, {"Location": download.url})
        if isinstance(download, FileDownload):
            download = await stream_file(download.path)
        return _download_response(request, download, headers)

    async def listing(self, request: Exchange) -> Response:
        """GET on the collection: the caller's uploads as JSON, newest first, a page at a time
        (`?limit=`, `?cursor=`); an admin's lists everyone's, or `?owner=`'s."""
        caller = self._caller(request)
        if caller is None or not self.owners.indexing:
            raise TusError(errors.NOT_FOUND)  # nobody to list for without tokens
        limit = parse_limit(request.query.get("limit"))
        cursor = parse_cursor(request.query.get("cursor"))
        owner = request.query.get("owner")
        if owner is not None and not caller.admin and owner != caller.subject:
            raise TusError(errors.INSUFFICIENT_SCOPE, "listing another owner's uploads needs admin")
        if owner is None and not caller.admin:
            if caller.subject is None:
                raise TusError(errors.INSUFFICIENT_SCOPE, "the token names no subject (sub) whose uploads to list")
            owner = caller.subject
        key = ALL if owner is None else owner_key(owner)
        found, after = await self.owners.uploads(key, cursor, limit)
        uploads = [
            {
                "id": info.id,
                "url": upload_location(request, self.config, info.id),
                "length": info.length,
                "offset": info.offset,
                "finished": info.finished,
                "metadata": {k: metadata_text(v) for k, v in info.metadata.items()},
                "created": info.created,
                "expires": info.expires,
            }
            for info in found
        ]
        return Response.json(200, {"uploads": uploads, "next": after}, {"Cache-Control": "no-store"})


def _needs_finish(info: UploadInfo) -> bool:
    return info.concat != "final" and info.length == info.offset and not info.finished


def stop_body(request: Exchange, reason: Exception) -> None:
    """Stop receiving the request's body now, or as soon as it starts; the bytes
    received are kept and the request answers as `reason` says."""
    if request.stop_reason is None:
        request.stop_reason = reason
    if request.body is not None:
        request.body.stop(reason)


@dataclasses.dataclass(frozen=True)
class _RangeStream:
    """Bytes [start, stop) of a download, for the service to send."""

    download: StreamDownload
    start: int
    stop: int

    @property
    def length(self) -> int:
        return self.stop - self.start

    def open(self) -> contextlib.AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self.download.open(self.start, self.stop)


def _download_response(request: Exchange, download: StreamDownload, headers: dict[str, str]) -> Response:
    """200 with the whole download, or 206 with the one range asked for."""
    size = download.size
    try:
        start, stop = parse_range(request.headers.get("Range"))
    except ValueError:
        raise TusError(errors.INVALID_RANGE, headers={"Content-Range": f"bytes */{size}"}) from None
    partial = start is not None or stop is not None
    if start is None:
        start = 0
    elif start < 0:  # suffix range: the last -start bytes
        start = max(size + start, 0)
    if stop is None or stop > size:
        stop = size
    if partial and (start >= size or start >= stop):
        raise TusError(errors.INVALID_RANGE, headers={"Content-Range": f"bytes */{size}"})
    response = Response(206 if partial else 200, headers)
    response.headers["Accept-Ranges"] = "bytes"
    if download.etag:
        response.headers["ETag"] = download.etag
    if partial:
        response.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    if stop > start:  # else an empty upload: nothing to read
        response.stream = _RangeStream(download, start, stop)
    return response


def with_location(exc: TusError | StorageError, location: str) -> TusError:
    """The answer to `exc`, naming the upload that exists despite it (the client resumes it)."""
    error = errors.from_storage(exc) if isinstance(exc, StorageError) else exc
    error.headers.setdefault("Location", location)
    return error
