"""Generated definitions → SQL text → parse gives the same model; and the
Python API builds the same model as the SQL for the same definition."""
from hypothesis import given
from hypothesis import strategies as st

from fscore.window_spec import MAX_LAST_K, continuous, lifetime, session, sliding, tumbling
from fsapp.registry import python_api as api
from fsapp.registry.dsl import parse
from fsapp.registry.model import (
    OnDemandView, RequestSource,
    Aggregation, Column, Entity, FeatureRef, FeatureService, FeatureView, FileSource, Projection, Stream,
)
from fsapp.registry.render import script_sql, to_sql

KEYWORDS = {"as", "from", "where", "with", "over", "select", "create", "true", "false", "null", "and", "or",
            "not", "case", "when", "then", "else", "end", "in", "is", "like"}
names = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True).filter(lambda n: n not in KEYWORDS)
types = st.sampled_from(["BIGINT", "INTEGER", "DOUBLE", "FLOAT", "VARCHAR", "BOOLEAN", "TIMESTAMP", "FLOAT[8]"])
units = st.sampled_from(["1us", "1ms", "1s", "1m", "1h", "1d"])
texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
exprs = st.sampled_from(["amount", "amount * 2", "lower(merchant)", "CAST(x AS INTEGER)", "coalesce(a, 0) + 1",
                         "CASE WHEN a > 1 THEN 'x''y' ELSE 'z' END", "v[1]", "a::DOUBLE", "\"Quoted Col\" / 3"])


@st.composite
def windows(draw):
    kind = draw(st.sampled_from(["tumbling", "sliding", "continuous", "session", "lifetime"]))
    hop = draw(st.integers(1, 90)) * 60_000_000
    size = hop * draw(st.integers(1, 48))
    return {"tumbling": lambda: tumbling(size), "sliding": lambda: sliding(size, hop),
            "continuous": lambda: continuous(size, hop), "session": lambda: session(hop),
            "lifetime": lifetime}[kind]()


@st.composite
def aggregations(draw, name):
    fn = draw(st.sampled_from(["count", "sum", "mean", "min", "max", "first", "last", "var_samp", "stddev_pop",
                               "approx_count_distinct", "last_k"]))
    column = None if fn == "count" and draw(st.booleans()) else draw(exprs)
    k = draw(st.integers(1, MAX_LAST_K)) if fn == "last_k" else 0
    return Aggregation(name, fn, column, draw(windows()), k)


@st.composite
def views(draw):
    feature_names = draw(st.lists(names, min_size=1, max_size=5, unique=True))
    aggregated = draw(st.booleans())
    keys = (Projection("user_id", "user_id"),) if draw(st.booleans()) else ()
    if aggregated:
        feats, aggs = keys, tuple(draw(aggregations(n)) for n in feature_names if n != "user_id")
        if not aggs:
            aggs = (Aggregation("n", "count", None, lifetime()),)
    else:
        feats = keys + tuple(Projection(n, draw(st.one_of(st.just(n), exprs)))
                             for n in feature_names if n != "user_id")
        aggs = ()
        feats = feats or (Projection("x", "x"),)
    return FeatureView(draw(names), draw(names), entities=tuple(draw(st.lists(names, max_size=2, unique=True))),
                       features=feats, aggregations=aggs, filter=draw(st.none() | exprs),
                       ttl=draw(st.integers(0, 10**12)), online=draw(st.booleans()), description=draw(texts))


columns = st.lists(st.tuples(names, types), min_size=1, max_size=5, unique_by=lambda c: c[0])
entities = st.builds(Entity, names, columns, texts)
streams = st.builds(Stream, names, columns, names, st.none() | names.map(lambda n: n + ".topic"),
                    st.integers(0, 10**10), st.sampled_from(["json", "arrow"]), st.none() | names, texts) | \
    st.builds(Stream, names, columns, names, names.map(lambda n: n + ".topic"), st.integers(0, 10**10),
              st.just("avro"), st.none() | names, texts, names.map(lambda n: f"schemas/{n}.avsc"))
sources = st.builds(FileSource, names, columns, names, names.map(lambda n: f"data/{n}/*.parquet"),
                    st.sampled_from(["parquet", "csv"]), st.none() | names, texts)
refs = st.builds(FeatureRef, names, st.just("*") | names, st.none() | st.integers(1, 99))
services = st.builds(FeatureService, names, st.lists(refs, min_size=1, max_size=4, unique_by=str).map(tuple),
                     texts)
request_sources = st.builds(RequestSource, names, columns, texts)
od_exprs = st.sampled_from(["amount / user_txn.avg_amount", "coalesce(a, 0) + 1", "country <> 'US'",
                            "CASE WHEN n > 3 THEN 'many' ELSE 'few' END", "CAST(x AS INTEGER)"])
on_demand_views = st.builds(
    OnDemandView, names, st.lists(names, min_size=1, max_size=3, unique=True).map(tuple),
    st.lists(st.builds(Projection, names, od_exprs), min_size=1, max_size=3, unique_by=lambda p: p.name).map(tuple),
    description=texts)
definitions = st.one_of(entities, streams, sources, views(), services, request_sources, on_demand_views)


@given(st.lists(definitions, max_size=6))
def test_sql_text_parses_back_to_the_same_model(objs):
    assert parse(script_sql(objs)) == objs


@given(definitions)
def test_model_survives_storage_round_trip(obj):
    from fsapp.registry.model import from_dict
    assert from_dict(obj.KIND, obj.to_dict()) == obj


@given(views())
def test_python_api_builds_the_sql_model(view):
    py = api.FeatureView(
        name=view.name, source=view.source, entities=view.entities,
        features=[p.name if p.expr == p.name else f"{p.expr} AS {p.name}" for p in view.features],
        aggregations=[api.Aggregation(column=a.column, function=a.function, window=a.window, name=a.name, k=a.k)
                      for a in view.aggregations],
        filter=view.filter, ttl=view.ttl, online=view.online, description=view.description)
    assert py.model == view == parse(to_sql(py.model))[0]


@given(streams)
def test_python_stream_equals_sql_stream(stream):
    py = api.Stream(name=stream.name, schema=[api.Field(c.name, c.type) for c in stream.columns],
                    timestamp_field=stream.timestamp, topic=stream.topic, allowed_lateness=stream.allowed_lateness,
                    format=stream.format, batch_source=stream.batch_source, description=stream.description,
                    avro_schema=stream.avro_schema)
    assert py.model == stream == parse(to_sql(stream))[0]


def test_column_type_spelling_is_canonical():
    assert Column("a", "int8") == Column("a", "BIGINT") and Column("v", "float [ 8 ]").type == "FLOAT[8]"
