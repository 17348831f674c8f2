"""Bearer tokens: HS256 JWTs (pure checks), and the server's answers over real HTTP."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import subprocess
import sys
import time

import jwt
import pytest

from tests.tus_client import OCTETS, TUS
from tusserver import Config, FileStore, create_app, make_token
from tusserver.auth import InvalidToken, Rules, verify_token
from tusserver.load import ConfigError

SECRET = "s3cret-s3cret-s3cret-s3cret-0123"


def now() -> int:
    return int(time.time())


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(payload: str | dict, header: dict | None = None, secret: str | bytes = SECRET) -> str:
    """An HS256 JWT over exactly this payload text (which may hold NaN, Infinity, ...)."""
    text = payload if isinstance(payload, str) else json.dumps(payload)
    signing_input = b64(json.dumps(header or {"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64(text.encode())
    key = secret.encode() if isinstance(secret, str) else secret
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


def unsigned(payload: dict) -> str:
    return b64(json.dumps({"alg": "none", "typ": "JWT"}).encode()) + "." + b64(json.dumps(payload).encode()) + "."


# -- the token, without a server ----------------------------------------------------------------


def test_a_token_is_an_hs256_jwt_with_its_claims():
    token = make_token(SECRET, 60, subject="alice", scope="upload", upload="abc", now=1_800_000_000)
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False, "verify_iat": False})
    assert claims == {"iat": 1_800_000_000, "exp": 1_800_000_060, "sub": "alice", "scope": "upload", "upl": "abc"}


def test_a_token_verifies_with_its_claims():
    issued = now()
    claims = verify_token(SECRET, make_token(SECRET, 60, subject="alice", scope="upload download", now=issued))
    assert (claims.expires, claims.subject, claims.scopes, claims.upload) == (
        issued + 60,
        "alice",
        frozenset({"upload", "download"}),
        None,
    )


def test_without_scope_a_token_allows_upload_and_download_but_not_admin():
    claims = verify_token(SECRET, make_token(SECRET, 60))
    assert claims.scopes == {"upload", "download"} and claims.subject is None
    assert claims.allows("upload") and claims.allows("download") and not claims.allows("admin")


def test_admin_implies_upload_and_download():
    claims = verify_token(SECRET, make_token(SECRET, 60, scope="admin"))
    assert claims.allows("upload") and claims.allows("download")


def test_an_expiry_within_the_leeway_is_accepted_and_beyond_it_refused():
    assert verify_token(SECRET, forge({"exp": now() - 20}), Rules(leeway=30)).expires < now()
    with pytest.raises(InvalidToken, match="expired"):
        verify_token(SECRET, forge({"exp": now() - 40}), Rules(leeway=30))
    with pytest.raises(InvalidToken, match="expired"):
        verify_token(SECRET, forge({"exp": now() - 1}), Rules(leeway=0))


# Built when the tests are collected: valid for a day, so a long run never sees them expire.
DAY = 86400


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (make_token(SECRET, 60, now=now() - 3600), "expired"),
        (make_token("another-secret-0123456789-abcdefgh", 60), "bad signature"),
        ("", "malformed token"),
        ("no-dot-here", "malformed token"),
        ("a.b.c", "malformed token"),
        ("é.x.y", "malformed token"),
        (forge({"sub": "alice"}), "no exp claim"),
        (forge({"exp": "tomorrow"}), "malformed token"),
        (forge({"exp": str(now() + DAY)}), "exp must be a number"),  # PyJWT alone would take "123"
        (forge({"exp": True}), "expired"),
        (forge('{"exp": NaN}'), "malformed token"),
        (forge('{"exp": Infinity}'), "malformed token"),
        (forge('{"exp": 1e400}'), "malformed token"),
        (forge({"exp": 1e20}), "too far in the future"),
        (forge({"exp": now() + 31 * 86400}), "too far in the future"),
        (forge({"exp": now() + DAY, "scope": 7}), "scope must be"),
        (forge({"exp": now() + DAY, "sub": ["a"]}), "sub must be"),
        (forge({"exp": now() + DAY, "upl": "../x"}), "upl must be"),
        (forge({"exp": now() + DAY, "nbf": now() + 3600}), "not valid yet"),
        (forge({"exp": now() + DAY, "iat": now() + 3600}), "not valid yet"),
        (forge("[1, 2]"), "malformed token"),
        (unsigned({"exp": now() + DAY}), "algorithm 'none' is not accepted"),
        (forge({"exp": now() + DAY}, {"alg": "HS512"}), "algorithm 'HS512' is not accepted"),
        (forge({"exp": now() + DAY}, {"typ": "JWT"}), "malformed token header"),
    ],
)
def test_bad_tokens_are_refused_with_a_reason(token, reason):
    with pytest.raises(InvalidToken, match=reason):
        verify_token(SECRET, token)


def test_a_token_with_a_changed_payload_fails_its_signature():
    header, _, signature = make_token(SECRET, 60, subject="alice").split(".")
    forged = b64(json.dumps({"exp": now() + 60, "sub": "mallory", "scope": "admin"}).encode())
    with pytest.raises(InvalidToken, match="bad signature"):
        verify_token(SECRET, f"{header}.{forged}.{signature}")


def test_issuer_and_audience_are_required_when_configured():
    rules = Rules(issuer="https://idp.example", audience="tus")
    good = make_token(SECRET, 60, issuer="https://idp.example", audience="tus")
    assert verify_token(SECRET, good, rules).subject is None
    with pytest.raises(InvalidToken, match="no iss claim"):
        verify_token(SECRET, make_token(SECRET, 60, audience="tus"), rules)
    with pytest.raises(InvalidToken, match="no aud claim"):
        verify_token(SECRET, make_token(SECRET, 60, issuer="https://idp.example"), rules)
    with pytest.raises(InvalidToken, match="wrong issuer"):
        verify_token(SECRET, make_token(SECRET, 60, issuer="https://evil.example", audience="tus"), rules)
    with pytest.raises(InvalidToken, match="wrong audience"):
        verify_token(SECRET, make_token(SECRET, 60, issuer="https://idp.example", audience="other"), rules)
    # A token for some audience is not for a server that names none.
    with pytest.raises(InvalidToken, match="wrong audience"):
        verify_token(SECRET, make_token(SECRET, 60, audience="other"))


def test_unknown_scopes_and_bad_upload_ids_cannot_be_minted():
    with pytest.raises(ValueError, match="scope"):
        make_token(SECRET, 60, scope="superuser")
    with pytest.raises(ValueError, match="scope"):
        make_token(SECRET, 60, scope=" ")
    with pytest.raises(ValueError, match="upload id"):
        make_token(SECRET, 60, upload="a/b")


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"auth_leeway": 301.0}, "auth_leeway"),
        ({"auth_max_ttl": 0.0}, "auth_max_ttl"),
        ({"auth_jwks_url": "file:///etc/keys.json"}, "auth_jwks_url"),
    ],
)
def test_unworkable_token_settings_stop_create_app(tmp_path, options, key):
    with pytest.raises(ConfigError, match=key):
        create_app(Config(auth_secret=SECRET, **options), store=FileStore(str(tmp_path)))


# -- over HTTP ----------------------------------------------------------------------------------


@pytest.fixture
async def client(aiohttp_client, tmp_path):
    config = Config(auth_secret=SECRET, cors_origins=["https://app.example"])
    return await aiohttp_client(create_app(config, store=FileStore(str(tmp_path / "uploads"))))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_an_upload_and_its_download_with_a_valid_token(client):
    token = make_token(SECRET, 300)
    resp = await client.post("/", headers={**TUS, **bearer(token), "Upload-Length": "5"})
    assert resp.status == 201
    path = "/" + resp.headers["Location"].rsplit("/", 1)[1]
    h = {**TUS, **bearer(token), "Upload-Offset": "0", "Content-Type": OCTETS}
    assert (await client.patch(path, data=b"hello", headers=h)).status == 204
    resp = await client.get(path, headers=bearer(token))
    assert (resp.status, await resp.read()) == (200, b"hello")


INVALID = 'Bearer realm="tus", error="invalid_token"'


@pytest.mark.parametrize(
    ("headers", "challenge"),
    [
        ({}, 'Bearer realm="tus"'),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 'Bearer realm="tus"'),
        ({"Authorization": "Bearer "}, 'Bearer realm="tus"'),
        (bearer("garbage"), INVALID),
        (bearer(make_token(SECRET, 60, now=now() - 3600)), INVALID),
        (bearer(make_token("not-the-server-secret-0123456789abc", 300)), INVALID),
        (bearer(unsigned({"exp": now() + 300})), INVALID),
        (bearer(forge('{"exp": NaN}')), INVALID),
        (bearer(forge('{"exp": Infinity}')), INVALID),
        (bearer(forge({"exp": 1e20})), INVALID),
        (bearer(forge({"exp": now() + 300}, {"alg": "HS384", "typ": "JWT"})), INVALID),
    ],
)
async def test_missing_bad_and_expired_tokens_get_401_and_change_nothing(client, tmp_path, headers, challenge):
    resp = await client.post("/", headers={**TUS, **headers, "Upload-Length": "5"})
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == challenge
    text = await resp.text()
    assert text.startswith("a valid Authorization bearer token is required") and text.count("\n") == 1
    assert not any((tmp_path / "uploads").iterdir())


async def test_every_tus_request_needs_a_token(client):
    token = make_token(SECRET, 300)
    resp = await client.post("/", headers={**TUS, **bearer(token), "Upload-Length": "5"})
    path = "/" + resp.headers["Location"].rsplit("/", 1)[1]
    for method in ("HEAD", "PATCH", "DELETE", "GET"):
        headers = {**TUS, "Upload-Offset": "0", "Content-Type": OCTETS}
        resp = await client.request(method, path, headers=headers, data=b"hello" if method == "PATCH" else None)
        assert resp.status == 401, method
    # The method override is checked as the method it names.
    resp = await client.post(path, headers={**TUS, "X-HTTP-Method-Override": "DELETE"})
    assert resp.status == 401
    assert (await client.head(path, headers={**TUS, **bearer(token)})).headers["Upload-Offset"] == "0"


async def test_options_and_cors_preflights_need_no_token(client):
    resp = await client.options("/", headers=TUS)
    assert resp.status == 200 and "Tus-Version" in resp.headers
    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, tus-resumable",
    }
    resp = await client.options("/", headers=preflight)
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "Authorization" in resp.headers["Access-Control-Allow-Headers"].split(", ")


async def test_scopes_split_uploading_from_downloading(client):
    upload_only = make_token(SECRET, 300, scope="upload")
    download_only = make_token(SECRET, 300, scope="download")
    resp = await client.post("/", headers={**TUS, **bearer(download_only), "Upload-Length": "2"})
    assert resp.status == 403
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="tus", error="insufficient_scope", scope="upload"'
    resp = await client.post(
        "/", data=b"hi", headers={**TUS, **bearer(upload_only), "Upload-Length": "2", "Content-Type": OCTETS}
    )
    assert resp.status == 201
    path = "/" + resp.headers["Location"].rsplit("/", 1)[1]
    assert (await client.get(path, headers=bearer(upload_only))).status == 403
    resp = await client.get(path, headers=bearer(download_only))
    assert (resp.status, await resp.read()) == (200, b"hi")
    resp = await client.get(path, headers=bearer(make_token(SECRET, 300, scope="admin")))
    assert (resp.status, await resp.read()) == (200, b"hi")


async def test_tokens_never_reach_the_logs(client, caplog):
    caplog.set_level(logging.DEBUG)
    good = make_token(SECRET, 300, subject="alice")
    bad = make_token("not-the-server-secret-0123456789abc", 300)
    await client.post("/", headers={**TUS, **bearer(good), "Upload-Length": "1"})
    await client.post("/", headers={**TUS, **bearer(bad), "Upload-Length": "1"})
    assert good not in caplog.text and bad not in caplog.text
    assert SECRET not in caplog.text


def run_cli(tmp_path, *args: str, secret: str | None = SECRET) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSSERVER_")}
    if secret is not None:
        env["TUSSERVER_AUTH_SECRET"] = secret
    return subprocess.run(
        [sys.executable, "-m", "tusserver", "token", *args], env=env, capture_output=True, text=True, cwd=tmp_path
    )


def test_the_cli_mints_jwts_the_server_accepts(tmp_path):
    out = run_cli(tmp_path, "--ttl", "120", "--subject", "bob", "--scope", "download")
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = verify_token(SECRET, token)
    assert claims.subject == "bob" and claims.scopes == {"download"} and claims.upload is None
    assert now() + 110 <= claims.expires <= now() + 121
    out = run_cli(tmp_path, "--scope", "upload", "--scope", "admin")
    assert verify_token(SECRET, out.stdout.strip()).scopes == {"upload", "admin"}
    refused = run_cli(tmp_path, secret=None)
    assert refused.returncode == 2 and "auth_secret" in refused.stderr and refused.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scope", "root"], "scope"),
        (["--upload", "../etc"], "upload id"),
        (["--ttl", "0"], "--ttl"),
        (["--ttl", str(31 * 86400)], "auth_max_ttl"),
    ],
)
def test_the_cli_refuses_tokens_the_server_would_not_take(tmp_path, args, message):
    out = run_cli(tmp_path, *args)
    assert out.returncode == 2 and message in out.stderr and out.stdout == ""
