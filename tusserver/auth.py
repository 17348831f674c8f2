"""Bearer tokens: JWTs (RFC 7519) signed with `auth_secret` (HS256) or by an identity
provider whose public keys a JWKS URL publishes (RS256, ES256, EdDSA).

Claims: `exp` (required), `sub` (who; hooks see it as the request's subject), `scope`
(space-separated: `upload`, `download`, `admin`; absent = `upload download`), `upl` (an upload
id: the token is valid for that upload only, e.g. a download link), and `iss` / `aud` when the
configuration names them. `upload` allows POST, HEAD, PATCH and DELETE; `download` allows GET;
`admin` allows both.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
from yarl import URL

from . import errors
from .config import Config
from .errors import TusError
from .exchange import Exchange
from .load import ConfigError
from .protocol import is_valid_upload_id

log = logging.getLogger("tusserver")

SCOPES = ("upload", "download", "admin")
DEFAULT_SCOPES = frozenset({"upload", "download"})
HMAC_ALGORITHM = "HS256"
# The one algorithm accepted for each kind of JWKS key (kty, crv). Anything else, `none` and
# HS256 with a public key as its secret included, never reaches a signature check.
KEY_ALGORITHMS = {("RSA", None): "RS256", ("EC", "P-256"): "ES256", ("OKP", "Ed25519"): "EdDSA"}
MIN_RSA_BITS = 2048
QUERY_PARAMETER = "token"  # download links: GET /files/<id>?token=<jwt bound to <id>>

JWKS_MAX_AGE = 300.0  # seconds a fetched key set is used before it is fetched again
JWKS_MIN_INTERVAL = 30.0  # seconds between two fetches, whatever unknown `kid`s arrive
JWKS_TIMEOUT = 5.0  # seconds per fetch
JWKS_MAX_BYTES = 256 * 1024
MAX_LEEWAY = 300.0

_CHALLENGE = 'Bearer realm="tus"'


class InvalidToken(Exception):
    """The token is malformed, wrongly signed, expired or not for us (the reason is the message)."""


class KeysUnavailable(Exception):
    """No key set could be fetched from the JWKS URL yet."""


@dataclass(frozen=True)
class Claims:
    expires: float
    subject: str | None
    scopes: frozenset[str]
    upload: str | None = None  # the one upload the token is valid for (`upl`), if bound

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


@dataclass(frozen=True)
class Rules:
    """What a valid token must satisfy besides its signature."""

    issuer: str | None = None
    audience: str | None = None
    leeway: float = 30.0
    max_ttl: float = 30 * 86400.0  # an `exp` further away than this is refused

    @classmethod
    def from_config(cls, config: Config) -> Rules:
        return cls(config.auth_issuer, config.auth_audience, config.auth_leeway, config.auth_max_ttl)


def make_token(
    secret: str,
    ttl: float,
    *,
    subject: str | None = None,
    scope: str | None = None,
    upload: str | None = None,
    issuer: str | None = None,
    audience: str | None = None,
    now: float | None = None,
) -> str:
    """An HS256 JWT valid for `ttl` seconds; `scope` is space-separated words of SCOPES,
    `upload` binds the token to that one upload."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"iat": issued, "exp": issued + math.ceil(ttl)}
    if subject is not None:
        claims["sub"] = subject
    if scope is not None:
        words = scope.split()
        if not words or set(words) - set(SCOPES):
            raise ValueError(f"scope must be made of {', '.join(SCOPES)}, got {scope!r}")
        claims["scope"] = " ".join(words)
    if upload is not None:
        if not is_valid_upload_id(upload):
            raise ValueError(f"{upload!r} is not an upload id")
        claims["upl"] = upload
    if issuer is not None:
        claims["iss"] = issuer
    if audience is not None:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm=HMAC_ALGORITHM)


def token_algorithm(token: str) -> tuple[str, str | None]:
    """The `alg` and `kid` of a token's header (not verified)."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise InvalidToken("malformed token") from None
    alg, kid = header.get("alg"), header.get("kid")
    if not isinstance(alg, str) or (kid is not None and not isinstance(kid, str)):
        raise InvalidToken("malformed token header")
    return alg, kid


def verify_token(secret: str, token: str, rules: Rules | None = None) -> Claims:
    """The claims of an HS256 token signed with `secret`; raises InvalidToken."""
    alg, _ = token_algorithm(token)
    if alg != HMAC_ALGORITHM:
        raise InvalidToken(f"algorithm {alg[:20]!r} is not accepted")
    return decode_token(token, secret, alg, rules or Rules())


_REASONS: list[tuple[type[Exception], str]] = [
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not valid yet"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidIssuedAtError, "bad iat claim"),
    (jwt.exceptions.InvalidSubjectError, "sub must be a string"),
    (jwt.DecodeError, "malformed token"),
]


def decode_token(token: str, key: Any, alg: str, rules: Rules) -> Claims:
    """Check `token`'s signature with `key` under `alg` only, then its claims."""
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[alg],
            audience=rules.audience,
            issuer=rules.issuer,
            leeway=rules.leeway,
            options={"require": ["exp"] + (["iss"] if rules.issuer else []) + (["aud"] if rules.audience else [])},
        )
    except jwt.MissingRequiredClaimError as exc:
        raise InvalidToken(f"no {exc.claim} claim") from None
    except jwt.PyJWTError as exc:
        reason = next((text for kind, text in _REASONS if isinstance(exc, kind)), "invalid token")
        raise InvalidToken(reason) from None
    return _claims(claims, rules)


def _claims(claims: Mapping[str, Any], rules: Rules) -> Claims:
    expires = claims["exp"]
    # PyJWT turns "123" and true into numbers and accepts any far future; neither is a sane expiry.
    if not isinstance(expires, (int, float)) or isinstance(expires, bool) or not math.isfinite(expires):
        raise InvalidToken("exp must be a number")
    if expires - time.time() > rules.max_ttl + rules.leeway:
        raise InvalidToken("exp is too far in the future")
    subject, scope, upload = claims.get("sub"), claims.get("scope"), claims.get("upl")
    if subject is not None and not isinstance(subject, str):
        raise InvalidToken("sub must be a string")
    if scope is not None and not isinstance(scope, str):
        raise InvalidToken("scope must be a space-separated string")
    if upload is not None and not (isinstance(upload, str) and is_valid_upload_id(upload)):
        raise InvalidToken("upl must be an upload id")
    scopes = DEFAULT_SCOPES if scope is None else frozenset(scope.split())
    return Claims(float(expires), subject, scopes, upload)


class JwksKeys:
    """The public keys a JWKS URL publishes, fetched in the background of the event loop,
    kept JWKS_MAX_AGE seconds and fetched again early for an unknown `kid`, but never twice
    within `min_interval` seconds: random `kid`s cannot make us hammer the key server."""

    def __init__(
        self,
        url: str,
        *,
        max_age: float = JWKS_MAX_AGE,
        min_interval: float = JWKS_MIN_INTERVAL,
        timeout: float = JWKS_TIMEOUT,
        max_bytes: int = JWKS_MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.where = str(URL(url).with_user(None).with_query(None))  # for logs: no credentials
        self.max_age = max_age
        self.min_interval = min_interval
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.clock = clock
        self._keys: dict[str | None, jwt.PyJWK] | None = None
        self._fetched_at = -math.inf
        self._attempted_at = -math.inf
        self._fetch: asyncio.Task | None = None
        self._session: aiohttp.ClientSession | None = None

    async def key(self, kid: str | None, alg: str) -> Any:
        """The public key for a token with this `kid` and `alg`; raises InvalidToken or KeysUnavailable."""
        if self._keys is None or self.clock() - self._fetched_at >= self.max_age:
            await self._refresh()
        if self._keys is None:
            raise KeysUnavailable()
        jwk = self._find(kid)
        if jwk is None:
            await self._refresh()
            jwk = self._find(kid)
        if jwk is None:
            raise InvalidToken("unknown key id")
        if jwk.algorithm_name != alg:
            raise InvalidToken(f"algorithm {alg[:20]!r} does not match the key")
        return jwk.key

    def _find(self, kid: str | None) -> jwt.PyJWK | None:
        keys = self._keys or {}
        if kid is None and len(keys) == 1:
            return next(iter(keys.values()))
        return keys.get(kid) if kid is not None else None

    async def _refresh(self) -> None:
        if self._fetch is None or self._fetch.done():
            if self.clock() - self._attempted_at < self.min_interval:
                return
            self._attempted_at = self.clock()
            self._fetch = asyncio.create_task(self._load())
        # Shared by every request that needs it; one request going away does not cancel it.
        await asyncio.shield(self._fetch)

    async def _load(self) -> None:
        try:
            keys = parse_jwks(await self._download())
        except Exception as exc:  # any failure keeps the keys we have; the next try is rate limited
            log.warning("cannot fetch the JWKS from %s: %s", self.where, exc or type(exc).__name__)
            return
        self._keys = keys
        self._fetched_at = self._attempted_at

    async def _download(self) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        async with self._session.get(self.url, allow_redirects=False) as response:
            if response.status != 200:
                raise ValueError(f"HTTP {response.status}")
            if (response.content_length or 0) > self.max_bytes:
                raise ValueError(f"larger than {self.max_bytes} bytes")
            body = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > self.max_bytes:
                    raise ValueError(f"larger than {self.max_bytes} bytes")
        try:
            return json.loads(body)
        except ValueError:
            raise ValueError("not JSON") from None

    async def close(self) -> None:
        if self._fetch is not None and not self._fetch.done():
            self._fetch.cancel()
            await asyncio.gather(self._fetch, return_exceptions=True)
        if self._session is not None:
            await self._session.close()


def parse_jwks(document: Any) -> dict[str | None, jwt.PyJWK]:
    """The usable signing keys of a JWKS document by `kid`; raises ValueError if there is none."""
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError('no "keys" list')
    keys: dict[str | None, jwt.PyJWK] = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        kind = (entry.get("kty"), entry.get("crv") if entry.get("kty") != "RSA" else None)
        alg = KEY_ALGORITHMS.get(kind)  # type: ignore[arg-type]
        if alg is None or entry.get("alg", alg) != alg:
            continue
        try:
            jwk = jwt.PyJWK(entry, alg)
        except Exception:  # a malformed key is skipped like an unsupported one
            continue
        if alg == "RS256" and jwk.key.key_size < MIN_RSA_BITS:
            continue
        kid = entry.get("kid")
        keys[kid if isinstance(kid, str) else None] = jwk
    if not keys:
        raise ValueError("no usable signing key (RS256, ES256 on P-256, EdDSA on Ed25519)")
    return keys


def check_auth_config(config: Config) -> None:
    """Refuse token settings that cannot work; raises ConfigError naming the key."""
    if config.auth_jwks_url is not None and URL(config.auth_jwks_url).scheme not in ("http", "https"):
        raise ConfigError("auth_jwks_url must be an http:// or https:// URL")
    if not 0 <= config.auth_leeway <= MAX_LEEWAY:
        raise ConfigError(f"auth_leeway must be 0 to {MAX_LEEWAY:g} seconds, got {config.auth_leeway}")
    if not config.auth_max_ttl > 0:
        raise ConfigError(f"auth_max_ttl must be positive, got {config.auth_max_ttl}")


class BearerAuth:
    """Checks the bearer token of tus requests (OPTIONS stays open): from `Authorization`, or
    from `?token=` on a GET of the one upload the token is bound to (a download link)."""

    def __init__(self, config: Config, *, jwks: JwksKeys | None = None) -> None:
        check_auth_config(config)
        self.secret = config.auth_secret
        self.rules = Rules.from_config(config)
        if jwks is None and config.auth_jwks_url:
            jwks = JwksKeys(config.auth_jwks_url)
        self.jwks = jwks

    async def verify(self, token: str) -> Claims:
        """The claims of a valid token; raises InvalidToken or KeysUnavailable."""
        alg, kid = token_algorithm(token)
        if alg == HMAC_ALGORITHM and self.secret:
            return decode_token(token, self.secret, alg, self.rules)
        if alg in KEY_ALGORITHMS.values() and self.jwks is not None:
            return decode_token(token, await self.jwks.key(kid, alg), alg, self.rules)
        raise InvalidToken(f"algorithm {alg[:20]!r} is not accepted")

    async def check(self, request: Exchange, method: str) -> None:
        if method == "OPTIONS":
            return
        upload_id = request.route_id
        token, in_url = _request_token(request, upload_id)
        try:
            claims = await self.verify(token)
        except InvalidToken as exc:
            # The reason is for the client; the token itself is never logged.
            raise TusError(
                errors.UNAUTHORIZED, str(exc), headers={"WWW-Authenticate": f'{_CHALLENGE}, error="invalid_token"'}
            ) from None
        except KeysUnavailable:
            retry = str(math.ceil(self.jwks.min_interval)) if self.jwks else "30"
            raise TusError(errors.AUTH_UNAVAILABLE, headers={"Retry-After": retry}) from None
        if in_url and claims.upload is None:
            raise TusError(
                errors.UNAUTHORIZED,
                "a token in the URL must be bound to one upload",
                headers={"WWW-Authenticate": f'{_CHALLENGE}, error="invalid_token"'},
            )
        if claims.upload is not None:
            if upload_id is None:
                raise _insufficient("upload", "the token is bound to one upload")
            if claims.upload != upload_id:
                # As if the upload did not exist: a link reveals nothing about other ids.
                raise TusError(errors.NOT_FOUND)
        needed = "download" if method == "GET" else "upload"
        if method == "GET" and upload_id is None and claims.allows("upload"):
            needed = "upload"  # a listing of one's uploads: for uploaders as for downloaders
        if not claims.allows(needed):
            raise _insufficient(needed, f"{needed} is not in the token's scope")
        request.auth_subject = claims.subject
        request.auth_claims = claims

    async def close(self) -> None:
        if self.jwks is not None:
            await self.jwks.close()


def _request_token(request: Exchange, upload_id: str | None) -> tuple[str, bool]:
    """The token and whether it came from the URL; raises 401 when there is none."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    in_header = scheme.lower() == "bearer" and token.strip() != ""
    # Only a real GET of an upload: a link must not work for a POST that overrides to GET.
    in_url = request.method == "GET" and upload_id is not None and QUERY_PARAMETER in request.query
    if in_header and in_url:
        raise TusError(errors.INVALID_HEADER, "send the token in Authorization or in ?token=, not both")
    if in_header:
        return token.strip(), False
    if in_url and request.query[QUERY_PARAMETER]:
        return request.query[QUERY_PARAMETER], True
    raise TusError(errors.UNAUTHORIZED, headers={"WWW-Authenticate": _CHALLENGE})


def _insufficient(scope: str, detail: str) -> TusError:
    return TusError(
        errors.INSUFFICIENT_SCOPE,
        detail,
        headers={"WWW-Authenticate": f'{_CHALLENGE}, error="insufficient_scope", scope="{scope}"'},
    )


def auth_enabled(config: Config) -> bool:
    """Whether requests need a bearer token."""
    return bool(config.auth_secret or config.auth_jwks_url)
