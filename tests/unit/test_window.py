"""Window kernels: the worked examples of docs/semantics.md, run against the
compiled view and the pure-Python oracle (one test body, both implementations),
plus the compiled view's own surface (state, sizing, errors)."""
import math

import numpy as np
import pytest

import fscore.window
from fscore.errors import SchemaError, WindowSpecError, WindowStateError
from fscore.window import EMPTY, WindowView, _hll_reserve_from, hash_array
from fscore.window_ref import IncrementalRefView, RefView
from fscore.window_spec import (
    HOUR, MINUTE, Agg, continuous, duration, hash_value, lifetime, session, sliding, tumbling,
)

NAN = float("nan")


@pytest.fixture(params=[RefView, WindowView], ids=["ref", "cy"])
def View(request):
    return request.param


def values(view, slot, t):
    out, exact = view.value_as_of([slot], t)
    assert exact[0], "the worked examples are all inside the exact horizon"
    return {k: (v[0].tolist() if v.ndim == 2 else v[0].item()) for k, v in out.items()}


def feed(view, rows, column="x"):
    slots, ts, xs = zip(*rows) if rows else ((), (), ())
    return view.update(np.array(slots, np.int64), np.array(ts, np.int64),
                       {column: np.array(xs, np.float64)} if view.columns else None)


def test_compiled_module_is_loaded():
    assert fscore.window.__file__.endswith(".so"), fscore.window.__file__


# ---- window edges (semantics.md §Windows) ------------------------------------

def test_event_exactly_at_query_time_is_not_seen(View):
    v = View(lifetime(), ["count(*)", "sum(x)"], 1)
    feed(v, [(0, 100, 1.0)])
    assert values(v, 0, 200) == {"count_star": 1, "sum_x": 1.0}
    feed(v, [(0, 200, 2.0)])
    out, exact = v.value_as_of([0], 200)
    if View is RefView:
        assert out["count_star"][0] == 1
    else:
        # One lifetime cell cannot be split at t: the kernel says so rather
        # than guess (semantics.md §Exactness); the offline store answers it.
        assert not exact[0]
    assert values(v, 0, 201) == {"count_star": 2, "sum_x": 3.0}


def test_event_on_the_hop_boundary_belongs_to_the_next_hop(View):
    v = View(sliding(30, 10), ["count(*)"], 1)
    feed(v, [(0, 29, 1), (0, 30, 1)])
    assert values(v, 0, 30)["count_star"] == 1      # [0, 30)
    assert values(v, 0, 40)["count_star"] == 2      # [10, 40)


def test_sliding_query_on_hop_boundary_closes_the_hop(View):
    # sliding(30, 10): as of t, events in [align(t,10) - 30, align(t,10)).
    v = View(sliding(30, 10), ["count(*)"], 1)
    feed(v, [(0, 5, 1), (0, 10, 1), (0, 29, 1), (0, 30, 1)])
    assert values(v, 0, 30)["count_star"] == 3      # [0, 30): 5, 10, 29
    assert values(v, 0, 39)["count_star"] == 3      # still [0, 30)
    assert values(v, 0, 40)["count_star"] == 3      # [10, 40): 10, 29, 30
    assert values(v, 0, 31)["count_star"] == 3


def test_tumbling_is_the_last_closed_window(View):
    v = View(tumbling(20), ["count(*)"], 1, allowed_lateness=40)   # keeps [0, 20) retained
    feed(v, [(0, 0, 1), (0, 19, 1), (0, 20, 1), (0, 39, 1), (0, 40, 1)])
    assert values(v, 0, 20)["count_star"] == 2      # [0, 20)
    assert values(v, 0, 39)["count_star"] == 2      # [0, 20) until 40
    assert values(v, 0, 40)["count_star"] == 2      # [20, 40)
    assert values(v, 0, 41)["count_star"] == 2


def test_continuous_is_fresh_to_t_with_tail_rounded_to_hop(View):
    # continuous(30, 10) as of 37: [align(7, 10), 37) = [0, 37).
    v = View(continuous(30, 10), ["count(*)"], 1)
    feed(v, [(0, 0, 1), (0, 9, 1), (0, 12, 1), (0, 36, 1)])
    assert values(v, 0, 37)["count_star"] == 4
    assert values(v, 0, 36)["count_star"] == 3      # the event at 36 is not before 36
    # as of 40: [10, 40): the tail bucket [0, 10) has left the window.
    assert values(v, 0, 40)["count_star"] == 2


def test_session_is_the_most_recent_run_with_gaps_below_gap(View):
    v = View(session(10), ["count(*)", "first(x)", "last(x)"], 1, allowed_lateness=50)
    feed(v, [(0, 0, 1.0), (0, 9, 2.0), (0, 19, 3.0), (0, 30, 4.0)])
    # 0, 9, 19 are one session (gaps 9, 10? no: 19 - 9 = 10 is not < 10).
    assert values(v, 0, 20) == {"count_star": 1, "first_x": 3.0, "last_x": 3.0}
    assert values(v, 0, 19) == {"count_star": 2, "first_x": 1.0, "last_x": 2.0}
    assert values(v, 0, 31)["count_star"] == 1
    # A late event at 25 bridges 19 and 30 (gaps 6 and 5): one session 19..30.
    assert not feed(v, [(0, 25, 5.0)]).any()
    assert values(v, 0, 31) == {"count_star": 3, "first_x": 3.0, "last_x": 4.0}
    # ... and one at 14 bridges 9 and 19: everything is one session.
    feed(v, [(0, 14, 6.0)])
    assert values(v, 0, 31) == {"count_star": 6, "first_x": 1.0, "last_x": 4.0}


def test_lifetime_sees_everything_before_t(View):
    v = View(lifetime(), ["count(*)", "min(x)", "max(x)"], 2)
    feed(v, [(0, -5, 3.0), (1, 0, 1.0), (0, 10**12, -2.0)])
    assert values(v, 0, 10**12 + 1) == {"count_star": 2, "min_x": -2.0, "max_x": 3.0}
    assert values(v, 1, 10**12 + 1) == {"count_star": 1, "min_x": 1.0, "max_x": 1.0}


def test_negative_times_align_toward_minus_infinity(View):
    v = View(tumbling(10), ["count(*)"], 1)
    feed(v, [(0, -11, 1), (0, -10, 1), (0, -1, 1)])
    assert values(v, 0, 0)["count_star"] == 2       # [-10, 0)
    assert values(v, 0, -1)["count_star"] == 1      # [-20, -10)


# ---- aggregations (semantics.md §Aggregations) --------------------------------

def test_empty_window_counts_zero_and_the_rest_is_null(View):
    v = View(sliding(30, 10), ["count(*)", "count(x)", "sum(x)", "mean(x)", "min(x)", "first(x)",
                                "var_samp(x)", "approx_count_distinct(x)", "last_k(x, 2)"], 1)
    out = values(v, 0, 1000)
    assert out["count_star"] == out["count_x"] == out["approx_count_distinct_x"] == 0
    for k in ("sum_x", "mean_x", "min_x", "first_x", "var_samp_x"):
        assert math.isnan(out[k]), k
    assert all(math.isnan(x) for x in out["last_k_x"])


def test_nulls_are_ignored_except_by_count_star(View):
    v = View(lifetime(), ["count(*)", "count(x)", "sum(x)", "mean(x)", "last(x)"], 1)
    feed(v, [(0, 1, 2.0), (0, 2, NAN), (0, 3, 4.0), (0, 4, NAN)])
    assert values(v, 0, 10) == {"count_star": 4, "count_x": 2, "sum_x": 6.0, "mean_x": 3.0,
                                "last_x": 4.0}


def test_first_and_last_break_equal_times_by_arrival(View):
    v = View(lifetime(), ["first(x)", "last(x)", "last_k(x, 3)"], 1, allowed_lateness=10)
    feed(v, [(0, 5, 1.0), (0, 5, 2.0), (0, 3, 9.0), (0, 3, 8.0), (0, 5, 3.0)])
    # first: smallest ts, the earliest arrival among ties; last: the latest.
    assert values(v, 0, 10) == {"first_x": 9.0, "last_x": 3.0, "last_k_x": [3.0, 2.0, 1.0]}


def test_var_and_stddev_sample_and_population(View):
    v = View(lifetime(), ["var_samp(x)", "var_pop(x)", "stddev_samp(x)", "stddev_pop(x)"], 1)
    feed(v, [(0, i, x) for i, x in enumerate([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])])
    out = values(v, 0, 100)
    assert out["var_pop_x"] == pytest.approx(4.0)
    assert out["stddev_pop_x"] == pytest.approx(2.0)
    assert out["var_samp_x"] == pytest.approx(32 / 7)
    assert out["stddev_samp_x"] == pytest.approx(math.sqrt(32 / 7))
    one = View(lifetime(), ["var_samp(x)", "var_pop(x)"], 1)
    feed(one, [(0, 0, 3.0)])
    out = values(one, 0, 1)
    assert math.isnan(out["var_samp_x"]) and out["var_pop_x"] == 0.0


def test_variance_is_stable_on_a_large_offset():
    # The naive E[x^2] - E[x]^2 loses every digit here; Welford/Chan keeps them.
    v = WindowView(sliding(40, 10), ["var_pop(x)"], 1)
    xs = 1e9 + np.array([4.0, 7.0, 13.0, 16.0] * 10)
    v.update(np.zeros(40, np.int64), np.arange(40), {"x": xs})
    assert v.value_as_of([0], 40)[0]["var_pop_x"][0] == pytest.approx(22.5, rel=1e-9)


def test_approx_count_distinct_hashes_ints_and_integral_floats_alike():
    ints = np.array([0, 1, -1, 2**40, -(2**62)], np.int64)
    np.testing.assert_array_equal(hash_array(ints), hash_array(ints.astype(np.float64)))
    assert [int(h) for h in hash_array(np.array([0.5, -0.0, 1e300]))] == \
        [hash_value(0.5), hash_value(0), hash_value(1e300)]
    v = WindowView(lifetime(), ["approx_count_distinct(id)"], 1, hll_p=12)
    v.update(np.zeros(6, np.int64), np.arange(6), {"id": np.array([1, 2, 2, 3, 3, 3])})
    assert v.value_as_of([0], 10)[0]["approx_count_distinct_id"][0] == 3


def test_several_aggregations_share_one_ring():
    v = WindowView(sliding(HOUR, 5 * MINUTE), ["count(*)", "sum(amount)", "mean(amount)"], 10)
    assert v.ring_len == 13 and v.width == 5     # bucket, count, ts range (one word: packed); n, sum
    assert v.bytes_per_slot == 13 * 5 * 8


# ---- lateness (semantics.md §Lateness) ----------------------------------------

def test_late_events_are_handed_back_and_not_applied(View):
    v = View(sliding(30, 10), ["count(*)"], 2, allowed_lateness=10)
    late = feed(v, [(0, 100, 1), (1, 95, 1), (1, 90, 1), (0, 89, 1), (1, 120, 1), (0, 109, 1)])
    # watermark is per stream: 100, then 120; an event is late when ts < wm - 10.
    assert late.tolist() == [False, False, False, True, False, True]
    assert v.late_count == 2
    assert values(v, 1, 110)["count_star"] == 2


@pytest.mark.parametrize("chunks", [[9], [8, 1], [1] * 9], ids=["one-batch", "two", "singles"])
def test_an_event_behind_a_keys_last_buckets_is_late_even_when_its_cell_still_holds_them(View, chunks):
    # A hypothesis find: tumbling(20), L = 0 (ring_len 2). Part 0 fills buckets 0 and 1, then
    # bucket 4 drops bucket 0; part 1 (its own watermark: none yet) sends ts 20, bucket 1,
    # older than the key's last two buckets (3, 4). A run of cells has dropped bucket 1 and
    # judges it late; a ring still held it (not yet overwritten) and applied it.
    v = View(tumbling(20), ["count(*)"], 1, allowed_lateness=0, max_sessions=1)
    ts = np.array([0] * 6 + [20, 80, 20], np.int64)
    parts = np.array([0] * 8 + [1], np.int64)
    late, at = [], 0
    for n in chunks:
        late += v.update(np.zeros(n, np.int64), ts[at:at + n], parts=parts[at:at + n]).tolist()
        at += n
    assert late == [False] * 8 + [True]
    assert v.late_count == 1 and v.part_watermarks == {0: 80}
    assert values(v, 0, 100)["count_star"] == 1


def test_a_rings_stale_bucket_is_dropped_in_snapshots_not_brought_back_as_a_run():
    # The same class through a restart: the ring above (buckets 4 and a stale 1) was written to a
    # snapshot with both cells and loaded as a run of two, whose bucket 1 then took part 1's event.
    v = WindowView(tumbling(20), ["count(*)"], 1, allowed_lateness=0, max_sessions=1)
    v.update(np.zeros(3, np.int64), np.array([0, 20, 80], np.int64), parts=np.zeros(3, np.int64))
    state = v.export_slots(np.array([0]))
    assert state["lens"].tolist() == [1] and state["floor"].tolist() == [1]  # bucket 1: dropped
    again = WindowView.from_bytes(v.to_bytes())
    assert again.to_bytes() == v.to_bytes()
    assert again.update(np.zeros(1, np.int64), np.array([20], np.int64), parts=np.ones(1, np.int64)).tolist() == [True]
    for view in (v, again):  # the same answers before and after, exact or not
        got, exact = view.value_as_of(np.zeros(3, np.int64), np.array([30, 90, 100], np.int64))
        assert got["count_star"].tolist()[1:] == [0, 1] and exact.tolist() == [False, True, True]
    # and a merge (a backfill) into the ring drops a cell of that bucket as a run does
    other = WindowView(tumbling(20), ["count(*)"], 1, allowed_lateness=0, max_sessions=1)
    other.update(np.zeros(1, np.int64), np.array([25], np.int64))
    assert v.merge_from(other) == 1 and again.merge_from(other) == 1
    a, b = v.export_slots(np.array([0])), again.export_slots(np.array([0]))
    assert all(np.array_equal(a[k], b[k]) for k in a) and a["floor"].tolist() == [1]


def test_a_snapshot_holding_cells_older_than_the_ring_loads_without_them():
    # Snapshots written before that fix hold such cells: loading drops them and raises the floor.
    wide = WindowView(tumbling(20), ["count(*)"], 1, allowed_lateness=100)  # ring_len 7
    wide.update(np.zeros(3, np.int64), np.array([20, 21, 80], np.int64))   # buckets 1 (2 events), 4
    v = WindowView(tumbling(20), ["count(*)"], 1, allowed_lateness=0)      # ring_len 2, same cells
    v.import_slots(np.array([0]), wide.export_slots(np.array([0])))
    assert v.export_slots(np.array([0]))["lens"].tolist() == [1] and v._floors().tolist() == [1]
    assert v.update(np.zeros(1, np.int64), np.array([25], np.int64), parts=np.ones(1, np.int64)).tolist() == [True]
    got, exact = v.value_as_of(np.zeros(2, np.int64), np.array([30, 100], np.int64))
    assert exact.tolist() == [False, True] and got["count_star"][1] == 1


def test_session_state_is_bounded_and_older_events_become_late(View):
    v = View(session(5), ["count(*)"], 1, allowed_lateness=1000, max_sessions=2)
    late = feed(v, [(0, 0, 1), (0, 100, 1), (0, 200, 1),   # third session drops the first
                    (0, 3, 1),      # would join the dropped session: late
                    (0, 50, 1),     # a new session older than both kept ones, no room: late
                    ])
    assert late.tolist() == [False, False, False, True, True]
    assert values(v, 0, 201)["count_star"] == 1


# ---- state: sizing, TTL, serialisation (compiled view) -----------------------

def test_ring_length_bounds_memory_per_key():
    assert WindowView(sliding(HOUR, 5 * MINUTE), ["count(*)"], allowed_lateness=7 * MINUTE).ring_len == 12 + 2 + 1
    assert WindowView(tumbling(HOUR), ["count(*)"]).ring_len == 2
    assert WindowView(lifetime(), ["count(*)"], allowed_lateness=HOUR).ring_len == 1
    assert WindowView(session(MINUTE), ["count(*)"], max_sessions=3).ring_len == 3


def test_grow_reset_and_idle_slots():
    v = WindowView(tumbling(10), ["count(*)", "sum(x)"], 2)
    v.update([0, 1], [5, 50], {"x": [1.0, 2.0]})
    v.grow(5)
    assert v.n_slots == 5
    assert v.key_last_ts().tolist() == [5, 50, EMPTY, EMPTY, EMPTY]
    v.update([4], [55], {"x": [3.0]})
    assert v.idle_slots(now=60, ttl=10).tolist() == [0]
    v.reset_slots(v.idle_slots(now=60, ttl=10))
    assert v.value_as_of([0, 1, 4], 60)[0]["count_star"].tolist() == [0, 1, 1]
    with pytest.raises(IndexError):
        v.update([5], [1], {"x": [1.0]})


def test_to_bytes_rejects_damage_and_mismatch():
    v = WindowView(sliding(30, 10), ["count(*)", "sum(x)"], 3)
    v.update([0, 1, 2], [1, 2, 3], {"x": [1.0, 2.0, 3.0]})
    blob = v.to_bytes()
    assert WindowView.from_bytes(blob).to_bytes() == blob
    with pytest.raises(WindowStateError):
        WindowView.from_bytes(blob[:-8])
    with pytest.raises(WindowStateError):
        WindowView.from_bytes(b"XXXX" + blob[4:])
    other = WindowView(sliding(30, 10), ["count(*)"], 3)
    with pytest.raises(WindowStateError):
        other.merge_from(v)
    with pytest.raises(WindowStateError):
        other.import_slots([0], v.export_slots([0]))


def test_value_as_of_behind_the_horizon_is_flagged_not_exact():
    v = WindowView(sliding(20, 10), ["count(*)"], 1)       # ring of 3 buckets
    v.update([0] * 6, [0, 10, 20, 30, 40, 50], None)
    out, exact = v.value_as_of([0, 0, 0], [20, 50, 60])
    assert exact.tolist() == [False, True, True]
    assert out["count_star"][1:].tolist() == [2, 2]


def test_bad_definitions_raise_window_spec_error():
    for bad in (lambda: sliding(25, 10), lambda: tumbling(0), lambda: session(0),
                lambda: Agg("median", "x"), lambda: Agg("sum"), lambda: Agg("last_k", "x"),
                lambda: Agg.parse("sum(x"), lambda: duration("5 parsecs"),
                lambda: WindowView(lifetime(), ["sum(x)", "sum(x)"]),
                lambda: WindowView(lifetime(), ["count(*)"], allowed_lateness=-1),
                lambda: WindowView(lifetime(), ["count(*)"], hll_p=3)):
        with pytest.raises(WindowSpecError):
            bad()
    assert issubclass(WindowSpecError, ValueError)


def test_update_checks_columns_and_lengths():
    v = WindowView(lifetime(), ["sum(x)"], 1)
    with pytest.raises(SchemaError):
        v.update([0], [1], {})
    with pytest.raises(SchemaError):
        v.update([0, 0], [1], {"x": [1.0, 2.0]})
    with pytest.raises(SchemaError):
        v.update([0], [1], {"x": ["a"]})


def test_duration_strings():
    assert sliding("1h", "5m") == sliding(HOUR, 5 * MINUTE)
    assert Agg.parse("last_k(amount, 5) as recent") == Agg("last_k", "amount", "recent", 5)
    assert Agg.parse("count(*)").name == "count_star"


def test_incremental_python_peer_agrees_with_the_kernel(rng):
    spec, aggs = sliding(60, 10), ["count(*)", "sum(x)", "mean(x)", "min(x)", "max(x)"]
    slots = rng.integers(0, 20, 2000)
    ts = np.sort(rng.integers(0, 1000, 2000))
    x = rng.normal(size=2000)
    cy, py = WindowView(spec, aggs, 20), IncrementalRefView(spec, aggs, 20)
    cy.update(slots, ts, {"x": x})
    py.update(slots, ts, {"x": x})
    got = cy.value_as_of(np.arange(20), 1000)[0]
    for s in range(20):
        want = py.value_one(s, 1000)
        for k in want:
            assert got[k][s] == pytest.approx(want[k], nan_ok=True), k


def test_changed_slots_are_the_keys_whose_buckets_cross_the_window_edges():
    """A hop boundary moves only the keys with an event in the bucket that
    leaves the window or the one that enters it, not every key."""
    v = WindowView(sliding(30, 10), ["count(*) as c"], 4)
    # slot 0: bucket 3 (leaves at 70), slot 1: bucket 5 (stays), slot 2: bucket 6 (enters at 70), slot 3: none
    v.update(np.array([0, 1, 2]), np.array([35, 55, 62]), {})
    assert v.changed_slots(65, 71).tolist() == [0, 2]
    assert v.changed_slots(65, 69).tolist() == []  # no boundary crossed
    assert WindowView(lifetime(), ["count(*) as c"], 2).changed_slots(0, 10 ** 9).tolist() == []
    with pytest.raises(ValueError):
        v.changed_slots(71, 65)


# ---- approx_count_distinct registers: sparse lists, then dense blocks ------------------------------

DATA = __import__("pathlib").Path(__file__).resolve().parent.parent / "data"


def test_hll_turns_dense_past_eight_registers_and_keeps_the_reference_values():
    aggs = ["approx_count_distinct(x)", "count(*)"]
    cy, ref = WindowView(lifetime(), aggs, 2, hll_p=6), RefView(lifetime(), aggs, 2, hll_p=6)
    assert cy.width == 4 + 4              # bucket, count, ts range; 4 words of sparse registers (no `n`)
    seen = set()
    for i in range(60):
        x = float(i * 7919)
        for v in (cy, ref):
            v.update([0, 1], [i, i], {"x": [x, 1.0]})
        seen.add(int(hash_array(np.array([x]))[0] >> 58))    # the register this value lands in
        assert cy.value_as_of([0, 1], 100)[0]["approx_count_distinct_x"].tolist() == \
            ref.value_as_of([0, 1], 100)[0]["approx_count_distinct_x"].tolist()
        # slot 0 holds its registers sparse while at most 8 are set; slot 1 has one value
        assert cy.dense_hll_blocks == (1 if len(seen) > 8 else 0), (i, len(seen))
    again = WindowView.from_bytes(cy.to_bytes())
    assert again.dense_hll_blocks == 1 and again.to_bytes() == cy.to_bytes()
    assert again.value_as_of([0], 100)[0]["approx_count_distinct_x"][0] == \
        ref.value_as_of([0], 100)[0]["approx_count_distinct_x"][0]
    cy.reset_slots([0])                   # the key's block goes back to the pool
    assert cy.dense_hll_blocks == 0
    assert cy.value_as_of([0], 100)[0]["approx_count_distinct_x"][0] == 0


def test_dense_hll_blocks_are_released_as_buckets_leave_the_ring():
    # every 10-tick bucket gets 30 distinct values: dense; the ring holds at most ring_len of them
    v = WindowView(sliding(30, 10), ["approx_count_distinct(x)"], 1, hll_p=6)
    ref = RefView(sliding(30, 10), ["approx_count_distinct(x)"], 1, hll_p=6)
    for b in range(50):
        ts = [b * 10 + k % 10 for k in range(30)]
        cols = {"x": [float(b * 1000 + k) for k in range(30)]}
        v.update([0] * 30, ts, cols)
        ref.update([0] * 30, ts, cols)
        assert v.dense_hll_blocks <= v.ring_len
    want = ref.value_as_of([0], 500)[0]["approx_count_distinct_x"].tolist()
    assert v.value_as_of([0], 500)[0]["approx_count_distinct_x"].tolist() == want
    merged = WindowView(sliding(30, 10), ["approx_count_distinct(x)"], 1, hll_p=6)
    merged.merge_from(v)                  # another view's blocks are copied, not shared
    v.reset_slots([0])
    assert v.dense_hll_blocks == 0 and merged.dense_hll_blocks > 0
    assert merged.value_as_of([0], 500)[0]["approx_count_distinct_x"].tolist() == want


@pytest.mark.parametrize("name", ["sliding", "session", "lifetime"])
def test_version_3_snapshots_with_dense_registers_still_load(name):
    """tests/data/window_v3_*.bin were written by the version-3 layout (2^p
    register bytes in every cell; fscore at 36fd893) with the answers beside
    them: they load into the sparse layout and answer the same."""
    import json
    view = WindowView.from_bytes((DATA / f"window_v3_{name}.bin").read_bytes())
    assert view.dense_hll_blocks > 0
    view._check_pool()
    expected = json.loads((DATA / "window_v3_answers.json").read_text())[name]
    for t, answers in expected.items():
        vals, exact = view.value_as_of(np.arange(6), int(t))
        assert exact.tolist() == answers.pop("exact")
        for k, want in answers.items():
            np.testing.assert_array_equal(np.asarray(vals[k]), np.asarray(want, dtype=vals[k].dtype), err_msg=k)
    assert WindowView.from_bytes(view.to_bytes()).to_bytes() == view.to_bytes()


def _old_snapshot_answers_as_written(version, name, fewer_words, blocks=False):
    """tests/data/window_v{version}_{name}.bin loads (cells `fewer_words`
    narrower than it was written with), answers as the answers file beside
    it says for six keys as of each time there, and writes itself again
    unchanged."""
    import json
    import struct
    blob = (DATA / f"window_v{version}_{name}.bin").read_bytes()
    written, hlen = struct.unpack("<II", blob[4:12])
    assert written == version
    view = WindowView.from_bytes(blob)
    assert view.width == json.loads(blob[12:12 + hlen])["width"] - fewer_words
    assert (view.blocks_held if blocks else view.dense_hll_blocks) > 0
    view._check_pool()
    expected = json.loads((DATA / f"window_v{version}_answers.json").read_text())[name]
    for t, answers in expected.items():
        vals, exact = view.value_as_of(np.arange(6), int(t))
        assert exact.tolist() == answers.pop("exact"), t
        for k, want in answers.items():
            np.testing.assert_array_equal(np.asarray(vals[k]), np.asarray(want, dtype=vals[k].dtype),
                                          err_msg=f"{k} as of {t}")
    assert WindowView.from_bytes(view.to_bytes()).to_bytes() == view.to_bytes()


@pytest.mark.parametrize("name", ["sliding", "continuous", "tumbling"])
def test_version_4_snapshots_with_unpacked_times_still_load(name):
    """tests/data/window_v4_*.bin were written by the version-4 layout (first
    and last event times in two words of every cell; fscore at e6babe1, by
    a script that made six keys: a ring, a few events, dense registers, a
    dropped bucket, one event, none) with the answers beside them: they load
    into the packed layout (one word fewer a cell; two more since version 6
    dropped the HLL list's and last_k's count words) and answer the same, as
    of times inside buckets too (the continuous head splits on the times)."""
    _old_snapshot_answers_as_written(4, name, fewer_words=3)


@pytest.mark.parametrize("corrupt", ["register past 2^p", "an entry of rank 0", "out of order", "entry after a zero"])
def test_state_with_a_malformed_sparse_hll_list_is_refused(corrupt):
    """A sparse list is read up to its first zero entry and an insert
    writes the register an entry names: a list hll_set could not have made
    is refused on import (and so on a snapshot's load), not written past
    the registers later."""
    regs = hash_array(np.arange(20.0)) >> np.uint64(60)      # the register each value lands in
    xs = [float(i) for i in np.unique(regs, return_index=True)[1][:3]]   # three values, three registers
    v = WindowView(lifetime(), ["approx_count_distinct(x)"], 1, hll_p=4)
    v.update([0, 0, 0], [1, 2, 3], {"x": xs})
    state = v.export_slots([0])
    off = v._hll_offsets()[0]
    e = state["cells"][:, off:off + 4].copy().view(np.uint32)
    n = int((e[0] != 0).sum())
    assert n == 3 and len(state["blocks"]) == 0
    if corrupt == "register past 2^p":
        e[0, 1] = (16 << 8) | 1
    elif corrupt == "an entry of rank 0":
        e[0, 2] = (e[0, 2] >> 8) << 8        # (the third register: index >= 2, so not 0)
    elif corrupt == "out of order":
        e[0, 0], e[0, 1] = e[0, 1], e[0, 0]
    else:
        e[0, 5] = e[0, 0]
    cells = state["cells"].copy()
    cells[:, off:off + 4] = e.view(np.int64)
    fresh = WindowView(lifetime(), ["approx_count_distinct(x)"], 1, hll_p=4)
    with pytest.raises(WindowStateError, match="HLL register list"):
        fresh.import_slots([0], state | {"cells": cells})
    fresh.import_slots([0], state)   # the list as made loads
    assert fresh.value_as_of([0], 10)[0]["approx_count_distinct_x"].tolist() == [3]


def test_snapshot_naming_registers_it_does_not_hold_is_refused():
    v = WindowView(lifetime(), ["approx_count_distinct(x)"], 1, hll_p=4)
    v.update([0] * 40, list(range(40)), {"x": [float(i) for i in range(40)]})
    state = v.export_slots([0])
    assert len(state["blocks"]) == 1
    with pytest.raises(WindowStateError):
        WindowView(lifetime(), ["approx_count_distinct(x)"], 1, hll_p=4).import_slots([0], state | {"blocks": state["blocks"][:0]})


def test_snapshot_streams_the_bytes_of_to_bytes_a_slot_range_at_a_time():
    """Checkpoints write window state as it is encoded (a 10M-key checkpoint
    holding every view's bytes at once was OOM-killed): the stream, in ranges
    of 3 slots, is byte for byte `to_bytes()`, dense HLL blocks numbered
    across the ranges, and its size is announced before any byte is made."""
    v = WindowView(sliding(30, 10), ["approx_count_distinct(x)", "sum(x)"], 10, hll_p=4)
    rng = np.random.default_rng(3)
    for s in range(10):  # every other key with many distinct values: dense blocks in several ranges
        n = 40 if s % 2 else 2
        v.update([s] * n, [25] * n, {"x": rng.normal(size=n)})
    snap = v.snapshot(chunk_slots=3)
    data = b"".join(snap.chunks())
    assert data == v.to_bytes() and len(data) == snap.nbytes and v.dense_hll_blocks >= 5
    # ranges bounded by bytes of cells too (each key here: 1-2 cells of ~100 B)
    for chunk_bytes in (1, 150, 500):
        snap = v.snapshot(chunk_bytes=chunk_bytes)
        chunks = list(snap.chunks())
        assert b"".join(chunks) == data and len(chunks) > 4
    again = WindowView.from_bytes(data)
    assert again.value_as_of(np.arange(10), 60)[0]["approx_count_distinct_x"].tolist() == \
        v.value_as_of(np.arange(10), 60)[0]["approx_count_distinct_x"].tolist()


def test_checkpoint_writes_a_streamed_blob_and_refuses_a_short_one(tmp_path):
    from fscore.checkpoint import load_latest_checkpoint, write_checkpoint
    from fscore.errors import CheckpointError

    v = WindowView(lifetime(), ["count(*)"], 4)
    v.update([0, 1, 3], [1, 2, 3])
    write_checkpoint(tmp_path, 7, {"w": v.snapshot(chunk_slots=1)})
    assert bytes(load_latest_checkpoint(tmp_path).blobs["w"]) == v.to_bytes()

    class Short:
        nbytes = 10

        def chunks(self):
            yield b"12345"
    with pytest.raises(CheckpointError, match="streamed 5 bytes, announced 10"):
        write_checkpoint(tmp_path / "b", 8, {"w": Short()})


def test_runs_freed_by_big_keys_serve_new_small_keys_before_the_pool_grows():
    """Churn: hot keys that grew big runs leave (expiry, eviction, a revoke)
    and many new keys of one cell arrive. The freed runs are split for them;
    before, a class's free runs served only that class and the pool grew by
    every new key while ~6,300 free cells sat idle."""
    v = WindowView(sliding(64, 1), ["count(*) as c"], 3200)
    hot = np.arange(100)
    for b in range(32):  # 100 keys with 32 buckets each: runs of 1, 2, 4 ... 32 cells
        v.update(hot, np.full(100, b, dtype=np.int64), {})
    held_before, top = v.cells_held, v.pool_top
    assert held_before == 100 * 32
    v.reset_slots(hot)
    assert v.cells_held == 0
    new = np.arange(100, 3200)
    v.update(new, np.full(new.size, 40, dtype=np.int64), {})
    assert v.cells_held == new.size
    assert v.pool_top == top  # every new key took freed cells
    values, exact = v.value_as_of(np.array([100, 3199, 5]), np.array([41, 41, 41]))
    assert values["c"].tolist() == [1, 1, 0] and exact.all()


@pytest.mark.parametrize("reserved", [False, True], ids=["hll-malloc", "hll-reserved"])
def test_a_copy_frozen_while_a_writer_thread_writes_is_the_state_at_frozen_end(reserved):
    """The engine's copy-mode checkpoint: frozen_begin copies the cells with
    no lock (and no GIL) while another thread goes on applying events under
    the lock; frozen_end (under it) must give the state at that moment.
    Reserved: the dense HLL blocks (~10k here) sit in a reservation that never
    moves, so frozen_begin copies them too (else frozen_end copies them all)."""
    prev = _hll_reserve_from(1 << 20 if reserved else 1 << 40)
    try:
        _freeze_beside_a_writer_thread(reserved)
    finally:
        _hll_reserve_from(prev)


def _freeze_beside_a_writer_thread(reserved):
    import threading

    aggs = ["count(*) as n", "sum(x) as s", "approx_count_distinct(x) as d", "last_k(x, 3) as k"]
    v = WindowView(sliding(24 * HOUR, HOUR), aggs, 20_000, hll_p=8)
    rng = np.random.default_rng(7)
    lock, stop, clock = threading.Lock(), threading.Event(), [0]

    def batch(n):
        clock[0] += HOUR // 4
        ts = clock[0] + np.sort(rng.integers(0, HOUR // 4, n))
        return rng.integers(0, v.n_slots, n), ts, {"x": rng.integers(0, 50, n).astype(np.float64)}
    v.update(*batch(200_000))
    writes = [0]

    def writer():
        while not stop.is_set():
            with lock:
                if writes[0] % 50 == 49:
                    v.grow(v.n_slots + 100)
                v.update(*batch(500))
                writes[0] += 1
    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(5):
            with lock:
                track = v.track_writes()
            before = writes[0]
            begun = v.frozen_begin(track)
            assert (begun[-1] is not None) == reserved
            while writes[0] < before + 3:  # the writer wrote beside the copy (here ~10-250 batches
                # during it: the cells are copied without the GIL) and after it
                stop.wait(0.001)
            with lock:
                f = v.frozen_end(begun)
                want = v.to_bytes()
            assert f.to_bytes() == want
    finally:
        stop.set()
        t.join()


@pytest.mark.parametrize("name", ["sliding", "continuous", "shared", "session", "lifetime"])
def test_version_5_snapshots_with_count_words_still_load(name):
    """tests/data/window_v5_*.bin were written by the version-5 layout (a
    count word before an HLL list and before a last_k buffer, `n` in a
    column only approx_count_distinct reads; fscore at 9a35951, six keys: a
    ring, a few events, dense registers, a dropped bucket, one event, none;
    nulls in both columns) with the answers beside them: they load into the
    layout without those words (three fewer a cell) and answer the
    same, as of times inside buckets and past the data too."""
    _old_snapshot_answers_as_written(5, name, fewer_words=3)


@pytest.mark.parametrize("name", ["sliding", "continuous", "shared", "session", "lifetime"])
def test_version_6_snapshots_with_n_beside_last_k_still_load(name):
    """tests/data/window_v6_*.bin were written by the version-6 layout (`n`
    in a column only last_k reads, and in one read by last_k and
    approx_count_distinct; tests/data/make_window_v6.py at e7d1b2a, six
    keys: a ring, a few events, dense registers, an old event then many,
    one event, none; nulls in both columns) with the answers beside them:
    they load into the layout without those two words (the buffers' unused
    times marked instead) and answer the same."""
    _old_snapshot_answers_as_written(6, name, fewer_words=2)


def test_a_column_only_last_k_reads_keeps_no_count_and_answers_as_one_that_does():
    """The starter repo's lifetime last_k(amount, 5) cell was 15 words, one
    of them `n`, which the buffer's own unused times can tell: 14 now. The
    same events give the same answers as a view whose column keeps `n`
    (count(x) beside it), with nulls, ties on time, out-of-order events,
    fewer events than k and merges of partial cells (sliding windows'
    queries)."""
    rng = np.random.default_rng(3)
    n = 400
    slots, ts = rng.integers(0, 8, n), np.sort(rng.integers(0, 300, n))
    ts[rng.random(n) < 0.1] -= 5                       # some out of order (within lateness)
    x = np.where(rng.random(n) < 0.2, np.nan, rng.integers(-5, 5, n).astype(float))
    for spec in (lifetime(), sliding(100, 10), session(20), continuous(60, 10)):
        alone = WindowView(spec, ["last_k(x, 4) as k"], 8, allowed_lateness=50)
        counted = WindowView(spec, ["last_k(x, 4) as k", "count(x) as c"], 8, allowed_lateness=50)
        assert alone.width == counted.width - 1, spec
        for v in (alone, counted):
            v.update(slots, ts, {"x": x})
        for t in (0, 55, 150, 301, 400):
            a, ea = alone.value_as_of(np.arange(8), t)
            b, eb = counted.value_as_of(np.arange(8), t)
            np.testing.assert_array_equal(a["k"], b["k"], err_msg=f"{spec} t={t}")
            assert ea.tolist() == eb.tolist()
        back = WindowView.from_bytes(alone.to_bytes())
        np.testing.assert_array_equal(back.value_as_of(np.arange(8), 400)[0]["k"],
                                      alone.value_as_of(np.arange(8), 400)[0]["k"])


@pytest.mark.parametrize("name", [f"{a}_{v}" for a in ("counted", "alone")
                                  for v in ("sliding", "continuous", "shared", "session", "lifetime")])
def test_version_7_snapshots_with_whole_last_k_buffers_still_load(name):
    """tests/data/window_v7_*.bin were written by the version-7 layout (every
    cell holding its whole last_k buffer, 2k words; tests/data/make_window_v7.py
    at 35b874a: a column with `n` beside it, whose unused times were not
    marked, and one without; six keys: a ring, three events, forty in one
    bucket, an old event then many, one event, none; nulls) with the answers
    beside them: they load with the buffers sized by use (one entry in the
    cell, more in a block) and answer the same."""
    _old_snapshot_answers_as_written(7, name, fewer_words=3 if name.startswith("counted") else 5, blocks=True)


def test_last_k_buffers_are_sized_by_use():
    """The starter repo's lifetime last_k(amount, 5) cell was 14 words, most
    of them an empty buffer for the 2 in 3 keys with one event: a view whose
    one last_k column has no approx_count_distinct beside it keeps one entry
    in the cell (7 words) and moves a longer buffer into a block of its own
    (80 B) at a key's second entry. Answers equal those of the same view
    with approx_count_distinct beside (its buffers whole in the cell) through
    nulls, ties on time, out-of-order events, merges of partial cells,
    resets, snapshots and frozen copies; every block is released when its
    cell goes (blocks_held)."""
    rng = np.random.default_rng(8)
    n = 600
    slots, ts = rng.integers(0, 40, n), np.sort(rng.integers(0, 400, n))
    slots[:40] = np.arange(40)                         # every key has a first event
    ts[rng.random(n) < 0.1] -= 5                       # some out of order (within lateness)
    x = np.where(rng.random(n) < 0.2, np.nan, rng.integers(-5, 5, n).astype(float))
    one = WindowView(lifetime(), ["last_k(x, 5) as k"], 3)
    assert one.lastk_sized_by_use and one.width == 4 + 3 and one.hll_block_bytes == 80
    one.update(np.arange(3), np.array([1, 2, 3]), {"x": np.array([1.0, np.nan, 3.0])})
    assert one.blocks_held == 0                        # one entry (or none): in the cell
    one.update(np.array([0, 0]), np.array([5, 5]), {"x": np.array([4.0, 5.0])})
    assert one.blocks_held == 1
    np.testing.assert_array_equal(one.value_as_of([0], 10)[0]["k"][0], [5.0, 4.0, 1.0, np.nan, np.nan])
    one.reset_slots(np.array([0]))
    assert one.blocks_held == 0
    one._check_pool()
    for spec in (lifetime(), sliding(100, 10), session(20), continuous(60, 10), tumbling(50)):
        sized = WindowView(spec, ["last_k(x, 4) as k", "sum(x) as s"], 40, allowed_lateness=50)
        whole = WindowView(spec, ["last_k(x, 4) as k", "sum(x) as s", "approx_count_distinct(x) as d"], 40,
                           allowed_lateness=50)
        assert sized.lastk_sized_by_use and not whole.lastk_sized_by_use
        for lo in range(0, n, 97):                     # in batches, a snapshot and a frozen copy between
            for v in (sized, whole):
                v.update(slots[lo:lo + 97], ts[lo:lo + 97], {"x": x[lo:lo + 97]})
            if lo % 2:
                sized = WindowView.from_bytes(sized.to_bytes())
                sized._check_pool()
            else:                                      # (a frozen copy keeps no free lists: not checked)
                sized = sized.frozen()
        assert sized.blocks_held > 0, spec
        sized = WindowView.from_bytes(sized.to_bytes())
        gone = np.arange(0, 40, 3)
        for v in (sized, whole):
            v.reset_slots(gone)
        sized._check_pool()
        for t in (0, 55, 150, 301, 400, 500):
            a, ea = sized.value_as_of(np.arange(40), t)
            b, eb = whole.value_as_of(np.arange(40), t)
            assert ea.tolist() == eb.tolist()
            # (not exact: what a restored ring kept past its horizon, which `whole` was not)
            np.testing.assert_array_equal(a["k"][ea], b["k"][eb], err_msg=f"{spec} t={t}")
            np.testing.assert_array_equal(a["s"][ea], b["s"][eb], err_msg=f"{spec} t={t}")
        sized._check_pool()                            # (reads merge into accumulators and release them)
        left, right = (WindowView(spec, ["last_k(x, 4) as k", "sum(x) as s"], 40, allowed_lateness=50)
                       for _ in range(2))
        keep = np.argsort(ts, kind="stable")
        half = rng.random(n) < 0.5
        left.update(slots[keep][half[keep]], ts[keep][half[keep]], {"x": x[keep][half[keep]]})
        right.update(slots[keep][~half[keep]], ts[keep][~half[keep]], {"x": x[keep][~half[keep]]})
        left.merge_from(right)
        left._check_pool()


def test_a_reserved_hll_pool_counts_the_blocks_handed_out_not_its_capacity():
    """A reserved pool's capacity doubles as a number only (untouched pages
    cost nothing): nbytes counted it, and the starter repo's merchants' 1-day
    view read 40 B a user key more than it held at 1M keys (262,144 blocks
    counted, ~150,000 handed out)."""
    prev = _hll_reserve_from(1 << 16)
    try:
        v = WindowView(tumbling(HOUR), ["approx_count_distinct(x) as d"], 1100, hll_p=8)
        slots = np.repeat(np.arange(1100), 20)  # 20 distinct values a key: past the sparse list
        v.update(slots, np.full(slots.size, 10, dtype=np.int64), {"x": np.arange(slots.size, dtype=np.float64)})
        m = v.hll_block_bytes
        assert v.dense_hll_blocks == 1100  # handed out from the top: 1100, capacity 2048
        assert v.hll_pool_bytes == 1100 * m
        cells = (v.pool_top if v.pool.shape[0] > (1 << 30) else v.pool.shape[0]) * v.width * 8
        assert v.nbytes == cells + v.slot_bytes * v.n_slots + 1100 * m
    finally:
        _hll_reserve_from(prev)
    v2 = WindowView(tumbling(HOUR), ["approx_count_distinct(x) as d"], 1100, hll_p=8)  # malloc'd: its capacity
    v2.update(slots, np.full(slots.size, 10, dtype=np.int64), {"x": np.arange(slots.size, dtype=np.float64)})
    assert v2.hll_pool_bytes == v2._blocks_array().shape[0] * m >= 1100 * m


def _floor_view(kind="sliding", n=4):
    spec = {"sliding": sliding(30, 10), "lifetime": lifetime(), "session": session(7)}[kind]
    return WindowView(spec, ["count(*) as n", "sum(x) as s", "approx_count_distinct(x) as d"], n,
                      allowed_lateness=0)


def _feed(v, slots, ts):
    slots, ts = np.asarray(slots, dtype=np.int64), np.asarray(ts, dtype=np.int64)
    return v.update(slots, ts, {"x": (ts % 7).astype(np.float64)})


FAR = (1 << 31) * 10 + 5   # sliding(30, 10): bucket 2^31, one past an int32's


def test_floors_are_int32_until_a_bucket_does_not_fit_and_snapshots_do_not_tell_the_difference():
    """13 bytes a slot while the buckets fit (4 a key a window less); a
    snapshot writes int64 floors either way, so one written narrow and one
    written after widening are the same bytes, and load into either."""
    narrow, wide = _floor_view(), _floor_view()
    assert narrow.slot_bytes == 13 and _floor_view("lifetime").slot_bytes == 13
    assert _floor_view("session").slot_bytes == 17      # a session's floor is an event time
    for v in (narrow, wide):
        _feed(v, [0, 0, 1, 0], [5, 15, 25, 95])            # slot 0's first buckets dropped: floor 1
    wide._widen_floors()
    assert wide.slot_bytes == 17 and narrow._floors().tolist() == wide._floors().tolist()
    assert narrow._floors().tolist()[0] == 1 and narrow._floors().tolist()[2] == EMPTY
    assert narrow.to_bytes() == wide.to_bytes()
    back = WindowView.from_bytes(wide.to_bytes())
    assert back.slot_bytes == 13 and back.to_bytes() == narrow.to_bytes()
    q = (np.array([0, 0, 1]), np.array([40, 100, 30]))
    (va, ea), (vb, eb) = narrow.value_as_of(*q), back.value_as_of(*q)
    assert ea.tolist() == eb.tolist() and all(np.array_equal(va[k], vb[k], equal_nan=True) for k in va)


def test_a_far_bucket_widens_the_floors_and_keeps_those_set_before():
    v = _floor_view()
    _feed(v, [0, 0, 0], [5, 15, 95])                        # floor of slot 0: bucket 1
    before = v._floors().tolist()
    _feed(v, [1], [FAR])
    assert v.slot_bytes == 17 and v._floors().tolist() == before  # slot 1's old cells were empty
    _feed(v, [0], [FAR + 10])                                # slot 0 drops bucket 9
    assert v._floors().tolist()[0] == 9
    vals, exact = v.value_as_of(np.array([0, 1]), np.array([FAR + 20, FAR + 20]))
    assert vals["n"].tolist() == [1, 1] and exact.all()


def test_a_snapshot_or_merge_with_far_floors_widens_the_view_it_loads_into():
    far = _floor_view()
    _feed(far, [0, 0], [FAR - 100, FAR + 40])                # drops a bucket past 2^31 - 1
    assert far.slot_bytes == 17 and far._floors().tolist()[0] == (FAR - 100) // 10
    back = WindowView.from_bytes(far.to_bytes())
    assert back.slot_bytes == 17 and back.to_bytes() == far.to_bytes()
    other = _floor_view()
    other.import_slots(np.array([0]), far.export_slots(np.array([0])))
    assert other.slot_bytes == 17 and other._floors().tolist()[0] == (FAR - 100) // 10
    merged = _floor_view()
    _feed(merged, [1], [5])
    merged.merge_from(far)
    assert merged.slot_bytes == 17 and merged._floors().tolist()[:2] == [(FAR - 100) // 10, EMPTY]
    vals, _ = merged.value_as_of(np.array([0, 1]), np.array([FAR + 45, 15]))
    assert vals["n"].tolist() == [1, 1]


def test_floors_widened_between_frozen_begin_and_frozen_end_give_the_state_at_frozen_end():
    """A copy-mode checkpoint copies the floors as track_writes saw them; a
    widening meanwhile replaces the array (another dtype): frozen_end then
    copies the whole state under the lock, as when the runs outgrew it."""
    v = _floor_view(n=50)
    _feed(v, np.arange(50), np.arange(50) * 3)
    track = v.track_writes()
    begun = v.frozen_begin(track)
    _feed(v, [7, 7], [FAR, FAR + 30])
    frozen = v.frozen_end(begun)
    assert frozen.slot_bytes == 17 and frozen.to_bytes() == v.to_bytes()


def test_the_slots_a_checkpoint_copies_again_are_exactly_the_marked_ones_and_the_added_ones():
    """frozen_end and compact_end copy again the slots marked since
    track_writes (a byte each) and every slot added since. The marks are
    read eight bytes at a time (np.flatnonzero visited every byte once any
    was set: ~2 ms at 1M slots under the checkpoint's lock); any length, any
    marks, ends not on a multiple of eight."""
    from fscore.window import _marked_slots

    rng = np.random.default_rng(3)
    for n in [0, 1, 7, 8, 9, 63, 64, 65, 1000, 4099]:
        for density in (0.0, 0.001, 0.1, 1.0):
            marks = (rng.random(n + 5) < density).astype(np.uint8) * rng.integers(1, 256, n + 5).astype(np.uint8)
            for added in (0, 3):
                want = np.concatenate([np.flatnonzero(marks[:n]), np.arange(n, n + added)])
                got = _marked_slots(marks, n, n + added)
                assert got.dtype == np.int64 and got.tolist() == want.tolist(), (n, density, added)


def test_growing_a_views_keys_copies_their_arrays_only_past_the_room_made_last_time():
    """Issue 15: each growth of a view's keys (a quarter more, ahead of
    need) concatenated its four per-key arrays under the engine lock, ~5 ms
    a window at 1M keys. They now grow into buffers with room for twice the
    keys: a growth within the room only fills the new keys; a compaction
    that replaces an array, or floors widened to int64, make that array
    copied at the next growth. Every key keeps its values throughout."""
    v = WindowView(sliding(HOUR, 5 * MINUTE), ["count(*)", "sum(amount)"], 1000)
    ref = RefView(sliding(HOUR, 5 * MINUTE), ["count(*)", "sum(amount)"], 1000)
    rng = np.random.default_rng(5)
    t0 = 1_764_000_000_000_000

    def push(n):
        slots = rng.integers(0, n, 300)
        ts = np.sort(t0 + rng.integers(0, HOUR, 300))
        cols = {"amount": rng.random(300)}
        for w in (v, ref):
            w.update(slots, ts, cols)

    push(1000)
    assert v.slot_capacity == 1000
    v.grow(1250)
    ref.grow(1250)
    assert v.slot_capacity == 2000  # room made
    caps = []
    for n in (1562, 1953, 2441, 3051):
        push(v.n_slots)
        v.grow(n)
        ref.grow(n)
        caps.append(v.slot_capacity)
    assert caps == [2000, 2000, 3906, 3906]  # copied once, past the room
    tr = v.track_writes()  # a compaction lays the runs out again: run_at and run_cls are new arrays
    v.compact_end(v.compact_begin(tr))
    assert v.slot_capacity == 3051
    v.grow(3500)  # those two copied (room for 6102), the other two still within theirs
    ref.grow(3500)
    assert v.slot_capacity == 3906
    push(3500)
    now = t0 + HOUR
    got, want = v.value_as_of(np.arange(3500), now)[0], ref.value_as_of(np.arange(3500), now)[0]
    assert got["count_star"].tolist() == want["count_star"].tolist() and np.allclose(got["sum_amount"], want["sum_amount"], equal_nan=True)
