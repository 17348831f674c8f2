"""S3 store throughput against a direct aiobotocore multipart upload, both to moto.

    python bench/bench_s3.py [--size-mib 1024] [--part-sizes-mib 8,16,32,64] [--in-flight 4]

Starts moto_server and, for each part size, our server (`python -m tusserver --store s3`)
on free loopback ports. Uploads the same file through our server in one PATCH and in
64 MiB PATCHes, and straight to S3 with aiobotocore (same part size, same parts in
flight). Prints MiB/s of each and the ratio ours/direct (target >= 0.8).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import aiohttp
import boto3

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ceilings import s3_upload  # noqa: E402  (the direct-upload reference of every bench)

MiB = 1 << 20
TUS = {"Tus-Resumable": "1.0.0"}
# moto accepts any credentials; this process (direct upload) and our server both use these.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
ENV = dict(os.environ)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(args: list[str], port: int, log: str) -> subprocess.Popen:
    proc = subprocess.Popen(args, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=ENV, cwd=ROOT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{args[0]} did not start; see {log}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def file_body(path: str, start: int, size: int):
    with open(path, "rb") as f:
        f.seek(start)
        left = size
        while left:
            chunk = await asyncio.to_thread(f.read, min(left, MiB))
            left -= len(chunk)
            yield chunk


async def upload_through(server: str, path: str, size: int, patch_size: int) -> tuple[float, str]:
    """Upload via tus; returns (seconds, upload id)."""
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        async with session.post(server, headers={**TUS, "Upload-Length": str(size)}) as resp:
            assert resp.status == 201, await resp.text()
            location = resp.headers["Location"]
        url = location if location.startswith("http") else server.rstrip("/") + "/" + location.rsplit("/", 1)[1]
        offset = 0
        while offset < size:
            length = min(patch_size, size - offset)
            headers = {
                **TUS,
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
                "Content-Length": str(length),
            }
            async with session.patch(url, data=file_body(path, offset, length), headers=headers) as resp:
                assert resp.status == 204, (resp.status, await resp.text())
                offset = int(resp.headers["Upload-Offset"])
        return time.perf_counter() - started, url.rsplit("/", 1)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--part-sizes-mib", default="16")
    parser.add_argument("--patch-mib", type=int, default=64)
    parser.add_argument("--in-flight", type=int, default=4)
    args = parser.parse_args()
    size = args.size_mib * MiB
    work = tempfile.mkdtemp(prefix="bench-s3-")
    procs: list[subprocess.Popen] = []
    try:
        source = os.path.join(work, "source.bin")
        with open(source, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MiB))
        moto_port = free_port()
        moto = shutil.which("moto_server") or os.path.join(os.path.dirname(sys.executable), "moto_server")
        procs.append(spawn([moto, "-H", "127.0.0.1", "-p", str(moto_port)], moto_port, os.path.join(work, "moto.log")))
        endpoint = f"http://127.0.0.1:{moto_port}"
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        print(f"size {args.size_mib} MiB, {args.in_flight} parts in flight, moto at {endpoint}")
        print(f"{'part':>6} {'direct':>10} {'one PATCH':>16} {f'{args.patch_mib} MiB PATCHes':>20}")
        for part_mib in (int(x) for x in args.part_sizes_mib.split(",")):
            part_size = part_mib * MiB
            bucket = f"bench-{part_mib}-{os.getpid()}"
            urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{bucket}", method="PUT")).close()
            port = free_port()
            spool = os.path.join(work, "spool")
            os.makedirs(spool, exist_ok=True)
            server = spawn(
                [sys.executable, "-m", "tusserver", "--store", "s3", "--s3-bucket", bucket, "--s3-endpoint", endpoint,
                 "--s3-path-style", "--s3-region", "us-east-1", "--s3-part-size", str(part_size),
                 "--s3-upload-concurrency", str(args.in_flight), "--temp-dir", spool,
                 "--host", "127.0.0.1", "--port", str(port), "--base-path", "/files/", "--log-level", "warning"],
                port,
                os.path.join(work, f"ours-{part_mib}.log"),
            )  # fmt: skip
            procs.append(server)
            direct = asyncio.run(s3_upload(endpoint, bucket, "direct", source, size, part_size, args.in_flight))
            rates = []
            for patch_size in (size, args.patch_mib * MiB):
                seconds, upload_id = asyncio.run(
                    upload_through(f"http://127.0.0.1:{port}/files/", source, size, patch_size)
                )
                stored = s3.head_object(Bucket=bucket, Key=upload_id)["ContentLength"]
                assert stored == size, (stored, size)
                s3.delete_object(Bucket=bucket, Key=upload_id)
                rates.append(args.size_mib / seconds)
            s3.delete_object(Bucket=bucket, Key="direct")
            base = args.size_mib / direct
            print(
                f"{part_mib:>4}Mi {base:>7.1f}M/s "
                + " ".join(f"{rate:>7.1f}M/s ({rate / base:.2f}x)" for rate in rates)
            )
            procs.remove(server)
            stop(server)
    finally:
        for proc in procs:
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
