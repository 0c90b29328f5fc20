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
    return read_rows(rows)[0]


def read_rows(rows) -> tuple[pa.Table, dict[str, set]]:
    """Rows as given → (an Arrow table, the columns whose values mixed Python
    types: name → the type names). A mixed column is read as text (DuckDB's
    cast then reads it), so the caller can refuse it where text would change
    its meaning (an entity key: `"1020"` is not the key 1020)."""
    if isinstance(rows, pa.Table):
        return _decoded(rows), {}
    if isinstance(rows, pa.RecordBatch):
        return _decoded(pa.Table.from_batches([rows])), {}
    mixed: dict[str, set] = {}
    try:
        if hasattr(rows, "to_dict") and hasattr(rows, "columns") and hasattr(rows, "dtypes"):  # pandas
            if len(rows) and not len(rows.columns):  # Arrow reads it as no rows: "0 accepted"
                raise BatchError(f"the DataFrame has {len(rows)} rows and no columns: each row is one event "
                                 "with its columns")
            try:
                return _decoded(pa.Table.from_pandas(rows, preserve_index=False)), {}
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
                raise BatchError(f"could not read the DataFrame: {e}") from None
        if isinstance(rows, dict):
            lengths = {k: len(v) for k, v in rows.items() if hasattr(v, "__len__") and not isinstance(v, (str, bytes))}
            if len(lengths) != len(rows):
                raise BatchError("columns must be lists of values, e.g. {\"user_id\": [1, 2], \"amount\": [9.5, 3.0]}")
            if len(set(lengths.values())) > 1:
                raise BatchError(f"columns have different lengths: {lengths}")
            return pa.table({_name(k): _column(k, v, mixed) for k, v in rows.items()}), mixed
        if isinstance(rows, (list, tuple)):
            if not all(isinstance(r, dict) for r in rows):
                raise BatchError("rows must be objects, e.g. [{\"user_id\": 1, \"amount\": 9.5, \"ts\": \"2026-11-27T10:00:00Z\"}]")
            names: dict = {}
            for r in rows:
                for k in r:
                    names.setdefault(k, None)
            if rows and not names:  # [{}]: a table of no columns has no rows, and the push read "0 accepted"
                raise BatchError(f"row 0 of {len(rows)} is an empty object (every row is): each row is one event "
                                 "with its columns, e.g. {\"user_id\": 1, \"amount\": 9.5, \"ts\": "
                                 "\"2026-11-27T10:00:00Z\"}")
            cols = {_name(k): _column(k, [r.get(k) for r in rows], mixed) for k in names}
            return (pa.table(cols) if cols else pa.table({})), mixed
    except UnicodeEncodeError as e:
        raise BatchError(f"text in the batch is not valid Unicode ({e.reason}: {e.object[e.start:e.end]!r}); "
                         "send UTF-8 text without lone surrogates") from None
    raise BatchError(f"cannot read rows of type {type(rows).__name__}: give a list of objects, "
                     "a dict of lists, a pandas DataFrame or an Arrow table")


def _decoded(table: pa.Table) -> pa.Table:
    """Dictionary-encoded columns (pandas' category dtype) as their values: a
    categorical merchant_id is text, and was refused as an entity key."""
    for i, f in enumerate(table.schema):
        if pa.types.is_dictionary(f.type):
            table = table.set_column(i, f.name, table.column(i).cast(f.type.value_type))
    return table


def _name(k) -> str:
    if not isinstance(k, str):
        raise BatchError(f"column names are text; got {type(k).__name__} {k!r}")
    return k


def _column(name: str, vals, mixed: dict) -> pa.Array:
    if isinstance(vals, np.ndarray):
        try:
            return pa.array(vals)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as e:
            raise BatchError(f"column {name!r} cannot be read: {e}") from None
    vals = list(vals)
    try:
        return pa.array(vals)
    except OverflowError:
        raise BatchError(f"column {name!r} holds an integer outside the 64-bit range") from None
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        # mixed types: read as text, so DuckDB casts it or explains why not (NotImplemented:
        # Python objects Arrow has no type for, e.g. a list of uuid.UUID, raised "extension")
        mixed[name] = {type(v).__name__ for v in vals if v is not None}
        return pa.array([None if v is None else str(v) for v in vals])


def datetime_us(d: dt.datetime) -> int:
    """A datetime → µs since the epoch, exactly (naive = UTC)."""
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.timezone.utc)
    delta = d - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def iso_us(s: str) -> int:
    """ISO-8601 text (a trailing Z, or no offset = UTC) → µs; ValueError if it is not ISO-8601."""
    return datetime_us(dt.datetime.fromisoformat(s.strip().replace("Z", "+00:00")))


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
        if x.dtype.kind == "f" and not (np.isfinite(x) & (np.abs(x) < 9e18)).all():
            i = _first_row(~(np.isfinite(x) & (np.abs(x) < 9e18)))
            raise BatchError(f"timestamp column {name!r}, row {i}: {x[i]!r} is not a time; send ISO-8601 text or "
                             "an epoch number")
        mag = np.abs(x)
        scale = np.where(mag < 1e11, 1_000_000, np.where(mag < 1e14, 1_000, 1))
        return np.asarray(np.round(x * scale) if x.dtype.kind == "f" else x * scale, dtype=np.int64)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        out = np.empty(len(col), dtype=np.int64)
        for i, s in enumerate(col.to_pylist()):
            try:
                out[i] = iso_us(s)
            except ValueError:
                raise BatchError(f"timestamp column {name!r}, row {i}: {s!r} is not ISO-8601 "
                                 "(e.g. 2026-11-27T10:00:00Z) or an epoch number") from None
        return out
    raise BatchError(f"timestamp column {name!r} has type {t}; use ISO-8601 strings or epoch numbers")


# event times a stream takes: years 0001..9999 (what ISO-8601, Parquet readers and Python spell), in µs
TIME_MIN_US, TIME_MAX_US = -62135596800 * 1_000_000, 253402300799999999


def check_time_range(ts: np.ndarray, name: str) -> None:
    bad = (ts < TIME_MIN_US) | (ts > TIME_MAX_US)
    if bad.any():
        i = _first_row(bad)
        raise BatchError(f"timestamp column {name!r}, row {i}: {int(ts[i])} µs is outside years 0001..9999 "
                         "(epoch numbers are read as seconds below 1e11, milliseconds below 1e14, else µs)")


class BatchNormaliser:
    """Casts pushed batches to a stream's declared types.

    The input rules (docs/api.md, "What a push accepts"): an entity key
    column takes exactly its type (integers, or integral numbers, for an
    integer key; text for a text key), so a value never silently becomes
    another entity; an integer column takes integers (or integral numbers,
    or integer text); a numeric column takes numbers or numeric text
    (DuckDB's cast) but never a boolean or a non-finite value; a boolean
    column takes booleans or their text. NaN from Arrow or pandas floats is
    null (semantics.md §3). Everything else is DuckDB's cast, with its
    message when it refuses."""

    def __init__(self, stream: Stream, con: duckdb.DuckDBPyConnection, keys=()):
        self.stream = stream
        self.con = con
        self.names = [c.name for c in stream.columns]
        self.types = {c.name: c.type for c in stream.columns}
        self.keys = frozenset(keys)  # columns that are some view's entity key
        self._schema: pa.Schema | None = None  # what the DuckDB cast returns, learnt from the first batch

    def normalise(self, rows, con: duckdb.DuckDBPyConnection | None = None) -> tuple[pa.Table, np.ndarray]:
        """(table with declared types, event times in µs). `con`: the DuckDB
        connection (cursor) of the calling thread, default the normaliser's."""
        table, mixed = read_rows(rows)
        s = self.stream
        unknown = [c for c in table.column_names if c not in self.names]
        if unknown:
            raise BatchError(f"stream {s.name} has no column(s) {', '.join(map(repr, unknown))}; "
                             f"its columns are {', '.join(self.names)}")
        dup = sorted({c for c in table.column_names if table.column_names.count(c) > 1})
        if dup:
            raise BatchError(f"stream {s.name}: column(s) {', '.join(dup)} appear more than once")
        if s.timestamp not in table.column_names and (table.num_rows or table.num_columns):
            # (no rows and no columns, `[]` or `{}`, is an empty batch: nothing to check, 0 accepted)
            raise BatchError(f"stream {s.name}: every event needs its timestamp column {s.timestamp!r}")
        if table.num_rows == 0:
            return table, np.zeros(0, dtype=np.int64)
        for name, col in zip(table.column_names, table.columns):
            if name != s.timestamp:
                _check_input(s.name, name, self.types[name], col, mixed.get(name), name in self.keys)
        ts = timestamps_us(table.column(s.timestamp), s.timestamp)
        check_time_range(ts, s.timestamp)
        out = self._as_declared(table, ts)
        if out is None:
            out = self._cast(table, ts, con or self.con)
        return _finite_or_null(s.name, out, table), ts

    def _cast(self, table: pa.Table, ts: np.ndarray, con) -> pa.Table:
        s = self.stream
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
            con.register("__push", table)
            out = con.sql(f"SELECT {', '.join(items)} FROM __push").to_arrow_table()
        except duckdb.Error as e:
            raise BatchError(f"stream {s.name}: a value does not fit its column type: {_first_line(e)}") from None
        finally:
            try:
                con.unregister("__push")
            except duckdb.Error:
                pass
        self._schema = out.schema
        return out

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


_INTEGER_TEXT = r"^\s*[+-]?[0-9]+\s*$"


def _kind_of(sql_type: str) -> str:
    from fsapp.registry.model import FLOAT_TYPES, INTEGER_TYPES, is_decimal_type
    if sql_type in INTEGER_TYPES:
        return "int"
    if sql_type in FLOAT_TYPES or is_decimal_type(sql_type):
        return "float"
    if sql_type == "BOOLEAN":
        return "bool"
    if sql_type == "VARCHAR":
        return "text"
    return "other"


def _first_row(mask) -> int:
    return int(np.flatnonzero(np.asarray(mask, dtype=bool))[0])


def _check_input(stream: str, name: str, sql_type: str, col: pa.ChunkedArray, mixed: set | None, key: bool) -> None:
    """Refuses values whose cast would change their meaning (see BatchNormaliser)."""
    kind, t = _kind_of(sql_type), col.type
    where = f"stream {stream}: {'entity key' if key else 'column'} {name!r} ({sql_type})"
    if pa.types.is_null(t):
        return
    if mixed:
        if key or "bool" in mixed and kind in ("int", "float") or mixed & {"int", "float"} and kind == "bool":
            raise BatchError(f"{where} mixes value types ({', '.join(sorted(mixed))}); send every value as "
                             f"{_wanted(kind)}")
        t = pa.string()
    is_text = pa.types.is_string(t) or pa.types.is_large_string(t)
    if kind == "text" and pa.types.is_nested(t):  # DuckDB's cast would store {'a': 1} as its text
        raise BatchError(f"{where} takes text; got {t} values (objects and lists are not text: send a string)")
    if key and kind == "text" and not is_text:
        raise BatchError(f"{where} takes text; got {t} values (send e.g. \"m7\", not 7)")
    if kind == "int":
        if pa.types.is_floating(t):
            x = col.to_numpy(zero_copy_only=False)
            bad = ~np.isnan(x) & ((x != np.floor(x)) | ~np.isfinite(x) | (np.abs(x) >= 2.0 ** 63))
            if bad.any():
                i = _first_row(bad)
                raise BatchError(f"{where} takes integers; row {i} holds {float(x[i])!r}")
        elif is_text:
            if key:
                v = col.drop_null()[0].as_py() if col.null_count < len(col) else None
                raise BatchError(f"{where} takes integers, not text (got {v!r}); send the number itself")
            ok = pc.match_substring_regex(col, _INTEGER_TEXT)
            bad = pc.invert(pc.fill_null(ok, True))
            if pc.any(bad).as_py():
                i = _first_row(bad)
                raise BatchError(f"{where} takes integers; row {i} holds {col[i].as_py()!r}")
        elif not pa.types.is_integer(t):
            raise BatchError(f"{where} takes integers; got {t} values")
    elif kind == "float":
        if pa.types.is_boolean(t) or key and not (pa.types.is_integer(t) or pa.types.is_floating(t)):
            raise BatchError(f"{where} takes numbers; got {t} values (true/false are not numbers)")
    elif kind == "bool":
        if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
            raise BatchError(f"{where} takes true or false; got {t} values")
    elif key and kind != "text":
        raise BatchError(f"{where}: entity keys are integers or text")
    elif sql_type.startswith(("TIMESTAMP", "DATE")) and (pa.types.is_integer(t) or pa.types.is_floating(t)):
        # DuckDB's own message said "Unimplemented type for cast (BIGINT -> TIMESTAMP)"
        example = "2026-11-27" if sql_type == "DATE" else "2026-11-27T10:00:00Z"
        raise BatchError(f"{where} takes ISO-8601 text (e.g. {example}); got {t} values (epoch numbers are read "
                         f"in the stream's event-time column only)")


def _wanted(kind: str) -> str:
    return {"int": "an integer", "float": "a number", "bool": "true or false", "text": "text"}.get(kind, "one type")


def _finite_or_null(stream: str, out: pa.Table, raw: pa.Table) -> pa.Table:
    """Float columns: NaN is null (semantics.md §3); an infinite value, or a
    NaN spelled as text ("NaN"), is refused: JSON cannot carry it and no
    reader would see it."""
    for i, f in enumerate(out.schema):
        if not pa.types.is_floating(f.type):
            continue
        col = out.column(i)
        if col.null_count == len(col):
            continue
        inf = pc.fill_null(pc.is_inf(col), False)
        nan = pc.fill_null(pc.is_nan(col), False)
        src = raw.column(f.name).type if f.name in raw.column_names else pa.null()
        from_text = pa.types.is_string(src) or pa.types.is_large_string(src)
        bad = pc.or_(inf, nan) if from_text else inf
        if pc.any(bad).as_py():
            j = _first_row(bad)
            shown = raw.column(f.name)[j].as_py()
            raise BatchError(f"stream {stream}: column {f.name!r}, row {j} holds {shown!r}, which is not a finite "
                             "number; send a finite number, or null for no value")
        if pc.any(nan).as_py():
            out = out.set_column(i, f, pc.if_else(nan, pa.scalar(None, f.type), col))
    return out
