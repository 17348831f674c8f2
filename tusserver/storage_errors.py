"""What a store raises when storage says no, in storage terms. The stores know nothing of
HTTP: errors.from_storage is the one place that turns these into tus answers."""

from __future__ import annotations


class StorageError(Exception):
    """A store's failure; `detail` says more, for the client and the log."""

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or type(self).__doc__)
        self.detail = detail


class NotFound(StorageError):
    """No such upload, or its bytes are gone."""


class Unavailable(StorageError):
    """The storage backend failed or did not answer; a retry may work."""


class Full(StorageError):
    """No room now: the temp space for parts in flight is used up; a retry may work."""


class Conflict(StorageError):
    """The change collides with the stored state."""


class IdTaken(Conflict):
    """An upload with this id exists."""


class KeyTaken(Conflict):
    """Another upload in progress is writing to the same storage key."""


class BadPlacement(StorageError):
    """A storage key, bucket or object setting that the store may not use (from a hook
    or the key template: the server's configuration is at fault, not the client)."""


class OffsetMismatch(Conflict):
    """The stored upload is at another offset than the change assumes."""


class Corrupt(StorageError):
    """An upload's `.info` cannot be read: truncated (a power loss), or written by a newer
    version. The client gets a 500; the upload is left to an operator, never removed."""

    def __init__(self, upload_id: str, reason: str) -> None:
        super().__init__(reason)
        self.upload_id = upload_id
        self.reason = reason


class TooLarge(StorageError):
    """More bytes than this storage can hold for one upload."""


class BodyTooLarge(StorageError):
    """More bytes in one all-or-nothing (checksummed) body than this store takes at once."""
