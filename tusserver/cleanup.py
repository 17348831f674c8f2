"""Expiration: remove expired uploads and storage debris, periodically in the server
and once from `tusserver cleanup` (for cron).

A pass reads only uploads that can have expired: it lists the store's index of
unfinished uploads (finished ones never expire unless `expire_finished`) and skips
entries younger than `expire_after` without reading them. With Redis, one instance
per `cleanup_interval` runs a pass (a lease), and one per hour at most sweeps orphans.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from . import storage_errors as storage
from .config import Config
from .errors import TusError
from .locking import Locker, locker_from_config
from .stores.base import CorruptInfo, ExpiringStore, Store, TerminatingStore

log = logging.getLogger("tusserver.cleanup")

# Orphans are removed only once older than expire_after: sweeping for them (a listing of
# every key) more often than this gains nothing.
MAX_ORPHAN_SWEEP_INTERVAL = 3600.0
# A lease a little shorter than its period, so that an instance whose timer fires a
# moment early does not skip its turn.
LEASE_SHARE = 0.9


async def clean_expired(
    store: Store, config: Config, locker: Locker, now: float | None = None, *, orphans: bool = True
) -> int:
    """Terminate every expired upload that no request holds; with `orphans`, also remove
    debris older than the expiry. Returns a count."""
    if not isinstance(store, ExpiringStore) or not isinstance(store, TerminatingStore):
        return 0
    now = time.time() if now is None else now
    expire_after = config.expire_after or 0.0
    if config.expire_finished:
        candidates = store.list_uploads()
    else:
        # An index entry is made at creation, and an upload expires expire_after after
        # its creation at the earliest: younger entries are skipped unread.
        candidates = store.list_unfinished(now - expire_after)
    removed = 0
    async for upload_id in candidates:
        try:
            info = await store.peek_info(upload_id)
            if info.finished and not config.expire_finished:
                await store.forget_unfinished(upload_id)  # a finish the index missed
                continue
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
        except storage.NotFound:
            if not config.expire_finished:
                with contextlib.suppress(TusError, storage.StorageError):
                    await store.forget_unfinished(upload_id)  # removed without its entry
            continue  # gone: its entry goes with it
        except (TusError, storage.StorageError):
            continue  # the store or the lock service is unreachable: the next round decides
    if orphans and config.expire_after is not None:
        removed += await store.clean_orphans(now - config.expire_after)
    return removed


def orphan_sweep_interval(config: Config) -> float:
    return max(config.cleanup_interval, min(config.expire_after or 0.0, MAX_ORPHAN_SWEEP_INTERVAL))


async def clean_if_due(store: Store, config: Config, locker: Locker) -> int | None:
    """One pass, if no instance sharing `locker` ran one within `cleanup_interval`;
    None when another did."""
    if not await locker.take_lease("cleanup", config.cleanup_interval * LEASE_SHARE):
        return None
    orphans = await locker.take_lease("orphans", orphan_sweep_interval(config) * LEASE_SHARE)
    return await clean_expired(store, config, locker, orphans=orphans)


async def clean_periodically(store: Store, config: Config, locker: Locker) -> None:
    while True:
        await asyncio.sleep(config.cleanup_interval)
        try:
            removed = await clean_if_due(store, config, locker)
            if removed:
                log.info("removed %d expired uploads", removed)
        except Exception:  # keep the cleaner alive through a storage outage
            log.exception("expired-upload cleanup failed")


def run(config: Config) -> int:
    """One cleanup pass for `tusserver cleanup`; returns the number removed. It runs
    whatever the servers' leases say: cron asked for it."""
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
