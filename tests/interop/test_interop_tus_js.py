"""tus-js-client (the pinned npm package) in Node against a real tusserver, per store."""

from __future__ import annotations

import json

import pytest
from interop_support import MiB, content_disposition_filename, decode_metadata, make_file, run_node

SIZE = 5 * MiB + 123
NAME = "naïve résumé ✓.bin"

pytestmark = [pytest.mark.usefixtures("node_modules"), pytest.mark.both_doors]


async def tus_js(**options) -> dict:
    return await run_node("tus-node.mjs", json.dumps(options))


def patch_offsets(target, url: str | None = None) -> list[int]:
    return [int(r.headers["Upload-Offset"]) for r in target.received("PATCH", url)]


async def test_chunked_upload_keeps_non_ascii_metadata(make_target, tmp_path):
    target = await make_target()
    path, digest = make_file(tmp_path, "five.bin", SIZE)
    result = await tus_js(
        endpoint=target.endpoint, file=str(path), chunkSize=MiB, metadata={"filename": NAME, "kind": "ünï"}
    )
    url = result["url"]
    assert url.startswith(target.endpoint)

    (post,) = target.received("POST")
    assert (post.status, post.headers["Upload-Length"], post.bytes_in) == (201, str(SIZE), 0)
    patches = target.received("PATCH", url)
    assert [p.status for p in patches] == [204] * 6
    assert patch_offsets(target, url) == [i * MiB for i in range(6)]
    assert [p.bytes_in for p in patches] == [MiB] * 5 + [123]

    head = await target.head(url)
    assert (head.status, head.headers["Upload-Offset"], head.headers["Upload-Length"]) == (200, str(SIZE), str(SIZE))
    assert decode_metadata(head.headers["Upload-Metadata"]) == {"filename": NAME, "kind": "ünï"}

    response, _ = await target.download(url)
    assert response.headers["Content-Disposition"].startswith("attachment")
    assert content_disposition_filename(response.headers["Content-Disposition"]) == NAME
    await target.check_bytes(url, digest, SIZE)


async def test_resume_by_fingerprint_after_abort_reuses_the_url(make_target, tmp_path):
    target = await make_target()
    path, digest = make_file(tmp_path, "five.bin", SIZE, seed=2)
    storage = str(tmp_path / "tus-urls.json")
    common = {"endpoint": target.endpoint, "file": str(path), "chunkSize": MiB, "urlStorage": storage}

    first = await tus_js(**common, abortAfterChunks=2)
    assert first["aborted"] is True
    url = first["url"]
    head = await target.head(url)
    assert (head.headers["Upload-Offset"], head.headers["Upload-Length"]) == (str(2 * MiB), str(SIZE))

    second = await tus_js(**common, resume=True)
    assert second["previousUploads"] == [url]
    assert second["url"] == url
    assert len(target.received("POST")) == 1
    assert patch_offsets(target, url) == [0, MiB, 2 * MiB, 3 * MiB, 4 * MiB, 5 * MiB]
    assert len(target.received("HEAD", url)) == 2  # the test's own check, then the resuming client's
    await target.check_bytes(url, digest, SIZE)


async def test_resume_from_a_stored_upload_url(make_target, tmp_path):
    target = await make_target()
    path, digest = make_file(tmp_path, "five.bin", SIZE, seed=3)

    first = await tus_js(endpoint=target.endpoint, file=str(path), chunkSize=MiB, abortAfterChunks=1)
    url = first["url"]
    assert (await target.head(url)).headers["Upload-Offset"] == str(MiB)

    second = await tus_js(endpoint=target.endpoint, file=str(path), input="buffer", chunkSize=2 * MiB, uploadUrl=url)
    assert second["url"] == url
    assert len(target.received("POST")) == 1
    assert patch_offsets(target, url) == [0, MiB, 3 * MiB, 5 * MiB]
    await target.check_bytes(url, digest, SIZE)


async def test_deferred_length_from_a_node_stream(make_target, tmp_path):
    target = await make_target()
    path, digest = make_file(tmp_path, "stream.bin", SIZE, seed=4)
    result = await tus_js(
        endpoint=target.endpoint, file=str(path), input="stream", chunkSize=MiB, uploadLengthDeferred=True
    )
    url = result["url"]
    (post,) = target.received("POST")
    assert post.headers["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in post.headers
    patches = target.received("PATCH", url)
    assert all(p.status == 204 for p in patches)
    with_length = [p for p in patches if "Upload-Length" in p.headers]
    assert [p.headers["Upload-Length"] for p in with_length] == [str(SIZE)]
    assert with_length[0] is patches[-1]
    assert sum(p.bytes_in for p in patches) == SIZE

    head = await target.head(url)
    assert (head.headers["Upload-Offset"], head.headers["Upload-Length"]) == (str(SIZE), str(SIZE))
    assert "Upload-Defer-Length" not in head.headers
    await target.check_bytes(url, digest, SIZE)


async def test_upload_data_during_creation(make_target, tmp_path):
    target = await make_target()
    path, digest = make_file(tmp_path, "five.bin", SIZE, seed=5)
    result = await tus_js(endpoint=target.endpoint, file=str(path), chunkSize=2 * MiB, uploadDataDuringCreation=True)
    url = result["url"]
    (post,) = target.received("POST")
    assert post.headers["Content-Type"] == "application/offset+octet-stream"
    assert (post.status, post.bytes_in) == (201, 2 * MiB)
    assert patch_offsets(target, url) == [2 * MiB, 4 * MiB]
    await target.check_bytes(url, digest, SIZE)


async def test_whole_small_file_in_the_creation_request(make_target, tmp_path):
    target = await make_target()
    path, digest = make_file(tmp_path, "small.bin", 300_000, seed=6)
    result = await tus_js(endpoint=target.endpoint, file=str(path), uploadDataDuringCreation=True)
    (post,) = target.received("POST")
    assert (post.status, post.bytes_in) == (201, 300_000)
    assert target.received("PATCH") == []
    await target.check_bytes(result["url"], digest, 300_000)


async def test_zero_byte_file(make_target, tmp_path):
    target = await make_target()
    path, digest = make_file(tmp_path, "empty.bin", 0)
    result = await tus_js(endpoint=target.endpoint, file=str(path), input="buffer", metadata={"filename": "empty"})
    url = result["url"]
    (post,) = target.received("POST")
    assert (post.status, post.headers["Upload-Length"]) == (201, "0")
    head = await target.head(url)
    assert (head.headers["Upload-Offset"], head.headers["Upload-Length"]) == ("0", "0")
    await target.check_bytes(url, digest, 0)


async def test_parallel_uploads_concatenate(make_target, tmp_path):
    target = await make_target()
    options = await target.options()
    assert "concatenation" in options.headers["Tus-Extension"].split(",")
    path, digest = make_file(tmp_path, "five.bin", SIZE, seed=7)
    result = await tus_js(endpoint=target.endpoint, file=str(path), parallelUploads=3, metadata={"filename": NAME})
    url = result["url"]
    posts = target.received("POST")
    assert [p.headers.get("Upload-Concat") for p in posts[:3]] == ["partial"] * 3
    assert sorted(int(p.headers["Upload-Length"]) for p in posts[:3]) == sorted(
        [SIZE // 3, SIZE // 3, SIZE - 2 * (SIZE // 3)]
    )
    assert len(posts) == 4
    assert posts[3].headers["Upload-Concat"].startswith("final;")
    head = await target.head(url)
    assert (head.status, head.headers["Upload-Offset"], head.headers["Upload-Length"]) == (200, str(SIZE), str(SIZE))
    assert decode_metadata(head.headers["Upload-Metadata"]) == {"filename": NAME}
    await target.check_bytes(url, digest, SIZE)
