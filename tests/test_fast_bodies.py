"""The first few bodies in flight read and write in large pieces (for speed; see
tusserver.aiohttp_body.FAST_BODIES and the file store's FAST_WRITERS); no more than that many at
once, every slot given back however the body ends, and their bytes on disk while stalled."""

from __future__ import annotations

import hashlib
import os

from tests.hanging import HangingPatch, Received, wait_until
from tests.tus_client import create, head
from tusserver import Config, FileStore, create_app
from tusserver import aiohttp_body as body
from tusserver.stores import file

LENGTH = 100_000
FIRST = 10_000
BODIES = 12  # more than FAST_BODIES and FAST_WRITERS (8)


async def test_fast_slots_are_bounded_given_back_and_stalled_bytes_reach_the_disk(aiohttp_client, tmp_path):
    store = FileStore(str(tmp_path / "uploads"))
    client = await aiohttp_client(create_app(Config(), store=store))
    received = Received(store)
    data = [os.urandom(LENGTH) for _ in range(BODIES)]
    paths = [await create(client, LENGTH) for _ in range(BODIES)]
    patches = []
    for path, sent in zip(paths, data, strict=True):
        patch = await HangingPatch.start(client.host, client.port, path, 0, LENGTH)
        await patch.send(sent[:FIRST])
        patches.append(patch)
    await received.at_least(BODIES * FIRST)
    assert (body._fast_bodies, file._fast_writers) == (body.FAST_BODIES, file.FAST_WRITERS)

    # Stalled, the fast ones too: every byte received is on disk, none waits in RAM.
    files = [tmp_path / "uploads" / path.rsplit("/", 1)[1] for path in paths]
    await wait_until(lambda: all(os.path.getsize(f) == FIRST for f in files), "the stalled bytes on disk")

    # Half finish, half drop: each keeps what was received, and gives its slots back.
    for patch, sent in zip(patches[::2], data[::2], strict=True):
        await patch.send(sent[FIRST:])
        response = await patch.response()
        assert (response.status, response.headers["upload-offset"]) == (204, str(LENGTH))
    for patch in patches:
        patch.close()
    await wait_until(lambda: body._fast_bodies == 0 and file._fast_writers == 0, "the fast slots back")
    for i, (path, f, sent) in enumerate(zip(paths, files, data, strict=True)):
        kept = LENGTH if i % 2 == 0 else FIRST
        assert (await head(client, path)).headers["Upload-Offset"] == str(kept)
        assert hashlib.sha256(f.read_bytes()).hexdigest() == hashlib.sha256(sent[:kept]).hexdigest()
