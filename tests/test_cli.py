"""The `tusserver` command as operators run it: a real process, real HTTP, real signals."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from tests.conftest import free_port

TUS = {"Tus-Resumable": "1.0.0"}
# A hang guard only: a healthy server starts and stops far sooner.
PATIENCE = 30


class Server:
    """`python -m tusserver ...` in a subprocess, with its stderr collected line by line."""

    def __init__(self, cwd: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("TUSSERVER_")}, **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tusserver", "--port", str(self.port), *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.listening = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if not self.listening.wait(PATIENCE):
            self.proc.kill()
            raise AssertionError(f"server did not start: {self.lines}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if "listening on" in line:
                self.listening.set()
        self.listening.set()

    def request(self, method: str, path: str, body: bytes = b"", headers: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=PATIENCE)
        try:
            conn.request(method, path, body=body or None, headers={**TUS, **(headers or {})})
            response = conn.getresponse()
            return response.status, response.headers, response.read()
        finally:
            conn.close()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(PATIENCE)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(PATIENCE)
        return code


def test_upload_over_http_then_download_byte_exact_and_stop_on_sigterm(servers, tmp_path):
    data_dir = tmp_path / "uploads"
    server = servers("--file-dir", str(data_dir))
    payload = os.urandom(300_000) + b"end"
    base = f"http://127.0.0.1:{server.port}/files/"

    status, headers, _ = server.request("POST", "/files/", headers={"Upload-Length": str(len(payload))})
    assert status == 201
    location = headers["Location"]
    assert location.startswith(base)
    path = location[len(base) - len("/files/") :]
    upload_id = location[len(base) :]

    status, headers, _ = server.request(
        "PATCH",
        path,
        body=payload[:100_000],
        headers={"Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
    )
    assert (status, headers["Upload-Offset"]) == (204, "100000")
    status, headers, _ = server.request(
        "PATCH",
        path,
        body=payload[100_000:],
        headers={"Upload-Offset": "100000", "Content-Type": "application/offset+octet-stream"},
    )
    assert (status, headers["Upload-Offset"]) == (204, str(len(payload)))

    status, _, body = server.request("GET", path)
    assert status == 200
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(payload).hexdigest()
    assert hashlib.sha256((data_dir / upload_id).read_bytes()).digest() == hashlib.sha256(payload).digest()

    assert server.stop(signal.SIGTERM) == 0
    access = [line for line in server.lines if "tusserver.access" in line]
    assert len(access) == 4, server.lines
    assert "POST /files/ 201" in access[0]
    assert f"PATCH {path} 204 in=100000 " in access[1]
    assert f"PATCH {path} 204 in={len(payload) - 100_000} " in access[2]
    assert f"GET {path} 200" in access[3]
    assert all(line.endswith(f"id={upload_id}") for line in access)
    assert not [line for line in server.lines if "aiohttp.access" in line or "Traceback" in line]


def test_base_path_without_trailing_slash_reaches_the_collection(servers, tmp_path):
    server = servers("--file-dir", str(tmp_path / "d"), "--base-path", "/uploads")
    status, headers, _ = server.request(
        "POST",
        "/uploads",
        body=b"hello",
        headers={"Upload-Length": "5", "Content-Type": "application/offset+octet-stream"},
    )
    assert (status, headers["Upload-Offset"]) == (201, "5")
    location = headers["Location"]
    assert location.startswith(f"http://127.0.0.1:{server.port}/uploads/")
    status, _, body = server.request("GET", location.split(str(server.port), 1)[1])
    assert (status, body) == (200, b"hello")
    status, headers, _ = server.request("OPTIONS", "/uploads")
    assert status == 200 and headers["Tus-Version"] == "1.0.0"
    assert server.request("POST", "/other", headers={"Upload-Length": "1"})[0] == 404
    assert server.stop(signal.SIGINT) == 0


def test_root_base_path_and_json_logs(servers, tmp_path):
    server = servers("--file-dir", str(tmp_path / "d"), "--base-path", "/", "--log-format", "json")
    status, headers, _ = server.request("POST", "/", headers={"Upload-Length": "3"})
    assert status == 201
    upload_path = "/" + headers["Location"].rsplit("/", 1)[1]
    status, headers, _ = server.request("HEAD", upload_path)
    assert (status, headers["Upload-Offset"], headers["Upload-Length"]) == (200, "0", "3")
    assert server.stop() == 0
    records = [json.loads(line) for line in server.lines]
    access = [r for r in records if r["logger"] == "tusserver.access"]
    assert [r["message"].split(" ")[:3] for r in access] == [["POST", "/", "201"], ["HEAD", upload_path, "200"]]
    assert {"time", "level", "logger", "message"} <= set(records[0])


def test_port_that_is_not_a_number_fails_clearly():
    result = subprocess.run(
        [sys.executable, "-m", "tusserver", "--port", "notanumber"],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
    )
    assert result.returncode == 2
    assert "tusserver: error: argument --port: expected an integer, got 'notanumber'" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_config_key_fails_clearly(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("max_sise = 10\n")
    result = subprocess.run(
        [sys.executable, "-m", "tusserver", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
    )
    assert result.returncode == 2
    assert f"unknown key 'max_sise' in {config} (did you mean 'max_size'?)" in result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_fails_without_traceback(servers, tmp_path):
    first = servers("--file-dir", str(tmp_path / "a"))
    result = subprocess.run(
        [sys.executable, "-m", "tusserver", "--port", str(first.port), "--file-dir", str(tmp_path / "b")],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
    )
    assert result.returncode == 1
    assert "cannot start:" in result.stderr and "Traceback" not in result.stderr
    assert first.stop() == 0


def test_cleanup_subcommand_runs_once_and_exits(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tusserver", "cleanup", "--file-dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
    )
    assert result.returncode == 0, result.stderr
    assert "cleanup removed 0 expired uploads" in result.stderr


def test_starts_in_a_kubernetes_pod_with_service_links(servers, tmp_path):
    from tests.test_config import SERVICE_LINKS

    # The port comes from the flag; TUSSERVER_PORT=tcp://... is the Service's link, not a port.
    server = servers("--file-dir", str(tmp_path / "d"), env=SERVICE_LINKS)
    status, headers, _ = server.request("POST", "/files/", headers={"Upload-Length": "3"})
    assert status == 201
    assert server.stop() == 0
    ignored = [line for line in server.lines if "service-link" in line]
    assert len(ignored) == 1, server.lines
    assert f"ignoring {len(SERVICE_LINKS)} Kubernetes service-link variables" in ignored[0]
    assert "enableServiceLinks: false" in ignored[0]


def test_unknown_variable_beside_service_links_still_fails_clearly(tmp_path):
    from tests.test_config import SERVICE_LINKS

    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSSERVER_")}
    result = subprocess.run(
        [sys.executable, "-m", "tusserver", "--file-dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        env={**env, **SERVICE_LINKS, "TUSSERVER_MAX_SISE": "1GiB"},
    )
    assert result.returncode == 2
    assert "unknown environment variable TUSSERVER_MAX_SISE (did you mean 'TUSSERVER_MAX_SIZE'?)" in result.stderr
    assert "Traceback" not in result.stderr
