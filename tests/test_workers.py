"""`tusserver --workers N` and the file locks its processes share (locking/files.py):
locks, releases, versions and leases across processes; the server's workers on one port,
their metrics added up, a dead worker started again, and SIGTERM draining them all."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.hanging import HangingPatch
from tests.test_cli import PATIENCE, TUS
from tusserver.locking.files import FileLocker
from tusserver.workers import remove_stale_runtime

ROOT = Path(__file__).resolve().parent.parent


def lockproc(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.lockproc", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )


def wait_for(path: Path, timeout: float = PATIENCE) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


# -- the file locks ---------------------------------------------------------------------


def test_a_lock_is_held_by_one_process_at_a_time(tmp_path):
    counter = tmp_path / "counter"
    counter.write_text("0")
    procs = [lockproc("count", str(tmp_path / "locks"), "u1", str(counter), "150") for _ in range(3)]
    for proc in procs:
        assert proc.wait(60) == 0
    assert counter.read_text() == "450"  # no increment lost: never two holders at once
    assert sorted(p.name for p in (tmp_path / "locks").iterdir() if p.name.endswith(".lock")) == []


async def test_a_request_in_another_process_asks_the_holder_to_let_go(tmp_path):
    locks = tmp_path / "locks"
    ready, asked = tmp_path / "ready", tmp_path / "asked"
    holder = lockproc("hold", str(locks), "u1", str(ready), str(asked))
    await asyncio.to_thread(wait_for, ready)
    locker = FileLocker(str(locks), timeout=5.0)
    await locker.start()
    try:
        assert await locker.version("u1") is None  # held elsewhere: no version to trust
        started = time.monotonic()
        async with locker.lock("u1"):
            waited = time.monotonic() - started
            assert asked.exists()  # the holder was asked, let go, and said so
        assert waited < 5.0  # got it by asking, not by the holder's 20 s running out
    finally:
        await locker.close()
    assert await asyncio.to_thread(holder.wait, PATIENCE) == 0


async def test_versions_move_with_every_lock_in_any_process(tmp_path):
    locks = str(tmp_path / "locks")
    locker = FileLocker(locks)
    await locker.start()
    try:
        first = await locker.version("u1")
        assert first and await locker.version("u1") == first  # stable while nobody locks
        out, _ = await asyncio.to_thread(lockproc("version", locks, "u1").communicate, timeout=PATIENCE)
        assert int(out) == first  # the same number in another process
        counter = tmp_path / "c"
        counter.write_text("0")
        assert await asyncio.to_thread(lockproc("count", locks, "u1", str(counter), "1").wait, PATIENCE) == 0
        second = await locker.version("u1")
        assert second and second != first  # another process took the lock: kept states are stale
        async with locker.lock("u1"):
            assert await locker.version("u1") is None
        assert await locker.version("u1") not in (None, first, second)
    finally:
        await locker.close()


def test_a_lease_is_taken_by_one_process(tmp_path):
    locks = str(tmp_path / "locks")
    outs = [lockproc("lease", locks, "cleanup") for _ in range(3)]
    answers = sorted(p.communicate(timeout=PATIENCE)[0].strip() for p in outs)
    assert answers == ["False", "False", "True"]


async def test_made_up_lock_names_leave_no_files(tmp_path):
    locker = FileLocker(str(tmp_path / "locks"))
    await locker.start()
    try:
        for n in range(200):
            async with locker.lock(f"made-up-{n}"):
                pass
            await locker.version(f"other-{n}")
        with pytest.raises(ValueError):
            async with locker.lock("../escape"):
                pass
    finally:
        await locker.close()
    assert sorted(p.name for p in (tmp_path / "locks").iterdir()) == ["versions"]


# -- the server's workers ---------------------------------------------------------------


class Workers:
    """`python -m tusserver --workers N ...` and its processes."""

    def __init__(self, servers, *args: str) -> None:
        self.server = servers(*args)
        self.port = self.server.port
        deadline = time.monotonic() + PATIENCE
        while len(self.children()) < int(args[args.index("--workers") + 1]):
            assert time.monotonic() < deadline, self.server.lines
            time.sleep(0.05)

    def children(self) -> list[int]:
        return children_of(self.server.proc.pid)

    def request(self, method: str, path: str, body: bytes = b"", headers: dict | None = None):
        return self.server.request(method, path, body, headers)


def children_of(parent: int) -> list[int]:
    """Live processes whose parent is `parent` (/proc/*/stat: every kernel has it)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == parent and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return sorted(found)


def alive(pid: int) -> bool:
    """Running: not gone, and not a zombie waiting for a parent (or an init) to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def upload(port: int, data: bytes) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=PATIENCE)
    try:
        conn.request("POST", "/files/", headers={**TUS, "Upload-Length": str(len(data))})
        response = conn.getresponse()
        response.read()
        assert response.status == 201
        path = response.headers["Location"].split(f":{port}", 1)[-1]
        for start in range(0, len(data), 100_000):
            headers = {**TUS, "Upload-Offset": str(start), "Content-Type": "application/offset+octet-stream"}
            conn.request("PATCH", path, body=data[start : start + 100_000], headers=headers)
            response = conn.getresponse()
            response.read()
            assert response.status == 204, response.status
        return path
    finally:
        conn.close()


def test_workers_share_the_port_the_uploads_and_the_metrics(servers, tmp_path):
    data_dir = tmp_path / "uploads"
    workers = Workers(servers, "--workers", "2", "--file-dir", str(data_dir))
    children = workers.children()
    before = {pid: cpu_ticks(pid) for pid in children}
    payloads = [os.urandom(250_000 + n) for n in range(40)]
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda d: upload(workers.port, d), payloads))
    for path, data in zip(paths, payloads, strict=True):
        stored = (data_dir / path.rsplit("/", 1)[1]).read_bytes()
        assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(data).hexdigest()
        status, headers, _ = workers.request("HEAD", path)
        assert status == 200 and headers["Upload-Offset"] == str(len(data))
    # Both workers served: 40 connections from as many source ports, spread by the kernel.
    assert all(cpu_ticks(pid) > before[pid] for pid in children)
    # /metrics, from whichever worker answers, counts every worker's requests.
    _, _, text = workers.request("GET", "/metrics")
    found = {
        (m.decode(), s.decode()): float(v)
        for m, s, v in re.findall(rb'tusserver_requests_total\{method="(\w+)",status="(\d+)"\} ([\d.]+)', text)
    }
    assert found[("POST", "201")] == 40
    assert found[("PATCH", "204")] == sum(-(-len(d) // 100_000) for d in payloads)
    assert found[("HEAD", "200")] == 40
    received = re.search(rb"tusserver_received_bytes_total ([\d.e+]+)", text)
    assert received is not None and float(received.group(1)) == sum(len(d) for d in payloads)


async def test_a_head_on_another_worker_interrupts_a_hanging_patch(servers, tmp_path):
    data_dir = tmp_path / "uploads"
    workers = Workers(servers, "--workers", "2", "--file-dir", str(data_dir))
    data = os.urandom(3_000_000)
    sent = 1_234_567
    for _ in range(8):  # the HEADs come on new connections: some land on the other worker
        _, headers, _ = workers.request("POST", "/files/", headers={"Upload-Length": str(len(data))})
        path = headers["Location"].split(f":{workers.port}", 1)[-1]
        stored = data_dir / path.rsplit("/", 1)[1]
        old = await HangingPatch.start("127.0.0.1", workers.port, path, 0, len(data))
        await old.send(data[:sent])
        deadline = time.monotonic() + PATIENCE
        while stored.stat().st_size < sent:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        started = time.monotonic()
        status, headers, _ = await asyncio.to_thread(workers.request, "HEAD", path)
        assert time.monotonic() - started < 3.0  # asked and let go, not the lock timeout
        assert status == 200 and headers["Upload-Offset"] == str(sent)
        interrupted = await old.response()
        assert interrupted.status == 400 and b"interrupted by a newer request" in interrupted.body
        old.close()
        status, headers, _ = workers.request(
            "PATCH", path, data[sent:], {"Upload-Offset": str(sent), "Content-Type": "application/offset+octet-stream"}
        )
        assert status == 204 and headers["Upload-Offset"] == str(len(data))
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()


def test_a_dead_worker_is_started_again_and_sigterm_stops_them_all(servers, tmp_path):
    workers = Workers(servers, "--workers", "2", "--file-dir", str(tmp_path / "uploads"))
    victim = workers.children()[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + PATIENCE
    while victim in workers.children() or len(workers.children()) < 2:
        assert time.monotonic() < deadline, workers.server.lines
        time.sleep(0.05)
    assert any("ended with signal SIGKILL; starting it again" in line for line in workers.server.lines)
    for _ in range(10):
        assert upload(workers.port, b"x" * 1000)
    children = workers.children()
    assert workers.server.stop(signal.SIGTERM) == 0
    assert not any(alive(pid) for pid in children)


def test_workers_end_when_the_master_is_killed(servers, tmp_path):
    workers = Workers(servers, "--workers", "2", "--file-dir", str(tmp_path / "uploads"))
    children = workers.children()
    workers.server.proc.kill()
    workers.server.proc.wait()
    deadline = time.monotonic() + PATIENCE
    while any(alive(pid) for pid in children):
        assert time.monotonic() < deadline, "a worker outlived its master"
        time.sleep(0.05)
    # The killed master could not remove its runtime directory: the next master does.
    left = [p for p in Path(tempfile.gettempdir()).glob(f"tusserver-run-{workers.server.proc.pid}-*")]
    assert len(left) == 1
    assert remove_stale_runtime() >= 1
    assert not left[0].exists()


def test_a_starting_worker_leaves_the_temp_files_of_live_workers(tmp_path):
    # A worker started again must not delete what the others are writing right now.
    from tusserver.stores.file import FileStore

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        directory = tmp_path / "uploads"
        directory.mkdir()
        names = {
            "live": f"abc.info.tmp-{other.pid}-0123abcd",
            "live_spool": f"abc.tmp-{other.pid}-89abcdef",
            "dead": f"abc.info.tmp-{gone.pid}-0123abcd",
            "old": "abc.tmp-0123abcd",
        }
        for name in names.values():
            (directory / name).write_bytes(b"x")
        asyncio.run(FileStore(str(directory)).start())
        assert sorted(os.listdir(directory)) == sorted([names["live"], names["live_spool"]])
    finally:
        other.kill()
        other.wait()


def test_workers_that_cannot_start_stop_the_master(tmp_path):
    # As a single server whose store cannot start exits 1, rather than retrying for ever.
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSSERVER_")}
    done = subprocess.run(
        [sys.executable, "-m", "tusserver", "--port", str(port), "--workers", "2", "--file-dir", "/proc/no-such-dir"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=PATIENCE,
    )
    assert done.returncode == 1
    assert "ended 3 times within 10s of its start; stopping" in done.stdout + done.stderr
    assert f"127.0.0.1:{port}" not in Path("/proc/net/tcp").read_text()  # nothing left listening
