"""Pure tests of the tus header rules (protocol.py) and the .info JSON form (info.py)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from email.utils import parsedate_to_datetime

import pytest

from tusserver import errors, protocol
from tusserver.errors import TusError
from tusserver.info import FinalProgress, UploadInfo


def b64(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


@contextmanager
def raises(kind: errors.ErrorKind) -> Iterator[pytest.ExceptionInfo[TusError]]:
    """pytest.raises for a TusError of exactly `kind`."""
    with pytest.raises(TusError) as exc:
        yield exc
    assert exc.value.kind is kind, f"{exc.value.kind.code} is not {kind.code}"


# -- Upload-Length / Upload-Offset / Content-Length -------------------------------

GOOD_NUMBERS = [("0", 0), ("5", 5), (" 7 ", 7), ("007", 7), ("9223372036854775807", 2**63 - 1)]
BAD_NUMBERS = [
    "",
    " ",
    "-1",
    "-0",
    "+5",
    "1.0",
    "1e3",
    "0x10",
    "5 5",
    "abc",
    "5,6",
    "９",  # full-width digit
    "٣",  # Arabic-Indic digit
    "9223372036854775808",  # 2**63
    "1" * 21,
    "9" * 400,
    "\x005",
]


@pytest.mark.parametrize(("value", "expected"), GOOD_NUMBERS)
def test_upload_length_accepts_non_negative_integers(value, expected):
    assert protocol.parse_upload_length(value) == expected


@pytest.mark.parametrize("value", BAD_NUMBERS)
def test_upload_length_rejects_anything_else(value):
    with raises(errors.INVALID_UPLOAD_LENGTH) as exc:
        protocol.parse_upload_length(value)
    assert exc.value.status == 400
    assert "\n" not in exc.value.message and len(exc.value.message) < 200


@pytest.mark.parametrize(("value", "expected"), GOOD_NUMBERS)
def test_upload_offset_accepts_non_negative_integers(value, expected):
    assert protocol.parse_upload_offset(value) == expected


@pytest.mark.parametrize("value", [*BAD_NUMBERS, None])
def test_upload_offset_rejects_missing_and_malformed(value):
    with raises(errors.INVALID_OFFSET) as exc:
        protocol.parse_upload_offset(value)
    assert exc.value.status == 400


def test_content_length_absent_is_none():
    assert protocol.parse_content_length(None) is None
    assert protocol.parse_content_length("12") == 12


@pytest.mark.parametrize("value", ["-1", "+1", "", "x"])
def test_content_length_malformed_is_400(value):
    with raises(errors.INVALID_CONTENT_LENGTH) as exc:
        protocol.parse_content_length(value)
    assert exc.value.status == 400


# -- Upload-Defer-Length and the creation length -----------------------------------


def test_defer_length_only_accepts_1():
    assert protocol.parse_defer_length(None) is False
    assert protocol.parse_defer_length("1") is True
    for value in ["0", "2", "true", "", "01"]:
        with raises(errors.INVALID_DEFER_LENGTH):
            protocol.parse_defer_length(value)


def test_creation_length_with_length():
    assert protocol.parse_creation_length("10", None) == 10
    assert protocol.parse_creation_length("0", None) == 0


def test_creation_length_deferred_is_none():
    assert protocol.parse_creation_length(None, "1") is None


def test_creation_length_both_is_400():
    with raises(errors.LENGTH_AND_DEFER) as exc:
        protocol.parse_creation_length("10", "1")
    assert exc.value.status == 400


def test_creation_length_neither_is_400():
    with raises(errors.MISSING_LENGTH) as exc:
        protocol.parse_creation_length(None, None)
    assert exc.value.status == 400


@pytest.mark.parametrize("value", ["-1", "", "abc", "+3"])
def test_creation_length_malformed_is_400(value):
    with raises(errors.INVALID_UPLOAD_LENGTH):
        protocol.parse_creation_length(value, None)


# -- Tus-Resumable and Content-Type --------------------------------------------------


def test_tus_resumable_1_0_0_passes():
    protocol.check_tus_resumable("1.0.0")


@pytest.mark.parametrize("value", [None, "", "0.2.2", "1.0", "1.0.0,0.2.2", "1.0.1"])
def test_tus_resumable_other_is_412_with_tus_version(value):
    with raises(errors.UNSUPPORTED_VERSION) as exc:
        protocol.check_tus_resumable(value)
    assert exc.value.status == 412
    assert exc.value.headers == {"Tus-Version": "1.0.0"}


@pytest.mark.parametrize(
    "value",
    ["application/offset+octet-stream", "Application/Offset+Octet-Stream", "application/offset+octet-stream; x=1"],
)
def test_patch_content_type_accepted(value):
    protocol.check_content_type(value)


@pytest.mark.parametrize(
    "value", [None, "", "application/octet-stream", "text/plain", "application/offset+octet-streamx"]
)
def test_patch_content_type_other_is_415(value):
    with raises(errors.INVALID_CONTENT_TYPE) as exc:
        protocol.check_content_type(value)
    assert exc.value.status == 415


def test_offset_content_type_detection():
    assert protocol.is_offset_content_type("application/offset+octet-stream")
    assert protocol.is_offset_content_type("APPLICATION/OFFSET+OCTET-STREAM; charset=x")
    for value in [None, "", "application/octet-stream", "text/plain"]:
        assert not protocol.is_offset_content_type(value)


# -- Upload-Metadata ----------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", "   "])
def test_metadata_empty_header_is_valid(value):
    assert protocol.parse_metadata(value) == {}


def test_metadata_pairs_are_decoded():
    header = f"filename {b64('world.txt')},is_confidential,filetype {b64('text/plain')}"
    assert protocol.parse_metadata(header) == {
        "filename": "world.txt",
        "is_confidential": None,
        "filetype": "text/plain",
    }


@pytest.mark.parametrize(
    "header",
    [
        f"a {b64('x')},b {b64('yy')}",
        f"a {b64('x')}, b {b64('yy')}",
        f" a {b64('x')} ,  b {b64('yy')} ",
    ],
)
def test_metadata_spaces_around_pairs_are_allowed(header):
    assert protocol.parse_metadata(header) == {"a": "x", "b": "yy"}


def test_metadata_empty_value_is_allowed():
    assert protocol.parse_metadata("a ") == {"a": None}
    assert protocol.parse_metadata(f"a,b {b64('1')}") == {"a": None, "b": "1"}


@pytest.mark.parametrize(
    "header",
    [
        f"a {b64('x')},a {b64('y')}",  # duplicate key
        "a,a",
        f"ä {b64('x')}",  # non-ASCII key
        f"k\u00e9y {b64('x')}",
        "a YQ",  # unpadded base64
        "a YQ=",
        "a Y",
        "a YQ===",
        "a Y!==",  # not in the alphabet
        "a YQ-_",  # URL-safe alphabet
        f"a {b64('x')} extra",  # three parts
        f"a  {b64('x')}",  # two spaces
        f"a\t{b64('x')}",  # tab is not a separator
        f"a {b64('x')},",  # trailing comma: empty pair
        f",a {b64('x')}",
        f"a {b64('x')},,b",
    ],
)
def test_metadata_malformed_is_400(header):
    with raises(errors.INVALID_METADATA) as exc:
        protocol.parse_metadata(header)
    assert exc.value.status == 400
    assert "\n" not in exc.value.message


def test_metadata_keys_keep_their_order_and_case():
    parsed = protocol.parse_metadata(f"Z {b64('1')},a {b64('2')},A {b64('3')}")
    assert list(parsed) == ["Z", "a", "A"]


def test_metadata_binary_value_round_trips_byte_exact():
    raw = bytes(range(256))
    parsed = protocol.parse_metadata(f"blob {b64(raw)}")
    assert protocol.format_metadata(parsed) == f"blob {b64(raw)}"
    assert base64.b64decode(protocol.format_metadata(parsed).split(" ")[1]) == raw


def test_metadata_unicode_value_round_trips():
    name = "naïve résumé 📄.txt"
    header = f"filename {b64(name)},flag"
    parsed = protocol.parse_metadata(header)
    assert parsed == {"filename": name, "flag": None}
    assert protocol.format_metadata(parsed) == header


def test_format_metadata_empty():
    assert protocol.format_metadata({}) == ""


def test_format_then_parse_is_identity():
    metadata = {"a": "1", "b": None, "c": "\u00e9", "d": b"\xff\xfe".decode("utf-8", "surrogateescape")}
    assert protocol.parse_metadata(protocol.format_metadata(metadata)) == metadata


# -- Upload-Checksum -----------------------------------------------------------------


def test_checksum_absent_is_none():
    assert protocol.parse_checksum(None) is None


@pytest.mark.parametrize("algorithm", ["sha1", "md5", "sha256", "sha512"])
def test_checksum_parses_algorithm_and_digest(algorithm):
    digest = hashlib.new(algorithm, b"hello").digest()
    assert protocol.parse_checksum(f"{algorithm} {b64(digest)}") == protocol.Checksum(algorithm, digest)


def test_checksum_crc32_and_upper_case_algorithm():
    assert protocol.parse_checksum("CRC32 AAAAAA==") == protocol.Checksum("crc32", b"\0\0\0\0")


def test_checksum_unknown_algorithm_is_400():
    with raises(errors.UNSUPPORTED_CHECKSUM) as exc:
        protocol.parse_checksum(f"whirlpool {b64(b'x' * 64)}")
    assert exc.value.status == 400


def test_checksum_algorithm_outside_allowed_is_rejected():
    digest = b64(hashlib.md5(b"").digest())
    with raises(errors.UNSUPPORTED_CHECKSUM):
        protocol.parse_checksum(f"md5 {digest}", frozenset({"sha1"}))
    assert protocol.parse_checksum(f"md5 {digest}", frozenset({"md5"})).algorithm == "md5"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "sha1",
        f"sha1  {b64(b'x' * 20)}",
        f"sha1 {b64(b'x' * 20)} extra",
        "sha1 not-base64!",
        "sha1 " + b64(b"x" * 20).rstrip("="),
    ],
)
def test_checksum_malformed_is_400(value):
    with raises(errors.INVALID_CHECKSUM) as exc:
        protocol.parse_checksum(value)
    assert exc.value.status == 400


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (f"sha1 {b64(b'x' * 19)}", 19),
        (f"sha256 {b64(b'x' * 20)}", 20),
        (f"crc32 {b64(b'x' * 8)}", 8),
        (f"sha512 {b64(b'x' * 32)}", 32),
    ],
)
def test_checksum_with_a_digest_of_the_wrong_size_is_a_460_mismatch(value, size):
    # Well-formed, but no body can match it: a mismatch (460), not a malformed header (400).
    with raises(errors.CHECKSUM_MISMATCH) as exc:
        protocol.parse_checksum(value)
    assert exc.value.status == 460
    assert exc.value.message.endswith(f"has {protocol.CHECKSUM_ALGORITHMS[value.split()[0]]} bytes, not {size}")


# -- Single-valued headers -------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], None),
        (["10"], "10"),
        ([" 10 "], "10"),
        ([""], ""),  # present but empty: the header's own parser refuses it
        (["10", "10"], "10"),  # the same value twice is one value
        (["10, 10"], "10"),
        (["10,10", " 10"], "10"),
        (["sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0="] * 2, "sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0="),
        (["final;/a /b"], "final;/a /b"),
    ],
)
def test_single_value_of_a_tus_header(values, expected):
    assert protocol.single_value("Upload-Length", values) == expected


@pytest.mark.parametrize(
    "values",
    [
        ["10", "20"],
        ["10, 20"],  # one field line holding a list is two values too
        ["10,20"],
        ["10", "10, 20"],
        ["10,"],  # an empty element is a value, not nothing
        ["", "10"],
        ["1.0.0", "0.2.2"],
        ["partial", "final;/a"],
    ],
)
def test_single_value_with_two_different_values_is_400(values):
    with raises(errors.AMBIGUOUS_HEADER) as exc:
        protocol.single_value("Upload-Offset", values)
    assert exc.value.status == 400
    assert exc.value.message.endswith("Upload-Offset has 2 different values")


# -- Upload-Concat ---------------------------------------------------------------------


def test_concat_absent_is_none():
    assert protocol.parse_concat(None) is None


def test_concat_partial():
    assert protocol.parse_concat("partial") == protocol.Concat(final=False)


def test_concat_final_lists_urls_in_order():
    parsed = protocol.parse_concat("final;/files/b http://h:1/files/a  /files/c")
    assert parsed == protocol.Concat(final=True, urls=("/files/b", "http://h:1/files/a", "/files/c"))


@pytest.mark.parametrize("value", ["", "final", "final;", "final;   ", "partial;x", "Final;/files/a", "other"])
def test_concat_malformed_is_400(value):
    with raises(errors.INVALID_CONCAT) as exc:
        protocol.parse_concat(value)
    assert exc.value.status == 400


UPLOAD_ID = "0123456789abcdef0123456789abcdef"
ORIGIN = "http://example.com:8080"


@pytest.mark.parametrize(
    "url",
    [
        f"/files/{UPLOAD_ID}",
        f"http://example.com:8080/files/{UPLOAD_ID}",
        f"HTTP://EXAMPLE.COM:8080/files/{UPLOAD_ID}",
    ],
)
def test_upload_id_from_url(url):
    assert protocol.upload_id_from_url(url, "/files/", ORIGIN) == UPLOAD_ID


@pytest.mark.parametrize(
    "url",
    [
        f"/other/{UPLOAD_ID}",
        f"http://other.example.com:8080/files/{UPLOAD_ID}",  # another server
        f"https://example.com:8080/files/{UPLOAD_ID}",
        f"http://example.com/files/{UPLOAD_ID}",
        f"/files/{UPLOAD_ID}?x=1",
        "/files/",
        "/files/..",
        "/files/a%2F..",
        "/files/a/b",
        "/files/a.info",
        f"/files/{UPLOAD_ID}/",
        "http://[::1",
    ],
)
def test_upload_id_from_foreign_or_bad_url_is_400(url):
    with raises(errors.INVALID_CONCAT) as exc:
        protocol.upload_id_from_url(url, "/files/", ORIGIN)
    assert exc.value.status == 400


# -- Upload ids ------------------------------------------------------------------------


def test_new_upload_ids_are_128_bit_url_safe_and_distinct():
    ids = {protocol.new_upload_id() for _ in range(200)}
    assert len(ids) == 200
    for upload_id in ids:
        assert len(upload_id) == 32 and int(upload_id, 16) >= 0
        assert protocol.is_valid_upload_id(upload_id)


@pytest.mark.parametrize("value", [UPLOAD_ID, "a", "A_b-C", "x" * 128])
def test_valid_upload_ids(value):
    assert protocol.is_valid_upload_id(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        ".",
        "..",
        "../etc",
        "a/b",
        "/a",
        "a\\b",
        "%2F",
        "a%2F..",
        "a.info",
        f"{UPLOAD_ID}.info",
        f"{UPLOAD_ID}.tmp-1234",
        "a\x00",
        "\x00",
        "a\n",
        "a b",
        "-a",
        "_a",
        "ä",
        "x" * 129,
    ],
)
def test_invalid_upload_ids(value):
    assert not protocol.is_valid_upload_id(value)


# -- GET download headers ----------------------------------------------------------------

SAFE = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox", "Referrer-Policy": "no-referrer"}


@pytest.mark.parametrize(
    "filetype",
    ["image/png", "image/jpeg", "IMAGE/GIF", "video/mp4", "audio/mpeg", "text/plain"],
)
def test_download_inline_for_allow_listed_types(filetype):
    headers = protocol.download_headers({"filetype": filetype})
    assert headers == {"Content-Type": filetype.lower(), "Content-Disposition": "inline", **SAFE}


@pytest.mark.parametrize(
    "filetype",
    [
        None,
        "",
        "text/html",
        "image/svg+xml",
        "application/javascript",
        "text/xml",
        "application/xhtml+xml",
        "text/plain; charset=utf-8",
        "image/png\r\nX-Evil: 1",
        "text/html, image/png",
        "application/pdf",  # PDFs carry scripts; Chromium will not render one under CSP sandbox anyway
        "application/xml",
        "image/svg",
        "text/javascript",
        "application/x-shockwave-flash",
    ],
)
def test_download_attachment_for_everything_else(filetype):
    metadata = {} if filetype is None else {"filetype": filetype}
    headers = protocol.download_headers(metadata)
    assert headers == {"Content-Type": "application/octet-stream", "Content-Disposition": "attachment", **SAFE}


def test_download_filename_ascii():
    headers = protocol.download_headers({"filename": "report.bin"})
    assert headers["Content-Disposition"] == "attachment; filename=\"report.bin\"; filename*=UTF-8''report.bin"


def test_download_filename_non_ascii_uses_rfc_6266_filename_star():
    headers = protocol.download_headers({"filename": "naïve 📄.pdf", "filetype": "application/pdf"})
    assert headers["Content-Disposition"] == (
        "attachment; filename=\"na_ve _.pdf\"; filename*=UTF-8''na%C3%AFve%20%F0%9F%93%84.pdf"
    )


@pytest.mark.parametrize("name", ['a"b.txt', "a\\b.txt", "a\r\nX-Evil: 1.txt", "a;b=c.txt", "a\x00b"])
def test_download_filename_cannot_break_the_header(name):
    disposition = protocol.download_headers({"filename": name})["Content-Disposition"]
    assert disposition.isascii()
    assert all(0x20 <= ord(c) < 0x7F for c in disposition)
    quoted = disposition.split('filename="', 1)[1].split('"', 1)[0]
    assert '"' not in quoted and "\\" not in quoted
    assert disposition.endswith("filename*=UTF-8''" + "".join(
        c if c.isalnum() or c in "-._~" else "".join(f"%{b:02X}" for b in c.encode()) for c in name
    ))


def test_download_filename_with_undecodable_bytes_is_ascii():
    name = b"a\xffb.txt".decode("utf-8", "surrogateescape")
    disposition = protocol.download_headers({"filename": name})["Content-Disposition"]
    assert disposition.isascii()
    assert "filename*=UTF-8''a%3Fb.txt" in disposition


def test_download_without_filename_value():
    assert protocol.download_headers({"filename": None})["Content-Disposition"] == "attachment"


# -- dates --------------------------------------------------------------------------------


def test_http_date_is_imf_fixdate():
    assert protocol.http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert protocol.http_date(1700000000.9) == "Tue, 14 Nov 2023 22:13:20 GMT"
    assert parsedate_to_datetime(protocol.http_date(1234567890)).timestamp() == 1234567890


# -- .info JSON -------------------------------------------------------------------------------


def test_info_json_round_trip_keeps_every_field():
    info = UploadInfo(
        id=UPLOAD_ID,
        length=1234,
        metadata={"filename": "é.txt", "flag": None, "raw": b"\xff\x00".decode("utf-8", "surrogateescape")},
        created=1700000000.5,
        expires=1700003600.0,
        concat="final",
        partials=["a", "b"],
        progress=FinalProgress(limit=100, ready=1, ready_bytes=40, failure="ERR_PARTIAL_GONE"),
        finished=True,
        storage={"type": "file", "path": "/x/y"},
        offset=99,
    )
    data = info.to_json()
    assert isinstance(data, bytes) and data.isascii()
    back = UploadInfo.from_json(data)
    assert back.offset == 0  # derived by the store, never persisted
    back.offset = 99
    assert back == info


def test_info_json_deferred_length():
    info = UploadInfo(id=UPLOAD_ID, length=None)
    back = UploadInfo.from_json(info.to_json())
    assert back.length is None and back.deferred
    assert back.metadata == {} and back.partials == [] and back.finished is False


def test_info_json_schema_fields():
    doc = json.loads(UploadInfo(id=UPLOAD_ID, length=5, created=1.0).to_json())
    assert doc == {
        "version": 1,
        "id": UPLOAD_ID,
        "length": 5,
        "metadata": {},
        "created": 1.0,
        "expires": None,
        "concat": None,
        "partials": [],
        "progress": None,
        "finished": False,
        "storage": {},
        "owner": None,
        "server_metadata": {},
        "listed": False,
    }


@pytest.mark.parametrize("version", [None, 0, 2, "1"])
def test_info_json_unknown_version_is_refused(version):
    doc = json.loads(UploadInfo(id=UPLOAD_ID, length=5).to_json())
    doc["version"] = version
    with pytest.raises(ValueError):
        UploadInfo.from_json(json.dumps(doc).encode())
