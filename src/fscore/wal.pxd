# The contract of the WAL's C layer: the record codec (c/record.h) and CRC32C.
# The format and recovery rules are in wal.pyx's docstring and docs/wal.md.
from libc.stdint cimport uint8_t, uint32_t, uint64_t

cdef extern from "crc32c.h" nogil:
    uint32_t fs_crc32c_extend(uint32_t crc, const void *data, size_t n) noexcept

cdef extern from "record.h" nogil:
    const size_t FS_REC_HEADER
    const size_t FS_REC_MAX_PAYLOAD
    ctypedef enum fs_rec_status:
        FS_REC_OK
        FS_REC_TORN
        FS_REC_CORRUPT
        FS_REC_ZERO
    ctypedef struct fs_record:
        uint64_t lsn
        uint32_t length
        uint8_t type
        size_t payload
        size_t next
    size_t fs_record_size(size_t n) noexcept
    size_t fs_record_encode(uint8_t *out, uint8_t type, uint64_t lsn, const void *payload, size_t n) noexcept
    fs_rec_status fs_record_decode(const uint8_t *buf, size_t n, size_t off, fs_record *rec) noexcept
    int fs_all_zero(const uint8_t *buf, size_t n, size_t start) noexcept
    size_t fs_record_find_valid(const uint8_t *buf, size_t n, size_t start, uint64_t min_lsn) noexcept
    size_t fs_records_fitting(const uint8_t *buf, size_t n, size_t room) noexcept
    uint64_t fs_record_lsn(const uint8_t *buf) noexcept

# What a scan step found at an offset of a segment.
cdef enum ScanStep:
    STEP_RECORD = 0   # a valid record with the expected LSN
    STEP_END = 1      # zeros (or nothing) up to the end: a clean end
    STEP_TORN = 2     # a bad record with nothing valid after it: a torn tail
    STEP_CORRUPT = 3  # a bad record followed by a valid one: mid-log damage
    STEP_LSN = 4      # a valid record with an unexpected LSN

cdef ScanStep scan_step(const uint8_t *buf, size_t n, size_t off, uint64_t expect,
                        fs_record *rec, size_t *valid_at) noexcept nogil


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
