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
