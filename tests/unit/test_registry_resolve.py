"""Validation: every kind of mistake gets a clear message, all of them at
once; SQL and Python definitions of the same thing resolve to equal entries."""
import pytest

from fscore.window_spec import continuous, session, sliding
from fsapp.registry.dsl import parse
from fsapp.registry.errors import DefinitionError
from fsapp.registry.python_api import (
    Aggregation, Entity, FeatureService, FeatureView, Field, FileSource, Float64, Int64, Stream, String,
    UnixTimestamp, to_model,
)
from fsapp.registry.resolve import resolve

BASE = """
CREATE ENTITY user (user_id BIGINT);
CREATE ENTITY merchant (merchant_id VARCHAR);
CREATE STREAM transactions (user_id BIGINT, merchant_id VARCHAR, amount DOUBLE, ts TIMESTAMP)
    WITH (topic = 'txns', timestamp = 'ts', allowed_lateness = '5m');
CREATE SOURCE profiles (user_id BIGINT, age BIGINT, segment VARCHAR, updated_at TIMESTAMP)
    WITH (path = 'data/profiles.parquet', timestamp = 'updated_at');
"""

SQL = BASE + """
CREATE FEATURE VIEW user_txn AS
SELECT user_id,
       count(*) OVER sliding('1h', '5m') AS txn_count_1h,
       sum(amount) OVER continuous('24h', '1h') AS amount_24h,
       approx_count_distinct(merchant_id) OVER session('30m') AS merchants
FROM transactions WHERE amount > 0;
CREATE FEATURE VIEW profile WITH (ttl = '1d') AS SELECT user_id, age, lower(segment) AS segment FROM profiles;
CREATE FEATURE SERVICE fraud_v1 AS (user_txn:txn_count_1h, profile);
"""


def python_defs():
    user = Entity(name="user", join_keys=["user_id"], value_type=Int64)
    merchant = Entity(name="merchant", join_keys=[Field("merchant_id", String)])
    txns = Stream(name="transactions", schema=[Field("user_id", Int64), Field("merchant_id", String),
                                               Field("amount", Float64), Field("ts", UnixTimestamp)],
                  timestamp_field="ts", topic="txns", allowed_lateness="5m")
    profiles = FileSource(name="profiles", path="data/profiles.parquet",
                          schema={"user_id": Int64, "age": Int64, "segment": String, "updated_at": UnixTimestamp},
                          timestamp_field="updated_at")
    user_txn = FeatureView(name="user_txn", source=txns, entities=[user], filter="amount>0", aggregations=[
        Aggregation(function="count", window=sliding("1h", "5m"), name="txn_count_1h"),
        Aggregation(column="amount", function="sum", window=continuous("24h", "1h"), name="amount_24h"),
        Aggregation(column="merchant_id", function="approx_count_distinct", window=session("30m"),
                    name="merchants")])
    import datetime as dt
    profile = FeatureView(name="profile", source=profiles, entities=[user], ttl=dt.timedelta(days=1),
                          features=["age", "lower(segment) AS segment"])
    svc = FeatureService(name="fraud_v1", features=[user_txn[["txn_count_1h"]], profile])
    return [to_model(o) for o in (user, merchant, txns, profiles, user_txn, profile, svc)]


def test_sql_and_python_definitions_resolve_to_equal_entries():
    a, b = resolve(parse(SQL)), resolve(python_defs())
    assert list(a) == list(b)
    for name in a:
        assert a[name].spec() == b[name].spec(), name
    v = a["user_txn"].resolved
    assert v["keys"] == [["user_id", "BIGINT"]]
    assert v["features"] == [["txn_count_1h", "BIGINT"], ["amount_24h", "DOUBLE"], ["merchants", "BIGINT"]]
    assert a["profile"].resolved["features"] == [["age", "BIGINT"], ["segment", "VARCHAR"]]


def problems(extra, base=BASE):
    with pytest.raises(DefinitionError) as ei:
        resolve(parse(base + extra))
    return "\n".join(ei.value.problems)


@pytest.mark.parametrize("extra, message", [
    ("CREATE FEATURE VIEW v AS SELECT user_id, sum(amout) OVER lifetime() AS s FROM transactions",
     'column "amout" not found'),
    ("CREATE FEATURE VIEW v AS SELECT user_id, sum(merchant_id) OVER lifetime() AS s FROM transactions",
     "sum needs a numeric column, but merchant_id is VARCHAR"),
    ("CREATE FEATURE VIEW v AS SELECT user_id, amount + merchant_id AS x FROM transactions",
     "feature x = amount + merchant_id"),
    ("CREATE FEATURE VIEW v AS SELECT user_id, sum(amount) AS s FROM transactions",
     "aggregate functions are not allowed in a row-level expression"),
    ("CREATE FEATURE VIEW v AS SELECT user_id, count(*) OVER lifetime() AS n FROM transactions WHERE amount",
     "filter 'amount' is DOUBLE, not BOOLEAN"),
    ("CREATE FEATURE VIEW v AS SELECT amount FROM transactions", "unknown entity: the SELECT lists no entity's"),
    ("CREATE FEATURE VIEW v WITH (entities = 'shop') AS SELECT amount FROM transactions", "unknown entity shop"),
    ("CREATE FEATURE VIEW v AS SELECT user_id, age FROM nowhere", "FROM nowhere: no stream or source"),
    ("CREATE FEATURE VIEW v AS SELECT user_id, count(*) OVER lifetime() AS n FROM profiles",
     "aggregations read a STREAM"),
    ("CREATE FEATURE VIEW v AS SELECT user_id, amount, count(*) OVER lifetime() AS n FROM transactions",
     "an aggregated view selects its entity key(s) and aggregations"),
    ("CREATE FEATURE VIEW v AS SELECT user_id, row_number() OVER () AS n FROM transactions",
     "unknown aggregation 'row_number'"),
    ("CREATE STREAM s2 (user_id VARCHAR, ts TIMESTAMP) WITH (timestamp = 'ts');\n"
     "CREATE FEATURE VIEW v AS SELECT user_id, count(*) OVER lifetime() AS n FROM s2",
     "type mismatch: join key user_id is BIGINT in entity user but VARCHAR in s2"),
    ("CREATE STREAM s2 (a BIGINT, ts VARCHAR) WITH (timestamp = 'ts')", "timestamp column 'ts' has type VARCHAR"),
    ("CREATE STREAM s2 (a BIGINT, ts TIMESTAMP) WITH (timestamp = 'time')", "timestamp column 'time' is not"),
    ("CREATE STREAM s2 (a BIGNUMBER, ts TIMESTAMP) WITH (timestamp = 'ts')", "bad column type"),
    # every push was acknowledged, then the Parquet event log's flush failed (pyarrow has no INTERVAL
    # for Parquet), and with it every checkpoint and close of the store
    ("CREATE STREAM s2 (a INTERVAL, ts TIMESTAMP) WITH (timestamp = 'ts')",
     "stream s2: column 'a' has type INTERVAL, which the offline event log (Parquet) cannot hold as it is "
     "(INTERVAL: send durations as BIGINT (e.g. microseconds) or VARCHAR)"),
    ("CREATE STREAM s2 (a INTERVAL[], ts TIMESTAMP) WITH (timestamp = 'ts')", "has type INTERVAL[], which"),
    ("CREATE STREAM s2 (a BIGINT, ts TIMESTAMP) WITH (timestamp = 'ts', batch_source = 'profiles')",
     "batch_source profiles lacks column 'a'"),
    ("CREATE ENTITY user (id BIGINT)", "duplicate name"),
    ("CREATE STREAM user (a BIGINT, ts TIMESTAMP) WITH (timestamp = 'ts')", "duplicate name"),
    ("CREATE ENTITY loc (point DOUBLE)", "keys are integers or VARCHAR"),
    ("CREATE FEATURE VIEW v AS SELECT user_id, {'a': age} AS s FROM profiles", "online store cannot hold"),
    ("CREATE FEATURE SERVICE s AS (nope:x)", "no feature view 'nope'"),
    # its projection held two columns named ts, and every push raised KeyError
    ("CREATE FEATURE VIEW v AS SELECT user_id, amount, ts FROM transactions",
     "a feature named 'ts' clashes with transactions's timestamp column, which every row is served with as its "
     "event_timestamp; give the feature another name (to serve the event time itself: ts AS event_time)"),
    ("CREATE FEATURE VIEW v AS SELECT user_id, amount AS ts FROM transactions", "a feature named 'ts' clashes"),
    # online served S = count, the training set S = sum
    ("CREATE FEATURE VIEW v AS SELECT user_id, sum(amount) OVER lifetime() AS s, count(*) OVER lifetime() AS S "
     "FROM transactions", "feature names S, s differ only in case, and SQL names do not"),
    ("CREATE FEATURE VIEW v AS SELECT user_id, amount AS a, amount * 2 AS A FROM transactions",
     "feature names A, a differ only in case"),
    ("CREATE FEATURE VIEW v AS SELECT user_id, amount AS _fs_row FROM transactions",
     "feature name(s) _fs_row start with a prefix fstore reserves"),
])
def test_each_mistake_has_a_clear_message(extra, message):
    if message.startswith("unknown aggregation"):
        with pytest.raises(ValueError, match=message):
            parse(BASE + extra)
        return
    assert message in problems(extra)


def test_service_naming_a_missing_feature():
    text = problems("CREATE FEATURE SERVICE s AS (user_txn:nope)", base=SQL)
    assert "user_txn:nope: view user_txn has no feature 'nope' (it has: txn_count_1h, amount_24h, merchants)" in text


def test_all_problems_are_reported_together_with_their_origin():
    defs = parse(BASE + """
        CREATE FEATURE VIEW a AS SELECT user_id, sum(nope) OVER lifetime() AS s FROM transactions;
        CREATE FEATURE VIEW b AS SELECT user_id, max(merchant_id) OVER lifetime() AS m FROM transactions;""")
    with pytest.raises(DefinitionError) as ei:
        resolve(defs, origins={"a": "f.sql:8", "b": "f.sql:9"})
    assert len(ei.value.problems) == 2
    assert ei.value.problems[0].startswith("f.sql:8: feature view a:")
    assert ei.value.problems[1].startswith("f.sql:9: feature view b:")


def test_any_duckdb_scalar_expression_works():
    res = resolve(parse(BASE + """CREATE FEATURE VIEW v AS SELECT user_id,
        CASE WHEN amount > 100 THEN 'big' ELSE 'small' END AS size,
        date_part('hour', ts) AS hour, regexp_matches(merchant_id, '^m[0-9]+$') AS m_ok,
        [amount, amount * 2]::DOUBLE[2] AS vec
        FROM transactions WHERE merchant_id LIKE 'm%' AND NOT isnan(amount)"""))
    assert res["v"].resolved["features"] == [["size", "VARCHAR"], ["hour", "BIGINT"], ["m_ok", "BOOLEAN"],
                                             ["vec", "DOUBLE[2]"]]


def test_row_logic_that_depends_on_when_it_runs_is_refused():
    """`WHERE ts > now()` and `random()` passed apply; online evaluated them at push time and the
    training set at build time, so the two disagreed (online != offline by construction). A column
    that happens to be named current_date is still a column; error() and the timestamp's own date
    parts are functions of the row."""
    for extra, fn in (
            ("CREATE FEATURE VIEW v AS SELECT user_id, count(*) OVER lifetime() AS c FROM transactions "
             "WHERE ts > now() - INTERVAL 1 DAY", "now()"),
            ("CREATE FEATURE VIEW v AS SELECT user_id, sum(amount * random()) OVER lifetime() AS s FROM transactions",
             "random()"),
            ("CREATE FEATURE VIEW v AS SELECT user_id, amount, date_diff('day', ts, CURRENT_TIMESTAMP) AS age "
             "FROM transactions", "CURRENT_TIMESTAMP"),
            ("CREATE FEATURE VIEW v AS SELECT user_id, \"uuid\"()::VARCHAR AS id FROM profiles", "uuid()"),
            ("CREATE FEATURE VIEW v AS SELECT user_id, age FROM profiles WHERE updated_at < today()", "today()"),
            ("CREATE REQUEST SOURCE req (t BIGINT);\nCREATE ON DEMAND FEATURE VIEW od AS SELECT "
             "epoch_us(get_current_timestamp()) - t AS age FROM req", "get_current_timestamp()"),
            ("CREATE FEATURE VIEW v AS SELECT user_id, amount FROM transactions "
             "WHERE current_setting('TimeZone') = 'UTC'", "current_setting()")):
        assert f"{fn} is not a function of the row" in problems(extra), extra
    res = resolve(parse(BASE.replace("amount DOUBLE,", "amount DOUBLE, current_date DATE,") + """
        CREATE FEATURE VIEW v AS SELECT user_id, date_part('hour', ts) AS hour,
            CASE WHEN amount >= 0 THEN amount ELSE error('negative amount') END AS amount_checked
        FROM transactions WHERE current_date > DATE '2020-01-01'"""))
    assert res["v"].resolved["features"] == [["hour", "BIGINT"], ["amount_checked", "DOUBLE"]]


def test_window_hop_must_divide_size_in_python_too():
    with pytest.raises(ValueError, match="multiple of its hop"):
        Aggregation(column="amount", function="sum", window=sliding("1h", "7m"))
