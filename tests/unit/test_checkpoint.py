"""Checkpoint files: round trip, atomic replacement, torn files skipped."""
import os
import threading
import time

import numpy as np
import pytest

from fscore.checkpoint import (list_checkpoints, load_checkpoint, load_latest_checkpoint, write_checkpoint)
from fscore.errors import CheckpointError


def test_blobs_and_meta_round_trip(tmp_path):
    table = np.arange(1000, dtype=np.uint8)
    emb = np.arange(12, dtype=np.float32).reshape(3, 4)
    write_checkpoint(tmp_path, 42, {"table": table, "raw": b"hello", "emb": emb},
                     {"offsets": {"clicks/0": 1017, "clicks/1": 88}})
    lsn, blobs, meta = load_latest_checkpoint(tmp_path)
    assert lsn == 42 and meta == {"offsets": {"clicks/0": 1017, "clicks/1": 88}}
    assert blobs["raw"] == b"hello"
    np.testing.assert_array_equal(blobs["table"], table)
    np.testing.assert_array_equal(blobs["emb"], emb)
    assert blobs["emb"].dtype == np.float32 and blobs["table"].ctypes.data % 64 == blobs["emb"].ctypes.data % 64


def test_no_checkpoint_loads_as_none(tmp_path):
    assert load_latest_checkpoint(tmp_path) is None
    assert load_latest_checkpoint(tmp_path / "missing") is None


@pytest.mark.parametrize("damage", ["truncate_end", "truncate_middle", "flip_byte", "empty"])
def test_torn_checkpoint_is_ignored_and_the_previous_one_used(tmp_path, damage):
    write_checkpoint(tmp_path, 10, {"t": np.zeros(5000, np.uint8)}, {"n": 1})
    path = write_checkpoint(tmp_path, 20, {"t": np.ones(5000, np.uint8)}, {"n": 2})
    size = os.path.getsize(path)
    if damage == "truncate_end":
        os.truncate(path, size - 1)
    elif damage == "truncate_middle":
        os.truncate(path, size // 2)
    elif damage == "empty":
        os.truncate(path, 0)
    else:
        with open(path, "r+b") as f:
            f.seek(size // 2)
            b = f.read(1)
            f.seek(size // 2)
            f.write(bytes([b[0] ^ 0x10]))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    lsn, blobs, meta = load_latest_checkpoint(tmp_path)
    assert (lsn, meta) == (10, {"n": 1}) and not blobs["t"].any()


def test_stray_temp_file_from_a_crash_is_ignored(tmp_path):
    write_checkpoint(tmp_path, 10, {"t": b"good"}, {})
    with open(tmp_path / "checkpoint-00000000000000000020.ckpt.tmp-999999-0", "wb") as f:
        f.write(b"FSCKPT\x00\x01 half written")
    assert load_latest_checkpoint(tmp_path).lsn == 10


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    for lsn in (1, 2, 3, 4):
        write_checkpoint(tmp_path, lsn, {"t": b"x"}, {}, keep=2)
    assert [lsn for lsn, _ in list_checkpoints(tmp_path)] == [3, 4]


def test_checkpoint_is_written_from_a_background_thread_on_a_copy(tmp_path):
    live = np.zeros(1 << 20, np.uint8)
    copy = live.copy()
    t = threading.Thread(target=write_checkpoint, args=(tmp_path, 7, {"t": copy}, {}))
    t.start()
    live[:] = 1  # the writer keeps going meanwhile
    t.join()
    assert not load_latest_checkpoint(tmp_path).blobs["t"].any()


def test_unserialisable_meta_is_refused_before_writing(tmp_path):
    with pytest.raises(CheckpointError, match="JSON"):
        write_checkpoint(tmp_path, 1, {}, {"bad": object()})
    assert list_checkpoints(tmp_path) == []


def test_pid_alive_tells_running_exited_and_zombie_processes():
    import subprocess
    import sys

    from fscore.proc import pid_alive
    assert pid_alive(os.getpid())
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while pid_alive(p.pid) and time.monotonic() < deadline:  # exits, stays a zombie until reaped
        time.sleep(0.02)
    assert not pid_alive(p.pid)
    p.wait()
    assert not pid_alive(p.pid)


class ShortReads:
    """A file that returns at most `cap` bytes per read, as Linux does past
    ~2 GiB (0x7ffff000 bytes per read(2))."""

    def __init__(self, data: bytes, cap: int):
        self.data, self.cap, self.pos, self.reads = data, cap, 0, 0

    def readinto(self, mv):
        n = min(len(mv), self.cap, len(self.data) - self.pos)
        mv[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        self.reads += 1
        return n


def test_a_checkpoint_read_takes_as_many_reads_as_it_needs(tmp_path, monkeypatch):
    """Issue 14, repro 1: a checkpoint over 2 GiB was read with one readinto,
    which Linux cuts at ~2 GiB: 'not a complete checkpoint', and the whole WAL
    was replayed. Tested without 2 GiB: short reads, and chunked reads."""
    import numpy as np
    from fscore import checkpoint as ck

    data = bytes(range(256)) * 40
    f = ShortReads(data, cap=1000)
    buf = bytearray(len(data))
    assert ck.read_whole(f, buf) == len(data) and bytes(buf) == data and f.reads >= 11
    assert ck.read_whole(ShortReads(data[:500], cap=1000), bytearray(1000)) == 500  # end of file: short
    blob = np.arange(50_000, dtype=np.int64)
    path = ck.write_checkpoint(str(tmp_path), 7, {"t": blob, "b": b"x" * 3000}, {"m": 1})
    monkeypatch.setattr(ck, "READ_CHUNK", 4096)  # a big file is many reads: the loop must join them
    got = ck.load_checkpoint(path)
    assert got.lsn == 7 and (got.blobs["t"] == blob).all() and got.blobs["b"] == b"x" * 3000
