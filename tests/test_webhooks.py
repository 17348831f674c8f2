"""The HTTP webhook against a real receiver (an aiohttp server on 127.0.0.1 started by
each test): payloads, pass-through rejections, changes, retries, forwarded headers."""

from __future__ import annotations

import asyncio
import base64
import json
import os

import pytest
from aiohttp import web

from tests.conftest import free_port
from tests.hanging import wait_until
from tests.tus_client import OCTETS, TUS, create, download, patch
from tusserver import Config, FileStore, create_app

PATIENCE = 30  # seconds; a bound against hanging, not a timing assertion


class Receiver:
    """A hook service: records every delivery; `answer(payload)` decides the reply."""

    def __init__(self) -> None:
        self.deliveries: list[dict] = []
        self.headers: list[dict] = []
        self.answer = lambda payload: web.json_response({})
        self.arrived = asyncio.Condition()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        payload = await request.json()
        self.deliveries.append(payload)
        self.headers.append(dict(request.headers))
        async with self.arrived:
            self.arrived.notify_all()
        reply = self.answer(payload)
        if asyncio.iscoroutine(reply):
            reply = await reply
        return reply

    def of(self, event: str) -> list[dict]:
        return [d for d in self.deliveries if d["type"] == event]

    async def wait_for(self, event: str, count: int) -> list[dict]:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: len(self.of(event)) >= count), PATIENCE)
        return self.of(event)


@pytest.fixture
async def receiver(aiohttp_server):
    hook = Receiver()
    app = web.Application()
    app.router.add_post("/hooks", hook.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    hook.url = str(server.make_url("/hooks"))
    return hook


def hook_config(receiver, **kw) -> Config:
    events = ["pre-create", "post-create", "post-receive", "pre-finish", "post-finish", "pre-terminate"]
    options = {"hooks_url": receiver.url, "hooks_events": events, "hooks_backoff": 0.01, "progress_interval": 0}
    return Config(**{**options, **kw})


async def test_events_are_posted_as_json_with_upload_and_request(aiohttp_client, receiver, store_factory):
    client = await aiohttp_client(create_app(hook_config(receiver), store=store_factory()))
    data = os.urandom(700)
    path = await create(client, len(data), Upload_Metadata="filename 0LzQsNC5LnR4dA==")  # "май.txt"
    upload_id = path.rsplit("/", 1)[1]
    await patch(client, path, 0, data)
    finished = (await receiver.wait_for("post-finish", 1))[0]
    await receiver.wait_for("post-create", 1)
    await receiver.wait_for("post-receive", 1)

    pre = receiver.of("pre-create")[0]
    assert pre["upload"]["id"] == upload_id
    assert pre["upload"]["size"] == 700 and pre["upload"]["offset"] == 0
    assert pre["upload"]["metadata"] == {"filename": "май.txt"}
    assert pre["request"]["method"] == "POST" and pre["request"]["uri"] == "/"
    assert pre["request"]["remote_addr"] == "127.0.0.1"
    assert pre["request"]["headers"] == {}  # nothing forwarded unless configured
    assert receiver.of("post-receive")[0]["upload"]["offset"] == 700
    assert finished["upload"]["finished"] is True and finished["upload"]["offset"] == 700
    storage = finished["upload"]["storage"]
    if storage["type"] == "file":
        assert set(storage) == {"type", "path"} and storage["path"].endswith("/" + upload_id)
    else:
        assert storage == {"type": "s3", "bucket": store_factory.bucket, "key": upload_id}
    assert receiver.headers[0]["Content-Type"] == "application/json"
    assert await download(client, path) == data


async def test_pre_create_rejection_passes_status_and_message_through(aiohttp_client, receiver, tmp_path):
    receiver.answer = lambda payload: web.json_response({"message": "acme is over its quota"}, status=429)
    store_dir = tmp_path / "uploads"
    client = await aiohttp_client(create_app(hook_config(receiver), store=FileStore(str(store_dir))))
    resp = await client.post(
        "/", data=b"x" * 10, headers={**TUS, "Upload-Length": "10", "Content-Type": OCTETS}
    )
    assert resp.status == 429
    assert await resp.text() == "acme is over its quota\n"
    assert not any(store_dir.iterdir())  # nothing was created
    assert [d["type"] for d in receiver.deliveries] == ["pre-create"]


LONG = "line one\nline two " + "z" * 400


@pytest.mark.parametrize(
    ("status", "body", "expected_status", "expected_text"),
    [
        # Not 2xx, but not an error status: 400, and its body is not a message for the client.
        (302, json.dumps({"message": "see elsewhere"}), 400, "request was rejected by a hook"),
        (403, json.dumps({"message": LONG}), 403, ("line one line two " + "z" * 400)[:197] + "..."),
        # Only a JSON message reaches the client: never a text or HTML body (a debug page, a trace).
        (403, LONG, 403, "request was rejected by a hook"),
        (404, "<html><body>Traceback: /srv/hooks/app.py line 9</body></html>", 404, "request was rejected by a hook"),
        (422, json.dumps({"message": 7}), 422, "request was rejected by a hook"),
    ],
)
async def test_rejections_are_kept_within_limits(
    aiohttp_client, receiver, tmp_path, status, body, expected_status, expected_text
):
    receiver.answer = lambda payload: web.Response(status=status, text=body, headers={"Location": "/x"})
    client = await aiohttp_client(create_app(hook_config(receiver), store=FileStore(str(tmp_path))))
    resp = await client.post("/", headers={**TUS, "Upload-Length": "1"})
    assert resp.status == expected_status
    assert await resp.text() == expected_text + "\n"
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "reply",
    [
        lambda: web.Response(status=500, text="Traceback (most recent call last): db at 10.0.0.3"),
        lambda: web.Response(status=502, text="<html>502 Bad Gateway nginx/1.25</html>", content_type="text/html"),
        lambda: web.json_response({"message": "internal: db at 10.0.0.3 down"}, status=503),
    ],
)
async def test_a_hook_service_5xx_is_503_hook_unavailable_and_its_body_stays_in_the_log(
    aiohttp_client, receiver, tmp_path, caplog, reply
):
    receiver.answer = lambda payload: reply()
    client = await aiohttp_client(create_app(hook_config(receiver), store=FileStore(str(tmp_path))))
    resp = await client.post("/", headers={**TUS, "Upload-Length": "1"})
    assert (resp.status, resp.headers["Retry-After"]) == (503, "5")
    assert await resp.text() == "the hook service did not answer; retry later\n"
    assert not any(tmp_path.iterdir())
    assert "10.0.0.3" in caplog.text or "nginx" in caplog.text  # for the operator


async def test_pre_create_answer_changes_metadata_and_id(aiohttp_client, receiver, tmp_path):
    def answer(payload):
        if payload["type"] == "pre-create":
            return web.json_response({"upload_id": "user-7-file-1", "metadata": {"owner": "7"}})
        return web.json_response({})

    receiver.answer = answer
    client = await aiohttp_client(create_app(hook_config(receiver), store=FileStore(str(tmp_path))))
    path = await create(client, 4, Upload_Metadata="filename YS50eHQ=")
    assert path == "/user-7-file-1"
    resp = await client.head(path, headers=TUS)
    assert resp.headers["Upload-Metadata"] == "owner Nw=="
    created = await receiver.wait_for("post-create", 1)
    assert created[0]["upload"]["id"] == "user-7-file-1"


async def streamed_reply(request: web.Request, body: bytes, status: int = 200) -> web.StreamResponse:
    """`body` sent chunked, in pieces with pauses: as a streaming framework might."""
    await request.read()
    response = web.StreamResponse(status=status, headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    for i in range(0, len(body), 1000):
        await response.write(body[i : i + 1000])
        await asyncio.sleep(0.02)
    await response.write_eof()
    return response


async def hook_server(aiohttp_server, body: bytes, status: int = 200) -> str:
    """A hook service that answers every event with `body`, streamed."""

    async def reply(request: web.Request) -> web.StreamResponse:
        return await streamed_reply(request, body, status)

    app = web.Application()
    app.router.add_post("/hooks", reply)
    server = await aiohttp_server(app, host="127.0.0.1")
    return str(server.make_url("/hooks"))


async def test_a_pre_create_answer_arriving_in_pieces_is_read_whole(aiohttp_client, aiohttp_server, tmp_path):
    metadata = {"owner": "7", "note": "n" * 3000}  # several pieces
    answer = json.dumps({"upload_id": "user-7-file-2", "metadata": metadata}).encode()
    url = await hook_server(aiohttp_server, answer)
    config = Config(hooks_url=url, hooks_events=["pre-create"])
    client = await aiohttp_client(create_app(config, store=FileStore(str(tmp_path))))
    path = await create(client, 4)
    assert path == "/user-7-file-2"
    resp = await client.head(path, headers=TUS)
    assert resp.headers["Upload-Metadata"] == f"owner Nw==,note {base64.b64encode(b'n' * 3000).decode()}"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, (500, "a server hook failed: the hook's reply is too large\n")),  # cannot be applied in part
        (403, (403, "request was rejected by a hook\n")),  # a rejection stays one; its text is no message
    ],
)
async def test_a_hook_reply_over_64_kib_is_not_read_in_part(
    aiohttp_client, aiohttp_server, tmp_path, status, expected
):
    answer = json.dumps({"upload_id": "user-7-file-3", "metadata": {"big": "x" * 70_000}}).encode()
    if status != 200:
        answer = b"x" * 70_000
    url = await hook_server(aiohttp_server, answer[:66_000], status)
    config = Config(hooks_url=url, hooks_events=["pre-create"])
    client = await aiohttp_client(create_app(config, store=FileStore(str(tmp_path / "u"))))
    resp = await client.post("/", headers={**TUS, "Upload-Length": "1"})
    assert (resp.status, await resp.text()) == expected
    assert not (tmp_path / "u").exists() or not any((tmp_path / "u").iterdir())


async def test_a_bad_id_from_the_hook_service_is_500(aiohttp_client, receiver, tmp_path):
    receiver.answer = lambda payload: web.json_response({"upload_id": "../escape"})
    client = await aiohttp_client(create_app(hook_config(receiver), store=FileStore(str(tmp_path / "u"))))
    resp = await client.post("/", headers={**TUS, "Upload-Length": "1"})
    assert (resp.status, await resp.text()) == (500, "a server hook failed\n")
    assert not any((tmp_path / "u").iterdir())


async def test_post_finish_is_retried_after_a_500_without_delaying_the_response(aiohttp_client, receiver, tmp_path):
    answers = {"post-finish": [web.Response(status=500, text="db down"), web.json_response({})]}
    release = asyncio.Event()

    async def answer(payload):
        queue = answers.get(payload["type"])
        if queue:
            reply = queue.pop(0)
            if reply.status == 500:
                await asyncio.wait_for(release.wait(), PATIENCE)  # hold the first attempt open
            return reply
        return web.json_response({})

    receiver.answer = answer
    client = await aiohttp_client(create_app(hook_config(receiver), store=FileStore(str(tmp_path))))
    path = await create(client, 3)
    # The PATCH answers while the hook service is still busy with the first attempt.
    resp = await patch(client, path, 0, b"abc")
    assert resp.headers["Upload-Offset"] == "3"
    await receiver.wait_for("post-finish", 1)
    release.set()
    first, second = await receiver.wait_for("post-finish", 2)
    assert first == second  # the same event, delivered again
    assert first["upload"]["id"] == path[1:]
    assert answers["post-finish"] == []


async def test_post_events_give_up_after_the_configured_retries(aiohttp_client, receiver, tmp_path, caplog):
    receiver.answer = lambda payload: (
        web.Response(status=503) if payload["type"] == "post-create" else web.json_response({})
    )
    config = hook_config(receiver, hooks_retries=2)
    client = await aiohttp_client(create_app(config, store=FileStore(str(tmp_path))))
    path = await create(client, 1)
    await receiver.wait_for("post-create", 3)
    await patch(client, path, 0, b"x")  # later events still go out
    await receiver.wait_for("post-finish", 1)
    await wait_until(lambda: "given up" in caplog.text, "the last retry")
    assert len(receiver.of("post-create")) == 3
    assert f"post-create webhook for {path[1:]} given up" in caplog.text


async def test_a_4xx_answer_to_a_post_event_is_not_retried(aiohttp_client, receiver, tmp_path):
    receiver.answer = lambda payload: (
        web.Response(status=404) if payload["type"] == "post-create" else web.json_response({})
    )
    client = await aiohttp_client(create_app(hook_config(receiver), store=FileStore(str(tmp_path))))
    path = await create(client, 1)
    await patch(client, path, 0, b"x")
    await receiver.wait_for("post-finish", 1)  # delivered after post-create's only attempt
    assert len(receiver.of("post-create")) == 1


async def test_only_selected_headers_are_forwarded(aiohttp_client, receiver, tmp_path):
    config = hook_config(receiver, hooks_forward_headers=["Authorization", "X-Tenant"])
    client = await aiohttp_client(create_app(config, store=FileStore(str(tmp_path))))
    await create(client, 1, Authorization="Bearer user-token", X_Tenant="acme", Cookie="session=secret")
    pre = receiver.of("pre-create")[0]
    assert pre["request"]["headers"] == {"Authorization": "Bearer user-token", "X-Tenant": "acme"}
    assert "secret" not in json.dumps(receiver.deliveries)


async def test_only_selected_events_are_sent(aiohttp_client, receiver, tmp_path):
    config = hook_config(receiver, hooks_events=["post-finish"])
    client = await aiohttp_client(create_app(config, store=FileStore(str(tmp_path))))
    path = await create(client, 2)
    await patch(client, path, 0, b"ab")
    assert (await client.delete(path, headers=TUS)).status == 204
    await receiver.wait_for("post-finish", 1)
    assert [d["type"] for d in receiver.deliveries] == ["post-finish"]


async def test_an_unreachable_hook_service_refuses_pre_events_with_503_and_never_fails_post_events(
    aiohttp_client, tmp_path, caplog
):
    dead = f"http://hooks:pw-s3cret@127.0.0.1:{free_port()}/hooks?key=key-s3cret"  # nothing listens there
    store_dir = tmp_path / "uploads"
    client = await aiohttp_client(
        create_app(Config(hooks_url=dead, hooks_events=["pre-create"]), store=FileStore(str(store_dir)))
    )
    resp = await client.post("/", headers={**TUS, "Upload-Length": "1"})
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "5"
    assert await resp.text() == "the hook service did not answer; retry later\n"
    assert not any(store_dir.iterdir())
    assert "pre-create webhook to http://127.0.0.1:" in caplog.text and "s3cret" not in caplog.text

    config = Config(hooks_url=dead, hooks_events=["post-create", "post-finish"], hooks_retries=0)
    client = await aiohttp_client(create_app(config, store=FileStore(str(tmp_path / "other"))))
    path = await create(client, 2)
    await patch(client, path, 0, b"ok")
    assert await download(client, path) == b"ok"


async def test_a_slow_hook_service_times_out_as_503(aiohttp_client, receiver, tmp_path):
    done = asyncio.Event()

    async def late(payload):
        await asyncio.wait_for(done.wait(), PATIENCE)
        return web.json_response({})

    receiver.answer = late
    config = hook_config(receiver, hooks_timeout=0.2)
    client = await aiohttp_client(create_app(config, store=FileStore(str(tmp_path / "u"))))
    resp = await client.post("/", headers={**TUS, "Upload-Length": "1"})
    done.set()
    assert resp.status == 503
    assert not any((tmp_path / "u").iterdir())


async def test_pre_finish_rejection_by_the_hook_service_keeps_the_upload(aiohttp_client, receiver, store_factory):
    verdicts = [web.json_response({"message": "checksum of the whole file differs"}, status=422)]
    receiver.answer = lambda payload: (
        verdicts.pop(0) if payload["type"] == "pre-finish" and verdicts else web.json_response({})
    )
    client = await aiohttp_client(create_app(hook_config(receiver), store=store_factory()))
    data = os.urandom(1234)
    path = await create(client, len(data))
    resp = await client.patch(path, data=data, headers={**TUS, "Upload-Offset": "0", "Content-Type": OCTETS})
    assert (resp.status, await resp.text()) == (422, "checksum of the whole file differs\n")
    assert (await client.get(path)).status == 409
    await patch(client, path, len(data), b"")
    assert await download(client, path) == data


# -- bounded background delivery (issue 12) ------------------------------------------------


async def test_a_flood_of_post_events_on_a_slow_hook_is_queued_up_to_the_bound_and_the_rest_dropped(
    aiohttp_client, receiver, tmp_path
):
    """One worker busy with a hook that does not answer, a queue of 5: of 30 post-create
    events, 1 is in delivery, 5 wait, 24 are dropped and counted in /metrics. The dropped
    ones are never sent; the queue works on once the hook answers again."""
    from prometheus_client.parser import text_string_to_metric_families

    from tusserver import add_ops_routes

    release = asyncio.Event()

    async def answer(payload):
        await asyncio.wait_for(release.wait(), PATIENCE)
        return web.json_response({})

    receiver.answer = answer
    config = hook_config(
        receiver, hooks_events=["post-create"], hooks_workers=1, hooks_queue_size=5, hooks_timeout=PATIENCE
    )
    app = create_app(config, store=FileStore(str(tmp_path)))
    add_ops_routes(app, app)
    client = await aiohttp_client(app)
    ids = []
    for _ in range(30):
        path = await create(client, 1)
        ids.append(path[1:])
        if len(ids) == 1:
            await receiver.wait_for("post-create", 1)  # the worker holds the first one
    samples = {}
    for family in text_string_to_metric_families(await (await client.get("/metrics")).text()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    assert samples[("tusserver_hook_dropped_total", (("event", "post-create"),))] == 24
    assert samples[("tusserver_hook_invocations_total", (("event", "post-create"), ("source", "http")))] == 30
    release.set()
    await receiver.wait_for("post-create", 6)  # the queue is empty once the sixth is taken
    last = (await create(client, 1))[1:]
    delivered = await receiver.wait_for("post-create", 7)
    assert [d["upload"]["id"] for d in delivered] == ids[:6] + [last]


async def test_shutdown_delivers_queued_events_within_hooks_timeout_then_stops(receiver):
    """close(grace) sends what is queued while the hook answers, and returns after
    `grace` when it does not, dropping the rest."""
    from tusserver.hooks import HookEvent, HookRequest
    from tusserver.info import UploadInfo
    from tusserver.webhook import Webhook

    def event(n: int) -> HookEvent:
        return HookEvent("post-finish", UploadInfo(f"u{n}", 1), HookRequest("PATCH", "/", None, {}))

    webhook = Webhook(hook_config(receiver, hooks_workers=2))
    await webhook.start()
    for n in range(6):
        assert webhook.notify(event(n), lambda: None)
    await webhook.close(PATIENCE)
    assert sorted(d["upload"]["id"] for d in receiver.deliveries) == [f"u{n}" for n in range(6)]

    never = asyncio.Event()

    async def hang(payload):
        await never.wait()

    receiver.answer = hang
    webhook = Webhook(hook_config(receiver, hooks_workers=1, hooks_timeout=60))
    await webhook.start()
    for n in range(3):
        webhook.notify(event(n), lambda: None)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await webhook.close(0.5)
    assert loop.time() - started < PATIENCE  # bounded by the grace, not by the hanging hook
    assert all(worker.done() for worker in webhook._workers) and webhook._workers == []
