"""One Config dataclass. Loading it from TOML, environment and CLI lives in load.py.

Each key carries its description (`setting(default, help)`): `tusserver --help` shows it,
and a test checks that config.example.toml's comment on the key says the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30


def setting(default: Any, help: str, *, secret: bool = False) -> Any:
    """A Config field with its description; a secret one never appears in repr() or messages."""
    metadata = {"help": help}
    if isinstance(default, list):
        items = tuple(default)
        return field(default_factory=lambda: list(items), repr=not secret, metadata=metadata)
    return field(default=default, repr=not secret, metadata=metadata)


@dataclass
class Config:
    # HTTP
    host: str = setting("127.0.0.1", 'Address to listen on. Use "0.0.0.0" to accept connections from other machines.')
    port: int = setting(1080, "TCP port to listen on.")
    base_path: str = setting(
        "/files/",
        "Path prefix of the upload collection: uploads are created with POST /files/ (or POST /files) "
        "and live at /files/<id>.",
    )
    behind_proxy: bool = setting(
        False,
        "Trust Forwarded / X-Forwarded-Proto / X-Forwarded-Host for the Location URL. Only enable this "
        "behind your own reverse proxy, which must overwrite those headers.",
    )
    public_url: str | None = setting(
        None, "Fixed scheme://host[:port] for Location URLs, instead of what the request says."
    )
    relative_location: bool = setting(False, "Send Location as a path (/files/<id>) instead of an absolute URL.")
    cors_origins: list[str] = setting(
        ["*"],
        'Origins allowed by CORS: "*" (any origin), an exact origin ("https://app.example.com"), or '
        '"re:<regex>" matched against the whole origin. An empty list allows no origin.',
    )
    cors_credentials: bool = setting(
        False, "Send Access-Control-Allow-Credentials: true (the allowed origin is then echoed back)."
    )
    cors_max_age: int = setting(86400, "Seconds a browser may cache a preflight answer.")
    cors_allow_headers: list[str] = setting(
        [], 'Request headers to allow in addition to the tus ones (e.g. "Authorization").'
    )
    uvloop: bool = setting(
        True, 'Run on uvloop when it is installed (pip install "tusserver[speed]"); false keeps asyncio\'s loop.'
    )
    # Protocol
    # The limits below default to values a tusd or Uppy user would not notice, so that a
    # fresh server (and the Docker image) is no unlimited file host; "none" lifts each.
    max_size: int | None = setting(
        10 * GiB, 'Largest upload accepted, advertised as Tus-Max-Size (413 beyond). "none": no limit.'
    )
    downloads: bool = setting(True, "Serve finished uploads with GET /files/<id> (Range, ETag, Content-Disposition).")
    expire_after: float | None = setting(
        86400.0,
        "An unfinished upload expires this many seconds after its creation or last PATCH (sent as "
        'Upload-Expires); expired uploads answer 410 and are cleaned up. "none": uploads never expire.',
    )
    expire_finished: bool = setting(False, "Let finished uploads expire too (for servers that only stage files).")
    cleanup_interval: float = setting(
        60.0, "Seconds between background cleanup passes of expired uploads (at least 1)."
    )
    lock_timeout: float = setting(
        3.0,
        "Seconds a request waits for another request on the same upload to let go of it (the older "
        "request is asked to stop) before answering 423.",
    )
    read_timeout: float | None = setting(
        60.0,
        "Seconds a request body may stall before the request is answered 408; the bytes received so far "
        'are kept. "none" waits forever.',
    )
    min_upload_rate: int | None = setting(
        1024,
        "Bytes per second a request body must average over each min_upload_rate_window (time spent "
        'waiting for the store does not count); slower requests are answered 408 and keep the bytes '
        'received. "none" allows any rate.',
    )
    min_upload_rate_window: float = setting(
        60.0, "Seconds over which min_upload_rate is measured: a body may pause within a window."
    )
    shutdown_grace: float = setting(
        30.0, "Seconds uploads in flight get to finish on SIGTERM/SIGINT; new uploads are answered 503 meanwhile."
    )
    # Downloads
    max_concurrent_downloads: int = setting(
        32,
        "Most downloads (GET) served at once by this instance; beyond it they are answered 503 with "
        "Retry-After. On the S3 store, downloads also have a connection pool of this size of their own.",
    )
    download_stall_timeout: float = setting(
        30.0,
        "Seconds a download may wait for its client to read more (about 64 KiB) before the connection is closed.",
    )
    # Several instances
    workers: int = setting(
        1,
        "Server processes sharing the port, each with its own event loop (at least 1; e.g. one per core). "
        "Their locks go through redis_url when it is set, else through files in lock_dir.",
    )
    lock_dir: str | None = setting(
        None,
        "Directory of the upload locks that server processes on one machine share when redis_url is unset. "
        "Unset: workers > 1 use a private temporary one. Set it to share locks between separate servers "
        "on this machine.",
    )
    redis_url: str | None = setting(
        None,
        "Redis for the per-upload locks of several instances (pip install 'tusserver[redis]'). "
        "Unset: locks live in this process, which is right for a single instance.",
    )
    redis_prefix: str = setting(
        "tusserver", "Prefix of the lock keys and pub/sub channels, so that several deployments can share one Redis."
    )
    lock_lease: float = setting(
        10.0,
        "Seconds a Redis lock lives without renewal (at least 1); the lock of a crashed instance frees "
        "itself after at most this long.",
    )
    # Limits
    max_metadata_size: int | None = setting(
        4 * KiB, 'Largest Upload-Metadata header accepted, in bytes (413 beyond). "none": no limit.'
    )
    max_metadata_count: int | None = setting(
        32, 'Most keys accepted in Upload-Metadata (400 beyond). "none": no limit.'
    )
    max_append_size: int | None = setting(
        None,
        "Largest body one request may carry (a PATCH, or a creation with data), in bytes (413 beyond); "
        "IETF draft clients see it in Upload-Limit as max-append-size. Unset: no limit.",
    )
    quota_bytes: int | None = setting(
        None,
        "Bytes one owner (a token's sub) may hold: the lengths of their uploads (bytes received while "
        "deferred). Beyond it, creation and PATCH answer 413. Needs tokens. Unset: no limit.",
    )
    quota_uploads: int | None = setting(
        None, "Uploads one owner may hold, finished ones included (413 beyond). Needs tokens. Unset: no limit."
    )
    max_concurrent_uploads: int | None = setting(
        200,
        "Most uploads receiving bytes at once on this instance (PATCHes, and POSTs with a body); beyond it "
        'requests are answered 503 with Retry-After. "none": no limit.',
    )
    max_concat_partials: int = setting(
        100, "Most partial uploads one final (concatenated) upload may name, each at most once (400 beyond)."
    )
    max_finals_per_partial: int = setting(
        10,
        "Most final uploads a partial upload may become part of (409 beyond), so that one uploaded byte is "
        "stored at most this many times more.",
    )
    # Access control
    downloads_require_hook: bool = setting(False, "Downloads (GET) answer 403 unless a pre-get hook approves them.")
    auth_secret: str | None = setting(
        None,
        'Secret that signs bearer tokens. When set, every request but OPTIONS needs "Authorization: '
        'Bearer <token>"; mint tokens with `tusserver token`.',
        secret=True,
    )
    auth_jwks_url: str | None = setting(
        None,
        "URL of an identity provider's JWKS: RS256, ES256 (P-256) and EdDSA (Ed25519) tokens are checked "
        "against the keys it publishes. Either this or auth_secret, or both, turns tokens on.",
    )
    auth_issuer: str | None = setting(None, "When set, a token must carry this issuer (iss).")
    auth_audience: str | None = setting(
        None, "When set, a token must carry this audience (aud); a token with an aud is refused while unset."
    )
    auth_leeway: float = setting(30.0, "Seconds of clock skew allowed on exp, nbf and iat (0 to 300).")
    auth_max_ttl: float = setting(
        30 * 86400.0,
        "Tokens that expire more than this many seconds from now are refused, and `tusserver token --ttl` "
        "cannot exceed it.",
    )
    ops_host: str | None = setting(None, "Address of the ops listener (with ops_port). Unset: host.")
    ops_port: int | None = setting(
        None,
        "Serve /metrics, /healthz and /readyz on this port only, not on the main listener. Unset: on the "
        "main listener.",
    )
    # Hooks (Python callbacks are passed to create_app; these configure the HTTP webhook)
    hooks_url: str | None = setting(
        None, "URL that receives a JSON POST for each event in hooks_events. Unset: no webhook."
    )
    hooks_events: list[str] = setting(
        ["pre-create", "post-create", "post-finish", "post-terminate"],
        "Events sent to hooks_url: pre-create, post-create, post-receive, pre-finish, post-finish, "
        "pre-terminate, post-terminate, pre-get, pre-access.",
    )
    hooks_forward_headers: list[str] = setting(
        [], 'Request headers copied into the webhook payload (e.g. ["Authorization"]).'
    )
    hooks_timeout: float = setting(
        5.0, "Seconds one webhook request may take (a pre-* hook that times out answers 503)."
    )
    hooks_retries: int = setting(
        3, "How often a failed post-* webhook is retried (in the background) after a network error or a 5xx answer."
    )
    hooks_backoff: float = setting(1.0, "Seconds before the first retry; each further retry waits twice as long.")
    hooks_queue_size: int = setting(
        1000,
        "post-* webhook events waiting for delivery, at most; beyond it new events are dropped and counted "
        "in tusserver_hook_dropped_total.",
    )
    hooks_workers: int = setting(8, "post-* webhook events delivered at once (each with its retries).")
    progress_interval: float = setting(1.0, "Seconds between post-receive (progress) events while a PATCH is running.")
    # Stores
    store: str = setting("file", 'Where uploads are kept: "file" (local disk) or "s3".')
    file_dir: str = setting(
        "./data",
        "Directory of the file store: <id> (the bytes while in progress) and <id>.info (the state) per upload.",
    )
    storage_key_template: str = setting(
        "{id}",
        "Where a finished upload lands, relative to file_dir or s3_prefix: placeholders {id}, {owner}, "
        "{yyyy}, {mm}, {dd} (creation date, UTC) and {ext} (from the filename), e.g. "
        '"{owner}/{yyyy}/{mm}/{id}{ext}". Must contain {id}. A pre-create hook may choose the key instead.',
    )
    keep_info_after_finish: bool = setting(
        True,
        "Keep an upload's state (.info) once it is finished, so HEAD and GET by its URL keep working. "
        "false: delete it once the upload is finished and its hooks ran (the data stays at its key).",
    )
    temp_dir: str | None = setting(
        None,
        "Directory for spooling request bodies (checksummed PATCHes, S3 parts). Unset: the system temp directory.",
    )
    temp_max_size: int | None = setting(
        2048 * MiB,
        "Most bytes the S3 store's spool files may hold at once; beyond it, PATCHes are answered 503 "
        "(retry later). Unset: no limit.",
    )
    s3_bucket: str | None = setting(
        None, "Bucket of the S3 store; checked at start-up (the server refuses to start without access)."
    )
    s3_endpoint: str | None = setting(None, "Endpoint for S3-compatible services (MinIO, R2, ...). Unset: AWS.")
    s3_region: str | None = setting(None, "Region. Unset: from the AWS chain (AWS_DEFAULT_REGION, ~/.aws/config).")
    s3_prefix: str = setting("", 'Key prefix for every object this server writes (e.g. "uploads/").')
    s3_state_prefix: str | None = setting(
        None,
        "Key prefix of the upload state objects (.info, tail chunks, indexes). Unset: s3_prefix, next to the data.",
    )
    s3_allowed_buckets: list[str] = setting(
        [], "Buckets besides s3_bucket that a pre-create hook may send an upload to; each is checked at start-up."
    )
    s3_dedicated_bucket: bool = setting(
        False,
        "The bucket holds nothing but this server's uploads. Orphan cleanup (aborting multipart uploads and "
        "deleting .part objects that no .info records) runs only with a non-empty s3_prefix or this set.",
    )
    s3_profile: str = setting(
        "aws",
        'What the S3 provider needs: "aws", "r2", "minio", "ceph", "b2", "scaleway" or "gcs" (part sizes, '
        "part count, addressing style, retries, UploadPartCopy; README: S3 provider profiles). A key set "
        "below (s3_path_style, s3_uniform_parts, s3_max_parts) wins over it.",
    )
    s3_path_style: bool | None = setting(
        None,
        "Path-style URLs (endpoint/bucket/key), needed by MinIO and most self-hosted S3. Unset: from "
        "s3_profile (true for minio and ceph).",
    )
    s3_min_part_size: int = setting(
        5 * MiB, "Smallest part S3 accepts for every part but the last (5 MiB on AWS, and at least that)."
    )
    s3_part_size: int = setting(16 * MiB, "Size of the multipart parts the server uploads (at most 5 GiB).")
    s3_uniform_parts: bool | None = setting(
        None,
        "Make every part but the last the same size (required by Cloudflare R2). Unset: from s3_profile "
        "(true for r2).",
    )
    s3_max_parts: int | None = setting(
        None,
        "Most parts of one multipart upload (1 to 10000); parts grow so that an upload never needs more. "
        "Unset: from s3_profile (1000 for scaleway, else 10000).",
    )
    s3_upload_concurrency: int = setting(4, "Parts uploaded in parallel for one upload.")
    s3_max_concurrency: int = setting(16, "Parts uploaded in parallel across all uploads of this server.")
    s3_presigned_downloads: bool = setting(
        False, "Answer downloads with a 302 redirect to a presigned S3 GET URL (the bytes skip the server)."
    )
    s3_presign_expiry: float = setting(3600.0, "Seconds a presigned download URL stays valid.")
    # S3 object settings (stores/s3_policy.py)
    s3_cache_control: str | None = setting(
        None, 'Cache-Control of every finished object (e.g. "private, max-age=86400"). Unset: none.'
    )
    s3_storage_class: str | None = setting(
        None, 'Storage class of every finished object (e.g. "STANDARD_IA"). Unset: the bucket\'s default (STANDARD).'
    )
    s3_allowed_storage_classes: list[str] = setting(
        [], "Storage classes a pre-create hook may choose per upload, besides s3_storage_class."
    )
    s3_sse: str | None = setting(
        None, 'Server-side encryption of finished objects: "AES256" or "aws:kms". Unset: the bucket\'s default.'
    )
    s3_sse_kms_key_id: str | None = setting(
        None, 'KMS key (id, ARN or alias) for s3_sse = "aws:kms". Unset: the AWS managed key.'
    )
    s3_tags: list[str] = setting(
        [],
        'Tags of every finished object, as "name=value" (at most 10); a pre-create hook may add more, within S3\'s '
        "limit of 10.",
    )
    s3_metadata_keys: list[str] = setting(
        ["filename", "filetype"],
        'Upload-Metadata keys copied into the object\'s S3 user metadata (ASCII, 2 KiB in all); "*" copies every '
        "key. Every key stays in .info.",
    )
    # Logging
    log_level: str = setting("info", "Log level: debug, info, warning, error or critical.")
    log_format: str = setting("text", 'Log format: "text" or "json" (one JSON object per line).')
