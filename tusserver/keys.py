"""What a request carries between the middlewares and the handlers (aiohttp request storage)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

UPLOAD_ID = web.RequestKey("tus_upload_id", str)  # for the access log and metrics
BODY = web.RequestKey("tus_body", Any)  # the Body being received, so it can be stopped
STOP_REASON = web.RequestKey("tus_stop_reason", BaseException)  # a stop that came before the body
BYTES_IN = web.RequestKey("tus_bytes_in", int)
MAX_SIZE = web.RequestKey("tus_max_size", Any)  # int | None, computed once per request
AUTH_SUBJECT = web.RequestKey("tus_auth_subject", Any)  # the bearer token's `sub`, if any
AUTH_CLAIMS = web.RequestKey("tus_auth_claims", Any)  # auth.Claims of the bearer token, when tokens are on
QUOTA = web.RequestKey("tus_quota", Any)  # owners.Quota, computed once per request
HOOK_HEADERS = web.RequestKey("tus_hook_headers", dict)  # headers post-finish hooks asked for (2xx only)
DIALECT = web.RequestKey("tus_ietf_dialect", Any)  # ietf.Dialect of a request of the IETF draft
OPS_REQUEST = web.RequestKey("tus_ops_request", bool)  # /metrics, /healthz, /readyz: not counted
