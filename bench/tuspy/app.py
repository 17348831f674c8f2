"""tuspyserver (a FastAPI router) as a bench target, served by uvicorn from bench/run.py.

bench/run.py installs the pinned tuspyserver into bench/tuspy/.deps (no dependencies: it
runs on the fastapi, starlette and uvicorn that serve our ASGI front door) and sets
TUSPY_FILES_DIR and TUSPY_MAX_SIZE.
"""

from __future__ import annotations

import os

from fastapi import FastAPI
from tuspyserver import create_tus_router

app = FastAPI()
# Its default local-file layout: <dir>/<id> holds the bytes, <dir>/<id>.info the state,
# <dir>/.locks/ its flock files. Limits as close to ours as it has: our max_size, and
# expiry after a day (it counts in days).
app.include_router(
    create_tus_router(
        prefix="files",
        files_dir=os.environ["TUSPY_FILES_DIR"],
        max_size=int(os.environ["TUSPY_MAX_SIZE"]),
        days_to_keep=1,
    )
)
