"""Real server processes for the embedding and proxy tests: `uvicorn` serving an ASGI app
(a README example, or `--factory tusserver.asgi:from_env`), or the `tusserver` command,
each configured by arguments and TUSSERVER_* variables."""

from __future__ import annotations

import asyncio
import os
import sys
import urllib.request
from pathlib import Path

from tusclient.client import TusClient

from tests.conftest import free_port
from tests.serverproc import ServerProcess

ROOT = Path(__file__).resolve().parent.parent


def server_env(**settings: str) -> dict[str, str]:
    """This environment without any TUSSERVER_* variable, plus `settings`; the tusserver
    package imported by the child is this checkout's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSSERVER_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return {**env, **settings}


class Process(ServerProcess):
    """A server process on a free loopback port; its stderr lines are collected, and it
    counts as started once it logged `ready`."""

    def __init__(self, argv: list[str], ready: str, env: dict[str, str], cwd: Path | None = None) -> None:
        self.port = free_port()
        self.argv = [arg.replace("{port}", str(self.port)) for arg in argv]
        self.ready = ready
        self.env = env
        self.cwd = cwd
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self._reader: asyncio.Task | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Process:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
            cwd=self.cwd,
        )
        self._reader = asyncio.create_task(self._collect())
        try:
            await self.wait_for_log(self.ready)
        except BaseException:
            await self.stop()  # not left running when it never came up
            raise
        return self


def uvicorn(app: str, env: dict[str, str], *, factory: bool = False, cwd: Path | None = None) -> Process:
    """`python -m uvicorn [--factory] APP` on 127.0.0.1 and a free port."""
    argv = [sys.executable, "-m", "uvicorn", *(["--factory"] if factory else []), app]
    argv += ["--host", "127.0.0.1", "--port", "{port}"]
    return Process(argv, "Uvicorn running on", env, cwd)


def tusserver_command(env: dict[str, str]) -> Process:
    """`python -m tusserver` on 127.0.0.1 and a free port, configured by `env`."""
    return Process([sys.executable, "-m", "tusserver", "--host", "127.0.0.1", "--port", "{port}"], "listening on", env)


def head_offset(url: str) -> str:
    """The Upload-Offset a HEAD of `url` answers (blocking; for tuspy's thread)."""
    request = urllib.request.Request(url, method="HEAD", headers={"Tus-Resumable": "1.0.0"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        return response.headers["Upload-Offset"]


def tuspy_upload(endpoint: str, path: Path, chunk: int) -> tuple[str, list[str]]:
    """tuspy uploads `path` in `chunk`-byte PATCHes: one chunk, a HEAD, then a new uploader
    resumes from the URL alone and sends the rest; a HEAD again. Blocking (run it in a thread).
    Returns the upload's URL and the two offsets the HEADs reported."""
    client = TusClient(endpoint)
    first = client.uploader(str(path), chunk_size=chunk, metadata={"filename": path.name})
    first.upload(stop_at=chunk)
    offsets = [head_offset(first.url)]
    rest = client.uploader(str(path), chunk_size=chunk, url=first.url)
    assert rest.offset == chunk
    rest.upload()
    offsets.append(head_offset(first.url))
    return first.url, offsets
