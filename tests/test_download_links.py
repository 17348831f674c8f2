"""Download links: a token bound to one upload (`upl`), accepted as `?token=` on GET of
that upload only, and never logged."""

from __future__ import annotations

import logging

import pytest
from yarl import URL

from tests.serverproc import ServerProcess
from tests.tus_client import OCTETS, TUS, sha256
from tusserver import Config, Hooks, create_app, make_token

SECRET = "s3cret-s3cret-s3cret-s3cret-0123"
ADMIN = make_token(SECRET, 3600, scope="admin")
DATA_A = b"alice's report, 30 bytes long."
DATA_B = b"bob's photo"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def upload(client, data: bytes, token: str = ADMIN) -> str:
    headers = {**TUS, **bearer(token), "Upload-Length": str(len(data)), "Content-Type": OCTETS}
    resp = await client.post("/", headers=headers, data=data)
    assert resp.status == 201, await resp.text()
    return URL(resp.headers["Location"]).path.rsplit("/", 1)[1]


async def stored(client, upload_id: str) -> str:
    resp = await client.get(f"/{upload_id}", headers=bearer(ADMIN))
    assert resp.status == 200
    return sha256(await resp.read())


@pytest.fixture
async def client(aiohttp_client, store_factory):
    return await aiohttp_client(create_app(Config(auth_secret=SECRET), store=store_factory()))


async def test_a_download_link_works_for_its_upload_only(client):
    a, b = await upload(client, DATA_A), await upload(client, DATA_B)
    link = make_token(SECRET, 3600, scope="download", upload=a)

    resp = await client.get(f"/{a}", params={"token": link})
    assert resp.status == 200 and sha256(await resp.read()) == sha256(DATA_A)
    resp = await client.get(f"/{a}", params={"token": link}, headers={"Range": "bytes=8-13"})
    assert (resp.status, await resp.read()) == (206, DATA_A[8:14])

    # Another upload: as if it did not exist.
    resp = await client.get(f"/{b}", params={"token": link})
    assert (resp.status, await resp.text()) == (404, "upload not found\n")

    # Any other verb: a token in the URL is not looked at, so there is no token at all.
    headers = {**TUS, "Upload-Offset": "0", "Content-Type": OCTETS}
    for method, path in [("HEAD", a), ("PATCH", a), ("DELETE", a), ("POST", ""), ("HEAD", b), ("DELETE", b)]:
        resp = await client.request(method, f"/{path}", params={"token": link}, headers=headers)
        assert (resp.status, resp.headers["WWW-Authenticate"]) == (401, 'Bearer realm="tus"'), method
    override = {**TUS, "X-HTTP-Method-Override": "GET"}
    assert (await client.post(f"/{a}", params={"token": link}, headers=override)).status == 401

    assert await stored(client, a) == sha256(DATA_A) and await stored(client, b) == sha256(DATA_B)


async def test_an_upload_bound_token_in_the_header_is_limited_to_its_upload(client):
    a, b = await upload(client, DATA_A), await upload(client, DATA_B)
    link = make_token(SECRET, 3600, scope="download", upload=a)
    resp = await client.get(f"/{a}", headers=bearer(link))
    assert resp.status == 200 and sha256(await resp.read()) == sha256(DATA_A)
    assert (await client.get(f"/{b}", headers=bearer(link))).status == 404
    resp = await client.head(f"/{a}", headers={**TUS, **bearer(link)})
    assert resp.status == 403 and 'scope="upload"' in resp.headers["WWW-Authenticate"]
    resp = await client.post("/", headers={**TUS, **bearer(link), "Upload-Length": "1"})
    assert resp.status == 403 and "bound to one upload" in await resp.text()

    # An upload-scope token bound to A manages A and nothing else.
    bound = make_token(SECRET, 3600, scope="upload", upload=a)
    assert (await client.head(f"/{a}", headers={**TUS, **bearer(bound)})).headers["Upload-Offset"] == str(len(DATA_A))
    assert (await client.head(f"/{b}", headers={**TUS, **bearer(bound)})).status == 404
    assert (await client.delete(f"/{b}", headers={**TUS, **bearer(bound)})).status == 404
    assert await stored(client, b) == sha256(DATA_B)


OTHER_SECRET = "another-secret-0123456789-abcdefgh"


@pytest.mark.parametrize(
    ("mint", "reason"),
    [
        (lambda a: make_token(SECRET, 3600, scope="download"), "a token in the URL must be bound to one upload"),
        (lambda a: make_token(SECRET, 60, scope="download", upload=a, now=1_000_000_000), "expired"),
        (lambda a: make_token(OTHER_SECRET, 3600, scope="download", upload=a), "bad signature"),
    ],
)
async def test_bad_links_are_401(client, mint, reason):
    a = await upload(client, DATA_A)
    resp = await client.get(f"/{a}", params={"token": mint(a)})
    assert resp.status == 401 and reason in await resp.text()
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="tus", error="invalid_token"'


async def test_an_empty_token_parameter_is_no_token(client):
    a = await upload(client, DATA_A)
    resp = await client.get(f"/{a}", params={"token": ""})
    assert (resp.status, resp.headers["WWW-Authenticate"]) == (401, 'Bearer realm="tus"')


async def test_a_token_in_both_header_and_url_is_400(client):
    a = await upload(client, DATA_A)
    link = make_token(SECRET, 3600, scope="download", upload=a)
    resp = await client.get(f"/{a}", params={"token": link}, headers=bearer(link))
    assert resp.status == 400 and "not both" in await resp.text()


async def test_link_tokens_reach_neither_logs_nor_hooks(aiohttp_client, tmp_path, caplog):
    from tusserver import FileStore

    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    hooks = Hooks()
    hooks.on("pre-get", lambda event: seen.append(event.request.uri))
    app = create_app(Config(auth_secret=SECRET), store=FileStore(str(tmp_path / "up")), hooks=hooks)
    client = await aiohttp_client(app)
    a = await upload(client, DATA_A)
    link = make_token(SECRET, 3600, scope="download", upload=a)
    resp = await client.get(f"/{a}", params={"token": link, "x": "1"})
    # Read whole: the access line is written when the response has been sent.
    assert resp.status == 200 and await resp.read() == DATA_A
    assert (await client.get(f"/{a}x", params={"token": link})).status == 404
    assert seen == [f"/{a}?x=1"]
    tusserver_lines = [r.getMessage() for r in caplog.records if r.name.startswith("tusserver")]
    assert any(f"GET /{a} 200" in line for line in tusserver_lines)
    assert not any(link in line or "token=" in line for line in tusserver_lines)


async def test_a_real_server_logs_no_link_token_at_debug_level(tmp_path):
    import aiohttp

    args = ("--store", "file", "--file-dir", str(tmp_path / "up"), "--log-level", "debug", "--auth-secret", SECRET)
    server = ServerProcess(*args)
    try:
        await server.start()
        async with aiohttp.ClientSession() as session:
            headers = {**TUS, **bearer(ADMIN), "Upload-Length": str(len(DATA_A)), "Content-Type": OCTETS}
            async with session.post(server.url, headers=headers, data=DATA_A) as resp:
                assert resp.status == 201
                upload_id = URL(resp.headers["Location"]).path.rsplit("/", 1)[1]
            link = make_token(SECRET, 3600, scope="download", upload=upload_id)
            async with session.get(f"{server.url}{upload_id}", params={"token": link}) as resp:
                assert resp.status == 200 and await resp.read() == DATA_A
            async with session.get(f"{server.url}{upload_id}x", params={"token": link}) as resp:
                assert resp.status == 404
            await server.wait_for_log(f"GET /files/{upload_id}x 404")
    finally:
        await server.stop()
    assert f"GET /files/{upload_id} 200" in server.log
    assert link not in server.log and "token=" not in server.log and ADMIN not in server.log
