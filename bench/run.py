"""tusserver's benchmark suite: our server against the physical ceilings and @tus/server,
measured in the same run. See bench/README.md.

    python bench/run.py [--quick|--full] [--stores file,s3] [--out bench/results.json]

It starts moto_server, our server (`python -m tusserver`), @tus/server (bench/tus-node),
tuspyserver (bench/tuspy) and ceiling-disk as separate processes on 127.0.0.1, drives them
all with bench/client.py, checks what each stored (size, and sha256 for S1-S3), and prints a
table and ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import client as tus
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
NODE_DIR = os.path.join(BENCH, "tus-node")
TUSPY_DIR = os.path.join(BENCH, "tuspy")
TUSPY_DEPS = os.path.join(TUSPY_DIR, ".deps")  # git-ignored; tuspyserver only, see ensure_tuspy
TUSPY_VERSION = "4.4.3"
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
# moto accepts any credentials; every process of the bench (and this one) uses these.
os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
ENV = dict(os.environ)


@dataclass(frozen=True)
class Sizes:
    s1: int  # one upload, one PATCH
    s2: int
    s2_patch: int
    s3: int
    s3_patch: int
    s4_count: int  # uploads of s4_size, s4_parallel at a time
    s4_size: int
    s5_count: int  # HEADs, s5_parallel at a time
    parallel: int = 32
    repeat: int = 1  # each measurement this many times, interleaved; the best counts


QUICK = Sizes(
    s1=96 * MiB,
    s2=96 * MiB,
    s2_patch=32 * MiB,
    s3=25 * MiB,
    s3_patch=5 * MiB,
    s4_count=96,
    s4_size=256 * KiB,
    s5_count=400,
)
FULL = Sizes(
    s1=GiB,
    s2=GiB,
    s2_patch=64 * MiB,
    s3=256 * MiB,
    s3_patch=5 * MiB,
    s4_count=200,
    s4_size=256 * KiB,
    s5_count=2000,
    repeat=3,
)


# -- processes ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{' '.join(map(str, proc.args[:3]))} exited with {proc.returncode}; see its log")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def spawn(
    args: list[str], port: int | None, log: str, env: dict[str, str] | None = None, cwd: str = ROOT
) -> subprocess.Popen:
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env or ENV, cwd=cwd)
    if port is not None:
        wait_for_port(port, proc)
    return proc


def stop(proc: subprocess.Popen) -> None:
    # A server with workers: the master should stop them; any it leaves behind are killed,
    # so that no worker of this run keeps serving (and holding its port) after the bench.
    workers = {pid: _start_time(pid) for pid in _process_tree(proc.pid)[1:]} if proc.poll() is None else {}
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pid, started in workers.items():
        if started and _start_time(pid) == started:  # the same process, not a reused pid
            print(f"{proc.args[:3]}: process {pid} outlived its master; killed", file=sys.stderr)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _start_time(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rpartition(")")[2].split()[19])  # starttime, in clock ticks since boot
    except (OSError, ValueError, IndexError):
        return 0


class Monitor:
    """Peak RSS and CPU of a server and peak bytes under some directories, polled in a
    thread while a measurement runs. The server is a process tree: a master and the
    workers it forks (`--workers N`), all counted. The kernel's own high-water mark
    (VmHWM) is reset first, so a peak between two polls is not missed."""

    # This kernel has no /proc/<pid>/task/<tid>/children, so finding the tree scans every
    # process's stat (~1.5 ms for 70 processes): done at the start and then at this period,
    # not at every RSS poll. Workers live as long as the server, so this finds them all.
    TREE_PERIOD = 0.25

    def __init__(self, pid: int, temp_dirs: list[tuple[str, str]], interval: float = 0.02) -> None:
        self.pid = pid
        self.temp_dirs = temp_dirs  # (directory, substring a temp file's name has, or "")
        self.interval = interval
        self.peak_rss = 0  # the largest peak of any one process of the tree
        self.peak_rss_sum = 0  # the per-process peaks added up: an upper bound of the tree's total
        self.processes = 1  # how many processes the tree had
        self.peak_temp = 0
        self.cpu_seconds = 0.0  # user + system CPU time the tree used meanwhile
        self.sys_seconds = 0.0  # of which in the kernel
        self._pids: list[int] = [pid]
        self._tree_at = 0.0
        self._rss: dict[int, int] = {}  # pid: peak RSS in bytes
        self._cpu_start: dict[int, tuple[float, float]] = {}  # pid: (cpu, sys) seconds at the start
        self._cpu_last: dict[int, tuple[float, float]] = {}  # pid: (cpu, sys) last read
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Monitor:
        self._find_tree(born=False)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self._poll()
        for pid in self._rss:
            self._rss[pid] = max(self._rss[pid], _status_kib(pid, "VmHWM") * KiB)
            self._read_cpu(pid)
        self.processes = len(self._rss)
        self.peak_rss = max(self._rss.values(), default=0)
        self.peak_rss_sum = sum(self._rss.values())
        # A process that ended meanwhile counts with its CPU as last read.
        self.cpu_seconds = sum(cpu - self._cpu_start[pid][0] for pid, (cpu, _) in self._cpu_last.items())
        self.sys_seconds = sum(sys_ - self._cpu_start[pid][1] for pid, (_, sys_) in self._cpu_last.items())
        if not _alive(self.pid):
            self.cpu_seconds = self.sys_seconds = 0.0  # 0: the server is gone

    def _start(self, pid: int, from_birth: bool = False) -> None:
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
        except OSError:
            pass
        # A process born during the measurement counts all its CPU.
        start = (0.0, 0.0) if from_birth else (_cpu_seconds(pid), _cpu_seconds(pid, system_only=True))
        self._cpu_start[pid] = self._cpu_last[pid] = start
        self._rss[pid] = 0

    def _find_tree(self, born: bool = True) -> None:
        self._tree_at = time.monotonic()
        self._pids = _process_tree(self.pid)
        for pid in self._pids:
            if pid not in self._rss:
                self._start(pid, from_birth=born)

    def _read_cpu(self, pid: int) -> None:
        cpu = _cpu_seconds(pid)
        if cpu:
            self._cpu_last[pid] = (cpu, _cpu_seconds(pid, system_only=True))

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            self._poll()

    def _poll(self) -> None:
        if time.monotonic() - self._tree_at >= self.TREE_PERIOD:
            self._find_tree()
        for pid in self._pids:
            self._rss[pid] = max(self._rss.get(pid, 0), _status_kib(pid, "VmRSS") * KiB)
            if len(self._pids) > 1:
                self._read_cpu(pid)  # so that a worker that ends meanwhile still counts
        self.peak_temp = max(self.peak_temp, sum(_dir_bytes(d, mark) for d, mark in self.temp_dirs))


def _process_tree(root: int) -> list[int]:
    """`root` and all its descendants, from the parent pid in each /proc/<pid>/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                parent = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # ended meanwhile
        children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def _alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}/stat")


def _status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_seconds(pid: int, system_only: bool = False) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    ticks = int(fields[12]) if system_only else int(fields[11]) + int(fields[12])  # stime, utime + stime
    return ticks / os.sysconf("SC_CLK_TCK")


def _dir_bytes(directory: str, mark: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            if mark in name:
                try:
                    total += os.stat(os.path.join(root, name)).st_size
                except FileNotFoundError:
                    pass
    return total


# -- where each target keeps its bytes -------------------------------------------------


class DiskStorage:
    def __init__(self, directory: str) -> None:
        self.directory = directory
        os.makedirs(directory, exist_ok=True)

    async def size(self, name: str) -> int:
        return os.stat(os.path.join(self.directory, name)).st_size

    async def sha256(self, name: str) -> str:
        return await asyncio.to_thread(_file_sha256, os.path.join(self.directory, name), None)

    async def clear(self) -> None:
        for name in os.listdir(self.directory):
            path = os.path.join(self.directory, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


class S3Storage:
    def __init__(self, s3: Any, bucket: str) -> None:
        self.s3 = s3
        self.bucket = bucket

    async def size(self, name: str) -> int:
        return (await self.s3.head_object(Bucket=self.bucket, Key=name))["ContentLength"]

    async def sha256(self, name: str) -> str:
        digest = hashlib.sha256()
        response = await self.s3.get_object(Bucket=self.bucket, Key=name)
        async with response["Body"] as stream:
            async for chunk in stream.iter_chunks(4 * MiB):
                digest.update(chunk)
        return digest.hexdigest()

    async def clear(self) -> None:
        pages = self.s3.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket)
        async for page in pages:
            for upload in page.get("Uploads", []):
                await self.s3.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        async for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                await self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})


def _file_sha256(path: str, size: int | None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        left = size
        while left is None or left > 0:
            chunk = f.read(8 * MiB if left is None else min(8 * MiB, left))
            if not chunk:
                break
            digest.update(chunk)
            if left is not None:
                left -= len(chunk)
    return digest.hexdigest()


# -- targets ---------------------------------------------------------------------------


@dataclass
class Target:
    name: str  # "ours", "ours-w2", "ours-asgi", "tus-node", "tuspyserver" or "ceiling"
    store: str  # "file" or "s3"
    storage: DiskStorage | S3Storage
    proc: subprocess.Popen | None = None  # None: ceiling-s3, a process per measurement
    url: str = ""
    temp_dirs: list[tuple[str, str]] = field(default_factory=list)
    profiler: subprocess.Popen | None = None
    upload_metadata: str | None = None  # an Upload-Metadata header for every POST

    @property
    def label(self) -> str:
        return f"{self.name}-{'disk' if self.store == 'file' else 's3'}" if self.name == "ceiling" else self.name


class Bench:
    def __init__(self, args: argparse.Namespace, sizes: Sizes, work: str) -> None:
        self.args = args
        self.sizes = sizes
        self.work = work
        self.source = os.path.join(work, "source.bin")
        self.digests: dict[int, str] = {}
        self.procs: list[subprocess.Popen] = []
        self.results: list[dict[str, Any]] = []
        from tusserver.config import Config

        defaults = Config()
        self.part_size = args.part_size or defaults.s3_part_size
        self.in_flight = defaults.s3_upload_concurrency

    def log(self, name: str) -> str:
        return os.path.join(self.work, f"{name}.log")

    # -- set-up

    def make_source(self) -> None:
        size = max(self.sizes.s1, self.sizes.s2, self.sizes.s3, self.sizes.s4_size)
        with open(self.source, "wb") as f:
            for start in range(0, size, 16 * MiB):
                f.write(os.urandom(min(16 * MiB, size - start)))
        for n in {self.sizes.s1, self.sizes.s2, self.sizes.s3}:
            self.digests[n] = _file_sha256(self.source, n)

    def start_moto(self) -> None:
        port = free_port()
        moto = shutil.which("moto_server") or os.path.join(os.path.dirname(sys.executable), "moto_server")
        self.procs.append(spawn([moto, "-H", "127.0.0.1", "-p", str(port)], port, self.log("moto")))
        self.moto = f"http://127.0.0.1:{port}"

    def make_bucket(self, name: str) -> str:
        urllib.request.urlopen(urllib.request.Request(f"{self.moto}/{name}", method="PUT")).close()
        return name

    def start_ours(self, store: str, s3: Any, name: str = "ours") -> Target:
        """Our server on `store`: `python -m tusserver` (name "ours"; "ours-w2" adds
        `--workers 2`), or the same settings as TUSSERVER_* variables for
        `uvicorn --factory tusserver.asgi:from_env` ("ours-asgi")."""
        base = os.path.join(self.work, f"{name}-{store}")
        spool = os.path.join(base, "spool")
        os.makedirs(spool, exist_ok=True)
        port = free_port()
        settings = {
            "store": store,
            "host": "127.0.0.1",
            "port": str(port),
            "base_path": "/files/",
            "temp_dir": spool,
            "log_level": self.args.log_level,
        }
        if store == "file":
            storage: DiskStorage | S3Storage = DiskStorage(os.path.join(base, "data"))
            settings["file_dir"] = storage.directory
            temp = [(storage.directory, ".tmp-"), (spool, "")]
        else:
            storage = S3Storage(s3, self.make_bucket(f"bench-{name}"))
            settings.update(
                s3_bucket=storage.bucket,
                s3_endpoint=self.moto,
                s3_path_style="true",
                s3_region="us-east-1",
                s3_part_size=str(self.part_size),
            )
            temp = [(spool, "")]
        package = os.path.abspath(self.args.tusserver)
        env = {**ENV, "PYTHONPATH": package}
        workers = 2 if name == "ours-w2" else self.args.ours_workers if name == "ours" else None
        if name in ("ours", "ours-w2"):
            args = [sys.executable, "-m", "tusserver"]
            for key, value in settings.items():
                args += ["--" + key.replace("_", "-")] + ([] if value == "true" else [value])
            if workers:
                self.check_workers_flag(package, env)
                args += ["--workers", str(workers)]
            args += self.args.ours_arg
        else:
            # The same server behind the ASGI front door; uvicorn's fastest loop and parser,
            # and no access log (ours logs none at the bench's default level either).
            env.update({f"TUSSERVER_{key.upper()}": value for key, value in settings.items()})
            args = [sys.executable, "-m", "uvicorn", "--factory", "tusserver.asgi:from_env"]
            args += ["--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop", "--http", "httptools"]
            args += ["--no-access-log", "--log-level", self.args.log_level]
            args += self.args.asgi_arg
        proc = spawn(args, port, self.log(f"{name}-{store}"), env=env, cwd=package)
        self.procs.append(proc)
        target = Target(name, store, storage, proc, f"http://127.0.0.1:{port}/files/", temp)
        if self.args.profile:
            os.makedirs(self.args.profile, exist_ok=True)
            out = os.path.join(self.args.profile, f"{name}-{store}.txt")
            record = ["py-spy", "record", "--gil", "--pid", str(proc.pid), "--rate", "200", "--format", "raw"]
            record += ["--subprocesses"] if workers or self.args.asgi_arg else []
            target.profiler = subprocess.Popen(
                [*record, "-o", out],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1)  # let py-spy attach before the first request
        return target

    def check_workers_flag(self, package: str, env: dict[str, str]) -> None:
        """Fail early and clearly when the measured tusserver predates `--workers`."""
        if getattr(self, "_workers_ok", False):
            return
        done = subprocess.run(
            [sys.executable, "-m", "tusserver", "--help"], cwd=package, env=env, capture_output=True, text=True
        )
        if "--workers" not in done.stdout:
            raise SystemExit(f"the tusserver in {package} has no --workers: ours-w2 and --ours-workers need it")
        self._workers_ok = True

    def start_tuspy(self, store: str) -> Target | None:
        """tuspyserver (pinned, bench/tuspy/app.py) under uvicorn with the same loop and parser
        as ours-asgi. It writes to local files only, so the disk store only."""
        if store != "file":
            print("tuspyserver: measured on the disk store only (--stores s3 leaves it out)", file=sys.stderr)
            return None
        self.ensure_tuspy()
        base = os.path.join(self.work, "tuspyserver-file")
        tmp = os.path.join(base, "tmp")
        os.makedirs(tmp, exist_ok=True)
        storage = DiskStorage(os.path.join(base, "data"))
        port = free_port()
        from tusserver.config import Config

        env = {
            **ENV,
            "PYTHONPATH": os.pathsep.join([TUSPY_DEPS, TUSPY_DIR]),
            "TUSPY_FILES_DIR": storage.directory,
            "TUSPY_MAX_SIZE": str(Config().max_size or 128 * GiB),  # our default limit; its own if ours has none
            "TMPDIR": tmp,
        }
        args = [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port)]
        args += ["--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", self.args.log_level]
        proc = spawn(args, port, self.log("tuspyserver-file"), env=env, cwd=TUSPY_DIR)
        self.procs.append(proc)
        # Its HEAD answers 400 unless the upload's metadata has `filename` and `filetype`
        # (routes/core.py: "Upload-Metadata missing required field"); tus makes metadata optional.
        metadata = f"filename {_b64('bench.bin')},filetype {_b64('application/octet-stream')}"
        url = f"http://127.0.0.1:{port}/files/"
        return Target("tuspyserver", store, storage, proc, url, [(tmp, "")], upload_metadata=metadata)

    def ensure_tuspy(self) -> None:
        """tuspyserver, pinned, into bench/tuspy/.deps on first use; never into site-packages.
        --no-deps: its one requirement, fastapi>=0.110, is in our test extra, so it runs on the
        same fastapi, starlette, pydantic and uvicorn as ours-asgi. With its dependencies, pip
        --target would put a second pydantic (a newer one) and starlette in .deps."""
        marker = os.path.join(TUSPY_DEPS, f"tuspyserver-{TUSPY_VERSION}.dist-info")
        if not os.path.isdir(marker):
            done = subprocess.run(
                [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade"]
                + ["--target", TUSPY_DEPS, f"tuspyserver=={TUSPY_VERSION}"],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise SystemExit(f"installing tuspyserver=={TUSPY_VERSION} failed:\n{done.stdout}{done.stderr}")
        try:
            version = importlib.metadata.version("fastapi")
        except importlib.metadata.PackageNotFoundError:
            raise SystemExit("tuspyserver needs fastapi>=0.110: pip install -e '.[test]'") from None
        if tuple(int(n) for n in version.split(".")[:2]) < (0, 110):
            raise SystemExit(f"tuspyserver needs fastapi>=0.110, this is {version}")

    def start_tus_node(self, store: str, s3: Any) -> Target | None:
        if not self.ensure_node():
            return None
        base = os.path.join(self.work, f"tus-node-{store}")
        tmp = os.path.join(base, "tmp")
        os.makedirs(tmp, exist_ok=True)
        port = free_port()
        args = ["node", os.path.join(NODE_DIR, "server.js"), store, str(port)]
        if store == "file":
            storage: DiskStorage | S3Storage = DiskStorage(os.path.join(base, "data"))
            args += [storage.directory]
        else:
            storage = S3Storage(s3, self.make_bucket("bench-tus-node"))
            args += [self.moto, storage.bucket, str(self.part_size), str(self.in_flight)]
        proc = spawn(args, port, self.log(f"tus-node-{store}"), env={**ENV, "TMPDIR": tmp})
        self.procs.append(proc)
        return Target("tus-node", store, storage, proc, f"http://127.0.0.1:{port}/files", [(tmp, "")])

    def ensure_node(self) -> bool:
        if not shutil.which("node"):
            print("node is not installed: @tus/server is left out", file=sys.stderr)
            return False
        if not os.path.isdir(os.path.join(NODE_DIR, "node_modules")):
            subprocess.run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True)
        return True

    def start_ceiling(self, store: str, s3: Any) -> Target:
        if store == "s3":
            return Target("ceiling", "s3", S3Storage(s3, self.make_bucket("bench-ceiling")))
        storage = DiskStorage(os.path.join(self.work, "ceiling-disk"))
        port = free_port()
        proc = spawn(
            [sys.executable, os.path.join(BENCH, "ceilings.py"), "disk", str(port), storage.directory],
            port,
            self.log("ceiling-disk"),
        )
        self.procs.append(proc)
        return Target("ceiling", "file", storage, proc, f"http://127.0.0.1:{port}/files/")

    # -- measuring

    def timed_section_over(self) -> None:
        """Called by each measurement when its clock stops, before it checks what was stored."""
        self._moto_log_end = os.path.getsize(self.log("moto"))

    def s3_calls(self, bucket: str, start: int) -> dict[str, int]:
        """The S3 requests moto logged for `bucket` between `start` and the end of the timed section."""
        with open(self.log("moto"), "rb") as f:
            f.seek(start)
            text = f.read(self._moto_log_end - start).decode(errors="replace")
        calls: Counter[str] = Counter()
        for match in re.finditer(r'"([A-Z]+) /' + re.escape(bucket) + r'(/[^ ?"]*)?(\?[^ "]*)? HTTP', text):
            calls[_s3_operation(match.group(1), match.group(2) or "", match.group(3) or "")] += 1
        return dict(calls.most_common())

    async def measure(self, target: Target, scenario: str, run: Callable[[], Awaitable[dict[str, Any]]]) -> dict:
        await target.storage.clear()
        moto_start = os.path.getsize(self.log("moto"))
        self._moto_log_end = 0
        if target.proc is None:  # ceiling-s3 monitors its own process
            result = await run()
        else:
            with Monitor(target.proc.pid, target.temp_dirs) as monitor:
                result = await run()
            result["peak_rss_mib"] = round(monitor.peak_rss / MiB, 1)  # the largest process
            if monitor.processes > 1:
                result["peak_rss_sum_mib"] = round(monitor.peak_rss_sum / MiB, 1)
                result["processes"] = monitor.processes
            result["peak_temp_mib"] = round(monitor.peak_temp / MiB, 1)
            result["cpu_s"] = round(monitor.cpu_seconds, 2)
            result["cpu_sys_s"] = round(monitor.sys_seconds, 2)
        if isinstance(target.storage, S3Storage) and self._moto_log_end:
            calls = self.s3_calls(target.storage.bucket, moto_start)
            result["s3_calls"] = sum(calls.values())
            result["s3_call_kinds"] = calls
        await target.storage.clear()
        return {"scenario": scenario, "store": target.store, "target": target.label, **result}

    async def transfer(self, target: Target, client: tus.TusClient, size: int, patch: int | None) -> dict:
        if target.name == "ceiling" and target.store == "s3":
            return await self.ceiling_s3(target, size)
        started = time.perf_counter()
        url = await client.upload(self.source, size, patch)
        seconds = time.perf_counter() - started
        self.timed_section_over()
        upload_id = url.rstrip("/").rsplit("/", 1)[-1]
        await self.verify(target, upload_id, size)
        return {"seconds": round(seconds, 3), "MiB/s": round(size / MiB / seconds, 1), "verified": True}

    async def ceiling_s3(self, target: Target, size: int) -> dict:
        key = "ceiling-object"
        args = [
            sys.executable,
            os.path.join(BENCH, "ceilings.py"),
            "s3",
            self.moto,
            target.storage.bucket,
            key,
            self.source,
            str(size),
            str(self.part_size),
            str(self.in_flight),
        ]
        proc = await asyncio.create_subprocess_exec(*args, stdout=subprocess.PIPE, env=ENV)
        with Monitor(proc.pid, []) as monitor:
            out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError("ceiling-s3 failed")
        seconds = json.loads(out)["seconds"]
        self.timed_section_over()
        await self.verify(target, key, size)
        return {
            "seconds": round(seconds, 3),
            "MiB/s": round(size / MiB / seconds, 1),
            "verified": True,
            "peak_rss_mib": round(monitor.peak_rss / MiB, 1),
            "peak_temp_mib": 0.0,
        }

    async def verify(self, target: Target, name: str, size: int) -> None:
        stored = await target.storage.size(name)
        if stored != size:
            raise AssertionError(f"{target.label} stored {stored} bytes of {size}")
        if await target.storage.sha256(name) != self.digests[size]:
            raise AssertionError(f"{target.label} stored other bytes than were sent")

    async def many_uploads(self, target: Target, client: tus.TusClient) -> dict:
        sizes = self.sizes
        latencies: list[float] = []
        urls: list[str] = []
        queue = iter(range(sizes.s4_count))

        async def worker() -> None:
            for _ in queue:
                started = time.perf_counter()
                urls.append(await client.upload(self.source, sizes.s4_size))
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(sizes.parallel)))
        seconds = time.perf_counter() - started
        self.timed_section_over()
        for url in urls:
            stored = await target.storage.size(url.rstrip("/").rsplit("/", 1)[-1])
            if stored != sizes.s4_size:
                raise AssertionError(f"{target.label} stored {stored} bytes of {sizes.s4_size}")
        latencies.sort()
        return {
            "uploads/s": round(len(urls) / seconds, 1),
            "p50_ms": round(_percentile(latencies, 50) * 1000, 1),
            "p99_ms": round(_percentile(latencies, 99) * 1000, 1),
            "verified": True,
        }

    async def many_heads(self, target: Target, client: tus.TusClient) -> dict:
        sizes = self.sizes
        url = await client.create(2 * sizes.s4_size)
        await client.patch(url, 0, self.source, 0, sizes.s4_size)
        queue = iter(range(sizes.s5_count))
        answered = 0

        async def worker() -> None:
            nonlocal answered
            for _ in queue:
                offset = await client.head(url)
                if offset != sizes.s4_size:
                    raise AssertionError(f"{target.label} HEAD said offset {offset}, not {sizes.s4_size}")
                answered += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(sizes.parallel)))
        seconds = time.perf_counter() - started
        self.timed_section_over()
        return {"req/s": round(answered / seconds, 1), "verified": True}

    async def run_store(self, store: str, s3: Any, scenarios: list[str]) -> None:
        wanted = self.args.targets.split(",")
        targets: list[Target] = []
        if "ceiling" in wanted:
            targets.append(self.start_ceiling(store, s3))
        if "ours" in wanted:
            targets.append(self.start_ours(store, s3))
        if "ours-w2" in wanted:
            targets.append(self.start_ours(store, s3, "ours-w2"))
        if "ours-asgi" in wanted:
            targets.append(self.start_ours(store, s3, "ours-asgi"))
        if "tus-node" in wanted:
            node = self.start_tus_node(store, s3)
            if node is not None:
                targets.append(node)
        if "tuspyserver" in wanted:
            tuspy = self.start_tuspy(store)
            if tuspy is not None:
                targets.append(tuspy)
        sizes = self.sizes
        plans: dict[str, Callable[[Target, tus.TusClient], Awaitable[dict]]] = {
            "S1": lambda t, c: self.transfer(t, c, sizes.s1, None),
            "S2": lambda t, c: self.transfer(t, c, sizes.s2, sizes.s2_patch),
            "S3": lambda t, c: self.transfer(t, c, sizes.s3, sizes.s3_patch),
            "S4": self.many_uploads,
            "S5": self.many_heads,
        }
        try:
            for scenario in scenarios:
                best: dict[str, dict] = {}
                for _ in range(sizes.repeat):
                    for target in targets:
                        if target.name == "ceiling" and scenario in ("S4", "S5") and target.store == "s3":
                            continue  # no tus requests to make against S3 itself
                        plan = plans[scenario]
                        result = await self.measure(target, scenario, lambda p=plan, t=target: _with_client(p, t))
                        print(f"  {scenario} {store:4} {target.label:12} {_headline(result)}", flush=True)
                        scores = best[target.label]["rounds"] if target.label in best else []
                        scores.append(_score(result))
                        if target.label not in best or _score(result) > _score(best[target.label]):
                            best[target.label] = result
                        result["rounds"] = scores  # this target's score in every round so far
                self.results += best.values()
        finally:
            for target in targets:
                if target.proc is not None:
                    stop(target.proc)
                if target.profiler is not None:
                    target.profiler.wait(30)

    async def run(self, stores: list[str], scenarios: list[str]) -> None:
        self.start_moto()
        config = AioConfig(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        async with get_session().create_client(
            "s3", endpoint_url=self.moto, region_name="us-east-1", config=config
        ) as s3:
            for store in stores:
                await self.run_store(store, s3, scenarios)


async def _with_client(plan: Callable[[Target, tus.TusClient], Awaitable[dict]], target: Target) -> dict:
    # Fresh connections for each measurement.
    async with tus.TusClient(target.url, target.upload_metadata) as client:
        return await plan(target, client)


def _s3_operation(method: str, key: str, query: str) -> str:
    if method == "PUT":
        return "UploadPart" if "partNumber=" in query else "PutObject"
    if method == "POST":
        if "uploads" in query and "uploadId" not in query:
            return "CreateMultipartUpload"
        return "CompleteMultipartUpload" if "uploadId" in query else "POST" + query
    if method == "GET":
        if "uploadId" in query:
            return "ListParts"
        return "GetObject" if key.strip("/") else "ListObjects"
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in query else "DeleteObject"
    return "HeadObject" if method == "HEAD" else method


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _percentile(ordered: list[float], pct: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))]


METRICS = {"S1": "MiB/s", "S2": "MiB/s", "S3": "MiB/s", "S4": "uploads/s", "S5": "req/s"}


def _score(result: dict) -> float:
    return result[METRICS[result["scenario"]]]


def _headline(result: dict) -> str:
    metric = METRICS[result["scenario"]]
    text = f"{result[metric]:9.1f} {metric}"
    if "p50_ms" in result:
        text += f"  p50 {result['p50_ms']} ms  p99 {result['p99_ms']} ms"
    if "peak_rss_mib" in result:
        text += f"  rss {result['peak_rss_mib']} MiB"
        if "peak_rss_sum_mib" in result:
            text += f" (sum {result['peak_rss_sum_mib']} MiB, {result['processes']} processes)"
        text += f"  temp {result['peak_temp_mib']} MiB"
        text += f"  cpu {result.get('cpu_s', '-')} s (sys {result.get('cpu_sys_s', '-')})"
    if "s3_calls" in result:
        text += f"  s3 calls {result['s3_calls']}"
    return text


# Each ratio: its name in the JSON, and the two targets it divides ("ceiling": the store's).
RATIOS = (
    ("ours/ceiling", "ours", "ceiling"),
    ("ours/tus-node", "ours", "tus-node"),
    ("ours/tuspyserver", "ours", "tuspyserver"),
    ("ours-asgi/ours", "ours-asgi", "ours"),
    ("ours-asgi/tuspyserver", "ours-asgi", "tuspyserver"),
    ("ours-w2/ours", "ours-w2", "ours"),
)
OURS = ("ours", "ours-asgi", "ours-w2")


def ratios(results: list[dict]) -> list[dict]:
    """One row per scenario and store that measured one of our targets, with every ratio
    whose two targets were measured."""
    by = {(r["scenario"], r["store"], r["target"]): r for r in results}
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for scenario, store, target in by:
        if target not in OURS or (scenario, store) in rows:
            continue
        row: dict[str, Any] = {"scenario": scenario, "store": store}
        for name, top, bottom in RATIOS:
            if bottom == "ceiling":
                bottom = "ceiling-disk" if store == "file" else "ceiling-s3"
            if (scenario, store, top) in by and (scenario, store, bottom) in by:
                row[name] = _ratio(by[scenario, store, top], by[scenario, store, bottom])
        rows[scenario, store] = row
    return list(rows.values())


def _ratio(ours: dict, reference: dict) -> float:
    """The median over rounds of ours/reference, each round measuring both back to back:
    steadier than best/best when the machine's load changes during a run."""
    pairs = zip(ours.get("rounds", [_score(ours)]), reference.get("rounds", [_score(reference)]), strict=True)
    return round(statistics.median(a / b for a, b in pairs), 2)


def print_table(results: list[dict], sizes: Sizes) -> None:
    """One row per scenario and store: the targets side by side, the ratios, and what our
    server used (peak RSS, peak temp disk, CPU, S3 calls). tuspyserver's columns appear when
    it was measured; the front doors and the worker counts get tables of their own."""
    what = {
        "S1": f"{_size(sizes.s1)}, 1 PATCH",
        "S2": f"{_size(sizes.s2)} in {_size(sizes.s2_patch)} PATCHes",
        "S3": f"{_size(sizes.s3)} in {_size(sizes.s3_patch)} PATCHes",
        "S4": f"{sizes.s4_count} x {_size(sizes.s4_size)}, {sizes.parallel} at a time",
        "S5": f"{sizes.s5_count} HEADs, {sizes.parallel} at a time",
    }
    by = {(r["scenario"], r["store"], r["target"]): r for r in results}
    by_ratio = {(r["scenario"], r["store"]): r for r in ratios(results)}
    targets = {r["target"] for r in results}
    tuspy = "tuspyserver" in targets
    print()
    print(
        "| scenario | store | ceiling | ours | @tus/server | "
        + ("tuspyserver | " if tuspy else "")
        + "ours/ceiling | ours/@tus/server | "
        + ("ours/tuspyserver | " if tuspy else "")
        + "ours: peak RSS MiB | ours: peak temp MiB | ours: CPU s | S3 calls ours / @tus/server |"
    )
    print("|---" * (11 + 2 * tuspy) + "|")
    for store in ("file", "s3"):
        for scenario in METRICS:
            ours = by.get((scenario, store, "ours"))
            if ours is None:
                continue
            ceiling = by.get((scenario, store, "ceiling-disk" if store == "file" else "ceiling-s3"))
            node = by.get((scenario, store, "tus-node"))
            ratio = by_ratio.get((scenario, store), {})
            calls = f"{ours.get('s3_calls', '')} / {node.get('s3_calls', '') if node else '-'}" if store == "s3" else ""
            print(
                f"| {scenario} {what[scenario]} | {'disk' if store == 'file' else 's3'} | {_value(ceiling)} "
                f"| {_value(ours)} | {_value(node)} | "
                + (f"{_value(by.get((scenario, store, 'tuspyserver')))} | " if tuspy else "")
                + f"{ratio.get('ours/ceiling', '-')} | {ratio.get('ours/tus-node', '-')} | "
                + (f"{ratio.get('ours/tuspyserver', '-')} | " if tuspy else "")
                + f"{_rss(ours)} | {ours.get('peak_temp_mib', '')} | {ours.get('cpu_s', '')} | {calls} |"
            )
    if "ours-asgi" in targets:
        print_asgi_table(by, by_ratio, what, tuspy)
    if "ours-w2" in targets:
        print_workers_table(by, by_ratio, what)


def print_asgi_table(by: dict, by_ratio: dict, what: dict[str, str], tuspy: bool = False) -> None:
    """The two front doors of the same server side by side: `tusserver` (aiohttp) and
    uvicorn + tusserver.asgi."""
    print()
    print(
        "| scenario | store | ours (aiohttp) | ours-asgi (uvicorn) | ours-asgi/ours "
        + ("| ours-asgi/tuspyserver " if tuspy else "")
        + "| peak RSS MiB ours / asgi | CPU s ours / asgi | S3 calls ours / asgi |"
    )
    print("|---" * (8 + tuspy) + "|")
    for store in ("file", "s3"):
        for scenario in METRICS:
            ours, asgi = by.get((scenario, store, "ours")), by.get((scenario, store, "ours-asgi"))
            if asgi is None:
                continue
            ratio = by_ratio.get((scenario, store), {})
            cpu, calls = (f"{(ours or {}).get(k, '-')} / {asgi.get(k, '-')}" for k in ("cpu_s", "s3_calls"))
            rss = f"{_rss(ours) if ours else '-'} / {_rss(asgi)}"
            print(
                f"| {scenario} {what[scenario]} | {'disk' if store == 'file' else 's3'} | {_value(ours)} "
                f"| {_value(asgi)} | {ratio.get('ours-asgi/ours', '-')} "
                + (f"| {ratio.get('ours-asgi/tuspyserver', '-')} " if tuspy else "")
                + f"| {rss} | {cpu} | {calls if store == 's3' else ''} |"
            )


def print_workers_table(by: dict, by_ratio: dict, what: dict[str, str]) -> None:
    """`ours` against `ours-w2` (the same server with `--workers 2`). RSS: the largest
    process, and in brackets the per-process peaks added up; CPU: the whole process tree."""
    print()
    print(
        "| scenario | store | ours | ours-w2 (--workers 2) | w2 / ours "
        "| peak RSS MiB ours / w2 | CPU s ours / w2 | S3 calls ours / w2 |"
    )
    print("|---" * 8 + "|")
    for store in ("file", "s3"):
        for scenario in METRICS:
            ours, w2 = by.get((scenario, store, "ours")), by.get((scenario, store, "ours-w2"))
            if w2 is None:
                continue
            ratio = by_ratio.get((scenario, store), {}).get("ours-w2/ours", "-")
            cpu, calls = (f"{(ours or {}).get(k, '-')} / {w2.get(k, '-')}" for k in ("cpu_s", "s3_calls"))
            print(
                f"| {scenario} {what[scenario]} | {'disk' if store == 'file' else 's3'} | {_value(ours)} "
                f"| {_value(w2)} | {ratio} | {_rss(ours) if ours else '-'} / {_rss(w2)} | {cpu} "
                f"| {calls if store == 's3' else ''} |"
            )


def _rss(result: dict) -> str:
    """Peak RSS of the largest process; with workers, also the per-process peaks added up."""
    text = str(result.get("peak_rss_mib", ""))
    if "peak_rss_sum_mib" in result:
        text += f" (sum {result['peak_rss_sum_mib']}, {result['processes']} processes)"
    return text


def _value(result: dict | None) -> str:
    if result is None:
        return "-"
    text = f"{result[METRICS[result['scenario']]]:g} {METRICS[result['scenario']]}"
    if "p50_ms" in result:
        text += f" (p50 {result['p50_ms']:g} / p99 {result['p99_ms']:g} ms)"
    return text


def _size(n: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


def _parse_size(text: str) -> int:
    units = {"KiB": KiB, "MiB": MiB, "GiB": GiB}
    for unit, scale in units.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * scale)
    return int(text)


def _load() -> float:
    return os.getloadavg()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", const="quick", dest="mode", help="small sizes (default)")
    mode.add_argument("--full", action="store_const", const="full", dest="mode", help="the sizes of issue 8")
    parser.add_argument("--stores", default="file,s3", help="comma-separated: file, s3")
    parser.add_argument("--scenarios", default="S1,S2,S3,S4,S5", help="comma-separated subset of S1..S5")
    parser.add_argument("--out", default=os.path.join(BENCH, "results.json"), help="JSON results file")
    parser.add_argument("--repeat", type=int, help="measure each this many times (best counts)")
    parser.add_argument("--part-size", type=int, help="S3 part size for ours, ceiling-s3 and tus-node")
    parser.add_argument(
        "--targets",
        default="ceiling,ours,tus-node",
        help="comma-separated subset of ceiling, ours, ours-w2 (ours with --workers 2), "
        "ours-asgi (uvicorn + tusserver.asgi), tus-node, tuspyserver (disk store only)",
    )
    parser.add_argument("--ours-workers", type=int, metavar="N", help="run `ours` with --workers N")
    parser.add_argument("--s1-size", type=_parse_size, help="S1 size instead of the mode's, e.g. 4GiB")
    parser.add_argument("--log-level", default="warning", help="our server's log level (warning: no access log)")
    parser.add_argument("--ours-arg", action="append", default=[], help="extra flag for our server (repeatable)")
    parser.add_argument(
        "--asgi-arg", action="append", default=[], help="extra flag for uvicorn serving ours-asgi (repeatable)"
    )
    parser.add_argument("--profile", metavar="DIR", help="record our server with py-spy into DIR/ours-<store>.txt")
    parser.add_argument(
        "--tusserver", metavar="DIR", default=ROOT, help="run the tusserver package in DIR (a `git archive` export)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) after the run")
    args = parser.parse_args()
    sizes = FULL if args.mode == "full" else QUICK
    if args.repeat:
        sizes = Sizes(**{**sizes.__dict__, "repeat": args.repeat})
    if args.s1_size:
        sizes = Sizes(**{**sizes.__dict__, "s1": args.s1_size})
    work = tempfile.mkdtemp(prefix="tusbench-")
    bench = Bench(args, sizes, work)
    load_before = _load()
    commit = _commit() if os.path.abspath(args.tusserver) == ROOT else f"tree in {args.tusserver}"
    started = time.monotonic()
    try:
        bench.make_source()
        asyncio.run(bench.run(args.stores.split(","), args.scenarios.split(",")))
    finally:
        for proc in reversed(bench.procs):
            stop(proc)
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - started
    print_table(bench.results, sizes)
    mode = args.mode or "quick"
    print(f"\n{mode} run in {elapsed:.0f} s; load average {load_before:.2f} before, {_load():.2f} after")
    report = {
        "mode": args.mode or "quick",
        "sizes": sizes.__dict__,
        "s3_part_size": bench.part_size,
        "s3_parts_in_flight": bench.in_flight,
        "ours_args": args.ours_arg,
        "ours_workers": args.ours_workers,
        "asgi_args": args.asgi_arg,
        "seconds": round(elapsed, 1),
        "load_average": [round(load_before, 2), round(_load(), 2)],
        "cpus": os.cpu_count(),
        "commit": commit,
        "results": bench.results,
        "ratios": ratios(bench.results),
        "note": "each result is the best of `repeat` interleaved rounds (all in `rounds`); "
        "ratios are the median over rounds of the per-round ratio",
    }
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"results written to {args.out}")
    return 0


def _commit() -> str:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()
    except OSError:
        return ""


if __name__ == "__main__":
    sys.exit(main())
