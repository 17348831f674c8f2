"""Expiration: remove expired uploads and storage debris, periodically in the server
and once from `tusserver cleanup` (for cron)."""

from __future__ import annotations

import asyncio
import logging
import time

from .config import Config
from .errors import TusError
from .locks import Locker, locker_from_config
from .stores.base import CorruptInfo, ExpiringStore, Store, TerminatingStore

log = logging.getLogger("tusserver.cleanup")


async def clean_expired(store: Store, config: Config, locker: Locker, now: float | None = None) -> int:
    """Terminate every expired upload that no request holds; abort orphans older than the
    expiry. Returns a count."""
    if not isinstance(store, ExpiringStore) or not isinstance(store, TerminatingStore):
        return 0
    now = time.time() if now is None else now
    removed = 0
    async for upload_id in store.list_uploads():
        try:
            info = await store.get_info(upload_id)
            if not info.expired(now, config.expire_finished):
                continue
            # Never ask a holder to let go: a request that holds (or awaits) the lock is
            # receiving bytes or about to, and the upload is alive. The next round decides.
            async with locker.try_lock(upload_id) as acquired:
                if not acquired:
                    continue
                info = await store.get_info(upload_id)  # a PATCH may have extended it meanwhile
                if info.expired(now, config.expire_finished):
                    await store.terminate(info)
                    removed += 1
        except CorruptInfo:
            continue  # the store logged it, naming the id; an operator must look at it
        except TusError:
            continue  # gone meanwhile, or the lock service is unreachable: the next round decides
    if config.expire_after is not None:
        removed += await store.clean_orphans(now - config.expire_after)
    return removed


async def clean_periodically(store: Store, config: Config, locker: Locker) -> None:
    while True:
        await asyncio.sleep(config.cleanup_interval)
        try:
            removed = await clean_expired(store, config, locker)
            if removed:
                log.info("removed %d expired uploads", removed)
        except Exception:  # keep the cleaner alive through a storage outage
            log.exception("expired-upload cleanup failed")


def run(config: Config) -> int:
    """One cleanup pass for `tusserver cleanup`; returns the number removed."""
    from .stores.factory import store_from_config

    async def once() -> int:
        store = store_from_config(config)
        # With Redis, skips uploads that a server instance holds. Without it, the expiry a
        # PATCH keeps moving forward in `.info` while it receives bytes protects them.
        locker = locker_from_config(config)
        await store.start()
        try:
            await locker.start()
            return await clean_expired(store, config, locker)
        finally:
            await locker.close()
            await store.close()

    return asyncio.run(once())
