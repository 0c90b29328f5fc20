# The contract of fscore.window: the state layout and the kernels over it.
#
# A cell is one partial aggregate (a hop bucket, the lifetime bucket, or one
# session): one row of W int64 words (Word), every field one word. Field
# offsets are described by Layout.
#
# Sparse state: a key owns a *run* of cells in one shared pool (int64 matrix
# `pool` of shape (pool_cap, W)): `run_at[s]` its first cell, `run_len[s]`
# the cells in use, `run_cls[s]` the run's size class. A key holds only the cells it
# has events in — buckets in ascending order (sessions: by start) — so a key
# with one event costs one cell per window, not a whole ring. A run grows by
# size class up to `ring_len` (the most cells a key can need; semantics.md §5)
# when a new cell does not fit; a freed run goes back to the buddy allocator
# as aligned power-of-two blocks, each merged with its buddy while that is free.

from libc.stdint cimport int64_t, int32_t, uint64_t, uint8_t

ctypedef union Word:
    int64_t i
    double f

# Offsets of the fields every cell has.
cdef enum:
    W_BUCKET = 0      # hop bucket id = floor(ts / hop); EMPTY when the cell is unused
    W_COUNT = 1       # count(*): events, nulls included
    W_FIRST_TS = 2    # min ts of the cell's events (session start; exactness checks)
    W_LAST_TS = 3     # max ts of the cell's events (session end; exactness checks, TTL)
    W_COMMON = 4
# A packed layout (Layout.packed: hop windows whose hop is at most 2^32 us,
# ~71 min) holds both times in word W_FIRST_TS as offsets from the bucket's
# start, first << 32 | last (0 while the cell has no event), and its columns
# start at word 3: read them with cell_first_ts / cell_last_ts (only of a
# cell with events).
cdef enum:
    W_COMMON_PACKED = 3

# Per input column: word offset of each partial field, -1 when no aggregation
# of the view needs it. `n` (non-null count) is present unless the column's
# only aggregation is approx_count_distinct (its registers are its state).
ctypedef struct ColLayout:
    Py_ssize_t n
    Py_ssize_t sum
    Py_ssize_t wmean        # Welford running mean (for var/stddev)
    Py_ssize_t m2           # Welford sum of squared deviations
    Py_ssize_t vmin
    Py_ssize_t vmax
    Py_ssize_t first_ts
    Py_ssize_t first_val
    Py_ssize_t last_ts
    Py_ssize_t last_val
    Py_ssize_t hll          # HLL_WORDS words: a sparse list of registers, or a dense block's id
    Py_ssize_t hll_row      # row of this column in the hash matrix, or -1
    Py_ssize_t lastk        # [k ts, newest first][k values]: min(n, k) of them in use
                            # (Layout.lastk_spill: 3 words, below)
    Py_ssize_t lastk_k

# approx_count_distinct registers (2^p bytes) are sparse until a cell has
# more than HLL_SPARSE_MAX non-zero registers (as Redis encodes HLLs): the
# cell's HLL_WORDS words hold uint32 entries (register index << 8 | rank,
# never 0: a rank is >= 1) in ascending index order, the unused ones 0 after
# them; past that the cell owns a dense block of the view's HllPool and word
# 0 = -(block + 1), the rest 0. (An entry's top bit is 0 for p <= 23, so a
# sparse word 0 is >= 0. Until version 6 a count word came first: 1 word a
# cell more.) A cell owns its block: moving a cell moves it, dropping or
# overwriting a cell releases it (cell_release), copying a cell into another
# view copies it (cell_copy_in).
cdef enum:
    HLL_WORDS = 4
    HLL_SPARSE_MAX = 8      # 2 * HLL_WORDS

# Where an HllPool's blocks live. A small pool is malloc'd and grows by
# realloc; past HLL_RESERVE_FROM bytes it moves once into an address-space
# reservation (pages are touched as blocks are handed out) and never moves
# again, so a copy-mode checkpoint can copy the blocks outside the writer's
# lock (frozen_begin). A frozen copy borrows its blocks from a numpy array.
cdef enum:
    HLL_MALLOC = 0
    HLL_RESERVED = 1
    HLL_BORROWED = 2

ctypedef struct HllPool:
    uint8_t* B              # blocks of m bytes (where: `home`)
    int home                # HLL_MALLOC / HLL_RESERVED / HLL_BORROWED
    int64_t m               # bytes per block: 2^p registers, or 16 k (spilled last_k buffers)
    int64_t cap             # blocks allocated
    int64_t top             # blocks [0, top) have been handed out
    int64_t free_head       # a free block's first 8 bytes link to the next (-1: none)
    int64_t used            # blocks owned by cells
    int failed              # an allocation failed (the caller raises MemoryError)

# last_k buffers sized by use (Layout.lastk_spill: a view whose one last_k
# column has k >= 2 and that has no approx_count_distinct, so its block pool
# is free for them, with blocks of 16 k bytes): the column's area is 3 words,
# [ref, ts, value]. ref 0: the area holds at most one entry (ts INT64_MIN:
# none); ref -(block + 1): the buffer [k ts][k values] (newest first, unused
# times INT64_MIN) is that block of the pool, and ts, value are 0. A key with
# one event holds 3 words instead of 2 k (the starter repo's lifetime
# last_k(amount, 5): 7-word cells, not 14); a second entry moves the buffer
# into a block. A block is owned like a dense HLL block (cell_release,
# cell_copy_in, snapshots): one block-naming word a column (block_word).
ctypedef struct Layout:
    Py_ssize_t width        # words per cell
    bint packed             # first/last ts packed into one word (above)
    int64_t hop             # the window's hop (packed: the offsets' origin is bucket * hop)
    Py_ssize_t ncols
    int hll_p
    bint has_blocks         # cells may name blocks of `hp` (HLL registers or spilled last_k buffers)
    bint lastk_spill        # last_k buffers sized by use (above)
    HllPool* hp             # where this layout's cells keep dense registers / last_k buffers
    ColLayout* cols

# Output kinds (finalisation of a merged cell into one aggregation's value).
cdef enum OutKind:
    O_COUNT_STAR, O_COUNT, O_SUM, O_MEAN, O_MIN, O_MAX, O_FIRST, O_LAST,
    O_VAR_SAMP, O_VAR_POP, O_STD_SAMP, O_STD_POP, O_HLL, O_LAST_K

ctypedef struct OutSpec:
    int kind
    Py_ssize_t col          # input column index, -1 for count(*)
    Py_ssize_t row          # first row in the float (or int) output matrix
    Py_ssize_t k            # last_k width

# Aggregations that read the same buckets the same way: a plain view has one
# group; a view whose aggregations have windows of their own over one hop
# (WindowView agg_specs) has one per distinct (kind, buckets). A group's
# layout is the view's with only the columns and fields its aggregations
# need (its `cols` its own; OutSpec.col indexes them), so a query merges no
# word it does not finalise.
ctypedef struct Group:
    int kind                # K_BUCKETED or K_CONTINUOUS (unused by sessions and lifetime)
    int64_t nb              # closed buckets the window covers
    Layout L
    OutSpec* outs
    Py_ssize_t nout

# Cell kernels: add / merge / finalise over state passed by pointer.
cdef void cell_reset(Word* c, const Layout* L) noexcept nogil
cdef void cell_add(Word* c, const Layout* L, int64_t ts, const double* x, Py_ssize_t xstride,
                   const uint64_t* h, Py_ssize_t hstride) noexcept nogil
cdef void cell_merge(Word* dst, const Word* src, const Layout* L) noexcept nogil
cdef void cell_merge_from(Word* dst, const Layout* L, const Word* src, const Layout* Ls) noexcept nogil
cdef void cell_release(Word* c, const Layout* L) noexcept nogil
cdef void cell_copy_in(Word* dst, const Layout* L, const Word* src, const Layout* Ls) noexcept nogil
cdef void cell_finalize(const Word* c, const Layout* L, const OutSpec* outs, Py_ssize_t nout,
                        double* of, int64_t* oi, Py_ssize_t nq, Py_ssize_t q) noexcept nogil
cdef int64_t cell_first_ts(const Word* c, const Layout* L) noexcept nogil
cdef int64_t cell_last_ts(const Word* c, const Layout* L) noexcept nogil
cdef uint64_t hash_double(double x) noexcept nogil
cdef uint64_t hash_int64(int64_t x) noexcept nogil

# Session kernels (cells of one key kept sorted by start time).
cdef int session_insert(Word* cells, Py_ssize_t ring, int64_t* nsess, int64_t* evicted_last_ts,
                        const Word* span, int64_t gap, const Layout* L, const Layout* Ls) noexcept nogil

# Size classes of runs: capacities 1, 2, 3, 4, 6, 8, 12, ... below ring_len,
# then ring_len.
# Free blocks are kept per level k (2^k cells, k <= top_level).
cdef enum:
    MAX_CLASSES = 64


cdef class WindowView:
    cdef readonly object spec
    cdef readonly tuple aggs
    cdef readonly tuple columns
    cdef readonly int64_t allowed_lateness
    cdef readonly int hll_p
    cdef readonly int max_sessions
    cdef readonly Py_ssize_t n_slots
    cdef readonly Py_ssize_t ring_len
    # Per-stream watermark: max ts of every applied event (EMPTY before any).
    cdef readonly int64_t watermark
    cdef readonly int64_t late_count
    # Watermarks of tagged events (update(..., parts=)): {part: max ts}; untagged ones use `watermark`
    cdef readonly dict part_watermarks

    cdef int kind
    cdef int64_t hop
    cdef int64_t gap
    cdef Layout layout
    cdef HllPool hp               # dense HLL blocks (layout.hp points here)
    cdef object hll_owner         # a frozen copy: the array its blocks are borrowed from
    cdef OutSpec* outs
    cdef Py_ssize_t nout
    cdef readonly tuple agg_specs   # per aggregation its own window, or None (all `spec`)
    cdef Group* groups
    cdef Py_ssize_t n_groups
    cdef ColLayout* g_cols        # the groups' columns, back to back
    cdef OutSpec* g_outs          # the groups' outputs, back to back
    cdef Py_ssize_t n_float_out
    cdef Py_ssize_t n_int_out
    cdef object out_meta          # list of (name, kind, row, k, is_int)
    cdef object hll_cols          # column indices that feed approx_count_distinct

    cdef readonly object pool     # int64 (pool_cap, width): every key's cells
    cdef readonly int64_t cells_held   # cells in the keys' runs (allocated; free runs excluded)
    cdef bint pool_mapped         # the pool is a virtual reservation: pages are touched as cells are handed out
    cdef readonly Py_ssize_t pool_top  # cells [0, pool_top) have been handed out
    cdef Py_ssize_t pool_cap
    cdef int64_t* P               # the pool's data (refreshed when it grows)
    cdef int32_t* at_p            # the per-slot arrays' data (refreshed when they grow)
    cdef int32_t* len_p
    cdef uint8_t* cls_p           # run_cls: the run's size class + 1 (0: no run); cap_of[] its cells
    cdef int64_t* floor_p         # the floors, int64 (NULL while floor32)
    cdef int32_t* floor32_p       # the floors, int32 while floor32 (EMPTY: INT32_MIN)
    cdef bint floor32             # floor_ is int32 (a view of buckets that all fit; fl_get / fl_set)
    cdef int64_t* tmpl_p          # the template's data
    cdef object run_at            # int32 (n_slots,): first cell of the key's run, -1 for none
    cdef object run_len           # int32 (n_slots,): cells in use
    cdef object run_cls           # uint8 (n_slots,): the run's size class + 1 (0: none; n_classes: ring_len cells)
    cdef object floor_            # (n_slots,): bucketed: the newest bucket dropped from the key
                                  # (EMPTY: none); sessions: end of the newest dropped session.
                                  # int32 for hop and lifetime views while every bucket they were
                                  # given fits (_widen_floors: int64 for good), else int64
    cdef object _slot_room        # grow()'s buffers the four arrays above view, with room for more
                                  # slots (None: none made yet; an array that is not a view of
                                  # its buffer is copied into a new one at the next grow)
    cdef int n_classes
    cdef int64_t class_cap[MAX_CLASSES]
    cdef int64_t cap_of[MAX_CLASSES + 1]  # cells of a run of run_cls k: 0, then class_cap[k - 1]
    cdef int top_level            # the biggest block: 2^top_level >= ring_len
    cdef int64_t free_head[MAX_CLASSES]   # per level, a free block (-1: none); its first cell holds
                                          # word 0 = next, 1 = previous, 2 = level
    cdef object free_bits         # uint8 (pool_cap / 8 rounded up): bit set = a free block starts here
    cdef uint8_t* fb_p
    cdef object template          # int64 (width,): a reset cell
    # copy-mode checkpoints (track_writes / frozen_begin / frozen_end): while
    # `tracking`, every slot whose run or cells change gets dirty_p[slot] = 1
    cdef bint tracking
    cdef object dirty             # uint8 (n_slots,) while tracking
    cdef uint8_t* dirty_p
    cdef object _track            # what track_writes() saw: pool, top, per-slot arrays
    cdef object scratch           # int64 (2, width): query / event accumulators

    cdef _build_layout(self)
    cdef _build_groups(self, list col_offs)
    cdef int _class_of(self, int64_t cap) noexcept nogil
    cdef uint8_t _snug_cls(self, int64_t ln) noexcept nogil
    cdef int64_t _alloc(self, int64_t cap) noexcept nogil
    cdef void _free(self, int64_t at, int64_t cap) noexcept nogil
    cdef void _push_block(self, int64_t at, int k) noexcept nogil
    cdef void _unlink_block(self, int64_t at, int k) noexcept nogil
    cdef void _free_block(self, int64_t at, int k) noexcept nogil
    cdef void _release_range(self, int64_t at, int64_t n) noexcept nogil
    cdef int _room(self, Py_ssize_t s, int64_t need) noexcept nogil
    cdef int _to_ring(self, Py_ssize_t s) noexcept nogil
    cdef int64_t _held_floor(self, const Word* key, Py_ssize_t n, Py_ssize_t s) noexcept nogil
    cdef int64_t _top_bucket(self, const Word* key, Py_ssize_t n) noexcept nogil
    cdef int64_t _ring_horizon(self, const Word* key) noexcept nogil
    cdef int _query(self, const int64_t[::1] slots, const int64_t[::1] tq, double[:, ::1] of,
                    int64_t[:, ::1] oi, uint8_t[::1] exact) except -1
    cdef Py_ssize_t _apply(self, Py_ssize_t start, const int64_t[::1] slots, const int64_t[::1] ts,
                           const double[:, ::1] x, const uint64_t[:, ::1] h, uint8_t[::1] late,
                           const int64_t[::1] gi, int64_t[::1] gw) except -2
    cdef int _insert_cell(self, Py_ssize_t s, const Word* src, const Layout* Ls) noexcept nogil
    cdef _check_blocks(self)
