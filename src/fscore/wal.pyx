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
policy. With `fsync="always"` appenders share writes and fsyncs (group commit):
the first thread to find no leader writes and fsyncs everything encoded so
far, without the GIL; the others wait and are woken when it covers their LSN.
An fsync or write error poisons the log: that append and every later one raise
`WalFsyncError`/`WalError`, because after a failed fsync the kernel may have
dropped the dirty pages, and retrying would acknowledge data that is gone.
"""
import errno as _errno
import fcntl
import os
import threading

from cpython.buffer cimport PyBUF_SIMPLE, PyObject_GetBuffer, PyBuffer_Release
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.errno cimport EINTR, errno
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, realloc

from fscore.errors import WalCorruption, WalError, WalFsyncError
from fscore.walread import (HEADER_BYTES, MAX_PAYLOAD, RecoveryPolicy, SegmentScan, check_scan_end, crc32c,
                            decode_record, encode_record, list_segments, read_file, read_log, segment_name)

__all__ = ["Wal", "RecoveryPolicy", "read_log", "list_segments", "segment_name", "crc32c", "encode_record",
           "decode_record", "HEADER_BYTES", "MAX_PAYLOAD", "DEFAULT_SEGMENT_BYTES"]

cdef extern from "<unistd.h>" nogil:
    ssize_t pwrite(int fd, const void *buf, size_t n, int64_t off)
    int fdatasync(int fd)

DEFAULT_SEGMENT_BYTES = 64 << 20
cdef int POLICY_ALWAYS = 0, POLICY_INTERVAL = 1, POLICY_NEVER = 2
_POLICIES = {"always": POLICY_ALWAYS, "interval": POLICY_INTERVAL, "never": POLICY_NEVER}


# -------------------------------------------------------------------- writing

cdef int _write_all(int fd, const uint8_t *p, size_t n, int64_t off) noexcept nogil:
    """pwrite until done; returns 0 or an errno."""
    cdef ssize_t w
    while n > 0:
        w = pwrite(fd, p, n, off)
        if w < 0:
            if errno == EINTR:
                continue
            return errno
        p += w
        n -= <size_t>w
        off += w
    return 0


cdef int _fdatasync(int fd) noexcept nogil:
    """fdatasync, retried only on EINTR (it did not run); returns 0 or an errno."""
    while fdatasync(fd) != 0:
        if errno != EINTR:
            return errno
    return 0


class _FsyncFailed(Exception):
    """Internal: marks a failure of the fsync step (vs the write step)."""


cdef class Wal:
    """A segmented write-ahead log in `dir`; see the module docstring.

    Opening an existing directory recovers it: the last segment's torn tail
    (if the policy tolerates it) is truncated and LSNs continue after the last
    good record. `start_lsn` is the first LSN of an empty log (a store that
    restores a checkpoint of LSN c over an empty directory passes c + 1).
    `fsync_fn(fd)` replaces fdatasync (tests inject failures and count calls).
    """

    def __cinit__(self):
        self._fd = -1
        self._bufs[0] = self._bufs[1] = NULL
        self._caps[0] = self._caps[1] = 0
        self._lens[0] = self._lens[1] = 0
        self._cur = 0
        self._closed = True

    def __dealloc__(self):
        free(self._bufs[0])
        free(self._bufs[1])
        if self._fd >= 0:
            os.close(self._fd)
        if self._lock_fd is not None:
            os.close(self._lock_fd)

    def __init__(self, dir, fsync="always", *, interval_ms=10, segment_bytes=DEFAULT_SEGMENT_BYTES,
                 preallocate=True, recovery=RecoveryPolicy.TOLERATE_TAIL, start_lsn=1, fsync_fn=None):
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
        self.dir = os.fspath(dir)
        self.fsync_policy = fsync
        self.recovery = recovery
        self._policy = _POLICIES[fsync]
        self._interval_s = interval_ms / 1000.0
        self._segment_bytes = segment_bytes
        self._preallocate = preallocate
        self._fsync_fn = fsync_fn
        self._cond = threading.Condition(threading.Lock())
        self._poison = None
        self._leader_active = False
        os.makedirs(self.dir, exist_ok=True)
        self._lock_fd = _lock_directory(self.dir)
        self._closed = False
        try:
            self._open_tail(start_lsn)
        except BaseException:
            self._closed = True
            raise
        self._written_lsn = self._durable_lsn = self._next_lsn - 1
        self._stop = threading.Event()
        self._ticker = None
        if self._policy == POLICY_INTERVAL:
            self._ticker = threading.Thread(target=self._tick, name=f"wal-fsync:{self.dir}", daemon=True)
            self._ticker.start()

    # ---- recovery of the tail and segment files (leader or __init__ only)

    def _open_tail(self, start_lsn):
        segments = list_segments(self.dir)
        self._segment_firsts = [first for first, _ in segments]
        if not segments:
            self._next_lsn = start_lsn
            self._create_segment(start_lsn)
            return
        first, path = segments[len(segments) - 1]
        scan = SegmentScan(read_file(path), first, False)
        for _ in scan:
            pass
        torn = check_scan_end(scan, path, True, self.recovery)
        self._fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        self._seg_first = first
        self._seg_used = scan.end
        self._next_lsn = scan.last_lsn + 1
        if torn:
            # Cut the torn bytes, re-extend with zeros, and make that durable
            # before new records land after it.
            os.ftruncate(self._fd, scan.end)
        self._extend()
        if torn:
            self._sync_fd(self._fd)

    def _extend(self):
        # PERF: a preallocated segment turns each append's fsync into a data-only
        # fdatasync (no size change to journal); ~25% fewer µs per fsync on ext4
        # (benches/bench_wal.py). Unsupported filesystems just grow the file.
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
        self._segment_firsts.append(first)
        self._extend()
        self._sync_fd(self._fd)
        self._sync_dir()

    def _roll(self, uint64_t first):
        # The finished segment is cut to its records and made durable before
        # the next one exists, so only the last segment can ever be torn.
        os.ftruncate(self._fd, self._seg_used)
        self._sync_fd(self._fd)
        os.close(self._fd)
        self._fd = -1
        self._create_segment(first)

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

    cdef int _write_at(self, const uint8_t *p, size_t n) except -1:
        cdef int err
        with nogil:
            err = _write_all(self._fd, p, n, <int64_t>self._seg_used)
        if err:
            raise OSError(err, f"write to WAL segment {segment_name(self._seg_first)} in {self.dir}: {os.strerror(err)}")
        self._seg_used += n
        return 0

    cdef int _write_batch(self, const uint8_t *buf, size_t n) except -1:
        """Writes whole records, rolling to a new segment at a record boundary
        when the current one would pass segment_bytes (a record larger than a
        segment gets one of its own)."""
        cdef size_t pos = 0, left, room, cut
        while pos < n:
            left = n - pos
            if self._seg_used + left <= self._segment_bytes:
                self._write_at(buf + pos, left)
                return 0
            room = self._segment_bytes - self._seg_used if self._segment_bytes > self._seg_used else 0
            cut = fs_records_fitting(buf + pos, left, room)
            if cut == 0 and self._seg_used == 0:
                cut = fs_records_fitting(buf + pos, left, FS_REC_HEADER + _payload_length(buf + pos))
            if cut:
                self._write_at(buf + pos, cut)
                pos += cut
            if pos < n:
                self._roll(fs_record_lsn(buf + pos))
        return 0

    # ---- group commit

    cdef int _reserve(self, size_t extra) except -1:
        cdef size_t need = self._lens[self._cur] + extra, cap = self._caps[self._cur]
        cdef uint8_t *p
        if need <= cap:
            return 0
        cap = max(need, 2 * cap, <size_t>65536)
        p = <uint8_t *>realloc(self._bufs[self._cur], cap)
        if p == NULL:
            raise MemoryError(f"WAL append buffer of {cap} bytes")
        self._bufs[self._cur] = p
        self._caps[self._cur] = cap
        return 0

    cdef int _encode(self, int rtype, object payload) except -1:
        """Encodes one record with the next LSN into the current buffer (cond held)."""
        cdef Py_buffer view
        cdef const void *data
        cdef Py_ssize_t n
        cdef bint is_bytes = type(payload) is bytes
        if is_bytes:  # PERF: skips the buffer protocol for the common case
            data = PyBytes_AS_STRING(payload)
            n = PyBytes_GET_SIZE(payload)
        else:
            PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
            data = view.buf
            n = view.len
        try:
            check_record(rtype, n)
            self._reserve(FS_REC_HEADER + <size_t>n)
            self._lens[self._cur] += fs_record_encode(self._bufs[self._cur] + self._lens[self._cur],
                                                      <uint8_t>rtype, self._next_lsn, data, <size_t>n)
            self._next_lsn += 1
        finally:
            if not is_bytes:
                PyBuffer_Release(&view)
        return 0

    def _lead(self, bint sync):
        """Writes (and if `sync`, fsyncs) every record encoded so far. Called
        with the condition held and no leader; drops it for the I/O."""
        cdef int w = self._cur
        cdef size_t n = self._lens[w]
        cdef uint64_t upto = self._next_lsn - 1
        sync = sync and self._durable_lsn < upto
        self._leader_active = True
        self._cur = 1 - w
        self._lens[self._cur] = 0
        failure = None
        self._cond.release()
        try:
            if n:
                self._write_batch(self._bufs[w], n)
            if sync:
                self._sync_fd(self._fd)
        except BaseException as e:
            failure = e
        finally:
            self._cond.acquire()
        self._leader_active = False
        self._lens[w] = 0
        if failure is None:
            self._written_lsn = upto
            if sync:
                self._durable_lsn = upto
        else:
            cause = failure.__cause__ if isinstance(failure, _FsyncFailed) else failure
            kind = WalFsyncError if isinstance(failure, _FsyncFailed) else WalError
            self._poison = (kind, f"WAL in {self.dir} is poisoned: {'fsync' if kind is WalFsyncError else 'write'} "
                                  f"failed ({cause}) with LSNs after {self._durable_lsn} not durable. Nothing "
                                  f"more is acknowledged; close it and reopen the store to recover.", cause)
        self._cond.notify_all()

    def _wait(self, uint64_t lsn, bint durable):
        """Returns once `lsn` is durable (or written, for durable=False),
        leading the write when no one else is (cond held)."""
        while True:
            if (self._durable_lsn if durable else self._written_lsn) >= lsn:
                return
            self._raise_if_poisoned()
            if self._leader_active:
                self._cond.wait()
            else:
                self._lead(durable)

    def _raise_if_poisoned(self):
        if self._poison is not None:
            kind, message, cause = self._poison
            raise kind(message) from cause

    def _check_writable(self):
        if self._closed:
            raise WalError(f"WAL in {self.dir} is closed")
        self._raise_if_poisoned()

    def append(self, int rtype, payload) -> int:
        """Appends one record and returns its LSN once durable under the fsync
        policy (fsynced for "always"; handed to the OS otherwise)."""
        cdef uint64_t lsn = 0
        with self._cond:
            self._check_writable()
            self._encode(rtype, payload)
            lsn = self._next_lsn - 1
            self._wait(lsn, self._policy == POLICY_ALWAYS)
        return lsn

    def append_many(self, records) -> range:
        """Appends (type, payload) pairs as one group; returns their LSNs (a
        range) once all are durable. All or nothing: a bad record appends none."""
        cdef size_t saved_len
        cdef uint64_t saved_lsn
        with self._cond:
            self._check_writable()
            saved_len, saved_lsn = self._lens[self._cur], self._next_lsn
            try:
                for rtype, payload in records:
                    self._encode(rtype, payload)
            except BaseException:
                self._lens[self._cur], self._next_lsn = saved_len, saved_lsn
                raise
            if self._next_lsn > saved_lsn:
                self._wait(self._next_lsn - 1, self._policy == POLICY_ALWAYS)
            return range(saved_lsn, self._next_lsn)

    def sync(self):
        """Writes and fsyncs everything appended so far, whatever the policy."""
        with self._cond:
            self._check_writable()
            self._wait(self._next_lsn - 1, True)

    def _tick(self):
        while not self._stop.wait(self._interval_s):
            try:
                self.sync()
            except WalError:
                return  # closed, or poisoned: appenders see the poison

    # ---- maintenance

    def truncate_before(self, uint64_t lsn) -> int:
        """Deletes segments whose records all have LSN <= `lsn` (covered by a
        durable checkpoint); never the current segment. Returns how many."""
        with self._cond:
            firsts = list(self._segment_firsts)
        doomed = [firsts[i] for i in range(len(firsts) - 1) if firsts[i + 1] <= lsn + 1]
        for first in doomed:
            os.unlink(os.path.join(self.dir, segment_name(first)))
        if doomed:
            with self._cond:
                self._segment_firsts = [f for f in self._segment_firsts if f not in doomed]
            try:
                self._sync_dir()
            except _FsyncFailed as e:
                raise WalError(f"fsync of {self.dir} after deleting old segments failed: {e.__cause__}") from e.__cause__
        return len(doomed)

    def segments(self) -> list:
        """Paths of the segment files, oldest first."""
        with self._cond:
            return [os.path.join(self.dir, segment_name(f)) for f in self._segment_firsts]

    def close(self):
        """Flushes, fsyncs, trims the preallocated tail and releases the
        directory. A poisoned log is closed without flushing."""
        if self._closed:
            return
        if self._ticker is not None:
            self._stop.set()
            self._ticker.join()
        with self._cond:
            try:
                if self._poison is None:
                    self._wait(self._next_lsn - 1, True)
            finally:
                while self._leader_active:
                    self._cond.wait()
                self._closed = True
                try:
                    if self._poison is None and self._fd >= 0:
                        os.ftruncate(self._fd, self._seg_used)
                        self._sync_fd(self._fd)
                finally:
                    if self._fd >= 0:
                        os.close(self._fd)
                        self._fd = -1
                    os.close(self._lock_fd)
                    self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def last_lsn(self) -> int:
        """LSN of the last record appended (0 if none ever was)."""
        return self._next_lsn - 1

    @property
    def durable_lsn(self) -> int:
        """Every record with LSN <= this is known to be fsynced."""
        return self._durable_lsn

    @property
    def poisoned(self) -> bool:
        return self._poison is not None

    @property
    def closed(self) -> bool:
        return self._closed


cdef inline uint32_t _payload_length(const uint8_t *rec) noexcept nogil:
    return rec[4] | (<uint32_t>rec[5] << 8) | (<uint32_t>rec[6] << 16) | (<uint32_t>rec[7] << 24)


def _lock_directory(str path):
    """An exclusive flock on <dir>/LOCK: one Wal per directory at a time."""
    fd = os.open(os.path.join(path, "LOCK"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise WalError(f"WAL directory {path} is already open (in this or another process); close that Wal first") from None
    return fd
