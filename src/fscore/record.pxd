# The contract of the WAL record codec (c/record.h) and CRC32C (c/crc32c.h),
# shared by fscore.wal (writer) and fscore.walread (reader). Extern-only: the
# bodies are C, compiled into each extension by setup.py.
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


cdef inline int check_record(int rtype, Py_ssize_t n) except -1:
    """Rejects what the codec cannot encode, with a message saying what to fix."""
    if not 1 <= rtype <= 255:
        raise ValueError(f"record type must be 1..255 (0 is reserved), got {rtype}")
    if n > <Py_ssize_t>FS_REC_MAX_PAYLOAD:
        raise ValueError(f"payload of {n} bytes is over the {FS_REC_MAX_PAYLOAD}-byte record limit; split it")
    return 0
