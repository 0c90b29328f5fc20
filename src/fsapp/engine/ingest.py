"""Turning what users push (list of dicts, dict of lists, pandas, Arrow) into
one Arrow table with the stream's declared column types, checked.

Timestamps: ISO-8601 strings (a missing offset means UTC), datetimes, or
epoch numbers whose magnitude gives the unit: |x| < 1e11 seconds, < 1e14
milliseconds, otherwise microseconds. Inside, times are int64 µs UTC.
"""
from __future__ import annotations

import datetime as dt
import io

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fsapp.engine.errors import BatchError
from fsapp.registry.model import Stream

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _qi(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def arrow_ipc_bytes(table: pa.Table) -> bytes:
    """An Arrow table as one IPC stream (what pushes and training sets travel as)."""
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue()


def to_arrow(rows) -> pa.Table:
    """Rows as given → an Arrow table (no type checks yet)."""
    if isinstance(rows, pa.Table):
        return rows
    if isinstance(rows, pa.RecordBatch):
        return pa.Table.from_batches([rows])
    if hasattr(rows, "to_dict") and hasattr(rows, "columns") and hasattr(rows, "dtypes"):  # pandas
        return pa.Table.from_pandas(rows, preserve_index=False)
    if isinstance(rows, dict):
        lengths = {k: len(v) for k, v in rows.items() if hasattr(v, "__len__") and not isinstance(v, (str, bytes))}
        if len(lengths) != len(rows):
            raise BatchError("columns must be lists of values, e.g. {\"user_id\": [1, 2], \"amount\": [9.5, 3.0]}")
        if len(set(lengths.values())) > 1:
            raise BatchError(f"columns have different lengths: {lengths}")
        try:
            return pa.table({k: pa.array(list(v) if not isinstance(v, np.ndarray) else v) for k, v in rows.items()})
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise BatchError(f"could not read the columns: {e}") from None
    if isinstance(rows, (list, tuple)):
        if not all(isinstance(r, dict) for r in rows):
            raise BatchError("rows must be objects, e.g. [{\"user_id\": 1, \"amount\": 9.5, \"ts\": \"2026-11-27T10:00:00Z\"}]")
        names: list[str] = []
        for r in rows:
            for k in r:
                if k not in names:
                    names.append(k)
        cols = {}
        for k in names:
            vals = [r.get(k) for r in rows]
            try:
                cols[k] = pa.array(vals)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                cols[k] = pa.array([None if v is None else str(v) for v in vals])  # DuckDB casts or explains
        return pa.table(cols) if cols else pa.table({})
    raise BatchError(f"cannot read rows of type {type(rows).__name__}: give a list of objects, "
                     "a dict of lists, a pandas DataFrame or an Arrow table")


def timestamps_us(col: pa.ChunkedArray | pa.Array, name: str) -> np.ndarray:
    """A timestamp column (strings, datetimes, numbers) → int64 µs UTC."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if col.null_count:
        bad = np.nonzero(np.asarray(col.is_null()))[0][:5].tolist()
        raise BatchError(f"timestamp column {name!r} is null in row(s) {bad}; every event needs a time")
    t = col.type
    if pa.types.is_timestamp(t):
        us = pc.cast(col, pa.timestamp("us", tz=t.tz)) if t.unit != "us" else col
        return np.asarray(us.cast(pa.int64()), dtype=np.int64)
    if pa.types.is_date(t):
        return np.asarray(pc.cast(col, pa.timestamp("us")).cast(pa.int64()), dtype=np.int64)
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        x = np.asarray(col, dtype=np.float64) if pa.types.is_floating(t) else np.asarray(col, dtype=np.int64)
        mag = np.abs(x)
        scale = np.where(mag < 1e11, 1_000_000, np.where(mag < 1e14, 1_000, 1))
        return np.asarray(np.round(x * scale) if x.dtype.kind == "f" else x * scale, dtype=np.int64)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        out = np.empty(len(col), dtype=np.int64)
        for i, s in enumerate(col.to_pylist()):
            try:
                d = dt.datetime.fromisoformat(s.strip().replace("Z", "+00:00"))
            except ValueError:
                raise BatchError(f"timestamp column {name!r}, row {i}: {s!r} is not ISO-8601 "
                                 "(e.g. 2026-11-27T10:00:00Z) or an epoch number") from None
            if d.tzinfo is None:
                d = d.replace(tzinfo=dt.timezone.utc)
            delta = d - _EPOCH
            out[i] = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
        return out
    raise BatchError(f"timestamp column {name!r} has type {t}; use ISO-8601 strings or epoch numbers")


class BatchNormaliser:
    """Casts pushed batches to a stream's declared types with DuckDB, so the
    rules (and the error messages) are DuckDB's casts."""

    def __init__(self, stream: Stream, con: duckdb.DuckDBPyConnection):
        self.stream = stream
        self.con = con
        self.names = [c.name for c in stream.columns]
        self._schema: pa.Schema | None = None  # what the DuckDB cast returns, learnt from the first batch

    def normalise(self, rows) -> tuple[pa.Table, np.ndarray]:
        """(table with declared types, event times in µs)."""
        table = to_arrow(rows)
        s = self.stream
        unknown = [c for c in table.column_names if c not in self.names]
        if unknown:
            raise BatchError(f"stream {s.name} has no column(s) {', '.join(unknown)}; "
                             f"its columns are {', '.join(self.names)}")
        if s.timestamp not in table.column_names:
            raise BatchError(f"stream {s.name}: every event needs its timestamp column {s.timestamp!r}")
        if table.num_rows == 0:
            return table, np.zeros(0, dtype=np.int64)
        ts = timestamps_us(table.column(s.timestamp), s.timestamp)
        fast = self._as_declared(table, ts)
        if fast is not None:
            return fast, ts
        table = table.set_column(table.column_names.index(s.timestamp), s.timestamp, pa.array(ts, pa.int64()))
        items = []
        for c in s.columns:
            if c.name == s.timestamp:
                items.append(f"make_timestamp({_qi(c.name)}) AS {_qi(c.name)}")
            elif c.name in table.column_names:
                items.append(f"CAST({_qi(c.name)} AS {c.type}) AS {_qi(c.name)}")
            else:
                items.append(f"CAST(NULL AS {c.type}) AS {_qi(c.name)}")
        try:
            self.con.register("__push", table)
            out = self.con.sql(f"SELECT {', '.join(items)} FROM __push").to_arrow_table()
        except duckdb.Error as e:
            raise BatchError(f"stream {s.name}: a value does not fit its column type: {_first_line(e)}") from None
        finally:
            try:
                self.con.unregister("__push")
            except duckdb.Error:
                pass
        self._schema = out.schema
        return out, ts

    def _as_declared(self, table: pa.Table, ts: np.ndarray) -> pa.Table | None:
        """The batch as the DuckDB cast would return it, without the query,
        when that cast would change nothing: every pushed column already has
        the type the cast produces, or is BIGINT for a DOUBLE (missing columns
        are nulls). None otherwise: then DuckDB's rules and messages apply.
        PERF: the query is ~10 ms of a one-row push with this DuckDB build
        (benches/bench_serving.py push latency)."""
        schema = self._schema
        if schema is None:
            return None
        pushed = dict(zip(table.column_names, table.columns))
        cols = []
        for f in schema:
            if f.name == self.stream.timestamp:
                if f.type != _TS_US:
                    return None
                cols.append(pa.array(ts, pa.int64()).cast(f.type))
            elif f.name in pushed:
                col = pushed[f.name]
                if col.type == _INT64 and f.type == _FLOAT64:
                    # whole JSON numbers in a DOUBLE column: DuckDB's cast is the
                    # C conversion (nearest double), as is an unchecked Arrow cast
                    col = col.cast(pa.float64(), safe=False)
                elif col.type != f.type:
                    return None
                cols.append(col)
            else:
                cols.append(pa.nulls(table.num_rows, f.type))
        return pa.Table.from_arrays(cols, schema=schema)


_TS_US, _INT64, _FLOAT64 = pa.timestamp("us"), pa.int64(), pa.float64()


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0]
