"""DurableTable: every write logged, recovery = checkpoint + replay == live."""
import os
import threading

import numpy as np
import pytest

from fscore.checkpoint import list_checkpoints
from fscore.durable import DurableTable
from fscore.errors import KeyEncodingError, SchemaError, WalFsyncError
from fscore.schema import Schema
from fscore.table_ref import RefTable
from fscore.wal import list_segments

SCHEMA = Schema(keys=[("user_id", "int64")],
                columns=[("amount", "float64"), ("n", "int64"), ("ok", "bool"), ("name", "string", 16),
                         ("emb", "vector", 4)])
KEYS = np.arange(64, dtype=np.int64)


def no_fsync(fd):
    pass


def random_put(rng, now):
    n = int(rng.integers(1, 9))
    keys = rng.choice(KEYS, n, replace=False)
    names = np.array([None if rng.random() < 0.2 else f"u{rng.integers(1000)}" for _ in range(n)], dtype=object)
    values = {"amount": rng.normal(size=n), "n": rng.integers(-5, 5, n), "ok": rng.random(n) < 0.5,
              "name": names, "emb": rng.normal(size=(n, 4)).astype(np.float32)}
    nulls = {"amount": rng.random(n) < 0.1}
    return keys, values, np.full(n, now, np.int64) - rng.integers(0, 50, n), nulls


def assert_same_state(dt, model, now):
    got, want = dt.get_batch(KEYS, now), model.get_batch(KEYS, now)
    np.testing.assert_array_equal(got.status, want.status)
    for name in SCHEMA.column_names:
        np.testing.assert_array_equal(got.nulls[name], want.nulls[name], err_msg=name)
        present = (want.status == 1) & ~want.nulls[name]
        np.testing.assert_array_equal(got.values[name][present], want.values[name][present], err_msg=name)


def run_ops(dt, model, rng, count, now0=1_000):
    """`count` random writes to both; returns the next `now`. model.last_put
    is the `now` (also the source offset) of the last put."""
    for i in range(count):
        now = now0 + i
        if rng.random() < 0.8:
            keys, values, ets, nulls = random_put(rng, now)
            dt.put_batch(keys, values, ets, now=now, nulls=nulls, source_offsets={"t/0": now})
            model.put_batch(keys, values, ets, now=now, nulls=nulls)
            model.last_put = now
        else:
            keys = rng.choice(KEYS, 3, replace=False)
            dt.delete_batch(keys)
            model.delete_batch(keys)
    return now0 + count


def test_reopened_store_equals_the_live_one(tmp_path, rng):
    model = RefTable(SCHEMA, capacity=128)
    with DurableTable.open(tmp_path, SCHEMA, capacity=128, fsync_fn=no_fsync) as dt:
        now = run_ops(dt, model, rng, 60)
        assert_same_state(dt, model, now)
    with DurableTable.open(tmp_path, SCHEMA, fsync_fn=no_fsync) as dt:
        assert dt.replayed == 60 and dt.last_lsn == 60
        assert dt.source_offsets == {"t/0": model.last_put}
        assert_same_state(dt, model, now)


def test_recovery_loads_the_checkpoint_and_replays_only_later_records(tmp_path, rng):
    model = RefTable(SCHEMA, capacity=128)
    with DurableTable.open(tmp_path, SCHEMA, capacity=128, fsync_fn=no_fsync, segment_bytes=4096) as dt:
        now = run_ops(dt, model, rng, 40)
        assert dt.checkpoint() == 40
        now = run_ops(dt, model, rng, 15, now)
    with DurableTable.open(tmp_path, SCHEMA, fsync_fn=no_fsync) as dt:
        assert (dt.checkpoint_lsn, dt.replayed, dt.last_lsn) == (40, 15, 55)
        assert_same_state(dt, model, now)


def test_background_checkpoint_trims_the_log_but_keeps_what_older_checkpoints_need(tmp_path, rng):
    model = RefTable(SCHEMA, capacity=128)
    with DurableTable.open(tmp_path, SCHEMA, capacity=128, fsync_fn=no_fsync, segment_bytes=4096) as dt:
        now = run_ops(dt, model, rng, 40)
        first = dt.checkpoint(background=True)
        now = run_ops(dt, model, rng, 40, now)  # writes go on meanwhile
        assert first.result() == 40
        assert dt.checkpoint(background=True).result() == 80
        segs = [first for first, _ in list_segments(tmp_path / "wal")]
        assert len(segs) > 1 and segs[0] > 1  # old segments went ...
        assert segs[0] <= 41  # ... but LSN 41.. stays for the checkpoint at 40
        assert [lsn for lsn, _ in list_checkpoints(tmp_path)] == [40, 80]
        now = run_ops(dt, model, rng, 5, now)
    # The newest checkpoint is torn: recovery falls back and replays more log.
    newest = list_checkpoints(tmp_path)[-1][1]
    os.truncate(newest, os.path.getsize(newest) // 2)
    with DurableTable.open(tmp_path, SCHEMA, fsync_fn=no_fsync) as dt:
        assert dt.last_lsn == 85
        assert_same_state(dt, model, now)


def test_concurrent_writers_are_applied_in_lsn_order(tmp_path):
    with DurableTable.open(tmp_path, SCHEMA, capacity=128) as dt:
        def writer(t):
            for i in range(30):  # all threads fight over the same keys
                dt.put_batch(KEYS[:4], {"n": np.full(4, t * 1000 + i)}, np.full(4, 10), now=10)

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        live = dt.get_batch(KEYS[:4], 10).values["n"].copy()
    with DurableTable.open(tmp_path, SCHEMA) as dt:
        np.testing.assert_array_equal(dt.get_batch(KEYS[:4], 10).values["n"], live)


def test_invalid_batch_is_refused_before_it_is_logged(tmp_path):
    with DurableTable.open(tmp_path, SCHEMA, capacity=16, fsync_fn=no_fsync) as dt:
        with pytest.raises(SchemaError):
            dt.put_batch(KEYS[:2], {"nope": np.zeros(2)}, np.zeros(2, np.int64), now=0)
        with pytest.raises(SchemaError):
            dt.put_batch(KEYS[:1], {"name": np.array(["x" * 17], dtype=object)}, np.zeros(1, np.int64), now=0)
        with pytest.raises(KeyEncodingError):
            dt.delete_batch(np.array(["a"], dtype=object))
        assert dt.wal.last_lsn == 0


def test_store_opened_with_another_schema_is_refused(tmp_path):
    DurableTable.open(tmp_path, SCHEMA, capacity=16, fsync_fn=no_fsync).close()
    other = Schema(keys=[("user_id", "int64")], columns=[("amount", "float64")])
    with pytest.raises(SchemaError, match="created with schema"):
        DurableTable.open(tmp_path, other)


def test_expire_is_logged_and_replayed(tmp_path):
    with DurableTable.open(tmp_path, SCHEMA, capacity=16, ttl_us=100, fsync_fn=no_fsync) as dt:
        dt.put_batch(KEYS[:3], {"n": np.arange(3)}, np.array([450, 470, 500]), now=500)
        dt.expire(560)
        assert len(dt) == 2
    with DurableTable.open(tmp_path, SCHEMA, fsync_fn=no_fsync) as dt:
        assert len(dt) == 2 and dt.get(2, 560) is not None


def test_fsync_failure_surfaces_and_nothing_is_applied(tmp_path):
    calls = []

    def failing(fd):
        calls.append(fd)
        if len(calls) > 2:
            raise OSError(5, "Input/output error")

    with DurableTable.open(tmp_path, SCHEMA, capacity=16, fsync_fn=failing) as dt:
        with pytest.raises(WalFsyncError):
            dt.put_batch(KEYS[:1], {"n": np.arange(1)}, np.zeros(1, np.int64), now=0)
        assert len(dt) == 0
