"""On-demand features at read time: request columns and the served values of
their input features in, the features out, by the same rules the training
set applies in DuckDB (fsapp.offline.historical):

- a SQL feature is `TRY(CAST((expr) AS T))`, T its served type (integers as
  BIGINT, other numbers as DOUBLE, BOOLEAN, VARCHAR): a row whose expression
  fails in DuckDB (integer division by zero, an out-of-range cast) is NULL;
- a DOUBLE that is not finite (x / 0, ln(0)) is NULL (JSON has no inf/NaN,
  and a training set must not hold what serving cannot);
- SQL runs through `fsapp.ondemand.compiler` (numpy, vectorised over the
  request's rows; no DuckDB query per request); an expression outside its
  subset is evaluated by DuckDB itself (correct, slower: ~0.5 ms a request);
- a Python function gets a pandas DataFrame of the request columns and the
  input features (bare feature names) and returns one with its outputs.
"""
from __future__ import annotations

import numpy as np

from fsapp.engine.errors import BatchError, OnDemandFunctionError, RequestDataError

_INT_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "HUGEINT")


def value_kind(typ: str) -> str:
    """'int', 'float', 'bool' or 'str': how a value of DuckDB type `typ` is held."""
    if typ in _INT_TYPES:
        return "int"
    if typ == "BOOLEAN":
        return "bool"
    if typ == "VARCHAR":
        return "str"
    return "float"


_NUMPY = {"int": np.int64, "float": np.float64, "bool": np.bool_, "str": object}
_ZERO = {"int": 0, "float": 0.0, "bool": False, "str": ""}


_ALLOWED = {"int": {int}, "float": {int, float}, "bool": {bool}, "str": {str}}
_NOUN = {"int": "integers", "float": "numbers", "bool": "true/false", "str": "strings"}


def column(values, typ: str, what: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(values, null mask) of a list of JSON-ish values of DuckDB type `typ`.
    `what` names a request column: a value of the wrong type is a BatchError
    that says which column takes what."""
    kind = value_kind(typ)
    n = len(values)
    types = set(map(type, values))  # PERF: one C-level pass (benches/bench_ondemand.py)
    if what is not None and not types <= _ALLOWED[kind] | {type(None)}:
        bad = next(v for v in values if v is not None and type(v) not in _ALLOWED[kind])
        raise RequestDataError(f"request column {what!r} ({typ}) takes {_NOUN[kind]} or null, got {bad!r}")
    try:
        if type(None) not in types:
            return np.array(values, dtype=_NUMPY[kind]) if n else np.zeros(0, _NUMPY[kind]), np.zeros(n, bool)
        mask = np.fromiter((v is None for v in values), dtype=bool, count=n)
        zero = _ZERO[kind]
        return np.array([zero if v is None else v for v in values], dtype=_NUMPY[kind]), mask
    except OverflowError:
        raise RequestDataError(f"request column {what or '?'!r} ({typ}): a value is out of the 64-bit range") \
            from None


def finish(values: np.ndarray, mask: np.ndarray, typ: str) -> tuple[np.ndarray, np.ndarray]:
    """A computed column as served: its type's dtype; a non-finite DOUBLE is null."""
    kind = value_kind(typ)
    if kind == "float":
        values = np.asarray(values, dtype=np.float64)
        mask = mask | ~np.isfinite(values)
    elif kind == "int":
        values = np.asarray(values, dtype=np.int64)
    elif kind == "bool":
        values = np.asarray(values, dtype=bool)
    else:
        values = np.asarray(values, dtype=object)
    return values, np.asarray(mask, dtype=bool)


def served_sql(expr: str, typ: str) -> str:
    """The expression as served (before TRY, which the evaluators add)."""
    return f"CAST(({expr}) AS {typ})"


def input_name(view: str, feature: str) -> str:
    """How an expression names an input feature: view.feature."""
    return f"{view}.{feature}"


class Evaluator:
    """Computes an on-demand view version's features for a batch of rows."""

    def __init__(self, info):
        d = info.definition
        self.name = info.name
        self.request = info.request
        feat_types = {(v.name, f): dict(v.features)[f] for v, f in info.input_pairs}
        self.inputs = [(input_name(v.name, f), feat_types[(v.name, f)]) for v, f in info.input_pairs]
        self.outputs = info.features
        self.types = dict(self.request) | dict(self.inputs)
        self.function = None
        self.sql: dict = {}
        self.compiled: dict = {}
        if d.function is not None:
            from fsapp.ondemand.python_udf import load_function
            self.function = load_function(d.function, d.function_name)
            return
        from fsapp.ondemand.compiler import Unsupported, compile_expression

        exprs = {p.name: p.expr for p in d.features}
        for name, typ in self.outputs:
            sql = self.sql[name] = served_sql(exprs[name], typ)
            try:
                self.compiled[name] = compile_expression(sql, self.types)
            except Unsupported:
                self.compiled[name] = None  # DuckDB evaluates it (see __call__)

    def missing_request(self, given) -> list[str]:
        return [c for c, _ in self.request if c not in given]

    def __call__(self, request: dict, inputs: dict, n: int) -> dict:
        """request: column -> list of values (checked against its type);
        inputs: 'view.feature' -> list of served values. Returns feature ->
        (values, null mask) in served dtypes."""
        cols = {c: column(request[c], t, c) for c, t in self.request}
        cols |= {name: column(inputs[name], t) for name, t in self.inputs}
        if self.function is not None:
            return call_function(self.function, self.name, cols, self.request + self.inputs, self.outputs, n)
        from fsapp.ondemand.compiler import duckdb_evaluate, make_env

        out = {}
        env = make_env(cols, self.types, n, f"on-demand view {self.name}")  # PERF: shared by its expressions
        with np.errstate(all="ignore"):
            for name, typ in self.outputs:
                fn = self.compiled[name]
                vals, mask = fn.run(env, n) if fn is not None else duckdb_evaluate(self.sql[name], self.types, cols)
                out[name] = finish(vals, mask, typ)
        return out


def call_function(fn, view: str, cols: dict, in_types: list, outputs: list, n: int) -> dict:
    """Runs a Python on-demand function over a pandas DataFrame of the input
    columns (request columns, then input features by their bare names;
    nullable dtypes: Int64, boolean, float64 with NaN, object with None)."""
    try:
        import pandas as pd
    except ImportError:
        raise OnDemandFunctionError(f"on-demand view {view} is a Python function over pandas; install pandas") \
            from None
    data = {}
    for name, typ in in_types:
        vals, mask = cols[name]
        kind = value_kind(typ)
        bare = name.split(".", 1)[1] if "." in name else name
        if kind == "float":
            data[bare] = pd.Series(np.where(mask, np.nan, vals), dtype="float64")
        else:
            dtype = {"int": "Int64", "bool": "boolean", "str": "object"}[kind]
            s = pd.Series(vals, dtype=dtype if kind != "str" else object)
            data[bare] = s.mask(pd.Series(mask)) if kind != "str" else s.where(~pd.Series(mask), None)
    df = pd.DataFrame(data, index=pd.RangeIndex(n))
    try:
        result = fn(df)
    except Exception as e:  # noqa: BLE001 - the definition's own error, said as such
        raise OnDemandFunctionError(f"on-demand view {view}: its function raised {type(e).__name__}: {e}") from e
    out = {}
    for name, typ in outputs:
        if not hasattr(result, "columns") or name not in result.columns or len(result) != n:
            raise OnDemandFunctionError(f"on-demand view {view}: its function must return a DataFrame of {n} row(s) "
                                 f"with column {name!r}")
        s = result[name]
        mask = s.isna().to_numpy(dtype=bool)
        kind = value_kind(typ)
        try:
            if kind == "str":
                vals = np.array([None if m else str(v) for v, m in zip(s.tolist(), mask)], dtype=object)
            else:
                dtype = {"int": "Int64", "float": "float64", "bool": "boolean"}[kind]
                vals = s.astype(dtype).fillna(0 if kind != "bool" else False).to_numpy(
                    dtype={"int": np.int64, "float": np.float64, "bool": bool}[kind])
        except (TypeError, ValueError) as e:
            raise OnDemandFunctionError(f"on-demand view {view}: output {name!r} is declared {typ} but holds values "
                                 f"that are not ({e})") from None
        out[name] = finish(vals, mask, typ)
    return out


__all__ = ["Evaluator", "column", "finish", "served_sql", "call_function", "value_kind"]
