"""Hooks: events in an upload's life, Python callbacks for embedders, and the runner that
calls them and the HTTP webhook (the client is in webhook.py).

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
import copy
import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import errors, protocol
from .errors import TusError
from .exchange import Exchange
from .info import UploadInfo
from .metrics import Metrics
from .placement import check_key
from .stores.owner_index import MAX_OWNER, is_valid_owner

if TYPE_CHECKING:
    from .webhook import Webhook

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
    replaces it), `owner` (instead of the token's `sub`), `upload_id` (the new upload's
    id, which its URL carries), and where its bytes land: `storage_key` (relative to
    file_dir or s3_prefix, instead of storage_key_template's), `bucket` (one of
    s3_allowed_buckets) and the S3 object's `cache_control`, `storage_class` and `tags`.
    post-finish: `headers` added to the response that finished the upload."""

    metadata: dict[str, str | None] | None = None
    upload_id: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    owner: str | None = None
    server_metadata: dict[str, str | None] | None = None
    storage_key: str | None = None
    bucket: str | None = None
    cache_control: str | None = None
    storage_class: str | None = None
    tags: dict[str, str] | None = None

    def merge(self, other: HookResult) -> None:
        if other.metadata is not None:
            self.metadata = other.metadata
        if other.upload_id is not None:
            self.upload_id = other.upload_id
        if other.owner is not None:
            self.owner = other.owner
        if other.server_metadata is not None:
            self.server_metadata = other.server_metadata
        for name in ("storage_key", "bucket", "cache_control", "storage_class", "tags"):
            if getattr(other, name) is not None:
                setattr(self, name, getattr(other, name))
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
    if result.storage_key is not None and (problem := check_key(result.storage_key)) is not None:
        log.error("pre-create hook chose an invalid storage key %r: %s", result.storage_key, problem)
        raise TusError(errors.HOOK_FAILED)
    for name in ("bucket", "cache_control", "storage_class"):
        if getattr(result, name) is not None and not isinstance(getattr(result, name), str):
            log.error("pre-create hook returned a %s that is not a string", name)
            raise TusError(errors.HOOK_FAILED)
    if result.tags is not None and not (
        isinstance(result.tags, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in result.tags.items())
    ):
        log.error("pre-create hook returned tags that are not a dict of strings")
        raise TusError(errors.HOOK_FAILED)
    if result.owner is not None and not is_valid_owner(result.owner):
        log.error("pre-create hook chose an invalid owner (a printable string of 1 to %d characters)", MAX_OWNER)
        raise TusError(errors.HOOK_FAILED)
    return result
