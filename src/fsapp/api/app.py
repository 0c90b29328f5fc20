"""`create_app(backend, ...)`: the Falcon WSGI app of the REST API.

Dependencies come in (the backend, the keys, the limits); nothing here opens
a store, so the same app runs over an in-process engine or over a gunicorn
worker's shared-memory reader.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import falcon

from fsapp.api import errors, resources as r
from fsapp.api.auth import ApiKeys
from fsapp.api.deferred import after_response
from fsapp.api.forwarding import ReadForwarder
from fsapp.api.metrics import HttpMetrics
from fsapp.api.openapi import openapi_document
from fsapp.ui import add_ui_routes

DEFAULT_MAX_BODY_BYTES = 16 << 20


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    json_max_rows: int = 10_000


class Guard:
    """Runs after routing and before the responder, so it knows the resource's
    scope and refuses oversized bodies before a byte of them is read."""

    def __init__(self, keys: ApiKeys | None, limits: Limits):
        self.keys, self.limits = keys, limits

    def process_resource(self, req, resp, resource, params):
        if resource is None:
            return
        scope = getattr(resource, "scope", None)
        if self.keys is not None and scope is not None:
            self.keys.check(req, scope)
        known = getattr(resource, "query_params", None)
        if known is not None and req.params:
            unknown = sorted(set(req.params) - known)
            if unknown:  # a misspelt ?verison=2 answered the latest version, as if it were not there
                takes = f"this path takes {', '.join(sorted(known))}" if known else "this path takes none"
                raise errors.malformed(f"unknown query parameter(s) {', '.join(unknown)}; {takes}")
        twice = sorted(name for name, value in req.params.items() if isinstance(value, list))
        if twice:  # (Falcon keeps a repeated one as a list and get_param answers its last value)
            raise errors.malformed(f"query parameter(s) {', '.join(twice)} given more than once; give each once")
        encoding = (req.get_header("Content-Encoding") or "identity").strip().lower()
        if encoding != "identity":  # it was read as if plain: a gzip body answered "not JSON"
            raise errors.unsupported_encoding(encoding)
        length = req.content_length  # an invalid header is a 400 from Falcon
        if length is not None and length > self.limits.max_body_bytes:
            raise errors.too_large(self.limits.max_body_bytes, length)


class Timing:
    """Latency and status counts per route template (not per URL: names in
    paths would make one series per definition)."""

    def __init__(self, http: HttpMetrics):
        self.http = http
        self.pid = None

    def process_request(self, req, resp):
        req.context.started = time.perf_counter()

    def process_response(self, req, resp, resource, req_succeeded):
        # which worker answered: lets clients and tests see the load spread
        if self.pid is None:  # set after gunicorn forks the worker
            self.pid = str(os.getpid())
        resp.set_header("X-Fstore-Worker", self.pid)
        started = getattr(req.context, "started", None)
        if started is not None:
            route = req.uri_template or "unmatched"
            after_response(req.env, self.http.observe, req.method, route, resp.status_code, started,
                           time.perf_counter())


_NO_VECTORS = ("fstore has no vector index: online document retrieval (vector search) is not supported; "
               "read features by entity key (POST /get-online-features)")


def create_app(backend, *, api_keys: dict | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               json_max_rows: int = 10_000, http_metrics: HttpMetrics | None = None, ui: bool = True,
               models=None) -> falcon.App:
    """The API over `backend` (see fsapp.api.backend.Backend).

    api_keys: {token: scopes} (scopes: "read", "write", "admin", as a set or a
    comma-separated string); None leaves the API open. max_body_bytes: larger
    requests get 413. http_metrics: pass one to share the registry (e.g. to
    merge it with other workers'); default a new per-process registry.
    ui: serve the web UI at /ui (fsapp.ui; static files over this API).
    models: a callable listing logged models for the lineage endpoint
    (fsapp.integrations.tracking.model_lister); None: lineage is the registry's."""
    if max_body_bytes < 1:
        raise ValueError("max_body_bytes must be positive")
    limits = Limits(max_body_bytes, json_max_rows)
    http = http_metrics or HttpMetrics()
    keys = ApiKeys(api_keys) if api_keys else None
    app = falcon.App(middleware=[Timing(http), Guard(keys, limits)])
    # we read bodies ourselves (bounded, with our own errors)
    app.req_options.auto_parse_form_urlencoded = False
    app.resp_options.default_media_type = falcon.MEDIA_JSON
    errors.install(app)

    routes = {
        "/api/v1/features/online": r.OnlineFeatures(backend, limits),
        "/api/v1/features/historical": r.HistoricalFeatures(backend, limits),
        "/api/v1/push": r.Push(backend, limits),
        "/api/v1/materialize": r.Materialize(backend, limits),
        "/api/v1/registry/{kind}": r.RegistryList(backend, limits),
        "/api/v1/registry/{kind}/{name}": r.RegistryItem(backend, limits),
        "/api/v1/lineage/{name}": r.Lineage(backend, limits, models),
        "/api/v1/cluster": r.Cluster(backend, limits),
        "/api/v1/stats": r.Stats(backend, limits, http),
        "/api/v1/whoami": r.WhoAmI(backend, limits, keys),
        "/get-online-features": r.FeastOnlineFeatures(backend, limits),
        "/push": r.FeastPush(backend, limits),
        "/write-to-online-store": r.FeastWriteToOnlineStore(backend, limits),
        "/materialize": r.FeastMaterialize(backend, limits),
        "/materialize-incremental": r.FeastMaterializeIncremental(backend, limits),
        "/retrieve-online-documents": r.FeastUnsupported(backend, limits, _NO_VECTORS),
        "/retrieve-online-documents-v2": r.FeastUnsupported(backend, limits, _NO_VECTORS),
        "/health": r.Health(backend, limits),
        "/ready": r.Ready(backend, limits),
        "/metrics": r.Metrics(backend, limits, http),
        "/api/v1/openapi.json": r.OpenApi(backend, limits, openapi_document(max_body_bytes)),
    }
    forwarder = ReadForwarder(backend)  # answers locally unless the backend is a node of a Kafka group
    for path, resource in routes.items():
        if isinstance(resource, r.OnlineFeatures):
            resource.forwarder = forwarder
        app.add_route(path, resource)
    if ui:
        add_ui_routes(app)
    return app
