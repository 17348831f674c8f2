"""A small HTTP/1.1 client on asyncio streams, made for upload bodies.

It keeps connections alive per origin and sends file bodies with sendfile(2) straight
from the file, so a body is never held in memory and the upload costs the machine little
CPU. (aiohttp's client reached about half of what sendfile reaches against a local
tusserver: see bench/bench_uploader.py.) Every read and every slice of a body must make
progress within `timeout` seconds, which is how a stalled connection is noticed.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

SLICE = 1 << 20  # bytes per sendfile/write step: the unit of progress and of the stall timeout
MAX_RESPONSE_BODY = 1 << 20  # tus answers are small; more than this is not read
IDLE_SECONDS = 4.0  # keep-alive connections older than this are not reused (servers close them)


class StalledError(TimeoutError):
    """No byte moved within the timeout."""


@dataclass(frozen=True)
class FileBody:
    """`size` bytes of the file at `path` from `start`."""

    path: str
    start: int
    size: int


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


Body = FileBody | bytes | memoryview | None
OnSent = Callable[[int], None]


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = time.monotonic()

    def close(self) -> None:
        self.writer.close()


class HttpClient:
    """Use as `async with HttpClient(timeout) as http:`; connections close at the end."""

    def __init__(self, timeout: float = 30.0, ssl_context: ssl.SSLContext | None = None) -> None:
        self.timeout = timeout
        self._ssl = ssl_context
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: Body = None,
        on_sent: OnSent | None = None,
    ) -> Response:
        """Send one request and read its answer. `on_sent(n)` is called as body bytes leave.
        Raises OSError (ConnectionError, StalledError, ...) when the exchange fails."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        origin = (parts.scheme, parts.hostname, port)
        connection = await self._connection(origin)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        if port != (443 if parts.scheme == "https" else 80):
            host += f":{port}"
        size = 0 if body is None else body.size if isinstance(body, FileBody) else len(body)
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body is not None or method in ("POST", "PATCH", "PUT"):
            lines.append(f"Content-Length: {size}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            try:
                connection.writer.write(head)
                await self._send_body(connection, body, on_sent)
            except OSError as exc:
                # A server may answer (413, 460, ...) and close before taking the whole body.
                response = await self._early_response(connection, method)
                if response is None:
                    raise exc
                connection.close()
                return response
            try:
                response, keep = await self._read_response(connection.reader, method)
            except ValueError as exc:  # a number that is not one, in the status line or a length
                raise ConnectionError(f"unreadable answer: {exc}") from None
        except BaseException:
            connection.close()
            raise
        if keep:
            connection.idle_since = time.monotonic()
            self._idle.setdefault(origin, []).append(connection)
        else:
            connection.close()
        return response

    async def _connection(self, origin: tuple[str, str, int]) -> _Connection:
        idle = self._idle.get(origin, [])
        while idle:
            connection = idle.pop()
            if time.monotonic() - connection.idle_since < IDLE_SECONDS and not connection.reader.at_eof():
                return connection
            connection.close()
        scheme, hostname, port = origin
        context = None
        if scheme == "https":
            context = self._ssl or ssl.create_default_context()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(hostname, port, ssl=context, limit=1 << 16), self.timeout
            )
        except asyncio.TimeoutError:
            raise StalledError(f"connecting to {hostname}:{port} timed out after {self.timeout:g}s") from None
        return _Connection(reader, writer)

    async def _send_body(self, connection: _Connection, body: Body, on_sent: OnSent | None) -> None:
        writer = connection.writer
        if body is None:
            await self._wait(writer.drain())
            return
        if isinstance(body, FileBody):
            loop = asyncio.get_running_loop()
            with open(body.path, "rb") as f:
                position, end = body.start, body.start + body.size
                while position < end:
                    step = min(SLICE, end - position)
                    if writer.transport.is_closing():
                        raise ConnectionResetError("the connection closed while the body was being sent")
                    # sendfile waits for the headers (and anything before) to leave first.
                    try:
                        await self._wait(loop.sendfile(writer.transport, f, position, step))
                    except RuntimeError as exc:  # asyncio's "Transport is closing", lost mid-call
                        raise ConnectionResetError(str(exc)) from None
                    position += step
                    if on_sent is not None:
                        on_sent(step)
            return
        view = memoryview(body)
        for position in range(0, len(view), SLICE):
            piece = view[position : position + SLICE]
            writer.write(piece)
            await self._wait(writer.drain())
            if on_sent is not None:
                on_sent(len(piece))
        if not view:
            await self._wait(writer.drain())

    async def _early_response(self, connection: _Connection, method: str) -> Response | None:
        try:
            response, _ = await asyncio.wait_for(self._read_response(connection.reader, method), 1.0)
        except (OSError, asyncio.TimeoutError):
            return None
        return response

    async def _wait(self, awaitable):
        try:
            return await asyncio.wait_for(awaitable, self.timeout)
        except asyncio.TimeoutError:
            raise StalledError(f"no progress for {self.timeout:g}s") from None
        except asyncio.IncompleteReadError:
            raise ConnectionResetError("the connection closed in the middle of an answer") from None
        except (asyncio.LimitOverrunError, ValueError) as exc:
            raise ConnectionError(f"unreadable answer: {exc}") from None

    async def _read_response(self, reader: asyncio.StreamReader, method: str) -> tuple[Response, bool]:
        """One response, and whether the connection may carry another request."""
        while True:
            line = await self._wait(reader.readline())
            if not line:
                raise ConnectionResetError("the server closed the connection without answering")
            fields = line.split(None, 2)
            if len(fields) < 2 or not fields[0].startswith(b"HTTP/1.") or not fields[1].isdigit():
                raise ConnectionError(f"not an HTTP/1.1 answer: {line[:60]!r}")
            status = int(fields[1])
            headers: dict[str, str] = {}
            while (line := await self._wait(reader.readline())) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            if not 100 <= status < 200:  # skip interim answers (100 Continue)
                break
        keep = headers.get("connection", "").lower() != "close" and fields[0] != b"HTTP/1.0"
        if method == "HEAD" or status in (204, 304):
            return Response(status, headers, b""), keep
        if "content-length" in headers:
            length = int(headers["content-length"])
            body = await self._wait(reader.readexactly(min(length, MAX_RESPONSE_BODY)))
            return Response(status, headers, body), keep and length <= MAX_RESPONSE_BODY
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return Response(status, headers, await self._read_chunked(reader)), keep
        body = await self._wait(reader.read(MAX_RESPONSE_BODY))
        return Response(status, headers, body), False

    async def _read_chunked(self, reader: asyncio.StreamReader) -> bytes:
        body = bytearray()
        while size := int((await self._wait(reader.readline())).split(b";")[0], 16):
            if len(body) + size > MAX_RESPONSE_BODY:
                raise ConnectionError("answer body too large")
            body += await self._wait(reader.readexactly(size))
            await self._wait(reader.readline())
        while (await self._wait(reader.readline())) not in (b"\r\n", b"\n", b""):  # trailers
            pass
        return bytes(body)
