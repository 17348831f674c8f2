"""UploadInfo: the state of one upload, and its `.info` JSON form shared by every store."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1


@dataclass
class FinalProgress:
    """How far a final upload is towards its concatenation, kept in its `.info` so that
    reading its state costs one read, whatever the number of partials."""

    limit: int | None = None  # the size limit that applied when the final was created
    ready: int = 0  # how many leading partials are known to be finished
    ready_bytes: int = 0  # their total length
    failure: str | None = None  # the error code (errors.FINAL_FAILURES) of a final that cannot complete

    def to_doc(self) -> dict[str, Any]:
        return {"limit": self.limit, "ready": self.ready, "ready_bytes": self.ready_bytes, "failure": self.failure}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> FinalProgress:
        return cls(
            limit=doc.get("limit"),
            ready=int(doc.get("ready") or 0),
            ready_bytes=int(doc.get("ready_bytes") or 0),
            failure=doc.get("failure"),
        )


@dataclass
class UploadInfo:
    id: str
    length: int | None  # None while the length is deferred
    metadata: dict[str, str | None] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    expires: float | None = None
    concat: str | None = None  # None, "partial" or "final"
    partials: list[str] = field(default_factory=list)  # ids, for a final upload
    progress: FinalProgress | None = None  # for a final upload
    finished: bool = False
    storage: dict[str, Any] = field(default_factory=dict)  # store specifics (path, bucket, key...)
    owner: str | None = None  # who may use it when tokens are on: the token's `sub`, or a hook's choice
    # What hooks record for the server (never sent to clients, unlike `metadata`).
    server_metadata: dict[str, str | None] = field(default_factory=dict)
    listed: bool = False  # has entries in the owners' index (see owners.py)
    # Derived by the store on every read, never persisted: stored state is the truth.
    offset: int = 0

    @property
    def deferred(self) -> bool:
        return self.length is None

    def expired(self, now: float, include_finished: bool = False) -> bool:
        """Past its expiry; a finished upload only expires when `include_finished`."""
        if self.expires is None or self.expires >= now:
            return False
        return include_finished or not self.finished

    def to_json(self) -> bytes:
        doc = {
            "version": SCHEMA_VERSION,
            "id": self.id,
            "length": self.length,
            "metadata": self.metadata,
            "created": self.created,
            "expires": self.expires,
            "concat": self.concat,
            "partials": self.partials,
            "progress": None if self.progress is None else self.progress.to_doc(),
            "finished": self.finished,
            "storage": self.storage,
            "owner": self.owner,
            "server_metadata": self.server_metadata,
            "listed": self.listed,
        }
        # ensure_ascii keeps surrogate-escaped metadata bytes representable.
        return json.dumps(doc, separators=(",", ":")).encode("ascii")

    @classmethod
    def from_json(cls, data: bytes) -> UploadInfo:
        doc = json.loads(data)
        if doc.get("version") != SCHEMA_VERSION:
            raise ValueError(f"unknown .info schema version {doc.get('version')!r}")
        return cls(
            id=doc["id"],
            length=doc["length"],
            metadata=doc.get("metadata") or {},
            created=doc.get("created") or 0.0,
            expires=doc.get("expires"),
            concat=doc.get("concat"),
            partials=list(doc.get("partials") or []),
            progress=FinalProgress.from_doc(doc["progress"]) if doc.get("progress") else None,
            finished=bool(doc.get("finished")),
            storage=doc.get("storage") or {},
            # Absent from .info files written before owners existed.
            owner=doc.get("owner"),
            server_metadata=doc.get("server_metadata") or {},
            listed=bool(doc.get("listed")),
        )
