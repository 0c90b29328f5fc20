"""Engine errors (no HTTP here: the API maps them to statuses in one place)."""
from fscore.errors import FStoreError


class EngineError(FStoreError):
    """Base of engine errors."""


class UnknownStreamError(EngineError, LookupError):
    """A push to a stream the registry does not define."""


class BatchError(EngineError, ValueError):
    """A pushed batch that does not match its stream: unknown or missing
    columns, values that do not convert, null keys or timestamps."""


class AsOfOutsideHorizon(EngineError, ValueError):
    """An online read `as_of` a time the online state no longer covers."""


class UnsupportedOnlineError(EngineError, ValueError):
    """A definition the online engine cannot run (it stays offline-only)."""
