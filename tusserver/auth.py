"""Bearer tokens signed with an operator's secret (HMAC-SHA256), for setups without a hook service.

A token is `<payload>.<signature>`, both unpadded base64url:
  payload   = JSON object: "exp" (expiry, Unix seconds, required), "sub" (who, optional),
              "scope" (optional: "upload", "download" or "upload download"; absent = both)
  signature = HMAC-SHA256(secret, <payload> as it appears in the token)
"upload" allows POST, HEAD, PATCH and DELETE; "download" allows GET.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

from aiohttp import web

from . import errors
from .errors import TusError
from .keys import AUTH_SUBJECT

SCOPES = ("upload", "download")
_CHALLENGE = 'Bearer realm="tus"'


class InvalidToken(Exception):
    """The token is malformed, wrongly signed or expired (the reason is the message)."""


@dataclass(frozen=True)
class Claims:
    expires: float
    subject: str | None
    scopes: frozenset[str]


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: str, payload: str) -> str:
    return _b64encode(hmac.new(secret.encode(), payload.encode("ascii"), hashlib.sha256).digest())


def make_token(
    secret: str, ttl: float, *, subject: str | None = None, scope: str | None = None, now: float | None = None
) -> str:
    """A token valid for `ttl` seconds; `scope` is "upload", "download" or both, space-separated."""
    claims: dict[str, object] = {"exp": int((time.time() if now is None else now) + ttl)}
    if subject is not None:
        claims["sub"] = subject
    if scope is not None:
        unknown = set(scope.split()) - set(SCOPES)
        if unknown or not scope.split():
            raise ValueError(f"scope must be made of {' and '.join(SCOPES)}, got {scope!r}")
        claims["scope"] = scope
    payload = _b64encode(json.dumps(claims, separators=(",", ":")).encode())
    return f"{payload}.{_sign(secret, payload)}"


def verify_token(secret: str, token: str, now: float | None = None) -> Claims:
    """The token's claims; raises InvalidToken."""
    payload, dot, signature = token.partition(".")
    if not dot or not payload or not signature:
        raise InvalidToken("malformed token")
    try:
        expected = _sign(secret, payload)
    except UnicodeEncodeError:
        raise InvalidToken("malformed token") from None
    if not hmac.compare_digest(expected.encode(), signature.encode("ascii", "replace")):
        raise InvalidToken("bad signature")
    try:
        claims = json.loads(_b64decode(payload))
    except (ValueError, binascii.Error):
        raise InvalidToken("malformed payload") from None
    expires = claims.get("exp") if isinstance(claims, dict) else None
    if not isinstance(expires, (int, float)) or isinstance(expires, bool):
        raise InvalidToken("no expiry")
    if expires <= (time.time() if now is None else now):
        raise InvalidToken("expired")
    subject = claims.get("sub")
    scope = claims.get("scope", " ".join(SCOPES))
    if not isinstance(scope, str) or (subject is not None and not isinstance(subject, str)):
        raise InvalidToken("malformed claims")
    return Claims(float(expires), subject, frozenset(scope.split()))


class BearerAuth:
    """Checks `Authorization: Bearer <token>` on tus requests (OPTIONS stays open)."""

    def __init__(self, secret: str) -> None:
        self.secret = secret

    def check(self, request: web.Request, method: str) -> None:
        if method == "OPTIONS":
            return
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise TusError(errors.UNAUTHORIZED, headers={"WWW-Authenticate": _CHALLENGE})
        try:
            claims = verify_token(self.secret, token.strip())
        except InvalidToken as exc:
            # The reason is for the client; the token itself is never logged.
            raise TusError(
                errors.UNAUTHORIZED,
                str(exc),
                headers={"WWW-Authenticate": f'{_CHALLENGE}, error="invalid_token"'},
            ) from None
        needed = "download" if method == "GET" else "upload"
        if needed not in claims.scopes:
            raise TusError(
                errors.INSUFFICIENT_SCOPE,
                f"{needed} is not in the token's scope",
                headers={"WWW-Authenticate": f'{_CHALLENGE}, error="insufficient_scope", scope="{needed}"'},
            )
        request[AUTH_SUBJECT] = claims.subject
