"""Where an upload lives, as the client must see it (prefix, proxy, public URL)."""

from __future__ import annotations

import re

from aiohttp import web

from .config import Config

_FORWARDED_PAIR = re.compile(r'(?i)\b(proto|host)=("[^"]*"|[^;,\s]*)')


def collection_path(request: web.Request) -> str:
    """The path that uploads are created under, from a request to it or to an upload."""
    path = request.path
    if "upload_id" in request.match_info:
        path = path[: path.rstrip("/").rfind("/") + 1]
    return path if path.endswith("/") else path + "/"


def request_origin(request: web.Request, config: Config) -> str:
    """scheme://host that the client used, honouring a trusted proxy's headers."""
    if config.public_url:
        return config.public_url.rstrip("/")
    scheme, host = request.scheme, request.host
    if config.behind_proxy:
        forwarded = request.headers.get("Forwarded")
        if forwarded:
            first = forwarded.split(",", 1)[0]
            for key, value in _FORWARDED_PAIR.findall(first):
                value = value.strip('"')
                if key.lower() == "proto" and value:
                    scheme = value
                elif key.lower() == "host" and value:
                    host = value
        else:
            scheme = request.headers.get("X-Forwarded-Proto", scheme).split(",")[0].strip()
            host = request.headers.get("X-Forwarded-Host", host).split(",")[0].strip()
    return f"{scheme}://{host}"


def upload_location(request: web.Request, config: Config, upload_id: str) -> str:
    path = collection_path(request) + upload_id
    if config.relative_location:
        return path
    return request_origin(request, config) + path
