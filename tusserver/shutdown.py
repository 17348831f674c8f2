"""Graceful shutdown. New uploads (POST, PATCH) are answered 503 with Retry-After, so a
load balancer or the client retries elsewhere or later; uploads in flight get
`shutdown_grace` seconds to finish; those still running are then stopped like an idle
client: they keep every byte received, flushed to the store, and answer 503."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from . import errors
from .errors import TusError
from .exchange import Exchange
from .handlers import stop_body

log = logging.getLogger("tusserver")

RETRY_AFTER = "2"  # seconds; another instance can take the upload at once
# Seconds stopped uploads get to flush what they received (S3 parts, `.part`) after the grace.
FLUSH_TIMEOUT = 10.0
UPLOAD_METHODS = ("POST", "PATCH", "PUT")  # PUT: a creation of the IETF draft


def shutting_down() -> TusError:
    return TusError(errors.SHUTTING_DOWN, headers={"Retry-After": RETRY_AFTER})


class Shutdown:
    """Tracks the uploads in flight of one tus app and drains them."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.draining = False
        self._uploads: dict[int, Exchange] = {}  # by id(): requests are not hashable
        self._idle = asyncio.Event()
        self._idle.set()

    @asynccontextmanager
    async def upload(self, request: Exchange) -> AsyncIterator[None]:
        """Wrap the handling of an upload request; refuses it once draining has begun."""
        if self.draining:
            raise shutting_down()
        self._uploads[id(request)] = request
        self._idle.clear()
        try:
            yield
        finally:
            del self._uploads[id(request)]
            if not self._uploads:
                self._idle.set()

    def stop_uploads(self) -> None:
        """Stop every upload in flight now; each keeps the bytes it received."""
        for request in list(self._uploads.values()):
            stop_body(request, shutting_down())

    async def drain(self) -> None:
        """Refuse new uploads, wait for those in flight, then stop and flush the rest.
        Only the first call drains; later ones return at once (a second signal exits)."""
        if self.draining:
            return
        self.draining = True
        if self._uploads:
            log.info("shutting down: waiting up to %gs for %d uploads", self.grace, len(self._uploads))
            if await self._wait_idle(self.grace):
                return
            log.info("shutting down: stopping %d uploads; their bytes are kept", len(self._uploads))
            self.stop_uploads()
            if not await self._wait_idle(FLUSH_TIMEOUT):
                log.warning("shutting down: %d uploads did not flush in time", len(self._uploads))

    async def _wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True


def drain_on_signals(shutdown: Shutdown, exit: Callable[[], None]) -> None:
    """On SIGTERM/SIGINT drain first, while still listening (so that new uploads get their
    503), then `exit` (the front door's own stop). A second signal cuts the grace short
    (uploads stop now, keeping their bytes); a third exits without waiting for them.
    Installs on the running loop."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task] = set()
    signals = 0

    async def drain_then_exit() -> None:
        await shutdown.drain()
        loop.call_soon(exit)

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            tasks.add(loop.create_task(drain_then_exit()))
        elif signals == 2:
            log.info("shutting down now: stopping the uploads in flight")
            shutdown.stop_uploads()
        else:
            exit()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)  # replaces the front door's immediate stop
