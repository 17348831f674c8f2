"""Where a finished upload lands: its storage key (and S3 bucket), apart from its id.

The id is random and is what URLs carry; the storage key is where the bytes go, relative
to the store's root (`file_dir`, `s3_prefix`). It comes from `storage_key_template` or a
pre-create hook. A key is only ever a name under that root: keys are checked here, once,
before any store sees them, and stores refuse any key that `check_key` refuses.
"""

from __future__ import annotations

import re
import string
import time
from dataclasses import dataclass, field

from .protocol import is_valid_upload_id

MAX_KEY_BYTES = 1024  # S3's limit on an object key
DEFAULT_TEMPLATE = "{id}"
PLACEHOLDERS = ("id", "owner", "yyyy", "mm", "dd", "ext")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# What the stores name their own files and objects next to the data, for an upload id:
# `<id>.info`, `<id>.part[.<n>.<start>]`, `<id>.finals`, `<id>.tmp-...`. A key named like
# one could overwrite another upload's state.
_STATE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}\.(info|part(\.\d+\.\d+)?|finals|tmp-.*)")
_SAFE_PART = re.compile(r"[^A-Za-z0-9._@+=-]")
_EXT = re.compile(r"\.([A-Za-z0-9]{1,16})$")


@dataclass(frozen=True)
class Placement:
    """Where one upload's data goes, as a pre-create hook or the template chose it.

    `key`: relative to the store's root, checked by `check_key`. `bucket`: for the S3
    store, another bucket from `s3_allowed_buckets` (None: the configured one).
    `cache_control`, `storage_class`, `tags`: per-upload object settings, within what
    the configuration allows (the S3 store checks them)."""

    key: str
    bucket: str | None = None
    cache_control: str | None = None
    storage_class: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    def is_default(self, upload_id: str) -> bool:
        """Whether nothing is chosen: the data goes where it always went, under the
        upload's id, with the configured object settings."""
        return (
            self.key == upload_id
            and self.bucket is None
            and self.cache_control is None
            and self.storage_class is None
            and not self.tags
        )


def check_key(key: object) -> str | None:
    """Why `key` may not be a storage key, or None when it may: a relative name of at
    most 1,024 UTF-8 bytes, segments separated by single `/`, none of them `.` or `..`,
    no control characters or backslashes, and a first segment that is neither hidden
    (the stores' own `.owners`, `.unfinished`, `.keys`) nor named like an upload's state."""
    if not isinstance(key, str) or not key:
        return "the key is empty or not a string"
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        return "the key is not valid UTF-8"
    if size > MAX_KEY_BYTES:
        return f"the key is {size} bytes; at most {MAX_KEY_BYTES}"
    if _CONTROL.search(key) or "\\" in key:
        return "the key holds a control character or a backslash"
    if key.startswith("/"):
        return "the key starts with /"
    segments = key.split("/")
    if any(s in ("", ".", "..") for s in segments):
        return "the key has an empty, . or .. segment"
    if segments[0].startswith("."):
        return "the key's first segment starts with a dot (reserved for the server's own files)"
    if _STATE_NAME.fullmatch(segments[0]):
        return "the key's first segment is named like an upload's state (<id>.info, <id>.part, ...)"
    return None


def key_problem(key: object, upload_id: str) -> str | None:
    """Why `key` may not be the storage key of upload `upload_id` in a store's root, or
    None: check_key, and not another upload's id alone, which is where an upload created
    without a chosen key keeps its bytes."""
    problem = check_key(key)
    if problem is None and isinstance(key, str) and "/" not in key and key != upload_id and is_valid_upload_id(key):
        return "the key is another upload's id, where that upload keeps its bytes"
    return problem


def _safe(value: str) -> str:
    """A placeholder value as one harmless path segment."""
    return _SAFE_PART.sub("_", value)[:128].lstrip(".") or "_"


def file_extension(filename: str | None) -> str:
    """`.pdf` for `report.PDF`: the filename's last extension, lowercased, letters and
    digits only (at most 16); empty without one."""
    match = _EXT.search(filename or "")
    return "." + match.group(1).lower() if match else ""


def render_key(template: str, *, upload_id: str, owner: str | None, filename: str | None, created: float) -> str:
    """`template` with its placeholders filled in; the values are made safe, so only the
    template's own text can add segments."""
    day = time.gmtime(created)
    values = {
        "id": upload_id,
        "owner": _safe(owner) if owner else "anonymous",
        "yyyy": f"{day.tm_year:04d}",
        "mm": f"{day.tm_mon:02d}",
        "dd": f"{day.tm_mday:02d}",
        "ext": file_extension(filename),
    }
    return template.format_map(values)


def check_template(template: str) -> str | None:
    """Why `template` cannot be a storage_key_template, or None: known placeholders only,
    `{id}` among them (two uploads must never get one key from it), and the keys it
    makes must pass check_key."""
    try:
        fields = [name for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        return f"it does not parse: {exc}"
    unknown = sorted(set(fields) - set(PLACEHOLDERS))
    if unknown:
        return f"unknown placeholder {{{unknown[0]}}}; known: " + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
    if "id" not in fields:
        return "it must contain {id}, so that no two uploads get the same key"
    sample = render_key(template, upload_id="0" * 32, owner="alice", filename="x.pdf", created=0.0)
    problem = check_key(sample)
    return None if problem is None else f"it makes keys like {sample!r}: {problem}"
