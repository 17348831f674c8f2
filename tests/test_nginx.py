"""Scale-out as README describes it: two instances on one S3 bucket and one Redis behind
nginx (round-robin, no sticky sessions, request bodies streamed), for both front doors
(the `tusserver` command, and `uvicorn --factory tusserver.asgi:from_env`). Real clients
(tus-js-client in Node, tuspy) upload through nginx; each upload's PATCHes land on both
instances, and what S3 holds is exactly what was sent."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.asgiproc import ROOT, Process, server_env, tuspy_upload, tusserver_command, uvicorn
from tests.conftest import free_port, stop_process
from tests.hanging import HangingPatch
from tests.interop.interop_support import make_file, read_s3_object, run_node, sha256

MiB = 1 << 20
INTEROP = ROOT / "tests" / "interop"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
# The README's nginx config, for two upstreams: what an operator would write.
NGINX_CONF = """\
user {user};
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 256; }}
http {{
    log_format upstreams '$request_method $request_uri $status $upstream_addr';
    access_log {dir}/access.log upstreams;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    upstream tusserver {{
        server 127.0.0.1:{port_a};
        server 127.0.0.1:{port_b};
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        location /files/ {{
            proxy_pass http://tusserver;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering off;
            proxy_buffering off;
            client_max_body_size 0;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"""


@pytest.fixture(scope="module")
def node_modules() -> Path:
    tree = INTEROP / "node_modules"
    if not (tree / "tus-js-client").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=INTEROP, check=True, stdout=sys.stderr)
    return tree


class Nginx:
    """Debian's nginx as a foreground child, its config, logs and temp dirs in `directory`."""

    def __init__(self, directory: Path, upstreams: list[int]) -> None:
        if not os.access(NGINX, os.X_OK):
            pytest.fail("nginx is not installed (apt-get install nginx; scripts/test does it)")
        self.directory = directory
        directory.mkdir()
        self.port = free_port()
        conf = NGINX_CONF.format(
            user=getpass.getuser(), dir=directory, port=self.port, port_a=upstreams[0], port_b=upstreams[1]
        )
        (directory / "nginx.conf").write_text(conf)
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/files/"

    def start(self) -> Nginx:
        # -e: the error log from the first moment on, before the config is read.
        argv = [NGINX, "-c", str(self.directory / "nginx.conf"), "-p", str(self.directory)]
        self.proc = subprocess.Popen([*argv, "-e", str(self.directory / "error.log")], stderr=subprocess.STDOUT)
        for _ in range(500):
            assert self.proc.poll() is None, (self.directory / "error.log").read_text()
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.02)
        raise AssertionError(f"nginx is not listening on {self.port}")

    def requests(self) -> list[tuple[str, str, int, str]]:
        """(method, path, status, upstream address) of each request nginx answered."""
        lines = (self.directory / "access.log").read_text().splitlines()
        return [(m, p, int(s), u) for m, p, s, u in (line.split(" ") for line in lines)]

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


@dataclass
class Cluster:
    nginx: Nginx
    instances: list[Process]
    bucket: str
    s3_endpoint: str

    @property
    def endpoint(self) -> str:
        return self.nginx.endpoint

    def patches_by_instance(self, url: str) -> Counter[str]:
        """How many PATCHes of the upload at `url` each instance (host:port) answered, per nginx."""
        path = url[url.index("/files/") :]
        return Counter(u for m, p, _, u in self.nginx.requests() if m == "PATCH" and p == path)

    def instance_log_mentions(self, url: str) -> list[int]:
        """For each instance, its own log lines about PATCHes of `url` (its access log)."""
        path = url[url.index("/files/") :]
        return [sum(f"PATCH {path}" in line for line in instance.lines) for instance in self.instances]

    async def check_stored(self, url: str, digest: str, size: int) -> None:
        """GET through nginx and the S3 object both hold exactly the bytes hashed to `digest`."""
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as response:
                assert response.status == 200
                body = await response.read()
        assert (len(body), sha256(body)) == (size, digest)
        stored = await read_s3_object(self.s3_endpoint, self.bucket, url.rsplit("/", 1)[1])
        assert (len(stored), sha256(stored)) == (size, digest)

    async def receiving_uploads(self, count: int) -> None:
        """Wait until the instances together receive `count` upload bodies (their /metrics)."""
        async with aiohttp.ClientSession() as session:
            for _ in range(1500):
                active = 0.0
                for instance in self.instances:
                    async with session.get(f"{instance.base}/metrics") as response:
                        text = await response.text()
                    active += float(re.search(r"^tusserver_active_uploads ([0-9.e+]+)$", text, re.M).group(1))
                if active == count:
                    return
                await asyncio.sleep(0.02)
        raise AssertionError(f"the instances never received {count} uploads at once")

    async def bytes_in_of_cut_patch(self, path: str) -> int:
        """The body bytes an instance says it received (its access log) for the PATCH of
        `path` that was answered with something other than 204."""
        pattern = re.compile(rf"PATCH {re.escape(path)} (?!204)[0-9]+ in=([0-9]+) ")
        for _ in range(1500):
            found = [int(m.group(1)) for i in self.instances for line in i.lines if (m := pattern.search(line))]
            if found:
                assert len(found) == 1, found
                return found[0]
            await asyncio.sleep(0.02)
        raise AssertionError("no instance logged the cut PATCH:\n" + "\n".join(i.log for i in self.instances))

    def check_both_instances_served(self, url: str, patches: int) -> None:
        by_instance = self.patches_by_instance(url)
        expected = {f"127.0.0.1:{instance.port}" for instance in self.instances}
        print(f"PATCHes of {url} per instance: {dict(by_instance)}")
        assert set(by_instance) == expected, by_instance
        assert sum(by_instance.values()) == patches
        assert all(count > 0 for count in self.instance_log_mentions(url))


@pytest.fixture(params=["tusserver", "uvicorn"])
async def cluster(request, moto_endpoint, bucket, redis_url, tmp_path):
    """Two instances of one front door on one bucket and one Redis, behind nginx."""
    instances: list[Process] = []
    for n in range(2):
        env = server_env(
            TUSSERVER_BASE_PATH="/files/",
            TUSSERVER_STORE="s3",
            TUSSERVER_S3_BUCKET=bucket,
            TUSSERVER_S3_ENDPOINT=moto_endpoint,
            TUSSERVER_S3_PATH_STYLE="true",
            TUSSERVER_S3_PART_SIZE="5MiB",
            TUSSERVER_TEMP_DIR=str(tmp_path / f"spool{n}"),
            TUSSERVER_REDIS_URL=redis_url,
            TUSSERVER_BEHIND_PROXY="true",
        )
        if request.param == "tusserver":
            instances.append(tusserver_command(env))
        else:
            instances.append(uvicorn("tusserver.asgi:from_env", env, factory=True))
    nginx = Nginx(tmp_path / "nginx", [instance.port for instance in instances])
    try:
        await asyncio.gather(*(instance.start() for instance in instances))
        nginx.start()
        yield Cluster(nginx, instances, bucket, moto_endpoint)
    finally:
        nginx.stop()
        for instance in instances:
            await instance.stop()


async def tus_js(**options) -> dict:
    return await run_node("tus-node.mjs", json.dumps(options))


async def head_offset(url: str) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.head(url, headers={"Tus-Resumable": "1.0.0"}) as response:
            assert response.status == 200
            return response.headers["Upload-Offset"]


async def test_tus_js_client_stopped_and_resumed_through_nginx(cluster, node_modules, tmp_path):
    size = 5 * MiB + 123
    path, digest = make_file(tmp_path, "five.bin", size, seed=7)
    common = {"endpoint": cluster.endpoint, "file": str(path), "chunkSize": MiB, "urlStorage": str(tmp_path / "u")}

    first = await tus_js(**common, abortAfterChunks=2)  # the client stops between two PATCHes
    url = first["url"]
    assert re.fullmatch(re.escape(cluster.endpoint) + "[0-9a-f]{32}", url), url
    assert await head_offset(url) == str(2 * MiB)

    # A client that dies in the middle of a PATCH. nginx streams the body but drops what it
    # still buffers when the client goes, so the instance gets some of the bytes sent: it
    # keeps every one of them, and HEAD (on either instance) reports exactly those.
    path_only = url[url.index("/files/") :]
    dropped = await HangingPatch.start("127.0.0.1", cluster.nginx.port, path_only, 2 * MiB, 3 * MiB)
    await dropped.send(path.read_bytes()[2 * MiB : 2 * MiB + 3 * MiB // 2])
    await cluster.receiving_uploads(1)  # the PATCH reached an instance before the client goes
    dropped.close()
    received = await cluster.bytes_in_of_cut_patch(path_only)
    assert 0 < received <= 3 * MiB // 2
    print(f"the cut PATCH brought {received} of {3 * MiB // 2} bytes sent to the instance")
    assert await head_offset(url) == await head_offset(url) == str(2 * MiB + received)

    second = await tus_js(**common, resume=True)  # a new client process resumes by fingerprint
    assert (second["previousUploads"], second["url"]) == ([url], url)
    assert second["bytesAccepted"] == size
    await cluster.check_stored(url, digest, size)
    resumed = -(-(size - 2 * MiB - received) // MiB)  # the new client's 1 MiB PATCHes
    cluster.check_both_instances_served(url, patches=2 + 1 + resumed)
    assert [m for m, *_ in cluster.nginx.requests()].count("POST") == 1


async def test_tuspy_through_nginx(cluster, tmp_path):
    size = 3 * MiB + 5
    path, digest = make_file(tmp_path, "three.bin", size, seed=8)
    url, offsets = await asyncio.to_thread(tuspy_upload, cluster.endpoint, path, MiB)
    assert re.fullmatch(re.escape(cluster.endpoint) + "[0-9a-f]{32}", url), url
    assert offsets == [str(MiB), str(size)]
    await cluster.check_stored(url, digest, size)
    cluster.check_both_instances_served(url, patches=4)
