"""Where the bytes land, through the server and on both stores: a pre-create hook's storage
key and the key template, claims, and keep_info_after_finish. Store-specific details are
in test_s3_placement.py and test_file_placement.py."""

from __future__ import annotations

import hashlib
import os

import boto3
import pytest

from tests.tus_client import TUS, create, download, head, patch, sha256
from tusserver import Config, create_app
from tusserver.hooks import HookResult, Hooks
from tusserver.placement import check_key, check_template, file_extension, render_key

MiB = 1 << 20


class Landed:
    """What is stored where, whatever the store."""

    def __init__(self, store_factory, tmp_path) -> None:
        self.s3 = None
        if hasattr(store_factory, "bucket"):
            self.s3 = boto3.client("s3", endpoint_url=store_factory.endpoint)
            self.bucket = store_factory.bucket
        self.root = tmp_path / "uploads"

    def sha(self, key: str) -> str | None:
        if self.s3 is not None:
            try:
                body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            except self.s3.exceptions.NoSuchKey:
                return None
            return hashlib.sha256(body).hexdigest()
        path = self.root / key
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None

    def names(self) -> set[str]:
        """Every stored name, state included."""
        if self.s3 is not None:
            return {o["Key"] for o in self.s3.list_objects_v2(Bucket=self.bucket).get("Contents", [])}
        return {str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file()}


def hooked(**result) -> Hooks:
    hooks = Hooks()
    hooks.on("pre-create", lambda event: HookResult(**result))
    return hooks


async def test_a_hook_key_is_where_the_upload_lands(aiohttp_client, store_factory, tmp_path):
    client = await aiohttp_client(
        create_app(Config(), store=store_factory(), hooks=hooked(storage_key="alice/2026/report.pdf"))
    )
    landed = Landed(store_factory, tmp_path)
    data = os.urandom(6 * MiB + 5)
    path = await create(client, len(data))
    await patch(client, path, 0, data[: 3 * MiB])
    assert landed.sha("alice/2026/report.pdf") is None  # nothing at the key before the finish
    await patch(client, path, 3 * MiB, data[3 * MiB :])
    assert landed.sha("alice/2026/report.pdf") == sha256(data)
    upload_id = path.rsplit("/", 1)[1]
    assert upload_id not in landed.names()  # no data left under the id
    assert (await head(client, path)).headers["Upload-Offset"] == str(len(data))
    assert sha256(await download(client, path)) == sha256(data)
    assert (await client.delete(path, headers=TUS)).status == 204
    assert landed.sha("alice/2026/report.pdf") is None
    assert (await head(client, path)).status == 404


async def test_a_second_upload_in_progress_on_one_key_is_409(aiohttp_client, store_factory, tmp_path):
    client = await aiohttp_client(create_app(Config(), store=store_factory(), hooks=hooked(storage_key="team/x.bin")))
    landed = Landed(store_factory, tmp_path)
    first = await create(client, 4)
    before = landed.names()
    resp = await client.post("/", headers={**TUS, "Upload-Length": "4"})
    assert resp.status == 409
    assert await resp.text() == "another upload in progress is writing to the same storage key\n"
    assert landed.names() == before  # the refused creation changed nothing
    await patch(client, first, 0, b"abcd")
    assert landed.sha("team/x.bin") == sha256(b"abcd")


async def test_the_template_with_the_hook_overriding_it(aiohttp_client, store_factory, tmp_path):
    hooks = Hooks()
    hooks.on("pre-create", lambda e: HookResult(storage_key="chosen.bin") if "pick" in e.upload.metadata else None)
    config = Config(storage_key_template="in/{id}{ext}")
    client = await aiohttp_client(create_app(config, store=store_factory(), hooks=hooks))
    landed = Landed(store_factory, tmp_path)
    plain = await create(client, 3, Upload_Metadata="filename YS5UWFQ=")  # "a.TXT"
    await patch(client, plain, 0, b"one")
    picked = await create(client, 3, Upload_Metadata="pick")
    await patch(client, picked, 0, b"two")
    assert landed.sha(f"in/{plain.rsplit('/', 1)[1]}.txt") == sha256(b"one")
    assert landed.sha("chosen.bin") == sha256(b"two")


async def test_keep_info_after_finish_off_leaves_the_bytes_only(aiohttp_client, store_factory, tmp_path):
    config = Config(keep_info_after_finish=False, storage_key_template="done/{id}")
    client = await aiohttp_client(create_app(config, store=store_factory()))
    landed = Landed(store_factory, tmp_path)
    path = await create(client, 5)
    await patch(client, path, 0, b"bytes")
    upload_id = path.rsplit("/", 1)[1]
    assert landed.names() == {f"done/{upload_id}"}
    assert landed.sha(f"done/{upload_id}") == sha256(b"bytes")
    assert (await head(client, path)).status == 404


@pytest.mark.parametrize(
    "key",
    ["a/../b", "..", "/etc/passwd", "a//b", "a/", "./a", ".owners/x", "x\ny", "a\\b", "abc.info", "a.part.1.0", ""],
)
def test_keys_that_could_escape_or_collide_are_refused(key):
    assert check_key(key) is not None


@pytest.mark.parametrize("key", ["alice/2026/report.pdf", "report.pdf", "tenant-42/a b/ü.txt", "x/.hidden", "a..b"])
def test_ordinary_keys_are_accepted(key):
    assert check_key(key) is None


def test_templates_are_checked():
    assert check_template("{owner}/{yyyy}/{mm}/{dd}/{id}{ext}") is None
    assert "must contain {id}" in check_template("{owner}/{ext}")
    assert "unknown placeholder {name}" in check_template("{name}/{id}")
    assert ".." in check_template("../{id}")


def test_placeholders_are_filled_safely():
    key = render_key(
        "{owner}/{yyyy}-{mm}-{dd}/{id}{ext}", upload_id="u1", owner="../x y", filename="A.TaR.GZ", created=0
    )
    assert key == "_x_y/1970-01-01/u1.gz"
    assert file_extension("no-extension") == "" and file_extension(".bashrc") == ".bashrc"
    assert file_extension("evil.p/hp") == "" and file_extension(None) == ""


async def test_the_template_places_a_final_upload_and_leaves_its_partials_under_their_ids(
    aiohttp_client, store_factory, tmp_path
):
    config = Config(storage_key_template="joined/{id}{ext}")
    client = await aiohttp_client(create_app(config, store=store_factory()))
    landed = Landed(store_factory, tmp_path)
    paths = []
    for piece in (b"first ", b"second"):
        path = await create(client, len(piece), Upload_Concat="partial")
        await patch(client, path, 0, piece)
        paths.append(path)
    resp = await client.post(
        "/", headers={**TUS, "Upload-Concat": "final;" + " ".join(paths), "Upload-Metadata": "filename eC5sb2c="}
    )
    assert resp.status == 201
    final_id = resp.headers["Location"].rsplit("/", 1)[1]
    assert landed.sha(f"joined/{final_id}.log") == sha256(b"first second")
    for path in paths:
        assert landed.sha(path.rsplit("/", 1)[1]) is not None  # a partial: under its id
