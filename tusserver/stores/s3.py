"""S3 store: one multipart upload per tus upload, all state in the bucket.

Keys under the prefix (`s3_prefix`; the state under `s3_state_prefix`, by default the same):
  `<id>`                  the object: one PutObject when every byte arrives before a full
                          part exists, else built by a multipart upload. An upload with a
                          chosen key (storage_key_template, a pre-create hook) has it at
                          `<prefix><key>` instead, possibly in another bucket: the
                          multipart upload targets that key from the start, so nothing is
                          copied at the finish
  `<id>.info`             the UploadInfo JSON (same schema as the disk store)
  `<id>.part.<n>.<start>` a tail chunk: bytes from upload offset <start> on, too few to be
                          a part yet, that go in front of part <n>
  `.owners/<key>/<entry>`   the owners' index (empty objects; see owners.py): ListObjectsV2
                          under one owner's key gives its uploads newest first
  `.unfinished/<id>`      empty, from creation to finish: expiry lists these, not every upload
  `.keys/<sha256>`        the claim of a chosen bucket and key: the id of the upload whose
                          bytes are, or will be, there (see _claim)

The multipart upload is created when the first part is ready, and its UploadId is
recorded in `.info` before any part is sent to it; one not recorded is an orphan
(`clean_orphans`). An upload written whole without one records `object_stored` (the
object's ETag) in `.info` only if it is not finished in the same request.

The offset is derived on every read: the parts numbered 1..n without gaps, plus the
tail: the chain of chunks for part n+1 that starts where part n ends, each chunk
starting where the one before it ends (one ListObjectsV2, skipped while `.info` says
that no chunk was ever written: most uploads never have one). Every change of the tail
is one PutObject that S3 applies whole, and anything off the chain is ignored (and
deleted by the next PATCH), so HEAD reports exactly what is stored, on any instance:
- a PATCH too short to make a part adds a chunk at the chain's end;
- the PATCH that makes the part reads the chain back once, sends it with its own
  bytes as part n+1, then deletes the chunks: the part makes them stale, since the
  chain now starts at part n+1's end and is for part n+2;
- to bound the number of chunks, a new chunk absorbs the chunks at the chain's end
  that hold at most `merge_limit` bytes together, rewritten as one object under the key
  of the first of them (the others fall off the chain).

Cost (S3 bytes moved per PATCH, besides `.info` and the listings): a PATCH that adds a
chunk moves its own bytes plus at most 2 x merge_limit (128 KiB with 5 MiB parts); each
byte of a tail is read back once when its part is cut, so amortised every byte is
uploaded at most twice and downloaded once, plus the merges. Any two neighbouring
chunks hold more than merge_limit bytes, so a tail has at most 2 x 64 + 1 chunks.

A request that holds an upload's lock works through an S3Upload (s3_upload.py, with the
part writer), which S3Store.open returns; s3_state.py holds the state it reads and the
part sizing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.httpsession import AIOHTTPSession
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from .. import errors
from .. import storage_errors as storage
from ..config import Config
from ..info import UploadInfo
from ..locking import Locker, held_version, seen_version
from ..placement import MAX_KEY_BYTES, Placement, key_problem
from ..protocol import download_headers, is_valid_upload_id
from .base import CorruptInfo, Download, RedirectDownload, StoreStartError, StreamDownload, parse_info
from .owner_index import entry_name, index_keys, is_entry, is_index_key
from .s3_policy import ObjectPolicy, s3_metadata
from .s3_profiles import Profile, profile
from .s3_state import (
    MAX_OBJECT_SIZE,
    MAX_PART_SIZE,
    MAX_PARTS,
    MiB,
    _Chunk,
    _State,
    max_object_size,
    may_have_chunks,
    part_size_for,
    tail_chain,
    uniform_part_size,
)
from .s3_upload import S3Upload, chunks_to_absorb, merge_limit, plan_rest
from .s3_upload import _Rest as _Rest  # for the tests
from .spool import Piece, Spool, TempBudget, check_writable, remove_stale_spools

log = logging.getLogger("tusserver.s3")

# Also the names of s3_state and s3_upload that the tests and embedders import from here.
__all__ = [
    "MAX_OBJECT_SIZE",
    "MAX_PARTS",
    "S3Store",
    "S3Upload",
    "chunks_to_absorb",
    "merge_limit",
    "part_size_for",
    "plan_rest",
    "s3_metadata",
    "tail_chain",
    "uniform_part_size",
    "uniform_ranges",
]

READ_CHUNK = 1 * MiB
UPLOAD_ID_CACHE = 4096
# A state this process read or wrote is trusted while the lock's version says nobody
# changed it (see S3Store.use_versions); these bound what the trust costs and risks. At
# most about 1024 x (4 KiB of metadata + 16 parts) = 10 MiB of RAM.
KNOWN_STATES = 1024
KNOWN_STATE_SECONDS = 300.0  # read again at least this often
KNOWN_STATE_PARTS = 16  # a longer list of parts is not kept
POOL_WAIT = 10.0  # seconds an S3 request may wait for a pooled connection, connecting included
READY_CACHE = 1.0  # seconds one HeadBucket answers /readyz for
TAIL_SUFFIX = ".part."  # <id>.part.<next part>.<start offset>: a tail chunk
DELETE_BATCH = 1000  # keys per DeleteObjects
TAIL_TAG = "tus-next-part"  # .part user metadata: the part number it goes in front of
UNFINISHED = ".unfinished/"  # under the state prefix; a dot: never an upload id
KEYS = ".keys/"  # under the state prefix: the claims of chosen keys
CLAIM_GRACE = 120.0  # seconds a claim without its upload's `.info` still holds the key
_UNCHANGED: Any = object()  # _claim: the claim was this upload's already
INDEXED = ".indexed"  # under UNFINISHED: every unfinished upload has its entry

_STORAGE_ERRORS = (ClientError, BotoCoreError, aiohttp.ClientError, OSError)
_MISSING = {"NoSuchKey", "NoSuchUpload", "404", "NotFound"}


def uniform_ranges(sizes: list[int], part_size: int) -> list[list[tuple[int, int, int]]]:
    """Cut the concatenation of objects of `sizes` into parts of `part_size` bytes (the
    last one shorter): per part, the (object index, start, end) ranges it is made of."""
    parts: list[list[tuple[int, int, int]]] = []
    current: list[tuple[int, int, int]] = []
    room = part_size
    for index, size in enumerate(sizes):
        start = 0
        while start < size:
            end = start + min(room, size - start)
            current.append((index, start, end))
            room -= end - start
            start = end
            if room == 0:
                parts.append(current)
                current, room = [], part_size
    if current:
        parts.append(current)
    return parts


def _code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def _unavailable(exc: BaseException) -> Exception:
    local = errors.storage_error(exc) if isinstance(exc, OSError) else None
    if local is not None:  # the temp dir, not S3: full, or not writable
        log.error("spooling failed: %s", exc)
        return local
    log.warning("S3 request failed: %s", exc)
    return storage.Unavailable()


class _PoolWaitSession(AIOHTTPSession):
    """aiobotocore's HTTP session with a bound on the wait for a free pooled connection:
    aiobotocore sets only sock_connect and sock_read, and aiohttp's pool waits for ever.
    aiohttp's `connect` timeout covers that wait and the connecting."""

    pool_wait = POOL_WAIT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        timeout: aiohttp.ClientTimeout = self.__dict__["_timeout"]  # set by the untyped base class
        self._timeout = self._bounded(timeout)

    def _get_request_timeout(self, request: Any) -> aiohttp.ClientTimeout | None:
        timeout = super()._get_request_timeout(request)
        return None if timeout is None else self._bounded(timeout)

    def _bounded(self, timeout: aiohttp.ClientTimeout) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=timeout.total, connect=self.pool_wait, sock_connect=timeout.sock_connect, sock_read=timeout.sock_read
        )


@dataclass
class _Known:
    """An upload's state as this process last read or wrote it, under lock version `version`."""

    info: bytes  # `.info` as stored
    state: _State | None  # None: finished
    version: int
    since: float  # time.monotonic()


class S3Store:
    """Stores uploads in an S3 bucket (or an S3-compatible service)."""

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        path_style: bool | None = None,
        min_part_size: int | None = None,
        part_size: int = 16 * MiB,
        uniform_parts: bool | None = None,
        upload_concurrency: int = 4,
        max_concurrency: int = 16,
        temp_dir: str | None = None,
        presigned_downloads: bool = False,
        presign_expiry: float = 3600.0,
        download_concurrency: int = 32,
        temp_max_size: int | None = None,
        dedicated_bucket: bool = False,
        state_prefix: str | None = None,
        allowed_buckets: Iterable[str] = (),
        provider: Profile | str = "aws",
        max_parts: int | None = None,
        policy: ObjectPolicy | None = None,
    ) -> None:
        # What the provider needs (s3_profiles.py); an argument given here wins over it.
        self.profile = provider = profile(provider) if isinstance(provider, str) else provider
        self.bucket = bucket
        self.policy = policy or ObjectPolicy()  # what the final objects carry
        self.prefix = prefix  # of the data objects
        self.state_prefix = prefix if state_prefix is None else state_prefix
        self.buckets = [bucket, *(b for b in dict.fromkeys(allowed_buckets) if b != bucket)]
        # Orphan cleanup deletes by key shape: only in a keyspace that is ours alone.
        self.dedicated_bucket = dedicated_bucket
        self._orphans_warned = False
        self.endpoint_url = endpoint_url
        self.region = region
        self.path_style = provider.path_style if path_style is None else path_style
        self.min_part_size = provider.min_part_size if min_part_size is None else min_part_size
        self.part_size = max(part_size, self.min_part_size)
        self.uniform_parts = provider.uniform_parts if uniform_parts is None else uniform_parts
        self.max_parts = provider.max_parts if max_parts is None else max_parts
        self.max_object_size = max_object_size(self.max_parts)
        self.copy_parts = provider.copy_parts
        self.upload_concurrency = max(1, upload_concurrency)
        self.max_concurrency = max(1, max_concurrency)
        self.temp_dir = temp_dir
        self.temp = TempBudget(temp_max_size)
        self.presigned_downloads = presigned_downloads
        self.presign_expiry = presign_expiry
        # Streaming downloads get a client and pool of their own: a download holds its
        # connection while its client reads, and slow readers must not take the
        # connections that uploads, HEADs and cleanup need.
        self.download_concurrency = max(1, download_concurrency)
        self._client: Any = None
        self._download_client: Any = None
        self.retry_attempts = provider.retry_attempts  # botocore retries per request (tests lower it)
        self.pool_wait = POOL_WAIT  # tests lower it
        self._readiness: asyncio.Future[bool] | None = None
        self._readiness_started = 0.0
        self._exit = contextlib.AsyncExitStack()
        self._slots = asyncio.Semaphore(self.max_concurrency)
        # id -> (where its object goes, its S3 UploadId). Neither changes while the upload
        # is unfinished, so they are safe to remember; they let get_info list parts while
        # .info is still loading.
        self._upload_ids: OrderedDict[str, tuple[dict[str, str], str]] = OrderedDict()
        self.versions: Locker | None = None
        self._known: OrderedDict[str, _Known] = OrderedDict()
        self._reading: dict[str, asyncio.Future[None]] = {}  # id -> a read of its state under way
        # Ids whose `.info` says they had tail chunks: a flag that is never unset.
        self._tailed: OrderedDict[str, bool] = OrderedDict()
        # What one request reads and writes between taking an upload's lock and releasing
        # it lives in its S3Upload (see open()), never here.

    @classmethod
    def from_config(cls, config: Config) -> S3Store:
        if not config.s3_bucket:
            raise ValueError("the S3 store needs s3_bucket")
        return cls(
            config.s3_bucket,
            prefix=config.s3_prefix,
            endpoint_url=config.s3_endpoint,
            region=config.s3_region,
            path_style=config.s3_path_style,
            # A provider's minimum may be raised, never lowered (its parts would be refused).
            min_part_size=max(config.s3_min_part_size, profile(config.s3_profile).min_part_size),
            part_size=config.s3_part_size,
            uniform_parts=config.s3_uniform_parts,
            upload_concurrency=config.s3_upload_concurrency,
            max_concurrency=config.s3_max_concurrency,
            temp_dir=config.temp_dir,
            presigned_downloads=config.s3_presigned_downloads,
            presign_expiry=config.s3_presign_expiry,
            download_concurrency=config.max_concurrent_downloads,
            temp_max_size=config.temp_max_size,
            dedicated_bucket=config.s3_dedicated_bucket,
            state_prefix=config.s3_state_prefix,
            allowed_buckets=config.s3_allowed_buckets,
            provider=config.s3_profile,
            max_parts=config.s3_max_parts,
            policy=ObjectPolicy.from_config(config),
        )

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        check_writable(self.temp_dir)
        removed = remove_stale_spools(self.temp_dir)
        if removed:
            log.info("removed %d stale spool files", removed)
        session = get_session()
        try:
            self._client = await self._exit.enter_async_context(self._create_client(session, self.max_concurrency + 16))
            self._download_client = await self._exit.enter_async_context(
                self._create_client(session, self.download_concurrency)
            )
            await self._check_bucket()
        except BaseException:
            await self.close()
            raise

    def _create_client(self, session: Any, connections: int) -> Any:
        session_class = type("_Session", (_PoolWaitSession,), {"pool_wait": self.pool_wait})
        config = AioConfig(
            retries={"mode": self.profile.retry_mode, "max_attempts": self.retry_attempts},
            s3={"addressing_style": "path" if self.path_style else "auto"},
            # Plain bodies: no aws-chunked encoding with trailing checksums (see Profile).
            request_checksum_calculation=self.profile.checksums,
            response_checksum_validation=self.profile.checksums,
            # SigV4 for presigned download URLs too (botocore may presign with SigV2 otherwise).
            signature_version="s3v4",
            max_pool_connections=connections,
            connect_timeout=10,
            read_timeout=120,
            http_session_cls=session_class,
        )
        return session.create_client("s3", endpoint_url=self.endpoint_url, region_name=self.region, config=config)

    async def _check_bucket(self) -> None:
        """Refuse to start without credentials or access to the buckets: a server that
        starts anyway answers 503 to every upload. Later outages show on /readyz."""
        for bucket in self.buckets:
            await self._check_one_bucket(bucket)

    async def _check_one_bucket(self, bucket: str) -> None:
        where = self.endpoint_url or "AWS"
        try:
            await self._client.head_bucket(Bucket=bucket)
        except NoCredentialsError:
            raise StoreStartError(
                "S3: no credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "or AWS_PROFILE, or give the machine a role"
            ) from None
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = _code(exc)
            if status == 403 or code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                message = f"access denied to bucket {bucket!r} at {where}: wrong credentials, or no permission"
            elif status == 404 or code == "NoSuchBucket":
                message = f"no such bucket {bucket!r} at {where}"
            elif status == 301 or code in ("PermanentRedirect", "AuthorizationHeaderMalformed"):
                headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
                region = headers.get("x-amz-bucket-region") or "another region"
                message = f"bucket {bucket!r} is in {region}; set s3_region"
            else:
                message = f"bucket {bucket!r} at {where} answered {status} {code}".rstrip()
            raise StoreStartError("S3: " + message) from None
        except (BotoCoreError, aiohttp.ClientError, OSError) as exc:
            raise StoreStartError(f"S3: endpoint {where} unreachable: {exc}") from None

    @property
    def checksum_limit(self) -> int:
        """Most bytes of one PATCH with Upload-Checksum: it is spooled whole before any
        part is sent, so no more than a plain PATCH keeps in flight."""
        return self.part_size * self.upload_concurrency

    @property
    def client(self) -> Any:
        """The aiobotocore S3 client (after start()), e.g. to observe its requests."""
        return self._client

    async def ready(self) -> bool:
        """Whether the bucket answers (HeadBucket). Callers within READY_CACHE seconds of a
        check, or while one runs, share its answer: /readyz costs at most one S3 call a second."""
        loop = asyncio.get_running_loop()
        if self._readiness is None or (
            self._readiness.done() and loop.time() - self._readiness_started >= READY_CACHE
        ):
            self._readiness = asyncio.ensure_future(self._head_bucket())
            self._readiness_started = loop.time()
        return await asyncio.shield(self._readiness)  # a caller that gives up leaves it to the others

    async def _head_bucket(self) -> bool:
        try:
            await self._client.head_bucket(Bucket=self.bucket)
        except _STORAGE_ERRORS as exc:
            log.warning("S3 bucket %s is not reachable: %s", self.bucket, exc)
            return False
        return True

    async def close(self) -> None:
        if self._readiness is not None and not self._readiness.done():
            self._readiness.cancel()
        self._readiness = None
        await self._exit.aclose()
        self._client = self._download_client = None

    # -- keys and small objects -------------------------------------------------

    def _key(self, upload_id: str, suffix: str = "") -> str:
        """The key of one of the upload's state objects (`.info`, tail chunks, links)."""
        if not is_valid_upload_id(upload_id):  # defence in depth; handlers validate too
            raise storage.NotFound()
        return f"{self.state_prefix}{upload_id}{suffix}"

    def _data_key(self, upload_id: str) -> str:
        """Where an upload's bytes go when nothing else is chosen."""
        self._key(upload_id)  # validates the id
        return f"{self.prefix}{upload_id}"

    def _at(self, info: UploadInfo) -> dict[str, str]:
        """Where the upload's data object is: Bucket and Key parameters."""
        return {"Bucket": info.storage.get("bucket") or self.bucket, "Key": info.storage["key"]}

    async def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        """An S3 call, in the store's bucket unless `Bucket` is given."""
        params.setdefault("Bucket", self.bucket)
        try:
            return await getattr(self._client, operation)(**params)
        except _STORAGE_ERRORS as exc:
            if _code(exc) in _MISSING:
                raise
            raise _unavailable(exc) from None

    def use_versions(self, locker: Locker) -> None:
        """Trust the state this process read or wrote while `locker`'s version of the upload
        says that nobody took its lock since: a HEAD, or the PATCH after a creation, then
        costs no S3 call. Only for a locker that every writer of the bucket goes through."""
        self.versions = locker

    async def _versions_now(self, upload_id: str) -> tuple[tuple[int | None, ...], int] | None:
        """(the versions under which a kept state is current, the version to keep a state
        read now under), or None when no state may be kept or trusted."""
        held = held_version(upload_id)
        if held is not None:  # ours: the version before we took the lock, or ours
            return held, held[1]
        if self.versions is None:
            return None
        now = seen_version(upload_id)
        if now is None:
            now = await self.versions.version(upload_id)
        return None if not now else ((now,), now)  # 0: free, but without a version

    def _recall(self, upload_id: str, versions: tuple[tuple[int | None, ...], int]) -> S3Upload | None:
        known = self._known.get(upload_id)
        if known is None or known.version not in versions[0] or time.monotonic() - known.since > KNOWN_STATE_SECONDS:
            return None
        info = parse_info(upload_id, known.info)  # a new object: callers change it
        known.version = versions[1]
        if known.state is None:
            info.offset = info.length or 0
            return S3Upload(self, info, None)
        state = _State(list(known.state.parts), list(known.state.tail), list(known.state.stale), known.state.stored)
        info.offset = state.offset
        return S3Upload(self, info, state)

    def _remember(self, info: UploadInfo, state: _State | None, version: int) -> None:
        if state is not None and len(state.parts) > KNOWN_STATE_PARTS:
            return
        self._keep(self._known, info.id, _Known(info.to_json(), state, version, time.monotonic()), KNOWN_STATES)

    def _remember_held(self, info: UploadInfo, state: _State | None) -> None:
        """Keep what this request, holding the lock, just wrote."""
        held = held_version(info.id)
        if held is not None:
            self._remember(info, state, held[1])

    def _forget(self, upload_id: str) -> None:
        """Before any change: until it is known how the change ended, S3 has the state."""
        self._known.pop(upload_id, None)

    async def save_info(self, info: UploadInfo) -> None:
        self._forget(info.id)
        await self._call(
            "put_object", Key=self._key(info.id, ".info"), Body=info.to_json(), ContentType="application/json"
        )

    async def _read_info(self, upload_id: str) -> UploadInfo:
        got = await self._get_small(self._key(upload_id, ".info"))
        if got is None:
            raise storage.NotFound()
        return parse_info(upload_id, got[0])

    async def _get_small(self, key: str) -> tuple[bytes, dict[str, Any]] | None:
        """A small state object's bytes and its GetObject answer; None when there is none."""
        try:
            response = await self._call("get_object", Key=key)
            async with response["Body"] as stream:
                return await stream.read(), response
        except ClientError:
            return None
        except _STORAGE_ERRORS as exc:
            raise _unavailable(exc) from None

    def _chunk_key(self, upload_id: str, next_part: int, start: int) -> str:
        return f"{self._key(upload_id, TAIL_SUFFIX)}{next_part}.{start}"

    async def _list_chunks(self, upload_id: str) -> list[_Chunk]:
        """Every tail chunk of the upload, on the chain or not (see _chunks_of)."""
        prefix = self._key(upload_id, TAIL_SUFFIX)
        chunks = []
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    next_part, _, start = item["Key"][len(prefix) :].partition(".")
                    if next_part.isdigit() and start.isdigit():
                        chunks.append(_Chunk(item["Key"], int(next_part), int(start), int(item["Size"])))
        except _STORAGE_ERRORS as exc:
            raise _unavailable(exc) from None
        return chunks

    async def _read_chunks_into(self, chunks: list[_Chunk], spool: Spool) -> None:
        """Append the bytes of `chunks`, in order, to `spool`; each must be there in full."""
        for chunk in chunks:
            got = 0
            try:
                response = await self._call("get_object", Key=chunk.key)
                async with response["Body"] as stream:
                    async for data in stream.iter_chunks(READ_CHUNK):
                        got += len(data)
                        await spool.awrite(data)
            except _STORAGE_ERRORS as exc:
                raise _unavailable(exc) from None
            if got != chunk.size:
                log.warning("tail chunk %s: read %d of %d bytes", chunk.key, got, chunk.size)
                raise storage.Unavailable()

    async def _delete_keys(self, keys: list[str]) -> None:
        if not self.profile.batch_delete:
            for key in keys:  # a tail has at most about 130 chunks (see the module docstring)
                await self._delete(key)
            return
        for i in range(0, len(keys), DELETE_BATCH):
            batch = [{"Key": key} for key in keys[i : i + DELETE_BATCH]]
            await self._call("delete_objects", Delete={"Objects": batch, "Quiet": True})

    async def _chunks_of(self, info: UploadInfo) -> list[_Chunk]:
        """The upload's tail chunks, without a listing if `.info` says it never had one."""
        return await self._list_chunks(info.id) if may_have_chunks(info) else []

    async def _delete_tail(self, info: UploadInfo) -> None:
        await self._delete_keys([c.key for c in await self._chunks_of(info)])

    async def _list_parts(self, info: UploadInfo) -> list[dict[str, Any]]:
        """Every part of the upload, in order, following PartNumberMarker past 1000."""
        parts: list[dict[str, Any]] = []
        marker = 0
        while True:
            response = await self._call(
                "list_parts",
                **self._at(info),
                UploadId=info.storage["upload_id"],
                PartNumberMarker=marker,
            )
            parts += [
                {"PartNumber": p["PartNumber"], "ETag": p["ETag"], "Size": p["Size"]}
                for p in response.get("Parts", [])
            ]
            if not response.get("IsTruncated"):
                return parts
            marker = int(response["NextPartNumberMarker"])

    def _state(self, info: UploadInfo, listed: list[dict[str, Any]], chunks: list[_Chunk]) -> _State:
        if info.storage.get("object_stored") is not None:  # every byte is in the object
            return _State([], [], chunks, info.length or 0)
        stale_parts = set(info.storage.get("stale_parts", []))
        parts = []
        for number, part in enumerate(sorted(listed, key=lambda p: p["PartNumber"]), 1):
            if part["PartNumber"] != number or number in stale_parts:
                break
            parts.append(part)
        tail, stale = tail_chain(chunks, len(parts) + 1, sum(p["Size"] for p in parts))
        return _State(parts, tail, stale)

    async def _read_state(self, info: UploadInfo) -> _State:
        if not info.storage.get("upload_id"):
            return self._state(info, [], await self._chunks_of(info))
        listed, chunks = await asyncio.gather(self._list_parts(info), self._chunks_of(info))
        return self._state(info, listed, chunks)

    @staticmethod
    def _keep(cache: OrderedDict, upload_id: str, value: Any, limit: int = UPLOAD_ID_CACHE) -> None:
        cache[upload_id] = value
        cache.move_to_end(upload_id)
        while len(cache) > limit:
            cache.popitem(last=False)

    def _object_params(self, info: UploadInfo) -> dict[str, Any]:
        """What the final object carries besides its bytes: where it goes, and what the policy says."""
        return {**self._at(info), **self.policy.params(info)}

    async def _start_upload(self, info: UploadInfo) -> str:
        """Create the multipart upload and record it in `.info` before any part goes to it,
        so that another instance finds it; one that is not recorded is an orphan."""
        response = await self._call("create_multipart_upload", **self._object_params(info))
        info.storage["upload_id"] = response["UploadId"]
        try:
            await self.save_info(info)
        except BaseException:
            del info.storage["upload_id"]
            raise
        self._keep(self._upload_ids, info.id, (self._at(info), response["UploadId"]))
        return response["UploadId"]

    # -- Store ---------------------------------------------------------------------

    async def create(self, info: UploadInfo, placement: Placement | None = None) -> None:
        if info.length is not None and info.length > self.max_object_size:
            raise storage.TooLarge(f"objects here are at most {self.max_object_size} bytes")
        # No multipart upload yet: small uploads never need one (see _PartWriter).
        info.storage = {"type": "s3", "bucket": self.bucket, "key": self._data_key(info.id), "tails": False}
        if placement is not None and not placement.is_default(info.id):
            self._place(info, placement)
            info.storage["object"] = self.policy.resolve(placement)
        if self.uniform_parts:
            info.storage["part_size"] = uniform_part_size(
                info.length, self.part_size, self.min_part_size, self.max_parts
            )
        # Before `.info`, and kept if the id is taken: a stale entry costs the cleaner one
        # read, a missing one would keep an unfinished upload forever.
        self._forget(info.id)
        versions = await self._versions_now(info.id)  # before the write: a lock taken after it bumps
        # The claim first: a creation refused for its key writes nothing.
        claim = await self._claim(info) if info.storage.get("claimed") else _UNCHANGED
        try:
            await self._call("put_object", Key=self._marker(info.id), Body=b"")
            await self._put_new_info(info)
        except BaseException:
            await asyncio.shield(self._restore_claim(info, claim))
            raise
        if versions is not None:
            self._remember(info, _State([], [], []), versions[1])

    def _place(self, info: UploadInfo, placement: Placement) -> None:
        """Point `info` at the chosen bucket and key, or raise storage.BadPlacement."""
        bucket = placement.bucket or self.bucket
        key = self.prefix + placement.key
        problem = key_problem(placement.key, info.id)
        if problem is None and bucket not in self.buckets:
            problem = f"bucket {bucket!r} is not s3_bucket or in s3_allowed_buckets"
        elif problem is None and len(key.encode()) > MAX_KEY_BYTES:
            problem = f"with s3_prefix the key is longer than {MAX_KEY_BYTES} bytes"
        elif problem is None and bucket == self.bucket and key.startswith(self.state_prefix):
            # Among the state objects: it must not be named like one, or like another upload's data.
            problem = key_problem(key[len(self.state_prefix) :], info.id)
        if problem is not None:
            log.error("upload %s: storage key %r refused: %s", info.id, placement.key, problem)
            raise storage.BadPlacement(problem)
        info.storage["bucket"], info.storage["key"] = bucket, key
        info.storage["claimed"] = (bucket, key) != (self.bucket, self._data_key(info.id))

    # A chosen key is claimed by one upload at a time: `.keys/<sha256 of bucket and key>`
    # under the state prefix names the upload whose bytes are, or will be, at that key.
    # Claims outlive their upload's finish, so that deleting an older upload whose key a
    # newer one has since taken never deletes the newer one's object.

    def _claim_key(self, info: UploadInfo) -> str:
        at = self._at(info)
        digest = hashlib.sha256(f"{at['Bucket']}\n{at['Key']}".encode()).hexdigest()
        return f"{self.state_prefix}{KEYS}{digest}"

    async def _claim(self, info: UploadInfo) -> str | None:
        """Claim the upload's key; raises storage.KeyTaken while another upload in progress
        holds it. Returns the previous holder (None: there was none) or _UNCHANGED (ours already)."""
        key, body = self._claim_key(info), info.id.encode()
        if await self._put_if(key, body, IfNoneMatch="*"):
            return None
        holder, etag, since = await self._read_claim(key)
        if holder == info.id:
            return _UNCHANGED
        if holder is not None and await self._in_progress(holder, since):
            raise storage.KeyTaken()
        # Its upload is finished, deleted or gone: a new upload may write to the key. Of
        # two creations taking it over at once, the conditional write lets one through.
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        if not await self._put_if(key, body, **condition):
            raise storage.KeyTaken()
        return holder

    async def _restore_claim(self, info: UploadInfo, previous: str | None) -> None:
        """Undo _claim after the creation failed."""
        if previous is _UNCHANGED:
            return
        with contextlib.suppress(storage.StorageError):
            if previous is None:
                await self._delete(self._claim_key(info))
            else:
                await self._call("put_object", Key=self._claim_key(info), Body=previous.encode())

    async def _put_if(self, key: str, body: bytes, **params: str) -> bool:
        """A conditional PutObject (IfNoneMatch or IfMatch in `params`); False when the
        condition does not hold."""
        try:
            await self._client.put_object(Bucket=self.bucket, Key=key, Body=body, **params)
        except _STORAGE_ERRORS as exc:
            # 412: the condition is false; 409: another conditional write of it is under way.
            if _code(exc) in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise _unavailable(exc) from None
        return True

    async def _read_claim(self, key: str) -> tuple[str | None, str | None, float]:
        """(the upload a claim names, the claim's ETag, when it was written), or
        (None, None, 0) without a claim."""
        got = await self._get_small(key)
        if got is None:
            return None, None, 0.0
        holder, response = got[0].decode("ascii", "replace"), got[1]
        since = response["LastModified"].timestamp() if response.get("LastModified") else 0.0
        return (holder if is_valid_upload_id(holder) else None), response.get("ETag"), since

    async def _in_progress(self, upload_id: str, claimed: float) -> bool:
        try:
            return not (await self._read_info(upload_id)).finished
        except CorruptInfo:
            return True  # left to an operator: its key with it
        except storage.NotFound:
            # Claimed, but without `.info`: a creation under way (the claim comes first),
            # or one that failed or crashed, whose claim is taken over after a while.
            return time.time() - claimed < CLAIM_GRACE

    async def _holds_claim(self, info: UploadInfo) -> bool:
        """Whether the bytes at the upload's key are, or will be, this upload's."""
        if not info.storage.get("claimed"):
            return True
        return (await self._read_claim(self._claim_key(info)))[0] == info.id

    async def _put_new_info(self, info: UploadInfo) -> None:
        """Write `.info` only if none exists (If-None-Match: *): of two creations of one id,
        exactly one succeeds; the other raises storage.IdTaken."""
        key, body = self._key(info.id, ".info"), info.to_json()
        if await self._put_if(key, body, ContentType="application/json", IfNoneMatch="*"):
            return
        # A retry of our own PUT whose answer was lost finds our object: that is a success.
        stored = await self._get_small(key)
        if stored is None or stored[0] != body:
            raise storage.IdTaken()

    async def get_info(self, upload_id: str) -> UploadInfo:
        return (await self.open(upload_id)).info

    async def open(self, upload_id: str) -> S3Upload:
        """The upload as S3 holds it now (or as this process last read or wrote it, while the
        lock's version says nobody changed it since), for a caller that holds its lock; see
        S3Upload. Raises storage.NotFound for an unknown id."""
        self._key(upload_id)
        versions = await self._versions_now(upload_id)
        if versions is None:
            return await self._read_current(upload_id, None)
        if (recalled := self._recall(upload_id, versions)) is not None:
            return recalled
        if held_version(upload_id) is not None:
            return await self._read_current(upload_id, versions)
        # Requests at once without the lock (HEADs) on a state not kept: one reads S3, the
        # others wait for it and take what it kept.
        reading = self._reading.get(upload_id)
        if reading is not None:
            await asyncio.wait([reading])  # never cancels it, even when this request is
            versions = await self._versions_now(upload_id)
            if versions is not None and (recalled := self._recall(upload_id, versions)) is not None:
                return recalled
            return await self._read_current(upload_id, versions)
        done = self._reading[upload_id] = asyncio.get_running_loop().create_future()
        try:
            return await self._read_current(upload_id, versions)
        finally:
            del self._reading[upload_id]
            done.set_result(None)

    async def _read_current(
        self, upload_id: str, versions: tuple[tuple[int | None, ...], int] | None
    ) -> S3Upload:
        """The upload's state read from S3, kept under `versions` unless that is None."""
        remembered = self._upload_ids.get(upload_id)
        at, known = remembered if remembered is not None else (None, None)

        async def early_parts() -> list[dict[str, Any]] | None:
            if at is None:
                return None
            with contextlib.suppress(ClientError):
                return await self._list_parts(
                    UploadInfo(upload_id, None, storage={"bucket": at["Bucket"], "key": at["Key"], "upload_id": known})
                )
            return None

        async def early_chunks() -> list[_Chunk] | None:
            # Listed alongside `.info` only for an upload seen with chunks: most never have one.
            return await self._list_chunks(upload_id) if upload_id in self._tailed else None

        info, chunks, listed = await asyncio.gather(self._read_info(upload_id), early_chunks(), early_parts())
        if info.finished:
            info.offset = info.length or 0
            if versions is not None:
                self._remember(info, None, versions[1])
            return S3Upload(self, info, None)
        if info.storage.get("tails"):
            self._keep(self._tailed, upload_id, True)
        if chunks is None:
            chunks = await self._chunks_of(info)
        upload = info.storage.get("upload_id")
        if not upload:
            listed = []
        elif listed is None or (at, known) != (self._at(info), upload):
            try:
                listed = await self._list_parts(info)
            except ClientError:
                return S3Upload(self, await self._recover_completed(info), None)
        if upload:
            self._keep(self._upload_ids, upload_id, (self._at(info), upload))
        state = self._state(info, listed, chunks)
        info.offset = state.offset
        if versions is not None:
            self._remember(info, state, versions[1])
        return S3Upload(self, info, state)

    async def _recover_completed(self, info: UploadInfo) -> UploadInfo:
        """The multipart upload is gone: either completed before `.info` said so, or aborted."""
        try:
            head = await self._call("head_object", **self._at(info))
        except ClientError:
            raise storage.NotFound() from None
        if info.length is None or head["ContentLength"] != info.length:
            raise storage.NotFound()
        info.finished = True
        info.storage["etag"] = head.get("ETag")
        info.offset = info.length
        await self.save_info(info)
        return info

    # Per-call forms of the session's methods, for callers that hold no session (the
    # finals worker, cleanup, embedders): each opens one from `info`, which reads on use
    # what S3 holds.

    async def append(self, info: UploadInfo, body: AsyncIterable[bytes], *, atomic: bool = False) -> int:
        return await S3Upload(self, info, None).append(body, atomic=atomic)

    async def set_length(self, info: UploadInfo, length: int) -> None:
        await S3Upload(self, info, None).set_length(length)

    async def finish(self, info: UploadInfo) -> None:
        await S3Upload(self, info, None).finish()

    async def _complete(self, info: UploadInfo, parts: list[dict[str, Any]]) -> None:
        upload = info.storage.get("upload_id")
        if not parts:
            # S3 cannot complete a multipart upload without parts: write the empty object.
            if upload:
                await self._abort(self._at(info), upload)
            response = await self._call("put_object", Body=b"", **self._object_params(info))
        else:
            response = await self._call(
                "complete_multipart_upload",
                **self._at(info),
                UploadId=upload,
                MultipartUpload={"Parts": [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in parts]},
            )
        info.storage["etag"] = response.get("ETag")
        info.storage.pop("stale_parts", None)

    async def download(self, info: UploadInfo) -> Download:
        at = self._at(info)
        if self.presigned_downloads:
            # The same Content-Type and Content-Disposition (with the original filename) as
            # when the server streams the bytes itself.
            headers = download_headers(info.metadata)
            url = await self._client.generate_presigned_url(
                "get_object",
                Params={
                    **at,
                    "ResponseContentType": headers["Content-Type"],
                    "ResponseContentDisposition": headers["Content-Disposition"],
                },
                ExpiresIn=int(self.presign_expiry),
            )
            return RedirectDownload(url)

        # At a chosen key, a later upload may have replaced this one's object: never
        # serve another upload's bytes as this one's.
        same = {"IfMatch": info.storage["etag"]} if info.storage.get("claimed") and info.storage.get("etag") else {}

        @contextlib.asynccontextmanager
        async def open_range(start: int, end: int) -> AsyncIterator[AsyncIterator[bytes]]:
            try:
                response = await self._download_client.get_object(**at, **same, Range=f"bytes={start}-{end - 1}")
            except _STORAGE_ERRORS as exc:
                if _code(exc) in _MISSING or _code(exc) == "PreconditionFailed":
                    raise storage.NotFound() from None
                raise _unavailable(exc) from None
            async with response["Body"] as stream:
                yield _read_chunks(stream)

        return StreamDownload(info.length or 0, info.storage.get("etag"), open_range)

    # -- TerminatingStore --------------------------------------------------------

    async def terminate(self, info: UploadInfo) -> None:
        self._forget(info.id)
        at = self._at(info)
        holds = await self._holds_claim(info)
        # `<id>.part`: the tail object of older versions.
        jobs = [self._delete_tail(info), self._delete(self._key(info.id, ".part"))]
        if holds:  # else a later upload's object is at the key now
            jobs.append(self._delete(at["Key"], at["Bucket"]))
        if info.storage.get("upload_id") and not info.finished:
            jobs.append(self._abort(at, info.storage["upload_id"]))
        await asyncio.gather(*jobs)
        await self._drop_state(info, holds)

    async def release(self, info: UploadInfo) -> None:
        self._forget(info.id)
        await self._drop_state(info, await self._holds_claim(info))

    async def _drop_state(self, info: UploadInfo, holds: bool) -> None:
        """Delete the upload's state: links, `.info`, its key's claim (`holds`: the claim is
        its own), the expiry marker and the owners' index entries."""
        for final_id in await self.finals_of(info.id):
            await self.unlink_final(info.id, final_id)
        # .info after the data and the links: while it exists, a failed DELETE can be retried.
        await self._delete(self._key(info.id, ".info"))
        if holds and info.storage.get("claimed"):
            await self._delete(self._claim_key(info))
        await self._delete(self._marker(info.id))
        self._upload_ids.pop(info.id, None)
        if info.listed:  # after .info: an entry without its upload is skipped, never the reverse
            await asyncio.gather(*(self.unindex(key, entry_name(info)) for key in index_keys(info)))

    async def _delete(self, key: str, bucket: str | None = None) -> None:
        with contextlib.suppress(ClientError):
            await self._call("delete_object", Bucket=bucket or self.bucket, Key=key)

    async def _abort(self, at: dict[str, str], upload: str) -> None:
        with contextlib.suppress(ClientError):
            await self._call("abort_multipart_upload", **at, UploadId=upload)

    # -- ConcatenatingStore --------------------------------------------------------

    async def concatenate(self, final: UploadInfo, partials: list[UploadInfo]) -> None:
        self._forget(final.id)
        at = self._at(final)
        total = sum(p.length or 0 for p in partials)
        uniform = self.uniform_parts or bool(final.storage.get("part_size"))
        # Without UploadPartCopy every byte is streamed anyway: in equal parts sized for
        # the total, so that the part budget holds.
        part_size = uniform_part_size(total, self.part_size, self.min_part_size, self.max_parts)
        if uniform:
            # The length is known now: size the parts for it (saved with the upload id).
            final.storage["part_size"] = part_size
        upload = final.storage.get("upload_id") or await self._start_upload(final)
        try:
            if uniform or not self.copy_parts:
                parts = await self._concatenate_uniform(at, upload, partials, part_size)
            else:
                parts = await self._concatenate_parts(at, upload, partials)
        except _STORAGE_ERRORS as exc:
            raise _unavailable(exc) from None
        final.length = total
        await self._complete(final, parts)
        final.offset = final.length
        final.finished = True
        await self.save_info(final)
        self._upload_ids.pop(final.id, None)

    async def _concatenate_parts(
        self, at: dict[str, str], upload: str, partials: list[UploadInfo]
    ) -> list[dict[str, Any]]:
        """Each partial of at least the minimum size as parts copied whole; smaller ones streamed."""
        parts: list[dict[str, Any]] = []
        spool = Spool(self.temp_dir, self.part_size, self.temp)
        try:
            for index, partial in enumerate(partials):
                size = partial.length or 0
                last = index == len(partials) - 1
                if spool.pending == 0 and (size >= self.min_part_size or (last and size > 0)):
                    await self._copy_ranges(at, upload, self._at(partial), size, parts)
                    continue
                # Too small to be a part of its own: stream it through a temp file.
                if size:
                    response = await self._call("get_object", **self._at(partial))
                    async with response["Body"] as stream:
                        async for chunk in stream.iter_chunks(READ_CHUNK):
                            await spool.awrite(chunk)  # off the event loop
                            while (piece := spool.take_filled()) is not None:
                                await self._send_piece(at, upload, piece, parts)
                if spool.pending >= self.min_part_size or (last and spool.pending):
                    piece = spool.cut()
                    assert piece is not None
                    await self._send_piece(at, upload, piece, parts)
        finally:
            spool.discard()
        return parts

    async def _concatenate_uniform(
        self, at: dict[str, str], upload: str, partials: list[UploadInfo], part_size: int
    ) -> list[dict[str, Any]]:
        """Every part but the last exactly `part_size` bytes (R2): a part within one partial
        is a ranged UploadPartCopy (where the provider has it); any other part is streamed
        through a temp file. At most `upload_concurrency` parts, so as many temp files, are
        in flight."""
        plan = uniform_ranges([p.length or 0 for p in partials], part_size)
        limit = asyncio.Semaphore(self.upload_concurrency)

        async def make(number: int, ranges: list[tuple[int, int, int]]) -> dict[str, Any]:
            size = sum(end - start for _, start, end in ranges)
            async with limit:
                if len(ranges) == 1 and self.copy_parts:
                    index, start, end = ranges[0]
                    etag = await self._copy_part(at, upload, number, self._at(partials[index]), (start, end))
                else:
                    piece = await self._spool_ranges([(self._at(partials[i]), s, e) for i, s, e in ranges])
                    try:
                        if piece.size != size:  # a body cut short must not become a part
                            raise storage.Unavailable()
                        async with self._slots:
                            etag = await self._upload_part(at, upload, number, piece)
                    finally:
                        piece.remove()
            return {"PartNumber": number, "ETag": etag, "Size": size}

        tasks = [asyncio.ensure_future(make(n, ranges)) for n, ranges in enumerate(plan, 1)]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)  # their temp files are removed

    async def _spool_ranges(self, ranges: list[tuple[dict[str, str], int, int]]) -> Piece:
        """The bytes of (where, start, end) ranges, in order, in one temp file."""
        spool = Spool(self.temp_dir, MAX_PART_SIZE + 1, self.temp)  # never cut: one piece
        try:
            for source, start, end in ranges:
                response = await self._call("get_object", **source, Range=f"bytes={start}-{end - 1}")
                async with response["Body"] as stream:
                    async for chunk in stream.iter_chunks(READ_CHUNK):
                        await spool.awrite(chunk)  # off the event loop
            piece = spool.cut()
        finally:
            spool.discard()
        assert piece is not None  # every range holds at least one byte
        return piece

    # A final created before its partials finished is found from each partial through an
    # empty `<partial>.finals/<final>` object.

    def _link(self, partial_id: str, final_id: str) -> str:
        self._key(final_id)
        return self._key(partial_id, ".finals/") + final_id

    async def link_final(self, partial_id: str, final_id: str) -> None:
        await self._call("put_object", Key=self._link(partial_id, final_id), Body=b"")

    async def finals_of(self, partial_id: str) -> list[str]:
        links = self._key(partial_id, ".finals/")
        names = [key[len(links) :] async for key in self._keys(links)]
        return [name for name in names if is_valid_upload_id(name)]

    async def unlink_final(self, partial_id: str, final_id: str) -> None:
        await self._delete(self._link(partial_id, final_id))

    async def _copy_ranges(
        self, at: dict[str, str], upload: str, source: dict[str, str], size: int, parts: list[dict[str, Any]]
    ) -> None:
        count = max(1, math.ceil(size / MAX_PART_SIZE))
        step = math.ceil(size / count)
        for start in range(0, size, step):
            end = min(start + step, size)
            number = len(parts) + 1
            etag = await self._copy_part(at, upload, number, source, (start, end) if count > 1 else None)
            parts.append({"PartNumber": number, "ETag": etag, "Size": end - start})

    async def _copy_part(
        self, at: dict[str, str], upload: str, number: int, source: dict[str, str], byte_range: tuple[int, int] | None
    ) -> str:
        """Part `number` copied from `source` (bytes [start, end), or all of it) inside S3; its ETag."""
        params: dict[str, Any] = {}
        if byte_range is not None:
            params["CopySourceRange"] = f"bytes={byte_range[0]}-{byte_range[1] - 1}"
        async with self._slots:
            response = await self._call(
                "upload_part_copy",
                **at,
                UploadId=upload,
                PartNumber=number,
                CopySource=source,
                **params,
            )
        return response["CopyPartResult"]["ETag"]

    async def _send_piece(self, at: dict[str, str], upload: str, piece: Piece, parts: list[dict[str, Any]]) -> None:
        try:
            number = len(parts) + 1
            async with self._slots:
                etag = await self._upload_part(at, upload, number, piece)
            parts.append({"PartNumber": number, "ETag": etag, "Size": piece.size})
        finally:
            piece.remove()

    async def _upload_part(self, at: dict[str, str], upload: str, number: int, piece: Piece) -> str:
        # From the file, so botocore's retries can rewind and resend it.
        with piece.open() as f:
            response = await self._call(
                "upload_part", **at, UploadId=upload, PartNumber=number, Body=f, ContentLength=piece.size
            )
        return response["ETag"]

    # -- OwnerIndexStore -----------------------------------------------------------

    async def peek_info(self, upload_id: str) -> UploadInfo:
        return await self._read_info(upload_id)

    def _index_prefix(self, key: str) -> str:
        if not is_index_key(key):
            raise ValueError(f"not an index key: {key!r}")
        return f"{self.state_prefix}.owners/{key}/"

    async def index_upload(self, info: UploadInfo) -> None:
        entry = entry_name(info)
        await asyncio.gather(
            *(self._call("put_object", Key=self._index_prefix(key) + entry, Body=b"") for key in index_keys(info))
        )

    async def list_index(self, key: str, after: str | None, limit: int) -> list[str]:
        prefix = self._index_prefix(key)
        names: list[str] = []
        start_after = prefix + after if after is not None else None
        while len(names) < limit:
            params: dict[str, Any] = {"Prefix": prefix, "MaxKeys": min(limit - len(names), 1000)}
            if start_after is not None:
                params["StartAfter"] = start_after
            response = await self._call("list_objects_v2", **params)
            contents = response.get("Contents", [])
            names += [item["Key"][len(prefix) :] for item in contents]
            if not response.get("IsTruncated") or not contents:
                break
            start_after = contents[-1]["Key"]
        return [name for name in names if is_entry(name)]

    async def unindex(self, key: str, entry: str) -> None:
        if is_entry(entry):
            await self._delete(self._index_prefix(key) + entry)

    # -- ExpiringStore -------------------------------------------------------------

    def _marker(self, upload_id: str) -> str:
        self._key(upload_id)  # validates the id
        return f"{self.state_prefix}{UNFINISHED}{upload_id}"

    async def forget_unfinished(self, upload_id: str) -> None:
        await self._delete(self._marker(upload_id))

    async def list_uploads(self) -> AsyncIterator[str]:
        async for key in self._keys():
            name = key[len(self.state_prefix) :]
            if name.endswith(".info") and is_valid_upload_id(name[: -len(".info")]):
                yield name[: -len(".info")]

    async def list_unfinished(self, created_before: float) -> AsyncIterator[str]:
        index = self.state_prefix + UNFINISHED
        indexed = False
        async for item in self._items(index):
            name = item["Key"][len(index) :]
            if name == INDEXED:
                indexed = True
            elif is_valid_upload_id(name) and item["LastModified"].timestamp() < created_before:
                yield name
        if not indexed:
            async for upload_id in self._build_index():
                yield upload_id

    async def _build_index(self) -> AsyncIterator[str]:
        """Uploads of a version without the index: one read of every `.info`, once."""
        count = 0
        async for upload_id in self.list_uploads():
            try:
                info = await self._read_info(upload_id)
            except storage.Unavailable:
                raise
            except storage.StorageError:
                continue  # gone meanwhile, or unreadable (logged): never expired
            if not info.finished:
                await self._call("put_object", Key=self._marker(upload_id), Body=b"")
                count += 1
                yield upload_id
        await self._call("put_object", Key=self.state_prefix + UNFINISHED + INDEXED, Body=b"")
        log.info("indexed %d unfinished uploads under %s/%s for expiry", count, self.bucket, self.state_prefix)

    async def _keys(self, prefix: str | None = None) -> AsyncIterator[str]:
        async for item in self._items(prefix):
            yield item["Key"]

    async def _items(self, prefix: str | None = None) -> AsyncIterator[dict[str, Any]]:
        paginator = self._client.get_paginator("list_objects_v2")
        prefix = self.state_prefix if prefix is None else prefix
        try:
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield item
        except _STORAGE_ERRORS as exc:
            raise _unavailable(exc) from None

    async def _has_info(self, upload_id: str) -> bool:
        try:
            await self._call("head_object", Key=self._key(upload_id, ".info"))
        except ClientError:
            return False
        return True

    async def _tagged_tail(self, key: str) -> bool:
        """Whether the object carries the user metadata every `.part` we write has."""
        try:
            response = await self._call("head_object", Key=key)
        except ClientError:
            return False
        return TAIL_TAG in response.get("Metadata", {})

    async def _records(self, upload_id: str, s3_upload_id: str) -> bool:
        """Whether `.info` exists and names this multipart upload (or cannot be read)."""
        try:
            info = await self._read_info(upload_id)
        except CorruptInfo:
            return True  # unreadable: leave it to an operator
        except storage.NotFound:
            return False
        return info.storage.get("upload_id") == s3_upload_id

    async def clean_orphans(self, older_than: float) -> int:
        """Abort multipart uploads that no `.info` records (a crash between creating one
        and recording it, or a deleted upload) and delete tail chunks without `.info`.

        Only in a keyspace that is ours: a non-empty prefix, or a bucket declared
        dedicated. There, a multipart upload counts as ours by its key (`<prefix><id>`;
        S3 shows no tags or metadata of an upload in progress), a tail chunk by its key
        (`<id>.part.<n>.<start>`), and an older version's `<id>.part` only if it carries the
        `tus-next-part` metadata every such object had. A multipart upload at a chosen key
        (storage_key_template, a hook) is not recognisable: the rule that
        `tusserver s3-lifecycle` prints aborts it."""
        if not (self.prefix and self.state_prefix) and not self.dedicated_bucket:
            if self._orphans_warned:
                return 0
            self._orphans_warned = True
            log.warning(
                "S3 orphan cleanup skipped: s3_prefix is empty, so the bucket may hold other data; "
                "set s3_prefix, or s3_dedicated_bucket = true if only tusserver writes to %s",
                self.bucket,
            )
            return 0
        removed = 0
        paginator = self._client.get_paginator("list_multipart_uploads")
        try:
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for upload in page.get("Uploads", []):
                    name = upload["Key"][len(self.prefix) :]
                    if not is_valid_upload_id(name) or upload["Initiated"].timestamp() >= older_than:
                        continue
                    if not await self._records(name, upload["UploadId"]):
                        await self._abort({"Bucket": self.bucket, "Key": upload["Key"]}, upload["UploadId"])
                        removed += 1
            listed_info = None  # `<id>.info` sorts just before `<id>.part...`: no HEAD for those
            async for item in self._items():
                name = item["Key"][len(self.state_prefix) :]
                if name.endswith(".info"):
                    listed_info = name[: -len(".info")]
                upload_id = _chunk_owner(name)
                if upload_id is None or upload_id == listed_info or item["LastModified"].timestamp() >= older_than:
                    continue
                if name.endswith(".part") and not await self._tagged_tail(item["Key"]):
                    continue  # an older version's tail is recognised by its metadata only
                if not await self._has_info(upload_id):
                    await self._delete(item["Key"])
                    removed += 1
        except _STORAGE_ERRORS as exc:
            raise _unavailable(exc) from None
        return removed


def _chunk_owner(name: str) -> str | None:
    """The upload id a tail chunk's key (without the prefix) belongs to, else None.
    `<id>.part` is the tail of older versions."""
    if name.endswith(".part") and is_valid_upload_id(name[: -len(".part")]):
        return name[: -len(".part")]
    upload_id, found, rest = name.rpartition(TAIL_SUFFIX)
    next_part, _, start = rest.partition(".")
    if found and next_part.isdigit() and start.isdigit() and is_valid_upload_id(upload_id):
        return upload_id
    return None


async def _read_chunks(stream: Any) -> AsyncIterator[bytes]:
    """A GetObject body in chunks; a failure mid-way is storage.Unavailable,
    logged by whoever was sending the bytes."""
    try:
        async for chunk in stream.iter_chunks(READ_CHUNK):
            yield chunk
    except _STORAGE_ERRORS as exc:
        raise storage.Unavailable(f"reading the object failed: {exc or type(exc).__name__}") from None

