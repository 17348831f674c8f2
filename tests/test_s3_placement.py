"""Where the bytes land on S3 (moto server mode, real HTTP): a storage key apart from the
upload id, from storage_key_template or a pre-create hook, possibly in another allowed
bucket; the multipart upload targets that key from the start; chosen keys are claimed."""

from __future__ import annotations

import base64
import hashlib
import os
import time

import boto3
import pytest
from aiohttp import web
from yarl import URL

from tests.conftest import make_bucket
from tests.tus_client import TUS, create, download, head, patch, sha256
from tusserver import Config, create_app, make_token
from tusserver.hooks import HookResult, Hooks
from tusserver.stores.s3 import S3Store
from tusserver.stores.s3_policy import ObjectPolicy

MiB = 1 << 20


@pytest.fixture
def s3(moto_endpoint):
    return boto3.client("s3", endpoint_url=moto_endpoint)


@pytest.fixture
def make_store(moto_endpoint, bucket, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()

    def build(**kw) -> S3Store:
        options = {"endpoint_url": moto_endpoint, "path_style": True, "temp_dir": str(spool), "part_size": 5 * MiB}
        return S3Store(bucket, **{**options, **kw})

    return build


def keys(s3, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


def data_keys(s3, bucket: str) -> list[str]:
    """Every object that is not the server's own state."""
    state = (".unfinished/", ".keys/", ".owners/")
    return [k for k in keys(s3, bucket) if not k.endswith(".info") and ".finals/" not in k and not k.startswith(state)]


def stored(s3, bucket: str, key: str) -> str:
    return hashlib.sha256(s3.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()


def choosing(**result) -> Hooks:
    hooks = Hooks()
    hooks.on("pre-create", lambda event: HookResult(**result))
    return hooks


async def upload(client, data: bytes, step: int = 3 * MiB, **headers: str) -> str:
    path = await create(client, len(data), **headers)
    for offset in range(0, len(data), step):
        await patch(client, path, offset, data[offset : offset + step])
    return path


async def test_a_hook_chosen_key_ends_as_exactly_that_object(aiohttp_client, make_store, s3, bucket):
    client = await aiohttp_client(
        create_app(Config(), store=make_store(), hooks=choosing(storage_key="alice/2026/report.pdf"))
    )
    data = os.urandom(12 * MiB + 321)  # three parts
    path = await upload(client, data)
    upload_id = path.rsplit("/", 1)[1]

    assert data_keys(s3, bucket) == ["alice/2026/report.pdf"]
    assert stored(s3, bucket, "alice/2026/report.pdf") == sha256(data)
    assert s3.head_object(Bucket=bucket, Key="alice/2026/report.pdf", PartNumber=1)["PartsCount"] == 3
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert f"{upload_id}.info" in keys(s3, bucket)
    # The URL still carries the random id: HEAD, GET and DELETE by it work.
    resp = await head(client, path)
    assert resp.status == 200 and resp.headers["Upload-Offset"] == str(len(data))
    assert sha256(await download(client, path)) == sha256(data)
    resp = await client.delete(path, headers=TUS)
    assert resp.status == 204
    assert keys(s3, bucket) == []


async def test_a_small_upload_at_a_chosen_key_is_one_put(aiohttp_client, make_store, s3, bucket):
    client = await aiohttp_client(create_app(Config(), store=make_store(), hooks=choosing(storage_key="t/one.bin")))
    data = os.urandom(1000)
    path = await upload(client, data)
    assert data_keys(s3, bucket) == ["t/one.bin"]
    assert stored(s3, bucket, "t/one.bin") == sha256(data)
    assert sha256(await download(client, path)) == sha256(data)


async def test_the_template_places_uploads_by_owner_date_and_extension(aiohttp_client, make_store, s3, bucket):
    config = Config(storage_key_template="{owner}/{yyyy}/{mm}/{id}{ext}")
    client = await aiohttp_client(create_app(config, store=make_store()))
    data = os.urandom(6 * MiB)
    name = base64.b64encode("Bericht März.PDF".encode()).decode()
    before = time.gmtime()
    path = await upload(client, data, Upload_Metadata=f"filename {name}")
    upload_id = path.rsplit("/", 1)[1]
    day = time.gmtime() if time.gmtime().tm_mon == before.tm_mon else before
    key = f"anonymous/{day.tm_year:04d}/{day.tm_mon:02d}/{upload_id}.pdf"
    assert data_keys(s3, bucket) == [key]
    assert stored(s3, bucket, key) == sha256(data)


async def test_a_key_with_dotdot_refuses_the_creation_and_writes_nothing(
    aiohttp_client, make_store, s3, bucket, caplog
):
    for key in ("alice/../../etc/passwd", "/abs", "a//b", ".keys/x", "x\x00y", "abc.info", "k" * 1025):
        client = await aiohttp_client(create_app(Config(), store=make_store(), hooks=choosing(storage_key=key)))
        resp = await client.post("/", headers={**TUS, "Upload-Length": "5"})
        assert resp.status == 500, key
        assert await resp.text() == "a server hook failed\n"
        assert keys(s3, bucket) == [], key
    assert "invalid storage key" in caplog.text


async def test_another_upload_id_as_a_key_is_refused(aiohttp_client, make_store, s3, bucket):
    # `<id>` alone is where an upload without a chosen key keeps its bytes.
    client = await aiohttp_client(create_app(Config(), store=make_store(), hooks=choosing(storage_key="report")))
    resp = await client.post("/", headers={**TUS, "Upload-Length": "5"})
    assert resp.status == 500
    assert keys(s3, bucket) == []


async def test_buckets_must_be_allowed(aiohttp_client, make_store, s3, bucket, moto_endpoint):
    other, stranger = make_bucket(moto_endpoint), make_bucket(moto_endpoint)
    store = make_store(allowed_buckets=[other])
    client = await aiohttp_client(
        create_app(Config(), store=store, hooks=choosing(storage_key="x.bin", bucket=stranger))
    )
    resp = await client.post("/", headers={**TUS, "Upload-Length": "5"})
    assert resp.status == 500
    assert keys(s3, bucket) == [] and keys(s3, stranger) == []

    client = await aiohttp_client(
        create_app(
            Config(), store=make_store(allowed_buckets=[other]), hooks=choosing(storage_key="in/x.bin", bucket=other)
        )
    )
    data = os.urandom(7 * MiB)
    path = await upload(client, data)
    assert keys(s3, other) == ["in/x.bin"] and stored(s3, other, "in/x.bin") == sha256(data)
    assert data_keys(s3, bucket) == []  # the state stays in s3_bucket
    assert sha256(await download(client, path)) == sha256(data)
    assert (await client.delete(path, headers=TUS)).status == 204
    assert keys(s3, other) == [] and keys(s3, bucket) == []


async def test_an_unknown_allowed_bucket_stops_the_start(make_store):
    from tusserver.stores.base import StoreStartError

    store = make_store(allowed_buckets=["no-such-bucket-here"])
    with pytest.raises(StoreStartError, match="no-such-bucket-here"):
        await store.start()


async def test_one_key_is_claimed_by_one_upload_in_progress(aiohttp_client, make_store, s3, bucket):
    client = await aiohttp_client(
        create_app(Config(), store=make_store(), hooks=choosing(storage_key="shared/doc.bin"))
    )
    first = await create(client, 10)
    await patch(client, first, 0, b"01234")
    resp = await client.post("/", headers={**TUS, "Upload-Length": "3"})
    assert resp.status == 409
    assert "storage key" in await resp.text()
    assert len([k for k in keys(s3, bucket) if k.endswith(".info")]) == 1  # the refused one left nothing

    await patch(client, first, 5, b"56789")  # finished: the key is free for a new upload
    second = await create(client, 3)
    await patch(client, second, 0, b"new")
    assert s3.get_object(Bucket=bucket, Key="shared/doc.bin")["Body"].read() == b"new"
    # The first upload's object was replaced: its URL never serves the second's bytes,
    # and deleting it leaves the second's object alone.
    resp = await client.get(first)
    assert resp.status == 404
    assert (await client.delete(first, headers=TUS)).status == 204
    assert s3.get_object(Bucket=bucket, Key="shared/doc.bin")["Body"].read() == b"new"
    assert await download(client, second) == b"new"


async def test_concatenation_into_a_chosen_key(aiohttp_client, make_store, s3, bucket):
    hooks = Hooks()

    def place(event):
        if event.upload.concat == "final":
            return HookResult(storage_key="tenant-42/joined.bin")
        return None

    hooks.on("pre-create", place)
    client = await aiohttp_client(create_app(Config(), store=make_store(), hooks=hooks))
    pieces = [os.urandom(6 * MiB), os.urandom(1000), os.urandom(5 * MiB + 7)]
    paths = [await upload(client, p, Upload_Concat="partial") for p in pieces]
    resp = await client.post("/", headers={**TUS, "Upload-Concat": "final;" + " ".join(paths)})
    assert resp.status == 201
    final = URL(resp.headers["Location"]).path
    joined = b"".join(pieces)
    assert stored(s3, bucket, "tenant-42/joined.bin") == sha256(joined)
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    partial_ids = {p.rsplit("/", 1)[1] for p in paths}
    assert set(data_keys(s3, bucket)) == partial_ids | {"tenant-42/joined.bin"}
    assert sha256(await download(client, final)) == sha256(joined)


async def test_state_can_live_under_its_own_prefix(aiohttp_client, make_store, s3, bucket):
    store = make_store(prefix="files/", state_prefix="state/")
    client = await aiohttp_client(create_app(Config(storage_key_template="{owner}/{id}"), store=store))
    data = os.urandom(5 * MiB + 1)
    path = await upload(client, data)
    upload_id = path.rsplit("/", 1)[1]
    listed = keys(s3, bucket)
    assert f"files/anonymous/{upload_id}" in listed and f"state/{upload_id}.info" in listed
    assert all(k.startswith(("files/", "state/")) for k in listed)
    assert stored(s3, bucket, f"files/anonymous/{upload_id}") == sha256(data)
    assert (await head(client, path)).headers["Upload-Offset"] == str(len(data))


async def test_another_upload_id_as_a_key_is_refused_with_a_separate_state_prefix(
    aiohttp_client, make_store, s3, bucket
):
    # Data stays at <prefix><id> for uploads without a chosen key, whatever the state prefix.
    store = make_store(prefix="files/", state_prefix="state/")
    client = await aiohttp_client(create_app(Config(), store=store))
    victim = await create(client, 3)
    await patch(client, victim, 0, b"old")
    victim_id = victim.rsplit("/", 1)[1]
    client = await aiohttp_client(
        create_app(
            Config(), store=make_store(prefix="files/", state_prefix="state/"), hooks=choosing(storage_key=victim_id)
        )
    )
    resp = await client.post("/", headers={**TUS, "Upload-Length": "3"})
    assert resp.status == 500
    assert s3.get_object(Bucket=bucket, Key=f"files/{victim_id}")["Body"].read() == b"old"


async def test_a_key_under_the_state_prefix_may_not_look_like_state(aiohttp_client, make_store, s3, bucket):
    store = make_store(prefix="", state_prefix="state/")
    client = await aiohttp_client(create_app(Config(), store=store, hooks=choosing(storage_key="state/abc.info")))
    resp = await client.post("/", headers={**TUS, "Upload-Length": "5"})
    assert resp.status == 500
    assert keys(s3, bucket) == []


@pytest.mark.parametrize("size", [2 * MiB, 11 * MiB])  # one PutObject; a multipart upload
async def test_the_webhook_chooses_the_storage(aiohttp_client, aiohttp_server, make_store, s3, bucket, size):
    async def hook(request: web.Request) -> web.Response:
        payload = await request.json()
        if payload["type"] == "pre-create":
            choice = {"key": "alice/2026/report.pdf", "storage_class": "STANDARD_IA", "tags": {"case": "42"}}
            return web.json_response({"storage": {**choice, "cache_control": "private, max-age=60"}})
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/hooks", hook)
    server = await aiohttp_server(app, host="127.0.0.1")
    config = Config(
        hooks_url=str(server.make_url("/hooks")),
        hooks_events=["pre-create"],
        s3_sse="AES256",
        s3_allowed_storage_classes=["STANDARD_IA"],
        s3_tags=["source=tus"],
    )
    client = await aiohttp_client(create_app(config, store=make_store(policy=ObjectPolicy.from_config(config))))
    data = os.urandom(size)
    path = await upload(client, data, Upload_Metadata="filename UmVwb3J0IE3DpHJ6LnBkZg==,filetype YXBwbGljYXRpb24vcGRm")
    assert data_keys(s3, bucket) == ["alice/2026/report.pdf"]
    assert stored(s3, bucket, "alice/2026/report.pdf") == sha256(data)
    head_object = s3.head_object(Bucket=bucket, Key="alice/2026/report.pdf")
    # Sanitised as the server's own GET is: a PDF is no inline type, so it is an attachment.
    assert head_object["ContentType"] == "application/octet-stream"
    assert head_object["ContentDisposition"] == (
        "attachment; filename=\"Report M_rz.pdf\"; filename*=UTF-8''Report%20M%C3%A4rz.pdf"
    )
    assert head_object["StorageClass"] == "STANDARD_IA"
    assert head_object["ServerSideEncryption"] == "AES256"
    assert head_object["CacheControl"] == "private, max-age=60"
    tags = s3.get_object_tagging(Bucket=bucket, Key="alice/2026/report.pdf")["TagSet"]
    assert sorted((t["Key"], t["Value"]) for t in tags) == [("case", "42"), ("source", "tus")]
    assert sha256(await download(client, path)) == sha256(data)


async def test_without_keep_info_a_finished_upload_leaves_only_its_object(aiohttp_client, make_store, s3, bucket):
    seen = []
    hooks = Hooks()
    hooks.on("pre-create", lambda event: None if event.upload.concat else HookResult(storage_key="out/final.bin"))
    hooks.on("post-finish", lambda event: seen.append(dict(event.upload.storage)))
    config = Config(keep_info_after_finish=False)
    client = await aiohttp_client(create_app(config, store=make_store(), hooks=hooks))
    data = os.urandom(5 * MiB + 99)
    path = await upload(client, data)
    assert keys(s3, bucket) == ["out/final.bin"]
    assert stored(s3, bucket, "out/final.bin") == sha256(data)
    assert seen[0]["key"] == "out/final.bin" and seen[0]["bucket"] == bucket  # post-finish ran first
    assert (await head(client, path)).status == 404
    # A partial keeps its state: a final made of it later needs it.
    partial = await upload(client, b"abc", Upload_Concat="partial")
    assert (await head(client, partial)).headers["Upload-Offset"] == "3"
    assert f"{partial.rsplit('/', 1)[1]}.info" in keys(s3, bucket)


@pytest.mark.parametrize(("subject", "segment"), [("alice", "alice"), ("../../etc", "_.._etc"), ("a/b c", "a_b_c")])
async def test_owner_in_the_template_is_one_safe_segment(aiohttp_client, make_store, s3, bucket, subject, segment):
    secret = "s" * 32
    config = Config(auth_secret=secret, storage_key_template="{owner}/{id}")
    client = await aiohttp_client(create_app(config, store=make_store()))
    token = make_token(secret, 600, subject=subject, scope="upload download")
    path = await create(client, 5, Authorization=f"Bearer {token}")
    await patch(client, path, 0, b"hello", Authorization=f"Bearer {token}")
    assert data_keys(s3, bucket) == [f"{segment}/{path.rsplit('/', 1)[1]}"]
    assert stored(s3, bucket, data_keys(s3, bucket)[0]) == sha256(b"hello")


async def test_a_claim_whose_upload_is_being_created_holds_the_key(aiohttp_client, make_store, s3, bucket, monkeypatch):
    # Another instance claimed the key and has not written the upload's .info yet (the
    # claim comes first): the key is taken. A claim left by a creation that crashed is
    # taken over once it is older than CLAIM_GRACE.
    import tusserver.stores.s3 as s3_module

    claim = ".keys/" + hashlib.sha256(f"{bucket}\nbusy/key.bin".encode()).hexdigest()
    s3.put_object(Bucket=bucket, Key=claim, Body=b"0123456789abcdef0123456789abcdef")
    client = await aiohttp_client(create_app(Config(), store=make_store(), hooks=choosing(storage_key="busy/key.bin")))
    resp = await client.post("/", headers={**TUS, "Upload-Length": "2"})
    assert resp.status == 409
    assert keys(s3, bucket) == [claim]

    monkeypatch.setattr(s3_module, "CLAIM_GRACE", 0.0)
    path = await create(client, 2)
    await patch(client, path, 0, b"ok")
    assert s3.get_object(Bucket=bucket, Key="busy/key.bin")["Body"].read() == b"ok"
    assert s3.get_object(Bucket=bucket, Key=claim)["Body"].read() == path.rsplit("/", 1)[1].encode()
