"""Rules of "Resumable Uploads for HTTP" (draft-ietf-httpbis-resumable-upload) as pure
functions: which interop versions we speak and how they differ, the draft's header fields
(structured-field items), the 104 interim response, Upload-Limit and problem details.
No I/O here; ietf_handlers.py is the HTTP side."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from urllib.parse import unquote

from . import errors
from .errors import ErrorKind, TusError

INTEROP_HEADER = "Upload-Draft-Interop-Version"
PARTIAL_UPLOAD = "application/partial-upload"
PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://iana.org/assignments/http-problem-types#"
MISMATCHING_OFFSET = "mismatching-upload-offset"
INCONSISTENT_LENGTH = "inconsistent-upload-length"
COMPLETED_UPLOAD = "completed-upload"


@dataclass(frozen=True)
class Dialect:
    """One interop version of the draft, and what sets it apart from the others."""

    interop: int
    drafts: str  # the draft revisions that carry this interop version
    clients: str  # who is known to send it
    # -01 says "Upload-Incomplete: ?1" where later drafts say "Upload-Complete: ?0".
    inverted: bool = False
    # From -04 a PATCH must be labelled application/partial-upload.
    partial_upload_type: bool = True
    # Up to -05 a PATCH without the completeness field was the last one; from -06 it is required.
    complete_by_default: bool = False
    # Upload-Limit exists from -04; its lifetime key was `expires` until -06 renamed it `max-age`.
    limits: bool = True
    age_key: str = "max-age"
    # The problem types the revision defines (RFC 9457).
    problem_types: frozenset[str] = frozenset({MISMATCHING_OFFSET, INCONSISTENT_LENGTH})
    # Up to -05, HEAD and DELETE carrying Upload-Offset or the completeness field were a 400.
    strict_head_delete: bool = False
    # From -12 a GET on the upload resource retrieves the offset like HEAD.
    get_is_offset_retrieval: bool = True

    @property
    def complete_field(self) -> str:
        return "Upload-Incomplete" if self.inverted else "Upload-Complete"

    def complete_value(self, complete: bool) -> str:
        """The completeness field's value that says `complete`."""
        return "?1" if complete != self.inverted else "?0"


_V5 = Dialect(
    5,
    "-03",
    "Apple URLSession (iOS 18.0, macOS 15.0); tus-js-client protocol 'ietf-draft-03'",
    partial_upload_type=False,
    complete_by_default=True,
    limits=False,
    problem_types=frozenset(),
    strict_head_delete=True,
    get_is_offset_retrieval=False,
)
# -01 is -03 with the completeness field inverted (Upload-Incomplete).
_V3 = replace(_V5, interop=3, drafts="-01", clients="Apple URLSession (iOS 17, macOS 14)", inverted=True)
_V6 = Dialect(
    6,
    "-04, -05",
    "Apple URLSession (iOS 18.1+, macOS 15.1+); tus-js-client protocol 'ietf-draft-05'",
    complete_by_default=True,
    age_key="expires",
    problem_types=frozenset({MISMATCHING_OFFSET, COMPLETED_UPLOAD}),
    strict_head_delete=True,
    get_is_offset_retrieval=False,
)
_V8 = Dialect(
    8,
    "-09, -10, -11",
    "Apple URLSession (seen from iOS 26)",
    problem_types=frozenset({MISMATCHING_OFFSET, INCONSISTENT_LENGTH, COMPLETED_UPLOAD}),
    get_is_offset_retrieval=False,
)
_V9 = Dialect(9, "-12", "servers and clients pinned to -12")
_V10 = Dialect(10, "-13 and later (-15: see LATEST)", "the latest text")

# The one table of interop versions we speak. A request with any other version (or none)
# is not a draft request: it is answered as plain tus, exactly as before.
DIALECTS: dict[int, Dialect] = {d.interop: d for d in (_V3, _V5, _V6, _V8, _V9, _V10)}
# The newest interop version known (appendix "Draft Version Identification"): the -12 source
# names 9; -13's 10 is from its datatracker page. The -15 text could not be read here; when
# it names a newer number, add a row above (copying _V10) and point LATEST at it.
LATEST = 10

_SF_INTEGER = re.compile(r"-?[0-9]{1,15}")


def parse_sf_integer(value: str | None) -> int | None:
    """An sf-integer item (RFC 9651) at least 0, parameters ignored; None when absent or
    invalid: the draft says a field with another value is ignored."""
    if value is None:
        return None
    item = value.split(";", 1)[0].strip()
    if not _SF_INTEGER.fullmatch(item):
        return None
    number = int(item)
    return number if number >= 0 else None


def parse_sf_boolean(value: str | None) -> bool | None:
    """An sf-boolean item (`?1` / `?0`), parameters ignored; None when absent or invalid."""
    if value is None:
        return None
    item = value.split(";", 1)[0].strip()
    return {"?1": True, "?0": False}.get(item)


CREATION_METHODS = ("POST", "PUT", "PATCH")


def select(method: str, headers: Mapping[str, str], *, on_collection: bool) -> Dialect | None:
    """The dialect a request speaks, or None for a plain tus (or unknown-version) request.

    The interop version picks the row. On the collection, a request that carries content
    is a creation only with the completeness field (`Upload-Incomplete` at interop 3);
    without it, it is what it would be without the draft."""
    version = parse_sf_integer(headers.get(INTEROP_HEADER))
    dialect = DIALECTS.get(version) if version is not None else None
    if dialect is None:
        return None
    if on_collection and method in CREATION_METHODS and completeness(dialect, headers) is None:
        return None
    return dialect


def completeness(dialect: Dialect, headers: Mapping[str, str]) -> bool | None:
    """What the request's completeness field says (True: this request ends the upload);
    None when it is absent or invalid."""
    value = parse_sf_boolean(headers.get(dialect.complete_field))
    if value is None:
        return None
    return value != dialect.inverted


def append_completes(dialect: Dialect, headers: Mapping[str, str]) -> bool:
    """Whether a PATCH ends the upload; a missing field is the last PATCH up to -05 and a
    400 from -06 on."""
    complete = completeness(dialect, headers)
    if complete is not None:
        return complete
    if dialect.complete_by_default:
        return True
    raise TusError(errors.MISSING_COMPLETE, f"{dialect.complete_field} is required (interop {dialect.interop})")


def check_append_type(dialect: Dialect, content_type: str | None) -> None:
    if not dialect.partial_upload_type:
        return
    if content_type is None or content_type.split(";", 1)[0].strip().lower() != PARTIAL_UPLOAD:
        raise TusError(errors.INVALID_APPEND_TYPE)


def check_no_state_fields(dialect: Dialect, headers: Mapping[str, str]) -> None:
    """Up to -05, HEAD and DELETE must not carry Upload-Offset or the completeness field."""
    if dialect.strict_head_delete and ("Upload-Offset" in headers or dialect.complete_field in headers):
        raise TusError(
            errors.UNEXPECTED_UPLOAD_FIELDS, f"Upload-Offset and {dialect.complete_field} do not belong here"
        )


def creation_length(upload_length: str | None, complete: bool, content_length: int | None) -> int | None:
    """The representation's length a creation announces: Upload-Length, or the body's
    Content-Length when the request is the whole upload; both must agree. None: unknown yet."""
    declared = parse_sf_integer(upload_length)
    implied = content_length if complete else None
    if declared is not None and implied is not None and declared != implied:
        raise TusError(
            errors.INCONSISTENT_LENGTH, f"Upload-Length is {declared} but the complete body has {implied} bytes"
        )
    if declared is not None and content_length is not None and content_length > declared:
        raise TusError(
            errors.INCONSISTENT_LENGTH, f"the body has {content_length} bytes but Upload-Length is {declared}"
        )
    return declared if declared is not None else implied


def append_length(upload_length: str | None, complete: bool, offset: int, content_length: int | None) -> int | None:
    """The length an append announces: Upload-Length, or offset + Content-Length when it
    ends the upload; the two must agree. None: none announced. (The upload's own length is
    checked against it under the upload's lock.)"""
    declared = parse_sf_integer(upload_length)
    implied = offset + content_length if complete and content_length is not None else None
    if declared is not None and implied is not None and declared != implied:
        raise TusError(errors.INCONSISTENT_LENGTH, f"Upload-Length is {declared} but the body ends at {implied}")
    if declared is not None and content_length is not None and offset + content_length > declared:
        raise TusError(errors.INCONSISTENT_LENGTH, f"the body ends at {offset + content_length}, past {declared}")
    return declared if declared is not None else implied


# Types a request may carry that say how the bytes travel, not what they are.
_TRANSFER_TYPES = {PARTIAL_UPLOAD, "application/offset+octet-stream"}
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]{1,127}/[A-Za-z0-9!#$&^_.+-]{1,127}")


def representation_metadata(content_type: str | None, disposition: str | None) -> dict[str, str]:
    """tus metadata (`filetype`, `filename`) from a creation's Content-Type and
    Content-Disposition; either is left out when absent, malformed or a transfer label."""
    metadata: dict[str, str] = {}
    if content_type:
        media_type = content_type.split(";", 1)[0].strip().lower()
        if _MEDIA_TYPE.fullmatch(media_type) and media_type not in _TRANSFER_TYPES:
            metadata["filetype"] = media_type
    if disposition:
        filename = disposition_filename(disposition)
        if filename:
            metadata["filename"] = filename
    return metadata


_DISPOSITION_PARAM = re.compile(r';\s*([A-Za-z0-9!#$&+.^_`|~-]+\*?)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)')


def disposition_filename(value: str) -> str | None:
    """The filename of a Content-Disposition (RFC 6266: `filename*` wins over `filename`),
    without any directory part or control character; None when there is none."""
    params: dict[str, str] = {}
    for name, raw in _DISPOSITION_PARAM.findall(value):
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params.setdefault(name.lower(), raw)
    name = None
    extended = params.get("filename*")
    if extended is not None:
        charset, _, rest = extended.partition("'")
        _, _, encoded = rest.partition("'")
        if charset.lower() in ("utf-8", "iso-8859-1"):
            try:
                name = unquote(encoded, encoding=charset, errors="strict")
            except UnicodeDecodeError:
                name = None
    if name is None:
        name = params.get("filename")
    if not name:
        return None
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable())
    return name or None


@dataclass(frozen=True)
class Limits:
    """What Upload-Limit announces (None: no such limit)."""

    max_size: int | None = None
    max_append_size: int | None = None
    max_age: int | None = None


def format_limits(dialect: Dialect, limits: Limits) -> str | None:
    """The Upload-Limit value for `dialect`; None where the revision has no such field.
    Without any limit the draft asks for `min-size=0` rather than an empty value."""
    if not dialect.limits:
        return None
    members = []
    if limits.max_size is not None:
        members.append(f"max-size={limits.max_size}")
    if limits.max_append_size is not None:
        members.append(f"max-append-size={limits.max_append_size}")
    if limits.max_age is not None:
        members.append(f"{dialect.age_key}={max(limits.max_age, 0)}")
    return ", ".join(members) or "min-size=0"


def interim_104(dialect: Dialect, location: str, limits: Limits) -> bytes:
    """The 104 (Upload Resumption Supported) interim response announcing an upload resource."""
    lines = [
        "HTTP/1.1 104 Upload Resumption Supported",
        f"Location: {location}",
        f"{INTEROP_HEADER}: {dialect.interop}",
    ]
    limit = format_limits(dialect, limits)
    if limit is not None:
        lines.append(f"Upload-Limit: {limit}")
    if any(c in location for c in "\r\n\0"):  # written as it is: it must not end its line
        raise ValueError("a header value must not hold CR, LF or NUL")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")  # as aiohttp writes headers


# tus failures that are what a draft problem type names, by kind.
_PROBLEM_OF: dict[ErrorKind, str] = {
    errors.MISMATCHED_OFFSET: MISMATCHING_OFFSET,
    errors.INCONSISTENT_LENGTH: INCONSISTENT_LENGTH,
    errors.LENGTH_NOT_REACHED: INCONSISTENT_LENGTH,
    errors.EXCEEDS_UPLOAD_LENGTH: INCONSISTENT_LENGTH,
    errors.LENGTH_ALREADY_SET: INCONSISTENT_LENGTH,
    errors.LENGTH_BELOW_OFFSET: INCONSISTENT_LENGTH,
}
# Bytes for an upload that is complete: -04 to -11 name that `completed-upload`; later
# revisions dropped the type, and the bytes would go past the length.
# A body past the known length is a 413 in tus; the draft calls the length inconsistent. (The
# draft's handlers check bodies against max-size first, so the known length is what it passed.)
_STATUS_OF: dict[ErrorKind, int] = {errors.UPLOAD_FINISHED: 400, errors.EXCEEDS_UPLOAD_LENGTH: 400}
# Refusals by a limit, which carry Upload-Limit.
LIMIT_KINDS = frozenset({errors.MAX_SIZE_EXCEEDED, errors.QUOTA_EXCEEDED, errors.APPEND_TOO_LARGE})


def error_status(kind: ErrorKind, status: int) -> int:
    return _STATUS_OF.get(kind, status)


def problem(
    dialect: Dialect,
    kind: ErrorKind,
    status: int,
    message: str,
    *,
    provided_offset: int | None = None,
    expected_offset: int | None = None,
) -> dict[str, object]:
    """The RFC 9457 problem details of a failure: the draft's problem type where this
    revision defines one, else `about:blank`; `code` is the tus error code."""
    document: dict[str, object] = {}
    name = _PROBLEM_OF.get(kind)
    if kind is errors.UPLOAD_FINISHED:
        name = COMPLETED_UPLOAD if COMPLETED_UPLOAD in dialect.problem_types else INCONSISTENT_LENGTH
    if name is not None and name in dialect.problem_types:
        document["type"] = PROBLEM_BASE + name
    document.update({"title": message, "status": status, "code": kind.code})
    if document.get("type") == PROBLEM_BASE + MISMATCHING_OFFSET:
        if expected_offset is not None:
            document["expected-offset"] = expected_offset
        if provided_offset is not None:
            document["provided-offset"] = provided_offset
    return document


def problem_body(document: Mapping[str, object]) -> bytes:
    return json.dumps(document, ensure_ascii=True).encode("ascii") + b"\n"
