"""Per-upload locks shared by several server instances, kept in Redis.

A lock is a key holding its holder's random token, set with a lease that the holder
renews while it works, so the lock of a crashed holder expires by itself. Renewal and
release are Lua scripts that check the token first: nobody extends or frees a lock that
has passed to someone else. A request that finds the lock held publishes a release
request naming the holder's token; the instance running that request stops its body
(the bytes received are kept) and releases. Releases are published too, so waiters
retry at once; between them a waiter polls with backoff and asks each holder once
(again only after a long pause, in case the request was lost), so a blocked request
costs a handful of Redis commands, not one broadcast per poll.

Needs the optional dependency: `pip install 'tusserver[redis]'`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from .. import errors
from ..cancellation import await_to_completion
from ..config import Config
from ..errors import TusError
from .base import ReleaseCallback, holding_version

log = logging.getLogger("tusserver.locks")

# A waiter retries without news (e.g. while a crashed holder's lease runs out) first after
# FIRST_POLL seconds, then twice as long each time, at most every MAX_POLL seconds.
FIRST_POLL = 0.1
MAX_POLL = 1.0
# A release request can be lost (pub/sub reconnecting); the same holder is asked again only
# after this long, then twice as long each time.
REPEAT_RELEASE_REQUEST = 1.0

# 1: acquired. Otherwise the holder's token (0 if the key vanished meanwhile: retry).
_ACQUIRE = """
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return redis.call('get', KEYS[1]) or 0
"""
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
# ARGV: token, upload id, the channel that tells waiters the lock is free.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('del', KEYS[1])
  redis.call('publish', ARGV[3], ARGV[2])
  return 1
end
return 0
"""


# Versions (see locks.py): one counter for every upload, so a number is never given twice,
# and a key per upload with its number. KEYS: counter, the upload's version. ARGV: its TTL (ms).
# Returns {the number before (0: none), the new one}.
_BUMP = """
local before = redis.call('get', KEYS[2]) or '0'
local now = redis.call('incr', KEYS[1])
redis.call('set', KEYS[2], now, 'PX', ARGV[1])
return {tonumber(before), now}
"""
# KEYS: the upload's lock, the upload's version. -1 while the lock is held; 0 when the upload
# has no version (not locked within VERSION_TTL). Asking makes no key, and a HEAD of a free
# upload takes no lock, so HEADs of made-up ids cost Redis no memory.
_VERSION = """
if redis.call('exists', KEYS[1]) == 1 then return -1 end
return tonumber(redis.call('get', KEYS[2]) or '0')
"""
REDIS_CONNECTIONS = 64  # per instance; a command holds one only while it runs
REDIS_POOL_WAIT = 5.0  # seconds a command may wait for one, then the request gets 503
# Longer than a store trusts a kept state (KNOWN_STATE_SECONDS): an expired version only
# turns states into misses.
VERSION_TTL = 3600.0


@dataclass
class _Holder:
    upload_id: str
    on_release: ReleaseCallback | None

    def ask_to_release(self) -> None:
        if self.on_release is not None:
            self.on_release()


class RedisLocker:
    """Locks for N server instances sharing one Redis. Same interface as MemoryLocker."""

    def __init__(
        self,
        redis: Redis | str,
        *,
        timeout: float = 3.0,
        lease: float = 10.0,
        prefix: str = "tusserver",
    ) -> None:
        if isinstance(redis, str):
            # redis-py's default pool fails a command at once (MaxConnectionsError) when its 100
            # connections are in use: 256 HEADs at once got 503s. This one waits for a connection.
            pool = BlockingConnectionPool.from_url(
                redis, max_connections=REDIS_CONNECTIONS, timeout=REDIS_POOL_WAIT, socket_connect_timeout=5
            )
            self.redis = Redis.from_pool(pool)
        else:
            self.redis = redis
        self.timeout = timeout
        self.lease = lease
        self.prefix = prefix
        self._release_channel = f"{prefix}:release"  # message: the holder's token
        self._unlocked_channel = f"{prefix}:unlocked"  # message: the upload id
        self._acquire = self.redis.register_script(_ACQUIRE)
        self._renew = self.redis.register_script(_RENEW)
        self._release = self.redis.register_script(_RELEASE)
        self._bump = self.redis.register_script(_BUMP)
        self._version = self.redis.register_script(_VERSION)
        self._counter = f"{prefix}:versions"
        self._held: dict[str, _Holder] = {}  # by token, for release requests
        self._waiters: dict[str, set[asyncio.Event]] = {}  # by upload id
        self._pubsub: PubSub | None = None
        self._listener: asyncio.Task | None = None
        self._starting: asyncio.Lock | None = None

    @classmethod
    def from_config(cls, config: Config) -> RedisLocker:
        assert config.redis_url is not None
        return cls(config.redis_url, timeout=config.lock_timeout, lease=config.lock_lease, prefix=config.redis_prefix)

    def _key(self, upload_id: str) -> str:
        return f"{self.prefix}:lock:{upload_id}"

    async def start(self) -> None:
        """Subscribe to release requests. `lock` calls it when needed."""
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._listener is not None:
                return
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._release_channel, self._unlocked_channel)
            except RedisError as exc:
                await pubsub.aclose()
                raise TusError(errors.STORAGE_UNAVAILABLE, "lock service unreachable") from exc
            self._pubsub = pubsub
            self._listener = asyncio.create_task(self._listen(pubsub))

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            try:
                await self._listener
            except asyncio.CancelledError:
                pass
            self._listener = None
        if self._pubsub is not None:
            await self._pubsub.aclose()
            self._pubsub = None
        await self.redis.aclose()

    async def _listen(self, pubsub) -> None:
        while True:
            try:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            except RedisError as exc:
                # redis-py reconnects and resubscribes on the next call. A release request
                # lost meanwhile is sent again by its waiter on its next attempt.
                log.warning("lock pub/sub connection failed (%s); reconnecting", type(exc).__name__)
                await asyncio.sleep(0.5)
                continue
            if message is None or message.get("type") != "message":
                continue
            self._dispatch(message["channel"].decode(), message["data"].decode())

    def _dispatch(self, channel: str, data: str) -> None:
        if channel == self._release_channel:
            holder = self._held.get(data)
            if holder is not None:
                try:
                    holder.ask_to_release()
                except Exception:  # a broken callback must not stop release requests for others
                    log.exception("release callback failed for upload %s", holder.upload_id)
        elif channel == self._unlocked_channel:
            for event in self._waiters.get(data, ()):
                event.set()

    @asynccontextmanager
    async def lock(self, upload_id: str, on_release: ReleaseCallback | None = None) -> AsyncIterator[None]:
        if self._listener is None:
            await self.start()
        token = secrets.token_hex(16)
        key = self._key(upload_id)
        await self._wait_for(upload_id, key, token)
        async with self._holding(upload_id, key, token, on_release):
            yield

    @asynccontextmanager
    async def try_lock(self, upload_id: str) -> AsyncIterator[bool]:
        # No listener needed: this never waits for a release, and has nothing to let go of.
        token = secrets.token_hex(16)
        key = self._key(upload_id)
        try:
            acquired = await self._try_acquire(upload_id, key, token) == 1
        except RedisError as exc:
            raise TusError(errors.STORAGE_UNAVAILABLE, "lock service unreachable") from exc
        if not acquired:
            yield False
            return
        async with self._holding(upload_id, key, token, None):
            yield True

    def _version_key(self, upload_id: str) -> str:
        return f"{self.prefix}:version:{upload_id}"

    async def version(self, upload_id: str) -> int | None:
        try:
            now = await self._version(keys=[self._key(upload_id), self._version_key(upload_id)])
        except RedisError:
            return None  # unknown: the request takes the lock, which says what is wrong
        return None if int(now) < 0 else int(now)

    async def take_lease(self, name: str, seconds: float) -> bool:
        try:
            taken = await self.redis.set(
                f"{self.prefix}:lease:{name}", secrets.token_hex(8), nx=True, px=max(1, int(seconds * 1000))
            )
        except RedisError as exc:
            raise TusError(errors.STORAGE_UNAVAILABLE, "lock service unreachable") from exc
        return bool(taken)

    @asynccontextmanager
    async def _holding(
        self, upload_id: str, key: str, token: str, on_release: ReleaseCallback | None
    ) -> AsyncIterator[None]:
        """Keep the acquired lock's lease renewed for the block, then release it."""
        holder = _Holder(upload_id, on_release)
        self._held[token] = holder
        renewer = asyncio.create_task(self._keep(key, token, holder))
        try:
            # Before any change: states other instances keep of this upload are stale from now.
            try:
                before, now = await self._bump(
                    keys=[self._counter, self._version_key(upload_id)], args=[int(VERSION_TTL * 1000)]
                )
            except RedisError as exc:
                raise TusError(errors.STORAGE_UNAVAILABLE, "lock service unreachable") from exc
            async with holding_version(upload_id, int(before) or None, int(now)):
                yield
        finally:
            renewer.cancel()
            del self._held[token]
            try:
                # Shielded: a cancelled request still frees its lock now, not at lease end.
                await asyncio.shield(self._release(keys=[key], args=[token, upload_id, self._unlocked_channel]))
            except RedisError:
                log.warning("could not release the lock on %s; it expires with its lease", upload_id)

    async def _try_acquire(self, upload_id: str, key: str, token: str) -> int | bytes | str:
        """One SET NX attempt: 1 when acquired, else the holder's token (0: none). A cancel
        that lands after Redis ran the SET but before its answer came must not leave our
        token set with nobody to release it (every request would get 423 for a whole
        lease): the attempt is awaited to its end, and released if it acquired."""
        attempt = asyncio.ensure_future(self._acquire(keys=[key], args=[token, self._lease_ms]))
        try:
            return await await_to_completion(attempt)
        except asyncio.CancelledError:
            if not attempt.cancelled() and attempt.exception() is None and attempt.result() == 1:
                with contextlib.suppress(RedisError):
                    await await_to_completion(
                        self._release(keys=[key], args=[token, upload_id, self._unlocked_channel])
                    )
            raise

    async def _wait_for(self, upload_id: str, key: str, token: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        wake = asyncio.Event()
        self._waiters.setdefault(upload_id, set()).add(wake)
        poll = FIRST_POLL
        asked: int | bytes | str | None = None  # the holder we last asked to release, and when to ask it again
        ask_again = repeat = 0.0
        try:
            while True:
                wake.clear()  # before the attempt, so a release published after it still wakes us
                try:
                    result = await self._try_acquire(upload_id, key, token)
                    if result == 1:
                        return
                    if result != 0 and (result != asked or loop.time() >= ask_again):
                        repeat = REPEAT_RELEASE_REQUEST if result != asked else repeat * 2
                        asked, ask_again = result, loop.time() + repeat
                        await self.redis.publish(self._release_channel, result)
                except RedisError as exc:
                    raise TusError(errors.STORAGE_UNAVAILABLE, "lock service unreachable") from exc
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TusError(errors.LOCKED, headers={"Retry-After": "1"})
                try:
                    await asyncio.wait_for(wake.wait(), min(poll, remaining))
                except asyncio.TimeoutError:
                    poll = min(poll * 2, MAX_POLL)
        finally:
            waiters = self._waiters[upload_id]
            waiters.discard(wake)
            if not waiters:
                del self._waiters[upload_id]

    @property
    def _lease_ms(self) -> int:
        return max(1, int(self.lease * 1000))

    async def _keep(self, key: str, token: str, holder: _Holder) -> None:
        """Renew the lease while the lock is held. If it was lost anyway (Redis was
        unreachable for a whole lease, or the process stalled), the lock may have passed
        to another request: ask our request to stop."""
        loop = asyncio.get_running_loop()
        renewed = loop.time()
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                still_ours = await self._renew(keys=[key], args=[token, self._lease_ms]) == 1
            except RedisError:
                still_ours = loop.time() - renewed < self.lease
                if still_ours:
                    continue
            if not still_ours:
                log.warning("lost the lock on %s (lease expired); stopping its request", holder.upload_id)
                holder.ask_to_release()
                return
            renewed = loop.time()
