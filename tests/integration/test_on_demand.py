"""On-demand features (issue 18): defined in SQL or Python, computed from
request columns and stored features, the same online (embedded, REST,
Feast's endpoint) and offline (training sets)."""
import datetime as dt
import statistics

import pytest

from fsapp import FeatureStore
from fsapp.engine.errors import BatchError
from fsapp.errors import EntityDataFrameError
from fsapp.registry.errors import DefinitionError
from fsapp.registry.scaffold import init_repo

ON_DEMAND_SQL = """
CREATE REQUEST SOURCE scoring_request (amount DOUBLE, country VARCHAR);

CREATE ON DEMAND FEATURE VIEW txn_vs_history AS
SELECT amount / user_txn.avg_amount_1d AS amount_to_avg_1d,
       amount - coalesce(user_txn.max_amount_7d, 0) AS amount_over_max_7d,
       country <> 'US' AS is_foreign,
       user_txn.txn_count_1h + 1 AS txn_count_with_this
FROM scoring_request, user_txn;
"""

ON_DEMAND_PY = '''
from fsapp.registry.python_api import Field, Float64, on_demand_feature_view

@on_demand_feature_view(sources=["scoring_request", "user_txn"], schema=[Field("amount_z", Float64)])
def txn_z(df):
    """How unusual the amount is for this user (7 days)."""
    import pandas as pd
    return pd.DataFrame({"amount_z": (df["amount"] - df["avg_amount_1d"]) / df["amount_stddev_7d"]})
'''


NOON = dt.datetime.now(dt.timezone.utc).replace(hour=12, minute=0, second=0, microsecond=0)


def at_noon(**kw):
    """A store whose clock reads today 12:00 UTC (the daily windows hold the pushed events)."""
    return FeatureStore(fsync="never", clock=lambda: int(NOON.timestamp() * 1e6), **kw)


def rows(now, user=1):
    """Yesterday 10, 20, 30, 40 (a closed day: avg_amount_1d 25); today 1 and 2 in the last hour."""
    def row(amount, ts):
        return {"user_id": user, "merchant_id": "m7", "amount": amount, "currency": "USD", "country": "US",
                "is_online": True, "ts": ts}
    day = dt.timedelta(days=1)
    return ([row(10.0 * (i + 1), now - day - dt.timedelta(minutes=40 - 5 * i)) for i in range(4)]
            + [row(1.0, now - dt.timedelta(minutes=30)), row(2.0, now - dt.timedelta(minutes=20))])


@pytest.fixture
def store(tmp_path):
    init_repo(tmp_path / "repo")
    (tmp_path / "repo" / "on_demand.sql").write_text(ON_DEMAND_SQL)
    s = at_noon(repo_path=tmp_path / "repo")
    s.apply()
    yield s
    s.close()


FEATURES = ["txn_vs_history:amount_to_avg_1d", "txn_vs_history:amount_over_max_7d", "txn_vs_history:is_foreign",
            "txn_vs_history:txn_count_with_this", "user_txn:avg_amount_1d"]


def test_sql_on_demand_features_online_and_in_training_sets(store):
    now = NOON
    store.push("transactions", rows(now))
    r = store.get_online_features(features=FEATURES, entity_rows=[
        {"user_id": 1, "amount": 50.0, "country": "DE"},
        {"user_id": 1, "amount": None, "country": "US"},
        {"user_id": 2, "amount": 5.0, "country": "US"}]).to_dict()
    assert r["avg_amount_1d"][0] == 25.0
    assert r["amount_to_avg_1d"] == [2.0, None, None]            # user 2: no history -> null mean -> null
    assert r["amount_over_max_7d"] == [10.0, None, 5.0]
    assert r["is_foreign"] == [True, False, False]
    assert r["txn_count_with_this"] == [3, 3, 1]                  # counts read 0 for an unknown key
    # the training set applies the same definitions to the label rows' request columns
    labels = {"user_id": [1, 1, 2], "amount": [50.0, None, 5.0], "country": ["DE", "US", "US"],
              "event_timestamp": [now, now, now]}
    t = store.get_historical_features(labels, features=FEATURES).to_arrow().to_pydict()
    for f in ("amount_to_avg_1d", "amount_over_max_7d", "is_foreign", "txn_count_with_this"):
        assert t[f] == r[f], f


def test_missing_request_column_is_named(store):
    with pytest.raises(BatchError, match="needs the request column.*amount"):
        store.get_online_features(features=FEATURES[:1], entity_rows=[{"user_id": 1, "country": "US"}])
    with pytest.raises(BatchError, match="request column 'amount' .* takes numbers"):
        store.get_online_features(features=FEATURES[:1], entity_rows=[{"user_id": 1, "amount": "x", "country": "US"}])
    with pytest.raises(EntityDataFrameError, match="request column.*amount"):
        store.get_historical_features({"user_id": [1], "country": ["US"],
                                       "event_timestamp": [NOON]},
                                      features=FEATURES[:1]).to_arrow()


def test_division_by_zero_and_failed_casts_read_null(tmp_path):
    init_repo(tmp_path / "repo")
    (tmp_path / "repo" / "on_demand.sql").write_text("""
CREATE REQUEST SOURCE r (amount DOUBLE, n BIGINT);
CREATE ON DEMAND FEATURE VIEW edge AS
SELECT amount / 0 AS inf_is_null, n % 0 AS mod_zero_is_null, CAST(amount AS INTEGER) AS cast_may_fail,
       CAST(n AS VARCHAR) || '!' AS text
FROM r;
""")
    with FeatureStore(tmp_path / "repo", fsync="never") as s:
        s.apply()
        feats = ["edge:inf_is_null", "edge:mod_zero_is_null", "edge:cast_may_fail", "edge:text"]
        r = s.get_online_features(features=feats, entity_rows=[{"amount": 2.5, "n": 7}, {"amount": 1e300, "n": 0}])
        d = r.to_dict()
        assert d["inf_is_null"] == [None, None] and d["mod_zero_is_null"] == [None, None]
        assert d["cast_may_fail"] == [2, None] and d["text"] == ["7!", "0!"]  # DOUBLE 2.5 -> 2: DuckDB rounds half to even
        t = s.get_historical_features({"amount": [2.5, 1e300], "n": [7, 0],
                                       "event_timestamp": [NOON] * 2},
                                      features=feats).to_arrow().to_pydict()
        for f in ("inf_is_null", "mod_zero_is_null", "cast_may_fail", "text"):
            assert t[f] == d[f], f


def test_python_on_demand_view_and_feature_service(tmp_path):
    pytest.importorskip("pandas")
    init_repo(tmp_path / "repo")
    (tmp_path / "repo" / "on_demand.sql").write_text(ON_DEMAND_SQL)
    (tmp_path / "repo" / "on_demand_py.py").write_text(ON_DEMAND_PY)
    with (tmp_path / "repo" / "features.sql").open("a") as f:
        f.write("\nCREATE FEATURE SERVICE scoring AS (txn_vs_history:amount_to_avg_1d, txn_z:amount_z, "
                "user_txn:avg_amount_1d);\n")
    with at_noon(repo_path=tmp_path / "repo") as s:
        s.apply()
        now = NOON
        s.push("transactions", rows(now))
        r = s.get_online_features(feature_service="scoring", entity_rows=[
            {"user_id": 1, "amount": 50.0, "country": "DE"}, {"user_id": 3, "amount": 5.0, "country": "US"}]).to_dict()
        assert r["amount_z"][0] == pytest.approx((50.0 - 25.0) / statistics.stdev([10, 20, 30, 40, 1, 2]))
        assert r["amount_z"][1] is None and r["amount_to_avg_1d"] == [2.0, None]
        labels = {"user_id": [1, 3], "amount": [50.0, 5.0], "country": ["DE", "US"], "event_timestamp": [now, now]}
        t = s.get_historical_features(labels, feature_service="scoring").to_arrow().to_pydict()
        assert t["amount_z"] == r["amount_z"] and t["amount_to_avg_1d"] == r["amount_to_avg_1d"]
        lineage = s.engine.registry.lineage("txn_z")
        kinds = {n["kind"] for n in lineage["nodes"]}
        assert {"request_source", "on_demand_view", "feature_view", "feature_service"} <= kinds


@pytest.mark.parametrize("sql, message", [
    ("CREATE ON DEMAND FEATURE VIEW bad AS SELECT amount * 2 AS x FROM nowhere",
     "FROM nowhere: no request source or feature view"),
    ("CREATE REQUEST SOURCE r (amount DOUBLE);\nCREATE ON DEMAND FEATURE VIEW bad AS SELECT amount + user_txn.nope "
     "AS x FROM r, user_txn", "feature x = amount \\+ user_txn.nope"),
    ("CREATE REQUEST SOURCE r (amount DOUBLE);\nCREATE ON DEMAND FEATURE VIEW bad AS SELECT sum(amount) AS x FROM r",
     "aggregate functions are not allowed"),
    ("CREATE REQUEST SOURCE r (amount DOUBLE);\nCREATE ON DEMAND FEATURE VIEW bad AS SELECT "
     "user_txn.last_5_amounts AS x FROM r, user_txn", "input user_txn.last_5_amounts has type"),
])
def test_bad_on_demand_definitions_say_what_to_fix(tmp_path, sql, message):
    init_repo(tmp_path / "repo")
    (tmp_path / "repo" / "bad.sql").write_text(sql + ";\n")
    s = FeatureStore(tmp_path / "repo", fsync="never")
    with pytest.raises(DefinitionError, match=message):
        s.apply()


def test_rest_feast_endpoint_and_grpc_context_read_the_same(tmp_path):
    """REST /api/v1/features/online and Feast's /get-online-features take
    request columns beside the keys; a missing one is a 422 naming it."""
    from falcon import testing

    from fsapp.api import EngineBackend, create_app
    from fsapp.engine import Engine
    from fsapp.registry.repo import Repo

    init_repo(tmp_path / "repo")
    (tmp_path / "repo" / "on_demand.sql").write_text(ON_DEMAND_SQL)
    repo = Repo(tmp_path / "repo")
    repo.apply()
    noon = int(NOON.timestamp() * 1e6)
    eng = Engine(str(repo.data_dir / "engine"), str(repo.registry_path), fsync="never", clock=lambda: noon)
    try:
        eng.push("transactions", rows(NOON))
        api = testing.TestClient(create_app(EngineBackend(eng)))
        ents = {"user_id": [1, 2], "amount": [50.0, 5.0], "country": ["DE", "US"]}
        for path in ("/api/v1/features/online", "/get-online-features"):
            res = api.simulate_post(path, json={"features": FEATURES, "entities": ents})
            assert res.status_code == 200, res.text
            doc = res.json
            vals = dict(zip(doc["metadata"]["feature_names"], [r["values"] for r in doc["results"]]))
            assert vals["amount_to_avg_1d"] == [2.0, None] and vals["is_foreign"] == [True, False]
            statuses = dict(zip(doc["metadata"]["feature_names"], [r["statuses"] for r in doc["results"]]))
            assert statuses["amount_to_avg_1d"] == ["PRESENT", "NULL_VALUE"]
            res = api.simulate_post(path, json={"features": FEATURES, "entities": {"user_id": [1]}})
            assert res.status_code == 422 and "amount" in res.text and "country" in res.text, res.text
        res = api.simulate_post("/api/v1/features/online", json={
            "features": FEATURES, "entities": {"user_id": [1], "amount": ["lots"], "country": ["DE"]}})
        assert res.status_code == 422 and "takes numbers" in res.text
    finally:
        eng.close()


def test_sql_outside_the_compiled_subset_runs_in_duckdb_and_as_of_reads_work(store):
    """An expression the numpy compiler does not cover (a DECIMAL result, a
    regexp) is evaluated by DuckDB per read: the same values, only slower;
    an as_of read (the engine recomputes its inputs) computes them too."""
    import fsapp.ondemand.evaluate as ev

    (store.repo.root / "more.sql").write_text("""
CREATE ON DEMAND FEATURE VIEW slow_path AS
SELECT user_txn.txn_count_1h * 2.5 AS decimal_result, regexp_matches(country, '^D') AS starts_with_d
FROM scoring_request, user_txn;
""")
    store.apply()
    store.push("transactions", rows(NOON))
    feats = ["slow_path:decimal_result", "slow_path:starts_with_d"]
    ents = [{"user_id": 1, "amount": 1.0, "country": "DE"}, {"user_id": 9, "amount": 1.0, "country": "US"}]
    r = store.get_online_features(features=feats, entity_rows=ents).to_dict()
    assert r["decimal_result"] == [5.0, 0.0] and r["starts_with_d"] == [True, False]
    info = store.engine.registry.view_or_on_demand("slow_path")
    assert all(c is None for c in info.evaluator().compiled.values())  # really the DuckDB path
    labels = {"user_id": [1, 9], "amount": [1.0, 1.0], "country": ["DE", "US"], "event_timestamp": [NOON, NOON]}
    t = store.get_historical_features(labels, features=feats).to_arrow().to_pydict()
    assert t["decimal_result"] == r["decimal_result"] and t["starts_with_d"] == r["starts_with_d"]
    as_of = store.get_online_features(features=feats + ["txn_vs_history:txn_count_with_this"], entity_rows=ents,
                                      as_of=NOON).to_dict()
    assert as_of["decimal_result"] == [5.0, 0.0] and as_of["txn_count_with_this"] == [3, 1]
    assert ev.Evaluator  # the module under test
