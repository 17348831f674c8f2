"""Names in the owners' index, shared by the stores that keep one (see owners.py).

One entry per upload and index key, named `<inverted creation time in ms>-<id>`, so that
names sort newest first. The keys are `all` (every upload, for admins) and a hash of the
owner: no owner string ever becomes part of a path or an S3 key.
"""

from __future__ import annotations

import hashlib
import re

from ..info import UploadInfo

ALL = "all"  # the index of every upload
MAX_OWNER = 256  # characters of an owner a hook may set
_NEVER_MS = 10**13  # 2286-11-20: inverted creation times keep 13 digits until then
_ENTRY = re.compile(r"[0-9]{13}-[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_KEY = re.compile(r"all|[0-9a-f]{32}")


def is_valid_owner(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_OWNER and value.isprintable()


def owner_key(owner: str) -> str:
    """The index key of an owner: a hash, safe in any path or S3 key."""
    return hashlib.sha256(owner.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def index_keys(info: UploadInfo) -> list[str]:
    return [ALL] if info.owner is None else [ALL, owner_key(info.owner)]


def entry_name(info: UploadInfo) -> str:
    return f"{_NEVER_MS - 1 - int(info.created * 1000):013d}-{info.id}"


def entry_created(entry: str) -> float:
    return (_NEVER_MS - 1 - int(entry[:13])) / 1000


def entry_upload(entry: str) -> str:
    return entry[14:]


def is_entry(value: str) -> bool:
    return _ENTRY.fullmatch(value) is not None


def is_index_key(value: str) -> bool:
    return _KEY.fullmatch(value) is not None
