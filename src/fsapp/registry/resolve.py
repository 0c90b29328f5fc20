"""Bind a set of definitions to each other and check them, asking DuckDB.

Every source and stream becomes an empty DuckDB table with its declared
columns; each row-level expression and filter is then checked with
`DESCRIBE SELECT ...` against that table. So DuckDB, which evaluates these
expressions online (Arrow batches) and offline (Parquet), is also the judge of
what is valid, and its canonical type names are what we store.

All problems are collected before raising, so one run lists everything to fix,
and nothing is written unless the whole set is valid.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, replace

import duckdb

from fsapp import duck
from fsapp.registry.dsl import tokenize
from fsapp.registry.errors import DefinitionError
from fsapp.registry.model import (
    ANY_TYPE_AGGS, KIND_ORDER, RESERVED_PREFIXES, Entity, FeatureRef, FeatureService, FeatureView, FileSource,
    OnDemandView, RequestSource, Stream, canonical_type, is_decimal_type, is_numeric_type, kind_label, not_in_log,
    online_kind,
)

# A hidden column in every probe table: selecting it beside an expression makes
# DuckDB reject aggregate functions (GROUP BY error), which are not row-level.
_GUARD = "__fstore_row_guard"
_SAMPLE = "__fstore_sample_"  # a one-row table of each source's column types (_Checker._sample_row)
_TIME_COLUMN_TYPES = ("TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "DATE", "BIGINT", "TIMESTAMP_MS", "TIMESTAMP_NS",
                      "TIMESTAMP_S")


def _sample_value(t: str) -> str | None:
    """A non-null SQL value of DuckDB type `t` (before its cast), or None."""
    m = re.fullmatch(r"(.+)\[(\d*)\]", t)
    if m:
        inner = _sample_value(m.group(1))
        return None if inner is None else f"[{', '.join([f'{inner}::{m.group(1)}'] * int(m.group(2) or 1))}]"
    if is_numeric_type(t):  # (1::BOOLEAN is true)
        return "1"
    return {"VARCHAR": "'1'", "DATE": "'2020-01-01'", "TIME": "'00:00:00'",
            "UUID": "'00000000-0000-0000-0000-000000000001'", "BLOB": "'1'"}.get(
        t, "'2020-01-01 00:00:00'" if t.startswith("TIMESTAMP") else None)


# Row logic runs when an event is pushed (online) and again when a training set is built
# (offline): a value that depends on when or where it runs, not on the row, differs between the
# two. The clock and session functions (CONSISTENT_WITHIN_QUERY in duckdb_functions(), like
# harmless ones such as `+` over TIMESTAMPTZ, so named here) and every VOLATILE function but error().
_CLOCK_FUNCTIONS = frozenset({"now", "today", "current_date", "current_time", "current_timestamp", "get_current_time",
                              "get_current_timestamp", "transaction_timestamp", "current_localtime",
                              "current_localtimestamp", "localtime", "localtimestamp",
                              # and the session's own state, which the engine's and a training set's differ in
                              "current_setting", "getvariable", "current_database", "current_schema",
                              "current_schemas", "in_search_path", "txid_current"})
_CLOCK_NAMES = frozenset({"current_date", "current_time", "current_timestamp", "localtime", "localtimestamp"})


@functools.cache
def _nondeterministic() -> frozenset[str]:
    """(DuckDB's function list is fixed for the process: read once, ~10 ms, not at every plan.)"""
    with duckdb.connect() as con:
        volatile = {r[0].lower() for r in con.execute(
            "SELECT DISTINCT function_name FROM duckdb_functions() WHERE stability = 'VOLATILE'").fetchall()}
    return frozenset((volatile - {"error"}) | _CLOCK_FUNCTIONS)


def _run_dependent(expr: str, functions: frozenset[str], columns) -> str | None:
    """The first function (or clock name) in `expr` whose value depends on when
    or where the expression runs, or None."""
    toks = tokenize(expr)
    for t, nxt in zip(toks, toks[1:]):
        name = t.text.strip('"').lower() if t.kind in ("ident", "qident") else None
        if name is None:
            continue
        if nxt.is_op("(") and name in functions:
            return f"{name}()"
        if t.kind == "ident" and not nxt.is_op("(") and name in _CLOCK_NAMES and name not in columns:
            return name.upper()
    return None


@dataclass(frozen=True)
class Resolved:
    """A checked definition plus what was derived from it (DuckDB types, keys,
    feature types): the content of one registry entry, before versioning."""

    kind: str
    name: str
    definition: object
    resolved: dict

    def spec(self) -> dict:
        return {"definition": self.definition.to_dict(), "resolved": self.resolved}


def _qi(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _duck_message(e: Exception) -> str:
    """DuckDB's first line (and its 'Candidate bindings' hint), without the
    echo of our probe query, which would only confuse."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith(("LINE", "^"))]
    keep = [lines[0]] + [ln for ln in lines[1:2] if ln.startswith(("Candidate", "Did you mean"))]
    text = " ".join(keep).replace("Referenced column", "column")
    return text.split(": ", 1)[1] if text.split(":", 1)[0].endswith(" Error") else text


class _Checker:
    def __init__(self, origins: dict[str, str]):
        self.origins = origins
        self.problems: list[str] = []
        self.con = duck.connect()
        self.tables: dict[str, dict[str, str]] = {}  # source/stream name -> {column: DuckDB type}

    def fail(self, kind: str, name: str, message: str) -> None:
        where = self.origins.get(name)
        self.problems.append(f"{where + ': ' if where else ''}{kind_label(kind)} {name}: {message}")

    # ---- sources and streams ----
    def declare(self, obj, table: str) -> dict[str, str] | None:
        """Creates `table` with `obj`'s declared columns (and the guard column);
        their DuckDB types, or None (the problem is logged)."""
        cols = ", ".join(f"{_qi(c.name)} {c.type}" for c in obj.columns)
        try:
            self.con.execute(f"CREATE TABLE {_qi(table)} ({cols}, {_qi(_GUARD)} BIGINT)")
        except duckdb.Error as e:
            self.fail(obj.KIND, obj.name, f"bad column type: {_duck_message(e)}")
            return None
        return {r[0]: r[1] for r in self.con.execute(f"DESCRIBE {_qi(table)}").fetchall() if r[0] != _GUARD}

    def table(self, obj) -> dict | None:
        types = self.declare(obj, obj.name)
        if types is None:
            return None
        self.tables[obj.name] = types
        self._sample_row(obj.name, types)
        if isinstance(obj, Stream):
            # a stream's events go to the Parquet event log, which has no INTERVAL (pyarrow
            # cannot write Arrow's month_day_nano: every push was acknowledged, then the log's
            # flush failed, and with it every checkpoint and close of the store), and holds
            # BIT and BIGNUM as their bytes and TIMETZ without its offset (views read those
            # forms: bit_count(b) failed every push, v::VARCHAR differed online and offline)
            for col, typ in types.items():
                why = not_in_log(typ)
                if why:
                    self.fail("stream", obj.name, f"column {col!r} has type {typ}, which the offline event log "
                                                  f"(Parquet) cannot hold as it is ({why})")
        for what, col in (("timestamp", obj.timestamp), ("created_timestamp", getattr(obj, "created_timestamp", None))):
            if col is None:
                continue
            if col not in types:
                self.fail(obj.KIND, obj.name, f"{what} column {col!r} is not one of its columns ({', '.join(types)})")
            elif types[col] not in _TIME_COLUMN_TYPES:
                self.fail(obj.KIND, obj.name, f"{what} column {col!r} has type {types[col]}; "
                                              f"use TIMESTAMP (or BIGINT µs since the epoch)")
        return {"columns": [[n, t] for n, t in types.items()]}

    def stream_links(self, obj: Stream, by_name: dict) -> None:
        if obj.batch_source is None:
            return
        src = by_name.get(obj.batch_source)
        if not isinstance(src, FileSource):
            self.fail("stream", obj.name, f"batch_source {obj.batch_source!r} is not a defined SOURCE")
            return
        mine, theirs = self.tables.get(obj.name, {}), self.tables.get(src.name, {})
        for col, typ in mine.items():
            if col not in theirs:
                self.fail("stream", obj.name, f"batch_source {src.name} lacks column {col!r}")
            elif theirs[col] != typ:
                self.fail("stream", obj.name, f"column {col!r} is {typ} but {theirs[col]} in batch_source {src.name}")

    def entity(self, obj: Entity) -> dict:
        keys = []
        for c in obj.join_keys:
            try:
                typ = self.con.execute(f"SELECT typeof(CAST(NULL AS {c.type}))").fetchone()[0]
            except duckdb.Error as e:
                self.fail("entity", obj.name, f"join key {c.name}: bad type: {_duck_message(e)}")
                continue
            if online_kind(typ) not in (("int64", 0), ("string", 0)) or typ in ("DATE",) or "TIME" in typ:
                self.fail("entity", obj.name, f"join key {c.name} has type {typ}; keys are integers or VARCHAR")
            keys.append([c.name, typ])
        return {"join_keys": keys}

    # ---- feature views ----
    def describe(self, view: FeatureView, source: str, expr: str, what: str) -> str | None:
        """DuckDB type of `expr` over one row of `source`, or None (problem logged)."""
        if any(t.is_kw("OVER") for t in tokenize(expr)):
            self.fail("feature_view", view.name, f"{what}: window functions (OVER) are not row-level; "
                                                 f"write windowed features as fn(col) OVER sliding(...) in the view")
            return None
        if not self.deterministic(view, expr, what, self.tables.get(source, {})):
            return None
        try:
            rows = self.con.execute(f"DESCRIBE SELECT {_qi(_GUARD)}, ({expr}) AS __v FROM {_qi(source)}").fetchall()
        except duckdb.Error as e:
            msg = _duck_message(e)
            if _GUARD in msg:
                msg = "aggregate functions are not allowed in a row-level expression; " \
                      "use fn(col) OVER <window> for aggregations"
            self.fail("feature_view", view.name, f"{what}: {msg}")
            return None
        typ = rows[1][1]
        impossible = self._impossible_cast(source, expr)
        if impossible:
            self.fail("feature_view", view.name, f"{what}: {impossible}: no value of the column converts, so every "
                                                 "event with one would be refused; convert it another way "
                                                 "(e.g. epoch_ms(x) for a time from a number, x::VARCHAR first)")
            return None
        return typ

    def _sample_row(self, source: str, types: dict) -> None:
        """A one-row table of non-null values of `source`'s column types: DESCRIBE
        over the empty table takes a cast no value can make (FLOAT -> TIMESTAMP),
        which DuckDB refuses only when it runs on a value — the first push."""
        items = ", ".join(f"{_sample_value(t) or 'NULL'}::{t} AS {_qi(c)}" for c, t in types.items())
        try:
            self.con.execute(f"CREATE TABLE {_qi(_SAMPLE + source)} AS SELECT {items}, 0 AS {_qi(_GUARD)}")
        except duckdb.Error:
            pass  # (a type whose sample does not cast: the check is skipped for this source)

    def _impossible_cast(self, source: str, expr: str) -> str | None:
        try:
            self.con.execute(f"SELECT ({expr}) FROM {_qi(_SAMPLE + source)}").fetchall()
        except duckdb.Error as e:
            msg = _duck_message(e)
            if "Unimplemented type for cast" in msg:
                return msg.split("\n")[0].replace("Conversion Error: ", "")
        return None

    def deterministic(self, obj, expr: str, what: str, columns) -> bool:
        fn = _run_dependent(expr, _nondeterministic(), columns)
        if fn is None:
            return True
        self.fail(obj.KIND, obj.name, f"{what}: {fn} is not a function of the row: it gives another value each "
                                      "time the expression runs (online when the event is pushed or read, "
                                      "offline when a training set is built), so online and training values "
                                      "would differ; use the event's timestamp column, or a request column for "
                                      "the time of a read")
        return False

    def view(self, view: FeatureView, by_name: dict) -> tuple[FeatureView, dict] | None:
        problems_before = len(self.problems)
        src = by_name.get(view.source)
        if not isinstance(src, (Stream, FileSource)):
            have = sorted(n for n, o in by_name.items() if isinstance(o, (Stream, FileSource)))
            self.fail("feature_view", view.name, f"FROM {view.source}: no stream or source of that name "
                                                 f"(defined: {', '.join(have) or 'none'})")
            return None
        if view.is_aggregated and not isinstance(src, Stream):
            self.fail("feature_view", view.name, f"aggregations read a STREAM, but {view.source} is a batch SOURCE; "
                                                 f"use a stream (give it batch_source = '{view.source}' to backfill)")
            return None
        cols = self.tables.get(src.name)
        if cols is None:
            return None  # the source's own problem is already reported
        entities = self.view_entities(view, by_name, cols)
        if entities is None:
            return None
        keys, ok = [], True
        for ent in entities:
            for c in ent.join_keys:
                if c.name not in cols:
                    self.fail("feature_view", view.name, f"entity {ent.name}'s join key {c.name!r} is not a column "
                                                         f"of {src.name} ({', '.join(cols)})")
                    ok = False
                elif online_kind(cols[c.name]) != online_kind(c.type):
                    self.fail("feature_view", view.name, f"type mismatch: join key {c.name} is {c.type} in entity "
                                                         f"{ent.name} but {cols[c.name]} in {src.name}")
                    ok = False
                elif c.name not in [k for k, _ in keys]:
                    keys.append([c.name, c.type])
        key_names = {k for k, _ in keys}
        features = [p for p in view.features if not (p.name in key_names and p.expr == p.name)]
        if view.is_aggregated and features:
            self.fail("feature_view", view.name, f"{', '.join(p.name for p in features)}: an aggregated view selects "
                                                 f"its entity key(s) and aggregations (fn(col) OVER window) only")
            return None
        out = []
        for p in features:
            typ = self.describe(view, src.name, p.expr, f"feature {p.name} = {p.expr}")
            if typ is not None:
                out.append(self.feature_type(view, p.name, typ))
        for a in view.aggregations:
            out.append(self.aggregation_type(view, src.name, a))
        if view.filter is not None:
            typ = self.describe(view, src.name, view.filter, f"filter {view.filter}")
            if typ is not None and typ != "BOOLEAN":
                self.fail("feature_view", view.name, f"filter {view.filter!r} is {typ}, not BOOLEAN")
        clash = sorted(key_names & {f[0] for f in out if f})
        if clash:
            self.fail("feature_view", view.name, f"feature name(s) {', '.join(clash)} clash with the entity key")
        names = [p.name for p in features] + [a.name for a in view.aggregations]
        lowered = [n.lower() for n in names]
        folded = sorted({n for n in names if lowered.count(n.lower()) > 1})
        if folded:  # sum(x) AS s, count(*) AS S: the training set's query read one column for both
            self.fail("feature_view", view.name, f"feature names {', '.join(folded)} differ only in case, and SQL "
                                                 f"names do not (DuckDB reads one for the other); rename one")
        reserved = [n for n in names if n.lower().startswith(RESERVED_PREFIXES)]
        if reserved:  # `x AS _fs_row` met the engine's own row column in each batch's projection
            # (checked here, at apply, not in the model: a stored definition still loads)
            self.fail("feature_view", view.name, f"feature name(s) {', '.join(reserved)} start with a prefix "
                                                 f"fstore reserves ({', '.join(RESERVED_PREFIXES)}); rename them")
        if isinstance(src, Stream) and src.timestamp in {p.name for p in features}:
            # each pushed batch's projection would hold two columns of that name (the event time and
            # the feature) and every push failed; a file source's view is materialized by a query
            self.fail("feature_view", view.name, f"a feature named {src.timestamp!r} clashes with {src.name}'s "
                                                 f"timestamp column, which every row is served with as its "
                                                 f"event_timestamp; give the feature another name (to serve the "
                                                 f"event time itself: {src.timestamp} AS event_time)")
        if not ok or len(self.problems) > problems_before:
            return None
        bound = replace(view, entities=tuple(e.name for e in entities), features=tuple(features))
        return bound, {"keys": keys, "timestamp": src.timestamp, "source_kind": src.KIND,
                       "features": out}

    # ---- request sources and on-demand views ----
    def request_source(self, obj: RequestSource) -> dict | None:
        types = self.declare(obj, "__req_" + obj.name)
        if types is None:
            return None
        bad = [f"{n} {t}" for n, t in types.items() if on_demand_type(t) is None]
        if bad:
            self.fail(obj.KIND, obj.name, f"column(s) {', '.join(bad)}: request columns are numbers, BOOLEAN or "
                                          "VARCHAR")
            return None
        return {"columns": [[n, t] for n, t in types.items()]}

    def on_demand(self, odv: OnDemandView, by_name: dict, done: dict) -> dict | None:
        """Binds an on-demand view to its sources: the request columns it may
        read, each source view's features (as a STRUCT column named after the
        view, so `view.feature` resolves), and checks every expression with
        DuckDB as `TRY(expr)`; inputs are the `view.feature` references."""
        problems_before = len(self.problems)
        request, views = {}, {}
        for name in odv.sources:
            src, res = by_name.get(name), done.get(name)
            if isinstance(src, RequestSource):
                if res is None:
                    return None  # its own problem is listed
                for col, typ in res.resolved["columns"]:
                    if col in request:
                        self.fail(odv.KIND, odv.name, f"request column {col!r} is in two request sources")
                    request[col] = typ
            elif isinstance(src, FeatureView):
                if res is None:
                    return None
                views[name] = res.resolved
            else:
                have = sorted(n for n, o in by_name.items() if isinstance(o, (RequestSource, FeatureView)))
                self.fail(odv.KIND, odv.name, f"FROM {name}: no request source or feature view of that name "
                                              f"(defined: {', '.join(have) or 'none'})")
                return None
        clash = sorted(set(request) & set(views))
        if clash:
            self.fail(odv.KIND, odv.name, f"request column(s) {', '.join(clash)} have the name of a source view; "
                                          "rename the column")
            return None
        table = _qi("__od_" + odv.name)
        cols = [f"{_qi(c)} {t}" for c, t in request.items()]
        cols += [f"{_qi(v)} STRUCT({', '.join(f'{_qi(f)} {t}' for f, t in res['features'])})"
                 for v, res in views.items()]
        self.con.execute(f"CREATE TEMP TABLE {table} ({', '.join(cols + [f'{_qi(_GUARD)} BIGINT'])})")
        if odv.function is not None:
            return self._on_demand_python(odv, request, views, problems_before)
        inputs, features = [], []
        for p in odv.features:
            toks = tokenize(p.expr)
            for a, dot, b in zip(toks, toks[1:], toks[2:]):
                if a.kind == "ident" and a.text in views and dot.is_op(".") and b.kind == "ident":
                    ref = str(FeatureRef(a.text, b.text))
                    if ref not in inputs and b.text in [f for f, _ in views[a.text]["features"]]:
                        inputs.append(ref)
            if any(t.is_kw("OVER", "SELECT") for t in toks):
                self.fail(odv.KIND, odv.name, f"feature {p.name} = {p.expr}: an on-demand feature is one row-level "
                                              "expression (no subqueries or window functions)")
                continue
            if not self.deterministic(odv, p.expr, f"feature {p.name} = {p.expr}", request):
                continue
            try:
                rows = self.con.execute(f"DESCRIBE SELECT {_qi(_GUARD)}, TRY({p.expr}) AS __v FROM {table}").fetchall()
            except duckdb.Error as e:
                msg = _duck_message(e)
                if _GUARD in msg or "aggregate" in msg.lower():
                    msg = "aggregate functions are not allowed in an on-demand feature (one row's values only)"
                self.fail(odv.KIND, odv.name, f"feature {p.name} = {p.expr}: {msg}")
                continue
            typ = on_demand_type(rows[1][1])
            if typ is None:
                self.fail(odv.KIND, odv.name, f"feature {p.name} = {p.expr} has type {rows[1][1]}; on-demand "
                                              "features are numbers, BOOLEAN or VARCHAR (CAST it)")
                continue
            features.append([p.name, typ])
        self._scalar_inputs(odv, inputs, views)
        if len(self.problems) > problems_before:
            return None
        return {"request": [[c, t] for c, t in request.items()], "inputs": inputs, "features": features,
                "keys": _union_keys(views[r.split(":")[0]]["keys"] for r in inputs)}

    def _scalar_inputs(self, odv: OnDemandView, inputs: list[str], views: dict) -> None:
        for text in inputs:
            ref = FeatureRef.parse(text)
            typ = dict(map(tuple, views[ref.view]["features"])).get(ref.feature)
            if typ is not None and on_demand_type(typ) is None:
                self.fail(odv.KIND, odv.name, f"input {ref.view}.{ref.feature} has type {typ}; on-demand features "
                                              "read numbers, BOOLEAN or VARCHAR features")

    def _on_demand_python(self, odv: OnDemandView, request: dict, views: dict, problems_before: int) -> dict | None:
        refs = list(odv.inputs)
        for v, res in views.items():  # a source view named without a feature list: all its scalar features
            if not any(r.view == v for r in refs):
                refs += [FeatureRef(v, f) for f, t in res["features"] if on_demand_type(t) is not None]
        odv = replace(odv, inputs=tuple(refs))
        for ref in odv.inputs:
            res = views.get(ref.view)
            if res is None:
                self.fail(odv.KIND, odv.name, f"input {ref}: {ref.view} is not one of its sources "
                                              f"({', '.join(odv.sources)})")
            elif ref.feature not in [f for f, _ in res["features"]]:
                self.fail(odv.KIND, odv.name, f"input {ref}: {ref.view} has no feature {ref.feature!r}")
        features = []
        for c in odv.outputs:
            typ = on_demand_type(canonical_type(c.type))
            if typ is None:
                self.fail(odv.KIND, odv.name, f"output {c.name} has type {c.type}; on-demand features are "
                                              "numbers, BOOLEAN or VARCHAR")
            features.append([c.name, typ])
        try:
            from fsapp.ondemand.python_udf import load_function
            load_function(odv.function, odv.function_name)
        except Exception as e:  # noqa: BLE001 - any error in the user's code is theirs to see
            self.fail(odv.KIND, odv.name, f"function {odv.function_name}: {type(e).__name__}: {e}")
        inputs = [str(r) for r in odv.inputs]
        self._scalar_inputs(odv, [i for i in inputs if FeatureRef.parse(i).view in views], views)
        bare = [r.feature for r in odv.inputs] + list(request)
        dup = sorted({b for b in bare if bare.count(b) > 1})
        if dup:
            self.fail(odv.KIND, odv.name, f"the function's DataFrame would have column(s) {', '.join(dup)} twice "
                                          "(inputs and request columns are named by their bare names)")
        if len(self.problems) > problems_before:
            return None
        return {"request": [[c, t] for c, t in request.items()], "inputs": inputs, "features": features,
                "keys": _union_keys(views[r.view]["keys"] for r in odv.inputs)}

    def view_entities(self, view: FeatureView, by_name: dict, cols: dict) -> list[Entity] | None:
        if view.entities:
            missing = [e for e in view.entities if not isinstance(by_name.get(e), Entity)]
            if missing:
                have = sorted(n for n, o in by_name.items() if isinstance(o, Entity))
                self.fail("feature_view", view.name, f"unknown entity {', '.join(missing)} "
                                                     f"(defined: {', '.join(have) or 'none'}); CREATE ENTITY it first")
                return None
            return [by_name[e] for e in view.entities]
        # Infer: every entity whose join keys are all selected as bare columns.
        bare = {p.name for p in view.features if p.expr == p.name}
        found = [o for o in by_name.values() if isinstance(o, Entity) and {c.name for c in o.join_keys} <= bare]
        if not found:
            have = ", ".join(f"{o.name}({', '.join(c.name for c in o.join_keys)})"
                             for o in by_name.values() if isinstance(o, Entity))
            self.fail("feature_view", view.name, "unknown entity: the SELECT lists no entity's join key "
                                                 f"(entities: {have or 'none defined'}); select the key column or "
                                                 "add WITH (entities = '...')")
            return None
        return sorted(found, key=lambda e: [p.name for p in view.features].index(e.join_keys[0].name))

    def feature_type(self, view: FeatureView, name: str, typ: str) -> list | None:
        if view.online and online_kind(typ) is None:
            self.fail("feature_view", view.name, f"feature {name} has type {typ}, which the online store cannot "
                                                 f"hold; cast it (e.g. ::VARCHAR, ::FLOAT[8]) or set online = FALSE")
            return None
        return [name, typ]

    def aggregation_type(self, view: FeatureView, source: str, a) -> list | None:
        if a.column is None:
            return [a.name, "BIGINT"]
        typ = self.describe(view, source, a.column, f"{a.function}({a.column}) AS {a.name}")
        if typ is None:
            return None
        if a.function not in ANY_TYPE_AGGS and not is_numeric_type(typ):
            self.fail("feature_view", view.name, f"{a.function}({a.column}) AS {a.name}: {a.function} needs a "
                                                 f"numeric column, but {a.column} is {typ} (count, first, last and "
                                                 f"approx_count_distinct take any type)")
            return None
        if a.function in ("first", "last") and view.online and not is_numeric_type(typ):
            # the window kernels keep float64 partials; text would need a dictionary they do not have yet
            self.fail("feature_view", view.name, f"{a.function}({a.column}) AS {a.name}: {a.function} of a "
                                                 f"{typ} column is not computed online; aggregate a numeric column, "
                                                 f"use count or approx_count_distinct, or set online = FALSE to "
                                                 f"compute it in training sets only")
            return None
        if a.function in ("count", "approx_count_distinct"):
            out = "BIGINT"
        elif a.function in ("first", "last"):
            out = typ
        elif a.function == "last_k":
            out = f"DOUBLE[{a.k}]"
        else:
            out = "DOUBLE"
        return self.feature_type(view, a.name, out)

    def service_refs(self, svc: FeatureService, views: dict[str, dict], by_name: dict) -> None:
        """Unpinned refs must name a feature of a view in this set; pinned ones
        are checked against the registry's history by the planner."""
        for ref in svc.features:
            if ref.version is not None:
                continue
            res = views.get(ref.view)
            if res is None and isinstance(by_name.get(ref.view), (FeatureView, OnDemandView)):
                continue  # the view itself failed; its problem is already listed
            if res is None:
                self.fail("feature_service", svc.name, f"{ref}: no feature view {ref.view!r} "
                                                       f"(views: {', '.join(sorted(n for n, o in by_name.items() if isinstance(o, FeatureView))) or 'none'})")
            elif ref.feature != "*" and ref.feature not in [f[0] for f in res["features"]]:
                names = ", ".join(f[0] for f in res["features"])
                self.fail("feature_service", svc.name, f"{ref}: view {ref.view} has no feature {ref.feature!r} "
                                                       f"(it has: {names})")


def on_demand_type(typ: str) -> str | None:
    """The type an on-demand value is served as: integers as BIGINT, other
    numbers as DOUBLE, BOOLEAN, VARCHAR; None for the rest."""
    if typ in ("BOOLEAN", "VARCHAR"):
        return typ
    if typ in ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER"):
        return "BIGINT"
    if typ in ("FLOAT", "DOUBLE") or is_decimal_type(typ):
        return "DOUBLE"
    return None


def _union_keys(key_lists) -> list:
    out = []
    for keys in key_lists:
        out += [k for k in keys if k not in out]
    return out


def resolve(definitions, origins: dict[str, str] | None = None) -> dict[str, Resolved]:
    """Check a complete set of definitions; return {name: Resolved} in
    dependency order, or raise DefinitionError listing every problem.
    `origins` maps a name to where it was defined ("features.sql:12")."""
    chk = _Checker(origins or {})
    by_name: dict[str, object] = {}
    for obj in definitions:
        prev = by_name.get(obj.name)
        if prev is not None and prev != obj:
            chk.fail(obj.KIND, obj.name, f"duplicate name: also defined as {_a(kind_label(prev.KIND))}; "
                                         f"names are unique across entities, sources, streams, views and services")
        by_name.setdefault(obj.name, obj)
    ordered = sorted(by_name.values(), key=lambda o: KIND_ORDER.index(o.KIND))
    out: dict[str, Resolved] = {}
    try:
        for obj in ordered:
            if isinstance(obj, Entity):
                out[obj.name] = Resolved(obj.KIND, obj.name, obj, chk.entity(obj))
            elif isinstance(obj, (FileSource, Stream)):
                res = chk.table(obj)
                if isinstance(obj, Stream):
                    chk.stream_links(obj, by_name)
                if res is not None:
                    out[obj.name] = Resolved(obj.KIND, obj.name, obj, res)
            elif isinstance(obj, FeatureView):
                bound = chk.view(obj, by_name)
                if bound is not None:
                    out[obj.name] = Resolved(obj.KIND, obj.name, bound[0], bound[1])
            elif isinstance(obj, RequestSource):
                res = chk.request_source(obj)
                if res is not None:
                    out[obj.name] = Resolved(obj.KIND, obj.name, obj, res)
            elif isinstance(obj, OnDemandView):
                res = chk.on_demand(obj, by_name, out)
                if res is not None:
                    out[obj.name] = Resolved(obj.KIND, obj.name, obj, res)
            elif isinstance(obj, FeatureService):
                chk.service_refs(obj, {n: r.resolved for n, r in out.items()
                                       if r.kind in ("feature_view", "on_demand_view")}, by_name)
                out[obj.name] = Resolved(obj.KIND, obj.name, obj, {})
    finally:
        chk.con.close()
    if chk.problems:
        raise DefinitionError(chk.problems)
    return out


def _a(label: str) -> str:
    return f"{'an' if label[:1] in 'aeiou' else 'a'} {label}"
