"""Location behind a proxy, under a prefix, with public_url and relative_location;
forwarded headers are trusted only when behind_proxy is on."""

from __future__ import annotations

import pytest
from aiohttp import web

from tusserver.app import create_app
from tusserver.config import Config
from tusserver.stores.file import FileStore
from tusserver.urls import forwarded_origin

TUS = {"Tus-Resumable": "1.0.0", "Upload-Length": "5"}
ID_LENGTH = 22


@pytest.fixture
def make_client(aiohttp_client, tmp_path):
    async def make(prefix: str | None = None, **options):
        app = create_app(Config(**options), store=FileStore(str(tmp_path / "data")))
        if prefix:
            root = web.Application()
            root.add_subapp(prefix, app)
            app = root
        return await aiohttp_client(app)

    return make


async def location(client, path: str = "/", **headers: str) -> str:
    response = await client.post(path, headers={**TUS, **headers})
    assert response.status == 201, await response.text()
    return response.headers["Location"]


def split(loc: str) -> tuple[str, str]:
    base, upload_id = loc.rsplit("/", 1)
    assert len(upload_id) >= ID_LENGTH
    return base + "/", upload_id


async def test_location_is_absolute_from_the_request(make_client):
    client = await make_client()
    base, _ = split(await location(client))
    assert base == f"http://127.0.0.1:{client.port}/"


async def test_location_under_a_prefix_and_the_upload_is_reachable_there(make_client):
    client = await make_client(prefix="/uploads/")
    loc = await location(client, "/uploads/")
    base, upload_id = split(loc)
    assert base == f"http://127.0.0.1:{client.port}/uploads/"
    head = await client.head(f"/uploads/{upload_id}", headers={"Tus-Resumable": "1.0.0"})
    assert (head.status, head.headers["Upload-Offset"], head.headers["Upload-Length"]) == (200, "0", "5")


async def test_location_under_a_nested_prefix(make_client):
    client = await make_client(prefix="/api/v1/files/")
    loc = await location(client, "/api/v1/files/")
    assert split(loc)[0] == f"http://127.0.0.1:{client.port}/api/v1/files/"


async def test_tls_terminating_proxy_with_forwarded(make_client):
    client = await make_client(prefix="/files/", behind_proxy=True)
    loc = await location(client, "/files/", Forwarded="for=192.0.2.60;proto=https;host=uploads.example.com")
    assert split(loc)[0] == "https://uploads.example.com/files/"


async def test_forwarded_uses_the_first_hop_and_quoted_values(make_client):
    client = await make_client(behind_proxy=True)
    forwarded = 'for=192.0.2.60;proto=https;host="uploads.example.com:8443", for=10.0.0.1;proto=http;host=internal'
    assert split(await location(client, Forwarded=forwarded))[0] == "https://uploads.example.com:8443/"


async def test_forwarded_ipv6_host(make_client):
    client = await make_client(behind_proxy=True)
    loc = await location(client, Forwarded='proto=https;host="[2001:db8::1]:8443"')
    assert split(loc)[0] == "https://[2001:db8::1]:8443/"


async def test_tls_terminating_proxy_with_x_forwarded(make_client):
    client = await make_client(prefix="/files/", behind_proxy=True)
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "uploads.example.com, proxy2.internal"}
    assert split(await location(client, "/files/", **headers))[0] == "https://uploads.example.com/files/"


async def test_x_forwarded_proto_alone_keeps_the_host(make_client):
    client = await make_client(behind_proxy=True)
    loc = await location(client, **{"X-Forwarded-Proto": "HTTPS"})
    assert split(loc)[0] == f"https://127.0.0.1:{client.port}/"


async def test_forwarded_headers_are_ignored_when_not_behind_a_proxy(make_client):
    client = await make_client(prefix="/files/")
    own = f"http://127.0.0.1:{client.port}/files/"
    spoofs = [
        {"Forwarded": "proto=https;host=evil.example.com"},
        {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example.com"},
    ]
    for headers in spoofs:
        assert split(await location(client, "/files/", **headers))[0] == own


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Forwarded": "proto=javascript;host=ok.example.com"}, "http://ok.example.com/"),
        ({"Forwarded": 'proto=https;host="evil.example.com/phish"'}, "https://{own}/"),
        ({"Forwarded": 'proto=https;host="a b"'}, "https://{own}/"),
        ({"Forwarded": "proto=https;host=ok.example.com:99999"}, "https://{own}/"),
        ({"X-Forwarded-Proto": "ftp", "X-Forwarded-Host": "evil.example.com/x"}, "http://{own}/"),
        ({"X-Forwarded-Host": "user@evil.example.com"}, "http://{own}/"),
        ({"X-Forwarded-Host": "evil.example.com\\@x"}, "http://{own}/"),
    ],
)
async def test_malformed_forwarded_values_are_ignored(make_client, headers, expected):
    client = await make_client(behind_proxy=True)
    base = split(await location(client, **headers))[0]
    assert base == expected.format(own=f"127.0.0.1:{client.port}")


def test_forwarded_origin_ignores_bad_parts_independently():
    assert forwarded_origin({"Forwarded": "proto=javascript;host=ok.example.com"}) == (None, "ok.example.com")
    assert forwarded_origin({"Forwarded": 'proto=https;host="a/b"'}) == ("https", None)
    assert forwarded_origin({"X-Forwarded-Proto": "gopher", "X-Forwarded-Host": "h:1"}) == (None, "h:1")
    assert forwarded_origin({"Forwarded": "for=192.0.2.1"}) == (None, None)
    assert forwarded_origin({}) == (None, None)


async def test_public_url_overrides_request_and_proxy_headers(make_client):
    client = await make_client(prefix="/files/", public_url="https://cdn.example.com/", behind_proxy=True)
    loc = await location(client, "/files/", Forwarded="proto=http;host=other.example.com")
    assert split(loc)[0] == "https://cdn.example.com/files/"


async def test_relative_location_is_the_path_only(make_client):
    client = await make_client(prefix="/uploads/", relative_location=True, behind_proxy=True)
    loc = await location(client, "/uploads/", Forwarded="proto=https;host=uploads.example.com")
    base, upload_id = split(loc)
    assert base == "/uploads/"
    head = await client.head(loc, headers={"Tus-Resumable": "1.0.0"})
    assert head.status == 200
    assert head.headers["Upload-Length"] == "5"
