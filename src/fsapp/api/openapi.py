"""The OpenAPI 3.0 document of the REST API (served at /api/v1/openapi.json
and used by the fuzz tests to generate requests). Keep it next to the
resources: a new field is added in both places."""
from __future__ import annotations

ARROW = "application/vnd.apache.arrow.stream"
PARQUET = "application/vnd.apache.parquet"


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


SCALAR = {"oneOf": [{"type": "string"}, {"type": "integer", "format": "int64"}, {"type": "number"},
                    {"type": "boolean"}], "nullable": True}
TIME = {"oneOf": [{"type": "string", "format": "date-time", "example": "2026-11-27T10:00:00Z"},
                  {"type": "number", "description": "epoch: |x| < 1e11 seconds, < 1e14 milliseconds, else µs"}]}
COLUMNS = {"type": "object", "additionalProperties": {"type": "array", "items": SCALAR},
           "description": "columns of equal length", "example": {"user_id": [1, 2, 3]}}
FEATURES = {"type": "array", "items": {"type": "string", "example": "user_txn:txn_count_1h"},
            "description": "'view:feature', 'view@vN:feature' or 'view:*'"}

SCHEMAS = {
    "Error": {"type": "object", "required": ["title", "description"],
              "properties": {"title": {"type": "string"}, "description": {"type": "string",
                                                                          "description": "what to fix"}}},
    "OnlineRequest": {
        "type": "object", "required": ["entities"], "additionalProperties": False,
        "description": "exactly one of features / feature_service",
        "properties": {"features": FEATURES, "feature_service": {"type": "string", "example": "fraud_v1"},
                       "entities": COLUMNS, "as_of": TIME, "full_feature_names": {"type": "boolean"}}},
    "FeastOnlineRequest": {
        "type": "object", "required": ["entities"],
        "description": "Feast's GetOnlineFeaturesRequest (extra Feast fields are ignored)",
        "properties": {"features": FEATURES, "feature_service": {"type": "string"}, "entities": COLUMNS,
                       "full_feature_names": {"type": "boolean"}}},
    "OnlineResponse": {
        "type": "object", "required": ["metadata", "results"],
        "description": "column-major: one result per entity key, then one per feature",
        "properties": {
            "metadata": {"type": "object", "properties": {"feature_names": {"type": "array",
                                                                            "items": {"type": "string"}}}},
            "results": {"type": "array", "items": {"type": "object", "properties": {
                "values": {"type": "array", "items": {}},
                "statuses": {"type": "array", "items": {"type": "string", "enum": [
                    "PRESENT", "NOT_FOUND", "NULL_VALUE", "OUTSIDE_MAX_AGE"]}},
                "event_timestamps": {"type": "array", "items": {"type": "string", "format": "date-time"}}}}}}},
    "HistoricalRequest": {
        "type": "object", "required": ["entities"], "additionalProperties": False,
        "description": "exactly one of features / feature_service",
        "properties": {"entities": {**COLUMNS, "description": "entity key columns plus event_timestamp",
                                    "example": {"user_id": [1, 2], "event_timestamp": ["2026-11-27T10:00:00Z",
                                                                                       1796000000]}},
                       "features": FEATURES, "feature_service": {"type": "string", "example": "fraud_v1"},
                       "full_feature_names": {"type": "boolean"}}},
    "HistoricalResponse": {
        "type": "object", "required": ["num_rows", "columns"],
        "properties": {"num_rows": {"type": "integer"}, "columns": COLUMNS}},
    "PushRequest": {
        "type": "object", "required": ["stream"], "additionalProperties": False,
        "description": "exactly one of rows / columns",
        "properties": {"stream": {"type": "string", "example": "transactions"},
                       "rows": {"type": "array", "items": {"type": "object", "additionalProperties": SCALAR}},
                       "columns": COLUMNS}},
    "FeastPushRequest": {
        "type": "object", "required": ["push_source_name", "df"],
        "description": "Feast's PushFeaturesRequest; push_source_name names a stream",
        "properties": {"push_source_name": {"type": "string", "example": "transactions"}, "df": COLUMNS,
                       "to": {"type": "string", "enum": ["online", "online_and_offline", "offline"],
                              "description": "'offline' alone is refused: every push is logged offline and "
                                             "applied online"}}},
    "FeastWriteRequest": {
        "type": "object", "required": ["feature_view_name", "df"],
        "description": "Feast's WriteToFeatureStoreRequest: feature rows of a plain view over a stream, written as "
                       "a push to that stream (renamed columns mapped back; event_timestamp is the event time)",
        "properties": {"feature_view_name": {"type": "string", "example": "user_last"}, "df": COLUMNS,
                       "allow_registry_cache": {"type": "boolean"}, "transform_on_write": {"type": "boolean"}}},
    "FeastMaterializeRequest": {
        "type": "object", "description": "Feast's MaterializeRequest (materialize-incremental: end_ts only)",
        "properties": {"start_ts": {"type": "string", "example": "2026-11-29T00:00:00"},
                       "end_ts": {"type": "string", "example": "2026-11-30T00:00:00"},
                       "feature_views": {"type": "array", "items": {"type": "string"}},
                       "disable_event_timestamp": {"type": "boolean"}, "full_feature_names": {"type": "boolean"}}},
    "PushResponse": {
        "type": "object", "required": ["accepted", "late", "lsn"],
        "properties": {"accepted": {"type": "integer"}, "late": {"type": "integer",
                                                                 "description": "beyond allowed lateness"},
                       "lsn": {"type": "integer", "description": "WAL position; durable when returned"}}},
    "MaterializeRequest": {
        "type": "object", "required": ["end"], "additionalProperties": False,
        "properties": {"start": TIME, "end": TIME,
                       "views": {"type": "array", "items": {"type": "string", "example": "user_txn"}}}},
    "MaterializeResponse": {
        "type": "object", "properties": {"views": {"type": "object", "additionalProperties": {"type": "integer"}},
                                         "start": {"type": "integer"}, "end": {"type": "integer"}}},
    "RegistryEntry": {
        "type": "object", "properties": {"kind": {"type": "string"}, "name": {"type": "string"},
                                         "version": {"type": "integer"}, "apply_id": {"type": "integer"},
                                         "applied_at": {"type": "string"}, "definition": {"type": "object"},
                                         "resolved": {"type": "object"}}},
    "RegistryList": {"type": "object", "properties": {"kind": {"type": "string"},
                                                      "items": {"type": "array", "items": _ref("RegistryEntry")}}},
    "Lineage": {"type": "object", "properties": {"root": {"type": "string"},
                                                 "nodes": {"type": "array", "items": {"type": "object"}},
                                                 "edges": {"type": "array", "items": {
                                                     "type": "array", "items": {"type": "string"}}}}},
    "Stats": {"type": "object", "description": "the metrics of /metrics summed up for the web UI's live panels",
              "properties": {
                  "streams": {"type": "object", "additionalProperties": {"type": "object", "properties": {
                      "pushed": {"type": "integer"}, "kafka": {"type": "integer"}, "late": {"type": "integer"},
                      "topic": {"type": "string", "nullable": True},
                      "freshness_s": {"type": "number", "nullable": True,
                                      "description": "now minus the newest event time seen"}}}},
                  "views": {"type": "object", "additionalProperties": {"type": "object", "properties": {
                      "version": {"type": "integer"}, "source": {"type": "string"},
                      "freshness_s": {"type": "number", "nullable": True},
                      "keys": {"type": "integer", "nullable": True}}}},
                  "late_events": {"type": "integer"},
                  "dead_letters": {"type": "object"},
                  "serving": {"type": "object", "properties": {
                      "requests": {"type": "integer"}, "p50_ms": {"type": "number", "nullable": True},
                      "p95_ms": {"type": "number", "nullable": True}, "p99_ms": {"type": "number", "nullable": True}}},
                  "kafka": {"type": "object", "properties": {
                      "mode": {"type": "string", "nullable": True, "description": "null: no Kafka ingestion"},
                      "lag": {"type": "object", "additionalProperties": {"type": "integer"}},
                      "lag_total": {"type": "integer", "nullable": True}}},
                  "applied_lsn": {"type": "integer"},
                  "ready": {"type": "object", "description": "what GET /ready says",
                            "properties": {"ok": {"type": "boolean"}, "reason": {"type": "string"}}}}},
    "WhoAmI": {"type": "object", "properties": {
        "keys_required": {"type": "boolean"},
        "scopes": {"type": "array", "items": {"type": "string", "enum": ["read", "write"]}}}},
    "Health": {"type": "object", "properties": {"status": {"type": "string"}, "applied_lsn": {"type": "integer"},
                                                "checkpoint_lsn": {"type": "integer"}}},
    "Cluster": {"type": "object", "properties": {
        "node": {"type": "string", "nullable": True}, "mode": {"type": "string", "nullable": True},
        "group_id": {"type": "string", "nullable": True}, "member_id": {"type": "string", "nullable": True},
        "topics": {"type": "object"}, "partitioner": {"type": "string"},
        "partitions": {"type": "array", "items": {"type": "object", "properties": {
            "topic": {"type": "string"}, "partition": {"type": "integer"},
            "state": {"type": "string", "enum": ["recovering", "live"]},
            "offset": {"type": "integer", "nullable": True}, "lag": {"type": "integer", "nullable": True}}}},
        "url": {"type": "string", "nullable": True},
        "members": {"type": "array", "nullable": True, "items": {"type": "object", "properties": {
            "url": {"type": "string"}, "member_id": {"type": "string", "nullable": True},
            "partitions": {"type": "array", "items": {"type": "array"}}, "age_s": {"type": "number"}}}},
        "owners": {"type": "object", "nullable": True,
                   "additionalProperties": {"type": "object", "additionalProperties": {"type": "string"}}}}},
}


def _errors(*codes) -> dict:
    text = {400: "malformed JSON or parameter", 401: "no or unknown API key", 403: "API key lacks the scope",
            404: "unknown feature, view, stream or name", 406: "no acceptable response type",
            413: "body over the limit", 415: "wrong Content-Type", 422: "request does not fit the schema or "
            "the definitions", 503: "the store cannot persist / is not ready"}
    return {str(c): {"description": text[c], "content": {"application/json": {"schema": _ref("Error")}}}
            for c in codes}


def _json_body(schema: str, extra: dict | None = None) -> dict:
    content = {"application/json": {"schema": _ref(schema)}}
    content.update(extra or {})
    return {"required": True, "content": content}


def _ok(schema: str, extra: dict | None = None) -> dict:
    content = {"application/json": {"schema": _ref(schema)}}
    content.update(extra or {})
    return {"200": {"description": "OK", "content": content}}


READ = [{"bearer": ["read"]}]
WRITE = [{"bearer": ["write"]}]
POST_ERRORS = (400, 401, 403, 404, 413, 415, 422)


def _post(summary: str, req: str, resp: str, security, req_extra=None, resp_extra=None, more=()) -> dict:
    return {"post": {"summary": summary, "security": security, "requestBody": _json_body(req, req_extra),
                     "responses": {**_ok(resp, resp_extra), **_errors(*POST_ERRORS, *more)}}}


def _get(summary: str, resp: str, security, params=(), errs=(401, 403, 404)) -> dict:
    return {"get": {"summary": summary, "security": security, "parameters": list(params),
                    "responses": {**_ok(resp), **_errors(*errs)}}}


def _path_param(name: str, example: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "example": example}}


def openapi_document(max_body_bytes: int) -> dict:
    binary = {"schema": {"type": "string", "format": "binary"}}
    kind = {**_path_param("kind", "feature_view"),
            "description": "entity, source, stream, feature_view or feature_service (plural and dashed forms too)"}
    version = {"name": "version", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1}}
    stream = {"name": "stream", "in": "query", "required": False,
              "description": "the stream, for an Arrow IPC body", "schema": {"type": "string"}}
    paths = {
        "/api/v1/features/online": _post("Online feature values (Feast's response shape)", "OnlineRequest",
                                         "OnlineResponse", READ),
        "/api/v1/features/historical": _post(
            "Point-in-time training rows; JSON, Arrow IPC stream or Parquet by Accept", "HistoricalRequest",
            "HistoricalResponse", READ, resp_extra={ARROW: binary, PARQUET: binary}, more=(406,)),
        "/api/v1/push": _post("Push events to a stream; answered once durable", "PushRequest", "PushResponse",
                              WRITE, req_extra={ARROW: binary}, more=(503,)),
        "/api/v1/materialize": _post("Compute values as of `end` from the offline log into the online tables",
                                     "MaterializeRequest", "MaterializeResponse", WRITE, more=(503,)),
        "/api/v1/registry/{kind}": _get("Live definitions of a kind", "RegistryList", READ, [kind]),
        "/api/v1/registry/{kind}/{name}": _get("One definition (latest, or ?version=N)", "RegistryEntry", READ,
                                               [kind, _path_param("name", "user_txn"), version], (400, 401, 403, 404)),
        "/api/v1/lineage/{name}": _get("What a definition is made of and what is made from it (with the MLflow "
                                       "models that read it when fstore.yaml names mlflow.tracking_uri)", "Lineage",
                                       READ, [_path_param("name", "user_txn:txn_count_1h"),
                                              {"name": "models", "in": "query", "required": False,
                                               "description": "false: leave the logged models out",
                                               "schema": {"type": "boolean", "default": True}}]),
        "/get-online-features": _post("Feast-compatible online features", "FeastOnlineRequest", "OnlineResponse",
                                      READ),
        "/push": _post("Feast-compatible push (push_source_name = stream)", "FeastPushRequest", "PushResponse",
                       WRITE, more=(503,)),
        "/write-to-online-store": _post("Feast-compatible write of a plain view's rows (a push to its stream)",
                                        "FeastWriteRequest", "PushResponse", WRITE, more=(503,)),
        "/materialize": _post("Feast-compatible materialize", "FeastMaterializeRequest", "MaterializeResponse",
                              WRITE, more=(503,)),
        "/materialize-incremental": _post("Feast-compatible materialize up to end_ts", "FeastMaterializeRequest",
                                          "MaterializeResponse", WRITE, more=(503,)),
        "/health": _get("Liveness", "Health", [], errs=()),
        "/api/v1/cluster": _get("This node's Kafka partitions (recovering / live) and how to route keys",
                                "Cluster", READ, errs=(401, 403)),
        "/api/v1/stats": _get("Ingest, late and dead-lettered events, freshness, serving latency percentiles and "
                              "Kafka lag, from the same counters as /metrics", "Stats", READ, errs=(401, 403)),
        "/api/v1/whoami": _get("The scopes of the presented API key (any known key may ask)", "WhoAmI", [],
                               errs=(401,)),
        "/ready": _get("Readiness: the store can persist writes", "Health", [], errs=(503,)),
        "/metrics": {"get": {"summary": "Prometheus metrics", "security": [], "responses": {"200": {
            "description": "text exposition format 0.0.4", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/api/v1/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {
            "description": "OpenAPI 3.0", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
    }
    paths["/api/v1/push"]["post"]["parameters"] = [stream]
    return {
        "openapi": "3.0.3",
        "info": {"title": "fstore", "version": "1",
                 "description": f"Stream-native feature store. Bodies over {max_body_bytes} bytes get 413. "
                                "Every error is JSON {title, description}."},
        "servers": [{"url": "http://localhost:9094"}],
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "API key; scopes read / write / admin (admin implies both)"}}},
    }
