"""What S3-compatible providers do differently, one frozen Profile per provider
(`s3_profile`). Pure data: the store reads it once, in its constructor.

Precedence: a key set explicitly (`s3_uniform_parts`, `s3_path_style`, `s3_max_parts`, or
the S3Store argument) wins over the profile; `s3_min_part_size` can only raise the
profile's minimum, never lower it below what the provider accepts."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1 << 20


@dataclass(frozen=True)
class Profile:
    """One provider's rules, each with the reason in the comment of PROFILES."""

    name: str
    uniform_parts: bool = False  # every part but the last the same size
    max_parts: int = 10_000  # parts of one multipart upload
    min_part_size: int = 5 * MiB  # smallest part but the last
    # botocore's request_checksum_calculation and response_checksum_validation. Always
    # "when_required": the default ("when_supported") sends aws-chunked bodies with
    # trailing CRC32s that MinIO, Ceph, B2 and GCS reject or mishandle, and moto needs
    # plain bodies too.
    checksums: str = "when_required"
    path_style: bool = False  # endpoint/bucket/key instead of bucket.endpoint/key
    retry_mode: str = "standard"  # botocore retry mode
    retry_attempts: int = 4  # botocore max_attempts: retries after the first try
    copy_parts: bool = True  # UploadPartCopy works: concatenation copies inside S3
    batch_delete: bool = True  # DeleteObjects works: else one DeleteObject per key


PROFILES: dict[str, Profile] = {
    profile.name: profile
    for profile in (
        Profile("aws"),
        # R2 refuses to complete an upload whose non-final parts differ in size.
        Profile("r2", uniform_parts=True),
        # Self-hosted: usually one host name without wildcard DNS for buckets.
        Profile("minio", path_style=True),
        Profile("ceph", path_style=True),
        # B2 answers 503 (SlowDown) by design when a vault is busy: retry longer, and let
        # adaptive mode slow this client down instead of failing uploads.
        Profile("b2", retry_mode="adaptive", retry_attempts=10),
        # Scaleway takes at most 1,000 parts per upload (5 MiB to 5 GB each).
        Profile("scaleway", max_parts=1000),
        # GCS's XML API has no UploadPartCopy and no DeleteObjects.
        Profile("gcs", copy_parts=False, batch_delete=False),
    )
}
NAMES = tuple(PROFILES)


def profile(name: str) -> Profile:
    """The profile called `name`; ValueError for an unknown one."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown S3 profile {name!r}; expected one of {', '.join(NAMES)}") from None
