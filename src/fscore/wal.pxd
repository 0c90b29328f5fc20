# The contract of the WAL writer (body in wal.pyx; format in its docstring).
from libc.stdint cimport uint8_t, uint64_t
from fscore.record cimport FS_REC_HEADER, check_record


cdef extern from "groupcommit.h" nogil:
    int FS_GC_MAX_SYNCERS
    int FS_GC_OK, FS_GC_EPOISON_FSYNC, FS_GC_EPOISON_WRITE, FS_GC_ECLOSED, FS_GC_ENOMEM, FS_GC_EINVAL
    ctypedef int (*fs_gc_sync_fn)(void *ctx, int fd) noexcept
    ctypedef struct fs_gc:
        int poison
        int poison_errno
        const char *poison_what
        uint64_t poison_durable
        int closed
    int fs_gc_init(fs_gc *gc, const char *dir, int wfd, uint64_t seg_first, size_t seg_used, size_t seg_bytes,
                   int preallocate, uint64_t next_lsn, int max_syncers, unsigned commit_delay_us,
                   fs_gc_sync_fn sync_fn, void *sync_ctx) noexcept
    int fs_gc_append(fs_gc *gc, size_t n, const uint8_t *types, const void *const *payloads, const size_t *lens,
                     int durable, uint64_t *first_lsn) noexcept
    int fs_gc_wait(fs_gc *gc, uint64_t lsn, int durable) noexcept
    int fs_gc_sync(fs_gc *gc) noexcept
    int fs_gc_close(fs_gc *gc) noexcept
    void fs_gc_abandon(fs_gc *gc) noexcept
    void fs_gc_destroy(fs_gc *gc) noexcept
    void fs_gc_stats(fs_gc *gc, uint64_t out[8]) noexcept


cdef class Wal:
    cdef readonly str dir
    cdef readonly str fsync_policy
    cdef readonly object recovery
    cdef readonly int max_syncers
    cdef readonly unsigned commit_delay_us
    cdef int _policy
    cdef double _interval_s
    cdef size_t _segment_bytes
    cdef bint _preallocate
    cdef object _fsync_fn
    cdef object _fsync_exc      # the exception the injected fsync_fn raised (poison cause)
    cdef object _lock_fd
    cdef object _close_lock
    # The group-commit engine (c/groupcommit.h): buffers, LSNs, segment fds, poison.
    cdef fs_gc *_gc
    cdef bint _gc_ready
    cdef bint _closed
    # The tail segment while opening (handed to _gc afterwards).
    cdef int _fd
    cdef uint64_t _seg_first
    cdef size_t _seg_used
    cdef uint64_t _next_lsn
    cdef object _ticker
    cdef object _stop

    cdef int _check(self, int rc) except -1
