"""Reading the write-ahead log: the record codec's Python face, the segment
scanner and `read_log`. The format and the recovery rules are in the docstring
of `fscore.wal` (the writer) and in docs/wal.md."""
import enum
import os
import re

from cpython.buffer cimport PyBUF_SIMPLE, PyObject_GetBuffer, PyBuffer_Release
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint32_t, uint64_t

from fscore.errors import WalCorruption
from fscore.record cimport (FS_REC_CORRUPT, FS_REC_HEADER, FS_REC_MAX_PAYLOAD, FS_REC_OK, FS_REC_TORN, FS_REC_ZERO,
                            check_record, fs_all_zero, fs_crc32c_extend, fs_rec_status, fs_record,
                            fs_record_decode, fs_record_encode, fs_record_find_valid)

SEGMENT_SUFFIX = ".wal"
_SEGMENT_RE = re.compile(r"^(\d{20})\.wal$")
HEADER_BYTES = FS_REC_HEADER
MAX_PAYLOAD = FS_REC_MAX_PAYLOAD


class RecoveryPolicy(enum.Enum):
    """What recovery does with a record that does not decode (RocksDB-style)."""

    TOLERATE_TAIL = "tolerate_tail"   # torn tail of the last segment = end of log
    ABSOLUTE = "absolute"             # any bad or torn record refuses to start
    POINT_IN_TIME = "point_in_time"   # any bad record in the last segment ends the log


def segment_name(first_lsn: int) -> str:
    return f"{first_lsn:020d}{SEGMENT_SUFFIX}"


def list_segments(path) -> list:
    """[(first_lsn, file path)] of the segments in a log directory, in LSN order."""
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), os.path.join(path, n)) for n in names if (m := _SEGMENT_RE.match(n))]
    return sorted(f for f in found if f[0] > 0)


# ---------------------------------------------------------------- codec faces

def crc32c(data, unsigned int crc=0) -> int:
    """CRC-32C of a bytes-like object, extending `crc`; the GIL is released
    for large buffers (checkpoints checksum whole table snapshots)."""
    cdef Py_buffer view
    cdef uint32_t out
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        if view.len > 65536:
            with nogil:
                out = fs_crc32c_extend(crc, view.buf, <size_t>view.len)
        else:
            out = fs_crc32c_extend(crc, view.buf, <size_t>view.len)
    finally:
        PyBuffer_Release(&view)
    return out


def encode_record(int rtype, uint64_t lsn, payload) -> bytes:
    """One record's bytes (the C codec; `fscore.wal_ref` is its Python twin)."""
    cdef Py_buffer view
    PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
    try:
        check_record(rtype, view.len)
        out = PyBytes_FromStringAndSize(NULL, FS_REC_HEADER + view.len)
        fs_record_encode(<uint8_t *>PyBytes_AS_STRING(out), <uint8_t>rtype, lsn, view.buf, <size_t>view.len)
    finally:
        PyBuffer_Release(&view)
    return out


def decode_record(data, Py_ssize_t offset=0):
    """("ok", lsn, type, payload, next_offset) or (status, None, None, None, offset)
    with status "torn", "corrupt" or "zero": the C codec's verdict at `offset`."""
    cdef const uint8_t[::1] buf = data
    cdef fs_record rec
    if offset < 0 or offset > buf.shape[0]:
        raise ValueError(f"offset {offset} outside 0..{buf.shape[0]}")
    cdef fs_rec_status s = fs_record_decode(&buf[0] if buf.shape[0] else NULL, buf.shape[0], offset, &rec)
    if s == FS_REC_OK:
        return ("ok", rec.lsn, rec.type, bytes(buf[rec.payload:rec.next]), rec.next)
    return ({FS_REC_TORN: "torn", FS_REC_CORRUPT: "corrupt", FS_REC_ZERO: "zero"}[s], None, None, None, offset)


# ------------------------------------------------------------------- scanning

cdef ScanStep scan_step(const uint8_t *buf, size_t n, size_t off, uint64_t expect,
                        fs_record *rec, size_t *valid_at) noexcept nogil:
    cdef fs_rec_status s = fs_record_decode(buf, n, off, rec)
    if s == FS_REC_OK:
        return STEP_RECORD if rec.lsn == expect else STEP_LSN
    if fs_all_zero(buf, n, off):
        return STEP_END
    # Not a clean end: a torn tail only if nothing valid follows. LSNs below
    # `expect` are ignored so a record copied inside a payload cannot count.
    valid_at[0] = fs_record_find_valid(buf, n, off + 1, expect - 1 if expect else 0)
    return STEP_TORN if valid_at[0] == <size_t>-1 else STEP_CORRUPT


cdef class SegmentScan:
    """Iterates the records of one segment's bytes, then says how it ended.

    Yields (lsn, type, payload); afterwards `step` is a ScanStep, `end` the
    offset after the last good record, `last_lsn` its LSN (first_lsn - 1 if
    none) and `bad_offset`/`valid_at` locate a failure."""

    def __cinit__(self, data, uint64_t first_lsn, bint want_payload=True):
        self.buf = data
        self.end = 0
        self.last_lsn = first_lsn - 1
        self.step = -1
        self.bad_offset = -1
        self.valid_at = -1
        self.found_lsn = -1
        self.want_payload = want_payload

    def __iter__(self):
        return self

    def __next__(self):
        cdef fs_record rec
        cdef size_t valid_at = <size_t>-1
        cdef size_t n = self.buf.shape[0]
        cdef const uint8_t *p = &self.buf[0] if n else NULL
        cdef ScanStep st
        if self.step >= 0:
            raise StopIteration
        with nogil:
            st = scan_step(p, n, self.end, self.last_lsn + 1, &rec, &valid_at)
            # Skipping payloads (opening a Wal) scans the whole segment here.
            while st == STEP_RECORD and not self.want_payload:
                self.end = rec.next
                self.last_lsn = rec.lsn
                st = scan_step(p, n, self.end, self.last_lsn + 1, &rec, &valid_at)
        if st == STEP_RECORD:
            self.end = rec.next
            self.last_lsn = rec.lsn
            return rec.lsn, rec.type, bytes(self.buf[rec.payload:rec.next])
        self.step = st
        if st != STEP_END:
            self.bad_offset = self.end
        if st == STEP_CORRUPT:
            self.valid_at = valid_at
        if st == STEP_LSN:
            self.found_lsn = rec.lsn
        raise StopIteration


def check_scan_end(SegmentScan scan, str path, bint is_last, policy) -> bool:
    """Applies the recovery policy to how a segment scan ended: returns True
    when the tail must be truncated (torn tail tolerated), raises WalCorruption
    when recovery must refuse, and returns False on a clean end."""
    cdef int st = scan.step
    if st == STEP_END:
        return False
    off = scan.bad_offset
    where = f"{path} at byte offset {off}"
    fix = ("The log is damaged, not just torn by a crash: restore the directory from a backup, or, "
           "accepting the loss of every record from here on, move this segment and the later ones "
           "aside and open again.")
    if st == STEP_LSN:
        raise WalCorruption(f"WAL record out of sequence in {where}: expected LSN {scan.last_lsn + 1}, "
                            f"found {scan.found_lsn}. {fix}", path, off)
    if is_last and policy is RecoveryPolicy.POINT_IN_TIME:
        return True
    if st == STEP_CORRUPT:
        raise WalCorruption(f"corrupt WAL record in {where} (after LSN {scan.last_lsn}); a valid record "
                            f"follows at offset {scan.valid_at}, so this is not a torn tail. {fix}", path, off)
    if not is_last:
        raise WalCorruption(f"bad WAL record in {where}, in a segment that is not the last one. {fix}", path, off)
    if policy is RecoveryPolicy.ABSOLUTE:
        raise WalCorruption(f"torn WAL record at the tail of {where} (after LSN {scan.last_lsn}); "
                            f"RecoveryPolicy.ABSOLUTE refuses it. Open with TOLERATE_TAIL to drop it.", path, off)
    return True


def read_file(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_log(dir, after_lsn: int = 0, policy=RecoveryPolicy.TOLERATE_TAIL):
    """Yields (lsn, type, payload) for every record with lsn > after_lsn, in
    order. Read-only: a torn tail ends the iteration (opening a `Wal`
    truncates it). Raises WalCorruption for damage the policy does not accept
    and for LSNs missing between after_lsn and the first segment or between
    segments (a deleted or lost segment)."""
    if not isinstance(policy, RecoveryPolicy):
        raise TypeError(f"policy must be a RecoveryPolicy, got {policy!r}")
    segments = list_segments(dir)
    if not segments:
        return
    # Skip segments that end at or before after_lsn: each ends where the next begins.
    start = 0
    while start + 1 < len(segments) and segments[start + 1][0] <= after_lsn + 1:
        start += 1
    expect = segments[start][0]
    if expect > after_lsn + 1 and after_lsn > 0:
        raise WalCorruption(f"WAL records {after_lsn + 1}..{expect - 1} are missing: the oldest segment "
                            f"{segments[start][1]} starts at LSN {expect}. Segments were deleted that the "
                            f"checkpoint still needs; restore them or an older checkpoint's data.",
                            segments[start][1], 0)
    for i in range(start, len(segments)):
        first, path = segments[i]
        if first != expect:
            raise WalCorruption(f"WAL segment {path} starts at LSN {first} but the previous segment ended "
                                f"at {expect - 1}: a segment is missing or was truncated.", path, 0)
        scan = SegmentScan(read_file(path), first)
        for rec in scan:
            if rec[0] > after_lsn:
                yield rec
        check_scan_end(scan, path, i == len(segments) - 1, policy)
        expect = scan.last_lsn + 1


def scan_segment(data, uint64_t first_lsn):
    """(records, verdict, offset) for one segment's bytes, the same shape as
    `fscore.wal_ref.scan_segment`: verdict is "end", "torn", "corrupt" or
    "lsn" and offset is where reading stopped."""
    scan = SegmentScan(data, first_lsn)
    records = list(scan)
    verdict = {STEP_END: "end", STEP_TORN: "torn", STEP_CORRUPT: "corrupt", STEP_LSN: "lsn"}[scan.step]
    return records, verdict, scan.end
