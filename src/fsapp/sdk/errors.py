"""Errors of the SDK's HTTP client, and the map that turns an error response
back into the exception class the server raised.

The REST API answers every error with `{"title", "description"}`, the title
naming the domain error family (`fsapp.api.errors`). `error_from_response`
inverts that table, so `Client` raises the same class `FeatureStore` would
(a `NotFoundError` for an unknown view, a `BatchError` for a bad push...)
with the server's message. Problems only HTTP has (auth, content types,
sizes, an unreachable server) get the classes below. Every instance carries
`.status` (the HTTP status; None when no answer came back).
"""
from __future__ import annotations

from fscore.errors import (CheckpointError, FStoreError, KeyEncodingError, SchemaError, WalError, WindowSpecError,
                           WindowStateError)

from fsapp.engine.errors import (
    BatchError, OnDemandFunctionError, PartitionOwned, RequestDataError, UnknownStreamError, UnsupportedOnlineError,
)
from fsapp.errors import EntityDataFrameError, FeatureNameCollision, SourceError, UnknownFeatureError
from fsapp.registry.errors import NotFoundError, RegistryError


class ClientError(FStoreError):
    """Base of errors only an HTTP client sees."""

    status: int | None = None


class RequestError(ClientError, ValueError):
    """The server could not read the request (400, 406, 413, 415, 422 shape)."""


class AuthError(ClientError, PermissionError):
    """No, unknown or insufficient API key (401, 403)."""


class ServiceUnavailable(ClientError, ConnectionError):
    """No answer (connection refused, timeout) or a 503: a write, if any, was
    not acknowledged; its outcome may be unknown (`Client.push` retries with
    the same idempotency key, which the server applies at most once)."""


class ServerError(ClientError, RuntimeError):
    """A 5xx the server could not explain (its log has the details)."""


# title written by fsapp.api.errors / fsapp.api.auth → class raised here.
# tests/unit/test_sdk_client.py checks this covers every title the API maps.
TITLE_TO_CLASS: dict[str, type[Exception]] = {
    "Not found": NotFoundError,
    "Unknown stream": UnknownStreamError,
    "Unknown feature": UnknownFeatureError,
    "Batch does not match the stream": BatchError,
    "Request data does not fit the on-demand features": RequestDataError,
    "On-demand function failed": OnDemandFunctionError,
    "Entities do not match the features": EntityDataFrameError,
    "Feature name collision": FeatureNameCollision,
    "Source cannot be read": SourceError,
    "Not served online": UnsupportedOnlineError,
    "Bad entity key": KeyEncodingError,
    "Schema mismatch": SchemaError,
    "Bad window": WindowSpecError,
    "Bad definition or reference": RegistryError,
    "Store cannot persist": WalError,
    "Store state unusable": WindowStateError,
    "Engine unavailable": ServiceUnavailable,
    "Outcome unknown": ServiceUnavailable,
    "Owned by Kafka partitions": PartitionOwned,
}
# added with the engine's as_of horizon check (the map must follow fsapp.api.errors)
_as_of = getattr(__import__("fsapp.engine.errors", fromlist=["x"]), "AsOfOutsideHorizon", None)
if _as_of is not None:
    TITLE_TO_CLASS["as_of outside the online horizon"] = _as_of
# checkpoint failures share WalError's title; both are OSErrors, like here
_ = CheckpointError

_BY_STATUS: dict[int, type[ClientError]] = {400: RequestError, 401: AuthError, 403: AuthError, 404: RequestError,
                                            406: RequestError, 409: RequestError, 413: RequestError, 415: RequestError,
                                            422: RequestError, 503: ServiceUnavailable}


def error_from_response(status: int, body: bytes, url: str) -> Exception:
    """The exception for an HTTP error answer: the domain class when the title
    names one, else a ClientError subclass by status."""
    import json

    title, description = None, None
    try:
        doc = json.loads(body)
        title, description = doc.get("title"), doc.get("description")
    except (ValueError, AttributeError):
        pass
    message = description or (body[:200].decode("utf-8", "replace").strip() if body else f"HTTP {status}")
    cls = TITLE_TO_CLASS.get(title or "")
    if cls is None:
        cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else RequestError)
        if status == 404 and title in (None, "Not found", "404 Not Found"):
            cls = NotFoundError
        if status >= 500 and status != 503:
            message = f"{message} ({url} answered {status}; the server log has the details)"
    exc = cls(message)
    exc.status = status
    exc.title = title
    return exc
