"""Object policy: what the S3 store's final object carries besides its bytes.

Content-Type and Content-Disposition come from the sanitised metadata (never an active
type), Cache-Control, storage class, server-side encryption and tags from the
configuration, and a pre-create hook may choose a storage class, Cache-Control and more
tags per upload within what the configuration allows (`resolve`, checked once at
creation and kept in `.info` as `storage["object"]`). Pure rules: no I/O.

Every value is bounded so that CreateMultipartUpload / PutObject stays within S3's 8 KiB
of request headers: user metadata 2,000 bytes (+15 per key, at most 32 keys),
Content-Disposition and Cache-Control 1 KiB each, Tagging 2 KiB, Content-Type 255 bytes,
the rest (signature, SSE, host) under 1 KiB, besides a configured KMS key id.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from .. import storage_errors as storage
from ..config import Config
from ..info import UploadInfo
from ..placement import Placement
from ..protocol import download_headers

log = logging.getLogger("tusserver.s3")

# The classes PutObject and CreateMultipartUpload accept (botocore's model, without the
# FSx and Backup ones, which are not for objects written through the S3 API).
STORAGE_CLASSES = (
    "STANDARD",
    "REDUCED_REDUNDANCY",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER",
    "DEEP_ARCHIVE",
    "OUTPOSTS",
    "GLACIER_IR",
    "SNOW",
    "EXPRESS_ONEZONE",
)
SSE_MODES = ("AES256", "aws:kms")
DEFAULT_METADATA_KEYS = ("filename", "filetype")  # what tusd and Uppy clients send
ALL_KEYS = "*"

MAX_USER_METADATA = 2000  # bytes; S3 allows 2 KiB of user metadata in all
# Keys of user metadata; ours: each is a header of its own (x-amz-meta-<key>), and 2 KiB of
# one- and two-letter keys would be about 16 KiB of headers.
MAX_USER_METADATA_KEYS = 32
MAX_TAGS = 10  # S3's limits on object tags
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 256
MAX_TAGGING = 2048  # bytes of the URL-encoded Tagging header: ours, see the module docstring
MAX_CACHE_CONTROL = 1024
MAX_DISPOSITION = 1024
MAX_CONTENT_TYPE = 255  # RFC 6838: 127 for the type and the subtype each

_META_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
# S3 tags: letters, digits and spaces in any script, and + - = . _ : / @
_TAG_TEXT = re.compile(r"[\w +\-=.:/@]*")
# RFC 9111: comma-separated directives, each a token with an optional token or quoted value.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_DIRECTIVE = rf'{_TOKEN}(?:=(?:{_TOKEN}|"[ !#-\[\]-~]*"))?'
_CACHE_CONTROL = re.compile(rf"{_DIRECTIVE}(?: *, *{_DIRECTIVE})*")


def s3_metadata(metadata: Mapping[str, str | None]) -> dict[str, str]:
    """tus metadata as S3 user metadata: ASCII keys and values only, within 2 KiB and
    32 keys. The original, in full, stays in `.info`."""
    out: dict[str, str] = {}
    used = 0
    for key, value in metadata.items():
        if len(out) == MAX_USER_METADATA_KEYS:
            break
        safe_key = _META_KEY_UNSAFE.sub("_", key)
        safe_value = "" if value is None else value.encode("utf-8", "surrogateescape").decode("ascii", "replace")
        safe_value = "".join(c if " " <= c <= "~" else "?" for c in safe_value)
        used += len(safe_key) + len(safe_value)
        if used > MAX_USER_METADATA:
            break
        out[safe_key] = safe_value
    return out


def check_storage_class(value: object) -> str | None:
    """Why `value` is no S3 storage class, or None."""
    if value not in STORAGE_CLASSES:
        return f"unknown storage class {value!r}; known: {', '.join(STORAGE_CLASSES)}"
    return None


def check_cache_control(value: object) -> str | None:
    """Why `value` may not be a Cache-Control header, or None: directives as RFC 9111
    writes them (`max-age=3600, public`), printable ASCII, at most 1 KiB."""
    if not isinstance(value, str):
        return "Cache-Control must be a string"
    if len(value) > MAX_CACHE_CONTROL:
        return f"Cache-Control is {len(value)} characters; at most {MAX_CACHE_CONTROL}"
    if not _CACHE_CONTROL.fullmatch(value):
        return f"Cache-Control {value[:80]!r} is not a list of directives like 'max-age=3600, public'"
    return None


def check_tags(tags: object) -> str | None:
    """Why `tags` may not be an object's tags, or None: S3's limits (at most 10; keys of
    1 to 128 characters, values of at most 256; letters, digits, spaces and + - = . _ : / @;
    no `aws:` keys) and at most 2 KiB URL-encoded."""
    if not isinstance(tags, Mapping):
        return "tags must be a mapping of names to values"
    if len(tags) > MAX_TAGS:
        return f"{len(tags)} tags; S3 allows at most {MAX_TAGS}"
    for key, value in tags.items():
        if not isinstance(key, str) or not isinstance(value, str):
            return "tag names and values must be strings"
        if not 1 <= len(key) <= MAX_TAG_KEY:
            return f"tag name {key[:40]!r}: 1 to {MAX_TAG_KEY} characters"
        if len(value) > MAX_TAG_VALUE:
            return f"tag {key!r}: the value is {len(value)} characters; at most {MAX_TAG_VALUE}"
        if not _TAG_TEXT.fullmatch(key) or not _TAG_TEXT.fullmatch(value):
            return f"tag {key[:40]!r}: only letters, digits, spaces and + - = . _ : / @"
        if key.lower().startswith("aws:"):
            return f"tag {key!r}: names starting with aws: are reserved"
    if len(_tagging(tags)) > MAX_TAGGING:
        return f"the tags are more than {MAX_TAGGING} bytes URL-encoded"
    return None


def parse_tags(items: Iterable[str]) -> dict[str, str]:
    """`["team=media", "env=prod"]` as a dict; ValueError for an item without `=`."""
    tags: dict[str, str] = {}
    for item in items:
        key, found, value = item.partition("=")
        if not found:
            raise ValueError(f"{item!r} is not name=value")
        if key in tags:
            raise ValueError(f"tag {key!r} is given twice")
        tags[key] = value
    return tags


def _tagging(tags: Mapping[str, str]) -> str:
    return urlencode(dict(tags), quote_via=quote)


def _shortened(filename: str) -> str:
    """`filename` with its stem halved, keeping a short extension; empty in the end."""
    stem, ext = os.path.splitext(filename)
    if len(ext) > 17:
        stem, ext = filename, ""
    return stem[: len(stem) // 2] + ext if stem else ""


def object_headers(metadata: Mapping[str, str | None]) -> tuple[str, str]:
    """(Content-Type, Content-Disposition) of the object, as a GET would answer them, but
    bounded: an overlong type becomes application/octet-stream, and an overlong filename
    is shortened (its extension kept) until the disposition fits in 1 KiB."""
    fields = dict(metadata)
    headers = download_headers(fields)
    if len(headers["Content-Type"]) > MAX_CONTENT_TYPE:
        fields["filetype"] = None
        headers = download_headers(fields)
    while len(headers["Content-Disposition"]) > MAX_DISPOSITION and fields.get("filename"):
        fields["filename"] = _shortened(fields["filename"] or "")
        headers = download_headers(fields)
    return headers["Content-Type"], headers["Content-Disposition"]


@dataclass(frozen=True)
class ObjectPolicy:
    """The settings of the final objects; ValueError (naming the config key) for a value
    S3 would refuse. The default is what the store always did, plus Content-Disposition
    and the metadata allow-list."""

    cache_control: str | None = None
    storage_class: str | None = None
    allowed_storage_classes: tuple[str, ...] = ()
    sse: str | None = None
    sse_kms_key_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    metadata_keys: tuple[str, ...] = DEFAULT_METADATA_KEYS

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem is not None:
            raise ValueError(problem)

    def _problem(self) -> str | None:
        if self.cache_control is not None and (why := check_cache_control(self.cache_control)):
            return f"s3_cache_control: {why}"
        if self.storage_class is not None and (why := check_storage_class(self.storage_class)):
            return f"s3_storage_class: {why}"
        for name in self.allowed_storage_classes:
            if why := check_storage_class(name):
                return f"s3_allowed_storage_classes: {why}"
        if self.sse is not None and self.sse not in SSE_MODES:
            return f"s3_sse must be one of {', '.join(SSE_MODES)}, got {self.sse!r}"
        if self.sse_kms_key_id is not None and self.sse != "aws:kms":
            return 's3_sse_kms_key_id needs s3_sse = "aws:kms"'
        if self.sse_kms_key_id is not None and not re.fullmatch(r"[\x21-\x7e]{1,2048}", self.sse_kms_key_id):
            return "s3_sse_kms_key_id must be a key id, ARN or alias without spaces"
        if why := check_tags(self.tags):
            return f"s3_tags: {why}"
        if ALL_KEYS in self.metadata_keys and len(self.metadata_keys) > 1:
            return f's3_metadata_keys: "{ALL_KEYS}" (every key) stands alone'
        if any(not key for key in self.metadata_keys):
            return "s3_metadata_keys: a key is empty"
        return None

    @classmethod
    def from_config(cls, config: Config) -> ObjectPolicy:
        try:
            tags = parse_tags(config.s3_tags)
        except ValueError as exc:
            raise ValueError(f"s3_tags: {exc}") from None
        return cls(
            cache_control=config.s3_cache_control,
            storage_class=config.s3_storage_class,
            allowed_storage_classes=tuple(config.s3_allowed_storage_classes),
            sse=config.s3_sse,
            sse_kms_key_id=config.s3_sse_kms_key_id,
            tags=tags,
            metadata_keys=tuple(config.s3_metadata_keys),
        )

    @property
    def storage_classes(self) -> frozenset[str]:
        """The classes a pre-create hook may choose: the configured one (STANDARD when
        unset) and s3_allowed_storage_classes."""
        return frozenset((self.storage_class or "STANDARD", *self.allowed_storage_classes))

    def resolve(self, placement: Placement) -> dict[str, Any]:
        """The object settings a pre-create hook chose, checked against the configuration,
        for `.info`'s `storage["object"]`; tags are merged with the configured ones (the
        hook's value wins for a name in both). storage.BadPlacement (logged) otherwise."""
        chosen: dict[str, Any] = {}
        if placement.storage_class is not None:
            if not isinstance(placement.storage_class, str) or placement.storage_class not in self.storage_classes:
                allowed = ", ".join(sorted(self.storage_classes))
                self._refuse(f"storage class {placement.storage_class!r} is not allowed; allowed: {allowed}")
            chosen["storage_class"] = placement.storage_class
        if placement.cache_control is not None:
            if why := check_cache_control(placement.cache_control):
                self._refuse(why)
            chosen["cache_control"] = placement.cache_control
        if placement.tags:
            if not isinstance(placement.tags, Mapping):
                self._refuse("tags must be a mapping of names to values")
            merged = {**self.tags, **placement.tags}
            if why := check_tags(merged):
                self._refuse(f"with the configured s3_tags, {why}")
            chosen["tags"] = merged
        return chosen

    @staticmethod
    def _refuse(why: str) -> None:
        log.error("pre-create hook chose object settings the configuration does not allow: %s", why)
        raise storage.BadPlacement(why)

    def user_metadata(self, metadata: Mapping[str, str | None]) -> dict[str, str]:
        """The allow-listed Upload-Metadata keys as S3 user metadata."""
        if ALL_KEYS not in self.metadata_keys:
            metadata = {key: value for key, value in metadata.items() if key in self.metadata_keys}
        return s3_metadata(metadata)

    def encryption(self) -> dict[str, str]:
        """The server-side encryption parameters of a PutObject or CreateMultipartUpload."""
        params: dict[str, str] = {}
        if self.sse is not None:
            params["ServerSideEncryption"] = self.sse
        if self.sse_kms_key_id is not None:
            params["SSEKMSKeyId"] = self.sse_kms_key_id
        return params

    def params(self, info: UploadInfo) -> dict[str, Any]:
        """What the final object of `info` carries besides its bytes and key: the
        parameters of its CreateMultipartUpload or PutObject."""
        chosen: Mapping[str, Any] = info.storage.get("object") or {}
        content_type, disposition = object_headers(info.metadata)
        params: dict[str, Any] = {
            "ContentType": content_type,
            "ContentDisposition": disposition,
            "Metadata": self.user_metadata(info.metadata),
            **self.encryption(),
        }
        cache_control = chosen.get("cache_control", self.cache_control)
        if cache_control is not None:
            params["CacheControl"] = cache_control
        storage_class = chosen.get("storage_class", self.storage_class)
        if storage_class is not None:
            params["StorageClass"] = storage_class
        tags = chosen.get("tags", self.tags)
        if tags:
            params["Tagging"] = _tagging(tags)
        return params
