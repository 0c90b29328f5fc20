"""materialize: values as of `end` into the online table; late events heal."""
from __future__ import annotations

import numpy as np

from fscore.durable import DurableTable
from fscore.window import WindowView
from fscore.window_ref import RefView
from fscore.window_spec import sliding

from fsapp.offline import OfflineStore, ViewDef, online_schema


def test_late_event_is_healed_by_materialize(tmp_path):
    store = OfflineStore(str(tmp_path / "off"))
    view = ViewDef.windowed("w", "ev", ["k"], sliding(30, 10), ["count(*)", "sum(x)", "last_k(x, 2)"])
    spec, aggs = view.aggregations[0].window, [a.agg for a in view.aggregations]
    k = np.array([1, 1, 2, 1, 1]); ts = np.array([15, 22, 29, 30, 12]); x = np.array([1.0, 2.0, 3.0, 4.0, 9.0])
    online = WindowView(spec, aggs, 3, allowed_lateness=0)
    late = online.update(k, ts, {"x": x})
    assert late.tolist() == [False, False, False, False, True]  # 12 < 30 - 0
    store.log.append("ev", {"k": k, "ts": ts, "x": x}, timestamp="ts", created_ts=0)  # the engine logs it anyway
    before, _ = online.value_as_of([1], 40)
    assert before["count_star"][0] == 3  # [10, 40) = 15, 22, 30: the late 12 is missing

    table = DurableTable.open(str(tmp_path / "online"), online_schema(view), capacity=64)
    assert store.materialize([view], 0, 40, table, now=1000) == {"w": 2}
    got = table.get_batch(np.array([1, 2]), now=40)
    ref = RefView(spec, aggs, 3, allowed_lateness=10**6)
    ref.update(k, ts, {"x": x})
    want, _ = ref.value_as_of([1, 2], 40)
    assert got.values["count_star"].tolist() == want["count_star"].tolist() == [4, 1]
    assert got.values["sum_x"].tolist() == want["sum_x"].tolist() == [16.0, 3.0]
    assert got.event_ts.tolist() == [30, 29]  # the key's latest event before end
    table.close()
    store.close()


def test_plain_view_materialize_incremental(tmp_path):
    store = OfflineStore(str(tmp_path / "off"))
    view = ViewDef.plain("p", "ev", ["k"], ["v"])
    store.log.append("ev", {"k": [1, 2, 1], "ts": [10, 20, 30], "v": [1.0, 2.0, 3.0]}, timestamp="ts", created_ts=5)
    table = DurableTable.open(str(tmp_path / "online"), online_schema(view), capacity=64)
    assert store.materialize_incremental([view], 25, table, now=100) == {"p": 2}
    got = table.get_batch(np.array([1, 2]), now=25)
    assert got.values["v"].tolist() == [1.0, 2.0] and got.event_ts.tolist() == [10, 20]
    assert store.materialize_incremental([view], 31, table, now=100) == {"p": 1}  # only key 1 changed
    got = table.get_batch(np.array([1, 2]), now=31)
    assert got.values["v"].tolist() == [3.0, 2.0] and got.created_ts.tolist() == [5, 5]
    table.close()
    store.close()


class _Rows:
    """A writer that keeps what it is given (keys and values per put)."""

    def __init__(self, view):
        self.schema = online_schema(view)
        self.puts = []

    def put_batch(self, keys, values, event_ts, created_ts, *, now, nulls):
        self.puts.append((list(keys), {k: list(v) for k, v in values.items()}, list(event_ts)))


def test_float_epoch_timestamps_in_a_batch_source_are_seconds(tmp_path):
    # a Parquet column written from time.time(): float epoch seconds, read by
    # the rule pushes follow (|x| < 1e11 seconds) instead of being refused
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"k": [1, 2], "v": [1.5, 2.5], "updated_at": [1_764_000_000.25, 1_764_000_100.0]}),
                   str(tmp_path / "p.parquet"))
    store = OfflineStore(str(tmp_path / "off"))
    store.register_source("profiles", str(tmp_path / "p.parquet"), timestamp="updated_at")
    view = ViewDef.plain("p", "profiles", ["k"], ["v"])
    rows = _Rows(view)
    res = store.materialize([view], 0, 1_800_000_000 * 10**6, rows, now=1)
    assert res == {"p": 2} and res.skipped == {}
    got = sorted(row for keys, values, event_ts in rows.puts for row in zip(keys, values["v"], event_ts))
    assert got == [(1, 1.5, 1_764_000_000_250_000), (2, 2.5, 1_764_000_100_000_000)]
    store.close()


def test_a_view_over_an_unreadable_source_is_skipped_with_the_reason(tmp_path):
    # a fresh repo's profile file was missing: materialize used to write the
    # stream views, then fail on the profile view ("push events first")
    import pyarrow as pa
    import pytest

    from fsapp.errors import SourceError

    store = OfflineStore(str(tmp_path / "off"))
    with pytest.raises(SourceError, match="cannot read"):
        store.register_source("profiles", str(tmp_path / "missing.parquet"), timestamp="updated_at")
    assert "missing.parquet" in store.source_problem("profiles")
    stream_view = ViewDef.windowed("w", "ev", ["k"], sliding(30, 10), ["count(*)"])
    profile = ViewDef.plain("p", "profiles", ["k"], [("segment", "lower(segment)")])
    store.log.append("ev", {"k": [1, 2], "ts": [5, 15]}, timestamp="ts", created_ts=0)
    writers = {"w": _Rows(stream_view), "p": _Rows(profile)}
    res = store.materialize([profile, stream_view], 0, 40, writers, now=50)
    assert res == {"w": 2} and list(res.skipped) == ["p"]
    assert "source profiles: cannot read" in res.skipped["p"] and "missing.parquet" in res.skipped["p"]
    assert writers["p"].puts == []
    inc = store.materialize_incremental([profile, stream_view], 60, writers, now=70)
    assert inc == {"w": 0} and list(inc.skipped) == ["p"]  # w: from 40 on; p: still unreadable
    # a historical read over it says which file, not "push events first"
    with pytest.raises(SourceError, match="missing.parquet"):
        store.get_historical_features(pa.table({"k": [1], "event_timestamp": [40]}), [profile]).to_arrow()
    store.close()
