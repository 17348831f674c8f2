"""tus 1.0.0 as the uploader speaks it: one method per request, each answer mapped to a value
or to one typed outcome (retry, offset conflict, checksum mismatch, gone, rejected).

The uploader only calls the methods of `Tus1`; a second protocol (the IETF resumable-upload
draft) slots in as another class with the same methods.
"""

from __future__ import annotations

import base64
import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urljoin

from ..protocol import TUS_VERSION, format_metadata
from .http import Body, HttpClient, OnSent, Response

OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
RETRY_STATUSES = frozenset({423, 429})  # and every 5xx
MAX_RETRY_AFTER = 300.0  # seconds; a longer Retry-After is not waited for in full


class UploadError(Exception):
    """An upload failed for good; the message is one line, fit for a user."""


class Retry(Exception):  # noqa: N818 - an outcome, not a failure
    """A failure worth another try, after `retry_after` seconds when the server said so."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class OffsetConflict(Exception):  # noqa: N818
    """409: the server's offset is not ours; ask it with HEAD."""


class ChecksumMismatch(Exception):  # noqa: N818
    """460: the server discarded the chunk; send it again."""


class Gone(UploadError):
    """404/410 (or 403 for a HEAD): the upload no longer exists on the server."""


class Rejected(UploadError):
    """Any other 4xx: sending again would not help."""


@dataclass(frozen=True)
class ServerInfo:
    """What OPTIONS told: extensions, checksum algorithms and the maximum size (if any)."""

    extensions: frozenset[str] = frozenset()
    checksum_algorithms: frozenset[str] = frozenset()
    max_size: int | None = None
    known: bool = False  # False: OPTIONS did not answer; assume core tus and creation only


@dataclass(frozen=True)
class UploadState:
    offset: int
    length: int | None  # None while deferred


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None or when.tzinfo is None:
        return None
    seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def parse_list(value: str | None) -> frozenset[str]:
    return frozenset(item.strip().lower() for item in (value or "").split(",") if item.strip())


def checksum_header(algorithm: str, digest: bytes) -> str:
    return f"{algorithm} {base64.b64encode(digest).decode('ascii')}"


def server_message(response: Response) -> str:
    """The server's one-line reason for an error answer, made safe to print."""
    text = response.body[:200].decode("utf-8", "replace").strip().splitlines()
    line = text[0] if text else ""
    line = "".join(c if c.isprintable() else "?" for c in line)
    return f"{response.status} {line}".strip()


def _parse_int(value: str | None, what: str) -> int:
    if value is None or not value.strip().isdigit():
        raise Retry(f"the server sent no valid {what} ({value!r})")
    return int(value)


class Tus1:
    """tus 1.0.0 against one collection URL."""

    name = "tus"

    def __init__(self, http: HttpClient, endpoint: str, headers: Mapping[str, str]) -> None:
        self.http = http
        self.endpoint = endpoint
        self.headers = {**headers, "Tus-Resumable": TUS_VERSION}

    async def _request(self, method: str, url: str, headers: Mapping[str, str] | None = None,
                       body: Body = None, on_sent: OnSent | None = None) -> Response:
        try:
            response = await self.http.request(method, url, {**self.headers, **(headers or {})}, body, on_sent)
        except OSError as exc:
            raise Retry(f"{method} failed: {exc or type(exc).__name__}") from None
        except ValueError as exc:  # e.g. a Location that is not an http(s) URL
            raise Rejected(f"{method} {url[:200]}: {exc}") from None
        if response.status >= 500 or response.status in RETRY_STATUSES:
            wait = parse_retry_after(response.header("retry-after"))
            raise Retry(f"{method} answered {server_message(response)}", wait)
        return response

    def _fail(self, method: str, response: Response) -> UploadError:
        kind = Gone if response.status in (404, 410) or (method == "HEAD" and response.status == 403) else Rejected
        return kind(f"{method} answered {server_message(response)}")

    async def options(self) -> ServerInfo:
        response = await self._request("OPTIONS", self.endpoint)
        if response.status not in (200, 204):
            return ServerInfo()
        max_size = response.header("tus-max-size")
        return ServerInfo(
            extensions=parse_list(response.header("tus-extension")),
            checksum_algorithms=parse_list(response.header("tus-checksum-algorithm")),
            max_size=int(max_size) if max_size and max_size.isdigit() else None,
            known=True,
        )

    async def create(self, length: int | None, metadata: Mapping[str, str | None],
                     concat: str | None = None) -> str:
        """POST a new upload (`length` None: deferred); return its absolute URL."""
        headers = {"Upload-Length": str(length)} if length is not None else {"Upload-Defer-Length": "1"}
        if metadata:
            headers["Upload-Metadata"] = format_metadata(metadata)
        if concat is not None:
            headers["Upload-Concat"] = concat
        response = await self._request("POST", self.endpoint, headers)
        if response.status != 201:
            raise self._fail("POST", response)
        location = response.header("location")
        if not location:
            raise Rejected("POST answered 201 without a Location")
        return urljoin(self.endpoint, location)

    async def concat(self, urls: list[str], metadata: Mapping[str, str | None]) -> str:
        """POST the final upload made of the partial uploads `urls`; return its URL."""
        return await self.create(None, metadata, concat="final;" + " ".join(urls))

    async def head(self, url: str) -> UploadState:
        response = await self._request("HEAD", url, {"Cache-Control": "no-store"})
        if response.status != 200:
            raise self._fail("HEAD", response)
        length = response.header("upload-length")
        return UploadState(
            offset=_parse_int(response.header("upload-offset"), "Upload-Offset"),
            length=int(length) if length and length.isdigit() else None,
        )

    async def patch(self, url: str, offset: int, body: Body, *, length: int | None = None,
                    checksum: str | None = None, on_sent: OnSent | None = None) -> int:
        """PATCH `body` at `offset` (declaring the deferred `length` when given); return the new offset."""
        headers = {"Content-Type": OFFSET_CONTENT_TYPE, "Upload-Offset": str(offset)}
        if length is not None:
            headers["Upload-Length"] = str(length)
        if checksum is not None:
            headers["Upload-Checksum"] = checksum
        response = await self._request("PATCH", url, headers, body, on_sent)
        if response.status == 409:
            raise OffsetConflict(server_message(response))
        if response.status == 460:
            raise ChecksumMismatch(server_message(response))
        if response.status != 204:
            raise self._fail("PATCH", response)
        return _parse_int(response.header("upload-offset"), "Upload-Offset")
