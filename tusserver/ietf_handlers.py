"""The draft's requests ("Resumable Uploads for HTTP"): creation on the collection,
offset retrieval, append, cancellation and OPTIONS. Each step an upload takes (owners,
hooks, limits, locks, stores, expiry) is TusHandlers', so an upload made here is a tus
upload like any other; only the header dialect differs (rules in ietf.py)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from . import errors, ietf, protocol
from .errors import TusError
from .exchange import Exchange, Response
from .handlers import TusHandlers
from .info import UploadInfo
from .limits import check_metadata
from .stores.base import LengthDeferringStore
from .urls import upload_location

Handler = Callable[[Exchange], Awaitable[Response]]


class IetfHandlers:
    """One coroutine per request of the draft, over the same TusHandlers as tus."""

    def __init__(self, tus: TusHandlers) -> None:
        self.tus = tus
        self.config = tus.config

    # -- helpers -----------------------------------------------------------

    def limits(self, request: Exchange, info: UploadInfo | None = None) -> ietf.Limits:
        """What Upload-Limit announces: the size limit, and the time left (of `info`, or of
        a new upload)."""
        max_age = None
        if info is None:
            if self.config.expire_after is not None:
                max_age = int(self.config.expire_after)
        elif info.expires is not None and not info.finished:
            max_age = round(info.expires - time.time())
        return ietf.Limits(
            max_size=self.tus.max_size(request), max_append_size=self.config.max_append_size, max_age=max_age
        )

    def _state(self, dialect: ietf.Dialect, request: Exchange, info: UploadInfo) -> dict[str, str]:
        headers = {
            "Upload-Offset": str(info.offset),
            dialect.complete_field: dialect.complete_value(info.finished),
            "Cache-Control": "no-store",
        }
        if info.length is not None:
            headers["Upload-Length"] = str(info.length)
        limit = ietf.format_limits(dialect, self.limits(request, info))
        if limit is not None:
            headers["Upload-Limit"] = limit
        return headers

    async def _interim(self, request: Exchange, dialect: ietf.Dialect, location: str, info: UploadInfo) -> None:
        """Send the 104 announcing the upload resource, before any byte of the body is read.
        HTTP/1.0 has no interim responses; the client then learns the URL from the final one."""
        if request.http_version < (1, 1):
            return
        await request.conn.interim(ietf.interim_104(dialect, location, self.limits(request, info)))

    # -- requests ----------------------------------------------------------

    async def options(self, request: Exchange) -> Response:
        dialect = _dialect(request)
        response = await self.tus.options(request)
        limit = ietf.format_limits(dialect, self.limits(request))
        if limit is not None:
            response.headers["Upload-Limit"] = limit
        return response

    async def create(self, request: Exchange) -> Response:
        """POST, PUT or PATCH with the completeness field on the collection."""
        dialect = _dialect(request)
        complete = ietf.completeness(dialect, request.headers)
        assert complete is not None  # selected by its presence (ietf.select)
        content_length = request.content_length
        if content_length is None and not request.body_exists:
            content_length = 0
        length = ietf.creation_length(request.headers.get("Upload-Length"), complete, content_length)
        if length is None and not isinstance(self.tus.store, LengthDeferringStore):
            raise TusError(errors.UNSUPPORTED_EXTENSION, "an upload of unknown length")
        self.tus.check_size(request, length if length is not None else content_length)
        self.tus.check_append_size(content_length)
        # tus clients speaking the draft (tus-js-client) still send Upload-Metadata; the
        # representation's own Content-Type and Content-Disposition win over it.
        metadata = protocol.parse_metadata(request.headers.get("Upload-Metadata"))
        metadata.update(
            ietf.representation_metadata(
                request.headers.get("Content-Type"), request.headers.get("Content-Disposition")
            )
        )
        check_metadata(protocol.format_metadata(metadata) or None, metadata, self.config)
        if content_length == 0:
            return await self._create(request, dialect, length, metadata, complete, with_body=False)
        request.content.bound()  # before any wait: meanwhile the front door reads on
        with self.tus.uploads.take():
            return await self._create(request, dialect, length, metadata, complete, with_body=True)

    async def _create(
        self,
        request: Exchange,
        dialect: ietf.Dialect,
        length: int | None,
        metadata: protocol.Metadata,
        complete: bool,
        *,
        with_body: bool,
    ) -> Response:
        info = await self.tus.create_upload(request, length, metadata)
        location = upload_location(request, self.config, info.id)
        await self._interim(request, dialect, location, info)
        if with_body:
            info = await self.tus.receive_creation(request, info, location, completes=complete)
        elif complete or length == 0:
            info = await self.tus.complete(request, info)
        headers = {"Location": location, **self._state(dialect, request, info)}
        return Response(201, headers)

    async def head(self, request: Exchange) -> Response:
        dialect = _dialect(request)
        ietf.check_no_state_fields(dialect, request.headers)
        upload_id = self.tus.upload_id_of(request)
        info = await self.tus.current(request, upload_id)
        return Response(204, self._state(dialect, request, info))

    async def get(self, request: Exchange) -> Response:
        """From -12 a GET is an offset retrieval, like HEAD; before, the tus download."""
        if _dialect(request).get_is_offset_retrieval:
            return await self.head(request)
        return await self.tus.get(request)

    async def append(self, request: Exchange) -> Response:
        request.content.bound()  # before any wait: meanwhile the front door reads on
        with self.tus.uploads.take():
            return await self._append(request)

    async def _append(self, request: Exchange) -> Response:
        dialect = _dialect(request)
        upload_id = self.tus.upload_id_of(request)
        ietf.check_append_type(dialect, request.headers.get("Content-Type"))
        offset = ietf.parse_sf_integer(request.headers.get("Upload-Offset"))
        if offset is None:
            raise TusError(errors.INVALID_OFFSET, "header is missing or not an integer")
        complete = ietf.append_completes(dialect, request.headers)
        content_length = request.content_length
        if content_length is None and not request.body_exists:
            content_length = 0
        length = ietf.append_length(request.headers.get("Upload-Length"), complete, offset, content_length)
        self.tus.check_append_size(content_length)
        if content_length is not None:
            self.tus.check_size(request, offset + content_length)  # max-size, before the known length
        info = await self.tus.append(request, upload_id, offset, length, completes=complete)
        return Response(204, self._state(dialect, request, info))

    async def delete(self, request: Exchange) -> Response:
        ietf.check_no_state_fields(_dialect(request), request.headers)
        return await self.tus.delete(request)

    # -- errors ------------------------------------------------------------

    def error_response(self, request: Exchange, error: TusError) -> Response:
        """A failure as RFC 9457 problem details, with the fields the draft asks for."""
        dialect = _dialect(request)
        status = ietf.error_status(error.kind, error.status)
        headers = dict(error.headers)
        headers.pop("Upload-Expires", None)  # tus's; the draft says max-age in Upload-Limit
        headers[dialect.complete_field] = dialect.complete_value(False)  # resumable-upload semantics apply
        if error.kind in ietf.LIMIT_KINDS:
            limit = ietf.format_limits(dialect, self.limits(request))
            if limit is not None:
                headers["Upload-Limit"] = limit
        expected = ietf.parse_sf_integer(headers.get("Upload-Offset"))
        document = ietf.problem(
            dialect,
            error.kind,
            status,
            error.message,
            provided_offset=ietf.parse_sf_integer(request.headers.get("Upload-Offset")),
            expected_offset=expected,
        )
        response = Response(status, headers, ietf.problem_body(document))
        response.headers["Content-Type"] = ietf.PROBLEM_JSON
        return response

    def routes(self) -> tuple[dict[str, Handler], dict[str, Handler]]:
        """(collection, upload resource) method tables."""
        collection: dict[str, Handler] = {
            "OPTIONS": self.options,
            "POST": self.create,
            "PUT": self.create,
            "PATCH": self.create,
            "GET": self.tus.listing,
        }
        upload: dict[str, Handler] = {
            "OPTIONS": self.options,
            "HEAD": self.head,
            "PATCH": self.append,
            "DELETE": self.delete,
            "GET": self.get,
        }
        return collection, upload


def _dialect(request: Exchange) -> ietf.Dialect:
    assert request.dialect is not None  # routed here for having one
    return request.dialect
