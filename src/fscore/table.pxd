# The contract of the online table's C layer (see table.pyx for the rules and
# layout.py for the byte layout shared with readers in other processes).
from libc.stdint cimport int64_t, uint64_t, uint8_t, int32_t

cdef extern from "seqlock.h" nogil:
    void fs_seq_write_begin(int64_t *seq) noexcept
    void fs_seq_write_end(int64_t *seq) noexcept
    int64_t fs_seq_read_begin(const int64_t *seq) noexcept
    int fs_seq_read_retry(const int64_t *seq, int64_t start) noexcept
    int64_t fs_atomic_load_i64(const int64_t *p) noexcept
    void fs_atomic_store_i64(int64_t *p, int64_t v) noexcept
    void fs_prefetch(const void *p) noexcept

cdef uint64_t hash_key(const uint8_t *key, Py_ssize_t kw8) noexcept nogil


cdef class Table:
    cdef readonly object schema
    cdef readonly object layout
    cdef readonly object path
    cdef readonly bint readonly
    cdef object _arr            # numpy uint8 view of the whole buffer
    cdef object _mmap
    cdef object _inode
    cdef object _tmp_path
    cdef list _retired_maps    # (mapping, fd) a growth ahead left for release_retired (outside the writer's lock)
    cdef uint8_t *base
    cdef int64_t *hdr
    cdef uint64_t *index
    cdef uint8_t *rows
    cdef Py_ssize_t capacity_, max_capacity_, nslots, mask, stride, kw, kw8, ncols, null_off
    cdef int64_t ttl
    cdef int32_t[::1] free_rows
    cdef Py_ssize_t nfree
    cdef uint8_t _new_state     # ROW_STATE of the rows put_batch/slots_for create (insert_hidden)
    cdef Py_ssize_t[::1] col_off
    cdef Py_ssize_t[::1] col_width
    cdef uint8_t[::1] col_kind
    cdef bint int_key
    # rows written since track_writes() (a checkpoint's snapshot_end copies only those again)
    cdef object _dlog_arr
    cdef int32_t *dlog
    cdef Py_ssize_t ndirty, dirty_cap
    cdef bint tracking, dirty_overflow
    # index chunks (INDEX_CHUNK entries) written since track_writes(): snapshot_end
    # copies those again, not the whole index (~16 MB, ~2.5 ms at 1M keys)
    cdef object _imarks_arr
    cdef uint8_t *imarks
    cdef Py_ssize_t n_imarks
    cdef int64_t track_epoch
    cdef readonly Py_ssize_t last_fixup

    cdef int _encode_one(self, object key, uint8_t *dst) except -1
    cdef int rows_into(self, object keys, Py_ssize_t n, int64_t now, uint8_t *status, int64_t *ets,
                       uint8_t *rows) except -1
    cdef int _read(self, object keys, Py_ssize_t n, int64_t tnow, uint8_t *status, int64_t *ets, int64_t *cts,
                   uint8_t *rows_out, const Py_ssize_t *op, const Py_ssize_t *nlp) except -1

    cdef void _bind(self, object arr, bint readonly) except *
    cdef Py_ssize_t _find(self, const uint8_t *key, uint64_t h, Py_ssize_t *slot_out) noexcept nogil
    cdef Py_ssize_t _probe_read(self, const uint8_t *key, uint64_t h) noexcept nogil
    cdef void _hash_prefetch(self, const uint8_t *keys, Py_ssize_t m, uint64_t *hs) noexcept nogil
    cdef void _unlink(self, Py_ssize_t slot, Py_ssize_t row) noexcept nogil
    cdef void _dirty(self, const uint8_t *p) noexcept nogil
    cdef int _insert_index(self, const uint8_t *key, uint64_t h, Py_ssize_t row) noexcept nogil
    cdef Table _new_shadow(self, Py_ssize_t new_capacity)
    cdef void _adopt(self, Table shadow, bint defer_unmap) except *
    cdef Py_ssize_t _expire_nogil(self, int64_t now) noexcept nogil
