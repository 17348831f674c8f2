"""Tokens signed by an identity provider: RS256, ES256 and EdDSA keys published as a JWKS
document by a local HTTP server that counts its hits."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tests.tus_client import OCTETS, TUS, sha256
from tusserver import Config, FileStore, create_app
from tusserver.app import AUTH_KEY
from tusserver.auth import JWKS_MAX_AGE, JWKS_MAX_BYTES, JWKS_MIN_INTERVAL, parse_jwks

SECRET = "s3cret-s3cret-s3cret-s3cret-0123"
INVALID = 'Bearer realm="tus", error="invalid_token"'


class Signer:
    """A private key, its `kid` and its public JWK."""

    def __init__(self, alg: str, kid: str | None = None) -> None:
        self.alg = alg
        self.kid = kid or f"{alg}-{uuid.uuid4().hex[:8]}"
        if alg == "RS256":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            algorithm = jwt.algorithms.RSAAlgorithm
        elif alg == "ES256":
            self.private = ec.generate_private_key(ec.SECP256R1())
            algorithm = jwt.algorithms.ECAlgorithm
        else:
            self.private = ed25519.Ed25519PrivateKey.generate()
            algorithm = jwt.algorithms.OKPAlgorithm
        self.jwk = {**algorithm.to_jwk(self.private.public_key(), as_dict=True), "kid": self.kid, "use": "sig"}

    def token(self, ttl: float = 300, *, kid: str | None = None, alg: str | None = None, **claims) -> str:
        body = {"exp": int(time.time() + ttl), "sub": "alice", **claims}
        return jwt.encode(body, self.private, algorithm=alg or self.alg, headers={"kid": kid or self.kid})

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@pytest.fixture(scope="module")
def signers() -> dict[str, Signer]:
    return {alg: Signer(alg) for alg in ("RS256", "ES256", "EdDSA")}


class JwksServer:
    """Serves `document` at /jwks.json and counts the requests."""

    def __init__(self, document: dict) -> None:
        self.document = document
        self.hits = 0
        self.status = 200
        self.delay = 0.0
        self.hang: asyncio.Event | None = None  # set: answer at last
        self.raw: bytes | None = None
        self.chunked = False
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.hang is not None:
            await self.hang.wait()
        body = self.raw if self.raw is not None else json.dumps(self.document).encode()
        if not self.chunked:
            return web.Response(status=self.status, body=body, content_type="application/json")
        response = web.StreamResponse(status=self.status)
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(body), 16 * 1024):
            await response.write(body[start : start + 16 * 1024])
        await response.write_eof()
        return response


@pytest.fixture
async def jwks(aiohttp_server, signers) -> JwksServer:
    server = JwksServer({"keys": [s.jwk for s in signers.values()]})
    app = web.Application()
    app.router.add_get("/jwks.json", server.handle)
    running = await aiohttp_server(app, host="127.0.0.1")
    server.url = str(running.make_url("/jwks.json"))
    return server


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def make_client(aiohttp_client, tmp_path, jwks):
    async def make(**options):
        config = Config(auth_jwks_url=jwks.url, **options)
        app = create_app(config, store=FileStore(str(tmp_path / "uploads")))
        clock = Clock()
        app[AUTH_KEY].jwks.clock = clock  # type: ignore[union-attr]
        client = await aiohttp_client(app)
        client.clock = clock
        client.app_auth = app[AUTH_KEY]
        return client

    return make


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def post(client, token: str, data: bytes = b"") -> web.Response:
    headers = {**TUS, **bearer(token), "Upload-Length": str(len(data))}
    if data:
        headers["Content-Type"] = OCTETS
    return await client.post("/", headers=headers, data=data or None)


def uploads(tmp_path) -> list[str]:
    directory = tmp_path / "uploads"
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
async def test_a_token_signed_by_a_jwks_key_uploads_and_downloads(make_client, jwks, signers, alg):
    client = await make_client()
    token = signers[alg].token()
    data = b"signed by the identity provider"
    resp = await post(client, token, data)
    assert resp.status == 201, await resp.text()
    path = "/" + resp.headers["Location"].rsplit("/", 1)[1]
    resp = await client.get(path, headers=bearer(token))
    assert resp.status == 200 and sha256(await resp.read()) == sha256(data)
    assert jwks.hits == 1  # one fetch served both requests


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
async def test_a_forged_token_with_a_known_kid_is_refused(make_client, jwks, signers, tmp_path, alg):
    client = await make_client()
    forger = Signer(alg, kid=signers[alg].kid)  # same kid, another private key
    resp = await post(client, forger.token())
    assert (resp.status, resp.headers["WWW-Authenticate"]) == (401, INVALID)
    assert "bad signature" in await resp.text()
    assert uploads(tmp_path) == []


async def test_the_key_set_is_cached_and_an_unknown_kid_refetches_it_at_most_every_interval(
    make_client, jwks, signers
):
    client = await make_client()
    rsa_key = signers["RS256"]
    assert (await post(client, rsa_key.token())).status == 201
    assert (await post(client, rsa_key.token())).status == 201
    assert jwks.hits == 1

    # An attacker's random kids: at most one fetch per interval, however many arrive.
    client.clock.now += JWKS_MIN_INTERVAL + 1
    for _ in range(50):
        resp = await post(client, rsa_key.token(kid=uuid.uuid4().hex))
        assert resp.status == 401 and "unknown key id" in await resp.text()
    assert jwks.hits == 2

    # The provider rotates in a new key: a token signed with it works once the interval allows a fetch.
    rotated = Signer("ES256")
    jwks.document = {"keys": [rsa_key.jwk, rotated.jwk]}
    assert (await post(client, rotated.token())).status == 401
    assert jwks.hits == 2
    client.clock.now += JWKS_MIN_INTERVAL + 1
    assert (await post(client, rotated.token())).status == 201
    assert jwks.hits == 3

    # Known kids are served from the cache until it is JWKS_MAX_AGE old, then fetched again.
    client.clock.now += JWKS_MAX_AGE - 1
    assert (await post(client, rotated.token())).status == 201
    assert jwks.hits == 3
    client.clock.now += 2
    assert (await post(client, rotated.token())).status == 201
    assert jwks.hits == 4


async def test_concurrent_requests_share_one_fetch(make_client, jwks, signers):
    client = await make_client()
    jwks.delay = 0.2
    statuses = await asyncio.gather(*(post(client, signers["EdDSA"].token()) for _ in range(20)))
    assert [r.status for r in statuses] == [201] * 20
    assert jwks.hits == 1


def hs256_with_public_key(signer: Signer) -> str:
    """The classic confusion: HS256 with the provider's public key (which anyone has) as the secret."""
    header = {"alg": "HS256", "typ": "JWT", "kid": signer.kid}
    payload = {"exp": int(time.time() + 300), "sub": "mallory", "scope": "admin"}
    algorithm = jwt.algorithms.HMACAlgorithm(jwt.algorithms.HMACAlgorithm.SHA256)
    signing_input = (
        jwt.utils.base64url_encode(json.dumps(header).encode())
        + b"."
        + jwt.utils.base64url_encode(json.dumps(payload).encode())
    )
    signature = algorithm.sign(signing_input, signer.public_pem())
    return (signing_input + b"." + jwt.utils.base64url_encode(signature)).decode()


def unsigned(kid: str) -> str:
    header = jwt.utils.base64url_encode(json.dumps({"alg": "none", "kid": kid}).encode())
    body = jwt.utils.base64url_encode(json.dumps({"exp": int(time.time() + 300), "sub": "mallory"}).encode())
    return (header + b"." + body + b".").decode()


def embedded_jwk() -> str:
    """A token that brings its own key in the header (RFC 7515 `jwk`): never trusted."""
    attacker = Signer("RS256", kid="attacker")
    return jwt.encode(
        {"exp": int(time.time() + 300), "sub": "mallory"},
        attacker.private,
        algorithm="RS256",
        headers={"kid": "attacker", "jwk": attacker.jwk},
    )


@pytest.mark.parametrize("with_secret", [False, True])
@pytest.mark.parametrize(
    ("make_token", "reason"),
    [
        (lambda s: hs256_with_public_key(s["RS256"]), None),
        (lambda s: unsigned(s["RS256"].kid), "algorithm 'none' is not accepted"),
        # The header says RS256 but names the EC key (and the reverse): refused before any check.
        (lambda s: s["RS256"].token(kid=s["ES256"].kid), "does not match the key"),
        (lambda s: s["ES256"].token(kid=s["RS256"].kid), "does not match the key"),
        (lambda s: s["EdDSA"].token(kid=s["ES256"].kid), "does not match the key"),
        (lambda s: s["RS256"].token(alg="RS512"), "algorithm 'RS512' is not accepted"),
        (lambda s: s["RS256"].token(alg="PS256"), "algorithm 'PS256' is not accepted"),
        (lambda s: embedded_jwk(), "unknown key id"),
        (lambda s: s["ES256"].token(ttl=1e12), "too far in the future"),
        (lambda s: s["ES256"].token(ttl=-3600), "expired"),
    ],
)
async def test_algorithm_confusion_and_absurd_tokens_are_401(
    make_client, signers, tmp_path, make_token, reason, with_secret
):
    client = await make_client(**({"auth_secret": SECRET} if with_secret else {}))
    resp = await post(client, make_token(signers))
    assert (resp.status, resp.headers["WWW-Authenticate"]) == (401, INVALID)
    text = await resp.text()
    if reason is None:  # HS256: checked against auth_secret if there is one, else not accepted at all
        reason = "bad signature" if with_secret else "algorithm 'HS256' is not accepted"
    assert reason in text
    assert uploads(tmp_path) == []


async def test_hs256_and_jwks_tokens_work_side_by_side(make_client, signers):
    from tusserver import make_token

    client = await make_client(auth_secret=SECRET)
    assert (await post(client, make_token(SECRET, 60))).status == 201
    assert (await post(client, signers["EdDSA"].token())).status == 201


async def test_issuer_and_audience_apply_to_jwks_tokens(make_client, signers):
    client = await make_client(auth_issuer="https://idp.example", auth_audience="tus")
    key = signers["RS256"]
    assert (await post(client, key.token(iss="https://idp.example", aud="tus"))).status == 201
    resp = await post(client, key.token(iss="https://idp.example", aud="another-service"))
    assert resp.status == 401 and "wrong audience" in await resp.text()
    resp = await post(client, key.token(aud="tus"))
    assert resp.status == 401 and "no iss claim" in await resp.text()


async def test_an_unreachable_jwks_is_503_with_retry_after_and_fetched_at_most_every_interval(
    make_client, jwks, signers, tmp_path
):
    client = await make_client()
    jwks.status = 500
    for _ in range(5):
        resp = await post(client, signers["RS256"].token())
        assert resp.status == 503
        assert resp.headers["Retry-After"] == str(int(JWKS_MIN_INTERVAL))
        assert (await resp.text()).startswith("the keys that verify bearer tokens could not be fetched")
    assert jwks.hits == 1
    jwks.status = 200
    client.clock.now += JWKS_MIN_INTERVAL + 1
    assert (await post(client, signers["RS256"].token())).status == 201
    assert jwks.hits == 2


async def test_a_failed_refresh_keeps_the_keys_already_fetched(make_client, jwks, signers):
    client = await make_client()
    assert (await post(client, signers["ES256"].token())).status == 201
    jwks.status = 502
    client.clock.now += JWKS_MAX_AGE + 1
    assert (await post(client, signers["ES256"].token())).status == 201
    assert jwks.hits == 2


@pytest.mark.parametrize("chunked", [False, True])
async def test_an_oversized_jwks_response_is_not_read_past_the_bound(make_client, jwks, signers, chunked, caplog):
    client = await make_client()
    padding = "x" * JWKS_MAX_BYTES
    jwks.raw = json.dumps({"keys": [signers["RS256"].jwk], "padding": padding}).encode()
    jwks.chunked = chunked
    resp = await post(client, signers["RS256"].token())
    assert resp.status == 503
    assert f"larger than {JWKS_MAX_BYTES} bytes" in caplog.text
    # Just under the bound is fine.
    jwks.raw = json.dumps({"keys": [signers["RS256"].jwk], "p": "x" * (JWKS_MAX_BYTES - 4096)}).encode()
    client.clock.now += JWKS_MIN_INTERVAL + 1
    assert (await post(client, signers["RS256"].token())).status == 201


async def test_a_hanging_jwks_server_times_out(make_client, jwks, signers):
    client = await make_client()
    client.app_auth.jwks.timeout = 0.5
    jwks.hang = asyncio.Event()
    started = time.monotonic()
    resp = await post(client, signers["RS256"].token())
    assert resp.status == 503
    assert time.monotonic() - started < 2.0
    jwks.hang.set()


def test_parse_jwks_keeps_only_usable_signing_keys(signers):
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    weak_jwk = {**jwt.algorithms.RSAAlgorithm.to_jwk(weak.public_key(), as_dict=True), "kid": "weak"}
    p384 = ec.generate_private_key(ec.SECP384R1())
    p384_jwk = {**jwt.algorithms.ECAlgorithm.to_jwk(p384.public_key(), as_dict=True), "kid": "p384"}
    document = {
        "keys": [
            signers["RS256"].jwk,
            {**signers["ES256"].jwk, "use": "enc"},
            {**signers["EdDSA"].jwk, "alg": "RS256"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            weak_jwk,
            p384_jwk,
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            "not a key",
        ]
    }
    assert list(parse_jwks(document)) == [signers["RS256"].kid]
    with pytest.raises(ValueError, match="no usable signing key"):
        parse_jwks({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]})
    for bad in ([], {"keys": "x"}, None):
        with pytest.raises(ValueError, match="keys"):
            parse_jwks(bad)


async def test_a_token_without_kid_uses_the_only_key(aiohttp_server, make_client, jwks, signers):
    jwks.document = {"keys": [signers["EdDSA"].jwk]}
    client = await make_client()
    token = jwt.encode({"exp": int(time.time() + 60)}, signers["EdDSA"].private, algorithm="EdDSA")
    assert (await post(client, token)).status == 201
    jwks.document = {"keys": [signers["EdDSA"].jwk, signers["RS256"].jwk]}
    client.clock.now += JWKS_MAX_AGE + 1
    resp = await post(client, token)
    assert resp.status == 401 and "unknown key id" in await resp.text()
