"""The write-ahead log: format, recovery rules, fsync policies, group commit."""
import os
import shutil
import threading
import time

import pytest

from fscore import wal_ref
from fscore.errors import WalCorruption, WalError, WalFsyncError
from fscore.wal import RecoveryPolicy, Wal, decode_record, encode_record, list_segments, read_log


def no_fsync(fd):
    """Most tests check logic, not the disk: skip the real fsync for speed."""


def write_log(path, payloads, **kw):
    kw.setdefault("fsync_fn", no_fsync)
    with Wal(path, **kw) as w:
        lsns = [w.append(1 + i % 3, p) for i, p in enumerate(payloads)]
    return lsns


def records(path, after=0, policy=RecoveryPolicy.TOLERATE_TAIL):
    return [(lsn, payload) for lsn, _, payload in read_log(path, after, policy)]


def last_segment(path):
    return list_segments(path)[-1][1]


PAYLOADS = [b"alpha", b"", b"x" * 100, bytes(range(256)) * 3]


def test_appends_get_consecutive_lsns_and_read_back_in_order(tmp_path):
    assert write_log(tmp_path, PAYLOADS) == [1, 2, 3, 4]
    assert records(tmp_path) == list(zip([1, 2, 3, 4], PAYLOADS))
    assert records(tmp_path, after=2) == [(3, PAYLOADS[2]), (4, PAYLOADS[3])]
    assert [t for _, t, _ in read_log(tmp_path)] == [1, 2, 3, 1]


def test_reopening_continues_lsns(tmp_path):
    write_log(tmp_path, PAYLOADS)
    with Wal(tmp_path, fsync_fn=no_fsync) as w:
        assert w.last_lsn == 4
        assert w.append(1, b"more") == 5
    assert records(tmp_path)[-1] == (5, b"more")


def test_start_lsn_applies_to_an_empty_log_only(tmp_path):
    with Wal(tmp_path, start_lsn=41, fsync_fn=no_fsync) as w:
        assert w.append(1, b"a") == 41
    with Wal(tmp_path, start_lsn=1000, fsync_fn=no_fsync) as w:
        assert w.append(1, b"b") == 42
    assert records(tmp_path) == [(41, b"a"), (42, b"b")]


def test_record_bytes_match_the_documented_layout():
    rec = encode_record(7, 0x0102030405060708, b"abc")
    assert rec == wal_ref.encode_record(7, 0x0102030405060708, b"abc")
    assert rec[4:17] == bytes([3, 0, 0, 0, 7, 8, 7, 6, 5, 4, 3, 2, 1])
    assert int.from_bytes(rec[:4], "little") == wal_ref.crc32c(rec[4:])
    assert decode_record(rec) == ("ok", 0x0102030405060708, 7, b"abc", 20)


@pytest.mark.parametrize("rtype", [0, 256, -1])
def test_record_type_outside_1_to_255_is_rejected(tmp_path, rtype):
    with Wal(tmp_path, fsync_fn=no_fsync) as w:
        with pytest.raises(ValueError, match="1..255"):
            w.append(rtype, b"x")
        assert w.append(1, b"ok") == 1


def test_truncated_trailing_record_is_ignored(tmp_path):
    src = tmp_path / "src"
    write_log(src, PAYLOADS[:3])
    seg = last_segment(src)
    size = os.path.getsize(seg)
    start = size - (17 + len(PAYLOADS[2]))
    for cut in range(start, size):
        d = tmp_path / f"cut{cut}"
        shutil.copytree(src, d)
        os.truncate(d / os.path.basename(seg), cut)
        assert records(d) == [(1, PAYLOADS[0]), (2, PAYLOADS[1])], f"cut at {cut}"
        if cut > start:
            with pytest.raises(WalCorruption):
                records(d, policy=RecoveryPolicy.ABSOLUTE)
        with Wal(d, fsync_fn=no_fsync) as w:  # opening truncates; appends continue
            assert w.last_lsn == 2
            assert w.append(1, b"after") == 3
        assert records(d) == [(1, PAYLOADS[0]), (2, PAYLOADS[1]), (3, b"after")], f"cut at {cut}"


def test_zeroed_trailing_record_is_end_of_log(tmp_path):
    write_log(tmp_path, PAYLOADS[:3])
    seg = last_segment(tmp_path)
    size = os.path.getsize(seg)
    with open(seg, "r+b") as f:  # the last record's pages never reached the disk
        f.seek(size - (17 + 100))
        f.write(bytes(17 + 100 + 4096))
    assert records(tmp_path) == [(1, PAYLOADS[0]), (2, PAYLOADS[1])]
    assert records(tmp_path, policy=RecoveryPolicy.ABSOLUTE) == [(1, PAYLOADS[0]), (2, PAYLOADS[1])]
    with Wal(tmp_path, fsync_fn=no_fsync) as w:
        assert w.append(2, b"next") == 3


def test_preallocated_zero_tail_of_an_unclosed_log_is_a_clean_end(tmp_path):
    w = Wal(tmp_path, segment_bytes=1 << 20, fsync_fn=no_fsync)
    w.append(1, b"a")
    w.append(1, b"b")
    assert os.path.getsize(last_segment(tmp_path)) == 1 << 20  # preallocated
    assert records(tmp_path, policy=RecoveryPolicy.ABSOLUTE) == [(1, b"a"), (2, b"b")]
    w.close()
    assert os.path.getsize(last_segment(tmp_path)) == 2 * 17 + 2  # close trims the tail


def test_corrupt_record_before_the_tail_refuses_naming_file_and_offset(tmp_path):
    write_log(tmp_path, PAYLOADS)
    seg = last_segment(tmp_path)
    second = 17 + len(PAYLOADS[0])
    with open(seg, "r+b") as f:
        f.seek(second + 8)  # the type byte of record 2
        f.write(b"\x09")
    with pytest.raises(WalCorruption) as e:
        records(tmp_path)
    assert e.value.path == seg and e.value.offset == second
    assert seg in str(e.value) and f"offset {second}" in str(e.value)
    with pytest.raises(WalCorruption):
        Wal(tmp_path, fsync_fn=no_fsync)


def test_point_in_time_policy_ends_the_log_at_the_first_bad_record(tmp_path):
    write_log(tmp_path, PAYLOADS)
    with open(last_segment(tmp_path), "r+b") as f:
        f.seek(17 + len(PAYLOADS[0]) + 17 + 20)  # inside record 3's payload
        f.write(b"\xff")
    with pytest.raises(WalCorruption):
        records(tmp_path)
    assert records(tmp_path, policy=RecoveryPolicy.POINT_IN_TIME) == [(1, PAYLOADS[0]), (2, b"")]
    with Wal(tmp_path, recovery=RecoveryPolicy.POINT_IN_TIME, fsync_fn=no_fsync) as w:
        assert w.append(1, b"z") == 3
    assert records(tmp_path) == [(1, PAYLOADS[0]), (2, b""), (3, b"z")]


def test_segments_roll_at_the_size_limit_and_are_named_by_first_lsn(tmp_path):
    payloads = [bytes([i]) * 100 for i in range(100)]
    write_log(tmp_path, payloads, segment_bytes=4096)
    segs = list_segments(tmp_path)
    assert len(segs) == 3
    assert [os.path.basename(p) for _, p in segs][0] == "00000000000000000001.wal"
    for first, path in segs:
        with open(path, "rb") as f:
            assert decode_record(f.read(200))[1] == first  # first record has the file's LSN
        assert os.path.getsize(path) <= 4096
    assert records(tmp_path) == list(enumerate(payloads, 1))


def test_batch_larger_than_a_segment_splits_at_record_boundaries(tmp_path):
    with Wal(tmp_path, segment_bytes=4096, fsync_fn=no_fsync) as w:
        lsns = w.append_many([(1, b"y" * 1000)] * 10 + [(2, b"z" * 9000)] + [(1, b"w")])
    assert lsns == range(1, 13)
    sizes = [os.path.getsize(p) for _, p in list_segments(tmp_path)]
    assert max(sizes) == 17 + 9000  # the oversized record has a segment of its own
    assert [lsn for lsn, _ in records(tmp_path)] == list(range(1, 13))


def test_append_many_is_all_or_nothing(tmp_path):
    with Wal(tmp_path, fsync_fn=no_fsync) as w:
        w.append(1, b"a")
        with pytest.raises(ValueError):
            w.append_many([(1, b"b"), (0, b"bad type")])
        assert w.append(1, b"c") == 2
    assert records(tmp_path) == [(1, b"a"), (2, b"c")]


def test_bad_record_in_a_segment_that_is_not_the_last_refuses(tmp_path):
    write_log(tmp_path, [b"p" * 100] * 100, segment_bytes=4096)
    first = list_segments(tmp_path)[0][1]
    os.truncate(first, os.path.getsize(first) - 5)
    with pytest.raises(WalCorruption, match="not the last"):
        records(tmp_path)


def test_missing_segment_is_reported_as_a_gap(tmp_path):
    write_log(tmp_path, [b"p" * 100] * 100, segment_bytes=4096)
    os.unlink(list_segments(tmp_path)[1][1])
    with pytest.raises(WalCorruption, match="missing"):
        records(tmp_path)


def test_truncate_before_deletes_only_segments_wholly_covered(tmp_path):
    with Wal(tmp_path, segment_bytes=4096, fsync_fn=no_fsync) as w:
        for i in range(100):
            w.append(1, b"q" * 100)
        firsts = [f for f, _ in list_segments(tmp_path)]
        assert w.truncate_before(firsts[1] - 2) == 0  # segment 0 still holds firsts[1] - 1
        assert w.truncate_before(firsts[1] - 1) == 1
        assert w.truncate_before(10**9) == 1  # never the current segment
        assert [f for f, _ in list_segments(tmp_path)] == firsts[2:]
    assert records(tmp_path, after=firsts[2] - 1)[0][0] == firsts[2]
    with pytest.raises(WalCorruption, match="missing"):
        records(tmp_path, after=5)


def test_truncated_last_segment_then_appending_keeps_working(tmp_path):
    expected = []
    for round_ in range(4):
        with Wal(tmp_path, segment_bytes=4096, fsync_fn=no_fsync) as w:
            for i in range(30):
                payload = f"{round_}:{i}".encode() * 5
                expected.append((w.append(1, payload), payload))
        seg = last_segment(tmp_path)
        os.truncate(seg, os.path.getsize(seg) - 7)  # tear the newest record
        expected.pop()
        assert records(tmp_path) == expected
    with Wal(tmp_path, fsync_fn=no_fsync) as w:
        assert w.last_lsn == expected[-1][0]


def test_second_wal_on_the_same_directory_is_refused(tmp_path):
    with Wal(tmp_path, fsync_fn=no_fsync):
        with pytest.raises(WalError, match="already open"):
            Wal(tmp_path, fsync_fn=no_fsync)


def test_closed_wal_refuses_appends(tmp_path):
    w = Wal(tmp_path, fsync_fn=no_fsync)
    w.close()
    w.close()  # idempotent
    with pytest.raises(WalError, match="closed"):
        w.append(1, b"x")


class FailingFsync:
    """fsync that succeeds `ok` times, then raises EIO (as a dying disk would)."""

    def __init__(self, ok):
        self.ok, self.calls = ok, 0

    def __call__(self, fd):
        self.calls += 1
        if self.calls > self.ok:
            raise OSError(5, "Input/output error")


def test_fsync_failure_is_fatal_and_never_acknowledged(tmp_path):
    fsync = FailingFsync(ok=4)  # segment creation takes 2
    w = Wal(tmp_path, fsync_fn=fsync)
    assert w.append(1, b"a") == 1
    assert w.append(1, b"b") == 2
    with pytest.raises(WalFsyncError, match="poisoned"):
        w.append(1, b"c")
    assert w.poisoned and w.durable_lsn == 2
    fsync.ok = 10**9  # the disk "recovers": the log must still refuse
    with pytest.raises(WalFsyncError):
        w.append(1, b"d")
    with pytest.raises(WalFsyncError):
        w.sync()
    w.close()
    got = records(tmp_path)  # "c" may be on disk but was never acknowledged
    assert got[:2] == [(1, b"a"), (2, b"b")] and len(got) <= 3


def test_fsync_failure_fails_every_waiting_appender(tmp_path):
    fsync = FailingFsync(ok=2)
    w = Wal(tmp_path, fsync_fn=fsync)
    errors = []

    def appender():
        try:
            w.append(1, b"x")
        except WalFsyncError as e:
            errors.append(e)

    threads = [threading.Thread(target=appender) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 6 and w.durable_lsn == 0
    w.close()


def test_group_commit_shares_fsyncs_between_concurrent_appenders(tmp_path):
    calls = []

    def slow_fsync(fd):  # a disk with 2 ms flushes makes the grouping visible
        calls.append(fd)
        os.fdatasync(fd)
        time.sleep(0.002)

    w = Wal(tmp_path, fsync_fn=slow_fsync)
    before = len(calls)
    n_threads, per_thread = 8, 25
    done = []

    def appender(t):
        for i in range(per_thread):
            lsn = w.append(1, f"{t}:{i}".encode())
            assert w.durable_lsn >= lsn  # returned only once fsynced
            done.append(lsn)

    threads = [threading.Thread(target=appender, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w.close()
    total = n_threads * per_thread
    fsyncs = len(calls) - before - 1  # close() syncs once more
    assert sorted(done) == list(range(1, total + 1))
    assert fsyncs <= total / 3, f"{fsyncs} fsyncs for {total} appends: not grouped"
    assert len(records(tmp_path)) == total


def test_interval_policy_fsyncs_in_the_background(tmp_path):
    calls = []
    w = Wal(tmp_path, fsync="interval", interval_ms=5, fsync_fn=calls.append)
    base = len(calls)
    lsn = w.append(1, b"a")
    deadline = time.monotonic() + 5
    while w.durable_lsn < lsn and time.monotonic() < deadline:
        time.sleep(0.002)
    assert w.durable_lsn == lsn and len(calls) > base
    w.close()


def test_never_policy_leaves_appends_to_the_os(tmp_path):
    calls = []
    w = Wal(tmp_path, fsync="never", fsync_fn=calls.append)
    base = len(calls)
    for i in range(50):
        w.append(1, b"x")
    assert len(calls) == base and w.durable_lsn == 0
    assert len(records(tmp_path)) == 50  # in the file (page cache) already
    w.close()
    assert w.durable_lsn == 50  # a clean close still syncs


def test_bad_arguments_say_what_to_fix(tmp_path):
    with pytest.raises(ValueError, match="always, interval, never"):
        Wal(tmp_path, fsync="sometimes")
    with pytest.raises(ValueError, match="segment_bytes"):
        Wal(tmp_path, segment_bytes=10)
    with pytest.raises(TypeError, match="RecoveryPolicy"):
        Wal(tmp_path, recovery="absolute")


# ---- overlapping fsyncs (max_syncers > 1): each syncer has its own fd; any
# failure poisons before anything later is acknowledged.

class OverlapThenFail:
    """Once armed: the first fsync waits until a second one is in flight, then
    fails with EIO; the second then returns success, as a second fsync through
    one fd can after the first consumed the error (fsyncgate)."""

    def __init__(self):
        self.armed = False
        self.wal = None
        self.fds = []
        self.second_started = threading.Event()
        self.first_failed = threading.Event()

    def __call__(self, fd):
        if not self.armed:
            return
        self.fds.append(fd)
        if len(self.fds) == 1:
            assert self.second_started.wait(10), "no second fsync overlapped the first"
            self.first_failed.set()
            raise OSError(5, "Input/output error")
        self.second_started.set()
        assert self.first_failed.wait(10)
        # "a's failed first": as the log sees it, not only as this fake does
        # (returning once the event was set, b's success was sometimes seen
        # before a's raise reached the log: a CI run on a busy machine)
        deadline = time.monotonic() + 10
        while not (self.wal is not None and self.wal.poisoned) and time.monotonic() < deadline:
            time.sleep(0.001)


def test_fsync_failure_during_overlapping_syncs_fails_every_unacknowledged_commit(tmp_path):
    fsync = OverlapThenFail()
    w = fsync.wal = Wal(tmp_path, fsync_fn=fsync, max_syncers=2)
    assert w.append(1, b"before") == 1 and w.durable_lsn == 1  # unarmed: the no-op "succeeds"
    fsync.armed = True
    results = {}

    def appender(name):
        try:
            results[name] = w.append(1, name.encode())
        except WalFsyncError as e:
            results[name] = e

    a = threading.Thread(target=appender, args=("a",))
    a.start()
    while not fsync.fds:  # a's fsync is in flight
        time.sleep(0.001)
    b = threading.Thread(target=appender, args=("b",))
    b.start()
    a.join(10)
    b.join(10)
    assert len(fsync.fds) == 2 and fsync.fds[0] != fsync.fds[1], "overlapping fsyncs must use distinct fds"
    # b's fsync started after a's record was written and "succeeded", but a's
    # failed first: neither is acknowledged.
    assert isinstance(results["a"], WalFsyncError) and isinstance(results["b"], WalFsyncError)
    assert "poisoned" in str(results["b"])
    assert w.poisoned and w.durable_lsn == 1
    with pytest.raises(WalFsyncError):
        w.append(1, b"later")
    with pytest.raises(WalFsyncError):
        w.sync()
    w.close()


def test_success_that_returns_before_an_overlapping_failure_stays_acknowledged(tmp_path):
    """The mirror case: the later fsync succeeds first (it waited on every page
    the earlier one had in flight, so it covers them); then the earlier fails.
    What was acknowledged stays; the failure still poisons the log."""
    order = []
    b_acked = threading.Event()

    def fsync(fd):
        if not armed:
            return
        order.append(fd)
        if len(order) == 1:
            # fails once b's append has returned: had it failed as soon as b's
            # fsync was in, before b's append saw that, b would rightly not be
            # acknowledged (poisoned first; a CI run on a busy machine did so)
            b_acked.wait(10)
            raise OSError(5, "Input/output error")

    armed = False
    w = Wal(tmp_path, fsync_fn=fsync, max_syncers=2)
    armed = True
    out = {}
    a = threading.Thread(target=lambda: out.setdefault("a", _try(w.append, 1, b"a")))
    a.start()
    while not order:
        time.sleep(0.001)
    try:
        assert w.append(1, b"b") == 2  # b's fsync covered LSN 1 and 2 and returned first
    finally:
        b_acked.set()
    a.join(10)
    assert out["a"] == 1 or isinstance(out["a"], WalFsyncError)  # acked by b's fsync unless it lost the race
    assert w.durable_lsn == 2 and w.poisoned
    with pytest.raises(WalFsyncError):
        w.append(1, b"c")
    w.close()
    assert records(tmp_path)[:2] == [(1, b"a"), (2, b"b")]


def _try(f, *args):
    try:
        return f(*args)
    except WalFsyncError as e:
        return e


def test_overlapping_syncs_acknowledge_in_lsn_order_with_distinct_fds(tmp_path):
    import random
    rng = random.Random(7)
    in_flight, overlaps, lock = set(), [], threading.Lock()

    def jittery_fsync(fd):  # later fsyncs often finish before earlier ones
        with lock:
            assert fd not in in_flight, "one fd used by two fsyncs at once"
            in_flight.add(fd)
            overlaps.append(len(in_flight))
        try:
            os.fdatasync(fd)
            time.sleep(rng.random() * 0.003)
        finally:
            with lock:
                in_flight.discard(fd)

    w = Wal(tmp_path, fsync_fn=jittery_fsync, max_syncers=4, segment_bytes=4096)
    acked = []

    def appender(t):
        for i in range(40):
            lsn = w.append(1, f"{t}:{i}".encode() * 4)
            # Acknowledged in LSN order: when LSN n returns, every LSN <= n is durable.
            assert w.durable_lsn >= lsn
            acked.append(lsn)

    threads = [threading.Thread(target=appender, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = w.stats()
    w.close()
    assert sorted(acked) == list(range(1, 321))
    assert max(overlaps) > 1 and stats["max_overlap"] > 1, "fsyncs never overlapped"
    assert [lsn for lsn, _ in records(tmp_path)] == list(range(1, 321))
    assert len(list_segments(tmp_path)) > 2  # rolled while syncs overlapped


def test_real_fdatasync_with_overlap_and_commit_delay_reads_back(tmp_path):
    w = Wal(tmp_path, max_syncers=4, commit_delay_us=50, segment_bytes=4096)
    got = []

    def appender(t):
        for i in range(30):
            got.append((w.append(1, f"{t}:{i}".encode()), f"{t}:{i}".encode()))

    threads = [threading.Thread(target=appender, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w.close()
    assert sorted(got) == records(tmp_path)


def test_bad_group_commit_arguments(tmp_path):
    with pytest.raises(ValueError, match="max_syncers"):
        Wal(tmp_path, max_syncers=0)
    with pytest.raises(ValueError, match="commit_delay_us"):
        Wal(tmp_path, commit_delay_us=-1)
