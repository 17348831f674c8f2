"""One coroutine per tus verb. Each reads top to bottom: parse headers, lock,
load state, check it, call the store, answer."""

from __future__ import annotations

import logging
import time

from aiohttp import web

from . import errors, protocol
from .body import Body, ReleaseRequested
from .config import Config
from .errors import TusError
from .info import UploadInfo
from .locks import Locker
from .stores.base import (
    ConcatenatingStore,
    FileDownload,
    LengthDeferringStore,
    RedirectDownload,
    Store,
    TerminatingStore,
    store_extensions,
)
from .urls import collection_path, request_origin, upload_location

log = logging.getLogger("tusserver")


class TusHandlers:
    def __init__(self, config: Config, store: Store, locker: Locker) -> None:
        self.config = config
        self.store = store
        self.locker = locker
        # checksum-trailer is not offered: aiohttp parses request trailers but does not expose them.
        self.extensions = store_extensions(store) + ["checksum"]
        if config.expire_after is not None:
            self.extensions.append("expiration")

    # -- helpers -----------------------------------------------------------

    def _upload_id(self, request: web.Request) -> str:
        upload_id = request.match_info["upload_id"]
        if not protocol.is_valid_upload_id(upload_id):
            raise TusError(errors.NOT_FOUND)
        request["upload_id"] = upload_id
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

    def _check_size(self, length: int | None) -> None:
        if length is not None and self.config.max_size is not None and length > self.config.max_size:
            raise TusError(errors.MAX_SIZE_EXCEEDED, f"limit is {self.config.max_size} bytes")

    async def _receive(self, request: web.Request, info: UploadInfo) -> None:
        """Append the request body to `info` (locked by the caller) and finish the
        upload when it is complete. Updates `info.offset`."""
        checksum = protocol.parse_checksum(request.headers.get("Upload-Checksum"))
        content_length = protocol.parse_content_length(request.headers.get("Content-Length"))
        if info.length is not None:
            limit: int | None = info.length - info.offset
        elif self.config.max_size is not None:
            limit = self.config.max_size - info.offset
        else:
            limit = None
        if content_length is not None and limit is not None and content_length > limit:
            raise TusError(errors.EXCEEDS_UPLOAD_LENGTH, f"{limit} bytes remain")
        body = Body(request.content, limit, checksum, self.config.read_timeout)
        request["body"] = body
        try:
            info.offset = await self.store.append(info, body, atomic=checksum is not None)
        finally:
            request["bytes_in"] = body.received
        if self.config.expire_after is not None:
            info.expires = time.time() + self.config.expire_after
        if info.length is not None and info.offset == info.length and not info.finished:
            await self._finish(info)
        elif self.config.expire_after is not None:
            await self.store.save_info(info)
        if body.overflowed:
            raise TusError(errors.EXCEEDS_UPLOAD_LENGTH, "bytes past the length were discarded")

    def _release(self, request: web.Request):
        def release() -> None:
            body = request.get("body")
            if body is not None:
                body.stop(ReleaseRequested())

        return release

    # -- verbs ---------------------------------------------------------------

    async def options(self, request: web.Request) -> web.Response:
        headers = {
            "Tus-Version": protocol.TUS_VERSION,
            "Tus-Extension": ",".join(self.extensions),
            "Tus-Checksum-Algorithm": ",".join(protocol.CHECKSUM_ALGORITHMS),
        }
        if self.config.max_size is not None:
            headers["Tus-Max-Size"] = str(self.config.max_size)
        return web.Response(status=204, headers=headers)

    async def post(self, request: web.Request) -> web.Response:
        metadata = protocol.parse_metadata(request.headers.get("Upload-Metadata"))
        concat = protocol.parse_concat(request.headers.get("Upload-Concat"))
        if concat is not None and not isinstance(self.store, ConcatenatingStore):
            raise TusError(errors.UNSUPPORTED_EXTENSION, "concatenation")
        if concat is not None and concat.final:
            return await self._create_final(request, concat, metadata)
        length = protocol.parse_creation_length(
            request.headers.get("Upload-Length"), request.headers.get("Upload-Defer-Length")
        )
        if length is None and not isinstance(self.store, LengthDeferringStore):
            raise TusError(errors.UNSUPPORTED_EXTENSION, "creation-defer-length")
        self._check_size(length)
        # Some clients label an empty POST application/octet-stream; only a real body must be ours.
        with_body = protocol.is_offset_content_type(request.headers.get("Content-Type"))
        if not with_body and request.body_exists:
            protocol.check_content_type(request.headers.get("Content-Type"))
        if with_body:
            # Everything that can reject the body is checked before the upload exists.
            protocol.parse_checksum(request.headers.get("Upload-Checksum"))
            content_length = protocol.parse_content_length(request.headers.get("Content-Length"))
            limit = length if length is not None else self.config.max_size
            if limit is not None and content_length is not None and content_length > limit:
                raise TusError(errors.EXCEEDS_UPLOAD_LENGTH, f"at most {limit} bytes fit")
        info = self._new_info(request, length, metadata)
        info.concat = "partial" if concat is not None else None
        await self.store.create(info)
        headers = {"Location": upload_location(request, self.config, info.id)}
        if with_body:
            async with self.locker.lock(info.id, self._release(request)):
                await self._receive(request, info)
            headers.update(self._state_headers(info))
        elif info.expires is not None:
            headers["Upload-Expires"] = protocol.http_date(info.expires)
        if length == 0 and not info.finished:
            await self._finish(info)
        return web.Response(status=201, headers=headers)

    def _new_info(self, request: web.Request, length: int | None, metadata: protocol.Metadata) -> UploadInfo:
        info = UploadInfo(id=protocol.new_upload_id(), length=length, metadata=metadata)
        if self.config.expire_after is not None:
            info.expires = time.time() + self.config.expire_after
        request["upload_id"] = info.id
        return info

    async def _create_final(
        self, request: web.Request, concat: protocol.Concat, metadata: protocol.Metadata
    ) -> web.Response:
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
        self._check_size(length)
        info = self._new_info(request, length, metadata)
        info.concat, info.partials = "final", partial_ids
        await self.store.create(info)
        for partial_id in dict.fromkeys(partial_ids):
            await self.store.link_final(partial_id, info.id)
        info = await self._complete_final(info.id) or info
        headers = {"Location": upload_location(request, self.config, info.id)}
        if info.expires is not None and not info.finished:
            headers["Upload-Expires"] = protocol.http_date(info.expires)
        return web.Response(status=201, headers=headers)

    async def _finish(self, info: UploadInfo) -> None:
        await self.store.finish(info)
        if info.concat == "partial":
            for final_id in await self.store.finals_of(info.id):
                if await self._complete_final(final_id) is None:  # the final was deleted
                    await self.store.unlink_final(info.id, final_id)

    async def _complete_final(self, final_id: str) -> UploadInfo | None:
        """Concatenate a final upload once all its partials are finished. Idempotent,
        so the last partial's finish and the final's creation may both call it."""
        async with self.locker.lock(final_id):
            try:
                final = await self.store.get_info(final_id)
            except TusError:
                return None
            if not final.finished:
                partials = await self._finished_partials(final)
                if partials is None:
                    return final
                await self.store.concatenate(final, partials)
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
        async with self.locker.lock(upload_id, self._release(request)):
            info = await self._load(upload_id)
        if info.concat == "final" and not info.finished:
            info = await self._complete_final(upload_id) or info  # repairs a crash between finishes
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
        upload_id = self._upload_id(request)
        protocol.check_content_type(request.headers.get("Content-Type"))
        offset = protocol.parse_upload_offset(request.headers.get("Upload-Offset"))
        new_length = request.headers.get("Upload-Length")
        length = None if new_length is None else protocol.parse_upload_length(new_length)
        async with self.locker.lock(upload_id, self._release(request)):
            info = await self._load(upload_id)
            if info.concat == "final":
                raise TusError(errors.MODIFY_FINAL)
            if offset != info.offset:
                raise TusError(errors.MISMATCHED_OFFSET, f"upload is at {info.offset}")
            if length is not None and length != info.length:
                await self._set_length(info, length)
            if info.finished:
                # Any byte now would go past Upload-Length (413); a chunked body may carry bytes too.
                content_length = protocol.parse_content_length(request.headers.get("Content-Length"))
                if content_length or (content_length is None and request.body_exists):
                    raise TusError(errors.UPLOAD_FINISHED)
            else:
                await self._receive(request, info)
        return web.Response(status=204, headers=self._state_headers(info))

    async def _set_length(self, info: UploadInfo, length: int) -> None:
        if info.length is not None:
            raise TusError(errors.LENGTH_ALREADY_SET)
        if length < info.offset:
            raise TusError(errors.LENGTH_BELOW_OFFSET)
        self._check_size(length)
        assert isinstance(self.store, LengthDeferringStore)
        await self.store.set_length(info, length)

    async def delete(self, request: web.Request) -> web.Response:
        upload_id = self._upload_id(request)
        if not isinstance(self.store, TerminatingStore):
            raise TusError(errors.METHOD_NOT_ALLOWED)
        async with self.locker.lock(upload_id, self._release(request)):
            info = await self.store.get_info(upload_id)
            await self.store.terminate(info)
        return web.Response(status=204)

    async def get(self, request: web.Request) -> web.StreamResponse:
        upload_id = self._upload_id(request)
        if not self.config.downloads:
            raise TusError(errors.DOWNLOAD_DISABLED)
        info = await self._load(upload_id)
        if not info.finished:
            raise TusError(errors.UPLOAD_NOT_FINISHED, f"{info.offset} of {info.length} bytes received")
        headers = protocol.download_headers(info.metadata)
        download = await self.store.download(info)
        if isinstance(download, FileDownload):
            return web.FileResponse(download.path, headers=headers)
        if isinstance(download, RedirectDownload):
            raise web.HTTPFound(download.url)
        return await _stream_download(request, download, headers)


async def _stream_download(request: web.Request, download, headers: dict[str, str]) -> web.StreamResponse:
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
    await response.prepare(request)
    if request.method != "HEAD" and stop > start:
        async for chunk in download.open(start, stop):
            await response.write(chunk)
    await response.write_eof()
    return response

