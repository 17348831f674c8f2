"""An S3 upload session (S3Upload): what one request that holds an upload's lock reads
and writes, and the part writer that turns a PATCH body into parts and tail chunks."""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import AsyncIterable
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from .. import storage_errors as storage
from ..cancellation import await_to_completion
from ..errors import TusError
from ..info import UploadInfo
from .s3_state import MAX_PART_SIZE, _Chunk, _State, deferred_max_size, part_size_for, uniform_part_size
from .spool import Piece, Spool

if TYPE_CHECKING:
    from .s3 import S3Store

log = logging.getLogger("tusserver.s3")

MERGE_FLOOR = 64 * 1024  # see merge_limit()
MERGE_SHARE = 64


class S3Upload:
    """One upload of an S3Store, for a caller that holds the upload's lock (S3Store.open),
    and valid only until it releases it: then another request may change what S3 holds.

    It holds what the request learnt: the state read when it was opened (used by the
    first append, or a finish, instead of a ListParts and a listing of the tail) and the
    parts an append that completed the upload stored (for the finish that follows)."""

    def __init__(self, store: S3Store, info: UploadInfo, state: _State | None) -> None:
        self.store = store
        self.info = info
        self._state = state  # None: not known, read from S3 when needed
        # The parts and the leftover tail chunk keys of the append that received the last byte.
        self._completed: tuple[list[dict[str, Any]], list[str]] | None = None

    async def _take_state(self) -> _State:
        """The state S3 holds, read now unless the session knows it; a change follows, after
        which it is not known any more."""
        state, self._state = self._state, None
        if state is not None and state.offset == self.info.offset:
            return state
        try:
            return await self.store._read_state(self.info)
        except ClientError:
            raise storage.NotFound() from None

    async def append(self, body: AsyncIterable[bytes], *, atomic: bool = False) -> int:
        """Store `body` at `info.offset`; see Store.append. Sets `info.offset` to the offset
        stored, also when `body` fails."""
        store, info = self.store, self.info
        store._forget(info.id)
        self._completed = None
        state = await self._take_state()
        if state.offset != info.offset:
            raise storage.OffsetMismatch(f"upload is at {state.offset}")
        writer = _PartWriter(store, info, state, atomic)
        error: BaseException | None = None
        try:
            async for chunk in body:
                await writer.write(chunk)
        except (Exception, asyncio.CancelledError) as exc:
            error = exc
        if atomic and error is not None:
            writer.discard()
            raise error

        async def settle() -> int:
            offset = await writer.flush()
            if error is not None and info.storage.get("object_stored") is not None:
                await store.save_info(info)  # no finish() follows: the written object must be known
            return offset

        # Keep what was received even when the request is being cancelled, and end only
        # when S3 has it: the caller releases the upload's lock when this returns.
        info.offset = await await_to_completion(settle())
        if error is not None:
            raise error
        if info.length is not None and info.offset == info.length:
            self._completed = (writer.parts(state), writer.leftover)
        return info.offset

    async def set_length(self, length: int) -> None:
        """Set the deferred length and save `.info`."""
        info = self.info
        store = self.store
        if length > store.max_object_size:
            raise storage.TooLarge(f"objects here are at most {store.max_object_size} bytes")
        part_size = info.storage.get("part_size")
        sent = bool(info.storage.get("upload_id")) or info.storage.get("object_stored") is not None
        if part_size:
            if not sent:
                # No part sent yet: the parts may still take the size this length needs.
                part_size = info.storage["part_size"] = uniform_part_size(
                    length, store.part_size, store.min_part_size, store.max_parts
                )
            elif length > part_size * store.max_parts:
                raise storage.TooLarge(
                    f"with parts of {part_size} bytes this upload holds at most {part_size * store.max_parts} bytes",)
        elif sent and length > deferred_max_size(store.max_parts):
            # The parts sent so far were sized for this much (see part_size_for).
            raise storage.TooLarge(
                f"a deferred-length upload holds at most {deferred_max_size(store.max_parts)} bytes here",)
        info.length = length
        await self.save_info()

    async def save_info(self) -> None:
        """Persist `info` (its `.info` record) as it is now."""
        await self.store.save_info(self.info)

    async def finish(self) -> None:
        """Complete the object from every byte received and mark the upload finished."""
        store, info = self.store, self.info
        if info.finished:
            return
        store._forget(info.id)
        completed, self._completed = self._completed, None
        if completed is not None:  # the append just before knows every part and ETag
            parts, leftover = completed
        else:
            state = await self._take_state()
            # Chunks may be left by a request that wrote the whole object, then failed.
            leftover = [c.key for c in state.tail + state.stale]
            parts = state.parts
            if state.tail:  # not reached via append(), which uploads the last part itself
                writer = _PartWriter(store, info, state, atomic=False)
                if await writer.flush() != info.length:
                    raise storage.Unavailable()
                parts, leftover = writer.parts(state), writer.leftover
        stored = info.storage.pop("object_stored", None)
        if stored is not None:
            info.storage["etag"] = stored
        else:
            await store._complete(info, parts)
        info.finished = True
        info.offset = info.length or 0
        await store.save_info(info)
        if leftover:  # after .info: until then, a crash leaves a resumable upload
            await store._delete_keys(leftover)
        await store._delete(store._marker(info.id))
        store._upload_ids.pop(info.id, None)
        store._remember_held(info, None)


class _Phase(enum.Enum):
    """Where the tail (the chain of chunks in front of part `first_part`) stands while
    one PATCH body is written. Moves only forward: PENDING -> ASSEMBLED | BROKEN."""

    PENDING = "pending"  # in S3, not read; the body's first bytes wait in the spool behind it
    ASSEMBLED = "assembled"  # read back once and joined with the body's first bytes into one piece
    BROKEN = "broken"  # reading it back failed: it stands as it is, and the body is dropped


class _Rest(enum.Enum):
    """What becomes of the bytes left when a body ends (see plan_rest)."""

    NONE = "none"  # nothing left to store
    PART = "part"  # the next part (the last one, or at least the smallest part size)
    WHOLE = "whole"  # every byte of the upload, and no multipart upload: one PutObject
    CHUNK = "chunk"  # too short to be a part: a tail chunk in front of the next part


def plan_rest(*, pending: int, rest: int, completes: bool, smallest: int, uniform: bool, whole: bool) -> _Rest:
    """The fate of what is left at the end of a body: `pending` bytes not in a part (a
    pending tail included), `rest` of them from this body."""
    if pending == 0:
        return _Rest.NONE
    if completes:
        return _Rest.WHOLE if whole else _Rest.PART
    if pending >= smallest and not uniform:
        return _Rest.PART
    return _Rest.CHUNK if rest else _Rest.NONE


def merge_limit(smallest: int) -> int:
    """Trailing chunks up to this many bytes in all are absorbed by the next chunk."""
    return max(MERGE_FLOOR, smallest // MERGE_SHARE)


def chunks_to_absorb(chain: list[_Chunk], limit: int) -> list[_Chunk]:
    """The trailing chunks of `chain`, at most `limit` bytes together, that the next
    chunk absorbs. Then any two neighbours hold more than `limit` bytes, so a tail of T
    bytes has at most 2T/limit + 1 chunks."""
    taken, size = 0, 0
    for chunk in reversed(chain):
        if size + chunk.size > limit:
            break
        size += chunk.size
        taken += 1
    return chain[len(chain) - taken :]


class _PartWriter:
    """One PATCH body on its way into parts: spooled to temp files, full pieces sent
    while the next is received, what is too short to be a part kept as a tail chunk.

    The tail already in S3 is read back only when its part is cut (`_Phase`)."""

    def __init__(self, store: S3Store, info: UploadInfo, state: _State, atomic: bool) -> None:
        self.store = store
        self.info = info
        self.atomic = atomic
        self.at = store._at(info)
        self.upload: str | None = info.storage.get("upload_id")  # created with the first part
        self.phase = _Phase.PENDING
        self.chain = state.tail
        self.stale = state.stale
        self.tail_size = sum(c.size for c in state.tail)
        self.first_part = len(state.parts) + 1
        self.next_part = self.first_part
        self.offset = state.offset - self.tail_size  # bytes in parts
        self.uniform = info.storage.get("part_size")
        cut = self._sizes()[0]
        # The first piece is what the body adds to the tail to make the part.
        self.spool = Spool(store.temp_dir, cut, store.temp, first_size=max(cut - self.tail_size, 1))
        self.received = 0
        # Spooled, to be sent by flush(): atomic bodies once they check out, and a piece
        # whose wait for an upload slot was interrupted.
        self.waiting: list[tuple[int, Piece]] = []
        self.short: Piece | None = None  # the rest, too short to be a part
        self.tasks: set[asyncio.Task] = set()
        self.sent: set[int] = set()
        self.stored: dict[int, dict[str, Any]] = {}  # part number -> PartNumber, ETag, Size
        self.failed: int | None = None  # lowest part number that could not be stored
        self.limit = asyncio.Semaphore(store.upload_concurrency)
        self.cleaned = False  # the chunks listed at the start are deleted

    def _sizes(self) -> tuple[int, int]:
        if self.uniform:
            return self.uniform, self.uniform
        return part_size_for(
            length=self.info.length,
            offset=self.offset,
            parts_used=self.next_part - 1,
            preferred=self.store.part_size,
            min_part=self.store.min_part_size,
            max_parts=self.store.max_parts,
        )

    async def write(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.atomic and self.received > self.store.checksum_limit:
            raise storage.BodyTooLarge(
                f"at most {self.store.checksum_limit} bytes per PATCH here; send smaller PATCHes",)
        await self.spool.awrite(chunk)
        await self._queue_filled()

    async def _queue_filled(self) -> None:
        # Taken one at a time: from then on _queue owns the piece (sends, keeps or removes it).
        while (piece := self.spool.take_filled()) is not None:
            await self._queue(piece)

    async def _queue(self, piece: Piece) -> None:
        if self.phase is _Phase.PENDING:
            piece = await self._assemble(piece)
        number = self.next_part
        self.next_part += 1
        self.offset += piece.size
        self.spool.piece_size = self._sizes()[0]
        if self.atomic:
            self.waiting.append((number, piece))
        else:
            await self._send(number, piece)

    async def _assemble(self, piece: Piece | None) -> Piece:
        """The tail read back (once) in front of `piece`: the bytes of part `first_part`.
        The chunks stay in S3 until that part is stored; the part makes them stale."""
        self.phase = _Phase.BROKEN
        if not self.chain:
            assert piece is not None
            self.phase = _Phase.ASSEMBLED
            return piece
        joined = Spool(self.store.temp_dir, MAX_PART_SIZE + 1, self.store.temp)
        try:
            await self.store._read_chunks_into(self.chain, joined)
            if piece is not None:
                await joined.acopy(piece)
            result = joined.cut()
        finally:
            joined.discard()
            if piece is not None:
                piece.remove()
        assert result is not None
        self.phase = _Phase.ASSEMBLED
        return result

    async def _send(self, number: int, piece: Piece) -> None:
        """Start uploading `piece`; waits for a free slot first (backpressure)."""
        if self.failed is not None:
            piece.remove()
            raise storage.Unavailable()
        if self.upload is None:
            try:
                self.upload = await self.store._start_upload(self.info)
            except BaseException:
                self.failed = number
                piece.remove()
                raise
        # Interrupted while waiting for a slot (a cancel), the piece stays the writer's:
        # flush() sends it, so its bytes are kept, or discard() removes its temp file.
        try:
            await self.limit.acquire()
        except BaseException:
            self.waiting.insert(0, (number, piece))
            raise
        try:
            await self.store._slots.acquire()
        except BaseException:
            self.limit.release()
            self.waiting.insert(0, (number, piece))
            raise
        task = asyncio.create_task(self._upload(number, piece))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _upload(self, number: int, piece: Piece) -> None:
        try:
            assert self.upload is not None
            etag = await self.store._upload_part(self.at, self.upload, number, piece)
            self.sent.add(number)
            self.stored[number] = {"PartNumber": number, "ETag": etag, "Size": piece.size}
        except Exception as exc:  # recorded: the PATCH fails with 503 once the rest settled
            log.warning("part %d of %s not stored: %s", number, self.info.id, exc)
            self.failed = number if self.failed is None else min(self.failed, number)
        finally:
            piece.remove()
            self.store._slots.release()
            self.limit.release()

    async def flush(self) -> int:
        """Send what is left, store the short rest, and return the safely stored offset."""
        try:
            return await self._flush()
        finally:
            self.discard()

    async def _flush(self) -> int:
        if self.phase is _Phase.BROKEN:
            return self.offset + self.tail_size  # the tail was not read in full: it stands
        error: BaseException | None = None
        try:
            await self._queue_filled()  # filled by a write that a cancel interrupted
            while self.waiting:
                number, piece = self.waiting.pop(0)
                await self._send(number, piece)
            await self._place_rest()
        except BaseException as exc:  # reported once every part in flight settled
            error = exc
        while self.tasks:
            await asyncio.gather(*self.tasks)
        await self._record_stale()
        if self.phase is _Phase.BROKEN or (error is not None and self.failed is None):
            assert error is not None
            raise error
        if self.failed is not None:
            raise storage.Unavailable()
        end = self.offset + (self.tail_size if self.phase is _Phase.PENDING else 0)
        if self.short is not None:
            end = await self._put_chunk(self.short)
        if self.phase is _Phase.ASSEMBLED and self.first_part in self.sent:
            await self._delete_chunks(self.chain + self.stale)  # behind a stored part: stale
            self.cleaned = True
        return end

    async def _place_rest(self) -> None:
        rest = self.spool.cut()
        pending = (rest.size if rest else 0) + (self.tail_size if self.phase is _Phase.PENDING else 0)
        plan = plan_rest(
            pending=pending,
            rest=rest.size if rest else 0,
            completes=self._complete(pending),
            smallest=self._sizes()[1],
            uniform=bool(self.uniform),
            whole=self.upload is None and self.next_part == 1,
        )
        if plan is _Rest.CHUNK:
            self.short = rest
            return
        if plan is _Rest.NONE:
            return
        if self.phase is _Phase.ASSEMBLED:
            assert rest is not None  # NONE is the plan when nothing is pending
            piece = rest
        else:
            piece = await self._assemble(rest)
        number = self.next_part
        self.next_part += 1
        self.offset += piece.size
        if plan is _Rest.WHOLE:
            await self._put_whole(piece)
        else:
            await self._send(number, piece)

    async def _put_chunk(self, piece: Piece) -> int:
        """Store `piece` as the next tail chunk; return the offset after it. Behind a
        pending tail it absorbs the small chunks at the tail's end (chunks_to_absorb),
        written over the key of the first of them: one PutObject switches to the new
        chain, and the others are left behind it (stale)."""
        if self.phase is _Phase.ASSEMBLED:  # a new tail, in front of the part after ours
            start, absorbed = self.offset, []
        else:
            start = self.offset + self.tail_size
            absorbed = chunks_to_absorb(self.chain, merge_limit(self._sizes()[1]))
        if absorbed:
            joined = Spool(self.store.temp_dir, MAX_PART_SIZE + 1, self.store.temp)
            try:
                await self.store._read_chunks_into(absorbed, joined)
                await joined.acopy(piece)
                merged = joined.cut()
                assert merged is not None
                piece.remove()
                self.short = piece = merged
                start = absorbed[0].start
            except (TusError, storage.StorageError):  # not read back: this body becomes a chunk of its own
                absorbed = []
            finally:
                joined.discard()
        if self.info.storage.get("tails") is False:
            # Before the first chunk exists: from then on every read lists the chunks.
            self.info.storage["tails"] = True
            await self.store.save_info(self.info)
        key = self.store._chunk_key(self.info.id, self.next_part, start)
        with piece.open() as f:
            await self.store._call("put_object", Key=key, Body=f, ContentLength=piece.size)
        if len(absorbed) > 1:
            await self._delete_chunks(absorbed[1:])
        if self.phase is _Phase.PENDING:
            await self._delete_chunks(self.stale)
        return start + piece.size

    async def _delete_chunks(self, chunks: list[_Chunk]) -> None:
        if chunks:
            await self.store._delete_keys([c.key for c in chunks])

    async def _put_whole(self, piece: Piece) -> None:
        try:
            async with self.store._slots:
                with piece.open() as f:
                    response = await self.store._call(
                        "put_object", Body=f, ContentLength=piece.size, **self.store._object_params(self.info)
                    )
        except Exception as exc:  # reported by flush(), like a failed part
            log.warning("object %s not stored: %s", self.info.id, exc)
            self.failed = 1
            return
        finally:
            piece.remove()
        self.info.storage["object_stored"] = response.get("ETag") or ""

    def parts(self, state: _State) -> list[dict[str, Any]]:
        """Every part of the upload after a flush() that stored all it was given."""
        return state.parts + [self.stored[n] for n in sorted(self.stored)]

    @property
    def leftover(self) -> list[str]:
        """Keys of the tail chunks that may still be in S3 after a completing flush()
        (finish() deletes them once `.info` says finished)."""
        return [] if self.cleaned else [c.key for c in self.chain + self.stale]

    def _complete(self, pending: int) -> bool:
        return self.info.length is not None and self.offset + pending == self.info.length

    async def _record_stale(self) -> None:
        """Parts stored after a part that failed hold bytes at no known offset; they
        are marked stale in `.info` until a later PATCH rewrites them."""
        stale = set(self.info.storage.get("stale_parts", []))
        updated = stale - self.sent
        if self.failed is not None:
            updated |= {n for n in self.sent if n > self.failed}
        if updated != stale:
            if updated:
                self.info.storage["stale_parts"] = sorted(updated)
            else:
                self.info.storage.pop("stale_parts", None)
            await self.store.save_info(self.info)

    def discard(self) -> None:
        """Remove every temp file this writer still holds."""
        for _, piece in self.waiting:
            piece.remove()
        self.waiting = []
        if self.short is not None:
            self.short.remove()
            self.short = None
        self.spool.discard()
