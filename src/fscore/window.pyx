"""Streaming window aggregation kernels: `WindowView`.

One view = one window shape + several aggregations sharing one ring of
per-hop partial aggregates per key. Keys are dense slot ids 0..n_slots-1 given
by the caller (the online table maps entity keys to slots). The rules are in
docs/semantics.md; `fscore.window_ref.RefView` is their executable twin.

A WindowView is single-writer and not thread-safe: update/value_as_of share
scratch buffers (the engine is the single writer; readers read copies).
"""
import json
import struct

import numpy as np

from libc.stdlib cimport malloc, calloc, free

from fscore.errors import SchemaError, WindowSpecError, WindowStateError
from fscore.window_spec import (
    Agg, WindowSpec, check_view_params, normalise_aggs, spec_from_dict,
    continuous, duration, lifetime, session, sliding, tumbling,
)

include "window_cell.pxi"

cdef enum:
    K_BUCKETED = 0      # tumbling and sliding: closed hop buckets only
    K_CONTINUOUS = 1    # closed buckets + the partial head bucket up to t
    K_LIFETIME = 2
    K_SESSION = 3

cdef dict _OUT_KIND = {
    "count": O_COUNT, "sum": O_SUM, "mean": O_MEAN, "min": O_MIN, "max": O_MAX,
    "first": O_FIRST, "last": O_LAST, "var_samp": O_VAR_SAMP, "var_pop": O_VAR_POP,
    "stddev_samp": O_STD_SAMP, "stddev_pop": O_STD_POP,
    "approx_count_distinct": O_HLL, "last_k": O_LAST_K,
}
# Partial fields each aggregation needs on its column (`n` always).
cdef dict _NEEDS = {
    "count": (), "sum": ("sum",), "mean": ("sum",), "min": ("vmin",), "max": ("vmax",),
    "first": ("first_ts", "first_val"), "last": ("last_ts", "last_val"),
    "var_samp": ("wmean", "m2"), "var_pop": ("wmean", "m2"),
    "stddev_samp": ("wmean", "m2"), "stddev_pop": ("wmean", "m2"),
    "approx_count_distinct": ("hll",), "last_k": ("lastk",),
}
_FIELDS = ("n", "sum", "wmean", "m2", "vmin", "vmax", "first_ts", "first_val",
           "last_ts", "last_val")
_MAGIC = b"FSWV"
_FORMAT_VERSION = 2
EMPTY = INT64_MIN


cdef inline bint include_partial(Word* acc, const Word* c, int64_t b, int64_t t,
                                 const Layout* L) noexcept nogil:
    # A cell that may hold events on both sides of t: include it when all its
    # events are before t, skip it when none are; otherwise it cannot be split
    # (returns False: not exact).
    if c[W_BUCKET].i != b or c[W_COUNT].i == 0:
        return True
    if c[W_LAST_TS].i < t:
        cell_merge(acc, c, L)
        return True
    return c[W_FIRST_TS].i >= t


cdef class WindowView:
    """Window aggregation state for `n_slots` keys; see window.pyi."""

    def __cinit__(self, *args, **kwargs):
        self.layout.cols = NULL
        self.outs = NULL

    def __dealloc__(self):
        free(self.layout.cols)
        free(self.outs)

    def __init__(self, spec, aggs, Py_ssize_t n_slots=0, allowed_lateness=0,
                 int hll_p=8, int max_sessions=4):
        if not isinstance(spec, WindowSpec):
            raise WindowSpecError(f"spec must be a WindowSpec (tumbling(...), sliding(...), ...), got {spec!r}")
        lateness = duration(allowed_lateness)
        check_view_params(lateness, hll_p, max_sessions)
        self.spec = spec
        self.aggs = normalise_aggs(aggs)
        self.allowed_lateness = lateness
        self.hll_p = hll_p
        self.max_sessions = max_sessions
        self.kind = {"tumbling": K_BUCKETED, "sliding": K_BUCKETED, "continuous": K_CONTINUOUS,
                     "lifetime": K_LIFETIME, "session": K_SESSION}[spec.kind]
        self.hop = spec.hop if spec.hop else 1
        self.nbuckets = spec.buckets_per_window
        self.gap = spec.gap
        self.ring_len = spec.ring_len(lateness, max_sessions)
        self.watermark = EMPTY
        self.late_count = 0
        self._build_layout()
        self.n_slots = 0
        self.cells = np.empty((0, self.layout.width), dtype=np.int64)
        self.evicted_last_ts = np.empty(0, dtype=np.int64)
        self.nsess = np.empty(0, dtype=np.int64)
        self.grow(n_slots)

    cdef _build_layout(self):
        cols = tuple(dict.fromkeys(a.column for a in self.aggs if a.column is not None))
        self.columns = cols
        needs = {c: {"n"} for c in cols}
        lastk = {c: 0 for c in cols}
        for a in self.aggs:
            if a.column is not None:
                needs[a.column].update(_NEEDS[a.kind])
                if a.kind == "last_k":
                    lastk[a.column] = max(lastk[a.column], a.k)
        ncols = len(cols)
        self.layout.ncols = ncols
        self.layout.hll_p = self.hll_p
        self.layout.cols = <ColLayout*>calloc(max(ncols, 1), sizeof(ColLayout))
        if self.layout.cols == NULL:
            raise MemoryError()
        cdef Py_ssize_t off = W_COMMON, j
        cdef ColLayout* cl
        hll_cols = []
        for j, c in enumerate(cols):
            cl = &self.layout.cols[j]
            offs = {}
            for f in _FIELDS:
                if f in needs[c]:
                    offs[f] = off
                    off += 1
                else:
                    offs[f] = -1
            cl.n, cl.sum, cl.wmean, cl.m2 = offs["n"], offs["sum"], offs["wmean"], offs["m2"]
            cl.vmin, cl.vmax = offs["vmin"], offs["vmax"]
            cl.first_ts, cl.first_val = offs["first_ts"], offs["first_val"]
            cl.last_ts, cl.last_val = offs["last_ts"], offs["last_val"]
            cl.hll = cl.hll_row = cl.lastk = -1
            cl.lastk_k = 0
            if "hll" in needs[c]:
                cl.hll = off
                cl.hll_row = len(hll_cols)
                hll_cols.append(j)
                off += ((1 << self.hll_p) + 7) // 8
            if "lastk" in needs[c]:
                cl.lastk = off
                cl.lastk_k = lastk[c]
                off += 1 + 2 * lastk[c]
        self.layout.width = off
        self.hll_cols = hll_cols

        self.nout = len(self.aggs)
        self.outs = <OutSpec*>calloc(self.nout, sizeof(OutSpec))
        if self.outs == NULL:
            raise MemoryError()
        meta = []
        nf = ni = 0
        for j, a in enumerate(self.aggs):
            is_int = a.kind in ("count", "approx_count_distinct")
            self.outs[j].kind = O_COUNT_STAR if a.column is None else _OUT_KIND[a.kind]
            self.outs[j].col = -1 if a.column is None else cols.index(a.column)
            self.outs[j].k = a.k
            self.outs[j].row = ni if is_int else nf
            meta.append((a.name, a.kind, ni if is_int else nf, a.k, is_int))
            if is_int:
                ni += 1
            else:
                nf += a.k if a.kind == "last_k" else 1
        self.n_float_out, self.n_int_out, self.out_meta = nf, ni, meta
        self.template = np.empty(self.layout.width, dtype=np.int64)
        cdef int64_t[::1] tv = self.template
        cell_reset(<Word*>&tv[0], &self.layout)
        self.scratch = np.empty((2, self.layout.width), dtype=np.int64)

    # ---- sizing, eviction ---------------------------------------------------

    @property
    def width(self):
        """Words (8 bytes) per cell."""
        return self.layout.width

    @property
    def bytes_per_slot(self):
        return self.ring_len * self.layout.width * 8

    def grow(self, Py_ssize_t n_slots):
        """Make room for slots up to n_slots - 1 (never shrinks); new slots are empty."""
        if n_slots < 0:
            raise ValueError(f"n_slots must be >= 0, got {n_slots}")
        if n_slots <= self.n_slots:
            return
        old = self.n_slots
        cells = np.empty((n_slots * self.ring_len, self.layout.width), dtype=np.int64)
        cells[: old * self.ring_len] = self.cells
        cells[old * self.ring_len:] = self.template
        self.cells = cells
        self.evicted_last_ts = np.concatenate(
            [self.evicted_last_ts, np.full(n_slots - old, EMPTY, np.int64)])
        self.nsess = np.concatenate([self.nsess, np.zeros(n_slots - old, np.int64)])
        self.n_slots = n_slots

    def reset_slots(self, slots):
        """Forget everything about these keys (eviction, or slot reuse)."""
        s = self._check_slots(slots)
        self.cells.reshape(self.n_slots, self.ring_len, self.layout.width)[s] = self.template
        self.evicted_last_ts[s] = EMPTY
        self.nsess[s] = 0

    def idle_slots(self, int64_t now, ttl):
        """Slots whose newest applied event is older than now - ttl (event time)."""
        klt = self.key_last_ts()
        return np.flatnonzero((klt != EMPTY) & (klt < now - duration(ttl))).astype(np.int64)

    def key_last_ts(self):
        """Newest applied event time per slot (EMPTY if none), derived from the
        cells: the ingest loop then touches one cache line per event, and TTL
        sweeps, which are rare, pay the scan instead."""
        last = self.cells.reshape(self.n_slots, self.ring_len, self.layout.width)[:, :, W_LAST_TS]
        if self.kind == K_SESSION:
            live = np.arange(self.ring_len)[None, :] < self.nsess[:, None]
            last = np.where(live, last, EMPTY)
        return last.max(axis=1, initial=EMPTY)

    def _check_slots(self, slots):
        s = np.ascontiguousarray(slots, dtype=np.int64)
        if s.ndim != 1:
            raise SchemaError(f"slots must be 1-d, got shape {s.shape}")
        if len(s) and (s.min() < 0 or s.max() >= self.n_slots):
            raise IndexError(f"slot out of range 0..{self.n_slots - 1}: call grow() first")
        return s

    # ---- ingest -------------------------------------------------------------

    def update(self, slots, ts, columns=None):
        """Apply a batch in arrival order; returns a bool mask of late events
        (not applied; route them to the offline log for healing)."""
        s = self._check_slots(slots)
        t = np.ascontiguousarray(ts, dtype=np.int64)
        cdef Py_ssize_t n = len(t), j
        if t.ndim != 1 or len(s) != n:
            raise SchemaError(f"slots and ts must be 1-d of equal length, got {len(s)} and {t.shape}")
        x, h = self._columns_matrix(columns or {}, n)
        late = np.zeros(n, dtype=np.uint8)
        if n:
            self._apply(s, t, x, h, late)
        return late.view(np.bool_)

    def _columns_matrix(self, columns, Py_ssize_t n):
        missing = [c for c in self.columns if c not in columns]
        if missing:
            raise SchemaError(f"update is missing columns {missing} (the view aggregates them)")
        raw = [np.asarray(columns[c]) for c in self.columns]
        for c, a in zip(self.columns, raw):
            if a.shape != (n,):
                raise SchemaError(f"column {c!r} has shape {a.shape}, expected ({n},)")
            if a.dtype.kind not in "fiub":
                raise SchemaError(f"column {c!r} must be numeric, got dtype {a.dtype}")
        if len(raw) == 1 and raw[0].dtype == np.float64 and raw[0].flags.c_contiguous:
            x = raw[0].reshape(1, n)    # PERF: the common one-column case is zero-copy
        elif raw:
            x = np.empty((len(raw), n), dtype=np.float64)
            for j, a in enumerate(raw):
                x[j] = a
        else:
            x = np.zeros((1, n), dtype=np.float64)
        h = np.empty((max(len(self.hll_cols), 1), n), dtype=np.uint64)
        for r, j in enumerate(self.hll_cols):
            h[r] = hash_array(raw[j])
        return x, h

    cdef int _apply(self, const int64_t[::1] slots, const int64_t[::1] ts, const double[:, ::1] x,
                    const uint64_t[:, ::1] h, uint8_t[::1] late) except -1:
        cdef Py_ssize_t n = ts.shape[0], i, R = self.ring_len, W = self.layout.width
        cdef Py_ssize_t xs = x.shape[1], hs = h.shape[1]
        cdef int64_t[:, ::1] cm = self.cells
        cdef int64_t[::1] ev = self.evicted_last_ts, ns = self.nsess
        cdef int64_t[:, ::1] sc = self.scratch
        cdef int64_t[::1] tv = self.template
        cdef Word* base = <Word*>&cm[0, 0]
        cdef Word* tmpl = <Word*>&tv[0]
        cdef Word* span = <Word*>&sc[1, 0]
        cdef Word* c
        cdef const Layout* L = &self.layout
        cdef int kind = self.kind
        cdef int64_t wm = self.watermark, lateness = self.allowed_lateness, hop = self.hop
        cdef int64_t gap = self.gap, t, b, nlate = 0, s
        # PERF: keys are random, so each event's cell is a cache miss. Pass 1
        # computes every event's bucket and cell row (independent divisions that
        # pipeline); pass 2 prefetches the row PREFETCH_AHEAD events ahead.
        # bench_window, 100k keys, 2M events: 8.9M ev/s without the prefetch,
        # 15M ev/s with it (one core, same machine and run).
        buf = np.empty((2, n), dtype=np.int64)
        cdef int64_t[:, ::1] rb = buf
        cdef int64_t* rows = &rb[0, 0]
        cdef int64_t* bks = &rb[1, 0]
        with nogil:
            if kind == K_SESSION:
                for i in range(n):
                    t = ts[i]
                    s = slots[i]
                    if wm != INT64_MIN and t < wm - lateness:
                        late[i] = 1
                        nlate += 1
                        continue
                    memcpy(span, tmpl, W * sizeof(Word))
                    cell_add(span, L, t, &x[0, i], xs, &h[0, i], hs)
                    if session_insert(base + s * R * W, R, &ns[s], &ev[s], span, gap, L):
                        late[i] = 1
                        nlate += 1
                    elif t > wm:
                        wm = t
            else:
                for i in range(n):
                    b = 0 if kind == K_LIFETIME else floor_div(ts[i], hop)
                    bks[i] = b
                    rows[i] = slots[i] * R + floor_mod(b, R)
                for i in range(n):
                    if i + PREFETCH_AHEAD < n:
                        prefetch_w(base + rows[i + PREFETCH_AHEAD] * W)
                    t = ts[i]
                    if wm != INT64_MIN and t < wm - lateness:
                        late[i] = 1
                        nlate += 1
                        continue
                    b = bks[i]
                    c = base + rows[i] * W
                    if c[W_BUCKET].i != b:
                        if c[W_BUCKET].i > b:
                            # Holds a newer bucket: cannot happen while the ring
                            # is sized by ring_len (semantics.md §State); kept so a
                            # mis-sized restore degrades to "late", not to corruption.
                            late[i] = 1
                            nlate += 1
                            continue
                        memcpy(c, tmpl, W * sizeof(Word))
                        c[W_BUCKET].i = b
                    cell_add(c, L, t, &x[0, i], xs, &h[0, i], hs)
                    if t > wm:
                        wm = t
        self.watermark = wm
        self.late_count += nlate
        return 0

    # ---- query --------------------------------------------------------------

    def value_as_of(self, slots, t):
        """Values as of t (scalar or per-row) for each slot.

        Returns (values, exact): values maps each aggregation name to an array
        (int64 for count/approx_count_distinct, float64 with NaN for null,
        (n, k) float64 for last_k); exact[i] is False where the retained state
        cannot answer exactly (t before the retained horizon, or events at or
        after t sharing t's bucket/session); those values use the retained
        cells only and must not be served as exact.
        """
        s = self._check_slots(slots)
        cdef Py_ssize_t nq = len(s)
        tq = np.ascontiguousarray(np.broadcast_to(np.asarray(t, dtype=np.int64), (nq,)))
        of = np.empty((max(self.n_float_out, 1), nq), dtype=np.float64)
        oi = np.empty((max(self.n_int_out, 1), nq), dtype=np.int64)
        exact = np.ones(nq, dtype=np.uint8)
        if nq:
            self._query(s, tq, of, oi, exact)
        out = {}
        for name, kind, row, k, is_int in self.out_meta:
            if is_int:
                out[name] = oi[row]
            elif kind == "last_k":
                out[name] = np.ascontiguousarray(of[row:row + k].T)
            else:
                out[name] = of[row]
        return out, exact.view(np.bool_)

    cdef int _query(self, const int64_t[::1] slots, const int64_t[::1] tq, double[:, ::1] of,
                    int64_t[:, ::1] oi, uint8_t[::1] exact) except -1:
        cdef Py_ssize_t nq = tq.shape[0], q, R = self.ring_len, W = self.layout.width, j
        cdef int64_t[:, ::1] cm = self.cells
        cdef int64_t[::1] ev = self.evicted_last_ts, ns = self.nsess
        cdef int64_t[:, ::1] sc = self.scratch
        cdef int64_t[::1] tv = self.template
        cdef Word* base = <Word*>&cm[0, 0]
        cdef Word* tmpl = <Word*>&tv[0]
        cdef Word* acc = <Word*>&sc[0, 0]
        cdef Word* key
        cdef Word* c
        cdef const Layout* L = &self.layout
        cdef int kind = self.kind
        cdef int64_t hop = self.hop, nb = self.nbuckets, t, b, hi, s
        with nogil:
            for q in range(nq):
                t = tq[q]
                s = slots[q]
                key = base + s * R * W
                memcpy(acc, tmpl, W * sizeof(Word))
                if kind == K_SESSION:
                    # The most recent session that started before t.
                    j = ns[s] - 1
                    while j >= 0 and key[j * W + W_FIRST_TS].i >= t:
                        j -= 1
                    if j >= 0:
                        cell_merge(acc, key + j * W, L)
                        exact[q] = key[j * W + W_LAST_TS].i < t
                    else:
                        exact[q] = ev[s] == INT64_MIN
                elif kind == K_LIFETIME:
                    exact[q] = include_partial(acc, key, 0, t, L)
                else:
                    hi = floor_div(t, hop)
                    for b in range(hi - nb, hi):
                        c = key + floor_mod(b, R) * W
                        if c[W_BUCKET].i == b:
                            cell_merge(acc, c, L)
                        elif c[W_BUCKET].i > b:
                            exact[q] = 0    # overwritten: t is behind the retained horizon
                    if kind == K_CONTINUOUS and t != hi * hop:
                        c = key + floor_mod(hi, R) * W
                        if c[W_BUCKET].i > hi or not include_partial(acc, c, hi, t, L):
                            exact[q] = 0
                cell_finalize(acc, L, self.outs, self.nout, &of[0, 0], &oi[0, 0], nq, q)
        return 0

    # ---- state: serialise, restore, merge -------------------------------------

    def meta(self):
        """The parameters a restored view must share with this one."""
        return {"spec": self.spec.to_dict(), "aggs": [a.to_dict() for a in self.aggs],
                "allowed_lateness": self.allowed_lateness, "hll_p": self.hll_p,
                "max_sessions": self.max_sessions, "width": self.layout.width,
                "ring_len": self.ring_len}

    def to_bytes(self):
        """Whole-view snapshot: b'FSWV' u32 version u32 header-len, JSON header,
        then cells, evicted_last_ts, nsess as little-endian int64."""
        header = json.dumps(self.meta() | {"n_slots": self.n_slots, "watermark": self.watermark,
                                           "late_count": self.late_count}).encode()
        parts = [_MAGIC, struct.pack("<II", _FORMAT_VERSION, len(header)), header]
        for a in (self.cells, self.evicted_last_ts, self.nsess):
            parts.append(a.astype("<i8", copy=False).tobytes())
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data):
        """Rebuild a view from `to_bytes()` output."""
        mv = memoryview(data)
        if bytes(mv[:4]) != _MAGIC or len(mv) < 12:
            raise WindowStateError("not a window view snapshot (bad magic)")
        version, hlen = struct.unpack("<II", mv[4:12])
        if version != _FORMAT_VERSION:
            raise WindowStateError(f"window snapshot version {version}, expected {_FORMAT_VERSION}")
        meta = json.loads(bytes(mv[12:12 + hlen]))
        cdef WindowView view = cls(spec_from_dict(meta["spec"]), [Agg(**a) for a in meta["aggs"]], meta["n_slots"],
                   meta["allowed_lateness"], meta["hll_p"], meta["max_sessions"])
        view._check_meta(meta)
        n, off = meta["n_slots"], 12 + hlen
        arrays = []
        for count in (n * view.ring_len * view.width, n, n):
            end = off + 8 * count
            if end > len(mv):
                raise WindowStateError("window snapshot is truncated")
            arrays.append(np.frombuffer(mv[off:end], dtype="<i8").astype(np.int64))
            off = end
        if off != len(mv):
            raise WindowStateError(f"window snapshot has {len(mv) - off} trailing bytes")
        view.cells = arrays[0].reshape(n * view.ring_len, view.width)
        view.evicted_last_ts, view.nsess = arrays[1], arrays[2]
        view.watermark, view.late_count = meta["watermark"], meta["late_count"]
        return view

    def _check_meta(self, meta):
        mine = self.meta()
        diff = [k for k in mine if meta.get(k) != mine[k]]
        if diff:
            raise WindowStateError(f"window state does not match this view in {diff}")

    def export_slots(self, slots):
        """Copy of these keys' state (for the online table / WAL / migration)."""
        s = self._check_slots(slots)
        return {"cells": self.cells.reshape(self.n_slots, self.ring_len, self.layout.width)[s],
                "evicted_last_ts": self.evicted_last_ts[s],
                "nsess": self.nsess[s]}

    def import_slots(self, slots, state):
        """Overwrite these keys' state with `export_slots` output of an equal view."""
        s = self._check_slots(slots)
        cells = np.asarray(state["cells"], dtype=np.int64)
        if cells.shape != (len(s), self.ring_len, self.layout.width):
            raise WindowStateError(
                f"cells shape {cells.shape} != {(len(s), self.ring_len, self.layout.width)}")
        self.cells.reshape(self.n_slots, self.ring_len, self.layout.width)[s] = cells
        self.evicted_last_ts[s] = np.asarray(state["evicted_last_ts"], dtype=np.int64)
        self.nsess[s] = np.asarray(state["nsess"], dtype=np.int64)
        klt = self.key_last_ts()[s]
        if len(klt) and klt.max() > self.watermark:
            self.watermark = int(klt.max())

    def merge_from(self, WindowView other):
        """Fold another view's state (same definition, e.g. a shard or a
        backfill) into this one, slot by slot. Returns how many of its cells
        could not be held (older than this ring / dropped sessions)."""
        self._check_meta(other.meta())
        if other.n_slots > self.n_slots:
            self.grow(other.n_slots)
        cdef Py_ssize_t R = self.ring_len, W = self.layout.width, s, r
        cdef int64_t[:, ::1] cm = self.cells, om = other.cells
        cdef int64_t[::1] ev = self.evicted_last_ts, ns = self.nsess, ons = other.nsess
        cdef Word* c
        cdef const Word* o
        cdef int64_t dropped = 0
        cdef bint sessions = self.kind == K_SESSION
        if other.n_slots == 0:
            return 0
        with nogil:
            for s in range(other.n_slots):
                if sessions:
                    for r in range(ons[s]):
                        o = <const Word*>&om[s * R + r, 0]
                        dropped += session_insert(<Word*>&cm[s * R, 0], R, &ns[s], &ev[s],
                                                  o, self.gap, &self.layout)
                    continue
                for r in range(R):
                    o = <const Word*>&om[s * R + r, 0]
                    c = <Word*>&cm[s * R + r, 0]
                    if o[W_BUCKET].i == INT64_MIN:
                        continue
                    if c[W_BUCKET].i == o[W_BUCKET].i:
                        cell_merge(c, o, &self.layout)
                    elif c[W_BUCKET].i < o[W_BUCKET].i:
                        memcpy(c, o, W * sizeof(Word))
                    else:
                        dropped += 1
        n = other.n_slots
        if sessions:
            np.maximum(self.evicted_last_ts[:n], other.evicted_last_ts, out=self.evicted_last_ts[:n])
        self.watermark = max(self.watermark, other.watermark)
        return dropped


def hash_array(values):
    """64-bit hashes that approx_count_distinct feeds to HyperLogLog
    (int64 values directly; floats via their integral value or their bits)."""
    a = np.asarray(values)
    cdef Py_ssize_t i, n = a.shape[0]
    out = np.empty(n, dtype=np.uint64)
    cdef uint64_t[::1] o = out
    cdef const int64_t[::1] iv
    cdef const double[::1] dv
    if a.dtype.kind in "iub":
        iv = np.ascontiguousarray(a, dtype=np.int64)
        with nogil:
            for i in range(n):
                o[i] = hash_int64(iv[i])
    else:
        dv = np.ascontiguousarray(a, dtype=np.float64)
        with nogil:
            for i in range(n):
                o[i] = hash_double(dv[i])
    return out


__all__ = ["WindowView", "Agg", "WindowSpec", "tumbling", "sliding", "continuous", "session",
           "lifetime", "hash_array", "EMPTY"]
