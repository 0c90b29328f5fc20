"""`Client`: the SDK's calls over HTTP against `fstore serve`, using the
native `/api/v1/...` endpoints. Standard library only (http.client).

    client = Client("http://127.0.0.1:9094", api_key=None)
    client.push("transactions", rows)
    client.get_online_features(features=["user_txn:txn_count_1h"], entity_rows=[{"user_id": 1}]).to_dict()

Errors come back as the exception class the server raised (see
`fsapp.sdk.errors`), with the server's message.
"""
from __future__ import annotations

import datetime as dt
import http.client
import json
import threading
import time
import urllib.parse
import uuid

import numpy as np
import pyarrow as pa

from fscore.errors import WalError

from fsapp.engine.ingest import arrow_ipc_bytes
from fsapp.registry.errors import NotFoundError
from fsapp.engine.online import iso
from fsapp.sdk.convert import check_feature_args, entity_columns, entity_table, service_refs, to_us
from fsapp.sdk.listing import RegistryListing
from fsapp.sdk.errors import ServiceUnavailable, error_from_response
from fsapp.sdk.results import OnlineResponse, TrainingSet
from fsapp.registry.model import KIND_ORDER

ARROW_STREAM = "application/vnd.apache.arrow.stream"
KINDS = KIND_ORDER  # every registry kind (the HTTP registry endpoint is per kind)
DEFAULT_BATCH_ROWS = 20_000  # rows per push request: well under the server's 16 MiB body limit
PUSH_RETRIES = 5  # a push whose outcome is unknown is retried (same idempotency key): 0.2 s, 0.4 s, ... 3.2 s


def _json_default(v):
    if type(v).__name__ in ("NAType", "NaTType"):  # pandas' missing values
        return None
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, dt.datetime):
        return iso(to_us(v))
    if isinstance(v, dt.date):
        return v.isoformat()
    if hasattr(v, "to_pydatetime"):  # pandas Timestamp
        return iso(to_us(v))
    raise TypeError(f"{type(v).__name__} is not JSON serialisable; send numbers, text, booleans or times")


class Client(RegistryListing):
    """The fstore REST API at `url` (default port 9094). Thread-safe: each
    thread keeps its own connection. `api_key` is sent as a Bearer token."""

    def __init__(self, url: str = "http://127.0.0.1:9094", api_key: str | None = None, *, timeout: float = 60.0):
        parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url {url!r}: give http://HOST:PORT, e.g. http://127.0.0.1:9094")
        self.url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self._scheme, self._host = parts.scheme, parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 9094)
        self._prefix = parts.path.rstrip("/")
        self.api_key, self.timeout = api_key, timeout
        self._local = threading.local()

    # ---- transport

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
            conn = self._local.conn = cls(self._host, self._port, timeout=self.timeout)
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def request(self, method: str, path: str, body: bytes | None = None, *, content_type: str | None = None,
                accept: str = "application/json", idempotent: bool = True,
                headers: dict | None = None) -> tuple[bytes, str]:
        """One request; (body, content type) of a 2xx answer, else the mapped
        exception. A reused keep-alive connection the server already closed is
        retried once, but only for requests that are safe to repeat."""
        headers = {"Accept": accept, **(headers or {})}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in (0, 1):
            reused = getattr(self._local, "conn", None) is not None
            conn = self._conn()
            try:
                conn.request(method, self._prefix + path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                self._drop()
                if reused and idempotent and attempt == 0:
                    continue
                raise self._unreachable(e) from None
            except (OSError, http.client.HTTPException) as e:
                self._drop()
                raise self._unreachable(e) from None
            if resp.will_close:
                self._drop()
            if resp.status >= 400:
                raise error_from_response(resp.status, data, self.url + path)
            return data, resp.getheader("Content-Type", "")
        raise AssertionError("unreachable")

    def _unreachable(self, e: Exception) -> ServiceUnavailable:
        exc = ServiceUnavailable(f"no answer from {self.url} ({type(e).__name__}: {e}); is `fstore serve` running "
                                 f"there? Start it with `fstore serve --repo DIR --port {self._port}`")
        exc.status = None
        return exc

    def _json(self, method: str, path: str, doc=None, *, idempotent: bool = True):
        body = None if doc is None else json.dumps(doc, default=_json_default, allow_nan=False).encode()
        data, _ = self.request(method, path, body, idempotent=idempotent)
        return json.loads(data)

    def close(self) -> None:
        self._drop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- writes

    def push(self, stream: str, rows, *, batch_rows: int = DEFAULT_BATCH_ROWS, idempotency_key: str | None = None,
             retries: int = PUSH_RETRIES) -> dict:
        """Appends events to `stream` (list of dicts, dict of lists, pandas
        DataFrame or Arrow table); returns `{"accepted", "late", "lsn"}` once
        the server has made them durable. Large inputs go in several requests
        of `batch_rows` (each durable when acknowledged).

        Each request carries an idempotency key (`idempotency_key`, with
        `:<part>` after it for the parts of a large input; a new UUID by
        default), and one whose outcome is unknown (no answer, a timeout, a
        503) is retried with the same key up to `retries` times with backoff:
        the server applies it at most once."""
        total = {"accepted": 0, "late": 0, "lsn": None}
        for i, part in enumerate(self._push_parts(stream, rows, batch_rows)):
            key = (idempotency_key if i == 0 else f"{idempotency_key}:{i}") if idempotency_key else str(uuid.uuid4())
            res = self._retrying(lambda: part({"Idempotency-Key": key}), retries)
            total["accepted"] += res["accepted"]
            total["late"] += res["late"]
            total["lsn"] = res["lsn"]
        return total

    def _push_parts(self, stream, rows, batch_rows):
        q = urllib.parse.quote(stream, safe="")
        if hasattr(rows, "columns") and hasattr(rows, "iloc"):  # pandas → Arrow (keeps dtypes, no JSON)
            rows = pa.Table.from_pandas(rows, preserve_index=False)
        if isinstance(rows, pa.RecordBatch):
            rows = pa.Table.from_batches([rows])
        if isinstance(rows, pa.Table):
            for off in range(0, max(rows.num_rows, 1), batch_rows):
                body = arrow_ipc_bytes(rows.slice(off, batch_rows))
                yield lambda h, body=body: self._post_push(f"/api/v1/push?stream={q}", body, ARROW_STREAM, h)
        elif isinstance(rows, dict):
            n = max((len(v) for v in rows.values()), default=0)
            for off in range(0, max(n, 1), batch_rows):
                doc = {"stream": stream, "columns": {k: list(v[off:off + batch_rows]) for k, v in rows.items()}}
                yield lambda h, doc=doc: self._post_push("/api/v1/push", self._encode(doc), "application/json", h)
        elif isinstance(rows, (list, tuple)):
            for off in range(0, max(len(rows), 1), batch_rows):
                doc = {"stream": stream, "rows": list(rows[off:off + batch_rows])}
                yield lambda h, doc=doc: self._post_push("/api/v1/push", self._encode(doc), "application/json", h)
        else:
            from fsapp.engine.errors import BatchError
            raise BatchError(f"cannot push rows of type {type(rows).__name__}: give a list of dicts, a dict of "
                             "lists, a pandas DataFrame or an Arrow table")

    def _post_push(self, path, body, content_type, headers):
        data, _ = self.request("POST", path, body, content_type=content_type, idempotent=False, headers=headers)
        return json.loads(data)

    @staticmethod
    def _encode(doc) -> bytes:
        return json.dumps(doc, default=_json_default, allow_nan=False).encode()

    @staticmethod
    def _retrying(call, retries: int):
        """`call()`, again after an unknown outcome (no answer, or a 503)."""
        delay = 0.2
        for attempt in range(retries + 1):
            try:
                return call()
            except ServiceUnavailable as e:
                if attempt == retries:
                    raise
                last = e
            except WalError as e:  # 503 "Store cannot persist": maybe it recovers (a restarted engine)
                if attempt == retries or getattr(e, "status", None) != 503:
                    raise
                last = e
            time.sleep(delay)
            delay *= 2
        raise last  # pragma: no cover

    def materialize(self, start, end, views: list[str] | None = None) -> dict:
        """Recomputes online values as of `end` from the offline log for keys
        with events in [start, end); `start` None: from the beginning."""
        doc = {"end": iso(to_us(end, "end"))}
        if start is not None:
            doc["start"] = iso(to_us(start, "start"))
        if views is not None:
            doc["views"] = list(views)
        return self._json("POST", "/api/v1/materialize", doc, idempotent=False)

    # ---- reads

    def get_online_features(self, features: list[str] | None = None, entity_rows=None, *,
                            feature_service: str | None = None, full_feature_names: bool = False,
                            as_of=None) -> OnlineResponse:
        """Same call as `FeatureStore.get_online_features`."""
        check_feature_args(features, feature_service)
        entities = entity_columns(entity_rows)
        doc = {"entities": entities, "full_feature_names": bool(full_feature_names)}
        if features is not None:
            doc["features"] = list(features)
        else:
            doc["feature_service"] = feature_service
        if as_of is not None:
            doc["as_of"] = iso(to_us(as_of, "as_of"))
        return OnlineResponse(self._json("POST", "/api/v1/features/online", doc), len(entities))

    def get_historical_features(self, entity_df, features: list[str] | None = None, *,
                                feature_service: str | None = None, full_feature_names: bool = False) -> TrainingSet:
        """Same call as `FeatureStore.get_historical_features`; the answer
        travels as Arrow IPC, so types (timestamps, vectors) survive."""
        check_feature_args(features, feature_service)
        from fsapp.sdk.provenance import training_provenance

        if feature_service is not None:
            entry = self.describe(feature_service)
            if entry["kind"] != "feature_service":
                raise NotFoundError(f"{feature_service} is a {entry['kind']}, not a feature service")
            features = service_refs(entry["resolved"]["features"], lambda v: self.describe(v)["version"])
        table = entity_table(entity_df)
        cols = {}
        for name, col in zip(table.column_names, table.columns):
            if pa.types.is_timestamp(col.type):
                us = col.cast(pa.timestamp("us", tz=col.type.tz)).cast(pa.int64()).to_pylist()
                cols[name] = [None if v is None else iso(v) for v in us]
            else:
                cols[name] = col.to_pylist()
        doc = {"entities": cols, "features": list(features), "full_feature_names": bool(full_feature_names)}
        body = json.dumps(doc, default=_json_default, allow_nan=False).encode()
        data, _ = self.request("POST", "/api/v1/features/historical", body, accept=ARROW_STREAM)
        result = TrainingSet(pa.ipc.open_stream(pa.py_buffer(data)).read_all())
        result.provenance = training_provenance(list(features), feature_service, full_feature_names, entity_df,
                                                self.describe)
        return result

    # ---- registry

    def _list(self, kind: str) -> list[dict]:
        return self._json("GET", f"/api/v1/registry/{kind}")["items"]

    def describe(self, name: str) -> dict:
        """One registered definition (`name` or `name@vN`), whatever its kind."""
        base, _, ver = name.partition("@v")
        query = f"?version={int(ver)}" if ver.isdigit() else ""
        q = urllib.parse.quote(base, safe="")
        for kind in KINDS:  # the endpoint is per kind; names are unique across kinds
            try:
                return self._json("GET", f"/api/v1/registry/{kind}/{q}{query}")
            except NotFoundError as e:
                if f"{base} is a " not in str(e):  # unknown name (or version), not another kind
                    raise
        raise NotFoundError(f"no definition named {name!r}")

    def lineage(self, name: str) -> dict:
        return self._json("GET", f"/api/v1/lineage/{urllib.parse.quote(name, safe='')}")

    def health(self) -> dict:
        return self._json("GET", "/health")

    def cluster(self) -> dict:
        """This node's Kafka partitions and their state (GET /api/v1/cluster)."""
        return self._json("GET", "/api/v1/cluster")
