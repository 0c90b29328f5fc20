"""The consistency property (DESIGN.md §4): for any event log without late
events and any time t, the online engine fed the events with ts < t (in
arrival order) serves, as of t, the value the offline DuckDB computation gives
for t — for every window type and aggregation. Plain views: the offline join
equals a pure-Python statement of Feast's rule.

Examples are small on purpose (a few keys, timestamps on a coarse grid so
duplicates, hop boundaries and t == an event ts are common)."""
from __future__ import annotations

import math

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fscore.window import WindowView
from fscore.window_spec import Agg, continuous, lifetime, session, sliding, tumbling

from fsapp.offline import pit
from fsapp.offline.views import SourceDef, ViewDef

AGGS = [Agg.parse(a) for a in (
    "count(*)", "count(x)", "sum(x)", "mean(x)", "min(x)", "max(x)", "first(x)", "last(x)",
    "var_samp(x)", "var_pop(x)", "stddev_samp(x)", "stddev_pop(x)", "approx_count_distinct(x)",
    "last_k(x, 3)")]
EXACT = {"count", "min", "max", "first", "last", "approx_count_distinct", "last_k"}
VALUES = [0.0, -0.0, 1.0, 2.5, -3.0, 7.0, 3.0, 1e9 + 0.5, -1e-3, float("nan"), 42.0, 5.25]
N_KEYS = 3


@pytest.fixture(scope="module")
def con():
    c = duckdb.connect()
    pit.register_udfs(c)
    yield c
    c.close()


def windows(kind: str):
    hop = st.sampled_from([1, 2, 5, 10])
    mult = st.integers(1, 4)
    if kind == "tumbling":
        return st.builds(lambda h, m: tumbling(h * m), hop, mult)
    if kind == "sliding":
        return st.builds(lambda h, m: sliding(h * m, h), hop, mult)
    if kind == "continuous":
        return st.builds(lambda h, m: continuous(h * m, h), hop, mult)
    if kind == "session":
        return st.builds(session, st.sampled_from([1, 3, 5, 10, 20]))
    return st.just(lifetime())


@st.composite
def logs(draw, kind: str):
    """(window, lateness, events in arrival order, query times, hll_p)."""
    spec = draw(windows(kind))
    grid = draw(st.sampled_from([1, 5]))  # coarse grid: duplicates and boundaries
    n = draw(st.integers(0, 30))
    ts = [draw(st.integers(-12, 16)) * grid for _ in range(n)]
    keys = [draw(st.integers(0, N_KEYS - 1)) for _ in range(n)]
    xs = [draw(st.sampled_from(VALUES)) for _ in range(n)]
    lateness = draw(st.sampled_from([0, 3, 10]))
    # Arrival order = sort by ts + jitter with jitter in [0, lateness]: every
    # event then arrives with ts >= (max ts so far) - lateness, so none is late.
    jitter = [draw(st.integers(0, lateness)) for _ in range(n)]
    order = sorted(range(n), key=lambda i: (ts[i] + jitter[i], i))
    events = [(keys[i], ts[i], xs[i]) for i in order]
    hop = spec.hop or spec.gap or 7
    candidates = ts + [b * hop for b in range(-4, 5)] + [t + 1 for t in ts]
    qs = draw(st.lists(st.one_of(st.sampled_from(candidates) if candidates else st.integers(-60, 80),
                                 st.integers(-60, 80)), min_size=1, max_size=6))
    return spec, lateness, events, sorted(set(qs)), draw(st.sampled_from([4, 8]))


def online_values(spec, lateness, events, t, hll_p):
    max_sessions = lateness // max(spec.gap, 1) + 3
    v = WindowView(spec, AGGS, N_KEYS, allowed_lateness=lateness, hll_p=hll_p, max_sessions=max_sessions)
    before = [e for e in events if e[1] < t]
    if before:
        k, ts, x = (np.array(c) for c in zip(*before))
        late = v.update(k.astype(np.int64), ts.astype(np.int64), {"x": x.astype(np.float64)})
        assert not late.any(), "the generator must not make late events"
    values, exact = v.value_as_of(np.arange(N_KEYS), t)
    assert exact.all()
    return values


def offline_values(con, spec, events, qs, hll_p):
    view = ViewDef.windowed("v", "ev", ["k"], spec, AGGS, hll_p=hll_p)
    ev = pa.table({"k": pa.array([e[0] for e in events], pa.int64()),
                   "ts": pa.array([e[1] for e in events], pa.int64()),
                   "x": pa.array([e[2] for e in events], pa.float64()),
                   "seq": pa.array(range(len(events)), pa.int64())})
    rows = [(k, t) for t in qs for k in range(N_KEYS)]
    q = pa.table({"__row": pa.array(range(len(rows)), pa.int64()), "k": pa.array([r[0] for r in rows], pa.int64()),
                  "__t": pa.array([r[1] for r in rows], pa.int64())})
    con.register("ev", ev)
    con.register("q", q)
    src = SourceDef("ev", "ev", "ts", "0", "seq")
    sql = pit.training_set_sql("q", ["k", "__t"], [pit.ViewQuery(view, src, [a.name for a in AGGS])])
    out = con.sql(sql).to_arrow_table().to_pydict()
    return {(k, t): {a.name: out[a.name][i] for a in AGGS} for i, (k, t) in enumerate(rows)}


def close(kind: str, online: float, offline, xs: list[float]) -> bool:
    if offline is None:
        return math.isnan(online)
    if math.isnan(online):
        return False
    n = max(len(xs), 1)
    big = max((abs(x) for x in xs), default=0.0)
    # semantics.md §3: float sums may differ by ~ n · 2^-52 · max|x|;
    # var works on squares, stddev on their roots.
    tol = 4 * n * 2.0 ** -52 * big
    if kind.startswith("var"):
        tol = tol * big * 4
    elif kind.startswith("stddev"):
        tol = math.sqrt(tol * big * 4)
    return abs(online - offline) <= tol + 1e-12 * max(abs(online), abs(offline))


def check(con, spec, lateness, events, qs, hll_p):
    offline = offline_values(con, spec, events, qs, hll_p)
    for t in qs:
        online = online_values(spec, lateness, events, t, hll_p)
        for k in range(N_KEYS):
            off = offline[(k, t)]
            xs = [x for kk, ts, x in events if kk == k and ts < t and x == x]
            for a in AGGS:
                on = online[a.name][k]
                o = off[a.name]
                where = f"{a.name} of key {k} as of t={t} ({spec})"
                if a.kind == "last_k":  # the kernel's row: the items, then a NaN tail; offline: a list or null
                    items = [float(x) for x in on if x == x]
                    assert items == (o or []), f"{where}: {items} != {o}"
                elif a.kind in ("count", "approx_count_distinct"):
                    assert int(on) == o, f"{where}: online {on} != offline {o}"
                elif a.kind in EXACT:
                    assert (math.isnan(on) and o is None) or on == o, f"{where}: online {on} != offline {o}"
                else:
                    assert close(a.kind, float(on), o, xs), f"{where}: online {on} != offline {o}"


@pytest.mark.parametrize("kind", ["tumbling", "sliding", "continuous", "session", "lifetime"])
def test_online_equals_offline(con, kind):
    @settings(max_examples=40)
    @given(logs(kind))
    def prop(case):
        check(con, *case)

    prop()


def test_worked_examples_online_equals_offline(con):
    # semantics.md §2 examples, hop boundaries included, through the property.
    ev = [(0, t, float(t)) for t in (5, 10, 29, 30)]
    check(con, sliding(30, 10), 0, ev, [29, 30, 39, 40, 41], 8)
    check(con, tumbling(20), 0, [(0, t, 1.0) for t in (0, 19, 20, 39, 40)], [20, 39, 40, 60], 8)
    check(con, continuous(30, 10), 0, [(0, t, float(t)) for t in (0, 9, 12, 36)], [36, 37, 40], 8)
    check(con, session(10), 0, [(0, t, 1.0) for t in (0, 9, 19, 30)], [19, 20, 31], 8)
    check(con, tumbling(10), 0, [(0, t, 2.0) for t in (-11, -10, -1)], [-1, 0], 8)


# ---------------------------------------------------------------- plain views


def feast_reference(rows, key, t, ttl):
    """Feast's rule, stated directly: among the key's rows with ts <= t (and
    ts >= t - ttl when ttl > 0), the one with the largest (ts, created, seq)."""
    ok = [r for r in rows if r[0] == key and r[1] <= t and (ttl == 0 or r[1] >= t - ttl)]
    return max(ok, key=lambda r: (r[1], r[2], r[3]))[4] if ok else None


@settings(max_examples=80)
@given(st.data())
def test_plain_view_follows_feast_rule(con, data):
    n = data.draw(st.integers(0, 25))
    rows = [(data.draw(st.integers(0, 2)), data.draw(st.integers(0, 10)) * 3, data.draw(st.integers(0, 3)), i,
             data.draw(st.one_of(st.none(), st.integers(-5, 5)))) for i in range(n)]
    ttl = data.draw(st.sampled_from([0, 1, 3, 6, 10]))
    qs = data.draw(st.lists(st.tuples(st.integers(0, 3), st.integers(-3, 35)), min_size=1, max_size=12))
    ev = pa.table({"k": pa.array([r[0] for r in rows], pa.int64()), "ts": pa.array([r[1] for r in rows], pa.int64()),
                   "cr": pa.array([r[2] for r in rows], pa.int64()), "seq": pa.array([r[3] for r in rows], pa.int64()),
                   "v": pa.array([r[4] for r in rows], pa.int64())})
    q = pa.table({"__row": pa.array(range(len(qs)), pa.int64()), "k": pa.array([k for k, _ in qs], pa.int64()),
                  "__t": pa.array([t for _, t in qs], pa.int64())})
    con.register("pev", ev)
    con.register("pq", q)
    view = ViewDef.plain("p", "pev", ["k"], ["v"], ttl=ttl)
    sql = pit.training_set_sql("pq", ["k", "__t"], [pit.ViewQuery(view, SourceDef("pev", "pev", "ts", "cr", "seq"),
                                                                   ["v"])])
    got = con.sql(sql).to_arrow_table().column("v").to_pylist()
    assert got == [feast_reference(rows, k, t, ttl) for k, t in qs]
