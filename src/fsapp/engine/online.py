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
import json

import numpy as np

from fscore import jsonenc
from fscore.table import PRESENT

from fsapp.engine.errors import BatchError, RequestDataError
from fsapp.registry.catalog import FeatureNameCheck

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def iso(us: int) -> str:
    # (not strftime: glibc's %Y does not pad years below 1000 — "1-01-01T..." is not
    # ISO-8601, and fromisoformat, our own request parser included, refuses it)
    d = _EPOCH + dt.timedelta(microseconds=int(us))
    return (f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d.hour:02d}:{d.minute:02d}:{d.second:02d}"
            f".{d.microsecond:06d}Z")


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
    """The view's keys from the entity columns, checked, as `Table.get_rows`
    takes them: an int64 key column as its list of ints itself (PERF: no
    array; the table reads the list; benches/bench_serving.py), a string
    column as an object array; a dict of them for composite keys.
    `entities` is the caller's own dict: an integer key column's integral
    numbers are replaced there by their ints (the answer echoes the keys read)."""
    cols = []
    for f in view_schema.keys:
        if f.name not in entities:
            raise BatchError(f"feature view {view_name} is keyed by {', '.join(view_schema.key_names)}; "
                             f"the request has no {f.name!r}")
        vals = entities[f.name]
        types = set(map(type, vals))  # PERF: no generator per value (benches/bench_serving.py)
        if f.kind == "int64":
            if not types <= {int}:  # bool is not int here: type(True) is bool
                vals = entities[f.name] = _integral_keys(f.name, vals)  # the answer echoes the keys read
            if vals and not (_INT64_MIN <= min(vals) and max(vals) <= _INT64_MAX):
                i = next(i for i, v in enumerate(vals) if not _INT64_MIN <= v <= _INT64_MAX)
                raise BatchError(f"entity key {f.name!r} takes 64-bit integers; row {i} holds {vals[i]}")
            cols.append(list(vals))  # a list, also when the request gave a tuple
        else:
            if not types <= {str}:
                _refuse_text_key(f.name, vals)
            cols.append(np.array(vals, dtype=object))
    return cols[0] if len(cols) == 1 else dict(zip(view_schema.key_names, cols))


_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def _null_key(name: str, i: int) -> BatchError:
    return BatchError(f"entity key {name!r} is null in row {i}; give every row its {name}")


def _integral_keys(name: str, vals) -> list:
    """An integer key column that is not all ints: integral numbers are their
    integer, as a push takes them (`3.0` is the key 3: JSON from JavaScript,
    a pandas column that held a NaN); anything else is refused naming its row."""
    out = []
    for i, v in enumerate(vals):
        t = type(v)
        if t is int:
            out.append(v)
        elif t is float and v.is_integer() and -2.0 ** 63 <= v < 2.0 ** 63:
            out.append(int(v))
        elif v is None or t is float and v != v:
            raise _null_key(name, i)
        elif t is str:
            raise BatchError(f"entity key {name!r} takes integers, not text: row {i} holds {v!r}; send the number "
                             "itself")
        elif t is bool:
            raise BatchError(f"entity key {name!r} takes integers; row {i} holds {str(v).lower()} (a boolean)")
        else:
            raise BatchError(f"entity key {name!r} takes integers; row {i} holds {v!r}")
    return out


def _refuse_text_key(name: str, vals) -> None:
    """A text key column with a value that is not text: names the row (a
    number is never silently its text: a key never becomes another entity)."""
    for i, v in enumerate(vals):
        if type(v) is str:
            continue
        if v is None or type(v) is float and v != v:
            raise _null_key(name, i)
        shown = str(v).lower() if type(v) is bool else repr(v)
        raise BatchError(f"entity key {name!r} takes text; row {i} holds {shown} (send e.g. \"m7\", not 7)")
_EPOCH_ISO = "1970-01-01T00:00:00.000000Z"
_EPOCH_JSON = f'"{_EPOCH_ISO}"'


def count_features(info) -> frozenset:
    """The view's count and approx_count_distinct features: they read 0, not
    null, for a key with no events (an empty window counts 0)."""
    return frozenset(a.name for a in info.definition.aggregations
                     if a.function in ("count", "approx_count_distinct"))


def _feature_name(info, feat: str, full_feature_names: bool) -> str:
    return f"{info.name}__{feat}" if full_feature_names else feat


class OnlinePlan:
    """A resolved feature list made ready for repeated reads: the views to
    look up with their features, the response's feature names as JSON, and
    each view's row layout for `fscore.jsonenc.row_results`. Built once per
    resolution (fsapp.serve.reader caches it with the resolution)."""

    def __init__(self, resolved):
        self.resolved = list(resolved)
        # on-demand features are computed from the request and their inputs,
        # stored features read (requested ones, then inputs nobody asked for)
        self.on_demand = list(dict.fromkeys(i for i, _ in self.resolved if getattr(i, "on_demand", False)))
        reads = [(i, f) for i, f in self.resolved if not getattr(i, "on_demand", False)]
        for od in self.on_demand:
            reads += [p for p in od.input_pairs if not any(p[0] is q[0] and p[1] == q[1] for q in reads)]
        views: dict = {}
        for info, feat in reads:
            feats = views.setdefault((info.name, info.version), (info, []))[1]
            if feat not in feats:
                feats.append(feat)
        self.views = [(key, info, feats) for key, (info, feats) in views.items()]
        index = {key: i for i, (key, _, _) in enumerate(self.views)}
        position = {(key, f): j for key, _, feats in self.views for j, f in enumerate(feats)}
        od_index = {(od.name, od.version): k for k, od in enumerate(self.on_demand)}
        # where each requested feature's result is: (view number, feature number),
        # or (-1 - on-demand view number, feature name)
        self.order = [(-1 - od_index[(i.name, i.version)], f) if getattr(i, "on_demand", False)
                      else (index[(i.name, i.version)], position[((i.name, i.version), f)]) for i, f in self.resolved]
        # each on-demand view's inputs: 'view.feature' -> (view number, feature number)
        self.inputs = [{f"{v.name}.{f}": (index[(v.name, v.version)], position[((v.name, v.version), f)])
                        for v, f in od.input_pairs} for od in self.on_demand]
        # per view, its feature numbers some on-demand feature reads
        self.wanted = [sorted({j for inputs in self.inputs for vv, j in inputs.values() if vv == v})
                       for v in range(len(self.views))]
        self.one_view = (len(self.views) == 1 and not self.on_demand
                         and self.order == [(0, j) for j in range(len(self.order))])
        self.feature_names = {full: [_feature_name(i, f, full) for i, f in self.resolved] for full in (False, True)}
        self.names = {full: ",".join(map(_dumps, names)).encode() for full, names in self.feature_names.items()}
        self.check_names = FeatureNameCheck(self.resolved)  # a name clash is refused, never answered twice
        self._specs: dict = {}

    def specs(self, key, table) -> np.ndarray:
        """The row layout of `key`'s features in `table` (the same for every
        table of one view version; keyed by row size too, to be safe)."""
        k = (key, table.layout.stride)
        spec = self._specs.get(k)
        if spec is None:
            info, feats = next((i, f) for kk, i, f in self.views if kk == key)
            spec = self._specs[k] = jsonenc.column_specs(table.column_layout(), feats, count_features(info))
        return spec

    def kinds(self, key, table) -> list:
        """`fscore.jsonenc.feature_results`' kinds of `key`'s features (for
        reads that compute arrays: `as_of`)."""
        return [int(c) for c in self.specs(key, table)[:, 0]]


def _read(plan, table_of, entities, now: int, lookup, objects: bool):
    """Entity columns, their count, and per view what `fscore.jsonenc`
    rendered of its lookup: a list of JSON objects (bytes) or Python dicts
    (`objects`), one per feature; for JSON in a plan of one view, the
    features' objects already joined in order (one bytes). With on-demand
    features, also their values: per on-demand view, feature -> (values,
    null mask), computed from the request columns and the served values of
    their inputs (the same values a client reads for those features)."""
    ent, n = entity_columns(entities)
    joined = plan.one_view and not objects
    request_cols = [c for od in plan.on_demand for c, _ in od.request]
    if request_cols:  # the request's columns are not entity keys: no view looks them up
        for od in plan.on_demand:
            missing = [c for c, _ in od.request if c not in ent]
            if missing:
                raise RequestDataError(f"on-demand view {od.name} needs the request column(s) {', '.join(missing)} "
                                 f"beside the entity keys, e.g. \"{missing[0]}\": [...]")
    out, values = [], []
    for v, (key, info, feats) in enumerate(plan.views):
        table = table_of(info)
        keys = _keys_for(table.schema, ent, info.name)
        wanted = plan.wanted[v]  # this view's features that on-demand features read
        if lookup is None and not objects and not wanted:
            out.append(jsonenc.table_results(table, keys, now, plan.specs(key, table), joined=joined))
        elif lookup is None:
            status, event_ts, rows = table.get_rows(keys, now)
            specs = plan.specs(key, table)
            out.append(jsonenc.row_results(rows, status, event_ts, specs, objects=objects, joined=joined))
            if wanted:  # the inputs as served: their values only (PERF: not every feature of the view)
                values.append(dict(zip(wanted, jsonenc.row_results(rows, status, event_ts, specs[wanted],
                                                                   objects=True))))
        else:
            r = lookup(info, table, keys, now)
            args = ([r.values[f] for f in feats], [r.nulls[f] for f in feats], r.status, r.event_ts)
            parts = jsonenc.feature_results(*args, objects=objects, kinds=plan.kinds(key, table))
            out.append(b",".join(parts) if joined else parts)
            if wanted:
                kinds = plan.kinds(key, table)
                values.append(dict(zip(wanted, jsonenc.feature_results(
                    [args[0][j] for j in wanted], [args[1][j] for j in wanted], r.status, r.event_ts,
                    objects=True, kinds=[kinds[j] for j in wanted]))))
        if not wanted:
            values.append(None)
    computed = []
    for od, inputs in zip(plan.on_demand, plan.inputs):
        served = {name: values[v][j]["values"] for name, (v, j) in inputs.items()}
        result = od.evaluator()({c: ent[c] for c, _ in od.request}, served, n)
        # PRESENT (NULL_VALUE where null) at the epoch: computed now, from the request
        names = list(result)
        encoded = jsonenc.feature_results([result[f][0] for f in names], [result[f][1] for f in names],
                                          _present(n), _epochs(n), objects=objects)
        computed.append(dict(zip(names, encoded)))
    return ent, n, out, computed


def _present(n: int) -> np.ndarray:
    return np.full(n, PRESENT, dtype=np.uint8)


def _epochs(n: int) -> np.ndarray:
    return np.zeros(n, dtype=np.int64)


def _plan(plan) -> OnlinePlan:
    return plan if isinstance(plan, OnlinePlan) else OnlinePlan(plan)


def online_response(plan, table_of, entities, now: int, full_feature_names: bool = False, lookup=None) -> dict:
    """The online answer as Python objects. `plan`: an `OnlinePlan`, or the
    resolved [(FeatureViewInfo, feature name)] to make one from;
    `table_of(info)`: the fscore Table holding that view version;
    `lookup(info, table, keys, now)`: how to read it (default: the table's
    stored values). Equal to `json.loads(online_json(...))` (tested); each
    view's timestamp list is shared by its features."""
    plan = _plan(plan)
    plan.check_names(full_feature_names)
    ent, n, views, computed = _read(plan, table_of, entities, now, lookup, True)
    epoch = [_EPOCH_ISO] * n
    results = [{"values": list(v), "statuses": ["PRESENT"] * n, "event_timestamps": epoch} for v in ent.values()]
    results += [views[v][j] if v >= 0 else computed[-1 - v][j] for v, j in plan.order]
    return {"metadata": {"feature_names": list(ent) + plan.feature_names[bool(full_feature_names)]},
            "results": results}


def online_json(plan, table_of, entities, now: int, full_feature_names: bool = False, lookup=None) -> bytes:
    """The JSON text of `online_response(...)` (the same bytes as
    `json.dumps(online_response(...), separators=(",", ":"))`), written
    straight from the table's rows (or `lookup`'s arrays) by `fscore.jsonenc`.
    PERF: building the response as Python lists and encoding it with `json`
    cost ~1.4 ms of a 1x50 request and ~3 ms of a 100x50 one; per-column
    result arrays another ~60 µs of a 1x50 one (benches/bench_serving.py)."""
    plan = _plan(plan)
    plan.check_names(full_feature_names)
    ent, n, encoded, computed = _read(plan, table_of, entities, now, lookup, False)
    # the entity key columns: their values, PRESENT, the epoch
    tail = _key_tail(n)
    keys = ",".join([f'{{"values":{_scalars_json(v)}{tail}' for v in ent.values()]).encode()
    names = plan.names[bool(full_feature_names)]
    features = encoded[0] if plan.one_view else b",".join(
        [encoded[v][j] if v >= 0 else computed[-1 - v][j] for v, j in plan.order])
    return b"".join((b'{"metadata":{"feature_names":[', _entity_names(tuple(ent)), b"," if names else b"",
                     names, b']},"results":[', keys, b"," if features else b"", features, b"]}"))


def _scalars_json(vals) -> str:
    """A list of entity values as JSON; ints (the usual keys) without the
    encoder: str() of an int is its JSON. PERF: the encoder's setup was a
    visible part of a 1x50 request under load (benches/bench_serving.py)."""
    if set(map(type, vals)) <= {int}:
        return "[" + ",".join(map(str, vals)) + "]"
    return _dumps(list(vals))


_ENTITY_NAMES: dict[tuple, bytes] = {}


def _entity_names(names: tuple) -> bytes:
    """The entity key names as the start of `feature_names` (cached: a
    service is asked with the same few key sets)."""
    text = _ENTITY_NAMES.get(names)
    if text is None:
        text = _dumps(list(names))[1:-1].encode()
        if len(_ENTITY_NAMES) < 256:
            _ENTITY_NAMES[names] = text
    return text


_KEY_TAILS: dict[int, str] = {}


def _key_tail(n: int) -> str:
    """`,"statuses":["PRESENT",...],"event_timestamps":[epoch,...]}` of an
    entity key column of n rows (cached for the usual small n)."""
    tail = _KEY_TAILS.get(n)
    if tail is None:
        present = ",".join(['"PRESENT"'] * n)
        epoch = ",".join([_EPOCH_JSON] * n)
        tail = f',"statuses":[{present}],"event_timestamps":[{epoch}]}}'
        if n <= 256 and len(_KEY_TAILS) < 64:
            _KEY_TAILS[n] = tail
    return tail


_dumps = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode
