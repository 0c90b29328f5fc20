# cython: language_level=3
"""Online table: a TTL hash table over one flat buffer (numpy or a shared file).

One writer, many readers. The buffer layout is in `fscore.layout`; readers in
other processes map the same file read-only (`Table.open_reader(path)`) and
use a per-row seqlock, so they never see a torn row and never block the writer.

Rules (the pure-Python twin `fscore.table_ref.RefTable` follows the same):
- put: a row whose event_ts < now - ttl is not stored (stale on arrival);
  a row replaces the stored one for its key when (event_ts, created_ts) >= the
  stored pair, else it is ignored.
- get: PRESENT when stored and event_ts >= now - ttl (ttl 0 = no limit);
  OUTSIDE_MAX_AGE when stored but older; NOT_FOUND otherwise. Values are
  returned only for PRESENT rows.
- bounded memory: when a new key arrives and every row is used, first the
  expired rows are removed; if there were none, the max(1, capacity // 64)
  oldest rows by (event_ts, encoded key) are evicted. Evictions are counted.
- time is always passed in (`now`, int64 microseconds); nothing reads a clock.
"""
import mmap
import os

import numpy as np
cimport numpy as cnp
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from cpython.ref cimport Py_INCREF
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from libc.stdint cimport int64_t, uint64_t, uint8_t, int32_t, uint16_t, INT64_MIN
from libc.string cimport memcpy, memcmp, memset

from fscore import _batch
from fscore._batch import BatchResult
from fscore.errors import KeyEncodingError, ReadOnlyError, SchemaError
from fscore import layout as _layout
from fscore.layout import Layout, next_capacity, read_header
from fscore.schema import Schema

cnp.import_array()

cdef enum:
    ST_NOT_FOUND = 0
    ST_PRESENT = 1
    ST_OUTSIDE_MAX_AGE = 2

NOT_FOUND = ST_NOT_FOUND
PRESENT = ST_PRESENT
OUTSIDE_MAX_AGE = ST_OUTSIDE_MAX_AGE

cdef enum:
    EMPTY = 0          # index slot never used
    TOMBSTONE = 1      # index slot of a deleted key (probes continue past it)

# C mirrors of fscore.layout's offsets (checked against it at import below)
cdef enum:
    H_GLOBAL_SEQ = 8
    H_COUNT = 9
    H_TOMBSTONES = 10
    H_EVICT_CAPACITY = 11
    H_EVICT_EXPIRED = 12
    H_STALE_ON_ARRIVAL = 13
    H_PUTS = 14
    H_WRITER_PID = 15
    H_COMPACTIONS = 16
    H_RETIRED = 17
    ROW_ETS = 8
    ROW_CTS = 16
    ROW_STATE = 24
    ROW_KEY = 32

cdef enum:
    # ROW_STATE bits: a row that holds a key is ROW_LIVE (the writer's test);
    # ROW_LIVE | ROW_HIDDEN is held and written like any other but readers
    # (lookup, get: they want exactly ROW_LIVE) answer NOT_FOUND for it (the
    # keys of a Kafka partition being rebuilt, fsapp.engine.cluster)
    ROW_LIVE = 1
    ROW_HIDDEN = 2

for _name, _value in {"H_GLOBAL_SEQ": H_GLOBAL_SEQ, "H_COUNT": H_COUNT, "H_TOMBSTONES": H_TOMBSTONES,
                      "H_EVICT_CAPACITY": H_EVICT_CAPACITY, "H_EVICT_EXPIRED": H_EVICT_EXPIRED,
                      "H_STALE_ON_ARRIVAL": H_STALE_ON_ARRIVAL, "H_PUTS": H_PUTS, "H_WRITER_PID": H_WRITER_PID,
                      "H_COMPACTIONS": H_COMPACTIONS, "H_RETIRED": H_RETIRED, "ROW_ETS": ROW_ETS, "ROW_CTS": ROW_CTS,
                      "ROW_STATE": ROW_STATE, "ROW_KEY": ROW_KEY}.items():
    if getattr(_layout, _name) != _value:
        raise ImportError(f"fscore.table was built against another layout ({_name}); rebuild the extension")

cdef enum:
    LOOKUP_CHUNK = 64  # keys whose cache misses a batch lookup overlaps

# rows a growth's copy (grow_copy) takes between looks at its stop event
# (~10 ms of copying and indexing at 1M rows of 184 bytes)
GROW_CHUNK_ROWS = 65536
_ONE_BYTE = np.zeros(1, dtype=np.uint8)  # the data of a string column whose strings are all empty
_NUMPY_TYPES = {"int64": np.int64, "float64": np.float64, "bool": np.bool_, "vector": np.float32,
                "vector64": np.float64, "list": np.float64}
_NPY_TYPES = {"int64": cnp.NPY_INT64, "float64": cnp.NPY_FLOAT64, "bool": cnp.NPY_BOOL}


cdef int64_t *_int_keys(list keys, Py_ssize_t n) except? NULL:
    """A list of plain ints in int64 range as a PyMem buffer (the caller
    frees it); NULL when any item is not one (the caller then encodes the
    list the general way, with its errors)."""
    cdef Py_ssize_t i
    cdef int64_t *out
    for i in range(n):
        if type(keys[i]) is not int:
            return NULL
    out = <int64_t *>PyMem_Malloc(n * 8 if n else 8)
    if out == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            out[i] = keys[i]
    except OverflowError:
        PyMem_Free(out)
        return NULL
    return out


cdef enum:
    K_INT64, K_FLOAT64, K_BOOL, K_STRING, K_VECTOR, K_VECTOR64, K_LIST

_KIND_CODES = {"int64": K_INT64, "float64": K_FLOAT64, "bool": K_BOOL, "string": K_STRING, "vector": K_VECTOR,
               "vector64": K_VECTOR64, "list": K_LIST}
_MATRIX_NPY = {"vector": cnp.NPY_FLOAT32, "vector64": cnp.NPY_FLOAT64, "list": cnp.NPY_FLOAT64}


include "table_codec.pxi"


_tmp_counter = 0  # unique temporary file names within a process (a growing table writes several)


cdef enum:
    INDEX_CHUNK_SHIFT = 6   # a mark of track_writes covers 64 index entries (512 bytes)


def _unmap(m):
    try:
        m.close()
    except BufferError:  # a result array still views it; the GC unmaps it
        pass


def _fits(out, arr):
    """Whether `out` (a previous snapshot) can take a copy of `arr` in place."""
    return (out is not None and isinstance(out, np.ndarray) and out.dtype == arr.dtype
            and out.shape == arr.shape and out.flags.c_contiguous and out.flags.writeable)


cdef inline void _index_store(Table t, Py_ssize_t slot, int64_t entry) noexcept nogil:
    """Every write of a table's own index entry: atomic for readers, and its
    chunk marked while track_writes is on (snapshot_end copies it again)."""
    fs_atomic_store_i64(<int64_t *>&t.index[slot], entry)
    if t.tracking and (slot >> INDEX_CHUNK_SHIFT) < t.n_imarks:
        t.imarks[slot >> INDEX_CHUNK_SHIFT] = 1


cdef Py_ssize_t _index_new(Table dst, const uint8_t *key, Py_ssize_t row) noexcept nogil:
    """Indexes row under key in the first free slot of its probe sequence,
    whether or not the key is indexed already (a growth's copy may hold a key
    twice for a while: a row copied before its key was deleted and inserted
    in another row; its fix-up tombstones the stale one). Returns the slot."""
    cdef uint64_t h = hash_key(key, dst.kw8), e
    cdef Py_ssize_t s = <Py_ssize_t>(h & <uint64_t>dst.mask)
    while True:
        e = dst.index[s]
        if e == EMPTY or e == TOMBSTONE:
            if e == TOMBSTONE:
                dst.hdr[H_TOMBSTONES] -= 1
            dst.index[s] = ((h >> 32) << 32) | <uint64_t>(row + 2)
            return s
        s = (s + 1) & dst.mask


cdef void _fill(Table dst, const uint8_t *rows, Py_ssize_t start, Py_ssize_t stop,
                int64_t *slot_of) noexcept nogil:
    """Copies rows [start, stop) into dst's (empty) buffer and indexes the
    live ones; slot_of (or NULL): each row's index slot there, -1 for none."""
    cdef Py_ssize_t r, slot
    cdef uint8_t *p
    memcpy(dst.rows + start * dst.stride, rows + start * dst.stride, (stop - start) * dst.stride)
    for r in range(start, stop):
        p = dst.rows + r * dst.stride
        if p[ROW_STATE] & ROW_LIVE:
            slot = _index_new(dst, p + ROW_KEY, r)
            if slot_of != NULL:
                slot_of[r] = slot
        elif slot_of != NULL:
            slot_of[r] = -1


cdef void _recopy(Table src, Table dst, Py_ssize_t r, int64_t *slot_of) noexcept nogil:
    """Row r copied again from src into dst (a growth's fix-up) when its
    seqlock count differs from its copy's or is odd there (written since, or
    while, it was copied): its index entry from the copy (a key that may be
    torn) becomes a tombstone, and the row is indexed again if live."""
    cdef uint8_t *a = src.rows + r * src.stride
    cdef uint8_t *b = dst.rows + r * dst.stride
    cdef int64_t seq = (<int64_t *>b)[0]
    if seq == (<int64_t *>a)[0] and not (seq & 1):
        return
    if slot_of[r] >= 0:
        dst.index[slot_of[r]] = TOMBSTONE
        dst.hdr[H_TOMBSTONES] += 1
        slot_of[r] = -1
    memcpy(b, a, src.stride)
    if b[ROW_STATE] & ROW_LIVE:
        slot_of[r] = _index_new(dst, b + ROW_KEY, r)


cdef class Table:
    """TTL hash table; see the module docstring for the rules."""

    def __init__(self, schema, capacity=None, max_bytes=None, ttl_us=0, path=None, publish=True,
                 max_capacity=None):
        if not isinstance(schema, Schema):
            raise SchemaError("schema must be an fscore.schema.Schema")
        if capacity is None:
            lay = Layout.for_max_bytes(schema, int(max_bytes)) if max_bytes else Layout(schema, 1 << 16)
        else:
            lay = Layout(schema, int(capacity))
        if ttl_us < 0:
            raise SchemaError(f"ttl_us must be >= 0 (0 = no limit), got {ttl_us}")
        arr = self._allocate(lay.nbytes, path, publish)
        h = lay.header(ttl_us)
        arr[:lay.rows_offset] = 0
        arr[:h.size] = h
        self._bind(arr, False)
        self.free_rows = np.arange(self.capacity_ - 1, -1, -1, dtype=np.int32)
        self.nfree = self.capacity_
        self.hdr[H_WRITER_PID] = os.getpid()
        self.set_max_capacity(max_capacity)

    def set_max_capacity(self, max_capacity):
        """Lets the table grow (`grow`, `layout.next_capacity`) up to `max_capacity` rows
        before it evicts; None keeps it at its current capacity (evicting
        when full: the memory bound of a fixed table)."""
        cap = self.capacity_ if max_capacity is None else int(max_capacity)
        if cap < 1:
            raise SchemaError(f"max_capacity must be at least 1 row, got {max_capacity}")
        self.max_capacity_ = max(cap, self.capacity_)

    @property
    def max_capacity(self):
        return self.max_capacity_

    def _room_or_grow(self, int64_t now, protect=None):
        """A full table makes room for a new key: it grows (doubling while
        small, then by a quarter: `layout.next_capacity`; up to max_capacity)
        while it may, else evicts (`_make_room`)."""
        if self.capacity_ < self.max_capacity_:
            self.grow(next_capacity(self.capacity_, self.max_capacity_))
            return self.nfree
        return self._make_room(now, protect)

    def grow(self, Py_ssize_t new_capacity):
        """Moves the table into a new buffer of `new_capacity` rows. Row ids
        are kept (state kept elsewhere by row id stays valid); the index is
        rebuilt. A file-backed table writes a new file and renames it into
        place, then marks the old buffer retired: readers in other processes
        keep reading the old mapping (consistent, no torn row) until they see
        the mark and reopen the path (`retired`). The writer waits for the
        whole copy: `grow_begin` / `grow_copy` / `grow_end` do it ahead of
        need, the copy without the writer."""
        self._check_writable()
        if new_capacity <= self.capacity_:
            return
        cdef Table shadow = self._new_shadow(new_capacity)
        cdef const uint8_t[::1] old = self._arr
        cdef Py_ssize_t roff = self.layout.rows_offset
        with nogil:
            _fill(shadow, &old[0] + roff, 0, self.capacity_, NULL)
        self._adopt(shadow, False)

    def grow_begin(self, Py_ssize_t new_capacity):
        """Step 1 of a growth that holds the writer only briefly (from the
        writer, no write in progress): the new buffer (a new file at a
        temporary name, unseen by readers until grow_end), and from now on
        the rows written are logged (`track_writes`: one tracker at a time,
        so not beside a checkpoint's snapshot_begin/end). Returns a token for
        grow_copy and grow_end; None when the table is that big already."""
        self._check_writable()
        if new_capacity <= self.capacity_:
            return None
        shadow = self._new_shadow(new_capacity)
        self.track_writes()
        return [self._arr, shadow, self.track_epoch, np.full(self.capacity_, -1, dtype=np.int64), False]

    def grow_copy(self, token, stop=None):
        """Step 2, from any thread, without the GIL while the writer goes on:
        the rows copied into the new buffer and indexed there. Rows written
        meanwhile may be torn in the copy: grow_end copies those again.
        `stop` (a threading.Event): looked at every GROW_CHUNK_ROWS rows; once
        set, the copy gives up (grow_end then abandons the growth), so a
        shutdown waits for a chunk, not for the whole copy (~10 s at 10M rows)."""
        cdef Table shadow = token[1]
        cdef const uint8_t[::1] old = token[0]   # holds the buffer: a grow cannot unmap it under us
        cdef int64_t[::1] slot_of = token[3]
        cdef Py_ssize_t roff = self.layout.rows_offset if token[0] is self._arr else -1
        cdef Py_ssize_t n = slot_of.shape[0], a = 0, b
        if roff < 0:  # the table moved meanwhile: grow_end gives up
            return
        while a < n:
            if stop is not None and stop.is_set():
                return
            b = min(n, a + GROW_CHUNK_ROWS)
            with nogil:
                _fill(shadow, &old[0] + roff, a, b, &slot_of[0])
            a = b
        if stop is not None and stop.is_set():
            return
        if shadow._tmp_path is not None:
            # PERF: written back now, so that grow_end's rename over the table's path
            # does not (ext4 flushes a file renamed over another, auto_da_alloc:
            # ~150 ms at 1M rows of 184 bytes, under the writer's lock)
            fd = os.open(shadow._tmp_path, os.O_RDONLY)
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
        token[4] = True

    def grow_end(self, token):
        """Step 3, from the writer (no write in progress): the rows written
        since grow_begin copied again (the logged ones; or each whose seqlock
        count differs from its copy's, when the log overflowed) and indexed
        again, then the table moves to the new buffer as `grow` does. Stops
        the log. False, and nothing changed, when the table moved to another
        buffer meanwhile (it grew by itself) or grow_copy did not run."""
        old, shadow, epoch, slot_arr, copied = token
        token[:] = [None, None, epoch, None, False]  # (the old buffer's last reference goes with release_retired)
        logged = self.tracking and epoch == self.track_epoch and not self.dirty_overflow
        self.tracking = False
        if old is not self._arr or not copied:
            shadow._discard()
            return False
        cdef Table sh = shadow
        cdef int64_t[::1] slot_of = slot_arr
        cdef Py_ssize_t i, r, nd = self.ndirty, cap = self.capacity_, stride = self.stride
        cdef bint by_log = logged
        with nogil:
            if by_log:
                for i in range(nd):
                    _recopy(self, sh, self.dlog[i], &slot_of[0])
            else:
                for r in range(cap):
                    _recopy(self, sh, r, &slot_of[0])
        self.last_fixup = nd if by_log else -1
        old = None
        self._adopt(shadow, True)
        return True

    cdef Table _new_shadow(self, Py_ssize_t new_capacity):
        """A table over a new zeroed buffer of new_capacity rows (memory, or a
        new file at a temporary name), its header written: what a growth
        fills and then adopts."""
        cdef Table shadow = Table.__new__(Table)
        lay = Layout(self.schema, new_capacity)
        arr = shadow._allocate(lay.nbytes, self.path, False)
        h = lay.header(self.ttl)
        arr[:h.size] = h
        shadow._bind(arr, False)
        return shadow

    def release_retired(self):
        """Unmaps the buffers grow_end left mapped (call without the writer's
        lock: freeing a replaced file's pages takes a while)."""
        maps, self._retired_maps = self._retired_maps, None
        for m, fd in maps or ():
            _unmap(m)
            if fd is not None:
                os.close(fd)  # frees the replaced file's pages, without the GIL

    def _discard(self):
        """Gives up a shadow buffer (a growth abandoned): unmaps it, removes its file."""
        tmp = self._tmp_path
        self.close()
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

    cdef void _adopt(self, Table shadow, bint defer_unmap) except *:
        """Moves this table into `shadow`'s buffer, its rows and index filled
        from this table's: the header's counters carried over, the free rows
        stacked (the old ones taken first, then the new ones, lowest id
        first), the new file renamed into place, the old buffer retired and
        unmapped — or, `defer_unmap`, kept for `release_retired` (PERF: the
        last unmapping of a replaced file frees its page cache: ~0.2 s of
        grow_end's 0.22 s at 1M rows of 184 bytes, under the GIL unless a
        descriptor of the file outlives the mapping)."""
        cdef Py_ssize_t old_cap = self.capacity_, new_capacity = shadow.capacity_
        cdef int64_t *old_hdr
        old_arr, old_mmap, old_tmp = self._arr, self._mmap, self._tmp_path
        was_published = old_tmp is None
        arr = shadow._arr
        # counters carry over (words H_GLOBAL_SEQ .. H_COMPACTIONS); tombstones are the new index's own
        words = arr[:8 * (H_RETIRED + 1)].view(np.int64)
        tombstones = words[H_TOMBSTONES]
        words[H_GLOBAL_SEQ:H_COMPACTIONS + 1] = old_arr[:8 * (H_RETIRED + 1)].view(np.int64)[H_GLOBAL_SEQ:H_COMPACTIONS + 1]
        words[H_TOMBSTONES] = tombstones
        words[H_RETIRED] = 0
        old_free = np.asarray(self.free_rows[:self.nfree]).copy()
        # PERF: the old file held open, so that the last unmapping (under the GIL)
        # leaves freeing its pages to the close of this descriptor (without it)
        keep = os.open(old_tmp or self.path, os.O_RDONLY) if defer_unmap and old_mmap is not None else None
        self._mmap, self._tmp_path = shadow._mmap, shadow._tmp_path
        shadow._mmap = shadow._arr = None
        shadow.base = NULL
        self._bind(arr, False)
        stack = np.empty(new_capacity, dtype=np.int32)
        added = np.arange(new_capacity - 1, old_cap - 1, -1, dtype=np.int32)
        stack[:added.size] = added
        stack[added.size:added.size + old_free.size] = old_free
        self.free_rows = stack
        self.nfree = added.size + old_free.size
        if was_published:
            self.publish()
        old_hdr = <int64_t *>cnp.PyArray_DATA(old_arr)
        fs_atomic_store_i64(&old_hdr[H_RETIRED], 1)
        old_arr = None
        if old_mmap is not None:
            if defer_unmap:
                if self._retired_maps is None:
                    self._retired_maps = []
                self._retired_maps.append((old_mmap, keep))
            else:
                _unmap(old_mmap)
        if old_tmp is not None:  # an unpublished table's old file: nobody maps it
            try:
                os.unlink(old_tmp)
            except FileNotFoundError:
                pass
        self._maybe_compact()

    def with_schema(self, schema, path=None, publish=True):
        """A copy of this table under another schema with the same key columns
        (a newer fstore changed a column's kind): same rows at the same row
        ids, timestamps and counters; value columns matched by name, vectors
        converted between float32 and float64 (a `list` keeps its NaN tail),
        other kind changes and new columns null."""
        cdef Table new
        cdef Py_ssize_t r
        cdef uint8_t *p
        if schema.keys != self.schema.keys:
            raise SchemaError("with_schema keeps the key columns; rebuild the table to change them")
        new = Table(schema, capacity=self.capacity_, ttl_us=self.ttl, path=path, publish=publish,
                    max_capacity=self.max_capacity_)
        old_m, new_m = self._rows_matrix(), new._rows_matrix()
        live = self.live_rows()
        head = ROW_KEY + self.kw8
        new_m[live, :head] = old_m[live, :head]
        new_m[live, 0:8] = 0  # seqlock words start even
        old_cols = {f.name: (c, f) for c, f in enumerate(self.schema.columns)}
        for c, f in enumerate(schema.columns):
            src = old_cols.get(f.name)
            noff, off, w = new.null_off + c, new.col_off[c], new.col_width[c]
            new_m[live, noff] = 1
            if src is None:
                continue
            oc, of = src
            ooff, ow = self.col_off[oc], self.col_width[oc]
            if of.kind == f.kind and ow == w:
                new_m[live, off:off + w] = old_m[live, ooff:ooff + w]
            elif f.kind in _MATRIX_NPY and of.kind in _MATRIX_NPY:
                odt = np.float32 if of.kind == "vector" else np.float64
                ndt = np.float32 if f.kind == "vector" else np.float64
                vals = np.ascontiguousarray(old_m[live, ooff:ooff + ow]).view(odt).astype(ndt)
                k = min(vals.shape[1], f.size)
                out = np.full((live.size, f.size), np.nan, dtype=ndt)
                out[:, :k] = vals[:, :k]
                new_m[live, off:off + w] = out.view(np.uint8)
            else:
                continue
            new_m[live, noff] = old_m[live, self.null_off + oc]
        new.hdr[H_COUNT] = live.size
        for word in (H_EVICT_CAPACITY, H_EVICT_EXPIRED, H_STALE_ON_ARRIVAL, H_PUTS, H_COMPACTIONS):
            new.hdr[word] = self.hdr[word]
        with nogil:
            for r in range(new.capacity_):
                p = new.rows + r * new.stride
                if p[ROW_STATE] & ROW_LIVE:
                    new._insert_index(p + ROW_KEY, hash_key(p + ROW_KEY, new.kw8), r)
        new._rebuild_free_list()
        return new

    def retired(self):
        """True once the writer moved this table to a new buffer (it grew):
        a reader must reopen the path. One atomic load: check it per read."""
        return self.base != NULL and fs_atomic_load_i64(&self.hdr[H_RETIRED]) != 0

    def _allocate(self, Py_ssize_t nbytes, path, bint publish=True):
        self.path = path
        if path is None:
            return np.zeros(nbytes, dtype=np.uint8)
        # A new file at a temporary name, renamed into place: readers mapping the
        # old file keep a consistent (if stale) view and notice the new inode.
        global _tmp_counter
        _tmp_counter += 1
        tmp = f"{path}.tmp.{os.getpid()}.{_tmp_counter}"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, nbytes)
            self._mmap = mmap.mmap(fd, nbytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self._tmp_path = tmp
        if publish:
            self.publish()
        return np.frombuffer(self._mmap, dtype=np.uint8)

    def publish(self):
        """Renames a table created with publish=False into place at `path`:
        readers switch to it only now (e.g. after recovery has replayed the
        WAL into it), never seeing it half-built."""
        if self._tmp_path is None:
            return
        os.replace(self._tmp_path, self.path)
        self._tmp_path = None
        self._inode = os.stat(self.path).st_ino

    cdef void _bind(self, object arr, bint readonly) except *:
        cdef const uint8_t[::1] view = arr
        lay, ttl = read_header(arr)
        self._arr = arr
        self.layout = lay
        self.schema = lay.schema
        self.readonly = readonly
        if self._new_state == 0:  # (a grow rebinds: insert_hidden stays)
            self._new_state = ROW_LIVE
        self.base = <uint8_t *>&view[0]
        self.hdr = <int64_t *>self.base
        cdef Py_ssize_t index_offset = lay.index_offset, rows_offset = lay.rows_offset
        self.index = <uint64_t *>(self.base + index_offset)
        self.rows = self.base + rows_offset
        self.capacity_ = lay.capacity
        self.nslots = lay.nslots
        self.mask = lay.nslots - 1
        self.stride = lay.stride
        self.kw = lay.key_width
        self.kw8 = lay.key_stride
        self.ncols = len(lay.schema.columns)
        self.null_off = lay.null_offset
        self.ttl = ttl
        self.col_off = np.array(lay.col_offsets or [0], dtype=np.intp)
        self.col_width = np.array([f.width() for f in lay.schema.columns] or [0], dtype=np.intp)
        self.int_key = len(lay.schema.keys) == 1 and lay.schema.keys[0].kind == "int64"
        self.col_kind = np.array([_KIND_CODES[f.kind] for f in lay.schema.columns] or [0], dtype=np.uint8)

    @classmethod
    def open_reader(cls, path):
        """Maps a table file written by another process, read-only."""
        cdef Table t = cls.__new__(cls)
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            t._inode = os.fstat(fd).st_ino
            t._mmap = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)
        t.path = path
        t._bind(np.frombuffer(t._mmap, dtype=np.uint8), True)
        return t

    @classmethod
    def from_snapshot(cls, buf, path=None, publish=True, max_capacity=None):
        """A writable table holding a copy of `snapshot()` (checkpoint restore)."""
        cdef Table t = cls.__new__(cls)
        src = np.frombuffer(buf, dtype=np.uint8) if not isinstance(buf, np.ndarray) else buf
        lay, _ = read_header(src)
        if src.size != lay.nbytes:
            raise SchemaError(f"snapshot is {src.size} bytes; its header says {lay.nbytes}")
        arr = t._allocate(lay.nbytes, path, publish)
        arr[:] = src
        t._bind(arr, False)
        t.hdr[H_GLOBAL_SEQ] &= ~1
        t.hdr[H_WRITER_PID] = os.getpid()
        t._rebuild_free_list()
        t.set_max_capacity(max_capacity)
        return t

    def _rebuild_free_list(self):
        rows = self._rows_matrix()
        live = (rows[:, ROW_STATE] & ROW_LIVE) != 0
        seq = np.ascontiguousarray(rows[:, 0:8]).view(np.int64)[:, 0]
        if (seq & 1).any():  # a copy taken mid-write cannot be trusted row by row
            raise SchemaError("snapshot holds a row that was being written; take snapshots from the writer thread")
        free = np.nonzero(~live)[0][::-1].astype(np.int32)
        stack = np.empty(self.capacity_, dtype=np.int32)
        stack[:free.size] = free
        self.free_rows = stack
        self.nfree = free.size
        if int(live.sum()) != self.hdr[H_COUNT]:
            raise SchemaError("snapshot row count disagrees with its live rows (corrupt snapshot)")

    def _rows_matrix(self):
        lay = self.layout
        return self._arr[lay.rows_offset:lay.rows_offset + lay.stride * lay.capacity].reshape(lay.capacity, lay.stride)

    # ---- properties -------------------------------------------------------

    @property
    def capacity(self):
        return self.capacity_

    @property
    def ttl_us(self):
        return self.ttl

    @property
    def nbytes(self):
        return self.layout.nbytes

    def __len__(self):
        if self.base == NULL:  # (the header may be unmapped: a closed table never reads it)
            raise ValueError("table is closed")
        return fs_atomic_load_i64(&self.hdr[H_COUNT])

    def stats(self):
        """Counters, readable from any process mapping the table."""
        if self.base == NULL:
            raise ValueError("table is closed")
        return {"rows": fs_atomic_load_i64(&self.hdr[H_COUNT]), "capacity": self.capacity_,
                "evicted_capacity": self.hdr[H_EVICT_CAPACITY], "evicted_expired": self.hdr[H_EVICT_EXPIRED],
                "stale_on_arrival": self.hdr[H_STALE_ON_ARRIVAL], "puts": self.hdr[H_PUTS],
                "tombstones": self.hdr[H_TOMBSTONES], "compactions": self.hdr[H_COMPACTIONS],
                "nbytes": self.layout.nbytes}

    def reader_is_stale(self):
        """True when the file at `path` was replaced (a restarted writer): reopen."""
        if self.retired():
            return True
        if self.path is None:
            return False
        try:
            return os.stat(self.path).st_ino != self._inode
        except FileNotFoundError:
            return True

    def snapshot(self, out=None):
        """A consistent copy of the whole buffer (call from the writer thread).
        `out`: a previous snapshot to copy into when it still fits (same size):
        a memcpy into memory already faulted in, ~8x faster than into a fresh
        array (a checkpoint holds the engine lock for it)."""
        if _fits(out, self._arr):
            np.copyto(out, self._arr)
            return out
        return np.array(self._arr, copy=True)

    def track_writes(self):
        """From the writer (no write in progress): logs the rows written from
        now on, so that the next `snapshot_end` copies only those again instead
        of reading every row's count (~4 ms at 100k rows, ~10x that at 1M,
        under a checkpoint's lock). The log holds a quarter of the capacity;
        past that snapshot_end reads every count, as without it."""
        cdef int32_t[::1] buf
        want = max(4096, self.capacity_ // 4)
        if self._dlog_arr is None or self._dlog_arr.shape[0] < want:
            self._dlog_arr = np.empty(want, dtype=np.int32)
            buf = self._dlog_arr
            self.dlog, self.dirty_cap = &buf[0], want
        cdef uint8_t[::1] mv
        n = (self.nslots >> INDEX_CHUNK_SHIFT) + 1
        if self._imarks_arr is None or self._imarks_arr.shape[0] != n:
            self._imarks_arr = np.zeros(n, dtype=np.uint8)
        else:
            self._imarks_arr[:] = 0
        mv = self._imarks_arr
        self.imarks, self.n_imarks = &mv[0], n
        self.ndirty, self.dirty_overflow = 0, False
        self.track_epoch += 1
        self.tracking = True

    cdef void _dirty(self, const uint8_t *p) noexcept nogil:
        """A row is being written: logged while track_writes is on."""
        if self.tracking:
            if self.ndirty < self.dirty_cap:
                self.dlog[self.ndirty] = <int32_t>((p - self.rows) // self.stride)
                self.ndirty += 1
            else:
                self.dirty_overflow = True

    def snapshot_begin(self, out=None):
        """Step 1 of a snapshot that holds the writer's lock only briefly
        (a checkpoint): a copy of the whole buffer taken from any thread,
        without the GIL, while the writer goes on. Rows written meanwhile may
        be torn in it; `snapshot_end` copies those again. Returns a token
        for snapshot_end. `out`: as for snapshot. Call `track_writes` first
        (from the writer) and snapshot_end copies only the rows written since."""
        arr = self._arr
        if arr is None:
            raise ValueError("table is closed")
        epoch = self.track_epoch if self.tracking else -1
        if not _fits(out, arr):
            out = np.empty_like(arr)
        cdef uint8_t[::1] dst = out
        cdef const uint8_t[::1] src = arr   # holds the buffer: a grow cannot unmap it under us
        cdef Py_ssize_t n = arr.shape[0]
        with nogil:
            memcpy(&dst[0], &src[0], n)
        return (arr, out, epoch)

    def snapshot_end(self, token):
        """Step 2, from the writer thread (no write in progress): makes the
        copy of `snapshot_begin` consistent as of now and returns it. The
        header and index are copied again (a few % of the buffer), then the
        rows written since: those `track_writes` logged when it was on from
        before step 1 (`last_fixup`: how many), else every row whose seqlock
        moved since its copy (or was odd in it: a write in progress) — every
        row write goes through its seqlock, a monotonic counter, so an
        unchanged even count means an unchanged row (`last_fixup` -1). When
        the table moved to another buffer meanwhile (it grew), a whole copy.
        Stops the log."""
        arr, out, epoch = token
        logged = (epoch >= 0 and self.tracking and epoch == self.track_epoch and not self.dirty_overflow)
        self.tracking = False
        if arr is not self._arr:
            self.last_fixup = -1
            return self.snapshot()
        cdef uint8_t[::1] dst = out
        cdef Py_ssize_t r, i, stride = self.stride, roff = self.layout.rows_offset, cap = self.capacity_
        cdef Py_ssize_t nd = self.ndirty
        cdef uint8_t *o = &dst[0]
        cdef bint by_log = logged and self.n_imarks == (self.nslots >> INDEX_CHUNK_SHIFT) + 1
        cdef Py_ssize_t ioff = self.layout.index_offset, iend = ioff + 8 * self.nslots, c, a, b
        with nogil:
            if by_log:  # the header, the index chunks written since track_writes, the padding
                memcpy(o, self.base, ioff)
                for c in range(self.n_imarks):
                    if self.imarks[c]:
                        a = ioff + 8 * (c << INDEX_CHUNK_SHIFT)
                        b = min(a + 8 * (1 << INDEX_CHUNK_SHIFT), iend)
                        if b > a:
                            memcpy(o + a, self.base + a, b - a)
                memcpy(o + iend, self.base + iend, roff - iend)
            else:
                memcpy(o, self.base, roff)
            if by_log:
                for i in range(nd):
                    r = self.dlog[i]
                    memcpy(o + roff + r * stride, self.rows + r * stride, stride)
            else:
                for r in range(cap):
                    if (<int64_t *>(self.rows + r * stride))[0] != (<int64_t *>(o + roff + r * stride))[0]:
                        memcpy(o + roff + r * stride, self.rows + r * stride, stride)
        self.last_fixup = nd if by_log else -1
        return out

    def flush(self):
        if self._mmap is not None and not self.readonly:
            self._mmap.flush()

    def close(self):
        self._arr = None
        self.base = NULL
        self.release_retired()
        if self._mmap is not None:
            m, self._mmap = self._mmap, None
            _unmap(m)

    # ---- keys ---------------------------------------------------------------

    def _encode_keys(self, keys):
        """Encoded keys as an (n, kw8) uint8 array (see fscore.schema)."""
        cdef Py_ssize_t n, i, off = 0, c
        cdef uint8_t[:, ::1] out
        cdef uint8_t *dst
        if self.base == NULL:
            raise ValueError("table is closed")
        cols, n = _batch.key_columns(self.schema, keys)
        if len(cols) == 1 and self.kw == 8 and self.schema.keys[0].kind == "int64":
            # PERF: vectorised sign-flip + byteswap (benches/bench_table.py, get_batch)
            enc = (cols[0].view(np.uint64) ^ np.uint64(1 << 63)).byteswap()
            return enc.view(np.uint8).reshape(n, 8)
        arr = np.zeros((n, self.kw8), dtype=np.uint8)
        out = arr
        for c, f in enumerate(self.schema.keys):
            if f.kind == "int64":
                _encode_int_keys(out, off, cols[c])
                off += 8
            else:
                col = cols[c]
                for i in range(n):
                    _encode_string(col[i], &out[i, off], f.size, f.name, "key")
                off += 2 + f.size
        return arr

    cdef int _encode_one(self, object key, uint8_t *dst) except -1:
        """Encodes a single key (scalar or tuple) into dst (kw8 bytes)."""
        cdef Py_ssize_t off = 0
        cdef int64_t v64
        if self.int_key and type(key) is int:
            # PERF: the common single int key without the tuple, zip and
            # checks of the general path (benches/bench_table.py, single get)
            try:
                v64 = key
            except OverflowError:
                raise KeyEncodingError(f"key column {self.schema.keys[0].name!r}: {key} does not fit in int64") from None
            _store_be64(dst, <uint64_t>v64 ^ 0x8000000000000000ULL)
            return 0
        memset(dst, 0, self.kw8)
        fields = self.schema.keys
        if len(fields) == 1 and not isinstance(key, tuple):
            key = (key,)
        if not isinstance(key, tuple) or len(key) != len(fields):
            raise KeyEncodingError(f"key {key!r} must have {len(fields)} part(s): {', '.join(self.schema.key_names)}")
        for f, v in zip(fields, key):
            if f.kind == "int64":
                if isinstance(v, (bool, float, str, bytes)) or v is None:
                    raise KeyEncodingError(f"key column {f.name!r} is int64; got {type(v).__name__} {v!r}")
                try:
                    _store_be64(dst + off, <uint64_t>(<int64_t>v) ^ 0x8000000000000000ULL)
                except OverflowError:
                    raise KeyEncodingError(f"key column {f.name!r}: {v} does not fit in int64") from None
                off += 8
            else:
                _encode_string(v, dst + off, f.size, f.name, "key")
                off += 2 + f.size
        return 0

    # ---- probing ------------------------------------------------------------

    cdef Py_ssize_t _find(self, const uint8_t *key, uint64_t h, Py_ssize_t *slot_out) noexcept nogil:
        """Writer-side probe: the row of key or -1; slot_out = its index slot, or
        the slot an insert should use (first tombstone, else the empty one)."""
        cdef Py_ssize_t s = <Py_ssize_t>(h & <uint64_t>self.mask), first_free = -1, j, row
        cdef uint64_t e, tag = h >> 32
        for j in range(self.nslots):
            e = self.index[s]
            if e == EMPTY:
                slot_out[0] = first_free if first_free >= 0 else s
                return -1
            if e == TOMBSTONE:
                if first_free < 0:
                    first_free = s
            elif (e >> 32) == tag:
                row = <Py_ssize_t>(e & 0xffffffffULL) - 2
                if _key_eq(self.rows + row * self.stride + ROW_KEY, key, self.kw8):
                    slot_out[0] = s
                    return row
            s = (s + 1) & self.mask
        slot_out[0] = first_free
        return -1

    cdef void _hash_prefetch(self, const uint8_t *keys, Py_ssize_t m, uint64_t *hs) noexcept nogil:
        """PERF: hashes m consecutive encoded keys into hs and prefetches their
        index slots, then the rows those name, so that a batch lookup overlaps
        the two dependent cache misses of a chunk of keys before probing them
        one by one (benches/bench_table.py). Hints only: the probes re-read."""
        cdef Py_ssize_t j
        cdef uint64_t e
        for j in range(m):
            hs[j] = hash_key(keys + j * self.kw8, self.kw8)
            fs_prefetch(&self.index[hs[j] & <uint64_t>self.mask])
        for j in range(m):
            e = self.index[hs[j] & <uint64_t>self.mask]
            if e > TOMBSTONE and <Py_ssize_t>(e & 0xffffffffULL) - 2 < self.capacity_:
                fs_prefetch(self.rows + (<Py_ssize_t>(e & 0xffffffffULL) - 2) * self.stride)

    cdef Py_ssize_t _probe_read(self, const uint8_t *key, uint64_t h) noexcept nogil:
        """Reader-side probe (any process): a row index whose key matched when
        seen, or -1. The caller copies the row under its seqlock and re-checks."""
        cdef Py_ssize_t s = <Py_ssize_t>(h & <uint64_t>self.mask), j, row
        cdef uint64_t e, tag = h >> 32
        for j in range(self.nslots):
            e = <uint64_t>fs_atomic_load_i64(<int64_t *>&self.index[s])
            if e == EMPTY:
                return -1
            if e != TOMBSTONE and (e >> 32) == tag:
                row = <Py_ssize_t>(e & 0xffffffffULL) - 2
                if row < self.capacity_ and _key_eq(self.rows + row * self.stride + ROW_KEY, key, self.kw8):
                    return row
            s = (s + 1) & self.mask
        return -1

    cdef int _insert_index(self, const uint8_t *key, uint64_t h, Py_ssize_t row) noexcept nogil:
        cdef Py_ssize_t slot
        self._find(key, h, &slot)
        if self.index[slot] == TOMBSTONE:
            self.hdr[H_TOMBSTONES] -= 1
        _index_store(self, slot, <int64_t>(((h >> 32) << 32) | <uint64_t>(row + 2)))
        return 0

    cdef void _unlink(self, Py_ssize_t slot, Py_ssize_t row) noexcept nogil:
        """Removes a live row: tombstone first (new readers skip it), then the
        row state under its seqlock (readers already on it retry and miss)."""
        cdef uint8_t *p = self.rows + row * self.stride
        _index_store(self, slot, TOMBSTONE)
        fs_seq_write_begin(<int64_t *>p)
        self._dirty(p)
        p[ROW_STATE] = 0
        fs_seq_write_end(<int64_t *>p)
        self.free_rows[self.nfree] = <int32_t>row
        self.nfree += 1
        self.hdr[H_TOMBSTONES] += 1
        fs_atomic_store_i64(&self.hdr[H_COUNT], self.hdr[H_COUNT] - 1)

    def _maybe_compact(self):
        if self.hdr[H_TOMBSTONES] * 4 >= self.nslots:
            self.compact()

    def compact(self):
        """Rebuilds the index without tombstones (done automatically when they
        would lengthen probes). Readers wait on the global seqlock meanwhile."""
        cdef Py_ssize_t r
        cdef uint8_t *p
        self._check_writable()
        with nogil:
            fs_seq_write_begin(&self.hdr[H_GLOBAL_SEQ])
            memset(self.index, 0, self.nslots * 8)
            if self.tracking and self.n_imarks:
                memset(self.imarks, 1, self.n_imarks)
            self.hdr[H_TOMBSTONES] = 0
            for r in range(self.capacity_):
                p = self.rows + r * self.stride
                if p[ROW_STATE] & ROW_LIVE:
                    self._insert_index(p + ROW_KEY, hash_key(p + ROW_KEY, self.kw8), r)
            self.hdr[H_COMPACTIONS] += 1
            fs_seq_write_end(&self.hdr[H_GLOBAL_SEQ])

    def _check_writable(self):
        if self.readonly:
            raise ReadOnlyError("this table handle is a read-only reader; write through the engine (the single writer)")
        if self.base == NULL:
            raise ValueError("table is closed")

    # ---- writes -------------------------------------------------------------

    def put_batch(self, keys, values=None, event_ts=None, created_ts=None, *, now, nulls=None, encoded=None):
        """Upserts rows; returns how many were written (see the module rules).
        `encoded`: as for slots_for."""
        cdef Py_ssize_t n, i, c, row, slot, ncols = self.ncols, stride = self.stride
        cdef int64_t tnow = now, e, ce, cutoff
        cdef uint64_t h
        cdef uint8_t *p
        cdef const uint8_t *k
        cdef Py_ssize_t written = 0, stale = 0
        cdef bint need_room
        cdef uint64_t hs[LOOKUP_CHUNK]
        cdef Py_ssize_t pf_lo = 0, pf_hi = 0
        self._check_writable()
        enc = self._keys_or_encoded(keys, encoded)
        n = enc.shape[0]
        ets_a, cts_a = _batch.timestamps(event_ts, created_ts, n)
        vals, masks = _batch.value_columns(self.schema, values, n, nulls)
        cdef const uint8_t[:, ::1] kmat = enc if n else np.zeros((1, self.kw8), dtype=np.uint8)
        cdef const int64_t[::1] ets = ets_a
        cdef const int64_t[::1] cts = cts_a
        srcs, src_ptrs, null_ptrs = self._value_sources(vals, masks, n)
        cdef const Py_ssize_t[::1] sp = src_ptrs
        cdef const Py_ssize_t[::1] np_ = null_ptrs
        cdef const Py_ssize_t[::1] off = self.col_off
        cdef const Py_ssize_t[::1] width = self.col_width
        cutoff = tnow - self.ttl if self.ttl > 0 else INT64_MIN
        i = 0
        while i < n:
            need_room = False
            with nogil:
                while i < n:
                    if i >= pf_hi:
                        pf_lo, pf_hi = i, min(i + LOOKUP_CHUNK, n)
                        self._hash_prefetch(&kmat[i, 0], pf_hi - pf_lo, hs)
                    k = &kmat[i, 0]
                    e = ets[i]
                    ce = cts[i]
                    if e < cutoff:
                        stale += 1
                        i += 1
                        continue
                    h = hs[i - pf_lo]
                    row = self._find(k, h, &slot)
                    if row >= 0:
                        p = self.rows + row * stride
                        if e < (<int64_t *>(p + ROW_ETS))[0] or (
                                e == (<int64_t *>(p + ROW_ETS))[0] and ce < (<int64_t *>(p + ROW_CTS))[0]):
                            i += 1
                            continue
                    else:
                        if self.nfree == 0:
                            need_room = True
                            break
                        self.nfree -= 1
                        row = self.free_rows[self.nfree]
                        p = self.rows + row * stride
                    fs_seq_write_begin(<int64_t *>p)
                    self._dirty(p)
                    (<int64_t *>(p + ROW_ETS))[0] = e
                    (<int64_t *>(p + ROW_CTS))[0] = ce
                    if p[ROW_STATE] == 0:
                        memcpy(p + ROW_KEY, k, self.kw8)
                        p[ROW_STATE] = self._new_state
                    for c in range(ncols):
                        p[self.null_off + c] = (<const uint8_t *>np_[c])[i]
                        if p[self.null_off + c]:
                            memset(p + off[c], 0, width[c])  # a null stores no value
                        elif width[c] == 8:
                            memcpy(p + off[c], <const uint8_t *>sp[c] + i * 8, 8)
                        else:
                            memcpy(p + off[c], <const uint8_t *>sp[c] + i * width[c], width[c])
                    fs_seq_write_end(<int64_t *>p)
                    if self.index[slot] == EMPTY or self.index[slot] == TOMBSTONE:
                        # publish the new row only once it is complete
                        if self.index[slot] == TOMBSTONE:
                            self.hdr[H_TOMBSTONES] -= 1
                        _index_store(self, slot, <int64_t>(((h >> 32) << 32) | <uint64_t>(row + 2)))
                        fs_atomic_store_i64(&self.hdr[H_COUNT], self.hdr[H_COUNT] + 1)
                    written += 1
                    i += 1
            if need_room:
                self._room_or_grow(tnow)
        self.hdr[H_PUTS] += written
        self.hdr[H_STALE_ON_ARRIVAL] += stale
        return written

    def _value_sources(self, vals, masks, Py_ssize_t n):
        """Every column as fixed-width bytes per row (numeric arrays already
        are; strings are encoded here, under the GIL, into (n, 2 + size)
        matrices), plus the addresses the nogil loops read. The first item
        keeps the arrays alive."""
        srcs = []
        for f, a, m in zip(self.schema.columns, vals, masks):
            if f.kind == "string":
                buf = np.zeros((max(n, 1), 2 + f.size), dtype=np.uint8)
                self._encode_string_column(a, m, buf, f)
                a = buf
            srcs.append((np.ascontiguousarray(a).reshape(-1).view(np.uint8) if n else np.zeros(1, np.uint8),
                         np.ascontiguousarray(m).view(np.uint8) if n else np.zeros(1, np.uint8)))
        return srcs, _addresses([x[0] for x in srcs]), _addresses([x[1] for x in srcs])

    # ---- row ids (for the engine's per-key window state) ---------------------

    def _keys_or_encoded(self, keys, encoded):
        if encoded is None:
            return self._encode_keys(keys)
        if not (isinstance(encoded, np.ndarray) and encoded.dtype == np.uint8 and encoded.ndim == 2
                and encoded.shape[1] == self.kw8 and encoded.flags.c_contiguous):
            raise ValueError(f"encoded keys must be a C-contiguous uint8 array of shape (n, {self.kw8}), "
                             "as encode_keys returns")
        return encoded

    def slots_for(self, keys, *, now, encoded=None):
        """Row ids of the given keys, inserting missing keys as rows with every
        value null and event_ts = created_ts = now (so eviction takes them
        last). Returns (rows int64[n], created bool[n]); a created row's id may
        have belonged to an evicted key, so per-row state kept elsewhere must
        be reset. Capacity must exceed the distinct new keys of one call.
        `encoded`: the keys as `encode_keys` returned them (then `keys` is
        not read), so a caller that checked them does not encode them twice."""
        cdef Py_ssize_t n, i, c, row, slot
        cdef int64_t tnow = now
        cdef uint64_t h
        cdef uint8_t *p
        cdef bint need_room
        cdef uint64_t hs[LOOKUP_CHUNK]
        cdef Py_ssize_t pf_lo = 0, pf_hi = 0
        self._check_writable()
        enc = self._keys_or_encoded(keys, encoded)
        n = enc.shape[0]
        rows_a = np.full(n, -1, dtype=np.int64)
        created_a = np.zeros(n, dtype=np.bool_)
        if n == 0:
            return rows_a, created_a
        cdef const uint8_t[:, ::1] kmat = enc
        cdef int64_t[::1] rows = rows_a
        cdef uint8_t[::1] created = created_a.view(np.uint8)
        i = 0
        while i < n:
            need_room = False
            with nogil:
                while i < n:
                    if i >= pf_hi:
                        # a chunk's hashes (valid after a grow too: they do not depend on the index)
                        pf_lo, pf_hi = i, min(i + LOOKUP_CHUNK, n)
                        self._hash_prefetch(&kmat[i, 0], pf_hi - pf_lo, hs)
                    h = hs[i - pf_lo]
                    row = self._find(&kmat[i, 0], h, &slot)
                    if row < 0:
                        if self.nfree == 0:
                            need_room = True
                            break
                        self.nfree -= 1
                        row = self.free_rows[self.nfree]
                        p = self.rows + row * self.stride
                        fs_seq_write_begin(<int64_t *>p)
                        self._dirty(p)
                        (<int64_t *>(p + ROW_ETS))[0] = tnow
                        (<int64_t *>(p + ROW_CTS))[0] = tnow
                        memcpy(p + ROW_KEY, &kmat[i, 0], self.kw8)
                        p[ROW_STATE] = self._new_state
                        for c in range(self.ncols):
                            p[self.null_off + c] = 1
                            memset(p + self.col_off[c], 0, self.col_width[c])
                        fs_seq_write_end(<int64_t *>p)
                        if self.index[slot] == TOMBSTONE:
                            self.hdr[H_TOMBSTONES] -= 1
                        _index_store(self, slot, <int64_t>(((h >> 32) << 32) | <uint64_t>(row + 2)))
                        fs_atomic_store_i64(&self.hdr[H_COUNT], self.hdr[H_COUNT] + 1)
                        created[i] = 1
                    rows[i] = row
                    i += 1
            if need_room:
                # rows this batch already returned stay: the caller holds their ids
                if self._room_or_grow(tnow, rows_a[:i]) == 0:
                    break  # every row is this batch's: reported below
        if (rows_a < 0).any() or len(set(rows_a[created_a].tolist())) != int(created_a.sum()):
            raise SchemaError(f"capacity {self.capacity_} is too small for one batch of "
                              f"{int(created_a.sum())} new keys; raise the table's capacity")
        return rows_a, created_a

    def put_rows(self, rows, values=None, event_ts=None, created_ts=None, *, nulls=None):
        """Overwrites the values and timestamps of live rows by id (from
        slots_for), whatever their current timestamps: the engine's computed
        window values. Returns how many rows were written."""
        cdef Py_ssize_t n, i, c, row, ncols = self.ncols
        cdef uint8_t *p
        self._check_writable()
        rows_a = np.ascontiguousarray(rows, dtype=np.int64)
        n = rows_a.shape[0]
        if n == 0:
            return 0
        if rows_a.min() < 0 or rows_a.max() >= self.capacity_:
            raise SchemaError(f"row ids must be in 0..{self.capacity_ - 1}")
        state = self._rows_matrix()[rows_a, ROW_STATE] & ROW_LIVE
        if not state.all():
            raise SchemaError("put_rows on a row that is not live; get its id from slots_for first")
        ets_a, cts_a = _batch.timestamps(event_ts, created_ts, n)
        vals, masks = _batch.value_columns(self.schema, values, n, nulls)
        srcs, src_ptrs, null_ptrs = self._value_sources(vals, masks, n)
        cdef const int64_t[::1] rid = rows_a
        cdef const int64_t[::1] ets = ets_a
        cdef const int64_t[::1] cts = cts_a
        cdef const Py_ssize_t[::1] sp = src_ptrs
        cdef const Py_ssize_t[::1] np_ = null_ptrs
        with nogil:
            for i in range(n):
                p = self.rows + rid[i] * self.stride
                fs_seq_write_begin(<int64_t *>p)
                self._dirty(p)
                (<int64_t *>(p + ROW_ETS))[0] = ets[i]
                (<int64_t *>(p + ROW_CTS))[0] = cts[i]
                for c in range(ncols):
                    p[self.null_off + c] = (<const uint8_t *>np_[c])[i]
                    if p[self.null_off + c]:
                        memset(p + self.col_off[c], 0, self.col_width[c])
                    else:
                        memcpy(p + self.col_off[c], <const uint8_t *>sp[c] + i * self.col_width[c],
                               self.col_width[c])
                fs_seq_write_end(<int64_t *>p)
        self.hdr[H_PUTS] += n
        return n

    def delete_rows(self, rows):
        """Deletes live rows by id; returns how many were live."""
        cdef Py_ssize_t n, i, row, slot, gone = 0
        cdef uint8_t *p
        self._check_writable()
        rows_a = np.ascontiguousarray(rows, dtype=np.int64)
        n = rows_a.shape[0]
        if n and (rows_a.min() < 0 or rows_a.max() >= self.capacity_):
            raise SchemaError(f"row ids must be in 0..{self.capacity_ - 1}")
        cdef const int64_t[::1] rid = rows_a if n else np.zeros(1, np.int64)
        with nogil:
            for i in range(n):
                p = self.rows + rid[i] * self.stride
                if p[ROW_STATE] & ROW_LIVE and self._find(p + ROW_KEY, hash_key(p + ROW_KEY, self.kw8), &slot) == rid[i]:
                    self._unlink(slot, rid[i])
                    gone += 1
        self._maybe_compact()
        return gone

    def find_rows(self, keys, *, encoded=None):
        """Row ids of the keys (-1 where absent); inserts nothing.
        `encoded`: as for slots_for (then `keys` is not read)."""
        cdef Py_ssize_t n, i, slot
        enc = self._keys_or_encoded(keys, encoded)
        n = enc.shape[0]
        out = np.full(n, -1, dtype=np.int64)
        if n == 0:
            return out
        cdef const uint8_t[:, ::1] kmat = enc
        cdef int64_t[::1] o = out
        with nogil:
            for i in range(n):
                o[i] = self._probe_read(&kmat[i, 0], hash_key(&kmat[i, 0], self.kw8))
        return out

    def encode_keys(self, keys):
        """The keys encoded as the table holds them, a (n, key bytes) uint8
        array for `slots_for(encoded=)`; raises KeyEncodingError for keys
        this table cannot hold (wrong type, string over its size)."""
        return np.ascontiguousarray(self._encode_keys(keys))

    def encode_key_columns(self, cols):
        """`encode_keys` for key columns given in key order: an int64 array
        per int64 column, a pyarrow string (or large_string) Array without
        nulls per string column. A string's bytes are copied from the Arrow
        buffers, with no Python object per key (PERF: Kafka batches; to_pylist
        and encoding each str cost ~0.3 µs a key)."""
        cdef Py_ssize_t n = -1, i, off = 0, size, ln
        cdef uint8_t[:, ::1] out
        cdef const int64_t[::1] offs
        cdef const uint8_t[::1] data
        cdef int64_t o0
        if self.base == NULL:
            raise ValueError("table is closed")
        fields = self.schema.keys
        if len(cols) != len(fields):
            raise KeyEncodingError(f"key: {len(fields)} column(s) expected ({', '.join(self.schema.key_names)}), "
                                   f"got {len(cols)}")
        for f, c in zip(fields, cols):
            if n < 0:
                n = len(c)
            elif len(c) != n:
                raise KeyEncodingError(f"key columns have different lengths ({n} and {len(c)})")
        n = max(n, 0)
        arr = np.zeros((n, self.kw8), dtype=np.uint8)
        out = arr
        for f, c in zip(fields, cols):
            if f.kind == "int64":
                _encode_int_keys(out, off, np.ascontiguousarray(c, dtype=np.int64))
                off += 8
                continue
            # (duck-typed: readers of this module need not import pyarrow)
            kind = str(getattr(c, "type", "")) if hasattr(c, "buffers") else ""
            if kind not in ("string", "large_string"):
                raise KeyEncodingError(f"key column {f.name!r} is string; got {type(c).__name__}")
            if c.null_count:
                raise KeyEncodingError(f"key column {f.name!r} has {c.null_count} null(s)")
            size = f.size
            bufs = c.buffers()
            wide = np.dtype(np.int64 if kind == "large_string" else np.int32)
            offsets = np.frombuffer(bufs[1], dtype=wide, count=c.offset + n + 1)[c.offset:].astype(np.int64)
            lens = np.diff(offsets)
            if n and lens.max() > size:
                raise KeyEncodingError(f"key column {f.name!r}: {int(lens.max())} UTF-8 bytes is over its size {size}")
            offs = offsets
            data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None and bufs[2].size else _ONE_BYTE
            with nogil:
                for i in range(n):
                    o0 = offs[i]
                    ln = offs[i + 1] - o0
                    out[i, off] = (ln >> 8) & 0xff
                    out[i, off + 1] = ln & 0xff
                    if ln:
                        memcpy(&out[i, off + 2], &data[o0], ln)
            off += 2 + size
        return arr

    def rows_live(self, rows):
        """Whether each row id (in range) holds a live key."""
        rows_a = np.asarray(rows, dtype=np.int64)
        if rows_a.size and (rows_a.min() < 0 or rows_a.max() >= self.capacity_):
            raise SchemaError(f"row ids must be in 0..{self.capacity_ - 1}")
        return (self._rows_matrix()[rows_a, ROW_STATE] & ROW_LIVE) != 0

    @property
    def insert_hidden(self):
        """Rows this writer creates from now on are hidden (see hide_rows)."""
        return self._new_state != ROW_LIVE

    @insert_hidden.setter
    def insert_hidden(self, bint hidden):
        self._new_state = ROW_LIVE | ROW_HIDDEN if hidden else ROW_LIVE

    def hide_rows(self, rows):
        """Readers answer NOT_FOUND for these live rows (by id) until
        show_rows; the writer keeps finding, writing and evicting them as
        before. Returns how many changed."""
        return self._set_hidden(rows, True)

    def show_rows(self, rows):
        """Undoes hide_rows for these rows (by id); returns how many changed."""
        return self._set_hidden(rows, False)

    def rows_visible(self, rows):
        """Per row id: True where readers see the row (live, not hidden)."""
        rows_a = np.asarray(rows, dtype=np.int64)
        if rows_a.size and (rows_a.min() < 0 or rows_a.max() >= self.capacity_):
            raise SchemaError(f"row ids must be in 0..{self.capacity_ - 1}")
        return self._rows_matrix()[rows_a, ROW_STATE] == ROW_LIVE

    def hidden_rows(self):
        """Row ids of every hidden live row (int64, ascending)."""
        return np.nonzero(self._rows_matrix()[:, ROW_STATE] == ROW_LIVE | ROW_HIDDEN)[0].astype(np.int64)

    def _set_hidden(self, rows, bint hidden):
        self._check_writable()
        rows_a = np.ascontiguousarray(rows, dtype=np.int64)
        cdef Py_ssize_t n = rows_a.shape[0], i, changed = 0
        if n and (rows_a.min() < 0 or rows_a.max() >= self.capacity_):
            raise SchemaError(f"row ids must be in 0..{self.capacity_ - 1}")
        cdef const int64_t[::1] rid = rows_a if n else np.zeros(1, np.int64)
        cdef uint8_t want = ROW_LIVE | ROW_HIDDEN if hidden else ROW_LIVE
        cdef uint8_t *p
        with nogil:
            for i in range(n):
                p = self.rows + rid[i] * self.stride
                if p[ROW_STATE] & ROW_LIVE and p[ROW_STATE] != want:
                    fs_seq_write_begin(<int64_t *>p)
                    self._dirty(p)
                    p[ROW_STATE] = want
                    fs_seq_write_end(<int64_t *>p)
                    changed += 1
        return changed

    def live_rows(self):
        """Row ids of every live row (int64, ascending)."""
        return np.nonzero((self._rows_matrix()[:, ROW_STATE] & ROW_LIVE) != 0)[0].astype(np.int64)

    def row_keys(self, rows):
        """The keys of rows by id (None for a free row), decoded."""
        mat = self._rows_matrix()
        out = []
        for r in np.asarray(rows, dtype=np.int64).tolist():
            row = mat[r]
            out.append(self.schema.decode_key(bytes(row[ROW_KEY:ROW_KEY + self.kw])) if row[ROW_STATE] & ROW_LIVE else None)
        return out

    def _encode_string_column(self, a, m, buf, f):
        cdef uint8_t[:, ::1] out = buf
        cdef const uint8_t[::1] mask = np.ascontiguousarray(m).view(np.uint8)
        cdef Py_ssize_t i
        for i in range(a.shape[0]):
            if not mask[i]:
                _encode_string(a[i], &out[i, 0], f.size, f.name, "value")

    def _make_room(self, int64_t now, protect=None):
        """Frees rows for a new key: expired rows first, else the oldest;
        never a row in `protect` (ids a slots_for batch already returned)."""
        cdef Py_ssize_t gone
        if self.ttl > 0:
            gone = self.expire(now)
            if gone > 0:
                return gone
        return len(self.evict_oldest(max(1, self.capacity_ // 64), protect))

    def evict_oldest(self, Py_ssize_t k, protect=None):
        """Removes the k rows with the oldest event time (ties: by encoded key)
        but none in `protect`; counts them as capacity evictions and returns
        their row ids (state kept elsewhere by row id is theirs to drop)."""
        cdef Py_ssize_t row, slot
        cdef const uint8_t[:, ::1] rm
        self._check_writable()
        rows = self._rows_matrix()
        live = np.nonzero((rows[:, ROW_STATE] & ROW_LIVE) != 0)[0]
        if protect is not None and len(protect):
            live = np.setdiff1d(live, protect, assume_unique=False)
        ets = np.ascontiguousarray(rows[live, ROW_ETS:ROW_ETS + 8]).view(np.int64)[:, 0]
        keys = np.ascontiguousarray(rows[live, ROW_KEY:ROW_KEY + self.kw]).view(f"S{self.kw}")[:, 0]
        victims = live[np.lexsort((keys, ets))[:max(k, 0)]]
        rm = rows
        for row in victims:
            if self._find(&rm[row, ROW_KEY], hash_key(&rm[row, ROW_KEY], self.kw8), &slot) == row:
                self._unlink(slot, row)
        self.hdr[H_EVICT_CAPACITY] += len(victims)
        self._maybe_compact()
        return victims.astype(np.int64)

    cdef Py_ssize_t _expire_nogil(self, int64_t now) noexcept nogil:
        cdef Py_ssize_t r, slot, gone = 0
        cdef uint8_t *p
        cdef int64_t cutoff = now - self.ttl
        for r in range(self.capacity_):
            p = self.rows + r * self.stride
            if p[ROW_STATE] & ROW_LIVE and (<int64_t *>(p + ROW_ETS))[0] < cutoff:
                if self._find(p + ROW_KEY, hash_key(p + ROW_KEY, self.kw8), &slot) == r:
                    self._unlink(slot, r)
                    gone += 1
        return gone

    def expire(self, now):
        """Removes every row with event_ts < now - ttl; returns how many."""
        cdef Py_ssize_t gone
        cdef int64_t tnow = now
        self._check_writable()
        if self.ttl <= 0:
            return 0
        with nogil:
            gone = self._expire_nogil(tnow)
        self.hdr[H_EVICT_EXPIRED] += gone
        self._maybe_compact()
        return gone

    def delete_batch(self, keys):
        """Deletes the given keys; returns how many were present."""
        cdef Py_ssize_t n, i, row, slot, gone = 0
        cdef uint64_t h
        self._check_writable()
        enc = self._encode_keys(keys)
        n = enc.shape[0]
        if n == 0:
            return 0
        cdef const uint8_t[:, ::1] kmat = enc
        with nogil:
            for i in range(n):
                h = hash_key(&kmat[i, 0], self.kw8)
                row = self._find(&kmat[i, 0], h, &slot)
                if row >= 0:
                    self._unlink(slot, row)
                    gone += 1
        self._maybe_compact()
        return gone

    def delete(self, key):
        """Deletes one key; True if it was present."""
        return self.delete_batch(_single_key_batch(self.schema, key)) == 1

    # ---- reads --------------------------------------------------------------

    def get_batch(self, keys, now):
        """Looks up a batch of keys as of `now`; returns a BatchResult."""
        return self._lookup(keys, now, False)

    def get_rows(self, keys, now):
        """Looks up a batch of keys as of `now` like `get_batch`, but returns
        each row's bytes whole instead of one array per column:
        (status uint8[n], event_ts int64[n], rows uint8[n, stride]). A row is
        copied under its seqlock (never torn); a row that is not PRESENT is
        zeros with every null flag set. Where each column lies in a row:
        `column_layout()`. PERF: for encoders that walk a few rows, this
        skips allocating two arrays per column (fscore.jsonenc)."""
        return self._lookup(keys, now, True)

    def column_layout(self):
        """[(name, kind, offset, width, null flag offset)] of each value
        column inside a row (docs/table.md: strings are a 2-byte big-endian
        length then UTF-8 bytes; vectors float32; numbers native-endian)."""
        cdef Py_ssize_t c
        out = []
        for c in range(self.ncols):
            f = self.schema.columns[c]
            out.append((f.name, f.kind, self.col_off[c], self.col_width[c], self.null_off + c))
        return out

    def _lookup(self, keys, now, bint whole_rows):
        cdef Py_ssize_t n, stride = self.stride
        if self.base == NULL:
            raise ValueError("table is closed")
        keys = self._key_source(keys)
        n = len(keys)
        if n == 0:
            if whole_rows:
                return np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros((0, stride), np.uint8)
            values, nulls = _batch.output_arrays(self.schema, 0)
            return BatchResult(np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64), values, nulls)
        # empty, not zeros: _read writes every position of every output
        status_a = _empty(n, cnp.NPY_UINT8)
        ets_a = _empty(n, cnp.NPY_INT64)
        if whole_rows:
            rows_a = _empty2(n, stride, cnp.NPY_UINT8)
            self._read(keys, n, now, <uint8_t *>cnp.PyArray_DATA(status_a), <int64_t *>cnp.PyArray_DATA(ets_a),
                       NULL, <uint8_t *>cnp.PyArray_DATA(rows_a), NULL, NULL)
            return status_a, ets_a, rows_a
        cts_a = _empty(n, cnp.NPY_INT64)
        values, nulls, outs = {}, {}, []
        for f in self.schema.columns:
            nulls[f.name] = _empty(n, cnp.NPY_BOOL)
            if f.kind == "string":
                outs.append(_empty2(n, 2 + f.size, cnp.NPY_UINT8))
            elif f.kind in _MATRIX_NPY:
                values[f.name] = _empty2(n, f.size, _MATRIX_NPY[f.kind])
                outs.append(values[f.name])
            else:
                values[f.name] = _empty(n, _NPY_TYPES[f.kind])
                outs.append(values[f.name])
        out_ptrs = _addresses(outs)
        null_ptrs = _addresses([nulls[f.name] for f in self.schema.columns])
        cdef const Py_ssize_t[::1] op = out_ptrs
        cdef const Py_ssize_t[::1] nlp = null_ptrs
        self._read(keys, n, now, <uint8_t *>cnp.PyArray_DATA(status_a), <int64_t *>cnp.PyArray_DATA(ets_a),
                   <int64_t *>cnp.PyArray_DATA(cts_a), NULL, &op[0] if self.ncols else NULL,
                   &nlp[0] if self.ncols else NULL)
        for f, o in zip(self.schema.columns, outs):
            if f.kind == "string":
                values[f.name] = _decode_strings(o, nulls[f.name])
        return BatchResult(status_a, ets_a, cts_a, values, nulls)

    def _key_source(self, keys):
        """A key batch as `_read` takes it, `len()` of it the row count. For
        a table keyed by one int64 column, a list as is (PERF: plain ints are
        read straight from it, no array; benches/bench_serving.py) and a
        plain int64 array as is (PERF: encoded inside the loop, saving the
        numpy passes of _encode_keys; benches/bench_table.py, get_batch);
        anything else encoded to an (n, kw8) uint8 array."""
        if self.int_key and (type(keys) is list or (
                type(keys) is np.ndarray and (<cnp.ndarray>keys).ndim == 1
                and cnp.PyArray_TYPE(keys) == cnp.NPY_INT64 and cnp.PyArray_IS_C_CONTIGUOUS(keys))):
            return keys
        return self._encode_keys(keys)

    cdef int rows_into(self, object keys, Py_ssize_t n, int64_t now, uint8_t *status, int64_t *ets,
                       uint8_t *rows) except -1:
        """`get_rows` into the caller's buffers (n, n and n * stride bytes),
        for C callers (fscore.jsonenc.table_results) that need no arrays.
        `keys`: n keys as `_key_source(...)` gives them."""
        if self.base == NULL:
            raise ValueError("table is closed")
        if not (self.int_key and type(keys) is list):
            if not (type(keys) is np.ndarray and (
                    (keys.ndim == 1 and self.int_key and keys.dtype == np.int64)
                    or (keys.ndim == 2 and keys.dtype == np.uint8 and keys.shape[1] == self.kw8))
                    and (<cnp.ndarray>keys).flags.c_contiguous):
                raise TypeError("rows_into takes a list of int keys or what _key_source returns")
        if len(keys) != n:
            raise ValueError(f"{len(keys)} keys for {n} rows")
        if n:
            self._read(keys, n, now, status, ets, NULL, rows, NULL, NULL)
        return 0

    cdef int _read(self, object keys, Py_ssize_t n, int64_t tnow, uint8_t *status, int64_t *ets, int64_t *cts,
                   uint8_t *rows_out, const Py_ssize_t *op, const Py_ssize_t *nlp) except -1:
        """The lookup loop over n keys as `_key_source` gives them (a list
        whose items are not all int64 ints is encoded here, with its errors).
        Writes status/ets (and cts unless NULL) for every row, and either the
        whole row images (`rows_out`) or each column (`op`/`nlp`: one output
        and one null-flag address per column)."""
        cdef Py_ssize_t i, j, m, c, row, ncols = self.ncols, stride = self.stride, kw8 = self.kw8
        cdef int64_t s, g, e, ce, cutoff
        cdef uint8_t *p
        cdef const uint8_t *kp
        cdef uint8_t st
        cdef uint64_t hs[LOOKUP_CHUNK]
        cdef uint8_t kloc[LOOKUP_CHUNK * 8]
        cdef const int64_t *ints = NULL
        cdef const uint8_t *kmat = NULL
        cdef int64_t *owned = NULL
        cdef const Py_ssize_t *off = &self.col_off[0] if ncols else NULL
        cdef const Py_ssize_t *width = &self.col_width[0] if ncols else NULL
        if type(keys) is list:
            owned = _int_keys(keys, n) if self.int_key else NULL
            if owned != NULL:
                ints = owned
            else:
                keys = self._encode_keys(keys)
        if ints == NULL:
            if (<cnp.ndarray>keys).ndim == 1:
                ints = <const int64_t *>cnp.PyArray_DATA(keys)
            else:
                kmat = <const uint8_t *>cnp.PyArray_DATA(keys)
        cutoff = tnow - self.ttl if self.ttl > 0 else INT64_MIN
        with nogil:
            for i in range(n):
                if i % LOOKUP_CHUNK == 0:
                    # PERF: overlap the cache misses of a chunk of keys (index slot,
                    # then row) before probing them one by one (benches/bench_table.py)
                    m = min(LOOKUP_CHUNK, n - i)
                    if ints != NULL:
                        for j in range(m):
                            _store_be64(&kloc[j * 8], <uint64_t>ints[i + j] ^ 0x8000000000000000ULL)
                    self._hash_prefetch(&kloc[0] if ints != NULL else kmat + i * kw8, m, hs)
                kp = &kloc[(i % LOOKUP_CHUNK) * 8] if ints != NULL else kmat + i * kw8
                e = ce = 0
                while True:
                    g = fs_seq_read_begin(&self.hdr[H_GLOBAL_SEQ])
                    row = self._probe_read(kp, hs[i % LOOKUP_CHUNK])
                    st = ST_NOT_FOUND
                    if row >= 0:
                        p = self.rows + row * stride
                        while True:
                            s = fs_seq_read_begin(<int64_t *>p)
                            st = ST_NOT_FOUND
                            if p[ROW_STATE] == ROW_LIVE and _key_eq(p + ROW_KEY, kp, kw8):
                                e = (<int64_t *>(p + ROW_ETS))[0]
                                ce = (<int64_t *>(p + ROW_CTS))[0]
                                if e < cutoff:
                                    st = ST_OUTSIDE_MAX_AGE
                                elif rows_out != NULL:
                                    st = ST_PRESENT
                                    memcpy(rows_out + i * stride, p, stride)
                                else:
                                    st = ST_PRESENT
                                    for c in range(ncols):
                                        (<uint8_t *>nlp[c])[i] = p[self.null_off + c]
                                        # PERF: constant sizes compile to single moves, not memcpy calls
                                        if width[c] == 8:
                                            memcpy(<uint8_t *>op[c] + i * 8, p + off[c], 8)
                                        elif width[c] == 1:
                                            (<uint8_t *>op[c])[i] = p[off[c]]
                                        else:
                                            memcpy(<uint8_t *>op[c] + i * width[c], p + off[c], width[c])
                            if not fs_seq_read_retry(<int64_t *>p, s):
                                break
                    if not fs_seq_read_retry(&self.hdr[H_GLOBAL_SEQ], g):
                        break
                status[i] = st
                if st == ST_NOT_FOUND:
                    e = ce = 0
                ets[i] = e
                if cts != NULL:
                    cts[i] = ce
                if st != ST_PRESENT:
                    if rows_out != NULL:
                        memset(rows_out + i * stride, 0, stride)
                        memset(rows_out + i * stride + self.null_off, 1, ncols)
                    else:
                        for c in range(ncols):
                            (<uint8_t *>nlp[c])[i] = 1
                            memset(<uint8_t *>op[c] + i * width[c], 0, width[c])
        PyMem_Free(owned)
        return 0

    def get(self, key, now):
        """One key as of `now`: a tuple of column values (None for nulls), or
        None when the key is absent or outside max age."""
        cdef uint8_t kstack[256]
        cdef uint8_t rstack[1024]
        cdef uint8_t *kp = kstack
        cdef uint8_t *rb = rstack
        cdef Py_ssize_t row, c
        cdef int64_t s, g, cutoff, tnow = now
        cdef uint8_t *p
        cdef object kheap = None, rheap = None
        if self.base == NULL:
            raise ValueError("table is closed")
        if self.kw8 > 256:
            kheap = np.zeros(self.kw8, dtype=np.uint8)
            kp = <uint8_t *>cnp.PyArray_DATA(kheap)
        if self.stride > 1024:
            rheap = np.zeros(self.stride, dtype=np.uint8)
            rb = <uint8_t *>cnp.PyArray_DATA(rheap)
        self._encode_one(key, kp)
        cutoff = tnow - self.ttl if self.ttl > 0 else INT64_MIN
        with nogil:
            while True:
                g = fs_seq_read_begin(&self.hdr[H_GLOBAL_SEQ])
                row = self._probe_read(kp, hash_key(kp, self.kw8))
                if row >= 0:
                    p = self.rows + row * self.stride
                    while True:
                        s = fs_seq_read_begin(<int64_t *>p)
                        memcpy(rb, p, self.stride)
                        if not fs_seq_read_retry(<int64_t *>p, s):
                            break
                if not fs_seq_read_retry(&self.hdr[H_GLOBAL_SEQ], g):
                    break
        if row < 0 or rb[ROW_STATE] != ROW_LIVE or not _key_eq(rb + ROW_KEY, kp, self.kw8):
            return None
        if (<int64_t *>(rb + ROW_ETS))[0] < cutoff:
            return None
        out = PyTuple_New(self.ncols)
        for c in range(self.ncols):
            if rb[self.null_off + c]:
                v = None
            else:
                v = _decode_value(self.col_kind[c], rb + self.col_off[c], self.col_width[c])
            Py_INCREF(v)
            PyTuple_SET_ITEM(out, c, v)
        return out
