"""Every point-in-time SQL statement of fstore, in one place (DuckDB).

The rules are docs/semantics.md's (windows, ties, nulls, HyperLogLog) and
Feast's for plain views; docs/offline.md explains how each maps to SQL. The
functions here only *build* SQL over two relations:

- the source, normalised by `source_sql` to: the view's key columns, `__ts`
  (event time, µs), `__created` (µs), `__seq` (ingestion order), then one
  `__f<i>` per plain feature or one `__c<i>` (DOUBLE, NaN -> NULL) per
  aggregated input column;
- the queries `q`: `__row` (output order), the key columns, `__t` (µs).

Each view becomes CTEs producing `(__row, <features>)`; `select_sql` joins
them back onto `q`. DuckDB streams Parquet and spills joins to disk, so none
of this needs the inputs in memory.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fscore.window import hash_array
from fscore.window_spec import string_ids
from fscore.window_spec import Agg, WindowSpec

from fsapp.offline.views import SourceDef, ViewDef, quote_ident
from fsapp.registry.model import INTEGER_TYPES, is_decimal_type

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
INT64_MAX = (1 << 63) - 1
HLL_UDF = "__fs_hll_pack"
STRING_ID_UDF = "__fs_string_id"


def column_sql(expr: str) -> str:
    """A bare column name quoted, any other text kept as a (parenthesised)
    DuckDB expression (the registry stores expressions)."""
    return quote_ident(expr) if _IDENT.match(expr) else f"({expr})"


def align_sql(x: str, h: int) -> str:
    """floor(x / h) * h. DuckDB's % truncates toward zero, so shift the
    remainder into [0, h) first: align(-1, 10) = -10 as the engine does."""
    return f"({x} - ((({x}) % {h}) + {h}) % {h})"


def _keys(view: ViewDef, alias: str = "") -> str:
    p = f"{alias}." if alias else ""
    return ", ".join(p + quote_ident(k) for k in view.keys)


def _key_eq(view: ViewDef, a: str, b: str) -> str:
    return " AND ".join(f"{a}.{quote_ident(k)} = {b}.{quote_ident(k)}" for k in view.keys)


# ---------------------------------------------------------------- sources


@dataclass
class SourceColumns:
    """Names the normalised source gives each input of a view."""

    features: dict[str, str] = field(default_factory=dict)  # feature name -> __f<i>
    agg_inputs: dict[tuple[str, bool], str] = field(default_factory=dict)  # (agg column expr, raw) -> __c<i>

    def input_of(self, view: ViewDef, a: Agg) -> str | None:
        return None if a.column is None else self.agg_inputs[(a.column, _raw_input(view, a))]


def _raw_input(view: ViewDef, a: Agg) -> bool:
    """first/last/last_k of a text column read the text itself; every other
    aggregation of text reads its string id (count, approx_count_distinct)."""
    return a.column in view.string_inputs and a.kind in ("first", "last", "last_k")


def source_sql(view: ViewDef, src: SourceDef, before: str | None = None) -> tuple[str, SourceColumns]:
    """SELECT normalising `src` for `view`. Aggregation inputs become DOUBLE with
    NaN as NULL because the engine reads every column as float64 and treats NaN
    as null (semantics.md §3). `before` optionally bounds `__ts` (a SQL
    expression) so Parquet row groups past it are skipped."""
    names = SourceColumns()
    cols = [_keys(view),
            f"CAST(({src.ts_expr}) AS BIGINT) AS __ts",
            f"CAST(({src.created_expr}) AS BIGINT) AS __created",
            f"CAST(({src.seq_expr}) AS BIGINT) AS __seq"]
    for i, (name, expr) in enumerate(view.features):
        names.features[name] = f"__f{i}"
        cols.append(f"{column_sql(expr)} AS __f{i}")
    for wa in view.aggregations:
        c, raw = wa.agg.column, _raw_input(view, wa.agg)
        if c is not None and (c, raw) not in names.agg_inputs:
            alias = f"__c{len(names.agg_inputs)}"
            names.agg_inputs[(c, raw)] = alias
            if raw:
                cols.append(f"{column_sql(c)} AS {alias}")
                continue
            time_type = dict(view.time_inputs).get(c)
            x = (f"{STRING_ID_UDF}(CAST({column_sql(c)} AS VARCHAR))" if c in view.text_casts
                 else f"{STRING_ID_UDF}({column_sql(c)})" if c in view.string_inputs
                 else f"CAST({column_sql(c)} AS DOUBLE)" if time_type is None
                 else f"CAST({epoch_us_sql(column_sql(c), time_type)} AS DOUBLE)")
            cols.append(f"CASE WHEN isnan({x}) THEN NULL ELSE {x} END AS {alias}")
    where = []
    if view.filter:
        where.append(f"({view.filter})")
    if before is not None:
        where.append(f"CAST(({src.ts_expr}) AS BIGINT) < {before}")
    sql = f"SELECT {', '.join(cols)} FROM {src.relation} AS __src"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return sql, names


# ---------------------------------------------------------------- plain views


def plain_view_ctes(view: ViewDef, src_cte: str, names: SourceColumns, q: str, tag: str,
                    apply_ttl: bool = True) -> tuple[list[str], str, list[tuple[str, str]]]:
    """Feast's rule: per query row, the source row of the same key with the
    largest (ts, created, seq) among those with ts <= t; null when it is older
    than t - ttl (ttl 0: no limit).

    One ASOF join does it: ordering rows by the struct (ts, created, seq) and
    probing with (t, +inf, +inf) picks the latest ts <= t and, among equal ts,
    the largest created then the later arrival — the same row the online
    table keeps (its put replaces on (event_ts, created_ts) >=). No sort-based
    dedupe of the (possibly huge) source is needed.

    Returns (ctes, name of the CTE holding __row + features, [(feature, column)])."""
    feats = [(n, names.features[n]) for n, _ in view.features]
    fcols = ", ".join(c for _, c in feats)
    cte_src = (f"{tag}_s AS (SELECT {_keys(view)}, __ts, "
               f"__created, {{'ts': __ts, 'cr': __created, 'sq': __seq}} AS __o, {fcols} FROM {src_cte})")
    cte_q = (f"{tag}_q AS (SELECT __row, {_keys(view)}, __t, "
             f"{{'ts': __t, 'cr': {INT64_MAX}::BIGINT, 'sq': {INT64_MAX}::BIGINT}} AS __o FROM {q})")
    stale = f"s.__ts < q.__t - {view.ttl}" if view.ttl and apply_ttl else "false"
    outs = ", ".join(f"CASE WHEN {stale} THEN NULL ELSE s.{c} END AS {c}" for _, c in feats)
    cte = (f"{tag} AS (SELECT q.__row, s.__ts AS __ts, s.__created AS __created, {outs} "
           f"FROM {tag}_q q ASOF LEFT JOIN {tag}_s s ON {_key_eq(view, 'q', 's')} AND q.__o >= s.__o)")
    return [cte_src, cte_q, cte], tag, feats


# ---------------------------------------------------------------- aggregated views


def bounds_ctes(view: ViewDef, spec: WindowSpec, src_cte: str, q: str, tag: str) -> list[str]:
    """`{tag}_b(__row, keys, lo, hi)`: the event-time range [lo, hi) each query
    row's window covers (semantics.md §2). NULL lo = empty window."""
    k = _keys(view)
    if spec.kind == "session":
        # A session starts at an event whose gap to the previous one is >= gap;
        # the running max of those starts is each event's session start. As of
        # t the value is over the session of the last event before t, cut at t
        # (cutting at t only shortens the last session, never splits one).
        return [
            f"{tag}_d AS (SELECT DISTINCT {k}, __ts FROM {src_cte})",
            f"{tag}_g AS (SELECT {k}, __ts, lag(__ts) OVER (PARTITION BY {k} ORDER BY __ts) AS __prev FROM {tag}_d)",
            f"{tag}_ss AS (SELECT {k}, __ts, max(CASE WHEN __prev IS NULL OR __ts - __prev >= {spec.gap} "
            f"THEN __ts END) OVER (PARTITION BY {k} ORDER BY __ts ROWS BETWEEN UNBOUNDED PRECEDING "
            f"AND CURRENT ROW) AS __start FROM {tag}_g)",
            f"{tag}_b AS (SELECT q.__row, {_keys(view, 'q')}, s.__start AS lo, q.__t AS hi FROM {q} q "
            f"ASOF LEFT JOIN {tag}_ss s ON {_key_eq(view, 'q', 's')} AND q.__t > s.__ts)",
        ]
    t = "__t"
    if spec.kind == "tumbling":
        hi = align_sql(t, spec.size)
        lo = f"{hi} - {spec.size}"
    elif spec.kind == "sliding":
        hi = align_sql(t, spec.hop)
        lo = f"{hi} - {spec.size}"
    elif spec.kind == "continuous":
        lo, hi = align_sql(f"({t} - {spec.size})", spec.hop), t
    else:  # lifetime
        lo, hi = str(-(1 << 63)), t
    return [f"{tag}_b AS (SELECT __row, {k}, {lo} AS lo, {hi} AS hi FROM {q})"]


def _agg_sql(a: Agg, c: str | None) -> str:
    """One aggregation over the joined rows `s` (semantics.md §3). `s.__ord`
    orders events by (ts, seq) — arrival order breaks ts ties."""
    x = f"s.{c}" if c else None
    nn = f"FILTER (WHERE {x} IS NOT NULL)" if x else ""
    k = a.kind
    if k == "count":
        return "count(s.__ts)" if x is None else f"count({x})"
    if k == "sum":
        return f"sum({x})"
    if k == "mean":
        return f"sum({x}) / nullif(count({x}), 0)"
    if k in ("min", "max", "var_samp", "var_pop", "stddev_samp", "stddev_pop"):
        return f"{k}({x})"
    if k == "first":
        return f"arg_min({x}, s.__ord) {nn}"
    if k == "last":
        return f"arg_max({x}, s.__ord) {nn}"
    if k == "last_k":
        # The newest (up to) k values, newest first; null when the window has none.
        return f"arg_max({x}, s.__ord, {a.k}) {nn}"
    raise ValueError(f"no SQL for aggregation {k}")  # approx_count_distinct is hll_ctes' job


def _hll_estimate_sql(h: str, p: int) -> str:
    """The engine's estimator (window_cell.pxi hll_estimate) from the number of
    set registers `{h}.__nz` and `{h}.__z = Σ 2^-rank` over them.

    Constants are computed in Python and inlined as exact doubles (DuckDB would
    read 0.7213 as a DECIMAL). The engine sums 2^-reg in register order and SQL
    in any order; every partial sum is exact (a multiple of 2^-max_rank below
    2^p) unless some rank exceeds 53 - p, i.e. p + rank > 53 — a chance of
    2^-(53-p) per value, so the sums agree bit for bit in practice."""
    m = float(1 << p)
    alpha = {16: 0.673, 32: 0.697, 64: 0.709}.get(1 << p, 0.7213 / (1.0 + 1.079 / m))
    am2 = alpha * m * m
    zeros = f"({int(m)} - {h}.__nz)"
    e = f"({am2!r}::DOUBLE / ({h}.__z + {zeros}::DOUBLE))"
    est = (f"CASE WHEN {e} <= {2.5 * m!r}::DOUBLE AND {zeros} > 0 "
           f"THEN {m!r}::DOUBLE * ln({m!r}::DOUBLE / {zeros}::DOUBLE) ELSE {e} END")
    return f"CASE WHEN {h}.__nz IS NULL THEN 0 ELSE CAST(floor({est} + 0.5) AS BIGINT) END"


def window_view_ctes(view: ViewDef, src_cte: str, names: SourceColumns, q: str, tag: str
                     ) -> tuple[list[str], list[tuple[str, str, str]]]:
    """CTEs for every window group of `view`; returns (ctes, [(feature, cte,
    column)]). Per group: bounds, one range join + GROUP BY for the ordinary
    aggregations, and per approx_count_distinct a register-max aggregation."""
    ctes, outs = [], []
    needs_ord = any(wa.agg.kind in ("first", "last", "last_k") for wa in view.aggregations)
    src = src_cte
    if needs_ord:
        # (ts, seq) packed in one HUGEINT so arg_min/arg_max compare one value.
        ctes.append(f"{tag}_o AS (SELECT *, CAST(__ts AS HUGEINT) * 18446744073709551616 + __seq AS __ord "
                    f"FROM {src_cte})")
        src = f"{tag}_o"
    for gi, (spec, aggs) in enumerate(view.window_groups()):
        g = f"{tag}_w{gi}"
        ctes += bounds_ctes(view, spec, src_cte, q, g)
        join = f"{src} s ON {_key_eq(view, 'b', 's')} AND s.__ts >= b.lo AND s.__ts < b.hi"
        plain = [a for a in aggs if a.kind != "approx_count_distinct"]
        if plain:
            sel = ", ".join(f"{_agg_sql(a, names.input_of(view, a))} AS {quote_ident(a.name)}"
                            for a in plain)
            ctes.append(f"{g} AS (SELECT b.__row, {sel} FROM {g}_b b LEFT JOIN {join} GROUP BY b.__row)")
            outs += [(a.name, g, quote_ident(a.name)) for a in plain]
        for hi, a in enumerate(a for a in aggs if a.kind == "approx_count_distinct"):
            c = names.input_of(view, a)
            h = f"{g}_h{hi}"
            ctes.append(f"{h}_p AS (SELECT b.__row, {HLL_UDF}(s.{c}, {view.hll_p}) AS __pk "
                        f"FROM {g}_b b JOIN {join} WHERE s.{c} IS NOT NULL)")
            ctes.append(f"{h}_r AS (SELECT __row, max(__pk & 255) AS __rank FROM {h}_p GROUP BY __row, __pk >> 8)")
            ctes.append(f"{h} AS (SELECT __row, count(*) AS __nz, sum(pow(2.0, -__rank)) AS __z "
                        f"FROM {h}_r GROUP BY __row)")
            outs.append((a.name, h, f"__hll:{view.hll_p}"))
    return ctes, outs


# ---------------------------------------------------------------- one statement


@dataclass
class ViewQuery:
    """A view, its source and the features wanted from it, with their output
    column names (`out_names[i]` for `view.feature_names[i]`)."""

    view: ViewDef
    source: SourceDef
    out_names: list[str]


def training_set_sql(q: str, passthrough: list[str], parts: list[ViewQuery], plain_ttl: bool = True,
                     before: str | None = None, extra: list[str] = (), order: bool = True,
                     pre_ctes: list[str] = ()) -> str:
    """One SELECT: `passthrough` columns of `q` then every requested feature,
    in `__row` order, null where a view has no value. `extra` are further
    select expressions (the first view's CTE is `__v0`), `pre_ctes` CTEs that
    may define `q`. `plain_ttl` False leaves the TTL out (materialize: the
    online table judges it when read)."""
    ctes, sel, joins = list(pre_ctes), [f"q.{quote_ident(c)}" for c in passthrough] + list(extra), []
    for i, part in enumerate(parts):
        tag = f"__v{i}"
        src, names = source_sql(part.view, part.source, before)
        ctes.append(f"{tag}_src AS ({src})")
        if part.view.is_aggregated:
            vctes, outs = window_view_ctes(part.view, f"{tag}_src", names, q, tag)
            ctes += vctes
            by_name = {feat: (cte, col) for feat, cte, col in outs}
            expired = None
            if part.view.ttl and plain_ttl:
                # semantics.md §4: a key whose newest event before t is older than t - ttl reads
                # as empty windows (counts 0, others null)
                ctes += aggregated_ttl_ctes(part.view, f"{tag}_src", q, tag)
                joins.append(f"LEFT JOIN {tag}_last ON {tag}_last.__row = q.__row")
                expired = f"{tag}_last.__last < q.__t - {part.view.ttl}"
            for feat, out in zip(part.view.feature_names, part.out_names):
                cte, col = by_name[feat]
                if col.startswith("__hll:"):
                    value = _hll_estimate_sql(cte, int(col[6:]))
                else:
                    value = _fill_empty(part.view, feat, f"{cte}.{col}")
                if expired is not None:
                    kind = next(wa.agg.kind for wa in part.view.aggregations if wa.name == feat)
                    empty = "0" if kind in ("count", "approx_count_distinct") else "NULL"
                    value = f"CASE WHEN {expired} THEN {empty} ELSE {value} END"
                sel.append(f"{served_sql(part.view, feat, value)} AS {quote_ident(out)}")
            for cte in dict.fromkeys(cte for _, cte, _ in outs):
                joins.append(f"LEFT JOIN {cte} ON {cte}.__row = q.__row")
        else:
            vctes, cte, feats = plain_view_ctes(part.view, f"{tag}_src", names, q, tag, plain_ttl)
            ctes += vctes
            sel += [f"{served_sql(part.view, f, f'{cte}.{c}')} AS {quote_ident(out)}"
                    for (f, c), out in zip(feats, part.out_names)]
            joins.append(f"LEFT JOIN {cte} ON {cte}.__row = q.__row")
    sql = f"WITH {', '.join(ctes)} SELECT {', '.join(sel)} FROM {q} q {' '.join(joins)}"
    return sql + (" ORDER BY q.__row" if order else "")


def aggregated_ttl_ctes(view: ViewDef, src_cte: str, q: str, tag: str) -> list[str]:
    """`{tag}_last(__row, __last)`: each query row's key's newest event before t."""
    return [f"{tag}_lk AS (SELECT {_keys(view)}, __ts FROM {src_cte})",
            f"{tag}_last AS (SELECT q.__row, s.__ts AS __last FROM {q} q ASOF LEFT JOIN {tag}_lk s "
            f"ON {_key_eq(view, 'q', 's')} AND q.__t > s.__ts)"]


def served_sql(view: ViewDef, feat: str, value: str) -> str:
    """`value` (a training-set feature) in the representation serving gives
    it: online, DECIMAL is held as a DOUBLE, a DATE or TIMESTAMP of any unit
    as BIGINT µs since the epoch (nanoseconds floored, `runtime.time_as_us`),
    and first/last are computed over
    DOUBLE inputs (like every aggregation, semantics.md §3) and stored as the
    declared type — an integer (a double at or past 2^63 saturates, as
    `runtime.column_for_table` does) or a BOOLEAN (non-zero is true)."""
    typ = dict(view.types).get(feat)
    if typ is None:
        return value
    kind = next((wa.agg.kind for wa in view.aggregations if wa.name == feat), None)
    if kind in ("first", "last"):
        if typ in INTEGER_TYPES:
            return (f"CASE WHEN {value} >= {float(INT64_MAX + 1)!r}::DOUBLE THEN {INT64_MAX} "
                    f"ELSE CAST({value} AS BIGINT) END")
        if typ == "BOOLEAN":
            return f"({value} <> 0)"
    if is_decimal_type(typ):
        return f"CAST({value} AS DOUBLE)"
    return epoch_us_sql(value, typ)


def epoch_us_sql(value: str, typ: str) -> str:
    """A DATE or TIMESTAMP (any unit or zone) as BIGINT µs since the epoch,
    nanoseconds floored (as `runtime.time_as_us`); other types as they are."""
    if typ == "DATE":
        return f"epoch_us(CAST({value} AS TIMESTAMP))"
    if typ == "TIMESTAMP_NS":
        return f"({align_sql(f'epoch_ns({value})', 1000)} // 1000)"
    if typ.startswith("TIMESTAMP"):
        return f"epoch_us({value})"
    return value


def _fill_empty(view: ViewDef, feat: str, col: str) -> str:
    # Every query row is in its group's CTE (LEFT JOIN from the bounds), so
    # counts are already 0 there; this is a guard for views whose key is NULL.
    kind = next(wa.agg.kind for wa in view.aggregations if wa.name == feat)
    return f"coalesce({col}, 0)" if kind == "count" else col


# ---------------------------------------------------------------- materialize


def materialize_lower_bound(view: ViewDef, start: int, end: int) -> int:
    """Keys to refresh as of `end`: those with an event in [start, end) — they
    may have changed — and, for bounded windows, those with an event inside
    the window as of `end` (their value is non-empty; a key outside it gets its
    now-empty window written only if it had events since `start`)."""
    lo = start
    for spec, _ in (view.window_groups() if view.is_aggregated else []):
        if spec.kind == "tumbling":
            lo = min(lo, (end // spec.size) * spec.size - spec.size)
        elif spec.kind == "sliding":
            lo = min(lo, (end // spec.hop) * spec.hop - spec.size)
        elif spec.kind == "continuous":
            lo = min(lo, ((end - spec.size) // spec.hop) * spec.hop)
    return lo


def materialize_sql(view: ViewDef, src: SourceDef, start: int, end: int, now: int) -> str:
    """The online values as of `end` of every key that `materialize_lower_bound`
    selects: key columns, `__event_ts`, `__created_ts`, then the features.

    Plain views: the latest row with ts < end (as of end, like the windows)
    and its own timestamps; the online table applies the TTL when read.
    Aggregated views: the windows as of `end`, stamped with the key's latest
    event time (so TTL idling works) and `now` as created time (so the healed
    value replaces the engine's one at equal event time)."""
    lo = materialize_lower_bound(view, start, end)
    src_sql, _ = source_sql(view, src, before=str(end))
    k = _keys(view)
    pre = [f"__m_k AS (SELECT {k}, max(__ts) AS __last FROM ({src_sql}) WHERE {' AND '.join(f'{quote_ident(c)} IS NOT NULL' for c in view.keys)} "
           f"GROUP BY {k} HAVING max(__ts) >= {lo})",
           f"__m_q AS (SELECT row_number() OVER () - 1 AS __row, {k}, __last, "
           f"{end - 1 if not view.is_aggregated else end}::BIGINT AS __t FROM __m_k)"]
    if view.is_aggregated:
        extra = ["q.__last AS __event_ts", f"{now}::BIGINT AS __created_ts"]
    else:
        extra = ["__v0.__ts AS __event_ts", "__v0.__created AS __created_ts"]
    part = ViewQuery(view, src, list(view.feature_names))
    return training_set_sql("__m_q", list(view.keys), [part], plain_ttl=False, before=str(end), extra=extra,
                            order=False, pre_ctes=pre)


# ---------------------------------------------------------------- HLL hashing UDF


def _bit_length_u64(w: np.ndarray) -> np.ndarray:
    """Bit length of uint64 values, exactly: each 32-bit half is exact in a
    double, and frexp's exponent of an integer is its bit length."""
    hi = (w >> np.uint64(32)).astype(np.float64)
    lo = (w & np.uint64(0xFFFFFFFF)).astype(np.float64)
    return np.where(hi > 0, 32 + np.frexp(hi)[1], np.frexp(lo)[1]).astype(np.int64)


def hll_pack(values: np.ndarray, p: int) -> np.ndarray:
    """register * 256 + rank for each value, with the engine's hash
    (`fscore.window.hash_array`) and its register/rank rule."""
    h = hash_array(np.ascontiguousarray(values, dtype=np.float64))
    reg = (h >> np.uint64(64 - p)).astype(np.int64)
    w = h << np.uint64(p)
    rank = np.where(w == 0, 64 - p + 1, 64 - _bit_length_u64(w) + 1)
    return reg * 256 + rank


def _hll_udf(values: pa.Array, p: pa.Array) -> pa.Array:
    x = pc.fill_null(values, 0.0).to_numpy(zero_copy_only=False)
    return pa.array(hll_pack(x, int(p[0].as_py())), type=pa.int64())


def _string_id_udf(values: pa.Array) -> pa.Array:
    return pa.array(string_ids(values.to_pylist()), type=pa.float64())


def register_udfs(con) -> None:
    """The SQL above calls `__fs_hll_pack(DOUBLE, INTEGER) -> BIGINT`: register
    it on each DuckDB connection that runs it."""
    import duckdb
    try:
        con.create_function(HLL_UDF, _hll_udf, [duckdb.sqltype("DOUBLE"), duckdb.sqltype("INTEGER")],
                            duckdb.sqltype("BIGINT"), type="arrow", side_effects=False)
    except duckdb.CatalogException:
        pass  # already registered on this connection
    try:
        con.create_function(STRING_ID_UDF, _string_id_udf, [duckdb.sqltype("VARCHAR")],
                            duckdb.sqltype("DOUBLE"), type="arrow", side_effects=False)
    except duckdb.CatalogException:
        pass


__all__ = ["SourceDef", "ViewQuery", "align_sql", "column_sql", "hll_pack", "register_udfs",
           "source_sql", "training_set_sql"]
