"""The S3 store refuses to start without credentials or access to its bucket, with one
line that names the problem, instead of a server that answers 503 to every upload."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import free_port, start_moto, stop_process
from tusserver.stores.base import StoreStartError
from tusserver.stores.s3 import S3Store

PATIENCE = 60  # a hang guard: a server that starts anyway never exits by itself


def run_server(tmp_path, endpoint: str, bucket: str, *args: str, env: dict[str, str] | None = None):
    base = {k: v for k, v in os.environ.items() if not k.startswith("TUSSERVER_")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tusserver",
            *args,
            "--port",
            str(free_port()),
            "--store",
            "s3",
            "--s3-bucket",
            bucket,
            "--s3-endpoint",
            endpoint,
            "--s3-path-style",
            "--s3-region",
            "us-east-1",
            "--temp-dir",
            str(tmp_path / "spool"),
        ],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        env=base if env is None else env,
    )


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if " ERROR " in line or "error" in line.lower()]


def test_no_credentials_stops_the_server_with_one_clear_line(tmp_path, moto_endpoint, bucket):
    empty = tmp_path / "empty"
    empty.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TUSSERVER_"))}
    env.update(
        AWS_SHARED_CREDENTIALS_FILE=str(empty),
        AWS_CONFIG_FILE=str(empty),
        AWS_EC2_METADATA_DISABLED="true",  # no instance-metadata lookups over the network
    )
    result = run_server(tmp_path, moto_endpoint, bucket, env=env)
    assert result.returncode == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].endswith(
        "cannot start: S3: no credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
        "or AWS_PROFILE, or give the machine a role"
    )


@pytest.mark.parametrize("command", [[], ["cleanup"]])
def test_a_bucket_that_does_not_exist_stops_the_server_with_one_clear_line(tmp_path, moto_endpoint, command):
    result = run_server(tmp_path, moto_endpoint, "no-such-bucket", *command)
    assert result.returncode == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].endswith(f"cannot start: S3: no such bucket 'no-such-bucket' at {moto_endpoint}")
    assert "listening on" not in result.stderr


async def test_access_denied_stops_the_store_at_start(tmp_path):
    # This moto checks signatures against its own IAM users: ours are unknown to it.
    proc, endpoint = start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        store = S3Store("some-bucket", endpoint_url=endpoint, path_style=True, temp_dir=str(tmp_path))
        with pytest.raises(StoreStartError) as caught:
            await store.start()
        assert str(caught.value) == (
            f"S3: access denied to bucket 'some-bucket' at {endpoint}: wrong credentials, or no permission"
        )
        assert store.client is None  # closed again
    finally:
        stop_process(proc)


async def test_unreachable_endpoint_stops_the_store_at_start(tmp_path):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    store = S3Store("b", endpoint_url=endpoint, path_style=True, temp_dir=str(tmp_path))
    store.retry_attempts = 1  # the server retries; the test need not wait for it
    with pytest.raises(StoreStartError, match=rf"^S3: endpoint {endpoint} unreachable: Could not connect"):
        await store.start()
    assert store.client is None


async def test_a_usable_bucket_starts(tmp_path, moto_endpoint, bucket):
    store = S3Store(bucket, endpoint_url=moto_endpoint, path_style=True, temp_dir=str(tmp_path))
    await store.start()
    try:
        assert await store.ready()
    finally:
        await store.close()
