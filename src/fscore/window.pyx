"""Streaming window aggregation kernels: `WindowView`.

One view = one window shape + several aggregations sharing per-key partial
aggregates (cells: one per hop bucket, session, or the lifetime). Keys are
dense slot ids 0..n_slots-1 given by the caller (the online table maps entity
keys to slots). The rules are in docs/semantics.md; `fscore.window_ref.RefView`
is their executable twin.

State is sparse (window.pxd): a key holds only the cells it has events in, in
a run of one shared pool, so memory follows the data — a key with one event
costs one cell per window. A bucketed key whose run reaches the ring the
window needs (ring_len cells) turns into that ring: cell = bucket mod
ring_len, as a dense layout would hold it (len = RING), so a busy key updates
in O(1) and never holds more.

A WindowView is single-writer and not thread-safe: update/value_as_of share
scratch buffers (the engine is the single writer; readers read copies).
"""
import json
import mmap
import struct

import numpy as np

from libc.stdlib cimport malloc, calloc, free

from fscore.errors import SchemaError, WindowSpecError, WindowStateError
from fscore.window_spec import (
    Agg, WindowSpec, check_agg_specs, check_view_params, normalise_aggs, spec_from_dict,
    continuous, duration, lifetime, session, sliding, tumbling,
)

include "window_cell.pxi"

from libc.stdint cimport INT32_MIN, INT32_MAX

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
_FORMAT_VERSION = 8  # 8: last_k buffers sized by use (window.pxd, Layout.lastk_spill);
                     # 7 (no `n` of a column only last_k and approx_count_distinct read),
                     # 6 (no count words: HLL lists, last_k; no `n` of a column only
                     # approx_count_distinct reads), 5 (packed times: window.pxd), 4 (sparse HLL
                     # registers), 3 (dense registers) and 2 (dense rings) are still read
_V5_HLL_WORDS = 5    # the HLL area before version 6: a count word, then 8 entries
_PACK_MAX_HOP = 1 << 32     # hops (us) up to this pack a cell's first/last times into one word
EMPTY = INT64_MIN
_NO_PARTS = np.zeros(0, dtype=np.int64)
_RESERVE_FROM = 1 << 22     # bytes: a pool this big moves into a virtual reservation
_RESERVE_BYTES = 1 << 36    # address space per reserved pool (64 GiB; only touched pages cost memory)
_MAX_CELLS = (1 << 31) - 1  # a key's run is an int32 cell index
# Per-key arrays: run_at (int32), run_len (int32), run_cls (uint8: its size
# class + 1, 0 for none), floor (int32 while the view's buckets fit, else
# int64: fl_get). (The run's capacity as an int32 was 3 bytes more a key a
# view: 21 B a key of the starter repo.)
_SLOT_BYTES = 17       # (13 with an int32 floor)
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)   # Linux's value; Python < 3.13 does not name it


cdef enum:
    RING = -1   # run_len of a key held as a full ring (bucketed windows)


cdef inline bint include_partial(Word* acc, const Word* c, int64_t b, int64_t t,
                                 const Layout* L) noexcept nogil:
    # A cell that may hold events on both sides of t: include it when all its
    # events are before t, skip it when none are; otherwise it cannot be split
    # (returns False: not exact).
    if c[W_BUCKET].i != b or c[W_COUNT].i == 0:
        return True
    if cell_last_ts(c, L) < t:
        cell_merge(acc, c, L)
        return True
    return cell_first_ts(c, L) >= t



cdef _set_col(ColLayout* cl, dict offs):
    # A column's field offsets from WindowView._column_offsets (-1: absent)
    cl.n, cl.sum, cl.wmean, cl.m2 = offs["n"], offs["sum"], offs["wmean"], offs["m2"]
    cl.vmin, cl.vmax = offs["vmin"], offs["vmax"]
    cl.first_ts, cl.first_val = offs["first_ts"], offs["first_val"]
    cl.last_ts, cl.last_val = offs["last_ts"], offs["last_val"]
    cl.hll, cl.lastk, cl.lastk_k = offs["hll"], offs["lastk"], offs["lastk_k"]


cdef inline bint ring_cell_held(const int64_t* c, int64_t horizon) noexcept nogil:
    # A ring's cell that the key holds (snapshots write it): it has events and
    # is in the key's last R buckets (`horizon`: WindowView._ring_horizon).
    return c[W_BUCKET] != INT64_MIN and c[W_COUNT] != 0 and c[W_BUCKET] >= horizon


def _pack_max_hop(int64_t hop):
    """Tests: the longest hop whose views pack their cells' times (0: none),
    for views made from now on; returns the previous one."""
    global _PACK_MAX_HOP
    prev, _PACK_MAX_HOP = _PACK_MAX_HOP, hop
    return prev


_FLOOR32 = True


def _floor32(bint on):
    """Tests: whether views made from now on start with int32 floors (else
    int64, as a view widened); returns the previous setting."""
    global _FLOOR32
    prev, _FLOOR32 = _FLOOR32, on
    return prev


def _hll_reserve_from(int64_t nbytes):
    """Tests: the size past which a view's dense HLL blocks move into a
    reservation (HllPool in window.pxd); returns the previous one."""
    global hll_reserve_from
    prev, hll_reserve_from = hll_reserve_from, nbytes
    return prev


# A key's floor is an int32 in views of hop buckets and lifetime views while
# every bucket they were given fits one (event times of years 1..9999 with
# hops of ~2 minutes or more always do): 4 bytes a key a window less (~23 B a
# key of the starter repo's 1M Zipf keys). A bucket that does not fit widens
# the view's floors to int64 for good (_widen_floors) before it is applied.
# Sessions' floors are event times: int64.
_EMPTY32 = INT32_MIN


cdef inline int64_t fl_get(WindowView v, Py_ssize_t s) noexcept nogil:
    cdef int32_t f
    if v.floor32:
        f = v.floor32_p[s]
        return INT64_MIN if f == INT32_MIN else <int64_t>f
    return v.floor_p[s]


cdef inline void fl_set(WindowView v, Py_ssize_t s, int64_t b) noexcept nogil:
    # (floor32: b fits, or is EMPTY; the callers widened the floors before)
    if v.floor32:
        v.floor32_p[s] = INT32_MIN if b == INT64_MIN else <int32_t>b
    else:
        v.floor_p[s] = b


cdef inline void fl_raise(WindowView v, Py_ssize_t s, int64_t b) noexcept nogil:
    # the key's floor raised to b (a bucket it dropped)
    if b > fl_get(v, s):
        fl_set(v, s, b)


def _marked_slots(uint8_t[::1] marks, Py_ssize_t n, Py_ssize_t n_total):
    """The slots [0, n) marked in `marks` (a byte each) and every slot of
    [n, n_total) (added since the marking began), as int64. Eight bytes a
    step: a checkpoint marks few of a million slots, and np.flatnonzero
    visits each byte once any is set (~2 ms at 1M slots, under the lock)."""
    cdef Py_ssize_t i, j, k = 0, words = n // 8
    cdef uint64_t w
    cdef const uint8_t* p = &marks[0] if marks.shape[0] else NULL
    with nogil:
        for i in range(words):
            memcpy(&w, p + 8 * i, 8)
            if w:
                for j in range(8 * i, 8 * i + 8):
                    k += p[j] != 0
        for j in range(8 * words, n):
            k += p[j] != 0
    out = np.empty(k + max(n_total - n, 0), dtype=np.int64)
    cdef int64_t[::1] o = out
    k = 0
    with nogil:
        for i in range(words):
            memcpy(&w, p + 8 * i, 8)
            if w:
                for j in range(8 * i, 8 * i + 8):
                    if p[j]:
                        o[k] = j
                        k += 1
        for j in range(8 * words, n):
            if p[j]:
                o[k] = j
                k += 1
        for j in range(n, n_total):
            o[k] = j
            k += 1
    return out


def room_of(a, buf):
    """Elements the 1-d array `a` can grow to without a copy: `buf`'s length
    when `a` is a view of it (grow_in_room made both), else its own."""
    return buf.shape[0] if buf is not None and a.base is buf and buf.dtype == a.dtype else a.shape[0]


def grow_in_room(a, buf, Py_ssize_t n, fill):
    """`a` grown to `n` elements, the new ones `fill`: a view of `buf` when
    it has the room (only the new elements written; `a` stays valid, a view
    of the same memory), else of a new buffer with room for twice `a`'s
    length (one copy). Returns (the grown array, its buffer). The per-key
    arrays of WindowView.grow and ViewRuntime.last_ts: a copy of each at
    every growth by a quarter held the engine lock ~5 ms a window at 1M keys."""
    n0 = a.shape[0]
    if room_of(a, buf) < n:
        buf = np.empty(max(n, 2 * n0), a.dtype)
        buf[:n0] = a
    grown = buf[:n]
    grown[n0:] = fill
    return grown, buf


def _floors64(floor):
    """Floors (int32 or int64) as a new int64 array, EMPTY kept EMPTY."""
    f = np.asarray(floor)
    out = f.astype(np.int64)
    if f.dtype == np.int32:
        out[f == _EMPTY32] = EMPTY
    return out


cdef class WindowView:
    """Window aggregation state for `n_slots` keys; see window.pyi."""

    def __cinit__(self, *args, **kwargs):
        self.layout.cols = NULL
        self.outs = NULL
        self.groups = NULL
        self.g_cols = NULL
        self.g_outs = NULL
        self.n_groups = 0
        self.P = NULL
        self.hp.B = NULL
        self.hp.home = HLL_MALLOC
        self.hp.cap = self.hp.top = self.hp.used = 0
        self.hp.free_head = -1
        self.hp.failed = 0
        self.hp.m = 0
        self.tracking = 0
        self.dirty_p = NULL

    def __dealloc__(self):
        free(self.layout.cols)
        free(self.outs)
        free(self.groups)
        free(self.g_cols)
        free(self.g_outs)
        hll_pool_release(&self.hp)

    def __init__(self, spec, aggs, Py_ssize_t n_slots=0, allowed_lateness=0,
                 int hll_p=8, int max_sessions=4, agg_specs=None):
        if not isinstance(spec, WindowSpec):
            raise WindowSpecError(f"spec must be a WindowSpec (tumbling(...), sliding(...), ...), got {spec!r}")
        lateness = duration(allowed_lateness)
        check_view_params(lateness, hll_p, max_sessions)
        self.spec = spec
        self.aggs = normalise_aggs(aggs)
        self.agg_specs = check_agg_specs(spec, self.aggs, agg_specs)
        self.allowed_lateness = lateness
        self.hll_p = hll_p
        self.max_sessions = max_sessions
        self.kind = {"tumbling": K_BUCKETED, "sliding": K_BUCKETED, "continuous": K_CONTINUOUS,
                     "lifetime": K_LIFETIME, "session": K_SESSION}[spec.kind]
        self.hop = spec.hop if spec.hop else 1
        self.gap = spec.gap
        self.ring_len = spec.ring_len(lateness, max_sessions)
        self.watermark = EMPTY
        self.part_watermarks = {}
        self.late_count = 0
        self._build_layout()
        self._init_classes()
        self._set_pool(np.empty((16, self.layout.width), dtype=np.int64), 0)
        self.n_slots = 0
        self._set_slots(np.empty(0, np.int32), np.empty(0, np.int32), np.empty(0, np.uint8),
                        np.empty(0, np.int32 if _FLOOR32 and self.kind != K_SESSION else np.int64))
        self.grow(n_slots)

    def _column_offsets(self, Py_ssize_t hll_words, common=None, bint legacy=False, bint v6=False, spill=None):
        """Per input column, the word offset of each partial field (-1 when
        absent; "hll" hll_words wide, "lastk" 2k, or 3 where `spill`: the
        view's, Layout.lastk_spill, unless given; False: versions up to 7),
        and the cell width.
        hll_words = HLL_WORDS is this layout; `legacy`: the layout of
        snapshots before version 6 (`n` in every column, a count word before
        "lastk"; hll_words _V5_HLL_WORDS, or (2^p + 7) // 8, the dense
        registers of versions 2 and 3); `v6`: version 6's (`n` in a column
        last_k reads). `common`: the words before the columns (this
        layout's; W_COMMON in snapshots before version 5)."""
        needs = {c: set() for c in self.columns}
        lastk = {c: 0 for c in self.columns}
        for a in self.aggs:
            if a.column is not None:
                needs[a.column].update(_NEEDS[a.kind])
                # (approx_count_distinct's registers and last_k's buffer are their
                # state: a column only they read keeps no non-null count)
                if legacy or a.kind not in ("approx_count_distinct", "last_k") or (v6 and a.kind == "last_k"):
                    needs[a.column].add("n")
                if a.kind == "last_k":
                    lastk[a.column] = max(lastk[a.column], a.k)
        if spill is None:
            spill = self.layout.lastk_spill and not legacy and not v6
        off, out = (W_COMMON_PACKED if self.layout.packed else W_COMMON) if common is None else common, []
        for c in self.columns:
            offs = {"lastk_k": lastk[c]}
            for f in _FIELDS + ("hll", "lastk"):
                offs[f] = off if f in needs[c] else -1
                if f in needs[c]:
                    off += hll_words if f == "hll" else (3 if spill else legacy + 2 * lastk[c]) if f == "lastk" else 1
            out.append(offs)
        return out, off

    cdef _build_layout(self):
        cols = tuple(dict.fromkeys(a.column for a in self.aggs if a.column is not None))
        self.columns = cols
        ncols = len(cols)
        self.layout.ncols = ncols
        # (measured, the starter repo: 8 B a cell of its 1-hour and 5-minute windows,
        # 78 B a key of 100k Zipf keys, ~870 B a key with 100 events each)
        self.layout.packed = (self.kind == K_BUCKETED or self.kind == K_CONTINUOUS) and self.hop <= _PACK_MAX_HOP
        self.layout.hop = self.hop
        self.layout.hll_p = self.hll_p
        self.layout.hp = &self.hp
        self.hp.m = (<int64_t>1) << self.hll_p
        # last_k buffers sized by use (window.pxd): the view's block pool is
        # theirs when no approx_count_distinct needs it
        lastk = {}
        for a in self.aggs:
            if a.kind == "last_k":
                lastk[a.column] = max(lastk.get(a.column, 0), a.k)
        self.layout.lastk_spill = (len(lastk) == 1 and max(lastk.values()) >= 2
                                   and not any(a.kind == "approx_count_distinct" for a in self.aggs))
        if self.layout.lastk_spill:
            self.hp.m = 16 * max(lastk.values())
        self.layout.cols = <ColLayout*>calloc(max(ncols, 1), sizeof(ColLayout))
        if self.layout.cols == NULL:
            raise MemoryError()
        cdef Py_ssize_t j
        cdef ColLayout* cl
        hll_cols = []
        col_offs, off = self._column_offsets(HLL_WORDS)
        for j, offs in enumerate(col_offs):
            cl = &self.layout.cols[j]
            _set_col(cl, offs)
            cl.hll_row = -1
            if cl.hll >= 0:
                cl.hll_row = len(hll_cols)
                hll_cols.append(j)
        self.layout.width = off
        self.layout.has_blocks = len(hll_cols) > 0 or self.layout.lastk_spill
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
        self._build_groups(col_offs)
        self.template = np.empty(self.layout.width, dtype=np.int64)
        cdef int64_t[::1] tv = self.template
        cell_reset(<Word*>&tv[0], &self.layout)
        self.tmpl_p = &tv[0]
        self.scratch = np.empty((2, self.layout.width), dtype=np.int64)

    cdef _build_groups(self, list col_offs):
        # Groups of aggregations (window.pxd Group): one per distinct
        # (continuous, buckets) of their windows, in order of first appearance.
        cdef Py_ssize_t g = 0, o = 0, nc = 0, j, i, ng
        cdef Group* gp
        cdef ColLayout* cl
        specs = self.agg_specs or (self.spec,) * len(self.aggs)
        keyed = {}
        for j, sp in enumerate(specs):
            keyed.setdefault((sp.kind == "continuous", sp.buckets_per_window), []).append(j)
        ng = len(keyed)
        self.groups = <Group*>calloc(ng, sizeof(Group))
        self.g_cols = <ColLayout*>calloc(max(ng * self.layout.ncols, 1), sizeof(ColLayout))
        self.g_outs = <OutSpec*>calloc(self.nout, sizeof(OutSpec))
        if self.groups == NULL or self.g_cols == NULL or self.g_outs == NULL:
            raise MemoryError()
        self.n_groups = ng
        for (cont, nb), members in keyed.items():
            gp = &self.groups[g]
            gp.kind = K_CONTINUOUS if cont else K_BUCKETED
            gp.nb = nb
            gp.L = self.layout
            gp.L.cols = self.g_cols + nc
            gp.outs = self.g_outs + o
            gp.nout = len(members)
            needs = {}
            for j in members:
                a = self.aggs[j]
                if a.column is not None:
                    needs.setdefault(self.columns.index(a.column), {"n"}).update(_NEEDS[a.kind])
            order = sorted(needs)
            for i, j in enumerate(order):
                cl = &gp.L.cols[i]
                _set_col(cl, {f: at if f in needs[j] or f == "lastk_k" else -1 for f, at in col_offs[j].items()})
                cl.hll_row = self.layout.cols[j].hll_row
            gp.L.ncols = len(order)
            gp.L.has_blocks = any("hll" in needs[j] or (gp.L.lastk_spill and "lastk" in needs[j]) for j in order)
            for i, j in enumerate(members):
                gp.outs[i] = self.outs[j]
                if self.outs[j].col >= 0:
                    gp.outs[i].col = order.index(self.outs[j].col)
            o += len(members)
            nc += len(order)
            g += 1

    # ---- the pool of runs -----------------------------------------------------

    def _init_classes(self):
        # Run capacities 1, 2, 3, 4, 6, 8, 12, 16, 24 ... below ring_len, then
        # ring_len. Blocks of the buddy allocator: 2^0 .. 2^top_level cells.
        # (Measured: without coalescing these classes left 2.2x the live
        # cells of keys that grow together on the free lists, and powers of
        # two were kept; with the buddy allocator they cost 1,216 B a key at
        # 1M Zipf keys against 1,250 with powers of two, and the same 16.3 KB
        # at 100 events a key.)
        cdef int64_t c = 1
        cdef int k = 0, lv = 0
        while c < self.ring_len:
            self.class_cap[k] = c
            c = c + 1 if c < 4 else (c + c // 2 if (c & (c - 1)) == 0 else (c // 3) * 4)
            k += 1
        self.class_cap[k] = self.ring_len
        self.n_classes = k + 1
        self.cap_of[0] = 0
        for k in range(self.n_classes):
            self.cap_of[k + 1] = self.class_cap[k]
        while ((<int64_t>1) << lv) < self.ring_len:
            lv += 1
        self.top_level = lv
        for k in range(MAX_CLASSES):
            self.free_head[k] = -1

    cdef uint8_t _snug_cls(self, int64_t ln) noexcept nogil:
        """The run a key of run length `ln` (RING: a ring) is laid out in by
        compaction, as its run_cls: its cells' class, its ring, or none (0)."""
        if ln == RING:
            return <uint8_t>self.n_classes
        return <uint8_t>(self._class_of(ln) + 1) if ln > 0 else 0

    def _caps(self):
        """Capacity of each run_cls value (index 0: no run), as an array."""
        return np.array([self.cap_of[k] for k in range(self.n_classes + 1)], dtype=np.int64)

    cdef int _class_of(self, int64_t cap) noexcept nogil:
        cdef int k = 0
        while k < self.n_classes - 1 and self.class_cap[k] < cap:
            k += 1
        return k

    cdef void _push_block(self, int64_t at, int k) noexcept nogil:
        cdef int64_t W = self.layout.width, h = self.free_head[k]
        self.P[at * W] = h
        self.P[at * W + 1] = -1
        self.P[at * W + 2] = k
        if h >= 0:
            self.P[h * W + 1] = at
        self.free_head[k] = at
        self.fb_p[at >> 3] |= <uint8_t>(1 << (at & 7))

    cdef void _unlink_block(self, int64_t at, int k) noexcept nogil:
        cdef int64_t W = self.layout.width, nxt = self.P[at * W], prv = self.P[at * W + 1]
        if prv >= 0:
            self.P[prv * W] = nxt
        else:
            self.free_head[k] = nxt
        if nxt >= 0:
            self.P[nxt * W + 1] = prv
        self.fb_p[at >> 3] &= <uint8_t>~(1 << (at & 7))

    cdef void _free_block(self, int64_t at, int k) noexcept nogil:
        """Frees the block of 2^k cells at `at` (a multiple of 2^k), merged
        with its buddy while that is a free block of the same size."""
        cdef int64_t b, W = self.layout.width
        while k < self.top_level:
            b = at ^ ((<int64_t>1) << k)
            if b + ((<int64_t>1) << k) > self.pool_top or not ((self.fb_p[b >> 3] >> (b & 7)) & 1) \
                    or self.P[b * W + 2] != k:
                break
            self._unlink_block(b, k)
            if b < at:
                at = b
            k += 1
        self._push_block(at, k)

    cdef void _release_range(self, int64_t at, int64_t n) noexcept nogil:
        """Frees cells [at, at + n) as the biggest aligned blocks they hold."""
        cdef int k
        while n > 0:
            k = 0
            while k < self.top_level and (at & (((<int64_t>1) << (k + 1)) - 1)) == 0 \
                    and ((<int64_t>1) << (k + 1)) <= n:
                k += 1
            self._free_block(at, k)
            at += (<int64_t>1) << k
            n -= (<int64_t>1) << k

    cdef int64_t _alloc(self, int64_t cap) noexcept nogil:
        """A run of exactly `cap` cells (a class size): the smallest free
        block that holds it, split in halves down to the power of two that
        holds it (the upper halves and what is past `cap` freed), or new
        cells from the top of the pool. -1 when the pool is full (the caller
        grows it, with the GIL, and retries)."""
        cdef int k = 0, j
        cdef int64_t at, size, gap
        while ((<int64_t>1) << k) < cap:
            k += 1
        j = k
        while j <= self.top_level and self.free_head[j] < 0:
            j += 1
        if j <= self.top_level:
            at = self.free_head[j]
            self._unlink_block(at, j)
            while j > k:
                j -= 1
                self._push_block(at + ((<int64_t>1) << j), j)
            if cap < ((<int64_t>1) << k):
                self._release_range(at + cap, ((<int64_t>1) << k) - cap)
        else:
            # exactly `cap` cells from the top, aligned to the biggest power of
            # two within `cap` (the gap below freed): runs that coalesce when
            # freed, and no tail past `cap` (aligned to the block that holds
            # them, keys that stop at 24 of 32 cells left 8 free for smaller
            # runs that may never come: +10% at 100 events a key; unaligned,
            # freed runs coalesce less: +1% at 1M Zipf keys)
            size = (<int64_t>1) << k
            if size > cap:
                size >>= 1
            at = (self.pool_top + size - 1) & ~(size - 1)
            if at + cap > self.pool_cap:
                return -1
            gap = at - self.pool_top
            self.pool_top = at + cap
            if gap:
                self._release_range(at - gap, gap)
        self.cells_held += cap
        return at

    cdef void _free(self, int64_t at, int64_t cap) noexcept nogil:
        self.cells_held -= cap
        self._release_range(at, cap)

    cdef int _room(self, Py_ssize_t s, int64_t need) noexcept nogil:
        """Makes slot s's run hold at least `need` cells (need <= ring_len),
        moving it to a bigger class; -1 when the pool is full."""
        cdef int64_t cap = self.cap_of[self.cls_p[s]], at2, W = self.layout.width
        cdef int k
        if cap >= need:
            return 0
        k = self._class_of(need)
        at2 = self._alloc(self.class_cap[k])
        if at2 < 0:
            return -1
        if self.len_p[s]:
            memcpy(self.P + at2 * W, self.P + self.at_p[s] * W, self.len_p[s] * W * sizeof(int64_t))
        if cap:
            self._free(self.at_p[s], cap)
        self.at_p[s] = at2
        self.cls_p[s] = <uint8_t>(k + 1)
        return 0

    cdef int _to_ring(self, Py_ssize_t s) noexcept nogil:
        """Turns slot s's sorted run into a full ring (cell = bucket mod
        ring_len, the others empty); -1 when the pool is full."""
        cdef int64_t R = self.ring_len, W = self.layout.width, m = self.len_p[s], at2, j, b
        cdef int64_t* src
        at2 = self._alloc(R)
        if at2 < 0:
            return -1
        for j in range(R):
            memcpy(self.P + (at2 + j) * W, self.tmpl_p, W * sizeof(int64_t))
        src = self.P + self.at_p[s] * W
        for j in range(m):
            b = src[j * W + W_BUCKET]
            memcpy(self.P + (at2 + floor_mod(b, R)) * W, src + j * W, W * sizeof(int64_t))
        if self.cls_p[s]:
            self._free(self.at_p[s], self.cap_of[self.cls_p[s]])
        self.at_p[s] = at2
        self.cls_p[s] = <uint8_t>self.n_classes
        self.len_p[s] = RING
        return 0

    def _check_pool(self):
        """The allocator's invariants, for tests: the keys' runs and the free
        blocks tile cells [0, pool_top) exactly once; a free block of level
        k starts at a multiple of 2^k, is flagged, names its level and is
        linked both ways; cells_held counts the runs. Raises AssertionError."""
        cdef Py_ssize_t s, k, n = 0, steps
        cdef int64_t at, prev, W = self.layout.width, top = self.pool_top
        cover = np.zeros(top, dtype=np.int64)
        held = 0
        cdef int64_t cap
        for s in range(self.n_slots):
            assert self.cls_p[s] <= self.n_classes, ("size class", s, self.cls_p[s])
            cap = self.cap_of[self.cls_p[s]]
            if cap:
                at = self.at_p[s]
                assert 0 <= at and at + cap <= top, ("run outside the pool", s, at, cap, top)
                assert (self.len_p[s] == RING and cap == self.ring_len) or \
                    0 <= self.len_p[s] <= cap, ("run length", s, self.len_p[s], cap)
                cover[at:at + cap] += 1
                held += cap
        assert held == self.cells_held, ("cells_held", held, self.cells_held)
        for k in range(MAX_CLASSES):
            at, prev, steps = self.free_head[k], -1, 0
            assert k <= self.top_level or at < 0, ("a free block above the top level", k)
            while at >= 0:
                steps += 1
                assert steps <= top, ("a free list loops", k)
                assert at % (1 << k) == 0 and at + (1 << k) <= top, ("free block misplaced", k, at, top)
                assert (self.fb_p[at >> 3] >> (at & 7)) & 1, ("free block not flagged", k, at)
                assert self.P[at * W + 2] == k and self.P[at * W + 1] == prev, ("free block links", k, at)
                cover[at:at + (1 << k)] += 1
                n += 1
                prev, at = at, self.P[at * W]
        bad = np.flatnonzero(cover != 1)
        assert not bad.size, ("cells not covered exactly once", bad[:10].tolist(), cover[bad[:10]].tolist())
        flagged = int(np.unpackbits(self.free_bits, bitorder="little")[:top].sum())
        assert flagged == n, ("flags", flagged, n)
        # every block the pool has handed out is named by exactly one cell of a run
        offs = self._block_offsets()
        if len(offs):
            named = []
            pool = np.asarray(self.pool)
            for s in range(self.n_slots):
                if self.cls_p[s]:
                    m = self.ring_len if self.len_p[s] == RING else self.len_p[s]
                    refs = pool[self.at_p[s]:self.at_p[s] + m][:, offs]
                    named.extend((-refs[refs < 0] - 1).tolist())
            assert len(named) == len(set(named)) == self.hp.used, ("blocks named", len(named), self.hp.used)

    def _block_room(self):
        """Cells past the top that always hold one more run: the biggest
        block, aligned to its size."""
        return 2 << self.top_level

    def _set_pool(self, pool, Py_ssize_t top):
        cdef int64_t[:, ::1] pv = pool
        bits = np.zeros((pool.shape[0] + 7) // 8 + 1, dtype=np.uint8)  # calloc: a reservation's stay untouched
        if self.free_bits is not None:
            n = min(len(self.free_bits), len(bits))
            bits[:n] = self.free_bits[:n]
        cdef uint8_t[::1] bv = bits
        self.free_bits = bits
        self.fb_p = &bv[0]
        self.pool = pool
        self.pool_cap = pool.shape[0]
        self.pool_top = top
        self.P = &pv[0, 0] if pool.shape[0] else NULL

    def _grow_pool(self, Py_ssize_t extra):
        """Room for at least `extra` more cells past the top. A small pool
        doubles (a copy); past _RESERVE_FROM bytes the pool moves once into a
        virtual reservation of _RESERVE_BYTES (MAP_NORESERVE: the kernel backs
        only the pages cells are written to), so a big pool never copies again
        under the writer's lock and holds no doubling slack."""
        need = self.pool_top + extra
        pool, mapped = self._pool_array(need, max(2 * self.pool_cap, need, 16))
        pool[:self.pool_top] = self.pool[:self.pool_top]
        self._set_pool(pool, self.pool_top)
        self.pool_mapped = mapped

    def _pool_array(self, Py_ssize_t need, Py_ssize_t cap):
        """(array of at least `need` cells, mapped): `cap` cells of malloc'd
        memory, or past _RESERVE_FROM bytes a virtual reservation."""
        cdef Py_ssize_t W8 = self.layout.width * 8
        if cap * W8 >= _RESERVE_FROM:
            if need > _MAX_CELLS:
                raise MemoryError(f"window state: more than {_MAX_CELLS} cells in one view")
            rows = min(max(_RESERVE_BYTES // W8, 2 * need), _MAX_CELLS)
            try:
                m = mmap.mmap(-1, rows * W8, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE)
            except (OSError, ValueError):   # strict overcommit (vm.overcommit_memory=2): keep doubling
                m = None
            if m is not None:
                try:
                    m.madvise(mmap.MADV_HUGEPAGE)
                except (AttributeError, OSError):
                    pass
                return np.frombuffer(m, dtype=np.int64).reshape(rows, self.layout.width), True
        return np.empty((cap, self.layout.width), dtype=np.int64), False

    def _set_slots(self, at, ln, cls, floor):
        cdef int32_t[::1] a = at, l = ln, f32
        cdef uint8_t[::1] c = cls
        cdef int64_t[::1] f
        self.run_at, self.run_len, self.run_cls, self.floor_ = at, ln, cls, floor
        self.at_p = &a[0] if at.shape[0] else NULL
        self.len_p = &l[0] if ln.shape[0] else NULL
        self.cls_p = &c[0] if cls.shape[0] else NULL
        self.floor32 = floor.dtype == np.int32
        self.floor_p = self.floor32_p = NULL
        if self.floor32:
            f32 = floor
            self.floor32_p = &f32[0] if floor.shape[0] else NULL
        else:
            f = floor
            self.floor_p = &f[0] if floor.shape[0] else NULL

    def _widen_floors(self):
        """The floors as int64 from now on (a bucket that an int32 cannot hold
        is about to be applied or loaded)."""
        if self.floor32:
            self._set_slots(self.run_at, self.run_len, self.run_cls, _floors64(self.floor_))

    def _widen_for(self, buckets):
        """Widens the floors unless every one of these buckets fits an int32."""
        if self.floor32 and len(buckets):
            b = np.asarray(buckets, dtype=np.int64)
            b = b[b != EMPTY]
            if len(b) and (int(b.min()) <= INT32_MIN or int(b.max()) > INT32_MAX):
                self._widen_floors()

    # ---- sizing, eviction ---------------------------------------------------

    @property
    def width(self):
        """Words (8 bytes) per cell."""
        return self.layout.width

    @property
    def bytes_per_slot(self):
        """The most a key can hold: a full ring of cells."""
        return self.ring_len * self.layout.width * 8

    @property
    def nbytes(self):
        """Bytes this view holds: its pool (cells handed out or free; of a
        reserved pool, the cells handed out: the pages touched) and its
        per-key arrays and dense HLL blocks."""
        return (self.pool_top if self.pool_mapped else self.pool_cap) * self.layout.width * 8 + \
            self.slot_bytes * self.n_slots + self.hll_pool_bytes

    @property
    def hll_pool_bytes(self):
        """Bytes of the dense HLL blocks' pool: malloc'd, its capacity; a
        reservation, the blocks handed out (only the pages they are in are
        touched; its capacity doubles as a number, not as memory)."""
        return (self.hp.top if self.hp.home == HLL_RESERVED else self.hp.cap) * self.hp.m

    @property
    def slot_bytes(self):
        """Bytes of the per-key arrays a slot (run start, length, class, floor)."""
        return _SLOT_BYTES - 4 * self.floor32

    @property
    def slot_capacity(self):
        """Slots the per-key arrays have room for without a copy (grow)."""
        room = self._slot_room or [None] * 4
        return min(room_of(a, buf) for buf, a in zip(room, (self.run_at, self.run_len, self.run_cls, self.floor_)))

    @property
    def live_bytes(self):
        """Bytes the keys' state needs (their runs, dense HLL blocks and
        per-key arrays; not free runs or slack): O(1), what a memory bound
        counts."""
        return self.cells_held * self.layout.width * 8 + self.hp.used * self.hp.m + self.slot_bytes * self.n_slots

    @property
    def pool_waste(self):
        """Cells of the pool below its top that no key's run holds (free
        blocks, alignment gaps): what compaction gives back, with the runs'
        slack (compact_begin)."""
        return self.pool_top - self.cells_held

    @property
    def dense_hll_blocks(self):
        """Cells' HLL columns held as dense registers (the rest are sparse lists)."""
        return 0 if self.layout.lastk_spill else self.hp.used

    @property
    def blocks_held(self):
        """Blocks the cells own: dense HLL registers, or last_k buffers of
        more than one entry (window.pxd, sized by use)."""
        return self.hp.used

    @property
    def lastk_sized_by_use(self):
        """Whether this view's last_k buffers are sized by use (window.pxd)."""
        return bool(self.layout.lastk_spill)

    cdef _check_blocks(self):
        if self.hp.failed:
            self.hp.failed = 0
            raise MemoryError("window state: no memory for dense HyperLogLog registers")

    @property
    def cells_in_use(self):
        """Cells the keys hold (a key in ring mode: its whole ring)."""
        ln = np.asarray(self.run_len)
        return int(np.where(ln == RING, self.ring_len, ln).sum())

    def grow(self, Py_ssize_t n_slots):
        """Make room for slots up to n_slots - 1 (never shrinks); new slots are empty."""
        if n_slots < 0:
            raise ValueError(f"n_slots must be >= 0, got {n_slots}")
        if n_slots <= self.n_slots:
            return
        more = n_slots - self.n_slots
        # PERF: into buffers with room for twice the slots (grow_in_room): the
        # old arrays stay valid views of the same memory, so a checkpoint's or
        # a compaction's copy taken without the lock reads them as before
        room = self._slot_room or [None] * 4
        grown = []
        for i, (a, fill) in enumerate(((self.run_at, -1), (self.run_len, 0), (self.run_cls, 0),
                                       (self.floor_, _EMPTY32 if self.floor32 else EMPTY))):
            a, room[i] = grow_in_room(a, room[i], n_slots, fill)
            grown.append(a)
        self._slot_room = room
        self._set_slots(*grown)
        self.n_slots = n_slots
        if self.tracking:
            self._set_dirty(np.concatenate([self.dirty, np.zeros(more, np.uint8)]))

    def _set_dirty(self, dirty):
        cdef uint8_t[::1] dv = dirty
        self.dirty = dirty
        self.dirty_p = &dv[0] if dirty.shape[0] else NULL

    def reset_slots(self, slots):
        """Forget everything about these keys (eviction, or slot reuse)."""
        s = self._check_slots(slots)
        cdef const int64_t[::1] sv = s
        cdef Py_ssize_t i, k, j, W = self.layout.width
        for i in range(sv.shape[0]):
            k = sv[i]
            if self.tracking:
                self.dirty_p[k] = 1
            if self.layout.has_blocks and self.cls_p[k]:
                for j in range(self.ring_len if self.len_p[k] == RING else self.len_p[k]):
                    cell_release(<Word*>(self.P + (self.at_p[k] + j) * W), &self.layout)
            if self.cls_p[k]:
                self._free(self.at_p[k], self.cap_of[self.cls_p[k]])
            self.at_p[k] = -1
            self.cls_p[k] = 0
            self.len_p[k] = 0
            fl_set(self, k, EMPTY)

    def idle_slots(self, int64_t now, ttl):
        """Slots whose newest applied event is older than now - ttl (event time)."""
        klt = self.key_last_ts()
        return np.flatnonzero((klt != EMPTY) & (klt < now - duration(ttl))).astype(np.int64)

    def key_last_ts(self):
        """Newest applied event time per slot (EMPTY if none), from its cells."""
        out = np.full(self.n_slots, EMPTY, dtype=np.int64)
        cdef int64_t[::1] o = out
        cdef Py_ssize_t s, j, W = self.layout.width
        cdef int64_t* c
        cdef int64_t last
        with nogil:
            for s in range(self.n_slots):
                c = self.P + self.at_p[s] * W
                for j in range(self.ring_len if self.len_p[s] == RING else self.len_p[s]):
                    if c[j * W + W_COUNT]:
                        last = cell_last_ts(<const Word*>(c + j * W), &self.layout)
                        if last > o[s]:
                            o[s] = last
        return out

    def changed_slots(self, int64_t t0, int64_t t1, Py_ssize_t start=0, Py_ssize_t stop=-1):
        """Slots whose value as of t1 may differ from their value as of t0
        when no event is applied in between (t0 <= t1, every applied event
        before t0). Sliding, tumbling and continuous windows: the keys with a
        cell in a bucket that left the window ([lo0, lo1)) or entered it
        (hi0..hi1; a continuous head is in it already). Sessions and
        lifetime: none (their values move only with events). A superset, in
        slot order: at a hop boundary the engine recomputes these keys
        instead of every key (work in proportion to the keys the boundary
        moves, not to the keys stored). `start`/`stop`: only slots in that
        range (stop -1: to the end), so a caller can scan a big view in parts."""
        if t1 < t0:
            raise ValueError(f"changed_slots needs t0 <= t1, got {t0} > {t1}")
        if stop < 0 or stop > self.n_slots:
            stop = self.n_slots
        if start < 0:
            start = 0
        cdef int64_t hop = self.hop, hi0 = floor_div(t0, self.hop), hi1 = floor_div(t1, self.hop), b
        if self.kind == K_SESSION or self.kind == K_LIFETIME or hi0 == hi1 or start >= stop:
            return np.zeros(0, dtype=np.int64)
        out = np.empty(stop - start, dtype=np.int64)
        cdef int64_t[::1] o = out
        cdef Py_ssize_t s, j, m, g, n = 0, W = self.layout.width
        cdef int64_t* c
        cdef bint moved
        with nogil:
            for s in range(start, stop):
                m = self.ring_len if self.len_p[s] == RING else self.len_p[s]
                c = self.P + self.at_p[s] * W
                for j in range(m):
                    b = c[j * W + W_BUCKET]
                    if c[j * W + W_COUNT] == 0 or b == INT64_MIN:
                        continue
                    moved = b >= hi0 and b <= hi1
                    for g in range(self.n_groups):  # each group's window: [hi - nb, hi)
                        if b >= hi0 - self.groups[g].nb and b < hi1 - self.groups[g].nb:
                            moved = 1
                    if moved:
                        o[n] = s
                        n += 1
                        break
        return out[:n].copy()

    def newest_before(self, slots, int64_t t):
        """Per slot: the newest applied event with ts < t as far as the cells
        tell (EMPTY for none), and whether a cell spans t, so that an event
        of it before t may be newer than that (the value is then a lower bound)."""
        s = self._check_slots(slots)
        cdef const int64_t[::1] sv = s
        cdef Py_ssize_t n = sv.shape[0], q, j, W = self.layout.width
        newest = np.full(n, EMPTY, dtype=np.int64)
        unknown = np.zeros(n, dtype=np.uint8)
        cdef int64_t[::1] nw = newest
        cdef uint8_t[::1] uk = unknown
        cdef int64_t* c
        cdef int64_t first, last
        with nogil:
            for q in range(n):
                c = self.P + self.at_p[sv[q]] * W
                for j in range(self.ring_len if self.len_p[sv[q]] == RING else self.len_p[sv[q]]):
                    if c[j * W + W_COUNT] == 0 or c[j * W + W_BUCKET] == INT64_MIN:
                        continue
                    first = cell_first_ts(<const Word*>(c + j * W), &self.layout)
                    last = cell_last_ts(<const Word*>(c + j * W), &self.layout)
                    if last < t:
                        if last > nw[q]:
                            nw[q] = last
                    elif first < t:
                        uk[q] = 1
                        if first > nw[q]:
                            nw[q] = first
        return newest, unknown.view(np.bool_)

    def _check_slots(self, slots):
        s = np.ascontiguousarray(slots, dtype=np.int64)
        if s.ndim != 1:
            raise SchemaError(f"slots must be 1-d, got shape {s.shape}")
        if len(s) and (s.min() < 0 or s.max() >= self.n_slots):
            raise IndexError(f"slot out of range 0..{self.n_slots - 1}: call grow() first")
        return s

    # ---- ingest -------------------------------------------------------------

    def update(self, slots, ts, columns=None, parts=None):
        """Apply a batch in arrival order; returns a bool mask of late events
        (not applied; route them to the offline log for healing). `parts`: an
        int per event (its Kafka partition): the lateness rule then keeps a
        watermark per part (`part_watermarks`), so a partition being caught up
        is not judged against another one's newer events (semantics.md §4)."""
        s = self._check_slots(slots)
        t = np.ascontiguousarray(ts, dtype=np.int64)
        cdef Py_ssize_t n = len(t), i = 0
        if t.ndim != 1 or len(s) != n:
            raise SchemaError(f"slots and ts must be 1-d of equal length, got {len(s)} and {t.shape}")
        x, h = self._columns_matrix(columns or {}, n)
        if self.floor32 and self.kind != K_LIFETIME and n:   # (a lifetime view's bucket is 0)
            if int(t.min()) // self.hop <= INT32_MIN or int(t.max()) // self.hop > INT32_MAX:
                self._widen_floors()
        late = np.zeros(n, dtype=np.uint8)
        if parts is None:
            gi = gw = _NO_PARTS
        else:
            p = np.asarray(parts, dtype=np.int64)
            if p.shape != (n,):
                raise SchemaError(f"parts must be 1-d of length {n}, got shape {p.shape}")
            lo, hi = (int(p.min()), int(p.max())) if n else (0, -1)
            if hi - lo < 1024:  # PERF: partitions are small ints; no sort (np.unique) per batch and window
                uniq, gi = range(lo, hi + 1), np.ascontiguousarray(p - lo)
            else:
                uniq, inv = np.unique(p, return_inverse=True)
                uniq, gi = uniq.tolist(), np.ascontiguousarray(inv, dtype=np.int64)
            gw = np.array([self.part_watermarks.get(u, EMPTY) for u in uniq], dtype=np.int64)
        while i < n:
            i = self._apply(i, s, t, x, h, late, gi, gw)
            if i < n:  # the pool is full: grow it (room for any aligned block) and go on
                self._grow_pool(self._block_room())
        if parts is not None:
            for u, w in zip(uniq, gw.tolist()):
                if w != EMPTY:
                    self.part_watermarks[u] = w
        self._check_blocks()
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

    cdef Py_ssize_t _apply(self, Py_ssize_t start, const int64_t[::1] slots, const int64_t[::1] ts,
                           const double[:, ::1] x, const uint64_t[:, ::1] h, uint8_t[::1] late,
                           const int64_t[::1] gi, int64_t[::1] gw) except -2:
        """Applies events start.. in order; returns n, or the index of the
        event that found the pool full (nothing of it applied)."""
        cdef Py_ssize_t n = ts.shape[0], i, j, k, pos, R = self.ring_len, W = self.layout.width
        cdef Py_ssize_t xs = x.shape[1], hs = h.shape[1]
        cdef int64_t[:, ::1] sc = self.scratch
        cdef int64_t[::1] tv = self.template
        cdef Word* tmpl = <Word*>&tv[0]
        cdef Word* span = <Word*>&sc[1, 0]
        cdef Word* cells
        cdef const Layout* L = &self.layout
        cdef int kind = self.kind
        cdef int64_t wm = self.watermark, lateness = self.allowed_lateness, hop = self.hop
        cdef int64_t gap = self.gap, t, b, top, horizon, nlate = 0, s, m, nsess
        cdef Py_ssize_t stopped = n, g = -1
        cdef bint grouped = gi.shape[0] > 0
        # The newest ts any watermark has seen (every part's, and the untagged
        # one's; over-estimates only cost a scan): no key has a newer bucket, so
        # only an event more than R - 1 buckets behind its bucket (a lagging part;
        # never under one watermark) can be older than a ring key's last R
        # buckets, which the ring cannot tell from the event's cell alone.
        cdef int64_t maxwm = max(wm, max(self.part_watermarks.values(), default=EMPTY),
                                 max(np.asarray(gw).tolist(), default=EMPTY))
        with nogil:
            for i in range(start, n):
                if grouped and gi[i] != g:  # the watermark of this event's part
                    if g >= 0:
                        gw[g] = wm
                    g = gi[i]
                    wm = gw[g]
                if i + PREFETCH_AHEAD < n and self.at_p[slots[i + PREFETCH_AHEAD]] >= 0:
                    prefetch_w(self.P + self.at_p[slots[i + PREFETCH_AHEAD]] * W)
                t = ts[i]
                s = slots[i]
                if self.tracking:
                    self.dirty_p[s] = 1
                if wm != INT64_MIN and t < wm - lateness:
                    late[i] = 1
                    nlate += 1
                    continue
                if t > maxwm:
                    maxwm = t
                m = self.len_p[s]
                if kind == K_SESSION:
                    if m < R and m + 1 > self.cap_of[self.cls_p[s]] and self._room(s, m + 1) < 0:
                        stopped = i
                        break
                    memcpy(span, tmpl, W * sizeof(Word))
                    cell_add(span, L, t, &x[0, i], xs, &h[0, i], hs)
                    nsess = m
                    if session_insert(<Word*>(self.P + self.at_p[s] * W), R, &nsess, &self.floor_p[s], span, gap, L, L):
                        late[i] = 1
                        nlate += 1
                    else:
                        self.len_p[s] = nsess
                        if t > wm:
                            wm = t
                    continue
                b = 0 if kind == K_LIFETIME else floor_div(t, hop)
                if m == RING:
                    cells = <Word*>(self.P + self.at_p[s] * W)
                    # (b < floor(maxwm / hop) - R + 1, without a division per event)
                    if maxwm >= (b + R) * hop and b < self._ring_horizon(cells):
                        # older than the key's last R buckets, though its cell may still
                        # hold that bucket (not yet overwritten): late, as for a run
                        late[i] = 1
                        nlate += 1
                        continue
                    cells += floor_mod(b, R) * W
                    if cells[W_BUCKET].i != b:
                        if cells[W_BUCKET].i > b:  # holds a newer bucket: b is beyond the ring
                            late[i] = 1
                            nlate += 1
                            continue
                        if cells[W_BUCKET].i != INT64_MIN and cells[W_COUNT].i:
                            fl_raise(self, s, cells[W_BUCKET].i)
                        cell_release(cells, L)
                        memcpy(cells, tmpl, W * sizeof(Word))
                        cells[W_BUCKET].i = b
                    cell_add(cells, L, t, &x[0, i], xs, &h[0, i], hs)
                    if t > wm:
                        wm = t
                    continue
                cells = <Word*>(self.P + self.at_p[s] * W) if m else NULL
                j = m - 1
                while j >= 0 and cells[j * W + W_BUCKET].i > b:
                    j -= 1
                if j >= 0 and cells[j * W + W_BUCKET].i == b:
                    cell_add(cells + j * W, L, t, &x[0, i], xs, &h[0, i], hs)
                    if t > wm:
                        wm = t
                    continue
                if m:
                    # a new bucket: the key keeps the last R buckets (semantics.md §5)
                    top = cells[(m - 1) * W + W_BUCKET].i
                    if b > top:
                        top = b
                    horizon = top - R + 1
                    if b < horizon:
                        late[i] = 1
                        nlate += 1
                        continue
                    k = 0
                    while k < m and cells[k * W + W_BUCKET].i < horizon:
                        fl_raise(self, s, cells[k * W + W_BUCKET].i)
                        k += 1
                    if k:
                        for pos in range(k):
                            cell_release(cells + pos * W, L)
                        memmove(cells, cells + k * W, (m - k) * W * sizeof(Word))
                        m -= k
                        j -= k
                        self.len_p[s] = m
                if m + 1 > self.cap_of[self.cls_p[s]]:
                    if kind != K_LIFETIME and self.class_cap[self._class_of(m + 1)] == R:
                        # the key needs its whole ring: hold it as one from now on
                        if self._to_ring(s) < 0:
                            stopped = i
                            break
                        cells = <Word*>(self.P + self.at_p[s] * W) + floor_mod(b, R) * W
                        memcpy(cells, tmpl, W * sizeof(Word))
                        cells[W_BUCKET].i = b
                        cell_add(cells, L, t, &x[0, i], xs, &h[0, i], hs)
                        if t > wm:
                            wm = t
                        continue
                    if self._room(s, m + 1) < 0:
                        stopped = i
                        break
                cells = <Word*>(self.P + self.at_p[s] * W)
                pos = j + 1
                memmove(cells + (pos + 1) * W, cells + pos * W, (m - pos) * W * sizeof(Word))
                memcpy(cells + pos * W, tmpl, W * sizeof(Word))
                cells[pos * W + W_BUCKET].i = b
                cell_add(cells + pos * W, L, t, &x[0, i], xs, &h[0, i], hs)
                self.len_p[s] = m + 1
                if t > wm:
                    wm = t
        if not grouped:
            self.watermark = wm
        elif g >= 0:
            gw[g] = wm
        self.late_count += nlate
        return stopped

    cdef int _insert_cell(self, Py_ssize_t s, const Word* src, const Layout* Ls) noexcept nogil:
        """Folds a whole cell (another view's, of layout Ls) into slot s:
        merged into the cell of its bucket (session: the sessions it meets),
        or inserted.
        Returns 0, 1 when the state cannot hold it (older than the key's
        ring / a dropped session), or -1 when the pool is full."""
        cdef Py_ssize_t R = self.ring_len, W = self.layout.width, j, k, pos
        cdef int64_t m = self.len_p[s], b = src[W_BUCKET].i, top, horizon, nsess
        cdef Word* cells
        if self.tracking:
            self.dirty_p[s] = 1
        if m == RING:
            cells = <Word*>(self.P + self.at_p[s] * W)
            if b < self._ring_horizon(cells):  # older than the key's last R buckets: as a run does
                fl_raise(self, s, b)
                return 1
            cells += floor_mod(b, R) * W
            if cells[W_BUCKET].i == b:
                cell_merge_from(cells, &self.layout, src, Ls)
            elif cells[W_BUCKET].i < b:
                if cells[W_BUCKET].i != INT64_MIN and cells[W_COUNT].i:
                    fl_raise(self, s, cells[W_BUCKET].i)
                cell_release(cells, &self.layout)
                cell_copy_in(cells, &self.layout, src, Ls)
            else:
                fl_raise(self, s, b)
                return 1
            return 0
        if self.kind == K_SESSION:
            if m < R and m + 1 > self.cap_of[self.cls_p[s]] and self._room(s, m + 1) < 0:
                return -1
            nsess = m
            k = session_insert(<Word*>(self.P + self.at_p[s] * W), R, &nsess, &self.floor_p[s], src, self.gap,
                               &self.layout, Ls)
            self.len_p[s] = nsess
            return k
        cells = <Word*>(self.P + self.at_p[s] * W) if m else NULL
        j = m - 1
        while j >= 0 and cells[j * W + W_BUCKET].i > b:
            j -= 1
        if j >= 0 and cells[j * W + W_BUCKET].i == b:
            cell_merge_from(cells + j * W, &self.layout, src, Ls)
            return 0
        if m and self.kind != K_LIFETIME:
            top = cells[(m - 1) * W + W_BUCKET].i
            if b > top:
                top = b
            horizon = top - R + 1
            if b < horizon or b <= fl_get(self, s):
                fl_raise(self, s, b)  # its events are not held: answers that need them are not exact
                return 1
            k = 0
            while k < m and cells[k * W + W_BUCKET].i < horizon:
                fl_raise(self, s, cells[k * W + W_BUCKET].i)
                k += 1
            if k:
                for pos in range(k):
                    cell_release(cells + pos * W, &self.layout)
                memmove(cells, cells + k * W, (m - k) * W * sizeof(Word))
                m -= k
                j -= k
                self.len_p[s] = m
        if m + 1 > self.cap_of[self.cls_p[s]] and self._room(s, m + 1) < 0:
            return -1
        cells = <Word*>(self.P + self.at_p[s] * W)
        pos = j + 1
        memmove(cells + (pos + 1) * W, cells + pos * W, (m - pos) * W * sizeof(Word))
        cell_copy_in(cells + pos * W, &self.layout, src, Ls)
        self.len_p[s] = m + 1
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

    cdef int64_t _top_bucket(self, const Word* key, Py_ssize_t n) noexcept nogil:
        """The newest bucket among `n` cells at `key` (INT64_MIN: none)."""
        cdef Py_ssize_t W = self.layout.width, j
        cdef int64_t top = INT64_MIN
        for j in range(n):
            if key[j * W + W_BUCKET].i > top:
                top = key[j * W + W_BUCKET].i
        return top

    cdef int64_t _ring_horizon(self, const Word* key) noexcept nogil:
        """A ring's oldest bucket it keeps (newest - R + 1): its older cells
        count as dropped (reads, snapshots, the lateness rule)."""
        cdef int64_t top = self._top_bucket(key, self.ring_len)
        return INT64_MIN if top == INT64_MIN else top - self.ring_len + 1

    cdef int64_t _held_floor(self, const Word* key, Py_ssize_t n, Py_ssize_t s) noexcept nogil:
        """The newest bucket with events that slot s no longer holds for
        answers (INT64_MIN: none): its floor, or a held cell older than the
        key's last R buckets (`n` cells at `key`: its run, or its whole ring)."""
        cdef Py_ssize_t W = self.layout.width, j
        cdef int64_t top = self._top_bucket(key, n), f = fl_get(self, s), b
        if top == INT64_MIN:
            return f
        for j in range(n):
            b = key[j * W + W_BUCKET].i
            if b != INT64_MIN and b <= top - self.ring_len and key[j * W + W_COUNT].i and b > f:
                f = b
        return f

    cdef int _query(self, const int64_t[::1] slots, const int64_t[::1] tq, double[:, ::1] of,
                    int64_t[:, ::1] oi, uint8_t[::1] exact) except -1:
        cdef Py_ssize_t nq = tq.shape[0], q, W = self.layout.width, j, m, g
        cdef int64_t[:, ::1] sc = self.scratch
        cdef int64_t[::1] tv = self.template
        cdef Word* tmpl = <Word*>&tv[0]
        cdef Word* acc = <Word*>&sc[0, 0]
        cdef Word* key
        cdef Word* c
        cdef const Layout* L = &self.layout
        cdef const Group* gp
        cdef int kind = self.kind
        cdef bint ex
        cdef int64_t hop = self.hop, t, b, hi, lo, s, fl
        with nogil:
            for q in range(nq):
                t = tq[q]
                s = slots[q]
                m = self.len_p[s]
                key = <Word*>(self.P + self.at_p[s] * W) if m != 0 else NULL
                if kind == K_SESSION or kind == K_LIFETIME:
                    memcpy(acc, tmpl, W * sizeof(Word))
                    if kind == K_LIFETIME:
                        exact[q] = 1 if m == 0 else include_partial(acc, key, 0, t, L)
                    else:
                        # The most recent session that started before t.
                        j = m - 1
                        while j >= 0 and key[j * W + W_FIRST_TS].i >= t:
                            j -= 1
                        if j >= 0:
                            cell_merge(acc, key + j * W, L)
                            exact[q] = key[j * W + W_LAST_TS].i < t
                        else:
                            exact[q] = fl_get(self, s) == INT64_MIN
                    cell_finalize(acc, L, self.outs, self.nout, &of[0, 0], &oi[0, 0], nq, q)
                    cell_release(acc, L)
                    continue
                hi = floor_div(t, hop)
                # An overwritten bucket raised the floor; a ring also still holds
                # buckets older than its newest - R + 1 until they are overwritten,
                # which a run of cells drops at its next new bucket: they count as
                # dropped here, so both forms (and a restored copy) answer alike.
                # A bucket a window needs was dropped from the key: not exact.
                fl = self._held_floor(key, self.ring_len if m == RING else m, s)
                ex = 1
                for g in range(self.n_groups):
                    gp = &self.groups[g]
                    memcpy(acc, tmpl, W * sizeof(Word))
                    lo = hi - gp.nb
                    if fl >= lo:
                        ex = 0
                    if m == RING:
                        for b in range(lo, hi):
                            c = key + floor_mod(b, self.ring_len) * W
                            if c[W_BUCKET].i == b:
                                cell_merge(acc, c, &gp.L)
                        if gp.kind == K_CONTINUOUS and t != hi * hop:
                            c = key + floor_mod(hi, self.ring_len) * W
                            if c[W_BUCKET].i == hi and not include_partial(acc, c, hi, t, &gp.L):
                                ex = 0
                    else:
                        for j in range(m):
                            c = key + j * W
                            b = c[W_BUCKET].i
                            if b >= lo and b < hi:
                                cell_merge(acc, c, &gp.L)
                            elif b == hi and gp.kind == K_CONTINUOUS and t != hi * hop:
                                if not include_partial(acc, c, hi, t, &gp.L):
                                    ex = 0
                    cell_finalize(acc, &gp.L, gp.outs, gp.nout, &of[0, 0], &oi[0, 0], nq, q)
                    cell_release(acc, &gp.L)
                exact[q] = ex
        self._check_blocks()
        return 0

    # ---- state: serialise, restore, merge -------------------------------------

    def empty_like(self, Py_ssize_t n_slots=0):
        """A view of the same definition (windows, aggregations, lateness, ...)
        with `n_slots` empty keys."""
        return type(self)(self.spec, list(self.aggs), n_slots, self.allowed_lateness, self.hll_p,
                          self.max_sessions, self.agg_specs)

    def meta(self):
        """The parameters a restored view must share with this one."""
        out = {"spec": self.spec.to_dict(), "aggs": [a.to_dict() for a in self.aggs],
               "allowed_lateness": self.allowed_lateness, "hll_p": self.hll_p,
               "max_sessions": self.max_sessions, "width": self.layout.width,
               "ring_len": self.ring_len}
        if self.agg_specs is not None:  # (absent from plain views' snapshots, as before it existed)
            out["agg_specs"] = [sp.to_dict() for sp in self.agg_specs]
        return out

    def _blocks_array(self):
        """The dense HLL blocks as a (cap, m) uint8 array viewing the pool."""
        if self.hp.cap == 0:
            return np.zeros((0, max(self.hp.m, 1)), dtype=np.uint8)
        return np.asarray(<uint8_t[:self.hp.cap * self.hp.m]>self.hp.B).reshape(self.hp.cap, self.hp.m)

    def _hll_offsets(self):
        return np.array([self.layout.cols[j].hll for j in self.hll_cols], dtype=np.int64)

    def _block_offsets(self):
        """The words of a cell that may name a block (-(i + 1)): HLL areas'
        word 0, a spilled last_k area's ref (window.pxd block_word)."""
        cdef Py_ssize_t j, w
        out = []
        for j in range(self.layout.ncols):
            w = block_word(&self.layout.cols[j], &self.layout)
            if w >= 0:
                out.append(w)
        return np.array(out, dtype=np.int64)

    def _gather(self, slots):
        """(lens, floors, cells, blocks) of these slots: their cells with
        events, in bucket order (sessions: by start), one slot after the
        other; a dense HLL column's word 0 is -(i + 1) for blocks[i], the
        blocks numbered in the order the cells name them."""
        s = self._check_slots(slots)
        cdef const int64_t[::1] sv = s
        cdef Py_ssize_t q, o = 0, W = self.layout.width, m, j, k, R = self.ring_len
        cdef int64_t* c
        cdef int64_t key_b, horizon
        lens = np.zeros(len(s), dtype=np.int64)
        floors = _floors64(np.asarray(self.floor_)[s])
        cdef int64_t[::1] lv = lens
        cdef int64_t[::1] fv = floors
        # (without the GIL: an embedded engine's checkpoint encodes in a thread
        # beside pushes and reads)
        with nogil:
            for q in range(sv.shape[0]):
                m = self.len_p[sv[q]]
                if m == RING:
                    c = self.P + self.at_p[sv[q]] * W
                    horizon = self._ring_horizon(<const Word*>c)
                    for j in range(R):
                        lv[q] += ring_cell_held(c + j * W, horizon)
                    # cells older than the key's last R buckets, not yet overwritten, are
                    # dropped (as a run drops them): the floor says so, as reads count it
                    fv[q] = self._held_floor(<const Word*>c, R, sv[q])
                else:
                    lv[q] = m
        cells = np.empty((int(lens.sum()), W), dtype=np.int64)
        cdef int64_t[:, ::1] cv = cells if cells.shape[0] else np.zeros((1, W), np.int64)
        order = np.empty(R, dtype=np.int64)
        cdef int64_t[::1] ov = order
        with nogil:
            for q in range(sv.shape[0]):
                m = self.len_p[sv[q]]
                c = self.P + self.at_p[sv[q]] * W
                if m == RING:
                    k = 0
                    horizon = self._ring_horizon(<const Word*>c)
                    for j in range(R):  # the ring's cells with events, by bucket (insertion sort: R is small)
                        if ring_cell_held(c + j * W, horizon):
                            key_b = c[j * W + W_BUCKET]
                            m = k
                            while m > 0 and c[ov[m - 1] * W + W_BUCKET] > key_b:
                                ov[m] = ov[m - 1]
                                m -= 1
                            ov[m] = j
                            k += 1
                    for j in range(k):
                        memcpy(&cv[o + j, 0], c + ov[j] * W, W * sizeof(int64_t))
                    o += k
                elif m:
                    memcpy(&cv[o, 0], c, m * W * sizeof(int64_t))
                    o += m
        blocks = np.zeros((0, self.hp.m), dtype=np.uint8)
        if self.layout.has_blocks and len(cells):
            offs = self._block_offsets()
            at = np.argwhere(cells[:, offs] < 0)    # (cell, column) pairs, row-major: canonical order
            if len(at):
                rows, cols = at[:, 0], offs[at[:, 1]]
                blocks = self._blocks_array()[-cells[rows, cols] - 1]
                cells[rows, cols] = -np.arange(1, len(at) + 1)
        return lens, floors, cells, blocks

    def frozen(self):
        """A copy of the state as it is now, for a checkpoint to encode off the
        writer's lock: one memcpy of the cells handed out and of the per-key
        arrays. The copy answers to_bytes() (and reads); it is not updated.
        (A checkpoint beside a writer in other threads copies in three steps
        instead: track_writes, frozen_begin, frozen_end.)"""
        self._stop_tracking()
        return self._frozen_from(np.array(self.pool[:max(self.pool_top, 1)]), np.array(self.run_at),
                                 np.array(self.run_len), np.array(self.run_cls), np.array(self.floor_))

    def _frozen_from(self, pool, at, ln, cls, floor, blocks=None):
        """The frozen copy over these arrays; its dense HLL blocks are
        `blocks` ((n, m) uint8 holding every block the cells name, borrowed)
        or a copy of this view's."""
        cdef WindowView f = self.empty_like(0)
        cdef uint8_t[:, ::1] bv
        f._set_pool(pool, self.pool_top)
        if blocks is not None:  # (frozen_begin's: never empty)
            bv = blocks
            f.hll_owner = blocks
            f.hp.B, f.hp.home, f.hp.cap = &bv[0, 0], HLL_BORROWED, blocks.shape[0]
            # the blocks' free-list links were copied at different times: a
            # copy that is written to takes new blocks from the top only
            f.hp.top, f.hp.free_head, f.hp.used = self.hp.top, -1, self.hp.used
        elif self.hp.cap:
            f.hp.B = <uint8_t*>malloc(self.hp.cap * self.hp.m)
            if f.hp.B == NULL:
                raise MemoryError()
            memcpy(f.hp.B, self.hp.B, self.hp.top * self.hp.m)
            f.hp.cap, f.hp.top, f.hp.free_head, f.hp.used = self.hp.cap, self.hp.top, self.hp.free_head, self.hp.used
        f._set_slots(at, ln, cls, floor)
        f.n_slots = self.n_slots
        f.watermark, f.late_count = self.watermark, self.late_count
        f.part_watermarks = dict(self.part_watermarks)
        f.cells_held = self.cells_held
        return f

    def track_writes(self):
        """A copy-mode checkpoint's first step, by the writer under its lock:
        from now on every slot whose run or cells change is marked. Then
        frozen_begin() copies the state while the writer goes on (no lock,
        no GIL for the cells) and frozen_end(), under the lock again, copies
        only the marked slots again: the lock is held in proportion to the
        keys written meanwhile, not to the state (at 100k keys of the
        starter repo the whole copies held it 25-300 ms: docs/wal.md)."""
        self._set_dirty(np.zeros(self.n_slots, np.uint8))
        self.tracking = 1
        # dense HLL blocks are copied beside the cells once they stay put (a reservation)
        hll_top = self.hp.top if self.hp.home == HLL_RESERVED else -1
        self._track = (self.pool, self.pool_top, self.run_at, self.run_len, self.run_cls, self.floor_, hll_top)
        return self._track

    def _stop_tracking(self):
        self.tracking = 0
        self.dirty_p = NULL
        self.dirty = None
        self._track = None

    def frozen_begin(self, track):
        """Step two (any thread, no lock): copies the cells and per-key arrays
        as track_writes() saw them; the slots written since are copied again
        by frozen_end. Returns what frozen_end takes."""
        pool, top, at, ln, cls, floor, hll_top = track
        # room for the cells runs take meanwhile (frozen_end copies them in place)
        rows = max(top + top // 4 + self._block_room(), 16)
        out = np.empty((rows, self.layout.width), dtype=np.int64)
        cdef int64_t[:, ::1] src = pool
        cdef int64_t[:, ::1] dst = out
        cdef size_t nbytes = top * self.layout.width * sizeof(int64_t)
        cdef uint8_t[:, ::1] bv
        if top:
            with nogil:
                memcpy(&dst[0, 0], &src[0, 0], nbytes)
        blocks = None
        if hll_top >= 0:
            # the reservation never moves and only grows: blocks [0, hll_top) are
            # readable while the writer goes on (the ones it writes meanwhile
            # belong to marked slots: frozen_end copies them again)
            blocks = np.empty((hll_top + hll_top // 4 + 64, self.hp.m), dtype=np.uint8)
            bv = blocks
            nbytes = hll_top * self.hp.m
            if hll_top:
                with nogil:
                    memcpy(&bv[0, 0], self.hp.B, nbytes)
        return (track, out, np.array(at), np.array(ln), np.array(cls), np.array(floor), blocks)

    def frozen_end(self, begun):
        """Step three, by the writer under its lock: the frozen copy (as
        frozen()) of the state now — frozen_begin's copy with the slots
        written since track_writes() copied again — and tracking stops."""
        track, out, at, ln, cls, floor, blocks = begun
        if not self.tracking or track is not self._track or self.pool_top > out.shape[0] or \
                (blocks is not None and self.hp.top > blocks.shape[0]) or floor.dtype != self.floor_.dtype:
            # tracking was restarted, or the runs (or HLL blocks) outgrew the copy's room, or
            # the floors were widened meanwhile
            return self.frozen()
        cdef Py_ssize_t n0 = len(at), n = self.n_slots, W = self.layout.width, q, s, m
        if n > n0:  # slots added since: copied whole
            at = np.concatenate([at, self.run_at[n0:n]])
            ln = np.concatenate([ln, self.run_len[n0:n]])
            cls = np.concatenate([cls, self.run_cls[n0:n]])
            floor = np.concatenate([floor, self.floor_[n0:n]])
        dirty = _marked_slots(self.dirty, n0, n)
        cdef const int64_t[::1] dv = dirty
        cdef int32_t[::1] a = at, l = ln
        cdef uint8_t[::1] c = cls
        cdef bint f32 = self.floor32
        cdef int64_t[::1] f = np.zeros(1, np.int64) if f32 else floor
        cdef int32_t[::1] g = floor if f32 else np.zeros(1, np.int32)
        cdef int64_t[:, ::1] dst = out
        cdef bint hll = blocks is not None and self.layout.has_blocks
        cdef Py_ssize_t bw
        cdef uint8_t[:, ::1] bv = blocks if hll else None
        cdef Py_ssize_t k, col
        cdef int64_t hdr
        cdef const Word* cell
        with nogil:
            for q in range(dv.shape[0]):
                s = dv[q]
                a[s], l[s], c[s] = self.at_p[s], self.len_p[s], self.cls_p[s]
                if f32:
                    g[s] = self.floor32_p[s]
                else:
                    f[s] = self.floor_p[s]
                m = self.ring_len if self.len_p[s] == RING else self.len_p[s]
                if m > 0 and self.at_p[s] >= 0:
                    memcpy(&dst[self.at_p[s], 0], self.P + self.at_p[s] * W, m * W * sizeof(int64_t))
                    if hll:  # and the dense blocks its cells name
                        for k in range(m):
                            cell = <const Word*>(self.P + (self.at_p[s] + k) * W)
                            for col in range(self.layout.ncols):
                                bw = block_word(&self.layout.cols[col], &self.layout)
                                if bw >= 0:
                                    hdr = cell[bw].i
                                    if hdr < 0:
                                        memcpy(&bv[-hdr - 1, 0], self.hp.B + (-hdr - 1) * self.hp.m, self.hp.m)
        self._stop_tracking()
        return self._frozen_from(out, at, ln, cls, floor, blocks)

    def compact_begin(self, track):
        """Compaction, step two (any thread, no lock; `track` from
        track_writes()): lays the keys' cells out again back to back in a
        new pool, each run sized to the class of the cells it holds (a ring
        stays a ring), so free blocks and runs' slack are left behind. Runs a
        key grew through leave free blocks that no key may need again (keys
        that grow together to 24 cells strand their 16-cell runs: a third of
        the pool at 100 events a key); a restart compacts too, by loading
        the snapshot. The slots written meanwhile are laid out again by
        compact_end. Returns what compact_end takes."""
        pool, top, at_l, ln_l, cls_l, floor_l, hll_top = track
        at = np.array(at_l)
        ln = np.array(ln_l)
        cdef Py_ssize_t n = at.shape[0], s, W = self.layout.width, R = self.ring_len
        new_at = np.full(n, -1, dtype=np.int32)
        new_cls = np.zeros(n, dtype=np.uint8)
        cdef int32_t[::1] a = at, l = ln, na = new_at
        cdef uint8_t[::1] nc = new_cls
        cdef int64_t m, off = 0, total = 0
        with nogil:
            for s in range(n):
                if a[s] >= 0:
                    nc[s] = self._snug_cls(l[s])
                    total += self.cap_of[nc[s]]
        out, mapped = self._pool_array(total, max(total + total // 8 + self._block_room(), 16))
        cdef int64_t[:, ::1] src = pool
        cdef int64_t[:, ::1] dst = out
        cdef int64_t rows = src.shape[0]
        with nogil:
            for s in range(n):
                if nc[s]:
                    m = R if l[s] == RING else l[s]
                    if a[s] + m <= rows:  # (else written since: compact_end lays it out)
                        memcpy(&dst[off, 0], &src[a[s], 0], m * W * sizeof(int64_t))
                    na[s] = <int32_t>off
                    off += self.cap_of[nc[s]]
        return (track, out, mapped, new_at, new_cls, off)

    def compact_end(self, begun):
        """Compaction, step three, by the writer under its lock: the slots
        written since track_writes() are laid out again (in place when they
        still fit, else past the others), the new pool replaces the old, and
        tracking stops. Returns False (the view unchanged) when tracking was
        restarted meanwhile (a copy-mode checkpoint's)."""
        track, out, mapped, new_at, new_cls, top = begun
        if not self.tracking or track is not self._track:
            return False
        cdef Py_ssize_t n0 = new_at.shape[0], n = self.n_slots, W = self.layout.width, R = self.ring_len, q, s
        if n > n0:  # slots added since
            new_at = np.concatenate([new_at, np.full(n - n0, -1, np.int32)])
            new_cls = np.concatenate([new_cls, np.zeros(n - n0, np.uint8)])
        dirty = _marked_slots(self.dirty, n0, n)
        holes = np.zeros((len(dirty), 2), dtype=np.int64)  # (at, cells) left behind by a slot that moved
        needs = np.zeros(len(dirty), dtype=np.int64)        # each written slot's run now
        cdef const int64_t[::1] dv = dirty
        cdef int32_t[::1] na = new_at
        cdef uint8_t[::1] nc = new_cls
        cdef int64_t[:, ::1] hv = holes
        cdef int64_t[::1] nd = needs
        cdef int64_t m, need, nh = 0, off = top, more = 0
        with nogil:  # the cells of slots that outgrew their place
            for q in range(dv.shape[0]):
                s = dv[q]
                if self.at_p[s] >= 0:
                    nd[q] = self._snug_cls(self.len_p[s])
                    if nc[s] < nd[q]:
                        more += self.cap_of[nd[q]]
        if top + more > out.shape[0]:  # (a reservation never fills: only a small pool is copied here)
            grown, mapped = self._pool_array(top + more, max(2 * out.shape[0], top + more + self._block_room()))
            grown[:top] = out[:top]
            out = grown
        cdef int64_t[:, ::1] dst = out
        with nogil:
            for q in range(dv.shape[0]):
                s = dv[q]
                need = nd[q]   # a size class (classes and capacities ascend together)
                if nc[s] < need or need == 0:
                    if nc[s]:
                        hv[nh, 0], hv[nh, 1] = na[s], self.cap_of[nc[s]]
                        nh += 1
                    na[s], nc[s] = -1, 0
                    if need:
                        na[s], nc[s] = <int32_t>off, <uint8_t>need
                        off += self.cap_of[need]
                if need:
                    m = R if self.len_p[s] == RING else self.len_p[s]
                    memcpy(&dst[na[s], 0], self.P + self.at_p[s] * W, m * W * sizeof(int64_t))
        self.free_bits = None
        for q in range(MAX_CLASSES):
            self.free_head[q] = -1
        self._set_pool(out, off)
        self.pool_mapped = mapped
        self._set_slots(new_at, self.run_len, new_cls, self.floor_)
        self.cells_held = int(self._caps()[new_cls].sum())
        for q in range(nh):
            self._release_range(hv[q, 0], hv[q, 1])
        self._stop_tracking()
        return True

    def to_bytes(self):
        """Whole-view snapshot: b'FSWV' u32 version u32 header-len, JSON header,
        then each slot's cell count, each slot's floor, and the cells in use,
        as little-endian int64, then the dense HLL blocks they name (2^p
        bytes each; only what the keys hold: a snapshot is as big as the
        live state). The bytes of `snapshot().chunks()`."""
        return b"".join(self.snapshot().chunks())

    def snapshot(self, Py_ssize_t chunk_slots=65536, Py_ssize_t chunk_bytes=4 << 20):
        """`to_bytes()` as a stream: `.nbytes` is known before any byte is
        made, `.chunks()` yields the bytes a slot range at a time (at most
        chunk_slots slots, about chunk_bytes of cells), so a checkpoint
        writes a view of any size holding one range's cells (not the whole
        state again). The view must not change until the chunks are consumed
        (a checkpoint encodes a frozen copy or a forked child's)."""
        return _Snapshot(self, chunk_slots, chunk_bytes)

    def _floors(self):
        """Each slot's floor as a snapshot writes it: a ring's cells older
        than the key's last R buckets, not yet overwritten, are left out of
        the snapshot (as a run drops them), so its floor is raised past them,
        as reads count them (_held_floor; as _gather). The raw floors written
        with the cells left out made a restored key answer a read that needs
        such a bucket as exact, without it."""
        floors = _floors64(self.floor_)
        cdef int64_t[::1] fv = floors
        cdef Py_ssize_t s, W = self.layout.width
        with nogil:
            for s in range(self.n_slots):
                if self.len_p[s] == RING:
                    fv[s] = self._held_floor(<const Word*>(self.P + self.at_p[s] * W), self.ring_len, s)
        return floors

    @property
    def hll_block_bytes(self):
        """Bytes of one block: 2^p HLL registers, or a last_k buffer of k
        times and k values (16 k) in a view that sizes them by use."""
        return self.hp.m

    def _census(self):
        """(cells each slot's snapshot holds, dense HLL blocks they name)."""
        lens = np.zeros(self.n_slots, dtype=np.int64)
        cdef int64_t[::1] lv = lens
        cdef Py_ssize_t s, j, c, m, w, W = self.layout.width, R = self.ring_len
        cdef int64_t blocks = 0
        cdef int64_t* cell
        cdef int64_t horizon
        cdef bint ring
        with nogil:
            for s in range(self.n_slots):
                ring = self.len_p[s] == RING
                m = R if ring else self.len_p[s]
                if ring:
                    horizon = self._ring_horizon(<const Word*>(self.P + self.at_p[s] * W))
                for j in range(m):
                    cell = self.P + (self.at_p[s] + j) * W
                    if ring and not ring_cell_held(cell, horizon):
                        continue  # as _gather
                    lv[s] += 1
                    if self.layout.has_blocks:
                        for c in range(self.layout.ncols):
                            w = block_word(&self.layout.cols[c], &self.layout)
                            if w >= 0 and cell[w] < 0:
                                blocks += 1
        return lens, blocks

    @classmethod
    def from_bytes(cls, data):
        """Rebuild a view from `to_bytes()` output (this version's, the
        unpacked times of version 4, the dense HLL registers of version 3,
        or the dense rings of version 2)."""
        mv = memoryview(data)
        if bytes(mv[:4]) != _MAGIC or len(mv) < 12:
            raise WindowStateError("not a window view snapshot (bad magic)")
        version, hlen = struct.unpack("<II", mv[4:12])
        if version not in (2, 3, 4, 5, 6, 7, _FORMAT_VERSION):
            raise WindowStateError(f"window snapshot version {version}, expected {_FORMAT_VERSION}")
        meta = json.loads(bytes(mv[12:12 + hlen]))
        agg_specs = meta.get("agg_specs")
        cdef WindowView view = cls(spec_from_dict(meta["spec"]), [Agg(**a) for a in meta["aggs"]], meta["n_slots"],
                   meta["allowed_lateness"], meta["hll_p"], meta["max_sessions"],
                   None if agg_specs is None else [spec_from_dict(d) for d in agg_specs])
        # versions 2 and 3 held the registers in the cell, versions before 5 both
        # times unpacked, before 6 count words, before 7 `n` in a column only last_k
        # reads: convert their cells (W: their width)
        old_offs = None
        if version < 4:
            old_offs, W = view._column_offsets((view.hp.m + 7) // 8, W_COMMON, legacy=True)
        elif version < 6:
            W = view._column_offsets(_V5_HLL_WORDS, W_COMMON if version == 4 else None, legacy=True)[1]
        elif version == 6:
            W = view._column_offsets(HLL_WORDS, v6=True)[1]
        elif version == 7:
            W = view._column_offsets(HLL_WORDS, spill=False)[1]
        else:
            W = view.width
        view._check_meta(meta | {"width": view.width} if version < 8 and meta.get("width") == W else meta)
        n, off = meta["n_slots"], 12 + hlen
        counts = (n * view.ring_len * W, n, n) if version == 2 else (n, n, meta["cells"] * W)
        arrays = []
        for count in counts:
            end = off + 8 * count
            if end > len(mv):
                raise WindowStateError("window snapshot is truncated")
            # a view of the snapshot, not a copy: `_load` copies the cells into the pool
            arrays.append(np.frombuffer(mv[off:end], dtype="<i8"))
            off = end
        blocks = None
        if version >= 4:
            nb = meta.get("blocks", 0)
            end = off + nb * view.hp.m
            if not isinstance(nb, int) or nb < 0 or end > len(mv):
                raise WindowStateError("window snapshot is truncated")
            blocks = np.frombuffer(mv[off:end], dtype=np.uint8).reshape(nb, view.hp.m)
            off = end
        if off != len(mv):
            raise WindowStateError(f"window snapshot has {len(mv) - off} trailing bytes")
        if version == 2:
            lens, floors, cells = _from_dense(view, arrays[0].reshape(n, view.ring_len, W), arrays[1], arrays[2])
        else:
            lens, floors, cells = arrays[0], arrays[1], arrays[2].reshape(-1, W)
        if version < 4:
            cells, blocks = _dense_hll_cells(view, old_offs, cells)
        if version < 5:
            cells = _packed_cells(view, cells)
        if version < 6:
            cells = _v6_cells(view, cells)
        if version < 7:
            cells = _v7_cells(view, cells)
        if version < 8:
            cells, blocks = _v8_cells(view, cells, blocks)
        view._load(np.arange(n, dtype=np.int64), lens, floors, cells, blocks)
        view.watermark, view.late_count = meta["watermark"], meta["late_count"]
        view.part_watermarks = {int(p): int(w) for p, w in meta.get("part_watermarks", {}).items()}
        return view

    def _load(self, slots, lens, floors, cells, blocks=None):
        """Gives each slot its cells (lens[i] of `cells`, in order) and floor;
        `blocks`: the dense HLL registers the cells name (see _gather)."""
        cdef const int64_t[::1] sv = slots
        cdef const int64_t[::1] lv = np.ascontiguousarray(lens, dtype=np.int64)
        cdef const int64_t[::1] fv = np.ascontiguousarray(floors, dtype=np.int64)
        cells = np.ascontiguousarray(cells, dtype=np.int64)
        cdef const int64_t[:, ::1] cv = cells if cells.shape[0] else np.zeros((1, self.layout.width), np.int64)
        cdef Py_ssize_t q, o = 0, W = self.layout.width, m, k, j, c, w, skip
        cdef int64_t hdr, blk, nb, floor_k
        cdef bint bucketed = self.kind != K_LIFETIME and self.kind != K_SESSION
        blocks = np.zeros((0, self.hp.m), dtype=np.uint8) if blocks is None else \
            np.ascontiguousarray(blocks, dtype=np.uint8)
        if blocks.ndim != 2 or blocks.shape[1] != self.hp.m:
            raise WindowStateError(f"HLL blocks of shape {blocks.shape}, expected (n, {self.hp.m})")
        cdef const uint8_t[:, ::1] bv = blocks if blocks.shape[0] else np.zeros((1, self.hp.m), np.uint8)
        nb = blocks.shape[0]
        if self.layout.has_blocks and len(cells):
            hdrs = cells[:, self._block_offsets()]
            if hdrs.size and hdrs.min() < -nb:
                raise WindowStateError("window state names HLL registers or last_k buffers it does not hold")
            for off in self._hll_offsets():
                _check_hll_lists(cells[:, off:off + HLL_WORDS], self.hll_p)
        if self.kind != K_SESSION:   # floors and buckets an int32 floor cannot hold: int64 floors
            self._widen_for(np.asarray(fv))
            if len(cells):
                self._widen_for(cells[:, W_BUCKET])
        self.reset_slots(slots)
        total = int(np.asarray(lens).sum())
        if self.pool_top + 2 * total > self.pool_cap:
            self._grow_pool(2 * total + self._block_room())
        for q in range(sv.shape[0]):
            k = sv[q]
            m = lv[q]
            if m > self.ring_len:
                raise WindowStateError(f"slot {k} holds {m} cells; this view keeps at most {self.ring_len}")
            floor_k, skip = fv[q], 0
            if bucketed and m:
                # cells older than the key's last R buckets (a snapshot written before they
                # were dropped from rings on writing): dropped here, the floor raised
                while skip < m and cv[o + skip, W_BUCKET] < cv[o + m - 1, W_BUCKET] - self.ring_len + 1:
                    if cv[o + skip, W_COUNT] and cv[o + skip, W_BUCKET] > floor_k:
                        floor_k = cv[o + skip, W_BUCKET]
                    skip += 1
                o += skip
                m -= skip
            if m:
                if self._room(k, m) < 0:
                    self._grow_pool(self._block_room())
                    self._room(k, m)
                memcpy(self.P + self.at_p[k] * W, &cv[o, 0], m * W * sizeof(int64_t))
                if self.layout.has_blocks:
                    for j in range(m):
                        for c in range(self.layout.ncols):
                            w = block_word(&self.layout.cols[c], &self.layout)
                            if w < 0:
                                continue
                            hdr = cv[o + j, w]
                            if hdr < 0:
                                blk = hll_block_alloc(&self.hp)
                                if blk < 0:
                                    self._check_blocks()
                                memcpy(self.hp.B + blk * self.hp.m, &bv[-hdr - 1, 0], self.hp.m)
                                self.P[(self.at_p[k] + j) * W + w] = -(blk + 1)
                o += m
            self.len_p[k] = m
            fl_set(self, k, floor_k)

    def _check_meta(self, meta):
        mine = self.meta()
        diff = [k for k in dict.fromkeys([*mine, "agg_specs"]) if meta.get(k) != mine.get(k)]
        if diff:
            raise WindowStateError(f"window state does not match this view in {diff}")

    def export_slots(self, slots):
        """Copy of these keys' state: {"lens", "floor", "cells", "blocks"}
        (each key's cells in use, one after the other, and the dense HLL
        registers they name), for import_slots of an equal view."""
        lens, floors, cells, blocks = self._gather(slots)
        return {"lens": lens, "floor": floors, "cells": cells, "blocks": blocks}

    def import_slots(self, slots, state):
        """Overwrite these keys' state with `export_slots` output of an equal view."""
        s = self._check_slots(slots)
        lens = np.asarray(state["lens"], dtype=np.int64)
        cells = np.asarray(state["cells"], dtype=np.int64)
        if lens.shape != (len(s),) or cells.ndim != 2 or cells.shape[1] != self.layout.width \
                or cells.shape[0] != int(lens.sum()):
            raise WindowStateError(f"state of {len(lens)} keys with {cells.shape} cells does not fit "
                                   f"{len(s)} slots of width {self.layout.width}")
        self._load(s, lens, state["floor"], cells, state.get("blocks"))
        klt = self.key_last_ts()[s]
        if len(klt) and klt.max() > self.watermark:
            self.watermark = int(klt.max())

    def merge_from(self, WindowView other):
        """Fold another view's state (same definition, e.g. a shard or a
        backfill) into this one, slot by slot. Returns how many of its cells
        could not be held (older than this key's ring / dropped sessions)."""
        self._check_meta(other.meta())
        if other.n_slots > self.n_slots:
            self.grow(other.n_slots)
        cdef Py_ssize_t W = self.layout.width, s, r, m
        cdef int64_t dropped = 0
        cdef int rc
        cdef const int64_t* src
        if not other.floor32:
            self._widen_floors()
        for s in range(other.n_slots):
            m = other.ring_len if other.len_p[s] == RING else other.len_p[s]
            r = 0
            while r < m:
                src = other.P + other.at_p[s] * W + r * W
                if self.kind == K_SESSION or (src[W_BUCKET] != INT64_MIN and src[W_COUNT]):
                    rc = self._insert_cell(s, <const Word*>src, &other.layout)
                    if rc < 0:
                        self._grow_pool(self._block_room())
                        continue
                    dropped += rc
                r += 1
            fl_raise(self, s, fl_get(other, s))  # what the other had dropped, the merge lacks too
        self.watermark = max(self.watermark, other.watermark)
        for p, w in other.part_watermarks.items():
            self.part_watermarks[p] = max(self.part_watermarks.get(p, EMPTY), w)
        return dropped


def _from_dense(WindowView view, cells, evicted, nsess):
    """A version-2 snapshot's dense rings as runs: each key's cells with
    events, in bucket order, and the buckets its ring no longer held as the
    floor (sessions: the first nsess cells and their eviction mark)."""
    n, R, W = cells.shape
    lens = np.zeros(n, dtype=np.int64)
    floors = np.full(n, EMPTY, dtype=np.int64)
    out = []
    for s in range(n):
        ring = cells[s]
        if view.kind == K_SESSION:
            keep = ring[:int(nsess[s])]
            floors[s] = evicted[s]
        else:
            used = ring[(ring[:, 0] != EMPTY) & (ring[:, 1] > 0)]
            used = used[np.argsort(used[:, 0], kind="stable")]
            if view.kind == K_LIFETIME or not len(used):
                keep = used[:1] if view.kind == K_LIFETIME else used
            else:
                horizon = used[-1, 0] - R + 1
                gone = used[used[:, 0] < horizon]
                if len(gone):
                    floors[s] = gone[-1, 0]
                keep = used[used[:, 0] >= horizon]
        lens[s] = len(keep)
        out.append(keep)
    return lens, floors, np.concatenate(out) if out else np.zeros((0, W), np.int64)


class _Snapshot:
    """`WindowView.snapshot()`: the bytes of `to_bytes`, a slot range at a time."""

    def __init__(self, WindowView view, Py_ssize_t chunk_slots, Py_ssize_t chunk_bytes):
        self.view, self.chunk, self.chunk_bytes = view, max(1, chunk_slots), max(1, chunk_bytes)
        self.lens, self.blocks = view._census()
        parts = {"part_watermarks": {str(p): w for p, w in view.part_watermarks.items()}} \
            if view.part_watermarks else {}
        self.header = json.dumps(view.meta() | parts | {"n_slots": view.n_slots, "watermark": view.watermark,
                                                "late_count": view.late_count, "cells": int(self.lens.sum()),
                                                "blocks": int(self.blocks)}).encode()
        self.nbytes = (len(_MAGIC) + 8 + len(self.header) + 16 * view.n_slots
                       + 8 * int(self.lens.sum()) * view.width + int(self.blocks) * view.hll_block_bytes)

    def chunks(self):
        """Bytes-like chunks (memoryviews of the arrays made, not copies)."""
        view, n = self.view, self.view.n_slots
        yield _MAGIC + struct.pack("<II", _FORMAT_VERSION, len(self.header)) + self.header
        yield memoryview(self.lens.astype("<i8", copy=False))
        yield memoryview(view._floors().astype("<i8", copy=False))
        offs = view._block_offsets()
        held, named = [], 0
        # a range of at most `chunk` slots and about `chunk_bytes` of cells: a
        # copy-mode checkpoint encodes in the engine's process, and what a
        # range costs with the GIL held (numbering HLL blocks, making the
        # array) is what pushes and reads there wait (a 65,536-slot range of
        # keys with 100 events each was ~1 GB)
        cum, step = np.cumsum(self.lens) * (view.width * 8), self.chunk_bytes
        cuts = set(range(0, n, self.chunk))
        if n and cum[-1] > step:
            cuts.update((np.searchsorted(cum, np.arange(step, cum[-1], step)) + 1).tolist())
        bounds = sorted(c for c in cuts if c < n) + [n]
        for start, stop in zip(bounds, bounds[1:]):
            lens, _, cells, blocks = view._gather(np.arange(start, stop))
            if len(blocks):  # number this range's blocks after the ones before it
                part = cells[:, offs]
                cells[:, offs] = np.where(part < 0, part - named, part)
                held.append(blocks)
                named += len(blocks)
            yield memoryview(cells.astype("<i8", copy=False))
        if named != self.blocks:
            raise WindowStateError(f"window view changed while its snapshot was written ({named} HLL blocks, "
                                   f"{self.blocks} counted)")
        for b in held:
            yield memoryview(b)


def _packed_cells(WindowView view, cells):
    """Cells of a snapshot before version 5 (both times unpacked, W_COMMON
    words before the columns) in the layout of version 5."""
    if not view.layout.packed:
        return cells
    W = view._column_offsets(_V5_HLL_WORDS, legacy=True)[1]   # (version 5's width)
    cells = np.asarray(cells, dtype=np.int64).reshape(-1, W + 1)
    out = np.empty((len(cells), W), dtype=np.int64)
    out[:, :W_FIRST_TS] = cells[:, :W_FIRST_TS]
    out[:, W_COMMON_PACKED:] = cells[:, W_COMMON:]
    has = cells[:, W_COUNT] != 0
    origin = np.where(has, cells[:, W_BUCKET], 0) * view.hop
    first = np.where(has, cells[:, W_FIRST_TS] - origin, 0).astype(np.uint64)
    last = np.where(has, cells[:, W_LAST_TS] - origin, 0).astype(np.uint64)
    out[:, W_FIRST_TS] = ((first << np.uint64(32)) | last).view(np.int64)
    return out


def _dense_hll_cells(WindowView view, old_offs, cells):
    """Cells of a version 2/3 snapshot (registers dense in the cell, at
    old_offs) in the layout of version 4: (cells, blocks)."""
    new_offs, W = view._column_offsets(_V5_HLL_WORDS, W_COMMON, legacy=True)
    n, m = len(cells), view.hp.m
    out = np.empty((n, W), dtype=np.int64)
    out[:, :W_COMMON] = cells[:, :W_COMMON]
    blocks = []
    nblocks = 0
    for old, new in zip(old_offs, new_offs):
        for f in _FIELDS:
            if new[f] >= 0:
                out[:, new[f]] = cells[:, old[f]]
        if new["lastk"] >= 0:
            k = 1 + 2 * new["lastk_k"]
            out[:, new["lastk"]:new["lastk"] + k] = cells[:, old["lastk"]:old["lastk"] + k]
        if new["hll"] < 0:
            continue
        regs = np.ascontiguousarray(cells[:, old["hll"]:old["hll"] + (m + 7) // 8]).view(np.uint8)[:, :m]
        nnz = np.count_nonzero(regs, axis=1)
        area = np.zeros((n, _V5_HLL_WORDS), dtype=np.int64)
        sparse = nnz <= 8
        sr = regs[sparse]
        r, c = np.nonzero(sr)                       # row-major: ascending register index per cell
        starts = np.cumsum(nnz[sparse]) - nnz[sparse]
        entries = np.zeros((len(sr), 8), dtype=np.uint32)
        entries[r, np.arange(len(r)) - starts[r]] = (c.astype(np.uint32) << 8) | sr[r, c]
        area[sparse, 0] = nnz[sparse]
        area[sparse, 1:] = entries.view(np.int64)
        dense = np.flatnonzero(~sparse)
        area[dense, 0] = -(nblocks + np.arange(1, len(dense) + 1))
        blocks.append(regs[dense])
        nblocks += len(dense)
        out[:, new["hll"]:new["hll"] + _V5_HLL_WORDS] = area
    return out, (np.concatenate(blocks) if blocks else np.zeros((0, m), dtype=np.uint8))


def _check_hll_lists(area, int p):
    """Raises WindowStateError unless every sparse HLL list of `area` (rows
    of HLL_WORDS words; a dense one's word 0 < 0) is what hll_set makes:
    entries of a register below 2^p and a rank in 1 .. 65 - p, in
    ascending register order, zeros after them. (A list that is not would
    make a later insert write past the registers or keep stray entries.)"""
    area = np.asarray(area, dtype=np.int64)
    e = np.array(area[area[:, 0] >= 0], order="C").view(np.uint32)
    if not e.size:
        return
    used, idx, rank = e != 0, e >> 8, e & 0xFF
    if (used[:, 1:] & ~used[:, :-1]).any() or (used & ((idx >= (1 << p)) | (rank < 1) | (rank > 65 - p))).any() \
            or (used[:, 1:] & (idx[:, 1:] <= idx[:, :-1])).any():
        raise WindowStateError("window state holds an HLL register list that is not sorted, in range and packed")


def _v6_cells(WindowView view, cells):
    """Cells of a version-5 layout (every column with `n`; an HLL area of a
    count word and 8 entries; last_k's count word) in this layout."""
    old_offs, W = view._column_offsets(_V5_HLL_WORDS, legacy=True)
    new_offs, W6 = view._column_offsets(HLL_WORDS, v6=True)
    cells, out = _fields_moved(view, cells, old_offs, W, new_offs, W6)
    for old, new in zip(old_offs, new_offs):
        if new["lastk"] >= 0:
            k2 = 2 * new["lastk_k"]
            out[:, new["lastk"]:new["lastk"] + k2] = cells[:, old["lastk"] + 1:old["lastk"] + 1 + k2]
        if new["hll"] >= 0:
            hdr = cells[:, old["hll"]]
            entries = np.array(cells[:, old["hll"] + 1:old["hll"] + _V5_HLL_WORDS], order="C").view(np.uint32)
            entries[np.arange(entries.shape[1]) >= np.maximum(hdr, 0)[:, None]] = 0   # (past the count: unused)
            area = entries.view(np.int64)
            area[hdr < 0] = 0
            area[hdr < 0, 0] = hdr[hdr < 0]
            out[:, new["hll"]:new["hll"] + HLL_WORDS] = area
    return out


def _fields_moved(WindowView view, cells, old_offs, Py_ssize_t W, new_offs, Py_ssize_t width):
    """A layout conversion's shared part: (the cells as rows of W words, new
    cells of `width` words holding their common words and each column's
    one-word fields at new_offs); the caller moves the HLL and last_k areas."""
    cells = np.asarray(cells, dtype=np.int64).reshape(-1, W)
    common = W_COMMON_PACKED if view.layout.packed else W_COMMON
    out = np.zeros((len(cells), width), dtype=np.int64)
    out[:, :common] = cells[:, :common]
    for old, new in zip(old_offs, new_offs):
        for f in _FIELDS:
            if new[f] >= 0:
                out[:, new[f]] = cells[:, old[f]]
    return cells, out


def _v7_cells(WindowView view, cells):
    """Cells of the version-6 layout (`n` in a column only last_k and
    approx_count_distinct read) in this layout: such a column's `n` gone,
    its last_k buffer's unused times INT64_MIN (what says how many are in
    use without it)."""
    old_offs, W = view._column_offsets(HLL_WORDS, v6=True)
    if W == view._column_offsets(HLL_WORDS, spill=False)[1]:
        return cells
    new_offs, W7 = view._column_offsets(HLL_WORDS, spill=False)
    cells, out = _fields_moved(view, cells, old_offs, W, new_offs, W7)
    for old, new in zip(old_offs, new_offs):
        if new["hll"] >= 0:
            out[:, new["hll"]:new["hll"] + HLL_WORDS] = cells[:, old["hll"]:old["hll"] + HLL_WORDS]
        if new["lastk"] >= 0:
            k = new["lastk_k"]
            buf = np.array(cells[:, old["lastk"]:old["lastk"] + 2 * k])
            if new["n"] < 0:
                unused = np.arange(k) >= np.minimum(cells[:, old["n"]], k)[:, None]
                buf[:, :k][unused] = INT64_MIN
            out[:, new["lastk"]:new["lastk"] + 2 * k] = buf
    return out


def _v8_cells(WindowView view, cells, blocks):
    """Cells of the version-7 layout (every last_k buffer 2k words in the
    cell) in this layout: (cells, blocks). A view with last_k buffers sized
    by use (window.pxd, Layout.lastk_spill) holds a buffer of at most one
    entry in the cell and a longer one in a block; its cells name no other
    blocks (it has no approx_count_distinct), so `blocks` is empty."""
    if not view.layout.lastk_spill:
        return cells, blocks
    old_offs, W = view._column_offsets(HLL_WORDS, spill=False)
    new_offs, _ = view._column_offsets(HLL_WORDS)
    cells, out = _fields_moved(view, cells, old_offs, W, new_offs, view.width)
    blocks = np.zeros((0, view.hp.m), dtype=np.uint8)
    for old, new in zip(old_offs, new_offs):
        if new["lastk"] < 0:
            continue
        k, at = new["lastk_k"], new["lastk"]
        buf = cells[:, old["lastk"]:old["lastk"] + 2 * k]
        if old["n"] >= 0:   # (its unused times were not marked: `n` says how many are in use)
            held = np.minimum(cells[:, old["n"]], k)
        else:
            held = (buf[:, :k] != INT64_MIN).sum(axis=1)
        one = held == 1
        out[:, at + 1] = np.where(one, buf[:, 0], INT64_MIN)
        out[:, at + 2] = np.where(one, buf[:, k], 0)
        many = np.flatnonzero(held >= 2)
        if len(many):
            b = np.array(buf[many])
            b[:, :k][np.arange(k) >= held[many][:, None]] = INT64_MIN
            b[:, k:][np.arange(k) >= held[many][:, None]] = 0
            blocks = np.ascontiguousarray(b.astype("<i8")).view(np.uint8).reshape(len(many), 16 * k)
            out[many, at] = -np.arange(1, len(many) + 1)
            out[many, at + 1] = 0
    return out, blocks


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
