"""What S3 holds of one upload, and how its parts are sized: the pure part of the S3
store, shared by the store (s3.py) and its upload sessions (s3_upload.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..info import UploadInfo

MiB = 1 << 20
GiB = 1 << 30
MAX_PARTS = 10_000
MAX_PART_SIZE = 5 * GiB
MAX_OBJECT_SIZE = 5 * 1024 * GiB


def max_object_size(max_parts: int = MAX_PARTS) -> int:
    """The largest object `max_parts` parts can make: 5 TiB, or less with fewer parts
    (1,000 parts of at most 5 GiB)."""
    return min(MAX_OBJECT_SIZE, max_parts * MAX_PART_SIZE)


def deferred_free_parts(max_parts: int = MAX_PARTS) -> int:
    """Parts a deferred-length upload may cut at the preferred size: half the budget.
    The other half still reaches deferred_max_size with parts of at most 5 GiB (about
    1 GiB with 10,000 parts)."""
    return max_parts // 2


def deferred_max_size(max_parts: int = MAX_PARTS) -> int:
    """The most a deferred-length upload is sure to hold, whatever it sent before its
    length was known: 5 TiB with 10,000 parts, 2.44 TiB with 1,000."""
    return min(MAX_OBJECT_SIZE, (max_parts - deferred_free_parts(max_parts)) * MAX_PART_SIZE)


def part_size_for(
    *, length: int | None, offset: int, parts_used: int, preferred: int, min_part: int, max_parts: int = MAX_PARTS
) -> tuple[int, int]:
    """(size to cut the next part at, smallest tail that may be a non-final part),
    such that the upload never needs more than `max_parts` parts."""
    if length is None:
        remaining, left = deferred_max_size(max_parts) - offset, max_parts - parts_used
        need = 0 if left > deferred_free_parts(max_parts) else math.ceil(max(remaining, 0) / max(left, 1))
    else:
        need = math.ceil(max(length - offset, 0) / max(max_parts - parts_used, 1))
    smallest = max(min_part, need)
    return min(max(preferred, smallest), MAX_PART_SIZE), smallest


def uniform_part_size(length: int | None, preferred: int, min_part: int, max_parts: int = MAX_PARTS) -> int:
    """The one part size of an upload whose non-final parts must all be equal (R2).

    Without a length it is the preferred size: `.part` holds less than one part and is
    re-read by every PATCH, so a part sized for 5 TiB would make a deferred upload
    quadratic. Such an upload holds at most `max_parts` parts of it (see set_length)."""
    need = 0 if length is None else math.ceil(length / max_parts)
    return min(max(preferred, min_part, need), MAX_PART_SIZE)


@dataclass(frozen=True)
class _Chunk:
    """One tail object: `size` bytes from upload offset `start`, in front of part `next_part`."""

    key: str
    next_part: int
    start: int
    size: int


def may_have_chunks(info: UploadInfo) -> bool:
    """False once `.info` says no tail chunk was ever written (`tails`, set to true before
    the first one is); `.info` from before the flag has none and may have chunks."""
    return info.storage.get("tails", True) is not False


def tail_chain(chunks: list[_Chunk], next_part: int, start: int) -> tuple[list[_Chunk], list[_Chunk]]:
    """(the tail: the chunks for `next_part` chained from offset `start` on, every other chunk)."""
    by_start = {c.start: c for c in chunks if c.next_part == next_part and c.size > 0}
    chain: list[_Chunk] = []
    while start in by_start:
        chain.append(by_start.pop(start))
        start += chain[-1].size
    on_chain = {c.key for c in chain}
    return chain, [c for c in chunks if c.key not in on_chain]


@dataclass
class _State:
    """What S3 holds of an unfinished upload right now."""

    parts: list[dict[str, Any]]  # contiguous from part 1: PartNumber, ETag, Size
    tail: list[_Chunk]  # the chain of chunks in front of the next part
    stale: list[_Chunk]  # chunks off the chain, to delete
    stored: int = 0  # bytes of an object written whole, without a multipart upload

    @property
    def offset(self) -> int:
        return sum(p["Size"] for p in self.parts) + sum(c.size for c in self.tail) + self.stored
