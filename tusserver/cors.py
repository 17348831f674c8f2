"""CORS for browser clients (Uppy, tus-js-client in a page on another origin).

Allowed origins come from `Config.cors_origins`; each entry is one of:
- `*`: any origin;
- an exact origin, `scheme://host[:port]` (compared case-insensitively);
- `re:PATTERN`: a Python regular expression that must match the WHOLE origin
  (`re.fullmatch`), e.g. `re:https://[a-z0-9-]+\\.example\\.com`.

An allowed origin gets `Access-Control-*` headers on every response, errors and
downloads included; any other origin gets none, so the browser refuses it.
"""

from __future__ import annotations

import re

from multidict import CIMultiDict

from .auth import auth_enabled
from .config import Config
from .exchange import Exchange, Response
from .load import ConfigError

ALLOWED_METHODS = ("POST", "GET", "HEAD", "PATCH", "DELETE", "OPTIONS", "PUT")  # PUT: a draft creation

# Every header a tus client may send (core protocol and all extensions).
TUS_REQUEST_HEADERS = (
    "Tus-Resumable",
    "Upload-Length",
    "Upload-Offset",
    "Upload-Metadata",
    "Upload-Defer-Length",
    "Upload-Concat",
    "Upload-Checksum",
    "Content-Type",
    "X-HTTP-Method-Override",
    "X-Requested-With",
    # The IETF draft's (ietf.py): tus-js-client's protocol 'ietf-draft-0x' sends them.
    "Upload-Complete",
    "Upload-Incomplete",
    "Upload-Draft-Interop-Version",
    "Content-Disposition",
)

# Every header a tus client must be able to read from a response.
EXPOSED_HEADERS = (
    "Location",
    "Upload-Offset",
    "Upload-Length",
    "Upload-Metadata",
    "Upload-Defer-Length",
    "Upload-Expires",
    "Upload-Concat",
    "Tus-Version",
    "Tus-Resumable",
    "Tus-Extension",
    "Tus-Max-Size",
    "Tus-Checksum-Algorithm",
    "Upload-Complete",
    "Upload-Incomplete",
    "Upload-Limit",
    "Upload-Draft-Interop-Version",
)

REGEX_PREFIX = "re:"


class OriginPolicy:
    """Decides whether an `Origin` header value is allowed."""

    def __init__(self, origins: list[str]) -> None:
        self.any = "*" in origins
        self.exact = {o.rstrip("/").lower() for o in origins if o != "*" and not o.startswith(REGEX_PREFIX)}
        self.patterns = []
        for entry in origins:
            if entry.startswith(REGEX_PREFIX):
                try:
                    self.patterns.append(re.compile(entry[len(REGEX_PREFIX) :]))
                except re.error as exc:
                    raise ValueError(f"cors_origins: bad regular expression {entry!r}: {exc}") from None

    def allows(self, origin: str) -> bool:
        if self.any or origin.lower() in self.exact:
            return True
        return any(p.fullmatch(origin) for p in self.patterns)


class Cors:
    """The CORS layer of one app: `preflight` answers preflights, `grant` adds the grant
    to every answer."""

    def __init__(self, config: Config) -> None:
        if "*" in config.cors_origins and config.cors_credentials:
            # The grant would then echo any origin with credentials: every site could read
            # what a logged-in user can.
            raise ConfigError(
                "cors_origins '*' cannot be combined with cors_credentials = true; list the allowed origins"
            )
        self.policy = OriginPolicy(config.cors_origins)
        self.credentials = config.cors_credentials
        self.echo_origin = config.cors_credentials or not self.policy.any
        self.preflight_headers = {
            "Access-Control-Allow-Methods": ", ".join(ALLOWED_METHODS),
            "Access-Control-Allow-Headers": ", ".join(
                # Bearer tokens travel in Authorization, which browsers must be allowed to send.
                _unique(
                    TUS_REQUEST_HEADERS, ["Authorization"] if auth_enabled(config) else [], config.cors_allow_headers
                )
            ),
            "Access-Control-Max-Age": str(config.cors_max_age),
        }
        self.exposed = ", ".join(EXPOSED_HEADERS)

    def preflight(self, request: Exchange) -> Response | None:
        """The answer to a CORS preflight; None for any other request. Answered before tus
        checks: a preflight carries no Tus-Resumable."""
        if not is_preflight(request):
            return None
        response = Response(204)
        if self.policy.allows(request.headers["Origin"]):
            response.headers.update(self.preflight_headers)
        return response

    def grant(self, request: Exchange, headers: CIMultiDict[str]) -> None:
        """Add the grant for an allowed origin to any answer's headers."""
        # The grant depends on Origin, so caches must key on it, whatever the outcome.
        _add_vary(headers, "Origin")
        origin = request.headers.get("Origin")
        if origin is None or not self.policy.allows(origin):
            return
        headers["Access-Control-Allow-Origin"] = origin if self.echo_origin else "*"
        if self.credentials:
            headers["Access-Control-Allow-Credentials"] = "true"
        headers["Access-Control-Expose-Headers"] = self.exposed


def is_preflight(request: Exchange) -> bool:
    return (
        request.method == "OPTIONS"
        and "Origin" in request.headers
        and "Access-Control-Request-Method" in request.headers
    )


def _unique(*groups: tuple[str, ...] | list[str]) -> list[str]:
    seen: set[str] = set()
    names = []
    for group in groups:
        for name in group:
            if name.lower() not in seen:
                seen.add(name.lower())
                names.append(name)
    return names


def _add_vary(headers: CIMultiDict[str], name: str) -> None:
    current = headers.get("Vary")
    if current is None:
        headers["Vary"] = name
    elif name.lower() not in (v.strip().lower() for v in current.split(",")):
        headers["Vary"] = f"{current}, {name}"
