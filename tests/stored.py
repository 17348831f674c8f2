"""Check what a store really holds for an upload, reading its storage directly
(the disk file, or the S3 object, parts and tail chunks), not through the store."""

from __future__ import annotations

import hashlib

from tusserver.info import UploadInfo


async def assert_store_holds(store, factory, upload_id: str, data: bytes) -> None:
    """The store holds exactly `data` for the upload (sha256 for whole objects)."""
    info = await store.get_info(upload_id)
    if info.storage.get("type") == "file":
        with open(info.storage["path"], "rb") as f:
            held = f.read()
        assert hashlib.sha256(held).hexdigest() == hashlib.sha256(data).hexdigest(), (len(held), len(data))
        return
    await _assert_s3_holds(factory, info, data)


async def _assert_s3_holds(factory, info: UploadInfo, data: bytes) -> None:
    """Finished, or written whole without a multipart upload: the object is `data`.
    Unfinished: parts 1..n of the multipart upload recorded in `.info` (each checked by
    its MD5 ETag, since S3 cannot read back the parts of an open multipart upload; none
    while no upload is recorded) followed by the tail chunks for part n+1 chained from
    where part n ends, together `data`."""
    from aiobotocore.session import get_session

    storage = info.storage
    bucket, key = storage["bucket"], storage["key"]
    async with get_session().create_client("s3", endpoint_url=factory.endpoint, region_name="us-east-1") as s3:
        if info.finished or storage.get("object_stored") is not None:
            obj = await s3.get_object(Bucket=bucket, Key=key)
            held = await obj["Body"].read()
            assert hashlib.sha256(held).hexdigest() == hashlib.sha256(data).hexdigest(), (len(held), len(data))
            return
        listed = {}
        if storage.get("upload_id"):
            listed = await s3.list_parts(Bucket=bucket, Key=key, UploadId=storage["upload_id"])
        stale = set(storage.get("stale_parts", []))
        position = 0
        number = 0
        for part in sorted(listed.get("Parts", []), key=lambda p: p["PartNumber"]):
            if part["PartNumber"] != number + 1 or part["PartNumber"] in stale:
                break
            number += 1
            expected = data[position : position + part["Size"]]
            assert len(expected) == part["Size"], f"part {number} goes past the {len(data)} expected bytes"
            assert part["ETag"].strip('"') == hashlib.md5(expected).hexdigest(), f"part {number} differs"
            position += part["Size"]
        # The tail: chunks <key>.part.<number + 1>.<start>, chained from `position` on.
        prefix = f"{key}.part.{number + 1}."
        listed = await s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
        by_start = {int(o["Key"][len(prefix) :]): o["Key"] for o in listed.get("Contents", [])}
        tail, start = b"", position
        while start in by_start:
            obj = await s3.get_object(Bucket=bucket, Key=by_start.pop(start))
            chunk = await obj["Body"].read()
            tail += chunk
            start += len(chunk)
        assert hashlib.sha256(tail).hexdigest() == hashlib.sha256(data[position:]).hexdigest(), (
            f"{number} parts hold {position} bytes; the tail holds {len(tail)}, expected {len(data) - position}"
        )
