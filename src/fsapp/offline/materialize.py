"""`materialize` / `materialize_incremental`: compute the values as of `end`
from the offline log and write them to the online store.

This is also how late events heal: the engine does not apply an event older
than its allowed lateness, but it does write it to the event log, so the next
materialize computes the window with it and overwrites the online value
(written with created_ts = `now`, which wins the table's tie-break).

The writer is anything with `DurableTable.put_batch(keys, values, event_ts,
created_ts, *, now, nulls)` — a `fscore.durable.DurableTable` (whose schema
`online_schema(view)` gives) or the engine's forwarding client.
"""
from __future__ import annotations

import json
import os

import duckdb
import numpy as np
import pyarrow as pa

from fscore.schema import Schema

from fsapp.errors import SourceError
from fsapp.offline import pit
from fsapp.offline.store import OfflineStore
from fsapp.offline.views import ViewDef

STATE_FILE = "materialized.json"
_DATA_ERRORS = (SourceError, duckdb.BinderException, duckdb.IOException, duckdb.ConversionException,
                duckdb.InvalidInputException, duckdb.OutOfRangeException, duckdb.TypeMismatchException)


def online_schema(view: ViewDef, key_kinds=None, feature_kinds: dict | None = None) -> Schema:
    """The online table schema of a view: its keys (`key_kinds`, default the
    view's, else int64) and one column per feature. Counts and distinct counts
    are int64, other aggregations float64, last_k a list of up to k float64
    items (the table's list type); plain features default to float64 unless
    `feature_kinds` says otherwise."""
    kinds = list(key_kinds or view.key_kinds or ["int64"] * len(view.keys))
    keys = [(k, kind) for k, kind in zip(view.keys, kinds)]
    cols = []
    for name, _ in view.features:
        cols.append((name, (feature_kinds or {}).get(name, "float64")))
    for wa in view.aggregations:
        a = wa.agg
        if a.kind in ("count", "approx_count_distinct"):
            cols.append((a.name, "int64"))
        elif a.kind == "last_k":
            cols.append((a.name, "list", a.k))
        else:
            cols.append((a.name, "float64"))
    return Schema(keys=keys, columns=cols)


def _column(schema_field, arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(values, null mask) in the form `put_batch` takes for this field."""
    nulls = arr.is_null().to_numpy(zero_copy_only=False)
    kind = schema_field.kind
    if kind in ("vector", "vector64", "list"):
        # a list (last_k) holds its items then NaN; a vector's null element is NaN too
        size = schema_field.size
        rows = [[np.nan if x is None else x for x in (v or [])][:size] for v in arr.to_pylist()]
        vals = np.array([r + [np.nan] * (size - len(r)) for r in rows], dtype=np.float64).reshape(len(arr), size)
        return vals, nulls
    if kind == "string":
        return np.array(arr.to_pylist(), dtype=object), nulls
    if kind == "bool":
        return arr.fill_null(False).to_numpy(zero_copy_only=False).astype(bool), nulls
    fill = 0 if kind == "int64" else np.nan
    vals = arr.fill_null(fill).to_numpy(zero_copy_only=False)
    return vals.astype(np.int64 if kind == "int64" else np.float64), nulls


def materialize_view(store: OfflineStore, view: ViewDef, start: int, end: int, writer, *, now: int,
                     batch_rows: int = 1 << 16) -> int:
    """Writes one view's values as of `end`; returns the number of rows."""
    schema = getattr(writer, "schema", None) or online_schema(view)
    sql = pit.materialize_sql(view, store.source(view.source, view), int(start), int(end), int(now))
    cur = store.cursor()
    try:
        return _write_batches(cur.sql(sql).to_arrow_reader(batch_rows), schema, writer, now)
    finally:
        cur.close()


def _write_batches(reader, schema, writer, now: int) -> int:
    written = 0
    for batch in reader:
        if batch.num_rows == 0:
            continue
        keys = {f.name: _column(f, batch.column(f.name))[0] for f in schema.keys}
        values, nulls = {}, {}
        for f in schema.columns:
            if f.name in batch.schema.names:
                values[f.name], nulls[f.name] = _column(f, batch.column(f.name))
        writer.put_batch(keys if len(keys) > 1 else next(iter(keys.values())), values,
                         batch.column("__event_ts").to_numpy(zero_copy_only=False).astype(np.int64),
                         batch.column("__created_ts").to_numpy(zero_copy_only=False).astype(np.int64),
                         now=int(now), nulls=nulls)
        written += batch.num_rows
    return written


def _writer_for(writer, view: ViewDef):
    if isinstance(writer, dict):
        try:
            return writer[view.name]
        except KeyError:
            raise SourceError(f"no writer for view {view.name}; pass a dict view name -> writer "
                              f"with every view") from None
    return writer(view) if callable(writer) and not hasattr(writer, "put_batch") else writer


def _views(store: OfflineStore, views) -> list[ViewDef]:
    if views is None:
        return list(store.views.values())
    if isinstance(views, (str, ViewDef)):
        views = [views]
    return [v if isinstance(v, ViewDef) else store.view(v) for v in views]


class Materialized(dict):
    """What `materialize` returns: rows written per view (a plain dict, as
    before) plus `skipped`, view name -> why it was not materialized (its
    batch source cannot be read, the rows cannot be computed). A skipped view
    keeps its online values and its incremental state."""

    def __init__(self, written=(), skipped=None):
        super().__init__(written)
        self.skipped: dict[str, str] = dict(skipped or {})


def materialize(store: OfflineStore, views, start: int, end: int, writer, *, now: int | None = None) -> Materialized:
    """Values as of `end` (events with ts < end) of every key with events in
    [start, end) — plus, for bounded windows, every key whose window as of
    `end` is non-empty — written through `writer` (one writer, a dict view
    name -> writer, or a function view -> writer). `now` (µs) stamps
    aggregated rows' created time; default `end`. Returns rows per view; a
    view that cannot be computed does not stop the others: it is left out of
    the rows and listed with the reason in the result's `skipped`."""
    store.log.flush()
    now = int(end if now is None else now)
    out = Materialized()
    for view in _views(store, views):
        why = store.source_problem(view.source)
        if why is not None:
            out.skipped[view.name] = why
            continue
        view_writer = _writer_for(writer, view)
        try:
            out[view.name] = materialize_view(store, view, start, end, view_writer, now=now)
        except _DATA_ERRORS as e:
            # one view's data (a source that cannot be read, a column a file
            # lacks, a value that does not cast) must not stop the others; a
            # writer's failure (the online store) still does
            out.skipped[view.name] = _first_line(e)
            continue
        _save_state(store, view.name, int(end))
    return out


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def materialize_incremental(store: OfflineStore, views, end: int, writer, *,
                            now: int | None = None) -> Materialized:
    """`materialize` from each view's last materialized `end` (the start of
    time on the first run) to `end`."""
    state = _load_state(store)
    out = Materialized()
    for view in _views(store, views):
        start = state.get(view.name, -(1 << 62))
        res = materialize(store, [view], start, end, writer, now=now)
        out.update(res)
        out.skipped.update(res.skipped)
    return out


def _state_path(store: OfflineStore) -> str:
    return os.path.join(store.root, STATE_FILE)


def _load_state(store: OfflineStore) -> dict:
    try:
        with open(_state_path(store)) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def _save_state(store: OfflineStore, view: str, end: int) -> None:
    # Written to a temp file and renamed: a crash leaves the old state, and the
    # next incremental run simply recomputes (materialize is idempotent).
    state = _load_state(store)
    state[view] = max(end, state.get(view, end))
    tmp = _state_path(store) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, _state_path(store))
