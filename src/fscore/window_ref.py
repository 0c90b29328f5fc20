"""Pure-Python twins of `fscore.window.WindowView`.

`RefView` is the test oracle: it keeps every applied raw event and recomputes
each window from them by the rules of docs/semantics.md, with exact arithmetic
(math.fsum, fractions) where floats would blur the comparison. It is slow on
purpose: it is the rules, not an implementation of them.

`IncrementalRefView` is the benchmark peer: the same ring-of-hop-buckets idea
as the kernels, written the way one would in plain Python (dicts and floats per
bucket, one Python-level step per event). It covers the moment aggregations
(count, sum, mean, min, max) of bucketed windows.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from fscore.errors import SchemaError, WindowSpecError
from fscore.window_spec import (
    Agg, WindowSpec, check_agg_specs, check_view_params, hash_value, normalise_aggs,
)

NAN = float("nan")


def align(x: int, h: int) -> int:
    """floor(x / h) * h, epoch aligned, correct for negative x."""
    return (x // h) * h


def window_bounds(spec: WindowSpec, t: int) -> tuple[int, int]:
    """[lo, hi) of event times a bucketed/lifetime window as of t covers."""
    if spec.kind == "tumbling":
        a = align(t, spec.size)
        return a - spec.size, a
    if spec.kind == "sliding":
        a = align(t, spec.hop)
        return a - spec.size, a
    if spec.kind == "continuous":
        return align(t - spec.size, spec.hop), t
    if spec.kind == "lifetime":
        return -(1 << 63), t
    raise WindowSpecError(f"{spec.kind} has no fixed bounds")


def split_sessions(times: list[int], gap: int) -> list[tuple[int, int]]:
    """Index ranges [i, j) of maximal runs whose consecutive gaps are < gap
    (times sorted)."""
    runs, start = [], 0
    for i in range(1, len(times)):
        if times[i] - times[i - 1] >= gap:
            runs.append((start, i))
            start = i
    if times:
        runs.append((start, len(times)))
    return runs


def hll_estimate(hashes, p: int) -> int:
    """HyperLogLog estimate from 64-bit hashes: the first p bits pick a register,
    the rank is 1 + the leading zeros of the rest; linear counting below 2.5m.
    Same arithmetic, in the same order, as the kernel."""
    m = 1 << p
    regs = [0] * m
    for h in hashes:
        idx = h >> (64 - p)
        w = (h << p) & ((1 << 64) - 1)
        rank = (64 - w.bit_length()) + 1 if w else 64 - p + 1
        regs[idx] = max(regs[idx], rank)
    return hll_estimate_registers(regs, p)


def hll_estimate_registers(regs, p: int) -> int:
    m = 1 << p
    if not any(regs):
        return 0
    alpha = {16: 0.673, 32: 0.697, 64: 0.709}.get(m, 0.7213 / (1.0 + 1.079 / m))
    z = 0.0
    zeros = 0
    for r in regs:
        z += math.ldexp(1.0, -r)
        zeros += r == 0
    e = alpha * m * m / z
    if e <= 2.5 * m and zeros:
        e = m * math.log(m / zeros)
    return int(math.floor(e + 0.5))


def aggregate(aggs, events, hll_p: int) -> dict:
    """Each agg over `events` = list of (ts, seq, row) in (ts, seq) order."""
    out = {}
    for a in aggs:
        if a.kind == "count" and a.column is None:
            out[a.name] = len(events)
            continue
        vals = [(ts, seq, row[a.column]) for ts, seq, row in events if not _isnull(row[a.column])]
        xs = [v for _, _, v in vals]
        n = len(xs)
        k = a.kind
        if k == "count":
            out[a.name] = n
        elif k == "approx_count_distinct":
            out[a.name] = hll_estimate({hash_value(v) for v in xs}, hll_p)
        elif k == "last_k":
            newest = sorted(vals, key=lambda e: (e[0], e[1]), reverse=True)[: a.k]
            out[a.name] = [float(v) for _, _, v in newest] + [NAN] * (a.k - len(newest))
        elif n == 0:
            out[a.name] = NAN
        elif k == "sum":
            out[a.name] = math.fsum(float(x) for x in xs)
        elif k == "mean":
            out[a.name] = float(sum(Fraction(float(x)) for x in xs) / n)
        elif k == "min":
            out[a.name] = float(min(xs))
        elif k == "max":
            out[a.name] = float(max(xs))
        elif k == "first":
            out[a.name] = float(min(vals, key=lambda e: (e[0], e[1]))[2])
        elif k == "last":
            out[a.name] = float(max(vals, key=lambda e: (e[0], e[1]))[2])
        else:
            ddof = 1 if k.endswith("samp") else 0
            if n - ddof <= 0:
                out[a.name] = NAN
                continue
            fr = [Fraction(float(x)) for x in xs]
            mean = sum(fr) / n
            var = float(sum((x - mean) ** 2 for x in fr) / (n - ddof))
            out[a.name] = math.sqrt(var) if k.startswith("stddev") else var
    return out


def values_as_of(spec: WindowSpec, aggs, events, t: int, hll_p: int = 8) -> dict:
    """The documented rules stated directly, for one key: each aggregation's
    value as of `t` over `events` = [(ts, seq, row)] (every applied event of
    the key, any order; `seq` orders equal times). Nulls are NaN (last_k:
    its items, then NaN)."""
    return aggregate(normalise_aggs(aggs), window_events(spec, events, t), hll_p)


def window_events(spec: WindowSpec, events, t: int) -> list:
    """The events [(ts, seq, row)] a window as of `t` covers, in (ts, seq) order."""
    ev = sorted(events, key=lambda e: (e[0], e[1]))
    if spec.kind == "session":
        ev = [e for e in ev if e[0] < t]
        runs = split_sessions([e[0] for e in ev], spec.gap)
        return ev[runs[-1][0]:] if runs else []
    lo, hi = window_bounds(spec, t)
    return [e for e in ev if lo <= e[0] < hi]


def _isnull(v) -> bool:
    return isinstance(v, float) and v != v


class RefView:
    """The oracle. Same constructor and array API as `fscore.window.WindowView`;
    its answers are always exact (`exact` is all True)."""

    def __init__(self, spec: WindowSpec, aggs, n_slots: int = 0, allowed_lateness: int = 0,
                 hll_p: int = 8, max_sessions: int = 4, agg_specs=None):
        check_view_params(allowed_lateness, hll_p, max_sessions)
        self.spec, self.aggs = spec, normalise_aggs(aggs)
        # per aggregation its own window (the view's cells are those of `spec`, the longest)
        self.agg_specs = check_agg_specs(spec, self.aggs, agg_specs)
        self.columns = tuple(dict.fromkeys(a.column for a in self.aggs if a.column is not None))
        self.allowed_lateness, self.hll_p, self.max_sessions = allowed_lateness, hll_p, max_sessions
        self.watermark: int | None = None
        self.part_watermarks: dict[int, int] = {}  # tagged events (update(..., parts=)): per part
        self.late_count = 0
        self._seq = 0
        self.events: list[list] = []
        # Session bookkeeping mirrors the bounded online state (see semantics.md
        # §Sessions): retained spans and the last_ts of the newest dropped one.
        self._spans: list[list] = []
        self._evicted: list[int | None] = []
        self.grow(n_slots)

    @property
    def n_slots(self) -> int:
        return len(self.events)

    def grow(self, n_slots: int) -> None:
        while len(self.events) < n_slots:
            self.events.append([])
            self._spans.append([])
            self._evicted.append(None)

    def reset_slots(self, slots) -> None:
        for s in np.asarray(slots, dtype=np.int64).tolist():
            self.events[s], self._spans[s], self._evicted[s] = [], [], None

    def idle_slots(self, now: int, ttl: int) -> np.ndarray:
        return np.array([s for s, ev in enumerate(self.events)
                         if ev and max(e[0] for e in ev) < now - ttl], dtype=np.int64)

    def update(self, slots, ts, columns=None, parts=None) -> np.ndarray:
        slots = np.asarray(slots, dtype=np.int64)
        ts = np.asarray(ts, dtype=np.int64)
        columns = columns or {}
        missing = [c for c in self.columns if c not in columns]
        if missing:
            raise SchemaError(f"update is missing columns {missing}")
        cols = {c: np.asarray(columns[c]) for c in self.columns}
        late = np.zeros(len(ts), dtype=bool)
        for i in range(len(ts)):
            s, t = int(slots[i]), int(ts[i])
            part = None if parts is None else int(parts[i])
            wm = self.watermark if part is None else self.part_watermarks.get(part)
            if wm is not None and t < wm - self.allowed_lateness:
                late[i] = True
            elif self.spec.kind == "session" and not self._session_admit(s, t):
                late[i] = True
            elif self._beyond_ring(s, t):
                late[i] = True
            if late[i]:
                self.late_count += 1
                continue
            wm = t if wm is None else max(wm, t)
            if part is None:
                self.watermark = wm
            else:
                self.part_watermarks[part] = wm
            row = {c: _pyval(cols[c][i]) for c in self.columns}
            self.events[s].append((t, self._seq, row))
            self._seq += 1
        return late

    def _beyond_ring(self, s: int, t: int) -> bool:
        """A key holds its newest `ring_len` buckets (semantics.md §5): an
        event in an older bucket is late. Under one watermark this never
        happens (the ring covers the lateness); with a watermark per part, a
        key whose events come from several parts can meet it."""
        if self.spec.kind in ("session", "lifetime") or not self.events[s]:
            return False
        hop = self.spec.hop
        newest = max(e[0] for e in self.events[s]) // hop
        return t // hop < newest - self.spec.ring_len(self.allowed_lateness, self.max_sessions) + 1

    def _session_admit(self, s: int, t: int) -> bool:
        gap, ev = self.spec.gap, self._evicted[s]
        if ev is not None and t < ev + gap:
            return False  # would join (or precede) a session the state has dropped
        spans = sorted(self._spans[s] + [[t, t]])
        merged = [spans[0]]
        for f, l in spans[1:]:
            if f - merged[-1][1] < gap:
                merged[-1][1] = max(merged[-1][1], l)
            else:
                merged.append([f, l])
        if len(merged) > self.max_sessions:
            if merged[0] == [t, t]:
                return False  # the new session would be the oldest: no room for it
            dropped = merged.pop(0)
            self._evicted[s] = dropped[1] if ev is None else max(ev, dropped[1])
        self._spans[s] = merged
        return True

    def value_as_of(self, slots, t):
        slots = np.asarray(slots, dtype=np.int64)
        ts = np.broadcast_to(np.asarray(t, dtype=np.int64), slots.shape)
        rows = [self.value_one(int(s), int(q)) for s, q in zip(slots, ts)]
        out = {}
        for a in self.aggs:
            col = [r[a.name] for r in rows]
            if a.kind in ("count", "approx_count_distinct"):
                out[a.name] = np.array(col, dtype=np.int64)
            elif a.kind == "last_k":
                out[a.name] = np.array(col, dtype=np.float64).reshape(len(rows), a.k)
            else:
                out[a.name] = np.array(col, dtype=np.float64)
        return out, np.ones(len(rows), dtype=bool)

    def window_events(self, s: int, t: int) -> list:
        return window_events(self.spec, self.events[s], t)

    def value_one(self, s: int, t: int) -> dict:
        if self.agg_specs is None:
            return aggregate(self.aggs, self.window_events(s, t), self.hll_p)
        out = {}
        for a, spec in zip(self.aggs, self.agg_specs):
            out.update(aggregate([a], window_events(spec, self.events[s], t), self.hll_p))
        return out


def _pyval(v):
    return float(v) if isinstance(v, (float, np.floating)) else int(v)


class IncrementalRefView:
    """Plain-Python incremental engine (the benchmark peer): a dict of hop
    buckets per key, each holding [count(*), n, sum, min, max] per column."""

    _KINDS = ("count", "sum", "mean", "min", "max")

    def __init__(self, spec: WindowSpec, aggs, n_slots: int = 0, allowed_lateness: int = 0):
        if spec.kind not in ("tumbling", "sliding"):
            raise WindowSpecError("IncrementalRefView handles tumbling and sliding windows only")
        self.spec, self.aggs = spec, normalise_aggs(aggs)
        bad = [a.name for a in self.aggs if a.kind not in self._KINDS]
        if bad:
            raise WindowSpecError(f"IncrementalRefView supports {self._KINDS}, not {bad}")
        self.columns = tuple(dict.fromkeys(a.column for a in self.aggs if a.column is not None))
        self.allowed_lateness = allowed_lateness
        self.ring = spec.ring_len(allowed_lateness, 1)
        self.watermark = None
        self.buckets: list[dict] = [{} for _ in range(n_slots)]

    def update(self, slots, ts, columns=None) -> np.ndarray:
        hop, ring, lateness = self.spec.hop, self.ring, self.allowed_lateness
        cols = [list(map(float, columns[c])) for c in self.columns]
        late = []
        wm = self.watermark
        for i, (s, t) in enumerate(zip(slots.tolist(), ts.tolist())):
            if wm is not None and t < wm - lateness:
                late.append(i)
                continue
            if wm is None or t > wm:
                wm = t
            b = t // hop
            ring_of_key = self.buckets[s]
            cell = ring_of_key.get(b % ring)
            if cell is None or cell[0] != b:
                cell = [b, 0] + [[0, 0.0, math.inf, -math.inf] for _ in cols]
                ring_of_key[b % ring] = cell
            cell[1] += 1
            for j, c in enumerate(cols):
                v = c[i]
                if v == v:
                    st = cell[2 + j]
                    st[0] += 1
                    st[1] += v
                    if v < st[2]:
                        st[2] = v
                    if v > st[3]:
                        st[3] = v
        self.watermark = wm
        mask = np.zeros(len(ts), dtype=bool)
        mask[late] = True
        return mask

    def value_one(self, s: int, t: int) -> dict:
        hop, nb = self.spec.hop, self.spec.buckets_per_window
        hi = t // hop
        ring_of_key = self.buckets[s]
        total, parts = 0, [[0, 0.0, math.inf, -math.inf] for _ in self.columns]
        for b in range(hi - nb, hi):
            cell = ring_of_key.get(b % self.ring)
            if cell is None or cell[0] != b:
                continue
            total += cell[1]
            for j, st in enumerate(cell[2:]):
                p = parts[j]
                p[0] += st[0]
                p[1] += st[1]
                p[2] = min(p[2], st[2])
                p[3] = max(p[3], st[3])
        out = {}
        for a in self.aggs:
            if a.column is None:
                out[a.name] = total
                continue
            n, sm, lo, hi_ = parts[self.columns.index(a.column)]
            out[a.name] = {"count": n, "sum": sm if n else NAN, "mean": sm / n if n else NAN,
                           "min": lo if n else NAN, "max": hi_ if n else NAN}[a.kind]
        return out


__all__ = ["Agg", "RefView", "IncrementalRefView", "aggregate", "align", "hll_estimate",
           "window_bounds"]
