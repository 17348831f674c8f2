"""Final (concatenated) uploads are completed here, off the request path.

A partial's finishing PATCH, the final's POST and a HEAD of an unfinished final only submit
the final; a fixed number of workers, each behind a bounded queue, check it and concatenate.
A check reads the final's `.info` and then only the partials past those it records as
finished, up to the first unfinished one: each partial is read about once while the final
waits for it, whatever the number of HEADs. The size limit that applied at the final's
creation is checked as each partial's length becomes known, before any byte is copied.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from . import errors
from . import storage_errors as storage
from .errors import ErrorKind, TusError
from .exchange import Exchange
from .info import FinalProgress, UploadInfo
from .locking import Locker
from .stores.base import ConcatenatingStore, Store

log = logging.getLogger("tusserver.finals")

WORKERS = 2  # finals concatenated at once by this instance
QUEUE_SIZE = 256  # finals waiting per worker; more are dropped (a later HEAD submits again)

OnFinished = Callable[[Exchange, UploadInfo], Awaitable[None]]


def failure(info: UploadInfo) -> ErrorKind | None:
    """Why a final upload can never complete, or None."""
    if info.progress is None or info.progress.failure is None:
        return None
    return errors.FINAL_FAILURES.get(info.progress.failure, errors.INTERNAL)


@dataclass
class _Job:
    final_id: str
    request: Exchange  # the request that caused the job: the post-finish event names it
    done: asyncio.Future[UploadInfo | None]


class FinalWorker:
    """Completes final uploads in the background, at most `workers` at a time."""

    def __init__(
        self,
        store: Store,
        locker: Locker,
        on_finished: OnFinished,
        *,
        workers: int = WORKERS,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        self.store = store
        self.locker = locker
        self.on_finished = on_finished
        self.workers = workers
        self.queue_size = queue_size
        self.dropped = 0
        self._queues: list[asyncio.Queue[_Job]] = []
        self._tasks: list[asyncio.Task] = []
        self._queued: dict[str, _Job] = {}  # submitted, not yet started: a second submit joins it

    async def start(self) -> None:
        self._queues = [asyncio.Queue(self.queue_size) for _ in range(self.workers)]
        self._tasks = [asyncio.create_task(self._work(queue)) for queue in self._queues]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for job in self._queued.values():
            job.done.cancel()
        self._queued.clear()

    def submit(self, final_id: str, request: Exchange) -> asyncio.Future[UploadInfo | None] | None:
        """Have the final checked (and concatenated once every partial is finished). Returns
        what the check returns, or None if the queue is full (the final waits for a later submit)."""
        job = self._queued.get(final_id)
        if job is not None:
            return job.done
        if not self._tasks:
            return None
        # One final always goes to the same worker, so an instance never checks it twice at once.
        queue = self._queues[hash(final_id) % len(self._queues)]
        job = _Job(final_id, request, asyncio.get_running_loop().create_future())
        job.done.add_done_callback(_consume)
        try:
            queue.put_nowait(job)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("final %s not checked now: %d finals wait already", final_id, queue.qsize())
            return None
        self._queued[final_id] = job
        return job.done

    async def drain(self) -> None:
        """Wait until every submitted final has been checked (for tests and shutdown)."""
        await asyncio.gather(*(queue.join() for queue in self._queues))

    async def _work(self, queue: asyncio.Queue[_Job]) -> None:
        while True:
            job = await queue.get()
            try:
                if self._queued.get(job.final_id) is job:
                    del self._queued[job.final_id]
                try:
                    result = await self.check(job.final_id, job.request)
                except asyncio.CancelledError:
                    job.done.cancel()
                    raise
                except Exception as exc:
                    if isinstance(exc, TusError):
                        log.warning("final %s: %s", job.final_id, exc.message)
                    else:
                        log.exception("final %s could not be completed", job.final_id)
                    if not job.done.done():
                        job.done.set_exception(exc)
                else:
                    if not job.done.done():
                        job.done.set_result(result)
            finally:
                queue.task_done()

    async def check(self, final_id: str, request: Exchange) -> UploadInfo | None:
        """Record the partials found finished; concatenate when all are; fail the final
        when they add up to more than its limit or one is gone. Idempotent. None: no such final."""
        async with self.locker.lock(final_id):
            try:
                final = await self.store.get_info(final_id)
            except storage.NotFound:
                return None
            if final.concat != "final" or final.finished or failure(final) is not None:
                return final
            progress = final.progress = final.progress or FinalProgress()
            found: dict[str, UploadInfo] = {}
            known = progress.ready
            while progress.ready < len(final.partials):
                partial = await self._partial(final.partials[progress.ready])
                if partial is None:
                    return await self._fail(final, errors.PARTIAL_GONE)
                if not partial.finished:
                    break
                found[partial.id] = partial
                progress.ready += 1
                progress.ready_bytes += partial.length or 0
                if progress.limit is not None and progress.ready_bytes > progress.limit:
                    return await self._fail(final, errors.FINAL_TOO_LARGE)
            if progress.ready < len(final.partials):
                if progress.ready != known:
                    await self.store.save_info(final)
                return final
            partials = []
            for partial_id in final.partials:  # those recorded earlier are read once more, here
                partial = found.get(partial_id) or await self._partial(partial_id)
                if partial is None or not partial.finished:
                    return await self._fail(final, errors.PARTIAL_GONE)
                partials.append(partial)
            total = sum(p.length or 0 for p in partials)
            if progress.limit is not None and total > progress.limit:
                return await self._fail(final, errors.FINAL_TOO_LARGE)
            assert isinstance(self.store, ConcatenatingStore)
            await self.store.concatenate(final, partials)
        await self.on_finished(request, final)
        return final

    async def _partial(self, partial_id: str) -> UploadInfo | None:
        try:
            return await self.store.get_info(partial_id)
        except storage.NotFound:
            return None

    async def _fail(self, final: UploadInfo, kind: ErrorKind) -> UploadInfo:
        assert final.progress is not None
        final.progress.failure = kind.code
        await self.store.save_info(final)
        log.info("final %s will not be completed: %s", final.id, kind.message)
        return final


def _consume(future: asyncio.Future) -> None:
    """Nobody may wait for a job: its failure is logged by the worker, not again by asyncio."""
    if not future.cancelled():
        future.exception()
