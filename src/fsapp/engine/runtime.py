"""One feature view (one version) running in the engine.

A plain view writes its projected rows into its online table (latest row per
key wins, by event time, then created time). An aggregated view keeps one
`fscore.window.WindowView` per window of its aggregations; the per-key window
state is indexed by the key's row id in the online table (`Table.slots_for`;
tables grow keeping row ids), and after every batch, at every hop boundary of
each of its windows, and when an event that was ahead of the clock becomes
visible (see `tick_start`), it writes the values as of `now` into the table.
Workers then serve both kinds with the same table lookup.

Events ahead of the engine clock (ts >= now, within the stream's max_future)
are held outside the window state and applied once the clock passes them: in
the state they would share a cell (lifetime, a session, a continuous head)
with past events, so no value as of now could be read exactly, and a bucket
far ahead could take a ring slot the current window still needs. Releasing
them before any later event is applied keeps arrival order, so replaying the
log (each record at its own `now`) releases them at the same point.

A batch goes through two steps: `prepare` (everything that can refuse it:
projection, key encodings, value conversions; runs before the batch is
logged) and `apply` (state changes only; a logged batch always applies).
"""
from __future__ import annotations

import functools
import logging
import os
import threading

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fscore.table import NOT_FOUND, OUTSIDE_MAX_AGE, PRESENT, Table
from fscore.window import WindowView, grow_in_room
from fscore.window_spec import WindowSpec, share_views, string_ids

from fsapp.duck import connect
from fsapp.engine.errors import AsOfOutsideHorizon, BatchError
from fsapp.engine.online import count_features
from fsapp.ondemand.compiler import Unsupported, compile_expression, make_env
from fsapp.registry.catalog import FeatureViewInfo, bare_column
from fsapp.registry.model import Stream, read_as_declared

INT64_MIN = np.iinfo(np.int64).min
UNTAGGED = -1  # the lateness part of events pushed without a Kafka partition (REST, SDK)
_NO_ROWS = np.zeros(0, dtype=np.int64)
log = logging.getLogger("fsapp.engine")
SHADOW_BATCHES = 3
ROW = "_fs_row"  # the batch row a projected row came from (stream columns may not start with _fs_)


def unique_ints(*parts: np.ndarray) -> np.ndarray:
    """The sorted distinct values of integer arrays (np.union1d / np.unique).
    PERF: numpy 2's np.unique hashes integers: ~700 µs for a 5,000-row batch
    here against ~50 µs for a sort (twice per view per Kafka batch)."""
    x = np.sort(np.concatenate(parts) if len(parts) > 1 else parts[0])
    if x.size < 2:
        return x
    keep = np.empty(x.size, dtype=bool)
    keep[0] = True
    np.not_equal(x[1:], x[:-1], out=keep[1:])
    return x[keep]


def table_file(data_dir: str, name: str, version: int) -> str:
    return os.path.join(data_dir, "online", f"{name}@v{version}.fst")


def _key_array(col: pa.ChunkedArray, kind: str) -> np.ndarray:
    if kind == "int64":
        return np.asarray(col.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)
    return np.asarray(col.to_pylist(), dtype=object)


def column_for_table(arr: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(values, nulls) for a table column of `kind` from a kernel result:
    NaN means null for floats, and so does an infinity (a sum that overflowed:
    served and in training sets as null, so its status is NULL_VALUE, not
    PRESENT with a null value); a list (last_k) is null when it has no item."""
    if kind == "list":
        a = np.asarray(arr, dtype=np.float64)
        return a, np.isnan(a).all(axis=1) if a.size else np.zeros(len(a), dtype=bool)
    a = np.asarray(arr)
    nulls = ~np.isfinite(a) if a.dtype.kind == "f" else np.zeros(len(a), dtype=bool)
    if kind == "float64":
        return a.astype(np.float64), nulls
    if kind == "int64":
        if a.dtype.kind != "f":
            return a.astype(np.int64), nulls
        # first/last of an integer column are kept as doubles: one at or past 2^63
        # (an input near the top of BIGINT, rounded) saturates instead of wrapping
        big = a >= 2.0 ** 63
        out = np.where(nulls | big, 0, a).astype(np.int64)
        out[big] = np.iinfo(np.int64).max
        return out, nulls
    return np.where(nulls, 0, a).astype(bool), nulls


def _arrow_column(col: pa.ChunkedArray, field, view: str) -> tuple[np.ndarray, np.ndarray]:
    """A plain feature's projected values as the table takes them; refuses
    what the table cannot hold (before the batch is logged)."""
    kind, size = field.kind, field.size
    nulls = np.asarray(col.is_null(), dtype=bool)
    if kind == "string":
        vals = np.asarray(col.to_pylist(), dtype=object)
        for i, v in enumerate(vals):
            if v is not None and len(v.encode("utf-8")) > size:
                raise BatchError(f"feature view {view}: {field.name} of row {i} is {len(v.encode('utf-8'))} UTF-8 "
                                 f"bytes; the online store holds at most {size}")
        return vals, nulls
    if kind in ("vector", "vector64"):
        rows = col.to_pylist()
        out = np.full((len(rows), size), np.nan, dtype=np.float32 if kind == "vector" else np.float64)
        for i, v in enumerate(rows):
            if v is not None:
                if len(v) != size:
                    raise BatchError(f"feature view {view}: {field.name} of row {i} has {len(v)} values where "
                                     f"{size} are declared")
                out[i] = [np.nan if x is None else x for x in v]
        return out, nulls
    if kind == "int64" and (pa.types.is_timestamp(col.type) or pa.types.is_date(col.type)):
        return time_as_us(col), nulls
    if kind == "int64" and (col.type == pa.uint64() or pa.types.is_decimal(col.type)):
        _check_int64(col, field, view)
    # PERF: most columns have no null: no filled copy (benches/bench_serving.py push latency)
    filled = col.fill_null(False if kind == "bool" else 0) if col.null_count else col
    dtype = {"int64": np.int64, "float64": np.float64, "bool": np.bool_}[kind]
    vals = np.asarray(filled.to_numpy(zero_copy_only=False), dtype=dtype)
    if kind == "float64":
        nulls = nulls | ~np.isfinite(vals)  # NaN is null; an expression's inf is served as null too
    return vals, nulls


def _check_int64(col: pa.ChunkedArray, field, view: str) -> None:
    """An integer feature of a type wider than the online store's int64
    (UBIGINT, HUGEINT: `hash(x)` is UBIGINT) refuses a value beyond it: it
    wrapped (13787848793156543929 served as -4658895280553007687, while the
    training set read it as it is)."""
    lo, hi = -(1 << 63), (1 << 63) - 1
    big = pc.or_(pc.greater(col, pa.scalar(hi).cast(col.type)), pc.less(col, pa.scalar(lo).cast(col.type))) \
        if pa.types.is_decimal(col.type) else pc.greater(col, pa.scalar(hi, pa.uint64()))
    at = pc.index(big, True).as_py()
    if at >= 0:
        raise BatchError(f"feature view {view}: {field.name} of row {at} is {col[at].as_py()}, beyond the online "
                         f"store's 64-bit integers ({lo}..{hi}); cast it in the view (::DOUBLE, or ::BIGINT "
                         "where values stay in range)")


_COMPILED_OUT = {"BOOLEAN": pa.bool_(), "TINYINT": pa.int8(), "SMALLINT": pa.int16(), "INTEGER": pa.int32(),
                 "BIGINT": pa.int64(), "DOUBLE": pa.float64(), "VARCHAR": pa.string()}
_COMPILED_IN = {"BOOLEAN", "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "DOUBLE", "VARCHAR"}


@functools.lru_cache(maxsize=512)
def _compiled_or_why(expr: str, types: tuple):
    try:
        return compile_expression(expr, dict(types), checked=True)
    except (Unsupported, ValueError) as e:
        return str(e)  # why not (a new exception each time it is asked)


def _compiled(expr: str, types: tuple):
    """compile_expression(expr, checked=True), once per process for the same
    expression and stream columns (~40 ms each: DuckDB plans it; an engine
    opens, reloads and tests open many engines over the same views)."""
    got = _compiled_or_why(expr, types)
    if isinstance(got, str):
        raise Unsupported(got)
    return got


class CompiledProjection:
    """A view's SELECT items and row filter computed with numpy instead of a
    DuckDB query per batch (PERF: ~4 ms of a 9 ms 5-row push of the starter
    repo, and of every replayed record; benches/bench_push.py). Each
    expression is DuckDB's own bound, optimised plan, compiled
    (fsapp.ondemand.compiler, property-tested against DuckDB), checked: a
    batch on which DuckDB would raise (an integer overflow, a bad cast) gets
    None, and the caller runs DuckDB, which refuses it and says why. Raises
    Unsupported (or ValueError) at build time for anything outside the
    compiled subset; the view then keeps its DuckDB query."""

    def __init__(self, info: FeatureViewInfo, stream: Stream):
        types = {c.name: c.type.upper() for c in stream.columns if c.type.upper() in _COMPILED_IN}
        key = tuple(types.items())
        proj, flt = info.projection_items()
        names = [c.name for c in stream.columns]
        self.items = []  # (output name, stream column or None, compiled expression or None)
        for expr, name in proj:
            src = name if expr is None else bare_column(expr, names)  # a key, the timestamp, a column as is
            if src is not None:
                self.items.append((name, src, None))
                continue
            fn = _compiled(expr, key)
            if fn.output_type not in _COMPILED_OUT:
                raise Unsupported(f"{expr!r} is {fn.output_type}")
            self.items.append((name, None, fn))
        self.filter = _compiled(f"coalesce(({flt}), false)", key) if flt else None
        used = set()
        for fn in [f for _, _, f in self.items if f is not None] + ([self.filter] if self.filter else []):
            used.update(fn.inputs)
        self.types = {c: t for c, t in types.items() if c in used}

    def __call__(self, batch: pa.Table) -> pa.Table | None:
        """The projection of a normalised batch with `_fs_row` (as
        project_views gives it), or None where DuckDB would raise."""
        n = batch.num_rows
        cols = {}
        for c, t in self.types.items():
            col = batch.column(c)
            nulls = np.asarray(col.is_null(), dtype=bool)
            cols[c] = (col.to_numpy(zero_copy_only=False) if t == "VARCHAR" else
                       np.asarray(col.fill_null(False if t == "BOOLEAN" else 0).to_numpy(zero_copy_only=False)), nulls)
        env = make_env(cols, self.types, n, "a feature view's projection")
        with np.errstate(all="ignore"):
            keep = None
            if self.filter is not None:
                v, null, err = self.filter.run_checked(env, n)
                if err.any():
                    return None
                keep = np.flatnonzero(v & ~null)
            out, names = [], []
            for name, src, fn in self.items:
                if fn is None:
                    arr = batch.column(src)
                    if keep is not None:
                        arr = arr.take(keep)
                else:
                    v, null, err = fn.run_checked(env, n)
                    if keep is not None:
                        v, null, err = v[keep], null[keep], err[keep]
                    if err.any():  # DuckDB evaluates an item only on the rows its filter keeps
                        return None
                    arr = pa.array(v, type=_COMPILED_OUT[fn.output_type], mask=null)
                out.append(arr)
                names.append(name)
        rows = batch.column(ROW) if keep is None else batch.column(ROW).take(keep)
        return pa.table([rows] + out, names=[ROW] + names)


_US_PER_UNIT = {"s": 1_000_000, "ms": 1_000, "us": 1}


def time_as_us(col) -> np.ndarray:
    """A DATE or TIMESTAMP (any unit, any zone) column as int64 µs since the
    epoch, 0 for null: how the online store holds and serves every time type
    (training sets give the same, `pit.served_sql`). Nanoseconds are floored."""
    t = col.type
    if pa.types.is_date32(t):
        return np.asarray(col.cast(pa.int32()).fill_null(0), dtype=np.int64) * 86_400_000_000
    raw = np.asarray(col.cast(pa.int64()).fill_null(0), dtype=np.int64)
    if pa.types.is_date64(t):
        return raw * 1_000
    return raw // 1_000 if t.unit == "ns" else raw * _US_PER_UNIT[t.unit]


def decimal_as_double(col) -> np.ndarray:
    """DECIMAL values as the nearest doubles (NaN for null), as DuckDB's
    CAST(x AS DOUBLE) gives them offline. Arrow's cast multiplies by 10^-scale
    and can be an ulp off (12345678901.123 -> 12345678901.123001); a quotient of
    two exact doubles is correctly rounded, which holds for unscaled values
    below 2^53 and scales up to 22; the others go through Python's Decimal."""
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    parts = []
    for arr in chunks:
        n, scale = len(arr), arr.type.scale
        out = np.full(n, np.nan)
        if n == 0:
            parts.append(out)
            continue
        words = arr.type.byte_width // 8
        raw = np.frombuffer(arr.buffers()[1], dtype=np.int64, count=words * (arr.offset + n))
        raw = raw.reshape(-1, words)[arr.offset:]
        lo = raw[:, 0]
        fits = np.all(raw[:, 1:] == (lo >> 63)[:, None], axis=1) & (np.abs(lo) < (1 << 53))
        valid = np.asarray(arr.is_valid(), dtype=bool)
        fast = fits & valid
        if scale <= 22:
            out[fast] = lo[fast].astype(np.float64) / 10.0 ** scale
        else:
            fast[:] = False
        slow = np.flatnonzero(valid & ~fast)
        if slow.size:
            out[slow] = [float(arr[int(i)].as_py()) for i in slow]
        parts.append(out)
    return np.concatenate(parts) if parts else np.zeros(0)


def _input_column(col: pa.ChunkedArray) -> np.ndarray:
    """An aggregation input as the kernels read it: float64, NaN for null;
    text as its fscore.window_spec.string_id (count, approx_count_distinct).
    Integers convert to the nearest double, as DuckDB's CAST(x AS DOUBLE)
    offline does (an id above 2^53 loses its last bits alike on both sides)."""
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return string_ids(col.to_pylist())
    if pa.types.is_boolean(col.type):
        col = col.cast(pa.int8())
    if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
        return np.where(np.asarray(col.is_null(), dtype=bool), np.nan, time_as_us(col).astype(np.float64))
    if pa.types.is_null(col.type):
        return np.full(len(col), np.nan)
    if pa.types.is_decimal(col.type):
        return decimal_as_double(col)
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
        # UUID, BLOB, TIME, INTERVAL, lists, structs, maps (count, approx_count_distinct):
        # their text as DuckDB writes it, as training sets read them (offline.views.text_casts);
        # the cast to float64 below failed every push
        return string_ids(_duck_text(col))
    return np.asarray(col.cast(pa.float64(), safe=False).fill_null(np.nan).to_numpy(zero_copy_only=False),
                      dtype=np.float64)


_TEXT_CON = threading.local()


def _duck_text(col: pa.ChunkedArray) -> list:
    """CAST(x AS VARCHAR) of each value, by DuckDB (this thread's connection)."""
    con = getattr(_TEXT_CON, "con", None)
    if con is None:
        con = _TEXT_CON.con = connect()
    con.register("__fs_text", pa.table({"x": col}))
    try:
        return con.sql("SELECT CAST(x AS VARCHAR) FROM __fs_text").to_arrow_table().column(0).to_pylist()
    finally:
        con.unregister("__fs_text")


def _select_keys(keys, sel: np.ndarray):
    return {k: v[sel] for k, v in keys.items()} if isinstance(keys, dict) else keys[sel]


class ViewBatch:
    """One view's share of a prepared batch: its projected rows (the view's
    filter applied), with the batch row each came from.

    rows: int64, the batch row of each projected row; ts: int64 µs; columns:
    plain views feature -> (values, nulls), aggregated input -> float64 (NaN
    null); encoded: the keys as the table encodes them (Table.encode_keys),
    when known. `keys` (what the table takes: an array, or a dict of arrays)
    may be given as a function that makes them: a batch whose keys were
    encoded from Arrow makes the Python keys only if something asks."""

    __slots__ = ("rows", "_keys", "ts", "columns", "encoded")

    def __init__(self, rows: np.ndarray, keys, ts: np.ndarray, columns: dict, encoded: np.ndarray | None = None):
        self.rows, self._keys, self.ts, self.columns, self.encoded = rows, keys, ts, columns, encoded

    @property
    def keys(self):
        if callable(self._keys):
            self._keys = self._keys()
        return self._keys

    @property
    def key_arg(self):
        """`keys` for a table call given `encoded` too (which then does not
        read them): None rather than keys made only for it."""
        return None if self.encoded is not None and callable(self._keys) else self.keys

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, keep_batch_rows: np.ndarray) -> "ViewBatch":
        """The rows whose batch row is kept (`keep_batch_rows`: bool per batch row)."""
        sel = keep_batch_rows[self.rows]
        if sel.all():
            return self
        make = self._keys
        keys = (lambda: _select_keys(make(), sel)) if callable(make) else _select_keys(make, sel)
        cols = {k: ((v[0][sel], v[1][sel]) if isinstance(v, tuple) else v[sel]) for k, v in self.columns.items()}
        return ViewBatch(self.rows[sel], keys, self.ts[sel], cols,
                         None if self.encoded is None else self.encoded[sel])

    def partition(self, mask: np.ndarray) -> tuple["ViewBatch", "ViewBatch"]:
        """(the rows where `mask` (bool per row of this batch) is set, the others)."""
        keep = np.zeros(int(self.rows.max()) + 1 if self.rows.size else 0, dtype=bool)
        keep[self.rows[mask]] = True
        yes = self.take(keep)
        keep[self.rows] = ~keep[self.rows]
        return yes, self.take(keep)

    def split(self, bounds: np.ndarray) -> list["ViewBatch"]:
        """One ViewBatch per batch-row range [bounds[i], bounds[i + 1]), its
        rows counted from the range's start: the share of each of several
        batches prepared as one (a replay's consecutive records; pushes that
        waited for each other)."""
        r = self.rows
        ordered = r.size < 2 or bool((r[1:] >= r[:-1]).all())
        cuts = np.searchsorted(r, bounds) if ordered else None
        make, made, out = self._keys, [], []

        def whole():  # the keys of all the ranges, made once if a part asks
            if not made:
                made.append(make())
            return made[0]
        for i in range(len(bounds) - 1):
            lo, hi = int(bounds[i]), int(bounds[i + 1])
            sel = slice(int(cuts[i]), int(cuts[i + 1])) if ordered else (r >= lo) & (r < hi)
            keys = (lambda s=sel: _select_keys(whole(), s)) if callable(make) else _select_keys(make, sel)
            cols = {k: ((v[0][sel], v[1][sel]) if isinstance(v, tuple) else v[sel]) for k, v in self.columns.items()}
            out.append(ViewBatch(r[sel] - lo, keys, self.ts[sel], cols,
                                 None if self.encoded is None else self.encoded[sel]))
        return out


class TickScan:
    """What a hop boundary left to find (ViewRuntime.tick_start): the
    windows it moved, between which times, over how many slots (no windows:
    every live row, the first boundary after a start)."""

    __slots__ = ("windows", "t0", "t1", "slots")

    def __init__(self, windows: list, t0: int, t1: int, slots: int):
        self.windows, self.t0, self.t1, self.slots = windows, t0, t1, slots


class ViewRuntime:
    def __init__(self, info: FeatureViewInfo, stream: Stream | None, data_dir: str, capacity: int,
                 table: Table | None = None, windows: list[WindowView] | None = None,
                 max_keys: int | None = None, meta: dict | None = None):
        self.info = info
        self.name, self.version = info.name, info.version
        self.stream = stream
        self.schema = info.online_schema()
        self.kinds = {f.name: f.kind for f in self.schema.columns}
        self.fields = {f.name: f for f in self.schema.columns}
        self.key_names = [k for k, _ in info.keys]
        self.key_kinds = [f.kind for f in self.schema.keys]
        self.sql = info.projection_sql(batch_relation(stream), row_column=ROW)
        # PERF: a projection of bare columns needs no DuckDB query (~5 ms a
        # query with this DuckDB build; benches/bench_serving.py push latency)
        self.bare = info.bare_projection([c.name for c in stream.columns]) if stream is not None else None
        self.compiled = None
        if self.bare is None and stream is not None:
            try:
                self.compiled = CompiledProjection(info, stream)
            except (Unsupported, ValueError) as e:
                log.info("feature view %s: its SELECT runs as a DuckDB query per batch (%s)", info.name, e)
        # batches whose compiled projection is checked against DuckDB's before it is trusted alone
        self.shadow_left = SHADOW_BATCHES
        self.aggregated = info.definition.is_aggregated
        self.ttl = info.definition.ttl
        self.counts = count_features(info)
        path = table_file(data_dir, self.name, self.version)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        max_capacity = max_keys if max_keys is not None else (1 << 31) - 1
        if table is None:
            # published (renamed into place for readers) by the engine once recovery is done
            table = Table(self.schema, capacity=min(capacity, max_capacity), ttl_us=self.ttl, path=path,
                          publish=False, max_capacity=max_capacity)
        else:
            table.set_max_capacity(max(max_capacity, table.capacity) if max_keys is None else max_capacity)
        self.table = table
        self.groups: list[tuple[WindowSpec, list[str]]] = []
        self.windows: list[WindowView] = []
        if self.aggregated:
            # a checkpoint's windows are kept as they were laid out, whichever plan made them
            self.windows = list(windows) if windows else self._new_windows(stream)
            self.groups = [(w.spec, [a.name for a in w.aggs]) for w in self.windows]
        self.hops = [_hop(spec) for spec, _ in self.groups]
        self.epochs = None  # per window group: now // hop when the values were last brought up to date
        self.values_at = INT64_MIN  # that time: every stored value holds as of it (until the next boundary)
        self.latest_now = INT64_MIN  # the newest `now` a value was written at
        # newest applied event time per row (TTL, freshness); derived from the windows after a restore
        self.last_ts = np.full(self.table.capacity, INT64_MIN, dtype=np.int64)
        self._last_ts_room: np.ndarray | None = None  # _fit's buffer last_ts views, with room for more rows
        if windows:
            n = min(self.table.capacity, min(w.n_slots for w in windows))
            for w in windows:
                self.last_ts[:n] = np.maximum(self.last_ts[:n], w.key_last_ts()[:n])
        self.window_dropped = 0  # admitted events a window found late: must stay 0 (see _update)
        # events ahead of the clock, in arrival order, held until it passes them
        held = (meta or {}).get("held") or {}
        self.held_rows = np.asarray(held.get("rows", []), dtype=np.int64)
        self.held_ts = np.asarray(held.get("ts", []), dtype=np.int64)
        self.held_parts = np.asarray(held.get("parts", [UNTAGGED] * self.held_ts.size), dtype=np.int64)
        self.inputs = list(info.input_columns()) if self.aggregated else []
        self.held_cols = {c: np.asarray(held.get("cols", {}).get(c, []), dtype=np.float64) for c in self.inputs}
        # a plain view's rows ahead of the clock (ts > now), with their push's `now`, in arrival
        # order: written when the clock reaches them, as a training set reads a plain view as of
        # t (its latest row with ts <= t); written at once, a read served them early
        self.plain_held: list[tuple[ViewBatch, int]] = [
            self._plain_batch(h) for h in (meta or {}).get("plain_held", [])]

    def _new_windows(self, stream: Stream) -> list[WindowView]:
        """Empty window state for the view over `stream`: windows of one hop
        and size share a view (one cell a bucket, one run a key); the rings
        and session counts cover the stream's allowed lateness."""
        return [WindowView(spec, list(aggs), 0, allowed_lateness=stream.allowed_lateness,
                           max_sessions=max(4, stream.allowed_lateness // max(spec.gap, 1) + 2)
                           if spec.kind == "session" else 4, agg_specs=agg_specs)
                for spec, aggs, agg_specs in share_views(self.info.window_groups())]

    def lateness_changed(self, stream: Stream) -> bool:
        """Whether the window state was laid out for another allowed lateness
        than `stream` has now (a compatible change of the stream keeps the
        view's version): its rings and sessions judge lateness themselves."""
        return self.aggregated and any(w.allowed_lateness != stream.allowed_lateness for w in self.windows)

    def renew_windows(self, stream: Stream) -> None:
        """Empty window state laid out for `stream` (its lateness), every
        held event dropped: the caller rebuilds the keys from the offline
        log (`Engine._backfill`)."""
        self.stream = stream
        self.windows = self._new_windows(stream)
        self.groups = [(w.spec, [a.name for a in w.aggs]) for w in self.windows]
        self.hops = [_hop(spec) for spec, _ in self.groups]
        self.epochs, self.values_at = None, INT64_MIN  # the next tick rewrites every row
        self.last_ts[:] = INT64_MIN
        self._keep_held(np.zeros(self.held_ts.size, dtype=bool))

    # ---- ingest

    def project(self, con: duckdb.DuckDBPyConnection, batch: pa.Table) -> pa.Table:
        """The view's inputs from a normalised batch that carries the `_fs_row`
        column (registered as `__batch` in `con` unless the projection is
        bare columns), with `_fs_row` first."""
        if self.bare is not None:
            gone = [src for src, _ in self.bare if src not in batch.column_names]
            if gone:  # a pinned old version over a column the stream no longer has (was a KeyError: HTTP 500)
                raise BatchError(f"feature view {self.name}@v{self.version} reads column(s) {', '.join(gone)}, which "
                                 f"stream {self.stream.name} no longer has; re-apply the service that pins it")
            return batch.select([ROW] + [src for src, _ in self.bare]).rename_columns(
                [ROW] + [name for _, name in self.bare])
        return con.sql(self.sql).to_arrow_table()

    def keys_of(self, projected: pa.Table):
        cols = [_key_array(projected.column(n), k) for n, k in zip(self.key_names, self.key_kinds)]
        return cols[0] if len(cols) == 1 else dict(zip(self.key_names, cols))

    def _keys_encoded(self, projected: pa.Table):
        """(keys, encoded): the keys as the table takes them and encoded.
        PERF: string key columns are encoded straight from their Arrow
        buffers (Table.encode_key_columns); their Python strings are made
        only if something reads `ViewBatch.keys` (a composite-key filter, a
        group-mode tag, max_keys), not for every batch."""
        cols = [projected.column(n) for n in self.key_names]
        strings = [k != "int64" for k in self.key_kinds]
        if not any(strings) or not all(pa.types.is_string(c.type) or pa.types.is_large_string(c.type)
                                       for c, s in zip(cols, strings) if s):
            keys = self.keys_of(projected)  # (a string key of another type: the table judges each value)
            return keys, self.table.encode_keys(keys)
        cols = [(c.combine_chunks() if c.num_chunks != 1 else c.chunk(0)) if s else _key_array(c, k)
                for c, s, k in zip(cols, strings, self.key_kinds)]
        encoded = self.table.encode_key_columns(cols)

        def make():
            py = [np.asarray(c.to_pylist(), dtype=object) if s else c for c, s in zip(cols, strings)]
            return py[0] if len(py) == 1 else dict(zip(self.key_names, py))
        return make, encoded

    def prepare(self, con, batch: pa.Table, projected: pa.Table | None = None) -> ViewBatch:
        """Projects and converts a batch (with `_fs_row`); raises BatchError /
        KeyEncodingError for anything this view cannot take. No state changes.
        `projected`: the projection already made (see `project_views`)."""
        if projected is not None:
            p = projected
        else:
            try:
                p = self.project(con, batch)
            except duckdb.Error as e:
                raise BatchError(f"feature view {self.name}: its SELECT fails on this batch: "
                                 f"{str(e).strip().splitlines()[0]}") from None
        for k in self.key_names:
            col = p.column(k)
            if col.null_count:
                raise BatchError(f"feature view {self.name} is keyed by {k!r}, which is null in "
                                 f"{col.null_count} row(s); give every row its {k}")
        keys, encoded = self._keys_encoded(p)  # checked, and apply does not encode them again
        rows = np.asarray(p.column(ROW).to_numpy(zero_copy_only=False), dtype=np.int64)
        ts = np.asarray(p.column(self.info.timestamp).cast(pa.int64()).to_numpy(zero_copy_only=False),
                        dtype=np.int64)
        if self.aggregated:
            cols = {c: _input_column(p.column(c)) for c in self.inputs}
        else:
            cols = {f.name: _arrow_column(p.column(f.name), f, self.name) for f in self.schema.columns}
        return ViewBatch(rows, keys, ts, cols, encoded)

    def distinct_keys(self, vb: ViewBatch) -> int:
        if isinstance(vb.keys, dict):
            return len(set(zip(*[v.tolist() for v in vb.keys.values()])))
        return len(unique_ints(vb.keys)) if vb.keys.dtype != object else len(set(vb.keys.tolist()))

    def apply(self, vb: ViewBatch, now: int, parts: np.ndarray | None = None, deferred: list | None = None) -> int:
        """Applies one prepared batch (events in arrival order, none late);
        events ahead of `now` are held (see the module docstring). `parts`:
        the Kafka partition of each of vb's rows (UNTAGGED for a push without):
        the windows judge lateness per partition, as the engine did.
        `deferred` (a list): the rows touched, `now` and the rows made for
        new keys are appended to it instead of their values being written;
        `write_deferred` writes them (a replay's run of records, or records
        drained together: each row once, as of the last record that touched
        it)."""
        n = len(vb)
        if not self.aggregated:
            if self.plain_held:
                self._release_plain(now)
            if n == 0:
                return 0
            ahead = vb.ts > now
            if ahead.any():
                held, vb = vb.partition(ahead)
                self.plain_held.append((held, now))
                if not len(vb):
                    return 0
            return self._put_plain(vb, now, now)
        self.latest_now = max(self.latest_now, now)
        released = self._release(now)
        made = _NO_ROWS
        if n == 0:
            touched = released
        else:
            rows, made = self._rows_for(vb, now)
            self._fit(int(rows.max()) + 1)
            if made.size:
                self.reset_rows(made)
            self._update(rows, vb.ts, vb.columns, now, parts)
            touched = unique_ints(released, rows)
        if deferred is None:
            self.write_values(touched, now)
            self._show(made)
        elif touched.size:
            deferred.append((touched, now, made))
        return n

    def apply_run(self, vb: ViewBatch, now: np.ndarray, latest: int, parts: np.ndarray, deferred: list) -> int:
        """Applies the rows of several consecutive records as one batch (a
        replay's run, Engine._replay_run): `now` per row, its record's;
        `latest` the newest `now` of the records; `parts` each row's
        partition (as `apply` takes them). The caller has checked
        that nothing is held and that no row is at or after its record's
        now: then `apply` record by record holds and releases nothing, and
        its window updates are these, in one call per window. The rows go
        into `deferred` with their records' now (write_deferred writes each
        as of the last record touching it)."""
        self.latest_now = max(self.latest_now, latest)
        if len(vb) == 0:
            return 0
        rows, made = self._rows_for(vb, int(now[-1]))  # made rows' times: written by write_deferred
        self._fit(int(rows.max()) + 1)
        if made.size:
            self.reset_rows(made)
        self._update(rows, vb.ts, vb.columns, latest, parts)  # none at or after `latest`: nothing held
        deferred.append((rows, now, made))
        return len(vb)

    def _rows_for(self, vb: ViewBatch, now: int) -> tuple[np.ndarray, np.ndarray]:
        """(the table rows of vb's keys, the rows made for new keys). New
        rows are made hidden: readers in other processes (fstore serve's
        workers read the shared table without the engine lock) answer
        NOT_FOUND for them until the caller has written their values and
        shows them (`_show`), never a key with every value null."""
        hidden = self.table.insert_hidden
        self.table.insert_hidden = True
        try:
            rows, fresh = self.table.slots_for(vb.key_arg, now=now, encoded=vb.encoded)
        finally:
            self.table.insert_hidden = hidden
        return rows, (rows[fresh] if fresh.any() else _NO_ROWS)

    def _show(self, made: np.ndarray) -> None:
        """Shows the rows `_rows_for` made, their values written; not while
        the table makes rows hidden anyway (a group-mode rebuild of their
        partition shows them when it is done)."""
        if made.size and not self.table.insert_hidden:
            self.table.show_rows(made)

    def write_deferred(self, deferred: list) -> None:
        """Writes the values of the rows `apply(..., deferred=)` (and
        `apply_run`) collected, each as of the `now` of the last record that
        touched it, and shows the rows those applies made. Its window state
        has not changed since (only events of a key change it), so the
        values are those that apply would have written."""
        if not deferred:
            return
        rows = np.concatenate([r for r, _, _ in deferred])
        nows = np.concatenate([np.broadcast_to(np.asarray(now, dtype=np.int64), r.shape) for r, now, _ in deferred])
        made = np.concatenate([m for _, _, m in deferred])
        deferred.clear()
        last = rows.size - 1 - np.unique(rows[::-1], return_index=True)[1]  # each row's last touch
        self.write_values(rows[last], nows[last])
        self._show(made)

    def _update(self, rows: np.ndarray, ts: np.ndarray, columns: dict, now: int,
                parts: np.ndarray | None = None) -> None:
        """Events into the window state, those at or after `now` held instead."""
        parts = np.full(rows.size, UNTAGGED, dtype=np.int64) if parts is None else parts
        ahead = ts >= now
        if ahead.any():
            self.held_rows = np.concatenate([self.held_rows, rows[ahead]])
            self.held_ts = np.concatenate([self.held_ts, ts[ahead]])
            self.held_parts = np.concatenate([self.held_parts, parts[ahead]])
            for c in self.held_cols:
                self.held_cols[c] = np.concatenate([self.held_cols[c], columns[c][ahead]])
            keep = ~ahead
            rows, ts, parts = rows[keep], ts[keep], parts[keep]
            columns = {c: v[keep] for c, v in columns.items()}
        if rows.size:
            for w in self.windows:
                late = w.update(rows, ts, {c: columns[c] for c in w.columns}, parts=parts)
                if late.any():
                    n = int(late.sum())
                    self.window_dropped += n
                    if (parts[late] != UNTAGGED).any():
                        # judged per partition, a key whose events come from several
                        # partitions can get one older than its window state holds
                        log.warning("feature view %s: a %s window dropped %d event(s) older than the key's "
                                    "state holds (a key with events from several Kafka partitions: the topic "
                                    "is not keyed by this view's key)", self.name, w.spec.kind, n)
                    else:
                        # the engine admitted them; a window that judges otherwise
                        # drops accepted events: a bug, made loud
                        log.error("feature view %s: a %s window dropped %d admitted event(s) as late "
                                  "(the engine's lateness rule and the window's disagree)", self.name,
                                  w.spec.kind, n)
            np.maximum.at(self.last_ts, rows, ts)

    def _release(self, now: int) -> np.ndarray:
        """Applies held events the clock has passed (ts < now), in event-time
        order (arrival order among equal times); returns the rows they touched.

        Their lateness was judged at their push. In time order the window
        state never judges them again: a held event is at or after every
        event applied before its release (those had ts below the clock while
        it was held, or were released earlier, below an earlier clock). In
        arrival order it could: a materialize re-holds a rebuilt key's events
        after other keys' (issue 15's online=offline property found an event
        at 4 s released after one at 21 s, and dropped as late)."""
        if not self.held_ts.size:
            return np.zeros(0, dtype=np.int64)
        due = self.held_ts < now
        if not due.any():
            return np.zeros(0, dtype=np.int64)
        idx = np.flatnonzero(due)
        idx = idx[np.argsort(self.held_ts[idx], kind="stable")]
        rows, ts, parts = self.held_rows[idx], self.held_ts[idx], self.held_parts[idx]
        cols = {c: v[idx] for c, v in self.held_cols.items()}
        self._keep_held(~due)
        self._update(rows, ts, cols, now, parts)
        return unique_ints(rows)

    def _put_plain(self, vb: ViewBatch, created: int, now: int) -> int:
        values = {k: v[0] for k, v in vb.columns.items()}
        nulls = {k: v[1] for k, v in vb.columns.items()}
        return self.table.put_batch(vb.key_arg, values, vb.ts, np.full(len(vb), created, dtype=np.int64), now=now,
                                    nulls=nulls, encoded=vb.encoded)

    def _release_plain(self, now: int) -> int:
        """Writes the held plain rows the clock has reached (ts <= now), in
        arrival order, each with its push's `now` as its created time (the
        table's tie-break, as if written then); returns how many."""
        written, kept = 0, []
        for vb, created in self.plain_held:
            due = vb.ts <= now
            if not due.any():
                kept.append((vb, created))
                continue
            due, later = vb.partition(due)
            written += self._put_plain(due, created, now)
            if len(later):
                kept.append((later, created))
        self.plain_held = kept
        return written

    def _plain_batch(self, saved: dict) -> tuple[ViewBatch, int]:
        """A held plain piece from a checkpoint's meta (`checkpoint_meta`)."""
        ts = np.asarray(saved["ts"], dtype=np.int64)
        keys = {k: np.asarray(v, dtype=np.int64 if kind == "int64" else object)
                for (k, v), kind in zip(saved["keys"].items(), self.key_kinds)}
        cols = {}
        for name, (vals, nulls) in saved["cols"].items():
            kind = self.kinds[name]
            dtype = {"int64": np.int64, "float64": np.float64, "bool": np.bool_, "string": object,
                     "vector": np.float32}.get(kind, np.float64)
            cols[name] = (np.asarray(vals, dtype=dtype), np.asarray(nulls, dtype=bool))
        return ViewBatch(np.arange(ts.size, dtype=np.int64), keys if len(keys) > 1 else next(iter(keys.values())),
                         ts, cols), int(saved["now"])

    def _keep_held(self, keep: np.ndarray) -> None:
        """Keeps the held events where `keep` (bool per held event) is set, in
        each of their parallel arrays."""
        self.held_rows, self.held_ts, self.held_parts = self.held_rows[keep], self.held_ts[keep], self.held_parts[keep]
        self.held_cols = {c: v[keep] for c, v in self.held_cols.items()}

    def _fit(self, high: int) -> None:
        """Window state and last_ts cover row ids below `high` (tables grow)."""
        for w in self.windows:
            if w.n_slots < high:
                # by a quarter (amortised O(1) still), never past the table's
                # capacity: doubling held up to twice the per-key arrays needed
                w.grow(max(high, min(self.table.capacity, w.n_slots + w.n_slots // 4)))
        want = max(high, self.table.capacity)
        if self.last_ts.size < want:  # into room for twice the rows, as the windows' per-key arrays
            self.last_ts, self._last_ts_room = grow_in_room(self.last_ts, self._last_ts_room, want, INT64_MIN)

    def state_to_grow(self) -> list:
        """The view's per-key state to grow ahead of need, after its table
        (Engine.grow_tables): callables that each grow one part, for the
        engine to run one lock hold each — each window whose slots the
        table's keys nearly fill (9/10), by a quarter as `_fit` would (never
        past the table's capacity), and last_ts to the table's capacity.
        Else the push whose new key first takes a row past a window's slots
        grows them all (~16 ms at 1M keys, 6 windows)."""
        cap, used = self.table.capacity, len(self.table)
        parts = [(lambda w=w: w.grow(min(cap, max(used + 1, w.n_slots + w.n_slots // 4))))
                 for w in self.windows if w.n_slots < cap and used >= 0.9 * w.n_slots]
        if self.last_ts.size < cap:
            parts.append(lambda: self._fit(0))
        return parts

    def table_to_grow(self, free_share: float) -> bool:
        """Whether Engine.grow_tables grows this view's table now: less than
        `free_share` of its rows free, and below its max_capacity."""
        t = self.table
        return t.capacity < t.max_capacity and t.capacity - len(t) < free_share * t.capacity

    def needs_growth_ahead(self, free_share: float) -> bool:
        """Whether Engine.grow_tables would grow something of this view now:
        its table or its per-key state (state_to_grow)."""
        return self.table_to_grow(free_share) or bool(self.state_to_grow())

    def reset_rows(self, rows: np.ndarray) -> None:
        """Forgets everything about these rows (a new key, or a key rebuilt)."""
        for w in self.windows:
            w.reset_slots(rows)
        self.last_ts[rows] = INT64_MIN
        if self.held_rows.size:
            self._keep_held(~np.isin(self.held_rows, rows))

    def write_values(self, rows: np.ndarray, now) -> None:
        """Writes the window values as of `now` (one time, or one per row) of
        these rows into the table."""
        if rows.size == 0:
            return
        now = np.broadcast_to(np.asarray(now, dtype=np.int64), rows.shape)
        values, nulls = {}, {}
        for (spec, names), w in zip(self.groups, self.windows):
            vals, _exact = w.value_as_of(rows, now)
            for name in names:
                values[name], nulls[name] = column_for_table(vals[name], self.kinds[name])
        # event_ts of a computed row: the key's newest event (what TTL and freshness are measured against)
        last = self.last_ts[rows]
        self.table.put_rows(rows, values, np.where(last == INT64_MIN, now, last),
                            np.ascontiguousarray(now), nulls=nulls)

    def tick_start(self, now: int) -> tuple[np.ndarray, "TickScan | None"]:
        """Time-driven updates, first part: applies the held events the
        clock has passed (their keys' values move) and returns the rows they
        touched, with what a hop boundary left to find (None: none crossed).
        When `now` crosses a hop boundary of a window, the keys whose value
        that window moves are those with an event in a bucket that left it or
        entered it since the last boundary handled (`WindowView.changed_slots`),
        not every key; the first boundary after a start moves every key.
        `tick_scan` finds them a slot range at a time, so a caller may release
        the engine lock in between (at a million keys the whole scan took
        ~200 ms); the caller rewrites the rows as of `now` (`write_values`,
        in chunks). Plain views with a TTL drop expired rows (they read
        OUTSIDE_MAX_AGE already; this frees their memory)."""
        empty = np.zeros(0, dtype=np.int64)
        if not self.aggregated:
            if self.plain_held:
                self._release_plain(now)
            if self.ttl:
                self.table.expire(now)
            return empty, None
        self.latest_now = max(self.latest_now, now)
        released = self._release(now)
        epochs = tuple(now // h if h else 0 for h in self.hops)
        if epochs == self.epochs:
            return released, None
        if self.epochs is None or now < self.values_at:
            scan = TickScan([], 0, now, int(self.table.capacity))  # every live row
        else:
            scan = TickScan([w for w, h, e0, e1 in zip(self.windows, self.hops, self.epochs, epochs) if h and e0 != e1],
                            self.values_at, now, max((w.n_slots for w in self.windows), default=0))
        self.epochs, self.values_at = epochs, now
        return released, scan

    def tick_scan(self, scan: "TickScan", start: int, stop: int) -> np.ndarray:
        """The rows in [start, stop) whose values the boundary moved."""
        stop = min(stop, scan.slots)
        if start >= stop:
            return np.zeros(0, dtype=np.int64)
        if not scan.windows:
            live = self.table.rows_live(np.arange(start, min(stop, self.table.capacity), dtype=np.int64))
            return np.flatnonzero(live).astype(np.int64) + start
        mark = np.zeros(stop - start, dtype=bool)
        for w in scan.windows:  # PERF: a mask, not np.unique (a sort)
            mark[w.changed_slots(scan.t0, scan.t1, start, stop) - start] = True
        return np.flatnonzero(mark).astype(np.int64) + start

    def next_change(self, now: int) -> int | None:
        """The earliest time after `now` at which `tick_start` has work: the next hop
        boundary of a window, or just after the next held event's time."""
        if not self.aggregated:  # a held plain row is written once the clock reaches its time
            return max(now + 1, min(int(vb.ts.min()) for vb, _ in self.plain_held)) if self.plain_held else None
        times = [(now // h + 1) * h for h in self.hops if h]
        if self.held_ts.size:
            times.append(int(self.held_ts.min()) + 1)
        return min(times) if times else None

    def rebuild(self, vb: ViewBatch, now: int) -> int:
        """Replaces the window state of the keys in `vb` by the state its
        events give (materialize: the offline log's events, late ones
        included, in (ts, seq) order), then writes their values as of `now`.
        Returns how many keys were rebuilt."""
        if len(vb) == 0:
            return 0
        rows, made = self._rows_for(vb, now)
        self._fit(int(rows.max()) + 1)
        distinct, dense = np.unique(rows, return_inverse=True)
        self.reset_rows(distinct)  # drops their held events too: the log has them
        released = self._release(now)  # other keys' held events keep their place before these
        past = vb.ts < now
        for w in self.windows:
            # a fresh view fed in time order never finds an event late: older
            # buckets fall out of the ring exactly as they would have online
            tmp = w.empty_like(distinct.size)
            tmp.update(dense[past].astype(np.int64), vb.ts[past], {c: vb.columns[c][past] for c in w.columns})
            w.import_slots(distinct, tmp.export_slots(np.arange(distinct.size)))
        np.maximum.at(self.last_ts, rows[past], vb.ts[past])
        if not past.all():
            self._update(rows[~past], vb.ts[~past], {c: v[~past] for c, v in vb.columns.items()}, now)
        self.write_values(unique_ints(distinct, released), now)
        self._show(made)
        return int(distinct.size)

    # ---- reads

    def read_as_of(self, keys, t: int):
        """Values as of `t` recomputed from the retained window state:
        (values, nulls, status, event_ts). Raises AsOfOutsideHorizon where the
        state cannot answer exactly (see docs/semantics.md §6)."""
        rows = self.table.find_rows(keys)
        found = rows >= 0
        if found.any():  # a hidden row (a Kafka partition being rebuilt) is not found, as by a reader
            found[found] = self.table.rows_visible(rows[found])
            rows = np.where(found, rows, -1)
        safe = np.where(found, rows, 0)
        self._fit(1)  # row 0 may be read for a key that is not there (its values are masked below)
        if self.held_before(rows[found], t):
            raise AsOfOutsideHorizon(f"feature view {self.name}: as_of is ahead of the engine clock, past events "
                                     "it has not applied yet; ask again once the clock has passed that time")
        n = rows.size
        status = np.where(found, PRESENT, NOT_FOUND).astype(np.uint8)
        values, nulls = {}, {}
        for (spec, names), w in zip(self.groups, self.windows):
            vals, exact = w.value_as_of(safe, t)
            if (found & ~exact).any():
                raise AsOfOutsideHorizon(
                    f"feature view {self.name}: as_of is before what the online window state retains for "
                    f"{int((found & ~exact).sum())} key(s); ask /api/v1/features/historical for that time")
            for name in names:
                values[name], nulls[name] = column_for_table(vals[name], self.kinds[name])
        newest = self.newest_before(safe, t)
        present = found & (newest != INT64_MIN)
        if self.ttl:
            status = np.where(present & (newest < t - self.ttl), OUTSIDE_MAX_AGE, status).astype(np.uint8)
        for name in values:
            gone = status != PRESENT
            if name in self.counts:  # an empty (or expired) window counts 0
                values[name] = np.where(gone, 0, values[name])
                nulls[name] = np.zeros(n, dtype=bool)
            else:
                nulls[name] = nulls[name] | gone
        return values, nulls, status, np.where(found & (newest != INT64_MIN), newest, 0)

    def newest_before(self, rows: np.ndarray, t: int) -> np.ndarray:
        """The key's newest applied event with ts < t, per row (INT64_MIN for
        none), from the window cells; raises AsOfOutsideHorizon where a TTL
        decision would need an event time that a cell does not pin down."""
        newest = np.full(rows.size, INT64_MIN, dtype=np.int64)
        unknown = np.zeros(rows.size, dtype=bool)
        for w in self.windows:
            got, spans = w.newest_before(rows, t)
            newest = np.maximum(newest, got)
            unknown |= spans
        if self.ttl and (unknown & (newest < t - self.ttl)).any():
            raise AsOfOutsideHorizon(f"feature view {self.name}: whether a key is within its TTL as of that time "
                                     "is not retained online; ask /api/v1/features/historical for that time")
        return newest

    def checkpoint_meta(self) -> dict:
        if self.plain_held:
            return {"plain_held": [self._plain_saved(vb, created) for vb, created in self.plain_held]}
        if not self.held_ts.size:
            return {}
        return {"held": {"rows": self.held_rows.tolist(), "ts": self.held_ts.tolist(),
                         "parts": self.held_parts.tolist(),
                         "cols": {c: v.tolist() for c, v in self.held_cols.items()}}}

    def _plain_saved(self, vb: ViewBatch, created: int) -> dict:
        keys = vb.keys
        keys = keys if isinstance(keys, dict) else {self.key_names[0]: keys}
        return {"now": int(created), "ts": vb.ts.tolist(),
                "keys": {k: np.asarray(v).tolist() for k, v in keys.items()},
                "cols": {c: [np.where(nulls, 0, vals).tolist() if vals.dtype.kind == "f" and vals.ndim == 1
                             else vals.tolist(), nulls.tolist()] for c, (vals, nulls) in vb.columns.items()}}

    def held_before(self, rows: np.ndarray, t: int) -> bool:
        """Whether an event of these rows with ts < t is still held (the window
        state cannot answer as of t for them yet)."""
        return bool(self.held_ts.size and (np.isin(self.held_rows, rows) & (self.held_ts < t)).any())


def project_views(con, runtimes: list) -> dict:
    """The projections of several views of one stream over one batch (with
    `_fs_row`, registered as `__batch` in `con`) in ONE DuckDB query: each
    view's items, and its filter as a flag, side by side; each view then
    keeps its flagged rows. An item is computed only where its view's filter
    holds (CASE), as the view's own `SELECT ... WHERE` would.
    PERF: a DuckDB query costs ~1.5 ms with this build whatever its width;
    the starter repo's two views cost two (benches/bench_push.py).
    Returns {runtime: projected table}."""
    flags, items, plan = [], [_qi(ROW)], []
    for i, rt in enumerate(runtimes):
        proj, flt = rt.info.projection_items()
        keep = f"__v{i}_keep" if flt else None
        if keep:
            flags.append(f"coalesce(({flt}), false) AS {_qi(keep)}")
            items.append(_qi(keep))
        names = []
        for j, (expr, name) in enumerate(proj):
            alias = f"__v{i}_{j}"
            value = _qi(name) if expr is None else f"({expr})"
            if keep and expr is not None:
                value = f"CASE WHEN {_qi(keep)} THEN {value} END"
            items.append(f"{value} AS {_qi(alias)}")
            names.append((alias, name))
        plan.append((rt, keep, names))
    batch = batch_relation(runtimes[0].stream) if runtimes else "__batch"
    source = f"(SELECT *, {', '.join(flags)} FROM {batch})" if flags else batch
    out = con.sql(f"SELECT {', '.join(items)} FROM {source} AS __b").to_arrow_table()
    result = {}
    for rt, keep, names in plan:
        t = out.filter(out.column(keep)) if keep else out
        result[rt] = t.select([ROW] + [a for a, _ in names]).rename_columns([ROW] + [n for _, n in names])
    return result


def _qi(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def batch_relation(stream: Stream | None) -> str:
    """The normalised batch (`__batch`) as views read it: columns it holds in
    another form (UUID and JSON as text, HUGEINT as DECIMAL(38,0):
    `read_as_declared`) cast back to their declared types, as the offline
    store reads its log (before, `c // 5` of a HUGEINT was 2.4 in both, and
    served as 2 by the feature's declared BIGINT; `uuid_extract_version(u)`
    failed every push)."""
    cols = [c for c in stream.columns if read_as_declared(c.type)] if stream is not None else []
    if not cols:
        return "__batch"
    casts = ", ".join(f"CAST({_qi(c.name)} AS {c.type}) AS {_qi(c.name)}" for c in cols)
    return f"(SELECT * REPLACE ({casts}) FROM __batch)"


def _hop(spec: WindowSpec) -> int:
    """How often a window's value moves with time alone (0: only with events)."""
    if spec.kind == "sliding" or spec.kind == "continuous":
        return spec.hop
    if spec.kind == "tumbling":
        return spec.size
    return 0
