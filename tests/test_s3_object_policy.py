"""Object policy: what the S3 store's finished object carries besides its bytes (Content-Type,
Content-Disposition, Cache-Control, storage class, SSE, tags, allow-listed user metadata),
from the configuration and, per upload, from a Placement within what the configuration
allows. Against moto in server mode; every object is checked by its sha256."""

from __future__ import annotations

import base64
import hashlib
import logging
import random

import pytest
from yarl import URL

from tests.test_s3_store import Bucket as StoreBucket
from tests.test_s3_store import spool_dir as spool_dir  # a fixture
from tusserver import Config, create_app
from tusserver import storage_errors as storage
from tusserver.info import UploadInfo
from tusserver.load import ConfigError, load_config
from tusserver.placement import Placement
from tusserver.protocol import new_upload_id
from tusserver.stores.s3 import S3Store
from tusserver.stores.s3_policy import MAX_DISPOSITION, ObjectPolicy, object_headers

MiB = 1 << 20
TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def metadata_header(pairs: dict[str, str]) -> str:
    return ",".join(f"{key} {b64(value)}" for key, value in pairs.items())


class Bucket(StoreBucket):
    def sha256(self, key: str) -> str:
        return sha256(self.s3.get_object(Bucket=self.name, Key=key)["Body"].read())

    def head(self, key: str) -> dict:
        return self.s3.head_object(Bucket=self.name, Key=key)

    def tags(self, key: str) -> dict[str, str]:
        tag_set = self.s3.get_object_tagging(Bucket=self.name, Key=key)["TagSet"]
        return {tag["Key"]: tag["Value"] for tag in tag_set}


@pytest.fixture
def s3(moto_endpoint, bucket) -> Bucket:
    return Bucket(moto_endpoint, bucket)


def s3_config(moto_endpoint: str, bucket: str, spool_dir: str, **settings) -> Config:
    return Config(
        store="s3",
        s3_bucket=bucket,
        s3_endpoint=moto_endpoint,
        s3_path_style=True,
        s3_part_size=5 * MiB,
        temp_dir=spool_dir,
        **settings,
    )


async def upload(client, data: bytes, metadata: dict[str, str], patch_size: int = 3 * MiB) -> str:
    """Create an upload over HTTP and send `data` in PATCHes of `patch_size`; its id."""
    headers = {**TUS, "Upload-Length": str(len(data)), "Upload-Metadata": metadata_header(metadata)}
    async with client.post("/", headers=headers) as resp:
        assert resp.status == 201, await resp.text()
        upload_id = URL(resp.headers["Location"]).path.rsplit("/", 1)[1]
    for offset in range(0, len(data), patch_size):
        body = data[offset : offset + patch_size]
        headers = {**TUS, "Upload-Offset": str(offset), "Content-Type": OCTETS}
        async with client.patch(f"/{upload_id}", data=body, headers=headers) as resp:
            assert resp.status == 204, await resp.text()
            assert resp.headers["Upload-Offset"] == str(offset + len(body))
    return upload_id


# -- from the configuration, over HTTP ---------------------------------------------------------

TAGS = ["team=media", "env=prod", "note=a b/c:d@e+f ü"]
TAG_SET = {"team": "media", "env": "prod", "note": "a b/c:d@e+f ü"}


@pytest.mark.parametrize(
    "sse",
    [{"s3_sse": "AES256"}, {"s3_sse": "aws:kms", "s3_sse_kms_key_id": "alias/uploads"}],
    ids=["AES256", "aws:kms"],
)
async def test_configured_settings_land_on_multipart_and_single_put_objects(
    aiohttp_client, moto_endpoint, bucket, spool_dir, s3, sse
):
    config = s3_config(
        moto_endpoint,
        bucket,
        spool_dir,
        s3_cache_control="private, max-age=600",
        s3_storage_class="STANDARD_IA",
        s3_tags=TAGS,
        **sse,
    )
    client = await aiohttp_client(create_app(config, store=S3Store.from_config(config)))
    big = payload(12 * MiB + 3, seed=1)  # three parts of 5 MiB at most: a multipart upload
    small = payload(200 * 1024, seed=2)  # one PutObject
    big_id = await upload(
        client, big, {"filename": "café notes.txt", "filetype": "text/plain", "token": "s3cr3t", "owner": "bob"}
    )
    small_id = await upload(client, small, {"filename": "Résumé 2026.pdf", "filetype": "application/pdf"})
    expected = {
        big_id: (
            big,
            "text/plain",
            "inline; filename=\"caf_ notes.txt\"; filename*=UTF-8''caf%C3%A9%20notes.txt",
            {"filename": "caf?? notes.txt", "filetype": "text/plain"},
        ),
        small_id: (
            small,
            "application/octet-stream",  # never an active type, nor one a browser renders
            "attachment; filename=\"R_sum_ 2026.pdf\"; filename*=UTF-8''R%C3%A9sum%C3%A9%202026.pdf",
            {"filename": "R??sum?? 2026.pdf", "filetype": "application/pdf"},
        ),
    }
    assert s3.multipart_uploads() == []
    for key, (data, content_type, disposition, metadata) in expected.items():
        assert s3.sha256(key) == sha256(data)
        head = s3.head(key)
        assert head["ContentType"] == content_type
        assert head["ContentDisposition"] == disposition
        assert head["CacheControl"] == "private, max-age=600"
        assert head["StorageClass"] == "STANDARD_IA"
        assert head["ServerSideEncryption"] == sse["s3_sse"]
        assert head.get("SSEKMSKeyId") == sse.get("s3_sse_kms_key_id")
        assert head["Metadata"] == metadata  # only the allow-listed keys: no token, no owner
        assert s3.tags(key) == TAG_SET
    assert s3.head(big_id)["ContentLength"] == len(big) and "-3" in s3.head(big_id)["ETag"]  # three parts


async def test_every_metadata_key_with_a_star_and_none_without_settings(
    aiohttp_client, moto_endpoint, bucket, spool_dir, s3
):
    config = s3_config(moto_endpoint, bucket, spool_dir, s3_metadata_keys=["*"])
    client = await aiohttp_client(create_app(config, store=S3Store.from_config(config)))
    data = payload(1000, seed=3)
    upload_id = await upload(client, data, {"filename": "a.bin", "token": "t", "project-id": "42"})
    head = s3.head(upload_id)
    assert s3.sha256(upload_id) == sha256(data)
    # (moto, like servers behind a default nginx, drops header names with underscores)
    assert head["Metadata"] == {"filename": "a.bin", "token": "t", "project-id": "42"}
    # Nothing configured: no Cache-Control, class, encryption request or tags of ours.
    assert "CacheControl" not in head and "StorageClass" not in head
    assert s3.tags(upload_id) == {}


async def test_a_concatenated_object_gets_the_settings_too(aiohttp_client, moto_endpoint, bucket, spool_dir, s3):
    config = s3_config(
        moto_endpoint, bucket, spool_dir, s3_storage_class="STANDARD_IA", s3_tags=TAGS, s3_cache_control="no-cache"
    )
    client = await aiohttp_client(create_app(config, store=S3Store.from_config(config)))
    partials = [payload(5 * MiB + 7, seed=5), payload(1000, seed=6)]
    paths = []
    for data in partials:
        headers = {**TUS, "Upload-Length": str(len(data)), "Upload-Concat": "partial"}
        async with client.post("/", headers=headers) as resp:
            assert resp.status == 201
            paths.append(URL(resp.headers["Location"]).path)
        headers = {**TUS, "Upload-Offset": "0", "Content-Type": OCTETS}
        async with client.patch(paths[-1], data=data, headers=headers) as resp:
            assert resp.status == 204
    headers = {
        **TUS,
        "Upload-Concat": "final;" + " ".join(paths),
        "Upload-Metadata": metadata_header({"filename": "joined.mp4", "filetype": "video/mp4", "token": "x"}),
    }
    async with client.post("/", headers=headers) as resp:
        assert resp.status == 201
        final_id = URL(resp.headers["Location"]).path.rsplit("/", 1)[1]
    assert s3.sha256(final_id) == sha256(b"".join(partials))
    head = s3.head(final_id)
    assert (head["ContentType"], head["StorageClass"], head["CacheControl"]) == ("video/mp4", "STANDARD_IA", "no-cache")
    assert head["ContentDisposition"] == "inline; filename=\"joined.mp4\"; filename*=UTF-8''joined.mp4"
    assert head["Metadata"] == {"filename": "joined.mp4", "filetype": "video/mp4"}
    assert s3.tags(final_id) == TAG_SET


# -- per upload, from a Placement --------------------------------------------------------------


def policy() -> ObjectPolicy:
    return ObjectPolicy(
        cache_control="private, max-age=600",
        storage_class="STANDARD_IA",
        allowed_storage_classes=("ONEZONE_IA", "GLACIER_IR"),
        tags={"team": "media", "env": "prod"},
    )


def store_for(moto_endpoint: str, bucket: str, spool_dir: str) -> S3Store:
    return S3Store(
        bucket, endpoint_url=moto_endpoint, path_style=True, temp_dir=spool_dir, part_size=5 * MiB, policy=policy()
    )


async def chunks(data: bytes, size: int = 1 * MiB):
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


@pytest.mark.parametrize("length", [11 * MiB + 1, 4096], ids=["multipart", "put"])
async def test_choices_of_a_placement_are_kept_in_info_and_applied_by_another_instance(
    moto_endpoint, bucket, spool_dir, s3, length
):
    creator, finisher = store_for(moto_endpoint, bucket, spool_dir), store_for(moto_endpoint, bucket, spool_dir)
    await creator.start()
    await finisher.start()
    try:
        info = UploadInfo(new_upload_id(), length, {"filename": "x.txt", "filetype": "text/plain"})
        chosen = Placement(
            key=info.id,
            storage_class="ONEZONE_IA",
            cache_control='public, max-age=31536000, immutable, community="x y"',
            tags={"owner": "alice", "env": "staging"},
        )
        await creator.create(info, chosen)
        data = payload(length, seed=4)
        stored = await finisher.get_info(info.id)  # from `.info` in the bucket
        assert await finisher.append(stored, chunks(data)) == length
        await finisher.finish(stored)
    finally:
        await creator.close()
        await finisher.close()
    assert s3.sha256(info.id) == sha256(data) and s3.multipart_uploads() == []
    head = s3.head(info.id)
    assert head["StorageClass"] == "ONEZONE_IA"
    assert head["CacheControl"] == 'public, max-age=31536000, immutable, community="x y"'
    assert s3.tags(info.id) == {"team": "media", "env": "staging", "owner": "alice"}  # the hook's env wins
    assert head["ContentDisposition"] == "inline; filename=\"x.txt\"; filename*=UTF-8''x.txt"


async def test_a_placement_without_choices_gets_the_configured_settings(moto_endpoint, bucket, spool_dir, s3):
    store = store_for(moto_endpoint, bucket, spool_dir)
    await store.start()
    try:
        info = UploadInfo(new_upload_id(), 10)
        await store.create(info, Placement(key=info.id))
        assert "object" not in info.storage  # nothing chosen: nothing kept
        assert await store.append(info, chunks(b"0123456789")) == 10
        await store.finish(info)
    finally:
        await store.close()
    head = s3.head(info.id)
    assert (head["StorageClass"], head["CacheControl"]) == ("STANDARD_IA", "private, max-age=600")
    assert s3.tags(info.id) == {"team": "media", "env": "prod"}


@pytest.mark.parametrize(
    "choice, why",
    [
        ({"storage_class": "GLACIER"}, "storage class 'GLACIER' is not allowed"),
        ({"storage_class": "STANDARD"}, "storage class 'STANDARD' is not allowed"),  # configured: STANDARD_IA
        ({"storage_class": "standard_ia"}, "not allowed"),
        ({"storage_class": ["STANDARD_IA"]}, "not allowed"),
        ({"cache_control": "max-age=60\r\nX-Evil: 1"}, "not a list of directives"),
        ({"cache_control": "max-age=60, " + "a" * 1020}, "at most 1024"),
        ({"cache_control": ""}, "not a list of directives"),
        ({"tags": {"<script>": "x"}}, "only letters, digits"),
        ({"tags": {"k": "v\n"}}, "only letters, digits"),
        ({"tags": {"aws:created": "x"}}, "reserved"),
        ({"tags": {"k": "v" * 257}}, "at most 256"),
        ({"tags": {"k" * 129: "v"}}, "1 to 128"),
        ({"tags": {"": "v"}}, "1 to 128"),
        ({"tags": {f"t{i}": "v" for i in range(9)}}, "11 tags; S3 allows at most 10"),  # with the 2 configured
        ({"tags": {"k": 1}}, "must be strings"),
    ],
)
async def test_a_choice_outside_the_configuration_is_refused_and_writes_nothing(
    moto_endpoint, bucket, spool_dir, s3, caplog, choice, why
):
    store = store_for(moto_endpoint, bucket, spool_dir)
    await store.start()
    try:
        info = UploadInfo(new_upload_id(), 10 * MiB)
        with caplog.at_level(logging.ERROR, logger="tusserver.s3"):
            with pytest.raises(storage.BadPlacement, match=why):
                await store.create(info, Placement(key=info.id, **choice))
        with pytest.raises(storage.NotFound):
            await store.get_info(info.id)
    finally:
        await store.close()
    assert s3.keys() == [] and s3.multipart_uploads() == []  # no .info, no expiry entry, no object
    assert [r.levelno for r in caplog.records if why.split("'")[0] in r.getMessage()] == [logging.ERROR]


# -- the rules without S3 ----------------------------------------------------------------------


def test_default_policy_is_type_disposition_and_the_two_uppy_keys():
    info = UploadInfo(new_upload_id(), 1, {"filename": "a.png", "filetype": "image/png", "relativePath": "x/a.png"})
    assert ObjectPolicy().params(info) == {
        "ContentType": "image/png",
        "ContentDisposition": "inline; filename=\"a.png\"; filename*=UTF-8''a.png",
        "Metadata": {"filename": "a.png", "filetype": "image/png"},
    }


def test_user_metadata_is_bounded_in_keys_and_bytes():
    many = {f"k{i}": "v" for i in range(100)}
    assert list(ObjectPolicy(metadata_keys=("*",)).user_metadata(many)) == [f"k{i}" for i in range(32)]
    big = {"a": "x" * 1500, "b": "y" * 498, "c": "z"}  # 1 + 1500 + 1 + 498 = 2000 bytes: "c" is one too many
    assert list(ObjectPolicy(metadata_keys=("*",)).user_metadata(big)) == ["a", "b"]


def test_tagging_is_url_encoded():
    info = UploadInfo(new_upload_id(), 1)
    params = ObjectPolicy(tags={"a b": "c=d+e", "ü": "/@:"}).params(info)
    assert params["Tagging"] == "a%20b=c%3Dd%2Be&%C3%BC=%2F%40%3A"


def test_kms_key_goes_with_aws_kms():
    params = ObjectPolicy(sse="aws:kms", sse_kms_key_id="arn:aws:kms:eu-west-1:1:key/k").params(
        UploadInfo(new_upload_id(), 1)
    )
    assert (params["ServerSideEncryption"], params["SSEKMSKeyId"]) == ("aws:kms", "arn:aws:kms:eu-west-1:1:key/k")


def test_object_headers_are_bounded_and_keep_the_extension():
    long_name = "é" * 2000 + ".pdf"  # 4 KiB of UTF-8: 24 KiB percent-encoded
    content_type, disposition = object_headers({"filename": long_name, "filetype": "video/" + "x" * 300})
    assert content_type == "application/octet-stream"
    assert disposition.startswith("attachment; ") and disposition.endswith(".pdf")
    assert MAX_DISPOSITION // 2 < len(disposition) <= MAX_DISPOSITION
    disposition = object_headers({"filename": "x" * 3000})[1]
    assert disposition.startswith('attachment; filename="xxx') and len(disposition) <= MAX_DISPOSITION


@pytest.mark.parametrize(
    "env, message",
    [
        ({"TUSSERVER_S3_STORAGE_CLASS": "COLD"}, "s3_storage_class: unknown storage class 'COLD'"),
        ({"TUSSERVER_S3_ALLOWED_STORAGE_CLASSES": "STANDARD,ICE"}, "s3_allowed_storage_classes: unknown .*'ICE'"),
        ({"TUSSERVER_S3_SSE": "aws:kms:dsse"}, "s3_sse must be one of AES256, aws:kms"),
        ({"TUSSERVER_S3_SSE_KMS_KEY_ID": "alias/k"}, 's3_sse_kms_key_id needs s3_sse = "aws:kms"'),
        ({"TUSSERVER_S3_SSE": "AES256", "TUSSERVER_S3_SSE_KMS_KEY_ID": "alias/k"}, "needs s3_sse"),
        ({"TUSSERVER_S3_TAGS": ",".join(f"t{i}=v" for i in range(11))}, "s3_tags: 11 tags; S3 allows at most 10"),
        ({"TUSSERVER_S3_TAGS": "team"}, "s3_tags: 'team' is not name=value"),
        ({"TUSSERVER_S3_TAGS": "a=1,a=2"}, "s3_tags: tag 'a' is given twice"),
        ({"TUSSERVER_S3_TAGS": "a=<b>"}, "s3_tags: tag 'a': only letters"),
        ({"TUSSERVER_S3_CACHE_CONTROL": "max-age=1;"}, "s3_cache_control: Cache-Control 'max-age=1;' is not"),
        ({"TUSSERVER_S3_METADATA_KEYS": "*,filename"}, r's3_metadata_keys: "\*" \(every key\) stands alone'),
    ],
)
def test_bad_object_settings_stop_the_server_at_load(env, message):
    with pytest.raises(ConfigError, match=message):
        load_config(env=env)


def test_object_settings_load_from_a_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        's3_storage_class = "GLACIER_IR"\ns3_allowed_storage_classes = ["STANDARD"]\ns3_sse = "aws:kms"\n'
        's3_sse_kms_key_id = "alias/k"\ns3_tags = ["a=b", "c="]\ns3_metadata_keys = ["name"]\n'
        's3_cache_control = "no-store"\n'
    )
    policy = ObjectPolicy.from_config(load_config(env={}, config_file=str(path)))
    assert policy == ObjectPolicy(
        cache_control="no-store",
        storage_class="GLACIER_IR",
        allowed_storage_classes=("STANDARD",),
        sse="aws:kms",
        sse_kms_key_id="alias/k",
        tags={"a": "b", "c": ""},
        metadata_keys=("name",),
    )
    assert policy.storage_classes == {"GLACIER_IR", "STANDARD"}
