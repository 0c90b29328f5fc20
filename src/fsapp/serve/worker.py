"""The backend of a gunicorn worker (fsapp.api.backend.Backend): online reads
straight from the engine's shared-memory tables, registry reads from the
registry file, everything else forwarded to the engine process."""
from __future__ import annotations

import time
import uuid

import pyarrow as pa

from fsapp.api.backend import registry_get, registry_list
from fsapp.engine.ingest import arrow_ipc_bytes
from fsapp.registry.catalog import Registry
from fsapp.serve.protocol import EngineClient
from fsapp.serve.reader import OnlineReader

LONG_TIMEOUT_S = 600.0  # under gunicorn's --timeout (660 s, fsapp.serve.supervisor)


class WorkerBackend:
    def __init__(self, data_dir: str, registry_path: str, socket_path: str, clock=None, feature_logger=None):
        self.feature_logger = feature_logger
        self.reader = OnlineReader(data_dir, registry_path)
        self.registry = Registry(registry_path)
        self.client = EngineClient(socket_path)
        self.clock = clock or (lambda: time.time_ns() // 1000)

    def _forward(self, method: str, body: bytes = b"", **kwargs):
        # training sets and materialize may run for minutes; everything else answers in milliseconds
        timeout = LONG_TIMEOUT_S if method in ("historical", "materialize") else None
        return self.client.call("backend", body, method=method, kwargs=kwargs, timeout=timeout)

    # ---- reads

    def online(self, features, feature_service, entities, as_of, full_feature_names):
        if as_of is None:  # the common case: no engine round trip
            return self.reader.get_online_json(features, feature_service, entities, now=self.clock(),
                                               full_feature_names=full_feature_names)
        # values as of another time are recomputed from the engine's window state
        _, text = self._forward("online", features=features, feature_service=feature_service,
                                entities=entities, as_of=as_of, full_feature_names=full_feature_names)
        return text

    def historical(self, entities: pa.Table, features, full_feature_names):
        _, data = self._forward("historical", arrow_ipc_bytes(entities), features=features,
                                full_feature_names=full_feature_names)
        return pa.ipc.open_stream(pa.py_buffer(data)).read_all()

    # ---- writes

    def push(self, stream, rows, idempotency_key=None):
        # a key of our own when the client sent none: the socket may be retried
        # (an engine restart), and a retry must not apply the batch twice
        key = idempotency_key or f"fstore-worker-{uuid.uuid4()}"
        if isinstance(rows, pa.Table):
            result, _ = self._forward("push", arrow_ipc_bytes(rows), stream=stream, idempotency_key=key)
        else:
            result, _ = self._forward("push", stream=stream, rows=rows, idempotency_key=key)
        return result

    def materialize(self, start, end, views):
        result, _ = self._forward("materialize", start=start, end=end, views=views)
        return result

    # ---- registry (read-only; safe in every worker)

    def registry_list(self, kind):
        return registry_list(self.registry, kind)

    def registry_get(self, kind, name, version):
        return registry_get(self.registry, kind, name, version)

    def lineage(self, name):
        return self.registry.lineage(name)

    # ---- operations

    def health(self):
        result, _ = self._forward("health")
        return result

    def ready(self):
        ok, reason = self._forward("ready")[0]
        return bool(ok), reason

    def metrics_text(self):
        result, _ = self._forward("metrics_text")
        return result

    def cluster(self):
        result, _ = self._forward("cluster")
        return result
