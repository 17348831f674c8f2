"""Safe defaults (issue 12): a fresh server is limited, "none" lifts each limit, an
unauthenticated server reachable from other machines says so at start-up, and log lines
escape what a client put in the path."""

from __future__ import annotations

import base64
import errno
import json
import logging
import re
from pathlib import Path

import pytest

from tests.hanging import HangingPatch, wait_until
from tests.tus_client import OCTETS, TUS, create, head, patch
from tusserver import Config, FileStore, create_app
from tusserver.app import HANDLERS_KEY
from tusserver.cli import build_parser, exposure_warning, is_loopback
from tusserver.load import field_specs, load_config, parse_text

GiB = 1 << 30
DEFAULT_MAX_SIZE = 10 * GiB
WARNING = "SECURITY: no authentication"


def infos(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.info"))


def metadata(count: int, value_size: int = 1) -> str:
    value = base64.b64encode(b"v" * value_size).decode()
    return ",".join(f"k{i} {value}" for i in range(count))


# -- a fresh `tusserver` -------------------------------------------------------------


def test_a_fresh_server_limits_size_metadata_and_expiry(servers, tmp_path):
    data = tmp_path / "d"
    server = servers("--file-dir", str(data))
    status, headers, _ = server.request("OPTIONS", "/files/")
    assert (status, headers["Tus-Max-Size"]) == (200, str(DEFAULT_MAX_SIZE))
    assert "expiration" in headers["Tus-Extension"].split(",")

    status, _, body = server.request("POST", "/files/", headers={"Upload-Length": str(DEFAULT_MAX_SIZE + 1)})
    assert status == 413, body
    status, _, body = server.request("POST", "/files/", headers={"Upload-Metadata": metadata(33), "Upload-Length": "1"})
    assert (status, body) == (400, b"Upload-Metadata has more keys than allowed: 33 keys; the limit is 32\n")
    big = "k " + "A" * 4092 + ",a"  # 4096 bytes: at the limit
    status, _, body = server.request("POST", "/files/", headers={"Upload-Metadata": big + "b", "Upload-Length": "1"})
    assert (status, body) == (413, b"Upload-Metadata is larger than the server allows: 4097 bytes; the limit is 4096\n")
    assert infos(data) == []  # nothing refused was created

    status, headers, _ = server.request(
        "POST", "/files/", headers={"Upload-Length": str(DEFAULT_MAX_SIZE), "Upload-Metadata": metadata(32)}
    )
    assert status == 201 and "Upload-Expires" in headers
    status, _, _ = server.request("POST", "/files/", headers={"Upload-Length": "1", "Upload-Metadata": big})
    assert status == 201
    assert len(infos(data)) == 2
    assert server.stop() == 0


def test_none_lifts_every_default_limit_from_flags_environment_and_file(servers, tmp_path):
    config = tmp_path / "tusserver.toml"
    config.write_text('max_metadata_size = "none"\nmax_concurrent_uploads = "none"\n')
    server = servers(
        "--file-dir",
        str(tmp_path / "d"),
        "--config",
        str(config),
        "--max-size",
        "none",
        env={"TUSSERVER_EXPIRE_AFTER": "none", "TUSSERVER_MAX_METADATA_COUNT": "none"},
    )
    status, headers, _ = server.request("OPTIONS", "/files/")
    assert status == 200 and "Tus-Max-Size" not in headers
    assert "expiration" not in headers["Tus-Extension"].split(",")
    huge = str(DEFAULT_MAX_SIZE * 1000)
    over = metadata(40, 100)  # 40 keys, 5,629 bytes: past both default metadata limits
    status, headers, _ = server.request("POST", "/files/", headers={"Upload-Length": huge, "Upload-Metadata": over})
    assert status == 201 and "Upload-Expires" not in headers
    location = "/files/" + headers["Location"].rsplit("/", 1)[1]
    status, headers, _ = server.request("HEAD", location)
    assert (status, headers["Upload-Length"], headers["Upload-Offset"]) == (200, huge, "0")
    assert server.stop() == 0


async def test_the_default_of_200_concurrent_uploads_is_enforced(aiohttp_client, tmp_path):
    client = await aiohttp_client(create_app(Config(), store=FileStore(str(tmp_path / "uploads"))))
    slots = client.app[HANDLERS_KEY].uploads
    paths = [await create(client, 10) for _ in range(201)]
    host, port = client.server.host, client.server.port
    hanging = []
    try:
        for path in paths[:200]:
            stalled = await HangingPatch.start(host, port, path, 0, 10)
            await stalled.send(b"01234")
            hanging.append(stalled)
        await wait_until(lambda: slots.active == 200, "200 PATCHes to take their slots")
        headers = {**TUS, "Upload-Offset": "0", "Content-Type": OCTETS}
        resp = await client.patch(paths[200], data=b"0123456789", headers=headers)
        assert (resp.status, resp.headers["Retry-After"]) == (503, "5")
        assert (await head(client, paths[200])).headers["Upload-Offset"] == "0"
    finally:
        for stalled in hanging:
            stalled.close()
    await wait_until(lambda: slots.active == 0, "the dropped PATCHes to let go")
    # A dropped connection keeps what arrived; the instance takes uploads again.
    assert {(await head(client, path)).headers["Upload-Offset"] for path in paths[:200]} == {"5"}
    await patch(client, paths[200], 0, b"0123456789")


# -- the start-up warning ------------------------------------------------------------


def test_unauthenticated_server_on_every_interface_warns_at_start_up(servers, tmp_path):
    server = servers("--file-dir", str(tmp_path / "d"), "--host", "0.0.0.0")
    assert server.request("OPTIONS", "/files/")[0] == 200
    assert server.stop() == 0
    warnings = [line for line in server.lines if WARNING in line]
    assert len(warnings) == 1, server.lines
    expected = " WARNING tusserver: SECURITY: no authentication, and 0.0.0.0 is reachable from other machines"
    assert expected in warnings[0]
    assert "auth_secret (TUSSERVER_AUTH_SECRET)" in warnings[0] and "pre-create" in warnings[0]


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--host", "0.0.0.0"], {"TUSSERVER_AUTH_SECRET": "s" * 32}),
        (["--host", "0.0.0.0", "--hooks-url", "http://127.0.0.1:9/hooks"], {}),  # pre-create is a default event
        (["--host", "127.0.0.1"], {}),
        ([], {}),  # the default host is loopback
    ],
    ids=["auth-secret", "pre-create-hook", "loopback", "default-host"],
)
def test_no_warning_with_authentication_or_on_loopback(servers, tmp_path, args, env):
    server = servers("--file-dir", str(tmp_path / "d"), *args, env=env)
    assert server.stop() == 0
    assert not [line for line in server.lines if WARNING in line], server.lines


def test_a_webhook_without_pre_create_is_no_authentication():
    config = Config(host="0.0.0.0", hooks_url="http://hooks.internal/tus", hooks_events=["post-finish"])
    assert exposure_warning(config) is not None
    config.hooks_events.append("pre-create")
    assert exposure_warning(config) is None


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST.", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.5", False),
        ("uploads.example.com", False),
    ],
)
def test_which_hosts_count_as_loopback(host, loopback):
    assert is_loopback(host) is loopback


# -- log lines -----------------------------------------------------------------------


def test_access_log_escapes_control_characters_in_the_path(servers, tmp_path):
    server = servers("--file-dir", str(tmp_path / "d"))
    forged = "2025-01-01 00:00:00,000 INFO tusserver.access: DELETE /files/abc 204"
    path = "/files/x%0D%0A" + forged.replace(" ", "%20") + "%1B%5B31m%E2%80%A8"
    assert server.request("HEAD", path)[0] == 404
    assert server.stop() == 0
    access = [line for line in server.lines if "tusserver.access" in line]
    assert len(access) == 1, server.lines  # the forged line is not a line of its own
    assert "HEAD /files/x\\r\\n" + forged + "\\x1b[31m\\u2028 404 in=0" in access[0]


@pytest.mark.parametrize(
    ("failure", "status", "logged"),
    [
        (RuntimeError("bug"), 500, "unhandled error on OPTIONS /x\\r\\nfake\\tline"),
        (OSError(errno.ENOSPC, "full"), 507, "storage failure on OPTIONS /x\\r\\nfake\\tline: [Errno 28] full"),
    ],
)
async def test_error_logs_escape_control_characters_in_the_path(
    aiohttp_client, tmp_path, caplog, failure, status, logged
):
    def max_size_for(request):
        raise failure

    app = create_app(Config(), store=FileStore(str(tmp_path / "uploads")), max_size_for=max_size_for)
    client = await aiohttp_client(app)
    with caplog.at_level(logging.INFO, logger="tusserver"):
        resp = await client.options("/x%0D%0Afake%09line")
    assert resp.status == status
    messages = [r.getMessage() for r in caplog.records if r.name in ("tusserver", "tusserver.access")]
    assert [m for m in messages if m.startswith(logged.split(" /")[0])] == [logged]
    assert all(m.isprintable() for m in messages), messages


def test_escaping_leaves_ordinary_paths_alone():
    from tusserver.logs import printable

    assert printable("/files/Ünïcödé-名前_1") == "/files/Ünïcödé-名前_1"
    assert printable("a\rb\nc\x00d\x7fe\x85f\u202eg\udcff") == "a\\rb\\nc\\x00d\\x7fe\\x85f\\u202eg\\udcff"


def test_the_hardened_configuration_in_the_readme_loads(tmp_path):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Exposing tusserver on the internet", 1)[1]
    toml = section.split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "hardened.toml"
    path.write_text(toml)
    config = load_config(env={"TUSSERVER_AUTH_SECRET": "s" * 32}, config_file=str(path))
    assert (config.max_size, config.max_concurrent_uploads, config.downloads_require_hook) == (2 << 30, 100, True)
    assert config.cors_origins == ["https://app.example.com"]
    assert exposure_warning(config) is None
    assert exposure_warning(load_config(env={}, config_file=str(path))) is None  # the pre-create webhook


def test_the_docker_image_runs_with_the_limits_its_comments_name():
    dockerfile = (Path(__file__).resolve().parent.parent / "Dockerfile").read_text()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.MULTILINE).group(1))
    assert entrypoint[0] == "tusserver" and not re.search(r"^ENV .*TUSSERVER_", dockerfile, re.MULTILINE)
    args = vars(build_parser().parse_args(entrypoint[1:]))
    config = load_config(cli={k: v for k, v in args.items() if k not in ("command", "config")}, env={})
    assert config.host == "0.0.0.0" and exposure_warning(config) is not None
    commented = dict(re.findall(r"^#   ([a-z_]+) +(\S+) ", dockerfile, re.MULTILINE))
    limits = {"max_size", "expire_after", "max_concurrent_uploads", "max_metadata_size", "max_metadata_count"}
    assert set(commented) == limits
    specs = {spec.name: spec for spec in field_specs()}
    assert {key: getattr(config, key) for key in commented} == {
        key: parse_text(specs[key], text) for key, text in commented.items()
    }
