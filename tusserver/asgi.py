"""The ASGI front door: a TusService as an ASGI 3 application, for uvicorn, Hypercorn or
a mount in FastAPI, Starlette and the like.

    tus = create_asgi_app(Config(file_dir="uploads"))
    app = FastAPI(lifespan=tus.lifespan)
    app.mount("/uploads", tus)

`uvicorn --factory tusserver.asgi:from_env` serves what the `tusserver` command serves."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from .config import Config
from .exchange import Exchange, relative_route
from .hooks import Hooks
from .locking import Locker
from .ops import OPS_PATHS, ops_response
from .owners import Quota
from .service import TusService, build_service
from .shutdown import drain_on_signals
from .stores.base import Store

log = logging.getLogger("tusserver")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_NO_BODY_STATUS = frozenset({204, 304})
# Body bytes taken from the ASGI server ahead of the store, per request (see AsgiContent).
HOLD = 64 * 1024


class AsgiContent:
    """The request body from `receive`, as the core's BodyStream.

    A pump keeps a receive() waiting while less than HOLD bytes wait here: an ASGI server
    answers http.disconnect once the client is gone and drops what it had buffered, so
    bytes are safe only once taken from it. Past HOLD the pump waits for the store, and the
    server's own bound applies (uvicorn stops reading the socket past 64 KiB unread)."""

    def __init__(self, receive: Receive, body_expected: bool, *, read_now: bool) -> None:
        self._receive = receive
        self.done = not body_expected  # every message of the body was taken from the queue
        self._messages: collections.deque[Message] = collections.deque()
        self._held = 0  # body bytes in _messages
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._pump: asyncio.Task[None] | None = None
        self._exc: BaseException | None = None
        self._reader: asyncio.Task | None = None  # the task waiting in readany(), if any
        self._stopping = False
        if read_now and body_expected:
            self._start()

    def _start(self) -> None:
        if self._pump is None:
            self._pump = asyncio.ensure_future(self._run_pump())

    async def _run_pump(self) -> None:
        while True:
            await self._room.wait()
            message = await self._receive()
            self._messages.append(message)
            self._held += len(message.get("body", b""))
            if self._held >= HOLD:
                self._room.clear()
            self._arrived.set()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return

    async def readany(self) -> bytes:
        while True:
            if self._exc is not None:
                raise self._exc
            if self._messages:
                message = self._messages.popleft()
                chunk = message.get("body", b"")
                self._held -= len(chunk)
                if self._held < HOLD:
                    self._room.set()
                if message["type"] != "http.request":
                    self.done = True
                    raise ConnectionResetError("the client disconnected")
                if not message.get("more_body", False):
                    self.done = True
                if chunk:
                    return bytes(chunk)
                continue
            if self.done:
                return b""
            self._start()  # not before the body is wanted: it sends a 100 Continue
            self._arrived.clear()
            await self._wait()

    async def _wait(self) -> None:
        """Until a message arrives; a stop (set_exception) cancels the wait, not the pump."""
        self._reader = asyncio.current_task()
        try:
            await self._arrived.wait()
        except asyncio.CancelledError:
            if not self._stopping:
                raise  # the request itself is cancelled
            self._stopping = False
            uncancel = getattr(self._reader, "uncancel", None)  # Python 3.11+
            if uncancel is not None:
                uncancel()
            assert self._exc is not None
            raise self._exc from None
        finally:
            self._reader = None

    def set_exception(self, exc: BaseException) -> None:
        self._exc = exc
        if self._reader is not None and not self._stopping and self._reader is not asyncio.current_task():
            self._stopping = True
            self._reader.cancel()

    def buffered(self) -> bytes:
        """What the pump took from the server and the store did not read yet."""
        kept = b"".join(bytes(m.get("body", b"")) for m in self._messages if m["type"] == "http.request")
        self._messages.clear()
        self._held = 0
        return kept

    def bound(self) -> None:
        pass  # HOLD, and the ASGI server's own buffers

    def fast_reads(self) -> object | None:
        return None

    def slow_reads(self, token: object) -> None:
        pass

    def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()


class AsgiConnection:
    """The core's Connection over ASGI `send`."""

    def __init__(self, send: Send, receive: Receive, content: AsgiContent) -> None:
        self._send = send
        self._receive = receive
        self._content = content
        self.started = False
        self._gone = False
        self._watch: asyncio.Task[None] | None = None

    async def send(self, status: int, headers: CIMultiDict[str], body: bytes, *, close: bool) -> None:
        if status not in _NO_BODY_STATUS and status >= 200 and "Content-Length" not in headers:
            headers["Content-Length"] = str(len(body))
        if close or not self._content.done:
            # The rest of the body is not wanted: a stopped body, or one refused before it was
            # read. Closing spares reading (and discarding) what the client still sends.
            headers["Connection"] = "close"
        await self._start(status, headers)
        await self._send({"type": "http.response.body", "body": body})

    async def _start(self, status: int, headers: CIMultiDict[str]) -> None:
        self.started = True
        await self._send(
            {
                "type": "http.response.start",
                "status": status,
                # Values as aiohttp writes them (UTF-8): a hook's header cannot fail the answer.
                "headers": [
                    (k.lower().encode("latin-1"), v.encode("utf-8", "surrogateescape")) for k, v in headers.items()
                ],
            }
        )

    async def start(self, status: int, headers: CIMultiDict[str]) -> None:
        await self._start(status, headers)
        if self._content.done and self._watch is None:
            # A server may drop what is sent to a client that left without a word (uvicorn
            # does): the only sign is http.disconnect, once the request body is read.
            self._watch = asyncio.ensure_future(self._watch_disconnect())

    async def _watch_disconnect(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self._gone = True
                return

    async def write(self, data: bytes | memoryview) -> None:
        if self._gone:
            raise ConnectionResetError("the client disconnected")
        await self._send({"type": "http.response.body", "body": bytes(data), "more_body": True})

    async def finish(self) -> None:
        await self._send({"type": "http.response.body", "body": b""})

    async def interim(self, head: bytes) -> bool:
        return False  # ASGI has no interim responses

    def drop(self, *, at_once: bool) -> None:
        # ASGI has no way to close a connection but to end the app with the response
        # incomplete, which the service then does; the server closes it.
        pass

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()


def _body_expected(headers: CIMultiDictProxy[str]) -> bool:
    if "Transfer-Encoding" in headers:
        return True
    try:
        return int(headers.get("Content-Length", "0")) > 0
    except ValueError:
        return True


class TusAsgi:
    """`service` as an ASGI 3 application. Paths are relative to the scope's root_path
    (where it is mounted): `base_path` is the collection, `base_path` + id an upload.
    `ops`: also serve /metrics, /healthz and /readyz; `signals`: on SIGTERM/SIGINT drain
    before the server stops listening, as the `tusserver` command does; `trim`: give freed
    heap memory back to the system every TRIM_EVERY seconds (the last two for a process
    that serves only this app)."""

    def __init__(
        self,
        service: TusService,
        *,
        base_path: str = "/",
        ops: bool = False,
        signals: bool = False,
        trim: bool = False,
    ) -> None:
        self.service = service
        self.base_path = "/" + base_path.strip("/") if base_path.strip("/") else ""
        self.ops = ops
        self.signals = signals
        self.trim = trim
        self._trimming: asyncio.Task[None] | None = None
        self._starting: asyncio.Lock | None = None
        self._ops_server: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1000})

    # -- life ----------------------------------------------------------------

    async def startup(self) -> None:
        """Start the service (once; a request that comes first starts it too)."""
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self.service.started:
                return
            await self.service.start()
            if self.signals and threading.current_thread() is threading.main_thread():
                drain_on_signals(self.service.shutdown, _server_exit())
            if self.ops and self.service.config.ops_port is not None:
                self._ops_server = await _serve_ops(self)
            trimmer = _heap_trimmer() if self.trim else None
            if trimmer is not None:
                self._trimming = asyncio.ensure_future(_trim_periodically(trimmer))

    async def shutdown(self) -> None:
        """Drain the uploads in flight (see Shutdown), then stop the service."""
        if not self.service.started:
            return
        await self.service.drain()
        if self._trimming is not None:
            self._trimming.cancel()
            self._trimming = None
        if self._ops_server is not None:
            await self._ops_server.shutdown()
            self._ops_server = None
        await self.service.close()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """For the application this one is mounted in: FastAPI(lifespan=tus.lifespan).
        A mounted app gets no lifespan events of its own."""
        await self.startup()
        try:
            yield
        finally:
            await self.shutdown()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.error("cannot start: %s", exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- requests ------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.service.started:
            await self.startup()
        root_path = scope.get("root_path", "")
        path: str = scope["path"]
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :]  # the ASGI spec puts the mount point in both
        if self.ops and self.service.config.ops_port is None and path in OPS_PATHS:
            await _send_ops(self.service, path, receive, send)
            return
        on_route, route_id = False, None
        if path == self.base_path or path.startswith(self.base_path + "/"):
            on_route, route_id = relative_route(path[len(self.base_path) :])
        headers = CIMultiDictProxy(
            CIMultiDict(
                (name.decode("latin-1"), value.decode("utf-8", "surrogateescape")) for name, value in scope["headers"]
            )
        )
        body_exists = _body_expected(headers)
        # A client that waits for 100 Continue sends nothing before it: reading starts with
        # the store. Any other's bytes are taken at once, so that a drop loses none of them.
        content = AsgiContent(
            receive, body_exists, read_now="100-continue" not in headers.get("Expect", "").lower()
        )
        connection = AsgiConnection(send, receive, content)
        version = scope.get("http_version", "1.1")
        major, _, minor = version.partition(".")
        exchange = Exchange(
            method=scope["method"],
            url=_url(scope),
            headers=headers,
            root_path=root_path + self.base_path,
            route_id=route_id,
            peer=_Peer(scope, headers),
            http_version=(int(major or 1), int(minor or 0)),
            content=content,
            body_exists=body_exists,
            conn=connection,
            on_route=on_route,
        )
        try:
            # A dropped download returns with its body incomplete: the server then closes
            # the connection, and the client sees a body shorter than Content-Length.
            await self.service.handle(exchange)
        finally:
            connection.close()
            content.close()


class _Peer:
    def __init__(self, scope: Scope, headers: CIMultiDictProxy[str]) -> None:
        self._scope = scope
        self._headers = headers

    @property
    def scheme(self) -> str:
        return self._scope.get("scheme", "http")

    @property
    def host(self) -> str:
        server = self._scope.get("server")
        return self._headers.get("Host") or (f"{server[0]}:{server[1]}" if server else "localhost")

    @property
    def remote(self) -> str | None:
        client = self._scope.get("client")
        return client[0] if client else None


def _url(scope: Scope) -> URL:
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else URL.build(path=scope["path"]).raw_path
    query = scope.get("query_string", b"").decode("latin-1")
    return URL(path + ("?" + query if query else ""), encoded=True)


def _server_exit() -> Callable[[], None]:
    """What stops the ASGI server, as the signal would have: its own handler (uvicorn's
    sets should_exit), else the signal with its default action."""
    previous = signal.getsignal(signal.SIGTERM)

    def exit_server() -> None:
        if callable(previous):
            previous(signal.SIGTERM, None)
        else:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    return exit_server


async def _send_ops(service: TusService, path: str, receive: Receive, send: Send) -> None:
    response = await ops_response(service, path)
    connection = AsgiConnection(send, receive, AsgiContent(receive, False, read_now=False))
    await connection.send(response.status, response.headers, response.body, close=False)


async def _serve_ops(tus: TusAsgi) -> Any:
    """/metrics, /healthz and /readyz on ops_host:ops_port, off the public listener. The
    listener is uvicorn's, started without its signal handling (the main server's)."""
    import uvicorn

    config = tus.service.config
    service = tus.service

    async def ops(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] in OPS_PATHS:
            await _send_ops(service, scope["path"], receive, send)
            return
        connection = AsgiConnection(send, receive, AsgiContent(receive, False, read_now=False))
        await connection.send(404, CIMultiDict({"Content-Type": "text/plain"}), b"not found\n", close=False)

    server = uvicorn.Server(
        uvicorn.Config(
            ops,
            host=config.ops_host or config.host,
            port=config.ops_port or 0,
            lifespan="off",
            log_config=None,
        )
    )
    return await _OpsListener.start(server)


class _OpsListener:
    """A uvicorn server run as a task of this loop. Its serve() would take over the
    process's signals, which belong to the main server."""

    def __init__(self, server: Any, task: asyncio.Task) -> None:
        self.server = server
        self.task = task

    @classmethod
    async def start(cls, server: Any) -> _OpsListener:
        # Its start-up lines ("Uvicorn running on ...") would pass for the main server's.
        quiet = logging.getLogger("uvicorn.error")
        silence = logging.Filter("-")  # passes no record
        quiet.addFilter(silence)
        try:
            task = asyncio.ensure_future(server._serve())
            while not server.started:
                if task.done():
                    task.result()  # its error
                    raise OSError("the ops listener did not start")
                await asyncio.sleep(0.01)
        finally:
            quiet.removeFilter(silence)
        log.info("ops endpoints on %s:%d (/metrics, /healthz, /readyz)", server.config.host, server.config.port)
        return cls(server, task)

    async def shutdown(self) -> None:
        self.server.should_exit = True
        await self.task


def create_asgi_app(
    config: Config | None = None,
    *,
    store: Store | None = None,
    locker: Locker | None = None,
    hooks: Hooks | None = None,
    max_size_for: Callable[[Exchange], int | None] | None = None,
    quota_for: Callable[[Exchange], Quota | None] | None = None,
) -> TusAsgi:
    """A tus server as an ASGI 3 application, with the collection at its root and uploads
    below it; see create_app for the arguments. Mount it anywhere: Location headers carry
    the mount point (the scope's root_path)."""
    return TusAsgi(
        build_service(config, store=store, locker=locker, hooks=hooks, max_size_for=max_size_for, quota_for=quota_for)
    )


def from_env() -> TusAsgi:
    """For `uvicorn --factory tusserver.asgi:from_env`: the configuration the `tusserver`
    command would load (TUSSERVER_* variables, the TUSSERVER_CONFIG file), with its base
    path, its ops endpoints, and its drain on SIGTERM."""
    from .load import load_config
    from .logs import setup_logging

    config = load_config(cli={}, env=os.environ, config_file=None)
    setup_logging(config.log_level, config.log_format)
    return TusAsgi(build_service(config), base_path=config.base_path, ops=True, signals=True, trim=True)


TRIM_EVERY = 1.0  # seconds between two returns of freed heap memory (from_env)


def _heap_trimmer() -> Callable[[int], object] | None:
    """glibc's malloc_trim, or None elsewhere.

    ASGI servers read a socket up to 256 KB at a time into a new bytes object, and the
    aiohttp door's bounded reads are not available here. Freed, such a buffer stays in the
    heap (glibc's mmap threshold rises past it after the first frees), so a process with
    hundreds of bodies in flight keeps their peak: 300 stalled bodies held 745-808 KiB of
    RSS each. malloc_trim(0) gives the free pages back. Fixing the mmap threshold at 64 KiB
    did that too, but made every read an mmap, a munmap and 64 page faults: it halved the
    door's throughput on large bodies (S1: 135-141 MiB/s with it, 178-438 without)."""
    try:
        trim: Callable[[int], object] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


async def _trim_periodically(trim: Callable[[int], object]) -> None:
    while True:
        await asyncio.sleep(TRIM_EVERY)
        trim(0)
