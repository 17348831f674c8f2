"""Every error the server can answer with: a machine code, an HTTP status and a message."""

from __future__ import annotations

import errno
from collections.abc import Mapping
from dataclasses import dataclass

from . import storage_errors as storage
from .storage_errors import StorageError


@dataclass(frozen=True)
class ErrorKind:
    code: str
    status: int
    message: str


# The one table. Handlers raise TusError(KIND); the middleware turns it into a response.
UNSUPPORTED_VERSION = ErrorKind("ERR_UNSUPPORTED_VERSION", 412, "Tus-Resumable must be 1.0.0")
METHOD_NOT_ALLOWED = ErrorKind("ERR_METHOD_NOT_ALLOWED", 405, "method not allowed on this resource")
NOT_FOUND = ErrorKind("ERR_UPLOAD_NOT_FOUND", 404, "upload not found")
GONE = ErrorKind("ERR_UPLOAD_EXPIRED", 410, "upload has expired")
INVALID_UPLOAD_LENGTH = ErrorKind("ERR_INVALID_UPLOAD_LENGTH", 400, "Upload-Length must be a non-negative integer")
INVALID_DEFER_LENGTH = ErrorKind("ERR_INVALID_DEFER_LENGTH", 400, "Upload-Defer-Length must be 1")
MISSING_LENGTH = ErrorKind(
    "ERR_MISSING_UPLOAD_LENGTH", 400, "Upload-Length or Upload-Defer-Length: 1 is required"
)
LENGTH_AND_DEFER = ErrorKind(
    "ERR_LENGTH_AND_DEFER", 400, "Upload-Length and Upload-Defer-Length must not both be set"
)
LENGTH_ALREADY_SET = ErrorKind(
    "ERR_LENGTH_ALREADY_SET", 400, "Upload-Length is already set and cannot be changed"
)
LENGTH_BELOW_OFFSET = ErrorKind(
    "ERR_LENGTH_BELOW_OFFSET", 400, "Upload-Length is smaller than the bytes already received"
)
INVALID_OFFSET = ErrorKind("ERR_INVALID_OFFSET", 400, "Upload-Offset must be a non-negative integer")
MISMATCHED_OFFSET = ErrorKind(
    "ERR_MISMATCHED_OFFSET", 409, "Upload-Offset does not match the upload's current offset"
)
INVALID_CONTENT_TYPE = ErrorKind(
    "ERR_INVALID_CONTENT_TYPE", 415, "Content-Type must be application/offset+octet-stream"
)
INVALID_CONTENT_LENGTH = ErrorKind(
    "ERR_INVALID_CONTENT_LENGTH", 400, "Content-Length must be a non-negative integer"
)
INVALID_METADATA = ErrorKind("ERR_INVALID_METADATA", 400, "Upload-Metadata is malformed")
CHECKSUM_BODY_TOO_LARGE = ErrorKind(
    "ERR_CHECKSUM_BODY_TOO_LARGE", 413, "a PATCH with Upload-Checksum carries too many bytes for this server"
)
MAX_SIZE_EXCEEDED = ErrorKind("ERR_MAX_SIZE_EXCEEDED", 413, "upload is larger than the server's maximum size")
EXCEEDS_UPLOAD_LENGTH = ErrorKind(
    "ERR_EXCEEDS_UPLOAD_LENGTH", 413, "request body goes past Upload-Length"
)
UPLOAD_NOT_FINISHED = ErrorKind("ERR_UPLOAD_NOT_FINISHED", 409, "upload is not finished yet")
UPLOAD_FINISHED = ErrorKind("ERR_UPLOAD_FINISHED", 413, "upload is already finished; no bytes fit")
INVALID_CHECKSUM = ErrorKind("ERR_INVALID_CHECKSUM", 400, "Upload-Checksum is malformed")
UNSUPPORTED_CHECKSUM = ErrorKind(
    "ERR_UNSUPPORTED_CHECKSUM_ALGORITHM", 400, "checksum algorithm is not supported"
)
CHECKSUM_MISMATCH = ErrorKind("ERR_CHECKSUM_MISMATCH", 460, "checksum does not match the request body")
INVALID_CONCAT = ErrorKind("ERR_INVALID_CONCAT", 400, "Upload-Concat is malformed")
PARTIAL_NOT_FOUND = ErrorKind("ERR_PARTIAL_NOT_FOUND", 404, "a partial upload named in Upload-Concat was not found")
FINAL_WITH_LENGTH = ErrorKind(
    "ERR_FINAL_WITH_LENGTH", 400, "a final upload must not carry Upload-Length: it is the sum of its partials"
)
NOT_PARTIAL = ErrorKind("ERR_NOT_PARTIAL", 400, "an upload named in Upload-Concat is not a partial upload")
DUPLICATE_PARTIAL = ErrorKind("ERR_DUPLICATE_PARTIAL", 400, "Upload-Concat names the same partial upload twice")
TOO_MANY_PARTIALS = ErrorKind(
    "ERR_TOO_MANY_PARTIALS", 400, "Upload-Concat names more partial uploads than the server allows"
)
TOO_MANY_FINALS = ErrorKind(
    "ERR_TOO_MANY_FINALS", 409, "a partial upload is already part of as many final uploads as the server allows"
)
FINAL_TOO_LARGE = ErrorKind(
    "ERR_FINAL_TOO_LARGE",
    413,
    "the partial uploads add up to more than the limit that applied when this final upload was created; "
    "it will not be completed",
)
PARTIAL_GONE = ErrorKind(
    "ERR_PARTIAL_GONE", 410, "a partial upload of this final upload was deleted; it will not be completed"
)
MODIFY_FINAL = ErrorKind("ERR_MODIFY_FINAL", 403, "a final concatenated upload cannot be patched")
UNSUPPORTED_EXTENSION = ErrorKind("ERR_UNSUPPORTED_EXTENSION", 400, "the store does not support this extension")
LOCKED = ErrorKind("ERR_UPLOAD_LOCKED", 423, "upload is in use by another request; retry shortly")
INTERRUPTED = ErrorKind(
    "ERR_UPLOAD_INTERRUPTED", 400, "interrupted by a newer request for this upload; the bytes received are kept"
)
CLIENT_GONE = ErrorKind("ERR_CLIENT_GONE", 400, "the request body ended before it was complete")
SHUTTING_DOWN = ErrorKind("ERR_SHUTTING_DOWN", 503, "server is shutting down; retry on another instance")
TOO_MANY_UPLOADS = ErrorKind("ERR_TOO_MANY_UPLOADS", 503, "server has too many uploads in progress; retry shortly")
TOO_MANY_DOWNLOADS = ErrorKind(
    "ERR_TOO_MANY_DOWNLOADS", 503, "server has too many downloads in progress; retry shortly"
)
TEMP_SPACE_EXHAUSTED = ErrorKind(
    "ERR_TEMP_SPACE_EXHAUSTED", 503, "server's temporary space is taken by other uploads; retry shortly"
)
READ_TIMEOUT = ErrorKind("ERR_READ_TIMEOUT", 408, "request body stalled for longer than the read timeout")
UPLOAD_TOO_SLOW = ErrorKind("ERR_UPLOAD_TOO_SLOW", 408, "request body arrived slower than the minimum upload rate")
INVALID_RANGE = ErrorKind("ERR_INVALID_RANGE", 416, "Range is not satisfiable")
INVALID_HEADER = ErrorKind("ERR_INVALID_HEADER", 400, "a request header is malformed")
AMBIGUOUS_HEADER = ErrorKind("ERR_AMBIGUOUS_HEADER", 400, "a tus header was sent with more than one value")
STORAGE_FULL = ErrorKind("ERR_STORAGE_FULL", 507, "server has no space left to store the upload")
STORAGE_UNAVAILABLE = ErrorKind("ERR_STORAGE_UNAVAILABLE", 503, "storage backend failed; retry later")
STORAGE_NOT_WRITABLE = ErrorKind(
    "ERR_STORAGE_NOT_WRITABLE", 500, "server cannot write to its storage or temp directory"
)
DOWNLOAD_DISABLED = ErrorKind("ERR_DOWNLOAD_DISABLED", 405, "downloads are disabled on this server")
UNAUTHORIZED = ErrorKind("ERR_UNAUTHORIZED", 401, "a valid Authorization bearer token is required")
FORBIDDEN = ErrorKind("ERR_FORBIDDEN", 403, "request was rejected")
INSUFFICIENT_SCOPE = ErrorKind("ERR_INSUFFICIENT_SCOPE", 403, "the bearer token does not allow this request")
AUTH_UNAVAILABLE = ErrorKind(
    "ERR_AUTH_UNAVAILABLE", 503, "the keys that verify bearer tokens could not be fetched; retry later"
)
DOWNLOAD_NOT_APPROVED = ErrorKind("ERR_DOWNLOAD_NOT_APPROVED", 403, "downloads need the approval of a pre-get hook")
HOOK_REJECTED = ErrorKind("ERR_HOOK_REJECTED", 403, "request was rejected by a hook")
HOOK_FAILED = ErrorKind("ERR_HOOK_FAILED", 500, "a server hook failed")
HOOK_UNAVAILABLE = ErrorKind("ERR_HOOK_UNAVAILABLE", 503, "the hook service did not answer; retry later")
UPLOAD_ID_TAKEN = ErrorKind("ERR_UPLOAD_ID_TAKEN", 409, "an upload with the id chosen by a hook already exists")
STORAGE_KEY_TAKEN = ErrorKind(
    "ERR_STORAGE_KEY_TAKEN", 409, "another upload in progress is writing to the same storage key"
)
APPEND_TOO_LARGE = ErrorKind("ERR_APPEND_TOO_LARGE", 413, "request body is larger than max_append_size")
METADATA_TOO_LARGE = ErrorKind("ERR_METADATA_TOO_LARGE", 413, "Upload-Metadata is larger than the server allows")
TOO_MANY_METADATA_KEYS = ErrorKind("ERR_TOO_MANY_METADATA_KEYS", 400, "Upload-Metadata has more keys than allowed")
QUOTA_EXCEEDED = ErrorKind("ERR_QUOTA_EXCEEDED", 413, "the owner's quota does not allow this")
INVALID_QUERY = ErrorKind("ERR_INVALID_QUERY", 400, "a query parameter is malformed")
# Only requests of the IETF draft (ietf.py) meet these.
MISSING_COMPLETE = ErrorKind("ERR_MISSING_UPLOAD_COMPLETE", 400, "the request must say whether it completes the upload")
INVALID_APPEND_TYPE = ErrorKind(
    "ERR_INVALID_CONTENT_TYPE", 415, "an append must carry Content-Type: application/partial-upload"
)
UNEXPECTED_UPLOAD_FIELDS = ErrorKind(
    "ERR_UNEXPECTED_UPLOAD_FIELDS", 400, "this request must not carry Upload-Offset or the completeness field"
)
INCONSISTENT_LENGTH = ErrorKind("ERR_INCONSISTENT_UPLOAD_LENGTH", 400, "the upload's length indicators disagree")
LENGTH_NOT_REACHED = ErrorKind(
    "ERR_LENGTH_NOT_REACHED", 400, "the upload was declared complete before the bytes reached its length"
)
INTERNAL = ErrorKind("ERR_INTERNAL", 500, "internal server error")

# Why a final upload can never complete, by the code its `.info` records.
FINAL_FAILURES = {kind.code: kind for kind in (FINAL_TOO_LARGE, PARTIAL_GONE)}


class TusError(Exception):
    """A failure that the client sees as `kind.status` with a one-line text body."""

    def __init__(
        self,
        kind: ErrorKind,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        status: int | None = None,
    ) -> None:
        self.kind = kind
        self.detail = detail
        self.headers = dict(headers or {})
        self.status = status if status is not None else kind.status
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return f"{self.kind.message}: {self.detail}" if self.detail else self.kind.message


_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR}


def from_storage(exc: StorageError) -> TusError:
    """The answer for a store's failure: the one place where storage meets HTTP."""
    kind = next(_STORAGE_KINDS[cls] for cls in type(exc).__mro__ if cls in _STORAGE_KINDS)
    if isinstance(exc, (storage.Corrupt, storage.BadPlacement)):
        return TusError(kind)  # the reason is the operator's (logged), not the client's
    headers = {"Retry-After": TEMP_SPACE_RETRY_AFTER} if isinstance(exc, storage.Full) else {}
    return TusError(kind, exc.detail, headers=headers)


TEMP_SPACE_RETRY_AFTER = "5"  # seconds a client is asked to wait when the temp budget is spent
_STORAGE_KINDS: dict[type[StorageError], ErrorKind] = {
    storage.NotFound: NOT_FOUND,
    storage.Unavailable: STORAGE_UNAVAILABLE,
    storage.Full: TEMP_SPACE_EXHAUSTED,
    storage.IdTaken: UPLOAD_ID_TAKEN,
    storage.KeyTaken: STORAGE_KEY_TAKEN,
    storage.BadPlacement: HOOK_FAILED,
    storage.OffsetMismatch: MISMATCHED_OFFSET,
    storage.TooLarge: MAX_SIZE_EXCEEDED,
    storage.BodyTooLarge: CHECKSUM_BODY_TOO_LARGE,
    storage.Corrupt: INTERNAL,
    storage.StorageError: STORAGE_UNAVAILABLE,  # a kind no table row names: the backend failed
}


def storage_error(exc: OSError) -> TusError | None:
    """The answer for a local disk failure (full disk, unwritable directory), or None
    for an OSError that is not one."""
    if exc.errno in _FULL:
        return TusError(STORAGE_FULL)
    if exc.errno in _NOT_WRITABLE:
        return TusError(STORAGE_NOT_WRITABLE)
    return None
