"""What the offline store needs to know about a feature view and its source,
as plain frozen dataclasses.

The registry (`fsapp.registry.model.FeatureView`) is the user-facing model;
`from_registry` below adapts it. Keeping the offline core on these small
inputs means the point-in-time SQL can be tested without a registry.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import duckdb

from fscore.window_spec import Agg, WindowSpec, check_view_params, duration

from fsapp.duck import connect
from fsapp.errors import SourceError
from fsapp.registry.model import TIME_TYPES, is_numeric_type



def quote_ident(name: str) -> str:
    """A DuckDB identifier, quoted so any column name is safe in SQL."""
    return '"' + str(name).replace('"', '""') + '"'


@dataclass(frozen=True)
class WindowedAgg:
    """One aggregated feature: an aggregation over a window. `agg.column` is a
    source column name or a DuckDB scalar expression over the source row."""

    agg: Agg
    window: WindowSpec

    @property
    def name(self) -> str:
        return self.agg.name


@dataclass(frozen=True)
class ViewDef:
    """A feature view as the offline store sees it.

    Plain views (`features`, no `aggregations`) serve the latest row within
    `ttl` (Feast's rule); aggregated views serve windows (docs/semantics.md).
    `features` maps output name -> DuckDB expression over a source row.
    """

    name: str
    source: str
    keys: tuple[str, ...]
    features: tuple[tuple[str, str], ...] = ()
    aggregations: tuple[WindowedAgg, ...] = ()
    ttl: int = 0
    filter: str | None = None
    hll_p: int = 8
    allowed_lateness: int = 0
    key_kinds: tuple[str, ...] = field(default=())  # fscore.schema kinds, for the online table
    # aggregation inputs that are text: read as fscore.window_spec.string_id
    string_inputs: tuple[str, ...] = field(default=())
    # aggregation inputs that are times: (column, SQL type), read as µs since the epoch
    time_inputs: tuple[tuple[str, str], ...] = field(default=())
    # aggregation inputs of other types (UUID, BLOB, TIME, lists, structs ...; count and
    # approx_count_distinct): read as the string_id of CAST(x AS VARCHAR), as online
    text_casts: tuple[str, ...] = field(default=())
    # (feature, SQL type) as the registry resolved them: training sets give each
    # feature the representation serving gives it (pit.served_sql); () = as computed
    types: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self):
        object.__setattr__(self, "keys", tuple(self.keys))
        object.__setattr__(self, "features", tuple(
            (f, quote_ident(f)) if isinstance(f, str) else (str(f[0]), str(f[1])) for f in self.features))
        object.__setattr__(self, "aggregations", tuple(self.aggregations))
        object.__setattr__(self, "ttl", duration(self.ttl))
        object.__setattr__(self, "allowed_lateness", duration(self.allowed_lateness))
        if not self.keys:
            raise SourceError(f"view {self.name}: needs at least one entity key column")
        if bool(self.features) == bool(self.aggregations):
            raise SourceError(f"view {self.name}: give either plain features or aggregations (not both, not neither)")
        check_view_params(self.allowed_lateness, self.hll_p, 1)
        names = self.feature_names
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise SourceError(f"view {self.name}: duplicate feature names {dup}")

    @classmethod
    def plain(cls, name: str, source: str, keys, features, ttl=0, filter: str | None = None,
              key_kinds=()) -> "ViewDef":
        return cls(name, source, tuple(keys), tuple(features), (), ttl, filter, key_kinds=tuple(key_kinds))

    @classmethod
    def windowed(cls, name: str, source: str, keys, window: WindowSpec, aggs, hll_p: int = 8,
                 allowed_lateness=0, filter: str | None = None, key_kinds=()) -> "ViewDef":
        """One window for every aggregation, like a `fscore.window.WindowView`."""
        parsed = tuple(a if isinstance(a, Agg) else Agg.parse(a) for a in aggs)
        return cls(name, source, tuple(keys), (), tuple(WindowedAgg(a, window) for a in parsed),
                   0, filter, hll_p, allowed_lateness, tuple(key_kinds))

    @property
    def is_aggregated(self) -> bool:
        return bool(self.aggregations)

    @property
    def feature_names(self) -> list[str]:
        return [n for n, _ in self.features] + [a.name for a in self.aggregations]

    def window_groups(self) -> list[tuple[WindowSpec, list[Agg]]]:
        """Aggregations grouped by window (one range join per window), in
        first-seen order so output columns keep the definition order."""
        groups: dict[WindowSpec, list[Agg]] = {}
        for wa in self.aggregations:
            groups.setdefault(wa.window, []).append(wa.agg)
        return list(groups.items())


@dataclass(frozen=True)
class SourceDef:
    """Where a view's rows come from: a DuckDB relation (SQL text) and the SQL
    expressions giving, per row, the event time, created time and ingestion
    sequence number as int64 µs / int64."""

    name: str
    relation: str
    ts_expr: str
    created_expr: str = "0"
    seq_expr: str = "0"
    columns: tuple[str, ...] = ()


def from_registry(fv, source, entities=(), types=()) -> ViewDef:
    """Adapter from the registry's `FeatureView` (and its resolved stream or
    source) to a `ViewDef`. `entities` are the registry `Entity` objects the
    view joins on (their join keys become the view's keys); `types` the
    resolved (feature, SQL type) pairs."""
    keys, kinds = [], []
    for e in entities:
        for c in e.join_keys:
            keys.append(c.name)
            kinds.append("string" if c.type == "VARCHAR" else "int64")
    features = tuple((p.name, p.expr) for p in fv.features)
    aggs = tuple(WindowedAgg(Agg(a.function, a.column, a.name, a.k), a.window) for a in fv.aggregations)
    columns = tuple((c.name, c.type) for c in getattr(source, "columns", ()))
    # each input's type as DuckDB gives it: only bare text and time columns were read as
    # such, so approx_count_distinct(lower(merchant_id)) or count(txn_uuid) failed in every
    # training set (CAST(... AS DOUBLE)) or online at every push
    typed = expression_types(columns, tuple(sorted({a.column for a in fv.aggregations if a.column is not None})))
    strings = tuple(sorted(c for c, t in typed.items() if t == "VARCHAR"))
    times = tuple(sorted((c, t) for c, t in typed.items() if t in TIME_TYPES))
    casts = tuple(sorted(c for c, t in typed.items() if reads_as_text(t) and t != "VARCHAR"))
    return ViewDef(fv.name, fv.source, tuple(keys), features, aggs, fv.ttl, fv.filter,
                   allowed_lateness=getattr(source, "allowed_lateness", 0), key_kinds=tuple(kinds),
                   string_inputs=strings + casts, time_inputs=times, text_casts=casts,
                   types=tuple((str(n), str(t)) for n, t in types))


def reads_as_text(typ: str | None) -> bool:
    """Whether an aggregation input of this DuckDB type is read as text (the
    string_id of CAST(x AS VARCHAR)): every type but numbers, booleans and the
    times read as µs (`TIME_TYPES`). None: DuckDB could not type it."""
    return typ is not None and not is_numeric_type(typ) and typ not in TIME_TYPES


@functools.lru_cache(maxsize=1024)
def expression_types(columns: tuple, exprs: tuple) -> dict:
    """{expression: its DuckDB type over a row of `columns` ((name, SQL type)
    pairs)}; an expression DuckDB cannot type here is left out."""
    if not columns or not exprs:
        return {}
    con = connect()
    try:
        con.execute(f"CREATE TABLE __row ({', '.join(f'{quote_ident(n)} {t}' for n, t in columns)})")
        out = {}
        for e in exprs:
            try:
                out[e] = con.execute(f"DESCRIBE SELECT ({e}) AS __v FROM __row").fetchall()[0][1]
            except duckdb.Error:
                pass
        return out
    except duckdb.Error:
        return {}
    finally:
        con.close()
