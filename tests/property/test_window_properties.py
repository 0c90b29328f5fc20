"""Hypothesis properties of fscore.window against the oracle fscore.window_ref.

Streams are small and dense on purpose: many events per hop, duplicate
timestamps, out-of-order arrival inside and beyond the allowed lateness, query
times equal to event times and exactly on hop boundaries.
"""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fscore.window import WindowView, _floor32, _hll_reserve_from, _pack_max_hop
from fscore.window_ref import RefView
from fscore.window_spec import WindowSpec, continuous, lifetime, session, sliding, tumbling

AGGS = ["count(*)", "count(x)", "sum(x)", "mean(x)", "min(x)", "max(x)", "first(x)", "last(x)",
        "var_samp(x)", "var_pop(x)", "stddev_samp(x)", "stddev_pop(x)",
        "approx_count_distinct(x)", "last_k(x, 3)"]
# without approx_count_distinct the view's block pool holds last_k buffers of
# more than one entry, a key's first entry in its cell (window.pxd: sized by use)
SPILL_AGGS = [a for a in AGGS if not a.startswith("approx")]
EITHER_AGGS = st.sampled_from([AGGS, SPILL_AGGS])
SPECS = [sliding(30, 10), tumbling(20), continuous(30, 10), continuous(10, 10), session(7),
         lifetime()]
N_SLOTS = 3
# Values mix tiny, huge, signed zero, integral and null: stable arithmetic or bust.
VALUES = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.5, 1e100, -1e100, 1e-100, -3e-100, 2.0 ** 53,
                     float("nan")]),
    st.floats(-1e6, 1e6, allow_nan=False),
    st.integers(-5, 5).map(float),
)
# Times lean on a few hot values: duplicate timestamps and hop boundaries.
TIMES = st.one_of(st.integers(0, 120), st.sampled_from([0, 9, 10, 11, 29, 30, 31, 60, 61]))
EVENTS = st.lists(st.tuples(st.integers(0, N_SLOTS - 1), TIMES, VALUES), min_size=0, max_size=40)
# Example counts come from the suite's profile (tests/conftest.py).
FAST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module", autouse=True, params=["packed", "unpacked", "wide-floors"])
def packed_times(request):
    """Every property three times: hop windows with both times of a cell in
    one word (their hops here are all short enough) and in two (as hops over
    2^32 us are; window.pxd); and packed with the keys' floors int64 from the
    start (as a view whose buckets did not fit an int32 widens them)."""
    prev = _pack_max_hop(0 if request.param == "unpacked" else 1 << 32)
    prev32 = _floor32(request.param != "wide-floors")
    yield request.param
    _pack_max_hop(prev)
    _floor32(prev32)


def arrays(events):
    slots = np.array([e[0] for e in events], dtype=np.int64)
    ts = np.array([e[1] for e in events], dtype=np.int64)
    x = np.array([e[2] for e in events], dtype=np.float64)
    return slots, ts, x


def make(cls, spec, lateness, max_sessions=2, aggs=AGGS):
    return cls(spec, aggs, N_SLOTS, allowed_lateness=lateness, hll_p=6, max_sessions=max_sessions)


def query_times(spec, events):
    hop = spec.hop or spec.gap or 10
    ts = {e[1] for e in events}
    cands = ts | {t + 1 for t in ts} | {t - 1 for t in ts} | set(range(0, 150, hop)) | {0, 7, 131}
    return sorted(cands)


def assert_close(name, got, want, scale, n):
    """Exact for order statistics and counts; floats within rounding of the
    sum of n terms of magnitude <= scale (the oracle is exact)."""
    if name.startswith(("count", "approx", "min", "max", "first", "last")):
        np.testing.assert_array_equal(got, want, err_msg=name)
        return
    if math.isnan(want) or math.isnan(got):
        assert math.isnan(want) and math.isnan(got), (name, got, want)
        return
    tol = 4 * n * 2.0 ** -52 * scale
    # squared deviations below the smallest double (values ~1e-162) underflow:
    # an absolute error of n such steps in the variance, its root in the stddev
    tiny = 4 * n * 2.0 ** -1074
    if name.startswith("var"):
        tol = tol * 4 * n * scale + tiny
    elif name.startswith("stddev"):
        tol = math.sqrt(4 * n * 4 * n * 2.0 ** -52) * scale + math.sqrt(tiny)
    assert abs(got - want) <= tol + 1e-300, (name, got, want, tol)


def compare(cy, ref, spec, events, late):
    applied = [e for e, lt in zip(events, late) if not lt]
    wm = max([cy.watermark, *cy.part_watermarks.values()])
    for slot in range(N_SLOTS):
        mine = [e for e in applied if e[0] == slot]
        finite = [abs(e[2]) for e in mine if e[2] == e[2]]
        scale, n = (max(finite) if finite else 0.0), max(len(mine), 1)
        times = query_times(spec, events)
        got, exact = cy.value_as_of(np.full(len(times), slot), np.array(times))
        want, _ = ref.value_as_of(np.full(len(times), slot), np.array(times))
        for i, t in enumerate(times):
            if must_be_exact(cy, spec, mine, t, wm):
                assert exact[i], (spec, slot, t)
            if not exact[i]:
                continue
            for name in got:
                if got[name].ndim == 2:
                    np.testing.assert_array_equal(got[name][i], want[name][i], err_msg=f"{name} t={t}")
                else:
                    assert_close(name, got[name][i], want[name][i], scale, n)


def must_be_exact(cy, spec, mine, t, wm):
    """The exactness the docs promise (semantics.md §Exactness)."""
    if all(e[1] < t for e in mine):
        return True     # the online-serving case: every event of the key is before t
    if spec.kind in ("tumbling", "sliding"):
        return t >= wm - cy.allowed_lateness
    if spec.kind == "continuous":
        head = [e[1] for e in mine if e[1] // spec.hop == t // spec.hop]
        split = any(x < t for x in head) and any(x >= t for x in head)
        return t >= wm - cy.allowed_lateness and (t % spec.hop == 0 or not split)
    if spec.kind == "lifetime":
        return all(e[1] >= t for e in mine)
    return False


@FAST
@given(spec=st.sampled_from(SPECS), lateness=st.sampled_from([0, 10, 25]),
       max_sessions=st.sampled_from([1, 2, 4]), events=EVENTS, aggs=EITHER_AGGS)
def test_compiled_equals_reference(spec, lateness, max_sessions, events, aggs):
    cy, ref = make(WindowView, spec, lateness, max_sessions, aggs), make(RefView, spec, lateness, max_sessions, aggs)
    slots, ts, x = arrays(events)
    late = cy.update(slots, ts, {"x": x})
    np.testing.assert_array_equal(late, ref.update(slots, ts, {"x": x}))
    compare(cy, ref, spec, events, late)


# a column only these read keeps no `n` (since version 7): its last_k
# buffer's unused times say how many are in use
# (and without approx_count_distinct: its buffers sized by use)
NO_N_AGGS = ["count(*)", "last_k(x, 3)", "approx_count_distinct(x)"]


@FAST
@given(spec=st.sampled_from(SPECS), lateness=st.sampled_from([0, 10, 25]),
       times=st.lists(st.integers(0, 120), unique=True, max_size=40), data=st.data(),
       aggs=st.sampled_from([NO_N_AGGS, NO_N_AGGS[:2]]))
def test_a_column_only_last_k_reads_equals_the_reference_whole_merged_and_restored(spec, lateness, times, data,
                                                                                    aggs):
    events = [(data.draw(st.integers(0, N_SLOTS - 1)), t, data.draw(VALUES)) for t in times]  # any order
    slots, ts, x = arrays(events)

    def view(cls):
        return cls(spec, aggs, N_SLOTS, allowed_lateness=lateness, hll_p=6, max_sessions=64)
    cy, ref = view(WindowView), view(RefView)
    assert cy._column_offsets(4)[0][0]["n"] == -1  # (no `n` word)
    late = cy.update(slots, ts, {"x": x})
    np.testing.assert_array_equal(late, ref.update(slots, ts, {"x": x}))
    compare(cy, ref, spec, events, late)
    compare(WindowView.from_bytes(cy.to_bytes()), ref, spec, events, late)
    # two shards of the applied events merged: answers equal the reference where exact
    keep = ~late
    side = np.array(data.draw(st.lists(st.booleans(), min_size=len(events), max_size=len(events))), dtype=bool)
    left, right = view(WindowView), view(WindowView)
    order = np.argsort(ts[keep], kind="stable")
    for v, part in ((left, side[keep][order]), (right, ~side[keep][order])):
        v.update(slots[keep][order][part], ts[keep][order][part], {"x": x[keep][order][part]})
    left.merge_from(right)
    applied = [e for e, lt in zip(events, late) if not lt]
    oracle = view(RefView)
    a_s, a_t, a_x = arrays(sorted(applied, key=lambda e: e[1]))
    oracle.update(a_s, a_t, {"x": a_x})
    for slot in range(N_SLOTS):
        qt = query_times(spec, events)
        got, exact = left.value_as_of(np.full(len(qt), slot), np.array(qt))
        want, _ = oracle.value_as_of(np.full(len(qt), slot), np.array(qt))
        for name in got:
            np.testing.assert_array_equal(got[name][exact], want[name][exact], err_msg=name)


@FAST
@given(spec=st.sampled_from(SPECS), lateness=st.sampled_from([0, 10, 25]), events=EVENTS,
       later=EVENTS, cut=st.integers(0, 40))
def test_a_bucket_past_an_int32_widens_the_floors_and_answers_stay_the_references(
        spec, lateness, events, later, cut, packed_times):
    """A key's floor is an int32 while every bucket the view was given fits
    one; a batch holding a bucket past that widens the floors first: the
    floors (the buckets keys dropped) and every answer carry over, in the
    same batch and after it."""
    cy, ref = make(WindowView, spec, lateness), make(RefView, spec, lateness)
    hop = spec.hop or spec.gap or 1
    far = [(s, t + (1 << 31) * hop, v) for s, t, v in later]  # buckets from 2^31 on
    first, second = events[:cut], events[cut:] + far
    late = []
    for batch in (first, second):
        slots, ts, x = arrays(batch)
        late.append(cy.update(slots, ts, {"x": x}))
        np.testing.assert_array_equal(late[-1], ref.update(slots, ts, {"x": x}))
        if batch is first:
            narrow = packed_times != "wide-floors" and spec.kind != "session"
            assert cy.slot_bytes == (13 if narrow else 17)
    if far and spec.kind in ("sliding", "tumbling", "continuous"):
        assert cy.slot_bytes == 17
    compare(cy, ref, spec, first + second, np.concatenate(late))


@FAST
@given(spec=st.sampled_from(SPECS), lateness=st.sampled_from([0, 10, 25]),
       max_sessions=st.sampled_from([1, 2, 4]), events=EVENTS, data=st.data(), aggs=EITHER_AGGS)
def test_lateness_per_part_equals_the_reference_in_any_chunks(spec, lateness, max_sessions, events, data, aggs):
    """update(..., parts=): each part (a Kafka partition) has its own
    watermark. Against the reference; the same in chunks with a snapshot
    round trip between them; and one part alone is the untagged rule."""
    slots, ts, x = arrays(events)
    parts = np.array(data.draw(st.lists(st.integers(0, 2), min_size=len(ts), max_size=len(ts))), dtype=np.int64)
    cy, ref = make(WindowView, spec, lateness, max_sessions, aggs), make(RefView, spec, lateness, max_sessions, aggs)
    late = cy.update(slots, ts, {"x": x}, parts=parts)
    np.testing.assert_array_equal(late, ref.update(slots, ts, {"x": x}, parts=parts))
    assert cy.part_watermarks == ref.part_watermarks and cy.watermark == -2 ** 63
    compare(cy, ref, spec, events, late)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(ts)), max_size=3)))
    v, masks = make(WindowView, spec, lateness, max_sessions, aggs), []
    for a, b in zip([0] + cuts, cuts + [len(ts)]):
        masks.append(v.update(slots[a:b], ts[a:b], {"x": x[a:b]}, parts=parts[a:b]))
        v = WindowView.from_bytes(v.to_bytes()) if a % 2 else v.frozen() if b % 3 == 0 else v
    np.testing.assert_array_equal(np.concatenate(masks) if masks else late, late)
    assert v.part_watermarks == cy.part_watermarks
    one = make(WindowView, spec, lateness, max_sessions, aggs)
    np.testing.assert_array_equal(one.update(slots, ts, {"x": x}, parts=np.full(len(ts), 7)),
                                  make(WindowView, spec, lateness, max_sessions, aggs).update(slots, ts, {"x": x}))


@FAST
@given(spec=st.sampled_from(SPECS), events=st.lists(
    st.tuples(st.integers(0, N_SLOTS - 1), st.integers(0, 120), VALUES), max_size=40),
    t=st.integers(0, 130))
def test_online_as_of_t_equals_offline(spec, events, t):
    # The consistency property: ingest the events with ts < t (no late ones:
    # sorted order, or any order with enough lateness), then ask as of t.
    before = sorted((e for e in events if e[1] < t), key=lambda e: e[1])
    cy, ref = make(WindowView, spec, 0, 64), make(RefView, spec, 0, 64)
    slots, ts, x = arrays(before)
    assert not cy.update(slots, ts, {"x": x}).any()
    ref.update(slots, ts, {"x": x})
    for slot in range(N_SLOTS):
        got, exact = cy.value_as_of([slot], t)
        want, _ = ref.value_as_of([slot], t)
        assert exact[0]
        finite = [abs(e[2]) for e in before if e[0] == slot and e[2] == e[2]]
        for name in got:
            if got[name].ndim == 2:
                np.testing.assert_array_equal(got[name][0], want[name][0])
            else:
                assert_close(name, got[name][0], want[name][0], max(finite, default=0.0), max(len(before), 1))


@FAST
@given(spec=st.sampled_from(SPECS), lateness=st.sampled_from([0, 10, 25]), events=EVENTS,
       cuts=st.lists(st.integers(0, 40), max_size=5))
def test_batch_update_equals_one_at_a_time(spec, lateness, events, cuts):
    slots, ts, x = arrays(events)
    whole = make(WindowView, spec, lateness)
    late_whole = whole.update(slots, ts, {"x": x})
    one = make(WindowView, spec, lateness)
    late_one = np.concatenate([one.update(slots[i:i + 1], ts[i:i + 1], {"x": x[i:i + 1]})
                               for i in range(len(events))] or [np.zeros(0, bool)])
    chunked = make(WindowView, spec, lateness)
    bounds = sorted({0, len(events), *[c for c in cuts if c <= len(events)]})
    for a, b in zip(bounds, bounds[1:]):
        chunked.update(slots[a:b], ts[a:b], {"x": x[a:b]})
    np.testing.assert_array_equal(late_whole, late_one)
    assert whole.to_bytes() == one.to_bytes() == chunked.to_bytes()


@FAST
@given(spec=st.sampled_from(SPECS), lateness=st.sampled_from([0, 25]), events=EVENTS,
       more=EVENTS, aggs=EITHER_AGGS)
@example(spec=WindowSpec(kind="continuous", size=10, hop=10, gap=0), lateness=0,
         events=[(0, 0, 0.0)] * 4 + [(0, 10, 0.0)], more=[(0, 30, 0.0)], aggs=AGGS)
# a ring still held buckets older than its last R (until overwritten) that a
# restored run of cells dropped at its next new bucket: as-of answers differed
@example(spec=WindowSpec(kind="continuous", size=10, hop=10, gap=0), lateness=0,
         events=[(0, 0, 0.0)] * 6 + [(0, 10, 0.0)], more=[(0, 0, 0.0)] * 11 + [(0, 100, 0.0)], aggs=AGGS)
# a streamed snapshot left a ring's cells past its last R buckets out but wrote
# the key's floor as it was: restored, a read needing such a bucket was exact
@example(spec=WindowSpec(kind="continuous", size=10, hop=10, gap=0), lateness=0,
         events=[(0, 0, 0.0), (0, 10, 0.0), (0, 40, 0.0)], more=[], aggs=AGGS)
def test_serialise_restore_gives_identical_answers(spec, lateness, events, more, aggs):
    slots, ts, x = arrays(events)
    a = make(WindowView, spec, lateness, aggs=aggs)
    a.update(slots, ts, {"x": x})
    b = WindowView.from_bytes(a.to_bytes())
    assert b.to_bytes() == a.to_bytes()
    # a frozen copy (what a checkpoint encodes off the lock) is the state then, not after
    g = WindowView.from_bytes(a.to_bytes())
    f = g.frozen()
    assert f.to_bytes() == a.to_bytes()
    ms, mt, mx = arrays(more)
    g.update(ms, mt, {"x": mx})
    g.grow(N_SLOTS * 3)
    assert f.to_bytes() == a.to_bytes()
    # Per-slot export/import into a fresh view, in reversed slot order.
    c = make(WindowView, spec, lateness, aggs=aggs)
    order = np.arange(N_SLOTS)[::-1]
    c.import_slots(order, a.export_slots(order))
    s2, t2, x2 = arrays(more)
    np.testing.assert_array_equal(a.update(s2, t2, {"x": x2}), b.update(s2, t2, {"x": x2}))
    times = query_times(spec, events + more)
    q_slots = np.repeat(np.arange(N_SLOTS), len(times))
    q_times = np.tile(times, N_SLOTS)
    va, ea = a.value_as_of(q_slots, q_times)
    vb, eb = b.value_as_of(q_slots, q_times)
    np.testing.assert_array_equal(ea, eb)
    # where `exact` is False the values cover the retained cells only, and a
    # restored ring may be sized tighter than the one that grew (it retains
    # less past the horizon): only exact answers must agree
    for name in va:
        np.testing.assert_array_equal(va[name][ea], vb[name][eb])
    vc, ec = c.value_as_of(q_slots, q_times)
    a2 = make(WindowView, spec, lateness, aggs=aggs)
    a2.update(slots, ts, {"x": x})
    va2, ea2 = a2.value_as_of(q_slots, q_times)
    np.testing.assert_array_equal(ec, ea2)
    for name in va2:
        np.testing.assert_array_equal(vc[name][ec], va2[name][ea2])


@FAST
@given(spec=st.sampled_from(SPECS), lateness=st.sampled_from([0, 10]), events=EVENTS)
def test_late_events_are_reported_and_not_applied(spec, lateness, events):
    slots, ts, x = arrays(events)
    v = make(WindowView, spec, lateness)
    late = v.update(slots, ts, {"x": x})
    assert v.late_count == late.sum()
    # Lateness against the stream watermark, event by event in arrival order.
    wm = None
    for i, t in enumerate(ts.tolist()):
        if wm is not None and t < wm - lateness:
            assert late[i]
        elif not late[i]:
            wm = t if wm is None else max(wm, t)
    only_applied = make(WindowView, spec, lateness)
    keep = ~late
    assert not only_applied.update(slots[keep], ts[keep], {"x": x[keep]}).any()
    for key in ("cells", "lens", "floor"):
        np.testing.assert_array_equal(v.export_slots(np.arange(N_SLOTS))[key],
                                      only_applied.export_slots(np.arange(N_SLOTS))[key])


@FAST
@given(spec=st.sampled_from([sliding(30, 10), tumbling(20), continuous(30, 10), lifetime(),
                             session(7)]),
       times=st.lists(st.integers(0, 120), unique=True, max_size=40), data=st.data(), aggs=EITHER_AGGS)
def test_merge_of_shards_equals_one_view(spec, times, data, aggs):
    # Distinct timestamps: merge order may then not change first/last ties.
    events = [(data.draw(st.integers(0, N_SLOTS - 1)), t, data.draw(VALUES)) for t in sorted(times)]
    slots, ts, x = arrays(events)
    side = np.array(data.draw(st.lists(st.booleans(), min_size=len(events), max_size=len(events))),
                    dtype=bool)
    whole, left, right = (make(WindowView, spec, 0, 64, aggs) for _ in range(3))
    whole.update(slots, ts, {"x": x})
    left.update(slots[side], ts[side], {"x": x[side]})
    right.update(slots[~side], ts[~side], {"x": x[~side]})
    left.merge_from(right)
    # The merged shards answer like the stream itself wherever they say they
    # are exact (checked against the oracle over all events), and they are
    # exact wherever one view over the whole stream is for reading now: as of
    # any time after the key's last event. (Further back, what a key keeps
    # beyond its ring depends on whether it is held as a sorted run or as a
    # ring, so exactness there may differ; it is never wrong.)
    oracle = make(RefView, spec, 0, 64, aggs)
    oracle.update(slots, ts, {"x": x})
    times = query_times(spec, events)
    for slot in range(N_SLOTS):
        got, exact = left.value_as_of(np.full(len(times), slot), times)
        want, _ = oracle.value_as_of(np.full(len(times), slot), times)
        _, exact_whole = whole.value_as_of(np.full(len(times), slot), times)
        last = max((e[1] for e in events if e[0] == slot), default=None)
        for i, t in enumerate(times):
            if last is None or t > last:
                assert exact[i] and exact_whole[i], f"slot {slot} as of {t}, after its last event"
        finite = [abs(e[2]) for e in events if e[0] == slot and e[2] == e[2]]
        for name in got:
            for i in range(len(times)):
                if not exact[i]:
                    continue
                if got[name].ndim == 2:
                    np.testing.assert_array_equal(got[name][i], want[name][i])
                else:
                    assert_close(name, got[name][i], want[name][i], max(finite, default=0.0),
                                 max(len(events), 1))


@pytest.mark.parametrize("p", [8, 12])
def test_hll_relative_error_is_within_documented_bound(p):
    # Documented: relative standard error 1.04 / sqrt(2^p); we assert 3 sigma
    # over several cardinalities (deterministic hash, seeded ids).
    rng = np.random.default_rng(20260)
    sigma = 1.04 / math.sqrt(1 << p)
    for n in (50, 1_000, 20_000):
        ids = np.unique(rng.integers(0, 1 << 62, size=n))
        v = WindowView(lifetime(), ["approx_count_distinct(id)"], 1, hll_p=p)
        v.update(np.zeros(2 * n, np.int64), np.arange(2 * n), {"id": np.concatenate([ids, ids])})
        est = v.value_as_of([0], 1 << 40)[0]["approx_count_distinct_id"][0]
        assert abs(est - len(ids)) / len(ids) <= 3 * sigma, (p, n, est)


@FAST
@given(spec=st.sampled_from(SPECS), lateness=st.sampled_from([0, 10, 25]), events=EVENTS,
       t0=st.integers(0, 200), dt=st.integers(0, 120))
def test_changed_slots_holds_every_slot_whose_value_moves_with_time(spec, lateness, events, t0, dt):
    """The engine recomputes only changed_slots(t0, t1) at a hop boundary
    (issue 15: a tick rewrote every key, 0.55 s at 100k keys); any slot whose
    value as of t1 differs from its value as of t0, with every applied event
    before t0, must be among them."""
    events = [e for e in events if e[1] < t0]
    slots, ts, x = arrays(events)
    v = make(WindowView, spec, lateness)
    v.update(slots, ts, {"x": x})
    t1 = t0 + dt
    changed = set(v.changed_slots(t0, t1).tolist())
    every = np.arange(N_SLOTS)
    a, _ = v.value_as_of(every, t0)
    b, _ = v.value_as_of(every, t1)
    for name in a:
        for s in range(N_SLOTS):
            same = np.array_equal(a[name][s], b[name][s], equal_nan=True)
            assert same or s in changed, (name, s, a[name][s], b[name][s], sorted(changed))
    assert list(v.changed_slots(t0, t1)) == sorted(changed)
    # the engine scans a big view a slot range at a time: the parts make the whole
    for cut in range(N_SLOTS + 1):
        parts = v.changed_slots(t0, t1, 0, cut).tolist() + v.changed_slots(t0, t1, cut).tolist()
        assert parts == sorted(changed), (cut, parts)
    if spec.kind in ("session", "lifetime") or t0 // spec.hop == t1 // spec.hop:
        assert not changed  # nothing moves without a boundary (or ever, for these)


# The run allocator: a buddy allocator over the pool (window.pxd). Keys grow
# run by run up to whole rings, leave (reset: eviction, expiry, a revoke) and
# move (import_slots); through it all the runs and free blocks must tile the
# pool exactly once, and no key's answers may change with what others do.
POOL_SLOTS = 12
POOL_OPS = st.lists(st.one_of(
    st.tuples(st.just("update"), st.lists(st.tuples(st.integers(0, POOL_SLOTS - 1), st.integers(0, 12)),
                                          min_size=1, max_size=60)),
    st.tuples(st.just("reset"), st.sets(st.integers(0, POOL_SLOTS - 1), min_size=1, max_size=6)),
    st.tuples(st.just("move"), st.tuples(st.integers(0, POOL_SLOTS - 1), st.integers(0, POOL_SLOTS - 1))),
), min_size=1, max_size=25)


@FAST
@given(spec=st.sampled_from([sliding(200, 10), continuous(120, 10), sliding(60, 10), session(3), lifetime()]),
       lateness=st.sampled_from([0, 30]), ops=POOL_OPS)
def test_runs_and_free_blocks_tile_the_pool_and_keys_keep_their_answers(spec, lateness, ops):
    aggs = ["count(*) as n", "sum(x) as s", "approx_count_distinct(x) as d"]
    v = WindowView(spec, aggs, POOL_SLOTS, allowed_lateness=lateness, hll_p=6, max_sessions=4)
    twins = {}  # slot -> a view that saw only this key's events since it last started over
    clock = 0   # events in time order: none late, in the view or in a twin

    def twin():
        return WindowView(spec, aggs, 1, allowed_lateness=lateness, hll_p=6, max_sessions=4)
    for op, arg in ops:
        if op == "update":
            slots = np.array([a for a, _ in arg], dtype=np.int64)
            ts = clock + np.cumsum([d for _, d in arg]).astype(np.int64)
            clock = int(ts[-1])
            x = (ts % 7).astype(np.float64)
            v.update(slots, ts, {"x": x})
            for s in set(slots.tolist()):
                m = slots == s
                twins.setdefault(s, twin()).update(np.zeros(int(m.sum()), np.int64), ts[m], {"x": x[m]})
        elif op == "reset":
            v.reset_slots(np.array(sorted(arg), dtype=np.int64))
            for s in arg:
                twins.pop(s, None)
        else:
            src, dst = arg
            if src != dst:
                state = v.export_slots(np.array([src], dtype=np.int64))
                v.import_slots(np.array([dst], dtype=np.int64), state)
                v.reset_slots(np.array([src], dtype=np.int64))
                if src in twins:
                    twins[dst] = twins.pop(src)
                else:
                    twins.pop(dst, None)
        v._check_pool()
    t = np.full(POOL_SLOTS, clock + 1, dtype=np.int64)
    got, _ = v.value_as_of(np.arange(POOL_SLOTS), t)
    for s in range(POOL_SLOTS):
        if s not in twins:
            assert got["n"][s] == 0, s
            continue
        want, _ = twins[s].value_as_of(np.zeros(1, np.int64), t[:1])
        for name in got:
            np.testing.assert_array_equal(got[name][s], want[name][0], err_msg=f"{name} slot {s}")


# A copy-mode checkpoint freezes a view beside its writer (track_writes under
# the writer's lock, frozen_begin without it, frozen_end under it again): the
# copy must be the state at frozen_end whatever the writer did in between —
# keys updated, grown into whole rings, reset, moved, slots added, another
# view merged in — and must not follow the writer afterwards.
WRITER_OPS = (  # what a writer does to a view's keys beside a copy of it
    st.tuples(st.just("update"), st.lists(st.tuples(st.integers(0, POOL_SLOTS - 1), st.integers(0, 12)),
                                          min_size=1, max_size=60)),
    st.tuples(st.just("reset"), st.sets(st.integers(0, POOL_SLOTS - 1), min_size=1, max_size=6)),
    st.tuples(st.just("move"), st.tuples(st.integers(0, POOL_SLOTS - 1), st.integers(0, POOL_SLOTS - 1))),
    st.tuples(st.just("grow"), st.integers(1, 40)),
)
FREEZE_STEPS = st.lists(st.one_of(
    *WRITER_OPS,
    st.tuples(st.just("merge"), st.lists(st.tuples(st.integers(0, POOL_SLOTS - 1), st.integers(0, 12)),
                                         min_size=1, max_size=20)),
    st.tuples(st.just("track"), st.none()),
    st.tuples(st.just("begin"), st.none()),
    st.tuples(st.just("end"), st.none()),
), min_size=1, max_size=30)


@FAST
@given(spec=st.sampled_from([sliding(200, 10), continuous(120, 10), tumbling(20), session(3), lifetime()]),
       steps=FREEZE_STEPS, reserved=st.booleans(), hll=st.booleans())
def test_a_copy_frozen_beside_the_writer_is_the_state_at_frozen_end(spec, steps, reserved, hll):
    # reserved: the dense HLL blocks move into their reservation at once, so
    # frozen_begin copies them too and frozen_end only the marked slots' ones
    prev = _hll_reserve_from(1 if reserved else 4 << 20)
    try:
        _freeze_steps(spec, steps, hll)
    finally:
        _hll_reserve_from(prev)


def _freeze_steps(spec, steps, hll=True):
    # without approx_count_distinct the blocks are last_k buffers sized by use
    aggs = ["count(*) as n", "sum(x) as s"] + (["approx_count_distinct(x) as d"] if hll else []) + ["last_k(x, 3) as k"]

    def view(n):
        return WindowView(spec, aggs, n, allowed_lateness=30, hll_p=6, max_sessions=4)
    v = view(POOL_SLOTS)
    clock, track, begun, frozen = 0, None, None, []

    def events(arg):
        nonlocal clock
        slots = np.array([a for a, _ in arg], dtype=np.int64)
        ts = clock + np.cumsum([d for _, d in arg]).astype(np.int64)
        clock = int(ts[-1])
        return slots, ts, {"x": (ts % 23).astype(np.float64)}  # > 8 distinct: dense HLLs too
    for op, arg in steps:
        if op == "update":
            v.update(*events(arg))
        elif op == "reset":
            v.reset_slots(np.array(sorted(arg), dtype=np.int64))
        elif op == "move" and arg[0] != arg[1]:
            v.import_slots(np.array([arg[1]]), v.export_slots(np.array([arg[0]])))
            v.reset_slots(np.array([arg[0]]))
        elif op == "grow":
            v.grow(v.n_slots + arg)
        elif op == "merge":
            other = view(v.n_slots)
            other.update(*events(arg))
            v.merge_from(other)
        elif op == "track":
            track, begun = v.track_writes(), None
        elif op == "begin" and track is not None:
            begun = v.frozen_begin(track)
        elif op == "end" and begun is not None:
            f = v.frozen_end(begun)
            frozen.append((f, v.to_bytes()))
            assert f.to_bytes() == frozen[-1][1]
            track = begun = None
        v._check_pool()
    for f, then in frozen:
        assert f.to_bytes() == then  # later writes do not reach a frozen copy


# Compaction lays a view's cells out again in a new pool beside its writer
# (track_writes under the writer's lock, compact_begin without it,
# compact_end under it again): whatever the writer did in between, the view
# afterwards holds exactly the state a twin that never compacted holds, its
# runs and free blocks still tile the pool, and it goes on like the twin.
COMPACT_WRITES = st.lists(st.one_of(*WRITER_OPS), min_size=1, max_size=30)


@FAST
@given(spec=st.sampled_from([sliding(200, 10), continuous(120, 10), tumbling(20), session(3), lifetime()]),
       writes=COMPACT_WRITES,
       # each compaction's three steps happen before these writes (sorted: in order)
       rounds=st.lists(st.lists(st.integers(0, 30), min_size=3, max_size=3).map(sorted), min_size=1, max_size=3),
       hll=st.booleans())
def test_a_view_compacted_beside_its_writer_holds_what_a_twin_holds(spec, writes, rounds, hll):
    aggs = ["count(*) as n", "sum(x) as s"] + (["approx_count_distinct(x) as d"] if hll else []) + ["last_k(x, 3) as k"]
    v, twin = (WindowView(spec, aggs, POOL_SLOTS, allowed_lateness=30, hll_p=6, max_sessions=4) for _ in range(2))
    # every round's steps, in the order they run (a round starts after the one before ends)
    phases, at = [], 0
    for r in rounds:
        r = [max(x, at) for x in r]
        phases += [(r[0], "track"), (r[1], "begin"), (r[2], "end")]
        at = r[2]
    clock, track, begun, compacted = 0, None, None, 0

    def compaction_step(what):
        nonlocal track, begun, compacted
        if what == "track":
            track = v.track_writes()
        elif what == "begin":
            begun = v.compact_begin(track)
        else:
            assert v.compact_end(begun)
            compacted += 1
        v._check_pool()
        assert v.to_bytes() == twin.to_bytes(), (what, compacted)
    for i, (op, arg) in enumerate(writes + [("none", None)] * (max(at + 1, len(writes)) - len(writes))):
        while phases and phases[0][0] <= i:
            compaction_step(phases.pop(0)[1])
        if op == "update":
            slots = np.array([a for a, _ in arg], dtype=np.int64)
            ts = clock + np.cumsum([d for _, d in arg]).astype(np.int64)
            clock = int(ts[-1])
            for w in (v, twin):
                w.update(slots, ts, {"x": (ts % 23).astype(np.float64)})  # > 8 distinct: dense HLLs too
        elif op == "reset":
            for w in (v, twin):
                w.reset_slots(np.array(sorted(arg), dtype=np.int64))
        elif op == "move" and arg[0] != arg[1]:
            for w in (v, twin):
                w.import_slots(np.array([arg[1]]), w.export_slots(np.array([arg[0]])))
                w.reset_slots(np.array([arg[0]]))
        elif op == "grow":
            for w in (v, twin):
                w.grow(w.n_slots + arg)
        v._check_pool()
        assert v.to_bytes() == twin.to_bytes(), (op, compacted)
    assert not phases and compacted == len(rounds)
    every = np.arange(v.n_slots)
    t = np.full(v.n_slots, clock + 1, dtype=np.int64)
    got, ex = v.value_as_of(every, t)
    want, ex2 = twin.value_as_of(every, t)
    np.testing.assert_array_equal(ex, ex2)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_compaction_gives_back_the_runs_keys_grew_through():
    # keys that grow together leave their outgrown runs behind; laid out again
    # the pool holds the cells in use and nothing else
    v = WindowView(sliding(2000, 10), ["count(*) as n", "sum(x) as s"], 64)
    for step in range(150):
        slots = np.arange(64, dtype=np.int64)
        v.update(slots, np.full(64, step * 10, dtype=np.int64), {"x": np.ones(64)})
    assert v.pool_waste > 0.2 * v.pool_top
    before, top = v.to_bytes(), v.pool_top
    assert v.compact_end(v.compact_begin(v.track_writes()))
    v._check_pool()
    assert v.pool_waste == 0 and v.to_bytes() == before
    assert v.pool_top == v.cells_held < 0.8 * top


def test_compaction_yields_to_a_tracker_that_started_after_it():
    v = WindowView(sliding(200, 10), ["count(*) as n"], 4)
    v.update(np.arange(4, dtype=np.int64), np.arange(4, dtype=np.int64))
    begun = v.compact_begin(v.track_writes())
    v.track_writes()  # a copy-mode checkpoint's, say
    before = v.to_bytes()
    assert not v.compact_end(begun)
    assert v.to_bytes() == before
    v._check_pool()


# Views whose aggregations have windows of their own over one hop (the engine
# gives a feature view's windows that share a hop one view: one cell header
# and one run a key, docs/architecture.md "Windows that share a hop"). Each
# aggregation must answer as its own window would, by the reference's rules.
SHARED_HOP = [sliding(30, 10), continuous(30, 10), continuous(10, 10), tumbling(10), sliding(10, 10),
              sliding(50, 10), continuous(20, 10)]
SHARED_AGGS = st.lists(st.tuples(st.sampled_from(AGGS), st.sampled_from(SHARED_HOP)), min_size=2, max_size=6)


def shared(cls, picks, lateness):
    aggs = [f"{a} as a{i}" for i, (a, _) in enumerate(picks)]
    specs = [sp for _, sp in picks]
    longest = max(specs, key=lambda sp: (sp.size, sp.kind))
    return cls(longest, aggs, N_SLOTS, allowed_lateness=lateness, hll_p=6, agg_specs=specs)


@FAST
@given(picks=SHARED_AGGS, lateness=st.sampled_from([0, 10, 25]), events=EVENTS, more=EVENTS,
       tagged=st.booleans(), data=st.data())
def test_windows_sharing_a_hop_answer_each_as_its_own_window(picks, lateness, events, more, tagged, data):
    cy, ref = shared(WindowView, picks, lateness), shared(RefView, picks, lateness)
    slots, ts, x = arrays(events)
    parts = np.array(data.draw(st.lists(st.integers(0, 2), min_size=len(ts), max_size=len(ts))),
                     dtype=np.int64) if tagged else None
    late = cy.update(slots, ts, {"x": x}, parts=parts)
    np.testing.assert_array_equal(late, ref.update(slots, ts, {"x": x}, parts=parts))
    applied = [e for e, lt in zip(events, late) if not lt]
    wm = max([cy.watermark, *cy.part_watermarks.values()])
    names = [a.name for a in cy.aggs]
    for slot in range(N_SLOTS):
        mine = [e for e in applied if e[0] == slot]
        finite = [abs(e[2]) for e in mine if e[2] == e[2]]
        scale, n = (max(finite) if finite else 0.0), max(len(mine), 1)
        times = sorted(set().union(*(query_times(sp, events) for _, sp in picks)))
        got, exact = cy.value_as_of(np.full(len(times), slot), np.array(times))
        want, _ = ref.value_as_of(np.full(len(times), slot), np.array(times))
        for i, t in enumerate(times):
            # exact as each window alone promises (one answer for the view: all of them)
            if all(must_be_exact(cy, sp, mine, t, wm) for _, sp in picks):
                assert exact[i], (picks, slot, t)
            if not exact[i]:
                continue
            for name, (agg, _) in zip(names, picks):
                g, w = got[name][i], want[name][i]
                if np.ndim(g):
                    np.testing.assert_array_equal(g, w, err_msg=f"{name} t={t}")
                else:
                    assert_close(agg, g, w, scale, n)
    # a snapshot, a frozen copy and an export/import hold the same answers
    b = WindowView.from_bytes(cy.to_bytes())
    assert b.agg_specs == cy.agg_specs and b.to_bytes() == cy.to_bytes()
    assert cy.frozen().to_bytes() == cy.to_bytes()
    c = shared(WindowView, picks, lateness)
    order = np.arange(N_SLOTS)[::-1]
    c.import_slots(order, cy.export_slots(order))

    def same_answers(one, other, evs):
        times = sorted(set().union(*(query_times(sp, evs) for _, sp in picks)))
        q_slots, q_times = np.repeat(np.arange(N_SLOTS), len(times)), np.tile(times, N_SLOTS)
        va, ea = one.value_as_of(q_slots, q_times)
        vo, eo = other.value_as_of(q_slots, q_times)
        np.testing.assert_array_equal(ea, eo)
        for name in va:
            np.testing.assert_array_equal(va[name][ea], vo[name][eo])

    same_answers(cy, c, events)
    s2, t2, x2 = arrays(more)
    np.testing.assert_array_equal(cy.update(s2, t2, {"x": x2}), b.update(s2, t2, {"x": x2}))
    same_answers(cy, b, events + more)


@FAST
@given(picks=SHARED_AGGS, lateness=st.sampled_from([0, 25]), events=EVENTS, t0=st.integers(0, 200),
       dt=st.integers(0, 120))
def test_changed_slots_of_windows_sharing_a_hop_holds_every_slot_that_moves(picks, lateness, events, t0, dt):
    events = [e for e in events if e[1] < t0]
    slots, ts, x = arrays(events)
    v = shared(WindowView, picks, lateness)
    v.update(slots, ts, {"x": x})
    changed = set(v.changed_slots(t0, t0 + dt).tolist())
    every = np.arange(N_SLOTS)
    a, _ = v.value_as_of(every, t0)
    b, _ = v.value_as_of(every, t0 + dt)
    for name in a:
        for s in range(N_SLOTS):
            assert np.array_equal(a[name][s], b[name][s], equal_nan=True) or s in changed, (name, s)


def test_windows_share_a_view_only_over_one_hop_with_the_longest_as_the_view():
    from fscore.errors import WindowSpecError
    with pytest.raises(WindowSpecError, match="hop"):
        WindowView(sliding(60, 10), ["sum(x)", "count(*)"], agg_specs=[sliding(60, 10), sliding(60, 20)])
    with pytest.raises(WindowSpecError, match="longest"):
        WindowView(sliding(20, 10), ["sum(x)", "count(*)"], agg_specs=[sliding(20, 10), sliding(60, 10)])
    with pytest.raises(WindowSpecError, match="session"):
        WindowView(sliding(20, 10), ["sum(x)", "count(*)"], agg_specs=[sliding(20, 10), session(5)])
    with pytest.raises(WindowSpecError, match="one window per aggregation"):
        WindowView(sliding(20, 10), ["sum(x)", "count(*)"], agg_specs=[sliding(20, 10)])
    same = WindowView(sliding(20, 10), ["sum(x)", "count(*)"], agg_specs=[sliding(20, 10)] * 2)
    assert same.agg_specs is None and "agg_specs" not in same.meta()
    # a snapshot of windows sharing a hop does not load as a plain view's state
    v = WindowView(sliding(20, 10), ["sum(x)", "count(*)"], 1, agg_specs=[sliding(20, 10), tumbling(10)])
    plain = WindowView(sliding(20, 10), ["sum(x)", "count(*)"], 1)
    with pytest.raises(Exception, match="agg_specs"):
        plain.merge_from(v)
