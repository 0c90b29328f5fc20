# Cell kernels of fscore.window (included by window.pyx; contract in window.pxd).
#
# A cell is the partial aggregate of one hop bucket / session / lifetime. The
# kernels follow pandas' window triplet minus `remove`: buckets are never
# subtracted from, only built (add) and combined (merge), so no aggregation
# needs an inverse and nothing drifts numerically. Every kernel here is
# arithmetic on memory it is handed: noexcept nogil.

from libc.math cimport isnan, sqrt, ldexp, log, floor, INFINITY, NAN
from libc.string cimport memcpy, memmove, memset
from libc.stdint cimport INT64_MIN, INT64_MAX, uint32_t
from libc.stdlib cimport malloc, realloc, free

cdef extern from "<sys/mman.h>" nogil:
    void* sys_mmap "mmap"(void* addr, size_t length, int prot, int flags, int fd, long offset)
    int sys_munmap "munmap"(void* addr, size_t length)
    int sys_madvise "madvise"(void* addr, size_t length, int advice)
    void* MAP_FAILED
    int PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS, MAP_NORESERVE, MADV_HUGEPAGE

# An HLL pool past this many bytes moves into a reservation of HLL_RESERVE_BYTES
# (address space only: 2^28 blocks at p = 8; no memory is committed until
# touched). _hll_reserve_from() changes the threshold for tests.
cdef size_t HLL_RESERVE_BYTES = (<size_t>1) << 36
cdef int64_t hll_reserve_from = 4 << 20

cdef extern from *:
    """
    #include <stdint.h>
    static inline int fs_clz64(uint64_t x) { return x ? __builtin_clzll(x) : 64; }
    """
    int fs_clz64(uint64_t x) noexcept nogil

cdef extern from *:
    """
    #define fs_prefetch_w(p) __builtin_prefetch((const void*)(p), 1, 3)
    """
    void prefetch_w "fs_prefetch_w"(const void* p) noexcept nogil

# last_k merge keeps its scratch on the stack; window_spec.MAX_LAST_K matches.
cdef enum:
    LASTK_MAX = 256
    PREFETCH_AHEAD = 16     # events; ~ memory latency / per-event work


cdef inline int64_t floor_div(int64_t a, int64_t b) noexcept nogil:
    # C division truncates toward zero; windows align toward -inf (epoch aligned
    # also before 1970).
    cdef int64_t q = a / b
    if a % b < 0:
        q -= 1
    return q


cdef inline int64_t floor_mod(int64_t a, int64_t b) noexcept nogil:
    cdef int64_t r = a % b
    if r < 0:
        r += b
    return r


cdef uint64_t hash_int64(int64_t x) noexcept nogil:
    # splitmix64 finaliser: a bijection with full avalanche, so HLL sees
    # uniform bits even for sequential ids. Same in window_spec.splitmix64.
    cdef uint64_t z = <uint64_t>x + <uint64_t>0x9E3779B97F4A7C15ULL
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef uint64_t hash_double(double x) noexcept nogil:
    # Integral values hash as the int64 they equal, so an id column read as
    # float64 counts the same as its int64 original (and -0.0 == 0).
    cdef Word w
    if x >= -9223372036854775808.0 and x < 9223372036854775808.0 and x == floor(x):
        return hash_int64(<int64_t>x)
    w.f = x
    return hash_int64(w.i)


cdef int hll_grow(HllPool* hp) noexcept nogil:
    # Doubles the blocks the pool can hand out (-1: no memory). Malloc'd: by
    # realloc (B may move), until past hll_reserve_from, when the blocks move
    # once into a reservation; reserved: B stays where it is; borrowed (a
    # frozen copy written to): into a malloc'd buffer of its own.
    cdef int64_t cap = hp.cap * 2 if hp.cap >= 8 else 8
    cdef uint8_t* nb
    cdef void* r
    if hp.home == HLL_RESERVED:
        if <size_t>(cap * hp.m) > HLL_RESERVE_BYTES:
            return -1
        hp.cap = cap
        return 0
    if hp.home == HLL_MALLOC and cap * hp.m > hll_reserve_from:
        r = sys_mmap(NULL, HLL_RESERVE_BYTES, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        if r != MAP_FAILED:  # else (no overcommit) it stays malloc'd
            sys_madvise(r, HLL_RESERVE_BYTES, MADV_HUGEPAGE)  # fewer pages for fork() to copy
            if hp.top:
                memcpy(r, hp.B, hp.top * hp.m)
            free(hp.B)
            hp.B, hp.home, hp.cap = <uint8_t*>r, HLL_RESERVED, cap
            return 0
    if hp.home == HLL_BORROWED:
        nb = <uint8_t*>malloc(cap * hp.m)
        if nb != NULL and hp.top:
            memcpy(nb, hp.B, hp.top * hp.m)
    else:
        nb = <uint8_t*>realloc(hp.B, cap * hp.m)
    if nb == NULL:
        return -1
    hp.B, hp.home, hp.cap = nb, HLL_MALLOC, cap
    return 0


cdef void hll_pool_release(HllPool* hp) noexcept nogil:
    if hp.home == HLL_RESERVED:
        sys_munmap(hp.B, HLL_RESERVE_BYTES)
    elif hp.home == HLL_MALLOC:
        free(hp.B)
    hp.B, hp.home, hp.cap, hp.top, hp.used, hp.free_head = NULL, HLL_MALLOC, 0, 0, 0, -1


cdef int64_t hll_block_alloc(HllPool* hp) noexcept nogil:
    # A zeroed block: a free one, or the next from the top (a malloc'd buffer
    # grows by realloc: block pointers are re-derived after every allocation).
    cdef int64_t b = hp.free_head
    if b >= 0:
        memcpy(&hp.free_head, hp.B + b * hp.m, sizeof(int64_t))
    else:
        if hp.top == hp.cap and hll_grow(hp) < 0:
            hp.failed = 1
            return -1
        b = hp.top
        hp.top += 1
    memset(hp.B + b * hp.m, 0, hp.m)
    hp.used += 1
    return b


cdef inline void hll_block_free(HllPool* hp, int64_t b) noexcept nogil:
    memcpy(hp.B + b * hp.m, &hp.free_head, sizeof(int64_t))
    hp.free_head = b
    hp.used -= 1


cdef inline uint8_t hll_rank(uint64_t h, int p) noexcept nogil:
    cdef uint64_t w = h << p
    return <uint8_t>(fs_clz64(w) + 1 if w else 64 - p + 1)


cdef inline Py_ssize_t hll_sparse_n(const Word* a) noexcept nogil:
    # entries of a sparse list: the non-zero ones before the first zero
    cdef const uint32_t* e = <const uint32_t*>a
    cdef Py_ssize_t n = 0
    while n < HLL_SPARSE_MAX and e[n]:
        n += 1
    return n


cdef void hll_set(Word* a, HllPool* hp, uint32_t idx, uint8_t rank) noexcept nogil:
    # register idx = max(register idx, rank), in whichever encoding `a` has;
    # a sparse list that would pass HLL_SPARSE_MAX entries turns dense.
    cdef int64_t blk
    cdef uint32_t* e = <uint32_t*>a
    cdef uint8_t* regs
    cdef Py_ssize_t j = 0, n
    if a[0].i < 0:
        regs = hp.B + (-a[0].i - 1) * hp.m
        if rank > regs[idx]:
            regs[idx] = rank
        return
    n = hll_sparse_n(a)
    while j < n and (e[j] >> 8) < idx:
        j += 1
    if j < n and (e[j] >> 8) == idx:
        if rank > (e[j] & 0xFF):
            e[j] = (idx << 8) | rank
        return
    if n < HLL_SPARSE_MAX:
        memmove(e + j + 1, e + j, (n - j) * sizeof(uint32_t))
        e[j] = (idx << 8) | rank
        return
    blk = hll_block_alloc(hp)
    if blk < 0:
        return
    regs = hp.B + blk * hp.m
    for j in range(n):
        regs[e[j] >> 8] = <uint8_t>(e[j] & 0xFF)
    regs[idx] = rank
    memset(a, 0, HLL_WORDS * sizeof(Word))
    a[0].i = -(blk + 1)


cdef inline void hll_add(Word* a, HllPool* hp, int p, uint64_t h) noexcept nogil:
    hll_set(a, hp, <uint32_t>(h >> (64 - p)), hll_rank(h, p))


cdef void hll_merge(Word* d, HllPool* hd, const Word* s, HllPool* hs) noexcept nogil:
    cdef int64_t hdr = s[0].i, blk
    cdef const uint32_t* e = <const uint32_t*>s
    cdef const uint8_t* rs
    cdef uint8_t* rd
    cdef Py_ssize_t j, n
    if hdr >= 0:
        for j in range(hll_sparse_n(s)):
            hll_set(d, hd, e[j] >> 8, <uint8_t>(e[j] & 0xFF))
        return
    if d[0].i >= 0:  # the union has the source's > HLL_SPARSE_MAX registers: dense
        blk = hll_block_alloc(hd)
        if blk < 0:
            return
        rd = hd.B + blk * hd.m
        e = <const uint32_t*>d
        n = hll_sparse_n(d)
        for j in range(n):
            rd[e[j] >> 8] = <uint8_t>(e[j] & 0xFF)
        memset(d, 0, HLL_WORDS * sizeof(Word))
        d[0].i = -(blk + 1)
    rd = hd.B + (-d[0].i - 1) * hd.m
    rs = hs.B + (-hdr - 1) * hs.m   # after the allocation: hd may be hs, moved by realloc
    for j in range(hd.m):
        if rs[j] > rd[j]:
            rd[j] = rs[j]


cdef int64_t hll_count(const Word* a, const HllPool* hp, int p) noexcept nogil:
    # The estimate of window_ref.hll_estimate_registers. A sparse list has at
    # most HLL_SPARSE_MAX < m/2 registers set, where the raw estimate is
    # always in linear counting's range (alpha m^2 / z with z >= m - 8 is
    # below 2.5 m for every m >= 16): the same double, without the registers.
    cdef int64_t n = a[0].i
    cdef double md
    if n < 0:
        return hll_estimate(hp.B + (-n - 1) * hp.m, p)
    n = hll_sparse_n(a)
    if n == 0:
        return 0
    md = <double>((<int64_t>1) << p)
    return <int64_t>floor(md * log(md / <double>((<int64_t>1 << p) - n)) + 0.5)


cdef inline int64_t hll_estimate(const uint8_t* regs, int p) noexcept nogil:
    # Flajolet et al. with linear counting for small cardinalities; a 64-bit
    # hash needs no large-range correction. Summed in register order, exactly
    # like window_ref.hll_estimate_registers, so oracle tests compare equal.
    cdef Py_ssize_t j, m = (<Py_ssize_t>1) << p
    cdef double z = 0.0, e, alpha, md = <double>m
    cdef Py_ssize_t zeros = 0
    cdef bint any_set = False
    for j in range(m):
        z += ldexp(1.0, -regs[j])
        if regs[j] == 0:
            zeros += 1
        else:
            any_set = True
    if not any_set:
        return 0
    if m == 16:
        alpha = 0.673
    elif m == 32:
        alpha = 0.697
    elif m == 64:
        alpha = 0.709
    else:
        alpha = 0.7213 / (1.0 + 1.079 / md)
    e = alpha * md * md / z
    if e <= 2.5 * md and zeros:
        e = md * log(md / <double>zeros)
    return <int64_t>floor(e + 0.5)


cdef inline Py_ssize_t lastk_count(const Word* b, Py_ssize_t k) noexcept nogil:
    # Entries in use of a buffer whose column keeps no `n` (since version 7):
    # its unused times are INT64_MIN (cell_reset), never an event's.
    cdef Py_ssize_t j = 0
    while j < k and b[j].i != INT64_MIN:
        j += 1
    return j


cdef inline void lastk_insert(Word* b, Py_ssize_t k, Py_ssize_t cnt, int64_t ts, double v) noexcept nogil:
    # b = [k ts][k values], newest first, `cnt` of them in use (min(n, k) of
    # the column's n before this value). At equal ts the newcomer is the
    # later arrival, so it goes before the entries it ties with.
    cdef Py_ssize_t p = 0, j, end
    cdef Word* bts = b
    cdef Word* bv = b + k
    while p < cnt and bts[p].i > ts:
        p += 1
    if p >= k:
        return
    end = cnt if cnt < k else k - 1
    j = end
    while j > p:
        bts[j] = bts[j - 1]
        bv[j] = bv[j - 1]
        j -= 1
    bts[p].i = ts
    bv[p].f = v


cdef inline void lastk_merge(Word* d, const Word* s, Py_ssize_t k, Py_ssize_t nd, Py_ssize_t ns) noexcept nogil:
    # d ⊕ s of nd and ns entries (min(n, k) of each); s holds the later
    # arrivals: it wins ties on ts.
    cdef int64_t tts[LASTK_MAX]
    cdef double tvs[LASTK_MAX]
    cdef Py_ssize_t i = 0, j = 0, o = 0
    while o < k and (i < nd or j < ns):
        if j < ns and (i >= nd or s[j].i >= d[i].i):
            tts[o] = s[j].i
            tvs[o] = s[k + j].f
            j += 1
        else:
            tts[o] = d[i].i
            tvs[o] = d[k + i].f
            i += 1
        o += 1
    for i in range(o):
        d[i].i = tts[i]
        d[k + i].f = tvs[i]


cdef inline Py_ssize_t block_word(const ColLayout* cl, const Layout* L) noexcept nogil:
    # The word of a column's area that may name a block of L.hp (-(block + 1)),
    # or -1: an HLL area's word 0, a spilled last_k area's ref (window.pxd).
    if cl.hll >= 0:
        return cl.hll
    if L.lastk_spill and cl.lastk >= 0:
        return cl.lastk
    return -1


cdef inline Word* lastk_block(const Word* r, const HllPool* hp) noexcept nogil:
    # the buffer a spilled last_k area (ref < 0) names
    return <Word*>(hp.B + (-r[0].i - 1) * hp.m)


cdef inline Py_ssize_t lastk_area(const Word* r, const HllPool* hp, Py_ssize_t k, int64_t* ts,
                                  double* vs) noexcept nogil:
    # A spilled last_k area's entries (newest first) copied out; returns how many.
    cdef const Word* b
    cdef Py_ssize_t j, n
    if r[0].i < 0:
        b = lastk_block(r, hp)
        n = lastk_count(b, k)
        for j in range(n):
            ts[j] = b[j].i
            vs[j] = b[k + j].f
        return n
    if r[1].i == INT64_MIN:
        return 0
    ts[0] = r[1].i
    vs[0] = r[2].f
    return 1


cdef Word* lastk_spill(Word* r, HllPool* hp, Py_ssize_t k) noexcept nogil:
    # The area's buffer, moved into a block of its own if it is inline (its
    # entry, if any, first); NULL when no block could be had (hp.failed).
    cdef int64_t blk
    cdef Word* b
    cdef Py_ssize_t j
    if r[0].i < 0:
        return lastk_block(r, hp)
    blk = hll_block_alloc(hp)
    if blk < 0:
        return NULL
    b = <Word*>(hp.B + blk * hp.m)
    for j in range(k):
        b[j].i = INT64_MIN
    if r[1].i != INT64_MIN:
        b[0].i = r[1].i
        b[k].f = r[2].f
    r[0].i = -(blk + 1)
    r[1].i = 0
    r[2].i = 0
    return b


cdef inline void lastk_spill_insert(Word* r, HllPool* hp, Py_ssize_t k, int64_t ts, double v) noexcept nogil:
    # lastk_insert into a spilled area (newcomer first among equal times)
    cdef Word* b
    if r[0].i == 0 and r[1].i == INT64_MIN:
        r[1].i = ts
        r[2].f = v
        return
    b = lastk_spill(r, hp, k)
    if b != NULL:
        lastk_insert(b, k, lastk_count(b, k), ts, v)


cdef void lastk_spill_merge(Word* d, HllPool* hd, const Word* s, const HllPool* hs, Py_ssize_t k) noexcept nogil:
    # lastk_merge of spilled areas (s the later arrivals), s's buffer in hs:
    # read out first, since making d a block may move hs's (hd may be hs)
    cdef Word sb[2 * LASTK_MAX]
    cdef int64_t ts[LASTK_MAX]
    cdef double vs[LASTK_MAX]
    cdef Py_ssize_t ns = lastk_area(s, hs, k, ts, vs), j
    cdef Word* b
    if ns == 0:
        return
    if d[0].i == 0 and d[1].i == INT64_MIN and ns == 1:
        d[1].i = ts[0]
        d[2].f = vs[0]
        return
    b = lastk_spill(d, hd, k)
    if b == NULL:
        return
    for j in range(ns):
        sb[j].i = ts[j]
        sb[k + j].f = vs[j]
    lastk_merge(b, sb, k, lastk_count(b, k), ns)


cdef int64_t cell_first_ts(const Word* c, const Layout* L) noexcept nogil:
    # the cell's earliest event time (a cell with events)
    if L.packed:
        return c[W_BUCKET].i * L.hop + <int64_t>((<uint64_t>c[W_FIRST_TS].i) >> 32)
    return c[W_FIRST_TS].i


cdef int64_t cell_last_ts(const Word* c, const Layout* L) noexcept nogil:
    # the cell's latest event time (a cell with events)
    if L.packed:
        return c[W_BUCKET].i * L.hop + <int64_t>((<uint64_t>c[W_FIRST_TS].i) & ((<uint64_t>1 << 32) - 1))
    return c[W_LAST_TS].i


cdef inline void cell_set_ts(Word* c, const Layout* L, int64_t first, int64_t last) noexcept nogil:
    # (packed: relative to the cell's bucket; an accumulator's, of no bucket,
    # is never read)
    cdef int64_t origin
    if L.packed:
        if c[W_BUCKET].i != INT64_MIN:
            origin = c[W_BUCKET].i * L.hop
            c[W_FIRST_TS].i = <int64_t>((<uint64_t>(first - origin) << 32) | <uint64_t>(last - origin))
        return
    c[W_FIRST_TS].i = first
    c[W_LAST_TS].i = last


cdef inline void cell_fold_ts(Word* c, const Layout* L, int64_t first, int64_t last) noexcept nogil:
    # c's times widened to [first, last] (a packed cell's: its own read only
    # once it has events; call before counting the new ones)
    if c[W_COUNT].i:
        first, last = min(first, cell_first_ts(c, L)), max(last, cell_last_ts(c, L))
    cell_set_ts(c, L, first, last)


cdef void cell_reset(Word* c, const Layout* L) noexcept nogil:
    # Identity of every merge: zero counts/sums/registers, +inf/-inf extremes,
    # first/last at the far ends of time (packed: 0, read only once counted).
    cdef Py_ssize_t j, k
    cdef const ColLayout* cl
    memset(c, 0, L.width * sizeof(Word))
    c[W_BUCKET].i = INT64_MIN
    if not L.packed:
        c[W_FIRST_TS].i = INT64_MAX
        c[W_LAST_TS].i = INT64_MIN
    for j in range(L.ncols):
        cl = &L.cols[j]
        if cl.vmin >= 0:
            c[cl.vmin].f = INFINITY
        if cl.vmax >= 0:
            c[cl.vmax].f = -INFINITY
        if cl.first_ts >= 0:
            c[cl.first_ts].i = INT64_MAX
            c[cl.first_val].f = NAN
        if cl.last_ts >= 0:
            c[cl.last_ts].i = INT64_MIN
            c[cl.last_val].f = NAN
        if cl.lastk >= 0 and L.lastk_spill:  # [ref 0, no entry, 0]
            c[cl.lastk + 1].i = INT64_MIN
        elif cl.lastk >= 0 and cl.n < 0:   # no `n`: the unused times say how many are in use
            for k in range(cl.lastk_k):
                c[cl.lastk + k].i = INT64_MIN


cdef void cell_add(Word* c, const Layout* L, int64_t ts, const double* x, Py_ssize_t xstride,
                   const uint64_t* h, Py_ssize_t hstride) noexcept nogil:
    cdef Py_ssize_t j
    cdef int64_t n
    cdef double v, d
    cdef const ColLayout* cl
    if L.packed:
        cell_fold_ts(c, L, ts, ts)
    else:
        if ts < c[W_FIRST_TS].i:
            c[W_FIRST_TS].i = ts
        if ts > c[W_LAST_TS].i:
            c[W_LAST_TS].i = ts
    c[W_COUNT].i += 1
    for j in range(L.ncols):
        v = x[j * xstride]
        if isnan(v):       # null: only count(*) above sees it
            continue
        cl = &L.cols[j]
        if cl.n < 0:       # approx_count_distinct and last_k alone: their state is all there is
            if cl.hll >= 0:
                hll_add(&c[cl.hll], L.hp, L.hll_p, h[cl.hll_row * hstride])
            if cl.lastk >= 0:
                if L.lastk_spill:
                    lastk_spill_insert(&c[cl.lastk], L.hp, cl.lastk_k, ts, v)
                else:
                    lastk_insert(&c[cl.lastk], cl.lastk_k, lastk_count(&c[cl.lastk], cl.lastk_k), ts, v)
            continue
        n = c[cl.n].i + 1
        c[cl.n].i = n
        if cl.sum >= 0:
            c[cl.sum].f += v
        if cl.wmean >= 0:  # Welford: stable where sum-of-squares cancels
            d = v - c[cl.wmean].f
            c[cl.wmean].f += d / <double>n
            c[cl.m2].f += d * (v - c[cl.wmean].f)
        if cl.vmin >= 0 and v < c[cl.vmin].f:
            c[cl.vmin].f = v
        if cl.vmax >= 0 and v > c[cl.vmax].f:
            c[cl.vmax].f = v
        if cl.first_ts >= 0 and ts < c[cl.first_ts].i:     # tie: earlier arrival stays first
            c[cl.first_ts].i = ts
            c[cl.first_val].f = v
        if cl.last_ts >= 0 and ts >= c[cl.last_ts].i:      # tie: later arrival becomes last
            c[cl.last_ts].i = ts
            c[cl.last_val].f = v
        if cl.hll >= 0:
            hll_add(&c[cl.hll], L.hp, L.hll_p, h[cl.hll_row * hstride])
        if cl.lastk >= 0:
            if L.lastk_spill:
                lastk_spill_insert(&c[cl.lastk], L.hp, cl.lastk_k, ts, v)
            else:
                lastk_insert(&c[cl.lastk], cl.lastk_k, min(n - 1, cl.lastk_k), ts, v)


cdef void cell_merge(Word* dst, const Word* src, const Layout* L) noexcept nogil:
    # dst ⊕ src, src taken as the later arrivals (it wins `last` ties, loses
    # `first` ties). Cells of distinct buckets/sessions never tie on ts.
    cell_merge_from(dst, L, src, L)


cdef void cell_merge_from(Word* dst, const Layout* L, const Word* src, const Layout* Ls) noexcept nogil:
    # cell_merge with src in another view (its dense HLL blocks in Ls.hp)
    cdef Py_ssize_t j
    cdef int64_t na, nb, n
    cdef double delta
    cdef const ColLayout* cl
    if L.packed or Ls.packed:
        # (an accumulator of no bucket: its times are never read)
        if src[W_COUNT].i and dst[W_BUCKET].i != INT64_MIN:
            cell_fold_ts(dst, L, cell_first_ts(src, Ls), cell_last_ts(src, Ls))
    else:
        if src[W_FIRST_TS].i < dst[W_FIRST_TS].i:
            dst[W_FIRST_TS].i = src[W_FIRST_TS].i
        if src[W_LAST_TS].i > dst[W_LAST_TS].i:
            dst[W_LAST_TS].i = src[W_LAST_TS].i
    dst[W_COUNT].i += src[W_COUNT].i
    for j in range(L.ncols):
        cl = &L.cols[j]
        if cl.n < 0:       # approx_count_distinct and last_k alone
            if cl.hll >= 0:
                hll_merge(&dst[cl.hll], L.hp, &src[cl.hll], Ls.hp)
            if cl.lastk >= 0:
                if L.lastk_spill:
                    lastk_spill_merge(&dst[cl.lastk], L.hp, &src[cl.lastk], Ls.hp, cl.lastk_k)
                else:
                    lastk_merge(&dst[cl.lastk], &src[cl.lastk], cl.lastk_k, lastk_count(&dst[cl.lastk], cl.lastk_k),
                                lastk_count(&src[cl.lastk], cl.lastk_k))
            continue
        nb = src[cl.n].i
        if nb == 0:
            continue
        na = dst[cl.n].i
        n = na + nb
        dst[cl.n].i = n
        if cl.sum >= 0:
            dst[cl.sum].f += src[cl.sum].f
        if cl.wmean >= 0:
            if na == 0:
                dst[cl.wmean].f = src[cl.wmean].f
                dst[cl.m2].f = src[cl.m2].f
            else:          # Chan et al. pairwise update
                delta = src[cl.wmean].f - dst[cl.wmean].f
                dst[cl.wmean].f += delta * (<double>nb / <double>n)
                dst[cl.m2].f += src[cl.m2].f + delta * delta * (<double>na * (<double>nb / <double>n))
        if cl.vmin >= 0 and src[cl.vmin].f < dst[cl.vmin].f:
            dst[cl.vmin].f = src[cl.vmin].f
        if cl.vmax >= 0 and src[cl.vmax].f > dst[cl.vmax].f:
            dst[cl.vmax].f = src[cl.vmax].f
        if cl.first_ts >= 0 and src[cl.first_ts].i < dst[cl.first_ts].i:
            dst[cl.first_ts].i = src[cl.first_ts].i
            dst[cl.first_val].f = src[cl.first_val].f
        if cl.last_ts >= 0 and src[cl.last_ts].i >= dst[cl.last_ts].i:
            dst[cl.last_ts].i = src[cl.last_ts].i
            dst[cl.last_val].f = src[cl.last_val].f
        if cl.hll >= 0:
            hll_merge(&dst[cl.hll], L.hp, &src[cl.hll], Ls.hp)
        if cl.lastk >= 0:
            if L.lastk_spill:
                lastk_spill_merge(&dst[cl.lastk], L.hp, &src[cl.lastk], Ls.hp, cl.lastk_k)
            else:
                lastk_merge(&dst[cl.lastk], &src[cl.lastk], cl.lastk_k, min(na, cl.lastk_k), min(nb, cl.lastk_k))


cdef void cell_release(Word* c, const Layout* L) noexcept nogil:
    # Before a cell is dropped or overwritten: its dense blocks go back to the
    # pool, and it holds none after.
    cdef Py_ssize_t j, w
    cdef int64_t hdr
    if not L.has_blocks:
        return
    for j in range(L.ncols):
        w = block_word(&L.cols[j], L)
        if w >= 0:
            hdr = c[w].i
            if hdr < 0:
                hll_block_free(L.hp, -hdr - 1)
                c[w].i = 0
                if w == L.cols[j].lastk:   # (an empty area: its ts says so)
                    c[w + 1].i = INT64_MIN


cdef void cell_copy_in(Word* dst, const Layout* L, const Word* src, const Layout* Ls) noexcept nogil:
    # dst = src where src may live in another view: dst gets blocks of its own
    # (dst holds none before: a free or released cell).
    cdef Py_ssize_t j, w
    cdef int64_t hdr, blk
    memcpy(dst, src, L.width * sizeof(Word))
    if not L.has_blocks:
        return
    for j in range(L.ncols):
        w = block_word(&L.cols[j], L)
        if w >= 0:
            hdr = src[w].i
            if hdr < 0:
                blk = hll_block_alloc(L.hp)
                if blk < 0:
                    dst[w].i = 0
                    continue
                memcpy(L.hp.B + blk * L.hp.m, Ls.hp.B + (-hdr - 1) * Ls.hp.m, L.hp.m)
                dst[w].i = -(blk + 1)


cdef void cell_finalize(const Word* c, const Layout* L, const OutSpec* outs, Py_ssize_t nout,
                        double* of, int64_t* oi, Py_ssize_t nq, Py_ssize_t q) noexcept nogil:
    # Outputs are (rows, nq) matrices: one row per aggregation (k rows for last_k).
    cdef Py_ssize_t o, j, cnt
    cdef int64_t n
    cdef double m2
    cdef const OutSpec* sp
    cdef const ColLayout* cl
    cdef const Word* buf
    for o in range(nout):
        sp = &outs[o]
        if sp.kind == O_COUNT_STAR:
            oi[sp.row * nq + q] = c[W_COUNT].i
            continue
        cl = &L.cols[sp.col]
        if sp.kind == O_HLL:   # (an empty list counts 0; its column may have no `n`)
            oi[sp.row * nq + q] = hll_count(&c[cl.hll], L.hp, L.hll_p)
            continue
        if sp.kind == O_LAST_K:  # (its column may have no `n`)
            if L.lastk_spill:
                buf = &c[cl.lastk]
                if buf[0].i < 0:
                    buf = lastk_block(buf, L.hp)
                    cnt = lastk_count(buf, cl.lastk_k)
                    buf += cl.lastk_k
                else:
                    cnt = buf[1].i != INT64_MIN
                    buf += 2
            else:
                cnt = min(c[cl.n].i, cl.lastk_k) if cl.n >= 0 else lastk_count(&c[cl.lastk], cl.lastk_k)
                buf = &c[cl.lastk + cl.lastk_k]
            for j in range(sp.k):
                of[(sp.row + j) * nq + q] = buf[j].f if j < cnt else NAN
            continue
        n = c[cl.n].i
        if sp.kind == O_COUNT:
            oi[sp.row * nq + q] = n
        elif n == 0:
            of[sp.row * nq + q] = NAN
        elif sp.kind == O_SUM:
            of[sp.row * nq + q] = c[cl.sum].f
        elif sp.kind == O_MEAN:
            of[sp.row * nq + q] = c[cl.sum].f / <double>n
        elif sp.kind == O_MIN:
            of[sp.row * nq + q] = c[cl.vmin].f
        elif sp.kind == O_MAX:
            of[sp.row * nq + q] = c[cl.vmax].f
        elif sp.kind == O_FIRST:
            of[sp.row * nq + q] = c[cl.first_val].f
        elif sp.kind == O_LAST:
            of[sp.row * nq + q] = c[cl.last_val].f
        else:
            m2 = c[cl.m2].f if c[cl.m2].f > 0.0 else 0.0
            if sp.kind == O_VAR_POP or sp.kind == O_STD_POP:
                m2 = m2 / <double>n
            elif n > 1:
                m2 = m2 / <double>(n - 1)
            else:
                m2 = NAN
            if sp.kind == O_STD_SAMP or sp.kind == O_STD_POP:
                m2 = sqrt(m2)
            of[sp.row * nq + q] = m2


cdef int session_insert(Word* cells, Py_ssize_t ring, int64_t* nsess, int64_t* evicted_last_ts,
                        const Word* span, int64_t gap, const Layout* L, const Layout* Ls) noexcept nogil:
    # Insert a partial cell spanning [first_ts, last_ts] (one event, or a whole
    # session when merging states; its HLL blocks in Ls.hp) into a key's
    # sessions, kept sorted by start.
    # Returns 0 when applied, 1 when the bounded state cannot hold it (late).
    cdef Py_ssize_t W = L.width, m = nsess[0], a = 0, b, j
    cdef int64_t f = span[W_FIRST_TS].i, l = span[W_LAST_TS].i
    if evicted_last_ts[0] != INT64_MIN and f - evicted_last_ts[0] < gap:
        return 1        # it would join (or precede) a session already dropped
    while a < m and f - cells[a * W + W_LAST_TS].i >= gap:
        a += 1
    b = a
    while b < m and cells[b * W + W_FIRST_TS].i - l < gap:
        b += 1
    if a == b:          # a new session at position a
        if m == ring:
            if a == 0:
                return 1    # it would be the oldest: no room, and dropping a newer one is wrong
            if cells[W_LAST_TS].i > evicted_last_ts[0]:
                evicted_last_ts[0] = cells[W_LAST_TS].i
            cell_release(cells, L)
            memmove(cells, cells + W, (m - 1) * W * sizeof(Word))
            m -= 1
            a -= 1
        memmove(cells + (a + 1) * W, cells + a * W, (m - a) * W * sizeof(Word))
        cell_copy_in(cells + a * W, L, span, Ls)
        nsess[0] = m + 1
        return 0
    # It joins sessions a..b-1 (bridging them if more than one): fold them
    # into cell a in time order, the new span last as the latest arrival.
    for j in range(a + 1, b):
        cell_merge(cells + a * W, cells + j * W, L)
        cell_release(cells + j * W, L)
    cell_merge_from(cells + a * W, L, span, Ls)
    if b - a > 1:
        memmove(cells + (a + 1) * W, cells + b * W, (m - b) * W * sizeof(Word))
        nsess[0] = m - (b - a - 1)
    return 0
