"""Where an upload lives, as the client must see it (prefix, proxy, public URL)."""

from __future__ import annotations

import re
from collections.abc import Mapping

from .config import Config
from .exchange import Exchange

_FORWARDED_PAIR = re.compile(r'(?i)(?:^|;)\s*(proto|host)=("[^"]*"|[^;,\s]*)')
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
# A DNS name, IPv4 address or [IPv6] literal, then an optional port; nothing else.
_HOST = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*\.?|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{{1,5}}))?")


def collection_path(request: Exchange) -> str:
    """The path that uploads are created under, from a request to it or to an upload."""
    return request.collection_path


def request_origin(request: Exchange, config: Config) -> str:
    """scheme://host that the client used, honouring a trusted proxy's headers."""
    if config.public_url:
        return config.public_url.rstrip("/")
    scheme, host = request.scheme, request.host
    if config.behind_proxy:
        proto, forwarded_host = forwarded_origin(request.headers)
        scheme = proto or scheme
        host = forwarded_host or host
    return f"{scheme}://{host}"


def forwarded_origin(headers: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(scheme, host) from `Forwarded` (first hop), else `X-Forwarded-Proto`/`-Host`.
    A value that is not a plain http(s) scheme or host[:port] is ignored (None)."""
    proto = host = None
    forwarded = headers.get("Forwarded")
    if forwarded:
        first = forwarded.split(",", 1)[0]
        for key, value in _FORWARDED_PAIR.findall(first):
            value = value[1:-1] if value.startswith('"') and value.endswith('"') and len(value) > 1 else value
            if key.lower() == "proto":
                proto = value
            else:
                host = value
    else:
        proto = _first(headers.get("X-Forwarded-Proto"))
        host = _first(headers.get("X-Forwarded-Host"))
    proto = proto.lower() if proto and proto.lower() in ("http", "https") else None
    host = host if host and _valid_host(host) else None
    return proto, host


def _first(value: str | None) -> str | None:
    return None if value is None else value.split(",", 1)[0].strip()


def _valid_host(host: str) -> bool:
    match = _HOST.fullmatch(host)
    if match is None:
        return False
    port = match.group("port")
    return port is None or 0 < int(port) <= 65535


def upload_location(request: Exchange, config: Config, upload_id: str) -> str:
    path = collection_path(request) + upload_id
    if config.relative_location:
        return path
    return request_origin(request, config) + path
