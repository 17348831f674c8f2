"""tus 1.0.0 header rules as pure functions: parse, validate, format. No I/O here."""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime
from urllib.parse import quote

from yarl import URL

from . import errors
from .errors import TusError

TUS_VERSION = "1.0.0"
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"

# Uploads are named by 128 random bits; hooks may choose their own names of the same alphabet.
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_DIGITS_RE = re.compile(r"[0-9]{1,20}")
_METADATA_KEY_RE = re.compile(r"[\x21-\x2b\x2d-\x7e]+")  # printable ASCII, no space or comma
_BASE64_RE = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")

CHECKSUM_ALGORITHMS: dict[str, int] = {  # name -> digest size in bytes
    "sha1": 20,
    "md5": 16,
    "sha256": 32,
    "sha512": 64,
    "crc32": 4,
}

Metadata = dict[str, "str | None"]


def new_upload_id() -> str:
    return secrets.token_hex(16)


def is_valid_upload_id(value: str) -> bool:
    return _ID_RE.fullmatch(value) is not None


def single_value(name: str, values: Sequence[str]) -> str | None:
    """The one value of the single-valued header `name`, given all its field lines
    (`headers.getall(name, [])`); None when it is absent.

    Field lines form one comma-separated list (RFC 9110 5.3), so `10, 20` in one line
    is two values, like two lines. Different values make the request ambiguous; the
    same value repeated is one value (as RFC 9110 8.6 allows for Content-Length)."""
    items = {item.strip() for value in values for item in value.split(",")}
    if len(items) > 1:
        raise TusError(errors.AMBIGUOUS_HEADER, f"{name} has {len(items)} different values")
    return items.pop() if items else None


def check_tus_resumable(value: str | None) -> None:
    if value != TUS_VERSION:
        raise TusError(errors.UNSUPPORTED_VERSION, headers={"Tus-Version": TUS_VERSION})


def _parse_uint(value: str, kind: errors.ErrorKind) -> int:
    value = value.strip()
    if not _DIGITS_RE.fullmatch(value):
        raise TusError(kind, f"got {value[:40]!r}")
    number = int(value)
    if number > 2**63 - 1:
        raise TusError(kind, "value is too large")
    return number


def parse_upload_length(value: str) -> int:
    return _parse_uint(value, errors.INVALID_UPLOAD_LENGTH)


def parse_upload_offset(value: str | None) -> int:
    if value is None:
        raise TusError(errors.INVALID_OFFSET, "header is missing")
    return _parse_uint(value, errors.INVALID_OFFSET)


def parse_content_length(value: str | None) -> int | None:
    if value is None:
        return None
    return _parse_uint(value, errors.INVALID_CONTENT_LENGTH)


def parse_defer_length(value: str | None) -> bool:
    if value is None:
        return False
    if value.strip() != "1":
        raise TusError(errors.INVALID_DEFER_LENGTH)
    return True


def parse_creation_length(length: str | None, defer: str | None) -> int | None:
    """The length a POST asks for; None means deferred."""
    deferred = parse_defer_length(defer)
    if length is not None and deferred:
        raise TusError(errors.LENGTH_AND_DEFER)
    if length is None and not deferred:
        raise TusError(errors.MISSING_LENGTH)
    return None if deferred else parse_upload_length(length or "")


def is_offset_content_type(value: str | None) -> bool:
    return value is not None and value.split(";", 1)[0].strip().lower() == OFFSET_CONTENT_TYPE


def check_content_type(value: str | None) -> None:
    if not is_offset_content_type(value):
        raise TusError(errors.INVALID_CONTENT_TYPE)


def _decode_base64(value: str) -> bytes:
    if not _BASE64_RE.fullmatch(value):
        raise ValueError("not strict base64")
    return base64.b64decode(value, validate=True)


def parse_metadata(value: str | None) -> Metadata:
    """Parse `key b64value, key2, ...`. Values are decoded UTF-8; bytes that are not
    UTF-8 survive through surrogateescape so HEAD returns exactly what was sent."""
    result: Metadata = {}
    if value is None or not value.strip():
        return result
    for pair in value.split(","):
        parts = pair.strip().split(" ")
        if len(parts) > 2 or not parts[0]:
            raise TusError(errors.INVALID_METADATA, f"bad pair {pair.strip()[:40]!r}")
        key = parts[0]
        if not _METADATA_KEY_RE.fullmatch(key):
            raise TusError(errors.INVALID_METADATA, f"key {key[:40]!r} is not printable ASCII")
        if key in result:
            raise TusError(errors.INVALID_METADATA, f"key {key!r} appears twice")
        if len(parts) == 1:
            result[key] = None
            continue
        try:
            raw = _decode_base64(parts[1])
        except (ValueError, binascii.Error):
            raise TusError(errors.INVALID_METADATA, f"value of {key!r} is not valid base64") from None
        result[key] = raw.decode("utf-8", "surrogateescape")
    return result


def format_metadata(metadata: Mapping[str, str | None]) -> str:
    pairs = []
    for key, value in metadata.items():
        if value is None:
            pairs.append(key)
        else:
            encoded = base64.b64encode(value.encode("utf-8", "surrogateescape")).decode("ascii")
            pairs.append(f"{key} {encoded}")
    return ",".join(pairs)


def is_valid_metadata(metadata: object) -> bool:
    """Whether `metadata` (e.g. from a hook) can be sent as Upload-Metadata."""
    return isinstance(metadata, dict) and all(
        isinstance(key, str) and _METADATA_KEY_RE.fullmatch(key) and (value is None or isinstance(value, str))
        for key, value in metadata.items()
    )


@dataclass(frozen=True)
class Checksum:
    algorithm: str
    digest: bytes


def parse_checksum(value: str | None, allowed: frozenset[str] | None = None) -> Checksum | None:
    if value is None:
        return None
    parts = value.strip().split(" ")
    if len(parts) != 2:
        raise TusError(errors.INVALID_CHECKSUM, "expected '<algorithm> <base64 digest>'")
    algorithm, encoded = parts[0].lower(), parts[1]
    size = CHECKSUM_ALGORITHMS.get(algorithm)
    if size is None or (allowed is not None and algorithm not in allowed):
        raise TusError(errors.UNSUPPORTED_CHECKSUM, f"{algorithm[:20]!r}")
    try:
        digest = _decode_base64(encoded)
    except (ValueError, binascii.Error):
        raise TusError(errors.INVALID_CHECKSUM, "digest is not valid base64") from None
    if len(digest) != size:
        # Well-formed, but no body can match it: known before the body is read.
        raise TusError(errors.CHECKSUM_MISMATCH, f"a {algorithm} digest has {size} bytes, not {len(digest)}")
    return Checksum(algorithm, digest)


@dataclass(frozen=True)
class Append:
    """A tus PATCH: where its body goes, and what it says of the upload."""

    offset: int
    length: int | None  # Upload-Length: sets a deferred length
    checksum: Checksum | None


def parse_append(
    content_type: str | None, offset: str | None, length: str | None, checksum: Checksum | None
) -> Append:
    """A PATCH's headers as an Append; a malformed one is refused before anything changes."""
    check_content_type(content_type)
    return Append(
        parse_upload_offset(offset), None if length is None else parse_upload_length(length), checksum
    )


@dataclass(frozen=True)
class Concat:
    """`partial`, or `final` with the URLs of its partials in order."""

    final: bool
    urls: tuple[str, ...] = ()


def parse_concat(value: str | None) -> Concat | None:
    if value is None:
        return None
    value = value.strip()
    if value == "partial":
        return Concat(final=False)
    if value.startswith("final;"):
        urls = tuple(u for u in value[len("final;"):].split(" ") if u)
        if not urls:
            raise TusError(errors.INVALID_CONCAT, "final lists no partial uploads")
        return Concat(final=True, urls=urls)
    raise TusError(errors.INVALID_CONCAT, "expected 'partial' or 'final;<url> <url> ...'")


def upload_id_from_url(url: str, base_path: str, origin: str) -> str:
    """The upload id that `url` names: a path under `base_path`, either relative or
    absolute with this server's `origin` (scheme://host[:port])."""
    try:
        parsed = URL(url)
        foreign = parsed.is_absolute() and parsed.origin() != URL(origin).origin()
    except (ValueError, TypeError):
        raise TusError(errors.INVALID_CONCAT, f"bad URL {url[:80]!r}") from None
    path = parsed.path
    upload_id = path[len(base_path):] if path.startswith(base_path) else ""
    if foreign or parsed.query_string or not is_valid_upload_id(upload_id):
        raise TusError(errors.INVALID_CONCAT, f"{url[:80]!r} is not an upload of this server")
    return upload_id


def http_date(timestamp: float) -> str:
    return format_datetime(datetime.fromtimestamp(timestamp, timezone.utc), usegmt=True)


# Types a browser may render inline without running anything from our origin. Everything
# else (HTML, SVG, XML, JavaScript, PDF with its scripts, unknown types) is an octet-stream
# attachment, whatever `filetype` says.
_INLINE_TYPES = re.compile(
    r"(image/(png|jpeg|gif|webp|avif|bmp|x-icon|vnd\.microsoft\.icon)"
    r"|video/[a-z0-9.+-]+|audio/[a-z0-9.+-]+|text/plain)"
)
# On every download: no sniffing into an active type; a sandbox (no scripts, no same-origin
# access, no forms) should a browser render it anyway; and a download link's `?token=` does not
# leave in a Referer.
DOWNLOAD_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "sandbox",
    "Referrer-Policy": "no-referrer",
}


def download_headers(metadata: Mapping[str, str | None]) -> dict[str, str]:
    """The headers of a GET: Content-Type and Content-Disposition from `filetype` and
    `filename`, and DOWNLOAD_SECURITY_HEADERS."""
    filetype = (metadata.get("filetype") or "").strip().lower()
    inline = _INLINE_TYPES.fullmatch(filetype) is not None
    content_type = filetype if inline else "application/octet-stream"
    disposition = "inline" if inline else "attachment"
    filename = metadata.get("filename")
    if filename:
        filename = filename.encode("utf-8", "replace").decode("utf-8")
        ascii_name = "".join(
            c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else "_" for c in filename
        )
        disposition += f'; filename="{ascii_name}"; filename*=UTF-8\'\'{quote(filename, safe="")}'
    return {"Content-Type": content_type, "Content-Disposition": disposition, **DOWNLOAD_SECURITY_HEADERS}
