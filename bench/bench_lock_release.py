"""Lock release latency: how long a HEAD waits when a PATCH of the same upload hangs
mid-body (tus-js-client after a network drop). The HEAD asks the PATCH to let go; the
PATCH stores what it received (disk file, or S3 parts and .part) and releases.

    python bench/bench_lock_release.py [--rounds 10] [--no-redis]

Cases: file store; S3 (moto server) with a 1 MiB tail to flush as .part, and with a
whole 5 MiB part still to upload plus a tail; the same S3 case across two instances
with the Redis locker (HEAD on instance B, PATCH hanging on instance A). Each round
uses a fresh upload; the baseline is a HEAD with nothing holding the lock.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import aiohttp
from aiohttp import web

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")

from tusserver import Config, create_app  # noqa: E402
from tusserver.stores.file import FileStore  # noqa: E402
from tusserver.stores.s3 import S3Store  # noqa: E402

MiB = 1 << 20
TUS = {"Tus-Resumable": "1.0.0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int) -> None:
    for _ in range(400):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def start(cmd: list[str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port)
    return proc


class Counting:
    """Counts the body bytes the store took in, so a round starts once they are all in."""

    def __init__(self, store) -> None:
        self.total = 0
        self.grew = asyncio.Event()
        original = store.append

        async def append(info, body, *, atomic=False):
            async def counted():
                async for chunk in body:
                    self.total += len(chunk)
                    self.grew.set()
                    yield chunk

            return await original(info, counted(), atomic=atomic)

        store.append = append

    async def at_least(self, count: int) -> None:
        while self.total < count:
            self.grew.clear()
            await self.grew.wait()


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def one_round(session, holder_url: str, asker_url: str, counter: Counting, sent: int) -> float:
    async with session.post(holder_url + "/", headers={**TUS, "Upload-Length": str(sent * 2)}) as resp:
        path = "/" + resp.headers["Location"].rsplit("/", 1)[1]
    host, port = holder_url.rsplit("/", 1)[1].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        (
            f"PATCH {path} HTTP/1.1\r\nHost: {host}\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
            f"Content-Type: application/offset+octet-stream\r\nContent-Length: {sent * 2}\r\n\r\n"
        ).encode()
    )
    base = counter.total
    writer.write(os.urandom(sent))
    await writer.drain()
    await counter.at_least(base + sent)
    started = time.perf_counter()
    async with session.head(asker_url + path, headers=TUS) as resp:
        elapsed = time.perf_counter() - started
        assert resp.headers["Upload-Offset"] == str(sent), (resp.status, dict(resp.headers))
    writer.close()
    return elapsed


async def baseline(session, url: str) -> float:
    async with session.post(url + "/", headers={**TUS, "Upload-Length": "10"}) as resp:
        path = "/" + resp.headers["Location"].rsplit("/", 1)[1]
    started = time.perf_counter()
    async with session.head(url + path, headers=TUS) as resp:
        assert resp.status == 200
    return time.perf_counter() - started


def report(name: str, samples: list[float]) -> None:
    ms = sorted(s * 1000 for s in samples)
    print(
        f"{name:<58} median {statistics.median(ms):7.1f} ms   min {ms[0]:7.1f}   max {ms[-1]:7.1f}   (n={len(ms)})"
    )


async def main(rounds: int, use_redis: bool) -> None:
    tmp = tempfile.mkdtemp(prefix="bench-lock-")
    procs: list[subprocess.Popen] = []
    runners: list[web.AppRunner] = []
    try:
        moto_port = free_port()
        moto = shutil.which("moto_server") or os.path.join(os.path.dirname(sys.executable), "moto_server")
        procs.append(start([moto, "-H", "127.0.0.1", "-p", str(moto_port)], moto_port))
        endpoint = f"http://127.0.0.1:{moto_port}"
        bucket = f"bench-{uuid.uuid4().hex[:12]}"
        def s3_store(name: str) -> S3Store:
            return S3Store(
                bucket, endpoint_url=endpoint, path_style=True, part_size=5 * MiB, temp_dir=os.path.join(tmp, name)
            )

        async with aiohttp.ClientSession() as session:
            async with session.put(f"{endpoint}/{bucket}") as resp:
                assert resp.status == 200
            cases = []
            file_store = FileStore(os.path.join(tmp, "files"))
            runner, url = await serve(create_app(Config(), store=file_store))
            runners.append(runner)
            cases.append(("file store, 1 MiB received", url, url, Counting(file_store), MiB))
            cases.append(("file store, 6 MiB received", url, url, cases[-1][3], 6 * MiB))
            s3 = s3_store("a")
            runner, s3_url = await serve(create_app(Config(), store=s3))
            runners.append(runner)
            s3_counter = Counting(s3)
            cases.append(("S3, 1 MiB received (flushed as .part)", s3_url, s3_url, s3_counter, MiB))
            cases.append(("S3, 6 MiB received (a 5 MiB part + 1 MiB .part)", s3_url, s3_url, s3_counter, 6 * MiB))
            if use_redis:
                port = free_port()
                procs.append(
                    start(
                        [
                            "redis-server",
                            "--port",
                            str(port),
                            "--bind",
                            "127.0.0.1",
                            "--save",
                            "",
                            "--appendonly",
                            "no",
                        ],
                        port,
                    )
                )
                config = Config(redis_url=f"redis://127.0.0.1:{port}/0")
                a, b = s3_store("ra"), s3_store("rb")
                runner_a, url_a = await serve(create_app(config, store=a))
                runner_b, url_b = await serve(create_app(config, store=b))
                runners += [runner_a, runner_b]
                counter_a = Counting(a)
                cases.append(("S3 + Redis, 2 instances, 1 MiB received", url_a, url_b, counter_a, MiB))
                cases.append(("S3 + Redis, 2 instances, 6 MiB received", url_a, url_b, counter_a, 6 * MiB))

            print(f"HEAD latency while a PATCH of the same upload hangs mid-body ({rounds} rounds each)")
            report("baseline: HEAD, lock free (file store)", [await baseline(session, url) for _ in range(rounds)])
            report("baseline: HEAD, lock free (S3)", [await baseline(session, s3_url) for _ in range(rounds)])
            for name, holder, asker, counter, sent in cases:
                report(name, [await one_round(session, holder, asker, counter, sent) for _ in range(rounds)])
    finally:
        for runner in runners:
            await runner.cleanup()
        for proc in procs:
            proc.terminate()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--no-redis", action="store_true", help="skip the two-instance Redis case")
    args = parser.parse_args()
    asyncio.run(main(args.rounds, not args.no_redis))
