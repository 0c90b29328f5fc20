"""The resources: small classes, one per route. Each checks the shape of its
request (fsapp.api.requests), calls the backend, and writes the response.
`scope` names the API-key scope a resource needs (None: open)."""
from __future__ import annotations

import base64
import datetime as dt
import decimal
import io
import json
import math

import falcon
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fscore.errors import FStoreError

from fsapp.api import errors
from fsapp.api import requests as rq
from fsapp.api.deferred import after_response
from fsapp.api.forwarding import LOCAL_HEADER
from fsapp.api.backend import KINDS
from fsapp.api.stats import summarize
from fsapp.engine.online import iso
from fsapp.registry.errors import NotFoundError
from fsapp.sdk.convert import service_refs

# plural and dashed spellings in URLs map to the registry's kinds
KIND_ALIASES = {**{k: k for k in KINDS}, **{k + "s": k for k in KINDS}, "entities": "entity",
                **{k.replace("_", "-"): k for k in KINDS}, **{k.replace("_", "-") + "s": k for k in KINDS}}
START_OF_TIME = -(1 << 62)


def _clean(v):
    """A Python value as strict JSON (no NaN/Infinity, no datetimes)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, list):
        return [_clean(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, bytes):
        return base64.b64encode(v).decode()
    if isinstance(v, dt.timedelta):
        return v.total_seconds()
    return v


def _compact(x) -> str:
    return json.dumps(x, allow_nan=False, separators=(",", ":"))


def send_json(resp: falcon.Response, doc, status=falcon.HTTP_200) -> None:
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    if isinstance(doc, bytes):  # already encoded (online features: fsapp.engine.online.online_json)
        resp.data = doc
        return
    try:
        resp.text = _compact(doc)
    except (ValueError, TypeError):  # rare: non-finite floats or exotic types; clean them up
        resp.text = json.dumps(_clean(doc), allow_nan=False, separators=(",", ":"), default=str)


class _Resource:
    scope: str | None = "read"
    # the query parameters a route reads: any other is refused (app.Guard), so a misspelt one
    # (?verison=2) is not silently ignored; None: not checked (probes a monitor may decorate)
    query_params: frozenset | None = frozenset()

    def __init__(self, backend, limits):
        self.backend = backend
        self.limits = limits


# ---- online features

def _online_args(doc: dict, native: bool):
    if native:
        rq.only_fields(doc, {"features", "feature_service", "entities", "as_of", "full_feature_names"},
                       "online features request")
    features = rq.string_list(doc, "features", required=False)
    service = rq.string(doc, "feature_service", required=False)
    if (features is None) == (service is None):
        raise errors.schema_mismatch("give exactly one of 'features' (e.g. [\"user_txn:txn_count_1h\"]) "
                                     "or 'feature_service' (e.g. \"fraud_v1\")")
    entities = rq.columns(doc.get("entities"), "entities")
    as_of = rq.time_us(doc["as_of"], "as_of", relative=True) if native and doc.get("as_of") is not None else None
    return features, service, entities, as_of, rq.boolean(doc, "full_feature_names")


class OnlineFeatures(_Resource):
    """POST /api/v1/features/online"""
    native = True

    forwarder = None  # a ReadForwarder (create_app): keys other nodes of a Kafka group own are read from them

    def on_post(self, req, resp):
        doc = rq.json_body(req, self.limits.max_body_bytes)
        args = _online_args(doc, self.native)
        text = self.backend.online(*args)
        if self.forwarder is not None and req.get_header(LOCAL_HEADER) is None:
            text = self.forwarder.complete(args, text, req.get_header("Authorization"), resp)
        send_json(resp, text)
        logger = getattr(self.backend, "feature_logger", None)
        if logger is not None and logger.wants(args[1]):
            # the response as already encoded: logging adds no second encoding
            after_response(req.env, _log_response, logger, args[1], len(args[2]), resp.data)


def _log_response(logger, service: str, n_keys: int, data: bytes) -> None:
    logger.log_encoded(service, n_keys, data.decode("ascii"))


class FeastOnlineFeatures(OnlineFeatures):
    """POST /get-online-features: Feast's request; extra Feast fields ignored."""
    native = False


# ---- historical features

def _entity_table(entities: dict) -> pa.Table:
    if "event_timestamp" not in entities:
        raise errors.schema_mismatch("'entities' needs an 'event_timestamp' column: the time as of which each "
                                     "row's features are computed (ISO-8601 or epoch)")
    cols = {}
    for name, vals in entities.items():
        if name == "event_timestamp":
            us = [rq.time_us(v, f"entities.event_timestamp[{i}]") for i, v in enumerate(vals)]
            cols[name] = pa.array(us, pa.timestamp("us", tz="UTC"))
            continue
        try:
            cols[name] = pa.array(vals)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            raise errors.schema_mismatch(f"entities column {name!r} mixes value types; give every value of a key "
                                         "the key's type") from None
    return pa.table(cols)


def table_to_columns(table: pa.Table) -> dict[str, list]:
    out = {}
    for name, col in zip(table.column_names, table.columns):
        if pa.types.is_timestamp(col.type):
            us = pc.cast(col, pa.timestamp("us", tz=col.type.tz), safe=False).cast(pa.int64())
            out[name] = [None if v is None else iso(v) for v in us.to_pylist()]
        else:
            out[name] = _clean(col.to_pylist())
    return out


class HistoricalFeatures(_Resource):
    """POST /api/v1/features/historical"""

    def _features(self, doc: dict) -> list[str]:
        """`features`, or a `feature_service`'s (as online reads take it): its
        pinned refs, which training sets build from the live versions."""
        if ("features" in doc) == ("feature_service" in doc):
            raise errors.schema_mismatch("give exactly one of 'features' (e.g. [\"user_txn:txn_count_1h\"]) or "
                                         "'feature_service' (e.g. \"fraud_v1\")")
        if "features" in doc:
            features = rq.string_list(doc, "features")
            if not features:
                raise errors.schema_mismatch("'features' is empty; name at least one, e.g. [\"user_txn:*\"]")
            return features
        name = doc["feature_service"]
        if not isinstance(name, str) or not name:
            raise errors.schema_mismatch("'feature_service' must be a service's name, e.g. \"fraud_v1\"")
        entry = self.backend.registry_get("feature_service", name, None)
        return service_refs(entry["resolved"]["features"], self._live_version)

    def _live_version(self, view: str) -> int:
        try:
            return self.backend.registry_get("feature_view", view, None)["version"]
        except NotFoundError:  # an on-demand view's
            return self.backend.registry_get("on_demand_view", view, None)["version"]

    def on_post(self, req, resp):
        doc = rq.json_body(req, self.limits.max_body_bytes)
        rq.only_fields(doc, {"entities", "features", "feature_service", "full_feature_names"},
                       "historical features request")
        features = self._features(doc)
        entities = _entity_table(rq.columns(doc.get("entities"), "entities"))
        # negotiate before the (possibly long) query runs
        fmt = self._format(req)
        table = self.backend.historical(entities, features, rq.boolean(doc, "full_feature_names"))
        if fmt == rq.JSON:
            if table.num_rows > self.limits.json_max_rows:
                raise errors.not_acceptable(
                    f"the result has {table.num_rows} rows; JSON answers are limited to {self.limits.json_max_rows}. "
                    f"Send 'Accept: {rq.ARROW_STREAM}' or 'Accept: {rq.PARQUET_TYPES[0]}'")
            send_json(resp, {"num_rows": table.num_rows, "columns": table_to_columns(table)})
            return
        sink = io.BytesIO()
        if fmt == rq.ARROW_STREAM:
            with pa.ipc.new_stream(sink, table.schema) as w:
                w.write_table(table)
        else:
            pq.write_table(table, sink)
        resp.content_type = fmt
        resp.data = sink.getvalue()

    @staticmethod
    def _format(req) -> str:
        offered = [rq.JSON, rq.ARROW_STREAM, *rq.PARQUET_TYPES]
        accept = (req.accept or "").strip()
        if not accept or accept == "*/*":
            return rq.JSON
        best = req.client_prefers(offered)
        if best is None:
            raise errors.not_acceptable(f"Accept {accept!r} matches none of: {', '.join(offered)}")
        return best


# ---- writes

def _idempotency_key(req) -> str | None:
    """The `Idempotency-Key` header: a retry with the same key returns the
    first answer and applies nothing (the engine checks its form)."""
    return req.get_header("Idempotency-Key")


class Push(_Resource):
    """POST /api/v1/push: JSON rows or columns, or an Arrow IPC stream body."""
    query_params = frozenset({"stream"})
    scope = "write"

    def on_post(self, req, resp):
        key = _idempotency_key(req)
        media = rq.require_media(req, (rq.JSON, rq.ARROW_STREAM))
        body = rq.read_body(req, self.limits.max_body_bytes)
        if media == rq.ARROW_STREAM:
            stream = req.get_param("stream")
            if not stream:
                raise errors.schema_mismatch("an Arrow body needs the stream in the query: POST /api/v1/push?stream=NAME")
            try:
                table = pa.ipc.open_stream(pa.py_buffer(body)).read_all()
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OSError) as e:
                raise errors.malformed(f"the body is not an Arrow IPC stream: {e}") from None
            send_json(resp, self.backend.push(stream, table, key))
            return
        doc = rq.parse_json(body)
        rq.only_fields(doc, {"stream", "rows", "columns"}, "push request")
        stream = rq.string(doc, "stream")
        if ("rows" in doc) == ("columns" in doc):
            raise errors.schema_mismatch("give exactly one of 'rows' (an array of objects) or 'columns' "
                                         "(an object of arrays)")
        data = rq.rows(doc["rows"], "rows") if "rows" in doc else rq.columns(doc["columns"], "columns")
        send_json(resp, self.backend.push(stream, data, key))


class FeastPush(_Resource):
    """POST /push: Feast's PushFeaturesRequest onto the stream of that name."""
    scope = "write"

    def on_post(self, req, resp):
        doc = rq.json_body(req, self.limits.max_body_bytes)
        stream = rq.string(doc, "push_source_name")
        to = doc.get("to", "online")
        if to not in ("online", "online_and_offline", "offline"):
            raise errors.schema_mismatch("'to' must be \"online\", \"offline\" or \"online_and_offline\"")
        if to == "offline":
            # The engine logs every pushed event offline AND applies it online
            # (the stream is the one source of both); an offline-only write
            # would silently also change online values.
            raise errors.schema_mismatch("fstore writes every pushed event to both the online and the offline "
                                         "store; send \"to\": \"online_and_offline\" (or \"online\")")
        send_json(resp, self.backend.push(stream, rq.columns(doc.get("df"), "df"), _idempotency_key(req)))


class Materialize(_Resource):
    """POST /api/v1/materialize"""
    scope = "write"

    def on_post(self, req, resp):
        doc = rq.json_body(req, self.limits.max_body_bytes)
        rq.only_fields(doc, {"start", "end", "views"}, "materialize request")
        if "end" not in doc:
            raise errors.schema_mismatch("'end' is required: values are computed as of this time (ISO-8601 or epoch)")
        start = rq.time_us(doc["start"], "start", relative=True) if doc.get("start") is not None else START_OF_TIME
        end = rq.time_us(doc["end"], "end", relative=True)
        if start >= end:
            raise errors.schema_mismatch("'start' must be before 'end'")
        views = rq.string_list(doc, "views", required=False, example="user_txn")
        if views == []:  # answered 200 having done nothing, like a read of no features
            raise errors.schema_mismatch("'views' is empty: name at least one view, or leave 'views' out for all")
        send_json(resp, self.backend.materialize(start, end, views))


class FeastWriteToOnlineStore(_Resource):
    """POST /write-to-online-store: what Feast's `remote` online store sends
    for `FeatureStore.push(...)`, `write_to_online_store(...)` and a client
    side `materialize` — feature rows of one feature view. fstore computes
    every online value from events, so the rows are written as a push to the
    view's stream (durable, logged offline too, visible to every worker):
    each feature that is a column of the stream (or a rename of one) goes
    back to that column, `event_timestamp` to the stream's time. A view
    whose values fstore computes itself (windows, expressions) or that reads
    a batch file is refused with what to do instead."""
    scope = "write"

    def on_post(self, req, resp):
        doc = rq.json_body(req, self.limits.max_body_bytes)
        rq.only_fields(doc, {"feature_view_name", "df", "allow_registry_cache", "transform_on_write"},
                       "write-to-online-store request")
        name = rq.string(doc, "feature_view_name")
        df = rq.columns(doc.get("df"), "df")
        view = self.backend.registry_get("feature_view", name, None)
        d, resolved = view["definition"], view["resolved"]
        source = d["source"]
        if d.get("aggregations"):
            raise errors.schema_mismatch(
                f"feature view {name} aggregates the events of stream {source} over windows: fstore computes its "
                f"values from the events, it does not store values written from outside. Push the events to "
                f"{source} (POST /push with push_source_name {source!r})")
        if resolved.get("source_kind") != "stream":
            raise errors.schema_mismatch(
                f"feature view {name} reads the batch file source {source}: its online values come from those "
                "files (POST /materialize). Write the rows to the files, or define the view over a stream")
        stream = self.backend.registry_get("stream", source, None)["definition"]
        columns = {c["name"] for c in stream["columns"]}
        back = {k: k for k, _ in resolved["keys"]}  # feature / key name -> stream column
        computed = {}
        for f in d["features"]:
            bare = f["expr"].strip('"')
            if bare in columns and bare.isidentifier():
                back[f["name"]] = bare
            else:
                computed[f["name"]] = f["expr"]
        ts = resolved["timestamp"]
        rows: dict[str, list] = {}
        for col, vals in df.items():
            if col in ("event_timestamp", ts):
                rows[ts] = vals
            elif col == "created":
                continue  # the engine stamps its own ingest time
            elif col in back:
                rows[back[col]] = vals
            elif col in computed:
                raise errors.schema_mismatch(
                    f"feature {name}:{col} is computed by fstore ({computed[col]}) from stream {source}; a value "
                    f"written for it cannot be turned back into the event it came from. Push the events to "
                    f"{source} (POST /push) or leave {col} out")
            else:
                raise errors.schema_mismatch(
                    f"{col!r} is not a feature or join key of feature view {name} (features: "
                    f"{', '.join(f['name'] for f in d['features'])}; keys: {', '.join(k for k, _ in resolved['keys'])})")
        if ts not in rows:
            raise errors.schema_mismatch(f"'df' needs an 'event_timestamp' column (the rows' event times, "
                                         f"ISO-8601 or epoch): it becomes {source}.{ts}")
        send_json(resp, self.backend.push(source, rows, _idempotency_key(req)))


def _feast_views(doc) -> list[str] | None:
    views = rq.string_list(doc, "feature_views", required=False)
    if doc.get("version") is not None:
        raise errors.schema_mismatch("fstore materializes the latest version of each view; leave 'version' out "
                                     "(an older version's values come from a feature service that pins it)")
    return views or None


def _no_async(req) -> None:
    if req.get_param_as_bool("async"):
        raise errors.schema_mismatch("fstore materializes synchronously and answers when the values are durable; "
                                     "leave out ?async=true")


class FeastMaterialize(_Resource):
    """POST /materialize: Feast's MaterializeRequest (start_ts, end_ts,
    feature_views), done by the engine as POST /api/v1/materialize."""
    query_params = frozenset({"async"})
    scope = "write"

    def on_post(self, req, resp):
        _no_async(req)
        doc = rq.json_body(req, self.limits.max_body_bytes)
        rq.only_fields(doc, {"start_ts", "end_ts", "feature_views", "disable_event_timestamp", "full_feature_names",
                             "version"}, "materialize request")
        views = _feast_views(doc)
        if rq.boolean(doc, "disable_event_timestamp"):
            start, end = START_OF_TIME, self.backend.clock()
        else:
            if doc.get("start_ts") is None or doc.get("end_ts") is None:
                raise errors.schema_mismatch("'start_ts' and 'end_ts' are required (ISO-8601), or set "
                                             "'disable_event_timestamp': true for everything up to now")
            start, end = rq.time_us(doc["start_ts"], "start_ts"), rq.time_us(doc["end_ts"], "end_ts")
        if start >= end:
            raise errors.schema_mismatch("'start_ts' must be before 'end_ts'")
        send_json(resp, self.backend.materialize(start, end, views))


class FeastMaterializeIncremental(_Resource):
    """POST /materialize-incremental: Feast's request (end_ts, feature_views).
    fstore keeps windowed views current from the stream itself, so an
    incremental materialize rebuilds from the whole offline log up to end_ts
    (it heals late events; plain views take their values as of end_ts)."""
    query_params = frozenset({"async"})
    scope = "write"

    def on_post(self, req, resp):
        _no_async(req)
        doc = rq.json_body(req, self.limits.max_body_bytes)
        rq.only_fields(doc, {"end_ts", "feature_views", "full_feature_names", "version"},
                       "materialize-incremental request")
        views = _feast_views(doc)
        if doc.get("end_ts") is None:
            raise errors.schema_mismatch("'end_ts' is required (ISO-8601): values are computed as of this time")
        send_json(resp, self.backend.materialize(START_OF_TIME, rq.time_us(doc["end_ts"], "end_ts"), views))


class FeastUnsupported(_Resource):
    """Feast feature-server endpoints for what fstore does not do: a clear
    4xx instead of a 404 that reads like a wrong URL."""
    scope = "read"

    def __init__(self, backend, limits, what: str):
        super().__init__(backend, limits)
        self.what = what

    def on_post(self, req, resp):
        raise falcon.HTTPBadRequest(title="Not supported by fstore", description=self.what)


# ---- registry and lineage

def _kind(kind: str) -> str:
    try:
        return KIND_ALIASES[kind]
    except KeyError:
        raise errors.not_found(f"no registry kind {kind!r}; the kinds are {', '.join(KINDS)}") from None


class RegistryList(_Resource):
    """GET /api/v1/registry/{kind}"""

    def on_get(self, req, resp, kind):
        kind = _kind(kind)
        send_json(resp, {"kind": kind, "items": self.backend.registry_list(kind)})


class RegistryItem(_Resource):
    """GET /api/v1/registry/{kind}/{name}[?version=N]"""
    query_params = frozenset({"version"})

    def on_get(self, req, resp, kind, name):
        send_json(resp, self.backend.registry_get(_kind(kind), name, rq.int_param(req, "version")))


class Lineage(_Resource):
    """GET /api/v1/lineage/{name}[?models=false]: with `models` (a callable
    listing logged models, fsapp.integrations.tracking.model_lister, which
    reports failures as FStoreError) the models that read the features below
    `name` are nodes too."""
    query_params = frozenset({"models"})

    def __init__(self, backend, limits, models=None):
        super().__init__(backend, limits)
        self.models = models

    def on_get(self, req, resp, name):
        graph = self.backend.lineage(name)
        if self.models is not None and req.get_param_as_bool("models", default=True):
            from fsapp.registry.lineage import with_models
            try:
                graph = with_models(graph, self.models())
            except FStoreError as e:  # the model store is another service: the registry's answer stands
                graph["models_error"] = str(e)
        send_json(resp, graph)


class Cluster(_Resource):
    scope = "read"

    def on_get(self, req, resp):
        send_json(resp, self.backend.cluster())


class WhoAmI(_Resource):
    """GET /api/v1/whoami: the scopes of the presented key, so a client (the
    web UI) offers only what the key may do. Any known key may ask; with no
    keys configured the API is open and every scope is granted."""
    scope = None  # checked here: a write-only key may ask too

    def __init__(self, backend, limits, keys):
        super().__init__(backend, limits)
        self.keys = keys

    def on_get(self, req, resp):
        if self.keys is None:
            send_json(resp, {"keys_required": False, "scopes": ["read", "write"]})
            return
        header = req.get_header("Authorization")
        if not header:  # asking is not a failure: no key, no scopes (a page can say "paste a key")
            send_json(resp, {"keys_required": True, "scopes": []})
            return
        scopes = self.keys.scopes_of(header)
        granted = {"read", "write"} if "admin" in scopes else set(scopes)
        send_json(resp, {"keys_required": True, "scopes": sorted(granted)})


class Stats(_Resource):
    """GET /api/v1/stats: the metrics of /metrics summed up as JSON
    (fsapp.api.stats) for the web UI's live panels."""

    def __init__(self, backend, limits, http_metrics):
        super().__init__(backend, limits)
        self.http = http_metrics

    def on_get(self, req, resp):
        text = self.http.render() + self.backend.metrics_text()
        doc = summarize(text, self.backend.registry_list("stream"), self.backend.registry_list("feature_view"),
                        self.backend.health(), self.backend.cluster())
        ok, reason = self.backend.ready()
        doc["ready"] = {"ok": ok, "reason": reason}  # /ready's answer, without a 503 a page would log as an error
        resp.set_header("Cache-Control", "no-store")
        send_json(resp, doc)


# ---- operations (open: probes and scrapers carry no keys)

class Health(_Resource):
    query_params = None
    scope = None

    def on_get(self, req, resp):
        send_json(resp, self.backend.health())


class Ready(_Resource):
    query_params = None
    scope = None

    def on_get(self, req, resp):
        ok, reason = self.backend.ready()
        if not ok:
            raise falcon.HTTPServiceUnavailable(title="Not ready", description=reason)
        send_json(resp, {"ready": True})


class Metrics(_Resource):
    query_params = None
    scope = None

    def __init__(self, backend, limits, http_metrics):
        super().__init__(backend, limits)
        self.http = http_metrics

    def on_get(self, req, resp):
        resp.content_type = "text/plain; version=0.0.4; charset=utf-8"
        resp.text = self.http.render() + self.backend.metrics_text()


class OpenApi(_Resource):
    query_params = None
    scope = None

    def __init__(self, backend, limits, document: dict):
        super().__init__(backend, limits)
        self.text = json.dumps(document)

    def on_get(self, req, resp):
        resp.content_type = falcon.MEDIA_JSON
        resp.text = self.text
