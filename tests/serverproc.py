"""A real server process for tests that signal or kill the server: `python -m tusserver`
(the aiohttp front door), or uvicorn serving `tusserver.asgi:from_env` (the ASGI door)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

from tests.conftest import free_port
from tusserver.load import ENV_PREFIX, field_specs

MiB = 1 << 20


class ServerProcess:
    """`python -m tusserver` (door "aiohttp") or `uvicorn --factory tusserver.asgi:from_env`
    (door "asgi", the same settings as TUSSERVER_* variables) on a free loopback port,
    serving /files/; its log lines are collected."""

    def __init__(self, *args: str, door: str = "aiohttp") -> None:
        self.port = free_port()
        self.door = door
        self.args = ["--base-path", "/files/", *args]
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self._reader: asyncio.Task | None = None

    @property
    def stopped_by_sigterm(self) -> int:
        """The exit status after a graceful stop on SIGTERM: the tusserver command exits 0;
        uvicorn, once shut down, raises the signal again with its default action."""
        return 0 if self.door == "aiohttp" else -signal.SIGTERM

    @property
    def stopped_line(self) -> str:
        """What the process logs once the app has stopped (uvicorn's: after the lifespan shutdown)."""
        return "tusserver stopped" if self.door == "aiohttp" else "Application shutdown complete."

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/files/"

    async def start(self) -> ServerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        env["PYTHONUNBUFFERED"] = "1"
        if self.door == "aiohttp":
            command = ["-m", "tusserver", "--host", "127.0.0.1", "--port", str(self.port), *self.args]
            ready = "listening on"
        else:
            command = [
                "-m", "uvicorn", "--factory", "tusserver.asgi:from_env",
                "--host", "127.0.0.1", "--port", str(self.port), "--http", "httptools", "--lifespan", "on",
            ]  # fmt: skip
            env.update(settings_env(self.args))
            ready = "Uvicorn running on"
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *command,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        self._reader = asyncio.create_task(self._collect())
        await self.wait_for_log(ready)
        return self

    async def _collect(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.lines.append(line.decode(errors="replace"))

    async def wait_for_log(self, text: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines:
                if text in line:
                    return line
            if self.proc is not None and self.proc.returncode is not None and self._reader.done():
                raise AssertionError(f"server exited ({self.proc.returncode}) without logging {text!r}:\n{self.log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"server never logged {text!r}:\n{self.log}")
            await asyncio.sleep(0.01)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._reader is not None:
            await self._reader
        return code

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
        if self._reader is not None:
            await self._reader


def settings_env(args: list[str]) -> dict[str, str]:
    """`tusserver` flags as the TUSSERVER_* variables that set the same Config fields."""
    specs = {spec.flag: spec for spec in field_specs()}
    env: dict[str, str] = {}
    rest = list(args)
    while rest:
        flag = rest.pop(0)
        negated = "--" + flag.removeprefix("--no-")
        if flag.startswith("--no-") and negated in specs:
            env[specs[negated].env] = "false"
            continue
        spec = specs[flag]
        env[spec.env] = "true" if spec.kind is bool else rest.pop(0)
    return env


def store_args(kind: str, tmp_path, moto_endpoint: str | None = None, bucket: str | None = None) -> list[str]:
    """Flags for a server on the file store or on S3 (5 MiB parts), over storage that
    survives a restart."""
    if kind == "file":
        return ["--store", "file", "--file-dir", str(tmp_path / "uploads")]
    return [
        "--store",
        "s3",
        "--s3-bucket",
        bucket or "",
        "--s3-endpoint",
        moto_endpoint or "",
        "--s3-path-style",
        "--s3-part-size",
        str(5 * MiB),
        "--temp-dir",
        str(tmp_path / "spool"),
    ]
