"""Owners over real HTTP on both stores: per-owner access (404 to anyone else, checked
before the lock), the pre-access (authorize) hook, server metadata kept from clients,
listing one's uploads from the per-owner index, and quotas."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from aiohttp import web
from yarl import URL

from tests.hanging import HangingPatch, Received
from tests.stored import assert_store_holds
from tests.tus_client import OCTETS, TUS, sha256
from tusserver import Config, HookRejected, HookResult, Hooks, Quota, create_app, make_token
from tusserver.info import UploadInfo
from tusserver.load import ConfigError
from tusserver.stores.owner_index import owner_key

SECRET = "s3cret-s3cret-s3cret-s3cret-0123"
ALICE = make_token(SECRET, 3600, subject="alice")
BOB = make_token(SECRET, 3600, subject="bob")
ADMIN = make_token(SECRET, 3600, subject="root", scope="admin")
MISSING = "0" * 32


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def create(client, token: str, length: int | None, data: bytes = b"", expect: int = 201, **headers: str):
    h = {**TUS, **bearer(token), **{k.replace("_", "-"): v for k, v in headers.items()}}
    if h.get("Upload-Concat", "").startswith("final;"):
        pass  # its length is its partials'
    elif length is None:
        h["Upload-Defer-Length"] = "1"
    else:
        h["Upload-Length"] = str(length)
    if data:
        h["Content-Type"] = OCTETS
    resp = await client.post("/", headers=h, data=data or None)
    assert resp.status == expect, (resp.status, await resp.text())
    if expect != 201:
        return await resp.text()
    return URL(resp.headers["Location"]).path.rsplit("/", 1)[1]


async def patch(client, token: str, upload_id: str, offset: int, data: bytes, **headers: str):
    h = {**TUS, **bearer(token), "Upload-Offset": str(offset), "Content-Type": OCTETS}
    h.update({k.replace("_", "-"): v for k, v in headers.items()})
    return await client.patch(f"/{upload_id}", headers=h, data=data)


async def head(client, token: str, upload_id: str):
    return await client.head(f"/{upload_id}", headers={**TUS, **bearer(token)})


async def listing(client, token: str, **params: str):
    resp = await client.get("/", headers=bearer(token), params=params)
    assert resp.status == 200, (resp.status, await resp.text())
    return await resp.json()


@pytest.fixture
def start(aiohttp_client, store_factory, store_kind):
    async def start(config: Config | None = None, **kw):
        store = store_factory() if store_kind == "file" else store_factory(part_size=5 << 20)
        config = config or Config(auth_secret=SECRET)
        client = await aiohttp_client(create_app(config, store=store, **kw))
        return client, store

    return start


# -- access --------------------------------------------------------------------------------------


async def test_others_get_404_for_every_verb_and_concatenation_and_her_uploads_stay_byte_exact(start, store_factory):
    client, store = await start()
    half = os.urandom(600)
    unfinished = await create(client, ALICE, 1000, half)
    deferred = await create(client, ALICE, None, half)
    whole = os.urandom(700)
    finished = await create(client, ALICE, len(whole), whole)
    partial = await create(client, ALICE, len(whole), whole, Upload_Concat="partial")
    not_found = await (await client.get(f"/{MISSING}", headers=bearer(BOB))).text()
    assert not_found == "upload not found\n"

    for upload_id in (unfinished, deferred, finished, partial):
        resp = await head(client, BOB, upload_id)
        assert (resp.status, "Upload-Offset" in resp.headers, "Upload-Metadata" in resp.headers) == (404, False, False)
        resp = await patch(client, BOB, upload_id, 600, b"bob's bytes")
        assert (resp.status, await resp.text()) == (404, not_found)
        resp = await client.get(f"/{upload_id}", headers=bearer(BOB))
        assert (resp.status, await resp.text()) == (404, not_found)
        resp = await client.delete(f"/{upload_id}", headers={**TUS, **bearer(BOB)})
        assert (resp.status, await resp.text()) == (404, not_found)
    resp = await patch(client, BOB, deferred, 600, b"", Upload_Length="600")  # would finish it
    assert resp.status == 404
    # Her partial in his final: as if it did not exist.
    text = await create(client, BOB, None, expect=404, Upload_Concat=f"final;/{partial}")
    assert text == f"a partial upload named in Upload-Concat was not found: {partial}\n"

    # Nothing changed: offsets, lengths, bytes.
    resp = await head(client, ALICE, unfinished)
    assert (resp.status, resp.headers["Upload-Offset"], resp.headers["Upload-Length"]) == (200, "600", "1000")
    resp = await head(client, ALICE, deferred)
    assert (resp.headers["Upload-Offset"], resp.headers["Upload-Defer-Length"]) == ("600", "1")
    await assert_store_holds(store, store_factory, unfinished, half)
    await assert_store_holds(store, store_factory, deferred, half)
    for upload_id in (finished, partial):
        resp = await client.get(f"/{upload_id}", headers=bearer(ALICE))
        assert (resp.status, sha256(await resp.read())) == (200, sha256(whole))
    # An admin may; and she may concatenate her own.
    assert (await head(client, ADMIN, unfinished)).headers["Upload-Offset"] == "600"
    final = await create(client, ALICE, None, Upload_Concat=f"final;/{partial}")
    resp = await client.get(f"/{final}", headers=bearer(ADMIN))
    assert (resp.status, sha256(await resp.read())) == (200, sha256(whole))
    assert (await client.delete(f"/{unfinished}", headers={**TUS, **bearer(ADMIN)})).status == 204


async def test_anothers_head_does_not_interrupt_the_owners_patch(start, store_factory):
    client, store = await start()
    received = Received(store)
    data = os.urandom(300_000)
    upload_id = await create(client, ALICE, len(data))
    hanging = await HangingPatch.start(
        client.host, client.port, f"/{upload_id}", 0, len(data), Authorization=f"Bearer {ALICE}"
    )
    await hanging.send(data[:100_000])
    await received.at_least(100_000)
    for _ in range(5):  # on the old code, the first of these made her PATCH let go (400)
        assert (await head(client, BOB, upload_id)).status == 404
        resp = await patch(client, BOB, upload_id, 0, b"x")
        assert resp.status == 404
    await hanging.send(data[100_000:])
    answer = await hanging.response()
    hanging.close()
    assert (answer.status, answer.headers["upload-offset"]) == (204, str(len(data)))
    resp = await client.get(f"/{upload_id}", headers=bearer(ALICE))
    assert sha256(await resp.read()) == sha256(data)


async def test_an_upload_without_owner_is_open_to_every_token_and_tokens_off_change_nothing(aiohttp_client, tmp_path):
    anonymous = make_token(SECRET, 3600)  # no sub: the upload has no owner
    client = await aiohttp_client(create_app(Config(auth_secret=SECRET), store=_file(tmp_path)))
    upload_id = await create(client, anonymous, 3)
    assert (await head(client, BOB, upload_id)).status == 200
    # Alice's is closed to a token without sub.
    hers = await create(client, ALICE, 3)
    assert (await head(client, anonymous, hers)).status == 404


def _file(tmp_path):
    from tusserver import FileStore

    return FileStore(str(tmp_path / "uploads"))


# -- pre-access and server metadata -------------------------------------------------------------


async def test_the_authorize_hook_sees_the_action_and_can_refuse_before_the_lock(start, store_factory):
    hooks = Hooks()
    seen = []

    @hooks.on("pre-access")
    def authorize(event):
        seen.append((event.action, event.upload.id, event.upload.offset, event.upload.owner, event.request.subject))
        if event.action in ("patch", "delete") and event.upload.server_metadata.get("frozen"):
            raise HookRejected(423, "this upload is frozen")

    @hooks.on("pre-create")
    def freeze(event):
        return HookResult(server_metadata={"frozen": "yes"})

    client, store = await start(hooks=hooks)
    data = b"0123456789"
    upload_id = await create(client, ALICE, 20, data)
    resp = await patch(client, ALICE, upload_id, 10, b"abcdefghij")
    assert (resp.status, await resp.text()) == (423, "this upload is frozen\n")
    resp = await client.delete(f"/{upload_id}", headers={**TUS, **bearer(ALICE)})
    assert resp.status == 423
    resp = await head(client, ALICE, upload_id)
    assert (resp.status, resp.headers["Upload-Offset"]) == (200, "10")
    await assert_store_holds(store, store_factory, upload_id, data)
    assert seen == [
        ("patch", upload_id, 10, "alice", "alice"),
        ("delete", upload_id, 10, "alice", "alice"),
        ("head", upload_id, 10, "alice", "alice"),
    ]
    # Bob is refused by the owner check before the hook is asked.
    assert (await head(client, BOB, upload_id)).status == 404
    assert len(seen) == 3


async def test_hook_added_owner_and_server_metadata_are_kept_apart_from_upload_metadata(start, store_factory):
    hooks = Hooks()

    @hooks.on("pre-create")
    def assign(event):
        assert event.upload.owner == "alice"  # the token's sub, before the hook decides
        return HookResult(owner="team-a", server_metadata={"plan": "gold", "owner": "team-a"})

    client, store = await start(hooks=hooks)
    upload_id = await create(client, ALICE, 4, Upload_Metadata="filename YS50eHQ=")
    team = make_token(SECRET, 3600, subject="team-a")
    resp = await head(client, team, upload_id)
    assert (resp.status, resp.headers["Upload-Metadata"]) == (200, "filename YS50eHQ=")
    assert (await head(client, ALICE, upload_id)).status == 404  # the hook gave it to her team
    info = await store.get_info(upload_id)
    assert (info.owner, info.server_metadata, info.metadata) == (
        "team-a",
        {"plan": "gold", "owner": "team-a"},
        {"filename": "a.txt"},
    )
    page = await listing(client, team)
    assert [(u["id"], u["metadata"]) for u in page["uploads"]] == [(upload_id, {"filename": "a.txt"})]


async def test_the_pre_access_webhook_and_the_webhooks_owner(aiohttp_client, aiohttp_server, tmp_path):
    deliveries = []

    async def hook(request: web.Request) -> web.Response:
        payload = await request.json()
        deliveries.append(payload)
        if payload["type"] == "pre-create":
            return web.json_response({"owner": "alice", "server_metadata": {"tier": "1"}})
        if payload["action"] == "get":
            return web.json_response({"message": "downloads are off for this tier"}, status=403)
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/hooks", hook)
    server = await aiohttp_server(app, host="127.0.0.1")
    config = Config(
        auth_secret=SECRET, hooks_url=str(server.make_url("/hooks")), hooks_events=["pre-create", "pre-access"]
    )
    client = await aiohttp_client(create_app(config, store=_file(tmp_path)))
    upload_id = await create(client, BOB, 2, b"hi")  # the hook makes alice its owner
    assert (await head(client, BOB, upload_id)).status == 404
    resp = await head(client, ALICE, upload_id)
    assert (resp.status, "Upload-Metadata" in resp.headers) == (200, False)
    resp = await client.get(f"/{upload_id}", headers=bearer(ALICE))
    assert (resp.status, await resp.text()) == (403, "downloads are off for this tier\n")
    access = [d for d in deliveries if d["type"] == "pre-access"]
    assert [(d["action"], d["upload"]["owner"], d["upload"]["server_metadata"]) for d in access] == [
        ("head", "alice", {"tier": "1"}),
        ("get", "alice", {"tier": "1"}),
    ]


def test_an_info_file_written_before_owners_is_read_without_them():
    old = {"version": 1, "id": "abc", "length": 5, "metadata": {}, "created": 1.0, "expires": None,
           "concat": None, "partials": [], "finished": False, "storage": {}}  # fmt: skip
    info = UploadInfo.from_json(json.dumps(old).encode())
    assert (info.owner, info.server_metadata, info.listed) == (None, {}, False)
    again = UploadInfo.from_json(info.to_json())
    assert again == info


# -- listing --------------------------------------------------------------------------------------


async def test_alice_lists_exactly_her_uploads_newest_first_page_by_page(start, store_factory):
    client, store = await start()
    hers = []
    for n in range(5):
        hers.append(await create(client, ALICE, 3, b"abc" if n % 2 else b"", Upload_Metadata=f"n {_b64(str(n))}"))
        await asyncio.sleep(0.002)  # distinct creation times
    his = [await create(client, BOB, 1), await create(client, BOB, 1)]
    newest = hers[::-1]

    page = await listing(client, ALICE, limit="2")
    assert [u["id"] for u in page["uploads"]] == newest[:2]
    first = page["uploads"][0]
    info = await store.get_info(hers[4])
    assert first == {
        "id": hers[4],
        "url": f"http://{client.host}:{client.port}/{hers[4]}",
        "length": 3,
        "offset": 0,
        "finished": False,
        "metadata": {"n": "4"},
        "created": info.created,
        "expires": info.expires,  # a day ahead by default (expire_after)
    }
    assert info.expires is not None
    assert page["uploads"][1]["offset"] == 3 and page["uploads"][1]["finished"] is True
    page2 = await listing(client, ALICE, limit="2", cursor=page["next"])
    assert [u["id"] for u in page2["uploads"]] == newest[2:4]
    page3 = await listing(client, ALICE, limit="2", cursor=page2["next"])
    assert ([u["id"] for u in page3["uploads"]], page3["next"]) == (newest[4:], None)
    assert [u["id"] for u in (await listing(client, ALICE))["uploads"]] == newest

    assert [u["id"] for u in (await listing(client, BOB))["uploads"]] == his[::-1]
    everyone = await listing(client, ADMIN)
    assert sorted(u["id"] for u in everyone["uploads"]) == sorted(hers + his)
    assert [u["id"] for u in (await listing(client, ADMIN, owner="alice"))["uploads"]] == newest

    # A deleted upload leaves the listing, and its index entries go with it.
    assert (await client.delete(f"/{hers[4]}", headers={**TUS, **bearer(ALICE)})).status == 204
    assert [u["id"] for u in (await listing(client, ALICE))["uploads"]] == newest[1:]
    assert hers[4] not in [u["id"] for u in (await listing(client, ADMIN))["uploads"]]
    for key in ("all", owner_key("alice")):
        assert not [e for e in await store.list_index(key, None, 100) if e.endswith(hers[4])]


@pytest.mark.parametrize(
    ("token", "params", "status"),
    [
        (ALICE, {"limit": "0"}, 400),
        (ALICE, {"limit": "1001"}, 400),
        (ALICE, {"limit": "ten"}, 400),
        (ALICE, {"limit": "-1"}, 400),
        (ALICE, {"cursor": "../../etc"}, 400),
        (BOB, {"owner": "alice"}, 403),
        (make_token(SECRET, 3600), {}, 403),  # no sub: nobody's uploads to list
    ],
)
async def test_bad_listing_requests_are_refused(aiohttp_client, tmp_path, token, params, status):
    client = await aiohttp_client(create_app(Config(auth_secret=SECRET), store=_file(tmp_path)))
    await create(client, ALICE, 1)
    resp = await client.get("/", headers=bearer(token), params=params)
    assert resp.status == status, await resp.text()


async def test_without_tokens_there_is_no_listing(aiohttp_client, tmp_path):
    client = await aiohttp_client(create_app(Config(), store=_file(tmp_path)))
    resp = await client.post("/", headers={**TUS, "Upload-Length": "1"})
    assert resp.status == 201
    resp = await client.get("/")
    assert (resp.status, await resp.text()) == (404, "upload not found\n")
    assert not (tmp_path / "uploads" / ".owners").exists()  # nothing is indexed either


async def test_owner_strings_never_reach_paths_or_keys(aiohttp_client, tmp_path):
    hooks = Hooks()
    hooks.on("pre-create", lambda event: HookResult(owner="../../etc/passwd"))
    client = await aiohttp_client(create_app(Config(auth_secret=SECRET), store=_file(tmp_path), hooks=hooks))
    upload_id = await create(client, ALICE, 1)
    index = tmp_path / "uploads" / ".owners"
    assert sorted(p.name for p in index.iterdir()) == sorted(["all", owner_key("../../etc/passwd")])
    page = await listing(client, ADMIN, owner="../../etc/passwd")
    assert [u["id"] for u in page["uploads"]] == [upload_id]


async def test_a_stale_entry_is_skipped_and_an_old_one_cleaned(aiohttp_client, tmp_path):
    store = _file(tmp_path)
    client = await aiohttp_client(create_app(Config(auth_secret=SECRET), store=store))
    kept, gone, young = await create(client, ALICE, 1), await create(client, ALICE, 1), await create(client, ALICE, 1)
    for upload_id in (gone, young):  # as after a crash: the upload went, its entries stayed
        os.remove(tmp_path / "uploads" / f"{upload_id}.info")
    old = await store.peek_info(kept)
    entries = await store.list_index(owner_key("alice"), None, 10)
    gone_entry = next(e for e in entries if e.endswith(gone))
    # Make `gone`'s entry an hour old; `young`'s may belong to a creation under way.
    aged = f"{int(gone_entry[:13]) + 3_600_000:013d}-{gone}"
    directory = tmp_path / "uploads" / ".owners" / owner_key("alice")
    os.rename(directory / gone_entry, directory / aged)
    assert [u["id"] for u in (await listing(client, ALICE))["uploads"]] == [old.id]
    left = await store.list_index(owner_key("alice"), None, 10)
    assert aged not in left and any(e.endswith(young) for e in left)


async def test_a_listing_costs_what_the_caller_holds_not_what_the_store_holds(start, store_kind):
    client, store = await start()
    for _ in range(30):
        await create(client, BOB, 0)  # finished at once
    hers = [await create(client, ALICE, 0) for _ in range(3)]
    calls: list[str] = []
    if store_kind == "s3":
        store.client.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    else:
        for name in ("peek_info", "get_info", "list_index"):
            original = getattr(store, name)

            def counted(*args, _original=original, _name=name):
                calls.append(_name)
                return _original(*args)

            setattr(store, name, counted)
    page = await listing(client, ALICE)
    assert sorted(u["id"] for u in page["uploads"]) == sorted(hers)
    if store_kind == "s3":
        assert sorted(calls) == ["GetObject"] * 3 + ["ListObjectsV2"]
    else:
        assert sorted(calls) == ["list_index"] + ["peek_info"] * 3


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


# -- quotas ---------------------------------------------------------------------------------------


def quota_config(**kw) -> Config:
    return Config(auth_secret=SECRET, **kw)


async def test_a_byte_quota_refuses_creation_at_the_right_byte(start):
    client, store = await start(quota_config(quota_bytes=100))
    await create(client, ALICE, 60)
    text = await create(client, ALICE, 41, expect=413)
    assert text == "the owner's quota does not allow this: quota_bytes is 100 bytes, 40 left\n"
    await create(client, ALICE, 40)  # exactly what is left
    assert await create(client, ALICE, 1, expect=413) == (
        "the owner's quota does not allow this: quota_bytes is 100 bytes, 0 left\n"
    )
    await create(client, BOB, 100)  # his own quota
    assert len((await listing(client, ALICE))["uploads"]) == 2


TEN_LEFT = "the owner's quota does not allow this: quota_bytes is 100 bytes, 10 left\n"


async def test_deferred_lengths_and_patch_bodies_stay_within_the_quota(start, store_factory):
    client, store = await start(quota_config(quota_bytes=100))
    await create(client, ALICE, 60)
    data = os.urandom(40)
    deferred = await create(client, ALICE, None)
    assert (await patch(client, ALICE, deferred, 0, data[:30])).status == 204
    # The length counts when it is set: 60 + 41 > 100.
    resp = await patch(client, ALICE, deferred, 30, b"", Upload_Length="41")
    assert (resp.status, await resp.text()) == (
        413,
        "the owner's quota does not allow this: quota_bytes is 100 bytes, 10 left\n",
    )
    # A body that cannot fit is refused before any byte is stored.
    resp = await patch(client, ALICE, deferred, 30, data[30:] + b"!")
    assert (resp.status, await resp.text()) == (
        413,
        "the owner's quota does not allow this: quota_bytes is 100 bytes, 10 left\n",
    )
    assert (await head(client, ALICE, deferred)).headers["Upload-Offset"] == "30"

    async def chunked():  # no Content-Length: cut at the quota, the bytes within it kept
        yield data[30:]
        yield b"over the quota"

    resp = await patch(client, ALICE, deferred, 30, chunked())
    assert (resp.status, await resp.text()) == (
        413,
        "the owner's quota does not allow this: quota_bytes is 100 bytes; bytes past it were discarded\n",
    )
    resp = await head(client, ALICE, deferred)
    assert (resp.headers["Upload-Offset"], resp.headers["Upload-Defer-Length"]) == ("40", "1")
    await assert_store_holds(store, store_factory, deferred, data)
    assert (await patch(client, ALICE, deferred, 40, b"", Upload_Length="40")).status == 204
    assert await create(client, ALICE, 1, expect=413)


async def test_finals_count_their_length_within_the_quota(start):
    client, _ = await start(quota_config(quota_bytes=100))
    a = await create(client, ALICE, 30, b"a" * 30, Upload_Concat="partial")
    b = await create(client, ALICE, 30, b"b" * 30, Upload_Concat="partial")
    text = await create(client, ALICE, None, expect=413, Upload_Concat=f"final;/{a} /{b}")
    assert text == "the owner's quota does not allow this: quota_bytes is 100 bytes, 40 left\n"
    c = await create(client, ALICE, 10, b"c" * 10, Upload_Concat="partial")
    final = await create(client, ALICE, None, Upload_Concat=f"final;/{c}")  # 70 + 10 of 100
    resp = await client.get(f"/{final}", headers=bearer(ALICE))
    assert await resp.read() == b"c" * 10
    text = await create(client, ALICE, 21, expect=413)
    assert text == "the owner's quota does not allow this: quota_bytes is 100 bytes, 20 left\n"


async def test_an_upload_count_quota_and_its_room_after_a_delete(start):
    client, _ = await start(quota_config(quota_uploads=2))
    first = await create(client, ALICE, 1)
    await create(client, ALICE, 1)
    text = await create(client, ALICE, 1, expect=413)
    assert text == "the owner's quota does not allow this: quota_uploads is 2 uploads, 0 left\n"
    assert (await client.delete(f"/{first}", headers={**TUS, **bearer(ALICE)})).status == 204
    await create(client, ALICE, 1)


async def test_concurrent_creations_cannot_both_take_the_last_bytes(start):
    client, _ = await start(quota_config(quota_bytes=100))
    results = await asyncio.gather(
        *(client.post("/", headers={**TUS, **bearer(ALICE), "Upload-Length": "60"}) for _ in range(6))
    )
    assert sorted(r.status for r in results) == [201] + [413] * 5


async def test_quota_for_tightens_the_configured_quota_per_request(aiohttp_client, tmp_path):
    def quota_for(request):
        return Quota(bytes=10) if request.headers.get("X-Plan") == "free" else None

    config = quota_config(quota_bytes=1000)
    client = await aiohttp_client(create_app(config, store=_file(tmp_path), quota_for=quota_for))
    text = await create(client, ALICE, 11, expect=413, X_Plan="free")
    assert text == "the owner's quota does not allow this: quota_bytes is 10 bytes, 10 left\n"
    await create(client, ALICE, 11)


def test_a_quota_without_tokens_stops_create_app(tmp_path):
    with pytest.raises(ConfigError, match="quota_bytes needs tokens"):
        create_app(Config(quota_bytes=1), store=_file(tmp_path))


async def test_expiry_removes_the_index_entries_with_the_upload(start):
    import time

    from tusserver import MemoryLocker
    from tusserver.cleanup import clean_expired

    config = Config(auth_secret=SECRET, expire_after=60)
    client, store = await start(config)
    upload_id = await create(client, ALICE, 10, b"12345")
    assert [u["id"] for u in (await listing(client, ALICE))["uploads"]] == [upload_id]
    assert await clean_expired(store, config, MemoryLocker(), now=time.time() + 120) == 1
    for key in ("all", owner_key("alice")):
        assert await store.list_index(key, None, 10) == []
