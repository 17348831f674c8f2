"""Slow and many bodies are bounded, in a real server process: RAM per body in flight
(VmRSS / VmHWM from /proc), and a minimum upload rate (408, the bytes kept)."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import resource
import struct
import termios
import time
from pathlib import Path

import pytest

from tests.hanging import HangingPatch, wait_until
from tests.serverproc import ServerProcess

KiB = 1 << 10
MiB = 1 << 20
PATIENCE = 60  # seconds; a bound against hanging, not a timing assertion


@pytest.fixture(autouse=True)
def enough_file_descriptors():
    """Hundreds of connections on each side; the server inherits the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def proc_status(pid: int, key: str) -> int:
    """A /proc/<pid>/status value in KiB (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def unsent(writer: asyncio.StreamWriter) -> int:
    """Bytes the kernel has not yet handed to the peer (TIOCOUTQ)."""
    sock = writer.get_extra_info("socket")
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]


async def settled_rss(pid: int, quiet: float = 2.0) -> int:
    """VmRSS once it has stopped moving (by more than 256 KiB) for `quiet` seconds."""
    last, stable_since, deadline = proc_status(pid, "VmRSS"), time.monotonic(), time.monotonic() + PATIENCE
    while time.monotonic() - stable_since < quiet and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        now = proc_status(pid, "VmRSS")
        if abs(now - last) > 256:
            stable_since = time.monotonic()
        last = now
    return last


async def raw_request(port: int, request: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int, dict]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request.encode())
    # The answer to a HEAD has no body, whatever its Content-Length says (a 423's message).
    status, headers = await read_head(reader, body=not request.startswith("HEAD "))
    return reader, writer, status, headers


async def read_head(reader: asyncio.StreamReader, body: bool = True) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
    if body:
        await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers


async def create(port: int, length: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    """POST over a raw connection kept open for the PATCH; returns it and the upload's path."""
    reader, writer, status, headers = await raw_request(
        port,
        f"POST /files/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Length: {length}\r\n"
        "Content-Length: 0\r\n\r\n",
    )
    assert status == 201
    return reader, writer, "/files/" + headers["location"].rsplit("/", 1)[1]


def patch_head(path: str, offset: int, length: int) -> bytes:
    return (
        f"PATCH {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
        f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: {offset}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


async def send(writer: asyncio.StreamWriter, data: bytes) -> None:
    view = memoryview(data)
    for start in range(0, len(data), 64 * KiB):  # the client's own buffer stays small
        writer.write(view[start : start + 64 * KiB])
        await writer.drain()


async def head_offset(port: int, path: str) -> int:
    status, headers = await head(port, path)
    assert status == 200
    return int(headers["upload-offset"])


async def head(port: int, path: str) -> tuple[int, dict[str, str]]:
    _, writer, status, headers = await raw_request(
        port, f"HEAD {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nConnection: close\r\n\r\n"
    )
    writer.close()
    return status, headers


# RAM per body is measured here: the default max_concurrent_uploads (200) has its own test.
UNLIMITED = ("--max-concurrent-uploads", "none")


@pytest.fixture(params=["asyncio", "uvloop"])
def event_loop_kind(request) -> str:
    """The server's event loop: asyncio's, or uvloop's (`tusserver[speed]`, the Docker image),
    which reads sockets its own way."""
    return request.param


def loop_args(kind: str) -> tuple[str, ...]:
    return ("--uvloop",) if kind == "uvloop" else ("--no-uvloop",)


def assert_runs_on(pid: int, kind: str) -> None:
    """`--uvloop` falls back to asyncio's loop when uvloop is missing: check which one runs."""
    with open(f"/proc/{pid}/maps") as f:
        loaded = "/uvloop/loop." in f.read()
    assert loaded == (kind == "uvloop"), f"the server is not on {kind}'s loop"


STALLED_BODY_BYTES = 900_000


async def test_300_stalled_bodies_grow_the_servers_rss_by_at_most_256_kib_each(
    server_args, store_kind, event_loop_kind, tmp_path
):
    """Each PATCH announces 1 MiB, sends 900 KB, then stalls (910-950 KiB of RSS each on the
    disk store before; 410-450 KiB on uvloop while its socket reads were 250 KB each).
    The disk store has the bytes on disk, the S3 store in its spool files."""
    server = await ServerProcess(*UNLIMITED, *loop_args(event_loop_kind), *server_args).start()
    try:
        assert_runs_on(server.proc.pid, event_loop_kind)
        connections = [await create(server.port, MiB) for _ in range(300)]
        await stall_bodies(server, connections, f"{store_kind}, {event_loop_kind}", store_kind, tmp_path / "uploads")
    finally:
        await server.stop()


async def test_300_stalled_bodies_on_the_asgi_door_grow_its_rss_by_at_most_256_kib_each(
    server_args, store_kind, tmp_path
):
    """The same on the ASGI door (uvicorn, from_env): what the body pump takes ahead of the
    store, and what uvicorn buffers, stay bounded per body (727-808 KiB each before from_env
    gave freed heap memory back to the system); every byte is kept on the drop."""
    server = await ServerProcess(*UNLIMITED, *server_args, door="asgi").start()
    try:
        paths = []
        for _ in range(300):
            _, creator, path = await create(server.port, MiB)
            creator.close()
            paths.append(path)
        # Each PATCH on a connection of its own: uvicorn closes idle ones after 5 s.
        connections = [(*(await asyncio.open_connection("127.0.0.1", server.port)), path) for path in paths]
        await stall_bodies(server, connections, f"asgi, {store_kind}", store_kind, tmp_path / "uploads")
    finally:
        await server.stop()


async def stall_bodies(server, connections, label: str, store_kind: str, uploads: Path) -> None:
    """On each (reader, writer, upload path): a PATCH announcing 1 MiB that sends 900 KB, then
    stalls. The server's RSS grows by at most 256 KiB per body; the disk store has the bytes
    on disk (the stall is no reason to hold them in RAM); dropped, each keeps every byte."""
    pid = server.proc.pid
    before = await settled_rss(pid)
    data = os.urandom(STALLED_BODY_BYTES)
    for _, writer, path in connections:
        writer.write(patch_head(path, 0, MiB))
        await send(writer, data)
    # Every byte has left our sockets, and the server has taken what its kernel got.
    await wait_until(lambda: all(unsent(w) == 0 for _, w, _ in connections), "the bodies to be sent", PATIENCE)
    after = await settled_rss(pid)
    per_body = (after - before) / len(connections)
    print(f"RSS per stalled body ({label}): {per_body:.1f} KiB ({before} -> {after} KiB)")
    assert per_body <= 256, f"{per_body:.1f} KiB of server RSS per stalled body"
    if store_kind == "file":
        for _, _, path in connections:
            assert os.path.getsize(uploads / path.rsplit("/", 1)[1]) == STALLED_BODY_BYTES
    for _, writer, _ in connections:
        writer.close()
    for _, _, path in connections[:: len(connections) // 10]:  # a sample: on S3 each HEAD costs calls
        await wait_until_offset(server.port, path, STALLED_BODY_BYTES)  # kept when the client went away


async def wait_until_offset(port: int, path: str, offset: int) -> None:
    """The dropped body's bytes are stored once the server has noticed the drop."""
    now = None
    for _ in range(int(PATIENCE / 0.2)):
        status, headers = await head(port, path)
        # 423: the dropped PATCH still holds the upload while it hands its bytes to S3.
        assert status in (200, 423), status
        now = headers.get("upload-offset")
        if status == 200 and int(now) == offset:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{path} is at {now}, not {offset}")

async def test_500_concurrent_1mib_uploads_peak_under_200_mib_of_server_rss(event_loop_kind, tmp_path):
    """480-660 MiB above the idle server's RSS before bodies were bounded; 240-260 MiB on
    uvloop while its socket reads were 250 KB each."""
    data = os.urandom(MiB)
    server = await ServerProcess(
        *UNLIMITED, *loop_args(event_loop_kind), "--store", "file", "--file-dir", str(tmp_path / "uploads")
    ).start()
    try:
        pid = server.proc.pid
        assert_runs_on(pid, event_loop_kind)
        idle = proc_status(pid, "VmRSS")

        async def upload() -> str:
            reader, writer, path = await create(server.port, len(data))
            writer.write(patch_head(path, 0, len(data)))
            await send(writer, data)
            status, headers = await read_head(reader)
            writer.close()
            assert (status, headers["upload-offset"]) == (204, str(len(data)))
            return path

        paths = await asyncio.wait_for(asyncio.gather(*(upload() for _ in range(500))), PATIENCE * 3)
        peak = proc_status(pid, "VmHWM") - idle
        print(f"peak RSS for 500 concurrent 1 MiB uploads ({event_loop_kind}): +{peak / KiB:.0f} MiB")
        assert peak <= 200 * KiB, f"peak RSS {peak / KiB:.0f} MiB above the idle server"
        digest = hashlib.sha256(data).hexdigest()
        for path in paths:
            with open(tmp_path / "uploads" / path.rsplit("/", 1)[1], "rb") as f:
                assert hashlib.sha256(f.read()).hexdigest() == digest
    finally:
        await server.stop()


async def test_a_body_below_min_upload_rate_is_408_and_keeps_its_bytes(tmp_path):
    """A trickle never idle for read_timeout, but below the minimum rate, is cut off at the
    end of the window; HEAD then reports every byte received."""
    server = await ServerProcess(
        "--store", "file", "--file-dir", str(tmp_path / "uploads"),
        "--read-timeout", "1", "--min-upload-rate", "1000", "--min-upload-rate-window", "2",
    ).start()  # fmt: skip
    try:
        _, creator, path = await create(server.port, 10_000)
        creator.close()
        hanging = await HangingPatch.start("127.0.0.1", server.port, path, 0, 10_000)
        answer = asyncio.ensure_future(hanging.response())
        data = os.urandom(10_000)
        deadline = time.monotonic() + PATIENCE
        while not answer.done() and time.monotonic() < deadline:  # 500 bytes/s, every 0.2 s
            try:
                await hanging.send(data[hanging.sent : hanging.sent + 100])
            except ConnectionError:
                break
            await asyncio.wait({answer}, timeout=0.2)
        response = await asyncio.wait_for(answer, PATIENCE)
        hanging.close()
        assert response.status == 408
        assert response.body.startswith(b"request body arrived slower than the minimum upload rate: ")
        assert response.body.endswith(b"; the minimum is 1000 bytes/s\n")
        offset = await head_offset(server.port, path)
        assert 0 < offset <= hanging.sent < 2000  # cut off in its first window
        with open(tmp_path / "uploads" / path.rsplit("/", 1)[1], "rb") as f:
            assert f.read() == data[:offset]
    finally:
        await server.stop()


async def test_a_body_at_min_upload_rate_with_pauses_completes(tmp_path):
    """5,000 bytes/s in bursts with 0.5 s pauses, over three 1 s windows at 1,000 bytes/s."""
    server = await ServerProcess(
        "--store", "file", "--file-dir", str(tmp_path / "uploads"),
        "--min-upload-rate", "1000", "--min-upload-rate-window", "1",
    ).start()  # fmt: skip
    try:
        data = os.urandom(15_000)
        _, creator, path = await create(server.port, len(data))
        creator.close()
        hanging = await HangingPatch.start("127.0.0.1", server.port, path, 0, len(data))
        for start in range(0, len(data), 2500):
            await hanging.send(data[start : start + 2500])
            await asyncio.sleep(0.5)
        response = await asyncio.wait_for(hanging.response(), PATIENCE)
        hanging.close()
        assert (response.status, response.headers["upload-offset"]) == (204, str(len(data)))
        with open(tmp_path / "uploads" / path.rsplit("/", 1)[1], "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == hashlib.sha256(data).hexdigest()
    finally:
        await server.stop()
