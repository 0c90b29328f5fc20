"""The Parquet event log: layout, sequence numbers, recovery, NaN as null."""
from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from fsapp.errors import SourceError
from fsapp.offline.eventlog import CREATED_TS, EVENT_TS, SEQ, EventLog

DAY = 86_400_000_000


def test_partitions_by_stream_and_day_with_meta_columns(tmp_path):
    log = EventLog(str(tmp_path))
    first, n = log.append("clicks", {"u": [1, 2, 3], "ts": [0, DAY + 5, 7]}, timestamp="ts", created_ts=99)
    assert (first, n) == (0, 3)
    assert log.files("clicks") == []  # buffered until flushed
    assert log.flush() == 3
    files = [os.path.relpath(f, tmp_path) for f in log.files("clicks")]
    assert files == ["clicks/date=1970-01-01/part-00000000000000000000.parquet",
                     "clicks/date=1970-01-02/part-00000000000000000001.parquet"]
    t = pq.read_table(log.files("clicks")[0])
    assert t.column_names == ["u", "ts", EVENT_TS, CREATED_TS, SEQ]
    assert t.column(SEQ).to_pylist() == [0, 2] and t.column(CREATED_TS).to_pylist() == [99, 99]


def test_time_columns_are_delta_encoded_the_others_by_dictionary(tmp_path):
    """A dictionary over nearly unique time values is built, then given up:
    the time columns are delta-encoded instead (parquet_encodings); the
    events read back as written, through pyarrow and DuckDB."""
    import duckdb
    import pandas as pd

    n = 5000
    rng = np.random.default_rng(3)
    us = np.sort(rng.integers(0, DAY, n))
    rows = {"user": rng.integers(0, 50, n), "merchant": [f"m{i % 7}" for i in range(n)], "amount": rng.random(n),
            "at": pd.to_datetime(us, unit="us", utc=True)}
    log = EventLog(str(tmp_path))
    log.append("s", pd.DataFrame(rows), timestamp="at", created_ts=99)
    log.flush()
    (path,) = log.files("s")
    meta = pq.ParquetFile(path).metadata.row_group(0)
    enc = {meta.column(i).path_in_schema: meta.column(i) for i in range(meta.num_columns)}
    for name in ("at", EVENT_TS, CREATED_TS, SEQ):
        assert "DELTA_BINARY_PACKED" in enc[name].encodings and not enc[name].has_dictionary_page, name
    for name in ("user", "merchant", "amount"):
        assert enc[name].has_dictionary_page, name
    back = pq.read_table(path)
    assert back.column("user").to_pylist() == rows["user"].tolist()
    assert back.column("merchant").to_pylist() == rows["merchant"]
    assert back.column(EVENT_TS).to_pylist() == us.tolist()
    assert back.column(SEQ).to_pylist() == list(range(n))
    sql = f"SELECT sum({SEQ}), max({EVENT_TS}), count(DISTINCT merchant) FROM '{path}'"
    assert duckdb.connect().execute(sql).fetchall()[0] == \
        (n * (n - 1) // 2, int(us.max()), 7)


def _until(cond, timeout_s=10.0):
    import time
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_flushes_when_buffer_is_full_and_recovers_next_seq(tmp_path):
    log = EventLog(str(tmp_path), flush_rows=4)
    log.append("s", {"ts": np.arange(3)}, timestamp="ts", created_ts=0)
    assert log.files("s") == []
    log.append("s", {"ts": np.arange(3) + DAY}, timestamp="ts", created_ts=0)  # 6 >= 4: flushed
    _until(lambda: len(log.files("s")) == 2)  # by the background writer
    again = EventLog(str(tmp_path))
    assert again.next_seq("s") == 6
    assert again.append("s", {"ts": [1]}, timestamp="ts", created_ts=0) == (6, 1)


def test_timestamps_may_be_arrow_timestamps(tmp_path):
    import pandas as pd
    log = EventLog(str(tmp_path))
    log.append("s", pd.DataFrame({"ts": pd.to_datetime(["1970-01-01 00:00:01"], utc=True)}), timestamp="ts",
               created_ts=0)
    log.flush()
    assert pq.read_table(log.files("s")[0]).column(EVENT_TS).to_pylist() == [1_000_000]


def test_nan_is_stored_as_null(tmp_path):
    log = EventLog(str(tmp_path))
    log.append("s", {"ts": [1, 2], "x": [np.nan, 1.0]}, timestamp="ts", created_ts=0)
    log.flush()
    assert pq.read_table(log.files("s")[0]).column("x").to_pylist() == [None, 1.0]


def test_errors_name_the_fix(tmp_path):
    log = EventLog(str(tmp_path))
    with pytest.raises(SourceError, match="timestamp column 'ts'"):
        log.append("s", {"t": [1]}, timestamp="ts", created_ts=0)
    with pytest.raises(SourceError, match="reserved"):
        log.append("s", {"ts": [1], SEQ: [1]}, timestamp="ts", created_ts=0)
    with pytest.raises(SourceError, match="identifier"):
        log.append("../x", {"ts": [1]}, timestamp="ts", created_ts=0)
    with pytest.raises(SourceError, match="int64 µs or a timestamp"):
        log.append("s", {"ts": [1.5]}, timestamp="ts", created_ts=0)


def test_a_failed_flush_keeps_every_event_buffered_and_writes_no_day_twice(tmp_path, monkeypatch):
    """Issue 14, repro 4's class: a flush that failed half-way (a full disk
    while writing the second day's file) had dropped the buffer, and the
    first day was written; a later flush lost or repeated events. Now all of
    a stream's days are written, or none."""
    import pyarrow.parquet as pq_mod
    from fsapp.offline import eventlog

    log = EventLog(str(tmp_path))
    log.append("clicks", {"u": [1, 2, 3], "ts": [0, DAY + 5, 7]}, timestamp="ts", created_ts=1)
    real, calls = pq_mod.write_table, []

    def full_disk(table, path, **kw):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(table, path, **kw)

    monkeypatch.setattr(eventlog.pq, "write_table", full_disk)
    with pytest.raises(OSError):
        log.flush()
    assert log.files("clicks") == [] and not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    log.append("clicks", {"u": [4], "ts": [9]}, timestamp="ts", created_ts=2)
    assert log.flush() == 4
    seqs = sorted(s for f in log.files("clicks") for s in pq.read_table(f).column(SEQ).to_pylist())
    assert seqs == [0, 1, 2, 3]
    # an automatic flush inside append that fails does not fail the append
    small = EventLog(str(tmp_path / "small"), flush_rows=2)
    calls.clear()
    monkeypatch.setattr(eventlog.pq, "write_table", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "full")))
    assert small.append("c", {"u": [1, 2, 3], "ts": [0, 1, 2]}, timestamp="ts", created_ts=1) == (0, 3)
    monkeypatch.setattr(eventlog.pq, "write_table", real)
    assert small.flush() == 3


def test_appends_go_on_while_a_flush_writes_and_flush_waits_for_one_in_flight(tmp_path, held_parquet_writes):
    """Issue 15 (checkpoint stalls): the engine's checkpoint flushes the log;
    the Parquet write held the log's lock, so every push (which appends) waited
    for it. Now only taking the buffer is under the lock. A flush called while
    another is writing returns only once that one's events are in files (a
    training set sees every event ingested before it was asked for)."""
    import threading

    held = held_parquet_writes
    log = EventLog(str(tmp_path))
    log.append("c", {"u": [1, 2], "ts": [0, 1]}, timestamp="ts", created_ts=1)
    first = threading.Thread(target=log.flush)
    first.start()
    assert held.entered.wait(10)
    # the write is in flight: an append does not wait for it
    done = threading.Event()
    threading.Thread(target=lambda: (log.append("c", {"u": [3], "ts": [2]}, timestamp="ts", created_ts=2),
                                     done.set())).start()
    assert done.wait(5), "append waited for a flush in flight"
    # a second flush waits for the first, then writes the new event too
    second_done = threading.Event()
    second = threading.Thread(target=lambda: (log.flush(), second_done.set()))
    second.start()
    assert not second_done.wait(0.3)
    held.release()
    first.join(10)
    second.join(10)
    assert second_done.is_set()
    seqs = sorted(s for f in log.files("c") for s in pq.read_table(f).column(SEQ).to_pylist())
    assert seqs == [0, 1, 2]


def test_a_failed_flush_puts_its_events_back_before_later_appends(tmp_path, held_parquet_writes):
    import threading

    held = held_parquet_writes
    log = EventLog(str(tmp_path))
    log.append("c", {"u": [1], "ts": [0]}, timestamp="ts", created_ts=1)
    errors = []

    def flush():
        try:
            log.flush()
        except OSError as e:
            errors.append(e)

    t = threading.Thread(target=flush)
    t.start()
    assert held.entered.wait(10)
    log.append("c", {"u": [2], "ts": [1]}, timestamp="ts", created_ts=2)  # while the failing write is in flight
    held.release(fail=OSError(28, "No space left on device"))
    t.join(10)
    assert len(errors) == 1 and not log.files("c")
    held.restore()
    assert log.flush() == 2
    rows = pq.read_table(log.files("c")[0])
    assert rows.column(SEQ).to_pylist() == [0, 1] and rows.column("u").to_pylist() == [1, 2]


def test_a_full_buffer_is_written_in_the_background_not_by_the_append(tmp_path, held_parquet_writes):
    """Issue 16 (produce → online p99): the append that filled the buffer wrote
    the Parquet files itself — in the engine, under the engine lock, ~60 ms at
    100k events, stalling every push and read behind it."""
    import threading

    log = EventLog(str(tmp_path), flush_rows=3)
    done = threading.Event()
    threading.Thread(target=lambda: (log.append("s", {"ts": [1, 2, 3]}, timestamp="ts", created_ts=0),
                                     done.set()), daemon=True).start()
    assert held_parquet_writes.entered.wait(10)  # the write started...
    assert done.wait(5)  # ...and the append returned while it is still held
    assert log.append("s", {"ts": [4]}, timestamp="ts", created_ts=0) == (3, 1)
    held_parquet_writes.release()
    log.close()  # waits for the writer, then flushes the rest
    seqs = sorted(s for f in log.files("s") for s in pq.read_table(f).column(SEQ).to_pylist())
    assert seqs == [0, 1, 2, 3]
