"""Properties of the WAL codec and recovery, with the pure-Python reference
(fscore.wal_ref) as the oracle: whatever is damaged, recovery returns exactly
a prefix of what was written, or refuses with WalCorruption - never wrong data."""
import os
import shutil
import tempfile

from hypothesis import given, strategies as st

from fscore import wal_ref
from fscore.errors import WalCorruption
from fscore.wal import RecoveryPolicy, Wal, crc32c, decode_record, encode_record, list_segments, read_log
from fscore.walread import scan_segment

payloads = st.lists(st.binary(max_size=120), min_size=1, max_size=25)


def no_fsync(fd):
    pass


@given(st.integers(1, 255), st.integers(0, 2**64 - 1), st.binary(max_size=300))
def test_c_codec_equals_reference_codec(rtype, lsn, payload):
    rec = encode_record(rtype, lsn, payload)
    assert rec == wal_ref.encode_record(rtype, lsn, payload)
    assert decode_record(rec) == wal_ref.decode_record(rec) == ("ok", lsn, rtype, payload, len(rec))


@given(st.binary(max_size=200), st.integers(0, 2**32 - 1))
def test_crc32c_equals_reference(data, start):
    assert crc32c(data, start) == wal_ref.crc32c(data, start)


@given(st.binary(max_size=120), st.integers(0, 40))
def test_decoding_any_bytes_gives_the_reference_verdict(data, offset):
    offset = min(offset, len(data))
    assert decode_record(data, offset) == wal_ref.decode_record(data, offset)


@given(payloads, st.data())
def test_scanning_damaged_segment_gives_the_reference_verdict(ps, data):
    seg = bytearray(b"".join(wal_ref.encode_record(1, i + 5, p) for i, p in enumerate(ps)))
    seg += bytes(data.draw(st.integers(0, 40)))  # maybe a zero tail
    for _ in range(data.draw(st.integers(0, 3))):
        i = data.draw(st.integers(0, len(seg) - 1))
        seg[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(seg)))
    seg = bytes(seg[:cut])
    assert scan_segment(seg, 5) == wal_ref.scan_segment(seg, 5)


def _written_log(ps, segment_bytes):
    d = tempfile.mkdtemp(prefix="walprop-")
    with Wal(d, segment_bytes=segment_bytes, fsync_fn=no_fsync) as w:
        for p in ps:
            w.append(1, p)
    return d


def _recover(d, policy=RecoveryPolicy.TOLERATE_TAIL):
    try:
        return [p for _, _, p in read_log(d, 0, policy)]
    except WalCorruption:
        return None


def _record_spans(d):
    """(segment path, start, end) of every record, in LSN order."""
    spans = []
    for _, path in list_segments(d):
        with open(path, "rb") as f:
            data = f.read()
        off = 0
        while off < len(data):
            status, *_, nxt = decode_record(data, off)
            assert status == "ok"
            spans.append((path, off, nxt))
            off = nxt
    return spans


@given(payloads, st.data())
def test_bit_flip_anywhere_yields_a_prefix_or_a_refusal(ps, data):
    d = _written_log(ps, 4096)
    try:
        spans = _record_spans(d)
        k = data.draw(st.integers(0, len(spans) - 1), label="record")
        path, start, end = spans[k]
        pos = data.draw(st.integers(start, end - 1), label="byte")
        bit = data.draw(st.integers(0, 7), label="bit")
        with open(path, "r+b") as f:
            f.seek(pos)
            b = f.read(1)[0]
            f.seek(pos)
            f.write(bytes([b ^ (1 << bit)]))
        got = _recover(d)
        if k == len(spans) - 1:  # the newest record: a torn tail, dropped
            assert got == ps[:k]
            with Wal(d, fsync_fn=no_fsync) as w:  # and appends continue after it
                assert w.append(1, b"next") == k + 1
            assert _recover(d) == ps[:k] + [b"next"]
        else:  # damage with valid data after it: refuse, never return wrong data
            assert got is None
    finally:
        shutil.rmtree(d)


@given(payloads, st.data())
def test_random_damage_never_returns_wrong_data(ps, data):
    d = _written_log(ps, 4096)
    try:
        segs = list_segments(d)
        _, path = segs[data.draw(st.integers(0, len(segs) - 1))]
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            for _ in range(data.draw(st.integers(1, 4))):
                pos = data.draw(st.integers(0, max(size - 1, 0)))
                f.seek(pos)
                f.write(data.draw(st.binary(min_size=1, max_size=8)))
        if data.draw(st.booleans()):
            os.truncate(path, data.draw(st.integers(0, os.path.getsize(path))))
        for policy in RecoveryPolicy:
            got = _recover(d, policy)
            assert got is None or got == ps[:len(got)], policy
    finally:
        shutil.rmtree(d)


@given(payloads, st.data())
def test_truncating_the_last_segment_anywhere_recovers_a_prefix(ps, data):
    d = _written_log(ps, 4096)
    try:
        _, path = list_segments(d)[-1]
        os.truncate(path, data.draw(st.integers(0, os.path.getsize(path))))
        got = _recover(d)
        assert got is not None and got == ps[:len(got)]
        with Wal(d, fsync_fn=no_fsync) as w:
            w.append(2, b"after")
        assert _recover(d) == got + [b"after"]
    finally:
        shutil.rmtree(d)
