"""What the aiohttp front door leaves in aiohttp's request storage, for the middlewares of
an application that tusserver is mounted in (the core keeps its state on the Exchange)."""

from __future__ import annotations

from aiohttp import web

UPLOAD_ID = web.RequestKey("tus_upload_id", str)
BYTES_IN = web.RequestKey("tus_bytes_in", int)  # upload bytes the request's body brought
