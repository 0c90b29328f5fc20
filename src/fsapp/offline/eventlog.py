"""The offline event log: every ingested event, in Parquet, partitioned by
stream and day.

    <root>/<stream>/date=YYYY-MM-DD/part-<first seq, 20 digits>.parquet

Each file holds the stream's own columns plus three int64 columns:

    _fs_event_ts    event time, µs since the epoch UTC (the day partition is its date)
    _fs_created_ts  ingest time, µs (passed in by the caller: time is never read here)
    _fs_seq         ingestion sequence number, per stream, from 0, gapless

`_fs_seq` is the arrival order the online engine saw, so the offline store
breaks equal-timestamp ties the same way (semantics.md §3 "Ties"). Files are
written to a temporary name and renamed, so a reader never sees half a file;
events not yet flushed are covered by the engine's WAL, not by this module.
Any Parquet engine can read the layout (`date=` is Hive-style).
"""
from __future__ import annotations

import glob
import logging
import os
import re
import threading

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fsapp.errors import SourceError

EVENT_TS, CREATED_TS, SEQ = "_fs_event_ts", "_fs_created_ts", "_fs_seq"
log = logging.getLogger("fsapp.offline")
META_COLUMNS = (EVENT_TS, CREATED_TS, SEQ)
_US_PER_DAY = 86_400_000_000
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def to_arrow(rows) -> pa.Table:
    """An Arrow table from a pandas DataFrame, an Arrow table/batch, a dict of
    columns or a list of row dicts."""
    if isinstance(rows, pa.Table):
        return rows
    if isinstance(rows, pa.RecordBatch):
        return pa.Table.from_batches([rows])
    if isinstance(rows, dict):
        return pa.table({k: np.asarray(v) if not isinstance(v, (pa.Array, pa.ChunkedArray)) else v
                         for k, v in rows.items()})
    if isinstance(rows, list):
        return pa.Table.from_pylist(rows)
    if hasattr(rows, "to_arrow") and not hasattr(rows, "iloc"):
        return rows.to_arrow()
    return pa.Table.from_pandas(rows, preserve_index=False)


def timestamps_us(col: pa.ChunkedArray | pa.Array, what: str) -> np.ndarray:
    """int64 µs from an integer column (already µs) or any Arrow timestamp."""
    t = col.type
    if pa.types.is_timestamp(t):
        col = pc.cast(col.cast(pa.timestamp(t.unit)), pa.int64())
        scale = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": None}[t.unit]
        arr = col.to_numpy(zero_copy_only=False)
        return arr // 1000 if scale is None else arr * scale
    if pa.types.is_integer(t):
        if col.null_count:
            raise SourceError(f"{what} has nulls; every event needs a timestamp")
        return col.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    raise SourceError(f"{what} must be int64 µs or a timestamp, not {t}")


def _nan_as_null(table: pa.Table) -> pa.Table:
    """NaN is null everywhere in fstore (semantics.md §3); storing it as a
    Parquet null makes every reader (and min/max statistics) agree."""
    for i, f in enumerate(table.schema):
        if pa.types.is_floating(f.type):
            col = table.column(i)
            if pc.any(pc.is_nan(col)).as_py():
                table = table.set_column(i, f, pc.if_else(pc.is_nan(col), pa.scalar(None, f.type), col))
    return table


def parquet_encodings(schema: pa.Schema) -> dict:
    """pq.write_table's encoding options for an event log file: the time
    columns (the stream's timestamps and fstore's own columns, nearly
    sorted and nearly unique) delta-encoded, a dictionary for the others.
    PERF: a dictionary over nearly unique values is built, then given up
    once it grows too big: Arrow's default spent ~2/3 of an event log
    file's encoding on it. Measured on 200k events (two int64 ids, a
    string, a double, a timestamp, the three meta columns): 371 → 121 ns an
    event to encode, 3.8 → 2.4 MB, DuckDB's scan 23 → 14 ms."""
    timed = [f.name for f in schema
             if pa.types.is_timestamp(f.type) or (f.name in META_COLUMNS and pa.types.is_int64(f.type))]
    return {"use_dictionary": [f.name for f in schema if f.name not in timed],
            "column_encoding": {name: "DELTA_BINARY_PACKED" for name in timed}}


class EventLog:
    """Buffers appended events per stream and flushes them to Parquet.

    `append` assigns sequence numbers immediately (so callers can log them in
    the WAL); `flush` writes the buffer, one file per day touched. A buffer
    that holds `flush_rows` events is written by a background thread: the
    append that fills it (the engine's, under its lock) does not wait for
    Parquet encoding and the disk (~60 ms at 100k events)."""

    def __init__(self, root: str, flush_rows: int = 100_000, fsync: bool = False):
        self.root = os.path.abspath(root)
        self.flush_rows = flush_rows
        self.fsync = fsync
        os.makedirs(self.root, exist_ok=True)
        self._lock = threading.Lock()        # the buffers and sequence numbers
        self._flush_lock = threading.Lock()  # one flush at a time: files land in order
        self._buffers: dict[str, list[pa.Table]] = {}
        self._buffered: dict[str, int] = {}
        self._next_seq: dict[str, int] = {}
        self._wanted = threading.Event()  # a buffer is full
        self._flusher: threading.Thread | None = None
        self._closing = False

    # ---- layout

    def stream_dir(self, stream: str) -> str:
        if not _NAME.match(stream):
            raise SourceError(f"stream name {stream!r} must be an identifier (letters, digits, _)")
        return os.path.join(self.root, stream)

    def glob(self, stream: str) -> str:
        """The glob a Parquet reader takes for the whole stream."""
        return os.path.join(self.stream_dir(stream), "date=*", "part-*.parquet")

    def files(self, stream: str) -> list[str]:
        return sorted(glob.glob(self.glob(stream)))

    def streams(self) -> list[str]:
        return sorted(d for d in os.listdir(self.root) if os.path.isdir(os.path.join(self.root, d))
                      and _NAME.match(d))

    def next_seq(self, stream: str) -> int:
        """The sequence number the next appended event gets, recovered from the
        files on first use: 1 + the largest `_fs_seq` in their Parquet
        statistics (a flush spanning days interleaves seqs across parts, so
        the part names alone do not tell)."""
        if stream not in self._next_seq:
            top = -1
            for f in self.files(stream):
                try:
                    md = pq.read_metadata(f)
                except (pa.ArrowInvalid, OSError) as e:
                    # parts are written whole and renamed into place: a bad one was damaged afterwards
                    raise SourceError(f"offline log file {f} is damaged ({e}); restore it from a backup, or move "
                                      "it aside to start without its events offline") from None
                col = md.schema.names.index(SEQ)
                for g in range(md.num_row_groups):
                    st = md.row_group(g).column(col).statistics
                    top = max(top, int(st.max)) if st is not None and st.has_min_max else max(
                        top, int(pc.max(pq.read_table(f, columns=[SEQ]).column(SEQ)).as_py()))
            self._next_seq[stream] = top + 1
        return self._next_seq[stream]

    # ---- writes

    def append(self, stream: str, rows, *, timestamp: str, created_ts, seq=None) -> tuple[int, int]:
        """Buffers `rows` (anything `to_arrow` takes) of `stream`; `timestamp`
        names its event-time column (int µs or timestamp), `created_ts` is the
        ingest time (an int for the batch or one per row). Returns the
        sequence numbers assigned, as (first, count).

        `seq` lets a caller that already numbered the events (the engine,
        replaying its WAL) keep its numbers; they must continue the log's."""
        table = _nan_as_null(to_arrow(rows))
        if timestamp not in table.column_names:
            raise SourceError(f"stream {stream}: rows lack the timestamp column {timestamp!r} "
                              f"(columns: {', '.join(table.column_names)})")
        clash = [c for c in META_COLUMNS if c in table.column_names]
        if clash:
            raise SourceError(f"stream {stream}: columns {clash} are reserved for the event log; rename them")
        n = table.num_rows
        ts = timestamps_us(table.column(timestamp), f"stream {stream}: column {timestamp!r}")
        created = np.broadcast_to(np.asarray(created_ts, dtype=np.int64), (n,))
        with self._lock:
            first = self.next_seq(stream) if seq is None else int(seq)
            if first < self.next_seq(stream):  # a gap is fine (a batch refused after numbering), going back is not
                raise SourceError(f"stream {stream}: events must continue at seq {self.next_seq(stream)}, "
                                  f"got {first}")
            table = (table.append_column(EVENT_TS, pa.array(ts, pa.int64()))
                     .append_column(CREATED_TS, pa.array(np.ascontiguousarray(created), pa.int64()))
                     .append_column(SEQ, pa.array(np.arange(first, first + n, dtype=np.int64))))
            self._buffers.setdefault(stream, []).append(table)
            self._buffered[stream] = self._buffered.get(stream, 0) + n
            self._next_seq[stream] = first + n
            full = self._buffered[stream] >= self.flush_rows
        if full:
            self._kick()
        return first, n

    def _kick(self) -> None:
        with self._lock:
            if self._flusher is None or not self._flusher.is_alive():
                self._flusher = threading.Thread(target=self._flush_full, name="fstore-offline-flush", daemon=True)
                self._flusher.start()
        self._wanted.set()

    def _flush_full(self) -> None:
        """The background writer: flushes the streams whose buffer is full."""
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._closing:
                return
            with self._lock:
                full = [s for s, n in self._buffered.items() if n >= self.flush_rows]
            for stream in full:
                try:
                    with self._flush_lock:
                        self._flush_stream(stream)
                except (OSError, pa.ArrowException) as e:
                    # the events stay buffered (and in the engine's WAL): the next flush or
                    # checkpoint writes them
                    log.warning("offline log: writing %s's buffered events failed (%s); they stay buffered",
                                stream, e)

    def flush(self, stream: str | None = None) -> int:
        """Writes buffered events (of one stream or all); returns rows written.
        When it returns, every event appended before the call is in a file.
        Appends go on while the files are written (they wait only for the
        buffer to be taken): a checkpoint's flush does not stall pushes."""
        with self._flush_lock:  # after a flush in flight: its events were appended before this call
            with self._lock:
                names = [stream] if stream is not None else list(self._buffers)
            return sum(self._flush_stream(s) for s in names)

    def _flush_stream(self, stream: str) -> int:
        """All of the stream's buffered events, or none: every day's file is
        written under a temporary name first and renamed only once all are
        written. A failed write (a full disk) puts the events back in front
        of the buffer, so a later flush writes the same events once (never a
        hole in the log, never a day twice). The caller holds _flush_lock."""
        with self._lock:
            tables = self._buffers.pop(stream, [])
            self._buffered.pop(stream, None)
        if not tables:
            return 0
        try:
            return self._write(stream, tables)
        except BaseException:
            with self._lock:
                self._buffers[stream] = tables + self._buffers.get(stream, [])
                self._buffered[stream] = sum(t.num_rows for t in self._buffers[stream])
            raise

    def _write(self, stream: str, tables: list) -> int:
        table = pa.concat_tables(tables, promote_options="default")
        day = np.floor_divide(table.column(EVENT_TS).to_numpy(), _US_PER_DAY)
        seqs = table.column(SEQ).to_numpy()
        written = []
        try:
            for d in np.unique(day):
                idx = np.flatnonzero(day == d)
                part = table.take(pa.array(idx))
                date = np.datetime64(int(d), "D").astype(str)
                directory = os.path.join(self.stream_dir(stream), f"date={date}")
                written.append(self._write_tmp(directory, f"part-{int(seqs[idx[0]]):020d}.parquet", part))
        except BaseException:
            for directory, tmp, _ in written:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
            raise
        for directory, tmp, final in written:
            os.replace(tmp, final)
            if self.fsync:
                fd = os.open(directory, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        return table.num_rows

    def _write_tmp(self, directory: str, name: str, table: pa.Table) -> tuple[str, str, str]:
        """Writes `table` to a temporary file in `directory`; returns
        (directory, temporary path, final path)."""
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".{name}.tmp")
        try:
            # Row groups of ~1M rows keep the min/max statistics useful for
            # skipping by _fs_event_ts without making tiny groups.
            pq.write_table(table, tmp, row_group_size=1 << 20, compression="zstd", **parquet_encodings(table.schema))
            if self.fsync:
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        return directory, tmp, os.path.join(directory, name)

    def close(self) -> None:
        self._closing = True
        self._wanted.set()
        if self._flusher is not None:
            self._flusher.join()
        self.flush()
