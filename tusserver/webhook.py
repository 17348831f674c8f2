"""The HTTP webhook: each hook event POSTed as JSON to `hooks_url`. pre-* events wait
for the answer (a non-2xx answer rejects the request); post-* events are queued and sent
in the background, a bounded number at a time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
from yarl import URL

from . import errors
from .config import Config
from .errors import TusError
from .hooks import HookEvent, HookRejected, HookResult, clean_message

log = logging.getLogger("tusserver.hooks")

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
    "server_metadata": {...}, "storage": {"key": "...", "bucket": "...", "cache_control":
    "...", "storage_class": "...", "tags": {...}}}`, each optional. Values of the wrong
    type are refused by hooks.checked_changes."""
    result = HookResult()
    storage = document.get("storage")
    if storage is not None:
        if not isinstance(storage, dict):
            log.error('pre-create webhook answered a "storage" that is not an object')
            raise TusError(errors.HOOK_FAILED)
        result.storage_key = storage.get("key")
        for name in ("bucket", "cache_control", "storage_class", "tags"):
            setattr(result, name, storage.get(name))
    if document.get("metadata") is not None:
        result.metadata = document["metadata"]
    if document.get("upload_id") is not None:
        result.upload_id = document["upload_id"]
    if document.get("owner") is not None:
        result.owner = document["owner"]
    if document.get("server_metadata") is not None:
        result.server_metadata = document["server_metadata"]
    return result


