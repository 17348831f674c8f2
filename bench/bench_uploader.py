"""`tusserver upload` against bench/client.py, the benchmarks' sendfile client, in one run.

    python bench/bench_uploader.py                 # 1 GiB, 3 rounds
    python bench/bench_uploader.py --size 256MiB --rounds 5

It starts one local tusserver (file store in a temp dir, access log off) and, in each round,
uploads the same random file with bench/client.py (POST, one PATCH) and with a real
`tusserver upload --json --no-resume --quiet` process, back to back. Throughput is the file
size over the upload's time: bench/client.py's POST+PATCH, and the `seconds` the uploader
reports for its OPTIONS+POST+PATCH (process start-up is shown apart). Every stored upload's
sha256 is checked. Prints each round, the medians and the median of the per-round ratios
(target >= 0.8), and the uploader's peak RSS (flat in the file size: it sends with sendfile).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)

import client as tus  # noqa: E402  (bench/client.py)
from run import _parse_size, free_port, spawn, stop  # noqa: E402

MiB = 1 << 20
ENV = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}


def make_source(path: str, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(8 * MiB, left))
            f.write(block)
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def stored_sha256(directory: str, url: str) -> str:
    digest = hashlib.sha256()
    with open(os.path.join(directory, url.rstrip("/").rsplit("/", 1)[-1]), "rb") as f:
        while block := f.read(8 * MiB):
            digest.update(block)
    return digest.hexdigest()


def clear(directory: str) -> None:
    for name in os.listdir(directory):
        os.unlink(os.path.join(directory, name))


async def bench_client(url: str, source: str, size: int) -> tuple[float, str]:
    async with tus.TusClient(url) as client:
        started = time.perf_counter()
        upload_url = await client.upload(source, size)
        return time.perf_counter() - started, upload_url


def uploader(url: str, source: str, cache: str) -> tuple[float, float, float, str]:
    """(upload seconds as reported, wall seconds of the process, peak RSS MiB, URL)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tusserver", "upload", source, "--url", url, "--json", "--no-resume", "--quiet"],
        stdout=subprocess.PIPE,
        env={**ENV, "XDG_CACHE_HOME": cache},
        cwd=ROOT,
    )
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"tusserver upload exited {proc.returncode}")
    result = json.loads(output)
    return result["seconds"], wall, usage.ru_maxrss / 1024, result["url"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=_parse_size, default=1 << 30, help="file size (default 1GiB)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="bench-uploader-")
    source = os.path.join(work, "source.bin")
    store = os.path.join(work, "uploads")
    os.mkdir(store)
    expected = make_source(source, args.size)
    port = free_port()
    url = f"http://127.0.0.1:{port}/files/"
    server = spawn(
        [sys.executable, "-m", "tusserver", "--host", "127.0.0.1", "--port", str(port), "--store", "file",
         "--file-dir", store, "--log-level", "warning"],
        port,
        os.path.join(work, "server.log"),
        env=ENV,
    )
    mib = args.size / MiB
    rows = []
    try:
        for round_ in range(1, args.rounds + 1):
            seconds, upload_url = asyncio.run(bench_client(url, source, args.size))
            assert stored_sha256(store, upload_url) == expected, "bench/client.py: stored bytes differ"
            clear(store)
            ours, wall, rss, upload_url = uploader(url, source, os.path.join(work, "cache"))
            assert stored_sha256(store, upload_url) == expected, "tusserver upload: stored bytes differ"
            clear(store)
            row = {"client": mib / seconds, "upload": mib / ours, "upload_wall": mib / wall, "rss": rss}
            row["ratio"] = row["upload"] / row["client"]
            rows.append(row)
            print(
                f"round {round_}: bench/client.py {row['client']:.0f} MiB/s, tusserver upload {row['upload']:.0f} "
                f"MiB/s ({row['upload_wall']:.0f} MiB/s with process start-up), ratio {row['ratio']:.2f}, "
                f"uploader peak RSS {rss:.1f} MiB",
                flush=True,
            )
    finally:
        stop(server)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    def median(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    print(
        f"{args.size / MiB:.0f} MiB, median of {len(rows)} rounds: bench/client.py {median('client'):.0f} MiB/s, "
        f"tusserver upload {median('upload'):.0f} MiB/s ({median('upload_wall'):.0f} with start-up); "
        f"ratio {median('ratio'):.2f} (target >= 0.8); uploader peak RSS {max(r['rss'] for r in rows):.1f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
