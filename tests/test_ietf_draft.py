"""The IETF draft "Resumable Uploads for HTTP" over raw sockets, for every interop version we
speak and on both stores: the 104 on the wire before the final response, creation with and
without a body, a dropped creation resumed from the 104's Location, offset mismatches,
inconsistent lengths, completion, cancellation, limits, locks, hooks and tokens.

The wire values are written out here, not taken from tusserver.ietf, so that a wrong rule
there fails a test."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
from dataclasses import dataclass

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from tests.hanging import Received
from tests.stored import assert_store_holds
from tests.test_tus_protocol import NoCancelTestServer
from tusserver import Config, HookRejected, Hooks, create_app, make_token

VERSIONS = [3, 5, 6, 8, 9, 10]
PROBLEM = "https://iana.org/assignments/http-problem-types#"
SECRET = "s3cret-for-ietf-tests-0123456789abcdef"


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def complete_field(version: int, complete: bool) -> dict[str, str]:
    """The completeness field as a client of `version` sends it."""
    if version == 3:  # -01: Upload-Incomplete, the inverse
        return {"Upload-Incomplete": "?0" if complete else "?1"}
    return {"Upload-Complete": "?1" if complete else "?0"}


def says_complete(version: int, headers) -> bool:
    if version == 3:
        return {"?0": True, "?1": False}[headers["Upload-Incomplete"]]
    return {"?1": True, "?0": False}[headers["Upload-Complete"]]


def draft(version: int, complete: bool | None = None, **extra: str) -> dict[str, str]:
    headers = {"Upload-Draft-Interop-Version": str(version)}
    if complete is not None:
        headers.update(complete_field(version, complete))
    headers.update({k.replace("_", "-"): v for k, v in extra.items()})
    return headers


def append_headers(version: int, offset: int, complete: bool | None, **extra: str) -> dict[str, str]:
    headers = draft(version, complete, Upload_Offset=str(offset), **extra)
    if version >= 6:  # application/partial-upload is required from -04 (interop 6)
        headers["Content-Type"] = "application/partial-upload"
    return headers


# -- a raw HTTP/1.1 client that sees interim responses ------------------------------------


@dataclass
class Message:
    status: int
    headers: CIMultiDict
    body: bytes

    def problem(self) -> dict:
        assert self.headers["Content-Type"].startswith("application/problem+json"), dict(self.headers)
        return json.loads(self.body)


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
        self.reader, self.writer, self.port = reader, writer, port

    @classmethod
    async def open(cls, port: int) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, port)

    async def send_head(self, method: str, path: str, headers: dict[str, str]) -> None:
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await self.writer.drain()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def message(self, method: str, timeout: float = 10.0) -> Message:
        """The next response, interim or final."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = CIMultiDict()
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                headers.add(name.strip(), value.strip())
        status = int(status_line.split()[1])
        body = b""
        if status >= 200 and method != "HEAD" and status not in (204, 304):
            body = await asyncio.wait_for(self.reader.readexactly(int(headers.get("Content-Length", "0"))), timeout)
        return Message(status, headers, body)

    async def exchange(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> list[Message]:
        """Send a request and read its interim responses and its final one."""
        if body or method in ("POST", "PUT", "PATCH"):
            headers = {**headers, "Content-Length": str(len(body))}
        await self.send_head(method, path, headers)
        await self.send(body)
        messages = [await self.message(method)]
        while messages[-1].status < 200:
            messages.append(await self.message(method))
        return messages

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


class Server:
    def __init__(self, test_server: TestServer, store, factory) -> None:
        self.test_server, self.store, self.factory = test_server, store, factory

    @property
    def port(self) -> int:
        return self.test_server.port

    async def conn(self) -> Conn:
        return await Conn.open(self.port)

    async def request(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> list[Message]:
        conn = await self.conn()
        try:
            return await conn.exchange(method, path, headers, body)
        finally:
            await conn.close()

    async def final(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> Message:
        return (await self.request(method, path, headers, body))[-1]

    def path_of(self, location: str) -> str:
        prefix = f"http://127.0.0.1:{self.port}/"
        assert location.startswith(prefix), location
        return location[len(prefix) - 1 :]

    async def upload_ids(self) -> set[str]:
        return {upload_id async for upload_id in self.store.list_uploads()}

    async def holds(self, path: str, data: bytes) -> None:
        await assert_store_holds(self.store, self.factory, path.rsplit("/", 1)[1], data)

    async def idle(self) -> None:
        """Wait (bounded) until no connection is being handled."""
        server = self.test_server.runner.server
        for _ in range(1000):
            if not server.connections:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("a request is still being handled after 10 s")


@pytest.fixture
async def server(store_factory):
    """`await server(config, hooks=...)` starts a tusserver on a free port over a new store."""
    started: list[TestServer] = []

    async def start(
        config: Config | None = None, *, hooks: Hooks | None = None, cancel: bool = True, prefix: str | None = None
    ) -> Server:
        """`cancel`: whether a dropped connection cancels its handler (aiohttp's test server
        does; `web.run_app`, which the CLI uses, does not)."""
        store = store_factory()
        app = create_app(config or Config(), store=store, hooks=hooks)
        if prefix is not None:
            root = web.Application()
            root.add_subapp(prefix, app)
            app = root
        test_server = TestServer(app, host="127.0.0.1") if cancel else NoCancelTestServer(app, host="127.0.0.1")
        await test_server.start_server()
        started.append(test_server)
        return Server(test_server, store, store_factory)

    yield start
    for test_server in started:
        await test_server.close()


async def create(srv: Server, version: int, complete: bool, body: bytes = b"", **extra: str) -> tuple[str, Message]:
    """A creation; (upload path, final response) after checking its 104."""
    interim, final = await srv.request("POST", "/", draft(version, complete, **extra), body)
    assert interim.status == 104
    assert final.status == 201, final.body
    assert final.headers["Location"] == interim.headers["Location"]
    return srv.path_of(final.headers["Location"]), final


# -- creation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
async def test_creation_with_the_whole_body_sends_104_before_reading_it(server, version):
    srv = await server(Config(max_size=10_000_000, expire_after=3600))
    data = payload(300_000, seed=version)
    conn = await srv.conn()
    headers = draft(
        version,
        True,
        Content_Length=str(len(data)),
        Content_Type="image/png",
        Content_Disposition="inline; filename=\"a b.png\"; filename*=UTF-8''%C3%A9t%C3%A9.png",
    )
    await conn.send_head("POST", "/", headers)
    # Not a byte of the body sent yet: the 104 must come first.
    interim = await conn.message("POST")
    assert interim.status == 104
    assert interim.headers["Upload-Draft-Interop-Version"] == str(version)
    path = srv.path_of(interim.headers["Location"])
    if version >= 8:
        assert interim.headers["Upload-Limit"] == "max-size=10000000, max-age=3600"
    elif version == 6:
        assert interim.headers["Upload-Limit"] == "max-size=10000000, expires=3600"
    else:
        assert "Upload-Limit" not in interim.headers  # before -04 there is no such field
    await conn.send(data)
    final = await conn.message("POST")
    await conn.close()
    assert final.status == 201
    assert final.headers["Location"] == interim.headers["Location"]
    assert final.headers["Upload-Offset"] == str(len(data))
    assert says_complete(version, final.headers) is True
    assert "Tus-Resumable" not in final.headers
    info = await srv.store.get_info(path.lstrip("/"))
    assert info.finished and (info.offset, info.length) == (len(data), len(data))
    assert info.metadata == {"filetype": "image/png", "filename": "été.png"}
    await srv.holds(path, data)


@pytest.mark.parametrize("version", VERSIONS)
async def test_creation_without_body_then_appends_and_an_empty_completing_patch(server, version):
    srv = await server()
    data = payload(70_000, seed=10 + version)
    path, created = await create(srv, version, False)
    assert created.headers["Upload-Offset"] == "0"
    assert says_complete(version, created.headers) is False
    assert "Upload-Length" not in created.headers  # unknown until the client completes
    for start, stop in [(0, 30_000), (30_000, 70_000)]:
        reply = await srv.final("PATCH", path, append_headers(version, start, False), data[start:stop])
        assert reply.status == 204, reply.body
        assert reply.headers["Upload-Offset"] == str(stop)
        assert says_complete(version, reply.headers) is False
    head = await srv.final("HEAD", path, draft(version))
    assert head.status == 204
    assert (head.headers["Upload-Offset"], head.headers["Cache-Control"]) == ("70000", "no-store")
    assert says_complete(version, head.headers) is False
    await srv.holds(path, data)
    done = await srv.final("PATCH", path, append_headers(version, 70_000, True))
    assert done.status == 204, done.body
    assert (done.headers["Upload-Offset"], done.headers["Upload-Length"]) == ("70000", "70000")
    assert says_complete(version, done.headers) is True
    info = await srv.store.get_info(path.lstrip("/"))
    assert info.finished and info.length == 70_000
    await srv.holds(path, data)
    # The final response was lost: the same empty completion is answered again.
    again = await srv.final("PATCH", path, append_headers(version, 70_000, True))
    assert again.status == 204 and says_complete(version, again.headers) is True


@pytest.mark.parametrize("cancel", [True, False], ids=["cancelled", "not-cancelled"])
@pytest.mark.parametrize("version", VERSIONS)
async def test_dropped_creation_keeps_its_bytes_and_resumes_from_the_104_location(server, version, cancel):
    srv = await server(cancel=cancel)
    data = payload(200_000, seed=20 + version)
    received = Received(srv.store)
    conn = await srv.conn()
    await conn.send_head("POST", "/", draft(version, True, Content_Length=str(len(data)), Upload_Length="200000"))
    interim = await conn.message("POST")
    assert interim.status == 104
    path = srv.path_of(interim.headers["Location"])
    await conn.send(data[:120_000])
    await received.at_least(120_000)
    await conn.close()  # the network drops: no final response
    await srv.idle()
    head = await srv.final("HEAD", path, draft(version))
    assert head.status == 204
    assert head.headers["Upload-Offset"] == "120000"
    assert head.headers["Upload-Length"] == "200000"
    assert says_complete(version, head.headers) is False
    await srv.holds(path, data[:120_000])
    done = await srv.final("PATCH", path, append_headers(version, 120_000, True), data[120_000:])
    assert done.status == 204, done.body
    assert says_complete(version, done.headers) is True
    assert (await srv.store.get_info(path.lstrip("/"))).finished
    await srv.holds(path, data)


async def test_100_continue_comes_before_the_104(server):
    srv = await server()
    conn = await srv.conn()
    await conn.send_head("POST", "/", draft(10, True, Content_Length="5", Expect="100-continue"))
    assert (await conn.message("POST")).status == 100
    interim = await conn.message("POST")
    assert interim.status == 104
    await conn.send(b"hello")
    final = await conn.message("POST")
    await conn.close()
    assert final.status == 201 and final.headers["Location"] == interim.headers["Location"]
    await srv.holds(srv.path_of(final.headers["Location"]), b"hello")


async def test_http_1_0_gets_no_interim_response(server):
    srv = await server()
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    headers = "".join(f"{k}: {v}\r\n" for k, v in draft(10, True, Content_Length="5").items())
    writer.write(f"POST / HTTP/1.0\r\nHost: x\r\n{headers}\r\nhello".encode())
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)  # HTTP/1.0: the server closes after it
    writer.close()
    assert answer.startswith(b"HTTP/1.0 201 ") and b" 104 " not in answer
    assert answer.count(b"HTTP/1.") == 1


async def test_mounted_under_a_prefix(server):
    srv = await server(prefix="/files/")
    interim, final = await srv.request("POST", "/files/", draft(9, False), b"abc")
    assert interim.status == 104 and final.status == 201
    path = srv.path_of(final.headers["Location"])
    assert path.startswith("/files/") and path == srv.path_of(interim.headers["Location"])
    mismatch = await srv.final("PATCH", path, append_headers(9, 0, True), b"abc")
    assert mismatch.status == 409
    assert mismatch.problem()["type"] == PROBLEM + "mismatching-upload-offset"
    done = await srv.final("PATCH", path, append_headers(9, 3, True))
    assert done.status == 204 and done.headers["Upload-Complete"] == "?1"


async def test_put_creates_like_post(server):
    srv = await server()
    interim, final = await srv.request("PUT", "/", draft(10, True), b"hello")
    assert (interim.status, final.status) == (104, 201)
    await srv.holds(srv.path_of(final.headers["Location"]), b"hello")


async def test_creation_with_partial_upload_type_never_stores_it_as_the_file_type(server):
    # tus-js-client ('ietf-draft-05') labels a POST that carries data application/partial-upload.
    srv = await server()
    path, _ = await create(
        srv, 6, False, b"abc", Content_Type="application/partial-upload", Upload_Metadata="filetype dGV4dC9wbGFpbg=="
    )
    info = await srv.store.get_info(path.lstrip("/"))
    assert info.metadata == {"filetype": "text/plain"}  # from Upload-Metadata, not the transfer label


# -- per-version rules ----------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
async def test_append_without_the_completeness_field(server, version):
    srv = await server()
    path, _ = await create(srv, version, False)
    reply = await srv.final("PATCH", path, append_headers(version, 0, None), b"12345")
    info = await srv.store.get_info(path.lstrip("/"))
    if version <= 6:  # up to -05 a missing field means this is the last append
        assert reply.status == 204, reply.body
        assert says_complete(version, reply.headers) is True
        assert info.finished and info.length == 5
        await srv.holds(path, b"12345")
    else:  # required from -06
        assert reply.status == 400
        assert reply.problem()["code"] == "ERR_MISSING_UPLOAD_COMPLETE"
        assert (info.offset, info.finished) == (0, False)


@pytest.mark.parametrize("version", VERSIONS)
async def test_append_type_is_required_from_interop_6(server, version):
    srv = await server()
    path, _ = await create(srv, version, False)
    headers = {**append_headers(version, 0, False), "Content-Type": "application/offset+octet-stream"}
    reply = await srv.final("PATCH", path, headers, b"abc")
    offset = (await srv.store.get_info(path.lstrip("/"))).offset
    if version >= 6:
        assert reply.status == 415 and offset == 0
    else:
        assert reply.status == 204 and offset == 3


@pytest.mark.parametrize("version", VERSIONS)
async def test_head_and_delete_with_upload_offset(server, version):
    srv = await server()
    path, _ = await create(srv, version, False, b"abc")
    head = await srv.final("HEAD", path, draft(version, Upload_Offset="3"))
    delete = await srv.final("DELETE", path, draft(version, Upload_Offset="3"))
    if version <= 6:  # -05 and before: a 400
        assert (head.status, delete.status) == (400, 400)
        assert (await srv.store.get_info(path.lstrip("/"))).offset == 3
    else:
        assert (head.status, delete.status) == (204, 204)


@pytest.mark.parametrize("version", VERSIONS)
async def test_get_on_the_upload(server, version):
    srv = await server()
    path, _ = await create(srv, version, True, b"hello")
    reply = await srv.final("GET", path, draft(version))
    if version >= 9:  # -12 allows GET for offset retrieval
        assert reply.status == 204
        assert reply.headers["Upload-Offset"] == "5" and says_complete(version, reply.headers)
    else:  # the download, as without the draft
        assert (reply.status, reply.body) == (200, b"hello")


async def test_unknown_interop_version_and_a_creation_without_the_field_are_plain_tus(server):
    srv = await server()
    for headers in [draft(7, True), draft(11, True), draft(10)]:
        reply = await srv.final("POST", "/", headers, b"abc")
        assert reply.status == 412  # no Tus-Resumable: as today
        assert reply.headers["Tus-Resumable"] == "1.0.0"
        assert reply.headers["Content-Type"].startswith("text/plain")
    assert await srv.upload_ids() == set()


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
async def test_offset_mismatch_is_409_with_the_right_offset(server, version):
    srv = await server()
    path, _ = await create(srv, version, False, b"0123456789")
    reply = await srv.final("PATCH", path, append_headers(version, 4, False), b"xyz")
    assert reply.status == 409
    assert reply.headers["Upload-Offset"] == "10"
    assert says_complete(version, reply.headers) is False
    problem = reply.problem()
    assert problem["status"] == 409 and problem["code"] == "ERR_MISMATCHED_OFFSET"
    if version >= 6:
        assert problem["type"] == PROBLEM + "mismatching-upload-offset"
        assert (problem["expected-offset"], problem["provided-offset"]) == (10, 4)
    else:
        assert "type" not in problem  # about:blank: the type came with -04
    await srv.holds(path, b"0123456789")


@pytest.mark.parametrize("version", VERSIONS)
async def test_inconsistent_lengths_are_400_and_change_nothing(server, version):
    srv = await server()
    # Upload-Length says 10, the complete body has 5.
    reply = await srv.final("POST", "/", draft(version, True, Upload_Length="10"), b"12345")
    assert reply.status == 400
    problem = reply.problem()
    assert problem["code"] == "ERR_INCONSISTENT_UPLOAD_LENGTH"
    if version >= 8:
        assert problem["type"] == PROBLEM + "inconsistent-upload-length"
    assert await srv.upload_ids() == set()
    # A known length cannot change, nor be passed.
    path, _ = await create(srv, version, False, b"abc", Upload_Length="6")
    changed = await srv.final("PATCH", path, append_headers(version, 3, False, Upload_Length="7"), b"d")
    past = await srv.final("PATCH", path, append_headers(version, 3, False), b"defg")
    early = await srv.final("PATCH", path, append_headers(version, 3, True), b"d")
    assert (changed.status, past.status, early.status) == (400, 400, 400)
    codes = [reply.problem()["code"] for reply in (changed, past, early)]
    assert codes == ["ERR_LENGTH_ALREADY_SET", "ERR_EXCEEDS_UPLOAD_LENGTH", "ERR_LENGTH_ALREADY_SET"]
    if version >= 8:
        for reply in (changed, past, early):
            assert reply.problem()["type"] == PROBLEM + "inconsistent-upload-length"
    await srv.holds(path, b"abc")


@pytest.mark.parametrize("version", VERSIONS)
async def test_bytes_for_a_completed_upload_are_refused(server, version):
    srv = await server()
    path, _ = await create(srv, version, True, b"done")
    reply = await srv.final("PATCH", path, append_headers(version, 4, False), b"more")
    assert reply.status == 400
    problem = reply.problem()
    if version in (6, 8):  # -04 to -11 had a type for it
        assert problem["type"] == PROBLEM + "completed-upload"
    elif version >= 9:
        assert problem["type"] == PROBLEM + "inconsistent-upload-length"
    await srv.holds(path, b"done")


@pytest.mark.parametrize("version", VERSIONS)
async def test_delete_cancels_the_upload(server, version):
    srv = await server()
    path, _ = await create(srv, version, False, b"abc")
    reply = await srv.final("DELETE", path, draft(version))
    assert reply.status == 204
    assert await srv.upload_ids() == set()
    gone = await srv.final("HEAD", path, draft(version))
    assert gone.status == 404


# -- limits -----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
async def test_upload_limit_on_options_creation_and_head(server, version):
    srv = await server(Config(max_size=1000, expire_after=3600))
    age = "expires" if version == 6 else "max-age"
    options = await srv.final("OPTIONS", "/", draft(version))
    assert options.status == 200
    if version < 6:
        assert "Upload-Limit" not in options.headers
    else:
        assert options.headers["Upload-Limit"] == f"max-size=1000, {age}=3600"
    path, created = await create(srv, version, False, b"abc")
    head = await srv.final("HEAD", path, draft(version))
    if version >= 6:
        for reply in (created, head):
            size, lifetime = reply.headers["Upload-Limit"].split(", ")
            assert size == "max-size=1000"
            assert lifetime.startswith(f"{age}=") and 3590 <= int(lifetime.split("=")[1]) <= 3600
    too_big = await srv.final("POST", "/", draft(version, False, Upload_Length="1001"))
    assert too_big.status == 413
    assert too_big.problem()["code"] == "ERR_MAX_SIZE_EXCEEDED"
    if version >= 6:
        assert too_big.headers["Upload-Limit"] == f"max-size=1000, {age}=3600"
    assert await srv.upload_ids() == {path.lstrip("/")}


async def test_without_limits_options_says_min_size_0(server):
    srv = await server(Config(max_size=None, expire_after=None))
    reply = await srv.final("OPTIONS", "/", draft(10))
    assert reply.headers["Upload-Limit"] == "min-size=0"
    plain = await srv.final("OPTIONS", "/", {})
    assert "Upload-Limit" not in plain.headers  # tus OPTIONS as before


async def test_max_append_size_is_announced_and_bounds_each_request(server):
    srv = await server(Config(max_size=None, expire_after=None, max_append_size=1000))
    options = await srv.final("OPTIONS", "/", draft(10))
    assert options.headers["Upload-Limit"] == "max-append-size=1000"
    (refused,) = await srv.request("POST", "/", draft(10, False), payload(1001))
    assert refused.status == 413
    assert refused.problem()["code"] == "ERR_APPEND_TOO_LARGE"
    assert refused.headers["Upload-Limit"] == "max-append-size=1000"
    assert await srv.upload_ids() == set()
    data = payload(2500, seed=3)
    path, _ = await create(srv, 10, False, data[:1000])
    too_big = await srv.final("PATCH", path, append_headers(10, 1000, False), data[1000:2001])
    assert too_big.status == 413 and too_big.headers["Upload-Limit"] == "max-append-size=1000"
    await srv.holds(path, data[:1000])
    for start, stop, last in [(1000, 2000, False), (2000, 2500, True)]:
        reply = await srv.final("PATCH", path, append_headers(10, start, last), data[start:stop])
        assert reply.status == 204
    await srv.holds(path, data)


async def test_a_complete_body_past_max_size_is_refused_before_the_upload_exists(server):
    srv = await server(Config(max_size=100))
    reply = await srv.final("POST", "/", draft(10, True), payload(101))
    assert reply.status == 413
    assert reply.headers["Upload-Limit"].startswith("max-size=100")
    assert await srv.upload_ids() == set()


# -- locks, hooks, tokens -------------------------------------------------------------------


@pytest.mark.parametrize("version", [5, 10])
async def test_a_new_request_stops_the_creation_in_flight(server, version):
    srv = await server()
    data = payload(150_000, seed=30)
    received = Received(srv.store)
    conn = await srv.conn()
    await conn.send_head("POST", "/", draft(version, True, Content_Length=str(len(data))))
    interim = await conn.message("POST")
    path = srv.path_of(interim.headers["Location"])
    await conn.send(data[:50_000])
    await received.at_least(50_000)
    # The client thinks its request failed and asks where it stands: the old one is stopped.
    head = await asyncio.wait_for(srv.final("HEAD", path, draft(version)), 5)
    assert head.status == 204 and head.headers["Upload-Offset"] == "50000"
    stopped = await conn.message("POST")
    assert stopped.status == 400
    assert stopped.problem()["code"] == "ERR_UPLOAD_INTERRUPTED"
    assert stopped.headers["Location"] == interim.headers["Location"]
    await conn.close()
    done = await srv.final("PATCH", path, append_headers(version, 50_000, True), data[50_000:])
    assert done.status == 204
    await srv.holds(path, data)


async def test_pre_create_hook_sees_filename_and_type(server):
    hooks = Hooks()
    seen = []

    @hooks.on("pre-create")
    async def look(event):
        seen.append(dict(event.upload.metadata))

    srv = await server(hooks=hooks)
    await create(
        srv,
        10,
        True,
        b"{}",
        Content_Type="application/json; charset=utf-8",
        Content_Disposition='inline; filename="x.json"',
    )
    assert seen == [{"filetype": "application/json", "filename": "x.json"}]


async def test_a_rejecting_pre_create_hook_creates_nothing_and_sends_no_104(server):
    hooks = Hooks()

    @hooks.on("pre-create")
    async def refuse(event):
        raise HookRejected(403, "no")

    srv = await server(hooks=hooks)
    (reply,) = await srv.request("POST", "/", draft(10, True), b"abc")
    assert reply.status == 403
    assert reply.problem()["code"] == "ERR_HOOK_REJECTED"
    assert await srv.upload_ids() == set()


async def test_tokens_and_owners_apply_as_for_tus(server):
    srv = await server(Config(auth_secret=SECRET))
    alice = {"Authorization": "Bearer " + make_token(SECRET, 3600, subject="alice")}
    bob = {"Authorization": "Bearer " + make_token(SECRET, 3600, subject="bob")}
    (anonymous,) = await srv.request("POST", "/", draft(10, False))
    assert anonymous.status == 401
    assert await srv.upload_ids() == set()
    interim, created = await srv.request("POST", "/", {**draft(10, False), **alice}, b"abc")
    assert (interim.status, created.status) == (104, 201)
    path = srv.path_of(created.headers["Location"])
    info = await srv.store.get_info(path.lstrip("/"))
    assert info.owner == "alice"
    assert (await srv.final("HEAD", path, {**draft(10), **bob})).status == 404
    assert (await srv.final("PATCH", path, {**append_headers(10, 3, True), **bob}, b"x")).status == 404
    assert (await srv.final("DELETE", path, {**draft(10), **bob})).status == 404
    assert (await srv.final("HEAD", path, {**draft(10), **alice})).status == 204
    await srv.holds(path, b"abc")


async def test_plain_tus_requests_are_untouched(server):
    srv = await server()
    reply = await srv.final("POST", "/", {"Tus-Resumable": "1.0.0", "Upload-Length": "3"})
    assert reply.status == 201
    assert "Upload-Complete" not in reply.headers and "Upload-Draft-Interop-Version" not in reply.headers
    path = srv.path_of(reply.headers["Location"])
    patch = await srv.final(
        "PATCH",
        path,
        {"Tus-Resumable": "1.0.0", "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
        b"abc",
    )
    assert patch.status == 204 and patch.headers["Upload-Offset"] == "3"
    head = await srv.final("HEAD", path, {"Tus-Resumable": "1.0.0"})
    assert head.status == 200 and "Upload-Limit" not in head.headers
    # The draft's HEAD sees the same upload.
    draft_head = await srv.final("HEAD", path, draft(10))
    assert draft_head.status == 204 and draft_head.headers["Upload-Complete"] == "?1"


async def test_an_upload_continues_on_a_restarted_server(server):
    data = payload(90_000, seed=50)
    first = await server()
    path, _ = await create(first, 10, False, data[:40_000], Upload_Length="90000")
    await first.test_server.close()
    second = await server()  # a new store instance over the same storage
    head = await second.final("HEAD", path, draft(10))
    assert (head.status, head.headers["Upload-Offset"], head.headers["Upload-Length"]) == (204, "40000", "90000")
    done = await second.final("PATCH", path, append_headers(10, 40_000, True), data[40_000:])
    assert done.status == 204 and done.headers["Upload-Complete"] == "?1"
    await second.holds(path, data)


async def test_an_expired_upload_is_410(server):
    srv = await server(Config(expire_after=3600))
    path, _ = await create(srv, 10, False, b"abc")
    info = await srv.store.get_info(path.lstrip("/"))
    info.expires = 1.0
    await srv.store.save_info(info)
    reply = await srv.final("HEAD", path, draft(10))
    assert reply.status == 410
    patch = await srv.final("PATCH", path, append_headers(10, 3, True), b"d")
    assert patch.status == 410 and patch.problem()["code"] == "ERR_UPLOAD_EXPIRED"


async def test_a_checksum_that_does_not_match_stores_nothing(server):
    srv = await server()
    path, _ = await create(srv, 10, False, b"abc")
    digest = "sha256 " + base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    reply = await srv.final("PATCH", path, append_headers(10, 3, True, Upload_Checksum=digest), b"defg")
    assert reply.status == 460 and reply.problem()["code"] == "ERR_CHECKSUM_MISMATCH"
    await srv.holds(path, b"abc")
    digest = "sha256 " + base64.b64encode(hashlib.sha256(b"defg").digest()).decode()
    reply = await srv.final("PATCH", path, append_headers(10, 3, True, Upload_Checksum=digest), b"defg")
    assert reply.status == 204
    await srv.holds(path, b"abcdefg")
