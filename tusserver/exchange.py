"""One request as the core sees it, whatever front door it came through (aiohttp, ASGI):
what the client sent, the connection to answer on, and what the request learns on its way
(who calls, its limits, the body being received). It replaces framework request storage,
so every step that reads or sets per-request state names it."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from multidict import CIMultiDict, CIMultiDictProxy, MultiDictProxy
from yarl import URL

from . import protocol

if TYPE_CHECKING:
    from .auth import Claims
    from .body import Body
    from .ietf import Dialect
    from .owners import Quota


class BodyStream(Protocol):
    """The request body as a front door delivers it. `readany` waits for the next bytes
    (b"" at the end) and raises what `set_exception` set, so a stop reaches a waiting read."""

    async def readany(self) -> bytes: ...

    def set_exception(self, exc: BaseException) -> None: ...

    def buffered(self) -> bytes:
        """Bytes that arrived but were not read, even after an exception was set."""
        ...

    def bound(self) -> None:
        """Hold little of the body in buffers from now on (many bodies in flight)."""
        ...

    def fast_reads(self) -> object | None:
        """Read larger pieces while few bodies are in flight: a token for `slow_reads`, or None."""
        ...

    def slow_reads(self, token: object) -> None: ...


class Peer(Protocol):
    """The scheme and Host the client used, and its address: a front door may work them
    out on first use (most requests never need them)."""

    @property
    def scheme(self) -> str: ...

    @property
    def host(self) -> str: ...

    @property
    def remote(self) -> str | None: ...


class Connection(Protocol):
    """Where the answer goes: a whole response, or a streamed one (downloads)."""

    @property
    def started(self) -> bool: ...

    async def send(self, status: int, headers: CIMultiDict[str], body: bytes, *, close: bool) -> None:
        """The whole response; `close`: close the connection after it (a body was cut short)."""
        ...

    async def start(self, status: int, headers: CIMultiDict[str]) -> None: ...

    async def write(self, data: bytes | memoryview) -> None:
        """Waits while the client does not read; raises ConnectionError once it is gone."""
        ...

    async def finish(self) -> None: ...

    async def interim(self, head: bytes) -> bool:
        """Write an interim (1xx) response head now; False where the front door cannot."""
        ...

    def drop(self, *, at_once: bool) -> None:
        """Close the connection after what is buffered (`at_once`: now, discarding it)."""
        ...


@dataclass(eq=False)
class Exchange:
    """A request and its context. `path` is the whole path the client asked for; `root_path`
    the part of it where the tus collection is mounted (no trailing slash); `route_id` the
    upload id segment after it, when the request is for an upload."""

    method: str
    url: URL  # relative: path and query, as the client sent them
    headers: CIMultiDictProxy[str]
    root_path: str
    route_id: str | None
    peer: Peer  # who asked, and how: read only when needed (URLs, hooks)
    http_version: tuple[int, int]
    content: BodyStream
    body_exists: bool
    conn: Connection
    on_route: bool = True  # False: the path is neither the collection nor an upload
    # Learnt on the way:
    upload_id: str | None = None  # for the access log and metrics, once known
    body: Body | None = None  # the body being received, so it can be stopped
    stop_reason: Exception | None = None  # a stop that came before the body
    bytes_in: int = 0
    auth_subject: str | None = None  # the bearer token's `sub`
    auth_claims: Claims | None = None
    quota: Quota | None = None  # computed once per request
    hook_headers: dict[str, str] = field(default_factory=dict)  # asked for by post-finish hooks (2xx only)
    dialect: Dialect | None = None  # of a request of the IETF draft
    max_size: int | None = None  # the request's size limit, once max_size_known
    max_size_known: bool = False

    @property
    def scheme(self) -> str:
        return self.peer.scheme

    @property
    def host(self) -> str:
        return self.peer.host

    @property
    def remote(self) -> str | None:
        return self.peer.remote

    @property
    def path(self) -> str:
        return self.url.path

    @property
    def query(self) -> MultiDictProxy[str]:
        return self.url.query

    @property
    def collection_path(self) -> str:
        """The path that uploads are created under."""
        return self.root_path + "/"

    @functools.cached_property
    def content_length(self) -> int | None:
        """Content-Length, parsed once (TusError when malformed)."""
        return protocol.parse_content_length(self.headers.get("Content-Length"))

    @functools.cached_property
    def checksum(self) -> protocol.Checksum | None:
        """Upload-Checksum, parsed once (TusError when malformed or repeated differently)."""
        return protocol.parse_checksum(self.single("Upload-Checksum"))

    def single(self, name: str) -> str | None:
        """The value of a single-valued header; two different values are a 400."""
        return protocol.single_value(name, self.headers.getall(name, []))


def relative_route(path: str) -> tuple[bool, str | None]:
    """(whether `path`, relative to the mount point, is a tus route; the upload id segment).
    "/" (or "") is the collection and "/{id}" an upload; anything deeper is not ours."""
    if path in ("", "/"):
        return True, None
    segment = path[1:] if path.startswith("/") else None
    if not segment or "/" in segment:
        return False, None
    return True, segment


_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)")


def parse_range(value: str | None) -> tuple[int | None, int | None]:
    """A single `Range: bytes=a-b` as (start, stop) slice bounds, stop exclusive; a suffix
    range `bytes=-n` is (-n, None). (None, None) without a Range; ValueError when malformed."""
    if value is None:
        return None, None
    match = _RANGE.fullmatch(value)
    if match is None:
        raise ValueError("range not in acceptable format")
    start = int(match.group(1)) if match.group(1) else None
    stop = int(match.group(2)) if match.group(2) else None
    if start is None and stop is None:
        raise ValueError("no start or end of range")
    if start is None:
        return -(stop or 0), None  # `or 0`: typing only; stop is set here
    if stop is not None:
        stop += 1  # inclusive in the header
        if start >= stop:
            raise ValueError("start after end")
    return start, stop


class Streamed(Protocol):
    """A body sent piece by piece (a download): `open()` makes the first storage call, before
    any header is sent, so that its failure is still an ordinary error answer."""

    @property
    def length(self) -> int: ...

    def open(self) -> AbstractAsyncContextManager[AsyncIterator[bytes]]: ...


class Response:
    """An answer: `body`, or for a download `stream`, which the service sends after the
    headers. `close`: close the connection after it (a body was cut short). `sent` is
    called once it is sent, or abandoned."""

    def __init__(self, status: int, headers: Mapping[str, str] | None = None, body: bytes = b"") -> None:
        self.status = status
        self.headers: CIMultiDict[str] = CIMultiDict(headers or {})
        self.body = body
        self.stream: Streamed | None = None
        self.close = False
        self.sent: Callable[[], object] | None = None

    @classmethod
    def json(cls, status: int, document: object, headers: Mapping[str, str] | None = None) -> Response:
        response = cls(status, headers, json.dumps(document).encode("utf-8"))
        response.headers["Content-Type"] = "application/json; charset=utf-8"
        return response

    @classmethod
    def text(cls, status: int, text: str, headers: Mapping[str, str] | None = None) -> Response:
        response = cls(status, headers, text.encode("utf-8"))
        response.headers["Content-Type"] = "text/plain; charset=utf-8"
        return response
