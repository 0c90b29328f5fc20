"""Read side of the registry, for the engine, the offline store and the API:
look up feature views (any version), resolve feature references and services,
and derive what the engine needs (online schema, window groups, the DuckDB
projection of a batch)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from fscore.schema import Schema
from fscore.window_spec import Agg, WindowSpec

from fsapp.errors import FeatureNameCollision
from fsapp.registry.errors import NotFoundError, RegistryError
from fsapp.registry.model import FeatureRef, online_kind
from fsapp.registry.store import Entry, RegistryStore, Snapshot


def _qi(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _Version:
    """What every version of a view (stored or on-demand) answers from its registry entry."""

    entry: Entry

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def version(self) -> int:
        return self.entry.version

    @property
    def definition(self):
        return self.entry.definition

    @property
    def keys(self) -> list[tuple[str, str]]:
        return [tuple(k) for k in self.entry.resolved["keys"]]

    @property
    def features(self) -> list[tuple[str, str]]:
        return [tuple(f) for f in self.entry.resolved["features"]]


@dataclass(frozen=True)
class FeatureViewInfo(_Version):
    """One version of a feature view, with its resolved keys and feature types."""

    entry: Entry

    @property
    def timestamp(self) -> str:
        return self.entry.resolved["timestamp"]

    def online_schema(self) -> Schema:
        """The fscore table schema holding this view's latest values. A
        last_k feature is a `list` of up to k float64 items (only the values
        there are, newest first), whatever its registered DOUBLE[k] type."""
        keys = [(n, online_kind(t)[0]) for n, t in self.keys]
        last_k = {a.name: a.k for a in self.definition.aggregations if a.function == "last_k"}
        cols = []
        for n, t in self.features:
            kind, size = ("list", last_k[n]) if n in last_k else online_kind(t)
            cols.append((n, kind, size) if size else (n, kind))
        return Schema(keys, cols)

    def input_columns(self) -> dict[str, str]:
        """alias → DuckDB expression for each distinct aggregation input; a
        bare column keeps its name, an expression gets `__in<i>`."""
        out: dict[str, str] = {}
        for a in self.definition.aggregations:
            if a.column is None or a.column in out.values():
                continue
            alias = a.column if re.fullmatch(r"[A-Za-z_]\w*", a.column) else f"__in{len(out)}"
            out[alias] = a.column
        return out

    def bare_projection(self, stream_columns: list[str]) -> list[tuple[str, str]] | None:
        """`projection_sql` as (stream column, output name) pairs when it is
        only bare column references and there is no row filter, so a batch
        can be projected without a query; None otherwise. Names resolve as
        DuckDB resolves them: case-insensitively, or exactly when quoted."""
        d = self.definition
        if d.filter:
            return None
        # keys and the timestamp are quoted identifiers in the SQL: exact names
        out = [(bare_column(_qi(name) if expr is None else expr, stream_columns), name)
               for expr, name in self._projection()]
        names = [name for _, name in out]
        if any(src is None for src, _ in out) or len(set(names)) != len(names):
            return None
        return out

    def window_groups(self) -> list[tuple[WindowSpec, tuple[Agg, ...]]]:
        """Aggregations grouped by window, as fscore.window.WindowView takes
        them (one WindowView per group); Agg columns name `input_columns()`."""
        alias_of = {expr: alias for alias, expr in self.input_columns().items()}
        groups: dict[WindowSpec, list[Agg]] = {}
        for a in self.definition.aggregations:
            col = None if a.column is None else alias_of[a.column]
            groups.setdefault(a.window, []).append(Agg(a.function, col, a.name, a.k))
        return [(w, tuple(aggs)) for w, aggs in groups.items()]

    def projection_sql(self, relation: str, row_column: str | None = None) -> str:
        """DuckDB SQL that turns raw rows of `relation` into what this view
        consumes: keys, the event timestamp, then plain features or
        aggregation inputs, after the row filter; `row_column` (a column of
        `relation`) first when given, so each output row names its input row."""
        items = [_qi(name) if expr is None else f"({expr}) AS {_qi(name)}" for expr, name in self._projection()]
        if row_column is not None:
            items.insert(0, _qi(row_column))
        d = self.definition
        where = f" WHERE ({d.filter})" if d.filter else ""
        return f"SELECT {', '.join(items)} FROM {relation}{where}"

    def projection_items(self) -> tuple[list[tuple[str | None, str]], str | None]:
        """(what the projection selects: (None, stream column) or (DuckDB
        expression, output name), in order; the row filter or None)."""
        return self._projection(), self.definition.filter

    def _projection(self) -> list[tuple[str | None, str]]:
        """What the projection selects, in order: (None, column) for the keys
        and the event timestamp, then (DuckDB expression, output name) for
        the plain features or the aggregation inputs."""
        items: list[tuple[str | None, str]] = [(None, k) for k, _ in self.keys] + [(None, self.timestamp)]
        d = self.definition
        if d.is_aggregated:
            items += [(expr, alias) for alias, expr in self.input_columns().items()
                      if alias not in {k for k, _ in self.keys} | {self.timestamp}]
        else:
            items += [(p.expr, p.name) for p in d.features]
        return items


def bare_column(expr: str, stream_columns: list[str]) -> str | None:
    """The stream column a SELECT item is when it is only a column reference
    (resolved as DuckDB does: case-insensitively, or exactly when quoted),
    else None."""
    expr = expr.strip()
    if re.fullmatch(r'"[^"]+"', expr):
        return expr[1:-1] if expr[1:-1] in stream_columns else None
    if not re.fullmatch(r"[A-Za-z_]\w*", expr):
        return None
    return {c.lower(): c for c in stream_columns}.get(expr.lower())


class OnDemandInfo(_Version):
    """One version of an on-demand view: its request columns, its inputs
    (features of pinned view versions, `input_pairs` as FeatureViewInfo)
    and its features' expressions (or Python function). `on_demand` tells it
    apart from a FeatureViewInfo in a resolved feature list."""

    on_demand = True

    def __init__(self, entry: Entry, input_pairs: list):
        self.entry = entry
        self.input_pairs = input_pairs

    @property
    def request(self) -> list[tuple[str, str]]:
        return [tuple(c) for c in self.entry.resolved["request"]]

    def evaluator(self):
        """The compiled evaluator of this version (fsapp.ondemand.evaluate), cached."""
        ev = getattr(self, "_evaluator", None)
        if ev is None:
            from fsapp.ondemand.evaluate import Evaluator
            ev = self._evaluator = Evaluator(self)
        return ev


def output_name(view_name: str, feature: str, full_feature_names: bool) -> str:
    """A feature's column in every answer: `feature`, or `view__feature`
    with full_feature_names (Feast's names)."""
    return f"{view_name}__{feature}" if full_feature_names else feature


def check_feature_names(resolved, full_feature_names: bool, taken=()) -> None:
    """The one rule every read follows (embedded and client online reads,
    REST and Feast's endpoint, training sets): each requested feature gets an
    output column of its own. `resolved`: [(view, feature)] in request order,
    `view` anything with `.name` (a `FeatureViewInfo`, an offline `ViewDef`)
    and maybe `.version`; `taken`: columns the answer already has (entity
    keys, an entity_df's columns). Raises FeatureNameCollision saying what to
    change: pass full_feature_names, request one version, or list a feature
    once."""
    taken = set(taken)
    owner: dict[str, tuple] = {}
    for view, feature in resolved:
        name = output_name(view.name, feature, full_feature_names)
        if name in taken:
            hint = "" if full_feature_names else "; pass full_feature_names=True to get view__feature names"
            raise FeatureNameCollision(f"feature {view.name}:{feature} would be output as {name!r}, which is "
                                       f"already an entity column{hint}")
        this = (view.name, getattr(view, "version", None), feature)
        prev = owner.setdefault(name, this)
        if prev is this:
            continue
        if prev == this:
            raise FeatureNameCollision(f"{view.name}:{feature} is requested twice; list each feature once")
        if prev[0] == view.name:
            raise FeatureNameCollision(f"{view.name}@v{prev[1]}:{feature} and {view.name}@v{this[1]}:{feature} "
                                       f"would both be output as {name!r}; request one version of {view.name}")
        raise FeatureNameCollision(f"feature name {name!r} comes from both {prev[0]}:{feature} and "
                                   f"{view.name}:{feature}; pass full_feature_names=True to get view__feature "
                                   f"names ({prev[0]}__{feature}, {view.name}__{feature})")


class FeatureNameCheck:
    """`check_feature_names` for a resolved list judged once for both values
    of full_feature_names (an online plan is reused across many reads); the
    views' entity keys, the answer's first columns, are taken names.
    PERF: a read then costs a dict lookup, not a pass over its features."""

    def __init__(self, resolved):
        resolved = list(resolved)
        keys = dict.fromkeys(k for info, _ in resolved for k, _ in getattr(info, "keys", ()))
        self._problem = {}
        for full in (False, True):
            try:
                check_feature_names(resolved, full, keys)
                self._problem[full] = None
            except FeatureNameCollision as e:
                self._problem[full] = str(e)

    def __call__(self, full_feature_names: bool) -> None:
        problem = self._problem[bool(full_feature_names)]
        if problem is not None:
            raise FeatureNameCollision(problem)


class Registry:
    """Read-only access to a registry file; safe in every gunicorn worker."""

    def __init__(self, path: str | os.PathLike):
        self.store = RegistryStore(path)

    def close(self) -> None:
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def snapshot(self) -> Snapshot:
        return self.store.snapshot()

    def get(self, name: str, version: int | None = None) -> Entry:
        return self.store.get(name, version)

    def list(self, kind: str | None = None) -> list[Entry]:
        snap = self.snapshot()
        return [e for e in snap.entries.values() if kind is None or e.kind == kind]

    def feature_view(self, name: str, version: int | None = None) -> FeatureViewInfo:
        entry = self.get(name, version)
        if entry.kind != "feature_view":
            raise NotFoundError(f"{name} is a {entry.kind}, not a feature view")
        return FeatureViewInfo(entry)

    def resolve_features(self, features=None, feature_service: str | None = None
                         ) -> list[tuple[FeatureViewInfo, str]]:
        """(view version, feature name) for each requested feature, in order:
        `features` as 'view:feature' / 'view@vN:feature' / 'view:*', or a
        service's pinned list."""
        if feature_service is not None:
            svc = self.get(feature_service)
            if svc.kind != "feature_service":
                raise NotFoundError(f"{feature_service} is a {svc.kind}, not a feature service")
            features = svc.resolved["features"]
        elif not features:
            raise RegistryError("no features requested: name at least one (e.g. [\"user_txn:txn_count_1h\"] or "
                                "[\"user_txn:*\"]), or a feature service")
        out, views = [], {}
        for text in features or ():
            ref = text if isinstance(text, FeatureRef) else FeatureRef.parse(text)
            key = (ref.view, ref.version)
            if key not in views:
                views[key] = self.view_or_on_demand(ref.view, ref.version)
            info = views[key]
            names = [n for n, _ in info.features]
            if ref.feature == "*":
                out += [(info, n) for n in names]
            elif ref.feature in names:
                out.append((info, ref.feature))
            else:
                raise NotFoundError(f"{ref}: {info.name} v{info.version} has no feature {ref.feature!r} "
                                    f"(it has: {', '.join(names)})")
        return out

    def view_or_on_demand(self, name: str, version: int | None = None):
        """A FeatureViewInfo, or an OnDemandInfo (cached per version: its
        evaluator is compiled once)."""
        entry = self.get(name, version)
        if entry.kind != "on_demand_view":
            return self.feature_view(name, version)
        cache = self.__dict__.setdefault("_on_demand", {})
        hit = cache.get((entry.name, entry.version))
        if hit is None or hit.entry.spec != entry.spec:
            pairs = []
            for text in entry.resolved["inputs"]:
                ref = FeatureRef.parse(text)
                pairs.append((self.feature_view(ref.view, ref.version), ref.feature))
            hit = cache[(entry.name, entry.version)] = OnDemandInfo(entry, pairs)
        return hit

    def lineage(self, name: str) -> dict:
        from fsapp.registry.lineage import lineage
        return lineage(self.store, name)
