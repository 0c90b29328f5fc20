"""Engine errors (no HTTP here: the API maps them to statuses in one place)."""
from fscore.errors import FStoreError


class EngineError(FStoreError):
    """Base of engine errors."""


class UnknownStreamError(EngineError, LookupError):
    """A push to a stream the registry does not define."""


class BatchError(EngineError, ValueError):
    """A pushed batch that does not match its stream: unknown or missing
    columns, values that do not convert, null keys or timestamps."""


class RequestDataError(BatchError):
    """A read's request columns (the inputs of on-demand features) are
    missing, or hold values that are not of their request source's types."""


class OnDemandFunctionError(EngineError, ValueError):
    """A Python on-demand view's function raised, or returned the wrong shape."""


class AsOfOutsideHorizon(EngineError, ValueError):
    """An online read `as_of` a time the online state no longer covers."""


class UnsupportedOnlineError(EngineError, ValueError):
    """A definition the online engine cannot run (it stays offline-only)."""


class PartitionOwned(EngineError, ValueError):
    """A write the engine refuses because the stream's keys belong to Kafka
    partitions (`kafka.assign: group`): it would live on one node only."""


class EngineUnavailable(EngineError, ConnectionError):
    """The engine could not be reached (starting, restarting or gone): the
    request was not delivered, so nothing of it happened."""


class OutcomeUnknown(EngineUnavailable):
    """The engine was reached but did not answer (it died or timed out): a
    write may or may not have been applied. Retrying with the same
    idempotency key is safe."""
