"""A PATCH sent slowly (a large file on a slow link), and `tusserver cleanup` run as its
own process meanwhile, as cron would."""

from __future__ import annotations

import asyncio
import sys
import time

from tests.tus_client import OCTETS, TUS

KiB = 1 << 10


async def trickle(data: bytes, rate: int, chunk: int = 10 * KiB):
    """Yield `data` at `rate` bytes per second."""
    started = time.monotonic()
    for sent in range(0, len(data), chunk):
        await asyncio.sleep(max(0.0, started + sent / rate - time.monotonic()))
        yield data[sent : sent + chunk]


async def trickle_patch(client, path: str, offset: int, data: bytes, rate: int):
    """One PATCH with a Content-Length, its body sent at `rate` bytes per second."""
    headers = {**TUS, "Upload-Offset": str(offset), "Content-Type": OCTETS, "Content-Length": str(len(data))}
    return await client.patch(path, data=trickle(data, rate), headers=headers)


def cleanup_args(store_kind: str, store_factory, tmp_path) -> list[str]:
    """`tusserver cleanup` flags for the storage of conftest's `store_factory`."""
    if store_kind == "file":
        return ["--file-dir", str(tmp_path / "uploads")]
    return [
        "--store",
        "s3",
        "--s3-bucket",
        store_factory.bucket,
        "--s3-endpoint",
        store_factory.endpoint,
        "--s3-path-style",
        "--temp-dir",
        store_factory.temp_dir,
    ]


class CleanupRuns:
    """`python -m tusserver cleanup <args>` run again and again until stopped; keeps when
    each run started and its exit status."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.runs: list[tuple[float, float, int, str]] = []  # (started, ended, returncode, stderr)
        self._task: asyncio.Task | None = None

    def start(self) -> CleanupRuns:
        self._task = asyncio.create_task(self._loop())
        return self

    async def _loop(self) -> None:
        while True:
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tusserver",
                "cleanup",
                *self.args,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                _, stderr = await proc.communicate()
            except asyncio.CancelledError:
                proc.kill()
                await proc.wait()
                raise
            self.runs.append((started, time.monotonic(), proc.returncode or 0, stderr.decode(errors="replace")))

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    def completed_between(self, start: float, end: float) -> int:
        """How many runs started after `start` and ended before `end` (time.monotonic())."""
        failed = [err for _, _, code, err in self.runs if code != 0]
        assert not failed, failed[0]
        return sum(1 for started, ended, _, _ in self.runs if start < started and ended < end)
