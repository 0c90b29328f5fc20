"""get_historical_features: the worked examples of docs/semantics.md, Feast's
plain-view rule (ties, TTL), row order, input kinds, nulls and errors."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fscore.window_spec import continuous, lifetime, session, sliding, tumbling

from fsapp.errors import EntityDataFrameError, FeatureNameCollision, SourceError, UnknownFeatureError
from fsapp.offline import OfflineStore, ViewDef


@pytest.fixture
def store(tmp_path):
    s = OfflineStore(str(tmp_path / "offline"))
    yield s
    s.close()


def counts(store, spec, times, queries, aggs=("count(*)",)):
    store.log.append("ev", {"k": np.zeros(len(times), np.int64), "ts": np.array(times, np.int64),
                            "x": np.array(times, np.float64)}, timestamp="ts", created_ts=0)
    view = ViewDef.windowed("w", "ev", ["k"], spec, list(aggs))
    q = pd.DataFrame({"k": np.zeros(len(queries), np.int64), "event_timestamp": np.array(queries, np.int64)})
    return store.get_historical_features(q, [view]).to_df()


# ---- semantics.md §2 worked examples


def test_sliding_event_on_hop_boundary_is_first_seen_one_hop_later(store):
    df = counts(store, sliding(30, 10), [5, 10, 29, 30], [30, 39, 40])
    # as of 30 and 39: [0, 30) = 5, 10, 29; as of 40: [10, 40) = 10, 29, 30
    assert df["count_star"].tolist() == [3, 3, 3]
    df = counts(store, sliding(30, 10), [], [40, 50])
    assert df["count_star"].tolist() == [3, 2]  # 50: [20, 50) = 29, 30


def test_tumbling_sees_the_last_closed_window(store):
    df = counts(store, tumbling(20), [0, 19, 20, 39, 40], [20, 39, 40, 59, 60])
    assert df["count_star"].tolist() == [2, 2, 2, 2, 1]


def test_continuous_tail_drops_a_whole_hop(store):
    df = counts(store, continuous(30, 10), [0, 9, 12, 36], [36, 37, 40], ["count(*)", "sum(x)"])
    assert df["count_star"].tolist() == [3, 4, 2]
    assert df["sum_x"].tolist() == [21.0, 57.0, 48.0]


def test_event_at_query_time_is_not_seen(store):
    df = counts(store, lifetime(), [100, 200], [100, 200, 201])
    assert df["count_star"].tolist() == [0, 1, 2]


def test_negative_times_floor_toward_minus_infinity(store):
    df = counts(store, tumbling(10), [-11, -10, -1], [0, -1])
    assert df["count_star"].tolist() == [2, 1]


def test_sessions_split_on_gap_at_least_gap(store):
    df = counts(store, session(10), [0, 9, 19, 30], [19, 20, 31, 0], ["count(*)", "first(x)"])
    assert df["count_star"].tolist() == [2, 1, 1, 0]
    assert df["first_x"].tolist()[:3] == [0.0, 19.0, 30.0]
    assert math.isnan(df["first_x"][3])


def test_late_event_merges_sessions_offline(store):
    df = counts(store, session(10), [0, 9, 19, 30, 25, 14], [31], ["count(*)"])
    assert df["count_star"].tolist() == [6]


def test_ties_follow_arrival_order(store):
    # semantics.md §3: (5, 1.0), (5, 2.0), (3, 9.0), (3, 8.0), (5, 3.0)
    store.log.append("ev", {"k": [0] * 5, "ts": [5, 5, 3, 3, 5], "x": [1.0, 2.0, 9.0, 8.0, 3.0]},
                     timestamp="ts", created_ts=0)
    view = ViewDef.windowed("w", "ev", ["k"], lifetime(), ["first(x)", "last(x)", "last_k(x, 3)"])
    df = store.get_historical_features(pd.DataFrame({"k": [0], "event_timestamp": [6]}), [view]).to_df()
    assert df["first_x"][0] == 9.0 and df["last_x"][0] == 3.0
    assert list(df["last_k_x"][0]) == [3.0, 2.0, 1.0]


def test_empty_window_counts_zero_others_null(store):
    df = counts(store, sliding(10, 5), [100], [0, 116],
                ["count(*)", "count(x)", "sum(x)", "approx_count_distinct(x)", "last_k(x, 2)", "var_pop(x)"])
    assert df["count_star"].tolist() == [0, 0] and df["approx_count_distinct_x"].tolist() == [0, 0]
    assert df["sum_x"].isna().all() and df["var_pop_x"].isna().all()
    assert df["last_k_x"].isna().all()  # last_k of an empty window is null, like every non-count


def test_nan_in_a_batch_source_is_null(store, tmp_path):
    # Parquet min/max statistics leave NaN out; DuckDB must not trust them.
    pq.write_table(pa.table({"k": [0, 0, 0], "ts": [1, 2, 3], "x": [1.0, float("nan"), 3.0]}),
                   str(tmp_path / "n.parquet"))
    store.register_source("n", str(tmp_path / "n.parquet"), timestamp="ts")
    view = ViewDef.windowed("w", "n", ["k"], lifetime(), ["count(x)", "mean(x)"])
    df = store.get_historical_features(pd.DataFrame({"k": [0], "event_timestamp": [10]}), [view]).to_df()
    assert df.iloc[0].tolist()[2:] == [2, 2.0]


def test_nan_values_are_null_except_for_count_star(store):
    store.log.append("ev", {"k": [0, 0, 0], "ts": [1, 2, 3], "x": [1.0, np.nan, 3.0]}, timestamp="ts", created_ts=0)
    view = ViewDef.windowed("w", "ev", ["k"], lifetime(), ["count(*)", "count(x)", "mean(x)", "last(x)"])
    df = store.get_historical_features(pd.DataFrame({"k": [0], "event_timestamp": [10]}), [view]).to_df()
    assert df.iloc[0].tolist()[2:] == [3, 2, 2.0, 3.0]


# ---- plain views: Feast's rule


def plain_store(store, ttl=0):
    store.log.append("p", {"k": [1, 1, 1, 2], "ts": [10, 20, 20, 20], "v": [1, 2, 3, 4]}, timestamp="ts",
                     created_ts=5)
    store.log.append("p", {"k": [1], "ts": [20], "v": [9]}, timestamp="ts", created_ts=4)
    return ViewDef.plain("pv", "p", ["k"], ["v"], ttl=ttl)


def test_plain_view_takes_latest_row_at_or_before_t(store):
    view = plain_store(store)
    q = pd.DataFrame({"k": [1, 1, 1, 2, 3], "event_timestamp": [9, 10, 19, 25, 25]})
    got = store.get_historical_features(q, [view]).to_arrow().column("v").to_pylist()
    assert got == [None, 1, 1, 4, None]


def test_plain_view_tie_breaks_on_created_then_arrival(store):
    view = plain_store(store)
    df = store.get_historical_features(pd.DataFrame({"k": [1], "event_timestamp": [20]}), [view]).to_df()
    assert df["v"].tolist() == [3]


def test_plain_view_ttl_nulls_stale_rows(store):
    view = plain_store(store, ttl=5)
    q = pd.DataFrame({"k": [1, 1, 1], "event_timestamp": [25, 26, 14]})
    got = store.get_historical_features(q, [view]).to_arrow().column("v").to_pylist()
    assert got == [3, None, 1]  # 26 - 5 > 20: stale; 14 - 5 <= 10: fresh


# ---- inputs, order, outputs


def test_output_keeps_input_row_order_and_columns(store, rng):
    n = 2000
    store.log.append("p", {"k": rng.integers(0, 50, n), "ts": rng.integers(0, 1000, n), "v": np.arange(n)},
                     timestamp="ts", created_ts=0)
    view = ViewDef.plain("pv", "p", ["k"], ["v"])
    q = pd.DataFrame({"label": np.arange(500)[::-1], "k": rng.integers(0, 60, 500),
                      "event_timestamp": rng.integers(-10, 1100, 500)})
    df = store.get_historical_features(q, [view]).to_df()
    assert list(df.columns) == ["label", "k", "event_timestamp", "v"]
    assert df["label"].tolist() == q["label"].tolist()
    assert df["k"].tolist() == q["k"].tolist()


def test_pandas_arrow_and_parquet_inputs_agree(store, tmp_path):
    view = plain_store(store)
    times = pd.to_datetime([10, 20, 25], unit="us", utc=True)
    q = pd.DataFrame({"k": [1, 1, 2], "event_timestamp": times})
    path = str(tmp_path / "entities.parquet")
    pq.write_table(pa.Table.from_pandas(q, preserve_index=False), path)
    outs = [store.get_historical_features(x, [view]).to_arrow() for x in (q, pa.Table.from_pandas(q), path)]
    assert outs[0].column("v").to_pylist() == [1, 3, 4]
    assert all(o.column("v").to_pylist() == [1, 3, 4] for o in outs)


def test_to_parquet_writes_the_result(store, tmp_path):
    view = plain_store(store)
    res = store.get_historical_features(pd.DataFrame({"k": [2, 1], "event_timestamp": [20, 10]}), [view])
    out = res.to_parquet(str(tmp_path / "out.parquet"))
    assert pq.read_table(out).column("v").to_pylist() == [4, 1]


def test_batch_file_source_parquet_and_csv(store, tmp_path):
    df = pd.DataFrame({"driver": [7, 7], "ts": pd.to_datetime(["2024-01-01 00:00", "2024-01-01 01:00"], utc=True),
                       "rate": [0.5, 0.7]})
    df.to_parquet(tmp_path / "d.parquet")
    df.assign(ts=df.ts.dt.strftime("%Y-%m-%d %H:%M:%S+00")).to_csv(tmp_path / "d.csv", index=False)
    q = pd.DataFrame({"driver": [7, 7], "event_timestamp": pd.to_datetime(["2024-01-01 00:30", "2024-01-02 00:00"], utc=True)})
    for name, path in (("dp", "d.parquet"), ("dc", "d.csv")):
        store.register_source(name, str(tmp_path / path), timestamp="ts")
        view = ViewDef.plain(f"v_{name}", name, ["driver"], ["rate"], ttl="2h")
        out = store.get_historical_features(q, [view]).to_df()
        assert out["rate"].tolist()[0] == 0.5 and pd.isna(out["rate"][1])


def test_feature_references_and_full_names(store):
    store.add_view(plain_store(store))
    q = pd.DataFrame({"k": [1], "event_timestamp": [30]})
    assert store.get_historical_features(q, ["pv:v"]).to_df()["v"].tolist() == [3]
    assert list(store.get_historical_features(q, ["pv:*"], full_feature_names=True).to_df().columns)[-1] == "pv__v"


# ---- errors say what to fix


def test_missing_timestamp_column(store):
    with pytest.raises(EntityDataFrameError, match="timestamp_column"):
        store.get_historical_features(pd.DataFrame({"k": [1]}), [plain_store(store)])


def test_missing_key_column(store):
    with pytest.raises(EntityDataFrameError, match=r"key column\(s\) \['k'\]"):
        store.get_historical_features(pd.DataFrame({"user": [1], "event_timestamp": [1]}), [plain_store(store)])


def test_a_key_of_another_type_is_refused_not_cast_into_another_entity(store):
    """A training set of `"user_id": ["1"]` joined user 1's values (DuckDB cast the text to the
    integer key), while the online read refuses text for an integer key: a key is never cast into
    another entity's. Integral numbers are integer keys (a pandas column that held a NaN), as
    online; nulls are keys with no events."""
    store.log.append("p", {"k": [1, 2], "ts": [10, 10], "v": [1, 2]}, timestamp="ts", created_ts=0)
    store.log.append("q", {"m": ["7", "8"], "ts": [10, 10], "v": [7, 8]}, timestamp="ts", created_ts=0)
    by_int = ViewDef.plain("pv", "p", ["k"], ["v"], key_kinds=["int64"])
    by_text = ViewDef.plain("qv", "q", ["m"], ["v"], key_kinds=["string"])
    with pytest.raises(EntityDataFrameError, match=r"'k' is VARCHAR, and view pv is keyed by it as an integer: "
                                                   r"give integers \(1, not '1'\)"):
        store.get_historical_features(pd.DataFrame({"k": ["1"], "event_timestamp": [20]}), [by_int])
    with pytest.raises(EntityDataFrameError, match="'m' is BIGINT, and view qv is keyed by it as text"):
        store.get_historical_features(pd.DataFrame({"m": [7], "event_timestamp": [20]}), [by_text])
    with pytest.raises(EntityDataFrameError, match="'k' is view pv's integer key: row 1 holds 1.5"):
        store.get_historical_features(pd.DataFrame({"k": [1.0, 1.5], "event_timestamp": [20, 20]}), [by_int])
    out = store.get_historical_features(pd.DataFrame({"k": [2.0, None, 1.0], "event_timestamp": [20, 20, 20]}),
                                        [by_int]).to_df()
    assert out["v"].tolist()[0] == 2 and math.isnan(out["v"].tolist()[1]) and out["v"].tolist()[2] == 1


def test_entity_columns_sql_cannot_name_are_refused(store):
    """A label column named with a NUL failed in DuckDB's binder (HTTP 500); two columns that
    differ only in case were read as one and the other dropped from the training set."""
    view = plain_store(store)
    with pytest.raises(EntityDataFrameError, match=r"entity_df column 'a\\x00b' has a NUL character in its name"):
        store.get_historical_features(pd.DataFrame({"k": [1], "event_timestamp": [30], "a\x00b": [1]}), [view])
    with pytest.raises(EntityDataFrameError, match="entity_df columns 'label' and 'Label' differ only in case"):
        store.get_historical_features(pd.DataFrame({"k": [1], "event_timestamp": [30], "label": [1], "Label": [2]}),
                                      [view])


def test_bad_timestamp_type(store):
    with pytest.raises(EntityDataFrameError, match="timestamp"):
        store.get_historical_features(pd.DataFrame({"k": [1], "event_timestamp": [1.5]}), [plain_store(store)])


def test_unknown_view_and_feature(store):
    store.add_view(plain_store(store))
    q = pd.DataFrame({"k": [1], "event_timestamp": [1]})
    with pytest.raises(UnknownFeatureError, match="known views: pv"):
        store.get_historical_features(q, ["nope:v"])
    with pytest.raises(UnknownFeatureError, match="no feature 'w'"):
        store.get_historical_features(q, ["pv:w"])


def test_output_name_collision(store):
    q = pd.DataFrame({"k": [1], "event_timestamp": [1], "v": [0]})
    with pytest.raises(FeatureNameCollision, match="full_feature_names"):
        store.get_historical_features(q, [plain_store(store)])


def test_stream_without_events_gives_nulls(store):
    view = ViewDef.windowed("w", "nothing_yet", ["k"], lifetime(), ["count(*)", "sum(x)"])
    df = store.get_historical_features(pd.DataFrame({"k": [1], "event_timestamp": [5]}), [view]).to_df()
    assert df["count_star"].tolist() == [0] and df["sum_x"].isna().all()


def test_unknown_batch_source_path(store, tmp_path):
    with pytest.raises(SourceError, match="cannot read"):
        store.register_source("x", str(tmp_path / "missing.parquet"), timestamp="ts")


def test_registry_feature_view_adapter(store):
    from fsapp.offline import from_registry
    from fsapp.registry.model import Aggregation, Entity, FeatureView, Stream
    fv = FeatureView("user_txn", "ev", ("user",), aggregations=(
        Aggregation("n", "count", None, lifetime()), Aggregation("s", "sum", "x", tumbling(10))))
    stream = Stream("ev", (("k", "BIGINT"), ("x", "DOUBLE"), ("ts", "BIGINT")), "ts", allowed_lateness=5)
    view = from_registry(fv, stream, [Entity("user", (("k", "BIGINT"),))])
    store.log.append("ev", {"k": [0, 0, 0], "ts": [1, 12, 15], "x": [1.0, 2.0, 3.0]}, timestamp="ts", created_ts=0)
    df = store.get_historical_features(pd.DataFrame({"k": [0], "event_timestamp": [20]}), [view]).to_df()
    assert df["n"].tolist() == [3] and df["s"].tolist() == [5.0]


def test_sources_register_from_several_threads_at_once(tmp_path):
    """The engine registers batch file sources from whichever thread asks
    (training sets, materialize): on the store's one DuckDB connection two at
    once failed with "connection is busy", reported as the file being
    unreadable (found by reading the class of the registry bug)."""
    import threading

    pq.write_table(pa.table({"u": list(range(100)), "ts": list(range(100))}), tmp_path / "f.parquet")
    store = OfflineStore(str(tmp_path / "off"))
    errors = []

    def register():
        try:
            for _ in range(100):
                store.register_source("src", str(tmp_path / "f.parquet"), timestamp="ts")
        except Exception as e:  # noqa: BLE001 - the test reports it
            errors.append(e)

    threads = [threading.Thread(target=register) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    store.close()
    assert not errors, errors[:2]
