"""Shared fixtures: a moto S3 server in its own process, a `store` fixture that runs a test
once per store (disk and S3), and the front doors: a module marked `both_doors` runs each
test that serves tusserver once through aiohttp and once through ASGI (uvicorn)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

# moto accepts any credentials; the S3 store reads them from the standard AWS chain.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

MiB = 1 << 20
DOORS = ("aiohttp", "asgi")


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", "both_doors: serve tusserver through each front door, aiohttp and ASGI (uvicorn), in turn"
    )
    config.addinivalue_line(
        "markers", "aiohttp_only(reason): in a both_doors module, a test only the aiohttp front door can run"
    )


def pytest_generate_tests(metafunc) -> None:
    """Parametrize `front_door` for the tests of both_doors modules that serve tusserver
    (they use it through aiohttp_client, serve_process or make_target)."""
    if "front_door" not in metafunc.fixturenames:
        return
    both = metafunc.definition.get_closest_marker("both_doors") is not None
    only = metafunc.definition.get_closest_marker("aiohttp_only")
    if only is not None:
        assert only.args, f"{metafunc.definition.nodeid}: aiohttp_only needs its reason"
    doors = list(DOORS) if both and only is None else ["aiohttp"]
    if "handler_cancel" in metafunc.fixturenames:
        # aiohttp has two disconnect modes; uvicorn has one: it never cancels the app call.
        modes = [(door, cancel) for door in doors for cancel in ((True, False) if door == "aiohttp" else (False,))]
        ids = [door if door != "aiohttp" else f"{door}-{'cancelled' if c else 'not-cancelled'}" for door, c in modes]
        metafunc.parametrize(("front_door", "handler_cancel"), modes, ids=ids)
    elif both:
        metafunc.parametrize("front_door", doors)


@pytest.fixture
def front_door() -> str:
    """The front door tusserver is served through; parametrized in both_doors modules."""
    return "aiohttp"


@pytest.fixture
def handler_cancel() -> bool:
    """Whether a dropped connection cancels its handler (aiohttp's test server does)."""
    return True


@pytest.fixture
def aiohttp_client(aiohttp_client, front_door):
    """pytest-aiohttp's aiohttp_client; on the ASGI door an aiohttp app from create_app (or
    a bare app mounting such apps) is served by its ASGI twin under uvicorn instead."""
    if front_door == "aiohttp":
        return aiohttp_client
    from tests.asgi_support import asgi_server_for

    async def through_asgi(target, *, server_kwargs=None, **kwargs):
        return await aiohttp_client(asgi_server_for(target, **(server_kwargs or {})), **kwargs)

    return through_asgi


@pytest.fixture
def serve_process(front_door):
    """ServerProcess for the front door: `python -m tusserver`, or uvicorn with tusserver.asgi:from_env."""
    from functools import partial

    from tests.serverproc import ServerProcess

    return partial(ServerProcess, door=front_door)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def start_moto(env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    moto = shutil.which("moto_server") or os.path.join(os.path.dirname(sys.executable), "moto_server")
    proc = subprocess.Popen(
        [moto, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    wait_for_port(port)
    return proc, f"http://127.0.0.1:{port}"


def stop_process(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def moto_endpoint():
    """URL of a moto S3 server running as a separate process for the whole session."""
    proc, url = start_moto()
    yield url
    stop_process(proc)


def make_bucket(endpoint: str) -> str:
    name = f"t-{uuid.uuid4().hex[:20]}"
    req = urllib.request.Request(f"{endpoint}/{name}", method="PUT")
    urllib.request.urlopen(req).close()
    return name


@pytest.fixture
def bucket(moto_endpoint) -> str:
    """A fresh, empty bucket for one test."""
    return make_bucket(moto_endpoint)


@pytest.fixture(params=["file", "s3"])
def store_kind(request) -> str:
    return request.param


@pytest.fixture
def store_factory(store_kind, tmp_path, request):
    """Returns a function that builds a new store instance over the same storage, so a
    test can simulate a restart or a second server instance."""
    if store_kind == "file":
        from tusserver.stores.file import FileStore

        directory = tmp_path / "uploads"
        return lambda **kw: FileStore(str(directory))

    from tusserver.stores.s3 import S3Store

    endpoint = request.getfixturevalue("moto_endpoint")
    bucket = make_bucket(endpoint)
    spool = tmp_path / "spool"
    spool.mkdir()

    def build(**kw):
        options = {"endpoint_url": endpoint, "path_style": True, "temp_dir": str(spool), **kw}
        return S3Store(bucket, **options)

    build.bucket = bucket  # type: ignore[attr-defined]
    build.endpoint = endpoint  # type: ignore[attr-defined]
    build.temp_dir = str(spool)  # type: ignore[attr-defined]
    return build


@pytest.fixture
def server_args(store_kind, tmp_path, request) -> list[str]:
    """Flags for a real `python -m tusserver` process over storage that survives a restart."""
    from tests.serverproc import store_args

    if store_kind == "file":
        return store_args("file", tmp_path)
    endpoint = request.getfixturevalue("moto_endpoint")
    return store_args("s3", tmp_path, endpoint, request.getfixturevalue("bucket"))


@pytest.fixture
def servers(tmp_path):
    """Start real `tusserver` processes (tests.test_cli.Server) in tmp_path; all are killed after."""
    from tests.test_cli import Server

    started: list[Server] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Server:
        server = Server(tmp_path, *args, env=env)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


@pytest.fixture(scope="module")
def redis_url():
    """A redis-server of the module's own on 127.0.0.1, stopped after its tests."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server; scripts/test does it)")
    port = free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port)
    yield f"redis://127.0.0.1:{port}/0"
    stop_process(proc)
