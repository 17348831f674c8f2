"""/metrics, /healthz and /readyz on their own address (ops_port), off the main listener."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.conftest import free_port
from tests.serverproc import ServerProcess
from tests.tus_client import TUS


async def status_and_server(session: aiohttp.ClientSession, url: str) -> tuple[int, str, str]:
    async with session.get(url) as resp:
        return resp.status, resp.headers.get("Server", ""), await resp.text()


@pytest.mark.parametrize("base_path", ["/files/", "/"])
async def test_ops_port_serves_the_ops_endpoints_and_the_main_listener_does_not(tmp_path, base_path):
    ops_port = free_port()
    server = ServerProcess("--store", "file", "--file-dir", str(tmp_path / "up"), "--ops-port", str(ops_port))
    server.args[server.args.index("--base-path") + 1] = base_path
    main = f"http://127.0.0.1:{server.port}"
    ops = f"http://127.0.0.1:{ops_port}"
    try:
        await server.start()
        line = await server.wait_for_log("ops endpoints on")
        assert f"http://127.0.0.1:{ops_port}/" in line
        async with aiohttp.ClientSession() as session:
            async with session.post(main + base_path, headers={**TUS, "Upload-Length": "0"}) as resp:
                assert resp.status == 201
            status, name, text = await status_and_server(session, ops + "/metrics")
            assert (status, name) == (200, "tusserver")
            assert 'tusserver_requests_total{method="POST",status="201"} 1.0' in text
            assert await status_and_server(session, ops + "/healthz") == (200, "tusserver", "ok\n")
            assert await status_and_server(session, ops + "/readyz") == (200, "tusserver", "ready\n")
            for path in ("/metrics", "/healthz", "/readyz"):
                status, name, text = await status_and_server(session, main + path)
                assert status in (404, 405) and "tusserver_" not in text and text not in ("ok\n", "ready\n"), path
                assert name == "tusserver"
            # The ops listener serves nothing else.
            assert (await status_and_server(session, ops + base_path))[0] == 404
    finally:
        await server.stop()


async def test_without_ops_port_the_main_listener_serves_them(tmp_path):
    server = ServerProcess("--store", "file", "--file-dir", str(tmp_path / "up"))
    try:
        await server.start()
        async with aiohttp.ClientSession() as session:
            assert await status_and_server(session, server.url.replace("/files/", "/healthz")) == (
                200,
                "tusserver",
                "ok\n",
            )
    finally:
        await server.stop()
    assert "ops endpoints on" not in server.log


async def test_a_malformed_request_gets_no_version_either(tmp_path):
    server = ServerProcess("--store", "file", "--file-dir", str(tmp_path / "up"))
    try:
        await server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(4096), 5)
        writer.close()
    finally:
        await server.stop()
    head = answer.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0].split(b" ")[1] == b"400"
    assert b"Server: tusserver" in head and not any(b"aiohttp" in line or b"Python" in line for line in head)


async def test_an_ops_port_in_use_stops_the_start(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = ServerProcess("--store", "file", "--file-dir", str(tmp_path / "up"), "--ops-port", str(port))
        try:
            with pytest.raises(AssertionError, match="server exited"):
                await server.start()
            assert server.proc.returncode == 1 and "cannot start" in server.log
        finally:
            await server.stop()
