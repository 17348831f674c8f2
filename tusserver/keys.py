"""What a request carries between the middlewares and the handlers (aiohttp request storage)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .auth import Claims
    from .body import Body
    from .ietf import Dialect
    from .owners import Quota

UPLOAD_ID = web.RequestKey("tus_upload_id", str)  # for the access log and metrics
BODY: web.RequestKey[Body] = web.RequestKey("tus_body")  # the Body being received, so it can be stopped
STOP_REASON = web.RequestKey("tus_stop_reason", Exception)  # a stop that came before the body
BYTES_IN = web.RequestKey("tus_bytes_in", int)
MAX_SIZE: web.RequestKey[int | None] = web.RequestKey("tus_max_size")  # computed once per request
AUTH_SUBJECT: web.RequestKey[str | None] = web.RequestKey("tus_auth_subject")  # the bearer token's `sub`
AUTH_CLAIMS: web.RequestKey[Claims] = web.RequestKey("tus_auth_claims")  # of the bearer token, when tokens are on
QUOTA: web.RequestKey[Quota] = web.RequestKey("tus_quota")  # computed once per request
HOOK_HEADERS = web.RequestKey("tus_hook_headers", dict)  # headers post-finish hooks asked for (2xx only)
DIALECT: web.RequestKey[Dialect] = web.RequestKey("tus_ietf_dialect")  # of a request of the IETF draft
OPS_REQUEST = web.RequestKey("tus_ops_request", bool)  # /metrics, /healthz, /readyz: not counted
