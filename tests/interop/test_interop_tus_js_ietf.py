"""tus-js-client (the pinned npm package) in Node speaking the IETF draft, per store:
protocol 'ietf-draft-03' sends interop version 5, 'ietf-draft-05' sends 6."""

from __future__ import annotations

import json

import pytest
from interop_support import MiB, make_file, run_node

SIZE = 3 * MiB + 321
PROTOCOLS = {"ietf-draft-03": "5", "ietf-draft-05": "6"}

pytestmark = [
    pytest.mark.usefixtures("node_modules"),
    pytest.mark.both_doors,
    pytest.mark.parametrize("protocol", sorted(PROTOCOLS)),
]


async def tus_js(**options) -> dict:
    return await run_node("tus-node.mjs", json.dumps(options))


def check_draft_requests(target, protocol: str) -> None:
    """Every request spoke the draft (no Tus-Resumable) and got the draft's answer."""
    assert target.requests
    for received in target.requests:
        assert received.headers["Upload-Draft-Interop-Version"] == PROTOCOLS[protocol], received
        assert "Tus-Resumable" not in received.headers


async def test_upload_in_chunks(make_target, tmp_path, protocol):
    target = await make_target()
    path, digest = make_file(tmp_path, "three.bin", SIZE, seed=41)
    result = await tus_js(
        endpoint=target.endpoint, file=str(path), chunkSize=MiB, protocol=protocol, metadata={"filename": "three.bin"}
    )
    url = result["url"]
    (post,) = target.received("POST")
    assert (post.status, post.headers["Upload-Complete"], post.bytes_in) == (201, "?0", 0)
    patches = target.received("PATCH", url)
    assert [p.status for p in patches] == [204] * 4
    assert [int(p.headers["Upload-Offset"]) for p in patches] == [0, MiB, 2 * MiB, 3 * MiB]
    # From a Node stream it learns the end only on the read after the last chunk, so even
    # the last PATCH says ?0: the upload completes when its bytes reach Upload-Length.
    assert [p.headers["Upload-Complete"] for p in patches] == ["?0", "?0", "?0", "?0"]
    assert [p.bytes_in for p in patches] == [MiB] * 3 + [321]
    check_draft_requests(target, protocol)
    info = await target.store.get_info(target.upload_id(url))
    assert info.finished and info.metadata["filename"] == "three.bin"
    await target.check_bytes(url, digest, SIZE)


async def test_interrupted_upload_resumes(make_target, tmp_path, protocol):
    target = await make_target()
    path, digest = make_file(tmp_path, "three.bin", SIZE, seed=42)
    common = {"endpoint": target.endpoint, "file": str(path), "chunkSize": MiB, "protocol": protocol}

    first = await tus_js(**common, abortAfterChunks=2)
    assert first["aborted"] is True
    url = first["url"]
    info = await target.store.get_info(target.upload_id(url))
    assert (info.offset, info.length, info.finished) == (2 * MiB, SIZE, False)

    # Resumed from a buffer, which knows where it ends: the last PATCH says ?1.
    second = await tus_js(**common, input="buffer", uploadUrl=url)
    assert second["url"] == url
    assert len(target.received("POST")) == 1
    (head,) = target.received("HEAD", url)
    assert head.status == 204
    patches = target.received("PATCH", url)
    assert [int(p.headers["Upload-Offset"]) for p in patches] == [0, MiB, 2 * MiB, 3 * MiB]
    assert [p.headers["Upload-Complete"] for p in patches] == ["?0", "?0", "?0", "?1"]
    check_draft_requests(target, protocol)
    await target.check_bytes(url, digest, SIZE)


async def test_data_during_creation(make_target, tmp_path, protocol):
    target = await make_target()
    path, digest = make_file(tmp_path, "three.bin", SIZE, seed=43)
    result = await tus_js(
        endpoint=target.endpoint, file=str(path), chunkSize=2 * MiB, uploadDataDuringCreation=True, protocol=protocol
    )
    url = result["url"]
    (post,) = target.received("POST")
    assert (post.status, post.bytes_in, post.headers["Upload-Complete"]) == (201, 2 * MiB, "?0")
    (patch,) = target.received("PATCH", url)
    assert (patch.headers["Upload-Offset"], patch.headers["Upload-Complete"]) == (str(2 * MiB), "?0")
    info = await target.store.get_info(target.upload_id(url))
    assert "filetype" not in info.metadata  # never application/partial-upload
    await target.check_bytes(url, digest, SIZE)


async def test_length_unknown_until_the_stream_ends(make_target, tmp_path, protocol):
    target = await make_target()
    path, digest = make_file(tmp_path, "stream.bin", SIZE, seed=44)
    result = await tus_js(
        endpoint=target.endpoint,
        file=str(path),
        input="stream",
        chunkSize=MiB,
        uploadLengthDeferred=True,
        protocol=protocol,
    )
    url = result["url"]
    (post,) = target.received("POST")
    assert "Upload-Length" not in post.headers
    patches = target.received("PATCH", url)
    assert [p.headers.get("Upload-Length") for p in patches] == [None, None, None, str(SIZE)]
    assert [p.headers["Upload-Complete"] for p in patches] == ["?0", "?0", "?0", "?1"]
    assert [p.bytes_in for p in patches] == [MiB] * 3 + [321]
    check_draft_requests(target, protocol)
    await target.check_bytes(url, digest, SIZE)
