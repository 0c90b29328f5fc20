"""On-demand features in training sets: the same definitions applied to the
label rows' request columns and the point-in-time values of their inputs.

SQL features are computed in the training set's own DuckDB query, each as
`TRY(CAST((expr) AS T))` in a scope that has the request columns (cast to
their declared types) and one STRUCT column per source view holding its
input features, so `view.feature` means there what it means online; a
non-finite DOUBLE is NULL (fsapp.ondemand.evaluate states the rules).
Python features run the view's function over the result, as online.
"""
from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa

from fsapp.errors import EntityDataFrameError
from fsapp.offline import pit
from fsapp.offline.views import quote_ident as qi
from fsapp.registry.catalog import output_name

_ids = itertools.count()


def split(registry, features) -> tuple[list, list]:
    """Feature references → (stored ones as given, [(OnDemandInfo, feature)])."""
    from fsapp.registry.model import FeatureRef

    stored, on_demand = [], []
    for f in features:
        if isinstance(f, str) and ":" in f:
            ref = FeatureRef.parse(f)
            try:
                entry = registry.get(ref.view, ref.version)
            except Exception:  # noqa: BLE001 - not in the registry: the offline store says what is wrong
                entry = None
            if entry is not None and entry.kind == "on_demand_view":
                info = registry.view_or_on_demand(ref.view, ref.version)
                names = [n for n, _ in info.features] if ref.feature == "*" else [ref.feature]
                for n in names:
                    if n not in dict(info.features):
                        from fsapp.errors import UnknownFeatureError
                        raise UnknownFeatureError(f"on-demand view {ref.view} has no feature {n!r}; it has "
                                                  f"{', '.join(n for n, _ in info.features)}")
                    on_demand.append((info, n))
                continue
        stored.append(f)
    return stored, on_demand


def hidden_inputs(on_demand, requested: set) -> list[tuple[str, str]]:
    """(view, feature) inputs of the on-demand features that are not requested."""
    out = []
    for info in dict.fromkeys(i for i, _ in on_demand):
        for v, f in info.input_pairs:
            if (v.name, f) not in requested and (v.name, f) not in out:
                out.append((v.name, f))
    return out


def with_on_demand(cur, q: str, cols: list[str], parts: list, columns: dict, hidden: list, on_demand: list,
                   full_feature_names: bool, keep, result_cls):
    """The training set with its on-demand features after the others."""
    infos = list(dict.fromkeys(i for i, _ in on_demand))
    for info in infos:
        missing = [c for c, _ in info.request if c not in cols]
        if missing:
            raise EntityDataFrameError(f"on-demand view {info.name} needs the request column(s) "
                                       f"{', '.join(missing)} in the entity_df (it has {', '.join(cols)})")
    if parts:
        base = pit.training_set_sql(q, cols, parts, extra=["q.__row AS __fs_row"], order=False)
    else:
        base = f"SELECT {', '.join(f'q.{qi(c)}' for c in cols)}, q.__row AS __fs_row FROM {q} q"
    hidden_cols = [columns[h] for h in hidden]
    ctes, sel, joins = [f"__fs_b AS MATERIALIZED ({base})"], [], []
    python = []
    for k, info in enumerate(infos):
        wanted = [f for i, f in on_demand if i is info]
        if info.definition.function is not None:
            python.append((info, wanted))
            continue
        tag = f"__fs_od{k}"
        scope = [f"CAST(__fs_b.{qi(c)} AS {t}) AS {qi(c)}" for c, t in info.request]
        by_view: dict = {}
        for v, f in info.input_pairs:
            by_view.setdefault(v.name, []).append(f"{qi(f)} := __fs_b.{qi(columns[(v.name, f)])}")
        scope += [f"struct_pack({', '.join(fields)}) AS {qi(v)}" for v, fields in by_view.items()]
        exprs = {p.name: p.expr for p in info.definition.features}
        types = dict(info.features)
        values = []
        for f in wanted:
            v = f"TRY(CAST(({exprs[f]}) AS {types[f]}))"
            values.append(f"{v} AS {qi(f)}")
        ctes.append(f"{tag}_s AS (SELECT __fs_b.__fs_row, {', '.join(scope)} FROM __fs_b)")
        ctes.append(f"{tag} AS (SELECT __fs_row, {', '.join(values)} FROM {tag}_s)")
        joins.append(f"LEFT JOIN {tag} ON {tag}.__fs_row = __fs_b.__fs_row")
        for f in wanted:
            col = f"{tag}.{qi(f)}"
            if types[f] == "DOUBLE":  # not finite: NULL (JSON cannot serve it)
                col = f"CASE WHEN isfinite({col}) THEN {col} END"
            sel.append(f"{col} AS {qi(output_name(info.name, f, full_feature_names))}")
    drop = ", ".join(qi(c) for c in ["__fs_row"] + hidden_cols)
    keep_sql = f"__fs_b.* EXCLUDE ({drop})" if not python else "__fs_b.*"
    sql = (f"WITH {', '.join(ctes)} SELECT {', '.join([keep_sql] + sel)} FROM __fs_b {' '.join(joins)} "
           f"ORDER BY __fs_b.__fs_row")
    if not python:
        return result_cls(cur, sql, keep)
    return _python_features(cur, sql, python, columns, hidden_cols, full_feature_names, keep, result_cls)


def _python_features(cur, sql, python, columns, hidden_cols, full_feature_names, keep, result_cls):
    """Runs the Python on-demand functions over the computed training set
    (the columns converted as online converts served values) and returns it
    as a result backed by that Arrow table."""
    from fsapp.ondemand.evaluate import call_function, value_kind

    table = cur.sql(sql).to_arrow_table()
    n = table.num_rows
    new = {}
    for info, wanted in python:
        cols, in_types = {}, []
        for c, t in info.request:
            cols[c] = _column(table.column(c), t)
            in_types.append((c, t))
        feat_types = {(v.name, f): dict(v.features)[f] for v, f in info.input_pairs}
        for v, f in info.input_pairs:
            name, typ = f"{v.name}.{f}", feat_types[(v.name, f)]
            cols[name] = _column(table.column(columns[(v.name, f)]), typ)
            in_types.append((name, typ))
        out = call_function(info.evaluator().function, info.name, cols, in_types,
                            [(f, t) for f, t in info.features if f in wanted], n)
        types = dict(info.features)
        for f in wanted:
            vals, mask = out[f]  # as served: call_function finishes them
            arrow_type = {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(),
                          "str": pa.string()}[value_kind(types[f])]
            new[output_name(info.name, f, full_feature_names)] = pa.array(vals.tolist(), type=arrow_type,
                                                                          mask=mask)
    keep_cols = [c for c in table.column_names if c not in hidden_cols and c != "__fs_row"]
    table = table.select(keep_cols)
    for name, arr in new.items():
        table = table.append_column(name, arr)
    reg = f"__fs_odpy{next(_ids)}"
    cur.register(reg, table)
    return result_cls(cur, f"SELECT * FROM {reg}", (keep, table))


def _column(arr, typ: str) -> tuple[np.ndarray, np.ndarray]:
    """An Arrow column as (values, null mask) in the dtype online uses for `typ`."""
    from fsapp.ondemand.evaluate import column

    arr = arr.combine_chunks() if hasattr(arr, "combine_chunks") else arr
    return column(arr.to_pylist(), typ)
