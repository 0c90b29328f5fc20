"""Compile an on-demand feature's DuckDB expression to a vectorised numpy evaluator.

Online = offline: the compiled evaluator must return exactly what DuckDB
returns for `TRY(<expr>)` (issue 18). We do not re-derive DuckDB's typing
rules or rewrites. DuckDB plans `SELECT TRY(<expr>) FROM <inputs>` with its
optimizer on (`json_serialize_plan(..., optimize := true)`) and we compile
that bound tree:

- every implicit cast is an explicit `__cast` node and every node carries the
  type DuckDB chose (`n / 2` casts n to DOUBLE; `i + 1` stays INTEGER and
  overflows at 2^31);
- the expression rewriter's changes are in the tree, and they change results:
  `n + 1 > 5` becomes `n > 4` (true, not an overflow, for n = INT64_MAX),
  `n * 2 = 5` becomes `constant_or_null(false, n)`, `x AND false` becomes
  `false` even when x would raise.

Evaluation model: each node yields `(values, null, err)` over all rows at once.
`err` marks rows whose evaluation raised in DuckDB (integer overflow, `//` or
`%` by zero, out-of-range cast); TRY turns them into NULL. Rows are evaluated
in every branch, but an error only counts where DuckDB evaluates the node for
that row: CASE branches on the rows that reach them, COALESCE arguments while
the row is still NULL, and — only when used as a CASE condition, DuckDB's
"select" mode — AND/OR short-circuit. As a value, AND/OR evaluate every child.
Values under null or err are arbitrary but valid (strings are '').

Anything outside the compiled subset raises `Unsupported`; the caller then uses
`duckdb_evaluate`, which is also the test oracle.
"""
from __future__ import annotations

import json
import math
import os
import re
import threading
from functools import reduce
from typing import Callable

import duckdb
import numpy as np
import pyarrow as pa

from fsapp import duck


class Unsupported(Exception):
    """The expression uses SQL outside the compiled subset (the caller evaluates it with DuckDB instead)."""


# DuckDB type -> numpy dtype the evaluator holds it in (all integers as int64,
# range-checked per type).
_DTYPES = {"BOOLEAN": np.bool_, "TINYINT": np.int64, "SMALLINT": np.int64, "INTEGER": np.int64,
           "BIGINT": np.int64, "FLOAT": np.float32, "DOUBLE": np.float64, "VARCHAR": object}
_INT_RANGE = {"TINYINT": (-2**7, 2**7 - 1), "SMALLINT": (-2**15, 2**15 - 1),
              "INTEGER": (-2**31, 2**31 - 1), "BIGINT": (-2**63, 2**63 - 1)}
_ARROW = {"BOOLEAN": pa.bool_(), "TINYINT": pa.int8(), "SMALLINT": pa.int16(), "INTEGER": pa.int32(),
          "BIGINT": pa.int64(), "FLOAT": pa.float32(), "DOUBLE": pa.float64(), "VARCHAR": pa.string()}
INT64_MIN = np.iinfo(np.int64).min
_PLACEHOLDER = "__fs_expr__"
_TABLE = "__fs_in"

# Planning and the DuckDB fallback open no database of their own: opening one
# costs ~30 ms (a restart planned three views' projections in ~0.1 s; a read
# of a feature DuckDB evaluates paid it on every call), a cursor of one kept
# per process ~30 µs. A cursor is a connection of its own (its temp tables and
# registered tables are its own), so threads plan and evaluate at once.
# Statistics propagation is off for the whole database: the offline store's
# cursors run without it (store.py), and planning an empty table with it on
# would fold columns into constants.
_db: tuple[int, duckdb.DuckDBPyConnection] | None = None
_db_lock = threading.Lock()
_forked_away: list = []  # a parent's database, inherited by a fork: never used nor closed (its threads are gone)


def _cursor() -> duckdb.DuckDBPyConnection:
    global _db
    with _db_lock:
        if _db is None or _db[0] != os.getpid():
            if _db is not None:
                _forked_away.append(_db[1])
            con = duck.connect()
            con.execute("SET disabled_optimizers = 'statistics_propagation'")
            _db = (os.getpid(), con)
        return _db[1].cursor()

Result = tuple  # (values, null, err)
Node = Callable[[dict, int], Result]


# ---------------------------------------------------------------- parsing


def _query(sql: str) -> str:
    # Parenthesised so the user's text is one operand; the structure check in
    # `_parse` rejects anything that escapes it ("1) FROM x, (SELECT 2").
    return f"SELECT TRY(({sql})) AS out FROM {_TABLE}"


def _strip_locations(node):
    if isinstance(node, dict):
        return {k: _strip_locations(v) for k, v in node.items() if not k.startswith("query_location")}
    if isinstance(node, list):
        return [_strip_locations(v) for v in node]
    return node


def _serialize(con, sql: str) -> dict:
    tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [sql]).fetchall()[0][0])
    if tree.get("error"):
        raise ValueError(f"on-demand expression does not parse: {tree.get('error_message')}")
    return tree


def _parse(con, sql: str, inputs: dict[str, str]) -> tuple[dict, list[tuple[dict, str]]]:
    """The JSON AST of `_query(sql)` and its column references resolved to
    input names. ValueError unless `sql` is exactly one scalar expression over
    the inputs; Unsupported for subqueries and `*`."""
    tree = _serialize(con, _query(sql))
    stmts = tree.get("statements", [])
    if len(stmts) == 1:
        stmt = _strip_locations(stmts[0])
        select = stmt["node"].get("select_list") or [{}]
        expr = (select[0].get("children") or [None])[0]
        shape = json.loads(json.dumps(stmt))
        if expr is not None:
            shape["node"]["select_list"][0]["children"][0] = _PLACEHOLDER
        template = _strip_locations(_serialize(con, _query("0"))["statements"][0])
        template["node"]["select_list"][0]["children"][0] = _PLACEHOLDER
        if expr is not None and shape == template:
            return tree, _resolve_columns(stmts[0], sql, inputs)
    raise ValueError(f"on-demand expression {sql!r} must be one scalar expression")


def _resolve_columns(stmt: dict, sql: str, inputs: dict[str, str]) -> list[tuple[dict, str]]:
    # DuckDB identifiers are case-insensitive; 'view.feature' is a two-part name.
    by_key: dict[tuple[str, ...], str] = {}
    for name in inputs:
        key = tuple(name.lower().split(".", 1))
        if key in by_key:
            raise ValueError(f"inputs {by_key[key]!r} and {name!r} differ only in case")
        by_key[key] = name
    refs: list[tuple[dict, str]] = []

    def walk(node):
        if isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, dict):
            cls = node.get("class")
            if cls in ("SUBQUERY", "STAR", "LAMBDA", "WINDOW"):
                raise Unsupported(f"{cls.lower()} in on-demand expression {sql!r}")
            if cls == "COLUMN_REF":
                key = tuple(c.lower() for c in node["column_names"])
                if key not in by_key:
                    raise ValueError(f"on-demand expression {sql!r} reads column {'.'.join(node['column_names'])!r}, "
                                     f"which is not an input (inputs: {', '.join(sorted(inputs))})")
                refs.append((node, by_key[key]))
            for v in node.values():
                walk(v)

    walk(stmt["node"]["select_list"])
    return refs


def _check_types(inputs: dict[str, str]) -> dict[str, str]:
    types = {name: t.upper() for name, t in inputs.items()}
    for name, t in types.items():
        if t not in _DTYPES:
            raise ValueError(f"input {name!r} has type {t!r}; on-demand inputs are one of {', '.join(_DTYPES)}")
    return types


def _plan(sql: str, types: dict[str, str]) -> tuple[dict, list[str]]:
    """DuckDB's optimized bound expression for TRY(sql) and the input name of
    each BOUND_REF index."""
    con = _cursor()
    try:
        tree, refs = _parse(con, sql, types)
        names = list(types)
        for node, name in refs:  # flat column names: no struct projection pushdown to undo
            node["column_names"] = [f"__in{names.index(name)}"]
        flat_sql = con.execute("SELECT json_deserialize_sql(?)", [json.dumps(tree)]).fetchall()[0][0]
        cols = ", ".join(f"__in{k} {types[n]}" for k, n in enumerate(names))
        con.execute(f"CREATE TEMP TABLE {_TABLE} ({cols})" if names else
                    f"CREATE TEMP TABLE {_TABLE} (__none INTEGER)")
        text = con.execute("SELECT json_serialize_plan(?, optimize := true)", [flat_sql]).fetchall()[0][0]
    finally:
        con.close()
    # DuckDB writes NaN constants as a bare NAN token, which is not JSON.
    text = re.sub(r'"(?:[^"\\]|\\.)*"|-?NAN\b', lambda m: m.group(0) if m.group(0)[0] == '"' else "NaN", text)
    plan = json.loads(text)
    if plan.get("error"):
        raise ValueError(f"on-demand expression {sql!r}: {plan.get('error_message')}")
    proj = plan["plans"][0]
    if proj["type"] != "LOGICAL_PROJECTION" or len(proj["expressions"]) != 1 \
            or [c["type"] for c in proj["children"]] != ["LOGICAL_GET"]:
        raise Unsupported(f"on-demand expression {sql!r} does not plan as a plain projection")
    get = proj["children"][0]
    outputs = get.get("column_indexes", [])
    if get.get("projection_ids"):
        outputs = [outputs[p] for p in get["projection_ids"]]
    ref_names = [names[c["index"]] if c["index"] < len(names) else "" for c in outputs]
    return proj["expressions"][0], ref_names


# ---------------------------------------------------------------- helpers


def _any(masks):
    return reduce(np.logical_or, masks)


def _type_of(node: dict) -> str:
    t = (node.get("return_type") or (node.get("value") or {}).get("type") or {})
    if t.get("id") not in _DTYPES or t.get("type_info") is not None:
        raise Unsupported(f"type {t.get('id')} in on-demand expression")
    return t["id"]


def _is_float(t: str) -> bool:
    return t in ("FLOAT", "DOUBLE")


def _float_lt(a, b):
    """DuckDB orders NaN above every number (and NaN = NaN); -0.0 = 0.0."""
    return ~np.isnan(a) & (np.isnan(b) | (a < b))


def _float_eq(a, b):
    return (a == b) | (np.isnan(a) & np.isnan(b))


def _compare(op: str, t: str):
    if _is_float(t):
        lt, eq = _float_lt, _float_eq
    else:
        def lt(a, b):
            return np.asarray(a < b, dtype=bool)

        def eq(a, b):
            return np.asarray(a == b, dtype=bool)
    return {"COMPARE_EQUAL": eq,
            "COMPARE_NOTEQUAL": lambda a, b: ~eq(a, b),
            "COMPARE_LESSTHAN": lt,
            "COMPARE_GREATERTHAN": lambda a, b: lt(b, a),
            "COMPARE_LESSTHANOREQUALTO": lambda a, b: ~lt(b, a),
            "COMPARE_GREATERTHANOREQUALTO": lambda a, b: ~lt(a, b)}.get(op)


def _out_of_range(v, t: str):
    lo, hi = _INT_RANGE[t]
    return (v < lo) | (v > hi)


def _int_arith(op: str, t: str):
    """Integer + - * // % with DuckDB's errors: overflow of the type, division
    by zero. Narrow types cannot overflow int64, so a range check suffices;
    BIGINT detects wrap-around."""
    big = t == "BIGINT"

    def run(a, b):
        if op in ("//", "%"):
            bad_div = (b == 0) | ((a == INT64_MIN) & (b == -1))
            safe = np.where(bad_div, 1, b)
            if op == "%":  # C remainder (sign of the dividend); MIN % -1 = 0
                return np.fmod(a, safe), b == 0
            q = np.floor_divide(a, safe)
            q = q + ((q * safe != a) & ((a < 0) != (safe < 0)))  # floor -> truncation toward zero
            err = bad_div if big else (b == 0) | _out_of_range(q, t)
            return q, err
        r = {"+": np.add, "-": np.subtract, "*": np.multiply}[op](a, b)
        if not big:
            return r, _out_of_range(r, t)
        if op == "+":
            return r, ((a ^ r) & (b ^ r)) < 0
        if op == "-":
            return r, ((a ^ b) & (a ^ r)) < 0
        nz = np.where(a == 0, 1, a)  # r // a == b exactly when a * b did not wrap
        return r, (a != 0) & ((np.floor_divide(r, nz) != b) | ((a == -1) & (b == INT64_MIN)))
    return run


def _float_arith(op: str):
    def run(a, b):
        if op == "//":  # DuckDB's // on floats is plain division that raises on a zero divisor
            return a / b, b == 0
        if op == "%":
            return np.fmod(a, b), None
        return {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide}[op](a, b), None
    return run


def _libm(f, fallback):
    """Element-wise C libm, as DuckDB calls it: numpy's SIMD exp/log/pow differ
    from glibc in the last bit for a few percent of inputs. Python's math
    raises where C returns inf/nan/-inf; those special values are exact in
    numpy, so it fills them."""
    def one(*xs):
        try:
            return f(*xs)
        except (ValueError, OverflowError):
            return float(fallback(*xs))

    ufunc = np.frompyfunc(one, 2 if f is math.pow else 1, 1)
    return lambda *xs: (ufunc(*xs).astype(np.float64), None)


def _round_half_away(x):
    t = np.trunc(x)  # np.where, not t + 0: keeps the sign of -0.0
    return np.where(np.abs(x - t) >= 0.5, t + np.sign(x), t).astype(x.dtype)


def _round_double(x, k):
    """DuckDB's round(DOUBLE, INTEGER): scale by 10^|k| (std::pow), round half
    away from zero, scale back; an inf/nan input is returned as is, an inf/nan
    result gives the input (k >= 0) or 0 (k < 0)."""
    ks = np.asarray(k, dtype=np.int64)
    mods = {int(p): _libm_pow10(int(p)) for p in np.unique(np.abs(ks))}
    mod = np.vectorize(mods.__getitem__, otypes=[np.float64])(np.abs(ks)) if ks.size else ks.astype(float)
    pos = _round_half_away(x * mod) / mod
    neg = _round_half_away(x / mod) * mod
    r = np.where(ks < 0, neg, pos)
    bad = ~np.isfinite(r)
    # inf/nan inputs come back as they are: round('inf', -1) = inf, not 0
    return np.where(~np.isfinite(x), x, np.where(bad, np.where(ks < 0, 0.0, x), r)), None


def _libm_pow10(p: int) -> float:
    try:
        return math.pow(10.0, p)
    except OverflowError:
        return math.inf


_CASE_TABLES: dict[str, dict[int, str]] = {}


def _case_table(fn: str) -> dict[int, str]:
    """Code point -> DuckDB's lower/upper of it, where it differs (DuckDB maps
    code point by code point: upper('ß') = 'ẞ', lower('İ') = 'i', unlike
    Python's full case mapping). Built once from DuckDB itself."""
    if fn not in _CASE_TABLES:
        con = _cursor()
        try:
            rows = con.execute(f"SELECT i, {fn}(chr(i::INTEGER)) FROM range(1, 1114112) t(i) "
                               f"WHERE (i < 55296 OR i > 57343) AND {fn}(chr(i::INTEGER)) <> chr(i::INTEGER)").fetchall()
        finally:
            con.close()
        _CASE_TABLES[fn] = {int(i): s for i, s in rows}
    return _CASE_TABLES[fn]


def _strings(f):
    ufunc = np.frompyfunc(f, 1, 1)
    return lambda a: ufunc(a).astype(object)


# ---------------------------------------------------------------- casts


def _cast(src: str, dst: str):
    """values -> (values, err) for CAST(src AS dst); None if not compiled."""
    if src == dst:
        return lambda v: (v, None)
    if src in _INT_RANGE and dst in _INT_RANGE:
        return lambda v: (v, _out_of_range(v, dst))
    if src in _INT_RANGE or src == "BOOLEAN":
        if _is_float(dst):
            return lambda v: (v.astype(_DTYPES[dst]), None)
        if dst in _INT_RANGE:
            return lambda v: (v.astype(np.int64), None)
        if dst == "BOOLEAN":
            return lambda v: (v != 0, None)
        if dst == "VARCHAR":
            if src == "BOOLEAN":
                return lambda v: (np.where(v, "true", "false").astype(object), None)
            return lambda v: (_strings(str)(v), None)
    if _is_float(src):
        if dst == "BOOLEAN":
            return lambda v: (v != 0, None)
        if dst == "DOUBLE":
            return lambda v: (v.astype(np.float64), None)
        if dst == "FLOAT":  # a finite double beyond float's range raises; inf/nan pass
            def to_float(v):
                f = v.astype(np.float32)
                return f, np.isfinite(v) & np.isinf(f)
            return to_float
        if dst in _INT_RANGE:  # nearbyint (half to even), then range check
            lo, hi = _INT_RANGE[dst]

            def to_int(v):
                r = np.rint(v.astype(np.float64))
                err = ~np.isfinite(r) | (r < lo) | (r >= float(hi) + 1)
                return np.where(err, 0, r).astype(np.int64), err
            return to_int
    return None  # VARCHAR -> number parsing, DOUBLE -> VARCHAR formatting: not compiled


# ---------------------------------------------------------------- the compiler


class _Builder:
    def __init__(self, sql: str, ref_names: list[str]):
        self.sql, self.ref_names, self.used = sql, ref_names, set()

    def unsupported(self, what: str):
        return Unsupported(f"{what} in on-demand expression {self.sql!r}")

    # -- value mode

    def value(self, node: dict) -> tuple[Node, str]:
        cls, kind = node["expression_class"], node["type"]
        if cls == "BOUND_REF":
            name = self.ref_names[node["index"]]
            self.used.add(name)
            return (lambda env, n: env[name]), _type_of(node)
        if cls == "BOUND_CONSTANT":
            return self.constant(node)
        if cls == "BOUND_CONJUNCTION":
            return self.conjunction(kind, [self.value(c)[0] for c in node["children"]]), "BOOLEAN"
        if cls == "BOUND_CASE":
            return self.case(node)
        if cls == "BOUND_OPERATOR":
            return self.operator(node)
        if cls == "BOUND_FUNCTION":
            if kind.startswith("COMPARE_"):
                return self.comparison(node)
            if kind == "OPERATOR_CAST":
                return self.cast(node)
            return self.function(node)
        raise self.unsupported(f"{cls} {kind}")

    def constant(self, node):
        t, value = _type_of(node), node["value"]
        is_null = value["is_null"]
        x = "" if t == "VARCHAR" and is_null else (0 if is_null else value["value"])

        cache: dict[int, tuple] = {}

        def run(env, n):  # PERF: built once per batch size; read-only, so no kernel can change them
            hit = cache.get(n)
            if hit is None:
                hit = (np.full(n, x, dtype=_DTYPES[t]), np.full(n, is_null), np.zeros(n, bool))
                for a in hit:
                    a.flags.writeable = False
                if len(cache) < 64 and n <= 4096:  # request-sized batches; a view's projection sees big ones
                    cache[n] = hit
            return hit
        return run, t

    def strict(self, kernel, args: list[Node]) -> Node:
        """A function DuckDB skips on NULL rows: null if any argument is null;
        `kernel` returns (values, rows that raise or None)."""
        def run(env, n):
            outs = [a(env, n) for a in args]
            null, err = _any([o[1] for o in outs]), _any([o[2] for o in outs])
            v, bad = kernel(*[o[0] for o in outs])
            if bad is not None:
                err = err | (bad & ~null)
            return v, null, err
        return run

    def conjunction(self, kind: str, kids: list[Node]) -> Node:
        is_and = kind == "CONJUNCTION_AND"
        if kind not in ("CONJUNCTION_AND", "CONJUNCTION_OR"):
            raise self.unsupported(kind)

        def run(env, n):  # three-valued logic; every child is evaluated
            outs = [k(env, n) for k in kids]
            err = _any([o[2] for o in outs])
            decided = _any([(~o[0] if is_and else o[0]) & ~o[1] for o in outs])  # a false (true) child
            null = ~decided & _any([o[1] for o in outs])
            return (~decided if is_and else decided), null, err
        return run

    def case(self, node):
        t = _type_of(node)
        checks = [(self.select(c["when_expr"]), self.typed(c["then_expr"], t)) for c in node["case_checks"]]
        otherwise = self.typed(node["else_expr"], t)

        def run(env, n):
            ov, on, oe = otherwise(env, n)
            values, null, err = ov.copy(), on.copy(), np.zeros(n, bool)
            pending, taken = np.ones(n, bool), np.zeros(n, bool)
            for when, then in checks:
                hit, werr = when(env, n)
                err |= werr & pending
                pending &= ~werr
                hit &= pending
                tv, tn, te = then(env, n)
                values[hit], null[hit] = tv[hit], tn[hit]
                err |= te & hit
                pending &= ~hit
                taken |= hit
            err |= oe & pending
            return values, null, err
        return run, t

    def operator(self, node):
        kind, kids = node["type"], node["children"]
        if kind == "OPERATOR_TRY":
            child, t = self.value(kids[0])

            def run_try(env, n):
                v, null, err = child(env, n)
                return v, null | err, np.zeros(n, bool)
            return run_try, t
        if kind == "OPERATOR_NOT":
            child = self.typed(kids[0], "BOOLEAN")
            return (lambda env, n: (lambda v, nl, e: (~v, nl, e))(*child(env, n))), "BOOLEAN"
        if kind in ("OPERATOR_IS_NULL", "OPERATOR_IS_NOT_NULL"):
            child, _ = self.value(kids[0])
            want = kind == "OPERATOR_IS_NULL"
            return (lambda env, n: (lambda v, nl, e: (nl == want, np.zeros(n, bool), e))(*child(env, n))), "BOOLEAN"
        if kind == "OPERATOR_COALESCE":
            t = _type_of(node)
            args = [self.typed(k, t) for k in kids]

            def run_coalesce(env, n):  # argument k runs only on rows still NULL
                values, null, err = (x.copy() for x in args[0](env, n))
                for arg in args[1:]:
                    pending = null & ~err
                    v, nl, e = arg(env, n)
                    err |= e & pending
                    fill = pending & ~e
                    values[fill], null[fill] = v[fill], nl[fill]
                return values, null, err
            return run_coalesce, t
        raise self.unsupported(kind)

    def typed(self, node, t: str) -> Node:
        fn, got = self.value(node)
        if got != t:
            raise self.unsupported(f"{got} where DuckDB expects {t}")
        return fn

    def comparison(self, node):
        kind, (left, right) = node["type"], node["children"]
        lf, lt = self.value(left)
        rf, rt = self.value(right)
        if lt != rt:
            raise self.unsupported(f"comparison of {lt} with {rt}")
        if kind in ("COMPARE_DISTINCT_FROM", "COMPARE_NOT_DISTINCT_FROM"):
            eq, distinct = _compare("COMPARE_EQUAL", lt), kind == "COMPARE_DISTINCT_FROM"

            def run_distinct(env, n):  # NULL-safe: never NULL
                (a, an, ae), (b, bn, be) = lf(env, n), rf(env, n)
                same = (an & bn) | (~an & ~bn & eq(a, b))
                return same != distinct, np.zeros(n, bool), ae | be
            return run_distinct, "BOOLEAN"
        op = _compare(kind, lt)
        if op is None:
            raise self.unsupported(kind)
        return self.strict(lambda a, b: (op(a, b), None), [lf, rf]), "BOOLEAN"

    def cast(self, node):
        child, src = self.value(node["children"][0])
        dst = _type_of(node)
        kernel = _cast(src, dst)
        if kernel is None:
            raise self.unsupported(f"CAST({src} AS {dst})")
        run = self.strict(kernel, [child])
        if not (node.get("function_data") or {}).get("try_cast"):
            return run, dst

        def run_try_cast(env, n):
            v, null, err = run(env, n)
            return v, null | err, np.zeros(n, bool)
        return run_try_cast, dst

    def function(self, node):
        name = node["qname"]["path"][-1]
        t = _type_of(node)
        kids = node["children"]
        args = [self.value(k) for k in kids]
        fns, types = [a[0] for a in args], [a[1] for a in args]
        same = all(x == t for x in types)
        if name in ("+", "-", "*", "/", "//", "%") and same and len(kids) == 2:
            if _is_float(t):
                return self.strict(_float_arith(name), fns), t
            if t in _INT_RANGE and name != "/":
                return self.strict(_int_arith(name, t), fns), t
        if name in ("-", "abs") and same and len(kids) == 1:
            if _is_float(t):
                return self.strict(lambda a: ((-a if name == "-" else np.abs(a)), None), fns), t
            if t in _INT_RANGE:
                def negate(a):
                    r = -a if name == "-" else np.abs(a)
                    return r, (a == INT64_MIN) | _out_of_range(r, t)
                return self.strict(negate, fns), t
        if name in ("sqrt", "ln", "log10", "exp", "pow", "power") and t == "DOUBLE" and same:
            kernel = {"sqrt": lambda a: (np.sqrt(a), None),  # IEEE sqrt is correctly rounded everywhere
                      "ln": _libm(math.log, np.log), "log10": _libm(math.log10, np.log10),
                      "exp": _libm(math.exp, np.exp), "pow": _libm(math.pow, np.power),
                      "power": _libm(math.pow, np.power)}[name]
            return self.strict(kernel, fns), t
        if name in ("floor", "ceil", "ceiling") and same and len(kids) == 1:
            if _is_float(t):
                return self.strict(lambda a: ((np.floor if name == "floor" else np.ceil)(a), None), fns), t
            if t in _INT_RANGE:
                return self.strict(lambda a: (a, None), fns), t
        if name == "round":
            return self.round(node, t, fns, types), t
        if name == "sign" and t == "TINYINT" and len(kids) == 1 and (types[0] in _INT_RANGE or _is_float(types[0])):
            return self.strict(lambda a: (np.nan_to_num(np.sign(a), nan=0).astype(np.int64), None), fns), t
        if name in ("least", "greatest") and same:
            return self.extremum(name, t, fns), t
        if name == "constant_or_null" and types[0] == t:
            def run_const(env, n):  # the constant, NULL where any other argument is NULL
                outs = [f(env, n) for f in fns]
                return outs[0][0], _any([o[1] for o in outs]), _any([o[2] for o in outs])
            return run_const, t
        if t == "VARCHAR" and same and name == "||" and len(kids) == 2:
            return self.strict(lambda a, b: (a + b, None), fns), t
        if t == "VARCHAR" and same and name == "concat":
            def run_concat(env, n):  # NULL arguments are skipped
                outs = [f(env, n) for f in fns]
                parts = [np.where(nl, "", v) for v, nl, _ in outs]
                return reduce(np.add, parts).astype(object), np.zeros(n, bool), _any([o[2] for o in outs])
            return run_concat, t
        if name in ("lower", "upper", "lcase", "ucase") and t == "VARCHAR" and same:
            table = _case_table("lower" if name in ("lower", "lcase") else "upper")
            return self.strict(lambda a: (_strings(lambda s: s.translate(table))(a), None), fns), t
        if name == "length" and t == "BIGINT" and types == ["VARCHAR"]:  # code points, not graphemes
            return self.strict(lambda a: (_strings(len)(a).astype(np.int64), None), fns), t
        raise self.unsupported(f"{name}({', '.join(types)}) -> {t}")

    def round(self, node, t, fns, types):
        if len(fns) == 1 and types == [t]:
            if _is_float(t):
                return self.strict(lambda a: (_round_half_away(a), None), fns)
            if t in _INT_RANGE:
                return self.strict(lambda a: (a, None), fns)
        if len(fns) == 2 and types == ["DOUBLE", "INTEGER"] and t == "DOUBLE":
            return self.strict(_round_double, fns)
        prec = node["children"][1] if len(fns) == 2 else None
        if t in _INT_RANGE and types[0] == t and prec is not None and prec["expression_class"] == "BOUND_CONSTANT" \
                and not prec["value"]["is_null"] and -18 <= prec["value"]["value"]:
            k = prec["value"]["value"]
            if k >= 0:
                return self.strict(lambda a, _: (a, None), fns)
            p = 10 ** -k

            def round_int(a, _):  # to a multiple of 10^-k, half away from zero
                q, _ = _int_arith("//", "BIGINT")(a, np.full_like(a, p))  # truncated
                q = q + np.where(2 * np.abs(a - q * p) >= p, np.sign(a), 0)
                return _int_arith("*", t)(q, np.full_like(q, p))
            return self.strict(round_int, fns)
        raise self.unsupported(f"round({', '.join(types)})")

    def extremum(self, name, t, fns):
        lt = _compare("COMPARE_LESSTHAN", t)

        def run(env, n):  # NULL arguments are ignored; NULL only if all are
            outs = [f(env, n) for f in fns]
            values, null, _ = (x.copy() for x in outs[0])
            for v, nl, _ in outs[1:]:
                better = lt(v, values) if name == "least" else lt(values, v)
                take = ~nl & (null | better)
                values[take], null[take] = v[take], False
            return values, null, _any([o[2] for o in outs])
        return run

    # -- select mode (CASE conditions)

    def select(self, node: dict) -> Callable[[dict, int], tuple]:
        """(rows where the condition is true, rows where it raised) with
        DuckDB's short-circuit: AND/OR evaluate a child only on the rows the
        earlier children left undecided."""
        if node["expression_class"] == "BOUND_CONJUNCTION" and node["type"] in ("CONJUNCTION_AND", "CONJUNCTION_OR"):
            is_and = node["type"] == "CONJUNCTION_AND"
            kids = [self.select(c) for c in node["children"]]

            def run(env, n):
                undecided, true, err = np.ones(n, bool), np.zeros(n, bool), np.zeros(n, bool)
                for kid in kids:
                    hit, e = kid(env, n)
                    err |= e & undecided
                    undecided &= ~e
                    if is_and:
                        undecided &= hit
                    else:
                        true |= undecided & hit
                        undecided &= ~hit
                return (undecided if is_and else true), err
            return run
        fn = self.typed(node, "BOOLEAN")

        def run_value(env, n):
            v, null, err = fn(env, n)
            return v & ~null & ~err, err
        return run_value


# ---------------------------------------------------------------- public API


class CompiledExpr:
    """`sql` compiled against `inputs`; call it on a batch of columns."""

    def __init__(self, sql: str, inputs: dict[str, str], root: Node, output_type: str, used: set[str],
                 checked: Node | None = None):
        self.sql, self._types, self._root, self._checked = sql, inputs, root, checked
        self.output_type = output_type
        self.inputs = tuple(name for name in inputs if name in used)

    def __repr__(self) -> str:
        return f"CompiledExpr({self.sql!r} -> {self.output_type})"

    def __call__(self, columns: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        n = _row_count(columns)
        env = make_env(columns, {name: self._types[name] for name in self.inputs}, n, self.sql)
        with np.errstate(all="ignore"):
            return self.run(env, n)

    def run(self, env: dict, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The expression over an environment from `make_env` (several
        expressions over the same columns share one; the caller sets
        np.errstate(all="ignore") around them)."""
        values, null, _ = self._root(env, n)
        return _output(values, self.output_type), np.asarray(null, dtype=bool).copy()

    def run_checked(self, env: dict, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As `run`, of `sql` itself rather than TRY(sql) (compiled with
        checked=True): (values, null, the rows on which DuckDB raises)."""
        if self._checked is None:
            raise ValueError("compile_expression(..., checked=True) compiles run_checked")
        values, null, err = self._checked(env, n)
        return _output(values, self.output_type), np.asarray(null, dtype=bool).copy(), np.asarray(err, dtype=bool)


def make_env(columns: dict, types: dict[str, str], n: int, what: str = "on-demand expression") -> dict:
    """The evaluators' view of the input columns: name -> (values in the
    input type's dtype, null flags, no errors)."""
    env = {}
    for name, t in types.items():
        if name not in columns:
            raise ValueError(f"{what} needs column {name!r}")
        values, null = columns[name]
        null = np.asarray(null, dtype=bool)
        if t == "VARCHAR":
            values = np.where(null, "", np.asarray(values, dtype=object)).astype(object)
        else:  # FLOAT inputs arrive as float64 and are rounded to float32 as DuckDB stores them
            values = np.asarray(values).astype(_DTYPES[t])
        env[name] = (values, null, np.zeros(n, bool))
    return env


def compile_expression(sql: str, inputs: dict[str, str], *, checked: bool = False) -> CompiledExpr:
    """sql: one DuckDB scalar expression. inputs: column name -> DuckDB type
    name; a qualified input is named 'view.feature'. Raises Unsupported for
    constructs outside the subset, ValueError for a column that is not an
    input or an expression DuckDB rejects. `checked`: also compile
    `run_checked` (the expression under the TRY, with the rows that raise:
    a feature view's projection refuses a batch where DuckDB raises)."""
    types = _check_types(inputs)
    root, ref_names = _plan(sql, types)
    if root["expression_class"] == "BOUND_CONSTANT":  # e.g. `flag OR true`: the TRY was folded away
        root = {"expression_class": "BOUND_OPERATOR", "type": "OPERATOR_TRY", "children": [root],
                "return_type": root["value"]["type"]}
    builder = _Builder(sql, ref_names)
    fn, t = builder.value(root)
    inner = None
    if checked:  # the optimizer may have dropped a TRY it proved idle: then the root is the expression
        inner, inner_t = builder.value(root["children"][0]) if root.get("type") == "OPERATOR_TRY" else (fn, t)
        if inner_t != t:
            raise Unsupported(f"expression {sql!r}: TRY changes its type ({inner_t} -> {t})")
    return CompiledExpr(sql, types, fn, t, builder.used, inner)


def duckdb_evaluate(sql: str, inputs: dict[str, str], columns) -> tuple[np.ndarray, np.ndarray]:
    """The reference and the fallback: the same contract as CompiledExpr,
    evaluated by DuckDB as SELECT TRY(<sql>) over an Arrow table of the
    columns (a qualified input 'v.f' is field f of a STRUCT column v, so
    `v.f` resolves)."""
    types = _check_types(inputs)
    n = _row_count(columns)
    flat: dict[str, pa.Array] = {}
    structs: dict[str, dict[str, pa.Array]] = {}
    for name, t in types.items():
        values, null = columns.get(name, (np.zeros(n, _DTYPES[t]), np.ones(n, bool)))
        null = np.asarray(null, dtype=bool)
        if t == "VARCHAR":
            arr = pa.array(np.where(null, None, np.asarray(values, dtype=object)), type=pa.string())
        else:
            arr = pa.array(np.asarray(values).astype(_ARROW[t].to_pandas_dtype()), type=_ARROW[t], mask=null)
        if "." in name:
            view, feature = name.split(".", 1)
            structs.setdefault(view, {})[feature] = arr
        else:
            flat[name] = arr
    for view, fields in structs.items():
        flat[view] = pa.StructArray.from_arrays(list(fields.values()), names=list(fields))
    table = pa.table(flat) if flat else pa.table({"__none": pa.nulls(n, pa.int32())})
    con = _cursor()
    try:
        _parse(con, sql, types)  # same validation and errors as compile_expression
        con.register(_TABLE, table)
        result = con.sql(_query(sql)).to_arrow_table().column(0).combine_chunks()
    finally:
        con.close()
    null = np.asarray(result.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if pa.types.is_string(result.type) or pa.types.is_large_string(result.type):
        values = np.array(["" if v is None else v for v in result.to_pylist()], dtype=object)
    elif pa.types.is_null(result.type):
        values = np.zeros(n, np.float64)
    else:
        values = result.fill_null(pa.scalar(False if pa.types.is_boolean(result.type) else 0, result.type)) \
            .to_numpy(zero_copy_only=False)
    return _output(values, _arrow_type_name(result.type)), null


def _arrow_type_name(t: pa.DataType) -> str:
    for name, at in _ARROW.items():
        if t == at:
            return name
    return str(t)


def _output(values, t: str) -> np.ndarray:
    if t == "VARCHAR":
        return np.asarray(values, dtype=object)
    if t == "BOOLEAN":
        return np.asarray(values, dtype=bool)
    if t in _INT_RANGE:
        return np.asarray(values).astype(np.int64)
    return np.asarray(values).astype(np.float64)


def _row_count(columns) -> int:
    for values, _ in columns.values():
        return len(values)
    return 1
