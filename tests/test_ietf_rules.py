"""The draft's rules (tusserver.ietf) without a server: fields, versions, limits, 104, problems."""

from __future__ import annotations

import pytest

from tusserver import errors, ietf
from tusserver.errors import TusError


def test_the_table_holds_the_versions_clients_send_and_the_latest():
    assert sorted(ietf.DIALECTS) == [3, 5, 6, 8, 9, 10]
    assert ietf.LATEST == max(ietf.DIALECTS)


@pytest.mark.parametrize(
    ("value", "number"),
    [("0", 0), ("42", 42), (" 7 ", 7), ("5;a=1", 5), ("999999999999999", 999999999999999)],
)
def test_sf_integer(value, number):
    assert ietf.parse_sf_integer(value) == number


@pytest.mark.parametrize("value", [None, "", "-1", "1.5", "abc", "1000000000000000", "0x10", "1 2"])
def test_sf_integer_that_is_not_one_is_ignored(value):
    assert ietf.parse_sf_integer(value) is None


def test_sf_boolean():
    assert [ietf.parse_sf_boolean(v) for v in ["?1", "?0", " ?1;x", "1", "true", "?", None]] == [
        True,
        False,
        True,
        None,
        None,
        None,
        None,
    ]


def test_selection_by_version_and_by_the_shape_of_a_creation():
    v = ietf.INTEROP_HEADER
    assert ietf.select("HEAD", {v: "6"}, on_collection=False).interop == 6
    assert ietf.select("HEAD", {v: "7"}, on_collection=False) is None  # not in the table
    assert ietf.select("HEAD", {}, on_collection=False) is None
    assert ietf.select("HEAD", {v: "six"}, on_collection=False) is None
    # On the collection, content without the completeness field is no creation.
    assert ietf.select("POST", {v: "10"}, on_collection=True) is None
    assert ietf.select("POST", {v: "10", "Upload-Complete": "?0"}, on_collection=True).interop == 10
    assert ietf.select("PUT", {v: "10", "Upload-Complete": "?1"}, on_collection=True).interop == 10
    # Interop 3 says it with Upload-Incomplete; Upload-Complete does not count there.
    assert ietf.select("POST", {v: "3", "Upload-Complete": "?1"}, on_collection=True) is None
    assert ietf.select("POST", {v: "3", "Upload-Incomplete": "?0"}, on_collection=True).interop == 3
    assert ietf.select("OPTIONS", {v: "10"}, on_collection=True).interop == 10


def test_interop_3_inverts_the_completeness_field():
    v3, v10 = ietf.DIALECTS[3], ietf.DIALECTS[10]
    assert ietf.completeness(v3, {"Upload-Incomplete": "?1"}) is False
    assert ietf.completeness(v3, {"Upload-Incomplete": "?0"}) is True
    assert ietf.completeness(v10, {"Upload-Complete": "?1"}) is True
    assert (v3.complete_field, v3.complete_value(True)) == ("Upload-Incomplete", "?0")
    assert (v10.complete_field, v10.complete_value(True)) == ("Upload-Complete", "?1")


@pytest.mark.parametrize("version", [3, 5, 6])
def test_a_patch_without_the_field_completes_up_to_interop_6(version):
    assert ietf.append_completes(ietf.DIALECTS[version], {}) is True


@pytest.mark.parametrize("version", [8, 9, 10])
def test_a_patch_without_the_field_is_400_from_interop_8(version):
    with pytest.raises(TusError) as caught:
        ietf.append_completes(ietf.DIALECTS[version], {"Upload-Complete": "yes"})
    assert caught.value.kind is errors.MISSING_COMPLETE


def test_append_type():
    ietf.check_append_type(ietf.DIALECTS[5], None)
    ietf.check_append_type(ietf.DIALECTS[6], "Application/Partial-Upload; x=1")
    with pytest.raises(TusError) as caught:
        ietf.check_append_type(ietf.DIALECTS[6], "application/offset+octet-stream")
    assert caught.value.status == 415


def test_creation_length():
    assert ietf.creation_length("10", False, 3) == 10
    assert ietf.creation_length(None, True, 3) == 3
    assert ietf.creation_length("3", True, 3) == 3
    assert ietf.creation_length(None, False, 3) is None
    assert ietf.creation_length(None, True, None) is None  # chunked: known at its end
    for upload_length, complete, content_length in [("4", True, 3), ("2", False, 3)]:
        with pytest.raises(TusError) as caught:
            ietf.creation_length(upload_length, complete, content_length)
        assert caught.value.kind is errors.INCONSISTENT_LENGTH


def test_append_length():
    assert ietf.append_length(None, True, 10, 5) == 15
    assert ietf.append_length("20", False, 10, 5) == 20
    assert ietf.append_length(None, False, 10, 5) is None
    for upload_length, complete in [("16", True), ("14", False)]:
        with pytest.raises(TusError):
            ietf.append_length(upload_length, complete, 10, 5)


def test_representation_metadata():
    assert ietf.representation_metadata("Image/PNG; q=1", 'inline; filename="a.png"') == {
        "filetype": "image/png",
        "filename": "a.png",
    }
    # Transfer labels and malformed types are not what the file is.
    assert ietf.representation_metadata("application/partial-upload", None) == {}
    assert ietf.representation_metadata("application/offset+octet-stream", None) == {}
    assert ietf.representation_metadata("not a type", "inline") == {}


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("inline; filename=\"a b.png\"; filename*=UTF-8''%C3%A9t%C3%A9.png", "été.png"),
        ("attachment; filename*=utf-8''x%20y.txt; filename=\"z.txt\"", "x y.txt"),
        ('inline; filename="../../etc/passwd"', "passwd"),
        ('inline; filename="C:\\\\dir\\\\f.txt"', "f.txt"),
        ('inline; filename="q\\"uote.txt"', 'q"uote.txt'),
        ("inline; filename=plain.bin", "plain.bin"),
        ("inline; filename*=UTF-8''%FF%FE; filename=fallback.bin", "fallback.bin"),
        ('inline; filename="a\x07b"', "ab"),
        ("inline", None),
        ('inline; filename=""', None),
    ],
)
def test_disposition_filename(value, name):
    assert ietf.disposition_filename(value) == name


def test_upload_limit_per_version():
    limits = ietf.Limits(max_size=1000, max_age=60)
    assert ietf.format_limits(ietf.DIALECTS[5], limits) is None  # no Upload-Limit before -04
    assert ietf.format_limits(ietf.DIALECTS[6], limits) == "max-size=1000, expires=60"
    assert ietf.format_limits(ietf.DIALECTS[8], limits) == "max-size=1000, max-age=60"
    assert ietf.format_limits(ietf.DIALECTS[10], ietf.Limits()) == "min-size=0"
    assert ietf.format_limits(ietf.DIALECTS[10], ietf.Limits(max_age=-3)) == "max-age=0"


def test_interim_104():
    raw = ietf.interim_104(ietf.DIALECTS[10], "http://h/files/abc", ietf.Limits(max_size=5))
    assert raw == (
        b"HTTP/1.1 104 Upload Resumption Supported\r\n"
        b"Location: http://h/files/abc\r\n"
        b"Upload-Draft-Interop-Version: 10\r\n"
        b"Upload-Limit: max-size=5\r\n\r\n"
    )
    raw = ietf.interim_104(ietf.DIALECTS[3], "/abc", ietf.Limits(max_size=5))
    assert b"Upload-Limit" not in raw and b"Upload-Draft-Interop-Version: 3\r\n" in raw
    with pytest.raises(ValueError):
        ietf.interim_104(ietf.DIALECTS[10], "/abc\r\nSet-Cookie: x=1", ietf.Limits())


def test_problem_types_per_version():
    mismatch = ietf.problem(
        ietf.DIALECTS[10], errors.MISMATCHED_OFFSET, 409, "m", provided_offset=4, expected_offset=10
    )
    assert mismatch == {
        "type": ietf.PROBLEM_BASE + "mismatching-upload-offset",
        "title": "m",
        "status": 409,
        "code": "ERR_MISMATCHED_OFFSET",
        "expected-offset": 10,
        "provided-offset": 4,
    }
    assert "type" not in ietf.problem(ietf.DIALECTS[5], errors.MISMATCHED_OFFSET, 409, "m")
    assert "type" not in ietf.problem(ietf.DIALECTS[6], errors.INCONSISTENT_LENGTH, 400, "m")  # from -06
    finished = [ietf.problem(ietf.DIALECTS[v], errors.UPLOAD_FINISHED, 400, "m").get("type") for v in (6, 8, 9)]
    assert finished == [
        ietf.PROBLEM_BASE + "completed-upload",
        ietf.PROBLEM_BASE + "completed-upload",
        ietf.PROBLEM_BASE + "inconsistent-upload-length",
    ]
    assert ietf.error_status(errors.UPLOAD_FINISHED, 413) == 400
    assert ietf.error_status(errors.MISMATCHED_OFFSET, 409) == 409
