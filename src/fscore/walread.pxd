# The WAL segment scanner's contract (bodies in walread.pyx).
from libc.stdint cimport uint8_t, uint64_t
from fscore.record cimport fs_record

# What a scan step found at an offset of a segment.
cdef enum ScanStep:
    STEP_RECORD = 0   # a valid record with the expected LSN
    STEP_END = 1      # zeros (or nothing) up to the end: a clean end
    STEP_TORN = 2     # a bad record with nothing valid after it: a torn tail
    STEP_CORRUPT = 3  # a bad record followed by a valid one: mid-log damage
    STEP_LSN = 4      # a valid record with an unexpected LSN

cdef ScanStep scan_step(const uint8_t *buf, size_t n, size_t off, uint64_t expect,
                        fs_record *rec, size_t *valid_at) noexcept nogil


cdef class SegmentScan:
    cdef const uint8_t[::1] buf
    cdef readonly size_t end
    cdef readonly uint64_t last_lsn
    cdef readonly int step
    cdef readonly Py_ssize_t bad_offset
    cdef readonly Py_ssize_t valid_at
    cdef readonly Py_ssize_t found_lsn
    cdef bint want_payload
