"""The S3 lifecycle configuration `tusserver s3-lifecycle` prints, for the operator to apply
with `aws s3api put-bucket-lifecycle-configuration`: storage debris then goes away even
when no server runs a cleanup. Pure: it reads the config and returns a dict."""

from __future__ import annotations

import math
from typing import Any

from .config import Config

ABORT_RULE = "tusserver-abort-incomplete-multipart-uploads"
STATE_RULE = "tusserver-expire-stale-state"
DAY = 86400.0


def state_prefix(config: Config) -> str:
    """Where upload state (`.info`, tail chunks, markers) lives: s3_state_prefix, else s3_prefix."""
    return config.s3_prefix if config.s3_state_prefix is None else config.s3_state_prefix


def default_state_days(config: Config) -> int:
    """expire_after rounded up to whole days, plus one day for an upload's own duration
    and the cleaner's lag; at least 1 (S3 counts lifecycle age in whole days)."""
    after = config.expire_after or 0.0
    return max(1, math.ceil(after / DAY) + 1)


def lifecycle_configuration(
    config: Config, *, abort_after_days: int = 7, expire_state_days: int | None = None
) -> dict[str, Any]:
    """The LifecycleConfiguration: always the rule that aborts incomplete multipart uploads
    in the whole bucket; the rule that expires state objects under the state prefix when
    finished uploads expire too (expire_finished) or `expire_state_days` is given.
    ValueError, worded for the operator, for a rule that cannot be made safely."""
    if abort_after_days < 1:
        raise ValueError("--abort-after-days must be at least 1")
    rules: list[dict[str, Any]] = [
        {
            "ID": ABORT_RULE,
            "Status": "Enabled",
            # The whole bucket: a chosen storage key may put an upload anywhere in it.
            "Filter": {"Prefix": ""},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": abort_after_days},
        }
    ]
    wanted = expire_state_days is not None or (config.expire_finished and config.expire_after is not None)
    if wanted:
        days = default_state_days(config) if expire_state_days is None else expire_state_days
        if days < 1:
            raise ValueError("--expire-state-days must be at least 1")
        prefix = state_prefix(config)
        if not prefix and not config.s3_dedicated_bucket:
            raise ValueError(
                "the state prefix is empty, so expiring state would expire every object in the bucket; "
                "set s3_prefix (or s3_state_prefix), or s3_dedicated_bucket = true if only tusserver writes to it"
            )
        rules.append(
            {"ID": STATE_RULE, "Status": "Enabled", "Filter": {"Prefix": prefix}, "Expiration": {"Days": days}}
        )
    return {"Rules": rules}
