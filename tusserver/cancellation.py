"""Cancellation that waits for the work it interrupts.

A cancelled request must not release an upload's lock while store work it started (a
thread writing the data file, S3 parts in flight) still runs: the next request would
meet that work half done. `await_to_completion` lets the work end first."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def await_to_completion(work: Awaitable[T], on_cancel: Callable[[], None] | None = None) -> T:
    """Await `work` to its end even when the caller is cancelled meanwhile, any number of
    times; then raise CancelledError if it was. `on_cancel` runs at the first cancel, e.g.
    to tell the work to wrap up."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise  # the work itself was cancelled (or raised CancelledError)
            if not cancelled and on_cancel is not None:
                on_cancel()
            cancelled = True
            continue
        except BaseException as exc:
            if cancelled:
                raise asyncio.CancelledError() from exc
            raise
        if cancelled:
            raise asyncio.CancelledError()
        return result
