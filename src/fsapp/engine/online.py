"""Online feature reads in Feast's response shape, from any set of online
tables: the engine's own (writer) or a worker's read-only mappings.

    {"metadata": {"feature_names": ["user_id", "txn_count_1h", ...]},
     "results": [{"values": [...], "statuses": [...], "event_timestamps": [...]}, ...]}

Column-major: one result per entity key column, then one per feature, each
with one item per requested entity row. Statuses: PRESENT, NOT_FOUND,
NULL_VALUE (stored, but the value is null), OUTSIDE_MAX_AGE (older than the
view's TTL; the value is null).
"""
from __future__ import annotations

import datetime as dt

import numpy as np

from fscore.table import OUTSIDE_MAX_AGE, PRESENT

from fsapp.engine.errors import BatchError

_STATUS = {PRESENT: "PRESENT", OUTSIDE_MAX_AGE: "OUTSIDE_MAX_AGE"}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def iso(us: int) -> str:
    return (_EPOCH + dt.timedelta(microseconds=int(us))).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entity_columns(entities) -> tuple[dict[str, list], int]:
    """Entity rows as a dict of lists (Feast's `entities`) or a list of dicts
    (`entity_rows`) → dict of equal-length lists."""
    if isinstance(entities, (list, tuple)):
        if not all(isinstance(r, dict) for r in entities):
            raise BatchError("entity_rows must be objects like {\"user_id\": 1}")
        names = list(dict.fromkeys(k for r in entities for k in r))
        missing = [(i, k) for i, r in enumerate(entities) for k in names if k not in r]
        if missing:
            raise BatchError(f"entity row {missing[0][0]} lacks {missing[0][1]!r}; every row needs the same keys")
        entities = {k: [r[k] for r in entities] for k in names}
    if not isinstance(entities, dict) or not entities:
        raise BatchError("entities must be a non-empty object of key columns, e.g. {\"user_id\": [1, 2, 3]}")
    lengths = {k: len(v) for k, v in entities.items() if isinstance(v, (list, tuple))}
    if len(lengths) != len(entities):
        raise BatchError("each entity key must map to a list of values, e.g. {\"user_id\": [1, 2]}")
    if len(set(lengths.values())) != 1:
        raise BatchError(f"entity key lists have different lengths: {lengths}")
    return dict(entities), next(iter(lengths.values()))


def _keys_for(view_schema, entities: dict, view_name: str):
    cols = []
    for f in view_schema.keys:
        if f.name not in entities:
            raise BatchError(f"feature view {view_name} is keyed by {', '.join(view_schema.key_names)}; "
                             f"the request has no {f.name!r}")
        vals = entities[f.name]
        if f.kind == "int64":
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
                raise BatchError(f"entity key {f.name!r} takes integers")
            cols.append(np.array(vals, dtype=np.int64))
        else:
            if not all(isinstance(v, str) for v in vals):
                raise BatchError(f"entity key {f.name!r} takes strings")
            cols.append(np.array(vals, dtype=object))
    return cols[0] if len(cols) == 1 else dict(zip(view_schema.key_names, cols))


def _jsonable(a) -> list:
    if a.dtype.kind == "f":
        return [None if x != x else x for x in a.tolist()]
    if a.ndim == 2:
        return [[None if x != x else x for x in row] for row in a.tolist()]
    return a.tolist()


def online_response(resolved, table_of, entities, now: int, full_feature_names: bool = False,
                    lookup=None) -> dict:
    """`resolved`: [(FeatureViewInfo, feature name)] from the registry;
    `table_of(info)`: the fscore Table holding that view version;
    `lookup(info, table, keys, now)`: how to read it (default: the table's
    stored values, `table.get_batch(keys, now)`)."""
    ent, n = entity_columns(entities)
    names = list(ent)
    results = [{"values": list(ent[k]), "statuses": ["PRESENT"] * n, "event_timestamps": [iso(0)] * n}
               for k in names]
    by_view: dict = {}
    for info, feat in resolved:
        by_view.setdefault((info.name, info.version), (info, []))[1].append(feat)
    lookups = {}
    for key, (info, feats) in by_view.items():
        table = table_of(info)
        keys = _keys_for(table.schema, ent, info.name)
        lookups[key] = lookup(info, table, keys, now) if lookup else table.get_batch(keys, now)
    for info, feat in resolved:
        r = lookups[(info.name, info.version)]
        status = np.where(r.status == PRESENT, np.where(r.nulls[feat], 3, 1), r.status)
        names.append(f"{info.name}__{feat}" if full_feature_names else feat)
        results.append({
            "values": [None if null else v for v, null in zip(_jsonable(r.values[feat]), r.nulls[feat].tolist())],
            "statuses": [{0: "NOT_FOUND", 1: "PRESENT", 2: "OUTSIDE_MAX_AGE", 3: "NULL_VALUE"}[s]
                         for s in status.tolist()],
            "event_timestamps": [iso(t) for t in r.event_ts.tolist()],
        })
    return {"metadata": {"feature_names": names}, "results": results}
