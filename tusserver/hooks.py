"""Hooks: events in an upload's life, Python callbacks for embedders, and the HTTP webhook.

Events, in order: pre-create, post-create, post-receive (progress, throttled),
pre-finish, post-finish; pre-terminate, post-terminate around DELETE; pre-get before
a download; pre-access (the authorize hook) before HEAD, PATCH, DELETE and GET of an upload,
with the `action`, before the upload's lock is taken. A pre-* hook may reject the request by
raising `HookRejected` (or, as a webhook, by answering 4xx with a JSON `message`); the client
then sees its status and message. A webhook's 5xx is answered 503 (the hook is unavailable).
post-* hooks only observe: their failures are logged and never fail the request.
They run after the request released the upload's lock, so a finishing PATCH fires its
pre-finish before its last post-receive. Python callbacks get `hooks_timeout` seconds,
like the webhook; sync ones run in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

from . import errors, protocol
from .config import Config
from .errors import TusError
from .exchange import Exchange
from .info import UploadInfo
from .metrics import Metrics
from .stores.owner_index import MAX_OWNER, is_valid_owner

log = logging.getLogger("tusserver.hooks")

PRE_CREATE = "pre-create"
POST_CREATE = "post-create"
POST_RECEIVE = "post-receive"
PRE_FINISH = "pre-finish"
POST_FINISH = "post-finish"
PRE_TERMINATE = "pre-terminate"
POST_TERMINATE = "post-terminate"
PRE_GET = "pre-get"
PRE_ACCESS = "pre-access"
EVENTS = (
    PRE_CREATE,
    POST_CREATE,
    POST_RECEIVE,
    PRE_FINISH,
    POST_FINISH,
    PRE_TERMINATE,
    POST_TERMINATE,
    PRE_GET,
    PRE_ACCESS,
)
# What a pre-access event asks about: the request's verb on an existing upload.
ACTIONS = ("head", "patch", "delete", "get")

MAX_MESSAGE = 200  # characters of a rejection message that reach the client
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def clean_message(message: str) -> str:
    """One line, printable, at most MAX_MESSAGE characters: safe as a response body."""
    text = _CONTROL.sub(" ", str(message)).strip()
    return text[: MAX_MESSAGE - 3] + "..." if len(text) > MAX_MESSAGE else text


def clamp_status(status: int) -> int:
    return min(max(int(status), 400), 599)


class HookRejected(TusError):
    """Raised by a pre-* hook to refuse the request; the client gets `status` (kept
    within 400-599) and `message` (one line, at most 200 characters)."""

    def __init__(self, status: int = 403, message: str = "", *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(
            errors.HOOK_REJECTED, clean_message(message) or None, status=clamp_status(status), headers=headers
        )

    @property
    def message(self) -> str:
        return self.detail or self.kind.message


@dataclass(frozen=True)
class HookRequest:
    """The HTTP request that caused an event."""

    method: str
    uri: str
    remote_addr: str | None
    headers: Mapping[str, str]  # all of them for Python hooks; webhooks get hooks_forward_headers
    subject: str | None = None  # `sub` of the bearer token, when tokens are on

    @classmethod
    def from_request(cls, request: Exchange) -> HookRequest:
        return cls(
            method=request.method,
            uri=str(request.url.without_query_params("token")),  # a download link's token stays here
            remote_addr=request.remote,
            headers=request.headers,
            subject=request.auth_subject,
        )


@dataclass(frozen=True)
class HookEvent:
    """What a hook receives. `upload` is a copy: change it through `HookResult`.
    At pre-create the upload is not stored yet, so `upload.storage` is empty.
    `action` (pre-access only): "head", "patch", "delete" or "get"."""

    type: str
    upload: UploadInfo
    request: HookRequest
    action: str | None = None

    def to_json(self, forward_headers: list[str]) -> dict[str, Any]:
        """The webhook payload."""
        upload = self.upload
        forwarded = {}
        for name in forward_headers:
            if name in self.request.headers:
                forwarded[name] = self.request.headers[name]
        return {
            "type": self.type,
            "action": self.action,
            "upload": {
                "id": upload.id,
                "size": upload.length,
                "size_is_deferred": upload.length is None,
                "offset": upload.offset,
                "metadata": {k: metadata_text(v) for k, v in upload.metadata.items()},
                "is_partial": upload.concat == "partial",
                "is_final": upload.concat == "final",
                "partial_uploads": list(upload.partials),
                "finished": upload.finished,
                "created": upload.created,
                "expires": upload.expires,
                "storage": {k: v for k, v in upload.storage.items() if k in ("type", "path", "bucket", "key")},
                "owner": upload.owner,
                "server_metadata": {k: metadata_text(v) for k, v in upload.server_metadata.items()},
            },
            "request": {
                "method": self.request.method,
                "uri": self.request.uri,
                "remote_addr": self.request.remote_addr,
                "headers": forwarded,
                "subject": self.request.subject,
            },
        }


def metadata_text(value: str | None) -> str | None:
    """A metadata value as JSON text."""
    # Metadata bytes that are not UTF-8 are kept as surrogates; JSON receivers want text.
    return None if value is None else value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


@dataclass
class HookResult:
    """What a hook may change. pre-create: `metadata` (the client's, which HEAD echoes;
    replaces it), `server_metadata` (kept for the server and hooks, never sent to clients;
    replaces it), `owner` (instead of the token's `sub`) and `upload_id` (the new upload's
    id, which is also its storage key: `<file_dir>/<id>`, `<s3_prefix><id>`).
    post-finish: `headers` added to the response that finished the upload."""

    metadata: dict[str, str | None] | None = None
    upload_id: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    owner: str | None = None
    server_metadata: dict[str, str | None] | None = None

    def merge(self, other: HookResult) -> None:
        if other.metadata is not None:
            self.metadata = other.metadata
        if other.upload_id is not None:
            self.upload_id = other.upload_id
        if other.owner is not None:
            self.owner = other.owner
        if other.server_metadata is not None:
            self.server_metadata = other.server_metadata
        self.headers.update(other.headers)


Callback = Callable[[HookEvent], "HookResult | None | Awaitable[HookResult | None]"]


class Hooks:
    """Python callbacks per event, for embedding: `hooks.on("post-finish", fn)`, or
    `@hooks.on("pre-create")` as a decorator. Callbacks may be sync or async."""

    def __init__(self) -> None:
        self._callbacks: dict[str, list[Callback]] = {event: [] for event in EVENTS}

    def on(self, event: str, callback: Callback | None = None) -> Any:
        if event not in self._callbacks:
            raise ValueError(f"unknown hook event {event!r}; expected one of {', '.join(EVENTS)}")
        if callback is None:

            def register(fn: Callback) -> Callback:
                self._callbacks[event].append(fn)
                return fn

            return register
        self._callbacks[event].append(callback)
        return callback

    def callbacks(self, event: str) -> list[Callback]:
        return self._callbacks[event]


MAX_REPLY = 64 * 1024  # bytes of a webhook reply that are read


class Webhook:
    """Sends events as JSON POSTs to `config.hooks_url` over one ClientSession.

    pre-* events wait for the answer (a non-2xx answer rejects the request); post-*
    events go through a queue of `hooks_queue_size` to `hooks_workers` workers, which
    retry with exponential backoff. A full queue drops the event (a slow or down hook
    service must not make the server hold events, payloads and tasks without bound)."""

    def __init__(self, config: Config) -> None:
        assert config.hooks_url is not None
        self.url = config.hooks_url
        self.where = str(URL(config.hooks_url).with_user(None).with_query(None))  # for logs: no credentials
        self.events = frozenset(config.hooks_events)
        self.forward_headers = list(config.hooks_forward_headers)
        self.timeout = aiohttp.ClientTimeout(total=config.hooks_timeout)
        self.retries = config.hooks_retries
        self.backoff = config.hooks_backoff
        self.session: aiohttp.ClientSession | None = None
        self._queue: asyncio.Queue[tuple[HookEvent, Callable[[], None]]] = asyncio.Queue(config.hooks_queue_size)
        self._worker_count = config.hooks_workers
        self._workers: list[asyncio.Task] = []
        self._dropping = False  # warn once per spell of drops, not once per event

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(timeout=self.timeout)
        self._workers = [asyncio.create_task(self._work()) for _ in range(self._worker_count)]

    async def close(self, grace: float) -> None:
        """Give queued and running deliveries `grace` seconds, then cancel the rest."""
        if self._workers:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._queue.join(), grace)
            for worker in self._workers:
                worker.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
            self._workers = []
            if self._queue.qsize():
                log.warning("%d post-* webhook events not delivered at shutdown", self._queue.qsize())
        if self.session is not None:
            await self.session.close()

    async def _post(self, event: HookEvent) -> tuple[int, bytes, bool]:
        """The reply's status, its body (at most MAX_REPLY bytes of it), and whether
        that is the whole body."""
        assert self.session is not None, "the webhook is used before the app started"
        payload = event.to_json(self.forward_headers)
        # A redirect is an answer like any other: following it would send the payload elsewhere.
        async with self.session.post(self.url, json=payload, allow_redirects=False) as response:
            # read(n) returns whatever has arrived, not n bytes: read to EOF, within the bound.
            body = bytearray()
            async for chunk in response.content.iter_any():
                body += chunk
                if len(body) > MAX_REPLY:
                    return response.status, bytes(body[:MAX_REPLY]), False
            return response.status, bytes(body), True

    async def call(self, event: HookEvent) -> HookResult:
        """Deliver a pre-* event and return its changes; raise HookRejected on non-2xx."""
        try:
            status, body, whole = await self._post(event)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            log.warning("%s webhook to %s failed: %s", event.type, self.where, exc or type(exc).__name__)
            raise TusError(errors.HOOK_UNAVAILABLE, headers={"Retry-After": "5"}) from None
        accepted = 200 <= status < 300
        if accepted and not whole:
            # Parsing a part could drop the hook's upload_id or metadata: fail instead.
            log.warning("%s webhook to %s replied with more than %d bytes", event.type, self.where, MAX_REPLY)
            raise TusError(errors.HOOK_FAILED, "the hook's reply is too large")
        document = _json_object(body) if whole else None
        if status >= 500:
            # The hook service's own failure (a crash page, its proxy's 502): the client
            # learns it is unavailable, never what it said.
            reply = clean_message(body.decode("utf-8", "replace"))
            log.warning("%s webhook to %s answered %d: %s", event.type, self.where, status, reply)
            raise TusError(errors.HOOK_UNAVAILABLE, headers={"Retry-After": "5"})
        if not accepted:
            # Only a 4xx's explicit JSON message is meant for the client.
            message = document.get("message") if document and 400 <= status < 500 else None
            raise HookRejected(status, message if isinstance(message, str) else "")
        return result_from_json(document or {})

    def notify(self, event: HookEvent, on_error: Callable[[], None]) -> bool:
        """Queue a post-* event for delivery in the background; False if the queue is
        full and the event was dropped."""
        try:
            self._queue.put_nowait((event, on_error))
        except asyncio.QueueFull:
            if not self._dropping:
                log.warning(
                    "webhook queue full (%d events): dropping post-* events until %s catches up",
                    self._queue.maxsize,
                    self.where,
                )
            self._dropping = True
            return False
        self._dropping = False
        return True

    async def _work(self) -> None:
        while True:
            event, on_error = await self._queue.get()
            try:
                await self._deliver(event, on_error)
            except Exception:  # a worker lives as long as the webhook
                log.exception("%s webhook for %s failed", event.type, event.upload.id)
            finally:
                self._queue.task_done()

    async def _deliver(self, event: HookEvent, on_error: Callable[[], None]) -> None:
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                status, _, _ = await self._post(event)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                problem = str(exc) or type(exc).__name__
            else:
                if status < 300:
                    return
                problem = f"status {status}"
                if 400 <= status < 500 and status != 429:
                    break  # the receiver refuses this event; sending it again will not help
            on_error()
            log.warning("%s webhook for %s failed (attempt %d): %s", event.type, event.upload.id, attempt + 1, problem)
        log.error("%s webhook for %s given up", event.type, event.upload.id)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(body)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def result_from_json(document: dict[str, Any]) -> HookResult:
    """A webhook's 2xx answer: `{"upload_id": "...", "metadata": {...}, "owner": "...",
    "server_metadata": {...}}`, each optional."""
    result = HookResult()
    if document.get("metadata") is not None:
        result.metadata = document["metadata"]
    if document.get("upload_id") is not None:
        result.upload_id = document["upload_id"]
    if document.get("owner") is not None:
        result.owner = document["owner"]
    if document.get("server_metadata") is not None:
        result.server_metadata = document["server_metadata"]
    return result


class HookRunner:
    """Runs an event through the Python callbacks, then the webhook; counts both."""

    def __init__(
        self,
        hooks: Hooks | None,
        webhook: Webhook | None,
        metrics: Metrics | None = None,
        *,
        timeout: float | None = None,
    ) -> None:
        self.hooks = hooks or Hooks()
        self.webhook = webhook
        self.metrics = metrics
        self.timeout = timeout  # seconds per Python callback (`hooks_timeout`, as for the webhook)

    def wants(self, event: str) -> bool:
        return bool(self.hooks.callbacks(event)) or (self.webhook is not None and event in self.webhook.events)

    def _event(self, name: str, request: Exchange, info: UploadInfo, action: str | None = None) -> HookEvent:
        return HookEvent(name, copy.deepcopy(info), HookRequest.from_request(request), action)

    async def pre(self, name: str, request: Exchange, info: UploadInfo, *, action: str | None = None) -> HookResult:
        """Run a pre-* event; raises HookRejected (or a TusError) to refuse the request."""
        result = HookResult()
        if not self.wants(name):
            return result
        event = self._event(name, request, info, action)
        await self._run_callbacks(event, result, pre=True)
        if self.webhook is not None and name in self.webhook.events:
            self._count(name, "http")
            try:
                result.merge(await self.webhook.call(event))
            except HookRejected:
                raise
            except TusError:
                self._count_error(name, "http")
                raise
        return result

    async def post(self, name: str, request: Exchange, info: UploadInfo) -> HookResult:
        """Run a post-* event. Never raises: failures are logged."""
        result = HookResult()
        if self.metrics is not None:
            self.metrics.upload_event(name)
        if not self.wants(name):
            return result
        event = self._event(name, request, info)
        await self._run_callbacks(event, result, pre=False)
        if self.webhook is not None and name in self.webhook.events:
            self._count(name, "http")
            if not self.webhook.notify(event, lambda: self._count_error(name, "http")):
                if self.metrics is not None:
                    self.metrics.hook_dropped.labels(name).inc()
        return result

    async def _run_callbacks(self, event: HookEvent, result: HookResult, *, pre: bool) -> None:
        """The Python callbacks, in order. A pre-* callback's TusError (a rejection) or
        failure stops the request; a post-* callback's failure is only logged."""
        for callback in self.hooks.callbacks(event.type):
            self._count(event.type, "python")
            try:
                result.merge(_checked(await self._within(_call(callback, event))))
            except _TimedOut:
                self._count_error(event.type, "python")
                log.error("%s hook %s did not return within %gs", event.type, _name(callback), self.timeout)
                if pre:
                    raise TusError(errors.HOOK_UNAVAILABLE, headers={"Retry-After": "5"}) from None
            except Exception as exc:
                if pre and isinstance(exc, TusError):
                    raise  # the hook's decision, not its failure
                self._count_error(event.type, "python")
                log.exception("%s hook %s failed", event.type, _name(callback))
                if pre:
                    raise TusError(errors.HOOK_FAILED) from None

    async def _within(self, work: Awaitable[Any]) -> Any:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            return await asyncio.wait_for(work, self.timeout)
        except asyncio.TimeoutError:
            if self.timeout is not None and loop.time() - started >= self.timeout:
                raise _TimedOut from None
            raise  # the callback's own, e.g. from a client it uses: its failure

    def _count(self, event: str, source: str) -> None:
        if self.metrics is not None:
            self.metrics.hook_invocations.labels(event, source).inc()

    def _count_error(self, event: str, source: str) -> None:
        if self.metrics is not None:
            self.metrics.hook_errors.labels(event, source).inc()


class _TimedOut(Exception):
    """A Python callback ran past the runner's timeout."""


async def _call(callback: Callback, event: HookEvent) -> Any:
    if inspect.iscoroutinefunction(callback):
        return await callback(event)
    # A sync callback may block (an HTTP call, a database): not on the event loop. On a
    # timeout its thread runs on, unseen; threads cannot be stopped.
    value = await asyncio.to_thread(callback, event)
    if inspect.isawaitable(value):
        value = await value
    return value


def _checked(value: Any) -> HookResult:
    if value is None:
        return HookResult()
    if not isinstance(value, HookResult):
        raise TypeError(f"a hook must return a HookResult or None, not {type(value).__name__}")
    return value


def _name(callback: Callback) -> str:
    return getattr(callback, "__qualname__", repr(callback))


def checked_changes(result: HookResult) -> HookResult:
    """Validate what a pre-create hook asks for. A bad id or metadata is the hook's bug,
    not the client's: it is logged and answered 500."""
    if result.upload_id is not None and not (
        isinstance(result.upload_id, str) and protocol.is_valid_upload_id(result.upload_id)
    ):
        log.error("pre-create hook chose an invalid upload id %r", result.upload_id)
        raise TusError(errors.HOOK_FAILED)
    if result.metadata is not None and not protocol.is_valid_metadata(result.metadata):
        log.error("pre-create hook returned invalid metadata (keys must be printable ASCII, values str or None)")
        raise TusError(errors.HOOK_FAILED)
    if result.server_metadata is not None and not protocol.is_valid_metadata(result.server_metadata):
        log.error("pre-create hook returned invalid server_metadata (keys printable ASCII, values str or None)")
        raise TusError(errors.HOOK_FAILED)
    if result.owner is not None and not is_valid_owner(result.owner):
        log.error("pre-create hook chose an invalid owner (a printable string of 1 to %d characters)", MAX_OWNER)
        raise TusError(errors.HOOK_FAILED)
    return result
