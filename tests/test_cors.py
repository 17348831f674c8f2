"""CORS: preflights on every tus path, the grant on every response to an allowed
origin (errors and downloads included), nothing for any other origin."""

from __future__ import annotations

import pytest
from aiohttp import web

from tusserver.app import create_app
from tusserver.config import Config
from tusserver.cors import OriginPolicy
from tusserver.load import ConfigError
from tusserver.stores.file import FileStore

ORIGIN = "https://app.example.com"
TUS = {"Tus-Resumable": "1.0.0"}

METHODS = "POST, GET, HEAD, PATCH, DELETE, OPTIONS, PUT"
TUS_HEADERS = (
    "Tus-Resumable, Upload-Length, Upload-Offset, Upload-Metadata, Upload-Defer-Length, "
    "Upload-Concat, Upload-Checksum, Content-Type, X-HTTP-Method-Override, X-Requested-With, "
    "Upload-Complete, Upload-Incomplete, Upload-Draft-Interop-Version, Content-Disposition"
)
EXPOSED = (
    "Location, Upload-Offset, Upload-Length, Upload-Metadata, Upload-Defer-Length, Upload-Expires, "
    "Upload-Concat, Tus-Version, Tus-Resumable, Tus-Extension, Tus-Max-Size, Tus-Checksum-Algorithm, "
    "Upload-Complete, Upload-Incomplete, Upload-Limit, Upload-Draft-Interop-Version"
)


def cors_headers(response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower().startswith("access-control-")}


@pytest.fixture
def make_client(aiohttp_client, tmp_path):
    async def make(prefix: str | None = None, **options):
        config = Config(file_dir=str(tmp_path / "data"), **options)
        app = create_app(config, store=FileStore(str(tmp_path / "data")))
        if prefix:
            root = web.Application()
            root.add_subapp(prefix, app)
            app = root
        return await aiohttp_client(app)

    return make


async def create_upload(client, path: str = "/", length: int = 3) -> str:
    response = await client.post(path, headers={**TUS, "Upload-Length": str(length)})
    assert response.status == 201
    return response.headers["Location"]


def preflight(method: str = "PATCH", origin: str = ORIGIN) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "tus-resumable,upload-offset,content-type",
    }


async def test_preflight_on_collection_and_upload_paths_is_204_with_every_grant(make_client):
    client = await make_client(cors_max_age=600)
    location = await create_upload(client)
    upload_path = "/" + location.rsplit("/", 1)[1]
    for path in ("/", upload_path, "/" + "A" * 22):  # the last one is an unknown upload
        response = await client.options(path, headers=preflight())
        assert response.status == 204
        assert cors_headers(response) == {
            "Access-Control-Allow-Origin": "*",
            "Access-Control-Allow-Methods": METHODS,
            "Access-Control-Allow-Headers": TUS_HEADERS,
            "Access-Control-Max-Age": "600",
            "Access-Control-Expose-Headers": EXPOSED,
        }
        assert response.headers["Vary"] == "Origin"
        # Not a tus OPTIONS: no capability discovery, and no Tus-Resumable demanded.
        assert "Tus-Version" not in response.headers
        assert "Tus-Extension" not in response.headers
        assert await response.read() == b""


async def test_preflight_under_a_prefix(make_client):
    client = await make_client(prefix="/uploads/")
    location = await create_upload(client, "/uploads/")
    for path in ("/uploads/", "/uploads/" + location.rsplit("/", 1)[1]):
        response = await client.options(path, headers=preflight("POST"))
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Methods"] == METHODS


async def test_extra_allowed_headers_are_appended_once(make_client):
    client = await make_client(cors_allow_headers=["Authorization", "X-Tenant", "tus-resumable"])
    response = await client.options("/", headers=preflight("POST"))
    assert response.headers["Access-Control-Allow-Headers"] == TUS_HEADERS + ", Authorization, X-Tenant"


async def test_default_max_age_is_one_day(make_client):
    client = await make_client()
    response = await client.options("/", headers=preflight("POST"))
    assert response.headers["Access-Control-Max-Age"] == "86400"


async def test_plain_tus_options_still_discovers_capabilities(make_client):
    client = await make_client()
    response = await client.options("/", headers={"Origin": ORIGIN})
    assert response.status == 200
    assert response.headers["Tus-Version"] == "1.0.0"
    assert "creation" in response.headers["Tus-Extension"].split(",")
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.headers["Access-Control-Expose-Headers"] == EXPOSED
    assert "Access-Control-Allow-Methods" not in response.headers


async def test_every_verb_and_the_download_carry_the_grant(make_client):
    client = await make_client()
    origin = {"Origin": ORIGIN}
    response = await client.post("/", headers={**TUS, **origin, "Upload-Length": "3"})
    assert response.status == 201
    path = "/" + response.headers["Location"].rsplit("/", 1)[1]
    responses = [response]
    responses.append(await client.head(path, headers={**TUS, **origin}))
    patch = {**TUS, **origin, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
    responses.append(await client.patch(path, data=b"abc", headers=patch))
    download = await client.get(path, headers=origin)
    assert await download.read() == b"abc"
    responses.append(download)
    responses.append(await client.delete(path, headers={**TUS, **origin}))
    assert [r.status for r in responses] == [201, 200, 204, 200, 204]
    for r in responses:
        assert cors_headers(r) == {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": EXPOSED}
        assert r.headers["Vary"] == "Origin"


async def test_errors_carry_the_grant(make_client):
    client = await make_client(cors_origins=[ORIGIN])
    missing = await client.head("/" + "A" * 22, headers={**TUS, "Origin": ORIGIN})
    no_version = await client.post("/", headers={"Origin": ORIGIN, "Upload-Length": "1"})
    assert (missing.status, no_version.status) == (404, 412)
    for r in (missing, no_version):
        assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert r.headers["Access-Control-Expose-Headers"] == EXPOSED
        assert r.headers["Vary"] == "Origin"


async def test_listed_origin_is_echoed_and_others_get_nothing(make_client):
    client = await make_client(cors_origins=[ORIGIN, "http://127.0.0.1:8080"])
    allowed = await client.options("/", headers=preflight(origin="http://127.0.0.1:8080"))
    assert allowed.headers["Access-Control-Allow-Origin"] == "http://127.0.0.1:8080"
    assert "Access-Control-Allow-Credentials" not in allowed.headers

    for origin in ("https://evil.example.com", "http://127.0.0.1:8081", ORIGIN + ".evil.net", "null"):
        denied = await client.options("/", headers=preflight(origin=origin))
        assert denied.status == 204
        assert cors_headers(denied) == {}
        created = await client.post("/", headers={**TUS, "Origin": origin, "Upload-Length": "1"})
        assert created.status == 201
        assert cors_headers(created) == {}
        assert created.headers["Vary"] == "Origin"


async def test_regex_origins_match_the_whole_origin(make_client):
    client = await make_client(cors_origins=[r"re:^https://.*\.example\.com$", r"re:http://localhost:\d+"])
    for origin in ("https://a.example.com", "https://b.c.example.com", "http://localhost:3000"):
        response = await client.options("/", headers=preflight(origin=origin))
        assert response.headers["Access-Control-Allow-Origin"] == origin
    for origin in ("https://example.com", "http://a.example.com", "http://localhost:3000.evil.net"):
        response = await client.options("/", headers=preflight(origin=origin))
        assert cors_headers(response) == {}


@pytest.mark.parametrize("origins", [["*"], [ORIGIN, "*"]])
def test_star_with_credentials_is_refused_at_start_up(origins):
    # It would grant every website the user's cookies: a ConfigError naming both keys.
    with pytest.raises(ConfigError) as caught:
        create_app(Config(cors_origins=origins, cors_credentials=True), store=FileStore("/nonexistent"))
    assert "cors_origins" in str(caught.value) and "cors_credentials" in str(caught.value)


def test_the_cli_refuses_star_with_credentials(tmp_path, caplog):
    from tusserver.cli import serve

    assert serve(Config(cors_credentials=True, file_dir=str(tmp_path), port=0)) == 2
    assert "cors_credentials" in caplog.text


async def test_credentials_echo_a_listed_origin(make_client):
    client = await make_client(cors_origins=[ORIGIN], cors_credentials=True)
    response = await client.options("/", headers=preflight())
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    head = await client.head("/" + "A" * 22, headers={**TUS, "Origin": ORIGIN})
    assert head.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert head.headers["Access-Control-Allow-Credentials"] == "true"


async def test_request_without_origin_gets_no_grant(make_client):
    client = await make_client()
    response = await client.post("/", headers={**TUS, "Upload-Length": "1"})
    assert response.status == 201
    assert cors_headers(response) == {}
    assert response.headers["Vary"] == "Origin"


def test_origin_policy_exact_entries_ignore_case_and_trailing_slash():
    policy = OriginPolicy(["HTTPS://App.Example.com/"])
    assert policy.allows("https://app.example.com")
    assert not policy.allows("https://app.example.com:8443")


def test_bad_origin_regex_is_a_clear_error():
    with pytest.raises(ValueError, match="cors_origins: bad regular expression 're:\\('"):
        OriginPolicy(["re:("])


async def test_empty_origin_list_allows_no_origin(make_client):
    client = await make_client(cors_origins=[])
    response = await client.options("/", headers=preflight())
    assert response.status == 204
    assert cors_headers(response) == {}
