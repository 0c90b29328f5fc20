"""Domain errors of fscore. Each subclasses the matching builtin so callers can
catch `ValueError`/`OSError` without knowing fstore; none knows about HTTP."""


class FStoreError(Exception):
    """Base class of every fstore error."""


class SchemaError(FStoreError, ValueError):
    """A table schema or a batch that does not match it."""


class KeyEncodingError(FStoreError, ValueError):
    """An entity key that cannot be encoded (wrong type, too long)."""


class ReadOnlyError(FStoreError, PermissionError):
    """A write attempted through a read-only (reader) handle."""


class WalError(FStoreError, OSError):
    """Base of write-ahead-log errors."""


class WalCorruption(WalError):
    """A bad record before the tail of the log: recovery refuses to start."""

    def __init__(self, message: str, path: str = "", offset: int = -1):
        super().__init__(message)
        self.path = path
        self.offset = offset


class WalFsyncError(WalError):
    """fsync failed: the log is poisoned; nothing after it is acknowledged."""


class CheckpointError(FStoreError, OSError):
    """A checkpoint that cannot be written or read."""


class WindowSpecError(FStoreError, ValueError):
    """A window or aggregation definition that the engine cannot compute
    (e.g. a size that is not a multiple of the hop, an unknown aggregation)."""


class WindowStateError(FStoreError, ValueError):
    """Serialised window state that does not match the view restoring it."""
