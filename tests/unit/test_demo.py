"""The demo's own arithmetic follows the documented rules it prints: the
late count by docs/semantics.md §4 (the engine's count must equal it), and
each shown feature's window by §2."""
import datetime as dt

import numpy as np

from fsapp import FeatureStore
from fsapp.demo import HOUR_US, LATENESS_US, MIN_US, late_by_the_rule, make_events, window_bounds
from fsapp.registry.scaffold import init_repo


def test_late_by_the_rule_is_the_documented_example():
    # semantics.md §4: L = 10, arrivals 100, 95, 90, 89, 120, 109 -> 89 and 109 are late
    late = late_by_the_rule(np.array([100, 95, 90, 89, 120, 109]), 10)
    assert late.tolist() == [False, False, False, True, False, True]


def test_window_bounds_follow_the_window_rules():
    t = int(dt.datetime(2026, 11, 27, 10, 7, 30, tzinfo=dt.timezone.utc).timestamp()) * 10**6
    ten = t - 7 * MIN_US - 30 * 10**6
    b = window_bounds(t)
    assert b["txn_count_1h"] == (ten + 5 * MIN_US - HOUR_US, ten + 5 * MIN_US)   # the last closed 5-min hop
    assert b["amount_24h"] == (ten - 24 * HOUR_US, t)                            # fresh to t, tail on the hour
    assert b["distinct_merchants_1d"] == (ten - 24 * HOUR_US, ten)              # the last closed hour


def test_the_generators_late_count_is_the_engines(tmp_path, rng):
    # the demo printed "109 later than that" (events delayed 8-20 min) while
    # the engine counted 105: a delay beyond the lateness is not late when no
    # newer event has arrived yet. The generator now counts by the rule.
    now = (int(dt.datetime.now(dt.timezone.utc).timestamp()) // 3600) * 3600 * 10**6
    ev, st = make_events(rng, 3_000, now)
    assert st["late"] == int(st["late_mask"].sum()) and st["late"] <= st["delayed_8m"]
    init_repo(tmp_path / "repo")
    store = FeatureStore(tmp_path / "repo", fsync="never")
    store.apply()
    late = 0
    for off in range(0, 3_000, 500):
        late += store.push("transactions", {k: v[off:off + 500] for k, v in ev.items()})["late"]
    store.close()
    assert late == st["late"]
    assert LATENESS_US == 5 * MIN_US  # the starter stream's allowed_lateness the demo assumes
