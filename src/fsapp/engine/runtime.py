"""One feature view (one version) running in the engine.

A plain view writes its projected rows into its online table (latest row per
key wins, by event time, then created time). An aggregated view keeps one
`fscore.window.WindowView` per window of its aggregations; the per-key window
state is indexed by the key's row id in the online table (`Table.slots_for`),
so the table's capacity bounds both, and after every batch (and at every hop
boundary, see `tick`) it writes the values as of `now` into the table.
Workers then serve both kinds with the same table lookup.
"""
from __future__ import annotations

import os

import duckdb
import numpy as np
import pyarrow as pa

from fscore.table import Table
from fscore.window import WindowView
from fscore.window_spec import WindowSpec, string_ids

from fsapp.engine.errors import UnsupportedOnlineError
from fsapp.registry.catalog import FeatureViewInfo
from fsapp.registry.model import Stream

INT64_MIN = np.iinfo(np.int64).min


def table_file(data_dir: str, name: str, version: int) -> str:
    return os.path.join(data_dir, "online", f"{name}@v{version}.fst")


def _key_array(col: pa.ChunkedArray, kind: str) -> np.ndarray:
    if kind == "int64":
        return np.asarray(col.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)
    return np.asarray(col.to_pylist(), dtype=object)


def column_for_table(arr: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(values, nulls) for a table column of `kind` from a kernel or Arrow
    result: NaN means null for floats; a vector is null only when all NaN."""
    if kind == "vector":
        with np.errstate(over="ignore"):  # vectors are float32: beyond ±3.4e38 reads as ±inf
            a = np.asarray(arr, dtype=np.float32)
        return a, np.isnan(a).all(axis=1) if a.size else np.zeros(len(a), dtype=bool)
    if kind == "string":
        a = np.asarray(arr, dtype=object)
        return a, np.array([v is None for v in a], dtype=bool)
    a = np.asarray(arr)
    nulls = np.isnan(a) if a.dtype.kind == "f" else np.zeros(len(a), dtype=bool)
    if kind == "float64":
        return a.astype(np.float64), nulls
    if kind == "int64":
        return np.where(nulls, 0, a).astype(np.int64), nulls
    return np.where(nulls, 0, a).astype(bool), nulls


def _arrow_column(col: pa.ChunkedArray, kind: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    nulls = np.asarray(col.is_null(), dtype=bool)
    if kind == "string":
        return np.asarray(col.to_pylist(), dtype=object), nulls
    if kind == "vector":
        rows = col.to_pylist()
        out = np.full((len(rows), size), np.nan, dtype=np.float32)
        for i, v in enumerate(rows):
            if v is not None:
                if len(v) != size:
                    from fsapp.engine.errors import BatchError
                    raise BatchError(f"vector of {len(v)} values where {size} are declared")
                out[i] = v
        return out, nulls
    if kind == "int64" and pa.types.is_timestamp(col.type):
        col = col.cast(pa.int64())
    # PERF: most columns have no null: no filled copy (benches/bench_serving.py push latency)
    filled = col.fill_null(False if kind == "bool" else 0) if col.null_count else col
    dtype = {"int64": np.int64, "float64": np.float64, "bool": np.bool_}[kind]
    return np.asarray(filled.to_numpy(zero_copy_only=False), dtype=dtype), nulls


def _input_column(col: pa.ChunkedArray) -> np.ndarray:
    """An aggregation input as the kernels read it: float64, NaN for null;
    text as its fscore.window_spec.string_id (count, approx_count_distinct)."""
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return string_ids(col.to_pylist())
    if pa.types.is_boolean(col.type):
        col = col.cast(pa.int8())
    if pa.types.is_timestamp(col.type):
        col = col.cast(pa.int64())
    return np.asarray(col.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False), dtype=np.float64)


class ViewRuntime:
    def __init__(self, info: FeatureViewInfo, stream: Stream, data_dir: str, capacity: int,
                 table: Table | None = None, windows: list[WindowView] | None = None):
        self.info = info
        self.name, self.version = info.name, info.version
        self.stream = stream
        self.schema = info.online_schema()
        self.key_names = [k for k, _ in info.keys]
        self.key_kinds = [f.kind for f in self.schema.keys]
        self.sql = info.projection_sql("__batch")
        # PERF: a projection of bare columns needs no DuckDB query (~5 ms a
        # query with this DuckDB build; benches/bench_serving.py push latency)
        self.bare = info.bare_projection([c.name for c in stream.columns]) if stream is not None else None
        self.aggregated = info.definition.is_aggregated
        self.ttl = info.definition.ttl
        path = table_file(data_dir, self.name, self.version)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if table is None:
            # published (renamed into place for readers) by the engine once recovery is done
            table = Table(self.schema, capacity=capacity, ttl_us=0 if self.aggregated else self.ttl, path=path,
                          publish=False)
        self.table = table
        self.groups: list[tuple[WindowSpec, list[str]]] = []
        self.windows: list[WindowView] = []
        if self.aggregated:
            kinds = {f.name: f.kind for f in self.schema.columns}
            for i, (spec, aggs) in enumerate(info.window_groups()):
                for a in aggs:
                    if kinds[a.name] == "string":
                        raise UnsupportedOnlineError(
                            f"feature view {self.name}: {a.function} of a text column ({a.name}) is not computed "
                            "online yet; use count/approx_count_distinct, or a numeric column")
                self.groups.append((spec, [a.name for a in aggs]))
                self.windows.append(windows[i] if windows else
                                    WindowView(spec, list(aggs), 0, allowed_lateness=stream.allowed_lateness,
                                               max_sessions=max(4, stream.allowed_lateness // max(spec.gap, 1) + 2)
                                               if spec.kind == "session" else 4))
        self.min_hop = min((_hop(spec) for spec, _ in self.groups), default=0)
        self.epoch = None  # align(now, min_hop) of the last full recompute

    # ---- ingest

    def project(self, con: duckdb.DuckDBPyConnection, batch: pa.Table) -> pa.Table:
        """The view's inputs from a normalised batch (registered as `__batch`
        in `con` unless the projection is bare columns)."""
        if self.bare is not None:
            return batch.select([src for src, _ in self.bare]).rename_columns([name for _, name in self.bare])
        return con.sql(self.sql).to_arrow_table()

    def keys_of(self, projected: pa.Table):
        cols = [_key_array(projected.column(n), k) for n, k in zip(self.key_names, self.key_kinds)]
        return cols[0] if len(cols) == 1 else dict(zip(self.key_names, cols))

    def apply(self, projected: pa.Table, now: int) -> int:
        """Applies one projected batch (events in arrival order, none late)."""
        n = projected.num_rows
        if n == 0:
            return 0
        keys = self.keys_of(projected)
        ts = np.asarray(projected.column(self.info.timestamp).cast(pa.int64()).to_numpy(), dtype=np.int64)
        if not self.aggregated:
            values, nulls = {}, {}
            for f in self.schema.columns:
                values[f.name], nulls[f.name] = _arrow_column(projected.column(f.name), f.kind, f.size)
            created = np.full(n, now, dtype=np.int64)
            return self.table.put_batch(keys, values, ts, created, now=now, nulls=nulls)
        rows, fresh = self.table.slots_for(keys, now=now)
        high = int(rows.max()) + 1
        inputs = {c: _input_column(projected.column(c)) for c in self.info.input_columns()}
        for w in self.windows:
            if w.n_slots < high:
                w.grow(max(high, 2 * w.n_slots))
            if fresh.any():
                w.reset_slots(rows[fresh])
            w.update(rows, ts, {c: inputs[c] for c in w.columns})
        self.write_values(np.unique(rows), now)
        return n

    def write_values(self, rows: np.ndarray, now: int) -> None:
        """Writes the window values as of `now` of these rows into the table."""
        if rows.size == 0:
            return
        values, nulls = {}, {}
        kinds = {f.name: f.kind for f in self.schema.columns}
        last_ts = np.full(rows.size, INT64_MIN, dtype=np.int64)
        for (spec, names), w in zip(self.groups, self.windows):
            vals, _exact = w.value_as_of(rows, now)
            for name in names:
                values[name], nulls[name] = column_for_table(vals[name], kinds[name])
            last_ts = np.maximum(last_ts, w.key_last_ts()[rows])
        # event_ts of a computed row: the key's last event (what TTL and
        # freshness are measured against)
        self.table.put_rows(rows, values, np.where(last_ts == INT64_MIN, now, last_ts),
                            np.full(rows.size, now, dtype=np.int64), nulls=nulls)

    def tick(self, now: int) -> int:
        """Recomputes every key when `now` crossed a hop boundary (sliding and
        tumbling values change only there; continuous tails move there), and
        evicts keys idle for longer than the view's TTL. Returns keys written."""
        if not self.aggregated:
            if self.ttl:
                self.table.expire(now)
            return 0
        if self.ttl:
            idle = np.unique(np.concatenate([w.idle_slots(now, self.ttl) for w in self.windows]))
            if idle.size:
                self.table.delete_rows(idle)
                for w in self.windows:
                    w.reset_slots(idle)
        epoch = now // self.min_hop if self.min_hop else 0
        if epoch == self.epoch:
            return 0
        self.epoch = epoch
        rows = self.table.live_rows()
        self.write_values(rows, now)
        return int(rows.size)


def _hop(spec: WindowSpec) -> int:
    if spec.kind == "sliding" or spec.kind == "continuous":
        return spec.hop
    if spec.kind == "tumbling":
        return spec.size
    return 60_000_000  # session/lifetime: values change with events only; a minute keeps TTL checks cheap
