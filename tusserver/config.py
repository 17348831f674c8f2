"""One Config dataclass. Loading it from TOML, environment and CLI lives in load.py."""

from __future__ import annotations

from dataclasses import dataclass, field

MiB = 1 << 20


@dataclass
class Config:
    # HTTP
    host: str = "127.0.0.1"
    port: int = 1080
    base_path: str = "/files/"
    behind_proxy: bool = False  # trust Forwarded / X-Forwarded-* (only behind your own proxy)
    public_url: str | None = None  # e.g. "https://uploads.example.com"; overrides the request's
    relative_location: bool = False
    cors_origins: list[str] = field(default_factory=lambda: ["*"])  # "*", origins, "re:<full-match regex>"
    cors_credentials: bool = False
    cors_max_age: int = 86400
    cors_allow_headers: list[str] = field(default_factory=list)
    uvloop: bool = True  # run on uvloop when it is installed (pip install tusserver[speed])
    # Protocol
    max_size: int | None = None
    downloads: bool = True
    expire_after: float | None = None  # seconds an unfinished upload lives after its last PATCH
    expire_finished: bool = False  # let finished uploads expire too
    cleanup_interval: float = 60.0
    lock_timeout: float = 3.0
    read_timeout: float | None = 60.0  # seconds a PATCH body may stall
    shutdown_grace: float = 30.0  # seconds in-flight uploads get to finish on SIGTERM/SIGINT
    # Several instances: locks in Redis (needs tusserver[redis]). The URL may hold a password;
    # it is never logged.
    redis_url: str | None = None
    redis_prefix: str = "tusserver"  # key and channel prefix, to share one Redis
    lock_lease: float = 10.0  # seconds a crashed holder's Redis lock outlives it
    # Limits
    max_metadata_size: int | None = None  # bytes of the Upload-Metadata header
    max_metadata_count: int | None = None  # keys in Upload-Metadata
    max_concurrent_uploads: int | None = None  # PATCHes and POSTs with a body in progress; 503 beyond
    # Access control
    downloads_require_hook: bool = False  # GET answers 403 unless a pre-get hook approves
    auth_secret: str | None = field(default=None, repr=False)  # HMAC key of bearer tokens; None: no tokens
    auth_jwks_url: str | None = None  # JWKS of an identity provider; RS256/ES256/EdDSA tokens verify against it
    auth_issuer: str | None = None  # when set, tokens must carry this `iss`
    auth_audience: str | None = None  # when set, tokens must carry this `aud`
    auth_leeway: float = 30.0  # seconds of clock skew allowed on exp, nbf and iat (at most 300)
    auth_max_ttl: float = 30 * 86400.0  # tokens that expire further in the future are refused
    ops_host: str | None = None  # address of the ops listener (ops_port); default: host
    ops_port: int | None = None  # serve /metrics, /healthz, /readyz on this port only; None: on the main one
    # Hooks (Python callbacks are passed to create_app; these configure the HTTP webhook)
    hooks_url: str | None = None  # receives a JSON POST per selected event
    hooks_events: list[str] = field(
        default_factory=lambda: ["pre-create", "post-create", "post-finish", "post-terminate"]
    )
    hooks_forward_headers: list[str] = field(default_factory=list)  # request headers copied into the payload
    hooks_timeout: float = 5.0  # seconds per webhook attempt
    hooks_retries: int = 3  # further attempts of a failed post-* webhook, in the background
    hooks_backoff: float = 1.0  # seconds before the first retry; doubled each time
    progress_interval: float = 1.0  # seconds between post-receive events during one PATCH
    # Stores
    store: str = "file"  # "file" or "s3"
    file_dir: str = "./data"
    temp_dir: str | None = None  # spool directory; the system temp dir by default
    s3_bucket: str | None = None
    s3_endpoint: str | None = None
    s3_region: str | None = None
    s3_prefix: str = ""
    s3_path_style: bool = False
    s3_min_part_size: int = 5 * MiB
    s3_part_size: int = 16 * MiB
    s3_uniform_parts: bool = False  # every non-final part the same size (Cloudflare R2)
    s3_upload_concurrency: int = 4  # parts in flight per upload
    s3_max_concurrency: int = 16  # parts in flight per store
    s3_presigned_downloads: bool = False  # GET redirects (302) to a presigned S3 URL
    s3_presign_expiry: float = 3600.0  # seconds a presigned download URL stays valid
    # Logging
    log_level: str = "info"
    log_format: str = "text"  # "text" or "json"
