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


def test_flushes_when_buffer_is_full_and_recovers_next_seq(tmp_path):
    log = EventLog(str(tmp_path), flush_rows=4)
    log.append("s", {"ts": np.arange(3)}, timestamp="ts", created_ts=0)
    assert log.files("s") == []
    log.append("s", {"ts": np.arange(3) + DAY}, timestamp="ts", created_ts=0)  # 6 >= 4: flushed
    assert len(log.files("s")) == 2
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
