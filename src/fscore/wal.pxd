# The contract of the WAL writer (body in wal.pyx; format in its docstring).
from libc.stdint cimport uint8_t, uint64_t
from fscore.record cimport (FS_REC_HEADER, check_record, fs_record_encode, fs_record_lsn,
                            fs_records_fitting)


cdef class Wal:
    cdef readonly str dir
    cdef readonly str fsync_policy
    cdef readonly object recovery
    cdef int _policy
    cdef double _interval_s
    cdef size_t _segment_bytes
    cdef bint _preallocate
    cdef object _fsync_fn
    cdef object _cond
    cdef object _lock_fd
    # Double buffer: appenders encode into _bufs[_cur] under _cond while the
    # leader writes the other one without the lock.
    cdef uint8_t *_bufs[2]
    cdef size_t _caps[2]
    cdef size_t _lens[2]
    cdef int _cur
    cdef uint64_t _next_lsn
    cdef uint64_t _written_lsn
    cdef uint64_t _durable_lsn
    cdef bint _leader_active
    cdef object _poison
    cdef bint _closed
    # Current segment; touched only by the leader.
    cdef int _fd
    cdef uint64_t _seg_first
    cdef size_t _seg_used
    cdef list _segment_firsts
    cdef object _ticker
    cdef object _stop

    cdef int _encode(self, int rtype, object payload) except -1
    cdef int _reserve(self, size_t extra) except -1
    cdef int _write_at(self, const uint8_t *p, size_t n) except -1
    cdef int _write_batch(self, const uint8_t *buf, size_t n) except -1
