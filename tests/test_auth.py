"""Bearer tokens: the format (pure), and the server's answers over real HTTP."""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys

import pytest

from tests.tus_client import OCTETS, TUS
from tusserver import Config, FileStore, create_app, make_token
from tusserver.auth import InvalidToken, verify_token

SECRET = "s3cret-s3cret-s3cret-s3cret-0123"
NOW = 1_800_000_000


def test_a_token_verifies_with_its_claims():
    token = make_token(SECRET, 60, subject="alice", scope="upload", now=NOW)
    claims = verify_token(SECRET, token, now=NOW + 59)
    assert (claims.expires, claims.subject, claims.scopes) == (NOW + 60, "alice", frozenset({"upload"}))
    payload = token.split(".")[0]
    assert json.loads(base64.urlsafe_b64decode(payload + "==")) == {"exp": NOW + 60, "sub": "alice", "scope": "upload"}


def test_a_token_without_scope_allows_both():
    claims = verify_token(SECRET, make_token(SECRET, 60, now=NOW), now=NOW)
    assert claims.scopes == {"upload", "download"} and claims.subject is None


def _forge(payload: dict, secret: str = SECRET) -> str:
    import hashlib
    import hmac

    encoded = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    signature = hmac.new(secret.encode(), encoded.encode(), hashlib.sha256).digest()
    return encoded + "." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (make_token(SECRET, 60, now=NOW - 120), "expired"),
        (make_token(SECRET, 60, now=NOW - 60), "expired"),  # exp == now
        (make_token("another-secret-0123456789", 60, now=NOW), "bad signature"),
        ("", "malformed token"),
        ("no-dot-here", "malformed token"),
        (".sig", "malformed token"),
        ("payload.", "malformed token"),
        ("é.x", "malformed token"),
        (_forge({"sub": "alice"}), "no expiry"),
        (_forge({"exp": "tomorrow"}), "no expiry"),
        (_forge({"exp": True}), "no expiry"),
        (_forge({"exp": NOW + 60, "scope": 7}), "malformed claims"),
        (_forge([1, 2]), "no expiry"),  # type: ignore[arg-type]
    ],
)
def test_bad_tokens_are_refused_with_a_reason(token, reason):
    with pytest.raises(InvalidToken, match=reason):
        verify_token(SECRET, token, now=NOW)


def test_a_token_with_a_changed_payload_fails_its_signature():
    token = make_token(SECRET, 60, subject="alice", now=NOW)
    payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "mallory"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(InvalidToken, match="bad signature"):
        verify_token(SECRET, f"{forged}.{signature}", now=NOW)


def test_unknown_scopes_cannot_be_minted():
    with pytest.raises(ValueError, match="scope"):
        make_token(SECRET, 60, scope="admin")


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


@pytest.mark.parametrize(
    ("headers", "challenge"),
    [
        ({}, 'Bearer realm="tus"'),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 'Bearer realm="tus"'),
        ({"Authorization": "Bearer "}, 'Bearer realm="tus"'),
        (bearer("garbage"), 'Bearer realm="tus", error="invalid_token"'),
        (bearer(make_token(SECRET, -1)), 'Bearer realm="tus", error="invalid_token"'),
        (bearer(make_token("not-the-server-secret", 300)), 'Bearer realm="tus", error="invalid_token"'),
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


async def test_tokens_never_reach_the_logs(client, caplog):
    caplog.set_level(logging.DEBUG)
    good = make_token(SECRET, 300, subject="alice")
    bad = make_token("not-the-server-secret", 300)
    await client.post("/", headers={**TUS, **bearer(good), "Upload-Length": "1"})
    await client.post("/", headers={**TUS, **bearer(bad), "Upload-Length": "1"})
    assert good not in caplog.text and bad not in caplog.text
    assert SECRET not in caplog.text


def test_the_cli_mints_tokens_the_server_accepts(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSSERVER_")}
    env["TUSSERVER_AUTH_SECRET"] = SECRET
    out = subprocess.run(
        [sys.executable, "-m", "tusserver", "token", "--ttl", "120", "--subject", "bob", "--scope", "download"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    claims = verify_token(SECRET, out.stdout.strip())
    assert claims.subject == "bob" and claims.scopes == {"download"}
    del env["TUSSERVER_AUTH_SECRET"]
    refused = subprocess.run(
        [sys.executable, "-m", "tusserver", "token"], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert refused.returncode == 2 and "auth_secret" in refused.stderr and refused.stdout == ""
