"""Feast-like Python definitions. Each object builds the same model the SQL
DSL builds (`.model`), so a repo may mix `*.sql` and `*.py` files freely:

    user = Entity(name="user", join_keys=["user_id"], value_type=Int64)
    txns = Stream(name="transactions", schema=[Field("user_id", Int64), Field("amount", Float64),
                  Field("ts", UnixTimestamp)], timestamp_field="ts", topic="txns", allowed_lateness="5m")
    user_txn = FeatureView(name="user_txn", entities=[user], source=txns,
                           aggregations=[Aggregation(column="amount", function="sum",
                                                     window=sliding("1h", "5m"), name="amount_1h")])
    fraud = FeatureService(name="fraud_v1", features=[user_txn[["amount_1h"]]])
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from fscore.window_spec import WindowSpec, continuous, lifetime, session, sliding, tumbling  # noqa: F401 (re-exported)

from fsapp.registry import model as m
from fsapp.registry.dsl import infer_format
from fsapp.registry.errors import DefinitionError

# Type names (Feast's spelling) → SQL types.
Int32, Int64, Float32, Float64 = "INTEGER", "BIGINT", "FLOAT", "DOUBLE"
String, Bool, Bytes, UnixTimestamp = "VARCHAR", "BOOLEAN", "BLOB", "TIMESTAMP"


def Array(item: str, size: int | None = None) -> str:  # noqa: N802 (reads like Feast's Array(Float32))
    """A list type; give `size` for a vector the online store can hold."""
    return f"{item}[{size if size else ''}]"


@dataclass(frozen=True)
class Field:
    name: str
    dtype: str


def _columns(schema) -> tuple[m.Column, ...]:
    if isinstance(schema, dict):
        return tuple(m.Column(n, t) for n, t in schema.items())
    return tuple(m.Column(f.name, f.dtype) if isinstance(f, Field) else m.Column(*f) for f in schema)


def _duration(value) -> int | str:
    if isinstance(value, dt.timedelta):
        # µs exactly: timedelta keeps days/seconds/microseconds apart.
        return (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
    return 0 if value is None else value


def _name(obj, what: str) -> str:
    if isinstance(obj, str):
        return obj
    name = getattr(obj, "name", None)
    if not isinstance(name, str):
        raise DefinitionError(f"{what} must be a name or a definition object, got {obj!r}")
    return name


class _Def:
    model: m.Definition

    @property
    def name(self) -> str:
        return self.model.name

    def __eq__(self, other):
        return isinstance(other, _Def) and self.model == other.model

    def __hash__(self):
        return hash(self.model)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model!r})"


class Entity(_Def):
    """`join_keys` as names (with `value_type` for all of them), Fields, or a
    {name: type} dict."""

    def __init__(self, name: str, join_keys=None, value_type: str | None = None, description: str = ""):
        keys = join_keys or [name + "_id"]
        if isinstance(keys, dict) or not all(isinstance(k, str) for k in keys):
            cols = _columns(keys)
        else:
            if value_type is None:
                raise DefinitionError(f"entity {name}: give value_type=Int64 (or String) for join keys given "
                                      f"by name, or join_keys=[Field('{keys[0]}', Int64)]")
            cols = tuple(m.Column(k, value_type) for k in keys)
        self.model = m.Entity(name, cols, description)


class Stream(_Def):
    """A push-only stream, or a Kafka one when `topic` is set (Feast's
    PushSource / KafkaSource)."""

    def __init__(self, name: str, schema, timestamp_field: str, topic: str | None = None,
                 allowed_lateness=0, format: str = "json", batch_source=None, description: str = "",
                 avro_schema: str | None = None, max_future="1h"):
        self.model = m.Stream(name, _columns(schema), timestamp_field, topic, _duration(allowed_lateness), format,
                              None if batch_source is None else _name(batch_source, "batch_source"), description,
                              avro_schema, _duration(max_future))


class FileSource(_Def):
    def __init__(self, name: str, path: str, schema, timestamp_field: str, file_format: str | None = None,
                 created_timestamp_column: str | None = None, description: str = ""):
        self.model = m.FileSource(name, _columns(schema), timestamp_field, path, file_format or infer_format(path),
                                  created_timestamp_column, description)


PushSource = Stream  # Feast's name for a stream fed over the push API
KafkaSource = Stream


class Aggregation:
    """`function(column) OVER window`. `column` may be any DuckDB scalar
    expression (then `name` is required); None for count(*). Feast's
    `time_window` (+ `slide_interval`) works too: tumbling, or sliding."""

    def __init__(self, column: str | None = None, function: str = "count", window: WindowSpec | None = None,
                 name: str | None = None, k: int = 0, time_window=None, slide_interval=None):
        if window is None:
            if time_window is None:
                raise DefinitionError(f"aggregation {function}({column}): give window=sliding('1h', '5m') "
                                      f"(or tumbling/continuous/session/lifetime)")
            size = _duration(time_window)
            hop = _duration(slide_interval) if slide_interval is not None else size
            window = tumbling(size) if hop == size else sliding(size, hop)
        if name is None:
            name = f"{m.AGG_ALIASES.get(function.lower(), function.lower())}_{column or 'star'}"
        self.model = m.Aggregation(name, function, column, window, k)


class FeatureView(_Def):
    """Plain when `aggregations` is empty (features = column names or
    'expr AS name' strings, served within `ttl`), aggregated otherwise."""

    def __init__(self, name: str, source, entities=(), features=(), aggregations=(), filter: str | None = None,
                 ttl=0, online: bool = True, description: str = ""):
        self.model = m.FeatureView(
            name, _name(source, f"feature view {name}: source"),
            entities=tuple(_name(e, f"feature view {name}: entity") for e in entities),
            features=tuple(_projection(f, name) for f in features),
            aggregations=tuple(a.model if isinstance(a, Aggregation) else a for a in aggregations),
            filter=filter, ttl=_duration(ttl), online=online, description=description)

    def __getitem__(self, names) -> list[m.FeatureRef]:
        """Feast's `view[["a", "b"]]`: references to some features."""
        names = [names] if isinstance(names, str) else names
        return [m.FeatureRef(self.name, n) for n in names]


def _projection(item, view: str) -> m.Projection:
    if isinstance(item, m.Projection):
        return item
    if isinstance(item, Field):
        return m.Projection(item.name, item.name)
    if not isinstance(item, str):
        raise DefinitionError(f"feature view {view}: a feature is a column name or 'expr AS name', got {item!r}")
    from fsapp.registry.dsl import tokenize, render_tokens
    toks = tokenize(item, f"feature view {view}")[:-1]
    depth, split = 0, None
    for i, t in enumerate(toks):
        depth += t.is_op("(", "[") - t.is_op(")", "]")
        if depth == 0 and t.is_kw("AS") and i + 2 == len(toks) and toks[-1].kind == "ident":
            split = i
    if split is not None:
        return m.Projection(toks[-1].text, render_tokens(toks[:split]))
    if len(toks) == 1 and toks[0].kind == "ident":
        return m.Projection(item.strip(), item.strip())
    raise DefinitionError(f"feature view {view}: expression {item!r} needs a name: write '{item} AS <name>'")


class RequestSource(_Def):
    """Columns given at request time (Feast's RequestSource)."""

    def __init__(self, name: str, schema, description: str = ""):
        self.model = m.RequestSource(name, _columns(schema), description)


class OnDemandFeatureView(_Def):
    """An on-demand view from SQL: `features` maps each feature name to a
    DuckDB expression over the request columns and `view.feature` inputs.

        ratio = OnDemandFeatureView(name="txn_ratio", sources=[txn_request, user_txn],
                                    features={"amount_ratio": "amount / user_txn.avg_amount_1d"})
    """

    def __init__(self, name: str, sources, features, description: str = ""):
        if isinstance(features, dict):
            projections = tuple(m.Projection(n, e) for n, e in features.items())
        else:
            projections = tuple(_projection(f, name) for f in features)
        self.model = m.OnDemandView(name, tuple(_name(s, f"on-demand view {name}: source") for s in sources),
                                    features=projections, description=description)


def on_demand_feature_view(sources, schema, name: str | None = None, description: str = ""):
    """Feast's decorator: a function over a pandas DataFrame (the request
    columns and each input feature, by its bare name; nullable dtypes) that
    returns a DataFrame with the `schema` columns, row for row. `sources`:
    request sources, and views or `view[["feature"]]` lists to read. The
    function's source is stored in the registry: it must be self-contained
    (np, pd and pa are there; import anything else inside it).

        @on_demand_feature_view(sources=[txn_request, user_txn[["avg_amount_1d"]]],
                                schema=[Field("amount_ratio", Float64)])
        def txn_ratio(df):
            return pd.DataFrame({"amount_ratio": df["amount"] / df["avg_amount_1d"]})
    """
    def wrap(fn):
        from fsapp.ondemand.python_udf import function_source

        names, inputs = [], []
        for s in sources:
            if isinstance(s, list):
                inputs += [r for r in s]
                names += [r.view for r in s if r.view not in names]
            elif isinstance(s, FeatureView):
                inputs += [m.FeatureRef(s.name, f.name) for f in s.model.features]
                inputs += [m.FeatureRef(s.name, a.name) for a in s.model.aggregations]
                names.append(s.name)
            else:
                names.append(_name(s, f"on-demand view {fn.__name__}: source"))
        model = m.OnDemandView(name or fn.__name__, tuple(dict.fromkeys(names)), function=function_source(fn),
                               function_name=fn.__name__, inputs=tuple(inputs), outputs=_columns(schema),
                               description=description or (fn.__doc__ or "").strip())
        return _OnDemandFunction(model, fn)
    return wrap


class _OnDemandFunction(_Def):
    """What the decorator returns: the definition, still callable as the function."""

    def __init__(self, model, fn):
        self.model, self.fn = model, fn

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


class FeatureService(_Def):
    """`features`: views (all their features), `view[["a"]]` lists, or
    'view:feature' / 'view@v2:feature' strings."""

    def __init__(self, name: str, features, description: str = ""):
        refs = []
        for f in features:
            if isinstance(f, list):
                refs += f
            elif isinstance(f, (FeatureView, m.FeatureView, OnDemandFeatureView, _OnDemandFunction, m.OnDemandView)):
                refs.append(m.FeatureRef(f.name, "*"))
            else:
                refs.append(f)
        self.model = m.FeatureService(name, tuple(refs), description)


def to_model(obj):
    """The model object behind a Python API object (or the model object itself)."""
    if isinstance(obj, _Def):
        return obj.model
    if isinstance(obj, m.Definition):
        return obj
    raise DefinitionError(f"not a registry definition: {obj!r}")


__all__ = ["Entity", "Stream", "PushSource", "KafkaSource", "FileSource", "FeatureView", "Aggregation",
           "RequestSource", "OnDemandFeatureView", "on_demand_feature_view",
           "FeatureService", "Field", "Array", "Int32", "Int64", "Float32", "Float64", "String", "Bool", "Bytes",
           "UnixTimestamp", "tumbling", "sliding", "continuous", "session", "lifetime", "to_model"]
