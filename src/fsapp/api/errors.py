"""The one place where errors become HTTP statuses.

Domain errors (engine, registry, offline store, fscore) know nothing about
HTTP; `install(app)` maps each family to a status with Falcon's
`add_error_handler` (Falcon picks the most specific handler along the
exception's MRO, so `NotFoundError` wins over its base `RegistryError`).
Request-level problems found by the API itself (bad JSON, wrong content
type, a field of the wrong type) are raised through the helpers below, so
the choice of status for those lives here too.

Every error body is `{"title": ..., "description": "what to fix"}`.
"""
from __future__ import annotations

import json
import logging

import falcon

from fscore.errors import (CheckpointError, KeyEncodingError, SchemaError, WalError, WindowSpecError,
                           WindowStateError)

from fsapp.engine.errors import (
    AsOfOutsideHorizon, BatchError, EngineUnavailable, OnDemandFunctionError,
    OutcomeUnknown, PartitionOwned, RequestDataError, UnknownStreamError, UnsupportedOnlineError,
)
from fsapp.errors import EntityDataFrameError, FeatureNameCollision, SourceError, UnknownFeatureError
from fsapp.registry.errors import NotFoundError, RegistryError

log = logging.getLogger("fsapp.api")


# ---- request-level errors raised by the API layer

def malformed(description: str) -> falcon.HTTPError:
    """The body (or a query parameter) cannot be read at all."""
    return falcon.HTTPBadRequest(title="Malformed request", description=description)


def schema_mismatch(description: str) -> falcon.HTTPError:
    """The body parses but does not have the shape the endpoint takes."""
    return falcon.HTTPUnprocessableEntity(title="Request does not match the schema", description=description)


def not_found(description: str) -> falcon.HTTPError:
    return falcon.HTTPNotFound(title="Not found", description=description)


def unsupported_media(got: str | None, accepted: list[str]) -> falcon.HTTPError:
    return falcon.HTTPUnsupportedMediaType(
        title="Unsupported content type",
        description=f"Content-Type {got!r} is not accepted here; send one of: {', '.join(accepted)}")


def unsupported_encoding(encoding: str) -> falcon.HTTPError:
    return falcon.HTTPUnsupportedMediaType(
        title="Unsupported content encoding",
        description=f"Content-Encoding {encoding!r} is not accepted; send the body uncompressed")


def too_large(limit: int, length: int | None = None) -> falcon.HTTPError:
    got = f"{length} bytes" if length is not None else "more than that"
    return falcon.HTTPContentTooLarge(
        title="Request body too large",
        description=f"the body limit is {limit} bytes and this request sends {got}; split the batch")


def not_acceptable(description: str) -> falcon.HTTPError:
    return falcon.HTTPNotAcceptable(title="Not acceptable", description=description)


def not_implemented(description: str) -> falcon.HTTPError:
    return falcon.HTTPNotImplemented(title="Not implemented", description=description)


# ---- domain errors → statuses

_STATUS_OF = [
    # 404: a name the registry / engine / offline store does not know
    (NotFoundError, falcon.HTTP_404, "Not found"),
    (UnknownStreamError, falcon.HTTP_404, "Unknown stream"),
    (UnknownFeatureError, falcon.HTTP_404, "Unknown feature"),
    # 422: well-formed requests that do not fit the definitions
    (AsOfOutsideHorizon, falcon.HTTP_422, "as_of outside the online horizon"),
    (RequestDataError, falcon.HTTP_422, "Request data does not fit the on-demand features"),
    (OnDemandFunctionError, falcon.HTTP_422, "On-demand function failed"),
    (BatchError, falcon.HTTP_422, "Batch does not match the stream"),
    (EntityDataFrameError, falcon.HTTP_422, "Entities do not match the features"),
    (FeatureNameCollision, falcon.HTTP_422, "Feature name collision"),
    (SourceError, falcon.HTTP_422, "Source cannot be read"),
    (UnsupportedOnlineError, falcon.HTTP_422, "Not served online"),
    (KeyEncodingError, falcon.HTTP_422, "Bad entity key"),
    (SchemaError, falcon.HTTP_422, "Schema mismatch"),
    (WindowSpecError, falcon.HTTP_422, "Bad window"),
    (RegistryError, falcon.HTTP_422, "Bad definition or reference"),
    # 409: the request is fine, but in this deployment another path owns that state
    (PartitionOwned, falcon.HTTP_409, "Owned by Kafka partitions"),
    # 503: the store cannot make writes durable; retrying elsewhere / later is the fix
    (WalError, falcon.HTTP_503, "Store cannot persist"),
    (CheckpointError, falcon.HTTP_503, "Store cannot persist"),
    (WindowStateError, falcon.HTTP_503, "Store state unusable"),
    # the engine process is restarting (fstore serve): the request was not delivered
    (OutcomeUnknown, falcon.HTTP_503, "Outcome unknown"),
    (EngineUnavailable, falcon.HTTP_503, "Engine unavailable"),
]


def _handler(status: str, title: str):
    def handle(req, resp, ex, params):
        if status == falcon.HTTP_503:
            raise falcon.HTTPServiceUnavailable(title=title, description=_unavailable(req, ex), retry_after=5)
        raise falcon.HTTPError(status, title=title, description=str(ex))
    return handle


def _unavailable(req, ex) -> str:
    """What a 503 tells the client, and the operator's log line. The engine
    not reached: nothing happened. Otherwise a write may or may not have
    been applied: say so, and how to retry safely."""
    if isinstance(ex, EngineUnavailable) and not isinstance(ex, OutcomeUnknown):
        log.warning("engine unavailable: %s", ex)
        return f"{ex}."
    if isinstance(ex, OutcomeUnknown):
        log.warning("engine did not answer: %s", ex)
        return f"{ex}."
    # an operator must look at the disk; say so in the log, not only to the client
    log.error("store cannot persist: %s", ex)
    write = req.method == "POST" and req.path.rstrip("/").endswith(("push", "materialize"))
    tail = (" Outcome unknown: retry with the same Idempotency-Key once the store is healthy (GET /ready)."
            if write else " Retry once the store is healthy (GET /ready).")
    return f"{ex}.{tail}"


def _unexpected(req, resp, ex, params):
    if isinstance(ex, falcon.HTTPError):  # Falcon's own (routing, headers): keep them
        raise ex
    log.exception("unhandled error on %s %s", req.method, req.path)
    raise falcon.HTTPInternalServerError(
        title="Internal error", description="the server failed on this request; the log has the details")


def _serialize(req, resp, ex: falcon.HTTPError) -> None:
    # Always JSON, whatever the Accept header asked for (an Arrow client still
    # has to be able to read why its request failed).
    resp.content_type = falcon.MEDIA_JSON
    description = ex.description
    if not description and isinstance(ex, falcon.HTTPMethodNotAllowed):
        allow = (ex.headers or {}).get("Allow", "")
        description = f"{req.method} is not allowed on {req.path}; it takes {allow or 'no method'}"
    elif not description and isinstance(ex, falcon.HTTPNotFound):
        description = f"no route {req.path}; the API is under /api/v1 (GET /api/v1/openapi.json lists it)"
    resp.text = json.dumps({"title": ex.title or str(ex.status), "description": description or "no details"})


def install(app: falcon.App) -> None:
    app.add_error_handler(Exception, _unexpected)
    for exc, status, title in _STATUS_OF:
        app.add_error_handler(exc, _handler(status, title))
    app.set_error_serializer(_serialize)
