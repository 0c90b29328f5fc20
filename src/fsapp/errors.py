"""App-level errors of fsapp outside the registry (which has its own module,
`fsapp.registry.errors`). Each subclasses the matching builtin so callers can
catch `ValueError`/`LookupError` without importing fstore; none knows HTTP
(one module of the API maps them to statuses)."""
from __future__ import annotations

from fscore.errors import FStoreError


class OfflineError(FStoreError):
    """Base of offline-store errors."""


class EntityDataFrameError(OfflineError, ValueError):
    """An entity_df that cannot be joined: missing timestamp or key column,
    a timestamp column of the wrong type, an unreadable path."""


class UnknownFeatureError(OfflineError, LookupError):
    """A feature or view name the caller asked for that no view defines."""


class SourceError(OfflineError, ValueError):
    """A stream or batch source that is unknown, unreadable or lacks a column
    a view needs."""


class FeatureNameCollision(OfflineError, ValueError):
    """Two requested features would get the same output column name."""
