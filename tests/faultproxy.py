"""A small HTTP reverse proxy for S3 (moto) that injects faults into chosen operations:
500 errors, slow answers, connection resets before or after the request took effect,
and bodies cut short. Point the S3 store's endpoint_url at `FaultProxy.url`."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from dataclasses import dataclass

import aiohttp
from aiohttp import web

# Hop-by-hop or recomputed headers, never copied across the proxy.
_SKIP_REQUEST = {"host", "content-length", "transfer-encoding", "connection", "expect"}
_SKIP_RESPONSE = {"content-length", "transfer-encoding", "connection", "server", "date"}
ACTIONS = ("error", "slow", "reset", "reset_after", "truncate")
INTERNAL_ERROR = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>InternalError</Code><Message>injected by faultproxy</Message></Error>"
)


def operation(request: web.Request) -> str:
    """The S3 operation a request is, for the operations the tests aim at."""
    query, path, method = request.query, request.path, request.method
    if method == "PUT" and "partNumber" in query and "uploadId" in query:
        return "UploadPartCopy" if "x-amz-copy-source" in request.headers else "UploadPart"
    if method == "GET" and "uploadId" in query:
        return "ListParts"
    if method == "POST" and "uploads" in query:
        return "CreateMultipartUpload"
    if method == "POST" and "uploadId" in query:
        return "CompleteMultipartUpload"
    if method == "GET" and "list-type" in query:
        return "ListObjectsV2"  # on the bucket: not to be taken for a GET of an object
    if method == "POST" and "delete" in query:
        return "DeleteObjects"
    if ".part." in path.rsplit("/", 1)[-1]:  # a tail chunk, <id>.part.<n>.<start>
        return {"GET": "GetPart", "HEAD": "HeadPart", "PUT": "PutPart", "DELETE": "DeletePart"}.get(method, method)
    return f"{method} {path.rsplit('.', 1)[-1] if '.' in path.rsplit('/', 1)[-1] else 'object'}"


@dataclass
class Fault:
    operation: str
    action: str
    times: int | None = 1  # None: every time
    delay: float = 0.0  # for "slow"
    probability: float = 1.0
    skip: int = 0  # let this many matching requests through first
    hits: int = 0

    def applies(self, op: str, rng: random.Random) -> bool:
        if op != self.operation or (self.times is not None and self.hits >= self.times):
            return False
        if self.skip > 0:
            self.skip -= 1
            return False
        return self.probability >= 1.0 or rng.random() < self.probability


class FaultProxy:
    def __init__(self, target: str, seed: int = 0) -> None:
        self.target = target.rstrip("/")
        self.faults: list[Fault] = []
        self.seen: list[str] = []  # every operation, in order
        self.rng = random.Random(seed)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    def inject(self, operation: str, action: str, **options) -> Fault:
        assert action in ACTIONS, action
        fault = Fault(operation, action, **options)
        self.faults.append(fault)
        return fault

    def clear(self) -> None:
        self.faults.clear()

    @property
    def injected(self) -> int:
        return sum(f.hits for f in self.faults)

    async def start(self) -> FaultProxy:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        op = operation(request)
        self.seen.append(op)
        fault = next((f for f in self.faults if f.applies(op, self.rng)), None)
        if fault is not None:
            fault.hits += 1
        action = fault.action if fault else None
        body = await request.read()
        if action == "error":
            return web.Response(status=500, body=INTERNAL_ERROR, content_type="application/xml")
        if action == "reset":
            return _reset(request)
        if action == "slow":
            await asyncio.sleep(fault.delay)
        status, headers, payload, length = await self._forward(request, body)
        if action == "reset_after":  # S3 did the work; the answer is lost
            return _reset(request)
        if action == "truncate":
            response = web.StreamResponse(status=status, headers=headers)
            response.content_length = len(payload)
            await response.prepare(request)
            await response.write(payload[: len(payload) // 2])
            request.transport.close()
            return response
        if request.method == "HEAD":  # no body, but the object's Content-Length
            response = web.StreamResponse(status=status, headers=headers)
            response.content_length = length
            await response.prepare(request)
            await response.write_eof()
            return response
        return web.Response(status=status, headers=headers, body=payload)

    async def _forward(self, request: web.Request, body: bytes) -> tuple[int, dict[str, str], bytes, int]:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _SKIP_REQUEST}
        async with self._session.request(
            request.method, self.target + request.rel_url.raw_path_qs, headers=headers, data=body
        ) as upstream:
            payload = await upstream.read()
            kept = {k: v for k, v in upstream.headers.items() if k.lower() not in _SKIP_RESPONSE}
            return upstream.status, kept, payload, int(upstream.headers.get("Content-Length", "0"))


def _reset(request: web.Request) -> web.Response:
    """Drop the connection with a TCP reset, answering nothing."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return web.Response(status=500)  # never reaches the client
