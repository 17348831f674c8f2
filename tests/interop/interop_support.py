"""Helpers for the real-client tests: running Node scripts, a tusserver target that logs
what it received, direct reads of the store, and decoding what clients read back."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiohttp

INTEROP = Path(__file__).parent
PREFIX = "/files/"
MiB = 1 << 20


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_file(directory: Path, name: str, size: int, seed: int = 1) -> tuple[Path, str]:
    """A file of `size` random bytes, and its sha256."""
    data = random.Random(seed).randbytes(size)
    path = directory / name
    path.write_bytes(data)
    return path, sha256(data)


async def run_node(script: str, *args: str, timeout: float = 90) -> dict:
    """Run a Node script from tests/interop and return the JSON object on its last stdout line."""
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(INTEROP / script),
        *args,
        cwd=INTEROP,
        env=env_without_proxies(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise AssertionError(f"{script} exited {proc.returncode}:\n{err.decode(errors='replace')}")
    return json.loads(out.decode().strip().splitlines()[-1])


@dataclass
class Received:
    """One request as the server saw it."""

    method: str
    path: str
    status: int
    headers: Mapping[str, str]  # case-insensitive
    bytes_in: int


@dataclass
class TusTarget:
    """A running tusserver mounted under /files/, its store, and what it received."""

    base: str
    store_kind: str
    store: object
    s3_endpoint: str | None
    requests: list[Received] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return self.base + PREFIX

    def upload_id(self, url: str) -> str:
        path = urlsplit(url).path
        assert path.startswith(PREFIX), url
        return path[len(PREFIX) :]

    def received(self, method: str, url: str | None = None) -> list[Received]:
        """Requests with `method` (to `url`'s path, if given), in arrival order."""
        path = None if url is None else urlsplit(url).path
        return [r for r in self.requests if r.method == method and (path is None or r.path == path)]

    async def options(self) -> aiohttp.ClientResponse:
        async with aiohttp.ClientSession() as session:
            async with session.options(self.endpoint) as response:
                return response

    async def head(self, url: str) -> aiohttp.ClientResponse:
        async with aiohttp.ClientSession() as session:
            async with session.head(url, headers={"Tus-Resumable": "1.0.0"}) as response:
                return response

    async def download(self, url: str) -> tuple[aiohttp.ClientResponse, bytes]:
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as response:
                return response, await response.read()

    async def stored(self, url: str) -> bytes:
        """The upload's bytes read straight from the storage (disk file or S3 object),
        not through the server."""
        info = await self.store.get_info(self.upload_id(url))
        assert info.finished
        storage = {k.lower(): v for k, v in info.storage.items()}
        if self.store_kind == "file":
            path = Path(storage["path"])
            assert path.parent == Path(self.store.directory)
            return path.read_bytes()
        return await read_s3_object(self.s3_endpoint, storage["bucket"], storage["key"])

    async def check_bytes(self, url: str, digest: str, size: int) -> None:
        """The upload at `url` holds exactly the bytes hashed to `digest`, through GET and in the store."""
        response, body = await self.download(url)
        assert response.status == 200
        assert int(response.headers["Content-Length"]) == size
        assert (len(body), sha256(body)) == (size, digest)
        stored = await self.stored(url)
        assert (len(stored), sha256(stored)) == (size, digest)


async def read_s3_object(endpoint: str, bucket: str, key: str) -> bytes:
    from aiobotocore.session import get_session

    async with get_session().create_client("s3", endpoint_url=endpoint, region_name="us-east-1") as s3:
        obj = await s3.get_object(Bucket=bucket, Key=key)
        async with obj["Body"] as stream:
            return await stream.read()


def decode_metadata(header: str) -> dict[str, str]:
    pairs = (item.strip().split(" ", 1) for item in header.split(",") if item.strip())
    return {p[0]: base64.b64decode(p[1]).decode() if len(p) > 1 else "" for p in pairs}


def content_disposition_filename(header: str) -> str:
    """The RFC 6266 `filename*=UTF-8''...` value, decoded."""
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == "filename*":
            charset, _, encoded = value.split("'", 2)
            assert charset.upper() == "UTF-8"
            return unquote(encoded, encoding="utf-8", errors="strict")
    raise AssertionError(f"no filename* in {header!r}")


def env_without_proxies() -> dict[str, str]:
    # Loopback only: make sure no proxy variable sends client traffic elsewhere.
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
