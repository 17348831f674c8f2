"""The resumable upload of one file or stream: create (or find the remembered upload), send
the bytes the server lacks, retry what is worth retrying, and concatenate partial uploads.

Retries: connection errors, stalls, 5xx, 423 and 429 wait with exponential back-off and
jitter (or the server's Retry-After), then ask the server's offset with HEAD and go on from
there; 409 asks the offset at once; 460 sends the chunk again. Each successful PATCH starts
the count of retries afresh.
"""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from .http import Body, FileBody, HttpClient
from .progress import FileProgress
from .resume import ResumeStore, fingerprint
from .tus import ChecksumMismatch, Gone, OffsetConflict, Rejected, Retry, ServerInfo, Tus1, UploadError, checksum_header

CHECKSUM_ALGORITHMS = ("sha1", "sha256", "sha512", "md5")
STDIN_CHUNK = 8 << 20  # bytes per PATCH from a stream; two are held in memory at most
HASH_BLOCK = 1 << 20


@dataclass
class Options:
    chunk_size: int | None = None  # bytes per PATCH; None: the rest of the file in one
    parallel: int = 1  # partial uploads sent at once, when the server offers concatenation
    checksum: str | None = None  # algorithm for Upload-Checksum on every PATCH, when offered
    retries: int = 10  # further tries of a failing request before giving up
    timeout: float = 30.0  # seconds without progress before a request counts as stalled
    resume: bool = True  # look up (and remember) the upload in the resume store
    backoff: float = 0.5  # seconds before the first retry; doubled each time
    max_backoff: float = 30.0
    metadata: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class UploadResult:
    file: str
    url: str
    size: int
    seconds: float
    resumed_from: int = 0  # bytes the server already had when this run started

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "url": self.url, "size": self.size, "seconds": round(self.seconds, 3)}


Notice = Callable[[str], None]


class Backoff:
    """Counts the tries of one operation and sleeps between them."""

    def __init__(self, options: Options, notice: Notice) -> None:
        self.options = options
        self.notice = notice
        self.tries = 0

    async def wait(self, reason: str, retry_after: float | None = None, *, sleep: bool = True) -> None:
        if self.tries >= self.options.retries:
            raise UploadError(f"gave up after {self.options.retries} retries: {reason}")
        self.tries += 1
        if not sleep:
            self.notice(f"{reason}; trying again")
            return
        if retry_after is not None:
            seconds = retry_after
        else:
            ceiling = min(self.options.max_backoff, self.options.backoff * 2 ** (self.tries - 1))
            seconds = ceiling * (0.5 + random.random() / 2)
        self.notice(f"{reason}; retry {self.tries}/{self.options.retries} in {seconds:.1f}s")
        await asyncio.sleep(seconds)

    def reset(self) -> None:
        self.tries = 0


def default_metadata(path: str) -> dict[str, str | None]:
    metadata: dict[str, str | None] = {"filename": os.path.basename(path)}
    filetype, _ = mimetypes.guess_type(path)
    if filetype:
        metadata["filetype"] = filetype
    return metadata


def split(size: int, parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous (start, length) ranges covering `size` bytes."""
    bounds = [size * i // parts for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1] - bounds[i]) for i in range(parts)]


def _digest(body: Body, algorithm: str) -> bytes:
    h = hashlib.new(algorithm)
    if isinstance(body, FileBody):
        with open(body.path, "rb") as f:
            f.seek(body.start)
            left = body.size
            while left:
                block = f.read(min(HASH_BLOCK, left))
                if not block:
                    raise UploadError(f"{body.path} got shorter while it was being sent")
                h.update(block)
                left -= len(block)
    elif body is not None:
        h.update(body)
    return h.digest()


def _read_full(stream: BinaryIO, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class Uploader:
    """Uploads to one endpoint, sharing its connections and what OPTIONS told."""

    def __init__(
        self,
        http: HttpClient,
        endpoint: str,
        *,
        headers: Mapping[str, str] | None = None,
        options: Options | None = None,
        store: ResumeStore | None = None,
        notice: Notice | None = None,
    ) -> None:
        self.options = options or Options()
        self.protocol = Tus1(http, endpoint, headers or {})
        self.endpoint = endpoint
        self.store = store
        self.notice = notice or (lambda message: None)
        self._server: ServerInfo | None = None
        self._warned: set[str] = set()

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            self.notice(message)

    async def _retrying(self, call: Callable[[], Any], backoff: Backoff | None = None) -> Any:
        backoff = backoff or Backoff(self.options, self.notice)
        while True:
            try:
                return await call()
            except Retry as exc:
                await backoff.wait(str(exc), exc.retry_after)

    async def server(self) -> ServerInfo:
        if self._server is None:
            self._server = await self._retrying(self.protocol.options)
        return self._server

    def _checksum(self, server: ServerInfo) -> str | None:
        algorithm = self.options.checksum
        if algorithm is None:
            return None
        if server.known and ("checksum" not in server.extensions or algorithm not in server.checksum_algorithms):
            self._warn_once(f"the server does not offer {algorithm} checksums; sending without")
            return None
        return algorithm

    # -- the remembered uploads ---------------------------------------------------------------

    def _remembered(self, key: str) -> dict[str, Any] | None:
        if self.store is None or not self.options.resume:
            return None
        try:
            return self.store.get(key)
        except OSError as exc:
            self._warn_once(f"cannot read the resume store ({exc}); starting afresh")
            return None

    def _remember(self, key: str, entry: dict[str, Any]) -> None:
        if self.store is None:
            return
        try:
            self.store.put(key, entry)
        except OSError as exc:
            self._warn_once(f"cannot write the resume store ({exc}); this upload cannot resume in another run")

    def _forget(self, key: str) -> None:
        if self.store is None:
            return
        try:
            self.store.drop(key)
        except OSError:
            pass

    def key(self, path: str) -> str:
        st = os.stat(path)
        return fingerprint(path, st.st_size, st.st_mtime_ns, self.endpoint)

    # -- files ---------------------------------------------------------------------------------

    async def upload_file(
        self, path: str, progress: FileProgress | None = None, metadata: Mapping[str, str | None] | None = None
    ) -> UploadResult:
        """Upload the file at `path` (resuming a remembered upload of it); return where it is."""
        progress = progress or FileProgress()
        started = time.monotonic()
        st = os.stat(path)
        if not os.path.isfile(path):
            raise UploadError("not a regular file")
        size = st.st_size
        key = fingerprint(path, size, st.st_mtime_ns, self.endpoint)
        server = await self.server()
        if server.max_size is not None and size > server.max_size:
            raise UploadError(f"{size} bytes is more than the server accepts ({server.max_size})")
        meta = {**default_metadata(path), **self.options.metadata, **(metadata or {})}
        checksum = self._checksum(server)

        entry = self._remembered(key) or {}
        final = entry.get("final")
        if final and await self._finished(final, size):
            self._forget(key)
            progress.update(size)
            return UploadResult(path, final, size, time.monotonic() - started, size)

        urls: list[str | None] = list(entry.get("urls") or [])
        parts = len(urls) or self._parts_for(size, server)
        concat = parts > 1 or bool(entry.get("concat"))
        if len(urls) != parts:
            urls = [None] * parts
        entry = {"path": os.path.abspath(path), "endpoint": self.endpoint, "size": size, "urls": urls,
                 "concat": concat}
        ranges = split(size, parts)
        done = [0] * parts
        resumed = [0] * parts

        def report(index: int, value: int) -> None:
            done[index] = value
            progress.update(sum(done))

        async def send_part(index: int) -> None:
            start, length = ranges[index]
            url, offset = await self._existing(urls[index], length)
            if url is None:
                url = await self._retrying(
                    lambda: self.protocol.create(length, {} if concat else meta, "partial" if concat else None)
                )
                urls[index] = url
                self._remember(key, entry)
            resumed[index] = offset
            report(index, offset)
            await self._send_range(
                url, offset, length, lambda o, n: FileBody(path, start + o, n), checksum,
                lambda value: report(index, value),
            )

        await _all(send_part(i) for i in range(parts))
        url = urls[0]
        if concat:
            made = [u for u in urls if u is not None]  # every part was created above
            url = await self._retrying(lambda: self.protocol.concat(made, meta))
            entry["final"] = url
            self._remember(key, entry)
        self._forget(key)
        progress.update(size)
        assert url is not None
        return UploadResult(path, url, size, time.monotonic() - started, sum(resumed))

    def _parts_for(self, size: int, server: ServerInfo) -> int:
        wanted = max(1, min(self.options.parallel, size))
        if wanted > 1 and server.known and "concatenation" not in server.extensions:
            self._warn_once("the server does not offer concatenation; sending each file as one upload")
            return 1
        return wanted

    async def _existing(self, url: str | None, length: int) -> tuple[str | None, int]:
        """The remembered `url` and the server's offset of it, or (None, 0) when it cannot resume."""
        if url is None:
            return None, 0
        try:
            state = await self._retrying(lambda: self.protocol.head(url))
        except Gone:
            self.notice("the remembered upload is gone from the server; starting afresh")
            return None, 0
        if state.length not in (None, length) or state.offset > length:
            self.notice("the remembered upload has another length; starting afresh")
            return None, 0
        return url, state.offset

    async def _finished(self, url: str, size: int) -> bool:
        try:
            state = await self._retrying(lambda: self.protocol.head(url))
        except Gone:
            return False
        return state.length == size and state.offset == size

    async def _send_range(
        self,
        url: str,
        offset: int,
        end: int,
        body_at: Callable[[int, int], Body],
        checksum: str | None,
        report: Callable[[int], None],
        *,
        first: int = 0,
        declare: int | None = None,
    ) -> int:
        """PATCH bytes [offset, end) of the upload at `url` (body_at(offset, n) gives them),
        declaring the deferred length `declare` with the last PATCH. Bytes before `first`
        cannot be sent again. Return the offset reached."""
        backoff = Backoff(self.options, self.notice)
        declared = declare is None
        while offset < end or not declared:
            size = min(self.options.chunk_size or end - offset, end - offset)
            body = body_at(offset, size)
            sent = offset

            def on_sent(n: int) -> None:
                nonlocal sent
                sent += n
                report(sent)

            try:
                header = None
                if checksum is not None:
                    digest = await asyncio.to_thread(_digest, body, checksum)
                    header = checksum_header(checksum, digest)
                length = declare if not declared and offset + size == end else None
                new = await self.protocol.patch(url, offset, body, length=length, checksum=header, on_sent=on_sent)
            except Retry as exc:
                await backoff.wait(str(exc), exc.retry_after)
            except OffsetConflict as exc:
                await backoff.wait(f"PATCH answered {exc}", sleep=False)
            except ChecksumMismatch as exc:
                await backoff.wait(f"PATCH answered {exc}", sleep=False)
            else:
                if new < offset or new > offset + size or (new == offset and size):
                    raise Rejected(f"PATCH of {size} bytes at {offset} answered offset {new}")
                offset = new
                declared = declared or length is not None
                report(offset)
                backoff.reset()
                continue
            state = await self._retrying(lambda: self.protocol.head(url), backoff)
            if state.offset < first or state.offset > end:
                raise UploadError(f"the server's offset {state.offset} is outside the bytes this run still holds")
            offset = state.offset
            declared = declared or state.length is not None
            report(offset)
        return offset

    # -- streams -------------------------------------------------------------------------------

    async def upload_stream(
        self,
        stream: BinaryIO,
        name: str = "-",
        progress: FileProgress | None = None,
        metadata: Mapping[str, str | None] | None = None,
    ) -> UploadResult:
        """Upload what `stream` gives until its end, as an upload of deferred length. Two chunks
        are held in memory at most; a stream cannot be resumed in another run."""
        progress = progress or FileProgress()
        started = time.monotonic()
        server = await self.server()
        if server.known and "creation-defer-length" not in server.extensions:
            raise UploadError("the server does not take uploads of unknown length (creation-defer-length)")
        checksum = self._checksum(server)
        chunk = self.options.chunk_size or STDIN_CHUNK
        meta = {**self.options.metadata, **(metadata or {})}
        url = await self._retrying(lambda: self.protocol.create(None, meta))
        offset = 0
        current = await asyncio.to_thread(_read_full, stream, chunk)
        while True:
            # Read one chunk ahead: the last PATCH must declare the length.
            ahead = await asyncio.to_thread(_read_full, stream, chunk) if len(current) == chunk else b""
            last = not ahead
            await self._send_range(
                url, offset, offset + len(current), _slicer(memoryview(current), offset), checksum,
                progress.update, first=offset, declare=offset + len(current) if last else None,
            )
            offset += len(current)
            if last:
                break
            current = ahead
        return UploadResult(name, url, offset, time.monotonic() - started)


def _slicer(view: memoryview, base: int) -> Callable[[int, int], Body]:
    return lambda offset, size: view[offset - base : offset - base + size]


async def _all(coroutines) -> None:
    """Run the coroutines together; the first failure cancels the others and is raised."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
