"""Write-ahead log: segmented, checksummed, group-committed; and its recovery.

Format (all integers little-endian; see docs/wal.md for the full rules)::

    log      := segment+                      ordered by first LSN
    segment  := record* zero-tail?            file "<first LSN, 20 digits>.wal"
    record   := crc32c:u32 length:u32 type:u8 lsn:u64 payload
    payload  := byte{length}                  length <= 2**30
    zero-tail:= 0x00*                         preallocated, never written

    crc32c   covers type..payload plus length, i.e. every byte after the crc
    type     1..255 (0 is reserved so a zero header never decodes)
    lsn      consecutive: the first record of a segment has the LSN in its
             file name, every next record the previous LSN + 1, and a segment
             starts at the LSN after the previous segment's last record

Recovery reads records in order and stops at the first one that does not
decode. What that means depends on what follows it:

    zeros or nothing to the end of the file       clean end of the segment
    no valid record anywhere after it (last seg.) torn tail: end of log,
                                                  truncated on open
    a valid record after it, or any bad record    WalCorruption naming the
      in a segment that is not the last           file and byte offset

`RecoveryPolicy.ABSOLUTE` refuses a torn tail too; `POINT_IN_TIME` treats
any bad record in the last segment as its end (for logs that survived a power
loss which persisted a later page of the final write but not an earlier one).

Durability: `append` returns once its record is durable under the fsync
policy. With `fsync="always"` appenders share writes and fsyncs (group commit,
in C: c/groupcommit.h). Encoding, waiting and I/O run without the GIL; the
first waiter that finds its record unwritten writes everything encoded so far,
and a waiter whose written record no started fsync covers starts one through
an fd of its own, even while another fsync is still in flight (the kernel
merges concurrent flushes). A record is acknowledged only once an fsync that
started after its write returned success while the log was not poisoned.
An fsync or write error poisons the log: that append and every later one raise
`WalFsyncError`/`WalError`, because after a failed fsync the kernel may have
dropped the dirty pages, and retrying would acknowledge data that is gone.
"""
import errno as _errno
import fcntl
import logging
import mmap
import os
import threading

from cpython.buffer cimport PyBUF_SIMPLE, PyObject_GetBuffer, PyBuffer_Release
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.errno cimport EINTR, EIO, errno
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

from fscore.errors import WalCorruption, WalError, WalFsyncError
from fscore.walread import (HEADER_BYTES, MAX_PAYLOAD, RecoveryPolicy, SegmentScan, check_scan_end, crc32c,
                            decode_record, encode_record, list_segments, read_log, segment_name)

_log = logging.getLogger("fscore.wal")

__all__ = ["Wal", "RecoveryPolicy", "read_log", "list_segments", "segment_name", "crc32c", "encode_record",
           "decode_record", "HEADER_BYTES", "MAX_PAYLOAD", "DEFAULT_SEGMENT_BYTES"]

cdef extern from "<unistd.h>" nogil:
    int fdatasync(int fd)

DEFAULT_SEGMENT_BYTES = 64 << 20
DEFAULT_MAX_SYNCERS = 2
DEFAULT_COMMIT_DELAY_US = 100
cdef int POLICY_ALWAYS = 0, POLICY_INTERVAL = 1, POLICY_NEVER = 2
_POLICIES = {"always": POLICY_ALWAYS, "interval": POLICY_INTERVAL, "never": POLICY_NEVER}


cdef int _fdatasync(int fd) noexcept nogil:
    """fdatasync, retried only on EINTR (it did not run); returns 0 or an errno."""
    while fdatasync(fd) != 0:
        if errno != EINTR:
            return errno
    return 0


cdef int _py_sync(void *ctx, int fd) noexcept with gil:
    """The C engine's fsync hook when a Python fsync_fn was injected."""
    cdef Wal wal = <Wal>ctx
    try:
        wal._fsync_fn(fd)
        return 0
    except OSError as e:
        wal._fsync_exc = e
        return e.errno or EIO
    except BaseException as e:
        wal._fsync_exc = e
        return EIO


class _FsyncFailed(Exception):
    """Internal: marks a failure of the fsync step (vs the write step)."""


cdef class Wal:
    """A segmented write-ahead log in `dir`; see the module docstring.

    Opening an existing directory recovers it: the last segment's torn tail
    (if the policy tolerates it) is truncated and LSNs continue after the last
    good record. `start_lsn` is the first LSN of an empty log (a store that
    restores a checkpoint of LSN c over an empty directory passes c + 1).
    `fsync_fn(fd)` replaces fdatasync (tests inject failures and count calls).
    `max_syncers` bounds the fsyncs in flight at once (1 = no overlap), each
    through its own fd; `commit_delay_us` makes a would-be syncer that finds
    another fsync in flight wait that long for more records to join it.
    """

    def __cinit__(self):
        self._fd = -1
        self._gc = NULL
        self._gc_ready = False
        self._closed = True

    def __dealloc__(self):
        if self._gc != NULL:
            if self._gc_ready:
                if not self._closed:
                    fs_gc_abandon(self._gc)  # like a crash: only what was synced is durable
                fs_gc_destroy(self._gc)
            free(self._gc)
            self._gc = NULL
        elif self._fd >= 0:
            os.close(self._fd)
        if self._lock_fd is not None:
            os.close(self._lock_fd)

    def __init__(self, dir, fsync="always", *, interval_ms=10, segment_bytes=DEFAULT_SEGMENT_BYTES,
                 preallocate=True, recovery=RecoveryPolicy.TOLERATE_TAIL, start_lsn=1, fsync_fn=None,
                 max_syncers=DEFAULT_MAX_SYNCERS, commit_delay_us=DEFAULT_COMMIT_DELAY_US):
        if fsync not in _POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(_POLICIES)}, got {fsync!r}")
        if not isinstance(recovery, RecoveryPolicy):
            raise TypeError(f"recovery must be a RecoveryPolicy, got {recovery!r}")
        if segment_bytes < 4096:
            raise ValueError(f"segment_bytes must be at least 4096, got {segment_bytes}")
        if start_lsn < 1:
            raise ValueError(f"start_lsn must be >= 1 (LSN 0 means 'nothing'), got {start_lsn}")
        if interval_ms <= 0:
            raise ValueError(f"interval_ms must be positive, got {interval_ms}")
        if not 1 <= max_syncers <= FS_GC_MAX_SYNCERS:
            raise ValueError(f"max_syncers must be 1..{FS_GC_MAX_SYNCERS}, got {max_syncers}")
        if not 0 <= commit_delay_us <= 100_000:
            raise ValueError(f"commit_delay_us must be 0..100000, got {commit_delay_us}")
        self.dir = os.fspath(dir)
        self.fsync_policy = fsync
        self.recovery = recovery
        self.max_syncers = max_syncers
        self.commit_delay_us = commit_delay_us
        self._policy = _POLICIES[fsync]
        self._interval_s = interval_ms / 1000.0
        self._segment_bytes = segment_bytes
        self._preallocate = preallocate
        self._fsync_fn = fsync_fn
        self._close_lock = threading.Lock()
        os.makedirs(self.dir, exist_ok=True)
        self._lock_fd = _lock_directory(self.dir)
        self._closed = False
        try:
            self._open_tail(start_lsn)
            self._start_engine()
        except BaseException:
            self._closed = True
            raise
        self._stop = threading.Event()
        self._ticker = None
        if self._policy == POLICY_INTERVAL:
            self._ticker = threading.Thread(target=self._tick, name=f"wal-fsync:{self.dir}", daemon=True)
            self._ticker.start()

    def _start_engine(self):
        self._gc = <fs_gc *>malloc(sizeof(fs_gc))
        if self._gc == NULL:
            raise MemoryError("WAL group-commit state")
        memset(self._gc, 0, sizeof(fs_gc))
        cdef bytes d = os.fsencode(self.dir)
        cdef fs_gc_sync_fn hook = NULL
        if self._fsync_fn is not None:
            hook = _py_sync
        cdef int err = fs_gc_init(self._gc, d, self._fd, self._seg_first, self._seg_used, self._segment_bytes,
                                  self._preallocate, self._next_lsn, self.max_syncers, self.commit_delay_us,
                                  hook, <void *>self)
        if err:
            fs_gc_destroy(self._gc)
            raise OSError(err, f"open WAL segment fds in {self.dir}: {os.strerror(err)}")
        self._gc_ready = True
        self._fd = -1  # owned by the engine now

    # ---- recovery of the tail and the first segment (__init__ only)

    def _open_tail(self, start_lsn):
        segments = list_segments(self.dir)
        if not segments:
            self._next_lsn = start_lsn
            self._create_segment(start_lsn)
            return
        first, path = segments[len(segments) - 1]
        # PERF: the segment mapped, not read: read whole, every open allocated and
        # copied its 64 MB (most of it the preallocated zero tail), ~60 ms here. A
        # map is safe here only: this Wal holds the directory's lock, so nobody
        # truncates the segment while it is scanned (a map read past a
        # truncation faults)
        scan, mm = None, None
        try:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_size:
                    mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            scan = SegmentScan(mm if mm is not None else b"", first, False)
            for _ in scan:
                pass
            torn = check_scan_end(scan, path, True, self.recovery)
            end, last_lsn = scan.end, scan.last_lsn
        finally:
            scan = None  # (its view of the map first)
            if mm is not None:
                mm.close()
        self._fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        self._seg_first = first
        self._seg_used = end
        self._next_lsn = last_lsn + 1
        if torn:
            # Cut the torn bytes, re-extend with zeros, and make that durable
            # before new records land after it.
            _log.warning("WAL %s: the record at byte offset %d (after LSN %d) is torn or damaged and nothing "
                         "valid follows it: dropped as the tail a crash leaves", path, end, last_lsn)
            os.ftruncate(self._fd, end)
        self._extend()
        if torn:
            self._sync_fd(self._fd)

    def _extend(self):
        # PERF: a preallocated segment turns each append's fsync into a data-only
        # fdatasync (no size change to journal); ~25% fewer µs per fsync on ext4
        # (benches/bench_wal.py). Unsupported filesystems just grow the file.
        # (c/groupcommit.c does the same for the segments it rolls to.)
        if self._preallocate and self._seg_used < self._segment_bytes:
            try:
                os.posix_fallocate(self._fd, 0, self._segment_bytes)
            except OSError as e:
                if e.errno not in (_errno.EOPNOTSUPP, _errno.EINVAL, _errno.ENOSYS):
                    raise

    def _create_segment(self, uint64_t first):
        path = os.path.join(self.dir, segment_name(first))
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self._seg_first = first
        self._seg_used = 0
        self._extend()
        self._sync_fd(self._fd)
        self._sync_dir()

    def _sync_fd(self, int fd):
        cdef int err
        try:
            if self._fsync_fn is not None:
                self._fsync_fn(fd)
                return
            with nogil:
                err = _fdatasync(fd)
            if err:
                raise OSError(err, os.strerror(err))
        except OSError as e:
            raise _FsyncFailed(e) from e

    def _sync_dir(self):
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._sync_fd(fd)
        finally:
            os.close(fd)

    # ---- group commit (c/groupcommit.c)

    cdef int _check(self, int rc) except -1:
        """Turns an engine return code into the exception it stands for."""
        if rc == FS_GC_OK:
            return 0
        if rc == FS_GC_ECLOSED:
            raise WalError(f"WAL in {self.dir} is closed")
        if rc == FS_GC_ENOMEM:
            raise MemoryError("WAL append buffer")
        if rc == FS_GC_EINVAL:
            raise ValueError("record type must be 1..255 and payload within the limit")
        self._raise_poisoned()
        return -1

    def _raise_poisoned(self):
        cdef fs_gc *gc = self._gc
        fsync_kind = gc.poison == FS_GC_EPOISON_FSYNC
        kind = WalFsyncError if fsync_kind else WalError
        cause = self._fsync_exc if fsync_kind and self._fsync_exc is not None else \
            OSError(gc.poison_errno, os.strerror(gc.poison_errno))
        what = (<bytes>gc.poison_what).decode() if gc.poison_what != NULL else "I/O"
        raise kind(f"WAL in {self.dir} is poisoned: {what} failed ({cause}) with LSNs after {gc.poison_durable} "
                   f"not durable. Nothing more is acknowledged; close it and reopen the store to recover.") from cause

    def _check_writable(self):
        if self._closed:
            raise WalError(f"WAL in {self.dir} is closed")
        if self._gc.poison:
            self._raise_poisoned()

    def append(self, int rtype, payload, bint wait=True) -> int:
        """Appends one record and returns its LSN once durable under the fsync
        policy (fsynced for "always"; handed to the OS otherwise). With
        `wait=False` it returns the LSN at once, the record only encoded:
        call `wait(lsn)` before acknowledging it (appenders that wait
        together share writes and fsyncs)."""
        cdef Py_buffer view
        cdef const void *data
        cdef size_t n
        cdef uint8_t t
        cdef uint64_t lsn = 0
        cdef int rc
        cdef int durable = (self._policy == POLICY_ALWAYS) if wait else -1
        cdef bint is_bytes = type(payload) is bytes
        self._check_writable()
        if is_bytes:  # PERF: skips the buffer protocol for the common case
            data = PyBytes_AS_STRING(payload)
            n = <size_t>PyBytes_GET_SIZE(payload)
        else:
            PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
            data = view.buf
            n = <size_t>view.len
        try:
            check_record(rtype, <Py_ssize_t>n)
            t = <uint8_t>rtype
            with nogil:
                rc = fs_gc_append(self._gc, 1, &t, &data, &n, durable, &lsn)
        finally:
            if not is_bytes:
                PyBuffer_Release(&view)
        self._check(rc)
        return lsn

    def append_many(self, records) -> range:
        """Appends (type, payload) pairs as one group; returns their LSNs (a
        range) once all are durable. All or nothing: a bad record appends none."""
        cdef list items = []
        cdef Py_ssize_t i, count
        cdef uint8_t *types = NULL
        cdef const void **ptrs = NULL
        cdef size_t *lens = NULL
        cdef uint64_t first = 0
        cdef int rc
        cdef int durable = self._policy == POLICY_ALWAYS
        self._check_writable()
        for rtype, payload in records:
            mv = memoryview(payload).cast("B") if type(payload) is not bytes else payload
            check_record(rtype, len(mv))
            items.append((rtype, mv))
        count = len(items)
        if count == 0:
            return range(self._next_lsn_now(), self._next_lsn_now())
        types = <uint8_t *>malloc(count)
        ptrs = <const void **>malloc(count * sizeof(void *))
        lens = <size_t *>malloc(count * sizeof(size_t))
        views = []
        try:
            if types == NULL or ptrs == NULL or lens == NULL:
                raise MemoryError()
            for i in range(count):
                rtype, payload = items[i]
                types[i] = <uint8_t>rtype
                if type(payload) is bytes:
                    ptrs[i] = PyBytes_AS_STRING(payload)
                    lens[i] = <size_t>PyBytes_GET_SIZE(payload)
                else:
                    ptrs[i] = _memoryview_ptr(payload)
                    lens[i] = <size_t>len(payload)
            with nogil:
                rc = fs_gc_append(self._gc, <size_t>count, types, ptrs, lens, durable, &first)
        finally:
            free(types)
            free(ptrs)
            free(lens)
        self._check(rc)
        return range(first, first + count)

    def wait(self, uint64_t lsn):
        """Returns once record `lsn` (appended with wait=False) is durable
        under the fsync policy; raises as `append` would."""
        cdef int rc
        cdef int durable = self._policy == POLICY_ALWAYS
        with nogil:
            rc = fs_gc_wait(self._gc, lsn, durable)
        if rc == FS_GC_EINVAL:
            raise ValueError(f"LSN {lsn} was never appended to this log")
        self._check(rc)

    def _next_lsn_now(self):
        return self._stats()[0] + 1

    def sync(self):
        """Writes and fsyncs everything appended so far, whatever the policy."""
        cdef int rc
        self._check_writable()
        with nogil:
            rc = fs_gc_sync(self._gc)
        self._check(rc)

    def _tick(self):
        while not self._stop.wait(self._interval_s):
            try:
                self.sync()
            except WalError:
                return  # closed, or poisoned: appenders see the poison

    def _stats(self):
        cdef uint64_t out[8]
        fs_gc_stats(self._gc, out)
        return [out[i] for i in range(8)]

    def stats(self) -> dict:
        """Counters of the group commit: fsyncs issued, records they made
        durable, batch writes, most fsyncs seen in flight at once, rolls."""
        s = self._stats()
        return {"last_lsn": s[0], "written_lsn": s[1], "durable_lsn": s[2], "fsyncs": s[3],
                "synced_records": s[4], "writes": s[5], "max_overlap": s[6], "rolls": s[7]}

    # ---- maintenance

    def truncate_before(self, uint64_t lsn) -> int:
        """Deletes segments whose records all have LSN <= `lsn` (covered by a
        durable checkpoint); never the current (newest) segment. Returns how many."""
        firsts = [f for f, _ in list_segments(self.dir)]
        doomed = [firsts[i] for i in range(len(firsts) - 1) if firsts[i + 1] <= lsn + 1]
        for first in doomed:
            os.unlink(os.path.join(self.dir, segment_name(first)))
        if doomed:
            try:
                self._sync_dir()
            except _FsyncFailed as e:
                raise WalError(f"fsync of {self.dir} after deleting old segments failed: {e.__cause__}") from e.__cause__
        return len(doomed)

    def segments(self) -> list:
        """Paths of the segment files, oldest first."""
        return [p for _, p in list_segments(self.dir)]

    def close(self):
        """Flushes, fsyncs, trims the preallocated tail and releases the
        directory. A poisoned log is closed without flushing."""
        cdef int rc, was_poisoned
        with self._close_lock:
            if self._closed:
                return
            if self._ticker is not None:
                self._stop.set()
                self._ticker.join()
            was_poisoned = self._gc.poison
            with nogil:
                rc = fs_gc_close(self._gc)
            self._closed = True
            os.close(self._lock_fd)
            self._lock_fd = None
            if not was_poisoned:
                self._check(rc)

    def abandon(self):
        """What a crash (kill -9) leaves: closes every fd without writing what
        is still only encoded, and releases the directory. For crash tests."""
        with self._close_lock:
            if self._closed:
                return
            if self._ticker is not None:
                self._stop.set()
                self._ticker.join()
            with nogil:
                fs_gc_abandon(self._gc)
            self._closed = True
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def last_lsn(self) -> int:
        """LSN of the last record appended (0 if none ever was)."""
        return self._stats()[0]

    @property
    def durable_lsn(self) -> int:
        """Every record with LSN <= this is known to be fsynced."""
        return self._stats()[2]

    @property
    def acknowledged_lsn(self) -> int:
        """Every record <= this is as durable as the fsync policy promises
        (fsynced for "always", written to the OS otherwise): what `wait`
        waits for."""
        s = self._stats()
        return s[2] if self._policy == POLICY_ALWAYS else s[1]

    @property
    def poisoned(self) -> bool:
        return self._gc.poison != 0

    @property
    def closed(self) -> bool:
        return self._closed


cdef const void *_memoryview_ptr(object mv) except NULL:
    cdef const unsigned char[::1] v = mv
    if v.shape[0] == 0:
        return <const void *>b""
    return &v[0]


def _lock_directory(str path):
    """An exclusive flock on <dir>/LOCK: one Wal per directory at a time."""
    fd = os.open(os.path.join(path, "LOCK"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise WalError(f"WAL directory {path} is already open (in this or another process); close that Wal first") from None
    return fd
