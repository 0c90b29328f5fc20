"""`get_historical_features`: point-in-time-correct training sets.

The entity_df (pandas, Arrow, or a Parquet path/glob) is loaded into DuckDB
with a row number, so the output keeps the input's row order; the SQL itself
is `pit.training_set_sql`. The result is lazy: `to_parquet` streams DuckDB's
output to disk without building it in Python; `to_arrow` / `to_df` fetch it.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import os

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fsapp.errors import EntityDataFrameError, SourceError, UnknownFeatureError
from fsapp.offline import pit
from fsapp.offline.store import OfflineStore, sql_string, time_us_sql
from fsapp.offline.views import ViewDef, quote_ident
from fsapp.registry.catalog import check_feature_names, output_name
from fsapp.registry.model import INTEGER_TYPES, is_decimal_type

DEFAULT_TIMESTAMP = "event_timestamp"
_ids = itertools.count()


class HistoricalResult:
    """A training set: the entity_df's columns then the features, in input row
    order, null where a view has no value."""

    provenance = None  # what the set is made of (fsapp.sdk.provenance), set by the SDK that built it

    def __init__(self, cursor, sql: str, keepalive=(), features=()):
        self._cur, self.sql, self._keepalive = cursor, sql, keepalive
        self._features = frozenset(features)
        self._table: pa.Table | None = None

    def to_arrow(self) -> pa.Table:
        if self._table is None:
            self._table = as_served(self._cur.sql(self.sql).to_arrow_table(), self._features)
        return self._table

    def to_df(self):
        return self.to_arrow().to_pandas()

    def to_batches(self, rows: int = 1 << 17):
        """Record batches of the result, computed once and streamed (for
        results larger than memory)."""
        reader = self._cur.sql(self.sql).to_arrow_reader(rows)
        return pa.RecordBatchReader.from_batches(reader.schema,
                                                 (as_served(b, self._features) for b in reader))

    def to_parquet(self, path: str) -> str:
        if self._table is not None:
            pq.write_table(self._table, path)
        else:
            reader = self.to_batches()
            with pq.ParquetWriter(path, reader.schema) as w:
                for batch in reader:
                    w.write_batch(batch)
        return path

    def __len__(self) -> int:
        return self.to_arrow().num_rows


def _resolve(store: OfflineStore, features) -> tuple[list[tuple[ViewDef, list[str]]], list[tuple[ViewDef, str]]]:
    """[(view narrowed to the wanted features, feature names)] from
    'view:feature' / 'view:*' strings or ViewDef objects, view order kept;
    and every requested (view, feature) in request order, repeats included
    (what the output-name rule judges)."""
    if isinstance(features, (str, ViewDef)):
        features = [features]
    wanted: dict[str, list[str]] = {}
    views: dict[str, ViewDef] = {}
    requested: list[tuple[ViewDef, str]] = []
    for f in features:
        if isinstance(f, ViewDef):
            views[f.name] = f
            requested += [(f, n) for n in f.feature_names]
            wanted.setdefault(f.name, []).extend(n for n in f.feature_names if n not in wanted.get(f.name, []))
            continue
        if not isinstance(f, str) or ":" not in f:
            raise UnknownFeatureError(f"bad feature reference {f!r}: write 'view:feature' or 'view:*'")
        vname, fname = f.split(":", 1)
        base, _, version = vname.partition("@v")  # a version a feature service pins
        if version and not version.isdigit():
            raise UnknownFeatureError(f"bad feature reference {f!r}: write 'view@v2:feature'")
        v = views.get(vname) or store.view(base, int(version) if version else None)
        views[vname] = v
        names = v.feature_names if fname == "*" else [fname]
        for n in names:
            if n not in v.feature_names:
                raise UnknownFeatureError(f"view {vname} has no feature {n!r}; it has {', '.join(v.feature_names)}")
            requested.append((v, n))
            if n not in wanted.setdefault(vname, []):
                wanted[vname].append(n)
    out = []
    for vname, names in wanted.items():
        v = views[vname]
        narrowed = dataclasses.replace(v, features=tuple(f for f in v.features if f[0] in names),
                                       aggregations=tuple(a for a in v.aggregations if a.name in names))
        out.append((narrowed, narrowed.feature_names))
    if not out:
        raise UnknownFeatureError("no features requested")
    return out, requested


def load_entities(cur, entity_df, timestamp_column: str, name: str) -> tuple[list[str], object]:
    """Creates temp table `name` = the entity rows + `__row` + `__t` (µs);
    returns (the entity columns in order, objects to keep alive)."""
    keep = None
    if isinstance(entity_df, (str, os.PathLike)):
        path = os.fspath(entity_df)
        if not path.lower().endswith(".parquet") and not os.path.isdir(path) and "*" not in path:
            raise EntityDataFrameError(f"entity_df path {path!r}: give a Parquet file (or glob)")
        raw = f"read_parquet({sql_string(path)}, filename = '__fs_file', file_row_number = true)"
        try:
            cols = [r[0] for r in cur.execute(f"DESCRIBE SELECT * FROM {raw}").fetchall()]
        except duckdb.Error as e:
            raise EntityDataFrameError(f"cannot read entity_df {path!r}: {e}") from None
        cols = [c for c in cols if c not in ("__fs_file", "file_row_number")]
        row = "row_number() OVER (ORDER BY __fs_file, file_row_number) - 1"
    else:
        if isinstance(entity_df, pa.Table):
            table = entity_df
        elif isinstance(entity_df, pa.RecordBatch):
            table = pa.Table.from_batches([entity_df])
        elif hasattr(entity_df, "columns") and hasattr(entity_df, "iloc"):
            table = pa.Table.from_pandas(entity_df, preserve_index=False)
        else:
            raise EntityDataFrameError(f"entity_df must be a pandas DataFrame, an Arrow table or a Parquet path, "
                                       f"not {type(entity_df).__name__}")
        cols = list(table.column_names)
        table = table.append_column("__fs_rowid", pa.array(range(table.num_rows), pa.int64()))
        raw = f"{name}_in"
        cur.register(raw, table)
        keep = table
        row = "__fs_rowid"
    reserved = [c for c in cols if c in ("__row", "__t", "__fs_rowid")]
    if reserved:
        raise EntityDataFrameError(f"entity_df columns {reserved} are reserved; rename them")
    nul = [c for c in cols if "\x00" in c]
    if nul:  # DuckDB cannot name it: a BinderException (HTTP 500)
        raise EntityDataFrameError(f"entity_df column {nul[0]!r} has a NUL character in its name; rename it")
    folded: dict = {}
    for c in cols:  # SQL names ignore case: one of the two was dropped from the training set
        other = folded.setdefault(c.lower(), c)
        if other != c:
            raise EntityDataFrameError(f"entity_df columns {other!r} and {c!r} differ only in case, and SQL names "
                                       "do not; rename one")
    if timestamp_column not in cols:
        raise EntityDataFrameError(f"entity_df has no timestamp column {timestamp_column!r} (columns: "
                                   f"{', '.join(cols)}); add it or pass timestamp_column=")
    types = dict(cur.execute(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM {raw})").fetchall())
    try:
        t = time_us_sql(quote_ident(timestamp_column), types[timestamp_column],
                        f"entity_df column {timestamp_column!r}")
    except SourceError as e:
        raise EntityDataFrameError(str(e)) from None
    sel = ", ".join(quote_ident(c) for c in cols)
    cur.execute(f"CREATE TEMP TABLE {name} AS SELECT {sel}, {row} AS __row, {t} AS __t FROM {raw}")
    return cols, keep


_INTEGER_TYPES = INTEGER_TYPES | {"UHUGEINT"}  # what DuckDB may type an entity_df's integer column


def _check_key_types(cur, name: str, view) -> None:
    """The entity rows' key columns take the view's key type, as a read's and
    a push's do: DuckDB's join would cast text '1' to the integer key 1 (or 7
    to the text key '7'), a training set of another entity's values. An
    integer key takes integral numbers (a pandas column that held a NaN);
    nulls are keys with no events."""
    if not view.key_kinds:
        return
    types = dict(cur.execute(f"SELECT column_name, column_type FROM (DESCRIBE {name})").fetchall())
    for key, kind in zip(view.keys, view.key_kinds):
        t, col = types[key], quote_ident(key)
        if t == '"NULL"' or t in _INTEGER_TYPES and kind == "int64" or t == "VARCHAR" and kind == "string":
            continue
        if kind == "int64" and (t in ("DOUBLE", "FLOAT") or is_decimal_type(t)):
            bad = cur.execute(f"SELECT __row, CAST({col} AS VARCHAR) FROM {name} WHERE {col} IS NOT NULL AND "
                              f"(NOT isfinite({col}::DOUBLE) OR {col} <> trunc({col}) OR abs({col}::DOUBLE) >= "
                              f"9223372036854775808.0) ORDER BY __row LIMIT 1").fetchone()
            if bad is None:
                continue
            raise EntityDataFrameError(f"entity_df column {key!r} is view {view.name}'s integer key: row {bad[0]} "
                                       f"holds {bad[1]}; give integers")
        wanted = "integers (1, not '1')" if kind == "int64" else "text ('m7', not 7)"
        raise EntityDataFrameError(f"entity_df column {key!r} is {t}, and view {view.name} is keyed by it as "
                                   f"{'an integer' if kind == 'int64' else 'text'}: give {wanted}; a key is never "
                                   "cast into another entity's")


def _non_finite_as_null(arr: pa.Array) -> pa.Array:
    """Non-finite floats (and list items) as null; others as they are."""
    t = arr.type
    if pa.types.is_floating(t):
        ok = pc.fill_null(pc.is_finite(arr), True)
        return arr if pc.all(ok).as_py() else pc.if_else(ok, arr, pa.scalar(None, t))
    if not ((pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))
            and pa.types.is_floating(t.value_type)):
        return arr
    if pa.types.is_fixed_size_list(t):
        # every slot's items, a null row's too (flatten() leaves those out: a column of
        # null vectors — no events for the keys — failed with "expected length 2 but got 0")
        flat = arr.values.slice(arr.offset * t.list_size, len(arr) * t.list_size)
    else:
        flat = arr.flatten()  # the slice's items, in order
    fixed = _non_finite_as_null(flat)
    if fixed is flat:
        return arr
    if pa.types.is_fixed_size_list(t):
        return pa.FixedSizeListArray.from_arrays(fixed, t.list_size, mask=arr.is_null())
    return type(arr).from_arrays(pc.subtract(arr.offsets, arr.offsets[0]), fixed, mask=arr.is_null())


def as_served(data, features: frozenset):
    """A training set's feature values as serving sends them: a DOUBLE that
    is not finite (x / 0, a sum that overflowed) is null, as online (JSON has
    no inf/NaN; docs/semantics.md §7), list items too. Other columns (the
    entity_df's labels) are left alone. `data`: a Table or RecordBatch."""
    if not features:
        return data
    cols = []
    for name, col in zip(data.schema.names, data.columns):
        if name in features:
            if isinstance(col, pa.ChunkedArray):
                col = pa.chunked_array([_non_finite_as_null(c) for c in col.chunks], type=col.type)
            else:
                col = _non_finite_as_null(col)
        cols.append(col)
    return type(data).from_arrays(cols, schema=data.schema)


def get_historical_features(store: OfflineStore, entity_df, features, *,
                            timestamp_column: str = DEFAULT_TIMESTAMP,
                            full_feature_names: bool = False, on_demand=()) -> HistoricalResult:
    """Point-in-time feature values for each row of `entity_df`.

    `features`: 'view:feature' / 'view:*' strings naming views added to the
    store, or ViewDef objects (all their features). Plain views: the latest row
    with ts <= t within the view's ttl (ties: larger created timestamp, then
    later arrival). Aggregated views: the window as of t (events with ts < t)
    per docs/semantics.md. Output columns are named `feature`, or
    `view__feature` with `full_feature_names=True`.

    `on_demand`: [(OnDemandInfo, feature)] computed from the entity_df's
    request columns and the point-in-time values of their inputs, after the
    other features (fsapp.ondemand.offline)."""
    store.log.flush()  # a training set sees every event ingested so far
    features = [features] if isinstance(features, (str, ViewDef)) else list(features)
    on_demand = list(on_demand)
    if not features and not on_demand:
        raise UnknownFeatureError("no features requested")
    selected, requested = _resolve(store, features) if features else ([], [])
    hidden = []  # inputs of on-demand features nobody asked for: read, used, then dropped
    if on_demand:
        from fsapp.ondemand.offline import hidden_inputs
        hidden = hidden_inputs(on_demand, {(v.name, f) for v, f in requested})
        if hidden:
            selected = _resolve(store, features + [f"{v}:{f}" for v, f in hidden])[0]
    cur = store.cursor()
    name = f"__fs_q{next(_ids)}"
    cols, keep = load_entities(cur, entity_df, timestamp_column, name)
    check_feature_names(requested + on_demand, full_feature_names, taken=cols)
    parts, columns = [], {}
    for view, names in selected:
        missing = [k for k in view.keys if k not in cols]
        if missing:
            raise EntityDataFrameError(f"entity_df lacks the key column(s) {missing} of view {view.name} "
                                       f"(it has {', '.join(cols)})")
        _check_key_types(cur, name, view)
        outs = [f"__fs_od__{view.name}__{n}" if (view.name, n) in hidden else output_name(view.name, n, full_feature_names)
                for n in names]
        columns.update({(view.name, n): out for n, out in zip(names, outs)})
        parts.append(pit.ViewQuery(view, store.source(view.source, view), outs))
    result = functools.partial(HistoricalResult, features=columns.values())
    if not on_demand:
        return result(cur, pit.training_set_sql(name, cols, parts), keep)
    from fsapp.ondemand.offline import with_on_demand
    return with_on_demand(cur, name, cols, parts, columns, hidden, on_demand, full_feature_names, keep, result)
