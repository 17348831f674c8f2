"""Small helpers over aiohttp's test client for speaking tus in tests."""

from __future__ import annotations

import hashlib

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def create(client, length: int | None = None, path: str = "/", **headers: str) -> str:
    """POST a new upload; returns its path."""
    h = dict(TUS)
    if length is None:
        h["Upload-Defer-Length"] = "1"
    else:
        h["Upload-Length"] = str(length)
    h.update({k.replace("_", "-"): v for k, v in headers.items()})
    resp = await client.post(path, headers=h)
    assert resp.status == 201, await resp.text()
    from yarl import URL

    return URL(resp.headers["Location"]).path


async def patch(client, path: str, offset: int, data: bytes, expect: int = 204, **headers: str):
    h = {**TUS, "Upload-Offset": str(offset), "Content-Type": OCTETS}
    h.update({k.replace("_", "-"): v for k, v in headers.items()})
    resp = await client.patch(path, data=data, headers=h)
    assert resp.status == expect, (resp.status, await resp.text())
    return resp


async def head(client, path: str):
    return await client.head(path, headers=TUS)


async def download(client, path: str) -> bytes:
    resp = await client.get(path)
    assert resp.status == 200, (resp.status, await resp.text())
    return await resp.read()
