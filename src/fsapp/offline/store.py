"""`OfflineStore`: the event log, registered batch sources, the views the
offline store knows, and the DuckDB connection that runs `pit.py`'s SQL."""
from __future__ import annotations

import os
import threading
from collections.abc import Callable

import duckdb

from fsapp import duck
from fsapp.errors import SourceError, UnknownFeatureError
from fsapp.offline import pit
from fsapp.offline.eventlog import CREATED_TS, EVENT_TS, SEQ, EventLog
from fsapp.offline.views import SourceDef, ViewDef, quote_ident

_INT_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "HUGEINT"}
_FLOAT_TYPES = {"FLOAT", "DOUBLE", "REAL"}


def sql_string(s: str) -> str:
    return "'" + str(s).replace("'", "''") + "'"


def time_us_sql(col: str, sql_type: str, what: str, *, float_epochs: bool = False) -> str:
    """SQL turning a column of `sql_type` into int64 µs since the epoch UTC.
    Integers are µs. With `float_epochs` (batch source files, often written
    from `time.time()`), floats are epoch numbers whose magnitude gives the
    unit (|x| < 1e11 seconds, < 1e14 ms, else µs), the rule of pushes and the
    REST API; otherwise (an entity_df) they are refused as ambiguous."""
    t = sql_type.upper()
    if t in _INT_TYPES:
        return f"CAST({col} AS BIGINT)"
    if t in _FLOAT_TYPES and float_epochs:
        x = f"CAST({col} AS DOUBLE)"
        return (f"CAST(round(CASE WHEN abs({x}) < 1e11 THEN {x} * 1e6 WHEN abs({x}) < 1e14 THEN {x} * 1e3 "
                f"ELSE {x} END) AS BIGINT)")
    if t.startswith("TIMESTAMPTZ_NS") or (t.startswith("TIMESTAMP_NS") and "TIME ZONE" in t):
        # DuckDB has no epoch_us(TIMESTAMPTZ_NS) (pandas' datetime64[ns, UTC],
        # e.g. Feast's driver_stats): floor the nanoseconds to µs.
        return f"((epoch_ns({col}) - ((epoch_ns({col}) % 1000 + 1000) % 1000)) // 1000)"
    if t.startswith("TIMESTAMP") or t == "DATE":
        return f"epoch_us({col})" if t != "DATE" else f"epoch_us(CAST({col} AS TIMESTAMP))"
    if t == "VARCHAR":
        return f"epoch_us(CAST({col} AS TIMESTAMPTZ))"
    raise SourceError(f"{what} has type {sql_type}; use a timestamp or int64 µs since the epoch"
                      + (" or a float epoch" if float_epochs else ""))


def _recast(declared: str) -> bool:
    """Whether a column declared `declared` and logged as another type is read
    as the declared one: numbers, booleans, text and times, the types a
    stream column changes between, and those the log holds in a form of
    their own (UUID and JSON as VARCHAR, HUGEINT as DECIMAL(38,0):
    `read_as_declared`, which the online projections cast back too). Others
    (TIMESTAMP_S as TIMESTAMP) are read as logged, online too."""
    from fsapp.registry.model import FLOAT_TYPES, INTEGER_TYPES, is_decimal_type, read_as_declared
    return (declared in INTEGER_TYPES or declared in FLOAT_TYPES or is_decimal_type(declared)
            or read_as_declared(declared) or declared in ("BOOLEAN", "VARCHAR", "TIMESTAMP", "DATE", "TIMESTAMP WITH TIME ZONE"))


class OfflineStore:
    """Offline side of one fstore repo, rooted at `root`.

    - `log`: the Parquet event log of every stream (`<root>/events/...`).
    - `register_source(name, path, ...)`: a Parquet/CSV batch source.
    - `add_view(ViewDef)`: views that `get_historical_features` and
      `materialize` can name.
    DuckDB runs in-process; spills go to `<root>/tmp`. One connection per
    store, one cursor per call, so calls from several threads are safe."""

    def __init__(self, root: str, *, views=(), memory_limit: str | None = None, threads: int | None = None,
                 flush_rows: int = 100_000):
        self.root = os.path.abspath(root)
        os.makedirs(self.root, exist_ok=True)
        self.log = EventLog(os.path.join(self.root, "events"), flush_rows=flush_rows)
        self.views: dict[str, ViewDef] = {}
        # (name, version) → ViewDef of any registered version (a feature service may pin
        # an older one): set by the engine, which reads the registry
        self.view_version: Callable[[str, int], ViewDef] | None = None
        self._sources: dict[str, SourceDef] = {}
        self._unreadable: dict[str, str] = {}  # batch source -> why its last registration failed
        self._stream_columns: dict[str, list[tuple[str, str]]] = {}
        # stream -> ((file count, last file), {column: type} its log files hold): files are only added
        self._log_columns: dict[str, tuple[tuple[int, str], dict]] = {}
        self._lock = threading.Lock()
        self.con = duck.connect()  # UTC, its cursors too
        self.con.execute(f"SET temp_directory = {sql_string(os.path.join(self.root, 'tmp'))}")
        if memory_limit:
            self.con.execute(f"SET memory_limit = {sql_string(memory_limit)}")
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        for v in views:
            self.add_view(v)

    # ---- definitions

    def add_view(self, view: ViewDef) -> None:
        self.views[view.name] = view

    def view(self, name: str, version: int | None = None) -> ViewDef:
        """A view by name: its latest version, or `version` (through
        `view_version`, which reads the registry)."""
        if version is not None and self.view_version is not None:
            return self.view_version(name, version)
        try:
            v = self.views[name]
        except KeyError:
            known = ", ".join(sorted(self.views)) or "none"
            raise UnknownFeatureError(f"unknown feature view {name!r}; known views: {known}") from None
        if version is not None:
            raise UnknownFeatureError(f"feature view {name}@v{version}: this offline store has no registry to read "
                                      f"versions from; name the latest version ({name}:feature)")
        return v

    def register_source(self, name: str, path: str, *, timestamp: str, created_timestamp: str | None = None,
                        format: str | None = None) -> SourceDef:
        """A batch source read from Parquet or CSV file(s) (`path` may be a
        glob). Equal-timestamp ties without a created column are broken by the
        row's position within its file. A source that cannot be read raises
        SourceError and is remembered as such (`source_problem`) until a later
        registration succeeds."""
        try:
            src = self._register_source(name, path, timestamp, created_timestamp, format)
        except SourceError as e:
            self._sources.pop(name, None)  # reads follow the latest registration
            self._unreadable[name] = str(e)
            raise
        self._unreadable.pop(name, None)
        return src

    def _register_source(self, name, path, timestamp, created_timestamp, format) -> SourceDef:
        fmt = (format or ("csv" if str(path).lower().endswith((".csv", ".csv.gz")) else "parquet")).lower()
        if fmt == "parquet":
            rel = f"read_parquet({sql_string(path)}, union_by_name = true, file_row_number = true)"
            seq = "file_row_number"
        elif fmt == "csv":
            rel = f"read_csv({sql_string(path)}, header = true)"
            seq = "0"
        else:
            raise SourceError(f"source {name}: format {format!r} is not parquet or csv")
        with self._lock:  # a cursor of its own: registrations run in several threads (historical, materialize)
            cur = self.con.cursor()
        try:
            types = dict((r[0], r[1]) for r in cur.execute(f"DESCRIBE SELECT * FROM {rel}").fetchall())
        except duckdb.Error as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__  # not DuckDB's SQL echo
            raise SourceError(f"source {name}: cannot read {path!r}: {first}") from None
        finally:
            cur.close()
        for col in (timestamp, created_timestamp):
            if col is not None and col not in types:
                raise SourceError(f"source {name}: column {col!r} not in {path!r} (columns: {', '.join(types)})")
        ts = time_us_sql(quote_ident(timestamp), types[timestamp], f"source {name}: column {timestamp!r}",
                         float_epochs=True)
        cr = "0" if created_timestamp is None else time_us_sql(
            quote_ident(created_timestamp), types[created_timestamp], f"source {name}: column {created_timestamp!r}",
            float_epochs=True)
        src = SourceDef(name, rel, ts, cr, seq, tuple(c for c in types if c != "file_row_number"))
        self._sources[name] = src
        return src

    def source_problem(self, name: str) -> str | None:
        """Why batch source `name` cannot be read (its last `register_source`
        failed: a missing file, a bad timestamp column), or None."""
        return self._unreadable.get(name)

    def source(self, name: str, view: ViewDef | None = None) -> SourceDef:
        """A registered batch source, else the event-log stream of that name."""
        if name in self._sources:
            return self._sources[name]
        files = self.log.files(name)
        if files:
            rel = f"read_parquet({sql_string(self.log.glob(name))}, union_by_name = true, hive_partitioning = false)"
            rel = self._as_declared(name, files, rel)
            return SourceDef(name, rel, quote_ident(EVENT_TS), quote_ident(CREATED_TS), quote_ident(SEQ))
        if view is None:
            raise SourceError(f"no batch source or stream with events named {name!r}")
        return self._empty_source(name, view)

    def _as_declared(self, name: str, files: list[str], rel: str) -> str:
        """The stream's log read with its declared columns: one added after
        events were logged is null in them (a view reading it failed with
        DuckDB's 'Referenced column not found' until an event holding it was
        flushed), and one whose type changed (`apply --allow-incompatible`) is
        read as its declared type, a value that does not cast being null (old
        text 'a' in a column now BIGINT failed every training set over it with
        a conversion error, and windows summed text as their hashes). Which
        columns and types the files hold is read once per new file."""
        declared = self._stream_columns.get(name)
        if not declared:
            return rel
        key = (len(files), files[-1])
        known = self._log_columns.get(name)
        if known is None or known[0] != key:
            with self._lock:
                cur = self.con.cursor()
            try:
                logged = {r[0]: r[1] for r in cur.execute(f"DESCRIBE SELECT * FROM {rel}").fetchall()}
            finally:
                cur.close()
            known = self._log_columns[name] = (key, logged)
        logged = known[1]
        retyped = [f"TRY_CAST({quote_ident(c)} AS {t}) AS {quote_ident(c)}" for c, t in declared
                   if c in logged and logged[c] != t.upper() and _recast(t.upper())]
        missing = [f"CAST(NULL AS {t}) AS {quote_ident(c)}" for c, t in declared if c not in logged]
        if not retyped and not missing:
            return rel
        replace = f" REPLACE ({', '.join(retyped)})" if retyped else ""
        return f"(SELECT *{replace}{''.join(', ' + m for m in missing)} FROM {rel})"

    def declare_stream(self, name: str, columns: list[tuple[str, str]]) -> None:
        """The stream's declared (column, DuckDB type) pairs: before its first
        event, queries over it read a typed empty relation with all of them."""
        self._stream_columns[name] = list(columns)

    def _empty_source(self, name: str, view: ViewDef) -> SourceDef:
        # A stream with no events yet: an empty relation with the columns the
        # view reads, so queries return nulls (counts 0) instead of failing.
        declared = self._stream_columns.get(name)
        if declared:
            sel = ", ".join(f"CAST(NULL AS {t}) AS {quote_ident(c)}" for c, t in declared)
            rel = (f"(SELECT {sel}, 0::BIGINT AS {EVENT_TS}, 0::BIGINT AS {CREATED_TS}, 0::BIGINT AS {SEQ} "
                   f"WHERE false)")
            return SourceDef(name, rel, quote_ident(EVENT_TS), quote_ident(CREATED_TS), quote_ident(SEQ))
        cols = {k: "NULL" for k in view.keys}
        for _, expr in view.features:
            cols.setdefault(expr.strip('"'), "NULL::DOUBLE")
        for wa in view.aggregations:
            if wa.agg.column:
                cols.setdefault(wa.agg.column, "NULL::DOUBLE")
        bad = [c for c in cols if not pit._IDENT.match(c)]
        if bad and name in self._unreadable:
            raise SourceError(f"view {view.name} reads {self._unreadable[name]}")
        if bad:
            raise SourceError(f"stream {name!r} has no events yet and view {view.name} computes expressions "
                              f"{bad} over it; push events first")
        sel = ", ".join(f"{v} AS {quote_ident(c)}" for c, v in cols.items())
        rel = f"(SELECT {sel}, 0::BIGINT AS {EVENT_TS}, 0::BIGINT AS {CREATED_TS}, 0::BIGINT AS {SEQ} WHERE false)"
        return SourceDef(name, rel, quote_ident(EVENT_TS), quote_ident(CREATED_TS), quote_ident(SEQ))

    # ---- connections

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A fresh cursor (its own registrations and temp tables) with the UDFs
        the point-in-time SQL calls."""
        with self._lock:
            cur = self.con.cursor()
        # DuckDB folds isnan(x) to false from Parquet min/max statistics, which
        # Parquet writers compute without NaN (checked with duckdb 2.0.1): NaN
        # would then count as a value. The event log writes NaN as null, but
        # batch sources may hold NaN, so turn that optimizer off.
        cur.execute("SET disabled_optimizers = 'statistics_propagation'")
        pit.register_udfs(cur)
        return cur

    # ---- the user-facing calls (kept here so a FeatureStore façade is thin)

    def get_historical_features(self, entity_df, features, **kw):
        from fsapp.offline.historical import get_historical_features
        return get_historical_features(self, entity_df, features, **kw)

    def materialize(self, views, start, end, writer, **kw):
        from fsapp.offline.materialize import materialize
        return materialize(self, views, start, end, writer, **kw)

    def materialize_incremental(self, views, end, writer, **kw):
        from fsapp.offline.materialize import materialize_incremental
        return materialize_incremental(self, views, end, writer, **kw)

    def close(self) -> None:
        self.log.close()
        self.con.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
