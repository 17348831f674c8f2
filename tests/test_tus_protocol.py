"""The tus 1.0.0 protocol over real HTTP, run once per store (disk and S3).

Every test checks exact statuses, headers and offsets, and the sha256 of the bytes
as stored: read back through GET and directly from the store."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import random
import socket
import struct

import pytest
from aiobotocore.session import get_session as aioboto_session
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from tests.asgi_support import in_flight
from tests.stored import assert_store_holds
from tusserver import Config, HookResult, Hooks, UploadInfo, create_app
from tusserver import storage_errors as storage
from tusserver.stores.base import ExpiringStore

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"
ID_LIKE = "0123456789abcdef0123456789abcdef"  # a valid id that names no upload
MiB = 1 << 20

pytestmark = pytest.mark.both_doors


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


class Reply:
    """A finished response: status, headers and the whole body."""

    def __init__(self, status: int, headers, body: bytes, method: str) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.method = method

    def expect(self, status: int) -> Reply:
        assert self.status == status, (self.status, self.body[:300])
        assert self.headers.get("Tus-Resumable") == "1.0.0", dict(self.headers)
        if status >= 400:
            assert self.headers["Content-Type"].startswith("text/plain"), dict(self.headers)
            if self.method != "HEAD":
                text = self.body.decode()
                assert text.endswith("\n") and "\n" not in text[:-1] and len(text) > 1, text
                assert "Traceback" not in text
        return self


class Tus:
    """A running server (real socket) and the store behind it."""

    def __init__(self, client, store, factory, base: str) -> None:
        self.client = client
        self.store = store
        self.factory = factory
        self.base = base  # collection path, ends with "/"

    @property
    def origin(self) -> str:
        return f"http://{self.client.host}:{self.client.port}"

    async def request(self, method: str, path: str, *, tus: bool = True, headers=None, data=None) -> Reply:
        all_headers = {**(TUS if tus else {}), **(headers or {})}
        async with self.client.request(method, path, headers=all_headers, data=data) as resp:
            body = await resp.read()
            return Reply(resp.status, resp.headers, body, method)

    async def post(self, headers=None, data=None, **kw) -> Reply:
        return await self.request("POST", self.base, headers=headers, data=data, **kw)

    async def create(self, length: int | None, metadata: str | None = None) -> str:
        headers = {"Upload-Defer-Length": "1"} if length is None else {"Upload-Length": str(length)}
        if metadata is not None:
            headers["Upload-Metadata"] = metadata
        reply = (await self.post(headers)).expect(201)
        return self.path_of(reply)

    def path_of(self, reply: Reply) -> str:
        location = reply.headers["Location"]
        assert location.startswith(self.origin + self.base), location
        return URL(location).path

    async def patch(self, path: str, offset: int, data, headers=None) -> Reply:
        h = {"Upload-Offset": str(offset), "Content-Type": OCTETS, **(headers or {})}
        return await self.request("PATCH", path, headers=h, data=data)

    async def head(self, path: str) -> Reply:
        return await self.request("HEAD", path)

    async def offset(self, path: str) -> int:
        return int((await self.head(path)).expect(200).headers["Upload-Offset"])

    async def get(self, path: str, headers=None) -> Reply:
        return await self.request("GET", path, tus=False, headers=headers)

    async def delete(self, path: str) -> Reply:
        return await self.request("DELETE", path)

    async def upload(self, data: bytes, metadata: str | None = None) -> str:
        path = await self.create(len(data), metadata)
        reply = (await self.patch(path, 0, data)).expect(204)
        assert reply.headers["Upload-Offset"] == str(len(data))
        return path

    # -- the store, read directly ---------------------------------------------------

    async def store_holds(self, path: str, data: bytes) -> None:
        """The store's own storage (disk file or S3 objects) holds exactly `data`."""
        await assert_store_holds(self.store, self.factory, path.rsplit("/", 1)[1], data)

    async def upload_ids(self) -> set[str]:
        assert isinstance(self.store, ExpiringStore)
        return {upload_id async for upload_id in self.store.list_uploads()}

    async def assert_stored(self, path: str, data: bytes) -> None:
        """`data` is what the store holds, the HEAD offset and, once finished, what GET returns."""
        await self.store_holds(path, data)
        head = (await self.head(path)).expect(200)
        assert head.headers["Upload-Offset"] == str(len(data))
        if head.headers.get("Upload-Length") == str(len(data)):
            got = (await self.get(path)).expect(200)
            assert sha256(got.body) == sha256(data)


class NoCancelTestServer(TestServer):
    """A test server whose handlers run on when their client disconnects, as in `web.run_app`."""

    async def _make_runner(self, **kwargs):
        kwargs["handler_cancellation"] = False
        return await super()._make_runner(**kwargs)


@pytest.fixture
def serve(aiohttp_client, store_factory):
    """Start a server over a new store instance (same storage each time)."""

    async def start(config: Config | None = None, *, prefix: str | None = None, cancel: bool = True) -> Tus:
        """`cancel`: whether a dropped connection cancels its handler (aiohttp's test
        server does; `web.run_app`, which the CLI uses, does not; uvicorn never does)."""
        store = store_factory()
        app = create_app(config or Config(), store=store)
        if prefix is not None:
            root = web.Application()
            root.add_subapp(prefix, app)
            app = root
        server = TestServer(app) if cancel else NoCancelTestServer(app)
        client = await aiohttp_client(server)
        return Tus(client, store, store_factory, prefix or "/")

    return start


@pytest.fixture
async def tus(serve) -> Tus:
    return await serve()


# -- OPTIONS -------------------------------------------------------------------------------


async def test_options_advertises_version_and_extensions_without_tus_resumable(serve):
    tus = await serve(Config(max_size=None))
    for path in ["/", f"/{ID_LIKE}"]:
        reply = (await tus.request("OPTIONS", path, tus=False)).expect(200)
        assert reply.headers["Tus-Version"] == "1.0.0"
        extensions = reply.headers["Tus-Extension"].split(",")
        assert {"creation", "creation-with-upload", "creation-defer-length", "termination"} <= set(extensions)
        assert len(extensions) == len(set(extensions))
        assert "Tus-Max-Size" not in reply.headers


async def test_options_advertises_max_size_when_set(serve):
    tus = await serve(Config(max_size=1000))
    reply = (await tus.request("OPTIONS", "/", tus=False)).expect(200)
    assert reply.headers["Tus-Max-Size"] == "1000"


# -- Tus-Resumable -----------------------------------------------------------------------------


async def test_requests_without_tus_1_0_0_are_412_and_change_nothing(tus):
    path = await tus.upload(b"abc")
    unfinished = await tus.create(10)
    before = await tus.upload_ids()
    for version in [None, "0.2.2", "1.0", ""]:
        headers = {} if version is None else {"Tus-Resumable": version}
        requests = [
            ("POST", "/", {"Upload-Length": "5", **headers}, None),
            ("POST", "/", {"Upload-Length": "5", "Content-Type": OCTETS, **headers}, b"12345"),
            ("HEAD", path, headers, None),
            ("PATCH", unfinished, {"Upload-Offset": "0", "Content-Type": OCTETS, **headers}, b"xyz"),
            ("DELETE", path, headers, None),
            ("POST", path, {"X-HTTP-Method-Override": "DELETE", **headers}, None),
        ]
        for method, target, h, data in requests:
            reply = await tus.request(method, target, tus=False, headers=h, data=data)
            assert reply.status == 412, (version, method, target)
            assert reply.expect(412).headers["Tus-Version"] == "1.0.0"
    assert await tus.upload_ids() == before
    await tus.assert_stored(path, b"abc")
    await tus.assert_stored(unfinished, b"")


async def test_every_response_carries_tus_resumable(tus):
    path = await tus.upload(b"hello")
    replies = [
        await tus.request("OPTIONS", "/", tus=False),
        await tus.get(path),
        await tus.get(path, {"Range": "bytes=1-2"}),
        await tus.get(f"/{ID_LIKE}"),
        await tus.head(path),
        await tus.head(f"/{ID_LIKE}"),
        await tus.request("PUT", path),
        await tus.request("GET", "/a/b/c", tus=False),
        await tus.request("PATCH", path, headers={"Upload-Offset": "x", "Content-Type": OCTETS}),
        await tus.request("POST", "/", tus=False),
    ]
    for reply in replies:
        assert reply.headers.get("Tus-Resumable") == "1.0.0", (reply.method, reply.status)


# -- POST (creation) ---------------------------------------------------------------------------


async def test_post_with_length_creates_an_empty_upload_at_an_absolute_location(tus):
    reply = (await tus.post({"Upload-Length": "10"})).expect(201)
    location = reply.headers["Location"]
    upload_id = location.rsplit("/", 1)[1]
    assert location == f"{tus.origin}/{upload_id}"
    assert len(upload_id) == 32 and int(upload_id, 16) >= 0
    head = (await tus.head(URL(location).path)).expect(200)
    assert head.headers["Upload-Offset"] == "0"
    assert head.headers["Upload-Length"] == "10"
    assert "Upload-Defer-Length" not in head.headers
    assert await tus.upload_ids() == {upload_id}
    await tus.store_holds(URL(location).path, b"")


async def test_post_ids_are_distinct(tus):
    paths = {await tus.create(1) for _ in range(5)}
    assert len(paths) == 5


async def test_post_with_deferred_length(tus):
    path = await tus.create(None)
    head = (await tus.head(path)).expect(200)
    assert head.headers["Upload-Defer-Length"] == "1"
    assert head.headers["Upload-Offset"] == "0"
    assert "Upload-Length" not in head.headers


BAD_LENGTH_HEADERS = [
    {"Upload-Length": "10", "Upload-Defer-Length": "1"},
    {},
    {"Upload-Length": "-1"},
    {"Upload-Length": "abc"},
    {"Upload-Length": "+5"},
    {"Upload-Length": "1.5"},
    {"Upload-Length": ""},
    {"Upload-Length": "99999999999999999999999"},
    {"Upload-Defer-Length": "0"},
    {"Upload-Defer-Length": "yes"},
]


async def test_post_with_bad_length_headers_is_400_and_creates_nothing(tus):
    for headers in BAD_LENGTH_HEADERS:
        reply = await tus.post(headers)
        assert reply.status == 400, headers
        reply.expect(400)
    assert await tus.upload_ids() == set()


async def test_post_over_max_size_is_413_and_creates_nothing(serve):
    tus = await serve(Config(max_size=100))
    (await tus.post({"Upload-Length": "101"})).expect(413)
    assert await tus.upload_ids() == set()
    path = await tus.create(100)
    await tus.assert_stored(path, b"")


async def test_post_with_zero_length_is_finished_at_once(tus):
    path = await tus.create(0)
    head = (await tus.head(path)).expect(200)
    assert (head.headers["Upload-Offset"], head.headers["Upload-Length"]) == ("0", "0")
    reply = (await tus.get(path)).expect(200)
    assert reply.body == b"" and reply.headers["Content-Length"] == "0"


async def test_post_metadata_is_returned_by_head_as_received(tus):
    raw = bytes(range(256))
    metadata = f"filename {b64('naïve.txt')},is_confidential,blob {b64(raw)},filetype {b64('text/plain')}"
    path = await tus.create(3, metadata)
    head = (await tus.head(path)).expect(200)
    assert head.headers["Upload-Metadata"] == metadata


async def test_post_with_empty_metadata_header_is_valid(tus):
    for metadata in ["", " "]:
        path = await tus.create(3, metadata)
        head = (await tus.head(path)).expect(200)
        assert "Upload-Metadata" not in head.headers


async def test_post_with_malformed_metadata_is_400_and_creates_nothing(tus):
    for metadata in [
        "a YQ,b",  # unpadded
        "a !!!!",
        f"a {b64('x')},a {b64('y')}",
        f"a {b64('x')} b",
        f"a {b64('x')},",
        "k\u00e9y YQ==",
    ]:
        reply = await tus.post({"Upload-Length": "3", "Upload-Metadata": metadata})
        assert reply.status == 400, metadata
        reply.expect(400)
    assert await tus.upload_ids() == set()


# -- creation-with-upload ---------------------------------------------------------------------------


async def test_post_with_part_of_the_body(tus):
    data = payload(1000)
    reply = (await tus.post({"Upload-Length": "1000", "Content-Type": OCTETS}, data[:400])).expect(201)
    assert reply.headers["Upload-Offset"] == "400"
    path = tus.path_of(reply)
    await tus.assert_stored(path, data[:400])
    (await tus.get(path)).expect(409)
    (await tus.patch(path, 400, data[400:])).expect(204)
    await tus.assert_stored(path, data)


async def test_post_with_the_whole_body_is_finished(tus):
    data = payload(500, seed=1)
    reply = (await tus.post({"Upload-Length": "500", "Content-Type": OCTETS}, data)).expect(201)
    assert reply.headers["Upload-Offset"] == "500"
    await tus.assert_stored(tus.path_of(reply), data)


async def test_post_with_body_and_deferred_length(tus):
    reply = (await tus.post({"Upload-Defer-Length": "1", "Content-Type": OCTETS}, b"abc")).expect(201)
    assert reply.headers["Upload-Offset"] == "3"
    path = tus.path_of(reply)
    await tus.store_holds(path, b"abc")
    (await tus.patch(path, 3, b"de", {"Upload-Length": "5"})).expect(204)
    await tus.assert_stored(path, b"abcde")


async def test_post_with_body_longer_than_upload_length_is_413_and_creates_nothing(tus):
    (await tus.post({"Upload-Length": "10", "Content-Type": OCTETS}, payload(11))).expect(413)
    assert await tus.upload_ids() == set()


async def test_chunked_post_body_past_upload_length_is_413_with_the_location_of_what_was_kept(tus):
    # A chunked body's size is unknown until it overflows; by then the upload exists.
    reply = (await tus.post({"Upload-Length": "5", "Content-Type": OCTETS}, chunks([b"abc", b"defg"]))).expect(413)
    path = tus.path_of(reply)
    assert await tus.upload_ids() == {path.rsplit("/", 1)[1]}
    await tus.assert_stored(path, b"abcde")


async def test_post_with_body_and_deferred_length_over_max_size_is_413_and_creates_nothing(serve):
    tus = await serve(Config(max_size=10))
    (await tus.post({"Upload-Defer-Length": "1", "Content-Type": OCTETS}, payload(11))).expect(413)
    assert await tus.upload_ids() == set()


async def test_post_with_body_and_malformed_checksum_is_400_and_creates_nothing(tus):
    for checksum in ["sha1", "sha1 ***", "nope AAAA"]:
        headers = {"Upload-Length": "10", "Content-Type": OCTETS, "Upload-Checksum": checksum}
        reply = await tus.post(headers, b"abc")
        assert reply.status == 400, checksum
        reply.expect(400)
    # A digest of the wrong size is well-formed but cannot match: 460, and still nothing is created.
    headers = {"Upload-Length": "10", "Content-Type": OCTETS, "Upload-Checksum": f"sha1 {b64(b'x' * 19)}"}
    reply = (await tus.post(headers, b"abc")).expect(460)
    assert reply.body == b"checksum does not match the request body: a sha1 digest has 20 bytes, not 19\n"
    assert await tus.upload_ids() == set()


@pytest.mark.aiohttp_only("aiohttp's parser bounds a header line; uvicorn (httptools) passes it on: the app says 413")
async def test_header_larger_than_the_http_parser_allows_is_400_and_creates_nothing(tus):
    # aiohttp's parser refuses it before the app runs, so this answer has no Tus-Resumable.
    head = raw_head("POST", "/", "Upload-Length: 5", "Upload-Metadata: a " + "A" * 10000)
    status, headers, text = await raw_request(tus, head)
    assert status == 400
    assert headers["content-type"].startswith("text/plain")
    assert await tus.upload_ids() == set()


async def test_post_with_body_of_another_content_type_is_415_and_creates_nothing(tus):
    (await tus.post({"Upload-Length": "10", "Content-Type": "text/plain"}, b"abc")).expect(415)
    assert await tus.upload_ids() == set()


# -- POST: who gets an id ------------------------------------------------------------------------


async def test_store_create_is_atomic_per_id(tus):
    first = UploadInfo(id="chosen-id", length=5, metadata={"who": "first"})
    await tus.store.create(first)
    second = UploadInfo(id="chosen-id", length=9, metadata={"who": "second"})
    with pytest.raises(storage.IdTaken):
        await tus.store.create(second)
    kept = await tus.store.get_info("chosen-id")
    assert (kept.length, kept.metadata, kept.created) == (5, {"who": "first"}, first.created)
    await tus.store_holds("/chosen-id", b"")


async def test_two_creations_of_one_hook_chosen_id_give_one_201_and_one_409(aiohttp_client, store_factory):
    hooks = Hooks()
    waiting: list[asyncio.Event] = []

    @hooks.on("pre-create")
    async def same_id(event):
        # Both requests are past the hook before either creates: the race is real.
        arrived = asyncio.Event()
        waiting.append(arrived)
        if len(waiting) == 2:
            for other in waiting:
                other.set()
        await asyncio.wait_for(arrived.wait(), 10)
        return HookResult(upload_id="chosen-id")

    store = store_factory()
    client = await aiohttp_client(create_app(Config(), store=store, hooks=hooks))

    async def create(who: str, data: bytes):
        headers = {**TUS, "Upload-Length": "6", "Upload-Metadata": f"who {b64(who)}", "Content-Type": OCTETS}
        async with client.post("/", headers=headers, data=data) as resp:
            return who, resp.status, dict(resp.headers), await resp.read()

    replies = await asyncio.gather(create("a", b"aaaaaa"), create("b", b"bbbbbb"))
    assert sorted(status for _, status, _, _ in replies) == [201, 409], replies
    winner = next(r for r in replies if r[1] == 201)
    loser = next(r for r in replies if r[1] == 409)
    assert URL(winner[2]["Location"]).path == "/chosen-id"
    assert loser[3] == b"an upload with the id chosen by a hook already exists\n"
    assert "Location" not in loser[2]
    # The .info (read by a new store instance) and the bytes are the winner's alone.
    reader = store_factory()
    await reader.start()
    try:
        info = await reader.get_info("chosen-id")
    finally:
        await reader.close()
    assert info.metadata == {"who": winner[0]} and info.finished
    await assert_store_holds(store, store_factory, "chosen-id", winner[0].encode() * 6)


# -- POST: concatenation -------------------------------------------------------------------------


async def test_final_upload_with_upload_length_is_400_and_creates_nothing(tus):
    partial = (await tus.post({"Upload-Length": "3", "Upload-Concat": "partial"})).expect(201)
    partial_path = tus.path_of(partial)
    (await tus.patch(partial_path, 0, b"abc")).expect(204)
    before = await tus.upload_ids()
    for length in ["3", "0", "x"]:
        headers = {"Upload-Concat": f"final;{partial_path}", "Upload-Length": length}
        reply = (await tus.post(headers)).expect(400)
        assert reply.body.startswith(b"a final upload must not carry Upload-Length"), reply.body
    assert await tus.upload_ids() == before
    (await tus.post({"Upload-Concat": f"final;{partial_path}"})).expect(201)


async def test_head_of_an_unfinished_final_upload_has_no_upload_offset(tus):
    partial = tus.path_of((await tus.post({"Upload-Length": "3", "Upload-Concat": "partial"})).expect(201))
    final = tus.path_of((await tus.post({"Upload-Concat": f"final;{partial}"})).expect(201))
    head = (await tus.head(final)).expect(200)
    assert "Upload-Offset" not in head.headers  # the spec's SHOULD NOT, until it is complete
    assert head.headers["Upload-Concat"] == f"final;{partial}"
    (await tus.patch(partial, 0, b"abc")).expect(204)
    head = (await tus.head(final)).expect(200)
    assert head.headers["Upload-Offset"] == "3" and head.headers["Upload-Length"] == "3"


# -- HEAD ------------------------------------------------------------------------------------------


async def test_head_reports_offset_length_and_no_store(tus):
    path = await tus.create(10, f"filename {b64('a.bin')}")
    (await tus.patch(path, 0, b"1234")).expect(204)
    head = (await tus.head(path)).expect(200)
    assert head.headers["Upload-Offset"] == "4"
    assert head.headers["Upload-Length"] == "10"
    assert head.headers["Upload-Metadata"] == f"filename {b64('a.bin')}"
    assert head.headers["Cache-Control"] == "no-store"
    assert head.body == b""


async def test_head_unknown_upload_is_404(tus):
    (await tus.head(f"/{ID_LIKE}")).expect(404)


async def test_head_on_a_finished_upload_is_tus_head_not_a_download(tus):
    path = await tus.upload(b"hello", f"filename {b64('h.txt')}")
    head = (await tus.head(path)).expect(200)
    assert head.headers["Upload-Offset"] == "5"
    assert head.headers["Upload-Length"] == "5"
    assert head.headers["Cache-Control"] == "no-store"
    assert "Content-Disposition" not in head.headers
    assert head.body == b""


# -- invalid ids reach nothing ---------------------------------------------------------------------


async def raw_request(tus: Tus, head: bytes, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (no client-side path normalisation) and read the answer."""
    reader, writer = await asyncio.open_connection(tus.client.host, tus.client.port)
    try:
        writer.write(head + b"\r\n" + body)
        await writer.drain()
        response = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    header_block, _, rest = response.partition(b"\r\n\r\n")
    lines = header_block.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, rest


def raw_head(method: str, target: str, *extra: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Tus-Resumable: 1.0.0", "Connection: close", *extra]
    return "".join(line + "\r\n" for line in lines).encode("latin-1")


BAD_ID_PATHS = [
    "/..",
    "/%2e%2e",
    "/%2F..",
    "/%2F%2E%2E%2Fetc%2Fpasswd",
    "/..%2Fetc",
    "/a.info",
    "/.info",
    "/%00",
    "/a%00b",
    "/" + "a" * 129,
    "/%C3%A4",
]


async def test_invalid_upload_ids_are_404(tus):
    path = await tus.upload(b"secret")
    upload_id = path[1:]
    targets = [*BAD_ID_PATHS, f"/{upload_id}.info", f"/{upload_id}%2F..", f"/{upload_id}%00", f"/../{upload_id}"]
    for method in ["HEAD", "GET", "PATCH", "DELETE"]:
        extra = ["Upload-Offset: 0", f"Content-Type: {OCTETS}", "Content-Length: 0"] if method == "PATCH" else []
        for target in targets:
            status, headers, body = await raw_request(tus, raw_head(method, target, *extra))
            assert status == 404, (method, target, status, body)
            assert headers["tus-resumable"] == "1.0.0"
            assert b"secret" not in body and b'"storage"' not in body
    await tus.assert_stored(path, b"secret")


# -- PATCH ------------------------------------------------------------------------------------------


async def test_patch_appends_and_answers_the_new_offset(tus):
    data = payload(3000, seed=2)
    path = await tus.create(3000)
    for start in range(0, 3000, 1000):
        reply = (await tus.patch(path, start, data[start : start + 1000])).expect(204)
        assert reply.headers["Upload-Offset"] == str(start + 1000)
        assert reply.body == b""
    await tus.assert_stored(path, data)


async def test_patch_with_empty_body_changes_nothing(tus):
    path = await tus.create(5)
    (await tus.patch(path, 0, b"ab")).expect(204)
    reply = (await tus.patch(path, 2, b"")).expect(204)
    assert reply.headers["Upload-Offset"] == "2"
    await tus.assert_stored(path, b"ab")


async def test_patch_with_wrong_content_type_is_415_and_changes_nothing(tus):
    path = await tus.create(10)
    (await tus.patch(path, 0, b"abc")).expect(204)
    for content_type in [None, "application/octet-stream", "text/plain", "multipart/form-data"]:
        headers = {"Upload-Offset": "3"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        reply = await tus.request("PATCH", path, headers=headers, data=b"def")
        assert reply.status == 415, content_type
        reply.expect(415)
    await tus.assert_stored(path, b"abc")


async def test_patch_with_mismatched_offset_is_409_and_changes_nothing(tus):
    path = await tus.create(10)
    (await tus.patch(path, 0, b"abc")).expect(204)
    for offset in [0, 2, 4, 10, 1000]:
        reply = await tus.patch(path, offset, b"XYZ")
        assert reply.status == 409, offset
        reply.expect(409)
        assert await tus.offset(path) == 3
    await tus.assert_stored(path, b"abc")


async def test_patch_with_stale_offset_is_409_with_the_current_offset(tus):
    path = await tus.create(10)
    (await tus.patch(path, 0, b"abc")).expect(204)
    reply = (await tus.patch(path, 0, b"abc")).expect(409)  # a client retrying a PATCH that went through
    assert reply.headers["Upload-Offset"] == "3"
    assert reply.headers["Cache-Control"] == "no-store"
    (await tus.patch(path, int(reply.headers["Upload-Offset"]), b"defghij")).expect(204)
    await tus.assert_stored(path, b"abcdefghij")


async def test_patch_with_malformed_offset_is_400_and_changes_nothing(tus):
    path = await tus.create(10)
    (await tus.patch(path, 0, b"abc")).expect(204)
    for offset in ["-1", "abc", "", "+3", "3.0", "1e1", None]:
        headers = {"Content-Type": OCTETS}
        if offset is not None:
            headers["Upload-Offset"] = offset
        reply = await tus.request("PATCH", path, headers=headers, data=b"def")
        assert reply.status == 400, offset
        reply.expect(400)
    await tus.assert_stored(path, b"abc")


async def test_patch_past_upload_length_is_413_and_stores_nothing(tus):
    path = await tus.create(10)
    (await tus.patch(path, 0, b"abcdef")).expect(204)
    (await tus.patch(path, 6, b"ghijk")).expect(413)
    await tus.assert_stored(path, b"abcdef")


async def test_chunked_patch_past_upload_length_stores_nothing_past_the_length(tus):
    path = await tus.create(10)
    (await tus.patch(path, 0, b"abcdef")).expect(204)
    (await tus.patch(path, 6, chunks([b"gh", b"ijk", b"lmn"]))).expect(413)
    # The bytes up to the length are kept (they fit), the rest is refused.
    await tus.assert_stored(path, b"abcdefghij")


async def test_patch_to_unknown_upload_is_404(tus):
    (await tus.patch(f"/{ID_LIKE}", 0, b"abc")).expect(404)
    assert await tus.upload_ids() == set()


async def test_patch_on_the_collection_is_405(tus):
    (await tus.patch("/", 0, b"abc")).expect(405)


async def test_patch_with_more_bytes_to_a_finished_upload_is_rejected(tus):
    path = await tus.upload(b"done")
    (await tus.patch(path, 4, b"more")).expect(413)
    await tus.assert_stored(path, b"done")


async def chunks(parts: list[bytes]):
    for part in parts:
        yield part


async def test_patch_with_chunked_transfer_encoding(tus):
    data = payload(70_000, seed=3)
    path = await tus.create(70_000)
    parts = [data[i : i + 7000] for i in range(0, 70_000, 7000)]
    reply = (await tus.patch(path, 0, chunks(parts))).expect(204)
    assert reply.headers["Upload-Offset"] == "70000"
    await tus.assert_stored(path, data)


async def test_patch_sets_a_deferred_length(tus):
    data = payload(900, seed=4)
    path = await tus.create(None)
    (await tus.patch(path, 0, data[:300])).expect(204)
    head = (await tus.head(path)).expect(200)
    assert head.headers["Upload-Defer-Length"] == "1" and head.headers["Upload-Offset"] == "300"
    (await tus.get(path)).expect(409)
    reply = (await tus.patch(path, 300, data[300:600], {"Upload-Length": "900"})).expect(204)
    assert reply.headers["Upload-Offset"] == "600"
    head = (await tus.head(path)).expect(200)
    assert head.headers["Upload-Length"] == "900" and "Upload-Defer-Length" not in head.headers
    (await tus.patch(path, 600, data[600:])).expect(204)
    await tus.assert_stored(path, data)


async def test_patch_cannot_change_a_known_length(tus):
    path = await tus.create(10)
    (await tus.patch(path, 0, b"abc", {"Upload-Length": "11"})).expect(400)
    head = (await tus.head(path)).expect(200)
    assert head.headers["Upload-Length"] == "10"
    await tus.assert_stored(path, b"")


async def test_patch_cannot_set_a_length_below_the_offset(tus):
    path = await tus.create(None)
    (await tus.patch(path, 0, b"abcd")).expect(204)
    (await tus.patch(path, 4, b"", {"Upload-Length": "3"})).expect(400)
    head = (await tus.head(path)).expect(200)
    assert head.headers["Upload-Defer-Length"] == "1"
    await tus.assert_stored(path, b"abcd")


async def test_patch_setting_the_length_to_the_offset_finishes_the_upload(tus):
    path = await tus.create(None)
    (await tus.patch(path, 0, b"abcd")).expect(204)
    (await tus.patch(path, 4, b"", {"Upload-Length": "4"})).expect(204)
    await tus.assert_stored(path, b"abcd")
    assert (await tus.get(path)).expect(200).body == b"abcd"


async def test_deferred_upload_past_max_size_is_413(serve):
    tus = await serve(Config(max_size=10))
    path = await tus.create(None)
    (await tus.patch(path, 0, b"12345678")).expect(204)
    (await tus.patch(path, 8, b"abc")).expect(413)
    (await tus.patch(path, 8, b"", {"Upload-Length": "11"})).expect(413)
    await tus.assert_stored(path, b"12345678")


# -- DELETE (termination) --------------------------------------------------------------------------


async def test_delete_removes_the_upload(tus):
    path = await tus.create(10)
    (await tus.patch(path, 0, b"abc")).expect(204)
    info = await tus.store.get_info(path[1:])
    reply = (await tus.delete(path)).expect(204)
    assert reply.body == b""
    (await tus.head(path)).expect(404)
    (await tus.get(path)).expect(404)
    (await tus.patch(path, 3, b"d")).expect(404)
    (await tus.delete(path)).expect(404)
    assert await tus.upload_ids() == set()
    if info.storage.get("type") == "file":
        import os

        assert os.listdir(os.path.dirname(info.storage["path"])) == []


async def test_delete_a_finished_upload(tus):
    path = await tus.upload(b"abc")
    (await tus.delete(path)).expect(204)
    (await tus.get(path)).expect(404)
    assert await tus.upload_ids() == set()


async def test_delete_unknown_upload_is_404(tus):
    (await tus.delete(f"/{ID_LIKE}")).expect(404)


# -- GET (download) ----------------------------------------------------------------------------------


async def test_get_returns_the_bytes_with_length_and_etag(tus):
    data = payload(10_000, seed=5)
    path = await tus.upload(data)
    reply = (await tus.get(path)).expect(200)
    assert sha256(reply.body) == sha256(data)
    assert reply.headers["Content-Length"] == "10000"
    assert reply.headers["ETag"]
    assert reply.headers["Accept-Ranges"] == "bytes"
    again = (await tus.get(path)).expect(200)
    assert again.headers["ETag"] == reply.headers["ETag"]
    await tus.store_holds(path, data)


async def test_get_range_is_206(tus):
    data = b"0123456789"
    path = await tus.upload(data)
    cases = [("bytes=2-5", 2, 6), ("bytes=0-0", 0, 1), ("bytes=7-", 7, 10), ("bytes=-3", 7, 10), ("bytes=8-100", 8, 10)]
    for range_, start, stop in cases:
        reply = await tus.get(path, {"Range": range_})
        assert reply.status == 206, range_
        reply.expect(206)
        assert reply.body == data[start:stop], range_
        assert reply.headers["Content-Range"] == f"bytes {start}-{stop - 1}/10"
        assert reply.headers["Content-Length"] == str(stop - start)


async def test_get_unsatisfiable_range_is_416(tus):
    path = await tus.upload(b"0123456789")
    for range_ in ["bytes=10-", "bytes=100-200", "bytes=10-20"]:
        reply = await tus.get(path, {"Range": range_})
        assert reply.status == 416, range_
        assert reply.headers["Content-Range"] == "bytes */10"
        assert reply.headers["Tus-Resumable"] == "1.0.0"
        assert b"0123456789" not in reply.body


async def test_get_unfinished_upload_is_409(tus):
    path = await tus.create(10)
    (await tus.patch(path, 0, b"abc")).expect(204)
    (await tus.get(path)).expect(409)
    deferred = await tus.create(None)
    (await tus.get(deferred)).expect(409)


async def test_get_unknown_upload_is_404(tus):
    (await tus.get(f"/{ID_LIKE}")).expect(404)


async def test_get_of_an_upload_whose_bytes_are_gone_is_a_plain_404(tus):
    path = await tus.upload(b"0123456789")
    info = await tus.store.get_info(path.rsplit("/", 1)[1])
    if info.storage["type"] == "file":
        os.remove(info.storage["path"])
    else:
        async with aioboto_session().create_client("s3", endpoint_url=tus.factory.endpoint) as s3:
            await s3.delete_object(Bucket=info.storage["bucket"], Key=info.storage["key"])
    for headers in [None, {"Range": "bytes=2-5"}]:
        reply = (await tus.get(path, headers)).expect(404)  # one response: status line, headers, one-line body
        assert reply.body == b"upload not found\n"


async def test_client_closing_mid_download_is_not_an_error(serve, caplog):
    caplog.set_level(logging.DEBUG)
    tus = await serve(cancel=False)  # like `web.run_app`: the handler meets the closed connection
    data = payload(12 * MiB, seed=3)
    path = await tus.upload(data)
    before = in_flight(tus.client.server)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await asyncio.get_running_loop().sock_connect(sock, (tus.client.host, tus.client.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200 ")
    await reader.readexactly(1000)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
    writer.close()
    await wait_until_server_idle(tus, before)
    # The server carries on, and nothing was logged as an error.
    assert sha256((await tus.get(path)).expect(200).body) == sha256(data)
    problems = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert problems == [], [r.getMessage() for r in problems]
    gone = [r for r in caplog.records if r.getMessage().startswith("client went away after")]
    assert [r.levelno for r in gone] == [logging.INFO]


async def test_get_allow_listed_filetype_is_inline(tus):
    path = await tus.upload(b"\x89PNG....", f"filetype {b64('image/png')},filename {b64('pic.png')}")
    reply = (await tus.get(path)).expect(200)
    assert reply.headers["Content-Type"] == "image/png"
    assert reply.headers["Content-Disposition"] == "inline; filename=\"pic.png\"; filename*=UTF-8''pic.png"


async def test_get_other_filetype_is_an_octet_stream_attachment(tus):
    for filetype in ["text/html", "image/svg+xml", "application/javascript", None]:
        metadata = None if filetype is None else f"filetype {b64(filetype)}"
        path = await tus.upload(b"<script>alert(1)</script>", metadata)
        reply = (await tus.get(path)).expect(200)
        assert reply.headers["Content-Type"] == "application/octet-stream", filetype
        assert reply.headers["Content-Disposition"] == "attachment", filetype
        assert reply.body == b"<script>alert(1)</script>"


async def test_get_non_ascii_filename_uses_filename_star(tus):
    path = await tus.upload(b"%PDF-1.4", f"filename {b64('résumé 📄.pdf')},filetype {b64('application/pdf')}")
    reply = (await tus.get(path)).expect(200)
    assert reply.headers["Content-Type"] == "application/octet-stream"
    assert reply.headers["Content-Disposition"] == (
        "attachment; filename=\"r_sum_ _.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%F0%9F%93%84.pdf"
    )


# -- X-HTTP-Method-Override -------------------------------------------------------------------------


async def test_post_with_method_override_patch(tus):
    path = await tus.create(6)
    headers = {"X-HTTP-Method-Override": "PATCH", "Upload-Offset": "0", "Content-Type": OCTETS}
    reply = (await tus.request("POST", path, headers=headers, data=b"abcdef")).expect(204)
    assert reply.headers["Upload-Offset"] == "6"
    await tus.assert_stored(path, b"abcdef")


async def test_post_with_method_override_delete(tus):
    path = await tus.create(6)
    (await tus.request("POST", path, headers={"X-HTTP-Method-Override": "DELETE"})).expect(204)
    (await tus.head(path)).expect(404)
    assert await tus.upload_ids() == set()


async def test_post_with_method_override_head(tus):
    path = await tus.create(6)
    reply = (await tus.request("POST", path, headers={"X-HTTP-Method-Override": "HEAD"})).expect(200)
    assert reply.headers["Upload-Offset"] == "0" and reply.headers["Upload-Length"] == "6"


async def test_post_with_unknown_method_override_is_405_and_changes_nothing(tus):
    path = await tus.create(6)
    for override in ["TRACE", "PUT", "BOGUS", "patch delete"]:
        headers = {"X-HTTP-Method-Override": override, "Upload-Offset": "0", "Content-Type": OCTETS}
        reply = await tus.request("POST", path, headers=headers, data=b"abc")
        assert reply.status == 405, override
        reply.expect(405)
    await tus.assert_stored(path, b"")


async def test_method_override_patch_on_the_collection_is_405(tus):
    headers = {"X-HTTP-Method-Override": "PATCH", "Upload-Offset": "0", "Content-Type": OCTETS}
    (await tus.request("POST", "/", headers=headers, data=b"abc")).expect(405)
    assert await tus.upload_ids() == set()


# -- malformed input is a 4xx, never a 500, and changes nothing -------------------------------------

CREATE, CREATE_BODY, PATCH = "create", "create-with-body", "patch"

# (header set, the requests it must spoil). A header a verb does not read is not fuzzed there.
GARBAGE = [
    ({"Upload-Length": "1" * 100}, {CREATE, CREATE_BODY, PATCH}),
    ({"Upload-Length": "-0"}, {CREATE, CREATE_BODY, PATCH}),
    ({"Upload-Length": "١٢"}, {CREATE, CREATE_BODY, PATCH}),
    ({"Upload-Offset": "0x10"}, {PATCH}),
    ({"Upload-Offset": "-5"}, {PATCH}),
    ({"Upload-Offset": "9" * 30}, {PATCH}),
    ({"Upload-Offset": "one"}, {PATCH}),
    ({"Upload-Metadata": "=,=,="}, {CREATE, CREATE_BODY}),
    ({"Upload-Metadata": "a " + "A" * 7999}, {CREATE, CREATE_BODY}),
    ({"Upload-Metadata": ",,,"}, {CREATE, CREATE_BODY}),
    ({"Upload-Checksum": "sha1"}, {CREATE_BODY, PATCH}),
    ({"Upload-Checksum": "sha1 ***"}, {CREATE_BODY, PATCH}),
    ({"Upload-Checksum": "nope AAAA"}, {CREATE_BODY, PATCH}),
    ({"Upload-Concat": "final;"}, {CREATE, CREATE_BODY}),
    ({"Upload-Concat": "final;http://[::1"}, {CREATE, CREATE_BODY}),
    ({"Upload-Concat": "final;/elsewhere/x"}, {CREATE, CREATE_BODY}),
    ({"Upload-Concat": "sideways"}, {CREATE, CREATE_BODY}),
    ({"Upload-Defer-Length": "2"}, {CREATE, CREATE_BODY}),
    ({"Upload-Defer-Length": "1"}, {CREATE, CREATE_BODY}),  # with Upload-Length too
    ({"Content-Type": "text/html"}, {CREATE_BODY, PATCH}),
]


async def test_garbage_headers_are_4xx_and_change_nothing(tus):
    path = await tus.create(10, f"a {b64('1')}")
    (await tus.patch(path, 0, b"abc")).expect(204)
    before = await tus.upload_ids()
    for garbage, spoils in GARBAGE:
        patch_headers = {"Upload-Offset": "3", "Content-Type": OCTETS, **garbage}
        attempts = {
            CREATE: [("POST", "/", {"Upload-Length": "5", **garbage}, None)],
            CREATE_BODY: [("POST", "/", {"Upload-Length": "5", "Content-Type": OCTETS, **garbage}, b"12345")],
            PATCH: [
                ("PATCH", path, patch_headers, b"def"),
                ("POST", path, {"X-HTTP-Method-Override": "PATCH", **patch_headers}, b"def"),
            ],
        }
        for kind in spoils:
            for method, target, headers, data in attempts[kind]:
                reply = await tus.request(method, target, headers=headers, data=data)
                assert 400 <= reply.status < 500, (garbage, method, target, reply.status, reply.body)
                reply.expect(reply.status)
        for method in ["HEAD", "DELETE", "GET"]:
            reply = await tus.request(method, f"/{ID_LIKE}", headers=garbage)
            assert reply.status in (404, 412), (garbage, method, reply.status)
            reply.expect(reply.status)
        assert await tus.upload_ids() == before, garbage
        assert await tus.offset(path) == 3, garbage
    await tus.assert_stored(path, b"abc")
    head = (await tus.head(path)).expect(200)
    assert head.headers["Upload-Metadata"] == f"a {b64('1')}"


# Field lines of one name form a list (RFC 9110 5.3): two lines, or a comma in one line,
# give these single-valued headers two values. Different values are ambiguous (400); the
# same value repeated counts once.
AMBIGUOUS = [
    (CREATE, ["Upload-Length: 10", "Upload-Length: 20"]),
    (CREATE, ["Upload-Length: 10, 20"]),
    (CREATE, ["Upload-Defer-Length: 1", "Upload-Defer-Length: 1,2"]),
    (CREATE, ["Upload-Length: 5", "Upload-Concat: partial", "Upload-Concat: final;/x"]),
    (CREATE, ["Upload-Length: 5", "Tus-Resumable: 0.2.2"]),
    (CREATE_BODY, ["Upload-Length: 3", f"Upload-Checksum: sha1 {b64(hashlib.sha1(b'def').digest())}",
                   f"Upload-Checksum: md5 {b64(hashlib.md5(b'def').digest())}"]),
    (PATCH, ["Upload-Offset: 3", "Upload-Offset: 0"]),
    (PATCH, ["Upload-Offset: 3, 6"]),
    (PATCH, ["Upload-Offset: 3", "Upload-Length: 6", "Upload-Length: 10"]),
    (PATCH, ["Upload-Offset: 3", f"Upload-Checksum: sha1 {b64(hashlib.sha1(b'def').digest())}, sha1 AAAA"]),
    (PATCH, ["Upload-Offset: 3", "Tus-Resumable: 1.0.0, 0.2.2"]),
    ("HEAD", ["Tus-Resumable: 0.2.2"]),
    ("DELETE", ["Tus-Resumable: 0.2.2"]),
]


@pytest.mark.parametrize(("kind", "lines"), AMBIGUOUS)
async def test_a_tus_header_with_two_different_values_is_400_and_changes_nothing(tus, kind, lines):
    path = await tus.create(None)  # deferred, so that a PATCH could set the length
    (await tus.patch(path, 0, b"abc")).expect(204)
    before = await tus.upload_ids()
    body = b"def" if kind in (CREATE_BODY, PATCH) else b""
    framing = [f"Content-Type: {OCTETS}", f"Content-Length: {len(body)}"] if body else []
    method, target = {CREATE: ("POST", "/"), CREATE_BODY: ("POST", "/"), PATCH: ("PATCH", path)}.get(kind, (kind, path))
    status, headers, text = await raw_request(tus, raw_head(method, target, *lines, *framing), body)
    name = lines[-1].split(":")[0]
    assert status == 400, (status, text)
    assert headers["tus-resumable"] == "1.0.0"
    if method != "HEAD":
        assert text == f"a tus header was sent with more than one value: {name} has 2 different values\n".encode()
    assert await tus.upload_ids() == before
    head = (await tus.head(path)).expect(200)
    assert head.headers["Upload-Offset"] == "3" and head.headers["Upload-Defer-Length"] == "1"
    await tus.store_holds(path, b"abc")


async def test_a_tus_header_repeated_with_the_same_value_counts_once(tus):
    status, headers, text = await raw_request(tus, raw_head("POST", "/", "Upload-Length: 6", "Upload-Length: 6, 6"))
    assert status == 201, text
    path = URL(headers["location"]).path
    lines = ["Upload-Offset: 0", "Upload-Offset: 0", "Tus-Resumable: 1.0.0", f"Content-Type: {OCTETS}"]
    status, headers, text = await raw_request(tus, raw_head("PATCH", path, *lines, "Content-Length: 6"), b"abcdef")
    assert (status, headers["upload-offset"]) == (204, "6"), text
    await tus.assert_stored(path, b"abcdef")


# (raw header line, the requests it must spoil)
RAW_GARBAGE = [
    ("Upload-Length: \xff\xfe", {CREATE, PATCH}),
    ("Upload-Length: \xa05", {CREATE, PATCH}),
    ("Upload-Offset: \xa00", {PATCH}),
    ("Upload-Offset: \xff", {PATCH}),
    ("Upload-Metadata: k\xe9y YQ==", {CREATE}),
    ("Upload-Metadata: a \xff", {CREATE}),
    ("Upload-Checksum: sha1 \x80\x80", {CREATE, PATCH}),
    ("Upload-Concat: final;/\xff", {CREATE}),
    ("Content-Type: application/offset+octet-stream\xff", {CREATE, PATCH}),
    ("X-HTTP-Method-Override: P\xc4TCH", {PATCH}),
]


async def test_non_ascii_header_bytes_are_4xx_and_change_nothing(tus):
    path = await tus.create(10)
    before = await tus.upload_ids()
    create = {"Upload-Length": "3", "Content-Type": OCTETS, "Content-Length": "3"}
    patch = {"Upload-Offset": "0", "Content-Type": OCTETS, "Content-Length": "3"}
    attempts = {
        CREATE: [("POST", "/", create)],
        PATCH: [("PATCH", path, patch), ("POST", path, {"X-HTTP-Method-Override": "PATCH", **patch})],
    }
    for line, spoils in RAW_GARBAGE:
        name = line.split(":", 1)[0]
        for kind in spoils:
            for method, target, headers in attempts[kind]:
                if name == "X-HTTP-Method-Override" and method == "PATCH":
                    continue
                lines = [f"{k}: {v}" for k, v in headers.items() if k != name] + [line]
                status, reply_headers, text = await raw_request(tus, raw_head(method, target, *lines), b"abc")
                assert 400 <= status < 500, (method, line, status, text)
                assert reply_headers["content-type"].startswith("text/plain")
                assert text.count(b"\n") == 1 and text.endswith(b"\n")
                assert reply_headers["tus-resumable"] == "1.0.0"
        assert await tus.upload_ids() == before, line
        assert await tus.offset(path) == 0, line
    await tus.assert_stored(path, b"")


# -- a dropped connection keeps every byte received ---------------------------------------------------


async def wait_until_server_idle(tus: Tus, before: set) -> None:
    """Wait (bounded) until the server has finished handling connections opened after `before`."""
    for _ in range(1000):
        if not in_flight(tus.client.server) - before:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the dropped request is still being handled after 10s")


async def drop_mid_patch(tus: Tus, path: str, offset: int, body: bytes, announced: int) -> None:
    """PATCH announcing `announced` bytes, send `body`, then close the connection."""
    before = in_flight(tus.client.server)
    reader, writer = await asyncio.open_connection(tus.client.host, tus.client.port)
    head = raw_head(
        "PATCH", path, f"Upload-Offset: {offset}", f"Content-Type: {OCTETS}", f"Content-Length: {announced}"
    )
    writer.write(head + b"\r\n")
    for i in range(0, len(body), 16384):
        writer.write(body[i : i + 16384])
        await writer.drain()
    writer.close()
    await writer.wait_closed()
    await wait_until_server_idle(tus, before)


@pytest.fixture
async def tus_drop(handler_cancel, serve) -> Tus:
    """A server for dropped-connection tests, in each disconnect mode of its front door
    (conftest parametrizes `handler_cancel`)."""
    return await serve(cancel=handler_cancel)


async def test_dropped_patch_keeps_every_byte_sent_and_resumes(tus_drop):
    tus = tus_drop
    data = payload(200_000, seed=6)
    path = await tus.create(len(data))
    await drop_mid_patch(tus, path, 0, data[:100_000], announced=200_000)
    assert await tus.offset(path) == 100_000
    await tus.store_holds(path, data[:100_000])
    (await tus.patch(path, 100_000, data[100_000:])).expect(204)
    await tus.assert_stored(path, data)


async def test_dropped_patch_twice_then_resume(tus_drop):
    tus = tus_drop
    data = payload(90_000, seed=7)
    path = await tus.create(len(data))
    await drop_mid_patch(tus, path, 0, data[:30_001], announced=90_000)
    assert await tus.offset(path) == 30_001
    await drop_mid_patch(tus, path, 30_001, data[30_001:60_000], announced=59_999)
    assert await tus.offset(path) == 60_000
    await tus.store_holds(path, data[:60_000])
    (await tus.patch(path, 60_000, data[60_000:])).expect(204)
    await tus.assert_stored(path, data)


async def test_dropped_patch_with_a_few_bytes(tus_drop):
    tus = tus_drop
    path = await tus.create(1000)
    await drop_mid_patch(tus, path, 0, b"xyz", announced=1000)
    assert await tus.offset(path) == 3
    await tus.store_holds(path, b"xyz")


async def test_dropped_creation_with_upload_keeps_every_byte(serve):
    # Without handler cancellation (the CLI's mode) the upload is always created first.
    # With it, the drop may cancel the POST before the upload exists: the client never
    # learnt a Location, so nothing is lost.
    tus = await serve(cancel=False)
    data = payload(50_000, seed=8)
    before = in_flight(tus.client.server)
    reader, writer = await asyncio.open_connection(tus.client.host, tus.client.port)
    head = raw_head("POST", "/", "Upload-Length: 50000", f"Content-Type: {OCTETS}", "Content-Length: 50000")
    writer.write(head + b"\r\n" + data[:20_000])
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    await wait_until_server_idle(tus, before)
    (upload_id,) = await tus.upload_ids()
    assert await tus.offset(f"/{upload_id}") == 20_000
    (await tus.patch(f"/{upload_id}", 20_000, data[20_000:])).expect(204)
    await tus.assert_stored(f"/{upload_id}", data)


# -- restart: a new store instance over the same storage continues ----------------------------------------


async def test_upload_continues_after_a_restart(serve):
    data = payload(120_000, seed=9)
    first = await serve()
    path = await first.create(len(data), f"filename {b64('r.bin')}")
    (await first.patch(path, 0, data[:50_000])).expect(204)
    await first.client.close()  # stops the server and closes its store

    second = await serve()
    head = (await second.head(path)).expect(200)
    assert head.headers["Upload-Offset"] == "50000"
    assert head.headers["Upload-Length"] == "120000"
    assert head.headers["Upload-Metadata"] == f"filename {b64('r.bin')}"
    await second.store_holds(path, data[:50_000])
    (await second.patch(path, 50_000, data[50_000:])).expect(204)
    await second.assert_stored(path, data)
    await second.client.close()

    third = await serve()
    await third.assert_stored(path, data)


async def test_deferred_length_survives_a_restart(serve):
    first = await serve()
    path = await first.create(None)
    (await first.patch(path, 0, b"abc")).expect(204)
    await first.client.close()
    second = await serve()
    head = (await second.head(path)).expect(200)
    assert head.headers["Upload-Defer-Length"] == "1" and head.headers["Upload-Offset"] == "3"
    (await second.patch(path, 3, b"de", {"Upload-Length": "5"})).expect(204)
    await second.assert_stored(path, b"abcde")


# -- mounting: stand-alone and as a sub-app under a prefix ----------------------------------------------


async def test_stand_alone_location_is_at_the_root(tus):
    reply = (await tus.post({"Upload-Length": "3"})).expect(201)
    assert URL(reply.headers["Location"]).path == "/" + reply.headers["Location"].rsplit("/", 1)[1]
    assert reply.headers["Location"].startswith(f"http://127.0.0.1:{tus.client.port}/")


async def test_mounted_under_a_prefix_end_to_end(serve):
    tus = await serve(prefix="/uploads/")
    reply = (await tus.request("OPTIONS", "/uploads/", tus=False)).expect(200)
    assert reply.headers["Tus-Version"] == "1.0.0"
    data = payload(5000, seed=10)
    reply = (await tus.post({"Upload-Length": "5000", "Content-Type": OCTETS}, data[:1000])).expect(201)
    location = reply.headers["Location"]
    upload_id = location.rsplit("/", 1)[1]
    assert location == f"http://127.0.0.1:{tus.client.port}/uploads/{upload_id}"
    path = f"/uploads/{upload_id}"
    assert reply.headers["Upload-Offset"] == "1000"
    (await tus.patch(path, 1000, data[1000:])).expect(204)
    await tus.assert_stored(path, data)
    (await tus.head(f"/uploads/{ID_LIKE}")).expect(404)
    assert (await tus.head(f"/{upload_id}")).status == 404  # not reachable outside the prefix
    (await tus.delete(path)).expect(204)
    (await tus.head(path)).expect(404)


async def test_mounted_under_a_prefix_rejects_bad_ids(serve):
    tus = await serve(prefix="/uploads/")
    path = await tus.upload(b"secret")
    upload_id = path.rsplit("/", 1)[1]
    for target in ["/uploads/..", "/uploads/%2F..", f"/uploads/{upload_id}.info", "/uploads/a.info"]:
        status, headers, body = await raw_request(tus, raw_head("GET", target))
        assert status == 404, (target, status)
        assert b"secret" not in body
    await tus.assert_stored(path, b"secret")


async def test_mounted_with_nested_prefix(serve):
    tus = await serve(prefix="/api/v1/files/")
    reply = (await tus.post({"Upload-Length": "3"})).expect(201)
    path = tus.path_of(reply)
    assert path.startswith("/api/v1/files/")
    (await tus.patch(path, 0, b"abc")).expect(204)
    await tus.assert_stored(path, b"abc")


async def test_rejected_patch_does_not_set_the_deferred_length(tus):
    path = await tus.create(None)
    (await tus.patch(path, 0, b"abc")).expect(204)
    (await tus.patch(path, 3, b"0123456789", {"Upload-Length": "5"})).expect(413)
    head = (await tus.head(path)).expect(200)
    assert head.headers["Upload-Defer-Length"] == "1" and "Upload-Length" not in head.headers
    await tus.assert_stored(path, b"abc")


async def test_rejected_patch_with_bad_checksum_does_not_set_the_deferred_length(tus):
    path = await tus.create(None)
    (await tus.patch(path, 0, b"abc", {"Upload-Length": "6", "Upload-Checksum": "sha1 ***"})).expect(400)
    head = (await tus.head(path)).expect(200)
    assert head.headers["Upload-Defer-Length"] == "1" and "Upload-Length" not in head.headers
    await tus.assert_stored(path, b"")


async def test_get_with_malformed_or_multiple_ranges_never_serves_wrong_bytes(tus):
    # aiohttp refuses Range values it cannot parse with 416 (RFC 9110 would also let it ignore them).
    data = b"0123456789"
    path = await tus.upload(data)
    for range_ in ["bytes=abc", "bytes=5-2", "bytes=0-1,3-4", "items=0-1", "bytes=--1"]:
        reply = await tus.get(path, {"Range": range_})
        assert reply.status == 416, range_
        assert reply.headers["Content-Range"] == "bytes */10", range_
        assert data not in reply.body


async def test_a_hook_header_outside_ascii_is_sent_as_utf8_on_either_door(aiohttp_client, store_factory):
    """Header values a hook sets are the embedder's text: written as UTF-8 (as aiohttp writes
    them), never a failed answer."""
    hooks = Hooks()
    hooks.on("post-finish", lambda event: HookResult(headers={"X-Stored-As": "café/ü.txt"}))
    client = await aiohttp_client(create_app(Config(), store=store_factory(), hooks=hooks))
    created = await client.post("/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "3"})
    assert created.status == 201
    path = created.headers["Location"].split("//", 1)[1].split("/", 1)[1]
    reply = await client.patch(
        "/" + path,
        data=b"abc",
        headers={"Tus-Resumable": "1.0.0", "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
    )
    assert (reply.status, reply.headers["Upload-Offset"]) == (204, "3")
    assert reply.raw_headers[[k.lower() for k, _ in reply.raw_headers].index(b"x-stored-as")][1] == (
        "café/ü.txt".encode()
    )
