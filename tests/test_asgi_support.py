"""The two-door test harness itself: the ASGI twin serves the same service, refuses what
it cannot translate, and records what the aiohttp recording middleware records."""

from __future__ import annotations

import pytest
from aiohttp import web
from multidict import CIMultiDict

from tests.asgi_support import RecordRequests, UvicornTestServer, asgi_server_for, service_keys
from tusserver import Config, create_app
from tusserver.app import SERVICE_KEY


def test_the_asgi_twin_offers_the_keys_of_the_aiohttp_app_with_the_same_objects():
    app = create_app(Config())
    keys = service_keys(app[SERVICE_KEY])
    assert set(keys) == set(app)
    assert all(keys[key] is app[key] for key in app)


async def other(request: web.Request) -> web.Response:
    return web.Response()


def test_an_app_with_a_middleware_of_its_own_has_no_asgi_twin():
    @web.middleware
    async def extra(request, handler):
        return await handler(request)

    root = web.Application(middlewares=[extra])
    root.add_subapp("/files/", create_app(Config()))
    with pytest.raises(TypeError, match="aiohttp_only"):
        asgi_server_for(root)
    plain = web.Application()
    plain.add_subapp("/files/", create_app(Config()))
    plain.router.add_get("/other", other)
    with pytest.raises(TypeError, match="only mounted create_app apps"):
        asgi_server_for(plain)


async def test_recorded_requests_carry_method_path_status_headers_and_body_bytes(aiohttp_client):
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    seen = []
    client = await aiohttp_client(UvicornTestServer(RecordRequests(app, lambda *r: seen.append(r))))
    async with client.patch("/files/x%20y", data=b"x" * 100_000, headers={"Upload-Offset": "7"}) as resp:
        assert resp.status == 204
    ((method, path, status, headers, bytes_in),) = seen
    assert (method, path, status, bytes_in) == ("PATCH", "/files/x y", 204, 100_000)
    assert isinstance(headers, CIMultiDict) and headers["upload-offset"] == "7"
